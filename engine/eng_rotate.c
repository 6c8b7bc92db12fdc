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

#include "cdx_hex.h"
#include "cdx_log.h"
#include "eng_catalog.h"
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

/* ---- --new-key (docs/ROTATION.md "A new token key") ---- */

/* Write c (read at c->rec_version); a lost WATCH is ABORTED. */
static cdx_err cat_update(op *ro, eng_catentry *c, const char *what)
{
    bool ok = false;
    cdx_err err = eng_cat_write(ro, c, false, &ok);
    if (!err && !ok)
        err = cdx_fail(CDX_ERR_ABORTED, "index %s changed during %s; retry", c->name, what);
    return err;
}

cdx_err eng_rotate_finish(op *o)
{
    eng *e = o->e;
    struct idx *ix = o->ix;
    op ro;
    eng_op_root(e, &ro);
    eng_catentry c;
    bool found = false;
    eng_manifest *m = NULL;
    cdx_err err = eng_cat_read(&ro, ix->name, &c, &found);
    if (err || !found || memcmp(c.id, ix->id, CDX_ID_LEN) || c.state != ENG_ST_READY)
        goto out;
    eng_idx_set_keys(ix, &c); /* what this engine knows of the keys is now current */
    eng_keyset_from_cat(&o->ks, &c);
    eng_op_rekey(o);
    if (c.next_has == ENG_NEXT_NONE)
        goto out;
    if (c.next_has == ENG_NEXT_PENDING) {
        if ((err = eng_load_state(o, true, 0, &m)))
            goto out;
        if (m->epoch < c.next_epoch)
            goto out; /* not committed yet */
        /* The state of the new key's epoch is committed: the catalog moves to the new key and
         * remembers the old one until it is released and destroyed (resumable). */
        uint32_t old_gen = c.key_gen;
        uint8_t old_kcv[CDX_KCV_LEN];
        memcpy(old_kcv, c.kcv, CDX_KCV_LEN);
        uint32_t old_owned = c.owned;
        c.key_gen = c.next_gen;
        memcpy(c.kcv, c.next_kcv, CDX_KCV_LEN);
        c.has_kcv = 1;
        c.next_has = ENG_NEXT_RETIRED;
        c.next_gen = old_gen;
        memcpy(c.next_kcv, old_kcv, CDX_KCV_LEN);
        c.next_epoch = old_owned;
        c.owned = 1;
        c.key_source = ENG_KEY_GENERATE;
        c.prov.origin = ENG_ORIGIN_GENERATED;
        c.prov.kek[0] = '\0';
        if ((err = cat_update(&ro, &c, "the key switch")))
            goto out;
        eng_idx_set_keys(ix, &c);
        char k[2 * CDX_KCV_LEN + 1];
        cdx_hex_encode(c.kcv, CDX_KCV_LEN, k);
        cdx_log(CDX_LOG_INFO, "eng_key_switched", "key_gen=%u kcv=%s epoch=%u", c.key_gen, k,
                m->epoch);
    }
    /* ENG_NEXT_RETIRED: release the old key's claim, destroy it if it was the index's own. */
    eng_catentry old = c;
    memcpy(old.kcv, c.next_kcv, CDX_KCV_LEN);
    old.has_kcv = 1;
    if ((err = eng_keyclaim_release(&ro, &old)))
        goto out;
    hsm_key_ref k = {.kind = HSM_KEY_INDEX, .gen = c.next_gen};
    memcpy(k.id, c.id, CDX_ID_LEN);
    if (c.next_epoch) {
        err = hsm_key_destroy(e->cfg.custody, &k);
        if (err == CDX_ERR_KEY_NOT_FOUND)
            err = CDX_OK; /* destroyed by an earlier attempt */
        if (err)
            goto out;
        cdx_log(CDX_LOG_INFO, "eng_key_retired", "key_gen=%u destroyed=1", c.next_gen);
    } else {
        char label[CDX_LABEL_MAX + 1];
        hsm_key_label(&k, label);
        cdx_log(CDX_LOG_WARN, "eng_key_retired",
                "key_gen=%u destroyed=0 label=%s msg=\"the index no longer uses this key; it was "
                "adopted, not made for the index, so it remains on the token: destroy it with "
                "cipherdex-hsm index destroy --gen %u once no index needs it\"",
                c.next_gen, label, c.next_gen);
    }
    c.next_has = ENG_NEXT_NONE;
    c.next_gen = 0;
    memset(c.next_kcv, 0, CDX_KCV_LEN);
    c.next_epoch = 0;
    if ((err = cat_update(&ro, &c, "the key switch")))
        goto out;
    eng_idx_set_keys(ix, &c);
    eng_keyset_from_cat(&o->ks, &c);
    eng_op_rekey(o);
out:
    eng_manifest_unref(m);
    eng_op_end(&ro);
    return err;
}

/* rotate --new-key: make (or find) the new key, bind it in the catalog, commit the intent. */
static cdx_err rotate_newkey_start(op *o, void *arg)
{
    eng *e = o->e;
    struct idx *ix = o->ix;
    op ro;
    eng_op_root(e, &ro);
    eng_manifest *m = NULL;
    eng_catentry c;
    bool found = false;
    cdx_err err;
    /* A completed --new-key rotation whose old key is still to go finishes first. */
    if ((err = eng_rotate_finish(o)) || (err = eng_cat_read(&ro, ix->name, &c, &found)))
        goto out;
    if (!found || memcmp(c.id, ix->id, CDX_ID_LEN)) {
        err = cdx_fail(CDX_ERR_NOT_FOUND, "index %s no longer exists", ix->name);
        goto out;
    }
    if ((err = eng_load_state(o, true, 0, &m)))
        goto out;
    if (c.next_has == ENG_NEXT_PENDING) { /* asked again: resume it */
        eng_idx_set_keys(ix, &c);
        eng_keyset_from_cat(&o->ks, &c);
        eng_op_rekey(o);
        err = rotate_start(o, arg);
        goto out;
    }
    if (m->rot_target) {
        err = cdx_fail(CDX_ERR_FAILED_PRECONDITION,
                       "index %s: a rotation without --new-key (to key epoch %u) is pending; "
                       "wait for it to complete, then rotate with --new-key",
                       ix->name, m->rot_target);
        goto out;
    }
    if (m->epoch >= UINT32_MAX - 1 || c.key_gen >= UINT32_MAX - 1) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "index %s: no key epoch is left", ix->name);
        goto out;
    }
    hsm_key_ref k = {.kind = HSM_KEY_INDEX, .gen = c.key_gen + 1};
    memcpy(k.id, c.id, CDX_ID_LEN);
    uint8_t kcv[CDX_KCV_LEN];
    err = hsm_index_key_generate_ref(e->cfg.custody, &k, kcv);
    if (err == CDX_ERR_ALREADY_EXISTS) /* made by an attempt that stopped before the catalog */
        err = hsm_key_kcv(e->cfg.custody, &k, kcv);
    if (err)
        goto out;
    eng_catentry nk = c;
    memcpy(nk.kcv, kcv, CDX_KCV_LEN);
    nk.has_kcv = 1;
    bool ours = false;
    eng_keyclaim held;
    if ((err = eng_keyclaim_take(&ro, &nk, &ours, &held)))
        goto out;
    if (!ours) {
        err = cdx_fail(CDX_ERR_ALREADY_EXISTS,
                       "index %s: the new key's KCV is claimed by another index; retry", ix->name);
        goto out;
    }
    c.next_has = ENG_NEXT_PENDING;
    c.next_gen = k.gen;
    memcpy(c.next_kcv, kcv, CDX_KCV_LEN);
    c.next_epoch = m->epoch + 1;
    if ((err = cat_update(&ro, &c, "rotate --new-key")))
        goto out;
    eng_idx_set_keys(ix, &c);
    eng_keyset_from_cat(&o->ks, &c);
    eng_op_rekey(o);
    char kh[2 * CDX_KCV_LEN + 1];
    cdx_hex_encode(kcv, CDX_KCV_LEN, kh);
    cdx_log(CDX_LOG_INFO, "eng_key_generated", "key_gen=%u kcv=%s for_epoch=%u", k.gen, kh,
            c.next_epoch);
    err = rotate_start(o, arg);
out:
    eng_manifest_unref(m);
    eng_op_end(&ro);
    return err;
}

cdx_err eng_rotate_key(eng *e, const char *name, bool new_key, eng_index_info *out)
{
    uint32_t target = 0;
    cdx_err err =
        eng_with_op(e, name, ENG_WITH_NAMED, new_key ? rotate_newkey_start : rotate_start, &target);
    if (!err && out)
        err = eng_index_describe(e, name, out);
    return err;
}

cdx_err eng_rotate(eng *e, const char *name, eng_index_info *out)
{
    return eng_rotate_key(e, name, false, out);
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
