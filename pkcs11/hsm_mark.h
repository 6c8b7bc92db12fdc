/*
 * hsm_mark.h - rollback marks kept on the token, so that every appliance of
 * a deployment (and a rebuilt one with an empty state directory) learns the
 * highest head version any of them recorded for an index, and that an index
 * was deleted (docs/ADMIN.md "Rollback marks").
 *
 * One data object per index: CKO_DATA, token, private,
 * CKA_APPLICATION "cipherdex", CKA_LABEL "cipherdex-mark-<32 hex index id>",
 * CKA_VALUE = "cdxmark1" be64(version) u8(flags) be32(generation) (21 bytes;
 * flag 1: the index was deleted). The token is trusted (like the keys on it);
 * the mark guards against the store, not against a PIN holder.
 *
 * Within a generation marks only grow (hsm_mark_raise merges: the higher
 * version, deleted once deleted). Only hsm_mark_set (an operator's
 * accept-rollback) lowers one: it starts a new generation, which every
 * appliance then adopts as it is (its own higher mark of an older generation
 * is what the operator accepted to lose).
 * A change writes a new object and destroys the old (tokens keep a data
 * object's value read-only); several objects with the mark's label (two
 * appliances writing at once, or an interrupted change) are merged into one.
 *
 * Every function may fail with the custody errors (hsm_keys.h); a mark whose
 * value is not 21 bytes with the magic is CDX_ERR_INTEGRITY; a token that
 * refuses data objects is CDX_ERR_MECHANISM_UNSUPPORTED on write. A token
 * without private data objects (NSS softokn) gets a public one (logged once:
 * hsm_mark_public).
 */
#ifndef HSM_MARK_H
#define HSM_MARK_H

#include <stdbool.h>
#include <stdint.h>

#include "cdx_err.h"
#include "cdx_limits.h"
#include "hsm_custody.h"

typedef struct hsm_mark {
    uint64_t version; /* highest head version recorded */
    bool deleted;     /* the index was deleted */
    uint32_t gen;     /* generation: grows with every accept-rollback */
} hsm_mark;

/* The mark of index id; *found false (and *m zero) when the token has none. */
CDX_MUST_CHECK cdx_err hsm_mark_read(hsm_custody *c, const uint8_t id[CDX_ID_LEN], hsm_mark *m,
                                     bool *found);

/*
 * Merge m into the token's mark (creating it). Same generation: the higher
 * version, deleted if either is. The token's generation is later: nothing is
 * written and *out is the token's mark (the caller adopts it). m's is later
 * (the token lost its mark): m is written. *out (may be NULL) receives what
 * the token holds afterwards.
 */
CDX_MUST_CHECK cdx_err hsm_mark_raise(hsm_custody *c, const uint8_t id[CDX_ID_LEN],
                                      const hsm_mark *m, hsm_mark *out);

/*
 * Set the mark to m's version and tombstone in a new generation (above both
 * m's and the token's): accept-rollback, which may lower the version or
 * undelete. *out (may be NULL) receives the mark written.
 */
CDX_MUST_CHECK cdx_err hsm_mark_set(hsm_custody *c, const uint8_t id[CDX_ID_LEN], const hsm_mark *m,
                                    hsm_mark *out);

/* Remove the mark (an index whose create was undone); none is fine. */
CDX_MUST_CHECK cdx_err hsm_mark_remove(hsm_custody *c, const uint8_t id[CDX_ID_LEN]);

#endif
