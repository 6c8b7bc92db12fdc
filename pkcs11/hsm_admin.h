/*
 * hsm_admin.h - admin-only key custody: importing key files, KEK
 * management, listing the token's keys (docs/ADMIN.md, docs/KEYS.md).
 *
 * Built into its own library, cdx_pkcs11_admin (on top of cdx_pkcs11).
 * Only the offline admin tool cipherdex-hsm and the tests that exercise
 * these calls link it. Importing raw key bytes (hsm_import.h) is in
 * cdx_pkcs11: the daemon imports a development key only when its
 * configuration allows plaintext import (off by default); key files
 * (hsm_keyfile.h) are read by the tools, never by the daemon.
 *
 * The key-object vocabulary (hsm_key_kind, hsm_key_ref, labels, KEK names)
 * and the custody errors are those of hsm_keys.h.
 *
 * Thread-safety: as hsm_keys.h (any thread, shared hsm_custody);
 * hsm_attr_name needs no context and is thread-safe.
 */
#ifndef HSM_ADMIN_H
#define HSM_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cdx_err.h"
#include "cdx_limits.h"
#include "hsm_custody.h"
#include "hsm_import.h"
#include "hsm_keyfile.h"
#include "hsm_keys.h"

/* ---- importing index keys ---- */

/*
 * hsm_key_file_read + hsm_index_key_import, wiping the bytes right after.
 * Errors: those of both.
 */
CDX_MUST_CHECK cdx_err hsm_index_key_import_file(hsm_custody *c, const uint8_t id[CDX_ID_LEN],
                                                 const char *path, uint8_t kcv_out[CDX_KCV_LEN]);

/* ---- KEKs ---- */

/* KEK names: 1-40 of [A-Za-z0-9_.-]. NULL is invalid. Pure. */
bool hsm_kek_name_valid(const char *name);

/*
 * Generate an AES-256 KEK "cipherdex-kek-<name>" on the token (unwrap only,
 * CKA_WRAP FALSE, and a CKA_UNWRAP_TEMPLATE equal to the index-key template,
 * so that a key unwrapped under it is always sensitive and not extractable,
 * whoever unwraps it). Refused, leaving nothing, on a token where such a KEK
 * is of no use or unsafe: no RFC 5649 unwrap mechanism (opencryptoki's soft
 * token, p11-kit remoting), or a token that does not keep
 * CKA_UNWRAP_TEMPLATE (NSS softokn: the object is destroyed again).
 * Errors: CDX_ERR_INVALID_ARGUMENT (name), CDX_ERR_ALREADY_EXISTS,
 * CDX_ERR_KEY_ATTRIBUTES (template, the unwrap template not kept, or a token
 * without CKA_COPYABLE), CDX_ERR_MECHANISM_UNSUPPORTED (no unwrap mechanism;
 * kek create: no CKM_AES_KEY_GEN with CKF_GENERATE), CDX_ERR_HSM_FAILED
 * (also: the token refused the template; the detail says so), the custody
 * errors.
 */
CDX_MUST_CHECK cdx_err hsm_kek_generate(hsm_custody *c, const char *name);

/*
 * Import a KEK shared with a KMS (32 raw bytes; not kept or wiped: the
 * caller wipes them). Errors: as hsm_kek_generate.
 */
CDX_MUST_CHECK cdx_err hsm_kek_import(hsm_custody *c, const char *name,
                                      const uint8_t key[CDX_KEY_LEN]);

/*
 * Destroy a KEK. Errors: CDX_ERR_INVALID_ARGUMENT (name),
 * CDX_ERR_KEY_NOT_FOUND, CDX_ERR_KEY_AMBIGUOUS, the custody errors.
 */
CDX_MUST_CHECK cdx_err hsm_kek_destroy(hsm_custody *c, const char *name);

/* ---- the attestation key pair (docs/ATTESTATION.md; hsm_attest.h uses it) ---- */

/*
 * Generate the attestation key pair. If one exists (either half):
 * CDX_ERR_ALREADY_EXISTS, unless `replace`, which destroys every object
 * labelled CDX_ATTEST_LABEL first (*replaced tells; may be NULL): evidence
 * signed by the old key no longer verifies against the new public key. The
 * new private key is read back and destroyed again if the token did not
 * keep the template (CDX_ERR_KEY_ATTRIBUTES).
 * Errors: CDX_ERR_ALREADY_EXISTS, CDX_ERR_KEY_ATTRIBUTES,
 * CDX_ERR_MECHANISM_UNSUPPORTED (no CKM_EC_KEY_PAIR_GEN or CKM_ECDSA), the
 * custody errors.
 */
CDX_MUST_CHECK cdx_err hsm_attest_key_create(hsm_custody *c, bool replace, bool *replaced);

/* ---- listing ---- */

typedef struct hsm_key_info {
    hsm_key_kind kind; /* 0 for a "cipherdex-" object of unknown shape */
    char label[CDX_LABEL_MAX + 1];
    uint8_t id[CDX_ID_LEN];
    size_t id_len;
    unsigned long key_type;  /* CKK_*; (unsigned long)-1 = unknown */
    unsigned long value_len; /* CKA_VALUE_LEN; 0 = unknown (not reported, or reported as 0) */
    unsigned attrs;          /* HSM_A_* bits that are TRUE */
    unsigned unknown;        /* HSM_A_* bits the token did not report ("n/a") */
    unsigned wrong;          /* HSM_A_* bits that differ from the kind's template */
    bool has_kcv;
    uint8_t kcv[CDX_KCV_LEN];
} hsm_key_info;

/*
 * Every secret-key object whose label starts with "cipherdex-" (at most
 * CDX_KEYS_LISTED_MAX objects are looked at), sorted by label. On success
 * *out is malloc'ed (the caller free()s it; non-NULL even when *n is 0); on
 * error *out is NULL and *n 0.
 * Errors: CDX_ERR_RESOURCE_EXHAUSTED, the custody errors.
 */
CDX_MUST_CHECK cdx_err hsm_key_list(hsm_custody *c, hsm_key_info **out, size_t *n);

#endif
