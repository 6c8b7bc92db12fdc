/* test_log: structured log lines (proto/cdx_log.c), key=value and JSON, and the JSON string
 * escaper behind them (proto/cdx_json.c). */
#include <CUnit/Basic.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cdx_json.h"
#include "cdx_log.h"
#include "fx_cunit.h"

/* Run one cdx_log call with stderr captured; the line (without newline) into out. */
static void capture(cdx_log_format f, const char *event, const char *kv, char *out, size_t cap)
{
    int p[2];
    CU_ASSERT_FATAL(pipe(p) == 0);
    fflush(stderr);
    int saved = dup(2);
    dup2(p[1], 2);
    cdx_log_set_format(f);
    cdx_log(CDX_LOG_WARN, event, "%s", kv);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    close(p[1]);
    ssize_t n = read(p[0], out, cap - 1);
    close(p[0]);
    out[n > 0 ? n : 0] = '\0';
    out[strcspn(out, "\n")] = '\0';
    cdx_log_set_format(CDX_LOG_FMT_KV);
}

static void test_kv(void)
{
    char line[2048];
    capture(CDX_LOG_FMT_KV, "store_error", "code=107 msg=\"connection refused\"", line,
            sizeof(line));
    CU_ASSERT(strncmp(line, "ts=", 3) == 0);
    CU_ASSERT(strstr(line, " level=warn event=store_error code=107 msg=\"connection refused\"") !=
              NULL);
}

static void test_json(void)
{
    char line[4096];
    capture(CDX_LOG_FMT_JSON, "ev", "a=1 b=\"x y\" c=q\"uote d=back\\slash bare e=\x01", line,
            sizeof(line));
    json_error_t je;
    json_t *j = json_loads(line, 0, &je);
    CU_ASSERT_FATAL(j != NULL);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "level")), "warn");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "event")), "ev");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "a")), "1");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "b")), "x y");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "c")), "q\"uote");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "d")), "back\\slash");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "msg")), "bare");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "e")), "\x01");
    CU_ASSERT(json_string_value(json_object_get(j, "ts")) != NULL);
    json_decref(j);
    /* A line longer than the buffer is cut but stays one valid JSON object. */
    char big[3000];
    memset(big, 'x', sizeof(big) - 1);
    memcpy(big, "k=", 2);
    big[sizeof(big) - 1] = '\0';
    capture(CDX_LOG_FMT_JSON, "ev", big, line, sizeof(line));
    j = json_loads(line, 0, &je);
    CU_ASSERT(j != NULL);
    json_decref(j);
}

/* ---- the JSON string escaper (proto/cdx_json.h) behind the JSON lines ---- */

static void escape_is(const char *in, size_t n, const char *want)
{
    char out[256];
    size_t used = 0;
    size_t w = cdx_json_escape(out, sizeof(out), in, n, &used);
    CU_ASSERT_EQUAL(w, strlen(want));
    CU_ASSERT_STRING_EQUAL(out, want);
    CU_ASSERT_EQUAL(used, n);
}
#define ESCAPE_IS(lit, want) escape_is(lit, sizeof(lit) - 1, want)

static void test_json_escapes(void)
{
    ESCAPE_IS("plain text", "plain text");
    ESCAPE_IS("a\"b", "a\\\"b");
    ESCAPE_IS("back\\slash", "back\\\\slash");
    ESCAPE_IS("\n\r\t", "\\n\\r\\t");
    ESCAPE_IS("\x01\x1f\x7f", "\\u0001\\u001f\\u007f");
    ESCAPE_IS("nul\0byte", "nul\\u0000byte");
    ESCAPE_IS("/", "/");
    /* Valid UTF-8 passes through: 2, 3 and 4 bytes. */
    ESCAPE_IS("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x94\x91",
              "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x94\x91");
}

static void test_json_invalid_utf8(void)
{
    /* One U+FFFD per offending byte: stray, truncated, overlong, surrogate, too high. */
    ESCAPE_IS("\xff", "\\ufffd");
    ESCAPE_IS("a\xc3", "a\\ufffd");
    ESCAPE_IS("\xc3(", "\\ufffd(");
    ESCAPE_IS("\xc0\xaf", "\\ufffd\\ufffd");
    ESCAPE_IS("\xed\xa0\x80", "\\ufffd\\ufffd\\ufffd");
    ESCAPE_IS("\xf4\x90\x80\x80", "\\ufffd\\ufffd\\ufffd\\ufffd");
    ESCAPE_IS("\x80ok", "\\ufffdok");
}

/* Every capacity: a prefix of the whole escape, NUL-terminated, never half
 * an escape, and *consumed the input that prefix stands for. */
static void test_json_cap(void)
{
    static const char in[] = "a\"\n\x01\xc3\xa9\xff\\z\xe2\x82\xac";
    const size_t n = sizeof(in) - 1;
    char full[256], out[256], again[256];
    size_t fl = cdx_json_escape(full, sizeof(full), in, n, NULL);
    CU_ASSERT_STRING_EQUAL(full, "a\\\"\\n\\u0001\xc3\xa9\\ufffd\\\\z\xe2\x82\xac");
    for (size_t cap = 0; cap <= fl + 2; cap++) {
        memset(out, 'X', sizeof(out));
        size_t used = 99;
        size_t w = cdx_json_escape(out, cap, in, n, &used);
        if (cap == 0) {
            CU_ASSERT_EQUAL(w, 0);
            CU_ASSERT_EQUAL(out[0], 'X'); /* nothing written */
            continue;
        }
        CU_ASSERT(w < cap);
        CU_ASSERT_EQUAL(out[w], '\0');
        CU_ASSERT_EQUAL(strncmp(out, full, w), 0);
        CU_ASSERT(used <= n);
        /* The input taken escapes to exactly what was written: no cut escape. */
        size_t w2 = cdx_json_escape(again, sizeof(again), in, used, NULL);
        CU_ASSERT_EQUAL(w2, w);
        CU_ASSERT_STRING_EQUAL(again, out);
        if (cap > fl)
            CU_ASSERT_EQUAL(used, n);
    }
}

/* cdx_json_fput writes one quoted string that a JSON parser reads back. */
static void test_json_fput(void)
{
    static const struct {
        const char *in;
        size_t n;
        const char *want; /* UTF-8 after parsing */
    } rows[] = {
        {"he said \"hi\"\n", 13, "he said \"hi\"\n"},
        {"tab\there", 8, "tab\there"},
        {"x\xffy", 3, "x\xef\xbf\xbdy"},
        {"", 0, ""},
    };
    for (size_t i = 0; i < FX_LEN(rows); i++) {
        FILE *f = tmpfile();
        CU_ASSERT_FATAL(f != NULL);
        CU_ASSERT_EQUAL(cdx_json_fput(f, rows[i].in, rows[i].n), 0);
        char buf[256];
        rewind(f);
        size_t got = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[got] = '\0';
        CU_ASSERT(got >= 2 && buf[0] == '"' && buf[got - 1] == '"');
        json_error_t je;
        json_t *j = json_loads(buf, JSON_DECODE_ANY, &je);
        CU_ASSERT_FATAL(j != NULL && json_is_string(j));
        CU_ASSERT_STRING_EQUAL(json_string_value(j), rows[i].want);
        json_decref(j);
    }
}

int main(void)
{
    static const fx_test tests[] = {
        {"key=value lines", test_kv},
        {"JSON lines", test_json},
        {"JSON escaper: escapes", test_json_escapes},
        {"JSON escaper: invalid UTF-8 becomes U+FFFD", test_json_invalid_utf8},
        {"JSON escaper: every capacity, no cut escape", test_json_cap},
        {"JSON escaper: fput reads back", test_json_fput},
    };
    return fx_cunit_run1("log", tests, FX_LEN(tests));
}
