/*
 * eng_kmeans.h - k-means training of the IVF coarse quantiser, batch
 * assignment, and the per-query probe (the nprobe nearest centroids).
 *
 * Training: a deterministic subsample of at most max_points_per_centroid * k
 * rows; greedy k-means++ seeding (2 + ln k candidates per centre, as
 * scikit-learn) on a pool of max(4 * k, 4096) of those rows (each centre
 * costs a pass over the pool: seeding on the whole subsample cost more than
 * the Lloyd iterations); Lloyd iterations on the whole subsample with the
 * assignment step done by BLAS (cblas_sgemm, OpenBLAS) in bounded row blocks.
 *
 * Speed: OpenBLAS chooses its kernels by CPU model when it loads. Debian 12's
 * 0.3.21 does not know recent Xeons (e.g. Emerald Rapids) and falls back to
 * SSE3 "Prescott" kernels, ~6x slower (sgemm ~19 vs ~85-130 GFLOP/s on one
 * thread of an Emerald Rapids VM); OPENBLAS_CORETYPE=SkylakeX (or Haswell)
 * in the environment fixes it. The first assignment logs a warning when
 * generic kernels run on an AVX2 CPU.
 *
 * Determinism: the same input, options and seed give the same centroids bit
 * for bit on one machine and BLAS build. Everything but the sgemm in the
 * assignment step is our own code in a fixed order (sampling from our own
 * splitmix64 stream, centroid sums in double). The sgemm only chooses each
 * point's nearest centroid (the distances reported and used are recomputed
 * with eng_l2sq / eng_dot), so its rounding matters only for near-ties.
 * OpenBLAS splits a gemm across threads by output blocks, never along the
 * inner dimension, so its results do not depend on the thread count in
 * practice, but that is not a documented guarantee, and a different CPU
 * kernel (AVX2 vs AVX-512) or OpenBLAS version may round differently: set
 * openblas_set_num_threads(1) when runs must match across machines/threads.
 * These functions never change the BLAS thread count (it is process-wide).
 * Thread-safe: no shared state besides OpenBLAS's own (which is thread-safe).
 */
#ifndef ENG_KMEANS_H
#define ENG_KMEANS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cdx_err.h"

typedef enum eng_km_metric {
    ENG_KM_L2, /* nearest = smallest squared L2 distance */
    ENG_KM_IP, /* nearest = largest inner product */
} eng_km_metric;

typedef struct eng_kmeans_opts {
    uint32_t k;                       /* centroids, >= 1 */
    uint32_t max_iters;               /* Lloyd iterations; 0 = only k-means++ seeds */
    float tolerance;                  /* stop when the relative objective gain is below */
    uint64_t seed;                    /* subsample, seeding and split choices */
    uint32_t max_points_per_centroid; /* subsample cap per centroid; 0 = 256 */
    eng_km_metric metric;
    bool spherical; /* normalise centroids after seeding and every update (cosine) */
} eng_kmeans_opts;

typedef struct eng_kmeans_stats {
    uint32_t iterations; /* Lloyd iterations run */
    double objective;    /* of the last assignment: sum of squared distances (L2) or of
                            inner products (IP) over the sample */
    double seconds;      /* wall time of eng_kmeans_train */
    size_t sample_size;  /* rows trained on */
    uint32_t splits;     /* empty clusters re-seeded */
} eng_kmeans_stats;

/* The OpenBLAS kernel set in use ("SkylakeX", "Haswell", "Prescott", ...), for logs. */
const char *eng_kmeans_blas_core(void);

/*
 * Train k centroids (k * d floats, written to centroids) on n rows of d
 * floats. Stops after max_iters iterations, when no assignment changed, or
 * when the objective's relative improvement ((prev - obj) / prev for L2,
 * (obj - prev) / |prev| for IP) is <= tolerance (not tested in the two
 * iterations around an empty-cluster split). An empty cluster is
 * re-seeded by splitting the most populated one (lowest index on ties) along
 * a deterministic pseudo-random direction. k-means++ seeding uses squared L2
 * distances for both metrics. st may be NULL.
 * Errors: CDX_ERR_INVALID_ARGUMENT (k or d 0, n < k, a non-finite value in
 * x, sizes overflowing), CDX_ERR_RESOURCE_EXHAUSTED.
 */
cdx_err eng_kmeans_train(const float *x, size_t n, size_t d, const eng_kmeans_opts *o,
                         float *centroids, eng_kmeans_stats *st);

/*
 * Nearest centroid of each of n rows (sgemm in blocks of at most 4096 rows
 * and ~32 MiB of scores). assign[i] gets the index (ties: lowest index);
 * dist[i] (dist may be NULL) the exact eng_l2sq (L2) or eng_dot (IP) to it.
 * The winner is chosen on float32 ||c||^2 - 2 x.c, so within a relative
 * ~1e-6 of a tie it may be the runner-up of an exact computation.
 * Errors: CDX_ERR_INVALID_ARGUMENT (k or d 0), CDX_ERR_RESOURCE_EXHAUSTED.
 */
cdx_err eng_kmeans_assign(const float *x, size_t n, size_t d, const float *centroids, size_t k,
                          eng_km_metric m, uint32_t *assign, float *dist);

/*
 * The min(nprobe, k) centroids nearest to one query, best first (ties: lower
 * index), written to out; returns their number (0 when nprobe, k or d is 0 or
 * memory runs out; NaN scores are skipped, so a NaN query gives 0). The coarse-quantisation step of
 * a query: eng_l2sq_many / eng_dot_many over the centroids in cache-sized chunks plus a top-k.
 */
size_t eng_kmeans_probe(const float *q, size_t d, const float *centroids, size_t k, eng_km_metric m,
                        size_t nprobe, uint32_t *out);

#endif
