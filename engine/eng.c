/*
 * The engine object: configuration, the registry of indexes seen, stats and
 * test hooks; metric and type names; index name and item id checks.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include "cdx_log.h"
#include "cdx_utf8.h"
#include "eng_dist.h"
#include "eng_idmap.h"
#include "eng_int.h"
#include "eng_op.h"

/* Per-thread stage time, for callers attributing one request's stages (eng_thread_stages). */
_Thread_local uint64_t eng_tl_stage[ENG_STAGE_COUNT];

/* The index this thread last opened an op on (eng_thread_index). */
_Thread_local uint8_t eng_tl_index[CDX_ID_LEN];
_Thread_local bool eng_tl_index_set;
_Thread_local uint32_t eng_tl_epoch;

bool eng_thread_index(uint8_t id[CDX_ID_LEN], uint32_t *epoch)
{
    bool set = eng_tl_index_set;
    memcpy(id, eng_tl_index, CDX_ID_LEN);
    *epoch = eng_tl_epoch; /* the key epoch of the state it worked on last */
    eng_tl_index_set = false;
    return set;
}

void eng_thread_stages(uint64_t out[ENG_STAGE_COUNT])
{
    memcpy(out, eng_tl_stage, sizeof(eng_tl_stage));
    memset(eng_tl_stage, 0, sizeof(eng_tl_stage));
}
static const struct {
    const char *name;
    int v;
} metrics[] = {{"euclidean", ENG_METRIC_EUCLIDEAN},
               {"squared_euclidean", ENG_METRIC_SQUARED_EUCLIDEAN},
               {"cosine", ENG_METRIC_COSINE},
               {"inner_product", ENG_METRIC_INNER_PRODUCT}},
  types[] = {{"ivfflat", ENG_IVFFLAT}, {"ivfsq8", ENG_IVFSQ8}};

eng_metric eng_metric_parse(const char *s)
{
    for (size_t i = 0; s && i < sizeof(metrics) / sizeof(metrics[0]); i++)
        if (!strcasecmp(s, metrics[i].name))
            return (eng_metric)metrics[i].v;
    return 0;
}

eng_index_type eng_index_type_parse(const char *s)
{
    for (size_t i = 0; s && i < sizeof(types) / sizeof(types[0]); i++)
        if (!strcasecmp(s, types[i].name))
            return (eng_index_type)types[i].v;
    return 0;
}

const char *eng_metric_name(eng_metric m)
{
    for (size_t i = 0; i < sizeof(metrics) / sizeof(metrics[0]); i++)
        if (metrics[i].v == (int)m)
            return metrics[i].name;
    return "unknown";
}

const char *eng_index_type_name(eng_index_type t)
{
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (types[i].v == (int)t)
            return types[i].name;
    return "unknown";
}

const char *eng_key_origin_name(eng_key_origin o)
{
    switch (o) {
    case ENG_ORIGIN_GENERATED:
        return "generated";
    case ENG_ORIGIN_UNWRAPPED:
        return "unwrapped";
    case ENG_ORIGIN_IMPORTED:
        return "imported";
    case ENG_ORIGIN_ADOPTED:
        return "adopted";
    case ENG_ORIGIN_UNKNOWN:
        break;
    }
    return "unknown";
}

cdx_err eng_check_name(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > CDX_INDEX_NAME_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "index name must be 1-%d characters",
                        CDX_INDEX_NAME_MAX);
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)name[i]) && !strchr("_.-", name[i]))
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                            "index name may only contain [A-Za-z0-9_.-] (character %zu is not)",
                            i + 1);
    return CDX_OK;
}

cdx_err eng_check_id(const char *id, size_t len, size_t i)
{
    if (!id || len == 0 || len > CDX_ITEM_ID_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "item %zu: id must be 1-%d bytes", i,
                        CDX_ITEM_ID_MAX);
    if (!cdx_utf8_valid((const uint8_t *)id, len, NULL, NULL))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                        "item %zu: id contains a NUL byte or invalid UTF-8", i);
    return CDX_OK;
}

/* Name the index in an error detail, once. */
cdx_err eng_in_index(cdx_err err, const char *name)
{
    if (err == ENG_MOVED)
        err = cdx_fail(CDX_ERR_ABORTED, "the index changed while it was being read; retry");
    if (err && strncmp(cdx_err_detail(), "index ", 6) != 0)
        cdx_prefix(err, "index %s: ", name);
    return err;
}

static void idx_free(struct idx *ix)
{
    if (!ix)
        return;
    eng_bucketset_drop(ix->wb);
    eng_manifest_unref(ix->m);
    free(ix->seen);
    pthread_cond_destroy(&ix->gate_cv);
    pthread_mutex_destroy(&ix->gate_mu);
    pthread_mutex_destroy(&ix->sweep_mu);
    pthread_mutex_destroy(&ix->tok_mu);
    pthread_mutex_destroy(&ix->rot_mu);
    pthread_mutex_destroy(&ix->mu);
    free(ix);
}

void eng_idx_put(struct idx *ix)
{
    if (ix && atomic_fetch_sub(&ix->refs, 1) == 1)
        idx_free(ix);
}

/* Forget cached state of an index (deleted, or found gone): every entry with its id (two names
 * may share one: an alias left by an old failed create, or a restored entry). */
void eng_idx_forget(eng *e, const uint8_t id[CDX_ID_LEN])
{
    pthread_mutex_lock(&e->mu);
    for (struct idx **pp = &e->idx; *pp;) {
        struct idx *ix = *pp;
        if (memcmp(ix->id, id, CDX_ID_LEN)) {
            pp = &ix->next;
            continue;
        }
        *pp = ix->next;
        eng_idx_put(ix); /* the registry's reference: requests in flight keep theirs */
    }
    pthread_mutex_unlock(&e->mu);
}

static const char *state_name(uint8_t s)
{
    return s == ENG_ST_CREATING   ? "being created"
           : s == ENG_ST_DELETING ? "being deleted"
                                  : "ready";
}

void eng_idx_set_keys(struct idx *ix, const eng_catentry *c)
{
    pthread_mutex_lock(&ix->mu);
    ix->cat.has_kcv = c->has_kcv;
    memcpy(ix->cat.kcv, c->kcv, CDX_KCV_LEN);
    ix->cat.key_gen = c->key_gen;
    ix->cat.next_has = c->next_has;
    ix->cat.next_gen = c->next_gen;
    memcpy(ix->cat.next_kcv, c->next_kcv, CDX_KCV_LEN);
    ix->cat.next_epoch = c->next_epoch;
    ix->cat.owned = c->owned;
    ix->cat.prov = c->prov;
    ix->cat.rec_version = c->rec_version;
    pthread_mutex_unlock(&ix->mu);
}

cdx_err eng_idx_get(eng *e, const char *name, struct idx **out)
{
    cdx_err err = eng_check_name(name);
    if (err)
        return err;
    pthread_mutex_lock(&e->mu);
    for (struct idx *ix = e->idx; ix; ix = ix->next)
        if (!strcmp(ix->name, name)) {
            atomic_fetch_add(&ix->refs, 1);
            *out = ix;
            pthread_mutex_unlock(&e->mu);
            return CDX_OK;
        }
    pthread_mutex_unlock(&e->mu);
    op ro;
    eng_op_root(e, &ro);
    eng_catentry c;
    bool found = false;
    err = eng_cat_read(&ro, name, &c, &found);
    eng_op_end(&ro);
    if (err)
        return cdx_prefix(err, "index %s: ", name);
    if (!found)
        return cdx_fail(CDX_ERR_NOT_FOUND, "no index named %s", name);
    if (c.state != ENG_ST_READY)
        return cdx_fail(CDX_ERR_FAILED_PRECONDITION, "index %s is %s; repeat the %s to resume it",
                        name, state_name(c.state),
                        c.state == ENG_ST_CREATING ? "create" : "delete");
    struct idx *ix = calloc(1, sizeof(*ix));
    if (!ix)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    memcpy(ix->id, c.id, CDX_ID_LEN);
    snprintf(ix->name, sizeof(ix->name), "%s", name);
    ix->cat = c;
    pthread_mutex_init(&ix->mu, NULL);
    atomic_init(&ix->refs, 2); /* the registry's and the caller's */
    pthread_mutex_init(&ix->sweep_mu, NULL);
    pthread_mutex_init(&ix->tok_mu, NULL);
    pthread_mutex_init(&ix->rot_mu, NULL);
    pthread_mutex_init(&ix->gate_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ix->gate_cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_lock(&e->mu);
    for (struct idx *x = e->idx; x; x = x->next)
        if (!strcmp(x->name, name)) { /* lost a race: use theirs */
            atomic_fetch_add(&x->refs, 1);
            pthread_mutex_unlock(&e->mu);
            idx_free(ix);
            *out = x;
            return CDX_OK;
        }
    ix->next = e->idx;
    e->idx = ix;
    pthread_mutex_unlock(&e->mu);
    *out = ix;
    return CDX_OK;
}

cdx_err eng_new(const eng_config *cfg, eng **out)
{
    *out = NULL;
    if (!cfg || !cfg->custody || !cfg->store || !cfg->state_dir || !*cfg->state_dir)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "engine needs custody, a store and a state dir");
    if (mkdir(cfg->state_dir, 0700) != 0 && errno != EEXIST)
        return cdx_fail(CDX_ERR_CONFIG, "cannot create state dir %s: %s", cfg->state_dir,
                        strerror(errno));
    struct stat st;
    if (stat(cfg->state_dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return cdx_fail(CDX_ERR_CONFIG, "state dir %s is not a directory", cfg->state_dir);
    eng *e = calloc(1, sizeof(*e));
    if (!e)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    e->cfg = *cfg;
    atomic_init(&e->mark_ms, cfg->token_mark_ms);
    snprintf(e->state_dir, sizeof(e->state_dir), "%s", cfg->state_dir);
    e->cfg.state_dir = e->state_dir;
    if (!e->cfg.gc_grace_ms)
        e->cfg.gc_grace_ms = 10 * 60 * 1000;
    if (!e->cfg.commit_retries)
        e->cfg.commit_retries = 32;
    if (!e->cfg.query_threads)
        e->cfg.query_threads = 1;
    if (!e->cfg.result_bytes_max)
        e->cfg.result_bytes_max = CDX_RESULT_MAX_DEFAULT;
    pthread_mutex_init(&e->mu, NULL);
    pthread_mutex_init(&e->rot_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&e->rot_cv, &ca);
    pthread_condattr_destroy(&ca);
    e->root.kind = HSM_KEY_ROOT;
    memcpy(e->root.id, cfg->deployment_id, CDX_ID_LEN);
    bool created = false;
    cdx_err err = hsm_root_key_ensure(cfg->custody, cfg->deployment_id, e->root_kcv, &created);
    if (err) {
        eng_free(e);
        return cdx_prefix(err, "root key: ");
    }
    if (cfg->cache_bytes) {
        e->cache = eng_cache_new(cfg->cache_bytes);
        if (!e->cache) {
            eng_free(e);
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        }
    }
    eng_dist_init();
    if (created)
        cdx_log(CDX_LOG_INFO, "eng_root_created", "msg=\"root key generated on the token\"");
    *out = e;
    return CDX_OK;
}

void eng_free(eng *e)
{
    if (!e)
        return;
    eng_rotate_stop(e);
    eng_marks_flush(e, true); /* what the token has not seen yet */
    while (e->idx) {
        struct idx *ix = e->idx;
        e->idx = ix->next;
        idx_free(ix);
    }
    eng_cache_free(e->cache);
    pthread_cond_destroy(&e->rot_cv);
    pthread_mutex_destroy(&e->rot_mu);
    pthread_mutex_destroy(&e->mu);
    free(e);
}

void eng_set_commit_hook(eng *e, eng_commit_hook fn, void *arg)
{
    e->hook = fn;
    e->hook_arg = arg;
}

void eng_set_screen(eng *e, bool on)
{
    atomic_store(&e->no_screen, !on);
}

void eng_get_stats(eng *e, eng_stats *s)
{
    memset(s, 0, sizeof(*s));
    s->rotations = atomic_load(&e->rotations);
    s->rotation_failures = atomic_load(&e->rotation_failures);
    pthread_mutex_lock(&e->mu);
    for (struct idx *ix = e->idx; ix; ix = ix->next)
        if (atomic_load(&ix->rot_queued)) {
            s->rotations_pending++;
            s->rotation_records_done += atomic_load(&ix->rot_done);
            s->rotation_records_total += atomic_load(&ix->rot_total);
        }
    pthread_mutex_unlock(&e->mu);
    s->commits = atomic_load(&e->commits);
    s->commit_conflicts = atomic_load(&e->conflicts);
    s->queries = atomic_load(&e->queries);
    eng_cache_stats(e->cache, &s->cache_hits, &s->cache_misses, &s->cache_bytes);
    s->ns_head = atomic_load(&e->ns_head);
    s->ns_coarse = atomic_load(&e->ns_coarse);
    s->ns_keys = atomic_load(&e->ns_keys);
    s->ns_fetch = atomic_load(&e->ns_fetch);
    s->ns_decrypt = atomic_load(&e->ns_decrypt);
    s->ns_distance = atomic_load(&e->ns_distance);
    s->rows_screened = atomic_load(&e->n_screened);
    s->rows_rescored = atomic_load(&e->n_rescored);
    s->centroids_rescored = atomic_load(&e->n_probe_rescored);
    s->probe_widenings = atomic_load(&e->n_widened);
}
