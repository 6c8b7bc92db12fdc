/*
 * hsm_keys.h - Cipherdex's token keys, the operations the daemon's engine
 * uses (docs/KEYS.md):
 *
 *   root key   label "cipherdex-root",             CKA_ID = deployment id (16 bytes)
 *   index key  label "cipherdex-index-<32 hex>",   CKA_ID = index id (16 bytes)
 *   KEK        label "cipherdex-kek-<name>",       CKA_ID = 16 random bytes
 *
 * Root and index keys: CKK_GENERIC_SECRET or CKK_SHA256_HMAC ([hsm]
 * hmac_key_type), 32 bytes, token, private, sensitive, not extractable, sign
 * only, and DERIVE, MODIFIABLE, COPYABLE all FALSE (every usage flag is
 * listed: SoftHSM defaults the missing ones to TRUE). KEKs: CKK_AES-256,
 * unwrap only, same protections, and a CKA_UNWRAP_TEMPLATE equal to the
 * index-key template. Attributes the token does not report count as wrong
 * (docs/CUSTODY.md "Token compatibility"). Creating or adopting a key on a
 * token without CKA_COPYABLE is CDX_ERR_KEY_ATTRIBUTES unless [hsm] copyable
 * = unsupported.
 * Lookup is by class + CKA_ID + label; anything but exactly one match is
 * CDX_ERR_KEY_NOT_FOUND or CDX_ERR_KEY_AMBIGUOUS.
 *
 * KCV = first 8 bytes of HMAC-SHA256(key, "cipherdex/v1/kcv"), on the token.
 *
 * Importing key bytes, key files, KEK management and listing are not here:
 * they are in hsm_admin.h, a separate library (cdx_pkcs11_admin) that only
 * the offline admin tool links, so the daemon cannot import a key.
 *
 * Every function taking a hsm_custody may also fail with
 * CDX_ERR_HSM_UNAVAILABLE, CDX_ERR_HSM_PIN_INCORRECT / _LOCKED (re-login
 * refused), CDX_ERR_HSM_FAILED or CDX_ERR_RESOURCE_EXHAUSTED ("the custody
 * errors"); a token that fails mid-call is recovered as hsm_custody.h says.
 *
 * Thread-safety: every function may be called from any thread on a shared
 * hsm_custody (each runs in a pooled session under the context's lock; the
 * handle cache has its own mutex). Creating or destroying the same key from
 * two threads at once is not an error of the library: one wins, the other
 * sees CDX_ERR_ALREADY_EXISTS or CDX_ERR_KEY_NOT_FOUND.
 * Ownership: no function keeps a pointer the caller passed in.
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
    /* Not a boolean attribute: the KEK carries a CKA_UNWRAP_TEMPLATE equal to the index-key
     * template (docs/KEYS.md), so nobody can unwrap a data key under it as extractable. Not
     * counted in HSM_NATTRS (the booleans every key reports). */
    HSM_A_UNWRAP_TEMPLATE = 1u << 17,
};
#define HSM_NATTRS 17 /* the HSM_A_* bits are 1u << 0 .. 1u << (HSM_NATTRS - 1) */

/* Name of one HSM_A_* mask value ("sensitive", "never_extractable", ...); "?" if unknown. Pure. */
const char *hsm_attr_name(unsigned bit);

/* A root or index key: which object to use. */
typedef struct hsm_key_ref {
    hsm_key_kind kind; /* HSM_KEY_ROOT or HSM_KEY_INDEX */
    uint8_t id[CDX_ID_LEN];
    /* Index keys: the key generation (docs/ROTATION.md "--new-key"). 0 is the key the index
     * was created with; `index rotate --new-key` generates N+1 with the same CKA_ID. Always 0
     * for the root key. Part of the label, the handle cache and the subkey cache. */
    uint32_t gen;
} hsm_key_ref;

/* Token label for a root/index key ("cipherdex-root", "cipherdex-index-<hex>", and from
 * generation 1 on "cipherdex-index-<hex>.g<gen>"). Pure. */
void hsm_key_label(const hsm_key_ref *k, char out[CDX_LABEL_MAX + 1]);

/* ---- root key ---- */

/*
 * Create the deployment's root key if no "cipherdex-root" exists; otherwise
 * check the existing one has this deployment id and the template attributes.
 * *created (may be NULL) tells which happened. kcv_out may be NULL.
 * Errors: CDX_ERR_KEY_AMBIGUOUS, CDX_ERR_KEY_ATTRIBUTES (template, or a
 * token without CKA_COPYABLE), CDX_ERR_ALREADY_EXISTS (a root key with
 * another deployment id exists), CDX_ERR_MECHANISM_UNSUPPORTED (no HMAC key
 * generation mechanism), the custody errors.
 */
CDX_MUST_CHECK cdx_err hsm_root_key_ensure(hsm_custody *c, const uint8_t deployment_id[CDX_ID_LEN],
                                           uint8_t kcv_out[CDX_KCV_LEN], bool *created);

/* ---- index keys ---- */

/*
 * Generate a new index key on the token (CKA_LOCAL, never extractable).
 * kcv_out may be NULL.
 * Errors: CDX_ERR_ALREADY_EXISTS (a key with this label exists),
 * CDX_ERR_KEY_ATTRIBUTES (the token ignored the template - the key is
 * destroyed again - or lacks CKA_COPYABLE), CDX_ERR_MECHANISM_UNSUPPORTED
 * (no key-generation mechanism with CKF_GENERATE for the HMAC key type),
 * CDX_ERR_HSM_FAILED (also: the token refused the template; the detail says
 * so), the custody errors.
 */
CDX_MUST_CHECK cdx_err hsm_index_key_generate(hsm_custody *c, const uint8_t id[CDX_ID_LEN],
                                              uint8_t kcv_out[CDX_KCV_LEN]);

/*
 * As hsm_index_key_generate, for key generation k->gen of index k->id
 * (k->kind must be HSM_KEY_INDEX): label "cipherdex-index-<hex>.g<gen>"
 * (generation 0: the plain label), same CKA_ID. Errors: as
 * hsm_index_key_generate, and CDX_ERR_INVALID_ARGUMENT (not an index key).
 */
CDX_MUST_CHECK cdx_err hsm_index_key_generate_ref(hsm_custody *c, const hsm_key_ref *k,
                                                  uint8_t kcv_out[CDX_KCV_LEN]);

/*
 * Unwrap a KMS-style wrapped data key (RFC 5649) with the KEK
 * "cipherdex-kek-<kek_name>" (kek_name: 1-40 of [A-Za-z0-9_.-]). The blob
 * must be exactly CDX_WRAPPED_KEY_LEN (40) bytes and unwrap to a 32-byte key.
 * The mechanism is decided by asking the token before the KEK is looked up
 * (once per context): [hsm] unwrap_mechanism, else CKM_AES_KEY_WRAP_KWP, else
 * CKM_AES_KEY_WRAP_PAD after a known-answer test. kcv_out may be NULL.
 * Errors: CDX_ERR_INVALID_ARGUMENT (KEK name), CDX_ERR_BAD_WRAPPED_KEY
 * (length, integrity, short key), CDX_ERR_MECHANISM_UNSUPPORTED (no RFC 5649
 * unwrap mechanism, or 0x210A failed the known-answer test),
 * CDX_ERR_KEY_NOT_FOUND (no such KEK), CDX_ERR_KEY_AMBIGUOUS,
 * CDX_ERR_KEY_ATTRIBUTES (the KEK - including its CKA_UNWRAP_TEMPLATE - or
 * the new key breaks its template), CDX_ERR_ALREADY_EXISTS, the custody
 * errors.
 */
CDX_MUST_CHECK cdx_err hsm_index_key_unwrap(hsm_custody *c, const uint8_t id[CDX_ID_LEN],
                                            const char *kek_name, const uint8_t *blob,
                                            size_t blob_len, uint8_t kcv_out[CDX_KCV_LEN]);

/*
 * Adopt an existing token key as index `id`: label must already be
 * "cipherdex-index-<hex id>" and every attribute must match the template
 * (CKA_VALUE_LEN may read 0 for unwrapped keys). Whether another index
 * already uses it is the catalog's check, not the token's. kcv_out may be NULL.
 * Errors: CDX_ERR_KEY_NOT_FOUND, CDX_ERR_KEY_AMBIGUOUS, CDX_ERR_KEY_ATTRIBUTES
 * (detail names each wrong attribute, or the token lacks CKA_COPYABLE), the
 * custody errors.
 */
CDX_MUST_CHECK cdx_err hsm_index_key_adopt(hsm_custody *c, const uint8_t id[CDX_ID_LEN],
                                           uint8_t kcv_out[CDX_KCV_LEN]);

/* ---- any root/index key ---- */

/*
 * KCV of a key, computed on the token (or the value cached with its handle).
 * On CDX_ERR_KEY_REPLACED kcv_out holds the KCV the token has now.
 * Errors: CDX_ERR_KEY_NOT_FOUND, CDX_ERR_KEY_AMBIGUOUS, CDX_ERR_KEY_REPLACED
 * (differs from the KCV this context saw before it lost the handle), the
 * custody errors.
 */
CDX_MUST_CHECK cdx_err hsm_key_kcv(hsm_custody *c, const hsm_key_ref *k,
                                   uint8_t kcv_out[CDX_KCV_LEN]);

/*
 * Check the key's KCV against the one the caller recorded (compared with
 * CRYPTO_memcmp). A match re-bases the context's remembered KCV.
 * Errors: CDX_ERR_KEY_REPLACED, CDX_ERR_KEY_NOT_FOUND, CDX_ERR_KEY_AMBIGUOUS,
 * the custody errors.
 */
CDX_MUST_CHECK cdx_err hsm_key_check(hsm_custody *c, const hsm_key_ref *k,
                                     const uint8_t expected[CDX_KCV_LEN]);

/*
 * Destroy a root or index key (crypto-shredding). Cached subkeys of the key
 * are wiped at once. Errors: CDX_ERR_KEY_NOT_FOUND, CDX_ERR_KEY_AMBIGUOUS,
 * the custody errors.
 */
CDX_MUST_CHECK cdx_err hsm_key_destroy(hsm_custody *c, const hsm_key_ref *k);

#endif
