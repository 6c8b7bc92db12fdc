/* faiss_shim: the little of Faiss the benchmark needs (IndexIVFFlat over an IndexFlatL2
 * quantizer, L2), behind a C API. Debian's libfaiss-dev ships only a static C++ libfaiss.a and
 * no compiled C API, hence this C++ file. No C++ exception crosses this boundary: failures return
 * -1 / NULL with a message in err. */
#ifndef CDX_BENCH_FAISS_SHIM_H
#define CDX_BENCH_FAISS_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct faiss_shim faiss_shim;

/* Sets the OpenMP thread count for Faiss (and the OpenMP build of OpenBLAS, which shares
 * libgomp). The benchmark uses 1. */
void faiss_shim_set_threads(int n);

/* An untrained IVFFlat index with nlist lists for d-dimensional vectors. */
faiss_shim *faiss_shim_new(size_t d, size_t nlist, char *err, size_t errcap);

/* k-means on exactly the n given points (no subsampling), niter iterations, fixed seed. */
int faiss_shim_train(faiss_shim *s, const float *x, size_t n, unsigned niter, uint64_t seed,
                     char *err, size_t errcap);

/* Adds n vectors; their ids are 0, 1, ... in the order of all add calls. */
int faiss_shim_add(faiss_shim *s, const float *x, size_t n, char *err, size_t errcap);

int faiss_shim_set_nprobe(faiss_shim *s, size_t nprobe);

/* k nearest for nq queries (nq = 1 for one at a time): labels/dist are nq x k, -1 padded. */
int faiss_shim_search(faiss_shim *s, const float *q, size_t nq, size_t k, int64_t *labels,
                      float *dist, char *err, size_t errcap);

void faiss_shim_free(faiss_shim *s);

/* For the report: Faiss's own IVF default k-means iterations, the version, the parameters the
 * last train used, and the inverted lists' imbalance factor (1 = perfectly balanced). */
int faiss_shim_default_niter(void);
const char *faiss_shim_version(void);
int faiss_shim_train_params(const faiss_shim *s, int *niter, int *max_points_per_centroid,
                            int *seed);
double faiss_shim_imbalance(const faiss_shim *s);

#ifdef __cplusplus
}
#endif

#endif
