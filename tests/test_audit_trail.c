/*
 * test_audit_trail: the audit trail of a live cipherdexd (docs/AUDIT.md).
 * Every request leaves one record naming the principal, the operation, the
 * index by id (never by name), the item count, the result and the request
 * id; key uses on the token and lifecycle events leave theirs; the trail
 * verifies with `cipherdex-hsm audit verify` and every tampering of it
 * (edit, delete, reorder, truncate, append a forged record, splice another
 * deployment's chain) is named; when the trail cannot be written the daemon
 * refuses work (fail closed, /healthz down) and serves again once it can.
 */
#include <CUnit/Basic.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "app_client.h"
#include "cdx_hex.h"
#include "cdx_time.h"
#include "fx_cunit.h"
#include "fx_daemon.h"
#include "fx_pki.h"
#include "fx_proc.h"
#include "fx_client.h"
#include "fx_stack.h"
#include "fx_tmp.h"

#define DIM   4
#define DEPID "00112233445566778899aabbccddeef0"

static fx_stack S = FX_STACK_INIT;
static const fx_cert *app, *stranger, *ops;
static char tool[4096], audit_dir[4200], trail[4300], saved[4300];
static char *out;
static char index_id[33];
#define OUT_CAP (256 * 1024)

static const char POLICY[] = "[appliance]\n"
                             "operators = uri:spiffe://test/ops\n"
                             "[index docs-*]\n"
                             "read = uri:spiffe://test/app\n"
                             "write = uri:spiffe://test/app\n";

static app_client *client_as(const fx_cert *c)
{
    return fx_stack_client(&S, c);
}

static cdx_err query(app_client *c, const char *index)
{
    float v[DIM] = {1, 2, 3, 4};
    app_query_spec q = {.vectors = v, .n_floats = DIM, .top_k = 1};
    wire_response *w = NULL;
    cdx_err e = app_client_query(c, index, &q, &w);
    wire_response_free(w);
    return e;
}

/* cipherdex-hsm W1 W2 [A1..A6] against the stack's token (a NULL ends the arguments); its
 * stdout+stderr in out. */
static int hsm_run(const char *w1, const char *w2, const char *a1, const char *a2, const char *a3,
                   const char *a4, const char *a5, const char *a6)
{
    char pin[4200], uri[200], envc[4300];
    snprintf(pin, sizeof(pin), "file:%s", fx_token_pin_file(S.tok));
    snprintf(uri, sizeof(uri), "pkcs11:token=%s", fx_token_label(S.tok));
    snprintf(envc, sizeof(envc), "SOFTHSM2_CONF=%s", fx_token_conf(S.tok));
    const char *argv[] = {tool,      "--module", fx_softhsm_module(),
                          "--token", uri,        "--pin-source",
                          pin,       w1,         w2,
                          a1,        a2,         a3,
                          a4,        a5,         a6,
                          NULL};
    const char *const env[] = {envc, "CDX_LOG_LEVEL=error", NULL};
    return fx_run_env(argv, env, NULL, out, OUT_CAP);
}

/* cipherdex-hsm audit verify PATH --deployment-id DEPID [A2 A3 A4]. */
static int hsm(const char *path, const char *a2, const char *a3, const char *a4)
{
    return hsm_run("audit", "verify", path, "--deployment-id", DEPID, a2, a3, a4);
}

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char *buf = malloc(1 << 20);
    *n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (buf)
        buf[*n] = '\0';
    return buf;
}

static int spit(const char *path, const char *text, size_t n)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fwrite(text, 1, n, f);
    return fclose(f);
}

static int suite_init(void)
{
    const char *bin = getenv("CDX_BIN_DIR");
    if (!bin || fx_stack_open(&S, "audit-trail", NULL))
        return -1;
    snprintf(tool, sizeof(tool), "%s/appliance/cipherdex-hsm", bin);
    out = malloc(OUT_CAP);
    app = fx_pki_issue(S.pki, &(fx_cert_opts){.uri = "spiffe://test/app"}, "app");
    stranger = fx_pki_issue(S.pki, &(fx_cert_opts){.uri = "spiffe://test/stranger"}, "stranger");
    ops = fx_pki_issue(S.pki, &(fx_cert_opts){.uri = "spiffe://test/ops"}, "ops");
    if (!out || !app || !stranger || !ops)
        return -1;
    snprintf(audit_dir, sizeof(audit_dir), "%s/audit", S.dir);
    snprintf(trail, sizeof(trail), "%s/audit.log", audit_dir);
    snprintf(saved, sizeof(saved), "%s/trail.saved", S.dir);
    char sections[4600];
    snprintf(sections, sizeof(sections),
             "[audit]\ndir = %s\nsync_interval_ms = 20\ncheckpoint_s = 1\n", audit_dir);
    if (fx_stack_write_conf(&S, &(fx_stack_conf){.policy = POLICY, .sections = sections}))
        return -1;
    /* an attestation key, so that attest's own key uses are in the trail */
    if (hsm_run("attest-key", "create", NULL, NULL, NULL, NULL, NULL, NULL) != 0)
        return -1;
    return fx_stack_start(&S);
}

static int suite_clean(void)
{
    free(out);
    return fx_stack_close(&S);
}

/* The record of kind `kind` with op `op` and code `code` for `principal` (NULL: any). */
static bool has_record(const char *text, const char *must1, const char *must2, const char *must3)
{
    for (const char *l = text; l && *l;) {
        const char *nl = strchr(l, '\n');
        size_t n = nl ? (size_t)(nl - l) : strlen(l);
        char line[4200];
        snprintf(line, sizeof(line), "%.*s", (int)(n < sizeof(line) ? n : sizeof(line) - 1), l);
        if ((!must1 || strstr(line, must1)) && (!must2 || strstr(line, must2)) &&
            (!must3 || strstr(line, must3)))
            return true;
        l = nl ? nl + 1 : NULL;
    }
    return false;
}

/* Requests of every kind, allowed and refused, then a clean stop: what the trail holds. */
static void test_records(void)
{
    app_client *admin = client_as(S.admin), *a = client_as(app), *x = client_as(stranger);
    CU_ASSERT_PTR_NOT_NULL_FATAL(admin);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(x);
    const app_index_spec spec = {.name = "docs-secret-name",
                                 .dimension = DIM,
                                 .metric = "euclidean",
                                 .index_type = "ivfflat"};
    wire_response *w = NULL;
    CU_ASSERT_EQUAL_FATAL(app_client_create_index(admin, &spec, &w), CDX_OK);
    const Cipherdex__V1__IndexInfo *ii = wire_response_msg(w)->create_index->index;
    CU_ASSERT_EQUAL_FATAL(ii->id.len, 16);
    cdx_hex_encode(ii->id.data, 16, index_id);
    wire_response_free(w);
    float v[2 * DIM] = {1, 2, 3, 4, 5, 6, 7, 8};
    app_item items[2] = {{.id = "doc-1", .vector = v, .dim = DIM},
                         {.id = "doc-2", .vector = v + DIM, .dim = DIM}};
    CU_ASSERT_EQUAL(app_client_upsert(a, "docs-secret-name", items, 2, &w), CDX_OK);
    wire_response_free(w);
    CU_ASSERT_EQUAL(query(a, "docs-secret-name"), CDX_OK);
    CU_ASSERT_EQUAL(query(x, "docs-secret-name"), CDX_ERR_PERMISSION_DENIED);
    /* an attestation request is audited like any other with its key uses */
    const uint8_t nonce[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    CU_ASSERT_EQUAL(app_client_attest(admin, "docs-secret-name", nonce, sizeof(nonce), &w), CDX_OK);
    wire_response_free(w);
    w = NULL;
    app_client_free(admin);
    app_client_free(a);
    app_client_free(x);
    CU_ASSERT_EQUAL_FATAL(fx_daemon_stop(&S.d), 0);

    CU_ASSERT_EQUAL(hsm(audit_dir, "--json", NULL, NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"status\":\"ok\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"clean_stop\":true"));
    size_t n = 0;
    char *text = slurp(trail, &n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    char idf[64];
    snprintf(idf, sizeof(idf), "index_id=%s", index_id);
    CU_ASSERT_TRUE(has_record(text, " kind=start ", "deployment_id=" DEPID, "token_serial="));
    CU_ASSERT_TRUE(has_record(text, " kind=lifecycle event=create ", idf, "origin=generated"));
    CU_ASSERT_TRUE(has_record(text, " kind=key event=generate key=index ", idf, "result=OK"));
    CU_ASSERT_TRUE(has_record(text, " kind=key event=derive ", "purpose=payload", idf));
    CU_ASSERT_TRUE(has_record(text, " kind=request op=create_index ",
                              "principal=uri:spiffe://test/admin", idf));
    CU_ASSERT_TRUE(has_record(text, " kind=request op=upsert principal=uri:spiffe://test/app ", idf,
                              "items=2 "));
    CU_ASSERT_TRUE(has_record(text, " kind=request op=query principal=uri:spiffe://test/app ",
                              "code=OK", "keys="));
    /* the refusal: who tried, on which index id, and that it was refused */
    CU_ASSERT_TRUE(has_record(text, " kind=request op=query principal=uri:spiffe://test/stranger ",
                              "code=PERMISSION_DENIED", NULL));
    CU_ASSERT_TRUE(has_record(text, " kind=request op=attest principal=uri:spiffe://test/admin ",
                              idf, "code=OK"));
    CU_ASSERT_TRUE(has_record(text, " kind=key event=read_attributes key=index ", idf, "kcv=ok"));
    CU_ASSERT_TRUE(has_record(text, " kind=key event=attest_sign ", "result=OK", NULL));
    CU_ASSERT_TRUE(has_record(text, " kind=stop clean=yes", NULL, NULL));
    /* the index name never reaches the trail (only with [audit] index_names = yes) */
    CU_ASSERT_PTR_NULL(strstr(text, "docs-secret-name"));
    CU_ASSERT_PTR_NULL(strstr(text, "doc-1"));
    CU_ASSERT_EQUAL(spit(saved, text, n), 0);
    free(text);
    CU_ASSERT_EQUAL_FATAL(fx_stack_start(&S), 0);
}

/* Lines of the saved trail: line i starts at at[i]. */
static size_t split(char *text, char **at, size_t cap)
{
    size_t k = 0;
    for (char *l = text; *l && k < cap; k++) {
        at[k] = l;
        char *nl = strchr(l, '\n');
        if (!nl)
            break;
        l = nl + 1;
    }
    return k;
}

static void write_lines(char **at, size_t n, const size_t *order, size_t norder)
{
    FILE *f = fopen(trail, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    (void)n;
    for (size_t i = 0; i < norder; i++) {
        const char *l = at[order[i]];
        fwrite(l, 1, strchr(l, '\n') - l + 1, f);
    }
    fclose(f);
}

/* Every tampering of a real trail is caught and named (offline: the daemon is stopped). */
static void test_tamper(void)
{
    CU_ASSERT_EQUAL_FATAL(fx_daemon_stop(&S.d), 0);
    size_t n = 0;
    char *text = slurp(saved, &n), *at[4096];
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    size_t lines = split(text, at, 4096);
    CU_ASSERT_FATAL(lines >= 8);
    size_t order[4096];
    for (size_t i = 0; i < lines; i++)
        order[i] = i;
    char backup[4300];
    snprintf(backup, sizeof(backup), "%s/audit.log.real", S.dir);
    CU_ASSERT_EQUAL_FATAL(rename(trail, backup), 0);
    /* rotated files of this run, if any, stay out of the way: verify the one file */

    /* untouched: ok */
    write_lines(at, lines, order, lines);
    CU_ASSERT_EQUAL(hsm(trail, NULL, NULL, NULL), 0);
    /* edited: a refusal turned into a success */
    char *copy = strdup(text);
    char *p = strstr(copy, "code=PERMISSION_DENIED");
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    memcpy(p, "code=OK               ", 22);
    CU_ASSERT_EQUAL(spit(trail, copy, n), 0);
    CU_ASSERT_NOT_EQUAL(hsm(trail, NULL, NULL, NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "fails its MAC"));
    free(copy);
    /* deleted: one record in the middle */
    size_t del[4096], k = 0;
    for (size_t i = 0; i < lines; i++)
        if (i != lines / 2)
            del[k++] = i;
    write_lines(at, lines, del, k);
    CU_ASSERT_NOT_EQUAL(hsm(trail, NULL, NULL, NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "deleted, inserted or reordered"));
    /* reordered: two neighbours swapped */
    size_t sw[4096];
    memcpy(sw, order, lines * sizeof(size_t));
    sw[3] = 4;
    sw[4] = 3;
    write_lines(at, lines, sw, lines);
    CU_ASSERT_NOT_EQUAL(hsm(trail, NULL, NULL, NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "audit.log:4:"));
    /* truncated: the stop record and the records before it cut; a verifier that expects
     * the trail to reach now (within the 1 s checkpoint interval) says a tail is missing */
    write_lines(at, lines, order, lines - 3);
    unsigned long long cut_ts = 0;
    unsigned long long cut_seq = 0;
    CU_ASSERT_EQUAL(sscanf(at[lines - 4], "cdxa1 %llu %llu", &cut_seq, &cut_ts), 2);
    while (cdx_wall_ms() < cut_ts + 1100) { /* the clock must pass the 1 s window first */
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    CU_ASSERT_EQUAL(hsm(trail, "--json", NULL, NULL), 0); /* the chain itself is intact */
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"clean_stop\":false"));
    CU_ASSERT_NOT_EQUAL(hsm(trail, "--max-age", "1", NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "a tail may be missing"));
    /* appended: a forged record in the right shape, without the key */
    write_lines(at, lines, order, lines);
    FILE *f = fopen(trail, "a");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    char prevhash[65] = "";
    /* its PREV is right (SHA-256 of the last line is public knowledge); only the MAC is wrong */
    {
        char cmd[4600];
        snprintf(cmd, sizeof(cmd), "tail -n1 %s | tr -d '\\n' | sha256sum", trail);
        FILE *pp = popen(cmd, "r");
        CU_ASSERT_PTR_NOT_NULL_FATAL(pp);
        CU_ASSERT_EQUAL(fscanf(pp, "%64s", prevhash), 1);
        pclose(pp);
    }
    unsigned long long lastseq = 0;
    CU_ASSERT_EQUAL(sscanf(at[lines - 1], "cdxa1 %llu", &lastseq), 1);
    fprintf(f,
            "cdxa1 %llu %llu %s kind=request op=delete_index principal=uri:spiffe://test/admin "
            "code=OK mac=%064d\n",
            lastseq + 1, (unsigned long long)cdx_wall_ms(), prevhash, 0);
    fclose(f);
    CU_ASSERT_NOT_EQUAL(hsm(trail, NULL, NULL, NULL), 0);
    char want[64];
    snprintf(want, sizeof(want), "audit record %llu fails its MAC", lastseq + 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, want));
    /* verified under another deployment's key: the first record fails */
    {
        char pin[4200], uri[200], envc[4300];
        snprintf(pin, sizeof(pin), "file:%s", fx_token_pin_file(S.tok));
        snprintf(uri, sizeof(uri), "pkcs11:token=%s", fx_token_label(S.tok));
        snprintf(envc, sizeof(envc), "SOFTHSM2_CONF=%s", fx_token_conf(S.tok));
        write_lines(at, lines, order, lines);
        const char *argv[] = {tool,
                              "--module",
                              fx_softhsm_module(),
                              "--token",
                              uri,
                              "--pin-source",
                              pin,
                              "audit",
                              "verify",
                              trail,
                              "--deployment-id",
                              "ffeeddccbbaa99887766554433221100",
                              NULL};
        const char *const env[] = {envc, "CDX_LOG_LEVEL=error", NULL};
        /* that deployment has no root key on this token: named, not a pass */
        CU_ASSERT_NOT_EQUAL(fx_run_env(argv, env, NULL, out, OUT_CAP), 0);
    }
    free(text);
    CU_ASSERT_EQUAL_FATAL(rename(backup, trail), 0);
    CU_ASSERT_EQUAL_FATAL(fx_stack_start(&S), 0);
}

static bool http_has(const char *path, const char *needle)
{
    char *colon = strrchr(S.metrics, ':'), req[128];
    if (!colon)
        return false;
    snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\n\r\n", path);
    char *r = fx_http(AF_INET, (uint16_t)atoi(colon + 1), req);
    bool has = r && strstr(r, needle);
    free(r);
    return has;
}

/* The trail's directory goes away under the running daemon: refused, then served again. */
/*
 * Query every 10 ms until the answer is OK (want_ok) or is not (!want_ok), for at most 10 s;
 * returns the last answer. The daemon's timer changes the trail's state asynchronously.
 */
static cdx_err query_until(app_client *a, bool want_ok)
{
    cdx_err e = query(a, "docs-secret-name");
    for (int64_t end = cdx_mono_ms() + 10000; (e == CDX_OK) != want_ok && cdx_mono_ms() < end;) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
        e = query(a, "docs-secret-name");
    }
    return e;
}

static void test_fail_closed(void)
{
    app_client *a = client_as(app);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_EQUAL(query(a, "docs-secret-name"), CDX_OK);
    char moved[4300];
    snprintf(moved, sizeof(moved), "%s/audit.moved", S.dir);
    CU_ASSERT_EQUAL_FATAL(rename(audit_dir, moved), 0);
    /* the daemon notices within its sync interval (20 ms): wait for the refusal, bounded */
    CU_ASSERT_EQUAL(query_until(a, false), CDX_ERR_AUDIT_UNAVAILABLE);
    CU_ASSERT_TRUE(fx_detail_has("audit trail cannot be written"));
    CU_ASSERT_TRUE(http_has("/healthz", "\"audit\":\"failed\""));
    CU_ASSERT_TRUE(http_has("/healthz", "\"status\":\"down\""));
    CU_ASSERT_TRUE(http_has("/metrics", "\ncipherdex_audit_state 1\n"));
    /* the directory is back: served again, and the trail says what happened */
    CU_ASSERT_EQUAL_FATAL(mkdir(audit_dir, 0700), 0);
    CU_ASSERT_EQUAL(query_until(a, true), CDX_OK);
    CU_ASSERT_TRUE(http_has("/healthz", "\"audit\":\"ok\""));
    CU_ASSERT_TRUE(http_has("/metrics", "\ncipherdex_audit_state 0\n"));
    app_client_free(a);
    CU_ASSERT_EQUAL_FATAL(fx_daemon_stop(&S.d), 0);
    /* the new file continues the chain: verified from where it starts */
    CU_ASSERT_EQUAL(hsm(audit_dir, "--json", NULL, NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"clean_stop\":true"));
    CU_ASSERT_PTR_NULL(strstr(out, "\"first_seq\":1,"));
    size_t n = 0;
    char *text = slurp(trail, &n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_TRUE(has_record(text, " kind=resume ", NULL, NULL) ||
                   has_record(text, " kind=reopen ", NULL, NULL));
    free(text);
    CU_ASSERT_EQUAL_FATAL(fx_stack_start(&S), 0);
}

/* Operators read the trail's tail over the wire; applications may not. */
static void test_tail(void)
{
    app_client *o = client_as(ops), *a = client_as(app);
    CU_ASSERT_PTR_NOT_NULL_FATAL(o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_EQUAL(query(a, "docs-secret-name"), CDX_OK);
    wire_response *w = NULL;
    CU_ASSERT_EQUAL(app_client_audit_tail(a, 5, &w), CDX_ERR_PERMISSION_DENIED);
    wire_response_free(w);
    w = NULL;
    cdx_err te = app_client_audit_tail(o, 5, &w);
    if (te)
        fprintf(stderr, "audit_tail: %s: %s\n", cdx_err_name(te), cdx_err_detail());
    CU_ASSERT_EQUAL_FATAL(te, CDX_OK);
    const Cipherdex__V1__AuditTailResponse *t = wire_response_msg(w)->audit_tail;
    CU_ASSERT_EQUAL(t->n_records, 5);
    CU_ASSERT_TRUE(t->state.len == 2 && !memcmp(t->state.data, "ok", 2));
    CU_ASSERT_TRUE(t->last_seq > 5);
    bool saw_query = false, ordered = true;
    unsigned long long prev = 0;
    for (size_t i = 0; i < t->n_records; i++) {
        char line[4200];
        snprintf(line, sizeof(line), "%.*s", (int)t->records[i].len, t->records[i].data);
        saw_query |=
            strstr(line, " kind=request op=query principal=uri:spiffe://test/app ") != NULL;
        unsigned long long seq = 0;
        CU_ASSERT_EQUAL(sscanf(line, "cdxa1 %llu", &seq), 1);
        ordered &= seq > prev;
        prev = seq;
    }
    CU_ASSERT_TRUE(saw_query); /* the app's query, just before */
    CU_ASSERT_TRUE(ordered);
    wire_response_free(w);
    /* out of range: refused by the wire rules */
    w = NULL;
    CU_ASSERT_EQUAL(app_client_audit_tail(o, 1001, &w), CDX_ERR_INVALID_ARGUMENT);
    wire_response_free(w);
    app_client_free(o);
    app_client_free(a);
}

int main(void)
{
    static const fx_test tests[] = {
        {"every request, key use and lifecycle event recorded; names never", test_records},
        {"edit, delete, reorder, truncate, forged append: named", test_tamper},
        {"audit tail: operators only, newest records in order", test_tail},
        {"trail gone: fail closed, /healthz down, served again when back", test_fail_closed},
    };
    static const fx_suite suite = {.name = "audit_trail",
                                   .init = suite_init,
                                   .clean = suite_clean,
                                   .tests = tests,
                                   .ntests = FX_LEN(tests)};
    return fx_cunit_run(&suite, 1);
}
