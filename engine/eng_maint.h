/*
 * eng_maint.h - keeping an index's store proportional to its live data:
 * the per-index maintenance step (compaction by policy, then a sweep) and
 * the background scheduler that runs it for the indexes this engine wrote to.
 *
 * Why: every commit writes a new manifest and every upsert a new segment;
 * nothing else removes them. Compaction bounds the segments per cluster
 * (so the manifest, which lists them, stays small), and the sweep deletes
 * what no current state references once it has been unreferenced for
 * gc_grace_ms (eng_sweep_run below; docs/RECORDS.md section 7).
 *
 * Readers are respected by time, not by locks: a record is deleted only
 * after this engine has seen it unreferenced by the current head for at
 * least gc_grace_ms (and it was written more than gc_grace_ms ago). A
 * reader that picked it up from an older head therefore has gc_grace_ms to
 * finish. The observations live in memory: after a restart every
 * unreferenced record waits a full grace again.
 *
 * Thread-safe: sweeps of one index are serialised (per index mutex); any
 * number of engines (appliances) may maintain the same index at once.
 */
#ifndef ENG_MAINT_H
#define ENG_MAINT_H

#include <stdbool.h>
#include <stdint.h>

#include "eng.h"

/* What one sweep did. */
typedef struct eng_sweep_report {
    uint64_t deleted;                                  /* store keys deleted */
    uint64_t manifests, segments, contents, centroids; /* ... of which, by kind */
    uint64_t waiting;       /* unreferenced records kept until their grace ends */
    uint64_t waiting_bytes; /* ... and their stored size */
    uint64_t next_ms; /* wall time (ms) the first of those ripens; 0 = none waits */
} eng_sweep_report;

/*
 * Sweep index `name` (eng_sweep with a report): read the head fresh, list
 * every referenced record, SCAN the index's immutable records and delete
 * each unreferenced one this engine first found unreferenced at least
 * gc_grace_ms ago and written more than gc_grace_ms ago. The head and the
 * buckets are never deleted. Errors: the common ones of eng.h.
 */
cdx_err eng_sweep_run(eng *e, const char *name, eng_sweep_report *out);

/*
 * Compact the clusters of `name` that hold more than `more_than` segments
 * (at least 1): each into one segment (eng_compact is more_than = 1).
 * *version = the commit, or the current version when no cluster qualifies;
 * *clusters (may be NULL) = clusters rewritten. Defined in eng_rewrite.c.
 * Errors: CDX_ERR_INVALID_ARGUMENT (more_than 0), CDX_ERR_ABORTED (lost
 * every commit attempt to concurrent writers), the common ones.
 */
cdx_err eng_compact_over(eng *e, const char *name, uint32_t more_than, uint64_t *version,
                         uint32_t *clusters);

/* The maintenance policy. */
typedef struct eng_maint_policy {
    uint32_t compact_segments; /* compact a cluster holding more segments than this; 0 = never */
    bool no_sweep;             /* skip the sweep (tests, diagnosis) */
} eng_maint_policy;

/* What one maintenance step did. */
typedef struct eng_maint_report {
    uint32_t clusters_compacted;
    uint64_t compact_version; /* the compaction's commit; 0 = none */
    bool compact_lost;        /* the compaction lost every attempt to writers (retried next run) */
    eng_sweep_report sweep;
    uint64_t ms; /* how long the step took */
} eng_maint_report;

/*
 * One maintenance step of index `name`: compact by policy, then sweep.
 * A compaction that loses to concurrent writers is not an error (reported
 * in compact_lost). Errors: those of eng_compact_over and eng_sweep_run.
 */
cdx_err eng_maintain(eng *e, const char *name, const eng_maint_policy *p, eng_maint_report *out);

/* The scheduler's settings. */
typedef struct eng_maint_config {
    uint32_t interval_ms; /* between passes; 0 = CDX_MAINT_INTERVAL_MS_DEFAULT */
    eng_maint_policy policy;
} eng_maint_config;

/* The scheduler's counters since it started. */
typedef struct eng_maint_stats {
    uint64_t runs;        /* maintenance steps run */
    uint64_t errors;      /* steps that failed (logged) */
    uint64_t compactions; /* compaction commits */
    uint64_t clusters_compacted;
    uint64_t swept;       /* store keys deleted */
    /* Unreferenced records waiting for their grace, and their stored bytes: the sum over
     * the indexes this engine knows of what each one's last sweep left waiting. */
    uint64_t waiting, waiting_bytes;
    uint64_t max_step_ms; /* the longest step */
} eng_maint_stats;

typedef struct eng_maint eng_maint;

/*
 * Start a thread that every interval_ms runs eng_maintain for each index of
 * this engine that is due: it had a commit through this engine since its
 * last step, or a waiting record has ripened. An index is not maintained
 * again before its last step's duration has passed once more (at most half
 * of the thread's time goes to one index's maintenance). One line is logged
 * per step that did something. Stop it (eng_maint_stop) before eng_free.
 * Errors: CDX_ERR_INVALID_ARGUMENT, CDX_ERR_RESOURCE_EXHAUSTED.
 */
cdx_err eng_maint_start(eng *e, const eng_maint_config *c, eng_maint **out);

/* Stop the thread (waits for the step running) and free; NULL is a no-op. */
void eng_maint_stop(eng_maint *m);

/* A snapshot of the counters (each read atomically). */
void eng_maint_get_stats(eng_maint *m, eng_maint_stats *out);

#endif
