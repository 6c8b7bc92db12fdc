/*
 * test_engine_crash.c - the encrypted IVF engine, crashes: a crash after every store write of an
 * upsert (serial and parallel), a delete and a compaction leaves the index before or after. Run
 * against the memory store and against Redis (fixture), on a throwaway SoftHSM token
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

static void test_crash_points(void)
{
    const size_t d = 8;
    fx_dataset s;
    fx_ds_make(&s, 60, d, "c");
    int points = 0, before = 0, after = 0;
    /* Upsert of 20 new items into an index holding 20: crash after each store write. */
    for (uint64_t nth = 1; nth < 64; nth++) {
        char name[64];
        fx_uniq_name(name, "crash");
        eng_index_info info;
        fx_create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, &info);
        fx_upsert(name, s.items, 20);
        eng_store_fault_arm(fx_fault, nth);
        uint64_t v = 0;
        cdx_err err = eng_upsert(fx_eng, name, s.items + 20, 20, &v);
        eng_store_fault_disarm(fx_fault);
        long st = fx_observe(name, &s, 20, 40);
        if (err == CDX_OK) {
            CU_ASSERT_EQUAL(st, 40 * 1000 + 20);
            CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
            break; /* past the last write: the operation completed */
        }
        points++;
        /* Before (20 items, none of the batch) or after (40, all of it): nothing between. */
        CU_ASSERT_TRUE(st == 20 * 1000 || st == 40 * 1000 + 20);
        before += st == 20 * 1000;
        after += st == 40 * 1000 + 20;
        /* The first 20 are intact either way. */
        CU_ASSERT_TRUE(fx_observe(name, &s, 0, 20) >= 0);
        CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
    }
    CU_ASSERT_TRUE(points >= 3);
    fprintf(stderr, "  [crash] upsert: %d crash points, %d before, %d after\n", points, before,
            after);

    /* Training: 4 lists, crash after each write. */
    points = 0;
    for (uint64_t nth = 1; nth < 64; nth++) {
        char name[64];
        fx_uniq_name(name, "crasht");
        eng_index_info info;
        fx_create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 4, &info);
        fx_upsert(name, s.items, 60);
        eng_store_fault_arm(fx_fault, nth);
        uint64_t v = 0;
        cdx_err err = eng_train(fx_eng, name, NULL, &v);
        eng_store_fault_disarm(fx_fault);
        long st = fx_observe(name, &s, 0, 60);
        CU_ASSERT_EQUAL(st, 60 * 1000 + 60);
        eng_index_info now;
        CU_ASSERT_EQUAL(eng_index_describe(fx_eng, name, &now), CDX_OK);
        CU_ASSERT_TRUE(now.n_clusters == 0 || now.n_clusters == 4);
        CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
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
        fx_uniq_name(name, "crashc");
        eng_index_info info;
        eng_create c = {
            .name = name, .dimension = d, .metric = ENG_METRIC_EUCLIDEAN, .type = ENG_IVFFLAT};
        eng_store_fault_arm(fx_fault, nth);
        cdx_err err = eng_index_create(fx_eng, &c, &info);
        eng_store_fault_disarm(fx_fault);
        if (err != CDX_OK) {
            points++;
            cdx_err d2 = eng_index_describe(fx_eng, name, &info);
            /* describe answers for an unfinished create, saying so */
            CU_ASSERT_TRUE(d2 == CDX_ERR_NOT_FOUND ||
                           (d2 == CDX_OK && !strcmp(info.status, "incomplete") &&
                            !strcmp(info.state, "creating")));
            /* Creating again resumes or starts over, and works. */
            CU_ASSERT_EQUAL_FATAL(eng_index_create(fx_eng, &c, &info), CDX_OK);
        }
        fx_upsert(name, s.items, 5);
        CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
        if (err == CDX_OK)
            break;
    }
    CU_ASSERT_TRUE(points >= 2);

    /* Index deletion: after a crash, repeating the delete finishes it. */
    for (uint64_t nth = 1; nth < 32; nth++) {
        char name[64];
        fx_uniq_name(name, "crashd");
        eng_index_info info;
        fx_create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, &info);
        fx_upsert(name, s.items, 10);
        eng_store_fault_arm(fx_fault, nth);
        cdx_err err = eng_index_delete(fx_eng, name, info.id);
        eng_store_fault_disarm(fx_fault);
        if (err == CDX_OK)
            break;
        eng_index_info x;
        cdx_err d2 = eng_index_describe(fx_eng, name, &x);
        /* Still whole (the key check came first), or marked deleting: never half-usable. */
        CU_ASSERT_TRUE(d2 == CDX_OK || d2 == CDX_ERR_FAILED_PRECONDITION ||
                       d2 == CDX_ERR_NOT_FOUND);
        cdx_err d3 = eng_index_delete(fx_eng, name, info.id);
        CU_ASSERT_TRUE(d3 == CDX_OK || d3 == CDX_ERR_NOT_FOUND);
        CU_ASSERT_EQUAL(eng_index_describe(fx_eng, name, &x), CDX_ERR_NOT_FOUND);
    }
    fx_ds_free(&s);
}

/*
 * A batch large enough for the parallel write path (many segments built on
 * several threads, written in the background while the commit is sealed):
 * a crash after any store write still leaves before or after.
 */
static void test_crash_parallel(void)
{
    const size_t d = 8;
    fx_dataset s;
    fx_ds_make(&s, 400, d, "cp");
    int points = 0, before = 0, after = 0;
    for (uint64_t nth = 1; nth < 200; nth++) {
        char name[64];
        fx_uniq_name(name, "crashp");
        eng_index_info info;
        fx_create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 32, &info);
        fx_upsert(name, s.items, 200);
        uint64_t v = 0;
        CU_ASSERT_EQUAL_FATAL(eng_train(fx_eng, name, NULL, &v), CDX_OK);
        /* 100 updates (old copies tombstoned) and 100 new items, over up to 32 clusters. */
        eng_store_fault_arm(fx_fault, nth);
        cdx_err err = eng_upsert(fx_eng, name, s.items + 100, 200, &v);
        eng_store_fault_disarm(fx_fault);
        long st = fx_observe(name, &s, 200, 300);
        if (err == CDX_OK) {
            CU_ASSERT_EQUAL(st, 300 * 1000 + 100);
            CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
            break;
        }
        points++;
        CU_ASSERT_TRUE(st == 200 * 1000 || st == 300 * 1000 + 100);
        before += st == 200 * 1000;
        after += st == 300 * 1000 + 100;
        CU_ASSERT_TRUE(fx_observe(name, &s, 0, 200) >= 0);
        /* The index takes the next batch after the crash (the write cache was not kept). */
        CU_ASSERT_EQUAL(eng_upsert(fx_eng, name, s.items + 300, 100, &v), CDX_OK);
        CU_ASSERT_EQUAL(fx_observe(name, &s, 300, 400) % 1000, 100);
        CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
    }
    CU_ASSERT_TRUE(points >= 10);
    fprintf(stderr, "  [crash] parallel upsert: %d crash points, %d before, %d after\n", points,
            before, after);
    fx_ds_free(&s);
}

static void test_crash_delete(void)
{
    const size_t d = 8, n = 30, nq = 6;
    fx_dataset s;
    fx_ds_make(&s, n, d, "cd");
    float qs[6 * 8];
    fx_rand_vec(qs, nq * d);
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
            fx_uniq_name(name, trained ? "crashdelt" : "crashdel");
            eng_index_info info;
            fx_create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, trained ? 4 : 0, &info);
            fx_upsert(name, s.items, 15);
            fx_upsert(name, s.items + 15, 15);
            uint64_t v = 0, nd = 0;
            if (trained)
                CU_ASSERT_EQUAL_FATAL(eng_train(fx_eng, name, NULL, &v), CDX_OK);
            eng_store_fault_arm(fx_fault, nth);
            cdx_err err = eng_delete(fx_eng, name, del, dl, 10, &nd, &v);
            eng_store_fault_disarm(fx_fault);
            if (err == CDX_OK) {
                done = true; /* past the last write */
                CU_ASSERT_EQUAL(nd, 10);
                CU_ASSERT_EQUAL(fx_check_model(NULL, name, &s, after, qs, nq, NULL, NULL, false),
                                0);
            } else {
                CU_ASSERT_EQUAL(err, CDX_ERR_STORE_UNAVAILABLE);
                points++;
                /* Before (30, all present) or after (20, the 10 gone): never between. */
                int b = fx_check_model(NULL, name, &s, before, qs, nq, NULL, NULL, true);
                int a = b ? fx_check_model(NULL, name, &s, after, qs, nq, NULL, NULL, true) : 1;
                if (b && a) {
                    fprintf(stderr, "\n  [crash] delete, write %llu: neither before nor after",
                            (unsigned long long)nth);
                    fx_check_model(NULL, name, &s, before, qs, nq, NULL, NULL, false);
                    CU_FAIL("a crashed delete left a state between before and after");
                }
                nb += b == 0;
                na += b && a == 0;
                /* The crashed appliance restarts and the delete completes. */
                err = eng_delete(fx_eng, name, del, dl, 10, &nd, &v);
                CU_ASSERT_EQUAL(err, CDX_OK);
                CU_ASSERT_EQUAL(nd, b == 0 ? 10 : 0);
                CU_ASSERT_EQUAL(fx_check_model(NULL, name, &s, after, qs, nq, NULL, NULL, false),
                                0);
                CU_ASSERT_EQUAL(fx_check_model(fx_eng, name, &s, after, qs, nq, NULL, NULL, false),
                                0);
            }
            CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
        }
        CU_ASSERT_TRUE(done);
        CU_ASSERT_TRUE(points >= 3);
        fprintf(stderr, "  [crash] delete (%s): %d crash points, %d before, %d after\n",
                trained ? "trained" : "untrained", points, nb, na);
    }
    fx_ds_free(&s);
}

/*
 * Build the index for the compaction crash test; m holds the final model
 * (alive: *alive_out), o the superseded vectors and metadata of the same ids.
 *   untrained: 3 upserts (the third updates 5 items) and a delete: 4 segments
 *     in cluster 0, with update and delete tombstones;
 *   trained (4 lists): 80 items, train, then 20 new, 20 updated, 10 deleted:
 *     up to 4 segments per cluster.
 */
static void compact_setup(const char *name, int trained, const fx_dataset *m, const fx_dataset *o,
                          eng_index_info *info)
{
    eng_item *b = malloc(m->n * sizeof(eng_item));
    const char *del[10];
    size_t dl[10];
    uint64_t v = 0, nd = 0;
    if (!trained) { /* 40 items */
        fx_create(name, m->d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, info);
        memcpy(b, o->items, 5 * sizeof(eng_item));
        memcpy(b + 5, m->items + 5, 10 * sizeof(eng_item));
        fx_upsert(name, b, 15);
        fx_upsert(name, m->items + 15, 15);
        memcpy(b, m->items + 30, 10 * sizeof(eng_item));
        memcpy(b + 10, m->items, 5 * sizeof(eng_item));
        fx_upsert(name, b, 15);
        for (size_t i = 0; i < 5; i++) {
            del[i] = m->ids[35 + i];
            dl[i] = strlen(del[i]);
        }
        CU_ASSERT_EQUAL(eng_delete(fx_eng, name, del, dl, 5, &nd, &v), CDX_OK);
        CU_ASSERT_EQUAL(nd, 5);
    } else { /* 100 items */
        fx_create(name, m->d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 4, info);
        memcpy(b, o->items, 20 * sizeof(eng_item));
        memcpy(b + 20, m->items + 20, 60 * sizeof(eng_item));
        fx_upsert(name, b, 80);
        CU_ASSERT_EQUAL_FATAL(eng_train(fx_eng, name, NULL, &v), CDX_OK);
        fx_upsert(name, m->items + 80, 20);
        fx_upsert(name, m->items, 20);
        for (size_t i = 0; i < 10; i++) {
            del[i] = m->ids[90 + i];
            dl[i] = strlen(del[i]);
        }
        CU_ASSERT_EQUAL(eng_delete(fx_eng, name, del, dl, 10, &nd, &v), CDX_OK);
        CU_ASSERT_EQUAL(nd, 10);
    }
    free(b);
    CU_ASSERT_EQUAL(eng_index_describe(fx_eng, name, info), CDX_OK);
}

static void test_crash_compact(void)
{
    const size_t d = 8, nq = 8;
    float qs[8 * 8];
    fx_rand_vec(qs, nq * d);
    for (int trained = 0; trained < 2; trained++) {
        const size_t n = trained ? 100 : 40, ndead = trained ? 10 : 5;
        fx_dataset m, o;
        fx_ds_make(&m, n, d, "cc");
        fx_ds_make(&o, n, d, "cc"); /* same ids, other vectors and metadata */
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
            fx_uniq_name(name, trained ? "crashct" : "crashcu");
            eng_index_info info, now;
            compact_setup(name, trained, &m, &o, &info);
            if (!trained) {
                CU_ASSERT_EQUAL(info.n_clusters, 0);
                CU_ASSERT_EQUAL(info.segments, 4);
            } else {
                CU_ASSERT_EQUAL(info.n_clusters, 4);
                CU_ASSERT_TRUE(info.segments >= 10); /* several per cluster */
            }
            fx_qres base[8], cur[8];
            /* The reference: what the index answers before the compaction (and brute force). */
            CU_ASSERT_EQUAL_FATAL(fx_check_model(NULL, name, &m, alive, qs, nq, base, NULL, false),
                                  0);
            eng_store_fault_arm(fx_fault, nth);
            uint64_t v = 0;
            cdx_err err = eng_compact(fx_eng, name, &v);
            eng_store_fault_disarm(fx_fault);
            if (err == CDX_OK) {
                done = true;
            } else {
                CU_ASSERT_EQUAL(err, CDX_ERR_STORE_UNAVAILABLE);
                points++;
                /* Nothing changed that anyone can see. */
                CU_ASSERT_EQUAL(fx_check_model(NULL, name, &m, alive, qs, nq, cur, base, false), 0);
                CU_ASSERT_EQUAL(eng_index_describe(fx_eng, name, &now), CDX_OK);
                CU_ASSERT_EQUAL(now.count, info.count);
                CU_ASSERT_EQUAL(now.version, info.version);
                CU_ASSERT_EQUAL(now.segments, info.segments);
                /* The restarted appliance compacts again. */
                CU_ASSERT_EQUAL(eng_compact(fx_eng, name, &v), CDX_OK);
            }
            CU_ASSERT_EQUAL(fx_check_model(NULL, name, &m, alive, qs, nq, cur, base, false), 0);
            CU_ASSERT_EQUAL(fx_check_model(fx_eng, name, &m, alive, qs, nq, cur, base, false), 0);
            CU_ASSERT_EQUAL(eng_index_describe(fx_eng, name, &now), CDX_OK);
            CU_ASSERT_EQUAL(now.count, info.count);
            CU_ASSERT_EQUAL(now.version, info.version + 1);
            CU_ASSERT_EQUAL(now.segments, trained ? 4 : 1); /* one per (non-empty) cluster */
            CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
        }
        CU_ASSERT_TRUE(done);
        CU_ASSERT_TRUE(points >= 3);
        fprintf(stderr, "  [crash] compact (%s): %d crash points\n",
                trained ? "trained" : "untrained", points);
        fx_ds_free(&m);
        fx_ds_free(&o);
    }
}

static const fx_test tests[] = {
    {"crash at every store write", test_crash_points},
    {"crash at every store write: parallel upsert", test_crash_parallel},
    {"crash at every store write: delete", test_crash_delete},
    {"crash at every store write: compaction", test_crash_compact},
};

int main(void)
{
    return fx_engine_run(tests, FX_LEN(tests));
}
