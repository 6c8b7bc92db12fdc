/*
 * eng_store_redis.c - the Redis backend of eng_store.h: its operations
 * (MGET, GETRANGE, SET NX / SET, DEL, SCAN; transactions are in
 * eng_redis_txn.c), the durability check, and the store's lifetime.
 *
 * The backend's files and what each holds are listed in eng_redis_int.h.
 * Every operation here builds its commands and handles their replies; the
 * pipeline, the bounds on replies, the pool and the retry are
 * eng_redis_conn.c's.
 *
 * Retries: a call whose connection dropped (EOF, reset, broken pipe; not a
 * timeout) is retried once on a freshly connected context when it is
 * idempotent (mget, getrange, scan, set, del, setnx, watch). Pipelined
 * writes resume after the last reply already read. SET NX is retried too: a
 * key the retry finds existing is read back, and counts as created when it
 * holds exactly our bytes (records are written under fresh random tokens with
 * random nonces, so an identical foreign value does not happen). A commit is
 * never retried: the caller re-reads the head.
 */
#include "eng_redis_int.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>

#include "cdx_limits.h"
#include "cdx_log.h"
#include "cdx_time.h"

#define RD_DEFAULT_PORT       6379
#define RD_DEFAULT_CONNS      8
#define RD_DEFAULT_TIMEOUT_MS 5000
#define RD_MGET_CHUNK         1000 /* keys per MGET */

/* ---- mget ---- */

typedef struct mget_ctx {
    const char *const *keys;
    size_t n;
    eng_val *out;
    const char *argv[RD_MGET_CHUNK + 1];
    size_t argvlen[RD_MGET_CHUNK + 1];
} mget_ctx;

static size_t chunk_len(size_t n, size_t c)
{
    size_t left = n - c * RD_MGET_CHUNK;
    return left < RD_MGET_CHUNK ? left : RD_MGET_CHUNK;
}

static void mget_build(void *vctx, size_t c, rd_cmd *cmd)
{
    mget_ctx *x = vctx;
    size_t m = chunk_len(x->n, c);

    x->argv[0] = "MGET";
    x->argvlen[0] = 4;
    for (size_t j = 0; j < m; j++) {
        x->argv[1 + j] = x->keys[c * RD_MGET_CHUNK + j];
        x->argvlen[1 + j] = strlen(x->argv[1 + j]);
    }
    cmd->argc = (int)(m + 1);
    cmd->argv = x->argv;
    cmd->argvlen = x->argvlen;
    cmd->elem_budget = (long long)m;
}

static cdx_err mget_reply(void *vctx, size_t c, rd_reply *r)
{
    mget_ctx *x = vctx;
    size_t m = chunk_len(x->n, c);

    if (r->type != REDIS_REPLY_ARRAY || r->n != m)
        return eng_rd_unexpected(r, "MGET");
    for (size_t j = 0; j < m; j++) {
        rd_reply *el = r->elem[j];
        if (el->type == REDIS_REPLY_STRING)
            eng_rd_steal_val(el, &x->out[c * RD_MGET_CHUNK + j]);
        else if (el->type != REDIS_REPLY_NIL)
            return eng_rd_unexpected(el, "MGET");
    }
    return CDX_OK;
}

static cdx_err mget_op(rd_conn *k, void *vctx, int attempt)
{
    mget_ctx *x = vctx;
    rd_pipe p = {.op = "MGET",
                 .n = (x->n + RD_MGET_CHUNK - 1) / RD_MGET_CHUNK,
                 .build = mget_build,
                 .reply = mget_reply,
                 .ctx = x};

    if (attempt > 0)
        eng_vals_free(x->out, x->n);
    return eng_rd_pipeline(k, &p);
}

static cdx_err rd_mget(eng_store *s, const char *const *keys, size_t n, eng_val *out)
{
    mget_ctx *x = calloc(1, sizeof(*x));
    cdx_err e;

    if (!x)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "mget: out of memory");
    x->keys = keys;
    x->n = n;
    x->out = out;
    e = eng_rd_call(rd_store_of(s), mget_op, x, true, "MGET");
    free(x);
    return e;
}

/* ---- getrange ---- */

/*
 * GETRANGE answers "" for a missing key as for an empty range, so ranges
 * that come back empty are asked EXISTS in a second round trip.
 */
typedef struct range_ctx {
    const eng_range *r;
    size_t n;
    eng_val *out;
    size_t *empty; /* indexes whose GETRANGE was empty (or len 0) */
    size_t n_empty;
    size_t *ask; /* indexes with len > 0 */
    size_t n_ask;
    char start[24], end[24]; /* scratch: hiredis copies arguments when they are appended */
} range_ctx;

static void range_build(void *vctx, size_t i, rd_cmd *cmd)
{
    range_ctx *x = vctx;
    const eng_range *r = &x->r[x->ask[i]];

    snprintf(x->start, sizeof(x->start), "%" PRIu64, r->off);
    snprintf(x->end, sizeof(x->end), "%" PRIu64, r->off + r->len - 1);
    rd_cmd_str(cmd, "GETRANGE");
    rd_cmd_str(cmd, r->key);
    rd_cmd_str(cmd, x->start);
    rd_cmd_str(cmd, x->end);
}

static cdx_err range_reply(void *vctx, size_t i, rd_reply *r)
{
    range_ctx *x = vctx;
    size_t idx = x->ask[i];

    if (r->type != REDIS_REPLY_STRING)
        return eng_rd_unexpected(r, "GETRANGE");
    if (r->len == 0)
        x->empty[x->n_empty++] = idx;
    else
        eng_rd_steal_val(r, &x->out[idx]);
    return CDX_OK;
}

/* GETRANGE returns at most the range's length. */
static uint64_t range_max(void *vctx, size_t i)
{
    range_ctx *x = vctx;

    return x->r[x->ask[i]].len;
}

static void exists_build(void *vctx, size_t i, rd_cmd *cmd)
{
    range_ctx *x = vctx;

    rd_cmd_str(cmd, "EXISTS");
    rd_cmd_str(cmd, x->r[x->empty[i]].key);
}

static cdx_err exists_reply(void *vctx, size_t i, rd_reply *r)
{
    range_ctx *x = vctx;

    if (r->type != REDIS_REPLY_INTEGER)
        return eng_rd_unexpected(r, "EXISTS");
    if (r->integer > 0)
        return eng_val_copy(&x->out[x->empty[i]], "", 0);
    return CDX_OK;
}

/* EXISTS returns an integer: no bulk string may come. */
static uint64_t exists_max(void *vctx, size_t i)
{
    (void)vctx;
    (void)i;
    return 0;
}

static cdx_err range_op(rd_conn *k, void *vctx, int attempt)
{
    range_ctx *x = vctx;
    rd_pipe p = {.op = "GETRANGE",
                 .build = range_build,
                 .reply = range_reply,
                 .ctx = x,
                 .bulk_max = range_max};
    cdx_err e;

    if (attempt > 0)
        eng_vals_free(x->out, x->n);
    x->n_empty = x->n_ask = 0;
    for (size_t i = 0; i < x->n; i++) {
        if (x->r[i].len == 0)
            x->empty[x->n_empty++] = i;
        else
            x->ask[x->n_ask++] = i;
    }
    p.n = x->n_ask;
    e = eng_rd_pipeline(k, &p);
    if (e != CDX_OK)
        return e;
    p = (rd_pipe){.op = "EXISTS",
                  .n = x->n_empty,
                  .build = exists_build,
                  .reply = exists_reply,
                  .ctx = x,
                  .bulk_max = exists_max};
    return eng_rd_pipeline(k, &p);
}

static cdx_err rd_getrange(eng_store *s, const eng_range *r, size_t n, eng_val *out)
{
    range_ctx *x = calloc(1, sizeof(*x));
    cdx_err e = CDX_OK;

    if (!x)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "getrange: out of memory");
    x->r = r;
    x->n = n;
    x->out = out;
    x->empty = malloc(n * sizeof(size_t));
    x->ask = malloc(n * sizeof(size_t));
    if (!x->empty || !x->ask)
        e = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "getrange: out of memory");
    else
        e = eng_rd_call(rd_store_of(s), range_op, x, true, "GETRANGE");
    free(x->empty);
    free(x->ask);
    free(x);
    return e;
}

/* ---- strlen ---- */

typedef struct strlen_ctx {
    const char *const *keys;
    size_t n;
    uint64_t *len;
} strlen_ctx;

static void strlen_build(void *vctx, size_t i, rd_cmd *cmd)
{
    strlen_ctx *x = vctx;

    rd_cmd_str(cmd, "STRLEN");
    rd_cmd_str(cmd, x->keys[i]);
}

static cdx_err strlen_reply(void *vctx, size_t i, rd_reply *r)
{
    strlen_ctx *x = vctx;

    if (r->type != REDIS_REPLY_INTEGER || r->integer < 0)
        return eng_rd_unexpected(r, "STRLEN");
    x->len[i] = (uint64_t)r->integer;
    return CDX_OK;
}

static cdx_err strlen_op(rd_conn *k, void *vctx, int attempt)
{
    strlen_ctx *x = vctx;
    rd_pipe p = {.op = "STRLEN",
                 .n = x->n,
                 .build = strlen_build,
                 .reply = strlen_reply,
                 .ctx = x,
                 .bulk_max = exists_max}; /* integers only: no bulk string may come */

    (void)attempt; /* read-only: a retry asks every key again */
    return eng_rd_pipeline(k, &p);
}

static cdx_err rd_strlen(eng_store *s, const char *const *keys, size_t n, uint64_t *len)
{
    strlen_ctx x = {.keys = keys, .n = n, .len = len};

    return eng_rd_call(rd_store_of(s), strlen_op, &x, true, "STRLEN");
}

/* ---- setnx / set ---- */

typedef struct write_ctx {
    const eng_kv *kv;
    size_t n;
    bool *created; /* NULL for plain SET */
    size_t done;   /* replies handled: a retry resumes here */
    size_t verify_from;
} write_ctx;

static void write_build(void *vctx, size_t i, rd_cmd *cmd)
{
    write_ctx *x = vctx;

    rd_cmd_str(cmd, "SET");
    rd_cmd_str(cmd, x->kv[i].key);
    rd_cmd_arg(cmd, x->kv[i].len ? (const char *)x->kv[i].val : "", x->kv[i].len);
    if (x->created)
        rd_cmd_str(cmd, "NX");
}

static cdx_err write_reply(void *vctx, size_t i, rd_reply *r)
{
    write_ctx *x = vctx;

    if (eng_rd_is_status(r, "OK")) {
        if (x->created)
            x->created[i] = true;
        return CDX_OK;
    }
    if (x->created && r->type == REDIS_REPLY_NIL)
        return CDX_OK; /* existed: left alone */
    return eng_rd_unexpected(r, x->created ? "SET NX" : "SET");
}

static void verify_build(void *vctx, size_t i, rd_cmd *cmd)
{
    write_ctx *x = vctx;

    rd_cmd_str(cmd, "GET");
    rd_cmd_str(cmd, x->kv[i].key);
}

/* After a retried SET NX: an "existing" key holding exactly our bytes was written by us. */
static cdx_err verify_reply(void *vctx, size_t i, rd_reply *r)
{
    write_ctx *x = vctx;

    if (x->created[i])
        return CDX_OK;
    if (r->type == REDIS_REPLY_NIL)
        return CDX_OK;
    if (r->type != REDIS_REPLY_STRING)
        return eng_rd_unexpected(r, "GET");
    if (r->len == x->kv[i].len && (r->len == 0 || memcmp(r->str, x->kv[i].val, r->len) == 0))
        x->created[i] = true;
    return CDX_OK;
}

static cdx_err write_op(rd_conn *k, void *vctx, int attempt)
{
    write_ctx *x = vctx;
    rd_pipe p = {.op = x->created ? "SET NX" : "SET",
                 .first = x->done,
                 .n = x->n,
                 .build = write_build,
                 .reply = write_reply,
                 .ctx = x,
                 .done = &x->done};
    cdx_err e;

    if (attempt == 0)
        x->verify_from = x->n;
    else if (x->verify_from == x->n)
        x->verify_from = x->done; /* the first attempt may have written keys from here on */
    e = eng_rd_pipeline(k, &p);
    if (e != CDX_OK || !x->created || x->verify_from >= x->n)
        return e;
    /* After the retry's SET NX, read back the keys the first attempt may have written. */
    p = (rd_pipe){.op = "GET",
                  .first = x->verify_from,
                  .n = x->n,
                  .build = verify_build,
                  .reply = verify_reply,
                  .ctx = x};
    return eng_rd_pipeline(k, &p);
}

static cdx_err rd_setnx(eng_store *s, const eng_kv *kv, size_t n, bool *created)
{
    write_ctx x = {.kv = kv, .n = n, .created = created};

    return eng_rd_call(rd_store_of(s), write_op, &x, true, "SET NX");
}

static cdx_err rd_set(eng_store *s, const eng_kv *kv, size_t n)
{
    write_ctx x = {.kv = kv, .n = n};

    return eng_rd_call(rd_store_of(s), write_op, &x, true, "SET");
}

/* ---- del ---- */

typedef struct del_ctx {
    const char *const *keys;
    size_t n;
    uint64_t *deleted;
    size_t done;
} del_ctx;

static void del_build(void *vctx, size_t i, rd_cmd *cmd)
{
    del_ctx *x = vctx;

    rd_cmd_str(cmd, "DEL");
    rd_cmd_str(cmd, x->keys[i]);
}

static cdx_err del_reply(void *vctx, size_t i, rd_reply *r)
{
    del_ctx *x = vctx;

    (void)i;
    if (r->type != REDIS_REPLY_INTEGER)
        return eng_rd_unexpected(r, "DEL");
    *x->deleted += (uint64_t)(r->integer > 0 ? r->integer : 0);
    return CDX_OK;
}

static cdx_err del_op(rd_conn *k, void *vctx, int attempt)
{
    del_ctx *x = vctx;
    rd_pipe p = {.op = "DEL",
                 .first = x->done,
                 .n = x->n,
                 .build = del_build,
                 .reply = del_reply,
                 .ctx = x,
                 .done = &x->done};

    (void)attempt; /* a resumed DEL misses the count of deletes whose reply was lost */
    return eng_rd_pipeline(k, &p);
}

static cdx_err rd_del(eng_store *s, const char *const *keys, size_t n, uint64_t *deleted)
{
    del_ctx x = {.keys = keys, .n = n, .deleted = deleted};

    return eng_rd_call(rd_store_of(s), del_op, &x, true, "DEL");
}

/* ---- scan ---- */

typedef struct scan_ctx {
    const char *match;
    uint64_t *cursor;
    char ***keys;
    size_t *n;
    char cur[24], count[16];
} scan_ctx;

static void scan_build(void *vctx, size_t i, rd_cmd *cmd)
{
    scan_ctx *x = vctx;

    (void)i;
    snprintf(x->count, sizeof(x->count), "%d", CDX_STORE_SCAN_COUNT);
    snprintf(x->cur, sizeof(x->cur), "%" PRIu64, *x->cursor);
    rd_cmd_str(cmd, "SCAN");
    rd_cmd_str(cmd, x->cur);
    rd_cmd_str(cmd, "MATCH");
    rd_cmd_str(cmd, x->match);
    rd_cmd_str(cmd, "COUNT");
    rd_cmd_str(cmd, x->count);
    /* COUNT is a hint: a step may return more keys; a step never returns the whole keyspace. */
    cmd->elem_budget = 2 + CDX_STORE_BATCH_MAX;
}

static cdx_err scan_reply(void *vctx, size_t i, rd_reply *r)
{
    scan_ctx *x = vctx;
    rd_reply *keys;
    char *end = NULL;
    unsigned long long next;

    (void)i;
    if (r->type != REDIS_REPLY_ARRAY || r->n != 2 || r->elem[0]->type != REDIS_REPLY_STRING ||
        r->elem[1]->type != REDIS_REPLY_ARRAY)
        return eng_rd_unexpected(r, "SCAN");
    errno = 0;
    next = strtoull(r->elem[0]->str, &end, 10);
    if (errno || end == r->elem[0]->str || *end)
        return eng_rd_unexpected(r->elem[0], "SCAN cursor");
    keys = r->elem[1];
    *x->keys = calloc(keys->n ? keys->n : 1, sizeof(char *));
    if (!*x->keys)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "scan: out of memory");
    for (size_t j = 0; j < keys->n; j++) {
        rd_reply *kr = keys->elem[j];
        if (kr->type != REDIS_REPLY_STRING)
            return eng_rd_unexpected(kr, "SCAN");
        /* Keys with NUL, spaces or over-long names are not ours (we never write them). */
        if (!eng_store_key_ok(kr->str) || strlen(kr->str) != kr->len)
            continue;
        (*x->keys)[(*x->n)++] = kr->str;
        kr->str = NULL;
    }
    *x->cursor = next;
    return CDX_OK;
}

static cdx_err scan_op(rd_conn *k, void *vctx, int attempt)
{
    scan_ctx *x = vctx;
    rd_pipe p = {.op = "SCAN", .n = 1, .build = scan_build, .reply = scan_reply, .ctx = x};

    if (attempt > 0) {
        eng_keys_free(*x->keys, *x->n);
        *x->keys = NULL;
        *x->n = 0;
    }
    return eng_rd_pipeline(k, &p);
}

static cdx_err rd_scan(eng_store *s, const char *match, uint64_t *cursor, char ***keys, size_t *n)
{
    uint64_t c = *cursor;
    scan_ctx x = {.match = match, .cursor = &c, .keys = keys, .n = n};
    cdx_err e = eng_rd_call(rd_store_of(s), scan_op, &x, true, "SCAN");

    if (e == CDX_OK)
        *cursor = c;
    return e;
}

/* ---- durability check ---- */

typedef struct check_ctx {
    const char *names[3];
    char values[3][32];
    rd_reply *error; /* first error reply (CONFIG refused or renamed) */
} check_ctx;

static void check_build(void *vctx, size_t i, rd_cmd *cmd)
{
    check_ctx *x = vctx;

    rd_cmd_str(cmd, "CONFIG");
    rd_cmd_str(cmd, "GET");
    rd_cmd_str(cmd, x->names[i]);
    cmd->elem_budget = 2;
}

static cdx_err check_reply(void *vctx, size_t i, rd_reply *r)
{
    check_ctx *x = vctx;

    if (r->type == REDIS_REPLY_ERROR) {
        if (!x->error) {
            x->error = calloc(1, sizeof(*x->error));
            if (x->error) {
                *x->error = *r;
                r->str = NULL; /* moved */
            }
        }
        return CDX_OK;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->n != 2 || r->elem[1]->type != REDIS_REPLY_STRING)
        return eng_rd_unexpected(r, "CONFIG GET");
    eng_rd_clean_text(x->values[i], sizeof(x->values[i]), r->elem[1]->str, r->elem[1]->len);
    return CDX_OK;
}

/* Append one weak setting's loss window to why ("; "-separated). */
static void why_add(char *why, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void why_add(char *why, size_t cap, const char *fmt, ...)
{
    size_t n = strlen(why);
    va_list ap;

    if (n && n + 2 < cap) {
        memcpy(why + n, "; ", 3);
        n += 2;
    }
    if (n + 1 >= cap)
        return;
    va_start(ap, fmt);
    vsnprintf(why + n, cap - n, fmt, ap);
    va_end(ap);
}

/*
 * Only appendonly yes + appendfsync always + noeviction loses nothing that
 * was acknowledged. everysec is not enough even against a redis-server
 * crash: while a background fsync is pending, Redis postpones the AOF
 * write() for up to 2 s but still replies (flushAppendOnlyFile), and the
 * reliability review lost 8 of 25 commits killed 0-20 ms after their reply.
 */
static cdx_err rd_check_conn(rd_store *st, rd_conn *k, char *desc, size_t cap, char *why,
                             size_t wcap)
{
    check_ctx x = {.names = {"appendonly", "appendfsync", "maxmemory-policy"}};
    rd_pipe p = {.op = "CONFIG GET", .n = 3, .build = check_build, .reply = check_reply, .ctx = &x};
    cdx_err e = eng_rd_pipeline(k, &p);

    why[0] = '\0';
    if (e != CDX_OK)
        goto out;
    if (x.error) {
        char t[160];
        eng_rd_clean_text(t, sizeof(t), x.error->str, x.error->len);
        cdx_log(CDX_LOG_WARN, "store_redis_config_refused", "addr=\"%s\" reply=\"%s\"", st->addr,
                t);
        snprintf(desc, cap, "unknown (CONFIG GET refused)");
        snprintf(why, wcap,
                 "durability unknown: CONFIG GET was refused, so appendonly, appendfsync and "
                 "maxmemory-policy cannot be checked");
        e = cdx_fail(CDX_ERR_CONFIG,
                     "cannot check Redis durability at %s: CONFIG GET was refused (%s); allow it "
                     "(ACL SETUSER %s +config|get, or undo a rename-command of CONFIG) or set "
                     "allow_unsafe_durability",
                     st->addr, t, st->user ? st->user : "default");
        goto out;
    }
    snprintf(desc, cap, "appendonly=%s appendfsync=%s maxmemory-policy=%s", x.values[0],
             x.values[1], x.values[2]);
    if (strcmp(x.values[0], "yes") != 0) {
        why_add(why, wcap,
                "appendonly=%s: a crash loses every write since the last snapshot (set "
                "appendonly yes)",
                x.values[0]);
    } else if (strcmp(x.values[1], "everysec") == 0) {
        why_add(why, wcap,
                "appendfsync=everysec: up to ~2 s of acknowledged writes can be lost on a "
                "redis-server crash (Redis postpones the AOF write while a background fsync is "
                "pending but still replies), an OS crash or a power loss (set appendfsync "
                "always)");
    } else if (strcmp(x.values[1], "always") != 0) {
        why_add(why, wcap,
                "appendfsync=%s: the kernel flushes the AOF when it chooses, so an OS crash or "
                "a power loss can lose ~30 s or more of acknowledged writes (set appendfsync "
                "always)",
                x.values[1]);
    }
    if (strcmp(x.values[2], "noeviction") != 0) {
        if (strncmp(x.values[2], "volatile-", 9) == 0)
            why_add(why, wcap,
                    "maxmemory-policy=%s: would only evict keys with a TTL, which Cipherdex never "
                    "sets, but is refused all the same (set noeviction)",
                    x.values[2]);
        else
            why_add(why, wcap,
                    "maxmemory-policy=%s: evicts ciphertexts silently when memory runs out (set "
                    "noeviction)",
                    x.values[2]);
    }
    if (why[0])
        e = cdx_fail(CDX_ERR_CONFIG,
                     "Redis at %s can lose acknowledged writes: %s; or set "
                     "allow_unsafe_durability = yes to run degraded",
                     st->addr, why);
out:
    if (x.error) {
        free(x.error->str);
        free(x.error);
    }
    return e;
}

static cdx_err rd_check(eng_store *s, char *desc, size_t cap, char *why, size_t wcap)
{
    rd_store *st = rd_store_of(s);
    rd_conn *k = NULL;
    cdx_err e = eng_rd_acquire(st, false, &k);

    if (e != CDX_OK)
        return e;
    k->bytes = 0;
    e = rd_check_conn(st, k, desc, cap, why, wcap);
    eng_rd_release(st, k);
    return e;
}

/* ---- lifetime ---- */

static const char *rd_kind(const eng_store *s)
{
    (void)s;
    return "redis";
}

static void rd_free(eng_store *s)
{
    rd_store *st = rd_store_of(s);

    eng_rd_pool_fini(st);
    free(st->host);
    free(st->unix_path);
    free(st->user);
    free(st->password_file);
    free(st);
}

static const struct eng_store_ops rd_ops = {
    .kind = rd_kind,
    .free = rd_free,
    .mget = rd_mget,
    .getrange = rd_getrange,
    .strlen = rd_strlen,
    .setnx = rd_setnx,
    .set = rd_set,
    .del = rd_del,
    .scan = rd_scan,
    .watch = eng_rd_watch,
    .commit = eng_rd_commit,
    .abort = eng_rd_abort,
    .check = rd_check,
    .retry_now = eng_rd_retry_now,
};

/*
 * The first connection. A server still loading its data set (restarted with
 * the host) is waited for, up to o->start_wait_ms: failing the daemon's start
 * for a condition that ends by itself would only make its supervisor restart
 * it in a loop. A server that does not answer at all is reported at once.
 */
static cdx_err rd_first_conn(rd_store *st, const eng_redis_opts *o, rd_conn **k)
{
    long long t0 = cdx_mono_ms();
    for (;;) {
        cdx_err e = eng_rd_acquire(st, false, k);
        if (e != CDX_OK && eng_rd_is_loading(st)) {
            long long waited = cdx_mono_ms() - t0;
            if (waited >= (long long)o->start_wait_ms) {
                if (o->start_wait_ms)
                    e = cdx_fail(CDX_ERR_STORE_UNAVAILABLE,
                                 "Redis at %s was still loading its data set after %lld ms "
                                 "(store.redis_start_wait_s)",
                                 st->addr, waited);
                return e;
            }
            if (o->on_loading)
                o->on_loading(o->on_loading_arg, (uint32_t)waited);
            struct timespec ts = {.tv_sec = 0, .tv_nsec = 50 * 1000000L}; /* its retry_at paces */
            nanosleep(&ts, NULL);
            continue;
        }
        return e;
    }
}

/* hiredis writes with write(2): a dropped server must not kill us with SIGPIPE. */
static void ignore_sigpipe(void)
{
    struct sigaction sa;

    if (sigaction(SIGPIPE, NULL, &sa) == 0 && !(sa.sa_flags & SA_SIGINFO) &&
        sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);
}

static char *dup_opt(const char *s, bool *oom)
{
    char *d;

    if (!s)
        return NULL;
    d = strdup(s);
    if (!d)
        *oom = true;
    return d;
}

cdx_err eng_store_redis_new(const eng_redis_opts *o, eng_store **out)
{
    rd_store *st = NULL;
    rd_conn *k = NULL;
    char desc[128] = "";
    char why[ENG_DURABILITY_WHY_MAX] = "";
    bool oom = false;
    cdx_err e = CDX_OK;

    if (!out)
        return cdx_fail(CDX_ERR_CONFIG, "redis store: out is NULL");
    *out = NULL;
    if (!o)
        return cdx_fail(CDX_ERR_CONFIG, "redis store: no options");
    if (o->port < 0 || o->port > 65535)
        return cdx_fail(CDX_ERR_CONFIG, "redis store: port %d is not 1-65535", o->port);
    if (o->connections > CDX_STORE_CONNECTIONS_MAX)
        return cdx_fail(CDX_ERR_CONFIG, "redis store: connections=%u, the limit is %d",
                        o->connections, CDX_STORE_CONNECTIONS_MAX);
    if (o->unix_path && strlen(o->unix_path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return cdx_fail(CDX_ERR_CONFIG, "redis store: unix_path is longer than %zu bytes",
                        sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
    if (o->user && !o->password_file)
        return cdx_fail(CDX_ERR_CONFIG, "redis store: user %s needs a password_file", o->user);
    ignore_sigpipe();

    st = calloc(1, sizeof(*st));
    if (!st)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "redis store: out of memory");
    st->base.ops = &rd_ops;
    st->port = o->port ? o->port : RD_DEFAULT_PORT;
    st->max_conns = o->connections ? o->connections : RD_DEFAULT_CONNS;
    st->timeout_ms = o->timeout_ms ? o->timeout_ms : RD_DEFAULT_TIMEOUT_MS;
    st->unix_path = dup_opt(o->unix_path, &oom);
    st->host = dup_opt(o->host ? o->host : "127.0.0.1", &oom);
    st->user = dup_opt(o->user, &oom);
    st->password_file = dup_opt(o->password_file, &oom);
    /* Short-circuit: the pool is set up only when the strings are; it undoes itself. */
    if (oom || eng_rd_pool_init(st) != CDX_OK) {
        free(st->unix_path);
        free(st->host);
        free(st->user);
        free(st->password_file);
        free(st);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "redis store: out of memory");
    }
    if (st->unix_path)
        snprintf(st->addr, sizeof(st->addr), "unix:%s", st->unix_path);
    else
        snprintf(st->addr, sizeof(st->addr), "%s:%d", st->host, st->port);

    /* The first connection proves address and AUTH, checks durability, then joins the pool. */
    e = rd_first_conn(st, o, &k);
    if (e != CDX_OK)
        goto out;
    e = rd_check_conn(st, k, desc, sizeof(desc), why, sizeof(why));
    eng_rd_release(st, k);
    if (e == CDX_ERR_CONFIG && o->allow_unsafe_durability) {
        char t[ENG_DURABILITY_WHY_MAX];
        eng_rd_clean_text(t, sizeof(t), why, strlen(why));
        cdx_log(CDX_LOG_WARN, "store_redis_unsafe_durability",
                "addr=\"%s\" settings=\"%s\" msg=\"STARTING ANYWAY (allow_unsafe_durability), "
                "DEGRADED: %s\"",
                st->addr, desc, t);
        e = CDX_OK;
    } else if (e == CDX_OK) {
        cdx_log(CDX_LOG_INFO, "store_redis_open", "addr=\"%s\" settings=\"%s\" connections=%u",
                st->addr, desc, st->max_conns);
    }
out:
    if (e != CDX_OK) {
        rd_free(&st->base);
        return e;
    }
    *out = &st->base;
    return CDX_OK;
}
