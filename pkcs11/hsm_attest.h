/*
 * hsm_attest.h - the token side of key attestation (docs/ATTESTATION.md):
 * the attestation key pair, signing with it, and reading the claims of an
 * index key and of its token at the time of a request.
 *
 * The attestation key pair is EC P-256, generated on the token, labelled
 * CDX_ATTEST_LABEL ("cipherdex-attest") with a random 16-byte CKA_ID. The
 * private key: CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE TRUE, CKA_EXTRACTABLE
 * FALSE, CKA_SIGN TRUE and nothing else (DECRYPT, UNWRAP, DERIVE,
 * SIGN_RECOVER FALSE), CKA_COPYABLE and CKA_MODIFIABLE FALSE. It signs with
 * C_Sign(CKM_ECDSA) over a SHA-256 digest computed on the host, on the
 * custody's own function list and sessions (libp11 is not in the build: one
 * module load, one function list; docs/CUSTODY.md); the token returns r||s,
 * which the caller turns into a DER ECDSA-Sig-Value (pol_ev_sig_der).
 *
 * Every function may also fail with the custody errors of hsm_keys.h
 * (CDX_ERR_HSM_UNAVAILABLE, CDX_ERR_HSM_PIN_INCORRECT / _LOCKED,
 * CDX_ERR_HSM_FAILED, CDX_ERR_RESOURCE_EXHAUSTED).
 * Thread-safety: as hsm_keys.h (any thread, shared custody context).
 */
#ifndef HSM_ATTEST_H
#define HSM_ATTEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "cdx_err.h"
#include "cdx_limits.h"
#include "hsm_custody.h"
#include "hsm_keys.h"

/* Creating the key pair (hsm_attest_key_create) is admin-only: hsm_admin.h. */

/*
 * The attestation public key (from the public-key object's CKA_EC_POINT),
 * after checking the private key (sensitive, not extractable, EC, sign
 * only) and that the two halves belong together (a signature over a fixed
 * digest made on the token verifies with the public key). *out: the
 * caller's (EVP_PKEY_free).
 * Errors: CDX_ERR_KEY_NOT_FOUND (no attestation key: `cipherdex-hsm
 * attest-key create`), CDX_ERR_KEY_AMBIGUOUS, CDX_ERR_KEY_ATTRIBUTES (the
 * private key is weaker than the template, not P-256, or the halves do not
 * match), the custody errors.
 */
CDX_MUST_CHECK cdx_err hsm_attest_key_public(hsm_custody *c, EVP_PKEY **out);

/*
 * ECDSA P-256 signature on the token over a 32-byte digest: rs = r||s.
 * Errors: CDX_ERR_KEY_NOT_FOUND, CDX_ERR_KEY_AMBIGUOUS, the custody errors.
 */
CDX_MUST_CHECK cdx_err hsm_attest_sign(hsm_custody *c, const uint8_t digest[32], uint8_t rs[64]);

/* What the token says about an index key and itself, read for one request. */
typedef struct hsm_attest_facts {
    unsigned attrs;         /* HSM_A_* bits the token reports TRUE */
    unsigned unknown;       /* HSM_A_* bits it did not report */
    unsigned long key_type; /* CKK_*; (unsigned long)-1 = unknown */
    uint8_t kcv[CDX_KCV_LEN];
    bool mechs_known; /* CKA_ALLOWED_MECHANISMS reported and not empty */
    size_t nmechs;
    unsigned long mechs[CDX_ATTEST_MECHS_MAX];
    char manufacturer[33], model[17], serial[17], label[33]; /* CK_TOKEN_INFO */
    char hw_version[12], fw_version[12];                     /* "major.minor" */
    bool software; /* a software token (as hsm_custody_token) */
} hsm_attest_facts;

/*
 * Read the facts of root/index key k now: its attributes
 * (C_GetAttributeValue), CKA_ALLOWED_MECHANISMS when the token reports it,
 * its KCV computed on the token and checked against `expected_kcv` (may be
 * NULL), and the token's CK_TOKEN_INFO.
 * Errors: CDX_ERR_KEY_NOT_FOUND, CDX_ERR_KEY_AMBIGUOUS, CDX_ERR_KEY_REPLACED
 * (the KCV differs), the custody errors.
 */
CDX_MUST_CHECK cdx_err hsm_attest_facts_read(hsm_custody *c, const hsm_key_ref *k,
                                             const uint8_t *expected_kcv, hsm_attest_facts *out);

#endif
