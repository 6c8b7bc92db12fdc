/*
 * test_fixtures.c - the fixtures every other suite relies on, checked
 * against the real programs: softhsm2-util, redis-server, SoftHSM through
 * the p11wrap module.
 */
#include <p11-kit/pkcs11.h>

#include "fx_redis.h"
#include "fx_softhsm.h"
#include "fx_tmp.h"
#include "p11wrap.h"
#include "fx_cunit.h"

#include <CUnit/Basic.h>
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ---------------------------------------------------------- */

/* `softhsm2-util --show-slots` under t's conf (not the process's SOFTHSM2_CONF). */
static int show_slots(const fx_token *t, char *out, size_t cap)
{
    const char *argv[] = {"softhsm2-util", "--show-slots", NULL};
    char env0[4096];
    const char *env[] = {env0, NULL};

    snprintf(env0, sizeof(env0), "SOFTHSM2_CONF=%s", fx_token_conf(t));
    return fx_run_env(argv, env, NULL, out, cap);
}

/*
 * Serial of the token labelled `label` in show-slots output (the serial line
 * comes before the label line in each slot block). Returns 0 when found.
 */
static int serial_of(const char *slots, const char *label, char *serial, size_t cap)
{
    char cur[64] = "";
    const char *line = slots;

    while (line && *line) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        char buf[256];
        const char *v;
        size_t vl;

        if (len >= sizeof(buf))
            len = sizeof(buf) - 1;
        memcpy(buf, line, len);
        buf[len] = '\0';
        while (len > 0 && (buf[len - 1] == ' ' || buf[len - 1] == '\r'))
            buf[--len] = '\0';
        if ((v = strstr(buf, "Serial number:")) != NULL) {
            v += strlen("Serial number:");
            v += strspn(v, " ");
            snprintf(cur, sizeof(cur), "%s", v);
        } else if ((v = strstr(buf, "Label:")) != NULL) {
            v += strlen("Label:");
            v += strspn(v, " ");
            vl = strlen(v);
            if (vl == strlen(label) && memcmp(v, label, vl) == 0 && cur[0]) {
                snprintf(serial, cap, "%s", cur);
                return 0;
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    return -1;
}

static int connect_tcp(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static int redis_cmd1(fx_redis *r, const char *a0, char *out, size_t cap)
{
    const char *argv[] = {a0};
    return fx_redis_command(r, argv, 1, out, cap);
}

/* ---- fx_tmp ----------------------------------------------------------- */

static void test_tmpdir(void)
{
    const char *base = getenv("CDX_TEST_TMP");
    char *d = fx_tmpdir_new("t");
    char *outside;
    char path[4096], keep[4096];
    struct stat st;
    int fd;

    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    if (base && *base)
        CU_ASSERT_EQUAL(strncmp(d, base, strlen(base)), 0);
    CU_ASSERT_EQUAL_FATAL(stat(d, &st), 0);
    CU_ASSERT(S_ISDIR(st.st_mode));
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0700);

    snprintf(path, sizeof(path), "%s/a", d);
    CU_ASSERT_EQUAL(mkdir(path, 0700), 0);
    snprintf(path, sizeof(path), "%s/a/b", d);
    CU_ASSERT_EQUAL(mkdir(path, 0700), 0);
    snprintf(path, sizeof(path), "%s/a/b/f", d);
    fd = open(path, O_WRONLY | O_CREAT, 0600);
    CU_ASSERT(fd >= 0);
    if (fd >= 0)
        close(fd);
    /* A link to another directory must be removed, not followed. */
    outside = fx_tmpdir_new("t-outside");
    CU_ASSERT_PTR_NOT_NULL_FATAL(outside);
    snprintf(keep, sizeof(keep), "%s/keep", outside);
    fd = open(keep, O_WRONLY | O_CREAT, 0600);
    CU_ASSERT(fd >= 0);
    if (fd >= 0)
        close(fd);
    snprintf(path, sizeof(path), "%s/a/link", d);
    CU_ASSERT_EQUAL(symlink(outside, path), 0);

    CU_ASSERT_EQUAL(fx_rm_rf(d), 0);
    CU_ASSERT_EQUAL(stat(d, &st), -1);
    CU_ASSERT_EQUAL(errno, ENOENT);
    CU_ASSERT_EQUAL(stat(keep, &st), 0);
    CU_ASSERT_EQUAL(fx_rm_rf(d), 0); /* already gone is fine */
    CU_ASSERT_EQUAL(fx_rm_rf(outside), 0);
    free(outside);
    free(d);
}

static void test_run(void)
{
    const char *cat[] = {"cat", NULL};
    const char *sh[] = {"sh", "-c", "echo out; echo err >&2; exit 3", NULL};
    const char *missing[] = {"/nonexistent/fx-prog", NULL};
    const char *printenv[] = {"printenv", "FX_TEST_VAR", NULL};
    const char *env[] = {"FX_TEST_VAR=set-in-child", NULL};
    char out[256];
    size_t big_len = 256 * 1024;
    char *big = malloc(big_len + 1);

    CU_ASSERT_EQUAL(fx_run(cat, "hello\n", out, sizeof(out)), 0);
    CU_ASSERT_STRING_EQUAL(out, "hello\n");

    CU_ASSERT_EQUAL(fx_run(sh, NULL, out, sizeof(out)), 3);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "out\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "err\n"));

    CU_ASSERT_EQUAL(fx_run(missing, NULL, out, sizeof(out)), 127);

    unsetenv("FX_TEST_VAR");
    CU_ASSERT_EQUAL(fx_run_env(printenv, env, NULL, out, sizeof(out)), 0);
    CU_ASSERT_STRING_EQUAL(out, "set-in-child\n");
    CU_ASSERT_PTR_NULL(getenv("FX_TEST_VAR"));

    /* More than a pipe buffer each way: no deadlock, output truncated to the cap. */
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    memset(big, 'x', big_len);
    big[big_len] = '\0';
    CU_ASSERT_EQUAL(fx_run(cat, big, out, sizeof(out)), 0);
    CU_ASSERT_EQUAL(strlen(out), sizeof(out) - 1);
    free(big);
}

/* ---- fx_softhsm ------------------------------------------------------- */

static void test_token_new(void)
{
    fx_token *t = fx_token_new("cdx fx/1");
    char out[16384], pin[64], serial[64];
    struct stat st;
    char *uri;
    ssize_t n;
    int fd;

    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_STRING_EQUAL(fx_token_label(t), "cdx fx/1");
    CU_ASSERT_STRING_EQUAL(getenv("SOFTHSM2_CONF"), fx_token_conf(t));
    CU_ASSERT_EQUAL(strlen(fx_token_pin(t)), 16);
    CU_ASSERT_EQUAL(strspn(fx_token_pin(t), "0123456789abcdef"), 16);
    CU_ASSERT_EQUAL(strlen(fx_token_so_pin(t)), 16);
    CU_ASSERT_STRING_NOT_EQUAL(fx_token_pin(t), fx_token_so_pin(t));
    CU_ASSERT_EQUAL(strncmp(fx_token_conf(t), fx_token_dir(t), strlen(fx_token_dir(t))), 0);

    /* user.pin: exactly the PIN, no newline, 0600. */
    CU_ASSERT_EQUAL_FATAL(stat(fx_token_pin_file(t), &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
    fd = open(fx_token_pin_file(t), O_RDONLY);
    CU_ASSERT_FATAL(fd >= 0);
    n = read(fd, pin, sizeof(pin) - 1);
    close(fd);
    CU_ASSERT_EQUAL_FATAL(n, 16);
    pin[n] = '\0';
    CU_ASSERT_STRING_EQUAL(pin, fx_token_pin(t));

    CU_ASSERT_EQUAL(show_slots(t, out, sizeof(out)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "cdx fx/1"));
    CU_ASSERT_EQUAL(serial_of(out, "cdx fx/1", serial, sizeof(serial)), 0);
    CU_ASSERT(strlen(serial) > 0);

    uri = fx_token_uri(t);
    CU_ASSERT_PTR_NOT_NULL(uri);
    if (uri)
        CU_ASSERT_STRING_EQUAL(uri, "pkcs11:token=cdx%20fx%2F1");
    free(uri);
    fx_token_free(t);
    fx_token_free(NULL);
}

static void test_token_add_reinit_delete(void)
{
    fx_token *t = fx_token_new("fx-main");
    char out[16384], s1[64] = "", s2[64] = "", s3[64] = "", dir[4096];
    struct stat st;

    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    snprintf(dir, sizeof(dir), "%s", fx_token_dir(t));

    /* add: a second token in the same tokendir */
    CU_ASSERT_EQUAL(fx_token_add(t, "fx-second", NULL), 0);
    CU_ASSERT_EQUAL(show_slots(t, out, sizeof(out)), 0);
    CU_ASSERT_EQUAL(serial_of(out, "fx-main", s1, sizeof(s1)), 0);
    CU_ASSERT_EQUAL(serial_of(out, "fx-second", s2, sizeof(s2)), 0);
    CU_ASSERT_STRING_NOT_EQUAL(s1, s2);

    /* reinit: same label, new serial, the other token is gone too */
    CU_ASSERT_EQUAL(fx_token_reinit(t), 0);
    CU_ASSERT_EQUAL(show_slots(t, out, sizeof(out)), 0);
    CU_ASSERT_EQUAL(serial_of(out, "fx-main", s3, sizeof(s3)), 0);
    CU_ASSERT(strlen(s3) > 0);
    CU_ASSERT_STRING_NOT_EQUAL(s1, s3);
    CU_ASSERT_PTR_NULL(strstr(out, "fx-second"));

    /* delete: no token left, only the free slot */
    CU_ASSERT_EQUAL(fx_token_delete(t), 0);
    CU_ASSERT_EQUAL(show_slots(t, out, sizeof(out)), 0);
    CU_ASSERT_PTR_NULL(strstr(out, "fx-main"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "Initialized:      no"));

    fx_token_free(t);
    CU_ASSERT_EQUAL(stat(dir, &st), -1);
    CU_ASSERT_EQUAL(errno, ENOENT);
}

/* ---- fx_redis --------------------------------------------------------- */

static void check_basics(fx_redis *r)
{
    const char *get_aof[] = {"CONFIG", "GET", "appendonly"};
    const char *get_fsync[] = {"CONFIG", "GET", "appendfsync"};
    char out[512];

    CU_ASSERT_EQUAL(redis_cmd1(r, "PING", out, sizeof(out)), 7);
    CU_ASSERT_STRING_EQUAL(out, "+PONG\r\n");
    CU_ASSERT(fx_redis_command(r, get_aof, 3, out, sizeof(out)) > 0);
    CU_ASSERT_STRING_EQUAL(out, "*2\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n");
    CU_ASSERT(fx_redis_command(r, get_fsync, 3, out, sizeof(out)) > 0);
    CU_ASSERT_STRING_EQUAL(out, "*2\r\n$11\r\nappendfsync\r\n$6\r\nalways\r\n");
}

static void test_redis_tcp(void)
{
    fx_redis *r = fx_redis_start(NULL);
    char out[16];

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_STRING_EQUAL(fx_redis_host(r), "127.0.0.1");
    CU_ASSERT(fx_redis_port(r) > 0);
    CU_ASSERT_PTR_NULL(fx_redis_unix_path(r));
    CU_ASSERT(fx_redis_pid(r) > 0);
    check_basics(r);
    /* The return value is the full length even when out is too small. */
    {
        const char *info[] = {"INFO", "server"};
        int n = fx_redis_command(r, info, 2, out, sizeof(out));
        CU_ASSERT(n > (int)sizeof(out));
        CU_ASSERT_EQUAL(strlen(out), sizeof(out) - 1);
        CU_ASSERT_EQUAL(out[0], '$');
    }
    fx_redis_stop(r);
}

static void test_redis_unix(void)
{
    fx_redis_opts o = {.use_unix = 1};
    fx_redis *r = fx_redis_start(&o);
    struct stat st;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_EQUAL(fx_redis_port(r), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(fx_redis_unix_path(r));
    CU_ASSERT_EQUAL(stat(fx_redis_unix_path(r), &st), 0);
    CU_ASSERT(S_ISSOCK(st.st_mode));
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0700);
    check_basics(r);
    fx_redis_stop(r);
}

static void test_redis_kill9_restart(void)
{
    fx_redis *r = fx_redis_start(NULL);
    const char *set[] = {"SET", "fx:key", "survives"};
    const char *get[] = {"GET", "fx:key"};
    char out[256];
    pid_t old;
    int port;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    old = fx_redis_pid(r);
    port = fx_redis_port(r);
    CU_ASSERT(fx_redis_command(r, set, 3, out, sizeof(out)) > 0);
    CU_ASSERT_STRING_EQUAL(out, "+OK\r\n");

    CU_ASSERT_EQUAL_FATAL(fx_redis_kill9_restart(r), 0);
    CU_ASSERT(fx_redis_pid(r) > 0);
    CU_ASSERT_NOT_EQUAL(fx_redis_pid(r), old);
    CU_ASSERT_EQUAL(fx_redis_port(r), port);
    CU_ASSERT(fx_redis_command(r, get, 2, out, sizeof(out)) > 0);
    CU_ASSERT_STRING_EQUAL(out, "$8\r\nsurvives\r\n");
    fx_redis_stop(r);
}

static void test_redis_stop(void)
{
    fx_redis *r = fx_redis_start(NULL);
    char dir[4096];
    struct stat st;
    int port, fd;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    port = fx_redis_port(r);
    snprintf(dir, sizeof(dir), "%s", fx_redis_dir(r));
    fd = connect_tcp(port);
    CU_ASSERT(fd >= 0);
    if (fd >= 0)
        close(fd);

    fx_redis_stop(r);
    fd = connect_tcp(port);
    CU_ASSERT_EQUAL(fd, -1);
    CU_ASSERT_EQUAL(errno, ECONNREFUSED);
    if (fd >= 0)
        close(fd);
    CU_ASSERT_EQUAL(stat(dir, &st), -1);
    CU_ASSERT_EQUAL(errno, ENOENT);
    fx_redis_stop(NULL);
}

static void test_redis_acl(void)
{
    fx_redis_opts o = {
        .acl_user = "cdx", .acl_pass = "fx-acl-pass", .maxmemory_policy = "noeviction"};
    const char *whoami[] = {"ACL", "WHOAMI"};
    const char *policy[] = {"CONFIG", "GET", "maxmemory-policy"};
    static const char ping[] = "*1\r\n$4\r\nPING\r\n";
    fx_redis *r = fx_redis_start(&o);
    char out[256];
    ssize_t n;
    int fd;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    /* fx_redis_command authenticates as acl_user first. */
    CU_ASSERT(fx_redis_command(r, whoami, 2, out, sizeof(out)) > 0);
    CU_ASSERT_STRING_EQUAL(out, "$3\r\ncdx\r\n");
    CU_ASSERT(fx_redis_command(r, policy, 3, out, sizeof(out)) > 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "noeviction"));

    /* Without AUTH the default user is off. */
    fd = connect_tcp(fx_redis_port(r));
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL(send(fd, ping, sizeof(ping) - 1, MSG_NOSIGNAL), (ssize_t)sizeof(ping) - 1);
    n = recv(fd, out, sizeof(out) - 1, 0);
    close(fd);
    CU_ASSERT(n > 0);
    out[n > 0 ? n : 0] = '\0';
    CU_ASSERT_EQUAL(strncmp(out, "-NOAUTH", 7), 0);
    fx_redis_stop(r);
}

static void test_redis_requirepass(void)
{
    fx_redis_opts o = {.requirepass = "fx-pass", .appendonly = -1, .appendfsync = "everysec"};
    const char *get_aof[] = {"CONFIG", "GET", "appendonly"};
    fx_redis *r = fx_redis_start(&o);
    char out[256];

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_EQUAL(redis_cmd1(r, "PING", out, sizeof(out)), 7);
    CU_ASSERT_STRING_EQUAL(out, "+PONG\r\n");
    CU_ASSERT(fx_redis_command(r, get_aof, 3, out, sizeof(out)) > 0);
    CU_ASSERT_STRING_EQUAL(out, "*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n");
    fx_redis_stop(r);
}

/* ---- p11wrap ---------------------------------------------------------- */

static void test_p11wrap(void)
{
    const char *path = getenv("CDX_P11WRAP");
    fx_token *t = fx_token_new("fx-wrap");
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
    CK_FUNCTION_LIST_PTR fl = NULL;
    CK_C_GetFunctionList gfl;
    CK_SLOT_ID slots[16], slot = 0;
    CK_ULONG nslots = 16, siglen = 0;
    CK_SESSION_HANDLE sess = CK_INVALID_HANDLE;
    CK_BYTE rnd[16];
    char label[33];
    int found = 0;
    void *h;

    CU_ASSERT_PTR_NOT_NULL_FATAL(path);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    /* The out-of-process switch is read when the module loads. */
    char fault[4200];
    snprintf(fault, sizeof(fault), "%s/token-removed", fx_token_dir(t));
    setenv("P11WRAP_FAULT_FILE", fault, 1);
    h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(h);
    gfl = (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList");
    CU_ASSERT_PTR_NOT_NULL_FATAL(gfl);
    CU_ASSERT_EQUAL_FATAL(gfl(&fl), CKR_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(fl);
    /* Internal symbols stay hidden. */
    CU_ASSERT_PTR_NULL(dlsym(h, "load_real"));

    /* bind: a second dlopen sees the same instance (counters shared). */
    CU_ASSERT_EQUAL_FATAL(p11wrap_bind(NULL), 0);
    CU_ASSERT_EQUAL(p11wrap_count_fn("C_GetFunctionList"), 1);
    CU_ASSERT_EQUAL(p11wrap_last_init_flags_fn(), -2);
    p11wrap_reset_counts_fn();
    CU_ASSERT_EQUAL(p11wrap_count_fn("C_GetFunctionList"), 0);
    CU_ASSERT_EQUAL(p11wrap_count_fn("C_NoSuchFunction"), 0);
    CU_ASSERT_EQUAL(p11wrap_inject_fn("C_NoSuchFunction", CKR_DEVICE_ERROR, 1), -1);

    CU_ASSERT_EQUAL_FATAL(fl->C_Initialize(&args), CKR_OK);
    CU_ASSERT_EQUAL(p11wrap_last_init_flags_fn(), (long)CKF_OS_LOCKING_OK);
    CU_ASSERT_EQUAL(p11wrap_count_fn("C_Initialize"), 1);

    CU_ASSERT_EQUAL(fl->C_GetSlotList(CK_TRUE, slots, &nslots), CKR_OK);
    CU_ASSERT_EQUAL(p11wrap_count_fn("C_GetSlotList"), 1);
    for (CK_ULONG i = 0; i < nslots && !found; i++) {
        CK_TOKEN_INFO ti;
        if (fl->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
            continue;
        memcpy(label, ti.label, 32);
        label[32] = '\0';
        for (int k = 31; k >= 0 && label[k] == ' '; k--)
            label[k] = '\0';
        if (strcmp(label, "fx-wrap") == 0) {
            slot = slots[i];
            found = 1;
        }
    }
    CU_ASSERT_FATAL(found);

    CU_ASSERT_EQUAL_FATAL(
        fl->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &sess), CKR_OK);
    CU_ASSERT_EQUAL(p11wrap_count_fn("C_OpenSession"), 1);
    CU_ASSERT_EQUAL(
        fl->C_Login(sess, CKU_USER, (CK_UTF8CHAR_PTR)fx_token_pin(t), strlen(fx_token_pin(t))),
        CKR_OK);
    CU_ASSERT_EQUAL(p11wrap_count_fn("C_Login"), 1);

    /* Exactly `count` injected failures, then the real module answers again. */
    CU_ASSERT_EQUAL(p11wrap_inject_fn("C_GenerateRandom", CKR_DEVICE_ERROR, 2), 0);
    CU_ASSERT_EQUAL(fl->C_GenerateRandom(sess, rnd, sizeof(rnd)), CKR_DEVICE_ERROR);
    CU_ASSERT_EQUAL(fl->C_GenerateRandom(sess, rnd, sizeof(rnd)), CKR_DEVICE_ERROR);
    CU_ASSERT_EQUAL(fl->C_GenerateRandom(sess, rnd, sizeof(rnd)), CKR_OK);
    CU_ASSERT_EQUAL(p11wrap_count_fn("C_GenerateRandom"), 3);

    /* count -1: until cleared, and nothing reaches the module meanwhile. */
    CU_ASSERT_EQUAL(p11wrap_inject_fn("C_Sign", CKR_DEVICE_REMOVED, -1), 0);
    for (int i = 0; i < 5; i++)
        CU_ASSERT_EQUAL(fl->C_Sign(sess, rnd, sizeof(rnd), NULL, &siglen), CKR_DEVICE_REMOVED);
    p11wrap_clear_fn();
    CU_ASSERT_EQUAL(fl->C_Sign(sess, rnd, sizeof(rnd), NULL, &siglen),
                    CKR_OPERATION_NOT_INITIALIZED);
    CU_ASSERT_EQUAL(p11wrap_count_fn("C_Sign"), 6);

    /* While the fault file exists every call fails CKR_DEVICE_REMOVED; then the token is back. */
    FILE *ff = fopen(fault, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(ff);
    fclose(ff);
    CU_ASSERT_EQUAL(fl->C_GenerateRandom(sess, rnd, sizeof(rnd)), CKR_DEVICE_REMOVED);
    CU_ASSERT_EQUAL(fl->C_GetSlotList(CK_TRUE, slots, &nslots), CKR_DEVICE_REMOVED);
    CU_ASSERT_EQUAL(unlink(fault), 0);
    CU_ASSERT_EQUAL(fl->C_GenerateRandom(sess, rnd, sizeof(rnd)), CKR_OK);
    unsetenv("P11WRAP_FAULT_FILE");

    /* An injected C_Initialize failure still records the flags asked for. */
    CU_ASSERT_EQUAL(fl->C_Finalize(NULL), CKR_OK);
    CU_ASSERT_EQUAL(p11wrap_inject_fn("C_Initialize", CKR_GENERAL_ERROR, 1), 0);
    CU_ASSERT_EQUAL(fl->C_Initialize(NULL), CKR_GENERAL_ERROR);
    CU_ASSERT_EQUAL(p11wrap_last_init_flags_fn(), -1);
    CU_ASSERT_EQUAL(fl->C_Initialize(NULL), CKR_OK);
    CU_ASSERT_EQUAL(p11wrap_count_fn("C_Initialize"), 3);
    CU_ASSERT_EQUAL(fl->C_Finalize(NULL), CKR_OK);
    CU_ASSERT_EQUAL(p11wrap_count_fn("C_Finalize"), 2);
    fx_token_free(t);
    /* The module stays loaded: its counters may be read until exit. */
}

int main(void)
{
    static const fx_test tests[] = {
        {"tmpdir and rm_rf", test_tmpdir},
        {"run", test_run},
        {"token new", test_token_new},
        {"token add/reinit/delete", test_token_add_reinit_delete},
        {"redis tcp", test_redis_tcp},
        {"redis unix", test_redis_unix},
        {"redis kill9 restart", test_redis_kill9_restart},
        {"redis stop", test_redis_stop},
        {"redis acl", test_redis_acl},
        {"redis requirepass", test_redis_requirepass},
        {"p11wrap", test_p11wrap},
    };
    return fx_cunit_run1("fixtures", tests, FX_LEN(tests));
}
