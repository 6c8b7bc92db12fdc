/*
 * app_client.h - the small C client library the CLI (and C applications)
 * use: one blocking connection, TLS with server-certificate and host-name
 * (or IP) verification and a client certificate, length-prefixed frames,
 * response statuses mapped to cdx_err.
 *
 * Requests may be pipelined: app_client_send several, then app_client_recv
 * the answers in the same order (the server answers in order). A response
 * whose request_id does not match, or that has no status, is a protocol
 * error (CDX_ERR_DATA_LOSS): the connection is then unusable.
 */
#ifndef APP_CLIENT_H
#define APP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cdx_err.h"
#include "wire_msg.h"

typedef struct app_client_opts {
    const char *addr;    /* host:port or [v6]:port */
    const char *ca;      /* CA bundle the server certificate must chain to */
    const char *cert;    /* client certificate (PEM) */
    const char *key;     /* its key (PEM) */
    bool insecure;       /* plaintext TCP (a server started with insecure = yes) */
    uint32_t timeout_ms; /* connect and per-I/O timeout; 0 = 30000 */
    size_t max_frame;    /* largest response accepted; 0 = CDX_FRAME_MAX_DEFAULT */
} app_client_opts;

typedef struct app_client app_client;

/*
 * Connect (and handshake). The server name checked against the certificate
 * is the host part of addr (an IP address is matched against IP SANs).
 * Errors: CDX_ERR_INVALID_ARGUMENT (options), CDX_ERR_UNAVAILABLE (cannot
 * connect, timeout), CDX_ERR_UNAUTHENTICATED (TLS handshake or certificate
 * verification failed: the detail says which), CDX_ERR_CONFIG (files).
 */
cdx_err app_client_connect(const app_client_opts *o, app_client **out);

/* Close; NULL is a no-op. */
void app_client_free(app_client *c);

/*
 * Send one request; its request_id is set to the next id of this
 * connection (returned in *id, may be NULL).
 * Errors: CDX_ERR_UNAVAILABLE (I/O), CDX_ERR_FRAME_TOO_LARGE, what
 * wire_request_pack returns.
 */
cdx_err app_client_send(app_client *c, Cipherdex__V1__Request *req, uint64_t *id);

/*
 * Receive the next response (the oldest request sent). *out is the decoded
 * response whatever its status (free it with wire_response_free). The
 * return value is the response's status code (CDX_OK, or the server's
 * error, its message as the detail), or a transport/protocol error with
 * *out NULL.
 */
cdx_err app_client_recv(app_client *c, wire_response **out);

/* send + recv. */
cdx_err app_client_call(app_client *c, Cipherdex__V1__Request *req, wire_response **out);

#endif
