/* Maintenance: compaction by policy, the sweep, and their scheduler (eng_maint.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cdx_log.h"
#include "cdx_time.h"
#include "eng_int.h"
#include "eng_maint.h"

void eng_gate_close(struct idx *ix)
{
    pthread_mutex_lock(&ix->gate_mu);
    ix->gate_closed++;
    pthread_mutex_unlock(&ix->gate_mu);
}

void eng_gate_open(struct idx *ix)
{
    pthread_mutex_lock(&ix->gate_mu);
    if (ix->gate_closed && --ix->gate_closed == 0)
        pthread_cond_broadcast(&ix->gate_cv);
    pthread_mutex_unlock(&ix->gate_mu);
}

void eng_gate_wait(struct idx *ix)
{
    pthread_mutex_lock(&ix->gate_mu);
    if (ix->gate_closed) {
        struct timespec ts = cdx_mono_deadline(CDX_GATE_WAIT_MS);
        while (ix->gate_closed && pthread_cond_timedwait(&ix->gate_cv, &ix->gate_mu, &ts) == 0) {
        }
    }
    pthread_mutex_unlock(&ix->gate_mu);
}

cdx_err eng_maintain(eng *e, const char *name, const eng_maint_policy *p, eng_maint_report *out)
{
    eng_maint_report r;
    memset(&r, 0, sizeof(r));
    if (out)
        *out = r;
    struct idx *ix;
    cdx_err err = eng_idx_get(e, name, &ix);
    if (err)
        return err;
    int64_t t0 = cdx_mono_ms();
    if (p && p->compact_segments) {
        err = eng_compact_over(e, name, p->compact_segments, &r.compact_version,
                               &r.clusters_compacted);
        if (err == CDX_ERR_ABORTED) {
            /* Writers kept winning: not a failure of maintenance; the next run tries again. */
            r.compact_lost = true;
            err = CDX_OK;
        }
        if (!r.clusters_compacted)
            r.compact_version = 0; /* nothing to merge: that was the current version */
    }
    /* Commits up to here are covered by this step (the sweep below reads a newer head). */
    uint64_t covered = atomic_load(&ix->commits);
    if (!err && !(p && p->no_sweep))
        err = eng_sweep_run(e, name, &r.sweep);
    if (!err) {
        atomic_store(&ix->maint_commits, covered);
        atomic_store(&ix->maint_due_ms, r.sweep.next_ms);
    }
    if (r.compact_version)
        atomic_store(&ix->last_compact_ms, cdx_wall_ms());
    r.ms = (uint64_t)(cdx_mono_ms() - t0);
    if (out)
        *out = r;
    eng_idx_put(ix);
    return err;
}

struct eng_maint {
    eng *e;
    eng_maint_config cfg;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC */
    bool stop;
    atomic_uint_fast64_t runs, errors, compactions, clusters_compacted, swept, max_ms;
};

/* The names of the indexes due now (malloc'ed array of CDX_INDEX_NAME_MAX + 1 each). */
static size_t due_indexes(eng *e, char (**names)[CDX_INDEX_NAME_MAX + 1])
{
    uint64_t now = cdx_wall_ms();
    size_t n = 0, cap = 0;
    *names = NULL;
    pthread_mutex_lock(&e->mu);
    for (struct idx *ix = e->idx; ix; ix = ix->next) {
        uint64_t due = atomic_load(&ix->maint_due_ms);
        bool wrote = atomic_load(&ix->commits) != atomic_load(&ix->maint_commits);
        if (!(wrote || (due && due <= now)) || atomic_load(&ix->maint_after_ms) > now)
            continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 8;
            char(*p)[CDX_INDEX_NAME_MAX + 1] = realloc(*names, nc * sizeof(**names));
            if (!p)
                break; /* the rest waits for the next pass */
            *names = p;
            cap = nc;
        }
        memcpy((*names)[n++], ix->name, sizeof(ix->name));
    }
    pthread_mutex_unlock(&e->mu);
    return n;
}

/* Keep an index from taking more than half the time: not again before its step's duration. */
static void throttle(eng *e, const char *name, uint64_t step_ms)
{
    pthread_mutex_lock(&e->mu);
    for (struct idx *ix = e->idx; ix; ix = ix->next)
        if (!strcmp(ix->name, name))
            atomic_store(&ix->maint_after_ms, cdx_wall_ms() + step_ms);
    pthread_mutex_unlock(&e->mu);
}

static void pass(eng_maint *m)
{
    char(*names)[CDX_INDEX_NAME_MAX + 1];
    size_t n = due_indexes(m->e, &names);
    for (size_t i = 0; i < n; i++) {
        pthread_mutex_lock(&m->mu);
        bool stop = m->stop;
        pthread_mutex_unlock(&m->mu);
        if (stop)
            break;
        eng_maint_report r;
        cdx_err err = eng_maintain(m->e, names[i], &m->cfg.policy, &r);
        atomic_fetch_add(&m->runs, 1);
        if (err == CDX_ERR_NOT_FOUND)
            continue; /* deleted meanwhile */
        throttle(m->e, names[i], r.ms);
        if (r.ms > atomic_load(&m->max_ms))
            atomic_store(&m->max_ms, r.ms); /* only this thread writes it */
        if (err) {
            atomic_fetch_add(&m->errors, 1);
            cdx_log(CDX_LOG_WARN, "maintenance_failed", "index=%s code=%s msg=\"%s\"", names[i],
                    cdx_err_name(err), cdx_err_detail());
            continue;
        }
        atomic_fetch_add(&m->compactions, r.compact_version ? 1 : 0);
        atomic_fetch_add(&m->clusters_compacted, r.clusters_compacted);
        atomic_fetch_add(&m->swept, r.sweep.deleted);
        if (r.compact_version || r.compact_lost || r.sweep.deleted)
            cdx_log(CDX_LOG_INFO, "maintenance",
                    "index=%s compacted_clusters=%u version=%llu compact_lost=%d deleted=%llu "
                    "manifests=%llu segments=%llu contents=%llu centroids=%llu waiting=%llu "
                    "ms=%llu",
                    names[i], r.clusters_compacted, (unsigned long long)r.compact_version,
                    (int)r.compact_lost, (unsigned long long)r.sweep.deleted,
                    (unsigned long long)r.sweep.manifests, (unsigned long long)r.sweep.segments,
                    (unsigned long long)r.sweep.contents, (unsigned long long)r.sweep.centroids,
                    (unsigned long long)r.sweep.waiting, (unsigned long long)r.ms);
    }
    free(names);
    eng_marks_flush(m->e, false);
}

static void *maint_main(void *arg)
{
    eng_maint *m = arg;
    pthread_mutex_lock(&m->mu);
    while (!m->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)m->cfg.interval_ms * 1000000ull;
        ts.tv_sec += (time_t)(ns / 1000000000ull);
        ts.tv_nsec = (long)(ns % 1000000000ull);
        /* The interval is the timer itself; stop wakes it early. */
        while (!m->stop && pthread_cond_timedwait(&m->cv, &m->mu, &ts) != ETIMEDOUT) {
        }
        if (m->stop)
            break;
        pthread_mutex_unlock(&m->mu);
        pass(m);
        pthread_mutex_lock(&m->mu);
    }
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

cdx_err eng_maint_start(eng *e, const eng_maint_config *c, eng_maint **out)
{
    *out = NULL;
    if (!e || !c)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "maintenance needs an engine and a config");
    uint32_t iv = c->interval_ms ? c->interval_ms : CDX_MAINT_INTERVAL_MS_DEFAULT;
    if (iv < CDX_MAINT_INTERVAL_MS_MIN || iv > CDX_MAINT_INTERVAL_MS_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "maintenance interval_ms %u outside %u..%u", iv,
                        CDX_MAINT_INTERVAL_MS_MIN, CDX_MAINT_INTERVAL_MS_MAX);
    eng_maint *m = calloc(1, sizeof(*m));
    if (!m)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    m->e = e;
    m->cfg = *c;
    m->cfg.interval_ms = iv;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&m->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&m->mu, NULL);
    if (pthread_create(&m->thread, NULL, maint_main, m) != 0) {
        pthread_cond_destroy(&m->cv);
        pthread_mutex_destroy(&m->mu);
        free(m);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "cannot start the maintenance thread");
    }
    cdx_log(CDX_LOG_INFO, "maintenance_started", "interval_ms=%u compact_segments=%u sweep=%s", iv,
            c->policy.compact_segments, c->policy.no_sweep ? "off" : "on");
    *out = m;
    return CDX_OK;
}

void eng_maint_stop(eng_maint *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->mu);
    m->stop = true;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
    pthread_join(m->thread, NULL);
    pthread_cond_destroy(&m->cv);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void eng_maint_get_stats(eng_maint *m, eng_maint_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!m)
        return;
    out->runs = atomic_load(&m->runs);
    out->errors = atomic_load(&m->errors);
    out->compactions = atomic_load(&m->compactions);
    out->clusters_compacted = atomic_load(&m->clusters_compacted);
    out->swept = atomic_load(&m->swept);
    /* Summed over the indexes, each as its last sweep left it. */
    pthread_mutex_lock(&m->e->mu);
    for (struct idx *ix = m->e->idx; ix; ix = ix->next) {
        out->waiting += atomic_load(&ix->sweep_waiting);
        out->waiting_bytes += atomic_load(&ix->sweep_waiting_bytes);
    }
    pthread_mutex_unlock(&m->e->mu);
    out->max_step_ms = atomic_load(&m->max_ms);
}
