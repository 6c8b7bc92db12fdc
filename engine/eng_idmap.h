/*
 * eng_idmap.h - an index's id map: ENG_BUCKETS buckets, each a sealed
 * record mapping id tokens (HMAC(K_token, "id" 0 id)) to where the live copy
 * of the item is (cluster, segment, row) and its contents record; plus the
 * sets of buckets a request loads, and the write cache of the buckets this
 * appliance committed last.
 *
 * Bucket and bucketset functions are not thread-safe on the same object;
 * the write cache is guarded by the index's mutex.
 */
#ifndef ENG_IDMAP_H
#define ENG_IDMAP_H

#include <stdbool.h>
#include <stdint.h>

#include "eng_buf.h"
#include "eng_keyspace.h"
#include "eng_manifest.h"

typedef struct op op;

typedef struct eng_ident {
    uint8_t tok[ENG_TOKEN_LEN]; /* id token */
    uint32_t cluster;
    uint8_t seg[ENG_TOKEN_LEN]; /* segment holding the live copy */
    uint32_t row;
    uint64_t commit_version;
    uint8_t content[ENG_TOKEN_LEN]; /* zeros: no contents */
    uint32_t content_len;
    uint16_t id_len;
    char *id; /* malloc'ed, NUL-terminated */
} eng_ident;

typedef struct eng_bucket {
    uint32_t n, cap;
    eng_ident *e; /* sorted by tok */
} eng_bucket;

/* The bucket an id token belongs to. */
unsigned eng_bucket_of(const uint8_t tok[ENG_TOKEN_LEN]);

/* Free the entries (and their ids) of b, leaving it empty; b itself is not freed. */
void eng_bucket_free(eng_bucket *b);

/* Encoded size: 4 + sum(70 + id_len). */
size_t eng_bucket_encoded_len(const eng_bucket *b);

/* Append the bucket body to out. Allocation failure shows in eng_buf_ok(out). */
void eng_bucket_encode(const eng_bucket *b, eng_buf *out);

/*
 * Decode a bucket body into b (empty beforehand). Rejects (CDX_ERR_INTEGRITY):
 * counts larger than the bytes left could hold, ids of 0 or over
 * CDX_ITEM_ID_MAX bytes, contents over CDX_CONTENTS_MAX, tokens not
 * strictly ascending, truncation,
 * trailing bytes. Errors: CDX_ERR_INTEGRITY, CDX_ERR_RESOURCE_EXHAUSTED.
 */
cdx_err eng_bucket_decode(const uint8_t *p, size_t n, eng_bucket *b);

/* The entry of tok, or NULL. */
eng_ident *eng_bucket_find(eng_bucket *b, const uint8_t tok[ENG_TOKEN_LEN]);

/* Insert or replace (takes ownership of e->id on success). Errors: CDX_ERR_RESOURCE_EXHAUSTED. */
cdx_err eng_bucket_put(eng_bucket *b, eng_ident *e);

/* Remove the entry of tok; false if there was none. */
bool eng_bucket_remove(eng_bucket *b, const uint8_t tok[ENG_TOKEN_LEN]);

/* The buckets one request holds; start it zeroed. */
typedef struct eng_bucketset {
    eng_bucket *b[ENG_BUCKETS]; /* NULL: not loaded */
    bool dirty[ENG_BUCKETS];
} eng_bucketset;

/* Free the loaded buckets and zero bs (bs itself is not freed). */
void eng_bucketset_free(eng_bucketset *bs);

/* Free a heap bucketset (the write cache); NULL is a no-op. */
void eng_bucketset_drop(eng_bucketset *bs);

/*
 * Load the buckets flagged in want[] that bs lacks, at the versions m
 * records (a never-written bucket loads empty).
 * Errors: ENG_MOVED (a newer commit landed: re-read the head and retry),
 * CDX_ERR_INTEGRITY (a bucket missing, forged, replayed or malformed),
 * CDX_ERR_RESOURCE_EXHAUSTED, the store's and custody's.
 */
cdx_err eng_buckets_load(op *o, const eng_manifest *m, const bool *want, eng_bucketset *bs);

/* eng_buckets_load of every bucket. */
cdx_err eng_buckets_load_all(op *o, const eng_manifest *m, eng_bucketset *bs);

/*
 * The write cache: the buckets a commit of this appliance left behind, kept
 * for the next write to the index, which then reads no bucket it holds. They
 * are the buckets of exactly one manifest (its random token): a head naming
 * that manifest means every listed bucket version is the one cached, even if
 * another writer reused the version number after a lost tail. A writer takes
 * the cache (concurrent writers miss and read the store) and puts its own
 * buckets back only after its commit succeeded. Thread-safe (the index's mutex).
 */

/* Move the cache into bs (zeroed beforehand) if it holds the buckets of m; else leave bs. */
void eng_wcache_take(op *o, const eng_manifest *m, eng_bucketset *bs);

/*
 * Keep bs as the buckets of nm (just committed), leaving bs empty; dropped
 * instead (bs kept) above CDX_WCACHE_ITEMS_MAX entries or without memory.
 */
void eng_wcache_put(op *o, const eng_manifest *nm, eng_bucketset *bs);

/*
 * The id token of an item id: HMAC(K_token, "id" 0x00 id), first
 * ENG_TOKEN_LEN bytes. Safe on query worker threads sharing the op (needs
 * the token subkey fetched). Errors: eng_op_key's, CDX_ERR_RESOURCE_EXHAUSTED.
 */
cdx_err eng_id_token(op *o, const char *id, size_t len, uint8_t tok[ENG_TOKEN_LEN]);

/* eng_id_token through the op's token sealer (no allocation): the op's own thread only. */
cdx_err eng_id_token_w(op *o, const char *id, size_t len, uint8_t tok[ENG_TOKEN_LEN]);

#endif
