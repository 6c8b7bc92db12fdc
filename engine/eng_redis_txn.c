/*
 * eng_redis_txn.c - optimistic transactions on Redis: WATCH the head key and
 * read it, then MULTI, SET each key, EXEC on the same connection, or
 * UNWATCH.
 *
 * The connection is pinned to the transaction from WATCH until commit or
 * abort. WATCH is retried once on a fresh connection when its connection
 * dropped (it writes nothing). A commit is never retried: the caller re-reads
 * the head. When a commit's connection fails before EXEC's reply, it is
 * closed, which makes Redis discard an unfinished MULTI; whether an EXEC
 * that was sent got applied is then unknown, and the error says so.
 */
#include "eng_redis_int.h"

#include <stdlib.h>

#include "cdx_log.h"

typedef struct rd_txn {
    struct eng_txn base;
    rd_conn *k;
} rd_txn;

typedef struct watch_ctx {
    const char *key;
    eng_val *cur;
} watch_ctx;

static void watch_build(void *vctx, size_t i, rd_cmd *cmd)
{
    watch_ctx *x = vctx;

    rd_cmd_str(cmd, i == 0 ? "WATCH" : "GET");
    rd_cmd_str(cmd, x->key);
}

static cdx_err watch_reply(void *vctx, size_t i, rd_reply *r)
{
    watch_ctx *x = vctx;

    if (i == 0)
        return eng_rd_is_status(r, "OK") ? CDX_OK : eng_rd_unexpected(r, "WATCH");
    if (r->type == REDIS_REPLY_STRING)
        eng_rd_steal_val(r, x->cur);
    else if (r->type != REDIS_REPLY_NIL)
        return eng_rd_unexpected(r, "GET");
    return CDX_OK;
}

cdx_err eng_rd_watch(eng_store *s, const char *key, eng_txn **txn, eng_val *cur)
{
    rd_store *st = rd_store_of(s);
    rd_txn *t = calloc(1, sizeof(*t));
    watch_ctx x = {.key = key, .cur = cur};
    rd_pipe p = {.op = "WATCH", .n = 2, .build = watch_build, .reply = watch_reply, .ctx = &x};
    cdx_err e = CDX_OK;

    if (!t)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "watch: out of memory");
    /* Not eng_rd_call: on success the connection stays pinned to the transaction. */
    for (int attempt = 0; attempt < 2; attempt++) {
        rd_conn *k = NULL;
        e = eng_rd_acquire(st, attempt > 0, &k);
        if (e != CDX_OK)
            break;
        k->bytes = 0;
        eng_vals_free(cur, 1);
        e = eng_rd_pipeline(k, &p);
        if (e == CDX_OK) {
            t->k = k;
            break;
        }
        bool again = k->dropped;
        if (!k->broken) {
            /* A semantic failure leaves a live WATCH behind: drop the connection instead. */
            k->broken = true;
        }
        eng_rd_release(st, k);
        if (!again)
            break;
        cdx_log(CDX_LOG_INFO, "store_redis_retry", "op=WATCH addr=\"%s\"", st->addr);
    }
    if (e != CDX_OK) {
        free(t);
        return e;
    }
    t->base.store = s;
    *txn = &t->base;
    return CDX_OK;
}

typedef struct commit_ctx {
    const eng_kv *kv;
    size_t n;
    bool *committed;
    bool exec_seen;
} commit_ctx;

static void commit_build(void *vctx, size_t i, rd_cmd *cmd)
{
    commit_ctx *x = vctx;

    if (i == 0) {
        rd_cmd_str(cmd, "MULTI");
    } else if (i <= x->n) {
        const eng_kv *kv = &x->kv[i - 1];
        rd_cmd_str(cmd, "SET");
        rd_cmd_str(cmd, kv->key);
        rd_cmd_arg(cmd, kv->len ? (const char *)kv->val : "", kv->len);
    } else {
        rd_cmd_str(cmd, "EXEC");
        cmd->elem_budget = (long long)x->n;
    }
}

static cdx_err commit_reply(void *vctx, size_t i, rd_reply *r)
{
    commit_ctx *x = vctx;

    if (i == 0)
        return eng_rd_is_status(r, "OK") ? CDX_OK : eng_rd_unexpected(r, "MULTI");
    if (i <= x->n)
        return eng_rd_is_status(r, "QUEUED") ? CDX_OK : eng_rd_unexpected(r, "SET in MULTI");
    x->exec_seen = true;
    if (r->type == REDIS_REPLY_NIL)
        return CDX_OK; /* a watched key changed: nothing was written */
    if (r->type != REDIS_REPLY_ARRAY || r->n != x->n)
        return eng_rd_unexpected(r, "EXEC");
    *x->committed = true;
    for (size_t j = 0; j < r->n; j++)
        if (!eng_rd_is_status(r->elem[j], "OK")) {
            /* EXEC has no rollback: report loudly, the head decides what is visible. */
            cdx_log(CDX_LOG_ERROR, "store_redis_exec_partial", "failed_index=%zu of=%zu", j, r->n);
            return eng_rd_unexpected(r->elem[j], "EXEC");
        }
    return CDX_OK;
}

cdx_err eng_rd_commit(eng_txn *tx, const eng_kv *kv, size_t n, bool *committed)
{
    rd_txn *t = (rd_txn *)tx;
    rd_store *st = rd_store_of(tx->store);
    commit_ctx x = {.kv = kv, .n = n, .committed = committed};
    rd_pipe p = {.op = "EXEC", .n = n + 2, .build = commit_build, .reply = commit_reply, .ctx = &x};
    cdx_err e;

    t->k->bytes = 0;
    e = eng_rd_pipeline(t->k, &p);
    if (e != CDX_OK && !x.exec_seen) {
        /* Never retried; closing the connection makes Redis discard an unfinished MULTI. */
        t->k->broken = true;
        if (e == CDX_ERR_STORE_UNAVAILABLE)
            e = cdx_fail(CDX_ERR_STORE_UNAVAILABLE,
                         "lost the Redis connection during a commit: whether it was applied is "
                         "unknown; re-read the head");
    }
    eng_rd_release(st, t->k);
    free(t);
    return e;
}

static void unwatch_build(void *vctx, size_t i, rd_cmd *cmd)
{
    (void)vctx;
    (void)i;
    rd_cmd_str(cmd, "UNWATCH");
}

static cdx_err unwatch_reply(void *vctx, size_t i, rd_reply *r)
{
    (void)vctx;
    (void)i;
    return eng_rd_is_status(r, "OK") ? CDX_OK : eng_rd_unexpected(r, "UNWATCH");
}

void eng_rd_abort(eng_txn *tx)
{
    rd_txn *t = (rd_txn *)tx;
    rd_pipe p = {.op = "UNWATCH", .n = 1, .build = unwatch_build, .reply = unwatch_reply};

    if (eng_rd_pipeline(t->k, &p) != CDX_OK)
        t->k->broken = true;
    eng_rd_release(rd_store_of(tx->store), t->k);
    free(t);
}
