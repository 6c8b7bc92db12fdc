/* app_vecs: vector files, exact ground truth and recall (the CLI, the demo and the benchmarks).
 *
 * Loaders treat every file as hostile: headers are checked against fixed bounds before any
 * allocation, payloads must have exactly the announced length, and float inputs must be finite.
 * All loaders read plain or gzip files alike (zlib's gzread passes plain files through).
 * Nothing is cached on disk. */
#ifndef APP_VECS_H
#define APP_VECS_H

#include <stddef.h>
#include <stdint.h>

/* Bounds on what a loader accepts (per file). */
#define APP_VECS_MAX_DIM   65536u            /* dimensions per vector */
#define APP_VECS_MAX_ELEMS ((size_t)1 << 32) /* n * d (16 GiB of float32) */

/* Loads a vector file into a malloc'd float32 row-major array (*out, n x d), chosen by name:
 *   *.fvecs, *.bvecs (optionally .gz): int32 little-endian d, then d float32 / uint8, per vector;
 *   *idx3-ubyte, *.idx (optionally .gz): IDX ubyte images (magic 0x00000803), rows*cols dims.
 * Returns 0, or -1 with a message in err (never NULL-terminated past errcap). */
int app_vecs_load(const char *path, float **out, size_t *n, size_t *d, char *err,
                       size_t errcap);

/* The individual formats (same contract as app_vecs_load). */
int app_vecs_load_idx(const char *path, float **out, size_t *n, size_t *d, char *err,
                          size_t errcap);
int app_vecs_load_fvecs(const char *path, float **out, size_t *n, size_t *d, char *err, size_t errcap);
int app_vecs_load_bvecs(const char *path, float **out, size_t *n, size_t *d, char *err, size_t errcap);

/* IDX ubyte labels (magic 0x00000801) into a malloc'd byte array. */
int app_vecs_load_idx_labels(const char *path, uint8_t **out, size_t *n, char *err, size_t errcap);

/* Exact top-k by squared L2 for nq queries against nb base vectors (both n x d row-major):
 * gt[i*k + r] is the index of the r-th nearest base vector of query i, ties broken by the smaller
 * index, -1 where nb < k. Distances are screened with cblas_sgemm in blocks and every candidate
 * that the float error bound cannot exclude is rescored in double, so the result is exact (for
 * integer-valued data such as uint8 images, bit-exact). Uses whatever thread count BLAS has.
 * Returns 0, or -1 on allocation failure. */
int app_vecs_ground_truth(const float *base, size_t nb, const float *q, size_t nq, size_t d, size_t k,
                       int64_t *gt);

/* Mean over queries of |res_i ∩ gt_i| / |gt_i| where both rows have k entries (res may contain
 * -1 or duplicates; each true neighbour counts once). |gt_i| is k unless nb < k. */
double app_vecs_recall_at_k(const int64_t *res, const int64_t *gt, size_t nq, size_t k);

#endif
