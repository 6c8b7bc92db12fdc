/*
 * eng_store_mem.c - the in-process store: a chained hash table under one
 * mutex. For unit tests and explicit development use; data is lost on exit.
 *
 * Transactions follow Redis' own design rather than per-key versions: a
 * watching transaction sits on a list, and every write or delete of its key
 * marks it dirty. So a deleted key needs no tombstone, and a key deleted and
 * re-created meanwhile still fails the commit, as in Redis.
 *
 * The table only grows (doubling). SCAN's cursor is the next bucket index:
 * when the table doubles, bucket b splits into b and b + old size, so every
 * key not yet visited lands in a bucket >= the cursor and none is missed.
 */
#include "eng_store_internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cdx_limits.h"
#include "cdx_log.h"

#define MEM_INITIAL_BUCKETS 64

typedef struct mem_entry {
    struct mem_entry *next;
    uint64_t hash;
    uint8_t *val; /* malloc'ed, never NULL (1 byte for an empty value) */
    size_t len;
    char key[];
} mem_entry;

typedef struct mem_txn {
    struct eng_txn base;
    struct mem_txn *prev, *next; /* on the store's watcher list */
    uint64_t hash;
    bool dirty;
    char key[];
} mem_txn;

typedef struct mem_store {
    struct eng_store base;
    pthread_mutex_t mu;
    mem_entry **tab;
    size_t cap; /* a power of two */
    size_t count;
    mem_txn *watchers;
} mem_store;

static uint64_t hash_key(const char *k)
{
    /* FNV-1a: keys are ours (hex tokens), not chosen by an attacker to collide. */
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *k; k++) {
        h ^= (unsigned char)*k;
        h *= 0x100000001b3ull;
    }
    return h;
}

static mem_store *as_mem(eng_store *s)
{
    return (mem_store *)s;
}

static mem_entry **find_slot(mem_store *m, const char *key, uint64_t h)
{
    mem_entry **pp = &m->tab[h & (m->cap - 1)];
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->hash == h && strcmp((*pp)->key, key) == 0)
            return pp;
    return pp;
}

/* Mark every transaction watching `key` dirty (the key was written or deleted). */
static void touch(mem_store *m, const char *key, uint64_t h)
{
    for (mem_txn *t = m->watchers; t; t = t->next)
        if (t->hash == h && strcmp(t->key, key) == 0)
            t->dirty = true;
}

static void grow(mem_store *m)
{
    size_t ncap = m->cap * 2;
    mem_entry **nt;

    if (m->count <= m->cap - m->cap / 4)
        return;
    nt = calloc(ncap, sizeof(*nt));
    if (!nt)
        return; /* keep the longer chains: slower, still correct */
    for (size_t b = 0; b < m->cap; b++) {
        mem_entry *e = m->tab[b];
        while (e) {
            mem_entry *next = e->next;
            size_t nb = e->hash & (ncap - 1);
            e->next = nt[nb];
            nt[nb] = e;
            e = next;
        }
    }
    free(m->tab);
    m->tab = nt;
    m->cap = ncap;
}

static uint8_t *dup_val(const uint8_t *v, size_t len)
{
    uint8_t *p = malloc(len ? len : 1);
    if (p && len)
        memcpy(p, v, len);
    return p;
}

/* Insert or replace under the lock; takes ownership of val. */
static cdx_err put_locked(mem_store *m, const char *key, uint8_t *val, size_t len)
{
    uint64_t h = hash_key(key);
    mem_entry **pp = find_slot(m, key, h);

    if (*pp) {
        free((*pp)->val);
        (*pp)->val = val;
        (*pp)->len = len;
    } else {
        size_t klen = strlen(key);
        mem_entry *e = malloc(sizeof(*e) + klen + 1);
        if (!e) {
            free(val);
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "memory store: out of memory");
        }
        memcpy(e->key, key, klen + 1);
        e->hash = h;
        e->val = val;
        e->len = len;
        e->next = NULL;
        *pp = e;
        m->count++;
        grow(m);
    }
    touch(m, key, h);
    return CDX_OK;
}

static const char *mem_kind(const eng_store *s)
{
    (void)s;
    return "memory";
}

static void mem_free(eng_store *s)
{
    mem_store *m = as_mem(s);

    for (size_t b = 0; b < m->cap; b++) {
        mem_entry *e = m->tab[b];
        while (e) {
            mem_entry *next = e->next;
            free(e->val);
            free(e);
            e = next;
        }
    }
    free(m->tab);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static cdx_err mem_mget(eng_store *s, const char *const *keys, size_t n, eng_val *out)
{
    mem_store *m = as_mem(s);
    uint64_t total = 0;
    cdx_err e = CDX_OK;

    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < n && e == CDX_OK; i++) {
        mem_entry *en = *find_slot(m, keys[i], hash_key(keys[i]));
        if (!en)
            continue;
        total += en->len;
        if (total > CDX_STORE_REPLY_MAX)
            e = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED,
                         "mget: the values add up to more than %u bytes: fetch fewer keys at once",
                         CDX_STORE_REPLY_MAX);
        else
            e = eng_val_copy(&out[i], en->val, en->len);
    }
    pthread_mutex_unlock(&m->mu);
    return e;
}

static cdx_err mem_getrange(eng_store *s, const eng_range *r, size_t n, eng_val *out)
{
    mem_store *m = as_mem(s);
    uint64_t total = 0;
    cdx_err e = CDX_OK;

    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < n && e == CDX_OK; i++) {
        mem_entry *en = *find_slot(m, r[i].key, hash_key(r[i].key));
        size_t off, len = 0;
        if (!en)
            continue;
        /* Truncate like GETRANGE: the part of [off, off+len) inside the value. */
        off = r[i].off < en->len ? (size_t)r[i].off : en->len;
        if (r[i].len < en->len - off)
            len = (size_t)r[i].len;
        else
            len = en->len - off;
        total += len;
        if (total > CDX_STORE_REPLY_MAX)
            e = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED,
                         "getrange: the ranges add up to more than %u bytes: fetch fewer at once",
                         CDX_STORE_REPLY_MAX);
        else
            e = eng_val_copy(&out[i], en->val + off, len);
    }
    pthread_mutex_unlock(&m->mu);
    return e;
}

static cdx_err mem_strlen(eng_store *s, const char *const *keys, size_t n, uint64_t *len)
{
    mem_store *m = as_mem(s);

    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < n; i++) {
        mem_entry *en = *find_slot(m, keys[i], hash_key(keys[i]));
        len[i] = en ? en->len : 0;
    }
    pthread_mutex_unlock(&m->mu);
    return CDX_OK;
}

static cdx_err mem_setnx(eng_store *s, const eng_kv *kv, size_t n, bool *created)
{
    mem_store *m = as_mem(s);
    cdx_err e = CDX_OK;

    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < n && e == CDX_OK; i++) {
        uint8_t *v;
        if (*find_slot(m, kv[i].key, hash_key(kv[i].key)))
            continue; /* existed: left alone, and (as in Redis) not a modification */
        v = dup_val(kv[i].val, kv[i].len);
        e = v ? put_locked(m, kv[i].key, v, kv[i].len)
              : cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "setnx: out of memory");
        created[i] = e == CDX_OK;
    }
    pthread_mutex_unlock(&m->mu);
    return e;
}

static cdx_err mem_set(eng_store *s, const eng_kv *kv, size_t n)
{
    mem_store *m = as_mem(s);
    cdx_err e = CDX_OK;

    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < n && e == CDX_OK; i++) {
        uint8_t *v = dup_val(kv[i].val, kv[i].len);
        e = v ? put_locked(m, kv[i].key, v, kv[i].len)
              : cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "set: out of memory");
    }
    pthread_mutex_unlock(&m->mu);
    return e;
}

static cdx_err mem_del(eng_store *s, const char *const *keys, size_t n, uint64_t *deleted)
{
    mem_store *m = as_mem(s);

    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < n; i++) {
        uint64_t h = hash_key(keys[i]);
        mem_entry **pp = find_slot(m, keys[i], h), *en = *pp;
        if (!en)
            continue;
        *pp = en->next;
        free(en->val);
        free(en);
        m->count--;
        (*deleted)++;
        touch(m, keys[i], h);
    }
    pthread_mutex_unlock(&m->mu);
    return CDX_OK;
}

static cdx_err mem_scan(eng_store *s, const char *match, uint64_t *cursor, char ***keys, size_t *n)
{
    mem_store *m = as_mem(s);
    size_t plen = strlen(match), cap = 0, visited = 0;
    uint64_t b;
    cdx_err e = CDX_OK;

    pthread_mutex_lock(&m->mu);
    /* Like SCAN's COUNT: bounded work per step, even when nothing matches. */
    for (b = *cursor; b < m->cap && visited < CDX_STORE_SCAN_COUNT && e == CDX_OK; b++) {
        for (mem_entry *en = m->tab[b]; en && e == CDX_OK; en = en->next) {
            visited++;
            if (!eng_glob_match(match, plen, en->key, strlen(en->key)))
                continue;
            if (*n == cap) {
                size_t ncap = cap ? 2 * cap : 16;
                char **nk = realloc(*keys, ncap * sizeof(*nk));
                if (!nk) {
                    e = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "scan: out of memory");
                    break;
                }
                *keys = nk;
                cap = ncap;
            }
            (*keys)[*n] = strdup(en->key);
            if (!(*keys)[*n])
                e = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "scan: out of memory");
            else
                (*n)++;
        }
    }
    *cursor = b >= m->cap ? 0 : b;
    pthread_mutex_unlock(&m->mu);
    return e;
}

static void unlink_txn(mem_store *m, mem_txn *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        m->watchers = t->next;
    if (t->next)
        t->next->prev = t->prev;
}

static cdx_err mem_watch(eng_store *s, const char *key, eng_txn **txn, eng_val *cur)
{
    mem_store *m = as_mem(s);
    size_t klen = strlen(key);
    mem_txn *t = calloc(1, sizeof(*t) + klen + 1);
    cdx_err e = CDX_OK;

    if (!t)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "watch: out of memory");
    t->base.store = s;
    t->hash = hash_key(key);
    memcpy(t->key, key, klen + 1);
    pthread_mutex_lock(&m->mu);
    mem_entry *en = *find_slot(m, key, t->hash);
    if (en)
        e = eng_val_copy(cur, en->val, en->len);
    if (e == CDX_OK) {
        t->next = m->watchers;
        if (m->watchers)
            m->watchers->prev = t;
        m->watchers = t;
    }
    pthread_mutex_unlock(&m->mu);
    if (e != CDX_OK) {
        free(t);
        return e;
    }
    *txn = &t->base;
    return CDX_OK;
}

static cdx_err mem_commit(eng_txn *tx, const eng_kv *kv, size_t n, bool *committed)
{
    mem_txn *t = (mem_txn *)tx;
    mem_store *m = as_mem(tx->store);
    uint8_t **vals = calloc(n ? n : 1, sizeof(*vals));
    mem_entry **fresh = calloc(n ? n : 1, sizeof(*fresh));
    cdx_err e = CDX_OK;

    /* Allocate everything first: once the lock is taken the commit cannot fail half-way. */
    if (!vals || !fresh) {
        e = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "commit: out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        size_t klen = strlen(kv[i].key);
        vals[i] = dup_val(kv[i].val, kv[i].len);
        fresh[i] = malloc(sizeof(mem_entry) + klen + 1);
        if (!vals[i] || !fresh[i]) {
            e = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "commit: out of memory");
            goto out;
        }
        memcpy(fresh[i]->key, kv[i].key, klen + 1);
        fresh[i]->hash = hash_key(kv[i].key);
    }
    pthread_mutex_lock(&m->mu);
    unlink_txn(m, t);
    if (!t->dirty) {
        for (size_t i = 0; i < n; i++) {
            mem_entry **pp = find_slot(m, kv[i].key, fresh[i]->hash);
            if (*pp) {
                free((*pp)->val);
                (*pp)->val = vals[i];
                (*pp)->len = kv[i].len;
            } else {
                fresh[i]->val = vals[i];
                fresh[i]->len = kv[i].len;
                fresh[i]->next = NULL;
                *pp = fresh[i];
                fresh[i] = NULL;
                m->count++;
                grow(m);
            }
            vals[i] = NULL;
            touch(m, kv[i].key, hash_key(kv[i].key));
        }
        *committed = true;
    }
    pthread_mutex_unlock(&m->mu);
    t = NULL; /* unlinked */
out:
    if (t) {
        pthread_mutex_lock(&m->mu);
        unlink_txn(m, t);
        pthread_mutex_unlock(&m->mu);
    }
    for (size_t i = 0; vals && fresh && i < n; i++) {
        free(vals[i]);
        free(fresh[i]);
    }
    free(vals);
    free(fresh);
    free(tx);
    return e;
}

static void mem_abort(eng_txn *tx)
{
    mem_store *m = as_mem(tx->store);

    pthread_mutex_lock(&m->mu);
    unlink_txn(m, (mem_txn *)tx);
    pthread_mutex_unlock(&m->mu);
    free(tx);
}

static cdx_err mem_check(eng_store *s, char *desc, size_t cap, char *why, size_t wcap)
{
    (void)s;
    snprintf(desc, cap, "memory (volatile)");
    snprintf(why, wcap, "memory store: every write is lost when the process stops");
    return CDX_OK;
}

static const struct eng_store_ops mem_ops = {
    .kind = mem_kind,
    .free = mem_free,
    .mget = mem_mget,
    .getrange = mem_getrange,
    .strlen = mem_strlen,
    .setnx = mem_setnx,
    .set = mem_set,
    .del = mem_del,
    .scan = mem_scan,
    .watch = mem_watch,
    .commit = mem_commit,
    .abort = mem_abort,
    .check = mem_check,
};

cdx_err eng_store_memory_new(eng_store **out)
{
    mem_store *m;

    if (!out)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "memory store: out is NULL");
    *out = NULL;
    m = calloc(1, sizeof(*m));
    if (!m)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "memory store: out of memory");
    m->cap = MEM_INITIAL_BUCKETS;
    m->tab = calloc(m->cap, sizeof(*m->tab));
    if (!m->tab || pthread_mutex_init(&m->mu, NULL) != 0) {
        free(m->tab);
        free(m);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "memory store: out of memory");
    }
    m->base.ops = &mem_ops;
    cdx_log(CDX_LOG_WARN, "store_memory",
            "msg=\"IN-MEMORY STORE: every index and record is lost when this process exits; "
            "use the redis backend for anything but tests\"");
    *out = &m->base;
    return CDX_OK;
}
