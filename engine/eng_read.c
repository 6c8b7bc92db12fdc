/*
 * The read side (eng_read.h): block fetch, cache-through fetch, metadata
 * views, rows, contents; and get.
 */
#include <stdlib.h>
#include <string.h>

#include "eng_head.h"
#include "eng_idmap.h"
#include "eng_int.h"
#include "eng_op.h"
#include "eng_read.h"
#include "eng_store.h"

static uint64_t block_off(const eng_segref *r, eng_kind k)
{
    return k == ENG_K_SEARCH    ? 0
           : k == ENG_K_VECTORS ? r->search_len
                                : (uint64_t)r->search_len + r->vectors_len;
}

static uint64_t block_len(const eng_segref *r, eng_kind k)
{
    return k == ENG_K_SEARCH ? r->search_len : k == ENG_K_VECTORS ? r->vectors_len : r->meta_len;
}

/*
 * Fetch and open one block kind of n segments (pipelined GETRANGE).
 * *missing = true if any segment is absent from the store (pts[i] empty).
 */
cdx_err eng_fetch_blocks(op *o, const eng_segref *const *refs, size_t n, eng_kind kind,
                         eng_buf *pts, bool *missing)
{
    cdx_err err = CDX_OK;
    *missing = false;
    if (n == 0)
        return CDX_OK;
    char(*keys)[CDX_STORE_KEY_MAX] = malloc(n * sizeof(*keys));
    eng_range *rg = malloc(n * sizeof(*rg));
    eng_val *v = calloc(n, sizeof(*v));
    if (!keys || !rg || !v) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        eng_key_rec(keys[i], o->ix->id, ENG_KEY_SEGMENT, refs[i]->token);
        rg[i] = (eng_range){keys[i], block_off(refs[i], kind), block_len(refs[i], kind)};
    }
    uint64_t t0 = cdx_mono_ns();
    err = eng_store_getrange(o->e->cfg.store, rg, n, v);
    eng_stage_add(&o->e->ns_fetch, ENG_STAGE_FETCH, cdx_mono_ns() - t0);
    if (err)
        goto out;
    for (size_t i = 0; i < n && !err; i++) {
        eng_buf_init(&pts[i]);
        if (!v[i].found || v[i].len == 0) {
            *missing = true;
            continue;
        }
        err = eng_op_unseal(o, HSM_P_PAYLOAD, kind, refs[i]->token, refs[i]->version, v[i].data,
                            v[i].len, NULL, &pts[i]);
    }
out:
    if (v)
        eng_vals_free(v, n);
    free(v);
    free(keys);
    free(rg);
    return err;
}

/*
 * Blocks of `kind` - search blocks (decoded) or vector blocks (wrapped) - of
 * the refs flagged in need[] (every ref when need is NULL), through the block
 * cache, into out[] (each referenced; NULL where the store has no such
 * segment, and then *missing).
 */
static cdx_err fetch_cached(op *o, const eng_manifest *m, const eng_segref *const *refs, size_t n,
                            const bool *need, eng_kind kind, eng_search **out, bool *missing)
{
    cdx_err err = CDX_OK;
    *missing = false;
    const eng_segref **miss = malloc((n + 1) * sizeof(*miss));
    size_t *where = malloc((n + 1) * sizeof(*where));
    eng_buf *pts = NULL;
    size_t nm = 0;
    if (!miss || !where) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (need && !need[i])
            continue;
        out[i] = eng_cache_get(o->e->cache, kind, refs[i]->token);
        if (!out[i]) {
            miss[nm] = refs[i];
            where[nm++] = i;
        }
    }
    if (nm == 0)
        goto out;
    pts = calloc(nm, sizeof(*pts));
    if (!pts) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    if ((err = eng_fetch_blocks(o, miss, nm, kind, pts, missing)))
        goto out;
    for (size_t j = 0; j < nm && !err; j++) {
        if (!pts[j].data)
            continue; /* absent: *missing is set */
        eng_search *s = NULL;
        uint8_t *plain = pts[j].data;
        size_t len = pts[j].len;
        pts[j].data = NULL; /* ownership moves into the block */
        pts[j].len = pts[j].cap = 0;
        err = kind == ENG_K_SEARCH
                  ? eng_search_decode(plain, len, miss[j]->rows, eng_code_size(m), eng_coded(m), &s)
                  : eng_vectors_wrap(plain, len, miss[j]->rows, m->dim, &s);
        if (err)
            break;
        eng_cache_put(o->e->cache, kind, miss[j]->token, s);
        out[where[j]] = s;
    }
out:
    if (pts)
        for (size_t j = 0; j < nm; j++)
            eng_buf_free(&pts[j]);
    free(pts);
    free(miss);
    free(where);
    return err;
}

/* Search blocks through the cache. out[i] NULL where missing (then *missing). */
cdx_err eng_fetch_search(op *o, const eng_manifest *m, const eng_segref *const *refs, size_t n,
                         eng_search **out, bool *missing)
{
    return fetch_cached(o, m, refs, n, NULL, ENG_K_SEARCH, out, missing);
}

void eng_meta_view_free(eng_meta_view *v)
{
    free(v->off);
    memset(v, 0, sizeof(*v));
}

/* False if the block is malformed (or memory ran out). */
bool eng_meta_view_build(const eng_buf *pt, eng_meta_view *v)
{
    eng_rd r;
    memset(v, 0, sizeof(*v));
    eng_rd_init(&r, pt->data, pt->len);
    uint32_t rows = eng_rd_u32(&r);
    if (r.bad || rows > r.left / 4)
        return false;
    v->off = malloc((rows + 1u) * sizeof(uint32_t) * 2);
    if (!v->off)
        return false;
    v->base = pt->data;
    v->rows = rows;
    uint32_t *len = v->off + rows + 1;
    for (uint32_t i = 0; i < rows; i++) {
        size_t l;
        const uint8_t *p = eng_rd_lbytes(&r, CDX_METADATA_MAX, &l);
        if (r.bad) {
            eng_meta_view_free(v);
            return false;
        }
        v->off[i] = (uint32_t)(p - pt->data);
        len[i] = (uint32_t)l;
    }
    if (!eng_rd_done(&r)) {
        eng_meta_view_free(v);
        return false;
    }
    return true;
}

/* One row of a metadata block plaintext (a single lookup). */
bool eng_meta_row(const eng_buf *pt, uint32_t row, const uint8_t **p, size_t *len)
{
    eng_meta_view v;
    if (!eng_meta_view_build(pt, &v))
        return false;
    bool ok = eng_meta_view_row(&v, row, p, len);
    eng_meta_view_free(&v);
    return ok;
}

/* Vector `row` of a segment: from its vector block, or its (float) search codes. */
bool eng_vector_row(const eng_manifest *m, const eng_search *s, const eng_buf *vec, uint32_t row,
                    float *out)
{
    size_t d = m->dim;
    if (row >= s->rows)
        return false;
    if (eng_originals_in_search(m)) {
        memcpy(out, s->codes + (size_t)row * s->code_size, d * sizeof(float));
        return true;
    }
    if (!vec->data || vec->len != (size_t)s->rows * d * sizeof(float))
        return false;
    memcpy(out, vec->data + (size_t)row * d * sizeof(float), d * sizeof(float));
    return true;
}

/* Find a segment of a cluster by token. */
const eng_segref *eng_find_seg(const eng_manifest *m, uint32_t cluster,
                               const uint8_t tok[ENG_TOKEN_LEN])
{
    if (cluster >= eng_manifest_nclusters(m))
        return NULL;
    const eng_cluster *c = &m->clusters[cluster];
    for (uint32_t i = 0; i < c->nseg; i++)
        if (!memcmp(c->seg[i].token, tok, ENG_TOKEN_LEN))
            return &c->seg[i];
    return NULL;
}

cdx_err eng_fetch_contents(op *o, const eng_ident *id, uint8_t **data, size_t *len)
{
    char key[CDX_STORE_KEY_MAX];
    eng_key_rec(key, o->ix->id, ENG_KEY_CONTENTS, id->content);
    eng_buf pt;
    eng_buf_init(&pt);
    bool found;
    cdx_err err =
        eng_op_fetch_open(o, key, HSM_P_CONTENT, ENG_K_CONTENT, id->content, 0, NULL, &pt, &found);
    if (!err && !found) {
        /* Superseded and swept after our bucket read, or lost: the caller re-reads once. */
        err = cdx_fail(ENG_MOVED, "contents the id map names are missing");
    }
    if (!err && pt.len != id->content_len)
        err = cdx_fail(CDX_ERR_INTEGRITY, "contents have the wrong length");
    if (err) {
        eng_buf_free(&pt);
        return err;
    }
    *data = malloc(pt.len ? pt.len : 1);
    if (!*data) {
        eng_buf_free(&pt);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    memcpy(*data, pt.data, pt.len);
    *len = pt.len;
    eng_buf_free(&pt);
    return CDX_OK;
}

void eng_hit_free(eng_hit *h)
{
    free(h->id);
    free(h->vector);
    free(h->metadata);
    free(h->contents);
}

void eng_get_result_free(eng_get_result *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++)
        if (r->found && r->found[i])
            eng_hit_free(&r->hits[i]);
    free(r->found);
    free(r->hits);
    free(r);
}

static _Thread_local eng_mem_fn tl_mem;
static _Thread_local void *tl_mem_arg;

void eng_thread_mem_hook(eng_mem_fn fn, void *arg)
{
    tl_mem = fn;
    tl_mem_arg = fn ? arg : NULL;
}

void eng_rbudget_init(eng_rbudget *b, size_t limit)
{
    b->limit = limit ? limit : CDX_RESULT_MAX_DEFAULT;
    atomic_store(&b->used, 0);
    b->mem = tl_mem;
    b->mem_arg = tl_mem_arg;
}

cdx_err eng_rbudget_charge(eng_rbudget *b, size_t n)
{
    if (!b)
        return CDX_OK;
    size_t was = atomic_fetch_add(&b->used, n);
    if (was + n < was || was + n > b->limit)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED,
                        "the answer would exceed the %zu-byte response limit (max_frame_bytes): "
                        "ask for fewer ids or results, or leave out contents, metadata or vectors",
                        b->limit);
    if (b->mem && !b->mem(b->mem_arg, n))
        return cdx_fail(CDX_ERR_BUSY, "the daemon's in-flight memory budget cannot hold more of "
                                      "this answer now: retry later");
    return CDX_OK;
}

cdx_err eng_rbudget_work(eng_rbudget *b, size_t n)
{
    if (b && b->mem && !b->mem(b->mem_arg, n))
        return cdx_fail(CDX_ERR_BUSY, "the daemon's in-flight memory budget cannot hold more of "
                                      "this request now: retry later");
    return CDX_OK;
}

static int cmp_rowreq(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)((const eng_rowreq *)a)->sr;
    uintptr_t y = (uintptr_t)((const eng_rowreq *)b)->sr;
    return x < y ? -1 : x > y;
}

/* Bytes of the blocks fill_rows opens for segment r. */
static size_t fill_cost(const eng_segref *r, bool vec, bool orig, bool meta)
{
    return (vec ? (orig ? r->search_len : r->vectors_len) : 0) + (meta ? r->meta_len : 0);
}

/* One row's vector (from block vb) and metadata (from view mv) into its hit. */
static cdx_err fill_one(const eng_manifest *m, const eng_search *vb, const eng_meta_view *mv,
                        const eng_rowreq *q, eng_rbudget *rb)
{
    cdx_err err;
    eng_hit *h = q->h;
    size_t d = m->dim;
    if (vb) {
        if ((err = eng_rbudget_charge(rb, d * sizeof(float))))
            return err;
        if (q->row >= vb->rows || vb->code_size < d * sizeof(float))
            return cdx_fail(CDX_ERR_INTEGRITY, "vector block is malformed");
        if (!(h->vector = malloc(d * sizeof(float))))
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        memcpy(h->vector, vb->codes + (size_t)q->row * vb->code_size, d * sizeof(float));
    }
    if (mv) {
        const uint8_t *p;
        size_t len;
        if (!eng_meta_view_row(mv, q->row, &p, &len))
            return cdx_fail(CDX_ERR_INTEGRITY, "metadata block is malformed");
        if (len) {
            if ((err = eng_rbudget_charge(rb, len)))
                return err;
            if (!(h->metadata = malloc(len + 1)))
                return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            memcpy(h->metadata, p, len);
            h->metadata[len] = '\0';
            h->metadata_len = len;
        }
    }
    return CDX_OK;
}

cdx_err eng_fill_rows(op *o, const eng_manifest *m, eng_rowreq *rq, size_t n, unsigned want,
                      eng_rbudget *rb, bool *missing)
{
    cdx_err err = CDX_OK;
    bool wv = want & ENG_WANT_VECTOR, wm = want & ENG_WANT_METADATA;
    bool orig = eng_originals_in_search(m);
    *missing = false;
    if (n == 0 || !(wv || wm))
        return CDX_OK;
    qsort(rq, n, sizeof(*rq), cmp_rowreq);
    const eng_segref **segs = malloc(n * sizeof(*segs));
    size_t *first = malloc((n + 1) * sizeof(*first));
    eng_search **blk = calloc(n, sizeof(*blk));
    eng_buf *mb = calloc(n, sizeof(*mb));
    eng_meta_view *mv = calloc(n, sizeof(*mv));
    size_t ns = 0;
    if (!segs || !first || !blk || !mb || !mv) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (i == 0 || rq[i].sr != rq[i - 1].sr) {
            segs[ns] = rq[i].sr;
            first[ns++] = i;
        }
    first[ns] = n;
    /* A group of segments at a time: each block is opened once, and few are held at once. */
    for (size_t a = 0, b; a < ns && !err && !*missing; a = b) {
        size_t bytes = fill_cost(segs[a], wv, orig, wm);
        for (b = a + 1; b < ns && bytes + fill_cost(segs[b], wv, orig, wm) <= ENG_FILL_CHUNK; b++)
            bytes += fill_cost(segs[b], wv, orig, wm);
        bool mis = false;
        if (wv)
            err = orig ? eng_fetch_search(o, m, segs + a, b - a, blk + a, &mis)
                       : eng_fetch_vectors(o, m, segs + a, b - a, NULL, blk + a, &mis);
        if (!err && !mis && wm) {
            err = eng_fetch_blocks(o, segs + a, b - a, ENG_K_META, mb + a, &mis);
            for (size_t j = a; j < b && !err && !mis; j++)
                if (!eng_meta_view_build(&mb[j], &mv[j]))
                    err = cdx_fail(CDX_ERR_INTEGRITY, "metadata block is malformed");
        }
        if (!err && mis)
            *missing = true;
        for (size_t j = a; j < b && !err && !*missing; j++)
            for (size_t i = first[j]; i < first[j + 1] && !err; i++)
                err = fill_one(m, wv ? blk[j] : NULL, wm ? &mv[j] : NULL, &rq[i], rb);
        for (size_t j = a; j < b; j++) {
            eng_search_release(blk[j]);
            blk[j] = NULL;
            eng_meta_view_free(&mv[j]);
            eng_buf_free(&mb[j]);
        }
    }
out:
    free(segs);
    free(first);
    free(blk);
    free(mb);
    free(mv);
    return err;
}

typedef struct tokpos {
    uint8_t tok[ENG_TOKEN_LEN];
    size_t i;
} tokpos;

static int cmp_tokpos(const void *a, const void *b)
{
    const tokpos *x = a, *y = b;
    int c = memcmp(x->tok, y->tok, ENG_TOKEN_LEN);
    return c ? c : (x->i > y->i) - (x->i < y->i);
}

/*
 * Refuse a get naming one id twice: each position would carry its own copy
 * of the item (contents included), which multiplies the answer for free.
 */
static cdx_err check_unique(const uint8_t (*toks)[ENG_TOKEN_LEN], size_t n)
{
    cdx_err err = CDX_OK;
    tokpos *tp = malloc(n * sizeof(*tp));
    if (!tp)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    for (size_t i = 0; i < n; i++) {
        memcpy(tp[i].tok, toks[i], ENG_TOKEN_LEN);
        tp[i].i = i;
    }
    qsort(tp, n, sizeof(*tp), cmp_tokpos);
    for (size_t i = 1; i < n; i++)
        if (!memcmp(tp[i - 1].tok, tp[i].tok, ENG_TOKEN_LEN)) {
            err = cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                           "ids %zu and %zu are the same id: list each id once per get",
                           tp[i - 1].i, tp[i].i);
            break;
        }
    free(tp);
    return err;
}

/*
 * One attempt of a get on state m: ids found through the buckets, then
 * vectors and metadata (each segment's blocks once), then contents, each
 * charged to rb before it is read. A record missing from the store sets
 * *refresh (the caller re-reads once).
 */
static cdx_err get_attempt(op *o, const eng_manifest *m, const eng_bucketset *bs,
                           const uint8_t (*toks)[ENG_TOKEN_LEN], const size_t *id_lens, size_t n,
                           unsigned want, eng_rbudget *rb, eng_ident **idp, eng_rowreq *rq,
                           eng_get_result *r, bool *refresh)
{
    cdx_err err = CDX_OK;
    size_t nr = 0;
    for (size_t i = 0; i < n && !err; i++) {
        /* Every id is echoed in the answer, found or not. */
        if ((err = eng_rbudget_charge(rb, id_lens[i] + ENG_HIT_OVERHEAD)))
            break;
        eng_ident *id = idp[i] = eng_bucket_find(bs->b[eng_bucket_of(toks[i])], toks[i]);
        if (!id)
            continue;
        eng_hit *h = &r->hits[i];
        if (!(h->id = malloc(id->id_len + 1u))) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            break;
        }
        memcpy(h->id, id->id, id->id_len + 1u);
        h->id_len = id->id_len;
        r->found[i] = true;
        if (!(want & (ENG_WANT_VECTOR | ENG_WANT_METADATA)))
            continue;
        const eng_segref *sr = eng_find_seg(m, id->cluster, id->seg);
        if (!sr)
            err = cdx_fail(CDX_ERR_INTEGRITY, "the id map names a segment the manifest "
                                              "does not list");
        else
            rq[nr++] = (eng_rowreq){sr, id->row, h};
    }
    if (!err)
        err = eng_fill_rows(o, m, rq, nr, want, rb, refresh);
    for (size_t i = 0; i < n && !err && !*refresh && (want & ENG_WANT_CONTENTS); i++) {
        eng_ident *id = idp[i];
        if (!id || !id->content_len)
            continue;
        /* Charged before it is read: the limit stops the get before the bytes exist. */
        if ((err = eng_rbudget_charge(rb, id->content_len)))
            break;
        err = eng_fetch_contents(o, id, &r->hits[i].contents, &r->hits[i].contents_len);
        if (err == ENG_MOVED) {
            *refresh = true;
            err = CDX_OK;
        }
    }
    return err;
}

cdx_err eng_get(eng *e, const char *name, const char *const *ids, const size_t *id_lens, size_t n,
                unsigned want, uint64_t min_version, eng_get_result **out)
{
    struct idx *ix;
    cdx_err err = eng_idx_get(e, name, &ix);
    *out = NULL;
    if (err)
        return err;
    if (n == 0 || n > CDX_GET_BATCH_MAX)
        return eng_idx_drop(
            ix, cdx_fail(CDX_ERR_INVALID_ARGUMENT, "get needs 1-%d ids", CDX_GET_BATCH_MAX));
    for (size_t i = 0; i < n; i++)
        if ((err = eng_check_id(ids[i], id_lens[i], i)))
            return eng_idx_drop(ix, err);
    op o;
    eng_op_index(e, ix, &o);
    eng_get_result *r = calloc(1, sizeof(*r));
    uint8_t(*toks)[ENG_TOKEN_LEN] = malloc(n * ENG_TOKEN_LEN);
    eng_ident **idp = calloc(n, sizeof(*idp));
    eng_rowreq *rq = calloc(n, sizeof(*rq));
    eng_manifest *m = NULL;
    eng_bucketset bs;
    eng_rbudget rb;
    memset(&bs, 0, sizeof(bs));
    if (!r || !toks || !idp || !rq || !(r->found = calloc(n, sizeof(bool))) ||
        !(r->hits = calloc(n, sizeof(eng_hit)))) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    r->n = n;
    for (size_t i = 0; i < n && !err; i++)
        err = eng_id_token(&o, ids[i], id_lens[i], toks[i]);
    if (err || (err = check_unique((const uint8_t(*)[ENG_TOKEN_LEN])toks, n)))
        goto out;
    uint32_t tok_epoch = o.epoch; /* the key epoch toks were made under */
    /* Attempt 0 may use the cached state; later ones read the head. A commit landing mid-read
     * (ENG_MOVED) is retried a bounded number of times; a missing record twice is INTEGRITY. */
    bool refreshed = false;
    for (unsigned attempt = 0; attempt < CDX_READ_ATTEMPTS; attempt++) {
        bool refresh = false;
        eng_manifest_unref(m);
        m = NULL;
        eng_bucketset_free(&bs);
        for (size_t i = 0; i < n; i++) /* from the attempt before */
            if (r->found[i]) {
                eng_hit_free(&r->hits[i]);
                memset(&r->hits[i], 0, sizeof(r->hits[i]));
                r->found[i] = false;
            }
        if ((err = attempt ? eng_load_state(&o, true, min_version, &m)
                           : eng_load_min(&o, min_version, &m)))
            goto out;
        for (size_t i = 0; i < n && !err && tok_epoch != o.epoch; i++) /* a rotation landed */
            err = eng_id_token(&o, ids[i], id_lens[i], toks[i]);
        if (err)
            goto out;
        tok_epoch = o.epoch;
        bool wantb[ENG_BUCKETS] = {false};
        for (size_t i = 0; i < n; i++)
            wantb[eng_bucket_of(toks[i])] = true;
        if ((err = eng_buckets_load(&o, m, wantb, &bs))) {
            if (err == ENG_MOVED && attempt + 1 < CDX_READ_ATTEMPTS) {
                err = CDX_OK;
                continue;
            }
            goto out;
        }
        eng_rbudget_init(&rb, e->cfg.result_bytes_max);
        err = get_attempt(&o, m, &bs, (const uint8_t(*)[ENG_TOKEN_LEN])toks, id_lens, n, want, &rb,
                          idp, rq, r, &refresh);
        if (err || !refresh)
            break;
        if (refreshed || attempt + 1 == CDX_READ_ATTEMPTS) {
            err = cdx_fail(CDX_ERR_INTEGRITY, "a record the current state references (segment "
                                              "or contents) is missing from the store");
            break;
        }
        refreshed = true;
    }
    if (!err)
        r->version = m->version;
out:
    err = eng_in_index(err, name);
    eng_manifest_unref(m);
    eng_bucketset_free(&bs);
    free(toks);
    free(idp);
    free(rq);
    eng_op_end(&o);
    if (err) {
        eng_get_result_free(r);
        return err;
    }
    *out = r;
    return CDX_OK;
}

/* Vector blocks (originals) of the refs flagged in need[], through the cache. */
cdx_err eng_fetch_vectors(op *o, const eng_manifest *m, const eng_segref **refs, size_t n,
                          const bool *need, eng_search **vecs, bool *missing)
{
    return fetch_cached(o, m, refs, n, need, ENG_K_VECTORS, vecs, missing);
}
