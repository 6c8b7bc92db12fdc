/*
 * eng_store_redis.c - the Redis backend (hiredis 0.14.1, blocking contexts).
 *
 * Connections: a pool of at most `connections` contexts, created lazily
 * under a mutex + condvar; a call takes one, a transaction pins one until
 * commit or abort. A connection that fails or falls out of sync is closed,
 * never pooled again.
 *
 * Bounded replies: hiredis allocates arrays at whatever size the server
 * announces and buffers whole bulk strings before it hands them over (FACTS).
 * So every context's reader gets our own reply objects (rd_reply) whose
 * callbacks refuse an array larger than the command can legitimately return,
 * a string over CDX_STORE_VALUE_MAX and strings adding up to more than
 * CDX_STORE_REPLY_MAX in one call; and replies are read by our own loop
 * (redisBufferRead + redisGetReplyFromReader) that gives up when the reader
 * holds more unparsed bytes than one maximal value plus slack. Either way the
 * connection is closed (it is out of sync) and the call fails with
 * CDX_ERR_RESOURCE_EXHAUSTED. Our reply objects also let a fetched value
 * move into the caller's eng_val without another copy.
 *
 * Bulk fetches (GETRANGE and its EXISTS follow-up) bypass hiredis' reader,
 * which reads 16 KiB per syscall into a buffer it grows by reallocation and
 * then hands each bulk to our callback for one more copy. There a sans-IO
 * reader (eng_resp) checks each announced length against the range asked
 * for before allocating, and readv()s the payload straight into the value's
 * final buffer (a small staging buffer takes the CRLF and the next headers),
 * so the bytes are copied once, from the kernel, in as few syscalls as the
 * socket allows. It starts with whatever hiredis had buffered and hands back
 * what it read past the last reply, so both readers see one byte stream; any
 * error discards the connection, as hiredis errors do.
 *
 * Retries: a call whose connection dropped (EOF, reset, broken pipe; not a
 * timeout) is retried once on a freshly connected context when it is
 * idempotent (mget, getrange, scan, set, del, setnx, watch). Pipelined
 * writes resume after the last reply already read. SET NX is retried too: a
 * key the retry finds existing is read back, and counts as created when it
 * holds exactly our bytes (records are written under fresh random tokens with
 * random nonces, so an identical foreign value does not happen). A commit is
 * never retried: the caller re-reads the head.
 *
 * Back-off: a failed connect makes every call fail fast with
 * CDX_ERR_STORE_UNAVAILABLE for 100 ms, doubling up to 5 s while connects
 * keep failing; no caller ever sleeps for it.
 *
 * AUTH: the password is read from its file at every connect (so it can be
 * rotated), sent with our own write (hiredis would leave copies in freed
 * output buffers) and wiped with OPENSSL_cleanse.
 */
#include "eng_store_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <openssl/crypto.h>

#include "cdx_limits.h"
#include "cdx_log.h"
#include "eng_redis_resp.h"
#include "cdx_time.h"

#define RD_DEFAULT_PORT       6379
#define RD_DEFAULT_CONNS      8
#define RD_DEFAULT_TIMEOUT_MS 5000
#define RD_MGET_CHUNK         1000       /* keys per MGET */
#define RD_PIPE_CMDS          1000       /* commands per pipelined round trip */
#define RD_PIPE_BYTES         (8u << 20) /* argument bytes per round trip (output buffer) */
#define RD_SLACK              (1u << 20) /* unparsed bytes beyond one value: headers + reads */
#define RD_BACKOFF_MIN_MS     100
#define RD_BACKOFF_MAX_MS     5000
#define RD_PASSWORD_MAX       1024
#define RD_SMALL_ARGS         6
#define RD_IN_BUF             (16u << 10) /* bulk reader staging: headers, bytes after a payload */

/* ---- reply objects ---- */

typedef struct rd_reply {
    int type;
    long long integer;
    char *str; /* STRING, STATUS, ERROR: malloc'ed, NUL-terminated (may hold NULs) */
    size_t len;
    struct rd_reply **elem; /* ARRAY */
    size_t n;
} rd_reply;

enum { RD_REFUSED_NONE, RD_REFUSED_ARRAY, RD_REFUSED_STRING, RD_REFUSED_TOTAL };

typedef struct rd_conn {
    redisContext *c;
    long long elem_budget; /* array elements the reply being read may still allocate */
    uint64_t bytes;        /* string bytes accepted during the current call */
    int refused;           /* why the callbacks refused the reply being read */
    size_t max_array;      /* largest array allocated (for the test hook) */
    bool broken;           /* out of sync or failed: close instead of pooling */
    bool dropped;          /* the connection itself failed: an idempotent call may retry */
    /* The bulk reader (rd_read_bulk): its reply state and staged input, in[in_pos..in_len). */
    eng_resp resp;
    uint8_t *in;
    size_t in_pos, in_len;
} rd_conn;

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
    char last_err[256];
} rd_store;

typedef struct rd_txn {
    struct eng_txn base;
    rd_conn *k;
} rd_txn;

static void rd_reply_free(void *p)
{
    rd_reply *r = p;

    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++)
        rd_reply_free(r->elem[i]);
    free(r->elem);
    free(r->str);
    free(r);
}

static void *rd_attach(const redisReadTask *task, rd_reply *r)
{
    if (r && task->parent) {
        rd_reply *parent = task->parent->obj;
        parent->elem[task->idx] = r;
    }
    return r;
}

static void *cb_string(const redisReadTask *task, char *s, size_t len)
{
    rd_conn *k = task->privdata;
    rd_reply *r;

    if (len > CDX_STORE_VALUE_MAX) {
        k->refused = RD_REFUSED_STRING;
        return NULL;
    }
    if (k->bytes + len > CDX_STORE_REPLY_MAX) {
        k->refused = RD_REFUSED_TOTAL;
        return NULL;
    }
    r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->str = malloc(len + 1);
    if (!r->str) {
        free(r);
        return NULL;
    }
    memcpy(r->str, s, len);
    r->str[len] = '\0';
    r->len = len;
    r->type = task->type;
    k->bytes += len;
    return rd_attach(task, r);
}

static void *cb_array(const redisReadTask *task, int n)
{
    rd_conn *k = task->privdata;
    rd_reply *r;

    /* Refuse before allocating: the count is only the server's announcement. */
    if (n < 0 || n > k->elem_budget) {
        k->refused = RD_REFUSED_ARRAY;
        return NULL;
    }
    k->elem_budget -= n;
    r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    if (n > 0) {
        r->elem = calloc((size_t)n, sizeof(*r->elem));
        if (!r->elem) {
            free(r);
            return NULL;
        }
    }
    r->n = (size_t)n;
    r->type = REDIS_REPLY_ARRAY;
    if ((size_t)n > k->max_array)
        k->max_array = (size_t)n;
    return rd_attach(task, r);
}

static void *cb_integer(const redisReadTask *task, long long v)
{
    rd_reply *r = calloc(1, sizeof(*r));

    if (!r)
        return NULL;
    r->type = REDIS_REPLY_INTEGER;
    r->integer = v;
    return rd_attach(task, r);
}

static void *cb_nil(const redisReadTask *task)
{
    rd_reply *r = calloc(1, sizeof(*r));

    if (!r)
        return NULL;
    r->type = REDIS_REPLY_NIL;
    return rd_attach(task, r);
}

/* Not const: hiredis 0.14.1 takes a non-const pointer. */
static redisReplyObjectFunctions rd_fns = {
    .createString = cb_string,
    .createArray = cb_array,
    .createInteger = cb_integer,
    .createNil = cb_nil,
    .freeObject = rd_reply_free,
};

/* ---- helpers ---- */

static rd_store *as_rd(eng_store *s)
{
    return (rd_store *)s;
}

/* Copy foreign text for a log value or a detail: no quotes, no control bytes, bounded. */
static const char *clean_text(char *dst, size_t cap, const char *src, size_t len)
{
    size_t j = 0;

    for (size_t i = 0; src && i < len && j + 1 < cap; i++) {
        unsigned char ch = (unsigned char)src[i];
        dst[j++] = ch == '"' ? '\'' : (ch < 0x20 || ch >= 0x7f) ? '?' : (char)ch;
    }
    dst[j] = '\0';
    return dst;
}

static const char *type_name(int t)
{
    switch (t) {
    case REDIS_REPLY_STRING:
        return "string";
    case REDIS_REPLY_ARRAY:
        return "array";
    case REDIS_REPLY_INTEGER:
        return "integer";
    case REDIS_REPLY_NIL:
        return "nil";
    case REDIS_REPLY_STATUS:
        return "status";
    case REDIS_REPLY_ERROR:
        return "error";
    default:
        return "unknown";
    }
}

static bool has_prefix(const rd_reply *r, const char *p)
{
    size_t n = strlen(p);
    return r->len >= n && memcmp(r->str, p, n) == 0;
}

/* A Redis error reply to `op`: logged raw, mapped to our codes with what to do. */
static cdx_err rd_error_reply(const rd_reply *r, const char *op)
{
    char t[160];

    clean_text(t, sizeof(t), r->str, r->len);
    cdx_log(CDX_LOG_WARN, "store_redis_error", "op=%s reply=\"%s\"", op, t);
    if (has_prefix(r, "NOPERM"))
        return cdx_fail(CDX_ERR_STORE_UNAVAILABLE,
                        "Redis refused %s for this ACL user (%s): grant the command and keys to "
                        "the user",
                        op, t);
    if (has_prefix(r, "NOAUTH") || has_prefix(r, "WRONGPASS"))
        return cdx_fail(CDX_ERR_STORE_UNAVAILABLE,
                        "Redis wants authentication for %s (%s): set password_file (and user for "
                        "an ACL user)",
                        op, t);
    if (has_prefix(r, "OOM"))
        return cdx_fail(CDX_ERR_STORE_UNAVAILABLE,
                        "Redis is out of memory (%s): raise maxmemory or add memory", t);
    if (has_prefix(r, "LOADING") || has_prefix(r, "BUSY") || has_prefix(r, "MISCONF") ||
        has_prefix(r, "READONLY") || has_prefix(r, "MASTERDOWN") || has_prefix(r, "TRYAGAIN") ||
        has_prefix(r, "CLUSTERDOWN"))
        return cdx_fail(CDX_ERR_STORE_UNAVAILABLE, "Redis cannot serve %s now (%s)", op, t);
    return cdx_fail(CDX_ERR_INTERNAL, "Redis answered %s with an error (%s)", op, t);
}

/* A reply of a type the command cannot return: protocol surprise, raw type logged. */
static cdx_err rd_unexpected(const rd_reply *r, const char *op)
{
    if (r->type == REDIS_REPLY_ERROR)
        return rd_error_reply(r, op);
    cdx_log(CDX_LOG_ERROR, "store_redis_unexpected", "op=%s type=%d(%s) len=%zu elements=%zu", op,
            r->type, type_name(r->type), r->len, r->n);
    return cdx_fail(CDX_ERR_INTERNAL, "Redis answered %s with an unexpected %s reply", op,
                    type_name(r->type));
}

static bool is_status(const rd_reply *r, const char *s)
{
    return r->type == REDIS_REPLY_STATUS && r->len == strlen(s) && memcmp(r->str, s, r->len) == 0;
}

/* Move a string reply's bytes into a found value (no copy). */
static void steal_val(rd_reply *r, eng_val *v)
{
    v->data = (uint8_t *)r->str;
    v->len = r->len;
    v->found = true;
    r->str = NULL;
    r->len = 0;
}

/* ---- connection I/O ---- */

/* The context failed (c->err): classify, log the raw error, mark the connection. */
static cdx_err rd_conn_error(rd_conn *k, const char *op, int saved_errno)
{
    char t[160];
    int err = k->c->err;

    k->broken = true;
    clean_text(t, sizeof(t), k->c->errstr, strlen(k->c->errstr));
    if (k->refused != RD_REFUSED_NONE) {
        const char *why = k->refused == RD_REFUSED_ARRAY    ? "an array larger than requested"
                          : k->refused == RD_REFUSED_STRING ? "a value over the size limit"
                                                            : "more bytes than one call may fetch";
        cdx_log(CDX_LOG_WARN, "store_redis_reply_refused", "op=%s reason=\"%s\"", op, why);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED,
                        "Redis answered %s with %s (values <= %u bytes, <= %u bytes per call): "
                        "refused",
                        op, why, CDX_STORE_VALUE_MAX, CDX_STORE_REPLY_MAX);
    }
    cdx_log(CDX_LOG_WARN, "store_redis_conn_error", "op=%s err=%d errstr=\"%s\"", op, err, t);
    if (err == REDIS_ERR_OOM)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory reading a Redis reply to %s",
                        op);
    if (err == REDIS_ERR_PROTOCOL)
        return cdx_fail(CDX_ERR_INTERNAL, "Redis protocol error during %s (%s)", op, t);
    /* A timeout says the server is slow or stuck: retrying would only double the wait. */
    if (!(err == REDIS_ERR_IO && (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK)))
        k->dropped = true;
    return cdx_fail(CDX_ERR_STORE_UNAVAILABLE, "lost the Redis connection during %s (%s)", op, t);
}

static cdx_err rd_flush(rd_conn *k, const char *op)
{
    int done = 0;

    do {
        if (redisBufferWrite(k->c, &done) != REDIS_OK)
            return rd_conn_error(k, op, errno);
    } while (!done);
    return CDX_OK;
}

/* Read one reply whose arrays may hold elem_budget elements in all. */
static cdx_err rd_read(rd_conn *k, long long elem_budget, const char *op, rd_reply **out)
{
    *out = NULL;
    k->elem_budget = elem_budget;
    k->refused = RD_REFUSED_NONE;
    for (;;) {
        void *r = NULL;
        if (redisGetReplyFromReader(k->c, &r) != REDIS_OK)
            return rd_conn_error(k, op, 0);
        if (r) {
            *out = r;
            return CDX_OK;
        }
        /* hiredis buffers a bulk string whole before parsing it: stop it here. */
        size_t pending = k->c->reader->len - k->c->reader->pos;
        if (pending > (size_t)CDX_STORE_VALUE_MAX + RD_SLACK) {
            k->broken = true;
            cdx_log(CDX_LOG_WARN, "store_redis_reply_refused",
                    "op=%s reason=\"unparsed reply over the limit\" buffered=%zu", op, pending);
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED,
                            "Redis answered %s with a value over %u bytes: refused (Cipherdex "
                            "never writes one; something else wrote this key)",
                            op, CDX_STORE_VALUE_MAX);
        }
        if (redisBufferRead(k->c) != REDIS_OK)
            return rd_conn_error(k, op, errno);
    }
}

/* ---- bulk reader: single-copy reads of scalar replies (see the top of the file) ---- */

/* The socket failed under the bulk reader (got 0: EOF): classified like rd_conn_error. */
static cdx_err rd_bulk_io_error(rd_conn *k, const char *op, ssize_t got, int saved_errno)
{
    const char *t = got == 0 ? "Server closed the connection" : strerror(saved_errno);

    k->broken = true;
    cdx_log(CDX_LOG_WARN, "store_redis_conn_error", "op=%s err=%d errstr=\"%s\"", op,
            got == 0 ? REDIS_ERR_EOF : REDIS_ERR_IO, t);
    /* A timeout says the server is slow or stuck: retrying would only double the wait. */
    if (!(got < 0 && (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK)))
        k->dropped = true;
    return cdx_fail(CDX_ERR_STORE_UNAVAILABLE, "lost the Redis connection during %s (%s)", op, t);
}

/* The bulk reader refused the reply (st: its error): the connection is out of sync. */
static cdx_err rd_bulk_refused(rd_conn *k, const char *op, uint64_t bound, eng_resp_status st)
{
    const eng_resp *p = &k->resp;

    k->broken = true;
    if (st == ENG_RESP_ETOOBIG) {
        const char *why = p->announced > CDX_STORE_VALUE_MAX ? "a value over the size limit"
                          : p->announced > bound             ? "a string longer than it asked for"
                                                             : "more bytes than one call may fetch";
        cdx_log(CDX_LOG_WARN, "store_redis_reply_refused",
                "op=%s reason=\"%s\" announced=%" PRIu64 " bound=%" PRIu64, op, why, p->announced,
                bound);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED,
                        "Redis answered %s with %s (%" PRIu64 " bytes announced, at most %" PRIu64
                        " expected; values <= %u bytes, <= %u bytes per call): refused",
                        op, why, p->announced, bound, CDX_STORE_VALUE_MAX, CDX_STORE_REPLY_MAX);
    }
    if (st == ENG_RESP_ETYPE) {
        cdx_log(CDX_LOG_ERROR, "store_redis_unexpected", "op=%s type=%d(array)", op,
                REDIS_REPLY_ARRAY);
        return cdx_fail(CDX_ERR_INTERNAL, "Redis answered %s with an unexpected array reply", op);
    }
    if (st == ENG_RESP_ENOMEM)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory reading a Redis reply to %s",
                        op);
    cdx_log(CDX_LOG_WARN, "store_redis_conn_error", "op=%s err=%d errstr=\"%s\"", op,
            REDIS_ERR_PROTOCOL, p->why);
    return cdx_fail(CDX_ERR_INTERNAL, "Redis protocol error during %s (%s)", op, p->why);
}

/*
 * Take the byte stream over from hiredis: what its reader buffered is staged
 * first. Between calls it holds no partial reply (rd_read reads whole ones).
 */
static cdx_err rd_bulk_begin(rd_conn *k, const char *op)
{
    redisReader *rr = k->c->reader;
    size_t n = rr->len - rr->pos;

    k->in_pos = k->in_len = 0;
    if (!k->in && !(k->in = malloc(RD_IN_BUF))) {
        k->broken = true;
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory reading %s", op);
    }
    if (rr->err || rr->ridx != -1 || n > RD_IN_BUF) {
        k->broken = true;
        cdx_log(CDX_LOG_ERROR, "store_redis_unexpected",
                "op=%s msg=\"unread reply bytes before the command\" buffered=%zu", op, n);
        return cdx_fail(CDX_ERR_INTERNAL, "Redis sent %zu unsolicited bytes before %s", n, op);
    }
    if (n)
        memcpy(k->in, rr->buf + rr->pos, n);
    k->in_len = n;
    rr->pos = rr->len;
    return CDX_OK;
}

/* Hand what was read past the last reply back to hiredis (unsolicited, but keeps one stream). */
static void rd_bulk_end(rd_conn *k)
{
    eng_resp_reset(&k->resp);
    if (!k->broken && k->in_pos < k->in_len &&
        redisReaderFeed(k->c->reader, (const char *)k->in + k->in_pos, k->in_len - k->in_pos) !=
            REDIS_OK)
        k->broken = true;
    k->in_pos = k->in_len = 0;
}

/*
 * Read one scalar reply with the bulk reader (between rd_bulk_begin and
 * rd_bulk_end): a bulk string may hold at most `bound` bytes, and no more
 * than what is left of CDX_STORE_REPLY_MAX for the call; both are checked
 * before its buffer is allocated. Same contract as rd_read; every error
 * breaks the connection.
 */
static cdx_err rd_read_bulk(rd_conn *k, uint64_t bound, const char *op, rd_reply **out)
{
    eng_resp *p = &k->resp;
    uint64_t left = k->bytes < CDX_STORE_REPLY_MAX ? CDX_STORE_REPLY_MAX - k->bytes : 0;
    eng_resp_status st = ENG_RESP_MORE;
    rd_reply *r;

    *out = NULL;
    eng_resp_begin(p, bound < left ? bound : left);
    for (;;) {
        struct iovec iov[2];
        int niov = 0, err;
        uint8_t *dst;
        size_t room;
        ssize_t got;

        if (k->in_pos < k->in_len) {
            size_t used;
            st = eng_resp_feed(p, k->in + k->in_pos, k->in_len - k->in_pos, &used);
            k->in_pos += used;
            if (st != ENG_RESP_MORE)
                break;
        }
        k->in_pos = k->in_len = 0;
        /* The payload goes straight into its buffer; only what follows it is staged. */
        room = eng_resp_room(p, &dst);
        if (room)
            iov[niov++] = (struct iovec){.iov_base = dst, .iov_len = room};
        iov[niov++] = (struct iovec){.iov_base = k->in, .iov_len = RD_IN_BUF};
        got = readv(k->c->fd, iov, niov); /* SO_RCVTIMEO (redisSetTimeout) bounds the wait */
        err = errno;
        if (got < 0 && err == EINTR)
            continue;
        if (got <= 0)
            return rd_bulk_io_error(k, op, got, err);
        if (room) {
            size_t d = (size_t)got < room ? (size_t)got : room;
            eng_resp_commit(p, d);
            got -= (ssize_t)d;
        }
        k->in_len = (size_t)got;
    }
    if (st != ENG_RESP_DONE)
        return rd_bulk_refused(k, op, bound, st);
    r = calloc(1, sizeof(*r));
    if (!r)
        goto oom;
    switch (p->kind) {
    case ENG_RESP_BULK:
        r->type = REDIS_REPLY_STRING;
        r->str = (char *)p->data; /* moved: the single copy is the caller's */
        r->len = p->len;
        p->data = NULL;
        k->bytes += r->len;
        break;
    case ENG_RESP_NIL:
        r->type = REDIS_REPLY_NIL;
        break;
    case ENG_RESP_INT:
        r->type = REDIS_REPLY_INTEGER;
        r->integer = p->integer;
        break;
    default: /* STATUS, ERROR */
        r->type = p->kind == ENG_RESP_STATUS ? REDIS_REPLY_STATUS : REDIS_REPLY_ERROR;
        r->str = malloc(p->len + 1);
        if (!r->str)
            goto oom;
        memcpy(r->str, p->text, p->len + 1);
        r->len = p->len;
        break;
    }
    *out = r;
    return CDX_OK;
oom:
    rd_reply_free(r);
    k->broken = true;
    return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory reading a Redis reply to %s", op);
}

/* One pipelined command. argv points at small[] unless the builder sets it. */
typedef struct rd_cmd {
    int argc;
    const char **argv;
    size_t *argvlen;
    long long elem_budget; /* array elements its reply may hold */
    const char *small[RD_SMALL_ARGS];
    size_t small_len[RD_SMALL_ARGS];
} rd_cmd;

typedef struct rd_pipe {
    const char *op;
    size_t first, n; /* commands first..n-1 */
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

static void cmd_arg(rd_cmd *c, const void *p, size_t len)
{
    c->small[c->argc] = p;
    c->small_len[c->argc] = len;
    c->argc++;
}

static void cmd_str(rd_cmd *c, const char *s)
{
    cmd_arg(c, s, strlen(s));
}

/*
 * Send commands in round trips of at most RD_PIPE_CMDS commands /
 * RD_PIPE_BYTES bytes (bounding hiredis' output buffer), reading every reply
 * in order. A handler's error is remembered while the remaining replies are
 * still read, so the connection stays in sync; an I/O or bound error stops
 * at once (the connection is then broken).
 */
static cdx_err rd_pipeline(rd_conn *k, const rd_pipe *p)
{
    long long budgets[RD_PIPE_CMDS];
    cdx_err first_err = CDX_OK, e;

    if (p->bulk_max && (e = rd_bulk_begin(k, p->op)) != CDX_OK)
        return e;
    for (size_t start = p->first; start < p->n;) {
        size_t end = start, bytes = 0;
        while (end < p->n && end - start < RD_PIPE_CMDS && bytes < RD_PIPE_BYTES) {
            rd_cmd cmd = {0};
            cmd.argv = cmd.small;
            cmd.argvlen = cmd.small_len;
            p->build(p->ctx, end, &cmd);
            for (int a = 0; a < cmd.argc; a++)
                bytes += cmd.argvlen[a];
            if (redisAppendCommandArgv(k->c, cmd.argc, cmd.argv, cmd.argvlen) != REDIS_OK) {
                k->broken = true;
                e = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory queueing %s", p->op);
                goto out;
            }
            budgets[end - start] = cmd.elem_budget;
            end++;
        }
        e = rd_flush(k, p->op);
        if (e != CDX_OK)
            goto out;
        for (size_t i = start; i < end; i++) {
            rd_reply *r;
            e = p->bulk_max ? rd_read_bulk(k, p->bulk_max(p->ctx, i), p->op, &r)
                            : rd_read(k, budgets[i - start], p->op, &r);
            if (e != CDX_OK)
                goto out;
            e = p->reply(p->ctx, i, r);
            rd_reply_free(r);
            if (first_err == CDX_OK)
                first_err = e;
            if (first_err == CDX_OK && p->done)
                *p->done = i + 1;
        }
        start = end;
    }
    e = first_err;
out:
    if (p->bulk_max)
        rd_bulk_end(k);
    return e;
}

/* ---- password and connect ---- */

static cdx_err read_password(const char *path, char *buf, size_t cap, size_t *len)
{
    struct stat st;
    size_t n = 0;
    cdx_err e = CDX_OK;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);

    *len = 0;
    if (fd < 0)
        return cdx_fail(CDX_ERR_CONFIG, "cannot open the Redis password_file %s: %s", path,
                        strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        e = cdx_fail(CDX_ERR_CONFIG, "the Redis password_file %s is not a regular file", path);
        goto out;
    }
    if (st.st_mode & (S_IRWXG | S_IRWXO)) {
        e = cdx_fail(CDX_ERR_CONFIG,
                     "the Redis password_file %s is accessible by group or others (mode %03o): "
                     "chmod 600 it",
                     path, (unsigned)(st.st_mode & 0777));
        goto out;
    }
    for (;;) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            e = cdx_fail(CDX_ERR_CONFIG, "cannot read the Redis password_file %s: %s", path,
                         strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n == cap) {
            e = cdx_fail(CDX_ERR_CONFIG, "the Redis password_file %s is longer than %d bytes", path,
                         RD_PASSWORD_MAX);
            goto out;
        }
    }
    if (n > 0 && buf[n - 1] == '\n')
        n--; /* one trailing newline, as `echo` writes it */
    if (n == 0) {
        e = cdx_fail(CDX_ERR_CONFIG, "the Redis password_file %s is empty", path);
        goto out;
    }
    *len = n;
out:
    close(fd);
    if (e != CDX_OK)
        OPENSSL_cleanse(buf, cap);
    return e;
}

static size_t put_bulk(char *dst, const char *s, size_t len)
{
    int h = sprintf(dst, "$%zu\r\n", len);
    memcpy(dst + h, s, len);
    memcpy(dst + h + len, "\r\n", 2);
    return (size_t)h + len + 2;
}

static cdx_err rd_auth(rd_store *st, rd_conn *k)
{
    char pw[RD_PASSWORD_MAX + 1];
    size_t plen = 0, ulen = st->user ? strlen(st->user) : 0, clen = 0, off = 0;
    char *cmd = NULL;
    rd_reply *r = NULL;
    cdx_err e = read_password(st->password_file, pw, sizeof(pw), &plen);

    if (e != CDX_OK)
        return e;
    cmd = malloc(96 + ulen + plen);
    if (!cmd) {
        e = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory building AUTH");
        goto out;
    }
    clen = (size_t)sprintf(cmd, "*%d\r\n", st->user ? 3 : 2);
    clen += put_bulk(cmd + clen, "AUTH", 4);
    if (st->user)
        clen += put_bulk(cmd + clen, st->user, ulen);
    clen += put_bulk(cmd + clen, pw, plen);
    /* Our own write: hiredis' output buffer would free the password without wiping it. */
    while (off < clen) {
        ssize_t w = send(k->c->fd, cmd + off, clen - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            k->broken = true;
            e = cdx_fail(CDX_ERR_STORE_UNAVAILABLE, "cannot send AUTH to Redis at %s: %s", st->addr,
                         strerror(errno));
            goto out;
        }
        off += (size_t)w;
    }
    e = rd_read(k, 0, "AUTH", &r);
    if (e != CDX_OK)
        goto out;
    if (r->type == REDIS_REPLY_ERROR) {
        char t[160];
        clean_text(t, sizeof(t), r->str, r->len);
        cdx_log(CDX_LOG_ERROR, "store_redis_auth_refused", "addr=\"%s\" user=\"%s\" reply=\"%s\"",
                st->addr, st->user ? st->user : "default", t);
        e = cdx_fail(CDX_ERR_STORE_UNAVAILABLE,
                     "Redis at %s refused AUTH for user %s (%s): check password_file %s%s",
                     st->addr, st->user ? st->user : "default", t, st->password_file,
                     st->user ? " and the ACL user" : "");
        goto out;
    }
    if (!is_status(r, "OK"))
        e = rd_unexpected(r, "AUTH");
out:
    rd_reply_free(r);
    OPENSSL_cleanse(pw, sizeof(pw));
    if (cmd) {
        OPENSSL_cleanse(cmd, 96 + ulen + plen);
        free(cmd);
    }
    return e;
}

static void rd_conn_free(rd_conn *k)
{
    if (!k)
        return;
    if (k->c)
        redisFree(k->c);
    eng_resp_reset(&k->resp);
    free(k->in);
    free(k);
}

static cdx_err rd_connect(rd_store *st, rd_conn **out)
{
    struct timeval tv = {.tv_sec = st->timeout_ms / 1000,
                         .tv_usec = (suseconds_t)(st->timeout_ms % 1000) * 1000};
    rd_conn *k = calloc(1, sizeof(*k));
    rd_reply *r = NULL;
    cdx_err e = CDX_OK;

    *out = NULL;
    if (!k)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory connecting to Redis");
    k->c = st->unix_path ? redisConnectUnixWithTimeout(st->unix_path, tv)
                         : redisConnectWithTimeout(st->host, st->port, tv);
    if (!k->c) {
        e = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory connecting to Redis");
        goto out;
    }
    if (k->c->err) {
        char t[160];
        clean_text(t, sizeof(t), k->c->errstr, strlen(k->c->errstr));
        cdx_log(CDX_LOG_WARN, "store_redis_connect_failed", "addr=\"%s\" err=%d errstr=\"%s\"",
                st->addr, k->c->err, t);
        e = cdx_fail(CDX_ERR_STORE_UNAVAILABLE, "cannot connect to Redis at %s: %s", st->addr, t);
        goto out;
    }
    if (redisSetTimeout(k->c, tv) != REDIS_OK) {
        e = cdx_fail(CDX_ERR_STORE_UNAVAILABLE, "cannot set the I/O timeout on the Redis socket");
        goto out;
    }
    if (!st->unix_path)
        redisEnableKeepAlive(k->c);
    /* Our reply objects and bounds from the very first reply on. */
    k->c->reader->fn = &rd_fns;
    k->c->reader->privdata = k;
    if (st->password_file) {
        e = rd_auth(st, k);
        if (e != CDX_OK)
            goto out;
    }
    /* PING proves the connection (and tells "needs AUTH" apart from later failures). */
    if (redisAppendCommand(k->c, "PING") != REDIS_OK) {
        e = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory queueing PING");
        goto out;
    }
    e = rd_flush(k, "PING");
    if (e == CDX_OK)
        e = rd_read(k, 0, "PING", &r);
    if (e == CDX_OK && !is_status(r, "PONG"))
        e = rd_unexpected(r, "PING");
out:
    rd_reply_free(r);
    if (e != CDX_OK) {
        rd_conn_free(k);
        return e;
    }
    k->broken = k->dropped = false;
    *out = k;
    return CDX_OK;
}

/* ---- pool ---- */

/*
 * Take a connection: an idle one, or a new one (fresh=true: always a new
 * one, for a retry after a drop). Fails fast during back-off; waits up to
 * timeout_ms when every connection is in use.
 */
static cdx_err rd_acquire(rd_store *st, bool fresh, rd_conn **out)
{
    long long deadline = cdx_mono_ms() + st->timeout_ms;
    rd_conn *stale = NULL, *k = NULL;
    cdx_err e;

    *out = NULL;
    pthread_mutex_lock(&st->mu);
    for (;;) {
        long long now = cdx_mono_ms();
        if (now < st->retry_at_ms) {
            e = cdx_fail(CDX_ERR_STORE_UNAVAILABLE,
                         "Redis at %s is unreachable (%s); in back-off, next attempt in %lld ms",
                         st->addr, st->last_err, st->retry_at_ms - now);
            pthread_mutex_unlock(&st->mu);
            return e;
        }
        if (st->n_idle > 0) {
            k = st->idle[--st->n_idle];
            if (!fresh) {
                pthread_mutex_unlock(&st->mu);
                *out = k;
                return CDX_OK;
            }
            stale = k; /* its slot goes to the new connection */
            break;
        }
        if (st->n_open < st->max_conns) {
            st->n_open++;
            break;
        }
        if (now >= deadline) {
            pthread_mutex_unlock(&st->mu);
            return cdx_fail(CDX_ERR_STORE_UNAVAILABLE,
                            "all %u Redis connections stayed busy for %u ms: raise connections "
                            "or finish transactions sooner",
                            st->max_conns, st->timeout_ms);
        }
        struct timespec ts = {.tv_sec = deadline / 1000, .tv_nsec = (deadline % 1000) * 1000000};
        pthread_cond_timedwait(&st->cv, &st->mu, &ts);
    }
    pthread_mutex_unlock(&st->mu);
    rd_conn_free(stale);

    e = rd_connect(st, &k);
    pthread_mutex_lock(&st->mu);
    if (e != CDX_OK) {
        st->n_open--;
        st->backoff_ms = st->backoff_ms ? st->backoff_ms * 2 : RD_BACKOFF_MIN_MS;
        if (st->backoff_ms > RD_BACKOFF_MAX_MS)
            st->backoff_ms = RD_BACKOFF_MAX_MS;
        st->retry_at_ms = cdx_mono_ms() + st->backoff_ms;
        snprintf(st->last_err, sizeof(st->last_err), "%s", cdx_err_detail());
        pthread_cond_broadcast(&st->cv);
    } else {
        st->backoff_ms = 0;
        st->retry_at_ms = 0;
    }
    pthread_mutex_unlock(&st->mu);
    *out = k;
    return e;
}

/* Return a connection; a broken one is closed, and a dropped one takes the idle ones along. */
static void rd_release(rd_store *st, rd_conn *k)
{
    rd_conn *close_list[CDX_STORE_CONNECTIONS_MAX + 1];
    size_t n_close = 0;

    if (!k)
        return;
    pthread_mutex_lock(&st->mu);
    if (k->broken) {
        close_list[n_close++] = k;
        st->n_open--;
        /* A dropped connection usually means a restarted server: the idle ones are dead too. */
        if (k->dropped) {
            while (st->n_idle > 0) {
                close_list[n_close++] = st->idle[--st->n_idle];
                st->n_open--;
            }
        }
    } else {
        k->bytes = 0;
        st->idle[st->n_idle++] = k;
    }
    pthread_cond_broadcast(&st->cv);
    pthread_mutex_unlock(&st->mu);
    for (size_t i = 0; i < n_close; i++)
        rd_conn_free(close_list[i]);
}

/* Run op on a pooled connection; once more on a fresh one if it dropped and retry is allowed. */
typedef cdx_err (*rd_op_fn)(rd_conn *k, void *ctx, int attempt);

static cdx_err rd_call(rd_store *st, rd_op_fn fn, void *ctx, bool retry, const char *op)
{
    cdx_err e = CDX_OK;

    for (int attempt = 0; attempt < 2; attempt++) {
        rd_conn *k = NULL;
        bool again;
        e = rd_acquire(st, attempt > 0, &k);
        if (e != CDX_OK)
            return e;
        k->bytes = 0;
        e = fn(k, ctx, attempt);
        again = e != CDX_OK && k->dropped && retry;
        rd_release(st, k);
        if (!again)
            break;
        cdx_log(CDX_LOG_INFO, "store_redis_retry", "op=%s addr=\"%s\"", op, st->addr);
    }
    return e;
}

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
        return rd_unexpected(r, "MGET");
    for (size_t j = 0; j < m; j++) {
        rd_reply *el = r->elem[j];
        if (el->type == REDIS_REPLY_STRING)
            steal_val(el, &x->out[c * RD_MGET_CHUNK + j]);
        else if (el->type != REDIS_REPLY_NIL)
            return rd_unexpected(el, "MGET");
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
    return rd_pipeline(k, &p);
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
    e = rd_call(as_rd(s), mget_op, x, true, "MGET");
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
    cmd_str(cmd, "GETRANGE");
    cmd_str(cmd, r->key);
    cmd_str(cmd, x->start);
    cmd_str(cmd, x->end);
}

static cdx_err range_reply(void *vctx, size_t i, rd_reply *r)
{
    range_ctx *x = vctx;
    size_t idx = x->ask[i];

    if (r->type != REDIS_REPLY_STRING)
        return rd_unexpected(r, "GETRANGE");
    if (r->len == 0)
        x->empty[x->n_empty++] = idx;
    else
        steal_val(r, &x->out[idx]);
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

    cmd_str(cmd, "EXISTS");
    cmd_str(cmd, x->r[x->empty[i]].key);
}

static cdx_err exists_reply(void *vctx, size_t i, rd_reply *r)
{
    range_ctx *x = vctx;

    if (r->type != REDIS_REPLY_INTEGER)
        return rd_unexpected(r, "EXISTS");
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
    e = rd_pipeline(k, &p);
    if (e != CDX_OK)
        return e;
    p = (rd_pipe){.op = "EXISTS",
                  .n = x->n_empty,
                  .build = exists_build,
                  .reply = exists_reply,
                  .ctx = x,
                  .bulk_max = exists_max};
    return rd_pipeline(k, &p);
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
        e = rd_call(as_rd(s), range_op, x, true, "GETRANGE");
    free(x->empty);
    free(x->ask);
    free(x);
    return e;
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

    cmd_str(cmd, "SET");
    cmd_str(cmd, x->kv[i].key);
    cmd_arg(cmd, x->kv[i].len ? (const char *)x->kv[i].val : "", x->kv[i].len);
    if (x->created)
        cmd_str(cmd, "NX");
}

static cdx_err write_reply(void *vctx, size_t i, rd_reply *r)
{
    write_ctx *x = vctx;

    if (is_status(r, "OK")) {
        if (x->created)
            x->created[i] = true;
        return CDX_OK;
    }
    if (x->created && r->type == REDIS_REPLY_NIL)
        return CDX_OK; /* existed: left alone */
    return rd_unexpected(r, x->created ? "SET NX" : "SET");
}

static void verify_build(void *vctx, size_t i, rd_cmd *cmd)
{
    write_ctx *x = vctx;

    cmd_str(cmd, "GET");
    cmd_str(cmd, x->kv[i].key);
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
        return rd_unexpected(r, "GET");
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
    e = rd_pipeline(k, &p);
    if (e != CDX_OK || !x->created || x->verify_from >= x->n)
        return e;
    /* After the retry's SET NX, read back the keys the first attempt may have written. */
    p = (rd_pipe){.op = "GET",
                  .first = x->verify_from,
                  .n = x->n,
                  .build = verify_build,
                  .reply = verify_reply,
                  .ctx = x};
    return rd_pipeline(k, &p);
}

static cdx_err rd_setnx(eng_store *s, const eng_kv *kv, size_t n, bool *created)
{
    write_ctx x = {.kv = kv, .n = n, .created = created};

    return rd_call(as_rd(s), write_op, &x, true, "SET NX");
}

static cdx_err rd_set(eng_store *s, const eng_kv *kv, size_t n)
{
    write_ctx x = {.kv = kv, .n = n};

    return rd_call(as_rd(s), write_op, &x, true, "SET");
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

    cmd_str(cmd, "DEL");
    cmd_str(cmd, x->keys[i]);
}

static cdx_err del_reply(void *vctx, size_t i, rd_reply *r)
{
    del_ctx *x = vctx;

    (void)i;
    if (r->type != REDIS_REPLY_INTEGER)
        return rd_unexpected(r, "DEL");
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
    return rd_pipeline(k, &p);
}

static cdx_err rd_del(eng_store *s, const char *const *keys, size_t n, uint64_t *deleted)
{
    del_ctx x = {.keys = keys, .n = n, .deleted = deleted};

    return rd_call(as_rd(s), del_op, &x, true, "DEL");
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
    cmd_str(cmd, "SCAN");
    cmd_str(cmd, x->cur);
    cmd_str(cmd, "MATCH");
    cmd_str(cmd, x->match);
    cmd_str(cmd, "COUNT");
    cmd_str(cmd, x->count);
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
        return rd_unexpected(r, "SCAN");
    errno = 0;
    next = strtoull(r->elem[0]->str, &end, 10);
    if (errno || end == r->elem[0]->str || *end)
        return rd_unexpected(r->elem[0], "SCAN cursor");
    keys = r->elem[1];
    *x->keys = calloc(keys->n ? keys->n : 1, sizeof(char *));
    if (!*x->keys)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "scan: out of memory");
    for (size_t j = 0; j < keys->n; j++) {
        rd_reply *kr = keys->elem[j];
        if (kr->type != REDIS_REPLY_STRING)
            return rd_unexpected(kr, "SCAN");
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
    return rd_pipeline(k, &p);
}

static cdx_err rd_scan(eng_store *s, const char *match, uint64_t *cursor, char ***keys, size_t *n)
{
    uint64_t c = *cursor;
    scan_ctx x = {.match = match, .cursor = &c, .keys = keys, .n = n};
    cdx_err e = rd_call(as_rd(s), scan_op, &x, true, "SCAN");

    if (e == CDX_OK)
        *cursor = c;
    return e;
}

/* ---- transactions ---- */

typedef struct watch_ctx {
    const char *key;
    eng_val *cur;
    rd_conn *k; /* out: the pinned connection */
} watch_ctx;

static void watch_build(void *vctx, size_t i, rd_cmd *cmd)
{
    watch_ctx *x = vctx;

    cmd_str(cmd, i == 0 ? "WATCH" : "GET");
    cmd_str(cmd, x->key);
}

static cdx_err watch_reply(void *vctx, size_t i, rd_reply *r)
{
    watch_ctx *x = vctx;

    if (i == 0)
        return is_status(r, "OK") ? CDX_OK : rd_unexpected(r, "WATCH");
    if (r->type == REDIS_REPLY_STRING)
        steal_val(r, x->cur);
    else if (r->type != REDIS_REPLY_NIL)
        return rd_unexpected(r, "GET");
    return CDX_OK;
}

static cdx_err rd_watch(eng_store *s, const char *key, eng_txn **txn, eng_val *cur)
{
    rd_store *st = as_rd(s);
    rd_txn *t = calloc(1, sizeof(*t));
    watch_ctx x = {.key = key, .cur = cur};
    rd_pipe p = {.op = "WATCH", .n = 2, .build = watch_build, .reply = watch_reply, .ctx = &x};
    cdx_err e = CDX_OK;

    if (!t)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "watch: out of memory");
    /* Not rd_call: on success the connection stays pinned to the transaction. */
    for (int attempt = 0; attempt < 2; attempt++) {
        rd_conn *k = NULL;
        e = rd_acquire(st, attempt > 0, &k);
        if (e != CDX_OK)
            break;
        k->bytes = 0;
        eng_vals_free(cur, 1);
        e = rd_pipeline(k, &p);
        if (e == CDX_OK) {
            t->k = k;
            break;
        }
        bool again = k->dropped;
        if (!k->broken) {
            /* A semantic failure leaves a live WATCH behind: drop the connection instead. */
            k->broken = true;
        }
        rd_release(st, k);
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
        cmd_str(cmd, "MULTI");
    } else if (i <= x->n) {
        const eng_kv *kv = &x->kv[i - 1];
        cmd_str(cmd, "SET");
        cmd_str(cmd, kv->key);
        cmd_arg(cmd, kv->len ? (const char *)kv->val : "", kv->len);
    } else {
        cmd_str(cmd, "EXEC");
        cmd->elem_budget = (long long)x->n;
    }
}

static cdx_err commit_reply(void *vctx, size_t i, rd_reply *r)
{
    commit_ctx *x = vctx;

    if (i == 0)
        return is_status(r, "OK") ? CDX_OK : rd_unexpected(r, "MULTI");
    if (i <= x->n)
        return is_status(r, "QUEUED") ? CDX_OK : rd_unexpected(r, "SET in MULTI");
    x->exec_seen = true;
    if (r->type == REDIS_REPLY_NIL)
        return CDX_OK; /* a watched key changed: nothing was written */
    if (r->type != REDIS_REPLY_ARRAY || r->n != x->n)
        return rd_unexpected(r, "EXEC");
    *x->committed = true;
    for (size_t j = 0; j < r->n; j++)
        if (!is_status(r->elem[j], "OK")) {
            /* EXEC has no rollback: report loudly, the head decides what is visible. */
            cdx_log(CDX_LOG_ERROR, "store_redis_exec_partial", "failed_index=%zu of=%zu", j, r->n);
            return rd_unexpected(r->elem[j], "EXEC");
        }
    return CDX_OK;
}

static cdx_err rd_commit(eng_txn *tx, const eng_kv *kv, size_t n, bool *committed)
{
    rd_txn *t = (rd_txn *)tx;
    rd_store *st = as_rd(tx->store);
    commit_ctx x = {.kv = kv, .n = n, .committed = committed};
    rd_pipe p = {.op = "EXEC", .n = n + 2, .build = commit_build, .reply = commit_reply, .ctx = &x};
    cdx_err e;

    t->k->bytes = 0;
    e = rd_pipeline(t->k, &p);
    if (e != CDX_OK && !x.exec_seen) {
        /* Never retried; closing the connection makes Redis discard an unfinished MULTI. */
        t->k->broken = true;
        if (e == CDX_ERR_STORE_UNAVAILABLE)
            e = cdx_fail(CDX_ERR_STORE_UNAVAILABLE,
                         "lost the Redis connection during a commit: whether it was applied is "
                         "unknown; re-read the head");
    }
    rd_release(st, t->k);
    free(t);
    return e;
}

static void unwatch_build(void *vctx, size_t i, rd_cmd *cmd)
{
    (void)vctx;
    (void)i;
    cmd_str(cmd, "UNWATCH");
}

static cdx_err unwatch_reply(void *vctx, size_t i, rd_reply *r)
{
    (void)vctx;
    (void)i;
    return is_status(r, "OK") ? CDX_OK : rd_unexpected(r, "UNWATCH");
}

static void rd_abort(eng_txn *tx)
{
    rd_txn *t = (rd_txn *)tx;
    rd_pipe p = {.op = "UNWATCH", .n = 1, .build = unwatch_build, .reply = unwatch_reply};

    if (rd_pipeline(t->k, &p) != CDX_OK)
        t->k->broken = true;
    rd_release(as_rd(tx->store), t->k);
    free(t);
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

    cmd_str(cmd, "CONFIG");
    cmd_str(cmd, "GET");
    cmd_str(cmd, x->names[i]);
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
        return rd_unexpected(r, "CONFIG GET");
    clean_text(x->values[i], sizeof(x->values[i]), r->elem[1]->str, r->elem[1]->len);
    return CDX_OK;
}

static cdx_err rd_check_conn(rd_store *st, rd_conn *k, char *desc, size_t cap)
{
    check_ctx x = {.names = {"appendonly", "appendfsync", "maxmemory-policy"}};
    rd_pipe p = {.op = "CONFIG GET", .n = 3, .build = check_build, .reply = check_reply, .ctx = &x};
    char why[512] = "";
    size_t wl = 0;
    cdx_err e = rd_pipeline(k, &p);

    if (e != CDX_OK)
        goto out;
    if (x.error) {
        char t[160];
        clean_text(t, sizeof(t), x.error->str, x.error->len);
        cdx_log(CDX_LOG_WARN, "store_redis_config_refused", "addr=\"%s\" reply=\"%s\"", st->addr,
                t);
        snprintf(desc, cap, "unknown (CONFIG GET refused)");
        e = cdx_fail(CDX_ERR_CONFIG,
                     "cannot check Redis durability at %s: CONFIG GET was refused (%s); allow it "
                     "(ACL SETUSER %s +config|get, or undo a rename-command of CONFIG) or set "
                     "allow_unsafe_durability",
                     st->addr, t, st->user ? st->user : "default");
        goto out;
    }
    snprintf(desc, cap, "appendonly=%s appendfsync=%s maxmemory-policy=%s", x.values[0],
             x.values[1], x.values[2]);
    if (strcmp(x.values[0], "yes") != 0)
        wl += (size_t)snprintf(why + wl, sizeof(why) - wl,
                               "appendonly=%s loses every write since the last snapshot on a "
                               "crash (set appendonly yes); ",
                               x.values[0]);
    if (wl < sizeof(why) && strcmp(x.values[1], "always") != 0 &&
        strcmp(x.values[1], "everysec") != 0)
        wl += (size_t)snprintf(why + wl, sizeof(why) - wl,
                               "appendfsync=%s leaves flushing to the OS (set always or "
                               "everysec); ",
                               x.values[1]);
    if (wl < sizeof(why) && strcmp(x.values[2], "noeviction") != 0) {
        if (strncmp(x.values[2], "volatile-", 9) == 0)
            snprintf(why + wl, sizeof(why) - wl,
                     "maxmemory-policy=%s would only evict keys with a TTL, which Cipherdex never "
                     "sets, but is refused all the same (set noeviction); ",
                     x.values[2]);
        else
            snprintf(why + wl, sizeof(why) - wl,
                     "maxmemory-policy=%s evicts ciphertexts silently when memory runs out (set "
                     "noeviction); ",
                     x.values[2]);
    }
    if (why[0])
        e = cdx_fail(CDX_ERR_CONFIG,
                     "Redis at %s can lose acknowledged writes: %sor set allow_unsafe_durability",
                     st->addr, why);
out:
    if (x.error) {
        free(x.error->str);
        free(x.error);
    }
    return e;
}

static cdx_err rd_check(eng_store *s, char *desc, size_t cap)
{
    rd_store *st = as_rd(s);
    rd_conn *k = NULL;
    cdx_err e = rd_acquire(st, false, &k);

    if (e != CDX_OK)
        return e;
    k->bytes = 0;
    e = rd_check_conn(st, k, desc, cap);
    rd_release(st, k);
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
    rd_store *st = as_rd(s);

    if (st->n_open != st->n_idle)
        cdx_log(CDX_LOG_ERROR, "store_redis_free_busy",
                "msg=\"freed with connections in use (open transactions?)\" open=%u idle=%zu",
                st->n_open, st->n_idle);
    for (size_t i = 0; i < st->n_idle; i++)
        rd_conn_free(st->idle[i]);
    free(st->idle);
    pthread_mutex_destroy(&st->mu);
    pthread_cond_destroy(&st->cv);
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
    .setnx = rd_setnx,
    .set = rd_set,
    .del = rd_del,
    .scan = rd_scan,
    .watch = rd_watch,
    .commit = rd_commit,
    .abort = rd_abort,
    .check = rd_check,
};

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
    bool oom = false;
    cdx_err e = CDX_OK;
    pthread_condattr_t ca;

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
    st->idle = calloc(st->max_conns, sizeof(*st->idle));
    if (oom || !st->idle) {
        free(st->idle);
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
    pthread_mutex_init(&st->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&st->cv, &ca);
    pthread_condattr_destroy(&ca);

    /* The first connection proves address and AUTH, checks durability, then joins the pool. */
    e = rd_acquire(st, false, &k);
    if (e != CDX_OK)
        goto out;
    e = rd_check_conn(st, k, desc, sizeof(desc));
    rd_release(st, k);
    if (e == CDX_ERR_CONFIG && o->allow_unsafe_durability) {
        char t[600];
        clean_text(t, sizeof(t), cdx_err_detail(), strlen(cdx_err_detail()));
        cdx_log(CDX_LOG_WARN, "store_redis_unsafe_durability",
                "addr=\"%s\" settings=\"%s\" msg=\"STARTING ANYWAY (allow_unsafe_durability): "
                "acknowledged writes or ciphertexts can be lost: %s\"",
                st->addr, desc, t);
        e = CDX_OK;
    } else if (e == CDX_OK) {
        cdx_log(CDX_LOG_INFO, "store_redis_open", "addr=\"%s\" settings=\"%s\" connections=%u%s",
                st->addr, desc, st->max_conns,
                strstr(desc, "appendfsync=everysec")
                    ? " note=\"everysec: an OS crash or power loss can lose ~1 s of acknowledged "
                      "writes (a process crash cannot)\""
                    : "");
    }
out:
    if (e != CDX_OK) {
        rd_free(&st->base);
        return e;
    }
    *out = &st->base;
    return CDX_OK;
}

/* ---- test hook ---- */

cdx_err eng_redis_reader_probe(const char *buf, size_t len, int elem_budget, size_t *max_array)
{
    rd_conn k = {.elem_budget = elem_budget};
    redisReader *r = redisReaderCreateWithFunctions(&rd_fns);
    void *rep = NULL;
    cdx_err e;

    if (max_array)
        *max_array = 0;
    if (!r)
        return CDX_ERR_RESOURCE_EXHAUSTED;
    r->privdata = &k;
    if (redisReaderFeed(r, buf, len) != REDIS_OK || redisReaderGetReply(r, &rep) != REDIS_OK)
        e = k.refused != RD_REFUSED_NONE ? CDX_ERR_RESOURCE_EXHAUSTED : CDX_ERR_INTERNAL;
    else
        e = rep ? CDX_OK : CDX_ERR_UNAVAILABLE;
    rd_reply_free(rep);
    if (max_array)
        *max_array = k.max_array;
    redisReaderFree(r);
    return e;
}
