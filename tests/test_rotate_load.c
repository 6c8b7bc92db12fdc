/*
 * Online key rotation through the appliance, under load (docs/ROTATION.md):
 * a cipherdexd on a SoftHSM token and Redis, clients over mutual TLS. Three
 * query clients and one upsert client run for 2 s, then while an admin client
 * runs `rotate` with wait. Every request must succeed, every answer must hold
 * as many true neighbours as in a baseline pass (so recall@10 is unchanged),
 * and after the sweep ([engine] gc_grace_ms = 5 s, maintenance every 50 ms) no
 * record of the index in Redis is of the old epoch. Prints the figures
 * (items, rotation time, QPS before and during).
 *
 * The upserts either add items far from every query (they never enter a
 * top-10) or re-upsert base items unchanged, so the exact answers stay
 * fixed while the store sees a steady stream of commits.
 */
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <CUnit/Basic.h>

#include "app_client.h"
#include "cdx_hex.h"
#include "cdx_time.h"
#include "eng_record.h"
#include "eng_store.h"
#include "fx_client.h"
#include "fx_cunit.h"
#include "fx_proc.h"
#include "fx_stack.h"
#include "wire_msg.h"

#define N      20000
#define D      32
#define NB     16 /* blobs, each spread over several of the 128 lists */
#define LISTS  128
#define NQ     64
#define K      10
#define PROBES 2
#define NQT    3 /* query clients */

static fx_stack S = FX_STACK_INIT;
static float *X, *Q;
static char (*ids)[16];
static size_t (*gt)[K];
static uint64_t want[NQ];

static uint64_t rng = 88172645463325252ull;
static float frand(void) /* uniform in [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static void make_data(void)
{
    float cent[NB * D];
    for (size_t i = 0; i < NB * D; i++)
        cent[i] = frand() * 10;
    for (size_t i = 0; i < N; i++) {
        snprintf(ids[i], sizeof(ids[i]), "b%zu", i);
        for (size_t j = 0; j < D; j++)
            X[i * D + j] = cent[(i % NB) * D + j] + frand() * 3;
    }
    for (size_t q = 0; q < NQ; q++)
        for (size_t j = 0; j < D; j++)
            Q[q * D + j] = X[(q * 311 % N) * D + j] + frand() * 0.5f;
    /* Exact top-K by brute force (ties do not occur with random floats). */
    for (size_t q = 0; q < NQ; q++) {
        double best[K];
        for (size_t k = 0; k < K; k++)
            best[k] = INFINITY;
        for (size_t i = 0; i < N; i++) {
            double dd = 0;
            for (size_t j = 0; j < D; j++) {
                double t = (double)X[i * D + j] - Q[q * D + j];
                dd += t * t;
            }
            if (dd >= best[K - 1])
                continue;
            size_t k = K - 1;
            while (k > 0 && best[k - 1] > dd) {
                best[k] = best[k - 1];
                gt[q][k] = gt[q][k - 1];
                k--;
            }
            best[k] = dd;
            gt[q][k] = i;
        }
    }
}

/* True neighbours among one query's answer. */
static uint64_t hits_of(const Cipherdex__V1__QueryResponse *qr, size_t q)
{
    uint64_t h = 0;
    const Cipherdex__V1__QueryResult *r = qr->results[0];
    for (size_t j = 0; j < r->n_ids; j++)
        for (size_t g = 0; g < K; g++)
            h += r->ids[j].len == strlen(ids[gt[q][g]]) &&
                 !memcmp(r->ids[j].data, ids[gt[q][g]], r->ids[j].len);
    return h;
}

static cdx_err query1(app_client *c, size_t q, uint64_t *h)
{
    app_query_spec s = {.vectors = Q + q * D, .n_floats = D, .top_k = K, .n_probes = PROBES};
    wire_response *w = NULL;
    cdx_err err = app_client_query(c, "load", &s, &w);
    if (!err)
        *h = hits_of(wire_response_msg(w)->query, q);
    wire_response_free(w);
    return err;
}

typedef struct load {
    atomic_bool stop;
    atomic_uint_fast64_t queries, changed, upserts, failures;
    char first[300];
    pthread_mutex_t mu;
} load;

static void failed(load *l, const char *what, cdx_err err)
{
    pthread_mutex_lock(&l->mu);
    if (atomic_fetch_add(&l->failures, 1) == 0)
        snprintf(l->first, sizeof(l->first), "%s: %s %s", what, cdx_err_name(err),
                 cdx_err_detail());
    pthread_mutex_unlock(&l->mu);
}

static void *query_main(void *arg)
{
    load *l = arg;
    app_client *c = fx_stack_client(&S, S.admin);
    if (!c) {
        failed(l, "connect", CDX_ERR_UNAVAILABLE);
        return NULL;
    }
    for (size_t i = (size_t)pthread_self() % NQ; !atomic_load(&l->stop); i++) {
        uint64_t h = 0;
        cdx_err err = query1(c, i % NQ, &h);
        if (err) {
            failed(l, "query", err);
            continue;
        }
        atomic_fetch_add(&l->queries, 1);
        if (h != want[i % NQ])
            atomic_fetch_add(&l->changed, 1);
    }
    app_client_free(c);
    return NULL;
}

static void *upsert_main(void *arg)
{
    load *l = arg;
    app_client *c = fx_stack_client(&S, S.admin);
    if (!c) {
        failed(l, "connect", CDX_ERR_UNAVAILABLE);
        return NULL;
    }
    float v[10 * D];
    char fid[10][24];
    app_item it[10];
    for (size_t b = 0; !atomic_load(&l->stop); b++) {
        for (size_t i = 0; i < 10; i++) {
            if (b % 2) {
                size_t k = (b * 10 + i) % N;
                it[i] = (app_item){.id = ids[k], .vector = X + k * D, .dim = D};
            } else {
                snprintf(fid[i], sizeof(fid[i]), "far%zu", b * 10 + i);
                for (size_t j = 0; j < D; j++)
                    v[i * D + j] = 1000.0f + (float)((b * 10 + i + j) % 97);
                it[i] = (app_item){.id = fid[i], .vector = v + i * D, .dim = D};
            }
        }
        wire_response *w = NULL;
        cdx_err err = app_client_upsert(c, "load", it, 10, &w);
        wire_response_free(w);
        if (err)
            failed(l, "upsert", err);
        else
            atomic_fetch_add(&l->upserts, 1);
    }
    app_client_free(c);
    return NULL;
}

typedef struct threads {
    pthread_t t[NQT + 1];
} threads;

static void start(load *l, threads *t)
{
    atomic_store(&l->stop, false);
    atomic_store(&l->queries, 0);
    atomic_store(&l->upserts, 0);
    atomic_store(&l->changed, 0);
    for (int i = 0; i < NQT; i++)
        pthread_create(&t->t[i], NULL, query_main, l);
    pthread_create(&t->t[NQT], NULL, upsert_main, l);
}

static void stop(load *l, threads *t)
{
    atomic_store(&l->stop, true);
    for (int i = 0; i <= NQT; i++)
        pthread_join(t->t[i], NULL);
}

/* Records of the index in the stack's Redis, and how many are of another epoch than `epoch`. */
static void scan_epochs(eng_store *st, const uint8_t id[16], uint32_t epoch, size_t *records,
                        size_t *other)
{
    char hx[33], pat[2][64];
    cdx_hex_encode(id, 16, hx);
    snprintf(pat[0], sizeof(pat[0]), "cdx:%s:*", hx);
    snprintf(pat[1], sizeof(pat[1]), "cdx:{%s}:*", hx);
    *records = *other = 0;
    for (int p = 0; p < 2; p++) {
        uint64_t cur = 0;
        do {
            char **keys = NULL;
            size_t n = 0;
            CU_ASSERT_EQUAL_FATAL(eng_store_scan(st, pat[p], &cur, &keys, &n), CDX_OK);
            eng_val *v = calloc(n + 1, sizeof(*v));
            CU_ASSERT_EQUAL_FATAL(eng_store_mget(st, (const char *const *)keys, n, v), CDX_OK);
            for (size_t i = 0; i < n; i++) {
                eng_rec_hdr h;
                if (!v[i].found)
                    continue;
                (*records)++;
                if (eng_rec_header(v[i].data, v[i].len, &h) || h.epoch != epoch)
                    (*other)++;
            }
            eng_vals_free(v, n);
            free(v);
            eng_keys_free(keys, n);
        } while (cur);
    }
}

/* One rotation under load, and what the clients saw meanwhile. */
typedef struct during {
    uint32_t from, to, epoch;
    uint64_t items, run_ms, version, queries, upserts, changed;
    uint32_t attempts;
    uint64_t seen_done, seen_total; /* the most progress describe showed meanwhile */
    bool seen_rotating;             /* describe said "rotating" at least once */
    double s;
} during;

static void rotate_during(app_client *c, load *l, bool wait, during *d)
{
    threads t;
    wire_response *w = NULL;
    memset(d, 0, sizeof(*d));
    start(l, &t);
    int64_t t0 = cdx_mono_ms();
    cdx_err err = app_client_rotate(c, "load", wait, false, &w);
    if (!err) {
        const Cipherdex__V1__RotateResponse *rr = wire_response_msg(w)->rotate;
        d->from = rr->from_epoch;
        d->to = wait ? rr->to_epoch : rr->index->rotate_to;
        d->epoch = rr->index->key_epoch;
        d->items = rr->items;
        d->run_ms = rr->ms;
        d->version = rr->version;
        d->attempts = rr->attempts;
        if (!wait)
            d->from = rr->index->key_epoch;
        CU_ASSERT(d->to == d->from + 1);
    }
    wire_response_free(w);
    /* Background: until describe shows the new epoch (bounded; nothing else signals it). */
    while (!err && !wait && d->epoch != d->to && cdx_mono_ms() - t0 < 60000) {
        if ((err = app_client_describe_index(c, "load", &w)) == CDX_OK) {
            const Cipherdex__V1__IndexInfo *ii = wire_response_msg(w)->describe_index->index;
            d->epoch = ii->key_epoch;
            d->seen_rotating |= ii->state.len == 8 && !memcmp(ii->state.data, "rotating", 8);
            if (ii->rotate_total > d->seen_total || ii->rotate_done > d->seen_done) {
                d->seen_total = ii->rotate_total;
                d->seen_done = ii->rotate_done;
            }
        }
        wire_response_free(w);
        w = NULL;
        if (d->epoch != d->to) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    int64_t t1 = cdx_mono_ms();
    stop(l, &t);
    CU_ASSERT_EQUAL_FATAL(err, CDX_OK);
    CU_ASSERT_EQUAL(d->epoch, d->to);
    d->s = (double)(t1 - t0) / 1000.0;
    d->queries = atomic_load(&l->queries);
    d->upserts = atomic_load(&l->upserts);
    d->changed = atomic_load(&l->changed);
}

static void test_rotate_under_load(void)
{
    app_client *c = fx_stack_client(&S, S.admin);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    wire_response *w = NULL;
    app_index_spec spec = {.name = "load",
                           .dimension = D,
                           .metric = "euclidean",
                           .index_type = "ivfflat",
                           .n_lists = LISTS};
    cdx_err cerr = app_client_create_index(c, &spec, &w);
    if (cerr)
        printf("\n  create: %s %s\n", cdx_err_name(cerr), cdx_err_detail());
    CU_ASSERT_EQUAL_FATAL(cerr, CDX_OK);
    uint8_t id[16];
    memcpy(id, wire_response_msg(w)->create_index->index->id.data, 16);
    wire_response_free(w);
    app_item *it = calloc(500, sizeof(*it));
    for (size_t at = 0; at < N; at += 500) {
        for (size_t i = 0; i < 500; i++)
            it[i] = (app_item){.id = ids[at + i], .vector = X + (at + i) * D, .dim = D};
        CU_ASSERT_EQUAL_FATAL(app_client_upsert(c, "load", it, 500, &w), CDX_OK);
        wire_response_free(w);
    }
    free(it);
    CU_ASSERT_EQUAL_FATAL(app_client_train(c, "load", NULL, &w), CDX_OK);
    wire_response_free(w);
    uint64_t all = 0;
    for (size_t q = 0; q < NQ; q++) {
        CU_ASSERT_EQUAL_FATAL(query1(c, q, &want[q]), CDX_OK);
        all += want[q];
    }
    double recall0 = (double)all / (NQ * K);

    static load l;
    pthread_mutex_init(&l.mu, NULL);
    threads t;
    start(&l, &t);
    int64_t t0 = cdx_mono_ms();
    while (cdx_mono_ms() - t0 < 2000) {
        struct timespec ts = {0, 50 * 1000 * 1000}; /* the measuring window, not a sync */
        nanosleep(&ts, NULL);
    }
    stop(&l, &t);
    double s_before = (double)(cdx_mono_ms() - t0) / 1000.0;
    uint64_t q_before = atomic_load(&l.queries), u_before = atomic_load(&l.upserts),
             c_before = atomic_load(&l.changed);

    /* During, twice: a background rotation (the default: the request returns at once and
     * the appliance's rotation thread does the work; the window ends when describe shows the
     * new epoch), then a rotation run on the request (--wait). */
    during dr[2];
    for (int k = 0; k < 2; k++)
        rotate_during(c, &l, k == 1, &dr[k]);
    uint32_t epoch = dr[1].epoch;

    all = 0;
    size_t c_after = 0;
    for (size_t q = 0; q < NQ; q++) {
        uint64_t h = 0;
        CU_ASSERT_EQUAL_FATAL(query1(c, q, &h), CDX_OK);
        all += h;
        c_after += h != want[q];
    }
    double recall_after = (double)all / (NQ * K);

    /* The sweep (maintenance every 50 ms, grace 5 s: longer than a rotation attempt here)
     * removes the old epochs: bounded wait. */
    eng_redis_opts ro = {.host = "127.0.0.1", .port = fx_redis_port(S.redis)};
    eng_store *st = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_store_redis_new(&ro, &st), CDX_OK);
    size_t records = 0, other = 1;
    int64_t t2 = cdx_mono_ms();
    while (other && cdx_mono_ms() - t2 < 60000) {
        scan_epochs(st, id, epoch, &records, &other);
        if (other) {
            struct timespec ts = {0, 100 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    int64_t t3 = cdx_mono_ms();
    eng_store_free(st);

    printf("\n  through the appliance: %d items, %d lists, n_probes %d; %d query clients + 1 "
           "upsert client (batches of 10), mutual TLS on loopback, 2 workers\n"
           "    baseline recall@10 %.4f\n"
           "    before:  %.2f s, %llu queries (%.0f QPS), %llu upserts, answers changed %llu\n",
           N, LISTS, PROBES, NQT, recall0, s_before, (unsigned long long)q_before,
           (double)q_before / s_before, (unsigned long long)u_before, (unsigned long long)c_before);
    for (int k = 0; k < 2; k++)
        printf("    during:  rotate%s %u -> %u: %.2f s%s: %llu queries (%.0f QPS), %llu upserts, "
               "answers changed %llu\n",
               k ? " --wait" : " (background)", dr[k].from, dr[k].to, dr[k].s,
               k ? "" : " until describe showed the new epoch", (unsigned long long)dr[k].queries,
               (double)dr[k].queries / dr[k].s, (unsigned long long)dr[k].upserts,
               (unsigned long long)dr[k].changed);
    printf("    background: describe showed state rotating: %s, progress up to %llu of %llu "
           "records\n",
           dr[0].seen_rotating ? "yes" : "no", (unsigned long long)dr[0].seen_done,
           (unsigned long long)dr[0].seen_total);
    printf("    --wait run: %llu ms, %u attempts, %llu items, version %llu\n"
           "    after:   recall@10 %.4f, answers changed %zu; failures %llu; old epochs gone from "
           "Redis after %.2f s (%zu records, %zu of another epoch)\n",
           (unsigned long long)dr[1].run_ms, dr[1].attempts, (unsigned long long)dr[1].items,
           (unsigned long long)dr[1].version, recall_after, c_after,
           (unsigned long long)atomic_load(&l.failures), (double)(t3 - t2) / 1000.0, records,
           other);
    /* /metrics: both rotations counted, none pending. */
    char *colon = strrchr(S.metrics, ':');
    CU_ASSERT_PTR_NOT_NULL_FATAL(colon);
    char *mt = fx_http(AF_INET, (uint16_t)atoi(colon + 1), "GET /metrics HTTP/1.0\r\n\r\n");
    CU_ASSERT_PTR_NOT_NULL(strstr(mt, "\ncipherdex_key_rotations_total 2\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(mt, "\ncipherdex_key_rotations_pending 0\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(mt, "\ncipherdex_key_rotation_failures_total 0\n"));
    free(mt);
    CU_ASSERT(dr[0].seen_rotating);
    CU_ASSERT(dr[0].seen_total > 0);
    if (atomic_load(&l.failures))
        printf("    first failure: %s\n", l.first);
    CU_ASSERT_EQUAL(atomic_load(&l.failures), 0);
    CU_ASSERT_EQUAL(c_before, 0);
    CU_ASSERT_EQUAL(dr[0].changed, 0);
    CU_ASSERT_EQUAL(dr[1].changed, 0);
    CU_ASSERT_EQUAL(c_after, 0);
    CU_ASSERT(fabs(recall_after - recall0) <= 0.001);
    CU_ASSERT(dr[0].queries > 0 && dr[1].queries > 0);
    CU_ASSERT_EQUAL(dr[0].epoch, 1);
    CU_ASSERT_EQUAL(epoch, 2);
    CU_ASSERT_EQUAL(other, 0);
    CU_ASSERT(records > 0);
    app_client_free(c);
}

static int suite_init(void)
{
    X = malloc((size_t)N * D * sizeof(float));
    Q = malloc((size_t)NQ * D * sizeof(float));
    ids = malloc((size_t)N * sizeof(*ids));
    gt = malloc((size_t)NQ * sizeof(*gt));
    if (!X || !Q || !ids || !gt)
        return -1;
    make_data();
    if (fx_stack_open(&S, "rotate-load", NULL) ||
        fx_stack_write_conf(&S, &(fx_stack_conf){.sections = "[engine]\ngc_grace_ms = 5000\n"
                                                             "[maintenance]\ninterval_ms = 50\n"}))
        return -1;
    return fx_stack_start(&S);
}

static int suite_clean(void)
{
    free(X);
    free(Q);
    free(ids);
    free(gt);
    return fx_stack_close(&S);
}

int main(void)
{
    static const fx_test tests[] = {
        {"rotate --wait under query and upsert load: 0 failures, same answers, old epoch swept",
         test_rotate_under_load},
    };
    static const fx_suite suite = {.name = "rotate_load",
                                   .init = suite_init,
                                   .clean = suite_clean,
                                   .tests = tests,
                                   .ntests = FX_LEN(tests)};
    return fx_cunit_run(&suite, 1);
}
