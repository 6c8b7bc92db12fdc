/*
 * test_engine_write.c - the encrypted IVF engine, writes: upsert, get, update, delete, list_ids
 * after deletes, and churn against a model. Run against the memory store and against Redis
 * (fixture), on a throwaway SoftHSM token (tests/fixtures/fx_engine.h).
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
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

static void test_upsert_get_delete(void)
{
    char name[64];
    fx_uniq_name(name, "ugd");
    eng_index_info info;
    const size_t d = 16;
    fx_create(name, d, ENG_METRIC_COSINE, ENG_IVFFLAT, 0, &info);
    fx_dataset s;
    fx_ds_make(&s, 50, d, "item-");
    uint8_t content[3000];
    for (size_t i = 0; i < sizeof(content); i++)
        content[i] = (uint8_t)(i * 7);
    s.items[3].contents = content;
    s.items[3].contents_len = sizeof(content);
    uint64_t v1 = fx_upsert(name, s.items, s.n);
    CU_ASSERT_TRUE(v1 >= 2);
    uint64_t cnt = 0;
    CU_ASSERT_EQUAL(eng_count(fx_eng, name, &cnt), CDX_OK);
    CU_ASSERT_EQUAL(cnt, 50);
    const char *ids[3] = {"item-3", "nope", "item-7"};
    size_t lens[3] = {6, 4, 6};
    eng_get_result *g = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_get(fx_eng, name, ids, lens, 3,
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
    fx_rand_vec(nv, d);
    eng_item up = {.id = "item-3", .id_len = 6, .vector = nv};
    uint64_t v2 = fx_upsert(name, &up, 1);
    CU_ASSERT_TRUE(v2 > v1);
    CU_ASSERT_EQUAL_FATAL(eng_get(fx_eng, name, ids, lens, 1,
                                  ENG_WANT_VECTOR | ENG_WANT_METADATA | ENG_WANT_CONTENTS, 0, &g),
                          CDX_OK);
    CU_ASSERT_EQUAL(memcmp(g->hits[0].vector, nv, sizeof(nv)), 0);
    CU_ASSERT_PTR_NULL(g->hits[0].metadata);
    CU_ASSERT_PTR_NULL(g->hits[0].contents);
    eng_get_result_free(g);
    CU_ASSERT_EQUAL(eng_count(fx_eng, name, &cnt), CDX_OK);
    CU_ASSERT_EQUAL(cnt, 50);
    /* A query near the new vector finds item-3 first; its old copy is gone. */
    eng_query q = {.vectors = nv, .nq = 1, .top_k = 3, .want = ENG_WANT_DISTANCE};
    eng_query_result *r = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_query_run(fx_eng, name, &q, &r), CDX_OK);
    CU_ASSERT_STRING_EQUAL(r->hits[0][0].id, "item-3");
    CU_ASSERT_TRUE(fabsf(r->hits[0][0].distance) < 1e-5f);
    eng_query_result_free(r);
    q.vectors = s.x + 3 * d; /* the old vector */
    CU_ASSERT_EQUAL_FATAL(eng_query_run(fx_eng, name, &q, &r), CDX_OK);
    for (size_t i = 0; i < r->n[0]; i++)
        CU_ASSERT_TRUE(strcmp(r->hits[0][i].id, "item-3") || r->hits[0][i].distance > 1e-4f);
    eng_query_result_free(r);
    /* Delete. */
    uint64_t deleted = 0, v3 = 0;
    const char *del[2] = {"item-7", "never"};
    size_t dl[2] = {6, 5};
    CU_ASSERT_EQUAL(eng_delete(fx_eng, name, del, dl, 2, &deleted, &v3), CDX_OK);
    CU_ASSERT_EQUAL(deleted, 1);
    CU_ASSERT_TRUE(v3 > v2);
    CU_ASSERT_EQUAL(eng_count(fx_eng, name, &cnt), CDX_OK);
    CU_ASSERT_EQUAL(cnt, 49);
    CU_ASSERT_EQUAL_FATAL(eng_get(fx_eng, name, del, dl, 1, 0, 0, &g), CDX_OK);
    CU_ASSERT_FALSE(g->found[0]);
    eng_get_result_free(g);
    q.vectors = s.x + 7 * d;
    q.top_k = 50;
    CU_ASSERT_EQUAL_FATAL(eng_query_run(fx_eng, name, &q, &r), CDX_OK);
    CU_ASSERT_EQUAL(r->n[0], 49);
    for (size_t i = 0; i < r->n[0]; i++)
        CU_ASSERT_STRING_NOT_EQUAL(r->hits[0][i].id, "item-7");
    eng_query_result_free(r);
    /* min_version beyond the head: STALE. */
    q.min_version = v3 + 100;
    CU_ASSERT_EQUAL(eng_query_run(fx_eng, name, &q, &r), CDX_ERR_STALE);
    fx_ds_free(&s);
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
}

static void test_list_after_delete(void)
{
    const size_t d = 8, n = 150;
    fx_dataset s;
    fx_ds_make(&s, n, d, "l");
    char name[64];
    fx_uniq_name(name, "listdel");
    eng_index_info info;
    fx_create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 4, &info);
    fx_upsert(name, s.items, 100);
    uint64_t v = 0;
    CU_ASSERT_EQUAL(eng_train(fx_eng, name, NULL, &v), CDX_OK);
    uint64_t vu = fx_upsert(name, s.items + 100, 50);
    CU_ASSERT_TRUE(vu > v);
    bool alive[150];
    for (size_t i = 0; i < n; i++)
        alive[i] = true;
    size_t idx[60];
    size_t k = fx_pick(alive, true, n, 60, idx);
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
    CU_ASSERT_EQUAL(eng_delete(fx_eng, name, del, dl, k + 1, &nd, &vd), CDX_OK);
    CU_ASSERT_EQUAL(nd, k);
    CU_ASSERT_TRUE(vd > vu);
    const size_t live = n - k;
    /* Pages of various sizes, each through this appliance and a fresh one. */
    const uint32_t limits[4] = {1, 7, (uint32_t)live, 1000};
    for (int fresh = 0; fresh < 2; fresh++) {
        eng *e = fresh ? fx_engine_open(fx_store, fx_statedir, 0) : fx_eng;
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
                fprintf(stderr,
                        "  [list] limit %u (%s): %zu ids of %zu live, %zu dup, %zu dead, "
                        "%zu missing, %d pages, %zu empty\n",
                        limits[li], fresh ? "fresh" : "cached", total, live, dup, dead, missing,
                        pages, empty_pages);
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
        CU_ASSERT_EQUAL_FATAL(eng_list_ids(fx_eng, name, NULL, 1000, &all, &al, &na, &nx), CDX_OK);
        CU_ASSERT_PTR_NULL(nx);
        CU_ASSERT_EQUAL_FATAL(na, live);
        const char *tail[3];
        size_t tl[3];
        for (size_t i = 0; i < 3; i++) {
            tail[i] = all[na - 1 - i];
            tl[i] = al[na - 1 - i];
        }
        CU_ASSERT_EQUAL(eng_delete(fx_eng, name, tail, tl, 3, &nd, &vd), CDX_OK);
        CU_ASSERT_EQUAL(nd, 3);
        for (size_t i = 0; i < 3; i++)
            alive[atoi(tail[i] + 1)] = false;
        char **pg, *nx2 = NULL;
        size_t *pl, np = 0;
        CU_ASSERT_EQUAL_FATAL(
            eng_list_ids(fx_eng, name, NULL, (uint32_t)(live - 3), &pg, &pl, &np, &nx2), CDX_OK);
        CU_ASSERT_EQUAL(np, live - 3);
        for (size_t i = 0; i < np && i < na; i++)
            CU_ASSERT_STRING_EQUAL(pg[i], all[i]);
        if (nx2) {
            char **pg2, *nx3 = NULL;
            size_t *pl2, np2 = 99;
            CU_ASSERT_EQUAL(eng_list_ids(fx_eng, name, nx2, 10, &pg2, &pl2, &np2, &nx3), CDX_OK);
            fprintf(stderr,
                    "  [list] a cursor after the last live id; its page has %zu ids, "
                    "next %s\n",
                    np2, nx3 ? "set" : "NULL");
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
    CU_ASSERT_EQUAL(eng_delete(fx_eng, name, rest, rl, nl, &nd, &vd), CDX_OK);
    CU_ASSERT_EQUAL(nd, nl);
    char **ids, *next = NULL;
    size_t *lens, got = 99;
    CU_ASSERT_EQUAL(eng_list_ids(fx_eng, name, NULL, 10, &ids, &lens, &got, &next), CDX_OK);
    CU_ASSERT_EQUAL(got, 0);
    CU_ASSERT_PTR_NULL(next);
    eng_ids_free(ids, lens, got);
    free(next);
    free(rest);
    free(rl);
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
    fx_ds_free(&s);
}

/* New vector, metadata and contents (every third row, in its buffer cont) for row i. */
static void churn_row(fx_dataset *s, size_t i, int round, uint8_t *cont)
{
    fx_rand_vec(s->x + i * s->d, s->d);
    snprintf(s->meta[i], sizeof(s->meta[i]), "{\"n\": %zu, \"round\": %d, \"r\": %llu}", i, round,
             (unsigned long long)(fx_rnd() % 100000));
    s->items[i].metadata_len = strlen(s->meta[i]);
    s->items[i].contents = NULL;
    s->items[i].contents_len = 0;
    if ((i + (size_t)round) % 3 == 0) {
        size_t len = 1 + fx_rnd() % 40;
        for (size_t j = 0; j < len; j++)
            cont[j] = (uint8_t)fx_rnd();
        s->items[i].contents = cont;
        s->items[i].contents_len = len;
    }
}

static void check_both(const char *name, const fx_dataset *s, const bool *alive, const float *qs,
                       size_t nq, const char *when, int round)
{
    int a = fx_check_model(fx_eng, name, s, alive, qs, nq, NULL, NULL, false);
    int b = fx_check_model(NULL, name, s, alive, qs, nq, NULL, NULL, false);
    if (a || b)
        fprintf(stderr, "  [churn] round %d %s: %d discrepancies (cached engine), %d (fresh)\n",
                round, when, a, b);
    CU_ASSERT_EQUAL(a, 0);
    CU_ASSERT_EQUAL(b, 0);
}

static void test_churn(void)
{
    const size_t d = 12, n = 200, nq = 10;
    fx_dataset s;
    fx_ds_make(&s, n, d, "u");
    float qs[10 * 12];
    fx_rand_vec(qs, nq * d);
    char name[64];
    fx_uniq_name(name, "churn");
    eng_index_info info;
    fx_create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 8, &info);
    static uint8_t cont[200][40];
    for (size_t i = 0; i < n; i++)
        churn_row(&s, i, 0, cont[i]);
    fx_upsert(name, s.items, n);
    bool alive[200], deleted_now[200];
    int del_round[200];
    for (size_t i = 0; i < n; i++) {
        alive[i] = true;
        del_round[i] = -1;
    }
    eng_config c = {
        .custody = fx_cust, .store = fx_store, .state_dir = fx_statedir, .gc_grace_ms = 1};
    memcpy(c.deployment_id, fx_dep, 16);
    eng *sw = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_new(&c, &sw), CDX_OK);
    size_t idx[200];
    eng_item batch[200];
    uint64_t swept = 0;
    for (int round = 0; round < 5; round++) {
        /* Update 50 live items: new vectors and metadata. */
        size_t k = fx_pick(alive, true, n, 50, idx);
        CU_ASSERT_EQUAL(k, 50);
        for (size_t i = 0; i < k; i++) {
            churn_row(&s, idx[i], round + 1, cont[idx[i]]);
            batch[i] = s.items[idx[i]];
        }
        fx_upsert(name, batch, k);
        /* Delete 20 live ones. */
        k = fx_pick(alive, true, n, 20, idx);
        const char *del[20];
        size_t dl[20];
        for (size_t i = 0; i < k; i++) {
            del[i] = s.ids[idx[i]];
            dl[i] = strlen(del[i]);
            alive[idx[i]] = false;
            del_round[idx[i]] = round;
        }
        uint64_t nd = 0, v = 0;
        CU_ASSERT_EQUAL(eng_delete(fx_eng, name, del, dl, k, &nd, &v), CDX_OK);
        CU_ASSERT_EQUAL(nd, k);
        /* Re-insert 20 deleted ones (earlier rounds first), with new vectors and metadata. */
        for (size_t i = 0; i < n; i++)
            deleted_now[i] = !alive[i] && del_round[i] < round;
        k = fx_pick(deleted_now, true, n, 20, idx);
        if (k < 20) {
            for (size_t i = 0; i < n; i++)
                deleted_now[i] = !alive[i] && del_round[i] == round;
            k += fx_pick(deleted_now, true, n, 20 - k, idx + k);
        }
        CU_ASSERT_EQUAL(k, 20);
        for (size_t i = 0; i < k; i++) {
            churn_row(&s, idx[i], round + 1, cont[idx[i]]);
            alive[idx[i]] = true;
            batch[i] = s.items[idx[i]];
        }
        fx_upsert(name, batch, k);
        check_both(name, &s, alive, qs, nq, "after writes", round);
        if (round == 0) {
            uint64_t v2 = 0;
            CU_ASSERT_EQUAL_FATAL(eng_train(fx_eng, name, NULL, &v2), CDX_OK);
            CU_ASSERT_EQUAL(eng_index_describe(fx_eng, name, &info), CDX_OK);
            CU_ASSERT_EQUAL(info.n_clusters, 8);
            check_both(name, &s, alive, qs, nq, "after training", round);
        }
        CU_ASSERT_EQUAL(eng_compact(fx_eng, name, &v), CDX_OK);
        CU_ASSERT_EQUAL(eng_index_describe(fx_eng, name, &info), CDX_OK);
        CU_ASSERT_TRUE(info.segments <= 8);
        check_both(name, &s, alive, qs, nq, "after compaction", round);
        struct timespec ts = {0, 5 * 1000 * 1000}; /* records must be older than 1 ms */
        nanosleep(&ts, NULL);
        uint64_t del_keys = fx_sweep_until(sw, name, 1);
        CU_ASSERT_TRUE(del_keys > 0); /* superseded manifests and compacted segments */
        swept += del_keys;
        check_both(name, &s, alive, qs, nq, "after sweep", round);
    }
    fprintf(stderr, "  [churn] 5 rounds, %llu records swept\n", (unsigned long long)swept);
    eng_free(sw);
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
    fx_ds_free(&s);
}

static const fx_test tests[] = {
    {"upsert, get, update, delete", test_upsert_get_delete},
    {"upsert/update/delete churn against a model", test_churn},
    {"list_ids after deletes; get min_version", test_list_after_delete},
};

int main(void)
{
    return fx_engine_run(tests, FX_LEN(tests));
}
