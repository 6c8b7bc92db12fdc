/*
 * eng_kmeans.c - k-means with k-means++ seeding and sgemm assignment
 * (eng_kmeans.h).
 *
 * Memory: the subsample is never copied; rows are addressed through an index
 * array (or directly when every row is used) and gathered 4096 at a time for
 * the sgemm, whose score matrix is also bounded (ASSIGN_SCORES_MAX floats).
 */
#include "eng_kmeans.h"

#include "cdx_log.h"
#include "cdx_time.h"
#include "eng_blas.h"
#include "eng_dist.h"
#include "eng_topk.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>

#define ASSIGN_ROWS_MAX        4096u
#define ASSIGN_SCORES_MAX      (8u * 1024u * 1024u) /* floats of one score block: 32 MiB */
#define PROBE_CHUNK            256                  /* centroids scored per eng_*_many call */
#define SPLIT_EPS              (1.0f / 1024.0f)     /* relative size of a split's perturbation */
#define DEFAULT_PPC            256u
#define KMPP_POOL_PER_CENTROID 4u /* k-means++ seeding pool: max(4 k, 4096) rows */
#define KMPP_POOL_MIN          4096u
#define KMPP_TRIALS_MAX        16 /* greedy k-means++ candidates per centre */

/* ---- deterministic randomness: splitmix64 ------------------------------ */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double rng_unit(uint64_t *s)
{
    return (double)(rng_next(s) >> 11) * 0x1.0p-53;
}

/* Uniform in [0, n) for n >= 1 (n < 2^53). */
static size_t rng_below(uint64_t *s, size_t n)
{
    size_t r = (size_t)(rng_unit(s) * (double)n);

    return r < n ? r : n - 1;
}

/* ---- BLAS ------------------------------------------------------------- */

const char *eng_kmeans_blas_core(void)
{
    return openblas_get_corename();
}

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;

/*
 * OpenBLAS picks its kernels by CPU model at load time; a model newer than
 * the library (Debian 12's 0.3.21 on Emerald Rapids) falls back to the SSE3
 * "Prescott" kernels, ~6x slower. Only the environment (OPENBLAS_CORETYPE,
 * read when the library loads) can fix that, so say so once.
 */
static void blas_check(void)
{
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    const char *core = openblas_get_corename();

    __builtin_cpu_init();
    if (!core || !__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
        return;
    if (eng_blas_is_generic(core))
        cdx_log(CDX_LOG_WARN, "blas_generic_kernels",
                "core=%s cpu=avx2 impact=\"k-means training ~6x slower\" "
                "fix=\"set OPENBLAS_CORETYPE=SkylakeX (AVX-512) or Haswell (AVX2) in the "
                "environment\"",
                core);
#endif
}

/* ---- blocked sgemm assignment ----------------------------------------- */

typedef struct assigner {
    size_t d, k;
    const float *c;
    eng_km_metric m;
    size_t rows_max; /* rows per block */
    float *cnorm;    /* k: ||c||^2 (L2) */
    float *scores;   /* rows_max * k */
} assigner;

static void assigner_free(assigner *a)
{
    free(a->cnorm);
    free(a->scores);
    memset(a, 0, sizeof(*a));
}

static cdx_err assigner_init(assigner *a, const float *c, size_t k, size_t d, eng_km_metric m)
{
    pthread_once(&blas_once, blas_check);
    memset(a, 0, sizeof(*a));
    a->d = d;
    a->k = k;
    a->c = c;
    a->m = m;
    a->rows_max = ASSIGN_SCORES_MAX / k;
    if (a->rows_max > ASSIGN_ROWS_MAX)
        a->rows_max = ASSIGN_ROWS_MAX;
    if (a->rows_max == 0)
        a->rows_max = 1;
    a->cnorm = malloc(k * sizeof(float));
    a->scores = malloc(a->rows_max * k * sizeof(float));
    if (!a->cnorm || !a->scores) {
        assigner_free(a);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "k-means: out of memory (k=%zu)", k);
    }
    return CDX_OK;
}

/* Call after the centroids changed. */
static void assigner_refresh(assigner *a)
{
    for (size_t j = 0; j < a->k; j++)
        a->cnorm[j] = eng_dot(a->c + j * a->d, a->c + j * a->d, a->d);
}

/*
 * Assign nb <= rows_max contiguous rows. The sgemm scores only pick the
 * winner; the reported distance is recomputed exactly (no cancellation in
 * ||x||^2 - 2 x.c + ||c||^2, and the same bits as the query-time kernels).
 */
static void assign_block(assigner *a, const float *rows, size_t nb, uint32_t *out, float *dist)
{
    size_t k = a->k, d = a->d;

    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nb, (int)k, (int)d, 1.0f, rows,
                (int)d, a->c, (int)d, 0.0f, a->scores, (int)k);
    for (size_t i = 0; i < nb; i++) {
        const float *s = a->scores + i * k;
        size_t best = 0;

        if (a->m == ENG_KM_L2) {
            /* ||x||^2 is the same for every centroid: compare ||c||^2 - 2 x.c. */
            float bv = a->cnorm[0] - 2.0f * s[0];
            for (size_t j = 1; j < k; j++) {
                float v = a->cnorm[j] - 2.0f * s[j];
                if (v < bv) {
                    bv = v;
                    best = j;
                }
            }
        } else {
            float bv = s[0];
            for (size_t j = 1; j < k; j++)
                if (s[j] > bv) {
                    bv = s[j];
                    best = j;
                }
        }
        out[i] = (uint32_t)best;
        if (dist) {
            const float *x = rows + i * d, *c = a->c + best * d;
            dist[i] = a->m == ENG_KM_L2 ? eng_l2sq(x, c, d) : eng_dot(x, c, d);
        }
    }
}

static cdx_err check_sizes(size_t n, size_t d, size_t k)
{
    if (k == 0 || d == 0)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "k-means: k (%zu) and d (%zu) must be > 0", k, d);
    /* cblas takes int dimensions; k * d floats must be addressable. */
    if (k > INT_MAX || d > INT_MAX || k > SIZE_MAX / sizeof(double) / d ||
        (n > 0 && d > SIZE_MAX / sizeof(float) / n))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "k-means: sizes too large (n=%zu d=%zu k=%zu)", n,
                        d, k);
    return CDX_OK;
}

cdx_err eng_kmeans_assign(const float *x, size_t n, size_t d, const float *centroids, size_t k,
                          eng_km_metric m, uint32_t *assign, float *dist)
{
    assigner a;
    cdx_err rc = check_sizes(n, d, k);

    if (rc != CDX_OK)
        return rc;
    if (n == 0)
        return CDX_OK;
    rc = assigner_init(&a, centroids, k, d, m);
    if (rc != CDX_OK)
        return rc;
    assigner_refresh(&a);
    for (size_t i = 0; i < n; i += a.rows_max) {
        size_t nb = n - i < a.rows_max ? n - i : a.rows_max;
        assign_block(&a, x + i * d, nb, assign + i, dist ? dist + i : NULL);
    }
    assigner_free(&a);
    return CDX_OK;
}

/* ---- probe ------------------------------------------------------------ */

size_t eng_kmeans_probe(const float *q, size_t d, const float *centroids, size_t k, eng_km_metric m,
                        size_t nprobe, uint32_t *out)
{
    float s[PROBE_CHUNK];
    uint64_t refs[PROBE_CHUNK];
    eng_topk *t;
    size_t got, want;

    if (nprobe == 0 || k == 0 || d == 0)
        return 0;
    want = nprobe < k ? nprobe : k;
    t = eng_topk_new(want, m == ENG_KM_IP);
    if (!t)
        return 0;
    for (size_t j = 0; j < k; j += PROBE_CHUNK) {
        size_t nb = k - j < PROBE_CHUNK ? k - j : PROBE_CHUNK;
        if (m == ENG_KM_L2)
            eng_l2sq_many(q, centroids + j * d, nb, d, s);
        else
            eng_dot_many(q, centroids + j * d, nb, d, s);
        for (size_t i = 0; i < nb; i++)
            eng_topk_push(t, s[i], j + i);
    }
    /* Take refs in chunks so nothing larger than the top-k is allocated here. */
    got = eng_topk_size(t);
    if (got <= PROBE_CHUNK) {
        eng_topk_sorted(t, NULL, refs);
        for (size_t i = 0; i < got; i++)
            out[i] = (uint32_t)refs[i];
    } else {
        uint64_t *all = malloc(got * sizeof(uint64_t));
        if (!all) {
            eng_topk_free(t);
            return 0;
        }
        eng_topk_sorted(t, NULL, all);
        for (size_t i = 0; i < got; i++)
            out[i] = (uint32_t)all[i];
        free(all);
    }
    eng_topk_free(t);
    return got;
}

/* ---- training --------------------------------------------------------- */

typedef struct km {
    const float *x;
    size_t d, k, m; /* m: sample size */
    size_t *idx;    /* m row numbers into x; NULL: rows 0..m-1 */
    eng_kmeans_opts o;
    uint64_t rng;
    float *c;      /* k * d (the caller's output) */
    uint32_t *asg; /* m */
    float *dist;   /* m */
    double *sums;  /* k * d */
    size_t *count; /* k */
    double *cobj;  /* k: summed distance per cluster (L2) */
    float *gather; /* rows_max * d when idx */
    uint32_t *old; /* rows_max: a block's previous assignments */
    assigner as;
} km;

static inline const float *km_row(const km *s, size_t i)
{
    return s->x + (s->idx ? s->idx[i] : i) * s->d;
}

/* Selection sampling (Knuth's algorithm S): want <= n indices, increasing, from rng. */
static void select_rows(uint64_t *rng, size_t n, size_t want, size_t *out)
{
    size_t got = 0;

    /* Once as many rows remain as are still wanted, take them all (no rounding can skip one). */
    for (size_t i = 0; i < n && got < want; i++)
        if (n - i <= want - got || (double)(n - i) * rng_unit(rng) < (double)(want - got))
            out[got++] = i;
}

static cdx_err km_subsample(km *s, size_t n)
{
    if (s->m == n)
        return CDX_OK;
    s->idx = malloc(s->m * sizeof(size_t));
    if (!s->idx)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "k-means: out of memory (sample %zu)", s->m);
    select_rows(&s->rng, n, s->m, s->idx);
    return CDX_OK;
}

/*
 * Greedy k-means++ (as in scikit-learn) on a pool of max(4 * k, 4096) sample
 * rows (all of them when the sample is smaller), picked by selection
 * sampling. The first centre is uniform; every next one is the best of
 * L = 2 + ln(k) candidates drawn with probability proportional to D^2 (the
 * squared distance to the nearest centre so far): the candidate leaving the
 * smallest total D^2. Plain k-means++ (L = 1) put two seeds into one of 8
 * well-separated blobs in ~1 run of 20, which Lloyd cannot undo.
 *
 * Every centre costs a pass over the pool (L distances per row), so the
 * pool is what bounds seeding: on the whole 60000 x 784 sample, plain
 * k-means++ with k = 256 took 5.4 s, several times the Lloyd iterations.
 * A row whose nearest centre c_a has ||cand - c_a||^2 >= 4 D^2 for every
 * candidate cannot get closer to any of them (triangle inequality) and is
 * not read.
 */
static cdx_err km_seed(km *s)
{
    size_t m = s->m, d = s->d, k = s->k;
    size_t p =
        k > KMPP_POOL_MIN / KMPP_POOL_PER_CENTROID ? k * KMPP_POOL_PER_CENTROID : KMPP_POOL_MIN;
    size_t L = 2 + (size_t)log((double)k);
    size_t *pool = NULL, pick[KMPP_TRIALS_MAX];
    float *d2 = NULL, *cd = NULL, *cand = NULL, *cc = NULL;
    uint32_t *near = NULL;
    double pot[KMPP_TRIALS_MAX];
    cdx_err rc = CDX_OK;

    if (p > m)
        p = m;
    if (L > KMPP_TRIALS_MAX)
        L = KMPP_TRIALS_MAX;
    d2 = malloc(p * sizeof(float));
    near = malloc(p * sizeof(uint32_t));
    cd = malloc(p * L * sizeof(float));
    cand = malloc(L * d * sizeof(float));
    cc = malloc(L * k * sizeof(float));
    if (!d2 || !near || !cd || !cand || !cc || (p < m && !(pool = malloc(p * sizeof(size_t))))) {
        rc = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "k-means: out of memory (seeding)");
        goto out;
    }
    if (pool)
        select_rows(&s->rng, m, p, pool);
#define POOL_ROW(i) km_row(s, pool ? pool[i] : (i))
    memcpy(s->c, POOL_ROW(rng_below(&s->rng, p)), d * sizeof(float));
    for (size_t i = 0; i < p; i++) {
        d2[i] = eng_l2sq(POOL_ROW(i), s->c, d);
        near[i] = 0;
    }
    for (size_t j = 1; j < k; j++) {
        double total = 0;
        for (size_t i = 0; i < p; i++)
            total += d2[i];
        for (size_t l = 0; l < L; l++) {
            pick[l] = SIZE_MAX;
            if (total > 0) {
                double r = rng_unit(&s->rng) * total, acc = 0;
                for (size_t i = 0; i < p; i++) {
                    acc += d2[i];
                    if (acc > r && d2[i] > 0) {
                        pick[l] = i;
                        break;
                    }
                }
                /* r rounded onto the total: take the last candidate. */
                for (size_t i = p; pick[l] == SIZE_MAX && i-- > 0;)
                    if (d2[i] > 0)
                        pick[l] = i;
            }
            /* All rows coincide with centres (duplicates): the splits handle it later. */
            if (pick[l] == SIZE_MAX)
                pick[l] = rng_below(&s->rng, p);
            memcpy(cand + l * d, POOL_ROW(pick[l]), d * sizeof(float));
            eng_l2sq_many(cand + l * d, s->c, j, d, cc + l * k);
            pot[l] = 0;
        }
        for (size_t i = 0; i < p; i++) {
            float *ci = cd + i * L;
            bool read = false;
            for (size_t l = 0; l < L && !read; l++)
                read = cc[l * k + near[i]] < 4.0f * d2[i];
            if (read)
                eng_l2sq_many(POOL_ROW(i), cand, L, d, ci);
            for (size_t l = 0; l < L; l++) {
                if (!read || ci[l] > d2[i])
                    ci[l] = d2[i];
                pot[l] += ci[l];
            }
        }
        size_t best = 0;
        for (size_t l = 1; l < L; l++)
            if (pot[l] < pot[best])
                best = l;
        memcpy(s->c + j * d, cand + best * d, d * sizeof(float));
        for (size_t i = 0; i < p; i++)
            if (cd[i * L + best] < d2[i]) {
                d2[i] = cd[i * L + best];
                near[i] = (uint32_t)j;
            }
    }
#undef POOL_ROW
out:
    free(pool);
    free(d2);
    free(near);
    free(cd);
    free(cand);
    free(cc);
    return rc;
}

/* One assignment pass over the sample; returns the objective, counts changed assignments. */
static double km_assign(km *s, size_t *changed)
{
    size_t d = s->d, bmax = s->as.rows_max;
    double obj = 0;

    *changed = 0;
    assigner_refresh(&s->as);
    for (size_t i = 0; i < s->m; i += bmax) {
        size_t nb = s->m - i < bmax ? s->m - i : bmax;
        const float *rows = s->x + i * d;

        if (s->idx) {
            for (size_t r = 0; r < nb; r++)
                memcpy(s->gather + r * d, km_row(s, i + r), d * sizeof(float));
            rows = s->gather;
        }
        memcpy(s->old, s->asg + i, nb * sizeof(uint32_t));
        assign_block(&s->as, rows, nb, s->asg + i, s->dist + i);
        for (size_t r = 0; r < nb; r++)
            *changed += s->old[r] != s->asg[i + r];
    }
    for (size_t i = 0; i < s->m; i++)
        obj += s->dist[i];
    return obj;
}

/* New centroids = means of their rows; empty clusters split the largest. Returns splits. */
static uint32_t km_update(km *s)
{
    size_t d = s->d, k = s->k;
    uint32_t splits = 0;

    memset(s->sums, 0, k * d * sizeof(double));
    memset(s->count, 0, k * sizeof(size_t));
    memset(s->cobj, 0, k * sizeof(double));
    for (size_t i = 0; i < s->m; i++) {
        uint32_t a = s->asg[i];
        const float *x = km_row(s, i);
        double *sum = s->sums + (size_t)a * d;
        for (size_t t = 0; t < d; t++)
            sum[t] += x[t];
        s->count[a]++;
        s->cobj[a] += s->dist[i];
    }
    for (size_t j = 0; j < k; j++) {
        if (s->count[j] == 0)
            continue;
        double inv = 1.0 / (double)s->count[j];
        for (size_t t = 0; t < d; t++)
            s->c[j * d + t] = (float)(s->sums[j * d + t] * inv);
    }
    for (size_t j = 0; j < k; j++) {
        if (s->count[j] != 0)
            continue;
        /* m >= k rows in at most k - 1 clusters: the largest holds >= 2. */
        size_t big = 0;
        for (size_t t = 1; t < k; t++)
            if (s->count[t] > s->count[big])
                big = t;
        float *cb = s->c + big * d, *ce = s->c + j * d;
        double cn = 0;
        for (size_t t = 0; t < d; t++)
            cn += (double)cb[t] * cb[t];
        /* Perturbation size: relative to the coordinate, the centroid's RMS and the cluster's
         * RMS spread, so a centroid at the origin or a tight cluster still splits. */
        float base = (float)sqrt(cn / (double)d);
        if (s->o.metric == ENG_KM_L2)
            base += (float)sqrt(s->cobj[big] / ((double)s->count[big] * (double)d));
        for (size_t t = 0; t < d; t++) {
            float delta = SPLIT_EPS * (fabsf(cb[t]) + base);
            if (rng_next(&s->rng) & 1)
                delta = -delta;
            ce[t] = cb[t] + delta;
            cb[t] = cb[t] - delta;
        }
        s->count[j] = s->count[big] / 2;
        s->count[big] -= s->count[j];
        s->cobj[j] = s->cobj[big] = s->cobj[big] / 2;
        splits++;
    }
    if (s->o.spherical)
        for (size_t j = 0; j < k; j++)
            eng_normalize(s->c + j * d, d);
    return splits;
}

static void km_free(km *s)
{
    free(s->idx);
    free(s->asg);
    free(s->dist);
    free(s->sums);
    free(s->count);
    free(s->cobj);
    free(s->gather);
    free(s->old);
    assigner_free(&s->as);
}

cdx_err eng_kmeans_train(const float *x, size_t n, size_t d, const eng_kmeans_opts *o,
                         float *centroids, eng_kmeans_stats *st)
{
    double t0 = cdx_mono_s();
    km s;
    cdx_err rc;
    size_t ppc, k;
    double prev = 0;
    uint32_t splits_prev = 0;

    memset(&s, 0, sizeof(s));
    if (st)
        memset(st, 0, sizeof(*st));
    if (!x || !o || !centroids)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "k-means: NULL argument");
    k = o->k;
    rc = check_sizes(n, d, k);
    if (rc != CDX_OK)
        return rc;
    if (n < k)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "k-means: %zu rows for %zu centroids", n, k);
    if (o->metric != ENG_KM_L2 && o->metric != ENG_KM_IP)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "k-means: unknown metric %d", (int)o->metric);
    for (size_t i = 0; i < n * d; i++)
        if (!isfinite(x[i]))
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "k-means: non-finite value at row %zu",
                            i / d);

    s.x = x;
    s.d = d;
    s.k = k;
    s.o = *o;
    s.c = centroids;
    s.rng = o->seed;
    ppc = o->max_points_per_centroid ? o->max_points_per_centroid : DEFAULT_PPC;
    s.m = ppc > SIZE_MAX / k || ppc * k >= n ? n : ppc * k;

    rc = km_subsample(&s, n);
    if (rc != CDX_OK)
        goto out;
    rc = assigner_init(&s.as, centroids, k, d, o->metric);
    if (rc != CDX_OK)
        goto out;
    s.asg = malloc(s.m * sizeof(uint32_t));
    s.dist = malloc(s.m * sizeof(float));
    s.sums = malloc(k * d * sizeof(double));
    s.count = malloc(k * sizeof(size_t));
    s.cobj = malloc(k * sizeof(double));
    s.old = malloc(s.as.rows_max * sizeof(uint32_t));
    if (s.idx)
        s.gather = malloc(s.as.rows_max * d * sizeof(float));
    if (!s.asg || !s.dist || !s.sums || !s.count || !s.cobj || !s.old || (s.idx && !s.gather)) {
        rc = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "k-means: out of memory (n=%zu d=%zu k=%zu)", s.m,
                      d, k);
        goto out;
    }
    for (size_t i = 0; i < s.m; i++)
        s.asg[i] = UINT32_MAX; /* so the first pass counts every row as changed */

    rc = km_seed(&s);
    if (rc != CDX_OK)
        goto out;
    if (o->spherical)
        for (size_t j = 0; j < k; j++)
            eng_normalize(centroids + j * d, d);

    for (uint32_t it = 0; it < o->max_iters; it++) {
        size_t changed;
        double obj = km_assign(&s, &changed);
        uint32_t splits = km_update(&s);

        if (st) {
            st->iterations = it + 1;
            st->objective = obj;
            st->splits += splits;
        }
        /* Unchanged assignments and no split: the update reproduced the same centroids. */
        if (changed == 0 && splits == 0 && splits_prev == 0)
            break;
        /* Around a split the objective may rise a little, and a split pair needs refining:
         * no tolerance test then. */
        if (it > 0 && splits == 0 && splits_prev == 0) {
            double gain;
            if (o->metric == ENG_KM_L2)
                gain = prev > 0 ? (prev - obj) / prev : 0;
            else
                gain = prev != 0 ? (obj - prev) / fabs(prev) : 0;
            if (gain <= (double)(o->tolerance > 0 ? o->tolerance : 0))
                break;
        }
        prev = obj;
        splits_prev = splits;
    }
out:
    if (st) {
        st->sample_size = s.m;
        st->seconds = cdx_mono_s() - t0;
    }
    km_free(&s);
    return rc;
}
