/*
 * fuzz_redis_reply.c - fuzz target for the reply callbacks the Redis store
 * gives hiredis' reader (engine/eng_redis_reply.c): the bounds a hostile
 * server's replies meet before anything is allocated for them, and the error
 * mapping the store applies to a reply it did not expect.
 *
 * LLVMFuzzerTestOneInput: the first byte picks how the stream is cut (chunk
 * size) and the array-element budget each reply starts with; the rest is a
 * stream of RESP2 replies, read one after another as a pipeline reads them.
 * Checked on every input:
 *  - every reply built is a well-formed tree: an array holds exactly the
 *    elements it announced, each present; strings are NUL-terminated;
 *  - no reply holds more array elements (counted through every level) than
 *    the budget it was read with, no string over CDX_STORE_VALUE_MAX, and the
 *    string bytes of the whole stream stay within CDX_STORE_REPLY_MAX;
 *  - a refusal by the callbacks makes the reader fail (the connection would
 *    be closed), and says why;
 *  - eng_rd_unexpected maps every reply to an error (that is its contract;
 *    it logs each one, so replays are loud) and eng_rd_clean_text leaves
 *    printable ASCII only;
 *  - the replies and the final status do not depend on how the stream was
 *    cut: the same input fed whole gives the same results.
 *
 * Built two ways (see tests/fuzz/fuzz_main.h):
 *  - by CMake with fuzz_main.c: `fuzz_redis_reply [--seeds DIR] FILE|DIR...`;
 *  - for libFuzzer (clang 14): CMake with -DCDX_LIBFUZZER=ON (./run fuzz),
 *    linked against a cdx_engine built with the same flags.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cdx_limits.h"
#include "eng_redis_int.h"

#ifndef CDX_LIBFUZZER
#include "fuzz_main.h"
#else
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
#endif

/* Array-element budgets the selector picks from (low 3 bits): edges, small, a pipeline's. */
static const long long budgets[8] = {0, 1, 2, 3, 7, 64, 1000, 100000};
/* Chunk sizes (bits 3..5): 0 is "whole". */
static const size_t chunks[8] = {0, 1, 2, 3, 5, 16, 64, 4096};

typedef struct summary {
    uint64_t hash;
    size_t replies;
    int status; /* 0 ran out of input, 1 reader error, 2 refused by a bound */
    int refused;
} summary;

static void mix(uint64_t *h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        *h = (*h ^ b[i]) * 0x100000001b3ull; /* FNV-1a */
}

/* Check one reply tree, fold it into h; returns the array elements it holds in all. */
static long long walk(const rd_reply *r, uint64_t *h, unsigned depth)
{
    long long elems = 0;
    if (!r || depth > 64) /* hiredis nests at most 7 levels */
        abort();
    mix(h, &r->type, sizeof(r->type));
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        if (!r->str || r->str[r->len] != '\0' || r->len > CDX_STORE_VALUE_MAX || r->elem)
            abort();
        mix(h, &r->len, sizeof(r->len));
        mix(h, r->str, r->len);
        break;
    case REDIS_REPLY_INTEGER:
        mix(h, &r->integer, sizeof(r->integer));
        break;
    case REDIS_REPLY_NIL:
        break;
    case REDIS_REPLY_ARRAY:
        if (r->n && !r->elem)
            abort();
        mix(h, &r->n, sizeof(r->n));
        elems = (long long)r->n;
        for (size_t i = 0; i < r->n; i++)
            elems += walk(r->elem[i], h, depth + 1);
        break;
    default:
        abort();
    }
    return elems;
}

/* The store's view of a reply it did not expect: always an error, and text that is safe to log. */
static void as_unexpected(const rd_reply *r)
{
    cdx_err e = eng_rd_unexpected(r, "fuzz");
    if (e != CDX_ERR_STORE_UNAVAILABLE && e != CDX_ERR_INTERNAL)
        abort();
    (void)eng_rd_is_status(r, "OK");
    if (r->str) {
        char t[64];
        eng_rd_clean_text(t, sizeof(t), r->str, r->len);
        for (const char *p = t; *p; p++)
            if (*p < 0x20 || *p >= 0x7f || *p == '"')
                abort();
    }
}

static void run(const uint8_t *data, size_t size, long long budget, size_t chunk, summary *s)
{
    rd_conn k;
    memset(&k, 0, sizeof(k));
    memset(s, 0, sizeof(*s));
    s->hash = 0xcbf29ce484222325ull;
    redisReader *rr = redisReaderCreate();
    if (!rr)
        abort();
    eng_rd_reader_bind(rr, &k);
    size_t fed = 0;
    bool fresh = true;
    for (;;) {
        void *rep = NULL;
        if (fresh) { /* per reply, however many reads it takes, as rd_read sets it */
            k.elem_budget = budget;
            k.refused = RD_REFUSED_NONE;
            fresh = false;
        }
        if (redisReaderGetReply(rr, &rep) != REDIS_OK) {
            s->status = k.refused != RD_REFUSED_NONE ? 2 : 1;
            s->refused = k.refused;
            if (rep)
                abort();
            break;
        }
        if (!rep) {
            if (fed == size)
                break;
            size_t n = chunk && chunk < size - fed ? chunk : size - fed;
            if (redisReaderFeed(rr, (const char *)data + fed, n) != REDIS_OK)
                abort();
            fed += n;
            continue;
        }
        fresh = true;
        rd_reply *r = rep;
        long long elems = walk(r, &s->hash, 0);
        if (elems > budget || k.bytes > CDX_STORE_REPLY_MAX)
            abort();
        as_unexpected(r);
        s->replies++;
        eng_rd_reply_free(r);
    }
    redisReaderFree(rr);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    long long budget = budgets[data[0] & 7];
    size_t chunk = chunks[(data[0] >> 3) & 7];
    summary a, b;
    run(data + 1, size - 1, budget, chunk, &a);
    run(data + 1, size - 1, budget, 0, &b);
    if (a.hash != b.hash || a.replies != b.replies || a.status != b.status ||
        a.refused != b.refused)
        abort();
    return 0;
}

#ifndef CDX_LIBFUZZER
int fuzz_write_seeds(const char *dir)
{
    static const struct {
        const char *name;
        uint8_t sel;
        const char *s;
    } seeds[] = {
        {"ok", 0x06, "+OK\r\n"},
        {"pipeline", 0x2e, "+OK\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*-1\r\n"},
        {"exec", 0x0e, "*3\r\n+OK\r\n:1\r\n*2\r\n$1\r\na\r\n$0\r\n\r\n"},
        {"mget", 0x3e, "*4\r\n$5\r\nhello\r\n$-1\r\n$2\r\n\x00\xff\r\n$-1\r\n"},
        {"scan", 0x16, "*2\r\n$1\r\n0\r\n*2\r\n$6\r\ncdx:ab\r\n$6\r\ncdx:cd\r\n"},
        {"nested_over", 0x03, "*2\r\n*2\r\n:1\r\n:2\r\n:3\r\n"},
        {"array_huge", 0x06, "*1000000\r\n"},
        {"errors", 0x1e,
         "-NOPERM no\r\n-LOADING Redis is loading\r\n-OOM full\r\n-WRONGTYPE x\r\n-\x01\"\r\n"},
        {"bad_len", 0x06, "$-5\r\n"},
        {"bad_type", 0x06, "?1\r\n"},
        {"info", 0x0e, "$33\r\n# Persistence\r\naof_enabled:1\r\n\r\n"},
    };
    for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++) {
        size_t n = strlen(seeds[i].s);
        if (strcmp(seeds[i].name, "mget") == 0)
            n = 4 + 11 + 5 + 8 + 5; /* holds a NUL */
        if (fuzz_seed_sel(dir, seeds[i].name, &seeds[i].sel, 1, seeds[i].s, n))
            return -1;
    }
    return 0;
}
#endif
