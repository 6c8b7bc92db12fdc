/*
 * The engine's operations: catalog, state loading with rollback checks,
 * optimistic commits, upsert/delete/get/query/list, training, compaction,
 * sweep. Record formats are in docs/RECORDS.md.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "cdx_hex.h"
#include "cdx_log.h"
#include "eng_dist.h"
#include "eng_filter.h"
#include "eng_internal.h"
#include "eng_json.h"
#include "eng_kmeans.h"
#include "eng_screen.h"
#include "eng_sq8.h"
#include "eng_topk.h"

/* Per-index state kept between requests. */
struct idx {
    struct idx *next;
    uint8_t id[CDX_ID_LEN];
    char name[CDX_INDEX_NAME_MAX + 1];
    eng_catentry cat;
    pthread_mutex_t mu;
    uint64_t hw;            /* rollback high-water mark (persisted) */
    bool hw_loaded;
    eng_manifest *m;        /* latest manifest seen, shared */
    int64_t m_read_ms;      /* monotonic time of the head read that produced m */
    /* The buckets as this appliance committed them with manifest wb_token (write path). */
    struct bucketset *wb;
    uint8_t wb_token[16];
};

struct eng {
    eng_config cfg;
    char state_dir[4096];
    hsm_key_ref root;
    uint8_t root_kcv[CDX_KCV_LEN];
    eng_cache *cache;
    pthread_mutex_t mu;
    struct idx *idx;
    eng_commit_hook hook;
    void *hook_arg;
    atomic_uint_fast64_t commits, conflicts, queries;
    atomic_uint_fast64_t ns_head, ns_coarse, ns_keys, ns_fetch, ns_decrypt, ns_distance;
    atomic_uint_fast64_t n_screened, n_rescored, n_probe_rescored;
    atomic_bool no_screen; /* test hook */
};

/* Per-thread stage time, for callers attributing one request's stages (eng_thread_stages). */
static _Thread_local uint64_t tl_stage[ENG_STAGE_COUNT];

static void stage_add(atomic_uint_fast64_t *global, eng_stage st, uint64_t ns)
{
    atomic_fetch_add(global, ns);
    tl_stage[st] += ns;
}

void eng_thread_stages(uint64_t out[ENG_STAGE_COUNT])
{
    memcpy(out, tl_stage, sizeof(tl_stage));
    memset(tl_stage, 0, sizeof(tl_stage));
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------ names */

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

static cdx_err check_name(const char *name)
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

/* Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF), no NUL. */
static bool utf8_ok(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c == 0)
            return false;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if ((c & 0xE0) == 0xC0) {
            len = 2;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + len > n)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

static cdx_err check_id(const char *id, size_t len, size_t i)
{
    if (!id || len == 0 || len > CDX_ITEM_ID_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "item %zu: id must be 1-%d bytes", i,
                        CDX_ITEM_ID_MAX);
    if (!utf8_ok((const uint8_t *)id, len))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                        "item %zu: id contains a NUL byte or invalid UTF-8", i);
    return CDX_OK;
}

/*
 * Internal: a newer commit landed mid-read; the caller re-reads the head and
 * retries. Never returned to callers (in_index turns a leftover one into ABORTED).
 */
#define ENG_MOVED ((cdx_err)1000)

/* Name the index in an error detail, once. */
static cdx_err in_index(cdx_err err, const char *name)
{
    if (err == ENG_MOVED)
        err = cdx_fail(CDX_ERR_ABORTED, "the index changed while it was being read; retry");
    if (err && strncmp(cdx_err_detail(), "index ", 6) != 0)
        cdx_prefix(err, "index %s: ", name);
    return err;
}

/* ------------------------------------------------------------------ store keys */

static void key_cat(char *k, const uint8_t tok[16])
{
    char h[33];
    cdx_hex_encode(tok, 16, h);
    snprintf(k, CDX_STORE_KEY_MAX, "cdx:cat:%s", h);
}

static void key_head(char *k, const uint8_t id[16])
{
    char h[33];
    cdx_hex_encode(id, 16, h);
    snprintf(k, CDX_STORE_KEY_MAX, "cdx:{%s}:head", h);
}

static void key_bucket(char *k, const uint8_t id[16], unsigned b)
{
    char h[33];
    cdx_hex_encode(id, 16, h);
    snprintf(k, CDX_STORE_KEY_MAX, "cdx:{%s}:b:%02x", h, b);
}

/* Immutable records: m(anifest), s(egment), t (contents), c(entroids). */
static void key_rec(char *k, const uint8_t id[16], char kind, const uint8_t tok[16])
{
    char h[33], t[33];
    cdx_hex_encode(id, 16, h);
    cdx_hex_encode(tok, 16, t);
    snprintf(k, CDX_STORE_KEY_MAX, "cdx:%s:%c:%s", h, kind, t);
}

static void bucket_token(unsigned b, uint8_t tok[16])
{
    memset(tok, 0, 16);
    eng_be32(tok, b);
}

static const uint8_t ZERO16[16];


/* ------------------------------------------------------------------ manifests */

static eng_manifest *mref(eng_manifest *m)
{
    if (m)
        atomic_fetch_add(&m->refs, 1);
    return m;
}

static void munref(eng_manifest *m)
{
    if (m && atomic_fetch_sub(&m->refs, 1) == 1)
        eng_manifest_free(m);
}

/* ------------------------------------------------------------------ operation context */

#define NPURPOSE 9

typedef struct op {
    eng *e;
    struct idx *ix;
    hsm_key_ref key;
    uint8_t kcv[CDX_KCV_LEN];
    hsm_subkey *sk[NPURPOSE];
    eng_sealer sl[NPURPOSE]; /* keyed with sk[]: freed before they are released */
} op;

static cdx_err op_key(op *o, hsm_purpose p, hsm_subkey **out)
{
    if (!o->sk[p]) {
        uint64_t t0 = mono_ns();
        cdx_err err = hsm_subkey_get(o->e->cfg.custody, &o->key, o->kcv, p, 0, &o->sk[p]);
        stage_add(&o->e->ns_keys, ENG_STAGE_KEYS, mono_ns() - t0);
        if (err)
            return err;
    }
    *out = o->sk[p];
    return CDX_OK;
}

/* The op's sealer for purpose p (one per op and thread: see op_worker). */
static cdx_err op_sealer(op *o, hsm_purpose p, eng_sealer **out)
{
    hsm_subkey *k;
    cdx_err err = op_key(o, p, &k);
    if (err)
        return err;
    if (!o->sl[p].mac && (err = eng_sealer_init(&o->sl[p], k)))
        return err;
    *out = &o->sl[p];
    return CDX_OK;
}

static void op_sealers_free(op *o)
{
    for (int i = 0; i < NPURPOSE; i++)
        eng_sealer_free(&o->sl[i]);
}

static void op_end(op *o)
{
    op_sealers_free(o); /* their OpenSSL contexts are keyed with the subkeys */
    for (int i = 0; i < NPURPOSE; i++)
        hsm_subkey_release(o->sk[i]);
    memset(o->sk, 0, sizeof(o->sk));
}

/*
 * A copy of o for another thread: it shares o's subkeys (fetched beforehand:
 * a worker must not fetch) and has its own sealers. End with op_sealers_free.
 */
static void op_worker(const op *o, op *w)
{
    *w = *o;
    memset(w->sl, 0, sizeof(w->sl));
}

/* Seal a record of this index. */
static cdx_err seal(op *o, hsm_purpose p, eng_kind kind, const uint8_t tok[16], uint64_t version,
                    const uint8_t *pt, size_t len, eng_buf *out)
{
    eng_sealer *s;
    cdx_err err = op_sealer(o, p, &s);
    if (err)
        return err;
    eng_rec_id id = {.scope = o->key.id, .kind = kind, .token = tok, .version = version};
    return eng_rec_seal_s(s, &id, eng_wall_ms(), o->kcv, pt, len, out);
}

/* Open a record of this index; version UINT64_MAX = take the header's. */
static cdx_err unseal(op *o, hsm_purpose p, eng_kind kind, const uint8_t tok[16], uint64_t version,
                      const uint8_t *rec, size_t len, eng_rec_hdr *h, eng_buf *out)
{
    hsm_subkey *k;
    eng_rec_hdr hh;
    cdx_err err = op_key(o, p, &k);
    if (err)
        return err;
    if (version == UINT64_MAX) {
        if ((err = eng_rec_header(rec, len, &hh)))
            return err;
        version = hh.version;
    }
    eng_rec_id id = {.scope = o->key.id, .kind = kind, .token = tok, .version = version};
    uint64_t t0 = mono_ns();
    err = eng_rec_open(k, &id, o->kcv, rec, len, h ? h : &hh, out);
    stage_add(&o->e->ns_decrypt, ENG_STAGE_DECRYPT, mono_ns() - t0);
    return err;
}

/* ------------------------------------------------------------------ catalog */

static void op_root(eng *e, op *o)
{
    memset(o, 0, sizeof(*o));
    o->e = e;
    o->key = e->root;
    memcpy(o->kcv, e->root_kcv, CDX_KCV_LEN);
}

static void op_index(eng *e, struct idx *ix, op *o)
{
    memset(o, 0, sizeof(*o));
    o->e = e;
    o->ix = ix;
    o->key.kind = HSM_KEY_INDEX;
    memcpy(o->key.id, ix->id, CDX_ID_LEN);
    memcpy(o->kcv, ix->cat.kcv, CDX_KCV_LEN);
}

/* Catalog token of a name: the store never sees names. */
static cdx_err cat_token(op *ro, const char *name, uint8_t tok[16])
{
    hsm_subkey *k;
    uint8_t mac[32];
    cdx_err err = op_key(ro, HSM_P_CATALOG, &k);
    if (err)
        return err;
    if ((err = hsm_subkey_hmac(k, name, strlen(name), mac)))
        return err;
    memcpy(tok, mac, 16);
    return CDX_OK;
}

/* Read a catalog entry; *found false if the name is free. */
static cdx_err cat_read(op *ro, const char *name, eng_catentry *c, bool *found)
{
    uint8_t tok[16];
    char key[CDX_STORE_KEY_MAX];
    eng_val v = {0};
    eng_buf pt;
    eng_buf_init(&pt);
    cdx_err err = cat_token(ro, name, tok);
    if (err)
        return err;
    key_cat(key, tok);
    const char *keys[1] = {key};
    if ((err = eng_store_mget(ro->e->cfg.store, keys, 1, &v)))
        return err;
    *found = v.found;
    if (!v.found)
        goto out;
    eng_rec_hdr h;
    if ((err = unseal(ro, HSM_P_CATALOG, ENG_K_CATALOG, tok, UINT64_MAX, v.data, v.len, &h, &pt)))
        goto out;
    if ((err = eng_cat_decode(pt.data, pt.len, c)))
        goto out;
    c->rec_version = h.version;
    if (strcmp(c->name, name)) {
        err = cdx_fail(CDX_ERR_INTEGRITY, "catalog entry names another index");
        goto out;
    }
out:
    eng_vals_free(&v, 1);
    eng_buf_free(&pt);
    return err;
}

/* Write a catalog entry: NX for a new claim, else only if unchanged since read (WATCH). */
static cdx_err cat_write(op *ro, eng_catentry *c, bool claim, bool *ok)
{
    uint8_t tok[16];
    char key[CDX_STORE_KEY_MAX];
    eng_buf pt, rec;
    eng_buf_init(&pt);
    eng_buf_init(&rec);
    eng_txn *t = NULL;
    eng_val cur = {0};
    cdx_err err = cat_token(ro, c->name, tok);
    if (err)
        return err;
    key_cat(key, tok);
    uint64_t ver = claim ? 1 : c->rec_version + 1;
    eng_cat_encode(c, &pt);
    hsm_subkey *k;
    if ((err = op_key(ro, HSM_P_CATALOG, &k)))
        goto out;
    eng_rec_id id = {.scope = ro->key.id, .kind = ENG_K_CATALOG, .token = tok, .version = ver};
    if (!eng_buf_ok(&pt) ||
        (err = eng_rec_seal(k, &id, eng_wall_ms(), ro->kcv, pt.data, pt.len, &rec)))
        goto out;
    eng_kv kv = {key, rec.data, rec.len};
    if (claim) {
        err = eng_store_setnx(ro->e->cfg.store, &kv, 1, ok);
        if (!err && *ok)
            c->rec_version = ver;
        goto out;
    }
    if ((err = eng_store_watch(ro->e->cfg.store, key, &t, &cur)))
        goto out;
    eng_rec_hdr h;
    if (!cur.found || eng_rec_header(cur.data, cur.len, &h) || h.version != c->rec_version) {
        eng_store_abort(t);
        *ok = false;
        goto out;
    }
    err = eng_store_commit(t, &kv, 1, ok);
    if (!err && *ok)
        c->rec_version = ver;
out:
    eng_vals_free(&cur, 1);
    eng_buf_free(&pt);
    eng_buf_free(&rec);
    return err;
}

static cdx_err cat_remove(op *ro, const char *name)
{
    uint8_t tok[16];
    char key[CDX_STORE_KEY_MAX];
    cdx_err err = cat_token(ro, name, tok);
    if (err)
        return err;
    key_cat(key, tok);
    const char *keys[1] = {key};
    return eng_store_del(ro->e->cfg.store, keys, 1, NULL);
}

static void bucketset_drop(struct bucketset *bs);

static void idx_free(struct idx *ix)
{
    if (!ix)
        return;
    bucketset_drop(ix->wb);
    munref(ix->m);
    pthread_mutex_destroy(&ix->mu);
    free(ix);
}

/* Forget cached state of an index (deleted, or found gone). */
static void idx_forget(eng *e, const uint8_t id[16])
{
    pthread_mutex_lock(&e->mu);
    for (struct idx **pp = &e->idx; *pp; pp = &(*pp)->next)
        if (!memcmp((*pp)->id, id, 16)) {
            struct idx *ix = *pp;
            *pp = ix->next;
            idx_free(ix);
            break;
        }
    pthread_mutex_unlock(&e->mu);
}

static const char *state_name(uint8_t s)
{
    return s == ENG_ST_CREATING ? "being created" : s == ENG_ST_DELETING ? "being deleted" : "ready";
}

/* forward */
static cdx_err idx_get(eng *e, const char *name, struct idx **out);
static void op_index(eng *e, struct idx *ix, op *o);

/* Resolve `name` and start an operation on it. */
static cdx_err op_open(eng *e, const char *name, op *o)
{
    struct idx *ix;
    cdx_err err = idx_get(e, name, &ix);
    if (!err)
        op_index(e, ix, o);
    return err;
}

/* The ready index called `name`. */
static cdx_err idx_get(eng *e, const char *name, struct idx **out)
{
    cdx_err err = check_name(name);
    if (err)
        return err;
    pthread_mutex_lock(&e->mu);
    for (struct idx *ix = e->idx; ix; ix = ix->next)
        if (!strcmp(ix->name, name)) {
            *out = ix;
            pthread_mutex_unlock(&e->mu);
            return CDX_OK;
        }
    pthread_mutex_unlock(&e->mu);
    op ro;
    op_root(e, &ro);
    eng_catentry c;
    bool found = false;
    err = cat_read(&ro, name, &c, &found);
    op_end(&ro);
    if (err)
        return cdx_prefix(err, "index %s: ", name);
    if (!found)
        return cdx_fail(CDX_ERR_NOT_FOUND, "no index named %s", name);
    if (c.state != ENG_ST_READY)
        return cdx_fail(CDX_ERR_FAILED_PRECONDITION,
                        "index %s is %s; repeat the %s to resume it", name, state_name(c.state),
                        c.state == ENG_ST_CREATING ? "create" : "delete");
    struct idx *ix = calloc(1, sizeof(*ix));
    if (!ix)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    memcpy(ix->id, c.id, 16);
    snprintf(ix->name, sizeof(ix->name), "%s", name);
    ix->cat = c;
    pthread_mutex_init(&ix->mu, NULL);
    pthread_mutex_lock(&e->mu);
    for (struct idx *x = e->idx; x; x = x->next)
        if (!strcmp(x->name, name)) { /* lost a race: use theirs */
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

/* ------------------------------------------------------------------ engine */

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
    snprintf(e->state_dir, sizeof(e->state_dir), "%s", cfg->state_dir);
    e->cfg.state_dir = e->state_dir;
    if (!e->cfg.gc_grace_ms)
        e->cfg.gc_grace_ms = 10 * 60 * 1000;
    if (!e->cfg.commit_retries)
        e->cfg.commit_retries = 32;
    if (!e->cfg.query_threads)
        e->cfg.query_threads = 1;
    pthread_mutex_init(&e->mu, NULL);
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
    while (e->idx) {
        struct idx *ix = e->idx;
        e->idx = ix->next;
        idx_free(ix);
    }
    eng_cache_free(e->cache);
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
}

/* ------------------------------------------------------------------ state */

static bool is_sq8(const eng_manifest *m)
{
    return m->type == ENG_IVFSQ8 && m->n_clusters > 0;
}

/*
 * Trained indexes keep SQ8 codes plus screen row aux (eng_screen.h) as their
 * search codes: IVFSQ8 scores those codes, IVFFlat screens with them and
 * rescores the few rows that could make the result on its originals.
 */
static bool coded(const eng_manifest *m)
{
    return m->n_clusters > 0 && m->sq_vmin;
}

static uint32_t code_size(const eng_manifest *m)
{
    return coded(m) ? m->dim : m->dim * (uint32_t)sizeof(float);
}

/* Originals live in the search block itself (untrained, raw vectors). */
static bool originals_in_search(const eng_manifest *m)
{
    return !coded(m) && m->metric != ENG_METRIC_COSINE;
}

static eng_km_metric km_of(const eng_manifest *m)
{
    return m->metric == ENG_METRIC_EUCLIDEAN || m->metric == ENG_METRIC_SQUARED_EUCLIDEAN
               ? ENG_KM_L2
               : ENG_KM_IP;
}

/* (Re)build the coarse quantiser from m->centroids. */
static cdx_err probe_build(eng_manifest *m)
{
    eng_probe_free(m->probe);
    m->probe = NULL;
    if (!m->n_clusters || !m->centroids)
        return CDX_OK;
    return eng_probe_new(m->centroids, m->n_clusters, m->dim, km_of(m), &m->probe);
}

static void centroids_encode(const eng_manifest *m, eng_buf *b)
{
    eng_buf_u32(b, m->n_clusters);
    eng_buf_u32(b, m->dim);
    eng_buf_put(b, m->centroids, (size_t)m->n_clusters * m->dim * sizeof(float));
    eng_buf_u8(b, m->sq_vmin ? 1 : 0);
    if (m->sq_vmin) {
        eng_buf_put(b, m->sq_vmin, m->dim * sizeof(float));
        eng_buf_put(b, m->sq_step, m->dim * sizeof(float));
    }
}

static cdx_err centroids_decode(eng_manifest *m, const uint8_t *p, size_t n)
{
    eng_rd r;
    eng_rd_init(&r, p, n);
    uint32_t k = eng_rd_u32(&r), d = eng_rd_u32(&r);
    if (r.bad || k != m->n_clusters || d != m->dim)
        return cdx_fail(CDX_ERR_INTEGRITY, "centroids do not match the manifest");
    size_t cb = (size_t)k * d * sizeof(float);
    const uint8_t *c = eng_rd_ptr(&r, cb);
    uint8_t has = eng_rd_u8(&r);
    const uint8_t *vmin = has ? eng_rd_ptr(&r, d * sizeof(float)) : NULL;
    const uint8_t *step = has ? eng_rd_ptr(&r, d * sizeof(float)) : NULL;
    if (!eng_rd_done(&r) || !has)
        return cdx_fail(CDX_ERR_INTEGRITY, "centroids record is malformed");
    m->centroids = malloc(cb ? cb : 1);
    if (!m->centroids)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    memcpy(m->centroids, c, cb);
    for (size_t i = 0; i < (size_t)k * d; i++)
        if (!isfinite(m->centroids[i]))
            return cdx_fail(CDX_ERR_INTEGRITY, "centroids record holds a non-finite value");
    if (has) {
        m->sq_vmin = malloc(d * sizeof(float));
        m->sq_step = malloc(d * sizeof(float));
        if (!m->sq_vmin || !m->sq_step)
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        memcpy(m->sq_vmin, vmin, d * sizeof(float));
        memcpy(m->sq_step, step, d * sizeof(float));
        for (uint32_t i = 0; i < d; i++)
            if (!isfinite(m->sq_vmin[i]) || !isfinite(m->sq_step[i]) || m->sq_step[i] < 0)
                return cdx_fail(CDX_ERR_INTEGRITY, "centroids record holds a bad quantiser");
    }
    return probe_build(m);
}

static cdx_err hw_load(op *o)
{
    struct idx *ix = o->ix;
    cdx_err err = CDX_OK;
    pthread_mutex_lock(&ix->mu);
    if (!ix->hw_loaded) {
        err = eng_state_get(o->e->state_dir, ix->id, &ix->hw);
        ix->hw_loaded = !err;
    }
    pthread_mutex_unlock(&ix->mu);
    return err;
}

/* Record a newly seen head version durably before anything relies on it. */
static cdx_err hw_raise(op *o, uint64_t version)
{
    struct idx *ix = o->ix;
    cdx_err err = CDX_OK;
    pthread_mutex_lock(&ix->mu);
    if (version > ix->hw) {
        err = eng_state_put(o->e->state_dir, ix->id, version);
        if (!err)
            ix->hw = version;
    }
    pthread_mutex_unlock(&ix->mu);
    return err;
}

/* Read and authenticate the head. *found=false if it does not exist. */
static cdx_err read_head(op *o, eng_head *h, bool *found)
{
    char key[CDX_STORE_KEY_MAX];
    key_head(key, o->ix->id);
    const char *keys[1] = {key};
    eng_val v = {0};
    eng_buf pt;
    eng_buf_init(&pt);
    cdx_err err = eng_store_mget(o->e->cfg.store, keys, 1, &v);
    if (err)
        return err;
    *found = v.found;
    if (v.found) {
        eng_rec_hdr rh;
        err = unseal(o, HSM_P_MANIFEST, ENG_K_HEAD, ZERO16, UINT64_MAX, v.data, v.len, &rh, &pt);
        if (!err)
            err = eng_head_decode(pt.data, pt.len, h);
        if (!err && h->version != rh.version)
            err = cdx_fail(CDX_ERR_INTEGRITY, "head version does not match its record");
        h->write_time = rh.write_time;
    }
    eng_vals_free(&v, 1);
    eng_buf_free(&pt);
    return err;
}

/* Fetch and open the manifest (and centroids) a head points at. */
static cdx_err read_manifest(op *o, const eng_head *h, eng_manifest **out)
{
    char key[CDX_STORE_KEY_MAX];
    eng_val v[1] = {{0}};
    eng_buf pt;
    eng_buf_init(&pt);
    eng_manifest *m = NULL;
    key_rec(key, o->ix->id, 'm', h->manifest_token);
    const char *keys[1] = {key};
    cdx_err err = eng_store_mget(o->e->cfg.store, keys, 1, v);
    if (err)
        goto out;
    if (!v[0].found) {
        err = cdx_fail(CDX_ERR_INTEGRITY, "the manifest the head points at is missing");
        goto out;
    }
    if ((err = unseal(o, HSM_P_MANIFEST, ENG_K_MANIFEST, h->manifest_token, h->version, v[0].data,
                      v[0].len, NULL, &pt)))
        goto out;
    if ((err = eng_manifest_decode(pt.data, pt.len, &m)))
        goto out;
    atomic_init(&m->refs, 1);
    m->version = h->version;
    memcpy(m->token, h->manifest_token, ENG_TOKEN_LEN);
    if (m->centroids_version) {
        eng_vals_free(v, 1);
        eng_buf_free(&pt);
        key_rec(key, o->ix->id, 'c', m->centroids_token);
        if ((err = eng_store_mget(o->e->cfg.store, keys, 1, v)))
            goto out;
        if (!v[0].found) {
            err = cdx_fail(CDX_ERR_INTEGRITY, "the centroids the manifest names are missing");
            goto out;
        }
        if ((err = unseal(o, HSM_P_MANIFEST, ENG_K_CENTROIDS, m->centroids_token,
                          m->centroids_version, v[0].data, v[0].len, NULL, &pt)))
            goto out;
        if ((err = centroids_decode(m, pt.data, pt.len)))
            goto out;
    } else if (m->n_clusters) {
        err = cdx_fail(CDX_ERR_INTEGRITY, "trained manifest without centroids");
        goto out;
    }
    *out = m;
    m = NULL;
out:
    eng_manifest_free(m);
    eng_vals_free(v, 1);
    eng_buf_free(&pt);
    return err;
}

/*
 * The index's current manifest (a shared reference: munref it). Reads the
 * head unless the cached manifest is younger than manifest_max_age_ms and
 * at least min_version; checks the rollback high-water mark.
 */
static cdx_err load_state(op *o, bool fresh, uint64_t min_version, eng_manifest **out)
{
    struct idx *ix = o->ix;
    eng *e = o->e;
    uint64_t t0 = mono_ns();
    cdx_err err;
    *out = NULL;
    if (!fresh && e->cfg.manifest_max_age_ms) {
        pthread_mutex_lock(&ix->mu);
        if (ix->m && ix->m->version >= min_version &&
            mono_ms() - ix->m_read_ms < (int64_t)e->cfg.manifest_max_age_ms) {
            *out = mref(ix->m);
            pthread_mutex_unlock(&ix->mu);
            return CDX_OK;
        }
        pthread_mutex_unlock(&ix->mu);
    }
    if ((err = hw_load(o)))
        return err;
    /* Only versions seen before this read began can prove a rollback: another thread of this
     * appliance may commit (and raise the mark) while the read is in flight. */
    pthread_mutex_lock(&ix->mu);
    uint64_t hw = ix->hw;
    pthread_mutex_unlock(&ix->mu);
    int64_t read_at = mono_ms();
    eng_head h;
    bool found = false;
    if ((err = read_head(o, &h, &found)))
        return in_index(err, ix->name);
    if (!found) {
        idx_forget(e, ix->id);
        return cdx_fail(CDX_ERR_NOT_FOUND, "index %s no longer exists", ix->name);
    }
    pthread_mutex_lock(&ix->mu);
    /* The same version is not enough: after a lost tail another writer may reuse it. */
    eng_manifest *cur = ix->m && ix->m->version == h.version &&
                                !memcmp(ix->m->token, h.manifest_token, ENG_TOKEN_LEN)
                            ? mref(ix->m)
                            : NULL;
    pthread_mutex_unlock(&ix->mu);
    if (h.version < hw) {
        munref(cur);
        cdx_log(CDX_LOG_ERROR, "eng_rollback", "seen=%llu store=%llu", (unsigned long long)hw,
                (unsigned long long)h.version);
        return cdx_fail(CDX_ERR_ROLLBACK_DETECTED,
                        "index %s: the store's head is version %llu but this appliance has seen "
                        "version %llu; if a backup was restored on purpose, accept it with the "
                        "admin command",
                        ix->name, (unsigned long long)h.version, (unsigned long long)hw);
    }
    if (!cur && (err = read_manifest(o, &h, &cur)) == CDX_ERR_INTEGRITY) {
        /* Superseded and swept between our head read and the fetch: read the head again. */
        eng_head h2;
        if (!read_head(o, &h2, &found) && found && h2.version > h.version) {
            h = h2;
            err = read_manifest(o, &h, &cur);
        }
    }
    if (err)
        return in_index(err, ix->name);
    if ((err = hw_raise(o, h.version))) {
        munref(cur);
        return err;
    }
    pthread_mutex_lock(&ix->mu);
    if (!ix->m || ix->m->version <= cur->version) {
        munref(ix->m);
        ix->m = mref(cur);
        ix->m_read_ms = read_at;
    }
    pthread_mutex_unlock(&ix->mu);
    stage_add(&e->ns_head, ENG_STAGE_HEAD, mono_ns() - t0);
    *out = cur;
    return CDX_OK;
}

/* ------------------------------------------------------------------ create, describe, list */

static void fill_info(const eng_catentry *c, const eng_manifest *m, eng_index_info *out)
{
    memset(out, 0, sizeof(*out));
    snprintf(out->name, sizeof(out->name), "%s", c->name);
    snprintf(out->state, sizeof(out->state), "%s",
             c->state == ENG_ST_READY ? "ready"
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
    out->created_ms = c->created_ms;
    if (m) {
        out->n_clusters = m->n_clusters;
        out->count = m->count;
        out->version = m->version;
        for (uint32_t i = 0; i < eng_manifest_nclusters(m); i++)
            out->segments += m->clusters[i].nseg;
    }
}

/* Every catalog entry (any state). */
static cdx_err cat_all(eng *e, eng_catentry **out, size_t *n)
{
    op ro;
    op_root(e, &ro);
    cdx_err err = CDX_OK;
    uint64_t cursor = 0;
    eng_catentry *v = NULL;
    size_t nv = 0, cap = 0;
    eng_buf pt;
    eng_buf_init(&pt);
    do {
        char **keys = NULL;
        size_t nk = 0;
        if ((err = eng_store_scan(e->cfg.store, "cdx:cat:*", &cursor, &keys, &nk)))
            break;
        eng_val *vals = calloc(nk ? nk : 1, sizeof(*vals));
        if (!vals || (nk && (err = eng_store_mget(e->cfg.store, (const char *const *)keys, nk,
                                                  vals)))) {
            if (!vals)
                err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            free(vals);
            eng_keys_free(keys, nk);
            break;
        }
        for (size_t i = 0; i < nk && !err; i++) {
            uint8_t tok[16];
            if (!vals[i].found)
                continue; /* deleted meanwhile */
            if (strlen(keys[i]) != 8 + 32 || cdx_hex_decode(keys[i] + 8, tok, 16)) {
                err = cdx_fail(CDX_ERR_INTEGRITY, "unexpected catalog key in the store");
                break;
            }
            eng_rec_hdr h;
            eng_buf_free(&pt);
            if ((err = unseal(&ro, HSM_P_CATALOG, ENG_K_CATALOG, tok, UINT64_MAX, vals[i].data,
                              vals[i].len, &h, &pt)))
                break;
            if (nv == cap) {
                cap = cap ? cap * 2 : 16;
                eng_catentry *p = realloc(v, cap * sizeof(*p));
                if (!p) {
                    err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
                    break;
                }
                v = p;
            }
            if ((err = eng_cat_decode(pt.data, pt.len, &v[nv])))
                break;
            v[nv].rec_version = h.version;
            /* SCAN may repeat keys. */
            bool dup = false;
            for (size_t j = 0; j < nv; j++)
                dup = dup || !strcmp(v[j].name, v[nv].name);
            if (!dup)
                nv++;
        }
        eng_vals_free(vals, nk);
        free(vals);
        eng_keys_free(keys, nk);
    } while (!err && cursor != 0);
    eng_buf_free(&pt);
    op_end(&ro);
    if (err) {
        free(v);
        return err;
    }
    *out = v;
    *n = nv;
    return CDX_OK;
}

static cdx_err write_first_state(op *o, const eng_catentry *c)
{
    cdx_err err;
    eng_manifest m = {0};
    eng_cluster cl = {0};
    eng_buf pt, mrec, hrec;
    eng_buf_init(&pt);
    eng_buf_init(&mrec);
    eng_buf_init(&hrec);
    m.version = 1;
    m.dim = c->dim;
    m.metric = c->metric;
    m.type = c->type;
    m.n_lists = c->n_lists;
    m.clusters = &cl;
    if ((err = eng_random(m.token, 16)))
        goto out;
    eng_manifest_encode(&m, &pt);
    if (!eng_buf_ok(&pt) ||
        (err = seal(o, HSM_P_MANIFEST, ENG_K_MANIFEST, m.token, 1, pt.data, pt.len, &mrec)))
        goto out;
    eng_head h = {.version = 1, .manifest_len = (uint32_t)mrec.len};
    memcpy(h.manifest_token, m.token, 16);
    eng_buf_free(&pt);
    eng_head_encode(&h, &pt);
    if ((err = seal(o, HSM_P_MANIFEST, ENG_K_HEAD, ZERO16, 1, pt.data, pt.len, &hrec)))
        goto out;
    char mkey[CDX_STORE_KEY_MAX], hkey[CDX_STORE_KEY_MAX];
    key_rec(mkey, c->id, 'm', m.token);
    key_head(hkey, c->id);
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

static cdx_err provision_key(eng *e, const eng_create *r, eng_catentry *c)
{
    hsm_key_ref k = {.kind = HSM_KEY_INDEX};
    memcpy(k.id, c->id, CDX_ID_LEN);
    uint8_t kcv[CDX_KCV_LEN];
    cdx_err err;
    if (r->key_source == ENG_KEY_ADOPT) {
        /* The key must belong to no other index. */
        eng_catentry *all = NULL;
        size_t n = 0;
        if ((err = cat_all(e, &all, &n)))
            return err;
        for (size_t i = 0; i < n; i++)
            if (!memcmp(all[i].id, c->id, CDX_ID_LEN) && strcmp(all[i].name, c->name)) {
                char other[CDX_INDEX_NAME_MAX + 1];
                snprintf(other, sizeof(other), "%s", all[i].name);
                free(all);
                return cdx_fail(CDX_ERR_KEY_IN_USE, "the key already belongs to index %s",
                                other);
            }
        free(all);
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
            else
                err = hsm_index_key_generate(e->cfg.custody, c->id, kcv);
        }
    }
    if (err)
        return err;
    if (c->has_kcv && CRYPTO_memcmp(c->kcv, kcv, CDX_KCV_LEN))
        return cdx_fail(CDX_ERR_KEY_REPLACED, "the token key of index %s was replaced during "
                        "its creation", c->name);
    memcpy(c->kcv, kcv, CDX_KCV_LEN);
    c->has_kcv = 1;
    return CDX_OK;
}

cdx_err eng_index_create(eng *e, const eng_create *r, eng_index_info *out)
{
    cdx_err err;
    if ((err = check_name(r->name)))
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
    if (r->key_source > ENG_KEY_ADOPT)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "unknown key source");
    if (r->key_source == ENG_KEY_UNWRAP && (!r->kek_name || !r->wrapped))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "unwrapping needs a KEK name and a wrapped key");

    op ro;
    op_root(e, &ro);
    eng_catentry c;
    bool found = false, ok = false;
    for (int attempt = 0; attempt < 3 && !ok; attempt++) {
        if ((err = cat_read(&ro, r->name, &c, &found)))
            goto out;
        if (found) {
            if (c.state == ENG_ST_READY) {
                err = cdx_fail(CDX_ERR_ALREADY_EXISTS, "an index named %s already exists",
                               r->name);
                goto out;
            }
            if (c.state == ENG_ST_DELETING) {
                err = cdx_fail(CDX_ERR_FAILED_PRECONDITION,
                               "index %s is being deleted; finish the delete first", r->name);
                goto out;
            }
            if (c.dim != r->dimension || c.metric != r->metric || c.type != r->type ||
                c.n_lists != r->n_lists || c.key_source != r->key_source) {
                err = cdx_fail(CDX_ERR_ALREADY_EXISTS,
                               "an unfinished creation of %s with other parameters exists; "
                               "delete it first",
                               r->name);
                goto out;
            }
            ok = true; /* resume */
            cdx_log(CDX_LOG_INFO, "eng_create_resume", "msg=\"resuming an unfinished creation\"");
            break;
        }
        memset(&c, 0, sizeof(c));
        c.state = ENG_ST_CREATING;
        snprintf(c.name, sizeof(c.name), "%s", r->name);
        if (r->key_source == ENG_KEY_ADOPT)
            memcpy(c.id, r->adopt_id, CDX_ID_LEN);
        else if ((err = hsm_random(e->cfg.custody, c.id, CDX_ID_LEN)))
            goto out;
        c.key_source = (uint8_t)r->key_source;
        c.owned = r->key_source != ENG_KEY_ADOPT;
        c.dim = r->dimension;
        c.metric = (uint8_t)r->metric;
        c.type = (uint8_t)r->type;
        c.n_lists = r->n_lists;
        c.created_ms = eng_wall_ms();
        if ((err = cat_write(&ro, &c, true, &ok)))
            goto out;
    }
    if (!ok) {
        err = cdx_fail(CDX_ERR_ABORTED, "could not claim the name %s; retry", r->name);
        goto out;
    }
    if ((err = provision_key(e, r, &c)))
        goto out;
    struct idx tmp = {0};
    memcpy(tmp.id, c.id, CDX_ID_LEN);
    snprintf(tmp.name, sizeof(tmp.name), "%s", c.name);
    tmp.cat = c;
    pthread_mutex_init(&tmp.mu, NULL);
    op io;
    op_index(e, &tmp, &io);
    err = write_first_state(&io, &c);
    if (!err) {
        tmp.hw = 0;
        err = hw_raise(&io, 1);
    }
    op_end(&io);
    pthread_mutex_destroy(&tmp.mu);
    if (err)
        goto out;
    c.state = ENG_ST_READY;
    if ((err = cat_write(&ro, &c, false, &ok)))
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
    op_end(&ro);
    return err;
}

cdx_err eng_index_describe(eng *e, const char *name, eng_index_info *out)
{
    op o;
    cdx_err err = op_open(e, name, &o);
    if (err)
        return err;
    struct idx *ix = o.ix;
    eng_manifest *m = NULL;
    err = load_state(&o, false, 0, &m);
    if (!err)
        fill_info(&ix->cat, m, out);
    munref(m);
    op_end(&o);
    return err;
}

cdx_err eng_index_dimension(eng *e, const char *name, uint32_t *dim)
{
    struct idx *ix;
    cdx_err err = idx_get(e, name, &ix);
    if (!err)
        *dim = ix->cat.dim;
    return err;
}

static int cmp_info(const void *a, const void *b)
{
    return strcmp(((const eng_index_info *)a)->name, ((const eng_index_info *)b)->name);
}

cdx_err eng_index_list(eng *e, eng_index_info **out, size_t *n)
{
    eng_catentry *all = NULL;
    size_t na = 0;
    *out = NULL;
    *n = 0;
    cdx_err err = cat_all(e, &all, &na);
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
            if (err)
                break;
        } else {
            fill_info(&all[i], NULL, &v[k]);
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

/* ------------------------------------------------------------------ delete, purge */

/* Delete every store key of index `id` (both key families). */
static cdx_err remove_records(eng *e, const uint8_t id[16], uint64_t *removed)
{
    char hx[33], pat[2][64];
    cdx_hex_encode(id, 16, hx);
    snprintf(pat[0], sizeof(pat[0]), "cdx:%s:*", hx);
    snprintf(pat[1], sizeof(pat[1]), "cdx:{%s}:*", hx);
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

cdx_err eng_index_delete(eng *e, const char *name, const uint8_t confirm_id[CDX_ID_LEN])
{
    cdx_err err = check_name(name);
    if (err)
        return err;
    op ro;
    op_root(e, &ro);
    eng_catentry c;
    bool found = false, ok = false;
    if ((err = cat_read(&ro, name, &c, &found)))
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
    hsm_key_ref k = {.kind = HSM_KEY_INDEX};
    memcpy(k.id, c.id, CDX_ID_LEN);
    if (c.state != ENG_ST_DELETING) {
        /* Like every operation, deletion needs the key: prove it first. */
        if (c.state == ENG_ST_READY &&
            (err = hsm_key_check(e->cfg.custody, &k, c.kcv))) {
            cdx_prefix(err, "index %s: ", name);
            goto out;
        }
        c.state = ENG_ST_DELETING;
        if ((err = cat_write(&ro, &c, false, &ok)))
            goto out;
        if (!ok) {
            err = cdx_fail(CDX_ERR_ABORTED, "index %s changed during the delete; retry", name);
            goto out;
        }
    }
    idx_forget(e, c.id);
    if (c.owned) {
        err = hsm_key_destroy(e->cfg.custody, &k);
        if (err == CDX_ERR_KEY_NOT_FOUND)
            err = CDX_OK; /* destroyed by an earlier attempt */
        if (err)
            goto out;
    }
    /* The key is gone: nothing stored can be decrypted any more. Clean up. */
    eng_cache_drop_index(e->cache);
    uint64_t removed = 0;
    if ((err = remove_records(e, c.id, &removed)))
        goto out;
    eng_state_remove(e->state_dir, c.id);
    if ((err = cat_remove(&ro, name)))
        goto out;
    cdx_log(CDX_LOG_INFO, "eng_index_deleted", "records=%llu owned=%d",
            (unsigned long long)removed, c.owned);
out:
    op_end(&ro);
    return err;
}

cdx_err eng_purge(eng *e, uint64_t *removed)
{
    eng_catentry *all = NULL;
    size_t na = 0;
    uint64_t rm = 0;
    cdx_err err = cat_all(e, &all, &na);
    if (err)
        return err;
    op ro;
    op_root(e, &ro);
    for (size_t i = 0; i < na && !err; i++) {
        hsm_key_ref k = {.kind = HSM_KEY_INDEX};
        memcpy(k.id, all[i].id, CDX_ID_LEN);
        uint8_t kcv[CDX_KCV_LEN];
        cdx_err kerr = hsm_key_kcv(e->cfg.custody, &k, kcv);
        if (kerr != CDX_ERR_KEY_NOT_FOUND)
            continue;
        idx_forget(e, all[i].id);
        if (!(err = remove_records(e, all[i].id, &rm)) && !(err = cat_remove(&ro, all[i].name))) {
            eng_state_remove(e->state_dir, all[i].id);
            rm++;
        }
    }
    /* Records no catalog entry references. */
    uint64_t cursor = 0;
    while (!err) {
        char **keys = NULL;
        size_t nk = 0;
        if ((err = eng_store_scan(e->cfg.store, "cdx:*", &cursor, &keys, &nk)))
            break;
        for (size_t i = 0; i < nk && !err; i++) {
            const char *kk = keys[i];
            if (!strncmp(kk, "cdx:cat:", 8))
                continue;
            const char *h = kk + 4 + (kk[4] == '{');
            uint8_t id[16];
            char hx[33];
            if (strlen(h) < 32)
                continue;
            memcpy(hx, h, 32);
            hx[32] = '\0';
            if (cdx_hex_decode(hx, id, 16))
                continue;
            bool known = false;
            for (size_t j = 0; j < na && !known; j++)
                known = !memcmp(all[j].id, id, 16);
            if (!known) {
                uint64_t d = 0;
                const char *one[1] = {kk};
                err = eng_store_del(e->cfg.store, one, 1, &d);
                rm += d;
            }
        }
        eng_keys_free(keys, nk);
        if (cursor == 0)
            break;
    }
    op_end(&ro);
    free(all);
    if (removed)
        *removed = rm;
    if (!err)
        cdx_log(CDX_LOG_INFO, "eng_purge", "removed=%llu", (unsigned long long)rm);
    return err;
}

/* ------------------------------------------------------------------ write-path threads */

/*
 * The write path spreads its CPU work (the sgemm of the cluster assignment,
 * sealing segments and buckets) over the cores, at most WRITE_THREADS_MAX
 * threads, and only when there is enough work (`units` >= min_units).
 */
#define WRITE_THREADS_MAX 4

static unsigned write_threads(size_t units, size_t min_units)
{
    if (units < min_units)
        return 1;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 2 ? 1 : n > WRITE_THREADS_MAX ? WRITE_THREADS_MAX : (unsigned)n;
}

/* One thread's share: the error and its detail (cdx_err_detail is per thread). */
typedef struct part {
    cdx_err err;
    char msg[256];
} part;

static void part_done(part *p, cdx_err err)
{
    p->err = err;
    if (err)
        snprintf(p->msg, sizeof(p->msg), "%s", cdx_err_detail());
}

/* The first error of n parts, raised again in this thread. */
static cdx_err parts_err(const part *const *p, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        if (p[i]->err)
            return cdx_fail(p[i]->err, "%s", p[i]->msg);
    return CDX_OK;
}

/*
 * Run fn on args[0..n) (each `size` bytes), n - 1 of them on new threads and
 * the last on this one; a thread that cannot start runs here. Returns when
 * all are done.
 */
static void par_run(void *(*fn)(void *), void *args, size_t size, unsigned n)
{
    pthread_t th[WRITE_THREADS_MAX];
    bool started[WRITE_THREADS_MAX] = {false};
    for (unsigned i = 0; i + 1 < n; i++)
        started[i] = pthread_create(&th[i], NULL, fn, (char *)args + i * size) == 0;
    for (unsigned i = 0; i + 1 < n; i++)
        if (!started[i])
            fn((char *)args + i * size);
    fn((char *)args + (size_t)(n - 1) * size);
    for (unsigned i = 0; i + 1 < n; i++)
        if (started[i])
            pthread_join(th[i], NULL);
}

/* ------------------------------------------------------------------ segments (write side) */

typedef struct row_in {
    const char *id;
    uint16_t id_len;
    const float *orig;    /* dim floats as upserted */
    const float *search;  /* what is searched: orig, or normalised for cosine */
    const char *meta;
    uint32_t meta_len;
    uint32_t cluster;
    uint8_t tok[16];
    uint8_t content[16];
    uint32_t content_len;
    uint64_t commit_version; /* 0: the version being committed */
    /* filled when placed */
    uint8_t seg[16];
    uint32_t row;
} row_in;

typedef struct seg_out {
    uint32_t cluster;
    eng_segref ref;
    eng_buf val;
} seg_out;

static void segs_free(seg_out *s, size_t n)
{
    for (size_t i = 0; s && i < n; i++)
        eng_buf_free(&s[i].val);
    free(s);
}

static cdx_err seg_token(op *o, uint32_t cluster, const uint8_t salt[16], uint8_t tok[16])
{
    eng_sealer *k;
    uint8_t msg[20], mac[32];
    cdx_err err = op_sealer(o, HSM_P_CENTROID, &k);
    if (err)
        return err;
    eng_be32(msg, cluster);
    memcpy(msg + 4, salt, 16);
    if ((err = eng_sealer_hmac(k, msg, sizeof(msg), mac)))
        return err;
    memcpy(tok, mac, 16);
    return CDX_OK;
}

/*
 * Build one segment of `cluster` from rows (pointers) and tombstones: search
 * block, vector block (unless the search block holds the originals), metadata
 * block, each sealed on its own, concatenated into one value. The plaintexts
 * are written straight into the value, sized once, and sealed in place.
 */
static cdx_err build_segment(op *o, const eng_manifest *m, uint64_t version, uint32_t cluster,
                             row_in **rows, uint32_t nrows, const eng_tomb *tombs,
                             uint32_t ntomb, seg_out *out)
{
    cdx_err err;
    size_t d = m->dim;
    uint32_t cs = code_size(m);
    bool vec = !originals_in_search(m);
    const char **ids = NULL;
    uint16_t *idl = NULL;
    eng_sealer *sl;
    eng_buf *val = &out->val;
    memset(out, 0, sizeof(*out));
    eng_buf_init(val);
    out->cluster = cluster;
    if ((err = op_sealer(o, HSM_P_PAYLOAD, &sl)) || (err = eng_random(out->ref.salt, 16)) ||
        (err = seg_token(o, cluster, out->ref.salt, out->ref.token)))
        return err;
    out->ref.version = version;
    out->ref.rows = nrows;
    ids = malloc((nrows + 1u) * sizeof(*ids));
    idl = malloc((nrows + 1u) * sizeof(*idl));
    if (!ids || !idl) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    size_t idbytes = 0, metabytes = 0;
    for (uint32_t i = 0; i < nrows; i++) {
        ids[i] = rows[i]->id;
        idl[i] = rows[i]->id_len;
        idbytes += 2u + rows[i]->id_len;
        metabytes += 4u + rows[i]->meta_len;
        memcpy(rows[i]->seg, out->ref.token, 16);
        rows[i]->row = i;
    }
    /* The three records, so the value is allocated once and nothing moves while sealing. */
    size_t total = 3 * ENG_REC_OVERHEAD + 12 + (size_t)nrows * cs +
                   (coded(m) ? (size_t)nrows * 2 * sizeof(float) : 0) + idbytes + 20 * (size_t)ntomb +
                   (vec ? (size_t)nrows * d * sizeof(float) : 0) + 4 + metabytes;
    if (!eng_buf_grow(val, total)) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    eng_rec_id id = {.scope = o->key.id, .kind = ENG_K_SEARCH, .token = out->ref.token,
                     .version = version};
    size_t at = val->len;
    eng_buf_reserve(val, ENG_REC_HDR);
    uint8_t *codes = eng_search_encode(val, nrows, cs, NULL, NULL, coded(m), ids, idl, tombs, ntomb);
    if (!codes) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    eng_sq8 q = {.d = d, .vmin = m->sq_vmin, .step = m->sq_step};
    for (uint32_t i = 0; i < nrows; i++) {
        if (coded(m)) {
            float aux[2];
            eng_sq8_encode(&q, rows[i]->search, 1, codes + (size_t)i * cs);
            eng_screen_row_aux(&q, rows[i]->search, codes + (size_t)i * cs, aux);
            if (is_sq8(m))
                aux[1] = 0; /* IVFSQ8 scores the codes themselves */
            memcpy(codes + (size_t)nrows * cs + 8 * (size_t)i, aux, sizeof(aux));
        } else
            memcpy(codes + (size_t)i * cs, rows[i]->search, cs);
    }
    if ((err = eng_rec_seal_at(sl, &id, eng_wall_ms(), o->kcv, val, at)))
        goto out;
    out->ref.search_len = (uint32_t)(val->len - at);
    if (vec) {
        at = val->len;
        eng_buf_reserve(val, ENG_REC_HDR);
        for (uint32_t i = 0; i < nrows; i++)
            eng_buf_put(val, rows[i]->orig, d * sizeof(float));
        id.kind = ENG_K_VECTORS;
        if ((err = eng_rec_seal_at(sl, &id, eng_wall_ms(), o->kcv, val, at)))
            goto out;
        out->ref.vectors_len = (uint32_t)(val->len - at);
    }
    at = val->len;
    eng_buf_reserve(val, ENG_REC_HDR);
    eng_buf_u32(val, nrows);
    for (uint32_t i = 0; i < nrows; i++)
        eng_buf_lbytes(val, rows[i]->meta, rows[i]->meta_len);
    id.kind = ENG_K_META;
    if ((err = eng_rec_seal_at(sl, &id, eng_wall_ms(), o->kcv, val, at)))
        goto out;
    out->ref.meta_len = (uint32_t)(val->len - at);
out:
    free(ids);
    free(idl);
    return err;
}

/* Write segments (SET NX under fresh tokens: never overwriting anything). */
static cdx_err put_segments(op *o, seg_out *s, size_t n)
{
    if (n == 0)
        return CDX_OK;
    char(*keys)[CDX_STORE_KEY_MAX] = calloc(n, sizeof(*keys));
    eng_kv *kv = calloc(n, sizeof(*kv));
    bool *created = calloc(n, sizeof(*created));
    cdx_err err = CDX_OK;
    if (!keys || !kv || !created) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        key_rec(keys[i], o->ix->id, 's', s[i].ref.token);
        kv[i] = (eng_kv){keys[i], s[i].val.data, s[i].val.len};
    }
    if ((err = eng_store_setnx(o->e->cfg.store, kv, n, created)))
        goto out;
    for (size_t i = 0; i < n; i++)
        if (!created[i]) {
            err = cdx_fail(CDX_ERR_INTERNAL, "segment name collision (never expected)");
            goto out;
        }
out:
    free(keys);
    free(kv);
    free(created);
    return err;
}

/* ------------------------------------------------------------------ buckets */

typedef struct bucketset {
    eng_bucket *b[ENG_BUCKETS]; /* NULL: not loaded */
    bool dirty[ENG_BUCKETS];
} bucketset;

static void bucketset_free(bucketset *bs)
{
    for (unsigned i = 0; i < ENG_BUCKETS; i++) {
        if (bs->b[i]) {
            eng_bucket_free(bs->b[i]);
            free(bs->b[i]);
        }
    }
    memset(bs, 0, sizeof(*bs));
}

/* Free a heap bucketset (the write cache); NULL is a no-op. */
static void bucketset_drop(bucketset *bs)
{
    if (bs) {
        bucketset_free(bs);
        free(bs);
    }
}

/*
 * The write cache: the buckets a commit of this appliance left behind, kept
 * for the next write to the index, which then reads no bucket it holds. They
 * are the buckets of exactly one manifest (its random token): a head naming
 * that manifest means every listed bucket version is the one cached, even if
 * another writer reused the version number after a lost tail. A writer takes
 * the cache (concurrent writers miss and read the store) and puts its own
 * buckets back only after its commit succeeded.
 */
#define WCACHE_MAX_ITEMS (1u << 20) /* entries kept at most (~110 bytes each) */

static void wcache_take(op *o, const eng_manifest *m, bucketset *bs)
{
    struct idx *ix = o->ix;
    bucketset *c = NULL;
    pthread_mutex_lock(&ix->mu);
    if (ix->wb && !memcmp(ix->wb_token, m->token, ENG_TOKEN_LEN)) {
        c = ix->wb;
        ix->wb = NULL;
    }
    pthread_mutex_unlock(&ix->mu);
    if (!c)
        return;
    *bs = *c;
    memset(bs->dirty, 0, sizeof(bs->dirty));
    free(c);
}

/* Keep bs (emptied) as the buckets of the manifest just committed. */
static void wcache_put(op *o, const eng_manifest *nm, bucketset *bs)
{
    struct idx *ix = o->ix;
    size_t items = 0;
    for (unsigned b = 0; b < ENG_BUCKETS; b++)
        items += bs->b[b] ? bs->b[b]->n : 0;
    bucketset *c = items <= WCACHE_MAX_ITEMS ? malloc(sizeof(*c)) : NULL;
    if (!c)
        return;
    *c = *bs;
    memset(bs, 0, sizeof(*bs));
    pthread_mutex_lock(&ix->mu);
    bucketset *old = ix->wb;
    ix->wb = c;
    memcpy(ix->wb_token, nm->token, ENG_TOKEN_LEN);
    pthread_mutex_unlock(&ix->mu);
    bucketset_drop(old);
}

/* Load the buckets flagged in want[] at the versions the manifest records. */
static cdx_err load_buckets(op *o, const eng_manifest *m, const bool *want, bucketset *bs)
{
    const char *keys[ENG_BUCKETS];
    char kbuf[ENG_BUCKETS][CDX_STORE_KEY_MAX];
    unsigned which[ENG_BUCKETS], n = 0;
    cdx_err err = CDX_OK;
    for (unsigned b = 0; b < ENG_BUCKETS; b++) {
        if (!want[b] || bs->b[b])
            continue;
        bs->b[b] = calloc(1, sizeof(eng_bucket));
        if (!bs->b[b])
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        if (m->bucket_version[b] == 0)
            continue; /* never written: empty */
        key_bucket(kbuf[n], o->ix->id, b);
        keys[n] = kbuf[n];
        which[n++] = b;
    }
    if (n == 0)
        return CDX_OK;
    eng_val v[ENG_BUCKETS];
    memset(v, 0, sizeof(v));
    uint64_t t0 = mono_ns();
    err = eng_store_mget(o->e->cfg.store, keys, n, v);
    stage_add(&o->e->ns_fetch, ENG_STAGE_FETCH, mono_ns() - t0);
    if (err)
        return err;
    eng_buf pt;
    eng_buf_init(&pt);
    for (unsigned i = 0; i < n && !err; i++) {
        unsigned b = which[i];
        uint8_t tok[16];
        bucket_token(b, tok);
        if (!v[i].found) {
            err = cdx_fail(CDX_ERR_INTEGRITY, "an id-map bucket the manifest names is missing");
            break;
        }
        eng_buf_free(&pt);
        /*
         * A bucket newer than the manifest says: either a commit landed
         * between our head read and this fetch (retry with a fresh head), or
         * the store serves something it should not (INTEGRITY).
         */
        eng_rec_hdr rh;
        if (!eng_rec_header(v[i].data, v[i].len, &rh) && rh.version > m->bucket_version[b]) {
            eng_head h;
            bool found = false;
            if ((err = read_head(o, &h, &found)))
                break;
            if (found && h.version > m->version) {
                err = cdx_fail(ENG_MOVED, "the index moved on while it was being read");
                break;
            }
        }
        /* A bucket of another version (a newer commit, or a replay) fails here. */
        if ((err = unseal(o, HSM_P_MANIFEST, ENG_K_BUCKET, tok, m->bucket_version[b], v[i].data,
                          v[i].len, NULL, &pt)))
            break;
        err = eng_bucket_decode(pt.data, pt.len, bs->b[b]);
    }
    eng_buf_free(&pt);
    eng_vals_free(v, n);
    return err;
}

/* ------------------------------------------------------------------ commit */

/* A store write on its own thread while this one goes on sealing. */
typedef struct bg_job {
    part p;
    cdx_err (*fn)(void *);
    void *arg;
    pthread_t th;
    bool running;
} bg_job;

static void *bg_main(void *arg)
{
    bg_job *j = arg;
    part_done(&j->p, j->fn(j->arg));
    return NULL;
}

/* Start fn(arg) on a thread; without one, run it now. */
static cdx_err bg_start(bg_job *j, cdx_err (*fn)(void *), void *arg)
{
    j->fn = fn;
    j->arg = arg;
    j->p.err = CDX_OK;
    j->running = pthread_create(&j->th, NULL, bg_main, j) == 0;
    return j->running ? CDX_OK : fn(arg);
}

/* Wait for the job (a no-op if none runs) and raise its error here. */
static cdx_err bg_join(void *arg)
{
    bg_job *j = arg;
    if (!j->running)
        return CDX_OK;
    pthread_join(j->th, NULL);
    j->running = false;
    const part *p = &j->p;
    return parts_err(&p, 1);
}

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
    part p;
    op o; /* op_worker copy: own sealers */
    const bucketset *bs;
    eng_buf *brec;
    uint64_t version;
    unsigned first, step; /* buckets first, first + step, ... (interleaved: even shares) */
} bucket_part;

static void *bucket_part_main(void *arg)
{
    bucket_part *w = arg;
    eng_sealer *sl;
    cdx_err err = op_sealer(&w->o, HSM_P_MANIFEST, &sl);
    for (unsigned b = w->first; !err && b < ENG_BUCKETS; b += w->step) {
        if (!w->bs->dirty[b])
            continue;
        uint8_t tok[16];
        bucket_token(b, tok);
        eng_rec_id id = {.scope = w->o.key.id, .kind = ENG_K_BUCKET, .token = tok,
                         .version = w->version};
        /* Encoded straight into the record (sized once) and sealed in place. */
        eng_buf *r = &w->brec[b];
        eng_buf_grow(r, ENG_REC_OVERHEAD + eng_bucket_encoded_len(w->bs->b[b]));
        eng_buf_reserve(r, ENG_REC_HDR);
        eng_bucket_encode(w->bs->b[b], r);
        err = eng_rec_seal_at(sl, &id, eng_wall_ms(), w->o.kcv, r, 0);
    }
    part_done(&w->p, err);
    return NULL;
}

/* Seal every dirty bucket at `version` into brec[bucket], on several threads when large. */
static cdx_err seal_buckets(op *o, const bucketset *bs, uint64_t version, eng_buf *brec)
{
    hsm_subkey *k;
    cdx_err err;
    if ((err = op_key(o, HSM_P_MANIFEST, &k)))
        return err;
    size_t items = 0;
    for (unsigned b = 0; b < ENG_BUCKETS; b++)
        items += bs->dirty[b] ? bs->b[b]->n : 0;
    bucket_part w[WRITE_THREADS_MAX];
    const part *ps[WRITE_THREADS_MAX];
    unsigned nt = write_threads(items, 8192);
    for (unsigned i = 0; i < nt; i++) {
        w[i].bs = bs;
        w[i].brec = brec;
        w[i].version = version;
        w[i].first = i;
        w[i].step = nt;
        op_worker(o, &w[i].o);
        ps[i] = &w[i].p;
    }
    par_run(bucket_part_main, w, sizeof(w[0]), nt);
    for (unsigned i = 0; i < nt; i++)
        op_sealers_free(&w[i].o);
    return parts_err(ps, nt);
}

/*
 * Commit nm (a modified clone of base) with the dirty buckets: manifest body
 * first (SET NX), then WATCH head / check base version / MULTI buckets+head
 * EXEC. *committed=false on a conflict (nothing visible changed). join, when
 * given, is called after the sealing and before the first store write: the
 * caller's records still being written finish there (error: no commit).
 */
static cdx_err commit_state_j(op *o, const eng_manifest *base, eng_manifest *nm, bucketset *bs,
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
    bg_job mjob = {.running = false};
    *committed = false;
    eng_buf_init(&pt);
    eng_buf_init(&mrec);
    eng_buf_init(&hrec);
    for (unsigned b = 0; b < ENG_BUCKETS; b++)
        eng_buf_init(&brec[b]);

    nm->version = version;
    if ((err = eng_random(nm->token, 16)))
        goto out;
    /* Retired segments past gc_grace may be swept now: stop listing them. */
    uint64_t now = eng_wall_ms();
    uint32_t keep = 0;
    for (uint32_t i = 0; i < nm->nretired; i++)
        if (nm->retired[i].retire_ms + e->cfg.gc_grace_ms > now)
            nm->retired[keep++] = nm->retired[i];
    nm->nretired = keep;
    for (unsigned b = 0; bs && b < ENG_BUCKETS; b++)
        if (bs->dirty[b])
            nm->bucket_version[b] = version;
    /* The manifest first, encoded straight into its record and sealed in place (it runs to
     * megabytes), so it is written while the buckets are being sealed. */
    eng_sealer *sl;
    if ((err = op_sealer(o, HSM_P_MANIFEST, &sl)))
        goto out;
    eng_buf_reserve(&mrec, ENG_REC_HDR);
    eng_manifest_encode(nm, &mrec);
    eng_rec_id rid = {.scope = o->key.id, .kind = ENG_K_MANIFEST, .token = nm->token,
                      .version = version};
    if ((err = eng_rec_seal_at(sl, &rid, eng_wall_ms(), o->kcv, &mrec, 0)))
        goto out;
    char hkey[CDX_STORE_KEY_MAX];
    key_rec(mput.key, o->ix->id, 'm', nm->token);
    mput.st = e->cfg.store;
    mput.kv = (eng_kv){mput.key, mrec.data, mrec.len};
    if ((err = bg_start(&mjob, manifest_put, &mput)) ||
        (bs && (err = seal_buckets(o, bs, version, brec))))
        goto out;
    for (unsigned b = 0; bs && b < ENG_BUCKETS; b++) {
        if (!bs->dirty[b])
            continue;
        key_bucket(bkeys[b], o->ix->id, b);
        kv[nkv++] = (eng_kv){bkeys[b], brec[b].data, brec[b].len};
    }
    /* Every immutable record is stored before the commit. */
    if ((join && (err = join(join_arg))) || (err = bg_join(&mjob)))
        goto out;
    eng_head h = {.version = version, .manifest_len = (uint32_t)mrec.len};
    memcpy(h.manifest_token, nm->token, 16);
    eng_buf_free(&pt);
    eng_head_encode(&h, &pt);
    if ((err = seal(o, HSM_P_MANIFEST, ENG_K_HEAD, ZERO16, version, pt.data, pt.len, &hrec)))
        goto out;
    key_head(hkey, o->ix->id);
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
    if ((err = eng_store_commit(t, kv, nkv, committed)))
        goto out;
    if (!*committed) {
        atomic_fetch_add(&e->conflicts, 1);
        goto out;
    }
    atomic_fetch_add(&e->commits, 1);
    if ((err = hw_raise(o, version)))
        goto out;
    /* nm becomes the index's current state. */
    struct idx *ix = o->ix;
    pthread_mutex_lock(&ix->mu);
    if (!ix->m || ix->m->version < version) {
        munref(ix->m);
        ix->m = mref(nm);
        ix->m_read_ms = mono_ms();
    }
    pthread_mutex_unlock(&ix->mu);
out:
    bg_join(&mjob); /* before its record is freed; an error was reported already */
    eng_vals_free(&cur, 1);
    eng_buf_free(&pt);
    eng_buf_free(&mrec);
    eng_buf_free(&hrec);
    for (unsigned b = 0; b < ENG_BUCKETS; b++)
        eng_buf_free(&brec[b]);
    return err;
}

static cdx_err commit_state(op *o, const eng_manifest *base, eng_manifest *nm, bucketset *bs,
                            bool *committed)
{
    return commit_state_j(o, base, nm, bs, NULL, NULL, committed);
}

/*
 * After a lost commit: wait a random 0..2^attempt ms (capped at 64 ms) so
 * two writers that keep colliding fall out of step instead of starving one.
 */
static void backoff(unsigned attempt)
{
    uint8_t r[2] = {0, 0};
    (void)eng_random(r, 2);
    unsigned cap = attempt < 6 ? 1u << attempt : 64u;
    unsigned ms = ((unsigned)r[0] << 8 | r[1]) % (cap + 1);
    struct timespec ts = {0, (long)ms * 1000000L};
    nanosleep(&ts, NULL);
}

static cdx_err clone_m(const eng_manifest *m, eng_manifest **out)
{
    cdx_err err = eng_manifest_clone(m, out);
    if (!err)
        atomic_init(&(*out)->refs, 1);
    return err;
}

/* id token = HMAC(K_token, "id" 0x00 id)[0..16] */
static cdx_err id_token(op *o, const char *id, size_t len, uint8_t tok[16])
{
    hsm_subkey *k;
    uint8_t mac[32];
    cdx_err err = op_key(o, HSM_P_TOKEN, &k);
    if (err)
        return err;
    uint8_t *msg = malloc(len + 3);
    if (!msg)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    msg[0] = 'i';
    msg[1] = 'd';
    msg[2] = 0x00;
    memcpy(msg + 3, id, len);
    err = hsm_subkey_hmac(k, msg, len + 3, mac);
    free(msg);
    memcpy(tok, mac, 16);
    return err;
}

/*
 * id_token with the op's token sealer (the key set up once, no allocation):
 * for the write path, which computes one per item on one thread. id_token
 * stays for the query threads, which share their op.
 */
static cdx_err id_token_w(op *o, const char *id, size_t len, uint8_t tok[16])
{
    eng_sealer *k;
    uint8_t msg[3 + CDX_ITEM_ID_MAX], mac[32];
    if (len > CDX_ITEM_ID_MAX)
        return id_token(o, id, len, tok);
    cdx_err err = op_sealer(o, HSM_P_TOKEN, &k);
    if (err)
        return err;
    msg[0] = 'i';
    msg[1] = 'd';
    msg[2] = 0x00;
    memcpy(msg + 3, id, len);
    err = eng_sealer_hmac(k, msg, len + 3, mac);
    memcpy(tok, mac, 16);
    return err;
}

/* Which cluster each search vector goes to. */
static cdx_err assign_clusters(const eng_manifest *m, const float *x, size_t n, uint32_t *out)
{
    if (!m->n_clusters) {
        memset(out, 0, n * sizeof(*out));
        return CDX_OK;
    }
    return eng_kmeans_assign(x, n, m->dim, m->centroids, m->n_clusters, km_of(m), out, NULL);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Index of x in the sorted array a[0..n) (x is there). */
static size_t find_u32(const uint32_t *a, size_t n, uint32_t x)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (a[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* ------------------------------------------------------------------ parallel write path */

/* The segments of one attempt: segment j holds rows[rs[j]..rs[j+1]) and tombs[ts[j]..ts[j+1]). */
typedef struct seg_build {
    const eng_manifest *m;
    uint64_t version;
    const uint32_t *cls;
    row_in **rows;
    const size_t *rs;
    const eng_tomb *tombs;
    const size_t *ts;
    seg_out *segs;
    size_t n;
    atomic_size_t next; /* the next segment to build */
} seg_build;

typedef struct seg_part {
    part p;
    seg_build *b;
    op o; /* op_worker copy: own sealers */
} seg_part;

static void *seg_part_main(void *arg)
{
    seg_part *w = arg;
    seg_build *b = w->b;
    cdx_err err = CDX_OK;
    for (;;) {
        size_t j = atomic_fetch_add(&b->next, 1);
        if (j >= b->n)
            break;
        err = build_segment(&w->o, b->m, b->version, b->cls[j], b->rows + b->rs[j],
                            (uint32_t)(b->rs[j + 1] - b->rs[j]), b->tombs + b->ts[j],
                            (uint32_t)(b->ts[j + 1] - b->ts[j]), &b->segs[j]);
        if (err) {
            atomic_store(&b->next, b->n); /* the others stop too */
            break;
        }
    }
    part_done(&w->p, err);
    return NULL;
}

/*
 * Build (seal) every segment, on several threads when there are many.
 * Segments land at their own index, so their order (ascending cluster) does
 * not depend on the threads.
 */
static cdx_err build_segments(op *o, seg_build *b)
{
    hsm_subkey *k;
    cdx_err err;
    /* Workers share the op's subkeys and must not fetch any: fetch them first. */
    if ((err = op_key(o, HSM_P_PAYLOAD, &k)) || (err = op_key(o, HSM_P_CENTROID, &k)))
        return err;
    seg_part w[WRITE_THREADS_MAX];
    const part *ps[WRITE_THREADS_MAX];
    unsigned nt = write_threads(b->n, 16);
    for (unsigned i = 0; i < nt; i++) {
        w[i].b = b;
        op_worker(o, &w[i].o);
        ps[i] = &w[i].p;
    }
    par_run(seg_part_main, w, sizeof(w[0]), nt);
    for (unsigned i = 0; i < nt; i++)
        op_sealers_free(&w[i].o);
    return parts_err(ps, nt);
}

typedef struct assign_part {
    part p;
    const eng_manifest *m;
    const float *x;
    size_t n;
    uint32_t *out;
} assign_part;

static void *assign_part_main(void *arg)
{
    assign_part *w = arg;
    part_done(&w->p, assign_clusters(w->m, w->x, w->n, w->out));
    return NULL;
}

/* assign_clusters with the rows split over the cores: the sgemm is most of an upsert's CPU. */
static cdx_err assign_parallel(const eng_manifest *m, const float *x, size_t n, uint32_t *out)
{
    assign_part w[WRITE_THREADS_MAX];
    const part *ps[WRITE_THREADS_MAX];
    /* Threads from ~16M multiply-adds (a fraction of a millisecond) on. */
    unsigned nt = m->n_clusters ? write_threads(n * m->n_clusters * m->dim, (size_t)1 << 24) : 1;
    size_t per = (n + nt - 1) / nt;
    for (unsigned i = 0; i < nt; i++) {
        size_t from = (size_t)i * per < n ? (size_t)i * per : n;
        w[i] = (assign_part){.m = m, .x = x + from * m->dim, .n = n - from < per ? n - from : per,
                             .out = out + from};
        ps[i] = &w[i].p;
    }
    par_run(assign_part_main, w, sizeof(w[0]), nt);
    return parts_err(ps, nt);
}

typedef struct seg_put_arg {
    op *o; /* only o->e and o->ix are read: the op's thread goes on sealing */
    seg_out *segs;
    size_t n;
} seg_put_arg;

static cdx_err seg_put(void *arg)
{
    seg_put_arg *a = arg;
    return put_segments(a->o, a->segs, a->n);
}

/*
 * The write path shared by upsert and delete: rows to add (may be none) and
 * ids to remove; tombstones old copies in their clusters, writes one new
 * segment per touched cluster, updates buckets, commits. Retries on conflict.
 */
static cdx_err write_batch(op *o, row_in *rows, size_t nrows, const uint8_t (*del)[16],
                           size_t ndel, uint64_t *deleted, uint64_t *version)
{
    eng *e = o->e;
    cdx_err err = CDX_OK;
    float *sv = NULL;
    uint32_t *assign = NULL;
    /* The centroids `assign` was computed with: a retry under the same model reuses it. */
    uint64_t assigned_cv = UINT64_MAX;
    uint8_t assigned_ct[16];
    if (nrows) {
        sv = malloc(nrows * (size_t)o->ix->cat.dim * sizeof(float));
        assign = malloc(nrows * sizeof(uint32_t));
        if (!sv || !assign) {
            free(sv);
            free(assign);
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        }
        for (size_t i = 0; i < nrows; i++)
            memcpy(sv + i * o->ix->cat.dim, rows[i].search, o->ix->cat.dim * sizeof(float));
    }
    for (unsigned attempt = 0; attempt < e->cfg.commit_retries; attempt++) {
        eng_manifest *m = NULL, *nm = NULL;
        bucketset bs;
        memset(&bs, 0, sizeof(bs));
        seg_out *segs = NULL;
        size_t nsegs = 0;
        row_in **bycl = NULL;
        eng_tomb *tombs = NULL, *ct = NULL;
        uint32_t *tcl = NULL, *cls = NULL;
        size_t *rs = NULL, *ts = NULL;
        size_t ntombs = 0;
        uint64_t ndeleted = 0;
        bool committed = false;
        seg_put_arg sp;
        bg_job wr = {.running = false};
        if ((err = load_state(o, true, 0, &m)))
            goto next;
        uint64_t v = m->version + 1;
        if (nrows && (m->centroids_version != assigned_cv ||
                      memcmp(m->centroids_token, assigned_ct, 16))) {
            if ((err = assign_parallel(m, sv, nrows, assign)))
                goto next;
            assigned_cv = m->centroids_version;
            memcpy(assigned_ct, m->centroids_token, 16);
        }
        bool want[ENG_BUCKETS] = {false};
        for (size_t i = 0; i < nrows; i++)
            want[eng_bucket_of(rows[i].tok)] = true;
        for (size_t i = 0; i < ndel; i++)
            want[eng_bucket_of(del[i])] = true;
        wcache_take(o, m, &bs);
        if ((err = load_buckets(o, m, want, &bs))) {
            if (err == ENG_MOVED)
                err = CDX_OK; /* like a lost commit: rebase */
            goto next;
        }
        /* Old copies: tombstone them in their own cluster. */
        tombs = malloc((nrows + ndel + 1) * sizeof(*tombs));
        tcl = malloc((nrows + ndel + 1) * sizeof(*tcl));
        if (!tombs || !tcl) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto next;
        }
        int64_t dcount = 0;
        for (size_t i = 0; i < nrows + ndel; i++) {
            const uint8_t *tok = i < nrows ? rows[i].tok : del[i - nrows];
            eng_ident *old = eng_bucket_find(bs.b[eng_bucket_of(tok)], tok);
            if (!old) {
                if (i < nrows)
                    dcount++;
                continue;
            }
            if (old->cluster >= eng_manifest_nclusters(m)) {
                err = cdx_fail(CDX_ERR_INTEGRITY, "id map names a cluster that does not exist");
                goto next;
            }
            memcpy(tombs[ntombs].seg, old->seg, 16);
            tombs[ntombs].row = old->row;
            tcl[ntombs++] = old->cluster;
            if (i >= nrows) {
                eng_bucket_remove(bs.b[eng_bucket_of(tok)], tok);
                bs.dirty[eng_bucket_of(tok)] = true;
                ndeleted++;
                dcount--;
            }
        }
        if (nrows == 0 && ntombs == 0) {
            /* Nothing to delete: no commit, report the current version. */
            if (version)
                *version = m->version;
            if (deleted)
                *deleted = 0;
            committed = true;
            wcache_put(o, m, &bs); /* unchanged: still the buckets of m */
            goto next;
        }
        /* Touched clusters, sorted: one segment each. */
        cls = malloc((nrows + ntombs + 1) * sizeof(uint32_t));
        size_t ncl = 0;
        if (!cls) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto next;
        }
        for (size_t i = 0; i < nrows; i++)
            cls[ncl++] = assign[i];
        for (size_t i = 0; i < ntombs; i++)
            cls[ncl++] = tcl[i];
        qsort(cls, ncl, sizeof(uint32_t), cmp_u32);
        size_t u = 0;
        for (size_t i = 0; i < ncl; i++)
            if (u == 0 || cls[u - 1] != cls[i])
                cls[u++] = cls[i];
        ncl = u;
        /* Group rows and tombstones by segment (stable: batch order within a segment). */
        segs = calloc(ncl ? ncl : 1, sizeof(*segs));
        bycl = malloc((nrows + 1) * sizeof(*bycl));
        ct = malloc((ntombs + 1) * sizeof(*ct));
        rs = calloc(ncl + 1, sizeof(*rs));
        ts = calloc(ncl + 1, sizeof(*ts));
        if (!segs || !bycl || !ct || !rs || !ts) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto next;
        }
        nsegs = ncl;
        for (size_t i = 0; i < nrows; i++)
            rs[find_u32(cls, ncl, assign[i]) + 1]++;
        for (size_t i = 0; i < ntombs; i++)
            ts[find_u32(cls, ncl, tcl[i]) + 1]++;
        for (size_t c = 0; c < ncl; c++) {
            rs[c + 1] += rs[c];
            ts[c + 1] += ts[c];
        }
        for (size_t i = 0; i < nrows; i++) {
            size_t c = find_u32(cls, ncl, assign[i]);
            rows[i].cluster = assign[i];
            bycl[rs[c]++] = &rows[i];
        }
        for (size_t i = 0; i < ntombs; i++)
            ct[ts[find_u32(cls, ncl, tcl[i])]++] = tombs[i];
        /* The fills moved each start to the next segment's: shift back. */
        memmove(rs + 1, rs, ncl * sizeof(*rs));
        memmove(ts + 1, ts, ncl * sizeof(*ts));
        rs[0] = ts[0] = 0;
        seg_build sb = {.m = m, .version = v, .cls = cls, .rows = bycl, .rs = rs, .tombs = ct,
                        .ts = ts, .segs = segs, .n = nsegs};
        atomic_init(&sb.next, 0);
        if ((err = build_segments(o, &sb)))
            goto next;
        /* Segments go to the store while the buckets and the manifest are sealed. */
        sp = (seg_put_arg){o, segs, nsegs};
        if ((err = bg_start(&wr, seg_put, &sp)))
            goto next;
        for (size_t i = 0; i < nrows; i++) {
            eng_ident id = {0};
            memcpy(id.tok, rows[i].tok, 16);
            id.cluster = rows[i].cluster;
            memcpy(id.seg, rows[i].seg, 16);
            id.row = rows[i].row;
            id.commit_version = rows[i].commit_version ? rows[i].commit_version : v;
            memcpy(id.content, rows[i].content, 16);
            id.content_len = rows[i].content_len;
            id.id_len = rows[i].id_len;
            id.id = malloc(rows[i].id_len + 1u);
            if (!id.id) {
                err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
                goto next;
            }
            memcpy(id.id, rows[i].id, rows[i].id_len);
            id.id[rows[i].id_len] = '\0';
            unsigned b = eng_bucket_of(id.tok);
            if ((err = eng_bucket_put(bs.b[b], &id))) {
                free(id.id);
                goto next;
            }
            bs.dirty[b] = true;
        }
        if ((err = clone_m(m, &nm)))
            goto next;
        for (size_t s = 0; s < nsegs && !err; s++)
            err = eng_cluster_push(&nm->clusters[segs[s].cluster], &segs[s].ref);
        if (err)
            goto next;
        nm->count = (uint64_t)((int64_t)m->count + dcount);
        if ((err = commit_state_j(o, m, nm, &bs, bg_join, &wr, &committed)))
            goto next;
        if (committed) {
            if (version)
                *version = v;
            if (deleted)
                *deleted = ndeleted;
            wcache_put(o, nm, &bs);
        }
    next:
        bg_join(&wr); /* before the segments are freed; an error was reported already */
        munref(m);
        munref(nm);
        bucketset_free(&bs);
        segs_free(segs, nsegs);
        free(bycl);
        free(tombs);
        free(tcl);
        free(ct);
        free(cls);
        free(rs);
        free(ts);
        if (err || committed)
            break;
        backoff(attempt);
    }
    free(sv);
    free(assign);
    if (!err && !(version && *version))
        err = cdx_fail(CDX_ERR_ABORTED,
                       "index %s: %u commit attempts lost to concurrent writers; retry",
                       o->ix->name, e->cfg.commit_retries);
    return err;
}

static bool finite_vec(const float *v, size_t d)
{
    for (size_t i = 0; i < d; i++)
        if (!isfinite(v[i]))
            return false;
    return true;
}

typedef struct tokidx {
    uint8_t tok[16];
    size_t i;
} tokidx;

static int cmp_tokidx(const void *a, const void *b)
{
    return memcmp(((const tokidx *)a)->tok, ((const tokidx *)b)->tok, 16);
}

cdx_err eng_upsert(eng *e, const char *name, const eng_item *items, size_t n, uint64_t *version)
{
    struct idx *ix;
    cdx_err err = idx_get(e, name, &ix);
    if (err)
        return err;
    if (n == 0 || !items)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "empty upsert batch");
    if (n > CDX_UPSERT_BATCH_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "upsert batch of %zu items exceeds %d", n,
                        CDX_UPSERT_BATCH_MAX);
    size_t d = ix->cat.dim;
    bool cosine = ix->cat.metric == ENG_METRIC_COSINE;
    /* Validate everything before anything is written: all or nothing. */
    for (size_t i = 0; i < n; i++) {
        if ((err = check_id(items[i].id, items[i].id_len, i)))
            return err;
        if (!items[i].vector)
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "item %zu: no vector", i);
        if (!finite_vec(items[i].vector, d))
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "item %zu: vector has NaN or Inf", i);
        if (cosine && eng_norm2(items[i].vector, d) == 0.0f)
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                            "item %zu: a zero vector has no direction (cosine index)", i);
        if (items[i].metadata_len) {
            json_t *j = NULL;
            if ((err = eng_json_parse_object(items[i].metadata, items[i].metadata_len,
                                             CDX_METADATA_MAX, &j)))
                return cdx_prefix(err, "item %zu metadata: ", i);
            json_decref(j);
        }
        if (items[i].contents_len > CDX_CONTENTS_MAX)
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "item %zu: contents exceed %u bytes", i,
                            CDX_CONTENTS_MAX);
    }
    op o;
    op_index(e, ix, &o);
    row_in *rows = calloc(n, sizeof(*rows));
    tokidx *ti = calloc(n, sizeof(*ti));
    float *norm = cosine ? malloc(n * d * sizeof(float)) : NULL;
    eng_buf *crec = NULL;
    eng_kv *ckv = NULL;
    char(*ckeys)[CDX_STORE_KEY_MAX] = NULL;
    if (!rows || !ti || (cosine && !norm)) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        row_in *r = &rows[i];
        r->id = items[i].id;
        r->id_len = (uint16_t)items[i].id_len;
        r->orig = items[i].vector;
        r->search = items[i].vector;
        if (cosine) {
            memcpy(norm + i * d, items[i].vector, d * sizeof(float));
            eng_normalize(norm + i * d, d);
            r->search = norm + i * d;
        }
        r->meta = items[i].metadata_len ? items[i].metadata : NULL;
        r->meta_len = (uint32_t)items[i].metadata_len;
        if ((err = id_token_w(&o, r->id, r->id_len, r->tok)))
            goto out;
        memcpy(ti[i].tok, r->tok, 16);
        ti[i].i = i;
    }
    qsort(ti, n, sizeof(*ti), cmp_tokidx);
    for (size_t i = 1; i < n; i++)
        if (!memcmp(ti[i - 1].tok, ti[i].tok, 16)) {
            size_t a = ti[i - 1].i < ti[i].i ? ti[i - 1].i : ti[i].i;
            size_t b = ti[i - 1].i < ti[i].i ? ti[i].i : ti[i - 1].i;
            err = cdx_fail(CDX_ERR_INVALID_ARGUMENT, "duplicate id in the batch (items %zu and %zu)",
                           a, b);
            goto out;
        }
    /* Contents first: immutable, under fresh tokens. */
    size_t nc = 0;
    crec = calloc(n, sizeof(*crec));
    ckv = calloc(n, sizeof(*ckv));
    ckeys = calloc(n, sizeof(*ckeys));
    if (!crec || !ckv || !ckeys) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (!items[i].contents_len)
            continue;
        if ((err = eng_random(rows[i].content, 16)))
            goto out;
        rows[i].content_len = (uint32_t)items[i].contents_len;
        eng_buf_init(&crec[nc]);
        if ((err = seal(&o, HSM_P_CONTENT, ENG_K_CONTENT, rows[i].content, 0, items[i].contents,
                        items[i].contents_len, &crec[nc])))
            goto out;
        key_rec(ckeys[nc], ix->id, 't', rows[i].content);
        ckv[nc] = (eng_kv){ckeys[nc], crec[nc].data, crec[nc].len};
        nc++;
    }
    if (nc) {
        bool *created = malloc(nc * sizeof(bool));
        if (!created) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto out;
        }
        err = eng_store_setnx(e->cfg.store, ckv, nc, created);
        free(created);
        if (err)
            goto out;
    }
    uint64_t v = 0;
    err = write_batch(&o, rows, n, NULL, 0, NULL, &v);
    if (!err && version)
        *version = v;
out:
    if (crec)
        for (size_t i = 0; i < n; i++)
            eng_buf_free(&crec[i]);
    free(crec);
    free(ckv);
    free(ckeys);
    free(rows);
    free(ti);
    free(norm);
    op_end(&o);
    return err;
}

cdx_err eng_delete(eng *e, const char *name, const char *const *ids, const size_t *id_lens,
                   size_t n, uint64_t *deleted, uint64_t *version)
{
    struct idx *ix;
    cdx_err err = idx_get(e, name, &ix);
    if (err)
        return err;
    if (n == 0 || !ids)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "no ids to delete");
    if (n > CDX_GET_BATCH_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "delete of %zu ids exceeds %d", n,
                        CDX_GET_BATCH_MAX);
    for (size_t i = 0; i < n; i++)
        if ((err = check_id(ids[i], id_lens[i], i)))
            return err;
    op o;
    op_index(e, ix, &o);
    uint8_t(*toks)[16] = malloc(n * 16);
    if (!toks) {
        op_end(&o);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    size_t nt = 0;
    for (size_t i = 0; i < n && !err; i++) {
        err = id_token_w(&o, ids[i], id_lens[i], toks[nt]);
        bool dup = false;
        for (size_t j = 0; j < nt && !dup; j++)
            dup = !memcmp(toks[j], toks[nt], 16);
        if (!dup)
            nt++;
    }
    uint64_t v = 0, d = 0;
    if (!err)
        err = write_batch(&o, NULL, 0, (const uint8_t(*)[16])toks, nt, &d, &v);
    if (!err) {
        if (deleted)
            *deleted = d;
        if (version)
            *version = v;
    }
    free(toks);
    op_end(&o);
    return err;
}

/* ------------------------------------------------------------------ read side */

static uint64_t block_off(const eng_segref *r, eng_kind k)
{
    return k == ENG_K_SEARCH ? 0 : k == ENG_K_VECTORS ? r->search_len
                                                      : (uint64_t)r->search_len + r->vectors_len;
}

static uint64_t block_len(const eng_segref *r, eng_kind k)
{
    return k == ENG_K_SEARCH ? r->search_len : k == ENG_K_VECTORS ? r->vectors_len : r->meta_len;
}

/*
 * Fetch and open one block kind of n segments (pipelined GETRANGE).
 * *missing = true if any segment is absent from the store (pts[i] empty).
 */
static cdx_err fetch_blocks(op *o, const eng_segref *const *refs, size_t n, eng_kind kind,
                            eng_buf *pts, bool *missing)
{
    cdx_err err = CDX_OK;
    *missing = false;
    if (n == 0)
        return CDX_OK;
    char(*keys)[CDX_STORE_KEY_MAX] = malloc(n * sizeof(*keys));
    eng_range *rg = malloc(n * sizeof(*rg));
    eng_val *v = calloc(n, sizeof(*v));
    if (!keys || !rg || !v) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        key_rec(keys[i], o->ix->id, 's', refs[i]->token);
        rg[i] = (eng_range){keys[i], block_off(refs[i], kind), block_len(refs[i], kind)};
    }
    uint64_t t0 = mono_ns();
    err = eng_store_getrange(o->e->cfg.store, rg, n, v);
    stage_add(&o->e->ns_fetch, ENG_STAGE_FETCH, mono_ns() - t0);
    if (err)
        goto out;
    for (size_t i = 0; i < n && !err; i++) {
        eng_buf_init(&pts[i]);
        if (!v[i].found || v[i].len == 0) {
            *missing = true;
            continue;
        }
        err = unseal(o, HSM_P_PAYLOAD, kind, refs[i]->token, refs[i]->version, v[i].data,
                     v[i].len, NULL, &pts[i]);
    }
out:
    if (v)
        eng_vals_free(v, n);
    free(v);
    free(keys);
    free(rg);
    return err;
}

/*
 * Blocks of `kind` - search blocks (decoded) or vector blocks (wrapped) - of
 * the refs flagged in need[] (every ref when need is NULL), through the block
 * cache, into out[] (each referenced; NULL where the store has no such
 * segment, and then *missing).
 */
static cdx_err fetch_cached(op *o, const eng_manifest *m, const eng_segref *const *refs, size_t n,
                            const bool *need, eng_kind kind, eng_search **out, bool *missing)
{
    cdx_err err = CDX_OK;
    *missing = false;
    const eng_segref **miss = malloc((n + 1) * sizeof(*miss));
    size_t *where = malloc((n + 1) * sizeof(*where));
    eng_buf *pts = NULL;
    size_t nm = 0;
    if (!miss || !where) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (need && !need[i])
            continue;
        out[i] = eng_cache_get(o->e->cache, kind, refs[i]->token);
        if (!out[i]) {
            miss[nm] = refs[i];
            where[nm++] = i;
        }
    }
    if (nm == 0)
        goto out;
    pts = calloc(nm, sizeof(*pts));
    if (!pts) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    if ((err = fetch_blocks(o, miss, nm, kind, pts, missing)))
        goto out;
    for (size_t j = 0; j < nm && !err; j++) {
        if (!pts[j].data)
            continue; /* absent: *missing is set */
        eng_search *s = NULL;
        uint8_t *plain = pts[j].data;
        size_t len = pts[j].len;
        pts[j].data = NULL; /* ownership moves into the block */
        pts[j].len = pts[j].cap = 0;
        err = kind == ENG_K_SEARCH
                  ? eng_search_decode(plain, len, miss[j]->rows, code_size(m), coded(m), &s)
                  : eng_vectors_wrap(plain, len, miss[j]->rows, m->dim, &s);
        if (err)
            break;
        eng_cache_put(o->e->cache, kind, miss[j]->token, s);
        out[where[j]] = s;
    }
out:
    if (pts)
        for (size_t j = 0; j < nm; j++)
            eng_buf_free(&pts[j]);
    free(pts);
    free(miss);
    free(where);
    return err;
}

/* Search blocks through the cache. out[i] NULL where missing (then *missing). */
static cdx_err fetch_search(op *o, const eng_manifest *m, const eng_segref *const *refs, size_t n,
                            eng_search **out, bool *missing)
{
    return fetch_cached(o, m, refs, n, NULL, ENG_K_SEARCH, out, missing);
}

/*
 * A metadata block (u32 rows, then rows x (u32 len, bytes)) indexed once, so
 * loops over its rows (filters, training, compaction) do not rescan it.
 */
typedef struct meta_view {
    const uint8_t *base;
    uint32_t rows;
    uint32_t *off; /* rows + 1: start of each row's bytes; off[rows] ends the last */
} meta_view;

static void meta_view_free(meta_view *v)
{
    free(v->off);
    memset(v, 0, sizeof(*v));
}

/* False if the block is malformed (or memory ran out). */
static bool meta_view_build(const eng_buf *pt, meta_view *v)
{
    eng_rd r;
    memset(v, 0, sizeof(*v));
    eng_rd_init(&r, pt->data, pt->len);
    uint32_t rows = eng_rd_u32(&r);
    if (r.bad || rows > r.left / 4)
        return false;
    v->off = malloc((rows + 1u) * sizeof(uint32_t) * 2);
    if (!v->off)
        return false;
    v->base = pt->data;
    v->rows = rows;
    uint32_t *len = v->off + rows + 1;
    for (uint32_t i = 0; i < rows; i++) {
        size_t l;
        const uint8_t *p = eng_rd_lbytes(&r, CDX_METADATA_MAX, &l);
        if (r.bad) {
            meta_view_free(v);
            return false;
        }
        v->off[i] = (uint32_t)(p - pt->data);
        len[i] = (uint32_t)l;
    }
    if (!eng_rd_done(&r)) {
        meta_view_free(v);
        return false;
    }
    return true;
}

/* Row `row` of an indexed metadata block. */
static bool meta_view_row(const meta_view *v, uint32_t row, const uint8_t **p, size_t *len)
{
    if (!v->off || row >= v->rows)
        return false;
    *p = v->base + v->off[row];
    *len = v->off[v->rows + 1 + row];
    return true;
}

/* One row of a metadata block plaintext (a single lookup). */
static bool meta_row(const eng_buf *pt, uint32_t row, const uint8_t **p, size_t *len)
{
    meta_view v;
    if (!meta_view_build(pt, &v))
        return false;
    bool ok = meta_view_row(&v, row, p, len);
    meta_view_free(&v);
    return ok;
}

/* Vector `row` of a segment: from its vector block, or its (float) search codes. */
static bool vector_row(const eng_manifest *m, const eng_search *s, const eng_buf *vec,
                       uint32_t row, float *out)
{
    size_t d = m->dim;
    if (row >= s->rows)
        return false;
    if (originals_in_search(m)) {
        memcpy(out, s->codes + (size_t)row * s->code_size, d * sizeof(float));
        return true;
    }
    if (!vec->data || vec->len != (size_t)s->rows * d * sizeof(float))
        return false;
    memcpy(out, vec->data + (size_t)row * d * sizeof(float), d * sizeof(float));
    return true;
}

/* Find a segment of a cluster by token. */
static const eng_segref *find_seg(const eng_manifest *m, uint32_t cluster, const uint8_t tok[16])
{
    if (cluster >= eng_manifest_nclusters(m))
        return NULL;
    const eng_cluster *c = &m->clusters[cluster];
    for (uint32_t i = 0; i < c->nseg; i++)
        if (!memcmp(c->seg[i].token, tok, 16))
            return &c->seg[i];
    return NULL;
}

static cdx_err fetch_contents(op *o, const eng_ident *id, uint8_t **data, size_t *len)
{
    char key[CDX_STORE_KEY_MAX];
    key_rec(key, o->ix->id, 't', id->content);
    const char *keys[1] = {key};
    eng_val v = {0};
    eng_buf pt;
    eng_buf_init(&pt);
    cdx_err err = eng_store_mget(o->e->cfg.store, keys, 1, &v);
    if (err)
        return err;
    if (!v.found) {
        /* Superseded and swept after our bucket read, or lost: the caller re-reads once. */
        eng_vals_free(&v, 1);
        return cdx_fail(ENG_MOVED, "contents the id map names are missing");
    }
    err = unseal(o, HSM_P_CONTENT, ENG_K_CONTENT, id->content, 0, v.data, v.len, NULL, &pt);
    eng_vals_free(&v, 1);
    if (!err && pt.len != id->content_len)
        err = cdx_fail(CDX_ERR_INTEGRITY, "contents have the wrong length");
    if (err) {
        eng_buf_free(&pt);
        return err;
    }
    *data = malloc(pt.len ? pt.len : 1);
    if (!*data) {
        eng_buf_free(&pt);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    memcpy(*data, pt.data, pt.len);
    *len = pt.len;
    eng_buf_free(&pt);
    return CDX_OK;
}

static void hit_free(eng_hit *h)
{
    free(h->id);
    free(h->vector);
    free(h->metadata);
    free(h->contents);
}

/* Served state at least min_version, or STALE. */
static cdx_err load_min(op *o, uint64_t min_version, eng_manifest **m)
{
    cdx_err err = load_state(o, false, min_version, m);
    if (err || (*m)->version >= min_version)
        return err;
    munref(*m);
    if ((err = load_state(o, true, min_version, m)))
        return err;
    if ((*m)->version < min_version) {
        uint64_t have = (*m)->version;
        munref(*m);
        *m = NULL;
        return cdx_fail(CDX_ERR_STALE, "index %s is at version %llu, older than the requested "
                        "%llu", o->ix->name, (unsigned long long)have,
                        (unsigned long long)min_version);
    }
    return CDX_OK;
}

void eng_get_result_free(eng_get_result *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++)
        if (r->found && r->found[i])
            hit_free(&r->hits[i]);
    free(r->found);
    free(r->hits);
    free(r);
}

cdx_err eng_get(eng *e, const char *name, const char *const *ids, const size_t *id_lens, size_t n,
                unsigned want, uint64_t min_version, eng_get_result **out)
{
    struct idx *ix;
    cdx_err err = idx_get(e, name, &ix);
    *out = NULL;
    if (err)
        return err;
    if (n == 0 || n > CDX_GET_BATCH_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "get needs 1-%d ids", CDX_GET_BATCH_MAX);
    for (size_t i = 0; i < n; i++)
        if ((err = check_id(ids[i], id_lens[i], i)))
            return err;
    op o;
    op_index(e, ix, &o);
    eng_get_result *r = calloc(1, sizeof(*r));
    uint8_t(*toks)[16] = malloc(n * 16);
    eng_manifest *m = NULL;
    bucketset bs;
    memset(&bs, 0, sizeof(bs));
    if (!r || !toks || !(r->found = calloc(n, sizeof(bool))) ||
        !(r->hits = calloc(n, sizeof(eng_hit)))) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    r->n = n;
    for (size_t i = 0; i < n && !err; i++)
        err = id_token(&o, ids[i], id_lens[i], toks[i]);
    if (err)
        goto out;
    for (int attempt = 0; attempt < 2; attempt++) {
        bool refresh = false;
        munref(m);
        m = NULL;
        bucketset_free(&bs);
        if ((err = attempt ? load_state(&o, true, min_version, &m) : load_min(&o, min_version, &m)))
            goto out;
        bool wantb[ENG_BUCKETS] = {false};
        for (size_t i = 0; i < n; i++)
            wantb[eng_bucket_of(toks[i])] = true;
        if ((err = load_buckets(&o, m, wantb, &bs))) {
            if (err == ENG_MOVED && attempt == 0) {
                err = CDX_OK;
                continue;
            }
            goto out;
        }
        for (size_t i = 0; i < n && !err && !refresh; i++) {
            eng_ident *id = eng_bucket_find(bs.b[eng_bucket_of(toks[i])], toks[i]);
            if (r->found[i]) {
                hit_free(&r->hits[i]);
                memset(&r->hits[i], 0, sizeof(r->hits[i]));
                r->found[i] = false;
            }
            if (!id)
                continue;
            eng_hit *h = &r->hits[i];
            h->id = malloc(id->id_len + 1u);
            if (!h->id) {
                err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
                break;
            }
            memcpy(h->id, id->id, id->id_len + 1u);
            h->id_len = id->id_len;
            r->found[i] = true;
            if (!(want & (ENG_WANT_VECTOR | ENG_WANT_METADATA | ENG_WANT_CONTENTS)))
                continue;
            const eng_segref *sr = find_seg(m, id->cluster, id->seg);
            if (!sr) {
                err = cdx_fail(CDX_ERR_INTEGRITY, "the id map names a segment the manifest "
                               "does not list");
                break;
            }
            if (want & ENG_WANT_VECTOR) {
                eng_search *s = NULL;
                bool mis = false;
                eng_buf vec;
                eng_buf_init(&vec);
                if ((err = fetch_search(&o, m, &sr, 1, &s, &mis)))
                    break;
                if (!mis && !originals_in_search(m))
                    err = fetch_blocks(&o, &sr, 1, ENG_K_VECTORS, &vec, &mis);
                if (!err && mis) {
                    refresh = true;
                } else if (!err) {
                    h->vector = malloc(m->dim * sizeof(float));
                    if (!h->vector)
                        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
                    else if (!vector_row(m, s, &vec, id->row, h->vector))
                        err = cdx_fail(CDX_ERR_INTEGRITY, "vector block is malformed");
                }
                eng_search_release(s);
                eng_buf_free(&vec);
                if (err || refresh)
                    break;
            }
            if (want & ENG_WANT_METADATA) {
                eng_buf mb;
                bool mis = false;
                if ((err = fetch_blocks(&o, &sr, 1, ENG_K_META, &mb, &mis)))
                    break;
                const uint8_t *p;
                size_t len;
                if (mis) {
                    refresh = true;
                } else if (!meta_row(&mb, id->row, &p, &len)) {
                    err = cdx_fail(CDX_ERR_INTEGRITY, "metadata block is malformed");
                } else if (len) {
                    h->metadata = malloc(len + 1);
                    if (!h->metadata) {
                        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
                    } else {
                        memcpy(h->metadata, p, len);
                        h->metadata[len] = '\0';
                        h->metadata_len = len;
                    }
                }
                eng_buf_free(&mb);
                if (err || refresh)
                    break;
            }
            if ((want & ENG_WANT_CONTENTS) && id->content_len &&
                (err = fetch_contents(&o, id, &h->contents, &h->contents_len))) {
                if (err == ENG_MOVED) {
                    err = CDX_OK;
                    refresh = true;
                }
                break;
            }
        }
        if (err || !refresh)
            break;
        if (attempt == 1)
            err = cdx_fail(CDX_ERR_INTEGRITY, "a record the current state references (segment "
                           "or contents) is missing from the store");
    }
    if (!err)
        r->version = m->version;
out:
    in_index(err, name);
    munref(m);
    bucketset_free(&bs);
    free(toks);
    op_end(&o);
    if (err) {
        eng_get_result_free(r);
        return err;
    }
    *out = r;
    return CDX_OK;
}

/* ------------------------------------------------------------------ query */

/* (segment token, row) pairs that later segments of a cluster tombstone. */
typedef struct deadset {
    size_t n;
    uint8_t (*key)[20];
} deadset;

static int cmp20(const void *a, const void *b)
{
    return memcmp(a, b, 20);
}

static cdx_err deadset_build(eng_search *const *blocks, size_t n, deadset *ds)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += blocks[i]->ntomb;
    ds->n = 0;
    ds->key = NULL;
    if (!total)
        return CDX_OK;
    ds->key = malloc(total * 20);
    if (!ds->key)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    for (size_t i = 0; i < n; i++)
        for (uint32_t t = 0; t < blocks[i]->ntomb; t++)
            memcpy(ds->key[ds->n++], blocks[i]->tombs + (size_t)t * 20, 20);
    qsort(ds->key, ds->n, 20, cmp20);
    return CDX_OK;
}

static bool deadset_has(const deadset *ds, const uint8_t tok[16], uint32_t row)
{
    if (!ds->n)
        return false;
    uint8_t k[20];
    memcpy(k, tok, 16);
    eng_be32(k + 16, row);
    return bsearch(k, ds->key, ds->n, 20, cmp20) != NULL;
}

typedef struct qctx {
    op *o;
    const eng_manifest *m;
    const eng_query *q;
    eng_filter *filter;
    uint32_t top_k, nprobe;
    eng_km_metric km;
    eng_query_result *res;
    cdx_err err;
    bool need_refresh;
} qctx;

static float final_distance(eng_metric m, float raw)
{
    switch (m) {
    case ENG_METRIC_EUCLIDEAN:
        return sqrtf(raw > 0 ? raw : 0);
    case ENG_METRIC_COSINE:
        return 1.0f + raw; /* raw = -cos */
    default:
        return raw; /* squared L2, or -<q,x> */
    }
}

/* Does row r's metadata match the query's filter? */
static cdx_err filter_row(const qctx *c, const meta_view *mv, uint32_t r, bool *match)
{
    const uint8_t *mp;
    size_t ml;
    json_t *j = NULL;
    if (!meta_view_row(mv, r, &mp, &ml))
        return cdx_fail(CDX_ERR_INTEGRITY, "metadata block is malformed");
    if (ml && eng_json_parse_object((const char *)mp, ml, CDX_METADATA_MAX, &j))
        return cdx_fail(CDX_ERR_INTEGRITY, "stored metadata is not valid JSON");
    *match = eng_filter_match(c->filter, j);
    json_decref(j);
    return CDX_OK;
}

/* Row r of block i is a candidate: not tombstoned in its cluster, and matching the filter. */
static cdx_err row_live(const qctx *c, const deadset *ds, const uint8_t tok[16],
                        const meta_view *mviews, size_t i, uint32_t r, bool *live)
{
    *live = false;
    if (deadset_has(ds, tok, r))
        return CDX_OK;
    if (c->filter)
        return filter_row(c, &mviews[i], r, live);
    *live = true;
    return CDX_OK;
}

/* A float no smaller than x (the top-k keeps floats; a bound must stay a bound). */
static float float_up(double x)
{
    float f = (float)x;
    return (double)f < x ? nextafterf(f, INFINITY) : f;
}

typedef struct scand {
    double lo;    /* lower bound of the row's score (smaller is better) */
    uint64_t ref; /* block << 32 | row */
} scand;

/* Vector blocks (originals) of the refs flagged in need[], through the cache. */
static cdx_err fetch_vectors(op *o, const eng_manifest *m, const eng_segref **refs, size_t n,
                             const bool *need, eng_search **vecs, bool *missing)
{
    return fetch_cached(o, m, refs, n, need, ENG_K_VECTORS, vecs, missing);
}

/*
 * The scan of a trained index (eng_screen.h): bound every live row's score
 * from its codes with an integer dot product, keep the k best upper bounds,
 * and rescore exactly - on the SQ8 codes for IVFSQ8, on the originals for
 * IVFFlat - only the rows whose lower bound reaches the k-th upper bound.
 * tk ends up holding what scoring every row would have put there.
 */
static cdx_err scan_screened(qctx *c, const float *qv, const eng_segref **refs,
                             eng_search **blocks, size_t nref, const size_t *gend, uint32_t np,
                             const meta_view *mviews, eng_topk *tk, uint64_t *ns_io)
{
    const eng_manifest *m = c->m;
    op *o = c->o;
    size_t d = m->dim;
    bool l2 = c->km == ENG_KM_L2, sq8 = is_sq8(m);
    cdx_err err = CDX_OK;
    eng_sq8 sq = {.d = d, .vmin = m->sq_vmin, .step = m->sq_step};
    int16_t *w = malloc(d * sizeof(int16_t));
    float *qaux = malloc(d * sizeof(float)), *xn = malloc(d * sizeof(float));
    eng_topk *ub = eng_topk_new(c->top_k, false);
    scand *cv = NULL;
    size_t ncv = 0, capcv = 0, caprows = 0, nrows = 0, nresc = 0;
    int64_t *S = NULL;
    double *lo = NULL, *hi = NULL;
    bool *need = NULL;
    eng_search **vecs = NULL;
    if (!w || !qaux || !xn || !ub) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    eng_screen sc;
    bool screen = !atomic_load(&o->e->no_screen) && eng_screen_prepare(&sc, &sq, qv, c->km, sq8, w);
    for (uint32_t p = 0, start = 0; p < np && !err; start = (uint32_t)gend[p], p++) {
        size_t end = gend[p];
        if (end == start)
            continue;
        deadset ds;
        if ((err = deadset_build(blocks + start, end - start, &ds)))
            break;
        for (size_t i = start; i < end && !err; i++) {
            eng_search *b = blocks[i];
            if (!b->rows)
                continue;
            if (!b->aux) {
                err = cdx_fail(CDX_ERR_INTEGRITY, "search block has no screen data");
                break;
            }
            if (b->rows > caprows) {
                int64_t *s2 = realloc(S, b->rows * sizeof(*S));
                double *l2p = s2 ? realloc(lo, b->rows * sizeof(*lo)) : NULL;
                double *h2 = l2p ? realloc(hi, b->rows * sizeof(*hi)) : NULL;
                S = s2 ? s2 : S;
                lo = l2p ? l2p : lo;
                hi = h2 ? h2 : hi;
                if (!s2 || !l2p || !h2) {
                    err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
                    break;
                }
                caprows = b->rows;
            }
            if (screen)
                eng_screen_bounds(&sc, b->codes, b->aux, b->rows, S, lo, hi);
            nrows += b->rows;
            for (uint32_t r = 0; r < b->rows; r++) {
                /* Orientation: smaller is better (inner products negated). */
                double dlo = !screen ? -INFINITY : l2 ? lo[r] : -hi[r];
                double dhi = !screen ? INFINITY : l2 ? hi[r] : -lo[r];
                bool live;
                if (dlo > (double)eng_topk_threshold(ub))
                    continue;
                if ((err = row_live(c, &ds, refs[i]->token, mviews, i, r, &live)))
                    break;
                if (!live)
                    continue;
                uint64_t ref = (uint64_t)i << 32 | r;
                eng_topk_push(ub, float_up(dhi), ref);
                if (ncv == capcv) {
                    capcv = capcv ? capcv * 2 : 256;
                    scand *c2 = realloc(cv, capcv * sizeof(*cv));
                    if (!c2) {
                        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
                        break;
                    }
                    cv = c2;
                }
                cv[ncv++] = (scand){dlo, ref};
            }
        }
        free(ds.key);
    }
    if (err)
        goto out;
    double cut = (double)eng_topk_threshold(ub);
    if (!sq8) {
        need = calloc(nref + 1, sizeof(*need));
        vecs = calloc(nref + 1, sizeof(*vecs));
        if (!need || !vecs) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto out;
        }
        for (size_t j = 0; j < ncv; j++)
            if (cv[j].lo <= cut)
                need[cv[j].ref >> 32] = true;
        bool missing = false;
        uint64_t t0 = mono_ns();
        err = fetch_vectors(o, m, refs, nref, need, vecs, &missing);
        *ns_io = mono_ns() - t0; /* counted as fetch and decrypt by fetch_blocks */
        if (err)
            goto out;
        if (missing) {
            c->need_refresh = true;
            goto out;
        }
    }
    float bias = 0;
    if (sq8)
        l2 ? eng_sq8_prepare_l2(&sq, qv, qaux) : (void)(bias = eng_sq8_prepare_dot(&sq, qv, qaux));
    for (size_t j = 0; j < ncv; j++) {
        if (cv[j].lo > cut)
            continue;
        nresc++;
        size_t i = (size_t)(cv[j].ref >> 32);
        uint32_t r = (uint32_t)cv[j].ref;
        float v;
        if (sq8) {
            const uint8_t *code = blocks[i]->codes + (size_t)r * d;
            if (l2)
                eng_sq8_l2sq_many(qaux, m->sq_step, code, 1, d, &v);
            else
                eng_sq8_dot_many(qaux, bias, code, 1, d, &v);
        } else {
            const float *x = (const float *)(const void *)(vecs[i]->codes) + (size_t)r * d;
            if (m->metric == ENG_METRIC_COSINE) {
                /* Searched on normalised vectors, as written to the codes. */
                memcpy(xn, x, d * sizeof(float));
                eng_normalize(xn, d);
                x = xn;
            }
            v = l2 ? eng_l2sq(qv, x, d) : eng_dot(qv, x, d);
        }
        eng_topk_push(tk, l2 ? v : -v, cv[j].ref);
    }
    atomic_fetch_add(&o->e->n_screened, nrows);
    atomic_fetch_add(&o->e->n_rescored, nresc);
out:
    if (vecs)
        for (size_t i = 0; i < nref; i++)
            eng_search_release(vecs[i]);
    free(vecs);
    free(need);
    free(cv);
    free(S);
    free(lo);
    free(hi);
    free(w);
    free(qaux);
    free(xn);
    eng_topk_free(ub);
    return err;
}

/* One query vector: probe, scan, filter, top-k, then fill the hits. */
static cdx_err query_one(qctx *c, size_t qi)
{
    const eng_manifest *m = c->m;
    op *o = c->o;
    size_t d = m->dim;
    cdx_err err = CDX_OK;
    uint32_t nc = eng_manifest_nclusters(m);
    uint32_t *probes = malloc(c->nprobe * sizeof(uint32_t));
    float *qv = malloc(d * sizeof(float));
    float *aux = malloc(d * sizeof(float));
    float *dist = NULL;
    const eng_segref **refs = NULL;
    eng_search **blocks = NULL;
    eng_buf *metas = NULL;
    meta_view *mviews = NULL;
    size_t nref = 0, capref = 0, *gend = NULL;
    eng_topk *tk = eng_topk_new(c->top_k, false);
    if (!probes || !qv || !aux || !tk) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    memcpy(qv, c->q->vectors + qi * d, d * sizeof(float));
    if (m->metric == ENG_METRIC_COSINE)
        eng_normalize(qv, d);
    uint64_t t0 = mono_ns();
    uint32_t np = 1;
    probes[0] = 0;
    if (m->n_clusters) {
        size_t rescored = 0;
        np = m->probe ? (uint32_t)eng_probe_run(m->probe, qv, c->nprobe, probes, &rescored) : 0;
        atomic_fetch_add(&o->e->n_probe_rescored, rescored);
        if (np == 0) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "coarse quantisation failed");
            goto out;
        }
    }
    stage_add(&o->e->ns_coarse, ENG_STAGE_COARSE, mono_ns() - t0);
    /* gend[p]: end of probe p's segments in refs (tombstones apply within a cluster). */
    gend = calloc(np + 1, sizeof(*gend));
    if (!gend) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (uint32_t p = 0; p < np; p++) {
        gend[p] = nref;
        if (probes[p] >= nc)
            continue;
        const eng_cluster *cl = &m->clusters[probes[p]];
        for (uint32_t s = 0; s < cl->nseg; s++) {
            if (nref == capref) {
                capref = capref ? capref * 2 : 64;
                const eng_segref **r2 = realloc(refs, capref * sizeof(*r2));
                if (!r2) {
                    err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
                    goto out;
                }
                refs = r2;
            }
            refs[nref++] = &cl->seg[s];
        }
        gend[p] = nref;
    }
    blocks = calloc(nref + 1, sizeof(*blocks));
    if (!blocks) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    bool missing = false;
    if ((err = fetch_search(o, m, refs, nref, blocks, &missing)))
        goto out;
    if (missing) {
        c->need_refresh = true;
        goto out;
    }
    if (c->filter) {
        metas = calloc(nref + 1, sizeof(*metas));
        mviews = calloc(nref + 1, sizeof(*mviews));
        if (!metas || !mviews) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto out;
        }
        if ((err = fetch_blocks(o, refs, nref, ENG_K_META, metas, &missing)))
            goto out;
        if (missing) {
            c->need_refresh = true;
            goto out;
        }
        for (size_t i = 0; i < nref; i++)
            if (!meta_view_build(&metas[i], &mviews[i])) {
                err = cdx_fail(CDX_ERR_INTEGRITY, "metadata block is malformed");
                goto out;
            }
    }
    t0 = mono_ns();
    uint64_t ns_io = 0;
    if (coded(m)) {
        err = scan_screened(c, qv, refs, blocks, nref, gend, np, mviews, tk, &ns_io);
        if (!err && c->need_refresh)
            goto out;
    } else {
        /* Untrained: every row's float search vector. */
        for (uint32_t p = 0, start = 0; p < np; start = (uint32_t)gend[p], p++) {
            size_t end = gend[p];
            if (end == start)
                continue;
            deadset ds;
            if ((err = deadset_build(blocks + start, end - start, &ds)))
                goto out;
            for (size_t i = start; i < end && !err; i++) {
                eng_search *b = blocks[i];
                if (!b->rows)
                    continue;
                float *nd = realloc(dist, b->rows * sizeof(float));
                if (!nd) {
                    err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
                    break;
                }
                dist = nd;
                const float *x = (const float *)(const void *)b->codes;
                if (c->km == ENG_KM_L2)
                    eng_l2sq_many(qv, x, b->rows, d, dist);
                else
                    eng_dot_many(qv, x, b->rows, d, dist);
                for (uint32_t r = 0; r < b->rows; r++) {
                    float dv = c->km == ENG_KM_L2 ? dist[r] : -dist[r];
                    bool live;
                    if (dv > eng_topk_threshold(tk))
                        continue;
                    if ((err = row_live(c, &ds, refs[i]->token, mviews, i, r, &live)))
                        break;
                    if (!live)
                        continue;
                    eng_topk_push(tk, dv, (uint64_t)i << 32 | r);
                }
            }
            free(ds.key);
        }
    }
    stage_add(&o->e->ns_distance, ENG_STAGE_DISTANCE, mono_ns() - t0 - ns_io);
    if (err)
        goto out;
    /* Results, best first. */
    size_t k = c->top_k;
    float *dd = malloc(k * sizeof(float));
    uint64_t *rr = malloc(k * sizeof(uint64_t));
    size_t got = dd && rr ? eng_topk_sorted(tk, dd, rr) : 0;
    eng_hit *hits = calloc(got ? got : 1, sizeof(*hits));
    if (!dd || !rr || !hits) {
        free(dd);
        free(rr);
        free(hits);
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    c->res->hits[qi] = hits;
    c->res->n[qi] = got;
    for (size_t i = 0; i < got && !err; i++) {
        size_t si = (size_t)(rr[i] >> 32);
        uint32_t row = (uint32_t)rr[i];
        eng_search *b = blocks[si];
        eng_hit *h = &hits[i];
        h->distance = final_distance((eng_metric)m->metric, dd[i]);
        h->id_len = b->id_len[row];
        h->id = malloc(h->id_len + 1u);
        if (!h->id) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            break;
        }
        memcpy(h->id, b->plain + b->id_pos[row], h->id_len);
        h->id[h->id_len] = '\0';
        if (c->q->want & ENG_WANT_VECTOR) {
            eng_buf vec;
            eng_buf_init(&vec);
            bool mis = false;
            if (!originals_in_search(m))
                err = fetch_blocks(o, &refs[si], 1, ENG_K_VECTORS, &vec, &mis);
            h->vector = malloc(d * sizeof(float));
            if (!err && (mis || !h->vector || !vector_row(m, b, &vec, row, h->vector)))
                err = cdx_fail(CDX_ERR_INTEGRITY, "vector block missing or malformed");
            eng_buf_free(&vec);
        }
        if (!err && (c->q->want & ENG_WANT_METADATA)) {
            eng_buf mb;
            eng_buf_init(&mb);
            bool mis = false;
            if (!mviews)
                err = fetch_blocks(o, &refs[si], 1, ENG_K_META, &mb, &mis);
            const uint8_t *mp;
            size_t ml;
            bool have = mviews ? meta_view_row(&mviews[si], row, &mp, &ml)
                               : !err && !mis && meta_row(&mb, row, &mp, &ml);
            if (!err && !have)
                err = cdx_fail(CDX_ERR_INTEGRITY, "metadata block missing or malformed");
            else if (!err && ml) {
                h->metadata = malloc(ml + 1);
                if (h->metadata) {
                    memcpy(h->metadata, mp, ml);
                    h->metadata[ml] = '\0';
                    h->metadata_len = ml;
                }
            }
            eng_buf_free(&mb);
        }
    }
    if (!err && (c->q->want & ENG_WANT_CONTENTS) && got) {
        /* Contents are found through the id map. */
        bucketset bs;
        memset(&bs, 0, sizeof(bs));
        bool wantb[ENG_BUCKETS] = {false};
        uint8_t(*toks)[16] = malloc(got * 16);
        for (size_t i = 0; toks && i < got && !err; i++) {
            err = id_token(o, hits[i].id, hits[i].id_len, toks[i]);
            wantb[eng_bucket_of(toks[i])] = true;
        }
        if (!toks)
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        if (!err)
            err = load_buckets(o, m, wantb, &bs);
        for (size_t i = 0; !err && i < got; i++) {
            eng_ident *id = eng_bucket_find(bs.b[eng_bucket_of(toks[i])], toks[i]);
            if (id && id->content_len)
                err = fetch_contents(o, id, &hits[i].contents, &hits[i].contents_len);
        }
        free(toks);
        bucketset_free(&bs);
    }
    free(dd);
    free(rr);
out:
    if (blocks)
        for (size_t i = 0; i < nref; i++)
            eng_search_release(blocks[i]);
    if (metas)
        for (size_t i = 0; i < nref; i++) {
            eng_buf_free(&metas[i]);
            if (mviews)
                meta_view_free(&mviews[i]);
        }
    free(metas);
    free(mviews);
    free(gend);
    free(blocks);
    free(refs);
    free(dist);
    free(probes);
    free(qv);
    free(aux);
    eng_topk_free(tk);
    return err;
}

void eng_query_result_free(eng_query_result *r)
{
    if (!r)
        return;
    for (size_t q = 0; q < r->nq; q++) {
        for (size_t i = 0; r->hits && r->hits[q] && i < r->n[q]; i++)
            hit_free(&r->hits[q][i]);
        if (r->hits)
            free(r->hits[q]);
    }
    free(r->hits);
    free(r->n);
    free(r);
}

typedef struct qthread {
    qctx *c;
    size_t from, to;
    cdx_err err;
    char detail[512];
} qthread;

static void *qworker(void *arg)
{
    qthread *t = arg;
    for (size_t i = t->from; i < t->to && !t->err && !t->c->need_refresh; i++)
        t->err = query_one(t->c, i);
    if (t->err)
        snprintf(t->detail, sizeof(t->detail), "%s", cdx_err_detail());
    return NULL;
}

cdx_err eng_query_run(eng *e, const char *name, const eng_query *q, eng_query_result **out)
{
    struct idx *ix;
    cdx_err err = idx_get(e, name, &ix);
    *out = NULL;
    if (err)
        return err;
    size_t d = ix->cat.dim;
    if (!q->vectors || q->nq == 0)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "no query vectors");
    if (q->nq > CDX_QUERY_BATCH_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "%zu query vectors exceed %d", q->nq,
                        CDX_QUERY_BATCH_MAX);
    if (q->top_k > CDX_TOPK_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "top_k %u exceeds %d", q->top_k, CDX_TOPK_MAX);
    for (size_t i = 0; i < q->nq; i++)
        if (!finite_vec(q->vectors + i * d, d))
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "query %zu has NaN or Inf", i);
    qctx c = {0};
    c.q = q;
    c.top_k = q->top_k ? q->top_k : CDX_TOPK_DEFAULT;
    if (q->filter_len) {
        if ((err = eng_filter_parse(q->filter, q->filter_len, &c.filter)))
            return err;
        if (eng_filter_is_trivial(c.filter)) {
            eng_filter_free(c.filter);
            c.filter = NULL;
        }
    }
    op o;
    op_index(e, ix, &o);
    c.o = &o;
    eng_manifest *m = NULL;
    eng_query_result *res = NULL;
    atomic_fetch_add(&e->queries, q->nq);
    for (int attempt = 0; attempt < 2; attempt++) {
        munref(m);
        m = NULL;
        eng_query_result_free(res);
        res = NULL;
        c.need_refresh = false;
        if ((err = attempt ? load_state(&o, true, q->min_version, &m)
                           : load_min(&o, q->min_version, &m)))
            break;
        uint32_t nc = m->n_clusters;
        if (q->n_probes > (nc ? nc : 1)) {
            err = cdx_fail(CDX_ERR_INVALID_ARGUMENT, "n_probes %u exceeds the index's %u clusters",
                           q->n_probes, nc ? nc : 1);
            break;
        }
        c.nprobe = q->n_probes ? q->n_probes : (nc > 32 ? (nc + 31) / 32 : 1);
        c.km = km_of(m);
        c.m = m;
        res = calloc(1, sizeof(*res));
        if (!res || !(res->n = calloc(q->nq, sizeof(size_t))) ||
            !(res->hits = calloc(q->nq, sizeof(eng_hit *)))) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            break;
        }
        res->nq = q->nq;
        c.res = res;
        unsigned nt = e->cfg.query_threads;
        if (nt > q->nq)
            nt = (unsigned)q->nq;
        /* Subkeys first, so worker threads only read the op. */
        hsm_subkey *k;
        if ((err = op_key(&o, HSM_P_PAYLOAD, &k)) ||
            ((q->want & ENG_WANT_CONTENTS) &&
             ((err = op_key(&o, HSM_P_TOKEN, &k)) || (err = op_key(&o, HSM_P_CONTENT, &k)) ||
              (err = op_key(&o, HSM_P_MANIFEST, &k)))))
            break;
        if (nt <= 1) {
            for (size_t i = 0; i < q->nq && !err && !c.need_refresh; i++)
                err = query_one(&c, i);
        } else {
            pthread_t th[64];
            qthread qt[64];
            if (nt > 64)
                nt = 64;
            for (unsigned t = 0; t < nt; t++) {
                qt[t] = (qthread){&c, q->nq * t / nt, q->nq * (t + 1) / nt, CDX_OK, ""};
                pthread_create(&th[t], NULL, qworker, &qt[t]);
            }
            for (unsigned t = 0; t < nt; t++) {
                pthread_join(th[t], NULL);
                if (qt[t].err && !err) {
                    err = qt[t].err;
                    cdx_fail(err, "%s", qt[t].detail);
                }
            }
        }
        if (err || !c.need_refresh)
            break;
        if (attempt == 1)
            err = cdx_fail(CDX_ERR_INTEGRITY, "a segment the current manifest lists is missing "
                           "from the store");
    }
    if (!err)
        res->version = m->version;
    munref(m);
    eng_filter_free(c.filter);
    op_end(&o);
    if (err) {
        eng_query_result_free(res);
        return in_index(err, name);
    }
    *out = res;
    return CDX_OK;
}

/* ------------------------------------------------------------------ list, count */

cdx_err eng_count(eng *e, const char *name, uint64_t *count)
{
    op o;
    cdx_err err = op_open(e, name, &o);
    if (err)
        return err;
    eng_manifest *m = NULL;
    if (!(err = load_state(&o, false, 0, &m)))
        *count = m->count;
    munref(m);
    op_end(&o);
    return err;
}

cdx_err eng_index_warm(eng *e, const char *name, uint64_t *blocks)
{
    op o;
    cdx_err err = op_open(e, name, &o);
    if (err)
        return err;
    eng_manifest *m = NULL;
    const eng_segref *refs[64];
    eng_search *got[64];
    bool need[64];
    size_t n = 0, loaded = 0;
    if ((err = load_state(&o, false, 0, &m)))
        goto out;
    bool vectors = coded(m) && !is_sq8(m); /* IVFFlat rescoring reads its originals */
    for (size_t i = 0; i < 64; i++)
        need[i] = true;
    uint32_t nc = eng_manifest_nclusters(m);
    for (uint32_t c = 0, s = 0; c < nc && !err;) {
        if (s < m->clusters[c].nseg)
            refs[n++] = &m->clusters[c].seg[s++];
        else {
            c++;
            s = 0;
        }
        if (n < 64 && (c < nc || n == 0))
            continue;
        /* A full batch, or the last one. */
        bool missing = false;
        memset(got, 0, sizeof(got));
        err = fetch_search(&o, m, refs, n, got, &missing);
        for (size_t i = 0; i < n; i++)
            eng_search_release(got[i]);
        if (!err && !missing && vectors) {
            memset(got, 0, sizeof(got));
            err = fetch_vectors(&o, m, refs, n, need, got, &missing);
            for (size_t i = 0; i < n; i++)
                eng_search_release(got[i]);
        }
        if (!err && missing)
            err = cdx_fail(CDX_ERR_INTEGRITY, "a segment the manifest lists is missing");
        loaded += n;
        n = 0;
    }
    if (blocks)
        *blocks = loaded;
out:
    munref(m);
    op_end(&o);
    return in_index(err, name);
}

void eng_ids_free(char **ids, size_t *id_lens, size_t n)
{
    for (size_t i = 0; ids && i < n; i++)
        free(ids[i]);
    free(ids);
    free(id_lens);
}

/* Cursor: u8 fmt | u32 bucket | tok[16] (last returned), sealed under the query subkey. */
static cdx_err cursor_open(op *o, const char *text, unsigned *bucket, uint8_t last[16], bool *has)
{
    *bucket = 0;
    *has = false;
    if (!text || !*text)
        return CDX_OK;
    size_t n = strlen(text);
    if (n % 2 || n / 2 > 256)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "cursor is not one this index issued");
    uint8_t raw[256];
    if (cdx_hex_decode(text, raw, n / 2))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "cursor is not one this index issued");
    eng_buf pt;
    eng_buf_init(&pt);
    cdx_err err = unseal(o, HSM_P_QUERY, ENG_K_CURSOR, ZERO16, 0, raw, n / 2, NULL, &pt);
    if (err) {
        eng_buf_free(&pt);
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "cursor is not one this index issued");
    }
    eng_rd r;
    eng_rd_init(&r, pt.data, pt.len);
    uint8_t fmt = eng_rd_u8(&r);
    *bucket = eng_rd_u32(&r);
    eng_rd_copy(&r, last, 16);
    bool ok = eng_rd_done(&r) && fmt == 1 && *bucket < ENG_BUCKETS;
    eng_buf_free(&pt);
    if (!ok)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "cursor is malformed");
    *has = true;
    return CDX_OK;
}

static cdx_err cursor_seal(op *o, unsigned bucket, const uint8_t last[16], char **out)
{
    eng_buf pt, rec;
    eng_buf_init(&pt);
    eng_buf_init(&rec);
    eng_buf_u8(&pt, 1);
    eng_buf_u32(&pt, bucket);
    eng_buf_put(&pt, last, 16);
    cdx_err err = seal(o, HSM_P_QUERY, ENG_K_CURSOR, ZERO16, 0, pt.data, pt.len, &rec);
    if (!err) {
        *out = malloc(rec.len * 2 + 1);
        if (*out)
            cdx_hex_encode(rec.data, rec.len, *out);
        else
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    eng_buf_free(&pt);
    eng_buf_free(&rec);
    return err;
}

cdx_err eng_list_ids(eng *e, const char *name, const char *cursor, uint32_t limit, char ***ids,
                     size_t **id_lens, size_t *n, char **next)
{
    struct idx *ix;
    cdx_err err = idx_get(e, name, &ix);
    *ids = NULL;
    *id_lens = NULL;
    *n = 0;
    *next = NULL;
    if (err)
        return err;
    if (limit == 0)
        limit = 1000;
    if (limit > CDX_LIST_PAGE_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "limit %u exceeds %d", limit, CDX_LIST_PAGE_MAX);
    op o;
    op_index(e, ix, &o);
    unsigned b0;
    uint8_t last[16];
    bool has = false;
    eng_manifest *m = NULL;
    char **v = calloc(limit, sizeof(char *));
    size_t *vl = calloc(limit, sizeof(size_t));
    size_t k = 0;
    if (!v || !vl) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    if ((err = cursor_open(&o, cursor, &b0, last, &has)) || (err = load_state(&o, false, 0, &m)))
        goto out;
    /* Take up to `limit` ids; one more seen means a cursor, none means the end. */
    bool more = false;
    unsigned last_b = b0;
    for (unsigned b = b0; b < ENG_BUCKETS && !more && !err; b++) {
        if (!m->bucket_version[b])
            continue;
        bucketset bs;
        memset(&bs, 0, sizeof(bs));
        bool want[ENG_BUCKETS] = {false};
        want[b] = true;
        if ((err = load_buckets(&o, m, want, &bs)))
            break;
        eng_bucket *bk = bs.b[b];
        for (uint32_t i = 0; i < bk->n; i++) {
            if (has && b == b0 && memcmp(bk->e[i].tok, last, 16) <= 0)
                continue;
            if (k == limit) {
                more = true;
                break;
            }
            v[k] = bk->e[i].id;
            vl[k] = bk->e[i].id_len;
            bk->e[i].id = NULL; /* moved */
            memcpy(last, bk->e[i].tok, 16);
            last_b = b;
            k++;
        }
        bucketset_free(&bs); /* free(NULL) for the moved ids */
    }
    if (!err && more)
        err = cursor_seal(&o, last_b, last, next);
out:
    munref(m);
    op_end(&o);
    if (err) {
        eng_ids_free(v, vl, k);
        free(*next);
        *next = NULL;
        return in_index(err, name);
    }
    *ids = v;
    *id_lens = vl;
    *n = k;
    return CDX_OK;
}

/* ------------------------------------------------------------------ rewrite (train, compact) */

typedef struct gathered {
    size_t n;
    row_in *rows;
    eng_ident **idents;
    /* blocks kept alive while rows point into them */
    size_t nseg;
    const eng_segref **refs;
    eng_search **search;
    eng_buf *vec, *meta;
    meta_view *mview; /* indexes of meta[] */
    float *norm; /* normalised copies (cosine) */
} gathered;

static void gathered_free(gathered *g)
{
    for (size_t i = 0; i < g->nseg; i++) {
        if (g->search)
            eng_search_release(g->search[i]);
        if (g->vec)
            eng_buf_free(&g->vec[i]);
        if (g->meta)
            eng_buf_free(&g->meta[i]);
        if (g->mview)
            meta_view_free(&g->mview[i]);
    }
    free(g->search);
    free(g->vec);
    free(g->meta);
    free(g->mview);
    free(g->refs);
    free(g->rows);
    free(g->idents);
    free(g->norm);
    memset(g, 0, sizeof(*g));
}

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (const void *const *)a, y = (uintptr_t) * (const void *const *)b;
    return x < y ? -1 : x > y;
}

/*
 * Every live item (per the id map, all buckets loaded into bs) whose cluster
 * is selected (sel NULL = all), with its vector, metadata and identity.
 */
static cdx_err gather(op *o, const eng_manifest *m, bucketset *bs, const bool *sel, gathered *g)
{
    cdx_err err = CDX_OK;
    memset(g, 0, sizeof(*g));
    size_t total = 0;
    for (unsigned b = 0; b < ENG_BUCKETS; b++)
        total += bs->b[b] ? bs->b[b]->n : 0;
    g->rows = calloc(total + 1, sizeof(*g->rows));
    g->idents = calloc(total + 1, sizeof(*g->idents));
    g->refs = calloc(total + 1, sizeof(*g->refs));
    if (!g->rows || !g->idents || !g->refs)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    size_t *segof = calloc(total + 1, sizeof(size_t));
    if (!segof)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    for (unsigned b = 0; b < ENG_BUCKETS; b++) {
        for (uint32_t i = 0; bs->b[b] && i < bs->b[b]->n; i++) {
            eng_ident *id = &bs->b[b]->e[i];
            if (sel && (id->cluster >= eng_manifest_nclusters(m) || !sel[id->cluster]))
                continue;
            const eng_segref *sr = find_seg(m, id->cluster, id->seg);
            if (!sr) {
                free(segof);
                return cdx_fail(CDX_ERR_INTEGRITY, "the id map names a segment the manifest "
                                "does not list");
            }
            g->refs[g->n] = sr; /* per item for now; made unique below */
            g->idents[g->n++] = id;
        }
    }
    /* Unique segments, and each item's index among them: sort, dedupe, binary search. */
    const eng_segref **byitem = malloc((g->n + 1) * sizeof(*byitem));
    if (!byitem) {
        free(segof);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    memcpy(byitem, g->refs, g->n * sizeof(*byitem));
    qsort(g->refs, g->n, sizeof(*g->refs), cmp_ptr);
    for (size_t i = 0; i < g->n; i++)
        if (g->nseg == 0 || g->refs[g->nseg - 1] != g->refs[i])
            g->refs[g->nseg++] = g->refs[i];
    for (size_t i = 0; i < g->n; i++) {
        const eng_segref **hit =
            bsearch(&byitem[i], g->refs, g->nseg, sizeof(*g->refs), cmp_ptr);
        segof[i] = (size_t)(hit - g->refs);
    }
    free(byitem);
    g->search = calloc(g->nseg + 1, sizeof(*g->search));
    g->vec = calloc(g->nseg + 1, sizeof(*g->vec));
    g->meta = calloc(g->nseg + 1, sizeof(*g->meta));
    if (!g->search || !g->vec || !g->meta) {
        free(segof);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    bool mis = false, mis2 = false, mis3 = false;
    if ((err = fetch_search(o, m, g->refs, g->nseg, g->search, &mis)) ||
        (!originals_in_search(m) &&
         (err = fetch_blocks(o, g->refs, g->nseg, ENG_K_VECTORS, g->vec, &mis2))) ||
        (err = fetch_blocks(o, g->refs, g->nseg, ENG_K_META, g->meta, &mis3))) {
        free(segof);
        return err;
    }
    if (mis || mis2 || mis3) {
        free(segof);
        return cdx_fail(CDX_ERR_INTEGRITY, "a segment the manifest lists is missing");
    }
    g->mview = calloc(g->nseg + 1, sizeof(*g->mview));
    for (size_t i = 0; g->mview && i < g->nseg; i++)
        if (!meta_view_build(&g->meta[i], &g->mview[i])) {
            free(segof);
            return cdx_fail(CDX_ERR_INTEGRITY, "metadata block is malformed");
        }
    if (!g->mview) {
        free(segof);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    size_t d = m->dim;
    bool cosine = m->metric == ENG_METRIC_COSINE;
    /* Originals: the vector block holds them as written; flat non-cosine search codes too. */
    g->norm = malloc((cosine || !originals_in_search(m) ? g->n : 0) * d * sizeof(float) + 1);
    if (!g->norm) {
        free(segof);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    for (size_t i = 0; i < g->n && !err; i++) {
        eng_ident *id = g->idents[i];
        size_t s = segof[i];
        row_in *r = &g->rows[i];
        if (id->row >= g->search[s]->rows) {
            err = cdx_fail(CDX_ERR_INTEGRITY, "the id map names a row past its segment");
            break;
        }
        if (originals_in_search(m))
            r->orig = (const float *)(const void *)(g->search[s]->codes +
                                                    (size_t)id->row * g->search[s]->code_size);
        else if (g->vec[s].len == (size_t)g->search[s]->rows * d * sizeof(float))
            r->orig = (const float *)(const void *)(g->vec[s].data + (size_t)id->row * d * 4);
        else {
            err = cdx_fail(CDX_ERR_INTEGRITY, "vector block is malformed");
            break;
        }
        r->search = r->orig;
        if (cosine) {
            float *nv = g->norm + i * d;
            memcpy(nv, r->orig, d * sizeof(float));
            eng_normalize(nv, d);
            r->search = nv;
        }
        const uint8_t *mp;
        size_t ml;
        if (!meta_view_row(&g->mview[s], id->row, &mp, &ml)) {
            err = cdx_fail(CDX_ERR_INTEGRITY, "metadata block is malformed");
            break;
        }
        r->meta = ml ? (const char *)mp : NULL;
        r->meta_len = (uint32_t)ml;
        r->id = id->id;
        r->id_len = id->id_len;
        memcpy(r->tok, id->tok, 16);
        memcpy(r->content, id->content, 16);
        r->content_len = id->content_len;
        r->commit_version = id->commit_version;
        r->cluster = id->cluster;
    }
    free(segof);
    return err;
}

/* Place gathered rows into one new segment per cluster; idents follow. */
static cdx_err place(op *o, const eng_manifest *fmt, uint64_t version, gathered *g,
                     const uint32_t *assign, uint32_t ncl, bucketset *bs, seg_out **segs_out,
                     size_t *nsegs_out)
{
    cdx_err err = CDX_OK;
    size_t *cnt = calloc(ncl + 1, sizeof(size_t));
    row_in **order = malloc((g->n + 1) * sizeof(*order));
    seg_out *segs = calloc(ncl + 1, sizeof(*segs));
    size_t nsegs = 0;
    if (!cnt || !order || !segs) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < g->n; i++)
        cnt[assign[i]]++;
    size_t *pos = calloc(ncl + 1, sizeof(size_t));
    if (!pos) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (uint32_t c = 1; c <= ncl; c++)
        pos[c] = pos[c - 1] + cnt[c - 1];
    for (size_t i = 0; i < g->n; i++) {
        g->rows[i].cluster = assign[i];
        order[pos[assign[i]]++] = &g->rows[i];
    }
    size_t at = 0;
    for (uint32_t c = 0; c < ncl && !err; c++) {
        if (!cnt[c])
            continue;
        err = build_segment(o, fmt, version, c, order + at, (uint32_t)cnt[c], NULL, 0,
                            &segs[nsegs]);
        nsegs++;
        at += cnt[c];
    }
    free(pos);
    if (err || (err = put_segments(o, segs, nsegs)))
        goto out;
    for (size_t i = 0; i < g->n; i++) {
        eng_ident *id = g->idents[i];
        id->cluster = g->rows[i].cluster;
        memcpy(id->seg, g->rows[i].seg, 16);
        id->row = g->rows[i].row;
        bs->dirty[eng_bucket_of(id->tok)] = true;
    }
out:
    free(cnt);
    free(order);
    if (err) {
        segs_free(segs, nsegs);
        return err;
    }
    *segs_out = segs;
    *nsegs_out = nsegs;
    return CDX_OK;
}

static cdx_err load_all_buckets(op *o, const eng_manifest *m, bucketset *bs)
{
    bool want[ENG_BUCKETS];
    for (unsigned b = 0; b < ENG_BUCKETS; b++)
        want[b] = true;
    return load_buckets(o, m, want, bs);
}

static cdx_err put_centroids(op *o, eng_manifest *nm, uint64_t version)
{
    eng_buf pt, rec;
    eng_buf_init(&pt);
    eng_buf_init(&rec);
    cdx_err err = eng_random(nm->centroids_token, 16);
    if (err)
        return err;
    centroids_encode(nm, &pt);
    if (!eng_buf_ok(&pt) ||
        (err = seal(o, HSM_P_MANIFEST, ENG_K_CENTROIDS, nm->centroids_token, version, pt.data,
                    pt.len, &rec)))
        goto out;
    char key[CDX_STORE_KEY_MAX];
    key_rec(key, o->ix->id, 'c', nm->centroids_token);
    eng_kv kv = {key, rec.data, rec.len};
    bool created = false;
    if ((err = eng_store_setnx(o->e->cfg.store, &kv, 1, &created)))
        goto out;
    nm->centroids_version = version;
    nm->centroids_len = (uint32_t)rec.len;
out:
    eng_buf_free(&pt);
    eng_buf_free(&rec);
    return err;
}

/* Fisher-Yates prefix with splitmix64: a deterministic sample of k of n. */
static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

cdx_err eng_train(eng *e, const char *name, const eng_train_opts *opts, uint64_t *version)
{
    struct idx *ix;
    cdx_err err = idx_get(e, name, &ix);
    if (err)
        return err;
    eng_train_opts def = {0};
    if (!opts)
        opts = &def;
    if (opts->n_lists > CDX_NLISTS_MAX || opts->max_iters > CDX_TRAIN_ITERS_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "n_lists at most %d, max_iters at most %d",
                        CDX_NLISTS_MAX, CDX_TRAIN_ITERS_MAX);
    op o;
    op_index(e, ix, &o);
    float *centroids = NULL, *sample = NULL;
    eng_sq8 sq = {0};
    uint32_t k = 0;
    bool have_model = false;
    size_t d = ix->cat.dim;
    for (unsigned attempt = 0; attempt < e->cfg.commit_retries; attempt++) {
        eng_manifest *m = NULL, *nm = NULL;
        bucketset bs;
        memset(&bs, 0, sizeof(bs));
        gathered g;
        memset(&g, 0, sizeof(g));
        seg_out *segs = NULL;
        size_t nsegs = 0;
        uint32_t *assign = NULL;
        bool committed = false;
        if ((err = load_state(&o, true, 0, &m)) || (err = load_all_buckets(&o, m, &bs)) ||
            (err = gather(&o, m, &bs, NULL, &g))) {
            if (err == ENG_MOVED)
                err = CDX_OK; /* a commit landed mid-read: start over from the new head */
            goto next;
        }
        if (!have_model) {
            size_t avail = opts->sample ? opts->sample_n : g.n;
            k = opts->n_lists ? opts->n_lists : m->n_lists;
            if (!k)
                k = (uint32_t)fmax(1.0, floor(sqrt((double)avail)));
            if (avail < k) {
                err = cdx_fail(CDX_ERR_FAILED_PRECONDITION,
                               "index %s has %zu items; training %u lists needs at least as many",
                               name, g.n, k);
                goto next;
            }
            uint32_t per = opts->max_points_per_list ? opts->max_points_per_list
                                                     : CDX_TRAIN_POINTS_PER_LIST;
            size_t ns = (size_t)per * k < avail ? (size_t)per * k : avail;
            if (opts->sample) {
                /* The caller's sample, all of it (normalised for cosine, like the items). */
                ns = opts->sample_n;
                per = (uint32_t)((ns + k - 1) / k);
            }
            uint64_t seed = opts->seed ? opts->seed : 1234;
            size_t *perm = malloc((g.n + 1) * sizeof(size_t));
            sample = malloc(ns * d * sizeof(float));
            centroids = malloc((size_t)k * d * sizeof(float));
            if (!perm || !sample || !centroids) {
                free(perm);
                err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
                goto next;
            }
            for (size_t i = 0; i < g.n; i++)
                perm[i] = i;
            uint64_t st = seed;
            for (size_t i = 0; opts->sample && i < ns; i++) {
                memcpy(sample + i * d, opts->sample + i * d, d * sizeof(float));
                if (!finite_vec(sample + i * d, d)) {
                    free(perm);
                    err = cdx_fail(CDX_ERR_INVALID_ARGUMENT, "training sample has NaN or Inf");
                    goto next;
                }
                if (ix->cat.metric == ENG_METRIC_COSINE)
                    eng_normalize(sample + i * d, d);
            }
            for (size_t i = 0; !opts->sample && i < ns; i++) {
                size_t j = i + (size_t)(splitmix(&st) % (g.n - i));
                size_t t = perm[i];
                perm[i] = perm[j];
                perm[j] = t;
                memcpy(sample + i * d, g.rows[perm[i]].search, d * sizeof(float));
            }
            free(perm);
            eng_kmeans_opts ko = {
                .k = k,
                .max_iters = opts->max_iters ? opts->max_iters : CDX_TRAIN_ITERS_DEFAULT,
                .tolerance = opts->tolerance > 0 ? opts->tolerance : 1e-4f,
                .seed = seed,
                .max_points_per_centroid = per,
                .metric = ix->cat.metric == ENG_METRIC_EUCLIDEAN ||
                                  ix->cat.metric == ENG_METRIC_SQUARED_EUCLIDEAN
                              ? ENG_KM_L2
                              : ENG_KM_IP,
                .spherical = ix->cat.metric == ENG_METRIC_COSINE,
            };
            eng_kmeans_stats ks;
            if ((err = eng_kmeans_train(sample, ns, d, &ko, centroids, &ks)))
                goto next;
            /* Both types: IVFSQ8 stores these codes, IVFFlat screens with them. */
            if ((err = eng_sq8_train(sample, ns, d, &sq)))
                goto next;
            have_model = true;
            cdx_log(CDX_LOG_INFO, "eng_trained", "lists=%u sample=%zu iters=%u",
                    k, ns, (unsigned)ks.iterations);
        }
        /* Redistribute (again, on a rebase) with the same model. */
        if ((err = clone_m(m, &nm)))
            goto next;
        for (uint32_t c = 0; c < eng_manifest_nclusters(m); c++)
            free(nm->clusters[c].seg);
        free(nm->clusters);
        free(nm->centroids);
        free(nm->sq_vmin);
        free(nm->sq_step);
        nm->sq_vmin = nm->sq_step = NULL;
        nm->n_clusters = k;
        nm->train_gen = m->train_gen + 1;
        nm->clusters = calloc(k, sizeof(*nm->clusters));
        nm->centroids = malloc((size_t)k * d * sizeof(float));
        if (!nm->clusters || !nm->centroids) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto next;
        }
        memcpy(nm->centroids, centroids, (size_t)k * d * sizeof(float));
        if (sq.vmin) {
            nm->sq_vmin = malloc(d * sizeof(float));
            nm->sq_step = malloc(d * sizeof(float));
            if (!nm->sq_vmin || !nm->sq_step) {
                err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
                goto next;
            }
            memcpy(nm->sq_vmin, sq.vmin, d * sizeof(float));
            memcpy(nm->sq_step, sq.step, d * sizeof(float));
        }
        if ((err = probe_build(nm)))
            goto next;
        uint64_t v = m->version + 1;
        uint64_t now = eng_wall_ms();
        for (uint32_t c = 0; c < eng_manifest_nclusters(m) && !err; c++)
            for (uint32_t s = 0; s < m->clusters[c].nseg && !err; s++)
                err = eng_retire(nm, m->clusters[c].seg[s].token, now);
        if (err || (err = put_centroids(&o, nm, v)))
            goto next;
        assign = malloc((g.n + 1) * sizeof(uint32_t));
        float *sv = malloc((g.n + 1) * d * sizeof(float));
        if (!assign || !sv) {
            free(sv);
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto next;
        }
        for (size_t i = 0; i < g.n; i++)
            memcpy(sv + i * d, g.rows[i].search, d * sizeof(float));
        err = assign_clusters(nm, sv, g.n, assign);
        free(sv);
        if (err)
            goto next;
        if ((err = place(&o, nm, v, &g, assign, k, &bs, &segs, &nsegs)))
            goto next;
        for (size_t s = 0; s < nsegs && !err; s++)
            err = eng_cluster_push(&nm->clusters[segs[s].cluster], &segs[s].ref);
        if (err || (err = commit_state(&o, m, nm, &bs, &committed)))
            goto next;
        if (committed && version)
            *version = v;
    next:
        munref(m);
        munref(nm);
        gathered_free(&g);
        bucketset_free(&bs);
        segs_free(segs, nsegs);
        free(assign);
        if (err || committed)
            break;
        backoff(attempt);
    }
    if (!err && !have_model)
        err = cdx_fail(CDX_ERR_INTERNAL, "training produced no model");
    else if (!err && version && !*version)
        err = cdx_fail(CDX_ERR_ABORTED, "index %s: training lost %u commits to concurrent "
                       "writers; retry", name, e->cfg.commit_retries);
    free(centroids);
    free(sample);
    eng_sq8_free(&sq);
    op_end(&o);
    return in_index(err, name);
}

cdx_err eng_compact(eng *e, const char *name, uint64_t *version)
{
    op o;
    cdx_err err = op_open(e, name, &o);
    if (err)
        return err;
    uint64_t done = 0;
    for (unsigned attempt = 0; attempt < e->cfg.commit_retries && !err && !done; attempt++) {
        eng_manifest *m = NULL, *nm = NULL;
        bucketset bs;
        memset(&bs, 0, sizeof(bs));
        gathered g;
        memset(&g, 0, sizeof(g));
        seg_out *segs = NULL;
        size_t nsegs = 0;
        uint32_t *assign = NULL;
        bool *sel = NULL, committed = false;
        if ((err = load_state(&o, true, 0, &m)))
            goto next;
        uint32_t nc = eng_manifest_nclusters(m);
        sel = calloc(nc, sizeof(bool));
        if (!sel) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto next;
        }
        bool any = false;
        for (uint32_t c = 0; c < nc; c++)
            any |= sel[c] = m->clusters[c].nseg > 1;
        if (!any) {
            done = m->version; /* nothing to merge */
            goto next;
        }
        if ((err = load_all_buckets(&o, m, &bs)) || (err = gather(&o, m, &bs, sel, &g))) {
            if (err == ENG_MOVED)
                err = CDX_OK;
            goto next;
        }
        assign = malloc((g.n + 1) * sizeof(uint32_t));
        if (!assign) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto next;
        }
        for (size_t i = 0; i < g.n; i++)
            assign[i] = g.rows[i].cluster;
        uint64_t v = m->version + 1;
        if ((err = place(&o, m, v, &g, assign, nc, &bs, &segs, &nsegs)) ||
            (err = clone_m(m, &nm)))
            goto next;
        uint64_t now = eng_wall_ms();
        for (uint32_t c = 0; c < nc && !err; c++) {
            if (!sel[c])
                continue;
            for (uint32_t s = 0; s < nm->clusters[c].nseg && !err; s++)
                err = eng_retire(nm, nm->clusters[c].seg[s].token, now);
            nm->clusters[c].nseg = 0;
        }
        for (size_t s = 0; s < nsegs && !err; s++)
            err = eng_cluster_push(&nm->clusters[segs[s].cluster], &segs[s].ref);
        if (err || (err = commit_state(&o, m, nm, &bs, &committed)))
            goto next;
        if (committed)
            done = v;
    next:
        munref(m);
        munref(nm);
        gathered_free(&g);
        bucketset_free(&bs);
        segs_free(segs, nsegs);
        free(assign);
        free(sel);
        if (!err && !done)
            backoff(attempt);
    }
    op_end(&o);
    if (!err && !done)
        err = cdx_fail(CDX_ERR_ABORTED, "index %s: compaction lost its commits to concurrent "
                       "writers; retry", name);
    if (!err && version)
        *version = done;
    return in_index(err, name);
}

/* ------------------------------------------------------------------ sweep, rollback */

typedef struct tokset {
    size_t n, cap;
    uint8_t (*t)[17]; /* kind char + token */
} tokset;

static int cmp17(const void *a, const void *b)
{
    return memcmp(a, b, 17);
}

static cdx_err tokset_add(tokset *s, char kind, const uint8_t tok[16])
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        uint8_t(*p)[17] = realloc(s->t, cap * 17);
        if (!p)
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        s->t = p;
        s->cap = cap;
    }
    s->t[s->n][0] = (uint8_t)kind;
    memcpy(s->t[s->n] + 1, tok, 16);
    s->n++;
    return CDX_OK;
}

cdx_err eng_sweep(eng *e, const char *name, uint64_t *deleted)
{
    op o;
    cdx_err err = op_open(e, name, &o);
    if (err)
        return err;
    struct idx *ix = o.ix;
    eng_manifest *m = NULL;
    bucketset bs;
    memset(&bs, 0, sizeof(bs));
    tokset ref = {0};
    uint64_t removed = 0;
    if ((err = load_state(&o, true, 0, &m)) || (err = load_all_buckets(&o, m, &bs)))
        goto out;
    /* Everything the current manifest can reach, plus retired segments still in grace. */
    uint64_t now = eng_wall_ms();
    err = tokset_add(&ref, 'm', m->token);
    if (!err && m->centroids_version)
        err = tokset_add(&ref, 'c', m->centroids_token);
    for (uint32_t c = 0; c < eng_manifest_nclusters(m) && !err; c++)
        for (uint32_t s = 0; s < m->clusters[c].nseg && !err; s++)
            err = tokset_add(&ref, 's', m->clusters[c].seg[s].token);
    for (uint32_t r = 0; r < m->nretired && !err; r++)
        if (m->retired[r].retire_ms + e->cfg.gc_grace_ms > now)
            err = tokset_add(&ref, 's', m->retired[r].token);
    for (unsigned b = 0; b < ENG_BUCKETS && !err; b++)
        for (uint32_t i = 0; bs.b[b] && i < bs.b[b]->n && !err; i++)
            if (bs.b[b]->e[i].content_len)
                err = tokset_add(&ref, 't', bs.b[b]->e[i].content);
    if (err)
        goto out;
    qsort(ref.t, ref.n, 17, cmp17);
    char hx[33], pat[64];
    cdx_hex_encode(ix->id, 16, hx);
    snprintf(pat, sizeof(pat), "cdx:%s:*", hx);
    uint64_t cursor = 0;
    do {
        char **keys = NULL;
        size_t nk = 0, nc = 0;
        if ((err = eng_store_scan(e->cfg.store, pat, &cursor, &keys, &nk)))
            break;
        const char **cand = malloc((nk + 1) * sizeof(char *));
        eng_range *rg = malloc((nk + 1) * sizeof(eng_range));
        eng_val *hv = calloc(nk + 1, sizeof(eng_val));
        if (!cand || !rg || !hv) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        } else {
            for (size_t i = 0; i < nk; i++) {
                /* cdx:<32 hex>:<kind>:<32 hex> */
                const char *k = keys[i];
                uint8_t probe[17];
                if (strlen(k) != 4 + 32 + 3 + 32 || k[36] != ':' || k[38] != ':' ||
                    cdx_hex_decode(k + 39, probe + 1, 16))
                    continue;
                probe[0] = (uint8_t)k[37];
                if (bsearch(probe, ref.t, ref.n, 17, cmp17))
                    continue;
                rg[nc] = (eng_range){k, 0, ENG_REC_HDR};
                cand[nc++] = k;
            }
            /* Only what is older than gc_grace: in-flight writes are younger. */
            if (nc && !(err = eng_store_getrange(e->cfg.store, rg, nc, hv))) {
                size_t nd = 0;
                for (size_t i = 0; i < nc; i++) {
                    eng_rec_hdr h;
                    if (!hv[i].found || hv[i].len < 24)
                        continue;
                    h.write_time = eng_rd64(hv[i].data + 16);
                    if (h.write_time + e->cfg.gc_grace_ms < now)
                        cand[nd++] = cand[i];
                }
                uint64_t dd = 0;
                if (nd && !(err = eng_store_del(e->cfg.store, cand, nd, &dd)))
                    removed += dd;
                eng_vals_free(hv, nc);
            }
        }
        free(cand);
        free(rg);
        free(hv);
        eng_keys_free(keys, nk);
    } while (!err && cursor != 0);
out:
    free(ref.t);
    munref(m);
    bucketset_free(&bs);
    op_end(&o);
    if (!err) {
        if (deleted)
            *deleted = removed;
        cdx_log(CDX_LOG_INFO, "eng_sweep", "deleted=%llu", (unsigned long long)removed);
    }
    return in_index(err, name);
}

cdx_err eng_accept_rollback(eng *e, const char *name, uint64_t *version)
{
    op o;
    cdx_err err = op_open(e, name, &o);
    if (err)
        return err;
    struct idx *ix = o.ix;
    eng_head h;
    bool found = false;
    if (!(err = read_head(&o, &h, &found)) && !found)
        err = cdx_fail(CDX_ERR_NOT_FOUND, "index %s has no head", name);
    if (!err)
        err = eng_state_put(e->state_dir, ix->id, h.version);
    if (!err) {
        pthread_mutex_lock(&ix->mu);
        uint64_t old = ix->hw;
        ix->hw = h.version;
        ix->hw_loaded = true;
        munref(ix->m);
        ix->m = NULL;
        pthread_mutex_unlock(&ix->mu);
        cdx_log(CDX_LOG_WARN, "eng_rollback_accepted", "from=%llu to=%llu",
                (unsigned long long)old, (unsigned long long)h.version);
        if (version)
            *version = h.version;
    }
    op_end(&o);
    return err;
}
