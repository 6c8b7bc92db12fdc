/*
 * bench_sys_engine: Cipherdex's encrypted IVF engine as a bench_sys, in process.
 *
 * Variant "<type>-<store>[-cold|-warm][-everysec]": type flat|sq8, store mem|redis.
 *   flat-mem / sq8-mem             memory store, search-block cache on, warmed
 *   flat-redis-warm / sq8-redis-warm  Redis (AOF, appendfsync always as shipped, loopback),
 *                                     cache on, warmed
 *   flat-redis-cold / sq8-redis-cold  Redis, no cache: every probed search block is fetched
 *                                     and decrypted on every query
 *   ...-everysec                   the same on a second redis-server with appendfsync everysec
 *                                  (allow_unsafe_durability): what `always` costs, compared
 *                                  in one run (e.g. flat-redis-cold vs flat-redis-cold-everysec)
 * A throwaway SoftHSM token and redis-server (the test fixtures) live for the process.
 * Subkey TTL: 60 s (stated in the report). add() upserts in batches of 1,000, then compacts
 * (one segment per cluster), and warms the cache for warm variants; report() gives the split.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_sys.h"
#include "cdx_err.h"
#include "eng.h"
#include "eng_store.h"
#include "fx_engine.h"
#include "fx_redis.h"
#include "fx_softhsm.h"
#include "fx_tmp.h"
#include "hsm_custody.h"

#define SUBKEY_TTL_MS 60000u
#define BATCH 1000

static fx_token *g_tok;
static hsm_custody *g_cust;
static fx_redis *g_redis[2]; /* [0] appendfsync always, [1] everysec (started on demand) */
static int g_refs;

typedef struct esys {
    eng_store *store;
    eng *e;
    char *state;
    char name[64];
    size_t d, nlist;
    uint32_t nprobe;
    int sq8, redis, warm, everysec;
    double upsert_s, compact_s, train_s, warm_s;
    size_t n;
    uint64_t q_ns_start[6], queries_start;
    char err[256];
} esys;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int fail(const char *what, cdx_err e)
{
    fprintf(stderr, "cipherdex: %s: %s: %s\n", what, cdx_err_name(e), cdx_err_detail());
    return -1;
}

static int env_up(int redis, int everysec)
{
    if (!g_tok) {
        if (fx_engine_custody("bench-ivf", SUBKEY_TTL_MS, &g_tok, &g_cust))
            return -1;
    }
    if (redis && !g_redis[everysec]) {
        fx_redis_opts o = {.appendonly = 1, .appendfsync = everysec ? "everysec" : "always"};
        g_redis[everysec] = fx_redis_start(&o);
        if (!g_redis[everysec])
            return -1;
    }
    g_refs++;
    return 0;
}

static void env_down(void)
{
    if (--g_refs > 0)
        return;
    fx_engine_custody_free(&g_tok, &g_cust);
    for (int i = 0; i < 2; i++) {
        fx_redis_stop(g_redis[i]);
        g_redis[i] = NULL;
    }
}

static void *es_create(size_t d, size_t nlist, const char *variant)
{
    esys *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    const char *v = variant ? variant : "flat-mem";
    s->sq8 = !strncmp(v, "sq8", 3);
    s->redis = strstr(v, "redis") != NULL;
    s->warm = strstr(v, "cold") == NULL;
    s->everysec = strstr(v, "everysec") != NULL;
    if ((strncmp(v, "flat", 4) && strncmp(v, "sq8", 3)) || (!s->redis && !strstr(v, "mem")) ||
        (s->everysec && !s->redis)) {
        fprintf(stderr,
                "cipherdex: unknown variant '%s' "
                "(flat|sq8)-(mem|redis-warm|redis-cold)[-everysec, redis only]\n",
                v);
        free(s);
        return NULL;
    }
    s->d = d;
    s->nlist = nlist;
    if (env_up(s->redis, s->everysec)) {
        free(s);
        return NULL;
    }
    cdx_err e;
    if (s->redis) {
        eng_redis_opts o = fx_engine_redis_opts(g_redis[s->everysec]);
        o.allow_unsafe_durability = s->everysec; /* everysec is refused otherwise */
        e = eng_store_redis_new(&o, &s->store);
    } else {
        e = eng_store_memory_new(&s->store);
    }
    if (e) {
        fail("store", e);
        env_down();
        free(s);
        return NULL;
    }
    s->state = fx_tmpdir_new("bench-state");
    uint8_t dep[16];
    for (int i = 0; i < 16; i++)
        dep[i] = (uint8_t)(0xb0 + i);
    s->e = fx_engine_new(g_cust, s->store, dep, s->state, s->warm ? (size_t)2 << 30 : 0, 1);
    if (!s->e) {
        eng_store_free(s->store);
        env_down();
        free(s);
        return NULL;
    }
    static int seq;
    snprintf(s->name, sizeof(s->name), "bench-%d", seq++);
    eng_create cr = {.name = s->name, .dimension = (uint32_t)d, .metric = ENG_METRIC_EUCLIDEAN,
                     .type = s->sq8 ? ENG_IVFSQ8 : ENG_IVFFLAT, .n_lists = (uint32_t)nlist};
    eng_index_info info;
    if ((e = eng_index_create(s->e, &cr, &info))) {
        fail("create", e);
        eng_free(s->e);
        eng_store_free(s->store);
        env_down();
        free(s);
        return NULL;
    }
    return s;
}

static int es_train(void *p, const float *x, size_t n, unsigned iters, uint64_t seed)
{
    esys *s = p;
    eng_train_opts o = {.n_lists = (uint32_t)s->nlist, .max_iters = iters, .seed = seed,
                        .tolerance = 1e-9f, .sample = x, .sample_n = n};
    uint64_t v;
    double t0 = now_s();
    cdx_err e = eng_train(s->e, s->name, &o, &v);
    s->train_s = now_s() - t0;
    return e ? fail("train", e) : 0;
}

static int es_add(void *p, const float *x, size_t n)
{
    esys *s = p;
    char(*ids)[16] = malloc(n * sizeof(*ids));
    eng_item *it = calloc(BATCH, sizeof(*it));
    if (!ids || !it)
        return -1;
    cdx_err e = CDX_OK;
    double t0 = now_s();
    for (size_t b = 0; b < n && !e; b += BATCH) {
        size_t m = n - b < BATCH ? n - b : BATCH;
        for (size_t i = 0; i < m; i++) {
            int l = snprintf(ids[b + i], sizeof(ids[0]), "%zu", b + i);
            it[i] = (eng_item){.id = ids[b + i], .id_len = (size_t)l, .vector = x + (b + i) * s->d};
        }
        uint64_t v;
        e = eng_upsert(s->e, s->name, it, m, &v);
    }
    s->upsert_s = now_s() - t0;
    free(ids);
    free(it);
    if (e)
        return fail("upsert", e);
    s->n = n;
    t0 = now_s();
    uint64_t v;
    if ((e = eng_compact(s->e, s->name, &v)))
        return fail("compact", e);
    s->compact_s = now_s() - t0;
    if (s->warm) {
        /* Every search block (and IVFFlat vector block) into the cache. */
        t0 = now_s();
        if ((e = eng_index_warm(s->e, s->name, NULL)))
            return fail("warm", e);
        s->warm_s = now_s() - t0;
    }
    eng_stats st;
    eng_get_stats(s->e, &st);
    s->q_ns_start[0] = st.ns_head;
    s->q_ns_start[1] = st.ns_coarse;
    s->q_ns_start[2] = st.ns_keys;
    s->q_ns_start[3] = st.ns_fetch;
    s->q_ns_start[4] = st.ns_decrypt;
    s->q_ns_start[5] = st.ns_distance;
    s->queries_start = st.queries;
    return 0;
}

static int es_set_nprobe(void *p, size_t nprobe)
{
    esys *s = p;
    s->nprobe = (uint32_t)nprobe;
    return 0;
}

static int es_search(void *p, const float *q, size_t nq, size_t k, int64_t *labels, float *dist)
{
    esys *s = p;
    eng_query qq = {.vectors = q, .nq = nq, .top_k = (uint32_t)k, .n_probes = s->nprobe,
                    .want = ENG_WANT_DISTANCE};
    eng_query_result *r = NULL;
    cdx_err e = eng_query_run(s->e, s->name, &qq, &r);
    if (e)
        return fail("query", e);
    for (size_t i = 0; i < nq; i++)
        for (size_t j = 0; j < k; j++) {
            bool have = j < r->n[i];
            labels[i * k + j] = have ? strtoll(r->hits[i][j].id, NULL, 10) : -1;
            dist[i * k + j] = have ? r->hits[i][j].distance * r->hits[i][j].distance : 0;
        }
    eng_query_result_free(r);
    return 0;
}

static void es_destroy(void *p)
{
    esys *s = p;
    if (!s)
        return;
    eng_index_info info;
    if (eng_index_describe(s->e, s->name, &info) == CDX_OK)
        (void)eng_index_delete(s->e, s->name, info.id);
    eng_free(s->e);
    eng_store_free(s->store);
    if (s->state) {
        fx_rm_rf(s->state);
        free(s->state);
    }
    env_down();
    free(s);
}

static void es_report(void *p, FILE *md)
{
    esys *s = p;
    eng_stats st;
    eng_get_stats(s->e, &st);
    double nq = (double)(st.queries - s->queries_start);
    uint64_t ns[6] = {st.ns_head, st.ns_coarse, st.ns_keys, st.ns_fetch, st.ns_decrypt,
                      st.ns_distance};
    const char *stage[6] = {"head read", "coarse quantisation", "key derivation", "store fetch",
                            "decrypt", "distance+filter+top-k"};
    fprintf(md,
            "- store %s, cache %s, subkey TTL %u s; upsert %.0f vectors/s (batches of %d, "
            "%.2f s), compaction %.2f s, training on the given sample %.2f s%s\n",
            !s->redis     ? "memory"
            : s->everysec ? "redis (loopback TCP, AOF appendfsync everysec: unsafe, for comparison)"
                          : "redis (loopback TCP, AOF appendfsync always)",
            s->warm ? "on (warmed)" : "off (cold: every block fetched and decrypted)",
            SUBKEY_TTL_MS / 1000, s->upsert_s > 0 ? (double)s->n / s->upsert_s : 0, BATCH,
            s->upsert_s, s->compact_s, s->train_s, s->warm ? "" : "");
    if (nq > 0) {
        fprintf(md, "- per query (mean over %.0f):", nq);
        for (int i = 0; i < 6; i++)
            fprintf(md, " %s %.1f us%s", stage[i], (double)(ns[i] - s->q_ns_start[i]) / nq / 1e3,
                    i < 5 ? ";" : "\n");
    }
    if (s->redis && g_redis[s->everysec]) {
        const char *argv[2] = {"INFO", "memory"};
        char out[8192];
        if (fx_redis_command(g_redis[s->everysec], argv, 2, out, sizeof(out)) > 0) {
            const char *u = strstr(out, "used_memory_dataset:");
            if (u)
                fprintf(md, "- Redis used_memory_dataset %.1f MB for %.1f MB of raw float32 "
                            "vectors (all indexes in this Redis so far)\n",
                        atof(u + 20) / 1e6, (double)s->n * (double)s->d * 4 / 1e6);
        }
    }
    if (nq > 0)
        fprintf(md, "- per query: %.1f centroids scored exactly after the coarse screen; %.0f rows "
                    "bounded from codes, %.1f of them scored exactly\n",
                (double)st.centroids_rescored / (double)st.queries,
                (double)st.rows_screened / (double)st.queries,
                (double)st.rows_rescored / (double)st.queries);
    fprintf(md, "- search-block cache: %llu hits, %llu misses, %.1f MB\n",
            (unsigned long long)st.cache_hits, (unsigned long long)st.cache_misses,
            (double)st.cache_bytes / 1e6);
}

const bench_sys bench_sys_engine = {
    .name = "cipherdex",
    .create = es_create,
    .train = es_train,
    .add = es_add,
    .set_nprobe = es_set_nprobe,
    .search = es_search,
    .destroy = es_destroy,
    .report = es_report,
};
