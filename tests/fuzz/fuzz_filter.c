/*
 * fuzz_filter.c - fuzz target for metadata filters and metadata JSON
 * (engine/eng_filter, engine/eng_json): both come from clients.
 *
 * The input is split at its first 0x00 byte: before it a filter, after it a
 * metadata object (no 0x00: the whole input is tried as both). Checked:
 *  - eng_filter_parse: OK, or INVALID_ARGUMENT with a detail that starts
 *    with "filter: " and no filter; a parsed filter evaluates against the
 *    metadata and against NULL (no metadata) without failing;
 *  - eng_json_parse_object: OK (an object) or INVALID_ARGUMENT; the
 *    canonical form of a parsed object parses again to the same canonical
 *    form.
 *
 * Built two ways (see tests/fuzz/fuzz_main.h):
 *  - by CMake with fuzz_main.c: `fuzz_filter [--seeds DIR] FILE|DIR...`;
 *  - for libFuzzer (clang 14, Debian libclang-rt-14-dev):
 *      clang -g -O1 -fsanitize=fuzzer,address,undefined -DCDX_LIBFUZZER \
 *        -Iproto -Iengine tests/fuzz/fuzz_filter.c engine/eng_filter.c engine/eng_json.c \
 *        proto/cdx_err.c proto/cdx_utf8.c -ljansson -o fuzz_filter_lf
 *      ./fuzz_filter_lf -max_len=70000 corpus/
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cdx_err.h"
#include "cdx_limits.h"
#include "eng_filter.h"
#include "eng_json.h"

#ifndef CDX_LIBFUZZER
#include "fuzz_main.h"
#else
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
#endif

static json_t *metadata(const char *p, size_t n)
{
    json_t *j = NULL;
    cdx_err e = eng_json_parse_object(p, n, CDX_METADATA_MAX, &j);
    if (e != CDX_OK) {
        if (j || (e != CDX_ERR_INVALID_ARGUMENT && e != CDX_ERR_RESOURCE_EXHAUSTED))
            abort();
        return NULL;
    }
    if (!json_is_object(j))
        abort();
    /* Canonical form is a fixpoint. */
    char *c1 = eng_json_canonical(j);
    if (c1) {
        json_t *j2 = NULL;
        if (eng_json_parse_object(c1, strlen(c1), SIZE_MAX / 2, &j2) != CDX_OK)
            abort();
        char *c2 = eng_json_canonical(j2);
        if (!c2 || strcmp(c1, c2) != 0)
            abort();
        free(c2);
        json_decref(j2);
        free(c1);
    }
    return j;
}

static eng_filter *filter(const char *p, size_t n)
{
    eng_filter *f = (eng_filter *)1;
    cdx_err e = eng_filter_parse(p, n, &f);
    if (e == CDX_OK)
        return f;
    if (f != NULL)
        abort();
    if (e == CDX_ERR_INVALID_ARGUMENT && strncmp(cdx_err_detail(), "filter: ", 8) != 0)
        abort();
    if (e != CDX_ERR_INVALID_ARGUMENT && e != CDX_ERR_RESOURCE_EXHAUSTED)
        abort();
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    const uint8_t *nul = memchr(data, 0, size);
    size_t fl = nul ? (size_t)(nul - data) : size;
    const char *m = nul ? s + fl + 1 : s;
    size_t ml = nul ? size - fl - 1 : size;

    eng_filter *f = filter(s, fl);
    json_t *j = metadata(m, ml);
    if (f) {
        bool trivial = eng_filter_is_trivial(f);
        bool a = eng_filter_match(f, j);
        bool b = eng_filter_match(f, NULL);
        /* A trivial filter matches everything. */
        if (trivial && (!a || !b))
            abort();
        /* Evaluation is a pure function. */
        if (eng_filter_match(f, j) != a)
            abort();
        eng_filter_free(f);
    }
    json_decref(j);
    return 0;
}

#ifndef CDX_LIBFUZZER

int fuzz_write_seeds(const char *dir)
{
    static const struct {
        const char *name, *filter, *meta;
    } seeds[] = {
        {"eq", "{\"tag\": \"red\"}", "{\"tag\": \"red\", \"n\": 1}"},
        {"range", "{\"price\": {\"$gt\": 5, \"$lte\": 10.5}}", "{\"price\": 7}"},
        {"in", "{\"c\": {\"$in\": [1, \"a\", true, null]}}", "{\"c\": \"a\"}"},
        {"nin_exists", "{\"c\": {\"$nin\": [2]}, \"d\": {\"$exists\": false}}", "{\"c\": 3}"},
        {"logic",
         "{\"$or\": [{\"a\": 1}, {\"$and\": [{\"b\": {\"$ne\": 2}}, {\"$not\": {\"c\": 3}}]}]}",
         "{\"a\": 2, \"b\": 3}"},
        {"path", "{\"a.b.c\": {\"$gte\": -1e300}}", "{\"a\": {\"b\": {\"c\": 0}}}"},
        {"int64", "{\"n\": 9007199254740993}", "{\"n\": 9007199254740993}"},
        {"trivial", "{}", "{}"},
        {"empty", "", ""},
        {"bad_op", "{\"a\": {\"$regex\": \"x\"}}", "[1, 2]"},
        {"deep", "{\"$and\": [{\"$and\": [{\"$and\": [{\"$and\": [{\"a\": 1}]}]}]}]}",
         "{\"a\": {\"a\": {\"a\": {\"a\": {\"a\": 1}}}}}"},
        {"utf8", "{\"caf\xc3\xa9\": \"\xe2\x82\xac\"}", "{\"caf\xc3\xa9\": \"\xe2\x82\xac\"}"},
        {"bad_utf8", "{\"a\": \"\xff\"}", "{\"a\": \"\xed\xa0\x80\"}"},
        {"dup_key", "{\"a\": 1, \"a\": 2}", "{\"a\": 1, \"a\": 2}"},
        {"mixed", "{\"a\": {\"$gt\": 1, \"b\": 2}}", "{\"a\": {\"$gt\": 1}}"},
    };
    char buf[1024];
    for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++) {
        size_t fl = strlen(seeds[i].filter), ml = strlen(seeds[i].meta);
        memcpy(buf, seeds[i].filter, fl);
        buf[fl] = '\0';
        memcpy(buf + fl + 1, seeds[i].meta, ml);
        if (fuzz_seed(dir, seeds[i].name, buf, fl + 1 + ml))
            return -1;
    }
    /* Without a 0x00: the same bytes as filter and metadata. */
    static const char both[] = "{\"a\": [1, {\"b\": null}], \"c\": {\"$exists\": true}}";
    if (fuzz_seed(dir, "both", both, sizeof(both) - 1))
        return -1;
    /* Nesting far past the depth limit. */
    char deep[4096] = "{\"a\": ";
    size_t n = strlen(deep);
    while (n < 2000)
        deep[n++] = '[';
    return fuzz_seed(dir, "too_deep", deep, n);
}

#endif
