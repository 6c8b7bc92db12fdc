/*
 * Key rotation (eng.h, docs/ROTATION.md): starting one (the intent is
 * committed in the index state), and the engine's rotation thread, which
 * runs pending rotations (eng_rotate_run, eng_rewrite.c) in the background,
 * including those found pending after a restart (eng_rotate_notice).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cdx_log.h"
#include "eng_commit.h"
#include "eng_head.h"
#include "eng_int.h"
#include "eng_op.h"

/* Commit the intent: rot_target = epoch + 1 (kept if one is pending already). */
static cdx_err rotate_start(op *o, void *arg)
{
    eng *e = o->e;
    uint32_t *target = arg;
    cdx_err err = CDX_OK;
    bool done = false;
    for (unsigned attempt = 0; attempt < e->cfg.commit_retries && !err && !done; attempt++) {
        eng_manifest *m = NULL, *nm = NULL;
        eng_gate_wait(o->ix);
        if ((err = eng_load_state(o, true, 0, &m)))
            goto next;
        if (m->rot_target) { /* pending: asking again resumes it */
            *target = m->rot_target;
            done = true;
            goto next;
        }
        if (m->epoch >= UINT32_MAX - 1) {
            err =
                cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "index %s: no key epoch is left", o->ix->name);
            goto next;
        }
        if ((err = eng_manifest_clone_ref(m, &nm)))
            goto next;
        nm->rot_target = m->epoch + 1;
        nm->rot_started_ms = cdx_wall_ms();
        if ((err = eng_commit(o, m, nm, NULL, &done)))
            goto next;
        if (done) {
            *target = nm->rot_target;
            cdx_log(CDX_LOG_INFO, "eng_rotation_started", "from_epoch=%u to_epoch=%u version=%llu",
                    m->epoch, nm->rot_target, (unsigned long long)nm->version);
        }
    next:
        eng_manifest_unref(m);
        eng_manifest_unref(nm);
        if (!err && !done)
            eng_backoff(attempt);
    }
    if (!err && !done)
        err = cdx_fail(CDX_ERR_ABORTED,
                       "index %s: %u commit attempts lost to concurrent writers; "
                       "retry",
                       o->ix->name, e->cfg.commit_retries);
    if (!err)
        eng_rotate_notice(e, o->ix);
    return err;
}

cdx_err eng_rotate(eng *e, const char *name, eng_index_info *out)
{
    uint32_t target = 0;
    cdx_err err = eng_with_op(e, name, ENG_WITH_NAMED, rotate_start, &target);
    if (!err && out)
        err = eng_index_describe(e, name, out);
    return err;
}

void eng_set_rotate_hook(eng *e, eng_rotate_hook fn, void *arg)
{
    e->rot_hook = fn;
    e->rot_hook_arg = arg;
}

/* Wait on the rotation thread's condition until ms pass or it is told to stop (e->rot_mu held). */
static void rot_wait_ms(eng *e, uint64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t ns = (uint64_t)ts.tv_nsec + ms * 1000000ull;
    ts.tv_sec += (time_t)(ns / 1000000000ull);
    ts.tv_nsec = (long)(ns % 1000000000ull);
    while (!e->rot_stop && pthread_cond_timedwait(&e->rot_cv, &e->rot_mu, &ts) != ETIMEDOUT) {
    }
}

static void *rot_main(void *arg)
{
    eng *e = arg;
    pthread_mutex_lock(&e->rot_mu);
    while (!e->rot_stop) {
        if (!e->rot_n) {
            pthread_cond_wait(&e->rot_cv, &e->rot_mu);
            continue;
        }
        struct idx *ix = e->rot_q[0];
        memmove(e->rot_q, e->rot_q + 1, (e->rot_n - 1) * sizeof(*e->rot_q));
        e->rot_n--;
        pthread_mutex_unlock(&e->rot_mu);
        eng_rotate_report r;
        cdx_err err = eng_rotate_run(e, ix->name, &r);
        atomic_store(&ix->rot_queued, false);
        /* Anything but a deleted index or a stop: again after a pause (a refused commit, a
         * store or token away, an index being deleted until it is gone). */
        bool again = err && err != CDX_ERR_NOT_FOUND && err != CDX_ERR_CANCELLED;
        if (err && err != CDX_ERR_CANCELLED)
            cdx_log(CDX_LOG_WARN, "rotation_failed", "index=%s code=%s msg=\"%s\" retry=%s",
                    ix->name, cdx_err_name(err), cdx_err_detail(), again ? "yes" : "no");
        pthread_mutex_lock(&e->rot_mu);
        if (again) {
            rot_wait_ms(e, CDX_ROTATE_RETRY_MS);
            if (!e->rot_stop) {
                pthread_mutex_unlock(&e->rot_mu);
                eng_rotate_notice(e, ix);
                pthread_mutex_lock(&e->rot_mu);
            }
        }
        eng_idx_put(ix);
    }
    pthread_mutex_unlock(&e->rot_mu);
    return NULL;
}

void eng_rotate_notice(eng *e, struct idx *ix)
{
    if (atomic_exchange(&ix->rot_queued, true))
        return; /* queued or running already */
    pthread_mutex_lock(&e->rot_mu);
    if (e->rot_stop || e->cfg.no_rotation_thread)
        goto drop;
    if (e->rot_n == e->rot_cap) {
        size_t cap = e->rot_cap ? e->rot_cap * 2 : 8;
        struct idx **q = realloc(e->rot_q, cap * sizeof(*q));
        if (!q)
            goto drop; /* noticed again at its next head read */
        e->rot_q = q;
        e->rot_cap = cap;
    }
    if (!e->rot_running) {
        if (pthread_create(&e->rot_thread, NULL, rot_main, e) != 0) {
            cdx_log(CDX_LOG_WARN, "rotation_thread", "msg=\"cannot start the rotation thread\"");
            goto drop;
        }
        e->rot_running = true;
    }
    atomic_fetch_add(&ix->refs, 1);
    e->rot_q[e->rot_n++] = ix;
    pthread_cond_broadcast(&e->rot_cv);
    pthread_mutex_unlock(&e->rot_mu);
    return;
drop:
    atomic_store(&ix->rot_queued, false);
    pthread_mutex_unlock(&e->rot_mu);
}

void eng_rotate_stop(eng *e)
{
    pthread_mutex_lock(&e->rot_mu);
    e->rot_stop = true;
    pthread_cond_broadcast(&e->rot_cv);
    bool running = e->rot_running;
    pthread_mutex_unlock(&e->rot_mu);
    if (running)
        pthread_join(e->rot_thread, NULL);
    e->rot_running = false;
    for (size_t i = 0; i < e->rot_n; i++)
        eng_idx_put(e->rot_q[i]);
    e->rot_n = 0;
    free(e->rot_q);
    e->rot_q = NULL;
}
