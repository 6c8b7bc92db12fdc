/*
 * eng_keyspace.h - every store key the engine reads or writes, in one place.
 *
 * The store sees only these names (docs/RECORDS.md lists them):
 *
 *   cdx:cat:<hex token>                catalog entry (token = HMAC of the name)
 *   cdx:key:<hex token>                key claim: the one index a token key
 *                                      belongs to (token = HMAC of its KCV)
 *   cdx:{<hex id>}:head                an index's head (the one mutable pointer)
 *   cdx:{<hex id>}:b:<2 hex>           an index's id-map bucket
 *   cdx:<hex id>:<kind>:<hex token>    an immutable record of an index:
 *                                      m(anifest), s(egment), t (contents),
 *                                      c(entroids)
 *
 * The head and the buckets share a hash tag ({id}) so a commit's MULTI stays
 * on one Redis slot; immutable records do not need one.
 *
 * Every function here is pure (no I/O, no allocation) and thread-safe.
 */
#ifndef ENG_KEYSPACE_H
#define ENG_KEYSPACE_H

#include <stdbool.h>
#include <stdint.h>

#include "cdx_limits.h"

#define ENG_TOKEN_LEN 16  /* store token of a record (HMAC prefix or random) */
#define ENG_SALT_LEN  16  /* per-segment salt its token is derived from */
#define ENG_BUCKETS   256 /* id-map buckets per index (fixed at format 1) */

/* Kinds of immutable records (the <kind> of cdx:<id>:<kind>:<token>). */
#define ENG_KEY_MANIFEST  'm'
#define ENG_KEY_SEGMENT   's'
#define ENG_KEY_CONTENTS  't'
#define ENG_KEY_CENTROIDS 'c'

/* SCAN pattern matching every catalog entry. */
#define ENG_KEY_CAT_PATTERN    "cdx:cat:*"
/* SCAN pattern matching every key claim. */
#define ENG_KEY_CLAIM_PATTERN  "cdx:key:*"
/* SCAN pattern matching every key of every index (and the catalog). */
#define ENG_KEY_ALL_PATTERN    "cdx:*"
/* Length of the prefix "cdx:cat:" before a catalog key's hex token. */
#define ENG_KEY_CAT_PREFIX_LEN 8
/* Length of a hex-encoded token or id. */
#define ENG_HEX_LEN            (2 * ENG_TOKEN_LEN)
/* Room for a SCAN pattern built here. */
#define ENG_KEY_PATTERN_MAX    64

/* The all-zero token: the head's and the cursors' record token. */
extern const uint8_t eng_zero_token[ENG_TOKEN_LEN];

/* Write the catalog key of tok into k (CDX_STORE_KEY_MAX bytes). */
void eng_key_cat(char *k, const uint8_t tok[ENG_TOKEN_LEN]);
/* Write the key-claim key of tok into k (CDX_STORE_KEY_MAX bytes). */
void eng_key_claim(char *k, const uint8_t tok[ENG_TOKEN_LEN]);
/* Write the head key of index id into k (CDX_STORE_KEY_MAX bytes). */
void eng_key_head(char *k, const uint8_t id[CDX_ID_LEN]);
/* Write the key of bucket b (0..ENG_BUCKETS-1) of index id into k (CDX_STORE_KEY_MAX bytes). */
void eng_key_bucket(char *k, const uint8_t id[CDX_ID_LEN], unsigned b);
/* Write the key of an immutable record (kind: ENG_KEY_*) into k (CDX_STORE_KEY_MAX bytes). */
void eng_key_rec(char *k, const uint8_t id[CDX_ID_LEN], char kind,
                 const uint8_t tok[ENG_TOKEN_LEN]);
/* The record token of bucket b: be32(b) then zeros. */
void eng_bucket_token(unsigned b, uint8_t tok[ENG_TOKEN_LEN]);

/*
 * The two SCAN patterns that together match every key of index id (immutable
 * records, then head and buckets), each at most ENG_KEY_PATTERN_MAX bytes.
 */
void eng_key_index_patterns(const uint8_t id[CDX_ID_LEN], char pat[2][ENG_KEY_PATTERN_MAX]);
/* The SCAN pattern matching the immutable records of index id. */
void eng_key_rec_pattern(const uint8_t id[CDX_ID_LEN], char pat[ENG_KEY_PATTERN_MAX]);

/*
 * The token of a catalog key. False (tok unspecified) if key is not
 * "cdx:cat:" followed by exactly ENG_HEX_LEN hex digits.
 */
bool eng_key_parse_cat(const char *key, uint8_t tok[ENG_TOKEN_LEN]);
/*
 * The token of a key-claim key. False (tok unspecified) if key is not
 * "cdx:key:" followed by exactly ENG_HEX_LEN hex digits.
 */
bool eng_key_parse_claim(const char *key, uint8_t tok[ENG_TOKEN_LEN]);
/*
 * The index id of any index key (either family). False if the key has no
 * hex id where one belongs (the catalog and claim keys included).
 */
bool eng_key_parse_index_id(const char *key, uint8_t id[CDX_ID_LEN]);
/*
 * The kind and token of an immutable-record key: out[0] = kind, out[1..]
 * = token. False if key is not exactly cdx:<32 hex>:<kind>:<32 hex>.
 */
bool eng_key_parse_rec(const char *key, uint8_t out[1 + ENG_TOKEN_LEN]);

#endif
