/*
 * eng_int.h - the engine's private core: the engine object (struct eng), the
 * per-index state kept between requests (struct idx), and the per-request
 * operation context (op), plus the few helpers of eng.c every operation
 * uses (index registry, name and id checks, stage timing).
 *
 * Not part of the API (eng.h): only engine .c files include it.
 */
#ifndef ENG_INT_H
#define ENG_INT_H

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "cdx_time.h"
#include "eng.h"
#include "eng_cache.h"
#include "eng_catalog.h"
#include "eng_keyspace.h"
#include "eng_manifest.h"
#include "eng_record.h"
#include "hsm_keys.h"
#include "hsm_subkey.h"

struct eng_bucketset;

/* An unreferenced record a sweep saw (eng_sweep.c): kind, token, since when, and its size. */
typedef struct eng_seen {
    uint8_t kt[1 + ENG_TOKEN_LEN]; /* kind char, then the token (sorted by these bytes) */
    uint64_t since_ms;             /* wall time of the sweep that first found it unreferenced */
    uint64_t bytes;                /* its stored size then (STRLEN) */
} eng_seen;

/* Per-index state kept between requests. Fields below mu are guarded by it. */
struct idx {
    struct idx *next;
    atomic_uint refs; /* the registry's (until eng_idx_forget) + one per eng_idx_get */
    uint8_t id[CDX_ID_LEN];
    char name[CDX_INDEX_NAME_MAX + 1];
    eng_catentry cat;
    pthread_mutex_t mu;
    uint64_t hw; /* rollback high-water mark (persisted) */
    bool hw_loaded;
    bool tomb;   /* the index was deleted (here or, by the token's mark, elsewhere) */
    uint32_t gen; /* the mark's generation (hsm_mark.h): grows with every accept-rollback */
    /* The token's shared mark (hsm_mark.h, eng_config.token_mark_ms): when it was last merged
     * with hw and tomb, and the version it then held. */
    pthread_mutex_t tok_mu; /* one token-mark merge of this index at a time (eng_hw_sync) */
    bool tok_synced;
    int64_t tok_sync_ms;
    uint64_t tok_version;
    /* The last head read found the store older than hw (eng_rollback_count); cleared by a
     * head read at or above hw, or by eng_accept_rollback. */
    bool in_rollback;
    uint64_t rollback_store; /* with in_rollback: the store's head version then */
    eng_manifest *m;   /* latest manifest seen, shared */
    int64_t m_read_ms; /* monotonic time of the head read that produced m */
    /* The buckets as this appliance committed them with manifest wb_token (write path). */
    struct eng_bucketset *wb;
    uint8_t wb_token[ENG_TOKEN_LEN];
    /* Maintenance (eng_sweep.c, eng_maint.c); not guarded by mu. */
    pthread_mutex_t sweep_mu; /* one sweep of this index at a time; guards seen */
    eng_seen *seen;           /* unreferenced records waiting for their grace, sorted */
    size_t nseen;
    atomic_uint_fast64_t commits;       /* commits this engine made to the index */
    atomic_uint_fast64_t maint_commits; /* commits at the last maintenance */
    atomic_uint_fast64_t maint_due_ms;  /* wall time a waiting record ripens; 0 = none */
    atomic_uint_fast64_t maint_after_ms; /* wall time before which no maintenance runs */
    /* What describe reports of maintenance on this appliance (eng_index_info). */
    atomic_uint_fast64_t last_compact_ms, last_sweep_ms, sweep_waiting, sweep_waiting_bytes;
    /* Key epochs (eng_rotate.c): the epoch and floor of the state loaded last, a rotation's
     * progress (items re-encrypted / to do in its current attempt), one job at a time. */
    atomic_uint epoch, min_epoch;
    atomic_uint_fast64_t rot_done, rot_total;
    atomic_bool rot_queued; /* waiting for or in the engine's rotation thread */
    pthread_mutex_t rot_mu;
    pthread_mutex_t gate_mu; /* the compaction gate (eng_gate_*) */
    pthread_cond_t gate_cv;  /* CLOCK_MONOTONIC */
    unsigned gate_closed; /* how many closed it (a compaction and a rotation may overlap) */
};

struct eng {
    eng_config cfg;
    atomic_uint mark_ms; /* cfg.token_mark_ms, or 0 once the token refused a mark (eng_head.h) */
    char state_dir[4096];
    hsm_key_ref root;
    uint8_t root_kcv[CDX_KCV_LEN];
    eng_cache *cache;
    pthread_mutex_t mu; /* guards the idx list (not the entries' contents) */
    struct idx *idx;
    eng_commit_hook hook;
    void *hook_arg;
    atomic_uint_fast64_t commits, conflicts, queries;
    atomic_uint_fast64_t ns_head, ns_coarse, ns_keys, ns_fetch, ns_decrypt, ns_distance;
    atomic_uint_fast64_t n_screened, n_rescored, n_probe_rescored;
    atomic_uint_fast64_t n_widened; /* filtered query vectors that widened their probes (rounds) */
    atomic_bool no_screen; /* test hook */
    /* The rotation thread (eng_rotate.c): started on demand, stopped by eng_free. */
    pthread_mutex_t rot_mu;
    pthread_cond_t rot_cv; /* CLOCK_MONOTONIC */
    bool rot_running, rot_stop;
    pthread_t rot_thread;
    struct idx **rot_q; /* indexes waiting for it (a reference each) */
    size_t rot_n, rot_cap;
    atomic_uint_fast64_t rotations, rotation_failures;
    eng_rotate_hook rot_hook; /* test hook: called between a rotation's steps */
    void *rot_hook_arg;
};

#define ENG_NPURPOSE 9 /* subkey purposes an op may hold (hsm_purpose values) */

/*
 * One request's context on one index (or on the root key for the catalog):
 * the key it works under and the subkeys and sealers fetched so far (eng_op.h).
 * Owned by the request's thread; worker threads get copies (eng_op_worker).
 */
/*
 * The index's token keys as the catalog names them (docs/ROTATION.md "--new-key"): the
 * current key (generation gen, KCV kcv) and, while a --new-key rotation is pending, the new
 * key, used for records of key epoch next_epoch and above.
 */
typedef struct eng_keyset {
    uint32_t gen;
    uint8_t kcv[CDX_KCV_LEN];
    uint8_t next_has; /* ENG_NEXT_* (eng_catalog.h) */
    uint32_t next_gen;
    uint8_t next_kcv[CDX_KCV_LEN];
    uint32_t next_epoch;
} eng_keyset;

typedef struct op {
    eng *e;
    struct idx *ix;
    hsm_key_ref key;          /* the key of `epoch` (key.gen from ks) */
    uint8_t kcv[CDX_KCV_LEN];
    eng_keyset ks;            /* index ops: the keys, copied from ix->cat */
    bool ks_fresh;            /* ks was re-read from the catalog during this op */
    hsm_key_ref xkey;         /* the spare slot's key and KCV */
    uint8_t xkcv[CDX_KCV_LEN];
    /*
     * Key epochs (docs/ROTATION.md): records are sealed under `epoch` (the
     * epoch of the state loaded last, eng_op_set_state), sk[] and sl[] are its
     * subkeys. A record of another epoch (the head and manifest before the
     * state is known, a rotation reading the old epoch) is opened with the
     * spare slot xsk[] (epoch xepoch), on the op's own thread only; records
     * below min_epoch are refused.
     */
    uint32_t epoch, min_epoch, xepoch;
    pthread_t owner; /* the thread that started the op: the only one that fetches spare subkeys */
    bool worker;     /* a copy for a worker thread (eng_op_worker): fetches none */
    hsm_subkey *sk[ENG_NPURPOSE];
    eng_sealer sl[ENG_NPURPOSE]; /* keyed with sk[]: freed before they are released */
    hsm_subkey *xsk[ENG_NPURPOSE];
    /* Monotonic ms of the first immutable record the op's pending commit names (0: not
     * tracked): eng_commit refuses once that is eng_write_window_ms old. */
    int64_t wrote_since;
} op;

/*
 * Internal: a newer commit landed mid-read; the caller re-reads the head and
 * retries. Never returned to callers (eng_in_index turns a leftover one into ABORTED).
 */
#define ENG_MOVED ((cdx_err)1000)

/*
 * Internal: eng_commit refused because the records its commit names were
 * written eng_write_window_ms ago (op.wrote_since); nothing was committed and
 * the detail is set. A writer writes them again; a rewrite reports
 * CDX_ERR_FAILED_PRECONDITION (eng_commit_rewrite).
 */
#define ENG_AGED ((cdx_err)1001)

/* Per-thread stage time, for callers attributing one request's stages (eng_thread_stages). */
extern _Thread_local uint64_t eng_tl_stage[ENG_STAGE_COUNT];
extern _Thread_local uint8_t eng_tl_index[CDX_ID_LEN];
extern _Thread_local bool eng_tl_index_set;
extern _Thread_local uint32_t eng_tl_epoch; /* the key epoch of the state eng_tl_index was at */

/* Add ns to a global stage counter and to this thread's share. Thread-safe. */
static inline void eng_stage_add(atomic_uint_fast64_t *global, eng_stage st, uint64_t ns)
{
    atomic_fetch_add(global, ns);
    eng_tl_stage[st] += ns;
}

/* True if all d floats of v are finite. */
static inline bool eng_finite_vec(const float *v, size_t d)
{
    for (size_t i = 0; i < d; i++)
        if (!isfinite(v[i]))
            return false;
    return true;
}

/*
 * Check an index name ([A-Za-z0-9_.-]{1,CDX_INDEX_NAME_MAX}).
 * Errors: CDX_ERR_INVALID_ARGUMENT (with the offending character).
 */
cdx_err eng_check_name(const char *name);

/*
 * Check item id i of a batch: 1..CDX_ITEM_ID_MAX bytes of strict UTF-8, no NUL.
 * Errors: CDX_ERR_INVALID_ARGUMENT (naming item i).
 */
cdx_err eng_check_id(const char *id, size_t len, size_t i);

/*
 * Name the index in err's detail (once: a detail already starting "index "
 * is left alone); ENG_MOVED becomes CDX_ERR_ABORTED. Returns the error.
 */
CDX_MUST_CHECK cdx_err eng_in_index(cdx_err err, const char *name);

/*
 * The ready index called `name`: from the registry, or read from the catalog
 * and registered. *out is a counted reference: release it with eng_idx_put
 * (eng_op_index hands it to the op, and eng_op_end releases it), so a
 * concurrent eng_idx_forget never frees an entry in use. Thread-safe (e->mu).
 * Errors: CDX_ERR_INVALID_ARGUMENT (bad name), CDX_ERR_NOT_FOUND (no such
 * index), CDX_ERR_FAILED_PRECONDITION (being created or deleted),
 * CDX_ERR_RESOURCE_EXHAUSTED, and those of eng_cat_read.
 */
cdx_err eng_idx_get(eng *e, const char *name, struct idx **out);

/*
 * The compaction gate of an index (eng_maint.c). A compaction (or a key
 * rotation) takes longer than a small commit, so under a steady stream of
 * this engine's writers it would lose every optimistic attempt; after losing
 * one it closes the gate, and writers starting an attempt wait while it is
 * closed (at most CDX_GATE_WAIT_MS, then they go ahead anyway) until every
 * closer has opened it again.
 * Other appliances' writers are not held. Thread-safe.
 */
void eng_gate_close(struct idx *ix);
void eng_gate_open(struct idx *ix);
void eng_gate_wait(struct idx *ix);

/*
 * Drop the registered state of index id (deleted, or found gone); a no-op
 * if none. The caller must hold no pointer into it. Thread-safe (e->mu).
 */
void eng_idx_forget(eng *e, const uint8_t id[CDX_ID_LEN]);

/* Copy the key fields (kcv, key_gen, next_*) of catalog entry c into ix->cat. Thread-safe
 * (ix->mu). */
void eng_idx_set_keys(struct idx *ix, const eng_catentry *c);

/*
 * Complete the key side of a --new-key rotation of o's index if its state
 * reached the new key's epoch: move the catalog entry to the new key, release
 * the old key's claim and destroy it (if owned). Nothing pending: success.
 * Resumable. Errors: the store's and custody's, CDX_ERR_ABORTED (the entry
 * changed meanwhile).
 */
struct op;
cdx_err eng_rotate_finish(struct op *o);

/*
 * A rotation of ix is pending (its state says so): queue it for the engine's
 * rotation thread (started on first use) unless it is queued or running.
 * Thread-safe; holds no lock of the caller's.
 */
void eng_rotate_notice(eng *e, struct idx *ix);

/* Stop the rotation thread (a run in progress stops at its next step) and drop its queue. */
void eng_rotate_stop(eng *e);

/* Release a reference from eng_idx_get; the entry is freed with the last one. NULL: no-op. */
void eng_idx_put(struct idx *ix);

/* eng_idx_put(ix), then err: for a return before the reference went to an op. */
static inline cdx_err eng_idx_drop(struct idx *ix, cdx_err err)
{
    eng_idx_put(ix);
    return err;
}

/*
 * How long records written for a commit that has not landed yet may be
 * named by it. The sweep notes an unreferenced record once it was written
 * more than gc_grace_ms ago and deletes it a grace later (eng_sweep.c), so a
 * record may go from two graces after it was written: whoever commits names
 * written that long ago must write them again, or give up. One grace leaves
 * the other for the commit itself and for clock skew between appliances.
 * Graces below the daemon's floor (CDX_GC_GRACE_MS_MIN) exist only in tests,
 * which sweep when they choose: there the floor applies.
 */
static inline int64_t eng_write_window_ms(const eng *e)
{
    uint32_t g = e->cfg.gc_grace_ms;
    return g > CDX_GC_GRACE_MS_MIN ? (int64_t)g : CDX_GC_GRACE_MS_MIN;
}

#endif
