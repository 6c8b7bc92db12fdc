/*
 * test_rollback: a lost tail at the appliance level (the reliability review's F2). Redis
 * serves an older head of one index (as after a redis-server crash with a weak appendfsync);
 * then requests on it get ROLLBACK_DETECTED naming the recovery command, list_indexes still
 * lists every index with the broken one's status, /healthz and the wire health say degraded
 * with one index in rollback, and the admin accept_rollback operation, through the wire and
 * through the `cipherdex` CLI, brings the index back without a restart. Non-admins are refused.
 *
 * The head is rolled back inside Redis with COPY (no bytes leave Redis): COPY head aside,
 * commit more, COPY it back with REPLACE.
 */
#include <CUnit/Basic.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "app_client.h"
#include "fx_cunit.h"
#include "fx_daemon.h"
#include "fx_pki.h"
#include "fx_proc.h"
#include "fx_redis.h"
#include "fx_softhsm.h"
#include "fx_client.h"
#include "fx_stack.h"
#include "fx_tmp.h"

#define DIM 4

static fx_stack S = FX_STACK_INIT;
static const fx_cert *user;
static char cli_bin[4096];
static uint16_t http_port;

static int daemon_start(void)
{
    if (fx_stack_start(&S))
        return -1;
    const char *colon = strrchr(S.metrics, ':');
    http_port = colon ? (uint16_t)atoi(colon + 1) : 0;
    return http_port ? 0 : -1;
}

static app_client *client_as(const fx_cert *c)
{
    return fx_stack_client(&S, c);
}

static cdx_err create_index(app_client *c, const char *name, uint8_t id[16])
{
    const app_index_spec spec = {
        .name = name, .dimension = DIM, .metric = "euclidean", .index_type = "ivfflat"};
    wire_response *w = NULL;
    cdx_err e = app_client_create_index(c, &spec, &w);
    if (!e)
        memcpy(id, wire_response_msg(w)->create_index->index->id.data, 16);
    else
        fprintf(stderr, "create_index %s: %s: %s\n", name, cdx_err_name(e), cdx_err_detail());
    wire_response_free(w);
    return e;
}

/* Upsert `n` items "<prefix><i>"; the commit version, or 0 on error. */
static uint64_t upsert(app_client *c, const char *index, const char *prefix, int n)
{
    app_item items[8];
    float v[8][DIM];
    char ids[8][32];
    for (int i = 0; i < n && i < 8; i++) {
        snprintf(ids[i], sizeof(ids[i]), "%s%d", prefix, i);
        for (int k = 0; k < DIM; k++)
            v[i][k] = (float)(i * DIM + k);
        items[i] = (app_item){.id = ids[i], .vector = v[i], .dim = DIM};
    }
    wire_response *w = NULL;
    uint64_t ver = 0;
    if (app_client_upsert(c, index, items, (size_t)(n < 8 ? n : 8), &w) == CDX_OK)
        ver = wire_response_msg(w)->upsert->version;
    wire_response_free(w);
    return ver;
}

/* Get one id; *version (may be NULL) the version served; returns the status, or -1 when the
 * call succeeded but the id was not found. */
static int get1(app_client *c, const char *index, const char *id, uint64_t *version)
{
    wire_response *w = NULL;
    const char *ids[1] = {id};
    cdx_err e = app_client_get(c, index, ids, 1, 0, 0, &w);
    int rc = (int)e;
    if (e && getenv("CDX_TEST_VERBOSE"))
        fprintf(stderr, "\n  get %s %s: %s: %s\n", index, id, cdx_err_name(e), cdx_err_detail());
    if (!e) {
        const Cipherdex__V1__GetResponse *g = wire_response_msg(w)->get;
        if (version)
            *version = g->version;
        if (g->n_found != 1 || !g->found[0])
            rc = -1;
    }
    wire_response_free(w);
    return rc;
}

static void head_key(const uint8_t id[16], char *k, size_t cap)
{
    char h[33];
    for (int i = 0; i < 16; i++)
        snprintf(h + 2 * i, 3, "%02x", id[i]);
    snprintf(k, cap, "cdx:{%s}:head", h);
}

/* COPY src dst [REPLACE] inside Redis; 0 when Redis answered :1. */
static int redis_copy(const char *src, const char *dst)
{
    const char *argv[4] = {"COPY", src, dst, "REPLACE"};
    char out[32];
    int n = fx_redis_command(S.redis, argv, 4, out, sizeof(out));
    return n > 0 && !strcmp(out, ":1\r\n") ? 0 : -1;
}

/* The keys matching `pattern` (KEYS; a test store holds few), as a NULL-terminated array. */
static char **redis_keys(const char *pattern)
{
    const char *argv[2] = {"KEYS", pattern};
    static char out[1 << 20];
    int n = fx_redis_command(S.redis, argv, 2, out, sizeof(out));
    if (n <= 0 || out[0] != '*')
        return NULL;
    long count = strtol(out + 1, NULL, 10);
    char **keys = calloc((size_t)count + 1, sizeof(char *));
    const char *p = strchr(out, '\n');
    for (long i = 0; keys && p && i < count; i++) {
        long len = strtol(p + 2, NULL, 10); /* "$len" */
        const char *k = strchr(p + 1, '\n');
        if (!k || len < 0)
            break;
        keys[i] = strndup(k + 1, (size_t)len);
        p = k + 1 + len + 1; /* past "\r\n" */
    }
    return keys;
}

static void free_keys(char **keys)
{
    for (size_t i = 0; keys && keys[i]; i++)
        free(keys[i]);
    free(keys);
}

/*
 * Make index `id` lose its last commit, as a store that lost the tail of its writes does: every
 * record of the index is saved, one more commit is made, then the index's records are put back
 * as they were (the commit's new records gone, the ones it rewrote restored).
 */
static uint64_t lose_tail(app_client *c, const char *index, const uint8_t id[16], uint64_t *lost)
{
    char hk[96], pattern[96];
    head_key(id, hk, sizeof(hk));
    snprintf(pattern, sizeof(pattern), "%.*s*", (int)(strlen(hk) - 4), hk); /* cdx:{id}:* */
    uint64_t kept = 0;
    CU_ASSERT_EQUAL_FATAL(get1(c, index, "a0", &kept), CDX_OK);
    char **before = redis_keys(pattern);
    CU_ASSERT_PTR_NOT_NULL_FATAL(before);
    char saved[512];
    for (size_t i = 0; before[i]; i++) {
        snprintf(saved, sizeof(saved), "test:saved:%s", before[i]);
        CU_ASSERT_EQUAL_FATAL(redis_copy(before[i], saved), 0);
    }
    *lost = upsert(c, index, "lost", 2);
    CU_ASSERT_FATAL(*lost > kept);
    char **after = redis_keys(pattern);
    CU_ASSERT_PTR_NOT_NULL_FATAL(after);
    for (size_t i = 0; after[i]; i++) {
        const char *argv[2] = {"DEL", after[i]};
        char out[32];
        CU_ASSERT_FATAL(fx_redis_command(S.redis, argv, 2, out, sizeof(out)) > 0);
    }
    for (size_t i = 0; before[i]; i++) {
        snprintf(saved, sizeof(saved), "test:saved:%s", before[i]);
        CU_ASSERT_EQUAL_FATAL(redis_copy(saved, before[i]), 0);
    }
    free_keys(before);
    free_keys(after);
    return kept;
}

static const Cipherdex__V1__IndexInfo *find_info(const Cipherdex__V1__ListIndexesResponse *lr,
                                                 const char *name)
{
    for (size_t i = 0; i < lr->n_indexes; i++)
        if (lr->indexes[i]->name.len == strlen(name) &&
            !memcmp(lr->indexes[i]->name.data, name, strlen(name)))
            return lr->indexes[i];
    return NULL;
}

static bool text_is(ProtobufCBinaryData b, const char *s)
{
    return b.len == strlen(s) && !memcmp(b.data, s, b.len);
}

static char *healthz(void)
{
    return fx_http(AF_INET, http_port, "GET /healthz HTTP/1.0\r\n\r\n");
}

/* Run the cipherdex CLI as `c` with args; its stdout+stderr into out; the exit status. */
static int run_cli(const fx_cert *c, const char *args, char *out, size_t cap)
{
    char cmd[16384];
    snprintf(cmd, sizeof(cmd), "'%s' --addr %s --ca '%s' --cert '%s' --key '%s' %s 2>&1", cli_bin,
             S.addr, fx_pki_ca(S.pki, 0), c->cert, c->key, args);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_lost_tail_recovered_online(void)
{
    app_client *a = client_as(S.admin), *u = client_as(user);
    CU_ASSERT_FATAL(a && u);
    uint8_t id_a[16], id_b[16];
    CU_ASSERT_EQUAL_FATAL(create_index(a, "rb-a", id_a), CDX_OK);
    CU_ASSERT_EQUAL_FATAL(create_index(a, "rb-b", id_b), CDX_OK);
    CU_ASSERT_FATAL(upsert(u, "rb-a", "a", 4) > 0);
    CU_ASSERT_FATAL(upsert(u, "rb-b", "b", 4) > 0);
    char *r = healthz();
    CU_ASSERT_PTR_NOT_NULL(strstr(r, "\"status\":\"ok\""));
    free(r);
    pid_t pid = S.d.pid;

    uint64_t lost = 0, kept = lose_tail(u, "rb-a", id_a, &lost);

    /* Every request on the index: 101, naming the store's version and the exact command. */
    char want[160];
    snprintf(want, sizeof(want), "cipherdex index accept-rollback rb-a --version %" PRIu64, kept);
    CU_ASSERT_EQUAL(get1(u, "rb-a", "a0", NULL), CDX_ERR_ROLLBACK_DETECTED);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), want));
    CU_ASSERT_EQUAL(upsert(u, "rb-a", "z", 1), 0);
    /* The other index is served. */
    CU_ASSERT_EQUAL(get1(u, "rb-b", "b0", NULL), CDX_OK);

    /* list_indexes lists both, the broken one with its status and the store's version. */
    wire_response *w = NULL;
    CU_ASSERT_EQUAL_FATAL(app_client_list_indexes(u, &w), CDX_OK);
    const Cipherdex__V1__ListIndexesResponse *lr = wire_response_msg(w)->list_indexes;
    const Cipherdex__V1__IndexInfo *ia = find_info(lr, "rb-a"), *ib = find_info(lr, "rb-b");
    CU_ASSERT_FATAL(ia && ib);
    CU_ASSERT_TRUE(text_is(ia->status, "rollback_detected"));
    CU_ASSERT_EQUAL(ia->version, kept);
    CU_ASSERT_TRUE(ia->status_message.len > 0);
    CU_ASSERT_TRUE(text_is(ib->status, "ok"));
    CU_ASSERT_EQUAL(ib->count, 4);
    wire_response_free(w);

    /* /healthz and the wire health: degraded, one index in rollback. */
    r = healthz();
    CU_ASSERT_PTR_NOT_NULL(strstr(r, " 200"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r, "\"status\":\"degraded\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(r, "\"indexes_in_rollback\":1"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r, "accept-rollback"));
    free(r);
    /* The detail is the operators' (the admin is an appliance admin); a user gets the verdict. */
    CU_ASSERT_EQUAL_FATAL(app_client_health(u, &w), CDX_OK);
    CU_ASSERT_TRUE(text_is(wire_response_msg(w)->health->status, "degraded"));
    CU_ASSERT_EQUAL(wire_response_msg(w)->health->n_warnings, 0);
    CU_ASSERT_EQUAL(wire_response_msg(w)->health->indexes_in_rollback, 0);
    wire_response_free(w);
    CU_ASSERT_EQUAL_FATAL(app_client_health(a, &w), CDX_OK);
    const Cipherdex__V1__HealthResponse *hr = wire_response_msg(w)->health;
    CU_ASSERT_TRUE(text_is(hr->status, "degraded"));
    CU_ASSERT_EQUAL(hr->indexes_in_rollback, 1);
    CU_ASSERT_EQUAL(hr->n_warnings, 1);
    wire_response_free(w);

    /* accept_rollback: admin only, confirmed by the store's exact version. */
    CU_ASSERT_EQUAL(app_client_accept_rollback(u, "rb-a", kept, &w), CDX_ERR_PERMISSION_DENIED);
    wire_response_free(w);
    CU_ASSERT_EQUAL(app_client_accept_rollback(a, "rb-a", 0, &w), CDX_ERR_FAILED_PRECONDITION);
    wire_response_free(w);
    CU_ASSERT_EQUAL(app_client_accept_rollback(a, "rb-a", lost, &w), CDX_ERR_FAILED_PRECONDITION);
    wire_response_free(w);
    CU_ASSERT_EQUAL(get1(u, "rb-a", "a0", NULL), CDX_ERR_ROLLBACK_DETECTED); /* unchanged */
    CU_ASSERT_EQUAL(app_client_accept_rollback(a, "no-such", kept, &w), CDX_ERR_NOT_FOUND);
    wire_response_free(w);
    CU_ASSERT_EQUAL_FATAL(app_client_accept_rollback(a, "rb-a", kept, &w), CDX_OK);
    CU_ASSERT_EQUAL(wire_response_msg(w)->accept_rollback->version, kept);
    CU_ASSERT_EQUAL(wire_response_msg(w)->accept_rollback->previous_version, lost);
    wire_response_free(w);

    /* Served again by the same process (no restart): reads at the accepted version, writes on. */
    uint64_t v = 0;
    CU_ASSERT_EQUAL(get1(u, "rb-a", "a0", &v), CDX_OK);
    CU_ASSERT_EQUAL(v, kept);
    int lost_rc = get1(u, "rb-a", "lost0", NULL);
    if (lost_rc != -1)
        fprintf(stderr, "\n  get lost0 after accept: %d (%s)\n", lost_rc, cdx_err_detail());
    CU_ASSERT_EQUAL(lost_rc, -1); /* the lost commit is gone */
    uint64_t after = upsert(u, "rb-a", "c", 1);
    CU_ASSERT(after > kept);
    CU_ASSERT_EQUAL(S.d.pid, pid);
    CU_ASSERT_TRUE(fx_daemon_alive(&S.d));
    r = healthz();
    CU_ASSERT_PTR_NOT_NULL(strstr(r, "\"status\":\"ok\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(r, "\"indexes_in_rollback\":0"));
    free(r);
    /* A retry of the accept is harmless: nothing to accept, nothing changes. */
    CU_ASSERT_EQUAL(app_client_accept_rollback(a, "rb-a", after, &w), CDX_OK);
    CU_ASSERT_EQUAL(wire_response_msg(w)->accept_rollback->version, after);
    wire_response_free(w);
    app_client_free(a);
    app_client_free(u);
}

static void test_cli_accept_rollback(void)
{
    app_client *a = client_as(S.admin), *u = client_as(user);
    CU_ASSERT_FATAL(a && u);
    uint8_t id[16];
    CU_ASSERT_EQUAL_FATAL(create_index(a, "rb-cli", id), CDX_OK);
    CU_ASSERT_FATAL(upsert(u, "rb-cli", "a", 2) > 0);
    uint64_t lost = 0, kept = lose_tail(u, "rb-cli", id, &lost);
    CU_ASSERT_EQUAL(get1(u, "rb-cli", "a0", NULL), CDX_ERR_ROLLBACK_DETECTED);

    char out[16384], args[256];
    /* index list: the broken index with its status, the others too, exit 0. */
    CU_ASSERT_EQUAL(run_cli(user, "index list", out, sizeof(out)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "rollback_detected"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "rb-b "));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, " error ")); /* STATE of the broken one */
    CU_ASSERT_PTR_NOT_NULL(strstr(out, " ready ")); /* and of the others */
    CU_ASSERT_EQUAL(run_cli(user, "--json index list", out, sizeof(out)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"status\": \"rollback_detected\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"name\": \"rb-b\"")); /* the healthy ones too */
    /* The command the error names: refused for a user, and without --version; works for admin. */
    snprintf(args, sizeof(args), "index accept-rollback rb-cli --version %" PRIu64, kept);
    CU_ASSERT_NOT_EQUAL(run_cli(user, args, out, sizeof(out)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "PERMISSION_DENIED"));
    CU_ASSERT_NOT_EQUAL(run_cli(S.admin, "index accept-rollback rb-cli", out, sizeof(out)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "--version"));
    CU_ASSERT_EQUAL(run_cli(S.admin, args, out, sizeof(out)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "accepted rb-cli"));
    CU_ASSERT_EQUAL(get1(u, "rb-cli", "a0", NULL), CDX_OK);
    app_client_free(a);
    app_client_free(u);
}

/* One INFO persistence field of the stack's Redis ("aof_rewrite_in_progress"), or -1. */
static long redis_info(const char *field)
{
    const char *argv[2] = {"INFO", "persistence"};
    char out[8192];
    if (fx_redis_command(S.redis, argv, 2, out, sizeof(out)) <= 0)
        return -1;
    const char *p = strstr(out, field);
    return p ? strtol(p + strlen(field) + 1, NULL, 10) : -1;
}

/* Replace directory dst by a copy of src (cp -a). 0 on success. */
static int copy_dir(const char *src, const char *dst)
{
    char cmd[20000];
    if ((size_t)snprintf(cmd, sizeof(cmd), "rm -rf '%s' && cp -a '%s' '%s'", dst, src, dst) >=
        sizeof(cmd))
        return -1;
    return system(cmd);
}

/*
 * The runbook's backup and restore (docs/ADMIN.md "Back up and restore"), end to end on a live
 * appliance: back up Redis (BGREWRITEAOF, copy appendonlydir), write more (new items, one backup
 * item deleted), restore the copy into a stopped Redis, see ROLLBACK_DETECTED, accept it with the
 * CLI, and find every item of the backup served and nothing newer.
 */
static void test_backup_restore(void)
{
    app_client *a = client_as(S.admin), *u = client_as(user);
    CU_ASSERT_FATAL(a && u);
    uint8_t id[16];
    CU_ASSERT_EQUAL_FATAL(create_index(a, "bk", id), CDX_OK);
    uint64_t v_bak = upsert(u, "bk", "old", 8);
    CU_ASSERT_FATAL(v_bak > 0);
    /* Back up: an AOF rewrite, then a copy of its directory (no write is in flight). */
    const char *rw[1] = {"BGREWRITEAOF"};
    char out[16384], bak[4200], args[256];
    CU_ASSERT_FATAL(fx_redis_command(S.redis, rw, 1, out, sizeof(out)) > 0);
    for (int i = 0; i < 2000 && redis_info("aof_rewrite_in_progress") != 0; i++) {
        struct timespec ts = {0, 5 * 1000 * 1000}; /* polling a condition, bounded at 10 s */
        nanosleep(&ts, NULL);
    }
    CU_ASSERT_EQUAL_FATAL(redis_info("aof_rewrite_in_progress"), 0);
    snprintf(bak, sizeof(bak), "%s/backup", S.dir);
    char aof[4200];
    snprintf(aof, sizeof(aof), "%s/appendonlydir", fx_redis_dir(S.redis));
    CU_ASSERT_EQUAL_FATAL(copy_dir(aof, bak), 0);
    /* Write more: new items, and one backup item deleted. */
    uint64_t v_new = upsert(u, "bk", "new", 4);
    CU_ASSERT_FATAL(v_new > v_bak);
    wire_response *w = NULL;
    const char *gone[1] = {"old3"};
    CU_ASSERT_EQUAL_FATAL(app_client_delete(u, "bk", gone, 1, &w), CDX_OK);
    wire_response_free(w);
    CU_ASSERT_EQUAL(get1(u, "bk", "old3", NULL), -1);
    /* Restore into a stopped Redis; the appliance keeps running. */
    fx_redis_kill9(S.redis);
    CU_ASSERT_EQUAL_FATAL(copy_dir(bak, aof), 0);
    CU_ASSERT_EQUAL_FATAL(fx_redis_restart(S.redis), 0);
    int st = -2;
    for (int i = 0; i < 200 && (st = get1(u, "bk", "old0", NULL)) == CDX_ERR_STORE_UNAVAILABLE;
         i++) {
        struct timespec ts = {0, 50 * 1000 * 1000}; /* the reconnect, bounded at 10 s */
        nanosleep(&ts, NULL);
    }
    CU_ASSERT_EQUAL(st, CDX_ERR_ROLLBACK_DETECTED);
    /* The operator checks the version and accepts it. */
    CU_ASSERT_EQUAL(run_cli(S.admin, "index list", out, sizeof(out)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "rollback_detected"));
    snprintf(args, sizeof(args), "index accept-rollback bk --version %" PRIu64, v_bak);
    CU_ASSERT_EQUAL(run_cli(S.admin, args, out, sizeof(out)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "accepted bk"));
    /* Every item of the backup is served (the one deleted after it too); nothing newer is. */
    char idb[16];
    for (int i = 0; i < 8; i++) {
        snprintf(idb, sizeof(idb), "old%d", i);
        uint64_t ver = 0;
        CU_ASSERT_EQUAL(get1(u, "bk", idb, &ver), CDX_OK);
        CU_ASSERT_EQUAL(ver, v_bak);
    }
    for (int i = 0; i < 4; i++) {
        snprintf(idb, sizeof(idb), "new%d", i);
        CU_ASSERT_EQUAL(get1(u, "bk", idb, NULL), -1);
    }
    /* And it takes writes again, above the accepted version. */
    CU_ASSERT(upsert(u, "bk", "after", 2) > v_bak);
    app_client_free(a);
    app_client_free(u);
}

/*
 * The security review's M4 sequence on a live appliance: snapshot the store, delete an index
 * whose key was adopted (it survives), restore the snapshot: the index is refused, not served;
 * `cipherdex index purge` (appliance admins only) removes the copy.
 */
static void test_deleted_index_stays_deleted(void)
{
    app_client *a = client_as(S.admin), *u = client_as(user);
    CU_ASSERT_FATAL(a && u);
    uint8_t id[16];
    CU_ASSERT_EQUAL_FATAL(create_index(a, "gone", id), CDX_OK);
    CU_ASSERT_FATAL(upsert(u, "gone", "x", 4) > 0);
    char hk[96], pattern[96], saved[512], out[16384], args[256];
    head_key(id, hk, sizeof(hk));
    char hx[33];
    for (int i = 0; i < 16; i++)
        snprintf(hx + 2 * i, 3, "%02x", id[i]);
    /* Every key of the index (braced and plain) and the catalog: the whole store. */
    snprintf(pattern, sizeof(pattern), "cdx:*");
    char **before = redis_keys(pattern);
    CU_ASSERT_PTR_NOT_NULL_FATAL(before);
    for (size_t i = 0; before[i]; i++) {
        snprintf(saved, sizeof(saved), "test:m4:%s", before[i]);
        CU_ASSERT_EQUAL_FATAL(redis_copy(before[i], saved), 0);
    }
    snprintf(args, sizeof(args), "index delete gone --confirm %s", hx);
    CU_ASSERT_EQUAL(run_cli(S.admin, args, out, sizeof(out)), 0);
    CU_ASSERT_EQUAL(get1(u, "gone", "x0", NULL), CDX_ERR_NOT_FOUND);
    for (size_t i = 0; before[i]; i++) {
        snprintf(saved, sizeof(saved), "test:m4:%s", before[i]);
        CU_ASSERT_EQUAL_FATAL(redis_copy(saved, before[i]), 0);
    }
    /* A generated key was destroyed with the index: the copy could not be read anyway. What
     * matters here is that it is refused for what it is, with the way out. */
    int st = get1(u, "gone", "x0", NULL);
    CU_ASSERT(st == CDX_ERR_ROLLBACK_DETECTED || st == CDX_ERR_KEY_NOT_FOUND);
    CU_ASSERT_EQUAL(run_cli(user, "index purge", out, sizeof(out)) != 0, 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "PERMISSION_DENIED"));
    CU_ASSERT_EQUAL(run_cli(S.admin, "index purge", out, sizeof(out)), 0);
    if (!strstr(out, "purged: "))
        fprintf(stderr, "\n  purge: %s\n", out);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "purged: "));
    CU_ASSERT_EQUAL(get1(u, "gone", "x0", NULL), CDX_ERR_NOT_FOUND);
    char pat2[96];
    snprintf(pat2, sizeof(pat2), "cdx:%s:*", hx);
    char **left = redis_keys(pat2);
    CU_ASSERT_PTR_NOT_NULL(left);
    CU_ASSERT_PTR_NULL(left ? left[0] : NULL);
    free_keys(left);
    /* Purging again removes nothing more. */
    CU_ASSERT_EQUAL(run_cli(S.admin, "--json index purge", out, sizeof(out)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"removed\": 0"));
    free_keys(before);
    app_client_free(a);
    app_client_free(u);
}

int main(void)
{
    int rc = 1;
    if (fx_stack_open(&S, "rollback", NULL)) /* appendonly yes, appendfsync always */
        goto out;
    snprintf(cli_bin, sizeof(cli_bin), "%s/appliance/cipherdex", getenv("CDX_BIN_DIR"));
    user = fx_pki_issue(S.pki, &(fx_cert_opts){.dns = {"app.example.org"}}, "user");
    /* The user reads and writes every index; accepting a rollback is the admin's. */
    if (!user ||
        fx_stack_write_conf(&S, &(fx_stack_conf){.server = "workers = 2\n",
                                                 .policy = "[index *]\n"
                                                           "read = dns:app.example.org\n"
                                                           "write = dns:app.example.org\n"}))
        goto out;
    if (daemon_start()) {
        fprintf(stderr, "cipherdexd did not start\n");
        goto out;
    }
    static const fx_test tests[] = {
        {"lost tail: 101 names the command, list and health report it, accept online",
         test_lost_tail_recovered_online},
        {"cipherdex index list / accept-rollback", test_cli_accept_rollback},
        {"backup and restore: every item of the backup, nothing newer", test_backup_restore},
        {"a deleted index stays deleted after a restore; purge removes it",
         test_deleted_index_stays_deleted},
    };
    rc = fx_cunit_run1("rollback", tests, FX_LEN(tests));
out:
    if (fx_stack_close(&S) && !rc)
        rc = 1;
    return rc;
}
