/* Count, warm, and listing ids with sealed cursors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "cdx_hex.h"
#include "cdx_time.h"
#include "eng_head.h"
#include "eng_idmap.h"
#include "eng_int.h"
#include "eng_op.h"
#include "eng_read.h"

static cdx_err count(op *o, eng_manifest *m, void *arg)
{
    (void)o;
    *(uint64_t *)arg = m->count;
    return CDX_OK;
}

cdx_err eng_count(eng *e, const char *name, uint64_t *count_out)
{
    uint64_t n = 0;
    cdx_err err = eng_with_manifest(e, name, 0, count, &n);
    if (!err)
        *count_out = n;
    return err;
}

#define WARM_BATCH 64 /* segments fetched per round trip */

static cdx_err warm(op *o, eng_manifest *m, void *arg)
{
    uint64_t *blocks = arg;
    cdx_err err = CDX_OK;
    const eng_segref *refs[WARM_BATCH];
    eng_search *got[WARM_BATCH];
    bool need[WARM_BATCH];
    size_t n = 0, loaded = 0;
    bool vectors = eng_coded(m) && !eng_is_sq8(m); /* IVFFlat rescoring reads its originals */
    for (size_t i = 0; i < WARM_BATCH; i++)
        need[i] = true;
    uint32_t nc = eng_manifest_nclusters(m);
    for (uint32_t c = 0, s = 0; c < nc && !err;) {
        if (s < m->clusters[c].nseg)
            refs[n++] = &m->clusters[c].seg[s++];
        else {
            c++;
            s = 0;
        }
        if (n < WARM_BATCH && (c < nc || n == 0))
            continue;
        /* A full batch, or the last one. */
        bool missing = false;
        memset(got, 0, sizeof(got));
        err = eng_fetch_search(o, m, refs, n, got, &missing);
        for (size_t i = 0; i < n; i++)
            eng_search_release(got[i]);
        if (!err && !missing && vectors) {
            memset(got, 0, sizeof(got));
            err = eng_fetch_vectors(o, m, refs, n, need, got, &missing);
            for (size_t i = 0; i < n; i++)
                eng_search_release(got[i]);
        }
        if (!err && missing)
            err = cdx_fail(CDX_ERR_INTEGRITY, "a segment the manifest lists is missing");
        loaded += n;
        n = 0;
    }
    if (blocks)
        *blocks = loaded;
    return err;
}

cdx_err eng_index_warm(eng *e, const char *name, uint64_t *blocks)
{
    return eng_with_manifest(e, name, ENG_WITH_NAMED, warm, blocks);
}

/* Free the first n ids, keep the arrays. */
static void eng_ids_free_items(char **ids, size_t n)
{
    for (size_t i = 0; ids && i < n; i++) {
        free(ids[i]);
        ids[i] = NULL;
    }
}

void eng_ids_free(char **ids, size_t *id_lens, size_t n)
{
    eng_ids_free_items(ids, n);
    free(ids);
    free(id_lens);
}

/*
 * A list_ids cursor (security review L6): hex of be32 window | a record of
 * kind ENG_K_CURSOR sealed under the index's query subkey with token = the
 * caller's binding (the first 16 bytes of SHA-256 of the principal) and
 * version = window (now / CDX_CURSOR_WINDOW_MS). K_rec depends on both, so
 * each window has its own AES key (a bounded count of cursors per key), and
 * a cursor opens only for the index and the principal it was issued to.
 * Plaintext: u8 fmt 2 | be32 bucket | tok[ENG_TOKEN_LEN] (last returned) |
 * be64 issued_ms. It expires CDX_CURSOR_TTL_MS after issue.
 */
typedef struct cursor_ctx {
    uint8_t bind[ENG_TOKEN_LEN];
    uint64_t now_ms;
} cursor_ctx;

static cdx_err cursor_open(op *o, const cursor_ctx *cx, const char *text, unsigned *bucket,
                           uint8_t last[ENG_TOKEN_LEN], bool *has, uint32_t *epoch)
{
    static const char *const not_ours =
        "cursor is not one this index issued to this principal; start the listing again";
    *bucket = 0;
    *has = false;
    if (!text || !*text)
        return CDX_OK;
    size_t n = strlen(text);
    if (n % 2 || n / 2 > 256 || n / 2 < 4)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "%s", not_ours);
    uint8_t raw[256];
    if (cdx_hex_decode(text, raw, n / 2))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "%s", not_ours);
    uint32_t window =
        (uint32_t)raw[0] << 24 | (uint32_t)raw[1] << 16 | (uint32_t)raw[2] << 8 | raw[3];
    uint64_t now_w = cx->now_ms / CDX_CURSOR_WINDOW_MS;
    if (window != now_w && (uint64_t)window + 1 != now_w)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                        "cursor expired (older than %d minutes); start the listing again",
                        CDX_CURSOR_TTL_MS / 60000);
    eng_buf pt;
    eng_buf_init(&pt);
    eng_rec_hdr h;
    if (!eng_rec_header(raw + 4, n / 2 - 4, &h) && h.epoch < o->min_epoch)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                        "the index's key was rotated since this cursor was issued (key epoch %u, "
                        "now at least %u); start the listing again",
                        h.epoch, o->min_epoch);
    cdx_err err =
        eng_op_unseal(o, HSM_P_QUERY, ENG_K_CURSOR, cx->bind, window, raw + 4, n / 2 - 4, &h, &pt);
    if (err) {
        eng_buf_free(&pt);
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "%s", not_ours);
    }
    eng_rd r;
    eng_rd_init(&r, pt.data, pt.len);
    uint8_t fmt = eng_rd_u8(&r);
    *bucket = eng_rd_u32(&r);
    eng_rd_copy(&r, last, ENG_TOKEN_LEN);
    uint64_t issued = eng_rd_u64(&r);
    bool ok = eng_rd_done(&r) && fmt == 2 && *bucket < ENG_BUCKETS;
    eng_buf_free(&pt);
    if (!ok)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "cursor is malformed");
    if (issued > cx->now_ms ? issued - cx->now_ms > CDX_CURSOR_SKEW_MS
                            : cx->now_ms - issued > CDX_CURSOR_TTL_MS)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                        "cursor expired (older than %d minutes); start the listing again",
                        CDX_CURSOR_TTL_MS / 60000);
    *has = true;
    *epoch = h.epoch;
    return CDX_OK;
}

static cdx_err cursor_seal(op *o, const cursor_ctx *cx, unsigned bucket,
                           const uint8_t last[ENG_TOKEN_LEN], char **out)
{
    eng_buf pt, rec;
    eng_buf_init(&pt);
    eng_buf_init(&rec);
    uint32_t window = (uint32_t)(cx->now_ms / CDX_CURSOR_WINDOW_MS);
    eng_buf_u32(&rec, window);
    eng_buf_u8(&pt, 2);
    eng_buf_u32(&pt, bucket);
    eng_buf_put(&pt, last, ENG_TOKEN_LEN);
    eng_buf_u64(&pt, cx->now_ms);
    cdx_err err =
        eng_op_seal(o, HSM_P_QUERY, ENG_K_CURSOR, cx->bind, window, pt.data, pt.len, &rec);
    if (!err) {
        *out = malloc(rec.len * 2 + 1);
        if (*out)
            cdx_hex_encode(rec.data, rec.len, *out);
        else
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    eng_buf_free(&pt);
    eng_buf_free(&rec);
    return err;
}

/*
 * One page of ids from bucket b0 on, after token `after` within b0 when
 * given: up to `limit` into v/vl (*k of them, owned by the caller even on
 * error); a sealed cursor in *next when more remain.
 * Errors: ENG_MOVED (a newer commit: retry under a fresh head), eng_buckets_load's.
 */
static cdx_err list_page(op *o, const cursor_ctx *cx, const eng_manifest *m, unsigned b0,
                         const uint8_t *after, uint32_t limit, char **v, size_t *vl, size_t *k,
                         char **next)
{
    uint8_t last[ENG_TOKEN_LEN];
    bool more = false;
    unsigned last_b = b0;
    cdx_err err = CDX_OK;
    if (after)
        memcpy(last, after, ENG_TOKEN_LEN);
    for (unsigned b = b0; b < ENG_BUCKETS && !more && !err; b++) {
        if (!m->bucket_version[b])
            continue;
        eng_bucketset bs;
        memset(&bs, 0, sizeof(bs));
        bool want[ENG_BUCKETS] = {false};
        want[b] = true;
        if (!(err = eng_buckets_load(o, m, want, &bs))) {
            eng_bucket *bk = bs.b[b];
            for (uint32_t i = 0; i < bk->n; i++) {
                if (after && b == b0 && memcmp(bk->e[i].tok, after, ENG_TOKEN_LEN) <= 0)
                    continue;
                if (*k == limit) {
                    more = true;
                    break;
                }
                v[*k] = bk->e[i].id;
                vl[*k] = bk->e[i].id_len;
                bk->e[i].id = NULL; /* moved */
                memcpy(last, bk->e[i].tok, ENG_TOKEN_LEN);
                last_b = b;
                (*k)++;
            }
        }
        eng_bucketset_free(&bs); /* free(NULL) for the moved ids; a partial load too */
    }
    if (!err && more)
        err = cursor_seal(o, cx, last_b, last, next);
    return err;
}

cdx_err eng_list_ids(eng *e, const char *name, const char *cursor, uint32_t limit, char ***ids,
                     size_t **id_lens, size_t *n, char **next)
{
    return eng_list_ids_for(e, name, NULL, 0, 0, cursor, limit, ids, id_lens, n, next);
}

cdx_err eng_list_ids_for(eng *e, const char *name, const void *bind, size_t bind_len,
                         uint64_t now_ms, const char *cursor, uint32_t limit, char ***ids,
                         size_t **id_lens, size_t *n, char **next)
{
    cursor_ctx cx = {.now_ms = now_ms ? now_ms : cdx_wall_ms()};
    if (bind && bind_len) {
        uint8_t h[SHA256_DIGEST_LENGTH];
        SHA256(bind, bind_len, h);
        memcpy(cx.bind, h, ENG_TOKEN_LEN);
    }
    struct idx *ix;
    cdx_err err = eng_idx_get(e, name, &ix);
    *ids = NULL;
    *id_lens = NULL;
    *n = 0;
    *next = NULL;
    if (err)
        return err;
    if (limit == 0)
        limit = 1000;
    if (limit > CDX_LIST_PAGE_MAX)
        return eng_idx_drop(ix, cdx_fail(CDX_ERR_INVALID_ARGUMENT, "limit %u exceeds %d", limit,
                                         CDX_LIST_PAGE_MAX));
    op o;
    eng_op_index(e, ix, &o);
    unsigned b0;
    uint8_t last[ENG_TOKEN_LEN];
    bool has = false;
    uint32_t cepoch = 0;
    eng_manifest *m = NULL;
    char **v = calloc(limit, sizeof(char *));
    size_t *vl = calloc(limit, sizeof(size_t));
    size_t k = 0;
    if (!v || !vl) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    if ((err = cursor_open(&o, &cx, cursor, &b0, last, &has, &cepoch)))
        goto out;
    /*
     * A commit landing between the head read and a bucket fetch moves the
     * buckets on (ENG_MOVED): drop the partial page and read it again from
     * the same cursor under a fresh head. Bounded: a writer committing
     * faster than a page can be read still gets ABORTED, never a mixed page.
     */
    for (unsigned attempt = 0; attempt < CDX_READ_ATTEMPTS; attempt++) {
        eng_manifest_unref(m);
        m = NULL;
        eng_ids_free_items(v, k);
        k = 0;
        if ((err = eng_load_state(&o, attempt > 0, 0, &m)))
            break;
        if (has && cepoch != o.epoch) { /* ids are ordered by their tokens, which changed */
            err = cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                           "the index's key was rotated since this cursor was issued (key epoch "
                           "%u, now %u); start the listing again",
                           cepoch, o.epoch);
            break;
        }
        err = list_page(&o, &cx, m, b0, has ? last : NULL, limit, v, vl, &k, next);
        if (err != ENG_MOVED)
            break;
    }
out:
    eng_manifest_unref(m);
    eng_op_end(&o);
    if (err) {
        eng_ids_free(v, vl, k);
        free(*next);
        *next = NULL;
        return eng_in_index(err, name);
    }
    *ids = v;
    *id_lens = vl;
    *n = k;
    return CDX_OK;
}
