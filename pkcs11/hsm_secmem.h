/*
 * hsm_secmem.h - locked, non-dumpable memory for secrets (PINs, subkeys,
 * imported key bytes on their way to the token).
 *
 * One process-wide arena: mmap'ed between guard pages, mlock'ed,
 * MADV_DONTDUMP, handed out in 64-byte slots. Every free wipes with
 * OPENSSL_cleanse. hsm_secmem_init() also sets PR_SET_DUMPABLE=0 so no core
 * file or ptrace by another uid can read the process.
 *
 * Thread-safety: the arena is process-global, behind one mutex; every
 * function may be called from any thread. A buffer belongs to whoever
 * allocated it (hsm_secmem_free it exactly once); using a buffer after the
 * last hsm_secmem_shutdown() is a bug (the memory is unmapped).
 */
#ifndef HSM_SECMEM_H
#define HSM_SECMEM_H

#include <stdbool.h>
#include <stddef.h>

#include "cdx_err.h"

/*
 * Create the arena (idempotent and reference-counted; the first call fixes
 * the size). `bytes` 0 means CDX_SECMEM_DEFAULT.
 * Errors: CDX_ERR_MEMLOCK when the arena cannot be locked (RLIMIT_MEMLOCK)
 * and `allow_unlocked` is false; CDX_ERR_RESOURCE_EXHAUSTED when mmap fails;
 * CDX_ERR_CONFIG for a size above CDX_SECMEM_MAX.
 */
CDX_MUST_CHECK cdx_err hsm_secmem_init(size_t bytes, bool allow_unlocked);

/* Drop one reference (one per successful hsm_secmem_init); the last wipes and unmaps the arena. */
void hsm_secmem_shutdown(void);

/* True when the arena is mlock'ed (false only if unlocked secrets were allowed). */
bool hsm_secmem_locked(void);

/* Zeroed secret buffer of n bytes, or NULL when the arena is full / not initialised. */
void *hsm_secmem_alloc(size_t n);

/* Wipe and release a buffer from this arena; NULL is a no-op. */
void hsm_secmem_free(void *p);

/*
 * Read all of fd, at most `max` bytes, straight into a new secret buffer of
 * max + 1 bytes (NUL-terminated), so a secret never passes through stdio or
 * the heap. Returns 0, E2BIG (more than max bytes), ENOMEM (arena full or
 * not initialised) or the errno of a failed read (an errno rather than a
 * cdx_err: hsm_secfile maps it to the caller's code). On success *out is the
 * caller's (hsm_secmem_free); on error *out is NULL. Does not close fd.
 */
int hsm_secmem_read_fd(int fd, size_t max, char **out, size_t *len);

/* Bytes in use and capacity, for metrics and tests. */
void hsm_secmem_usage(size_t *used, size_t *capacity);

#endif
