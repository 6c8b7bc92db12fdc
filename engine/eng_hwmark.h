/*
 * eng_hwmark.h - rollback high-water marks: per index, the highest head
 * version this appliance has seen, kept in the state dir as the file
 * hw-<hex id> (one line: "[deleted ]<version>[ gen <generation>]":
 * "deleted" once the index was deleted, a tombstone that outlives the index so
 * that a restored copy of its records is refused instead of served again; the
 * generation of the mark as hsm_mark.h defines it, when not 0), fsynced
 * before it is relied on, so a store that serves an older head (a restored
 * backup, a lost tail, a malicious operator) is caught.
 *
 * The functions do file I/O only; two calls for the same index must not run
 * at once (the engine serialises them under the index's mutex).
 */
#ifndef ENG_HWMARK_H
#define ENG_HWMARK_H

#include <stdbool.h>
#include <stdint.h>

#include "cdx_err.h"
#include "cdx_limits.h"
#include "hsm_mark.h"

/*
 * The mark of index id in dir: all zero when it has none yet.
 * Errors: CDX_ERR_CONFIG (unreadable, or not one of the two line forms: corrupt).
 */
cdx_err eng_hwmark_get(const char *dir, const uint8_t id[CDX_ID_LEN], hsm_mark *m);

/*
 * Set the mark of index id to m durably (temporary
 * file, fsync, rename, directory fsync).
 * Errors: CDX_ERR_CONFIG (cannot write or rename).
 */
cdx_err eng_hwmark_put(const char *dir, const uint8_t id[CDX_ID_LEN], const hsm_mark *m);

/* Remove the mark of index id (a create that was undone: the index never was); a missing file is
 * fine. */
void eng_hwmark_remove(const char *dir, const uint8_t id[CDX_ID_LEN]);

#endif
