/*
 * fuzz_resp.c - fuzz target for the sans-IO RESP reader the Redis store reads
 * bulk fetches with (engine/eng_redis_resp.h), fed as a hostile server would.
 *
 * LLVMFuzzerTestOneInput: the first byte picks how the stream is cut (chunk
 * size, and whether bulk payloads go through eng_resp_room/commit as the
 * store's readv does), the second picks the bulk bound; the rest is a stream
 * of replies, read one after another as a pipeline reads them. Checked on
 * every input:
 *  - eng_resp_feed consumes everything it is given while it returns MORE,
 *    never more than it is given;
 *  - a finished reply is consistent (a bulk is NUL-terminated and within the
 *    bound, kept text within ENG_RESP_TEXT_MAX, ETOOBIG reports a length over
 *    the bound, no error leaves a payload buffer behind);
 *  - errors are sticky: feeding again returns the same error, consuming
 *    nothing;
 *  - the replies and the final status do not depend on how the stream was
 *    cut: the same input read whole gives the same results.
 *
 * Built two ways (see tests/fuzz/fuzz_main.h):
 *  - by CMake with fuzz_main.c: `fuzz_resp [--seeds DIR] FILE|DIR...`;
 *  - for libFuzzer (clang 14, Debian libclang-rt-14-dev):
 *      clang -g -O1 -fsanitize=fuzzer,address,undefined -DCDX_LIBFUZZER \
 *        -Iengine tests/fuzz/fuzz_resp.c engine/eng_redis_resp.c -o fuzz_resp_lf
 *      ./fuzz_resp_lf -max_len=4096 corpus/
 *    (seed the corpus with `fuzz_resp --seeds corpus corpus`: it writes the
 *    seeds, then replays them).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "eng_redis_resp.h"

#ifndef CDX_LIBFUZZER
#include "fuzz_main.h"
#else
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
#endif

/* Bulk bounds the second byte picks from (mod 8): edges, small, a store value. */
static const uint64_t bounds[8] = {0, 1, 3, 5, 16, 1024, 65536, 64u << 20};

/* What reading a stream gave: compared between two ways of cutting it. */
typedef struct summary {
    uint64_t hash;          /* over every finished reply */
    size_t replies;         /* finished replies */
    eng_resp_status status; /* the last status: MORE (ran out of input) or an error */
    size_t consumed;        /* bytes consumed (compared only when no error stopped the stream) */
} summary;

static void mix(uint64_t *h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        *h = (*h ^ b[i]) * 0x100000001b3ull; /* FNV-1a */
}

/* A reply is complete: check it, fold it into the summary, take its payload. */
static void finished(eng_resp *p, uint64_t bound, summary *s, bool take)
{
    uint64_t kind = (uint64_t)p->kind;

    mix(&s->hash, &kind, sizeof(kind));
    switch (p->kind) {
    case ENG_RESP_BULK:
        if (!p->data || p->len > bound || p->data[p->len] != '\0')
            abort();
        mix(&s->hash, &p->len, sizeof(p->len));
        mix(&s->hash, p->data, p->len);
        break;
    case ENG_RESP_INT:
        mix(&s->hash, &p->integer, sizeof(p->integer));
        break;
    case ENG_RESP_STATUS:
    case ENG_RESP_ERROR:
        if (p->len > ENG_RESP_TEXT_MAX || p->text[p->len] != '\0' || p->data)
            abort();
        mix(&s->hash, &p->len, sizeof(p->len));
        mix(&s->hash, p->text, p->len);
        break;
    case ENG_RESP_NIL:
        if (p->data)
            abort();
        break;
    default:
        abort(); /* DONE without a kind */
    }
    s->replies++;
    if (take && p->data) { /* as the store does: the payload becomes the caller's */
        free(p->data);
        p->data = NULL;
    }
}

/* An error stopped the stream: check it and that it sticks. */
static void failed(eng_resp *p, eng_resp_status st, uint64_t bound, const uint8_t *rest, size_t n)
{
    size_t used = 1;
    uint8_t *dst = NULL;

    if (st != ENG_RESP_EPROTO && st != ENG_RESP_ETYPE && st != ENG_RESP_ETOOBIG &&
        st != ENG_RESP_ENOMEM)
        abort();
    if (p->data || !p->why)
        abort();
    if (st == ENG_RESP_ETOOBIG && p->announced <= bound)
        abort();
    if (eng_resp_feed(p, rest, n, &used) != st || used != 0)
        abort();
    if (eng_resp_room(p, &dst) != 0 || dst)
        abort();
}

/*
 * Read the stream in chunks of `chunk` bytes; payload bytes through
 * room/commit when `direct`. Replies follow each other until the input ends
 * or an error stops it.
 */
static void read_stream(const uint8_t *buf, size_t n, size_t chunk, bool direct, uint64_t bound,
                        summary *s)
{
    eng_resp p = {0};
    size_t off = 0;
    eng_resp_status st = ENG_RESP_MORE;

    memset(s, 0, sizeof(*s));
    s->hash = 0xcbf29ce484222325ull;
    eng_resp_begin(&p, bound);
    while (off < n) {
        size_t m = n - off < chunk ? n - off : chunk, used = 0;
        uint8_t *dst = NULL;
        size_t room = direct ? eng_resp_room(&p, &dst) : 0;

        if (room) {
            size_t c = room < m ? room : m;
            memcpy(dst, buf + off, c);
            eng_resp_commit(&p, c);
            off += c;
            continue;
        }
        st = eng_resp_feed(&p, buf + off, m, &used);
        if (used > m || (st == ENG_RESP_MORE && used != m))
            abort();
        off += used;
        if (st == ENG_RESP_DONE) {
            finished(&p, bound, s, s->replies % 2 == 0);
            eng_resp_begin(&p, bound);
            st = ENG_RESP_MORE;
        } else if (st != ENG_RESP_MORE) {
            failed(&p, st, bound, buf + off, n - off);
            break;
        }
    }
    s->status = st;
    s->consumed = off;
    eng_resp_reset(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t chunk = 1;
    bool direct = false;
    uint64_t bound = bounds[7];
    summary cut, whole;

    if (size >= 2) {
        chunk = (size_t)(data[0] >> 1) + 1; /* 1..128 */
        direct = data[0] & 1;
        bound = bounds[data[1] % 8];
        data += 2;
        size -= 2;
    }
    read_stream(data, size, chunk, direct, bound, &cut);
    read_stream(data, size, size ? size : 1, false, bound, &whole);
    if (cut.hash != whole.hash || cut.replies != whole.replies || cut.status != whole.status)
        abort();
    if (cut.status == ENG_RESP_MORE && cut.consumed != whole.consumed)
        abort();
    return 0;
}

#ifndef CDX_LIBFUZZER

/* ---- seeds: one file per interesting input ----------------------------- */

/* Selector bytes: chunk (even: feed only; odd: payloads through room/commit) and bound index. */
static int write_seed(const char *dir, const char *name, uint8_t cut, uint8_t bound,
                      const char *stream, size_t n)
{
    const uint8_t sel[2] = {cut, bound};
    return fuzz_seed_sel(dir, name, sel, 2, stream, n);
}

#define SEED(name, cut, bound, lit) write_seed(dir, name, cut, bound, lit, sizeof(lit) - 1)

int fuzz_write_seeds(const char *dir)
{
    int rc = 0;
    char big[700];

    /* Bulk strings: plain, empty, CRLF and NULs inside, read whole / by byte / through readv. */
    rc |= SEED("bulk", 0xFF, 5, "$5\r\nhello\r\n");
    rc |= SEED("bulk_by_byte", 0x00, 5, "$5\r\nhello\r\n");
    rc |= SEED("bulk_direct", 0x05, 5, "$5\r\nhello\r\n");
    rc |= SEED("bulk_empty", 0x00, 0, "$0\r\n\r\n");
    rc |= SEED("bulk_crlf_inside", 0x03, 4, "$4\r\na\r\nb\r\n");
    rc |= SEED("bulk_nuls", 0x01, 4, "$3\r\n\0\0\0\r\n");
    rc |= SEED("bulk_at_bound", 0x07, 2, "$3\r\nabc\r\n");
    /* Nil, integers (edges and one past them), status, error. */
    rc |= SEED("nil", 0x00, 0, "$-1\r\n");
    rc |= SEED("integer", 0x00, 0, ":42\r\n");
    rc |= SEED("integer_min", 0x02, 0, ":-9223372036854775808\r\n");
    rc |= SEED("integer_max", 0x02, 0, ":9223372036854775807\r\n");
    rc |= SEED("integer_overflow", 0xFF, 0, ":9223372036854775808\r\n");
    rc |= SEED("integer_empty", 0x00, 0, ":\r\n");
    rc |= SEED("status", 0x00, 0, "+OK\r\n");
    rc |= SEED("error", 0x04, 0, "-ERR wrong kind of value\r\n");
    rc |= SEED("error_noperm", 0xFF, 0, "-NOPERM this user has no permissions\r\n");
    memset(big, 'x', sizeof(big));
    memcpy(big, "-ERR ", 5);
    memcpy(big + sizeof(big) - 2, "\r\n", 2);
    rc |= write_seed(dir, "error_long", 0x10, 0, big, sizeof(big)); /* over ENG_RESP_TEXT_MAX */
    /* Arrays (multi-bulk) are not this reader's: refused at the type byte. */
    rc |= SEED("array", 0x00, 5, "*2\r\n$1\r\na\r\n$1\r\nb\r\n");
    rc |= SEED("array_nested", 0xFF, 5, "*1\r\n*1\r\n:1\r\n");
    rc |= SEED("array_nil", 0xFF, 5, "*-1\r\n");
    /* A pipeline: several replies back to back, the last one cut short. */
    rc |=
        SEED("pipeline", 0x09, 5, "+OK\r\n:1\r\n$3\r\nabc\r\n$-1\r\n-ERR x\r\n$0\r\n\r\n$5\r\nab");
    /* Announced lengths over the bound, over 64 bits, over SIZE_MAX. */
    rc |= SEED("oversize_bound", 0x00, 3, "$6\r\nabcdef\r\n");
    rc |= SEED("oversize_value", 0xFF, 7, "$67108865\r\n");
    rc |= SEED("oversize_u64", 0xFF, 7, "$18446744073709551615\r\n");
    rc |= SEED("oversize_saturated", 0xFF, 7, "$99999999999999999999\r\n");
    rc |= SEED("oversize_header", 0x00, 7, "$000000000000000000000005\r\nhello\r\n");
    /* Truncated in every part. */
    rc |= SEED("truncated_header", 0x00, 5, "$1");
    rc |= SEED("truncated_payload", 0x01, 6, "$10\r\nabc");
    rc |= SEED("truncated_crlf", 0x00, 5, "$3\r\nabc\r");
    rc |= SEED("truncated_line", 0x00, 0, "+OK");
    /* Garbage: unknown type, lone LF, signs and spaces in lengths, no CRLF after a payload. */
    rc |= SEED("garbage_type", 0x00, 0, "\x00\xff junk");
    rc |= SEED("garbage_inline", 0xFF, 0, "PING\r\n");
    rc |= SEED("garbage_lf_header", 0x00, 5, "$5\nhello\r\n");
    rc |= SEED("garbage_lf_line", 0xFF, 0, "+O\nK\r\n");
    rc |= SEED("garbage_cr_no_lf", 0x00, 0, ":1\rx");
    rc |= SEED("garbage_negative_len", 0x00, 5, "$-2\r\n");
    rc |= SEED("garbage_plus_len", 0x00, 5, "$+5\r\nhello\r\n");
    rc |= SEED("garbage_space_len", 0x00, 5, "$ 5\r\nhello\r\n");
    rc |= SEED("garbage_no_crlf", 0x01, 5, "$3\r\nabcde\r\n");
    rc |= SEED("garbage_minus_only", 0x00, 0, ":-\r\n");
    rc |= write_seed(dir, "empty", 0, 0, "", 0);
    return rc ? -1 : 0;
}

#endif
