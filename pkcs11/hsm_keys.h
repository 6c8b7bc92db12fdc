/*
 * hsm_keys.h - Cipherdex's token objects (DESIGN §3).
 *
 *   root key   label "cipherdex-root",             CKA_ID = deployment id (16 bytes)
 *   index key  label "cipherdex-index-<32 hex>",   CKA_ID = index id (16 bytes)
 *   KEK        label "cipherdex-kek-<name>",       CKA_ID = 16 random bytes
 *
 * Root and index keys: CKK_GENERIC_SECRET, 32 bytes, token, private,
 * sensitive, not extractable, sign only, and DERIVE, MODIFIABLE, COPYABLE all
 * FALSE (every usage flag is listed: SoftHSM defaults the missing ones to
 * TRUE). KEKs: CKK_AES-256, unwrap only, same protections.
 * Lookup is by class + CKA_ID + label; anything but exactly one match is
 * CDX_ERR_KEY_NOT_FOUND or CDX_ERR_KEY_AMBIGUOUS.
 *
 * KCV = first 8 bytes of HMAC-SHA256(key, "cipherdex/v1/kcv"), on the token.
 *
 * Every function here may also fail with CDX_ERR_HSM_UNAVAILABLE,
 * CDX_ERR_HSM_PIN_INCORRECT / _LOCKED (re-login refused) or CDX_ERR_HSM_FAILED.
 */
#ifndef HSM_KEYS_H
#define HSM_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cdx_err.h"
#include "cdx_limits.h"
#include "hsm_custody.h"

typedef enum hsm_key_kind {
    HSM_KEY_ROOT = 1,
    HSM_KEY_INDEX = 2,
    HSM_KEY_KEK = 3,
} hsm_key_kind;

/* A root or index key: which object to use. */
typedef struct hsm_key_ref {
    hsm_key_kind kind; /* HSM_KEY_ROOT or HSM_KEY_INDEX */
    uint8_t id[CDX_ID_LEN];
} hsm_key_ref;

/* Token label for a root/index key ("cipherdex-root", "cipherdex-index-<hex>"). */
void hsm_key_label(const hsm_key_ref *k, char out[CDX_LABEL_MAX + 1]);

/* ---- root key ---- */

/*
 * Create the deployment's root key if no "cipherdex-root" exists; otherwise
 * check the existing one has this deployment id and the template attributes.
 * *created tells which happened. kcv_out may be NULL.
 * Errors: CDX_ERR_KEY_AMBIGUOUS, CDX_ERR_KEY_ATTRIBUTES, CDX_ERR_ALREADY_EXISTS
 * (a root key with another deployment id exists).
 */
cdx_err hsm_root_key_ensure(hsm_custody *c, const uint8_t deployment_id[CDX_ID_LEN],
                            uint8_t kcv_out[CDX_KCV_LEN], bool *created);

/* ---- index keys ---- */

/*
 * Generate a new index key on the token (CKA_LOCAL, never extractable).
 * Errors: CDX_ERR_ALREADY_EXISTS (a key with this id/label exists).
 */
cdx_err hsm_index_key_generate(hsm_custody *c, const uint8_t id[CDX_ID_LEN],
                               uint8_t kcv_out[CDX_KCV_LEN]);

/*
 * Unwrap a KMS-style wrapped data key (RFC 5649, CKM_AES_KEY_WRAP_PAD) with
 * the KEK "cipherdex-kek-<kek_name>". The blob must be exactly 40 bytes and
 * unwrap to a 32-byte key.
 * Errors: CDX_ERR_BAD_WRAPPED_KEY (length, integrity, short key),
 * CDX_ERR_KEY_NOT_FOUND (no such KEK), CDX_ERR_KEY_AMBIGUOUS,
 * CDX_ERR_ALREADY_EXISTS, CDX_ERR_MECHANISM_UNSUPPORTED, CDX_ERR_INVALID_ARGUMENT.
 */
cdx_err hsm_index_key_unwrap(hsm_custody *c, const uint8_t id[CDX_ID_LEN], const char *kek_name,
                             const uint8_t *blob, size_t blob_len, uint8_t kcv_out[CDX_KCV_LEN]);

/*
 * Import 32 raw key bytes (offline admin tool only; the daemon never calls
 * this). The caller wipes `key` afterwards.
 * Errors: CDX_ERR_ALREADY_EXISTS.
 */
cdx_err hsm_index_key_import(hsm_custody *c, const uint8_t id[CDX_ID_LEN],
                             const uint8_t key[CDX_KEY_LEN], uint8_t kcv_out[CDX_KCV_LEN]);

/*
 * Read a base64 key file (as `openssl rand -base64 32 > index_key.txt`
 * writes it) into locked memory: exactly 32 bytes after decoding.
 * Needs the secret arena (hsm_secmem_init, done by hsm_custody_open).
 * *key is a hsm_secmem buffer of CDX_KEY_LEN bytes; hsm_secmem_free() it.
 * Errors: CDX_ERR_BAD_KEY_FILE (missing, unreadable, not base64, wrong
 * length), CDX_ERR_RESOURCE_EXHAUSTED.
 */
cdx_err hsm_key_file_read(const char *path, uint8_t **key);

/* hsm_key_file_read + hsm_index_key_import, wiping the bytes right after. */
cdx_err hsm_index_key_import_file(hsm_custody *c, const uint8_t id[CDX_ID_LEN], const char *path,
                                  uint8_t kcv_out[CDX_KCV_LEN]);

/*
 * Adopt an existing token key as index `id`: label must already be
 * "cipherdex-index-<hex id>" and every attribute must match the template
 * (CKA_VALUE_LEN may read 0 for unwrapped keys). Whether another index
 * already uses it is the catalog's check, not the token's.
 * Errors: CDX_ERR_KEY_NOT_FOUND, CDX_ERR_KEY_AMBIGUOUS, CDX_ERR_KEY_ATTRIBUTES
 * (detail names each wrong attribute).
 */
cdx_err hsm_index_key_adopt(hsm_custody *c, const uint8_t id[CDX_ID_LEN],
                            uint8_t kcv_out[CDX_KCV_LEN]);

/* ---- KEKs ---- */

/* KEK names: 1-40 of [A-Za-z0-9_.-]. */
bool hsm_kek_name_valid(const char *name);

/*
 * Generate an AES-256 KEK on the token (unwrap only).
 * Errors: CDX_ERR_INVALID_ARGUMENT (name), CDX_ERR_ALREADY_EXISTS.
 */
cdx_err hsm_kek_generate(hsm_custody *c, const char *name);

/* Import a KEK shared with a KMS (32 raw bytes; the caller wipes them). */
cdx_err hsm_kek_import(hsm_custody *c, const char *name, const uint8_t key[CDX_KEY_LEN]);

/* Destroy a KEK. Errors: CDX_ERR_KEY_NOT_FOUND, CDX_ERR_KEY_AMBIGUOUS. */
cdx_err hsm_kek_destroy(hsm_custody *c, const char *name);

/* ---- any root/index key ---- */

/*
 * KCV of a key, computed on the token (or the value cached with its handle).
 * Errors: CDX_ERR_KEY_NOT_FOUND, CDX_ERR_KEY_AMBIGUOUS.
 */
cdx_err hsm_key_kcv(hsm_custody *c, const hsm_key_ref *k, uint8_t kcv_out[CDX_KCV_LEN]);

/*
 * Check the key's KCV against the one the caller recorded.
 * Errors: CDX_ERR_KEY_REPLACED, CDX_ERR_KEY_NOT_FOUND, CDX_ERR_KEY_AMBIGUOUS.
 */
cdx_err hsm_key_check(hsm_custody *c, const hsm_key_ref *k, const uint8_t expected[CDX_KCV_LEN]);

/*
 * Destroy a root or index key (crypto-shredding). Cached subkeys of the key
 * are wiped at once. Errors: CDX_ERR_KEY_NOT_FOUND, CDX_ERR_KEY_AMBIGUOUS.
 */
cdx_err hsm_key_destroy(hsm_custody *c, const hsm_key_ref *k);

/* ---- listing ---- */

/* Attribute bits reported for every key (HSM_A_*). */
enum {
    HSM_A_TOKEN = 1u << 0,
    HSM_A_PRIVATE = 1u << 1,
    HSM_A_SENSITIVE = 1u << 2,
    HSM_A_EXTRACTABLE = 1u << 3,
    HSM_A_ALWAYS_SENSITIVE = 1u << 4,
    HSM_A_NEVER_EXTRACTABLE = 1u << 5,
    HSM_A_LOCAL = 1u << 6,
    HSM_A_SIGN = 1u << 7,
    HSM_A_VERIFY = 1u << 8,
    HSM_A_ENCRYPT = 1u << 9,
    HSM_A_DECRYPT = 1u << 10,
    HSM_A_WRAP = 1u << 11,
    HSM_A_UNWRAP = 1u << 12,
    HSM_A_DERIVE = 1u << 13,
    HSM_A_MODIFIABLE = 1u << 14,
    HSM_A_COPYABLE = 1u << 15,
    HSM_A_DESTROYABLE = 1u << 16,
};

/* Name of one HSM_A_* mask value ("sensitive", "never_extractable", ...); "?" if unknown. */
const char *hsm_attr_name(unsigned bit);

typedef struct hsm_key_info {
    hsm_key_kind kind; /* 0 for a "cipherdex-" object of unknown shape */
    char label[CDX_LABEL_MAX + 1];
    uint8_t id[CDX_ID_LEN];
    size_t id_len;
    unsigned long key_type;  /* CKK_* */
    unsigned long value_len; /* CKA_VALUE_LEN (0 for unwrapped keys on SoftHSM) */
    unsigned attrs;          /* HSM_A_* bits that are TRUE */
    unsigned wrong;          /* HSM_A_* bits that differ from the kind's template */
    bool has_kcv;
    uint8_t kcv[CDX_KCV_LEN];
} hsm_key_info;

/*
 * Every secret-key object whose label starts with "cipherdex-". *out is
 * malloc'ed (free()), sorted by label.
 */
cdx_err hsm_key_list(hsm_custody *c, hsm_key_info **out, size_t *n);

#endif
