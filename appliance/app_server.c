/* The network front end on libevent (see app_server.h). */
#include "app_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "app_addr.h"
#include "app_flow.h"
#include "app_policy.h"
#include "app_tls.h"
#include "cdx_hex.h"
#include "cdx_log.h"
#include "wire_frame.h"
#include "wire_msg.h"
#include "cdx_time.h"

#define TICK_MS             250          /* timeout checks per connection */
#define READ_HIGH_WATER     (256u << 10) /* bytes libevent buffers before it stops reading */
#define ACCEPT_PAUSE_MIN_MS 50           /* accept back-off after EMFILE & co, doubling ... */
#define ACCEPT_PAUSE_MAX_MS 1000         /* ... up to this */
#define ACCEPT_LOG_EVERY_MS 10000 /* at most one accept_paused / handshake_evicted line each */

typedef struct conn conn;

typedef struct req {
    app_job job; /* first: the pool hands back app_job pointers */
    conn *c;
    uint8_t *frame;
    size_t len;
    uint64_t charge;
    app_dispatch_result res;
    struct req *next;
} req;

struct conn {
    app_server *srv;
    struct bufferevent *bev;
    struct event *tick;
    app_flow flow;
    wire_dec *dec;
    char principal[CDX_PRINCIPAL_MAX + 9]; /* room for "unbound:" (a principal from the wrong CA) */
    char peer[64];
    uint8_t src[16]; /* source address (IPv4 in the first 4 bytes): the per-source cap */
    uint8_t src_len;
    bool tls, handshaken, closing, close_after_flush, header_charged, budget_wait, paused;
    bool handshaking;   /* on the server's handshake list */
    req *qhead, *qtail; /* received, waiting to run */
    req *running;       /* on a worker */
    conn *prev, *next;
    conn *hs_prev, *hs_next; /* handshake list, oldest first */
};

/* A log line at most every ACCEPT_LOG_EVERY_MS; the events in between are counted. */
typedef struct rate_log {
    int64_t last_ms;
    uint64_t suppressed;
} rate_log;

struct app_server {
    struct event_base *base;
    const app_config *cfg;
    app_tls *tls;
    app_pool *pool;
    const app_dispatch_env *env;
    app_metrics *m;
    struct evconnlistener *lis;
    uint16_t port;
    app_flow_limits lim;
    app_budget budget;
    conn *conns;
    size_t nconns;
    /* Connections still in their TLS handshake: capped globally and per source address, the
     * oldest evicted first (preferring those that never sent a ClientHello), so unauthenticated
     * sockets cannot hold the connection cap (docs/CONFIG.md, max_handshaking). */
    conn *hs_head, *hs_tail;
    size_t nhs;
    rate_log evict_log;
    /* Accept back-off: on EMFILE/ENFILE (or another accept failure) the listener pauses, the
     * reserved descriptors are released for the rest of the process, and accepting resumes
     * only once they can be reserved again (a timer, or at once when a connection closes). */
    int reserve[CDX_ACCEPT_RESERVE_FDS];
    size_t nreserve;
    struct event *accept_timer;
    bool accept_paused;
    uint32_t accept_backoff_ms;
    rate_log accept_log;
    struct refused_drain *lingering; /* refused handshakes still draining (linger_close) */
    size_t nlinger;
    size_t nwaiting;                /* connections with a frame waiting for budget */
    bool in_release, release_again; /* budget_released is not re-entered */
    bool draining;
    void (*drain_done)(void *);
    void *drain_arg;
};

static void conn_process(conn *c);
static void drain_check(app_server *s);

static void req_free(req *r)
{
    if (!r)
        return;
    free(r->frame);
    free(r->res.frame);
    free(r);
}

static void run_job(app_job *j)
{
    req *r = (req *)j;
    app_dispatch(r->c->srv->env, r->c->principal, r->frame, r->len, &r->res);
    if (r->res.wipe_request)
        OPENSSL_cleanse(r->frame, r->len);
    free(r->frame); /* the request bytes are done with */
    r->frame = NULL;
}

/* Free a connection whose worker job (if any) has come back. */
static void budget_released(app_server *s);

static void hs_remove(app_server *s, conn *c)
{
    if (!c->handshaking)
        return;
    if (c->hs_prev)
        c->hs_prev->hs_next = c->hs_next;
    else
        s->hs_head = c->hs_next;
    if (c->hs_next)
        c->hs_next->hs_prev = c->hs_prev;
    else
        s->hs_tail = c->hs_prev;
    c->hs_prev = c->hs_next = NULL;
    c->handshaking = false;
    s->nhs--;
}

static void conn_destroy(conn *c)
{
    app_server *s = c->srv;
    hs_remove(s, c);
    if (c->budget_wait)
        s->nwaiting--;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    app_flow_close(&c->flow);
    for (req *r = c->qhead, *n; r; r = n) {
        n = r->next;
        req_free(r);
    }
    if (c->tick)
        event_free(c->tick);
    if (c->bev)
        bufferevent_free(c->bev); /* closes the socket and frees the SSL */
    wire_dec_free(c->dec);
    if (s->m)
        app_metrics_gauge_add(s->m, APP_G_CONNECTIONS, -1);
    free(c);
    /* A descriptor came free: a paused listener may resume (on the next loop turn). */
    if (s->accept_paused && s->accept_timer)
        event_active(s->accept_timer, EV_TIMEOUT, 1);
    budget_released(s); /* what it held may let a waiting frame in */
    drain_check(s);
}

/* Close now, or once the running job comes back. */
static void conn_close(conn *c, const char *why)
{
    if (c->closing)
        return;
    c->closing = true;
    cdx_log(CDX_LOG_DEBUG, "conn_close", "peer=%s reason=%s", c->peer, why);
    if (c->bev)
        bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    if (!c->running)
        conn_destroy(c);
}

/*
 * Retry budget waits after budget was given back. Nothing to do (the usual
 * case) costs nothing; a call from inside the loop (a connection it resumes
 * closes) only asks the running loop to go round again.
 */
static void budget_released(app_server *s)
{
    if (s->in_release) {
        s->release_again = true;
        return;
    }
    s->in_release = true;
    do {
        s->release_again = false;
        for (conn *c = s->conns, *n; c && s->nwaiting; c = n) {
            n = c->next;
            if (c->budget_wait && !c->closing && app_flow_retry(&c->flow)) {
                c->budget_wait = false;
                s->nwaiting--;
                c->header_charged = true;
                conn_process(c);
            }
        }
    } while (s->release_again && s->nwaiting);
    s->in_release = false;
}

/* Start the connection's next request, unless its unread answers are above the high-water mark. */
static void start_next(conn *c)
{
    if (c->running || !c->qhead || c->closing || !app_flow_may_start(&c->flow))
        return;
    req *r = c->qhead;
    c->qhead = r->next;
    if (!c->qhead)
        c->qtail = NULL;
    r->next = NULL;
    c->running = r;
    app_pool_submit(c->srv->pool, &r->job);
}

/*
 * Answer with a status only and close once it is written: the stream cannot
 * continue (a frame over the cap cannot be skipped without reading it).
 */
static void fail_stream(conn *c, cdx_err err, const char *why)
{
    uint8_t *f = NULL;
    size_t n = 0;
    if (c->srv->m)
        app_metrics_inc(c->srv->m, APP_C_FRAMES_REJECTED, 1);
    cdx_log(CDX_LOG_INFO, "conn_reject", "peer=%s code=%s", c->peer, cdx_err_name(err));
    if (wire_response_error(0, err, why, &f, &n) || !c->bev) {
        free(f);
        conn_close(c, cdx_err_name(err));
        return;
    }
    c->close_after_flush = true;
    bufferevent_disable(c->bev, EV_READ);
    c->paused = true;
    bufferevent_write(c->bev, f, n);
    free(f);
}

/* Feed buffered input to the decoder while admission control allows. */
static void conn_process(conn *c)
{
    app_server *s = c->srv;
    if (c->closing || !c->handshaken || c->close_after_flush)
        return;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    while (!c->closing && !c->budget_wait && app_flow_may_read(&c->flow) && !s->draining) {
        size_t avail = evbuffer_get_length(in);
        if (avail == 0)
            break;
        size_t pending = wire_dec_pending(c->dec);
        /* Header first: the body is read only once the budget has granted its length. */
        size_t want =
            pending < CDX_FRAME_HDR_LEN ? CDX_FRAME_HDR_LEN - pending : wire_dec_missing(c->dec);
        if (want > avail)
            want = avail;
        const uint8_t *p = evbuffer_pullup(in, (ev_ssize_t)want);
        size_t used = 0;
        cdx_err err = wire_dec_feed(c->dec, p, want, &used);
        if (err) {
            char why[256];
            snprintf(why, sizeof(why), "%s", cdx_err_detail());
            fail_stream(c, err, why);
            return;
        }
        evbuffer_drain(in, used);
        int64_t t = cdx_mono_ms();
        app_flow_bytes(&c->flow, used, t);
        if (!wire_dec_ready(c->dec) && wire_dec_pending(c->dec) >= CDX_FRAME_HDR_LEN &&
            !c->header_charged) {
            uint64_t len = wire_dec_pending(c->dec) + wire_dec_missing(c->dec) - CDX_FRAME_HDR_LEN;
            c->header_charged = true;
            if (!app_flow_frame_header(&c->flow, len, t)) {
                c->header_charged = false;
                c->budget_wait = true;
                s->nwaiting++;
                if (s->m)
                    app_metrics_inc(s->m, APP_C_BUDGET_WAITS, 1);
                break;
            }
        }
        if (wire_dec_ready(c->dec)) {
            if (!c->header_charged) /* an empty frame: header and body came together */
                app_flow_frame_header(&c->flow, 0, t);
            req *r = calloc(1, sizeof(*r));
            if (!r) {
                conn_close(c, "oom");
                return;
            }
            if (wire_dec_take(c->dec, &r->frame, &r->len) != CDX_OK) { /* ready: cannot fail */
                free(r);
                conn_close(c, "frame");
                return;
            }
            r->job.run = run_job;
            r->c = c;
            r->charge = app_flow_frame_done(&c->flow, t);
            c->header_charged = false;
            if (c->qtail)
                c->qtail->next = r;
            else
                c->qhead = r;
            c->qtail = r;
            start_next(c);
        }
    }
    /* Pause the socket while admission control says no; resume when it says yes. */
    bool may = !c->closing && !c->budget_wait && app_flow_may_read(&c->flow) && !s->draining;
    if (!may && !c->paused && c->bev) {
        bufferevent_disable(c->bev, EV_READ);
        c->paused = true;
        if (s->m && !s->draining)
            app_metrics_inc(s->m, APP_C_BUDGET_WAITS, 1);
    } else if (may && c->paused && c->bev) {
        bufferevent_enable(c->bev, EV_READ);
        c->paused = false;
    }
}

static void on_read(struct bufferevent *bev, void *arg)
{
    (void)bev;
    conn_process(arg);
}

/* Output drained: every queued response is written; release their charges. */
static void on_write(struct bufferevent *bev, void *arg)
{
    conn *c = arg;
    (void)bev;
    if (c->closing)
        return;
    if (c->close_after_flush && !c->running && !c->qhead) {
        conn_close(c, "rejected");
        return;
    }
    app_flow_written(&c->flow, c->flow.out_queued, cdx_mono_ms());
    start_next(c); /* requests held back by the high-water mark */
    conn_process(c);
    budget_released(c->srv); /* the answers' charge is back */
    drain_check(c->srv);
}

/*
 * A refused client certificate: OpenSSL has written the alert to the socket.
 * Closing now would answer the client's first request (TLS 1.3 clients send
 * it before the alert arrives) with a reset that discards the alert, and
 * the client would see a dropped connection instead of why it was refused.
 * So the write side is shut and what the client sends is read and dropped
 * for up to CDX_LINGER_MS before the socket is closed; at most
 * CDX_LINGER_MAX sockets linger at once (beyond that: closed at once).
 */
struct refused_drain {
    app_server *s;
    int fd;
    struct event *ev;
    struct refused_drain *prev, *next;
};

static void drain_free(struct refused_drain *l)
{
    app_server *s = l->s;
    if (l->prev)
        l->prev->next = l->next;
    else
        s->lingering = l->next;
    if (l->next)
        l->next->prev = l->prev;
    event_free(l->ev);
    close(l->fd);
    s->nlinger--;
    free(l);
}

static void linger_done(evutil_socket_t fd, short what, void *arg)
{
    struct refused_drain *l = arg;
    char buf[512];
    if (what & EV_READ) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR)))
            return; /* more may come: keep draining until EOF or the timeout */
    }
    drain_free(l);
}

static void linger_close(app_server *s, struct bufferevent *bev)
{
    evutil_socket_t fd = bufferevent_getfd(bev);
    if (fd < 0 || s->nlinger >= CDX_LINGER_MAX)
        return;
    struct refused_drain *l = calloc(1, sizeof(*l));
    if (!l)
        return;
    l->s = s;
    l->fd = dup(fd);
    if (l->fd < 0) {
        free(l);
        return;
    }
    shutdown(l->fd, SHUT_WR);
    l->ev = event_new(s->base, l->fd, EV_READ | EV_PERSIST, linger_done, l);
    struct timeval tv = {CDX_LINGER_MS / 1000, (CDX_LINGER_MS % 1000) * 1000};
    if (!l->ev || event_add(l->ev, &tv)) {
        if (l->ev)
            event_free(l->ev);
        close(l->fd);
        free(l);
        return;
    }
    s->nlinger++;
    l->next = s->lingering;
    if (l->next)
        l->next->prev = l;
    s->lingering = l;
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    conn *c = arg;
    app_server *s = c->srv;
    if (what & BEV_EVENT_CONNECTED) { /* TLS handshake done (verify callback already ran) */
        SSL *ssl = bufferevent_openssl_get_ssl(bev);
        if (app_tls_principal(ssl, c->principal, sizeof(c->principal)) != CDX_OK) {
            if (s->m)
                app_metrics_inc(s->m, APP_C_HANDSHAKE_FAILED, 1);
            cdx_log(CDX_LOG_WARN, "tls_refused", "peer=%s reason=principal", c->peer);
            conn_close(c, "principal");
            return;
        }
        /* A principal the policy binds to a CA ([ca] sections) is only itself from that CA:
         * from another CA in client_ca it becomes "unbound:...", which no grant names. */
        uint8_t issuer[32];
        bool have_issuer = app_tls_issuer_sha256(ssl, issuer) == CDX_OK;
        if (!app_policy_issuer_ok(s->env ? s->env->policy : NULL, c->principal,
                                  have_issuer ? issuer : NULL)) {
            char fp[65];
            cdx_hex_encode(issuer, have_issuer ? 32 : 0, fp);
            cdx_log(CDX_LOG_WARN, "principal_wrong_issuer",
                    "peer=%s principal=\"%s\" issuer_sha256=%s msg=\"the policy accepts this "
                    "principal only from the CAs its [ca] sections name\"",
                    c->peer, c->principal, have_issuer ? fp : "-");
            char bound[sizeof(c->principal)];
            snprintf(bound, sizeof(bound), "unbound:%.*s", CDX_PRINCIPAL_MAX, c->principal);
            memcpy(c->principal, bound, sizeof(bound));
        }
        c->handshaken = true;
        hs_remove(s, c);
        app_flow_handshake_done(&c->flow, cdx_mono_ms());
        cdx_log(CDX_LOG_INFO, "conn_open", "peer=%s principal=\"%s\" tls=%s", c->peer, c->principal,
                SSL_get_version(ssl));
        conn_process(c);
        return;
    }
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
        if (!c->handshaken && c->tls) {
            unsigned long e = bufferevent_get_openssl_error(bev);
            char buf[256] = "";
            if (e)
                ERR_error_string_n(e, buf, sizeof(buf));
            if (s->m)
                app_metrics_inc(s->m, APP_C_HANDSHAKE_FAILED, 1);
            cdx_log(CDX_LOG_WARN, "tls_refused", "peer=%s openssl=\"%s\"", c->peer, buf);
            linger_close(s, bev);
        } else if (wire_dec_pending(c->dec)) {
            cdx_log(CDX_LOG_INFO, "conn_truncated", "peer=%s pending=%zu", c->peer,
                    wire_dec_pending(c->dec));
        }
        conn_close(c, what & BEV_EVENT_EOF ? "eof" : "error");
    }
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    conn *c = arg;
    (void)fd;
    (void)what;
    if (c->closing)
        return;
    app_flow_verdict v = app_flow_check(&c->flow, cdx_mono_ms());
    if (v == APP_FLOW_OK)
        return;
    static const char *const why[] = {"", "handshake-timeout", "idle-timeout", "too-slow",
                                      "stalled-reader"};
    if (c->srv->m)
        app_metrics_inc(
            c->srv->m,
            v == APP_FLOW_HANDSHAKE_TIMEOUT ? APP_C_HANDSHAKE_FAILED : APP_C_CONN_TIMEOUT, 1);
    cdx_log(CDX_LOG_INFO, "conn_timeout", "peer=%s reason=%s", c->peer, why[v]);
    conn_close(c, why[v]);
}

static void peer_name(const struct sockaddr *sa, char *out, size_t cap)
{
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)(const void *)sa;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        port = ntohs(a->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)(const void *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        port = ntohs(a->sin6_port);
    }
    snprintf(out, cap, sa->sa_family == AF_INET6 ? "[%s]:%u" : "%s:%u", host, port);
}

/* true when a line may be logged now; otherwise the event is counted in rl->suppressed. */
static bool rate_log_ok(rate_log *rl, int64_t now)
{
    if (rl->last_ms && now - rl->last_ms < ACCEPT_LOG_EVERY_MS) {
        rl->suppressed++;
        return false;
    }
    rl->last_ms = now;
    return true;
}

static void source_of(const struct sockaddr *sa, conn *c)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)(const void *)sa;
        memcpy(c->src, &a->sin_addr, 4);
        c->src_len = 4;
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)(const void *)sa;
        memcpy(c->src, &a->sin6_addr, 16);
        c->src_len = 16;
    }
}

static bool same_source(const conn *a, const conn *b)
{
    return a->src_len == b->src_len && memcmp(a->src, b->src, a->src_len) == 0;
}

/* Has this handshake not started (no ClientHello read)? Those go first. */
static bool hs_silent(const conn *c)
{
    SSL *ssl = c->bev ? bufferevent_openssl_get_ssl(c->bev) : NULL;
    return ssl && SSL_in_before(ssl);
}

/* The handshake to evict among those from like's source (like NULL: any): oldest silent, else
 * oldest. */
static conn *hs_victim(app_server *s, const conn *like)
{
    conn *oldest = NULL;
    for (conn *c = s->hs_head; c; c = c->hs_next) {
        if (c->closing || (like && !same_source(c, like)))
            continue;
        if (hs_silent(c))
            return c;
        if (!oldest)
            oldest = c;
    }
    return oldest;
}

static void hs_evict(app_server *s, conn *victim, const char *why)
{
    if (s->m)
        app_metrics_inc(s->m, APP_C_HANDSHAKE_EVICTED, 1);
    if (rate_log_ok(&s->evict_log, cdx_mono_ms())) {
        cdx_log(CDX_LOG_WARN, "handshake_evicted",
                "peer=%s reason=%s handshaking=%zu suppressed=%llu", victim->peer, why, s->nhs,
                (unsigned long long)s->evict_log.suppressed);
        s->evict_log.suppressed = 0;
    }
    conn_close(victim, why);
}

/*
 * Make room for a new handshake from c's source: over the per-source cap the
 * oldest handshake of that source goes, over the global cap the oldest of
 * all; handshakes that have not sent a byte of TLS go before those under way.
 */
static void hs_make_room(app_server *s, const conn *c)
{
    uint32_t cap = s->cfg->max_handshaking < s->cfg->max_connections ? s->cfg->max_handshaking
                                                                     : s->cfg->max_connections;
    size_t same = 0;
    for (conn *h = s->hs_head; h; h = h->hs_next)
        same += same_source(h, c);
    if (same >= s->cfg->max_handshaking_per_source) {
        conn *v = hs_victim(s, c);
        if (v)
            hs_evict(s, v, "handshakes-per-source");
    }
    while (s->nhs >= cap) {
        conn *v = hs_victim(s, NULL);
        if (!v)
            break;
        hs_evict(s, v, "handshakes");
    }
}

static void hs_add(app_server *s, conn *c)
{
    c->handshaking = true;
    c->hs_prev = s->hs_tail;
    c->hs_next = NULL;
    if (s->hs_tail)
        s->hs_tail->hs_next = c;
    else
        s->hs_head = c;
    s->hs_tail = c;
    s->nhs++;
}

/* Take the reserved descriptors back; true when all are held. */
static bool reserve_fill(app_server *s)
{
    while (s->nreserve < CDX_ACCEPT_RESERVE_FDS) {
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return false;
        s->reserve[s->nreserve++] = fd;
    }
    return true;
}

static void reserve_release(app_server *s)
{
    while (s->nreserve)
        close(s->reserve[--s->nreserve]);
}

static void accept_timer_arm(app_server *s)
{
    struct timeval tv = {s->accept_backoff_ms / 1000, (s->accept_backoff_ms % 1000) * 1000};
    evtimer_add(s->accept_timer, &tv);
}

/*
 * accept() failed with something other than "try again" (EMFILE, ENFILE,
 * ENOBUFS, ENOMEM): pause the listener instead of spinning on a socket that
 * stays readable, give the reserved descriptors back to the rest of the
 * process, and try again after a back-off or when a connection closes.
 */
static void on_accept_error(struct evconnlistener *l, void *arg)
{
    app_server *s = arg;
    int e = EVUTIL_SOCKET_ERROR();
    (void)l;
    if (!s->accept_paused) {
        evconnlistener_disable(s->lis);
        s->accept_paused = true;
    }
    reserve_release(s);
    s->accept_backoff_ms = s->accept_backoff_ms ? s->accept_backoff_ms * 2 : ACCEPT_PAUSE_MIN_MS;
    if (s->accept_backoff_ms > ACCEPT_PAUSE_MAX_MS)
        s->accept_backoff_ms = ACCEPT_PAUSE_MAX_MS;
    if (s->m)
        app_metrics_inc(s->m, APP_C_ACCEPT_PAUSED, 1);
    if (rate_log_ok(&s->accept_log, cdx_mono_ms())) {
        cdx_log(CDX_LOG_ERROR, "accept_paused",
                "errno=%d msg=\"%s\" connections=%zu backoff_ms=%u suppressed=%llu hint=\"raise "
                "LimitNOFILE or lower max_connections\"",
                e, strerror(e), s->nconns, s->accept_backoff_ms,
                (unsigned long long)s->accept_log.suppressed);
        s->accept_log.suppressed = 0;
    }
    accept_timer_arm(s);
}

/* Resume accepting once the reserve is whole again (else wait some more). */
static void on_accept_timer(evutil_socket_t fd, short what, void *arg)
{
    app_server *s = arg;
    (void)fd;
    (void)what;
    if (!s->accept_paused || s->draining)
        return;
    if (!reserve_fill(s)) {
        if (!evtimer_pending(s->accept_timer, NULL))
            accept_timer_arm(s);
        return;
    }
    evtimer_del(s->accept_timer);
    s->accept_paused = false;
    evconnlistener_enable(s->lis);
    cdx_log(CDX_LOG_INFO, "accept_resumed", "connections=%zu", s->nconns);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int slen,
                      void *arg)
{
    app_server *s = arg;
    (void)l;
    (void)slen;
    s->accept_backoff_ms = 0; /* accepting works again */
    if (s->draining || s->nconns >= s->cfg->max_connections) {
        if (s->m)
            app_metrics_inc(s->m, APP_C_CONN_REFUSED, 1);
        evutil_closesocket(fd);
        return;
    }
    conn *c = calloc(1, sizeof(*c));
    if (!c) {
        evutil_closesocket(fd);
        return;
    }
    c->srv = s;
    peer_name(sa, c->peer, sizeof(c->peer));
    source_of(sa, c);
    if (s->tls)
        hs_make_room(s, c);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* small answers, no Nagle */
    c->dec = wire_dec_new((size_t)s->cfg->max_frame_bytes);
    c->tls = s->tls != NULL;
    /* A cap below the first-frame cap already bounds the first frame. */
    if (c->dec && !c->tls && (size_t)s->cfg->max_frame_bytes > CDX_FRAME_FIRST_INSECURE &&
        wire_dec_set_first_max(c->dec, CDX_FRAME_FIRST_INSECURE) != CDX_OK) {
        wire_dec_free(c->dec);
        c->dec = NULL;
    }
    if (c->tls) {
        SSL *ssl = app_tls_ssl_new(s->tls);
        c->bev = ssl ? bufferevent_openssl_socket_new(s->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                      BEV_OPT_CLOSE_ON_FREE)
                     : NULL;
        if (!c->bev) {
            if (ssl)
                SSL_free(ssl);
        }
    } else {
        c->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    c->tick = event_new(s->base, -1, EV_PERSIST, on_tick, c);
    if (!c->dec || !c->bev || !c->tick) {
        if (!c->bev)
            evutil_closesocket(fd);
        if (c->bev)
            bufferevent_free(c->bev);
        if (c->tick)
            event_free(c->tick);
        wire_dec_free(c->dec);
        free(c);
        return;
    }
    app_flow_init(&c->flow, &s->lim, &s->budget, cdx_mono_ms());
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    if (c->tls)
        hs_add(s, c);
    if (s->m) {
        app_metrics_inc(s->m, APP_C_CONN_ACCEPTED, 1);
        app_metrics_gauge_add(s->m, APP_G_CONNECTIONS, 1);
    }
    struct timeval tv = {0, TICK_MS * 1000};
    event_add(c->tick, &tv);
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    bufferevent_setwatermark(c->bev, EV_READ, 0, READ_HIGH_WATER);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    if (!c->tls) {
        snprintf(c->principal, sizeof(c->principal), "anonymous");
        c->handshaken = true;
        app_flow_handshake_done(&c->flow, cdx_mono_ms());
    }
}

void app_server_completions(app_server *s, app_job *list)
{
    for (app_job *j = list, *next; j; j = next) {
        next = j->next;
        req *r = (req *)j;
        conn *c = r->c;
        c->running = NULL;
        if (c->closing || !r->res.frame) {
            app_flow_request_done(&c->flow, r->charge);
            req_free(r);
            if (c->closing)
                conn_destroy(c);
            else
                conn_close(c, "oom");
            continue;
        }
        bufferevent_write(c->bev, r->res.frame, r->res.len);
        /* The answer is charged until written (the high-water mark keeps this connection's
         * next requests from starting meanwhile); the request's own bytes are gone. */
        app_flow_response_queued(&c->flow, r->res.len);
        app_flow_request_done(&c->flow, r->charge);
        req_free(r);
        start_next(c);
        conn_process(c);
    }
    budget_released(s);
    drain_check(s);
}

static void drain_check(app_server *s)
{
    if (!s->draining || !s->drain_done)
        return;
    for (conn *c = s->conns; c; c = c->next)
        if (c->running || c->qhead ||
            (c->bev && evbuffer_get_length(bufferevent_get_output(c->bev)) > 0))
            return;
    void (*done)(void *) = s->drain_done;
    s->drain_done = NULL;
    done(s->drain_arg);
}

void app_server_drain(app_server *s, void (*done)(void *arg), void *arg)
{
    s->draining = true;
    s->drain_done = done;
    s->drain_arg = arg;
    if (s->lis)
        evconnlistener_disable(s->lis);
    if (s->accept_timer)
        evtimer_del(s->accept_timer);
    for (conn *c = s->conns; c; c = c->next)
        if (c->bev && !c->paused) {
            bufferevent_disable(c->bev, EV_READ);
            c->paused = true;
        }
    drain_check(s);
}

cdx_err app_server_new(struct event_base *base, const app_config *cfg, app_tls *tls, app_pool *pool,
                       const app_dispatch_env *env, app_metrics *m, app_server **out)
{
    struct addrinfo *ai = NULL;
    cdx_err err;
    *out = NULL;
    if (!tls && !cfg->insecure)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "a TLS context is required unless insecure");
    if ((err = app_addr_resolve(cfg->listen, "[server] listen", &ai)))
        return err;
    app_server *s = calloc(1, sizeof(*s));
    if (!s) {
        freeaddrinfo(ai);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    s->base = base;
    s->cfg = cfg;
    s->tls = tls;
    s->pool = pool;
    s->env = env;
    s->m = m;
    s->budget.limit = cfg->inflight_bytes;
    s->lim = (app_flow_limits){.max_outstanding = cfg->max_outstanding,
                               .output_high_water = cfg->output_high_water,
                               .handshake_timeout_ms = cfg->handshake_timeout_ms,
                               .idle_timeout_s = cfg->idle_timeout_s,
                               .min_recv_bytes_per_s = cfg->min_recv_bytes_per_s};
    s->lis = evconnlistener_new_bind(
        base, on_accept, s, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC, 512,
        ai->ai_addr, (int)ai->ai_addrlen);
    freeaddrinfo(ai);
    if (!s->lis) {
        int e = errno;
        free(s);
        return cdx_fail(CDX_ERR_UNAVAILABLE, "[server] listen %s: cannot listen: %s", cfg->listen,
                        strerror(e));
    }
    evconnlistener_set_error_cb(s->lis, on_accept_error);
    s->accept_timer = evtimer_new(base, on_accept_timer, s);
    if (!s->accept_timer || !reserve_fill(s)) {
        app_server_free(s);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED,
                        "cannot set up the accept back-off (timer, %d reserved descriptors)",
                        CDX_ACCEPT_RESERVE_FDS);
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    getsockname(evconnlistener_get_fd(s->lis), (struct sockaddr *)&ss, &sl);
    s->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                             : ((struct sockaddr_in *)&ss)->sin_port);
    *out = s;
    return CDX_OK;
}

app_budget *app_server_budget(app_server *s)
{
    return &s->budget;
}

uint16_t app_server_port(const app_server *s)
{
    return s->port;
}

size_t app_server_connections(const app_server *s)
{
    return s->nconns;
}

void app_server_free(app_server *s)
{
    if (!s)
        return;
    if (s->lis)
        evconnlistener_free(s->lis);
    s->accept_paused = false;
    if (s->accept_timer)
        event_free(s->accept_timer);
    s->accept_timer = NULL;
    reserve_release(s);
    s->in_release = true; /* closing everything: nothing is to be resumed */
    /* Connections with a job on a worker: the pool is drained by now (the daemon frees it
     * first and hands the completions over), so none is running. */
    while (s->conns) {
        conn *c = s->conns;
        c->running = NULL;
        conn_destroy(c);
    }
    while (s->lingering)
        drain_free(s->lingering);
    free(s);
}
