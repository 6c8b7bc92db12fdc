/*
 * The write path: upsert and delete share write_batch, which tombstones old
 * copies, writes one new segment per touched cluster, updates the id map and
 * commits, retrying on conflict.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

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

/*
 * The write path shared by upsert and delete: rows to add (may be none) and
 * ids to remove; tombstones old copies in their clusters, writes one new
 * segment per touched cluster, updates buckets, commits. Retries on conflict.
 */
static cdx_err write_batch(op *o, eng_row *rows, size_t nrows, const uint8_t (*del)[ENG_TOKEN_LEN],
                           size_t ndel, uint64_t *deleted, uint64_t *version)
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
    for (unsigned attempt = 0; attempt < e->cfg.commit_retries; attempt++) {
        eng_manifest *m = NULL, *nm = NULL;
        eng_bucketset bs;
        memset(&bs, 0, sizeof(bs));
        eng_seg_out *segs = NULL;
        size_t nsegs = 0;
        eng_row **bycl = NULL;
        eng_tomb *tombs = NULL, *ct = NULL;
        uint32_t *tcl = NULL, *cls = NULL;
        size_t *rs = NULL, *ts = NULL;
        size_t ntombs = 0;
        uint64_t ndeleted = 0;
        bool committed = false;
        seg_put_arg sp;
        eng_bg wr = ENG_BG_IDLE;
        if ((err = eng_load_state(o, true, 0, &m)))
            goto next;
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
        eng_wcache_take(o, m, &bs);
        if ((err = eng_buckets_load(o, m, want, &bs))) {
            if (err == ENG_MOVED)
                err = CDX_OK; /* like a lost commit: rebase */
            goto next;
        }
        /* Old copies: tombstone them in their own cluster. */
        tombs = malloc((nrows + ndel + 1) * sizeof(*tombs));
        tcl = malloc((nrows + ndel + 1) * sizeof(*tcl));
        if (!tombs || !tcl) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto next;
        }
        int64_t dcount = 0;
        for (size_t i = 0; i < nrows + ndel; i++) {
            const uint8_t *tok = i < nrows ? rows[i].tok : del[i - nrows];
            eng_ident *old = eng_bucket_find(bs.b[eng_bucket_of(tok)], tok);
            if (!old) {
                if (i < nrows)
                    dcount++;
                continue;
            }
            if (old->cluster >= eng_manifest_nclusters(m)) {
                err = cdx_fail(CDX_ERR_INTEGRITY, "id map names a cluster that does not exist");
                goto next;
            }
            memcpy(tombs[ntombs].seg, old->seg, ENG_TOKEN_LEN);
            tombs[ntombs].row = old->row;
            tcl[ntombs++] = old->cluster;
            if (i >= nrows) {
                eng_bucket_remove(bs.b[eng_bucket_of(tok)], tok);
                bs.dirty[eng_bucket_of(tok)] = true;
                ndeleted++;
                dcount--;
            }
        }
        if (nrows == 0 && ntombs == 0) {
            /* Nothing to delete: no commit, report the current version. */
            if (version)
                *version = m->version;
            if (deleted)
                *deleted = 0;
            committed = true;
            eng_wcache_put(o, m, &bs); /* unchanged: still the buckets of m */
            goto next;
        }
        /* Touched clusters, sorted: one segment each. */
        cls = malloc((nrows + ntombs + 1) * sizeof(uint32_t));
        size_t ncl = 0;
        if (!cls) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto next;
        }
        for (size_t i = 0; i < nrows; i++)
            cls[ncl++] = assign[i];
        for (size_t i = 0; i < ntombs; i++)
            cls[ncl++] = tcl[i];
        qsort(cls, ncl, sizeof(uint32_t), cmp_u32);
        size_t u = 0;
        for (size_t i = 0; i < ncl; i++)
            if (u == 0 || cls[u - 1] != cls[i])
                cls[u++] = cls[i];
        ncl = u;
        /* Group rows and tombstones by segment (stable: batch order within a segment). */
        segs = calloc(ncl ? ncl : 1, sizeof(*segs));
        bycl = malloc((nrows + 1) * sizeof(*bycl));
        ct = malloc((ntombs + 1) * sizeof(*ct));
        rs = calloc(ncl + 1, sizeof(*rs));
        ts = calloc(ncl + 1, sizeof(*ts));
        if (!segs || !bycl || !ct || !rs || !ts) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto next;
        }
        nsegs = ncl;
        for (size_t i = 0; i < nrows; i++)
            rs[find_u32(cls, ncl, assign[i]) + 1]++;
        for (size_t i = 0; i < ntombs; i++)
            ts[find_u32(cls, ncl, tcl[i]) + 1]++;
        for (size_t c = 0; c < ncl; c++) {
            rs[c + 1] += rs[c];
            ts[c + 1] += ts[c];
        }
        for (size_t i = 0; i < nrows; i++) {
            size_t c = find_u32(cls, ncl, assign[i]);
            rows[i].cluster = assign[i];
            bycl[rs[c]++] = &rows[i];
        }
        for (size_t i = 0; i < ntombs; i++)
            ct[ts[find_u32(cls, ncl, tcl[i])]++] = tombs[i];
        /* The fills moved each start to the next segment's: shift back. */
        memmove(rs + 1, rs, ncl * sizeof(*rs));
        memmove(ts + 1, ts, ncl * sizeof(*ts));
        rs[0] = ts[0] = 0;
        eng_seg_build sb = {.m = m,
                            .version = v,
                            .cls = cls,
                            .rows = bycl,
                            .rs = rs,
                            .tombs = ct,
                            .ts = ts,
                            .segs = segs,
                            .n = nsegs};
        atomic_init(&sb.next, 0);
        if ((err = eng_segments_build(o, &sb)))
            goto next;
        /* Segments go to the store while the buckets and the manifest are sealed. */
        sp = (seg_put_arg){o, segs, nsegs};
        if ((err = eng_bg_start(&wr, seg_put, &sp)))
            goto next;
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
            if (!id.id) {
                err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
                goto next;
            }
            memcpy(id.id, rows[i].id, rows[i].id_len);
            id.id[rows[i].id_len] = '\0';
            unsigned b = eng_bucket_of(id.tok);
            if ((err = eng_bucket_put(bs.b[b], &id))) {
                free(id.id);
                goto next;
            }
            bs.dirty[b] = true;
        }
        if ((err = eng_manifest_clone_ref(m, &nm)))
            goto next;
        for (size_t s = 0; s < nsegs && !err; s++)
            err = eng_cluster_push(&nm->clusters[segs[s].cluster], &segs[s].ref);
        if (err)
            goto next;
        nm->count = (uint64_t)((int64_t)m->count + dcount);
        if ((err = eng_commit_joined(o, m, nm, &bs, eng_bg_join, &wr, &committed)))
            goto next;
        if (committed) {
            if (version)
                *version = v;
            if (deleted)
                *deleted = ndeleted;
            eng_wcache_put(o, nm, &bs);
        }
    next:
        eng_bg_join(&wr); /* before the segments are freed; an error was reported already */
        eng_manifest_unref(m);
        eng_manifest_unref(nm);
        eng_bucketset_free(&bs);
        eng_segs_free(segs, nsegs);
        free(bycl);
        free(tombs);
        free(tcl);
        free(ct);
        free(cls);
        free(rs);
        free(ts);
        if (err || committed)
            break;
        eng_backoff(attempt);
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

cdx_err eng_upsert(eng *e, const char *name, const eng_item *items, size_t n, uint64_t *version)
{
    struct idx *ix;
    cdx_err err = eng_idx_get(e, name, &ix);
    if (err)
        return err;
    if (n == 0 || !items)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "empty upsert batch");
    if (n > CDX_UPSERT_BATCH_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "upsert batch of %zu items exceeds %d", n,
                        CDX_UPSERT_BATCH_MAX);
    size_t d = ix->cat.dim;
    bool cosine = ix->cat.metric == ENG_METRIC_COSINE;
    /* Validate everything before anything is written: all or nothing. */
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
    op o;
    eng_op_index(e, ix, &o);
    eng_row *rows = calloc(n, sizeof(*rows));
    tokidx *ti = calloc(n, sizeof(*ti));
    float *norm = cosine ? malloc(n * d * sizeof(float)) : NULL;
    eng_buf *crec = NULL;
    eng_kv *ckv = NULL;
    char(*ckeys)[CDX_STORE_KEY_MAX] = NULL;
    if (!rows || !ti || (cosine && !norm)) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        eng_row *r = &rows[i];
        r->id = items[i].id;
        r->id_len = (uint16_t)items[i].id_len;
        r->orig = items[i].vector;
        r->search = items[i].vector;
        if (cosine) {
            memcpy(norm + i * d, items[i].vector, d * sizeof(float));
            eng_normalize(norm + i * d, d);
            r->search = norm + i * d;
        }
        r->meta = items[i].metadata_len ? items[i].metadata : NULL;
        r->meta_len = (uint32_t)items[i].metadata_len;
        if ((err = eng_id_token_w(&o, r->id, r->id_len, r->tok)))
            goto out;
        memcpy(ti[i].tok, r->tok, ENG_TOKEN_LEN);
        ti[i].i = i;
    }
    qsort(ti, n, sizeof(*ti), cmp_tokidx);
    for (size_t i = 1; i < n; i++)
        if (!memcmp(ti[i - 1].tok, ti[i].tok, ENG_TOKEN_LEN)) {
            size_t a = ti[i - 1].i < ti[i].i ? ti[i - 1].i : ti[i].i;
            size_t b = ti[i - 1].i < ti[i].i ? ti[i].i : ti[i - 1].i;
            err = cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                           "duplicate id in the batch (items %zu and %zu)", a, b);
            goto out;
        }
    /* Contents first: immutable, under fresh tokens. */
    size_t nc = 0;
    crec = calloc(n, sizeof(*crec));
    ckv = calloc(n, sizeof(*ckv));
    ckeys = calloc(n, sizeof(*ckeys));
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
        if ((err = eng_op_seal(&o, HSM_P_CONTENT, ENG_K_CONTENT, rows[i].content, 0,
                               items[i].contents, items[i].contents_len, &crec[nc])))
            goto out;
        eng_key_rec(ckeys[nc], ix->id, ENG_KEY_CONTENTS, rows[i].content);
        ckv[nc] = (eng_kv){ckeys[nc], crec[nc].data, crec[nc].len};
        nc++;
    }
    if (nc) {
        bool *created = malloc(nc * sizeof(bool));
        if (!created) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto out;
        }
        err = eng_store_setnx(e->cfg.store, ckv, nc, created);
        free(created);
        if (err)
            goto out;
    }
    uint64_t v = 0;
    err = write_batch(&o, rows, n, NULL, 0, NULL, &v);
    if (!err && version)
        *version = v;
out:
    if (crec)
        for (size_t i = 0; i < n; i++)
            eng_buf_free(&crec[i]);
    free(crec);
    free(ckv);
    free(ckeys);
    free(rows);
    free(ti);
    free(norm);
    eng_op_end(&o);
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
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "no ids to delete");
    if (n > CDX_GET_BATCH_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "delete of %zu ids exceeds %d", n,
                        CDX_GET_BATCH_MAX);
    for (size_t i = 0; i < n; i++)
        if ((err = eng_check_id(ids[i], id_lens[i], i)))
            return err;
    op o;
    eng_op_index(e, ix, &o);
    uint8_t(*toks)[ENG_TOKEN_LEN] = malloc(n * ENG_TOKEN_LEN);
    if (!toks) {
        eng_op_end(&o);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    size_t nt = 0;
    for (size_t i = 0; i < n && !err; i++) {
        err = eng_id_token_w(&o, ids[i], id_lens[i], toks[nt]);
        bool dup = false;
        for (size_t j = 0; j < nt && !dup; j++)
            dup = !memcmp(toks[j], toks[nt], ENG_TOKEN_LEN);
        if (!dup)
            nt++;
    }
    uint64_t v = 0, d = 0;
    if (!err)
        err = write_batch(&o, NULL, 0, (const uint8_t(*)[ENG_TOKEN_LEN])toks, nt, &d, &v);
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
