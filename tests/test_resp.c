/*
 * test_resp.c - the sans-IO RESP reader for bulk fetches (engine/eng_redis_resp.h).
 *
 * Every well-formed case is fed whole, byte by byte and through the
 * direct-payload path (eng_resp_room/commit), and must give the same reply;
 * hostile inputs must fail with the right status without allocating for an
 * announced length over the bound.
 */
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>

#include "eng_redis_resp.h"

/* Feed s[0..n) in pieces of `step` bytes; payload bytes go through room/commit when direct. */
static eng_resp_status feed(eng_resp *p, const char *s, size_t n, size_t step, bool direct,
                            size_t *consumed)
{
    size_t i = 0;
    eng_resp_status st = ENG_RESP_MORE;

    while (i < n && st == ENG_RESP_MORE) {
        uint8_t *dst;
        size_t room = direct ? eng_resp_room(p, &dst) : 0, used = 0;
        if (room) {
            size_t m = room < n - i ? room : n - i;
            m = m < step ? m : step;
            memcpy(dst, s + i, m);
            eng_resp_commit(p, m);
            i += m;
            continue;
        }
        st = eng_resp_feed(p, (const uint8_t *)s + i, n - i < step ? n - i : step, &used);
        i += used;
    }
    *consumed = i;
    return st;
}

typedef struct ok_case {
    const char *in;
    size_t n;
    eng_resp_kind kind;
    const char *data; /* BULK payload or STATUS/ERROR text */
    size_t len;
    long long integer;
} ok_case;

static void test_well_formed(void)
{
    static const ok_case cases[] = {
        {"$5\r\nhello\r\n", 11, ENG_RESP_BULK, "hello", 5, 0},
        {"$0\r\n\r\n", 6, ENG_RESP_BULK, "", 0, 0},
        {"$4\r\na\r\nb\r\n", 10, ENG_RESP_BULK, "a\r\nb", 4, 0}, /* CRLF inside a payload */
        {"$3\r\n\0\0\0\r\n", 9, ENG_RESP_BULK, "\0\0\0", 3, 0},
        {"$-1\r\n", 5, ENG_RESP_NIL, NULL, 0, 0},
        {":0\r\n", 4, ENG_RESP_INT, NULL, 0, 0},
        {":1\r\n", 4, ENG_RESP_INT, NULL, 0, 1},
        {":-42\r\n", 6, ENG_RESP_INT, NULL, 0, -42},
        {":9223372036854775807\r\n", 22, ENG_RESP_INT, NULL, 0, INT64_MAX},
        {":-9223372036854775808\r\n", 23, ENG_RESP_INT, NULL, 0, INT64_MIN},
        {"+OK\r\n", 5, ENG_RESP_STATUS, "OK", 2, 0},
        {"+\r\n", 3, ENG_RESP_STATUS, "", 0, 0},
        {"-WRONGTYPE Operation against a key\r\n", 36, ENG_RESP_ERROR,
         "WRONGTYPE Operation against a key", 33, 0},
    };
    static const size_t steps[] = {1, 2, 3, 7, 1000};

    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
            for (int direct = 0; direct < 2; direct++) {
                const ok_case *k = &cases[c];
                eng_resp p = {0};
                size_t used;
                /* Trailing bytes of a next reply must be left alone. */
                char buf[64];
                memcpy(buf, k->in, k->n);
                memcpy(buf + k->n, "+NEXT\r\n", 7);
                eng_resp_begin(&p, 100);
                CU_ASSERT_EQUAL(feed(&p, buf, k->n + 7, steps[s], direct, &used), ENG_RESP_DONE);
                CU_ASSERT_EQUAL(used, k->n);
                CU_ASSERT_EQUAL(p.kind, k->kind);
                if (k->kind == ENG_RESP_BULK) {
                    CU_ASSERT_PTR_NOT_NULL_FATAL(p.data);
                    CU_ASSERT_EQUAL(p.len, k->len);
                    CU_ASSERT_EQUAL(memcmp(p.data, k->data, k->len), 0);
                    CU_ASSERT_EQUAL(p.data[p.len], 0);
                } else if (k->kind == ENG_RESP_STATUS || k->kind == ENG_RESP_ERROR) {
                    CU_ASSERT_EQUAL(p.len, k->len);
                    CU_ASSERT_STRING_EQUAL(p.text, k->data);
                } else if (k->kind == ENG_RESP_INT) {
                    CU_ASSERT_EQUAL(p.integer, k->integer);
                }
                /* Done is sticky until the next begin; nothing more is consumed. */
                CU_ASSERT_EQUAL(eng_resp_feed(&p, (const uint8_t *)"+X\r\n", 4, &used),
                                ENG_RESP_DONE);
                CU_ASSERT_EQUAL(used, 0);
                eng_resp_reset(&p);
            }
        }
    }
}

/* The caller takes the payload; several replies in a row reuse one reader. */
static void test_take_and_reuse(void)
{
    const char *in = "$3\r\nabc\r\n:7\r\n$2\r\nxy\r\n";
    size_t n = strlen(in), off = 0, used;
    eng_resp p = {0};
    uint8_t *taken;

    eng_resp_begin(&p, 3);
    CU_ASSERT_EQUAL(eng_resp_feed(&p, (const uint8_t *)in, n, &used), ENG_RESP_DONE);
    taken = p.data;
    p.data = NULL;
    off += used;
    eng_resp_begin(&p, 3);
    CU_ASSERT_EQUAL(eng_resp_feed(&p, (const uint8_t *)in + off, n - off, &used), ENG_RESP_DONE);
    CU_ASSERT_EQUAL(p.kind, ENG_RESP_INT);
    CU_ASSERT_EQUAL(p.integer, 7);
    off += used;
    eng_resp_begin(&p, 3);
    CU_ASSERT_EQUAL(eng_resp_feed(&p, (const uint8_t *)in + off, n - off, &used), ENG_RESP_DONE);
    CU_ASSERT_EQUAL(off + used, n);
    CU_ASSERT_TRUE(p.len == 2 && memcmp(p.data, "xy", 2) == 0);
    CU_ASSERT_EQUAL(memcmp(taken, "abc", 4), 0);
    free(taken);
    eng_resp_reset(&p);
}

typedef struct bad_case {
    const char *in;
    eng_resp_status st;
} bad_case;

static void test_hostile(void)
{
    static const bad_case cases[] = {
        {"$101\r\n", ENG_RESP_ETOOBIG}, /* over the bound (100): refused at the header */
        {"$99999999999999999999999999\r\n", ENG_RESP_EPROTO}, /* longer than any length */
        {"$18446744073709551615\r\n", ENG_RESP_ETOOBIG},
        {"$18446744073709551616\r\n", ENG_RESP_ETOOBIG}, /* saturates, still refused */
        {"$-2\r\n", ENG_RESP_EPROTO},
        {"$-0\r\n", ENG_RESP_EPROTO},
        {"$+5\r\n", ENG_RESP_EPROTO},
        {"$ 5\r\n", ENG_RESP_EPROTO},
        {"$5x\r\n", ENG_RESP_EPROTO},
        {"$\r\n", ENG_RESP_EPROTO},
        {"$5\n", ENG_RESP_EPROTO},        /* LF without CR */
        {"$5\rx", ENG_RESP_EPROTO},       /* CR without LF */
        {"$3\r\nabcXY", ENG_RESP_EPROTO}, /* payload not followed by CRLF */
        {"$3\r\nabc\rX", ENG_RESP_EPROTO},
        {"$3\r\nabcd\r\n", ENG_RESP_EPROTO}, /* longer than announced */
        {":\r\n", ENG_RESP_EPROTO},
        {":-\r\n", ENG_RESP_EPROTO},
        {":12a\r\n", ENG_RESP_EPROTO},
        {":9223372036854775808\r\n", ENG_RESP_EPROTO},
        {":-9223372036854775809\r\n", ENG_RESP_EPROTO},
        {"+OK\nmore\r\n", ENG_RESP_EPROTO}, /* bare LF in a line */
        {"+OK\rX", ENG_RESP_EPROTO},
        {"*1\r\n$1\r\na\r\n", ENG_RESP_ETYPE},
        {"%1\r\n", ENG_RESP_EPROTO}, /* RESP3 types never come on our connections */
        {"_\r\n", ENG_RESP_EPROTO},
        {"x", ENG_RESP_EPROTO},
        {"\0", ENG_RESP_EPROTO},
    };

    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        const char *in = cases[c].in;
        size_t n = strlen(in) ? strlen(in) : 1;
        for (size_t step = 1; step <= n; step += n - 1 ? n - 1 : 1) {
            for (int direct = 0; direct < 2; direct++) {
                eng_resp p = {0};
                size_t used;
                eng_resp_begin(&p, 100);
                eng_resp_status st = feed(&p, in, n, step, direct, &used);
                if (st != cases[c].st)
                    fprintf(stderr, "case %zu (%s) step %zu direct %d: status %d\n", c, in, step,
                            direct, (int)st);
                CU_ASSERT_EQUAL(st, cases[c].st);
                CU_ASSERT_PTR_NULL(p.data); /* nothing allocated, or freed on the error */
                /* Errors are sticky and consume nothing. */
                CU_ASSERT_EQUAL(eng_resp_feed(&p, (const uint8_t *)"+OK\r\n", 5, &used), st);
                CU_ASSERT_EQUAL(used, 0);
                CU_ASSERT_EQUAL(eng_resp_room(&p, &(uint8_t *){NULL}), 0);
                if (st == ENG_RESP_EPROTO)
                    CU_ASSERT_PTR_NOT_NULL(p.why);
                eng_resp_reset(&p);
            }
            if (n == 1)
                break;
        }
    }
}

/* The refused announcement is reported, and a huge one allocates nothing. */
static void test_bound(void)
{
    eng_resp p = {0};
    size_t used;
    const char *in = "$1000000000000\r\n";

    eng_resp_begin(&p, 64u << 20);
    CU_ASSERT_EQUAL(eng_resp_feed(&p, (const uint8_t *)in, strlen(in), &used), ENG_RESP_ETOOBIG);
    CU_ASSERT_EQUAL(p.announced, 1000000000000ULL);
    CU_ASSERT_PTR_NULL(p.data);
    /* Exactly the bound is fine; bound 0 admits only empty strings. */
    eng_resp_begin(&p, 3);
    CU_ASSERT_EQUAL(eng_resp_feed(&p, (const uint8_t *)"$3\r\nabc\r\n", 9, &used), ENG_RESP_DONE);
    eng_resp_begin(&p, 0);
    CU_ASSERT_EQUAL(eng_resp_feed(&p, (const uint8_t *)"$0\r\n\r\n", 6, &used), ENG_RESP_DONE);
    eng_resp_begin(&p, 0);
    CU_ASSERT_EQUAL(eng_resp_feed(&p, (const uint8_t *)"$1\r\n", 4, &used), ENG_RESP_ETOOBIG);
    eng_resp_reset(&p);
}

/* Status and error lines: long text is truncated, an endless line is refused. */
static void test_lines(void)
{
    size_t n = ENG_RESP_LINE_MAX + 10, used;
    char *buf = malloc(n + 3);
    eng_resp p = {0};

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    buf[0] = '-';
    memset(buf + 1, 'e', 2000);
    memcpy(buf + 2001, "\r\n", 2);
    eng_resp_begin(&p, 0);
    CU_ASSERT_EQUAL(eng_resp_feed(&p, (const uint8_t *)buf, 2003, &used), ENG_RESP_DONE);
    CU_ASSERT_EQUAL(used, 2003);
    CU_ASSERT_EQUAL(p.kind, ENG_RESP_ERROR);
    CU_ASSERT_EQUAL(p.len, ENG_RESP_TEXT_MAX);
    CU_ASSERT_EQUAL(strlen(p.text), ENG_RESP_TEXT_MAX);
    memset(buf + 1, 'e', n);
    eng_resp_begin(&p, 0);
    CU_ASSERT_EQUAL(eng_resp_feed(&p, (const uint8_t *)buf, n, &used), ENG_RESP_EPROTO);
    eng_resp_reset(&p);
    free(buf);
}

/* Random bytes never crash it or make it allocate beyond the bound. */
static void test_random_bytes(void)
{
    uint8_t buf[64];
    unsigned seed = 12345;

    for (int round = 0; round < 20000; round++) {
        eng_resp p = {0};
        size_t used, n = 1 + (size_t)(rand_r(&seed) % sizeof(buf));
        for (size_t i = 0; i < n; i++) {
            int r = rand_r(&seed) % 8;
            buf[i] = r == 0   ? '\r'
                     : r == 1 ? '\n'
                     : r == 2 ? "$:+-*"[rand_r(&seed) % 5]
                     : r < 5  ? (uint8_t)('0' + rand_r(&seed) % 10)
                              : (uint8_t)rand_r(&seed);
        }
        eng_resp_begin(&p, 16);
        eng_resp_status st = eng_resp_feed(&p, buf, n, &used);
        CU_ASSERT_TRUE(used <= n);
        if (p.data)
            CU_ASSERT_TRUE(p.len <= 16);
        if (st == ENG_RESP_MORE)
            CU_ASSERT_EQUAL(used, n);
        eng_resp_reset(&p);
    }
}

int main(void)
{
    CU_pSuite s;
    unsigned fails;

    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    s = CU_add_suite("resp", NULL, NULL);
    if (!s ||
        !CU_add_test(s, "well-formed replies, whole / byte by byte / direct", test_well_formed) ||
        !CU_add_test(s, "payload taken by the caller, reader reused", test_take_and_reuse) ||
        !CU_add_test(s, "hostile headers, lengths and CRLFs", test_hostile) ||
        !CU_add_test(s, "bound checked before allocating", test_bound) ||
        !CU_add_test(s, "long and endless text lines", test_lines) ||
        !CU_add_test(s, "random bytes", test_random_bytes))
        return 2;
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    fails = CU_get_number_of_failures() + CU_get_number_of_tests_failed() +
            CU_get_number_of_suites_failed();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
