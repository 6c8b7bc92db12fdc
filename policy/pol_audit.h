/*
 * pol_audit.h - the audit trail's record chain (issue 12; docs/AUDIT.md when
 * the trail is wired in). Sans-IO: this module formats and verifies lines;
 * the caller writes them (file, journald) and supplies the MAC, computed
 * with the audit subkey that custody derives on the token from the root key,
 * so this module never sees a key.
 *
 * One record is one line of printable ASCII:
 *
 *   cdxa1 SEQ TS_MS PREV BODY mac=MAC
 *
 *   SEQ   decimal, 1 for the first record ever, +1 per record, across files
 *   TS_MS decimal milliseconds since the epoch (wall clock of the writer)
 *   PREV  64 hex digits: SHA-256 of the previous record's line (without its
 *         newline); 64 zeros for record 1
 *   BODY  key=value pairs, printable ASCII without backslash; values with
 *         spaces are quoted (the caller's business: pol_audit_append checks
 *         the alphabet only)
 *   MAC   64 hex digits: HMAC-SHA256(K_audit, the line up to and without
 *         " mac=")
 *
 * What it defeats, given write access to the log but not the token: an
 * edited record (MAC), a forged record (MAC), a deleted, reordered or
 * inserted record (SEQ and PREV), a record moved from another chain (PREV).
 * A cut tail is only visible against something outside the file: the
 * writer's checkpoints (kind=checkpoint records at a fixed interval, and a
 * kind=stop record at a clean stop), which a verifier compares with the time
 * it expects the trail to reach (pol_audit_verify_end).
 *
 * Thread-safety: a writer or verifier is used by one thread at a time.
 */
#ifndef POL_AUDIT_H
#define POL_AUDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cdx_err.h"
#include "cdx_limits.h"

#define POL_AUDIT_LINE_MAX CDX_AUDIT_LINE_MAX /* one record, with its newline */
#define POL_AUDIT_HASH_LEN 32

/* HMAC-SHA256 under the audit subkey. Returns CDX_OK or the caller's error. */
typedef cdx_err (*pol_audit_mac_fn)(void *arg, const void *msg, size_t len,
                                    uint8_t out[POL_AUDIT_HASH_LEN]);

/* Where a chain stands: what the next record continues from. */
typedef struct pol_audit_pos {
    uint64_t seq;                     /* of the last record; 0: none yet */
    uint8_t hash[POL_AUDIT_HASH_LEN]; /* SHA-256 of the last record's line; zeros: none */
    uint64_t ts_ms;                   /* of the last record */
} pol_audit_pos;

/*
 * Format the record after `pos` with time ts_ms and `body` into out (cap
 * bytes, at least POL_AUDIT_LINE_MAX), newline-terminated; *len is its
 * length. On success pos moves on to it. Errors: CDX_ERR_INVALID_ARGUMENT
 * (body empty, too long, or outside the alphabet), the MAC function's.
 */
CDX_MUST_CHECK cdx_err pol_audit_append(pol_audit_pos *pos, uint64_t ts_ms, const char *body,
                                        pol_audit_mac_fn mac, void *arg, char *out, size_t cap,
                                        size_t *len);

/* A verifier: walks lines in order, from the first record or from `start`. */
typedef struct pol_audit_verifier {
    pol_audit_pos pos;
    uint64_t records, checkpoints;
    uint64_t last_checkpoint_ts; /* of the last kind=checkpoint or kind=stop record */
    bool stopped;                /* the last record is a clean stop */
    pol_audit_mac_fn mac;
    void *arg;
} pol_audit_verifier;

/* Start verifying from `start` (NULL: the first record ever). */
void pol_audit_verify_init(pol_audit_verifier *v, const pol_audit_pos *start, pol_audit_mac_fn mac,
                           void *arg);

/*
 * The next line (with or without its newline). Errors: CDX_ERR_INTEGRITY
 * with a detail naming the record (by its position: "record N") and what is
 * wrong: malformed, out of sequence (deleted, inserted or reordered), a PREV
 * that is not the previous record's hash (spliced), a MAC that does not
 * verify (edited or forged); the MAC function's errors.
 */
CDX_MUST_CHECK cdx_err pol_audit_verify_line(pol_audit_verifier *v, const char *line, size_t len);

/*
 * Where the chain stood before `line` by its own say (its SEQ - 1 and PREV;
 * ts_ms 0), so a verifier can start at a record that is not the first: a
 * writer continuing a trail, or files whose predecessors were archived. The
 * line itself is then checked by pol_audit_verify_line. Errors:
 * CDX_ERR_INTEGRITY (malformed, or SEQ 0).
 */
CDX_MUST_CHECK cdx_err pol_audit_line_head(const char *line, size_t len, pol_audit_pos *before);

/*
 * After the last line: the trail must have reached `expect_ts_ms` (0: no
 * expectation) within `interval_ms`, the writer's checkpoint interval, or
 * end with a clean stop. Errors: CDX_ERR_INTEGRITY ("the trail ends at
 * record N, TS: ... a tail may be missing").
 */
CDX_MUST_CHECK cdx_err pol_audit_verify_end(const pol_audit_verifier *v, uint64_t expect_ts_ms,
                                            uint64_t interval_ms);

#endif
