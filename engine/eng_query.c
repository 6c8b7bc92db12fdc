/* Queries: one query vector (query_one), query threads, eng_query_run. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eng_dist.h"
#include "eng_head.h"
#include "eng_idmap.h"
#include "eng_int.h"
#include "eng_op.h"
#include "eng_par.h"
#include "eng_read.h"
#include "eng_scan.h"

static float final_distance(eng_metric m, float raw)
{
    switch (m) {
    case ENG_METRIC_EUCLIDEAN:
        return sqrtf(raw > 0 ? raw : 0);
    case ENG_METRIC_COSINE:
        return 1.0f + raw; /* raw = -cos */
    default:
        return raw; /* squared L2, or -<q,x> */
    }
}

static cdx_err query_one(eng_qctx *c, size_t qi)
{
    const eng_manifest *m = c->m;
    op *o = c->o;
    size_t d = m->dim;
    cdx_err err = CDX_OK;
    uint32_t nc = eng_manifest_nclusters(m);
    uint32_t *probes = malloc(c->nprobe * sizeof(uint32_t));
    float *qv = malloc(d * sizeof(float));
    float *aux = malloc(d * sizeof(float));
    float *dist = NULL;
    const eng_segref **refs = NULL;
    eng_search **blocks = NULL;
    eng_buf *metas = NULL;
    eng_meta_view *mviews = NULL;
    size_t nref = 0, capref = 0, *gend = NULL;
    eng_topk *tk = eng_topk_new(c->top_k, false);
    if (!probes || !qv || !aux || !tk) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    memcpy(qv, c->q->vectors + qi * d, d * sizeof(float));
    if (m->metric == ENG_METRIC_COSINE)
        eng_normalize(qv, d);
    uint64_t t0 = mono_ns();
    uint32_t np = 1;
    probes[0] = 0;
    if (m->n_clusters) {
        size_t rescored = 0;
        np = m->probe ? (uint32_t)eng_probe_run(m->probe, qv, c->nprobe, probes, &rescored) : 0;
        atomic_fetch_add(&o->e->n_probe_rescored, rescored);
        if (np == 0) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "coarse quantisation failed");
            goto out;
        }
    }
    eng_stage_add(&o->e->ns_coarse, ENG_STAGE_COARSE, mono_ns() - t0);
    /* gend[p]: end of probe p's segments in refs (tombstones apply within a cluster). */
    gend = calloc(np + 1, sizeof(*gend));
    if (!gend) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (uint32_t p = 0; p < np; p++) {
        gend[p] = nref;
        if (probes[p] >= nc)
            continue;
        const eng_cluster *cl = &m->clusters[probes[p]];
        for (uint32_t s = 0; s < cl->nseg; s++) {
            if (nref == capref) {
                capref = capref ? capref * 2 : 64;
                const eng_segref **r2 = realloc(refs, capref * sizeof(*r2));
                if (!r2) {
                    err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
                    goto out;
                }
                refs = r2;
            }
            refs[nref++] = &cl->seg[s];
        }
        gend[p] = nref;
    }
    blocks = calloc(nref + 1, sizeof(*blocks));
    if (!blocks) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    bool missing = false;
    if ((err = eng_fetch_search(o, m, refs, nref, blocks, &missing)))
        goto out;
    if (missing) {
        c->need_refresh = true;
        goto out;
    }
    if (c->filter) {
        metas = calloc(nref + 1, sizeof(*metas));
        mviews = calloc(nref + 1, sizeof(*mviews));
        if (!metas || !mviews) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto out;
        }
        if ((err = eng_fetch_blocks(o, refs, nref, ENG_K_META, metas, &missing)))
            goto out;
        if (missing) {
            c->need_refresh = true;
            goto out;
        }
        for (size_t i = 0; i < nref; i++)
            if (!eng_meta_view_build(&metas[i], &mviews[i])) {
                err = cdx_fail(CDX_ERR_INTEGRITY, "metadata block is malformed");
                goto out;
            }
    }
    t0 = mono_ns();
    uint64_t ns_io = 0;
    if (eng_coded(m)) {
        err = eng_scan_screened(c, qv, refs, blocks, nref, gend, np, mviews, tk, &ns_io);
        if (!err && c->need_refresh)
            goto out;
    } else {
        err = eng_scan_flat(c, qv, refs, blocks, gend, np, mviews, tk);
    }
    eng_stage_add(&o->e->ns_distance, ENG_STAGE_DISTANCE, mono_ns() - t0 - ns_io);
    if (err)
        goto out;
    /* Results, best first. */
    size_t k = c->top_k;
    float *dd = malloc(k * sizeof(float));
    uint64_t *rr = malloc(k * sizeof(uint64_t));
    size_t got = dd && rr ? eng_topk_sorted(tk, dd, rr) : 0;
    eng_hit *hits = calloc(got ? got : 1, sizeof(*hits));
    if (!dd || !rr || !hits) {
        free(dd);
        free(rr);
        free(hits);
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    c->res->hits[qi] = hits;
    c->res->n[qi] = got;
    for (size_t i = 0; i < got && !err; i++) {
        size_t si = (size_t)(rr[i] >> 32);
        uint32_t row = (uint32_t)rr[i];
        eng_search *b = blocks[si];
        eng_hit *h = &hits[i];
        h->distance = final_distance((eng_metric)m->metric, dd[i]);
        h->id_len = b->id_len[row];
        h->id = malloc(h->id_len + 1u);
        if (!h->id) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            break;
        }
        memcpy(h->id, b->plain + b->id_pos[row], h->id_len);
        h->id[h->id_len] = '\0';
        if (c->q->want & ENG_WANT_VECTOR) {
            eng_buf vec;
            eng_buf_init(&vec);
            bool mis = false;
            if (!eng_originals_in_search(m))
                err = eng_fetch_blocks(o, &refs[si], 1, ENG_K_VECTORS, &vec, &mis);
            h->vector = malloc(d * sizeof(float));
            if (!err && (mis || !h->vector || !eng_vector_row(m, b, &vec, row, h->vector)))
                err = cdx_fail(CDX_ERR_INTEGRITY, "vector block missing or malformed");
            eng_buf_free(&vec);
        }
        if (!err && (c->q->want & ENG_WANT_METADATA)) {
            eng_buf mb;
            eng_buf_init(&mb);
            bool mis = false;
            if (!mviews)
                err = eng_fetch_blocks(o, &refs[si], 1, ENG_K_META, &mb, &mis);
            const uint8_t *mp;
            size_t ml;
            bool have = mviews ? eng_meta_view_row(&mviews[si], row, &mp, &ml)
                               : !err && !mis && eng_meta_row(&mb, row, &mp, &ml);
            if (!err && !have)
                err = cdx_fail(CDX_ERR_INTEGRITY, "metadata block missing or malformed");
            else if (!err && ml) {
                h->metadata = malloc(ml + 1);
                if (h->metadata) {
                    memcpy(h->metadata, mp, ml);
                    h->metadata[ml] = '\0';
                    h->metadata_len = ml;
                }
            }
            eng_buf_free(&mb);
        }
    }
    if (!err && (c->q->want & ENG_WANT_CONTENTS) && got) {
        /* Contents are found through the id map. */
        eng_bucketset bs;
        memset(&bs, 0, sizeof(bs));
        bool wantb[ENG_BUCKETS] = {false};
        uint8_t(*toks)[ENG_TOKEN_LEN] = malloc(got * ENG_TOKEN_LEN);
        for (size_t i = 0; toks && i < got && !err; i++) {
            err = eng_id_token(o, hits[i].id, hits[i].id_len, toks[i]);
            wantb[eng_bucket_of(toks[i])] = true;
        }
        if (!toks)
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        if (!err)
            err = eng_buckets_load(o, m, wantb, &bs);
        for (size_t i = 0; !err && i < got; i++) {
            eng_ident *id = eng_bucket_find(bs.b[eng_bucket_of(toks[i])], toks[i]);
            if (id && id->content_len)
                err = eng_fetch_contents(o, id, &hits[i].contents, &hits[i].contents_len);
        }
        free(toks);
        eng_bucketset_free(&bs);
    }
    free(dd);
    free(rr);
out:
    if (blocks)
        for (size_t i = 0; i < nref; i++)
            eng_search_release(blocks[i]);
    if (metas)
        for (size_t i = 0; i < nref; i++) {
            eng_buf_free(&metas[i]);
            if (mviews)
                eng_meta_view_free(&mviews[i]);
        }
    free(metas);
    free(mviews);
    free(gend);
    free(blocks);
    free(refs);
    free(dist);
    free(probes);
    free(qv);
    free(aux);
    eng_topk_free(tk);
    return err;
}

void eng_query_result_free(eng_query_result *r)
{
    if (!r)
        return;
    for (size_t q = 0; q < r->nq; q++) {
        for (size_t i = 0; r->hits && r->hits[q] && i < r->n[q]; i++)
            eng_hit_free(&r->hits[q][i]);
        if (r->hits)
            free(r->hits[q]);
    }
    free(r->hits);
    free(r->n);
    free(r);
}

/* One query thread's share: query vectors [from, to). */
typedef struct qthread {
    eng_part p;
    eng_qctx *c;
    size_t from, to;
} qthread;

static void *qworker(void *arg)
{
    qthread *t = arg;
    cdx_err err = CDX_OK;
    for (size_t i = t->from; i < t->to && !err && !t->c->need_refresh; i++)
        err = query_one(t->c, i);
    eng_part_done(&t->p, err);
    return NULL;
}

cdx_err eng_query_run(eng *e, const char *name, const eng_query *q, eng_query_result **out)
{
    struct idx *ix;
    cdx_err err = eng_idx_get(e, name, &ix);
    *out = NULL;
    if (err)
        return err;
    size_t d = ix->cat.dim;
    if (!q->vectors || q->nq == 0)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "no query vectors");
    if (q->nq > CDX_QUERY_BATCH_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "%zu query vectors exceed %d", q->nq,
                        CDX_QUERY_BATCH_MAX);
    if (q->top_k > CDX_TOPK_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "top_k %u exceeds %d", q->top_k, CDX_TOPK_MAX);
    for (size_t i = 0; i < q->nq; i++)
        if (!eng_finite_vec(q->vectors + i * d, d))
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "query %zu has NaN or Inf", i);
    eng_qctx c = {0};
    c.q = q;
    c.top_k = q->top_k ? q->top_k : CDX_TOPK_DEFAULT;
    if (q->filter_len) {
        if ((err = eng_filter_parse(q->filter, q->filter_len, &c.filter)))
            return err;
        if (eng_filter_is_trivial(c.filter)) {
            eng_filter_free(c.filter);
            c.filter = NULL;
        }
    }
    op o;
    eng_op_index(e, ix, &o);
    c.o = &o;
    eng_manifest *m = NULL;
    eng_query_result *res = NULL;
    atomic_fetch_add(&e->queries, q->nq);
    for (int attempt = 0; attempt < 2; attempt++) {
        eng_manifest_unref(m);
        m = NULL;
        eng_query_result_free(res);
        res = NULL;
        c.need_refresh = false;
        if ((err = attempt ? eng_load_state(&o, true, q->min_version, &m)
                           : eng_load_min(&o, q->min_version, &m)))
            break;
        uint32_t nc = m->n_clusters;
        if (q->n_probes > (nc ? nc : 1)) {
            err = cdx_fail(CDX_ERR_INVALID_ARGUMENT, "n_probes %u exceeds the index's %u clusters",
                           q->n_probes, nc ? nc : 1);
            break;
        }
        c.nprobe = q->n_probes ? q->n_probes : (nc > 32 ? (nc + 31) / 32 : 1);
        c.km = eng_km_of(m);
        c.m = m;
        res = calloc(1, sizeof(*res));
        if (!res || !(res->n = calloc(q->nq, sizeof(size_t))) ||
            !(res->hits = calloc(q->nq, sizeof(eng_hit *)))) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            break;
        }
        res->nq = q->nq;
        c.res = res;
        unsigned nt = e->cfg.query_threads;
        if (nt > q->nq)
            nt = (unsigned)q->nq;
        /* Subkeys first, so worker threads only read the op. */
        hsm_subkey *k;
        if ((err = eng_op_key(&o, HSM_P_PAYLOAD, &k)) ||
            ((q->want & ENG_WANT_CONTENTS) && ((err = eng_op_key(&o, HSM_P_TOKEN, &k)) ||
                                               (err = eng_op_key(&o, HSM_P_CONTENT, &k)) ||
                                               (err = eng_op_key(&o, HSM_P_MANIFEST, &k)))))
            break;
        if (nt <= 1) {
            for (size_t i = 0; i < q->nq && !err && !c.need_refresh; i++)
                err = query_one(&c, i);
        } else {
            qthread qt[CDX_QUERY_THREADS_MAX];
            const eng_part *ps[CDX_QUERY_THREADS_MAX];
            if (nt > CDX_QUERY_THREADS_MAX)
                nt = CDX_QUERY_THREADS_MAX;
            for (unsigned t = 0; t < nt; t++) {
                qt[t] = (qthread){.c = &c, .from = q->nq * t / nt, .to = q->nq * (t + 1) / nt};
                ps[t] = &qt[t].p;
            }
            /* All shares on their own threads while this one waits. */
            eng_par_run(qworker, qt, sizeof(qt[0]), nt, false);
            err = eng_parts_err(ps, nt);
        }
        if (err || !c.need_refresh)
            break;
        if (attempt == 1)
            err = cdx_fail(CDX_ERR_INTEGRITY, "a segment the current manifest lists is missing "
                                              "from the store");
    }
    if (!err)
        res->version = m->version;
    eng_manifest_unref(m);
    eng_filter_free(c.filter);
    eng_op_end(&o);
    if (err) {
        eng_query_result_free(res);
        return eng_in_index(err, name);
    }
    *out = res;
    return CDX_OK;
}
