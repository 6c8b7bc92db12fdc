/* test_log: structured log lines (proto/cdx_log.c), key=value and JSON. */
#include <CUnit/Basic.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

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

int main(void)
{
    static const fx_test tests[] = {
        {"key=value lines", test_kv},
        {"JSON lines", test_json},
    };
    return fx_cunit_run1("log", tests, FX_LEN(tests));
}
