/*
 * hsm_provenance.h - what the token says about where a key came from, read
 * back when an index is created so the catalog can record it (docs/KEYS.md
 * "Provenance"): the key's protection attributes (CKA_LOCAL,
 * CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE, ...), with the ones the token
 * could not report marked unknown, and the token it lives on.
 *
 * Thread-safety: as hsm_keys.h. Errors: as hsm_keys.h ("the custody errors").
 */
#ifndef HSM_PROVENANCE_H
#define HSM_PROVENANCE_H

#include "cdx_err.h"
#include "hsm_keys.h"

typedef struct hsm_key_facts {
    unsigned attrs;        /* HSM_A_* bits the token reports TRUE */
    unsigned unknown;      /* HSM_A_* bits the token did not report */
    char serial[17];       /* CK_TOKEN_INFO.serialNumber, trailing blanks removed */
    char manufacturer[33]; /* CK_TOKEN_INFO.manufacturerID */
    char model[17];        /* CK_TOKEN_INFO.model */
    /* The token does not honour CKA_COPYABLE and [hsm] copyable = unsupported let the key be
     * made or adopted anyway (docs/CUSTODY.md "Token compatibility"). */
    bool copyable_not_enforced;
} hsm_key_facts;

/*
 * Read the facts of root/index key k. Errors: CDX_ERR_KEY_NOT_FOUND,
 * CDX_ERR_KEY_AMBIGUOUS, the custody errors.
 */
CDX_MUST_CHECK cdx_err hsm_key_facts_read(hsm_custody *c, const hsm_key_ref *k, hsm_key_facts *out);

/*
 * Whether the facts show a key generated on a token and never outside it:
 * 1 (CKA_LOCAL and CKA_NEVER_EXTRACTABLE both TRUE), 0 (either FALSE: the
 * key existed outside the token, imported or unwrapped), -1 (the token did
 * not say). Pure.
 */
int hsm_facts_born_on_token(const hsm_key_facts *f);

#endif
