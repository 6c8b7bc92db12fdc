/*
 * eng_store.h - the store interface the engine writes its records to.
 *
 * Everything the engine stores goes through these calls, as opaque byte
 * strings under ASCII keys. Backends: "memory" (in-process; unit tests and
 * explicit development use; data is lost on exit) and "redis" (hiredis:
 * TCP on loopback or a unix socket, optional AUTH, a connection per worker,
 * pipelining, replies bounded while they are read, reconnect with back-off).
 * A fault-injecting wrapper simulates a crash after the N-th write.
 *
 * Every backend is thread-safe; a transaction pins one connection until it
 * is committed or aborted. Values returned are malloc'ed and owned by the
 * caller (eng_vals_free). Store errors are CDX_ERR_STORE_UNAVAILABLE (cannot
 * reach / lost connection / crashed wrapper), CDX_ERR_RESOURCE_EXHAUSTED
 * (a reply or value over the limits), CDX_ERR_INTERNAL (protocol surprise,
 * raw reply logged), CDX_ERR_INVALID_ARGUMENT (bad key or argument).
 * Unless a function says otherwise these are the errors of every operation
 * below. On error mget, getrange, scan and watch leave their outputs empty
 * (values freed, *keys and *txn NULL); setnx's created[] and commit's
 * *committed still tell what was written.
 *
 * Functions whose error must not be dropped are CDX_MUST_CHECK. A delete is
 * not: it is idempotent, and cleanup may ignore a failed one.
 */
#ifndef ENG_STORE_H
#define ENG_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cdx_err.h"

typedef struct eng_store eng_store;

/* One fetched value. found=false: the key does not exist (data NULL). */
typedef struct eng_val {
    uint8_t *data;
    size_t len;
    bool found;
} eng_val;

/* A key/value to write. */
typedef struct eng_kv {
    const char *key;
    const uint8_t *val;
    size_t len;
} eng_kv;

/* A byte range of a value: GETRANGE key off off+len-1. */
typedef struct eng_range {
    const char *key;
    uint64_t off;
    uint64_t len;
} eng_range;

/* Free the data of n values and zero them (the array is the caller's); NULL is a no-op. */
void eng_vals_free(eng_val *v, size_t n);

/* ---- backends ---- */

/*
 * Options of the Redis backend. password_file is read at every connect
 * (never from argv or the config), with hsm_secfile_read: no symlink, a
 * regular file without group or other access, at most CDX_STORE_PASSWORD_MAX
 * bytes, one trailing "\n" or "\r\n" stripped; it needs hsm_secmem_init.
 */
typedef struct eng_redis_opts {
    const char *host;          /* "127.0.0.1"; ignored when unix_path is set */
    int port;                  /* 6379 if 0 */
    const char *unix_path;     /* unix socket instead of TCP */
    const char *user;          /* ACL user (AUTH user pass); NULL: AUTH pass if a password is set */
    const char *password_file; /* NULL: no AUTH */
    unsigned connections;      /* pool size; 0 = 8 */
    uint32_t timeout_ms;       /* connect and I/O timeout; 0 = 5000 */
    /*
     * Start although the settings can lose acknowledged writes or evict
     * ciphertexts (appendonly no, appendfsync everysec or no, an evicting
     * maxmemory-policy, or CONFIG GET refused so they cannot be checked);
     * eng_store_durability then reports the store degraded.
     */
    bool allow_unsafe_durability;
    /*
     * A server still loading its data set when the store is opened (Redis
     * restarted with the host) is waited for, up to start_wait_ms (0 = do
     * not wait), asking again every 100 ms; on_loading (optional) is called
     * between attempts with the time waited so far, so a daemon can tell
     * its supervisor it is alive. An unreachable server is not waited for.
     */
    uint32_t start_wait_ms;
    void (*on_loading)(void *arg, uint32_t waited_ms);
    void *on_loading_arg;
} eng_redis_opts;

/*
 * Open the in-process memory store (logs a loud warning: data is lost on exit).
 * Errors: CDX_ERR_RESOURCE_EXHAUSTED.
 */
CDX_MUST_CHECK cdx_err eng_store_memory_new(eng_store **out);

/*
 * Connect to Redis, check durability (eng_store_check) and return the store
 * (free with eng_store_free). o's strings are copied. Ignores SIGPIPE if it
 * is at its default disposition. With a password_file, the secret arena
 * must be initialised (hsm_secmem_init) for the store's whole life: the
 * file is read again at every connect, so it can be rotated.
 * Errors: CDX_ERR_STORE_UNAVAILABLE (cannot connect, AUTH refused, still
 * LOADING after start_wait_ms), CDX_ERR_CONFIG (unsafe durability without allow_unsafe_durability,
 * bad options, password_file missing, a symlink, not a regular file, accessible by group or others,
 * empty or too long), CDX_ERR_RESOURCE_EXHAUSTED (out of memory, or the secret arena full or not
 * initialised), CDX_ERR_INTERNAL (unexpected reply, raw reply logged). *out is NULL on error.
 */
CDX_MUST_CHECK cdx_err eng_store_redis_new(const eng_redis_opts *o, eng_store **out);

/*
 * Wrap `inner` (which the wrapper then owns) with fault injection: after
 * eng_store_fault_arm(s, n) the n-th following write (each key of a set_nx
 * batch, each deleted key, each commit counts as one write) fails and every
 * later call fails with CDX_ERR_STORE_UNAVAILABLE, as if the process had died
 * at that point; writes before it in the same batch are applied.
 * eng_store_fault_disarm() "restarts": calls work again. Also counts writes
 * (eng_store_fault_writes) so a test can enumerate every crash point.
 * Errors: CDX_ERR_INVALID_ARGUMENT (inner or out NULL),
 * CDX_ERR_RESOURCE_EXHAUSTED (inner is then still the caller's).
 */
CDX_MUST_CHECK cdx_err eng_store_fault_new(eng_store *inner, eng_store **out);

/*
 * Arm the wrapper: the nth_write-th write from now fails and the store
 * "crashes" (0: it has crashed already). Re-arming replaces the previous
 * count. A store that is not a fault wrapper (or NULL) is left alone.
 * Thread-safe.
 */
void eng_store_fault_arm(eng_store *s, uint64_t nth_write);

/* Restart the wrapper (disarmed, not crashed). Not a wrapper or NULL: no-op. Thread-safe. */
void eng_store_fault_disarm(eng_store *s);

/* Writes counted since the wrapper was made (as arming counts them); 0 if not one. Thread-safe. */
uint64_t eng_store_fault_writes(eng_store *s);

/*
 * Tests: call hook(arg) on the reading thread before every read (mget,
 * getrange) of the wrapper, so a test can hold a request at a chosen point
 * (NULL hook: none). Not a wrapper or NULL: no-op. Thread-safe.
 */
typedef void (*eng_store_read_hook)(void *arg);
void eng_store_fault_on_read(eng_store *s, eng_store_read_hook hook, void *arg);

/* Ranges read through the wrapper (getrange: segment blocks) since it was made; 0 if not one.
 * Lets a test count block reads. Thread-safe. */
uint64_t eng_store_fault_ranges(eng_store *s);

/* Close and free; NULL is a no-op. */
void eng_store_free(eng_store *s);

/* "memory", "redis" or "fault(<inner>)". */
const char *eng_store_kind(const eng_store *s);

/*
 * End a reconnect back-off now: the next call connects at once instead of
 * failing fast (the daemon's SIGHUP). Thread-safe; NULL or a backend
 * without a back-off: no-op.
 */
void eng_store_retry_now(eng_store *s);

/* ---- operations ---- */

/* Fetch n keys (MGET). out[i] for keys[i]. */
CDX_MUST_CHECK cdx_err eng_store_mget(eng_store *s, const char *const *keys, size_t n,
                                      eng_val *out);

/*
 * Fetch n byte ranges (pipelined GETRANGE). A range past the end is
 * truncated like Redis does; a missing key gives found=false.
 */
CDX_MUST_CHECK cdx_err eng_store_getrange(eng_store *s, const eng_range *r, size_t n, eng_val *out);

/*
 * Write n keys that must not exist yet (pipelined SET NX). created[i] tells
 * whether kv[i] was written (false: the key existed and was left alone).
 */
CDX_MUST_CHECK cdx_err eng_store_setnx(eng_store *s, const eng_kv *kv, size_t n, bool *created);

/* Overwrite n keys (pipelined SET); for catalog state changes only. */
CDX_MUST_CHECK cdx_err eng_store_set(eng_store *s, const eng_kv *kv, size_t n);

/*
 * Sizes of n values (pipelined STRLEN): len[i] = bytes stored under keys[i],
 * 0 when it is missing. For store-use figures (the sweep's waiting bytes).
 */
CDX_MUST_CHECK cdx_err eng_store_strlen(eng_store *s, const char *const *keys, size_t n,
                                        uint64_t *len);

/* Delete n keys (pipelined DEL); *deleted counts those that existed (may be NULL). */
cdx_err eng_store_del(eng_store *s, const char *const *keys, size_t n, uint64_t *deleted);

/*
 * One SCAN step over keys matching the glob `match` (Redis glob syntax).
 * Start with *cursor = 0; it is 0 again when the scan is complete. *keys is a
 * malloc'ed array of malloc'ed strings (eng_keys_free). A key may be
 * returned more than once; keys present throughout are returned at least once.
 */
CDX_MUST_CHECK cdx_err eng_store_scan(eng_store *s, const char *match, uint64_t *cursor,
                                      char ***keys, size_t *n);

/* Free n keys returned by eng_store_scan, and the array; NULL is a no-op. */
void eng_keys_free(char **keys, size_t n);

/* ---- optimistic transactions (WATCH/MULTI/EXEC on one connection) ---- */

typedef struct eng_txn eng_txn;

/*
 * WATCH `key` and read its current value into *cur. The connection stays
 * pinned to the transaction until commit or abort.
 */
CDX_MUST_CHECK cdx_err eng_store_watch(eng_store *s, const char *key, eng_txn **txn, eng_val *cur);

/*
 * MULTI, SET each kv, EXEC. *committed=false if a watched key changed since
 * eng_store_watch (nothing was written). Frees the transaction either way.
 * Keys must hash to one slot (braced) for a future cluster backend.
 */
CDX_MUST_CHECK cdx_err eng_store_commit(eng_txn *t, const eng_kv *kv, size_t n, bool *committed);

/* UNWATCH and free; NULL is a no-op. */
void eng_store_abort(eng_txn *t);

/*
 * Durability check: Redis' appendonly, appendfsync and maxmemory-policy,
 * read now (CONFIG GET). Writes a one-line description ("appendonly=yes
 * appendfsync=always maxmemory-policy=noeviction") into desc. Returns
 * CDX_ERR_CONFIG, its detail naming each weak setting, what it can lose and
 * the fix, when the settings can lose acknowledged writes or evict
 * ciphertexts: appendonly no; appendfsync everysec (Redis postpones the AOF
 * write while a background fsync is pending but still replies, so a
 * redis-server crash loses up to ~2 s of acknowledged writes) or no; any
 * evicting policy; CONFIG GET refused. Only appendonly yes + appendfsync
 * always + noeviction passes. The caller decides whether weak settings were
 * explicitly allowed. The memory store returns CDX_OK with "memory (volatile)".
 */
CDX_MUST_CHECK cdx_err eng_store_check(eng_store *s, char *desc, size_t cap);

#define ENG_DURABILITY_WHY_MAX 768

/* The verdict of eng_store_durability. */
typedef struct eng_durability {
    /* Acknowledged writes can be lost (weak Redis settings, or the memory store). */
    bool degraded;
    /* The settings are the kind eng_store_check refuses (CDX_ERR_CONFIG): a daemon runs
     * with them only when allow_unsafe_durability is set. Implies degraded. */
    bool refused;
    char settings[128]; /* eng_store_check's one-line description */
    /* When degraded: each weak setting and its loss window, "; "-separated, e.g.
     * "appendfsync=everysec: up to ~2 s of acknowledged writes can be lost on a
     * redis-server crash, an OS crash or a power loss". Empty otherwise. No secrets. */
    char why[ENG_DURABILITY_WHY_MAX];
} eng_durability;

/*
 * Is the store's durability degraded, and why: runs the same check as
 * eng_store_check (so it follows a CONFIG SET made after start) and fills
 * *out. Weak settings are not an error here: they are the answer.
 * Thread-safe. Errors: CDX_ERR_STORE_UNAVAILABLE (cannot ask), the check's
 * other errors except CDX_ERR_CONFIG, CDX_ERR_INVALID_ARGUMENT (s or out NULL).
 */
CDX_MUST_CHECK cdx_err eng_store_durability(eng_store *s, eng_durability *out);

#endif
