/* The attestation key pair and the claims read for attestation (hsm_attest.h). */
#include "hsm_attest.h"

#include <stdio.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ecdsa.h>
#include <openssl/param_build.h>
#include <openssl/sha.h>

#include "cdx_log.h"
#include "hsm_attest_internal.h"
#include "hsm_internal.h"

const uint8_t HSM_P256_PARAMS[HSM_P256_PARAMS_LEN] = {0x06, 0x08, 0x2a, 0x86, 0x48,
                                                      0xce, 0x3d, 0x03, 0x01, 0x07};

/* The digest the self-test signs: SHA-256 of this public string. */
#define SELFTEST_MSG "cipherdex/v1/attest-selftest"

/* Exactly one object of class cls labelled CDX_ATTEST_LABEL. */
cdx_err hsm_attest_find_half(hsm_custody *c, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
                             CK_OBJECT_HANDLE *h, unsigned *n, CK_RV *rv)
{
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_LABEL, (void *)CDX_ATTEST_LABEL, sizeof(CDX_ATTEST_LABEL) - 1},
    };
    *n = 0;
    CK_RV r = hsm_find(c, s, t, 2, h, n);
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "C_FindObjects");
    }
    return CDX_OK;
}

static cdx_err find_one(hsm_custody *c, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
                        CK_OBJECT_HANDLE *h, CK_RV *rv)
{
    unsigned n;
    cdx_err err = hsm_attest_find_half(c, s, cls, h, &n, rv);
    if (err)
        return err;
    const char *what = cls == CKO_PRIVATE_KEY ? "private" : "public";
    if (n == 0)
        return cdx_fail(CDX_ERR_KEY_NOT_FOUND,
                        "no attestation key (%s key labelled %s) on the token: create it with "
                        "`cipherdex-hsm attest-key create`",
                        what, CDX_ATTEST_LABEL);
    if (n > 1)
        return cdx_fail(CDX_ERR_KEY_AMBIGUOUS, "several %s keys are labelled %s", what,
                        CDX_ATTEST_LABEL);
    return CDX_OK;
}

/* The private key's protections: sensitive, not extractable, EC, sign only. */
cdx_err hsm_attest_check_private(hsm_custody *c, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_RV *rv)
{
    const CK_BBOOL unset = 0x5a;
    CK_BBOOL sens = unset, ext = unset, sign = unset, dec = unset, unw = unset, der = unset;
    CK_KEY_TYPE kt = (CK_KEY_TYPE)-1;
    CK_ATTRIBUTE t[] = {
        {CKA_SENSITIVE, &sens, 1},       {CKA_EXTRACTABLE, &ext, 1}, {CKA_SIGN, &sign, 1},
        {CKA_DECRYPT, &dec, 1},          {CKA_UNWRAP, &unw, 1},      {CKA_DERIVE, &der, 1},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
    };
    const size_t n = sizeof(t) / sizeof(t[0]);
    CK_RV r = c->f->C_GetAttributeValue(s, h, t, n);
    if (r != CKR_OK && hsm_ckr_recoverable(r)) {
        *rv = r;
        return hsm_ckr_fail(r, "C_GetAttributeValue");
    }
    char wrong[160] = "";
    struct {
        CK_BBOOL v, want;
        CK_ULONG len;
        const char *name;
    } b[] = {
        {sens, CK_TRUE, t[0].ulValueLen, "sensitive"},
        {ext, CK_FALSE, t[1].ulValueLen, "extractable"},
        {sign, CK_TRUE, t[2].ulValueLen, "sign"},
        {dec, CK_FALSE, t[3].ulValueLen, "decrypt"},
        {unw, CK_FALSE, t[4].ulValueLen, "unwrap"},
        {der, CK_FALSE, t[5].ulValueLen, "derive"},
    };
    for (size_t i = 0; i < sizeof(b) / sizeof(b[0]); i++)
        if (b[i].len != 1 || b[i].v == unset || (b[i].v != CK_FALSE) != (b[i].want != CK_FALSE)) {
            size_t l = strlen(wrong);
            snprintf(wrong + l, sizeof(wrong) - l, "%s%s", l ? ", " : "", b[i].name);
        }
    if (wrong[0])
        return cdx_fail(CDX_ERR_KEY_ATTRIBUTES,
                        "the attestation private key %s has the wrong (or unreported) %s: it must "
                        "be sensitive, not extractable, sign only",
                        CDX_ATTEST_LABEL, wrong);
    if (t[6].ulValueLen != sizeof(kt) || kt != CKK_EC)
        return cdx_fail(CDX_ERR_KEY_ATTRIBUTES, "the attestation key %s is not an EC key",
                        CDX_ATTEST_LABEL);
    return CDX_OK;
}

static cdx_err sign_with(hsm_custody *c, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                         const uint8_t digest[32], uint8_t rs[64], CK_RV *rv)
{
    CK_MECHANISM mech = {CKM_ECDSA, NULL, 0};
    CK_ULONG olen = 64;
    CK_RV r = c->f->C_SignInit(s, &mech, h);
    if (r == CKR_OK)
        r = c->f->C_Sign(s, (CK_BYTE_PTR)digest, 32, rs, &olen);
    if (r == CKR_OK && olen != 64) {
        return cdx_fail(CDX_ERR_KEY_ATTRIBUTES,
                        "the attestation key's signature is %lu bytes, not a P-256 one (64)",
                        (unsigned long)olen);
    }
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "C_Sign(CKM_ECDSA)");
    }
    return CDX_OK;
}

/* ---- the public key ---- */

struct pub_arg {
    uint8_t point[133];
    size_t point_len;
    uint8_t rs[64];
    uint8_t digest[32];
};

static cdx_err pub_op(hsm_custody *c, CK_SESSION_HANDLE s, void *arg, CK_RV *rv)
{
    struct pub_arg *a = arg;
    CK_OBJECT_HANDLE pub, priv;
    cdx_err err;
    if ((err = find_one(c, s, CKO_PRIVATE_KEY, &priv, rv)) ||
        (err = find_one(c, s, CKO_PUBLIC_KEY, &pub, rv)) ||
        (err = hsm_attest_check_private(c, s, priv, rv)))
        return err;
    uint8_t params[32];
    CK_ATTRIBUTE t[] = {
        {CKA_EC_POINT, a->point, sizeof(a->point)},
        {CKA_EC_PARAMS, params, sizeof(params)},
    };
    CK_RV r = c->f->C_GetAttributeValue(s, pub, t, 2);
    if (r != CKR_OK) {
        *rv = hsm_ckr_recoverable(r) ? r : CKR_OK;
        if (!hsm_ckr_recoverable(r))
            return cdx_fail(CDX_ERR_KEY_ATTRIBUTES,
                            "the attestation public key's CKA_EC_POINT cannot be read (%s)",
                            hsm_ckr_name(r));
        return hsm_ckr_fail(r, "C_GetAttributeValue");
    }
    if (t[1].ulValueLen != HSM_P256_PARAMS_LEN ||
        memcmp(params, HSM_P256_PARAMS, HSM_P256_PARAMS_LEN))
        return cdx_fail(CDX_ERR_KEY_ATTRIBUTES, "the attestation key is not on P-256");
    a->point_len = t[0].ulValueLen;
    return sign_with(c, s, priv, a->digest, a->rs, rv);
}

/* CKA_EC_POINT: a DER OCTET STRING around the uncompressed point (PKCS#11), or the bare point. */
static bool bare_point(const uint8_t *p, size_t n, const uint8_t **pt)
{
    if (n == 67 && p[0] == 0x04 && p[1] == 0x41 && p[2] == 0x04) {
        *pt = p + 2;
        return true;
    }
    if (n == 65 && p[0] == 0x04) {
        *pt = p;
        return true;
    }
    return false;
}

static EVP_PKEY *pkey_from_point(const uint8_t pt[65])
{
    EVP_PKEY *pk = NULL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (bld && pc &&
        OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) &&
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, 65) &&
        (params = OSSL_PARAM_BLD_to_param(bld)) && EVP_PKEY_fromdata_init(pc) == 1 &&
        EVP_PKEY_fromdata(pc, &pk, EVP_PKEY_PUBLIC_KEY, params) != 1)
        pk = NULL;
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    EVP_PKEY_CTX_free(pc);
    return pk;
}

static bool verify_rs(EVP_PKEY *pk, const uint8_t digest[32], const uint8_t rs[64])
{
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(rs, 32, NULL), *s = BN_bin2bn(rs + 32, 32, NULL);
    unsigned char *der = NULL;
    int n = -1;
    bool ok = false;
    if (sig && r && s && ECDSA_SIG_set0(sig, r, s)) {
        r = s = NULL;
        n = i2d_ECDSA_SIG(sig, &der);
    }
    EVP_PKEY_CTX *vc = n > 0 ? EVP_PKEY_CTX_new(pk, NULL) : NULL;
    ok = vc && EVP_PKEY_verify_init(vc) == 1 &&
         EVP_PKEY_CTX_set_signature_md(vc, EVP_sha256()) == 1 &&
         EVP_PKEY_verify(vc, der, (size_t)n, digest, 32) == 1;
    EVP_PKEY_CTX_free(vc);
    OPENSSL_free(der);
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(sig);
    return ok;
}

cdx_err hsm_attest_key_public(hsm_custody *c, EVP_PKEY **out)
{
    *out = NULL;
    struct pub_arg a;
    memset(&a, 0, sizeof(a));
    SHA256((const unsigned char *)SELFTEST_MSG, sizeof(SELFTEST_MSG) - 1, a.digest);
    cdx_err err = hsm_run(c, pub_op, &a, true);
    if (err)
        return err;
    const uint8_t *pt;
    if (!bare_point(a.point, a.point_len, &pt))
        return cdx_fail(CDX_ERR_KEY_ATTRIBUTES,
                        "the attestation public key's CKA_EC_POINT is not an uncompressed P-256 "
                        "point (%zu bytes)",
                        a.point_len);
    EVP_PKEY *pk = pkey_from_point(pt);
    if (!pk)
        return cdx_fail(CDX_ERR_KEY_ATTRIBUTES,
                        "the attestation public key's point is not on P-256");
    if (!verify_rs(pk, a.digest, a.rs)) {
        EVP_PKEY_free(pk);
        return cdx_fail(CDX_ERR_KEY_ATTRIBUTES,
                        "the attestation public and private keys (%s) do not belong together: a "
                        "signature by the private key does not verify with the public key",
                        CDX_ATTEST_LABEL);
    }
    *out = pk;
    return CDX_OK;
}

/* ---- signing ---- */

struct sign_arg {
    const uint8_t *digest;
    uint8_t *rs;
};

static cdx_err sign_op(hsm_custody *c, CK_SESSION_HANDLE s, void *arg, CK_RV *rv)
{
    struct sign_arg *a = arg;
    CK_OBJECT_HANDLE priv;
    cdx_err err = find_one(c, s, CKO_PRIVATE_KEY, &priv, rv);
    if (err)
        return err;
    return sign_with(c, s, priv, a->digest, a->rs, rv);
}

cdx_err hsm_attest_sign(hsm_custody *c, const uint8_t digest[32], uint8_t rs[64])
{
    struct sign_arg a = {digest, rs};
    cdx_err err = hsm_run(c, sign_op, &a, true);
    hsm_emit(c, HSM_EV_ATTEST, 0, NULL, 0, -1, err);
    return err;
}

/* ---- the claims ---- */

struct facts_arg {
    const hsm_key_ref *k;
    const uint8_t *expected;
    hsm_attest_facts *out;
};

static void version_text(char out[12], CK_VERSION v)
{
    snprintf(out, 12, "%u.%u", (unsigned)v.major, (unsigned)v.minor);
}

static cdx_err facts_op(hsm_custody *c, CK_SESSION_HANDLE s, void *arg, CK_RV *rv)
{
    struct facts_arg *a = arg;
    hsm_attest_facts *o = a->out;
    CK_OBJECT_HANDLE h;
    cdx_err err = hsm_key_resolve(c, s, a->k, a->expected, &h, o->kcv, rv);
    if (err)
        return err;
    hsm_key_info ki;
    unsigned unknown = 0;
    CK_RV r = hsm_tmpl_read(c, s, h, &ki, &unknown);
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "C_GetAttributeValue");
    }
    o->attrs = ki.attrs & ~unknown;
    o->unknown = unknown;
    o->key_type = ki.key_type;
    /* CKA_ALLOWED_MECHANISMS: absent, unreadable or empty = no restriction reported. */
    CK_MECHANISM_TYPE mechs[CDX_ATTEST_MECHS_MAX];
    CK_ATTRIBUTE am = {CKA_ALLOWED_MECHANISMS, mechs, sizeof(mechs)};
    r = c->f->C_GetAttributeValue(s, h, &am, 1);
    if (hsm_ckr_recoverable(r)) {
        *rv = r;
        return hsm_ckr_fail(r, "C_GetAttributeValue");
    }
    if (r == CKR_OK && am.ulValueLen != CK_UNAVAILABLE_INFORMATION && am.ulValueLen > 0 &&
        am.ulValueLen % sizeof(CK_MECHANISM_TYPE) == 0) {
        o->mechs_known = true;
        o->nmechs = am.ulValueLen / sizeof(CK_MECHANISM_TYPE);
        for (size_t i = 0; i < o->nmechs; i++)
            o->mechs[i] = mechs[i];
    } else if (r == CKR_BUFFER_TOO_SMALL) {
        cdx_log(CDX_LOG_WARN, "attest_mechanisms_truncated",
                "more than %d allowed mechanisms: reported as no restriction",
                CDX_ATTEST_MECHS_MAX);
    }
    CK_TOKEN_INFO ti;
    CK_SLOT_INFO si;
    if ((r = c->f->C_GetTokenInfo(c->slot_id, &ti)) != CKR_OK ||
        (r = c->f->C_GetSlotInfo(c->slot_id, &si)) != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "C_GetTokenInfo");
    }
    hsm_unpad(o->manufacturer, sizeof(o->manufacturer), ti.manufacturerID,
              sizeof(ti.manufacturerID));
    hsm_unpad(o->model, sizeof(o->model), ti.model, sizeof(ti.model));
    hsm_unpad(o->serial, sizeof(o->serial), ti.serialNumber, sizeof(ti.serialNumber));
    hsm_unpad(o->label, sizeof(o->label), ti.label, sizeof(ti.label));
    version_text(o->hw_version, ti.hardwareVersion);
    version_text(o->fw_version, ti.firmwareVersion);
    o->software = hsm_software_token(&si, o->model);
    return CDX_OK;
}

cdx_err hsm_attest_facts_read(hsm_custody *c, const hsm_key_ref *k, const uint8_t *expected_kcv,
                              hsm_attest_facts *out)
{
    memset(out, 0, sizeof(*out));
    struct facts_arg a = {k, expected_kcv, out};
    cdx_err err = hsm_run(c, facts_op, &a, true);
    hsm_emit(c, HSM_EV_ATTRS, k->kind, k->id, 0,
             !expected_kcv                 ? -1
             : err == CDX_ERR_KEY_REPLACED ? 0
             : err                         ? -1
                                           : 1,
             err);
    return err;
}
