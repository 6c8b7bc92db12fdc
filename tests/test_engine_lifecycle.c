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
#include <openssl/rand.h>

#include "cdx_err.h"
#include "cdx_hex.h"
#include "eng.h"
#include "eng_store.h"
#include "fx_cunit.h"
#include "fx_custody.h"
#include "fx_engine.h"
#include "fx_tmp.h"
#include "hsm_admin.h"
#include "hsm_custody.h"
#include "hsm_keys.h"

/* Engine internals, to write what an older appliance or the store behind its back left. */
#include "eng_catalog.h"
#include "eng_int.h"
#include "eng_op.h"

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
    /* Provenance: generated on this token, read back from it. */
    CU_ASSERT_EQUAL(info.prov.origin, ENG_ORIGIN_GENERATED);
    CU_ASSERT_STRING_EQUAL(eng_key_origin_name(info.prov.origin), "generated");
    CU_ASSERT_TRUE((info.prov.attrs & (HSM_A_LOCAL | HSM_A_NEVER_EXTRACTABLE)) ==
                   (HSM_A_LOCAL | HSM_A_NEVER_EXTRACTABLE));
    CU_ASSERT_FALSE(info.prov.attrs & HSM_A_EXTRACTABLE);
    CU_ASSERT_TRUE(strlen(info.prov.serial) > 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(info.prov.token_model, "SoftHSM"));
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
    q.n_probes = 3; /* an untrained index has no clusters: clamped, every item scanned */
    CU_ASSERT_EQUAL_FATAL(eng_query_run(fx_eng, name, &q, &r), CDX_OK);
    CU_ASSERT_EQUAL(r->n_probes, 0);
    eng_query_result_free(r);
    r = NULL;
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

/* Whether `name` is in eng_index_list. */
static bool listed(const char *name)
{
    eng_index_info *all = NULL;
    size_t n = 0;
    bool seen = false;
    CU_ASSERT_EQUAL_FATAL(eng_index_list(fx_eng, &all, &n), CDX_OK);
    for (size_t i = 0; i < n; i++)
        seen |= !strcmp(all[i].name, name);
    free(all);
    return seen;
}

/* Write an entry `name` in state creating that adopts key `id`, as the appliance did before key
 * claims when a create with a key in use failed (walkthrough problem 1). */
static void plant_alias(const char *name, const uint8_t id[16], uint32_t d)
{
    op ro;
    eng_op_root(fx_eng, &ro);
    eng_catentry c = {.state = ENG_ST_CREATING, .key_source = ENG_KEY_ADOPT, .dim = d};
    snprintf(c.name, sizeof(c.name), "%s", name);
    memcpy(c.id, id, 16);
    c.metric = ENG_METRIC_EUCLIDEAN;
    c.type = ENG_IVFFLAT;
    bool ok = false;
    CU_ASSERT_EQUAL(eng_cat_write(&ro, &c, true, &ok), CDX_OK);
    CU_ASSERT_TRUE(ok);
    eng_op_end(&ro);
}

/* Remove the catalog entry of `name` only, as someone with write access to the store could. */
static void drop_entry(const char *name)
{
    op ro;
    eng_op_root(fx_eng, &ro);
    CU_ASSERT_EQUAL(eng_cat_remove(&ro, name), CDX_OK);
    eng_op_end(&ro);
}

static size_t n_index_keys(void)
{
    hsm_key_info *ki = NULL;
    size_t n = 0, k = 0;
    CU_ASSERT_EQUAL_FATAL(hsm_key_list(fx_cust, &ki, &n), CDX_OK);
    for (size_t i = 0; i < n; i++)
        k += ki[i].kind == HSM_KEY_INDEX;
    free(ki);
    return k;
}

/*
 * Walkthrough problem 1: `create typo --adopt-key K` with K the key of prod failed with KEY_IN_USE
 * but left `typo` carrying prod's id, and deleting typo deleted prod's records. One token key
 * belongs to at most one index, a failed create leaves nothing, and a delete removes only the
 * records of the index it names.
 */
static void test_key_in_use(void)
{
    const size_t d = 8;
    fx_dataset s;
    fx_ds_make(&s, 20, d, "k");
    uint8_t kid[16], kcv[8];
    CU_ASSERT_EQUAL_FATAL(RAND_bytes(kid, 16), 1);
    CU_ASSERT_EQUAL_FATAL(hsm_index_key_generate(fx_cust, kid, kcv), CDX_OK);
    char prod[64], typo[64];
    fx_uniq_name(prod, "prod");
    fx_uniq_name(typo, "typo");
    eng_create c = {.name = prod,
                    .dimension = d,
                    .metric = ENG_METRIC_EUCLIDEAN,
                    .type = ENG_IVFFLAT,
                    .key_source = ENG_KEY_ADOPT};
    memcpy(c.adopt_id, kid, 16);
    eng_index_info info, x;
    CU_ASSERT_EQUAL_FATAL(eng_index_create(fx_eng, &c, &info), CDX_OK);
    CU_ASSERT_FALSE(info.owned);
    /* Adopted, and the token says it was generated there (CKA_LOCAL, never extractable). */
    CU_ASSERT_EQUAL(info.prov.origin, ENG_ORIGIN_ADOPTED);
    CU_ASSERT_TRUE(info.prov.attrs & HSM_A_LOCAL);
    fx_upsert(prod, s.items, 20);
    const long all20 = 20 * 1000 + 20;
    /* A key that is not on the token: refused, and nothing is left (walkthrough problem 2). */
    c.name = typo;
    c.adopt_id[0] ^= 1;
    CU_ASSERT_EQUAL(eng_index_create(fx_eng, &c, &x), CDX_ERR_KEY_NOT_FOUND);
    CU_ASSERT_FALSE(listed(typo));
    c.adopt_id[0] ^= 1;

    /* The exact sequence: the same key under another name is refused and leaves nothing. */
    c.name = typo;
    CU_ASSERT_EQUAL(eng_index_create(fx_eng, &c, &x), CDX_ERR_KEY_IN_USE);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), prod));
    CU_ASSERT_EQUAL(eng_index_describe(fx_eng, typo, &x), CDX_ERR_NOT_FOUND);
    CU_ASSERT_FALSE(listed(typo));
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, typo, kid), CDX_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(fx_observe(prod, &s, 0, 20), all20);

    /* An alias an older appliance left: resuming it is refused and removes it... */
    plant_alias(typo, kid, d);
    CU_ASSERT_EQUAL(eng_index_create(fx_eng, &c, &x), CDX_ERR_KEY_IN_USE);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), prod));
    CU_ASSERT_FALSE(listed(typo));
    /* ...and deleting it removes the entry, never prod's records or key. */
    plant_alias(typo, kid, d);
    CU_ASSERT_TRUE(listed(typo));
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, typo, kid), CDX_OK);
    CU_ASSERT_FALSE(listed(typo));
    CU_ASSERT_EQUAL(fx_observe(prod, &s, 0, 20), all20);
    CU_ASSERT_EQUAL(eng_count(fx_eng, prod, &(uint64_t){0}), CDX_OK);

    /* A deleted index frees its key: an adopted key survives it and can be adopted again. */
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, prod, kid), CDX_OK);
    hsm_key_ref k = {.kind = HSM_KEY_INDEX};
    memcpy(k.id, kid, 16);
    CU_ASSERT_EQUAL(hsm_key_check(fx_cust, &k, kcv), CDX_OK);
    CU_ASSERT_EQUAL(eng_index_create(fx_eng, &c, &x), CDX_OK);
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, typo, kid), CDX_OK);

    /* prod's catalog entry removed behind the appliance's back: its records are not taken over. */
    c.name = prod;
    CU_ASSERT_EQUAL_FATAL(eng_index_create(fx_eng, &c, &info), CDX_OK);
    fx_upsert(prod, s.items, 20);
    drop_entry(prod);
    c.name = typo;
    CU_ASSERT_EQUAL(eng_index_create(fx_eng, &c, &x), CDX_ERR_KEY_IN_USE);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "no catalog entry names it"));
    CU_ASSERT_FALSE(listed(typo));
    char pat[128], **keys;
    fx_key_of(kid, "head", pat);
    CU_ASSERT_EQUAL(fx_keys_of(pat, &keys), 1);
    for (size_t i = 0; i < 1; i++)
        free(keys[i]);
    free(keys);
    /* The same with the key claim gone too (a store written before claims): the head says so. */
    size_t nclaims = fx_keys_of("cdx:key:*", &keys);
    CU_ASSERT_TRUE(nclaims >= 1);
    for (size_t i = 0; i < nclaims; i++) {
        const char *one[1] = {keys[i]};
        CU_ASSERT_EQUAL(eng_store_del(fx_store, one, 1, NULL), CDX_OK);
        free(keys[i]);
    }
    free(keys);
    CU_ASSERT_EQUAL(eng_index_create(fx_eng, &c, &x), CDX_ERR_KEY_IN_USE);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "no catalog entry names it"));
    /* The admin purge removes the orphaned records; then the key is free. */
    uint64_t removed = 0;
    CU_ASSERT_EQUAL(eng_purge(fx_eng, &removed), CDX_OK);
    CU_ASSERT_TRUE(removed >= 3);
    CU_ASSERT_EQUAL(eng_index_create(fx_eng, &c, &x), CDX_OK);
    CU_ASSERT_EQUAL(x.count, 0);
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, typo, kid), CDX_OK);
    CU_ASSERT_EQUAL(hsm_key_destroy(fx_cust, &k), CDX_OK);
    fx_ds_free(&s);
}

/* One wrapped blob unwrapped for two indexes would put one key under two: refused, nothing left. */
static void test_unwrap_twice(void)
{
    uint8_t kek[32], dk[32], blob[48];
    CU_ASSERT_EQUAL_FATAL(RAND_bytes(kek, 32), 1);
    CU_ASSERT_EQUAL_FATAL(RAND_bytes(dk, 32), 1);
    CU_ASSERT_EQUAL_FATAL(fx_kms_wrap(kek, dk, 32, blob), 40); /* the KMS side */
    char kn[64], a[64], b[64];
    fx_uniq_name(kn, "kek");
    fx_uniq_name(a, "unwa");
    fx_uniq_name(b, "unwb");
    CU_ASSERT_EQUAL_FATAL(hsm_kek_import(fx_cust, kn, kek), CDX_OK);
    eng_create c = {.name = a,
                    .dimension = 4,
                    .metric = ENG_METRIC_EUCLIDEAN,
                    .type = ENG_IVFFLAT,
                    .key_source = ENG_KEY_UNWRAP,
                    .kek_name = kn,
                    .wrapped = blob,
                    .wrapped_len = 40};
    eng_index_info ia, ib;
    /* Walkthrough problem 2: a create that fails leaves no half-created index behind. */
    size_t keys_before = n_index_keys();
    blob[7] ^= 1;
    CU_ASSERT_EQUAL(eng_index_create(fx_eng, &c, &ia), CDX_ERR_BAD_WRAPPED_KEY);
    blob[7] ^= 1;
    CU_ASSERT_FALSE(listed(a));
    CU_ASSERT_EQUAL(n_index_keys(), keys_before);
    CU_ASSERT_EQUAL_FATAL(eng_index_create(fx_eng, &c, &ia), CDX_OK);
    keys_before = n_index_keys();
    /* Unwrapped from this KEK: the key existed outside the token. */
    CU_ASSERT_EQUAL(ia.prov.origin, ENG_ORIGIN_UNWRAPPED);
    CU_ASSERT_STRING_EQUAL(ia.prov.kek, kn);
    CU_ASSERT_FALSE(ia.prov.attrs & HSM_A_LOCAL);
    /* What describe says is what the catalog bound at creation (another engine reads it). */
    eng *e2 = fx_engine_open(fx_store, fx_statedir, 0);
    eng_index_info again;
    CU_ASSERT_EQUAL(eng_index_describe(e2, a, &again), CDX_OK);
    CU_ASSERT_EQUAL(memcmp(&again.prov, &ia.prov, sizeof(ia.prov)), 0);
    eng_free(e2);
    c.name = b;
    CU_ASSERT_EQUAL(eng_index_create(fx_eng, &c, &ib), CDX_ERR_KEY_IN_USE);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), a));
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "unwrapped"));
    CU_ASSERT_FALSE(listed(b));
    CU_ASSERT_EQUAL(n_index_keys(), keys_before); /* the second unwrapped copy was destroyed */
    /* Once a is deleted (its key destroyed), the blob may serve another index. */
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, a, ia.id), CDX_OK);
    CU_ASSERT_EQUAL(eng_index_create(fx_eng, &c, &ib), CDX_OK);
    CU_ASSERT_EQUAL(memcmp(ib.kcv, ia.kcv, 8), 0);
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, b, ib.id), CDX_OK);
    CU_ASSERT_EQUAL(hsm_kek_destroy(fx_cust, kn), CDX_OK);
}

/* An engine on this suite's token and store with the key policies set. */
static eng *policy_engine(bool allow_import, bool require_generated)
{
    eng_config cfg = {.custody = fx_cust,
                      .store = fx_store,
                      .state_dir = fx_statedir,
                      .allow_plaintext_import = allow_import,
                      .require_generated = require_generated};
    memcpy(cfg.deployment_id, fx_dep, 16);
    eng *e = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_new(&cfg, &e), CDX_OK);
    return e;
}

/*
 * The seed's development-key flow through the engine: a plaintext key is refused unless allowed,
 * imported as a non-extractable token key when allowed (provenance "imported"), and the same key
 * cannot serve two indexes. require_generated refuses every key the token did not generate.
 */
static void test_key_policies(void)
{
    uint8_t key[32];
    CU_ASSERT_EQUAL_FATAL(RAND_bytes(key, 32), 1);
    char a[64], b[64];
    fx_uniq_name(a, "imp");
    fx_uniq_name(b, "imp");
    eng_create c = {.name = a,
                    .dimension = 4,
                    .metric = ENG_METRIC_EUCLIDEAN,
                    .type = ENG_IVFFLAT,
                    .key_source = ENG_KEY_IMPORT,
                    .import_key = key};
    eng_index_info ia, ib;
    size_t keys0 = n_index_keys();
    /* Off by default: refused before anything is written. */
    CU_ASSERT_EQUAL(eng_index_create(fx_eng, &c, &ia), CDX_ERR_FAILED_PRECONDITION);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "allow_plaintext_import"));
    CU_ASSERT_FALSE(listed(a));
    CU_ASSERT_EQUAL(n_index_keys(), keys0);
    eng *dev = policy_engine(true, false);
    CU_ASSERT_EQUAL_FATAL(eng_index_create(dev, &c, &ia), CDX_OK);
    CU_ASSERT_EQUAL(ia.prov.origin, ENG_ORIGIN_IMPORTED);
    CU_ASSERT_TRUE(ia.owned);
    CU_ASSERT_FALSE(ia.prov.attrs & (HSM_A_LOCAL | HSM_A_EXTRACTABLE));
    CU_ASSERT_TRUE(ia.prov.attrs & HSM_A_SENSITIVE);
    /* The same bytes again: the key already belongs to a; nothing is left of the attempt. */
    c.name = b;
    CU_ASSERT_EQUAL(eng_index_create(dev, &c, &ib), CDX_ERR_KEY_IN_USE);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), a));
    CU_ASSERT_FALSE(listed(b));
    CU_ASSERT_EQUAL(n_index_keys(), keys0 + 1);
    /* require_generated: generated keys only; the imported key is refused and undone. */
    eng *strict = policy_engine(true, true);
    CU_ASSERT_EQUAL(eng_index_delete(dev, a, ia.id), CDX_OK);
    c.name = a;
    CU_ASSERT_EQUAL(eng_index_create(strict, &c, &ia), CDX_ERR_FAILED_PRECONDITION);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "existed outside"));
    CU_ASSERT_FALSE(listed(a));
    CU_ASSERT_EQUAL(n_index_keys(), keys0);
    eng_create g = {.name = b, .dimension = 4, .metric = ENG_METRIC_EUCLIDEAN, .type = ENG_IVFFLAT};
    CU_ASSERT_EQUAL(eng_index_create(strict, &g, &ib), CDX_OK);
    CU_ASSERT_EQUAL(ib.prov.origin, ENG_ORIGIN_GENERATED);
    CU_ASSERT_EQUAL(eng_index_delete(strict, b, ib.id), CDX_OK);
    eng_free(strict);
    eng_free(dev);
}

static const fx_test tests[] = {
    {"key policies: plaintext import gated, require_generated", test_key_policies},
    {"one key, one index: adopt in use, aliases, a dropped entry", test_key_in_use},
    {"one key, one index: a blob unwrapped twice", test_unwrap_twice},
    {"purge and manifest_max_age_ms", test_purge_and_max_age},
    {"lifecycle: create, describe, list, delete", test_lifecycle},
    {"bad input: specific errors, nothing applied", test_bad_input},
    {"restart sees the same data", test_restart},
};

int main(void)
{
    return fx_engine_run(tests, FX_LEN(tests));
}
