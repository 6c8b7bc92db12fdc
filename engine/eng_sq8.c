/*
 * eng_sq8.c - 8-bit scalar quantisation and distances on codes (eng_sq8.h).
 *
 * The AVX2 kernels follow the accumulator schedule of eng_dist.c (four
 * accumulators per row, chunk c of a 32-code block into accumulator c, the
 * remaining full 8-code chunks into 0, 1, 2, the tail into 3, two rows per
 * pass sharing the t/step loads), so a row's result is the same whatever its
 * position in the batch. Codes are widened 8 at a time with vpmovzxbd (a
 * shuffle-port uop that runs beside the FMAs) and converted to float.
 */
#include "eng_sq8.h"

#include "eng_dist.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "eng_simd.h"

/* Integers above this are not all representable in float: no exact integral mode. */
#define SQ8_INT_LIMIT 16777216.0f /* 2^24 */

/* ---- training, encoding ----------------------------------------------- */

cdx_err eng_sq8_train(const float *x, size_t n, size_t d, eng_sq8 *out)
{
    float *vmax = NULL;
    bool *integral = NULL;
    cdx_err rc = CDX_OK;

    memset(out, 0, sizeof(*out));
    if (!x || n == 0 || d == 0)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "sq8 train: need n > 0 rows of d > 0 floats");
    out->d = d;
    out->vmin = malloc(d * sizeof(float));
    out->step = malloc(d * sizeof(float));
    vmax = malloc(d * sizeof(float));
    integral = malloc(d * sizeof(bool));
    if (!out->vmin || !out->step || !vmax || !integral) {
        rc = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "sq8 train: out of memory (d=%zu)", d);
        goto out;
    }
    for (size_t i = 0; i < d; i++) {
        out->vmin[i] = INFINITY;
        vmax[i] = -INFINITY;
        integral[i] = true;
    }
    for (size_t r = 0; r < n; r++) {
        const float *row = x + r * d;
        for (size_t i = 0; i < d; i++) {
            float v = row[i];
            if (!isfinite(v)) {
                rc = cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                              "sq8 train: non-finite value at row %zu dim %zu", r, i);
                goto out;
            }
            out->vmin[i] = v < out->vmin[i] ? v : out->vmin[i];
            vmax[i] = v > vmax[i] ? v : vmax[i];
            if (integral[i] && (v != floorf(v) || fabsf(v) > SQ8_INT_LIMIT))
                integral[i] = false;
        }
    }
    for (size_t i = 0; i < d; i++) {
        double span = (double)vmax[i] - (double)out->vmin[i];
        if (integral[i] && span <= 255.0)
            out->step[i] = 1.0f; /* exact for every integer in vmin .. vmin + 255 */
        else
            out->step[i] = (float)(span / 255.0); /* 0 for a constant dim */
    }
out:
    free(vmax);
    free(integral);
    if (rc != CDX_OK)
        eng_sq8_free(out);
    return rc;
}

void eng_sq8_free(eng_sq8 *q)
{
    if (!q)
        return;
    free(q->vmin);
    free(q->step);
    memset(q, 0, sizeof(*q));
}

static inline uint8_t encode1(float x, float vmin, float step)
{
    if (step == 0.0f)
        return 0;
    float v = (x - vmin) / step;
    if (!(v > 0.0f)) /* also NaN */
        return 0;
    if (v >= 255.0f)
        return 255;
    /* Round half up without v + 0.5f's rounding error (v < 2^23: the subtraction is exact). */
    int c = (int)v;
    if (v - (float)c >= 0.5f)
        c++;
    return (uint8_t)c;
}

void eng_sq8_encode(const eng_sq8 *q, const float *x, size_t n, uint8_t *codes)
{
    size_t d = q->d;

    for (size_t r = 0; r < n; r++)
        for (size_t i = 0; i < d; i++)
            codes[r * d + i] = encode1(x[r * d + i], q->vmin[i], q->step[i]);
}

void eng_sq8_decode(const eng_sq8 *q, const uint8_t *codes, size_t n, float *x)
{
    size_t d = q->d;

    for (size_t r = 0; r < n; r++)
        for (size_t i = 0; i < d; i++)
            x[r * d + i] = q->vmin[i] + q->step[i] * (float)codes[r * d + i];
}

void eng_sq8_prepare_l2(const eng_sq8 *q, const float *query, float *t)
{
    for (size_t i = 0; i < q->d; i++)
        t[i] = query[i] - q->vmin[i];
}

float eng_sq8_prepare_dot(const eng_sq8 *q, const float *query, float *w)
{
    double bias = 0;

    for (size_t i = 0; i < q->d; i++) {
        w[i] = query[i] * q->step[i];
        bias += (double)query[i] * q->vmin[i];
    }
    return (float)bias;
}

/* ---- distance kernels: scalar ----------------------------------------- */

static float sq8_l2_row_scalar(const float *t, const float *step, const uint8_t *c, size_t d)
{
    float s[8] = {0};
    size_t i = 0;

    for (; i + 8 <= d; i += 8)
        for (size_t j = 0; j < 8; j++) {
            float u = t[i + j] - step[i + j] * (float)c[i + j];
            s[j] += u * u;
        }
    for (size_t j = 0; i < d; i++, j++) {
        float u = t[i] - step[i] * (float)c[i];
        s[j] += u * u;
    }
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

static float sq8_dot_row_scalar(const float *w, const uint8_t *c, size_t d)
{
    float s[8] = {0};
    size_t i = 0;

    for (; i + 8 <= d; i += 8)
        for (size_t j = 0; j < 8; j++)
            s[j] += w[i + j] * (float)c[i + j];
    for (size_t j = 0; i < d; i++, j++)
        s[j] += w[i] * (float)c[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/* ---- distance kernels: AVX2 + FMA ------------------------------------- */

#if ENG_X86

/* 8 codes at p as floats. */
AVX2 static inline __m256 load8(const uint8_t *p)
{
    return _mm256_cvtepi32_ps(
        _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)p)));
}

/* The r < 8 codes at p as floats, zero beyond (never reads past p + r). */
AVX2 static inline __m256 load_tail(const uint8_t *p, size_t r)
{
    uint64_t v = 0;

    memcpy(&v, p, r);
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)v)));
}

/* acc += (t - step*c)^2 */
#define OP_L2(acc, av, bv, cv)                                                                     \
    do {                                                                                           \
        __m256 u_ = _mm256_fnmadd_ps(bv, cv, av);                                                  \
        acc = _mm256_fmadd_ps(u_, u_, acc);                                                        \
    } while (0)
/* acc += w*c (bv is A again: unused, the load is dead code) */
#define OP_DOT(acc, av, bv, cv)                                                                    \
    do {                                                                                           \
        (void)(bv);                                                                                \
        acc = _mm256_fmadd_ps(av, cv, acc);                                                        \
    } while (0)

/* One row: A = t or w, B = step (or A again for dot), C = codes. */
#define ROW1_BODY(OP)                                                                              \
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                    \
    size_t i = 0;                                                                                  \
    for (; i + 32 <= d; i += 32) {                                                                 \
        OP(a0, _mm256_loadu_ps(A + i), _mm256_loadu_ps(B + i), load8(C + i));                      \
        OP(a1, _mm256_loadu_ps(A + i + 8), _mm256_loadu_ps(B + i + 8), load8(C + i + 8));          \
        OP(a2, _mm256_loadu_ps(A + i + 16), _mm256_loadu_ps(B + i + 16), load8(C + i + 16));       \
        OP(a3, _mm256_loadu_ps(A + i + 24), _mm256_loadu_ps(B + i + 24), load8(C + i + 24));       \
    }                                                                                              \
    if (i + 8 <= d) {                                                                              \
        OP(a0, _mm256_loadu_ps(A + i), _mm256_loadu_ps(B + i), load8(C + i));                      \
        i += 8;                                                                                    \
    }                                                                                              \
    if (i + 8 <= d) {                                                                              \
        OP(a1, _mm256_loadu_ps(A + i), _mm256_loadu_ps(B + i), load8(C + i));                      \
        i += 8;                                                                                    \
    }                                                                                              \
    if (i + 8 <= d) {                                                                              \
        OP(a2, _mm256_loadu_ps(A + i), _mm256_loadu_ps(B + i), load8(C + i));                      \
        i += 8;                                                                                    \
    }                                                                                              \
    if (i < d) {                                                                                   \
        __m256i m = tail_mask(d - i);                                                              \
        OP(a3, _mm256_maskload_ps(A + i, m), _mm256_maskload_ps(B + i, m),                         \
           load_tail(C + i, d - i));                                                               \
    }                                                                                              \
    return hsum1(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)))

/* One chunk of two rows C0, C1 at offset o, accumulators x (row 0) and y (row 1). */
#define CHUNK2(OP, x, y, o)                                                                        \
    do {                                                                                           \
        __m256 av_ = _mm256_loadu_ps(A + (o)), bv_ = _mm256_loadu_ps(B + (o));                     \
        OP(x, av_, bv_, load8(C0 + (o)));                                                          \
        OP(y, av_, bv_, load8(C1 + (o)));                                                          \
    } while (0)

#define ROW2_BODY(OP)                                                                              \
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                    \
    __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;                                                     \
    size_t i = 0;                                                                                  \
    for (; i + 32 <= d; i += 32) {                                                                 \
        CHUNK2(OP, a0, b0, i);                                                                     \
        CHUNK2(OP, a1, b1, i + 8);                                                                 \
        CHUNK2(OP, a2, b2, i + 16);                                                                \
        CHUNK2(OP, a3, b3, i + 24);                                                                \
    }                                                                                              \
    if (i + 8 <= d) {                                                                              \
        CHUNK2(OP, a0, b0, i);                                                                     \
        i += 8;                                                                                    \
    }                                                                                              \
    if (i + 8 <= d) {                                                                              \
        CHUNK2(OP, a1, b1, i);                                                                     \
        i += 8;                                                                                    \
    }                                                                                              \
    if (i + 8 <= d) {                                                                              \
        CHUNK2(OP, a2, b2, i);                                                                     \
        i += 8;                                                                                    \
    }                                                                                              \
    if (i < d) {                                                                                   \
        __m256i m = tail_mask(d - i);                                                              \
        __m256 av = _mm256_maskload_ps(A + i, m), bv = _mm256_maskload_ps(B + i, m);               \
        OP(a3, av, bv, load_tail(C0 + i, d - i));                                                  \
        OP(b3, av, bv, load_tail(C1 + i, d - i));                                                  \
    }                                                                                              \
    __m128 s = hsum4(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),                  \
                     _mm256_add_ps(_mm256_add_ps(b0, b1), _mm256_add_ps(b2, b3)),                  \
                     _mm256_setzero_ps(), _mm256_setzero_ps());                                    \
    out[0] = _mm_cvtss_f32(s);                                                                     \
    out[1] = _mm_cvtss_f32(_mm_shuffle_ps(s, s, 1))

AVX2 static float sq8_l2_row_avx2(const float *A, const float *B, const uint8_t *C, size_t d)
{
    ROW1_BODY(OP_L2);
}

AVX2 static float sq8_dot_row_avx2(const float *A, const uint8_t *C, size_t d)
{
    const float *B = A;

    ROW1_BODY(OP_DOT);
}

AVX2 static void sq8_l2_row2_avx2(const float *A, const float *B, const uint8_t *C0,
                                  const uint8_t *C1, size_t d, float *out)
{
    ROW2_BODY(OP_L2);
}

AVX2 static void sq8_dot_row2_avx2(const float *A, const uint8_t *C0, const uint8_t *C1, size_t d,
                                   float *out)
{
    const float *B = A;

    ROW2_BODY(OP_DOT);
}

AVX2 static void sq8_l2sq_many_avx2(const float *t, const float *step, const uint8_t *codes,
                                    size_t n, size_t d, float *out)
{
    size_t r = 0;

    for (; r + 2 <= n; r += 2)
        sq8_l2_row2_avx2(t, step, codes + r * d, codes + (r + 1) * d, d, out + r);
    if (r < n)
        out[r] = sq8_l2_row_avx2(t, step, codes + r * d, d);
}

AVX2 static void sq8_dot_many_avx2(const float *w, float bias, const uint8_t *codes, size_t n,
                                   size_t d, float *out)
{
    size_t r = 0;

    for (; r + 2 <= n; r += 2) {
        sq8_dot_row2_avx2(w, codes + r * d, codes + (r + 1) * d, d, out + r);
        out[r] += bias;
        out[r + 1] += bias;
    }
    if (r < n)
        out[r] = sq8_dot_row_avx2(w, codes + r * d, d) + bias;
}
#endif /* ENG_X86 */

/* ---- dispatch --------------------------------------------------------- */

void eng_sq8_l2sq_many(const float *t, const float *step, const uint8_t *codes, size_t n, size_t d,
                       float *out)
{
#if ENG_X86
    if (eng_simd_level() == ENG_SIMD_AVX2) {
        sq8_l2sq_many_avx2(t, step, codes, n, d, out);
        return;
    }
#endif
    for (size_t r = 0; r < n; r++)
        out[r] = sq8_l2_row_scalar(t, step, codes + r * d, d);
}

void eng_sq8_dot_many(const float *w, float bias, const uint8_t *codes, size_t n, size_t d,
                      float *out)
{
#if ENG_X86
    if (eng_simd_level() == ENG_SIMD_AVX2) {
        sq8_dot_many_avx2(w, bias, codes, n, d, out);
        return;
    }
#endif
    for (size_t r = 0; r < n; r++)
        out[r] = sq8_dot_row_scalar(w, codes + r * d, d) + bias;
}

/* ---- serialisation ---------------------------------------------------- */

size_t eng_sq8_serialized_size(size_t d)
{
    return 8 * d;
}

static void put_f32le(uint8_t *p, float f)
{
    uint32_t u;

    memcpy(&u, &f, 4);
    p[0] = (uint8_t)u;
    p[1] = (uint8_t)(u >> 8);
    p[2] = (uint8_t)(u >> 16);
    p[3] = (uint8_t)(u >> 24);
}

static float get_f32le(const uint8_t *p)
{
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    float f;

    memcpy(&f, &u, 4);
    return f;
}

size_t eng_sq8_serialize(const eng_sq8 *q, uint8_t *buf, size_t cap)
{
    size_t need = eng_sq8_serialized_size(q->d);

    if (!buf || cap < need)
        return need;
    for (size_t i = 0; i < q->d; i++) {
        put_f32le(buf + 4 * i, q->vmin[i]);
        put_f32le(buf + 4 * (q->d + i), q->step[i]);
    }
    return need;
}

cdx_err eng_sq8_deserialize(const uint8_t *buf, size_t len, size_t d, eng_sq8 *out)
{
    memset(out, 0, sizeof(*out));
    if (d == 0 || d > SIZE_MAX / 8 || len != eng_sq8_serialized_size(d) || !buf)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                        "sq8 parameters: %zu bytes, expected %zu for d=%zu", len,
                        d <= SIZE_MAX / 8 ? 8 * d : 0, d);
    out->vmin = malloc(d * sizeof(float));
    out->step = malloc(d * sizeof(float));
    if (!out->vmin || !out->step) {
        eng_sq8_free(out);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "sq8 parameters: out of memory (d=%zu)", d);
    }
    out->d = d;
    for (size_t i = 0; i < d; i++) {
        out->vmin[i] = get_f32le(buf + 4 * i);
        out->step[i] = get_f32le(buf + 4 * (d + i));
        if (!isfinite(out->vmin[i]) || !isfinite(out->step[i]) || out->step[i] < 0.0f) {
            eng_sq8_free(out);
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "sq8 parameters: bad value at dim %zu", i);
        }
    }
    return CDX_OK;
}
