/* Coarse quantisation screened on SQ8 codes, finished exactly (see eng_probe.h). */
#include "eng_probe.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "eng_dist.h"
#include "eng_simd.h"
#include "eng_sq8.h"
#include "eng_topk.h"

/* Below this many centroid floats the screen saves nothing worth its bookkeeping. */
#define PROBE_SCREEN_MIN 16384u
#define PROBE_CHUNK 256u
#define U 0x1p-24 /* unit roundoff of float32 */

struct eng_probe {
    atomic_uint refs;
    size_t k, d;
    eng_km_metric m;
    float *c;       /* k x d float centroids */
    uint8_t *codes; /* k x d, NULL when the screen is off */
    eng_sq8 sq;
    double *err;    /* k: ||c - decoded(c)||, rounded up */
    double *norm;   /* k: ||c|| (inner product bound) */
    double *n2;     /* k: sum_i (step_i code_i)^2, exact in double */
    int32_t wmax;   /* largest |W_i| with no int32 overflow in the integer dot */
};

cdx_err eng_probe_new(const float *centroids, size_t k, size_t d, eng_km_metric m,
                      eng_probe **out)
{
    cdx_err err = CDX_OK;
    eng_probe *p;

    *out = NULL;
    if (!centroids || k == 0 || d == 0 || k > SIZE_MAX / d / sizeof(float))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "probe: need k > 0 centroids of d > 0 floats");
    p = calloc(1, sizeof(*p));
    if (!p)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    atomic_init(&p->refs, 1);
    p->k = k;
    p->d = d;
    p->m = m;
    p->c = malloc(k * d * sizeof(float));
    if (!p->c) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    memcpy(p->c, centroids, k * d * sizeof(float));
    if (k * d < PROBE_SCREEN_MIN || k < 16)
        goto out;
    if ((err = eng_sq8_train(p->c, k, d, &p->sq)))
        goto out;
    p->codes = malloc(k * d);
    p->err = malloc(k * sizeof(double));
    p->norm = malloc(k * sizeof(double));
    p->n2 = malloc(k * sizeof(double));
    if (!p->codes || !p->err || !p->norm || !p->n2) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    eng_sq8_encode(&p->sq, p->c, k, p->codes);
    for (size_t j = 0; j < k; j++) {
        const float *row = p->c + j * d;
        const uint8_t *code = p->codes + j * d;
        double e = 0, n = 0, n2 = 0;
        for (size_t i = 0; i < d; i++) {
            double sc = (double)p->sq.step[i] * code[i];
            n2 += sc * sc;
            /* The screen's decoded value is vmin + step * code in real arithmetic. */
            double x = (double)p->sq.vmin[i] + (double)p->sq.step[i] * code[i];
            double diff = (double)row[i] - x;
            e += diff * diff;
            n += (double)row[i] * row[i];
        }
        /* Rounded up: double error here is ~1e-16 relative, far below the margin. */
        p->err[j] = sqrt(e) * (1 + 1e-9) + 1e-30;
        p->norm[j] = sqrt(n) * (1 + 1e-9);
        p->n2[j] = n2;
    }
    /* Per int32 lane the dot adds 2 * ceil(d / 16) products of |W| * 255. */
    double lim = 2147483647.0 / (510.0 * (double)((d + 15) / 16));
    p->wmax = lim >= 32767 ? 32767 : (int32_t)lim;
    if (p->wmax < 64) { /* d too large for a useful integer screen */
        free(p->codes);
        p->codes = NULL;
    }
out:
    if (err) {
        eng_probe_free(p);
        return err;
    }
    *out = p;
    return CDX_OK;
}

eng_probe *eng_probe_ref(eng_probe *p)
{
    if (p)
        atomic_fetch_add(&p->refs, 1);
    return p;
}

void eng_probe_free(eng_probe *p)
{
    if (!p || atomic_fetch_sub(&p->refs, 1) != 1)
        return;
    free(p->c);
    free(p->codes);
    free(p->err);
    free(p->norm);
    free(p->n2);
    eng_sq8_free(&p->sq);
    free(p);
}

const float *eng_probe_centroids(const eng_probe *p)
{
    return p->c;
}

/* Every centroid scored exactly (eng_kmeans_probe's own loop). */
static size_t probe_exact(const eng_probe *p, const float *q, eng_topk *t)
{
    float s[PROBE_CHUNK];
    for (size_t j = 0; j < p->k; j += PROBE_CHUNK) {
        size_t nb = p->k - j < PROBE_CHUNK ? p->k - j : PROBE_CHUNK;
        if (p->m == ENG_KM_L2)
            eng_l2sq_many(q, p->c + j * p->d, nb, p->d, s);
        else
            eng_dot_many(q, p->c + j * p->d, nb, p->d, s);
        for (size_t i = 0; i < nb; i++)
            eng_topk_push(t, s[i], j + i);
    }
    return p->k;
}

/* The value of rank `r` (0-based) in ascending order of v[0..n) (reorders v). */
static double select_nth(double *v, size_t n, size_t r)
{
    size_t lo = 0, hi = n - 1;
    while (lo < hi) {
        double pivot = v[lo + (hi - lo) / 2];
        size_t i = lo, j = hi;
        while (i <= j) {
            while (v[i] < pivot)
                i++;
            while (v[j] > pivot)
                j--;
            if (i <= j) {
                double t = v[i];
                v[i] = v[j];
                v[j] = t;
                i++;
                if (j == 0)
                    break;
                j--;
            }
        }
        if (r <= j)
            hi = j;
        else if (r >= i)
            lo = i;
        else
            return v[r];
    }
    return v[r];
}

/* S[j] = sum_i w[i] * codes[j*d + i], exact in integers, for k rows. */
static void idot_scalar(const int16_t *w, const uint8_t *codes, size_t k, size_t d, int64_t *S)
{
    for (size_t j = 0; j < k; j++) {
        const uint8_t *c = codes + j * d;
        int64_t acc = 0;
        for (size_t i = 0; i < d; i++)
            acc += (int32_t)w[i] * c[i];
        S[j] = acc;
    }
}

#if ENG_X86
/* 16 codes widened to int16 and multiplied pairwise (vpmaddwd): 3 uops per 16 codes. */
AVX2 static void idot_avx2(const int16_t *w, const uint8_t *codes, size_t k, size_t d, int64_t *S)
{
    size_t d16 = d & ~(size_t)15;
    for (size_t j = 0; j < k; j++) {
        const uint8_t *c = codes + j * d;
        __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
        size_t i = 0;
        for (; i + 32 <= d16; i += 32) {
            __m256i c0 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(c + i)));
            __m256i c1 =
                _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(c + i + 16)));
            __m256i w0 = _mm256_loadu_si256((const __m256i *)(const void *)(w + i));
            __m256i w1 = _mm256_loadu_si256((const __m256i *)(const void *)(w + i + 16));
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(c0, w0));
            acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(c1, w1));
        }
        for (; i < d16; i += 16) {
            __m256i c0 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(c + i)));
            __m256i w0 = _mm256_loadu_si256((const __m256i *)(const void *)(w + i));
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(c0, w0));
        }
        int32_t lanes[16];
        _mm256_storeu_si256((__m256i *)(void *)lanes, acc0);
        _mm256_storeu_si256((__m256i *)(void *)(lanes + 8), acc1);
        int64_t acc = 0;
        for (int l = 0; l < 16; l++)
            acc += lanes[l];
        for (; i < d; i++)
            acc += (int32_t)w[i] * c[i];
        S[j] = acc;
    }
}
#endif

/*
 * Screen: an interval [lo[j], hi[j]] around the float score eng_kmeans_probe
 * computes for every centroid, from an integer dot product of the codes with
 * the query's weights rounded to int16. Everything else is double. False
 * when the query's weights are all zero or not finite (then: exact).
 */
static bool screen(const eng_probe *p, const float *q, int16_t *W, int64_t *S, double *lo,
                   double *hi)
{
    size_t d = p->d, k = p->k;
    double gam = 2.0 * (double)(d + 10) * U; /* relative rounding of the exact kernel */
    double qn = 0, tn = 0, bias = 0, wabs = 0, rsum = 0;
    bool l2 = p->m == ENG_KM_L2;
    double *w = (double *)(void *)lo; /* scratch: lo is rewritten below */

    /* L2: ||t - step.code||^2 with t = q - vmin; IP: q.vmin + sum q_i step_i code_i. */
    for (size_t i = 0; i < d; i++) {
        double qi = q[i], ti = qi - (double)p->sq.vmin[i];
        qn += qi * qi;
        tn += ti * ti;
        bias += qi * (double)p->sq.vmin[i];
        w[i] = (l2 ? ti : qi) * (double)p->sq.step[i];
        wabs = fabs(w[i]) > wabs ? fabs(w[i]) : wabs;
    }
    if (!(wabs > 0) || !isfinite(wabs) || !isfinite(tn) || !isfinite(bias))
        return false;
    double delta = wabs / p->wmax;
    for (size_t i = 0; i < d; i++) {
        double r = nearbyint(w[i] / delta);
        r = r > p->wmax ? p->wmax : r < -p->wmax ? -p->wmax : r;
        W[i] = (int16_t)r;
        rsum += fabs(w[i] - r * delta);
    }
    qn = sqrt(qn);
#if ENG_X86
    if (eng_simd_level() == ENG_SIMD_AVX2)
        idot_avx2(W, p->codes, k, d, S);
    else
#endif
        idot_scalar(W, p->codes, k, d, S);
    /* |sum (w_i - W_i delta) code_i| <= 255 rsum; double rounding: 1e-12 of the magnitudes. */
    double qerr = 255.0 * rsum * (1 + 1e-9);
    for (size_t j = 0; j < k; j++) {
        double dot = delta * (double)S[j];
        if (l2) {
            double a = tn - 2.0 * dot + p->n2[j];
            double e = 2.0 * qerr + 1e-12 * (tn + 2.0 * fabs(dot) + p->n2[j]);
            double dlo = sqrt(a - e > 0 ? a - e : 0) - p->err[j]; /* bounds on ||q - c|| */
            double dhi = sqrt(a + e > 0 ? a + e : 0) + p->err[j];
            dlo = dlo > 0 ? dlo : 0;
            lo[j] = dlo * dlo * (1 - gam); /* the exact kernel's float rounding */
            hi[j] = dhi * dhi * (1 + gam);
        } else {
            double a = bias + dot;
            double e = qerr + 1e-12 * (fabs(bias) + fabs(dot)) + qn * p->err[j] +
                       gam * qn * p->norm[j];
            lo[j] = a - e;
            hi[j] = a + e;
        }
    }
    return true;
}

size_t eng_probe_run(const eng_probe *p, const float *q, size_t nprobe, uint32_t *out,
                     size_t *rescored)
{
    size_t k = p->k, d = p->d, want, got = 0, scored = 0;
    int16_t *W = NULL;
    int64_t *S = NULL;
    double *lo = NULL, *hi = NULL, *sel = NULL;
    uint64_t *refs = NULL;
    eng_topk *t;

    if (rescored)
        *rescored = 0;
    if (nprobe == 0)
        return 0;
    want = nprobe < k ? nprobe : k;
    t = eng_topk_new(want, p->m == ENG_KM_IP);
    refs = malloc(want * sizeof(*refs));
    if (!t || !refs)
        goto out;
    bool screened = false;
    if (p->codes && want < k / 4) {
        W = malloc(d * sizeof(int16_t));
        S = malloc(k * sizeof(int64_t));
        lo = malloc((k > d ? k : d) * sizeof(double));
        hi = malloc(k * sizeof(double));
        sel = malloc(k * sizeof(double));
        if (!W || !S || !lo || !hi || !sel)
            goto out;
        if (screen(p, q, W, S, lo, hi)) {
            size_t n = 0;
            double cut;
            if (p->m == ENG_KM_L2) {
                /* Some `want` centroids score at most cut: anything better has lo <= cut. */
                memcpy(sel, hi, k * sizeof(double));
                cut = select_nth(sel, k, want - 1);
                for (size_t j = 0; j < k; j++)
                    n += lo[j] <= cut;
            } else {
                for (size_t j = 0; j < k; j++)
                    sel[j] = -lo[j];
                cut = -select_nth(sel, k, want - 1);
                for (size_t j = 0; j < k; j++)
                    n += hi[j] >= cut;
            }
            if (n <= k / 4) {
                screened = true;
                for (size_t j = 0; j < k; j++) {
                    bool in = p->m == ENG_KM_L2 ? lo[j] <= cut : hi[j] >= cut;
                    if (!in)
                        continue;
                    const float *row = p->c + j * d;
                    float s = p->m == ENG_KM_L2 ? eng_l2sq(q, row, d) : eng_dot(q, row, d);
                    eng_topk_push(t, s, j);
                    scored++;
                }
            }
        }
    }
    if (!screened)
        scored = probe_exact(p, q, t);
    got = eng_topk_sorted(t, NULL, refs);
    for (size_t i = 0; i < got; i++)
        out[i] = (uint32_t)refs[i];
    if (rescored)
        *rescored = scored;
out:
    eng_topk_free(t);
    free(refs);
    free(W);
    free(S);
    free(lo);
    free(hi);
    free(sel);
    return got;
}
