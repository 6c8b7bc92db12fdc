/*
 * Online key rotation (eng_rotate, eng_rotate_run; docs/ROTATION.md), on the
 * memory store and on Redis (fx_engine environments).
 *
 * 1. A rotation re-seals everything under the next epoch: the engine then
 *    serves exactly what it served before (model check: count, every get
 *    with vector, metadata and contents, exhaustive top-10 identical), and
 *    after a sweep every record in the store is of the new epoch; the old
 *    epoch's subkeys open none of them, the new one's open every one.
 * 2. Writes while a rotation is pending and during its run: an upsert and a
 *    delete made between its gather and its commit (the rotation rebases);
 *    an upsert whose tokens and contents were made under the old epoch but
 *    whose commit loses to the rotation (it re-tokenises and re-stores its
 *    contents under the new epoch).
 * 3. Interrupted: a run stopped after sealing the new records (as a crash
 *    there) leaves the index serving and "rotating"; a restarted appliance
 *    (a fresh engine) resumes it on its own (its rotation thread) and the
 *    interrupted attempt's records are swept.
 * 4. Minimum readable epoch: an old-epoch bucket restored over the current
 *    one is INTEGRITY (not served), and a list cursor of the old epoch is
 *    refused with a clear message.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <CUnit/Basic.h>
#include <openssl/rand.h>

#include "cdx_err.h"
#include "cdx_hex.h"
#include "cdx_time.h"
#include "eng.h"
#include "eng_keyspace.h"
#include "eng_maint.h"
#include "eng_record.h"
#include "eng_store.h"
#include "fx_cunit.h"
#include "fx_custody.h"
#include "fx_engine.h"
#include "hsm_admin.h"
#include "hsm_keys.h"
#include "hsm_provenance.h"
#include "hsm_subkey.h"

#define N  400
#define D  16
#define NQ 12

static bool all_alive[N];

/* Contents for row i (every third row has some). */
static void contents_of(size_t i, char *buf, size_t cap, size_t *len)
{
    *len = i % 3 ? 0 : (size_t)snprintf(buf, cap, "contents of row %zu, secret %zu", i, i * 7919);
}

/* A trained index of N rows (every third with contents); qs gets NQ queries. */
static void make_index(const char *name, fx_dataset *s, char (*cont)[64], float *qs)
{
    for (size_t i = 0; i < N; i++)
        all_alive[i] = true;
    fx_make_blobs(s, N, D, 8, 0);
    for (size_t i = 0; i < N; i++) {
        size_t len;
        contents_of(i, cont[i], 64, &len);
        s->items[i].contents = len ? (const uint8_t *)cont[i] : NULL;
        s->items[i].contents_len = len;
    }
    fx_create(name, D, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 8, NULL);
    fx_upsert(name, s->items, N / 2);
    CU_ASSERT_EQUAL_FATAL(eng_train(fx_eng, name, NULL, NULL), CDX_OK);
    fx_upsert(name, s->items + N / 2, N - N / 2);
    for (size_t i = 0; i < NQ * D; i++)
        qs[i] = fx_frand();
}

/* The contents of every row of s in `name` (alive) match, read by a fresh engine. */
static int check_contents(const char *name, const fx_dataset *s, const bool *alive)
{
    eng *e = fx_engine_open(fx_store, fx_statedir, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    int bad = 0;
    for (size_t i = 0; i < s->n; i++) {
        const char *id = s->ids[i];
        size_t l = strlen(id);
        eng_get_result *r = NULL;
        cdx_err err = eng_get(e, name, &id, &l, 1, ENG_WANT_CONTENTS, 0, &r);
        if (err) {
            bad++;
            continue;
        }
        bool want = !alive || alive[i];
        if (r->found[0] != want ||
            (want && (r->hits[0].contents_len != s->items[i].contents_len ||
                      (s->items[i].contents_len && memcmp(r->hits[0].contents, s->items[i].contents,
                                                          s->items[i].contents_len)))))
            bad++;
        eng_get_result_free(r);
    }
    eng_free(e);
    return bad;
}

/* An engine with state dir <suite>/sub that runs no rotation by itself (to look without
 * completing one, or to be the only one that runs it). */
static eng *idle_engine_in(const char *sub)
{
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/%s", fx_statedir, sub);
    eng_config c = {.custody = fx_cust,
                    .store = fx_store,
                    .state_dir = dir,
                    .cache_bytes = 64u << 20,
                    .no_rotation_thread = true};
    memcpy(c.deployment_id, fx_dep, 16);
    eng *e = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_new(&c, &e), CDX_OK);
    return e;
}

static eng *idle_engine(void)
{
    return idle_engine_in("idle");
}

/* An engine that sweeps with a grace of 1 ms. */
static eng *sweeper(void)
{
    eng_config c = {
        .custody = fx_cust, .store = fx_store, .state_dir = fx_statedir, .gc_grace_ms = 1};
    memcpy(c.deployment_id, fx_dep, 16);
    eng *sw = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_new(&c, &sw), CDX_OK);
    return sw;
}

/* Sweep until a sweep deletes nothing and nothing waits (bounded). */
static void sweep_all(eng *sw, const char *name)
{
    for (int i = 0; i < 200; i++) {
        eng_sweep_report r;
        CU_ASSERT_EQUAL_FATAL(eng_sweep_run(sw, name, &r), CDX_OK);
        if (i > 0 && r.deleted == 0 && r.waiting == 0)
            return;
        struct timespec ts = {0, 5 * 1000 * 1000}; /* the grace is 1 ms: let it pass */
        nanosleep(&ts, NULL);
    }
    CU_FAIL("the sweep never settled");
}

/* What a scan of the index's records found. */
typedef struct scan {
    size_t records, not_epoch;     /* records; of another epoch than asked */
    size_t opened_new, opened_old; /* single-record values the new / old subkeys open */
    size_t tried;                  /* single-record values tried with both */
} scan;

/* The subkey of the index key for (purpose, epoch). */
static hsm_subkey *subkey(const eng_index_info *info, hsm_purpose p, uint32_t epoch)
{
    hsm_key_ref k = {.kind = HSM_KEY_INDEX};
    memcpy(k.id, info->id, CDX_ID_LEN);
    hsm_subkey *sk = NULL;
    CU_ASSERT_EQUAL_FATAL(hsm_subkey_get(fx_cust, &k, info->kcv, p, epoch, &sk), CDX_OK);
    return sk;
}

/* Try to open one record with the subkeys of epochs `now` and `old`. */
static void try_open(scan *sc, const eng_index_info *info, const eng_val *v, hsm_purpose p,
                     eng_kind kind, const uint8_t tok[ENG_TOKEN_LEN], uint32_t now, uint32_t old,
                     bool kcv)
{
    eng_rec_hdr h;
    if (eng_rec_header(v->data, v->len, &h))
        return;
    hsm_subkey *kn = subkey(info, p, now), *ko = subkey(info, p, old);
    eng_buf pt;
    eng_buf_init(&pt);
    for (int which = 0; which < 2; which++) {
        /* As the record says (its header's epoch and version): only the key differs. */
        eng_rec_id id = {
            .scope = info->id, .kind = kind, .token = tok, .epoch = h.epoch, .version = h.version};
        eng_buf_free(&pt);
        eng_rec_hdr oh;
        if (!eng_rec_open(which ? ko : kn, &id, kcv ? info->kcv : NULL, v->data, v->len, &oh, &pt))
            (*(which ? &sc->opened_old : &sc->opened_new))++;
    }
    sc->tried++;
    eng_buf_free(&pt);
    hsm_subkey_release(kn);
    hsm_subkey_release(ko);
}

/* Every record of the index: its header's epoch; single-record values opened with both epochs. */
static scan scan_store(const eng_index_info *info, uint32_t now, uint32_t old)
{
    scan sc = {0};
    static const char kinds[] = {'m', 's', 't', 'c'};
    for (size_t k = 0; k < sizeof(kinds); k++) {
        char pat[128], kind[2] = {kinds[k], 0};
        char **keys = NULL;
        fx_key_of(info->id, kind, pat);
        size_t n = fx_keys_of(pat, &keys);
        for (size_t i = 0; i < n; i++) {
            eng_val v = fx_raw_get(keys[i]);
            eng_rec_hdr h;
            sc.records++;
            if (eng_rec_header(v.data, v.len, &h) || h.epoch != now)
                sc.not_epoch++;
            uint8_t tok[ENG_TOKEN_LEN];
            const char *hex = strrchr(keys[i], ':') + 1;
            if (kinds[k] != 's' && strlen(hex) == 2 * ENG_TOKEN_LEN &&
                !cdx_hex_decode(hex, tok, ENG_TOKEN_LEN))
                try_open(&sc, info, &v, kinds[k] == 't' ? HSM_P_CONTENT : HSM_P_MANIFEST,
                         kinds[k] == 'm'   ? ENG_K_MANIFEST
                         : kinds[k] == 't' ? ENG_K_CONTENT
                                           : ENG_K_CENTROIDS,
                         tok, now, old, kinds[k] != 't');
            eng_vals_free(&v, 1);
            free(keys[i]);
        }
        free(keys);
    }
    /* The head and every bucket. */
    char key[CDX_STORE_KEY_MAX];
    eng_key_head(key, info->id);
    eng_val v = fx_raw_get(key);
    eng_rec_hdr h;
    sc.records++;
    if (eng_rec_header(v.data, v.len, &h) || h.epoch != now)
        sc.not_epoch++;
    try_open(&sc, info, &v, HSM_P_MANIFEST, ENG_K_HEAD, eng_zero_token, now, old, true);
    eng_vals_free(&v, 1);
    for (unsigned b = 0; b < ENG_BUCKETS; b++) {
        eng_key_bucket(key, info->id, b);
        v = fx_raw_get(key);
        if (v.found) {
            uint8_t tok[ENG_TOKEN_LEN];
            eng_bucket_token(b, tok);
            sc.records++;
            if (eng_rec_header(v.data, v.len, &h) || h.epoch != now)
                sc.not_epoch++;
            try_open(&sc, info, &v, HSM_P_MANIFEST, ENG_K_BUCKET, tok, now, old, true);
        }
        eng_vals_free(&v, 1);
    }
    return sc;
}

static void test_rotate_everything(void)
{
    char name[64];
    fx_uniq_name(name, "rot");
    fx_dataset s;
    static char cont[N][64];
    float qs[NQ * D];
    make_index(name, &s, cont, qs);
    fx_qres before[NQ], after[NQ];
    CU_ASSERT_EQUAL(fx_check_model(NULL, name, &s, all_alive, qs, NQ, before, NULL, false), 0);

    eng_index_info info;
    CU_ASSERT_EQUAL_FATAL(eng_rotate(fx_eng, name, &info), CDX_OK);
    CU_ASSERT_STRING_EQUAL(info.state, "rotating");
    CU_ASSERT_EQUAL(info.key_epoch, 0);
    CU_ASSERT_EQUAL(info.rotate_to, 1);
    CU_ASSERT(info.rotate_started_ms > 0);
    /* Asked again while pending: the same rotation, not a second epoch. */
    CU_ASSERT_EQUAL_FATAL(eng_rotate(fx_eng, name, &info), CDX_OK);
    CU_ASSERT_EQUAL(info.rotate_to, 1);
    /* Still serving meanwhile, the same answers. */
    CU_ASSERT_EQUAL(fx_check_model(fx_eng, name, &s, all_alive, qs, NQ, after, before, false), 0);

    eng_rotate_report r;
    CU_ASSERT_EQUAL_FATAL(eng_rotate_run(fx_eng, name, &r), CDX_OK);
    /* The rotation thread may have finished it first: then this run found nothing pending. */
    if (r.to) {
        CU_ASSERT_EQUAL(r.from, 0);
        CU_ASSERT_EQUAL(r.to, 1);
        CU_ASSERT_EQUAL(r.items, N);
        CU_ASSERT_EQUAL(r.contents, (N + 2) / 3);
    }
    CU_ASSERT_EQUAL_FATAL(eng_index_describe(fx_eng, name, &info), CDX_OK);
    CU_ASSERT_STRING_EQUAL(info.state, "ready");
    CU_ASSERT_EQUAL(info.key_epoch, 1);
    CU_ASSERT_EQUAL(info.min_epoch, 1);
    CU_ASSERT_EQUAL(info.rotate_to, 0);
    CU_ASSERT(info.rotated_ms > 0);
    CU_ASSERT_EQUAL(info.count, N);

    /* The same answers, from this engine and from a fresh one; contents too. */
    CU_ASSERT_EQUAL(fx_check_model(fx_eng, name, &s, all_alive, qs, NQ, after, before, false), 0);
    CU_ASSERT_EQUAL(fx_check_model(NULL, name, &s, all_alive, qs, NQ, after, before, false), 0);
    CU_ASSERT_EQUAL(check_contents(name, &s, NULL), 0);

    /* Before the sweep the old records are still there (unreferenced)... */
    scan sc = scan_store(&info, 1, 0);
    CU_ASSERT(sc.not_epoch > 0);
    /* ...after it, none: every record is of epoch 1; epoch 0's subkeys open none. */
    eng *sw = sweeper();
    sweep_all(sw, name);
    sc = scan_store(&info, 1, 0);
    printf("\n  rotation 0 -> 1: %zu records in the store after the sweep, %zu of another "
           "epoch; %zu single-record values: new subkeys open %zu, old ones %zu\n",
           sc.records, sc.not_epoch, sc.tried, sc.opened_new, sc.opened_old);
    CU_ASSERT(sc.records > N / 3 + ENG_BUCKETS / 2);
    CU_ASSERT_EQUAL(sc.not_epoch, 0);
    CU_ASSERT(sc.tried > N / 3);
    CU_ASSERT_EQUAL(sc.opened_new, sc.tried);
    CU_ASSERT_EQUAL(sc.opened_old, 0);
    CU_ASSERT_EQUAL(fx_check_model(NULL, name, &s, all_alive, qs, NQ, after, before, false), 0);

    /* A second rotation: epoch 2, same answers, nothing of epoch 1 left after a sweep. */
    CU_ASSERT_EQUAL_FATAL(eng_rotate(fx_eng, name, NULL), CDX_OK);
    CU_ASSERT_EQUAL_FATAL(eng_rotate_run(fx_eng, name, &r), CDX_OK);
    CU_ASSERT_EQUAL_FATAL(eng_index_describe(fx_eng, name, &info), CDX_OK);
    CU_ASSERT_EQUAL(info.key_epoch, 2);
    sweep_all(sw, name);
    sc = scan_store(&info, 2, 1);
    CU_ASSERT_EQUAL(sc.not_epoch, 0);
    CU_ASSERT_EQUAL(sc.opened_old, 0);
    CU_ASSERT_EQUAL(sc.opened_new, sc.tried);
    CU_ASSERT_EQUAL(fx_check_model(NULL, name, &s, all_alive, qs, NQ, after, before, false), 0);
    CU_ASSERT_EQUAL(check_contents(name, &s, NULL), 0);
    eng_free(sw);
    fx_ds_free(&s);
}

/* ---- writes during a rotation ---- */

typedef struct during {
    eng *e;
    const char *name;
    fx_dataset *s;
    bool *alive;
    int fired;
    const char *at; /* the rotation step to write at */
} during;

/* Rotation hook: at step `at` (first time only) upsert new vectors for rows 0..9, delete 10..19. */
static cdx_err write_during(void *arg, const char *index, const char *step)
{
    during *w = arg;
    if (strcmp(index, w->name) || strcmp(step, w->at) || w->fired++)
        return CDX_OK;
    for (size_t i = 0; i < 10; i++) {
        fx_rand_vec(w->s->x + i * D, D);
        w->s->items[i].vector = w->s->x + i * D;
    }
    CU_ASSERT_EQUAL(eng_upsert(w->e, w->name, w->s->items, 10, NULL), CDX_OK);
    const char *ids[10];
    size_t lens[10];
    for (size_t i = 0; i < 10; i++) {
        ids[i] = w->s->ids[10 + i];
        lens[i] = strlen(ids[i]);
        w->alive[10 + i] = false;
    }
    uint64_t nd = 0;
    CU_ASSERT_EQUAL(eng_delete(w->e, w->name, ids, lens, 10, &nd, NULL), CDX_OK);
    CU_ASSERT_EQUAL(nd, 10);
    return CDX_OK;
}

/* Commit hook: before the first commit of an upsert, complete the pending rotation (nested). */
static struct {
    eng *e;
    const char *name;
    int state; /* 0 armed, 1 rotating, 2 done */
    cdx_err err;
} rotate_in_commit;

static void rotate_before_commit(void *arg, const uint8_t id[CDX_ID_LEN])
{
    (void)arg;
    (void)id;
    if (rotate_in_commit.state != 0)
        return;
    rotate_in_commit.state = 1;
    eng_rotate_report r;
    rotate_in_commit.err = eng_rotate_run(rotate_in_commit.e, rotate_in_commit.name, &r);
    rotate_in_commit.state = 2;
}

static void test_rotate_with_writes(void)
{
    char name[64];
    fx_uniq_name(name, "rotw");
    fx_dataset s;
    static char cont[N][64];
    float qs[NQ * D];
    bool alive[N];
    for (size_t i = 0; i < N; i++)
        alive[i] = true;
    make_index(name, &s, cont, qs);
    /* Every rotation and write of this test on an engine that runs none by itself, so the
     * steps below happen in the order written (fx_eng has not seen a rotation of this index). */
    eng *ie = idle_engine();

    /* Pending: writes still commit (under the old epoch). */
    CU_ASSERT_EQUAL_FATAL(eng_rotate(ie, name, NULL), CDX_OK);
    for (size_t i = 20; i < 30; i++) {
        fx_rand_vec(s.x + i * D, D);
        s.items[i].vector = s.x + i * D;
    }
    CU_ASSERT_EQUAL(eng_upsert(ie, name, s.items + 20, 10, NULL), CDX_OK);

    /* During the run, between its gather and its commit: it rebases. */
    during w = {.e = ie, .name = name, .s = &s, .alive = alive, .at = "sealed"};
    eng_set_rotate_hook(ie, write_during, &w);
    eng_rotate_report r;
    cdx_err err = eng_rotate_run(ie, name, &r);
    eng_set_rotate_hook(ie, NULL, NULL);
    CU_ASSERT_EQUAL_FATAL(err, CDX_OK);
    eng_index_info info;
    CU_ASSERT_EQUAL_FATAL(eng_index_describe(ie, name, &info), CDX_OK);
    CU_ASSERT_EQUAL(info.key_epoch, 1);
    CU_ASSERT_EQUAL(info.count, N - 10);
    /* The run lost its first commit to those writes and rebased. */
    CU_ASSERT_EQUAL(w.fired, r.attempts); /* the hook writes once, at the first */
    CU_ASSERT_EQUAL(r.to, 1);
    CU_ASSERT(r.attempts >= 2);
    CU_ASSERT_EQUAL(r.items, N - 10);
    CU_ASSERT_EQUAL(fx_check_model(NULL, name, &s, alive, qs, NQ, NULL, NULL, false), 0);
    CU_ASSERT_EQUAL(check_contents(name, &s, alive), 0);

    /* An upsert with contents whose tokens were made under epoch 1 loses its commit to a
     * rotation to epoch 2: it re-tokenises and re-stores its contents, and lands. */
    CU_ASSERT_EQUAL_FATAL(eng_rotate(ie, name, NULL), CDX_OK);
    rotate_in_commit.e = ie;
    rotate_in_commit.name = name;
    rotate_in_commit.state = 0;
    eng_set_commit_hook(ie, rotate_before_commit, NULL);
    for (size_t i = 30; i < 45; i++) {
        fx_rand_vec(s.x + i * D, D);
        s.items[i].vector = s.x + i * D;
        s.items[i].contents = (const uint8_t *)"new contents after the rotation";
        s.items[i].contents_len = strlen("new contents after the rotation");
    }
    err = eng_upsert(ie, name, s.items + 30, 15, NULL);
    eng_set_commit_hook(ie, NULL, NULL);
    CU_ASSERT_EQUAL(err, CDX_OK);
    CU_ASSERT_EQUAL(rotate_in_commit.state, 2);
    CU_ASSERT_EQUAL(rotate_in_commit.err, CDX_OK);
    CU_ASSERT_EQUAL_FATAL(eng_index_describe(ie, name, &info), CDX_OK);
    CU_ASSERT_EQUAL(info.key_epoch, 2);
    CU_ASSERT_EQUAL(fx_check_model(NULL, name, &s, alive, qs, NQ, NULL, NULL, false), 0);
    CU_ASSERT_EQUAL(check_contents(name, &s, alive), 0);
    /* A delete too, by ids tokenised before it reads the state. */
    const char *id = s.ids[50];
    size_t l = strlen(id);
    uint64_t nd = 0;
    CU_ASSERT_EQUAL(eng_delete(ie, name, &id, &l, 1, &nd, NULL), CDX_OK);
    CU_ASSERT_EQUAL(nd, 1);
    alive[50] = false;
    eng *sw = sweeper();
    sweep_all(sw, name);
    eng_free(sw);
    scan sc = scan_store(&info, 2, 1);
    CU_ASSERT_EQUAL(sc.not_epoch, 0);
    CU_ASSERT_EQUAL(sc.opened_old, 0);
    CU_ASSERT_EQUAL(fx_check_model(NULL, name, &s, alive, qs, NQ, NULL, NULL, false), 0);
    CU_ASSERT_EQUAL(check_contents(name, &s, alive), 0);
    eng_free(ie);
    fx_ds_free(&s);
}

/* ---- interruption ---- */

static cdx_err stop_at_sealed(void *arg, const char *index, const char *step)
{
    (void)index;
    int *stops = arg;
    if (strcmp(step, "sealed"))
        return CDX_OK;
    (*stops)++;
    return cdx_fail(CDX_ERR_UNAVAILABLE, "test: the appliance crashed here");
}

static void test_rotate_interrupted(void)
{
    char name[64];
    fx_uniq_name(name, "rotx");
    fx_dataset s;
    static char cont[N][64];
    float qs[NQ * D];
    fx_qres before[NQ];
    make_index(name, &s, cont, qs);
    CU_ASSERT_EQUAL(fx_check_model(NULL, name, &s, all_alive, qs, NQ, before, NULL, true), 0);
    char pat[128];
    char **keys = NULL;
    eng_index_info info;
    CU_ASSERT_EQUAL_FATAL(eng_index_describe(fx_eng, name, &info), CDX_OK);
    fx_key_of(info.id, "s", pat);
    size_t nseg = fx_keys_of(pat, &keys);
    for (size_t i = 0; i < nseg; i++)
        free(keys[i]);
    free(keys);

    /* An appliance whose rotation "crashes" after sealing every new record. */
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/crashing", fx_statedir);
    eng *a = fx_engine_open(fx_store, dir, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    int stops = 0;
    eng_set_rotate_hook(a, stop_at_sealed, &stops);
    CU_ASSERT_EQUAL_FATAL(eng_rotate(a, name, &info), CDX_OK);
    eng_rotate_report r;
    CU_ASSERT_EQUAL(eng_rotate_run(a, name, &r), CDX_ERR_UNAVAILABLE);
    CU_ASSERT(stops >= 1);
    eng_free(a); /* its rotation thread stops too */
    /* The new records are in the store, unreferenced; the index serves, still rotating. */
    fx_key_of(info.id, "s", pat);
    size_t n = fx_keys_of(pat, &keys);
    for (size_t i = 0; i < n; i++)
        free(keys[i]);
    free(keys);
    CU_ASSERT(n > nseg);
    eng *idle = idle_engine();
    CU_ASSERT_EQUAL(fx_check_model(idle, name, &s, all_alive, qs, NQ, NULL, before, false), 0);
    CU_ASSERT_EQUAL_FATAL(eng_index_describe(idle, name, &info), CDX_OK);
    CU_ASSERT_STRING_EQUAL(info.state, "rotating");
    CU_ASSERT_EQUAL(info.key_epoch, 0);
    eng_free(idle);

    /* A restarted appliance: its first read of the index finds the rotation pending and its
     * rotation thread completes it. Bounded wait for the state (no other signal crosses). */
    snprintf(dir, sizeof(dir), "%s/restarted", fx_statedir);
    eng *b = fx_engine_open(fx_store, dir, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL_FATAL(eng_index_describe(b, name, &info), CDX_OK);
    CU_ASSERT_STRING_EQUAL(info.state, "rotating");
    /* The counter moves just after the commit makes the state visible: wait for both. */
    int64_t deadline = cdx_mono_ms() + 30000;
    eng_stats st;
    eng_get_stats(b, &st);
    while ((info.key_epoch != 1 || st.rotations != 1) && cdx_mono_ms() < deadline) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
        CU_ASSERT_EQUAL_FATAL(eng_index_describe(b, name, &info), CDX_OK);
        eng_get_stats(b, &st);
    }
    CU_ASSERT_EQUAL(info.key_epoch, 1);
    CU_ASSERT_STRING_EQUAL(info.state, "ready");
    CU_ASSERT_EQUAL(st.rotations, 1); /* b did it: nothing else runs a rotation here */
    eng_free(b);
    CU_ASSERT_EQUAL(fx_check_model(NULL, name, &s, all_alive, qs, NQ, NULL, before, false), 0);
    CU_ASSERT_EQUAL(check_contents(name, &s, NULL), 0);
    /* Everything of epoch 0 and the crashed attempt's records go with the sweep. */
    eng *sw = sweeper();
    sweep_all(sw, name);
    eng_free(sw);
    scan sc = scan_store(&info, 1, 0);
    CU_ASSERT_EQUAL(sc.not_epoch, 0);
    CU_ASSERT_EQUAL(sc.opened_old, 0);
    fx_key_of(info.id, "s", pat);
    n = fx_keys_of(pat, &keys);
    for (size_t i = 0; i < n; i++)
        free(keys[i]);
    free(keys);
    CU_ASSERT_EQUAL(n, info.segments); /* no orphan of the crashed attempt */
    fx_ds_free(&s);
}

/* ---- a crash after every store write of a rotation ---- */

static void test_rotate_crash_points(void)
{
    const size_t n = 60, d = 8;
    fx_dataset s;
    fx_ds_make(&s, n, d, "k");
    static char cont[60][64];
    bool alive[60];
    for (size_t i = 0; i < n; i++) {
        size_t len;
        contents_of(i, cont[i], 64, &len);
        s.items[i].contents = len ? (const uint8_t *)cont[i] : NULL;
        s.items[i].contents_len = len;
        alive[i] = true;
    }
    float qs[4 * 8];
    for (size_t i = 0; i < 4 * d; i++)
        qs[i] = fx_frand();
    eng *ie = idle_engine();
    int points = 0, before = 0, after = 0;
    for (uint64_t nth = 1; nth < 200; nth++) {
        char name[64];
        fx_uniq_name(name, "rotk");
        eng_index_info info;
        fx_create(name, d, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 4, &info);
        fx_upsert(name, s.items, n);
        CU_ASSERT_EQUAL_FATAL(eng_train(fx_eng, name, NULL, NULL), CDX_OK);
        CU_ASSERT_EQUAL_FATAL(eng_rotate(ie, name, NULL), CDX_OK);
        eng_store_fault_arm(fx_fault, nth);
        eng_rotate_report r;
        cdx_err err = eng_rotate_run(ie, name, &r);
        eng_store_fault_disarm(fx_fault);
        CU_ASSERT_EQUAL_FATAL(eng_index_describe(ie, name, &info), CDX_OK);
        /* Before (epoch 0, still rotating) or after (epoch 1, done): nothing between. */
        bool was_after = info.key_epoch == 1 && info.rotate_to == 0;
        CU_ASSERT_TRUE(was_after || (info.key_epoch == 0 && info.rotate_to == 1));
        CU_ASSERT_EQUAL(fx_check_model(ie, name, &s, alive, qs, 4, NULL, NULL, true), 0);
        if (err == CDX_OK) {
            CU_ASSERT_TRUE(was_after);
            CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
            break; /* past the last write: the rotation completed */
        }
        points++;
        before += !was_after;
        after += was_after;
        /* Resumed after the "restart": done, same contents, nothing of epoch 0 after a sweep. */
        CU_ASSERT_EQUAL(eng_rotate_run(ie, name, &r), CDX_OK);
        CU_ASSERT_EQUAL_FATAL(eng_index_describe(ie, name, &info), CDX_OK);
        CU_ASSERT_EQUAL(info.key_epoch, 1);
        CU_ASSERT_EQUAL(fx_check_model(ie, name, &s, alive, qs, 4, NULL, NULL, true), 0);
        CU_ASSERT_EQUAL(check_contents(name, &s, alive), 0);
        eng *sw = sweeper();
        sweep_all(sw, name);
        eng_free(sw);
        scan sc = scan_store(&info, 1, 0);
        CU_ASSERT_EQUAL(sc.not_epoch, 0);
        CU_ASSERT_EQUAL(sc.opened_old, 0);
        CU_ASSERT_EQUAL(eng_index_delete(fx_eng, name, info.id), CDX_OK);
    }
    printf("\n  crash points of a rotation: %d (%d before, %d after), every one resumed\n", points,
           before, after);
    CU_ASSERT_TRUE(points >= 10);
    CU_ASSERT_TRUE(before >= 1);
    eng_free(ie);
    fx_ds_free(&s);
}

/* ---- the minimum readable epoch ---- */

static void test_rotate_min_epoch(void)
{
    char name[64];
    fx_uniq_name(name, "rotm");
    fx_dataset s;
    static char cont[N][64];
    float qs[NQ * D];
    make_index(name, &s, cont, qs);
    eng_index_info info;
    CU_ASSERT_EQUAL_FATAL(eng_index_describe(fx_eng, name, &info), CDX_OK);
    /* A list cursor and the bucket holding row 0, both of epoch 0. */
    char **ids = NULL, *next = NULL;
    size_t *lens = NULL, n = 0;
    CU_ASSERT_EQUAL_FATAL(eng_list_ids(fx_eng, name, NULL, 10, &ids, &lens, &n, &next), CDX_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(next);
    eng_ids_free(ids, lens, n);
    char key[CDX_STORE_KEY_MAX];
    eng_val old[ENG_BUCKETS];
    for (unsigned b = 0; b < ENG_BUCKETS; b++) {
        eng_key_bucket(key, info.id, b);
        old[b] = fx_raw_get(key);
    }
    CU_ASSERT_EQUAL_FATAL(eng_rotate(fx_eng, name, NULL), CDX_OK);
    CU_ASSERT_EQUAL_FATAL(eng_rotate_run(fx_eng, name, NULL), CDX_OK);
    /* The old cursor: refused, saying why. */
    char *next2 = NULL;
    CU_ASSERT_EQUAL(eng_list_ids(fx_eng, name, next, 10, &ids, &lens, &n, &next2),
                    CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "rotated"));
    free(next);
    free(next2);
    /* Old buckets put back over the new ones (a partial restore): refused, never served. */
    for (unsigned b = 0; b < ENG_BUCKETS; b++) {
        eng_key_bucket(key, info.id, b);
        if (old[b].found)
            fx_raw_set(key, old[b].data, old[b].len);
    }
    eng *e = fx_engine_open(fx_store, fx_statedir, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    /* An id whose new bucket had an old copy (most: a few buckets were empty) is refused. */
    size_t refused = 0, other = 0;
    for (size_t i = 0; i < 50; i++) {
        const char *id = s.ids[i];
        size_t l = strlen(id);
        eng_get_result *r = NULL;
        cdx_err gerr = eng_get(e, name, &id, &l, 1, 0, 0, &r);
        if (gerr == CDX_ERR_INTEGRITY && strstr(cdx_err_detail(), "minimum readable epoch"))
            refused++;
        else if (gerr)
            other++;
        eng_get_result_free(r);
    }
    CU_ASSERT(refused >= 25);
    CU_ASSERT_EQUAL(other, 0);
    eng_free(e);
    for (unsigned b = 0; b < ENG_BUCKETS; b++)
        eng_vals_free(&old[b], 1);
    fx_ds_free(&s);
}

/* ---- under load ---- */

#define LN   20000 /* items */
#define LD   32
#define LNQ  64 /* distinct query vectors */
#define LK   10
#define LPRB 2 /* n_probes: approximate, so recall < 1 and any change would show */

typedef struct load {
    eng *e;
    const char *name;
    const fx_dataset *s;
    const float *qs;
    const size_t (*gt)[LK]; /* exact top-LK of each query over the base items */
    atomic_bool stop;
    atomic_uint_fast64_t queries, failures, hits, upserts;
    atomic_uint_fast64_t qhits[LNQ], qruns[LNQ]; /* per query: ground truth found, runs */
    const uint64_t *want;                        /* per query: hits of the single pass before */
    atomic_uint_fast64_t changed;                /* answers whose hits differ from want */
    cdx_err first_err;
    char first_msg[256];
} load;

static void load_fail(load *l, cdx_err err)
{
    if (atomic_fetch_add(&l->failures, 1) == 0) {
        l->first_err = err;
        snprintf(l->first_msg, sizeof(l->first_msg), "%s", cdx_err_detail());
    }
}

/* Query thread: one query at a time, round robin over the set; hits = ground truth found. */
static void *load_query(void *arg)
{
    load *l = arg;
    for (size_t i = 0; !atomic_load(&l->stop); i++) {
        size_t qi = i % LNQ;
        eng_query q = {.vectors = l->qs + qi * LD, .nq = 1, .top_k = LK, .n_probes = LPRB};
        eng_query_result *r = NULL;
        cdx_err err = eng_query_run(l->e, l->name, &q, &r);
        if (err) {
            load_fail(l, err);
            continue;
        }
        uint64_t h = 0;
        for (size_t j = 0; j < r->n[0]; j++)
            for (size_t g = 0; g < LK; g++)
                h += r->hits[0][j].id_len == strlen(l->s->ids[l->gt[qi][g]]) &&
                     !memcmp(r->hits[0][j].id, l->s->ids[l->gt[qi][g]], r->hits[0][j].id_len);
        eng_query_result_free(r);
        atomic_fetch_add(&l->hits, h);
        atomic_fetch_add(&l->qhits[qi], h);
        atomic_fetch_add(&l->qruns[qi], 1);
        if (l->want && h != l->want[qi])
            atomic_fetch_add(&l->changed, 1);
        atomic_fetch_add(&l->queries, 1);
    }
    return NULL;
}

/* Upsert thread: batches of 10 new items far from every query (they never enter a top-10),
 * and every other batch re-upserts 10 base items unchanged (tombstones, same answers). */
static void *load_upsert(void *arg)
{
    load *l = arg;
    float v[10 * LD];
    char ids[10][24];
    eng_item it[10];
    for (size_t b = 0; !atomic_load(&l->stop); b++) {
        size_t n = 10;
        if (b % 2) {
            for (size_t i = 0; i < n; i++)
                it[i] = l->s->items[(b * 10 + i) % LN];
        } else {
            for (size_t i = 0; i < n; i++) {
                snprintf(ids[i], sizeof(ids[i]), "far%zu", b * 10 + i);
                for (size_t j = 0; j < LD; j++)
                    v[i * LD + j] = 1000.0f + (float)((b * 10 + i + j) % 97);
                it[i] = (eng_item){.id = ids[i], .id_len = strlen(ids[i]), .vector = v + i * LD};
            }
        }
        cdx_err err = eng_upsert(l->e, l->name, it, n, NULL);
        if (err)
            load_fail(l, err);
        else
            atomic_fetch_add(&l->upserts, 1);
    }
    return NULL;
}

/* Run 2 query threads and 1 upsert thread until stop; returns after joining them. */
typedef struct load_run {
    pthread_t t[3];
} load_run;

static void load_start(load *l, load_run *r)
{
    atomic_store(&l->stop, false);
    atomic_store(&l->queries, 0);
    atomic_store(&l->hits, 0);
    atomic_store(&l->upserts, 0);
    atomic_store(&l->changed, 0);
    for (size_t q = 0; q < LNQ; q++) {
        atomic_store(&l->qhits[q], 0);
        atomic_store(&l->qruns[q], 0);
    }
    pthread_create(&r->t[0], NULL, load_query, l);
    pthread_create(&r->t[1], NULL, load_query, l);
    pthread_create(&r->t[2], NULL, load_upsert, l);
}

static void load_stop(load *l, load_run *r)
{
    atomic_store(&l->stop, true);
    for (int i = 0; i < 3; i++)
        pthread_join(r->t[i], NULL);
}

/* Recall@LK of the last run: the mean over the queries that ran of each one's mean recall. */
static double load_recall(load *l)
{
    double sum = 0;
    size_t n = 0;
    for (size_t q = 0; q < LNQ; q++)
        if (atomic_load(&l->qruns[q])) {
            sum += (double)atomic_load(&l->qhits[q]) / (double)(atomic_load(&l->qruns[q]) * LK);
            n++;
        }
    return n ? sum / (double)n : 0;
}

/* Ground truth found by each query, one pass on e; returns recall@LK over all of them. */
static double recall_pass(eng *e, const char *name, const fx_dataset *s, const float *qs,
                          const size_t (*gt)[LK], uint64_t *hits)
{
    uint64_t all = 0;
    for (size_t q = 0; q < LNQ; q++) {
        eng_query qq = {.vectors = qs + q * LD, .nq = 1, .top_k = LK, .n_probes = LPRB};
        eng_query_result *r = NULL;
        hits[q] = 0;
        CU_ASSERT_EQUAL_FATAL(eng_query_run(e, name, &qq, &r), CDX_OK);
        for (size_t j = 0; j < r->n[0]; j++)
            for (size_t g = 0; g < LK; g++)
                hits[q] += strlen(s->ids[gt[q][g]]) == r->hits[0][j].id_len &&
                           !memcmp(r->hits[0][j].id, s->ids[gt[q][g]], r->hits[0][j].id_len);
        eng_query_result_free(r);
        all += hits[q];
    }
    return (double)all / (double)(LNQ * LK);
}

static void test_rotate_under_load(void)
{
    char name[64];
    fx_uniq_name(name, "rotl");
    fx_dataset s;
    fx_make_blobs(&s, LN, LD, 16, 0); /* blobs spanning several lists each */
    float *qs = malloc(LNQ * LD * sizeof(float));
    size_t(*gt)[LK] = malloc(LNQ * sizeof(*gt));
    for (size_t q = 0; q < LNQ; q++)
        for (size_t j = 0; j < LD; j++)
            qs[q * LD + j] = s.x[(q * 311 % LN) * LD + j] + fx_frand() * 0.5f;
    for (size_t q = 0; q < LNQ; q++)
        CU_ASSERT_EQUAL_FATAL(
            fx_ref_topk(&s, NULL, ENG_METRIC_EUCLIDEAN, qs + q * LD, LK, gt[q], NULL), LK);
    fx_create(name, LD, ENG_METRIC_EUCLIDEAN, ENG_IVFFLAT, 128, NULL);
    for (size_t at = 0; at < LN; at += 1000)
        fx_upsert(name, s.items + at, 1000);
    CU_ASSERT_EQUAL_FATAL(eng_train(fx_eng, name, NULL, NULL), CDX_OK);
    /* Every query and write on an engine whose rotation this test runs itself. */
    eng *e = idle_engine();
    static load l;
    memset(&l, 0, sizeof(l));
    l.e = e;
    l.name = name;
    l.s = &s;
    l.qs = qs;
    l.gt = (const size_t(*)[LK])gt;
    uint64_t want[LNQ], after_hits[LNQ];
    double recall0 = recall_pass(e, name, &s, qs, (const size_t(*)[LK])gt, want);
    l.want = want;

    /* Before: 2 s of the same load. */
    load_run lr;
    load_start(&l, &lr);
    int64_t t0 = cdx_mono_ms();
    while (cdx_mono_ms() - t0 < 2000) {
        struct timespec ts = {0, 50 * 1000 * 1000}; /* the measuring window, not a sync */
        nanosleep(&ts, NULL);
    }
    load_stop(&l, &lr);
    double s_before = (double)(cdx_mono_ms() - t0) / 1000.0;
    uint64_t q_before = atomic_load(&l.queries), u_before = atomic_load(&l.upserts);
    double recall_before = load_recall(&l);
    uint64_t changed_before = atomic_load(&l.changed);

    /* During: the same load while the rotation runs to completion on this thread. */
    load_start(&l, &lr);
    t0 = cdx_mono_ms();
    eng_rotate_report rr;
    memset(&rr, 0, sizeof(rr));
    cdx_err err = eng_rotate(e, name, NULL);
    if (!err)
        err = eng_rotate_run(e, name, &rr);
    int64_t t1 = cdx_mono_ms();
    load_stop(&l, &lr);
    double s_during = (double)(t1 - t0) / 1000.0;
    uint64_t q_during = atomic_load(&l.queries), u_during = atomic_load(&l.upserts);
    double recall_during = load_recall(&l);
    uint64_t changed_during = atomic_load(&l.changed);
    CU_ASSERT_EQUAL_FATAL(err, CDX_OK);

    /* After: every query once more, no load. */
    eng_index_info info;
    CU_ASSERT_EQUAL_FATAL(eng_index_describe(e, name, &info), CDX_OK);
    double recall_after = recall_pass(e, name, &s, qs, (const size_t(*)[LK])gt, after_hits);
    size_t changed_after = 0;
    for (size_t q = 0; q < LNQ; q++)
        changed_after += after_hits[q] != want[q];

    eng *sw = sweeper();
    int64_t t2 = cdx_mono_ms();
    sweep_all(sw, name);
    int64_t t3 = cdx_mono_ms();
    eng_free(sw);
    scan sc = scan_store(&info, info.key_epoch, info.key_epoch - 1);
    printf("\n  under load: %d items, %d lists, n_probes %d, 2 query threads + 1 upsert thread "
           "(batches of 10 items: new far ones, or base ones unchanged)\n"
           "    baseline: recall@10 %.4f (one pass of the %d queries)\n"
           "    before:  %.2f s, %llu queries (%.0f QPS), %llu upserts, recall@10 %.4f, answers "
           "changed %llu\n"
           "    during:  rotation %u -> %u in %.2f s (%u attempts, %llu items, run %llu ms): "
           "%llu queries (%.0f QPS), %llu upserts, recall@10 %.4f, answers changed %llu, "
           "failures %llu\n"
           "    after:   recall@10 %.4f (answers changed %zu); sweep %.2f s; store: %zu records, "
           "%zu of another epoch; %zu single-record values: new subkeys open %zu, old ones %zu\n",
           LN, 128, LPRB, recall0, LNQ, s_before, (unsigned long long)q_before,
           (double)q_before / s_before, (unsigned long long)u_before, recall_before,
           (unsigned long long)changed_before, rr.from, rr.to, s_during, rr.attempts,
           (unsigned long long)rr.items, (unsigned long long)rr.ms, (unsigned long long)q_during,
           q_during / s_during, (unsigned long long)u_during, recall_during,
           (unsigned long long)changed_during, (unsigned long long)atomic_load(&l.failures),
           recall_after, changed_after, (double)(t3 - t2) / 1000.0, sc.records, sc.not_epoch,
           sc.tried, sc.opened_new, sc.opened_old);
    if (atomic_load(&l.failures))
        printf("    first failure: %s %s\n", cdx_err_name(l.first_err), l.first_msg);
    CU_ASSERT_EQUAL(atomic_load(&l.failures), 0);
    CU_ASSERT_EQUAL(info.key_epoch, 1);
    CU_ASSERT_EQUAL(rr.to, 1);
    CU_ASSERT(q_during > 0);
    CU_ASSERT(u_during > 0);
    CU_ASSERT(fabs(recall_before - recall0) <= 0.001);
    CU_ASSERT(fabs(recall_during - recall0) <= 0.001);
    CU_ASSERT(fabs(recall_after - recall0) <= 0.001);
    CU_ASSERT_EQUAL(sc.not_epoch, 0);
    CU_ASSERT_EQUAL(sc.opened_old, 0);
    CU_ASSERT_EQUAL(sc.opened_new, sc.tried);
    eng_free(e);
    free(qs);
    free(gt);
    fx_ds_free(&s);
}

/* ---- --new-key: a new token key per rotation ---- */

/* Index key generation gen of index id: CDX_OK with its KCV, or the lookup's error. */
static cdx_err key_at(const uint8_t id[CDX_ID_LEN], uint32_t gen, uint8_t kcv[CDX_KCV_LEN])
{
    hsm_key_ref k = {.kind = HSM_KEY_INDEX, .gen = gen};
    memcpy(k.id, id, CDX_ID_LEN);
    return hsm_key_kcv(fx_cust, &k, kcv);
}

static void test_rotate_new_key(void)
{
    char name[64];
    fx_uniq_name(name, "rotk");
    fx_dataset s;
    static char cont[N][64];
    float qs[NQ * D];
    fx_qres before[NQ], after[NQ];
    make_index(name, &s, cont, qs);
    CU_ASSERT_EQUAL(fx_check_model(NULL, name, &s, all_alive, qs, NQ, before, NULL, false), 0);
    /* Another appliance that has the index (and its key) loaded before the rotation. */
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/otherk", fx_statedir);
    eng *other = fx_engine_open(fx_store, dir, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(other);
    CU_ASSERT_EQUAL(fx_check_model(other, name, &s, all_alive, qs, NQ, after, before, false), 0);

    eng_index_info info;
    CU_ASSERT_EQUAL_FATAL(eng_index_describe(fx_eng, name, &info), CDX_OK);
    CU_ASSERT_EQUAL(info.key_gen, 0);
    CU_ASSERT_EQUAL(info.new_key_gen, 0);
    uint8_t kcv0[CDX_KCV_LEN], kcv1[CDX_KCV_LEN], k[CDX_KCV_LEN];
    memcpy(kcv0, info.kcv, CDX_KCV_LEN);
    uint8_t id[CDX_ID_LEN];
    memcpy(id, info.id, CDX_ID_LEN);

    CU_ASSERT_EQUAL_FATAL(eng_rotate_key(fx_eng, name, true, &info), CDX_OK);
    CU_ASSERT_STRING_EQUAL(info.state, "rotating");
    CU_ASSERT_EQUAL(info.rotate_to, 1);
    CU_ASSERT_EQUAL(info.new_key_gen, 1);
    CU_ASSERT_NOT_EQUAL(memcmp(info.new_key_kcv, kcv0, CDX_KCV_LEN), 0);
    memcpy(kcv1, info.new_key_kcv, CDX_KCV_LEN);
    /* Generated on the token (CKA_LOCAL, never extractable), labelled generation 1. */
    CU_ASSERT_EQUAL_FATAL(key_at(id, 1, k), CDX_OK);
    CU_ASSERT_EQUAL(memcmp(k, kcv1, CDX_KCV_LEN), 0);
    hsm_key_ref r1 = {.kind = HSM_KEY_INDEX, .gen = 1};
    memcpy(r1.id, id, CDX_ID_LEN);
    char label[CDX_LABEL_MAX + 1];
    hsm_key_label(&r1, label);
    CU_ASSERT_PTR_NOT_NULL(strstr(label, ".g1"));
    hsm_key_facts f;
    CU_ASSERT_EQUAL_FATAL(hsm_key_facts_read(fx_cust, &r1, &f), CDX_OK);
    CU_ASSERT(f.attrs & HSM_A_LOCAL);
    CU_ASSERT_EQUAL(hsm_facts_born_on_token(&f), 1);
    /* Asked again while pending: the same rotation and the same new key. */
    CU_ASSERT_EQUAL_FATAL(eng_rotate_key(fx_eng, name, true, &info), CDX_OK);
    CU_ASSERT_EQUAL(info.new_key_gen, 1);
    CU_ASSERT_EQUAL(memcmp(info.new_key_kcv, kcv1, CDX_KCV_LEN), 0);
    CU_ASSERT_EQUAL(fx_check_model(fx_eng, name, &s, all_alive, qs, NQ, after, before, false), 0);

    eng_rotate_report r;
    CU_ASSERT_EQUAL_FATAL(eng_rotate_run(fx_eng, name, &r), CDX_OK);
    CU_ASSERT_EQUAL_FATAL(eng_index_describe(fx_eng, name, &info), CDX_OK);
    CU_ASSERT_STRING_EQUAL(info.state, "ready");
    CU_ASSERT_EQUAL(info.key_epoch, 1);
    CU_ASSERT_EQUAL(info.key_gen, 1);
    CU_ASSERT_EQUAL(info.new_key_gen, 0);
    CU_ASSERT_EQUAL(memcmp(info.kcv, kcv1, CDX_KCV_LEN), 0);
    /* The old key is gone from the token, the new one is there. */
    CU_ASSERT_EQUAL(key_at(id, 0, k), CDX_ERR_KEY_NOT_FOUND);
    CU_ASSERT_EQUAL(key_at(id, 1, k), CDX_OK);
    /* Same answers: this engine, a fresh one, and the one that knew only the old key. */
    CU_ASSERT_EQUAL(fx_check_model(fx_eng, name, &s, all_alive, qs, NQ, after, before, false), 0);
    CU_ASSERT_EQUAL(fx_check_model(NULL, name, &s, all_alive, qs, NQ, after, before, false), 0);
    CU_ASSERT_EQUAL(fx_check_model(other, name, &s, all_alive, qs, NQ, after, before, false), 0);
    CU_ASSERT_EQUAL(check_contents(name, &s, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(eng_index_describe(other, name, &info), CDX_OK);
    CU_ASSERT_EQUAL(info.key_gen, 1);
    CU_ASSERT_EQUAL(memcmp(info.kcv, kcv1, CDX_KCV_LEN), 0);
    /* A write through the appliance that knew the old key, then read back everywhere. */
    uint64_t wv = 0;
    CU_ASSERT_EQUAL(eng_upsert(other, name, s.items, 10, &wv), CDX_OK);
    CU_ASSERT_EQUAL(fx_check_model(NULL, name, &s, all_alive, qs, NQ, after, before, false), 0);

    /* Purge does not take the index (its key is generation 1 now) for one whose key is gone. */
    uint64_t removed = 0;
    CU_ASSERT_EQUAL_FATAL(eng_purge(fx_eng, &removed), CDX_OK);
    CU_ASSERT_EQUAL_FATAL(eng_index_describe(fx_eng, name, &info), CDX_OK);
    CU_ASSERT_EQUAL(key_at(id, 1, k), CDX_OK);
    CU_ASSERT_EQUAL(fx_check_model(NULL, name, &s, all_alive, qs, NQ, after, before, false), 0);

    /* A plain rotation keeps the key; a second --new-key goes to generation 2. */
    CU_ASSERT_EQUAL_FATAL(eng_rotate(fx_eng, name, NULL), CDX_OK);
    CU_ASSERT_EQUAL(eng_rotate_key(fx_eng, name, true, NULL), CDX_ERR_FAILED_PRECONDITION);
    CU_ASSERT_EQUAL_FATAL(eng_rotate_run(fx_eng, name, &r), CDX_OK);
    CU_ASSERT_EQUAL_FATAL(eng_index_describe(fx_eng, name, &info), CDX_OK);
    CU_ASSERT_EQUAL(info.key_epoch, 2);
    CU_ASSERT_EQUAL(info.key_gen, 1);
    CU_ASSERT_EQUAL_FATAL(eng_rotate_key(fx_eng, name, true, NULL), CDX_OK);
    CU_ASSERT_EQUAL_FATAL(eng_rotate_run(fx_eng, name, &r), CDX_OK);
    CU_ASSERT_EQUAL_FATAL(eng_index_describe(fx_eng, name, &info), CDX_OK);
    CU_ASSERT_EQUAL(info.key_epoch, 3);
    CU_ASSERT_EQUAL(info.key_gen, 2);
    CU_ASSERT_EQUAL(key_at(id, 1, k), CDX_ERR_KEY_NOT_FOUND);
    CU_ASSERT_EQUAL(key_at(id, 2, k), CDX_OK);
    CU_ASSERT_EQUAL(fx_check_model(other, name, &s, all_alive, qs, NQ, after, before, false), 0);
    CU_ASSERT_EQUAL(check_contents(name, &s, NULL), 0);
    eng_free(other);

    /* Delete destroys the current (new) key. */
    CU_ASSERT_EQUAL_FATAL(eng_index_delete(fx_eng, name, id), CDX_OK);
    CU_ASSERT_EQUAL(key_at(id, 2, k), CDX_ERR_KEY_NOT_FOUND);
    CU_ASSERT_EQUAL(key_at(id, 0, k), CDX_ERR_KEY_NOT_FOUND);
    fx_ds_free(&s);
}

/*
 * --new-key on an index whose key was not generated for it. Adopted: the new key is the
 * index's own (generated, destroyed with it); the adopted key is released but stays on the
 * token, and cannot be adopted for another index while this one uses its id. Unwrapped: the
 * old key was the index's own, so it is destroyed like a generated one.
 */
static void test_rotate_new_key_provenance(void)
{
    fx_dataset s;
    fx_ds_make(&s, 20, 4, "pv");
    uint8_t k[CDX_KCV_LEN];

    /* Adopted. */
    uint8_t kid[CDX_ID_LEN], kcv0[CDX_KCV_LEN];
    CU_ASSERT_EQUAL_FATAL(RAND_bytes(kid, CDX_ID_LEN), 1);
    CU_ASSERT_EQUAL_FATAL(hsm_index_key_generate(fx_cust, kid, kcv0), CDX_OK);
    char name[64], again[64];
    fx_uniq_name(name, "rka");
    fx_uniq_name(again, "rkb");
    eng_create c = {.name = name,
                    .dimension = 4,
                    .metric = ENG_METRIC_EUCLIDEAN,
                    .type = ENG_IVFFLAT,
                    .key_source = ENG_KEY_ADOPT};
    memcpy(c.adopt_id, kid, CDX_ID_LEN);
    eng_index_info info;
    CU_ASSERT_EQUAL_FATAL(eng_index_create(fx_eng, &c, &info), CDX_OK);
    CU_ASSERT_FALSE(info.owned);
    fx_upsert(name, s.items, 20);
    CU_ASSERT_EQUAL(fx_observe(name, &s, 0, 20), 20 * 1000 + 20);
    eng_rotate_report r;
    CU_ASSERT_EQUAL_FATAL(eng_rotate_key(fx_eng, name, true, NULL), CDX_OK);
    CU_ASSERT_EQUAL_FATAL(eng_rotate_run(fx_eng, name, &r), CDX_OK);
    CU_ASSERT_EQUAL_FATAL(eng_index_describe(fx_eng, name, &info), CDX_OK);
    CU_ASSERT_EQUAL(info.key_gen, 1);
    CU_ASSERT_TRUE(info.owned);
    CU_ASSERT_EQUAL(info.prov.origin, ENG_ORIGIN_GENERATED);
    CU_ASSERT_EQUAL(fx_observe(name, &s, 0, 20), 20 * 1000 + 20);
    /* The adopted key stays, unchanged; the index no longer uses it. */
    CU_ASSERT_EQUAL(key_at(kid, 0, k), CDX_OK);
    CU_ASSERT_EQUAL(memcmp(k, kcv0, CDX_KCV_LEN), 0);
    CU_ASSERT_EQUAL(key_at(kid, 1, k), CDX_OK);
    /* Adopting it for another index would share this index's id: refused, nothing left. */
    c.name = again;
    eng_index_info x;
    CU_ASSERT_EQUAL(eng_index_create(fx_eng, &c, &x), CDX_ERR_KEY_IN_USE);
    CU_ASSERT_EQUAL(eng_index_describe(fx_eng, again, &x), CDX_ERR_NOT_FOUND);
    /* Delete destroys the index's own key (generation 1), not the adopted one. */
    CU_ASSERT_EQUAL_FATAL(eng_index_delete(fx_eng, name, kid), CDX_OK);
    CU_ASSERT_EQUAL(key_at(kid, 1, k), CDX_ERR_KEY_NOT_FOUND);
    CU_ASSERT_EQUAL(key_at(kid, 0, k), CDX_OK);
    hsm_key_ref k0 = {.kind = HSM_KEY_INDEX};
    memcpy(k0.id, kid, CDX_ID_LEN);
    CU_ASSERT_EQUAL(hsm_key_destroy(fx_cust, &k0), CDX_OK);

    /* Unwrapped. */
    uint8_t kek[32], dk[32], blob[48];
    CU_ASSERT_EQUAL_FATAL(RAND_bytes(kek, 32), 1);
    CU_ASSERT_EQUAL_FATAL(RAND_bytes(dk, 32), 1);
    CU_ASSERT_EQUAL_FATAL(fx_kms_wrap(kek, dk, 32, blob), 40);
    char kn[64];
    fx_uniq_name(kn, "kek");
    fx_uniq_name(name, "rku");
    CU_ASSERT_EQUAL_FATAL(hsm_kek_import(fx_cust, kn, kek), CDX_OK);
    eng_create u = {.name = name,
                    .dimension = 4,
                    .metric = ENG_METRIC_EUCLIDEAN,
                    .type = ENG_IVFFLAT,
                    .key_source = ENG_KEY_UNWRAP,
                    .kek_name = kn,
                    .wrapped = blob,
                    .wrapped_len = 40};
    CU_ASSERT_EQUAL_FATAL(eng_index_create(fx_eng, &u, &info), CDX_OK);
    CU_ASSERT_TRUE(info.owned);
    CU_ASSERT_EQUAL(info.prov.origin, ENG_ORIGIN_UNWRAPPED);
    uint8_t uid[CDX_ID_LEN];
    memcpy(uid, info.id, CDX_ID_LEN);
    fx_upsert(name, s.items, 20);
    CU_ASSERT_EQUAL_FATAL(eng_rotate_key(fx_eng, name, true, NULL), CDX_OK);
    CU_ASSERT_EQUAL_FATAL(eng_rotate_run(fx_eng, name, &r), CDX_OK);
    CU_ASSERT_EQUAL_FATAL(eng_index_describe(fx_eng, name, &info), CDX_OK);
    CU_ASSERT_EQUAL(info.key_gen, 1);
    CU_ASSERT_EQUAL(info.prov.origin, ENG_ORIGIN_GENERATED);
    CU_ASSERT_STRING_EQUAL(info.prov.kek, "");
    CU_ASSERT_EQUAL(key_at(uid, 0, k), CDX_ERR_KEY_NOT_FOUND); /* the unwrapped key is gone */
    CU_ASSERT_EQUAL(key_at(uid, 1, k), CDX_OK);
    CU_ASSERT_EQUAL(fx_observe(name, &s, 0, 20), 20 * 1000 + 20);
    CU_ASSERT_EQUAL_FATAL(eng_index_delete(fx_eng, name, uid), CDX_OK);
    CU_ASSERT_EQUAL(key_at(uid, 1, k), CDX_ERR_KEY_NOT_FOUND);
    CU_ASSERT_EQUAL(hsm_kek_destroy(fx_cust, kn), CDX_OK);
    fx_ds_free(&s);
}

/* Rotation hook: fail at step *arg (a crash there). */
static cdx_err stop_at(void *arg, const char *index, const char *step)
{
    (void)index;
    return strcmp(step, arg) ? CDX_OK : cdx_fail(CDX_ERR_UNAVAILABLE, "test: crashed at %s", step);
}

/* Keys of generation 0..3 of id on the token. */
static int keys_on_token(const uint8_t id[CDX_ID_LEN], uint32_t *which)
{
    int n = 0;
    uint8_t k[CDX_KCV_LEN];
    for (uint32_t g = 0; g < 4; g++)
        if (key_at(id, g, k) == CDX_OK) {
            n++;
            *which = g;
        }
    return n;
}

static void test_rotate_new_key_interrupted(void)
{
    static const char *const at[] = {"gathered", "sealed", "committed"};
    for (size_t t = 0; t < FX_LEN(at); t++) {
        char name[64];
        fx_uniq_name(name, "rotkx");
        fx_dataset s;
        static char cont[N][64];
        float qs[NQ * D];
        fx_qres before[NQ];
        make_index(name, &s, cont, qs);
        CU_ASSERT_EQUAL(fx_check_model(NULL, name, &s, all_alive, qs, NQ, before, NULL, true), 0);
        eng_index_info info;
        CU_ASSERT_EQUAL_FATAL(eng_index_describe(fx_eng, name, &info), CDX_OK);
        uint8_t id[CDX_ID_LEN];
        memcpy(id, info.id, CDX_ID_LEN);

        /* The crashing appliance runs no rotation thread: only this run may do the rotation
         * (its thread would otherwise race it, and complete it after a commit). */
        char sub[32];
        snprintf(sub, sizeof(sub), "crashk%zu", t);
        eng *a = idle_engine_in(sub);
        eng_set_rotate_hook(a, stop_at, (void *)at[t]);
        CU_ASSERT_EQUAL_FATAL(eng_rotate_key(a, name, true, &info), CDX_OK);
        eng_rotate_report r;
        CU_ASSERT_EQUAL(eng_rotate_run(a, name, &r), CDX_ERR_UNAVAILABLE);
        eng_free(a);
        /* Crashed: both keys are on the token; the index serves the same answers. */
        uint32_t g = 0;
        CU_ASSERT_EQUAL(keys_on_token(id, &g), 2);
        eng *idle = idle_engine();
        CU_ASSERT_EQUAL(fx_check_model(idle, name, &s, all_alive, qs, NQ, NULL, before, false), 0);
        CU_ASSERT_EQUAL_FATAL(eng_index_describe(idle, name, &info), CDX_OK);
        CU_ASSERT_EQUAL(info.key_epoch, strcmp(at[t], "committed") ? 0u : 1u);
        eng_free(idle);

        /* A restarted appliance finishes it by itself (its rotation thread): one key left. */
        char dir[4096];
        snprintf(dir, sizeof(dir), "%s/restartk%zu", fx_statedir, t);
        eng *b = fx_engine_open(fx_store, dir, 0);
        CU_ASSERT_PTR_NOT_NULL_FATAL(b);
        int64_t deadline = cdx_mono_ms() + 30000;
        int nk = 2;
        do {
            CU_ASSERT_EQUAL_FATAL(eng_index_describe(b, name, &info), CDX_OK);
            nk = keys_on_token(id, &g);
            if (nk == 1 && info.key_gen == 1 && info.key_epoch == 1)
                break;
            struct timespec ts = {0, 20 * 1000 * 1000};
            nanosleep(&ts, NULL);
        } while (cdx_mono_ms() < deadline);
        printf("\n  --new-key crashed at %s: resumed, %d key(s) left (generation %u)", at[t], nk,
               g);
        CU_ASSERT_EQUAL(nk, 1);
        CU_ASSERT_EQUAL(g, 1);
        CU_ASSERT_EQUAL(info.key_gen, 1);
        CU_ASSERT_EQUAL(info.key_epoch, 1);
        eng_free(b);
        CU_ASSERT_EQUAL(fx_check_model(NULL, name, &s, all_alive, qs, NQ, NULL, before, false), 0);
        CU_ASSERT_EQUAL(check_contents(name, &s, NULL), 0);
        fx_ds_free(&s);
    }
}

static const fx_test tests[] = {
    {"rotation re-seals everything; old epoch opens nothing", test_rotate_everything},
    {"writes pending, during, and losing to a rotation", test_rotate_with_writes},
    {"interrupted rotation resumes on a restarted appliance", test_rotate_interrupted},
    {"a crash after every store write of a rotation: before or after, then resumed",
     test_rotate_crash_points},
    {"minimum readable epoch: old records and cursors refused", test_rotate_min_epoch},
    {"--new-key: new token key, old one destroyed, same answers; purge and delete",
     test_rotate_new_key},
    {"--new-key interrupted (gathered, sealed, committed) resumes to exactly one key",
     test_rotate_new_key_interrupted},
    {"--new-key on adopted and unwrapped keys: what is destroyed, what stays",
     test_rotate_new_key_provenance},
    {"under load: 0 failures, same recall, nothing of the old epoch left", test_rotate_under_load},
};

int main(void)
{
    return fx_engine_run(tests, FX_LEN(tests));
}
