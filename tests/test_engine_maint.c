/*
 * Store maintenance (engine/eng_maint.h): compaction by policy and the sweep.
 *
 * 1. A reader holding an old manifest across a sweep still reads what it
 *    references within gc_grace; afterwards the records are deleted. Run
 *    against the memory store and Redis (fx_engine environments).
 * 2. Bounded store (reliability review F3): a sustained single-item
 *    overwrite workload on 300 ids, on Redis, with the maintenance thread
 *    running. The store (sum of the value lengths of every cdx: key) must
 *    stay within 3 x the live data plus the immutable bytes written during
 *    one grace window (gc_grace 2 s + 2 maintenance intervals + 0.8 s of scheduling), and the
 *    query p50 of the last third of the run must be within 1.5 x (+0.3 ms)
 *    of the first third's.
 *
 *    Why value lengths and not Redis used_memory: used_memory adds Redis'
 *    own per-key and allocator overhead, client and replication buffers,
 *    which at a few hundred kilobytes of data are as large as the data and
 *    vary with the allocator; the engine controls the values. used_memory is
 *    printed as well.
 *
 *    Environment: CDX_RELIABILITY_FULL=1 runs 120 s instead of 12 s (for
 *    ./run reliability); CDX_MAINT_OFF=1 runs the same workload without the
 *    maintenance thread (the "before" figure: it must fail).
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "cdx_err.h"
#include "cdx_time.h"
#include "eng.h"
#include "eng_maint.h"
#include "eng_record.h"
#include "eng_store.h"
#include "eng_store_internal.h"
#include "fx_cunit.h"
#include "fx_engine.h"
#include "fx_redis.h"
#include "fx_tmp.h"

static void pause_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Keys of index id of a kind ("s", "m", "t", ...) in fx_store. */
static uint64_t store_bytes(eng_store *s, uint64_t *nkeys);

static size_t count_keys(const uint8_t id[16], const char *kind)
{
    char pat[128];
    char **k = NULL;
    fx_key_of(id, kind, pat);
    size_t n = fx_keys_of(pat, &k);
    for (size_t i = 0; i < n; i++)
        free(k[i]);
    free(k);
    return n;
}

/* One top-1 query on e with want; returns the status, the hit's id and distance. */
static cdx_err top1(eng *e, const char *name, const float *q, char *id, float *dist, float *vec,
                    size_t d)
{
    eng_query qq = {
        .vectors = q, .nq = 1, .top_k = 1, .want = ENG_WANT_DISTANCE | (vec ? ENG_WANT_VECTOR : 0)};
    eng_query_result *r = NULL;
    cdx_err err = eng_query_run(e, name, &qq, &r);
    id[0] = '\0';
    if (!err && r->n[0] == 1) {
        snprintf(id, 24, "%.*s", (int)r->hits[0][0].id_len, r->hits[0][0].id);
        *dist = r->hits[0][0].distance;
        if (vec && r->hits[0][0].vector)
            memcpy(vec, r->hits[0][0].vector, d * sizeof(float));
    }
    eng_query_result_free(r);
    return err;
}

/* ---- 1. a reader holding an old manifest across a sweep ---- */

static void test_reader_across_sweep(void)
{
    const size_t d = 8, n = 40;
    const uint32_t grace = 2000;
    fx_dataset s;
    fx_ds_make(&s, n, d, "r");
    static uint8_t cont[40][32];
    for (size_t i = 0; i < n; i++) {
        memset(cont[i], (int)i, sizeof(cont[i]));
        s.items[i].contents = cont[i];
        s.items[i].contents_len = sizeof(cont[i]);
    }
    char name[64];
    fx_uniq_name(name, "reader");
    eng_index_info info;
    fx_create(name, (uint32_t)d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, &info);
    for (size_t b = 0; b < 4; b++)
        fx_upsert(name, s.items + 10 * b, 10); /* four segments */
    uint64_t written = cdx_wall_ms();

    /* The reader: another appliance that trusts its cached manifest for 10 minutes. */
    char *rdir = fx_tmpdir_new("engreader");
    eng_config rc = {
        .custody = fx_cust, .store = fx_store, .state_dir = rdir, .manifest_max_age_ms = 600000};
    memcpy(rc.deployment_id, fx_dep, 16);
    eng *rd = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_new(&rc, &rd), CDX_OK);
    char id[24];
    float dist = -1, vec[8];
    CU_ASSERT_EQUAL(top1(rd, name, s.x, id, &dist, NULL, d), CDX_OK); /* caches the manifest */
    CU_ASSERT_STRING_EQUAL(id, "r0");

    /* Let the records age past the grace: a rule by write time alone would delete them at the
     * first sweep after they are superseded. */
    while (cdx_wall_ms() <= written + grace + 10)
        pause_ms(20);

    /* The sweeper: gc_grace 2 s. */
    eng_config sc = {
        .custody = fx_cust, .store = fx_store, .state_dir = fx_statedir, .gc_grace_ms = grace};
    memcpy(sc.deployment_id, fx_dep, 16);
    eng *sw = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_new(&sc, &sw), CDX_OK);

    /* The writer compacts (the four segments leave the manifest) and overwrites r0. */
    float old0[8];
    memcpy(old0, s.x, sizeof(old0));
    uint64_t v = 0;
    CU_ASSERT_EQUAL_FATAL(eng_compact(fx_eng, name, &v), CDX_OK);
    float new0[8];
    for (size_t j = 0; j < d; j++)
        new0[j] = old0[j] + 10.0f;
    eng_item it = s.items[0];
    it.vector = new0;
    static const uint8_t c2[8] = {'n', 'e', 'w', '-', 'c', 'o', 'n', 't'};
    it.contents = c2;
    it.contents_len = sizeof(c2);
    fx_upsert(name, &it, 1);
    CU_ASSERT_EQUAL(count_keys(info.id, "s"), 4 + 1 + 1);

    /* First sweep: everything unreferenced is only noted, with its size. */
    uint64_t bytes_before = store_bytes(fx_store, NULL);
    eng_sweep_report r;
    int64_t first = cdx_mono_ms();
    CU_ASSERT_EQUAL_FATAL(eng_sweep_run(sw, name, &r), CDX_OK);
    CU_ASSERT_EQUAL(r.deleted, 0);
    CU_ASSERT_TRUE(r.waiting >= 4 + 6 + 1); /* segments, superseded manifests, r0's contents */
    uint64_t first_waiting = r.waiting, first_bytes = r.waiting_bytes;
    CU_ASSERT_TRUE(first_bytes > 4 * (uint64_t)ENG_REC_OVERHEAD);
    CU_ASSERT_TRUE(r.next_ms > 0);
    CU_ASSERT_EQUAL(count_keys(info.id, "s"), 6);

    /* The reader, on its old manifest, still reads the old segments: r0 at its old vector. */
    CU_ASSERT_EQUAL(top1(rd, name, old0, id, &dist, vec, d), CDX_OK);
    CU_ASSERT_STRING_EQUAL(id, "r0");
    CU_ASSERT_TRUE(dist == 0.0f);
    CU_ASSERT_TRUE(memcmp(vec, old0, sizeof(old0)) == 0);
    /* A second sweep within the grace deletes nothing either. */
    CU_ASSERT_EQUAL_FATAL(eng_sweep_run(sw, name, &r), CDX_OK);
    if (cdx_mono_ms() - first < (int64_t)grace)
        CU_ASSERT_EQUAL(r.deleted, 0);

    /* After the grace the old records go: poll (sweeping) against a deadline. */
    uint64_t deleted = r.deleted;
    int64_t gone_at = 0;
    for (int64_t end = cdx_mono_ms() + 30000; cdx_mono_ms() < end;) {
        CU_ASSERT_EQUAL_FATAL(eng_sweep_run(sw, name, &r), CDX_OK);
        deleted += r.deleted;
        if (count_keys(info.id, "s") == 2 && count_keys(info.id, "m") == 1 &&
            count_keys(info.id, "t") == n) {
            gone_at = cdx_mono_ms();
            break;
        }
        pause_ms(50);
    }
    CU_ASSERT_TRUE(gone_at > 0);
    CU_ASSERT_TRUE(gone_at - first >= (int64_t)grace);
    CU_ASSERT_TRUE(deleted >= 4 + 6 + 1); /* segments, manifests, r0's old contents */
    CU_ASSERT_EQUAL(r.waiting, 0);
    CU_ASSERT_EQUAL(r.waiting_bytes, 0);
    /* What waited is exactly what went: the bytes the first sweep reported left the store. */
    CU_ASSERT_EQUAL(deleted, first_waiting);
    CU_ASSERT_EQUAL(bytes_before - store_bytes(fx_store, NULL), first_bytes);

    /* The reader's manifest now names deleted segments: it reads the head again. */
    CU_ASSERT_EQUAL(top1(rd, name, new0, id, &dist, NULL, d), CDX_OK);
    CU_ASSERT_STRING_EQUAL(id, "r0");
    CU_ASSERT_TRUE(dist == 0.0f);
    CU_ASSERT_EQUAL(fx_q1(fx_eng, name, s.x + d), CDX_OK);

    eng_free(sw);
    eng_free(rd);
    fx_rm_rf(rdir);
    free(rdir);
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
    fx_ds_free(&s);
}

/* ---- 2. the bounded store under a sustained overwrite workload ---- */

/* A store wrapper counting the bytes of the immutable records written (SET NX, created). */
typedef struct cnt_store {
    eng_store base;
    eng_store *inner;
    atomic_uint_fast64_t written;
} cnt_store;

static eng_store *inner_of(eng_store *s)
{
    return ((cnt_store *)(void *)s)->inner;
}
static const char *c_kind(const eng_store *s)
{
    (void)s;
    return "counting";
}
static void c_free(eng_store *s)
{
    eng_store_free(inner_of(s));
    free(s);
}
static cdx_err c_mget(eng_store *s, const char *const *k, size_t n, eng_val *o)
{
    return eng_store_mget(inner_of(s), k, n, o);
}
static cdx_err c_getrange(eng_store *s, const eng_range *r, size_t n, eng_val *o)
{
    return eng_store_getrange(inner_of(s), r, n, o);
}
static cdx_err c_strlen(eng_store *s, const char *const *k, size_t n, uint64_t *len)
{
    return eng_store_strlen(inner_of(s), k, n, len);
}
static cdx_err c_setnx(eng_store *s, const eng_kv *kv, size_t n, bool *created)
{
    cdx_err err = eng_store_setnx(inner_of(s), kv, n, created);
    uint64_t b = 0;
    for (size_t i = 0; i < n; i++)
        b += created[i] ? kv[i].len : 0;
    atomic_fetch_add(&((cnt_store *)(void *)s)->written, b);
    return err;
}
static cdx_err c_set(eng_store *s, const eng_kv *kv, size_t n)
{
    return eng_store_set(inner_of(s), kv, n);
}
static cdx_err c_del(eng_store *s, const char *const *k, size_t n, uint64_t *deleted)
{
    return eng_store_del(inner_of(s), k, n, deleted);
}
static cdx_err c_scan(eng_store *s, const char *m, uint64_t *cur, char ***k, size_t *n)
{
    return eng_store_scan(inner_of(s), m, cur, k, n);
}
static cdx_err c_watch(eng_store *s, const char *key, eng_txn **t, eng_val *cur)
{
    return eng_store_watch(inner_of(s), key, t, cur); /* the transaction is the inner store's */
}
static cdx_err c_check(eng_store *s, char *desc, size_t cap, char *why, size_t wcap)
{
    eng_store *in = inner_of(s);
    return in->ops->check(in, desc, cap, why, wcap);
}
static const struct eng_store_ops cnt_ops = {.kind = c_kind,
                                             .free = c_free,
                                             .mget = c_mget,
                                             .getrange = c_getrange,
                                             .strlen = c_strlen,
                                             .setnx = c_setnx,
                                             .set = c_set,
                                             .del = c_del,
                                             .scan = c_scan,
                                             .watch = c_watch,
                                             .check = c_check};

/* Sum of the value lengths of every cdx: key of s. */
static uint64_t store_bytes(eng_store *s, uint64_t *nkeys)
{
    uint64_t cur = 0, total = 0, nk_total = 0;
    do {
        char **k = NULL;
        size_t nk = 0;
        if (eng_store_scan(s, "cdx:*", &cur, &k, &nk))
            break;
        eng_val *v = calloc(nk + 1, sizeof(*v));
        if (nk && v && !eng_store_mget(s, (const char *const *)k, nk, v)) {
            for (size_t i = 0; i < nk; i++)
                total += v[i].found ? v[i].len : 0;
            eng_vals_free(v, nk);
        }
        nk_total += nk;
        free(v);
        eng_keys_free(k, nk);
    } while (cur);
    if (nkeys)
        *nkeys = nk_total;
    return total;
}

/* Redis INFO used_memory in bytes (0 if unreadable). */
static uint64_t redis_used(fx_redis *r)
{
    const char *argv[] = {"INFO", "memory"};
    char out[4096];
    if (fx_redis_command(r, argv, 2, out, sizeof(out)) < 0)
        return 0;
    const char *p = strstr(out, "used_memory:");
    return p ? strtoull(p + 12, NULL, 10) : 0;
}

enum { G_IDS = 300, G_DIM = 16, G_CONT = 64 };

typedef struct growth {
    eng *e;
    const char *name;
    atomic_bool stop;
    atomic_uint_fast64_t commits, failures;
} growth;

typedef struct writer_arg {
    growth *g;
    uint64_t seed;
} writer_arg;

static void *writer_main(void *arg)
{
    writer_arg *w = arg;
    uint64_t st = w->seed;
    float v[G_DIM];
    char id[24], meta[64];
    uint8_t cont[G_CONT];
    while (!atomic_load(&w->g->stop)) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        unsigned k = (unsigned)((st >> 33) % G_IDS);
        for (int j = 0; j < G_DIM; j++) {
            st = st * 6364136223846793005ull + 1442695040888963407ull;
            v[j] = (float)((double)(st >> 40) / 16777216.0) * 2.0f - 1.0f;
        }
        memset(cont, (int)(st >> 56), sizeof(cont));
        snprintf(id, sizeof(id), "g%u", k);
        snprintf(meta, sizeof(meta), "{\"k\": %u}", k);
        eng_item it = {.id = id,
                       .id_len = strlen(id),
                       .vector = v,
                       .metadata = meta,
                       .metadata_len = strlen(meta),
                       .contents = cont,
                       .contents_len = G_CONT};
        uint64_t ver = 0;
        cdx_err err = eng_upsert(w->g->e, w->g->name, &it, 1, &ver);
        if (err)
            atomic_fetch_add(&w->g->failures, 1); /* ABORTED under contention is allowed */
        else
            atomic_fetch_add(&w->g->commits, 1);
    }
    return NULL;
}

typedef struct sample {
    double t;         /* s since the workload started */
    uint64_t bytes;   /* store value bytes */
    uint64_t written; /* immutable bytes written so far */
} sample;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *x, size_t n)
{
    if (!n)
        return 0;
    qsort(x, n, sizeof(*x), cmp_double);
    return x[n / 2];
}

static void test_bounded_store(void)
{
    const char *full = getenv("CDX_RELIABILITY_FULL");
    const char *off = getenv("CDX_MAINT_OFF");
    bool is_full = full && *full && strcmp(full, "0");
    bool maint_off = off && *off && strcmp(off, "0");
    const double secs = is_full ? 120.0 : 12.0;
    const uint32_t grace = 2000, interval = 100, compact_segments = 16;
    /* One grace plus the scheduling: a record is noted at the first pass after it is superseded
     * and deleted at the first pass after its grace. Passes are interval_ms apart plus their own
     * time and the throttle (a step's duration again): gaps up to ~350 ms were seen, hence 800 ms.
     */
    const double window = (grace + 2.0 * interval + 800.0) / 1000.0; /* s */

    fx_token *tok = NULL;
    hsm_custody *cust = NULL;
    CU_ASSERT_EQUAL_FATAL(fx_engine_custody("growtok", 600000, &tok, &cust), 0);
    /* No AOF: durability is not what this measures, and fsyncs would only slow the workload. */
    fx_redis_opts ro = {.appendonly = -1};
    fx_redis *rs = fx_redis_start(&ro);
    CU_ASSERT_PTR_NOT_NULL_FATAL(rs);
    eng_redis_opts o = fx_engine_redis_opts(rs);
    o.allow_unsafe_durability = true;
    eng_store *inner = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_store_redis_new(&o, &inner), CDX_OK);
    cnt_store *cs = calloc(1, sizeof(*cs));
    CU_ASSERT_PTR_NOT_NULL_FATAL(cs);
    cs->base.ops = &cnt_ops;
    cs->inner = inner;
    eng_store *st = &cs->base;
    char *dir = fx_tmpdir_new("enggrowth");
    uint8_t dep[16];
    for (int i = 0; i < 16; i++)
        dep[i] = (uint8_t)(0x60 + i);
    eng_config ec = {.custody = cust,
                     .store = st,
                     .state_dir = dir,
                     .gc_grace_ms = grace,
                     .cache_bytes = 64u << 20};
    memcpy(ec.deployment_id, dep, 16);
    eng *e = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_new(&ec, &e), CDX_OK);
    uint64_t used0 = redis_used(rs);

    const char *name = "growth";
    eng_create cr = {
        .name = name, .dimension = G_DIM, .metric = ENG_METRIC_EUCLIDEAN, .type = ENG_IVFFLAT};
    eng_index_info info;
    CU_ASSERT_EQUAL_FATAL(eng_index_create(e, &cr, &info), CDX_OK);
    /* The 300 items, in three batches. */
    {
        static float x[G_IDS][G_DIM];
        static char ids[G_IDS][24];
        static uint8_t cont[G_CONT];
        eng_item items[G_IDS];
        for (unsigned i = 0; i < G_IDS; i++) {
            for (int j = 0; j < G_DIM; j++)
                x[i][j] = (float)((i * 31 + (unsigned)j * 7) % 97) / 97.0f;
            snprintf(ids[i], sizeof(ids[i]), "g%u", i);
            items[i] = (eng_item){.id = ids[i],
                                  .id_len = strlen(ids[i]),
                                  .vector = x[i],
                                  .contents = cont,
                                  .contents_len = G_CONT};
        }
        for (unsigned b = 0; b < 3; b++)
            CU_ASSERT_EQUAL_FATAL(eng_upsert(e, name, items + 100 * b, 100, NULL), CDX_OK);
    }

    eng_maint *mt = NULL;
    eng_maint_config mc = {.interval_ms = interval,
                           .policy = {.compact_segments = compact_segments}};
    if (!maint_off)
        CU_ASSERT_EQUAL_FATAL(eng_maint_start(e, &mc, &mt), CDX_OK);

    growth g = {.e = e, .name = name};
    enum { NW = 2 };
    pthread_t th[NW];
    writer_arg wa[NW];
    for (int i = 0; i < NW; i++) {
        wa[i] = (writer_arg){&g, 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1)};
        pthread_create(&th[i], NULL, writer_main, &wa[i]);
    }
    /* This thread queries continuously and samples the store every 250 ms. */
    size_t ns = 0, nq = 0, capq = 1 << 20, caps = 4096;
    sample *smp = calloc(caps, sizeof(*smp));
    double *qt = calloc(capq, sizeof(*qt)), *ql = calloc(capq, sizeof(*ql));
    CU_ASSERT_PTR_NOT_NULL_FATAL(smp);
    CU_ASSERT_PTR_NOT_NULL_FATAL(qt);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ql);
    int64_t t0 = cdx_mono_ms(), next_sample = t0;
    float q[G_DIM];
    for (int j = 0; j < G_DIM; j++)
        q[j] = 0.5f;
    size_t qerr = 0;
    bool over = false; /* without maintenance: stop once far beyond any bound */
    for (;;) {
        int64_t now = cdx_mono_ms();
        double t = (double)(now - t0) / 1000.0;
        /* At least `secs`, and on a slow or loaded machine (ASan on 2 busy cores gave 384
         * commits in 12 s) on until the workload is worth the name, up to 4 x secs. */
        if (over || t >= 4 * secs || (t >= secs && atomic_load(&g.commits) >= 500))
            break;
        if (now >= next_sample && ns < caps) {
            uint64_t w = atomic_load(&cs->written);
            smp[ns++] = (sample){t, store_bytes(st, NULL), w};
            over = smp[ns - 1].bytes > (512ull << 20);
            next_sample = now + 250;
            continue;
        }
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        eng_query qq = {.vectors = q, .nq = 1, .top_k = 10, .want = ENG_WANT_DISTANCE};
        eng_query_result *res = NULL;
        cdx_err err = eng_query_run(e, name, &qq, &res);
        clock_gettime(CLOCK_MONOTONIC, &b);
        eng_query_result_free(res);
        if (err) {
            qerr++;
            continue;
        }
        if (nq < capq) {
            qt[nq] = t;
            ql[nq++] = (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6;
        }
    }
    atomic_store(&g.stop, true);
    for (int i = 0; i < NW; i++)
        pthread_join(th[i], NULL);
    double elapsed = (double)(cdx_mono_ms() - t0) / 1000.0;
    eng_maint_stats ms;
    eng_maint_get_stats(mt, &ms);
    eng_maint_stop(mt);
    uint64_t used_end = redis_used(rs);
    uint64_t end_keys = 0, end_bytes = store_bytes(st, &end_keys);
    eng_index_info di;
    CU_ASSERT_EQUAL(eng_index_describe(e, name, &di), CDX_OK);

    /* The live data: compact everything, then sweep with a 1 ms grace until nothing waits. */
    uint64_t live = 0;
    {
        eng_config lc = ec;
        lc.gc_grace_ms = 1;
        char *ldir = fx_tmpdir_new("enggrowthl");
        lc.state_dir = ldir;
        eng *le = NULL;
        CU_ASSERT_EQUAL_FATAL(eng_new(&lc, &le), CDX_OK);
        uint64_t v = 0;
        CU_ASSERT_EQUAL(eng_compact(le, name, &v), CDX_OK);
        eng_sweep_report r;
        for (int64_t end = cdx_mono_ms() + 20000; cdx_mono_ms() < end;) {
            CU_ASSERT_EQUAL_FATAL(eng_sweep_run(le, name, &r), CDX_OK);
            if (r.waiting == 0 && r.deleted == 0 && r.next_ms == 0)
                break;
            pause_ms(5);
        }
        live = store_bytes(st, NULL);
        eng_free(le);
        fx_rm_rf(ldir);
        free(ldir);
    }

    /* The bound at every sample: 3 x live + immutable bytes written in the window before it. */
    double worst = 0;
    size_t worst_i = 0;
    for (size_t i = 0; i < ns; i++) {
        size_t j = 0;
        while (j < i && smp[j].t < smp[i].t - window)
            j++;
        /* smp[j] is the first sample inside the window; the one before bounds it from below. */
        uint64_t w0 = j ? smp[j - 1].written : 0;
        double bound = 3.0 * (double)live + (double)(smp[i].written - w0);
        double ratio = (double)smp[i].bytes / bound;
        if (ratio > worst) {
            worst = ratio;
            worst_i = i;
        }
    }
    /* Query p50: first third against last third of the run. */
    double *a = calloc(nq + 1, sizeof(double)), *z = calloc(nq + 1, sizeof(double));
    size_t na = 0, nz = 0;
    for (size_t i = 0; i < nq; i++) {
        if (qt[i] >= 0.5 && qt[i] < elapsed / 3)
            a[na++] = ql[i];
        else if (qt[i] >= elapsed * 2 / 3)
            z[nz++] = ql[i];
    }
    double p50a = median(a, na), p50z = median(z, nz);
    /* The trend, for the log: p50 per sixth of the run. */
    char trend[256] = "";
    for (int k = 0; k < 6; k++) {
        size_t nk = 0;
        for (size_t i = 0; i < nq; i++)
            if (qt[i] >= elapsed * k / 6 && qt[i] < elapsed * (k + 1) / 6)
                a[nk++] = ql[i];
        size_t l = strlen(trend);
        snprintf(trend + l, sizeof(trend) - l, " %.3f", median(a, nk));
    }
    uint64_t commits = atomic_load(&g.commits);
    fprintf(stderr,
            "\n  [growth] maintenance %s, %.1f s, %llu commits (%llu aborted), %zu queries (%zu "
            "failed)\n"
            "  [growth] store at the end %llu B in %llu keys; live %llu B; peak %llu B at "
            "%.1f s; worst store/bound %.3f (bound = 3 x live + bytes written in %.2f s)\n"
            "  [growth] immutable bytes written %llu (%.0f B/commit); redis used_memory %llu -> "
            "%llu (+%lld B); segments %u\n"
            "  [growth] maintenance: %llu steps, %llu compactions, %llu swept, %llu errors, "
            "longest step %llu ms\n"
            "  [growth] query p50 first third %.3f ms (%zu), last third %.3f ms (%zu); per "
            "sixth:%s ms\n",
            mt ? "on" : "OFF", elapsed, (unsigned long long)commits,
            (unsigned long long)atomic_load(&g.failures), nq, qerr, (unsigned long long)end_bytes,
            (unsigned long long)end_keys, (unsigned long long)live,
            (unsigned long long)(ns ? smp[worst_i].bytes : 0), ns ? smp[worst_i].t : 0.0, worst,
            window, (unsigned long long)atomic_load(&cs->written),
            commits ? (double)atomic_load(&cs->written) / (double)commits : 0.0,
            (unsigned long long)used0, (unsigned long long)used_end, (long long)(used_end - used0),
            di.segments, (unsigned long long)ms.runs, (unsigned long long)ms.compactions,
            (unsigned long long)ms.swept, (unsigned long long)ms.errors,
            (unsigned long long)ms.max_step_ms, p50a, na, p50z, nz, trend);
    CU_ASSERT_TRUE(commits >= 500); /* a workload worth the name */
    CU_ASSERT_TRUE(ns >= 10);
    CU_ASSERT_TRUE(worst <= 1.0);
    CU_ASSERT_TRUE(na >= 20 && nz >= 20);
    CU_ASSERT_TRUE(p50z <= 1.5 * p50a + 0.3);
    CU_ASSERT_EQUAL(qerr, 0);
    CU_ASSERT_EQUAL(ms.errors, 0);
    CU_ASSERT_TRUE(di.segments <= compact_segments + 64);

    free(a);
    free(z);
    free(smp);
    free(qt);
    free(ql);
    eng_free(e);
    eng_store_free(st);
    fx_redis_stop(rs);
    fx_engine_custody_free(&tok, &cust);
    fx_rm_rf(dir);
    free(dir);
}

static const fx_test reader_tests[] = {
    {"a reader holding an old manifest across a sweep", test_reader_across_sweep},
};

static const fx_test growth_tests[] = {
    {"sustained overwrites stay within 3x live + one grace window", test_bounded_store},
};

int main(void)
{
    const fx_suite suites[] = {
        {.name = "maint/memory",
         .init = fx_engine_init_memory,
         .clean = fx_engine_clean,
         .tests = reader_tests,
         .ntests = FX_LEN(reader_tests),
         .setup = fx_engine_test_setup},
        {.name = "maint/redis",
         .init = fx_engine_init_redis,
         .clean = fx_engine_clean,
         .tests = reader_tests,
         .ntests = FX_LEN(reader_tests),
         .setup = fx_engine_test_setup},
        {.name = "maint/growth", .tests = growth_tests, .ntests = FX_LEN(growth_tests)},
    };
    return fx_cunit_run(suites, FX_LEN(suites));
}
