#include "eng_record.h"

#include <pthread.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
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
    }
    return "unknown";
}

cdx_err eng_random(void *buf, size_t n)
{
    if (n > 0 && RAND_bytes(buf, (int)n) != 1)
        return cdx_fail(CDX_ERR_INTERNAL, "the random generator failed");
    return CDX_OK;
}

uint64_t eng_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static cdx_err record_key(const hsm_subkey *k, const eng_rec_id *id, uint8_t key[32])
{
    uint8_t msg[sizeof(REC_PREFIX) - 1 + 1 + 1 + 16 + 8];
    size_t o = 0;
    memcpy(msg, REC_PREFIX, sizeof(REC_PREFIX) - 1);
    o += sizeof(REC_PREFIX) - 1;
    msg[o++] = 0x00;
    msg[o++] = (uint8_t)id->kind;
    memcpy(msg + o, id->token, 16);
    o += 16;
    eng_be64(msg + o, id->version);
    o += 8;
    return hsm_subkey_hmac(k, msg, o, key);
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

cdx_err eng_rec_seal(const hsm_subkey *k, const eng_rec_id *id, uint64_t write_time,
                     const uint8_t *kcv, const uint8_t *pt, size_t ptlen, eng_buf *out)
{
    cdx_err err = CDX_OK;
    uint8_t key[32], ad[64];
    EVP_CIPHER_CTX *ctx = NULL;
    if (ptlen > INT32_MAX)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "record too large");
    uint8_t *h = eng_buf_reserve(out, ENG_REC_HDR + ptlen + ENG_REC_TAG);
    if (!h)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory sealing a record");
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
    if ((err = eng_random(h + 32, 12)))
        goto out;
    if ((err = record_key(k, id, key)))
        goto out;
    size_t adlen = build_ad(id, write_time, kcv, ad);
    int n = 0;
    ctx = EVP_CIPHER_CTX_new();
    if (!ctx || EVP_EncryptInit_ex(ctx, gcm(), NULL, key, h + 32) != 1 ||
        EVP_EncryptUpdate(ctx, NULL, &n, ad, (int)adlen) != 1 ||
        (ptlen && EVP_EncryptUpdate(ctx, h + ENG_REC_HDR, &n, pt, (int)ptlen) != 1) ||
        EVP_EncryptFinal_ex(ctx, h + ENG_REC_HDR + ptlen, &n) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, ENG_REC_TAG, h + ENG_REC_HDR + ptlen) !=
            1) {
        err = cdx_fail(CDX_ERR_INTERNAL, "AES-256-GCM encryption failed in OpenSSL");
        goto out;
    }
out:
    EVP_CIPHER_CTX_free(ctx); /* frees and cleanses the expanded key */
    OPENSSL_cleanse(key, sizeof(key));
    return err;
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
        return cdx_fail(CDX_ERR_KEY_REPLACED,
                        "the %s record was written under another key (KCV differs)",
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
        err = cdx_fail(CDX_ERR_INTEGRITY, "%s record failed authentication (modified, truncated "
                       "or moved)", eng_kind_name(id->kind));
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
