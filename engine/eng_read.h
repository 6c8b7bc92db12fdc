/*
 * eng_read.h - the read side shared by get, query, list and rewrite:
 * fetching and opening segment blocks (through the block cache for search
 * and vector blocks), indexed metadata blocks, single rows, contents.
 *
 * Functions taking an op run on its thread or on a query worker sharing it
 * (the payload, content subkeys fetched beforehand). A missing segment is
 * reported through *missing, not an error: the caller re-reads the head once
 * (a newer commit may have retired and swept it) before calling it
 * INTEGRITY.
 */
#ifndef ENG_READ_H
#define ENG_READ_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "eng_buf.h"
#include "eng_idmap.h"
#include "eng_manifest.h"
#include "eng_record.h"
#include "eng_segment.h"

typedef struct op op;

/*
 * Fetch and open one block kind of n segments (pipelined GETRANGE) into
 * pts[i] (initialised here; eng_buf_free each). *missing = true if any
 * segment is absent (its pts[i] empty).
 * Errors: CDX_ERR_INTEGRITY (a block forged or replayed),
 * CDX_ERR_RESOURCE_EXHAUSTED, the store's and custody's.
 */
cdx_err eng_fetch_blocks(op *o, const eng_segref *const *refs, size_t n, eng_kind kind,
                         eng_buf *pts, bool *missing);

/*
 * Decoded search blocks of refs[0..n) through the cache, into out[] (each
 * referenced: eng_search_release; NULL where missing, then *missing).
 * Errors: eng_fetch_blocks', eng_search_decode's.
 */
cdx_err eng_fetch_search(op *o, const eng_manifest *m, const eng_segref *const *refs, size_t n,
                         eng_search **out, bool *missing);

/*
 * Vector blocks (originals) of the refs flagged in need[], through the cache,
 * into vecs[] (like eng_fetch_search; unflagged entries are left alone).
 * Errors: eng_fetch_blocks', eng_vectors_wrap's.
 */
cdx_err eng_fetch_vectors(op *o, const eng_manifest *m, const eng_segref **refs, size_t n,
                          const bool *need, eng_search **vecs, bool *missing);

/*
 * A metadata block (u32 rows, then rows x (u32 len, bytes)) indexed once, so
 * loops over its rows (filters, training, compaction) do not rescan it. It
 * points into the block's plaintext, which must outlive it.
 */
typedef struct eng_meta_view {
    const uint8_t *base;
    uint32_t rows;
    uint32_t *off; /* rows + 1: start of each row's bytes; then rows lengths */
} eng_meta_view;

/* Index the block pt into v. False if it is malformed (or memory ran out); v is then empty. */
bool eng_meta_view_build(const eng_buf *pt, eng_meta_view *v);

/* Free v's index and zero it. */
void eng_meta_view_free(eng_meta_view *v);

/* Row `row` of an indexed metadata block (hot: the filter asks it per row). */
static inline bool eng_meta_view_row(const eng_meta_view *v, uint32_t row, const uint8_t **p,
                                     size_t *len)
{
    if (!v->off || row >= v->rows)
        return false;
    *p = v->base + v->off[row];
    *len = v->off[v->rows + 1 + row];
    return true;
}

/* One row of a metadata block plaintext (a single lookup). False if malformed. */
bool eng_meta_row(const eng_buf *pt, uint32_t row, const uint8_t **p, size_t *len);

/*
 * Vector `row` of a segment into out (dim floats): from its vector block
 * vec, or its float search codes. False if the row or block is malformed.
 */
bool eng_vector_row(const eng_manifest *m, const eng_search *s, const eng_buf *vec, uint32_t row,
                    float *out);

/* The segment of `cluster` with token tok in m, or NULL. */
const eng_segref *eng_find_seg(const eng_manifest *m, uint32_t cluster,
                               const uint8_t tok[ENG_TOKEN_LEN]);

/*
 * The contents of id (malloc'ed copy in *data, *len bytes).
 * Errors: ENG_MOVED (missing: superseded and swept after the bucket read, the
 * caller re-reads once), CDX_ERR_INTEGRITY (forged, or the wrong length),
 * CDX_ERR_RESOURCE_EXHAUSTED, the store's and custody's.
 */
cdx_err eng_fetch_contents(op *o, const eng_ident *id, uint8_t **data, size_t *len);

/*
 * The running size of one answer (get or query), checked while its hits are
 * filled, so a request that asks for more than a response frame can carry
 * stops at the limit instead of building everything first (H1). Shared by a
 * batched query's threads (atomic). Each hit is charged its id, vector,
 * metadata and contents bytes plus ENG_HIT_OVERHEAD (field tags, lengths,
 * the distance or found flag), so the total errs on the large side of the
 * packed frame.
 */
#define ENG_HIT_OVERHEAD 16
typedef struct eng_rbudget {
    size_t limit;
    atomic_size_t used;
    eng_mem_fn mem; /* the calling thread's memory hook when the answer started */
    void *mem_arg;
} eng_rbudget;

/*
 * Start an answer of at most limit bytes (0: CDX_RESULT_MAX_DEFAULT),
 * accounted through the calling thread's memory hook (eng_thread_mem_hook).
 */
void eng_rbudget_init(eng_rbudget *b, size_t limit);

/*
 * Charge n more bytes. Errors: CDX_ERR_RESOURCE_EXHAUSTED when the answer
 * would pass the limit (the detail says what to ask for instead),
 * CDX_ERR_BUSY when the memory hook refuses them. NULL b charges nothing.
 * Thread-safe.
 */
cdx_err eng_rbudget_charge(eng_rbudget *b, size_t n);

/*
 * Charge n bytes of working memory that is not part of the answer (only the
 * memory hook sees it). Errors: CDX_ERR_BUSY when the hook refuses them.
 * NULL b charges nothing. Thread-safe.
 */
cdx_err eng_rbudget_work(eng_rbudget *b, size_t n);

/* One row to read into a hit: row `row` of segment sr into *h. */
typedef struct eng_rowreq {
    const eng_segref *sr;
    uint32_t row;
    eng_hit *h;
} eng_rowreq;

/*
 * The vector and/or metadata (want: ENG_WANT_VECTOR, ENG_WANT_METADATA;
 * other bits ignored) of n rows into their hits, each segment's blocks
 * fetched and opened once (vector and search blocks through the cache),
 * a group of segments at a time: beyond the first segment of a group at
 * most ENG_FILL_CHUNK bytes of blocks are held at once. Every vector and
 * metadata row is charged to rb (may be NULL) before it is copied. Sorts rq
 * by segment. *missing when a segment is absent from the store (the hits
 * are then partly filled: the caller re-reads the head or fails).
 * Errors: CDX_ERR_INTEGRITY (a malformed block or row),
 * CDX_ERR_RESOURCE_EXHAUSTED (memory, or rb's limit), eng_fetch_blocks'.
 */
#define ENG_FILL_CHUNK (16u << 20)
cdx_err eng_fill_rows(op *o, const eng_manifest *m, eng_rowreq *rq, size_t n, unsigned want,
                      eng_rbudget *rb, bool *missing);

/* Free what a hit owns (id, vector, metadata, contents), not the hit. */
void eng_hit_free(eng_hit *h);

#endif
