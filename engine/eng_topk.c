/*
 * eng_topk.c - bounded top-k as a max-heap on "worse" (eng_topk.h).
 *
 * Descending streams store -score, so one ordering serves both directions
 * (negation is exact, and NaN never enters). The root is the worst entry
 * kept: rejecting a candidate costs one comparison.
 */
#include "eng_topk.h"

#include <math.h>
#include <stdlib.h>

typedef struct entry {
    float key; /* dist, or -score when descending */
    uint64_t ref;
} entry;

struct eng_topk {
    size_t k;
    size_t n;
    bool desc;
    entry *h; /* h[0] is the worst kept */
};

/* a is worse than b: larger key, or the same key and a larger ref. */
static inline bool worse(const entry *a, const entry *b)
{
    return a->key > b->key || (a->key == b->key && a->ref > b->ref);
}

eng_topk *eng_topk_new(size_t k, bool descending)
{
    eng_topk *t;

    if (k == 0 || k > SIZE_MAX / sizeof(entry))
        return NULL;
    t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->h = malloc(k * sizeof(entry));
    if (!t->h) {
        free(t);
        return NULL;
    }
    t->k = k;
    t->desc = descending;
    return t;
}

void eng_topk_free(eng_topk *t)
{
    if (!t)
        return;
    free(t->h);
    free(t);
}

static void sift_down(entry *h, size_t n, size_t i)
{
    entry e = h[i];

    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && worse(&h[c + 1], &h[c]))
            c++;
        if (!worse(&h[c], &e))
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = e;
}

static void sift_up(entry *h, size_t i)
{
    entry e = h[i];

    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!worse(&e, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

void eng_topk_push(eng_topk *t, float dist, uint64_t ref)
{
    entry e = {t->desc ? -dist : dist, ref};

    if (isnan(dist))
        return;
    if (t->n < t->k) {
        t->h[t->n] = e;
        sift_up(t->h, t->n++);
    } else if (worse(&t->h[0], &e)) {
        t->h[0] = e;
        sift_down(t->h, t->n, 0);
    }
}

float eng_topk_threshold(const eng_topk *t)
{
    if (t->n < t->k)
        return t->desc ? -INFINITY : INFINITY;
    return t->desc ? -t->h[0].key : t->h[0].key;
}

size_t eng_topk_size(const eng_topk *t)
{
    return t->n;
}

size_t eng_topk_sorted(eng_topk *t, float *dist, uint64_t *ref)
{
    size_t n = t->n;

    /* Pop the worst into the last free slot until empty: best ends up first. */
    for (size_t i = n; i-- > 0;) {
        entry e = t->h[0];
        t->h[0] = t->h[i];
        sift_down(t->h, i, 0);
        if (dist)
            dist[i] = t->desc ? -e.key : e.key;
        if (ref)
            ref[i] = e.ref;
    }
    t->n = 0;
    return n;
}

void eng_topk_reset(eng_topk *t)
{
    t->n = 0;
}
