/*
 * eng_commit.h - optimistic commits of an index's state: the new manifest
 * body first (SET NX under a fresh token), the dirty id-map buckets sealed
 * meanwhile, then WATCH head / check the base version / MULTI buckets + head
 * EXEC. A lost race changes nothing visible; the caller rebases and retries
 * after eng_backoff.
 *
 * Runs on the op's thread (it starts its own helper threads, eng_par.h).
 */
#ifndef ENG_COMMIT_H
#define ENG_COMMIT_H

#include <stdbool.h>

#include "eng_idmap.h"
#include "eng_manifest.h"

typedef struct op op;

/*
 * Commit nm (a modified clone of base, eng_manifest_clone_ref) with the
 * dirty buckets of bs (may be NULL): sets nm's version and token, empties
 * its retired list (no longer kept: eng_maint.h), stamps the dirty buckets'
 * versions. Counts the commit for maintenance (the index becomes due).
 * *committed = false on a conflict (nothing visible changed). join, when
 * given, is called after the sealing and before the first store write: the
 * caller's records still being written finish there (its error: no commit).
 * On success nm becomes the index's cached state and the mark is raised.
 * Errors: CDX_ERR_NOT_FOUND (the index was deleted), CDX_ERR_INTERNAL (a
 * token collision), ENG_AGED (o->wrote_since is eng_write_window_ms old:
 * nothing committed), join's, eng_hw_raise's, the store's and custody's.
 */
cdx_err eng_commit_joined(op *o, const eng_manifest *base, eng_manifest *nm, eng_bucketset *bs,
                          cdx_err (*join)(void *), void *join_arg, bool *committed);

/* eng_commit_joined without a join. */
cdx_err eng_commit(op *o, const eng_manifest *base, eng_manifest *nm, eng_bucketset *bs,
                   bool *committed);

/*
 * eng_commit for a rewrite that writes everything again on each attempt
 * (training, compaction, rotation): ENG_AGED becomes
 * CDX_ERR_FAILED_PRECONDITION, the detail naming [engine] gc_grace_ms.
 */
cdx_err eng_commit_rewrite(op *o, const eng_manifest *base, eng_manifest *nm, eng_bucketset *bs,
                           bool *committed);

/*
 * After a lost commit: sleep a random 0..2^attempt ms (capped at 64 ms) so
 * two writers that keep colliding fall out of step instead of starving one.
 */
void eng_backoff(unsigned attempt);

#endif
