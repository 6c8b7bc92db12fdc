/* Counters and histograms in Prometheus text format (see app_metrics.h). */
#include "app_metrics.h"

#include <stdatomic.h>
#include <stdlib.h>

/*
 * A slot per status code, straight from its value: 0-16 (google.rpc) and
 * 100-163 (ours, appended over time), plus one for anything else (a bug:
 * counted, not dropped). New codes need no change here.
 */
#define OWN_FIRST  100
#define OWN_SLOTS  64
#define NCODES     (17 + OWN_SLOTS)
#define CODE_OTHER NCODES

/* Latency buckets in seconds: 25 us .. 10 s, roughly x2.5 apart. */
static const double bucket_s[] = {25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3,
                                  25e-3, 50e-3, 0.1,    0.25,   0.5,    1.0,  2.5,    5.0,  10.0};
#define NBUCKETS (sizeof(bucket_s) / sizeof(bucket_s[0]))

typedef struct hist {
    atomic_uint_fast64_t le[NBUCKETS + 1]; /* per bucket (not cumulative); last = +Inf */
    atomic_uint_fast64_t count, sum_ns;
} hist;

struct app_metrics {
    atomic_uint_fast64_t req[APP_OP_COUNT][NCODES + 1];
    hist stage[APP_STAGE_COUNT];
    atomic_uint_fast64_t counter[APP_C_COUNT];
    atomic_int_fast64_t gauge[APP_G_COUNT];
};

static const char *const op_names[APP_OP_COUNT] = {
    "health",   "create_index",    "describe_index", "list_indexes", "delete_index",
    "train",    "upsert",          "query",          "get",          "delete",
    "list_ids", "accept_rollback", "audit_tail",     "attest",       "compact",
    "purge",    "rotate",          "invalid",
};

static const char *const stage_names[APP_STAGE_COUNT] = {
    "decode", "keys", "fetch", "decrypt", "distance", "encode", "request",
};

const char *app_op_name(app_op op)
{
    return (unsigned)op < APP_OP_COUNT ? op_names[op] : "invalid";
}

const char *app_stage_name(app_stage s)
{
    return (unsigned)s < APP_STAGE_COUNT ? stage_names[s] : "unknown";
}

cdx_err app_metrics_new(app_metrics **out)
{
    app_metrics *m = calloc(1, sizeof(*m)); /* all-zero atomics are valid zeros */
    if (!m)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    *out = m;
    return CDX_OK;
}

void app_metrics_free(app_metrics *m)
{
    free(m);
}

static size_t code_slot(cdx_err e)
{
    int v = (int)e;
    if (v >= 0 && v <= 16)
        return (size_t)v;
    if (v >= OWN_FIRST && v < OWN_FIRST + OWN_SLOTS)
        return (size_t)(17 + v - OWN_FIRST);
    return CODE_OTHER;
}

static cdx_err slot_code(size_t c)
{
    return (cdx_err)(c <= 16 ? (int)c : OWN_FIRST + (int)c - 17);
}

void app_metrics_request(app_metrics *m, app_op op, cdx_err status)
{
    if ((unsigned)op >= APP_OP_COUNT)
        op = APP_OP_INVALID;
    atomic_fetch_add_explicit(&m->req[op][code_slot(status)], 1, memory_order_relaxed);
}

uint64_t app_metrics_requests(const app_metrics *m, app_op op, cdx_err status)
{
    if ((unsigned)op >= APP_OP_COUNT)
        return 0;
    return atomic_load(&((app_metrics *)m)->req[op][code_slot(status)]);
}

void app_metrics_observe(app_metrics *m, app_stage s, uint64_t ns)
{
    if ((unsigned)s >= APP_STAGE_COUNT)
        return;
    hist *h = &m->stage[s];
    double sec = (double)ns / 1e9;
    size_t b = 0;
    while (b < NBUCKETS && sec > bucket_s[b])
        b++;
    atomic_fetch_add_explicit(&h->le[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_ns, ns, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
}

void app_metrics_inc(app_metrics *m, app_counter c, uint64_t n)
{
    if ((unsigned)c < APP_C_COUNT)
        atomic_fetch_add_explicit(&m->counter[c], n, memory_order_relaxed);
}

void app_metrics_gauge_add(app_metrics *m, app_gauge g, int64_t delta)
{
    if ((unsigned)g < APP_G_COUNT)
        atomic_fetch_add_explicit(&m->gauge[g], delta, memory_order_relaxed);
}

static const struct {
    const char *name, *help;
} counter_meta[APP_C_COUNT] = {
    {"cipherdex_connections_accepted_total", "Connections accepted."},
    {"cipherdex_connections_refused_total", "Connections refused over max_connections."},
    {"cipherdex_handshakes_failed_total", "TLS handshakes failed or client certificates refused."},
    {"cipherdex_connection_timeouts_total",
     "Connections closed by handshake, idle or slow-receive timeouts."},
    {"cipherdex_budget_waits_total",
     "Times reading from a connection paused for the in-flight budget or a per-connection cap."},
    {"cipherdex_frames_rejected_total", "Frames rejected as too large or undecodable."},
    {"cipherdex_store_errors_total", "Requests that failed with a store error."},
    {"cipherdex_handshakes_evicted_total",
     "Unfinished TLS handshakes closed to make room (max_handshaking, per source address)."},
    {"cipherdex_accept_pauses_total",
     "Times accept() failed (out of descriptors or memory) and the listener paused."},
};

static const struct {
    const char *name, *help;
} gauge_meta[APP_G_COUNT] = {
    {"cipherdex_connections", "Open client connections."},
    {"cipherdex_inflight_bytes", "Bytes of requests being decoded or served."},
};

int app_metrics_render(const app_metrics *cm, const app_metrics_pull *pull, FILE *f)
{
    app_metrics *m = (app_metrics *)cm; /* atomic loads need a non-const object */
    fprintf(f, "# HELP cipherdex_requests_total Requests answered, by operation and status.\n"
               "# TYPE cipherdex_requests_total counter\n");
    for (int op = 0; op < APP_OP_COUNT; op++)
        for (size_t c = 0; c <= NCODES; c++) {
            uint64_t v = atomic_load(&m->req[op][c]);
            if (!v)
                continue; /* absent series read as zero */
            fprintf(f, "cipherdex_requests_total{op=\"%s\",code=\"%s\"} %llu\n", op_names[op],
                    c < NCODES ? cdx_err_name(slot_code(c)) : "OTHER", (unsigned long long)v);
        }
    fprintf(f, "# HELP cipherdex_stage_seconds Time per request stage.\n"
               "# TYPE cipherdex_stage_seconds histogram\n");
    for (int s = 0; s < APP_STAGE_COUNT; s++) {
        hist *h = &m->stage[s];
        uint64_t cum = 0;
        for (size_t b = 0; b < NBUCKETS; b++) {
            cum += atomic_load(&h->le[b]);
            fprintf(f, "cipherdex_stage_seconds_bucket{stage=\"%s\",le=\"%g\"} %llu\n",
                    stage_names[s], bucket_s[b], (unsigned long long)cum);
        }
        cum += atomic_load(&h->le[NBUCKETS]);
        /* +Inf must equal _count: use the bucket sum, read in one pass. */
        fprintf(f, "cipherdex_stage_seconds_bucket{stage=\"%s\",le=\"+Inf\"} %llu\n",
                stage_names[s], (unsigned long long)cum);
        fprintf(f, "cipherdex_stage_seconds_sum{stage=\"%s\"} %.9f\n", stage_names[s],
                (double)atomic_load(&h->sum_ns) / 1e9);
        fprintf(f, "cipherdex_stage_seconds_count{stage=\"%s\"} %llu\n", stage_names[s],
                (unsigned long long)cum);
    }
    for (int c = 0; c < APP_C_COUNT; c++)
        fprintf(f, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", counter_meta[c].name,
                counter_meta[c].help, counter_meta[c].name, counter_meta[c].name,
                (unsigned long long)atomic_load(&m->counter[c]));
    for (int g = 0; g < APP_G_COUNT; g++)
        fprintf(f, "# HELP %s %s\n# TYPE %s gauge\n%s %lld\n", gauge_meta[g].name,
                gauge_meta[g].help, gauge_meta[g].name, gauge_meta[g].name,
                (long long)atomic_load(&m->gauge[g]));
    if (pull) {
        uint64_t total = pull->cache_hits + pull->cache_misses;
        fprintf(
            f,
            "# HELP cipherdex_block_cache_hits_total Decrypted block cache hits.\n"
            "# TYPE cipherdex_block_cache_hits_total counter\n"
            "cipherdex_block_cache_hits_total %llu\n"
            "# HELP cipherdex_block_cache_misses_total Decrypted block cache misses.\n"
            "# TYPE cipherdex_block_cache_misses_total counter\n"
            "cipherdex_block_cache_misses_total %llu\n"
            "# HELP cipherdex_block_cache_hit_ratio Hits over lookups since start.\n"
            "# TYPE cipherdex_block_cache_hit_ratio gauge\n"
            "cipherdex_block_cache_hit_ratio %.6f\n"
            "# HELP cipherdex_block_cache_bytes Bytes held by the block cache.\n"
            "# TYPE cipherdex_block_cache_bytes gauge\n"
            "cipherdex_block_cache_bytes %llu\n"
            "# HELP cipherdex_subkey_derivations_total Subkeys derived on the token.\n"
            "# TYPE cipherdex_subkey_derivations_total counter\n"
            "cipherdex_subkey_derivations_total %llu\n"
            "# HELP cipherdex_subkey_cache_hits_total Subkeys served from the TTL cache.\n"
            "# TYPE cipherdex_subkey_cache_hits_total counter\n"
            "cipherdex_subkey_cache_hits_total %llu\n"
            "# HELP cipherdex_commits_total Index commits.\n"
            "# TYPE cipherdex_commits_total counter\n"
            "cipherdex_commits_total %llu\n"
            "# HELP cipherdex_commit_conflicts_total Commits retried after a concurrent commit.\n"
            "# TYPE cipherdex_commit_conflicts_total counter\n"
            "cipherdex_commit_conflicts_total %llu\n",
            (unsigned long long)pull->cache_hits, (unsigned long long)pull->cache_misses,
            total ? (double)pull->cache_hits / (double)total : 0.0,
            (unsigned long long)pull->cache_bytes, (unsigned long long)pull->subkey_derivations,
            (unsigned long long)pull->subkey_cache_hits, (unsigned long long)pull->commits,
            (unsigned long long)pull->commit_conflicts);
        fprintf(f,
                "# HELP cipherdex_maintenance_runs_total Index maintenance steps run.\n"
                "# TYPE cipherdex_maintenance_runs_total counter\n"
                "cipherdex_maintenance_runs_total %llu\n"
                "# HELP cipherdex_maintenance_errors_total Maintenance steps that failed.\n"
                "# TYPE cipherdex_maintenance_errors_total counter\n"
                "cipherdex_maintenance_errors_total %llu\n"
                "# HELP cipherdex_compactions_total Compactions committed by maintenance.\n"
                "# TYPE cipherdex_compactions_total counter\n"
                "cipherdex_compactions_total %llu\n"
                "# HELP cipherdex_swept_records_total Unreferenced records deleted by sweeps.\n"
                "# TYPE cipherdex_swept_records_total counter\n"
                "cipherdex_swept_records_total %llu\n"
                "# HELP cipherdex_sweep_waiting_records Unreferenced records waiting for their "
                "grace (each index's last sweep, summed).\n"
                "# TYPE cipherdex_sweep_waiting_records gauge\n"
                "cipherdex_sweep_waiting_records %llu\n"
                "# HELP cipherdex_sweep_waiting_bytes Stored bytes of those records.\n"
                "# TYPE cipherdex_sweep_waiting_bytes gauge\n"
                "cipherdex_sweep_waiting_bytes %llu\n",
                (unsigned long long)pull->maint_runs, (unsigned long long)pull->maint_errors,
                (unsigned long long)pull->maint_compactions, (unsigned long long)pull->maint_swept,
                (unsigned long long)pull->maint_waiting,
                (unsigned long long)pull->maint_waiting_bytes);
        fprintf(
            f,
            "# HELP cipherdex_key_rotations_total Key rotations this appliance completed.\n"
            "# TYPE cipherdex_key_rotations_total counter\n"
            "cipherdex_key_rotations_total %llu\n"
            "# HELP cipherdex_key_rotation_failures_total Key rotation runs that failed (retried "
            "while pending).\n"
            "# TYPE cipherdex_key_rotation_failures_total counter\n"
            "cipherdex_key_rotation_failures_total %llu\n"
            "# HELP cipherdex_key_rotations_pending Indexes whose key rotation this appliance "
            "is running or about to run.\n"
            "# TYPE cipherdex_key_rotations_pending gauge\n"
            "cipherdex_key_rotations_pending %llu\n"
            "# HELP cipherdex_key_rotation_records_done Records re-encrypted by the pending "
            "rotations' current attempts.\n"
            "# TYPE cipherdex_key_rotation_records_done gauge\n"
            "cipherdex_key_rotation_records_done %llu\n"
            "# HELP cipherdex_key_rotation_records_total Records the pending rotations' "
            "current attempts re-encrypt.\n"
            "# TYPE cipherdex_key_rotation_records_total gauge\n"
            "cipherdex_key_rotation_records_total %llu\n",
            (unsigned long long)pull->rotations, (unsigned long long)pull->rotation_failures,
            (unsigned long long)pull->rotations_pending, (unsigned long long)pull->rotation_done,
            (unsigned long long)pull->rotation_total);
        fprintf(f,
                "# HELP cipherdex_audit_records_total Audit records written by this process.\n"
                "# TYPE cipherdex_audit_records_total counter\n"
                "cipherdex_audit_records_total %llu\n"
                "# HELP cipherdex_audit_write_failures_total Audit writes that failed.\n"
                "# TYPE cipherdex_audit_write_failures_total counter\n"
                "cipherdex_audit_write_failures_total %llu\n"
                "# HELP cipherdex_audit_lost_records_total Audit records dropped (on_failure = "
                "open).\n"
                "# TYPE cipherdex_audit_lost_records_total counter\n"
                "cipherdex_audit_lost_records_total %llu\n"
                "# HELP cipherdex_audit_state 0 ok, 1 failed (requests refused), 2 failed-open "
                "(records lost), -1 off.\n"
                "# TYPE cipherdex_audit_state gauge\n"
                "cipherdex_audit_state %d\n",
                (unsigned long long)pull->audit_records, (unsigned long long)pull->audit_failures,
                (unsigned long long)pull->audit_lost, pull->audit_state);
    }
    return ferror(f) ? -1 : 0;
}
