/*
 * Index lifecycle: create (claim the name, provision the key, write the
 * first state), describe, list, delete, purge.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "cdx_hex.h"
#include "cdx_log.h"
#include "eng_cache.h"
#include "eng_head.h"
#include "eng_hwmark.h"
#include "hsm_mark.h"
#include "eng_int.h"
#include "eng_op.h"
#include "eng_store.h"
#include "hsm_import.h"
#include "hsm_provenance.h"

static void fill_info(const eng_catentry *c, const eng_manifest *m, eng_index_info *out)
{
    memset(out, 0, sizeof(*out));
    snprintf(out->name, sizeof(out->name), "%s", c->name);
    snprintf(out->state, sizeof(out->state), "%s",
             c->state == ENG_ST_READY      ? "ready"
             : c->state == ENG_ST_CREATING ? "creating"
                                           : "deleting");
    memcpy(out->id, c->id, CDX_ID_LEN);
    out->dimension = c->dim;
    out->metric = (eng_metric)c->metric;
    out->type = (eng_index_type)c->type;
    out->n_lists = c->n_lists;
    memcpy(out->kcv, c->kcv, CDX_KCV_LEN);
    out->key_source = (eng_key_source)c->key_source;
    out->owned = c->owned;
    out->prov = c->prov;
    out->key_gen = c->key_gen;
    if (c->next_has == ENG_NEXT_PENDING) {
        out->new_key_gen = c->next_gen;
        memcpy(out->new_key_kcv, c->next_kcv, CDX_KCV_LEN);
    }
    out->created_ms = c->created_ms;
    snprintf(out->status, sizeof(out->status), "ok");
    if (m) {
        if (c->state == ENG_ST_READY && m->rot_target)
            snprintf(out->state, sizeof(out->state), "rotating");
        out->key_epoch = m->epoch;
        out->min_epoch = m->min_epoch;
        out->rotate_to = m->rot_target;
        out->rotate_started_ms = m->rot_started_ms;
        out->rotated_ms = m->rotated_ms;
        out->n_clusters = m->n_clusters;
        out->count = m->count;
        out->version = m->version;
        uint64_t rows = 0;
        for (uint32_t i = 0; i < eng_manifest_nclusters(m); i++) {
            const eng_cluster *cl = &m->clusters[i];
            out->segments += cl->nseg;
            for (uint32_t j = 0; j < cl->nseg; j++) {
                rows += cl->seg[j].rows;
                out->segment_bytes +=
                    (uint64_t)cl->seg[j].search_len + cl->seg[j].vectors_len + cl->seg[j].meta_len;
            }
        }
        out->dead_rows = rows > m->count ? rows - m->count : 0;
    }
}

/* The status of an entry whose create or delete did not finish, with what to do. */
static void incomplete_status(const eng_catentry *c, eng_index_info *out)
{
    if (c->state == ENG_ST_READY)
        return;
    char id[2 * CDX_ID_LEN + 1];
    cdx_hex_encode(c->id, CDX_ID_LEN, id);
    snprintf(out->status, sizeof(out->status), "incomplete");
    if (c->state == ENG_ST_CREATING)
        snprintf(out->status_message, sizeof(out->status_message),
                 "the create of index %s did not finish; repeat it with the same arguments, or "
                 "remove it: `cipherdex index delete %s --confirm %s` (admin)",
                 c->name, c->name, id);
    else
        snprintf(out->status_message, sizeof(out->status_message),
                 "the delete of index %s did not finish; repeat it: `cipherdex index delete %s "
                 "--confirm %s` (admin)",
                 c->name, c->name, id);
}

static cdx_err write_first_state(op *o, const eng_catentry *c, uint64_t v0)
{
    cdx_err err;
    eng_manifest m = {0};
    eng_cluster cl = {0};
    eng_buf pt, mrec, hrec;
    eng_buf_init(&pt);
    eng_buf_init(&mrec);
    eng_buf_init(&hrec);
    m.version = v0;
    m.dim = c->dim;
    m.metric = c->metric;
    m.type = c->type;
    m.n_lists = c->n_lists;
    m.clusters = &cl;
    if ((err = eng_random(m.token, ENG_TOKEN_LEN)))
        goto out;
    eng_manifest_encode(&m, &pt);
    if (!eng_buf_ok(&pt) ||
        (err = eng_op_seal(o, HSM_P_MANIFEST, ENG_K_MANIFEST, m.token, v0, pt.data, pt.len, &mrec)))
        goto out;
    eng_head h = {.version = v0, .manifest_len = (uint32_t)mrec.len};
    memcpy(h.manifest_token, m.token, ENG_TOKEN_LEN);
    eng_buf_free(&pt);
    eng_head_encode(&h, &pt);
    if ((err = eng_op_seal(o, HSM_P_MANIFEST, ENG_K_HEAD, eng_zero_token, v0, pt.data, pt.len,
                           &hrec)))
        goto out;
    char mkey[CDX_STORE_KEY_MAX], hkey[CDX_STORE_KEY_MAX];
    eng_key_rec(mkey, c->id, ENG_KEY_MANIFEST, m.token);
    eng_key_head(hkey, c->id);
    eng_kv kv[2] = {{mkey, mrec.data, mrec.len}, {hkey, hrec.data, hrec.len}};
    bool created[2];
    /* Manifest first: a head never points at nothing. An existing head = resumed creation. */
    if ((err = eng_store_setnx(o->e->cfg.store, kv, 2, created)))
        goto out;
out:
    eng_buf_free(&pt);
    eng_buf_free(&mrec);
    eng_buf_free(&hrec);
    return err;
}

/* Delete every store key of index `id` (both key families). */
static cdx_err remove_records(eng *e, const uint8_t id[CDX_ID_LEN], uint64_t *removed)
{
    char pat[2][ENG_KEY_PATTERN_MAX];
    eng_key_index_patterns(id, pat);
    for (int p = 0; p < 2; p++) {
        uint64_t cursor = 0;
        do {
            char **keys = NULL;
            size_t nk = 0;
            cdx_err err = eng_store_scan(e->cfg.store, pat[p], &cursor, &keys, &nk);
            if (err)
                return err;
            uint64_t d = 0;
            if (nk)
                err = eng_store_del(e->cfg.store, (const char *const *)keys, nk, &d);
            eng_keys_free(keys, nk);
            if (err)
                return err;
            if (removed)
                *removed += d;
        } while (cursor != 0);
    }
    return CDX_OK;
}

/*
 * The name of another catalog entry (not c's name) that holds c's id, or
 * (by_kcv) c's key by KCV when c has one: *found, and its name in other.
 * Errors: eng_cat_all's.
 */
static cdx_err other_holder(eng *e, const eng_catentry *c, bool by_kcv,
                            char other[CDX_INDEX_NAME_MAX + 1], bool *found)
{
    eng_catentry *all = NULL;
    size_t n = 0;
    *found = false;
    cdx_err err = eng_cat_all(e, &all, &n, NULL);
    if (err)
        return err;
    for (size_t i = 0; i < n && !*found; i++) {
        if (!strcmp(all[i].name, c->name))
            continue;
        *found = !memcmp(all[i].id, c->id, CDX_ID_LEN) ||
                 (by_kcv && c->has_kcv && all[i].has_kcv &&
                  !CRYPTO_memcmp(all[i].kcv, c->kcv, CDX_KCV_LEN));
        if (*found)
            snprintf(other, CDX_INDEX_NAME_MAX + 1, "%s", all[i].name);
    }
    free(all);
    return CDX_OK;
}

/* The name of the catalog entry a key claim names (*found false: none does). */
static cdx_err claim_holder_name(eng *e, const eng_keyclaim *k, char name[CDX_INDEX_NAME_MAX + 1],
                                 bool *found)
{
    eng_catentry *all = NULL;
    size_t n = 0;
    *found = false;
    cdx_err err = eng_cat_all(e, &all, &n, NULL);
    if (err)
        return err;
    for (size_t i = 0; i < n && !*found; i++)
        if ((*found = !memcmp(all[i].id, k->id, CDX_ID_LEN)))
            snprintf(name, CDX_INDEX_NAME_MAX + 1, "%s", all[i].name);
    free(all);
    return CDX_OK;
}

static cdx_err orphan_records(const uint8_t id[CDX_ID_LEN])
{
    char hx[2 * CDX_ID_LEN + 1];
    cdx_hex_encode(id, CDX_ID_LEN, hx);
    return cdx_fail(CDX_ERR_KEY_IN_USE,
                    "the store holds records of index %s (this key's index) but no catalog entry "
                    "names it: the entry was removed behind the appliance's back or lost with a "
                    "store restore; restore the store from a backup (adopting the key would take "
                    "over those records)",
                    hx);
}

/*
 * Before a new entry adopting key `id` is claimed: no other entry holds the
 * id, and the store holds no records of it (those of an index whose catalog
 * entry is gone). Errors: CDX_ERR_KEY_IN_USE, the store's and custody's.
 */
static cdx_err check_adopt_free(eng *e, const eng_create *r)
{
    eng_catentry c = {0};
    snprintf(c.name, sizeof(c.name), "%s", r->name);
    memcpy(c.id, r->adopt_id, CDX_ID_LEN);
    char other[CDX_INDEX_NAME_MAX + 1];
    bool found;
    cdx_err err = other_holder(e, &c, false, other, &found);
    if (err)
        return err;
    if (found)
        return cdx_fail(CDX_ERR_KEY_IN_USE, "the key already belongs to index %s", other);
    char hkey[CDX_STORE_KEY_MAX];
    eng_key_head(hkey, c.id);
    const char *keys[1] = {hkey};
    eng_val v = {0};
    if ((err = eng_store_mget(e->cfg.store, keys, 1, &v)))
        return err;
    found = v.found;
    eng_vals_free(&v, 1);
    return found ? orphan_records(c.id) : CDX_OK;
}

/*
 * Put c's key on the token (or find it there) and record its KCV in c.
 * *made = the key object was created by this call.
 */
static cdx_err provision_key(eng *e, const eng_create *r, eng_catentry *c, bool *made)
{
    hsm_key_ref k = {.kind = HSM_KEY_INDEX};
    memcpy(k.id, c->id, CDX_ID_LEN);
    uint8_t kcv[CDX_KCV_LEN];
    cdx_err err;
    *made = false;
    if (r->key_source == ENG_KEY_ADOPT) {
        err = hsm_index_key_adopt(e->cfg.custody, c->id, kcv);
    } else {
        err = hsm_key_kcv(e->cfg.custody, &k, kcv);
        if (err == CDX_OK) {
            /* Resuming: the key was made by an earlier attempt; check its template. */
            err = hsm_index_key_adopt(e->cfg.custody, c->id, kcv);
        } else if (err == CDX_ERR_KEY_NOT_FOUND) {
            if (r->key_source == ENG_KEY_UNWRAP)
                err = hsm_index_key_unwrap(e->cfg.custody, c->id, r->kek_name, r->wrapped,
                                           r->wrapped_len, kcv);
            else if (r->key_source == ENG_KEY_IMPORT)
                err = hsm_index_key_import(e->cfg.custody, c->id, r->import_key, kcv);
            else
                err = hsm_index_key_generate(e->cfg.custody, c->id, kcv);
            *made = err == CDX_OK;
        }
    }
    if (err)
        return err;
    if (c->has_kcv && CRYPTO_memcmp(c->kcv, kcv, CDX_KCV_LEN))
        return cdx_fail(CDX_ERR_KEY_REPLACED,
                        "the token key of index %s was replaced during "
                        "its creation",
                        c->name);
    memcpy(c->kcv, kcv, CDX_KCV_LEN);
    c->has_kcv = 1;
    return CDX_OK;
}

/* Record where c's key came from: its origin and what the token reports about it. */
static cdx_err record_provenance(eng *e, const eng_create *r, eng_catentry *c)
{
    hsm_key_ref k = {.kind = HSM_KEY_INDEX};
    memcpy(k.id, c->id, CDX_ID_LEN);
    hsm_key_facts f;
    cdx_err err = hsm_key_facts_read(e->cfg.custody, &k, &f);
    if (err)
        return err;
    eng_key_prov *p = &c->prov;
    memset(p, 0, sizeof(*p));
    p->origin = r->key_source == ENG_KEY_UNWRAP   ? ENG_ORIGIN_UNWRAPPED
                : r->key_source == ENG_KEY_ADOPT  ? ENG_ORIGIN_ADOPTED
                : r->key_source == ENG_KEY_IMPORT ? ENG_ORIGIN_IMPORTED
                                                  : ENG_ORIGIN_GENERATED;
    if (r->key_source == ENG_KEY_UNWRAP)
        snprintf(p->kek, sizeof(p->kek), "%s", r->kek_name);
    snprintf(p->serial, sizeof(p->serial), "%s", f.serial);
    snprintf(p->token_model, sizeof(p->token_model), "%s%s%s", f.manufacturer,
             f.manufacturer[0] && f.model[0] ? " " : "", f.model);
    /* The catalog stores printable ASCII only: a token's odd bytes become '?'. */
    for (char *q = p->serial; *q; q++)
        *q = *q < 0x20 || *q > 0x7e ? '?' : *q;
    for (char *q = p->token_model; *q; q++)
        *q = *q < 0x20 || *q > 0x7e ? '?' : *q;
    p->attrs = f.attrs;
    p->unknown = f.unknown;
    if (f.copyable_not_enforced)
        p->flags |= ENG_PROV_COPYABLE_NOT_ENFORCED;
    if (e->cfg.require_generated && hsm_facts_born_on_token(&f) != 1)
        return cdx_fail(CDX_ERR_FAILED_PRECONDITION,
                        "this appliance requires index keys generated on the token "
                        "([keys] require_generated): the token %s (CKA_LOCAL and "
                        "CKA_NEVER_EXTRACTABLE)",
                        hsm_facts_born_on_token(&f) == 0
                            ? "reports that this key existed outside it"
                            : "does not report whether this key was generated there");
    return CDX_OK;
}

/*
 * Make c the one holder of its key: no other entry has c's id or key (the
 * entries written before key claims existed), and c takes the key's claim.
 * *claimed = c holds the claim. Errors: CDX_ERR_KEY_IN_USE (naming the
 * holder), eng_keyclaim_take's, eng_cat_all's.
 */
static cdx_err hold_key(eng *e, op *ro, const eng_create *r, const eng_catentry *c, bool *claimed)
{
    char other[CDX_INDEX_NAME_MAX + 1];
    bool found;
    eng_keyclaim held;
    const char *how =
        r->key_source == ENG_KEY_UNWRAP ? " (this wrapped key was unwrapped for it before)" : "";
    cdx_err err = other_holder(e, c, true, other, &found);
    if (err)
        return err;
    if (found)
        return cdx_fail(CDX_ERR_KEY_IN_USE, "the key already belongs to index %s%s", other, how);
    if ((err = eng_keyclaim_take(ro, c, claimed, &held)))
        return err;
    if (*claimed)
        return CDX_OK;
    if ((err = claim_holder_name(e, &held, other, &found)))
        return err;
    if (found)
        return cdx_fail(CDX_ERR_KEY_IN_USE, "the key already belongs to index %s%s", other, how);
    return orphan_records(held.id);
}

/* Check a create request before anything is claimed. Errors: CDX_ERR_INVALID_ARGUMENT. */
static cdx_err check_create(const eng_create *r)
{
    cdx_err err = eng_check_name(r->name);
    if (err)
        return err;
    if (r->dimension == 0 || r->dimension > CDX_DIM_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "dimension must be 1-%d", CDX_DIM_MAX);
    if (!eng_metric_name(r->metric) || !strcmp(eng_metric_name(r->metric), "unknown"))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "metric must be euclidean, squared_euclidean, "
                                                  "cosine or inner_product");
    if (strcmp(eng_index_type_name(r->type), "unknown") == 0)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "index type must be ivfflat or ivfsq8");
    if (r->n_lists > CDX_NLISTS_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "n_lists must be at most %d", CDX_NLISTS_MAX);
    if (r->key_source > ENG_KEY_IMPORT)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "unknown key source");
    if (r->key_source == ENG_KEY_IMPORT && !r->import_key)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "importing needs the key");
    if (r->key_source == ENG_KEY_UNWRAP && (!r->kek_name || !r->wrapped))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "unwrapping needs a KEK name and a wrapped key");
    return CDX_OK;
}

/* An existing entry of the name: resumable only as an unfinished creation with the same shape. */
static cdx_err check_resume(const eng_catentry *c, const eng_create *r)
{
    if (c->state == ENG_ST_READY)
        return cdx_fail(CDX_ERR_ALREADY_EXISTS, "an index named %s already exists", r->name);
    if (c->state == ENG_ST_DELETING)
        return cdx_fail(CDX_ERR_FAILED_PRECONDITION,
                        "index %s is being deleted; finish the delete first", r->name);
    if (c->dim != r->dimension || c->metric != r->metric || c->type != r->type ||
        c->n_lists != r->n_lists || c->key_source != r->key_source)
        return cdx_fail(CDX_ERR_ALREADY_EXISTS,
                        "an unfinished creation of %s with other parameters exists; "
                        "delete it first",
                        r->name);
    cdx_log(CDX_LOG_INFO, "eng_create_resume", "msg=\"resuming an unfinished creation\"");
    return CDX_OK;
}

/* A new entry for r in state creating (a fresh random id unless adopting). Errors: hsm_random's. */
static cdx_err new_entry(eng *e, const eng_create *r, eng_catentry *c)
{
    cdx_err err;
    memset(c, 0, sizeof(*c));
    c->state = ENG_ST_CREATING;
    snprintf(c->name, sizeof(c->name), "%s", r->name);
    if (r->key_source == ENG_KEY_ADOPT)
        memcpy(c->id, r->adopt_id, CDX_ID_LEN);
    else if ((err = hsm_random(e->cfg.custody, c->id, CDX_ID_LEN)))
        return err;
    c->key_source = (uint8_t)r->key_source;
    c->owned = r->key_source != ENG_KEY_ADOPT;
    c->dim = r->dimension;
    c->metric = (uint8_t)r->metric;
    c->type = (uint8_t)r->type;
    c->n_lists = r->n_lists;
    c->created_ms = cdx_wall_ms();
    return CDX_OK;
}

/*
 * The first head and manifest of the new index c, and its high-water mark. Version 1, except for
 * an id used before (an adopted key deleted with its index, then adopted again): its versions go
 * on from where the dead index's mark ended, so a restored copy of the dead index reads as a
 * rollback of the new one, and the tombstone gives way to a new generation of the mark.
 */
static cdx_err first_state(eng *e, const eng_catentry *c)
{
    hsm_mark fm, tm = {0};
    bool tfound = false;
    cdx_err err = eng_hwmark_get(e->state_dir, c->id, &fm);
    if (!err && eng_marks_ms(e))
        err = hsm_mark_read(e->cfg.custody, c->id, &tm, &tfound);
    if (err)
        return err;
    bool reused = fm.deleted || (tfound && tm.deleted && tm.gen >= fm.gen);
    uint64_t v0 = reused ? (fm.version > tm.version ? fm.version : tm.version) + 1 : 1;
    struct idx tmp = {0};
    memcpy(tmp.id, c->id, CDX_ID_LEN);
    snprintf(tmp.name, sizeof(tmp.name), "%s", c->name);
    tmp.cat = *c;
    tmp.hw = fm.version; /* a resumed create never lowers the mark */
    tmp.gen = fm.gen;
    pthread_mutex_init(&tmp.mu, NULL);
    op io;
    eng_op_index(e, &tmp, &io);
    err = write_first_state(&io, c, v0);
    if (!err && reused) {
        hsm_mark w = {.version = v0, .gen = fm.gen > tm.gen ? fm.gen : tm.gen};
        if (eng_marks_ms(e))
            err = eng_marks_result(e, hsm_mark_set(e->cfg.custody, c->id, &w, &w));
        if (!err)
            err = eng_hwmark_put(e->state_dir, c->id, &w);
    } else if (!err) {
        err = eng_hw_raise(&io, v0);
    }
    io.ix = NULL; /* tmp is on the stack, not a counted registry entry */
    eng_op_end(&io);
    pthread_mutex_destroy(&tmp.mu);
    return err;
}

/*
 * Undo a create of c that failed after its name was claimed, so that a
 * failed create leaves nothing: the records it wrote (only under an id that
 * is c's alone: a key made for c, or one whose claim c holds), the key if
 * it was made for c, the claim, the entry. A step that fails stops the undo
 * and leaves the entry in state creating (resumable, deletable); the
 * caller's error detail is kept.
 */
static void create_undo(eng *e, op *ro, const eng_catentry *c, bool claimed)
{
    char detail[512];
    snprintf(detail, sizeof(detail), "%s", cdx_err_detail());
    cdx_err err = CDX_OK;
    const char *step = "";
    if (c->owned || claimed) {
        step = "records";
        if (!(err = remove_records(e, c->id, NULL))) {
            eng_hwmark_remove(e->state_dir, c->id);
            if (eng_marks_ms(e) && (err = hsm_mark_remove(e->cfg.custody, c->id)))
                step = "rollback mark";
        }
    }
    if (!err && c->owned) {
        hsm_key_ref k = {.kind = HSM_KEY_INDEX};
        memcpy(k.id, c->id, CDX_ID_LEN);
        step = "key";
        if ((err = hsm_key_destroy(e->cfg.custody, &k)) == CDX_ERR_KEY_NOT_FOUND)
            err = CDX_OK;
    }
    if (!err && claimed) {
        step = "key claim";
        err = eng_keyclaim_release(ro, c);
    }
    if (!err) {
        step = "catalog entry";
        err = eng_cat_remove(ro, c->name);
    }
    if (err)
        cdx_log(CDX_LOG_WARN, "eng_create_undo_failed", "step=\"%s\" code=%s msg=\"%.200s\"", step,
                cdx_err_name(err), cdx_err_detail());
    else
        cdx_log(CDX_LOG_INFO, "eng_create_undone", "owned=%d", c->owned);
    cdx_fail(CDX_OK, "%s", detail);
}

cdx_err eng_index_create(eng *e, const eng_create *r, eng_index_info *out)
{
    cdx_err err;
    if ((err = check_create(r)))
        return err;
    if (r->key_source == ENG_KEY_IMPORT && !e->cfg.allow_plaintext_import)
        return cdx_fail(CDX_ERR_FAILED_PRECONDITION,
                        "this appliance does not import plaintext keys ([keys] "
                        "allow_plaintext_import = no, the default): generate the key on the "
                        "token, or unwrap a KMS-wrapped key (--unwrap-kek)");
    op ro;
    eng_op_root(e, &ro);
    eng_catentry c;
    bool found = false, ok = false, made = false, claimed = false;
    for (int attempt = 0; attempt < 3 && !ok; attempt++) {
        if ((err = eng_cat_read(&ro, r->name, &c, &found)))
            goto out;
        if (found) {
            if ((err = check_resume(&c, r)))
                goto out;
            ok = true; /* resume */
            break;
        }
        /* Nothing is claimed for a key another index holds. */
        if (r->key_source == ENG_KEY_ADOPT && (err = check_adopt_free(e, r)))
            goto out;
        if ((err = new_entry(e, r, &c)) || (err = eng_cat_write(&ro, &c, true, &ok)))
            goto out;
    }
    if (!ok) {
        err = cdx_fail(CDX_ERR_ABORTED, "could not claim the name %s; retry", r->name);
        goto out;
    }
    if ((err = provision_key(e, r, &c, &made)) || (err = hold_key(e, &ro, r, &c, &claimed)) ||
        (err = record_provenance(e, r, &c)) || (err = first_state(e, &c))) {
        create_undo(e, &ro, &c, claimed);
        goto out;
    }
    c.state = ENG_ST_READY;
    if ((err = eng_cat_write(&ro, &c, false, &ok)))
        goto out;
    if (!ok) {
        err = cdx_fail(CDX_ERR_ABORTED, "index %s changed while it was being created; retry",
                       r->name);
        goto out;
    }
    cdx_log(CDX_LOG_INFO, "eng_index_created", "source=%d", (int)r->key_source);
    if (out)
        err = eng_index_describe(e, r->name, out);
out:
    eng_op_end(&ro);
    return err;
}

static cdx_err describe(op *o, eng_manifest *m, void *arg)
{
    eng_index_info *out = arg;
    pthread_mutex_lock(&o->ix->mu);
    eng_catentry c = o->ix->cat;
    pthread_mutex_unlock(&o->ix->mu);
    fill_info(&c, m, out);
    out->records_waiting = atomic_load(&o->ix->sweep_waiting);
    out->retired_bytes = atomic_load(&o->ix->sweep_waiting_bytes);
    out->last_compaction_ms = atomic_load(&o->ix->last_compact_ms);
    out->last_sweep_ms = atomic_load(&o->ix->last_sweep_ms);
    if (m->rot_target) { /* progress of this engine's run, if it runs one */
        out->rotate_done = atomic_load(&o->ix->rot_done);
        out->rotate_total = atomic_load(&o->ix->rot_total);
    }
    return CDX_OK;
}

static const char *index_status(cdx_err err);
static uint64_t rollback_store(eng *e, const char *name);

cdx_err eng_index_describe(eng *e, const char *name, eng_index_info *out)
{
    cdx_err err = eng_with_manifest(e, name, 0, describe, out);
    const char *status = index_status(err);
    if (!status && err != CDX_ERR_FAILED_PRECONDITION)
        return err;
    /* Not servable, or not ready: describe it from its catalog entry, saying what to do. */
    char detail[512];
    snprintf(detail, sizeof(detail), "%s", cdx_err_detail());
    op ro;
    eng_op_root(e, &ro);
    eng_catentry c;
    bool found = false;
    cdx_err cerr = eng_cat_read(&ro, name, &c, &found);
    eng_op_end(&ro);
    if (cerr)
        return cerr;
    if (!found || (!status && c.state == ENG_ST_READY))
        return cdx_fail(err, "%s", detail); /* the original error, with its detail */
    fill_info(&c, NULL, out);
    if (status) {
        snprintf(out->status, sizeof(out->status), "%s", status);
        snprintf(out->status_message, sizeof(out->status_message), "%s", detail);
        if (err == CDX_ERR_ROLLBACK_DETECTED)
            out->version = rollback_store(e, name);
    } else {
        incomplete_status(&c, out);
    }
    return CDX_OK;
}

cdx_err eng_index_dimension(eng *e, const char *name, uint32_t *dim)
{
    struct idx *ix = NULL;
    cdx_err err = eng_idx_get(e, name, &ix);
    if (!err)
        *dim = ix->cat.dim;
    eng_idx_put(ix);
    return err;
}

/* The IndexInfo status of an index that cannot be served; NULL for other errors. */
static const char *index_status(cdx_err err)
{
    switch (err) {
    case CDX_ERR_ROLLBACK_DETECTED:
        return "rollback_detected";
    case CDX_ERR_INTEGRITY:
        return "integrity";
    case CDX_ERR_KEY_NOT_FOUND:
        return "key_not_found";
    case CDX_ERR_KEY_REPLACED:
        return "key_replaced";
    case CDX_ERR_KEY_AMBIGUOUS:
        return "key_ambiguous";
    default:
        return NULL;
    }
}

/* The store's head version the last rollback check of `name` found (0 if unknown). */
static uint64_t rollback_store(eng *e, const char *name)
{
    struct idx *ix;
    uint64_t v = 0;
    if (eng_idx_get(e, name, &ix) == CDX_OK) {
        pthread_mutex_lock(&ix->mu);
        v = ix->in_rollback ? ix->rollback_store : 0;
        pthread_mutex_unlock(&ix->mu);
        eng_idx_put(ix);
    }
    return v;
}

static int cmp_info(const void *a, const void *b)
{
    return strcmp(((const eng_index_info *)a)->name, ((const eng_index_info *)b)->name);
}

cdx_err eng_index_list(eng *e, eng_index_info **out, size_t *n)
{
    return eng_index_list_all(e, out, n, NULL);
}

cdx_err eng_index_list_all(eng *e, eng_index_info **out, size_t *n, size_t *unreadable)
{
    eng_catentry *all = NULL;
    size_t na = 0;
    *out = NULL;
    *n = 0;
    if (unreadable)
        *unreadable = 0;
    cdx_err err = eng_cat_all(e, &all, &na, unreadable);
    if (err)
        return err;
    eng_index_info *v = calloc(na ? na : 1, sizeof(*v));
    if (!v) {
        free(all);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    size_t k = 0;
    for (size_t i = 0; i < na; i++) {
        if (all[i].state == ENG_ST_READY) {
            err = eng_index_describe(e, all[i].name, &v[k]);
            if (err == CDX_ERR_NOT_FOUND) /* deleted meanwhile */
                continue;
            const char *status = index_status(err);
            if (status) { /* this index is broken, not the appliance: list it as such */
                fill_info(&all[i], NULL, &v[k]);
                snprintf(v[k].status, sizeof(v[k].status), "%s", status);
                snprintf(v[k].status_message, sizeof(v[k].status_message), "%s", cdx_err_detail());
                if (err == CDX_ERR_ROLLBACK_DETECTED)
                    v[k].version = rollback_store(e, all[i].name);
                err = CDX_OK;
            }
            if (err)
                break;
        } else {
            fill_info(&all[i], NULL, &v[k]);
            incomplete_status(&all[i], &v[k]);
        }
        k++;
    }
    free(all);
    if (err) {
        free(v);
        return err;
    }
    qsort(v, k, sizeof(*v), cmp_info);
    *out = v;
    *n = k;
    return CDX_OK;
}

/* The tombstone of index id: in the state dir and, with token marks, on the token. */
static cdx_err eng_tombstone(eng *e, const uint8_t id[CDX_ID_LEN])
{
    hsm_mark m;
    cdx_err err = eng_hwmark_get(e->state_dir, id, &m);
    bool was = m.deleted;
    m.deleted = true;
    if (!err && !was)
        err = eng_hwmark_put(e->state_dir, id, &m);
    if (!err && eng_marks_ms(e))
        err = eng_marks_result(e, hsm_mark_raise(e->cfg.custody, id, &m, NULL));
    return err;
}

/* Whether this appliance (its state dir or the token's mark) knows index id as deleted. */
static cdx_err is_tombstoned(eng *e, const uint8_t id[CDX_ID_LEN], bool *tomb)
{
    hsm_mark m;
    cdx_err err = eng_hwmark_get(e->state_dir, id, &m);
    *tomb = !err && m.deleted;
    if (!err && !*tomb && eng_marks_ms(e)) {
        hsm_mark t;
        bool found;
        if (!(err = hsm_mark_read(e->cfg.custody, id, &t, &found)))
            *tomb = found && t.deleted && t.gen >= m.gen;
    }
    return err;
}

cdx_err eng_index_delete(eng *e, const char *name, const uint8_t confirm_id[CDX_ID_LEN])
{
    cdx_err err = eng_check_name(name);
    if (err)
        return err;
    op ro;
    eng_op_root(e, &ro);
    eng_catentry c;
    bool found = false, ok = false;
    if ((err = eng_cat_read(&ro, name, &c, &found)))
        goto out;
    if (!found) {
        err = cdx_fail(CDX_ERR_NOT_FOUND, "no index named %s", name);
        goto out;
    }
    if (!confirm_id || CRYPTO_memcmp(confirm_id, c.id, CDX_ID_LEN)) {
        err = cdx_fail(CDX_ERR_FAILED_PRECONDITION,
                       "the confirmation id does not match index %s; pass its id (describe "
                       "shows it) to confirm the deletion",
                       name);
        goto out;
    }
    /*
     * An entry sharing its id with another (left by a failed create before key
     * claims existed) owns neither the records nor the key: only the entry goes.
     */
    char other[CDX_INDEX_NAME_MAX + 1];
    bool alias = false;
    if ((err = other_holder(e, &c, false, other, &alias)))
        goto out;
    if (alias) {
        if ((err = eng_cat_remove(&ro, name)))
            goto out;
        cdx_log(CDX_LOG_WARN, "eng_index_deleted",
                "records=0 alias=1 msg=\"the entry shared its index id with another index; "
                "only the entry was removed\"");
        goto out;
    }
    hsm_key_ref k = {.kind = HSM_KEY_INDEX, .gen = c.key_gen};
    memcpy(k.id, c.id, CDX_ID_LEN);
    if (c.state != ENG_ST_DELETING) {
        /* Like every operation, deletion needs the key: prove it first. */
        if (c.state == ENG_ST_READY && (err = hsm_key_check(e->cfg.custody, &k, c.kcv))) {
            cdx_prefix(err, "index %s: ", name);
            goto out;
        }
        c.state = ENG_ST_DELETING;
        if ((err = eng_cat_write(&ro, &c, false, &ok)))
            goto out;
        if (!ok) {
            err = cdx_fail(CDX_ERR_ABORTED, "index %s changed during the delete; retry", name);
            goto out;
        }
    }
    /* The tombstone first: from now on a restored copy of the index is refused, here and,
     * through the token's mark, on every appliance (docs/ADMIN.md "Rollback marks"). */
    if ((err = eng_tombstone(e, c.id)))
        goto out;
    eng_idx_forget(e, c.id);
    if (c.owned) {
        err = hsm_key_destroy(e->cfg.custody, &k);
        if (err == CDX_ERR_KEY_NOT_FOUND)
            err = CDX_OK; /* destroyed by an earlier attempt */
        if (err)
            goto out;
    }
    /* A --new-key rotation's other key: the pending new one (generated for the index), or the
     * retired old one if the index owned it. */
    eng_catentry other_key = c;
    if (c.next_has != ENG_NEXT_NONE) {
        hsm_key_ref nk = {.kind = HSM_KEY_INDEX, .gen = c.next_gen};
        memcpy(nk.id, c.id, CDX_ID_LEN);
        if (c.next_has == ENG_NEXT_PENDING || c.next_epoch) {
            err = hsm_key_destroy(e->cfg.custody, &nk);
            if (err == CDX_ERR_KEY_NOT_FOUND)
                err = CDX_OK;
            if (err)
                goto out;
        }
        memcpy(other_key.kcv, c.next_kcv, CDX_KCV_LEN);
        other_key.has_kcv = 1;
    }
    /* The key is gone: nothing stored can be decrypted any more. Clean up. */
    eng_cache_clear(e->cache);
    uint64_t removed = 0;
    if ((err = remove_records(e, c.id, &removed)))
        goto out;
    if ((err = eng_keyclaim_release(&ro, &c)) ||
        (c.next_has != ENG_NEXT_NONE && (err = eng_keyclaim_release(&ro, &other_key))) ||
        (err = eng_cat_remove(&ro, name)))
        goto out;
    cdx_log(CDX_LOG_INFO, "eng_index_deleted", "records=%llu owned=%d", (unsigned long long)removed,
            c.owned);
out:
    eng_op_end(&ro);
    return err;
}

static bool id_in(const eng_catentry *all, size_t n, const uint8_t id[CDX_ID_LEN])
{
    for (size_t j = 0; j < n; j++)
        if (!memcmp(all[j].id, id, CDX_ID_LEN))
            return true;
    return false;
}

/*
 * One scan of every record key. Without `victims`: collect into *ids (up to
 * CDX_PURGE_IDS_MAX, the rest waits for the next purge) the distinct index
 * ids no entry of all[] has. With `victims` (*n of them): delete the keys of
 * those ids, counting into *rm.
 */
static cdx_err purge_scan(eng *e, const eng_catentry *all, size_t na, uint8_t (**ids)[CDX_ID_LEN],
                          size_t *n, uint64_t *rm, uint8_t (*victims)[CDX_ID_LEN])
{
    uint64_t cursor = 0;
    cdx_err err = CDX_OK;
    size_t cap = victims ? *n : 0;
    if (!victims) {
        *ids = NULL;
        *n = 0;
    }
    while (!err) {
        char **keys = NULL;
        size_t nk = 0;
        if ((err = eng_store_scan(e->cfg.store, ENG_KEY_ALL_PATTERN, &cursor, &keys, &nk)))
            break;
        for (size_t i = 0; i < nk && !err; i++) {
            uint8_t id[CDX_ID_LEN];
            if (!eng_key_parse_index_id(keys[i], id)) /* catalog keys included */
                continue;
            bool listed = false;
            for (size_t j = 0; j < *n && !listed; j++)
                listed = !memcmp((*ids)[j], id, CDX_ID_LEN);
            if (victims) {
                if (listed) {
                    uint64_t d = 0;
                    const char *one[1] = {keys[i]};
                    err = eng_store_del(e->cfg.store, one, 1, &d);
                    *rm += d;
                }
                continue;
            }
            if (listed || id_in(all, na, id) || *n >= CDX_PURGE_IDS_MAX)
                continue;
            if (*n == cap) {
                size_t nc = cap ? cap * 2 : 16;
                uint8_t(*p)[CDX_ID_LEN] = realloc(*ids, nc * sizeof(**ids));
                if (!p) {
                    err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
                    break;
                }
                *ids = p;
                cap = nc;
            }
            memcpy((*ids)[(*n)++], id, CDX_ID_LEN);
        }
        eng_keys_free(keys, nk);
        if (cursor == 0)
            break;
    }
    return err;
}

struct purge_claims {
    eng *e;
    const eng_catentry *all;
    size_t n;
    uint64_t removed;
};

static cdx_err purge_claim(void *arg, const char *key, const eng_keyclaim *k, cdx_err kerr)
{
    struct purge_claims *pc = arg;
    bool known = false;
    for (size_t j = 0; j < pc->n && !known && !kerr; j++)
        known = !memcmp(pc->all[j].id, k->id, CDX_ID_LEN);
    if (known)
        return CDX_OK;
    uint64_t d = 0;
    const char *one[1] = {key};
    cdx_err err = eng_store_del(pc->e->cfg.store, one, 1, &d);
    pc->removed += d;
    return err;
}

cdx_err eng_purge(eng *e, uint64_t *removed)
{
    eng_catentry *all = NULL;
    size_t na = 0;
    uint64_t rm = 0;
    cdx_err err = eng_cat_all(e, &all, &na, NULL);
    if (err)
        return err;
    op ro;
    eng_op_root(e, &ro);
    for (size_t i = 0; i < na && !err; i++) {
        /* The key the entry names now (a --new-key rotation moved it to generation key_gen). */
        hsm_key_ref k = {.kind = HSM_KEY_INDEX, .gen = all[i].key_gen};
        memcpy(k.id, all[i].id, CDX_ID_LEN);
        uint8_t kcv[CDX_KCV_LEN];
        /* A create in progress (it may not have made its key yet) is left alone. */
        if (all[i].state == ENG_ST_CREATING &&
            all[i].created_ms + e->cfg.gc_grace_ms > cdx_wall_ms())
            continue;
        bool tomb = false;
        if ((err = is_tombstoned(e, all[i].id, &tomb)))
            break;
        /* A restored copy of an index deleted earlier goes like one whose key is gone. */
        if (!tomb && hsm_key_kcv(e->cfg.custody, &k, kcv) != CDX_ERR_KEY_NOT_FOUND)
            continue;
        eng_idx_forget(e, all[i].id);
        if (!(err = remove_records(e, all[i].id, &rm)) &&
            !(err = eng_keyclaim_release(&ro, &all[i])) &&
            !(err = eng_cat_remove(&ro, all[i].name)))
            rm++; /* the mark stays: a later restore is refused too */
    }
    /*
     * Records no catalog entry references: a scan for their ids, a fresh catalog read, then a
     * scan deleting the records of the ids still unreferenced. A create claims its name before
     * it writes a record, so one that started after the first catalog read is seen by the second.
     */
    uint8_t(*orph)[CDX_ID_LEN] = NULL;
    size_t no = 0;
    if (!err)
        err = purge_scan(e, all, na, &orph, &no, NULL, NULL);
    if (!err && no) {
        free(all);
        all = NULL;
        na = 0;
        if (!(err = eng_cat_all(e, &all, &na, NULL))) {
            size_t k = 0;
            for (size_t i = 0; i < no; i++)
                if (!id_in(all, na, orph[i]))
                    memcpy(orph[k++], orph[i], CDX_ID_LEN);
            no = k;
        }
    }
    if (!err && no)
        err = purge_scan(e, NULL, 0, &orph, &no, &rm, orph);
    free(orph);
    /* Key claims no catalog entry holds (or that do not open). */
    struct purge_claims pc = {.e = e, .all = all, .n = na};
    if (!err)
        err = eng_keyclaim_each(&ro, purge_claim, &pc);
    rm += pc.removed;
    eng_op_end(&ro);
    free(all);
    if (removed)
        *removed = rm;
    if (!err)
        cdx_log(CDX_LOG_INFO, "eng_purge", "removed=%llu", (unsigned long long)rm);
    return err;
}
