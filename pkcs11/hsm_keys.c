/*
 * The daemon's key operations: create (generate, unwrap; import is in the
 * admin library), ensure the root key, adopt, KCV, check, destroy.
 */
#include "hsm_internal.h"

#include <stdio.h>
#include <string.h>

#include "cdx_hex.h"
#include "cdx_log.h"

/* ---------------------------------------------------------------- creation */

static void target_label(const struct hsm_create *a, char *label)
{
    if (a->kind == HSM_KEY_KEK)
        hsm_label_kek(a->kek_name, label);
    else
        hsm_key_label(&a->ref, label);
}

/* The key-generation mechanism for a root/index key of type kt, if the token lists it. */
static bool hmac_keygen(hsm_custody *c, CK_KEY_TYPE kt, CK_MECHANISM_TYPE *m)
{
    if (kt == CKK_SHA256_HMAC && hsm_mech_has(c, CKM_SHA256_KEY_GEN, CKF_GENERATE)) {
        *m = CKM_SHA256_KEY_GEN;
        return true;
    }
    *m = CKM_GENERIC_SECRET_KEY_GEN;
    return hsm_mech_has(c, CKM_GENERIC_SECRET_KEY_GEN, CKF_GENERATE);
}

cdx_err hsm_make_generate(hsm_custody *c, CK_SESSION_HANDLE s, struct hsm_create *a,
                          CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *h, CK_RV *rv)
{
    CK_MECHANISM m = {CKM_AES_KEY_GEN, NULL, 0};
    CK_RV r;
    if (a->kind == HSM_KEY_KEK) {
        if (!hsm_mech_has(c, CKM_AES_KEY_GEN, CKF_GENERATE))
            return cdx_fail(CDX_ERR_MECHANISM_UNSUPPORTED,
                            "the token does not list CKM_AES_KEY_GEN with CKF_GENERATE: it cannot "
                            "generate a KEK (import one with kek import)");
        r = c->f->C_GenerateKey(s, &m, t, n, h);
        goto done;
    }
    /* a->key_type (t's CKA_KEY_TYPE points at it) is the configured or settled type. */
    bool listed = hmac_keygen(c, a->key_type, &m.mechanism);
    r = listed ? c->f->C_GenerateKey(s, &m, t, n, h) : CKR_MECHANISM_INVALID;
    bool refused = r == CKR_ATTRIBUTE_VALUE_INVALID || r == CKR_TEMPLATE_INCONSISTENT ||
                   r == CKR_MECHANISM_INVALID;
    if (refused && a->key_type == CKK_GENERIC_SECRET && c->cfg.hmac_key_type == HSM_HMAC_KT_AUTO) {
        /* Some tokens (YubiHSM 2) make HMAC keys only as CKK_SHA*_HMAC. */
        cdx_log(CDX_LOG_WARN, "hsm_hmac_key_type_fallback",
                "from=CKK_GENERIC_SECRET to=CKK_SHA256_HMAC ckr=%s rv=0x%lx", hsm_ckr_name(r),
                (unsigned long)r);
        a->key_type = CKK_SHA256_HMAC;
        listed = hmac_keygen(c, a->key_type, &m.mechanism);
        r = listed ? c->f->C_GenerateKey(s, &m, t, n, h) : CKR_MECHANISM_INVALID;
        if (r == CKR_OK)
            atomic_store(&c->hmac_kt, (unsigned long)CKK_SHA256_HMAC);
    }
    if (!listed)
        return cdx_fail(CDX_ERR_MECHANISM_UNSUPPORTED,
                        "the token lists no key-generation mechanism with CKF_GENERATE for %s "
                        "HMAC keys (CKM_GENERIC_SECRET_KEY_GEN%s); see [hsm] hmac_key_type",
                        a->key_type == CKK_SHA256_HMAC ? "CKK_SHA256_HMAC" : "CKK_GENERIC_SECRET",
                        a->key_type == CKK_SHA256_HMAC ? " or CKM_SHA256_KEY_GEN" : "");
done:
    if (r != CKR_OK) {
        char label[CDX_LABEL_MAX + 1];
        target_label(a, label);
        *rv = r;
        return hsm_ckr_fail_create(r, "C_GenerateKey", label);
    }
    return CDX_OK;
}

/*
 * Unwrap a->blob with the KEK a->kek_name: the mechanism is decided first (by asking the token),
 * then the KEK is found and checked against the KEK template.
 */
static cdx_err make_unwrap(hsm_custody *c, CK_SESSION_HANDLE s, struct hsm_create *a,
                           CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *h, CK_RV *rv)
{
    CK_OBJECT_HANDLE kek = CK_INVALID_HANDLE;
    CK_MECHANISM_TYPE mt = 0;
    cdx_err err;
    if ((err = hsm_unwrap_mech(c, s, &mt, rv)))
        return err;
    if ((err = hsm_find_kek(c, s, a->kek_name, &kek, rv)))
        return err;
    char klabel[CDX_LABEL_MAX + 8];
    hsm_label_kek(a->kek_name, klabel + 4);
    memcpy(klabel, "KEK ", 4);
    if ((err = hsm_tmpl_check(c, s, kek, HSM_KEY_KEK, klabel, rv)))
        return err;
    /* The new key's type must be the one the KEK's unwrap template names (t points at it). */
    int st = 0;
    CK_KEY_TYPE kt = a->key_type;
    CK_RV r = hsm_tmpl_read_unwrap(c, s, kek, &st, &kt);
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "C_GetAttributeValue");
    }
    a->key_type = kt;
    CK_MECHANISM m = {mt, NULL, 0};
    r = c->f->C_UnwrapKey(s, &m, kek, (CK_BYTE_PTR)a->blob, a->blob_len, t, n, h);
    if (r != CKR_OK) {
        if (hsm_ckr_recoverable(r) && r != CKR_OBJECT_HANDLE_INVALID) {
            *rv = r;
            return hsm_ckr_fail(r, "C_UnwrapKey");
        }
        cdx_log(CDX_LOG_WARN, "pkcs11_error", "op=C_UnwrapKey mechanism=0x%lx ckr=%s rv=0x%lx",
                (unsigned long)mt, hsm_ckr_name(r), (unsigned long)r);
        if (r == CKR_ATTRIBUTE_TYPE_INVALID || r == CKR_ATTRIBUTE_VALUE_INVALID ||
            r == CKR_TEMPLATE_INCONSISTENT) {
            char label[CDX_LABEL_MAX + 1];
            target_label(a, label);
            return hsm_ckr_fail_create(r, "C_UnwrapKey", label);
        }
        if (r == CKR_MECHANISM_INVALID || r == CKR_MECHANISM_PARAM_INVALID)
            return cdx_fail(CDX_ERR_MECHANISM_UNSUPPORTED,
                            "the token refused %s for unwrap (%s); see [hsm] unwrap_mechanism",
                            hsm_mech_name(mt), hsm_ckr_name(r));
        return cdx_fail(CDX_ERR_BAD_WRAPPED_KEY,
                        "the wrapped key does not unwrap with KEK %s (%s, %s): wrong KEK or a "
                        "corrupted blob%s",
                        a->kek_name, hsm_mech_name(mt), hsm_ckr_name(r),
                        mt == CKM_AES_KEY_WRAP_PAD
                            ? ", or this token's CKM_AES_KEY_WRAP_PAD is not RFC 5649"
                            : "");
    }
    return CDX_OK;
}

/* True when the KEK object h lacks the unwrap template Cipherdex gave it (NSS softokn). */
static bool utmpl_dropped(hsm_custody *c, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h)
{
    hsm_key_info ki;
    unsigned unknown = 0;
    if (hsm_tmpl_read(c, s, h, &ki, &unknown) != CKR_OK)
        return false;
    return (hsm_tmpl_wrong(HSM_KEY_KEK, &ki, unknown & ~hsm_tmpl_optional(c)) &
            HSM_A_UNWRAP_TEMPLATE) != 0;
}

static cdx_err create_op(hsm_custody *c, CK_SESSION_HANDLE s, void *arg, CK_RV *rv)
{
    struct hsm_create *a = arg;
    char label[CDX_LABEL_MAX + 1];
    uint8_t id[CDX_ID_LEN];
    CK_ATTRIBUTE t[24];
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    cdx_err err = CDX_OK;
    CK_RV r;
    unsigned n = 0;

    target_label(a, label);
    if ((err = hsm_caps_probe(c, s, true, rv)))
        return err;
    a->copyable = hsm_caps_copyable(c);
    a->allowed_mechs = !a->copyable && a->kind != HSM_KEY_KEK && atomic_load(&c->allowed_mechs_ok);
    r = hsm_find_label(c, s, label, &h, &n);
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
    if (a->kind == HSM_KEY_KEK) {
        /* A KEK only unwraps: on a token (or transport) without an RFC 5649 unwrap mechanism it
         * is of no use, and its template may not even pass (p11-kit's RPC). Say so first. */
        CK_MECHANISM_TYPE um = 0;
        err = hsm_unwrap_mech(c, s, &um, rv);
        if (err == CDX_ERR_MECHANISM_UNSUPPORTED) {
            char why[400];
            snprintf(why, sizeof(why), "%s", cdx_err_detail());
            return cdx_fail(CDX_ERR_MECHANISM_UNSUPPORTED,
                            "%s not created: a KEK only serves index unwrap, and %s", label, why);
        }
        if (err)
            return err;
    }
    a->hmac_kt = hsm_hmac_key_type(c);
    a->key_type = a->kind == HSM_KEY_KEK ? CKK_AES : a->hmac_kt;
    CK_ULONG nt = hsm_tmpl_build(a, t, label, id);
    h = CK_INVALID_HANDLE;
    if ((err = a->make(c, s, a, t, nt, &h, rv)))
        return err;
    if (a->kind != HSM_KEY_KEK) {
        r = hsm_compute_kcv(c, s, h, a->kcv);
        if (r != CKR_OK) {
            if (hsm_ckr_recoverable(r)) {
                *rv = r;
                return hsm_ckr_fail(r, "KCV (C_Sign)");
            }
            err = a->how == HSM_HOW_UNWRAP
                      ? cdx_fail(CDX_ERR_BAD_WRAPPED_KEY,
                                 "the unwrapped key is not usable for HMAC-SHA256 (%s): it must be "
                                 "32 bytes",
                                 hsm_ckr_name(r))
                      : hsm_ckr_fail(r, "KCV (C_Sign)");
            goto destroy;
        }
    }
    /* Trust, but verify: a token that ignored part of the template must not keep the key. */
    if ((err = hsm_tmpl_check(c, s, h, a->kind, label, rv))) {
        if (err == CDX_ERR_KEY_ATTRIBUTES && a->kind == HSM_KEY_KEK && utmpl_dropped(c, s, h))
            err = cdx_fail(CDX_ERR_KEY_ATTRIBUTES,
                           "%s not created: the token accepted CKA_UNWRAP_TEMPLATE but does not "
                           "keep it, so a KEK there would unwrap an index key as an extractable "
                           "key for anyone with the PIN (security review M2). Cipherdex makes no "
                           "KEKs on this token: generate index keys on it instead (index create; "
                           "cipherdex-hsm index generate), docs/CUSTODY.md",
                           label);
        goto destroy;
    }
    a->h = h;
    return CDX_OK;
destroy:
    (void)c->f->C_DestroyObject(s, h);
    return err;
}

/* After an interrupted create: did the object appear? */
static cdx_err recheck_op(hsm_custody *c, CK_SESSION_HANDLE s, void *arg, CK_RV *rv)
{
    struct hsm_create *a = arg;
    char label[CDX_LABEL_MAX + 1];
    target_label(a, label);
    unsigned n = 0;
    CK_RV r = hsm_find_label(c, s, label, &a->h, &n);
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "C_FindObjects");
    }
    if (n != 1)
        return cdx_fail(CDX_ERR_HSM_UNAVAILABLE,
                        "the token failed while creating %s and the key was not created; retry",
                        label);
    cdx_err err = hsm_tmpl_check(c, s, a->h, a->kind, label, rv);
    if (err)
        return err;
    if (a->kind != HSM_KEY_KEK) {
        r = hsm_compute_kcv(c, s, a->h, a->kcv);
        if (r != CKR_OK) {
            *rv = r;
            return hsm_ckr_fail(r, "KCV (C_Sign)");
        }
    }
    return CDX_OK;
}

cdx_err hsm_key_create(hsm_custody *c, struct hsm_create *a, uint8_t *kcv_out)
{
    cdx_err err = hsm_run(c, create_op, a, false);
    if (err == HSM_INTERRUPTED)
        err = hsm_run(c, recheck_op, a, true);
    if (a->kind != HSM_KEY_KEK)
        hsm_emit(c,
                 a->how == HSM_HOW_GENERATE ? HSM_EV_GENERATE
                 : a->how == HSM_HOW_IMPORT ? HSM_EV_IMPORT
                                            : HSM_EV_UNWRAP,
                 a->kind, a->ref.id, 0, -1, err);
    if (err)
        return err;
    if (a->kind != HSM_KEY_KEK) {
        hsm_subcache_drop_key(c, &a->ref);
        hsm_key_remember(c, &a->ref, a->h, a->kcv);
        if (kcv_out)
            memcpy(kcv_out, a->kcv, CDX_KCV_LEN);
        char label[CDX_LABEL_MAX + 1], k[17];
        hsm_key_label(&a->ref, label);
        cdx_hex_encode(a->kcv, CDX_KCV_LEN, k);
        cdx_log(CDX_LOG_INFO, "hsm_key_created", "label=%s how=%s kcv=%s", label,
                a->how == HSM_HOW_GENERATE ? "generate"
                : a->how == HSM_HOW_IMPORT ? "import"
                                           : "unwrap",
                k);
    } else {
        cdx_log(CDX_LOG_INFO, "hsm_kek_created", "name=%s how=%s", a->kek_name,
                a->how == HSM_HOW_GENERATE ? "generate" : "import");
    }
    return CDX_OK;
}

cdx_err hsm_index_key_generate(hsm_custody *c, const uint8_t id[CDX_ID_LEN],
                               uint8_t kcv_out[CDX_KCV_LEN])
{
    struct hsm_create a = {
        .kind = HSM_KEY_INDEX, .how = HSM_HOW_GENERATE, .make = hsm_make_generate};
    a.ref.kind = HSM_KEY_INDEX;
    memcpy(a.ref.id, id, CDX_ID_LEN);
    return hsm_key_create(c, &a, kcv_out);
}

cdx_err hsm_index_key_generate_ref(hsm_custody *c, const hsm_key_ref *k,
                                   uint8_t kcv_out[CDX_KCV_LEN])
{
    if (k->kind != HSM_KEY_INDEX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "only index keys have generations");
    struct hsm_create a = {
        .kind = HSM_KEY_INDEX, .how = HSM_HOW_GENERATE, .make = hsm_make_generate};
    a.ref = *k;
    return hsm_key_create(c, &a, kcv_out);
}

cdx_err hsm_index_key_unwrap(hsm_custody *c, const uint8_t id[CDX_ID_LEN], const char *kek_name,
                             const uint8_t *blob, size_t blob_len, uint8_t kcv_out[CDX_KCV_LEN])
{
    if (!hsm_valid_kek_name(kek_name))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "KEK name must be 1-40 of [A-Za-z0-9_.-]");
    if (!blob || blob_len != CDX_WRAPPED_KEY_LEN)
        return cdx_fail(CDX_ERR_BAD_WRAPPED_KEY,
                        "the wrapped key is %zu bytes; an RFC 5649 wrap of a 32-byte key is "
                        "exactly %d bytes",
                        blob ? blob_len : 0, CDX_WRAPPED_KEY_LEN);
    struct hsm_create a = {.kind = HSM_KEY_INDEX,
                           .how = HSM_HOW_UNWRAP,
                           .make = make_unwrap,
                           .kek_name = kek_name,
                           .blob = blob,
                           .blob_len = blob_len};
    a.ref.kind = HSM_KEY_INDEX;
    memcpy(a.ref.id, id, CDX_ID_LEN);
    return hsm_key_create(c, &a, kcv_out);
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
    CK_RV r = hsm_find_label(c, s, "cipherdex-root", &a->h, &n);
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
    cdx_err err = hsm_caps_probe(c, s, false, rv);
    if (err)
        return err;
    err = hsm_tmpl_check(c, s, a->h, HSM_KEY_ROOT, "cipherdex-root", rv);
    if (err)
        return err;
    r = hsm_compute_kcv(c, s, a->h, a->kcv);
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
        hsm_key_remember(c, &ref, ra.h, ra.kcv);
        if (kcv_out)
            memcpy(kcv_out, ra.kcv, CDX_KCV_LEN);
        return CDX_OK;
    }
    struct hsm_create a = {
        .kind = HSM_KEY_ROOT, .how = HSM_HOW_GENERATE, .make = hsm_make_generate, .ref = ref};
    err = hsm_key_create(c, &a, kcv_out);
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
    cdx_err err = hsm_find_key(c, s, a->k, &a->h, rv);
    if (err)
        return err;
    if ((err = hsm_caps_probe(c, s, false, rv)))
        return err;
    if ((err = hsm_tmpl_check(c, s, a->h, a->k->kind, label, rv)))
        return err;
    CK_RV r = hsm_compute_kcv(c, s, a->h, a->kcv);
    if (r != CKR_OK) {
        if (hsm_ckr_recoverable(r)) {
            *rv = r;
            return hsm_ckr_fail(r, "KCV (C_Sign)");
        }
        return cdx_fail(CDX_ERR_KEY_ATTRIBUTES,
                        "%s cannot compute HMAC-SHA256 (%s): not a 32-byte "
                        "key",
                        label, hsm_ckr_name(r));
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
    hsm_emit(c, HSM_EV_ADOPT, HSM_KEY_INDEX, k.id, 0, -1, err);
    if (err)
        return err;
    hsm_key_remember(c, &k, a.h, a.kcv);
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
    cdx_err err = a->k ? hsm_find_key(c, s, a->k, &h, rv) : hsm_find_kek(c, s, a->kek, &h, rv);
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

cdx_err hsm_object_destroy(hsm_custody *c, const hsm_key_ref *k, const char *kek_name)
{
    struct destroy_arg a = {.k = k, .kek = kek_name};
    if (k) /* stop serving cached subkeys before the key goes */
        hsm_subcache_drop_key(c, k);
    cdx_err err = hsm_run(c, destroy_op, &a, false);
    if (err == HSM_INTERRUPTED) {
        a.recheck = true;
        err = hsm_run(c, destroy_op, &a, true);
    }
    if (k)
        hsm_emit(c, HSM_EV_DESTROY, k->kind, k->id, 0, -1, err);
    if (!err && k) {
        hsm_key_forget(c, k);
        hsm_subcache_drop_key(c, k);
        char label[CDX_LABEL_MAX + 1];
        hsm_key_label(k, label);
        cdx_log(CDX_LOG_INFO, "hsm_key_destroyed", "label=%s", label);
    } else if (!err) {
        cdx_log(CDX_LOG_INFO, "hsm_kek_destroyed", "name=%s", kek_name);
    }
    return err;
}

cdx_err hsm_key_destroy(hsm_custody *c, const hsm_key_ref *k)
{
    return hsm_object_destroy(c, k, NULL);
}
