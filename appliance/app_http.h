/*
 * app_http.h - the operators' HTTP endpoint (libmicrohttpd, its own port,
 * 127.0.0.1 by default): GET /healthz and GET /metrics.
 *
 *   /healthz  200 {"status":"ok",...} when the token and the store answer
 *             with acceptable durability; 200 {"status":"degraded",...} when
 *             serving with a warning (weak store durability explicitly
 *             allowed, with its loss window; the memory store; indexes in
 *             rollback); 503 {"status":"down",...} when the token or the
 *             store cannot be reached. Degraded stays 200: the appliance
 *             serves, so a liveness probe must not restart it (a restart
 *             fixes none of these); monitoring alerts on the status. The
 *             detail names what failed, never a secret or an index name.
 *   /metrics  Prometheus text format (app_metrics.h), 200.
 * Anything else is 404; a method other than GET or HEAD is 405. Connections
 * are capped and time out (the endpoint must never become a way to tie up
 * the daemon).
 */
#ifndef APP_HTTP_H
#define APP_HTTP_H

#include <stdint.h>

#include "app_metrics.h"
#include "cdx_err.h"

typedef enum app_health_state {
    APP_HEALTH_OK = 0,
    APP_HEALTH_DEGRADED = 1,
    APP_HEALTH_DOWN = 2,
} app_health_state;

typedef struct app_health {
    app_health_state state;
    char detail[4096]; /* JSON object members without braces, e.g. "\"store\":\"ok\"" */
} app_health;

/* Called on the HTTP thread for each /healthz; must be thread-safe. */
typedef void (*app_health_fn)(void *arg, app_health *out);
/* Called on the HTTP thread for each /metrics (may be NULL). */
typedef void (*app_pull_fn)(void *arg, app_metrics_pull *out);

typedef struct app_http app_http;

/*
 * Listen on `listen` (host:port or [v6]:port; port 0 picks a free one) and
 * serve on an internal thread. m is borrowed and must outlive the server.
 * Errors: CDX_ERR_CONFIG (bad address), CDX_ERR_UNAVAILABLE (cannot bind:
 * the detail says why).
 */
cdx_err app_http_new(const char *listen, app_metrics *m, app_health_fn health, app_pull_fn pull,
                     void *arg, app_http **out);

/* The bound port (useful with port 0). */
uint16_t app_http_port(const app_http *h);

/* Stop and free; NULL is a no-op. */
void app_http_free(app_http *h);

#endif
