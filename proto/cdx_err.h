/*
 * cdx_err.h - the one project-wide error enum.
 *
 * The numeric values ARE the wire status codes (docs/WIRE.md): 0-16 keep the
 * meanings of google.rpc.Code, Cipherdex's own conditions start at 100.
 * Numbers never change once released; new codes are only appended.
 *
 * Foreign codes (CK_RV, hiredis, OpenSSL) are mapped to these at the module
 * edge; the raw value goes to the log, and a human-readable detail saying
 * what to fix is kept per thread (cdx_fail / cdx_err_detail).
 */
#ifndef CDX_ERR_H
#define CDX_ERR_H

#include <stdarg.h>

typedef enum cdx_err {
    CDX_OK = 0,
    CDX_ERR_CANCELLED = 1,
    CDX_ERR_UNKNOWN = 2,
    CDX_ERR_INVALID_ARGUMENT = 3,
    CDX_ERR_DEADLINE_EXCEEDED = 4,
    CDX_ERR_NOT_FOUND = 5,
    CDX_ERR_ALREADY_EXISTS = 6,
    CDX_ERR_PERMISSION_DENIED = 7,
    CDX_ERR_RESOURCE_EXHAUSTED = 8,
    CDX_ERR_FAILED_PRECONDITION = 9,
    CDX_ERR_ABORTED = 10,
    CDX_ERR_OUT_OF_RANGE = 11,
    CDX_ERR_UNIMPLEMENTED = 12,
    CDX_ERR_INTERNAL = 13,
    CDX_ERR_UNAVAILABLE = 14,
    CDX_ERR_DATA_LOSS = 15,
    CDX_ERR_UNAUTHENTICATED = 16,

    CDX_ERR_INTEGRITY = 100,         /* a stored record failed authentication */
    CDX_ERR_ROLLBACK_DETECTED = 101, /* the store went back to an older head */
    CDX_ERR_HSM_UNAVAILABLE = 102,   /* the token cannot be reached now */
    CDX_ERR_HSM_PIN_INCORRECT = 103, /* the token rejected the PIN */
    CDX_ERR_KEY_NOT_FOUND = 104,     /* no key with that id and label */
    CDX_ERR_KEY_REPLACED = 105,      /* the key's KCV differs from the recorded one */
    CDX_ERR_KEY_AMBIGUOUS = 106,     /* several objects match one key id and label */
    CDX_ERR_STORE_UNAVAILABLE = 107,
    CDX_ERR_AUDIT_UNAVAILABLE = 108,
    CDX_ERR_BUSY = 109,
    CDX_ERR_FRAME_TOO_LARGE = 110,
    CDX_ERR_STALE = 111,
    CDX_ERR_HSM_PIN_LOCKED = 112,    /* PIN locked or expired: an officer must act */
    CDX_ERR_TOKEN_NOT_FOUND = 113,   /* no token matches the configured URI */
    CDX_ERR_KEY_ATTRIBUTES = 114,    /* a token key does not have the required attributes */
    CDX_ERR_BAD_KEY_FILE = 115,      /* key file is not base64 of exactly 32 bytes */
    CDX_ERR_BAD_WRAPPED_KEY = 116,   /* wrapped blob has the wrong length or fails to unwrap */
    CDX_ERR_MECHANISM_UNSUPPORTED = 117,
    CDX_ERR_CONFIG = 118,            /* configuration is invalid */
    CDX_ERR_MEMLOCK = 119,           /* secret memory cannot be locked */
    CDX_ERR_HSM_FAILED = 120,        /* the token refused an operation (raw CK_RV logged) */
    CDX_ERR_KEY_IN_USE = 121,        /* the key already belongs to another index */
    CDX_ERR_RATE_LIMITED = 122,      /* the principal's rate or concurrency limit: retry later */
} cdx_err;

/*
 * Marks a function whose cdx_err result must not be dropped (as libsodium
 * marks sodium_memcmp): ignoring it is a compile error under -Werror.
 */
#define CDX_MUST_CHECK __attribute__((warn_unused_result))

/* Stable upper-case name of a code ("KEY_REPLACED"); "UNKNOWN_CODE" otherwise. */
const char *cdx_err_name(cdx_err e);

/* Short generic description of a code; never NULL. */
const char *cdx_strerror(cdx_err e);

/*
 * Record a specific, human-readable detail for the calling thread and return
 * `e` unchanged, so error paths read `return cdx_fail(CDX_ERR_X, "...", ...)`.
 * The detail must never contain secrets.
 */
cdx_err cdx_fail(cdx_err e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
cdx_err cdx_vfail(cdx_err e, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

/*
 * Prefix the calling thread's current detail ("index docs: " + detail) and
 * return `e`; for adding context on the way up.
 */
cdx_err cdx_prefix(cdx_err e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The calling thread's last detail ("" when none). Valid until the next cdx_fail. */
const char *cdx_err_detail(void);

/* Forget the calling thread's detail. */
void cdx_err_clear(void);

#endif
