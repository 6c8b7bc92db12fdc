/* Blocking client connection with TLS and frames (see app_client.h). */
#include "app_client.h"

#include <stdbool.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "app_addr.h"
#include "cdx_limits.h"
#include "wire_alloc.h"
#include "wire_frame.h"

struct app_client {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    uint32_t timeout_ms;
    size_t max_frame;
    uint64_t next_id;
    uint64_t sent[64]; /* ids sent and not yet answered (ring) */
    size_t head, count;
    bool broken;
};

static cdx_err ssl_fail(cdx_err code, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "";
    if (e)
        ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    return cdx_fail(code, "%s%s%s", what, buf[0] ? ": " : "", buf);
}

/*
 * A TLS alert from the server about our certificate (TLS 1.3 sends it after
 * the client's handshake is done, so it arrives on the first read): the
 * certificate is refused, and sending again fails the same way. Returns
 * CDX_ERR_UNAUTHENTICATED with a plain reason, or CDX_OK when the error
 * queue holds something else (left in place).
 */
static cdx_err cert_refused(void)
{
    unsigned long e = ERR_peek_error();
    if (ERR_GET_LIB(e) != ERR_LIB_SSL)
        return CDX_OK;
    int reason = ERR_GET_REASON(e);
    if (reason < 1000) /* OpenSSL: 1000 + the alert's code for a received alert */
        return CDX_OK;
    const char *plain;
    switch (reason - 1000) {
    case 42:
        plain = "bad certificate";
        break;
    case 43:
        plain = "unsupported certificate (its extended key usage does not allow TLS client "
                "authentication)";
        break;
    case 44:
        plain = "certificate revoked (on the server's CRL)";
        break;
    case 45:
        plain = "certificate expired, or not yet valid";
        break;
    case 46:
        plain = "certificate unknown";
        break;
    case 48:
        plain = "unknown CA (not issued by a CA the server trusts for clients)";
        break;
    case 49:
        plain = "access denied";
        break;
    case 116:
        plain = "a client certificate is required";
        break;
    default:
        return CDX_OK;
    }
    ERR_clear_error();
    return cdx_fail(CDX_ERR_UNAUTHENTICATED,
                    "the server refused this client's certificate: %s; fix the certificate "
                    "(retrying fails the same way)",
                    plain);
}

/*
 * A write failed: the server may have refused our certificate and closed
 * before our request went out (TLS 1.3 sends the alert after the client's
 * handshake). Read what it sent, if anything is there now, to find the alert.
 */
static cdx_err alert_pending(app_client *c)
{
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    if (poll(&p, 1, 0) <= 0 || !(p.revents & (POLLIN | POLLHUP | POLLERR)))
        return CDX_OK;
    ERR_clear_error();
    uint8_t buf[64];
    int r = SSL_read(c->ssl, buf, sizeof(buf));
    if (r > 0 || SSL_get_error(c->ssl, r) != SSL_ERROR_SSL)
        return CDX_OK;
    return cert_refused();
}

/* Wait until fd is readable (POLLIN) or writable (POLLOUT). */
static cdx_err wait_fd(app_client *c, short ev)
{
    struct pollfd p = {.fd = c->fd, .events = ev};
    int r;
    do
        r = poll(&p, 1, (int)c->timeout_ms);
    while (r < 0 && errno == EINTR);
    if (r == 0)
        return cdx_fail(CDX_ERR_UNAVAILABLE, "timed out after %u ms waiting for the server",
                        c->timeout_ms);
    if (r < 0)
        return cdx_fail(CDX_ERR_UNAVAILABLE, "poll: %s", strerror(errno));
    return CDX_OK;
}

/*
 * A write to a connection the server closed raises SIGPIPE, which would kill
 * the calling program. SSL_write has no MSG_NOSIGNAL, so the signal is
 * blocked for this thread around every TLS call that may write (SSL_connect,
 * SSL_write, SSL_read: TLS reads can write alerts, SSL_shutdown) and a
 * SIGPIPE it caused is consumed: the caller gets CDX_ERR_UNAVAILABLE instead.
 * (A server that drops a slow handshake used to kill a client program here.)
 */
typedef struct pipe_guard {
    sigset_t set, old;
    bool was_pending;
} pipe_guard;

static void pipe_block(pipe_guard *g)
{
    sigset_t pending;
    sigemptyset(&g->set);
    sigaddset(&g->set, SIGPIPE);
    sigpending(&pending);
    g->was_pending = sigismember(&pending, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &g->set, &g->old);
}

static void pipe_restore(pipe_guard *g)
{
    if (!g->was_pending) { /* consume a SIGPIPE our write raised */
        struct timespec zero = {0, 0};
        while (sigtimedwait(&g->set, NULL, &zero) == SIGPIPE)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

/*
 * TLS asked to wait for the socket (a read may need a write and the other way
 * round): wait, *err the outcome, and true. False for any other condition.
 */
static bool ssl_wait(app_client *c, int ssl_error, cdx_err *err)
{
    if (ssl_error != SSL_ERROR_WANT_READ && ssl_error != SSL_ERROR_WANT_WRITE)
        return false;
    *err = wait_fd(c, ssl_error == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT);
    return true;
}

/*
 * Move n bytes to (out) or from the server, waiting on the socket as TLS or
 * TCP asks (a TLS write may need a read and the other way round).
 */
static cdx_err io_xfer_unguarded(app_client *c, uint8_t *p, size_t n, bool out)
{
    const char *what = out ? "sending to the server failed" : "reading from the server failed";
    while (n) {
        ssize_t k;
        if (c->ssl) {
            int len = n > INT32_MAX ? INT32_MAX : (int)n;
            int r = out ? SSL_write(c->ssl, p, len) : SSL_read(c->ssl, p, len);
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                cdx_err err;
                if (ssl_wait(c, e, &err)) {
                    if (err)
                        return err;
                    continue;
                }
                if (e == SSL_ERROR_ZERO_RETURN)
                    return cdx_fail(CDX_ERR_UNAVAILABLE, "the server closed the connection");
                if (e == SSL_ERROR_SSL && (err = cert_refused()))
                    return err;
                if (out && (err = alert_pending(c)))
                    return err;
                return ssl_fail(CDX_ERR_UNAVAILABLE, what);
            }
            k = r;
        } else {
            k = out ? send(c->fd, p, n, MSG_NOSIGNAL) : recv(c->fd, p, n, 0);
            if (k == 0 && !out)
                return cdx_fail(CDX_ERR_UNAVAILABLE, "the server closed the connection");
            if (k < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    cdx_err err = wait_fd(c, out ? POLLOUT : POLLIN);
                    if (err)
                        return err;
                    continue;
                }
                return cdx_fail(CDX_ERR_UNAVAILABLE, "%s: %s", what, strerror(errno));
            }
        }
        p += k;
        n -= (size_t)k;
    }
    return CDX_OK;
}

static cdx_err io_xfer(app_client *c, uint8_t *p, size_t n, bool out)
{
    pipe_guard g;
    pipe_block(&g);
    cdx_err err = io_xfer_unguarded(c, p, n, out);
    pipe_restore(&g);
    return err;
}

static cdx_err io_read(app_client *c, uint8_t *p, size_t n)
{
    return io_xfer(c, p, n, false);
}

static cdx_err io_write(app_client *c, const uint8_t *p, size_t n)
{
    /* Only read from p: io_xfer's pointer is not const because it also reads into it. */
    return io_xfer(c, (uint8_t *)(uintptr_t)p, n, true);
}

static cdx_err tcp_connect(app_client *c, const char *host, uint16_t port)
{
    char ps[8];
    snprintf(ps, sizeof(ps), "%u", port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *ai = NULL;
    int g = getaddrinfo(host, ps, &hints, &ai);
    if (g)
        return cdx_fail(CDX_ERR_UNAVAILABLE, "%s: %s", host, gai_strerror(g));
    cdx_err err = cdx_fail(CDX_ERR_UNAVAILABLE, "%s:%u: no address", host, port);
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
        int fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            continue;
        c->fd = fd;
        int r = connect(fd, a->ai_addr, a->ai_addrlen);
        if (r < 0 && errno == EINPROGRESS) {
            err = wait_fd(c, POLLOUT);
            int so = 0;
            socklen_t sl = sizeof(so);
            if (!err && getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &sl) == 0 && so == 0)
                r = 0;
            else if (!err)
                err = cdx_fail(CDX_ERR_UNAVAILABLE, "connecting to %s:%u: %s", host, port,
                               strerror(so));
        } else if (r < 0) {
            err = cdx_fail(CDX_ERR_UNAVAILABLE, "connecting to %s:%u: %s", host, port,
                           strerror(errno));
        }
        if (r == 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            freeaddrinfo(ai);
            return CDX_OK;
        }
        close(fd);
        c->fd = -1;
    }
    freeaddrinfo(ai);
    return err;
}

/* Drive SSL_connect to the end (the caller holds the SIGPIPE guard). */
static cdx_err handshake(app_client *c)
{
    for (;;) {
        int r = SSL_connect(c->ssl);
        if (r == 1)
            return CDX_OK;
        int e = SSL_get_error(c->ssl, r);
        cdx_err err;
        if (ssl_wait(c, e, &err)) {
            if (err)
                return err;
            continue;
        }
        long v = SSL_get_verify_result(c->ssl);
        if (v != X509_V_OK)
            return cdx_fail(CDX_ERR_UNAUTHENTICATED, "the server certificate was refused: %s",
                            X509_verify_cert_error_string(v));
        if ((err = cert_refused()))
            return err;
        return ssl_fail(CDX_ERR_UNAUTHENTICATED,
                        "TLS handshake failed (does the server accept this client certificate?)");
    }
}

static cdx_err tls_setup(app_client *c, const app_client_opts *o, const char *host)
{
    c->ctx = SSL_CTX_new(TLS_client_method());
    if (!c->ctx)
        return ssl_fail(CDX_ERR_INTERNAL, "SSL_CTX_new");
    SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    if (!o->ca || SSL_CTX_load_verify_locations(c->ctx, o->ca, NULL) != 1)
        return ssl_fail(CDX_ERR_CONFIG, o->ca ? "cannot load the CA file" : "no CA file given");
    if (o->cert &&
        (SSL_CTX_use_certificate_chain_file(c->ctx, o->cert) != 1 ||
         SSL_CTX_use_PrivateKey_file(c->ctx, o->key ? o->key : o->cert, SSL_FILETYPE_PEM) != 1 ||
         SSL_CTX_check_private_key(c->ctx) != 1))
        return ssl_fail(CDX_ERR_CONFIG, "cannot load the client certificate and key");
    c->ssl = SSL_new(c->ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1)
        return ssl_fail(CDX_ERR_INTERNAL, "SSL_new");
    /* Verify the server's name: an IP literal against IP SANs, a name against DNS SANs. */
    X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
    unsigned char ipbuf[16];
    bool is_ip = inet_pton(AF_INET, host, ipbuf) == 1 || inet_pton(AF_INET6, host, ipbuf) == 1;
    if (is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, host) != 1
              : (SSL_set_tlsext_host_name(c->ssl, host) != 1 ||
                 X509_VERIFY_PARAM_set1_host(vp, host, 0) != 1))
        return ssl_fail(CDX_ERR_INTERNAL, "cannot set the expected server name");
    pipe_guard g;
    pipe_block(&g);
    cdx_err err = handshake(c);
    pipe_restore(&g);
    return err;
}

cdx_err app_client_connect(const app_client_opts *o, app_client **out)
{
    char host[APP_ADDR_MAX];
    uint16_t port;
    cdx_err err;
    *out = NULL;
    if (!o || !o->addr)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "no server address");
    if ((err = app_addr_split(o->addr, host, sizeof(host), &port)))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "server address: %s", cdx_err_detail());
    if (port == 0)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "server address `%s`: port 0", o->addr);
    app_client *c = calloc(1, sizeof(*c));
    if (!c)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    c->fd = -1;
    c->timeout_ms = o->timeout_ms ? o->timeout_ms : 30000;
    c->max_frame = o->max_frame ? o->max_frame : CDX_FRAME_MAX_DEFAULT;
    c->next_id = 1;
    if ((err = tcp_connect(c, host, port)) || (!o->insecure && (err = tls_setup(c, o, host)))) {
        app_client_free(c);
        return err;
    }
    *out = c;
    return CDX_OK;
}

void app_client_free(app_client *c)
{
    if (!c)
        return;
    if (c->ssl) {
        pipe_guard g;
        pipe_block(&g);
        if (!c->broken)
            SSL_shutdown(c->ssl); /* best effort close_notify */
        pipe_restore(&g);
        SSL_free(c->ssl);
    }
    SSL_CTX_free(c->ctx);
    if (c->fd >= 0)
        close(c->fd);
    free(c);
}

cdx_err app_client_send(app_client *c, Cipherdex__V1__Request *req, uint64_t *id)
{
    if (c->broken)
        return cdx_fail(CDX_ERR_UNAVAILABLE, "the connection failed earlier; reconnect");
    if (c->count == sizeof(c->sent) / sizeof(c->sent[0]))
        return cdx_fail(CDX_ERR_FAILED_PRECONDITION, "too many requests in flight; receive first");
    req->request_id = c->next_id++;
    uint8_t *frame = NULL;
    size_t len = 0;
    cdx_err err = wire_request_pack(req, c->max_frame, &frame, &len);
    if (err)
        return err;
    err = io_write(c, frame, len);
    if (req->body_case == CIPHERDEX__V1__REQUEST__BODY_CREATE_INDEX) /* may carry a key */
        OPENSSL_cleanse(frame, len);
    free(frame);
    if (err) {
        c->broken = true;
        return err;
    }
    c->sent[(c->head + c->count++) % 64] = req->request_id;
    if (id)
        *id = req->request_id;
    return CDX_OK;
}

cdx_err app_client_recv(app_client *c, wire_response **out)
{
    uint8_t hdr[CDX_FRAME_HDR_LEN];
    cdx_err err;
    *out = NULL;
    if (c->broken)
        return cdx_fail(CDX_ERR_UNAVAILABLE, "the connection failed earlier; reconnect");
    if (!c->count)
        return cdx_fail(CDX_ERR_FAILED_PRECONDITION, "no request is waiting for an answer");
    if ((err = io_read(c, hdr, sizeof(hdr))))
        goto broken;
    size_t len = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 | hdr[3];
    if (len > c->max_frame) {
        err = cdx_fail(CDX_ERR_FRAME_TOO_LARGE,
                       "the server announced a %zu-byte response (cap "
                       "%zu)",
                       len, c->max_frame);
        goto broken;
    }
    uint8_t *body = malloc(len ? len : 1);
    if (!body) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory for a %zu-byte response", len);
        goto broken;
    }
    if ((err = io_read(c, body, len))) {
        free(body);
        goto broken;
    }
    err = wire_response_unpack(body, len, wire_unpack_budget(len), out);
    free(body);
    if (err) {
        err =
            cdx_fail(CDX_ERR_DATA_LOSS, "malformed response from the server: %s", cdx_err_detail());
        goto broken;
    }
    const Cipherdex__V1__Response *r = wire_response_msg(*out);
    uint64_t want = c->sent[c->head];
    c->head = (c->head + 1) % 64;
    c->count--;
    if (r->request_id != want && r->request_id != 0) {
        wire_response_free(*out);
        *out = NULL;
        err = cdx_fail(CDX_ERR_DATA_LOSS, "response to request %llu arrived where %llu was due",
                       (unsigned long long)r->request_id, (unsigned long long)want);
        goto broken;
    }
    if (r->status->code == 0)
        return CDX_OK;
    return cdx_fail((cdx_err)r->status->code, "%s", wire_text(r->status->message));
broken:
    c->broken = true;
    return err;
}

cdx_err app_client_call(app_client *c, Cipherdex__V1__Request *req, wire_response **out)
{
    cdx_err err = app_client_send(c, req, NULL);
    if (err) {
        *out = NULL;
        return err;
    }
    return app_client_recv(c, out);
}

/* ---- retrying ---- */

bool app_request_idempotent(const Cipherdex__V1__Request *req)
{
    if (!req)
        return false;
    switch (req->body_case) {
    case CIPHERDEX__V1__REQUEST__BODY_HEALTH:
    case CIPHERDEX__V1__REQUEST__BODY_DESCRIBE_INDEX:
    case CIPHERDEX__V1__REQUEST__BODY_LIST_INDEXES:
    case CIPHERDEX__V1__REQUEST__BODY_GET:
    case CIPHERDEX__V1__REQUEST__BODY_QUERY:
    case CIPHERDEX__V1__REQUEST__BODY_LIST_IDS:
    case CIPHERDEX__V1__REQUEST__BODY_UPSERT:
    case CIPHERDEX__V1__REQUEST__BODY_DELETE:
    case CIPHERDEX__V1__REQUEST__BODY_ACCEPT_ROLLBACK: /* the same confirm_version again: no-op */
    case CIPHERDEX__V1__REQUEST__BODY_AUDIT_TAIL:
    case CIPHERDEX__V1__REQUEST__BODY_COMPACT: /* merging again merges nothing more */
    case CIPHERDEX__V1__REQUEST__BODY_PURGE:   /* purging again removes nothing more */
        return true;
    default: /* create_index, delete_index, train, rotate (once the first completed, asking
              * again starts one more), and bodies this client does not know */
        return false;
    }
}

bool app_status_retryable(cdx_err code, bool idempotent)
{
    switch (code) {
    case CDX_ERR_ABORTED:
    case CDX_ERR_UNAVAILABLE:
    case CDX_ERR_BUSY:
        return true;
    case CDX_ERR_DEADLINE_EXCEEDED:
    case CDX_ERR_HSM_UNAVAILABLE:
    case CDX_ERR_STORE_UNAVAILABLE:
        return idempotent;
    default:
        return false;
    }
}

/* A pause of `ms` (not a synchronisation: the server is given time to come back). */
static void pause_ms(uint32_t ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

cdx_err app_client_call_retry(app_client **c, const app_client_opts *o, app_retry *r,
                              Cipherdex__V1__Request *req, wire_response **out)
{
    app_retry dflt = {0};
    if (!r)
        r = &dflt;
    unsigned max = r->max_attempts ? r->max_attempts : 8;
    uint32_t delay = r->first_delay_ms ? r->first_delay_ms : 50;
    uint32_t max_delay = r->max_delay_ms ? r->max_delay_ms : 2000;
    int64_t end = now_ms() + (r->total_ms ? r->total_ms : 30000);
    bool idem = app_request_idempotent(req);
    /* Jitter, so clients cut off together do not come back together. */
    uint32_t seed = (uint32_t)now_ms() ^ (uint32_t)(uintptr_t)c;
    cdx_err err = CDX_OK;
    *out = NULL;
    r->attempts = r->reconnects = 0;
    for (;;) {
        bool again;
        r->attempts++;
        err = CDX_OK;
        if (!*c) {
            err = app_client_connect(o, c);
            if (!err)
                r->reconnects++;
        }
        if (err) {
            /* Nothing was sent: a refused or timed-out connection may work later. */
            again = err == CDX_ERR_UNAVAILABLE;
        } else {
            err = app_client_call(*c, req, out);
            if (!err)
                return CDX_OK;
            if (*out) { /* the server answered with a status */
                again = app_status_retryable(err, idem);
            } else { /* transport: the connection is gone, the outcome unknown */
                app_client_free(*c);
                *c = NULL;
                again = idem && err == CDX_ERR_UNAVAILABLE;
            }
        }
        if (!again || r->attempts >= max)
            return err;
        seed = seed * 1103515245u + 12345u;
        uint32_t d = delay / 2 + (delay > 1 ? (seed >> 8) % (delay / 2 + 1) : 0);
        if (now_ms() + d > end)
            return err;
        wire_response_free(*out);
        *out = NULL;
        pause_ms(d);
        delay = delay * 2 > max_delay ? max_delay : delay * 2;
    }
}

/* ---- typed calls ---- */

typedef Cipherdex__V1__Request Req;

/* A C string as a protobuf string field (protobuf-c only reads it). */
static ProtobufCBinaryData str(const char *s)
{
    return s ? wire_str(s) : (ProtobufCBinaryData){0, NULL};
}

/* A request's repeated string field from C strings (free the array after sending). */
static ProtobufCBinaryData *str_array(const char *const *v, size_t n)
{
    ProtobufCBinaryData *a = calloc(n ? n : 1, sizeof(*a));
    if (a)
        for (size_t i = 0; i < n; i++)
            a[i] = str(v[i]);
    return a;
}

static cdx_err no_memory(wire_response **out)
{
    if (out)
        *out = NULL;
    return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory building the request");
}

cdx_err app_client_health(app_client *c, wire_response **out)
{
    Req r = CIPHERDEX__V1__REQUEST__INIT;
    Cipherdex__V1__HealthRequest h = CIPHERDEX__V1__HEALTH_REQUEST__INIT;
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_HEALTH;
    r.health = &h;
    return app_client_call(c, &r, out);
}

cdx_err app_client_create_index(app_client *c, const app_index_spec *spec, wire_response **out)
{
    Req r = CIPHERDEX__V1__REQUEST__INIT;
    Cipherdex__V1__CreateIndexRequest ci = CIPHERDEX__V1__CREATE_INDEX_REQUEST__INIT;
    Cipherdex__V1__UnwrapKey uk = CIPHERDEX__V1__UNWRAP_KEY__INIT;
    Cipherdex__V1__AdoptKey ak = CIPHERDEX__V1__ADOPT_KEY__INIT;
    Cipherdex__V1__ImportKey ik = CIPHERDEX__V1__IMPORT_KEY__INIT;
    ci.name = str(spec->name);
    ci.dimension = spec->dimension;
    ci.metric = str(spec->metric);
    ci.index_type = str(spec->index_type);
    ci.n_lists = spec->n_lists;
    if (spec->key_source == APP_KEY_UNWRAP) {
        uk.kek_name = str(spec->kek_name);
        uk.wrapped_key =
            (ProtobufCBinaryData){spec->wrapped_len, (uint8_t *)(uintptr_t)spec->wrapped};
        ci.key_source_case = CIPHERDEX__V1__CREATE_INDEX_REQUEST__KEY_SOURCE_UNWRAP_KEY;
        ci.unwrap_key = &uk;
    } else if (spec->key_source == APP_KEY_ADOPT) {
        ak.key_id = (ProtobufCBinaryData){spec->adopt_id ? CDX_ID_LEN : 0,
                                          (uint8_t *)(uintptr_t)spec->adopt_id};
        ci.key_source_case = CIPHERDEX__V1__CREATE_INDEX_REQUEST__KEY_SOURCE_ADOPT_KEY;
        ci.adopt_key = &ak;
    } else if (spec->key_source == APP_KEY_IMPORT) {
        ik.key = (ProtobufCBinaryData){spec->import_key ? CDX_KEY_LEN : 0,
                                       (uint8_t *)(uintptr_t)spec->import_key};
        ci.key_source_case = CIPHERDEX__V1__CREATE_INDEX_REQUEST__KEY_SOURCE_IMPORT_KEY;
        ci.import_key = &ik;
    }
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_CREATE_INDEX;
    r.create_index = &ci;
    return app_client_call(c, &r, out);
}

cdx_err app_client_describe_index(app_client *c, const char *name, wire_response **out)
{
    Req r = CIPHERDEX__V1__REQUEST__INIT;
    Cipherdex__V1__DescribeIndexRequest d = CIPHERDEX__V1__DESCRIBE_INDEX_REQUEST__INIT;
    d.name = str(name);
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_DESCRIBE_INDEX;
    r.describe_index = &d;
    return app_client_call(c, &r, out);
}

cdx_err app_client_list_indexes(app_client *c, wire_response **out)
{
    Req r = CIPHERDEX__V1__REQUEST__INIT;
    Cipherdex__V1__ListIndexesRequest l = CIPHERDEX__V1__LIST_INDEXES_REQUEST__INIT;
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_LIST_INDEXES;
    r.list_indexes = &l;
    return app_client_call(c, &r, out);
}

cdx_err app_client_delete_index(app_client *c, const char *name, const uint8_t *confirm_id,
                                wire_response **out)
{
    Req r = CIPHERDEX__V1__REQUEST__INIT;
    Cipherdex__V1__DeleteIndexRequest d = CIPHERDEX__V1__DELETE_INDEX_REQUEST__INIT;
    d.name = str(name);
    if (confirm_id)
        d.confirm_id = (ProtobufCBinaryData){CDX_ID_LEN, (uint8_t *)(uintptr_t)confirm_id};
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_DELETE_INDEX;
    r.delete_index = &d;
    return app_client_call(c, &r, out);
}

cdx_err app_client_accept_rollback(app_client *c, const char *index, uint64_t confirm_version,
                                   wire_response **out)
{
    Req r = CIPHERDEX__V1__REQUEST__INIT;
    Cipherdex__V1__AcceptRollbackRequest a = CIPHERDEX__V1__ACCEPT_ROLLBACK_REQUEST__INIT;
    a.index = str(index);
    a.confirm_version = confirm_version;
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_ACCEPT_ROLLBACK;
    r.accept_rollback = &a;
    return app_client_call(c, &r, out);
}

cdx_err app_client_attest(app_client *c, const char *index, const uint8_t *nonce, size_t nonce_len,
                          wire_response **out)
{
    Req r = CIPHERDEX__V1__REQUEST__INIT;
    Cipherdex__V1__AttestRequest a = CIPHERDEX__V1__ATTEST_REQUEST__INIT;
    a.index = str(index);
    a.nonce.data = (uint8_t *)nonce;
    a.nonce.len = nonce_len;
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_ATTEST;
    r.attest = &a;
    return app_client_call(c, &r, out);
}

cdx_err app_client_train(app_client *c, const char *index, const app_train_opts *o,
                         wire_response **out)
{
    Req r = CIPHERDEX__V1__REQUEST__INIT;
    Cipherdex__V1__TrainRequest t = CIPHERDEX__V1__TRAIN_REQUEST__INIT;
    t.index = str(index);
    if (o) {
        t.n_lists = o->n_lists;
        t.max_iters = o->max_iters;
        t.tolerance = o->tolerance;
        t.seed = o->seed;
        t.max_points_per_list = o->max_points_per_list;
    }
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_TRAIN;
    r.train = &t;
    return app_client_call(c, &r, out);
}

cdx_err app_client_upsert_send(app_client *c, const char *index, const app_item *items, size_t n,
                               uint64_t *id)
{
    Req r = CIPHERDEX__V1__REQUEST__INIT;
    Cipherdex__V1__UpsertRequest u = CIPHERDEX__V1__UPSERT_REQUEST__INIT;
    Cipherdex__V1__Item *it = calloc(n ? n : 1, sizeof(*it));
    Cipherdex__V1__Item **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
    cdx_err err;
    if (!it || !ptrs) {
        err = no_memory(NULL);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        cipherdex__v1__item__init(&it[i]);
        it[i].id = str(items[i].id);
        it[i].vector = (float *)(uintptr_t)items[i].vector; /* only read when packing */
        it[i].n_vector = items[i].dim;
        if (items[i].metadata)
            it[i].metadata = str(items[i].metadata);
        if (items[i].contents_len)
            it[i].contents = (ProtobufCBinaryData){items[i].contents_len,
                                                   (uint8_t *)(uintptr_t)items[i].contents};
        ptrs[i] = &it[i];
    }
    u.index = str(index);
    u.n_items = n;
    u.items = ptrs;
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_UPSERT;
    r.upsert = &u;
    err = app_client_send(c, &r, id);
out:
    free(it);
    free(ptrs);
    return err;
}

cdx_err app_client_upsert(app_client *c, const char *index, const app_item *items, size_t n,
                          wire_response **out)
{
    cdx_err err = app_client_upsert_send(c, index, items, n, NULL);
    if (err) {
        *out = NULL;
        return err;
    }
    return app_client_recv(c, out);
}

cdx_err app_client_query(app_client *c, const char *index, const app_query_spec *q,
                         wire_response **out)
{
    Req r = CIPHERDEX__V1__REQUEST__INIT;
    Cipherdex__V1__QueryRequest qr = CIPHERDEX__V1__QUERY_REQUEST__INIT;
    qr.index = str(index);
    qr.vectors = (float *)(uintptr_t)q->vectors; /* only read when packing */
    qr.n_vectors = q->n_floats;
    qr.top_k = q->top_k;
    qr.n_probes = q->n_probes;
    qr.max_probes = q->max_probes;
    if (q->filter)
        qr.filter = str(q->filter);
    qr.include_vectors = (q->include & APP_INCLUDE_VECTORS) != 0;
    qr.include_metadata = (q->include & APP_INCLUDE_METADATA) != 0;
    qr.include_contents = (q->include & APP_INCLUDE_CONTENTS) != 0;
    qr.min_version = q->min_version;
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_QUERY;
    r.query = &qr;
    return app_client_call(c, &r, out);
}

cdx_err app_client_get(app_client *c, const char *index, const char *const *ids, size_t n,
                       unsigned include, uint64_t min_version, wire_response **out)
{
    Req r = CIPHERDEX__V1__REQUEST__INIT;
    Cipherdex__V1__GetRequest g = CIPHERDEX__V1__GET_REQUEST__INIT;
    ProtobufCBinaryData *a = str_array(ids, n);
    if (!a)
        return no_memory(out);
    g.index = str(index);
    g.ids = a;
    g.n_ids = n;
    g.include_vectors = (include & APP_INCLUDE_VECTORS) != 0;
    g.include_metadata = (include & APP_INCLUDE_METADATA) != 0;
    g.include_contents = (include & APP_INCLUDE_CONTENTS) != 0;
    g.min_version = min_version;
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_GET;
    r.get = &g;
    cdx_err err = app_client_call(c, &r, out);
    free(a);
    return err;
}

cdx_err app_client_delete(app_client *c, const char *index, const char *const *ids, size_t n,
                          wire_response **out)
{
    Req r = CIPHERDEX__V1__REQUEST__INIT;
    Cipherdex__V1__DeleteRequest d = CIPHERDEX__V1__DELETE_REQUEST__INIT;
    ProtobufCBinaryData *a = str_array(ids, n);
    if (!a)
        return no_memory(out);
    d.index = str(index);
    d.ids = a;
    d.n_ids = n;
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_DELETE;
    r.delete_ = &d;
    cdx_err err = app_client_call(c, &r, out);
    free(a);
    return err;
}

cdx_err app_client_list_ids(app_client *c, const char *index, const char *cursor, uint32_t limit,
                            wire_response **out)
{
    Req r = CIPHERDEX__V1__REQUEST__INIT;
    Cipherdex__V1__ListIdsRequest l = CIPHERDEX__V1__LIST_IDS_REQUEST__INIT;
    l.index = str(index);
    l.limit = limit;
    if (cursor)
        l.cursor = str(cursor);
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_LIST_IDS;
    r.list_ids = &l;
    return app_client_call(c, &r, out);
}

cdx_err app_client_audit_tail(app_client *c, uint32_t limit, wire_response **out)
{
    Cipherdex__V1__AuditTailRequest t = CIPHERDEX__V1__AUDIT_TAIL_REQUEST__INIT;
    t.limit = limit;
    Cipherdex__V1__Request r = CIPHERDEX__V1__REQUEST__INIT;
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_AUDIT_TAIL;
    r.audit_tail = &t;
    return app_client_call(c, &r, out);
}

cdx_err app_client_rotate(app_client *c, const char *index, bool wait, bool new_key,
                          wire_response **out)
{
    Cipherdex__V1__RotateRequest k = CIPHERDEX__V1__ROTATE_REQUEST__INIT;
    k.index = str(index);
    k.wait = wait;
    k.new_key = new_key;
    Cipherdex__V1__Request r = CIPHERDEX__V1__REQUEST__INIT;
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_ROTATE;
    r.rotate = &k;
    return app_client_call(c, &r, out);
}

cdx_err app_client_compact(app_client *c, const char *index, wire_response **out)
{
    Cipherdex__V1__CompactRequest k = CIPHERDEX__V1__COMPACT_REQUEST__INIT;
    k.index = str(index);
    Cipherdex__V1__Request r = CIPHERDEX__V1__REQUEST__INIT;
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_COMPACT;
    r.compact = &k;
    return app_client_call(c, &r, out);
}

cdx_err app_client_purge(app_client *c, wire_response **out)
{
    Cipherdex__V1__PurgeRequest k = CIPHERDEX__V1__PURGE_REQUEST__INIT;
    Cipherdex__V1__Request r = CIPHERDEX__V1__REQUEST__INIT;
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_PURGE;
    r.purge = &k;
    return app_client_call(c, &r, out);
}
