/* The daemon's attestation statement for one index (app_attest.h). */
#include "app_attest.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/sha.h>

#include "cdx_limits.h"
#include "hsm_attest.h"
#include "hsm_provenance.h"
#include "pol_evidence.h"

#ifndef CDX_VERSION
#define CDX_VERSION "0.1.0"
#endif

/* The HSM_A_* bit behind each boolean key claim. */
static const struct {
    pol_ev_claim claim;
    unsigned bit;
} BOOL_CLAIMS[] = {
    {POL_EV_EXTRACTABLE, HSM_A_EXTRACTABLE},
    {POL_EV_SENSITIVE, HSM_A_SENSITIVE},
    {POL_EV_NEVER_EXTRACTABLE, HSM_A_NEVER_EXTRACTABLE},
    {POL_EV_LOCAL, HSM_A_LOCAL},
    {POL_EV_ALWAYS_SENSITIVE, HSM_A_ALWAYS_SENSITIVE},
    {POL_EV_CAP_SIGN, HSM_A_SIGN},
    {POL_EV_CAP_VERIFY, HSM_A_VERIFY},
    {POL_EV_CAP_ENCRYPT, HSM_A_ENCRYPT},
    {POL_EV_CAP_DECRYPT, HSM_A_DECRYPT},
    {POL_EV_CAP_WRAP, HSM_A_WRAP},
    {POL_EV_CAP_UNWRAP, HSM_A_UNWRAP},
    {POL_EV_CAP_DERIVE, HSM_A_DERIVE},
    {POL_EV_TOKEN_OBJECT, HSM_A_TOKEN},
    {POL_EV_PRIVATE, HSM_A_PRIVATE},
    {POL_EV_MODIFIABLE, HSM_A_MODIFIABLE},
    {POL_EV_COPYABLE, HSM_A_COPYABLE},
    {POL_EV_DESTROYABLE, HSM_A_DESTROYABLE},
};

static cdx_err claims(pol_ev_builder *b, const hsm_attest_facts *f, const eng_index_info *info,
                      const uint8_t *nonce, size_t nonce_len, int64_t now_s,
                      const uint8_t ak_id[32])
{
    cdx_err err;
#define TRY(x)                                                                                     \
    do {                                                                                           \
        if ((err = (x)))                                                                           \
            return err;                                                                            \
    } while (0)
    TRY(pol_ev_add_bytes(b, POL_EV_NONCE, nonce, nonce_len));
    TRY(pol_ev_add_time(b, POL_EV_TIMESTAMP, now_s));
    TRY(pol_ev_add_bytes(b, POL_EV_AK_ID, ak_id, 32));

    TRY(pol_ev_add_utf8(b, POL_EV_MANUFACTURER, f->manufacturer));
    TRY(pol_ev_add_utf8(b, POL_EV_MODEL, f->model));
    TRY(pol_ev_add_utf8(b, POL_EV_HW_VERSION, f->hw_version));
    TRY(pol_ev_add_utf8(b, POL_EV_SERIAL, f->serial));
    TRY(pol_ev_add_utf8(b, POL_EV_SW_NAME, "cipherdex"));
    TRY(pol_ev_add_utf8(b, POL_EV_SW_VERSION, CDX_VERSION));
    TRY(pol_ev_add_utf8(b, POL_EV_FW_VERSION, f->fw_version));
    TRY(pol_ev_add_utf8(b, POL_EV_TOKEN_LABEL, f->label));
    TRY(pol_ev_add_bool(b, POL_EV_SOFTWARE_TOKEN, f->software));
    TRY(pol_ev_add_utf8(b, POL_EV_ASSURANCE,
                        f->software ? APP_ATTEST_ASSURANCE_SOFT : APP_ATTEST_ASSURANCE_HW));

    TRY(pol_ev_add_bytes(b, POL_EV_KEY_ID, info->id, CDX_ID_LEN));
    TRY(pol_ev_add_utf8(b, POL_EV_INDEX_NAME, info->name));
    TRY(pol_ev_add_bytes(b, POL_EV_KCV, f->kcv, CDX_KCV_LEN));
    if (f->key_type == (unsigned long)-1)
        TRY(pol_ev_add_absent(b, POL_EV_KEY_TYPE));
    else
        TRY(pol_ev_add_int(b, POL_EV_KEY_TYPE, (int64_t)f->key_type));
    for (size_t i = 0; i < sizeof(BOOL_CLAIMS) / sizeof(BOOL_CLAIMS[0]); i++) {
        if (f->unknown & BOOL_CLAIMS[i].bit)
            TRY(pol_ev_add_absent(b, BOOL_CLAIMS[i].claim));
        else
            TRY(pol_ev_add_bool(b, BOOL_CLAIMS[i].claim, (f->attrs & BOOL_CLAIMS[i].bit) != 0));
    }
    if (!f->mechs_known)
        TRY(pol_ev_add_absent(b, POL_EV_ALLOWED_MECH));
    for (size_t i = 0; f->mechs_known && i < f->nmechs; i++)
        TRY(pol_ev_add_int(b, POL_EV_ALLOWED_MECH, (int64_t)f->mechs[i]));
    /* Provenance, as recorded when the index was created (KeyProvenance). */
    const eng_key_prov *p = &info->prov;
    TRY(pol_ev_add_utf8(b, POL_EV_ORIGIN, eng_key_origin_name((eng_key_origin)p->origin)));
    if (p->origin == ENG_ORIGIN_UNWRAPPED && p->kek[0])
        TRY(pol_ev_add_utf8(b, POL_EV_KEK_NAME, p->kek));
    hsm_key_facts kf = {.attrs = p->attrs, .unknown = p->unknown};
    int born = p->origin == ENG_ORIGIN_UNKNOWN ? -1 : hsm_facts_born_on_token(&kf);
    if (born < 0)
        TRY(pol_ev_add_absent(b, POL_EV_BORN_ON_TOKEN));
    else
        TRY(pol_ev_add_bool(b, POL_EV_BORN_ON_TOKEN, born == 1));
    TRY(pol_ev_add_bool(b, POL_EV_COPYABLE_NOT_ENFORCED,
                        (p->flags & ENG_PROV_COPYABLE_NOT_ENFORCED) != 0));
#undef TRY
    return CDX_OK;
}

cdx_err app_attest_make(hsm_custody *c, EVP_PKEY *ak, const eng_index_info *info,
                        const uint8_t *nonce, size_t nonce_len, int64_t now_s, const uint8_t *certs,
                        size_t certs_len, uint8_t **der, size_t *der_len)
{
    *der = NULL;
    *der_len = 0;
    if (!nonce || nonce_len < CDX_ATTEST_NONCE_MIN || nonce_len > CDX_ATTEST_NONCE_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "the nonce must be %d to %d bytes, not %zu",
                        CDX_ATTEST_NONCE_MIN, CDX_ATTEST_NONCE_MAX, nonce_len);
    hsm_attest_facts f;
    /* The index's current key: after `rotate --new-key`, generation key_gen. */
    hsm_key_ref k = {.kind = HSM_KEY_INDEX, .gen = info->key_gen};
    memcpy(k.id, info->id, CDX_ID_LEN);
    uint8_t ak_id[32], digest[32], rs[64];
    uint8_t *tbs = NULL, *sig = NULL;
    size_t tbs_len = 0, sig_len = 0;
    pol_ev_builder *b = NULL;
    pol_ev *check = NULL;
    cdx_err err;
    if ((err = hsm_attest_facts_read(c, &k, info->kcv, &f)) || (err = pol_ev_key_id(ak, ak_id)) ||
        (err = pol_ev_builder_new(&b)) ||
        (err = claims(b, &f, info, nonce, nonce_len, now_s, ak_id)) ||
        (err = pol_ev_builder_tbs(b, &tbs, &tbs_len)))
        goto out;
    SHA256(tbs, tbs_len, digest);
    if ((err = hsm_attest_sign(c, digest, rs)) || (err = pol_ev_sig_der(rs, &sig, &sig_len)) ||
        (err = pol_ev_assemble(tbs, tbs_len, ak_id, sig, sig_len, certs, certs_len, der, der_len)))
        goto out;
    /* What leaves must verify with the key the daemon announces: the attestation key replaced
     * under the running daemon is an error here, not a statement nobody can check. */
    if ((err = pol_ev_parse(*der, *der_len, &check)) ||
        (err = pol_ev_verify(check, ak, nonce, nonce_len, now_s, 0))) {
        err = cdx_fail(CDX_ERR_KEY_ATTRIBUTES,
                       "the statement signed on the token does not verify with the attestation "
                       "public key loaded at start (%s): was the attestation key replaced? "
                       "restart the daemon",
                       cdx_err_detail());
        goto out;
    }
out:
    if (err) {
        free(*der);
        *der = NULL;
        *der_len = 0;
    }
    pol_ev_free(check);
    pol_ev_builder_free(b);
    free(tbs);
    free(sig);
    OPENSSL_cleanse(&f, sizeof(f));
    return err;
}

cdx_err app_attest_certs_load(const char *path, EVP_PKEY *ak, uint8_t **der, size_t *der_len)
{
    *der = NULL;
    *der_len = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return cdx_fail(CDX_ERR_CONFIG, "[keys] attest_certificates: %s: cannot open", path);
    uint8_t *buf = NULL;
    size_t len = 0, n = 0;
    cdx_err err = CDX_OK;
    X509 *x;
    ERR_clear_error();
    while ((x = PEM_read_X509(f, NULL, NULL, NULL)) != NULL) {
        if (n++ == 0 && (!ak || EVP_PKEY_eq(X509_get0_pubkey(x), ak) != 1))
            err = cdx_fail(CDX_ERR_KEY_ATTRIBUTES,
                           "[keys] attest_certificates: %s: the first certificate does not "
                           "certify the token's attestation key%s",
                           path, ak ? "" : " (there is none)");
        unsigned char *d = NULL;
        int dl = err ? 0 : i2d_X509(x, &d);
        X509_free(x);
        if (!err && (dl <= 0 || len + (size_t)dl > CDX_EVIDENCE_MAX / 4))
            err = dl <= 0 ? cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory")
                          : cdx_fail(CDX_ERR_CONFIG,
                                     "[keys] attest_certificates: %s: more than %d bytes of "
                                     "certificates",
                                     path, CDX_EVIDENCE_MAX / 4);
        uint8_t *nb = err ? NULL : realloc(buf, len + (size_t)dl);
        if (!err && !nb)
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        if (nb) {
            buf = nb;
            memcpy(buf + len, d, (size_t)dl);
            len += (size_t)dl;
        }
        OPENSSL_free(d);
        if (err)
            break;
    }
    /* the loop ends at the end of the file (PEM_R_NO_START_LINE) or at something else */
    unsigned long e = ERR_peek_last_error();
    if (!err && (n == 0 || (e && ERR_GET_REASON(e) != PEM_R_NO_START_LINE)))
        err = cdx_fail(CDX_ERR_CONFIG, "[keys] attest_certificates: %s: %s", path,
                       n ? "something after the certificates is not a PEM certificate"
                         : "no PEM certificate");
    ERR_clear_error();
    fclose(f);
    if (err) {
        free(buf);
        return err;
    }
    *der = buf;
    *der_len = len;
    return CDX_OK;
}
