/*
 * app_daemon.h - the daemon's lifecycle: everything cipherdexd opens from
 * its configuration, the event loop that owns the network side, signals,
 * and systemd notification.
 *
 * Start order: log settings; the descriptor budget (app_fdlimit.h:
 * max_connections must fit RLIMIT_NOFILE); custody (token login, locked memory,
 * non-dumpable process); the store (Redis durability checked, or the
 * memory store announced loudly); the engine (root key ensured); cache
 * preload when configured; the worker pool; the operators' HTTP endpoint;
 * the event loop with its signal handlers; then READY=1 to systemd and the
 * ports file. Stop order is the reverse.
 *
 * Signals (handled on the loop, never in a signal handler):
 *   SIGTERM, SIGINT  STOPPING=1; stop accepting, let the worker pool finish
 *                    what was submitted (every acknowledged write stays
 *                    acknowledged), then leave the loop;
 *   SIGHUP           RELOADING=1; the token's re-login and the store's
 *                    reconnect back-offs are reset (the next request
 *                    retries at once); the configuration file is read and
 *                    checked again: when it is valid, its log level and
 *                    format apply, and (unless insecure) the TLS files
 *                    opened at start - certificate, key, client CA, CRL -
 *                    are read again (on failure the previous ones stay and
 *                    an error is logged); an invalid file changes nothing
 *                    and is logged; READY=1.
 *
 * Not thread-safe: one app_daemon per process (it owns the signal
 * handling), created, run and freed by the main thread.
 */
#ifndef APP_DAEMON_H
#define APP_DAEMON_H

#include "app_config.h"
#include "cdx_err.h"

typedef struct app_daemon app_daemon;

/*
 * Open everything from cfg (already checked with app_config_check);
 * config_path is re-read on SIGHUP.
 * Errors: whatever the failing subsystem returned (custody, store, engine
 * codes; CDX_ERR_CONFIG; CDX_ERR_UNAVAILABLE when a port cannot be bound),
 * with a detail saying what to fix.
 */
CDX_MUST_CHECK cdx_err app_daemon_new(const app_config *cfg, const char *config_path, app_daemon **out);

/*
 * Run the event loop until SIGTERM or SIGINT and the drain that follows.
 * Returns the process exit code: 0 on a clean stop, 1 when the loop failed.
 */
int app_daemon_run(app_daemon *d);

/* NULL is a no-op. */
void app_daemon_free(app_daemon *d);

#endif
