/*
 * app_metrics.h - the daemon's counters and latency histograms, rendered in
 * the Prometheus text exposition format (version 0.0.4) for GET /metrics.
 *
 * Labels are closed sets (operation names, status code names, stage names):
 * nothing a client sends, and never an index name, reaches a label.
 * Updates are lock-free atomics (any thread); rendering reads a consistent
 * enough snapshot (each series is read once; a scrape racing an update may
 * see a histogram's count and sum one observation apart, as Prometheus
 * clients commonly do).
 */
#ifndef APP_METRICS_H
#define APP_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "cdx_err.h"

typedef enum app_op {
    APP_OP_HEALTH,
    APP_OP_CREATE_INDEX,
    APP_OP_DESCRIBE_INDEX,
    APP_OP_LIST_INDEXES,
    APP_OP_DELETE_INDEX,
    APP_OP_TRAIN,
    APP_OP_UPSERT,
    APP_OP_QUERY,
    APP_OP_GET,
    APP_OP_DELETE,
    APP_OP_LIST_IDS,
    APP_OP_ACCEPT_ROLLBACK,
    APP_OP_AUDIT_TAIL,
    APP_OP_ATTEST,
    APP_OP_COMPACT,
    APP_OP_PURGE,
    APP_OP_ROTATE,
    APP_OP_INVALID, /* a frame that did not decode to a known request */
    APP_OP_COUNT
} app_op;

typedef enum app_stage {
    APP_STAGE_DECODE,
    APP_STAGE_KEYS,  /* subkey derivation */
    APP_STAGE_FETCH, /* store fetch */
    APP_STAGE_DECRYPT,
    APP_STAGE_DISTANCE, /* coarse quantisation, scan, rescoring, top-k */
    APP_STAGE_ENCODE,
    APP_STAGE_REQUEST, /* whole request, frame complete to response queued */
    APP_STAGE_COUNT
} app_stage;

typedef enum app_counter {
    APP_C_CONN_ACCEPTED,
    APP_C_CONN_REFUSED,     /* over max_connections */
    APP_C_HANDSHAKE_FAILED, /* TLS or client certificate refused */
    APP_C_CONN_TIMEOUT,     /* handshake, idle or slow-loris timeouts */
    APP_C_BUDGET_WAITS,     /* reads paused for the in-flight budget or per-connection caps */
    APP_C_FRAMES_REJECTED,  /* over the size cap, or undecodable */
    APP_C_STORE_ERRORS,
    APP_C_HANDSHAKE_EVICTED, /* handshakes closed to make room (max_handshaking, per source) */
    APP_C_ACCEPT_PAUSED,     /* accept() failed (EMFILE & co): the listener paused */
    APP_C_COUNT
} app_counter;

typedef enum app_gauge { APP_G_CONNECTIONS, APP_G_INFLIGHT_BYTES, APP_G_COUNT } app_gauge;

/* Operation name as on the wire ("create_index"); "invalid" for APP_OP_INVALID. */
const char *app_op_name(app_op op);

/* Stage label ("decode", "keys", "fetch", "decrypt", "distance", "encode", "request"). */
const char *app_stage_name(app_stage s);

typedef struct app_metrics app_metrics;

/* A zeroed registry. Errors: CDX_ERR_RESOURCE_EXHAUSTED. */
cdx_err app_metrics_new(app_metrics **out);

/* NULL is a no-op. */
void app_metrics_free(app_metrics *m);

/* One finished request: its operation and status. */
void app_metrics_request(app_metrics *m, app_op op, cdx_err status);

/* One observation of a stage's duration in nanoseconds. */
void app_metrics_observe(app_metrics *m, app_stage s, uint64_t ns);

/* Add n to counter c. */
void app_metrics_inc(app_metrics *m, app_counter c, uint64_t n);

/* Gauges move both ways (delta may be negative). */
void app_metrics_gauge_add(app_metrics *m, app_gauge g, int64_t delta);

/* Values pulled from other modules at scrape time (engine, custody). */
typedef struct app_metrics_pull {
    uint64_t cache_hits, cache_misses, cache_bytes;
    uint64_t subkey_derivations, subkey_cache_hits;
    uint64_t commits, commit_conflicts;
    /* background maintenance (engine/eng_maint.h); all 0 when it is off */
    uint64_t maint_runs, maint_errors, maint_compactions, maint_swept, maint_waiting,
        maint_waiting_bytes;
    /* key rotations (docs/ROTATION.md): completed, failed runs, pending here, and progress */
    uint64_t rotations, rotation_failures, rotations_pending, rotation_done, rotation_total;
    /* the audit trail (docs/AUDIT.md); audit_state: 0 ok, 1 failed (closed), 2 failed-open,
     * -1 off */
    uint64_t audit_records, audit_failures, audit_lost;
    int audit_state;
} app_metrics_pull;

/* Requests counted for (op, status): for tests and the status page. */
uint64_t app_metrics_requests(const app_metrics *m, app_op op, cdx_err status);

/*
 * Write the exposition text to f. pull may be NULL (those series are then
 * omitted). Returns 0, or -1 on a write error.
 */
int app_metrics_render(const app_metrics *m, const app_metrics_pull *pull, FILE *f);

#endif
