/*
 * The write path: upsert and delete share write_batch, which tombstones old
 * copies, writes one new segment per touched cluster, updates the id map and
 * commits, retrying on conflict.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cdx_log.h"
#include "eng_commit.h"
#include "eng_dist.h"
#include "eng_head.h"
#include "eng_idmap.h"
#include "eng_int.h"
#include "eng_json.h"
#include "eng_op.h"
#include "eng_par.h"
#include "eng_segment.h"
#include "eng_store.h"

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Index of x in the sorted array a[0..n) (x is there). */
static size_t find_u32(const uint32_t *a, size_t n, uint32_t x)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (a[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

typedef struct assign_part {
    eng_part p;
    const eng_manifest *m;
    const float *x;
    size_t n;
    uint32_t *out;
} assign_part;

static void *assign_part_main(void *arg)
{
    assign_part *w = arg;
    eng_part_done(&w->p, eng_assign_clusters(w->m, w->x, w->n, w->out));
    return NULL;
}

/* assign_clusters with the rows split over the cores: the sgemm is most of an upsert's CPU. */
static cdx_err assign_parallel(const eng_manifest *m, const float *x, size_t n, uint32_t *out)
{
    assign_part w[CDX_WRITE_THREADS_MAX];
    const eng_part *ps[CDX_WRITE_THREADS_MAX];
    /* Threads from ~16M multiply-adds (a fraction of a millisecond) on. */
    unsigned nt = m->n_clusters ? eng_par_threads(n * m->n_clusters * m->dim, (size_t)1 << 24) : 1;
    size_t per = (n + nt - 1) / nt;
    for (unsigned i = 0; i < nt; i++) {
        size_t from = (size_t)i * per < n ? (size_t)i * per : n;
        w[i] = (assign_part){.m = m,
                             .x = x + from * m->dim,
                             .n = n - from < per ? n - from : per,
                             .out = out + from};
        ps[i] = &w[i].p;
    }
    eng_par_run(assign_part_main, w, sizeof(w[0]), nt, true);
    return eng_parts_err(ps, nt);
}

typedef struct seg_put_arg {
    op *o; /* only o->e and o->ix are read: the op's thread goes on sealing */
    eng_seg_out *segs;
    size_t n;
} seg_put_arg;

static cdx_err seg_put(void *arg)
{
    seg_put_arg *a = arg;
    return eng_segments_put(a->o, a->segs, a->n);
}

/* One attempt of write_batch: what it builds, freed by attempt_free. */
typedef struct attempt {
    eng_manifest *m, *nm; /* the state written on, and the one committed */
    eng_bucketset bs;
    eng_tomb *tombs; /* old copies of the rows and deleted ids, */
    uint32_t *tcl;   /* and their clusters */
    size_t ntombs;
    uint64_t ndeleted; /* deleted ids that existed */
    int64_t dcount;    /* change of the live count */
    uint32_t *cls;     /* touched clusters, ascending: one segment each */
    eng_row **bycl;    /* rows grouped by segment (stable) */
    eng_tomb *ct;      /* tombstones grouped by segment */
    size_t *rs, *ts;   /* segment j: bycl[rs[j]..rs[j+1]), ct[ts[j]..ts[j+1]) */
    eng_seg_out *segs;
    size_t nsegs;
} attempt;

static void attempt_free(attempt *a)
{
    eng_manifest_unref(a->m);
    eng_manifest_unref(a->nm);
    eng_bucketset_free(&a->bs);
    eng_segs_free(a->segs, a->nsegs);
    free(a->bycl);
    free(a->tombs);
    free(a->tcl);
    free(a->ct);
    free(a->cls);
    free(a->rs);
    free(a->ts);
}

/*
 * Old copies of the rows and of the deleted ids: a tombstone each in its own
 * cluster; deleted ids leave the id map.
 */
static cdx_err tombstone_old(const eng_row *rows, size_t nrows, const uint8_t (*del)[ENG_TOKEN_LEN],
                             size_t ndel, attempt *a)
{
    a->tombs = malloc((nrows + ndel + 1) * sizeof(*a->tombs));
    a->tcl = malloc((nrows + ndel + 1) * sizeof(*a->tcl));
    if (!a->tombs || !a->tcl)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    for (size_t i = 0; i < nrows + ndel; i++) {
        const uint8_t *tok = i < nrows ? rows[i].tok : del[i - nrows];
        eng_ident *old = eng_bucket_find(a->bs.b[eng_bucket_of(tok)], tok);
        if (!old) {
            if (i < nrows)
                a->dcount++;
            continue;
        }
        if (old->cluster >= eng_manifest_nclusters(a->m))
            return cdx_fail(CDX_ERR_INTEGRITY, "id map names a cluster that does not exist");
        memcpy(a->tombs[a->ntombs].seg, old->seg, ENG_TOKEN_LEN);
        a->tombs[a->ntombs].row = old->row;
        a->tcl[a->ntombs++] = old->cluster;
        if (i >= nrows) {
            eng_bucket_remove(a->bs.b[eng_bucket_of(tok)], tok);
            a->bs.dirty[eng_bucket_of(tok)] = true;
            a->ndeleted++;
            a->dcount--;
        }
    }
    return CDX_OK;
}

/* The touched clusters, sorted, and the rows and tombstones grouped by them (stable). */
static cdx_err group_by_cluster(eng_row *rows, size_t nrows, const uint32_t *assign, attempt *a)
{
    a->cls = malloc((nrows + a->ntombs + 1) * sizeof(uint32_t));
    size_t ncl = 0;
    if (!a->cls)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    for (size_t i = 0; i < nrows; i++)
        a->cls[ncl++] = assign[i];
    for (size_t i = 0; i < a->ntombs; i++)
        a->cls[ncl++] = a->tcl[i];
    qsort(a->cls, ncl, sizeof(uint32_t), cmp_u32);
    size_t u = 0;
    for (size_t i = 0; i < ncl; i++)
        if (u == 0 || a->cls[u - 1] != a->cls[i])
            a->cls[u++] = a->cls[i];
    ncl = u;
    a->segs = calloc(ncl ? ncl : 1, sizeof(*a->segs));
    a->bycl = malloc((nrows + 1) * sizeof(*a->bycl));
    a->ct = malloc((a->ntombs + 1) * sizeof(*a->ct));
    a->rs = calloc(ncl + 1, sizeof(*a->rs));
    a->ts = calloc(ncl + 1, sizeof(*a->ts));
    if (!a->segs || !a->bycl || !a->ct || !a->rs || !a->ts)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    a->nsegs = ncl;
    size_t *rs = a->rs, *ts = a->ts;
    for (size_t i = 0; i < nrows; i++)
        rs[find_u32(a->cls, ncl, assign[i]) + 1]++;
    for (size_t i = 0; i < a->ntombs; i++)
        ts[find_u32(a->cls, ncl, a->tcl[i]) + 1]++;
    for (size_t c = 0; c < ncl; c++) {
        rs[c + 1] += rs[c];
        ts[c + 1] += ts[c];
    }
    for (size_t i = 0; i < nrows; i++) {
        size_t c = find_u32(a->cls, ncl, assign[i]);
        rows[i].cluster = assign[i];
        a->bycl[rs[c]++] = &rows[i];
    }
    for (size_t i = 0; i < a->ntombs; i++)
        a->ct[ts[find_u32(a->cls, ncl, a->tcl[i])]++] = a->tombs[i];
    /* The fills moved each start to the next segment's: shift back. */
    memmove(rs + 1, rs, ncl * sizeof(*rs));
    memmove(ts + 1, ts, ncl * sizeof(*ts));
    rs[0] = ts[0] = 0;
    return CDX_OK;
}

/* The placed rows into the id map, committed at v unless they carry their own version. */
static cdx_err map_rows(const eng_row *rows, size_t nrows, uint64_t v, eng_bucketset *bs)
{
    cdx_err err;
    for (size_t i = 0; i < nrows; i++) {
        eng_ident id = {0};
        memcpy(id.tok, rows[i].tok, ENG_TOKEN_LEN);
        id.cluster = rows[i].cluster;
        memcpy(id.seg, rows[i].seg, ENG_TOKEN_LEN);
        id.row = rows[i].row;
        id.commit_version = rows[i].commit_version ? rows[i].commit_version : v;
        memcpy(id.content, rows[i].content, ENG_TOKEN_LEN);
        id.content_len = rows[i].content_len;
        id.id_len = rows[i].id_len;
        id.id = malloc(rows[i].id_len + 1u);
        if (!id.id)
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        memcpy(id.id, rows[i].id, rows[i].id_len);
        id.id[rows[i].id_len] = '\0';
        unsigned b = eng_bucket_of(id.tok);
        if ((err = eng_bucket_put(bs->b[b], &id))) {
            free(id.id);
            return err;
        }
        bs->dirty[b] = true;
    }
    return CDX_OK;
}

/* The manifest to commit: a's base with the new segments and count. */
static cdx_err next_manifest(attempt *a)
{
    cdx_err err = eng_manifest_clone_ref(a->m, &a->nm);
    for (size_t s = 0; s < a->nsegs && !err; s++)
        err = eng_cluster_push(&a->nm->clusters[a->segs[s].cluster], &a->segs[s].ref);
    if (!err)
        a->nm->count = (uint64_t)((int64_t)a->m->count + a->dcount);
    return err;
}

/*
 * What a batch made under one key epoch before its state was read: the id
 * tokens of its rows or deleted ids, and its contents records. A state of
 * another epoch (a key rotation committed meanwhile) makes them again. So
 * does age: a batch that has waited eng_write_window_ms (lost commits, the
 * compaction gate) since it stored its contents stores them again under
 * fresh tokens rather than commit names a sweep may have deleted.
 */
typedef struct batch_prep {
    cdx_err (*fn)(op *o, void *arg); /* re-tokenise (and re-store contents) under o->epoch */
    void *arg;
    uint32_t epoch;    /* the epoch they were made under */
    int64_t stored_ms; /* monotonic time its contents were stored; 0 = it has none */
} batch_prep;

/*
 * The write path shared by upsert and delete: rows to add (may be none) and
 * ids to remove; tombstones old copies in their clusters, writes one new
 * segment per touched cluster, updates buckets, commits. Retries on conflict.
 */
static cdx_err write_batch(op *o, eng_row *rows, size_t nrows, const uint8_t (*del)[ENG_TOKEN_LEN],
                           size_t ndel, batch_prep *prep, uint64_t *deleted, uint64_t *version)
{
    eng *e = o->e;
    cdx_err err = CDX_OK;
    float *sv = NULL;
    uint32_t *assign = NULL;
    /* The centroids `assign` was computed with: a retry under the same model reuses it. */
    uint64_t assigned_cv = UINT64_MAX;
    uint8_t assigned_ct[ENG_TOKEN_LEN];
    if (nrows) {
        sv = malloc(nrows * (size_t)o->ix->cat.dim * sizeof(float));
        assign = malloc(nrows * sizeof(uint32_t));
        if (!sv || !assign) {
            free(sv);
            free(assign);
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        }
        for (size_t i = 0; i < nrows; i++)
            memcpy(sv + i * o->ix->cat.dim, rows[i].search, o->ix->cat.dim * sizeof(float));
    }
    for (unsigned attempt_no = 0; attempt_no < e->cfg.commit_retries; attempt_no++) {
        attempt a;
        memset(&a, 0, sizeof(a));
        bool committed = false;
        seg_put_arg sp;
        eng_bg wr = ENG_BG_IDLE;
        eng_gate_wait(o->ix); /* a compaction that keeps losing goes first */
        if ((err = eng_load_state(o, true, 0, &a.m)))
            goto next;
        bool aged = prep->stored_ms && cdx_mono_ms() - prep->stored_ms >= eng_write_window_ms(e);
        if (prep->epoch != o->epoch || aged) { /* a key rotation landed, or old contents */
            if (aged)
                cdx_log(CDX_LOG_INFO, "eng_contents_restored",
                        "index=%s waited_ms=%lld gc_grace_ms=%u", o->ix->name,
                        (long long)(cdx_mono_ms() - prep->stored_ms), e->cfg.gc_grace_ms);
            if ((err = prep->fn(o, prep->arg)))
                goto next;
            prep->epoch = o->epoch;
            if (prep->stored_ms)
                prep->stored_ms = cdx_mono_ms();
        }
        const eng_manifest *m = a.m;
        uint64_t v = m->version + 1;
        if (nrows && (m->centroids_version != assigned_cv ||
                      memcmp(m->centroids_token, assigned_ct, ENG_TOKEN_LEN))) {
            if ((err = assign_parallel(m, sv, nrows, assign)))
                goto next;
            assigned_cv = m->centroids_version;
            memcpy(assigned_ct, m->centroids_token, ENG_TOKEN_LEN);
        }
        bool want[ENG_BUCKETS] = {false};
        for (size_t i = 0; i < nrows; i++)
            want[eng_bucket_of(rows[i].tok)] = true;
        for (size_t i = 0; i < ndel; i++)
            want[eng_bucket_of(del[i])] = true;
        eng_wcache_take(o, m, &a.bs);
        if ((err = eng_buckets_load(o, m, want, &a.bs))) {
            if (err == ENG_MOVED)
                err = CDX_OK; /* like a lost commit: rebase */
            goto next;
        }
        if ((err = tombstone_old(rows, nrows, del, ndel, &a)))
            goto next;
        if (nrows == 0 && a.ntombs == 0) {
            /* Nothing to delete: no commit, report the current version. */
            if (version)
                *version = m->version;
            if (deleted)
                *deleted = 0;
            committed = true;
            eng_wcache_put(o, m, &a.bs); /* unchanged: still the buckets of m */
            goto next;
        }
        if ((err = group_by_cluster(rows, nrows, assign, &a)))
            goto next;
        /* What the commit names was written from here on (segments), or with the contents. */
        o->wrote_since = prep->stored_ms ? prep->stored_ms : cdx_mono_ms();
        eng_seg_build sb = {.m = m,
                            .version = v,
                            .cls = a.cls,
                            .rows = a.bycl,
                            .rs = a.rs,
                            .tombs = a.ct,
                            .ts = a.ts,
                            .segs = a.segs,
                            .n = a.nsegs};
        atomic_init(&sb.next, 0);
        if ((err = eng_segments_build(o, &sb)))
            goto next;
        /* Segments go to the store while the buckets and the manifest are sealed. */
        sp = (seg_put_arg){o, a.segs, a.nsegs};
        if ((err = eng_bg_start(&wr, seg_put, &sp)) || (err = map_rows(rows, nrows, v, &a.bs)) ||
            (err = next_manifest(&a)) ||
            (err = eng_commit_joined(o, m, a.nm, &a.bs, eng_bg_join, &wr, &committed))) {
            if (err == ENG_AGED)
                err = CDX_OK; /* like a lost commit: the next attempt writes them again */
            goto next;
        }
        if (committed) {
            if (version)
                *version = v;
            if (deleted)
                *deleted = a.ndeleted;
            eng_wcache_put(o, a.nm, &a.bs);
        }
    next:
        o->wrote_since = 0;
        eng_bg_join(&wr); /* before the segments are freed; an error was reported already */
        attempt_free(&a);
        if (err || committed)
            break;
        eng_backoff(attempt_no);
    }
    free(sv);
    free(assign);
    if (!err && !(version && *version))
        err = cdx_fail(CDX_ERR_ABORTED,
                       "index %s: %u commit attempts lost to concurrent writers; retry",
                       o->ix->name, e->cfg.commit_retries);
    return err;
}

typedef struct tokidx {
    uint8_t tok[ENG_TOKEN_LEN];
    size_t i;
} tokidx;

static int cmp_tokidx(const void *a, const void *b)
{
    return memcmp(((const tokidx *)a)->tok, ((const tokidx *)b)->tok, ENG_TOKEN_LEN);
}

/* Validate a whole upsert batch before anything is written: all or nothing. */
static cdx_err check_items(const eng_item *items, size_t n, size_t d, bool cosine)
{
    cdx_err err;
    for (size_t i = 0; i < n; i++) {
        if ((err = eng_check_id(items[i].id, items[i].id_len, i)))
            return err;
        if (!items[i].vector)
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "item %zu: no vector", i);
        if (!eng_finite_vec(items[i].vector, d))
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "item %zu: vector has NaN or Inf", i);
        if (cosine && eng_norm2(items[i].vector, d) == 0.0f)
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                            "item %zu: a zero vector has no direction (cosine index)", i);
        if (items[i].metadata_len) {
            json_t *j = NULL;
            if ((err = eng_json_parse_object(items[i].metadata, items[i].metadata_len,
                                             CDX_METADATA_MAX, &j)))
                return cdx_prefix(err, "item %zu metadata: ", i);
            json_decref(j);
        }
        if (items[i].contents_len > CDX_CONTENTS_MAX)
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "item %zu: contents exceed %u bytes", i,
                            CDX_CONTENTS_MAX);
    }
    return CDX_OK;
}

/* The rows of the items with their id tokens (cosine: searched on norm, n x d floats). */
static cdx_err items_to_rows(op *o, const eng_item *items, size_t n, size_t d, float *norm,
                             eng_row *rows)
{
    cdx_err err;
    for (size_t i = 0; i < n; i++) {
        eng_row *r = &rows[i];
        r->id = items[i].id;
        r->id_len = (uint16_t)items[i].id_len;
        r->orig = items[i].vector;
        r->search = items[i].vector;
        if (norm) {
            memcpy(norm + i * d, items[i].vector, d * sizeof(float));
            eng_normalize(norm + i * d, d);
            r->search = norm + i * d;
        }
        r->meta = items[i].metadata_len ? items[i].metadata : NULL;
        r->meta_len = (uint32_t)items[i].metadata_len;
        if ((err = eng_id_token_w(o, r->id, r->id_len, r->tok)))
            return err;
    }
    return CDX_OK;
}

/* Refuse a batch naming one id twice (naming the first two items that do). */
static cdx_err check_duplicates(const eng_row *rows, size_t n)
{
    cdx_err err = CDX_OK;
    tokidx *ti = calloc(n, sizeof(*ti));
    if (!ti)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    for (size_t i = 0; i < n; i++) {
        memcpy(ti[i].tok, rows[i].tok, ENG_TOKEN_LEN);
        ti[i].i = i;
    }
    qsort(ti, n, sizeof(*ti), cmp_tokidx);
    for (size_t i = 1; i < n; i++)
        if (!memcmp(ti[i - 1].tok, ti[i].tok, ENG_TOKEN_LEN)) {
            size_t a = ti[i - 1].i < ti[i].i ? ti[i - 1].i : ti[i].i;
            size_t b = ti[i - 1].i < ti[i].i ? ti[i].i : ti[i - 1].i;
            err = cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                           "duplicate id in the batch (items %zu and %zu)", a, b);
            break;
        }
    free(ti);
    return err;
}

/* Store the items' contents first: immutable records under fresh tokens (rows learn them). */
static cdx_err put_contents(op *o, const eng_item *items, size_t n, eng_row *rows)
{
    cdx_err err = CDX_OK;
    size_t nc = 0;
    eng_buf *crec = calloc(n, sizeof(*crec));
    eng_kv *ckv = calloc(n, sizeof(*ckv));
    char(*ckeys)[CDX_STORE_KEY_MAX] = calloc(n, sizeof(*ckeys));
    bool *created = NULL;
    if (!crec || !ckv || !ckeys) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (!items[i].contents_len)
            continue;
        if ((err = eng_random(rows[i].content, ENG_TOKEN_LEN)))
            goto out;
        rows[i].content_len = (uint32_t)items[i].contents_len;
        eng_buf_init(&crec[nc]);
        if ((err = eng_op_seal(o, HSM_P_CONTENT, ENG_K_CONTENT, rows[i].content, 0,
                               items[i].contents, items[i].contents_len, &crec[nc])))
            goto out;
        eng_key_rec(ckeys[nc], o->ix->id, ENG_KEY_CONTENTS, rows[i].content);
        ckv[nc] = (eng_kv){ckeys[nc], crec[nc].data, crec[nc].len};
        nc++;
    }
    if (nc) {
        created = malloc(nc * sizeof(bool));
        if (!created) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto out;
        }
        err = eng_store_setnx(o->e->cfg.store, ckv, nc, created);
    }
out:
    if (crec)
        for (size_t i = 0; i < n; i++)
            eng_buf_free(&crec[i]);
    free(crec);
    free(ckv);
    free(ckeys);
    free(created);
    return err;
}

/* An upsert's batch: its rows' tokens and contents are made again under a new epoch. */
typedef struct upsert_prep {
    const eng_item *items;
    size_t n, d;
    float *norm;
    eng_row *rows;
} upsert_prep;

static cdx_err upsert_reprep(op *o, void *arg)
{
    upsert_prep *u = arg;
    cdx_err err = items_to_rows(o, u->items, u->n, u->d, u->norm, u->rows);
    return err ? err : put_contents(o, u->items, u->n, u->rows);
}

cdx_err eng_upsert(eng *e, const char *name, const eng_item *items, size_t n, uint64_t *version)
{
    struct idx *ix;
    cdx_err err = eng_idx_get(e, name, &ix);
    if (err)
        return err;
    if (n == 0 || !items)
        return eng_idx_drop(ix, cdx_fail(CDX_ERR_INVALID_ARGUMENT, "empty upsert batch"));
    if (n > CDX_UPSERT_BATCH_MAX)
        return eng_idx_drop(ix, cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                                         "upsert batch of %zu items exceeds %d", n,
                                         CDX_UPSERT_BATCH_MAX));
    size_t d = ix->cat.dim;
    bool cosine = ix->cat.metric == ENG_METRIC_COSINE;
    if ((err = check_items(items, n, d, cosine)))
        return eng_idx_drop(ix, err);
    op o;
    eng_op_index(e, ix, &o);
    eng_row *rows = calloc(n, sizeof(*rows));
    float *norm = cosine ? malloc(n * d * sizeof(float)) : NULL;
    uint64_t v = 0;
    upsert_prep up = {items, n, d, norm, rows};
    batch_prep bp = {upsert_reprep, &up, o.epoch, 0};
    bool with_contents = false;
    for (size_t i = 0; i < n; i++)
        with_contents |= items[i].contents_len > 0;
    if (!rows || (cosine && !norm))
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    else if (!(err = items_to_rows(&o, items, n, d, norm, rows)) &&
             !(err = check_duplicates(rows, n)) && !(err = put_contents(&o, items, n, rows))) {
        bp.stored_ms = with_contents ? cdx_mono_ms() : 0;
        if (!(err = write_batch(&o, rows, n, NULL, 0, &bp, NULL, &v)) && version)
            *version = v;
    }
    free(rows);
    free(norm);
    eng_op_end(&o);
    return err;
}

/* A delete's ids and their distinct tokens (made again under a new epoch). */
typedef struct delete_prep {
    const char *const *ids;
    const size_t *id_lens;
    size_t n;
    uint8_t (*toks)[ENG_TOKEN_LEN];
    size_t nt; /* distinct tokens */
} delete_prep;

/* The distinct tokens of the ids, in order of first appearance; *nt = how many. */
static cdx_err delete_tokens(op *o, delete_prep *dp, size_t *nt)
{
    cdx_err err = CDX_OK;
    *nt = 0;
    for (size_t i = 0; i < dp->n && !err; i++) {
        err = eng_id_token_w(o, dp->ids[i], dp->id_lens[i], dp->toks[*nt]);
        bool dup = false;
        for (size_t j = 0; j < *nt && !dup; j++)
            dup = !memcmp(dp->toks[j], dp->toks[*nt], ENG_TOKEN_LEN);
        if (!dup)
            (*nt)++;
    }
    return err;
}

static cdx_err delete_reprep(op *o, void *arg)
{
    delete_prep *dp = arg;
    size_t nt;
    cdx_err err = delete_tokens(o, dp, &nt);
    if (!err && nt != dp->nt)
        err = cdx_fail(CDX_ERR_INTERNAL, "id tokens collide under the new key epoch");
    return err;
}

cdx_err eng_delete(eng *e, const char *name, const char *const *ids, const size_t *id_lens,
                   size_t n, uint64_t *deleted, uint64_t *version)
{
    struct idx *ix;
    cdx_err err = eng_idx_get(e, name, &ix);
    if (err)
        return err;
    if (n == 0 || !ids)
        return eng_idx_drop(ix, cdx_fail(CDX_ERR_INVALID_ARGUMENT, "no ids to delete"));
    if (n > CDX_GET_BATCH_MAX)
        return eng_idx_drop(ix, cdx_fail(CDX_ERR_INVALID_ARGUMENT, "delete of %zu ids exceeds %d",
                                         n, CDX_GET_BATCH_MAX));
    for (size_t i = 0; i < n; i++)
        if ((err = eng_check_id(ids[i], id_lens[i], i)))
            return eng_idx_drop(ix, err);
    op o;
    eng_op_index(e, ix, &o);
    uint8_t(*toks)[ENG_TOKEN_LEN] = malloc(n * ENG_TOKEN_LEN);
    if (!toks) {
        eng_op_end(&o);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    size_t nt = 0;
    delete_prep dp = {ids, id_lens, n, toks, 0};
    batch_prep bp = {delete_reprep, &dp, o.epoch, 0};
    err = delete_tokens(&o, &dp, &nt);
    uint64_t v = 0, d = 0;
    if (!err) {
        dp.nt = nt;
        err = write_batch(&o, NULL, 0, (const uint8_t(*)[ENG_TOKEN_LEN])toks, nt, &bp, &d, &v);
    }
    if (!err) {
        if (deleted)
            *deleted = d;
        if (version)
            *version = v;
    }
    free(toks);
    eng_op_end(&o);
    return err;
}
