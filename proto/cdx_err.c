#include "cdx_err.h"

#include <stdio.h>
#include <string.h>

static _Thread_local char detail[512];

struct desc {
    cdx_err code;
    const char *name;
    const char *text;
};

static const struct desc table[] = {
    {CDX_OK, "OK", "success"},
    {CDX_ERR_CANCELLED, "CANCELLED", "the operation was cancelled"},
    {CDX_ERR_UNKNOWN, "UNKNOWN", "unknown error"},
    {CDX_ERR_INVALID_ARGUMENT, "INVALID_ARGUMENT", "invalid argument"},
    {CDX_ERR_DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", "deadline exceeded"},
    {CDX_ERR_NOT_FOUND, "NOT_FOUND", "not found"},
    {CDX_ERR_ALREADY_EXISTS, "ALREADY_EXISTS", "already exists"},
    {CDX_ERR_PERMISSION_DENIED, "PERMISSION_DENIED", "permission denied"},
    {CDX_ERR_RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED", "resource exhausted"},
    {CDX_ERR_FAILED_PRECONDITION, "FAILED_PRECONDITION", "failed precondition"},
    {CDX_ERR_ABORTED, "ABORTED", "aborted by a concurrent change; retry"},
    {CDX_ERR_OUT_OF_RANGE, "OUT_OF_RANGE", "out of range"},
    {CDX_ERR_UNIMPLEMENTED, "UNIMPLEMENTED", "not implemented"},
    {CDX_ERR_INTERNAL, "INTERNAL", "internal error"},
    {CDX_ERR_UNAVAILABLE, "UNAVAILABLE", "service unavailable"},
    {CDX_ERR_DATA_LOSS, "DATA_LOSS", "data loss"},
    {CDX_ERR_UNAUTHENTICATED, "UNAUTHENTICATED", "not authenticated"},
    {CDX_ERR_INTEGRITY, "INTEGRITY", "a stored record failed its integrity check"},
    {CDX_ERR_ROLLBACK_DETECTED, "ROLLBACK_DETECTED", "the store was rolled back"},
    {CDX_ERR_HSM_UNAVAILABLE, "HSM_UNAVAILABLE", "the key token is unavailable"},
    {CDX_ERR_HSM_PIN_INCORRECT, "HSM_PIN_INCORRECT", "the token rejected the PIN"},
    {CDX_ERR_KEY_NOT_FOUND, "KEY_NOT_FOUND", "key not found on the token"},
    {CDX_ERR_KEY_REPLACED, "KEY_REPLACED", "the token key was replaced (KCV mismatch)"},
    {CDX_ERR_KEY_AMBIGUOUS, "KEY_AMBIGUOUS", "several token objects match the key"},
    {CDX_ERR_STORE_UNAVAILABLE, "STORE_UNAVAILABLE", "the store is unavailable"},
    {CDX_ERR_AUDIT_UNAVAILABLE, "AUDIT_UNAVAILABLE", "the audit trail is unavailable"},
    {CDX_ERR_BUSY, "BUSY", "busy; retry later"},
    {CDX_ERR_FRAME_TOO_LARGE, "FRAME_TOO_LARGE", "frame too large"},
    {CDX_ERR_STALE, "STALE", "state older than requested"},
    {CDX_ERR_HSM_PIN_LOCKED, "HSM_PIN_LOCKED", "the token PIN is locked or expired"},
    {CDX_ERR_TOKEN_NOT_FOUND, "TOKEN_NOT_FOUND", "no token matches the configured URI"},
    {CDX_ERR_KEY_ATTRIBUTES, "KEY_ATTRIBUTES", "the token key has the wrong attributes"},
    {CDX_ERR_BAD_KEY_FILE, "BAD_KEY_FILE", "the key file is not base64 of 32 bytes"},
    {CDX_ERR_BAD_WRAPPED_KEY, "BAD_WRAPPED_KEY", "the wrapped key is invalid"},
    {CDX_ERR_MECHANISM_UNSUPPORTED, "MECHANISM_UNSUPPORTED",
     "the token lacks a required mechanism"},
    {CDX_ERR_CONFIG, "CONFIG", "invalid configuration"},
    {CDX_ERR_MEMLOCK, "MEMLOCK", "secret memory cannot be locked"},
    {CDX_ERR_HSM_FAILED, "HSM_FAILED", "the token refused the operation"},
    {CDX_ERR_KEY_IN_USE, "KEY_IN_USE", "the key already belongs to another index"},
    {CDX_ERR_RATE_LIMITED, "RATE_LIMITED", "rate limited; retry after the hint"},
};

static const struct desc *find(cdx_err e)
{
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (table[i].code == e)
            return &table[i];
    return NULL;
}

const char *cdx_err_name(cdx_err e)
{
    const struct desc *d = find(e);
    return d ? d->name : "UNKNOWN_CODE";
}

const char *cdx_strerror(cdx_err e)
{
    const struct desc *d = find(e);
    return d ? d->text : "unknown error code";
}

cdx_err cdx_vfail(cdx_err e, const char *fmt, va_list ap)
{
    vsnprintf(detail, sizeof(detail), fmt, ap);
    return e;
}

cdx_err cdx_fail(cdx_err e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cdx_vfail(e, fmt, ap);
    va_end(ap);
    return e;
}

const char *cdx_err_detail(void)
{
    return detail;
}

void cdx_err_clear(void)
{
    detail[0] = '\0';
}

cdx_err cdx_prefix(cdx_err e, const char *fmt, ...)
{
    char old[sizeof(detail)];
    memcpy(old, detail, sizeof(old));
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof(detail))
        snprintf(detail + n, sizeof(detail) - (size_t)n, "%s", old);
    return e;
}
