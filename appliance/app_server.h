/*
 * app_server.h - the network front end: a libevent listener, one
 * bufferevent (bufferevent_openssl unless insecure) per connection, frames
 * decoded sans-IO (wire_frame.h), requests executed on the worker pool
 * (app_pool.h) through app_dispatch, admission control by app_flow.h.
 *
 * Per connection, requests execute one at a time in arrival order and are
 * answered in that order (a client may pipeline: an upsert is visible to
 * the query sent after it). Everything here runs on the event loop's
 * thread; workers only run app_dispatch.
 *
 * Refusals: over max_connections the socket is closed at once; a TLS
 * handshake failing (no or bad client certificate, wrong EKU, revoked) or
 * not finishing within handshake_timeout_ms closes it; a frame over the cap
 * gets a FRAME_TOO_LARGE status and the connection is closed (the stream
 * cannot be resynchronised); idle and slow-receive timeouts close it.
 *
 * Unauthenticated connections: at most max_handshaking connections may be
 * in their TLS handshake, max_handshaking_per_source from one address; a
 * new one over either cap closes the oldest (of that address, or of all),
 * those that never sent a TLS byte first. So raw sockets cannot hold
 * max_connections, and a flood from one address does not evict another's
 * handshakes. accept() failing other than transiently (EMFILE, ENFILE,
 * ENOBUFS) pauses the listener (50 ms doubling to 1 s, or until a
 * connection closes) and frees CDX_ACCEPT_RESERVE_FDS descriptors held back
 * for the rest of the process; one log line per 10 s at most.
 */
#ifndef APP_SERVER_H
#define APP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "app_config.h"
#include "app_dispatch.h"
#include "app_flow.h"
#include "app_metrics.h"
#include "app_pool.h"
#include "cdx_err.h"

struct event_base;
typedef struct app_tls app_tls;
typedef struct app_server app_server;

/*
 * Listen on cfg->listen (port 0: any free port). tls NULL only when
 * cfg->insecure. Everything passed is borrowed and must outlive the server.
 * Errors: CDX_ERR_CONFIG (address), CDX_ERR_UNAVAILABLE (cannot bind),
 * CDX_ERR_RESOURCE_EXHAUSTED.
 */
cdx_err app_server_new(struct event_base *base, const app_config *cfg, app_tls *tls, app_pool *pool,
                       const app_dispatch_env *env, app_metrics *m, app_server **out);

/* The bound port. */
/*
 * The server's in-flight byte budget (docs/WIRE.md, "Memory bounds"), for
 * the workers to reserve a request's working memory in (app_dispatch_env.budget).
 */
app_budget *app_server_budget(app_server *s);

uint16_t app_server_port(const app_server *s);

/* Finished jobs from the pool (the daemon's completion event hands them over). */
void app_server_completions(app_server *s, app_job *list);

/*
 * Stop accepting and reading; when every accepted request is answered and
 * flushed (or its connection is gone), call done(arg) once on the loop.
 */
void app_server_drain(app_server *s, void (*done)(void *arg), void *arg);

/* Connections open now. */
size_t app_server_connections(const app_server *s);

/* Close everything (after a drain, or at once). NULL is a no-op. */
void app_server_free(app_server *s);

#endif
