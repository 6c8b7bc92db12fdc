/*
 * Importing raw key bytes as an index key (hsm_import.h): the only
 * C_CreateObject of an index key. The admin tool imports key files with it;
 * the daemon only with plaintext import allowed by its configuration.
 */
#include "hsm_import.h"

#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "hsm_internal.h"

/* C_CreateObject of the template, which carries the key bytes as CKA_VALUE. */
cdx_err hsm_make_import(hsm_custody *c, CK_SESSION_HANDLE s, struct hsm_create *a, CK_ATTRIBUTE *t,
                        CK_ULONG n, CK_OBJECT_HANDLE *h, CK_RV *rv)
{
    CK_RV r = c->f->C_CreateObject(s, t, n, h);
    if (r != CKR_OK) {
        char label[CDX_LABEL_MAX + 1];
        if (a->kind == HSM_KEY_KEK)
            hsm_label_kek(a->kek_name, label);
        else
            hsm_key_label(&a->ref, label);
        *rv = r;
        return hsm_ckr_fail_create(r, "C_CreateObject", label);
    }
    return CDX_OK;
}

cdx_err hsm_index_key_import(hsm_custody *c, const uint8_t id[CDX_ID_LEN],
                             const uint8_t key[CDX_KEY_LEN], uint8_t kcv_out[CDX_KCV_LEN])
{
    struct hsm_create a = {
        .kind = HSM_KEY_INDEX, .how = HSM_HOW_IMPORT, .make = hsm_make_import, .key = key};
    a.ref.kind = HSM_KEY_INDEX;
    memcpy(a.ref.id, id, CDX_ID_LEN);
    return hsm_key_create(c, &a, kcv_out);
}

cdx_err hsm_kcv_of_bytes(const uint8_t key[CDX_KEY_LEN], uint8_t kcv[CDX_KCV_LEN])
{
    static const char msg[] = HSM_KCV_MSG;
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    cdx_err err = CDX_OK;
    if (!HMAC(EVP_sha256(), key, CDX_KEY_LEN, (const unsigned char *)msg, sizeof(msg) - 1, mac,
              &n) ||
        n < CDX_KCV_LEN)
        err = cdx_fail(CDX_ERR_INTERNAL, "HMAC-SHA256 failed computing a KCV");
    else
        memcpy(kcv, mac, CDX_KCV_LEN);
    OPENSSL_cleanse(mac, sizeof(mac));
    return err;
}
