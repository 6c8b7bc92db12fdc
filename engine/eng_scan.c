/* The scans of one query vector (eng_scan.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "eng_dist.h"
#include "eng_int.h"
#include "eng_json.h"
#include "eng_scan.h"
#include "eng_screen.h"
#include "eng_sq8.h"

/* (segment token, row) pairs that later segments of a cluster tombstone. */
typedef struct deadset {
    size_t n;
    uint8_t (*key)[ENG_TOMB_LEN];
} deadset;

static int cmp_tomb(const void *a, const void *b)
{
    return memcmp(a, b, ENG_TOMB_LEN);
}

static cdx_err deadset_build(eng_search *const *blocks, size_t n, deadset *ds)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += blocks[i]->ntomb;
    ds->n = 0;
    ds->key = NULL;
    if (!total)
        return CDX_OK;
    ds->key = malloc(total * ENG_TOMB_LEN);
    if (!ds->key)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    for (size_t i = 0; i < n; i++)
        for (uint32_t t = 0; t < blocks[i]->ntomb; t++)
            memcpy(ds->key[ds->n++], blocks[i]->tombs + (size_t)t * ENG_TOMB_LEN, ENG_TOMB_LEN);
    qsort(ds->key, ds->n, ENG_TOMB_LEN, cmp_tomb);
    return CDX_OK;
}

static bool deadset_has(const deadset *ds, const uint8_t tok[ENG_TOKEN_LEN], uint32_t row)
{
    if (!ds->n)
        return false;
    uint8_t k[ENG_TOMB_LEN];
    memcpy(k, tok, ENG_TOKEN_LEN);
    eng_be32(k + ENG_TOKEN_LEN, row);
    return bsearch(k, ds->key, ds->n, ENG_TOMB_LEN, cmp_tomb) != NULL;
}

/* Does row r's metadata match the query's filter? */
static cdx_err filter_row(const eng_qctx *c, const eng_meta_view *mv, uint32_t r, bool *match)
{
    const uint8_t *mp;
    size_t ml;
    json_t *j = NULL;
    if (!eng_meta_view_row(mv, r, &mp, &ml))
        return cdx_fail(CDX_ERR_INTEGRITY, "metadata block is malformed");
    if (ml && eng_json_parse_object((const char *)mp, ml, CDX_METADATA_MAX, &j))
        return cdx_fail(CDX_ERR_INTEGRITY, "stored metadata is not valid JSON");
    *match = eng_filter_match(c->filter, j);
    json_decref(j);
    return CDX_OK;
}

/* Row r of block i is a candidate: not tombstoned in its cluster, and matching the filter. */
static cdx_err row_live(const eng_qctx *c, const deadset *ds, const uint8_t tok[ENG_TOKEN_LEN],
                        const eng_meta_view *mviews, size_t i, uint32_t r, bool *live)
{
    *live = false;
    if (deadset_has(ds, tok, r))
        return CDX_OK;
    if (c->filter)
        return filter_row(c, &mviews[i], r, live);
    *live = true;
    return CDX_OK;
}

/* A float no smaller than x (the top-k keeps floats; a bound must stay a bound). */
static float float_up(double x)
{
    float f = (float)x;
    return (double)f < x ? nextafterf(f, INFINITY) : f;
}

typedef struct scand {
    double lo;    /* lower bound of the row's score (smaller is better) */
    uint64_t ref; /* block << 32 | row */
} scand;

/*
 * The scan of a trained index (eng_screen.h): bound every live row's score
 * from its codes with an integer dot product, keep the k best upper bounds,
 * and rescore exactly - on the SQ8 codes for IVFSQ8, on the originals for
 * IVFFlat - only the rows whose lower bound reaches the k-th upper bound.
 * tk ends up holding what scoring every row would have put there.
 */
cdx_err eng_scan_screened(eng_qctx *c, const float *qv, const eng_segref **refs,
                          eng_search **blocks, size_t nref, const size_t *gend, uint32_t p0,
                          uint32_t np, const eng_meta_view *mviews, eng_topk *tk, uint64_t *ns_io)
{
    const eng_manifest *m = c->m;
    op *o = c->o;
    size_t d = m->dim;
    bool l2 = c->km == ENG_KM_L2, sq8 = eng_is_sq8(m);
    cdx_err err = CDX_OK;
    eng_sq8 sq = {.d = d, .vmin = m->sq_vmin, .step = m->sq_step};
    int16_t *w = malloc(d * sizeof(int16_t));
    float *qaux = malloc(d * sizeof(float)), *xn = malloc(d * sizeof(float));
    eng_topk *ub = eng_topk_new(c->top_k, false);
    scand *cv = NULL;
    size_t ncv = 0, capcv = 0, caprows = 0, nrows = 0, nresc = 0;
    int64_t *S = NULL;
    double *lo = NULL, *hi = NULL;
    bool *need = NULL;
    eng_search **vecs = NULL;
    if (!w || !qaux || !xn || !ub) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    eng_screen sc;
    bool screen = !atomic_load(&o->e->no_screen) && eng_screen_prepare(&sc, &sq, qv, c->km, sq8, w);
    for (uint32_t p = p0, start = p0 ? (uint32_t)gend[p0 - 1] : 0; p < np && !err;
         start = (uint32_t)gend[p], p++) {
        size_t end = gend[p];
        if (end == start)
            continue;
        deadset ds;
        if ((err = deadset_build(blocks + start, end - start, &ds)))
            break;
        for (size_t i = start; i < end && !err; i++) {
            eng_search *b = blocks[i];
            if (!b->rows)
                continue;
            if (!b->aux) {
                err = cdx_fail(CDX_ERR_INTEGRITY, "search block has no screen data");
                break;
            }
            if (b->rows > caprows) {
                int64_t *s2 = realloc(S, b->rows * sizeof(*S));
                double *l2p = s2 ? realloc(lo, b->rows * sizeof(*lo)) : NULL;
                double *h2 = l2p ? realloc(hi, b->rows * sizeof(*hi)) : NULL;
                S = s2 ? s2 : S;
                lo = l2p ? l2p : lo;
                hi = h2 ? h2 : hi;
                if (!s2 || !l2p || !h2) {
                    err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
                    break;
                }
                caprows = b->rows;
            }
            if (screen)
                eng_screen_bounds(&sc, b->codes, b->aux, b->rows, S, lo, hi);
            nrows += b->rows;
            for (uint32_t r = 0; r < b->rows; r++) {
                /* Orientation: smaller is better (inner products negated). */
                double dlo = !screen ? -INFINITY : l2 ? lo[r] : -hi[r];
                double dhi = !screen ? INFINITY : l2 ? hi[r] : -lo[r];
                bool live;
                if (dlo > (double)eng_topk_threshold(ub))
                    continue;
                if ((err = row_live(c, &ds, refs[i]->token, mviews, i, r, &live)))
                    break;
                if (!live)
                    continue;
                uint64_t ref = (uint64_t)i << 32 | r;
                eng_topk_push(ub, float_up(dhi), ref);
                if (ncv == capcv) {
                    capcv = capcv ? capcv * 2 : 256;
                    scand *c2 = realloc(cv, capcv * sizeof(*cv));
                    if (!c2) {
                        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
                        break;
                    }
                    cv = c2;
                }
                cv[ncv++] = (scand){dlo, ref};
            }
        }
        free(ds.key);
    }
    if (err)
        goto out;
    double cut = (double)eng_topk_threshold(ub);
    if (!sq8) {
        need = calloc(nref + 1, sizeof(*need));
        vecs = calloc(nref + 1, sizeof(*vecs));
        if (!need || !vecs) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto out;
        }
        for (size_t j = 0; j < ncv; j++)
            if (cv[j].lo <= cut)
                need[cv[j].ref >> 32] = true;
        bool missing = false;
        uint64_t t0 = cdx_mono_ns();
        err = eng_fetch_vectors(o, m, refs, nref, need, vecs, &missing);
        *ns_io = cdx_mono_ns() - t0; /* counted as fetch and decrypt by fetch_blocks */
        if (err)
            goto out;
        if (missing) {
            c->need_refresh = true;
            goto out;
        }
    }
    float bias = 0;
    if (sq8)
        l2 ? eng_sq8_prepare_l2(&sq, qv, qaux) : (void)(bias = eng_sq8_prepare_dot(&sq, qv, qaux));
    for (size_t j = 0; j < ncv; j++) {
        if (cv[j].lo > cut)
            continue;
        nresc++;
        size_t i = (size_t)(cv[j].ref >> 32);
        uint32_t r = (uint32_t)cv[j].ref;
        float v;
        if (sq8) {
            const uint8_t *code = blocks[i]->codes + (size_t)r * d;
            if (l2)
                eng_sq8_l2sq_many(qaux, m->sq_step, code, 1, d, &v);
            else
                eng_sq8_dot_many(qaux, bias, code, 1, d, &v);
        } else {
            const float *x = (const float *)(const void *)(vecs[i]->codes) + (size_t)r * d;
            if (m->metric == ENG_METRIC_COSINE) {
                /* Searched on normalised vectors, as written to the codes. */
                memcpy(xn, x, d * sizeof(float));
                eng_normalize(xn, d);
                x = xn;
            }
            v = l2 ? eng_l2sq(qv, x, d) : eng_dot(qv, x, d);
        }
        eng_topk_push(tk, l2 ? v : -v, cv[j].ref);
    }
    atomic_fetch_add(&o->e->n_screened, nrows);
    atomic_fetch_add(&o->e->n_rescored, nresc);
out:
    if (vecs)
        for (size_t i = 0; i < nref; i++)
            eng_search_release(vecs[i]);
    free(vecs);
    free(need);
    free(cv);
    free(S);
    free(lo);
    free(hi);
    free(w);
    free(qaux);
    free(xn);
    eng_topk_free(ub);
    return err;
}

cdx_err eng_scan_flat(eng_qctx *c, const float *qv, const eng_segref **refs, eng_search **blocks,
                      const size_t *gend, uint32_t p0, uint32_t np, const eng_meta_view *mviews,
                      eng_topk *tk)
{
    size_t d = c->m->dim;
    float *dist = NULL;
    cdx_err err = CDX_OK;
    for (uint32_t p = p0, start = p0 ? (uint32_t)gend[p0 - 1] : 0; p < np && !err;
         start = (uint32_t)gend[p], p++) {
        size_t end = gend[p];
        if (end == start)
            continue;
        deadset ds;
        if ((err = deadset_build(blocks + start, end - start, &ds)))
            break;
        for (size_t i = start; i < end && !err; i++) {
            eng_search *b = blocks[i];
            if (!b->rows)
                continue;
            float *nd = realloc(dist, b->rows * sizeof(float));
            if (!nd) {
                err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
                break;
            }
            dist = nd;
            const float *x = (const float *)(const void *)b->codes;
            if (c->km == ENG_KM_L2)
                eng_l2sq_many(qv, x, b->rows, d, dist);
            else
                eng_dot_many(qv, x, b->rows, d, dist);
            for (uint32_t r = 0; r < b->rows; r++) {
                float dv = c->km == ENG_KM_L2 ? dist[r] : -dist[r];
                bool live;
                if (dv > eng_topk_threshold(tk))
                    continue;
                if ((err = row_live(c, &ds, refs[i]->token, mviews, i, r, &live)))
                    break;
                if (!live)
                    continue;
                eng_topk_push(tk, dv, (uint64_t)i << 32 | r);
            }
        }
        free(ds.key);
    }
    free(dist);
    return err;
}
