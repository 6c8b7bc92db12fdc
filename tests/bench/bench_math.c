/*
 * bench_math: rates of the engine's numeric kernels on this machine, printed
 * (nothing is asserted; tests/test_math.c checks what the kernels compute).
 *
 *   bench_math            float and SQ8 distance scans (dispatched and scalar),
 *                         coarse probes, the integer screen;
 *   bench_math --kmeans   adds k-means training on 60000 x 784, k = 256, with 1
 *                         and all BLAS threads, and k-means++ seeding on blobs.
 *
 * Rates are the best of 5 windows of 50 ms: the machine is shared, and the
 * best window is the kernel's own rate.
 */
#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cdx_err.h"
#include "cdx_time.h"
#include "eng_dist.h"
#include "eng_kmeans.h"
#include "eng_probe.h"
#include "eng_screen.h"
#include "eng_sq8.h"
#include "fx_rand.h"

static uint64_t rs = 0x1234567;

static uint64_t rnd(void)
{
    return fx_splitmix64(&rs);
}

static void fill(float *v, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; i++)
        v[i] = fx_unif(&rs, lo, hi);
}

static float gauss(void)
{
    return fx_gauss(&rs);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "bench_math: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static void check(cdx_err e, const char *what)
{
    if (e != CDX_OK) {
        fprintf(stderr, "bench_math: %s: %s: %s\n", what, cdx_err_name(e), cdx_err_detail());
        exit(1);
    }
}

static double rate(void (*fn)(void *), void *arg, double elems_per_call)
{
    double best = 0;
    for (int w = 0; w < 5; w++) {
        double t0 = cdx_mono_s(), t;
        size_t calls = 0;
        do {
            fn(arg);
            calls++;
            t = cdx_mono_s() - t0;
        } while (t < 0.05);
        if (elems_per_call * (double)calls / t > best)
            best = elems_per_call * (double)calls / t;
    }
    return best;
}

typedef struct bench_arg {
    const float *q, *x, *step;
    const uint8_t *codes;
    size_t n, d;
    float *out;
    eng_probe *probe;
} bench_arg;

static void run_l2(void *p)
{
    bench_arg *a = p;
    eng_l2sq_many(a->q, a->x, a->n, a->d, a->out);
}

static void run_sq8(void *p)
{
    bench_arg *a = p;
    eng_sq8_l2sq_many(a->q, a->step, a->codes, a->n, a->d, a->out);
}

static void run_probe(void *p)
{
    bench_arg *a = p;
    uint32_t o[16];
    eng_kmeans_probe(a->q, a->d, a->x, a->n, ENG_KM_L2, 16, o);
}

static void run_probe_sq8(void *p)
{
    bench_arg *a = p;
    uint32_t o[16];
    eng_probe_run(a->probe, a->q, 16, o, NULL);
}

static void bench_kernels(void)
{
    /* 1,130 candidates of 784 dims: the scan of one Fashion-MNIST query at nlist 1024,
     * nprobe 16 (docs/BENCH.md). */
    size_t n = 1130, d = 784;
    float *x = xmalloc(n * d * sizeof(float)), *q = xmalloc(d * sizeof(float));
    float *step = xmalloc(d * sizeof(float)), *out = xmalloc(n * sizeof(float));
    uint8_t *codes = xmalloc(n * d);
    bench_arg a = {q, x, step, codes, n, d, out, NULL};

    fill(x, n * d, 0, 255);
    fill(q, d, 0, 255);
    fill(step, d, 0.9f, 1.1f);
    for (size_t i = 0; i < n * d; i++)
        codes[i] = (uint8_t)rnd();
    for (int s = 0; s < 2; s++) {
        eng_dist_force_scalar(s == 1);
        double r1 = rate(run_l2, &a, (double)n * d);
        double r2 = rate(run_sq8, &a, (double)n * d);
        printf(
            "[%s] l2sq_many d=784 n=1130 (3.5 MB): %.2f Gfloat/s (%.1f GFLOP/s, %.1f us/query)\n",
            eng_dist_impl(), r1 * 1e-9, 3 * r1 * 1e-9, (double)n * d / r1 * 1e6);
        printf("[%s] sq8_l2sq_many d=784 n=1130 (0.9 MB): %.2f Gcode/s (%.1f GFLOP/s, %.1f "
               "us/query)\n",
               eng_dist_impl(), r2 * 1e-9, 4 * r2 * 1e-9, (double)n * d / r2 * 1e6);
    }
    eng_dist_force_scalar(false);
    free(x);
    free(codes);

    /* Coarse quantisation: 1024 centroids of 784 dims, nprobe 16. */
    float *c = xmalloc(1024 * d * sizeof(float));
    fill(c, 1024 * d, 0, 255);
    a.x = c;
    a.n = 1024;
    double pr = rate(run_probe, &a, 1.0);
    printf("[%s] probe k=1024 d=784 nprobe=16: %.1f us/query\n", eng_dist_impl(), 1e6 / pr);
    check(eng_probe_new(c, 1024, d, ENG_KM_L2, &a.probe), "eng_probe_new");
    pr = rate(run_probe_sq8, &a, 1.0);
    printf("[%s] screened probe, same: %.1f us/query\n", eng_dist_impl(), 1e6 / pr);
    eng_probe_free(a.probe);

    /* The integer screen over 1,637 rows (a Fashion-MNIST nprobe-16 query) and over 24x that. */
    static const char *impls[] = {"scalar", "avx2"};
    size_t rows[2] = {1637, 1637 * 24};
    int16_t *w = xmalloc(d * sizeof(int16_t));
    uint8_t *cd = xmalloc(rows[1] * d);
    int64_t *S = xmalloc(rows[1] * sizeof(int64_t));
    for (size_t i = 0; i < d; i++)
        w[i] = (int16_t)((int)(rnd() % 2001) - 1000);
    for (size_t i = 0; i < rows[1] * d; i++)
        cd[i] = (uint8_t)rnd();
    for (int k = 0; k < 2; k++)
        for (int r = 0; r < 2; r++) {
            int reps = r ? 4 : 100;
            double t0 = cdx_mono_s();
            bool ok = true;
            for (int i = 0; i < reps && ok; i++) /* r=1: a different block each time */
                ok = eng_screen_idot(impls[k], w, cd + (r ? (size_t)(i % 24) * rows[0] * d : 0),
                                     rows[0], d, S);
            double s = cdx_mono_s() - t0;
            if (ok)
                printf("[%s] screen idot 1637x784 (%s): %.1f us, %.1f Gcode/s\n", impls[k],
                       r ? "from memory" : "cache-warm", s / reps * 1e6,
                       (double)rows[0] * d * reps / s / 1e9);
            else
                printf("[%s] screen idot: not available on this machine\n", impls[k]);
        }
    free(w);
    free(cd);
    free(S);
    free(c);
    free(q);
    free(step);
    free(out);
}

static void bench_kmeans(void)
{
    size_t n = 60000, d = 784, k = 256;
    eng_kmeans_stats st;
    eng_kmeans_opts o = {.k = (uint32_t)k, .max_iters = 5, .tolerance = 0, .seed = 1};
    float *x = xmalloc(n * d * sizeof(float)), *cen = xmalloc(k * d * sizeof(float));

    fill(x, n * d, 0, 1);
    printf("OpenBLAS kernels: %s (OPENBLAS_CORETYPE=%s)\n", eng_kmeans_blas_core(),
           getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "unset");
    int threads0 = openblas_get_num_threads();
    for (int th = 1; th <= threads0; th += threads0 > 1 ? threads0 - 1 : 1) {
        openblas_set_num_threads(th);
        double t0 = cdx_mono_s();
        o.max_iters = 0;
        check(eng_kmeans_train(x, n, d, &o, cen, &st), "k-means seeding");
        double seed_s = cdx_mono_s() - t0;
        o.max_iters = 5;
        check(eng_kmeans_train(x, n, d, &o, cen, &st), "k-means");
        printf("k-means 60000x784 k=256, %u iterations, %d BLAS thread(s): %.2f s "
               "(k-means++ seeding alone %.2f s; objective %.6g)\n",
               st.iterations, th, st.seconds, seed_s, st.objective);
    }
    openblas_set_num_threads(threads0);

    /* Clustered data (256 Gaussian blobs, spread 2, sigma 1): the seeding's
     * triangle-inequality pruning helps here. */
    size_t npc = n / k, nb = k * npc;
    float *ctr = xmalloc(k * d * sizeof(float)), *xb = xmalloc(nb * d * sizeof(float));
    fill(ctr, k * d, -2.0f, 2.0f);
    for (size_t i = 0; i < nb; i++) {
        size_t c = (i * 7 + i / 3) % k; /* interleaved, not sorted by cluster */
        for (size_t j = 0; j < d; j++)
            xb[i * d + j] = ctr[c * d + j] + gauss();
    }
    double t0 = cdx_mono_s();
    o.max_iters = 0;
    check(eng_kmeans_train(xb, nb, d, &o, cen, &st), "k-means seeding on blobs");
    printf("k-means++ seeding on 256 Gaussian blobs (%zu x 784): %.2f s\n", nb, cdx_mono_s() - t0);
    free(xb);
    free(ctr);
    free(x);
    free(cen);
}

int main(int argc, char **argv)
{
    bool kmeans = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--kmeans")) {
            kmeans = true;
        } else {
            fprintf(stderr, "usage: bench_math [--kmeans]\n");
            return 2;
        }
    }
    eng_dist_init(); /* CDX_SIMD=scalar selects the fallback, as in the appliance */
    bench_kernels();
    if (kmeans)
        bench_kmeans();
    return 0;
}
