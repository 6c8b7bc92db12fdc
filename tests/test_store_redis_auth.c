/*
 * test_store_redis_auth.c - the Redis backend's password_file and AUTH
 * (engine/eng_redis_conn.c), against a throwaway redis-server with an ACL
 * user: the file is read with hsm_secfile_read into the secret arena, so a
 * symlink is refused, one "\r\n" is stripped, the length limit is exact, the
 * arena is required, and every path gives the arena back.
 * (test_store.c covers wrong passwords, loose modes, missing and empty
 * files, and rotation.)
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "cdx_err.h"
#include "cdx_limits.h"
#include "eng_store.h"
#include "fx_cunit.h"
#include "fx_redis.h"
#include "fx_tmp.h"
#include "hsm_secmem.h"

#define ACL_USER "cdx-auth"
#define ACL_PASS "tr0ub4dor&3"

static char *TMP;
static fx_redis *R;

/* Write n bytes to TMP/name with `mode`; returns the malloc'ed path. */
static char *write_file(const char *name, const char *content, size_t n, mode_t mode)
{
    return fx_write_file(TMP, name, content, n, mode);
}

static cdx_err open_with(const char *pw_file)
{
    eng_redis_opts o = {.host = fx_redis_host(R),
                        .port = fx_redis_port(R),
                        .user = ACL_USER,
                        .password_file = pw_file,
                        .connections = 2};
    eng_store *s = NULL;
    cdx_err e = eng_store_redis_new(&o, &s);

    if (e == CDX_OK) {
        eng_kv kv = {"t:auth", (const uint8_t *)"ok", 2};
        CU_ASSERT_EQUAL(eng_store_set(s, &kv, 1), CDX_OK);
    } else {
        CU_ASSERT_PTR_NULL(s);
    }
    eng_store_free(s);
    return e;
}

static size_t arena_used(void)
{
    size_t used = 0, cap = 0;
    hsm_secmem_usage(&used, &cap);
    return used;
}

/* Without the secret arena the password cannot be read: refused, not read onto the heap. */
static void test_needs_arena(void)
{
    char *pw = write_file("pw-noarena", ACL_PASS "\n", strlen(ACL_PASS) + 1, 0600);

    CU_ASSERT_PTR_NOT_NULL_FATAL(pw);
    CU_ASSERT_EQUAL(open_with(pw), CDX_ERR_RESOURCE_EXHAUSTED);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "Redis password_file"));
    free(pw);
}

static void test_line_endings(void)
{
    char *lf = write_file("pw-lf", ACL_PASS "\n", strlen(ACL_PASS) + 1, 0600);
    char *crlf = write_file("pw-crlf", ACL_PASS "\r\n", strlen(ACL_PASS) + 2, 0600);
    char *none = write_file("pw-none", ACL_PASS, strlen(ACL_PASS), 0600);
    char *two = write_file("pw-two", ACL_PASS "\n\n", strlen(ACL_PASS) + 2, 0600);
    size_t before = arena_used();

    CU_ASSERT_FATAL(lf && crlf && none && two);
    CU_ASSERT_EQUAL(open_with(lf), CDX_OK);
    CU_ASSERT_EQUAL(open_with(crlf), CDX_OK);
    CU_ASSERT_EQUAL(open_with(none), CDX_OK);
    /* Only one line ending is stripped: the rest is part of the password. */
    CU_ASSERT_EQUAL(open_with(two), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "refused AUTH"));
    CU_ASSERT_EQUAL(arena_used(), before);
    free(lf);
    free(crlf);
    free(none);
    free(two);
}

static void test_symlink_refused(void)
{
    char *target = write_file("pw-target", ACL_PASS "\n", strlen(ACL_PASS) + 1, 0600);
    char *link = NULL;

    CU_ASSERT_PTR_NOT_NULL_FATAL(target);
    CU_ASSERT_FATAL(asprintf(&link, "%s/pw-link", TMP) > 0);
    unlink(link);
    CU_ASSERT_EQUAL_FATAL(symlink(target, link), 0);
    CU_ASSERT_EQUAL(open_with(link), CDX_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "symbolic link"));
    CU_ASSERT_EQUAL(open_with(target), CDX_OK);
    free(target);
    free(link);
}

/* CDX_STORE_PASSWORD_MAX bytes are read (and refused by Redis); one more is a config error. */
static void test_length_limit(void)
{
    char *buf = malloc(CDX_STORE_PASSWORD_MAX + 1);
    char *at_max, *over;
    size_t before = arena_used();

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    memset(buf, 'p', CDX_STORE_PASSWORD_MAX + 1);
    at_max = write_file("pw-max", buf, CDX_STORE_PASSWORD_MAX, 0600);
    over = write_file("pw-over", buf, CDX_STORE_PASSWORD_MAX + 1, 0600);
    CU_ASSERT_FATAL(at_max && over);
    CU_ASSERT_EQUAL(open_with(at_max), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "refused AUTH"));
    CU_ASSERT_EQUAL(open_with(over), CDX_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "longer than"));
    CU_ASSERT_PTR_NULL(strstr(cdx_err_detail(), "ppp"));
    CU_ASSERT_EQUAL(arena_used(), before);
    free(at_max);
    free(over);
    free(buf);
}

static int init_suite(void)
{
    fx_redis_opts o = {.acl_user = ACL_USER, .acl_pass = ACL_PASS};

    R = fx_redis_start(&o);
    return R ? 0 : 1;
}

static int init_arena(void)
{
    return hsm_secmem_init(0, true) == CDX_OK ? 0 : 1;
}

static int cleanup_arena(void)
{
    hsm_secmem_shutdown();
    return 0;
}

int main(void)
{
    static const fx_test no_arena[] = {
        {"password_file needs the secret arena", test_needs_arena},
    };
    static const fx_test with_arena[] = {
        {"one \\n or \\r\\n stripped", test_line_endings},
        {"a symlinked password_file is refused", test_symlink_refused},
        {"length limit is exact; the arena is given back", test_length_limit},
    };
    const fx_suite suites[] = {
        {.name = "redis-auth-no-arena", .tests = no_arena, .ntests = FX_LEN(no_arena)},
        {.name = "redis-auth",
         .init = init_arena,
         .clean = cleanup_arena,
         .tests = with_arena,
         .ntests = FX_LEN(with_arena)},
    };

    TMP = fx_tmpdir_new("store-auth");
    if (!TMP || init_suite())
        return 2;
    int rc = fx_cunit_run(suites, FX_LEN(suites));
    fx_redis_stop(R);
    fx_rm_rf(TMP);
    free(TMP);
    return rc;
}
