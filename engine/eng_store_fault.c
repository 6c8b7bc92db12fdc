/*
 * eng_store_fault.c - a store wrapper that simulates a crash after the N-th
 * write, so tests can enumerate every crash point of a multi-step operation.
 *
 * Writes are numbered from 1 as they reach the inner store: each key of a
 * setnx, set or del batch is one write, a commit is one (whether or not it
 * committed). After arm(n), write number writes+n fails: the writes before it
 * in its batch are applied, it and the rest are not, and every later call
 * fails with CDX_ERR_STORE_UNAVAILABLE until disarm(). A failing commit is
 * not applied (Redis drops an unfinished MULTI). Writes hold the wrapper's
 * lock for their whole duration so the crash point is exact under threads.
 */
#include "eng_store_internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct fault_store {
    struct eng_store base;
    eng_store *inner;
    pthread_mutex_t mu;
    uint64_t writes;  /* writes that reached the inner store (a commit counts once) */
    uint64_t fail_at; /* number of the write that fails; 0 = disarmed */
    uint64_t ranges;  /* ranges read (getrange): segment block reads, for tests */
    bool crashed;
    char kind[64];
    eng_store_read_hook read_hook; /* called before each read, outside mu */
    void *read_hook_arg;
} fault_store;

typedef struct fault_txn {
    struct eng_txn base;
    eng_txn *inner;
} fault_txn;

static const struct eng_store_ops fault_ops;

static fault_store *as_fault(eng_store *s)
{
    return s && s->ops == &fault_ops ? (fault_store *)s : NULL;
}

static cdx_err crashed_err(void)
{
    return cdx_fail(CDX_ERR_STORE_UNAVAILABLE,
                    "fault injection: the store has crashed (disarm to restart it)");
}

/* Under the lock: fail when crashed. */
static cdx_err check_alive(fault_store *f)
{
    return f->crashed ? crashed_err() : CDX_OK;
}

/* Under the lock: how many of the next n writes may go through (n if none fails). */
static size_t allowed_writes(const fault_store *f, size_t n)
{
    if (f->fail_at == 0 || f->fail_at > f->writes + n)
        return n;
    return (size_t)(f->fail_at - f->writes - 1);
}

/* Under the lock: the write after `allowed` ones failed. */
static cdx_err crash(fault_store *f)
{
    f->crashed = true;
    f->fail_at = 0;
    return cdx_fail(CDX_ERR_STORE_UNAVAILABLE, "fault injection: simulated crash at write %llu",
                    (unsigned long long)f->writes + 1);
}

static bool is_crashed(fault_store *f)
{
    pthread_mutex_lock(&f->mu);
    bool c = f->crashed;
    pthread_mutex_unlock(&f->mu);
    return c;
}

static const char *fault_kind(const eng_store *s)
{
    return ((const fault_store *)s)->kind;
}

static void fault_free(eng_store *s)
{
    fault_store *f = as_fault(s);

    eng_store_free(f->inner);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

static void before_read(fault_store *f)
{
    pthread_mutex_lock(&f->mu);
    eng_store_read_hook h = f->read_hook;
    void *arg = f->read_hook_arg;
    pthread_mutex_unlock(&f->mu);
    if (h)
        h(arg);
}

static cdx_err fault_mget(eng_store *s, const char *const *keys, size_t n, eng_val *out)
{
    fault_store *f = as_fault(s);

    before_read(f);
    if (is_crashed(f))
        return crashed_err();
    return eng_store_mget(f->inner, keys, n, out);
}

static cdx_err fault_getrange(eng_store *s, const eng_range *r, size_t n, eng_val *out)
{
    fault_store *f = as_fault(s);

    before_read(f);
    if (is_crashed(f))
        return crashed_err();
    pthread_mutex_lock(&f->mu);
    f->ranges += n;
    pthread_mutex_unlock(&f->mu);
    return eng_store_getrange(f->inner, r, n, out);
}

static cdx_err fault_strlen(eng_store *s, const char *const *keys, size_t n, uint64_t *len)
{
    fault_store *f = as_fault(s);

    before_read(f);
    if (is_crashed(f))
        return crashed_err();
    return eng_store_strlen(f->inner, keys, n, len);
}

/*
 * Every batched write: apply the writes allowed before the crash point to the
 * inner store, then crash if the batch was cut short.
 */
typedef enum { W_SETNX, W_SET, W_DEL } write_kind;

static cdx_err fault_write(eng_store *s, write_kind k, const eng_kv *kv, const char *const *keys,
                           size_t n, bool *created, uint64_t *deleted)
{
    fault_store *f = as_fault(s);
    cdx_err e;

    pthread_mutex_lock(&f->mu);
    e = check_alive(f);
    if (e == CDX_OK) {
        size_t ok = allowed_writes(f, n);
        if (ok > 0)
            e = k == W_SETNX ? eng_store_setnx(f->inner, kv, ok, created)
                : k == W_SET ? eng_store_set(f->inner, kv, ok)
                             : eng_store_del(f->inner, keys, ok, deleted);
        if (e == CDX_OK) {
            f->writes += ok;
            if (ok < n)
                e = crash(f);
        }
    }
    pthread_mutex_unlock(&f->mu);
    return e;
}

static cdx_err fault_setnx(eng_store *s, const eng_kv *kv, size_t n, bool *created)
{
    return fault_write(s, W_SETNX, kv, NULL, n, created, NULL);
}

static cdx_err fault_set(eng_store *s, const eng_kv *kv, size_t n)
{
    return fault_write(s, W_SET, kv, NULL, n, NULL, NULL);
}

static cdx_err fault_del(eng_store *s, const char *const *keys, size_t n, uint64_t *deleted)
{
    return fault_write(s, W_DEL, NULL, keys, n, NULL, deleted);
}

static cdx_err fault_scan(eng_store *s, const char *match, uint64_t *cursor, char ***keys,
                          size_t *n)
{
    fault_store *f = as_fault(s);

    if (is_crashed(f))
        return crashed_err();
    return eng_store_scan(f->inner, match, cursor, keys, n);
}

static cdx_err fault_watch(eng_store *s, const char *key, eng_txn **txn, eng_val *cur)
{
    fault_store *f = as_fault(s);
    fault_txn *t;
    cdx_err e;

    if (is_crashed(f))
        return crashed_err();
    t = calloc(1, sizeof(*t));
    if (!t)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "watch: out of memory");
    e = eng_store_watch(f->inner, key, &t->inner, cur);
    if (e != CDX_OK) {
        free(t);
        return e;
    }
    t->base.store = s;
    *txn = &t->base;
    return CDX_OK;
}

static cdx_err fault_commit(eng_txn *tx, const eng_kv *kv, size_t n, bool *committed)
{
    fault_txn *t = (fault_txn *)tx;
    fault_store *f = as_fault(tx->store);
    cdx_err e;

    pthread_mutex_lock(&f->mu);
    e = check_alive(f);
    if (e == CDX_OK && allowed_writes(f, 1) == 0) {
        e = crash(f); /* dies before EXEC: nothing applied */
    } else if (e == CDX_OK) {
        e = eng_store_commit(t->inner, kv, n, committed);
        t->inner = NULL;
        if (e == CDX_OK)
            f->writes++;
    }
    pthread_mutex_unlock(&f->mu);
    eng_store_abort(t->inner);
    free(t);
    return e;
}

static void fault_abort(eng_txn *tx)
{
    fault_txn *t = (fault_txn *)tx;

    eng_store_abort(t->inner);
    free(t);
}

static cdx_err fault_check(eng_store *s, char *desc, size_t cap, char *why, size_t wcap)
{
    fault_store *f = as_fault(s);

    if (is_crashed(f))
        return crashed_err();
    return f->inner->ops->check(f->inner, desc, cap, why, wcap);
}

static void fault_retry_now(eng_store *s)
{
    eng_store_retry_now(as_fault(s)->inner);
}

static const struct eng_store_ops fault_ops = {
    .kind = fault_kind,
    .free = fault_free,
    .mget = fault_mget,
    .getrange = fault_getrange,
    .strlen = fault_strlen,
    .setnx = fault_setnx,
    .set = fault_set,
    .del = fault_del,
    .scan = fault_scan,
    .watch = fault_watch,
    .commit = fault_commit,
    .abort = fault_abort,
    .check = fault_check,
    .retry_now = fault_retry_now,
};

cdx_err eng_store_fault_new(eng_store *inner, eng_store **out)
{
    fault_store *f;

    if (!out)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "fault store: out is NULL");
    *out = NULL;
    if (!inner || !inner->ops)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "fault store: inner store is NULL");
    f = calloc(1, sizeof(*f));
    if (!f || pthread_mutex_init(&f->mu, NULL) != 0) {
        free(f);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "fault store: out of memory");
    }
    f->base.ops = &fault_ops;
    f->inner = inner;
    snprintf(f->kind, sizeof(f->kind), "fault(%s)", eng_store_kind(inner));
    *out = &f->base;
    return CDX_OK;
}

void eng_store_fault_arm(eng_store *s, uint64_t nth_write)
{
    fault_store *f = as_fault(s);

    if (!f)
        return;
    pthread_mutex_lock(&f->mu);
    if (nth_write == 0) {
        f->crashed = true; /* the 0th write: crashed already */
        f->fail_at = 0;
    } else {
        f->fail_at = f->writes + nth_write;
    }
    pthread_mutex_unlock(&f->mu);
}

void eng_store_fault_disarm(eng_store *s)
{
    fault_store *f = as_fault(s);

    if (!f)
        return;
    pthread_mutex_lock(&f->mu);
    f->fail_at = 0;
    f->crashed = false;
    pthread_mutex_unlock(&f->mu);
}

uint64_t eng_store_fault_ranges(eng_store *s)
{
    fault_store *f = as_fault(s);
    uint64_t n;

    if (!f)
        return 0;
    pthread_mutex_lock(&f->mu);
    n = f->ranges;
    pthread_mutex_unlock(&f->mu);
    return n;
}

uint64_t eng_store_fault_writes(eng_store *s)
{
    fault_store *f = as_fault(s);
    uint64_t w;

    if (!f)
        return 0;
    pthread_mutex_lock(&f->mu);
    w = f->writes;
    pthread_mutex_unlock(&f->mu);
    return w;
}

void eng_store_fault_on_read(eng_store *s, eng_store_read_hook hook, void *arg)
{
    fault_store *f = as_fault(s);

    if (!f)
        return;
    pthread_mutex_lock(&f->mu);
    f->read_hook = hook;
    f->read_hook_arg = arg;
    pthread_mutex_unlock(&f->mu);
}
