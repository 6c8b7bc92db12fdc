/*
 * eng_redis_conn.c - connections to Redis: connect, AUTH, reads and writes,
 * pipelines, the bulk reader, and the pool (hiredis 0.14.1, blocking
 * contexts).
 *
 * Pool: at most `connections` contexts, created lazily under a mutex +
 * condvar; a call takes one, a transaction pins one until commit or abort.
 * A connection that fails or falls out of sync is closed, never pooled
 * again.
 *
 * Bounded reads: replies are built by the bounded callbacks of
 * eng_redis_reply.c and read by our own loop (redisBufferRead +
 * redisGetReplyFromReader) that gives up when the reader holds more
 * unparsed bytes than one maximal value plus slack. Either way the
 * connection is closed (it is out of sync) and the call fails with
 * CDX_ERR_RESOURCE_EXHAUSTED.
 *
 * Bulk fetches (GETRANGE and its EXISTS follow-up) bypass hiredis' reader,
 * which reads 16 KiB per syscall into a buffer it grows by reallocation and
 * then hands each bulk to our callback for one more copy. There a sans-IO
 * reader (eng_redis_resp) checks each announced length against the range
 * asked for before allocating, and readv()s the payload straight into the
 * value's final buffer (a small staging buffer takes the CRLF and the next
 * headers), so the bytes are copied once, from the kernel, in as few
 * syscalls as the socket allows. It starts with whatever hiredis had
 * buffered and hands back what it read past the last reply, so both readers
 * see one byte stream; any error discards the connection, as hiredis errors
 * do.
 *
 * Retries: eng_rd_call runs an operation once more on a freshly connected
 * context when its connection dropped (EOF, reset, broken pipe; not a
 * timeout) and the operation says it is idempotent (eng_store_redis.c says
 * which are, and how each resumes).
 *
 * Back-off: a failed connect makes every call fail fast with
 * CDX_ERR_STORE_UNAVAILABLE for 100 ms, doubling up to 1 s while connects
 * keep failing (so service resumes within about a second of Redis's
 * return); no caller ever sleeps for it. A server that answers PING with
 * LOADING (reading its AOF or RDB after a restart) is "not yet", not a
 * failure: it is asked again every 100 ms without growing the back-off.
 * eng_rd_retry_now (the daemon's SIGHUP) ends a back-off at once.
 *
 * AUTH: the password is read from its file at every connect (so it can be
 * rotated) by hsm_secfile_read (no symlink, a regular file without group or
 * other access, one trailing "\n" or "\r\n" stripped) into locked memory,
 * sent from there with our own write (hiredis would leave copies in freed
 * output buffers), and wiped when that buffer is freed. It needs the secret
 * arena (hsm_secmem_init).
 */
#include "eng_redis_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "cdx_limits.h"
#include "cdx_log.h"
#include "cdx_time.h"
#include "hsm_secfile.h"
#include "hsm_secmem.h"

#define RD_PIPE_CMDS        1000       /* commands per pipelined round trip */
#define RD_PIPE_BYTES       (8u << 20) /* argument bytes per round trip (output buffer) */
#define RD_SLACK            (1u << 20) /* unparsed bytes beyond one value: headers + reads */
#define RD_BACKOFF_MIN_MS   100
#define RD_BACKOFF_MAX_MS   1000
#define RD_LOADING_RETRY_MS 100         /* a LOADING server is asked again this often */
#define RD_IN_BUF           (16u << 10) /* bulk reader staging: headers, bytes after a payload */

/* ---- connection I/O ---- */

/* The context failed (c->err): classify, log the raw error, mark the connection. */
static cdx_err rd_conn_error(rd_conn *k, const char *op, int saved_errno)
{
    char t[160];
    int err = k->c->err;

    k->broken = true;
    eng_rd_clean_text(t, sizeof(t), k->c->errstr, strlen(k->c->errstr));
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
    eng_rd_reply_free(r);
    k->broken = true;
    return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory reading a Redis reply to %s", op);
}

/*
 * Send commands in round trips of at most RD_PIPE_CMDS commands /
 * RD_PIPE_BYTES bytes (bounding hiredis' output buffer), reading every reply
 * in order. A handler's error is remembered while the remaining replies are
 * still read, so the connection stays in sync; an I/O or bound error stops
 * at once (the connection is then broken).
 */
cdx_err eng_rd_pipeline(rd_conn *k, const rd_pipe *p)
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
            eng_rd_reply_free(r);
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

/*
 * Send all of iov[0..n) (advanced in place). MSG_NOSIGNAL: a dropped server
 * is an error, not a signal. Returns false with errno set (0 when the
 * connection closed).
 */
static bool send_all(int fd, struct iovec *iov, size_t n)
{
    while (n > 0) {
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = n};
        ssize_t w = sendmsg(fd, &m, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (w == 0)
                errno = 0;
            return false;
        }
        for (; n > 0 && (size_t)w >= iov->iov_len; iov++, n--)
            w -= (ssize_t)iov->iov_len;
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return true;
}

/*
 * AUTH [user] password, written by us: hiredis' output buffer would free the
 * password without wiping it. The password goes from its locked buffer
 * (hsm_secfile_read) straight to the socket; no other copy is made.
 */
static cdx_err rd_auth(rd_store *st, rd_conn *k)
{
    static const hsm_secfile_opts pw_opts = {
        .what = "Redis password_file", .max = CDX_STORE_PASSWORD_MAX, .err = CDX_ERR_CONFIG};
    char head[64], mid[32];
    size_t plen = 0, ulen = st->user ? strlen(st->user) : 0;
    struct iovec iov[5];
    size_t niov = 0;
    char *pw = NULL;
    rd_reply *r = NULL;
    cdx_err e = hsm_secfile_read(st->password_file, &pw_opts, &pw, &plen);

    if (e != CDX_OK)
        return e;
    /* *3 $4 AUTH $<ulen> <user> $<plen> <password>, or *2 without the user. */
    if (st->user) {
        int h = snprintf(head, sizeof(head), "*3\r\n$4\r\nAUTH\r\n$%zu\r\n", ulen);
        int m = snprintf(mid, sizeof(mid), "\r\n$%zu\r\n", plen);
        iov[niov++] = (struct iovec){.iov_base = head, .iov_len = (size_t)h};
        iov[niov++] = (struct iovec){.iov_base = st->user, .iov_len = ulen};
        iov[niov++] = (struct iovec){.iov_base = mid, .iov_len = (size_t)m};
    } else {
        int h = snprintf(head, sizeof(head), "*2\r\n$4\r\nAUTH\r\n$%zu\r\n", plen);
        iov[niov++] = (struct iovec){.iov_base = head, .iov_len = (size_t)h};
    }
    iov[niov++] = (struct iovec){.iov_base = pw, .iov_len = plen};
    iov[niov++] = (struct iovec){.iov_base = "\r\n", .iov_len = 2};
    if (!send_all(k->c->fd, iov, niov)) {
        k->broken = true;
        e = cdx_fail(CDX_ERR_STORE_UNAVAILABLE, "cannot send AUTH to Redis at %s: %s", st->addr,
                     errno ? strerror(errno) : "the server closed the connection");
        goto out;
    }
    e = rd_read(k, 0, "AUTH", &r);
    if (e != CDX_OK)
        goto out;
    if (r->type == REDIS_REPLY_ERROR) {
        char t[160];
        eng_rd_clean_text(t, sizeof(t), r->str, r->len);
        cdx_log(CDX_LOG_ERROR, "store_redis_auth_refused", "addr=\"%s\" user=\"%s\" reply=\"%s\"",
                st->addr, st->user ? st->user : "default", t);
        e = cdx_fail(CDX_ERR_STORE_UNAVAILABLE,
                     "Redis at %s refused AUTH for user %s (%s): check password_file %s%s",
                     st->addr, st->user ? st->user : "default", t, st->password_file,
                     st->user ? " and the ACL user" : "");
        goto out;
    }
    if (!eng_rd_is_status(r, "OK"))
        e = eng_rd_unexpected(r, "AUTH");
out:
    eng_rd_reply_free(r);
    hsm_secmem_free(pw); /* wipes */
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

/* The PING reply says the server is still loading its data set. */
static bool rd_is_loading(const rd_reply *r)
{
    return r && r->type == REDIS_REPLY_ERROR && r->len >= 7 && memcmp(r->str, "LOADING", 7) == 0;
}

/* *loading: the server answered but is still loading its data (not a failure). */
static cdx_err rd_connect(rd_store *st, rd_conn **out, bool *loading)
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
        eng_rd_clean_text(t, sizeof(t), k->c->errstr, strlen(k->c->errstr));
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
    eng_rd_reader_bind(k->c->reader, k);
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
    if (e == CDX_OK && rd_is_loading(r)) {
        *loading = true;
        e = cdx_fail(CDX_ERR_STORE_UNAVAILABLE,
                     "Redis at %s is loading its data set after a restart: not serving yet "
                     "(asked again every %d ms)",
                     st->addr, RD_LOADING_RETRY_MS);
    } else if (e == CDX_OK && !eng_rd_is_status(r, "PONG")) {
        e = eng_rd_unexpected(r, "PING");
    }
out:
    eng_rd_reply_free(r);
    if (e != CDX_OK) {
        rd_conn_free(k);
        return e;
    }
    k->broken = k->dropped = false;
    *out = k;
    return CDX_OK;
}

/* ---- pool ---- */

cdx_err eng_rd_pool_init(rd_store *st)
{
    pthread_condattr_t ca;

    st->idle = calloc(st->max_conns, sizeof(*st->idle));
    if (!st->idle)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "redis store: out of memory");
    pthread_mutex_init(&st->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&st->cv, &ca);
    pthread_condattr_destroy(&ca);
    return CDX_OK;
}

void eng_rd_pool_fini(rd_store *st)
{
    if (st->n_open != st->n_idle)
        cdx_log(CDX_LOG_ERROR, "store_redis_free_busy",
                "msg=\"freed with connections in use (open transactions?)\" open=%u idle=%zu",
                st->n_open, st->n_idle);
    for (size_t i = 0; i < st->n_idle; i++)
        rd_conn_free(st->idle[i]);
    free(st->idle);
    pthread_mutex_destroy(&st->mu);
    pthread_cond_destroy(&st->cv);
}

/*
 * Take a connection: an idle one, or a new one (fresh=true: always a new
 * one, for a retry after a drop). Fails fast during back-off; waits up to
 * timeout_ms when every connection is in use.
 */
cdx_err eng_rd_acquire(rd_store *st, bool fresh, rd_conn **out)
{
    long long deadline = cdx_mono_ms() + st->timeout_ms;
    rd_conn *stale = NULL, *k = NULL;
    cdx_err e;

    *out = NULL;
    pthread_mutex_lock(&st->mu);
    for (;;) {
        long long now = cdx_mono_ms();
        if (now < st->retry_at_ms) {
            e = st->loading ? cdx_fail(CDX_ERR_STORE_UNAVAILABLE,
                                       "Redis at %s is loading its data set after a restart: not "
                                       "serving yet (next check in %lld ms)",
                                       st->addr, st->retry_at_ms - now)
                            : cdx_fail(CDX_ERR_STORE_UNAVAILABLE,
                                       "Redis at %s is unreachable (%s); in back-off, next "
                                       "attempt in %lld ms",
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

    bool loading = false, log_loading = false, log_ready = false;
    e = rd_connect(st, &k, &loading);
    pthread_mutex_lock(&st->mu);
    if (e != CDX_OK && loading) { /* not yet: no growing back-off, asked again shortly */
        st->n_open--;
        st->backoff_ms = 0;
        st->retry_at_ms = cdx_mono_ms() + RD_LOADING_RETRY_MS;
        snprintf(st->last_err, sizeof(st->last_err), "%s", "loading its data set");
        log_loading = !st->loading;
        st->loading = true;
        pthread_cond_broadcast(&st->cv);
    } else if (e != CDX_OK) {
        st->n_open--;
        st->backoff_ms = st->backoff_ms ? st->backoff_ms * 2 : RD_BACKOFF_MIN_MS;
        if (st->backoff_ms > RD_BACKOFF_MAX_MS)
            st->backoff_ms = RD_BACKOFF_MAX_MS;
        st->retry_at_ms = cdx_mono_ms() + st->backoff_ms;
        snprintf(st->last_err, sizeof(st->last_err), "%s", cdx_err_detail());
        st->loading = false;
        pthread_cond_broadcast(&st->cv);
    } else {
        st->backoff_ms = 0;
        st->retry_at_ms = 0;
        log_ready = st->loading;
        st->loading = false;
    }
    pthread_mutex_unlock(&st->mu);
    if (log_loading) /* once per loading phase, not per attempt */
        cdx_log(CDX_LOG_WARN, "store_redis_loading", "addr=\"%s\" retry_ms=%d", st->addr,
                RD_LOADING_RETRY_MS);
    if (log_ready)
        cdx_log(CDX_LOG_INFO, "store_redis_loaded", "addr=\"%s\"", st->addr);
    *out = k;
    return e;
}

void eng_rd_retry_now(eng_store *s)
{
    rd_store *st = rd_store_of(s);

    pthread_mutex_lock(&st->mu);
    st->backoff_ms = 0;
    st->retry_at_ms = 0;
    pthread_mutex_unlock(&st->mu);
}

bool eng_rd_is_loading(rd_store *st)
{
    pthread_mutex_lock(&st->mu);
    bool loading = st->loading;
    pthread_mutex_unlock(&st->mu);
    return loading;
}

/* Return a connection; a broken one is closed, and a dropped one takes the idle ones along. */
void eng_rd_release(rd_store *st, rd_conn *k)
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

cdx_err eng_rd_call(rd_store *st, rd_op_fn fn, void *ctx, bool retry, const char *op)
{
    cdx_err e = CDX_OK;

    for (int attempt = 0; attempt < 2; attempt++) {
        rd_conn *k = NULL;
        bool again;
        e = eng_rd_acquire(st, attempt > 0, &k);
        if (e != CDX_OK)
            return e;
        k->bytes = 0;
        e = fn(k, ctx, attempt);
        again = e != CDX_OK && k->dropped && retry;
        eng_rd_release(st, k);
        if (!again)
            break;
        cdx_log(CDX_LOG_INFO, "store_redis_retry", "op=%s addr=\"%s\"", op, st->addr);
    }
    return e;
}
