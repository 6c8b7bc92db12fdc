/*
 * eng_topk.h - the k best (distance, ref) pairs of a stream, in a binary heap.
 *
 * "Best" is the smallest distance, or the largest score when `descending`.
 * Equal distances are ordered by ref (smaller ref is better), so the kept set
 * and the output order are deterministic whatever the push order. NaN
 * distances are ignored. Not thread-safe: one per query (or per thread).
 */
#ifndef ENG_TOPK_H
#define ENG_TOPK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct eng_topk eng_topk;

/* A top-k keeping k >= 1 entries. Returns NULL when k is 0 or memory runs out. */
eng_topk *eng_topk_new(size_t k, bool descending);

/* Free; NULL is a no-op. */
void eng_topk_free(eng_topk *t);

/* Offer one candidate (O(log k) when it is kept, O(1) when rejected). */
void eng_topk_push(eng_topk *t, float dist, uint64_t ref);

/*
 * The worst distance kept once k entries are held: a candidate strictly
 * worse than it (dist > threshold, or < when descending) cannot enter, so a
 * scan may skip it. +inf (-inf when descending) while fewer than k are held.
 */
float eng_topk_threshold(const eng_topk *t);

/* Entries held now (<= k). */
size_t eng_topk_size(const eng_topk *t);

/*
 * Write the entries best first (ties: smaller ref first) to dist and ref
 * (either may be NULL; each must hold eng_topk_size() entries) and return
 * their number. Empties t, which is then ready for a new stream.
 */
size_t eng_topk_sorted(eng_topk *t, float *dist, uint64_t *ref);

/* Drop every entry (k and the direction stay). */
void eng_topk_reset(eng_topk *t);

#endif
