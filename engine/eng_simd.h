/*
 * eng_simd.h - the x86 AVX2 helpers the float and SQ8 kernels share
 * (internal to engine/). Functions carry target("avx2,fma") so the binary
 * still runs on any x86-64: callers dispatch at run time (eng_simd_level).
 */
#ifndef ENG_SIMD_H
#define ENG_SIMD_H

#include <stddef.h>
#include <stdint.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define ENG_X86 1
#include <immintrin.h>
#else
#define ENG_X86 0
#endif

#if ENG_X86
#define AVX2 __attribute__((target("avx2,fma")))

/* tail_mask_tab + 8 - r: the first r lanes set (0 <= r <= 8). */
static const int32_t eng_tail_mask_tab[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                              0,  0,  0,  0,  0,  0,  0,  0};

AVX2 static inline __m256i tail_mask(size_t r)
{
    return _mm256_loadu_si256((const __m256i *)(const void *)(eng_tail_mask_tab + 8 - r));
}

/* Lane sums of four vectors: ((v0+v1)+(v2+v3)) + ((v4+v5)+(v6+v7)) each. */
AVX2 static inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d)
{
    __m256 ab = _mm256_hadd_ps(a, b);
    __m256 cd = _mm256_hadd_ps(c, d);
    __m256 s = _mm256_hadd_ps(ab, cd);

    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* The same tree as hsum4 for one vector (bit-identical to its lane 0). */
AVX2 static inline float hsum1(__m256 v)
{
    __m256 s = _mm256_hadd_ps(v, v);

    s = _mm256_hadd_ps(s, s);
    return _mm_cvtss_f32(_mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
}
#endif

#endif
