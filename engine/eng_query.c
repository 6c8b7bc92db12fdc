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

/*
 * One query vector's working state (query_one's steps fill it in order; a
 * widened query appends probes, their segments and blocks, and scans only
 * those into the same tk).
 */
typedef struct qone {
    float *qv;               /* the query (normalised for cosine) */
    uint32_t *probes, np;    /* clusters probed, nearest first (room for c->maxprobe) */
    const eng_segref **refs; /* their segments, probe by probe */
    size_t nref, capref;
    size_t *gend;          /* gend[p]: end of probe p's segments in refs (room for maxprobe) */
    eng_search **blocks;   /* search block of each ref */
    eng_buf *metas;        /* with a filter: metadata block of each ref, */
    eng_meta_view *mviews; /* and its index */
    size_t capblk;         /* entries of blocks, metas, mviews (zeroed beyond what was read) */
    eng_topk *tk;
} qone;

static void qone_free(qone *w)
{
    if (w->blocks)
        for (size_t i = 0; i < w->capblk; i++)
            eng_search_release(w->blocks[i]);
    if (w->metas)
        for (size_t i = 0; i < w->capblk; i++) {
            eng_buf_free(&w->metas[i]);
            if (w->mviews)
                eng_meta_view_free(&w->mviews[i]);
        }
    free(w->metas);
    free(w->mviews);
    free(w->gend);
    free(w->blocks);
    free(w->refs);
    free(w->probes);
    free(w->qv);
    eng_topk_free(w->tk);
}

/* The query vector qi and the clusters to probe (coarse stage). */
static cdx_err probe(eng_qctx *c, size_t qi, qone *w)
{
    const eng_manifest *m = c->m;
    eng *e = c->o->e;
    size_t d = m->dim;
    memcpy(w->qv, c->q->vectors + qi * d, d * sizeof(float));
    if (m->metric == ENG_METRIC_COSINE)
        eng_normalize(w->qv, d);
    uint64_t t0 = cdx_mono_ns();
    w->np = 1;
    w->probes[0] = 0;
    if (m->n_clusters) {
        size_t rescored = 0;
        w->np = m->probe ? (uint32_t)eng_probe_run(m->probe, w->qv, c->nprobe, w->probes, &rescored)
                         : 0;
        atomic_fetch_add(&e->n_probe_rescored, rescored);
        if (w->np == 0)
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "coarse quantisation failed");
    }
    eng_stage_add(&e->ns_coarse, ENG_STAGE_COARSE, cdx_mono_ns() - t0);
    return CDX_OK;
}

/*
 * Widen (a filtered query short of top_k matches): the next-nearest clusters
 * not probed yet, up to twice as many as probed (at most c->maxprobe in all),
 * appended to w->probes. Adds none when the probe finds nothing new.
 */
static cdx_err widen(eng_qctx *c, qone *w)
{
    const eng_manifest *m = c->m;
    eng *e = c->o->e;
    uint32_t nc = m->n_clusters;
    size_t want = (size_t)w->np * 2 < c->maxprobe ? (size_t)w->np * 2 : c->maxprobe;
    uint64_t t0 = cdx_mono_ns();
    uint32_t *next = malloc(want * sizeof(*next));
    uint8_t *had = calloc(nc ? nc : 1, 1);
    cdx_err err = CDX_OK;
    if (!next || !had) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    size_t rescored = 0, got = eng_probe_run(m->probe, w->qv, want, next, &rescored);
    atomic_fetch_add(&e->n_probe_rescored, rescored);
    if (got == 0) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "coarse quantisation failed");
        goto out;
    }
    for (uint32_t p = 0; p < w->np; p++)
        had[w->probes[p]] = 1;
    /* The nearest `want` in order: those already probed are the nearest np of them. */
    for (size_t i = 0; i < got && w->np < c->maxprobe; i++)
        if (next[i] < nc && !had[next[i]]) {
            had[next[i]] = 1;
            w->probes[w->np++] = next[i];
        }
    eng_stage_add(&e->ns_coarse, ENG_STAGE_COARSE, cdx_mono_ns() - t0);
out:
    free(next);
    free(had);
    return err;
}

/* The segments of probes p0.. (tombstones apply within a cluster: gend). */
static cdx_err collect_segments(const eng_qctx *c, qone *w, uint32_t p0)
{
    const eng_manifest *m = c->m;
    uint32_t nc = eng_manifest_nclusters(m);
    if (!w->gend && !(w->gend = calloc((size_t)c->maxprobe + 1, sizeof(*w->gend))))
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    for (uint32_t p = p0; p < w->np; p++) {
        w->gend[p] = w->nref;
        if (w->probes[p] >= nc)
            continue;
        const eng_cluster *cl = &m->clusters[w->probes[p]];
        for (uint32_t s = 0; s < cl->nseg; s++) {
            if (w->nref == w->capref) {
                w->capref = w->capref ? w->capref * 2 : 64;
                const eng_segref **r2 = realloc(w->refs, w->capref * sizeof(*r2));
                if (!r2)
                    return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
                w->refs = r2;
            }
            w->refs[w->nref++] = &cl->seg[s];
        }
        w->gend[p] = w->nref;
    }
    return CDX_OK;
}

/* Room for nref entries in blocks (and, with a filter, metas and mviews), the new ones zeroed. */
static cdx_err grow_blocks(const eng_qctx *c, qone *w)
{
    size_t cap = w->nref + 1, was = w->capblk;
    if (cap <= was)
        return CDX_OK;
    /* Each array zeroed as soon as it grows: capblk, which qone_free walks, only moves once
     * all of them have. */
    eng_search **b = realloc(w->blocks, cap * sizeof(*b));
    if (!b)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    w->blocks = b;
    memset(b + was, 0, (cap - was) * sizeof(*b));
    if (c->filter) {
        eng_buf *mt = realloc(w->metas, cap * sizeof(*mt));
        if (!mt)
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        w->metas = mt;
        memset(mt + was, 0, (cap - was) * sizeof(*mt));
        eng_meta_view *mv = realloc(w->mviews, cap * sizeof(*mv));
        if (!mv)
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        w->mviews = mv;
        memset(mv + was, 0, (cap - was) * sizeof(*mv));
    }
    w->capblk = cap;
    return CDX_OK;
}

/*
 * The search blocks of refs r0.. and, with a filter, their indexed metadata
 * blocks (those before r0 were read already). Missing: need_refresh.
 */
static cdx_err fetch_segments(eng_qctx *c, qone *w, size_t r0)
{
    op *o = c->o;
    bool missing = false;
    cdx_err err;
    size_t n = w->nref - r0;
    if ((err = grow_blocks(c, w)))
        return err;
    if (!n)
        return CDX_OK;
    if ((err = eng_fetch_search(o, c->m, w->refs + r0, n, w->blocks + r0, &missing)))
        return err;
    if (missing) {
        c->need_refresh = true;
        return CDX_OK;
    }
    if (!c->filter)
        return CDX_OK;
    if ((err = eng_fetch_blocks(o, w->refs + r0, n, ENG_K_META, w->metas + r0, &missing)))
        return err;
    if (missing) {
        c->need_refresh = true;
        return CDX_OK;
    }
    for (size_t i = r0; i < w->nref; i++)
        if (!eng_meta_view_build(&w->metas[i], &w->mviews[i]))
            return cdx_fail(CDX_ERR_INTEGRITY, "metadata block is malformed");
    return CDX_OK;
}

/* Score the live rows of probes p0.. into the top k (distance stage). */
static cdx_err scan(eng_qctx *c, qone *w, uint32_t p0)
{
    uint64_t t0 = cdx_mono_ns(), ns_io = 0;
    cdx_err err;
    if (eng_coded(c->m)) {
        err = eng_scan_screened(c, w->qv, w->refs, w->blocks, w->nref, w->gend, p0, w->np,
                                w->mviews, w->tk, &ns_io);
        if (!err && c->need_refresh)
            return CDX_OK;
    } else {
        err = eng_scan_flat(c, w->qv, w->refs, w->blocks, w->gend, p0, w->np, w->mviews, w->tk);
    }
    eng_stage_add(&c->o->e->ns_distance, ENG_STAGE_DISTANCE, cdx_mono_ns() - t0 - ns_io);
    return err;
}

/* The contents of got hits, found through the id map; each charged before it is read. */
static cdx_err hits_contents(eng_qctx *c, eng_hit *hits, size_t got)
{
    op *o = c->o;
    cdx_err err = CDX_OK;
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
        err = eng_buckets_load(o, c->m, wantb, &bs);
    for (size_t i = 0; !err && i < got; i++) {
        eng_ident *id = eng_bucket_find(bs.b[eng_bucket_of(toks[i])], toks[i]);
        if (id && id->content_len && !(err = eng_rbudget_charge(&c->rb, id->content_len)))
            err = eng_fetch_contents(o, id, &hits[i].contents, &hits[i].contents_len);
    }
    free(toks);
    eng_bucketset_free(&bs);
    return err;
}

/* Hit h: the metadata of row `row` of segment si from the filter's views. */
static cdx_err hit_metadata_view(eng_qctx *c, const qone *w, size_t si, uint32_t row, eng_hit *h)
{
    const uint8_t *mp;
    size_t ml;
    cdx_err err;
    if (!eng_meta_view_row(&w->mviews[si], row, &mp, &ml))
        return cdx_fail(CDX_ERR_INTEGRITY, "metadata block missing or malformed");
    if (!ml)
        return CDX_OK;
    if ((err = eng_rbudget_charge(&c->rb, ml)))
        return err;
    if (!(h->metadata = malloc(ml + 1)))
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    memcpy(h->metadata, mp, ml);
    h->metadata[ml] = '\0';
    h->metadata_len = ml;
    return CDX_OK;
}

/* Hit h: the vector of row `row` from segment si's search block (originals stored there). */
static cdx_err hit_vector_search(eng_qctx *c, const qone *w, size_t si, uint32_t row, eng_hit *h)
{
    static const eng_buf none = {0};
    size_t d = c->m->dim;
    cdx_err err;
    if ((err = eng_rbudget_charge(&c->rb, d * sizeof(float))))
        return err;
    if (!(h->vector = malloc(d * sizeof(float))))
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    if (!eng_vector_row(c->m, w->blocks[si], &none, row, h->vector))
        return cdx_fail(CDX_ERR_INTEGRITY, "vector block missing or malformed");
    return CDX_OK;
}

/* What fill_rows_all reads: originals kept in vector blocks, metadata no filter opened. */
static unsigned deferred_want(const eng_qctx *c)
{
    unsigned want = c->q->want;
    return ((want & ENG_WANT_VECTOR) && !eng_originals_in_search(c->m) ? ENG_WANT_VECTOR : 0) |
           ((want & ENG_WANT_METADATA) && !c->filter ? ENG_WANT_METADATA : 0);
}

/*
 * The result of query qi, best first, with what the query wants of each hit:
 * each hit charged to the answer's size before its bytes are copied. The
 * vectors and metadata that need a segment block are left to fill_rows_all
 * (c->rows[qi]), so each block is read once per request.
 */
static cdx_err fill_hits(eng_qctx *c, const qone *w, size_t qi)
{
    cdx_err err = CDX_OK;
    size_t k = c->top_k;
    unsigned want = c->q->want;
    bool orig = eng_originals_in_search(c->m);
    unsigned rows_want = deferred_want(c);
    float *dd = malloc(k * sizeof(float));
    uint64_t *rr = malloc(k * sizeof(uint64_t));
    eng_rowreq *rq = malloc(k * sizeof(*rq));
    size_t got = dd && rr && rq ? eng_topk_sorted(w->tk, dd, rr) : 0;
    eng_hit *hits = calloc(got ? got : 1, sizeof(*hits));
    size_t nr = 0;
    if (!dd || !rr || !rq || !hits) {
        free(hits);
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    c->res->hits[qi] = hits;
    c->res->n[qi] = got;
    for (size_t i = 0; i < got && !err; i++) {
        size_t si = (size_t)(rr[i] >> 32);
        uint32_t row = (uint32_t)rr[i];
        eng_search *b = w->blocks[si];
        eng_hit *h = &hits[i];
        h->distance = final_distance((eng_metric)c->m->metric, dd[i]);
        h->id_len = b->id_len[row];
        if ((err = eng_rbudget_charge(&c->rb, h->id_len + ENG_HIT_OVERHEAD)))
            break;
        h->id = malloc(h->id_len + 1u);
        if (!h->id) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            break;
        }
        memcpy(h->id, b->plain + b->id_pos[row], h->id_len);
        h->id[h->id_len] = '\0';
        if ((want & ENG_WANT_VECTOR) && orig)
            err = hit_vector_search(c, w, si, row, h);
        if (!err && (want & ENG_WANT_METADATA) && c->filter)
            err = hit_metadata_view(c, w, si, row, h);
        if (rows_want)
            rq[nr++] = (eng_rowreq){w->refs[si], row, h};
    }
    if (!err && nr) { /* kept (shrunk to its rows) for fill_rows_all, and counted */
        eng_rowreq *kept = realloc(rq, nr * sizeof(*rq));
        if (kept)
            rq = kept;
        if (!(err = eng_rbudget_work(&c->rb, nr * sizeof(*rq)))) {
            c->rows[qi] = rq;
            c->nrows[qi] = nr;
            rq = NULL;
        }
    }
    if (!err && (want & ENG_WANT_CONTENTS) && got)
        err = hits_contents(c, hits, got);
out:
    free(dd);
    free(rr);
    free(rq);
    return err;
}

/* The deferred vectors and metadata of every query vector's hits: each segment's blocks once. */
static cdx_err fill_rows_all(eng_qctx *c)
{
    size_t total = 0, at = 0;
    for (size_t qi = 0; qi < c->q->nq; qi++)
        total += c->nrows[qi];
    if (total == 0)
        return CDX_OK;
    eng_rowreq *all = malloc(total * sizeof(*all));
    if (!all)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    for (size_t qi = 0; qi < c->q->nq; qi++) {
        if (c->nrows[qi])
            memcpy(all + at, c->rows[qi], c->nrows[qi] * sizeof(*all));
        at += c->nrows[qi];
    }
    bool mis = false;
    cdx_err err = eng_fill_rows(c->o, c->m, all, total, deferred_want(c), &c->rb, &mis);
    if (!err && mis)
        err = cdx_fail(CDX_ERR_INTEGRITY, "vector or metadata block missing");
    free(all);
    return err;
}

/*
 * Before widening: every match so far is in w->tk (it holds fewer than top_k), so the
 * segments none of them is in hold no match; release their search and metadata blocks
 * rather than hold the whole index's while widening. Skipped (not an error) without memory.
 */
static void trim_segments(qone *w)
{
    size_t n = eng_topk_size(w->tk);
    float *dd = malloc((n ? n : 1) * sizeof(*dd));
    uint64_t *rr = malloc((n ? n : 1) * sizeof(*rr));
    bool *keep = calloc(w->nref + 1, sizeof(*keep));
    if (dd && rr && keep) {
        n = eng_topk_sorted(w->tk, dd, rr);
        for (size_t i = 0; i < n; i++) { /* put back: the same entries, the same order */
            eng_topk_push(w->tk, dd[i], rr[i]);
            keep[rr[i] >> 32] = true;
        }
        for (size_t i = 0; i < w->nref; i++) {
            if (keep[i])
                continue;
            eng_search_release(w->blocks[i]);
            w->blocks[i] = NULL;
            if (w->metas) {
                eng_buf_free(&w->metas[i]);
                eng_meta_view_free(&w->mviews[i]);
            }
        }
    }
    free(dd);
    free(rr);
    free(keep);
}

/* Probes p0.. (segments from ref r0): collect, fetch and scan them into w->tk. */
static cdx_err search_probes(eng_qctx *c, qone *w, uint32_t p0, size_t r0)
{
    cdx_err err;
    if ((err = collect_segments(c, w, p0)) || (err = fetch_segments(c, w, r0)) || c->need_refresh)
        return err;
    return scan(c, w, p0);
}

/*
 * One query vector: probe, collect and fetch the probed segments, scan
 * (tombstones, filter, top-k); with a filter and fewer than top_k matches,
 * widen (next-nearest clusters, doubling, up to c->maxprobe) and scan those
 * too; then fill the hits. A missing segment sets c->need_refresh and
 * returns CDX_OK without a result.
 */
static cdx_err query_one(eng_qctx *c, size_t qi)
{
    size_t d = c->m->dim;
    cdx_err err;
    qone w = {0};
    w.probes = malloc(c->maxprobe * sizeof(uint32_t));
    w.qv = malloc(d * sizeof(float));
    w.tk = eng_topk_new(c->top_k, false);
    if (!w.probes || !w.qv || !w.tk)
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    else
        err = probe(c, qi, &w);
    if (!err)
        err = search_probes(c, &w, 0, 0);
    while (!err && !c->need_refresh && w.np < c->maxprobe && eng_topk_size(w.tk) < c->top_k) {
        uint32_t p0 = w.np;
        size_t r0 = w.nref;
        trim_segments(&w);
        if ((err = widen(c, &w)) || w.np == p0)
            break;
        atomic_fetch_add(&c->o->e->n_widened, 1);
        err = search_probes(c, &w, p0, r0);
    }
    if (!err && !c->need_refresh) {
        c->res->probed[qi] = c->m->n_clusters ? w.np : 0;
        err = fill_hits(c, &w, qi);
    }
    qone_free(&w);
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
    free(r->probed);
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

/* Check a query's vectors and sizes against an index of dimension d. */
static cdx_err check_query(const eng_query *q, size_t d)
{
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
    return CDX_OK;
}

/* The query's filter (NULL when none or trivial). Errors: eng_filter_parse's. */
static cdx_err query_filter(const eng_query *q, eng_filter **out)
{
    *out = NULL;
    if (!q->filter_len)
        return CDX_OK;
    cdx_err err = eng_filter_parse(q->filter, q->filter_len, out);
    if (err)
        return err;
    if (eng_filter_is_trivial(*out)) {
        eng_filter_free(*out);
        *out = NULL;
    }
    return CDX_OK;
}

/* Every query vector of c against manifest c->m, on up to query_threads threads. */
static cdx_err run_queries(eng_qctx *c)
{
    const eng_query *q = c->q;
    op *o = c->o;
    cdx_err err = CDX_OK;
    unsigned nt = o->e->cfg.query_threads;
    if (nt > q->nq)
        nt = (unsigned)q->nq;
    /* Subkeys first, so worker threads only read the op. */
    hsm_subkey *k;
    if ((err = eng_op_key(o, HSM_P_PAYLOAD, &k)) ||
        ((q->want & ENG_WANT_CONTENTS) &&
         ((err = eng_op_key(o, HSM_P_TOKEN, &k)) || (err = eng_op_key(o, HSM_P_CONTENT, &k)) ||
          (err = eng_op_key(o, HSM_P_MANIFEST, &k)))))
        return err;
    if (nt <= 1) {
        for (size_t i = 0; i < q->nq && !err && !c->need_refresh; i++)
            err = query_one(c, i);
        return err;
    }
    qthread qt[CDX_QUERY_THREADS_MAX];
    const eng_part *ps[CDX_QUERY_THREADS_MAX];
    if (nt > CDX_QUERY_THREADS_MAX)
        nt = CDX_QUERY_THREADS_MAX;
    for (unsigned t = 0; t < nt; t++) {
        qt[t] = (qthread){.c = c, .from = q->nq * t / nt, .to = q->nq * (t + 1) / nt};
        ps[t] = &qt[t].p;
    }
    /* All shares on their own threads while this one waits. */
    eng_par_run(qworker, qt, sizeof(qt[0]), nt, false);
    return eng_parts_err(ps, nt);
}

uint32_t eng_default_probes(uint32_t nc)
{
    if (nc == 0)
        return 0;
    uint32_t p = (uint32_t)ceil(sqrt((double)nc));
    uint32_t frac = (nc + CDX_PROBES_AUTO_DIV - 1) / CDX_PROBES_AUTO_DIV;
    if (p < frac)
        p = frac;
    if (p < CDX_PROBES_AUTO_MIN)
        p = CDX_PROBES_AUTO_MIN;
    return p < nc ? p : nc;
}

/* One attempt on manifest m: check n_probes, allocate the result, run the queries. */
static cdx_err query_attempt(eng_qctx *c, const eng_manifest *m, eng_query_result **res)
{
    const eng_query *q = c->q;
    uint32_t nc = m->n_clusters, all = nc ? nc : 1;
    /* More probes than clusters means all of them (as Faiss does): clamped, not refused. The
     * answer says how many were probed. */
    c->nprobe = q->n_probes ? q->n_probes : eng_default_probes(nc);
    if (c->nprobe == 0 || c->nprobe > all)
        c->nprobe = all;
    /* Widening's ceiling: the query's, else the config's, else every cluster; never below the
     * probes asked for (a ceiling at or below them turns widening off). */
    c->maxprobe = q->max_probes ? q->max_probes : c->o->e->cfg.max_probes;
    if (c->maxprobe == 0 || c->maxprobe > all)
        c->maxprobe = all;
    if (c->maxprobe < c->nprobe || !c->filter) /* without a filter nothing widens */
        c->maxprobe = c->nprobe;
    c->km = eng_km_of(m);
    c->m = m;
    eng_query_result *r = calloc(1, sizeof(*r));
    *res = r;
    if (!r || !(r->n = calloc(q->nq, sizeof(size_t))) ||
        !(r->hits = calloc(q->nq, sizeof(eng_hit *))) ||
        !(r->probed = calloc(q->nq, sizeof(uint32_t))))
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    r->nq = q->nq;
    c->res = r;
    eng_rbudget_init(&c->rb, c->o->e->cfg.result_bytes_max);
    /* Certain before the scan: an untrained index searched without a filter answers
     * min(top_k, count) hits per query vector, each at least this big. */
    if (!c->filter && nc == 0) {
        uint64_t per = ENG_HIT_OVERHEAD + 1 +
                       ((q->want & ENG_WANT_VECTOR) ? (uint64_t)m->dim * sizeof(float) : 0);
        uint64_t hits = (uint64_t)q->nq * (c->top_k < m->count ? c->top_k : m->count);
        if (hits * per > c->rb.limit)
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED,
                            "the answer needs at least %llu bytes (%zu query vectors x %llu "
                            "hits), over the %zu-byte response limit (max_frame_bytes): send "
                            "fewer query vectors or a smaller top_k, or leave out vectors",
                            (unsigned long long)(hits * per), q->nq,
                            (unsigned long long)(hits / q->nq), c->rb.limit);
    }
    c->rows = calloc(q->nq, sizeof(*c->rows));
    c->nrows = calloc(q->nq, sizeof(*c->nrows));
    cdx_err err = !c->rows || !c->nrows ? cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory")
                                        : run_queries(c);
    if (!err && !c->need_refresh)
        err = fill_rows_all(c);
    for (size_t qi = 0; !err && qi < q->nq; qi++)
        if (r->probed[qi] > r->n_probes)
            r->n_probes = r->probed[qi];
    for (size_t qi = 0; c->rows && qi < q->nq; qi++)
        free(c->rows[qi]);
    free(c->rows);
    free(c->nrows);
    c->rows = NULL;
    c->nrows = NULL;
    return err;
}

cdx_err eng_query_run(eng *e, const char *name, const eng_query *q, eng_query_result **out)
{
    struct idx *ix;
    cdx_err err = eng_idx_get(e, name, &ix);
    *out = NULL;
    if (err)
        return err;
    if ((err = check_query(q, ix->cat.dim)))
        return eng_idx_drop(ix, err);
    eng_qctx c = {0};
    c.q = q;
    c.top_k = q->top_k ? q->top_k : CDX_TOPK_DEFAULT;
    if ((err = query_filter(q, &c.filter)))
        return eng_idx_drop(ix, err);
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
        if ((err = query_attempt(&c, m, &res)) || !c.need_refresh)
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
