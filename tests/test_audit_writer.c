/*
 * test_audit_writer: the audit trail's writer (appliance/app_audit.h) on a
 * real directory: records chained and verifiable, a restart continuing the
 * chain, a torn tail cut off and announced, a tampered last record refusing
 * the start, rotation chaining files, the file removed under a running
 * writer, the disk filling up (RLIMIT_FSIZE: writes fail with EFBIG as on a
 * full disk) in fail-closed and fail-open modes, group commit under
 * concurrent writers, checkpoints, and the value encoding that keeps a
 * principal from forging a field.
 */
#include <CUnit/Basic.h>
#include <dirent.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "app_audit.h"
#include "cdx_time.h"
#include "fx_cunit.h"
#include "fx_tmp.h"
#include "pol_audit.h"

static char *base;
static unsigned serial;
static const uint8_t KEY[32] = "0123456789abcdef0123456789abcdef";

static cdx_err mac(void *arg, const void *msg, size_t len, uint8_t out[POL_AUDIT_HASH_LEN])
{
    (void)arg;
    unsigned n = 0;
    return HMAC(EVP_sha256(), KEY, sizeof(KEY), msg, len, out, &n) && n == 32 ? CDX_OK
                                                                              : CDX_ERR_INTERNAL;
}

static void new_dir(char *out, size_t cap)
{
    snprintf(out, cap, "%s/trail-%u", base, ++serial);
}

static app_audit_config conf(const char *dir)
{
    return (app_audit_config){.dir = dir,
                              .sync = APP_AUDIT_SYNC_INTERVAL,
                              .interval_ms = 20,
                              .checkpoint_ms = 0,
                              .rotate_bytes = 0,
                              .mac = mac};
}

typedef struct walk {
    uint64_t records, first_seq;
    bool stopped;
    char kinds[64][32]; /* the first 64 records' kind= values */
    cdx_err err;
    char detail[400];
} walk;

/* Verify the files of dir in chain order (audit-*.log by name, then audit.log). */
static void verify_dir(const char *dir, walk *w)
{
    memset(w, 0, sizeof(*w));
    struct dirent **names = NULL;
    int n = scandir(dir, &names, NULL, alphasort);
    pol_audit_verifier v;
    pol_audit_verify_init(&v, NULL, mac, NULL);
    bool first = true;
    /* audit-*.log sort before audit.log ('-' < '.') */
    for (int i = 0; i < n; i++) {
        const char *nm = names[i]->d_name;
        if (strncmp(nm, "audit", 5) || !strstr(nm, ".log"))
            continue;
        char path[4400], line[POL_AUDIT_LINE_MAX + 2];
        snprintf(path, sizeof(path), "%s/%s", dir, nm);
        FILE *f = fopen(path, "r");
        while (!w->err && f && fgets(line, sizeof(line), f)) {
            if (first) {
                pol_audit_pos before;
                w->err = pol_audit_line_head(line, strlen(line), &before);
                v.pos = before;
                w->first_seq = before.seq + 1;
                first = false;
            }
            if (!w->err)
                w->err = pol_audit_verify_line(&v, line, strlen(line));
            const char *k = strstr(line, " kind=");
            if (!w->err && k && v.records <= 64)
                sscanf(k + 6, "%31[a-z_]", w->kinds[v.records - 1]);
        }
        if (w->err)
            snprintf(w->detail, sizeof(w->detail), "%s", cdx_err_detail());
        if (f)
            fclose(f);
    }
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    w->records = v.records;
    w->stopped = v.stopped;
}

static int count_kind(const walk *w, const char *kind)
{
    int c = 0;
    for (uint64_t i = 0; i < w->records && i < 64; i++)
        c += !strcmp(w->kinds[i], kind);
    return c;
}

static void test_chain_and_restart(void)
{
    char dir[4200];
    new_dir(dir, sizeof(dir));
    app_audit_config c = conf(dir);
    app_audit *a = NULL;
    CU_ASSERT_EQUAL_FATAL(app_audit_open(&c, "kind=start run=1", &a), CDX_OK);
    CU_ASSERT_EQUAL(app_audit_write(a, "kind=request op=query code=OK"), CDX_OK);
    CU_ASSERT_EQUAL(app_audit_write(a, "kind=request op=get code=PERMISSION_DENIED"), CDX_OK);
    /* a body outside the alphabet is a bug: refused, nothing written */
    CU_ASSERT_EQUAL(app_audit_write(a, "kind=request op=x\nkind=forged"), CDX_ERR_INVALID_ARGUMENT);
    app_audit_close(a, "kind=stop clean=yes");
    walk w;
    verify_dir(dir, &w);
    CU_ASSERT_EQUAL(w.err, CDX_OK);
    CU_ASSERT_EQUAL(w.records, 4);
    CU_ASSERT_TRUE(w.stopped);
    CU_ASSERT_STRING_EQUAL(w.kinds[0], "start");
    /* a restart continues the same chain */
    CU_ASSERT_EQUAL_FATAL(app_audit_open(&c, "kind=start run=2", &a), CDX_OK);
    CU_ASSERT_EQUAL(app_audit_write(a, "kind=request op=upsert code=OK"), CDX_OK);
    app_audit_stats st;
    app_audit_stats_get(a, &st);
    CU_ASSERT_EQUAL(st.last_seq, 6);
    CU_ASSERT_EQUAL(st.state, APP_AUDIT_OK);
    app_audit_close(a, "kind=stop clean=yes");
    verify_dir(dir, &w);
    CU_ASSERT_EQUAL(w.err, CDX_OK);
    CU_ASSERT_EQUAL(w.records, 7);
    CU_ASSERT_EQUAL(w.first_seq, 1);
    CU_ASSERT_EQUAL(count_kind(&w, "start"), 2);
}

static void append_raw(const char *path, const char *s)
{
    FILE *f = fopen(path, "a");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(s, f);
    fclose(f);
}

static void test_torn_tail_and_tampered_head(void)
{
    char dir[4200], path[4300];
    new_dir(dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/audit.log", dir);
    app_audit_config c = conf(dir);
    app_audit *a = NULL;
    CU_ASSERT_EQUAL_FATAL(app_audit_open(&c, "kind=start", &a), CDX_OK);
    CU_ASSERT_EQUAL(app_audit_write(a, "kind=request op=query code=OK"), CDX_OK);
    app_audit_close(a, NULL); /* a crash: no stop record */
    /* a crash mid-write leaves half a record */
    append_raw(path, "cdxa1 3 1800000000000 00ff");
    CU_ASSERT_EQUAL_FATAL(app_audit_open(&c, "kind=start", &a), CDX_OK);
    app_audit_close(a, "kind=stop");
    walk w;
    verify_dir(dir, &w);
    CU_ASSERT_EQUAL(w.err, CDX_OK);
    CU_ASSERT_EQUAL(w.records, 5);
    CU_ASSERT_STRING_EQUAL(w.kinds[2], "torn_tail");
    /* an edited last record (its body: "kind=stop" -> "kind=stoq"): the writer will not
     * append to it */
    FILE *f = fopen(path, "r+");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    char buf[8192];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    char *at = strstr(buf, "kind=stop");
    CU_ASSERT_PTR_NOT_NULL_FATAL(at);
    fseek(f, (long)(at - buf) + 8, SEEK_SET);
    fputc('q', f);
    fclose(f);
    CU_ASSERT_EQUAL(app_audit_open(&c, "kind=start", &a), CDX_ERR_INTEGRITY);
    CU_ASSERT_PTR_NULL(a);
    CU_ASSERT_TRUE(fx_detail_has("does not verify"));
}

static void test_rotation(void)
{
    char dir[4200];
    new_dir(dir, sizeof(dir));
    app_audit_config c = conf(dir);
    c.rotate_bytes = 64 * 1024;
    app_audit *a = NULL;
    CU_ASSERT_EQUAL_FATAL(app_audit_open(&c, "kind=start", &a), CDX_OK);
    char body[400];
    for (int i = 0; i < 1000; i++) {
        snprintf(body, sizeof(body),
                 "kind=request op=query principal=uri:spiffe://test/app-%d index_id=%032d "
                 "items=10 code=OK pad=%0200d",
                 i, i, i);
        CU_ASSERT_EQUAL_FATAL(app_audit_write(a, body), CDX_OK);
    }
    app_audit_close(a, "kind=stop");
    int rotated = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        rotated += !strncmp(e->d_name, "audit-", 6);
    closedir(d);
    CU_ASSERT_TRUE(rotated >= 4); /* ~350 KB in 64 KiB files */
    walk w;
    verify_dir(dir, &w);
    CU_ASSERT_EQUAL(w.err, CDX_OK);
    CU_ASSERT_EQUAL(w.records, 1002);
    CU_ASSERT_TRUE(w.stopped);
    /* deleting a middle file breaks the chain, named */
    d = opendir(dir);
    char victim[4600] = "";
    while ((e = readdir(d)) != NULL)
        if (!strncmp(e->d_name, "audit-", 6) && strcmp(e->d_name, "audit-00000000000000000001.log"))
            snprintf(victim, sizeof(victim), "%s/%s", dir, e->d_name);
    closedir(d);
    CU_ASSERT_EQUAL_FATAL(unlink(victim), 0);
    verify_dir(dir, &w);
    CU_ASSERT_EQUAL(w.err, CDX_ERR_INTEGRITY);
    CU_ASSERT_PTR_NOT_NULL(strstr(w.detail, "deleted, inserted or reordered"));
}

/* A crash just after a rotation, mid-way through the new file's first record: the chain
 * goes on from the rotated file. */
static void test_torn_after_rotation(void)
{
    char dir[4200], path[4300];
    new_dir(dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/audit.log", dir);
    app_audit_config c = conf(dir);
    c.rotate_bytes = 64 * 1024;
    app_audit *a = NULL;
    CU_ASSERT_EQUAL_FATAL(app_audit_open(&c, "kind=start", &a), CDX_OK);
    char body[400];
    app_audit_stats st = {0};
    for (int i = 0; i < 2000 && st.last_seq < 2; i++) {
        snprintf(body, sizeof(body), "kind=request op=get i=%d pad=%0300d", i, i);
        CU_ASSERT_EQUAL_FATAL(app_audit_write(a, body), CDX_OK);
        struct stat fs;
        if (stat(path, &fs) == 0 && fs.st_size == 0) /* just rotated: audit.log is new */
            break;
    }
    app_audit_close(a, NULL);
    struct stat fs;
    CU_ASSERT_EQUAL_FATAL(stat(path, &fs), 0);
    CU_ASSERT_EQUAL_FATAL(fs.st_size, 0);
    append_raw(path, "cdxa1 99 17"); /* the crash */
    CU_ASSERT_EQUAL_FATAL(app_audit_open(&c, "kind=start", &a), CDX_OK);
    app_audit_close(a, "kind=stop");
    walk w;
    verify_dir(dir, &w);
    CU_ASSERT_EQUAL(w.err, CDX_OK);
    CU_ASSERT_EQUAL(w.first_seq, 1);
    CU_ASSERT_TRUE(w.stopped);
}

/* Wait (bounded) until the trail's state is `want`. */
static bool wait_state(app_audit *a, app_audit_state want, int ms)
{
    for (int64_t end = cdx_mono_ms() + ms; cdx_mono_ms() < end;) {
        app_audit_stats st;
        app_audit_stats_get(a, &st);
        if (st.state == want)
            return true;
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return false;
}

static void test_file_removed(void)
{
    char dir[4200], path[4300];
    new_dir(dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/audit.log", dir);
    app_audit_config c = conf(dir);
    app_audit *a = NULL;
    CU_ASSERT_EQUAL_FATAL(app_audit_open(&c, "kind=start", &a), CDX_OK);
    CU_ASSERT_EQUAL(app_audit_write(a, "kind=request op=query code=OK"), CDX_OK);
    /* the file goes: the timer starts a new one, whose first record says why */
    CU_ASSERT_EQUAL_FATAL(unlink(path), 0);
    struct stat st;
    bool back = false;
    for (int64_t end = cdx_mono_ms() + 5000; !back && cdx_mono_ms() < end;) {
        back = stat(path, &st) == 0 && st.st_size > 0;
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL);
    }
    CU_ASSERT_TRUE_FATAL(back);
    /* the directory goes: fail closed until it is back */
    CU_ASSERT_EQUAL(fx_rm_rf(dir), 0);
    CU_ASSERT_TRUE(wait_state(a, APP_AUDIT_FAILED, 5000));
    CU_ASSERT_EQUAL(app_audit_check(a), CDX_ERR_AUDIT_UNAVAILABLE);
    CU_ASSERT_EQUAL(app_audit_write(a, "kind=request op=get code=OK"), CDX_ERR_AUDIT_UNAVAILABLE);
    CU_ASSERT_EQUAL_FATAL(mkdir(dir, 0700), 0);
    CU_ASSERT_TRUE(wait_state(a, APP_AUDIT_OK, 5000));
    CU_ASSERT_EQUAL(app_audit_check(a), CDX_OK);
    CU_ASSERT_EQUAL(app_audit_write(a, "kind=request op=get code=OK"), CDX_OK);
    app_audit_close(a, "kind=stop");
    walk w;
    verify_dir(dir, &w);
    CU_ASSERT_EQUAL(w.err, CDX_OK);
    CU_ASSERT_TRUE(w.first_seq > 3); /* the new file continues the chain */
    CU_ASSERT_TRUE(w.stopped);
    CU_ASSERT_EQUAL(count_kind(&w, "resume"), 1);
}

/* Fill the "disk": RLIMIT_FSIZE makes writes past the current size fail (EFBIG). */
static void disk_full(const char *path, bool full)
{
    struct stat st;
    CU_ASSERT_EQUAL_FATAL(stat(path, &st), 0);
    struct rlimit rl;
    getrlimit(RLIMIT_FSIZE, &rl);
    rl.rlim_cur = full ? (rlim_t)st.st_size + 10 : rl.rlim_max;
    CU_ASSERT_EQUAL_FATAL(setrlimit(RLIMIT_FSIZE, &rl), 0);
}

static void test_disk_full(bool fail_open)
{
    char dir[4200], path[4300];
    new_dir(dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/audit.log", dir);
    app_audit_config c = conf(dir);
    c.interval_ms = 60000; /* no timer retry during the test: the writes themselves retry */
    c.fail_open = fail_open;
    app_audit *a = NULL;
    CU_ASSERT_EQUAL_FATAL(app_audit_open(&c, "kind=start", &a), CDX_OK);
    CU_ASSERT_EQUAL(app_audit_write(a, "kind=request op=query code=OK"), CDX_OK);
    disk_full(path, true);
    cdx_err e1 = app_audit_write(a, "kind=request op=query code=OK");
    cdx_err e2 = app_audit_write(a, "kind=request op=get code=OK");
    cdx_err chk = app_audit_check(a);
    app_audit_stats st;
    app_audit_stats_get(a, &st);
    disk_full(path, false);
    if (fail_open) {
        CU_ASSERT_EQUAL(e1, CDX_OK);
        CU_ASSERT_EQUAL(e2, CDX_OK);
        CU_ASSERT_EQUAL(chk, CDX_OK);
        CU_ASSERT_EQUAL(st.state, APP_AUDIT_FAILED_OPEN);
        CU_ASSERT_EQUAL(st.lost, 2);
    } else {
        CU_ASSERT_EQUAL(e1, CDX_ERR_AUDIT_UNAVAILABLE);
        CU_ASSERT_EQUAL(e2, CDX_ERR_AUDIT_UNAVAILABLE);
        CU_ASSERT_EQUAL(chk, CDX_ERR_AUDIT_UNAVAILABLE);
        CU_ASSERT_EQUAL(st.state, APP_AUDIT_FAILED);
        CU_ASSERT_PTR_NOT_NULL(strstr(st.error, "write audit.log"));
    }
    /* space again: the next write succeeds and the trail is ok */
    CU_ASSERT_EQUAL(app_audit_write(a, "kind=request op=upsert code=OK"), CDX_OK);
    CU_ASSERT_EQUAL(app_audit_check(a), CDX_OK);
    app_audit_close(a, "kind=stop");
    walk w;
    verify_dir(dir, &w);
    CU_ASSERT_EQUAL(w.err, CDX_OK);               /* no torn record was left behind */
    CU_ASSERT_EQUAL(count_kind(&w, "resume"), 1); /* the gap, announced in the chain */
    CU_ASSERT_EQUAL(w.records, 5);
    char text[8192] = "";
    FILE *f = fopen(path, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    text[fread(text, 1, sizeof(text) - 1, f)] = '\0';
    fclose(f);
    CU_ASSERT_PTR_NOT_NULL(
        strstr(text, fail_open ? " lost=2 error=write%20audit.log" : " lost=0 "));
}

static void test_disk_full_closed(void)
{
    test_disk_full(false);
}

static void test_disk_full_open(void)
{
    test_disk_full(true);
}

struct writer_arg {
    app_audit *a;
    int id, n, errors;
};

static void *writer(void *p)
{
    struct writer_arg *w = p;
    char body[128];
    for (int i = 0; i < w->n; i++) {
        snprintf(body, sizeof(body), "kind=request op=upsert writer=%d i=%d code=OK", w->id, i);
        w->errors += app_audit_write(w->a, body) != CDX_OK;
    }
    return NULL;
}

static void test_group_commit(void)
{
    char dir[4200];
    new_dir(dir, sizeof(dir));
    app_audit_config c = conf(dir);
    c.sync = APP_AUDIT_SYNC_ALWAYS;
    app_audit *a = NULL;
    CU_ASSERT_EQUAL_FATAL(app_audit_open(&c, "kind=start", &a), CDX_OK);
    pthread_t t[8];
    struct writer_arg wa[8];
    for (int i = 0; i < 8; i++) {
        wa[i] = (struct writer_arg){.a = a, .id = i, .n = 200};
        CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i], NULL, writer, &wa[i]), 0);
    }
    int errors = 0;
    for (int i = 0; i < 8; i++) {
        pthread_join(t[i], NULL);
        errors += wa[i].errors;
    }
    app_audit_stats st;
    app_audit_stats_get(a, &st);
    app_audit_close(a, "kind=stop");
    CU_ASSERT_EQUAL(errors, 0);
    CU_ASSERT_EQUAL(st.records, 1601);
    /* every write waited for a sync that covered it, and syncs were shared */
    CU_ASSERT_TRUE(st.syncs >= 1 && st.syncs <= 1601);
    walk w;
    verify_dir(dir, &w);
    CU_ASSERT_EQUAL(w.err, CDX_OK);
    CU_ASSERT_EQUAL(w.records, 1602);
}

static void test_checkpoints(void)
{
    char dir[4200];
    new_dir(dir, sizeof(dir));
    app_audit_config c = conf(dir);
    c.checkpoint_ms = 20;
    app_audit *a = NULL;
    CU_ASSERT_EQUAL_FATAL(app_audit_open(&c, "kind=start", &a), CDX_OK);
    bool seen = false;
    for (int64_t end = cdx_mono_ms() + 5000; !seen && cdx_mono_ms() < end;) {
        app_audit_stats st;
        app_audit_stats_get(a, &st);
        seen = st.records >= 3; /* start + two checkpoints, written while idle */
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL);
    }
    CU_ASSERT_TRUE(seen);
    app_audit_close(a, NULL); /* no clean stop: the tail is judged by checkpoints */
    walk w;
    verify_dir(dir, &w);
    CU_ASSERT_EQUAL(w.err, CDX_OK);
    CU_ASSERT_TRUE(count_kind(&w, "checkpoint") >= 2);
    CU_ASSERT_FALSE(w.stopped);
}

static void test_value_encoding(void)
{
    char out[64];
    app_audit_value(out, sizeof(out), "uri:spiffe://x/app a=b mac=1%\"\\\n");
    CU_ASSERT_STRING_EQUAL(out, "uri:spiffe://x/app%20a%3Db%20mac%3D1%25%22%5C%0A");
    app_audit_value(out, sizeof(out), "");
    CU_ASSERT_STRING_EQUAL(out, "-");
    char small[16];
    app_audit_value(small, sizeof(small), "a b c d e f g h i j");
    CU_ASSERT_TRUE(strlen(small) < sizeof(small));
    CU_ASSERT_PTR_NOT_NULL(strstr(small, "..."));
    CU_ASSERT_PTR_NULL(strchr(small, ' '));
}

static void test_bad_config(void)
{
    app_audit_config c = conf("relative/dir");
    app_audit *a = NULL;
    CU_ASSERT_EQUAL(app_audit_open(&c, "kind=start", &a), CDX_ERR_CONFIG);
    char dir[4200];
    snprintf(dir, sizeof(dir), "%s/no/such/parent", base);
    c = conf(dir);
    CU_ASSERT_EQUAL(app_audit_open(&c, "kind=start", &a), CDX_ERR_AUDIT_UNAVAILABLE);
    CU_ASSERT_PTR_NULL(a);
    app_audit_close(NULL, NULL); /* no-op */
    CU_ASSERT_EQUAL(app_audit_check(NULL), CDX_OK);
}

static int suite_init(void)
{
    signal(SIGXFSZ, SIG_IGN); /* a write past RLIMIT_FSIZE fails with EFBIG instead */
    base = fx_tmpdir_new("audit-writer");
    return base ? 0 : -1;
}

static int suite_clean(void)
{
    int rc = fx_rm_rf(base);
    free(base);
    return rc;
}

int main(void)
{
    static const fx_test tests[] = {
        {"records chain; a restart continues the chain", test_chain_and_restart},
        {"a torn tail is cut and announced; an edited head refuses the start",
         test_torn_tail_and_tampered_head},
        {"rotation chains files; a deleted file is named", test_rotation},
        {"a crash just after a rotation: the chain goes on", test_torn_after_rotation},
        {"file and directory removed under the writer", test_file_removed},
        {"disk full, fail closed", test_disk_full_closed},
        {"disk full, fail open: lost records announced", test_disk_full_open},
        {"group commit: 8 writers, sync always", test_group_commit},
        {"checkpoints while idle", test_checkpoints},
        {"values cannot forge fields", test_value_encoding},
        {"bad settings", test_bad_config},
    };
    static const fx_suite suite = {.name = "audit_writer",
                                   .init = suite_init,
                                   .clean = suite_clean,
                                   .tests = tests,
                                   .ntests = FX_LEN(tests)};
    return fx_cunit_run(&suite, 1);
}
