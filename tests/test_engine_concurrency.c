/*
 * test_engine_concurrency.c - the encrypted IVF engine, concurrency: two appliances on one store, a
 * lost tail whose version another appliance reuses, the sweep against a paused upsert, a delete
 * under a reader. Run against
 * the memory store and against Redis (fixture), on a throwaway SoftHSM token
 * (tests/fixtures/fx_engine.h).
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

struct writer {
    eng *e;
    const char *name;
    const fx_dataset *s;
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
    fx_dataset s;
    fx_ds_make(&s, n, d, "w");
    char name[64];
    fx_uniq_name(name, "conc");
    eng_index_info info;
    fx_create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, &info); /* untrained: one cluster */
    char *dir2 = fx_tmpdir_new("engstate2");
    eng *e2 = fx_engine_open(fx_store, dir2, 1u << 20);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e2);
    struct writer w1 = {fx_eng, name, &s, 0, n / 2, 0}, w2 = {e2, name, &s, n / 2, n, 0};
    pthread_t t1, t2;
    pthread_create(&t1, NULL, writer_main, &w1);
    pthread_create(&t2, NULL, writer_main, &w2);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    CU_ASSERT_EQUAL(w1.errors + w2.errors, 0);
    uint64_t cnt = 0;
    CU_ASSERT_EQUAL(eng_count(e2, name, &cnt), CDX_OK);
    CU_ASSERT_EQUAL(cnt, n);
    CU_ASSERT_EQUAL(fx_observe(name, &s, 0, n), (long)n * 1000 + (long)n);
    /* Exhaustive query over everything returns each item once. */
    eng_query q = {.vectors = s.x, .nq = 1, .top_k = 1000};
    eng_query_result *r = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_query_run(fx_eng, name, &q, &r), CDX_OK);
    CU_ASSERT_EQUAL(r->n[0], n);
    eng_query_result_free(r);
    eng_stats st;
    eng_get_stats(fx_eng, &st);
    fprintf(stderr, "  [concurrency] commits=%llu conflicts=%llu\n", (unsigned long long)st.commits,
            (unsigned long long)st.commit_conflicts);
    eng_free(e2);
    fx_rm_rf(dir2);
    free(dir2);
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
    fx_ds_free(&s);
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
 * A lost tail (the store back at an older head, e.g. a redis-server crash
 * with appendfsync everysec) and another appliance committing the same version number again: the
 * appliance that wrote the lost commit must not take its cached manifest or
 * buckets for the new one (same version, different manifest).
 */
static void test_lost_tail_version_reuse(void)
{
    const size_t d = 8;
    fx_dataset s;
    fx_ds_make(&s, 70, d, "lt");
    char name[64], pat[128], head[128];
    fx_uniq_name(name, "losttail");
    eng_index_info info;
    fx_create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, &info);
    fx_upsert(name, s.items, 20);
    /* Snapshot the mutable keys (head and buckets). */
    fx_key_of(info.id, "head", head);
    fx_key_of(info.id, "b", pat);
    char **bk;
    size_t nb = fx_keys_of(pat, &bk);
    eng_val hv = fx_raw_get(head), *bv = calloc(nb, sizeof(eng_val));
    for (size_t i = 0; i < nb; i++)
        bv[i] = fx_raw_get(bk[i]);
    uint64_t v3 = fx_upsert(name, s.items + 20, 20); /* E caches this commit */
    /* The tail is lost: the store is back at the snapshot. */
    char **now;
    size_t nn = fx_keys_of(pat, &now);
    for (size_t i = 0; i < nn; i++) {
        bool old = false;
        for (size_t j = 0; j < nb && !old; j++)
            old = !strcmp(now[i], bk[j]);
        const char *k[1] = {now[i]};
        if (!old)
            CU_ASSERT_EQUAL(eng_store_del(fx_store, k, 1, NULL), CDX_OK);
        free(now[i]);
    }
    free(now);
    for (size_t i = 0; i < nb; i++)
        fx_raw_set(bk[i], bv[i].data, bv[i].len);
    fx_raw_set(head, hv.data, hv.len);
    /* Another appliance (it never saw the lost commit) commits that version again. */
    char *dir2 = fx_tmpdir_new("engstate-lt");
    eng *e2 = fx_engine_open(fx_store, dir2, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e2);
    uint64_t v = 0;
    CU_ASSERT_EQUAL(eng_upsert(e2, name, s.items + 40, 20, &v), CDX_OK);
    CU_ASSERT_EQUAL(v, v3);
    /* The first appliance writes again: on top of the store's commit, not its own. */
    fx_upsert(name, s.items + 60, 10);
    CU_ASSERT_EQUAL(fx_observe(name, &s, 0, 20), 50 * 1000 + 20);
    CU_ASSERT_EQUAL(fx_observe(name, &s, 20, 40), 50 * 1000);
    CU_ASSERT_EQUAL(fx_observe(name, &s, 40, 60), 50 * 1000 + 20);
    CU_ASSERT_EQUAL(fx_observe(name, &s, 60, 70), 50 * 1000 + 10);
    eng_free(e2);
    fx_rm_rf(dir2);
    free(dir2);
    eng_vals_free(&hv, 1);
    eng_vals_free(bv, nb);
    for (size_t i = 0; i < nb; i++)
        free(bk[i]);
    free(bk);
    free(bv);
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
    fx_ds_free(&s);
}

static void test_sweep_vs_paused_upsert(void)
{
    const size_t d = 8;
    fx_dataset s;
    fx_ds_make(&s, 60, d, "p");
    char name[64];
    fx_uniq_name(name, "sweep");
    eng_index_info info;
    fx_create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, &info);
    for (int i = 0; i < 3; i++)
        fx_upsert(name, s.items + 10 * i, 10); /* leaves superseded manifests behind */
    /* An appliance whose writer pauses just before its commit. */
    char *dir2 = fx_tmpdir_new("engstate3");
    eng *e2 = fx_engine_open(fx_store, dir2, 0);
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
    CU_ASSERT_EQUAL(eng_sweep(fx_eng, name, &del), CDX_OK);
    pthread_mutex_lock(&p.mu);
    p.state = 2;
    pthread_cond_broadcast(&p.cv);
    pthread_mutex_unlock(&p.mu);
    pthread_join(t, NULL);
    CU_ASSERT_EQUAL(j.err, CDX_OK);
    CU_ASSERT_EQUAL(fx_observe(name, &s, 0, 60), 60 * 1000 + 60);
    /* A sweeper with no grace removes what no manifest references, and nothing else. */
    eng_config c = {
        .custody = fx_cust, .store = fx_store, .state_dir = fx_statedir, .gc_grace_ms = 1};
    memcpy(c.deployment_id, fx_dep, 16);
    eng *sw = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_new(&c, &sw), CDX_OK);
    struct timespec ts = {0, 5 * 1000 * 1000}; /* records must be older than 1 ms */
    nanosleep(&ts, NULL);
    CU_ASSERT_TRUE(fx_sweep_until(sw, name, 3) >= 3); /* at least the superseded manifests */
    eng_free(sw);
    CU_ASSERT_EQUAL(fx_observe(name, &s, 0, 60), 60 * 1000 + 60);
    eng_free(e2);
    fx_rm_rf(dir2);
    free(dir2);
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
    fx_ds_free(&s);
}

/* Holds the one thread that armed it inside its next store read until released. */
struct hold {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int state; /* 0 idle, 1 armed, 2 holding, 3 released */
    pthread_t who;
};

static void hold_hook(void *arg)
{
    struct hold *h = arg;
    pthread_mutex_lock(&h->mu);
    if (h->state == 1 && pthread_equal(h->who, pthread_self())) {
        h->state = 2;
        pthread_cond_broadcast(&h->cv);
        while (h->state != 3)
            pthread_cond_wait(&h->cv, &h->mu);
    }
    pthread_mutex_unlock(&h->mu);
}

struct getjob {
    eng *e;
    const char *name;
    struct hold *h;
    cdx_err err;
};

static void *get_main(void *arg)
{
    struct getjob *j = arg;
    pthread_mutex_lock(&j->h->mu);
    j->h->who = pthread_self();
    j->h->state = 1;
    pthread_mutex_unlock(&j->h->mu);
    const char *ids[] = {"d0"};
    size_t lens[] = {2};
    eng_get_result *r = NULL;
    j->err = eng_get(j->e, j->name, ids, lens, 1, 0, 0, &r);
    eng_get_result_free(r);
    return NULL;
}

/*
 * A get that has its index's registry entry but is still reading when the
 * index is deleted by another request: the entry outlives the delete (it is
 * counted), the get ends with NOT_FOUND, and nothing is used after it is
 * freed (this was a use-after-free that ASan reports).
 */
static void test_delete_under_reader(void)
{
    const size_t d = 8;
    fx_dataset s;
    fx_ds_make(&s, 10, d, "d");
    char name[64];
    fx_uniq_name(name, "delrd");
    eng_index_info info;
    fx_create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, &info);
    fx_upsert(name, s.items, 10);
    char *dir2 = fx_tmpdir_new("engstate4");
    eng *e2 = fx_engine_open(fx_store, dir2, 0); /* no cache: the get reads the store */
    uint64_t cnt = 0;
    CU_ASSERT_EQUAL_FATAL(eng_count(e2, name, &cnt), CDX_OK); /* e2 registers the index */
    CU_ASSERT_EQUAL(cnt, 10);
    struct hold h = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, pthread_self()};
    eng_store_fault_on_read(fx_store, hold_hook, &h);
    struct getjob j = {e2, name, &h, CDX_OK};
    pthread_t t;
    pthread_create(&t, NULL, get_main, &j);
    pthread_mutex_lock(&h.mu);
    while (h.state != 2)
        pthread_cond_wait(&h.cv, &h.mu);
    pthread_mutex_unlock(&h.mu);
    /* The get holds e2's entry for the index; e2 deletes the index meanwhile. */
    CU_ASSERT_EQUAL(eng_index_delete(e2, name, info.id), CDX_OK);
    pthread_mutex_lock(&h.mu);
    h.state = 3;
    pthread_cond_broadcast(&h.cv);
    pthread_mutex_unlock(&h.mu);
    pthread_join(t, NULL);
    eng_store_fault_on_read(fx_store, NULL, NULL);
    CU_ASSERT_EQUAL(j.err, CDX_ERR_NOT_FOUND);
    eng_free(e2);
    fx_rm_rf(dir2);
    free(dir2);
    fx_ds_free(&s);
}

/* Commits one upsert (through fx_eng) inside the armed thread's k-th store read, once. */
struct commit_at {
    pthread_t who;
    unsigned k, reads;
    bool busy, done;
    const char *name;
    const eng_item *item;
};

static void commit_hook(void *arg)
{
    struct commit_at *c = arg;
    if (c->busy || c->done || !pthread_equal(c->who, pthread_self()) || ++c->reads != c->k)
        return;
    c->busy = true; /* the upsert's own reads come through here too */
    fx_upsert(c->name, c->item, 1);
    c->busy = false;
    c->done = true;
}

/*
 * A commit landing at any point of a list page (the head, manifest or a
 * bucket read) yields a whole page of one version, never ABORTED: the page
 * is read again under the new head. The daemon's own maintenance commits
 * while clients list, so this was an ABORTED (or a leaked bucket) under load.
 */
static void test_list_under_commit(void)
{
    const size_t d = 8, n0 = 40, extra = 8;
    fx_dataset s, x;
    fx_ds_make(&s, n0, d, "l");
    fx_ds_make(&x, extra, d, "x");
    char name[64];
    fx_uniq_name(name, "listmv");
    eng_index_info info;
    fx_create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 0, &info);
    fx_upsert(name, s.items, n0);
    char *dir2 = fx_tmpdir_new("engstate5");
    eng *e2 = fx_engine_open(fx_store, dir2, 0); /* no cache: every page reads the head */
    unsigned fired = 0;
    for (unsigned k = 1; k <= extra; k++) {
        struct commit_at c = {pthread_self(), k, 0, false, false, name, &x.items[k - 1]};
        eng_store_fault_on_read(fx_store, commit_hook, &c);
        char **ids = NULL, *next = NULL;
        size_t *lens = NULL, got = 0;
        cdx_err err = eng_list_ids(e2, name, NULL, 1000, &ids, &lens, &got, &next);
        eng_store_fault_on_read(fx_store, NULL, NULL);
        if (!c.done)
            fx_upsert(name, c.item, 1); /* the list read fewer than k times: keep the count */
        fired += c.done;
        CU_ASSERT_EQUAL(err, CDX_OK);
        if (err)
            fprintf(stderr, "read %u: %s\n", k, cdx_err_detail());
        /* Before or after the commit, never a mix: the whole page of one version. */
        CU_ASSERT(got == n0 + k - 1 || got == n0 + k);
        CU_ASSERT_PTR_NULL(next);
        eng_ids_free(ids, lens, got);
        free(next);
    }
    CU_ASSERT(fired >= 3); /* head, manifest and at least one bucket read were hit */
    eng_free(e2);
    fx_rm_rf(dir2);
    free(dir2);
    CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
    fx_ds_free(&s);
    fx_ds_free(&x);
}

static const fx_test tests[] = {
    {"two appliances upserting concurrently", test_two_appliances},
    {"lost tail, version reused by another appliance", test_lost_tail_version_reuse},
    {"sweep while an upsert is paused", test_sweep_vs_paused_upsert},
    {"index deleted while a get holds its entry", test_delete_under_reader},
    {"a commit at every read of a list page", test_list_under_commit},
};

int main(void)
{
    return fx_engine_run(tests, FX_LEN(tests));
}
