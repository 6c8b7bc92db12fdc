/*
 * eng_internal.h - the engine's decoded structures, shared by its .c files.
 */
#ifndef ENG_INTERNAL_H
#define ENG_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "eng.h"
#include "eng_buf.h"
#include "eng_probe.h"
#include "eng_record.h"
#include "hsm_keys.h"
#include "hsm_subkey.h"

#define ENG_TOKEN_LEN   16
#define ENG_BUCKETS     256   /* id-map buckets per index (fixed at format 1) */
#define ENG_MANIFEST_FMT 1

/* ---- catalog entry (root key, purpose catalog) ---- */

enum { ENG_ST_CREATING = 1, ENG_ST_READY = 2, ENG_ST_DELETING = 3 };

typedef struct eng_catentry {
    uint8_t state;
    char name[CDX_INDEX_NAME_MAX + 1];
    uint8_t id[CDX_ID_LEN];
    uint8_t key_source;     /* eng_key_source */
    uint8_t owned;
    uint8_t serial[16];     /* token serial the key lives on */
    uint8_t has_kcv;
    uint8_t kcv[CDX_KCV_LEN];
    uint32_t dim;
    uint8_t metric, type;
    uint32_t n_lists;
    uint64_t created_ms;
    uint64_t rec_version;   /* version of the catalog record it was read from */
} eng_catentry;

void eng_cat_encode(const eng_catentry *c, eng_buf *b);
cdx_err eng_cat_decode(const uint8_t *p, size_t n, eng_catentry *c);

/* ---- manifest body ---- */

typedef struct eng_segref {
    uint8_t token[ENG_TOKEN_LEN]; /* store name: HMAC(K_centroid, be32(cluster) salt) */
    uint8_t salt[16];
    uint64_t version;             /* record version of its blocks */
    uint32_t rows;
    uint32_t search_len, vectors_len, meta_len; /* sealed block sizes, in this order */
} eng_segref;

typedef struct eng_cluster {
    uint32_t nseg, capseg;
    eng_segref *seg;              /* oldest first */
} eng_cluster;

typedef struct eng_retired {
    uint8_t token[ENG_TOKEN_LEN];
    uint64_t retire_ms;
} eng_retired;

typedef struct eng_manifest {
    uint64_t version;             /* head version that points at it */
    uint8_t token[ENG_TOKEN_LEN]; /* its own store token */
    uint32_t dim;
    uint8_t metric, type;
    uint32_t n_lists;             /* configured */
    uint32_t n_clusters;          /* 0 = untrained: one pseudo-cluster */
    uint32_t train_gen;
    uint64_t centroids_version;   /* 0 = none */
    uint8_t centroids_token[ENG_TOKEN_LEN];
    uint32_t centroids_len;
    uint64_t bucket_version[ENG_BUCKETS]; /* 0 = empty bucket, never written */
    eng_cluster *clusters;        /* max(1, n_clusters) */
    uint32_t nretired, capretired;
    eng_retired *retired;
    uint64_t count;               /* live items */
    /* decoded centroids (filled on demand; not serialised here) */
    float *centroids;             /* n_clusters x dim (normalised for cosine) */
    float *sq_vmin, *sq_step;     /* IVFSQ8 quantiser (dim each) */
    struct eng_probe *probe;      /* coarse quantiser over centroids (shared by clones) */
    atomic_uint refs;             /* shared read-only between requests */
} eng_manifest;

uint32_t eng_manifest_nclusters(const eng_manifest *m); /* max(1, n_clusters) */
void eng_manifest_free(eng_manifest *m);
cdx_err eng_manifest_clone(const eng_manifest *src, eng_manifest **out);
void eng_manifest_encode(const eng_manifest *m, eng_buf *b);
cdx_err eng_manifest_decode(const uint8_t *p, size_t n, eng_manifest **out);
cdx_err eng_cluster_push(eng_cluster *c, const eng_segref *s);
cdx_err eng_retire(eng_manifest *m, const uint8_t token[ENG_TOKEN_LEN], uint64_t when);

/* ---- head ---- */

typedef struct eng_head {
    uint64_t version;
    uint8_t manifest_token[ENG_TOKEN_LEN];
    uint32_t manifest_len;
    uint64_t write_time;
} eng_head;

void eng_head_encode(const eng_head *h, eng_buf *b);
cdx_err eng_head_decode(const uint8_t *p, size_t n, eng_head *h);

/* ---- id-map bucket ---- */

typedef struct eng_ident {
    uint8_t tok[ENG_TOKEN_LEN];   /* id token */
    uint32_t cluster;
    uint8_t seg[ENG_TOKEN_LEN];   /* segment holding the live copy */
    uint32_t row;
    uint64_t commit_version;
    uint8_t content[ENG_TOKEN_LEN]; /* zeros: no contents */
    uint32_t content_len;
    uint16_t id_len;
    char *id;                     /* malloc'ed, NUL-terminated */
} eng_ident;

typedef struct eng_bucket {
    uint32_t n, cap;
    eng_ident *e;                 /* sorted by tok */
} eng_bucket;

void eng_bucket_free(eng_bucket *b);
/* Encoded size: 4 + sum(70 + id_len). */
size_t eng_bucket_encoded_len(const eng_bucket *b);
void eng_bucket_encode(const eng_bucket *b, eng_buf *out);
cdx_err eng_bucket_decode(const uint8_t *p, size_t n, eng_bucket *b);
eng_ident *eng_bucket_find(eng_bucket *b, const uint8_t tok[ENG_TOKEN_LEN]);
/* Insert or replace (takes ownership of e->id). */
cdx_err eng_bucket_put(eng_bucket *b, eng_ident *e);
bool eng_bucket_remove(eng_bucket *b, const uint8_t tok[ENG_TOKEN_LEN]);
unsigned eng_bucket_of(const uint8_t tok[ENG_TOKEN_LEN]);

/* ---- segment blocks ---- */

typedef struct eng_tomb {
    uint8_t seg[ENG_TOKEN_LEN];
    uint32_t row;
} eng_tomb;

/*
 * Decoded search block: codes, ids, tombstones, pointing into the decrypted
 * plaintext it owns. Immutable once built: shared through the cache.
 *
 *   u32 rows | u32 code_size | u32 ntomb | codes[rows*code_size] |
 *   [rows x (f32 n2, f32 err): screen row aux, trained indexes only] |
 *   rows x (u16 id_len, id) | ntomb x (seg token[16], u32 row)
 *
 * The same struct carries a decrypted vector block (originals, rows x dim
 * floats) for the cache: codes = the floats, code_size = 4 * dim, no ids.
 */
typedef struct eng_search {
    uint32_t rows;
    uint32_t code_size;           /* bytes per row: 4*dim (float) or dim (sq8) */
    uint32_t ntomb;
    uint8_t *plain;               /* owned, wiped on free */
    size_t plain_len;
    const uint8_t *codes;
    float *aux;                   /* rows x 2 (eng_screen.h), aligned copy; NULL if none */
    uint32_t *id_pos;             /* offset of each id in plain */
    uint16_t *id_len;
    const uint8_t *tombs;         /* ntomb x 20 bytes */
    size_t bytes;                 /* memory footprint, for the cache */
    atomic_uint refs;
} eng_search;

/* Takes ownership of plain (malloc'ed) whatever the outcome. */
cdx_err eng_search_decode(uint8_t *plain, size_t n, uint32_t expect_rows, uint32_t code_size,
                          bool with_aux, eng_search **out);
/* Wrap a decrypted vector block (takes ownership of plain whatever the outcome). */
cdx_err eng_vectors_wrap(uint8_t *plain, size_t n, uint32_t rows, uint32_t dim, eng_search **out);
void eng_search_release(eng_search *s);
/*
 * Build the plaintext of a search block; returns where the codes are (NULL on
 * allocation failure). codes NULL: the code area is left for the caller to
 * fill. with_aux: a rows x 2 float screen-aux area follows the codes (copied
 * from aux when given, else left for the caller at codes + rows * code_size,
 * at any alignment: write it with memcpy).
 */
uint8_t *eng_search_encode(eng_buf *b, uint32_t rows, uint32_t code_size, const uint8_t *codes,
                           const float *aux, bool with_aux, const char *const *ids,
                           const uint16_t *id_lens, const eng_tomb *tombs, uint32_t ntomb);

/* ---- block cache (decrypted search and vector blocks, by kind and segment token) ---- */

typedef struct eng_cache eng_cache;
eng_cache *eng_cache_new(size_t max_bytes);
void eng_cache_free(eng_cache *c);
/* A referenced block or NULL. */
eng_search *eng_cache_get(eng_cache *c, eng_kind kind, const uint8_t token[ENG_TOKEN_LEN]);
/* Insert (the cache takes its own reference). */
void eng_cache_put(eng_cache *c, eng_kind kind, const uint8_t token[ENG_TOKEN_LEN], eng_search *s);
void eng_cache_drop_index(eng_cache *c);
void eng_cache_stats(eng_cache *c, uint64_t *hits, uint64_t *misses, uint64_t *bytes);

/* ---- rollback high-water marks (state dir) ---- */

cdx_err eng_state_get(const char *dir, const uint8_t id[CDX_ID_LEN], uint64_t *version);
cdx_err eng_state_put(const char *dir, const uint8_t id[CDX_ID_LEN], uint64_t version);
void eng_state_remove(const char *dir, const uint8_t id[CDX_ID_LEN]);

#endif
