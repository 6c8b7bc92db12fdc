/*
 * hsm_admin.h - admin-only key custody: importing key bytes and key files,
 * KEK management, listing the token's keys (docs/ADMIN.md, docs/KEYS.md).
 *
 * Built into its own library, cdx_pkcs11_admin (on top of cdx_pkcs11).
 * Only the offline admin tool cipherdex-hsm and the tests that exercise
 * these calls link it: a program that does not link it cannot import a key.
 * A program that must import (a development key behind an explicit switch)
 * links cdx_pkcs11_admin and calls hsm_index_key_import_file the same way;
 * nothing here depends on the admin tool.
 *
 * The key-object vocabulary (hsm_key_kind, hsm_key_ref, labels, KEK names)
 * and the custody errors are those of hsm_keys.h.
 *
 * Thread-safety: as hsm_keys.h (any thread, shared hsm_custody);
 * hsm_key_file_read, hsm_attr_name and hsm_b64_char need no context and are
 * thread-safe (the secret arena has its own lock).
 */
#ifndef HSM_ADMIN_H
#define HSM_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cdx_err.h"
#include "cdx_limits.h"
#include "hsm_custody.h"
#include "hsm_keys.h"

/* ---- importing index keys ---- */

/*
 * Import 32 raw key bytes as index `id` (C_CreateObject; the key is then
 * sensitive and not extractable, but not LOCAL). Does not keep or wipe
 * `key`: the caller wipes it afterwards. kcv_out may be NULL.
 * Errors: CDX_ERR_ALREADY_EXISTS, CDX_ERR_KEY_ATTRIBUTES (the token ignored
 * the template - the object is destroyed again - or lacks CKA_COPYABLE),
 * CDX_ERR_HSM_FAILED (also: the token refused the template; the detail says
 * so), the custody errors.
 */
CDX_MUST_CHECK cdx_err hsm_index_key_import(hsm_custody *c, const uint8_t id[CDX_ID_LEN],
                                            const uint8_t key[CDX_KEY_LEN],
                                            uint8_t kcv_out[CDX_KCV_LEN]);

/*
 * Read a base64 key file (as `openssl rand -base64 32 > index_key.txt`
 * writes it) into locked memory: exactly 32 bytes after decoding; whitespace
 * anywhere is ignored. The file is opened through hsm_secfile (no symlink,
 * regular file, at most CDX_KEY_FILE_MAX bytes); any mode is accepted.
 * Needs the secret arena (hsm_secmem_init, done by hsm_custody_open).
 * On success *key is a hsm_secmem buffer of CDX_KEY_LEN bytes owned by the
 * caller: hsm_secmem_free() it (which wipes). *key is NULL on error.
 * Errors: CDX_ERR_BAD_KEY_FILE (missing, a symlink, not a regular file,
 * unreadable, too long, not base64, wrong length),
 * CDX_ERR_RESOURCE_EXHAUSTED (secret arena full or not initialised).
 */
CDX_MUST_CHECK cdx_err hsm_key_file_read(const char *path, uint8_t **key);

/*
 * hsm_key_file_read + hsm_index_key_import, wiping the bytes right after.
 * Errors: those of both.
 */
CDX_MUST_CHECK cdx_err hsm_index_key_import_file(hsm_custody *c, const uint8_t id[CDX_ID_LEN],
                                                 const char *path, uint8_t kcv_out[CDX_KCV_LEN]);

/* True for a character of the base64 alphabet (A-Z a-z 0-9 + /; not the '=' pad). Pure. */
bool hsm_b64_char(unsigned char ch);

/* ---- KEKs ---- */

/* KEK names: 1-40 of [A-Za-z0-9_.-]. NULL is invalid. Pure. */
bool hsm_kek_name_valid(const char *name);

/*
 * Generate an AES-256 KEK "cipherdex-kek-<name>" on the token (unwrap only,
 * CKA_WRAP FALSE, and a CKA_UNWRAP_TEMPLATE equal to the index-key template,
 * so that a key unwrapped under it is always sensitive and not extractable,
 * whoever unwraps it). Errors: CDX_ERR_INVALID_ARGUMENT (name), CDX_ERR_ALREADY_EXISTS,
 * CDX_ERR_KEY_ATTRIBUTES (template, or a token without CKA_COPYABLE),
 * CDX_ERR_MECHANISM_UNSUPPORTED (kek create: no CKM_AES_KEY_GEN with
 * CKF_GENERATE), CDX_ERR_HSM_FAILED (also: the token refused the template;
 * the detail says so), the custody errors.
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
    /* Not a boolean attribute: the KEK carries a CKA_UNWRAP_TEMPLATE equal to the index-key
     * template (docs/KEYS.md), so nobody can unwrap a data key under it as extractable. */
    HSM_A_UNWRAP_TEMPLATE = 1u << 17,
};

/*
 * Name of one HSM_A_* mask value ("sensitive", "never_extractable", ...,
 * "unwrap_template"); "?" if unknown. Pure.
 */
const char *hsm_attr_name(unsigned bit);

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
