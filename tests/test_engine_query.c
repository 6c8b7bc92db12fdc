/*
 * test_engine_query.c - the encrypted IVF engine, queries: exact exhaustive search for every
 * metric, trained IVF recall and compaction, SQ8, the screened scan, filters and paging, cosine and
 * inner product.
 * Run against the memory store and against Redis (fixture), on a
 * throwaway SoftHSM token (tests/fixtures/fx_engine.h).
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
#include "cdx_limits.h"
#include "eng.h"
#include "eng_store.h"
#include "fx_cunit.h"
#include "fx_engine.h"
#include "fx_tmp.h"
#include "hsm_custody.h"
#include "hsm_keys.h"

/* Exhaustive (untrained) search is exact for every metric. */
static void test_exact_metrics(void)
{
    eng_metric ms[4] = {ENG_METRIC_EUCLIDEAN, ENG_METRIC_SQUARED_EUCLIDEAN, ENG_METRIC_COSINE,
                        ENG_METRIC_INNER_PRODUCT};
    const size_t d = 24, n = 300, k = 10;
    fx_dataset s;
    fx_ds_make(&s, n, d, "x");
    /* Unnormalised on purpose: scale rows differently. */
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < d; j++)
            s.x[i * d + j] *= (float)(1 + i % 7);
    for (int mi = 0; mi < 4; mi++) {
        char name[64];
        fx_uniq_name(name, "metric");
        eng_index_info info;
        fx_create(name, d, ms[mi], ENG_IVFFLAT, 0, &info);
        fx_upsert(name, s.items, n);
        for (int qi = 0; qi < 5; qi++) {
            float q[24];
            fx_rand_vec(q, d);
            size_t want[10];
            double wd[10];
            fx_ref_topk(&s, NULL, ms[mi], q, k, want, wd);
            eng_query qq = {.vectors = q, .nq = 1, .top_k = k, .want = ENG_WANT_DISTANCE};
            eng_query_result *r = NULL;
            CU_ASSERT_EQUAL_FATAL(eng_query_run(fx_eng, name, &qq, &r), CDX_OK);
            CU_ASSERT_EQUAL(r->n[0], k);
            for (size_t i = 0; i < r->n[0]; i++) {
                CU_ASSERT_STRING_EQUAL(r->hits[0][i].id, s.ids[want[i]]);
                CU_ASSERT_TRUE(fabs(r->hits[0][i].distance - wd[i]) < 1e-3 * (1 + fabs(wd[i])));
            }
            eng_query_result_free(r);
        }
        CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
    }
    fx_ds_free(&s);
}

/*
 * Recall@10 of nq queries, rows (first + i * step) % s->n of s, against the exact top 10 of the
 * rows alive[] marks (NULL: all) under metric m. *probed (may be NULL): the clusters the last
 * query probed. -1 when a query fails.
 */
static double recall_rows(const char *name, const fx_dataset *s, const bool *alive, eng_metric m,
                          uint32_t nprobe, size_t first, size_t step, size_t nq, uint32_t *probed)
{
    size_t hit = 0, k = 10;
    for (size_t qi = 0; qi < nq; qi++) {
        const float *q = s->x + ((first + qi * step) % s->n) * s->d;
        size_t want[10];
        fx_ref_topk(s, alive, m, q, k, want, NULL);
        eng_query qq = {.vectors = q, .nq = 1, .top_k = k, .n_probes = nprobe};
        eng_query_result *r = NULL;
        if (eng_query_run(fx_eng, name, &qq, &r) != CDX_OK)
            return -1;
        if (probed)
            *probed = r->n_probes;
        for (size_t i = 0; i < r->n[0]; i++)
            for (size_t j = 0; j < k; j++)
                if (!strcmp(r->hits[0][i].id, s->ids[want[j]]))
                    hit++;
        eng_query_result_free(r);
    }
    return (double)hit / (double)(nq * k);
}

/* Recall@10 of nq queries spread over the rows of s, against every row. */
static double recall(const char *name, const fx_dataset *s, eng_metric m, uint32_t nprobe,
                     size_t nq)
{
    return recall_rows(name, s, NULL, m, nprobe, 0, 37, nq, NULL);
}

static void test_train(void)
{
    const size_t d = 16, n = 2000;
    fx_dataset s;
    fx_make_blobs(&s, n, d, 16, 0);
    eng_index_type types[2] = {ENG_IVFFLAT, ENG_IVFSQ8};
    for (int t = 0; t < 2; t++) {
        char name[64];
        fx_uniq_name(name, "train");
        eng_index_info info;
        fx_create(name, d, ENG_METRIC_EUCLIDEAN, types[t], 16, &info);
        fx_upsert(name, s.items, n / 2);
        uint64_t v = 0;
        cdx_err err = eng_train(fx_eng, name, NULL, &v);
        if (err)
            fprintf(stderr, "train: %s\n", cdx_err_detail());
        CU_ASSERT_EQUAL_FATAL(err, CDX_OK);
        /* Later upserts go to their cluster. */
        fx_upsert(name, s.items + n / 2, n / 2);
        CU_ASSERT_EQUAL(eng_index_describe(fx_eng, name, &info), CDX_OK);
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
        CU_ASSERT_EQUAL_FATAL(
            eng_get(fx_eng, name, &id, &l, 1, ENG_WANT_VECTOR | ENG_WANT_METADATA, 0, &g), CDX_OK);
        CU_ASSERT_EQUAL(memcmp(g->hits[0].vector, s.x + 123 * d, d * sizeof(float)), 0);
        CU_ASSERT_STRING_EQUAL(g->hits[0].metadata, s.meta[123]);
        eng_get_result_free(g);
        /* Compaction keeps every answer. */
        double before = recall(name, &s, ENG_METRIC_EUCLIDEAN, 4, 40);
        CU_ASSERT_EQUAL(eng_compact(fx_eng, name, &v), CDX_OK);
        CU_ASSERT_EQUAL(eng_index_describe(fx_eng, name, &info), CDX_OK);
        CU_ASSERT_TRUE(info.segments <= 16);
        CU_ASSERT_EQUAL(info.count, n);
        CU_ASSERT_TRUE(fabs(recall(name, &s, ENG_METRIC_EUCLIDEAN, 4, 40) - before) < 1e-9);
        /* Warming loads every block a query can need: the next queries miss nothing. */
        uint64_t nb = 0;
        eng_stats st0, st1;
        CU_ASSERT_EQUAL(eng_index_warm(fx_eng, name, &nb), CDX_OK);
        CU_ASSERT_EQUAL(nb, info.segments);
        eng_get_stats(fx_eng, &st0);
        CU_ASSERT_TRUE(fabs(recall(name, &s, ENG_METRIC_EUCLIDEAN, 16, 40) - r16) < 1e-9);
        eng_get_stats(fx_eng, &st1);
        CU_ASSERT_EQUAL(st1.cache_misses, st0.cache_misses);
        CU_ASSERT_TRUE(st1.cache_hits > st0.cache_hits);
        CU_ASSERT_EQUAL(eng_index_warm(fx_eng, "no-such-index", NULL), CDX_ERR_NOT_FOUND);
        /* Per-thread stage times: this thread's query shows up, and reading resets them. */
        uint64_t stg[ENG_STAGE_COUNT];
        eng_thread_stages(stg);
        CU_ASSERT_TRUE(recall(name, &s, ENG_METRIC_EUCLIDEAN, 4, 1) >= 0);
        eng_thread_stages(stg);
        CU_ASSERT_TRUE(stg[ENG_STAGE_HEAD] > 0 && stg[ENG_STAGE_COARSE] > 0 &&
                       stg[ENG_STAGE_DISTANCE] > 0);
        eng_thread_stages(stg);
        CU_ASSERT_EQUAL(stg[ENG_STAGE_COARSE], 0);
        CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
    }
    fx_ds_free(&s);
}

/* SQ8 is lossless on integer data spanning 0..255 per dimension. */
static void test_sq8_exact(void)
{
    const size_t d = 32, n = 1500;
    fx_dataset s;
    fx_make_blobs(&s, n, d, 8, 1);
    for (size_t j = 0; j < d; j++) { /* make every dim span 0..255 */
        s.x[j] = 0;
        s.x[d + j] = 255;
    }
    char name[64];
    fx_uniq_name(name, "sq8");
    eng_index_info info;
    fx_create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFSQ8, 8, &info);
    fx_upsert(name, s.items, n);
    eng_train_opts o = {.max_points_per_list = 256};
    uint64_t v;
    CU_ASSERT_EQUAL_FATAL(eng_train(fx_eng, name, &o, &v), CDX_OK);
    for (int qi = 0; qi < 20; qi++) {
        const float *q = s.x + (size_t)(qi * 71) * d;
        size_t want[10];
        double wd[10];
        fx_ref_topk(&s, NULL, ENG_METRIC_EUCLIDEAN, q, 10, want, wd);
        eng_query qq = {.vectors = q, .nq = 1, .top_k = 10, .n_probes = 8};
        eng_query_result *r = NULL;
        CU_ASSERT_EQUAL_FATAL(eng_query_run(fx_eng, name, &qq, &r), CDX_OK);
        for (size_t i = 0; i < 10; i++)
            CU_ASSERT_TRUE(fabs(r->hits[0][i].distance - wd[i]) < 1e-2 * (1 + wd[i]));
        CU_ASSERT_EQUAL(r->n_probes, 8);
        /* More probes than clusters: all of them, as Faiss does; the same answer, and the
         * result says 8 were probed (issue 13: clamped, not INVALID_ARGUMENT). */
        eng_query more = qq;
        more.n_probes = 1000;
        eng_query_result *r2 = NULL;
        CU_ASSERT_EQUAL_FATAL(eng_query_run(fx_eng, name, &more, &r2), CDX_OK);
        CU_ASSERT_EQUAL(r2->n_probes, 8);
        CU_ASSERT_EQUAL_FATAL(r2->n[0], r->n[0]);
        for (size_t i = 0; i < r->n[0]; i++)
            CU_ASSERT_EQUAL(r2->hits[0][i].distance, r->hits[0][i].distance);
        eng_query_result_free(r2);
        eng_query_result_free(r);
    }
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
    fx_ds_free(&s);
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
    fx_dataset s;
    fx_make_blobs(&s, n, d, 12, 0);
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
            fx_uniq_name(name, "screen");
            eng_index_info info;
            fx_create(name, d, metrics[mi], type, 16, &info);
            fx_upsert(name, s.items, n / 2);
            uint64_t v = 0;
            CU_ASSERT_EQUAL_FATAL(eng_train(fx_eng, name, NULL, &v), CDX_OK);
            fx_upsert(name, s.items + n / 2, n / 2);
            /* Tombstones: deletes and updates land in later segments. */
            const char *del[8];
            size_t dl[8];
            for (int i = 0; i < 8; i++) {
                del[i] = s.ids[i * 113 + 7];
                dl[i] = strlen(del[i]);
            }
            uint64_t deleted = 0;
            CU_ASSERT_EQUAL(eng_delete(fx_eng, name, del, dl, 8, &deleted, &v), CDX_OK);
            for (size_t qi = 0; qi < 12; qi++) {
                float q[40];
                for (size_t j = 0; j < d; j++)
                    q[j] = s.x[(qi * 131 % n) * d + j] + (qi % 3 ? fx_frand() * 0.5f : 0);
                for (size_t pi = 0; pi < 3; pi++)
                    for (int f = 0; f < 2; f++) {
                        const char *flt = f ? "{\"even\": true}" : NULL;
                        eng_query qq = {.vectors = q,
                                        .nq = 1,
                                        .top_k = 10,
                                        .n_probes = probes[pi],
                                        .filter = flt,
                                        .filter_len = flt ? strlen(flt) : 0};
                        eng_query_result *a = NULL, *b = NULL;
                        eng_set_screen(fx_eng, true);
                        eng_get_stats(fx_eng, &st0);
                        CU_ASSERT_EQUAL_FATAL(eng_query_run(fx_eng, name, &qq, &a), CDX_OK);
                        eng_get_stats(fx_eng, &st1);
                        screened += st1.rows_screened - st0.rows_screened;
                        rescored += st1.rows_rescored - st0.rows_rescored;
                        eng_set_screen(fx_eng, false);
                        CU_ASSERT_EQUAL_FATAL(eng_query_run(fx_eng, name, &qq, &b), CDX_OK);
                        eng_set_screen(fx_eng, true);
                        CU_ASSERT_EQUAL(a->n[0], b->n[0]);
                        for (size_t i = 0; i < a->n[0] && i < b->n[0]; i++) {
                            bool same = !strcmp(a->hits[0][i].id, b->hits[0][i].id) &&
                                        memcmp(&a->hits[0][i].distance, &b->hits[0][i].distance,
                                               sizeof(float)) == 0;
                            CU_ASSERT(same);
                            if (!same)
                                fprintf(
                                    stderr,
                                    "\n  [screen %s %s] q%zu np%u f%d rank %zu: %s %.9g vs %s %.9g",
                                    eng_index_type_name(type), eng_metric_name(metrics[mi]), qi,
                                    probes[pi], f, i, a->hits[0][i].id, a->hits[0][i].distance,
                                    b->hits[0][i].id, b->hits[0][i].distance);
                        }
                        compared++;
                        eng_query_result_free(a);
                        eng_query_result_free(b);
                    }
            }
            CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
        }
    fprintf(stderr, "\n  screen: %zu query pairs equal; %llu rows bounded, %llu rescored\n",
            compared, (unsigned long long)screened, (unsigned long long)rescored);
    CU_ASSERT(compared == 2 * 4 * 12 * 3 * 2);
    /* The screen must prune most rows (it is not silently scoring everything). */
    CU_ASSERT(screened > 0 && rescored * 4 < screened);
    fx_ds_free(&s);
}

static void test_filters_and_listing(void)
{
    const size_t d = 8, n = 400;
    fx_dataset s;
    fx_ds_make(&s, n, d, "f");
    char name[64];
    fx_uniq_name(name, "filt");
    eng_index_info info;
    fx_create(name, d, ENG_METRIC_SQUARED_EUCLIDEAN, ENG_IVFFLAT, 0, &info);
    fx_upsert(name, s.items, n);
    const char *flt = "{\"even\": true, \"n\": {\"$lt\": 100}}";
    eng_query q = {.vectors = s.x,
                   .nq = 1,
                   .top_k = 100,
                   .filter = flt,
                   .filter_len = strlen(flt),
                   .want = ENG_WANT_METADATA};
    eng_query_result *r = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_query_run(fx_eng, name, &q, &r), CDX_OK);
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
    CU_ASSERT_EQUAL_FATAL(eng_query_run(fx_eng, name, &qb, &r), CDX_OK);
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
        CU_ASSERT_EQUAL_FATAL(eng_list_ids(fx_eng, name, cursor, 33, &ids, &lens, &k, &next),
                              CDX_OK);
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
    CU_ASSERT_EQUAL(eng_list_ids(fx_eng, name, "00ff", 10, &ids, &lens, &k, &next),
                    CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL_FATAL(eng_list_ids(fx_eng, name, NULL, 10, &ids, &lens, &k, &next), CDX_OK);
    eng_ids_free(ids, lens, k);
    CU_ASSERT_PTR_NOT_NULL_FATAL(next);
    next[strlen(next) - 3] = next[strlen(next) - 3] == 'a' ? 'b' : 'a';
    CU_ASSERT_EQUAL(eng_list_ids(fx_eng, name, next, 10, &ids, &lens, &k, &cursor),
                    CDX_ERR_INVALID_ARGUMENT);
    free(next);

    /* Review L6: a cursor is bound to its principal and index, expires, and its sealing key
     * changes with the window (a cursor from two windows back does not open). */
    const uint64_t t0 = 1800000000000ull, w = CDX_CURSOR_WINDOW_MS;
    CU_ASSERT_EQUAL_FATAL(
        eng_list_ids_for(fx_eng, name, "uri:a", 5, t0, NULL, 10, &ids, &lens, &k, &next), CDX_OK);
    eng_ids_free(ids, lens, k);
    CU_ASSERT_PTR_NOT_NULL_FATAL(next);
    static const struct {
        const char *bind;
        uint64_t at;
        cdx_err want;
        const char *why;
    } uses[] = {
        {"uri:a", t0 + 1000, CDX_OK, NULL},
        {"uri:b", t0 + 1000, CDX_ERR_INVALID_ARGUMENT, "issued to this principal"},
        {"", t0 + 1000, CDX_ERR_INVALID_ARGUMENT, "issued to this principal"},
        {"uri:a", t0 + CDX_CURSOR_TTL_MS + 1, CDX_ERR_INVALID_ARGUMENT, "expired"},
        {"uri:a", t0 + 2 * w + w, CDX_ERR_INVALID_ARGUMENT, "expired"},
        {"uri:a", t0 - 2 * CDX_CURSOR_SKEW_MS, CDX_ERR_INVALID_ARGUMENT, "expired"},
    };
    for (size_t i = 0; i < FX_LEN(uses); i++) {
        char *nx = NULL;
        cdx_err e = eng_list_ids_for(fx_eng, name, uses[i].bind, strlen(uses[i].bind), uses[i].at,
                                     next, 10, &ids, &lens, &k, &nx);
        CU_ASSERT_EQUAL(e, uses[i].want);
        if (uses[i].why)
            CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), uses[i].why));
        if (!e)
            eng_ids_free(ids, lens, k);
        free(nx);
    }
    /* The same position in the next window: a cursor under that window's key. */
    char *later = NULL;
    CU_ASSERT_EQUAL_FATAL(
        eng_list_ids_for(fx_eng, name, "uri:a", 5, t0 + w, NULL, 10, &ids, &lens, &k, &later),
        CDX_OK);
    eng_ids_free(ids, lens, k);
    CU_ASSERT_NOT_EQUAL(strncmp(later, next, 8), 0); /* the window prefix differs */
    free(later);
    free(next);
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
    fx_ds_free(&s);
}

static int run_q(const char *name, const float *qs, size_t nq, uint32_t k, uint32_t probes,
                 eng_query_result **r)
{
    eng_query q = {
        .vectors = qs, .nq = nq, .top_k = k, .n_probes = probes, .want = ENG_WANT_DISTANCE};
    cdx_err err = eng_query_run(fx_eng, name, &q, r);
    if (err)
        fprintf(stderr, "query %s: %s: %s\n", name, cdx_err_name(err), cdx_err_detail());
    return err;
}

static void test_cosine_ip_scale(void)
{
    const size_t d = 16, n = 400, nq = 20, k = 10;
    fx_dataset nrm, scl;
    fx_make_blobs(&nrm, n, d, 8, 0);
    fx_ds_make(&scl, n, d, "b"); /* same ids as the blobs */
    for (size_t i = 0; i < n; i++) {
        float *x = nrm.x + i * d, *y = scl.x + i * d;
        double ss = 0;
        for (size_t j = 0; j < d; j++)
            ss += (double)x[j] * x[j];
        for (size_t j = 0; j < d; j++)
            x[j] = (float)(x[j] / sqrt(ss));
        float f = (float)exp(3.0 * fx_frand()); /* 0.05 .. 20 */
        for (size_t j = 0; j < d; j++)
            y[j] = x[j] * f;
    }
    float qs[20 * 16];
    for (size_t qi = 0; qi < nq; qi++) {
        float f = (float)exp(2.0 * fx_frand());
        for (size_t j = 0; j < d; j++) /* half near data points, half random */
            qs[qi * d + j] =
                (qi % 2 ? fx_frand() : nrm.x[(qi * 17) * d + j] + 0.1f * fx_frand()) * f;
    }
    char cn[64], cs[64], ipn[64];
    fx_uniq_name(cn, "cosnorm");
    fx_uniq_name(cs, "cosscaled");
    fx_uniq_name(ipn, "ipnorm");
    eng_index_info a, b, c;
    fx_create(cn, d, ENG_METRIC_COSINE, ENG_IVFFLAT, 8, &a);
    fx_create(cs, d, ENG_METRIC_COSINE, ENG_IVFFLAT, 8, &b);
    fx_create(ipn, d, ENG_METRIC_INNER_PRODUCT, ENG_IVFFLAT, 8, &c);
    fx_upsert(cn, nrm.items, n);
    fx_upsert(cs, scl.items, n);
    fx_upsert(ipn, nrm.items, n);
    const char *names[3] = {cn, cs, ipn};
    eng_index_info *infos[3] = {&a, &b, &c};
    for (int i = 0; i < 3; i++) {
        uint64_t v;
        CU_ASSERT_EQUAL_FATAL(eng_train(fx_eng, names[i], NULL, &v), CDX_OK);
        CU_ASSERT_EQUAL(eng_index_describe(fx_eng, names[i], infos[i]), CDX_OK);
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
        fx_ref_topk(&nrm, NULL, ENG_METRIC_COSINE, q, k, want, wd);
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
                fprintf(stderr, "\n  [cos] q%zu rank %zu: distance %g vs %g", qi, i, hn->distance,
                        hs->distance);
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
    CU_ASSERT_EQUAL_FATAL(eng_get(fx_eng, cs, ids, lens, 4, ENG_WANT_VECTOR, 0, &g), CDX_OK);
    for (int i = 0; i < 4; i++) {
        CU_ASSERT_TRUE_FATAL(g->found[i]);
        CU_ASSERT_EQUAL(memcmp(g->hits[i].vector, scl.x + rows[i] * d, d * sizeof(float)), 0);
    }
    eng_get_result_free(g);
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(eng_index_delete(fx_eng, names[i], infos[i]->id), CDX_OK);
    fx_ds_free(&nrm);
    fx_ds_free(&scl);
}

/* A get or a query reads each segment's metadata and vector block once, not once per hit. */
static void test_blocks_once(void)
{
    const size_t d = 8, n = 60, k = 40;
    fx_dataset s;
    fx_ds_make(&s, n, d, "once");
    char name[64];
    fx_uniq_name(name, "once");
    eng_index_info info;
    /* IVFSQ8: originals live in vector blocks, apart from the search codes. */
    fx_create(name, d, ENG_METRIC_SQUARED_EUCLIDEAN, ENG_IVFSQ8, 0, &info);
    fx_upsert(name, s.items, n); /* one batch: one segment */
    const char *ids[40];
    size_t lens[40];
    for (size_t i = 0; i < k; i++) {
        ids[i] = s.ids[i];
        lens[i] = strlen(ids[i]);
    }
    uint64_t r0 = eng_store_fault_ranges(fx_store);
    eng_get_result *g = NULL;
    CU_ASSERT_EQUAL_FATAL(
        eng_get(fx_eng, name, ids, lens, k, ENG_WANT_VECTOR | ENG_WANT_METADATA, 0, &g), CDX_OK);
    uint64_t got = eng_store_fault_ranges(fx_store) - r0;
    CU_ASSERT(got <= 2); /* one vector block, one metadata block: was 2 per id */
    for (size_t i = 0; i < k; i++) {
        CU_ASSERT_FATAL(g->found[i]);
        CU_ASSERT_EQUAL(memcmp(g->hits[i].vector, s.x + i * d, d * sizeof(float)), 0);
        CU_ASSERT_STRING_EQUAL(g->hits[i].metadata, s.meta[i]);
    }
    eng_get_result_free(g);
    /* A query (its blocks warm in the cache after a first run) reads the metadata block once. */
    eng_query q = {.vectors = s.x + 5 * d,
                   .nq = 1,
                   .top_k = 30,
                   .want = ENG_WANT_DISTANCE | ENG_WANT_VECTOR | ENG_WANT_METADATA};
    eng_query_result *qr = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_query_run(fx_eng, name, &q, &qr), CDX_OK);
    eng_query_result_free(qr);
    r0 = eng_store_fault_ranges(fx_store);
    CU_ASSERT_EQUAL_FATAL(eng_query_run(fx_eng, name, &q, &qr), CDX_OK);
    got = eng_store_fault_ranges(fx_store) - r0;
    CU_ASSERT(got <= 1); /* was one metadata and one vector block per hit */
    CU_ASSERT_EQUAL_FATAL(qr->n[0], 30);
    for (size_t i = 0; i < qr->n[0]; i++) {
        const eng_hit *h = &qr->hits[0][i];
        size_t j = 0;
        while (j < n && strcmp(s.ids[j], h->id))
            j++;
        CU_ASSERT_FATAL(j < n);
        CU_ASSERT_STRING_EQUAL(h->metadata, s.meta[j]);
        CU_ASSERT_EQUAL(memcmp(h->vector, s.x + j * d, d * sizeof(float)), 0);
    }
    eng_query_result_free(qr);
    /* Three query vectors hitting the same segment: still once per request. */
    float q3[3 * 8];
    for (int i = 0; i < 3; i++)
        memcpy(q3 + i * d, s.x + (size_t)(5 + i) * d, d * sizeof(float));
    q.vectors = q3;
    q.nq = 3;
    r0 = eng_store_fault_ranges(fx_store);
    CU_ASSERT_EQUAL_FATAL(eng_query_run(fx_eng, name, &q, &qr), CDX_OK);
    uint64_t got3 = eng_store_fault_ranges(fx_store) - r0;
    CU_ASSERT(got3 <= 1);
    for (size_t t = 0; t < 3; t++) {
        CU_ASSERT_EQUAL(qr->n[t], 30);
        CU_ASSERT(qr->n[t] && !strcmp(qr->hits[t][0].id, s.ids[5 + t]));
        for (size_t i = 0; i < qr->n[t]; i++) {
            size_t j = 0;
            while (j < n && strcmp(s.ids[j], qr->hits[t][i].id))
                j++;
            CU_ASSERT_FATAL(j < n);
            CU_ASSERT_STRING_EQUAL(qr->hits[t][i].metadata, s.meta[j]);
        }
    }
    eng_query_result_free(qr);
    printf("\n    get of %zu ids, a query of top_k 30 and one of 3 x 30 read %llu and %llu block "
           "ranges ",
           k, (unsigned long long)got, (unsigned long long)got3);
    fx_ds_free(&s);
}

/*
 * A clustered synthetic set: nb centres uniform in [-4, 4)^d, points around them with
 * near-Gaussian noise (sum of three uniforms, sd 1), blob i % nb. Rows [0, n) are indexed,
 * the rest are held-out queries.
 */
static void make_gblobs(fx_dataset *s, size_t n, size_t d, size_t nb)
{
    fx_ds_make(s, n, d, "g");
    float *cent = malloc(nb * d * sizeof(float));
    for (size_t i = 0; i < nb * d; i++)
        cent[i] = fx_frand() * 4;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < d; j++)
            s->x[i * d + j] = cent[(i % nb) * d + j] + fx_frand() + fx_frand() + fx_frand();
    free(cent);
}

/* Recall@10 of queries rows [n, s->n) against the exact top 10 of rows [0, n). */
static double recall_held(const char *name, const fx_dataset *s, size_t n, uint32_t nprobe,
                          uint32_t *probed)
{
    bool *alive = calloc(s->n, sizeof(bool));
    for (size_t i = 0; i < n; i++)
        alive[i] = true;
    double r = recall_rows(name, s, alive, ENG_METRIC_EUCLIDEAN, nprobe, n, 1, s->n - n, probed);
    free(alive);
    return r;
}

/*
 * Issue 13: the automatic n_probes gives recall@10 >= 0.9 on clustered data, with the
 * automatic list count (sqrt(n)). The old default, ceil(n_clusters / 32), probed 2 of the
 * 63 clusters here.
 */
static void test_default_probes_recall(void)
{
    const size_t d = 32, n = 4000, nq = 200;
    CU_ASSERT_EQUAL(eng_default_probes(0), 0);
    CU_ASSERT_EQUAL(eng_default_probes(1), 1);
    CU_ASSERT_EQUAL(eng_default_probes(5), 5);
    CU_ASSERT_EQUAL(eng_default_probes(44), 8);
    CU_ASSERT_EQUAL(eng_default_probes(100), 10);
    CU_ASSERT_EQUAL(eng_default_probes(1024), 32);
    CU_ASSERT_EQUAL(eng_default_probes(4096), 128);
    CU_ASSERT_EQUAL(eng_default_probes(65536), 2048);
    fx_dataset s;
    make_gblobs(&s, n + nq, d, 16);
    eng_index_type types[2] = {ENG_IVFFLAT, ENG_IVFSQ8};
    for (int t = 0; t < 2; t++) {
        char name[64];
        fx_uniq_name(name, "dflt");
        eng_index_info info;
        fx_create(name, d, ENG_METRIC_EUCLIDEAN, types[t], 0, &info);
        fx_upsert(name, s.items, n);
        uint64_t v = 0;
        CU_ASSERT_EQUAL_FATAL(eng_train(fx_eng, name, NULL, &v), CDX_OK);
        CU_ASSERT_EQUAL(eng_index_describe(fx_eng, name, &info), CDX_OK);
        CU_ASSERT_EQUAL(info.n_clusters, 63); /* floor(sqrt(4000)) */
        uint32_t pd = 0, p2 = 0, p4 = 0;
        double rd = recall_held(name, &s, n, 0, &pd);
        double r2 = recall_held(name, &s, n, 2, &p2);
        double r4 = recall_held(name, &s, n, 4, &p4);
        fprintf(stderr,
                "\n    [%s] %u clusters: recall@10 default (%u probes) %.3f, 2 probes %.3f, "
                "4 probes %.3f ",
                eng_index_type_name(types[t]), info.n_clusters, pd, rd, r2, r4);
        CU_ASSERT_EQUAL(pd, eng_default_probes(info.n_clusters));
        CU_ASSERT(rd >= 0.9);
        CU_ASSERT(r2 < rd); /* the data set separates the defaults: fewer probes, lower recall */
        CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
    }
    fx_ds_free(&s);
}

/* The ids of r's hits for query vector qi, as row numbers of s (prefix "g"). */
static void hit_rows(const eng_query_result *r, size_t qi, size_t *rows)
{
    for (size_t i = 0; i < r->n[qi]; i++)
        rows[i] = (size_t)atol(r->hits[qi][i].id + 1);
}

static eng_query_result *fq(eng *e, const char *name, const float *v, size_t nq, const char *flt,
                            uint32_t probes, uint32_t maxp)
{
    eng_query q = {.vectors = v,
                   .nq = nq,
                   .top_k = 10,
                   .n_probes = probes,
                   .max_probes = maxp,
                   .filter = flt,
                   .filter_len = flt ? strlen(flt) : 0,
                   .want = ENG_WANT_DISTANCE | ENG_WANT_METADATA};
    eng_query_result *r = NULL;
    cdx_err err = eng_query_run(e, name, &q, &r);
    if (err)
        fprintf(stderr, "query: %s: %s\n", cdx_err_name(err), cdx_err_detail());
    CU_ASSERT_EQUAL(err, CDX_OK);
    return r;
}

/*
 * Issue 13 / walkthrough 6: a filtered query that finds fewer than top_k matches in its
 * probed clusters widens (doubling) until top_k match or the limit (the query's max_probes,
 * the engine's [engine] max_probes, all clusters), reads each segment once, and says how many
 * clusters it probed; unfiltered queries never widen.
 */
static void test_probe_widening(void)
{
    const size_t d = 16, n = 3200, nb = 32;
    fx_dataset s;
    make_gblobs(&s, n, d, nb);
    char name[64];
    fx_uniq_name(name, "widen");
    eng_index_info info;
    fx_create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 64, &info);
    fx_upsert(name, s.items, n);
    uint64_t v = 0;
    CU_ASSERT_EQUAL_FATAL(eng_train(fx_eng, name, NULL, &v), CDX_OK);
    CU_ASSERT_EQUAL(eng_index_describe(fx_eng, name, &info), CDX_OK);
    CU_ASSERT_EQUAL_FATAL(info.n_clusters, 64);
    const uint32_t dflt = eng_default_probes(64); /* 8 */
    CU_ASSERT_EQUAL(dflt, 8);
    /* Rare: rows 0..31, one per blob, so spread over the clusters. */
    const char *rare = "{\"n\": {\"$lt\": 32}}", *none = "{\"n\": -1}";
    bool *israre = calloc(n, sizeof(bool));
    for (size_t i = 0; i < 32; i++)
        israre[i] = true;
    const float *q0 = s.x + 100 * d; /* a point of blob 100 % 32 = 4 */
    eng_stats st0, st1;

    /* Unfiltered: the default probes, no widening; max_probes changes nothing. */
    eng_get_stats(fx_eng, &st0);
    eng_query_result *u = fq(fx_eng, name, q0, 1, NULL, 0, 0);
    eng_query_result *u8 = fq(fx_eng, name, q0, 1, NULL, 8, 64);
    eng_get_stats(fx_eng, &st1);
    CU_ASSERT_EQUAL(st1.probe_widenings, st0.probe_widenings);
    CU_ASSERT_EQUAL(u->n_probes, dflt);
    CU_ASSERT_EQUAL(u->probed[0], dflt);
    CU_ASSERT_EQUAL(u8->n_probes, 8);
    CU_ASSERT_EQUAL_FATAL(u->n[0], 10);
    CU_ASSERT_EQUAL_FATAL(u8->n[0], 10);
    for (size_t i = 0; i < 10; i++) {
        CU_ASSERT_STRING_EQUAL(u->hits[0][i].id, u8->hits[0][i].id);
        CU_ASSERT_EQUAL(u->hits[0][i].distance, u8->hits[0][i].distance);
    }
    eng_query_result_free(u);
    eng_query_result_free(u8);

    /* No widening asked (max_probes at or below n_probes): few of the 32 rare items are in the
     * 8 nearest clusters, so fewer than 10 come back, and the answer says 8 were probed. */
    eng_query_result *nw = fq(fx_eng, name, q0, 1, rare, 0, 1);
    CU_ASSERT_EQUAL(nw->n_probes, dflt);
    CU_ASSERT(nw->n[0] < 10);
    size_t base_n = nw->n[0];

    /* Widened: top_k matches, more clusters probed than the default (a doubling of it), the
     * first matches found are kept, and every hit matches the filter. */
    eng_get_stats(fx_eng, &st0);
    eng_query_result *w = fq(fx_eng, name, q0, 1, rare, 0, 0);
    eng_get_stats(fx_eng, &st1);
    CU_ASSERT(st1.probe_widenings > st0.probe_widenings);
    CU_ASSERT_EQUAL_FATAL(w->n[0], 10);
    CU_ASSERT(w->n_probes > dflt);
    CU_ASSERT(w->n_probes == 16 || w->n_probes == 32 || w->n_probes == 64);
    CU_ASSERT_EQUAL(w->probed[0], w->n_probes);
    size_t rows[10];
    hit_rows(w, 0, rows);
    for (size_t i = 0; i < 10; i++)
        CU_ASSERT(rows[i] < 32);
    for (size_t i = 0; i < base_n; i++) { /* the unwidened hits are still there */
        bool found = false;
        for (size_t j = 0; j < 10; j++)
            found |= !strcmp(nw->hits[0][i].id, w->hits[0][j].id);
        CU_ASSERT(found);
    }
    fprintf(stderr, "\n    rare filter: %zu matches in %u probes; widened to %u probes for 10 ",
            base_n, dflt, w->n_probes);
    /* Widened to every cluster: exactly the brute-force filtered top 10. */
    eng_query_result *all = fq(fx_eng, name, q0, 1, rare, 64, 0);
    size_t want[10];
    CU_ASSERT_EQUAL(fx_ref_topk(&s, israre, ENG_METRIC_EUCLIDEAN, q0, 10, want, NULL), 10);
    CU_ASSERT_EQUAL_FATAL(all->n[0], 10);
    for (size_t i = 0; i < 10; i++)
        CU_ASSERT_STRING_EQUAL(all->hits[0][i].id, s.ids[want[i]]);
    eng_query_result_free(all);
    eng_query_result_free(w);
    eng_query_result_free(nw);

    /* The limit is respected: max_probes 12 stops at 12 (8, then 12, not 16). */
    eng_query_result *l = fq(fx_eng, name, q0, 1, rare, 0, 12);
    CU_ASSERT(l->n_probes <= 12);
    if (l->n[0] < 10)
        CU_ASSERT_EQUAL(l->n_probes, 12);
    eng_query_result_free(l);

    /* A filter nothing matches: widens to the limit, returns nothing, and says so. */
    eng_query_result *z = fq(fx_eng, name, q0, 1, none, 0, 0);
    CU_ASSERT_EQUAL(z->n[0], 0);
    CU_ASSERT_EQUAL(z->n_probes, 64);
    eng_query_result_free(z);
    z = fq(fx_eng, name, q0, 1, none, 0, 20);
    CU_ASSERT_EQUAL(z->n[0], 0);
    CU_ASSERT_EQUAL(z->n_probes, 20);
    eng_query_result_free(z);
    z = fq(fx_eng, name, q0, 1, none, 3, 5000); /* clamped to the 64 clusters */
    CU_ASSERT_EQUAL(z->n_probes, 64);
    eng_query_result_free(z);

    /* Each segment read once while widening: with search blocks warm in the cache, a
     * no-match query over all 64 clusters reads each segment's metadata block once (8 + 16 +
     * 32 + 64 = 120 reads if every round read its probes again). */
    eng_query_result_free(fq(fx_eng, name, q0, 1, none, 0, 0));
    uint64_t r0 = eng_store_fault_ranges(fx_store);
    eng_query_result_free(fq(fx_eng, name, q0, 1, none, 0, 0));
    uint64_t reads = eng_store_fault_ranges(fx_store) - r0;
    fprintf(stderr, "\n    no-match filter over %u segments: %llu block reads ", info.segments,
            (unsigned long long)reads);
    CU_ASSERT(reads <= info.segments);

    /* A batch: each query vector widens on its own; n_probes is the most any probed. One
     * query vector sits on a rare item (found at once among its probes), one does not. */
    float qb[2 * 16];
    memcpy(qb, s.x + 5 * d, d * sizeof(float)); /* rare row 5 itself */
    memcpy(qb + d, q0, d * sizeof(float));
    eng_query_result *b = fq(fx_eng, name, qb, 2, rare, 0, 0);
    CU_ASSERT_EQUAL(b->n[0], 10);
    CU_ASSERT_EQUAL(b->n[1], 10);
    CU_ASSERT(b->probed[0] >= dflt && b->probed[1] > dflt);
    CU_ASSERT_EQUAL(b->n_probes, b->probed[0] > b->probed[1] ? b->probed[0] : b->probed[1]);
    CU_ASSERT(b->hits[0] && !strcmp(b->hits[0][0].id, s.ids[5]));
    eng_query_result_free(b);

    /* The engine's limit ([engine] max_probes) when the query gives none: another engine on
     * the same store with max_probes 16. */
    char *dir = fx_tmpdir_new("widen-eng");
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    eng_config cfg = {.custody = fx_cust,
                      .store = fx_store,
                      .state_dir = dir,
                      .cache_bytes = 1 << 20,
                      .max_probes = 16};
    memcpy(cfg.deployment_id, fx_dep, 16);
    eng *e2 = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_new(&cfg, &e2), CDX_OK);
    z = fq(e2, name, q0, 1, none, 0, 0);
    CU_ASSERT_EQUAL(z->n_probes, 16);
    eng_query_result_free(z);
    z = fq(e2, name, q0, 1, none, 0, 32); /* the query's own limit wins */
    CU_ASSERT_EQUAL(z->n_probes, 32);
    eng_query_result_free(z);
    eng_free(e2);
    fx_rm_rf(dir);
    free(dir);

    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
    free(israre);
    fx_ds_free(&s);
}

static const fx_test tests[] = {
    {"exhaustive search exact for all metrics", test_exact_metrics},
    {"train, recall, compaction", test_train},
    {"IVFSQ8 lossless on 0..255 integers", test_sq8_exact},
    {"screened scan answers = full scan", test_screen_equivalence},
    {"filters and list_ids paging", test_filters_and_listing},
    {"cosine ignores scale; inner product on unit vectors", test_cosine_ip_scale},
    {"a get or query reads each segment block once", test_blocks_once},
    {"automatic n_probes: recall@10 >= 0.9 on clustered data", test_default_probes_recall},
    {"a filtered query short of top_k widens its probes", test_probe_widening},
};

int main(void)
{
    return fx_engine_run(tests, FX_LEN(tests));
}
