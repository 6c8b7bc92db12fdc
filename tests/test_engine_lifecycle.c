/*
 * test_engine_lifecycle.c - the encrypted IVF engine, index lifecycle: create, describe, list,
 * delete, bad input, a restarted engine, admin purge and manifest age. Run against the memory store
 * and against Redis (fixture), on a throwaway SoftHSM token (tests/fixtures/fx_engine.h).
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
#include "fx_cunit.h"
#include "fx_engine.h"
#include "fx_tmp.h"
#include "hsm_custody.h"
#include "hsm_keys.h"

/* Admin purge: records of an index whose key is gone, and records no entry references. */
static void test_purge_and_max_age(void)
{
    const size_t d = 8;
    fx_dataset s;
    fx_ds_make(&s, 20, d, "g");
    char name[64], pat[128];
    fx_uniq_name(name, "purge");
    eng_index_info info;
    fx_create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, &info);
    fx_upsert(name, s.items, 20);
    /* The key is destroyed behind the engine's back (an officer crypto-shreds it). */
    hsm_key_ref k = {.kind = HSM_KEY_INDEX};
    memcpy(k.id, info.id, 16);
    CU_ASSERT_EQUAL(hsm_key_destroy(fx_cust, &k), CDX_OK);
    eng *e2 = fx_engine_open(fx_store, fx_statedir, 0);
    CU_ASSERT_EQUAL(fx_q1(e2, name, s.x), CDX_ERR_KEY_NOT_FOUND);
    /* An orphan record of an index nobody knows. */
    const char *orphan = "cdx:00112233445566778899aabbccddeeff:s:00112233445566778899aabbccddeeff";
    fx_raw_set(orphan, (const uint8_t *)"junk", 4);
    uint64_t removed = 0;
    CU_ASSERT_EQUAL(eng_purge(e2, &removed), CDX_OK);
    CU_ASSERT_TRUE(removed >= 4);
    char **keys;
    fx_key_of(info.id, "s", pat);
    CU_ASSERT_EQUAL(fx_keys_of(pat, &keys), 0);
    free(keys);
    CU_ASSERT_EQUAL(fx_keys_of(orphan, &keys), 0);
    free(keys);
    eng_index_info x;
    CU_ASSERT_EQUAL(eng_index_describe(e2, name, &x), CDX_ERR_NOT_FOUND);
    eng_free(e2);

    /* manifest_max_age_ms: a reader may serve a head up to that old, never older. */
    fx_uniq_name(name, "maxage");
    fx_create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, &info);
    eng_config c = {.custody = fx_cust,
                    .store = fx_store,
                    .state_dir = fx_statedir,
                    .manifest_max_age_ms = 600000};
    memcpy(c.deployment_id, fx_dep, 16);
    eng *lazy = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_new(&c, &lazy), CDX_OK);
    uint64_t cnt = 99;
    CU_ASSERT_EQUAL(eng_count(lazy, name, &cnt), CDX_OK);
    CU_ASSERT_EQUAL(cnt, 0);
    uint64_t v = fx_upsert(name, s.items, 5); /* through E: lazy has not read the head since */
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
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
    fx_ds_free(&s);
}

static void test_lifecycle(void)
{
    char name[64];
    fx_uniq_name(name, "life");
    eng_index_info info, again;
    fx_create(name, 8, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 4, &info);
    CU_ASSERT_STRING_EQUAL(info.name, name);
    CU_ASSERT_STRING_EQUAL(info.state, "ready");
    CU_ASSERT_EQUAL(info.dimension, 8);
    CU_ASSERT_EQUAL(info.count, 0);
    CU_ASSERT_TRUE(info.owned);
    eng_create c = {
        .name = name, .dimension = 8, .metric = ENG_METRIC_EUCLIDEAN, .type = ENG_IVFFLAT};
    CU_ASSERT_EQUAL(eng_index_create(fx_eng, &c, &again), CDX_ERR_ALREADY_EXISTS);
    CU_ASSERT_EQUAL(eng_index_describe(fx_eng, name, &again), CDX_OK);
    CU_ASSERT_EQUAL(memcmp(again.id, info.id, 16), 0);
    /* The key is on the token, with the KCV the catalog recorded. */
    hsm_key_ref k = {.kind = HSM_KEY_INDEX};
    memcpy(k.id, info.id, 16);
    CU_ASSERT_EQUAL(hsm_key_check(fx_cust, &k, info.kcv), CDX_OK);
    eng_index_info *all = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL(eng_index_list(fx_eng, &all, &n), CDX_OK);
    bool seen = false;
    for (size_t i = 0; i < n; i++)
        seen |= !strcmp(all[i].name, name);
    CU_ASSERT_TRUE(seen);
    free(all);
    /* Delete needs the right id; then the key and the index are gone. */
    uint8_t wrong[16] = {0};
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, wrong), CDX_ERR_FAILED_PRECONDITION);
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
    CU_ASSERT_EQUAL(eng_index_describe(fx_eng, name, &again), CDX_ERR_NOT_FOUND);
    uint8_t kcv[8];
    CU_ASSERT_EQUAL(hsm_key_kcv(fx_cust, &k, kcv), CDX_ERR_KEY_NOT_FOUND);
    /* No record of it is left in the store. */
    char hx[33], pat[64];
    cdx_hex_encode(info.id, 16, hx);
    snprintf(pat, sizeof(pat), "*%s*", hx);
    uint64_t cur = 0;
    size_t left = 0;
    do {
        char **keys;
        size_t nk;
        CU_ASSERT_EQUAL_FATAL(eng_store_scan(fx_store, pat, &cur, &keys, &nk), CDX_OK);
        left += nk;
        eng_keys_free(keys, nk);
    } while (cur);
    CU_ASSERT_EQUAL(left, 0);
    /* The name is free again. */
    fx_create(name, 4, ENG_METRIC_COSINE, ENG_IVFSQ8, 0, &info);
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
}

static void test_bad_input(void)
{
    char name[64];
    fx_uniq_name(name, "bad");
    eng_index_info info;
    eng_create c = {
        .name = "bad name!", .dimension = 8, .metric = ENG_METRIC_EUCLIDEAN, .type = ENG_IVFFLAT};
    CU_ASSERT_EQUAL(eng_index_create(fx_eng, &c, &info), CDX_ERR_INVALID_ARGUMENT);
    c.name = name;
    c.dimension = 0;
    CU_ASSERT_EQUAL(eng_index_create(fx_eng, &c, &info), CDX_ERR_INVALID_ARGUMENT);
    c.dimension = 5000;
    CU_ASSERT_EQUAL(eng_index_create(fx_eng, &c, &info), CDX_ERR_INVALID_ARGUMENT);
    c.dimension = 4;
    c.metric = 0;
    CU_ASSERT_EQUAL(eng_index_create(fx_eng, &c, &info), CDX_ERR_INVALID_ARGUMENT);
    fx_create(name, 4, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, &info);
    float v[4] = {1, 2, 3, 4}, nanv[4] = {1, NAN, 3, 4}, infv[4] = {INFINITY, 0, 0, 0};
    eng_item it = {.id = "a", .id_len = 1, .vector = v};
    uint64_t ver;
    CU_ASSERT_EQUAL(eng_upsert(fx_eng, name, &it, 0, &ver), CDX_ERR_INVALID_ARGUMENT);
    eng_item bad = it;
    bad.vector = nanv;
    CU_ASSERT_EQUAL(eng_upsert(fx_eng, name, &bad, 1, &ver), CDX_ERR_INVALID_ARGUMENT);
    bad.vector = infv;
    CU_ASSERT_EQUAL(eng_upsert(fx_eng, name, &bad, 1, &ver), CDX_ERR_INVALID_ARGUMENT);
    bad = it;
    bad.id = "a\0b";
    bad.id_len = 3;
    CU_ASSERT_EQUAL(eng_upsert(fx_eng, name, &bad, 1, &ver), CDX_ERR_INVALID_ARGUMENT);
    bad.id = "\xc3\x28";
    bad.id_len = 2;
    CU_ASSERT_EQUAL(eng_upsert(fx_eng, name, &bad, 1, &ver), CDX_ERR_INVALID_ARGUMENT);
    bad = it;
    bad.metadata = "{\"a\":1,\"a\":2}";
    bad.metadata_len = strlen(bad.metadata);
    CU_ASSERT_EQUAL(eng_upsert(fx_eng, name, &bad, 1, &ver), CDX_ERR_INVALID_ARGUMENT);
    bad.metadata = "[1,2]";
    bad.metadata_len = 5;
    CU_ASSERT_EQUAL(eng_upsert(fx_eng, name, &bad, 1, &ver), CDX_ERR_INVALID_ARGUMENT);
    eng_item two[2] = {it, it};
    CU_ASSERT_EQUAL(eng_upsert(fx_eng, name, two, 2, &ver), CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "duplicate"));
    /* Nothing was applied by any of these. */
    uint64_t cnt = 99;
    CU_ASSERT_EQUAL(eng_count(fx_eng, name, &cnt), CDX_OK);
    CU_ASSERT_EQUAL(cnt, 0);
    CU_ASSERT_EQUAL(eng_upsert(fx_eng, "nosuchindex", &it, 1, &ver), CDX_ERR_NOT_FOUND);
    eng_query q = {.vectors = v, .nq = 1, .top_k = 5000};
    eng_query_result *r = NULL;
    CU_ASSERT_EQUAL(eng_query_run(fx_eng, name, &q, &r), CDX_ERR_INVALID_ARGUMENT);
    q.top_k = 5;
    q.n_probes = 3;
    CU_ASSERT_EQUAL(eng_query_run(fx_eng, name, &q, &r), CDX_ERR_INVALID_ARGUMENT);
    q.n_probes = 0;
    q.filter = "{\"a\": {\"$regex\": \"x\"}}";
    q.filter_len = strlen(q.filter);
    CU_ASSERT_EQUAL(eng_query_run(fx_eng, name, &q, &r), CDX_ERR_INVALID_ARGUMENT);
    q.filter = NULL;
    q.filter_len = 0;
    q.vectors = nanv;
    CU_ASSERT_EQUAL(eng_query_run(fx_eng, name, &q, &r), CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
}

/* A new engine (a restarted appliance) on the same store and token sees the same data. */
static void test_restart(void)
{
    const size_t d = 8, n = 100;
    fx_dataset s;
    fx_ds_make(&s, n, d, "r");
    char name[64];
    fx_uniq_name(name, "restart");
    eng_index_info info, again;
    fx_create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 4, &info);
    fx_upsert(name, s.items, n);
    uint64_t v;
    CU_ASSERT_EQUAL(eng_train(fx_eng, name, NULL, &v), CDX_OK);
    eng *e2 = fx_engine_open(fx_store, fx_statedir, 0);
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
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
    fx_ds_free(&s);
}

static const fx_test tests[] = {
    {"purge and manifest_max_age_ms", test_purge_and_max_age},
    {"lifecycle: create, describe, list, delete", test_lifecycle},
    {"bad input: specific errors, nothing applied", test_bad_input},
    {"restart sees the same data", test_restart},
};

int main(void)
{
    return fx_engine_run(tests, FX_LEN(tests));
}
