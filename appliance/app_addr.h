/*
 * app_addr.h - network addresses as the configuration and the client write
 * them: "host:port" or "[v6]:port".
 *
 * A module of its own so that the client library and the CLI, which need
 * only this, do not link the daemon's configuration loader (and through it
 * libinih and the custody library).
 *
 * Thread-safe: no shared state (errors go to the calling thread's cdx_fail
 * detail).
 */
#ifndef APP_ADDR_H
#define APP_ADDR_H

#include <stddef.h>
#include <stdint.h>

#include "cdx_err.h"

/* Longest address string the configuration accepts, NUL included. */
#define APP_ADDR_MAX 512

struct addrinfo;

/*
 * Split "host:port" or "[v6]:port" into host (without brackets, copied
 * into host[0..cap) with its NUL) and port (decimal digits only, 0-65535;
 * 0 means any free port where a listener accepts it). A bare IPv6 address
 * without brackets, an empty host or a host that does not fit is refused.
 * host and *port are written only on success.
 * Errors: CDX_ERR_CONFIG (the detail quotes addr and says what is wrong).
 */
CDX_MUST_CHECK cdx_err app_addr_split(const char *addr, char *host, size_t cap, uint16_t *port);

/*
 * Resolve a listen address ("host:port", "[v6]:port"; port 0 allowed) for a
 * passive stream socket with getaddrinfo. On success *out is the list (the
 * caller frees it with freeaddrinfo); on error *out is NULL. `what` names
 * the setting in the error ("[server] listen").
 * Errors: CDX_ERR_CONFIG ("what: ..." for a malformed address, "what `addr`:
 * ..." when the name does not resolve).
 */
CDX_MUST_CHECK cdx_err app_addr_resolve(const char *addr, const char *what, struct addrinfo **out);

#endif
