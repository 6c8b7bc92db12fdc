/*
 * eng_redis_int.h - what the files of the Redis store backend share. Private
 * to them: the rest of the engine sees only eng_store.h.
 *
 * The backend (eng_store_redis_new) is cut by concept:
 *   eng_redis_reply.c  reply objects that hiredis' reader builds through our
 *                      callbacks, bounded while they are read; Redis error
 *                      replies mapped to cdx_err; the reader test hook.
 *   eng_redis_resp.c   a sans-IO reader for scalar replies (eng_redis_resp.h).
 *   eng_redis_conn.c   one connection (connect, AUTH, reads, writes,
 *                      pipelines, the bulk reader over eng_redis_resp) and
 *                      the pool (back-off, retry-once on a dropped link).
 *   eng_redis_txn.c    WATCH / MULTI / EXEC / UNWATCH on a pinned connection.
 *   eng_store_redis.c  the other operations, the durability check, new/free.
 *
 * Naming: types are rd_*; functions with external linkage are eng_rd_*.
 *
 * Thread-safety: an rd_conn is used by one thread at a time (the pool hands
 * it out exclusively); the rd_store pool fields are guarded by its mutex and
 * only eng_redis_conn.c touches them. Everything else in rd_store is set in
 * eng_store_redis_new and read-only afterwards.
 */
#ifndef ENG_REDIS_INT_H
#define ENG_REDIS_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "cdx_err.h"
#include "eng_redis_resp.h"
#include "eng_store_internal.h"

#define RD_SMALL_ARGS 6 /* arguments of a command built without its own argv */

/* ---- reply objects (eng_redis_reply.c) ---- */

/*
 * One reply as our callbacks build it. type is a REDIS_REPLY_* value. Owned
 * by whoever read it; free with eng_rd_reply_free. A handler may move str
 * out (set it to NULL) to keep the bytes without a copy.
 */
typedef struct rd_reply {
    int type;
    long long integer;
    char *str; /* STRING, STATUS, ERROR: malloc'ed, NUL-terminated (may hold NULs) */
    size_t len;
    struct rd_reply **elem; /* ARRAY */
    size_t n;
} rd_reply;

/* Why the callbacks refused the reply being read (rd_conn.refused). */
enum { RD_REFUSED_NONE, RD_REFUSED_ARRAY, RD_REFUSED_STRING, RD_REFUSED_TOTAL };

/*
 * One connection. The first four fields are the bounds the reply callbacks
 * enforce (set before each read by eng_redis_conn.c); an operation may reset
 * `bytes` at the start of a call and set `broken` to have the connection
 * closed instead of pooled.
 */
typedef struct rd_conn {
    redisContext *c;
    long long elem_budget; /* array elements the reply being read may still allocate */
    uint64_t bytes;        /* string bytes accepted during the current call */
    int refused;           /* why the callbacks refused the reply being read */
    size_t max_array;      /* largest array allocated (for the test hook) */
    bool broken;           /* out of sync or failed: close instead of pooling */
    bool dropped;          /* the connection itself failed: an idempotent call may retry */
    /* The bulk reader (eng_redis_conn.c): its reply state and staged input, in[in_pos..in_len). */
    eng_resp resp;
    uint8_t *in;
    size_t in_pos, in_len;
} rd_conn;

/*
 * Make `rr` build rd_reply objects bounded by k's fields: an array larger
 * than k->elem_budget elements (in all, for one reply), a string over
 * CDX_STORE_VALUE_MAX, or strings adding up to more than CDX_STORE_REPLY_MAX
 * for k->bytes are refused before anything is allocated for them; k->refused
 * then says why and the reader fails (the connection is out of sync).
 */
void eng_rd_reader_bind(redisReader *rr, rd_conn *k);

/* Free a reply and everything it holds; NULL is a no-op. */
void eng_rd_reply_free(rd_reply *r);

/*
 * Copy foreign text (a Redis error, hiredis' errstr) for a log value or an
 * error detail: no quotes, no control or non-ASCII bytes, at most cap - 1
 * bytes, always NUL-terminated (cap >= 1). Returns dst.
 */
const char *eng_rd_clean_text(char *dst, size_t cap, const char *src, size_t len);

/*
 * A reply of a type `op` cannot return, or an error reply. Logs it and
 * returns: for an error reply CDX_ERR_STORE_UNAVAILABLE (NOPERM, NOAUTH,
 * WRONGPASS, OOM, LOADING, BUSY, MISCONF, READONLY, MASTERDOWN, TRYAGAIN,
 * CLUSTERDOWN: with what to fix) or CDX_ERR_INTERNAL (any other error);
 * CDX_ERR_INTERNAL for any other type. The connection stays in sync.
 */
CDX_MUST_CHECK cdx_err eng_rd_unexpected(const rd_reply *r, const char *op);

/* true when r is the status reply `s` ("OK", "QUEUED", "PONG"). */
bool eng_rd_is_status(const rd_reply *r, const char *s);

/* Move a string reply's bytes into v as a found value (no copy); r keeps no bytes. */
void eng_rd_steal_val(rd_reply *r, eng_val *v);

/* ---- connections and the pool (eng_redis_conn.c) ---- */

/*
 * The store. The pool fields (mu .. last_err) belong to eng_redis_conn.c;
 * the rest is set by eng_store_redis_new and read-only afterwards.
 */
typedef struct rd_store {
    struct eng_store base;
    char *host, *unix_path, *user, *password_file;
    char addr[160]; /* for messages: "host:port" or "unix:path" */
    int port;
    unsigned max_conns;
    uint32_t timeout_ms;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    rd_conn **idle;
    size_t n_idle;
    unsigned n_open; /* idle + in use + being connected */
    long long backoff_ms;
    long long retry_at_ms;
    bool loading; /* the last connect found the server loading its data set */
    char last_err[256];
} rd_store;

static inline rd_store *rd_store_of(eng_store *s)
{
    return (rd_store *)s;
}

/* One pipelined command. argv points at small[] unless the builder sets it. */
typedef struct rd_cmd {
    int argc;
    const char **argv;
    size_t *argvlen;
    long long elem_budget; /* array elements its reply may hold (0: a scalar reply) */
    const char *small[RD_SMALL_ARGS];
    size_t small_len[RD_SMALL_ARGS];
} rd_cmd;

/* Append an argument of len bytes to a command built in small[] (at most RD_SMALL_ARGS). */
static inline void rd_cmd_arg(rd_cmd *c, const void *p, size_t len)
{
    c->small[c->argc] = p;
    c->small_len[c->argc] = len;
    c->argc++;
}

/* Append a NUL-terminated argument. */
static inline void rd_cmd_str(rd_cmd *c, const char *s)
{
    rd_cmd_arg(c, s, strlen(s));
}

/* A batch of commands sent by eng_rd_pipeline. */
typedef struct rd_pipe {
    const char *op;
    size_t first, n; /* commands first..n-1 */
    /* Build command i; arguments must stay valid until the next build call. */
    void (*build)(void *ctx, size_t i, rd_cmd *cmd);
    /* Handle reply i; may steal strings from r. Returns an error to report. */
    cdx_err (*reply)(void *ctx, size_t i, rd_reply *r);
    void *ctx;
    size_t *done; /* when set: count of replies handled (for resuming after a drop) */
    /*
     * When set, replies are read by the bulk reader (scalar replies only: an
     * array is a protocol surprise) and reply i's bulk string may hold at
     * most bulk_max(ctx, i) bytes.
     */
    uint64_t (*bulk_max)(void *ctx, size_t i);
} rd_pipe;

/*
 * Send p's commands in round trips (bounded in commands and bytes) and
 * hand every reply, in order, to p->reply. A handler's error is remembered
 * while the remaining replies are still read, so the connection stays in
 * sync, and the first one is returned. Errors of the connection itself:
 * CDX_ERR_STORE_UNAVAILABLE (lost or timed out; k->dropped when a retry may
 * help), CDX_ERR_RESOURCE_EXHAUSTED (a reply over the bounds, out of
 * memory), CDX_ERR_INTERNAL (protocol error); after those k->broken is set.
 */
CDX_MUST_CHECK cdx_err eng_rd_pipeline(rd_conn *k, const rd_pipe *p);

/*
 * Set up the pool of st (st->max_conns must be set): no connection is made.
 * Errors: CDX_ERR_RESOURCE_EXHAUSTED (nothing to undo then).
 */
CDX_MUST_CHECK cdx_err eng_rd_pool_init(rd_store *st);

/* Close the idle connections and release the pool (logs connections still in use). */
void eng_rd_pool_fini(rd_store *st);

/*
 * Take a connection for exclusive use: an idle one, or a new one (connect,
 * AUTH with the password file read again, PING); fresh=true always makes a
 * new one (a retry after a drop). Thread-safe. Fails fast while in back-off
 * after a failed connect; waits up to timeout_ms when every connection is in
 * use. Errors: CDX_ERR_STORE_UNAVAILABLE (unreachable, in back-off, AUTH
 * refused, pool busy), CDX_ERR_CONFIG (password file unusable),
 * CDX_ERR_RESOURCE_EXHAUSTED, CDX_ERR_INTERNAL (unexpected reply).
 */
CDX_MUST_CHECK cdx_err eng_rd_acquire(rd_store *st, bool fresh, rd_conn **out);

/* End the connect back-off: the next acquire connects at once. Thread-safe. */
void eng_rd_retry_now(eng_store *s);

/* The last connect found the server loading its data set (LOADING). */
bool eng_rd_is_loading(rd_store *st);

/*
 * Give k back (NULL is a no-op): pooled, or closed when broken; a dropped
 * connection closes the idle ones too (the server likely restarted).
 * Thread-safe.
 */
void eng_rd_release(rd_store *st, rd_conn *k);

/* An operation on a connection; attempt is 0, then 1 on the retry. */
typedef cdx_err (*rd_op_fn)(rd_conn *k, void *ctx, int attempt);

/*
 * Run fn on a pooled connection (its byte budget reset), and once more on a
 * fresh one if the connection dropped and `retry` (the operation is
 * idempotent). Returns eng_rd_acquire's errors or fn's.
 */
CDX_MUST_CHECK cdx_err eng_rd_call(rd_store *st, rd_op_fn fn, void *ctx, bool retry,
                                   const char *op);

/*
 * ---- transactions (eng_redis_txn.c) ----
 * The watch, commit and abort entries of the ops table: the contracts of
 * eng_store_watch, eng_store_commit and eng_store_abort (eng_store.h), after
 * eng_store.c's argument checks (eng_store_internal.h).
 */

CDX_MUST_CHECK cdx_err eng_rd_watch(eng_store *s, const char *key, eng_txn **txn, eng_val *cur);
CDX_MUST_CHECK cdx_err eng_rd_commit(eng_txn *tx, const eng_kv *kv, size_t n, bool *committed);
void eng_rd_abort(eng_txn *tx);

#endif
