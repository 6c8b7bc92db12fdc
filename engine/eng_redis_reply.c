/*
 * eng_redis_reply.c - reply objects for hiredis' reader, bounded while they
 * are read.
 *
 * hiredis 0.14.1 allocates arrays at whatever size the server announces and
 * buffers whole bulk strings before it hands them over, so checking a reply
 * afterwards is too late. Every context's reader therefore builds our own
 * reply objects (rd_reply) through callbacks that refuse an array larger
 * than the command can legitimately return, a string over
 * CDX_STORE_VALUE_MAX and strings adding up to more than CDX_STORE_REPLY_MAX
 * in one call, before allocating for them. A refusal makes the reader fail:
 * the connection is out of sync and is closed, and the call fails with
 * CDX_ERR_RESOURCE_EXHAUSTED (eng_redis_conn.c). The read loop bounds what
 * hiredis buffers unparsed (eng_redis_conn.c). Our reply objects also let a
 * fetched value move into the caller's eng_val without another copy.
 *
 * Also here: Redis error replies mapped to cdx_err (the one place they are),
 * and eng_redis_reader_probe, the test hook for the callbacks.
 */
#include "eng_redis_int.h"

#include <stdlib.h>
#include <string.h>

#include "cdx_limits.h"
#include "cdx_log.h"

void eng_rd_reply_free(rd_reply *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++)
        eng_rd_reply_free(r->elem[i]);
    free(r->elem);
    free(r->str);
    free(r);
}

static void cb_free(void *p)
{
    eng_rd_reply_free(p);
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
    .freeObject = cb_free,
};

void eng_rd_reader_bind(redisReader *rr, rd_conn *k)
{
    rr->fn = &rd_fns;
    rr->privdata = k;
}

/* ---- reading replies ---- */

const char *eng_rd_clean_text(char *dst, size_t cap, const char *src, size_t len)
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

    eng_rd_clean_text(t, sizeof(t), r->str, r->len);
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
    if (has_prefix(r, "LOADING")) /* restarted, reading its AOF/RDB: soon, not broken */
        return cdx_fail(CDX_ERR_STORE_UNAVAILABLE,
                        "Redis is loading its data set after a restart: %s not served yet; retry "
                        "shortly",
                        op);
    if (has_prefix(r, "BUSY") || has_prefix(r, "MISCONF") ||
        has_prefix(r, "READONLY") || has_prefix(r, "MASTERDOWN") || has_prefix(r, "TRYAGAIN") ||
        has_prefix(r, "CLUSTERDOWN"))
        return cdx_fail(CDX_ERR_STORE_UNAVAILABLE, "Redis cannot serve %s now (%s)", op, t);
    return cdx_fail(CDX_ERR_INTERNAL, "Redis answered %s with an error (%s)", op, t);
}

cdx_err eng_rd_unexpected(const rd_reply *r, const char *op)
{
    if (r->type == REDIS_REPLY_ERROR)
        return rd_error_reply(r, op);
    cdx_log(CDX_LOG_ERROR, "store_redis_unexpected", "op=%s type=%d(%s) len=%zu elements=%zu", op,
            r->type, type_name(r->type), r->len, r->n);
    return cdx_fail(CDX_ERR_INTERNAL, "Redis answered %s with an unexpected %s reply", op,
                    type_name(r->type));
}

bool eng_rd_is_status(const rd_reply *r, const char *s)
{
    return r->type == REDIS_REPLY_STATUS && r->len == strlen(s) && memcmp(r->str, s, r->len) == 0;
}

void eng_rd_steal_val(rd_reply *r, eng_val *v)
{
    v->data = (uint8_t *)r->str;
    v->len = r->len;
    v->found = true;
    r->str = NULL;
    r->len = 0;
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
    eng_rd_reply_free(rep);
    if (max_array)
        *max_array = k.max_array;
    redisReaderFree(r);
    return e;
}
