/*
 * app_daemon.h - the daemon's lifecycle: everything cipherdexd opens from
 * its configuration, the event loop that owns the network side, signals,
 * and systemd notification.
 *
 * Start order: log settings; custody (token login, locked memory,
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
 *   SIGHUP           RELOADING=1; log level from the configuration file
 *                    again (and, once the network front end is attached,
 *                    TLS files and the CRL); READY=1.
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
cdx_err app_daemon_new(const app_config *cfg, const char *config_path, app_daemon **out);

/*
 * Run the event loop until SIGTERM/SIGINT (or app_daemon_stop) and the
 * drain. Returns 0 on a clean stop.
 */
int app_daemon_run(app_daemon *d);

/* NULL is a no-op. */
void app_daemon_free(app_daemon *d);

#endif
