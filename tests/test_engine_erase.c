/*
 * test_engine_erase.c - what deletion leaves behind (security review M3, M4, L4; issue 13):
 *  - erasure: after delete + compaction + grace, a scan of the store that decrypts every
 *    segment block and contents record with the index's own keys finds none of the deleted
 *    items (the same scan finds them before, so it can fail);
 *  - crypto-shredding: once a generated key is destroyed, a restored copy of the index's
 *    records opens on no appliance, not even under a new key with the old label;
 *  - no resurrection: an index deleted here is refused (ROLLBACK_DETECTED) when its records
 *    come back from a restore, on this appliance and, through the token's mark, on a fresh one;
 *    purge removes the copy; accept-rollback brings it back on purpose, everywhere;
 *  - a rolled-back head is caught by an appliance with an empty state dir (the token's mark).
 * Run against the memory store and Redis, on a throwaway SoftHSM token.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>
#include <openssl/rand.h>

#include "cdx_err.h"
#include "cdx_hex.h"
#include "cdx_limits.h"
#include "cdx_time.h"
#include "eng.h"
#include "eng_maint.h"
#include "eng_record.h"
#include "eng_store.h"
#include "fx_cunit.h"
#include "fx_engine.h"
#include "fx_tmp.h"
#include "hsm_keys.h"
#include "hsm_mark.h"
#include "hsm_subkey.h"

#define D 8

/* An engine of "another appliance": its own state dir, token marks every merge (1 ms), grace 1 ms.
 */
static eng *appliance(const char *dir, uint32_t token_mark_ms)
{
    eng_config c = {.custody = fx_cust,
                    .store = fx_store,
                    .state_dir = dir,
                    .token_mark_ms = token_mark_ms,
                    .gc_grace_ms = 1};
    memcpy(c.deployment_id, fx_dep, 16);
    eng *e = NULL;
    cdx_err err = eng_new(&c, &e);
    if (err)
        fprintf(stderr, "eng_new: %s: %s\n", cdx_err_name(err), cdx_err_detail());
    return e;
}

/* A fresh empty state directory under the suite's (a rebuilt appliance). */
static char *fresh_dir(void)
{
    static int n;
    char *p = malloc(4200);
    snprintf(p, 4200, "%s/app%d", fx_statedir, ++n);
    return p;
}

/* A generated-key IVFFlat index "<base>-N" of dimension D on e (fatal on failure). */
static void create_plain(eng *e, const char *base, char name[64], eng_index_info *info)
{
    fx_uniq_name(name, base);
    eng_create c = {
        .name = name, .dimension = D, .metric = ENG_METRIC_EUCLIDEAN, .type = ENG_IVFFLAT};
    CU_ASSERT_EQUAL_FATAL(eng_index_create(e, &c, info), CDX_OK);
}

/* ---- the store, as an attacker or an auditor reads it ---- */

typedef struct snapshot {
    size_t n;
    char **keys;
    eng_val *vals;
} snapshot;

static void snap_take(snapshot *s, const char *pat)
{
    s->n = fx_keys_of(pat, &s->keys);
    s->vals = calloc(s->n ? s->n : 1, sizeof(*s->vals));
    for (size_t i = 0; i < s->n; i++)
        s->vals[i] = fx_raw_get(s->keys[i]);
}

static void snap_restore(const snapshot *s)
{
    for (size_t i = 0; i < s->n; i++)
        fx_raw_set(s->keys[i], s->vals[i].data, s->vals[i].len);
}

static void snap_free(snapshot *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->vals[i].data);
        free(s->keys[i]);
    }
    free(s->vals);
    free(s->keys);
    memset(s, 0, sizeof(*s));
}

typedef struct scan_result {
    size_t records; /* records opened */
    size_t failed;  /* records that did not open */
    size_t marked;  /* plaintexts containing the marker */
    size_t keep;    /* plaintexts containing "KEEP" */
} scan_result;

static bool has(const eng_buf *b, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= b->len; i++)
        if (!memcmp(b->data + i, needle, n))
            return true;
    return false;
}

static void open_one(const hsm_subkey *sk, const uint8_t id[16], eng_kind kind,
                     const uint8_t tok[16], const uint8_t kcv[8], const uint8_t *p, size_t n,
                     const char *marker, scan_result *r, bool *ok)
{
    eng_rec_hdr h;
    *ok = false;
    if (eng_rec_header(p, n, &h))
        return;
    eng_rec_id rid = {
        .scope = id, .kind = kind, .token = tok, .epoch = h.epoch, .version = h.version};
    eng_buf pt;
    eng_buf_init(&pt);
    if (!eng_rec_open(sk, &rid, kcv, p, n, &h, &pt)) {
        *ok = true;
        r->records++;
        r->marked += has(&pt, marker);
        r->keep += has(&pt, "KEEP");
    }
    eng_buf_free(&pt);
}

/*
 * Decrypt every segment block and contents record of index id with the index key's subkeys
 * (as someone holding the key and a copy of the store would). A segment value is three sealed
 * blocks back to back (eng_segment.h) whose sizes only a manifest records: a block ends where
 * the next plausible header (format 1, kind vectors or metadata, same epoch and version) starts
 * and the block then authenticates.
 */
static scan_result scan_store(const uint8_t id[16], const uint8_t kcv[8], const char *marker)
{
    scan_result r = {0};
    hsm_key_ref k = {.kind = HSM_KEY_INDEX};
    memcpy(k.id, id, 16);
    hsm_subkey *pay = NULL, *con = NULL;
    CU_ASSERT_EQUAL_FATAL(hsm_subkey_get(fx_cust, &k, kcv, HSM_P_PAYLOAD, 0, &pay), CDX_OK);
    CU_ASSERT_EQUAL_FATAL(hsm_subkey_get(fx_cust, &k, kcv, HSM_P_CONTENT, 0, &con), CDX_OK);
    const char *kinds[2] = {"s", "t"};
    for (int w = 0; w < 2; w++) {
        char pat[128];
        fx_key_of(id, kinds[w], pat);
        char **keys;
        size_t nk = fx_keys_of(pat, &keys);
        for (size_t i = 0; i < nk; i++) {
            uint8_t tok[16];
            const char *hx = strrchr(keys[i], ':') + 1;
            CU_ASSERT_FATAL(strlen(hx) == 32 && cdx_hex_decode(hx, tok, 16) == 0);
            eng_val v = fx_raw_get(keys[i]);
            bool ok;
            if (w == 1) {
                open_one(con, id, ENG_K_CONTENT, tok, kcv, v.data, v.len, marker, &r, &ok);
                r.failed += !ok;
                free(v.data);
                continue;
            }
            size_t off = 0;
            eng_kind kind = ENG_K_SEARCH;
            while (off < v.len) {
                eng_rec_hdr h;
                if (eng_rec_header(v.data + off, v.len - off, &h)) {
                    r.failed++;
                    break;
                }
                size_t end = off + ENG_REC_OVERHEAD;
                ok = false;
                for (; end <= v.len && !ok; end++) {
                    const uint8_t *q = v.data + end;
                    bool boundary =
                        end == v.len || (end + ENG_REC_HDR <= v.len && q[0] == 0 && q[1] == 1 &&
                                         (q[2] == ENG_K_VECTORS || q[2] == ENG_K_META) &&
                                         q[3] == 0 && !memcmp(q + 4, v.data + off + 4, 12));
                    if (boundary)
                        open_one(pay, id, kind, tok, kcv, v.data + off, end - off, marker, &r, &ok);
                }
                if (!ok) {
                    r.failed++;
                    break;
                }
                off = end - 1;
                kind = off < v.len ? (eng_kind)v.data[off + 2] : kind;
            }
            free(v.data);
        }
        for (size_t i = 0; i < nk; i++)
            free(keys[i]);
        free(keys);
    }
    hsm_subkey_release(pay);
    hsm_subkey_release(con);
    return r;
}

/* n items: the first `del` are "DEL-i" with the marker in their metadata and contents. */
typedef struct items {
    float x[64 * D];
    char ids[64][32], meta[64][96], cont[64][96];
    eng_item it[64];
} items;

static void make_items(items *s, size_t n, size_t del, const char *marker)
{
    for (size_t i = 0; i < n; i++) {
        fx_rand_vec(s->x + i * D, D);
        bool gone = i < del;
        snprintf(s->ids[i], sizeof(s->ids[i]), "%s-%zu", gone ? "DEL" : "KEEPID", i);
        snprintf(s->meta[i], sizeof(s->meta[i]), "{\"note\":\"%s-meta-%zu\"}",
                 gone ? marker : "KEEP", i);
        snprintf(s->cont[i], sizeof(s->cont[i]), "%s contents %zu", gone ? marker : "KEEP", i);
        s->it[i] = (eng_item){.id = s->ids[i],
                              .id_len = strlen(s->ids[i]),
                              .vector = s->x + i * D,
                              .metadata = s->meta[i],
                              .metadata_len = strlen(s->meta[i]),
                              .contents = (const uint8_t *)s->cont[i],
                              .contents_len = strlen(s->cont[i])};
    }
}

/* Erasure (M3): delete + compaction + grace leave nothing of the deleted items that decrypts. */
static void test_erasure_scan(void)
{
    char *dir = fresh_dir();
    eng *e = appliance(dir, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    char name[64];
    eng_index_info info;
    create_plain(e, "erase", name, &info);
    static items s;
    make_items(&s, 40, 10, "MARKERX");
    /* Four batches: four segments, so compaction has something to merge. */
    for (int b = 0; b < 4; b++)
        CU_ASSERT_EQUAL_FATAL(eng_upsert(e, name, s.it + 10 * b, 10, NULL), CDX_OK);
    scan_result r0 = scan_store(info.id, info.kcv, "MARKERX");
    CU_ASSERT_EQUAL(r0.failed, 0);
    CU_ASSERT_EQUAL(r0.marked, 1 + 10); /* one metadata block (batch 0) + 10 contents records */
    const char *ids[10];
    size_t lens[10];
    for (int i = 0; i < 10; i++) {
        ids[i] = s.ids[i];
        lens[i] = strlen(s.ids[i]);
    }
    uint64_t deleted = 0;
    CU_ASSERT_EQUAL_FATAL(eng_delete(e, name, ids, lens, 10, &deleted, NULL), CDX_OK);
    CU_ASSERT_EQUAL(deleted, 10);
    /* Delete only tombstones: the ciphertext is still there and decrypts (the review's M3). */
    scan_result r1 = scan_store(info.id, info.kcv, "MARKERX");
    CU_ASSERT_TRUE(r1.marked > 0);
    /* describe shows what is left behind */
    eng_index_info di;
    CU_ASSERT_EQUAL_FATAL(eng_index_describe(e, name, &di), CDX_OK);
    CU_ASSERT_EQUAL(di.count, 30);
    CU_ASSERT_EQUAL(di.dead_rows, 10);
    CU_ASSERT_TRUE(di.segments >= 4); /* the four batches (and the delete's tombstones) */
    CU_ASSERT_TRUE(di.segment_bytes > 40 * D * sizeof(float));
    CU_ASSERT_EQUAL(di.last_compaction_ms, 0);
    uint64_t bytes_before = di.segment_bytes;
    /* Compaction on demand (what `cipherdex index compact` runs), then the grace. */
    eng_maint_policy pol = {.compact_segments = 1};
    eng_maint_report rep;
    CU_ASSERT_EQUAL_FATAL(eng_maintain(e, name, &pol, &rep), CDX_OK);
    CU_ASSERT_TRUE(rep.compact_version > 0);
    /* Within the grace, describe counts what waits: at least every old segment's bytes. */
    CU_ASSERT_EQUAL_FATAL(eng_index_describe(e, name, &di), CDX_OK);
    CU_ASSERT_EQUAL(di.records_waiting, rep.sweep.waiting);
    CU_ASSERT_EQUAL(di.retired_bytes, rep.sweep.waiting_bytes);
    CU_ASSERT_TRUE(di.records_waiting >= 4 + 1);
    CU_ASSERT_TRUE(di.retired_bytes >= bytes_before);
    fx_sweep_until(e, name, 10);
    scan_result r2 = scan_store(info.id, info.kcv, "MARKERX");
    CU_ASSERT_EQUAL(r2.failed, 0);
    CU_ASSERT_EQUAL(r2.marked, 0);
    CU_ASSERT_TRUE(r2.records > 0);
    /* 30 contents records + the merged segment's metadata and search (ids) blocks */
    CU_ASSERT_EQUAL(r2.keep, 30 + 2);
    if (r2.keep != 32)
        fprintf(stderr, "keep=%zu records=%zu\n", r2.keep, r2.records);
    uint64_t cnt = 0;
    CU_ASSERT_EQUAL(eng_count(e, name, &cnt), CDX_OK);
    CU_ASSERT_EQUAL(cnt, 30);
    CU_ASSERT_EQUAL_FATAL(eng_index_describe(e, name, &di), CDX_OK);
    CU_ASSERT_EQUAL(di.dead_rows, 0);
    CU_ASSERT_EQUAL(di.segments, 1);
    CU_ASSERT_TRUE(di.segment_bytes < bytes_before);
    CU_ASSERT_TRUE(di.last_compaction_ms > 0);
    CU_ASSERT_TRUE(di.last_sweep_ms >= di.last_compaction_ms);
    CU_ASSERT_TRUE(di.last_sweep_ms > 0);
    CU_ASSERT_EQUAL(di.records_waiting, 0);
    CU_ASSERT_EQUAL(di.retired_bytes, 0);
    CU_ASSERT_EQUAL(eng_index_delete(e, name, info.id), CDX_OK);
    eng_free(e);
    free(dir);
}

/* Crypto-shredding: a restored copy of a deleted index with a destroyed key opens nowhere. */
static void test_shredded_copy_unreadable(void)
{
    char *dir = fresh_dir();
    eng *e = appliance(dir, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    char name[64];
    eng_index_info info;
    create_plain(e, "shred", name, &info);
    CU_ASSERT_TRUE(info.owned);
    static items s;
    make_items(&s, 20, 20, "SHREDX");
    CU_ASSERT_EQUAL_FATAL(eng_upsert(e, name, s.it, 20, NULL), CDX_OK);
    snapshot snap;
    snap_take(&snap, "cdx:*");
    CU_ASSERT_TRUE(snap.n > 3);
    CU_ASSERT_EQUAL(scan_store(info.id, info.kcv, "SHREDX").marked, 20 + 1);
    CU_ASSERT_EQUAL_FATAL(eng_index_delete(e, name, info.id), CDX_OK);
    hsm_key_ref k = {.kind = HSM_KEY_INDEX};
    memcpy(k.id, info.id, 16);
    uint8_t kcv[8];
    CU_ASSERT_EQUAL(hsm_key_kcv(fx_cust, &k, kcv), CDX_ERR_KEY_NOT_FOUND);
    /* The backup comes back; a fresh appliance (no state, no token marks) cannot read it. */
    snap_restore(&snap);
    char *dir2 = fresh_dir();
    eng *fresh = appliance(dir2, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(fresh);
    eng_index_info x;
    /* describe still answers, from the catalog entry, with the status and what to do */
    CU_ASSERT_EQUAL(eng_index_describe(fresh, name, &x), CDX_OK);
    CU_ASSERT_STRING_EQUAL(x.status, "key_not_found");
    CU_ASSERT_EQUAL(fx_q1(fresh, name, s.x), CDX_ERR_KEY_NOT_FOUND);
    /* Not even under a new key minted with the old id and label (KCV differs: nothing opens). */
    uint8_t kcv2[8];
    CU_ASSERT_EQUAL_FATAL(hsm_index_key_generate(fx_cust, info.id, kcv2), CDX_OK);
    CU_ASSERT_NOT_EQUAL(memcmp(kcv2, info.kcv, 8), 0);
    scan_result r = scan_store(info.id, kcv2, "SHREDX");
    CU_ASSERT_EQUAL(r.records, 0);
    CU_ASSERT_EQUAL(r.marked, 0);
    CU_ASSERT_TRUE(r.failed > 0);
    CU_ASSERT_EQUAL(fx_q1(fresh, name, s.x), CDX_ERR_KEY_REPLACED);
    CU_ASSERT_EQUAL(hsm_key_destroy(fx_cust, &k), CDX_OK);
    /* Purge removes the unreadable copy. */
    uint64_t removed = 0;
    CU_ASSERT_EQUAL(eng_purge(fresh, &removed), CDX_OK);
    CU_ASSERT_TRUE(removed >= snap.n - 1);
    char pat[128], **keys;
    fx_key_of(info.id, "s", pat);
    CU_ASSERT_EQUAL(fx_keys_of(pat, &keys), 0);
    free(keys);
    CU_ASSERT_EQUAL(eng_index_describe(fresh, name, &x), CDX_ERR_NOT_FOUND);
    snap_free(&snap);
    eng_free(fresh);
    eng_free(e);
    free(dir);
    free(dir2);
}

/* No resurrection (M4): the review's restore sequence with an adopted key, which survives. */
static void test_no_resurrection(void)
{
    char *dir = fresh_dir(), *dir2 = fresh_dir(), *dir3 = fresh_dir();
    eng *e = appliance(dir, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    uint8_t kid[16], kcv[8];
    CU_ASSERT_EQUAL_FATAL(RAND_bytes(kid, 16), 1);
    CU_ASSERT_EQUAL_FATAL(hsm_index_key_generate(fx_cust, kid, kcv), CDX_OK);
    char name[64];
    fx_uniq_name(name, "adopted-known");
    eng_create c = {.name = name,
                    .dimension = D,
                    .metric = ENG_METRIC_EUCLIDEAN,
                    .type = ENG_IVFFLAT,
                    .key_source = ENG_KEY_ADOPT};
    memcpy(c.adopt_id, kid, 16);
    eng_index_info info;
    CU_ASSERT_EQUAL_FATAL(eng_index_create(e, &c, &info), CDX_OK);
    CU_ASSERT_FALSE(info.owned);
    static items s;
    make_items(&s, 20, 0, "NONE");
    CU_ASSERT_EQUAL_FATAL(eng_upsert(e, name, s.it, 20, NULL), CDX_OK);
    CU_ASSERT_EQUAL(fx_q1(e, name, s.x), CDX_OK);
    /* Snapshot every cdx:* key, delete, restore the snapshot. */
    snapshot snap;
    snap_take(&snap, "cdx:*");
    CU_ASSERT_EQUAL_FATAL(eng_index_delete(e, name, kid), CDX_OK);
    hsm_key_ref k = {.kind = HSM_KEY_INDEX};
    memcpy(k.id, kid, 16);
    CU_ASSERT_EQUAL(hsm_key_check(fx_cust, &k, kcv), CDX_OK); /* adopted: the key remains */
    snap_restore(&snap);
    /* The same appliance refuses the copy and names the way out. */
    CU_ASSERT_EQUAL(fx_q1(e, name, s.x), CDX_ERR_ROLLBACK_DETECTED);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "was deleted"));
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "cipherdex index purge"));
    const char *one[1] = {s.ids[0]};
    size_t l1[1] = {strlen(s.ids[0])};
    eng_get_result *g = NULL;
    CU_ASSERT_EQUAL(eng_get(e, name, one, l1, 1, ENG_WANT_METADATA, 0, &g),
                    CDX_ERR_ROLLBACK_DETECTED);
    eng_get_result_free(g);
    /* list keeps working and shows it. */
    eng_index_info *all = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL_FATAL(eng_index_list(e, &all, &n), CDX_OK);
    bool seen = false;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(all[i].name, name)) {
            seen = true;
            CU_ASSERT_STRING_EQUAL(all[i].status, "rollback_detected");
        }
    CU_ASSERT_TRUE(seen);
    free(all);
    /* A fresh appliance (empty state dir) learns the tombstone from the token... */
    eng *fresh = appliance(dir2, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(fresh);
    CU_ASSERT_EQUAL(fx_q1(fresh, name, s.x), CDX_ERR_ROLLBACK_DETECTED);
    /* ...and without token marks it could not know (what the mark is for). */
    eng *blind = appliance(dir3, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(blind);
    CU_ASSERT_EQUAL(fx_q1(blind, name, s.x), CDX_OK);
    eng_free(blind);
    /* Bringing it back on purpose: accept-rollback lifts the tombstone, on every appliance. */
    uint64_t prev = 0, ver = 0;
    CU_ASSERT_EQUAL(eng_accept_rollback(fresh, name, 0, &prev, &ver), CDX_OK);
    CU_ASSERT_EQUAL(fx_q1(fresh, name, s.x), CDX_OK);
    CU_ASSERT_EQUAL(fx_q1(e, name, s.x), CDX_OK); /* adopted from the token's new generation */
    /* Delete again, restore again, and purge the copy this time. */
    CU_ASSERT_EQUAL_FATAL(eng_index_delete(e, name, kid), CDX_OK);
    snap_restore(&snap);
    CU_ASSERT_EQUAL(fx_q1(fresh, name, s.x), CDX_ERR_ROLLBACK_DETECTED);
    uint64_t removed = 0;
    CU_ASSERT_EQUAL(eng_purge(fresh, &removed), CDX_OK);
    CU_ASSERT_TRUE(removed >= snap.n - 1);
    eng_index_info x;
    CU_ASSERT_EQUAL(eng_index_describe(e, name, &x), CDX_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(hsm_key_check(fx_cust, &k, kcv), CDX_OK); /* purge never touches the key */
    /* A later restore is refused again: the tombstone outlives the purge. */
    snap_restore(&snap);
    CU_ASSERT_EQUAL(fx_q1(e, name, s.x), CDX_ERR_ROLLBACK_DETECTED);
    CU_ASSERT_EQUAL(eng_purge(e, &removed), CDX_OK);
    /* The key adopted again for a new index: the id's versions go on from the dead index's, so
     * it serves on both appliances, and a copy of the dead index reads as a rollback of it. */
    char name2[64];
    fx_uniq_name(name2, "readopted");
    c.name = name2;
    eng_index_info i2;
    CU_ASSERT_EQUAL_FATAL(eng_index_create(e, &c, &i2), CDX_OK);
    CU_ASSERT_TRUE(i2.version > info.version + 1);
    CU_ASSERT_EQUAL(eng_upsert(e, name2, s.it, 5, NULL), CDX_OK);
    CU_ASSERT_EQUAL(fx_q1(e, name2, s.x), CDX_OK);
    CU_ASSERT_EQUAL(fx_q1(fresh, name2, s.x), CDX_OK);
    snap_restore(&snap);
    CU_ASSERT_EQUAL(fx_q1(e, name2, s.x), CDX_ERR_ROLLBACK_DETECTED);
    CU_ASSERT_EQUAL(fx_q1(fresh, name2, s.x), CDX_ERR_ROLLBACK_DETECTED);
    /* name2 shares its id with the restored entry of the dead index: deleting it removes only
     * its entry (an alias); deleting the other removes the records and tombstones the id. */
    CU_ASSERT_EQUAL(eng_index_delete(e, name2, kid), CDX_OK);
    CU_ASSERT_EQUAL(eng_index_delete(e, name, kid), CDX_OK);
    CU_ASSERT_EQUAL(eng_index_describe(e, name, &x), CDX_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(hsm_key_destroy(fx_cust, &k), CDX_OK);
    snap_free(&snap);
    eng_free(fresh);
    eng_free(e);
    free(dir);
    free(dir2);
    free(dir3);
}

/* L4: a rebuilt appliance (empty state dir) catches a rolled-back head through the token. */
static void test_fresh_appliance_rollback(void)
{
    char *dir = fresh_dir(), *dir2 = fresh_dir(), *dir3 = fresh_dir();
    eng *a = appliance(dir, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    char name[64];
    eng_index_info info;
    create_plain(a, "l4", name, &info);
    static items s;
    make_items(&s, 30, 0, "NONE");
    CU_ASSERT_EQUAL_FATAL(eng_upsert(a, name, s.it, 10, NULL), CDX_OK);
    snapshot old;
    snap_take(&old, "cdx:*"); /* the backup */
    uint64_t v3 = 0;
    CU_ASSERT_EQUAL_FATAL(eng_upsert(a, name, s.it + 10, 10, &v3), CDX_OK);
    CU_ASSERT_EQUAL_FATAL(eng_upsert(a, name, s.it + 20, 10, &v3), CDX_OK);
    CU_ASSERT_EQUAL(fx_q1(a, name, s.x), CDX_OK); /* a request after the last commit: merged */
    snap_restore(&old); /* head and buckets back at the backup's version */
    /* Appliance B, built from nothing, sees the mark A left on the token. */
    eng *b = appliance(dir2, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(fx_q1(b, name, s.x), CDX_ERR_ROLLBACK_DETECTED);
    uint64_t cnt;
    CU_ASSERT_EQUAL(eng_count(a, name, &cnt), CDX_ERR_ROLLBACK_DETECTED);
    /* Without token marks a fresh appliance accepts the older head (the gap the mark closes). */
    eng *blind = appliance(dir3, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(blind);
    CU_ASSERT_EQUAL(eng_count(blind, name, &cnt), CDX_OK);
    CU_ASSERT_EQUAL(cnt, 10);
    eng_free(blind);
    /* The operator accepts the restore once, on B: A adopts it from the token. */
    uint64_t prev = 0, ver = 0;
    CU_ASSERT_EQUAL(eng_accept_rollback(b, name, 0, &prev, &ver), CDX_OK);
    CU_ASSERT_TRUE(ver < v3);
    CU_ASSERT_EQUAL(eng_count(b, name, &cnt), CDX_OK);
    CU_ASSERT_EQUAL(cnt, 10);
    CU_ASSERT_EQUAL(eng_count(a, name, &cnt), CDX_OK);
    CU_ASSERT_EQUAL(cnt, 10);
    /* A writes on; a later rollback is caught again by both. */
    uint64_t v4 = 0;
    CU_ASSERT_EQUAL_FATAL(eng_upsert(a, name, s.it + 10, 20, &v4), CDX_OK);
    CU_ASSERT_EQUAL(eng_count(b, name, &cnt), CDX_OK);
    CU_ASSERT_EQUAL(cnt, 30);
    snap_restore(&old);
    CU_ASSERT_EQUAL(eng_count(b, name, &cnt), CDX_ERR_ROLLBACK_DETECTED);
    CU_ASSERT_EQUAL(eng_count(a, name, &cnt), CDX_ERR_ROLLBACK_DETECTED);
    /* The token holds the mark: the accepted generation, raised past the restore. */
    hsm_mark m;
    bool found = false;
    CU_ASSERT_EQUAL(hsm_mark_read(fx_cust, info.id, &m, &found), CDX_OK);
    CU_ASSERT_TRUE(found);
    CU_ASSERT_EQUAL(m.version, v4);
    CU_ASSERT_EQUAL(m.gen, 1);
    CU_ASSERT_EQUAL(eng_accept_rollback(a, name, 0, NULL, NULL), CDX_OK);
    CU_ASSERT_EQUAL(eng_index_delete(a, name, info.id), CDX_OK);
    snap_free(&old);
    eng_free(b);
    eng_free(a);
    free(dir);
    free(dir2);
    free(dir3);
}

/* The fork: inside A's commit, the store loses A's last commit and B reuses its version. */
static struct fork_ctx {
    int armed;
    snapshot *snap;
    eng *b;
    const char *name;
    const eng_item *items;
} fk;

static void fork_hook(void *arg, const uint8_t id[16])
{
    (void)arg;
    (void)id;
    if (!fk.armed)
        return;
    fk.armed = 0;
    snap_restore(fk.snap);
    CU_ASSERT_EQUAL(eng_upsert(fk.b, fk.name, fk.items, 5, NULL), CDX_OK);
}

/* Review L4: a commit checks the head's manifest, not only its version (an equal-version fork
 * after a lost tail is rebased on what the store holds, never written over it). */
static void test_equal_version_fork(void)
{
    char *dir = fresh_dir(), *dir2 = fresh_dir();
    eng *a = appliance(dir, 0), *b = appliance(dir2, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    char name[64];
    eng_index_info info;
    create_plain(a, "fork", name, &info);
    static items s;
    make_items(&s, 20, 0, "NONE");
    uint64_t v = 0;
    CU_ASSERT_EQUAL_FATAL(eng_upsert(a, name, s.it, 5, &v), CDX_OK);
    snapshot snap;
    snap_take(&snap, "cdx:*");
    CU_ASSERT_EQUAL_FATAL(eng_upsert(a, name, s.it + 5, 5, &v), CDX_OK); /* lost below */
    fk = (struct fork_ctx){.armed = 1, .snap = &snap, .b = b, .name = name, .items = s.it + 10};
    eng_set_commit_hook(a, fork_hook, NULL);
    CU_ASSERT_EQUAL(eng_upsert(a, name, s.it + 15, 5, &v), CDX_OK);
    eng_set_commit_hook(a, NULL, NULL);
    CU_ASSERT_EQUAL(fk.armed, 0);
    /* B's commit survives; A's lost one stays lost; A's last one is on top. */
    const char *ids[20];
    size_t lens[20];
    for (int i = 0; i < 20; i++) {
        ids[i] = s.ids[i];
        lens[i] = strlen(s.ids[i]);
    }
    eng_get_result *g = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_get(b, name, ids, lens, 20, 0, 0, &g), CDX_OK);
    for (int i = 0; i < 20; i++)
        CU_ASSERT_EQUAL(g->found[i], i < 5 || i >= 10);
    eng_get_result_free(g);
    CU_ASSERT_EQUAL(eng_index_delete(a, name, info.id), CDX_OK);
    snap_free(&snap);
    eng_free(b);
    eng_free(a);
    free(dir);
    free(dir2);
}

/*
 * An upsert held past its contents' grace: inside its commit another appliance sweeps the
 * contents it stored (unreferenced, older than the grace) and commits first, so the upsert
 * loses and tries again. It must store its contents again, not commit names that are gone.
 */
static struct slow_ctx {
    int armed;
    eng *sw, *b;
    const char *name;
    const eng_item *items;
    uint8_t id[16], kcv[8];
    size_t marked_after_sweep;
    uint64_t swept;
    int64_t stored_ms; /* just before the writer starts */
} sl;

/* Inside a commit of sl's writer: hold it past the write window, sweep everything ripe, and
 * (with sl.b) commit first from another appliance so the writer loses and tries again. */
static void slow_hook(void *arg, const uint8_t id[16])
{
    (void)arg;
    (void)id;
    if (!sl.armed)
        return;
    sl.armed = 0;
    /* The write window is gc_grace_ms, and for graces below the daemon's floor (this engine's
     * 1 ms) the floor; the writer started writing just after stored_ms. */
    while (cdx_mono_ms() - sl.stored_ms <= CDX_GC_GRACE_MS_MIN + 250) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    /* Sweep until nothing more goes: what the writer wrote is older than the 1 ms grace. */
    uint64_t gone = 0;
    for (int i = 0; i < 200; i++) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
        eng_sweep_report r;
        CU_ASSERT_EQUAL_FATAL(eng_sweep_run(sl.sw, sl.name, &r), CDX_OK);
        gone += r.deleted;
        if (gone && !r.deleted && !r.waiting)
            break;
    }
    sl.swept = gone;
    sl.marked_after_sweep = scan_store(sl.id, sl.kcv, "SLOWX").marked;
    if (sl.b) /* first: the writer's commit loses */
        CU_ASSERT_EQUAL(eng_upsert(sl.b, sl.name, sl.items, 2, NULL), CDX_OK);
}

static void test_upsert_outlives_grace(void)
{
    char *dir = fresh_dir(), *dir2 = fresh_dir(), *dir3 = fresh_dir();
    eng *a = appliance(dir, 0), *b = appliance(dir2, 0), *sw = appliance(dir3, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sw);
    char name[64];
    eng_index_info info;
    create_plain(a, "slow", name, &info);
    static items s, other;
    make_items(&s, 5, 5, "SLOWX"); /* DEL-0..4: the marker in the contents only (below) */
    for (int i = 0; i < 5; i++) {
        s.it[i].metadata = "{}";
        s.it[i].metadata_len = 2;
    }
    make_items(&other, 2, 0, "NONE"); /* KEEPID-0..1 */
    sl = (struct slow_ctx){.armed = 1, .sw = sw, .b = b, .name = name, .items = other.it};
    memcpy(sl.id, info.id, 16);
    memcpy(sl.kcv, info.kcv, 8);
    eng_set_commit_hook(a, slow_hook, NULL);
    sl.stored_ms = cdx_mono_ms();
    uint64_t v = 0;
    CU_ASSERT_EQUAL(eng_upsert(a, name, s.it, 5, &v), CDX_OK);
    eng_set_commit_hook(a, NULL, NULL);
    CU_ASSERT_EQUAL(sl.armed, 0);
    CU_ASSERT_EQUAL(sl.marked_after_sweep, 0); /* the sweep did take the first contents */
    /* Every item serves its contents, read by a fresh appliance. */
    char *dir4 = fresh_dir();
    eng *fresh = appliance(dir4, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(fresh);
    const char *ids[5];
    size_t lens[5];
    for (int i = 0; i < 5; i++) {
        ids[i] = s.ids[i];
        lens[i] = strlen(s.ids[i]);
    }
    eng_get_result *g = NULL;
    CU_ASSERT_EQUAL_FATAL(eng_get(fresh, name, ids, lens, 5, ENG_WANT_CONTENTS, 0, &g), CDX_OK);
    for (int i = 0; i < 5; i++) {
        CU_ASSERT_TRUE(g->found[i]);
        const eng_hit *h = &g->hits[i];
        CU_ASSERT_EQUAL(h->contents_len, strlen(s.cont[i]));
        if (g->found[i] && h->contents_len == strlen(s.cont[i]))
            CU_ASSERT_EQUAL(memcmp(h->contents, s.cont[i], h->contents_len), 0);
    }
    CU_ASSERT_EQUAL(scan_store(info.id, info.kcv, "SLOWX").marked, 5); /* stored again */
    eng_get_result_free(g);
    CU_ASSERT_EQUAL(eng_index_delete(a, name, info.id), CDX_OK);
    eng_free(fresh);
    eng_free(sw);
    eng_free(b);
    eng_free(a);
    free(dir);
    free(dir2);
    free(dir3);
    free(dir4);
}

/*
 * A compaction held past the write window: a sweep elsewhere may have deleted the segments it
 * wrote first (unreferenced, older than the grace), so it must not commit them. It refuses,
 * naming the setting; the index serves as before, and a compaction in time succeeds.
 */
static void test_compaction_outlives_grace(void)
{
    char *dir = fresh_dir(), *dir2 = fresh_dir(), *dir3 = fresh_dir();
    eng *a = appliance(dir, 0), *sw = appliance(dir2, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sw);
    char name[64];
    eng_index_info info;
    create_plain(a, "slowc", name, &info);
    static items s;
    make_items(&s, 20, 0, "NONE");
    for (int b = 0; b < 4; b++) /* four segments to merge */
        CU_ASSERT_EQUAL_FATAL(eng_upsert(a, name, s.it + 5 * b, 5, NULL), CDX_OK);
    sl = (struct slow_ctx){.armed = 1, .sw = sw, .name = name};
    memcpy(sl.id, info.id, 16);
    memcpy(sl.kcv, info.kcv, 8);
    eng_set_commit_hook(a, slow_hook, NULL);
    sl.stored_ms = cdx_mono_ms();
    uint64_t v = 0;
    CU_ASSERT_EQUAL(eng_compact(a, name, &v), CDX_ERR_FAILED_PRECONDITION);
    CU_ASSERT_TRUE(fx_detail_has("gc_grace_ms"));
    eng_set_commit_hook(a, NULL, NULL);
    CU_ASSERT_EQUAL(sl.armed, 0);
    CU_ASSERT_TRUE(sl.swept > 0); /* the sweep took what the compaction wrote */
    /* Nothing changed: a fresh appliance serves all 20, and a compaction in time succeeds. */
    eng *fresh = appliance(dir3, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(fresh);
    const char *ids[20];
    size_t lens[20];
    for (int i = 0; i < 20; i++) {
        ids[i] = s.ids[i];
        lens[i] = strlen(s.ids[i]);
    }
    for (int round = 0; round < 2; round++) {
        eng_get_result *g = NULL;
        CU_ASSERT_EQUAL_FATAL(eng_get(fresh, name, ids, lens, 20, ENG_WANT_CONTENTS, 0, &g),
                              CDX_OK);
        for (int i = 0; i < 20; i++)
            CU_ASSERT_TRUE(g->found[i] && g->hits[i].contents_len == strlen(s.cont[i]));
        eng_get_result_free(g);
        CU_ASSERT_EQUAL(fx_q1(fresh, name, s.x), CDX_OK);
        if (!round) {
            CU_ASSERT_EQUAL(eng_compact(a, name, &v), CDX_OK);
            CU_ASSERT_TRUE(v > 0);
        }
    }
    CU_ASSERT_EQUAL(eng_index_delete(a, name, info.id), CDX_OK);
    eng_free(fresh);
    eng_free(sw);
    eng_free(a);
    free(dir);
    free(dir2);
    free(dir3);
}

static const fx_test tests[] = {
    {"a compaction held past the write window refuses to commit", test_compaction_outlives_grace},
    {"an upsert held past its contents' grace stores them again", test_upsert_outlives_grace},
    {"an equal-version fork after a lost tail is rebased (L4)", test_equal_version_fork},
    {"erasure: delete + compaction + grace leave nothing that decrypts", test_erasure_scan},
    {"crypto-shred: a restored copy opens nowhere once the key is gone",
     test_shredded_copy_unreadable},
    {"no resurrection: tombstone, token mark, purge, accept", test_no_resurrection},
    {"a rebuilt appliance catches a rollback through the token", test_fresh_appliance_rollback},
};

int main(void)
{
    return fx_engine_run(tests, sizeof(tests) / sizeof(tests[0]));
}
