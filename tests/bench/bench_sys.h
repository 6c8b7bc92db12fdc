/* bench_sys: one system under test in bench_ivf (docs/BENCH.md).
 *
 * The harness drives every system identically, one thread, one process:
 *   s = create(d, nlist, variant)      variant: the text after ':' in --systems name:variant,
 *                                      NULL when none was given; NULL return = failure
 *   train(s, sample, n, iters, seed)   the same sample (row-major, n x d) and the same k-means
 *                                      iteration count for every system: use all n points
 *   add(s, base, nb)                   ids are the row numbers 0..nb-1
 *   for each nprobe: set_nprobe(s, nprobe), then
 *     search(s, q, 1, k, ...) per query (latency, one-at-a-time QPS), and
 *     search(s, q, nq, k, ...) once (batched QPS)
 *       labels/dist: nq x k, nearest first, label -1 (and any dist) where fewer than k found
 *   report(s, md)                      optional (may be NULL): extra Markdown list lines ("- ...")
 *                                      such as per-stage timings, written after the runs
 *   destroy(s)
 * Every int function returns 0 on success, anything else on failure (the harness then stops
 * that system and says so); print the reason to stderr. The harness times whole calls: work a
 * system defers (lazy loading, background threads) is its own to account for in report().
 */
#ifndef CDX_BENCH_SYS_H
#define CDX_BENCH_SYS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct bench_sys {
    const char *name;
    void *(*create)(size_t d, size_t nlist, const char *variant);
    int (*train)(void *s, const float *x, size_t n, unsigned iters, uint64_t seed);
    int (*add)(void *s, const float *x, size_t n);
    int (*set_nprobe)(void *s, size_t nprobe);
    int (*search)(void *s, const float *q, size_t nq, size_t k, int64_t *labels, float *dist);
    void (*destroy)(void *s);
    void (*report)(void *s, FILE *md); /* optional extra lines: per-stage timings etc. */
} bench_sys;

/* Systems built into bench_ivf (see the registry in bench_ivf.c). */
#ifdef CDX_BENCH_HAVE_FAISS
extern const bench_sys bench_sys_faiss; /* bench_sys_faiss.c: Faiss IndexIVFFlat (the peer) */
#endif
extern const bench_sys bench_sys_engine; /* bench_sys_engine.c: Cipherdex */

#endif
