/*
 * eng.h - the encrypted IVF engine: the C API the appliance calls.
 *
 * An engine instance owns nothing secret: it asks custody (pkcs11/) for
 * subkeys per operation and keeps every byte in the store (engine/eng_store.h)
 * encrypted (eng_record.h) or tokenised. Thread-safe: any number of threads
 * may call any operation; concurrent writers to one index (in this process or
 * in other appliances sharing the store) are serialised by optimistic
 * commits on the index head (WATCH/MULTI/EXEC) with rebase and bounded retry.
 *
 * Every function returns a cdx_err and sets a detail (cdx_err_detail) that
 * names the index and what to fix. Common errors of every index operation:
 * CDX_ERR_NOT_FOUND (no such index), CDX_ERR_FAILED_PRECONDITION (index
 * being created or deleted), CDX_ERR_INTEGRITY (a stored record failed
 * authentication: names the record kind), CDX_ERR_ROLLBACK_DETECTED,
 * CDX_ERR_KEY_NOT_FOUND / CDX_ERR_KEY_REPLACED (index key gone or replaced),
 * CDX_ERR_STORE_UNAVAILABLE, CDX_ERR_HSM_UNAVAILABLE, CDX_ERR_ABORTED
 * (commit retries exhausted under contention), CDX_ERR_RESOURCE_EXHAUSTED.
 */
#ifndef ENG_H
#define ENG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cdx_err.h"
#include "cdx_limits.h"
#include "eng_blas.h"
#include "eng_store.h"
#include "hsm_custody.h"

typedef struct eng eng;

typedef struct eng_config {
    hsm_custody *custody;              /* borrowed; must outlive the engine */
    eng_store *store;                  /* borrowed */
    uint8_t deployment_id[CDX_ID_LEN]; /* names the root key (created if missing) */
    const char *state_dir;             /* rollback high-water marks; created 0700 */
    uint32_t token_mark_ms;            /* merge each index's mark with a copy on the token
                                          (hsm_mark.h, shared by every appliance) at most
                                          this often while the index is used; 0 = no
                                          token marks */
    uint32_t manifest_max_age_ms;      /* 0: read the head on every request */
    size_t cache_bytes;                /* decrypted search-block cache; 0 = none */
    uint32_t gc_grace_ms;              /* sweep keeps unreferenced records this long; 0 = 10 min */
    unsigned query_threads;            /* batch queries spread over threads; 0 = 1 */
    unsigned commit_retries;           /* optimistic commit attempts; 0 = 32 */
    size_t result_bytes_max;           /* largest answer a get or query builds (its hits'
                                          bytes, eng_rbudget); 0 = CDX_RESULT_MAX_DEFAULT */
    bool allow_plaintext_import;       /* ENG_KEY_IMPORT allowed (development only) */
    bool require_generated;            /* refuse an index key the token does not report as
                                          generated there (CKA_LOCAL, NEVER_EXTRACTABLE) */
    uint32_t max_probes;               /* a filtered query that finds fewer than top_k
                                          matches widens its probes up to this many
                                          clusters (eng_query.max_probes); 0 = all */
    bool no_rotation_thread;           /* pending key rotations run only when asked
                                          (eng_rotate_run): tests, diagnosis */
} eng_config;

/*
 * Errors: CDX_ERR_INVALID_ARGUMENT, CDX_ERR_CONFIG (state dir unusable),
 * custody errors while ensuring the root key.
 */
cdx_err eng_new(const eng_config *cfg, eng **out);
/* Free the engine and its cache; no operation may be running. NULL is a no-op. */
void eng_free(eng *e);

typedef enum eng_metric {
    ENG_METRIC_EUCLIDEAN = 1,
    ENG_METRIC_SQUARED_EUCLIDEAN = 2,
    ENG_METRIC_COSINE = 3,       /* searched on normalised vectors; distance = 1 - cos */
    ENG_METRIC_INNER_PRODUCT = 4 /* distance = -<q, x> (smaller is closer, like the others) */
} eng_metric;

typedef enum eng_index_type {
    ENG_IVFFLAT = 1,
    ENG_IVFSQ8 = 2,
} eng_index_type;

/* Parse "euclidean" / "ivfsq8" (ASCII case ignored); 0 if unknown or NULL. */
eng_metric eng_metric_parse(const char *s);
eng_index_type eng_index_type_parse(const char *s);
/* The name of a metric / type (static string); "unknown" for any other value. */
const char *eng_metric_name(eng_metric m);
const char *eng_index_type_name(eng_index_type t);

typedef enum eng_key_source {
    ENG_KEY_GENERATE = 0, /* default: generated on the token */
    ENG_KEY_UNWRAP = 1,   /* a KMS-wrapped data key, unwrapped with a named KEK */
    ENG_KEY_ADOPT = 2,    /* an existing token key minted by the admin tool */
    ENG_KEY_IMPORT = 3,   /* 32 plaintext bytes (development only; eng_config allows it) */
} eng_key_source;

/* How an index key came to the token (recorded at creation, bound into the catalog entry). */
typedef enum eng_key_origin {
    ENG_ORIGIN_UNKNOWN = 0,   /* the index was created before provenance was recorded */
    ENG_ORIGIN_GENERATED = 1, /* generated on the token for this index */
    ENG_ORIGIN_UNWRAPPED = 2, /* unwrapped on the token from a KMS-wrapped key (prov.kek) */
    ENG_ORIGIN_IMPORTED = 3,  /* imported from a plaintext key (development only) */
    ENG_ORIGIN_ADOPTED = 4,   /* an existing token key, adopted (see prov.attrs: CKA_LOCAL) */
} eng_key_origin;

/* An index key's provenance: its origin, the token, and the attributes read back from it. */
typedef struct eng_key_prov {
    uint8_t origin;                 /* eng_key_origin */
    char kek[CDX_KEK_NAME_MAX + 1]; /* ENG_ORIGIN_UNWRAPPED: the KEK's name */
    char serial[17];                /* the token's serial number */
    char token_model[50];           /* "<manufacturer> <model>" of the token */
    uint32_t attrs, unknown;        /* HSM_A_* bits read TRUE / not reported at creation */
    uint8_t flags;                  /* ENG_PROV_* */
} eng_key_prov;

/* eng_key_prov.flags */
enum {
    /* Made or adopted under [hsm] copyable = unsupported on a token that does not honour
     * CKA_COPYABLE: a PIN holder could copy the key into a derivable one (docs/CUSTODY.md). */
    ENG_PROV_COPYABLE_NOT_ENFORCED = 1u << 0,
};
#define ENG_PROV_FLAGS_KNOWN ENG_PROV_COPYABLE_NOT_ENFORCED

/* "generated", "unwrapped", "imported", "adopted" or "unknown" (static string). */
const char *eng_key_origin_name(eng_key_origin o);

typedef struct eng_create {
    const char *name;   /* 1-128 of [A-Za-z0-9_.-] */
    uint32_t dimension; /* 1..CDX_DIM_MAX */
    eng_metric metric;
    eng_index_type type;
    uint32_t n_lists; /* clusters after training; 0 = chosen at training */
    eng_key_source key_source;
    const char *kek_name;   /* ENG_KEY_UNWRAP */
    const uint8_t *wrapped; /* ENG_KEY_UNWRAP: 40 bytes */
    size_t wrapped_len;
    uint8_t adopt_id[CDX_ID_LEN]; /* ENG_KEY_ADOPT: the key's CKA_ID becomes the index id */
    const uint8_t *import_key;    /* ENG_KEY_IMPORT: 32 bytes, not kept (the caller wipes) */
} eng_create;

typedef struct eng_index_info {
    char name[CDX_INDEX_NAME_MAX + 1];
    char state[12]; /* "ready", "rotating" (a key rotation is pending: still serving), or
                       "creating" / "deleting" (unfinished) */
    uint8_t id[CDX_ID_LEN];
    uint32_t dimension;
    eng_metric metric;
    eng_index_type type;
    uint32_t n_lists;    /* configured */
    uint32_t n_clusters; /* trained clusters; 0 = untrained (exhaustive search) */
    uint64_t count;      /* live items */
    uint64_t version;    /* head version */
    uint8_t kcv[CDX_KCV_LEN];
    eng_key_source key_source;
    bool owned;        /* the key is destroyed with the index */
    eng_key_prov prov; /* how the key came to the token */
    uint32_t segments; /* live segments */
    uint64_t created_ms;
    /* Store use: rows in live segments that deletes and updates left behind (they go with the
     * next compaction of their cluster), and the sealed bytes of the live segments. */
    uint64_t dead_rows;
    uint64_t segment_bytes;
    /* Maintenance on this appliance (0: none since it started): unreferenced records its last
     * sweep kept for their grace (and their stored bytes: retired segments, superseded
     * manifests, replaced contents), and when it last compacted and swept (wall ms). */
    uint64_t records_waiting, retired_bytes;
    uint64_t last_compaction_ms, last_sweep_ms;
    /*
     * "ok", or why this index cannot be served (eng_index_list and
     * eng_index_describe): "rollback_detected" (version is then the store's
     * head version), "integrity", "key_not_found", "key_replaced",
     * "key_ambiguous", or "incomplete" (state creating or deleting: a create or
     * delete that did not finish). When not "ok" only the catalog fields (and
     * version for a rollback) are set, and status_message says what is wrong
     * and what to do (an error detail).
     */
    char status[24];
    char status_message[512];
    /*
     * Key epochs (docs/ROTATION.md): the epoch the index's records are sealed
     * under, the minimum readable one, and a rotation in progress (rotate_to
     * 0 = none; then state is "rotating") with its progress: items
     * re-encrypted / to re-encrypt in its current attempt (0/0 until its
     * first attempt, or on an appliance not running it).
     */
    uint32_t key_epoch, min_epoch, rotate_to;
    uint64_t rotate_done, rotate_total;
    uint64_t rotate_started_ms; /* wall time the pending rotation was asked for */
    uint64_t rotated_ms;        /* wall time the last rotation completed; 0 = never */
    /* The token key's generation (0: the key the index was created with; +1 per completed
     * `rotate --new-key`; kcv is its KCV) and, while a --new-key rotation is pending, the new
     * key's generation and KCV (new_key_gen 0 = none). */
    uint32_t key_gen, new_key_gen;
    uint8_t new_key_kcv[CDX_KCV_LEN];
} eng_index_info;

/*
 * Create an index: claims the name (SET NX), provisions the key, writes the
 * first head. Resumable: creating a name whose creation crashed halfway
 * resumes it (same parameters) instead of failing.
 * Errors: CDX_ERR_INVALID_ARGUMENT, CDX_ERR_ALREADY_EXISTS, CDX_ERR_KEY_IN_USE
 * (adopted key belongs to another index), custody errors (BAD_WRAPPED_KEY...).
 */
cdx_err eng_index_create(eng *e, const eng_create *req, eng_index_info *out);
/* The index's catalog entry and current state (reads the head unless cached). An index that
 * cannot be served, or is creating or deleting, is described from its catalog entry with its
 * status and what to do (eng_index_info.status), not refused. Errors: CDX_ERR_NOT_FOUND, the
 * store's and custody's (the appliance, not the index, is in trouble). */
cdx_err eng_index_describe(eng *e, const char *name, eng_index_info *out);
/*
 * The dimension of index `name` from the catalog entry this engine holds
 * (no head read: cheap enough per request, e.g. to split a batch of query
 * vectors). Errors: CDX_ERR_NOT_FOUND, CDX_ERR_FAILED_PRECONDITION
 * (unfinished create/delete), store errors on the first lookup.
 */
cdx_err eng_index_dimension(eng *e, const char *name, uint32_t *dim);
/*
 * All indexes, sorted by name; *out malloc'ed (free()). Unfinished ones are
 * listed from their catalog entry; one deleted meanwhile is skipped. An index
 * that cannot be served (CDX_ERR_ROLLBACK_DETECTED, CDX_ERR_INTEGRITY,
 * CDX_ERR_KEY_NOT_FOUND, CDX_ERR_KEY_REPLACED, CDX_ERR_KEY_AMBIGUOUS) is
 * listed from its catalog entry with that status (eng_index_info.status)
 * instead of failing the whole list.
 * Errors: those of the catalog scan (a catalog entry that fails
 * authentication is CDX_ERR_INTEGRITY), and any index's other errors
 * (CDX_ERR_STORE_UNAVAILABLE, CDX_ERR_HSM_UNAVAILABLE ...: the appliance,
 * not one index, is in trouble).
 */
cdx_err eng_index_list(eng *e, eng_index_info **out, size_t *n);
/*
 * eng_index_list, except that a catalog entry failing authentication (its
 * name cannot be read: tampered or corrupt) is skipped, logged with its store
 * key (catalog_entry_unreadable) and counted in *unreadable (at least once
 * each) instead of failing the list. unreadable NULL: as eng_index_list.
 */
cdx_err eng_index_list_all(eng *e, eng_index_info **out, size_t *n, size_t *unreadable);
/*
 * Delete: needs the key (checks it), marks the entry deleting, destroys the
 * token key if owned, removes every record, then the entry. Resumable.
 * confirm_id must equal the index id (CDX_ERR_FAILED_PRECONDITION otherwise).
 */
cdx_err eng_index_delete(eng *e, const char *name, const uint8_t confirm_id[CDX_ID_LEN]);
/*
 * Admin: remove the records of indexes whose key is gone from the token
 * (catalog entry and data), and records no catalog entry references.
 * *removed counts deleted store keys.
 */
cdx_err eng_purge(eng *e, uint64_t *removed);

/*
 * Copy every index's rollback mark that changed since it was last merged to
 * the token (eng_config.token_mark_ms): those last merged token_mark_ms ago
 * or more, or with force all of them. The maintenance thread calls it each
 * pass, eng_free (forced) at the end. Failures are logged
 * (token_mark_sync_failed) and retried at the next call. NULL or token marks
 * off: a no-op.
 */
void eng_marks_flush(eng *e, bool force);

typedef struct eng_train_opts {
    uint32_t n_lists;             /* 0: keep the index's n_lists (or sqrt(count) if it has none) */
    uint32_t max_iters;           /* 0: CDX_TRAIN_ITERS_DEFAULT */
    float tolerance;              /* 0: 1e-4 relative objective change */
    uint64_t seed;                /* 0: 1234 */
    uint32_t max_points_per_list; /* 0: CDX_TRAIN_POINTS_PER_LIST */
    /*
     * Optional caller-supplied training sample (sample_n x dimension floats):
     * k-means runs on exactly these points instead of a sample of the items,
     * so an empty index can be trained before its data arrives (benchmarks
     * comparing against a peer on the same sample, reproducible builds).
     */
    const float *sample;
    size_t sample_n;
} eng_train_opts;

/*
 * Train (or retrain) and redistribute: k-means on a sample, then every item
 * moves into the new clusters in one commit. *version = commit version.
 * Errors: CDX_ERR_INVALID_ARGUMENT (n_lists, max_iters, a non-finite
 * sample), CDX_ERR_FAILED_PRECONDITION (fewer items than lists), the common ones.
 */
cdx_err eng_train(eng *e, const char *name, const eng_train_opts *o, uint64_t *version);

typedef struct eng_item {
    const char *id; /* 1-256 bytes, valid UTF-8, no NUL */
    size_t id_len;
    const float *vector;  /* dimension floats, finite */
    const char *metadata; /* JSON object text, or NULL/empty: none */
    size_t metadata_len;
    const uint8_t *contents; /* NULL/0: none */
    size_t contents_len;
} eng_item;

/*
 * Upsert a batch, all or nothing; an upsert replaces the whole item.
 * Errors: CDX_ERR_INVALID_ARGUMENT (dimension, NaN/Inf, empty batch,
 * duplicate ids in the batch, sizes, UTF-8, metadata JSON: detail names the
 * item index and id).
 */
cdx_err eng_upsert(eng *e, const char *name, const eng_item *items, size_t n, uint64_t *version);

/*
 * Delete ids (missing ids are ignored; an id listed twice counts once;
 * *deleted counts those that existed).
 * Errors: CDX_ERR_INVALID_ARGUMENT (no ids, over CDX_GET_BATCH_MAX, bad id), the common ones.
 */
cdx_err eng_delete(eng *e, const char *name, const char *const *ids, const size_t *id_lens,
                   size_t n, uint64_t *deleted, uint64_t *version);

enum {
    ENG_WANT_VECTOR = 1u << 0,
    ENG_WANT_METADATA = 1u << 1,
    ENG_WANT_CONTENTS = 1u << 2,
    ENG_WANT_DISTANCE = 1u << 3,
};

/* One returned item (get and query results). Buffers owned by the result. */
typedef struct eng_hit {
    char *id;
    size_t id_len;
    float distance;
    float *vector;  /* ENG_WANT_VECTOR */
    char *metadata; /* ENG_WANT_METADATA: JSON text or NULL */
    size_t metadata_len;
    uint8_t *contents; /* ENG_WANT_CONTENTS */
    size_t contents_len;
} eng_hit;

typedef struct eng_get_result {
    size_t n;         /* = number of ids asked */
    bool *found;      /* found[i] for ids[i] */
    eng_hit *hits;    /* hits[i] valid when found[i] */
    uint64_t version; /* head version served */
} eng_get_result;

/*
 * Look up n ids, with what `want` asks (ENG_WANT_*), in a state at least
 * min_version. Each segment's vector and metadata block is fetched and
 * opened once per call, however many of its rows are asked for.
 * *out is malloc'ed: eng_get_result_free it.
 * Errors: CDX_ERR_INVALID_ARGUMENT (1..CDX_GET_BATCH_MAX ids, bad id, an id
 * listed twice: the detail names both positions), CDX_ERR_RESOURCE_EXHAUSTED
 * (the answer would pass cfg.result_bytes_max: refused while the hits are
 * filled, before the contents that would pass it are read), CDX_ERR_BUSY
 * (the thread's memory hook refused more: eng_thread_mem_hook), CDX_ERR_STALE,
 * the common ones.
 */
cdx_err eng_get(eng *e, const char *name, const char *const *ids, const size_t *id_lens, size_t n,
                unsigned want, uint64_t min_version, eng_get_result **out);
/*
 * Memory accounting for answers, per request: while a get or query builds
 * its hits, the engine calls fn(arg, n) before it holds n more bytes of them
 * on behalf of the calling thread's request (from that thread or from the
 * query threads it spreads over: fn must be thread-safe). fn returning false
 * stops the request with CDX_ERR_BUSY. Set by a server around each engine
 * call on its worker thread; fn NULL clears it (no accounting).
 */
typedef bool (*eng_mem_fn)(void *arg, size_t n);
void eng_thread_mem_hook(eng_mem_fn fn, void *arg);

/* Free a get result and its hits; NULL is a no-op. */
void eng_get_result_free(eng_get_result *r);

typedef struct eng_query {
    const float *vectors; /* nq x dimension, row-major */
    size_t nq;
    uint32_t top_k;      /* 0: CDX_TOPK_DEFAULT */
    uint32_t n_probes;   /* 0: automatic (eng_default_probes) */
    uint32_t max_probes; /* with a filter: widen up to this many clusters while fewer than
                          * top_k match; 0: cfg.max_probes; at most n_probes: no widening */
    const char *filter;  /* JSON filter text or NULL/empty */
    size_t filter_len;
    unsigned want;        /* ENG_WANT_* */
    uint64_t min_version; /* refuse (STALE) if the served head is older */
} eng_query;

typedef struct eng_query_result {
    size_t nq;
    size_t *n;      /* hits per query (may be < top_k with a selective filter) */
    eng_hit **hits; /* hits[q][i], best first */
    uint64_t version;
    uint32_t n_probes; /* clusters probed: the most any query vector probed (n_probes or the
                        * automatic value clamped to the index's, then widened by a filter);
                        * 0: untrained, every item scanned */
    uint32_t *probed;  /* probed[q]: clusters query vector q probed (0: untrained) */
} eng_query_result;

/*
 * The automatic n_probes of an index of nc trained clusters (0: untrained,
 * returns 0): max(ceil(sqrt(nc)), ceil(nc / 32), CDX_PROBES_AUTO_MIN),
 * at most nc (docs/FILTERS.md, "Probes").
 */
uint32_t eng_default_probes(uint32_t nc);

/*
 * Probes: n_probes (or eng_default_probes) nearest clusters, clamped to the
 * index's count. With a filter, a query vector whose probed clusters hold
 * fewer than top_k live matches probes the next-nearest clusters too,
 * doubling its count each round (segments already read are kept, not read
 * again), until top_k match or max_probes (the query's, else the config's,
 * else all clusters) are probed. Without a filter nothing widens.
 * Errors besides the common ones: CDX_ERR_INVALID_ARGUMENT (dimension or
 * top_k out of range, NaN, malformed filter; n_probes and max_probes above
 * the index's cluster count are clamped, not refused), CDX_ERR_STALE,
 * CDX_ERR_RESOURCE_EXHAUSTED (the answer would pass cfg.result_bytes_max:
 * before the scan when an untrained, unfiltered index makes that certain,
 * else while the hits are filled), CDX_ERR_BUSY (eng_thread_mem_hook refused
 * more). The hits of all query vectors together read each segment's vector
 * and metadata block once.
 */
cdx_err eng_query_run(eng *e, const char *name, const eng_query *q, eng_query_result **out);
/* Free a query result and its hits; NULL is a no-op. */
void eng_query_result_free(eng_query_result *r);

/*
 * Ids in a stable order, a page at a time. cursor NULL/empty starts; the
 * returned *next (malloc'ed, sealed under the query subkey: opaque to
 * clients and tamper-evident) is NULL at the end. limit 0 = 1000.
 * *ids and *id_lens are malloc'ed (eng_ids_free).
 * Errors: CDX_ERR_INVALID_ARGUMENT (limit over CDX_LIST_PAGE_MAX, a cursor
 * this index did not issue), the common ones.
 */
cdx_err eng_list_ids(eng *e, const char *name, const char *cursor, uint32_t limit, char ***ids,
                     size_t **id_lens, size_t *n, char **next);

/*
 * eng_list_ids with its cursors bound to `bind` (the caller's principal;
 * NULL/0: no binding) and to time now_ms (0: the wall clock): a cursor opens
 * only for the same index and binding, within CDX_CURSOR_TTL_MS of issue;
 * its sealing key changes every CDX_CURSOR_WINDOW_MS (docs/RECORDS.md).
 * Errors: as eng_list_ids (INVALID_ARGUMENT also: expired, another
 * principal's cursor).
 */
cdx_err eng_list_ids_for(eng *e, const char *name, const void *bind, size_t bind_len,
                         uint64_t now_ms, const char *cursor, uint32_t limit, char ***ids,
                         size_t **id_lens, size_t *n, char **next);
/* Free n ids and both arrays (NULLs are fine). */
void eng_ids_free(char **ids, size_t *id_lens, size_t n);

/* Live items in the current state (cached up to manifest_max_age_ms). Errors: the common ones. */
cdx_err eng_count(eng *e, const char *name, uint64_t *count);

/*
 * Load every segment's search block (and, for a trained IVFFlat index, its
 * vector block) into the block cache, as far as cache_bytes allows: the
 * first queries then run warm. *blocks (may be NULL) gets the segments read.
 * Errors: as eng_query_run's, and CDX_ERR_INTEGRITY for a missing segment.
 */
cdx_err eng_index_warm(eng *e, const char *name, uint64_t *blocks);

/*
 * Merge each cluster's segments into one. The old ones leave the manifest
 * and are deleted by a later sweep, a grace after (eng_maint.h); nothing is
 * deleted here. *version = the commit (or the current version if nothing
 * to merge). Errors: the common ones.
 */
cdx_err eng_compact(eng *e, const char *name, uint64_t *version);

/*
 * Delete records of this index that the current head does not reference,
 * that were written more than gc_grace ago, and that this engine found
 * unreferenced at least gc_grace ago (a record seen unreferenced for the
 * first time is only remembered: with gc_grace > 0 a single sweep deletes
 * nothing it had not seen before). eng_sweep_run (eng_maint.h) reports more.
 * *deleted counts store keys removed. Errors: the common ones.
 */
cdx_err eng_sweep(eng *e, const char *name, uint64_t *deleted);

/*
 * Admin: accept the store's current head of `name` although it is older than
 * the highest version this appliance saw (a lost tail, a restored backup):
 * the persisted mark and the in-memory one drop to it, so the index serves
 * again at once, without a restart. confirm_version (0: no check) must equal
 * the store's head version, so exactly the state the operator inspected is
 * accepted. An index not in rollback is left alone (success, *previous <=
 * *version): a retry is harmless. Logged (WARN eng_rollback_accepted with
 * the index id and both versions). *previous (may be NULL) = the mark
 * before, *version (may be NULL) = the accepted head version.
 * Errors: CDX_ERR_NOT_FOUND (no index, or no head), CDX_ERR_FAILED_PRECONDITION
 * (the head is not at confirm_version; nothing changed), CDX_ERR_CONFIG (the
 * mark cannot be written), the common ones except CDX_ERR_ROLLBACK_DETECTED.
 */
cdx_err eng_accept_rollback(eng *e, const char *name, uint64_t confirm_version, uint64_t *previous,
                            uint64_t *version);

/*
 * Indexes whose last head read (by any operation of this engine) found the
 * store older than this appliance's mark (CDX_ERR_ROLLBACK_DETECTED), not
 * since accepted or caught up. Indexes not read since the engine started
 * are not counted (eng_index_list reads every head). Thread-safe; NULL: 0.
 */
size_t eng_rollback_count(eng *e);

/*
 * Key rotation (docs/ROTATION.md). eng_rotate starts one: it commits the
 * intent (rotate_to = current epoch + 1) in the index state, so it survives a
 * restart, and hands the index to the engine's rotation thread, which
 * re-encrypts every record under the new epoch's subkeys with new tokens in
 * one commit (rebased and retried like training). Reads and writes go on
 * meanwhile. Asking again while one is pending resumes it (no second epoch).
 * *out (may be NULL) = the index after the start commit.
 * Errors: CDX_ERR_RESOURCE_EXHAUSTED (the epoch counter is spent), the common ones.
 */
cdx_err eng_rotate(eng *e, const char *name, eng_index_info *out);

/*
 * eng_rotate, and with new_key a new index key for the new epoch
 * (docs/ROTATION.md "A new token key"): generation key_gen + 1 is generated
 * on the token (label "cipherdex-index-<id>.g<N>", same CKA_ID), claimed and
 * bound in the catalog entry as pending for the new epoch, then the intent is
 * committed. The rotation job seals the new epoch under it; when it
 * completes, the catalog moves to the new key and the old key's claim is
 * released and the old key destroyed (a key the index did not generate,
 * adopted or unwrapped, is not destroyed: it is logged as remaining). Each
 * step is resumable: asking again, any rotation run, or a head read of the
 * index finishes it. Errors: eng_rotate's, CDX_ERR_FAILED_PRECONDITION (a
 * rotation without a new key is pending), hsm_index_key_generate's.
 */
cdx_err eng_rotate_key(eng *e, const char *name, bool new_key, eng_index_info *out);

/* What one run of a rotation did. */
typedef struct eng_rotate_report {
    uint32_t from, to;        /* epochs; to = 0: nothing was pending */
    uint64_t items, contents; /* re-encrypted */
    uint64_t version;         /* the commit that completed it */
    unsigned attempts;        /* commit attempts (lost ones rebased) */
    uint64_t ms;
} eng_rotate_report;

/*
 * Run the pending rotation of `name` now, on the calling thread (what the
 * rotation thread does; --wait and tests). Nothing pending: success with
 * out->to = 0. One run per index at a time in an engine (a second waits).
 * Records written by an attempt that does not commit are left unreferenced
 * for the sweep. Errors: CDX_ERR_ABORTED (every attempt lost to concurrent
 * writers; still pending), CDX_ERR_CANCELLED (the engine is being freed or
 * the test hook stopped it; still pending), the common ones.
 */
cdx_err eng_rotate_run(eng *e, const char *name, eng_rotate_report *out);

/*
 * Test hook: called by a rotation run after each step ("gathered",
 * "sealed", "committing") with the index name; an error stops the run there
 * (the rotation stays pending, like a crash at that point). "committed"
 * comes after the completing commit and before the key switch of a
 * --new-key rotation (eng_rotate_key): an error there is a crash between the
 * two (the switch is resumed by the next run or head read).
 */
typedef cdx_err (*eng_rotate_hook)(void *arg, const char *index, const char *step);
/* Set (fn NULL: clear) before operations start (not synchronised). */
void eng_set_rotate_hook(eng *e, eng_rotate_hook fn, void *arg);

typedef struct eng_stats {
    uint64_t rotations, rotation_failures; /* rotations completed / runs failed (this engine) */
    /* indexes queued for or in this engine's rotation thread, and their progress (records
     * re-encrypted / to re-encrypt in their current attempts) */
    uint64_t rotations_pending, rotation_records_done, rotation_records_total;
    uint64_t commits, commit_conflicts;
    uint64_t cache_hits, cache_misses, cache_bytes;
    uint64_t queries;
    /* cumulative nanoseconds per query stage */
    uint64_t ns_head, ns_coarse, ns_keys, ns_fetch, ns_decrypt, ns_distance;
    /* trained indexes: rows bounded from their codes, and rows then scored exactly */
    uint64_t rows_screened, rows_rescored;
    uint64_t centroids_rescored; /* coarse step: centroids scored exactly after its screen */
    uint64_t probe_widenings;    /* rounds of widening: a filtered query vector short of top_k
                                    matches probing the next-nearest clusters */
} eng_stats;

/* A snapshot of the engine's counters (each read atomically, not all at one instant). */
void eng_get_stats(eng *e, eng_stats *out);

typedef enum eng_stage {
    ENG_STAGE_HEAD,   /* head and manifest reads */
    ENG_STAGE_COARSE, /* coarse quantisation */
    ENG_STAGE_KEYS,   /* subkey derivation */
    ENG_STAGE_FETCH,  /* store reads */
    ENG_STAGE_DECRYPT,
    ENG_STAGE_DISTANCE, /* scan, rescoring, filters, top-k */
    ENG_STAGE_COUNT
} eng_stage;

/*
 * Nanoseconds the calling thread spent per stage since its last call (then
 * reset): lets a server attribute one request's stages when requests run
 * on worker threads. Batched queries spread over query_threads count only
 * the calling thread's share.
 */
void eng_thread_stages(uint64_t out[ENG_STAGE_COUNT]);

/*
 * The index the calling thread last operated on since its last call (then
 * reset): its id and key epoch. False when it touched none (a refused or
 * catalog-wide request). Lets the audit trail name a request's index by id.
 */
bool eng_thread_index(uint8_t id[CDX_ID_LEN], uint32_t *epoch);

/* Test hooks: called before every commit with the index id (may block). */
typedef void (*eng_commit_hook)(void *arg, const uint8_t index_id[CDX_ID_LEN]);
/* Set (fn NULL: clear) the commit hook; set it before operations start (not synchronised). */
void eng_set_commit_hook(eng *e, eng_commit_hook fn, void *arg);

/*
 * Test hook: false makes trained indexes score every probed row exactly
 * instead of screening by code bounds first (the answers must not change).
 */
void eng_set_screen(eng *e, bool on);

#endif
