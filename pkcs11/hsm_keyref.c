/*
 * Which object a key is: labels, lookup by class + CKA_ID + label, the
 * per-context handle cache (handles are valid for one session generation),
 * and KCVs with the "key replaced" verdict.
 */
#include "hsm_internal.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "cdx_hex.h"

static const char KCV_MSG[] = HSM_KCV_MSG;

/* ---------------------------------------------------------------- labels */

void hsm_key_label(const hsm_key_ref *k, char out[CDX_LABEL_MAX + 1])
{
    if (k->kind == HSM_KEY_ROOT) {
        snprintf(out, CDX_LABEL_MAX + 1, "cipherdex-root");
    } else {
        char h[2 * CDX_ID_LEN + 1];
        cdx_hex_encode(k->id, CDX_ID_LEN, h);
        if (k->gen)
            snprintf(out, CDX_LABEL_MAX + 1, "cipherdex-index-%s.g%u", h, (unsigned)k->gen);
        else
            snprintf(out, CDX_LABEL_MAX + 1, "cipherdex-index-%s", h);
    }
}

bool hsm_valid_kek_name(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n < 1 || n > 40)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)name[i]) && !strchr("_.-", name[i]))
            return false;
    return true;
}

void hsm_label_kek(const char *name, char out[CDX_LABEL_MAX + 1])
{
    snprintf(out, CDX_LABEL_MAX + 1, "cipherdex-kek-%s", name);
}

/* ---------------------------------------------------------------- lookup */

CK_RV hsm_find_label(hsm_custody *c, CK_SESSION_HANDLE s, const char *label, CK_OBJECT_HANDLE *h,
                     unsigned *n)
{
    CK_OBJECT_CLASS secret = CKO_SECRET_KEY;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &secret, sizeof(secret)},
        {CKA_LABEL, (void *)label, strlen(label)},
    };
    return hsm_find(c, s, t, 2, h, n);
}

cdx_err hsm_find_key(hsm_custody *c, CK_SESSION_HANDLE s, const hsm_key_ref *k, CK_OBJECT_HANDLE *h,
                     CK_RV *rv)
{
    CK_OBJECT_CLASS secret = CKO_SECRET_KEY;
    char label[CDX_LABEL_MAX + 1];
    hsm_key_label(k, label);
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &secret, sizeof(secret)},
        {CKA_ID, (void *)k->id, CDX_ID_LEN},
        {CKA_LABEL, label, strlen(label)},
    };
    unsigned n = 0;
    CK_RV r = hsm_find(c, s, t, 3, h, &n);
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "C_FindObjects");
    }
    char idh[2 * CDX_ID_LEN + 1];
    cdx_hex_encode(k->id, CDX_ID_LEN, idh);
    if (n == 0)
        return cdx_fail(CDX_ERR_KEY_NOT_FOUND, "no key labelled %s with id %s on the token", label,
                        idh);
    if (n > 1)
        return cdx_fail(CDX_ERR_KEY_AMBIGUOUS,
                        "several objects are labelled %s with id %s; remove the extra ones", label,
                        idh);
    return CDX_OK;
}

cdx_err hsm_find_kek(hsm_custody *c, CK_SESSION_HANDLE s, const char *name, CK_OBJECT_HANDLE *h,
                     CK_RV *rv)
{
    char label[CDX_LABEL_MAX + 1];
    hsm_label_kek(name, label);
    unsigned n = 0;
    CK_RV r = hsm_find_label(c, s, label, h, &n);
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "C_FindObjects");
    }
    if (n == 0)
        return cdx_fail(CDX_ERR_KEY_NOT_FOUND, "no KEK %s on the token", label);
    if (n > 1)
        return cdx_fail(CDX_ERR_KEY_AMBIGUOUS, "several objects are labelled %s", label);
    return CDX_OK;
}

/* ---------------------------------------------------------------- handle cache */

/* The cache entry of (kind, id), added if missing; NULL when out of memory. Under keys_mu. */
static struct hsm_keyent *ent_get(hsm_custody *c, const hsm_key_ref *k)
{
    hsm_key_kind kind = k->kind;
    const uint8_t *id = k->id;
    for (size_t i = 0; i < c->nkeys; i++)
        if (c->keys[i].kind == kind && c->keys[i].kgen == k->gen &&
            !memcmp(c->keys[i].id, id, CDX_ID_LEN))
            return &c->keys[i];
    if (c->nkeys == c->capkeys) {
        size_t cap = c->capkeys ? c->capkeys * 2 : 16;
        struct hsm_keyent *nk = realloc(c->keys, cap * sizeof(*nk));
        if (!nk)
            return NULL;
        c->keys = nk;
        c->capkeys = cap;
    }
    struct hsm_keyent *e = &c->keys[c->nkeys++];
    memset(e, 0, sizeof(*e));
    e->kind = kind;
    e->kgen = k->gen;
    memcpy(e->id, id, CDX_ID_LEN);
    return e;
}

void hsm_key_forget(hsm_custody *c, const hsm_key_ref *k)
{
    pthread_mutex_lock(&c->keys_mu);
    for (size_t i = 0; i < c->nkeys; i++)
        if (c->keys[i].kind == k->kind && c->keys[i].kgen == k->gen &&
            !memcmp(c->keys[i].id, k->id, CDX_ID_LEN)) {
            c->keys[i] = c->keys[--c->nkeys];
            break;
        }
    pthread_mutex_unlock(&c->keys_mu);
}

void hsm_key_remember(hsm_custody *c, const hsm_key_ref *k, CK_OBJECT_HANDLE h,
                      const uint8_t kcv[CDX_KCV_LEN])
{
    pthread_mutex_lock(&c->keys_mu);
    struct hsm_keyent *e = ent_get(c, k);
    if (e) {
        e->h = h;
        e->gen = c->gen;
        memcpy(e->kcv, kcv, CDX_KCV_LEN);
        memcpy(e->known_kcv, kcv, CDX_KCV_LEN);
        e->known = true;
    }
    pthread_mutex_unlock(&c->keys_mu);
}

/* ---------------------------------------------------------------- KCV */

CK_RV hsm_compute_kcv(hsm_custody *c, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                      uint8_t kcv[CDX_KCV_LEN])
{
    uint8_t mac[32];
    CK_RV rv = hsm_sign_hmac(c, s, h, KCV_MSG, sizeof(KCV_MSG) - 1, mac);
    if (rv == CKR_OK) {
        memcpy(kcv, mac, CDX_KCV_LEN);
        atomic_fetch_add(&c->kcv_computes, 1);
    }
    OPENSSL_cleanse(mac, sizeof(mac));
    return rv;
}

static cdx_err kcv_verdict(const hsm_key_ref *k, const uint8_t *have, const uint8_t *expected,
                           const uint8_t *known)
{
    const uint8_t *want = expected ? expected : known;
    if (want && CRYPTO_memcmp(have, want, CDX_KCV_LEN) != 0) {
        char label[CDX_LABEL_MAX + 1], h1[17], h2[17];
        hsm_key_label(k, label);
        cdx_hex_encode(have, CDX_KCV_LEN, h1);
        cdx_hex_encode(want, CDX_KCV_LEN, h2);
        return cdx_fail(CDX_ERR_KEY_REPLACED,
                        "%s on the token has KCV %s but %s was recorded: the key was replaced; "
                        "refusing to use different subkeys",
                        label, h1, h2);
    }
    return CDX_OK;
}

cdx_err hsm_key_resolve(hsm_custody *c, CK_SESSION_HANDLE s, const hsm_key_ref *k,
                        const uint8_t *expected, CK_OBJECT_HANDLE *h, uint8_t kcv[CDX_KCV_LEN],
                        CK_RV *rv)
{
    uint8_t known[CDX_KCV_LEN];
    bool has_known = false;
    pthread_mutex_lock(&c->keys_mu);
    struct hsm_keyent *e = ent_get(c, k);
    if (!e) {
        pthread_mutex_unlock(&c->keys_mu);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    if (e->gen == c->gen) {
        *h = e->h;
        memcpy(kcv, e->kcv, CDX_KCV_LEN);
        bool kn = e->known;
        memcpy(known, e->known_kcv, CDX_KCV_LEN);
        pthread_mutex_unlock(&c->keys_mu);
        return kcv_verdict(k, kcv, expected, kn ? known : NULL);
    }
    has_known = e->known;
    memcpy(known, e->known_kcv, CDX_KCV_LEN);
    pthread_mutex_unlock(&c->keys_mu);

    cdx_err err = hsm_find_key(c, s, k, h, rv);
    if (err)
        return err;
    CK_RV r = hsm_compute_kcv(c, s, *h, kcv);
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "KCV (C_Sign)");
    }
    err = kcv_verdict(k, kcv, expected, has_known ? known : NULL);
    pthread_mutex_lock(&c->keys_mu);
    e = ent_get(c, k);
    if (e) {
        e->h = *h;
        e->gen = c->gen;
        memcpy(e->kcv, kcv, CDX_KCV_LEN);
        /* The caller's record is authoritative: a matching expected KCV re-bases ours. */
        if (!err && (expected || !e->known)) {
            memcpy(e->known_kcv, kcv, CDX_KCV_LEN);
            e->known = true;
        }
    }
    pthread_mutex_unlock(&c->keys_mu);
    return err;
}
