/*
 * app_attest.h - the daemon's attestation statement for one index
 * (docs/ATTESTATION.md): the claims read from the token now
 * (hsm_attest_facts_read), the provenance recorded when the index was
 * created, the client's nonce and the appliance's clock, encoded as DER
 * PkixEvidence (pol_evidence.h) and signed on the token with the
 * attestation key (hsm_attest_sign over SHA-256 of the TBS DER).
 *
 * Thread-safety: app_attest_make may run from any worker thread (custody
 * and OpenSSL's EVP_PKEY verify/encode are thread-safe; `ak` is only read).
 */
#ifndef APP_ATTEST_H
#define APP_ATTEST_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "cdx_err.h"
#include "eng.h"
#include "hsm_custody.h"

/* The "assurance" claim: what a statement proves, in one sentence for software tokens. */
#define APP_ATTEST_ASSURANCE_SOFT                                                                  \
    "appliance-asserted: no vendor attestation; the claims were read from the token by the "       \
    "Cipherdex appliance and signed with the token's attestation key (a software token: the "      \
    "key lives in a file on the appliance host)"
#define APP_ATTEST_ASSURANCE_HW                                                                    \
    "appliance-asserted: no vendor attestation; the claims were read from the token by the "       \
    "Cipherdex appliance and signed with the token's non-extractable attestation key"

/*
 * The statement for index `info` (its id, name, KCV and provenance as the
 * catalog has them) with the client's nonce (CDX_ATTEST_NONCE_MIN..MAX
 * bytes) at time now_s, signed with the token's attestation key whose
 * public half is `ak`. certs/certs_len: DER certificates (concatenated)
 * for intermediateCertificates, or NULL/0. *der malloc'ed.
 * Errors: CDX_ERR_INVALID_ARGUMENT (nonce size), CDX_ERR_KEY_REPLACED (the
 * key's KCV on the token differs from the catalog's), CDX_ERR_KEY_NOT_FOUND,
 * CDX_ERR_KEY_AMBIGUOUS, CDX_ERR_KEY_ATTRIBUTES (the attestation key
 * changed under the daemon: its signature does not verify with `ak`), the
 * custody errors, CDX_ERR_RESOURCE_EXHAUSTED.
 */
CDX_MUST_CHECK cdx_err app_attest_make(hsm_custody *c, EVP_PKEY *ak, const eng_index_info *info,
                                       const uint8_t *nonce, size_t nonce_len, int64_t now_s,
                                       const uint8_t *certs, size_t certs_len, uint8_t **der,
                                       size_t *der_len);

/*
 * Read the PEM certificates of `path` (at least one, the first certifying
 * the attestation key `ak`: a vendor's attestation certificate and its
 * chain, or the operator CA's certificate from `attest-key csr`) as DER,
 * concatenated, for app_attest_make's intermediateCertificates. *der
 * malloc'ed. Errors: CDX_ERR_CONFIG (the file cannot be read, holds no
 * certificate or something else, or more than CDX_EVIDENCE_MAX / 4 bytes of
 * them), CDX_ERR_KEY_ATTRIBUTES (ak is NULL, or the first certificate's
 * public key is not ak), CDX_ERR_RESOURCE_EXHAUSTED.
 */
CDX_MUST_CHECK cdx_err app_attest_certs_load(const char *path, EVP_PKEY *ak, uint8_t **der,
                                             size_t *der_len);

#endif
