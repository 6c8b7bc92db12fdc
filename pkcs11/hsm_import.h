/*
 * hsm_import.h - import 32 plaintext key bytes into the token as an index
 * key. Such a key existed outside the token (CKA_LOCAL FALSE): production
 * keys are generated on the token or unwrapped from a KMS; this is for the
 * development flow (docs/KEYS.md "Key file"), which the daemon refuses
 * unless its configuration allows plaintext import.
 *
 * Thread-safety and the custody errors: as hsm_keys.h.
 */
#ifndef HSM_IMPORT_H
#define HSM_IMPORT_H

#include <stdint.h>

#include "cdx_err.h"
#include "cdx_limits.h"
#include "hsm_custody.h"

/*
 * Import 32 raw key bytes as index `id` (C_CreateObject; the key is then
 * sensitive and not extractable, but not LOCAL). Does not keep or wipe
 * `key`: the caller wipes it afterwards. kcv_out may be NULL.
 * Errors: CDX_ERR_ALREADY_EXISTS, CDX_ERR_KEY_ATTRIBUTES (the token ignored
 * the template - the object is destroyed again - or lacks CKA_COPYABLE and
 * [hsm] copyable = unsupported is not set), CDX_ERR_HSM_FAILED (also: the
 * token refused the template; the detail says so), the custody errors.
 */
CDX_MUST_CHECK cdx_err hsm_index_key_import(hsm_custody *c, const uint8_t id[CDX_ID_LEN],
                                            const uint8_t key[CDX_KEY_LEN],
                                            uint8_t kcv_out[CDX_KCV_LEN]);

/*
 * The KCV the token will compute for these key bytes (HMAC-SHA256(key,
 * "cipherdex/v1/kcv")[0..8], docs/KEYS.md), computed here with OpenSSL: lets
 * an importer find the same key already on the token before importing it.
 * Errors: CDX_ERR_INTERNAL (OpenSSL failed).
 */
CDX_MUST_CHECK cdx_err hsm_kcv_of_bytes(const uint8_t key[CDX_KEY_LEN], uint8_t kcv[CDX_KCV_LEN]);

#endif
