/*
 * test_engine_hostile.c - the encrypted IVF engine, the hostile store: tampered, swapped, replayed
 * and rolled-back records are refused, and nothing the store holds is plaintext. Run against the
 * memory store and against Redis (fixture), on a throwaway SoftHSM token
 * (tests/fixtures/fx_engine.h).
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

static void test_tamper(void)
{
    const size_t d = 8;
    fx_dataset s;
    fx_ds_make(&s, 40, d, "t");
    char name[64], pat[128];
    fx_uniq_name(name, "tamper");
    eng_index_info info;
    fx_create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, &info);
    fx_upsert(name, s.items, 20);
    fx_upsert(name, s.items + 20, 20);
    eng *e2 = fx_engine_open(fx_store, fx_statedir, 0); /* no cache: every query reads the store */
    CU_ASSERT_PTR_NOT_NULL_FATAL(e2);
    CU_ASSERT_EQUAL(fx_q1(e2, name, s.x), CDX_OK);
    char **segs;
    fx_key_of(info.id, "s", pat);
    size_t ns = fx_keys_of(pat, &segs);
    CU_ASSERT_EQUAL_FATAL(ns, 2);
    eng_val a = fx_raw_get(segs[0]), b = fx_raw_get(segs[1]);
    /* One flipped bit in a search block. */
    uint8_t *m = malloc(a.len);
    memcpy(m, a.data, a.len);
    m[70] ^= 1;
    fx_raw_set(segs[0], m, a.len);
    CU_ASSERT_EQUAL(fx_q1(e2, name, s.x), CDX_ERR_INTEGRITY);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), name));
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "search block"));
    /* Truncated. */
    fx_raw_set(segs[0], a.data, a.len / 3);
    CU_ASSERT_EQUAL(fx_q1(e2, name, s.x), CDX_ERR_INTEGRITY);
    /* Swapped with the other segment. */
    fx_raw_set(segs[0], b.data, b.len);
    fx_raw_set(segs[1], a.data, a.len);
    CU_ASSERT_EQUAL(fx_q1(e2, name, s.x), CDX_ERR_INTEGRITY);
    /* Deleted: the reader refreshes the head once, then reports it. */
    fx_raw_set(segs[1], b.data, b.len);
    const char *dk[1] = {segs[0]};
    CU_ASSERT_EQUAL(eng_store_del(fx_store, dk, 1, NULL), CDX_OK);
    CU_ASSERT_EQUAL(fx_q1(e2, name, s.x), CDX_ERR_INTEGRITY);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "missing"));
    fx_raw_set(segs[0], a.data, a.len);
    fx_raw_set(segs[1], b.data, b.len);
    CU_ASSERT_EQUAL(fx_q1(e2, name, s.x), CDX_OK);
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
        fx_upsert(name, &ci, 1);
        char **tk;
        fx_key_of(info.id, "t", pat);
        size_t nt = fx_keys_of(pat, &tk);
        CU_ASSERT_EQUAL_FATAL(nt, 1);
        eng_val cv = fx_raw_get(tk[0]);
        const char *dk1[1] = {tk[0]};
        CU_ASSERT_EQUAL(eng_store_del(fx_store, dk1, 1, NULL), CDX_OK);
        const char *cid = s.ids[0];
        size_t cl = strlen(cid);
        eng_get_result *cg = NULL;
        CU_ASSERT_EQUAL(eng_get(e2, name, &cid, &cl, 1, ENG_WANT_CONTENTS, 0, &cg),
                        CDX_ERR_INTEGRITY);
        fx_raw_set(tk[0], cv.data, cv.len);
        CU_ASSERT_EQUAL_FATAL(eng_get(e2, name, &cid, &cl, 1, ENG_WANT_CONTENTS, 0, &cg), CDX_OK);
        CU_ASSERT_EQUAL(cg->hits[0].contents_len, sizeof(blob));
        eng_get_result_free(cg);
        eng_vals_free(&cv, 1);
        free(tk[0]);
        free(tk);
    }

    /* An id-map bucket replayed from an older version. */
    char **bk;
    fx_key_of(info.id, "b", pat);
    size_t nb = fx_keys_of(pat, &bk);
    CU_ASSERT_FATAL(nb > 0);
    eng_val old = fx_raw_get(bk[0]);
    /* Rewrite every bucket by upserting every item again. */
    fx_upsert(name, s.items, 40);
    eng_val newer = fx_raw_get(bk[0]);
    fx_raw_set(bk[0], old.data, old.len);
    const char *ids[40];
    size_t lens[40];
    for (int i = 0; i < 40; i++) {
        ids[i] = s.ids[i];
        lens[i] = strlen(s.ids[i]);
    }
    eng_get_result *g = NULL;
    CU_ASSERT_EQUAL(eng_get(e2, name, ids, lens, 40, 0, 0, &g), CDX_ERR_INTEGRITY);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "bucket"));
    fx_raw_set(bk[0], newer.data, newer.len);
    CU_ASSERT_EQUAL(eng_get(e2, name, ids, lens, 40, 0, 0, &g), CDX_OK);
    eng_get_result_free(g);
    eng_vals_free(&old, 1);
    eng_vals_free(&newer, 1);
    for (size_t i = 0; i < nb; i++)
        free(bk[i]);
    free(bk);

    /* The head rolled back to an older (authentic) version. */
    char hk[128];
    fx_key_of(info.id, "head", hk);
    eng_val h1 = fx_raw_get(hk);
    fx_upsert(name, s.items, 1);
    eng_val h2 = fx_raw_get(hk);
    CU_ASSERT_EQUAL(fx_q1(e2, name, s.x), CDX_OK); /* e2 sees the newest version */
    fx_raw_set(hk, h1.data, h1.len);
    CU_ASSERT_EQUAL(fx_q1(e2, name, s.x), CDX_ERR_ROLLBACK_DETECTED);
    CU_ASSERT_EQUAL(fx_q1(fx_eng, name, s.x), CDX_ERR_ROLLBACK_DETECTED);
    /* The detail names the command that recovers it. */
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "cipherdex index accept-rollback"));
    /* Persisted: a restarted appliance still refuses it. */
    eng *e3 = fx_engine_open(fx_store, fx_statedir, 0);
    CU_ASSERT_EQUAL(eng_rollback_count(e3), 0); /* nothing read yet */
    CU_ASSERT_EQUAL(fx_q1(e3, name, s.x), CDX_ERR_ROLLBACK_DETECTED);
    CU_ASSERT_EQUAL(eng_rollback_count(e3), 1);
    /* Listing does not fail: the index is listed with its status and the store's version. */
    eng_index_info *all = NULL;
    size_t nall = 0;
    uint64_t store_v = 0;
    CU_ASSERT_EQUAL_FATAL(eng_index_list(e3, &all, &nall), CDX_OK);
    for (size_t i = 0; i < nall; i++) {
        if (strcmp(all[i].name, name) != 0)
            continue; /* other tests' indexes, some broken on purpose */
        CU_ASSERT_STRING_EQUAL(all[i].status, "rollback_detected");
        CU_ASSERT_PTR_NOT_NULL(strstr(all[i].status_message, "accept-rollback"));
        store_v = all[i].version;
    }
    free(all);
    CU_ASSERT_FATAL(store_v > 0);
    /* The admin accepts the restored state explicitly, confirming the store's exact version. */
    uint64_t acc = 0, prev = 0;
    CU_ASSERT_EQUAL(eng_accept_rollback(e3, name, store_v + 1, &prev, &acc),
                    CDX_ERR_FAILED_PRECONDITION);
    CU_ASSERT_EQUAL(fx_q1(e3, name, s.x), CDX_ERR_ROLLBACK_DETECTED); /* nothing changed */
    CU_ASSERT_EQUAL(eng_accept_rollback(e3, name, store_v, &prev, &acc), CDX_OK);
    CU_ASSERT_EQUAL(acc, store_v);
    CU_ASSERT(prev > acc);
    CU_ASSERT_EQUAL(eng_rollback_count(e3), 0);
    CU_ASSERT_EQUAL(fx_q1(e3, name, s.x), CDX_OK);
    fx_raw_set(hk, h2.data, h2.len);
    CU_ASSERT_EQUAL(fx_q1(e3, name, s.x), CDX_OK);
    eng_free(e3);
    /* A head moved to another index (valid record, wrong index) is a store problem, INTEGRITY,
     * not KEY_REPLACED, which would send incident response to the HSM (review L2). */
    eng_index_info other;
    char oname[64];
    fx_uniq_name(oname, "other");
    fx_create(oname, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, &other);
    char ohk[128];
    fx_key_of(other.id, "head", ohk);
    eng_val oh = fx_raw_get(ohk);
    fx_raw_set(hk, oh.data, oh.len);
    cdx_err err = fx_q1(e2, name, s.x);
    CU_ASSERT_EQUAL(err, CDX_ERR_INTEGRITY);
    CU_ASSERT_TRUE(fx_detail_has("moved from another index"));
    fx_raw_set(hk, h2.data, h2.len);
    CU_ASSERT_EQUAL(fx_q1(e2, name, s.x), CDX_OK);
    eng_vals_free(&h1, 1);
    eng_vals_free(&h2, 1);
    eng_vals_free(&oh, 1);

    /* A catalog entry tampered with. */
    char **cat;
    size_t nc = fx_keys_of("cdx:cat:*", &cat);
    CU_ASSERT_FATAL(nc > 0);
    eng *e4 = fx_engine_open(fx_store, fx_statedir, 0);
    for (size_t i = 0; i < nc; i++) {
        eng_val cv = fx_raw_get(cat[i]);
        uint8_t *t = malloc(cv.len);
        memcpy(t, cv.data, cv.len);
        t[cv.len - 1] ^= 0x80;
        fx_raw_set(cat[i], t, cv.len);
        free(t);
        eng_vals_free(&cv, 1);
    }
    eng_index_info tmp;
    CU_ASSERT_EQUAL(eng_index_describe(e4, name, &tmp), CDX_ERR_INTEGRITY);
    /* Listing: strict fails; the tolerant list counts the unreadable entries instead. */
    eng_index_info *l = NULL;
    size_t nl = 99, bad = 0;
    CU_ASSERT_EQUAL(eng_index_list(e4, &l, &nl), CDX_ERR_INTEGRITY);
    CU_ASSERT_EQUAL(eng_index_list_all(e4, &l, &nl, &bad), CDX_OK);
    CU_ASSERT_EQUAL(nl, 0);
    CU_ASSERT(bad >= nc);
    free(l);
    eng_free(e4);
    for (size_t i = 0; i < nc; i++) { /* flip back */
        eng_val cv = fx_raw_get(cat[i]);
        cv.data[cv.len - 1] ^= 0x80;
        fx_raw_set(cat[i], cv.data, cv.len);
        eng_vals_free(&cv, 1);
        free(cat[i]);
    }
    free(cat);
    eng_free(e2);
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, oname, other.id), CDX_OK);
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
    fx_ds_free(&s);
}

/* Nothing the store holds reveals ids, metadata, contents, vectors, codes or names. */
static void test_plaintext_scan(void)
{
    const size_t d = 16, n = 60;
    char name[64], mname[64];
    fx_uniq_name(name, "scanFlatCosineIndexName");
    fx_uniq_name(mname, "scanSq8IndexNameX");
    fx_dataset s;
    fx_make_blobs(&s, n, d, 4, 1); /* integral 0..255: SQ8 codes equal the values */
    for (size_t j = 0; j < d; j++) {
        s.x[j] = 0;
        s.x[d + j] = 255;
    }
    char(*ids)[40] = malloc(n * sizeof(*ids));
    char(*vals)[40] = malloc(n * sizeof(*vals));
    char(*meta)[120] = malloc(n * sizeof(*meta));
    char(*cont)[40] = malloc(n * sizeof(*cont));
    for (size_t i = 0; i < n; i++) {
        fx_rand_text(ids[i], 24);
        fx_rand_text(vals[i], 20);
        fx_rand_text(cont[i], 32);
        snprintf(meta[i], sizeof(meta[i]), "{\"secret\": \"%s\"}", vals[i]);
        s.items[i].id = ids[i];
        s.items[i].id_len = 24;
        s.items[i].metadata = meta[i];
        s.items[i].metadata_len = strlen(meta[i]);
        s.items[i].contents = (const uint8_t *)cont[i];
        s.items[i].contents_len = 32;
    }
    eng_index_info a, b;
    fx_create(name, d, ENG_METRIC_COSINE, ENG_IVFFLAT, 2, &a);
    fx_create(mname, d, ENG_METRIC_EUCLIDEAN, ENG_IVFSQ8, 2, &b);
    fx_upsert(name, s.items + 1, n - 1); /* row 0 is all zeros: no direction for cosine */
    fx_upsert(mname, s.items, n);
    uint64_t v;
    CU_ASSERT_EQUAL(eng_train(fx_eng, name, NULL, &v), CDX_OK);
    CU_ASSERT_EQUAL(eng_train(fx_eng, mname, NULL, &v), CDX_OK);
    /* Positive control: plaintext written through the raw store API is found. */
    char ctl_key[64];
    snprintf(ctl_key, sizeof(ctl_key), "control:%s", ids[0]);
    fx_raw_set(ctl_key, (const uint8_t *)vals[0], 20);

    char **keys;
    size_t nk = fx_keys_of("*", &keys);
    size_t total = 0, records = 0;
    int found_ids = 0, found_vals = 0, found_cont = 0, found_vec = 0, found_norm = 0,
        found_codes = 0, found_name = 0, control = 0;
    float nv[16];
    for (size_t i = 0; i < nk; i++) {
        eng_val val = fx_raw_get(keys[i]);
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
    eng_store_del(fx_store, ck, 1, NULL);
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, a.id), CDX_OK);
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, mname, b.id), CDX_OK);
    free(ids);
    free(vals);
    free(meta);
    free(cont);
    fx_ds_free(&s);
}

static const fx_test tests[] = {
    {"hostile store: tamper, swap, replay, rollback", test_tamper},
    {"plaintext scan of the store", test_plaintext_scan},
};

int main(void)
{
    return fx_engine_run(tests, FX_LEN(tests));
}
