// faiss_shim: C API over Faiss IndexIVFFlat for the benchmark (see faiss_shim.h).
#include "faiss_shim.h"

#include <faiss/Index.h>
#include <faiss/IndexFlat.h>
#include <faiss/IndexIVFFlat.h>
#include <omp.h>

#include <climits>
#include <cstdio>
#include <exception>
#include <new>

using idx_t = faiss::Index::idx_t; // Faiss 1.7.3's spelling (later: faiss::idx_t)
static_assert(sizeof(idx_t) == sizeof(int64_t), "Faiss ids are int64");

struct faiss_shim {
    // Declared before the index: members are built in this order and the index points to it.
    faiss::IndexFlatL2 quantizer;
    faiss::IndexIVFFlat index;
    faiss_shim(size_t d, size_t nlist)
        : quantizer(static_cast<idx_t>(d)), index(&quantizer, d, nlist, faiss::METRIC_L2)
    {
    }
};

namespace
{

void set_err(char *err, size_t errcap, const char *what, const char *msg)
{
    if (err && errcap)
        std::snprintf(err, errcap, "faiss %s: %s", what, msg);
}

// Runs f, turning any exception into -1 and a message.
template <class F> int guarded(const char *what, char *err, size_t errcap, F f)
{
    try {
        f();
        return 0;
    } catch (const std::bad_alloc &) {
        set_err(err, errcap, what, "out of memory");
    } catch (const std::exception &e) {
        set_err(err, errcap, what, e.what());
    } catch (...) {
        set_err(err, errcap, what, "unknown exception");
    }
    return -1;
}

} // namespace

extern "C" {

void faiss_shim_set_threads(int n)
{
    omp_set_num_threads(n);
}

faiss_shim *faiss_shim_new(size_t d, size_t nlist, char *err, size_t errcap)
{
    faiss_shim *s = nullptr;
    if (d == 0 || nlist == 0) {
        set_err(err, errcap, "create", "d and nlist must be positive");
        return nullptr;
    }
    guarded("create", err, errcap, [&] { s = new faiss_shim(d, nlist); });
    return s;
}

int faiss_shim_train(faiss_shim *s, const float *x, size_t n, unsigned niter, uint64_t seed,
                     char *err, size_t errcap)
{
    size_t nlist = s->index.nlist;
    size_t per = (n + nlist - 1) / nlist;
    if (niter == 0 || niter > INT_MAX || per >= INT_MAX) {
        set_err(err, errcap, "train", "iterations or sample size out of range");
        return -1;
    }
    faiss::ClusteringParameters &cp = s->index.cp;
    cp.niter = static_cast<int>(niter);
    // Faiss subsamples to nlist * max_points_per_centroid (default 256) with its own RNG; the
    // harness already drew the sample every system gets, so make Faiss take all of it.
    if (per > static_cast<size_t>(cp.max_points_per_centroid))
        cp.max_points_per_centroid = static_cast<int>(per);
    cp.seed = static_cast<int>(seed & INT_MAX);
    cp.verbose = false;
    return guarded("train", err, errcap, [&] { s->index.train(static_cast<idx_t>(n), x); });
}

int faiss_shim_add(faiss_shim *s, const float *x, size_t n, char *err, size_t errcap)
{
    return guarded("add", err, errcap, [&] { s->index.add(static_cast<idx_t>(n), x); });
}

int faiss_shim_set_nprobe(faiss_shim *s, size_t nprobe)
{
    if (nprobe == 0 || nprobe > s->index.nlist)
        return -1;
    s->index.nprobe = nprobe;
    return 0;
}

int faiss_shim_search(faiss_shim *s, const float *q, size_t nq, size_t k, int64_t *labels,
                      float *dist, char *err, size_t errcap)
{
    return guarded("search", err, errcap, [&] {
        s->index.search(static_cast<idx_t>(nq), q, static_cast<idx_t>(k), dist,
                        reinterpret_cast<idx_t *>(labels));
    });
}

void faiss_shim_free(faiss_shim *s)
{
    delete s;
}

int faiss_shim_default_niter(void)
{
    int n = -1;
    // IVF indexes override ClusteringParameters' own default (25) in Level1Quantizer: ask one.
    try {
        faiss::IndexFlatL2 q(1);
        faiss::IndexIVFFlat ivf(&q, 1, 1);
        n = ivf.cp.niter;
    } catch (...) {
    }
    return n;
}

const char *faiss_shim_version(void)
{
#define CDX_STR2(x) #x
#define CDX_STR(x)  CDX_STR2(x)
    return CDX_STR(FAISS_VERSION_MAJOR) "." CDX_STR(FAISS_VERSION_MINOR) "." CDX_STR(
        FAISS_VERSION_PATCH);
}

int faiss_shim_train_params(const faiss_shim *s, int *niter, int *max_points_per_centroid,
                            int *seed)
{
    *niter = s->index.cp.niter;
    *max_points_per_centroid = s->index.cp.max_points_per_centroid;
    *seed = s->index.cp.seed;
    return 0;
}

double faiss_shim_imbalance(const faiss_shim *s)
{
    return s->index.invlists ? s->index.invlists->imbalance_factor() : 0.0;
}

} // extern "C"
