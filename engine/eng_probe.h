/*
 * eng_probe.h - the coarse-quantisation step of a query (the nprobe nearest
 * centroids), screened on 8-bit codes of the centroids and finished exactly.
 *
 * Why: with n_lists 1024 and d 784 the float centroids are 3.2 MB, read in
 * full for every query: about a third of a warm query's time. Their SQ8 codes
 * (eng_sq8.h, min/max taken over the centroids themselves) are 0.8 MB and
 * stay in L2.
 *
 * Exactness: the result is the same list, in the same order, as
 * eng_kmeans_probe on the float centroids. For each centroid c the screen
 * computes a distance (or inner product) on its decoded codes and turns it
 * into an interval that provably contains the float32 score
 * eng_kmeans_probe would compute, from
 *   - e_c = ||c - decoded(c)||, measured in double when the probe is built
 *     (triangle inequality for L2, Cauchy-Schwarz for inner products);
 *   - a bound on the float rounding of both kernels (the screen's and the
 *     exact one's), a small multiple of d * 2^-24 of the magnitudes involved.
 * Every centroid whose interval reaches the nprobe-th best upper bound (lower
 * bound for inner products) is rescored with the exact kernel, in index
 * order, into the same top-k: what eng_kmeans_probe returns, ties included.
 * When the intervals are too wide to prune (more than a quarter of the
 * centroids survive), the probe scores every centroid exactly instead.
 *
 * Thread-safe once built: immutable, shared by reference count.
 */
#ifndef ENG_PROBE_H
#define ENG_PROBE_H

#include <stddef.h>
#include <stdint.h>

#include "cdx_err.h"
#include "eng_kmeans.h"

typedef struct eng_probe eng_probe;

/*
 * Build a probe over k centroids of d floats (copied: the probe owns what it
 * reads), for metric m. The reference count starts at 1.
 * Errors: CDX_ERR_INVALID_ARGUMENT (k or d 0, a non-finite value),
 * CDX_ERR_RESOURCE_EXHAUSTED.
 */
cdx_err eng_probe_new(const float *centroids, size_t k, size_t d, eng_km_metric m, eng_probe **out);

/* Take another reference; returns p (NULL stays NULL). */
eng_probe *eng_probe_ref(eng_probe *p);

/* Drop a reference, freeing on the last; NULL is a no-op. */
void eng_probe_free(eng_probe *p);

/*
 * The min(nprobe, k) nearest centroids to q (d floats, finite), best first
 * (ties: lower index), into out: exactly eng_kmeans_probe's answer. Returns
 * their number; 0 when nprobe is 0 or memory runs out. *rescored (may be
 * NULL) gets how many centroids were scored exactly (k on the fallback).
 */
size_t eng_probe_run(const eng_probe *p, const float *q, size_t nprobe, uint32_t *out,
                     size_t *rescored);

#endif
