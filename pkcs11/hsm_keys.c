/*
 * Token objects: templates, provisioning, lookup, KCVs, listing.
 */
#include "hsm_internal.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "cdx_hex.h"
#include "cdx_log.h"
#include "hsm_secmem.h"
#include "hsm_subkey.h"

static const char KCV_MSG[] = "cipherdex/v1/kcv";

static CK_BBOOL T = CK_TRUE, F = CK_FALSE;
static CK_OBJECT_CLASS SECRET = CKO_SECRET_KEY;
static CK_KEY_TYPE GENERIC = CKK_GENERIC_SECRET, AES = CKK_AES;
static CK_ULONG LEN32 = CDX_KEY_LEN;

void hsm_key_label(const hsm_key_ref *k, char out[CDX_LABEL_MAX + 1])
{
    if (k->kind == HSM_KEY_ROOT) {
        snprintf(out, CDX_LABEL_MAX + 1, "cipherdex-root");
    } else {
        char h[2 * CDX_ID_LEN + 1];
        cdx_hex_encode(k->id, CDX_ID_LEN, h);
        snprintf(out, CDX_LABEL_MAX + 1, "cipherdex-index-%s", h);
    }
}

bool hsm_kek_name_valid(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n < 1 || n > 40)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)name[i]) && !strchr("_.-", name[i]))
            return false;
    return true;
}

static void kek_label(const char *name, char out[CDX_LABEL_MAX + 1])
{
    snprintf(out, CDX_LABEL_MAX + 1, "cipherdex-kek-%s", name);
}

/* ---------------------------------------------------------------- attributes */

static const struct {
    CK_ATTRIBUTE_TYPE type;
    unsigned bit;
    const char *name;
} battrs[] = {
    {CKA_TOKEN, HSM_A_TOKEN, "token"},
    {CKA_PRIVATE, HSM_A_PRIVATE, "private"},
    {CKA_SENSITIVE, HSM_A_SENSITIVE, "sensitive"},
    {CKA_EXTRACTABLE, HSM_A_EXTRACTABLE, "extractable"},
    {CKA_ALWAYS_SENSITIVE, HSM_A_ALWAYS_SENSITIVE, "always_sensitive"},
    {CKA_NEVER_EXTRACTABLE, HSM_A_NEVER_EXTRACTABLE, "never_extractable"},
    {CKA_LOCAL, HSM_A_LOCAL, "local"},
    {CKA_SIGN, HSM_A_SIGN, "sign"},
    {CKA_VERIFY, HSM_A_VERIFY, "verify"},
    {CKA_ENCRYPT, HSM_A_ENCRYPT, "encrypt"},
    {CKA_DECRYPT, HSM_A_DECRYPT, "decrypt"},
    {CKA_WRAP, HSM_A_WRAP, "wrap"},
    {CKA_UNWRAP, HSM_A_UNWRAP, "unwrap"},
    {CKA_DERIVE, HSM_A_DERIVE, "derive"},
    {CKA_MODIFIABLE, HSM_A_MODIFIABLE, "modifiable"},
    {CKA_COPYABLE, HSM_A_COPYABLE, "copyable"},
    {CKA_DESTROYABLE, HSM_A_DESTROYABLE, "destroyable"},
};
#define NBATTRS (sizeof(battrs) / sizeof(battrs[0]))

const char *hsm_attr_name(unsigned bit)
{
    for (size_t i = 0; i < NBATTRS; i++)
        if (battrs[i].bit == bit)
            return battrs[i].name;
    return "?";
}

/* What the template of each kind requires (DESIGN §3). */
#define SECRET_TRUE (HSM_A_TOKEN | HSM_A_PRIVATE | HSM_A_SENSITIVE | HSM_A_SIGN)
#define SECRET_FALSE                                                                              \
    (HSM_A_EXTRACTABLE | HSM_A_VERIFY | HSM_A_ENCRYPT | HSM_A_DECRYPT | HSM_A_WRAP |              \
     HSM_A_UNWRAP | HSM_A_DERIVE | HSM_A_MODIFIABLE | HSM_A_COPYABLE)
#define KEK_TRUE (HSM_A_TOKEN | HSM_A_PRIVATE | HSM_A_SENSITIVE | HSM_A_UNWRAP)
#define KEK_FALSE                                                                                 \
    (HSM_A_EXTRACTABLE | HSM_A_VERIFY | HSM_A_ENCRYPT | HSM_A_DECRYPT | HSM_A_WRAP | HSM_A_SIGN |  \
     HSM_A_DERIVE | HSM_A_MODIFIABLE | HSM_A_COPYABLE)

/* Read the attributes of h into ki (label, id, type, length, flags). */
static CK_RV read_info(hsm_custody *c, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, hsm_key_info *ki,
                       unsigned *unknown)
{
    CK_BBOOL v[NBATTRS];
    CK_ATTRIBUTE t[NBATTRS + 4];
    char label[CDX_LABEL_MAX + 1];
    uint8_t id[CDX_ID_LEN];
    CK_KEY_TYPE kt = (CK_KEY_TYPE)-1;
    CK_ULONG vl = 0;
    for (size_t i = 0; i < NBATTRS; i++) {
        v[i] = CK_FALSE;
        t[i] = (CK_ATTRIBUTE){battrs[i].type, &v[i], sizeof(CK_BBOOL)};
    }
    t[NBATTRS] = (CK_ATTRIBUTE){CKA_LABEL, label, CDX_LABEL_MAX};
    t[NBATTRS + 1] = (CK_ATTRIBUTE){CKA_ID, id, sizeof(id)};
    t[NBATTRS + 2] = (CK_ATTRIBUTE){CKA_KEY_TYPE, &kt, sizeof(kt)};
    t[NBATTRS + 3] = (CK_ATTRIBUTE){CKA_VALUE_LEN, &vl, sizeof(vl)};
    CK_RV rv = c->f->C_GetAttributeValue(s, h, t, NBATTRS + 4);
    /* Per PKCS#11 these still fill every attribute they can. */
    if (rv != CKR_OK && rv != CKR_ATTRIBUTE_SENSITIVE && rv != CKR_ATTRIBUTE_TYPE_INVALID &&
        rv != CKR_BUFFER_TOO_SMALL)
        return rv;
    memset(ki, 0, sizeof(*ki));
    *unknown = 0;
    for (size_t i = 0; i < NBATTRS; i++) {
        if (t[i].ulValueLen == CK_UNAVAILABLE_INFORMATION)
            *unknown |= battrs[i].bit;
        else if (v[i])
            ki->attrs |= battrs[i].bit;
    }
    if (t[NBATTRS].ulValueLen != CK_UNAVAILABLE_INFORMATION) {
        memcpy(ki->label, label, t[NBATTRS].ulValueLen);
        ki->label[t[NBATTRS].ulValueLen] = '\0';
    }
    if (t[NBATTRS + 1].ulValueLen != CK_UNAVAILABLE_INFORMATION) {
        ki->id_len = t[NBATTRS + 1].ulValueLen;
        memcpy(ki->id, id, ki->id_len);
    }
    ki->key_type = t[NBATTRS + 2].ulValueLen == CK_UNAVAILABLE_INFORMATION ? (CK_ULONG)-1 : kt;
    ki->value_len = t[NBATTRS + 3].ulValueLen == CK_UNAVAILABLE_INFORMATION ? 0 : vl;
    return CKR_OK;
}

/* Bits of ki that break the template of `kind` (unknown required bits count as wrong). */
static unsigned template_wrong(hsm_key_kind kind, const hsm_key_info *ki, unsigned unknown)
{
    unsigned must_t = kind == HSM_KEY_KEK ? KEK_TRUE : SECRET_TRUE;
    unsigned must_f = kind == HSM_KEY_KEK ? KEK_FALSE : SECRET_FALSE;
    return ((must_t & ~ki->attrs) | (must_f & ki->attrs) | (unknown & (must_t | must_f)));
}

static void wrong_names(unsigned wrong, char *buf, size_t cap)
{
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < NBATTRS; i++) {
        if (!(wrong & battrs[i].bit))
            continue;
        int w = snprintf(buf + off, cap - off, "%s%s", off ? "," : "", battrs[i].name);
        if (w < 0 || (size_t)w >= cap - off)
            break;
        off += (size_t)w;
    }
}

/* Check a found object against its kind's template (type, length and flags). */
static cdx_err check_template(hsm_custody *c, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                              hsm_key_kind kind, const char *label, CK_RV *rv)
{
    hsm_key_info ki;
    unsigned unknown;
    CK_RV r = read_info(c, s, h, &ki, &unknown);
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "C_GetAttributeValue");
    }
    unsigned wrong = template_wrong(kind, &ki, unknown);
    CK_KEY_TYPE want = kind == HSM_KEY_KEK ? CKK_AES : CKK_GENERIC_SECRET;
    char names[256];
    wrong_names(wrong, names, sizeof(names));
    if (ki.key_type != want)
        return cdx_fail(CDX_ERR_KEY_ATTRIBUTES, "%s has key type 0x%lx, need %s", label,
                        ki.key_type, kind == HSM_KEY_KEK ? "CKK_AES" : "CKK_GENERIC_SECRET");
    /* Unwrapped keys report CKA_VALUE_LEN 0 on SoftHSM; the KCV's HMAC enforces >= 32. */
    if (ki.value_len != CDX_KEY_LEN && !(ki.value_len == 0 && kind != HSM_KEY_KEK))
        return cdx_fail(CDX_ERR_KEY_ATTRIBUTES, "%s is %lu bytes long, need %d", label,
                        ki.value_len, CDX_KEY_LEN);
    if (wrong)
        return cdx_fail(CDX_ERR_KEY_ATTRIBUTES,
                        "%s does not match the Cipherdex template; wrong: %s (every key must be "
                        "sensitive, not extractable, not derivable, not modifiable, not copyable)",
                        label, names);
    return CDX_OK;
}

/* ---------------------------------------------------------------- handle cache */

static struct hsm_keyent *ent_get(hsm_custody *c, hsm_key_kind kind, const uint8_t *id)
{
    for (size_t i = 0; i < c->nkeys; i++)
        if (c->keys[i].kind == kind && !memcmp(c->keys[i].id, id, CDX_ID_LEN))
            return &c->keys[i];
    if (c->nkeys == c->capkeys) {
        size_t cap = c->capkeys ? c->capkeys * 2 : 16;
        struct hsm_keyent *k = realloc(c->keys, cap * sizeof(*k));
        if (!k)
            return NULL;
        c->keys = k;
        c->capkeys = cap;
    }
    struct hsm_keyent *e = &c->keys[c->nkeys++];
    memset(e, 0, sizeof(*e));
    e->kind = kind;
    memcpy(e->id, id, CDX_ID_LEN);
    return e;
}

void hsm_key_forget(hsm_custody *c, const hsm_key_ref *k)
{
    pthread_mutex_lock(&c->keys_mu);
    for (size_t i = 0; i < c->nkeys; i++)
        if (c->keys[i].kind == k->kind && !memcmp(c->keys[i].id, k->id, CDX_ID_LEN)) {
            c->keys[i] = c->keys[--c->nkeys];
            break;
        }
    pthread_mutex_unlock(&c->keys_mu);
}

/* Remember handle + KCV of a key we just created or verified. */
static void remember(hsm_custody *c, const hsm_key_ref *k, CK_OBJECT_HANDLE h,
                     const uint8_t kcv[CDX_KCV_LEN])
{
    pthread_mutex_lock(&c->keys_mu);
    struct hsm_keyent *e = ent_get(c, k->kind, k->id);
    if (e) {
        e->h = h;
        e->gen = c->gen;
        memcpy(e->kcv, kcv, CDX_KCV_LEN);
        memcpy(e->known_kcv, kcv, CDX_KCV_LEN);
        e->known = true;
    }
    pthread_mutex_unlock(&c->keys_mu);
}

static CK_RV compute_kcv(hsm_custody *c, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
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

/* Find the root/index object of k: class + CKA_ID + label. */
static cdx_err find_key(hsm_custody *c, CK_SESSION_HANDLE s, const hsm_key_ref *k,
                        CK_OBJECT_HANDLE *h, CK_RV *rv)
{
    char label[CDX_LABEL_MAX + 1];
    hsm_key_label(k, label);
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &SECRET, sizeof(SECRET)},
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
    struct hsm_keyent *e = ent_get(c, k->kind, k->id);
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

    cdx_err err = find_key(c, s, k, h, rv);
    if (err)
        return err;
    CK_RV r = compute_kcv(c, s, *h, kcv);
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "KCV (C_Sign)");
    }
    err = kcv_verdict(k, kcv, expected, has_known ? known : NULL);
    pthread_mutex_lock(&c->keys_mu);
    e = ent_get(c, k->kind, k->id);
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

/* ---------------------------------------------------------------- creation */

enum create_how { HOW_GENERATE, HOW_IMPORT, HOW_UNWRAP };

struct create_arg {
    hsm_key_kind kind;
    hsm_key_ref ref;       /* root/index */
    const char *kek_name;  /* KEK being created, or KEK used to unwrap */
    enum create_how how;
    const uint8_t *key;    /* HOW_IMPORT */
    const uint8_t *blob;   /* HOW_UNWRAP */
    size_t blob_len;
    uint8_t kcv[CDX_KCV_LEN];
    CK_OBJECT_HANDLE h;
};

/* Build the template of a new object. The last entry is CKA_MODIFIABLE (SoftHSM unwrap quirk). */
static CK_ULONG build_template(const struct create_arg *a, CK_ATTRIBUTE *t, const char *label,
                               const uint8_t *id)
{
    CK_ULONG n = 0;
    bool kek = a->kind == HSM_KEY_KEK;
    t[n++] = (CK_ATTRIBUTE){CKA_CLASS, &SECRET, sizeof(SECRET)};
    t[n++] = (CK_ATTRIBUTE){CKA_KEY_TYPE, kek ? &AES : &GENERIC, sizeof(CK_KEY_TYPE)};
    if (a->how == HOW_GENERATE)
        t[n++] = (CK_ATTRIBUTE){CKA_VALUE_LEN, &LEN32, sizeof(LEN32)};
    if (a->how == HOW_IMPORT)
        t[n++] = (CK_ATTRIBUTE){CKA_VALUE, (void *)a->key, CDX_KEY_LEN};
    t[n++] = (CK_ATTRIBUTE){CKA_TOKEN, &T, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_PRIVATE, &T, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_SENSITIVE, &T, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_EXTRACTABLE, &F, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_SIGN, kek ? &F : &T, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_VERIFY, &F, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_ENCRYPT, &F, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_DECRYPT, &F, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_WRAP, &F, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_UNWRAP, kek ? &T : &F, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_DERIVE, &F, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_COPYABLE, &F, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, strlen(label)};
    t[n++] = (CK_ATTRIBUTE){CKA_ID, (void *)id, CDX_ID_LEN};
    t[n++] = (CK_ATTRIBUTE){CKA_MODIFIABLE, &F, 1};
    return n;
}

static void target_label(const struct create_arg *a, char *label)
{
    if (a->kind == HSM_KEY_KEK)
        kek_label(a->kek_name, label);
    else
        hsm_key_label(&a->ref, label);
}

/* Look for an object with this label (any id): KEKs are found by label alone. */
static CK_RV find_label(hsm_custody *c, CK_SESSION_HANDLE s, const char *label, CK_OBJECT_HANDLE *h,
                        unsigned *n)
{
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &SECRET, sizeof(SECRET)},
        {CKA_LABEL, (void *)label, strlen(label)},
    };
    return hsm_find(c, s, t, 2, h, n);
}

static cdx_err find_kek(hsm_custody *c, CK_SESSION_HANDLE s, const char *name, CK_OBJECT_HANDLE *h,
                        CK_RV *rv)
{
    char label[CDX_LABEL_MAX + 1];
    kek_label(name, label);
    unsigned n = 0;
    CK_RV r = find_label(c, s, label, h, &n);
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

static cdx_err create_op(hsm_custody *c, CK_SESSION_HANDLE s, void *arg, CK_RV *rv)
{
    struct create_arg *a = arg;
    char label[CDX_LABEL_MAX + 1];
    uint8_t id[CDX_ID_LEN];
    CK_ATTRIBUTE t[24];
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE, kek = CK_INVALID_HANDLE;
    cdx_err err = CDX_OK;
    CK_RV r;
    unsigned n = 0;

    target_label(a, label);
    r = find_label(c, s, label, &h, &n);
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "C_FindObjects");
    }
    if (n > 0)
        return cdx_fail(CDX_ERR_ALREADY_EXISTS, "a key labelled %s already exists on the token",
                        label);
    if (a->kind == HSM_KEY_KEK) {
        /* A KEK's id only has to be unique; the token's RNG supplies it. */
        r = c->f->C_GenerateRandom(s, id, sizeof(id));
        if (r != CKR_OK) {
            *rv = r;
            return hsm_ckr_fail(r, "C_GenerateRandom");
        }
    } else {
        memcpy(id, a->ref.id, CDX_ID_LEN);
    }
    CK_ULONG nt = build_template(a, t, label, id);
    h = CK_INVALID_HANDLE;
    if (a->how == HOW_GENERATE) {
        CK_MECHANISM m = {a->kind == HSM_KEY_KEK ? CKM_AES_KEY_GEN : CKM_GENERIC_SECRET_KEY_GEN,
                          NULL, 0};
        r = c->f->C_GenerateKey(s, &m, t, nt, &h);
        if (r != CKR_OK) {
            *rv = r;
            return hsm_ckr_fail(r, "C_GenerateKey");
        }
    } else if (a->how == HOW_IMPORT) {
        r = c->f->C_CreateObject(s, t, nt, &h);
        if (r != CKR_OK) {
            *rv = r;
            return hsm_ckr_fail(r, "C_CreateObject");
        }
    } else {
        if ((err = find_kek(c, s, a->kek_name, &kek, rv)))
            return err;
        if ((err = check_template(c, s, kek, HSM_KEY_KEK, "the KEK", rv)))
            return err;
        CK_MECHANISM m = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
        r = c->f->C_UnwrapKey(s, &m, kek, (CK_BYTE_PTR)a->blob, a->blob_len, t, nt, &h);
        if (r != CKR_OK) {
            if (hsm_ckr_recoverable(r) && r != CKR_OBJECT_HANDLE_INVALID) {
                *rv = r;
                return hsm_ckr_fail(r, "C_UnwrapKey");
            }
            if (r == CKR_MECHANISM_INVALID || r == CKR_MECHANISM_PARAM_INVALID)
                return cdx_fail(CDX_ERR_MECHANISM_UNSUPPORTED,
                                "the token lacks CKM_AES_KEY_WRAP_PAD (RFC 5649)");
            cdx_log(CDX_LOG_WARN, "pkcs11_error", "op=C_UnwrapKey ckr=%s", hsm_ckr_name(r));
            return cdx_fail(CDX_ERR_BAD_WRAPPED_KEY,
                            "the wrapped key does not unwrap with KEK %s (%s): wrong KEK or a "
                            "corrupted blob",
                            a->kek_name, hsm_ckr_name(r));
        }
    }
    if (a->kind != HSM_KEY_KEK) {
        r = compute_kcv(c, s, h, a->kcv);
        if (r != CKR_OK) {
            if (hsm_ckr_recoverable(r)) {
                *rv = r;
                return hsm_ckr_fail(r, "KCV (C_Sign)");
            }
            err = a->how == HOW_UNWRAP
                      ? cdx_fail(CDX_ERR_BAD_WRAPPED_KEY,
                                 "the unwrapped key is not usable for HMAC-SHA256 (%s): it must be "
                                 "32 bytes",
                                 hsm_ckr_name(r))
                      : hsm_ckr_fail(r, "KCV (C_Sign)");
            goto destroy;
        }
    }
    /* Trust, but verify: a token that ignored part of the template must not keep the key. */
    if ((err = check_template(c, s, h, a->kind, label, rv)))
        goto destroy;
    a->h = h;
    return CDX_OK;
destroy:
    (void)c->f->C_DestroyObject(s, h);
    return err;
}

/* After an interrupted create: did the object appear? */
static cdx_err recheck_op(hsm_custody *c, CK_SESSION_HANDLE s, void *arg, CK_RV *rv)
{
    struct create_arg *a = arg;
    char label[CDX_LABEL_MAX + 1];
    target_label(a, label);
    unsigned n = 0;
    CK_RV r = find_label(c, s, label, &a->h, &n);
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "C_FindObjects");
    }
    if (n != 1)
        return cdx_fail(CDX_ERR_HSM_UNAVAILABLE,
                        "the token failed while creating %s and the key was not created; retry",
                        label);
    cdx_err err = check_template(c, s, a->h, a->kind, label, rv);
    if (err)
        return err;
    if (a->kind != HSM_KEY_KEK) {
        r = compute_kcv(c, s, a->h, a->kcv);
        if (r != CKR_OK) {
            *rv = r;
            return hsm_ckr_fail(r, "KCV (C_Sign)");
        }
    }
    return CDX_OK;
}

static cdx_err create(hsm_custody *c, struct create_arg *a, uint8_t *kcv_out)
{
    cdx_err err = hsm_run(c, create_op, a, false);
    if (err == HSM_INTERRUPTED)
        err = hsm_run(c, recheck_op, a, true);
    if (err)
        return err;
    if (a->kind != HSM_KEY_KEK) {
        hsm_subcache_drop_key(c, &a->ref);
        remember(c, &a->ref, a->h, a->kcv);
        if (kcv_out)
            memcpy(kcv_out, a->kcv, CDX_KCV_LEN);
        char label[CDX_LABEL_MAX + 1], k[17];
        hsm_key_label(&a->ref, label);
        cdx_hex_encode(a->kcv, CDX_KCV_LEN, k);
        cdx_log(CDX_LOG_INFO, "hsm_key_created", "label=%s how=%s kcv=%s", label,
                a->how == HOW_GENERATE ? "generate" : a->how == HOW_IMPORT ? "import" : "unwrap", k);
    } else {
        cdx_log(CDX_LOG_INFO, "hsm_kek_created", "name=%s how=%s", a->kek_name,
                a->how == HOW_GENERATE ? "generate" : "import");
    }
    return CDX_OK;
}

cdx_err hsm_index_key_generate(hsm_custody *c, const uint8_t id[CDX_ID_LEN],
                               uint8_t kcv_out[CDX_KCV_LEN])
{
    struct create_arg a = {.kind = HSM_KEY_INDEX, .how = HOW_GENERATE};
    a.ref.kind = HSM_KEY_INDEX;
    memcpy(a.ref.id, id, CDX_ID_LEN);
    return create(c, &a, kcv_out);
}

cdx_err hsm_index_key_import(hsm_custody *c, const uint8_t id[CDX_ID_LEN],
                             const uint8_t key[CDX_KEY_LEN], uint8_t kcv_out[CDX_KCV_LEN])
{
    struct create_arg a = {.kind = HSM_KEY_INDEX, .how = HOW_IMPORT, .key = key};
    a.ref.kind = HSM_KEY_INDEX;
    memcpy(a.ref.id, id, CDX_ID_LEN);
    return create(c, &a, kcv_out);
}

cdx_err hsm_index_key_unwrap(hsm_custody *c, const uint8_t id[CDX_ID_LEN], const char *kek_name,
                             const uint8_t *blob, size_t blob_len, uint8_t kcv_out[CDX_KCV_LEN])
{
    if (!hsm_kek_name_valid(kek_name))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "KEK name must be 1-40 of [A-Za-z0-9_.-]");
    if (!blob || blob_len != CDX_WRAPPED_KEY_LEN)
        return cdx_fail(CDX_ERR_BAD_WRAPPED_KEY,
                        "the wrapped key is %zu bytes; an RFC 5649 wrap of a 32-byte key is "
                        "exactly %d bytes",
                        blob ? blob_len : 0, CDX_WRAPPED_KEY_LEN);
    struct create_arg a = {.kind = HSM_KEY_INDEX, .how = HOW_UNWRAP, .kek_name = kek_name,
                           .blob = blob, .blob_len = blob_len};
    a.ref.kind = HSM_KEY_INDEX;
    memcpy(a.ref.id, id, CDX_ID_LEN);
    return create(c, &a, kcv_out);
}

cdx_err hsm_kek_generate(hsm_custody *c, const char *name)
{
    if (!hsm_kek_name_valid(name))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "KEK name must be 1-40 of [A-Za-z0-9_.-]");
    struct create_arg a = {.kind = HSM_KEY_KEK, .how = HOW_GENERATE, .kek_name = name};
    return create(c, &a, NULL);
}

cdx_err hsm_kek_import(hsm_custody *c, const char *name, const uint8_t key[CDX_KEY_LEN])
{
    if (!hsm_kek_name_valid(name))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "KEK name must be 1-40 of [A-Za-z0-9_.-]");
    struct create_arg a = {.kind = HSM_KEY_KEK, .how = HOW_IMPORT, .kek_name = name, .key = key};
    return create(c, &a, NULL);
}

/* ---------------------------------------------------------------- root key */

struct root_arg {
    const uint8_t *id;
    unsigned found; /* 0: none, 1: one with our id */
    CK_OBJECT_HANDLE h;
    uint8_t kcv[CDX_KCV_LEN];
};

static cdx_err root_find_op(hsm_custody *c, CK_SESSION_HANDLE s, void *arg, CK_RV *rv)
{
    struct root_arg *a = arg;
    unsigned n = 0;
    CK_RV r = find_label(c, s, "cipherdex-root", &a->h, &n);
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "C_FindObjects");
    }
    a->found = n;
    if (n == 0)
        return CDX_OK;
    if (n > 1)
        return cdx_fail(CDX_ERR_KEY_AMBIGUOUS,
                        "several objects are labelled cipherdex-root; remove the extra ones");
    uint8_t id[CDX_ID_LEN];
    CK_ATTRIBUTE t = {CKA_ID, id, sizeof(id)};
    r = c->f->C_GetAttributeValue(s, a->h, &t, 1);
    if (r != CKR_OK && r != CKR_BUFFER_TOO_SMALL) {
        *rv = r;
        return hsm_ckr_fail(r, "C_GetAttributeValue");
    }
    if (r != CKR_OK || t.ulValueLen != CDX_ID_LEN || memcmp(id, a->id, CDX_ID_LEN)) {
        char have[2 * CDX_ID_LEN + 1] = "(other length)";
        if (r == CKR_OK && t.ulValueLen == CDX_ID_LEN)
            cdx_hex_encode(id, CDX_ID_LEN, have);
        return cdx_fail(CDX_ERR_ALREADY_EXISTS,
                        "the token's cipherdex-root belongs to deployment %s, not this one", have);
    }
    cdx_err err = check_template(c, s, a->h, HSM_KEY_ROOT, "cipherdex-root", rv);
    if (err)
        return err;
    r = compute_kcv(c, s, a->h, a->kcv);
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "KCV (C_Sign)");
    }
    return CDX_OK;
}

cdx_err hsm_root_key_ensure(hsm_custody *c, const uint8_t deployment_id[CDX_ID_LEN],
                            uint8_t kcv_out[CDX_KCV_LEN], bool *created)
{
    struct root_arg ra = {.id = deployment_id};
    if (created)
        *created = false;
    cdx_err err = hsm_run(c, root_find_op, &ra, true);
    if (err)
        return err;
    hsm_key_ref ref = {.kind = HSM_KEY_ROOT};
    memcpy(ref.id, deployment_id, CDX_ID_LEN);
    if (ra.found == 1) {
        remember(c, &ref, ra.h, ra.kcv);
        if (kcv_out)
            memcpy(kcv_out, ra.kcv, CDX_KCV_LEN);
        return CDX_OK;
    }
    struct create_arg a = {.kind = HSM_KEY_ROOT, .how = HOW_GENERATE, .ref = ref};
    err = create(c, &a, kcv_out);
    if (!err && created)
        *created = true;
    return err;
}

/* ---------------------------------------------------------------- adopt, kcv, destroy */

struct ref_arg {
    const hsm_key_ref *k;
    const uint8_t *expected;
    bool check_template;
    uint8_t kcv[CDX_KCV_LEN];
    CK_OBJECT_HANDLE h;
};

static cdx_err adopt_op(hsm_custody *c, CK_SESSION_HANDLE s, void *arg, CK_RV *rv)
{
    struct ref_arg *a = arg;
    char label[CDX_LABEL_MAX + 1];
    hsm_key_label(a->k, label);
    cdx_err err = find_key(c, s, a->k, &a->h, rv);
    if (err)
        return err;
    if ((err = check_template(c, s, a->h, a->k->kind, label, rv)))
        return err;
    CK_RV r = compute_kcv(c, s, a->h, a->kcv);
    if (r != CKR_OK) {
        if (hsm_ckr_recoverable(r)) {
            *rv = r;
            return hsm_ckr_fail(r, "KCV (C_Sign)");
        }
        return cdx_fail(CDX_ERR_KEY_ATTRIBUTES, "%s cannot compute HMAC-SHA256 (%s): not a 32-byte "
                        "key", label, hsm_ckr_name(r));
    }
    return CDX_OK;
}

cdx_err hsm_index_key_adopt(hsm_custody *c, const uint8_t id[CDX_ID_LEN],
                            uint8_t kcv_out[CDX_KCV_LEN])
{
    hsm_key_ref k = {.kind = HSM_KEY_INDEX};
    memcpy(k.id, id, CDX_ID_LEN);
    struct ref_arg a = {.k = &k};
    cdx_err err = hsm_run(c, adopt_op, &a, true);
    if (err)
        return err;
    remember(c, &k, a.h, a.kcv);
    if (kcv_out)
        memcpy(kcv_out, a.kcv, CDX_KCV_LEN);
    return CDX_OK;
}

static cdx_err kcv_op(hsm_custody *c, CK_SESSION_HANDLE s, void *arg, CK_RV *rv)
{
    struct ref_arg *a = arg;
    return hsm_key_resolve(c, s, a->k, a->expected, &a->h, a->kcv, rv);
}

cdx_err hsm_key_kcv(hsm_custody *c, const hsm_key_ref *k, uint8_t kcv_out[CDX_KCV_LEN])
{
    struct ref_arg a = {.k = k};
    cdx_err err = hsm_run(c, kcv_op, &a, true);
    if (!err)
        memcpy(kcv_out, a.kcv, CDX_KCV_LEN);
    else if (err == CDX_ERR_KEY_REPLACED)
        memcpy(kcv_out, a.kcv, CDX_KCV_LEN);
    return err;
}

cdx_err hsm_key_check(hsm_custody *c, const hsm_key_ref *k, const uint8_t expected[CDX_KCV_LEN])
{
    struct ref_arg a = {.k = k, .expected = expected};
    return hsm_run(c, kcv_op, &a, true);
}

struct destroy_arg {
    const hsm_key_ref *k; /* or NULL for a KEK */
    const char *kek;
    bool recheck;
};

static cdx_err destroy_op(hsm_custody *c, CK_SESSION_HANDLE s, void *arg, CK_RV *rv)
{
    struct destroy_arg *a = arg;
    CK_OBJECT_HANDLE h;
    cdx_err err = a->k ? find_key(c, s, a->k, &h, rv) : find_kek(c, s, a->kek, &h, rv);
    if (a->recheck) {
        /* After an interrupted destroy, "gone" is success. */
        if (err == CDX_ERR_KEY_NOT_FOUND)
            return CDX_OK;
        if (err == CDX_OK)
            return cdx_fail(CDX_ERR_HSM_UNAVAILABLE,
                            "the token failed while destroying the key and it still exists; "
                            "retry");
        return err;
    }
    if (err)
        return err;
    CK_RV r = c->f->C_DestroyObject(s, h);
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "C_DestroyObject");
    }
    return CDX_OK;
}

static cdx_err destroy_any(hsm_custody *c, struct destroy_arg *a)
{
    if (a->k) /* stop serving cached subkeys before the key goes */
        hsm_subcache_drop_key(c, a->k);
    cdx_err err = hsm_run(c, destroy_op, a, false);
    if (err == HSM_INTERRUPTED) {
        a->recheck = true;
        err = hsm_run(c, destroy_op, a, true);
    }
    if (!err && a->k) {
        hsm_key_forget(c, a->k);
        hsm_subcache_drop_key(c, a->k);
        char label[CDX_LABEL_MAX + 1];
        hsm_key_label(a->k, label);
        cdx_log(CDX_LOG_INFO, "hsm_key_destroyed", "label=%s", label);
    } else if (!err) {
        cdx_log(CDX_LOG_INFO, "hsm_kek_destroyed", "name=%s", a->kek);
    }
    return err;
}

cdx_err hsm_key_destroy(hsm_custody *c, const hsm_key_ref *k)
{
    struct destroy_arg a = {.k = k};
    return destroy_any(c, &a);
}

cdx_err hsm_kek_destroy(hsm_custody *c, const char *name)
{
    if (!hsm_kek_name_valid(name))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "KEK name must be 1-40 of [A-Za-z0-9_.-]");
    struct destroy_arg a = {.kek = name};
    return destroy_any(c, &a);
}

/* ---------------------------------------------------------------- listing */

struct list_arg {
    hsm_key_info *v;
    size_t n;
};

static int cmp_info(const void *a, const void *b)
{
    return strcmp(((const hsm_key_info *)a)->label, ((const hsm_key_info *)b)->label);
}

static cdx_err list_op(hsm_custody *c, CK_SESSION_HANDLE s, void *arg, CK_RV *rv)
{
    struct list_arg *a = arg;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &SECRET, sizeof(SECRET)}};
    CK_OBJECT_HANDLE *hs = NULL;
    size_t nh = 0, cap = 0;
    cdx_err err = CDX_OK;
    free(a->v);
    a->v = NULL;
    a->n = 0;
    CK_RV r = c->f->C_FindObjectsInit(s, t, 1);
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "C_FindObjectsInit");
    }
    for (;;) {
        if (nh == cap) {
            cap = cap ? cap * 2 : 64;
            CK_OBJECT_HANDLE *p = realloc(hs, cap * sizeof(*p));
            if (!p) {
                err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
                break;
            }
            hs = p;
        }
        CK_ULONG got = 0;
        r = c->f->C_FindObjects(s, hs + nh, cap - nh, &got);
        if (r != CKR_OK) {
            *rv = r;
            err = hsm_ckr_fail(r, "C_FindObjects");
            break;
        }
        nh += got;
        if (got == 0 || nh >= CDX_KEYS_LISTED_MAX)
            break;
    }
    (void)c->f->C_FindObjectsFinal(s);
    if (err)
        goto out;
    a->v = calloc(nh ? nh : 1, sizeof(*a->v));
    if (!a->v) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < nh; i++) {
        hsm_key_info ki;
        unsigned unknown;
        r = read_info(c, s, hs[i], &ki, &unknown);
        if (r != CKR_OK) {
            *rv = r;
            err = hsm_ckr_fail(r, "C_GetAttributeValue");
            goto out;
        }
        if (strncmp(ki.label, "cipherdex-", 10))
            continue;
        if (!strcmp(ki.label, "cipherdex-root"))
            ki.kind = HSM_KEY_ROOT;
        else if (!strncmp(ki.label, "cipherdex-index-", 16))
            ki.kind = HSM_KEY_INDEX;
        else if (!strncmp(ki.label, "cipherdex-kek-", 14))
            ki.kind = HSM_KEY_KEK;
        if (ki.kind)
            ki.wrong = template_wrong(ki.kind, &ki, unknown);
        if (ki.kind != HSM_KEY_KEK && (ki.attrs & HSM_A_SIGN) &&
            ki.key_type == CKK_GENERIC_SECRET) {
            r = compute_kcv(c, s, hs[i], ki.kcv);
            if (r == CKR_OK)
                ki.has_kcv = true;
            else if (hsm_ckr_recoverable(r)) {
                *rv = r;
                err = hsm_ckr_fail(r, "KCV (C_Sign)");
                goto out;
            }
        }
        a->v[a->n++] = ki;
    }
    qsort(a->v, a->n, sizeof(*a->v), cmp_info);
out:
    free(hs);
    if (err) {
        free(a->v);
        a->v = NULL;
        a->n = 0;
    }
    return err;
}

cdx_err hsm_key_list(hsm_custody *c, hsm_key_info **out, size_t *n)
{
    struct list_arg a = {0};
    cdx_err err = hsm_run(c, list_op, &a, true);
    *out = a.v;
    *n = a.n;
    return err;
}

/* ---------------------------------------------------------------- key files */

static bool b64char(unsigned char ch)
{
    return isalnum(ch) || ch == '+' || ch == '/';
}

cdx_err hsm_key_file_read(const char *path, uint8_t **key)
{
    cdx_err err = CDX_OK;
    char *text = NULL;
    uint8_t *raw = NULL;
    *key = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return cdx_fail(CDX_ERR_BAD_KEY_FILE, "cannot open key file %s: %s", path,
                        strerror(errno));
    size_t n = 0;
    int rc = hsm_secmem_read_fd(fd, CDX_KEY_FILE_MAX, &text, &n);
    raw = hsm_secmem_alloc(CDX_KEY_FILE_MAX);
    if (rc == E2BIG) {
        err = cdx_fail(CDX_ERR_BAD_KEY_FILE,
                       "key file %s is too large: expected base64 of 32 bytes (44 characters)",
                       path);
        goto out;
    }
    if (rc == ENOMEM || !raw) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "secret memory exhausted reading a key file");
        goto out;
    }
    if (rc) {
        err = cdx_fail(CDX_ERR_BAD_KEY_FILE, "cannot read key file %s: %s", path, strerror(rc));
        goto out;
    }
    /* Drop whitespace (openssl rand -base64 ends with a newline), then validate strictly. */
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (!isspace((unsigned char)text[i]))
            text[m++] = text[i];
    size_t pad = 0;
    while (pad < 2 && m > pad && text[m - 1 - pad] == '=')
        pad++;
    for (size_t i = 0; i < m - pad; i++)
        if (!b64char((unsigned char)text[i])) {
            err = cdx_fail(CDX_ERR_BAD_KEY_FILE,
                           "key file %s is not base64 (bad character at offset %zu); create it "
                           "with: openssl rand -base64 32",
                           path, i);
            goto out;
        }
    if (m == 0 || m % 4 != 0) {
        err = cdx_fail(CDX_ERR_BAD_KEY_FILE,
                       "key file %s is not base64 (%zu characters, not a multiple of 4)", path, m);
        goto out;
    }
    int dec = EVP_DecodeBlock(raw, (const unsigned char *)text, (int)m);
    size_t len = dec < 0 ? 0 : (size_t)dec - pad;
    if (dec < 0) {
        err = cdx_fail(CDX_ERR_BAD_KEY_FILE, "key file %s is not valid base64", path);
        goto out;
    }
    if (len != CDX_KEY_LEN) {
        err = cdx_fail(CDX_ERR_BAD_KEY_FILE,
                       "key file %s decodes to %zu bytes; an index key is exactly 32 bytes "
                       "(openssl rand -base64 32)",
                       path, len);
        goto out;
    }
    *key = hsm_secmem_alloc(CDX_KEY_LEN);
    if (!*key) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "secret memory exhausted reading a key file");
        goto out;
    }
    memcpy(*key, raw, CDX_KEY_LEN);
out:
    close(fd);
    hsm_secmem_free(text);
    hsm_secmem_free(raw);
    return err;
}

cdx_err hsm_index_key_import_file(hsm_custody *c, const uint8_t id[CDX_ID_LEN], const char *path,
                                  uint8_t kcv_out[CDX_KCV_LEN])
{
    uint8_t *key = NULL;
    cdx_err err = hsm_key_file_read(path, &key);
    if (err)
        return err;
    err = hsm_index_key_import(c, id, key, kcv_out);
    hsm_secmem_free(key); /* wiped right after the token has it */
    return err;
}
