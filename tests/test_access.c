/*
 * test_access: the access policy through the wire, on a live cipherdexd
 * (docs/POLICY.md; security review C1, M1). Two applications share one
 * appliance; every operation is tried by every principal, allowed and
 * refused; a CN spelling the admin's URI is not the admin; a principal
 * naming another tenant's index, existing or not, gets the same refusal;
 * index list shows only what the caller may see; the policy is reloaded on
 * SIGHUP (a bad file keeps the old one, /healthz says why); every refusal
 * is logged with the principal, the operation, the index id and the
 * request id, never the index name.
 */
#include <CUnit/Basic.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "app_client.h"
#include "cdx_hex.h"
#include "fx_cunit.h"
#include "fx_daemon.h"
#include "fx_pki.h"
#include "fx_proc.h"
#include "fx_client.h"
#include "fx_stack.h"
#include "fx_tmp.h"

static fx_stack S = FX_STACK_INIT;
static const fx_cert *app_a, *app_b, *reader, *ops, *cn_admin, *limited, *a_other_ca;
static char policy_text[4096];
static char log_path[4200], policy_path[4200];
#define DIM 4

static const char POLICY[] = "; two applications sharing one appliance\n"
                             "[appliance]\n"
                             "operators = uri:spiffe://test/ops\n"
                             "[role team-a]\n"
                             "members = uri:spiffe://test/app-a\n"
                             "[index a-*]\n"
                             "read = role:team-a, uri:spiffe://test/reader, "
                             "uri:spiffe://test/limited\n"
                             "write = role:team-a\n"
                             "[index b-*]\n"
                             "read = uri:spiffe://test/app-b\n"
                             "write = uri:spiffe://test/app-b\n"
                             "admin = uri:spiffe://test/app-b\n"
                             "[limits uri:spiffe://test/limited]\n"
                             "requests_per_second = 1\n"
                             "burst = 2\n";

static bool text_is(ProtobufCBinaryData b, const char *s)
{
    return b.len == strlen(s) && !memcmp(b.data, s, b.len);
}

static app_client *client_as(const fx_cert *c)
{
    return fx_stack_client(&S, c);
}

static void write_policy(const char *text)
{
    FILE *f = fopen(policy_path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(text, f);
    CU_ASSERT_FATAL(fclose(f) == 0);
}

/* out = a's bytes then b's. */
static int concat(const char *out, const char *a, const char *b)
{
    FILE *o = fopen(out, "w");
    if (!o)
        return -1;
    const char *in[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        FILE *f = fopen(in[i], "r");
        char buf[4096];
        size_t n;
        if (!f)
            return fclose(o), -1;
        while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
            fwrite(buf, 1, n, o);
        fclose(f);
    }
    return fclose(o) ? -1 : 0;
}

/* The SHA-256 fingerprint of the PEM certificate in path, as hex. */
static int fingerprint(const char *path, char out[65])
{
    FILE *f = fopen(path, "r");
    X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    unsigned char md[32];
    unsigned len = 0;
    int ok = x && X509_digest(x, EVP_sha256(), md, &len) && len == 32;
    X509_free(x);
    if (!ok)
        return -1;
    cdx_hex_encode(md, 32, out);
    return 0;
}

static int suite_init(void)
{
    if (fx_stack_open(&S, "access", NULL))
        return -1;
    app_a = fx_pki_issue(S.pki, &(fx_cert_opts){.uri = "spiffe://test/app-a"}, "app-a");
    app_b = fx_pki_issue(S.pki, &(fx_cert_opts){.uri = "spiffe://test/app-b"}, "app-b");
    reader = fx_pki_issue(S.pki, &(fx_cert_opts){.uri = "spiffe://test/reader"}, "reader");
    ops = fx_pki_issue(S.pki, &(fx_cert_opts){.uri = "spiffe://test/ops"}, "ops");
    /* Review M1: no SAN, a CN that spells the admin's URI. */
    cn_admin = fx_pki_issue(S.pki, &(fx_cert_opts){.cn = "spiffe://test/admin"}, "cn-admin");
    limited = fx_pki_issue(S.pki, &(fx_cert_opts){.uri = "spiffe://test/limited"}, "limited");
    /* app-a's name from the second CA, which the daemon also trusts for clients */
    a_other_ca =
        fx_pki_issue(S.pki, &(fx_cert_opts){.uri = "spiffe://test/app-a", .ca = 1}, "a-other");
    if (!app_a || !app_b || !reader || !ops || !cn_admin || !limited || !a_other_ca)
        return -1;
    char bundle[4200], fp[65];
    snprintf(bundle, sizeof(bundle), "%s/clients-ca.pem", S.dir);
    if (concat(bundle, fx_pki_ca(S.pki, 0), fx_pki_ca(S.pki, 1)) ||
        fingerprint(fx_pki_ca(S.pki, 0), fp))
        return -1;
    /* team-a is itself only from the first CA (review M1's "bind to the issuing CA") */
    snprintf(policy_text, sizeof(policy_text),
             "%s[ca clients]\nsha256 = %s\nprincipals = role:team-a\n", POLICY, fp);
    if (fx_stack_write_conf(&S, &(fx_stack_conf){.server = "workers = 2\n",
                                                 .policy = policy_text,
                                                 .soft_token_degrades = true,
                                                 .client_ca = bundle}))
        return -1;
    snprintf(policy_path, sizeof(policy_path), "%s/policy.ini", S.dir);
    /* The daemon's log into a file (its stderr is ours while it is spawned). */
    snprintf(log_path, sizeof(log_path), "%s/daemon.log", S.dir);
    int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600), saved = dup(2);
    if (fd < 0 || saved < 0 || dup2(fd, 2) < 0)
        return -1;
    int rc = fx_stack_start(&S);
    dup2(saved, 2);
    close(saved);
    close(fd);
    return rc;
}

static int suite_clean(void)
{
    return fx_stack_close(&S);
}

static cdx_err create(app_client *c, const char *name)
{
    const app_index_spec spec = {
        .name = name, .dimension = DIM, .metric = "euclidean", .index_type = "ivfflat"};
    wire_response *w = NULL;
    cdx_err e = app_client_create_index(c, &spec, &w);
    wire_response_free(w);
    return e;
}

static cdx_err upsert(app_client *c, const char *index, const char *id)
{
    float v[DIM] = {1, 2, 3, 4};
    app_item it = {.id = id, .vector = v, .dim = DIM};
    wire_response *w = NULL;
    cdx_err e = app_client_upsert(c, index, &it, 1, &w);
    wire_response_free(w);
    return e;
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

static cdx_err get(app_client *c, const char *index, const char *id)
{
    wire_response *w = NULL;
    cdx_err e = app_client_get(c, index, &id, 1, APP_INCLUDE_METADATA, 0, &w);
    wire_response_free(w);
    return e;
}

static cdx_err del(app_client *c, const char *index, const char *id)
{
    wire_response *w = NULL;
    cdx_err e = app_client_delete(c, index, &id, 1, &w);
    wire_response_free(w);
    return e;
}

static cdx_err list_ids(app_client *c, const char *index)
{
    wire_response *w = NULL;
    cdx_err e = app_client_list_ids(c, index, NULL, 10, &w);
    wire_response_free(w);
    return e;
}

static cdx_err describe(app_client *c, const char *index, uint8_t id[16])
{
    wire_response *w = NULL;
    cdx_err e = app_client_describe_index(c, index, &w);
    if (!e && id) {
        const Cipherdex__V1__IndexInfo *ii = wire_response_msg(w)->describe_index->index;
        memcpy(id, ii->id.data, 16);
    }
    wire_response_free(w);
    return e;
}

static cdx_err delete_index(app_client *c, const char *index)
{
    uint8_t id[16] = {0};
    app_client *adm = client_as(S.admin);
    cdx_err e = describe(adm, index, id);
    app_client_free(adm);
    if (e)
        return e;
    wire_response *w = NULL;
    e = app_client_delete_index(c, index, id, &w);
    wire_response_free(w);
    return e;
}

/* Names of the indexes the caller's index list shows, comma-joined, sorted as listed. */
static void listed(app_client *c, char *out, size_t cap)
{
    wire_response *w = NULL;
    out[0] = '\0';
    CU_ASSERT_EQUAL_FATAL(app_client_list_indexes(c, &w), CDX_OK);
    const Cipherdex__V1__ListIndexesResponse *l = wire_response_msg(w)->list_indexes;
    size_t n = 0;
    for (size_t i = 0; i < l->n_indexes; i++)
        n += (size_t)snprintf(out + n, cap - n, "%s%.*s", i ? "," : "",
                              (int)l->indexes[i]->name.len, (const char *)l->indexes[i]->name.data);
    wire_response_free(w);
}

/* Every principal x every operation on a-1 and b-1: allowed, or PERMISSION_DENIED. */
static void test_matrix(void)
{
    app_client *adm = client_as(S.admin), *a = client_as(app_a), *b = client_as(app_b),
               *r = client_as(reader), *o = client_as(ops), *cn = client_as(cn_admin);
    CU_ASSERT_FATAL(adm && a && b && r && o && cn);
    /* create: the appliance admin anywhere; an index admin (b) on its pattern only */
    CU_ASSERT_EQUAL(create(a, "a-1"), CDX_ERR_PERMISSION_DENIED);
    CU_ASSERT_EQUAL(create(cn, "a-1"), CDX_ERR_PERMISSION_DENIED); /* M1 */
    CU_ASSERT_EQUAL(create(o, "a-1"), CDX_ERR_PERMISSION_DENIED);
    CU_ASSERT_EQUAL(create(b, "a-1"), CDX_ERR_PERMISSION_DENIED);
    CU_ASSERT_EQUAL_FATAL(create(adm, "a-1"), CDX_OK);
    CU_ASSERT_EQUAL_FATAL(create(b, "b-1"), CDX_OK);

    struct {
        app_client *c;
        const char *who;
        bool read_a, write_a, read_b, write_b;
    } p[] = {
        {adm, "admin", true, true, true, true}, {a, "app-a", true, true, false, false},
        {b, "app-b", false, false, true, true}, {r, "reader", true, false, false, false},
        {o, "ops", false, false, false, false}, {cn, "cn-admin", false, false, false, false},
    };
    for (size_t i = 0; i < FX_LEN(p); i++) {
        const char *idx[2] = {"a-1", "b-1"};
        bool rd[2] = {p[i].read_a, p[i].read_b}, wr[2] = {p[i].write_a, p[i].write_b};
        for (int k = 0; k < 2; k++) {
            cdx_err wantr = rd[k] ? CDX_OK : CDX_ERR_PERMISSION_DENIED;
            cdx_err wantw = wr[k] ? CDX_OK : CDX_ERR_PERMISSION_DENIED;
            char id[32];
            snprintf(id, sizeof(id), "%s-%d", p[i].who, k);
            cdx_err got[6] = {upsert(p[i].c, idx[k], id),     query(p[i].c, idx[k]),
                              get(p[i].c, idx[k], id),        list_ids(p[i].c, idx[k]),
                              describe(p[i].c, idx[k], NULL), del(p[i].c, idx[k], id)};
            cdx_err want[6] = {wantw, wantr, wantr, wantr, wantr, wantw};
            static const char *const opn[6] = {"upsert",   "query",    "get",
                                               "list_ids", "describe", "delete"};
            for (int j = 0; j < 6; j++) {
                if (got[j] != want[j])
                    fprintf(stderr, "\n  %s %s %s: got %s, want %s", p[i].who, opn[j], idx[k],
                            cdx_err_name(got[j]), cdx_err_name(want[j]));
                CU_ASSERT_EQUAL(got[j], want[j]);
            }
        }
    }
    /* train and delete: index admins only */
    wire_response *w = NULL;
    CU_ASSERT_EQUAL(app_client_train(a, "a-1", NULL, &w), CDX_ERR_PERMISSION_DENIED);
    wire_response_free(w);
    CU_ASSERT_EQUAL(delete_index(a, "a-1"), CDX_ERR_PERMISSION_DENIED);
    CU_ASSERT_EQUAL(delete_index(cn, "a-1"), CDX_ERR_PERMISSION_DENIED);
    CU_ASSERT_EQUAL(delete_index(b, "a-1"), CDX_ERR_PERMISSION_DENIED);
    CU_ASSERT_EQUAL(app_client_accept_rollback(a, "a-1", 1, &w), CDX_ERR_PERMISSION_DENIED);
    wire_response_free(w);

    /* index list: what each may see; the operator sees everything, the CN nothing */
    char names[256];
    listed(a, names, sizeof(names));
    CU_ASSERT_STRING_EQUAL(names, "a-1");
    listed(b, names, sizeof(names));
    CU_ASSERT_STRING_EQUAL(names, "b-1");
    listed(o, names, sizeof(names));
    CU_ASSERT_TRUE(strstr(names, "a-1") && strstr(names, "b-1"));
    listed(cn, names, sizeof(names));
    CU_ASSERT_STRING_EQUAL(names, "");

    /* Another tenant's index, existing or not: the same refusal, nothing learnt. */
    CU_ASSERT_EQUAL(query(b, "a-1"), CDX_ERR_PERMISSION_DENIED);
    char d1[512];
    snprintf(d1, sizeof(d1), "%s", cdx_err_detail());
    CU_ASSERT_EQUAL(query(b, "a-9"), CDX_ERR_PERMISSION_DENIED);
    char *at = strstr(d1, "a-1");
    CU_ASSERT_PTR_NOT_NULL_FATAL(at);
    at[2] = '9';
    CU_ASSERT_STRING_EQUAL(d1, cdx_err_detail());
    /* b administers its own pattern: delete b-1 */
    CU_ASSERT_EQUAL(delete_index(b, "b-1"), CDX_OK);
    app_client *all[] = {adm, a, b, r, o, cn};
    for (size_t i = 0; i < FX_LEN(all); i++)
        app_client_free(all[i]);
}

/* Every refusal is in the daemon's log with principal, op, index id and request id. */
static void test_refusal_log(void)
{
    app_client *b = client_as(app_b), *adm = client_as(S.admin);
    CU_ASSERT_FATAL(b && adm);
    uint8_t id[16];
    CU_ASSERT_EQUAL_FATAL(describe(adm, "a-1", id), CDX_OK);
    char hex[33];
    cdx_hex_encode(id, 16, hex);
    CU_ASSERT_EQUAL(get(b, "a-1", "x"), CDX_ERR_PERMISSION_DENIED);
    CU_ASSERT_EQUAL(get(b, "a-404", "x"), CDX_ERR_PERMISSION_DENIED);
    app_client_free(b);
    app_client_free(adm);
    /* The lines are written before the answers are sent: they are in the file now. */
    FILE *f = fopen(log_path, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    char line[4096];
    int found = 0, missing = 0;
    while (fgets(line, sizeof(line), f)) {
        if (!strstr(line, "event=request_refused") || !strstr(line, "op=get") ||
            !strstr(line, "principal=\"uri:spiffe://test/app-b\""))
            continue;
        if (getenv("CDX_TEST_VERBOSE"))
            fprintf(stderr, "\n  %s", line);
        CU_ASSERT_PTR_NOT_NULL(strstr(line, "code=PERMISSION_DENIED"));
        CU_ASSERT_PTR_NOT_NULL(strstr(line, "request_id="));
        CU_ASSERT_PTR_NULL(strstr(line, "a-1")); /* names are never logged */
        CU_ASSERT_PTR_NULL(strstr(line, "a-404"));
        found += strstr(line, hex) != NULL;
        missing += strstr(line, "index_id=none") != NULL;
    }
    fclose(f);
    CU_ASSERT_EQUAL(found, 2); /* test_matrix's get of a-1 by app-b, and this one */
    CU_ASSERT_EQUAL(missing, 1);
}

/*
 * [limits]: a principal over its request rate gets RATE_LIMITED with a retry hint; others
 * are not affected; the hint is long enough.
 */
static void test_rate_limit(void)
{
    app_client *l = client_as(limited), *r = client_as(reader);
    CU_ASSERT_FATAL(l && r);
    /* burst 2 at 1 per second: the third request within the second is refused */
    cdx_err e[3];
    for (int i = 0; i < 3; i++)
        e[i] = describe(l, "a-1", NULL);
    CU_ASSERT_EQUAL(e[0], CDX_OK);
    CU_ASSERT_EQUAL(e[1], CDX_OK);
    CU_ASSERT_EQUAL(e[2], CDX_ERR_RATE_LIMITED);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "request rate (1 per second, burst 2)"));
    unsigned ms = 0;
    const char *at = strstr(cdx_err_detail(), "retry after ");
    CU_ASSERT_PTR_NOT_NULL_FATAL(at);
    CU_ASSERT_EQUAL(sscanf(at, "retry after %u ms", &ms), 1);
    CU_ASSERT_TRUE(ms > 0 && ms <= 1001);
    CU_ASSERT_EQUAL(describe(r, "a-1", NULL), CDX_OK); /* the reader has its own buckets */
    /* after the hint, the request goes through */
    usleep((useconds_t)(ms + 20) * 1000);
    CU_ASSERT_EQUAL(describe(l, "a-1", NULL), CDX_OK);
    app_client_free(l);
    app_client_free(r);
}

/* A principal bound to a CA, presented by a certificate from another trusted CA: not itself. */
static void test_issuer_binding(void)
{
    app_client *x = client_as(a_other_ca), *a = client_as(app_a);
    CU_ASSERT_FATAL(x && a);
    CU_ASSERT_EQUAL(describe(a, "a-1", NULL), CDX_OK);
    CU_ASSERT_EQUAL(describe(x, "a-1", NULL), CDX_ERR_PERMISSION_DENIED);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "unbound:uri:spiffe://test/app-a"));
    CU_ASSERT_EQUAL(upsert(x, "a-1", "planted"), CDX_ERR_PERMISSION_DENIED);
    char names[256];
    listed(x, names, sizeof(names));
    CU_ASSERT_STRING_EQUAL(names, "");
    app_client_free(x);
    app_client_free(a);
}

/* SIGHUP: a new policy is in force at once; a bad one keeps the old, /healthz says why. */
static void test_reload(void)
{
    app_client *b = client_as(app_b);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(query(b, "a-1"), CDX_ERR_PERMISSION_DENIED);
    char text[sizeof(policy_text) + 128];
    snprintf(text, sizeof(text), "%s[index a-1]\nread = uri:spiffe://test/app-b\n", policy_text);
    write_policy(text);
    CU_ASSERT_EQUAL_FATAL(kill(S.d.pid, SIGHUP), 0);
    CU_ASSERT_FATAL(fx_notify_wait(S.d.notify_fd, "READY=1", 30, NULL, 0) == 0);
    CU_ASSERT_EQUAL(query(b, "a-1"), CDX_OK);

    /* A bad file: refused at line 3, the previous policy stays, health is degraded. */
    write_policy("[index a-*]\nread = uri:spiffe://test/app-b\nwrite = spiffe://untyped\n");
    CU_ASSERT_EQUAL_FATAL(kill(S.d.pid, SIGHUP), 0);
    CU_ASSERT_FATAL(fx_notify_wait(S.d.notify_fd, "READY=1", 30, NULL, 0) == 0);
    CU_ASSERT_EQUAL(query(b, "a-1"), CDX_OK);
    CU_ASSERT_EQUAL(query(b, "a-2"), CDX_ERR_PERMISSION_DENIED); /* not the bad file's a-* */
    /* The operator gets the detail; app-b only the verdict. */
    wire_response *w = NULL;
    CU_ASSERT_EQUAL_FATAL(app_client_health(b, &w), CDX_OK);
    CU_ASSERT_TRUE(text_is(wire_response_msg(w)->health->status, "degraded"));
    CU_ASSERT_EQUAL(wire_response_msg(w)->health->n_warnings, 0);
    wire_response_free(w);
    app_client *o = client_as(ops);
    CU_ASSERT_PTR_NOT_NULL_FATAL(o);
    CU_ASSERT_EQUAL_FATAL(app_client_health(o, &w), CDX_OK);
    app_client_free(o);
    const Cipherdex__V1__HealthResponse *h = wire_response_msg(w)->health;
    bool said = false, soft = false;
    for (size_t i = 0; i < h->n_warnings; i++) {
        said |= strstr(wire_text(h->warnings[i]), "policy.ini:3:") != NULL;
        soft |= strstr(wire_text(h->warnings[i]), "is a software token") != NULL;
    }
    CU_ASSERT_TRUE(said);
    CU_ASSERT_TRUE(soft); /* SoftHSM: degraded, as production would be (review M7) */
    CU_ASSERT_TRUE(text_is(h->status, "degraded"));
    wire_response_free(w);

    /* Back to the original: health clean again. */
    write_policy(policy_text);
    CU_ASSERT_EQUAL_FATAL(kill(S.d.pid, SIGHUP), 0);
    CU_ASSERT_FATAL(fx_notify_wait(S.d.notify_fd, "READY=1", 30, NULL, 0) == 0);
    CU_ASSERT_EQUAL(query(b, "a-1"), CDX_ERR_PERMISSION_DENIED);
    app_client_free(b);
}

int main(void)
{
    static const fx_test tests[] = {
        {"every principal x every operation; M1; tenants apart; index list", test_matrix},
        {"refusals logged with principal, op, index id, request id", test_refusal_log},
        {"[limits]: RATE_LIMITED with a retry hint, per principal", test_rate_limit},
        {"[ca]: a principal from another trusted CA is not itself", test_issuer_binding},
        {"SIGHUP reload: good applies, bad keeps the old and degrades health", test_reload},
    };
    static const fx_suite suite = {.name = "access",
                                   .init = suite_init,
                                   .clean = suite_clean,
                                   .tests = tests,
                                   .ntests = FX_LEN(tests)};
    return fx_cunit_run(&suite, 1);
}
