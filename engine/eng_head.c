/*
 * The head and state loading: read the head, fetch and open the manifest
 * (and centroids) it names, check and raise the rollback high-water mark.
 */
#include <stdlib.h>
#include <string.h>

#include "cdx_hex.h"
#include "cdx_log.h"
#include "eng_head.h"
#include "eng_hwmark.h"
#include "eng_int.h"
#include "eng_op.h"
#include "eng_store.h"
#include "hsm_mark.h"

void eng_head_encode(const eng_head *h, eng_buf *b)
{
    eng_buf_u8(b, 1);
    eng_buf_u64(b, h->version);
    eng_buf_put(b, h->manifest_token, ENG_TOKEN_LEN);
    eng_buf_u32(b, h->manifest_len);
}

cdx_err eng_head_decode(const uint8_t *p, size_t n, eng_head *h)
{
    eng_rd r;
    eng_rd_init(&r, p, n);
    uint8_t fmt = eng_rd_u8(&r);
    h->version = eng_rd_u64(&r);
    eng_rd_copy(&r, h->manifest_token, ENG_TOKEN_LEN);
    h->manifest_len = eng_rd_u32(&r);
    if (!eng_rd_done(&r) || fmt != 1)
        return cdx_fail(CDX_ERR_INTEGRITY, "head is malformed");
    return CDX_OK;
}

uint32_t eng_marks_ms(eng *e)
{
    return atomic_load(&e->mark_ms);
}

cdx_err eng_marks_result(eng *e, cdx_err err)
{
    if (err != CDX_ERR_MECHANISM_UNSUPPORTED)
        return err;
    if (atomic_exchange(&e->mark_ms, 0))
        cdx_log(CDX_LOG_WARN, "token_marks_off",
                "msg=\"%s; rollback marks are kept in the state dir only (a rebuilt appliance "
                "does not learn them)\"",
                cdx_err_detail());
    return CDX_OK;
}

cdx_err eng_hw_sync(eng *e, struct idx *ix, bool force)
{
    if (!eng_marks_ms(e))
        return CDX_OK;
    cdx_err err = CDX_OK;
    /* One sync (or accept-rollback's exact set) of this index's token mark at a time, so a
     * stale merge cannot undo an operator's lowered mark. */
    pthread_mutex_lock(&ix->tok_mu);
    int64_t now = cdx_mono_ms();
    pthread_mutex_lock(&ix->mu);
    bool due = force || !ix->tok_synced || now - ix->tok_sync_ms >= (int64_t)eng_marks_ms(e);
    hsm_mark mine = {.version = ix->hw, .deleted = ix->tomb, .gen = ix->gen};
    pthread_mutex_unlock(&ix->mu);
    if (!due)
        goto out;
    hsm_mark got;
    if ((err = eng_marks_result(e, hsm_mark_raise(e->cfg.custody, ix->id, &mine, &got))) ||
        !eng_marks_ms(e)) {
        if (err)
            cdx_prefix(err, "index %s: its rollback mark on the token: ", ix->name);
        goto out;
    }
    pthread_mutex_lock(&ix->mu);
    /* What another appliance recorded (or an operator accepted there: a later generation) is
     * made durable here before it is relied on. */
    bool adopt = got.gen > ix->gen;
    if (adopt || got.version > ix->hw || (got.deleted && !ix->tomb)) {
        hsm_mark w = got;
        if (!adopt) {
            w.version = got.version > ix->hw ? got.version : ix->hw;
            w.deleted = ix->tomb || got.deleted;
        }
        if (!(err = eng_hwmark_put(e->state_dir, ix->id, &w))) {
            if (adopt && w.version < ix->hw) {
                char id[2 * CDX_ID_LEN + 1];
                cdx_hex_encode(ix->id, CDX_ID_LEN, id);
                cdx_log(CDX_LOG_WARN, "eng_rollback_accepted_elsewhere",
                        "index_id=%s from=%llu to=%llu gen=%u", id, (unsigned long long)ix->hw,
                        (unsigned long long)w.version, w.gen);
                eng_manifest_unref(ix->m); /* read the head again */
                ix->m = NULL;
            }
            ix->hw = w.version;
            ix->tomb = w.deleted;
            ix->gen = w.gen;
        }
    }
    if (!err) {
        ix->tok_synced = true;
        ix->tok_sync_ms = now;
        ix->tok_version = got.version;
    }
    pthread_mutex_unlock(&ix->mu);
out:
    pthread_mutex_unlock(&ix->tok_mu);
    return err;
}

void eng_marks_flush(eng *e, bool force)
{
    if (!e || !eng_marks_ms(e))
        return;
    struct idx **v = NULL;
    size_t n = 0, cap = 0;
    pthread_mutex_lock(&e->mu);
    for (struct idx *ix = e->idx; ix; ix = ix->next) {
        pthread_mutex_lock(&ix->mu);
        bool dirty = ix->hw_loaded && (!ix->tok_synced || ix->hw > ix->tok_version);
        pthread_mutex_unlock(&ix->mu);
        if (!dirty)
            continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 8;
            struct idx **p = realloc(v, nc * sizeof(*v));
            if (!p)
                break; /* the rest waits for the next flush */
            v = p;
            cap = nc;
        }
        atomic_fetch_add(&ix->refs, 1);
        v[n++] = ix;
    }
    pthread_mutex_unlock(&e->mu);
    for (size_t i = 0; i < n; i++) {
        cdx_err err = eng_hw_sync(e, v[i], force);
        if (err) {
            char id[2 * CDX_ID_LEN + 1];
            cdx_hex_encode(v[i]->id, CDX_ID_LEN, id);
            cdx_log(CDX_LOG_WARN, "token_mark_sync_failed", "index_id=%s code=%s msg=\"%s\"", id,
                    cdx_err_name(err), cdx_err_detail());
        }
        eng_idx_put(v[i]);
    }
    free(v);
}

cdx_err eng_hw_load(op *o)
{
    struct idx *ix = o->ix;
    cdx_err err = CDX_OK;
    pthread_mutex_lock(&ix->mu);
    if (!ix->hw_loaded) {
        hsm_mark m;
        if (!(err = eng_hwmark_get(o->e->state_dir, ix->id, &m))) {
            ix->hw = m.version;
            ix->tomb = m.deleted;
            ix->gen = m.gen;
        }
        ix->hw_loaded = !err;
    }
    pthread_mutex_unlock(&ix->mu);
    if (!err)
        err = eng_hw_sync(o->e, ix, false);
    return err;
}

cdx_err eng_tomb_check(op *o, uint64_t store_version)
{
    struct idx *ix = o->ix;
    pthread_mutex_lock(&ix->mu);
    bool tomb = ix->tomb;
    uint64_t hw = ix->hw;
    pthread_mutex_unlock(&ix->mu);
    if (!tomb)
        return CDX_OK;
    pthread_mutex_lock(&ix->mu);
    ix->in_rollback = true; /* counted by eng_rollback_count (health) until purged or accepted */
    ix->rollback_store = store_version;
    pthread_mutex_unlock(&ix->mu);
    char id[2 * CDX_ID_LEN + 1];
    cdx_hex_encode(ix->id, CDX_ID_LEN, id);
    return cdx_fail(CDX_ERR_ROLLBACK_DETECTED,
                    "index %s (id %s) was deleted at version %llu; the store holds a restored "
                    "copy of it (version %llu), which is not served; remove the copy: "
                    "`cipherdex index purge` (appliance admin); or, to bring the deleted index "
                    "back on purpose: `cipherdex index accept-rollback %s --version %llu` (admin)",
                    ix->name, id, (unsigned long long)hw, (unsigned long long)store_version,
                    ix->name, (unsigned long long)store_version);
}

/* Record a newly seen head version durably before anything relies on it. */
cdx_err eng_hw_raise(op *o, uint64_t version)
{
    struct idx *ix = o->ix;
    cdx_err err = CDX_OK;
    pthread_mutex_lock(&ix->mu);
    if (version > ix->hw) {
        hsm_mark m = {.version = version, .deleted = ix->tomb, .gen = ix->gen};
        err = eng_hwmark_put(o->e->state_dir, ix->id, &m);
        if (!err)
            ix->hw = version;
    }
    pthread_mutex_unlock(&ix->mu);
    return err;
}

/* Read and authenticate the head. *found=false if it does not exist. */
cdx_err eng_read_head(op *o, eng_head *h, bool *found)
{
    char key[CDX_STORE_KEY_MAX];
    eng_key_head(key, o->ix->id);
    eng_buf pt;
    eng_buf_init(&pt);
    eng_rec_hdr rh;
    cdx_err err = eng_op_fetch_open(o, key, HSM_P_MANIFEST, ENG_K_HEAD, eng_zero_token, UINT64_MAX,
                                    &rh, &pt, found);
    if (!err && *found) {
        err = eng_head_decode(pt.data, pt.len, h);
        if (!err && h->version != rh.version)
            err = cdx_fail(CDX_ERR_INTEGRITY, "head version does not match its record");
        h->write_time = rh.write_time;
        h->epoch = rh.epoch;
    }
    eng_buf_free(&pt);
    return err;
}

/* Fetch and open the manifest (and centroids) a head points at. */
static cdx_err read_manifest(op *o, const eng_head *h, eng_manifest **out)
{
    char key[CDX_STORE_KEY_MAX];
    eng_buf pt;
    eng_buf_init(&pt);
    eng_manifest *m = NULL;
    bool found;
    eng_rec_hdr rh;
    eng_key_rec(key, o->ix->id, ENG_KEY_MANIFEST, h->manifest_token);
    cdx_err err = eng_op_fetch_open(o, key, HSM_P_MANIFEST, ENG_K_MANIFEST, h->manifest_token,
                                    h->version, &rh, &pt, &found);
    if (err)
        goto out;
    if (found && rh.epoch != h->epoch) {
        err = cdx_fail(CDX_ERR_INTEGRITY, "the manifest is of key epoch %u, its head of %u",
                       rh.epoch, h->epoch);
        goto out;
    }
    if (!found) {
        err = cdx_fail(CDX_ERR_INTEGRITY, "the manifest the head points at is missing");
        goto out;
    }
    if ((err = eng_manifest_decode(pt.data, pt.len, &m)))
        goto out;
    atomic_init(&m->refs, 1);
    m->version = h->version;
    m->epoch = h->epoch;
    if (m->min_epoch > m->epoch || (m->rot_target && m->rot_target <= m->epoch)) {
        err = cdx_fail(CDX_ERR_INTEGRITY, "manifest key epochs are inconsistent");
        goto out;
    }
    memcpy(m->token, h->manifest_token, ENG_TOKEN_LEN);
    if (m->centroids_version) {
        eng_buf_free(&pt);
        eng_key_rec(key, o->ix->id, ENG_KEY_CENTROIDS, m->centroids_token);
        if ((err = eng_op_fetch_open(o, key, HSM_P_MANIFEST, ENG_K_CENTROIDS, m->centroids_token,
                                     m->centroids_version, &rh, &pt, &found)))
            goto out;
        if (found && rh.epoch != h->epoch) {
            err = cdx_fail(CDX_ERR_INTEGRITY, "the centroids are of key epoch %u, the head of %u",
                           rh.epoch, h->epoch);
            goto out;
        }
        if (!found) {
            err = cdx_fail(CDX_ERR_INTEGRITY, "the centroids the manifest names are missing");
            goto out;
        }
        if ((err = eng_centroids_decode(m, pt.data, pt.len)))
            goto out;
    } else if (m->n_clusters) {
        err = cdx_fail(CDX_ERR_INTEGRITY, "trained manifest without centroids");
        goto out;
    }
    *out = m;
    m = NULL;
out:
    eng_manifest_free(m);
    eng_buf_free(&pt);
    return err;
}

/*
 * The index's current manifest (a shared reference: munref it). Reads the
 * head unless the cached manifest is younger than manifest_max_age_ms and
 * at least min_version; checks the rollback high-water mark.
 */
cdx_err eng_load_state(op *o, bool fresh, uint64_t min_version, eng_manifest **out)
{
    struct idx *ix = o->ix;
    eng *e = o->e;
    uint64_t t0 = cdx_mono_ns();
    cdx_err err;
    *out = NULL;
    if (!fresh && e->cfg.manifest_max_age_ms) {
        pthread_mutex_lock(&ix->mu);
        if (ix->m && ix->m->version >= min_version &&
            cdx_mono_ms() - ix->m_read_ms < (int64_t)e->cfg.manifest_max_age_ms) {
            *out = eng_manifest_ref(ix->m);
            pthread_mutex_unlock(&ix->mu);
            eng_op_set_state(o, *out);
            return CDX_OK;
        }
        pthread_mutex_unlock(&ix->mu);
    }
    if ((err = eng_hw_load(o)))
        return err;
    /* Only versions seen before this read began can prove a rollback: another thread of this
     * appliance may commit (and raise the mark) while the read is in flight. */
    pthread_mutex_lock(&ix->mu);
    uint64_t hw = ix->hw;
    pthread_mutex_unlock(&ix->mu);
    int64_t read_at = cdx_mono_ms();
    eng_head h;
    bool found = false;
    if ((err = eng_read_head(o, &h, &found)))
        return eng_in_index(err, ix->name);
    if (!found) {
        eng_idx_forget(e, ix->id);
        return cdx_fail(CDX_ERR_NOT_FOUND, "index %s no longer exists", ix->name);
    }
    if ((err = eng_tomb_check(o, h.version)))
        return err;
    pthread_mutex_lock(&ix->mu);
    /* The same version is not enough: after a lost tail another writer may reuse it. */
    eng_manifest *cur = ix->m && ix->m->version == h.version &&
                                !memcmp(ix->m->token, h.manifest_token, ENG_TOKEN_LEN)
                            ? eng_manifest_ref(ix->m)
                            : NULL;
    bool was = ix->in_rollback;
    ix->in_rollback = h.version < hw;
    ix->rollback_store = h.version;
    pthread_mutex_unlock(&ix->mu);
    if (h.version < hw) {
        eng_manifest_unref(cur);
        char id[2 * CDX_ID_LEN + 1];
        cdx_hex_encode(ix->id, CDX_ID_LEN, id);
        /* Once per episode at ERROR; every request would otherwise flood the log. */
        cdx_log(was ? CDX_LOG_DEBUG : CDX_LOG_ERROR, "eng_rollback",
                "index_id=%s seen=%llu store=%llu", id, (unsigned long long)hw,
                (unsigned long long)h.version);
        return cdx_fail(CDX_ERR_ROLLBACK_DETECTED,
                        "index %s: the store's head is version %llu, older than version %llu "
                        "acknowledged before (its rollback mark); the writes after it are lost "
                        "(a Redis crash without appendfsync always, or a restored backup); "
                        "recover: `cipherdex index accept-rollback %s --version %llu` (admin)",
                        ix->name, (unsigned long long)h.version, (unsigned long long)hw, ix->name,
                        (unsigned long long)h.version);
    }
    if (!cur && (err = read_manifest(o, &h, &cur)) == CDX_ERR_INTEGRITY) {
        /* Superseded and swept between our head read and the fetch: read the head again. */
        eng_head h2;
        if (!eng_read_head(o, &h2, &found) && found && h2.version > h.version) {
            h = h2;
            err = read_manifest(o, &h, &cur);
        }
    }
    if (err)
        return eng_in_index(err, ix->name);
    if ((err = eng_hw_raise(o, h.version))) {
        eng_manifest_unref(cur);
        return err;
    }
    pthread_mutex_lock(&ix->mu);
    if (!ix->m || ix->m->version <= cur->version) {
        eng_manifest_unref(ix->m);
        ix->m = eng_manifest_ref(cur);
        ix->m_read_ms = read_at;
    }
    pthread_mutex_unlock(&ix->mu);
    eng_stage_add(&e->ns_head, ENG_STAGE_HEAD, cdx_mono_ns() - t0);
    eng_op_set_state(o, cur);
    /* A pending rotation, or the key side of a completed --new-key one, is resumed. */
    if (cur->rot_target || o->ks.next_has == ENG_NEXT_RETIRED ||
        (o->ks.next_has == ENG_NEXT_PENDING && cur->epoch >= o->ks.next_epoch))
        eng_rotate_notice(o->e, ix);
    *out = cur;
    return CDX_OK;
}
/* Served state at least min_version, or STALE. */
cdx_err eng_load_min(op *o, uint64_t min_version, eng_manifest **m)
{
    cdx_err err = eng_load_state(o, false, min_version, m);
    if (err || (*m)->version >= min_version)
        return err;
    eng_manifest_unref(*m);
    if ((err = eng_load_state(o, true, min_version, m)))
        return err;
    if ((*m)->version < min_version) {
        uint64_t have = (*m)->version;
        eng_manifest_unref(*m);
        *m = NULL;
        return cdx_fail(CDX_ERR_STALE,
                        "index %s is at version %llu, older than the requested "
                        "%llu",
                        o->ix->name, (unsigned long long)have, (unsigned long long)min_version);
    }
    return CDX_OK;
}
