/*
 * eng_head.h - an index's head (the one mutable record: which manifest is
 * current, at which version) and loading the current state through it, with
 * the rollback check against this appliance's high-water mark (eng_hwmark.h).
 *
 * The functions taking an op are called on the op's thread; they lock the
 * index's mutex where they touch its shared state (mark, cached manifest).
 */
#ifndef ENG_HEAD_H
#define ENG_HEAD_H

#include <stdbool.h>
#include <stdint.h>

#include "eng_buf.h"
#include "eng_keyspace.h"
#include "eng_manifest.h"

struct idx;

typedef struct op op;

typedef struct eng_head {
    uint64_t version;
    uint8_t manifest_token[ENG_TOKEN_LEN];
    uint32_t manifest_len;
    uint64_t write_time; /* from the record header; not encoded */
    uint32_t epoch;      /* from the record header: the state's key epoch; not encoded */
} eng_head;

/* Append the head body (u8 1, u64 version, token, u32 manifest_len) to b. */
void eng_head_encode(const eng_head *h, eng_buf *b);

/*
 * Decode a head body. Rejects (CDX_ERR_INTEGRITY) another format byte,
 * truncation, trailing bytes. Does not set write_time.
 */
cdx_err eng_head_decode(const uint8_t *p, size_t n, eng_head *h);

/*
 * Read and authenticate the head of o's index; *found = false if there is
 * none. Errors: CDX_ERR_INTEGRITY (bad record, or its version differs from
 * the body's), the store's and eng_op_unseal's.
 */
cdx_err eng_read_head(op *o, eng_head *h, bool *found);

/* Load the index's persisted high-water mark (and tombstone) once, then merge it with the
 * token's copy when due (eng_hw_sync). Errors: eng_hwmark_get's, eng_hw_sync's. */
cdx_err eng_hw_load(op *o);

/*
 * Merge ix's mark with its copy on the token (hsm_mark.h) if token marks are
 * on and a merge is due (never done, older than token_mark_ms, or force):
 * both end at the higher version, with the tombstone if either has it.
 * Errors: CDX_ERR_CONFIG (the state file), the custody errors, CDX_ERR_INTEGRITY
 * (a malformed mark on the token).
 */
cdx_err eng_hw_sync(eng *e, struct idx *ix, bool force);

/* How often token marks are merged (eng_config.token_mark_ms); 0 once the token refused them. */
uint32_t eng_marks_ms(eng *e);

/* err of a token-mark write: CDX_ERR_MECHANISM_UNSUPPORTED (the token refuses data objects)
 * turns token marks off for this engine, logged once (token_marks_off), and is CDX_OK. */
cdx_err eng_marks_result(eng *e, cdx_err err);

/* CDX_ERR_ROLLBACK_DETECTED, naming the way out, when o's index was deleted (its mark is a
 * tombstone) and the store holds a copy of it at store_version; CDX_OK otherwise. Call after
 * eng_hw_load. */
cdx_err eng_tomb_check(op *o, uint64_t store_version);

/* Record a newly seen head version durably (if higher) before anything relies on it. Errors:
 * eng_hwmark_put's. */
cdx_err eng_hw_raise(op *o, uint64_t version);

/*
 * The index's current manifest (a shared reference: eng_manifest_unref it).
 * Reads the head unless !fresh and the cached manifest is younger than
 * manifest_max_age_ms and at least min_version; checks the rollback
 * high-water mark, then raises it. The op takes the state's key epoch
 * (eng_op_set_state); a manifest (or its centroids) of another epoch than
 * its head is INTEGRITY.
 * Errors: CDX_ERR_NOT_FOUND (the index is gone: forgotten here too),
 * CDX_ERR_ROLLBACK_DETECTED, CDX_ERR_INTEGRITY, CDX_ERR_ABORTED, the store's
 * and custody's, each naming the index.
 */
cdx_err eng_load_state(op *o, bool fresh, uint64_t min_version, eng_manifest **out);

/*
 * eng_load_state serving state at least min_version: a cached one, else a
 * fresh read. Errors: CDX_ERR_STALE (the store is older), eng_load_state's.
 */
cdx_err eng_load_min(op *o, uint64_t min_version, eng_manifest **m);

#endif
