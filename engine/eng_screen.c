/* Score bounds from SQ8 codes by an exact integer dot product (see eng_screen.h). */
#include "eng_screen.h"

#include <math.h>
#include <string.h>

#include "eng_dist.h"
#include "eng_simd.h"

#define U 0x1p-24 /* unit roundoff of float32 */

int32_t eng_screen_wmax(size_t d)
{
    /* Per int32 lane the AVX2 dot adds 2 * ceil(d / 16) products of |w| * 255. */
    double lim = 2147483647.0 / (510.0 * (double)((d + 15) / 16 + 1));
    int32_t w = lim >= 32767 ? 32767 : (int32_t)lim;
    return w >= 64 ? w : 0;
}

void eng_screen_row_aux(const eng_sq8 *sq, const float *x, const uint8_t *code, float aux[2])
{
    double n2 = 0, e = 0;
    for (size_t i = 0; i < sq->d; i++) {
        double sc = (double)sq->step[i] * code[i];
        double diff = (double)x[i] - ((double)sq->vmin[i] + sc);
        n2 += sc * sc;
        e += diff * diff;
    }
    aux[0] = (float)n2; /* its rounding is part of the bound */
    float er = (float)(sqrt(e) * (1 + 1e-9));
    aux[1] = e > 0 ? nextafterf(er, INFINITY) : 0.0f;
}

bool eng_screen_prepare(eng_screen *s, const eng_sq8 *sq, const float *q, eng_km_metric m,
                        bool rescore_codes, int16_t *wbuf)
{
    size_t d = sq->d;
    double qn = 0, base = 0, wabs = 0, mag = 0, mq = 0, rsum = 0;
    bool l2 = m == ENG_KM_L2;

    memset(s, 0, sizeof(*s));
    s->d = d;
    s->l2 = l2;
    s->w = wbuf;
    s->rescore_codes = rescore_codes;
    s->wmax = eng_screen_wmax(d);
    if (!s->wmax)
        return false;
    for (size_t i = 0; i < d; i++) {
        double qi = q[i], vm = sq->vmin[i], st = sq->step[i], ti = qi - vm;
        double wi = (l2 ? ti : qi) * st;
        qn += qi * qi;
        base += l2 ? ti * ti : qi * vm;
        mag += fabs(qi) * (fabs(vm) + 255.0 * st);
        double mi = fabs(qi) + fabs(vm) + 255.0 * st;
        mq += mi * mi;
        wabs = fabs(wi) > wabs ? fabs(wi) : wabs;
    }
    if (!(wabs > 0) || !isfinite(wabs) || !isfinite(base) || !isfinite(mag) || !isfinite(mq))
        return false;
    s->delta = wabs / s->wmax;
    for (size_t i = 0; i < d; i++) {
        double wi = (l2 ? (double)q[i] - sq->vmin[i] : (double)q[i]) * (double)sq->step[i];
        double r = nearbyint(wi / s->delta);
        r = r > s->wmax ? s->wmax : r < -s->wmax ? -s->wmax : r;
        wbuf[i] = (int16_t)r;
        rsum += fabs(wi - r * s->delta);
    }
    s->base = base;
    s->qn = sqrt(qn);
    s->mag = mag + fabs(l2 ? 0 : base);
    s->gam = 2.0 * (double)(d + 10) * U;
    /* Codes are 0..255: the weights' rounding moves a dot product by at most 255 rsum. */
    s->qerr = 255.0 * rsum * (1 + 1e-9);
    /* SQ8 L2 kernel: each component (q - vmin) - step * code is rounded twice, by <= u M_i. */
    s->eta = rescore_codes && l2 ? 4.0 * U * sqrt(mq) : 0;
    return true;
}

static void idot_scalar(const int16_t *w, const uint8_t *codes, size_t n, size_t d, int64_t *S)
{
    for (size_t j = 0; j < n; j++) {
        const uint8_t *c = codes + j * d;
        int64_t acc = 0;
        for (size_t i = 0; i < d; i++)
            acc += (int32_t)w[i] * c[i];
        S[j] = acc;
    }
}

#if ENG_X86
/* Lane sums of an int32 accumulator, in 64 bits. */
AVX2 static inline int64_t hsum_epi32(__m256i a)
{
    int32_t l[8];
    _mm256_storeu_si256((__m256i *)(void *)l, a);
    return (int64_t)l[0] + l[1] + l[2] + l[3] + l[4] + l[5] + l[6] + l[7];
}

/*
 * 16 codes widened to int16, multiplied and pair-summed (vpmaddwd) into int32
 * lanes; four rows at a time share each weight load and keep four streams of
 * loads in flight (the scan is bound by memory, not arithmetic).
 */
AVX2 static void idot_avx2(const int16_t *w, const uint8_t *codes, size_t n, size_t d, int64_t *S)
{
    size_t d16 = d & ~(size_t)15, j = 0;
#define LD16(p) _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(p)))
    for (; j + 4 <= n; j += 4) {
        const uint8_t *c0 = codes + j * d, *c1 = c0 + d, *c2 = c1 + d, *c3 = c2 + d;
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        size_t i = 0;
        for (; i < d16; i += 16) {
            __m256i wv = _mm256_loadu_si256((const __m256i *)(const void *)(w + i));
            a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(LD16(c0 + i), wv));
            a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(LD16(c1 + i), wv));
            a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(LD16(c2 + i), wv));
            a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(LD16(c3 + i), wv));
        }
        int64_t s0 = hsum_epi32(a0), s1 = hsum_epi32(a1), s2 = hsum_epi32(a2), s3 = hsum_epi32(a3);
        for (; i < d; i++) {
            s0 += (int32_t)w[i] * c0[i];
            s1 += (int32_t)w[i] * c1[i];
            s2 += (int32_t)w[i] * c2[i];
            s3 += (int32_t)w[i] * c3[i];
        }
        S[j] = s0;
        S[j + 1] = s1;
        S[j + 2] = s2;
        S[j + 3] = s3;
    }
    for (; j < n; j++) {
        const uint8_t *c = codes + j * d;
        __m256i a0 = _mm256_setzero_si256();
        size_t i = 0;
        for (; i < d16; i += 16)
            a0 = _mm256_add_epi32(
                a0, _mm256_madd_epi16(LD16(c + i),
                                      _mm256_loadu_si256((const __m256i *)(const void *)(w + i))));
        int64_t acc = hsum_epi32(a0);
        for (; i < d; i++)
            acc += (int32_t)w[i] * c[i];
        S[j] = acc;
    }
#undef LD16
}
#endif

bool eng_screen_idot(const char *impl, const int16_t *w, const uint8_t *codes, size_t n, size_t d,
                     int64_t *S)
{
    if (!strcmp(impl, "scalar")) {
        idot_scalar(w, codes, n, d, S);
        return true;
    }
#if ENG_X86
    if (!strcmp(impl, "avx2") && __builtin_cpu_supports("avx2")) {
        idot_avx2(w, codes, n, d, S);
        return true;
    }
#endif
    return false;
}

void eng_screen_bounds(const eng_screen *s, const uint8_t *codes, const float *aux, size_t n,
                       int64_t *S, double *lo, double *hi)
{
#if ENG_X86
    if (eng_simd_level() == ENG_SIMD_AVX2)
        idot_avx2(s->w, codes, n, s->d, S);
    else
#endif
        idot_scalar(s->w, codes, n, s->d, S);
    for (size_t j = 0; j < n; j++) {
        double dot = s->delta * (double)S[j];
        double n2 = aux[2 * j], err = aux[2 * j + 1];
        if (s->l2) {
            double a = s->base - 2.0 * dot + n2;
            double e = 2.0 * s->qerr + 0x1p-22 * n2 + 1e-12 * (s->base + 2.0 * fabs(dot) + n2);
            double alo = a - e > 0 ? a - e : 0, ahi = a + e > 0 ? a + e : 0;
            if (err + s->eta == 0) { /* codes exact, rescored on them or on equal originals */
                lo[j] = alo * (1 - s->gam);
                hi[j] = ahi * (1 + s->gam);
                continue;
            }
            double rlo = sqrt(alo) - err - s->eta; /* bounds on ||q - x|| */
            double rhi = sqrt(ahi) + err + s->eta;
            rlo = rlo > 0 ? rlo : 0;
            lo[j] = rlo * rlo * (1 - s->gam);
            hi[j] = rhi * rhi * (1 + s->gam);
        } else {
            double a = s->base + dot;
            double e = s->qerr + 1e-12 * (fabs(s->base) + fabs(dot)) + s->qn * err +
                       2.0 * s->gam * (s->mag + s->qn * err);
            lo[j] = a - e;
            hi[j] = a + e;
        }
    }
}
