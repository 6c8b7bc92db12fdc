/*
 * eng_cache.h - the block cache: decrypted search and vector blocks
 * (eng_search), keyed by block kind and segment token, bounded in bytes,
 * least recently used first out. Segments are immutable and their tokens
 * never reused, so an entry is never stale: nothing is invalidated but by
 * eviction (or eng_cache_clear).
 *
 * Every function is thread-safe (one mutex per cache) and accepts a NULL
 * cache (no cache configured): get misses, put and clear do nothing, stats
 * are zero.
 */
#ifndef ENG_CACHE_H
#define ENG_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "eng_keyspace.h"
#include "eng_record.h"
#include "eng_segment.h"

typedef struct eng_cache eng_cache;

/* A cache of at most max_bytes (0: caches nothing). NULL when out of memory. */
eng_cache *eng_cache_new(size_t max_bytes);

/* Free the cache, releasing its references to the blocks; NULL is a no-op. */
void eng_cache_free(eng_cache *c);

/* The block of (kind, token) with a new reference for the caller (eng_search_release it), or NULL.
 */
eng_search *eng_cache_get(eng_cache *c, eng_kind kind, const uint8_t token[ENG_TOKEN_LEN]);

/*
 * Insert s under (kind, token); the cache takes its own reference. Silently
 * skipped when s alone exceeds the bound, memory runs out, or another
 * thread inserted the same block first (theirs is kept). May evict.
 */
void eng_cache_put(eng_cache *c, eng_kind kind, const uint8_t token[ENG_TOKEN_LEN], eng_search *s);

/*
 * Empty the whole cache (every index's blocks: entries carry no index id).
 * Blocks still referenced by requests live on until released. Hit and miss
 * counters are kept.
 */
void eng_cache_clear(eng_cache *c);

/* Hits, misses, and bytes held now. */
void eng_cache_stats(eng_cache *c, uint64_t *hits, uint64_t *misses, uint64_t *bytes);

#endif
