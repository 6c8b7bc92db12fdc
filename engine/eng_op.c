/*
 * The per-request operation context: subkeys and sealers, sealing and
 * opening records, and the frame of the public operations (eng_op.h).
 */
#include <string.h>

#include "eng_catalog.h"
#include "eng_head.h"
#include "eng_op.h"

void eng_keyset_from_cat(eng_keyset *ks, const eng_catentry *c)
{
    memset(ks, 0, sizeof(*ks));
    ks->gen = c->key_gen;
    memcpy(ks->kcv, c->kcv, CDX_KCV_LEN);
    ks->next_has = c->next_has;
    ks->next_gen = c->next_gen;
    memcpy(ks->next_kcv, c->next_kcv, CDX_KCV_LEN);
    ks->next_epoch = c->next_epoch;
}

/* The key an index op seals epoch ep's records with. */
static void op_pick(const op *o, uint32_t ep, uint32_t *gen, uint8_t kcv[CDX_KCV_LEN])
{
    if (o->key.kind != HSM_KEY_INDEX) {
        *gen = o->key.gen;
        memcpy(kcv, o->kcv, CDX_KCV_LEN);
    } else if (o->ks.next_has == ENG_NEXT_PENDING && ep >= o->ks.next_epoch) {
        *gen = o->ks.next_gen;
        memcpy(kcv, o->ks.next_kcv, CDX_KCV_LEN);
    } else {
        *gen = o->ks.gen;
        memcpy(kcv, o->ks.kcv, CDX_KCV_LEN);
    }
}

/* The generation of the op's key with KCV kcv; false if the op knows none. */
static bool op_gen_of(const op *o, const uint8_t *kcv, uint32_t *gen)
{
    if (o->key.kind != HSM_KEY_INDEX)
        return !memcmp(kcv, o->kcv, CDX_KCV_LEN) && ((*gen = o->key.gen), true);
    if (!memcmp(kcv, o->ks.kcv, CDX_KCV_LEN)) {
        *gen = o->ks.gen;
        return true;
    }
    if (o->ks.next_has && !memcmp(kcv, o->ks.next_kcv, CDX_KCV_LEN)) {
        *gen = o->ks.next_gen;
        return true;
    }
    return false;
}

/* Release the main slot's sealers and subkeys. */
static void main_release(op *o)
{
    eng_op_sealers_free(o);
    for (int i = 0; i < ENG_NPURPOSE; i++)
        hsm_subkey_release(o->sk[i]);
    memset(o->sk, 0, sizeof(o->sk));
}

void eng_op_rekey(op *o)
{
    uint32_t gen;
    uint8_t kcv[CDX_KCV_LEN];
    op_pick(o, o->epoch, &gen, kcv);
    if (gen == o->key.gen && !memcmp(kcv, o->kcv, CDX_KCV_LEN))
        return;
    main_release(o);
    o->key.gen = gen;
    memcpy(o->kcv, kcv, CDX_KCV_LEN);
}

cdx_err eng_op_keys_refresh(op *o)
{
    if (!o->ix || o->worker)
        return CDX_OK;
    op ro;
    eng_op_root(o->e, &ro);
    eng_catentry c;
    bool found = false;
    cdx_err err = eng_cat_read(&ro, o->ix->name, &c, &found);
    eng_op_end(&ro);
    if (err)
        return err;
    o->ks_fresh = true;
    if (!found || memcmp(c.id, o->ix->id, CDX_ID_LEN))
        return CDX_OK; /* deleted or replaced: the head read says so */
    eng_idx_set_keys(o->ix, &c);
    eng_keyset_from_cat(&o->ks, &c);
    eng_op_rekey(o);
    return CDX_OK;
}

cdx_err eng_op_key(op *o, hsm_purpose p, hsm_subkey **out)
{
    if (!o->sk[p]) {
        uint64_t t0 = cdx_mono_ns();
        cdx_err err = hsm_subkey_get(o->e->cfg.custody, &o->key, o->kcv, p, o->epoch, &o->sk[p]);
        eng_stage_add(&o->e->ns_keys, ENG_STAGE_KEYS, cdx_mono_ns() - t0);
        if (err)
            return err;
    }
    *out = o->sk[p];
    return CDX_OK;
}

/* Release the spare slot's subkeys. */
static void spare_release(op *o)
{
    for (int i = 0; i < ENG_NPURPOSE; i++)
        hsm_subkey_release(o->xsk[i]);
    memset(o->xsk, 0, sizeof(o->xsk));
}

/*
 * The subkey for purpose p at epoch ep: the op's own epoch, or the spare
 * slot (fetched on the op's thread only: worker copies share the op's
 * subkeys and must not fetch).
 */
static cdx_err op_key_at(op *o, hsm_purpose p, uint32_t ep, const uint8_t *hkcv, hsm_subkey **out,
                         const uint8_t **kcv)
{
    *kcv = o->kcv;
    if (ep == o->epoch && !memcmp(hkcv, o->kcv, CDX_KCV_LEN))
        return eng_op_key(o, p, out);
    bool own = !o->worker && pthread_equal(o->owner, pthread_self());
    uint32_t gen = o->key.gen;
    bool known = op_gen_of(o, hkcv, &gen);
    if (!known && own && o->ix && !o->ks_fresh) {
        /* A key this op does not know: a --new-key rotation completed elsewhere. */
        cdx_err err = eng_op_keys_refresh(o);
        if (err)
            return err;
        known = op_gen_of(o, hkcv, &gen);
        if (ep == o->epoch && !memcmp(hkcv, o->kcv, CDX_KCV_LEN))
            return eng_op_key(o, p, out);
    }
    if (!known) /* opened as before with the op's own key and KCV: refused by eng_rec_open */
        gen = o->key.gen, hkcv = o->kcv;
    if (ep == o->epoch && gen == o->key.gen)
        return eng_op_key(o, p, out);
    if (!own)
        return cdx_fail(CDX_ERR_INTEGRITY,
                        "a record sealed under key epoch %u in a state of key epoch %u", ep,
                        o->epoch);
    if (o->xepoch != ep || o->xkey.gen != gen || memcmp(o->xkcv, hkcv, CDX_KCV_LEN)) {
        spare_release(o);
        o->xepoch = ep;
        o->xkey = o->key;
        o->xkey.gen = gen;
        memcpy(o->xkcv, hkcv, CDX_KCV_LEN);
    }
    *kcv = o->xkcv;
    if (!o->xsk[p]) {
        uint64_t t0 = cdx_mono_ns();
        cdx_err err = hsm_subkey_get(o->e->cfg.custody, &o->xkey, o->xkcv, p, ep, &o->xsk[p]);
        eng_stage_add(&o->e->ns_keys, ENG_STAGE_KEYS, cdx_mono_ns() - t0);
        if (err)
            return err;
    }
    *out = o->xsk[p];
    return CDX_OK;
}

void eng_op_set_epoch(op *o, uint32_t ep)
{
    if (ep == o->epoch) {
        eng_op_rekey(o);
        return;
    }
    uint32_t gen;
    uint8_t kcv[CDX_KCV_LEN];
    op_pick(o, ep, &gen, kcv);
    eng_op_sealers_free(o);
    if (o->xepoch == ep && o->xkey.gen == gen && !memcmp(o->xkcv, kcv, CDX_KCV_LEN)) {
        /* swap: the spare slot already holds some of ep's subkeys */
        for (int i = 0; i < ENG_NPURPOSE; i++) {
            hsm_subkey *t = o->sk[i];
            o->sk[i] = o->xsk[i];
            o->xsk[i] = t;
        }
        o->xepoch = o->epoch;
        o->xkey = o->key;
        memcpy(o->xkcv, o->kcv, CDX_KCV_LEN);
    } else {
        main_release(o);
    }
    o->key.gen = gen;
    memcpy(o->kcv, kcv, CDX_KCV_LEN);
    o->epoch = ep;
}

void eng_op_set_state(op *o, const eng_manifest *m)
{
    eng_op_set_epoch(o, m->epoch);
    o->min_epoch = m->min_epoch;
    eng_tl_epoch = m->epoch;
    if (o->ix) {
        atomic_store(&o->ix->epoch, m->epoch);
        atomic_store(&o->ix->min_epoch, m->min_epoch);
    }
}

/* The op's sealer for purpose p (one per op and thread: see op_worker). */
cdx_err eng_op_sealer(op *o, hsm_purpose p, eng_sealer **out)
{
    hsm_subkey *k;
    cdx_err err = eng_op_key(o, p, &k);
    if (err)
        return err;
    if (!o->sl[p].mac && (err = eng_sealer_init(&o->sl[p], k)))
        return err;
    *out = &o->sl[p];
    return CDX_OK;
}

void eng_op_sealers_free(op *o)
{
    for (int i = 0; i < ENG_NPURPOSE; i++)
        eng_sealer_free(&o->sl[i]);
}

void eng_op_end(op *o)
{
    eng_op_sealers_free(o); /* their OpenSSL contexts are keyed with the subkeys */
    for (int i = 0; i < ENG_NPURPOSE; i++)
        hsm_subkey_release(o->sk[i]);
    memset(o->sk, 0, sizeof(o->sk));
    spare_release(o);
    eng_idx_put(o->ix); /* the reference eng_op_index took over */
    o->ix = NULL;
}

/*
 * A copy of o for another thread: it shares o's subkeys (fetched beforehand:
 * a worker must not fetch) and has its own sealers. End with op_sealers_free.
 */
void eng_op_worker(const op *o, op *w)
{
    *w = *o;
    memset(w->sl, 0, sizeof(w->sl));
    memset(w->xsk, 0, sizeof(w->xsk)); /* not shared: a worker fetches none */
    w->xepoch = UINT32_MAX;
    w->worker = true;
}

/* Seal a record of this index. */
cdx_err eng_op_seal(op *o, hsm_purpose p, eng_kind kind, const uint8_t tok[ENG_TOKEN_LEN],
                    uint64_t version, const uint8_t *pt, size_t len, eng_buf *out)
{
    eng_sealer *s;
    cdx_err err = eng_op_sealer(o, p, &s);
    if (err)
        return err;
    eng_rec_id id = {
        .scope = o->key.id, .kind = kind, .token = tok, .epoch = o->epoch, .version = version};
    return eng_rec_seal_s(s, &id, cdx_wall_ms(), o->kcv, pt, len, out);
}

/* Open a record of this index; version UINT64_MAX = take the header's. */
cdx_err eng_op_unseal(op *o, hsm_purpose p, eng_kind kind, const uint8_t tok[ENG_TOKEN_LEN],
                      uint64_t version, const uint8_t *rec, size_t len, eng_rec_hdr *h,
                      eng_buf *out)
{
    hsm_subkey *k;
    eng_rec_hdr hh;
    cdx_err err = eng_rec_header(rec, len, &hh);
    if (err)
        return err;
    if (hh.epoch < o->min_epoch)
        return cdx_fail(CDX_ERR_INTEGRITY,
                        "%s record sealed under key epoch %u, below the index's minimum readable "
                        "epoch %u (retired by a key rotation: a restored or replayed record)",
                        eng_kind_name(kind), hh.epoch, o->min_epoch);
    const uint8_t *kcv;
    if ((err = op_key_at(o, p, hh.epoch, hh.kcv, &k, &kcv)))
        return err;
    if (version == UINT64_MAX)
        version = hh.version;
    eng_rec_id id = {
        .scope = o->key.id, .kind = kind, .token = tok, .epoch = hh.epoch, .version = version};
    uint64_t t0 = cdx_mono_ns();
    err = eng_rec_open(k, &id, kcv, rec, len, h ? h : &hh, out);
    eng_stage_add(&o->e->ns_decrypt, ENG_STAGE_DECRYPT, cdx_mono_ns() - t0);
    return err;
}

cdx_err eng_op_fetch_open(op *o, const char *key, hsm_purpose p, eng_kind kind,
                          const uint8_t tok[ENG_TOKEN_LEN], uint64_t version, eng_rec_hdr *h,
                          eng_buf *out, bool *found)
{
    const char *keys[1] = {key};
    eng_val v = {0};
    cdx_err err = eng_store_mget(o->e->cfg.store, keys, 1, &v);
    if (err)
        return err;
    *found = v.found;
    if (v.found)
        err = eng_op_unseal(o, p, kind, tok, version, v.data, v.len, h, out);
    eng_vals_free(&v, 1);
    return err;
}

void eng_op_root(eng *e, op *o)
{
    memset(o, 0, sizeof(*o));
    o->e = e;
    o->key = e->root;
    memcpy(o->kcv, e->root_kcv, CDX_KCV_LEN);
    o->xkey = o->key;
    memcpy(o->xkcv, o->kcv, CDX_KCV_LEN);
    o->owner = pthread_self();
    o->xepoch = UINT32_MAX;
}

void eng_op_index(eng *e, struct idx *ix, op *o)
{
    memset(o, 0, sizeof(*o));
    o->e = e;
    o->ix = ix;
    o->key.kind = HSM_KEY_INDEX;
    memcpy(o->key.id, ix->id, CDX_ID_LEN);
    pthread_mutex_lock(&ix->mu);
    eng_keyset_from_cat(&o->ks, &ix->cat);
    pthread_mutex_unlock(&ix->mu);
    /* The epoch last seen: ids tokenised before the state is read are then usually right
     * (callers re-tokenise when eng_op_set_state changes it). */
    o->epoch = atomic_load(&ix->epoch);
    op_pick(o, o->epoch, &o->key.gen, o->kcv);
    o->xkey = o->key;
    memcpy(o->xkcv, o->kcv, CDX_KCV_LEN);
    o->min_epoch = atomic_load(&ix->min_epoch);
    o->owner = pthread_self();
    o->xepoch = UINT32_MAX;
    eng_tl_epoch = o->epoch;
    memcpy(eng_tl_index, ix->id, CDX_ID_LEN);
    eng_tl_index_set = true;
}

/* Resolve `name` and start an operation on it. */
cdx_err eng_op_open(eng *e, const char *name, op *o)
{
    struct idx *ix;
    cdx_err err = eng_idx_get(e, name, &ix);
    if (!err)
        eng_op_index(e, ix, o);
    return err;
}

cdx_err eng_with_op(eng *e, const char *name, unsigned flags, eng_op_fn fn, void *arg)
{
    op o;
    cdx_err err = eng_op_open(e, name, &o);
    if (err)
        return err;
    err = fn(&o, arg);
    eng_op_end(&o);
    return flags & ENG_WITH_NAMED ? eng_in_index(err, name) : err;
}

cdx_err eng_with_manifest(eng *e, const char *name, unsigned flags, eng_manifest_fn fn, void *arg)
{
    op o;
    cdx_err err = eng_op_open(e, name, &o);
    if (err)
        return err;
    eng_manifest *m = NULL;
    if (!(err = eng_load_state(&o, flags & ENG_WITH_FRESH, 0, &m)))
        err = fn(&o, m, arg);
    eng_manifest_unref(m);
    eng_op_end(&o);
    return flags & ENG_WITH_NAMED ? eng_in_index(err, name) : err;
}
