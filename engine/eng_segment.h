/*
 * eng_segment.h - segments: the immutable unit an index's clusters grow by.
 * One store value (cdx:<id>:s:<token>) holds three sealed blocks: the search
 * block (codes, ids, tombstones: what every query reads), the vector block
 * (originals, unless the search block holds them) and the metadata block.
 *
 * Decoded search blocks are immutable and shared by reference count
 * (eng_search_release is thread-safe). Building runs on the op's thread or
 * on worker copies of it (eng_op_worker); eng_segments_build spreads the
 * sealing over eng_par threads.
 */
#ifndef ENG_SEGMENT_H
#define ENG_SEGMENT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "eng_buf.h"
#include "eng_keyspace.h"
#include "eng_manifest.h"

typedef struct op op;

/* A tombstone: (segment token, be32 row), ENG_TOMB_LEN bytes in a search block. */
#define ENG_TOMB_LEN (ENG_TOKEN_LEN + 4)

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
    uint32_t code_size; /* bytes per row: 4*dim (float) or dim (sq8) */
    uint32_t ntomb;
    uint8_t *plain; /* owned, wiped on free */
    size_t plain_len;
    const uint8_t *codes;
    float *aux;       /* rows x 2 (eng_screen.h), aligned copy; NULL if none */
    uint32_t *id_pos; /* offset of each id in plain */
    uint16_t *id_len;
    const uint8_t *tombs; /* ntomb x ENG_TOMB_LEN bytes */
    size_t bytes;         /* memory footprint, for the cache */
    atomic_uint refs;
} eng_search;

/*
 * Decode a search block plaintext (takes ownership of plain, malloc'ed,
 * whatever the outcome; wiped when freed) into a block with one reference.
 * Rejects (CDX_ERR_INTEGRITY): rows other than expect_rows, code_size other
 * than asked, sizes that overflow, screen aux missing (with_aux), negative
 * or non-finite aux, ids of 0 or over CDX_ITEM_ID_MAX bytes, truncation,
 * trailing bytes. Errors: CDX_ERR_INTEGRITY, CDX_ERR_RESOURCE_EXHAUSTED.
 */
cdx_err eng_search_decode(uint8_t *plain, size_t n, uint32_t expect_rows, uint32_t code_size,
                          bool with_aux, eng_search **out);

/*
 * Wrap a decrypted vector block (rows x dim floats; takes ownership of plain
 * whatever the outcome). Rejects (CDX_ERR_INTEGRITY) any other length.
 * Errors: CDX_ERR_INTEGRITY, CDX_ERR_RESOURCE_EXHAUSTED.
 */
cdx_err eng_vectors_wrap(uint8_t *plain, size_t n, uint32_t rows, uint32_t dim, eng_search **out);

/* Drop a reference, freeing (and wiping) with the last; NULL is a no-op. Thread-safe. */
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

/* One row going into a segment (upserted, or moved by a rewrite). */
typedef struct eng_row {
    const char *id;
    uint16_t id_len;
    const float *orig;   /* dim floats as upserted */
    const float *search; /* what is searched: orig, or normalised for cosine */
    const char *meta;
    uint32_t meta_len;
    uint32_t cluster;
    uint8_t tok[ENG_TOKEN_LEN];
    uint8_t content[ENG_TOKEN_LEN];
    uint32_t content_len;
    uint64_t commit_version; /* 0: the version being committed */
    /* filled when placed */
    uint8_t seg[ENG_TOKEN_LEN];
    uint32_t row;
} eng_row;

/* A built segment: its manifest entry and its sealed store value. */
typedef struct eng_seg_out {
    uint32_t cluster;
    eng_segref ref;
    eng_buf val;
} eng_seg_out;

/* Free n built segments and the array; NULL is a no-op. */
void eng_segs_free(eng_seg_out *s, size_t n);

/*
 * Build one segment of `cluster` from rows (pointers; each gets its segment
 * token and row) and tombstones, for manifest m's format at `version`:
 * search, vector (unless the search block holds the originals) and metadata
 * blocks, each sealed, concatenated into out->val.
 * Errors: CDX_ERR_RESOURCE_EXHAUSTED, eng_op_sealer's, eng_random's, sealing's.
 */
cdx_err eng_segment_build(op *o, const eng_manifest *m, uint64_t version, uint32_t cluster,
                          eng_row **rows, uint32_t nrows, const eng_tomb *tombs, uint32_t ntomb,
                          eng_seg_out *out);

/* The segments of one write: segment j holds rows[rs[j]..rs[j+1]) and tombs[ts[j]..ts[j+1]). */
typedef struct eng_seg_build {
    const eng_manifest *m;
    uint64_t version;
    const uint32_t *cls;
    eng_row **rows;
    const size_t *rs;
    const eng_tomb *tombs;
    const size_t *ts;
    eng_seg_out *segs;
    size_t n;
    atomic_size_t next; /* the next segment to build: atomic_init it to 0 */
} eng_seg_build;

/*
 * Build every segment of b into b->segs[], on several threads when there
 * are many (segments land at their own index, so the order does not depend
 * on the threads). Fetches the payload and centroid subkeys first.
 * Errors: the first of eng_segment_build's, eng_op_key's.
 */
cdx_err eng_segments_build(op *o, eng_seg_build *b);

/*
 * Store n built segments (SET NX under fresh tokens: never overwriting).
 * Reads only o->e and o->ix, so it may run beside the op's thread.
 * Errors: CDX_ERR_INTERNAL (a token collision), CDX_ERR_RESOURCE_EXHAUSTED, the store's.
 */
cdx_err eng_segments_put(op *o, eng_seg_out *s, size_t n);

#endif
