/*
 * test_secmem.c - the secret arena (pkcs11/hsm_secmem.h) and the secret-file
 * reader on top of it (pkcs11/hsm_secfile.h).
 *
 * Suites, in this order (the arena is process-wide):
 *   secmem-none  before any hsm_secmem_init: nothing is handed out;
 *   secmem       a small arena: alloc/free/wipe, exhaustion, read_fd limits;
 *   secfile      O_NOFOLLOW, regular files only, the group/other mode check
 *                (unless any_mode), line endings, empty and oversized files,
 *                exact bytes, and hsm_secfile_check.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "cdx_err.h"
#include "fx_cunit.h"
#include "fx_tmp.h"
#include "hsm_secfile.h"
#include "hsm_secmem.h"

#define ARENA_BYTES 8192u

static char *dir;

/* A file under dir with these bytes and mode; returns its path (static). */
static const char *put(const char *name, const void *p, size_t n, mode_t mode)
{
    static char path[4][4200];
    static int turn;
    char *out = path[turn++ % 4];
    snprintf(out, sizeof(path[0]), "%s/%s", dir, name);
    unlink(out);
    int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_FATAL(write(fd, p, n) == (ssize_t)n);
    close(fd);
    CU_ASSERT_FATAL(chmod(out, mode) == 0);
    return out;
}

/* hsm_secmem_read_fd(.., max, out, len) on a pipe holding p[0..n), write end
 * closed; returns its result. */
static int read_piped(const void *p, size_t n, size_t max, char **out, size_t *len)
{
    int fds[2];
    CU_ASSERT_FATAL(pipe(fds) == 0);
    CU_ASSERT_FATAL(write(fds[1], p, n) == (ssize_t)n);
    close(fds[1]);
    int rc = hsm_secmem_read_fd(fds[0], max, out, len);
    close(fds[0]);
    return rc;
}

/* ---- before the arena exists ---- */

static void test_no_arena(void)
{
    size_t used = 1, cap = 1;
    hsm_secmem_usage(&used, &cap);
    CU_ASSERT_EQUAL(used, 0);
    CU_ASSERT_EQUAL(cap, 0);
    CU_ASSERT_PTR_NULL(hsm_secmem_alloc(16));
    CU_ASSERT_FALSE(hsm_secmem_locked());
    char *s = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL(read_piped("x", 1, 8, &s, &n), ENOMEM);
    CU_ASSERT_PTR_NULL(s);
    hsm_secmem_free(NULL); /* a no-op */
    hsm_secfile_opts o = {.what = "PIN file", .max = 64, .err = CDX_ERR_CONFIG};
    const char *p = put("pin-noarena", "1234\n", 5, 0600);
    CU_ASSERT_EQUAL(hsm_secfile_read(p, &o, &s, &n), CDX_ERR_RESOURCE_EXHAUSTED);
    CU_ASSERT_PTR_NULL(s);
    CU_ASSERT_EQUAL(n, 0);
    /* The check needs no arena. */
    CU_ASSERT_EQUAL(hsm_secfile_check(p, &o), CDX_OK);
}

/* ---- the arena ---- */

static int arena_init(void)
{
    /* Unlocked allowed: the build machine's RLIMIT_MEMLOCK is not ours to set. */
    return hsm_secmem_init(ARENA_BYTES, true) == CDX_OK ? 0 : -1;
}

static int arena_clean(void)
{
    hsm_secmem_shutdown();
    return 0;
}

static void test_alloc_free_wipe(void)
{
    size_t used0, cap;
    hsm_secmem_usage(&used0, &cap);
    CU_ASSERT(cap >= ARENA_BYTES);
    CU_ASSERT_EQUAL(used0, 0);
    uint8_t *a = hsm_secmem_alloc(40), *b = hsm_secmem_alloc(100);
    CU_ASSERT_FATAL(a != NULL && b != NULL);
    CU_ASSERT(a + 40 <= b || b + 100 <= a); /* disjoint */
    size_t used;
    hsm_secmem_usage(&used, &cap);
    CU_ASSERT(used >= 140 && used <= cap);
    for (size_t i = 0; i < 40; i++)
        CU_ASSERT_EQUAL(a[i], 0); /* handed out zeroed */
    memset(a, 0xA5, 40);
    memset(b, 0x5A, 100);
    hsm_secmem_free(a);
    /* Freed memory is wiped at once, before anyone reuses it. */
    size_t nz = 0;
    for (size_t i = 0; i < 40; i++)
        nz += a[i] != 0;
    CU_ASSERT_EQUAL(nz, 0);
    uint8_t *c = hsm_secmem_alloc(40);
    CU_ASSERT_FATAL(c != NULL);
    for (size_t i = 0; i < 40; i++)
        CU_ASSERT_EQUAL(c[i], 0);
    for (size_t i = 0; i < 100; i++)
        CU_ASSERT_EQUAL(b[i], 0x5A); /* a neighbour's free leaves b alone */
    hsm_secmem_free(b);
    hsm_secmem_free(c);
    hsm_secmem_usage(&used, &cap);
    CU_ASSERT_EQUAL(used, used0);
}

static void test_exhaustion(void)
{
    size_t used, cap;
    hsm_secmem_usage(&used, &cap);
    CU_ASSERT_PTR_NULL(hsm_secmem_alloc(cap + 1));
    /* Sizes whose slot count would wrap to 0 are refused, not served from a slot nobody owns. */
    CU_ASSERT_PTR_NULL(hsm_secmem_alloc(SIZE_MAX));
    CU_ASSERT_PTR_NULL(hsm_secmem_alloc(SIZE_MAX - 10));
    char *big = NULL;
    size_t biglen = 0;
    CU_ASSERT_EQUAL(hsm_secmem_read_fd(0, SIZE_MAX, &big, &biglen), ENOMEM);
    CU_ASSERT_EQUAL(hsm_secmem_read_fd(0, SIZE_MAX - 2, &big, &biglen), ENOMEM);
    CU_ASSERT_PTR_NULL(big);
    void *p[1024];
    size_t n = 0;
    while (n < FX_LEN(p) && (p[n] = hsm_secmem_alloc(32)) != NULL)
        n++;
    CU_ASSERT(n > 0 && n < FX_LEN(p));
    CU_ASSERT(n * 32 <= cap);
    hsm_secmem_usage(&used, &cap);
    CU_ASSERT_EQUAL(used, cap); /* full */
    CU_ASSERT_PTR_NULL(hsm_secmem_alloc(1));
    hsm_secmem_free(p[n / 2]);
    void *again = hsm_secmem_alloc(32);
    CU_ASSERT_PTR_EQUAL(again, p[n / 2]); /* the freed slot serves again */
    p[n / 2] = again;
    for (size_t i = 0; i < n; i++)
        hsm_secmem_free(p[i]);
    hsm_secmem_usage(&used, &cap);
    CU_ASSERT_EQUAL(used, 0);
    /* A second init takes a reference on the same arena (the size is fixed). */
    CU_ASSERT_EQUAL(hsm_secmem_init(1u << 20, true), CDX_OK);
    size_t cap2;
    hsm_secmem_usage(&used, &cap2);
    CU_ASSERT_EQUAL(cap2, cap);
    hsm_secmem_shutdown();
    hsm_secmem_usage(&used, &cap2);
    CU_ASSERT_EQUAL(cap2, cap); /* still alive: one reference left */
}

static void test_read_fd(void)
{
    char *s = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL(read_piped("secret", 6, 16, &s, &n), 0);
    CU_ASSERT_EQUAL(n, 6);
    CU_ASSERT_FATAL(s != NULL);
    CU_ASSERT_STRING_EQUAL(s, "secret"); /* NUL-terminated */
    hsm_secmem_free(s);
    /* Exactly max bytes is fine, one more is E2BIG. */
    CU_ASSERT_EQUAL(read_piped("12345678", 8, 8, &s, &n), 0);
    CU_ASSERT_EQUAL(n, 8);
    hsm_secmem_free(s);
    CU_ASSERT_EQUAL(read_piped("123456789", 9, 8, &s, &n), E2BIG);
    CU_ASSERT_PTR_NULL(s);
    CU_ASSERT_EQUAL(n, 0);
    /* Binary bytes and NULs are kept; an empty input is 0 bytes. */
    CU_ASSERT_EQUAL(read_piped("a\0b\xff", 4, 8, &s, &n), 0);
    CU_ASSERT(n == 4 && s && memcmp(s, "a\0b\xff", 4) == 0);
    hsm_secmem_free(s);
    CU_ASSERT_EQUAL(read_piped("", 0, 8, &s, &n), 0);
    CU_ASSERT_EQUAL(n, 0);
    hsm_secmem_free(s);
    /* A read error is its errno; a buffer larger than the arena is ENOMEM. */
    CU_ASSERT_EQUAL(hsm_secmem_read_fd(-1, 8, &s, &n), EBADF);
    CU_ASSERT_PTR_NULL(s);
    CU_ASSERT_EQUAL(read_piped("x", 1, 2 * ARENA_BYTES, &s, &n), ENOMEM);
    size_t used, cap;
    hsm_secmem_usage(&used, &cap);
    CU_ASSERT_EQUAL(used, 0); /* nothing leaked by the failures */
}

/* ---- secret files ---- */

static int secfile_init(void)
{
    return arena_init();
}

static const hsm_secfile_opts PIN = {.what = "PIN file", .max = 16, .err = CDX_ERR_CONFIG};

/* hsm_secfile_read that must fail with want, leaving nothing behind. */
static void read_fails(const char *path, const hsm_secfile_opts *o, cdx_err want)
{
    char *s = (char *)"unchanged";
    size_t n = 99;
    CU_ASSERT_EQUAL(hsm_secfile_read(path, o, &s, &n), want);
    CU_ASSERT_PTR_NULL(s);
    CU_ASSERT_EQUAL(n, 0);
}

static void test_exact_bytes(void)
{
    static const char bin[] = {'p', 0x01, (char)0xff, ' ', 'q'};
    const char *p = put("bin", bin, sizeof(bin), 0600);
    char *s = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL_FATAL(hsm_secfile_read(p, &PIN, &s, &n), CDX_OK);
    CU_ASSERT_EQUAL(n, sizeof(bin));
    CU_ASSERT(memcmp(s, bin, sizeof(bin)) == 0 && s[n] == '\0');
    hsm_secmem_free(s);
    /* Read-only for the owner is fine too. */
    p = put("ro", "1234", 4, 0400);
    CU_ASSERT_EQUAL(hsm_secfile_read(p, &PIN, &s, &n), CDX_OK);
    CU_ASSERT(n == 4 && memcmp(s, "1234", 4) == 0);
    hsm_secmem_free(s);
}

static void test_line_endings(void)
{
    static const struct {
        const char *in, *out;
    } rows[] = {
        {"1234\n", "1234"},     {"1234\r\n", "1234"},
        {"1234", "1234"},       {"12 34\n", "12 34"}, /* inner spaces are the secret's */
        {"1234\n\n", "1234\n"},                       /* only one line ending goes */
        {" 1234\n", " 1234"},
    };
    for (size_t i = 0; i < FX_LEN(rows); i++) {
        const char *p = put("eol", rows[i].in, strlen(rows[i].in), 0600);
        char *s = NULL;
        size_t n = 0;
        CU_ASSERT_EQUAL_FATAL(hsm_secfile_read(p, &PIN, &s, &n), CDX_OK);
        CU_ASSERT_EQUAL(n, strlen(rows[i].out));
        CU_ASSERT_STRING_EQUAL(s, rows[i].out);
        hsm_secmem_free(s);
    }
}

static void test_empty_and_long(void)
{
    read_fails(put("empty", "", 0, 0600), &PIN, CDX_ERR_CONFIG);
    read_fails(put("nl", "\n", 1, 0600), &PIN, CDX_ERR_CONFIG);
    read_fails(put("crnl", "\r\n", 2, 0600), &PIN, CDX_ERR_CONFIG);
    /* max counts the bytes before stripping: 16 is fine, 17 is refused. */
    char *s = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL(hsm_secfile_read(put("16", "0123456789abcdef", 16, 0600), &PIN, &s, &n),
                    CDX_OK);
    CU_ASSERT_EQUAL(n, 16);
    hsm_secmem_free(s);
    read_fails(put("17", "0123456789abcdefg", 17, 0600), &PIN, CDX_ERR_CONFIG);
    read_fails(put("16nl", "0123456789abcdef\n", 17, 0600), &PIN, CDX_ERR_CONFIG);
    /* The error names the file, never its bytes. */
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "16nl"));
    CU_ASSERT_PTR_NULL(strstr(cdx_err_detail(), "0123456789"));
    /* The caller's error code is the one returned. */
    hsm_secfile_opts key = {.what = "key file", .max = 16, .err = CDX_ERR_BAD_KEY_FILE};
    read_fails(put("empty", "", 0, 0600), &key, CDX_ERR_BAD_KEY_FILE);
    char missing[4200];
    snprintf(missing, sizeof(missing), "%s/no-such-file", dir);
    read_fails(missing, &key, CDX_ERR_BAD_KEY_FILE);
    CU_ASSERT_EQUAL(hsm_secfile_check(missing, &key), CDX_ERR_BAD_KEY_FILE);
    size_t used, cap;
    hsm_secmem_usage(&used, &cap);
    CU_ASSERT_EQUAL(used, 0);
}

static void test_modes(void)
{
    static const mode_t refused[] = {0640, 0604, 0660, 0644, 0610, 0601, 0700 | 0070};
    hsm_secfile_opts any = PIN;
    any.any_mode = true;
    for (size_t i = 0; i < FX_LEN(refused); i++) {
        const char *p = put("mode", "1234\n", 5, refused[i]);
        read_fails(p, &PIN, CDX_ERR_CONFIG);
        CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "group or others"));
        CU_ASSERT_EQUAL(hsm_secfile_check(p, &PIN), CDX_ERR_CONFIG);
        /* any_mode skips only this check. */
        char *s = NULL;
        size_t n = 0;
        CU_ASSERT_EQUAL(hsm_secfile_read(p, &any, &s, &n), CDX_OK);
        CU_ASSERT(n == 4 && s && memcmp(s, "1234", 4) == 0);
        hsm_secmem_free(s);
        CU_ASSERT_EQUAL(hsm_secfile_check(p, &any), CDX_OK);
    }
    CU_ASSERT_EQUAL(hsm_secfile_check(put("mode", "1234\n", 5, 0600), &PIN), CDX_OK);
}

static void test_not_a_plain_file(void)
{
    hsm_secfile_opts any = PIN;
    any.any_mode = true;
    /* A symlink, even to a good file, even with any_mode: O_NOFOLLOW. */
    const char *target = put("target", "1234\n", 5, 0600);
    char link[4200];
    snprintf(link, sizeof(link), "%s/link", dir);
    unlink(link);
    CU_ASSERT_FATAL(symlink(target, link) == 0);
    read_fails(link, &PIN, CDX_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "symbolic link"));
    read_fails(link, &any, CDX_ERR_CONFIG);
    CU_ASSERT_EQUAL(hsm_secfile_check(link, &PIN), CDX_ERR_CONFIG);
    CU_ASSERT_EQUAL(hsm_secfile_check(link, &any), CDX_ERR_CONFIG);
    /* A directory and a character device are not regular files. */
    char sub[4200];
    snprintf(sub, sizeof(sub), "%s/subdir", dir);
    CU_ASSERT_FATAL(mkdir(sub, 0700) == 0);
    read_fails(sub, &any, CDX_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "not a regular file"));
    CU_ASSERT_EQUAL(hsm_secfile_check(sub, &any), CDX_ERR_CONFIG);
    read_fails("/dev/null", &any, CDX_ERR_CONFIG);
    CU_ASSERT_EQUAL(hsm_secfile_check("/dev/null", &any), CDX_ERR_CONFIG);
    /* A FIFO with no writer: refused at once (a blocking open would hang start-up forever). */
    char fifo[4200];
    snprintf(fifo, sizeof(fifo), "%s/fifo", dir);
    unlink(fifo);
    CU_ASSERT_FATAL(mkfifo(fifo, 0600) == 0);
    read_fails(fifo, &any, CDX_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "not a regular file"));
    CU_ASSERT_EQUAL(hsm_secfile_check(fifo, &PIN), CDX_ERR_CONFIG);
}

int main(void)
{
    static const fx_test none[] = {
        {"no arena: nothing handed out, check still works", test_no_arena},
    };
    static const fx_test arena[] = {
        {"alloc zeroed, free wipes, usage", test_alloc_free_wipe},
        {"exhaustion, reuse, reference-counted init", test_exhaustion},
        {"read_fd: exact max, E2BIG, errno, ENOMEM", test_read_fd},
    };
    static const fx_test secfile[] = {
        {"exact bytes", test_exact_bytes},
        {"one \\n or \\r\\n stripped", test_line_endings},
        {"empty and oversized refused", test_empty_and_long},
        {"group/other modes refused unless any_mode", test_modes},
        {"symlink, directory, device refused", test_not_a_plain_file},
    };
    static const fx_suite suites[] = {
        {.name = "secmem-none", .tests = none, .ntests = FX_LEN(none)},
        {.name = "secmem",
         .init = arena_init,
         .clean = arena_clean,
         .tests = arena,
         .ntests = FX_LEN(arena)},
        {.name = "secfile",
         .init = secfile_init,
         .clean = arena_clean,
         .tests = secfile,
         .ntests = FX_LEN(secfile)},
    };
    dir = fx_tmpdir_new("secmem");
    if (!dir)
        return 1;
    int rc = fx_cunit_run(suites, FX_LEN(suites));
    fx_rm_rf(dir);
    free(dir);
    return rc;
}
