/*
 * eng_sq8.h - 8-bit scalar quantisation, one affine map per dimension:
 *
 *     code = clamp(round((x - vmin) / step), 0, 255),   x' = vmin + step * code
 *
 * with vmin and step trained on a sample (train computes min/max per dim).
 *
 * When it is exact (x' == x):
 *   - integral dims: when every training value of a dim is an integer and
 *     vmax - vmin <= 255, step is 1, so every integer in vmin .. vmin + 255 is
 *     represented exactly (Fashion-MNIST pixels 0..255 round-trip bit for bit,
 *     and so does a dim whose sample only spans 0..254, or is constant 0);
 *   - constant non-integral dims (step 0): only the trained value itself.
 * Otherwise it is lossy: |x' - x| <= step/2 (plus float rounding, a few ulp of
 * max(|vmin|, |vmax|)) for x inside the trained [vmin, vmax]; values outside
 * the trained range are clamped to it (error up to the distance to the range).
 * NaN encodes as code 0.
 *
 * Distances are computed on the codes without decoding them, with the same
 * runtime dispatch as eng_dist.h (AVX2 + FMA or scalar; CDX_SIMD=scalar).
 * As there, a row's result does not depend on its position in the batch.
 */
#ifndef ENG_SQ8_H
#define ENG_SQ8_H

#include <stddef.h>
#include <stdint.h>

#include "cdx_err.h"

typedef struct eng_sq8 {
    size_t d;
    float *vmin; /* d: trained minimum */
    float *step; /* d: (vmax - vmin) / 255; 1 for integral dims; 0 for constant non-integral */
} eng_sq8;

/*
 * Train on n rows of d floats. out is overwritten (not freed first); free it
 * with eng_sq8_free.
 * Errors: CDX_ERR_INVALID_ARGUMENT (n or d 0, a non-finite value),
 * CDX_ERR_RESOURCE_EXHAUSTED.
 */
cdx_err eng_sq8_train(const float *x, size_t n, size_t d, eng_sq8 *out);

/* Free the arrays and zero *q; NULL and a zeroed struct are no-ops. */
void eng_sq8_free(eng_sq8 *q);

/* Encode n rows of q->d floats into n * q->d codes. */
void eng_sq8_encode(const eng_sq8 *q, const float *x, size_t n, uint8_t *codes);

/* Decode n rows of codes into n * q->d floats. */
void eng_sq8_decode(const eng_sq8 *q, const uint8_t *codes, size_t n, float *x);

/* Per query, for eng_sq8_l2sq_many: t[i] = query[i] - vmin[i] (q->d floats). */
void eng_sq8_prepare_l2(const eng_sq8 *q, const float *query, float *t);

/*
 * Per query, for eng_sq8_dot_many: w[i] = query[i] * step[i]; returns the bias
 * sum(query[i] * vmin[i]) (accumulated in double).
 */
float eng_sq8_prepare_dot(const eng_sq8 *q, const float *query, float *w);

/*
 * out[r] = sum_i (t[i] - step[i] * codes[r*d + i])^2 for n rows of d codes:
 * the squared L2 distance from the query to the decoded row.
 */
void eng_sq8_l2sq_many(const float *t, const float *step, const uint8_t *codes, size_t n, size_t d,
                       float *out);

/* out[r] = bias + sum_i w[i] * codes[r*d + i]: the inner product with the decoded row. */
void eng_sq8_dot_many(const float *w, float bias, const uint8_t *codes, size_t n, size_t d,
                      float *out);

/* Bytes eng_sq8_serialize writes: 8 * d (vmin[d] then step[d], float32 little-endian). */
size_t eng_sq8_serialized_size(size_t d);

/*
 * Write the parameters to buf. Returns the size needed; writes nothing when
 * cap is smaller (buf may then be NULL).
 */
size_t eng_sq8_serialize(const eng_sq8 *q, uint8_t *buf, size_t cap);

/*
 * Read parameters for dimension d; len must be exactly 8 * d. out is
 * overwritten; free it with eng_sq8_free.
 * Errors: CDX_ERR_INVALID_ARGUMENT (d 0, wrong length, a non-finite value or
 * a negative step), CDX_ERR_RESOURCE_EXHAUSTED.
 */
cdx_err eng_sq8_deserialize(const uint8_t *buf, size_t len, size_t d, eng_sq8 *out);

#endif
