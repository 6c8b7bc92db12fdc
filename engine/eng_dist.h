/*
 * eng_dist.h - float32 distance kernels: the inner loop of every query scan
 * and of k-means.
 *
 * Two implementations behind one API, chosen once per process (eng_dist_init,
 * called implicitly by the first kernel call):
 *   "avx2"   AVX2 + FMA, compiled per function with target("avx2,fma") so the
 *            binary still runs on any x86-64; used when the CPU (and OS) support
 *            both and CDX_SIMD is not "scalar";
 *   "scalar" portable C, also the fallback on other architectures.
 * The environment variable CDX_SIMD=scalar forces the fallback.
 *
 * Numerics: sums are accumulated in float32 over several partial sums, so the
 * two implementations (and different d) round differently; both stay within a
 * few ulp * d of the exact result. Results are deterministic for a given
 * implementation, d and input, and a row's result is the same bits from
 * eng_l2sq as from eng_l2sq_many at any position in any n (likewise for dot),
 * so a vector's score does not depend on how a scan batches it. Rates (AVX2,
 * one core, d = 784): ~10 Gfloat/s from L2, ~6 from L3 (bandwidth-bound);
 * FMA-bound only from L1. Pointers need only the natural alignment of
 * float; any d works (d = 0 gives 0). NaN in gives NaN out. All kernels are
 * thread-safe and allocate nothing.
 */
#ifndef ENG_DIST_H
#define ENG_DIST_H

#include <stdbool.h>
#include <stddef.h>

/* The implementation level; also consulted by the SQ8 kernels (eng_sq8.c). */
typedef enum eng_simd {
    ENG_SIMD_SCALAR = 0,
    ENG_SIMD_AVX2 = 1,
} eng_simd;

/* Select the implementation (once; idempotent and thread-safe via pthread_once). */
void eng_dist_init(void);

/* "avx2" or "scalar": the implementation in use. */
const char *eng_dist_impl(void);

/* The implementation in use (initialises if needed). */
eng_simd eng_simd_level(void);

/*
 * Test hook: force the scalar implementation (true) or return to the detected
 * one (false). Takes effect for later calls in every thread; not for production.
 */
void eng_dist_force_scalar(bool on);

/* Squared L2 distance sum((a[i] - b[i])^2). */
float eng_l2sq(const float *a, const float *b, size_t d);

/* Inner product sum(a[i] * b[i]). */
float eng_dot(const float *a, const float *b, size_t d);

/* out[i] = eng_l2sq(q, x + i*d, d) for n contiguous rows x (out must not alias x or q). */
void eng_l2sq_many(const float *q, const float *x, size_t n, size_t d, float *out);

/* out[i] = eng_dot(q, x + i*d, d) for n contiguous rows x. */
void eng_dot_many(const float *q, const float *x, size_t n, size_t d, float *out);

/*
 * Euclidean norm sqrt(sum(v[i]^2)) (not squared: use eng_dot(v, v, d) for
 * that). Accumulated in double, so it neither overflows nor underflows for
 * finite float input; the result is rounded to float (FLT_MAX saturates to inf).
 */
float eng_norm2(const float *v, size_t d);

/*
 * Scale v to unit Euclidean norm in place. Returns false and leaves v
 * unchanged when v is all zeros or contains a non-finite value (nothing to
 * normalise: the caller decides whether that is an error).
 */
bool eng_normalize(float *v, size_t d);

#endif
