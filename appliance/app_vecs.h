/*
 * app_vecs.h - vector files, exact ground truth and recall (the CLI, the
 * demo and the benchmarks).
 *
 * Loaders treat every file as hostile: headers are checked against fixed
 * bounds (CDX_VECS_DIM_MAX, CDX_VECS_ELEMS_MAX in cdx_limits.h) before any
 * allocation, payloads must have exactly the announced length, and float
 * inputs must be finite. All loaders read plain or gzip files alike (zlib's
 * gzread passes plain files through). Nothing is cached on disk.
 *
 * Every loader returns CDX_OK with *out a malloc'ed array (the caller frees
 * it), or an error with *out NULL and a cdx_fail detail naming the file:
 *   CDX_ERR_NOT_FOUND           the file cannot be opened;
 *   CDX_ERR_INVALID_ARGUMENT    its content is wrong (read error, truncated,
 *                               bad magic, out of bounds, trailing data,
 *                               non-finite values, unknown format by name);
 *   CDX_ERR_RESOURCE_EXHAUSTED  out of memory.
 *
 * Thread-safe: no shared state (ground truth uses BLAS, which brings its own
 * threads).
 */
#ifndef APP_VECS_H
#define APP_VECS_H

#include <stddef.h>
#include <stdint.h>

#include "cdx_err.h"

/*
 * A vector file as a float32 row-major array (*out, *n x *d), the format
 * chosen by name:
 *   *.fvecs, *.bvecs (optionally .gz): per vector, int32 little-endian d,
 *     then d float32 / uint8;
 *   *idx3-ubyte, *.idx (optionally .gz): IDX ubyte images (magic
 *     0x00000803), rows * cols dimensions.
 */
CDX_MUST_CHECK cdx_err app_vecs_load(const char *path, float **out, size_t *n, size_t *d);

/* The individual formats (same contract as app_vecs_load). */
CDX_MUST_CHECK cdx_err app_vecs_load_idx(const char *path, float **out, size_t *n, size_t *d);
CDX_MUST_CHECK cdx_err app_vecs_load_fvecs(const char *path, float **out, size_t *n, size_t *d);
CDX_MUST_CHECK cdx_err app_vecs_load_bvecs(const char *path, float **out, size_t *n, size_t *d);

/* IDX ubyte labels (magic 0x00000801) into a malloc'ed byte array of *n labels. */
CDX_MUST_CHECK cdx_err app_vecs_load_idx_labels(const char *path, uint8_t **out, size_t *n);

/*
 * Exact top-k by squared L2 for nq queries against nb base vectors (both
 * n x d row-major): gt[i*k + r] is the index of the r-th nearest base
 * vector of query i, ties broken by the smaller index, -1 where nb < k.
 * Distances are screened with cblas_sgemm in blocks and every candidate
 * that the float error bound cannot exclude is rescored in double, so the
 * result is exact (for integer-valued data such as uint8 images,
 * bit-exact). Uses whatever thread count BLAS has.
 * Errors: CDX_ERR_RESOURCE_EXHAUSTED (out of memory; gt is incomplete).
 */
CDX_MUST_CHECK cdx_err app_vecs_ground_truth(const float *base, size_t nb, const float *q,
                                             size_t nq, size_t d, size_t k, int64_t *gt);

/*
 * Mean over queries of |res_i ∩ gt_i| / |gt_i| where both rows have k
 * entries (res may contain -1 or duplicates; each true neighbour counts
 * once). |gt_i| is k unless nb < k.
 */
double app_vecs_recall_at_k(const int64_t *res, const int64_t *gt, size_t nq, size_t k);

#endif
