/*
 * hsm_subkey.h - purpose subkeys derived on the token (docs/KEYS.md):
 *
 *   K = HMAC-SHA256(key, "cipherdex/v1/subkey" 0x00 purpose 0x00 scope_id[16] be32(epoch))
 *
 * computed by C_Sign(CKM_SHA256_HMAC) with the root or index key; scope_id
 * is the key's CKA_ID (deployment id for root purposes, index id for index
 * purposes). docs/KEYS.md gives the bytes and test vectors.
 *
 * With a TTL > 0 subkeys are cached in locked memory and wiped when the TTL
 * expires (a janitor thread enforces it even if nobody asks again), on
 * eviction, key destruction, recovery and shutdown. A hsm_subkey handle is
 * reference-counted: hold it only for one operation and build no long-lived
 * copy (no OpenSSL context keyed with it may outlive hsm_subkey_release()).
 *
 * Thread-safety: every function may be called from any thread on a shared
 * hsm_custody; the cache has its own mutex and janitor thread. One handle
 * may be read by several threads but released once, by its owner.
 */
#ifndef HSM_SUBKEY_H
#define HSM_SUBKEY_H

#include <stddef.h>
#include <stdint.h>

#include "cdx_err.h"
#include "cdx_limits.h"
#include "hsm_custody.h"
#include "hsm_keys.h"

typedef enum hsm_purpose {
    /* root key */
    HSM_P_CATALOG = 1,
    HSM_P_AUDIT,
    /* index key */
    HSM_P_TOKEN,
    HSM_P_CENTROID,
    HSM_P_PAYLOAD,
    HSM_P_CONTENT,
    HSM_P_QUERY,
    HSM_P_MANIFEST,
} hsm_purpose;

/* ASCII purpose name as it enters the message ("payload"), NULL if unknown. */
const char *hsm_purpose_name(hsm_purpose p);

/* Kind of key a purpose belongs to (HSM_KEY_ROOT or HSM_KEY_INDEX), 0 if unknown. */
hsm_key_kind hsm_purpose_key_kind(hsm_purpose p);

/*
 * Write the derivation message into buf; returns its length, or 0 if the
 * purpose is unknown or cap too small.
 */
size_t hsm_subkey_message(hsm_purpose p, const uint8_t scope_id[CDX_ID_LEN], uint32_t epoch,
                          uint8_t *buf, size_t cap);

typedef struct hsm_subkey hsm_subkey;

/*
 * Get the subkey of `key` for (purpose, epoch). If expected_kcv is not NULL
 * the key's KCV is checked first (CDX_ERR_KEY_REPLACED on mismatch).
 * Errors: CDX_ERR_INVALID_ARGUMENT (purpose does not belong to the key's
 * kind), CDX_ERR_KEY_NOT_FOUND, CDX_ERR_KEY_AMBIGUOUS, CDX_ERR_KEY_REPLACED,
 * CDX_ERR_RESOURCE_EXHAUSTED (secret arena full), and the custody errors.
 * On success *out is a handle the caller owns: hsm_subkey_release() it.
 */
CDX_MUST_CHECK cdx_err hsm_subkey_get(hsm_custody *c, const hsm_key_ref *key,
                                      const uint8_t *expected_kcv, hsm_purpose purpose,
                                      uint32_t epoch, hsm_subkey **out);

/* The CDX_SUBKEY_LEN key bytes (locked memory), valid until release. */
const uint8_t *hsm_subkey_bytes(const hsm_subkey *sk);

/* Release a handle; NULL is a no-op. */
void hsm_subkey_release(hsm_subkey *sk);

/*
 * HMAC-SHA256(subkey, msg) on the host, with a context that is freed before
 * returning. Errors: CDX_ERR_INTERNAL (OpenSSL failure).
 */
CDX_MUST_CHECK cdx_err hsm_subkey_hmac(const hsm_subkey *sk, const void *msg, size_t len,
                                       uint8_t out[CDX_SUBKEY_LEN]);

/* Wipe every cached subkey now. */
void hsm_subkey_flush(hsm_custody *c);

#endif
