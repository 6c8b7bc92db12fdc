/*
 * eng_scan.h - the scans of one query vector over the search blocks of its
 * probed clusters: skip rows later segments of their cluster tombstone,
 * apply the metadata filter, keep the top k. The per-row work (tombstone
 * lookup, filter, distance, top-k push) stays inside this file's loops.
 *
 * A scan runs on one thread; several may share an eng_qctx (query workers)
 * as they only read it, except need_refresh, which any may set.
 */
#ifndef ENG_SCAN_H
#define ENG_SCAN_H

#include <stdbool.h>
#include <stdint.h>

#include "eng.h"
#include "eng_filter.h"
#include "eng_kmeans.h"
#include "eng_manifest.h"
#include "eng_read.h"
#include "eng_segment.h"
#include "eng_topk.h"

typedef struct op op;

/* One query request's shared context. */
typedef struct eng_qctx {
    op *o;
    const eng_manifest *m;
    const eng_query *q;
    eng_filter *filter; /* NULL: no filter (or a trivial one) */
    uint32_t top_k, nprobe;
    uint32_t maxprobe; /* widening's ceiling (>= nprobe; nprobe: no widening) */
    eng_km_metric km;
    eng_query_result *res;
    cdx_err err;
    bool need_refresh; /* a segment was missing: re-read the head, retry once */
    eng_rbudget rb;    /* the answer's size so far (every query vector's hits) */
    eng_rowreq **rows; /* rows[qi]: query qi's hits whose vector/metadata are read at the end */
    size_t *nrows;     /* (once per segment for the whole request: fill_rows_all) */
} eng_qctx;

/*
 * The scan of a trained index (eng_screen.h): bound every live row's score
 * from its codes with an integer dot product, keep the k best upper bounds,
 * and rescore exactly - on the SQ8 codes for IVFSQ8, on the originals for
 * IVFFlat (fetched here) - only the rows whose lower bound reaches the k-th
 * upper bound. tk ends up holding what scoring every row would have put
 * there (distance, block << 32 | row; smaller is better). blocks[gend[p-1]..
 * gend[p]) are probe p's segments; only probes p0..np-1 are scanned (the
 * earlier ones are already in tk: a widened query scans its new probes into
 * the same tk); mviews is indexed like blocks (NULL without a filter).
 * *ns_io gets the time spent fetching originals. Sets c->need_refresh
 * (returning CDX_OK) when an original is missing.
 * Errors: CDX_ERR_INTEGRITY (a block without screen data, bad metadata),
 * CDX_ERR_RESOURCE_EXHAUSTED, eng_fetch_vectors'.
 */
cdx_err eng_scan_screened(eng_qctx *c, const float *qv, const eng_segref **refs,
                          eng_search **blocks, size_t nref, const size_t *gend, uint32_t p0,
                          uint32_t np, const eng_meta_view *mviews, eng_topk *tk, uint64_t *ns_io);

/*
 * The scan of an untrained index: every live row's float search vector
 * scored exactly into tk (arguments as for eng_scan_screened).
 * Errors: CDX_ERR_INTEGRITY (bad metadata), CDX_ERR_RESOURCE_EXHAUSTED.
 */
cdx_err eng_scan_flat(eng_qctx *c, const float *qv, const eng_segref **refs, eng_search **blocks,
                      const size_t *gend, uint32_t p0, uint32_t np, const eng_meta_view *mviews,
                      eng_topk *tk);

#endif
