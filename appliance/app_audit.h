/*
 * app_audit.h - the audit trail's writer (docs/AUDIT.md): records chained
 * and MACed by policy/pol_audit.h, appended to a file in a directory of the
 * appliance's own, made durable by a sync policy, checkpointed at a fixed
 * interval, rotated by size, optionally mirrored to syslog (journald), and
 * refusing work when a record cannot be written (fail closed) unless the
 * operator chose fail-open.
 *
 * Files: DIR/audit.log is the current file; a full one is renamed to
 * DIR/audit-SEQ.log (SEQ: its first record, 20 digits, so names sort in
 * chain order) and the chain goes on in a new audit.log. At open the chain
 * continues from the last record of audit.log, or of the newest rotated
 * file; a torn last line (a crash mid-write) is cut off and announced in the
 * start record.
 *
 * Durability (app_audit_sync): every record is written to the file (write(2))
 * before app_audit_write returns, so a crash of the daemon loses nothing;
 * what a power loss may take depends on the policy: ALWAYS (fdatasync before
 * returning, grouped: one sync covers every writer waiting) nothing;
 * INTERVAL the records of the last interval; NONE what the kernel had not
 * written back.
 *
 * Failure: a record that cannot be written (disk full, I/O error, the
 * directory or file gone) puts the trail in the failed state: with fail
 * closed every later app_audit_check/app_audit_write answers
 * CDX_ERR_AUDIT_UNAVAILABLE until a write succeeds again (the timer retries
 * every sync interval, reopening the file); with fail open writes are
 * dropped and counted, and the first record after recovery says how many
 * were lost (kind=gap). A file replaced or removed under the writer is
 * noticed by the timer, which starts a new file with a kind=reopen record.
 *
 * Thread-safe: any number of threads may write at once.
 */
#ifndef APP_AUDIT_H
#define APP_AUDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cdx_err.h"
#include "pol_audit.h"

typedef enum app_audit_sync {
    APP_AUDIT_SYNC_INTERVAL = 0, /* fdatasync every interval_ms (the default) */
    APP_AUDIT_SYNC_ALWAYS,       /* fdatasync before a write returns (grouped) */
    APP_AUDIT_SYNC_NONE,         /* never: the kernel writes back when it likes */
} app_audit_sync;

typedef struct app_audit_config {
    const char *dir; /* the trail's directory (created 0700 if missing) */
    app_audit_sync sync;
    uint32_t interval_ms;   /* INTERVAL's sync period, and the retry period when failed */
    uint32_t checkpoint_ms; /* a kind=checkpoint record this often (0: none) */
    uint64_t rotate_bytes;  /* rotate audit.log once it is this large (0: never) */
    bool fail_open;         /* keep serving when records cannot be written */
    bool syslog;            /* mirror every line to syslog (LOG_AUTHPRIV), chain intact */
    pol_audit_mac_fn mac;   /* HMAC under the audit subkey */
    void *mac_arg;
} app_audit_config;

typedef struct app_audit app_audit;

typedef enum app_audit_state {
    APP_AUDIT_OK = 0,
    APP_AUDIT_FAILED,      /* fail closed: requests are refused */
    APP_AUDIT_FAILED_OPEN, /* fail open: records are being lost */
} app_audit_state;

typedef struct app_audit_stats {
    app_audit_state state;
    uint64_t records;  /* written by this process */
    uint64_t lost;     /* dropped in fail-open mode, in total */
    uint64_t failures; /* writes that failed */
    uint64_t syncs;    /* fdatasync calls */
    uint64_t last_seq; /* the chain's head */
    char error[160];   /* why the last write failed ("" when ok) */
} app_audit_stats;

/*
 * Open the trail and write its start record (`start_body`, e.g.
 * "kind=start ..."). Errors: CDX_ERR_CONFIG (bad settings),
 * CDX_ERR_AUDIT_UNAVAILABLE (the directory or file cannot be created, read
 * or written), CDX_ERR_INTEGRITY (the last record does not verify under the
 * MAC key: someone edited it, or the trail belongs to another deployment;
 * `cipherdex-hsm audit verify` says more), the MAC function's errors.
 */
CDX_MUST_CHECK cdx_err app_audit_open(const app_audit_config *cfg, const char *start_body,
                                      app_audit **out);

/*
 * Write a clean-stop record (`stop_body`, NULL: none), sync, and free.
 * NULL is a no-op.
 */
void app_audit_close(app_audit *a, const char *stop_body);

/*
 * May work that must be audited start? CDX_OK, or CDX_ERR_AUDIT_UNAVAILABLE
 * (failed, fail closed) with the reason. NULL trail: CDX_OK.
 */
CDX_MUST_CHECK cdx_err app_audit_check(app_audit *a);

/*
 * Append one record with body `body` (pol_audit's alphabet: use
 * app_audit_value for values) and make it as durable as the sync policy
 * says. Errors: CDX_ERR_AUDIT_UNAVAILABLE (not written; in fail-open mode
 * this is counted and CDX_OK returned), CDX_ERR_INVALID_ARGUMENT (a body
 * outside the alphabet: a bug, never written). NULL trail: CDX_OK.
 */
CDX_MUST_CHECK cdx_err app_audit_write(app_audit *a, const char *body);

void app_audit_stats_get(app_audit *a, app_audit_stats *out);

/*
 * The last `n` records of the current file (fewer just after a rotation),
 * oldest first, as one malloc'ed text of whole lines each ending in '\n'
 * (*text NULL and *len 0 when there are none). Errors:
 * CDX_ERR_AUDIT_UNAVAILABLE (the file cannot be read), CDX_ERR_RESOURCE_EXHAUSTED.
 */
CDX_MUST_CHECK cdx_err app_audit_tail(app_audit *a, size_t n, char **text, size_t *len);

/* Name of a state: "ok", "failed", "failed-open". */
const char *app_audit_state_name(app_audit_state s);

/*
 * A value for a body: bytes outside [A-Za-z0-9._:/@+-] become %XX, so any
 * principal or name fits the alphabet and cannot forge another key=value.
 * Writes at most cap bytes with a NUL; a value too long ends in "...".
 */
void app_audit_value(char *out, size_t cap, const char *in);

/* Test hook: the file's name in `dir` of the current file ("audit.log"). */
#define APP_AUDIT_CURRENT "audit.log"

#endif
