/* Sweeping unreferenced records, and accepting a rollback. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cdx_hex.h"
#include "cdx_log.h"
#include "eng_head.h"
#include "eng_hwmark.h"
#include "eng_idmap.h"
#include "eng_int.h"
#include "eng_op.h"
#include "eng_store.h"

/* A record's kind and token: ENG_KINDTOK_LEN bytes (kind char, then the token). */
#define ENG_KINDTOK_LEN   (1 + ENG_TOKEN_LEN)
/* The record header's write time: be64 at this offset (eng_record.h). */
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
 * Everything the current manifest can reach, plus retired segments still in
 * grace, sorted.
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

/*
 * Delete the keys of one SCAN page that name no referenced record and were
 * written more than gc_grace ago (in-flight writes are younger).
 */
static cdx_err sweep_page(const eng *e, char **keys, size_t nk, const tokset *ref, uint64_t now,
                          uint64_t *removed)
{
    cdx_err err = CDX_OK;
    size_t nc = 0;
    const char **cand = malloc((nk + 1) * sizeof(char *));
    eng_range *rg = malloc((nk + 1) * sizeof(eng_range));
    eng_val *hv = calloc(nk + 1, sizeof(eng_val));
    if (!cand || !rg || !hv) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < nk; i++) {
        const char *k = keys[i];
        uint8_t probe[ENG_KINDTOK_LEN];
        if (!eng_key_parse_rec(k, probe))
            continue;
        if (bsearch(probe, ref->t, ref->n, ENG_KINDTOK_LEN, cmp_kindtok))
            continue;
        rg[nc] = (eng_range){k, 0, ENG_REC_HDR};
        cand[nc++] = k;
    }
    if (nc && !(err = eng_store_getrange(e->cfg.store, rg, nc, hv))) {
        size_t nd = 0;
        for (size_t i = 0; i < nc; i++) {
            if (!hv[i].found || hv[i].len < REC_WRITE_TIME_AT + 8)
                continue;
            uint64_t write_time = eng_rd64(hv[i].data + REC_WRITE_TIME_AT);
            if (write_time + e->cfg.gc_grace_ms < now)
                cand[nd++] = cand[i];
        }
        uint64_t dd = 0;
        if (nd && !(err = eng_store_del(e->cfg.store, cand, nd, &dd)))
            *removed += dd;
        eng_vals_free(hv, nc);
    }
out:
    free(cand);
    free(rg);
    free(hv);
    return err;
}

typedef struct sweep_arg {
    uint64_t removed;
} sweep_arg;

static cdx_err sweep(op *o, eng_manifest *m, void *arg)
{
    eng *e = o->e;
    sweep_arg *a = arg;
    eng_bucketset bs;
    memset(&bs, 0, sizeof(bs));
    tokset ref = {0};
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
        err = sweep_page(e, keys, nk, &ref, now, &a->removed);
        eng_keys_free(keys, nk);
    } while (!err && cursor != 0);
out:
    free(ref.t);
    eng_bucketset_free(&bs);
    return err;
}

cdx_err eng_sweep(eng *e, const char *name, uint64_t *deleted)
{
    sweep_arg a = {0};
    cdx_err err = eng_with_manifest(e, name, ENG_WITH_FRESH | ENG_WITH_NAMED, sweep, &a);
    if (!err) {
        if (deleted)
            *deleted = a.removed;
        cdx_log(CDX_LOG_INFO, "eng_sweep", "deleted=%llu", (unsigned long long)a.removed);
    }
    return err;
}

typedef struct accept_arg {
    uint64_t confirm, previous, version;
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
    /* Under the index's mutex: the mark file and ix->hw change together (eng_hwmark.h). */
    pthread_mutex_lock(&ix->mu);
    uint64_t old = ix->hw;
    bool lower = h.version < old;
    if (lower && !(err = eng_hwmark_put(o->e->state_dir, ix->id, h.version))) {
        ix->hw = h.version;
        /* The next request reads the head again instead of a cached newer manifest. */
        eng_manifest_unref(ix->m);
        ix->m = NULL;
    }
    if (!err)
        ix->in_rollback = false;
    pthread_mutex_unlock(&ix->mu);
    if (err)
        return err;
    a->previous = old;
    a->version = h.version;
    if (lower)
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
