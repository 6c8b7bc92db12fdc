/* Sweeping unreferenced records (eng_maint.h), and accepting a rollback. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cdx_hex.h"
#include "cdx_log.h"
#include "eng_head.h"
#include "eng_hwmark.h"
#include "hsm_mark.h"
#include "eng_idmap.h"
#include "eng_int.h"
#include "eng_maint.h"
#include "eng_op.h"
#include "eng_store.h"

/* A record's kind and token: ENG_KINDTOK_LEN bytes (kind char, then the token). */
#define ENG_KINDTOK_LEN   (1 + ENG_TOKEN_LEN)
/* The record header's version and write time: be64 each at these offsets (eng_record.h). */
#define REC_VERSION_AT    8
#define REC_WRITE_TIME_AT 16

typedef struct tokset {
    size_t n, cap;
    uint8_t (*t)[ENG_KINDTOK_LEN];
} tokset;

static int cmp_kindtok(const void *a, const void *b)
{
    return memcmp(a, b, ENG_KINDTOK_LEN);
}

static cdx_err tokset_add(tokset *s, char kind, const uint8_t tok[ENG_TOKEN_LEN])
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        uint8_t(*p)[ENG_KINDTOK_LEN] = realloc(s->t, cap * ENG_KINDTOK_LEN);
        if (!p)
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        s->t = p;
        s->cap = cap;
    }
    s->t[s->n][0] = (uint8_t)kind;
    memcpy(s->t[s->n] + 1, tok, ENG_TOKEN_LEN);
    s->n++;
    return CDX_OK;
}

/*
 * Everything the current manifest can reach, sorted. Manifests written
 * before retired lists were dropped may still list retired segments: those
 * still in their grace count as referenced.
 */
static cdx_err referenced(const eng *e, const eng_manifest *m, const eng_bucketset *bs,
                          uint64_t now, tokset *ref)
{
    cdx_err err = tokset_add(ref, ENG_KEY_MANIFEST, m->token);
    if (!err && m->centroids_version)
        err = tokset_add(ref, ENG_KEY_CENTROIDS, m->centroids_token);
    for (uint32_t c = 0; c < eng_manifest_nclusters(m) && !err; c++)
        for (uint32_t s = 0; s < m->clusters[c].nseg && !err; s++)
            err = tokset_add(ref, ENG_KEY_SEGMENT, m->clusters[c].seg[s].token);
    for (uint32_t r = 0; r < m->nretired && !err; r++)
        if (m->retired[r].retire_ms + e->cfg.gc_grace_ms > now)
            err = tokset_add(ref, ENG_KEY_SEGMENT, m->retired[r].token);
    for (unsigned b = 0; b < ENG_BUCKETS && !err; b++)
        for (uint32_t i = 0; bs->b[b] && i < bs->b[b]->n && !err; i++)
            if (bs->b[b]->e[i].content_len)
                err = tokset_add(ref, ENG_KEY_CONTENTS, bs->b[b]->e[i].content);
    if (!err)
        qsort(ref->t, ref->n, ENG_KINDTOK_LEN, cmp_kindtok);
    return err;
}

/* Sort c and drop repeats (SCAN may return a key twice). */
static void tokset_sort_unique(tokset *c)
{
    if (!c->n)
        return;
    qsort(c->t, c->n, ENG_KINDTOK_LEN, cmp_kindtok);
    size_t u = 1;
    for (size_t i = 1; i < c->n; i++)
        if (memcmp(c->t[u - 1], c->t[i], ENG_KINDTOK_LEN))
            memcpy(c->t[u++], c->t[i], ENG_KINDTOK_LEN);
    c->n = u;
}

typedef struct sweep_arg {
    uint64_t t0;      /* wall time before the head was read */
    uint64_t version; /* the version of that head */
    eng_sweep_report r;
} sweep_arg;

static void sweep_next(sweep_arg *a, uint64_t when)
{
    if (!a->r.next_ms || when < a->r.next_ms)
        a->r.next_ms = when;
}

static void count_kind(eng_sweep_report *r, char kind)
{
    r->deleted++;
    if (kind == ENG_KEY_MANIFEST)
        r->manifests++;
    else if (kind == ENG_KEY_SEGMENT)
        r->segments++;
    else if (kind == ENG_KEY_CONTENTS)
        r->contents++;
    else if (kind == ENG_KEY_CENTROIDS)
        r->centroids++;
}

/*
 * Candidates this engine has not seen unreferenced before: read their
 * headers (in batches) and start tracking the ones no later head can
 * reference. A manifest, segment or centroids record carries the version
 * of the commit it was built for: at or below the head's version, that
 * commit landed (and this head dropped it again) or lost, so it is final.
 * Contents are sealed at version 0: they are final once written more than
 * gc_grace before the head was read (a commit comes within gc_grace of its
 * records, or never). Anything else may belong to a commit in flight and is
 * looked at again later. since[i] gets the tracking start, 0 = not tracked.
 */
static cdx_err first_sight(const eng *e, const uint8_t id[CDX_ID_LEN], tokset *c,
                           const size_t *fresh, size_t nfresh, uint64_t now, uint64_t *since,
                           uint64_t *size, sweep_arg *a)
{
    cdx_err err = CDX_OK;
    char(*keys)[CDX_STORE_KEY_MAX] = malloc(CDX_SWEEP_BATCH * sizeof(*keys));
    const char **kp = malloc(CDX_SWEEP_BATCH * sizeof(*kp));
    uint64_t *len = malloc(CDX_SWEEP_BATCH * sizeof(*len));
    eng_range *rg = malloc(CDX_SWEEP_BATCH * sizeof(*rg));
    eng_val *hv = calloc(CDX_SWEEP_BATCH, sizeof(*hv));
    if (!keys || !kp || !len || !rg || !hv) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (size_t at = 0; at < nfresh && !err; at += CDX_SWEEP_BATCH) {
        size_t nb = nfresh - at < CDX_SWEEP_BATCH ? nfresh - at : CDX_SWEEP_BATCH;
        for (size_t i = 0; i < nb; i++) {
            const uint8_t *kt = c->t[fresh[at + i]];
            eng_key_rec(keys[i], id, (char)kt[0], kt + 1);
            rg[i] = (eng_range){keys[i], 0, ENG_REC_HDR};
            kp[i] = keys[i];
        }
        /* The sizes are only reported (describe's retired bytes), never trusted. */
        if ((err = eng_store_getrange(e->cfg.store, rg, nb, hv)) ||
            (err = eng_store_strlen(e->cfg.store, kp, nb, len)))
            break;
        for (size_t i = 0; i < nb; i++) {
            if (!hv[i].found || hv[i].len < REC_WRITE_TIME_AT + 8)
                continue; /* gone meanwhile, or not a record of ours: left alone */
            uint64_t version = eng_rd64(hv[i].data + REC_VERSION_AT);
            uint64_t write_time = eng_rd64(hv[i].data + REC_WRITE_TIME_AT);
            bool versioned = c->t[fresh[at + i]][0] != ENG_KEY_CONTENTS;
            if ((versioned && version <= a->version) || write_time + e->cfg.gc_grace_ms < a->t0) {
                since[fresh[at + i]] = now;
                size[fresh[at + i]] = len[i];
            } else
                sweep_next(a, write_time + e->cfg.gc_grace_ms + 1);
        }
        eng_vals_free(hv, nb);
    }
out:
    free(keys);
    free(kp);
    free(len);
    free(rg);
    free(hv);
    return err;
}

/* Delete the n ripe records of idx id (kind and token each), counting by kind. */
static cdx_err delete_ripe(const eng *e, const uint8_t id[CDX_ID_LEN],
                           uint8_t (*kt)[ENG_KINDTOK_LEN], size_t n, eng_sweep_report *r)
{
    cdx_err err = CDX_OK;
    char(*keys)[CDX_STORE_KEY_MAX] = malloc(CDX_SWEEP_BATCH * sizeof(*keys));
    const char **kp = malloc(CDX_SWEEP_BATCH * sizeof(*kp));
    if (!keys || !kp) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (size_t at = 0; at < n && !err; at += CDX_SWEEP_BATCH) {
        size_t nb = n - at < CDX_SWEEP_BATCH ? n - at : CDX_SWEEP_BATCH;
        for (size_t i = 0; i < nb; i++) {
            eng_key_rec(keys[i], id, (char)kt[at + i][0], kt[at + i] + 1);
            kp[i] = keys[i];
        }
        if ((err = eng_store_del(e->cfg.store, kp, nb, NULL)))
            break;
        for (size_t i = 0; i < nb; i++)
            count_kind(r, (char)kt[at + i][0]);
    }
out:
    free(keys);
    free(kp);
    return err;
}

/*
 * The sweep proper, under ix->sweep_mu: every unreferenced record gets its
 * tracking start (kept from earlier sweeps, or set now on first sight); the
 * ones tracked for gc_grace are deleted, the others are remembered.
 */
static cdx_err judge(op *o, tokset *c, uint64_t now, sweep_arg *a)
{
    eng *e = o->e;
    struct idx *ix = o->ix;
    uint64_t grace = e->cfg.gc_grace_ms;
    cdx_err err = CDX_OK;
    uint64_t *since = calloc(c->n + 1, sizeof(*since));
    uint64_t *size = calloc(c->n + 1, sizeof(*size));
    size_t *fresh = malloc((c->n + 1) * sizeof(*fresh));
    uint8_t(*ripe)[ENG_KINDTOK_LEN] = malloc((c->n + 1) * ENG_KINDTOK_LEN);
    eng_seen *keep = malloc((c->n + 1) * sizeof(*keep));
    size_t nfresh = 0, nripe = 0, nkeep = 0;
    if (!since || !size || !fresh || !ripe || !keep) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    /* Both lists are sorted by kind and token: one merge finds what was seen before. */
    size_t j = 0;
    for (size_t i = 0; i < c->n; i++) {
        while (j < ix->nseen && memcmp(ix->seen[j].kt, c->t[i], ENG_KINDTOK_LEN) < 0)
            j++;
        if (j < ix->nseen && !memcmp(ix->seen[j].kt, c->t[i], ENG_KINDTOK_LEN)) {
            since[i] = ix->seen[j].since_ms;
            size[i] = ix->seen[j].bytes;
        } else
            fresh[nfresh++] = i;
    }
    if ((err = first_sight(e, ix->id, c, fresh, nfresh, now, since, size, a)))
        goto out;
    for (size_t i = 0; i < c->n; i++) {
        if (!since[i])
            continue;
        if (since[i] + grace <= now) {
            memcpy(ripe[nripe++], c->t[i], ENG_KINDTOK_LEN);
            continue;
        }
        memcpy(keep[nkeep].kt, c->t[i], ENG_KINDTOK_LEN);
        keep[nkeep].since_ms = since[i];
        keep[nkeep++].bytes = size[i];
        a->r.waiting_bytes += size[i];
        sweep_next(a, since[i] + grace);
    }
    /* Records that became referenced again, or are gone, drop out of the list here. */
    free(ix->seen);
    ix->seen = keep;
    ix->nseen = nkeep;
    keep = NULL;
    a->r.waiting = nkeep;
    err = delete_ripe(e, ix->id, ripe, nripe, &a->r);
    if (err) {
        /* The ones not deleted are found again next time and wait a grace again: safe. */
        free(ix->seen);
        ix->seen = NULL;
        ix->nseen = 0;
    }
out:
    free(since);
    free(size);
    free(fresh);
    free(ripe);
    free(keep);
    return err;
}

static cdx_err sweep(op *o, eng_manifest *m, void *arg)
{
    eng *e = o->e;
    sweep_arg *a = arg;
    eng_bucketset bs;
    memset(&bs, 0, sizeof(bs));
    tokset ref = {0};
    tokset cand = {0};
    uint64_t now = 0;
    char pat[ENG_KEY_PATTERN_MAX];
    cdx_err err;
    if ((err = eng_buckets_load_all(o, m, &bs)))
        goto out;
    now = cdx_wall_ms();
    if ((err = referenced(e, m, &bs, now, &ref)))
        goto out;
    eng_key_rec_pattern(o->ix->id, pat);
    uint64_t cursor = 0;
    do {
        char **keys = NULL;
        size_t nk = 0;
        if ((err = eng_store_scan(e->cfg.store, pat, &cursor, &keys, &nk)))
            break;
        for (size_t i = 0; i < nk && !err; i++) {
            uint8_t kt[ENG_KINDTOK_LEN];
            if (eng_key_parse_rec(keys[i], kt) &&
                !bsearch(kt, ref.t, ref.n, ENG_KINDTOK_LEN, cmp_kindtok))
                err = tokset_add(&cand, (char)kt[0], kt + 1);
        }
        eng_keys_free(keys, nk);
    } while (!err && cursor != 0);
    if (err)
        goto out;
    tokset_sort_unique(&cand);
    a->version = m->version;
    pthread_mutex_lock(&o->ix->sweep_mu);
    err = judge(o, &cand, now, a);
    if (!err) { /* for describe, whoever ran the sweep */
        atomic_store(&o->ix->last_sweep_ms, cdx_wall_ms());
        atomic_store(&o->ix->sweep_waiting, a->r.waiting);
        atomic_store(&o->ix->sweep_waiting_bytes, a->r.waiting_bytes);
    }
    pthread_mutex_unlock(&o->ix->sweep_mu);
out:
    free(ref.t);
    free(cand.t);
    eng_bucketset_free(&bs);
    return err;
}

cdx_err eng_sweep_run(eng *e, const char *name, eng_sweep_report *out)
{
    sweep_arg a;
    cdx_err err = ENG_MOVED;
    /* A commit landing while the buckets are read moves the index on: start over (bounded). */
    for (unsigned attempt = 0; err == ENG_MOVED && attempt < 16; attempt++) {
        memset(&a, 0, sizeof(a));
        a.t0 = cdx_wall_ms();
        err = eng_with_manifest(e, name, ENG_WITH_FRESH, sweep, &a);
    }
    err = eng_in_index(err, name);
    if (!err) {
        if (out)
            *out = a.r;
        cdx_log(CDX_LOG_DEBUG, "eng_sweep",
                "index=%s deleted=%llu manifests=%llu segments=%llu contents=%llu "
                "centroids=%llu waiting=%llu waiting_bytes=%llu",
                name, (unsigned long long)a.r.deleted, (unsigned long long)a.r.manifests,
                (unsigned long long)a.r.segments, (unsigned long long)a.r.contents,
                (unsigned long long)a.r.centroids, (unsigned long long)a.r.waiting,
                (unsigned long long)a.r.waiting_bytes);
    }
    return err;
}

cdx_err eng_sweep(eng *e, const char *name, uint64_t *deleted)
{
    eng_sweep_report r;
    cdx_err err = eng_sweep_run(e, name, &r);
    if (!err && deleted)
        *deleted = r.deleted;
    return err;
}

typedef struct accept_arg {
    uint64_t confirm, previous, version;
    bool undeleted; /* the index had been deleted (a tombstone was lifted) */
} accept_arg;

static cdx_err accept_rollback(op *o, void *arg)
{
    accept_arg *a = arg;
    struct idx *ix = o->ix;
    eng_head h;
    bool found = false;
    cdx_err err;
    if ((err = eng_hw_load(o)) || (err = eng_read_head(o, &h, &found)))
        return err;
    if (!found)
        return cdx_fail(CDX_ERR_NOT_FOUND, "index %s has no head", ix->name);
    if (a->confirm && h.version != a->confirm)
        return cdx_fail(CDX_ERR_FAILED_PRECONDITION,
                        "index %s: the store's head is version %llu, not %llu; nothing was "
                        "accepted: check the index (`cipherdex index list`) and repeat with "
                        "--version %llu",
                        ix->name, (unsigned long long)h.version, (unsigned long long)a->confirm,
                        (unsigned long long)h.version);
    char id[2 * CDX_ID_LEN + 1];
    cdx_hex_encode(ix->id, CDX_ID_LEN, id);
    /* Under the index's mutex: the mark file and ix->hw change together (eng_hwmark.h); under
     * tok_mu, so no merge of a stale mark with the token's copy runs meanwhile. */
    pthread_mutex_lock(&ix->tok_mu);
    pthread_mutex_lock(&ix->mu);
    uint64_t old = ix->hw;
    bool tomb = ix->tomb;
    bool lower = h.version < old;
    hsm_mark w = {.version = h.version, .gen = ix->gen};
    pthread_mutex_unlock(&ix->mu);
    if ((lower || tomb) && eng_marks_ms(o->e)) {
        /* A new generation on the token first: every appliance adopts the accepted state from
         * it (docs/ADMIN.md "Rollback marks"), and this one records it below. */
        err = eng_marks_result(o->e, hsm_mark_set(o->e->cfg.custody, ix->id, &w, &w));
    }
    pthread_mutex_lock(&ix->mu);
    if (!err && (lower || tomb) && !(err = eng_hwmark_put(o->e->state_dir, ix->id, &w))) {
        ix->hw = h.version;
        ix->tomb = false;
        ix->gen = w.gen;
        /* The next request reads the head again instead of a cached newer manifest. */
        eng_manifest_unref(ix->m);
        ix->m = NULL;
        ix->tok_synced = eng_marks_ms(o->e) != 0;
        ix->tok_sync_ms = cdx_mono_ms();
        ix->tok_version = h.version;
    }
    if (!err)
        ix->in_rollback = false;
    pthread_mutex_unlock(&ix->mu);
    pthread_mutex_unlock(&ix->tok_mu);
    if (err)
        return err;
    a->undeleted = tomb;
    a->previous = old;
    a->version = h.version;
    if (tomb)
        cdx_log(CDX_LOG_WARN, "eng_deleted_index_restored",
                "index_id=%s version=%llu msg=\"an index deleted earlier was accepted back from "
                "the store\"",
                id, (unsigned long long)h.version);
    else if (lower)
        cdx_log(CDX_LOG_WARN, "eng_rollback_accepted",
                "index_id=%s from=%llu to=%llu lost_versions=%llu", id, (unsigned long long)old,
                (unsigned long long)h.version, (unsigned long long)(old - h.version));
    else
        cdx_log(CDX_LOG_INFO, "eng_rollback_accept_noop",
                "index_id=%s seen=%llu store=%llu msg=\"not in rollback: nothing changed\"", id,
                (unsigned long long)old, (unsigned long long)h.version);
    return CDX_OK;
}

cdx_err eng_accept_rollback(eng *e, const char *name, uint64_t confirm_version, uint64_t *previous,
                            uint64_t *version)
{
    accept_arg a = {.confirm = confirm_version};
    cdx_err err = eng_with_op(e, name, ENG_WITH_NAMED, accept_rollback, &a);
    if (!err) {
        if (previous)
            *previous = a.previous;
        if (version)
            *version = a.version;
    }
    return err;
}

size_t eng_rollback_count(eng *e)
{
    size_t n = 0;
    if (!e)
        return 0;
    pthread_mutex_lock(&e->mu);
    for (struct idx *ix = e->idx; ix; ix = ix->next) {
        pthread_mutex_lock(&ix->mu);
        n += ix->in_rollback;
        pthread_mutex_unlock(&ix->mu);
    }
    pthread_mutex_unlock(&e->mu);
    return n;
}
