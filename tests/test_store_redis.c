/*
 * test_store_redis.c - the Redis store backend (engine/eng_store_redis.c and
 * its eng_redis_* files) where only a real or a scripted server can show it:
 * bounded replies, durability checks, AUTH, kill -9 + restart, back-off, the
 * pool, retries, and hostile replies from a fake server. The store contract
 * every backend shares is test_store.c.
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
#include "cdx_time.h"
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

static char *TMP; /* scratch dir for password files */

/* Write the string content to TMP/name with `mode`; returns the malloc'ed path. */
static char *write_file(const char *name, const char *content, mode_t mode)
{
    return fx_write_file(TMP, name, content, strlen(content), mode);
}

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
    fx_store_put(s, "t:small", "ok", 2);
    /* 80 MB, written behind our back: the reply is cut off while it is being buffered. */
    const char *a1[] = {"SETRANGE", "t:huge", "80000000", "x"};
    CU_ASSERT_EQUAL(redis_cmd(r, a1, 4, out, sizeof(out)) > 0, 1);
    CU_ASSERT_STRING_EQUAL(out, ":80000001\r\n");
    CU_ASSERT_EQUAL(eng_store_mget(s, huge, 1, &v), CDX_ERR_RESOURCE_EXHAUSTED);
    CU_ASSERT_FALSE(v.found);
    fx_store_expect_val(s, "t:small", "ok", 2); /* works again, on a new connection */
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
        eng_durability dur;
        CU_ASSERT_EQUAL(eng_store_check(s, desc, sizeof(desc)), CDX_ERR_CONFIG);
        CU_ASSERT_PTR_NOT_NULL(strstr(desc, needle));
        /* Allowed, so serving, but degraded, and the reason names the setting and the fix. */
        CU_ASSERT_EQUAL(eng_store_durability(s, &dur), CDX_OK);
        CU_ASSERT_TRUE(dur.degraded);
        CU_ASSERT_TRUE(dur.refused);
        CU_ASSERT_PTR_NOT_NULL(strstr(dur.settings, needle));
        CU_ASSERT_PTR_NOT_NULL(strstr(dur.why, needle));
        CU_ASSERT_PTR_NOT_NULL(strstr(dur.why, why));
        fx_store_put(s, "t:works", "1", 1);
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
    fx_redis *r;
    eng_store *s;
    cdx_err rc;
    eng_durability dur;

    durability_case(&no_aof, "appendonly=no", "set appendonly yes");
    durability_case(&no_fsync, "appendfsync=no", "set appendfsync always");
    durability_case(&lru, "maxmemory-policy=allkeys-lru", "evicts ciphertexts");
    durability_case(&vlru, "maxmemory-policy=volatile-lru", "TTL");
    /* The fixture's default (appendonly yes, appendfsync always, noeviction) is not degraded. */
    r = fx_redis_start(NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    s = open_tcp(r, false, &rc);
    CU_ASSERT_EQUAL(rc, CDX_OK);
    CU_ASSERT_EQUAL(eng_store_durability(s, &dur), CDX_OK);
    CU_ASSERT_FALSE(dur.degraded);
    CU_ASSERT_FALSE(dur.refused);
    CU_ASSERT_STRING_EQUAL(dur.why, "");
    eng_store_free(s);
    fx_redis_stop(r);
}

/*
 * appendfsync everysec loses acknowledged writes on a redis-server crash, not only on an OS
 * crash (the reliability review's F1: Redis postpones the AOF write while a background fsync is
 * pending but still replies). It is refused like appendfsync no unless explicitly allowed, and
 * then the store is degraded with the loss window.
 */
static void test_durability_everysec(void)
{
    fx_redis_opts everysec = {.appendfsync = "everysec"};
    durability_case(&everysec, "appendfsync=everysec", "~2 s");
    /* The window also covers a crash of redis-server itself, and the fix is named. */
    fx_redis *r = fx_redis_start(&everysec);
    cdx_err rc;
    eng_store *s;
    eng_durability dur;
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    s = open_tcp(r, false, &rc);
    CU_ASSERT_EQUAL(rc, CDX_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "redis-server crash"));
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "set appendfsync always"));
    eng_store_free(s);
    s = open_tcp(r, true, &rc);
    CU_ASSERT_EQUAL_FATAL(rc, CDX_OK);
    CU_ASSERT_EQUAL(eng_store_durability(s, &dur), CDX_OK);
    CU_ASSERT_PTR_NOT_NULL(strstr(dur.why, "redis-server crash"));
    /* An operator's CONFIG SET after start is seen at the next check: always is not degraded. */
    const char *set[] = {"CONFIG", "SET", "appendfsync", "always"};
    char out[64];
    CU_ASSERT_EQUAL(redis_cmd(r, set, 4, out, sizeof(out)), 5);
    CU_ASSERT_EQUAL(eng_store_durability(s, &dur), CDX_OK);
    CU_ASSERT_FALSE(dur.degraded);
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
    fx_store_put(s, "t:limited", "ok", 2);
    fx_store_expect_val(s, "t:limited", "ok", 2);
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
    fx_store_put(s, "t:auth", "ok", 2);
    fx_store_expect_val(s, "t:auth", "ok", 2);
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

    long long deadline = cdx_mono_ms() + 15000;
    for (;;) {
        rc = eng_store_mget(s, keys, KILL_KEYS, v);
        if (rc == CDX_OK || cdx_mono_ms() > deadline)
            break;
        CU_ASSERT_EQUAL(rc, CDX_ERR_STORE_UNAVAILABLE);
        failures++;
        fx_pause_ms(20); /* polling with a deadline; back-off itself never sleeps */
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
    t0 = cdx_mono_ms();
    CU_ASSERT_EQUAL(eng_store_mget(s, k, 1, &v), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "back-off"));
    CU_ASSERT_TRUE(cdx_mono_ms() - t0 < 50);
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
    fx_store_put(s, "t:rot", "v", 1);
    CU_ASSERT_EQUAL(redis_cmd(r, rot, 5, out, sizeof(out)), 5);
    CU_ASSERT_TRUE(redis_cmd(r, kill, 4, out, sizeof(out)) > 0);
    const char *k[] = {"t:rot"};
    eng_val v;
    CU_ASSERT_EQUAL(eng_store_mget(s, k, 1, &v), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "refused AUTH"));
    CU_ASSERT_EQUAL(eng_store_mget(s, k, 1, &v), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "back-off"));
    free(write_file("pw-app", "pw-two\n", 0600));
    long long deadline = cdx_mono_ms() + 10000;
    for (;;) {
        rc = eng_store_mget(s, k, 1, &v);
        if (rc != CDX_ERR_STORE_UNAVAILABLE || cdx_mono_ms() > deadline)
            break;
        fast_fails++;
        fx_pause_ms(10);
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
    t0 = cdx_mono_ms();
    CU_ASSERT_EQUAL(eng_store_mget(s, k, 1, &v), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_TRUE(cdx_mono_ms() - t0 >= 250);
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
    fx_store_put(s, "t:r:same", "mine", 4); /* as if a lost first attempt had written it */
    fx_store_put(s, "t:r:other", "theirs", 6);
    CU_ASSERT_TRUE(redis_cmd(r, kill, 4, out, sizeof(out)) > 0);
    /* The retried SET NX reads back what it finds: our exact bytes count as created. */
    CU_ASSERT_EQUAL(eng_store_setnx(s, kv, 3, created), CDX_OK);
    CU_ASSERT_TRUE(created[0]);
    CU_ASSERT_TRUE(created[1]);
    CU_ASSERT_FALSE(created[2]);
    fx_store_expect_val(s, "t:r:other", "theirs", 6);
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
    fx_store_expect_missing(s, "{r}:head");
    eng_store_free(s);
    fx_redis_stop(r);
}

/* ---- a scripted fake Redis: replies no real server sends ---- */

#define FAKE_CONNS 16

typedef struct fake_conn {
    int fd;
    int gen; /* fake_redis.gen when accepted */
    char *in;
    size_t len, cap;
} fake_conn;

typedef struct fake_redis {
    int lfd, port;
    int wake[2]; /* written to stop the thread */
    pthread_t th;
    atomic_int accepts;
    atomic_int loading; /* every command answered -LOADING (a restarted server reading its AOF) */
    atomic_int gen;     /* bumped by a test: older connections are dropped ("restart") */
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
static int fake_answer(fake_redis *f, int fd, const char *argv[8], const size_t argl[8], int argc)
{
    char key[64] = "", out[96];

    if (atomic_load(&f->loading))
        return fake_send(fd, "-LOADING Redis is loading the dataset in memory\r\n", 49);

    if (argc >= 2)
        snprintf(key, sizeof(key), "%.*s", (int)(argl[1] < 63 ? argl[1] : 63), argv[1]);
    if (arg_is(argv[0], argl[0], "PING"))
        return fake_send(fd, "+PONG\r\n", 7);
    if (arg_is(argv[0], argl[0], "CONFIG") && argc == 3) {
        char name[32];
        snprintf(name, sizeof(name), "%.*s", (int)(argl[2] < 31 ? argl[2] : 31), argv[2]);
        const char *val = strcmp(name, "appendonly") == 0    ? "yes"
                          : strcmp(name, "appendfsync") == 0 ? "always"
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
                b[i - start] = fx_store_pat((size_t)i, 9);
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
                f->c[slot].gen = atomic_load(&f->gen);
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
                if (pr < 0 || c->gen != atomic_load(&f->gen) ||
                    fake_answer(f, c->fd, argv, argl, argc) < 0) {
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
        if (v[0].data[i] != fx_store_pat(i, 9)) {
            CU_FAIL("value 0 differs");
            break;
        }
    CU_ASSERT_FALSE(v[1].found);
    CU_ASSERT_TRUE(v[2].found && v[2].len == 60000 && v[2].data[0] == fx_store_pat(100, 9) &&
                   v[2].data[59999] == fx_store_pat(60099, 9));
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
    t0 = cdx_mono_ms();
    CU_ASSERT_EQUAL(fake_get(s, "huge", 0, 1000), CDX_ERR_RESOURCE_EXHAUSTED);
    CU_ASSERT_TRUE(cdx_mono_ms() - t0 < 750);
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
    t0 = cdx_mono_ms();
    CU_ASSERT_EQUAL(fake_get(s, "stall", 0, 10), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_TRUE(cdx_mono_ms() - t0 >= 1000);
    CU_ASSERT_EQUAL(fake_get(s, "v:10", 0, 10), CDX_OK);
    CU_ASSERT_EQUAL(atomic_load(&f->accepts), a + 1);

    eng_store_free(s);
    fake_stop(f);
}

/*
 * After Redis comes back from an outage long enough to grow the back-off,
 * calls are served again within 2 s (the back-off is capped at 1 s; it was
 * 5 s, and a 3.3 s outage then left the store failing for ~3 s more).
 */
static void test_backoff_capped_after_outage(void)
{
    fx_redis *r = fx_redis_start(NULL);
    eng_store *s;
    cdx_err rc;
    const char *k[] = {"t:cap"};
    eng_val v;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    s = open_tcp(r, false, &rc);
    CU_ASSERT_EQUAL_FATAL(rc, CDX_OK);
    fx_store_put(s, "t:cap", "x", 1);
    fx_redis_kill9(r);
    /* Callers keep asking through the outage, as a loaded daemon does. */
    long long t0 = cdx_mono_ms();
    while (cdx_mono_ms() - t0 < 3300) {
        CU_ASSERT_EQUAL(eng_store_mget(s, k, 1, &v), CDX_ERR_STORE_UNAVAILABLE);
        fx_pause_ms(20); /* the load's pace, not a synchronisation */
    }
    CU_ASSERT_EQUAL_FATAL(fx_redis_restart(r), 0);
    long long back = cdx_mono_ms(), deadline = back + 10000;
    while ((rc = eng_store_mget(s, k, 1, &v)) != CDX_OK && cdx_mono_ms() < deadline)
        fx_pause_ms(10); /* polling with a deadline */
    long long lag = cdx_mono_ms() - back;
    CU_ASSERT_EQUAL(rc, CDX_OK);
    if (rc == CDX_OK) {
        CU_ASSERT_TRUE(v.found && v.len == 1);
        eng_vals_free(&v, 1);
    }
    CU_ASSERT_TRUE(lag < 2000);
    fprintf(stderr, "(served again %lld ms after Redis was back) ", lag);
    eng_store_free(s);
    fx_redis_stop(r);
}

/* eng_store_retry_now (the daemon's SIGHUP) ends a back-off: the next call connects at once. */
static void test_retry_now_ends_backoff(void)
{
    fx_redis *r = fx_redis_start(NULL);
    eng_store *s;
    cdx_err rc;
    const char *k[] = {"t:now"};
    eng_val v;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    s = open_tcp(r, false, &rc);
    CU_ASSERT_EQUAL_FATAL(rc, CDX_OK);
    fx_redis_kill9(r);
    long long t0 = cdx_mono_ms();
    while (cdx_mono_ms() - t0 < 800) { /* back-off grows to 400-800 ms */
        CU_ASSERT_EQUAL(eng_store_mget(s, k, 1, &v), CDX_ERR_STORE_UNAVAILABLE);
        fx_pause_ms(20);
    }
    CU_ASSERT_EQUAL_FATAL(fx_redis_restart(r), 0);
    /* Still in back-off (it fails fast without touching Redis) ... */
    rc = eng_store_mget(s, k, 1, &v);
    if (rc != CDX_OK) {
        CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "back-off"));
    } else {
        eng_vals_free(&v, 1);
    }
    /* ... until told to retry now. */
    eng_store_retry_now(s);
    CU_ASSERT_EQUAL(eng_store_mget(s, k, 1, &v), CDX_OK);
    eng_vals_free(&v, 1);
    eng_store_retry_now(NULL); /* a no-op */
    eng_store_free(s);
    fx_redis_stop(r);
}

/*
 * A restarted Redis answers LOADING while it reads its data set: that is
 * "not yet", asked again every 100 ms, not a failure growing the back-off
 * (which left the store failing for a second or more after loading ended).
 */
static void test_loading_is_not_yet(void)
{
    fake_redis *f = fake_start();
    eng_redis_opts o = {.host = "127.0.0.1", .timeout_ms = 1500};
    eng_store *s = NULL;
    int loading_seen = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    o.port = f->port;
    CU_ASSERT_EQUAL_FATAL(eng_store_redis_new(&o, &s), CDX_OK);
    CU_ASSERT_EQUAL(fake_get(s, "v:10", 0, 10), CDX_OK);
    /* "Restart": the old connection drops, the server loads for 2 s. */
    atomic_store(&f->loading, 1);
    atomic_fetch_add(&f->gen, 1);
    int a0 = atomic_load(&f->accepts);
    long long t0 = cdx_mono_ms();
    while (cdx_mono_ms() - t0 < 2000) {
        CU_ASSERT_EQUAL(fake_get(s, "v:10", 0, 10), CDX_ERR_STORE_UNAVAILABLE);
        loading_seen += strstr(cdx_err_detail(), "loading") != NULL;
        fx_pause_ms(20); /* the load's pace, not a synchronisation */
    }
    int asked = atomic_load(&f->accepts) - a0;
    CU_ASSERT_TRUE(loading_seen > 0);
    CU_ASSERT_TRUE(asked >= 8 && asked <= 40); /* about every 100 ms: neither hammered nor idle */
    atomic_store(&f->loading, 0);
    long long back = cdx_mono_ms(), deadline = back + 10000;
    cdx_err rc;
    while ((rc = fake_get(s, "v:10", 0, 10)) != CDX_OK && cdx_mono_ms() < deadline)
        fx_pause_ms(5); /* polling with a deadline */
    long long lag = cdx_mono_ms() - back;
    CU_ASSERT_EQUAL(rc, CDX_OK);
    CU_ASSERT_TRUE(lag < 500);
    fprintf(stderr, "(%d connects while loading; served %lld ms after loading ended) ", asked, lag);
    eng_store_free(s);
    fake_stop(f);
}

/* The server stops loading at the on_loading call number stop_at (0: never). */
typedef struct loading_probe {
    fake_redis *f;
    int calls, stop_at;
    uint32_t last_waited_ms;
} loading_probe;

static void loading_cb(void *arg, uint32_t waited_ms)
{
    loading_probe *p = arg;
    CU_ASSERT_TRUE(waited_ms >= p->last_waited_ms); /* time only goes forward */
    p->last_waited_ms = waited_ms;
    if (++p->calls == p->stop_at)
        atomic_store(&p->f->loading, 0);
}

/*
 * A Redis still loading when the store is opened (restarted with the host)
 * is waited for up to start_wait_ms, telling the caller between attempts;
 * past that, or with 0, the open fails naming the condition. Before, the
 * daemon refused to start whatever the wait.
 */
static void test_loading_at_open(void)
{
    fake_redis *f = fake_start();
    loading_probe p = {.f = f, .stop_at = 4};
    eng_redis_opts o = {.host = "127.0.0.1",
                        .timeout_ms = 1500,
                        .start_wait_ms = 30000,
                        .on_loading = loading_cb,
                        .on_loading_arg = &p};
    eng_store *s = NULL;

    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    o.port = f->port;
    atomic_store(&f->loading, 1);
    CU_ASSERT_EQUAL(eng_store_redis_new(&o, &s), CDX_OK);
    CU_ASSERT_EQUAL(p.calls, 4); /* it came up at the first attempt after loading ended */
    CU_ASSERT_TRUE(p.last_waited_ms >= 100); /* paced (50 ms between checks), not spinning */
    if (s)
        CU_ASSERT_EQUAL(fake_get(s, "v:10", 0, 10), CDX_OK);
    eng_store_free(s);
    s = NULL;

    /* Still loading past the wait: a clear failure after about start_wait_ms. */
    atomic_store(&f->loading, 1);
    p = (loading_probe){.f = f};
    o.start_wait_ms = 400;
    long long t0 = cdx_mono_ms();
    CU_ASSERT_EQUAL(eng_store_redis_new(&o, &s), CDX_ERR_STORE_UNAVAILABLE);
    long long took = cdx_mono_ms() - t0;
    CU_ASSERT_PTR_NULL(s);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "still loading its data set after"));
    CU_ASSERT_TRUE(took >= 400 && took < 3000);
    CU_ASSERT_TRUE(p.calls >= 2);

    /* 0: no wait at all. */
    p = (loading_probe){.f = f};
    o.start_wait_ms = 0;
    CU_ASSERT_EQUAL(eng_store_redis_new(&o, &s), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "loading"));
    CU_ASSERT_EQUAL(p.calls, 0);
    fake_stop(f);
}

/* Nothing listening: no wait, whatever start_wait_ms says. */
static void test_unreachable_at_open_fails_at_once(void)
{
    fake_redis *f = fake_start();
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    int port = f->port;
    fake_stop(f); /* the port is closed now */
    eng_redis_opts o = {
        .host = "127.0.0.1", .port = port, .timeout_ms = 1500, .start_wait_ms = 30000};
    eng_store *s = NULL;
    long long t0 = cdx_mono_ms();
    CU_ASSERT_EQUAL(eng_store_redis_new(&o, &s), CDX_ERR_STORE_UNAVAILABLE);
    CU_ASSERT_TRUE(cdx_mono_ms() - t0 < 1500);
    CU_ASSERT_PTR_NULL(s);
}

/* ---- main ---- */

static const fx_test redis_tests[] = {
    {"reader refuses announced arrays before allocating", test_reader_bounds},
    {"80 MB and just-over-limit values refused while reading", test_huge_reply_refused},
    {"durability: appendonly no, appendfsync no, evicting policies", test_durability_refused},
    {"durability: appendfsync everysec refused, degraded when allowed", test_durability_everysec},
    {"CONFIG GET forbidden for the ACL user", test_config_get_forbidden},
    {"AUTH: wrong password, loose file modes, missing, requirepass", test_auth},
    {"kill -9 + restart: recovers, acknowledged data present", test_kill9_restart},
    {"back-off fails fast; nothing listening", test_backoff_fails_fast},
    {"back-off ends; rotated password file is re-read", test_backoff_recovers_after_rotation},
    {"pool exhaustion waits timeout_ms then fails", test_pool_exhaustion},
    {"dropped connections: retry with read-back; commit not retried", test_retry_after_drop},
    {"bulk reader: hostile replies from a fake server", test_bulk_reader_hostile},
    {"back-off capped: served within 2 s of Redis's return", test_backoff_capped_after_outage},
    {"retry_now (SIGHUP) ends a back-off", test_retry_now_ends_backoff},
    {"LOADING is 'not yet': asked every 100 ms, served at once after", test_loading_is_not_yet},
    {"LOADING at open: waited for up to start_wait_ms, then a clear failure", test_loading_at_open},
    {"unreachable at open: fails at once whatever start_wait_ms",
     test_unreachable_at_open_fails_at_once},
};

static int init_tmp(void)
{
    return 0;
}

int main(void)
{
    const fx_suite suites[] = {
        {.name = "store-redis-only",
         .init = init_tmp,
         .clean = NULL,
         .tests = redis_tests,
         .ntests = FX_LEN(redis_tests)},
    };
    return fx_store_main(suites, FX_LEN(suites), "store-redis", &TMP);
}
