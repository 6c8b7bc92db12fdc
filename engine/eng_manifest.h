/*
 * eng_manifest.h - an index's manifest: its shape, its clusters and their
 * segments, retired segments, id-map bucket versions, and (decoded on
 * demand) the centroids and SQ8 quantiser of a trained index.
 *
 * A manifest is immutable once published: requests share it by reference
 * count (eng_manifest_ref / eng_manifest_unref are thread-safe); writers
 * change a clone (eng_manifest_clone_ref) and commit it (eng_commit.h).
 * Everything else here is not thread-safe on the same manifest unless it
 * only reads a published one.
 */
#ifndef ENG_MANIFEST_H
#define ENG_MANIFEST_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "eng.h"
#include "eng_buf.h"
#include "eng_keyspace.h"
#include "eng_kmeans.h"
#include "eng_probe.h"

#define ENG_MANIFEST_FMT       1 /* body format of a manifest with no key-epoch fields set */
#define ENG_MANIFEST_FMT_EPOCH 2 /* ... with them (min_epoch, rotation): docs/ROTATION.md */

typedef struct eng_segref {
    uint8_t token[ENG_TOKEN_LEN]; /* store name: HMAC(K_centroid, be32(cluster) salt) */
    uint8_t salt[ENG_SALT_LEN];
    uint64_t version; /* record version of its blocks */
    uint32_t rows;
    uint32_t search_len, vectors_len, meta_len; /* sealed block sizes, in this order */
} eng_segref;

typedef struct eng_cluster {
    uint32_t nseg, capseg;
    eng_segref *seg; /* oldest first */
} eng_cluster;

typedef struct eng_retired {
    uint8_t token[ENG_TOKEN_LEN];
    uint64_t retire_ms;
} eng_retired;

typedef struct eng_manifest {
    uint64_t version;             /* head version that points at it */
    uint8_t token[ENG_TOKEN_LEN]; /* its own store token */
    uint32_t dim;
    uint8_t metric, type;
    uint32_t n_lists;    /* configured */
    uint32_t n_clusters; /* 0 = untrained: one pseudo-cluster */
    uint32_t train_gen;
    uint64_t centroids_version; /* 0 = none */
    uint8_t centroids_token[ENG_TOKEN_LEN];
    uint32_t centroids_len;
    uint64_t bucket_version[ENG_BUCKETS]; /* 0 = empty bucket, never written */
    eng_cluster *clusters;                /* max(1, n_clusters) */
    uint32_t nretired, capretired;
    eng_retired *retired;
    uint64_t count; /* live items */
    /*
     * Key epochs (docs/ROTATION.md). epoch is the epoch every record this
     * manifest names is sealed under: the epoch of its head and manifest
     * records (not in the body). min_epoch: records below it are refused
     * (INTEGRITY). rot_target: a rotation to that epoch is pending (0 = none),
     * asked for at wall time rot_started_ms.
     */
    uint32_t epoch;
    uint32_t min_epoch;
    uint32_t rot_target;
    uint64_t rot_started_ms;
    uint64_t rotated_ms; /* wall time the last rotation completed (0 = never) */
    /* decoded centroids (filled on demand; not serialised here) */
    float *centroids;         /* n_clusters x dim (normalised for cosine) */
    float *sq_vmin, *sq_step; /* IVFSQ8 quantiser (dim each) */
    struct eng_probe *probe;  /* coarse quantiser over centroids (shared by clones) */
    atomic_uint refs;         /* shared read-only between requests */
} eng_manifest;

/* Number of cluster slots: max(1, n_clusters). */
uint32_t eng_manifest_nclusters(const eng_manifest *m);

/* Free m and everything it owns (drops its probe reference); NULL is a no-op. Ignores refs. */
void eng_manifest_free(eng_manifest *m);

/*
 * Deep copy of src (clusters, retired list, centroids, quantiser; the probe
 * is shared by reference). out->refs is copied as is: see eng_manifest_clone_ref.
 * Errors: CDX_ERR_RESOURCE_EXHAUSTED.
 */
cdx_err eng_manifest_clone(const eng_manifest *src, eng_manifest **out);

/* eng_manifest_clone with out's reference count set to 1 (the caller's). */
cdx_err eng_manifest_clone_ref(const eng_manifest *m, eng_manifest **out);

/* Take a reference (m may be NULL); returns m. Thread-safe. */
eng_manifest *eng_manifest_ref(eng_manifest *m);

/* Drop a reference, freeing m with the last one; NULL is a no-op. Thread-safe. */
void eng_manifest_unref(eng_manifest *m);

/*
 * Append the body to b: shape, bucket versions, clusters with their segments,
 * retired segments, and (format ENG_MANIFEST_FMT_EPOCH, only when one is
 * set) min_epoch, rot_target, rot_started_ms, rotated_ms; format
 * ENG_MANIFEST_FMT otherwise, byte for byte what it was. Not version, token,
 * epoch or centroids (those live in the head, the record header and the
 * centroids record). Allocation failure shows in eng_buf_ok(b).
 */
void eng_manifest_encode(const eng_manifest *m, eng_buf *b);

/*
 * Decode a body into a new manifest (refs 0, version, token and epoch unset).
 * Rejects (CDX_ERR_INTEGRITY): another format (1 and 2 are known), a
 * rotation target not above min_epoch, dim 0 or over CDX_DIM_MAX,
 * n_clusters over CDX_NLISTS_MAX, segment or retired counts larger than the
 * bytes left could hold, truncation, trailing bytes.
 * Errors: CDX_ERR_INTEGRITY, CDX_ERR_RESOURCE_EXHAUSTED.
 */
cdx_err eng_manifest_decode(const uint8_t *p, size_t n, eng_manifest **out);

/* Append a segment to a cluster. Errors: CDX_ERR_RESOURCE_EXHAUSTED. */
cdx_err eng_cluster_push(eng_cluster *c, const eng_segref *s);

/* List a segment token as retired at `when` (ms). Errors: CDX_ERR_RESOURCE_EXHAUSTED. */
cdx_err eng_retire(eng_manifest *m, const uint8_t token[ENG_TOKEN_LEN], uint64_t when);

/*
 * Append the centroids record body (u32 k, u32 dim, k x dim floats, u8 1,
 * dim floats vmin, dim floats step) of m to b.
 */
void eng_centroids_encode(const eng_manifest *m, eng_buf *b);

/*
 * Decode a centroids record body into m (centroids, quantiser) and build its
 * probe. Rejects (CDX_ERR_INTEGRITY): k or dim other than the manifest's,
 * truncation, trailing bytes, a record without quantiser, non-finite
 * values, negative steps. On error m may hold partial arrays (freed with it).
 * Errors: CDX_ERR_INTEGRITY, CDX_ERR_RESOURCE_EXHAUSTED, those of eng_probe_new.
 */
cdx_err eng_centroids_decode(eng_manifest *m, const uint8_t *p, size_t n);

/* (Re)build m's coarse quantiser from m->centroids (none if untrained). Errors: eng_probe_new's. */
cdx_err eng_manifest_probe_build(eng_manifest *m);

/*
 * Which cluster of m each of n search vectors (dim floats each) goes to;
 * all 0 when untrained. Thread-safe on a published m.
 * Errors: those of eng_kmeans_assign.
 */
cdx_err eng_assign_clusters(const eng_manifest *m, const float *x, size_t n, uint32_t *out);

/* IVFSQ8 and trained: scores its SQ8 codes. */
static inline bool eng_is_sq8(const eng_manifest *m)
{
    return m->type == ENG_IVFSQ8 && m->n_clusters > 0;
}

/*
 * Trained indexes keep SQ8 codes plus screen row aux (eng_screen.h) as their
 * search codes: IVFSQ8 scores those codes, IVFFlat screens with them and
 * rescores the few rows that could make the result on its originals.
 */
static inline bool eng_coded(const eng_manifest *m)
{
    return m->n_clusters > 0 && m->sq_vmin;
}

/* Bytes of one row's search code. */
static inline uint32_t eng_code_size(const eng_manifest *m)
{
    return eng_coded(m) ? m->dim : m->dim * (uint32_t)sizeof(float);
}

/* Originals live in the search block itself (untrained, raw vectors). */
static inline bool eng_originals_in_search(const eng_manifest *m)
{
    return !eng_coded(m) && m->metric != ENG_METRIC_COSINE;
}

/* The k-means metric of m's metric. */
static inline eng_km_metric eng_km_of(const eng_manifest *m)
{
    return m->metric == ENG_METRIC_EUCLIDEAN || m->metric == ENG_METRIC_SQUARED_EUCLIDEAN
               ? ENG_KM_L2
               : ENG_KM_IP;
}

#endif
