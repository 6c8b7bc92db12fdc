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
#include "fx_custody.h"
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
    fx_hsm_config(tok, NULL, 60000, &cfg);
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
        /* Warming loads every block a query can need: the next queries miss nothing. */
        uint64_t nb = 0;
        eng_stats st0, st1;
        CU_ASSERT_EQUAL(eng_index_warm(E, name, &nb), CDX_OK);
        CU_ASSERT_EQUAL(nb, info.segments);
        eng_get_stats(E, &st0);
        CU_ASSERT_TRUE(fabs(recall(name, &s, ENG_METRIC_EUCLIDEAN, 16, 40) - r16) < 1e-9);
        eng_get_stats(E, &st1);
        CU_ASSERT_EQUAL(st1.cache_misses, st0.cache_misses);
        CU_ASSERT_TRUE(st1.cache_hits > st0.cache_hits);
        CU_ASSERT_EQUAL(eng_index_warm(E, "no-such-index", NULL), CDX_ERR_NOT_FOUND);
        /* Per-thread stage times: this thread's query shows up, and reading resets them. */
        uint64_t stg[ENG_STAGE_COUNT];
        eng_thread_stages(stg);
        CU_ASSERT_TRUE(recall(name, &s, ENG_METRIC_EUCLIDEAN, 4, 1) >= 0);
        eng_thread_stages(stg);
        CU_ASSERT_TRUE(stg[ENG_STAGE_HEAD] > 0 && stg[ENG_STAGE_COARSE] > 0 &&
                       stg[ENG_STAGE_DISTANCE] > 0);
        eng_thread_stages(stg);
        CU_ASSERT_EQUAL(stg[ENG_STAGE_COARSE], 0);
        CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
    }
    ds_free(&s);
}

/*
 * Trained indexes screen rows by code bounds and rescore only the possible
 * winners: the answers (ids, order, distance bits) must equal scoring every
 * probed row, for every metric and type, lossy floats, with tombstones,
 * duplicates (ties) and a filter; and the screen must actually prune.
 */
static void test_screen_equivalence(void)
{
    const size_t d = 40, n = 1600;
    static const eng_metric metrics[] = {ENG_METRIC_EUCLIDEAN, ENG_METRIC_SQUARED_EUCLIDEAN,
                                         ENG_METRIC_COSINE, ENG_METRIC_INNER_PRODUCT};
    static const uint32_t probes[] = {1, 3, 16};
    dataset s;
    make_blobs(&s, n, d, 12, 0);
    for (size_t i = 0; i < n; i += 50) /* exact duplicates: ties broken by position */
        memcpy(s.x + (i + 1) * d, s.x + i * d, d * sizeof(float));
    for (size_t i = 5; i < n; i += 97) /* other scales (inner product, cosine) */
        for (size_t j = 0; j < d; j++)
            s.x[i * d + j] *= 3.5f;
    eng_stats st0, st1;
    uint64_t screened = 0, rescored = 0; /* screened runs only */
    size_t compared = 0;
    for (int t = 0; t < 2; t++)
        for (size_t mi = 0; mi < 4; mi++) {
            eng_index_type type = t ? ENG_IVFSQ8 : ENG_IVFFLAT;
            char name[64];
            uniq_name(name, "screen");
            eng_index_info info;
            create(name, d, metrics[mi], type, 16, &info);
            upsert(name, s.items, n / 2);
            uint64_t v = 0;
            CU_ASSERT_EQUAL_FATAL(eng_train(E, name, NULL, &v), CDX_OK);
            upsert(name, s.items + n / 2, n / 2);
            /* Tombstones: deletes and updates land in later segments. */
            const char *del[8];
            size_t dl[8];
            for (int i = 0; i < 8; i++) {
                del[i] = s.ids[i * 113 + 7];
                dl[i] = strlen(del[i]);
            }
            uint64_t deleted = 0;
            CU_ASSERT_EQUAL(eng_delete(E, name, del, dl, 8, &deleted, &v), CDX_OK);
            for (size_t qi = 0; qi < 12; qi++) {
                float q[40];
                for (size_t j = 0; j < d; j++)
                    q[j] = s.x[(qi * 131 % n) * d + j] + (qi % 3 ? frand() * 0.5f : 0);
                for (size_t pi = 0; pi < 3; pi++)
                    for (int f = 0; f < 2; f++) {
                        const char *flt = f ? "{\"even\": true}" : NULL;
                        eng_query qq = {.vectors = q, .nq = 1, .top_k = 10,
                                        .n_probes = probes[pi], .filter = flt,
                                        .filter_len = flt ? strlen(flt) : 0};
                        eng_query_result *a = NULL, *b = NULL;
                        eng_set_screen(E, true);
                        eng_get_stats(E, &st0);
                        CU_ASSERT_EQUAL_FATAL(eng_query_run(E, name, &qq, &a), CDX_OK);
                        eng_get_stats(E, &st1);
                        screened += st1.rows_screened - st0.rows_screened;
                        rescored += st1.rows_rescored - st0.rows_rescored;
                        eng_set_screen(E, false);
                        CU_ASSERT_EQUAL_FATAL(eng_query_run(E, name, &qq, &b), CDX_OK);
                        eng_set_screen(E, true);
                        CU_ASSERT_EQUAL(a->n[0], b->n[0]);
                        for (size_t i = 0; i < a->n[0] && i < b->n[0]; i++) {
                            bool same = !strcmp(a->hits[0][i].id, b->hits[0][i].id) &&
                                        memcmp(&a->hits[0][i].distance, &b->hits[0][i].distance,
                                               sizeof(float)) == 0;
                            CU_ASSERT(same);
                            if (!same)
                                fprintf(stderr, "\n  [screen %s %s] q%zu np%u f%d rank %zu: %s %.9g vs %s %.9g",
                                        eng_index_type_name(type), eng_metric_name(metrics[mi]), qi,
                                        probes[pi], f, i, a->hits[0][i].id, a->hits[0][i].distance,
                                        b->hits[0][i].id, b->hits[0][i].distance);
                        }
                        compared++;
                        eng_query_result_free(a);
                        eng_query_result_free(b);
                    }
            }
            CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
        }
    fprintf(stderr, "\n  screen: %zu query pairs equal; %llu rows bounded, %llu rescored\n",
            compared, (unsigned long long)screened, (unsigned long long)rescored);
    CU_ASSERT(compared == 2 * 4 * 12 * 3 * 2);
    /* The screen must prune most rows (it is not silently scoring everything). */
    CU_ASSERT(screened > 0 && rescored * 4 < screened);
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

    /* Contents deleted by the store: reported (after one refresh), never silently empty. */
    {
        uint8_t blob[40];
        memset(blob, 7, sizeof(blob));
        eng_item ci = s.items[0];
        ci.contents = blob;
        ci.contents_len = sizeof(blob);
        upsert(name, &ci, 1);
        char **tk;
        key_of(info.id, "t", pat);
        size_t nt = keys_of(pat, &tk);
        CU_ASSERT_EQUAL_FATAL(nt, 1);
        eng_val cv = raw_get(tk[0]);
        const char *dk1[1] = {tk[0]};
        CU_ASSERT_EQUAL(eng_store_del(store, dk1, 1, NULL), CDX_OK);
        const char *cid = s.ids[0];
        size_t cl = strlen(cid);
        eng_get_result *cg = NULL;
        CU_ASSERT_EQUAL(eng_get(e2, name, &cid, &cl, 1, ENG_WANT_CONTENTS, 0, &cg),
                        CDX_ERR_INTEGRITY);
        raw_set(tk[0], cv.data, cv.len);
        CU_ASSERT_EQUAL_FATAL(eng_get(e2, name, &cid, &cl, 1, ENG_WANT_CONTENTS, 0, &cg), CDX_OK);
        CU_ASSERT_EQUAL(cg->hits[0].contents_len, sizeof(blob));
        eng_get_result_free(cg);
        eng_vals_free(&cv, 1);
        free(tk[0]);
        free(tk);
    }

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

/*
 * A batch large enough for the parallel write path (many segments built on
 * several threads, written in the background while the commit is sealed):
 * a crash after any store write still leaves before or after.
 */
static void test_crash_parallel(void)
{
    const size_t d = 8;
    dataset s;
    ds_make(&s, 400, d, "cp");
    int points = 0, before = 0, after = 0;
    for (uint64_t nth = 1; nth < 200; nth++) {
        char name[64];
        uniq_name(name, "crashp");
        eng_index_info info;
        create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 32, &info);
        upsert(name, s.items, 200);
        uint64_t v = 0;
        CU_ASSERT_EQUAL_FATAL(eng_train(E, name, NULL, &v), CDX_OK);
        /* 100 updates (old copies tombstoned) and 100 new items, over up to 32 clusters. */
        eng_store_fault_arm(fault, nth);
        cdx_err err = eng_upsert(E, name, s.items + 100, 200, &v);
        eng_store_fault_disarm(fault);
        long st = observe(name, &s, 200, 300);
        if (err == CDX_OK) {
            CU_ASSERT_EQUAL(st, 300 * 1000 + 100);
            CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
            break;
        }
        points++;
        CU_ASSERT_TRUE(st == 200 * 1000 || st == 300 * 1000 + 100);
        before += st == 200 * 1000;
        after += st == 300 * 1000 + 100;
        CU_ASSERT_TRUE(observe(name, &s, 0, 200) >= 0);
        /* The index takes the next batch after the crash (the write cache was not kept). */
        CU_ASSERT_EQUAL(eng_upsert(E, name, s.items + 300, 100, &v), CDX_OK);
        CU_ASSERT_EQUAL(observe(name, &s, 300, 400) % 1000, 100);
        CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
    }
    CU_ASSERT_TRUE(points >= 10);
    fprintf(stderr, "  [crash] parallel upsert: %d crash points, %d before, %d after\n", points,
            before, after);
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

/*
 * A lost tail (the store back at an older head, e.g. everysec after a power
 * loss) and another appliance committing the same version number again: the
 * appliance that wrote the lost commit must not take its cached manifest or
 * buckets for the new one (same version, different manifest).
 */
static void test_lost_tail_version_reuse(void)
{
    const size_t d = 8;
    dataset s;
    ds_make(&s, 70, d, "lt");
    char name[64], pat[128], head[128];
    uniq_name(name, "losttail");
    eng_index_info info;
    create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, &info);
    upsert(name, s.items, 20);
    /* Snapshot the mutable keys (head and buckets). */
    key_of(info.id, "head", head);
    key_of(info.id, "b", pat);
    char **bk;
    size_t nb = keys_of(pat, &bk);
    eng_val hv = raw_get(head), *bv = calloc(nb, sizeof(eng_val));
    for (size_t i = 0; i < nb; i++)
        bv[i] = raw_get(bk[i]);
    uint64_t v3 = upsert(name, s.items + 20, 20); /* E caches this commit */
    /* The tail is lost: the store is back at the snapshot. */
    char **now;
    size_t nn = keys_of(pat, &now);
    for (size_t i = 0; i < nn; i++) {
        bool old = false;
        for (size_t j = 0; j < nb && !old; j++)
            old = !strcmp(now[i], bk[j]);
        const char *k[1] = {now[i]};
        if (!old)
            CU_ASSERT_EQUAL(eng_store_del(store, k, 1, NULL), CDX_OK);
        free(now[i]);
    }
    free(now);
    for (size_t i = 0; i < nb; i++)
        raw_set(bk[i], bv[i].data, bv[i].len);
    raw_set(head, hv.data, hv.len);
    /* Another appliance (it never saw the lost commit) commits that version again. */
    char *dir2 = fx_tmpdir_new("engstate-lt");
    eng *e2 = new_engine(store, dir2, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e2);
    uint64_t v = 0;
    CU_ASSERT_EQUAL(eng_upsert(e2, name, s.items + 40, 20, &v), CDX_OK);
    CU_ASSERT_EQUAL(v, v3);
    /* The first appliance writes again: on top of the store's commit, not its own. */
    upsert(name, s.items + 60, 10);
    CU_ASSERT_EQUAL(observe(name, &s, 0, 20), 50 * 1000 + 20);
    CU_ASSERT_EQUAL(observe(name, &s, 20, 40), 50 * 1000);
    CU_ASSERT_EQUAL(observe(name, &s, 40, 60), 50 * 1000 + 20);
    CU_ASSERT_EQUAL(observe(name, &s, 60, 70), 50 * 1000 + 10);
    eng_free(e2);
    fx_rm_rf(dir2);
    free(dir2);
    eng_vals_free(&hv, 1);
    eng_vals_free(bv, nb);
    for (size_t i = 0; i < nb; i++)
        free(bk[i]);
    free(bk);
    free(bv);
    CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
    ds_free(&s);
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

/* ------------------------------------------------------------------ model checks */

/* Query results kept to compare before/after an operation. */
typedef struct qres {
    size_t n;
    char ids[10][24];
    float dist[10];
} qres;

/* Pick up to k random indices i < n with flag[i] == want; returns how many. */
static size_t pick(const bool *flag, bool want, size_t n, size_t k, size_t *out)
{
    size_t m = 0;
    size_t *pool = malloc((n + 1) * sizeof(size_t));
    for (size_t i = 0; i < n; i++)
        if (flag[i] == want)
            pool[m++] = i;
    size_t r = m < k ? m : k;
    for (size_t i = 0; i < r; i++) {
        size_t j = i + (size_t)(rnd() % (m - i));
        size_t t = pool[i];
        pool[i] = pool[j];
        pool[j] = t;
        out[i] = pool[i];
    }
    free(pool);
    return r;
}

/*
 * Compare what engine e (NULL: a fresh engine without cache, like a restarted
 * appliance) serves for `name` with the model: the rows i of s with alive[i]
 * (s->x and s->meta hold their current vector and metadata). Checks the
 * count, a get of every id of s (found iff alive, exact vector and metadata)
 * and the exhaustive top-10 (n_probes = n_clusters) of nq queries against
 * brute force over the live rows. got[q] records the query results; want[q]
 * (optional) must be identical. Returns the number of discrepancies (the
 * first few printed unless quiet).
 */
static int check_model(eng *e, const char *name, const dataset *s, const bool *alive,
                       const float *qs, size_t nq, qres *got, const qres *want, bool quiet)
{
    eng *own = NULL;
    if (!e)
        e = own = new_engine(store, statedir, 0);
    if (!e)
        return 1;
    int bad = 0;
#define MISMATCH(...)                                                                           \
    do {                                                                                        \
        if (!quiet && bad < 8) {                                                                \
            fprintf(stderr, "\n  [model %s] ", name);                                          \
            fprintf(stderr, __VA_ARGS__);                                                       \
        }                                                                                       \
        bad++;                                                                                  \
    } while (0)
    const size_t d = s->d, k = 10;
    const char **ids = malloc(s->n * sizeof(char *));
    size_t *lens = malloc(s->n * sizeof(size_t));
    size_t live = 0;
    for (size_t i = 0; i < s->n; i++) {
        ids[i] = s->ids[i];
        lens[i] = strlen(s->ids[i]);
        live += alive[i];
    }
    eng_index_info info;
    cdx_err err = eng_index_describe(e, name, &info);
    if (err) {
        MISMATCH("describe: %s: %s", cdx_err_name(err), cdx_err_detail());
        goto out;
    }
    if (info.count != live)
        MISMATCH("describe count %llu, model %zu", (unsigned long long)info.count, live);
    uint64_t cnt = 0;
    if ((err = eng_count(e, name, &cnt)))
        MISMATCH("count: %s: %s", cdx_err_name(err), cdx_err_detail());
    else if (cnt != live)
        MISMATCH("count %llu, model %zu", (unsigned long long)cnt, live);
    eng_get_result *g = NULL;
    err = eng_get(e, name, ids, lens, s->n,
                  ENG_WANT_VECTOR | ENG_WANT_METADATA | ENG_WANT_CONTENTS, 0, &g);
    if (err) {
        MISMATCH("get: %s: %s", cdx_err_name(err), cdx_err_detail());
    } else {
        for (size_t i = 0; i < s->n; i++) {
            if (g->found[i] != alive[i]) {
                MISMATCH("get %s: found=%d, model alive=%d", s->ids[i], g->found[i], alive[i]);
                continue;
            }
            if (!g->found[i])
                continue;
            if (!g->hits[i].vector || memcmp(g->hits[i].vector, s->x + i * d, d * sizeof(float)))
                MISMATCH("get %s: vector differs", s->ids[i]);
            size_t ml = s->items[i].metadata_len;
            if (ml ? !g->hits[i].metadata || g->hits[i].metadata_len != ml ||
                         memcmp(g->hits[i].metadata, s->items[i].metadata, ml)
                   : g->hits[i].metadata != NULL)
                MISMATCH("get %s: metadata %s, model %.*s", s->ids[i],
                         g->hits[i].metadata ? g->hits[i].metadata : "(none)", (int)ml,
                         ml ? s->items[i].metadata : "");
            size_t cl = s->items[i].contents_len;
            if (cl ? !g->hits[i].contents || g->hits[i].contents_len != cl ||
                         memcmp(g->hits[i].contents, s->items[i].contents, cl)
                   : g->hits[i].contents != NULL)
                MISMATCH("get %s: contents differ (%zu bytes, model %zu)", s->ids[i],
                         g->hits[i].contents_len, cl);
        }
        eng_get_result_free(g);
    }
    for (size_t qi = 0; qi < nq; qi++) {
        const float *qv = qs + qi * d;
        size_t wi[10];
        double wd[10];
        size_t nw = ref_topk(s, alive, info.metric, qv, k, wi, wd);
        eng_query q = {.vectors = qv, .nq = 1, .top_k = (uint32_t)k,
                       .n_probes = info.n_clusters, .want = ENG_WANT_DISTANCE};
        eng_query_result *r = NULL;
        if ((err = eng_query_run(e, name, &q, &r))) {
            MISMATCH("query %zu: %s: %s", qi, cdx_err_name(err), cdx_err_detail());
            continue;
        }
        if (r->n[0] != nw)
            MISMATCH("query %zu: %zu hits, brute force %zu", qi, r->n[0], nw);
        for (size_t i = 0; i < r->n[0] && i < nw; i++) {
            if (strcmp(r->hits[0][i].id, s->ids[wi[i]]))
                MISMATCH("query %zu rank %zu: %s (%g), brute force %s (%g)", qi, i,
                         r->hits[0][i].id, r->hits[0][i].distance, s->ids[wi[i]], wd[i]);
            else if (fabs(r->hits[0][i].distance - wd[i]) > 1e-3 * (1 + fabs(wd[i])))
                MISMATCH("query %zu rank %zu: distance %g, brute force %g", qi, i,
                         r->hits[0][i].distance, wd[i]);
        }
        if (got) {
            got[qi].n = r->n[0] < k ? r->n[0] : k;
            for (size_t i = 0; i < got[qi].n; i++) {
                snprintf(got[qi].ids[i], sizeof(got[qi].ids[i]), "%s", r->hits[0][i].id);
                got[qi].dist[i] = r->hits[0][i].distance;
            }
        }
        if (want) {
            if (want[qi].n != r->n[0])
                MISMATCH("query %zu: %zu hits, before %zu", qi, r->n[0], want[qi].n);
            for (size_t i = 0; i < r->n[0] && i < want[qi].n; i++)
                if (strcmp(r->hits[0][i].id, want[qi].ids[i]) ||
                    memcmp(&r->hits[0][i].distance, &want[qi].dist[i], sizeof(float)))
                    MISMATCH("query %zu rank %zu: %s (%.9g), before %s (%.9g)", qi, i,
                             r->hits[0][i].id, r->hits[0][i].distance, want[qi].ids[i],
                             want[qi].dist[i]);
        }
        eng_query_result_free(r);
    }
#undef MISMATCH
out:
    if (bad && !quiet)
        fputc('\n', stderr);
    free(ids);
    free(lens);
    eng_free(own);
    return bad;
}

/* ------------------------------------------------------------------ crashes: delete, compact */

static void test_crash_delete(void)
{
    const size_t d = 8, n = 30, nq = 6;
    dataset s;
    ds_make(&s, n, d, "cd");
    float qs[6 * 8];
    rand_vec(qs, nq * d);
    bool before[30], after[30];
    const char *del[10];
    size_t dl[10];
    for (size_t i = 0; i < n; i++) {
        before[i] = true;
        after[i] = i >= 10;
    }
    for (size_t i = 0; i < 10; i++) {
        del[i] = s.ids[i];
        dl[i] = strlen(s.ids[i]);
    }
    /* Untrained (one cluster), then trained with 4 lists (one new segment per touched cluster). */
    for (int trained = 0; trained < 2; trained++) {
        int points = 0, nb = 0, na = 0;
        bool done = false;
        for (uint64_t nth = 1; nth < 64 && !done; nth++) {
            char name[64];
            uniq_name(name, trained ? "crashdelt" : "crashdel");
            eng_index_info info;
            create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, trained ? 4 : 0, &info);
            upsert(name, s.items, 15);
            upsert(name, s.items + 15, 15);
            uint64_t v = 0, nd = 0;
            if (trained)
                CU_ASSERT_EQUAL_FATAL(eng_train(E, name, NULL, &v), CDX_OK);
            eng_store_fault_arm(fault, nth);
            cdx_err err = eng_delete(E, name, del, dl, 10, &nd, &v);
            eng_store_fault_disarm(fault);
            if (err == CDX_OK) {
                done = true; /* past the last write */
                CU_ASSERT_EQUAL(nd, 10);
                CU_ASSERT_EQUAL(check_model(NULL, name, &s, after, qs, nq, NULL, NULL, false), 0);
            } else {
                CU_ASSERT_EQUAL(err, CDX_ERR_STORE_UNAVAILABLE);
                points++;
                /* Before (30, all present) or after (20, the 10 gone): never between. */
                int b = check_model(NULL, name, &s, before, qs, nq, NULL, NULL, true);
                int a = b ? check_model(NULL, name, &s, after, qs, nq, NULL, NULL, true) : 1;
                if (b && a) {
                    fprintf(stderr, "\n  [crash] delete, write %llu: neither before nor after",
                            (unsigned long long)nth);
                    check_model(NULL, name, &s, before, qs, nq, NULL, NULL, false);
                    CU_FAIL("a crashed delete left a state between before and after");
                }
                nb += b == 0;
                na += b && a == 0;
                /* The crashed appliance restarts and the delete completes. */
                err = eng_delete(E, name, del, dl, 10, &nd, &v);
                CU_ASSERT_EQUAL(err, CDX_OK);
                CU_ASSERT_EQUAL(nd, b == 0 ? 10 : 0);
                CU_ASSERT_EQUAL(check_model(NULL, name, &s, after, qs, nq, NULL, NULL, false), 0);
                CU_ASSERT_EQUAL(check_model(E, name, &s, after, qs, nq, NULL, NULL, false), 0);
            }
            CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
        }
        CU_ASSERT_TRUE(done);
        CU_ASSERT_TRUE(points >= 3);
        fprintf(stderr, "  [crash] delete (%s): %d crash points, %d before, %d after\n",
                trained ? "trained" : "untrained", points, nb, na);
    }
    ds_free(&s);
}

/*
 * Build the index for the compaction crash test; m holds the final model
 * (alive: *alive_out), o the superseded vectors and metadata of the same ids.
 *   untrained: 3 upserts (the third updates 5 items) and a delete: 4 segments
 *     in cluster 0, with update and delete tombstones;
 *   trained (4 lists): 80 items, train, then 20 new, 20 updated, 10 deleted:
 *     up to 4 segments per cluster.
 */
static void compact_setup(const char *name, int trained, const dataset *m, const dataset *o,
                          eng_index_info *info)
{
    eng_item *b = malloc(m->n * sizeof(eng_item));
    const char *del[10];
    size_t dl[10];
    uint64_t v = 0, nd = 0;
    if (!trained) { /* 40 items */
        create(name, m->d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, info);
        memcpy(b, o->items, 5 * sizeof(eng_item));
        memcpy(b + 5, m->items + 5, 10 * sizeof(eng_item));
        upsert(name, b, 15);
        upsert(name, m->items + 15, 15);
        memcpy(b, m->items + 30, 10 * sizeof(eng_item));
        memcpy(b + 10, m->items, 5 * sizeof(eng_item));
        upsert(name, b, 15);
        for (size_t i = 0; i < 5; i++) {
            del[i] = m->ids[35 + i];
            dl[i] = strlen(del[i]);
        }
        CU_ASSERT_EQUAL(eng_delete(E, name, del, dl, 5, &nd, &v), CDX_OK);
        CU_ASSERT_EQUAL(nd, 5);
    } else { /* 100 items */
        create(name, m->d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 4, info);
        memcpy(b, o->items, 20 * sizeof(eng_item));
        memcpy(b + 20, m->items + 20, 60 * sizeof(eng_item));
        upsert(name, b, 80);
        CU_ASSERT_EQUAL_FATAL(eng_train(E, name, NULL, &v), CDX_OK);
        upsert(name, m->items + 80, 20);
        upsert(name, m->items, 20);
        for (size_t i = 0; i < 10; i++) {
            del[i] = m->ids[90 + i];
            dl[i] = strlen(del[i]);
        }
        CU_ASSERT_EQUAL(eng_delete(E, name, del, dl, 10, &nd, &v), CDX_OK);
        CU_ASSERT_EQUAL(nd, 10);
    }
    free(b);
    CU_ASSERT_EQUAL(eng_index_describe(E, name, info), CDX_OK);
}

static void test_crash_compact(void)
{
    const size_t d = 8, nq = 8;
    float qs[8 * 8];
    rand_vec(qs, nq * d);
    for (int trained = 0; trained < 2; trained++) {
        const size_t n = trained ? 100 : 40, ndead = trained ? 10 : 5;
        dataset m, o;
        ds_make(&m, n, d, "cc");
        ds_make(&o, n, d, "cc"); /* same ids, other vectors and metadata */
        for (size_t i = 0; i < n; i++)
            snprintf(o.meta[i], sizeof(o.meta[i]), "{\"old\": %zu}", i);
        for (size_t i = 0; i < n; i++)
            o.items[i].metadata_len = strlen(o.meta[i]);
        bool alive[100];
        for (size_t i = 0; i < n; i++)
            alive[i] = i < n - ndead;
        int points = 0;
        bool done = false;
        for (uint64_t nth = 1; nth < 64 && !done; nth++) {
            char name[64];
            uniq_name(name, trained ? "crashct" : "crashcu");
            eng_index_info info, now;
            compact_setup(name, trained, &m, &o, &info);
            if (!trained) {
                CU_ASSERT_EQUAL(info.n_clusters, 0);
                CU_ASSERT_EQUAL(info.segments, 4);
            } else {
                CU_ASSERT_EQUAL(info.n_clusters, 4);
                CU_ASSERT_TRUE(info.segments >= 10); /* several per cluster */
            }
            qres base[8], cur[8];
            /* The reference: what the index answers before the compaction (and brute force). */
            CU_ASSERT_EQUAL_FATAL(check_model(NULL, name, &m, alive, qs, nq, base, NULL, false),
                                  0);
            eng_store_fault_arm(fault, nth);
            uint64_t v = 0;
            cdx_err err = eng_compact(E, name, &v);
            eng_store_fault_disarm(fault);
            if (err == CDX_OK) {
                done = true;
            } else {
                CU_ASSERT_EQUAL(err, CDX_ERR_STORE_UNAVAILABLE);
                points++;
                /* Nothing changed that anyone can see. */
                CU_ASSERT_EQUAL(check_model(NULL, name, &m, alive, qs, nq, cur, base, false), 0);
                CU_ASSERT_EQUAL(eng_index_describe(E, name, &now), CDX_OK);
                CU_ASSERT_EQUAL(now.count, info.count);
                CU_ASSERT_EQUAL(now.version, info.version);
                CU_ASSERT_EQUAL(now.segments, info.segments);
                /* The restarted appliance compacts again. */
                CU_ASSERT_EQUAL(eng_compact(E, name, &v), CDX_OK);
            }
            CU_ASSERT_EQUAL(check_model(NULL, name, &m, alive, qs, nq, cur, base, false), 0);
            CU_ASSERT_EQUAL(check_model(E, name, &m, alive, qs, nq, cur, base, false), 0);
            CU_ASSERT_EQUAL(eng_index_describe(E, name, &now), CDX_OK);
            CU_ASSERT_EQUAL(now.count, info.count);
            CU_ASSERT_EQUAL(now.version, info.version + 1);
            CU_ASSERT_EQUAL(now.segments, trained ? 4 : 1); /* one per (non-empty) cluster */
            CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
        }
        CU_ASSERT_TRUE(done);
        CU_ASSERT_TRUE(points >= 3);
        fprintf(stderr, "  [crash] compact (%s): %d crash points\n",
                trained ? "trained" : "untrained", points);
        ds_free(&m);
        ds_free(&o);
    }
}

/* ------------------------------------------------------------------ churn against a model */

/* New vector, metadata and contents (every third row, in its buffer cont) for row i. */
static void churn_row(dataset *s, size_t i, int round, uint8_t *cont)
{
    rand_vec(s->x + i * s->d, s->d);
    snprintf(s->meta[i], sizeof(s->meta[i]), "{\"n\": %zu, \"round\": %d, \"r\": %llu}", i,
             round, (unsigned long long)(rnd() % 100000));
    s->items[i].metadata_len = strlen(s->meta[i]);
    s->items[i].contents = NULL;
    s->items[i].contents_len = 0;
    if ((i + (size_t)round) % 3 == 0) {
        size_t len = 1 + rnd() % 40;
        for (size_t j = 0; j < len; j++)
            cont[j] = (uint8_t)rnd();
        s->items[i].contents = cont;
        s->items[i].contents_len = len;
    }
}

static void check_both(const char *name, const dataset *s, const bool *alive, const float *qs,
                       size_t nq, const char *when, int round)
{
    int a = check_model(E, name, s, alive, qs, nq, NULL, NULL, false);
    int b = check_model(NULL, name, s, alive, qs, nq, NULL, NULL, false);
    if (a || b)
        fprintf(stderr, "  [churn] round %d %s: %d discrepancies (cached engine), %d (fresh)\n",
                round, when, a, b);
    CU_ASSERT_EQUAL(a, 0);
    CU_ASSERT_EQUAL(b, 0);
}

static void test_churn(void)
{
    const size_t d = 12, n = 200, nq = 10;
    dataset s;
    ds_make(&s, n, d, "u");
    float qs[10 * 12];
    rand_vec(qs, nq * d);
    char name[64];
    uniq_name(name, "churn");
    eng_index_info info;
    create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 8, &info);
    static uint8_t cont[200][40];
    for (size_t i = 0; i < n; i++)
        churn_row(&s, i, 0, cont[i]);
    upsert(name, s.items, n);
    bool alive[200], deleted_now[200];
    int del_round[200];
    for (size_t i = 0; i < n; i++) {
        alive[i] = true;
        del_round[i] = -1;
    }
    eng_config c = {.custody = cust, .store = store, .state_dir = statedir, .gc_grace_ms = 1};
    memcpy(c.deployment_id, dep, 16);
    eng *sw = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_new(&c, &sw), CDX_OK);
    size_t idx[200];
    eng_item batch[200];
    uint64_t swept = 0;
    for (int round = 0; round < 5; round++) {
        /* Update 50 live items: new vectors and metadata. */
        size_t k = pick(alive, true, n, 50, idx);
        CU_ASSERT_EQUAL(k, 50);
        for (size_t i = 0; i < k; i++) {
            churn_row(&s, idx[i], round + 1, cont[idx[i]]);
            batch[i] = s.items[idx[i]];
        }
        upsert(name, batch, k);
        /* Delete 20 live ones. */
        k = pick(alive, true, n, 20, idx);
        const char *del[20];
        size_t dl[20];
        for (size_t i = 0; i < k; i++) {
            del[i] = s.ids[idx[i]];
            dl[i] = strlen(del[i]);
            alive[idx[i]] = false;
            del_round[idx[i]] = round;
        }
        uint64_t nd = 0, v = 0;
        CU_ASSERT_EQUAL(eng_delete(E, name, del, dl, k, &nd, &v), CDX_OK);
        CU_ASSERT_EQUAL(nd, k);
        /* Re-insert 20 deleted ones (earlier rounds first), with new vectors and metadata. */
        for (size_t i = 0; i < n; i++)
            deleted_now[i] = !alive[i] && del_round[i] < round;
        k = pick(deleted_now, true, n, 20, idx);
        if (k < 20) {
            for (size_t i = 0; i < n; i++)
                deleted_now[i] = !alive[i] && del_round[i] == round;
            k += pick(deleted_now, true, n, 20 - k, idx + k);
        }
        CU_ASSERT_EQUAL(k, 20);
        for (size_t i = 0; i < k; i++) {
            churn_row(&s, idx[i], round + 1, cont[idx[i]]);
            alive[idx[i]] = true;
            batch[i] = s.items[idx[i]];
        }
        upsert(name, batch, k);
        check_both(name, &s, alive, qs, nq, "after writes", round);
        if (round == 0) {
            uint64_t v2 = 0;
            CU_ASSERT_EQUAL_FATAL(eng_train(E, name, NULL, &v2), CDX_OK);
            CU_ASSERT_EQUAL(eng_index_describe(E, name, &info), CDX_OK);
            CU_ASSERT_EQUAL(info.n_clusters, 8);
            check_both(name, &s, alive, qs, nq, "after training", round);
        }
        CU_ASSERT_EQUAL(eng_compact(E, name, &v), CDX_OK);
        CU_ASSERT_EQUAL(eng_index_describe(E, name, &info), CDX_OK);
        CU_ASSERT_TRUE(info.segments <= 8);
        check_both(name, &s, alive, qs, nq, "after compaction", round);
        struct timespec ts = {0, 5 * 1000 * 1000}; /* records must be older than 1 ms */
        nanosleep(&ts, NULL);
        uint64_t del_keys = 0;
        CU_ASSERT_EQUAL(eng_sweep(sw, name, &del_keys), CDX_OK);
        CU_ASSERT_TRUE(del_keys > 0); /* superseded manifests and retired segments */
        swept += del_keys;
        check_both(name, &s, alive, qs, nq, "after sweep", round);
    }
    fprintf(stderr, "  [churn] 5 rounds, %llu records swept\n", (unsigned long long)swept);
    eng_free(sw);
    CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
    ds_free(&s);
}

/* ------------------------------------------------------------------ cosine, inner product */

static int run_q(const char *name, const float *qs, size_t nq, uint32_t k, uint32_t probes,
                 eng_query_result **r)
{
    eng_query q = {.vectors = qs, .nq = nq, .top_k = k, .n_probes = probes,
                   .want = ENG_WANT_DISTANCE};
    cdx_err err = eng_query_run(E, name, &q, r);
    if (err)
        fprintf(stderr, "query %s: %s: %s\n", name, cdx_err_name(err), cdx_err_detail());
    return err;
}

static void test_cosine_ip_scale(void)
{
    const size_t d = 16, n = 400, nq = 20, k = 10;
    dataset nrm, scl;
    make_blobs(&nrm, n, d, 8, 0);
    ds_make(&scl, n, d, "b"); /* same ids as the blobs */
    for (size_t i = 0; i < n; i++) {
        float *x = nrm.x + i * d, *y = scl.x + i * d;
        double ss = 0;
        for (size_t j = 0; j < d; j++)
            ss += (double)x[j] * x[j];
        for (size_t j = 0; j < d; j++)
            x[j] = (float)(x[j] / sqrt(ss));
        float f = (float)exp(3.0 * frand()); /* 0.05 .. 20 */
        for (size_t j = 0; j < d; j++)
            y[j] = x[j] * f;
    }
    float qs[20 * 16];
    for (size_t qi = 0; qi < nq; qi++) {
        float f = (float)exp(2.0 * frand());
        for (size_t j = 0; j < d; j++) /* half near data points, half random */
            qs[qi * d + j] = (qi % 2 ? frand() : nrm.x[(qi * 17) * d + j] + 0.1f * frand()) * f;
    }
    char cn[64], cs[64], ipn[64];
    uniq_name(cn, "cosnorm");
    uniq_name(cs, "cosscaled");
    uniq_name(ipn, "ipnorm");
    eng_index_info a, b, c;
    create(cn, d, ENG_METRIC_COSINE, ENG_IVFFLAT, 8, &a);
    create(cs, d, ENG_METRIC_COSINE, ENG_IVFFLAT, 8, &b);
    create(ipn, d, ENG_METRIC_INNER_PRODUCT, ENG_IVFFLAT, 8, &c);
    upsert(cn, nrm.items, n);
    upsert(cs, scl.items, n);
    upsert(ipn, nrm.items, n);
    const char *names[3] = {cn, cs, ipn};
    eng_index_info *infos[3] = {&a, &b, &c};
    for (int i = 0; i < 3; i++) {
        uint64_t v;
        CU_ASSERT_EQUAL_FATAL(eng_train(E, names[i], NULL, &v), CDX_OK);
        CU_ASSERT_EQUAL(eng_index_describe(E, names[i], infos[i]), CDX_OK);
        CU_ASSERT_EQUAL(infos[i]->n_clusters, 8);
    }
    eng_query_result *rn = NULL, *rs = NULL, *ri = NULL;
    CU_ASSERT_EQUAL_FATAL(run_q(cn, qs, nq, k, 8, &rn), CDX_OK);
    CU_ASSERT_EQUAL_FATAL(run_q(cs, qs, nq, k, 8, &rs), CDX_OK);
    CU_ASSERT_EQUAL_FATAL(run_q(ipn, qs, nq, k, 8, &ri), CDX_OK);
    int id_diff = 0, dist_diff = 0, ip_diff = 0, ref_diff = 0;
    for (size_t qi = 0; qi < nq; qi++) {
        const float *q = qs + qi * d;
        double qn = 0;
        for (size_t j = 0; j < d; j++)
            qn += (double)q[j] * q[j];
        qn = sqrt(qn);
        size_t want[10];
        double wd[10];
        ref_topk(&nrm, NULL, ENG_METRIC_COSINE, q, k, want, wd);
        CU_ASSERT_EQUAL(rn->n[qi], k);
        CU_ASSERT_EQUAL(rs->n[qi], k);
        CU_ASSERT_EQUAL(ri->n[qi], k);
        for (size_t i = 0; i < k && i < rn->n[qi] && i < rs->n[qi] && i < ri->n[qi]; i++) {
            const eng_hit *hn = &rn->hits[qi][i], *hs = &rs->hits[qi][i], *hi = &ri->hits[qi][i];
            /* Cosine ignores scale: the same ids and distances. */
            if (strcmp(hn->id, hs->id)) {
                id_diff++;
                fprintf(stderr, "\n  [cos] q%zu rank %zu: normalised %s (%g), scaled %s (%g)", qi,
                        i, hn->id, hn->distance, hs->id, hs->distance);
            }
            if (fabsf(hn->distance - hs->distance) > 1e-4f) {
                dist_diff++;
                fprintf(stderr, "\n  [cos] q%zu rank %zu: distance %g vs %g", qi, i,
                        hn->distance, hs->distance);
            }
            /* On unit vectors, inner product ranks like cosine: -<q,x> = (cos dist - 1)|q|. */
            if (strcmp(hn->id, hi->id) ||
                fabs(hi->distance - (hn->distance - 1.0) * qn) > 1e-4 * (1 + qn)) {
                ip_diff++;
                fprintf(stderr, "\n  [ip] q%zu rank %zu: %s (%g), cosine %s (%g)", qi, i, hi->id,
                        hi->distance, hn->id, hn->distance);
            }
            if (strcmp(hn->id, nrm.ids[want[i]]) || fabs(hn->distance - wd[i]) > 1e-4) {
                ref_diff++;
                fprintf(stderr, "\n  [cos] q%zu rank %zu: %s (%g), brute force %s (%g)", qi, i,
                        hn->id, hn->distance, nrm.ids[want[i]], wd[i]);
            }
        }
    }
    if (id_diff + dist_diff + ip_diff + ref_diff)
        fputc('\n', stderr);
    CU_ASSERT_EQUAL(id_diff, 0);
    CU_ASSERT_EQUAL(dist_diff, 0);
    CU_ASSERT_EQUAL(ip_diff, 0);
    CU_ASSERT_EQUAL(ref_diff, 0);
    eng_query_result_free(rn);
    eng_query_result_free(rs);
    eng_query_result_free(ri);
    /* The scaled originals are stored as given, not normalised. */
    const char *ids[4] = {scl.ids[0], scl.ids[77], scl.ids[211], scl.ids[399]};
    size_t lens[4] = {strlen(ids[0]), strlen(ids[1]), strlen(ids[2]), strlen(ids[3])};
    size_t rows[4] = {0, 77, 211, 399};
    eng_get_result *g = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_get(E, cs, ids, lens, 4, ENG_WANT_VECTOR, 0, &g), CDX_OK);
    for (int i = 0; i < 4; i++) {
        CU_ASSERT_TRUE_FATAL(g->found[i]);
        CU_ASSERT_EQUAL(memcmp(g->hits[i].vector, scl.x + rows[i] * d, d * sizeof(float)), 0);
    }
    eng_get_result_free(g);
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(eng_index_delete(E, names[i], infos[i]->id), CDX_OK);
    ds_free(&nrm);
    ds_free(&scl);
}

/* ------------------------------------------------------------------ list_ids, min_version */

static void test_list_after_delete(void)
{
    const size_t d = 8, n = 150;
    dataset s;
    ds_make(&s, n, d, "l");
    char name[64];
    uniq_name(name, "listdel");
    eng_index_info info;
    create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 4, &info);
    upsert(name, s.items, 100);
    uint64_t v = 0;
    CU_ASSERT_EQUAL(eng_train(E, name, NULL, &v), CDX_OK);
    uint64_t vu = upsert(name, s.items + 100, 50);
    CU_ASSERT_TRUE(vu > v);
    bool alive[150];
    for (size_t i = 0; i < n; i++)
        alive[i] = true;
    size_t idx[60];
    size_t k = pick(alive, true, n, 60, idx);
    const char *del[61];
    size_t dl[61];
    for (size_t i = 0; i < k; i++) {
        del[i] = s.ids[idx[i]];
        dl[i] = strlen(del[i]);
        alive[idx[i]] = false;
    }
    del[k] = "never-there";
    dl[k] = strlen(del[k]);
    uint64_t nd = 0, vd = 0;
    CU_ASSERT_EQUAL(eng_delete(E, name, del, dl, k + 1, &nd, &vd), CDX_OK);
    CU_ASSERT_EQUAL(nd, k);
    CU_ASSERT_TRUE(vd > vu);
    const size_t live = n - k;
    /* Pages of various sizes, each through this appliance and a fresh one. */
    const uint32_t limits[4] = {1, 7, (uint32_t)live, 1000};
    for (int fresh = 0; fresh < 2; fresh++) {
        eng *e = fresh ? new_engine(store, statedir, 0) : E;
        CU_ASSERT_PTR_NOT_NULL_FATAL(e);
        for (int li = 0; li < 4; li++) {
            bool seen[150] = {false};
            size_t total = 0, dup = 0, dead = 0, empty_pages = 0;
            int pages = 0;
            char *cursor = NULL;
            do {
                char **ids, *next = NULL;
                size_t *lens, got;
                cdx_err err = eng_list_ids(e, name, cursor, limits[li], &ids, &lens, &got, &next);
                CU_ASSERT_EQUAL_FATAL(err, CDX_OK);
                CU_ASSERT_TRUE(got <= limits[li]);
                empty_pages += got == 0;
                for (size_t i = 0; i < got; i++) {
                    CU_ASSERT_EQUAL(lens[i], strlen(ids[i]));
                    size_t num = (size_t)atoi(ids[i] + 1);
                    if (ids[i][0] != 'l' || num >= n || strcmp(ids[i], s.ids[num])) {
                        dead++;
                        continue;
                    }
                    dup += seen[num];
                    dead += !alive[num];
                    seen[num] = true;
                }
                total += got;
                eng_ids_free(ids, lens, got);
                free(cursor);
                cursor = next;
                pages++;
            } while (cursor && pages < 1000);
            free(cursor);
            size_t missing = 0;
            for (size_t i = 0; i < n; i++)
                missing += alive[i] && !seen[i];
            if (dup || dead || missing || total != live || empty_pages)
                fprintf(stderr, "  [list] limit %u (%s): %zu ids of %zu live, %zu dup, %zu dead, "
                        "%zu missing, %d pages, %zu empty\n", limits[li],
                        fresh ? "fresh" : "cached", total, live, dup, dead, missing, pages,
                        empty_pages);
            CU_ASSERT_EQUAL(total, live);
            CU_ASSERT_EQUAL(dup, 0);
            CU_ASSERT_EQUAL(dead, 0);
            CU_ASSERT_EQUAL(missing, 0);
            /* At most one trailing empty page (see the deterministic check below). */
            CU_ASSERT_TRUE(pages - (int)empty_pages == (int)((live + limits[li] - 1) / limits[li]));
            CU_ASSERT_TRUE(empty_pages <= 1);
        }
        /* min_version: the upsert's (and the delete's) version is served; a future one is STALE. */
        const char *ids[2] = {s.ids[0], s.ids[120]};
        size_t lens[2] = {strlen(ids[0]), strlen(ids[1])};
        eng_get_result *g = NULL;
        CU_ASSERT_EQUAL(eng_get(e, name, ids, lens, 2, ENG_WANT_VECTOR, vu, &g), CDX_OK);
        if (g) {
            CU_ASSERT_TRUE(g->version >= vu);
            CU_ASSERT_EQUAL(g->found[0], alive[0]);
            CU_ASSERT_EQUAL(g->found[1], alive[120]);
            if (g->found[1])
                CU_ASSERT_EQUAL(memcmp(g->hits[1].vector, s.x + 120 * d, d * sizeof(float)), 0);
            eng_get_result_free(g);
        }
        g = NULL;
        CU_ASSERT_EQUAL(eng_get(e, name, ids, lens, 2, 0, vd, &g), CDX_OK);
        if (g)
            CU_ASSERT_EQUAL(g->version, vd);
        eng_get_result_free(g);
        g = NULL;
        CU_ASSERT_EQUAL(eng_get(e, name, ids, lens, 2, ENG_WANT_VECTOR, vu + 1000, &g),
                        CDX_ERR_STALE);
        CU_ASSERT_PTR_NULL(g);
        if (fresh)
            eng_free(e);
    }
    /*
     * The last ids in listing order deleted (their buckets are now written but
     * empty): a page that ends with the last live id hands out no cursor.
     */
    {
        char **all, *nx = NULL;
        size_t *al, na = 0;
        CU_ASSERT_EQUAL_FATAL(eng_list_ids(E, name, NULL, 1000, &all, &al, &na, &nx), CDX_OK);
        CU_ASSERT_PTR_NULL(nx);
        CU_ASSERT_EQUAL_FATAL(na, live);
        const char *tail[3];
        size_t tl[3];
        for (size_t i = 0; i < 3; i++) {
            tail[i] = all[na - 1 - i];
            tl[i] = al[na - 1 - i];
        }
        CU_ASSERT_EQUAL(eng_delete(E, name, tail, tl, 3, &nd, &vd), CDX_OK);
        CU_ASSERT_EQUAL(nd, 3);
        for (size_t i = 0; i < 3; i++)
            alive[atoi(tail[i] + 1)] = false;
        char **pg, *nx2 = NULL;
        size_t *pl, np = 0;
        CU_ASSERT_EQUAL_FATAL(eng_list_ids(E, name, NULL, (uint32_t)(live - 3), &pg, &pl, &np,
                                           &nx2), CDX_OK);
        CU_ASSERT_EQUAL(np, live - 3);
        for (size_t i = 0; i < np && i < na; i++)
            CU_ASSERT_STRING_EQUAL(pg[i], all[i]);
        if (nx2) {
            char **pg2, *nx3 = NULL;
            size_t *pl2, np2 = 99;
            CU_ASSERT_EQUAL(eng_list_ids(E, name, nx2, 10, &pg2, &pl2, &np2, &nx3), CDX_OK);
            fprintf(stderr, "  [list] a cursor after the last live id; its page has %zu ids, "
                    "next %s\n", np2, nx3 ? "set" : "NULL");
            eng_ids_free(pg2, pl2, np2);
            free(nx3);
        }
        CU_ASSERT_PTR_NULL(nx2); /* "NULL at the end" (eng.h) */
        free(nx2);
        eng_ids_free(pg, pl, np);
        eng_ids_free(all, al, na);
    }
    /* Everything deleted: an empty listing, no cursor. */
    size_t nl = 0;
    const char **rest = malloc(n * sizeof(char *));
    size_t *rl = malloc(n * sizeof(size_t));
    for (size_t i = 0; i < n; i++)
        if (alive[i]) {
            rest[nl] = s.ids[i];
            rl[nl++] = strlen(s.ids[i]);
        }
    CU_ASSERT_EQUAL(eng_delete(E, name, rest, rl, nl, &nd, &vd), CDX_OK);
    CU_ASSERT_EQUAL(nd, nl);
    char **ids, *next = NULL;
    size_t *lens, got = 99;
    CU_ASSERT_EQUAL(eng_list_ids(E, name, NULL, 10, &ids, &lens, &got, &next), CDX_OK);
    CU_ASSERT_EQUAL(got, 0);
    CU_ASSERT_PTR_NULL(next);
    eng_ids_free(ids, lens, got);
    free(next);
    free(rest);
    free(rl);
    CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
    ds_free(&s);
}

/* Admin purge: records of an index whose key is gone, and records no entry references. */
static void test_purge_and_max_age(void)
{
    const size_t d = 8;
    dataset s;
    ds_make(&s, 20, d, "g");
    char name[64], pat[128];
    uniq_name(name, "purge");
    eng_index_info info;
    create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, &info);
    upsert(name, s.items, 20);
    /* The key is destroyed behind the engine's back (an officer crypto-shreds it). */
    hsm_key_ref k = {.kind = HSM_KEY_INDEX};
    memcpy(k.id, info.id, 16);
    CU_ASSERT_EQUAL(hsm_key_destroy(cust, &k), CDX_OK);
    eng *e2 = new_engine(store, statedir, 0);
    CU_ASSERT_EQUAL(q1(e2, name, s.x), CDX_ERR_KEY_NOT_FOUND);
    /* An orphan record of an index nobody knows. */
    const char *orphan = "cdx:00112233445566778899aabbccddeeff:s:00112233445566778899aabbccddeeff";
    raw_set(orphan, (const uint8_t *)"junk", 4);
    uint64_t removed = 0;
    CU_ASSERT_EQUAL(eng_purge(e2, &removed), CDX_OK);
    CU_ASSERT_TRUE(removed >= 4);
    char **keys;
    key_of(info.id, "s", pat);
    CU_ASSERT_EQUAL(keys_of(pat, &keys), 0);
    free(keys);
    CU_ASSERT_EQUAL(keys_of(orphan, &keys), 0);
    free(keys);
    eng_index_info x;
    CU_ASSERT_EQUAL(eng_index_describe(e2, name, &x), CDX_ERR_NOT_FOUND);
    eng_free(e2);

    /* manifest_max_age_ms: a reader may serve a head up to that old, never older. */
    uniq_name(name, "maxage");
    create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, &info);
    eng_config c = {.custody = cust, .store = store, .state_dir = statedir,
                    .manifest_max_age_ms = 600000};
    memcpy(c.deployment_id, dep, 16);
    eng *lazy = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_new(&c, &lazy), CDX_OK);
    uint64_t cnt = 99;
    CU_ASSERT_EQUAL(eng_count(lazy, name, &cnt), CDX_OK);
    CU_ASSERT_EQUAL(cnt, 0);
    uint64_t v = upsert(name, s.items, 5); /* through E: lazy has not read the head since */
    CU_ASSERT_EQUAL(eng_count(lazy, name, &cnt), CDX_OK);
    CU_ASSERT_EQUAL(cnt, 0); /* within its staleness bound */
    /* A read asking for the new version forces a head read. */
    const char *id = s.ids[0];
    size_t l = strlen(id);
    eng_get_result *g = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_get(lazy, name, &id, &l, 1, 0, v, &g), CDX_OK);
    CU_ASSERT_TRUE(g->found[0]);
    CU_ASSERT_EQUAL(g->version, v);
    eng_get_result_free(g);
    CU_ASSERT_EQUAL(eng_count(lazy, name, &cnt), CDX_OK);
    CU_ASSERT_EQUAL(cnt, 5);
    eng_free(lazy);
    CU_ASSERT_EQUAL(eng_index_delete(E, name, info.id), CDX_OK);
    ds_free(&s);
}

/* ------------------------------------------------------------------ main */

static void add_tests(CU_pSuite s)
{
    CU_add_test(s, "purge and manifest_max_age_ms", test_purge_and_max_age);
    CU_add_test(s, "lifecycle: create, describe, list, delete", test_lifecycle);
    CU_add_test(s, "bad input: specific errors, nothing applied", test_bad_input);
    CU_add_test(s, "upsert, get, update, delete", test_upsert_get_delete);
    CU_add_test(s, "exhaustive search exact for all metrics", test_exact_metrics);
    CU_add_test(s, "train, recall, compaction", test_train);
    CU_add_test(s, "IVFSQ8 lossless on 0..255 integers", test_sq8_exact);
    CU_add_test(s, "screened scan answers = full scan", test_screen_equivalence);
    CU_add_test(s, "filters and list_ids paging", test_filters_and_listing);
    CU_add_test(s, "restart sees the same data", test_restart);
    CU_add_test(s, "hostile store: tamper, swap, replay, rollback", test_tamper);
    CU_add_test(s, "plaintext scan of the store", test_plaintext_scan);
    CU_add_test(s, "crash at every store write", test_crash_points);
    CU_add_test(s, "two appliances upserting concurrently", test_two_appliances);
    CU_add_test(s, "crash at every store write: parallel upsert", test_crash_parallel);
    CU_add_test(s, "lost tail, version reused by another appliance", test_lost_tail_version_reuse);
    CU_add_test(s, "sweep while an upsert is paused", test_sweep_vs_paused_upsert);
    CU_add_test(s, "crash at every store write: delete", test_crash_delete);
    CU_add_test(s, "crash at every store write: compaction", test_crash_compact);
    CU_add_test(s, "upsert/update/delete churn against a model", test_churn);
    CU_add_test(s, "cosine ignores scale; inner product on unit vectors", test_cosine_ip_scale);
    CU_add_test(s, "list_ids after deletes; get min_version", test_list_after_delete);
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
