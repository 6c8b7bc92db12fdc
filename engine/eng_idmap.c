/*
 * The id map (eng_idmap.h): bucket codec, bucketsets, bucket loading, the
 * write cache, id tokens.
 */
#include <stdlib.h>
#include <string.h>

#include "eng_head.h"
#include "eng_idmap.h"
#include "eng_int.h"
#include "eng_op.h"
#include "eng_store.h"

unsigned eng_bucket_of(const uint8_t tok[ENG_TOKEN_LEN])
{
    return tok[0] % ENG_BUCKETS;
}

void eng_bucket_free(eng_bucket *b)
{
    if (!b)
        return;
    for (uint32_t i = 0; i < b->n; i++)
        free(b->e[i].id);
    free(b->e);
    memset(b, 0, sizeof(*b));
}

static size_t lower_bound(const eng_bucket *b, const uint8_t tok[ENG_TOKEN_LEN])
{
    size_t lo = 0, hi = b->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (memcmp(b->e[mid].tok, tok, ENG_TOKEN_LEN) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

eng_ident *eng_bucket_find(eng_bucket *b, const uint8_t tok[ENG_TOKEN_LEN])
{
    size_t i = lower_bound(b, tok);
    return i < b->n && !memcmp(b->e[i].tok, tok, ENG_TOKEN_LEN) ? &b->e[i] : NULL;
}

cdx_err eng_bucket_put(eng_bucket *b, eng_ident *e)
{
    size_t i = lower_bound(b, e->tok);
    if (i < b->n && !memcmp(b->e[i].tok, e->tok, ENG_TOKEN_LEN)) {
        free(b->e[i].id);
        b->e[i] = *e;
        return CDX_OK;
    }
    if (b->n == b->cap) {
        uint32_t cap = b->cap ? b->cap * 2 : 16;
        eng_ident *p = realloc(b->e, cap * sizeof(*p));
        if (!p)
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        b->e = p;
        b->cap = cap;
    }
    memmove(&b->e[i + 1], &b->e[i], (b->n - i) * sizeof(*b->e));
    b->e[i] = *e;
    b->n++;
    return CDX_OK;
}

bool eng_bucket_remove(eng_bucket *b, const uint8_t tok[ENG_TOKEN_LEN])
{
    size_t i = lower_bound(b, tok);
    if (i >= b->n || memcmp(b->e[i].tok, tok, ENG_TOKEN_LEN))
        return false;
    free(b->e[i].id);
    memmove(&b->e[i], &b->e[i + 1], (b->n - i - 1) * sizeof(*b->e));
    b->n--;
    return true;
}

size_t eng_bucket_encoded_len(const eng_bucket *b)
{
    size_t n = 4;
    for (uint32_t i = 0; i < b->n; i++)
        n += 70 + (size_t)b->e[i].id_len;
    return n;
}

void eng_bucket_encode(const eng_bucket *b, eng_buf *out)
{
    /* One reservation and direct stores: buckets are rewritten whole on every commit. */
    uint8_t *p = eng_buf_reserve(out, eng_bucket_encoded_len(b));
    if (!p)
        return;
    eng_be32(p, b->n);
    p += 4;
    for (uint32_t i = 0; i < b->n; i++) {
        const eng_ident *e = &b->e[i];
        memcpy(p, e->tok, ENG_TOKEN_LEN);
        /* tok | be32 cluster | seg | be32 row | be64 commit_version | content | be32 len | be16
         * id_len */
        eng_be32(p + ENG_TOKEN_LEN, e->cluster);
        memcpy(p + ENG_TOKEN_LEN + 4, e->seg, ENG_TOKEN_LEN);
        eng_be32(p + 2 * ENG_TOKEN_LEN + 4, e->row);
        eng_be64(p + 2 * ENG_TOKEN_LEN + 8, e->commit_version);
        memcpy(p + 2 * ENG_TOKEN_LEN + 16, e->content, ENG_TOKEN_LEN);
        eng_be32(p + 3 * ENG_TOKEN_LEN + 16, e->content_len);
        eng_be16(p + 3 * ENG_TOKEN_LEN + 20, e->id_len);
        memcpy(p + 70, e->id, e->id_len);
        p += 70 + (size_t)e->id_len;
    }
}

cdx_err eng_bucket_decode(const uint8_t *p, size_t n, eng_bucket *b)
{
    eng_rd r;
    eng_rd_init(&r, p, n);
    memset(b, 0, sizeof(*b));
    uint32_t cnt = eng_rd_u32(&r);
    /* An entry is at least 71 bytes: a count beyond that is a lie. */
    if (r.bad || cnt > r.left / 71)
        goto bad;
    b->e = calloc(cnt ? cnt : 1, sizeof(*b->e));
    if (!b->e)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    b->cap = cnt ? cnt : 1;
    for (uint32_t i = 0; i < cnt; i++) {
        eng_ident *e = &b->e[i];
        eng_rd_copy(&r, e->tok, ENG_TOKEN_LEN);
        e->cluster = eng_rd_u32(&r);
        eng_rd_copy(&r, e->seg, ENG_TOKEN_LEN);
        e->row = eng_rd_u32(&r);
        e->commit_version = eng_rd_u64(&r);
        eng_rd_copy(&r, e->content, ENG_TOKEN_LEN);
        e->content_len = eng_rd_u32(&r);
        e->id_len = eng_rd_u16(&r);
        const uint8_t *id = eng_rd_ptr(&r, e->id_len);
        if (!id || e->id_len == 0 || e->id_len > CDX_ITEM_ID_MAX ||
            e->content_len > CDX_CONTENTS_MAX)
            goto bad;
        e->id = malloc(e->id_len + 1u);
        if (!e->id) {
            eng_bucket_free(b);
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        }
        memcpy(e->id, id, e->id_len);
        e->id[e->id_len] = '\0';
        b->n++;
        if (i > 0 && memcmp(b->e[i - 1].tok, e->tok, ENG_TOKEN_LEN) >= 0)
            goto bad;
    }
    if (!eng_rd_done(&r))
        goto bad;
    return CDX_OK;
bad:
    eng_bucket_free(b);
    return cdx_fail(CDX_ERR_INTEGRITY, "id-map bucket is malformed");
}

void eng_bucketset_free(eng_bucketset *bs)
{
    for (unsigned i = 0; i < ENG_BUCKETS; i++) {
        if (bs->b[i]) {
            eng_bucket_free(bs->b[i]);
            free(bs->b[i]);
        }
    }
    memset(bs, 0, sizeof(*bs));
}

/* Free a heap eng_bucketset (the write cache); NULL is a no-op. */
void eng_bucketset_drop(eng_bucketset *bs)
{
    if (bs) {
        eng_bucketset_free(bs);
        free(bs);
    }
}

void eng_wcache_take(op *o, const eng_manifest *m, eng_bucketset *bs)
{
    struct idx *ix = o->ix;
    eng_bucketset *c = NULL;
    pthread_mutex_lock(&ix->mu);
    if (ix->wb && !memcmp(ix->wb_token, m->token, ENG_TOKEN_LEN)) {
        c = ix->wb;
        ix->wb = NULL;
    }
    pthread_mutex_unlock(&ix->mu);
    if (!c)
        return;
    *bs = *c;
    memset(bs->dirty, 0, sizeof(bs->dirty));
    free(c);
}

/* Keep bs (emptied) as the buckets of the manifest just committed. */
void eng_wcache_put(op *o, const eng_manifest *nm, eng_bucketset *bs)
{
    struct idx *ix = o->ix;
    size_t items = 0;
    for (unsigned b = 0; b < ENG_BUCKETS; b++)
        items += bs->b[b] ? bs->b[b]->n : 0;
    eng_bucketset *c = items <= CDX_WCACHE_ITEMS_MAX ? malloc(sizeof(*c)) : NULL;
    if (!c)
        return;
    *c = *bs;
    memset(bs, 0, sizeof(*bs));
    pthread_mutex_lock(&ix->mu);
    eng_bucketset *old = ix->wb;
    ix->wb = c;
    memcpy(ix->wb_token, nm->token, ENG_TOKEN_LEN);
    pthread_mutex_unlock(&ix->mu);
    eng_bucketset_drop(old);
}

/* Load the buckets flagged in want[] at the versions the manifest records. */
cdx_err eng_buckets_load(op *o, const eng_manifest *m, const bool *want, eng_bucketset *bs)
{
    const char *keys[ENG_BUCKETS];
    char kbuf[ENG_BUCKETS][CDX_STORE_KEY_MAX];
    unsigned which[ENG_BUCKETS], n = 0;
    cdx_err err = CDX_OK;
    for (unsigned b = 0; b < ENG_BUCKETS; b++) {
        if (!want[b] || bs->b[b])
            continue;
        bs->b[b] = calloc(1, sizeof(eng_bucket));
        if (!bs->b[b])
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        if (m->bucket_version[b] == 0)
            continue; /* never written: empty */
        eng_key_bucket(kbuf[n], o->ix->id, b);
        keys[n] = kbuf[n];
        which[n++] = b;
    }
    if (n == 0)
        return CDX_OK;
    eng_val v[ENG_BUCKETS];
    memset(v, 0, sizeof(v));
    uint64_t t0 = cdx_mono_ns();
    err = eng_store_mget(o->e->cfg.store, keys, n, v);
    eng_stage_add(&o->e->ns_fetch, ENG_STAGE_FETCH, cdx_mono_ns() - t0);
    if (err)
        return err;
    eng_buf pt;
    eng_buf_init(&pt);
    for (unsigned i = 0; i < n && !err; i++) {
        unsigned b = which[i];
        uint8_t tok[ENG_TOKEN_LEN];
        eng_bucket_token(b, tok);
        if (!v[i].found) {
            err = cdx_fail(CDX_ERR_INTEGRITY, "an id-map bucket the manifest names is missing");
            break;
        }
        eng_buf_free(&pt);
        /*
         * A bucket newer than the manifest says: either a commit landed
         * between our head read and this fetch (retry with a fresh head), or
         * the store serves something it should not (INTEGRITY).
         */
        eng_rec_hdr rh;
        if (!eng_rec_header(v[i].data, v[i].len, &rh) && rh.version > m->bucket_version[b]) {
            eng_head h;
            bool found = false;
            if ((err = eng_read_head(o, &h, &found)))
                break;
            if (found && h.version > m->version) {
                err = cdx_fail(ENG_MOVED, "the index moved on while it was being read");
                break;
            }
        }
        /* A bucket of another version (a newer commit, or a replay) fails here. */
        if ((err = eng_op_unseal(o, HSM_P_MANIFEST, ENG_K_BUCKET, tok, m->bucket_version[b],
                                 v[i].data, v[i].len, NULL, &pt)))
            break;
        err = eng_bucket_decode(pt.data, pt.len, bs->b[b]);
    }
    eng_buf_free(&pt);
    eng_vals_free(v, n);
    return err;
}

/* id token = HMAC(K_token, "id" 0x00 id)[0..ENG_TOKEN_LEN) */
cdx_err eng_id_token(op *o, const char *id, size_t len, uint8_t tok[ENG_TOKEN_LEN])
{
    hsm_subkey *k;
    uint8_t mac[CDX_SUBKEY_LEN];
    cdx_err err = eng_op_key(o, HSM_P_TOKEN, &k);
    if (err)
        return err;
    uint8_t *msg = malloc(len + 3);
    if (!msg)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    msg[0] = 'i';
    msg[1] = 'd';
    msg[2] = 0x00;
    memcpy(msg + 3, id, len);
    err = hsm_subkey_hmac(k, msg, len + 3, mac);
    free(msg);
    memcpy(tok, mac, ENG_TOKEN_LEN);
    return err;
}

/*
 * id_token with the op's token sealer (the key set up once, no allocation):
 * for the write path, which computes one per item on one thread. id_token
 * stays for the query threads, which share their op.
 */
cdx_err eng_id_token_w(op *o, const char *id, size_t len, uint8_t tok[ENG_TOKEN_LEN])
{
    eng_sealer *k;
    uint8_t msg[3 + CDX_ITEM_ID_MAX], mac[CDX_SUBKEY_LEN];
    if (len > CDX_ITEM_ID_MAX)
        return eng_id_token(o, id, len, tok);
    cdx_err err = eng_op_sealer(o, HSM_P_TOKEN, &k);
    if (err)
        return err;
    msg[0] = 'i';
    msg[1] = 'd';
    msg[2] = 0x00;
    memcpy(msg + 3, id, len);
    err = eng_sealer_hmac(k, msg, len + 3, mac);
    memcpy(tok, mac, ENG_TOKEN_LEN);
    return err;
}

cdx_err eng_buckets_load_all(op *o, const eng_manifest *m, eng_bucketset *bs)
{
    bool want[ENG_BUCKETS];
    for (unsigned b = 0; b < ENG_BUCKETS; b++)
        want[b] = true;
    return eng_buckets_load(o, m, want, bs);
}
