/*
 * What the token can do, decided by asking it (docs/CUSTODY.md "Token
 * compatibility"): C_GetMechanismInfo, and for the unwrap mechanism a
 * known-answer test. Decisions are cached per custody context.
 */
#include "hsm_internal.h"

#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#include "cdx_log.h"

/*
 * The unwrap known-answer test (docs/KEYS.md): KEK = 40 41 .. 5f, data key =
 * 60 61 .. 7f, blob = RFC 5649 wrap of the data key under the KEK (OpenSSL
 * `openssl enc -id-aes256-wrap-pad -iv A65959A6`, checked by test_pkcs11),
 * KCV = Cipherdex KCV of the data key. Public constants, not secrets.
 */
static const uint8_t KAT_BLOB[CDX_WRAPPED_KEY_LEN] = {
    0xf2, 0xb6, 0xd4, 0x51, 0xa6, 0xf2, 0x12, 0xe6, 0x6c, 0xb9, 0x08, 0xf3, 0xb8, 0xc7,
    0x85, 0x41, 0xdb, 0x93, 0x77, 0xe6, 0x3e, 0xd5, 0x3a, 0x62, 0x63, 0x11, 0x90, 0x88,
    0x9d, 0xc2, 0x66, 0xab, 0x66, 0xae, 0xe9, 0x7c, 0x31, 0xc4, 0x3c, 0x2e};
static const uint8_t KAT_KCV[CDX_KCV_LEN] = {0xb1, 0x69, 0x36, 0xd0, 0x5d, 0x61, 0xae, 0x9b};

const char *hsm_mech_name(CK_MECHANISM_TYPE m)
{
    static _Thread_local char buf[40];
    switch (m) {
    case CKM_AES_KEY_WRAP_KWP:
        return "CKM_AES_KEY_WRAP_KWP";
    case CKM_AES_KEY_WRAP_PAD:
        return "CKM_AES_KEY_WRAP_PAD";
    case CKM_AES_KEY_WRAP:
        return "CKM_AES_KEY_WRAP";
    default:
        snprintf(buf, sizeof(buf), "mechanism 0x%lx", (unsigned long)m);
        return buf;
    }
}

bool hsm_mech_has(hsm_custody *c, CK_MECHANISM_TYPE m, CK_FLAGS flag)
{
    CK_MECHANISM_INFO mi;
    memset(&mi, 0, sizeof(mi));
    CK_RV rv = c->f->C_GetMechanismInfo(c->slot_id, m, &mi);
    if (rv != CKR_OK && rv != CKR_MECHANISM_INVALID)
        cdx_log(CDX_LOG_DEBUG, "pkcs11_mechanism_info", "mechanism=0x%lx ckr=%s rv=0x%lx",
                (unsigned long)m, hsm_ckr_name(rv), (unsigned long)rv);
    return rv == CKR_OK && (mi.flags & flag) == flag;
}

/*
 * Unwrap KAT_BLOB with `m` under a session KEK made from the KAT bytes and
 * compare the KCV: *ok tells whether `m` is RFC 5649 on this token. Session
 * objects only (CKA_TOKEN FALSE), destroyed again. Returns a CK_RV only for
 * failures recovery may cure.
 */
static CK_RV unwrap_kat(hsm_custody *c, CK_SESSION_HANDLE s, CK_MECHANISM_TYPE m, bool *ok,
                        CK_RV *why, const char **stage)
{
    CK_OBJECT_CLASS secret = CKO_SECRET_KEY;
    CK_KEY_TYPE aes = CKK_AES, gen = CKK_GENERIC_SECRET;
    CK_BBOOL t = CK_TRUE, f = CK_FALSE;
    uint8_t kek[CDX_KEY_LEN], kcv[CDX_KCV_LEN];
    for (size_t i = 0; i < sizeof(kek); i++)
        kek[i] = (uint8_t)(0x40 + i);
    CK_ATTRIBUTE kt[] = {
        {CKA_CLASS, &secret, sizeof(secret)},
        {CKA_KEY_TYPE, &aes, sizeof(aes)},
        {CKA_TOKEN, &f, 1},
        {CKA_PRIVATE, &t, 1},
        {CKA_SENSITIVE, &t, 1},
        {CKA_EXTRACTABLE, &f, 1},
        {CKA_ENCRYPT, &f, 1},
        {CKA_DECRYPT, &f, 1},
        {CKA_WRAP, &f, 1},
        {CKA_UNWRAP, &t, 1},
        {CKA_SIGN, &f, 1},
        {CKA_VERIFY, &f, 1},
        {CKA_DERIVE, &f, 1},
        {CKA_VALUE, kek, sizeof(kek)},
    };
    CK_ATTRIBUTE ut[] = {
        {CKA_CLASS, &secret, sizeof(secret)},
        {CKA_KEY_TYPE, &gen, sizeof(gen)},
        {CKA_TOKEN, &f, 1},
        {CKA_PRIVATE, &t, 1},
        {CKA_SENSITIVE, &t, 1},
        {CKA_EXTRACTABLE, &f, 1},
        {CKA_SIGN, &t, 1},
        {CKA_VERIFY, &f, 1},
        {CKA_ENCRYPT, &f, 1},
        {CKA_DECRYPT, &f, 1},
        {CKA_WRAP, &f, 1},
        {CKA_UNWRAP, &f, 1},
        {CKA_DERIVE, &f, 1},
    };
    CK_OBJECT_HANDLE hk = CK_INVALID_HANDLE, hd = CK_INVALID_HANDLE;
    CK_MECHANISM mech = {m, NULL, 0};
    CK_RV rv, ret = CKR_OK;

    *ok = false;
    *why = CKR_OK;
    *stage = "C_CreateObject of the session KEK";
    rv = c->f->C_CreateObject(s, kt, sizeof(kt) / sizeof(kt[0]), &hk);
    OPENSSL_cleanse(kek, sizeof(kek)); /* public bytes, but keep the habit */
    if (rv != CKR_OK) {
        *why = rv;
        if (hsm_ckr_recoverable(rv))
            ret = rv;
        goto out;
    }
    *stage = "C_UnwrapKey";
    rv = c->f->C_UnwrapKey(s, &mech, hk, (CK_BYTE_PTR)KAT_BLOB, sizeof(KAT_BLOB), ut,
                           sizeof(ut) / sizeof(ut[0]), &hd);
    if (rv != CKR_OK) {
        *why = rv;
        if (hsm_ckr_recoverable(rv))
            ret = rv;
        goto out;
    }
    *stage = "KCV of the unwrapped key";
    rv = hsm_compute_kcv(c, s, hd, kcv);
    if (rv != CKR_OK) {
        *why = rv;
        if (hsm_ckr_recoverable(rv))
            ret = rv;
        goto out;
    }
    *ok = CRYPTO_memcmp(kcv, KAT_KCV, CDX_KCV_LEN) == 0;
out:
    if (hd != CK_INVALID_HANDLE)
        (void)c->f->C_DestroyObject(s, hd);
    if (hk != CK_INVALID_HANDLE)
        (void)c->f->C_DestroyObject(s, hk);
    return ret;
}

CK_RV hsm_unwrap_kat(hsm_custody *c, CK_SESSION_HANDLE s, CK_MECHANISM_TYPE m, bool *ok)
{
    CK_RV why = CKR_OK;
    const char *stage = "";
    return unwrap_kat(c, s, m, ok, &why, &stage);
}

cdx_err hsm_unwrap_mech(hsm_custody *c, CK_SESSION_HANDLE s, CK_MECHANISM_TYPE *out, CK_RV *rv)
{
    CK_MECHANISM_TYPE m = (CK_MECHANISM_TYPE)atomic_load(&c->unwrap_mech);
    if (m) {
        *out = m;
        return CDX_OK;
    }
    if (c->cfg.unwrap_mechanism) {
        /* The operator's choice ([hsm] unwrap_mechanism): used as is, for vendor mechanisms
         * that do not advertise CKF_UNWRAP or that a known-answer test cannot cover. */
        m = c->cfg.unwrap_mechanism;
        cdx_log(CDX_LOG_INFO, "hsm_unwrap_mechanism", "mechanism=0x%lx source=config",
                (unsigned long)m);
    } else if (hsm_mech_has(c, CKM_AES_KEY_WRAP_KWP, CKF_UNWRAP)) {
        m = CKM_AES_KEY_WRAP_KWP; /* RFC 5649 by PKCS#11 3.0 */
        cdx_log(CDX_LOG_INFO, "hsm_unwrap_mechanism", "mechanism=0x%lx source=token",
                (unsigned long)m);
    } else if (hsm_mech_has(c, CKM_AES_KEY_WRAP_PAD, CKF_UNWRAP)) {
        /* 0x210A is RFC 5649 on SoftHSM and nShield but a PKCS#7-padded RFC 3394 on NSS:
         * use it only if it unwraps a known RFC 5649 blob to the known key. */
        bool ok = false;
        CK_RV why = CKR_OK;
        const char *stage = "";
        CK_RV r = unwrap_kat(c, s, CKM_AES_KEY_WRAP_PAD, &ok, &why, &stage);
        if (r != CKR_OK) {
            *rv = r;
            return hsm_ckr_fail(r, "unwrap known-answer test");
        }
        if (!ok) {
            cdx_log(CDX_LOG_WARN, "hsm_unwrap_kat_failed",
                    "mechanism=0x%lx stage=%s ckr=%s rv=0x%lx", (unsigned long)CKM_AES_KEY_WRAP_PAD,
                    why == CKR_OK ? "kcv" : stage, hsm_ckr_name(why), (unsigned long)why);
            if (why != CKR_OK && strcmp(stage, "C_UnwrapKey") != 0)
                return cdx_fail(CDX_ERR_MECHANISM_UNSUPPORTED,
                                "the unwrap known-answer test for CKM_AES_KEY_WRAP_PAD could not "
                                "run (%s: %s), so Cipherdex cannot tell whether this token's "
                                "0x210A is RFC 5649; set [hsm] unwrap_mechanism if you know it "
                                "(docs/CUSTODY.md)",
                                stage, hsm_ckr_name(why));
            return cdx_fail(CDX_ERR_MECHANISM_UNSUPPORTED,
                            "this token's CKM_AES_KEY_WRAP_PAD is not RFC 5649: it failed the "
                            "unwrap known-answer test (%s), and the token lists no "
                            "CKM_AES_KEY_WRAP_KWP for unwrap; set [hsm] unwrap_mechanism to the "
                            "token's RFC 5649 mechanism (docs/CUSTODY.md)",
                            why == CKR_OK ? "wrong key" : hsm_ckr_name(why));
        }
        m = CKM_AES_KEY_WRAP_PAD;
        cdx_log(CDX_LOG_INFO, "hsm_unwrap_mechanism", "mechanism=0x%lx source=token_kat",
                (unsigned long)m);
    } else {
        return cdx_fail(CDX_ERR_MECHANISM_UNSUPPORTED,
                        "the token lacks an RFC 5649 unwrap mechanism: neither "
                        "CKM_AES_KEY_WRAP_KWP (0x210B) nor CKM_AES_KEY_WRAP_PAD (0x210A) is listed "
                        "with CKF_UNWRAP; for a vendor mechanism set [hsm] unwrap_mechanism "
                        "(docs/CUSTODY.md)");
    }
    atomic_store(&c->unwrap_mech, (unsigned long)m);
    *out = m;
    return CDX_OK;
}

/* "'LABEL' (MANUFACTURER MODEL)" of the token we logged in to, for messages. */
static void token_name(hsm_custody *c, char *buf, size_t cap)
{
    CK_TOKEN_INFO ti;
    if (c->f->C_GetTokenInfo(c->slot_id, &ti) != CKR_OK) {
        snprintf(buf, cap, "in slot %lu", (unsigned long)c->slot_id);
        return;
    }
    char l[33], m[33], mo[17];
    hsm_unpad(l, sizeof(l), ti.label, sizeof(ti.label));
    hsm_unpad(m, sizeof(m), ti.manufacturerID, sizeof(ti.manufacturerID));
    hsm_unpad(mo, sizeof(mo), ti.model, sizeof(ti.model));
    snprintf(buf, cap, "'%s' (%s %s)", l, m, mo);
}

/*
 * Create a generic secret from public bytes with `extra` (if not NULL) added to the
 * template (a token object when `token`, labelled cipherdex-probe; else a
 * session object), read `extra`'s type back, destroy it. *made: the token
 * accepted the template; *back: the value read back equals extra's.
 * Returns a CK_RV only for failures recovery may cure.
 */
static CK_RV probe_key(hsm_custody *c, CK_SESSION_HANDLE s, const CK_ATTRIBUTE *extra, bool token,
                       bool *made, bool *back)
{
    CK_OBJECT_CLASS secret = CKO_SECRET_KEY;
    CK_KEY_TYPE gen = CKK_GENERIC_SECRET;
    CK_BBOOL t = CK_TRUE, f = CK_FALSE;
    uint8_t val[CDX_KEY_LEN];
    CK_ULONG got[8]; /* aligned for a CK_ULONG array such as CKA_ALLOWED_MECHANISMS */
    memset(val, 0x5c, sizeof(val)); /* public probe bytes */
    CK_ATTRIBUTE kt[] = {
        {CKA_CLASS, &secret, sizeof(secret)},
        {CKA_KEY_TYPE, &gen, sizeof(gen)},
        {CKA_TOKEN, token ? &t : &f, 1},
        {CKA_PRIVATE, &t, 1},
        {CKA_SENSITIVE, &t, 1},
        {CKA_EXTRACTABLE, &f, 1},
        {CKA_SIGN, &t, 1},
        {CKA_LABEL, HSM_PROBE_LABEL, sizeof(HSM_PROBE_LABEL) - 1},
        {CKA_VALUE, val, sizeof(val)},
        {0, NULL, 0}, /* extra */
    };
    CK_ULONG n = sizeof(kt) / sizeof(kt[0]);
    if (extra)
        kt[n - 1] = *extra;
    else
        n--;
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    *made = *back = false;
    CK_RV rv = c->f->C_CreateObject(s, kt, n, &h);
    if (rv != CKR_OK)
        return hsm_ckr_recoverable(rv) ? rv : CKR_OK;
    *made = true;
    if (extra) {
        CK_ATTRIBUTE a = {extra->type, got, sizeof(got)};
        rv = c->f->C_GetAttributeValue(s, h, &a, 1);
        if (rv == CKR_OK && a.ulValueLen == extra->ulValueLen &&
            memcmp(got, extra->pValue, a.ulValueLen) == 0)
            *back = true;
    }
    CK_RV dr = c->f->C_DestroyObject(s, h);
    if (dr != CKR_OK && token)
        cdx_log(CDX_LOG_WARN, "hsm_probe_object_left",
                "label=" HSM_PROBE_LABEL " ckr=%s rv=0x%lx: delete it with the token's tools",
                hsm_ckr_name(dr), (unsigned long)dr);
    return hsm_ckr_recoverable(rv) ? rv : CKR_OK;
}

/*
 * Does the token honour `extra` (accept it in a key template and report it
 * back)? Asked on a token object first: NSS softokn accepts CKA_COPYABLE on
 * session objects but fails token objects carrying it (CKR_GENERAL_ERROR),
 * and index keys are token objects. A token that refuses token objects made
 * with C_CreateObject altogether (some HSM policies forbid importing secret
 * keys) is asked on a session object instead. *told: some object was made
 * with or without `extra`, so the answer means something.
 */
static CK_RV probe_attr(hsm_custody *c, CK_SESSION_HANDLE s, const CK_ATTRIBUTE *extra,
                        bool *supported, bool *told)
{
    bool made = false, back = false, made2 = false, back2 = false;
    CK_RV r = CKR_OK;
    for (int token = 1; token >= 0; token--) {
        r = probe_key(c, s, extra, token, &made, &back);
        if (r != CKR_OK || made)
            break;
        /* Refused with `extra`: refused without it too? */
        r = probe_key(c, s, NULL, token, &made2, &back2);
        if (r != CKR_OK || made2)
            break;
    }
    *supported = made && back;
    *told = made || made2;
    return r;
}

cdx_err hsm_caps_probe(hsm_custody *c, CK_SESSION_HANDLE s, bool creating, CK_RV *rv)
{
    int cap = atomic_load(&c->copyable_cap);
    if (cap == 0) {
        CK_BBOOL f = CK_FALSE;
        CK_MECHANISM_TYPE hm = CKM_SHA256_HMAC;
        CK_ATTRIBUTE cp = {CKA_COPYABLE, &f, 1};
        CK_ATTRIBUTE am = {CKA_ALLOWED_MECHANISMS, &hm, sizeof(hm)};
        bool supported, told, am_ok, am_told;
        CK_RV r = probe_attr(c, s, &cp, &supported, &told);
        if (r != CKR_OK) {
            *rv = r;
            return hsm_ckr_fail(r, "CKA_COPYABLE probe");
        }
        /* A token that refuses even the plain probe key tells nothing: keep the strict
         * template (the real create reports). */
        cap = supported || !told ? 1 : 2;
        r = probe_attr(c, s, &am, &am_ok, &am_told);
        if (r != CKR_OK) {
            *rv = r;
            return hsm_ckr_fail(r, "CKA_ALLOWED_MECHANISMS probe");
        }
        atomic_store(&c->allowed_mechs_ok, am_ok);
        atomic_store(&c->copyable_cap, cap);
        char name[120];
        token_name(c, name, sizeof(name));
        cdx_log(cap == 1 ? CDX_LOG_DEBUG : CDX_LOG_WARN, "hsm_token_caps",
                "token=%s copyable=%s allowed_mechanisms=%s", name,
                !told      ? "unknown"
                : cap == 1 ? "supported"
                           : "unsupported",
                am_ok ? "supported" : "unsupported");
    }
    if (cap == 2 && c->cfg.copyable != HSM_COPYABLE_UNSUPPORTED) {
        char name[120];
        token_name(c, name, sizeof(name));
        return cdx_fail(CDX_ERR_KEY_ATTRIBUTES,
                        "the token %s does not support CKA_COPYABLE (PKCS#11 2.40), so Cipherdex "
                        "%s: without it a PIN holder could C_CopyObject a key with CKA_DERIVE=TRUE "
                        "and derive from the copy (on NSS, CKM_SHA256_KEY_DERIVATION gives an "
                        "extractable SHA-256 of the key). To accept that, set [hsm] copyable = "
                        "unsupported and forbid copy and derive by the HSM's own policy "
                        "(docs/CUSTODY.md, Token compatibility)",
                        name,
                        creating ? "will not create keys on it" : "will not adopt keys on it");
    }
    return CDX_OK;
}

bool hsm_caps_copyable(hsm_custody *c)
{
    return !(atomic_load(&c->copyable_cap) == 2 && c->cfg.copyable == HSM_COPYABLE_UNSUPPORTED);
}
