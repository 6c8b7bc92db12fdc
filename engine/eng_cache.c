/*
 * Decrypted search and vector blocks, keyed by kind and segment token, bounded in bytes, LRU.
 * Segments are immutable and their tokens never reused, so an entry can
 * never be stale: no invalidation beyond eviction.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "eng_cache.h"

struct ent {
    uint8_t tok[ENG_TOKEN_LEN];
    eng_kind kind;
    eng_search *s;
    struct ent *prev, *next; /* LRU list, most recent at head */
    struct ent *hnext;       /* hash chain */
};

struct eng_cache {
    pthread_mutex_t mu;
    size_t max, bytes;
    size_t nbuckets;
    struct ent **tab;
    struct ent *head, *tail;
    uint64_t hits, misses;
};

static size_t hash(const uint8_t *t, size_t nb)
{
    uint64_t h;
    memcpy(&h, t, 8); /* tokens are pseudorandom already */
    return (size_t)(h % nb);
}

eng_cache *eng_cache_new(size_t max_bytes)
{
    eng_cache *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->max = max_bytes;
    c->nbuckets = 4096;
    c->tab = calloc(c->nbuckets, sizeof(*c->tab));
    if (!c->tab) {
        free(c);
        return NULL;
    }
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

static void unlink_lru(eng_cache *c, struct ent *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void push_front(eng_cache *c, struct ent *e)
{
    e->next = c->head;
    e->prev = NULL;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (!c->tail)
        c->tail = e;
}

static void drop(eng_cache *c, struct ent *e)
{
    struct ent **pp = &c->tab[hash(e->tok, c->nbuckets)];
    while (*pp && *pp != e)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = e->hnext;
    unlink_lru(c, e);
    c->bytes -= e->s->bytes;
    eng_search_release(e->s);
    free(e);
}

void eng_cache_free(eng_cache *c)
{
    if (!c)
        return;
    while (c->head)
        drop(c, c->head);
    pthread_mutex_destroy(&c->mu);
    free(c->tab);
    free(c);
}

eng_search *eng_cache_get(eng_cache *c, eng_kind kind, const uint8_t token[ENG_TOKEN_LEN])
{
    if (!c || c->max == 0)
        return NULL;
    eng_search *s = NULL;
    pthread_mutex_lock(&c->mu);
    for (struct ent *e = c->tab[hash(token, c->nbuckets)]; e; e = e->hnext)
        if (e->kind == kind && !memcmp(e->tok, token, ENG_TOKEN_LEN)) {
            unlink_lru(c, e);
            push_front(c, e);
            s = e->s;
            atomic_fetch_add(&s->refs, 1);
            break;
        }
    if (s)
        c->hits++;
    else
        c->misses++;
    pthread_mutex_unlock(&c->mu);
    return s;
}

void eng_cache_put(eng_cache *c, eng_kind kind, const uint8_t token[ENG_TOKEN_LEN], eng_search *s)
{
    if (!c || c->max == 0 || s->bytes > c->max)
        return;
    struct ent *e = calloc(1, sizeof(*e));
    if (!e)
        return;
    memcpy(e->tok, token, ENG_TOKEN_LEN);
    e->kind = kind;
    e->s = s;
    atomic_fetch_add(&s->refs, 1);
    pthread_mutex_lock(&c->mu);
    for (struct ent *x = c->tab[hash(token, c->nbuckets)]; x; x = x->hnext)
        if (x->kind == kind && !memcmp(x->tok, token, ENG_TOKEN_LEN)) {
            /* Another thread decrypted it at the same time: keep theirs. */
            pthread_mutex_unlock(&c->mu);
            eng_search_release(s);
            free(e);
            return;
        }
    size_t b = hash(token, c->nbuckets);
    e->hnext = c->tab[b];
    c->tab[b] = e;
    push_front(c, e);
    c->bytes += s->bytes;
    while (c->bytes > c->max && c->tail)
        drop(c, c->tail);
    pthread_mutex_unlock(&c->mu);
}

void eng_cache_clear(eng_cache *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    while (c->head)
        drop(c, c->head);
    pthread_mutex_unlock(&c->mu);
}

void eng_cache_stats(eng_cache *c, uint64_t *hits, uint64_t *misses, uint64_t *bytes)
{
    if (!c) {
        *hits = *misses = *bytes = 0;
        return;
    }
    pthread_mutex_lock(&c->mu);
    *hits = c->hits;
    *misses = c->misses;
    *bytes = c->bytes;
    pthread_mutex_unlock(&c->mu);
}
