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

/* Hit h: the vector of id (segment sr). A missing block sets *refresh. */
static cdx_err get_vector(op *o, const eng_manifest *m, const eng_segref *sr, const eng_ident *id,
                          eng_hit *h, bool *refresh)
{
    eng_search *s = NULL;
    bool mis = false;
    eng_buf vec;
    eng_buf_init(&vec);
    cdx_err err = eng_fetch_search(o, m, &sr, 1, &s, &mis);
    if (err)
        return err;
    if (!mis && !eng_originals_in_search(m))
        err = eng_fetch_blocks(o, &sr, 1, ENG_K_VECTORS, &vec, &mis);
    if (!err && mis) {
        *refresh = true;
    } else if (!err) {
        h->vector = malloc(m->dim * sizeof(float));
        if (!h->vector)
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        else if (!eng_vector_row(m, s, &vec, id->row, h->vector))
            err = cdx_fail(CDX_ERR_INTEGRITY, "vector block is malformed");
    }
    eng_search_release(s);
    eng_buf_free(&vec);
    return err;
}

/* Hit h: the metadata of id (segment sr). A missing block sets *refresh. */
static cdx_err get_metadata(op *o, const eng_segref *sr, const eng_ident *id, eng_hit *h,
                            bool *refresh)
{
    eng_buf mb;
    bool mis = false;
    cdx_err err = eng_fetch_blocks(o, &sr, 1, ENG_K_META, &mb, &mis);
    if (err)
        return err;
    const uint8_t *p;
    size_t len;
    if (mis) {
        *refresh = true;
    } else if (!eng_meta_row(&mb, id->row, &p, &len)) {
        err = cdx_fail(CDX_ERR_INTEGRITY, "metadata block is malformed");
    } else if (len) {
        h->metadata = malloc(len + 1);
        if (!h->metadata) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        } else {
            memcpy(h->metadata, p, len);
            h->metadata[len] = '\0';
            h->metadata_len = len;
        }
    }
    eng_buf_free(&mb);
    return err;
}

/*
 * Hit h for the item id names in state m: its id, and what `want` asks.
 * A record missing from the store sets *refresh (the caller re-reads once).
 */
static cdx_err get_item(op *o, const eng_manifest *m, const eng_ident *id, unsigned want,
                        eng_hit *h, bool *found, bool *refresh)
{
    cdx_err err;
    h->id = malloc(id->id_len + 1u);
    if (!h->id)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    memcpy(h->id, id->id, id->id_len + 1u);
    h->id_len = id->id_len;
    *found = true;
    if (!(want & (ENG_WANT_VECTOR | ENG_WANT_METADATA | ENG_WANT_CONTENTS)))
        return CDX_OK;
    const eng_segref *sr = eng_find_seg(m, id->cluster, id->seg);
    if (!sr)
        return cdx_fail(CDX_ERR_INTEGRITY, "the id map names a segment the manifest "
                                           "does not list");
    if ((want & ENG_WANT_VECTOR) && ((err = get_vector(o, m, sr, id, h, refresh)) || *refresh))
        return err;
    if ((want & ENG_WANT_METADATA) && ((err = get_metadata(o, sr, id, h, refresh)) || *refresh))
        return err;
    if ((want & ENG_WANT_CONTENTS) && id->content_len &&
        (err = eng_fetch_contents(o, id, &h->contents, &h->contents_len))) {
        if (err == ENG_MOVED) {
            *refresh = true;
            return CDX_OK;
        }
        return err;
    }
    return CDX_OK;
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
    eng_manifest *m = NULL;
    eng_bucketset bs;
    memset(&bs, 0, sizeof(bs));
    if (!r || !toks || !(r->found = calloc(n, sizeof(bool))) ||
        !(r->hits = calloc(n, sizeof(eng_hit)))) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    r->n = n;
    for (size_t i = 0; i < n && !err; i++)
        err = eng_id_token(&o, ids[i], id_lens[i], toks[i]);
    if (err)
        goto out;
    for (int attempt = 0; attempt < 2; attempt++) {
        bool refresh = false;
        eng_manifest_unref(m);
        m = NULL;
        eng_bucketset_free(&bs);
        if ((err = attempt ? eng_load_state(&o, true, min_version, &m)
                           : eng_load_min(&o, min_version, &m)))
            goto out;
        bool wantb[ENG_BUCKETS] = {false};
        for (size_t i = 0; i < n; i++)
            wantb[eng_bucket_of(toks[i])] = true;
        if ((err = eng_buckets_load(&o, m, wantb, &bs))) {
            if (err == ENG_MOVED && attempt == 0) {
                err = CDX_OK;
                continue;
            }
            goto out;
        }
        for (size_t i = 0; i < n && !err && !refresh; i++) {
            eng_ident *id = eng_bucket_find(bs.b[eng_bucket_of(toks[i])], toks[i]);
            if (r->found[i]) { /* from the attempt before */
                eng_hit_free(&r->hits[i]);
                memset(&r->hits[i], 0, sizeof(r->hits[i]));
                r->found[i] = false;
            }
            if (id)
                err = get_item(&o, m, id, want, &r->hits[i], &r->found[i], &refresh);
        }
        if (err || !refresh)
            break;
        if (attempt == 1)
            err = cdx_fail(CDX_ERR_INTEGRITY, "a record the current state references (segment "
                                              "or contents) is missing from the store");
    }
    if (!err)
        r->version = m->version;
out:
    err = eng_in_index(err, name);
    eng_manifest_unref(m);
    eng_bucketset_free(&bs);
    free(toks);
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
