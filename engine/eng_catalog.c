/* The catalog: entry codec and I/O (eng_catalog.h). */
#include <stdlib.h>
#include <string.h>

#include "cdx_log.h"
#include "eng_catalog.h"
#include "eng_int.h"
#include "eng_op.h"
#include "eng_store.h"

#define CAT_FMT_V4 4 /* written once a key generation is set: key_gen and the pending new key */
#define CAT_FMT    3 /* written; 2 (no provenance flags) and 1 (no provenance) are still read */
#define CAT_FMT_V2 2
#define CAT_FMT_V1 1

void eng_cat_encode(const eng_catentry *c, eng_buf *b)
{
    bool v4 = c->key_gen || c->next_has;
    eng_buf_u8(b, v4 ? CAT_FMT_V4 : CAT_FMT);
    eng_buf_u8(b, c->state);
    size_t nl = strlen(c->name);
    eng_buf_u16(b, (uint16_t)nl);
    eng_buf_put(b, c->name, nl);
    eng_buf_put(b, c->id, CDX_ID_LEN);
    eng_buf_u8(b, c->key_source);
    eng_buf_u8(b, c->owned);
    /* The token serial (format 2: prov.serial, blank-padded like CK_TOKEN_INFO). */
    uint8_t serial[ENG_SERIAL_LEN];
    size_t sl = strlen(c->prov.serial);
    memset(serial, ' ', sizeof(serial));
    memcpy(serial, c->prov.serial, sl < sizeof(serial) ? sl : sizeof(serial));
    eng_buf_put(b, serial, ENG_SERIAL_LEN);
    eng_buf_u8(b, c->has_kcv);
    eng_buf_put(b, c->kcv, CDX_KCV_LEN);
    eng_buf_u32(b, c->dim);
    eng_buf_u8(b, c->metric);
    eng_buf_u8(b, c->type);
    eng_buf_u32(b, c->n_lists);
    eng_buf_u64(b, c->created_ms);
    const eng_key_prov *p = &c->prov;
    eng_buf_u8(b, p->origin);
    const char *strs[2] = {p->kek, p->token_model};
    for (int i = 0; i < 2; i++) {
        size_t l = strlen(strs[i]);
        eng_buf_u8(b, (uint8_t)l);
        eng_buf_put(b, strs[i], l);
    }
    eng_buf_u32(b, p->attrs);
    eng_buf_u32(b, p->unknown);
    eng_buf_u8(b, p->flags);
    if (v4) {
        eng_buf_u32(b, c->key_gen);
        eng_buf_u8(b, c->next_has);
        eng_buf_u32(b, c->next_gen);
        eng_buf_put(b, c->next_kcv, CDX_KCV_LEN);
        eng_buf_u32(b, c->next_epoch);
    }
}

/* A provenance string: at most cap - 1 printable ASCII bytes. */
static void rd_str(eng_rd *r, char *dst, size_t cap)
{
    uint8_t l = eng_rd_u8(r);
    if (l >= cap)
        r->bad = true;
    eng_rd_copy(r, dst, r->bad ? 0 : l);
    for (size_t i = 0; i < l && !r->bad; i++)
        if (dst[i] < 0x20 || dst[i] > 0x7e)
            r->bad = true;
}

cdx_err eng_cat_decode(const uint8_t *p, size_t n, eng_catentry *c)
{
    eng_rd r;
    eng_rd_init(&r, p, n);
    memset(c, 0, sizeof(*c));
    uint8_t fmt = eng_rd_u8(&r);
    c->state = eng_rd_u8(&r);
    uint16_t nl = eng_rd_u16(&r);
    if (nl > CDX_INDEX_NAME_MAX)
        r.bad = true;
    eng_rd_copy(&r, c->name, r.bad ? 0 : nl);
    eng_rd_copy(&r, c->id, CDX_ID_LEN);
    c->key_source = eng_rd_u8(&r);
    c->owned = eng_rd_u8(&r);
    eng_rd_copy(&r, c->serial, ENG_SERIAL_LEN);
    c->has_kcv = eng_rd_u8(&r);
    eng_rd_copy(&r, c->kcv, CDX_KCV_LEN);
    c->dim = eng_rd_u32(&r);
    c->metric = eng_rd_u8(&r);
    c->type = eng_rd_u8(&r);
    c->n_lists = eng_rd_u32(&r);
    c->created_ms = eng_rd_u64(&r);
    if (fmt == CAT_FMT_V4 || fmt == CAT_FMT || fmt == CAT_FMT_V2) {
        eng_key_prov *pv = &c->prov;
        pv->origin = eng_rd_u8(&r);
        rd_str(&r, pv->kek, sizeof(pv->kek));
        size_t sl = ENG_SERIAL_LEN;
        while (sl > 0 && (c->serial[sl - 1] == ' ' || c->serial[sl - 1] == '\0'))
            sl--;
        for (size_t i = 0; i < sl; i++)
            r.bad |= c->serial[i] < 0x20 || c->serial[i] > 0x7e;
        memcpy(pv->serial, c->serial, sl);
        rd_str(&r, pv->token_model, sizeof(pv->token_model));
        pv->attrs = eng_rd_u32(&r);
        pv->unknown = eng_rd_u32(&r);
        if (fmt == CAT_FMT || fmt == CAT_FMT_V4)
            pv->flags = eng_rd_u8(&r);
        if (pv->origin > ENG_ORIGIN_ADOPTED || (pv->flags & ~ENG_PROV_FLAGS_KNOWN))
            r.bad = true;
    }
    if (fmt == CAT_FMT_V4) {
        c->key_gen = eng_rd_u32(&r);
        c->next_has = eng_rd_u8(&r);
        c->next_gen = eng_rd_u32(&r);
        eng_rd_copy(&r, c->next_kcv, CDX_KCV_LEN);
        c->next_epoch = eng_rd_u32(&r);
        if (c->next_has > ENG_NEXT_RETIRED ||
            (c->next_has == ENG_NEXT_PENDING && c->next_gen <= c->key_gen) ||
            (c->next_has == ENG_NEXT_RETIRED && c->next_gen >= c->key_gen))
            r.bad = true;
    }
    if (!eng_rd_done(&r) ||
        (fmt != CAT_FMT_V4 && fmt != CAT_FMT && fmt != CAT_FMT_V2 && fmt != CAT_FMT_V1) ||
        c->state < ENG_ST_CREATING || c->state > ENG_ST_DELETING || c->dim == 0 ||
        c->dim > CDX_DIM_MAX)
        return cdx_fail(CDX_ERR_INTEGRITY, "catalog entry is malformed");
    return CDX_OK;
}

/* Catalog token of a name: the store never sees names. */
static cdx_err cat_token(op *ro, const char *name, uint8_t tok[ENG_TOKEN_LEN])
{
    hsm_subkey *k;
    uint8_t mac[CDX_SUBKEY_LEN];
    cdx_err err = eng_op_key(ro, HSM_P_CATALOG, &k);
    if (err)
        return err;
    if ((err = hsm_subkey_hmac(k, name, strlen(name), mac)))
        return err;
    memcpy(tok, mac, ENG_TOKEN_LEN);
    return CDX_OK;
}

/* Read a catalog entry; *found false if the name is free. */
cdx_err eng_cat_read(op *ro, const char *name, eng_catentry *c, bool *found)
{
    uint8_t tok[ENG_TOKEN_LEN];
    char key[CDX_STORE_KEY_MAX];
    eng_buf pt;
    eng_buf_init(&pt);
    cdx_err err = cat_token(ro, name, tok);
    if (err)
        return err;
    eng_key_cat(key, tok);
    eng_rec_hdr h;
    if ((err = eng_op_fetch_open(ro, key, HSM_P_CATALOG, ENG_K_CATALOG, tok, UINT64_MAX, &h, &pt,
                                 found)) ||
        !*found)
        goto out;
    if ((err = eng_cat_decode(pt.data, pt.len, c)))
        goto out;
    c->rec_version = h.version;
    if (strcmp(c->name, name)) {
        err = cdx_fail(CDX_ERR_INTEGRITY, "catalog entry names another index");
        goto out;
    }
out:
    eng_buf_free(&pt);
    return err;
}

/* Write a catalog entry: NX for a new claim, else only if unchanged since read (WATCH). */
cdx_err eng_cat_write(op *ro, eng_catentry *c, bool claim, bool *ok)
{
    uint8_t tok[ENG_TOKEN_LEN];
    char key[CDX_STORE_KEY_MAX];
    eng_buf pt, rec;
    eng_buf_init(&pt);
    eng_buf_init(&rec);
    eng_txn *t = NULL;
    eng_val cur = {0};
    cdx_err err = cat_token(ro, c->name, tok);
    if (err)
        return err;
    eng_key_cat(key, tok);
    uint64_t ver = claim ? 1 : c->rec_version + 1;
    eng_cat_encode(c, &pt);
    hsm_subkey *k;
    if ((err = eng_op_key(ro, HSM_P_CATALOG, &k)))
        goto out;
    eng_rec_id id = {.scope = ro->key.id, .kind = ENG_K_CATALOG, .token = tok, .version = ver};
    if (!eng_buf_ok(&pt) ||
        (err = eng_rec_seal(k, &id, cdx_wall_ms(), ro->kcv, pt.data, pt.len, &rec)))
        goto out;
    eng_kv kv = {key, rec.data, rec.len};
    if (claim) {
        err = eng_store_setnx(ro->e->cfg.store, &kv, 1, ok);
        if (!err && *ok)
            c->rec_version = ver;
        goto out;
    }
    if ((err = eng_store_watch(ro->e->cfg.store, key, &t, &cur)))
        goto out;
    eng_rec_hdr h;
    if (!cur.found || eng_rec_header(cur.data, cur.len, &h) || h.version != c->rec_version) {
        eng_store_abort(t);
        *ok = false;
        goto out;
    }
    err = eng_store_commit(t, &kv, 1, ok);
    if (!err && *ok)
        c->rec_version = ver;
out:
    eng_vals_free(&cur, 1);
    eng_buf_free(&pt);
    eng_buf_free(&rec);
    return err;
}

cdx_err eng_cat_remove(op *ro, const char *name)
{
    uint8_t tok[ENG_TOKEN_LEN];
    char key[CDX_STORE_KEY_MAX];
    cdx_err err = cat_token(ro, name, tok);
    if (err)
        return err;
    eng_key_cat(key, tok);
    const char *keys[1] = {key};
    return eng_store_del(ro->e->cfg.store, keys, 1, NULL);
}

/*
 * A catalog entry that cannot be read: fatal (err kept) unless the caller counts them
 * (*unreadable); then it is logged with its store key (an HMAC token: no name) and skipped.
 */
static cdx_err cat_unreadable(cdx_err err, const char *key, size_t *unreadable)
{
    if (!unreadable || (err != CDX_ERR_INTEGRITY && err != CDX_ERR_KEY_REPLACED))
        return err;
    cdx_log(CDX_LOG_ERROR, "catalog_entry_unreadable", "key=\"%.100s\" code=%s", key,
            cdx_err_name(err));
    (*unreadable)++;
    return CDX_OK;
}

cdx_err eng_cat_all(eng *e, eng_catentry **out, size_t *n, size_t *unreadable)
{
    op ro;
    eng_op_root(e, &ro);
    cdx_err err = CDX_OK;
    uint64_t cursor = 0;
    eng_catentry *v = NULL;
    size_t nv = 0, cap = 0;
    eng_buf pt;
    eng_buf_init(&pt);
    do {
        char **keys = NULL;
        size_t nk = 0;
        if ((err = eng_store_scan(e->cfg.store, ENG_KEY_CAT_PATTERN, &cursor, &keys, &nk)))
            break;
        eng_val *vals = calloc(nk ? nk : 1, sizeof(*vals));
        if (!vals ||
            (nk && (err = eng_store_mget(e->cfg.store, (const char *const *)keys, nk, vals)))) {
            if (!vals)
                err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            free(vals);
            eng_keys_free(keys, nk);
            break;
        }
        for (size_t i = 0; i < nk && !err; i++) {
            uint8_t tok[ENG_TOKEN_LEN];
            if (!vals[i].found)
                continue; /* deleted meanwhile */
            if (!eng_key_parse_cat(keys[i], tok)) {
                err = cdx_fail(CDX_ERR_INTEGRITY, "unexpected catalog key in the store");
                if ((err = cat_unreadable(err, keys[i], unreadable)))
                    break;
                continue;
            }
            eng_rec_hdr h;
            eng_buf_free(&pt);
            if ((err = eng_op_unseal(&ro, HSM_P_CATALOG, ENG_K_CATALOG, tok, UINT64_MAX,
                                     vals[i].data, vals[i].len, &h, &pt))) {
                if ((err = cat_unreadable(err, keys[i], unreadable)))
                    break;
                continue;
            }
            if (nv == cap) {
                cap = cap ? cap * 2 : 16;
                eng_catentry *p = realloc(v, cap * sizeof(*p));
                if (!p) {
                    err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
                    break;
                }
                v = p;
            }
            if ((err = eng_cat_decode(pt.data, pt.len, &v[nv]))) {
                if ((err = cat_unreadable(err, keys[i], unreadable)))
                    break;
                continue;
            }
            v[nv].rec_version = h.version;
            /* SCAN may repeat keys. */
            bool dup = false;
            for (size_t j = 0; j < nv; j++)
                dup = dup || !strcmp(v[j].name, v[nv].name);
            if (!dup)
                nv++;
        }
        eng_vals_free(vals, nk);
        free(vals);
        eng_keys_free(keys, nk);
    } while (!err && cursor != 0);
    eng_buf_free(&pt);
    eng_op_end(&ro);
    if (err) {
        free(v);
        return err;
    }
    *out = v;
    *n = nv;
    return CDX_OK;
}

/* ---- key claims ---- */

#define CLAIM_FMT 1
#define CLAIM_LEN (1 + CDX_ID_LEN + ENG_TOKEN_LEN)

/* The claim token of a key: HMAC(K_catalog, "key:" || kcv); no name contains ':'. */
static cdx_err claim_token(op *ro, const uint8_t kcv[CDX_KCV_LEN], uint8_t tok[ENG_TOKEN_LEN])
{
    hsm_subkey *k;
    uint8_t msg[4 + CDX_KCV_LEN], mac[CDX_SUBKEY_LEN];
    cdx_err err = eng_op_key(ro, HSM_P_CATALOG, &k);
    if (err)
        return err;
    memcpy(msg, "key:", 4);
    memcpy(msg + 4, kcv, CDX_KCV_LEN);
    if ((err = hsm_subkey_hmac(k, msg, sizeof(msg), mac)))
        return err;
    memcpy(tok, mac, ENG_TOKEN_LEN);
    return CDX_OK;
}

static cdx_err claim_decode(const uint8_t *p, size_t n, eng_keyclaim *k)
{
    if (n != CLAIM_LEN || p[0] != CLAIM_FMT)
        return cdx_fail(CDX_ERR_INTEGRITY, "key claim is malformed");
    memcpy(k->id, p + 1, CDX_ID_LEN);
    memcpy(k->cat_tok, p + 1 + CDX_ID_LEN, ENG_TOKEN_LEN);
    return CDX_OK;
}

/* Whether claim k names entry c. */
static cdx_err claim_is(op *ro, const eng_keyclaim *k, const eng_catentry *c, bool *is)
{
    uint8_t tok[ENG_TOKEN_LEN];
    cdx_err err = cat_token(ro, c->name, tok);
    if (err)
        return err;
    *is = !memcmp(k->id, c->id, CDX_ID_LEN) && !memcmp(k->cat_tok, tok, ENG_TOKEN_LEN);
    return CDX_OK;
}

cdx_err eng_keyclaim_read(op *ro, const uint8_t kcv[CDX_KCV_LEN], const eng_catentry *c,
                          eng_keyclaim *held, bool *found, bool *ours)
{
    uint8_t tok[ENG_TOKEN_LEN];
    char key[CDX_STORE_KEY_MAX];
    eng_buf pt;
    eng_buf_init(&pt);
    if (ours)
        *ours = false;
    cdx_err err = claim_token(ro, kcv, tok);
    if (err)
        return err;
    eng_key_claim(key, tok);
    if ((err =
             eng_op_fetch_open(ro, key, HSM_P_CATALOG, ENG_K_KEYCLAIM, tok, 1, NULL, &pt, found)) ||
        !*found)
        goto out;
    if ((err = claim_decode(pt.data, pt.len, held)))
        goto out;
    if (c && ours)
        err = claim_is(ro, held, c, ours);
out:
    eng_buf_free(&pt);
    return err;
}

cdx_err eng_keyclaim_take(op *ro, const eng_catentry *c, bool *ours, eng_keyclaim *held)
{
    uint8_t tok[ENG_TOKEN_LEN];
    char key[CDX_STORE_KEY_MAX];
    eng_buf pt, rec;
    eng_buf_init(&pt);
    eng_buf_init(&rec);
    hsm_subkey *k;
    bool created = false, found = false;
    cdx_err err = claim_token(ro, c->kcv, tok);
    if (err)
        return err;
    eng_key_claim(key, tok);
    uint8_t ctok[ENG_TOKEN_LEN];
    if ((err = cat_token(ro, c->name, ctok)) || (err = eng_op_key(ro, HSM_P_CATALOG, &k)))
        goto out;
    eng_buf_u8(&pt, CLAIM_FMT);
    eng_buf_put(&pt, c->id, CDX_ID_LEN);
    eng_buf_put(&pt, ctok, ENG_TOKEN_LEN);
    eng_rec_id id = {.scope = ro->key.id, .kind = ENG_K_KEYCLAIM, .token = tok, .version = 1};
    if (!eng_buf_ok(&pt) ||
        (err = eng_rec_seal(k, &id, cdx_wall_ms(), ro->kcv, pt.data, pt.len, &rec)))
        goto out;
    eng_kv kv = {key, rec.data, rec.len};
    if ((err = eng_store_setnx(ro->e->cfg.store, &kv, 1, &created)))
        goto out;
    if (created) {
        memcpy(held->id, c->id, CDX_ID_LEN);
        memcpy(held->cat_tok, ctok, ENG_TOKEN_LEN);
        *ours = true;
        goto out;
    }
    if ((err = eng_keyclaim_read(ro, c->kcv, c, held, &found, ours)))
        goto out;
    if (!found) /* released between the SET NX and the read */
        err = cdx_fail(CDX_ERR_ABORTED, "the key's claim changed during the create; retry");
out:
    eng_buf_free(&pt);
    eng_buf_free(&rec);
    return err;
}

cdx_err eng_keyclaim_release(op *ro, const eng_catentry *c)
{
    eng_keyclaim held;
    bool found = false, ours = false;
    if (!c->has_kcv)
        return CDX_OK;
    cdx_err err = eng_keyclaim_read(ro, c->kcv, c, &held, &found, &ours);
    if (err || !found || !ours)
        return err;
    uint8_t tok[ENG_TOKEN_LEN];
    char key[CDX_STORE_KEY_MAX];
    if ((err = claim_token(ro, c->kcv, tok)))
        return err;
    eng_key_claim(key, tok);
    const char *keys[1] = {key};
    return eng_store_del(ro->e->cfg.store, keys, 1, NULL);
}

cdx_err eng_keyclaim_each(op *ro, eng_keyclaim_fn fn, void *arg)
{
    uint64_t cursor = 0;
    cdx_err err = CDX_OK;
    eng_buf pt;
    eng_buf_init(&pt);
    do {
        char **keys = NULL;
        size_t nk = 0;
        if ((err = eng_store_scan(ro->e->cfg.store, ENG_KEY_CLAIM_PATTERN, &cursor, &keys, &nk)))
            break;
        for (size_t i = 0; i < nk && !err; i++) {
            uint8_t tok[ENG_TOKEN_LEN];
            eng_keyclaim k = {0};
            bool found = false;
            cdx_err kerr;
            eng_buf_free(&pt);
            if (!eng_key_parse_claim(keys[i], tok))
                kerr = cdx_fail(CDX_ERR_INTEGRITY, "unexpected key-claim key in the store");
            else
                kerr = eng_op_fetch_open(ro, keys[i], HSM_P_CATALOG, ENG_K_KEYCLAIM, tok, 1, NULL,
                                         &pt, &found);
            if (!kerr && !found)
                continue; /* deleted meanwhile */
            if (!kerr && (kerr = claim_decode(pt.data, pt.len, &k)))
                memset(&k, 0, sizeof(k));
            if (kerr != CDX_OK && kerr != CDX_ERR_INTEGRITY && kerr != CDX_ERR_KEY_REPLACED)
                err = kerr; /* the store or the token failed: stop */
            else
                err = fn(arg, keys[i], &k, kerr);
        }
        eng_keys_free(keys, nk);
    } while (!err && cursor != 0);
    eng_buf_free(&pt);
    return err;
}
