/*
 * hsm_keyfile.h - a plaintext key file, as the development flow makes it:
 * `(umask 077; openssl rand -base64 32 > index_key.txt)`. Read by the admin
 * tool (index import) and the CLI (index create --key-file); never by the
 * daemon. Library cdx_secret (with the secret arena and the secret-file
 * reader), which needs no PKCS#11.
 *
 * Thread-safe (the secret arena has its own lock).
 */
#ifndef HSM_KEYFILE_H
#define HSM_KEYFILE_H

#include <stdbool.h>
#include <stdint.h>

#include "cdx_err.h"

/*
 * Read a base64 key file into locked memory: exactly 32 bytes after
 * decoding; whitespace anywhere is ignored. The file is opened through
 * hsm_secfile (no symlink, regular file, at most CDX_KEY_FILE_MAX bytes,
 * and, like a PIN file, not accessible by group or others: chmod 600).
 * Needs the secret arena (hsm_secmem_init). On success *key is a hsm_secmem
 * buffer of CDX_KEY_LEN bytes owned by the caller: hsm_secmem_free() it
 * (which wipes). *key is NULL on error.
 * Errors: CDX_ERR_BAD_KEY_FILE (missing, a symlink, not a regular file,
 * readable by group or others, unreadable, too long, not base64, wrong
 * length), CDX_ERR_RESOURCE_EXHAUSTED (secret arena full or not initialised).
 */
CDX_MUST_CHECK cdx_err hsm_key_file_read(const char *path, uint8_t **key);

/* True for a character of the base64 alphabet (A-Z a-z 0-9 + /; not the '=' pad). Pure. */
bool hsm_b64_char(unsigned char ch);

#endif
