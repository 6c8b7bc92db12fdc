/*
 * eng_dist.c - float32 distance kernels with runtime dispatch (see eng_dist.h).
 *
 * Summation order is part of the contract between the kernels of one
 * implementation: a row's distance is the same bits whether it comes from
 * eng_l2sq or from eng_l2sq_many at any position in any n, so a vector's
 * score does not depend on the segment layout it was scanned in. In the AVX2
 * code every row therefore uses the same four accumulators in the same way:
 * 8-float chunk c of the 32-float main loop goes to accumulator c, the (at
 * most three) full chunks after it to accumulators 0, 1, 2, the masked tail to
 * accumulator 3, then ((a0 + a1) + (a2 + a3)) and a fixed horizontal tree.
 * Four accumulators hide the FMA latency of one row; the _many kernels run two
 * rows at once so every q load serves both (8 accumulators + q fit the 16 ymm
 * registers without spilling).
 */
#include "eng_dist.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "eng_simd.h"

typedef struct dist_ops {
    const char *name;
    float (*l2sq)(const float *, const float *, size_t);
    float (*dot)(const float *, const float *, size_t);
    void (*l2sq_many)(const float *, const float *, size_t, size_t, float *);
    void (*dot_many)(const float *, const float *, size_t, size_t, float *);
    double (*sumsq)(const float *, size_t);
} dist_ops;

/* ---- scalar ----------------------------------------------------------- */

/* Eight partial sums: shorter dependency chains and something the compiler can vectorise. */
static float l2sq_scalar(const float *a, const float *b, size_t d)
{
    float s[8] = {0};
    size_t i = 0;

    for (; i + 8 <= d; i += 8)
        for (size_t j = 0; j < 8; j++) {
            float t = a[i + j] - b[i + j];
            s[j] += t * t;
        }
    for (size_t j = 0; i < d; i++, j++) {
        float t = a[i] - b[i];
        s[j] += t * t;
    }
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

static float dot_scalar(const float *a, const float *b, size_t d)
{
    float s[8] = {0};
    size_t i = 0;

    for (; i + 8 <= d; i += 8)
        for (size_t j = 0; j < 8; j++)
            s[j] += a[i + j] * b[i + j];
    for (size_t j = 0; i < d; i++, j++)
        s[j] += a[i] * b[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

static void l2sq_many_scalar(const float *q, const float *x, size_t n, size_t d, float *out)
{
    for (size_t r = 0; r < n; r++)
        out[r] = l2sq_scalar(q, x + r * d, d);
}

static void dot_many_scalar(const float *q, const float *x, size_t n, size_t d, float *out)
{
    for (size_t r = 0; r < n; r++)
        out[r] = dot_scalar(q, x + r * d, d);
}

static double sumsq_scalar(const float *v, size_t d)
{
    double s[4] = {0};
    size_t i = 0;

    for (; i + 4 <= d; i += 4)
        for (size_t j = 0; j < 4; j++)
            s[j] += (double)v[i + j] * v[i + j];
    for (size_t j = 0; i < d; i++, j++)
        s[j] += (double)v[i] * v[i];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

static const dist_ops ops_scalar = {
    "scalar", l2sq_scalar, dot_scalar, l2sq_many_scalar, dot_many_scalar, sumsq_scalar,
};

/* ---- AVX2 + FMA ------------------------------------------------------- */

#if ENG_X86

/*
 * One row against q. OP(acc, qv, xv) accumulates one 8-float chunk. The
 * accumulator schedule is the file-level contract (see the top comment).
 */
#define ROW1_BODY(OP)                                                                              \
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                    \
    size_t i = 0;                                                                                  \
    for (; i + 32 <= d; i += 32) {                                                                 \
        OP(a0, _mm256_loadu_ps(q + i), _mm256_loadu_ps(x + i));                                    \
        OP(a1, _mm256_loadu_ps(q + i + 8), _mm256_loadu_ps(x + i + 8));                            \
        OP(a2, _mm256_loadu_ps(q + i + 16), _mm256_loadu_ps(x + i + 16));                          \
        OP(a3, _mm256_loadu_ps(q + i + 24), _mm256_loadu_ps(x + i + 24));                          \
    }                                                                                              \
    if (i + 8 <= d) {                                                                              \
        OP(a0, _mm256_loadu_ps(q + i), _mm256_loadu_ps(x + i));                                    \
        i += 8;                                                                                    \
    }                                                                                              \
    if (i + 8 <= d) {                                                                              \
        OP(a1, _mm256_loadu_ps(q + i), _mm256_loadu_ps(x + i));                                    \
        i += 8;                                                                                    \
    }                                                                                              \
    if (i + 8 <= d) {                                                                              \
        OP(a2, _mm256_loadu_ps(q + i), _mm256_loadu_ps(x + i));                                    \
        i += 8;                                                                                    \
    }                                                                                              \
    if (i < d) {                                                                                   \
        __m256i m = tail_mask(d - i);                                                              \
        OP(a3, _mm256_maskload_ps(q + i, m), _mm256_maskload_ps(x + i, m));                        \
    }                                                                                              \
    return hsum1(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)))

/* Two rows x0, x1 against q, each with exactly the ROW1_BODY schedule. */
#define ROW2_BODY(OP)                                                                              \
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                    \
    __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0, qv;                                                 \
    size_t i = 0;                                                                                  \
    for (; i + 32 <= d; i += 32) {                                                                 \
        qv = _mm256_loadu_ps(q + i);                                                               \
        OP(a0, qv, _mm256_loadu_ps(x0 + i));                                                       \
        OP(b0, qv, _mm256_loadu_ps(x1 + i));                                                       \
        qv = _mm256_loadu_ps(q + i + 8);                                                           \
        OP(a1, qv, _mm256_loadu_ps(x0 + i + 8));                                                   \
        OP(b1, qv, _mm256_loadu_ps(x1 + i + 8));                                                   \
        qv = _mm256_loadu_ps(q + i + 16);                                                          \
        OP(a2, qv, _mm256_loadu_ps(x0 + i + 16));                                                  \
        OP(b2, qv, _mm256_loadu_ps(x1 + i + 16));                                                  \
        qv = _mm256_loadu_ps(q + i + 24);                                                          \
        OP(a3, qv, _mm256_loadu_ps(x0 + i + 24));                                                  \
        OP(b3, qv, _mm256_loadu_ps(x1 + i + 24));                                                  \
    }                                                                                              \
    if (i + 8 <= d) {                                                                              \
        qv = _mm256_loadu_ps(q + i);                                                               \
        OP(a0, qv, _mm256_loadu_ps(x0 + i));                                                       \
        OP(b0, qv, _mm256_loadu_ps(x1 + i));                                                       \
        i += 8;                                                                                    \
    }                                                                                              \
    if (i + 8 <= d) {                                                                              \
        qv = _mm256_loadu_ps(q + i);                                                               \
        OP(a1, qv, _mm256_loadu_ps(x0 + i));                                                       \
        OP(b1, qv, _mm256_loadu_ps(x1 + i));                                                       \
        i += 8;                                                                                    \
    }                                                                                              \
    if (i + 8 <= d) {                                                                              \
        qv = _mm256_loadu_ps(q + i);                                                               \
        OP(a2, qv, _mm256_loadu_ps(x0 + i));                                                       \
        OP(b2, qv, _mm256_loadu_ps(x1 + i));                                                       \
        i += 8;                                                                                    \
    }                                                                                              \
    if (i < d) {                                                                                   \
        __m256i m = tail_mask(d - i);                                                              \
        qv = _mm256_maskload_ps(q + i, m);                                                         \
        OP(a3, qv, _mm256_maskload_ps(x0 + i, m));                                                 \
        OP(b3, qv, _mm256_maskload_ps(x1 + i, m));                                                 \
    }                                                                                              \
    __m128 s = hsum4(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),                  \
                     _mm256_add_ps(_mm256_add_ps(b0, b1), _mm256_add_ps(b2, b3)),                  \
                     _mm256_setzero_ps(), _mm256_setzero_ps());                                    \
    out[0] = _mm_cvtss_f32(s);                                                                     \
    out[1] = _mm_cvtss_f32(_mm_shuffle_ps(s, s, 1))

#define OP_L2(acc, qv, xv)                                                                         \
    do {                                                                                           \
        __m256 t_ = _mm256_sub_ps(xv, qv);                                                         \
        acc = _mm256_fmadd_ps(t_, t_, acc);                                                        \
    } while (0)
#define OP_DOT(acc, qv, xv) acc = _mm256_fmadd_ps(qv, xv, acc)

AVX2 static float l2sq_avx2(const float *q, const float *x, size_t d)
{
    ROW1_BODY(OP_L2);
}

AVX2 static float dot_avx2(const float *q, const float *x, size_t d)
{
    ROW1_BODY(OP_DOT);
}

AVX2 static void l2sq_row2_avx2(const float *q, const float *x0, const float *x1, size_t d,
                                float *out)
{
    ROW2_BODY(OP_L2);
}

AVX2 static void dot_row2_avx2(const float *q, const float *x0, const float *x1, size_t d,
                               float *out)
{
    ROW2_BODY(OP_DOT);
}

AVX2 static void l2sq_many_avx2(const float *q, const float *x, size_t n, size_t d, float *out)
{
    size_t r = 0;

    for (; r + 2 <= n; r += 2)
        l2sq_row2_avx2(q, x + r * d, x + (r + 1) * d, d, out + r);
    if (r < n)
        out[r] = l2sq_avx2(q, x + r * d, d);
}

AVX2 static void dot_many_avx2(const float *q, const float *x, size_t n, size_t d, float *out)
{
    size_t r = 0;

    for (; r + 2 <= n; r += 2)
        dot_row2_avx2(q, x + r * d, x + (r + 1) * d, d, out + r);
    if (r < n)
        out[r] = dot_avx2(q, x + r * d, d);
}

/* Sum of squares in double (4 doubles per FMA, two chains), tail in scalar double. */
AVX2 static double sumsq_avx2(const float *v, size_t d)
{
    __m256d s0 = _mm256_setzero_pd(), s1 = s0;
    size_t i = 0;
    double t = 0;

    for (; i + 8 <= d; i += 8) {
        __m256d a = _mm256_cvtps_pd(_mm_loadu_ps(v + i));
        __m256d b = _mm256_cvtps_pd(_mm_loadu_ps(v + i + 4));
        s0 = _mm256_fmadd_pd(a, a, s0);
        s1 = _mm256_fmadd_pd(b, b, s1);
    }
    for (; i < d; i++)
        t += (double)v[i] * v[i];
    s0 = _mm256_add_pd(s0, s1);
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s0), _mm256_extractf128_pd(s0, 1));
    h = _mm_add_sd(h, _mm_unpackhi_pd(h, h));
    return _mm_cvtsd_f64(h) + t;
}

static const dist_ops ops_avx2 = {
    "avx2", l2sq_avx2, dot_avx2, l2sq_many_avx2, dot_many_avx2, sumsq_avx2,
};
#endif /* ENG_X86 */

/* ---- dispatch --------------------------------------------------------- */

static pthread_once_t once = PTHREAD_ONCE_INIT;
static eng_simd detected = ENG_SIMD_SCALAR;
/* -1 until initialised; then the eng_simd in use (an atomic so readers need no lock). */
static _Atomic int level = -1;

static void select_impl(void)
{
    const char *env = getenv("CDX_SIMD");
    eng_simd l = ENG_SIMD_SCALAR;

#if ENG_X86
    __builtin_cpu_init();
    /* libgcc's check includes OS support for the YMM state (XGETBV). */
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        l = ENG_SIMD_AVX2;
#endif
    if (env && strcmp(env, "scalar") == 0)
        l = ENG_SIMD_SCALAR;
    detected = l;
    atomic_store_explicit(&level, (int)l, memory_order_release);
}

void eng_dist_init(void)
{
    pthread_once(&once, select_impl);
}

eng_simd eng_simd_level(void)
{
    int l = atomic_load_explicit(&level, memory_order_acquire);

    if (l < 0) {
        eng_dist_init();
        l = atomic_load_explicit(&level, memory_order_acquire);
    }
    return (eng_simd)l;
}

static const dist_ops *ops(void)
{
#if ENG_X86
    if (eng_simd_level() == ENG_SIMD_AVX2)
        return &ops_avx2;
#else
    (void)eng_simd_level();
#endif
    return &ops_scalar;
}

const char *eng_dist_impl(void)
{
    return ops()->name;
}

void eng_dist_force_scalar(bool on)
{
    eng_dist_init();
    atomic_store_explicit(&level, on ? (int)ENG_SIMD_SCALAR : (int)detected, memory_order_release);
}

float eng_l2sq(const float *a, const float *b, size_t d)
{
    return ops()->l2sq(a, b, d);
}

float eng_dot(const float *a, const float *b, size_t d)
{
    return ops()->dot(a, b, d);
}

void eng_l2sq_many(const float *q, const float *x, size_t n, size_t d, float *out)
{
    ops()->l2sq_many(q, x, n, d, out);
}

void eng_dot_many(const float *q, const float *x, size_t n, size_t d, float *out)
{
    ops()->dot_many(q, x, n, d, out);
}

float eng_norm2(const float *v, size_t d)
{
    return (float)sqrt(ops()->sumsq(v, d));
}

bool eng_normalize(float *v, size_t d)
{
    double ss = ops()->sumsq(v, d);

    /* Also rejects NaN (comparison false) and inf. */
    if (!(ss > 0.0) || !isfinite(ss))
        return false;
    double inv = 1.0 / sqrt(ss);
    for (size_t i = 0; i < d; i++)
        v[i] = (float)(v[i] * inv);
    return true;
}
