/* Coarse quantisation screened on SQ8 codes, finished exactly (see eng_probe.h). */
#include "eng_probe.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "eng_dist.h"
#include "eng_screen.h"
#include "eng_sq8.h"
#include "eng_topk.h"

/* Below this many centroid floats the screen saves nothing worth its bookkeeping. */
#define PROBE_SCREEN_MIN 16384u
#define PROBE_CHUNK      256u

struct eng_probe {
    atomic_uint refs;
    size_t k, d;
    eng_km_metric m;
    float *c;       /* k x d float centroids */
    uint8_t *codes; /* k x d, NULL when the screen is off */
    float *aux;     /* k x 2: eng_screen row aux */
    eng_sq8 sq;
};

cdx_err eng_probe_new(const float *centroids, size_t k, size_t d, eng_km_metric m, eng_probe **out)
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
    p->aux = malloc(k * 2 * sizeof(float));
    if (!p->codes || !p->aux) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    eng_sq8_encode(&p->sq, p->c, k, p->codes);
    for (size_t j = 0; j < k; j++)
        eng_screen_row_aux(&p->sq, p->c + j * d, p->codes + j * d, p->aux + 2 * j);
    if (!eng_screen_wmax(d)) { /* d too large for the integer screen */
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
    free(p->aux);
    eng_sq8_free(&p->sq);
    free(p);
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
        lo = malloc(k * sizeof(double));
        hi = malloc(k * sizeof(double));
        sel = malloc(k * sizeof(double));
        if (!W || !S || !lo || !hi || !sel)
            goto out;
        eng_screen sc;
        if (eng_screen_prepare(&sc, &p->sq, q, p->m, false, W)) {
            eng_screen_bounds(&sc, p->codes, p->aux, k, S, lo, hi);
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
