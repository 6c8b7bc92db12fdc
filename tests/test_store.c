/*
 * test_store.c - the store interface (engine/eng_store.h).
 *
 * One set of tests runs against three stores: memory, Redis over TCP, and
 * Redis over a unix socket as an ACL user with a password file. Then a
 * Redis-only suite covers what only a real server can show: bounded replies,
 * durability checks, AUTH, kill -9 + restart, back-off, the pool, retries.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "cdx_err.h"
#include "cdx_limits.h"
#include "eng_store.h"
#include "eng_store_internal.h"
#include "fx_redis.h"
#include "fx_tmp.h"
#include "fx_cunit.h"
#include "fx_engine.h"
#include "hsm_secmem.h"

#define ACL_USER "cdx-app"
#define ACL_PASS "correct horse battery staple"

/* The current shared suite: its store, and how to open another one on the same backend. */
static eng_store *S;
static fx_redis *R;           /* NULL for the memory suite */
static eng_redis_opts R_OPTS; /* how S was opened (redis suites) */
static char *TMP;             /* scratch dir for password files */
static char *PWFILE;

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void pause_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static cdx_err open_like_S(eng_store **out)
{
    return R ? eng_store_redis_new(&R_OPTS, out) : eng_store_memory_new(out);
}

/* Write the string content to TMP/name with `mode`; returns the malloc'ed path. */
static char *write_file(const char *name, const char *content, mode_t mode)
{
    return fx_write_file(TMP, name, content, strlen(content), mode);
}

/* ---- helpers on the current store ---- */

static void put(eng_store *s, const char *key, const void *val, size_t len)
{
    eng_kv kv = {key, val, len};
    CU_ASSERT_EQUAL(eng_store_set(s, &kv, 1), CDX_OK);
}

static void expect_val(eng_store *s, const char *key, const void *val, size_t len)
{
    eng_val v;
    const char *k[] = {key};

    CU_ASSERT_EQUAL_FATAL(eng_store_mget(s, k, 1, &v), CDX_OK);
    CU_ASSERT_TRUE(v.found);
    CU_ASSERT_PTR_NOT_NULL(v.data);
    CU_ASSERT_EQUAL(v.len, len);
    if (v.found && v.len == len && len)
        CU_ASSERT_EQUAL(memcmp(v.data, val, len), 0);
    eng_vals_free(&v, 1);
}

static void expect_missing(eng_store *s, const char *key)
{
    eng_val v;
    const char *k[] = {key};

    CU_ASSERT_EQUAL_FATAL(eng_store_mget(s, k, 1, &v), CDX_OK);
    CU_ASSERT_FALSE(v.found);
    CU_ASSERT_PTR_NULL(v.data);
    eng_vals_free(&v, 1);
}

/* ---- shared tests ---- */

static void test_kind_and_check(void)
{
    char desc[160];

    CU_ASSERT_STRING_EQUAL(eng_store_kind(S), R ? "redis" : "memory");
    CU_ASSERT_EQUAL(eng_store_check(S, desc, sizeof(desc)), CDX_OK);
    if (R) {
        CU_ASSERT_STRING_EQUAL(desc,
                               "appendonly=yes appendfsync=always maxmemory-policy=noeviction");
    } else {
        CU_ASSERT_STRING_EQUAL(desc, "memory (volatile)");
    }
    eng_store_free(NULL);
    eng_vals_free(NULL, 3);
    eng_keys_free(NULL, 3);
    eng_store_abort(NULL);
}

static void test_setnx(void)
{
    eng_kv kv[3] = {{"t1:a", (const uint8_t *)"one", 3},
                    {"t1:b", (const uint8_t *)"two", 3},
                    {"t1:a", (const uint8_t *)"ONE!", 4}}; /* same key again in the batch */
    bool created[3];

    CU_ASSERT_EQUAL_FATAL(eng_store_setnx(S, kv, 3, created), CDX_OK);
    CU_ASSERT_TRUE(created[0]);
    CU_ASSERT_TRUE(created[1]);
    CU_ASSERT_FALSE(created[2]);
    kv[0].val = (const uint8_t *)"XXX";
    CU_ASSERT_EQUAL(eng_store_setnx(S, kv, 1, created), CDX_OK);
    CU_ASSERT_FALSE(created[0]);
    expect_val(S, "t1:a", "one", 3);
    expect_val(S, "t1:b", "two", 3);
    CU_ASSERT_EQUAL(eng_store_setnx(S, kv, 0, NULL), CDX_OK);
}

static void test_set(void)
{
    eng_kv kv[2] = {{"t2:a", (const uint8_t *)"v1", 2}, {"t2:b", (const uint8_t *)"w1", 2}};

    CU_ASSERT_EQUAL(eng_store_set(S, kv, 2), CDX_OK);
    expect_val(S, "t2:a", "v1", 2);
    kv[0].val = (const uint8_t *)"v2-longer";
    kv[0].len = 9;
    CU_ASSERT_EQUAL(eng_store_set(S, kv, 1), CDX_OK);
    expect_val(S, "t2:a", "v2-longer", 9);
    expect_val(S, "t2:b", "w1", 2);
}

static void test_mget_missing(void)
{
    const char *keys[] = {"t3:a", "t3:missing", "t3:b", "t3:also-missing"};
    eng_val v[4];

    put(S, "t3:a", "A", 1);
    put(S, "t3:b", "BB", 2);
    CU_ASSERT_EQUAL_FATAL(eng_store_mget(S, keys, 4, v), CDX_OK);
    CU_ASSERT_TRUE(v[0].found && v[0].len == 1 && v[0].data[0] == 'A');
    CU_ASSERT_FALSE(v[1].found);
    CU_ASSERT_PTR_NULL(v[1].data);
    CU_ASSERT_TRUE(v[2].found && v[2].len == 2 && memcmp(v[2].data, "BB", 2) == 0);
    CU_ASSERT_FALSE(v[3].found);
    eng_vals_free(v, 4);
    CU_ASSERT_EQUAL(eng_store_mget(S, keys, 0, NULL), CDX_OK);
}

static void test_binary_values(void)
{
    static const uint8_t bin[] = {'a', 0, 'b', 0, 0xff, '\r', '\n', 0};
    eng_kv kv[2] = {{"t4:bin", bin, sizeof(bin)}, {"t4:empty", NULL, 0}};
    bool created[2];

    CU_ASSERT_EQUAL_FATAL(eng_store_setnx(S, kv, 2, created), CDX_OK);
    CU_ASSERT_TRUE(created[0] && created[1]);
    expect_val(S, "t4:bin", bin, sizeof(bin));
    expect_val(S, "t4:empty", "", 0); /* found, length 0, data not NULL */
    kv[0].key = "t4:empty2";
    kv[0].val = (const uint8_t *)"";
    kv[0].len = 0;
    CU_ASSERT_EQUAL(eng_store_set(S, kv, 1), CDX_OK);
    expect_val(S, "t4:empty2", "", 0);
}

static void test_getrange(void)
{
    eng_range r[8] = {
        {"t5:v", 2, 3},       /* inside */
        {"t5:v", 8, 10},      /* over the end: truncated */
        {"t5:v", 20, 5},      /* past the end: empty, found */
        {"t5:missing", 0, 4}, /* missing key */
        {"t5:v", 0, 0},       /* empty range of an existing key */
        {"t5:empty", 0, 5},   /* 0-length value */
        {"t5:missing", 3, 0}, /* empty range of a missing key */
        {"t5:v", 0, 10},      /* all of it */
    };
    eng_val v[8];

    put(S, "t5:v", "0123456789", 10);
    put(S, "t5:empty", "", 0);
    CU_ASSERT_EQUAL_FATAL(eng_store_getrange(S, r, 8, v), CDX_OK);
    CU_ASSERT_TRUE(v[0].found && v[0].len == 3 && memcmp(v[0].data, "234", 3) == 0);
    CU_ASSERT_TRUE(v[1].found && v[1].len == 2 && memcmp(v[1].data, "89", 2) == 0);
    CU_ASSERT_TRUE(v[2].found && v[2].len == 0 && v[2].data);
    CU_ASSERT_FALSE(v[3].found);
    CU_ASSERT_TRUE(v[4].found && v[4].len == 0);
    CU_ASSERT_TRUE(v[5].found && v[5].len == 0);
    CU_ASSERT_FALSE(v[6].found);
    CU_ASSERT_TRUE(v[7].found && v[7].len == 10 && memcmp(v[7].data, "0123456789", 10) == 0);
    eng_vals_free(v, 8);

    eng_range bad = {"t5:v", 0, (uint64_t)CDX_STORE_VALUE_MAX + 1};
    CU_ASSERT_EQUAL(eng_store_getrange(S, &bad, 1, v), CDX_ERR_INVALID_ARGUMENT);
    bad = (eng_range){"t5:v", UINT64_MAX - 2, 1};
    CU_ASSERT_EQUAL(eng_store_getrange(S, &bad, 1, v), CDX_ERR_INVALID_ARGUMENT);
}

/* Byte i of a test value: a pattern that catches shifted or swapped chunks. */
static uint8_t pat(size_t i, unsigned salt)
{
    return (uint8_t)(i * 131 + (i >> 13) + salt * 7);
}

static uint8_t *pattern(size_t n, unsigned salt)
{
    uint8_t *b = malloc(n ? n : 1);

    for (size_t i = 0; b && i < n; i++)
        b[i] = pat(i, salt);
    return b;
}

/* Values far bigger than any reader buffer (16 KiB), in one pipeline with missing keys. */
static void test_getrange_large(void)
{
    static const size_t sizes[] = {300000, (1u << 20) + 17, 3u << 20, 70000, 16383, 16384, 16385};
    enum { NV = sizeof(sizes) / sizeof(sizes[0]) };
    char keys[NV][32];
    uint8_t *vals[NV];
    eng_kv kv[NV];
    eng_range r[2 * NV + 4];
    eng_val v[2 * NV + 4];
    size_t n = 0;

    for (size_t i = 0; i < NV; i++) {
        snprintf(keys[i], sizeof(keys[i]), "t5l:%zu", i);
        vals[i] = pattern(sizes[i], (unsigned)i);
        CU_ASSERT_PTR_NOT_NULL_FATAL(vals[i]);
        kv[i] = (eng_kv){keys[i], vals[i], sizes[i]};
    }
    CU_ASSERT_EQUAL_FATAL(eng_store_set(S, kv, NV), CDX_OK);
    /* Whole values, a missing key after each odd one, then partial and edge ranges. */
    for (size_t i = 0; i < NV; i++) {
        r[n++] = (eng_range){keys[i], 0, sizes[i]};
        if (i % 2)
            r[n++] = (eng_range){"t5l:missing", 0, sizes[i]};
    }
    r[n++] = (eng_range){keys[2], 12345, 1000000};    /* inside */
    r[n++] = (eng_range){keys[1], sizes[1] - 5, 100}; /* over the end: 5 bytes */
    r[n++] = (eng_range){keys[0], sizes[0], 10};      /* past the end: empty, found */
    r[n++] = (eng_range){"t5l:gone", 7, 3};
    CU_ASSERT_EQUAL_FATAL(eng_store_getrange(S, r, n, v), CDX_OK);
    for (size_t j = 0; j < n; j++) {
        size_t i = (size_t)(r[j].key[4] - '0');
        if (strcmp(r[j].key, "t5l:missing") == 0 || strcmp(r[j].key, "t5l:gone") == 0) {
            CU_ASSERT_FALSE(v[j].found);
            CU_ASSERT_PTR_NULL(v[j].data);
            continue;
        }
        size_t want = r[j].off >= sizes[i]             ? 0
                      : sizes[i] - r[j].off < r[j].len ? sizes[i] - r[j].off
                                                       : (size_t)r[j].len;
        CU_ASSERT_TRUE(v[j].found);
        CU_ASSERT_PTR_NOT_NULL(v[j].data);
        CU_ASSERT_EQUAL(v[j].len, want);
        if (v[j].len == want && want && memcmp(v[j].data, vals[i] + r[j].off, want) != 0) {
            fprintf(stderr, "range %zu (%s %llu+%llu) differs\n", j, r[j].key,
                    (unsigned long long)r[j].off, (unsigned long long)r[j].len);
            CU_FAIL("large range bytes differ");
        }
    }
    eng_vals_free(v, n);
    for (size_t i = 0; i < NV; i++)
        free(vals[i]);
}

static void test_del(void)
{
    const char *keys[] = {"t6:a", "t6:b", "t6:missing", "t6:a"};
    uint64_t deleted = 99;

    put(S, "t6:a", "1", 1);
    put(S, "t6:b", "2", 1);
    put(S, "t6:c", "3", 1);
    CU_ASSERT_EQUAL(eng_store_del(S, keys, 4, &deleted), CDX_OK);
    CU_ASSERT_EQUAL(deleted, 2);
    expect_missing(S, "t6:a");
    expect_missing(S, "t6:b");
    expect_val(S, "t6:c", "3", 1);
    keys[0] = "t6:c";
    CU_ASSERT_EQUAL(eng_store_del(S, keys, 1, NULL), CDX_OK);
    expect_missing(S, "t6:c");
}

#define SCAN_KEYS 3000

static void test_scan_3000(void)
{
    eng_kv *kv = calloc(SCAN_KEYS + 60, sizeof(*kv));
    char(*names)[32] = calloc(SCAN_KEYS + 60, sizeof(*names));
    bool *created = calloc(SCAN_KEYS + 60, sizeof(*created));
    unsigned char *seen = calloc(SCAN_KEYS, 1);
    const char **keys = calloc(SCAN_KEYS, sizeof(*keys));
    eng_val *vals = calloc(SCAN_KEYS, sizeof(*vals));
    uint64_t cursor = 0, deleted = 0;
    size_t total = 0, steps = 0, dups = 0, bad = 0;

    CU_ASSERT_FATAL(kv && names && created && seen && keys && vals);
    for (size_t i = 0; i < SCAN_KEYS + 60; i++) {
        if (i < SCAN_KEYS)
            snprintf(names[i], sizeof(names[i]), "t7:k:%05zu", i);
        else if (i < SCAN_KEYS + 30)
            snprintf(names[i], sizeof(names[i]), "t7:other:%zu", i);
        else
            snprintf(names[i], sizeof(names[i]), "t7:kk:%zu", i); /* near miss */
        kv[i] = (eng_kv){names[i], (const uint8_t *)names[i], strlen(names[i])};
    }
    /* One batch: crosses the pipeline's round-trip size. */
    CU_ASSERT_EQUAL_FATAL(eng_store_setnx(S, kv, SCAN_KEYS + 60, created), CDX_OK);
    for (size_t i = 0; i < SCAN_KEYS + 60; i++)
        CU_ASSERT_TRUE(created[i]);
    do {
        char **got = NULL;
        size_t n = 0;
        CU_ASSERT_EQUAL_FATAL(eng_store_scan(S, "t7:k:*", &cursor, &got, &n), CDX_OK);
        for (size_t j = 0; j < n; j++) {
            unsigned idx;
            char tail;
            if (sscanf(got[j], "t7:k:%5u%c", &idx, &tail) != 1 || idx >= SCAN_KEYS) {
                bad++;
                continue;
            }
            dups += seen[idx];
            seen[idx] = 1;
        }
        total += n;
        eng_keys_free(got, n);
        steps++;
    } while (cursor != 0 && steps < 100000);
    CU_ASSERT_EQUAL(bad, 0);
    for (size_t i = 0; i < SCAN_KEYS; i++)
        if (!seen[i]) {
            CU_FAIL("a key present throughout the scan was never returned");
            break;
        }
    CU_ASSERT_TRUE(steps > 1); /* a cursor really walked */
    CU_ASSERT_EQUAL(total - dups, SCAN_KEYS);

    /* MGET of all of them: crosses the MGET chunk size. */
    for (size_t i = 0; i < SCAN_KEYS; i++)
        keys[i] = names[i];
    CU_ASSERT_EQUAL_FATAL(eng_store_mget(S, keys, SCAN_KEYS, vals), CDX_OK);
    for (size_t i = 0; i < SCAN_KEYS; i++)
        if (!vals[i].found || vals[i].len != strlen(names[i]) ||
            memcmp(vals[i].data, names[i], vals[i].len) != 0) {
            CU_FAIL("mget of 3000 keys returned a wrong value");
            break;
        }
    eng_vals_free(vals, SCAN_KEYS);

    /* GETRANGE of all of them, every other one past the end (so EXISTS crosses round trips too). */
    eng_range *rg = calloc(SCAN_KEYS, sizeof(*rg));
    CU_ASSERT_PTR_NOT_NULL_FATAL(rg);
    for (size_t i = 0; i < SCAN_KEYS; i++)
        rg[i] = (eng_range){names[i], i % 2 ? 100 : 3, 2};
    CU_ASSERT_EQUAL_FATAL(eng_store_getrange(S, rg, SCAN_KEYS, vals), CDX_OK);
    for (size_t i = 0; i < SCAN_KEYS; i++)
        if (!vals[i].found || vals[i].len != (i % 2 ? 0u : 2u) ||
            (vals[i].len && memcmp(vals[i].data, "k:", 2) != 0)) {
            CU_FAIL("getrange of 3000 keys returned a wrong range");
            break;
        }
    eng_vals_free(vals, SCAN_KEYS);
    free(rg);
    CU_ASSERT_EQUAL(eng_store_del(S, keys, SCAN_KEYS, &deleted), CDX_OK);
    CU_ASSERT_EQUAL(deleted, SCAN_KEYS);
    free(kv);
    free(names);
    free(created);
    free(seen);
    free(keys);
    free(vals);
}

/* Scan everything matching `pat` into a sorted, space-joined string. */
static int cmpstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void scan_all(const char *pat, char *out, size_t cap)
{
    char *acc[64];
    size_t nacc = 0, len = 0;
    uint64_t cursor = 0;

    out[0] = '\0';
    do {
        char **got = NULL;
        size_t n = 0;
        CU_ASSERT_EQUAL_FATAL(eng_store_scan(S, pat, &cursor, &got, &n), CDX_OK);
        for (size_t j = 0; j < n; j++) {
            bool dup = false;
            for (size_t k = 0; k < nacc; k++)
                dup |= strcmp(acc[k], got[j]) == 0;
            if (!dup && nacc < 64)
                acc[nacc++] = strdup(got[j]);
        }
        eng_keys_free(got, n);
    } while (cursor != 0);
    qsort(acc, nacc, sizeof(*acc), cmpstr);
    for (size_t k = 0; k < nacc; k++) {
        len += (size_t)snprintf(out + len, len < cap ? cap - len : 0, "%s%s", k ? " " : "", acc[k]);
        free(acc[k]);
    }
}

/* The memory store's matcher must agree with Redis on the patterns the engine may use. */
static void test_scan_glob(void)
{
    static const char *const names[] = {"g:abc", "g:abd", "g:aXc", "g:a[c",  "g:a*c",
                                        "g:b1",  "g:b2",  "g:b9",  "g:a\\c", "g:abcd"};
    static const struct {
        const char *pat, *want;
    } cases[] = {
        {"g:ab?", "g:abc g:abd"},
        {"g:a[bX]c", "g:aXc g:abc"},
        {"g:a[^b]c", "g:a*c g:aXc g:a[c g:a\\c"},
        {"g:b[1-5]", "g:b1 g:b2"},
        {"g:b[5-1]", "g:b1 g:b2"},
        {"g:a\\*c", "g:a*c"},
        {"g:a\\[c", "g:a[c"},
        {"g:a[\\[]c", "g:a[c"},
        {"g:a\\\\c", "g:a\\c"},
        {"g:*c", "g:a*c g:aXc g:a[c g:a\\c g:abc"},
        {"g:*c*", "g:a*c g:aXc g:a[c g:a\\c g:abc g:abcd"},
        {"g:a*", "g:a*c g:aXc g:a[c g:a\\c g:abc g:abcd g:abd"},
        {"g:b?", "g:b1 g:b2 g:b9"},
        {"g:nothing*", ""},
        {"g:abc", "g:abc"},
    };
    char got[512];

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        put(S, names[i], "x", 1);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        scan_all(cases[i].pat, got, sizeof(got));
        if (strcmp(got, cases[i].want) != 0)
            fprintf(stderr, "\n  pattern %s: got [%s], want [%s]\n", cases[i].pat, got,
                    cases[i].want);
        CU_ASSERT_STRING_EQUAL(got, cases[i].want);
    }
    /* Direct matcher checks, including an unterminated class. */
    CU_ASSERT_TRUE(eng_glob_match("a[bc", 4, "ab", 2));
    CU_ASSERT_FALSE(eng_glob_match("a[bc", 4, "ad", 2));
    CU_ASSERT_TRUE(eng_glob_match("**x**", 5, "x", 1));
    CU_ASSERT_TRUE(eng_glob_match("*", 1, "", 0));
    CU_ASSERT_FALSE(eng_glob_match("?", 1, "", 0));
    CU_ASSERT_TRUE(eng_glob_match("a*b*c", 5, "aXbYbZc", 7));
    CU_ASSERT_FALSE(eng_glob_match("a*b*c", 5, "aXbYbZ", 6));
}

static void test_watch_commit(void)
{
    eng_txn *t = NULL;
    eng_val cur;
    bool committed = false;
    eng_kv kv[2] = {{"{t8}:head", (const uint8_t *)"v2", 2}, {"{t8}:b:1", (const uint8_t *)"x", 1}};

    put(S, "{t8}:head", "v1", 2);
    CU_ASSERT_EQUAL_FATAL(eng_store_watch(S, "{t8}:head", &t, &cur), CDX_OK);
    CU_ASSERT_TRUE(cur.found && cur.len == 2 && memcmp(cur.data, "v1", 2) == 0);
    eng_vals_free(&cur, 1);
    CU_ASSERT_EQUAL(eng_store_commit(t, kv, 2, &committed), CDX_OK);
    CU_ASSERT_TRUE(committed);
    expect_val(S, "{t8}:head", "v2", 2);
    expect_val(S, "{t8}:b:1", "x", 1);

    /* A head that does not exist yet: watched as missing, created by the commit. */
    kv[0].key = "{t8b}:head";
    CU_ASSERT_EQUAL_FATAL(eng_store_watch(S, "{t8b}:head", &t, &cur), CDX_OK);
    CU_ASSERT_FALSE(cur.found);
    CU_ASSERT_EQUAL(eng_store_commit(t, kv, 1, &committed), CDX_OK);
    CU_ASSERT_TRUE(committed);
    expect_val(S, "{t8b}:head", "v2", 2);

    /* A commit that writes nothing still checks the watch. */
    CU_ASSERT_EQUAL_FATAL(eng_store_watch(S, "{t8b}:head", &t, &cur), CDX_OK);
    eng_vals_free(&cur, 1);
    CU_ASSERT_EQUAL(eng_store_commit(t, NULL, 0, &committed), CDX_OK);
    CU_ASSERT_TRUE(committed);
}

typedef struct writer_arg {
    const char *key;
    bool del;
    cdx_err rc;
} writer_arg;

static void *writer_main(void *p)
{
    writer_arg *a = p;
    eng_kv kv = {a->key, (const uint8_t *)"theirs", 6};
    const char *k[] = {a->key};

    a->rc = a->del ? eng_store_del(S, k, 1, NULL) : eng_store_set(S, &kv, 1);
    return NULL;
}

static void conflict_case(bool del)
{
    eng_txn *t = NULL;
    eng_val cur;
    bool committed = true;
    eng_kv kv[2] = {{"{t9}:head", (const uint8_t *)"mine", 4},
                    {"{t9}:b:7", (const uint8_t *)"y", 1}};
    writer_arg a = {"{t9}:head", del, CDX_ERR_UNKNOWN};
    pthread_t th;
    const char *k[] = {"{t9}:b:7"};

    put(S, "{t9}:head", "v1", 2);
    eng_store_del(S, k, 1, NULL);
    CU_ASSERT_EQUAL_FATAL(eng_store_watch(S, "{t9}:head", &t, &cur), CDX_OK);
    eng_vals_free(&cur, 1);
    /* Another thread (and, for Redis, another connection) writes the watched key. */
    CU_ASSERT_EQUAL_FATAL(pthread_create(&th, NULL, writer_main, &a), 0);
    pthread_join(th, NULL);
    CU_ASSERT_EQUAL(a.rc, CDX_OK);
    CU_ASSERT_EQUAL(eng_store_commit(t, kv, 2, &committed), CDX_OK);
    CU_ASSERT_FALSE(committed);
    if (del)
        expect_missing(S, "{t9}:head");
    else
        expect_val(S, "{t9}:head", "theirs", 6);
    expect_missing(S, "{t9}:b:7");
}

static void *setnx_main(void *p)
{
    writer_arg *a = p;
    eng_kv kv = {a->key, (const uint8_t *)"theirs", 6};
    bool created = true;

    a->rc = eng_store_setnx(S, &kv, 1, &created);
    if (a->rc == CDX_OK && created)
        a->rc = CDX_ERR_INTERNAL;
    return NULL;
}

static void test_watch_conflict(void)
{
    eng_txn *t = NULL;
    eng_val cur;
    bool committed = false;
    eng_kv kv = {"{t9}:head", (const uint8_t *)"mine", 4};
    writer_arg a = {"{t9}:head", false, CDX_ERR_UNKNOWN};
    pthread_t th;

    conflict_case(false);
    conflict_case(true);
    /* A SET NX that finds the key existing changes nothing, so (as in Redis) it does not abort. */
    put(S, "{t9}:head", "v1", 2);
    CU_ASSERT_EQUAL_FATAL(eng_store_watch(S, "{t9}:head", &t, &cur), CDX_OK);
    eng_vals_free(&cur, 1);
    CU_ASSERT_EQUAL_FATAL(pthread_create(&th, NULL, setnx_main, &a), 0);
    pthread_join(th, NULL);
    CU_ASSERT_EQUAL(a.rc, CDX_OK);
    CU_ASSERT_EQUAL(eng_store_commit(t, &kv, 1, &committed), CDX_OK);
    CU_ASSERT_TRUE(committed);
    expect_val(S, "{t9}:head", "mine", 4);
}

static void test_abort(void)
{
    eng_txn *t = NULL;
    eng_val cur;
    bool committed = false;
    eng_kv kv = {"{t10}:head", (const uint8_t *)"v3", 2};

    put(S, "{t10}:head", "v1", 2);
    CU_ASSERT_EQUAL_FATAL(eng_store_watch(S, "{t10}:head", &t, &cur), CDX_OK);
    eng_vals_free(&cur, 1);
    eng_store_abort(t);
    /* The aborted watch must not linger on a pooled connection. */
    put(S, "{t10}:head", "v2", 2);
    for (int i = 0; i < 4; i++) {
        CU_ASSERT_EQUAL_FATAL(eng_store_watch(S, "{t10}:head", &t, &cur), CDX_OK);
        eng_vals_free(&cur, 1);
        CU_ASSERT_EQUAL(eng_store_commit(t, &kv, 1, &committed), CDX_OK);
        CU_ASSERT_TRUE(committed);
    }
    expect_val(S, "{t10}:head", "v3", 2);
}

static void test_value_limits(void)
{
    /* Untouched pages: the allocation costs no real memory. */
    uint8_t *big = malloc((size_t)CDX_STORE_VALUE_MAX + 1);
    eng_kv kv = {"t11:big", big, (size_t)CDX_STORE_VALUE_MAX + 1};
    eng_txn *t = NULL;
    eng_val cur;
    bool created, committed = true;

    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    CU_ASSERT_EQUAL(eng_store_setnx(S, &kv, 1, &created), CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "limit"));
    CU_ASSERT_EQUAL(eng_store_set(S, &kv, 1), CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL_FATAL(eng_store_watch(S, "{t11}:head", &t, &cur), CDX_OK);
    kv.key = "{t11}:head";
    CU_ASSERT_EQUAL(eng_store_commit(t, &kv, 1, &committed), CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_FALSE(committed);
    expect_missing(S, "t11:big");

    /* Exactly the limit is accepted, written and read back whole. */
    memset(big, 0xa5, CDX_STORE_VALUE_MAX);
    big[0] = 1;
    big[CDX_STORE_VALUE_MAX - 1] = 2;
    kv.key = "t11:max";
    kv.len = CDX_STORE_VALUE_MAX;
    CU_ASSERT_EQUAL(eng_store_set(S, &kv, 1), CDX_OK);
    expect_val(S, "t11:max", big, CDX_STORE_VALUE_MAX);
    const char *k[] = {"t11:max"};
    CU_ASSERT_EQUAL(eng_store_del(S, k, 1, NULL), CDX_OK);
    free(big);
}

static void test_bad_arguments(void)
{
    char longkey[CDX_STORE_KEY_MAX + 2];
    const char *bad[] = {"has space", "new\nline", "", "tab\there", "caf\xc3\xa9", longkey, NULL};
    eng_val v;
    bool created;
    uint64_t cursor = 0;
    char **keys = NULL;
    size_t n = 0;

    memset(longkey, 'k', sizeof(longkey) - 1);
    longkey[sizeof(longkey) - 1] = '\0';
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *k[] = {bad[i]};
        eng_kv kv = {bad[i], (const uint8_t *)"v", 1};
        CU_ASSERT_EQUAL(eng_store_mget(S, k, 1, &v), CDX_ERR_INVALID_ARGUMENT);
        CU_ASSERT_EQUAL(eng_store_setnx(S, &kv, 1, &created), CDX_ERR_INVALID_ARGUMENT);
        CU_ASSERT_EQUAL(eng_store_del(S, k, 1, NULL), CDX_ERR_INVALID_ARGUMENT);
    }
    longkey[CDX_STORE_KEY_MAX] = '\0'; /* exactly the limit: fine */
    {
        const char *k[] = {longkey};
        CU_ASSERT_EQUAL(eng_store_mget(S, k, 1, &v), CDX_OK);
        CU_ASSERT_FALSE(v.found);
    }
    {
        const char *k[] = {"a"};
        /* n is checked before the array is read. */
        CU_ASSERT_EQUAL(eng_store_mget(S, k, CDX_STORE_BATCH_MAX + 1, &v),
                        CDX_ERR_INVALID_ARGUMENT);
        CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "split"));
        CU_ASSERT_EQUAL(eng_store_mget(S, k, 1, NULL), CDX_ERR_INVALID_ARGUMENT);
        CU_ASSERT_EQUAL(eng_store_mget(NULL, k, 1, &v), CDX_ERR_INVALID_ARGUMENT);
    }
    {
        eng_kv kv = {"t12:null", NULL, 3};
        CU_ASSERT_EQUAL(eng_store_set(S, &kv, 1), CDX_ERR_INVALID_ARGUMENT);
    }
    CU_ASSERT_EQUAL(eng_store_scan(S, "", &cursor, &keys, &n), CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(eng_store_scan(S, NULL, &cursor, &keys, &n), CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NULL(keys);
    CU_ASSERT_EQUAL(eng_store_commit(NULL, NULL, 0, NULL), CDX_ERR_INVALID_ARGUMENT);
}

static void test_fault_wrapper(void)
{
    eng_store *inner = NULL, *f = NULL;
    eng_kv kv[5] = {{"t13:1", (const uint8_t *)"a", 1},
                    {"t13:2", (const uint8_t *)"b", 1},
                    {"t13:3", (const uint8_t *)"c", 1},
                    {"t13:4", (const uint8_t *)"d", 1},
                    {"t13:5", (const uint8_t *)"e", 1}};
    const char *keys[5] = {"t13:1", "t13:2", "t13:3", "t13:4", "t13:5"};
    bool created[5];
    eng_val v[5];
    eng_txn *t = NULL;
    bool committed = true;
    char kind[32];
    uint64_t cursor = 0;
    char **sk = NULL;
    size_t sn = 0;

    CU_ASSERT_EQUAL_FATAL(open_like_S(&inner), CDX_OK);
    CU_ASSERT_EQUAL_FATAL(eng_store_fault_new(inner, &f), CDX_OK);
    snprintf(kind, sizeof(kind), "fault(%s)", R ? "redis" : "memory");
    CU_ASSERT_STRING_EQUAL(eng_store_kind(f), kind);

    eng_store_fault_arm(f, 3);
    CU_ASSERT_EQUAL(eng_store_setnx(f, kv, 5, created), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_EQUAL(eng_store_fault_writes(f), 2);
    /* Crashed: every call fails, reads included. */
    CU_ASSERT_EQUAL(eng_store_mget(f, keys, 5, v), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_EQUAL(eng_store_set(f, kv, 1), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_EQUAL(eng_store_scan(f, "t13:*", &cursor, &sk, &sn), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_EQUAL(eng_store_watch(f, "t13:1", &t, v), CDX_ERR_STORE_UNAVAILABLE);
    eng_store_fault_disarm(f);
    CU_ASSERT_EQUAL_FATAL(eng_store_mget(f, keys, 5, v), CDX_OK);
    CU_ASSERT_TRUE(v[0].found && v[1].found);
    CU_ASSERT_FALSE(v[2].found || v[3].found || v[4].found);
    eng_vals_free(v, 5);

    /* A commit is one write, applied whole or not at all. */
    eng_kv c[2] = {{"{t13}:head", (const uint8_t *)"h", 1}, {"{t13}:b", (const uint8_t *)"b", 1}};
    CU_ASSERT_EQUAL_FATAL(eng_store_watch(f, "{t13}:head", &t, v), CDX_OK);
    eng_vals_free(v, 1);
    eng_store_fault_arm(f, 1);
    CU_ASSERT_EQUAL(eng_store_commit(t, c, 2, &committed), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_FALSE(committed);
    eng_store_fault_disarm(f);
    expect_missing(f, "{t13}:head");
    expect_missing(f, "{t13}:b");
    CU_ASSERT_EQUAL_FATAL(eng_store_watch(f, "{t13}:head", &t, v), CDX_OK);
    eng_vals_free(v, 1);
    CU_ASSERT_EQUAL(eng_store_commit(t, c, 2, &committed), CDX_OK);
    CU_ASSERT_TRUE(committed);
    CU_ASSERT_EQUAL(eng_store_fault_writes(f), 3);
    expect_val(f, "{t13}:b", "b", 1);

    /* Deletes count one write per key; unarmed, everything passes through. */
    uint64_t deleted = 0;
    eng_store_fault_arm(f, 2);
    CU_ASSERT_EQUAL(eng_store_del(f, keys, 2, &deleted), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_EQUAL(deleted, 1);
    eng_store_fault_disarm(f);
    expect_missing(f, "t13:1");
    expect_val(f, "t13:2", "b", 1);
    CU_ASSERT_EQUAL(eng_store_fault_writes(f), 4);
    eng_store_free(f); /* frees inner */
}

#define THREADS    8
#define THREAD_OPS 200

static void *worker_main(void *p)
{
    long id = (long)(intptr_t)p;
    long fails = 0;

    for (int i = 0; i < THREAD_OPS; i++) {
        char key[48], val[48];
        snprintf(key, sizeof(key), "t14:%ld:%d", id, i);
        snprintf(val, sizeof(val), "value-%ld-%d", id, i);
        eng_kv kv = {key, (const uint8_t *)val, strlen(val)};
        bool created = false;
        const char *k[] = {key};
        eng_val v;
        if (eng_store_setnx(S, &kv, 1, &created) != CDX_OK || !created) {
            fails++;
            continue;
        }
        if (eng_store_mget(S, k, 1, &v) != CDX_OK || !v.found || v.len != strlen(val) ||
            memcmp(v.data, val, v.len) != 0)
            fails++;
        eng_vals_free(&v, 1);
    }
    return (void *)(intptr_t)fails;
}

static void test_threads(void)
{
    pthread_t th[THREADS];
    long fails = 0;

    for (long i = 0; i < THREADS; i++)
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, worker_main, (void *)(intptr_t)i), 0);
    for (int i = 0; i < THREADS; i++) {
        void *r;
        pthread_join(th[i], &r);
        fails += (long)(intptr_t)r;
    }
    CU_ASSERT_EQUAL(fails, 0);
}

/* ---- suites ---- */

static int init_memory(void)
{
    R = NULL;
    return eng_store_memory_new(&S) == CDX_OK ? 0 : 1;
}

static int open_S(void)
{
    cdx_err e = eng_store_redis_new(&R_OPTS, &S);
    if (e != CDX_OK)
        fprintf(stderr, "eng_store_redis_new: %s: %s\n", cdx_err_name(e), cdx_err_detail());
    return e == CDX_OK ? 0 : 1;
}

static int init_redis_tcp(void)
{
    R = fx_redis_start(NULL);
    if (!R)
        return 1;
    R_OPTS = fx_engine_redis_opts(R);
    return open_S();
}

static int init_redis_unix_acl(void)
{
    fx_redis_opts o = {.use_unix = 1, .acl_user = ACL_USER, .acl_pass = ACL_PASS};

    R = fx_redis_start(&o);
    PWFILE = write_file("pw-unix", ACL_PASS "\n", 0600);
    if (!R || !PWFILE)
        return 1;
    R_OPTS = (eng_redis_opts){.unix_path = fx_redis_unix_path(R),
                              .user = ACL_USER,
                              .password_file = PWFILE,
                              .connections = 4};
    return open_S();
}

static int cleanup_suite(void)
{
    eng_store_free(S);
    S = NULL;
    fx_redis_stop(R);
    R = NULL;
    free(PWFILE);
    PWFILE = NULL;
    return 0;
}

/* ---- Redis only ---- */

static eng_store *open_tcp(fx_redis *r, bool allow, cdx_err *rc)
{
    eng_redis_opts o = {
        .host = fx_redis_host(r), .port = fx_redis_port(r), .allow_unsafe_durability = allow};
    eng_store *s = NULL;

    *rc = eng_store_redis_new(&o, &s);
    return s;
}

static int redis_cmd(fx_redis *r, const char *const *argv, int argc, char *out, size_t cap)
{
    return fx_redis_command(r, argv, argc, out, cap);
}

static void test_huge_reply_refused(void)
{
    fx_redis *r = fx_redis_start(NULL);
    eng_store *s;
    cdx_err rc;
    char out[64], off[32];
    const char *huge[] = {"t:huge"}, *just[] = {"t:just-over"}, *small[] = {"t:small"};
    eng_val v;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    s = open_tcp(r, false, &rc);
    CU_ASSERT_EQUAL_FATAL(rc, CDX_OK);
    put(s, "t:small", "ok", 2);
    /* 80 MB, written behind our back: the reply is cut off while it is being buffered. */
    const char *a1[] = {"SETRANGE", "t:huge", "80000000", "x"};
    CU_ASSERT_EQUAL(redis_cmd(r, a1, 4, out, sizeof(out)) > 0, 1);
    CU_ASSERT_STRING_EQUAL(out, ":80000001\r\n");
    CU_ASSERT_EQUAL(eng_store_mget(s, huge, 1, &v), CDX_ERR_RESOURCE_EXHAUSTED);
    CU_ASSERT_FALSE(v.found);
    expect_val(s, "t:small", "ok", 2); /* works again, on a new connection */
    /* One byte over: small enough to be buffered whole, refused by the string callback. */
    snprintf(off, sizeof(off), "%u", CDX_STORE_VALUE_MAX);
    const char *a2[] = {"SETRANGE", "t:just-over", off, "y"};
    CU_ASSERT_EQUAL(redis_cmd(r, a2, 4, out, sizeof(out)) > 0, 1);
    CU_ASSERT_EQUAL(eng_store_mget(s, just, 1, &v), CDX_ERR_RESOURCE_EXHAUSTED);
    CU_ASSERT_EQUAL(eng_store_mget(s, small, 1, &v), CDX_OK);
    eng_vals_free(&v, 1);
    /* A bounded range of the huge value is fine. */
    eng_range rg = {"t:huge", 79999990, 100};
    CU_ASSERT_EQUAL_FATAL(eng_store_getrange(s, &rg, 1, &v), CDX_OK);
    CU_ASSERT_TRUE(v.found && v.len == 11 && v.data[10] == 'x' && v.data[0] == 0);
    eng_vals_free(&v, 1);
    eng_store_free(s);
    fx_redis_stop(r);
}

static void test_reader_bounds(void)
{
    size_t max_array = 99;
    char buf[8192];
    size_t len;

    /* The announced count is refused before anything is allocated for it. */
    CU_ASSERT_EQUAL(eng_redis_reader_probe("*1000000\r\n", 10, 1000, &max_array),
                    CDX_ERR_RESOURCE_EXHAUSTED);
    CU_ASSERT_EQUAL(max_array, 0);
    CU_ASSERT_EQUAL(eng_redis_reader_probe("*3\r\n$1\r\na\r\n:1\r\n$-1\r\n", 20, 3, &max_array),
                    CDX_OK);
    CU_ASSERT_EQUAL(max_array, 3);
    /* The budget covers nested arrays together: 2 + 600 fit in 1000, another 600 does not. */
    len = (size_t)sprintf(buf, "*2\r\n*600\r\n");
    for (int i = 0; i < 600; i++)
        len += (size_t)sprintf(buf + len, ":1\r\n");
    len += (size_t)sprintf(buf + len, "*600\r\n");
    CU_ASSERT_EQUAL(eng_redis_reader_probe(buf, len, 1000, &max_array), CDX_ERR_RESOURCE_EXHAUSTED);
    CU_ASSERT_EQUAL(max_array, 600);
    CU_ASSERT_EQUAL(eng_redis_reader_probe("$-5\r\n", 5, 0, &max_array), CDX_ERR_INTERNAL);
    CU_ASSERT_EQUAL(eng_redis_reader_probe("*2\r\n:1\r\n", 8, 2, &max_array), CDX_ERR_UNAVAILABLE);
}

/* needle: in the detail and in the check's one-line description. */
static void durability_case(const fx_redis_opts *o, const char *needle, const char *why)
{
    fx_redis *r = fx_redis_start(o);
    eng_store *s;
    cdx_err rc;
    char desc[160];

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    s = open_tcp(r, false, &rc);
    CU_ASSERT_EQUAL(rc, CDX_ERR_CONFIG);
    CU_ASSERT_PTR_NULL(s);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), needle));
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), why));
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "allow_unsafe_durability"));
    s = open_tcp(r, true, &rc);
    CU_ASSERT_EQUAL(rc, CDX_OK);
    if (s) {
        CU_ASSERT_EQUAL(eng_store_check(s, desc, sizeof(desc)), CDX_ERR_CONFIG);
        CU_ASSERT_PTR_NOT_NULL(strstr(desc, needle));
        put(s, "t:works", "1", 1);
    }
    eng_store_free(s);
    fx_redis_stop(r);
}

static void test_durability_refused(void)
{
    fx_redis_opts no_aof = {.appendonly = -1};
    fx_redis_opts no_fsync = {.appendfsync = "no"};
    fx_redis_opts lru = {.maxmemory_policy = "allkeys-lru"};
    fx_redis_opts vlru = {.maxmemory_policy = "volatile-lru"};
    fx_redis_opts everysec = {.appendfsync = "everysec"};
    fx_redis *r;
    eng_store *s;
    cdx_err rc;

    durability_case(&no_aof, "appendonly=no", "set appendonly yes");
    durability_case(&no_fsync, "appendfsync=no", "always or everysec");
    durability_case(&lru, "maxmemory-policy=allkeys-lru", "evicts ciphertexts");
    durability_case(&vlru, "maxmemory-policy=volatile-lru", "TTL");
    r = fx_redis_start(&everysec);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    s = open_tcp(r, false, &rc);
    CU_ASSERT_EQUAL(rc, CDX_OK);
    eng_store_free(s);
    fx_redis_stop(r);
}

static void test_config_get_forbidden(void)
{
    fx_redis_opts o = {.acl_user = "admin", .acl_pass = "admin-pass"};
    fx_redis *r = fx_redis_start(&o);
    const char *acl[] = {"ACL", "SETUSER", "limited", "on",     ">limited-pass",
                         "~*",  "&*",      "+@all",   "-config"};
    char out[64], *pw = write_file("pw-limited", "limited-pass", 0600);
    eng_redis_opts ro;
    eng_store *s = NULL;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_PTR_NOT_NULL_FATAL(pw);
    CU_ASSERT_EQUAL(redis_cmd(r, acl, 9, out, sizeof(out)), 5);
    ro = (eng_redis_opts){
        .host = fx_redis_host(r), .port = fx_redis_port(r), .user = "limited", .password_file = pw};
    CU_ASSERT_EQUAL(eng_store_redis_new(&ro, &s), CDX_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "+config|get"));
    ro.allow_unsafe_durability = true;
    CU_ASSERT_EQUAL_FATAL(eng_store_redis_new(&ro, &s), CDX_OK);
    put(s, "t:limited", "ok", 2);
    expect_val(s, "t:limited", "ok", 2);
    eng_store_free(s);
    fx_redis_stop(r);
    free(pw);
}

static void test_auth(void)
{
    fx_redis_opts o = {.acl_user = ACL_USER, .acl_pass = ACL_PASS};
    fx_redis *r = fx_redis_start(&o);
    char *wrong = write_file("pw-wrong", "not the password\n", 0600);
    char *open_pw = write_file("pw-world", ACL_PASS, 0644);
    char *group_pw = write_file("pw-group", ACL_PASS, 0640);
    char *right = write_file("pw-right", ACL_PASS "\n", 0600);
    char *empty = write_file("pw-empty", "\n", 0600);
    eng_redis_opts ro;
    eng_store *s = NULL;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_FATAL(wrong && open_pw && group_pw && right && empty);
    ro = (eng_redis_opts){.host = fx_redis_host(r), .port = fx_redis_port(r), .user = ACL_USER};

    ro.password_file = wrong;
    CU_ASSERT_EQUAL(eng_store_redis_new(&ro, &s), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "refused AUTH"));
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), wrong));
    CU_ASSERT_PTR_NULL(strstr(cdx_err_detail(), "not the password"));
    ro.password_file = open_pw;
    CU_ASSERT_EQUAL(eng_store_redis_new(&ro, &s), CDX_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "chmod 600"));
    ro.password_file = group_pw;
    CU_ASSERT_EQUAL(eng_store_redis_new(&ro, &s), CDX_ERR_CONFIG);
    ro.password_file = empty;
    CU_ASSERT_EQUAL(eng_store_redis_new(&ro, &s), CDX_ERR_CONFIG);
    ro.password_file = "/nonexistent/cipherdex-pw";
    CU_ASSERT_EQUAL(eng_store_redis_new(&ro, &s), CDX_ERR_CONFIG);
    ro.password_file = NULL;
    CU_ASSERT_EQUAL(eng_store_redis_new(&ro, &s), CDX_ERR_CONFIG); /* user without password */
    ro.user = NULL;
    CU_ASSERT_EQUAL(eng_store_redis_new(&ro, &s), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "password_file"));
    ro.user = ACL_USER;
    ro.password_file = right;
    CU_ASSERT_EQUAL_FATAL(eng_store_redis_new(&ro, &s), CDX_OK);
    put(s, "t:auth", "ok", 2);
    expect_val(s, "t:auth", "ok", 2);
    eng_store_free(s);
    fx_redis_stop(r);

    /* requirepass: AUTH <pass> for the default user. */
    fx_redis_opts o2 = {.requirepass = ACL_PASS};
    r = fx_redis_start(&o2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    ro = (eng_redis_opts){
        .host = fx_redis_host(r), .port = fx_redis_port(r), .password_file = right};
    CU_ASSERT_EQUAL(eng_store_redis_new(&ro, &s), CDX_OK);
    eng_store_free(s);
    fx_redis_stop(r);
    free(wrong);
    free(open_pw);
    free(group_pw);
    free(right);
    free(empty);
}

#define KILL_KEYS 100

static void test_kill9_restart(void)
{
    fx_redis *r = fx_redis_start(NULL); /* appendfsync always */
    eng_store *s;
    eng_kv kv[KILL_KEYS];
    char names[KILL_KEYS][24];
    const char *keys[KILL_KEYS];
    bool created[KILL_KEYS];
    eng_val v[KILL_KEYS];
    cdx_err rc = CDX_ERR_UNKNOWN;
    int failures = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    s = open_tcp(r, false, &rc);
    CU_ASSERT_EQUAL_FATAL(rc, CDX_OK);
    for (int i = 0; i < KILL_KEYS; i++) {
        snprintf(names[i], sizeof(names[i]), "t:kill:%d", i);
        keys[i] = names[i];
        kv[i] = (eng_kv){names[i], (const uint8_t *)names[i], strlen(names[i])};
    }
    CU_ASSERT_EQUAL_FATAL(eng_store_setnx(s, kv, KILL_KEYS, created), CDX_OK);
    /* Pin a second pooled connection so the pool holds more than one stale one. */
    CU_ASSERT_EQUAL_FATAL(eng_store_mget(s, keys, KILL_KEYS, v), CDX_OK);
    eng_vals_free(v, KILL_KEYS);
    CU_ASSERT_EQUAL_FATAL(fx_redis_kill9_restart(r), 0);

    long long deadline = now_ms() + 15000;
    for (;;) {
        rc = eng_store_mget(s, keys, KILL_KEYS, v);
        if (rc == CDX_OK || now_ms() > deadline)
            break;
        CU_ASSERT_EQUAL(rc, CDX_ERR_STORE_UNAVAILABLE);
        failures++;
        pause_ms(20); /* polling with a deadline; back-off itself never sleeps */
    }
    CU_ASSERT_EQUAL_FATAL(rc, CDX_OK);
    for (int i = 0; i < KILL_KEYS; i++)
        if (!v[i].found || v[i].len != strlen(names[i])) {
            CU_FAIL("a write acknowledged before kill -9 is missing (appendfsync always)");
            break;
        }
    eng_vals_free(v, KILL_KEYS);
    kv[0].key = "t:kill:after";
    CU_ASSERT_EQUAL(eng_store_setnx(s, kv, 1, created), CDX_OK);
    CU_ASSERT_TRUE(created[0]);
    fprintf(stderr, "(%d failed calls after the restart) ", failures);
    eng_store_free(s);
    fx_redis_stop(r);
}

static void test_backoff_fails_fast(void)
{
    fx_redis *r = fx_redis_start(NULL);
    eng_store *s;
    cdx_err rc;
    const char *k[] = {"t:x"};
    eng_val v;
    long long t0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    s = open_tcp(r, false, &rc);
    CU_ASSERT_EQUAL_FATAL(rc, CDX_OK);
    fx_redis_stop(r); /* gone for good */
    CU_ASSERT_EQUAL(eng_store_mget(s, k, 1, &v), CDX_ERR_STORE_UNAVAILABLE);
    t0 = now_ms();
    CU_ASSERT_EQUAL(eng_store_mget(s, k, 1, &v), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "back-off"));
    CU_ASSERT_TRUE(now_ms() - t0 < 50);
    eng_store_free(s);

    /* Nothing listening at all: refused at open. */
    eng_redis_opts o = {.host = "127.0.0.1", .port = 1, .timeout_ms = 1000};
    s = NULL;
    CU_ASSERT_EQUAL(eng_store_redis_new(&o, &s), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "cannot connect"));
    CU_ASSERT_PTR_NULL(s);
}

/*
 * Connects fail (the app user's password changed), so calls fail fast in
 * back-off; once the password file holds the new password, calls recover by
 * themselves: the file is read again at every connect.
 */
static void test_backoff_recovers_after_rotation(void)
{
    fx_redis_opts fo = {.acl_user = "admin", .acl_pass = "admin-pass"};
    fx_redis *r = fx_redis_start(&fo);
    const char *mk[] = {"ACL", "SETUSER", "app", "on", ">pw-one", "~*", "&*", "+@all"};
    const char *rot[] = {"ACL", "SETUSER", "app", "resetpass", ">pw-two"};
    const char *kill[] = {"CLIENT", "KILL", "USER", "app"};
    char out[64], *pw = write_file("pw-app", "pw-one\n", 0600);
    eng_redis_opts o;
    eng_store *s = NULL;
    cdx_err rc = CDX_ERR_UNKNOWN;
    int fast_fails = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_PTR_NOT_NULL_FATAL(pw);
    CU_ASSERT_EQUAL_FATAL(redis_cmd(r, mk, 8, out, sizeof(out)), 5);
    o = (eng_redis_opts){
        .host = fx_redis_host(r), .port = fx_redis_port(r), .user = "app", .password_file = pw};
    CU_ASSERT_EQUAL_FATAL(eng_store_redis_new(&o, &s), CDX_OK);
    put(s, "t:rot", "v", 1);
    CU_ASSERT_EQUAL(redis_cmd(r, rot, 5, out, sizeof(out)), 5);
    CU_ASSERT_TRUE(redis_cmd(r, kill, 4, out, sizeof(out)) > 0);
    const char *k[] = {"t:rot"};
    eng_val v;
    CU_ASSERT_EQUAL(eng_store_mget(s, k, 1, &v), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "refused AUTH"));
    CU_ASSERT_EQUAL(eng_store_mget(s, k, 1, &v), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "back-off"));
    free(write_file("pw-app", "pw-two\n", 0600));
    long long deadline = now_ms() + 10000;
    for (;;) {
        rc = eng_store_mget(s, k, 1, &v);
        if (rc != CDX_ERR_STORE_UNAVAILABLE || now_ms() > deadline)
            break;
        fast_fails++;
        pause_ms(10);
    }
    CU_ASSERT_EQUAL_FATAL(rc, CDX_OK);
    CU_ASSERT_TRUE(v.found && v.len == 1 && v.data[0] == 'v');
    eng_vals_free(&v, 1);
    CU_ASSERT_TRUE(fast_fails < 100); /* the first back-off step is 100-200 ms */
    eng_store_free(s);
    fx_redis_stop(r);
    free(pw);
}

static void test_pool_exhaustion(void)
{
    fx_redis *r = fx_redis_start(NULL);
    eng_redis_opts o;
    eng_store *s = NULL;
    eng_txn *t1 = NULL, *t2 = NULL;
    eng_val v;
    const char *k[] = {"t:pool"};
    long long t0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    o = (eng_redis_opts){
        .host = fx_redis_host(r), .port = fx_redis_port(r), .connections = 2, .timeout_ms = 300};
    CU_ASSERT_EQUAL_FATAL(eng_store_redis_new(&o, &s), CDX_OK);
    CU_ASSERT_EQUAL_FATAL(eng_store_watch(s, "{p}:1", &t1, &v), CDX_OK);
    CU_ASSERT_EQUAL_FATAL(eng_store_watch(s, "{p}:2", &t2, &v), CDX_OK);
    t0 = now_ms();
    CU_ASSERT_EQUAL(eng_store_mget(s, k, 1, &v), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_TRUE(now_ms() - t0 >= 250);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "busy"));
    eng_store_abort(t1);
    CU_ASSERT_EQUAL(eng_store_mget(s, k, 1, &v), CDX_OK);
    eng_store_abort(t2);
    eng_store_free(s);
    fx_redis_stop(r);

    o.connections = CDX_STORE_CONNECTIONS_MAX + 1;
    CU_ASSERT_EQUAL(eng_store_redis_new(&o, &s), CDX_ERR_CONFIG);
}

/* Kill our pooled connections from outside: idempotent calls retry on a fresh connection. */
static void test_retry_after_drop(void)
{
    fx_redis *r = fx_redis_start(NULL);
    eng_store *s;
    cdx_err rc;
    char out[64];
    const char *kill[] = {"CLIENT", "KILL", "TYPE", "normal"};
    eng_kv kv[3] = {{"t:r:new", (const uint8_t *)"mine", 4},
                    {"t:r:same", (const uint8_t *)"mine", 4},
                    {"t:r:other", (const uint8_t *)"mine", 4}};
    bool created[3];

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    s = open_tcp(r, false, &rc);
    CU_ASSERT_EQUAL_FATAL(rc, CDX_OK);
    put(s, "t:r:same", "mine", 4); /* as if a lost first attempt had written it */
    put(s, "t:r:other", "theirs", 6);
    CU_ASSERT_TRUE(redis_cmd(r, kill, 4, out, sizeof(out)) > 0);
    /* The retried SET NX reads back what it finds: our exact bytes count as created. */
    CU_ASSERT_EQUAL(eng_store_setnx(s, kv, 3, created), CDX_OK);
    CU_ASSERT_TRUE(created[0]);
    CU_ASSERT_TRUE(created[1]);
    CU_ASSERT_FALSE(created[2]);
    expect_val(s, "t:r:other", "theirs", 6);
    /* Not retried: a commit whose connection dropped under it. */
    eng_txn *t = NULL;
    eng_val cur;
    bool committed = true;
    CU_ASSERT_EQUAL_FATAL(eng_store_watch(s, "{r}:head", &t, &cur), CDX_OK);
    CU_ASSERT_TRUE(redis_cmd(r, kill, 4, out, sizeof(out)) > 0);
    eng_kv h = {"{r}:head", (const uint8_t *)"h", 1};
    CU_ASSERT_EQUAL(eng_store_commit(t, &h, 1, &committed), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "re-read the head"));
    CU_ASSERT_FALSE(committed);
    expect_missing(s, "{r}:head");
    eng_store_free(s);
    fx_redis_stop(r);
}

/* ---- a scripted fake Redis: replies no real server sends ---- */

#define FAKE_CONNS 16

typedef struct fake_conn {
    int fd;
    char *in;
    size_t len, cap;
} fake_conn;

typedef struct fake_redis {
    int lfd, port;
    int wake[2]; /* written to stop the thread */
    pthread_t th;
    atomic_int accepts;
    fake_conn c[FAKE_CONNS];
} fake_redis;

/* Send all of b in pieces of 4093 bytes (TCP_NODELAY): the client sees partial reads. */
static int fake_send(int fd, const void *b, size_t n)
{
    const char *p = b;

    while (n > 0) {
        ssize_t w = send(fd, p, n < 4093 ? n : 4093, MSG_NOSIGNAL);
        if (w < 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int fake_bulk(int fd, const void *b, size_t n)
{
    char h[32];
    int hl = snprintf(h, sizeof(h), "$%zu\r\n", n);

    return fake_send(fd, h, (size_t)hl) || fake_send(fd, b, n) || fake_send(fd, "\r\n", 2) ? -1 : 0;
}

/* One RESP command of bulk arguments at the start of b: 1 (parsed), 0 (incomplete), -1. */
static int fake_parse(const char *b, size_t n, const char *argv[8], size_t argl[8], int *argc,
                      size_t *used)
{
    const char *p = b, *end = b + n, *nl;
    long cnt;

    if (n == 0)
        return 0;
    if (*p != '*')
        return -1;
    if (!(nl = memchr(p, '\n', (size_t)(end - p))))
        return 0;
    cnt = strtol(p + 1, NULL, 10);
    if (cnt < 1 || cnt > 8)
        return -1;
    p = nl + 1;
    for (long i = 0; i < cnt; i++) {
        long l;
        if (p >= end)
            return 0;
        if (*p != '$')
            return -1;
        if (!(nl = memchr(p, '\n', (size_t)(end - p))))
            return 0;
        l = strtol(p + 1, NULL, 10);
        p = nl + 1;
        if (l < 0 || end - p < l + 2)
            return l < 0 ? -1 : 0;
        argv[i] = p;
        argl[i] = (size_t)l;
        p += l + 2;
    }
    *argc = (int)cnt;
    *used = (size_t)(p - b);
    return 1;
}

static bool arg_is(const char *a, size_t l, const char *s)
{
    return l == strlen(s) && memcmp(a, s, l) == 0;
}

/* Answer one command. Returns -1 to close the connection. */
static int fake_answer(int fd, const char *argv[8], const size_t argl[8], int argc)
{
    char key[64] = "", out[96];

    if (argc >= 2)
        snprintf(key, sizeof(key), "%.*s", (int)(argl[1] < 63 ? argl[1] : 63), argv[1]);
    if (arg_is(argv[0], argl[0], "PING"))
        return fake_send(fd, "+PONG\r\n", 7);
    if (arg_is(argv[0], argl[0], "CONFIG") && argc == 3) {
        char name[32];
        snprintf(name, sizeof(name), "%.*s", (int)(argl[2] < 31 ? argl[2] : 31), argv[2]);
        const char *val = strcmp(name, "appendonly") == 0    ? "yes"
                          : strcmp(name, "appendfsync") == 0 ? "everysec"
                                                             : "noeviction";
        int n = snprintf(out, sizeof(out), "*2\r\n$%zu\r\n%s\r\n$%zu\r\n%s\r\n", strlen(name), name,
                         strlen(val), val);
        return fake_send(fd, out, (size_t)n);
    }
    if (arg_is(argv[0], argl[0], "EXISTS") && argc == 2) {
        if (strcmp(key, "e:err") == 0)
            return fake_send(fd, "-ERR boom\r\n", 11);
        return fake_send(fd, strncmp(key, "v:", 2) == 0 ? ":1\r\n" : ":0\r\n", 4);
    }
    if (!arg_is(argv[0], argl[0], "GETRANGE") || argc != 4)
        return fake_send(fd, "-ERR unknown command\r\n", 22);
    long long start = strtoll(argv[2], NULL, 10), stop = strtoll(argv[3], NULL, 10);
    if (strncmp(key, "v:", 2) == 0) { /* v:<size>: the pattern, clipped as Redis does */
        long long size = atoll(key + 2);
        if (stop >= size)
            stop = size - 1;
        if (start >= size || start > stop)
            return fake_send(fd, "$0\r\n\r\n", 6);
        uint8_t *b = malloc((size_t)(stop - start + 1));
        int rc = -1;
        if (b) {
            for (long long i = start; i <= stop; i++)
                b[i - start] = pat((size_t)i, 9);
            rc = fake_bulk(fd, b, (size_t)(stop - start + 1));
            free(b);
        }
        return rc;
    }
    if (strcmp(key, "over") == 0) { /* one byte more than asked for */
        size_t n = (size_t)(stop - start + 2);
        char *b = calloc(1, n);
        int rc = b ? fake_bulk(fd, b, n) : -1;
        free(b);
        return rc;
    }
    if (strcmp(key, "huge") == 0) /* announced, never sent */
        return fake_send(fd, "$60000000\r\n", 11);
    if (strcmp(key, "giant") == 0)
        return fake_send(fd, "$99999999999999999999\r\n", 23);
    if (strcmp(key, "badlen") == 0)
        return fake_send(fd, "$12x\r\n", 6);
    if (strcmp(key, "nocrlf") == 0)
        return fake_send(fd, "$3\r\nabcXY", 9);
    if (strcmp(key, "array") == 0)
        return fake_send(fd, "*1\r\n$1\r\na\r\n", 11);
    if (strcmp(key, "wrongtype") == 0)
        return fake_send(
            fd, "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n", 68);
    if (strcmp(key, "loading") == 0)
        return fake_send(fd, "-LOADING Redis is loading the dataset in memory\r\n", 49);
    if (strcmp(key, "stall") == 0)
        return fake_send(fd, "$10\r\nabc", 8);
    if (strcmp(key, "eof") == 0) { /* half a payload, then the connection drops */
        char b[500] = {0};
        fake_send(fd, "$1000\r\n", 7);
        fake_send(fd, b, sizeof(b));
        return -1;
    }
    return fake_send(fd, "$0\r\n\r\n", 6); /* missing */
}

static void fake_close(fake_conn *c)
{
    close(c->fd);
    free(c->in);
    *c = (fake_conn){.fd = -1};
}

static void *fake_main(void *arg)
{
    fake_redis *f = arg;

    for (;;) {
        struct pollfd pf[FAKE_CONNS + 2];
        int map[FAKE_CONNS + 2], np = 0;
        pf[np++] = (struct pollfd){.fd = f->wake[0], .events = POLLIN};
        pf[np++] = (struct pollfd){.fd = f->lfd, .events = POLLIN};
        for (int i = 0; i < FAKE_CONNS; i++)
            if (f->c[i].fd >= 0) {
                map[np] = i;
                pf[np++] = (struct pollfd){.fd = f->c[i].fd, .events = POLLIN};
            }
        if (poll(pf, (nfds_t)np, -1) < 0)
            continue;
        if (pf[0].revents)
            break;
        if (pf[1].revents & POLLIN) {
            int fd = accept(f->lfd, NULL, NULL), one = 1, slot = -1;
            for (int i = 0; i < FAKE_CONNS && fd >= 0 && slot < 0; i++)
                if (f->c[i].fd < 0)
                    slot = i;
            if (fd >= 0 && slot < 0)
                close(fd);
            else if (fd >= 0) {
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                f->c[slot].fd = fd;
                atomic_fetch_add(&f->accepts, 1);
            }
        }
        for (int j = 2; j < np; j++) {
            fake_conn *c = &f->c[map[j]];
            if (!pf[j].revents)
                continue;
            if (c->cap - c->len < 4096) {
                char *n = realloc(c->in, c->cap + 65536);
                if (!n) {
                    fake_close(c);
                    continue;
                }
                c->in = n;
                c->cap += 65536;
            }
            ssize_t r = recv(c->fd, c->in + c->len, c->cap - c->len, 0);
            if (r <= 0) {
                fake_close(c);
                continue;
            }
            c->len += (size_t)r;
            for (;;) {
                const char *argv[8];
                size_t argl[8], used = 0;
                int argc = 0, pr = fake_parse(c->in, c->len, argv, argl, &argc, &used);
                if (pr == 0)
                    break;
                if (pr < 0 || fake_answer(c->fd, argv, argl, argc) < 0) {
                    fake_close(c);
                    break;
                }
                memmove(c->in, c->in + used, c->len - used);
                c->len -= used;
            }
        }
    }
    for (int i = 0; i < FAKE_CONNS; i++)
        if (f->c[i].fd >= 0)
            fake_close(&f->c[i]);
    return NULL;
}

static fake_redis *fake_start(void)
{
    fake_redis *f = calloc(1, sizeof(*f));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);

    if (!f)
        return NULL;
    for (int i = 0; i < FAKE_CONNS; i++)
        f->c[i].fd = -1;
    f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (f->lfd < 0 || bind(f->lfd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        listen(f->lfd, 16) != 0 || getsockname(f->lfd, (struct sockaddr *)&a, &al) != 0 ||
        pipe(f->wake) != 0 || pthread_create(&f->th, NULL, fake_main, f) != 0) {
        if (f->lfd >= 0)
            close(f->lfd);
        free(f);
        return NULL;
    }
    f->port = ntohs(a.sin_port);
    return f;
}

static void fake_stop(fake_redis *f)
{
    if (!f)
        return;
    if (write(f->wake[1], "x", 1) != 1)
        return; /* leak rather than hang */
    pthread_join(f->th, NULL);
    close(f->wake[0]);
    close(f->wake[1]);
    close(f->lfd);
    free(f);
}

/* One GETRANGE of key (off, len) on s: its result; the value is freed. */
static cdx_err fake_get(eng_store *s, const char *key, uint64_t off, uint64_t len)
{
    eng_range r = {key, off, len};
    eng_val v;
    cdx_err e = eng_store_getrange(s, &r, 1, &v);

    if (e == CDX_OK)
        eng_vals_free(&v, 1);
    return e;
}

/*
 * The bulk reader against replies Redis never sends: values longer than the
 * range, huge announcements, broken framing, arrays, errors, a drop, a stall.
 * `accepts` tells whether the connection was discarded (the next call
 * connects again) or kept.
 */
static void test_bulk_reader_hostile(void)
{
    fake_redis *f = fake_start();
    eng_redis_opts o = {.host = "127.0.0.1", .timeout_ms = 1500};
    eng_store *s = NULL;
    eng_range r[6] = {
        {"v:300000", 0, 300000}, {"m:a", 0, 100}, {"v:70000", 100, 60000},
        {"v:5", 0, 10},          {"m:b", 5, 0},   {"v:5", 10, 5},
    };
    eng_val v[6];
    int a;
    long long t0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    o.port = f->port;
    CU_ASSERT_EQUAL_FATAL(eng_store_redis_new(&o, &s), CDX_OK);
    CU_ASSERT_EQUAL(atomic_load(&f->accepts), 1);

    /* Sane replies, written in 4093-byte pieces. */
    CU_ASSERT_EQUAL_FATAL(eng_store_getrange(s, r, 6, v), CDX_OK);
    CU_ASSERT_TRUE(v[0].found && v[0].len == 300000);
    for (size_t i = 0; v[0].len == 300000 && i < 300000; i++)
        if (v[0].data[i] != pat(i, 9)) {
            CU_FAIL("value 0 differs");
            break;
        }
    CU_ASSERT_FALSE(v[1].found);
    CU_ASSERT_TRUE(v[2].found && v[2].len == 60000 && v[2].data[0] == pat(100, 9) &&
                   v[2].data[59999] == pat(60099, 9));
    CU_ASSERT_TRUE(v[3].found && v[3].len == 5);
    CU_ASSERT_FALSE(v[4].found);
    CU_ASSERT_TRUE(v[5].found && v[5].len == 0 && v[5].data);
    eng_vals_free(v, 6);
    CU_ASSERT_EQUAL(atomic_load(&f->accepts), 1);

    /* Longer than the range asked for: refused, connection discarded. */
    CU_ASSERT_EQUAL(fake_get(s, "over", 0, 100), CDX_ERR_RESOURCE_EXHAUSTED);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "longer than it asked for"));
    CU_ASSERT_EQUAL(fake_get(s, "v:10", 0, 10), CDX_OK);
    CU_ASSERT_EQUAL(atomic_load(&f->accepts), 2);

    /* 60 MB announced for a 1000-byte range: refused at the header, not after a timeout. */
    t0 = now_ms();
    CU_ASSERT_EQUAL(fake_get(s, "huge", 0, 1000), CDX_ERR_RESOURCE_EXHAUSTED);
    CU_ASSERT_TRUE(now_ms() - t0 < 750);
    CU_ASSERT_EQUAL(fake_get(s, "giant", 0, 1000), CDX_ERR_RESOURCE_EXHAUSTED);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "over the size limit"));

    /* Broken framing and arrays: protocol surprises, each connection discarded. */
    CU_ASSERT_EQUAL(fake_get(s, "v:10", 0, 10), CDX_OK); /* on a live connection again */
    a = atomic_load(&f->accepts);
    CU_ASSERT_EQUAL(fake_get(s, "badlen", 0, 100), CDX_ERR_INTERNAL);
    CU_ASSERT_EQUAL(fake_get(s, "nocrlf", 0, 100), CDX_ERR_INTERNAL);
    CU_ASSERT_EQUAL(fake_get(s, "array", 0, 100), CDX_ERR_INTERNAL);
    CU_ASSERT_EQUAL(fake_get(s, "v:10", 0, 10), CDX_OK);
    CU_ASSERT_EQUAL(atomic_load(&f->accepts), a + 3);

    /* Error replies keep the stream in sync: mapped, raw text in the detail, connection kept. */
    eng_range mix[3] = {{"v:20000", 0, 20000}, {"wrongtype", 0, 10}, {"v:30000", 0, 30000}};
    a = atomic_load(&f->accepts);
    CU_ASSERT_EQUAL(eng_store_getrange(s, mix, 3, v), CDX_ERR_INTERNAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "WRONGTYPE"));
    CU_ASSERT_EQUAL(fake_get(s, "loading", 0, 10), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_EQUAL(fake_get(s, "e:err", 0, 10), CDX_ERR_INTERNAL); /* EXISTS answered -ERR */
    CU_ASSERT_EQUAL(fake_get(s, "v:10", 0, 10), CDX_OK);
    CU_ASSERT_EQUAL(atomic_load(&f->accepts), a);

    /* A drop mid-payload is retried once on a fresh connection (which drops too). */
    a = atomic_load(&f->accepts);
    CU_ASSERT_EQUAL(fake_get(s, "eof", 0, 1000), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_EQUAL(atomic_load(&f->accepts), a + 1);

    /* A stall times out after timeout_ms and is not retried. */
    CU_ASSERT_EQUAL(fake_get(s, "v:10", 0, 10), CDX_OK);
    a = atomic_load(&f->accepts);
    t0 = now_ms();
    CU_ASSERT_EQUAL(fake_get(s, "stall", 0, 10), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_TRUE(now_ms() - t0 >= 1000);
    CU_ASSERT_EQUAL(fake_get(s, "v:10", 0, 10), CDX_OK);
    CU_ASSERT_EQUAL(atomic_load(&f->accepts), a + 1);

    eng_store_free(s);
    fake_stop(f);
}

/* ---- main ---- */

static const fx_test shared_tests[] = {
    {"kind and durability check", test_kind_and_check},
    {"setnx: created/existed, existing value unchanged", test_setnx},
    {"set overwrites", test_set},
    {"mget with missing keys", test_mget_missing},
    {"binary values with NULs, empty values", test_binary_values},
    {"getrange inside, over the end, missing", test_getrange},
    {"getrange: values up to 3 MB in one pipeline, missing keys mixed in", test_getrange_large},
    {"del counts existing keys", test_del},
    {"scan finds all 3000 matching keys, none other", test_scan_3000},
    {"scan glob semantics agree across backends", test_scan_glob},
    {"watch + commit commits", test_watch_commit},
    {"concurrent write/delete of the watched key aborts the commit", test_watch_conflict},
    {"abort releases the watch", test_abort},
    {"value limits: one byte over refused, exactly the limit works", test_value_limits},
    {"bad keys and arguments", test_bad_arguments},
    {"fault wrapper: crash at the 3rd write of 5, disarm", test_fault_wrapper},
    {"8 threads setnx + mget", test_threads},
};

static const fx_test redis_tests[] = {
    {"reader refuses announced arrays before allocating", test_reader_bounds},
    {"80 MB and just-over-limit values refused while reading", test_huge_reply_refused},
    {"durability: appendonly no, appendfsync no, evicting policies", test_durability_refused},
    {"CONFIG GET forbidden for the ACL user", test_config_get_forbidden},
    {"AUTH: wrong password, loose file modes, missing, requirepass", test_auth},
    {"kill -9 + restart: recovers, acknowledged data present", test_kill9_restart},
    {"back-off fails fast; nothing listening", test_backoff_fails_fast},
    {"back-off ends; rotated password file is re-read", test_backoff_recovers_after_rotation},
    {"pool exhaustion waits timeout_ms then fails", test_pool_exhaustion},
    {"dropped connections: retry with read-back; commit not retried", test_retry_after_drop},
    {"bulk reader: hostile replies from a fake server", test_bulk_reader_hostile},
};

static int init_tmp(void)
{
    return 0;
}

int main(void)
{
    const fx_suite suites[] = {
        {.name = "store-memory",
         .init = init_memory,
         .clean = cleanup_suite,
         .tests = shared_tests,
         .ntests = FX_LEN(shared_tests)},
        {.name = "store-redis-tcp",
         .init = init_redis_tcp,
         .clean = cleanup_suite,
         .tests = shared_tests,
         .ntests = FX_LEN(shared_tests)},
        {.name = "store-redis-unix-acl",
         .init = init_redis_unix_acl,
         .clean = cleanup_suite,
         .tests = shared_tests,
         .ntests = FX_LEN(shared_tests)},
        {.name = "store-redis-only",
         .init = init_tmp,
         .clean = NULL,
         .tests = redis_tests,
         .ntests = FX_LEN(redis_tests)},
    };
    TMP = fx_tmpdir_new("store");
    if (!TMP)
        return 2;
    /* The Redis password_file is read into locked memory. */
    if (hsm_secmem_init(0, true) != CDX_OK)
        return 2;
    int rc = fx_cunit_run(suites, FX_LEN(suites));
    hsm_secmem_shutdown();
    fx_rm_rf(TMP);
    free(TMP);
    return rc;
}
