/*
 * eng_hwmark.h - rollback high-water marks: per index, the highest head
 * version this appliance has seen, kept in the state dir as the file
 * hw-<hex id> (one decimal line), fsynced before it is relied on, so a store
 * that serves an older head (a restored backup, a lost tail, a malicious
 * operator) is caught.
 *
 * The functions do file I/O only; two calls for the same index must not run
 * at once (the engine serialises them under the index's mutex).
 */
#ifndef ENG_HWMARK_H
#define ENG_HWMARK_H

#include <stdint.h>

#include "cdx_err.h"
#include "cdx_limits.h"

/*
 * The mark of index id in dir; 0 when it has none yet.
 * Errors: CDX_ERR_CONFIG (unreadable, or not one decimal number: corrupt).
 */
cdx_err eng_hwmark_get(const char *dir, const uint8_t id[CDX_ID_LEN], uint64_t *version);

/*
 * Set the mark of index id to version durably (temporary file, fsync,
 * rename, directory fsync). Errors: CDX_ERR_CONFIG (cannot write or rename).
 */
cdx_err eng_hwmark_put(const char *dir, const uint8_t id[CDX_ID_LEN], uint64_t version);

/* Remove the mark of index id (a deleted index); a missing file is fine. */
void eng_hwmark_remove(const char *dir, const uint8_t id[CDX_ID_LEN]);

#endif
