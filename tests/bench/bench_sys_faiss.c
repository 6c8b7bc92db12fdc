/* bench_sys_faiss: the Faiss peer (IndexIVFFlat + IndexFlatL2 quantizer) as a bench_sys. */
#include "bench_sys.h"
#include "faiss_shim.h"

#include <stdlib.h>
#include <string.h>

#ifndef CDX_FAISS_LIBRARY
#define CDX_FAISS_LIBRARY "libfaiss.a"
#endif

typedef struct {
    faiss_shim *f;
    size_t nlist;
    char err[512];
} fsys;

static void *fs_create(size_t d, size_t nlist, const char *variant)
{
    if (variant && *variant) {
        fprintf(stderr, "faiss: no variants (got '%s')\n", variant);
        return NULL;
    }
    fsys *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    faiss_shim_set_threads(1); /* fair timing: one OpenMP thread, like every other system */
    s->nlist = nlist;
    s->f = faiss_shim_new(d, nlist, s->err, sizeof s->err);
    if (!s->f) {
        fprintf(stderr, "%s\n", s->err);
        free(s);
        return NULL;
    }
    return s;
}

static int fs_check(fsys *s, int rc)
{
    if (rc != 0)
        fprintf(stderr, "%s\n", s->err);
    return rc;
}

static int fs_train(void *p, const float *x, size_t n, unsigned iters, uint64_t seed)
{
    fsys *s = p;
    return fs_check(s, faiss_shim_train(s->f, x, n, iters, seed, s->err, sizeof s->err));
}

static int fs_add(void *p, const float *x, size_t n)
{
    fsys *s = p;
    return fs_check(s, faiss_shim_add(s->f, x, n, s->err, sizeof s->err));
}

static int fs_set_nprobe(void *p, size_t nprobe)
{
    fsys *s = p;
    return faiss_shim_set_nprobe(s->f, nprobe);
}

static int fs_search(void *p, const float *q, size_t nq, size_t k, int64_t *labels, float *dist)
{
    fsys *s = p;
    return fs_check(s, faiss_shim_search(s->f, q, nq, k, labels, dist, s->err, sizeof s->err));
}

static void fs_destroy(void *p)
{
    fsys *s = p;
    if (!s)
        return;
    faiss_shim_free(s->f);
    free(s);
}

static void fs_report(void *p, FILE *md)
{
    fsys *s = p;
    int niter, mppc, seed;
    faiss_shim_train_params(s->f, &niter, &mppc, &seed);
    fprintf(md,
            "- faiss nlist %zu: Faiss %s (%s), IndexIVFFlat over IndexFlatL2; k-means niter %d "
            "(Faiss's IVF default: %d), max_points_per_centroid %d (no subsampling), seed %d; "
            "inverted-list imbalance factor %.3f\n",
            s->nlist, faiss_shim_version(), CDX_FAISS_LIBRARY, niter, faiss_shim_default_niter(),
            mppc, seed, faiss_shim_imbalance(s->f));
}

const bench_sys bench_sys_faiss = {
    .name = "faiss",
    .create = fs_create,
    .train = fs_train,
    .add = fs_add,
    .set_nprobe = fs_set_nprobe,
    .search = fs_search,
    .destroy = fs_destroy,
    .report = fs_report,
};
