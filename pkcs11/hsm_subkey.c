/*
 * Subkey derivation on the token and the TTL cache in locked memory.
 */
#include "hsm_subkey.h"

#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "cdx_log.h"
#include "hsm_internal.h"
#include "hsm_secmem.h"
#include "cdx_time.h"

/* This thread's subkey uses since hsm_thread_keyuse last read them (bit = hsm_purpose). */
static _Thread_local uint32_t tl_hits, tl_calls;

void hsm_thread_keyuse(uint32_t *cache_hits, uint32_t *token_calls)
{
    *cache_hits = tl_hits;
    *token_calls = tl_calls;
    tl_hits = tl_calls = 0;
}

static const char SUBKEY_PREFIX[] = "cipherdex/v1/subkey"; /* 19 bytes, no NUL */

static const struct {
    hsm_purpose p;
    const char *name;
    hsm_key_kind kind;
} purposes[] = {
    {HSM_P_CATALOG, "catalog", HSM_KEY_ROOT},  {HSM_P_AUDIT, "audit", HSM_KEY_ROOT},
    {HSM_P_TOKEN, "token", HSM_KEY_INDEX},     {HSM_P_CENTROID, "centroid", HSM_KEY_INDEX},
    {HSM_P_PAYLOAD, "payload", HSM_KEY_INDEX}, {HSM_P_CONTENT, "content", HSM_KEY_INDEX},
    {HSM_P_QUERY, "query", HSM_KEY_INDEX},     {HSM_P_MANIFEST, "manifest", HSM_KEY_INDEX},
};

const char *hsm_purpose_name(hsm_purpose p)
{
    for (size_t i = 0; i < sizeof(purposes) / sizeof(purposes[0]); i++)
        if (purposes[i].p == p)
            return purposes[i].name;
    return NULL;
}

hsm_key_kind hsm_purpose_key_kind(hsm_purpose p)
{
    for (size_t i = 0; i < sizeof(purposes) / sizeof(purposes[0]); i++)
        if (purposes[i].p == p)
            return purposes[i].kind;
    return 0;
}

size_t hsm_subkey_message(hsm_purpose p, const uint8_t scope_id[CDX_ID_LEN], uint32_t epoch,
                          uint8_t *buf, size_t cap)
{
    const char *name = hsm_purpose_name(p);
    if (!name)
        return 0;
    size_t pl = strlen(name), pre = sizeof(SUBKEY_PREFIX) - 1;
    size_t need = pre + 1 + pl + 1 + CDX_ID_LEN + 4;
    if (cap < need)
        return 0;
    size_t o = 0;
    memcpy(buf + o, SUBKEY_PREFIX, pre);
    o += pre;
    buf[o++] = 0x00;
    memcpy(buf + o, name, pl);
    o += pl;
    buf[o++] = 0x00;
    memcpy(buf + o, scope_id, CDX_ID_LEN);
    o += CDX_ID_LEN;
    buf[o++] = (uint8_t)(epoch >> 24);
    buf[o++] = (uint8_t)(epoch >> 16);
    buf[o++] = (uint8_t)(epoch >> 8);
    buf[o++] = (uint8_t)epoch;
    return o;
}

/* Lives entirely in the locked arena: the key bytes and what they are for. */
struct hsm_subkey {
    uint8_t key[CDX_SUBKEY_LEN];
    uint8_t kcv[CDX_KCV_LEN];
    uint8_t id[CDX_ID_LEN];
    hsm_key_kind kind;
    uint32_t kgen; /* the key's generation (hsm_key_ref.gen) */
    hsm_purpose purpose;
    uint32_t epoch;
    int64_t expires_ms;
    unsigned refs; /* holders, including the cache */
    bool cached;   /* linked in the cache */
    hsm_custody *c;
    struct hsm_subkey *next;
};

struct hsm_subcache {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t janitor;
    bool running, stop;
    struct hsm_subkey *head;
    uint64_t count;
};

static void sk_wipe(struct hsm_subkey *sk)
{
    OPENSSL_cleanse(sk, sizeof(*sk));
    hsm_secmem_free(sk);
}

/* Unlink from the cache; the caller holds mu. Wipes now if nobody holds it. */
static void sk_unlink(struct hsm_subcache *sc, struct hsm_subkey **pp)
{
    struct hsm_subkey *sk = *pp;
    *pp = sk->next;
    sk->next = NULL;
    sk->cached = false;
    sc->count--;
    if (--sk->refs == 0)
        sk_wipe(sk);
}

/* Drop expired entries; returns ms until the next expiry (-1: none). Caller holds mu. */
static int64_t sweep(struct hsm_subcache *sc, int64_t now)
{
    int64_t next = -1;
    for (struct hsm_subkey **pp = &sc->head; *pp;) {
        if ((*pp)->expires_ms <= now) {
            sk_unlink(sc, pp);
            continue;
        }
        int64_t d = (*pp)->expires_ms - now;
        if (next < 0 || d < next)
            next = d;
        pp = &(*pp)->next;
    }
    return next;
}

/* Wipes entries the moment their TTL ends, even if nobody asks for them again. */
static void *janitor(void *arg)
{
    struct hsm_subcache *sc = arg;
    pthread_mutex_lock(&sc->mu);
    while (!sc->stop) {
        int64_t wait = sweep(sc, cdx_mono_ms());
        if (wait < 0) {
            pthread_cond_wait(&sc->cv, &sc->mu);
        } else {
            struct timespec ts = cdx_mono_deadline(wait);
            pthread_cond_timedwait(&sc->cv, &sc->mu, &ts);
        }
    }
    pthread_mutex_unlock(&sc->mu);
    return NULL;
}

cdx_err hsm_subcache_new(hsm_custody *c)
{
    struct hsm_subcache *sc = calloc(1, sizeof(*sc));
    if (!sc)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    pthread_mutex_init(&sc->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&sc->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (c->cfg.subkey_ttl_ms > 0) {
        if (pthread_create(&sc->janitor, NULL, janitor, sc) != 0) {
            pthread_mutex_destroy(&sc->mu);
            pthread_cond_destroy(&sc->cv);
            free(sc);
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "cannot start the subkey janitor thread");
        }
        sc->running = true;
    }
    c->cache = sc;
    return CDX_OK;
}

void hsm_subkey_flush(hsm_custody *c)
{
    struct hsm_subcache *sc = c->cache;
    if (!sc)
        return;
    pthread_mutex_lock(&sc->mu);
    while (sc->head)
        sk_unlink(sc, &sc->head);
    pthread_mutex_unlock(&sc->mu);
}

void hsm_subcache_free(hsm_custody *c)
{
    struct hsm_subcache *sc = c->cache;
    if (!sc)
        return;
    hsm_subkey_flush(c);
    if (sc->running) {
        pthread_mutex_lock(&sc->mu);
        sc->stop = true;
        pthread_cond_signal(&sc->cv);
        pthread_mutex_unlock(&sc->mu);
        pthread_join(sc->janitor, NULL);
    }
    pthread_mutex_destroy(&sc->mu);
    pthread_cond_destroy(&sc->cv);
    free(sc);
    c->cache = NULL;
}

void hsm_subcache_drop_key(hsm_custody *c, const hsm_key_ref *k)
{
    struct hsm_subcache *sc = c->cache;
    if (!sc)
        return;
    pthread_mutex_lock(&sc->mu);
    for (struct hsm_subkey **pp = &sc->head; *pp;) {
        if ((*pp)->kind == k->kind && (*pp)->kgen == k->gen &&
            !memcmp((*pp)->id, k->id, CDX_ID_LEN))
            sk_unlink(sc, pp);
        else
            pp = &(*pp)->next;
    }
    pthread_mutex_unlock(&sc->mu);
}

uint64_t hsm_subcache_count(hsm_custody *c)
{
    struct hsm_subcache *sc = c->cache;
    if (!sc)
        return 0;
    pthread_mutex_lock(&sc->mu);
    uint64_t n = sc->count;
    pthread_mutex_unlock(&sc->mu);
    return n;
}

/* ---------------------------------------------------------------- derivation */

struct derive_arg {
    const hsm_key_ref *k;
    const uint8_t *expected;
    const uint8_t *msg;
    size_t len;
    struct hsm_subkey *sk;
};

static cdx_err derive_op(hsm_custody *c, CK_SESSION_HANDLE s, void *arg, CK_RV *rv)
{
    struct derive_arg *a = arg;
    CK_OBJECT_HANDLE h;
    cdx_err err = hsm_key_resolve(c, s, a->k, a->expected, &h, a->sk->kcv, rv);
    if (err)
        return err;
    CK_RV r = hsm_sign_hmac(c, s, h, a->msg, a->len, a->sk->key);
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "subkey derivation (C_Sign)");
    }
    atomic_fetch_add(&c->derivations, 1);
    return CDX_OK;
}

static bool matches(const struct hsm_subkey *sk, const hsm_key_ref *k, hsm_purpose p, uint32_t ep)
{
    return sk->kind == k->kind && sk->kgen == k->gen && sk->purpose == p && sk->epoch == ep &&
           !memcmp(sk->id, k->id, CDX_ID_LEN);
}

cdx_err hsm_subkey_get(hsm_custody *c, const hsm_key_ref *key, const uint8_t *expected_kcv,
                       hsm_purpose purpose, uint32_t epoch, hsm_subkey **out)
{
    *out = NULL;
    hsm_key_kind want = hsm_purpose_key_kind(purpose);
    if (!want)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "unknown subkey purpose %d", (int)purpose);
    if (want != key->kind)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "purpose %s belongs to the %s key",
                        hsm_purpose_name(purpose), want == HSM_KEY_ROOT ? "root" : "index");
    struct hsm_subcache *sc = c->cache;
    uint32_t ttl = c->cfg.subkey_ttl_ms;

    if (ttl > 0) {
        pthread_mutex_lock(&sc->mu);
        int64_t now = cdx_mono_ms();
        for (struct hsm_subkey **pp = &sc->head; *pp; pp = &(*pp)->next) {
            struct hsm_subkey *sk = *pp;
            if (!matches(sk, key, purpose, epoch))
                continue;
            if (sk->expires_ms <= now) {
                sk_unlink(sc, pp);
                break;
            }
            /* A cached entry whose KCV disagrees is not trusted: ask the token. */
            if (expected_kcv && CRYPTO_memcmp(sk->kcv, expected_kcv, CDX_KCV_LEN) != 0)
                break;
            sk->refs++;
            pthread_mutex_unlock(&sc->mu);
            atomic_fetch_add(&c->cache_hits, 1);
            tl_hits |= 1u << purpose;
            *out = sk;
            return CDX_OK;
        }
        pthread_mutex_unlock(&sc->mu);
    }

    uint8_t msg[128];
    size_t len = hsm_subkey_message(purpose, key->id, epoch, msg, sizeof(msg));
    struct hsm_subkey *sk = hsm_secmem_alloc(sizeof(*sk));
    if (!sk) {
        /* The cache is only a cache: give its memory back and try once more. */
        pthread_mutex_lock(&sc->mu);
        bool had = sc->head != NULL;
        while (sc->head)
            sk_unlink(sc, &sc->head);
        pthread_mutex_unlock(&sc->mu);
        if (had)
            sk = hsm_secmem_alloc(sizeof(*sk));
    }
    if (!sk)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED,
                        "secret memory exhausted: raise secmem_bytes or lower subkey_ttl_ms");
    sk->kind = key->kind;
    sk->kgen = key->gen;
    memcpy(sk->id, key->id, CDX_ID_LEN);
    sk->purpose = purpose;
    sk->epoch = epoch;
    sk->c = c;
    sk->refs = 1;
    struct derive_arg a = {.k = key, .expected = expected_kcv, .msg = msg, .len = len, .sk = sk};
    cdx_err err = hsm_run(c, derive_op, &a, true);
    tl_calls |= 1u << purpose;
    hsm_emit(c, HSM_EV_DERIVE, key->kind, key->id, purpose,
             !expected_kcv                 ? -1
             : err == CDX_ERR_KEY_REPLACED ? 0
             : err                         ? -1
                                           : 1,
             err);
    if (err) {
        sk_wipe(sk);
        return err;
    }
    if (ttl > 0) {
        pthread_mutex_lock(&sc->mu);
        /* Replace any entry for the same subkey (a concurrent derivation or a new KCV). */
        for (struct hsm_subkey **pp = &sc->head; *pp; pp = &(*pp)->next)
            if (matches(*pp, key, purpose, epoch)) {
                sk_unlink(sc, pp);
                break;
            }
        /* At most CDX_SUBKEY_CACHE_MAX entries, and no growth once the arena is half
         * full: the other half stays for what must not fail (a Redis password re-read
         * on reconnect, a PIN on re-login, key material on its way to the token). */
        size_t used = 0, cap = 0;
        hsm_secmem_usage(&used, &cap);
        if (sc->count > 0 && (sc->count >= CDX_SUBKEY_CACHE_MAX || used > cap / 2)) {
            /* Evict the entry closest to expiry. */
            struct hsm_subkey **victim = &sc->head;
            for (struct hsm_subkey **pp = &sc->head; *pp; pp = &(*pp)->next)
                if ((*pp)->expires_ms < (*victim)->expires_ms)
                    victim = pp;
            sk_unlink(sc, victim);
        }
        sk->expires_ms = cdx_mono_ms() + ttl;
        sk->cached = true;
        sk->refs++;
        sk->next = sc->head;
        sc->head = sk;
        sc->count++;
        pthread_cond_signal(&sc->cv);
        pthread_mutex_unlock(&sc->mu);
    }
    *out = sk;
    return CDX_OK;
}

const uint8_t *hsm_subkey_bytes(const hsm_subkey *sk)
{
    return sk->key;
}

void hsm_subkey_release(hsm_subkey *sk)
{
    if (!sk)
        return;
    struct hsm_subcache *sc = sk->c->cache;
    pthread_mutex_lock(&sc->mu);
    if (--sk->refs == 0)
        sk_wipe(sk);
    pthread_mutex_unlock(&sc->mu);
}

/* HMAC-SHA256 fetched once: EVP_Q_mac would look the algorithm up on every call. */
static EVP_MAC *g_hmac;
static pthread_once_t g_hmac_once = PTHREAD_ONCE_INIT;

static void hmac_fetch(void)
{
    g_hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
}

cdx_err hsm_subkey_hmac(const hsm_subkey *sk, const void *msg, size_t len,
                        uint8_t out[CDX_SUBKEY_LEN])
{
    size_t olen = 0;
    pthread_once(&g_hmac_once, hmac_fetch);
    EVP_MAC_CTX *ctx = g_hmac ? EVP_MAC_CTX_new(g_hmac) : NULL;
    OSSL_PARAM params[2] = {OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA256", 0),
                            OSSL_PARAM_construct_end()};
    int ok = ctx && EVP_MAC_init(ctx, sk->key, CDX_SUBKEY_LEN, params) == 1 &&
             EVP_MAC_update(ctx, msg, len) == 1 &&
             EVP_MAC_final(ctx, out, &olen, CDX_SUBKEY_LEN) == 1 && olen == CDX_SUBKEY_LEN;
    /* Freeing the context cleanses the keyed state: no copy outlives this call. */
    EVP_MAC_CTX_free(ctx);
    if (!ok)
        return cdx_fail(CDX_ERR_INTERNAL, "HMAC-SHA256 failed in OpenSSL");
    return CDX_OK;
}
