#include "eng_record.h"

#include <pthread.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

static const char REC_PREFIX[] = "cipherdex/v1/record"; /* 19 bytes */

/* AES-256-GCM fetched once (the implicit fetch per EVP_*Init costs microseconds per record). */
static EVP_CIPHER *g_gcm;
static pthread_once_t g_gcm_once = PTHREAD_ONCE_INIT;

static void gcm_fetch(void)
{
    g_gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
}

static const EVP_CIPHER *gcm(void)
{
    pthread_once(&g_gcm_once, gcm_fetch);
    return g_gcm ? g_gcm : EVP_aes_256_gcm();
}

const char *eng_kind_name(eng_kind k)
{
    switch (k) {
    case ENG_K_CATALOG:
        return "catalog";
    case ENG_K_HEAD:
        return "head";
    case ENG_K_MANIFEST:
        return "manifest";
    case ENG_K_BUCKET:
        return "id-map bucket";
    case ENG_K_SEARCH:
        return "search block";
    case ENG_K_VECTORS:
        return "vector block";
    case ENG_K_META:
        return "metadata block";
    case ENG_K_CONTENT:
        return "contents";
    case ENG_K_CENTROIDS:
        return "centroids";
    case ENG_K_CURSOR:
        return "cursor";
    case ENG_K_KEYCLAIM:
        return "key claim";
    }
    return "unknown";
}

cdx_err eng_random(void *buf, size_t n)
{
    if (n > 0 && RAND_bytes(buf, (int)n) != 1)
        return cdx_fail(CDX_ERR_INTERNAL, "the random generator failed");
    return CDX_OK;
}

/* The K_rec message: "cipherdex/v1/record" 0x00 kind token[16] be64(version), 45 bytes. */
static size_t record_msg(const eng_rec_id *id, uint8_t msg[45])
{
    size_t o = 0;
    memcpy(msg, REC_PREFIX, sizeof(REC_PREFIX) - 1);
    o += sizeof(REC_PREFIX) - 1;
    msg[o++] = 0x00;
    msg[o++] = (uint8_t)id->kind;
    memcpy(msg + o, id->token, 16);
    o += 16;
    eng_be64(msg + o, id->version);
    o += 8;
    return o;
}

static cdx_err record_key(const hsm_subkey *k, const eng_rec_id *id, uint8_t key[32])
{
    uint8_t msg[45];
    return hsm_subkey_hmac(k, msg, record_msg(id, msg), key);
}

/* AD = be16(format) scope[16] kind token[16] be32(epoch) be64(version) be64(time) kcv[8] */
static size_t build_ad(const eng_rec_id *id, uint64_t write_time, const uint8_t *kcv, uint8_t *ad)
{
    size_t o = 0;
    eng_be16(ad + o, ENG_REC_FORMAT);
    o += 2;
    memcpy(ad + o, id->scope, 16);
    o += 16;
    ad[o++] = (uint8_t)id->kind;
    memcpy(ad + o, id->token, 16);
    o += 16;
    eng_be32(ad + o, id->epoch);
    o += 4;
    eng_be64(ad + o, id->version);
    o += 8;
    eng_be64(ad + o, write_time);
    o += 8;
    if (kcv)
        memcpy(ad + o, kcv, CDX_KCV_LEN);
    else
        memset(ad + o, 0, CDX_KCV_LEN);
    o += CDX_KCV_LEN;
    return o;
}

/* The clear header but its nonce (h + 32), which the caller has drawn. */
static void fill_header(uint8_t *h, const eng_rec_id *id, uint64_t write_time, const uint8_t *kcv)
{
    eng_be16(h, ENG_REC_FORMAT);
    h[2] = (uint8_t)id->kind;
    h[3] = 0;
    eng_be32(h + 4, id->epoch);
    eng_be64(h + 8, id->version);
    eng_be64(h + 16, write_time);
    if (kcv)
        memcpy(h + 24, kcv, CDX_KCV_LEN);
    else
        memset(h + 24, 0, CDX_KCV_LEN);
}

/*
 * AES-256-GCM of rec's plaintext (pt, ptlen bytes; pt may be rec + ENG_REC_HDR:
 * in place) into rec + ENG_REC_HDR, tag after it. `fresh`: ctx has no cipher yet
 * (re-keying a set-up context skips the provider's setup).
 */
static cdx_err gcm_seal(EVP_CIPHER_CTX *ctx, bool fresh, const uint8_t key[32],
                        const eng_rec_id *id, uint64_t write_time, const uint8_t *kcv, uint8_t *rec,
                        const uint8_t *pt, size_t ptlen)
{
    uint8_t ad[64];
    size_t adlen = build_ad(id, write_time, kcv, ad);
    int n = 0;
    if (EVP_EncryptInit_ex(ctx, fresh ? gcm() : NULL, NULL, key, rec + 32) != 1 ||
        EVP_EncryptUpdate(ctx, NULL, &n, ad, (int)adlen) != 1 ||
        (ptlen && EVP_EncryptUpdate(ctx, rec + ENG_REC_HDR, &n, pt, (int)ptlen) != 1) ||
        EVP_EncryptFinal_ex(ctx, rec + ENG_REC_HDR + ptlen, &n) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, ENG_REC_TAG, rec + ENG_REC_HDR + ptlen) != 1)
        return cdx_fail(CDX_ERR_INTERNAL, "AES-256-GCM encryption failed in OpenSSL");
    return CDX_OK;
}

cdx_err eng_rec_seal(const hsm_subkey *k, const eng_rec_id *id, uint64_t write_time,
                     const uint8_t *kcv, const uint8_t *pt, size_t ptlen, eng_buf *out)
{
    cdx_err err = CDX_OK;
    uint8_t key[32];
    EVP_CIPHER_CTX *ctx = NULL;
    if (ptlen > INT32_MAX)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "record too large");
    uint8_t *h = eng_buf_reserve(out, ENG_REC_HDR + ptlen + ENG_REC_TAG);
    if (!h)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory sealing a record");
    fill_header(h, id, write_time, kcv);
    if ((err = eng_random(h + 32, 12)))
        goto out;
    if ((err = record_key(k, id, key)))
        goto out;
    ctx = EVP_CIPHER_CTX_new();
    if (!ctx) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory sealing a record");
        goto out;
    }
    err = gcm_seal(ctx, true, key, id, write_time, kcv, h, pt, ptlen);
out:
    EVP_CIPHER_CTX_free(ctx); /* frees and cleanses the expanded key */
    OPENSSL_cleanse(key, sizeof(key));
    return err;
}

/* ------------------------------------------------------------------ sealer */

/* HMAC-SHA256 fetched once (as in hsm_subkey.c). */
static EVP_MAC *g_hmac;
static pthread_once_t g_hmac_once = PTHREAD_ONCE_INIT;

static void hmac_fetch(void)
{
    g_hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
}

cdx_err eng_sealer_init(eng_sealer *s, const hsm_subkey *k)
{
    memset(s, 0, sizeof(*s));
    pthread_once(&g_hmac_once, hmac_fetch);
    OSSL_PARAM params[2] = {OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA256", 0),
                            OSSL_PARAM_construct_end()};
    s->mac = g_hmac ? EVP_MAC_CTX_new(g_hmac) : NULL;
    s->gcm = EVP_CIPHER_CTX_new();
    if (!s->mac || !s->gcm ||
        EVP_MAC_init(s->mac, hsm_subkey_bytes(k), CDX_SUBKEY_LEN, params) != 1) {
        eng_sealer_free(s);
        return cdx_fail(CDX_ERR_INTERNAL, "HMAC-SHA256 or AES-256-GCM setup failed in OpenSSL");
    }
    return CDX_OK;
}

void eng_sealer_free(eng_sealer *s)
{
    /* Freeing the contexts cleanses the keyed HMAC state and the expanded AES key. */
    EVP_MAC_CTX_free(s->mac);
    EVP_CIPHER_CTX_free(s->gcm);
    OPENSSL_cleanse(s, sizeof(*s));
}

cdx_err eng_sealer_hmac(eng_sealer *s, const void *msg, size_t len, uint8_t out[32])
{
    size_t olen = 0;
    /* A NULL key re-initialises HMAC with the key already set: no re-hashing of the pads. */
    if (EVP_MAC_init(s->mac, NULL, 0, NULL) != 1 || EVP_MAC_update(s->mac, msg, len) != 1 ||
        EVP_MAC_final(s->mac, out, &olen, 32) != 1 || olen != 32)
        return cdx_fail(CDX_ERR_INTERNAL, "HMAC-SHA256 failed in OpenSSL");
    return CDX_OK;
}

static cdx_err next_nonce(eng_sealer *s, uint8_t nonce[12])
{
    cdx_err err;
    if (s->pool_left == 0) {
        if ((err = eng_random(s->pool, sizeof(s->pool))))
            return err;
        s->pool_left = ENG_NONCE_POOL;
    }
    s->pool_left--;
    memcpy(nonce, s->pool + s->pool_left * 12, 12);
    return CDX_OK;
}

/*
 * Seal the record at out->data + at: ENG_REC_HDR bytes of header, then room for
 * ptlen bytes of ciphertext (the plaintext itself when pt is NULL: in place),
 * then the tag, all reserved already. On failure out is cut back to `at`.
 */
static cdx_err seal_record(eng_sealer *s, const eng_rec_id *id, uint64_t write_time,
                           const uint8_t *kcv, eng_buf *out, size_t at, const uint8_t *pt,
                           size_t ptlen)
{
    cdx_err err;
    uint8_t key[32], msg[45];
    uint8_t *h = out->data + at;
    fill_header(h, id, write_time, kcv);
    if (!(err = next_nonce(s, h + 32)) &&
        !(err = eng_sealer_hmac(s, msg, record_msg(id, msg), key))) {
        bool fresh = EVP_CIPHER_CTX_get0_cipher(s->gcm) == NULL;
        err =
            gcm_seal(s->gcm, fresh, key, id, write_time, kcv, h, pt ? pt : h + ENG_REC_HDR, ptlen);
    }
    OPENSSL_cleanse(key, sizeof(key));
    if (err) {
        OPENSSL_cleanse(h, out->len - at);
        out->len = at;
    }
    return err;
}

cdx_err eng_rec_seal_at(eng_sealer *s, const eng_rec_id *id, uint64_t write_time,
                        const uint8_t *kcv, eng_buf *out, size_t at)
{
    cdx_err err;
    if (!eng_buf_ok(out) || at > out->len || out->len - at < ENG_REC_HDR) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory sealing a record");
        goto fail;
    }
    size_t ptlen = out->len - at - ENG_REC_HDR;
    if (ptlen > INT32_MAX) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "record too large");
        goto fail;
    }
    if (!eng_buf_reserve(out, ENG_REC_TAG)) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory sealing a record");
        goto fail;
    }
    return seal_record(s, id, write_time, kcv, out, at, NULL, ptlen);
fail:
    if (out->data && at < out->len) {
        OPENSSL_cleanse(out->data + at, out->len - at);
        out->len = at;
    }
    return err;
}

cdx_err eng_rec_seal_s(eng_sealer *s, const eng_rec_id *id, uint64_t write_time, const uint8_t *kcv,
                       const uint8_t *pt, size_t ptlen, eng_buf *out)
{
    size_t at = out->len;
    if (ptlen > INT32_MAX)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "record too large");
    if (!eng_buf_reserve(out, ENG_REC_HDR + ptlen + ENG_REC_TAG))
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory sealing a record");
    return seal_record(s, id, write_time, kcv, out, at, pt, ptlen);
}

cdx_err eng_rec_header(const uint8_t *rec, size_t len, eng_rec_hdr *h)
{
    if (len < ENG_REC_OVERHEAD)
        return cdx_fail(CDX_ERR_INTEGRITY, "record of %zu bytes is shorter than its header", len);
    h->format = eng_rd16(rec);
    h->kind = rec[2];
    h->epoch = eng_rd32(rec + 4);
    h->version = eng_rd64(rec + 8);
    h->write_time = eng_rd64(rec + 16);
    memcpy(h->kcv, rec + 24, CDX_KCV_LEN);
    if (h->format != ENG_REC_FORMAT || rec[3] != 0)
        return cdx_fail(CDX_ERR_INTEGRITY, "record has unknown format %u", h->format);
    return CDX_OK;
}

cdx_err eng_rec_open(const hsm_subkey *k, const eng_rec_id *id, const uint8_t *expected_kcv,
                     const uint8_t *rec, size_t len, eng_rec_hdr *h, eng_buf *out)
{
    cdx_err err;
    uint8_t key[32], ad[64];
    EVP_CIPHER_CTX *ctx = NULL;
    if ((err = eng_rec_header(rec, len, h)))
        return err;
    if (h->kind != id->kind)
        return cdx_fail(CDX_ERR_INTEGRITY, "a %s record was found where a %s was expected",
                        eng_kind_name(h->kind), eng_kind_name(id->kind));
    if (expected_kcv && CRYPTO_memcmp(h->kcv, expected_kcv, CDX_KCV_LEN) != 0)
        return cdx_fail(CDX_ERR_INTEGRITY,
                        "the %s record was written under another key than this one's (its KCV "
                        "differs; the token key itself checked out): moved from another index "
                        "or forged in the store",
                        eng_kind_name(id->kind));
    if (h->version != id->version || h->epoch != id->epoch)
        return cdx_fail(CDX_ERR_INTEGRITY,
                        "%s record has version %llu, expected %llu (replayed or swapped)",
                        eng_kind_name(id->kind), (unsigned long long)h->version,
                        (unsigned long long)id->version);
    size_t ctlen = len - ENG_REC_OVERHEAD;
    if (ctlen > INT32_MAX)
        return cdx_fail(CDX_ERR_INTEGRITY, "record too large");
    uint8_t *pt = eng_buf_reserve(out, ctlen);
    if (!pt)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory opening a record");
    if ((err = record_key(k, id, key)))
        goto fail;
    size_t adlen = build_ad(id, h->write_time, h->kcv, ad);
    int n = 0;
    ctx = EVP_CIPHER_CTX_new();
    if (!ctx || EVP_DecryptInit_ex(ctx, gcm(), NULL, key, rec + 32) != 1 ||
        EVP_DecryptUpdate(ctx, NULL, &n, ad, (int)adlen) != 1 ||
        (ctlen && EVP_DecryptUpdate(ctx, pt, &n, rec + ENG_REC_HDR, (int)ctlen) != 1) ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, ENG_REC_TAG,
                            (void *)(rec + ENG_REC_HDR + ctlen)) != 1) {
        err = cdx_fail(CDX_ERR_INTERNAL, "AES-256-GCM decryption failed in OpenSSL");
        goto fail;
    }
    if (EVP_DecryptFinal_ex(ctx, pt + ctlen, &n) != 1) {
        err = cdx_fail(CDX_ERR_INTEGRITY,
                       "%s record failed authentication (modified, truncated "
                       "or moved)",
                       eng_kind_name(id->kind));
        goto fail;
    }
    EVP_CIPHER_CTX_free(ctx);
    OPENSSL_cleanse(key, sizeof(key));
    return CDX_OK;
fail:
    EVP_CIPHER_CTX_free(ctx);
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(pt, ctlen);
    out->len -= ctlen;
    return err;
}
