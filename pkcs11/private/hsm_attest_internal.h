/*
 * hsm_attest_internal.h - shared by hsm_attest.c (the daemon's side) and
 * hsm_attest_admin.c (creating the key pair, admin library). Internal to
 * pkcs11/; run inside an hsm_op_fn (a session, the shared lock).
 */
#ifndef HSM_ATTEST_INTERNAL_H
#define HSM_ATTEST_INTERNAL_H

#include <stdint.h>

#include <p11-kit/pkcs11.h>

#include "cdx_err.h"
#include "hsm_custody.h"

/* DER of the P-256 curve's OID (1.2.840.10045.3.1.7), the CKA_EC_PARAMS of the key pair. */
#define HSM_P256_PARAMS_LEN 10
extern const uint8_t HSM_P256_PARAMS[HSM_P256_PARAMS_LEN];

/* Find the objects of class cls labelled CDX_ATTEST_LABEL: *n = 0, 1 or 2 (several). */
cdx_err hsm_attest_find_half(hsm_custody *c, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
                             CK_OBJECT_HANDLE *h, unsigned *n, CK_RV *rv);

/*
 * The attestation private key h is sensitive, not extractable, EC, sign
 * only. Errors: CDX_ERR_KEY_ATTRIBUTES (names what is wrong), a CK_RV
 * failure recovery may cure (stored in *rv).
 */
cdx_err hsm_attest_check_private(hsm_custody *c, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                                 CK_RV *rv);

#endif
