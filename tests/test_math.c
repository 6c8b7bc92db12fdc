/*
 * test_math.c - the engine's numeric kernels: float distances (both
 * implementations), SQ8, top-k, k-means, the coarse probe and the screen.
 * Their rates are measured by tests/bench/bench_math.c, not here.
 */
#include "eng_dist.h"
#include "eng_kmeans.h"
#include "eng_probe.h"
#include "eng_screen.h"
#include "eng_sq8.h"
#include "eng_topk.h"
#include "fx_cunit.h"
#include "fx_rand.h"

#include <CUnit/Basic.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---------------------------------------------------------- */

static uint64_t rs = 0x1234567;

static uint64_t rnd(void)
{
    return fx_splitmix64(&rs);
}

/* Uniform in [lo, hi). */
static float unif(float lo, float hi)
{
    return fx_unif(&rs, lo, hi);
}

static float gauss(void)
{
    return fx_gauss(&rs);
}

static void fill(float *v, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; i++)
        v[i] = unif(lo, hi);
}

static double ref_l2(const float *a, const float *b, size_t d)
{
    double s = 0;

    for (size_t i = 0; i < d; i++)
        s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    return s;
}

static double ref_dot(const float *a, const float *b, size_t d, double *abs_sum)
{
    double s = 0, as = 0;

    for (size_t i = 0; i < d; i++) {
        s += (double)a[i] * b[i];
        as += fabs((double)a[i] * b[i]);
    }
    if (abs_sum)
        *abs_sum = as;
    return s;
}

/* Float summation error bound: about d roundings of the magnitude (plus FMA/subtract steps). */
static double tol_for(size_t d, double magnitude)
{
    return ((double)d + 4) * FLT_EPSILON * magnitude + 1e-30;
}

static const size_t dims_extra[] = {128, 784, 4096};

/* d values: 1..67, then 128, 784, 4096. */
static size_t dim_at(size_t i)
{
    return i < 67 ? i + 1 : dims_extra[i - 67];
}
#define N_DIMS (67 + sizeof(dims_extra) / sizeof(dims_extra[0]))

/* ---- float kernels ---------------------------------------------------- */

static void check_dist_impl(void)
{
    enum { NROWS = 7, MAXOFF = 3 };
    static const size_t offs[] = {0, 1, 3};

    for (size_t di = 0; di < N_DIMS; di++) {
        size_t d = dim_at(di);
        float *qb = malloc((d + MAXOFF) * sizeof(float));
        float *xb = malloc((NROWS * d + MAXOFF) * sizeof(float));
        float out[NROWS], out1[NROWS];

        CU_ASSERT_FATAL(qb && xb);
        for (size_t oi = 0; oi < 3; oi++) {
            float *q = qb + offs[oi], *x = xb + offs[(oi + 1) % 3];
            fill(q, d, -2.0f, 2.0f);
            fill(x, NROWS * d, -2.0f, 2.0f);
            for (size_t r = 0; r < NROWS; r++) {
                const float *xr = x + r * d;
                double abs_sum, e = ref_l2(q, xr, d), p = ref_dot(q, xr, d, &abs_sum);
                CU_ASSERT(fabs(eng_l2sq(q, xr, d) - e) <= tol_for(d, e));
                CU_ASSERT(fabs(eng_dot(q, xr, d) - p) <= tol_for(d, abs_sum));
            }
            /* Every n (odd and even) and every position: the same bits as the one-row call. */
            for (size_t n = 1; n <= NROWS; n++) {
                eng_l2sq_many(q, x, n, d, out);
                eng_dot_many(q, x, n, d, out1);
                for (size_t r = 0; r < n; r++) {
                    float a = eng_l2sq(q, x + r * d, d), b = eng_dot(q, x + r * d, d);
                    CU_ASSERT(memcmp(&out[r], &a, sizeof(float)) == 0);
                    CU_ASSERT(memcmp(&out1[r], &b, sizeof(float)) == 0);
                }
            }
            /* Also from an odd starting row (x + d: the pair boundaries move). */
            if (d > 0) {
                eng_l2sq_many(q, x + d, NROWS - 1, d, out);
                for (size_t r = 0; r + 1 < NROWS; r++) {
                    float a = eng_l2sq(q, x + (r + 1) * d, d);
                    CU_ASSERT(memcmp(&out[r], &a, sizeof(float)) == 0);
                }
            }
            double nref = sqrt(ref_dot(q, q, d, NULL));
            CU_ASSERT(fabs(eng_norm2(q, d) - nref) <= 1e-6 * nref);
            CU_ASSERT(eng_normalize(q, d));
            CU_ASSERT(fabs(sqrt(ref_dot(q, q, d, NULL)) - 1.0) <= 1e-6 * sqrt((double)d) + 1e-6);
        }
        /* Zero and non-finite vectors are left alone. */
        memset(qb, 0, d * sizeof(float));
        CU_ASSERT(!eng_normalize(qb, d));
        for (size_t i = 0; i < d; i++)
            CU_ASSERT(qb[i] == 0.0f);
        CU_ASSERT(eng_norm2(qb, d) == 0.0f);
        qb[d - 1] = NAN;
        CU_ASSERT(!eng_normalize(qb, d));
        CU_ASSERT(isnan(eng_l2sq(qb, xb, d)));
        qb[d - 1] = INFINITY;
        CU_ASSERT(!eng_normalize(qb, d));
        free(qb);
        free(xb);
    }
    /* Tiny and huge but finite: the double accumulation neither underflows nor overflows. */
    float tiny[3] = {1e-30f, 0, 0}, big[2] = {3e38f, 3e38f};
    CU_ASSERT(eng_normalize(tiny, 3) && tiny[0] == 1.0f);
    CU_ASSERT(eng_normalize(big, 2) && fabsf(big[0] - (float)M_SQRT1_2) < 1e-7f);
    /* d = 0 is well defined. */
    CU_ASSERT(eng_l2sq(tiny, tiny, 0) == 0.0f && eng_dot(tiny, tiny, 0) == 0.0f);
}

static void test_dist_dispatched(void)
{
    check_dist_impl();
}

static void test_dist_scalar(void)
{
    eng_dist_force_scalar(true);
    CU_ASSERT_STRING_EQUAL(eng_dist_impl(), "scalar");
    check_dist_impl();
    eng_dist_force_scalar(false);
}

static void test_dist_impl(void)
{
    const char *env = getenv("CDX_SIMD");
    const char *impl = eng_dist_impl();

    CU_ASSERT(strcmp(impl, "avx2") == 0 || strcmp(impl, "scalar") == 0);
    if (env && strcmp(env, "scalar") == 0)
        CU_ASSERT_STRING_EQUAL(impl, "scalar");
    CU_ASSERT(strcmp(impl, "avx2") == 0 ? eng_simd_level() == ENG_SIMD_AVX2
                                        : eng_simd_level() == ENG_SIMD_SCALAR);
    eng_dist_force_scalar(true);
    CU_ASSERT_STRING_EQUAL(eng_dist_impl(), "scalar");
    eng_dist_force_scalar(false);
    CU_ASSERT_STRING_EQUAL(eng_dist_impl(), impl);
    eng_dist_init(); /* idempotent */
    CU_ASSERT_STRING_EQUAL(eng_dist_impl(), impl);
    printf("\n    [impl %s]", impl);
}

/* Both implementations agree closely (they round differently). */
static void test_dist_impls_agree(void)
{
    size_t d = 784;
    float *q = malloc(d * sizeof(float)), *x = malloc(16 * d * sizeof(float));
    float a[16], b[16];

    CU_ASSERT_FATAL(q && x);
    fill(q, d, 0, 255);
    fill(x, 16 * d, 0, 255);
    eng_l2sq_many(q, x, 16, d, a);
    eng_dist_force_scalar(true);
    eng_l2sq_many(q, x, 16, d, b);
    eng_dist_force_scalar(false);
    for (size_t i = 0; i < 16; i++)
        CU_ASSERT(fabsf(a[i] - b[i]) <= 1e-5f * a[i]);
    free(q);
    free(x);
}

/* ---- SQ8 -------------------------------------------------------------- */

static void test_sq8_integer_exact(void)
{
    /* Dims: 0..255, 0..254, constant 0, constant 7, 10..100, -128..127. */
    enum { D = 6, N = 300 };
    static const int lo[D] = {0, 0, 0, 7, 10, -128}, hi[D] = {255, 254, 0, 7, 100, 127};
    float *x = malloc(N * D * sizeof(float)), *y = malloc(N * D * sizeof(float));
    uint8_t *c = malloc(N * D);
    eng_sq8 q;

    CU_ASSERT_FATAL(x && y && c);
    for (size_t r = 0; r < N; r++)
        for (size_t i = 0; i < D; i++) {
            int v = lo[i] + (int)(rnd() % (uint64_t)(hi[i] - lo[i] + 1));
            if (r == 0)
                v = lo[i];
            if (r == 1)
                v = hi[i];
            x[r * D + i] = (float)v;
        }
    CU_ASSERT_FATAL(eng_sq8_train(x, N, D, &q) == CDX_OK);
    for (size_t i = 0; i < D; i++) {
        CU_ASSERT(q.vmin[i] == (float)lo[i]);
        CU_ASSERT(q.step[i] == 1.0f);
    }
    eng_sq8_encode(&q, x, N, c);
    eng_sq8_decode(&q, c, N, y);
    CU_ASSERT(memcmp(x, y, N * D * sizeof(float)) == 0);
    for (size_t i = 0; i < N * D; i++)
        if (q.vmin[i % D] == 0.0f)
            CU_ASSERT(c[i] == (uint8_t)x[i]); /* pixel data: the code is the value */

    /* Every integer in vmin .. vmin + 255 round-trips, also beyond the trained max. */
    for (int v = 0; v <= 255; v++) {
        float row[D], back[D];
        uint8_t cc[D];
        for (size_t i = 0; i < D; i++)
            row[i] = (float)(lo[i] + v);
        eng_sq8_encode(&q, row, 1, cc);
        eng_sq8_decode(&q, cc, 1, back);
        CU_ASSERT(memcmp(row, back, sizeof(row)) == 0);
    }
    eng_sq8_free(&q);

    /* Fashion-MNIST shape: 784 dims of pixels. */
    size_t n = 64, d = 784;
    float *p = malloc(n * d * sizeof(float)), *pb = malloc(n * d * sizeof(float));
    uint8_t *pc = malloc(n * d);
    CU_ASSERT_FATAL(p && pb && pc);
    for (size_t i = 0; i < n * d; i++)
        p[i] = (float)(rnd() % 256);
    CU_ASSERT_FATAL(eng_sq8_train(p, n, d, &q) == CDX_OK);
    eng_sq8_encode(&q, p, n, pc);
    eng_sq8_decode(&q, pc, n, pb);
    CU_ASSERT(memcmp(p, pb, n * d * sizeof(float)) == 0);
    for (size_t i = 0; i < n * d; i++)
        if (q.vmin[i % d] == 0.0f)
            CU_ASSERT(pc[i] == (uint8_t)p[i]);
    eng_sq8_free(&q);
    free(p);
    free(pb);
    free(pc);
    free(x);
    free(y);
    free(c);
}

static void test_sq8_float_error(void)
{
    enum { D = 37, N = 500 };
    float *x = malloc(N * D * sizeof(float)), *y = malloc(N * D * sizeof(float));
    uint8_t *c = malloc(N * D);
    eng_sq8 q;

    CU_ASSERT_FATAL(x && y && c);
    for (size_t r = 0; r < N; r++)
        for (size_t i = 0; i < D; i++) {
            float scale = (float)(i + 1) * 0.37f, off = (float)i - 20.0f;
            x[r * D + i] = i == 5 ? 0.3f : off + scale * unif(-1, 1); /* dim 5: constant */
        }
    CU_ASSERT_FATAL(eng_sq8_train(x, N, D, &q) == CDX_OK);
    CU_ASSERT(q.step[5] == 0.0f && q.vmin[5] == 0.3f);
    eng_sq8_encode(&q, x, N, c);
    eng_sq8_decode(&q, c, N, y);
    for (size_t r = 0; r < N; r++)
        for (size_t i = 0; i < D; i++) {
            double mag = fmax(fabs(q.vmin[i]), fabs(q.vmin[i] + 255.0 * q.step[i]));
            double err = fabs((double)y[r * D + i] - x[r * D + i]);
            CU_ASSERT(err <= q.step[i] / 2.0 + 4 * FLT_EPSILON * mag);
        }
    /* Out of range clamps; NaN encodes as 0. */
    float row[D];
    uint8_t cc[D];
    for (size_t i = 0; i < D; i++)
        row[i] = i % 3 == 0 ? -1e30f : i % 3 == 1 ? 1e30f : NAN;
    eng_sq8_encode(&q, row, 1, cc);
    for (size_t i = 0; i < D; i++)
        if (q.step[i] > 0)
            CU_ASSERT(cc[i] == (i % 3 == 1 ? 255 : 0));
    eng_sq8_free(&q);
    eng_sq8_free(&q); /* zeroed: no-op */
    eng_sq8_free(NULL);

    /* Errors. */
    CU_ASSERT(eng_sq8_train(x, 0, D, &q) == CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT(eng_sq8_train(x, N, 0, &q) == CDX_ERR_INVALID_ARGUMENT);
    x[7] = NAN;
    CU_ASSERT(eng_sq8_train(x, N, D, &q) == CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT(q.vmin == NULL && q.step == NULL);
    free(x);
    free(y);
    free(c);
}

static void check_sq8_dist_impl(void)
{
    enum { NROWS = 7 };

    for (size_t di = 0; di < N_DIMS; di++) {
        size_t d = dim_at(di);
        eng_sq8 q = {d, malloc(d * sizeof(float)), malloc(d * sizeof(float))};
        float *qv = malloc(d * sizeof(float)), *tb = malloc((d + 1) * sizeof(float));
        float *wb = malloc((d + 1) * sizeof(float)), *dec = malloc(NROWS * d * sizeof(float));
        uint8_t *cb = malloc(NROWS * d + 3);
        float out[NROWS], out2[NROWS];

        CU_ASSERT_FATAL(q.vmin && q.step && qv && tb && wb && dec && cb);
        for (size_t i = 0; i < d; i++) {
            q.vmin[i] = unif(-3, 1);
            q.step[i] = i % 11 == 3 ? 0.0f : unif(0, 4.0f / 255.0f);
        }
        fill(qv, d, -3, 3);
        float *t = tb + 1, *w = wb + 1; /* unaligned */
        uint8_t *codes = cb + 3;
        for (size_t i = 0; i < NROWS * d; i++)
            codes[i] = (uint8_t)rnd();
        eng_sq8_prepare_l2(&q, qv, t);
        float bias = eng_sq8_prepare_dot(&q, qv, w);
        eng_sq8_decode(&q, codes, NROWS, dec);

        eng_sq8_l2sq_many(t, q.step, codes, NROWS, d, out);
        eng_sq8_dot_many(w, bias, codes, NROWS, d, out2);
        for (size_t r = 0; r < NROWS; r++) {
            const float *dr = dec + r * d;
            const uint8_t *cr = codes + r * d;
            double e = ref_l2(qv, dr, d), p = ref_dot(qv, dr, d, NULL), mag = 0;
            /* Against decode-then-distance: the decode's rounding is of the size of the
             * terms |q| * (|vmin| + step * c), not of the (possibly cancelling) result. */
            for (size_t i = 0; i < d; i++)
                mag += fabs(qv[i]) * (fabs(q.vmin[i]) + q.step[i] * cr[i]);
            CU_ASSERT(fabs(out[r] - e) <= tol_for(d, e + 4.0 * (double)d) * 2);
            CU_ASSERT(fabs(out2[r] - p) <= tol_for(d, mag) * 2);
            /* Position independence. */
            float one, one2;
            eng_sq8_l2sq_many(t, q.step, codes + r * d, 1, d, &one);
            eng_sq8_dot_many(w, bias, codes + r * d, 1, d, &one2);
            CU_ASSERT(memcmp(&one, &out[r], sizeof(float)) == 0);
            CU_ASSERT(memcmp(&one2, &out2[r], sizeof(float)) == 0);
        }
        eng_sq8_l2sq_many(t, q.step, codes + d, NROWS - 1, d, out2);
        for (size_t r = 0; r + 1 < NROWS; r++)
            CU_ASSERT(memcmp(&out2[r], &out[r + 1], sizeof(float)) == 0);
        eng_sq8_free(&q);
        free(qv);
        free(tb);
        free(wb);
        free(dec);
        free(cb);
    }
}

static void test_sq8_dist(void)
{
    check_sq8_dist_impl();
    eng_dist_force_scalar(true);
    check_sq8_dist_impl();
    eng_dist_force_scalar(false);
}

static void test_sq8_serialize(void)
{
    size_t d = 19;
    float *x = malloc(40 * d * sizeof(float));
    uint8_t *buf = malloc(8 * d + 1);
    eng_sq8 q, r;

    CU_ASSERT_FATAL(x && buf);
    fill(x, 40 * d, -5, 9);
    CU_ASSERT_FATAL(eng_sq8_train(x, 40, d, &q) == CDX_OK);
    CU_ASSERT(eng_sq8_serialized_size(d) == 8 * d);
    CU_ASSERT(eng_sq8_serialize(&q, NULL, 0) == 8 * d);
    memset(buf, 0xAA, 8 * d + 1);
    CU_ASSERT(eng_sq8_serialize(&q, buf, 8 * d - 1) == 8 * d);
    CU_ASSERT(buf[0] == 0xAA); /* too small: nothing written */
    CU_ASSERT(eng_sq8_serialize(&q, buf, 8 * d + 1) == 8 * d);
    CU_ASSERT(buf[8 * d] == 0xAA);
    /* Little-endian float32 of vmin[0] first. */
    uint32_t u;
    memcpy(&u, &q.vmin[0], 4);
    CU_ASSERT(buf[0] == (uint8_t)u && buf[3] == (uint8_t)(u >> 24));
    CU_ASSERT_FATAL(eng_sq8_deserialize(buf, 8 * d, d, &r) == CDX_OK);
    CU_ASSERT(r.d == d);
    CU_ASSERT(memcmp(r.vmin, q.vmin, d * sizeof(float)) == 0);
    CU_ASSERT(memcmp(r.step, q.step, d * sizeof(float)) == 0);
    eng_sq8_free(&r);
    CU_ASSERT(eng_sq8_deserialize(buf, 8 * d - 1, d, &r) == CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT(eng_sq8_deserialize(buf, 8 * d + 1, d, &r) == CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT(eng_sq8_deserialize(buf, 8 * d, d + 1, &r) == CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT(eng_sq8_deserialize(buf, 0, 0, &r) == CDX_ERR_INVALID_ARGUMENT);
    /* A negative step (sign bit of step[2]) and a NaN vmin are refused. */
    buf[4 * (d + 2) + 3] |= 0x80;
    CU_ASSERT(eng_sq8_deserialize(buf, 8 * d, d, &r) == CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT(r.vmin == NULL);
    buf[4 * (d + 2) + 3] &= 0x7f;
    memset(buf + 4, 0xff, 4);
    CU_ASSERT(eng_sq8_deserialize(buf, 8 * d, d, &r) == CDX_ERR_INVALID_ARGUMENT);
    eng_sq8_free(&q);
    free(x);
    free(buf);
}

/* ---- top-k ------------------------------------------------------------ */

typedef struct pair {
    float d;
    uint64_t r;
} pair;

static int cmp_asc(const void *a, const void *b)
{
    const pair *x = a, *y = b;

    if (x->d != y->d)
        return x->d < y->d ? -1 : 1;
    return x->r < y->r ? -1 : x->r > y->r;
}

static int cmp_desc(const void *a, const void *b)
{
    const pair *x = a, *y = b;

    if (x->d != y->d)
        return x->d > y->d ? -1 : 1;
    return x->r < y->r ? -1 : x->r > y->r;
}

static void test_topk(void)
{
    enum { N = 2000 };
    static const size_t ks[] = {1, 2, 5, 10, 100, 1999, 2000, 3000};
    pair *all = malloc(N * sizeof(pair)), *srt = malloc(N * sizeof(pair));
    float *od = malloc(3000 * sizeof(float));
    uint64_t *orf = malloc(3000 * sizeof(uint64_t));

    CU_ASSERT_FATAL(all && srt && od && orf);
    for (int desc = 0; desc < 2; desc++)
        for (size_t ki = 0; ki < sizeof(ks) / sizeof(ks[0]); ki++) {
            size_t k = ks[ki];
            eng_topk *t = eng_topk_new(k, desc);
            CU_ASSERT_FATAL(t != NULL);
            for (int round = 0; round < 2; round++) { /* second round: after sorted/reset */
                /* Few distinct values: many ties, refs shuffled. */
                for (size_t i = 0; i < N; i++) {
                    all[i].d = (float)(rnd() % 50) - 10.0f;
                    all[i].r = (uint64_t)(rnd() % 1000000);
                }
                for (size_t i = 0; i < N; i++) {
                    eng_topk_push(t, all[i].d, all[i].r);
                    if (i + 1 < k)
                        CU_ASSERT(eng_topk_threshold(t) == (desc ? -INFINITY : INFINITY));
                }
                eng_topk_push(t, NAN, 0); /* ignored */
                memcpy(srt, all, N * sizeof(pair));
                qsort(srt, N, sizeof(pair), desc ? cmp_desc : cmp_asc);
                size_t want = k < N ? k : N;
                CU_ASSERT(eng_topk_size(t) == want);
                if (k <= N)
                    CU_ASSERT(eng_topk_threshold(t) == srt[k - 1].d);
                CU_ASSERT(eng_topk_sorted(t, od, orf) == want);
                for (size_t i = 0; i < want; i++) {
                    CU_ASSERT(od[i] == srt[i].d);
                    CU_ASSERT(orf[i] == srt[i].r);
                }
                CU_ASSERT(eng_topk_size(t) == 0);
            }
            eng_topk_push(t, 1.0f, 1);
            eng_topk_reset(t);
            CU_ASSERT(eng_topk_sorted(t, NULL, NULL) == 0);
            eng_topk_free(t);
        }
    /* Ties at the threshold: a smaller ref with the same distance displaces a larger one. */
    eng_topk *t = eng_topk_new(2, false);
    CU_ASSERT_FATAL(t != NULL);
    eng_topk_push(t, 1.0f, 9);
    eng_topk_push(t, 1.0f, 8);
    eng_topk_push(t, 1.0f, 3);
    eng_topk_push(t, 1.0f, 10);
    CU_ASSERT(eng_topk_sorted(t, od, orf) == 2);
    CU_ASSERT(orf[0] == 3 && orf[1] == 8);
    eng_topk_free(t);
    CU_ASSERT(eng_topk_new(0, false) == NULL);
    eng_topk_free(NULL);
    free(all);
    free(srt);
    free(od);
    free(orf);
}

/* ---- k-means ---------------------------------------------------------- */

/* k blobs of npc points in d dims around random centres (spread `sep`), sigma 1. */
static float *make_blobs(size_t k, size_t npc, size_t d, float sep, uint32_t *label, float *ctr)
{
    float *x = malloc(k * npc * d * sizeof(float));

    if (!x)
        return NULL;
    fill(ctr, k * d, -sep, sep);
    for (size_t i = 0; i < k * npc; i++) {
        size_t c = (i * 7 + i / 3) % k; /* interleaved, not sorted by cluster */
        label[i] = (uint32_t)c;
        for (size_t j = 0; j < d; j++)
            x[i * d + j] = ctr[c * d + j] + gauss();
    }
    return x;
}

static void test_kmeans_blobs(void)
{
    enum { K = 8, NPC = 250, D = 16 };
    uint32_t label[K * NPC], asg[K * NPC];
    float ctr[K * D], cen[K * D];
    float *x = make_blobs(K, NPC, D, 20.0f, label, ctr);
    eng_kmeans_opts o = {.k = K, .max_iters = 25, .tolerance = 1e-6f, .seed = 42};
    eng_kmeans_stats st;

    CU_ASSERT_FATAL(x != NULL);
    CU_ASSERT_FATAL(eng_kmeans_train(x, K * NPC, D, &o, cen, &st) == CDX_OK);
    CU_ASSERT(st.sample_size == K * NPC);
    CU_ASSERT(st.iterations >= 1 && st.iterations <= 25);
    CU_ASSERT_FATAL(eng_kmeans_assign(x, K * NPC, D, cen, K, ENG_KM_L2, asg, NULL) == CDX_OK);
    /* Each true cluster maps to exactly one centroid, and they are all different. */
    uint32_t map[K];
    int used[K] = {0};
    for (size_t c = 0; c < K; c++)
        map[c] = UINT32_MAX;
    for (size_t i = 0; i < K * NPC; i++) {
        if (map[label[i]] == UINT32_MAX)
            map[label[i]] = asg[i];
        CU_ASSERT(map[label[i]] == asg[i]);
    }
    for (size_t c = 0; c < K; c++) {
        CU_ASSERT_FATAL(map[c] < K);
        CU_ASSERT(!used[map[c]]);
        used[map[c]] = 1;
        /* The centroid sits at the blob's centre (sigma 1 / sqrt(250) per coordinate). */
        CU_ASSERT(eng_l2sq(cen + map[c] * D, ctr + c * D, D) < 0.5f);
    }
    /* Objective ~ n * d * sigma^2. */
    CU_ASSERT(st.objective > 0.8 * K * NPC * D && st.objective < 1.2 * K * NPC * D);
    free(x);
}

static void test_kmeans_deterministic(void)
{
    enum { K = 16, NPC = 100, D = 24 };
    uint32_t label[K * NPC];
    float ctr[K * D], a[K * D], b[K * D], c[K * D];
    float *x = make_blobs(K, NPC, D, 3.0f, label, ctr); /* overlapping blobs: real work */
    eng_kmeans_opts o = {.k = K, .max_iters = 20, .seed = 7};
    eng_kmeans_stats st;

    CU_ASSERT_FATAL(x != NULL);
    CU_ASSERT(eng_kmeans_train(x, K * NPC, D, &o, a, NULL) == CDX_OK);
    CU_ASSERT(eng_kmeans_train(x, K * NPC, D, &o, b, NULL) == CDX_OK);
    CU_ASSERT(memcmp(a, b, sizeof(a)) == 0);
    o.seed = 8;
    CU_ASSERT(eng_kmeans_train(x, K * NPC, D, &o, c, NULL) == CDX_OK);
    CU_ASSERT(memcmp(a, c, sizeof(a)) != 0);
    /* Subsampled: 16 * 30 = 480 of 1600 rows, still deterministic. */
    o.seed = 7;
    o.max_points_per_centroid = 30;
    CU_ASSERT(eng_kmeans_train(x, K * NPC, D, &o, a, &st) == CDX_OK);
    CU_ASSERT(st.sample_size == 480);
    CU_ASSERT(eng_kmeans_train(x, K * NPC, D, &o, b, NULL) == CDX_OK);
    CU_ASSERT(memcmp(a, b, sizeof(a)) == 0);
    /* The scalar kernels give a valid (not necessarily identical) result too. */
    eng_dist_force_scalar(true);
    CU_ASSERT(eng_kmeans_train(x, K * NPC, D, &o, c, NULL) == CDX_OK);
    CU_ASSERT(eng_kmeans_train(x, K * NPC, D, &o, b, NULL) == CDX_OK);
    CU_ASSERT(memcmp(c, b, sizeof(c)) == 0);
    eng_dist_force_scalar(false);
    free(x);
}

static void test_kmeans_monotone(void)
{
    enum { K = 20, NPC = 60, D = 10 };
    uint32_t label[K * NPC];
    float ctr[K * D], cen[K * D];
    float *x = make_blobs(K, NPC, D, 2.0f, label, ctr);
    eng_kmeans_opts o = {.k = K, .tolerance = 0, .seed = 3};
    eng_kmeans_stats st;
    double prev = INFINITY;

    CU_ASSERT_FATAL(x != NULL);
    /* Deterministic, so the run with max_iters = t is a prefix of the longer ones. */
    for (uint32_t t = 1; t <= 15; t++) {
        o.max_iters = t;
        CU_ASSERT_FATAL(eng_kmeans_train(x, K * NPC, D, &o, cen, &st) == CDX_OK);
        CU_ASSERT(st.iterations <= t);
        if (st.splits == 0)
            CU_ASSERT(st.objective <= prev * (1 + 1e-6));
        prev = st.objective;
    }
    free(x);
}

static void test_kmeans_errors(void)
{
    float x[40], cen[40];
    eng_kmeans_opts o = {.k = 5, .max_iters = 3, .seed = 1};
    uint32_t asg[4];

    fill(x, 40, -1, 1);
    CU_ASSERT(eng_kmeans_train(x, 4, 10, &o, cen, NULL) == CDX_ERR_INVALID_ARGUMENT); /* n < k */
    CU_ASSERT(eng_kmeans_train(x, 4, 0, &o, cen, NULL) == CDX_ERR_INVALID_ARGUMENT);
    o.k = 0;
    CU_ASSERT(eng_kmeans_train(x, 4, 10, &o, cen, NULL) == CDX_ERR_INVALID_ARGUMENT);
    o.k = 2;
    x[13] = NAN;
    CU_ASSERT(eng_kmeans_train(x, 4, 10, &o, cen, NULL) == CDX_ERR_INVALID_ARGUMENT);
    x[13] = INFINITY;
    CU_ASSERT(eng_kmeans_train(x, 4, 10, &o, cen, NULL) == CDX_ERR_INVALID_ARGUMENT);
    x[13] = 0.5f;
    CU_ASSERT(eng_kmeans_train(x, 4, 10, &o, cen, NULL) == CDX_OK);
    CU_ASSERT(eng_kmeans_assign(x, 4, 10, cen, 0, ENG_KM_L2, asg, NULL) ==
              CDX_ERR_INVALID_ARGUMENT);
    /* n == k and all rows identical: empty clusters are split, no error. */
    for (size_t i = 0; i < 40; i++)
        x[i] = 1.0f;
    o.k = 4;
    CU_ASSERT(eng_kmeans_train(x, 4, 10, &o, cen, NULL) == CDX_OK);
    for (size_t i = 0; i < 40; i++)
        CU_ASSERT(isfinite(cen[i]));
}

static void test_kmeans_assign(void)
{
    enum { N = 1500, D = 37, K = 50 };
    float *x = malloc(N * D * sizeof(float)), *c = malloc(K * D * sizeof(float));
    uint32_t *a = malloc(N * sizeof(uint32_t));
    float *dist = malloc(N * sizeof(float));

    CU_ASSERT_FATAL(x && c && a && dist);
    fill(x, N * D, -1, 1);
    fill(c, K * D, -1, 1);
    for (int m = 0; m < 2; m++) {
        eng_km_metric metric = m ? ENG_KM_IP : ENG_KM_L2;
        size_t exact = 0;
        CU_ASSERT_FATAL(eng_kmeans_assign(x, N, D, c, K, metric, a, dist) == CDX_OK);
        for (size_t i = 0; i < N; i++) {
            const float *xi = x + i * D;
            size_t best = 0;
            double bv = m ? ref_dot(xi, c, D, NULL) : ref_l2(xi, c, D);
            for (size_t j = 1; j < K; j++) {
                double v = m ? ref_dot(xi, c + j * D, D, NULL) : ref_l2(xi, c + j * D, D);
                if (m ? v > bv : v < bv) {
                    bv = v;
                    best = j;
                }
            }
            CU_ASSERT_FATAL(a[i] < K);
            /* Equal to brute force, or a float near-tie with it. */
            double got = m ? ref_dot(xi, c + a[i] * D, D, NULL) : ref_l2(xi, c + a[i] * D, D);
            CU_ASSERT(fabs(got - bv) <= 1e-5 * (fabs(bv) + 1));
            exact += a[i] == best;
            float e = m ? eng_dot(xi, c + a[i] * D, D) : eng_l2sq(xi, c + a[i] * D, D);
            CU_ASSERT(memcmp(&e, &dist[i], sizeof(float)) == 0);
        }
        CU_ASSERT(exact >= N - 2);
    }
    free(x);
    free(c);
    free(a);
    free(dist);
}

static void test_kmeans_probe(void)
{
    enum { K = 700, D = 33 };
    static const size_t nps[] = {1, 8, 256, 257, 700, 1000};
    float *c = malloc(K * D * sizeof(float)), q[D];
    uint32_t out[1000];
    pair all[K];

    CU_ASSERT_FATAL(c != NULL);
    fill(c, K * D, -1, 1);
    /* Duplicate centroids: ties resolved by index. */
    memcpy(c + 10 * D, c + 500 * D, D * sizeof(float));
    fill(q, D, -1, 1);
    for (int m = 0; m < 2; m++) {
        eng_km_metric metric = m ? ENG_KM_IP : ENG_KM_L2;
        for (size_t j = 0; j < K; j++) {
            all[j].d = m ? eng_dot(q, c + j * D, D) : eng_l2sq(q, c + j * D, D);
            all[j].r = j;
        }
        qsort(all, K, sizeof(pair), m ? cmp_desc : cmp_asc);
        for (size_t pi = 0; pi < sizeof(nps) / sizeof(nps[0]); pi++) {
            size_t np = nps[pi], want = np < K ? np : K;
            CU_ASSERT_FATAL(eng_kmeans_probe(q, D, c, K, metric, np, out) == want);
            for (size_t i = 0; i < want; i++)
                CU_ASSERT(out[i] == all[i].r);
        }
        /* And the order agrees with double precision away from near-ties. */
        double prev = m ? INFINITY : -INFINITY;
        for (size_t i = 0; i < K; i++) {
            double v = m ? ref_dot(q, c + all[i].r * D, D, NULL) : ref_l2(q, c + all[i].r * D, D);
            CU_ASSERT(m ? v <= prev + 1e-5 : v >= prev - 1e-5);
            prev = v;
        }
    }
    CU_ASSERT(eng_kmeans_probe(q, D, c, K, ENG_KM_L2, 0, out) == 0);
    free(c);
}

/*
 * The SQ8-screened probe returns exactly eng_kmeans_probe's list: random,
 * clustered (cancellation-prone: large offset, small spread), integral,
 * duplicated centroids; queries on a centroid, near one, and far away.
 */
static void test_probe_exact(void)
{
    enum { K = 1024, D = 48, NQ = 40 };
    static const size_t nps[] = {1, 2, 8, 16, 64, 255, 256, 1024, 2000};
    float *c = malloc((size_t)K * D * sizeof(float)), q[D];
    uint32_t want_out[K], got_out[K];
    size_t pruned = 0, runs = 0; /* runs where the screen applies (nprobe < k / 4) */

    CU_ASSERT_FATAL(c != NULL);
    for (int shape = 0; shape < 4; shape++) {
        for (size_t i = 0; i < (size_t)K * D; i++) {
            switch (shape) {
            case 0: c[i] = unif(-1, 1); break;
            case 1: c[i] = 1000.0f + unif(-0.01f, 0.01f); break; /* cancellation */
            case 2: c[i] = (float)(rnd() % 256); break;            /* lossless codes */
            default: c[i] = gauss() * (i % D < 4 ? 50.0f : 0.5f); break;
            }
        }
        memcpy(c + 7 * D, c + 900 * D, D * sizeof(float)); /* a tie, broken by index */
        for (int m = 0; m < 2; m++) {
            eng_km_metric metric = m ? ENG_KM_IP : ENG_KM_L2;
            eng_probe *p = NULL;
            CU_ASSERT_FATAL(eng_probe_new(c, K, D, metric, &p) == CDX_OK);
            for (int qi = 0; qi < NQ; qi++) {
                const float *base = c + (rnd() % K) * D;
                for (size_t i = 0; i < D; i++) {
                    if (qi % 4 == 0)
                        q[i] = base[i]; /* on a centroid (maybe the duplicated one) */
                    else if (qi % 4 == 1)
                        q[i] = base[i] + (shape == 1 ? unif(-1e-4f, 1e-4f) : unif(-0.05f, 0.05f));
                    else
                        q[i] = c[(rnd() % K) * D + i] + unif(-1, 1) * (shape == 2 ? 30 : 0.5f);
                }
                if (qi == 1)
                    memcpy(q, c + 7 * D, sizeof(q));
                for (size_t pi = 0; pi < sizeof(nps) / sizeof(nps[0]); pi++) {
                    size_t np = nps[pi], rescored = 0;
                    size_t w = eng_kmeans_probe(q, D, c, K, metric, np, want_out);
                    size_t g = eng_probe_run(p, q, np, got_out, &rescored);
                    CU_ASSERT_FATAL(w == g);
                    CU_ASSERT(memcmp(want_out, got_out, w * sizeof(uint32_t)) == 0);
                    if (memcmp(want_out, got_out, w * sizeof(uint32_t)) != 0)
                        printf("\n    shape %d metric %d q %d nprobe %zu differs", shape, m, qi, np);
                    if (np < K / 4) {
                        runs++;
                        pruned += rescored < K / 4;
                    }
                }
            }
            CU_ASSERT(eng_probe_run(p, q, 0, got_out, NULL) == 0);
            eng_probe_free(p);
        }
    }
    /* The screen must actually prune most of the time (not silently fall back). */
    CU_ASSERT(pruned * 10 >= runs * 6);
    printf("\n    screened probe: %zu of %zu runs pruned to < k/4 exact scores ", pruned, runs);
    eng_probe *p = NULL;
    CU_ASSERT(eng_probe_new(c, 0, D, ENG_KM_L2, &p) == CDX_ERR_INVALID_ARGUMENT && p == NULL);
    eng_probe_free(NULL);
    free(c);
}

/* The integer screen kernels agree exactly, at the extremes of weights and codes. */
static void test_screen_idot(void)
{
    static const size_t ds[] = {1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 784, 4096};
    static const char *impls[] = {"scalar", "avx2"};
    for (size_t di = 0; di < sizeof(ds) / sizeof(ds[0]); di++) {
        size_t d = ds[di], n = 7;
        int32_t wmax = eng_screen_wmax(d);
        CU_ASSERT_FATAL(wmax >= 64 && wmax <= 32767);
        int16_t *w = malloc(d * sizeof(int16_t));
        uint8_t *codes = malloc(n * d);
        int64_t ref[7], got[7];
        CU_ASSERT_FATAL(w && codes);
        for (int pass = 0; pass < 3; pass++) {
            for (size_t i = 0; i < d; i++)
                w[i] = (int16_t)(pass == 0 ? wmax : pass == 1 ? -wmax
                                                               : (int32_t)(rnd() % (2u * wmax + 1)) - wmax);
            for (size_t i = 0; i < n * d; i++)
                codes[i] = pass < 2 ? 255 : (uint8_t)rnd();
            CU_ASSERT_FATAL(eng_screen_idot("scalar", w, codes, n, d, ref));
            if (pass < 2)
                CU_ASSERT(ref[0] == (int64_t)(pass ? -wmax : wmax) * 255 * (int64_t)d);
            for (size_t k = 1; k < 2; k++) {
                if (!eng_screen_idot(impls[k], w, codes, n, d, got))
                    continue;
                CU_ASSERT(memcmp(ref, got, sizeof(ref)) == 0);
            }
        }
        free(w);
        free(codes);
    }
    CU_ASSERT(!eng_screen_idot("no-such", NULL, NULL, 0, 1, NULL));
}

static void test_kmeans_spherical(void)
{
    enum { K = 6, NPC = 80, D = 12 };
    uint32_t label[K * NPC];
    float ctr[K * D], cen[K * D];
    float *x = make_blobs(K, NPC, D, 10.0f, label, ctr);
    eng_kmeans_opts o = {
        .k = K, .max_iters = 10, .seed = 5, .metric = ENG_KM_IP, .spherical = true};
    eng_kmeans_stats st;

    CU_ASSERT_FATAL(x != NULL);
    for (size_t i = 0; i < K * NPC; i++)
        eng_normalize(x + i * D, D);
    CU_ASSERT_FATAL(eng_kmeans_train(x, K * NPC, D, &o, cen, &st) == CDX_OK);
    for (size_t j = 0; j < K; j++)
        CU_ASSERT(fabsf(eng_norm2(cen + j * D, D) - 1.0f) < 1e-5f);
    /* Mean cosine to the assigned centroid is high for separated directions. */
    CU_ASSERT(st.objective / (K * NPC) > 0.8);
    free(x);
}

int main(void)
{
    static const fx_test tests[] = {
        {"dist impl and dispatch", test_dist_impl},
        {"dist kernels (dispatched)", test_dist_dispatched},
        {"dist kernels (scalar)", test_dist_scalar},
        {"dist implementations agree", test_dist_impls_agree},
        {"sq8 integer data exact", test_sq8_integer_exact},
        {"sq8 float error and errors", test_sq8_float_error},
        {"sq8 distances on codes", test_sq8_dist},
        {"sq8 serialize", test_sq8_serialize},
        {"topk vs sort with ties", test_topk},
        {"kmeans recovers blobs", test_kmeans_blobs},
        {"kmeans deterministic", test_kmeans_deterministic},
        {"kmeans objective monotone", test_kmeans_monotone},
        {"kmeans errors", test_kmeans_errors},
        {"kmeans assign vs brute force", test_kmeans_assign},
        {"kmeans probe vs brute force", test_kmeans_probe},
        {"screened probe = exact probe", test_probe_exact},
        {"screen integer kernels agree", test_screen_idot},
        {"kmeans spherical", test_kmeans_spherical},
    };
    return fx_cunit_run1("math", tests, FX_LEN(tests));
}
