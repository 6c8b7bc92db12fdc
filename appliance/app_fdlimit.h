/*
 * app_fdlimit.h - the daemon's file-descriptor budget (RLIMIT_NOFILE).
 *
 * Every API connection holds a descriptor; so do the Redis pool, the token
 * (sessions, a network HSM's sockets, SoftHSM's object files), the HTTP
 * endpoint (listener + MHD's connection limit), the descriptors the server
 * keeps in reserve (CDX_ACCEPT_RESERVE_FDS) and a base for everything else
 * (CDX_FDS_BASE). Past the limit accept() fails with EMFILE, and so do the
 * Redis reconnects and state-file writes that share it: the daemon checks
 * at start that max_connections fits, raising its soft limit toward the
 * hard one when needed (packaging/cipherdexd.service sets LimitNOFILE).
 * Not thread-safe: call once at start, before threads that open files.
 */
#ifndef APP_FDLIMIT_H
#define APP_FDLIMIT_H

#include <stdint.h>

#include "app_config.h"
#include "cdx_err.h"

/* Descriptors cfg needs besides its max_connections API connections. */
uint64_t app_fd_overhead(const app_config *cfg);

/*
 * Decide the connection cap for a descriptor limit of `limit`: cfg's
 * max_connections when it fits (overhead + max_connections <= limit), else
 * what fits, or 0 when fewer than 16 connections would.
 */
uint32_t app_fd_fit_connections(const app_config *cfg, uint64_t limit);

/*
 * Make RLIMIT_NOFILE fit cfg: raise the soft limit up to the hard one if
 * overhead + max_connections needs it; when even the hard limit is too low,
 * lower cfg->max_connections to what fits and log a warning saying so.
 * Errors: CDX_ERR_CONFIG (fewer than 16 connections would fit: raise
 * LimitNOFILE / ulimit -n), CDX_ERR_INTERNAL (getrlimit failed).
 */
CDX_MUST_CHECK cdx_err app_fd_fit(app_config *cfg);

#endif
