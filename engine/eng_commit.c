/* Optimistic commits (eng_commit.h). */
#include <string.h>
#include <time.h>

#include "cdx_hex.h"
#include "cdx_log.h"
#include "eng_commit.h"
#include "eng_head.h"
#include "eng_int.h"
#include "eng_op.h"
#include "eng_par.h"
#include "eng_store.h"

typedef struct manifest_put_arg {
    eng_store *st;
    char key[CDX_STORE_KEY_MAX];
    eng_kv kv;
} manifest_put_arg;

/* SET NX the manifest body (fresh random token). */
static cdx_err manifest_put(void *arg)
{
    manifest_put_arg *a = arg;
    bool created = false;
    cdx_err err = eng_store_setnx(a->st, &a->kv, 1, &created);
    if (!err && !created)
        err = cdx_fail(CDX_ERR_INTERNAL, "manifest token collision (never expected)");
    return err;
}

typedef struct bucket_part {
    eng_part p;
    op o; /* op_worker copy: own sealers */
    const eng_bucketset *bs;
    eng_buf *brec;
    uint64_t version;
    unsigned first, step; /* buckets first, first + step, ... (interleaved: even shares) */
} bucket_part;

static void *bucket_part_main(void *arg)
{
    bucket_part *w = arg;
    eng_sealer *sl;
    cdx_err err = eng_op_sealer(&w->o, HSM_P_MANIFEST, &sl);
    for (unsigned b = w->first; !err && b < ENG_BUCKETS; b += w->step) {
        if (!w->bs->dirty[b])
            continue;
        uint8_t tok[ENG_TOKEN_LEN];
        eng_bucket_token(b, tok);
        eng_rec_id id = {.scope = w->o.key.id,
                         .kind = ENG_K_BUCKET,
                         .token = tok,
                         .epoch = w->o.epoch,
                         .version = w->version};
        /* Encoded straight into the record (sized once) and sealed in place. */
        eng_buf *r = &w->brec[b];
        eng_buf_grow(r, ENG_REC_OVERHEAD + eng_bucket_encoded_len(w->bs->b[b]));
        eng_buf_reserve(r, ENG_REC_HDR);
        eng_bucket_encode(w->bs->b[b], r);
        err = eng_rec_seal_at(sl, &id, cdx_wall_ms(), w->o.kcv, r, 0);
    }
    eng_part_done(&w->p, err);
    return NULL;
}

/* Seal every dirty bucket at `version` into brec[bucket], on several threads when large. */
static cdx_err seal_buckets(op *o, const eng_bucketset *bs, uint64_t version, eng_buf *brec)
{
    hsm_subkey *k;
    cdx_err err;
    if ((err = eng_op_key(o, HSM_P_MANIFEST, &k)))
        return err;
    size_t items = 0;
    for (unsigned b = 0; b < ENG_BUCKETS; b++)
        items += bs->dirty[b] ? bs->b[b]->n : 0;
    bucket_part w[CDX_WRITE_THREADS_MAX];
    const eng_part *ps[CDX_WRITE_THREADS_MAX];
    unsigned nt = eng_par_threads(items, 8192);
    for (unsigned i = 0; i < nt; i++) {
        w[i].bs = bs;
        w[i].brec = brec;
        w[i].version = version;
        w[i].first = i;
        w[i].step = nt;
        eng_op_worker(o, &w[i].o);
        ps[i] = &w[i].p;
    }
    eng_par_run(bucket_part_main, w, sizeof(w[0]), nt, true);
    for (unsigned i = 0; i < nt; i++)
        eng_op_sealers_free(&w[i].o);
    return eng_parts_err(ps, nt);
}

/*
 * Commit nm (a modified clone of base) with the dirty buckets: manifest body
 * first (SET NX), then WATCH head / check base version / MULTI buckets+head
 * EXEC. *committed=false on a conflict (nothing visible changed). join, when
 * given, is called after the sealing and before the first store write: the
 * caller's records still being written finish there (error: no commit).
 */
/*
 * Stamp nm for version: dirty buckets get the version. Retired segments are
 * no longer listed (a list kept for gc_grace grew with every commit and was
 * rewritten by each): the sweep protects what a reader may still hold by
 * when it found it unreferenced (eng_maint.h). Entries inherited from a
 * manifest written before are dropped here.
 */
static void stamp(eng_manifest *nm, const eng_bucketset *bs, uint64_t version)
{
    nm->nretired = 0;
    for (unsigned b = 0; bs && b < ENG_BUCKETS; b++)
        if (bs->dirty[b])
            nm->bucket_version[b] = version;
}

/*
 * The manifest record of nm at version, encoded straight into mrec and
 * sealed in place (it runs to megabytes).
 */
static cdx_err seal_manifest(op *o, const eng_manifest *nm, uint64_t version, eng_buf *mrec)
{
    eng_sealer *sl;
    cdx_err err = eng_op_sealer(o, HSM_P_MANIFEST, &sl);
    if (err)
        return err;
    eng_buf_reserve(mrec, ENG_REC_HDR);
    eng_manifest_encode(nm, mrec);
    eng_rec_id rid = {.scope = o->key.id,
                      .kind = ENG_K_MANIFEST,
                      .token = nm->token,
                      .epoch = o->epoch,
                      .version = version};
    return eng_rec_seal_at(sl, &rid, cdx_wall_ms(), o->kcv, mrec, 0);
}

/* After the commit: raise the mark, and nm becomes the index's current state. */
static cdx_err adopt(op *o, eng_manifest *nm, uint64_t version)
{
    cdx_err err = eng_hw_raise(o, version);
    if (err)
        return err;
    struct idx *ix = o->ix;
    atomic_fetch_add(&ix->commits, 1); /* makes the index due for maintenance */
    pthread_mutex_lock(&ix->mu);
    if (!ix->m || ix->m->version < version) {
        atomic_store(&ix->epoch, nm->epoch);
        atomic_store(&ix->min_epoch, nm->min_epoch);
        eng_manifest_unref(ix->m);
        ix->m = eng_manifest_ref(nm);
        ix->m_read_ms = cdx_mono_ms();
    }
    pthread_mutex_unlock(&ix->mu);
    return CDX_OK;
}

cdx_err eng_commit_rewrite(op *o, const eng_manifest *base, eng_manifest *nm, eng_bucketset *bs,
                           bool *committed)
{
    cdx_err err = eng_commit(o, base, nm, bs, committed);
    return err == ENG_AGED ? CDX_ERR_FAILED_PRECONDITION : err;
}

cdx_err eng_commit_joined(op *o, const eng_manifest *base, eng_manifest *nm, eng_bucketset *bs,
                          cdx_err (*join)(void *), void *join_arg, bool *committed)
{
    eng *e = o->e;
    cdx_err err = CDX_OK;
    uint64_t version = base->version + 1;
    eng_buf pt, mrec, hrec, brec[ENG_BUCKETS];
    char bkeys[ENG_BUCKETS][CDX_STORE_KEY_MAX];
    eng_kv kv[ENG_BUCKETS + 1];
    size_t nkv = 0;
    eng_txn *t = NULL;
    eng_val cur = {0};
    manifest_put_arg mput;
    eng_bg mjob = ENG_BG_IDLE;
    *committed = false;
    eng_buf_init(&pt);
    eng_buf_init(&mrec);
    eng_buf_init(&hrec);
    for (unsigned b = 0; b < ENG_BUCKETS; b++)
        eng_buf_init(&brec[b]);

    if (nm->epoch != o->epoch) { /* every record a manifest names is of its epoch */
        err = cdx_fail(CDX_ERR_INTERNAL, "commit of a key epoch %u state under epoch %u", nm->epoch,
                       o->epoch);
        goto out;
    }
    nm->version = version;
    if ((err = eng_random(nm->token, ENG_TOKEN_LEN)))
        goto out;
    stamp(nm, bs, version);
    /* The manifest first, so it is written while the buckets are being sealed. */
    if ((err = seal_manifest(o, nm, version, &mrec)))
        goto out;
    char hkey[CDX_STORE_KEY_MAX];
    eng_key_rec(mput.key, o->ix->id, ENG_KEY_MANIFEST, nm->token);
    mput.st = e->cfg.store;
    mput.kv = (eng_kv){mput.key, mrec.data, mrec.len};
    if ((err = eng_bg_start(&mjob, manifest_put, &mput)) ||
        (bs && (err = seal_buckets(o, bs, version, brec))))
        goto out;
    for (unsigned b = 0; bs && b < ENG_BUCKETS; b++) {
        if (!bs->dirty[b])
            continue;
        eng_key_bucket(bkeys[b], o->ix->id, b);
        kv[nkv++] = (eng_kv){bkeys[b], brec[b].data, brec[b].len};
    }
    /* Every immutable record is stored before the commit. */
    if ((join && (err = join(join_arg))) || (err = eng_bg_join(&mjob)))
        goto out;
    eng_head h = {.version = version, .manifest_len = (uint32_t)mrec.len};
    memcpy(h.manifest_token, nm->token, ENG_TOKEN_LEN);
    eng_buf_free(&pt);
    eng_head_encode(&h, &pt);
    if ((err = eng_op_seal(o, HSM_P_MANIFEST, ENG_K_HEAD, eng_zero_token, version, pt.data, pt.len,
                           &hrec)))
        goto out;
    eng_key_head(hkey, o->ix->id);
    kv[nkv++] = (eng_kv){hkey, hrec.data, hrec.len};
    if (e->hook)
        e->hook(e->hook_arg, o->ix->id);
    if ((err = eng_store_watch(e->cfg.store, hkey, &t, &cur)))
        goto out;
    eng_rec_hdr rh;
    if (!cur.found) {
        eng_store_abort(t);
        err = cdx_fail(CDX_ERR_NOT_FOUND, "index %s was deleted", o->ix->name);
        goto out;
    }
    if (eng_rec_header(cur.data, cur.len, &rh) || rh.version != base->version) {
        eng_store_abort(t);
        atomic_fetch_add(&e->conflicts, 1);
        goto out; /* someone else committed: rebase */
    }
    /*
     * The same version is not enough: after a lost tail another writer may have reused it for
     * another manifest (review L4). The head names its manifest: it must be the base's.
     */
    eng_buf hp;
    eng_buf_init(&hp);
    eng_head ch;
    if ((err = eng_op_unseal(o, HSM_P_MANIFEST, ENG_K_HEAD, eng_zero_token, base->version, cur.data,
                             cur.len, &rh, &hp)) ||
        (err = eng_head_decode(hp.data, hp.len, &ch))) {
        eng_buf_free(&hp);
        eng_store_abort(t);
        goto out;
    }
    eng_buf_free(&hp);
    if (memcmp(ch.manifest_token, base->token, ENG_TOKEN_LEN)) {
        eng_store_abort(t);
        atomic_fetch_add(&e->conflicts, 1);
        char id[2 * CDX_ID_LEN + 1];
        cdx_hex_encode(o->ix->id, CDX_ID_LEN, id);
        cdx_log(CDX_LOG_WARN, "eng_commit_fork",
                "index_id=%s version=%llu msg=\"the store's head at this version names another "
                "manifest than the one this write started from (a lost tail reused the version); "
                "rebasing\"",
                id, (unsigned long long)base->version);
        goto out; /* rebase on what the store holds */
    }
    /* Last, right before EXEC: a sweep may have taken records written a window ago. */
    int64_t age = o->wrote_since ? cdx_mono_ms() - o->wrote_since : 0;
    if (age >= eng_write_window_ms(e)) {
        eng_store_abort(t);
        cdx_fail(CDX_ERR_FAILED_PRECONDITION,
                 "index %s: the records this commit names were written %lld ms ago, not less "
                 "than [engine] gc_grace_ms (%u): a sweep may have deleted the first of them, so "
                 "nothing was committed; retry, and raise gc_grace_ms above the time this "
                 "operation takes",
                 o->ix->name, (long long)age, e->cfg.gc_grace_ms);
        err = ENG_AGED;
        goto out;
    }
    if ((err = eng_store_commit(t, kv, nkv, committed)))
        goto out;
    if (!*committed) {
        atomic_fetch_add(&e->conflicts, 1);
        goto out;
    }
    atomic_fetch_add(&e->commits, 1);
    err = adopt(o, nm, version);
out:
    eng_bg_join(&mjob); /* before its record is freed; an error was reported already */
    eng_vals_free(&cur, 1);
    eng_buf_free(&pt);
    eng_buf_free(&mrec);
    eng_buf_free(&hrec);
    for (unsigned b = 0; b < ENG_BUCKETS; b++)
        eng_buf_free(&brec[b]);
    return err;
}

cdx_err eng_commit(op *o, const eng_manifest *base, eng_manifest *nm, eng_bucketset *bs,
                   bool *committed)
{
    return eng_commit_joined(o, base, nm, bs, NULL, NULL, committed);
}

/*
 * After a lost commit: wait a random 0..2^attempt ms (capped at 64 ms) so
 * two writers that keep colliding fall out of step instead of starving one.
 */
void eng_backoff(unsigned attempt)
{
    uint8_t r[2] = {0, 0};
    (void)eng_random(r, 2);
    unsigned cap = attempt < 6 ? 1u << attempt : 64u;
    unsigned ms = ((unsigned)r[0] << 8 | r[1]) % (cap + 1);
    struct timespec ts = {0, (long)ms * 1000000L};
    nanosleep(&ts, NULL);
}
