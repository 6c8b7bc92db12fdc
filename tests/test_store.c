/*
 * test_store.c - the store interface (engine/eng_store.h).
 *
 * One set of tests runs against three stores: memory, Redis over TCP, and
 * Redis over a unix socket as an ACL user with a password file. What only a
 * real (or scripted) server can show is in test_store_redis.c.
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
#include "fx_store.h"
#include "hsm_secmem.h"

#define ACL_USER "cdx-app"
#define ACL_PASS "correct horse battery staple"

/* The current shared suite: its store, and how to open another one on the same backend. */
static eng_store *S;
static fx_redis *R;           /* NULL for the memory suite */
static eng_redis_opts R_OPTS; /* how S was opened (redis suites) */
static char *TMP;             /* scratch dir for password files */
static char *PWFILE;

static cdx_err open_like_S(eng_store **out)
{
    return R ? eng_store_redis_new(&R_OPTS, out) : eng_store_memory_new(out);
}

/* Write the string content to TMP/name with `mode`; returns the malloc'ed path. */
static char *write_file(const char *name, const char *content, mode_t mode)
{
    return fx_write_file(TMP, name, content, strlen(content), mode);
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
    fx_store_expect_val(S, "t1:a", "one", 3);
    fx_store_expect_val(S, "t1:b", "two", 3);
    CU_ASSERT_EQUAL(eng_store_setnx(S, kv, 0, NULL), CDX_OK);
}

static void test_set(void)
{
    eng_kv kv[2] = {{"t2:a", (const uint8_t *)"v1", 2}, {"t2:b", (const uint8_t *)"w1", 2}};

    CU_ASSERT_EQUAL(eng_store_set(S, kv, 2), CDX_OK);
    fx_store_expect_val(S, "t2:a", "v1", 2);
    kv[0].val = (const uint8_t *)"v2-longer";
    kv[0].len = 9;
    CU_ASSERT_EQUAL(eng_store_set(S, kv, 1), CDX_OK);
    fx_store_expect_val(S, "t2:a", "v2-longer", 9);
    fx_store_expect_val(S, "t2:b", "w1", 2);
}

static void test_mget_missing(void)
{
    const char *keys[] = {"t3:a", "t3:missing", "t3:b", "t3:also-missing"};
    eng_val v[4];

    fx_store_put(S, "t3:a", "A", 1);
    fx_store_put(S, "t3:b", "BB", 2);
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
    fx_store_expect_val(S, "t4:bin", bin, sizeof(bin));
    fx_store_expect_val(S, "t4:empty", "", 0); /* found, length 0, data not NULL */
    kv[0].key = "t4:empty2";
    kv[0].val = (const uint8_t *)"";
    kv[0].len = 0;
    CU_ASSERT_EQUAL(eng_store_set(S, kv, 1), CDX_OK);
    fx_store_expect_val(S, "t4:empty2", "", 0);
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

    fx_store_put(S, "t5:v", "0123456789", 10);
    fx_store_put(S, "t5:empty", "", 0);
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

static void test_strlen(void)
{
    const char *keys[] = {"t5s:v", "t5s:missing", "t5s:empty", "t5s:v", "t5s:bin"};
    static const uint8_t bin[5] = {0, 1, 0, 0xff, 0};
    uint64_t len[5] = {9, 9, 9, 9, 9};

    fx_store_put(S, "t5s:v", "0123456789", 10);
    fx_store_put(S, "t5s:empty", "", 0);
    fx_store_put(S, "t5s:bin", (const char *)bin, sizeof(bin));
    CU_ASSERT_EQUAL_FATAL(eng_store_strlen(S, keys, 5, len), CDX_OK);
    CU_ASSERT_EQUAL(len[0], 10);
    CU_ASSERT_EQUAL(len[1], 0); /* missing */
    CU_ASSERT_EQUAL(len[2], 0);
    CU_ASSERT_EQUAL(len[3], 10); /* the same key twice */
    CU_ASSERT_EQUAL(len[4], 5);  /* binary: NULs counted */
    CU_ASSERT_EQUAL(eng_store_strlen(S, keys, 0, NULL), CDX_OK);
    CU_ASSERT_EQUAL(eng_store_strlen(S, keys, 1, NULL), CDX_ERR_INVALID_ARGUMENT);
    const char *bad[] = {"has space"};
    CU_ASSERT_EQUAL(eng_store_strlen(S, bad, 1, len), CDX_ERR_INVALID_ARGUMENT);
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
        vals[i] = fx_store_pattern(sizes[i], (unsigned)i);
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

    fx_store_put(S, "t6:a", "1", 1);
    fx_store_put(S, "t6:b", "2", 1);
    fx_store_put(S, "t6:c", "3", 1);
    CU_ASSERT_EQUAL(eng_store_del(S, keys, 4, &deleted), CDX_OK);
    CU_ASSERT_EQUAL(deleted, 2);
    fx_store_expect_missing(S, "t6:a");
    fx_store_expect_missing(S, "t6:b");
    fx_store_expect_val(S, "t6:c", "3", 1);
    keys[0] = "t6:c";
    CU_ASSERT_EQUAL(eng_store_del(S, keys, 1, NULL), CDX_OK);
    fx_store_expect_missing(S, "t6:c");
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
        fx_store_put(S, names[i], "x", 1);
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

    fx_store_put(S, "{t8}:head", "v1", 2);
    CU_ASSERT_EQUAL_FATAL(eng_store_watch(S, "{t8}:head", &t, &cur), CDX_OK);
    CU_ASSERT_TRUE(cur.found && cur.len == 2 && memcmp(cur.data, "v1", 2) == 0);
    eng_vals_free(&cur, 1);
    CU_ASSERT_EQUAL(eng_store_commit(t, kv, 2, &committed), CDX_OK);
    CU_ASSERT_TRUE(committed);
    fx_store_expect_val(S, "{t8}:head", "v2", 2);
    fx_store_expect_val(S, "{t8}:b:1", "x", 1);

    /* A head that does not exist yet: watched as missing, created by the commit. */
    kv[0].key = "{t8b}:head";
    CU_ASSERT_EQUAL_FATAL(eng_store_watch(S, "{t8b}:head", &t, &cur), CDX_OK);
    CU_ASSERT_FALSE(cur.found);
    CU_ASSERT_EQUAL(eng_store_commit(t, kv, 1, &committed), CDX_OK);
    CU_ASSERT_TRUE(committed);
    fx_store_expect_val(S, "{t8b}:head", "v2", 2);

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

    fx_store_put(S, "{t9}:head", "v1", 2);
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
        fx_store_expect_missing(S, "{t9}:head");
    else
        fx_store_expect_val(S, "{t9}:head", "theirs", 6);
    fx_store_expect_missing(S, "{t9}:b:7");
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
    fx_store_put(S, "{t9}:head", "v1", 2);
    CU_ASSERT_EQUAL_FATAL(eng_store_watch(S, "{t9}:head", &t, &cur), CDX_OK);
    eng_vals_free(&cur, 1);
    CU_ASSERT_EQUAL_FATAL(pthread_create(&th, NULL, setnx_main, &a), 0);
    pthread_join(th, NULL);
    CU_ASSERT_EQUAL(a.rc, CDX_OK);
    CU_ASSERT_EQUAL(eng_store_commit(t, &kv, 1, &committed), CDX_OK);
    CU_ASSERT_TRUE(committed);
    fx_store_expect_val(S, "{t9}:head", "mine", 4);
}

static void test_abort(void)
{
    eng_txn *t = NULL;
    eng_val cur;
    bool committed = false;
    eng_kv kv = {"{t10}:head", (const uint8_t *)"v3", 2};

    fx_store_put(S, "{t10}:head", "v1", 2);
    CU_ASSERT_EQUAL_FATAL(eng_store_watch(S, "{t10}:head", &t, &cur), CDX_OK);
    eng_vals_free(&cur, 1);
    eng_store_abort(t);
    /* The aborted watch must not linger on a pooled connection. */
    fx_store_put(S, "{t10}:head", "v2", 2);
    for (int i = 0; i < 4; i++) {
        CU_ASSERT_EQUAL_FATAL(eng_store_watch(S, "{t10}:head", &t, &cur), CDX_OK);
        eng_vals_free(&cur, 1);
        CU_ASSERT_EQUAL(eng_store_commit(t, &kv, 1, &committed), CDX_OK);
        CU_ASSERT_TRUE(committed);
    }
    fx_store_expect_val(S, "{t10}:head", "v3", 2);
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
    fx_store_expect_missing(S, "t11:big");

    /* Exactly the limit is accepted, written and read back whole. */
    memset(big, 0xa5, CDX_STORE_VALUE_MAX);
    big[0] = 1;
    big[CDX_STORE_VALUE_MAX - 1] = 2;
    kv.key = "t11:max";
    kv.len = CDX_STORE_VALUE_MAX;
    CU_ASSERT_EQUAL(eng_store_set(S, &kv, 1), CDX_OK);
    fx_store_expect_val(S, "t11:max", big, CDX_STORE_VALUE_MAX);
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
    fx_store_expect_missing(f, "{t13}:head");
    fx_store_expect_missing(f, "{t13}:b");
    CU_ASSERT_EQUAL_FATAL(eng_store_watch(f, "{t13}:head", &t, v), CDX_OK);
    eng_vals_free(v, 1);
    CU_ASSERT_EQUAL(eng_store_commit(t, c, 2, &committed), CDX_OK);
    CU_ASSERT_TRUE(committed);
    CU_ASSERT_EQUAL(eng_store_fault_writes(f), 3);
    fx_store_expect_val(f, "{t13}:b", "b", 1);

    /* Deletes count one write per key; unarmed, everything passes through. */
    uint64_t deleted = 0;
    eng_store_fault_arm(f, 2);
    CU_ASSERT_EQUAL(eng_store_del(f, keys, 2, &deleted), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_EQUAL(deleted, 1);
    eng_store_fault_disarm(f);
    fx_store_expect_missing(f, "t13:1");
    fx_store_expect_val(f, "t13:2", "b", 1);
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

/* ---- main ---- */

static const fx_test shared_tests[] = {
    {"kind and durability check", test_kind_and_check},
    {"setnx: created/existed, existing value unchanged", test_setnx},
    {"set overwrites", test_set},
    {"mget with missing keys", test_mget_missing},
    {"binary values with NULs, empty values", test_binary_values},
    {"getrange inside, over the end, missing", test_getrange},
    {"getrange: values up to 3 MB in one pipeline, missing keys mixed in", test_getrange_large},
    {"strlen: sizes, missing keys 0, binary values", test_strlen},
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
    };
    return fx_store_main(suites, FX_LEN(suites), "store", &TMP);
}
