/*
 * eng_store_internal.h - what the store backends (eng_store_*.c) and the
 * store tests share behind eng_store.h. Not for the rest of the engine.
 *
 * The generic layer (eng_store.c) validates every argument, zeroes the
 * outputs and handles n == 0 before it calls a backend, and frees partial
 * outputs when a backend fails. So a backend may assume: n >= 1, keys valid,
 * values within limits, outputs zeroed; on error it leaves every out[i].data
 * either NULL or malloc'ed.
 *
 * The helpers below keep no state and are thread-safe.
 */
#ifndef ENG_STORE_INTERNAL_H
#define ENG_STORE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "eng_store.h"

struct eng_store_ops {
    const char *(*kind)(const eng_store *s);
    void (*free)(eng_store *s);
    cdx_err (*mget)(eng_store *s, const char *const *keys, size_t n, eng_val *out);
    cdx_err (*getrange)(eng_store *s, const eng_range *r, size_t n, eng_val *out);
    cdx_err (*setnx)(eng_store *s, const eng_kv *kv, size_t n, bool *created);
    cdx_err (*set)(eng_store *s, const eng_kv *kv, size_t n);
    cdx_err (*strlen)(eng_store *s, const char *const *keys, size_t n, uint64_t *len);
    cdx_err (*del)(eng_store *s, const char *const *keys, size_t n, uint64_t *deleted);
    cdx_err (*scan)(eng_store *s, const char *match, uint64_t *cursor, char ***keys, size_t *n);
    cdx_err (*watch)(eng_store *s, const char *key, eng_txn **txn, eng_val *cur);
    /* Must free t whatever it returns. */
    cdx_err (*commit)(eng_txn *t, const eng_kv *kv, size_t n, bool *committed);
    void (*abort)(eng_txn *t);
    /*
     * desc: the settings in one line. why (cap wcap, zeroed by the caller):
     * when durability is below standard, each weak setting and what it can
     * lose, "; "-separated (the memory store fills it too). Returns
     * CDX_ERR_CONFIG for settings a daemon refuses unless
     * allow_unsafe_durability is set.
     */
    cdx_err (*check)(eng_store *s, char *desc, size_t cap, char *why, size_t wcap);
    /* Optional (NULL: nothing to reset): end a reconnect back-off now. */
    void (*retry_now)(eng_store *s);
};

/* Every backend's store struct starts with this. */
struct eng_store {
    const struct eng_store_ops *ops;
};

/* Every backend's transaction struct starts with this. */
struct eng_txn {
    eng_store *store;
};

/* true when `s` is a valid store key: 1..CDX_STORE_KEY_MAX bytes of printable ASCII, no space. */
bool eng_store_key_ok(const char *s);

/*
 * Copy len bytes into a fresh found value (data is never NULL for a found
 * value, even when len is 0). Errors: CDX_ERR_RESOURCE_EXHAUSTED.
 */
CDX_MUST_CHECK cdx_err eng_val_copy(eng_val *v, const void *data, size_t len);

/*
 * Redis glob match (SCAN MATCH semantics, case-sensitive): `*`, `?`,
 * `[abc]`, `[^abc]`, `[a-z]`, `\x` escapes (also inside classes); an
 * unterminated class ends at the end of the pattern, as in Redis.
 */
bool eng_glob_match(const char *pat, size_t plen, const char *str, size_t slen);

/*
 * Test hook for the Redis backend's bounded reply reader (eng_redis_reply.c):
 * parse `buf` with a hiredis reader that uses the backend's reply callbacks,
 * allowing at most `elem_budget` array elements in the reply. *max_array
 * receives the largest array the callbacks allocated (0 if none).
 * Returns CDX_OK when one complete reply was parsed, CDX_ERR_RESOURCE_EXHAUSTED
 * when the callbacks refused it, CDX_ERR_INTERNAL on a protocol error,
 * CDX_ERR_UNAVAILABLE when buf holds no complete reply.
 */
CDX_MUST_CHECK cdx_err eng_redis_reader_probe(const char *buf, size_t len, int elem_budget,
                                              size_t *max_array);

#endif
