/*
 * test_engine.c - the encrypted IVF engine, one set of tests run against the
 * memory store and against Redis (fixture), on a throwaway SoftHSM token.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "cdx_err.h"
#include "cdx_hex.h"
#include "eng.h"
#include "eng_store.h"
#include "fx_redis.h"
#include "fx_softhsm.h"
#include "fx_tmp.h"
#include "hsm_custody.h"
#include "hsm_keys.h"

/* ------------------------------------------------------------------ environment */

static fx_token *tok;
static hsm_custody *cust;
static fx_redis *rds;
static eng_store *store;
static eng_store *fault; /* wraps store when a test needs crashes */
static eng *E;
static char *statedir;
static uint8_t dep[16];
static int use_redis;
static int ncreated;

static eng *new_engine(eng_store *s, const char *dir, size_t cache)
{
    eng_config c = {0};
    c.custody = cust;
    c.store = s;
    memcpy(c.deployment_id, dep, 16);
    c.state_dir = dir;
    c.cache_bytes = cache;
    c.query_threads = 2;
    eng *e = NULL;
    cdx_err err = eng_new(&c, &e);
    if (err)
        fprintf(stderr, "eng_new: %s: %s\n", cdx_err_name(err), cdx_err_detail());
    return e;
}

static int suite_init(int redis)
{
    use_redis = redis;
    tok = fx_token_new("engtok");
    if (!tok)
        return -1;
    hsm_config cfg;
    hsm_config_init(&cfg);
    snprintf(cfg.module_path, sizeof(cfg.module_path), "%s", fx_softhsm_module());
    char *uri = fx_token_uri(tok);
    snprintf(cfg.token_uri, sizeof(cfg.token_uri), "%s", uri);
    free(uri);
    snprintf(cfg.pin_source, sizeof(cfg.pin_source), "file:%s", fx_token_pin_file(tok));
    cfg.subkey_ttl_ms = 60000;
    if (hsm_custody_open(&cfg, &cust))
        return -1;
    if (redis) {
        rds = fx_redis_start(NULL);
        if (!rds)
            return -1;
        eng_redis_opts o = {.host = fx_redis_host(rds), .port = fx_redis_port(rds)};
        if (eng_store_redis_new(&o, &store)) {
            fprintf(stderr, "redis store: %s\n", cdx_err_detail());
            return -1;
        }
    } else if (eng_store_memory_new(&store)) {
        return -1;
    }
    /* Every test goes through the fault wrapper (disarmed unless a test arms it). */
    if (eng_store_fault_new(store, &fault))
        return -1;
    store = fault;
    for (int i = 0; i < 16; i++)
        dep[i] = (uint8_t)(0x30 + i);
    statedir = fx_tmpdir_new("engstate");
    E = new_engine(store, statedir, 64u << 20);
    return E ? 0 : -1;
}

static int init_mem(void)
{
    return suite_init(0);
}

static int init_redis(void)
{
    return suite_init(1);
}

static int suite_clean(void)
{
    eng_free(E);
    E = NULL;
    eng_store_free(store);
    store = NULL;
    fx_redis_stop(rds);
    rds = NULL;
    hsm_custody_free(cust);
    cust = NULL;
    fx_token_free(tok);
    tok = NULL;
    if (statedir)
        fx_rm_rf(statedir);
    free(statedir);
    statedir = NULL;
    return 0;
}

/* ------------------------------------------------------------------ data */

static uint64_t rng = 42;
static uint64_t rnd(void)
{
    uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float frand(void)
{
    return (float)((double)(rnd() >> 11) / 9007199254740992.0) * 2.0f - 1.0f;
}

static void rand_vec(float *v, size_t d)
{
    for (size_t i = 0; i < d; i++)
        v[i] = frand();
}

/* Random printable token of n chars. */
static void rand_text(char *s, size_t n)
{
    static const char al[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    for (size_t i = 0; i < n; i++)
        s[i] = al[rnd() % (sizeof(al) - 1)];
    s[n] = '\0';
}

static void uniq_name(char *out, const char *base)
{
    snprintf(out, 64, "%s-%d", base, ncreated++);
}

static void create(const char *name, uint32_t d, eng_metric m, eng_index_type t, uint32_t nl,
                   eng_index_info *info)
{
    eng_create c = {.name = name, .dimension = d, .metric = m, .type = t, .n_lists = nl};
    cdx_err err = eng_index_create(E, &c, info);
    if (err)
        fprintf(stderr, "create %s: %s: %s\n", name, cdx_err_name(err), cdx_err_detail());
    CU_ASSERT_EQUAL_FATAL(err, CDX_OK);
}

typedef struct dataset {
    size_t n, d;
    float *x;
    char (*ids)[24];
    char (*meta)[96];
    eng_item *items;
} dataset;

static void ds_make(dataset *s, size_t n, size_t d, const char *prefix)
{
    s->n = n;
    s->d = d;
    s->x = malloc(n * d * sizeof(float));
    s->ids = malloc(n * sizeof(*s->ids));
    s->meta = malloc(n * sizeof(*s->meta));
    s->items = calloc(n, sizeof(eng_item));
    for (size_t i = 0; i < n; i++) {
        rand_vec(s->x + i * d, d);
        snprintf(s->ids[i], sizeof(s->ids[i]), "%s%zu", prefix, i);
        snprintf(s->meta[i], sizeof(s->meta[i]), "{\"n\": %zu, \"even\": %s, \"tag\": \"t%zu\"}",
                 i, i % 2 ? "false" : "true", i % 5);
        s->items[i] = (eng_item){.id = s->ids[i], .id_len = strlen(s->ids[i]),
                                 .vector = s->x + i * d, .metadata = s->meta[i],
                                 .metadata_len = strlen(s->meta[i])};
    }
}

static void ds_free(dataset *s)
{
    free(s->x);
    free(s->ids);
    free(s->meta);
    free(s->items);
}

static uint64_t upsert(const char *name, const eng_item *it, size_t n)
{
    uint64_t v = 0;
    cdx_err err = eng_upsert(E, name, it, n, &v);
    if (err)
        fprintf(stderr, "upsert: %s: %s\n", cdx_err_name(err), cdx_err_detail());
    CU_ASSERT_EQUAL(err, CDX_OK);
    return v;
}

/* Exact top-k by brute force (double precision) over live rows (alive[i]). */
static double ref_dist(eng_metric m, const float *q, const float *x, size_t d)
{
    double s = 0, qq = 0, xx = 0, dot = 0;
    for (size_t i = 0; i < d; i++) {
        double a = q[i], b = x[i];
        s += (a - b) * (a - b);
        dot += a * b;
        qq += a * a;
        xx += b * b;
    }
    switch (m) {
    case ENG_METRIC_EUCLIDEAN:
        return sqrt(s);
    case ENG_METRIC_SQUARED_EUCLIDEAN:
        return s;
    case ENG_METRIC_COSINE:
        return 1.0 - dot / sqrt(qq * xx);
    default:
        return -dot;
    }
}

typedef struct pair {
    double d;
    size_t i;
} pair;

static int cmp_pair(const void *a, const void *b)
{
    const pair *x = a, *y = b;
    return x->d < y->d ? -1 : x->d > y->d ? 1 : (x->i > y->i) - (x->i < y->i);
}

static size_t ref_topk(const dataset *s, const bool *alive, eng_metric m, const float *q, size_t k,
                       size_t *out, double *dist)
{
    pair *p = malloc(s->n * sizeof(pair));
    size_t n = 0;
    for (size_t i = 0; i < s->n; i++)
        if (!alive || alive[i])
            p[n++] = (pair){ref_dist(m, q, s->x + i * s->d, s->d), i};
    qsort(p, n, sizeof(pair), cmp_pair);
    size_t r = n < k ? n : k;
    for (size_t i = 0; i < r; i++) {
        out[i] = p[i].i;
        if (dist)
            dist[i] = p[i].d;
    }
    free(p);
    return r;
}

/* ------------------------------------------------------------------ tests */

static void test_lifecycle(void)
{
    char name[64];
    uniq_name(name, "life");
    eng_index_info info, again;
    create(name, 8, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 4, &info);
    CU_ASSERT_STRING_EQUAL(info.name, name);
    CU_ASSERT_STRING_EQUAL(info.state, "ready");
    CU_ASSERT_EQUAL(info.dimension, 8);
    CU_ASSERT_EQUAL(info.count, 0);
    CU_ASSERT_TRUE(info.owned);
    eng_create c = {.name = name, .dimension = 8, .metric = ENG_METRIC_EUCLIDEAN,
                    .type = ENG_IVFFLAT};
    CU_ASSERT_EQUAL(eng_index_create(E, &c, &again), CDX_ERR_ALREADY_EXISTS);
    CU_ASSERT_EQUAL(eng_index_describe(E, name, &again), CDX_OK);
    CU_ASSERT_EQUAL(memcmp(again.id, info.id, 16), 0);
    /* The key is on the token, with the KCV the catalog recorded. */
    hsm_key_ref k = {.kind = HSM_KEY_INDEX};
    memcpy(k.id, info.id, 16);
    CU_ASSERT_EQUAL(hsm_key_check(cust, &k, info.kcv), CDX_OK);
    eng_index_info *all = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL(eng_index_list(E, &all, &n), CDX_OK);
    bool seen = false;
    for (size_t i = 0; i < n; i++)
        seen |= !strcmp(all[i].name, name);
    CU_ASSERT_TRUE(seen);
    free(all);
    /* Delete needs the right id; then the key and the index are gone. */
    uint8_t wrong[16] = {0};
    CU_ASSERT_EQUAL(eng_index_delete(E, name, wrong), CDX_ERR_FAILED_PRECONDITION);
    CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
    CU_ASSERT_EQUAL(eng_index_describe(E, name, &again), CDX_ERR_NOT_FOUND);
    uint8_t kcv[8];
    CU_ASSERT_EQUAL(hsm_key_kcv(cust, &k, kcv), CDX_ERR_KEY_NOT_FOUND);
    /* No record of it is left in the store. */
    char hx[33], pat[64];
    cdx_hex_encode(info.id, 16, hx);
    snprintf(pat, sizeof(pat), "*%s*", hx);
    uint64_t cur = 0;
    size_t left = 0;
    do {
        char **keys;
        size_t nk;
        CU_ASSERT_EQUAL_FATAL(eng_store_scan(store, pat, &cur, &keys, &nk), CDX_OK);
        left += nk;
        eng_keys_free(keys, nk);
    } while (cur);
    CU_ASSERT_EQUAL(left, 0);
    /* The name is free again. */
    create(name, 4, ENG_METRIC_COSINE, ENG_IVFSQ8, 0, &info);
    CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
}

static void test_bad_input(void)
{
    char name[64];
    uniq_name(name, "bad");
    eng_index_info info;
    eng_create c = {.name = "bad name!", .dimension = 8, .metric = ENG_METRIC_EUCLIDEAN,
                    .type = ENG_IVFFLAT};
    CU_ASSERT_EQUAL(eng_index_create(E, &c, &info), CDX_ERR_INVALID_ARGUMENT);
    c.name = name;
    c.dimension = 0;
    CU_ASSERT_EQUAL(eng_index_create(E, &c, &info), CDX_ERR_INVALID_ARGUMENT);
    c.dimension = 5000;
    CU_ASSERT_EQUAL(eng_index_create(E, &c, &info), CDX_ERR_INVALID_ARGUMENT);
    c.dimension = 4;
    c.metric = 0;
    CU_ASSERT_EQUAL(eng_index_create(E, &c, &info), CDX_ERR_INVALID_ARGUMENT);
    create(name, 4, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, &info);
    float v[4] = {1, 2, 3, 4}, nanv[4] = {1, NAN, 3, 4}, infv[4] = {INFINITY, 0, 0, 0};
    eng_item it = {.id = "a", .id_len = 1, .vector = v};
    uint64_t ver;
    CU_ASSERT_EQUAL(eng_upsert(E, name, &it, 0, &ver), CDX_ERR_INVALID_ARGUMENT);
    eng_item bad = it;
    bad.vector = nanv;
    CU_ASSERT_EQUAL(eng_upsert(E, name, &bad, 1, &ver), CDX_ERR_INVALID_ARGUMENT);
    bad.vector = infv;
    CU_ASSERT_EQUAL(eng_upsert(E, name, &bad, 1, &ver), CDX_ERR_INVALID_ARGUMENT);
    bad = it;
    bad.id = "a\0b";
    bad.id_len = 3;
    CU_ASSERT_EQUAL(eng_upsert(E, name, &bad, 1, &ver), CDX_ERR_INVALID_ARGUMENT);
    bad.id = "\xc3\x28";
    bad.id_len = 2;
    CU_ASSERT_EQUAL(eng_upsert(E, name, &bad, 1, &ver), CDX_ERR_INVALID_ARGUMENT);
    bad = it;
    bad.metadata = "{\"a\":1,\"a\":2}";
    bad.metadata_len = strlen(bad.metadata);
    CU_ASSERT_EQUAL(eng_upsert(E, name, &bad, 1, &ver), CDX_ERR_INVALID_ARGUMENT);
    bad.metadata = "[1,2]";
    bad.metadata_len = 5;
    CU_ASSERT_EQUAL(eng_upsert(E, name, &bad, 1, &ver), CDX_ERR_INVALID_ARGUMENT);
    eng_item two[2] = {it, it};
    CU_ASSERT_EQUAL(eng_upsert(E, name, two, 2, &ver), CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "duplicate"));
    /* Nothing was applied by any of these. */
    uint64_t cnt = 99;
    CU_ASSERT_EQUAL(eng_count(E, name, &cnt), CDX_OK);
    CU_ASSERT_EQUAL(cnt, 0);
    CU_ASSERT_EQUAL(eng_upsert(E, "nosuchindex", &it, 1, &ver), CDX_ERR_NOT_FOUND);
    eng_query q = {.vectors = v, .nq = 1, .top_k = 5000};
    eng_query_result *r = NULL;
    CU_ASSERT_EQUAL(eng_query_run(E, name, &q, &r), CDX_ERR_INVALID_ARGUMENT);
    q.top_k = 5;
    q.n_probes = 3;
    CU_ASSERT_EQUAL(eng_query_run(E, name, &q, &r), CDX_ERR_INVALID_ARGUMENT);
    q.n_probes = 0;
    q.filter = "{\"a\": {\"$regex\": \"x\"}}";
    q.filter_len = strlen(q.filter);
    CU_ASSERT_EQUAL(eng_query_run(E, name, &q, &r), CDX_ERR_INVALID_ARGUMENT);
    q.filter = NULL;
    q.filter_len = 0;
    q.vectors = nanv;
    CU_ASSERT_EQUAL(eng_query_run(E, name, &q, &r), CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
}

static void test_upsert_get_delete(void)
{
    char name[64];
    uniq_name(name, "ugd");
    eng_index_info info;
    const size_t d = 16;
    create(name, d, ENG_METRIC_COSINE, ENG_IVFFLAT, 0, &info);
    dataset s;
    ds_make(&s, 50, d, "item-");
    uint8_t content[3000];
    for (size_t i = 0; i < sizeof(content); i++)
        content[i] = (uint8_t)(i * 7);
    s.items[3].contents = content;
    s.items[3].contents_len = sizeof(content);
    uint64_t v1 = upsert(name, s.items, s.n);
    CU_ASSERT_TRUE(v1 >= 2);
    uint64_t cnt = 0;
    CU_ASSERT_EQUAL(eng_count(E, name, &cnt), CDX_OK);
    CU_ASSERT_EQUAL(cnt, 50);
    const char *ids[3] = {"item-3", "nope", "item-7"};
    size_t lens[3] = {6, 4, 6};
    eng_get_result *g = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_get(E, name, ids, lens, 3,
                                  ENG_WANT_VECTOR | ENG_WANT_METADATA | ENG_WANT_CONTENTS, 0, &g),
                          CDX_OK);
    CU_ASSERT_TRUE(g->found[0]);
    CU_ASSERT_FALSE(g->found[1]);
    CU_ASSERT_TRUE(g->found[2]);
    /* Exactly what was upserted (originals, not the normalised search copy). */
    CU_ASSERT_EQUAL(memcmp(g->hits[0].vector, s.x + 3 * d, d * sizeof(float)), 0);
    CU_ASSERT_EQUAL(memcmp(g->hits[2].vector, s.x + 7 * d, d * sizeof(float)), 0);
    CU_ASSERT_STRING_EQUAL(g->hits[2].metadata, s.meta[7]);
    CU_ASSERT_EQUAL(g->hits[0].contents_len, sizeof(content));
    if (g->hits[0].contents)
        CU_ASSERT_EQUAL(memcmp(g->hits[0].contents, content, sizeof(content)), 0);
    CU_ASSERT_PTR_NULL(g->hits[2].contents);
    eng_get_result_free(g);
    /* An upsert replaces the whole item: no metadata, no contents now. */
    float nv[16];
    rand_vec(nv, d);
    eng_item up = {.id = "item-3", .id_len = 6, .vector = nv};
    uint64_t v2 = upsert(name, &up, 1);
    CU_ASSERT_TRUE(v2 > v1);
    CU_ASSERT_EQUAL_FATAL(eng_get(E, name, ids, lens, 1,
                                  ENG_WANT_VECTOR | ENG_WANT_METADATA | ENG_WANT_CONTENTS, 0, &g),
                          CDX_OK);
    CU_ASSERT_EQUAL(memcmp(g->hits[0].vector, nv, sizeof(nv)), 0);
    CU_ASSERT_PTR_NULL(g->hits[0].metadata);
    CU_ASSERT_PTR_NULL(g->hits[0].contents);
    eng_get_result_free(g);
    CU_ASSERT_EQUAL(eng_count(E, name, &cnt), CDX_OK);
    CU_ASSERT_EQUAL(cnt, 50);
    /* A query near the new vector finds item-3 first; its old copy is gone. */
    eng_query q = {.vectors = nv, .nq = 1, .top_k = 3, .want = ENG_WANT_DISTANCE};
    eng_query_result *r = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_query_run(E, name, &q, &r), CDX_OK);
    CU_ASSERT_STRING_EQUAL(r->hits[0][0].id, "item-3");
    CU_ASSERT_TRUE(fabsf(r->hits[0][0].distance) < 1e-5f);
    eng_query_result_free(r);
    q.vectors = s.x + 3 * d; /* the old vector */
    CU_ASSERT_EQUAL_FATAL(eng_query_run(E, name, &q, &r), CDX_OK);
    for (size_t i = 0; i < r->n[0]; i++)
        CU_ASSERT_TRUE(strcmp(r->hits[0][i].id, "item-3") || r->hits[0][i].distance > 1e-4f);
    eng_query_result_free(r);
    /* Delete. */
    uint64_t deleted = 0, v3 = 0;
    const char *del[2] = {"item-7", "never"};
    size_t dl[2] = {6, 5};
    CU_ASSERT_EQUAL(eng_delete(E, name, del, dl, 2, &deleted, &v3), CDX_OK);
    CU_ASSERT_EQUAL(deleted, 1);
    CU_ASSERT_TRUE(v3 > v2);
    CU_ASSERT_EQUAL(eng_count(E, name, &cnt), CDX_OK);
    CU_ASSERT_EQUAL(cnt, 49);
    CU_ASSERT_EQUAL_FATAL(eng_get(E, name, del, dl, 1, 0, 0, &g), CDX_OK);
    CU_ASSERT_FALSE(g->found[0]);
    eng_get_result_free(g);
    q.vectors = s.x + 7 * d;
    q.top_k = 50;
    CU_ASSERT_EQUAL_FATAL(eng_query_run(E, name, &q, &r), CDX_OK);
    CU_ASSERT_EQUAL(r->n[0], 49);
    for (size_t i = 0; i < r->n[0]; i++)
        CU_ASSERT_STRING_NOT_EQUAL(r->hits[0][i].id, "item-7");
    eng_query_result_free(r);
    /* min_version beyond the head: STALE. */
    q.min_version = v3 + 100;
    CU_ASSERT_EQUAL(eng_query_run(E, name, &q, &r), CDX_ERR_STALE);
    ds_free(&s);
    CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
}

/* Exhaustive (untrained) search is exact for every metric. */
static void test_exact_metrics(void)
{
    eng_metric ms[4] = {ENG_METRIC_EUCLIDEAN, ENG_METRIC_SQUARED_EUCLIDEAN, ENG_METRIC_COSINE,
                        ENG_METRIC_INNER_PRODUCT};
    const size_t d = 24, n = 300, k = 10;
    dataset s;
    ds_make(&s, n, d, "x");
    /* Unnormalised on purpose: scale rows differently. */
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < d; j++)
            s.x[i * d + j] *= (float)(1 + i % 7);
    for (int mi = 0; mi < 4; mi++) {
        char name[64];
        uniq_name(name, "metric");
        eng_index_info info;
        create(name, d, ms[mi], ENG_IVFFLAT, 0, &info);
        upsert(name, s.items, n);
        for (int qi = 0; qi < 5; qi++) {
            float q[24];
            rand_vec(q, d);
            size_t want[10];
            double wd[10];
            ref_topk(&s, NULL, ms[mi], q, k, want, wd);
            eng_query qq = {.vectors = q, .nq = 1, .top_k = k, .want = ENG_WANT_DISTANCE};
            eng_query_result *r = NULL;
            CU_ASSERT_EQUAL_FATAL(eng_query_run(E, name, &qq, &r), CDX_OK);
            CU_ASSERT_EQUAL(r->n[0], k);
            for (size_t i = 0; i < r->n[0]; i++) {
                CU_ASSERT_STRING_EQUAL(r->hits[0][i].id, s.ids[want[i]]);
                CU_ASSERT_TRUE(fabs(r->hits[0][i].distance - wd[i]) <
                               1e-3 * (1 + fabs(wd[i])));
            }
            eng_query_result_free(r);
        }
        CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
    }
    ds_free(&s);
}

/* Clustered data: trained IVF finds the exact neighbours with enough probes. */
static void make_blobs(dataset *s, size_t n, size_t d, size_t nb, int integral)
{
    ds_make(s, n, d, "b");
    float *cent = malloc(nb * d * sizeof(float));
    for (size_t i = 0; i < nb * d; i++)
        cent[i] = integral ? (float)(rnd() % 200) + 20 : frand() * 10;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < d; j++) {
            float v = cent[(i % nb) * d + j] + frand() * (integral ? 20 : 1);
            s->x[i * d + j] = integral ? fminf(255, fmaxf(0, roundf(v))) : v;
        }
    free(cent);
}

static double recall(const char *name, const dataset *s, eng_metric m, uint32_t nprobe,
                     size_t nq)
{
    size_t hit = 0, k = 10;
    for (size_t qi = 0; qi < nq; qi++) {
        const float *q = s->x + (qi * 37 % s->n) * s->d;
        size_t want[10];
        ref_topk(s, NULL, m, q, k, want, NULL);
        eng_query qq = {.vectors = q, .nq = 1, .top_k = k, .n_probes = nprobe};
        eng_query_result *r = NULL;
        if (eng_query_run(E, name, &qq, &r) != CDX_OK)
            return -1;
        for (size_t i = 0; i < r->n[0]; i++)
            for (size_t j = 0; j < k; j++)
                if (!strcmp(r->hits[0][i].id, s->ids[want[j]]))
                    hit++;
        eng_query_result_free(r);
    }
    return (double)hit / (double)(nq * k);
}

static void test_train(void)
{
    const size_t d = 16, n = 2000;
    dataset s;
    make_blobs(&s, n, d, 16, 0);
    eng_index_type types[2] = {ENG_IVFFLAT, ENG_IVFSQ8};
    for (int t = 0; t < 2; t++) {
        char name[64];
        uniq_name(name, "train");
        eng_index_info info;
        create(name, d, ENG_METRIC_EUCLIDEAN, types[t], 16, &info);
        upsert(name, s.items, n / 2);
        uint64_t v = 0;
        cdx_err err = eng_train(E, name, NULL, &v);
        if (err)
            fprintf(stderr, "train: %s\n", cdx_err_detail());
        CU_ASSERT_EQUAL_FATAL(err, CDX_OK);
        /* Later upserts go to their cluster. */
        upsert(name, s.items + n / 2, n / 2);
        CU_ASSERT_EQUAL(eng_index_describe(E, name, &info), CDX_OK);
        CU_ASSERT_EQUAL(info.n_clusters, 16);
        CU_ASSERT_EQUAL(info.count, n);
        double r16 = recall(name, &s, ENG_METRIC_EUCLIDEAN, 16, 40);
        double r4 = recall(name, &s, ENG_METRIC_EUCLIDEAN, 4, 40);
        /* All clusters probed = exhaustive: exact for float, near-exact for SQ8 on floats. */
        CU_ASSERT_TRUE(r16 >= (t ? 0.9 : 0.999));
        CU_ASSERT_TRUE(r4 >= 0.8);
        fprintf(stderr, "  [%s] recall@10 nprobe16=%.3f nprobe4=%.3f\n",
                eng_index_type_name(types[t]), r16, r4);
        /* Originals survive training exactly. */
        const char *id = s.ids[123];
        size_t l = strlen(id);
        eng_get_result *g = NULL;
        CU_ASSERT_EQUAL_FATAL(eng_get(E, name, &id, &l, 1, ENG_WANT_VECTOR | ENG_WANT_METADATA,
                                      0, &g), CDX_OK);
        CU_ASSERT_EQUAL(memcmp(g->hits[0].vector, s.x + 123 * d, d * sizeof(float)), 0);
        CU_ASSERT_STRING_EQUAL(g->hits[0].metadata, s.meta[123]);
        eng_get_result_free(g);
        /* Compaction keeps every answer. */
        double before = recall(name, &s, ENG_METRIC_EUCLIDEAN, 4, 40);
        CU_ASSERT_EQUAL(eng_compact(E, name, &v), CDX_OK);
        CU_ASSERT_EQUAL(eng_index_describe(E, name, &info), CDX_OK);
        CU_ASSERT_TRUE(info.segments <= 16);
        CU_ASSERT_EQUAL(info.count, n);
        CU_ASSERT_TRUE(fabs(recall(name, &s, ENG_METRIC_EUCLIDEAN, 4, 40) - before) < 1e-9);
        CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
    }
    ds_free(&s);
}

/* SQ8 is lossless on integer data spanning 0..255 per dimension. */
static void test_sq8_exact(void)
{
    const size_t d = 32, n = 1500;
    dataset s;
    make_blobs(&s, n, d, 8, 1);
    for (size_t j = 0; j < d; j++) { /* make every dim span 0..255 */
        s.x[j] = 0;
        s.x[d + j] = 255;
    }
    char name[64];
    uniq_name(name, "sq8");
    eng_index_info info;
    create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFSQ8, 8, &info);
    upsert(name, s.items, n);
    eng_train_opts o = {.max_points_per_list = 256};
    uint64_t v;
    CU_ASSERT_EQUAL_FATAL(eng_train(E, name, &o, &v), CDX_OK);
    for (int qi = 0; qi < 20; qi++) {
        const float *q = s.x + (size_t)(qi * 71) * d;
        size_t want[10];
        double wd[10];
        ref_topk(&s, NULL, ENG_METRIC_EUCLIDEAN, q, 10, want, wd);
        eng_query qq = {.vectors = q, .nq = 1, .top_k = 10, .n_probes = 8};
        eng_query_result *r = NULL;
        CU_ASSERT_EQUAL_FATAL(eng_query_run(E, name, &qq, &r), CDX_OK);
        for (size_t i = 0; i < 10; i++)
            CU_ASSERT_TRUE(fabs(r->hits[0][i].distance - wd[i]) < 1e-2 * (1 + wd[i]));
        eng_query_result_free(r);
    }
    CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
    ds_free(&s);
}

static void test_filters_and_listing(void)
{
    const size_t d = 8, n = 400;
    dataset s;
    ds_make(&s, n, d, "f");
    char name[64];
    uniq_name(name, "filt");
    eng_index_info info;
    create(name, d, ENG_METRIC_SQUARED_EUCLIDEAN, ENG_IVFFLAT, 0, &info);
    upsert(name, s.items, n);
    const char *flt = "{\"even\": true, \"n\": {\"$lt\": 100}}";
    eng_query q = {.vectors = s.x, .nq = 1, .top_k = 100, .filter = flt,
                   .filter_len = strlen(flt), .want = ENG_WANT_METADATA};
    eng_query_result *r = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_query_run(E, name, &q, &r), CDX_OK);
    /* Fewer than top_k: only 50 items match (a selective filter). */
    CU_ASSERT_EQUAL(r->n[0], 50);
    for (size_t i = 0; i < r->n[0]; i++) {
        size_t num = (size_t)atoi(r->hits[0][i].id + 1);
        CU_ASSERT_TRUE(num % 2 == 0 && num < 100);
        CU_ASSERT_STRING_EQUAL(r->hits[0][i].metadata, s.meta[num]);
    }
    eng_query_result_free(r);
    /* Batch query over threads equals one-at-a-time. */
    eng_query qb = {.vectors = s.x, .nq = 20, .top_k = 5};
    CU_ASSERT_EQUAL_FATAL(eng_query_run(E, name, &qb, &r), CDX_OK);
    for (size_t qi = 0; qi < 20; qi++)
        CU_ASSERT_STRING_EQUAL(r->hits[qi][0].id, s.ids[qi]);
    eng_query_result_free(r);
    /* list_ids pages cover every id exactly once. */
    char *cursor = NULL;
    size_t total = 0;
    bool *seen = calloc(n, sizeof(bool));
    int pages = 0;
    do {
        char **ids, *next = NULL;
        size_t *lens, k;
        CU_ASSERT_EQUAL_FATAL(eng_list_ids(E, name, cursor, 33, &ids, &lens, &k, &next), CDX_OK);
        for (size_t i = 0; i < k; i++) {
            size_t num = (size_t)atoi(ids[i] + 1);
            CU_ASSERT_FALSE(seen[num]);
            seen[num] = true;
        }
        total += k;
        eng_ids_free(ids, lens, k);
        free(cursor);
        cursor = next;
        pages++;
    } while (cursor && pages < 100);
    CU_ASSERT_EQUAL(total, n);
    CU_ASSERT_EQUAL(pages, (int)((n + 32) / 33));
    free(seen);
    /* A forged or altered cursor is refused. */
    char **ids, *next = NULL;
    size_t *lens, k;
    CU_ASSERT_EQUAL(eng_list_ids(E, name, "00ff", 10, &ids, &lens, &k, &next),
                    CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL_FATAL(eng_list_ids(E, name, NULL, 10, &ids, &lens, &k, &next), CDX_OK);
    eng_ids_free(ids, lens, k);
    CU_ASSERT_PTR_NOT_NULL_FATAL(next);
    next[strlen(next) - 3] = next[strlen(next) - 3] == 'a' ? 'b' : 'a';
    CU_ASSERT_EQUAL(eng_list_ids(E, name, next, 10, &ids, &lens, &k, &cursor),
                    CDX_ERR_INVALID_ARGUMENT);
    free(next);
    CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
    ds_free(&s);
}

/* A new engine (a restarted appliance) on the same store and token sees the same data. */
static void test_restart(void)
{
    const size_t d = 8, n = 100;
    dataset s;
    ds_make(&s, n, d, "r");
    char name[64];
    uniq_name(name, "restart");
    eng_index_info info, again;
    create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 4, &info);
    upsert(name, s.items, n);
    uint64_t v;
    CU_ASSERT_EQUAL(eng_train(E, name, NULL, &v), CDX_OK);
    eng *e2 = new_engine(store, statedir, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e2);
    CU_ASSERT_EQUAL(eng_index_describe(e2, name, &again), CDX_OK);
    CU_ASSERT_EQUAL(again.count, n);
    CU_ASSERT_EQUAL(again.version, v);
    eng_query q = {.vectors = s.x + 5 * d, .nq = 1, .top_k = 1, .n_probes = 4};
    eng_query_result *r = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_query_run(e2, name, &q, &r), CDX_OK);
    CU_ASSERT_STRING_EQUAL(r->hits[0][0].id, s.ids[5]);
    eng_query_result_free(r);
    eng_free(e2);
    CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
    ds_free(&s);
}

/* ------------------------------------------------------------------ hostile store */

static void key_of(const uint8_t id[16], const char *kind, char *pat)
{
    char hx[33];
    cdx_hex_encode(id, 16, hx);
    if (!strcmp(kind, "head"))
        sprintf(pat, "cdx:{%s}:head", hx);
    else if (kind[0] == 'b')
        sprintf(pat, "cdx:{%s}:b:*", hx);
    else
        sprintf(pat, "cdx:%s:%s:*", hx, kind);
}

/* All keys matching a pattern. */
static size_t keys_of(const char *pat, char ***out)
{
    uint64_t cur = 0;
    char **all = NULL;
    size_t n = 0;
    do {
        char **k;
        size_t nk;
        if (eng_store_scan(store, pat, &cur, &k, &nk))
            break;
        all = realloc(all, (n + nk + 1) * sizeof(char *));
        for (size_t i = 0; i < nk; i++) {
            bool dup = false;
            for (size_t j = 0; j < n && !dup; j++)
                dup = !strcmp(all[j], k[i]);
            if (!dup)
                all[n++] = strdup(k[i]);
        }
        eng_keys_free(k, nk);
    } while (cur);
    *out = all;
    return n;
}

static eng_val raw_get(const char *key)
{
    eng_val v = {0};
    const char *k[1] = {key};
    CU_ASSERT_EQUAL(eng_store_mget(store, k, 1, &v), CDX_OK);
    return v;
}

static void raw_set(const char *key, const uint8_t *p, size_t n)
{
    eng_kv kv = {key, p, n};
    CU_ASSERT_EQUAL(eng_store_set(store, &kv, 1), CDX_OK);
}

static cdx_err q1(eng *e, const char *name, const float *v)
{
    eng_query q = {.vectors = v, .nq = 1, .top_k = 5};
    eng_query_result *r = NULL;
    cdx_err err = eng_query_run(e, name, &q, &r);
    eng_query_result_free(r);
    if (err && getenv("CDX_TEST_DEBUG"))
        fprintf(stderr, "q1: %s: %s\n", cdx_err_name(err), cdx_err_detail());
    return err;
}

static void test_tamper(void)
{
    const size_t d = 8;
    dataset s;
    ds_make(&s, 40, d, "t");
    char name[64], pat[128];
    uniq_name(name, "tamper");
    eng_index_info info;
    create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, &info);
    upsert(name, s.items, 20);
    upsert(name, s.items + 20, 20);
    eng *e2 = new_engine(store, statedir, 0); /* no cache: every query reads the store */
    CU_ASSERT_PTR_NOT_NULL_FATAL(e2);
    CU_ASSERT_EQUAL(q1(e2, name, s.x), CDX_OK);
    char **segs;
    key_of(info.id, "s", pat);
    size_t ns = keys_of(pat, &segs);
    CU_ASSERT_EQUAL_FATAL(ns, 2);
    eng_val a = raw_get(segs[0]), b = raw_get(segs[1]);
    /* One flipped bit in a search block. */
    uint8_t *m = malloc(a.len);
    memcpy(m, a.data, a.len);
    m[70] ^= 1;
    raw_set(segs[0], m, a.len);
    CU_ASSERT_EQUAL(q1(e2, name, s.x), CDX_ERR_INTEGRITY);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), name));
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "search block"));
    /* Truncated. */
    raw_set(segs[0], a.data, a.len / 3);
    CU_ASSERT_EQUAL(q1(e2, name, s.x), CDX_ERR_INTEGRITY);
    /* Swapped with the other segment. */
    raw_set(segs[0], b.data, b.len);
    raw_set(segs[1], a.data, a.len);
    CU_ASSERT_EQUAL(q1(e2, name, s.x), CDX_ERR_INTEGRITY);
    /* Deleted: the reader refreshes the head once, then reports it. */
    raw_set(segs[1], b.data, b.len);
    const char *dk[1] = {segs[0]};
    CU_ASSERT_EQUAL(eng_store_del(store, dk, 1, NULL), CDX_OK);
    CU_ASSERT_EQUAL(q1(e2, name, s.x), CDX_ERR_INTEGRITY);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "missing"));
    raw_set(segs[0], a.data, a.len);
    raw_set(segs[1], b.data, b.len);
    CU_ASSERT_EQUAL(q1(e2, name, s.x), CDX_OK);
    free(m);
    eng_vals_free(&a, 1);
    eng_vals_free(&b, 1);
    for (size_t i = 0; i < ns; i++)
        free(segs[i]);
    free(segs);

    /* An id-map bucket replayed from an older version. */
    char **bk;
    key_of(info.id, "b", pat);
    size_t nb = keys_of(pat, &bk);
    CU_ASSERT_FATAL(nb > 0);
    eng_val old = raw_get(bk[0]);
    /* Rewrite every bucket by upserting every item again. */
    upsert(name, s.items, 40);
    eng_val newer = raw_get(bk[0]);
    raw_set(bk[0], old.data, old.len);
    const char *ids[40];
    size_t lens[40];
    for (int i = 0; i < 40; i++) {
        ids[i] = s.ids[i];
        lens[i] = strlen(s.ids[i]);
    }
    eng_get_result *g = NULL;
    CU_ASSERT_EQUAL(eng_get(e2, name, ids, lens, 40, 0, 0, &g), CDX_ERR_INTEGRITY);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "bucket"));
    raw_set(bk[0], newer.data, newer.len);
    CU_ASSERT_EQUAL(eng_get(e2, name, ids, lens, 40, 0, 0, &g), CDX_OK);
    eng_get_result_free(g);
    eng_vals_free(&old, 1);
    eng_vals_free(&newer, 1);
    for (size_t i = 0; i < nb; i++)
        free(bk[i]);
    free(bk);

    /* The head rolled back to an older (authentic) version. */
    char hk[128];
    key_of(info.id, "head", hk);
    eng_val h1 = raw_get(hk);
    upsert(name, s.items, 1);
    eng_val h2 = raw_get(hk);
    CU_ASSERT_EQUAL(q1(e2, name, s.x), CDX_OK); /* e2 sees the newest version */
    raw_set(hk, h1.data, h1.len);
    CU_ASSERT_EQUAL(q1(e2, name, s.x), CDX_ERR_ROLLBACK_DETECTED);
    CU_ASSERT_EQUAL(q1(E, name, s.x), CDX_ERR_ROLLBACK_DETECTED);
    /* Persisted: a restarted appliance still refuses it. */
    eng *e3 = new_engine(store, statedir, 0);
    CU_ASSERT_EQUAL(q1(e3, name, s.x), CDX_ERR_ROLLBACK_DETECTED);
    /* The admin accepts the restored state explicitly. */
    uint64_t acc = 0;
    CU_ASSERT_EQUAL(eng_accept_rollback(e3, name, &acc), CDX_OK);
    CU_ASSERT_EQUAL(q1(e3, name, s.x), CDX_OK);
    raw_set(hk, h2.data, h2.len);
    CU_ASSERT_EQUAL(q1(e3, name, s.x), CDX_OK);
    eng_free(e3);
    /* A head moved to another index (valid record, wrong index) fails authentication. */
    eng_index_info other;
    char oname[64];
    uniq_name(oname, "other");
    create(oname, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, &other);
    char ohk[128];
    key_of(other.id, "head", ohk);
    eng_val oh = raw_get(ohk);
    raw_set(hk, oh.data, oh.len);
    cdx_err err = q1(e2, name, s.x);
    CU_ASSERT_TRUE(err == CDX_ERR_INTEGRITY || err == CDX_ERR_KEY_REPLACED);
    raw_set(hk, h2.data, h2.len);
    CU_ASSERT_EQUAL(q1(e2, name, s.x), CDX_OK);
    eng_vals_free(&h1, 1);
    eng_vals_free(&h2, 1);
    eng_vals_free(&oh, 1);

    /* A catalog entry tampered with. */
    char **cat;
    size_t nc = keys_of("cdx:cat:*", &cat);
    CU_ASSERT_FATAL(nc > 0);
    eng *e4 = new_engine(store, statedir, 0);
    for (size_t i = 0; i < nc; i++) {
        eng_val cv = raw_get(cat[i]);
        uint8_t *t = malloc(cv.len);
        memcpy(t, cv.data, cv.len);
        t[cv.len - 1] ^= 0x80;
        raw_set(cat[i], t, cv.len);
        free(t);
        eng_vals_free(&cv, 1);
    }
    eng_index_info tmp;
    CU_ASSERT_EQUAL(eng_index_describe(e4, name, &tmp), CDX_ERR_INTEGRITY);
    eng_free(e4);
    for (size_t i = 0; i < nc; i++) { /* flip back */
        eng_val cv = raw_get(cat[i]);
        cv.data[cv.len - 1] ^= 0x80;
        raw_set(cat[i], cv.data, cv.len);
        eng_vals_free(&cv, 1);
        free(cat[i]);
    }
    free(cat);
    eng_free(e2);
    CU_ASSERT_EQUAL(eng_index_delete(E, oname, other.id), CDX_OK);
    CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
    ds_free(&s);
}

/* Nothing the store holds reveals ids, metadata, contents, vectors, codes or names. */
static void test_plaintext_scan(void)
{
    const size_t d = 16, n = 60;
    char name[64], mname[64];
    uniq_name(name, "scanFlatCosineIndexName");
    uniq_name(mname, "scanSq8IndexNameX");
    dataset s;
    make_blobs(&s, n, d, 4, 1); /* integral 0..255: SQ8 codes equal the values */
    for (size_t j = 0; j < d; j++) {
        s.x[j] = 0;
        s.x[d + j] = 255;
    }
    char (*ids)[40] = malloc(n * sizeof(*ids));
    char (*vals)[40] = malloc(n * sizeof(*vals));
    char (*meta)[120] = malloc(n * sizeof(*meta));
    char (*cont)[40] = malloc(n * sizeof(*cont));
    for (size_t i = 0; i < n; i++) {
        rand_text(ids[i], 24);
        rand_text(vals[i], 20);
        rand_text(cont[i], 32);
        snprintf(meta[i], sizeof(meta[i]), "{\"secret\": \"%s\"}", vals[i]);
        s.items[i].id = ids[i];
        s.items[i].id_len = 24;
        s.items[i].metadata = meta[i];
        s.items[i].metadata_len = strlen(meta[i]);
        s.items[i].contents = (const uint8_t *)cont[i];
        s.items[i].contents_len = 32;
    }
    eng_index_info a, b;
    create(name, d, ENG_METRIC_COSINE, ENG_IVFFLAT, 2, &a);
    create(mname, d, ENG_METRIC_EUCLIDEAN, ENG_IVFSQ8, 2, &b);
    upsert(name, s.items + 1, n - 1); /* row 0 is all zeros: no direction for cosine */
    upsert(mname, s.items, n);
    uint64_t v;
    CU_ASSERT_EQUAL(eng_train(E, name, NULL, &v), CDX_OK);
    CU_ASSERT_EQUAL(eng_train(E, mname, NULL, &v), CDX_OK);
    /* Positive control: plaintext written through the raw store API is found. */
    char ctl_key[64];
    snprintf(ctl_key, sizeof(ctl_key), "control:%s", ids[0]);
    raw_set(ctl_key, (const uint8_t *)vals[0], 20);

    char **keys;
    size_t nk = keys_of("*", &keys);
    size_t total = 0, records = 0;
    int found_ids = 0, found_vals = 0, found_cont = 0, found_vec = 0, found_norm = 0,
        found_codes = 0, found_name = 0, control = 0;
    float nv[16];
    for (size_t i = 0; i < nk; i++) {
        eng_val val = raw_get(keys[i]);
        bool is_ctl = !strcmp(keys[i], ctl_key);
        if (!is_ctl) {
            total += val.len;
            records++;
        }
        const char *blobs[2] = {keys[i], (const char *)val.data};
        size_t blens[2] = {strlen(keys[i]), val.len};
        for (int bi = 0; bi < 2; bi++) {
            const char *hay = blobs[bi];
            size_t hl = blens[bi];
            if (!hay)
                continue;
            int hits = 0;
            for (size_t j = 0; j < n; j++) {
                hits += memmem(hay, hl, ids[j], 24) != NULL;
                if (memmem(hay, hl, vals[j], 20)) {
                    if (is_ctl)
                        control++;
                    else
                        found_vals++;
                }
                found_cont += memmem(hay, hl, cont[j], 32) != NULL;
                found_vec += memmem(hay, hl, s.x + j * d, 16) != NULL;
                memcpy(nv, s.x + j * d, sizeof(nv));
                double nn = 0;
                for (size_t t = 0; t < d; t++)
                    nn += (double)nv[t] * nv[t];
                for (size_t t = 0; t < d; t++)
                    nv[t] = (float)(nv[t] / sqrt(nn));
                found_norm += memmem(hay, hl, nv, 16) != NULL;
                uint8_t code[16];
                for (size_t t = 0; t < 16; t++)
                    code[t] = (uint8_t)s.x[j * d + t];
                found_codes += memmem(hay, hl, code, 16) != NULL;
            }
            if (!is_ctl)
                found_ids += hits;
            found_name += memmem(hay, hl, name, strlen(name)) != NULL ||
                          memmem(hay, hl, mname, strlen(mname)) != NULL;
        }
        eng_vals_free(&val, 1);
        free(keys[i]);
    }
    free(keys);
    size_t raw = 2 * n * (d * sizeof(float) + 24 + 20 + 32);
    fprintf(stderr, "  [scan] %zu records, %zu bytes stored for %zu raw bytes\n", records, total,
            raw);
    CU_ASSERT_TRUE(records > 10);
    CU_ASSERT_TRUE(total >= raw);
    CU_ASSERT_EQUAL(control, 1);
    CU_ASSERT_EQUAL(found_ids, 0);
    CU_ASSERT_EQUAL(found_vals, 0);
    CU_ASSERT_EQUAL(found_cont, 0);
    CU_ASSERT_EQUAL(found_vec, 0);
    CU_ASSERT_EQUAL(found_norm, 0);
    CU_ASSERT_EQUAL(found_codes, 0);
    CU_ASSERT_EQUAL(found_name, 0);
    const char *ck[1] = {ctl_key};
    eng_store_del(store, ck, 1, NULL);
    CU_ASSERT_EQUAL(eng_index_delete(E, name, a.id), CDX_OK);
    CU_ASSERT_EQUAL(eng_index_delete(E, mname, b.id), CDX_OK);
    free(ids);
    free(vals);
    free(meta);
    free(cont);
    ds_free(&s);
}

/* ------------------------------------------------------------------ crashes */

/* Count items of `name` that a fresh engine sees, and check they are whole. */
static long observe(const char *name, const dataset *s, size_t from, size_t to)
{
    eng *e2 = new_engine(store, statedir, 0);
    if (!e2)
        return -1;
    uint64_t cnt = 0;
    long res = -1;
    cdx_err cerr = eng_count(e2, name, &cnt);
    if (cerr && getenv("CDX_TEST_DEBUG"))
        fprintf(stderr, "observe: %s: %s\n", cdx_err_name(cerr), cdx_err_detail());
    if (cerr == CDX_OK) {
        size_t n = to - from, found = 0;
        const char **ids = malloc(n * sizeof(char *));
        size_t *lens = malloc(n * sizeof(size_t));
        for (size_t i = 0; i < n; i++) {
            ids[i] = s->ids[from + i];
            lens[i] = strlen(ids[i]);
        }
        eng_get_result *g = NULL;
        if (eng_get(e2, name, ids, lens, n, ENG_WANT_VECTOR, 0, &g) == CDX_OK) {
            bool whole = true;
            for (size_t i = 0; i < n; i++)
                if (g->found[i]) {
                    found++;
                    whole &= !memcmp(g->hits[i].vector, s->x + (from + i) * s->d,
                                     s->d * sizeof(float));
                }
            res = whole && (found == 0 || found == n) ? (long)cnt * 1000 + (long)found : -1;
            eng_get_result_free(g);
        }
        free(ids);
        free(lens);
    }
    eng_free(e2);
    return res;
}

static void test_crash_points(void)
{
    const size_t d = 8;
    dataset s;
    ds_make(&s, 60, d, "c");
    int points = 0, before = 0, after = 0;
    /* Upsert of 20 new items into an index holding 20: crash after each store write. */
    for (uint64_t nth = 1; nth < 64; nth++) {
        char name[64];
        uniq_name(name, "crash");
        eng_index_info info;
        create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, &info);
        upsert(name, s.items, 20);
        eng_store_fault_arm(fault, nth);
        uint64_t v = 0;
        cdx_err err = eng_upsert(E, name, s.items + 20, 20, &v);
        eng_store_fault_disarm(fault);
        long st = observe(name, &s, 20, 40);
        if (err == CDX_OK) {
            CU_ASSERT_EQUAL(st, 40 * 1000 + 20);
            CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
            break; /* past the last write: the operation completed */
        }
        points++;
        /* Before (20 items, none of the batch) or after (40, all of it): nothing between. */
        CU_ASSERT_TRUE(st == 20 * 1000 || st == 40 * 1000 + 20);
        before += st == 20 * 1000;
        after += st == 40 * 1000 + 20;
        /* The first 20 are intact either way. */
        CU_ASSERT_TRUE(observe(name, &s, 0, 20) >= 0);
        CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
    }
    CU_ASSERT_TRUE(points >= 3);
    fprintf(stderr, "  [crash] upsert: %d crash points, %d before, %d after\n", points, before,
            after);

    /* Training: 4 lists, crash after each write. */
    points = 0;
    for (uint64_t nth = 1; nth < 64; nth++) {
        char name[64];
        uniq_name(name, "crasht");
        eng_index_info info;
        create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 4, &info);
        upsert(name, s.items, 60);
        eng_store_fault_arm(fault, nth);
        uint64_t v = 0;
        cdx_err err = eng_train(E, name, NULL, &v);
        eng_store_fault_disarm(fault);
        long st = observe(name, &s, 0, 60);
        CU_ASSERT_EQUAL(st, 60 * 1000 + 60);
        eng_index_info now;
        CU_ASSERT_EQUAL(eng_index_describe(E, name, &now), CDX_OK);
        CU_ASSERT_TRUE(now.n_clusters == 0 || now.n_clusters == 4);
        CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
        if (err == CDX_OK)
            break;
        points++;
    }
    CU_ASSERT_TRUE(points >= 3);
    fprintf(stderr, "  [crash] train: %d crash points\n", points);

    /* Index creation: after a crash the name is either free, or resumable. */
    points = 0;
    for (uint64_t nth = 1; nth < 32; nth++) {
        char name[64];
        uniq_name(name, "crashc");
        eng_index_info info;
        eng_create c = {.name = name, .dimension = d, .metric = ENG_METRIC_EUCLIDEAN,
                        .type = ENG_IVFFLAT};
        eng_store_fault_arm(fault, nth);
        cdx_err err = eng_index_create(E, &c, &info);
        eng_store_fault_disarm(fault);
        if (err != CDX_OK) {
            points++;
            cdx_err d2 = eng_index_describe(E, name, &info);
            CU_ASSERT_TRUE(d2 == CDX_ERR_NOT_FOUND || d2 == CDX_ERR_FAILED_PRECONDITION);
            /* Creating again resumes or starts over, and works. */
            CU_ASSERT_EQUAL_FATAL(eng_index_create(E, &c, &info), CDX_OK);
        }
        upsert(name, s.items, 5);
        CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
        if (err == CDX_OK)
            break;
    }
    CU_ASSERT_TRUE(points >= 2);

    /* Index deletion: after a crash, repeating the delete finishes it. */
    for (uint64_t nth = 1; nth < 32; nth++) {
        char name[64];
        uniq_name(name, "crashd");
        eng_index_info info;
        create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, &info);
        upsert(name, s.items, 10);
        eng_store_fault_arm(fault, nth);
        cdx_err err = eng_index_delete(E, name, info.id);
        eng_store_fault_disarm(fault);
        if (err == CDX_OK)
            break;
        eng_index_info x;
        cdx_err d2 = eng_index_describe(E, name, &x);
        /* Still whole (the key check came first), or marked deleting: never half-usable. */
        CU_ASSERT_TRUE(d2 == CDX_OK || d2 == CDX_ERR_FAILED_PRECONDITION ||
                       d2 == CDX_ERR_NOT_FOUND);
        cdx_err d3 = eng_index_delete(E, name, info.id);
        CU_ASSERT_TRUE(d3 == CDX_OK || d3 == CDX_ERR_NOT_FOUND);
        CU_ASSERT_EQUAL(eng_index_describe(E, name, &x), CDX_ERR_NOT_FOUND);
    }
    ds_free(&s);
}

/* ------------------------------------------------------------------ concurrency, sweep */

struct writer {
    eng *e;
    const char *name;
    const dataset *s;
    size_t from, to;
    int errors;
};

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    for (size_t i = w->from; i < w->to; i += 10) {
        uint64_t v;
        cdx_err err = eng_upsert(w->e, w->name, w->s->items + i, 10, &v);
        if (err != CDX_OK) {
            w->errors++;
            fprintf(stderr, "writer: %s: %s\n", cdx_err_name(err), cdx_err_detail());
        }
    }
    return NULL;
}

static void test_two_appliances(void)
{
    const size_t d = 8, n = 400;
    dataset s;
    ds_make(&s, n, d, "w");
    char name[64];
    uniq_name(name, "conc");
    eng_index_info info;
    create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, &info); /* untrained: one cluster */
    char *dir2 = fx_tmpdir_new("engstate2");
    eng *e2 = new_engine(store, dir2, 1u << 20);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e2);
    struct writer w1 = {E, name, &s, 0, n / 2, 0}, w2 = {e2, name, &s, n / 2, n, 0};
    pthread_t t1, t2;
    pthread_create(&t1, NULL, writer_main, &w1);
    pthread_create(&t2, NULL, writer_main, &w2);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    CU_ASSERT_EQUAL(w1.errors + w2.errors, 0);
    uint64_t cnt = 0;
    CU_ASSERT_EQUAL(eng_count(e2, name, &cnt), CDX_OK);
    CU_ASSERT_EQUAL(cnt, n);
    CU_ASSERT_EQUAL(observe(name, &s, 0, n), (long)n * 1000 + (long)n);
    /* Exhaustive query over everything returns each item once. */
    eng_query q = {.vectors = s.x, .nq = 1, .top_k = 1000};
    eng_query_result *r = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_query_run(E, name, &q, &r), CDX_OK);
    CU_ASSERT_EQUAL(r->n[0], n);
    eng_query_result_free(r);
    eng_stats st;
    eng_get_stats(E, &st);
    fprintf(stderr, "  [concurrency] commits=%llu conflicts=%llu\n",
            (unsigned long long)st.commits, (unsigned long long)st.commit_conflicts);
    eng_free(e2);
    fx_rm_rf(dir2);
    free(dir2);
    CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
    ds_free(&s);
}

struct pause {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int state; /* 0 idle, 1 paused at commit, 2 released */
};

static void pause_hook(void *arg, const uint8_t id[16])
{
    struct pause *p = arg;
    (void)id;
    pthread_mutex_lock(&p->mu);
    if (p->state == 0) {
        p->state = 1;
        pthread_cond_broadcast(&p->cv);
        while (p->state != 2)
            pthread_cond_wait(&p->cv, &p->mu);
    }
    pthread_mutex_unlock(&p->mu);
}

struct upjob {
    eng *e;
    const char *name;
    const eng_item *items;
    size_t n;
    cdx_err err;
};

static void *up_main(void *arg)
{
    struct upjob *j = arg;
    uint64_t v;
    j->err = eng_upsert(j->e, j->name, j->items, j->n, &v);
    return NULL;
}

static void test_sweep_vs_paused_upsert(void)
{
    const size_t d = 8;
    dataset s;
    ds_make(&s, 60, d, "p");
    char name[64];
    uniq_name(name, "sweep");
    eng_index_info info;
    create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, &info);
    for (int i = 0; i < 3; i++)
        upsert(name, s.items + 10 * i, 10); /* leaves superseded manifests behind */
    /* An appliance whose writer pauses just before its commit. */
    char *dir2 = fx_tmpdir_new("engstate3");
    eng *e2 = new_engine(store, dir2, 0);
    struct pause p = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    eng_set_commit_hook(e2, pause_hook, &p);
    struct upjob j = {e2, name, s.items + 30, 30, CDX_OK};
    pthread_t t;
    pthread_create(&t, NULL, up_main, &j);
    pthread_mutex_lock(&p.mu);
    while (p.state != 1)
        pthread_cond_wait(&p.cv, &p.mu);
    pthread_mutex_unlock(&p.mu);
    /* A sweep with the default grace runs meanwhile: the paused writer's records survive. */
    uint64_t del = 0;
    CU_ASSERT_EQUAL(eng_sweep(E, name, &del), CDX_OK);
    pthread_mutex_lock(&p.mu);
    p.state = 2;
    pthread_cond_broadcast(&p.cv);
    pthread_mutex_unlock(&p.mu);
    pthread_join(t, NULL);
    CU_ASSERT_EQUAL(j.err, CDX_OK);
    CU_ASSERT_EQUAL(observe(name, &s, 0, 60), 60 * 1000 + 60);
    /* A sweeper with no grace removes what no manifest references, and nothing else. */
    eng_config c = {.custody = cust, .store = store, .state_dir = statedir, .gc_grace_ms = 1};
    memcpy(c.deployment_id, dep, 16);
    eng *sw = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_new(&c, &sw), CDX_OK);
    struct timespec ts = {0, 5 * 1000 * 1000}; /* records must be older than 1 ms */
    nanosleep(&ts, NULL);
    CU_ASSERT_EQUAL(eng_sweep(sw, name, &del), CDX_OK);
    CU_ASSERT_TRUE(del >= 3); /* at least the superseded manifests */
    eng_free(sw);
    CU_ASSERT_EQUAL(observe(name, &s, 0, 60), 60 * 1000 + 60);
    eng_free(e2);
    fx_rm_rf(dir2);
    free(dir2);
    CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
    ds_free(&s);
}

/* ------------------------------------------------------------------ main */

static void add_tests(CU_pSuite s)
{
    CU_add_test(s, "lifecycle: create, describe, list, delete", test_lifecycle);
    CU_add_test(s, "bad input: specific errors, nothing applied", test_bad_input);
    CU_add_test(s, "upsert, get, update, delete", test_upsert_get_delete);
    CU_add_test(s, "exhaustive search exact for all metrics", test_exact_metrics);
    CU_add_test(s, "train, recall, compaction", test_train);
    CU_add_test(s, "IVFSQ8 lossless on 0..255 integers", test_sq8_exact);
    CU_add_test(s, "filters and list_ids paging", test_filters_and_listing);
    CU_add_test(s, "restart sees the same data", test_restart);
    CU_add_test(s, "hostile store: tamper, swap, replay, rollback", test_tamper);
    CU_add_test(s, "plaintext scan of the store", test_plaintext_scan);
    CU_add_test(s, "crash at every store write", test_crash_points);
    CU_add_test(s, "two appliances upserting concurrently", test_two_appliances);
    CU_add_test(s, "sweep while an upsert is paused", test_sweep_vs_paused_upsert);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    add_tests(CU_add_suite("engine/memory", init_mem, suite_clean));
    add_tests(CU_add_suite("engine/redis", init_redis, suite_clean));
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned fails = CU_get_number_of_failures() + CU_get_number_of_tests_failed() +
                     CU_get_number_of_suites_failed();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
