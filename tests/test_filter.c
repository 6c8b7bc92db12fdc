/*
 * test_filter.c - metadata JSON parsing and Mongo-style filters.
 *
 * Rows F01..F71 are the rule table of docs/FILTERS.md, one test each; the
 * "docs table" test reads that file and fails when a row and its test differ.
 * Then: parse errors, JSON limits, number edge cases, and a randomized
 * differential test against a small reference evaluator written here, which
 * interprets the filter JSON directly (and compares numbers as long double,
 * exact for int64 and double alike).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>
#include <jansson.h>

#include "cdx_err.h"
#include "cdx_limits.h"
#include "eng_filter.h"
#include "eng_json.h"
#include "fx_cunit.h"

#ifndef CDX_FILTERS_MD
#error "CDX_FILTERS_MD (path of docs/FILTERS.md) must be defined by the build"
#endif

/* ---- the rule table (docs/FILTERS.md): id, filter, metadata (NULL: none), match ---- */

/* clang-format off */
#define FILTER_ROWS(X) \
    X(F01, "{\"price\": 5}", "{\"price\": 5}", true) \
    X(F02, "{\"price\": {\"$eq\": 5}}", "{\"price\": 6}", false) \
    X(F03, "{\"price\": 1}", "{\"price\": 1.0}", true) \
    X(F04, "{\"n\": 9007199254740993}", "{\"n\": 9007199254740992.0}", false) \
    X(F05, "{\"n\": {\"$gt\": 9007199254740992.0}}", "{\"n\": 9007199254740993}", true) \
    X(F06, "{\"price\": {\"$lt\": 5.5}}", "{\"price\": 5}", true) \
    X(F07, "{\"price\": {\"$gte\": 5}}", "{\"price\": 5.0}", true) \
    X(F08, "{\"price\": {\"$lte\": 4}}", "{\"price\": 5}", false) \
    X(F09, "{\"x\": 0}", "{\"x\": -0.0}", true) \
    X(F10, "{\"n\": {\"$lt\": 9223372036854775808.0}}", "{\"n\": 9223372036854775807}", true) \
    X(F11, "{\"color\": \"red\"}", "{\"color\": \"red\"}", true) \
    X(F12, "{\"color\": \"Red\"}", "{\"color\": \"red\"}", false) \
    X(F13, "{\"name\": {\"$gt\": \"Z\"}}", "{\"name\": \"a\"}", true) \
    X(F14, "{\"name\": {\"$lt\": \"abc\"}}", "{\"name\": \"ab\"}", true) \
    X(F15, "{\"name\": {\"$gt\": \"z\"}}", "{\"name\": \"é\"}", true) \
    X(F16, "{\"price\": \"5\"}", "{\"price\": 5}", false) \
    X(F17, "{\"price\": {\"$gt\": 1}}", "{\"price\": \"9\"}", false) \
    X(F18, "{\"active\": true}", "{\"active\": true}", true) \
    X(F19, "{\"active\": 1}", "{\"active\": true}", false) \
    X(F20, "{\"x\": null}", "{\"x\": null}", true) \
    X(F21, "{\"x\": null}", "{}", false) \
    X(F22, "{\"price\": 5}", "{}", false) \
    X(F23, "{\"price\": {\"$ne\": 5}}", "{\"price\": 6}", true) \
    X(F24, "{\"price\": {\"$ne\": 5}}", "{\"price\": 5.0}", false) \
    X(F25, "{\"price\": {\"$ne\": 5}}", "{}", true) \
    X(F26, "{\"price\": {\"$ne\": 5}}", "{\"price\": \"5\"}", true) \
    X(F27, "{\"x\": {\"$ne\": null}}", "{}", true) \
    X(F28, "{\"color\": {\"$in\": [\"red\", \"blue\"]}}", "{\"color\": \"blue\"}", true) \
    X(F29, "{\"color\": {\"$in\": [\"red\", \"blue\"]}}", "{\"color\": \"green\"}", false) \
    X(F30, "{\"n\": {\"$in\": [1.0, 7]}}", "{\"n\": 1}", true) \
    X(F31, "{\"color\": {\"$in\": [\"red\", null]}}", "{}", false) \
    X(F32, "{\"color\": {\"$in\": []}}", "{\"color\": \"red\"}", false) \
    X(F33, "{\"color\": {\"$nin\": [\"red\", \"blue\"]}}", "{\"color\": \"green\"}", true) \
    X(F34, "{\"color\": {\"$nin\": [\"red\"]}}", "{\"color\": \"red\"}", false) \
    X(F35, "{\"color\": {\"$nin\": [\"red\"]}}", "{}", true) \
    X(F36, "{\"tag\": {\"$exists\": true}}", "{\"tag\": null}", true) \
    X(F37, "{\"tag\": {\"$exists\": true}}", "{}", false) \
    X(F38, "{\"tag\": {\"$exists\": false}}", "{}", true) \
    X(F39, "{\"tag\": {\"$exists\": false}}", "{\"tag\": 1}", false) \
    X(F40, "{\"tags\": \"b\"}", "{\"tags\": [\"a\", \"b\"]}", true) \
    X(F41, "{\"tags\": \"c\"}", "{\"tags\": [\"a\", \"b\"]}", false) \
    X(F42, "{\"tags\": [\"a\", \"b\"]}", "{\"tags\": [\"a\", \"b\"]}", true) \
    X(F43, "{\"tags\": [\"b\", \"a\"]}", "{\"tags\": [\"a\", \"b\"]}", false) \
    X(F44, "{\"m\": [1, 2]}", "{\"m\": [[1, 2], [3]]}", true) \
    X(F45, "{\"tags\": {\"$in\": [\"x\", \"b\"]}}", "{\"tags\": [\"a\", \"b\"]}", true) \
    X(F46, "{\"tags\": {\"$ne\": \"b\"}}", "{\"tags\": [\"a\", \"b\"]}", false) \
    X(F47, "{\"tags\": {\"$ne\": \"c\"}}", "{\"tags\": [\"a\", \"b\"]}", true) \
    X(F48, "{\"tags\": {\"$nin\": [\"b\", \"z\"]}}", "{\"tags\": [\"a\", \"b\"]}", false) \
    X(F49, "{\"scores\": {\"$gt\": 8}}", "{\"scores\": [3, 9]}", true) \
    X(F50, "{\"scores\": {\"$gt\": 4, \"$lt\": 6}}", "{\"scores\": [3, 9]}", true) \
    X(F51, "{\"scores\": {\"$gt\": 0}}", "{\"scores\": []}", false) \
    X(F52, "{\"scores\": {\"$gt\": 0}}", "{\"scores\": [[5]]}", false) \
    X(F53, "{\"dims\": {\"w\": 2, \"h\": 1.0}}", "{\"dims\": {\"h\": 1, \"w\": 2}}", true) \
    X(F54, "{\"dims\": {\"w\": 2}}", "{\"dims\": {\"w\": 2, \"h\": 1}}", false) \
    X(F55, "{\"dims.w\": 2}", "{\"dims\": {\"w\": 2}}", true) \
    X(F56, "{\"dims.w\": {\"$exists\": false}}", "{\"dims\": 5}", true) \
    X(F57, "{\"items.w\": 2}", "{\"items\": [{\"w\": 2}]}", false) \
    X(F58, "{\"a\": 1, \"b\": 2}", "{\"a\": 1, \"b\": 3}", false) \
    X(F59, "{\"price\": {\"$gt\": 1, \"$lt\": 10}}", "{\"price\": 5}", true) \
    X(F60, "{\"$and\": [{\"a\": 1}, {\"b\": 2}]}", "{\"a\": 1, \"b\": 2}", true) \
    X(F61, "{\"$or\": [{\"a\": 1}, {\"b\": 2}]}", "{\"a\": 0, \"b\": 2}", true) \
    X(F62, "{\"$or\": [{\"a\": 1}, {\"b\": 2}]}", "{\"a\": 2}", false) \
    X(F63, "{\"a\": 1, \"$or\": [{\"b\": 1}, {\"c\": 1}]}", "{\"a\": 1, \"c\": 1}", true) \
    X(F64, "{\"price\": {\"$not\": {\"$gt\": 5}}}", "{\"price\": 3}", true) \
    X(F65, "{\"price\": {\"$not\": {\"$gt\": 5}}}", "{\"price\": 7}", false) \
    X(F66, "{\"price\": {\"$not\": {\"$gt\": 5}}}", "{}", true) \
    X(F67, "{\"price\": {\"$not\": {\"$gt\": 5}}}", "{\"price\": \"7\"}", true) \
    X(F68, "{\"price\": {\"$not\": {\"$gt\": 1, \"$lt\": 10}}}", "{\"price\": 20}", true) \
    X(F69, "{}", "{\"a\": 1}", true) \
    X(F70, "{\"a\": {\"$exists\": false}}", NULL, true) \
    X(F71, "{\"a\": 1}", NULL, false)
/* clang-format on */

typedef struct row {
    const char *id;
    const char *filter;
    const char *metadata;
    bool match;
} row;

#define X_ROW(id, f, m, e) {#id, f, m, e},
static const row rows[] = {FILTER_ROWS(X_ROW)};
#define NROWS (sizeof(rows) / sizeof(rows[0]))

/* 1 match, 0 no match, -1 the filter or the metadata did not parse (detail printed). */
static int match_text(const char *filter, const char *metadata)
{
    eng_filter *f = NULL;
    json_t *md = NULL;
    int r = -1;

    if (eng_filter_parse(filter, strlen(filter), &f) != CDX_OK) {
        printf("\n  filter %s: %s\n", filter, cdx_err_detail());
        goto out;
    }
    if (metadata &&
        eng_json_parse_object(metadata, strlen(metadata), CDX_METADATA_MAX, &md) != CDX_OK) {
        printf("\n  metadata %s: %s\n", metadata, cdx_err_detail());
        goto out;
    }
    r = eng_filter_match(f, md) ? 1 : 0;
out:
    json_decref(md);
    eng_filter_free(f);
    return r;
}

static void check_row(const char *id, const char *filter, const char *metadata, bool expect)
{
    int r = match_text(filter, metadata);

    if (r != (expect ? 1 : 0))
        printf("\n  %s: filter %s metadata %s: got %d, want %d\n", id, filter,
               metadata ? metadata : "(none)", r, expect ? 1 : 0);
    CU_ASSERT_EQUAL(r, expect ? 1 : 0);
}

#define X_TEST(id, f, m, e)                                                                        \
    static void test_##id(void)                                                                    \
    {                                                                                              \
        check_row(#id, f, m, e);                                                                   \
    }
FILTER_ROWS(X_TEST)

/* Trim spaces and one pair of surrounding backticks, in place. */
static char *cell(char *s)
{
    char *e;

    while (*s == ' ')
        s++;
    e = s + strlen(s);
    while (e > s && e[-1] == ' ')
        *--e = '\0';
    if (e - s >= 2 && s[0] == '`' && e[-1] == '`') {
        e[-1] = '\0';
        s++;
    }
    return s;
}

/* docs/FILTERS.md's rule table and rows[] must be the same rows, in the same order. */
static void test_docs_table(void)
{
    FILE *fp = fopen(CDX_FILTERS_MD, "r");
    char line[1024];
    size_t n = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
    while (fgets(line, sizeof(line), fp)) {
        char *cells[8], *p = line;
        size_t nc = 0;
        const row *r;

        if (strncmp(line, "| F", 3) != 0 || line[3] < '0' || line[3] > '9') /* rows F1, F2, ... */
            continue;
        line[strcspn(line, "\n")] = '\0';
        /* "| id | operator | filter | metadata | match | note |" */
        p++;
        while (nc < 8 && p && *p) {
            char *bar = strchr(p, '|');

            if (!bar)
                break;
            *bar = '\0';
            cells[nc++] = cell(p);
            p = bar + 1;
        }
        CU_ASSERT_EQUAL(nc, 6);
        if (nc != 6)
            continue;
        if (n >= NROWS) {
            printf("\n  docs row %s has no test\n", cells[0]);
            CU_FAIL("docs row without a test");
            n++;
            continue;
        }
        r = &rows[n++];
        if (strcmp(cells[0], r->id) != 0 || strcmp(cells[2], r->filter) != 0 ||
            strcmp(cells[3], r->metadata ? r->metadata : "none") != 0 ||
            strcmp(cells[4], r->match ? "yes" : "no") != 0) {
            printf("\n  docs row %s | %s | %s | %s differs from test %s\n", cells[0], cells[2],
                   cells[3], cells[4], r->id);
            CU_FAIL("docs row differs from its test");
        }
    }
    fclose(fp);
    CU_ASSERT_EQUAL(n, NROWS);
}

/* ---- parse errors ------------------------------------------------------- */

static void expect_filter_error(const char *text, size_t len, const char *want)
{
    eng_filter *f = (eng_filter *)&f; /* must be reset to NULL */
    cdx_err err = eng_filter_parse(text, len, &f);

    if (err != CDX_ERR_INVALID_ARGUMENT || !strstr(cdx_err_detail(), want))
        printf("\n  filter %.80s%s: got %d \"%s\", want \"%s\"\n", text ? text : "(null)",
               len > 80 ? "..." : "", (int)err, cdx_err_detail(), want);
    CU_ASSERT_EQUAL(err, CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NULL(f);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), want));
    if (err == CDX_OK)
        eng_filter_free(f);
}

static void expect_ferr(const char *text, const char *want)
{
    expect_filter_error(text, strlen(text), want);
}

static void test_parse_errors(void)
{
    static const char *const cases[][2] = {
        {"{\"price\": {\"$gt\": [1]}}",
         "filter: $gt at .price expects a number or string, got an array"},
        {"{\"price\": {\"$gte\": true}}",
         "filter: $gte at .price expects a number or string, got a boolean"},
        {"{\"price\": {\"$lt\": null}}",
         "filter: $lt at .price expects a number or string, got null"},
        {"{\"price\": {\"$lte\": {}}}",
         "filter: $lte at .price expects a number or string, got an object"},
        {"{\"a\": {\"$regex\": \"x\"}}", "filter: unknown operator $regex at .a"},
        {"{\"a\": {\"$foo\": 1}}", "filter: unknown operator $foo at .a"},
        {"{\"$foo\": 1}", "filter: unknown operator $foo at top level"},
        {"{\"$regex\": \"x\"}", "filter: unknown operator $regex at top level"},
        {"{\"$gt\": 1}", "filter: $gt at top level must be applied to a field"},
        {"{\"$not\": {\"a\": 1}}", "filter: $not at top level must be applied to a field"},
        {"{\"$exists\": true}", "filter: $exists at top level must be applied to a field"},
        {"{\"a\": {\"$gt\": 1, \"b\": 2}}",
         "filter: operator object at .a mixes operators and plain keys (\"b\")"},
        {"{\"a\": {\"b\": 2, \"$gt\": 1}}",
         "filter: operator object at .a mixes operators and plain keys (\"b\")"},
        {"{\"\": 1}", "filter: empty field name at top level"},
        {"{\"a..b\": 1}", "filter: field path \"a..b\" at top level has an empty segment"},
        {"{\".a\": 1}", "filter: field path \".a\" at top level has an empty segment"},
        {"{\"a.\": 1}", "filter: field path \"a.\" at top level has an empty segment"},
        {"{\"a.$b\": 1}", "segment \"$b\" starts with '$'"},
        {"{\"$and\": []}",
         "filter: $and at top level expects a non-empty array of filter objects, got an empty "
         "array"},
        {"{\"$or\": {\"a\": 1}}",
         "filter: $or at top level expects a non-empty array of filter objects, got an object"},
        {"{\"$and\": [{\"a\": 1}, 5]}",
         "filter: $and[1] at top level expects a filter object, got a number"},
        {"{\"a\": {\"$not\": 5}}",
         "filter: $not at .a expects a non-empty operator object such as {\"$gt\": 5}, got a "
         "number"},
        {"{\"a\": {\"$not\": {}}}", "filter: $not at .a expects a non-empty operator object"},
        {"{\"a\": {\"$not\": {\"b\": 1}}}",
         "filter: $not at .a expects operators, got plain key \"b\""},
        {"{\"a\": {\"$not\": {\"$regex\": \"x\"}}}", "filter: unknown operator $regex at .a"},
        {"{\"a\": {\"$exists\": 1}}", "filter: $exists at .a expects true or false, got a number"},
        {"{\"a\": {\"$exists\": \"yes\"}}",
         "filter: $exists at .a expects true or false, got a string"},
        {"{\"a\": {\"$in\": 5}}", "filter: $in at .a expects an array, got a number"},
        {"{\"a\": {\"$nin\": {\"x\": 1}}}", "filter: $nin at .a expects an array, got an object"},
        {"{\"a\": {\"$and\": [{\"b\": 1}]}}", "filter: $and at .a cannot be used on a field"},
        {"{\"a\": {\"$or\": [{\"b\": 1}]}}", "filter: $or at .a cannot be used on a field"},
        {"{\"$or\": [{\"a\": 1}, {\"b\": {\"$gt\": {}}}]}",
         "filter: $gt at .$or[1].b expects a number or string, got an object"},
        {"{\"$and\": [{\"$or\": [{\"x.y\": {\"$in\": 1}}]}]}",
         "filter: $in at .$and[0].$or[0].x.y expects an array, got a number"},
        {"[1]", "filter: JSON text must be an object, got an array"},
        {"5", "filter: JSON text must be an object, got a number"},
        {"{\"a\": 1, \"a\": 2}", "filter: invalid JSON at line 1 column 12: duplicate object key"},
        {"{\"a\": ", "filter: invalid JSON at line 1"},
        {"{\"a\": 1} x", "filter: invalid JSON at line 1 column 10: end of file expected"},
        {" ", "filter: invalid JSON"},
        {"{\"a\": \"x\\u0000y\"}", "filter: JSON string contains \\u0000"},
        {"{\"a\": 99999999999999999999}", "filter: invalid JSON at line 1 column 26: too big"},
        {"{\"a\": 1e400}", "filter: invalid JSON at line 1 column 11: real number overflow"},
        {"{\"a\": \"\xff\"}", "filter: invalid JSON at line 1 column 7: unable to decode byte"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_ferr(cases[i][0], cases[i][1]);
    expect_filter_error(NULL, 3, "filter: JSON text is NULL");
}

/* ---- JSON limits -------------------------------------------------------- */

/* `depth` nested objects: {"a":{"a":...{}...}}. Caller frees. */
static char *nested(size_t depth)
{
    char *s = malloc(6 * depth + 1), *p = s;

    if (!s)
        return NULL;
    for (size_t i = 1; i < depth; i++) {
        memcpy(p, "{\"a\":", 5);
        p += 5;
    }
    *p++ = '{';
    for (size_t i = 0; i < depth; i++)
        *p++ = '}';
    *p = '\0';
    return s;
}

static cdx_err parse_md(const char *text, size_t len)
{
    json_t *j = (json_t *)&j;
    cdx_err err = eng_json_parse_object(text, len, CDX_METADATA_MAX, &j);

    if (err == CDX_OK) {
        CU_ASSERT_TRUE(json_is_object(j));
        json_decref(j);
    } else {
        CU_ASSERT_PTR_NULL(j);
    }
    return err;
}

static void expect_md_error(const char *text, size_t len, const char *want)
{
    cdx_err err = parse_md(text, len);

    if (err != CDX_ERR_INVALID_ARGUMENT || !strstr(cdx_err_detail(), want))
        printf("\n  metadata %.60s: got %d \"%s\", want \"%s\"\n", text, (int)err, cdx_err_detail(),
               want);
    CU_ASSERT_EQUAL(err, CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), want));
}

static void test_json_depth(void)
{
    char *ok = nested(CDX_JSON_DEPTH_MAX), *deep = nested(CDX_JSON_DEPTH_MAX + 1);
    char *huge = nested(10000); /* 60 KB: under the length limit */
    char arr[128];
    eng_filter *f = NULL;

    CU_ASSERT_PTR_NOT_NULL_FATAL(ok);
    CU_ASSERT_PTR_NOT_NULL_FATAL(deep);
    CU_ASSERT_PTR_NOT_NULL_FATAL(huge);
    CU_ASSERT_EQUAL(parse_md(ok, strlen(ok)), CDX_OK);
    expect_md_error(deep, strlen(deep), "JSON nesting deeper than 32 levels at line 1 column 161");
    /* Rejected by the scan, never handed to jansson's recursive parser. */
    expect_md_error(huge, strlen(huge), "JSON nesting deeper than 32 levels");

    /* Filters: the innermost objects are a literal compared with $eq. */
    CU_ASSERT_EQUAL(eng_filter_parse(ok, strlen(ok), &f), CDX_OK);
    CU_ASSERT_FALSE(eng_filter_is_trivial(f));
    eng_filter_free(f);
    expect_ferr(deep, "filter: JSON nesting deeper than 32 levels");
    CU_ASSERT_EQUAL(match_text(ok, ok), 1);

    /* Arrays count too; brackets inside strings do not. */
    snprintf(arr, sizeof(arr), "{\"a\":%.31s%.31s}", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
             "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]");
    CU_ASSERT_EQUAL(parse_md(arr, strlen(arr)), CDX_OK);
    snprintf(arr, sizeof(arr), "{\"a\":%.32s%.32s}", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
             "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]");
    expect_md_error(arr, strlen(arr), "JSON nesting deeper than 32 levels");
    snprintf(arr, sizeof(arr), "{\"a\":\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[{{{{\\\"\"}");
    CU_ASSERT_EQUAL(parse_md(arr, strlen(arr)), CDX_OK);
    free(ok);
    free(deep);
    free(huge);
}

static void test_json_limits(void)
{
    size_t n = CDX_METADATA_MAX;
    char *big = malloc(n + 2);
    static const char nul_raw[] = "{\"a\":\"x\0y\"}";

    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    /* {"a":"xxx...x"} of exactly 64 KiB: accepted; one byte more: rejected. */
    memcpy(big, "{\"a\":\"", 6);
    memset(big + 6, 'x', n - 8);
    memcpy(big + n - 2, "\"}", 3);
    CU_ASSERT_EQUAL(strlen(big), n);
    CU_ASSERT_EQUAL(parse_md(big, n), CDX_OK);
    memset(big + 6, 'x', n - 7);
    memcpy(big + n - 1, "\"}", 3);
    expect_md_error(big, n + 1, "JSON text is 65537 bytes; the limit is 65536");
    /* The filter limit is checked the same way. */
    expect_filter_error(big, n + 1, "filter: JSON text is 65537 bytes; the limit is 65536");
    free(big);

    expect_md_error("{\"a\":1,\"b\":2,\"a\":3}", 19, "duplicate object key");
    expect_md_error("{\"o\":{\"k\":1,\"k\":1}}", 19, "duplicate object key");
    expect_md_error("{\"a\":\"x\\u0000y\"}", 15, "JSON string contains \\u0000");
    expect_md_error("{\"a\\u0000b\":1}", 14, "JSON string contains \\u0000");
    expect_md_error(nul_raw, sizeof(nul_raw) - 1, "control character");
    expect_md_error("{\"a\":\"\xc3\"}", 9, "unable to decode byte");
    expect_md_error("[]", 2, "JSON text must be an object, got an array");
    expect_md_error("\"x\"", 3, "JSON text must be an object, got a string");
    expect_md_error("null", 4, "JSON text must be an object, got null");
    expect_md_error("", 0, "JSON text is empty");
    expect_md_error("{\"a\":NaN}", 9, "invalid JSON");
    expect_md_error("{\"a\":Infinity}", 14, "invalid JSON");
    expect_md_error("{\"a\":-1e999}", 12, "real number overflow");
    expect_md_error("{\"a\":9223372036854775808}", 25, "too big integer");
    CU_ASSERT_EQUAL(parse_md("{\"a\":-9223372036854775808}", 26), CDX_OK);
    CU_ASSERT_EQUAL(parse_md("{\"a\":\"\\u00e9\xc3\xa9\"}", 16), CDX_OK);
    /* Only `len` bytes are read: what follows is not part of the text. */
    CU_ASSERT_EQUAL(parse_md("{\"a\":1}garbage", 7), CDX_OK);
}

static void test_json_canonical(void)
{
    static const char text[] =
        "{ \"b\" : 1, \"a\": [1, 2.5, -0.0, \"\\u00e9\"], \"c\": {\"z\": null, "
        "\"y\": true} }";
    json_t *j = NULL;
    char *s;

    CU_ASSERT_EQUAL_FATAL(eng_json_parse_object(text, sizeof(text) - 1, CDX_METADATA_MAX, &j),
                          CDX_OK);
    s = eng_json_canonical(j);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    /* Insertion order kept, compact. */
    CU_ASSERT_STRING_EQUAL(
        s, "{\"b\":1,\"a\":[1,2.5,-0.0,\"\xc3\xa9\"],\"c\":{\"z\":null,\"y\":true}}");
    free(s);
    json_decref(j);
    CU_ASSERT_PTR_NULL(eng_json_canonical(NULL));
}

/* ---- node limit --------------------------------------------------------- */

/* {"a":{"$in":[0,1,...,n-1]}} (1 + n nodes). Caller frees. */
static char *in_filter(size_t n)
{
    size_t cap = 32 + 8 * n, off;
    char *s = malloc(cap);

    if (!s)
        return NULL;
    off = (size_t)snprintf(s, cap, "{\"a\":{\"$in\":[");
    for (size_t i = 0; i < n; i++)
        off += (size_t)snprintf(s + off, cap - off, "%s%zu", i ? "," : "", i);
    snprintf(s + off, cap - off, "]}}");
    return s;
}

/* {"$or":[{"a":0},...]} with n branches (1 + 2n nodes). Caller frees. */
static char *or_filter(size_t n)
{
    size_t cap = 32 + 16 * n, off;
    char *s = malloc(cap);

    if (!s)
        return NULL;
    off = (size_t)snprintf(s, cap, "{\"$or\":[");
    for (size_t i = 0; i < n; i++)
        off += (size_t)snprintf(s + off, cap - off, "%s{\"a\":%zu}", i ? "," : "", i);
    snprintf(s + off, cap - off, "]}");
    return s;
}

static void expect_parses(const char *text)
{
    eng_filter *f = NULL;

    if (eng_filter_parse(text, strlen(text), &f) != CDX_OK)
        printf("\n  %.60s...: %s\n", text, cdx_err_detail());
    CU_ASSERT_PTR_NOT_NULL(f);
    eng_filter_free(f);
}

static void test_node_limit(void)
{
    char *s;

    s = in_filter(CDX_FILTER_NODES_MAX - 1); /* 1024 nodes */
    expect_parses(s);
    CU_ASSERT_EQUAL(match_text(s, "{\"a\":1022}"), 1);
    CU_ASSERT_EQUAL(match_text(s, "{\"a\":1023}"), 0);
    free(s);
    s = in_filter(CDX_FILTER_NODES_MAX); /* 1025 nodes */
    expect_ferr(s, "filter: more than 1024 nodes (operators and operands; limit reached at .a)");
    free(s);
    s = in_filter(ENG_FILTER_IN_MAX + 1);
    expect_ferr(s, "filter: $in at .a has 1025 elements; the limit is 1024");
    free(s);
    s = or_filter(511); /* 1023 nodes */
    expect_parses(s);
    free(s);
    s = or_filter(512); /* 1025 nodes */
    expect_ferr(s, "filter: more than 1024 nodes");
    free(s);
}

/* ---- numbers: int64 vs double ------------------------------------------- */

static void test_int64_double(void)
{
    static const struct {
        const char *md, *filter;
        int want;
    } cases[] = {
        /* 2^53+1 as an integer against 2^53 as a real: distinct, ordered exactly. */
        {"{\"n\":9007199254740993}", "{\"n\":9007199254740992.0}", 0},
        {"{\"n\":9007199254740993}", "{\"n\":{\"$gt\":9007199254740992.0}}", 1},
        {"{\"n\":9007199254740993}", "{\"n\":{\"$lte\":9007199254740992.0}}", 0},
        {"{\"n\":9007199254740993}", "{\"n\":{\"$ne\":9007199254740992.0}}", 1},
        {"{\"n\":9007199254740993}", "{\"n\":9007199254740993}", 1},
        /* This literal is parsed as a double and rounds to 2^53. */
        {"{\"n\":9007199254740993}", "{\"n\":9007199254740993.0}", 0},
        {"{\"n\":9007199254740992}", "{\"n\":9007199254740993.0}", 1},
        {"{\"n\":9007199254740993}", "{\"n\":{\"$in\":[9007199254740992]}}", 0},
        {"{\"n\":9007199254740992.0}", "{\"n\":9007199254740992}", 1},
        {"{\"n\":9007199254740992.0}", "{\"n\":{\"$lt\":9007199254740993}}", 1},
        /* The int64 ends. 9223372036854775807.0 is 2^63, outside int64. */
        {"{\"n\":9223372036854775807}", "{\"n\":9223372036854775807.0}", 0},
        {"{\"n\":9223372036854775807}", "{\"n\":{\"$lt\":9223372036854775807.0}}", 1},
        {"{\"n\":9223372036854775807.0}", "{\"n\":{\"$gt\":9223372036854775807}}", 1},
        {"{\"n\":-9223372036854775808}", "{\"n\":-9223372036854775808.0}", 1},
        {"{\"n\":-9223372036854775808}", "{\"n\":{\"$gt\":-1e300}}", 1},
        {"{\"n\":-9223372036854775808}", "{\"n\":{\"$lt\":-9.3e18}}", 0},
        {"{\"n\":1e300}", "{\"n\":{\"$gt\":9223372036854775807}}", 1},
        /* Non-integral reals against integers, both signs. */
        {"{\"n\":-1}", "{\"n\":{\"$lt\":-0.5}}", 1},
        {"{\"n\":-1}", "{\"n\":{\"$gt\":-1.5}}", 1},
        {"{\"n\":-1}", "{\"n\":{\"$gt\":-0.5}}", 0},
        {"{\"n\":0}", "{\"n\":{\"$gt\":-0.5}}", 1},
        {"{\"n\":0}", "{\"n\":{\"$lt\":0.5}}", 1},
        {"{\"n\":0.5}", "{\"n\":{\"$gt\":0}}", 1},
        {"{\"n\":0.5}", "{\"n\":{\"$lt\":1}}", 1},
        {"{\"n\":-0.5}", "{\"n\":{\"$lt\":0}}", 1},
        {"{\"n\":-0.5}", "{\"n\":{\"$gte\":-1}}", 1},
        {"{\"n\":2.5}", "{\"n\":{\"$gte\":2.5}}", 1},
        /* Inside arrays and objects (deep equality uses the same comparison). */
        {"{\"o\":{\"x\":9007199254740993}}", "{\"o\":{\"x\":9007199254740992.0}}", 0},
        {"{\"o\":{\"x\":9007199254740993,\"y\":[1.0]}}",
         "{\"o\":{\"y\":[1],\"x\":9007199254740993}}", 1},
        {"{\"v\":[1,9007199254740993]}", "{\"v\":{\"$gt\":9007199254740992.0}}", 1},
        {"{\"v\":[1,9007199254740992]}", "{\"v\":{\"$gt\":9007199254740992.0}}", 0},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int r = match_text(cases[i].filter, cases[i].md);

        if (r != cases[i].want)
            printf("\n  filter %s metadata %s: got %d want %d\n", cases[i].filter, cases[i].md, r,
                   cases[i].want);
        CU_ASSERT_EQUAL(r, cases[i].want);
    }
}

/* ---- trivial filters and API edges -------------------------------------- */

static void test_trivial(void)
{
    eng_filter *f = NULL;
    json_t *md = json_pack("{s:i}", "a", 1);

    CU_ASSERT_EQUAL(eng_filter_parse("", 0, &f), CDX_OK);
    CU_ASSERT_TRUE(eng_filter_is_trivial(f));
    CU_ASSERT_TRUE(eng_filter_match(f, md));
    CU_ASSERT_TRUE(eng_filter_match(f, NULL));
    eng_filter_free(f);
    CU_ASSERT_EQUAL(eng_filter_parse(NULL, 0, &f), CDX_OK);
    CU_ASSERT_TRUE(eng_filter_is_trivial(f));
    eng_filter_free(f);
    CU_ASSERT_EQUAL(eng_filter_parse(" { } ", 5, &f), CDX_OK);
    CU_ASSERT_TRUE(eng_filter_is_trivial(f));
    CU_ASSERT_TRUE(eng_filter_match(f, md));
    eng_filter_free(f);
    CU_ASSERT_EQUAL(eng_filter_parse("{\"a\":1}", 7, &f), CDX_OK);
    CU_ASSERT_FALSE(eng_filter_is_trivial(f));
    CU_ASSERT_TRUE(eng_filter_match(f, md));
    CU_ASSERT_FALSE(eng_filter_match(f, NULL));
    eng_filter_free(f);
    CU_ASSERT_TRUE(eng_filter_is_trivial(NULL));
    CU_ASSERT_TRUE(eng_filter_match(NULL, md));
    eng_filter_free(NULL);
    json_decref(md);
}

/* ---- randomized differential test --------------------------------------- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static size_t pick(size_t n)
{
    return (size_t)(rnd() % n);
}

static json_t *rand_scalar(void)
{
    static const json_int_t ints[] = {
        -2, -1, 0, 1, 2, 3, 9007199254740992LL, 9007199254740993LL, INT64_MAX, INT64_MIN};
    static const double reals[] = {-1.5,   -0.0,    0.0,   1.0,
                                   2.5,    3.0,     0.5,   9007199254740992.0,
                                   9.3e18, -9.3e18, 1e300, 9223372036854775808.0};
    static const char *const strs[] = {"", "a", "ab", "b", "A", "\xc3\xa9"};

    /* A third of the time a few "hot" values, so that equality hits often. */
    switch (pick(3) == 0 ? pick(6) : 6 + pick(8)) {
    case 0:
        return json_integer(1);
    case 1:
        return json_real(1.0);
    case 2:
        return json_string("a");
    case 3:
        return json_integer(9007199254740993LL);
    case 4:
        return json_real(9007199254740992.0);
    case 5:
        return json_true();
    case 6:
    case 7:
        return json_integer(ints[pick(6)]);
    case 8:
        return json_integer(ints[pick(sizeof(ints) / sizeof(ints[0]))]);
    case 9:
        return json_real(reals[pick(sizeof(reals) / sizeof(reals[0]))]);
    case 10:
    case 11:
        return json_string(strs[pick(sizeof(strs) / sizeof(strs[0]))]);
    case 12:
        return json_boolean(pick(2));
    default:
        return json_null();
    }
}

static json_t *rand_value(int depth)
{
    size_t r = pick(10);

    if (depth < 2 && r < 2) {
        json_t *a = json_array();
        size_t n = pick(4);

        for (size_t i = 0; i < n; i++)
            json_array_append_new(a, rand_value(depth + 1));
        return a;
    }
    if (depth < 2 && r < (depth == 0 ? 5u : 3u)) {
        json_t *o = json_object();

        if (pick(3))
            json_object_set_new(o, "a", rand_value(depth + 1));
        if (pick(2))
            json_object_set_new(o, "b", rand_value(depth + 1));
        return o;
    }
    return rand_scalar();
}

static json_t *rand_metadata(void)
{
    static const char *const keys[] = {"a", "b", "c"};
    json_t *o = json_object();

    for (size_t i = 0; i < 3; i++) {
        if (pick(10) < 8)
            json_object_set_new(o, keys[i], rand_value(0));
    }
    return o;
}

static json_t *rand_comparable(void)
{
    for (;;) {
        json_t *v = rand_scalar();

        if (json_is_number(v) || json_is_string(v))
            return v;
        json_decref(v);
    }
}

static void rand_ops(json_t *obj, int depth);

static void rand_op(json_t *obj, int depth)
{
    static const char *const cmp[] = {"$gt", "$gte", "$lt", "$lte"};
    json_t *a;

    switch (pick(depth < 3 ? 8 : 7)) {
    case 0:
        json_object_set_new(obj, "$eq", rand_value(1));
        break;
    case 1:
        json_object_set_new(obj, "$ne", rand_value(1));
        break;
    case 2:
    case 3:
        json_object_set_new(obj, cmp[pick(4)], rand_comparable());
        break;
    case 4:
    case 5:
        a = json_array();
        for (size_t i = 0, n = pick(4); i < n; i++)
            json_array_append_new(a, rand_value(1));
        json_object_set_new(obj, pick(2) ? "$in" : "$nin", a);
        break;
    case 6:
        json_object_set_new(obj, "$exists", json_boolean(pick(2)));
        break;
    default:
        a = json_object();
        rand_ops(a, depth + 1);
        json_object_set_new(obj, "$not", a);
        break;
    }
}

static void rand_ops(json_t *obj, int depth)
{
    size_t n = 1 + pick(2);

    for (size_t i = 0; i < n; i++)
        rand_op(obj, depth);
}

static json_t *rand_filter(int depth)
{
    static const char *const paths[] = {"a", "b", "c", "a.a", "a.b", "b.a", "a.a.b", "d"};
    json_t *f = json_object();
    size_t n = 1 + (pick(3) == 0);

    for (size_t i = 0; i < n; i++) {
        if (depth < 2 && pick(4) == 0) {
            json_t *arr = json_array();

            for (size_t k = 0, m = 1 + pick(3); k < m; k++)
                json_array_append_new(arr, rand_filter(depth + 1));
            json_object_set_new(f, pick(2) ? "$and" : "$or", arr);
        } else if (pick(3) == 0) {
            json_object_set_new(f, paths[pick(8)], rand_value(1));
        } else {
            json_t *ops = json_object();

            rand_ops(ops, depth);
            json_object_set_new(f, paths[pick(8)], ops);
        }
    }
    return f;
}

/* The reference: interprets the filter JSON directly. */

static long double ref_num(const json_t *j)
{
    return json_is_integer(j) ? (long double)json_integer_value(j)
                              : (long double)json_real_value(j);
}

static bool ref_same(const json_t *a, const json_t *b)
{
    if (json_is_number(a) || json_is_number(b))
        return json_is_number(a) && json_is_number(b) && ref_num(a) == ref_num(b);
    if (json_typeof(a) != json_typeof(b))
        return false;
    if (json_is_string(a)) {
        const unsigned char *x = (const unsigned char *)json_string_value(a);
        const unsigned char *y = (const unsigned char *)json_string_value(b);

        if (json_string_length(a) != json_string_length(b))
            return false;
        for (size_t i = 0; i < json_string_length(a); i++) {
            if (x[i] != y[i])
                return false;
        }
        return true;
    }
    if (json_is_array(a)) {
        if (json_array_size(a) != json_array_size(b))
            return false;
        for (size_t i = 0; i < json_array_size(a); i++) {
            if (!ref_same(json_array_get(a, i), json_array_get(b, i)))
                return false;
        }
        return true;
    }
    if (json_is_object(a)) {
        void *it;

        if (json_object_size(a) != json_object_size(b))
            return false;
        for (it = json_object_iter((json_t *)a); it; it = json_object_iter_next((json_t *)a, it)) {
            json_t *w = json_object_get(b, json_object_iter_key(it));

            if (!w || !ref_same(json_object_iter_value(it), w))
                return false;
        }
    }
    return true;
}

/* -1/0/1, or 2 when the two values cannot be ordered. */
static int ref_order(const json_t *a, const json_t *b)
{
    if (json_is_number(a) && json_is_number(b)) {
        long double x = ref_num(a), y = ref_num(b);

        return x < y ? -1 : x > y ? 1 : 0;
    }
    if (json_is_string(a) && json_is_string(b)) {
        const unsigned char *x = (const unsigned char *)json_string_value(a);
        const unsigned char *y = (const unsigned char *)json_string_value(b);
        size_t lx = json_string_length(a), ly = json_string_length(b);

        for (size_t i = 0; i < lx && i < ly; i++) {
            if (x[i] != y[i])
                return x[i] < y[i] ? -1 : 1;
        }
        return lx == ly ? 0 : lx < ly ? -1 : 1;
    }
    return 2;
}

static const json_t *ref_lookup(const json_t *md, const char *path)
{
    const json_t *cur = md;
    char seg[64];

    while (cur) {
        const char *dot = strchr(path, '.');
        size_t n = dot ? (size_t)(dot - path) : strlen(path);

        if (!json_is_object(cur) || n >= sizeof(seg))
            return NULL;
        memcpy(seg, path, n);
        seg[n] = '\0';
        cur = json_object_get(cur, seg);
        if (!dot)
            return cur;
        path = dot + 1;
    }
    return NULL;
}

static bool ref_equals_field(const json_t *v, const json_t *x)
{
    if (!v)
        return false;
    if (ref_same(v, x))
        return true;
    for (size_t i = 0; json_is_array(v) && i < json_array_size(v); i++) {
        if (ref_same(json_array_get(v, i), x))
            return true;
    }
    return false;
}

static bool ref_ops(const json_t *ops, const json_t *v);

static bool ref_op(const char *name, const json_t *x, const json_t *v)
{
    if (!strcmp(name, "$eq"))
        return ref_equals_field(v, x);
    if (!strcmp(name, "$ne"))
        return !ref_equals_field(v, x);
    if (!strcmp(name, "$in") || !strcmp(name, "$nin")) {
        bool in = false;

        for (size_t i = 0; i < json_array_size(x); i++)
            in = in || ref_equals_field(v, json_array_get(x, i));
        return name[1] == 'i' ? in : !in;
    }
    if (!strcmp(name, "$exists"))
        return json_is_true(x) == (v != NULL);
    if (!strcmp(name, "$not"))
        return !ref_ops(x, v);
    if (!v)
        return false;
    /* $gt $gte $lt $lte: the value itself, or any element of an array value. */
    for (size_t i = 0; i < (json_is_array(v) ? json_array_size(v) : 1); i++) {
        int c = ref_order(json_is_array(v) ? json_array_get(v, i) : v, x);

        if (c == 2)
            continue;
        if ((!strcmp(name, "$gt") && c > 0) || (!strcmp(name, "$gte") && c >= 0) ||
            (!strcmp(name, "$lt") && c < 0) || (!strcmp(name, "$lte") && c <= 0))
            return true;
    }
    return false;
}

static bool ref_ops(const json_t *ops, const json_t *v)
{
    void *it;

    for (it = json_object_iter((json_t *)ops); it; it = json_object_iter_next((json_t *)ops, it)) {
        if (!ref_op(json_object_iter_key(it), json_object_iter_value(it), v))
            return false;
    }
    return true;
}

static bool ref_match(const json_t *flt, const json_t *md)
{
    void *it;

    for (it = json_object_iter((json_t *)flt); it; it = json_object_iter_next((json_t *)flt, it)) {
        const char *k = json_object_iter_key(it);
        json_t *x = json_object_iter_value(it);
        bool ok;

        if (!strcmp(k, "$and") || !strcmp(k, "$or")) {
            bool any = false, all = true;

            for (size_t i = 0; i < json_array_size(x); i++) {
                bool m = ref_match(json_array_get(x, i), md);

                any = any || m;
                all = all && m;
            }
            ok = k[1] == 'a' ? all : any;
        } else if (json_is_object(x) && json_object_size(x) > 0 &&
                   json_object_iter_key(json_object_iter(x))[0] == '$') {
            ok = ref_ops(x, ref_lookup(md, k));
        } else {
            ok = ref_equals_field(ref_lookup(md, k), x);
        }
        if (!ok)
            return false;
    }
    return true;
}

static void test_differential(void)
{
    const char *env = getenv("CDX_TEST_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 0) : 0x5eed5eedcafef00dULL;
    size_t evals = 0, matches = 0, disagree = 0, filters = 10000;

    rng_state = seed ? seed : 1;
    printf("\n  seed %#llx (set CDX_TEST_SEED to replay)\n", (unsigned long long)seed);
    for (size_t i = 0; i < filters; i++) {
        json_t *jf = rand_filter(0);
        char *text = json_dumps(jf, JSON_COMPACT);
        eng_filter *f = NULL;

        CU_ASSERT_PTR_NOT_NULL_FATAL(text);
        if (eng_filter_parse(text, strlen(text), &f) != CDX_OK) {
            printf("\n  random filter rejected: %s: %s\n", text, cdx_err_detail());
            CU_FAIL("random filter rejected");
            disagree++;
        }
        for (size_t k = 0; f && k < 9; k++) {
            json_t *md = k == 8 ? NULL : rand_metadata();
            bool got = eng_filter_match(f, md), want = ref_match(jf, md);

            evals++;
            matches += got;
            if (got != want && disagree++ < 5) {
                char *mt = md ? json_dumps(md, JSON_COMPACT) : NULL;

                printf("\n  filter %s metadata %s: engine %d, reference %d\n", text,
                       mt ? mt : "(none)", got, want);
                free(mt);
            }
            json_decref(md);
        }
        eng_filter_free(f);
        free(text);
        json_decref(jf);
    }
    printf("  %zu filters, %zu evaluations, %zu matches, %zu disagreements\n", filters, evals,
           matches, disagree);
    CU_ASSERT_EQUAL(disagree, 0);
    /* Both outcomes must be common, or the comparison proves little. */
    CU_ASSERT_TRUE(matches > evals / 10);
    CU_ASSERT_TRUE(matches < evals - evals / 10);
}

/* ---- main --------------------------------------------------------------- */

int main(void)
{
#define X_SUITE_ROW(id, f, m, e) {#id, test_##id},
    static const fx_test tests[] = {
        FILTER_ROWS(X_SUITE_ROW) /* one test per row of the table above */
        {"docs table", test_docs_table},
        {"parse errors", test_parse_errors},
        {"JSON depth", test_json_depth},
        {"JSON limits", test_json_limits},
        {"JSON canonical", test_json_canonical},
        {"node limit", test_node_limit},
        {"int64 vs double", test_int64_double},
        {"trivial filters", test_trivial},
        {"differential", test_differential},
    };
#undef X_SUITE_ROW
    return fx_cunit_run1("filter", tests, FX_LEN(tests));
}
