/*
 * test_appliance: cipherdexd end to end over mutual TLS with a throwaway token, Redis
 * and PKI - the client library against a live daemon process: lifecycle, admin
 * checks, refused certificates, malformed input on the wire (the daemon keeps serving
 * others), 16 concurrent clients, restart, and SIGTERM under load losing no
 * acknowledged write.
 */
#include <CUnit/Basic.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <errno.h>

#include "app_client.h"
#include "fx_pki.h"
#include "fx_proc.h"
#include "fx_redis.h"
#include "fx_softhsm.h"
#include "fx_stack.h"
#include "fx_tmp.h"
#include "fx_cunit.h"
#include "fx_daemon.h"

static fx_stack S = FX_STACK_INIT;
static const fx_cert *user, *other_ca, *revoked, *no_eku, *server_only;
static char crl_path[4096];
static pid_t daemon_pid; /* S.d.pid and S.d.notify_fd, as the tests use them */
static int notify_fd = -1;
#define DIM 8

/* ---- daemon process ---- */

static int write_conf(void)
{
    char server[5000];
    snprintf(server, sizeof(server),
             "crl = %s\nworkers = 4\nmax_frame_bytes = 8M\ninflight_bytes = 64M\n"
             "handshake_timeout_ms = 1500\nidle_timeout_s = 3\nmin_recv_bytes_per_s = 1024\n",
             crl_path);
    /* The user may read and write every index; only the admin creates, trains, deletes. */
    return fx_stack_write_conf(&S, &(fx_stack_conf){.server = server,
                                                    .sections = "[cache]\nbytes = 64M\n",
                                                    .policy = "[index *]\n"
                                                              "read = dns:app.example.org\n"
                                                              "write = dns:app.example.org\n"});
}

/* Start cipherdexd and wait for READY=1 on our notify socket; fills S.addr. */
static int daemon_start(void)
{
    int rc = fx_stack_start(&S);
    daemon_pid = S.d.pid;
    notify_fd = S.d.notify_fd;
    return rc;
}

/* SIGTERM, wait for the exit; returns the exit status (or -1). */
static int daemon_stop(void)
{
    return fx_daemon_stop(&S.d);
}

/* The daemon's peak resident set (VmHWM) in KiB. */
static long daemon_hwm_kib(void)
{
    return fx_proc_kib((int)daemon_pid, "VmHWM");
}

static bool daemon_alive(void)
{
    return fx_daemon_alive(&S.d);
}

/* ---- clients ---- */

static app_client *client_as(const fx_cert *c, cdx_err *err)
{
    app_client_opts o = {.addr = S.addr,
                         .ca = fx_pki_ca(S.pki, 0),
                         .cert = c ? c->cert : NULL,
                         .key = c ? c->key : NULL,
                         .timeout_ms = 30000};
    app_client *cl = NULL;
    cdx_err e = app_client_connect(&o, &cl);
    if (err)
        *err = e;
    return cl;
}

/* How a client fares: at connect, or at its first call (TLS 1.3 reports client-certificate
 * refusals after the client's handshake completes). The detail stays in cdx_err_detail(). */
static cdx_err attempt(const fx_cert *c)
{
    cdx_err e;
    app_client *cl = client_as(c, &e);
    if (!cl)
        return e;
    wire_response *w = NULL;
    e = app_client_health(cl, &w);
    wire_response_free(w);
    app_client_free(cl);
    return e;
}

static bool refused(const fx_cert *c)
{
    return attempt(c) != CDX_OK;
}

/* A refused certificate is UNAUTHENTICATED (never UNAVAILABLE: retrying cannot help), with
 * the plain reason the server's alert gives. */
static void expect_refusal(const fx_cert *c, const char *reason)
{
    cdx_err e = attempt(c);
    CU_ASSERT_EQUAL(e, CDX_ERR_UNAUTHENTICATED);
    if (!strstr(cdx_err_detail(), reason))
        fprintf(stderr, "\n  want `%s` in: %s", reason, cdx_err_detail());
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), reason));
}

/* The outcome of a typed call (app_client_*), its detail shown with CDX_TEST_VERBOSE. */
static cdx_err call(cdx_err e)
{
    if (e && getenv("CDX_TEST_VERBOSE"))
        fprintf(stderr, "\n  call: %s: %s", cdx_err_name(e), cdx_err_detail());
    return e;
}

static cdx_err create_index(app_client *c, const char *name)
{
    const app_index_spec spec = {
        .name = name, .dimension = DIM, .metric = "euclidean", .index_type = "ivfflat"};
    wire_response *w;
    cdx_err e = call(app_client_create_index(c, &spec, &w));
    wire_response_free(w);
    return e;
}

static void vec_of(uint64_t i, float *v)
{
    for (int k = 0; k < DIM; k++)
        v[k] = (float)((i * 2654435761u >> (k * 3)) % 97) + (float)k * 0.5f;
}

/* Upsert ids prefix+[from, to); returns the status; *version the commit version. */
static cdx_err upsert_range(app_client *c, const char *index, const char *prefix, uint64_t from,
                            uint64_t to, uint64_t *version)
{
    size_t n = (size_t)(to - from);
    app_item *items = calloc(n, sizeof(*items));
    float *vecs = calloc(n * DIM, sizeof(float));
    char(*ids)[48] = calloc(n, 48);
    for (size_t i = 0; i < n; i++) {
        snprintf(ids[i], 48, "%s%llu", prefix, (unsigned long long)(from + i));
        vec_of(from + i, vecs + i * DIM);
        items[i] = (app_item){.id = ids[i], .vector = vecs + i * DIM, .dim = DIM};
    }
    wire_response *w;
    cdx_err e = call(app_client_upsert(c, index, items, n, &w));
    if (!e && version)
        *version = wire_response_msg(w)->upsert->version;
    wire_response_free(w);
    free(items);
    free(vecs);
    free(ids);
    return e;
}

/* Every id of the index (list_ids paging). */
static size_t list_all(app_client *c, const char *index, char ***out)
{
    size_t n = 0, cap = 0;
    char **ids = NULL, *cursor = NULL;
    do {
        wire_response *w;
        if (call(app_client_list_ids(c, index, cursor, 500, &w))) {
            fprintf(stderr, "list_all: %s\n", cdx_err_detail());
            wire_response_free(w);
            break;
        }
        const Cipherdex__V1__ListIdsResponse *lr = wire_response_msg(w)->list_ids;
        for (size_t i = 0; i < lr->n_ids; i++) {
            if (n == cap)
                ids = realloc(ids, (cap = cap ? cap * 2 : 256) * sizeof(char *));
            ids[n++] = strndup((const char *)lr->ids[i].data, lr->ids[i].len);
        }
        free(cursor);
        cursor = lr->next_cursor.len
                     ? strndup((const char *)lr->next_cursor.data, lr->next_cursor.len)
                     : NULL;
        wire_response_free(w);
    } while (cursor);
    *out = ids;
    return n;
}

static void free_ids(char **ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(ids[i]);
    free(ids);
}

/* ---- tests ---- */

static void test_lifecycle(void)
{
    app_client *a = client_as(S.admin, NULL), *u = client_as(user, NULL);
    CU_ASSERT_FATAL(a && u);
    /* A non-admin principal cannot create, train or delete. */
    CU_ASSERT_EQUAL(create_index(u, "life"), CDX_ERR_PERMISSION_DENIED);
    CU_ASSERT(strstr(cdx_err_detail(), "needs `admin` on index `life`") != NULL);
    CU_ASSERT_EQUAL(create_index(a, "life"), CDX_OK);
    uint64_t v1 = 0, v2 = 0;
    CU_ASSERT_EQUAL(upsert_range(u, "life", "x", 0, 300, &v1), CDX_OK); /* users may write */
    CU_ASSERT_EQUAL(upsert_range(u, "life", "x", 300, 600, &v2), CDX_OK);
    CU_ASSERT(v2 > v1);
    const app_train_opts t = {.n_lists = 8};
    wire_response *w;
    CU_ASSERT_EQUAL(call(app_client_train(u, "life", &t, &w)), CDX_ERR_PERMISSION_DENIED);
    wire_response_free(w);
    CU_ASSERT_EQUAL(call(app_client_train(a, "life", &t, &w)), CDX_OK);
    wire_response_free(w);
    /* Query: each stored vector finds itself first; two vectors in one request. */
    float q[2 * DIM];
    vec_of(42, q);
    vec_of(500, q + DIM);
    app_query_spec qr = {
        .vectors = q, .n_floats = 2 * DIM, .top_k = 3, .n_probes = 8, .min_version = v2};
    CU_ASSERT_EQUAL_FATAL(call(app_client_query(u, "life", &qr, &w)), CDX_OK);
    const Cipherdex__V1__QueryResponse *res = wire_response_msg(w)->query;
    CU_ASSERT_EQUAL(res->n_results, 2);
    CU_ASSERT(res->results[0]->n_ids >= 1 && res->results[0]->distances[0] == 0.0f);
    CU_ASSERT(res->results[1]->n_ids >= 1 && res->results[1]->distances[0] == 0.0f);
    wire_response_free(w);
    /* Wrong vector length: INVALID_ARGUMENT naming the dimension. */
    qr.n_floats = DIM - 1;
    CU_ASSERT_EQUAL(call(app_client_query(u, "life", &qr, &w)), CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT(strstr(cdx_err_detail(), "dimension") != NULL);
    wire_response_free(w);
    /* delete_index needs the id as confirmation, and an admin. */
    CU_ASSERT_EQUAL_FATAL(call(app_client_describe_index(u, "life", &w)), CDX_OK);
    uint8_t id[16];
    memcpy(id, wire_response_msg(w)->describe_index->index->id.data, 16);
    CU_ASSERT_EQUAL(wire_response_msg(w)->describe_index->index->count, 600);
    wire_response_free(w);
    CU_ASSERT_EQUAL(call(app_client_delete_index(a, "life", NULL, &w)),
                    CDX_ERR_FAILED_PRECONDITION);
    wire_response_free(w);
    CU_ASSERT_EQUAL(call(app_client_delete_index(u, "life", id, &w)), CDX_ERR_PERMISSION_DENIED);
    wire_response_free(w);
    CU_ASSERT_EQUAL(call(app_client_delete_index(a, "life", id, &w)), CDX_OK);
    wire_response_free(w);
    CU_ASSERT_EQUAL(call(app_client_describe_index(u, "life", &w)), CDX_ERR_NOT_FOUND);
    wire_response_free(w);
    app_client_free(a);
    app_client_free(u);
}

static void test_refused_certificates(void)
{
    CU_ASSERT_FALSE(refused(S.admin));
    expect_refusal(NULL, "a client certificate is required");
    expect_refusal(other_ca, "unknown CA");
    expect_refusal(revoked, "certificate revoked");
    expect_refusal(no_eku, "refused this client's certificate");
    expect_refusal(server_only, "unsupported certificate");
    CU_ASSERT(daemon_alive());
    CU_ASSERT_FALSE(refused(S.admin)); /* and it still serves */
}

/* A raw TLS connection as admin, for bytes no well-behaved client would send. */
typedef struct raw {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
} raw;

static int raw_open(raw *r)
{
    memset(r, 0, sizeof(*r));
    char host[64];
    snprintf(host, sizeof(host), "%.*s", (int)strcspn(S.addr, ":"), S.addr);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)atoi(strchr(S.addr, ':') + 1))};
    inet_pton(AF_INET, host, &sa.sin_addr);
    r->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(r->fd, (struct sockaddr *)&sa, sizeof(sa)))
        return -1;
    struct timeval tv = {.tv_sec = 20};
    setsockopt(r->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    r->ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_load_verify_locations(r->ctx, fx_pki_ca(S.pki, 0), NULL);
    SSL_CTX_use_certificate_chain_file(r->ctx, S.admin->cert);
    SSL_CTX_use_PrivateKey_file(r->ctx, S.admin->key, SSL_FILETYPE_PEM);
    r->ssl = SSL_new(r->ctx);
    SSL_set_fd(r->ssl, r->fd);
    return SSL_connect(r->ssl) == 1 ? 0 : -1;
}

static void raw_close(raw *r)
{
    SSL_free(r->ssl);
    SSL_CTX_free(r->ctx);
    close(r->fd);
}

static void raw_send(raw *r, const void *p, size_t n)
{
    SSL_write(r->ssl, p, (int)n);
}

/* Read one response frame; its status code, or -1 when the server closed instead. */
static int raw_status(raw *r, bool *closed_after)
{
    uint8_t hdr[4];
    int got = 0;
    while (got < 4) {
        int n = SSL_read(r->ssl, hdr + got, 4 - got);
        if (n <= 0)
            return -1;
        got += n;
    }
    size_t len = (size_t)hdr[0] << 24 | hdr[1] << 16 | hdr[2] << 8 | hdr[3];
    uint8_t *body = malloc(len + 1);
    size_t have = 0;
    while (have < len) {
        int n = SSL_read(r->ssl, body + have, (int)(len - have));
        if (n <= 0) {
            free(body);
            return -1;
        }
        have += (size_t)n;
    }
    wire_response *w = NULL;
    int code = -1;
    if (!wire_response_unpack(body, len, 4 * len + (1 << 20), &w))
        code = wire_response_msg(w)->status->code;
    wire_response_free(w);
    free(body);
    if (closed_after) {
        uint8_t b;
        *closed_after = SSL_read(r->ssl, &b, 1) <= 0;
    }
    return code;
}

static void frame(raw *r, const uint8_t *body, size_t n)
{
    uint8_t hdr[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
    raw_send(r, hdr, 4);
    if (n)
        raw_send(r, body, n);
}

static void test_malformed_wire(void)
{
    raw r;
    bool closed = false;
    /* Length over the 8 MiB cap: FRAME_TOO_LARGE, then the stream is closed. */
    CU_ASSERT_FATAL(raw_open(&r) == 0);
    uint8_t big[4] = {0x7f, 0xff, 0xff, 0xff};
    raw_send(&r, big, 4);
    CU_ASSERT_EQUAL(raw_status(&r, &closed), CDX_ERR_FRAME_TOO_LARGE);
    CU_ASSERT(closed);
    raw_close(&r);
    /* Garbage that is a valid length but not protobuf: INVALID_ARGUMENT, connection kept. */
    CU_ASSERT_FATAL(raw_open(&r) == 0);
    uint8_t junk[64];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (uint8_t)(0xff - i);
    frame(&r, junk, sizeof(junk));
    CU_ASSERT_EQUAL(raw_status(&r, NULL), CDX_ERR_INVALID_ARGUMENT);
    /* An empty frame is a Request without a body. */
    frame(&r, NULL, 0);
    CU_ASSERT_EQUAL(raw_status(&r, NULL), CDX_ERR_INVALID_ARGUMENT);
    /* Unknown body: field 99 (a length-delimited field the schema does not have). */
    uint8_t unk[] = {0x08, 0x07, 0x9a, 0x06, 0x00};
    frame(&r, unk, sizeof(unk));
    CU_ASSERT_EQUAL(raw_status(&r, NULL), CDX_ERR_INVALID_ARGUMENT);
    /* NUL inside an index name, and invalid UTF-8. */
    Cipherdex__V1__Request q = CIPHERDEX__V1__REQUEST__INIT;
    Cipherdex__V1__DescribeIndexRequest d = CIPHERDEX__V1__DESCRIBE_INDEX_REQUEST__INIT;
    q.body_case = CIPHERDEX__V1__REQUEST__BODY_DESCRIBE_INDEX;
    q.describe_index = &d;
    d.name = wire_bin("ab\0cd", 5);
    uint8_t buf[256];
    size_t n = cipherdex__v1__request__pack(&q, buf);
    frame(&r, buf, n);
    CU_ASSERT_EQUAL(raw_status(&r, NULL), CDX_ERR_INVALID_ARGUMENT);
    d.name = wire_bin("\xc0\xaf", 2);
    n = cipherdex__v1__request__pack(&q, buf);
    frame(&r, buf, n);
    CU_ASSERT_EQUAL(raw_status(&r, NULL), CDX_ERR_INVALID_ARGUMENT);
    /* A million empty items in a 2 MB frame: refused by the unpack budget. */
    size_t items = 1000000, len = 2 * items + 16;
    uint8_t *mil = malloc(len + 16), *p = mil;
    /* upsert (field 16, length-delimited): tag 0x82 0x01, then the UpsertRequest. */
    size_t inner = 2 * items + 3; /* index "a" (3 bytes) + items */
    *p++ = 0x82;
    *p++ = 0x01;
    size_t v = inner;
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    *p++ = 0x0a;
    *p++ = 0x01;
    *p++ = 'a';
    for (size_t i = 0; i < items; i++) {
        *p++ = 0x12;
        *p++ = 0x00;
    }
    long hwm0 = daemon_hwm_kib();
    frame(&r, mil, (size_t)(p - mil));
    free(mil);
    int code = raw_status(&r, NULL);
    CU_ASSERT(code == CDX_ERR_RESOURCE_EXHAUSTED || code == CDX_ERR_INVALID_ARGUMENT);
    /* Its peak memory grew by about the frame plus the unpack budget (4 x 2 MB + 1 MiB), not by
     * the ~113 MB protobuf-c would allocate unbudgeted. */
    long hwm1 = daemon_hwm_kib();
    CU_ASSERT(hwm0 > 0 && hwm1 - hwm0 < 32 * 1024);
    printf("\n    million-item frame: daemon peak RSS grew by %ld KiB ", hwm1 - hwm0);
    /* Still a working connection. */
    Cipherdex__V1__HealthRequest h = CIPHERDEX__V1__HEALTH_REQUEST__INIT;
    Cipherdex__V1__Request hq = CIPHERDEX__V1__REQUEST__INIT;
    hq.body_case = CIPHERDEX__V1__REQUEST__BODY_HEALTH;
    hq.health = &h;
    n = cipherdex__v1__request__pack(&hq, buf);
    frame(&r, buf, n);
    CU_ASSERT_EQUAL(raw_status(&r, NULL), CDX_OK);
    raw_close(&r);
    /* A truncated frame, then the peer goes away. */
    CU_ASSERT_FATAL(raw_open(&r) == 0);
    uint8_t trunc[4] = {0, 0, 1, 0};
    raw_send(&r, trunc, 4);
    raw_send(&r, junk, 10);
    raw_close(&r);
    /* Plain garbage instead of a TLS handshake. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)atoi(strchr(S.addr, ':') + 1)),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (!connect(fd, (struct sockaddr *)&sa, sizeof(sa)) &&
        write(fd, "GET / HTTP/1.0\r\n\r\n", 18) > 0) {
        unsigned char b[64];
        struct timeval tv = {.tv_sec = 20};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        ssize_t got = read(fd, b, sizeof(b));
        CU_ASSERT(got <= 0 || b[0] == 0x15); /* closed, or a TLS alert record: never an answer */
    }
    close(fd);
    /* Through all of it, the daemon kept serving. */
    CU_ASSERT(daemon_alive());
    CU_ASSERT_FALSE(refused(S.admin));
}

/* Seconds until the server closes fd (read returns 0 or an error), at most limit_s. */
static double seconds_until_closed(int fd, int limit_s)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct timeval tv = {.tv_sec = limit_s};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char b[256];
    ssize_t n;
    while ((n = read(fd, b, sizeof(b))) > 0)
        ; /* a TLS alert may come first */
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double el = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) ? el : -1;
}

/*
 * A peer cannot pin a connection: no TLS handshake (closed after
 * handshake_timeout_ms), 3 bytes of a frame header then silence (closed by
 * the receive-rate rule after its grace second), and idle after a request
 * (closed after idle_timeout_s).
 */
static void test_timeouts(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)atoi(strchr(S.addr, ':') + 1)),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CU_ASSERT_FATAL(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    double t = seconds_until_closed(fd, 20);
    close(fd);
    CU_ASSERT(t >= 1.0 && t < 10);
    printf("\n    no handshake: closed after %.2f s ", t);

    raw r;
    CU_ASSERT_FATAL(raw_open(&r) == 0);
    uint8_t hdr[3] = {0, 0, 1};
    raw_send(&r, hdr, 3);
    t = seconds_until_closed(r.fd, 20);
    CU_ASSERT(t >= 0.9 && t < 10);
    printf("\n    3 header bytes then silence: closed after %.2f s ", t);
    raw_close(&r);

    CU_ASSERT_FATAL(raw_open(&r) == 0);
    Cipherdex__V1__HealthRequest h = CIPHERDEX__V1__HEALTH_REQUEST__INIT;
    Cipherdex__V1__Request hq = CIPHERDEX__V1__REQUEST__INIT;
    hq.body_case = CIPHERDEX__V1__REQUEST__BODY_HEALTH;
    hq.health = &h;
    uint8_t buf[64];
    size_t n = cipherdex__v1__request__pack(&hq, buf);
    frame(&r, buf, n);
    CU_ASSERT_EQUAL(raw_status(&r, NULL), CDX_OK);
    t = seconds_until_closed(r.fd, 30);
    CU_ASSERT(t >= 2.5 && t < 20);
    printf("\n    idle after a request: closed after %.2f s ", t);
    raw_close(&r);
    CU_ASSERT(daemon_alive());
}

typedef struct worker_arg {
    int k;
    atomic_int *errors;
} worker_arg;

/* Each worker owns ids w<k>-*: upserts 0..200 in batches, deletes the odd ones, queries. */
static void *worker(void *p)
{
    worker_arg *a = p;
    cdx_err e;
    app_client *c = client_as(a->k % 2 ? user : S.admin, &e);
    if (!c) {
        atomic_fetch_add(a->errors, 1);
        return NULL;
    }
    char prefix[16];
    snprintf(prefix, sizeof(prefix), "w%d-", a->k);
    for (uint64_t b = 0; b < 200; b += 20)
        if (upsert_range(c, "busy", prefix, b, b + 20, NULL))
            atomic_fetch_add(a->errors, 1);
    const char *del[100];
    char ids[100][24];
    for (int i = 0; i < 100; i++) {
        snprintf(ids[i], sizeof(ids[i]), "%s%d", prefix, 2 * i + 1);
        del[i] = ids[i];
    }
    wire_response *w;
    if (call(app_client_delete(c, "busy", del, 100, &w)) ||
        wire_response_msg(w)->delete_->deleted != 100)
        atomic_fetch_add(a->errors, 1);
    wire_response_free(w);
    float q[DIM];
    vec_of(7, q);
    const app_query_spec qr = {.vectors = q, .n_floats = DIM, .top_k = 5};
    for (int i = 0; i < 10; i++) {
        if (call(app_client_query(c, "busy", &qr, &w)))
            atomic_fetch_add(a->errors, 1);
        wire_response_free(w);
    }
    app_client_free(c);
    return NULL;
}

static void test_concurrent_clients(void)
{
    app_client *a = client_as(S.admin, NULL);
    CU_ASSERT_FATAL(a != NULL);
    CU_ASSERT_EQUAL_FATAL(create_index(a, "busy"), CDX_OK);
    enum { W = 16 };
    pthread_t th[W];
    worker_arg args[W];
    atomic_int errors = 0;
    for (int k = 0; k < W; k++) {
        args[k] = (worker_arg){k, &errors};
        pthread_create(&th[k], NULL, worker, &args[k]);
    }
    for (int k = 0; k < W; k++)
        pthread_join(th[k], NULL);
    CU_ASSERT_EQUAL(atomic_load(&errors), 0);
    /* `a` sat idle while the workers ran; on a slow host (sanitizers, load) that can exceed
     * idle_timeout_s and the daemon rightly closed it: count over a fresh connection. */
    app_client_free(a);
    a = client_as(S.admin, NULL);
    CU_ASSERT_FATAL(a != NULL);
    /* Exactly the even ids of every worker: nothing lost, nothing duplicated. */
    char **ids;
    size_t n = list_all(a, "busy", &ids);
    CU_ASSERT_EQUAL(n, W * 100);
    size_t good = 0;
    for (size_t i = 0; i < n; i++) {
        int k, j;
        if (sscanf(ids[i], "w%d-%d", &k, &j) == 2 && k >= 0 && k < W && j % 2 == 0 && j < 200)
            good++;
        for (size_t m = i + 1; m < n && m < i + 2; m++)
            CU_ASSERT(strcmp(ids[i], ids[m]) != 0);
    }
    CU_ASSERT_EQUAL(good, W * 100);
    free_ids(ids, n);
    app_client_free(a);
}

/* Upserts until told to stop; records the highest batch acknowledged. */
typedef struct loader {
    atomic_bool stop;
    atomic_long acked; /* batches acknowledged: ids L-0 .. L-(acked*50-1) */
} loader;

static void *load(void *p)
{
    loader *l = p;
    app_client *c = client_as(S.admin, NULL);
    if (!c)
        return NULL;
    for (long b = 0; !atomic_load(&l->stop); b++) {
        if (upsert_range(c, "durable", "L-", (uint64_t)b * 50, (uint64_t)b * 50 + 50, NULL))
            break; /* the daemon went away: the last batch was not acknowledged */
        atomic_store(&l->acked, b + 1);
    }
    app_client_free(c);
    return NULL;
}

static void test_restart_and_sigterm(void)
{
    app_client *a = client_as(S.admin, NULL);
    CU_ASSERT_FATAL(a != NULL);
    CU_ASSERT_EQUAL_FATAL(create_index(a, "durable"), CDX_OK);
    app_client_free(a);
    loader l = {0};
    pthread_t th;
    pthread_create(&th, NULL, load, &l);
    /* Let some batches through, then SIGTERM mid-load. */
    while (atomic_load(&l.acked) < 10)
        sched_yield();
    int rc = daemon_stop();
    atomic_store(&l.stop, true);
    pthread_join(th, NULL);
    CU_ASSERT_EQUAL(rc, 0);
    long acked = atomic_load(&l.acked);
    /* Restart on the same token and Redis: every acknowledged item is there. */
    CU_ASSERT_FATAL(daemon_start() == 0);
    a = client_as(S.admin, NULL);
    CU_ASSERT_FATAL(a != NULL);
    char **ids;
    size_t n = list_all(a, "durable", &ids);
    CU_ASSERT(acked >= 10 && n >= (size_t)acked * 50);
    CU_ASSERT(n % 50 == 0); /* batches are all or nothing */
    printf("\n    %ld batches acknowledged before SIGTERM, %zu items after the restart ", acked, n);
    free_ids(ids, n);
    app_client_free(a);
}

/* SIGHUP reloads the CRL: a newly revoked client is refused, everyone else still served. */
static void test_crl_reload(void)
{
    CU_ASSERT_FALSE_FATAL(refused(user));
    const fx_cert *rv[2] = {revoked, user};
    const char *crl = fx_pki_crl(S.pki, &(fx_crl_opts){0}, rv, 2, "crl");
    CU_ASSERT_FATAL(crl != NULL && strcmp(crl, crl_path) == 0);
    kill(daemon_pid, SIGHUP);
    CU_ASSERT_FATAL(fx_notify_wait(notify_fd, "READY=1", 30, NULL, 0) == 0);
    CU_ASSERT(refused(user));
    CU_ASSERT(refused(revoked));
    CU_ASSERT_FALSE(refused(S.admin));
    CU_ASSERT(daemon_alive());
}

int main(void)
{
    int rc = 1;
    fx_redis_opts ro = {.appendonly = 1, .appendfsync = "always"};
    if (fx_stack_open(&S, "appliance", &ro))
        goto out;
    user = fx_pki_issue(S.pki, &(fx_cert_opts){.dns = {"app.example.org"}}, "user");
    other_ca = fx_pki_issue(S.pki, &(fx_cert_opts){.uri = "spiffe://test/admin", .ca = 1}, "other");
    revoked = fx_pki_issue(S.pki, &(fx_cert_opts){.cn = "revoked-user"}, "revoked");
    no_eku = fx_pki_issue(S.pki, &(fx_cert_opts){.cn = "no-eku", .eku = FX_EKU_NONE}, "noeku");
    server_only =
        fx_pki_issue(S.pki, &(fx_cert_opts){.cn = "srv-only", .eku = FX_EKU_SERVER}, "srvonly");
    const fx_cert *rv[1] = {revoked};
    const char *crl = fx_pki_crl(S.pki, &(fx_crl_opts){0}, rv, 1, "crl");
    if (!user || !other_ca || !revoked || !no_eku || !server_only || !crl)
        goto out;
    snprintf(crl_path, sizeof(crl_path), "%s", crl);
    if (write_conf())
        goto out;
    if (daemon_start()) {
        fprintf(stderr, "cipherdexd did not start\n");
        goto out;
    }
    static const fx_test tests[] = {
        {"lifecycle over mutual TLS; admin checks", test_lifecycle},
        {"refused client certificates", test_refused_certificates},
        {"malformed input on the wire", test_malformed_wire},
        {"handshake, slow-receive and idle timeouts", test_timeouts},
        {"16 concurrent clients: nothing lost or duplicated", test_concurrent_clients},
        {"SIGTERM under load loses no acknowledged write; restart", test_restart_and_sigterm},
        {"SIGHUP reloads the CRL", test_crl_reload},
    };
    rc = fx_cunit_run1("appliance", tests, FX_LEN(tests));
out:
    if (fx_stack_close(&S) && !rc)
        rc = 1;
    return rc;
}
