/*
 * eng_catalog.h - the catalog: one entry per index name, under the store key
 * cdx:cat:<HMAC(K_catalog, name)>, sealed under the root key, so the store
 * never sees names. An entry records the index's id, key custody, shape
 * and lifecycle state.
 *
 * The codec is pure and thread-safe. The I/O functions take a root op
 * (eng_op_root) and run on its thread; concurrent writers of one entry are
 * serialised by the store (SET NX for a claim, WATCH for an update).
 */
#ifndef ENG_CATALOG_H
#define ENG_CATALOG_H

#include <stdbool.h>
#include <stdint.h>

#include "eng.h"
#include "eng_buf.h"
#include "eng_keyspace.h"

#define ENG_SERIAL_LEN 16 /* token serial number (PKCS#11 CK_TOKEN_INFO.serialNumber) */

typedef struct op op;

enum { ENG_ST_CREATING = 1, ENG_ST_READY = 2, ENG_ST_DELETING = 3 };

/* eng_catentry.next_has: nothing; a new key pending for epochs >= next_epoch; the rotation
 * completed and the old key (next_gen, next_kcv; next_epoch = 1 if it is destroyed with the
 * index, i.e. it was owned) is still to be released and destroyed. */
enum { ENG_NEXT_NONE = 0, ENG_NEXT_PENDING = 1, ENG_NEXT_RETIRED = 2 };

typedef struct eng_catentry {
    uint8_t state;
    char name[CDX_INDEX_NAME_MAX + 1];
    uint8_t id[CDX_ID_LEN];
    uint8_t key_source; /* eng_key_source */
    uint8_t owned;
    uint8_t serial[ENG_SERIAL_LEN]; /* as read: format 2 encodes prov.serial here, blank-padded */
    uint8_t has_kcv;
    uint8_t kcv[CDX_KCV_LEN];
    uint32_t dim;
    uint8_t metric, type;
    uint32_t n_lists;
    uint64_t created_ms;
    eng_key_prov prov; /* format 2; format 1 entries decode with origin unknown */
    /* Format 4 (written only once an index has rotated with --new-key; earlier formats read
     * as generation 0 with nothing pending). key_gen: the generation (hsm_key_ref.gen) of the
     * key kcv names. next_*: a key made by `rotate --new-key` for the records of key epoch
     * next_epoch and above; it becomes the current key (and the old one is destroyed) at the
     * catalog write that completes the rotation (docs/ROTATION.md "--new-key"). */
    uint32_t key_gen;
    uint8_t next_has;
    uint32_t next_gen;
    uint8_t next_kcv[CDX_KCV_LEN];
    uint32_t next_epoch;
    uint64_t rec_version; /* version of the catalog record it was read from */
} eng_catentry;

/* Append the entry body (format 3, or 4 when key_gen or next_has is set) to b. Allocation failure
 * shows in eng_buf_ok(b). */
void eng_cat_encode(const eng_catentry *c, eng_buf *b);

/*
 * Decode an entry body (format 1 to 4) into c (rec_version 0). Rejects
 * (CDX_ERR_INTEGRITY): another format, a provenance string too long or not
 * printable, a name longer than CDX_INDEX_NAME_MAX, a state outside
 * creating..deleting, dim 0 or over CDX_DIM_MAX, truncation, trailing bytes.
 */
cdx_err eng_cat_decode(const uint8_t *p, size_t n, eng_catentry *c);

/*
 * Read the entry of `name` into c (with rec_version); *found = false if the
 * name is free. Errors: CDX_ERR_INTEGRITY (bad record, or an entry naming
 * another index), the store's and custody's.
 */
cdx_err eng_cat_read(op *ro, const char *name, eng_catentry *c, bool *found);

/*
 * Write c: claim = SET NX of a new entry (at record version 1); else an
 * update that lands only if the stored record is still at c->rec_version
 * (WATCH). *ok = false when the claim or the update lost; on success
 * c->rec_version is the new version.
 * Errors: the store's and custody's (*ok is then unspecified).
 */
cdx_err eng_cat_write(op *ro, eng_catentry *c, bool claim, bool *ok);

/* Delete the entry of `name` (absent is fine). Errors: the store's and custody's. */
cdx_err eng_cat_remove(op *ro, const char *name);

/*
 * Every catalog entry in any state (malloc'ed array, free() it; *n entries).
 * unreadable NULL: an entry that fails authentication or decoding is an
 * error. Else such entries (CDX_ERR_INTEGRITY, CDX_ERR_KEY_REPLACED) are
 * skipped, logged (catalog_entry_unreadable, with the store key) and counted
 * in *unreadable (added to; an entry SCAN returns twice counts twice).
 * Errors: CDX_ERR_INTEGRITY (an unexpected key or a bad record),
 * CDX_ERR_RESOURCE_EXHAUSTED, the store's and custody's.
 */
cdx_err eng_cat_all(eng *e, eng_catentry **out, size_t *n, size_t *unreadable);

/*
 * Key claims: one token key belongs to at most one index. A claim is the
 * store key cdx:key:<HMAC(K_catalog, "key:" || KCV)> holding a record (kind
 * key claim, sealed like the catalog) that names the index id and the
 * catalog token of the entry that holds the key. It is taken with SET NX
 * once the key's KCV is known, so two creates racing for one key (the same
 * CKA_ID adopted twice, or one wrapped blob unwrapped twice) cannot both
 * win, and it is removed by the holder's delete.
 */
typedef struct eng_keyclaim {
    uint8_t id[CDX_ID_LEN];         /* the index that holds the key */
    uint8_t cat_tok[ENG_TOKEN_LEN]; /* its catalog token (HMAC of its name) */
} eng_keyclaim;

/*
 * Take the claim on c's key (c->has_kcv must be set) for c. *ours = true if
 * c holds it now (taken now, or by an earlier attempt of the same entry);
 * else *held names the holder.
 * Errors: CDX_ERR_INTEGRITY (a forged or malformed claim), the store's and
 * custody's.
 */
cdx_err eng_keyclaim_take(op *ro, const eng_catentry *c, bool *ours, eng_keyclaim *held);

/*
 * Read the claim on key kcv; *found = false when nobody holds it. *ours (may
 * be NULL) = whether entry c (NULL: none) holds it.
 * Errors: as eng_keyclaim_take.
 */
cdx_err eng_keyclaim_read(op *ro, const uint8_t kcv[CDX_KCV_LEN], const eng_catentry *c,
                          eng_keyclaim *held, bool *found, bool *ours);

/*
 * Remove the claim on c's key if c holds it; another holder's claim, or
 * none, is left as it is. Errors: as eng_keyclaim_take.
 */
cdx_err eng_keyclaim_release(op *ro, const eng_catentry *c);

/*
 * Every key claim in the store: for each, fn(arg, store key, claim, err)
 * with err CDX_OK, or the error opening it (the claim then zeroed). fn
 * returns an error to stop. Errors: fn's, the store's and custody's.
 */
typedef cdx_err (*eng_keyclaim_fn)(void *arg, const char *key, const eng_keyclaim *k, cdx_err err);
cdx_err eng_keyclaim_each(op *ro, eng_keyclaim_fn fn, void *arg);

#endif
