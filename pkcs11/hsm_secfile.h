/*
 * hsm_secfile.h - read a secret file (PIN, Redis password, base64 key file)
 * straight into locked memory: the one reader for every secret the appliance
 * takes from a file.
 *
 * The file is opened with O_NOFOLLOW (a symlink planted in a config
 * directory cannot redirect the read) and O_NONBLOCK (a FIFO under the name
 * cannot hang the caller), must be a regular file, and unless
 * the caller opts out, must not be accessible by group or others. The bytes
 * go from read(2) into a hsm_secmem buffer (never stdio or the heap); one
 * trailing "\n" and then one trailing "\r" are stripped (so "\n",
 * "\r\n" or a lone "\r", as the PIN reader always did); an empty secret is refused unless
 * the caller parses the bytes itself and says so.
 *
 * Needs the secret arena (hsm_secmem_init). Thread-safe (the arena has its
 * own lock); error details name the file and never contain its bytes.
 */
#ifndef HSM_SECFILE_H
#define HSM_SECFILE_H

#include <stdbool.h>
#include <stddef.h>

#include "cdx_err.h"

typedef struct hsm_secfile_opts {
    const char *what; /* names the file in errors: "PIN file", "Redis password_file" */
    size_t max;       /* most bytes accepted, before stripping the line ending */
    cdx_err err;      /* code for a missing, unreadable, oversized or empty file */
    bool any_mode;    /* skip the group/other access check (systemd credentials, whose
                         mode systemd owns; key files, documented as made by `openssl rand`) */
    bool allow_empty; /* return an empty secret instead of failing (a key file's parser
                         reports "0 characters" itself) */
} hsm_secfile_opts;

/*
 * Read `path` as described above. On success *out is a NUL-terminated
 * hsm_secmem buffer of *len bytes; release it with hsm_secmem_free().
 * Errors: o->err (cannot open, a symlink, not a regular file, accessible by
 * group or others, unreadable, longer than o->max, empty unless o->allow_empty);
 * CDX_ERR_RESOURCE_EXHAUSTED (secret arena full or not initialised).
 * *out is NULL and *len 0 on error.
 */
CDX_MUST_CHECK cdx_err hsm_secfile_read(const char *path, const hsm_secfile_opts *o, char **out,
                                        size_t *len);

/*
 * The same checks as hsm_secfile_read without reading the secret (for
 * `--check-config`). Needs no arena. Errors: o->err as above (except the
 * length and emptiness, which need the bytes).
 */
CDX_MUST_CHECK cdx_err hsm_secfile_check(const char *path, const hsm_secfile_opts *o);

#endif
