/*
 * Creating the attestation key pair (hsm_admin.h): admin-only, in
 * cdx_pkcs11_admin, so cipherdexd cannot make or replace the key whose
 * signature vouches for it (tests/check_admin_split.cmake).
 */
#include <stdio.h>
#include <string.h>

#include "cdx_log.h"
#include "hsm_admin.h"
#include "hsm_attest.h"
#include "hsm_attest_internal.h"
#include "hsm_internal.h"

/* ---- create ---- */

struct create_arg {
    bool replace, replaced;
};

static cdx_err destroy_all(hsm_custody *c, CK_SESSION_HANDLE s, CK_RV *rv)
{
    for (int i = 0; i < 16; i++) {
        CK_ATTRIBUTE t[] = {{CKA_LABEL, (void *)CDX_ATTEST_LABEL, sizeof(CDX_ATTEST_LABEL) - 1}};
        CK_OBJECT_HANDLE h;
        unsigned n = 0;
        CK_RV r = hsm_find(c, s, t, 1, &h, &n);
        if (r == CKR_OK && n == 0)
            return CDX_OK;
        if (r == CKR_OK)
            r = c->f->C_DestroyObject(s, h);
        if (r != CKR_OK) {
            *rv = r;
            return hsm_ckr_fail(r, "C_DestroyObject");
        }
    }
    return cdx_fail(CDX_ERR_HSM_FAILED, "objects labelled %s keep coming back", CDX_ATTEST_LABEL);
}

static cdx_err create_op(hsm_custody *c, CK_SESSION_HANDLE s, void *arg, CK_RV *rv)
{
    struct create_arg *a = arg;
    CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE, priv = CK_INVALID_HANDLE;
    unsigned npub = 0, npriv = 0;
    cdx_err err;
    if ((err = hsm_attest_find_half(c, s, CKO_PUBLIC_KEY, &pub, &npub, rv)) ||
        (err = hsm_attest_find_half(c, s, CKO_PRIVATE_KEY, &priv, &npriv, rv)))
        return err;
    if (npub || npriv) {
        if (!a->replace)
            return cdx_fail(CDX_ERR_ALREADY_EXISTS,
                            "an attestation key (%s) already exists; `attest-key create --replace` "
                            "destroys it and makes a new one (verifiers must then be given the new "
                            "public key)",
                            CDX_ATTEST_LABEL);
        if ((err = destroy_all(c, s, rv)))
            return err;
        a->replaced = true;
        cdx_log(CDX_LOG_WARN, "attest_key_destroyed", "label=%s reason=replace", CDX_ATTEST_LABEL);
    }
    if (!hsm_mech_has(c, CKM_EC_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR) ||
        !hsm_mech_has(c, CKM_ECDSA, CKF_SIGN))
        return cdx_fail(CDX_ERR_MECHANISM_UNSUPPORTED,
                        "the token lists no CKM_EC_KEY_PAIR_GEN or no CKM_ECDSA signing: it cannot "
                        "hold Cipherdex's attestation key");
    uint8_t id[CDX_ID_LEN];
    CK_RV r = c->f->C_GenerateRandom(s, id, sizeof(id));
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "C_GenerateRandom");
    }
    CK_BBOOL t = CK_TRUE, f = CK_FALSE;
    CK_ATTRIBUTE pt[] = {
        {CKA_TOKEN, &t, 1},
        {CKA_PRIVATE, &f, 1},
        {CKA_VERIFY, &t, 1},
        {CKA_ENCRYPT, &f, 1},
        {CKA_WRAP, &f, 1},
        {CKA_DERIVE, &f, 1},
        {CKA_EC_PARAMS, (void *)HSM_P256_PARAMS, HSM_P256_PARAMS_LEN},
        {CKA_LABEL, (void *)CDX_ATTEST_LABEL, sizeof(CDX_ATTEST_LABEL) - 1},
        {CKA_ID, id, sizeof(id)},
        {CKA_MODIFIABLE, &f, 1},
    };
    CK_ATTRIBUTE kt[12] = {
        {CKA_TOKEN, &t, 1},
        {CKA_PRIVATE, &t, 1},
        {CKA_SENSITIVE, &t, 1},
        {CKA_EXTRACTABLE, &f, 1},
        {CKA_SIGN, &t, 1},
        {CKA_SIGN_RECOVER, &f, 1},
        {CKA_DECRYPT, &f, 1},
        {CKA_UNWRAP, &f, 1},
        {CKA_DERIVE, &f, 1},
        {CKA_LABEL, (void *)CDX_ATTEST_LABEL, sizeof(CDX_ATTEST_LABEL) - 1},
        {CKA_ID, id, sizeof(id)},
    };
    CK_ULONG nk = 11;
    if (hsm_caps_copyable(c))
        kt[nk++] = (CK_ATTRIBUTE){CKA_COPYABLE, &f, 1};
    /* CKA_MODIFIABLE FALSE last, as for the secret keys (docs/KEYS.md). */
    CK_ATTRIBUTE ktm[13];
    memcpy(ktm, kt, nk * sizeof(kt[0]));
    ktm[nk++] = (CK_ATTRIBUTE){CKA_MODIFIABLE, &f, 1};
    CK_MECHANISM mech = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    r = c->f->C_GenerateKeyPair(s, &mech, pt, sizeof(pt) / sizeof(pt[0]), ktm, nk, &pub, &priv);
    if (r != CKR_OK) {
        *rv = hsm_ckr_recoverable(r) ? r : CKR_OK;
        return hsm_ckr_fail_create(r, "C_GenerateKeyPair", CDX_ATTEST_LABEL);
    }
    CK_RV ignored = CKR_OK;
    if ((err = hsm_attest_check_private(c, s, priv, &ignored))) {
        char why[300];
        snprintf(why, sizeof(why), "%s", cdx_err_detail());
        (void)c->f->C_DestroyObject(s, priv);
        (void)c->f->C_DestroyObject(s, pub);
        return cdx_fail(err, "%s; the new key pair was destroyed again", why);
    }
    char idhex[2 * CDX_ID_LEN + 1];
    for (size_t i = 0; i < sizeof(id); i++)
        snprintf(idhex + 2 * i, 3, "%02x", id[i]);
    cdx_log(CDX_LOG_INFO, "attest_key_created", "label=%s id=%s", CDX_ATTEST_LABEL, idhex);
    return CDX_OK;
}

cdx_err hsm_attest_key_create(hsm_custody *c, bool replace, bool *replaced)
{
    struct create_arg a = {.replace = replace};
    cdx_err err = hsm_run(c, create_op, &a, false);
    if (err == HSM_INTERRUPTED) /* the token went away mid-way: was the pair made? */
        err = cdx_fail(CDX_ERR_HSM_UNAVAILABLE,
                       "the token was lost while the attestation key was generated: check with "
                       "`cipherdex-hsm attest-key show` and run create --replace if it is "
                       "incomplete");
    if (replaced)
        *replaced = a.replaced;
    return err;
}
