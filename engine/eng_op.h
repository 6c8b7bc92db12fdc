/*
 * eng_op.h - the per-request operation context (op, eng_int.h): the key a
 * request works under (an index key, or the root key for the catalog), the
 * purpose subkeys it fetched from custody, and its sealers; sealing and
 * opening records under them; and the open / load / release frame of the
 * public operations.
 *
 * An op belongs to one thread. Worker threads get a copy (eng_op_worker)
 * that shares the subkeys, which must all be fetched (eng_op_key) before
 * the workers start: a worker fetches none, it only builds its own sealers.
 */
#ifndef ENG_OP_H
#define ENG_OP_H

#include <stdbool.h>
#include <stdint.h>

#include "eng_int.h"
#include "eng_manifest.h"

/* Start an op on the root key (catalog records). End it with eng_op_end. */
void eng_op_root(eng *e, op *o);

/* Start an op on index ix (its key and KCV). End it with eng_op_end. */
void eng_op_index(eng *e, struct idx *ix, op *o);

/*
 * Resolve `name` (eng_idx_get) and start an op on it. Nothing to end on error.
 * Errors: those of eng_idx_get.
 */
cdx_err eng_op_open(eng *e, const char *name, op *o);

/* Release the op's sealers and subkeys. The op may be started again. */
void eng_op_end(op *o);

/*
 * The op's subkey for purpose p, fetched from custody on first use (and
 * timed as the keys stage); owned by the op. Not for worker copies.
 * Errors: those of hsm_subkey_get (custody, key check).
 */
cdx_err eng_op_key(op *o, hsm_purpose p, hsm_subkey **out);

/*
 * The op's sealer for purpose p (one per op and thread), set up on first
 * use; owned by the op. Errors: eng_op_key's, eng_sealer_init's.
 */
cdx_err eng_op_sealer(op *o, hsm_purpose p, eng_sealer **out);

/*
 * Make ep the op's epoch (records are sealed under it; its subkeys are the
 * op's, for workers too): the op's sealers are freed and its subkeys
 * released or swapped with the spare slot. The op's own thread, no worker
 * running, no subkey or sealer pointer of the op held across the call.
 */
void eng_op_set_epoch(op *o, uint32_t ep);

/* eng_op_set_epoch(m->epoch), min_epoch = m's; the index remembers both. Same rules. */
void eng_op_set_state(op *o, const eng_manifest *m);

/* ks = the key fields of catalog entry c. Pure. */
void eng_keyset_from_cat(eng_keyset *ks, const eng_catentry *c);

/*
 * Re-pick the key of the op's epoch from o->ks (after ks changed): a different key releases
 * the op's sealers and subkeys. Same rules as eng_op_set_epoch.
 */
void eng_op_rekey(op *o);

/*
 * Re-read the index's catalog entry: its keys go to o->ks and to the index (eng_idx_set_keys)
 * and the op re-keys. The op's own thread. Errors: eng_cat_read's.
 */
cdx_err eng_op_keys_refresh(op *o);

/* Free the op's sealers only (a worker copy's end). */
void eng_op_sealers_free(op *o);

/*
 * A copy of o for another thread: it shares o's subkeys (fetched beforehand:
 * a worker must not fetch) and has its own sealers. End with eng_op_sealers_free.
 */
void eng_op_worker(const op *o, op *w);

/*
 * Seal a record of this op's key (kind, token, version bound in) into out.
 * Errors: eng_op_sealer's, eng_rec_seal_s's (CDX_ERR_RESOURCE_EXHAUSTED).
 */
cdx_err eng_op_seal(op *o, hsm_purpose p, eng_kind kind, const uint8_t tok[ENG_TOKEN_LEN],
                    uint64_t version, const uint8_t *pt, size_t len, eng_buf *out);

/*
 * Open a record of this op's key into out (timed as the decrypt stage),
 * with the subkey of the epoch its header names (the op's, or its spare
 * slot's on the op's own thread); version UINT64_MAX = take the header's.
 * h (may be NULL) gets the header.
 * Errors: CDX_ERR_INTEGRITY (malformed, forged, or bound to another kind,
 * token, version or key; its epoch below the op's min_epoch; another epoch
 * than the op's on a worker thread), eng_op_key's, CDX_ERR_RESOURCE_EXHAUSTED.
 */
cdx_err eng_op_unseal(op *o, hsm_purpose p, eng_kind kind, const uint8_t tok[ENG_TOKEN_LEN],
                      uint64_t version, const uint8_t *rec, size_t len, eng_rec_hdr *h,
                      eng_buf *out);

/*
 * Fetch the one record at key and open it as eng_op_unseal does. *found =
 * false (CDX_OK, out untouched) when the key does not exist.
 * Errors: eng_store_mget's, eng_op_unseal's.
 */
cdx_err eng_op_fetch_open(op *o, const char *key, hsm_purpose p, eng_kind kind,
                          const uint8_t tok[ENG_TOKEN_LEN], uint64_t version, eng_rec_hdr *h,
                          eng_buf *out, bool *found);

/* Flags of eng_with_op / eng_with_manifest. */
enum {
    ENG_WITH_FRESH = 1, /* read the head (eng_load_state fresh), never the cached manifest */
    ENG_WITH_NAMED = 2, /* name the index in errors after the open (eng_in_index) */
};

typedef cdx_err (*eng_op_fn)(op *o, void *arg);
typedef cdx_err (*eng_manifest_fn)(op *o, eng_manifest *m, void *arg);

/*
 * The frame of a public operation on index `name`: open an op, run fn, end
 * the op. Returns fn's error; an open error is returned as is.
 */
cdx_err eng_with_op(eng *e, const char *name, unsigned flags, eng_op_fn fn, void *arg);

/*
 * eng_with_op that also loads the current state (eng_load_state, fresh with
 * ENG_WITH_FRESH) and passes it to fn, which must not keep it: the frame
 * drops the reference. Errors: eng_op_open's, eng_load_state's, fn's.
 */
cdx_err eng_with_manifest(eng *e, const char *name, unsigned flags, eng_manifest_fn fn, void *arg);

#endif
