/* Operators' HTTP endpoint on libmicrohttpd (see app_http.h). */
#include "app_http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app_addr.h"
#include "cdx_log.h"

struct app_http {
    struct MHD_Daemon *d;
    app_metrics *m;
    app_health_fn health;
    app_pull_fn pull;
    void *arg;
    uint16_t port;
};

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type,
                             char *body, size_t len)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result reply_text(struct MHD_Connection *c, unsigned status, const char *text)
{
    char *b = strdup(text);
    return b ? reply(c, status, "text/plain; charset=utf-8", b, strlen(b)) : MHD_NO;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **con_cls)
{
    app_http *h = cls;
    (void)version;
    (void)upload;
    (void)con_cls;
    if (*upload_size) { /* no endpoint takes a body */
        *upload_size = 0;
        return MHD_YES;
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return reply_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n");
    char *buf = NULL;
    size_t len = 0;
    if (strcmp(url, "/metrics") == 0) {
        FILE *f = open_memstream(&buf, &len);
        if (!f)
            return MHD_NO;
        app_metrics_pull p;
        memset(&p, 0, sizeof(p));
        if (h->pull)
            h->pull(h->arg, &p);
        int rc = app_metrics_render(h->m, h->pull ? &p : NULL, f);
        if (fclose(f) != 0 || rc != 0) {
            free(buf);
            return reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot render metrics\n");
        }
        return reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", buf, len);
    }
    if (strcmp(url, "/healthz") == 0) {
        app_health hs;
        memset(&hs, 0, sizeof(hs));
        hs.state = APP_HEALTH_DOWN;
        if (h->health)
            h->health(h->arg, &hs);
        static const char *const names[] = {"ok", "degraded", "down"};
        const char *st = (unsigned)hs.state <= APP_HEALTH_DOWN ? names[hs.state] : "down";
        hs.detail[sizeof(hs.detail) - 1] = '\0';
        if (asprintf(&buf, "{\"status\":\"%s\"%s%s}\n", st, hs.detail[0] ? "," : "", hs.detail) < 0)
            return MHD_NO;
        return reply(c, hs.state == APP_HEALTH_DOWN ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_OK,
                     "application/json", buf, strlen(buf));
    }
    return reply_text(c, MHD_HTTP_NOT_FOUND, "not found: try /healthz or /metrics\n");
}

static void mhd_log(void *arg, const char *fmt, va_list ap)
{
    char msg[256];
    (void)arg;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    msg[strcspn(msg, "\r\n")] = '\0';
    cdx_log(CDX_LOG_WARN, "http_error", "msg=\"%s\"", msg);
}

cdx_err app_http_new(const char *listen, app_metrics *m, app_health_fn health, app_pull_fn pull,
                     void *arg, app_http **out)
{
    struct addrinfo *ai = NULL;
    cdx_err err;

    *out = NULL;
    if ((err = app_addr_resolve(listen, "[metrics] listen", &ai)))
        return err;
    app_http *h = calloc(1, sizeof(*h));
    if (!h) {
        freeaddrinfo(ai);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    h->m = m;
    h->health = health;
    h->pull = pull;
    h->arg = arg;
    /* epoll (or poll), never select(): the daemon's descriptors pass FD_SETSIZE (1024) under
     * load, and select() cannot wait on those, so the probes would fail exactly then. */
    unsigned flags = (MHD_is_feature_supported(MHD_FEATURE_EPOLL) == MHD_YES
                          ? (unsigned)MHD_USE_EPOLL_INTERNAL_THREAD
                          : (unsigned)MHD_USE_POLL_INTERNAL_THREAD) |
                     MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    /* The logger first, so every message of the start goes through it. */
    h->d = MHD_start_daemon(flags, 0, NULL, NULL, handle, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
                            NULL, MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT,
                            (unsigned)16, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)65536, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!h->d) {
        free(h);
        return cdx_fail(CDX_ERR_UNAVAILABLE,
                        "metrics endpoint: cannot listen on %s (in use, or "
                        "not an address of this host?)",
                        listen);
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : 0;
    *out = h;
    return CDX_OK;
}

uint16_t app_http_port(const app_http *h)
{
    return h->port;
}

void app_http_free(app_http *h)
{
    if (!h)
        return;
    MHD_stop_daemon(h->d);
    free(h);
}
