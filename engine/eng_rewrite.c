/*
 * Rewrites of a whole index or of its clusters: training (sample, k-means,
 * redistribute) and compaction. Both gather the live items and place them
 * into fresh segments.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cdx_log.h"
#include "cdx_time.h"
#include "eng_commit.h"
#include "eng_dist.h"
#include "eng_head.h"
#include "eng_idmap.h"
#include "eng_int.h"
#include "eng_kmeans.h"
#include "eng_maint.h"
#include "eng_op.h"
#include "eng_read.h"
#include "eng_segment.h"
#include "eng_sq8.h"
#include "eng_store.h"

typedef struct gathered {
    size_t n;
    eng_row *rows;
    eng_ident **idents;
    /* blocks kept alive while rows point into them */
    size_t nseg;
    const eng_segref **refs;
    eng_search **search;
    eng_buf *vec, *meta;
    eng_meta_view *mview; /* indexes of meta[] */
    float *norm;          /* normalised copies (cosine) */
} gathered;

static void gathered_free(gathered *g)
{
    for (size_t i = 0; i < g->nseg; i++) {
        if (g->search)
            eng_search_release(g->search[i]);
        if (g->vec)
            eng_buf_free(&g->vec[i]);
        if (g->meta)
            eng_buf_free(&g->meta[i]);
        if (g->mview)
            eng_meta_view_free(&g->mview[i]);
    }
    free(g->search);
    free(g->vec);
    free(g->meta);
    free(g->mview);
    free(g->refs);
    free(g->rows);
    free(g->idents);
    free(g->norm);
    memset(g, 0, sizeof(*g));
}

/* One attempt of a rewrite (train or compact): what it read and what it built. */
typedef struct attempt_state {
    eng_manifest *m;  /* the head it started from */
    eng_manifest *nm; /* the manifest it commits */
    eng_bucketset bs;
    gathered g;
    eng_seg_out *segs;
    size_t nsegs;
    uint32_t *assign; /* g.rows[i] goes to cluster assign[i] */
    bool committed;
} attempt_state;

static void attempt_free(attempt_state *a)
{
    eng_manifest_unref(a->m);
    eng_manifest_unref(a->nm);
    gathered_free(&a->g);
    eng_bucketset_free(&a->bs);
    eng_segs_free(a->segs, a->nsegs);
    free(a->assign);
    memset(a, 0, sizeof(*a));
}

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (const void *const *)a, y = (uintptr_t) * (const void *const *)b;
    return x < y ? -1 : x > y;
}

/*
 * Every live item (per the id map, all buckets loaded into bs) whose cluster
 * is selected (sel NULL = all), with its vector, metadata and identity.
 */
static cdx_err gather(op *o, const eng_manifest *m, eng_bucketset *bs, const bool *sel, gathered *g)
{
    cdx_err err = CDX_OK;
    memset(g, 0, sizeof(*g));
    size_t total = 0;
    for (unsigned b = 0; b < ENG_BUCKETS; b++)
        total += bs->b[b] ? bs->b[b]->n : 0;
    g->rows = calloc(total + 1, sizeof(*g->rows));
    g->idents = calloc(total + 1, sizeof(*g->idents));
    g->refs = calloc(total + 1, sizeof(*g->refs));
    if (!g->rows || !g->idents || !g->refs)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    size_t *segof = calloc(total + 1, sizeof(size_t));
    if (!segof)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    for (unsigned b = 0; b < ENG_BUCKETS; b++) {
        for (uint32_t i = 0; bs->b[b] && i < bs->b[b]->n; i++) {
            eng_ident *id = &bs->b[b]->e[i];
            if (sel && (id->cluster >= eng_manifest_nclusters(m) || !sel[id->cluster]))
                continue;
            const eng_segref *sr = eng_find_seg(m, id->cluster, id->seg);
            if (!sr) {
                free(segof);
                return cdx_fail(CDX_ERR_INTEGRITY, "the id map names a segment the manifest "
                                                   "does not list");
            }
            g->refs[g->n] = sr; /* per item for now; made unique below */
            g->idents[g->n++] = id;
        }
    }
    /* Unique segments, and each item's index among them: sort, dedupe, binary search. */
    const eng_segref **byitem = malloc((g->n + 1) * sizeof(*byitem));
    if (!byitem) {
        free(segof);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    memcpy(byitem, g->refs, g->n * sizeof(*byitem));
    qsort(g->refs, g->n, sizeof(*g->refs), cmp_ptr);
    for (size_t i = 0; i < g->n; i++)
        if (g->nseg == 0 || g->refs[g->nseg - 1] != g->refs[i])
            g->refs[g->nseg++] = g->refs[i];
    for (size_t i = 0; i < g->n; i++) {
        const eng_segref **hit = bsearch(&byitem[i], g->refs, g->nseg, sizeof(*g->refs), cmp_ptr);
        segof[i] = (size_t)(hit - g->refs);
    }
    free(byitem);
    g->search = calloc(g->nseg + 1, sizeof(*g->search));
    g->vec = calloc(g->nseg + 1, sizeof(*g->vec));
    g->meta = calloc(g->nseg + 1, sizeof(*g->meta));
    if (!g->search || !g->vec || !g->meta) {
        free(segof);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    bool mis = false, mis2 = false, mis3 = false;
    if ((err = eng_fetch_search(o, m, g->refs, g->nseg, g->search, &mis)) ||
        (!eng_originals_in_search(m) &&
         (err = eng_fetch_blocks(o, g->refs, g->nseg, ENG_K_VECTORS, g->vec, &mis2))) ||
        (err = eng_fetch_blocks(o, g->refs, g->nseg, ENG_K_META, g->meta, &mis3))) {
        free(segof);
        return err;
    }
    if (mis || mis2 || mis3) {
        free(segof);
        return cdx_fail(CDX_ERR_INTEGRITY, "a segment the manifest lists is missing");
    }
    g->mview = calloc(g->nseg + 1, sizeof(*g->mview));
    for (size_t i = 0; g->mview && i < g->nseg; i++)
        if (!eng_meta_view_build(&g->meta[i], &g->mview[i])) {
            free(segof);
            return cdx_fail(CDX_ERR_INTEGRITY, "metadata block is malformed");
        }
    if (!g->mview) {
        free(segof);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    size_t d = m->dim;
    bool cosine = m->metric == ENG_METRIC_COSINE;
    /* Originals: the vector block holds them as written; flat non-cosine search codes too. */
    g->norm = malloc((cosine || !eng_originals_in_search(m) ? g->n : 0) * d * sizeof(float) + 1);
    if (!g->norm) {
        free(segof);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    for (size_t i = 0; i < g->n && !err; i++) {
        eng_ident *id = g->idents[i];
        size_t s = segof[i];
        eng_row *r = &g->rows[i];
        if (id->row >= g->search[s]->rows) {
            err = cdx_fail(CDX_ERR_INTEGRITY, "the id map names a row past its segment");
            break;
        }
        if (eng_originals_in_search(m))
            r->orig = (const float *)(const void *)(g->search[s]->codes +
                                                    (size_t)id->row * g->search[s]->code_size);
        else if (g->vec[s].len == (size_t)g->search[s]->rows * d * sizeof(float))
            r->orig = (const float *)(const void *)(g->vec[s].data + (size_t)id->row * d * 4);
        else {
            err = cdx_fail(CDX_ERR_INTEGRITY, "vector block is malformed");
            break;
        }
        r->search = r->orig;
        if (cosine) {
            float *nv = g->norm + i * d;
            memcpy(nv, r->orig, d * sizeof(float));
            eng_normalize(nv, d);
            r->search = nv;
        }
        const uint8_t *mp;
        size_t ml;
        if (!eng_meta_view_row(&g->mview[s], id->row, &mp, &ml)) {
            err = cdx_fail(CDX_ERR_INTEGRITY, "metadata block is malformed");
            break;
        }
        r->meta = ml ? (const char *)mp : NULL;
        r->meta_len = (uint32_t)ml;
        r->id = id->id;
        r->id_len = id->id_len;
        memcpy(r->tok, id->tok, ENG_TOKEN_LEN);
        memcpy(r->content, id->content, ENG_TOKEN_LEN);
        r->content_len = id->content_len;
        r->commit_version = id->commit_version;
        r->cluster = id->cluster;
    }
    free(segof);
    return err;
}

/* Place gathered rows into one new segment per cluster; idents follow. */
static cdx_err place(op *o, const eng_manifest *fmt, uint64_t version, gathered *g,
                     const uint32_t *assign, uint32_t ncl, eng_bucketset *bs,
                     eng_seg_out **segs_out, size_t *nsegs_out)
{
    cdx_err err = CDX_OK;
    size_t *cnt = calloc(ncl + 1, sizeof(size_t));
    eng_row **order = malloc((g->n + 1) * sizeof(*order));
    eng_seg_out *segs = calloc(ncl + 1, sizeof(*segs));
    size_t nsegs = 0;
    if (!cnt || !order || !segs) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < g->n; i++)
        cnt[assign[i]]++;
    size_t *pos = calloc(ncl + 1, sizeof(size_t));
    if (!pos) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (uint32_t c = 1; c <= ncl; c++)
        pos[c] = pos[c - 1] + cnt[c - 1];
    for (size_t i = 0; i < g->n; i++) {
        g->rows[i].cluster = assign[i];
        order[pos[assign[i]]++] = &g->rows[i];
    }
    size_t at = 0;
    for (uint32_t c = 0; c < ncl && !err; c++) {
        if (!cnt[c])
            continue;
        err = eng_segment_build(o, fmt, version, c, order + at, (uint32_t)cnt[c], NULL, 0,
                                &segs[nsegs]);
        nsegs++;
        at += cnt[c];
    }
    free(pos);
    if (err || (err = eng_segments_put(o, segs, nsegs)))
        goto out;
    for (size_t i = 0; i < g->n; i++) {
        eng_ident *id = g->idents[i];
        id->cluster = g->rows[i].cluster;
        memcpy(id->seg, g->rows[i].seg, ENG_TOKEN_LEN);
        id->row = g->rows[i].row;
        bs->dirty[eng_bucket_of(id->tok)] = true;
    }
out:
    free(cnt);
    free(order);
    if (err) {
        eng_segs_free(segs, nsegs);
        return err;
    }
    *segs_out = segs;
    *nsegs_out = nsegs;
    return CDX_OK;
}

static cdx_err put_centroids(op *o, eng_manifest *nm, uint64_t version)
{
    eng_buf pt, rec;
    eng_buf_init(&pt);
    eng_buf_init(&rec);
    cdx_err err = eng_random(nm->centroids_token, ENG_TOKEN_LEN);
    if (err)
        return err;
    eng_centroids_encode(nm, &pt);
    if (!eng_buf_ok(&pt) ||
        (err = eng_op_seal(o, HSM_P_MANIFEST, ENG_K_CENTROIDS, nm->centroids_token, version,
                           pt.data, pt.len, &rec)))
        goto out;
    char key[CDX_STORE_KEY_MAX];
    eng_key_rec(key, o->ix->id, ENG_KEY_CENTROIDS, nm->centroids_token);
    eng_kv kv = {key, rec.data, rec.len};
    bool created = false;
    if ((err = eng_store_setnx(o->e->cfg.store, &kv, 1, &created)))
        goto out;
    nm->centroids_version = version;
    nm->centroids_len = (uint32_t)rec.len;
out:
    eng_buf_free(&pt);
    eng_buf_free(&rec);
    return err;
}

/* Fisher-Yates prefix with splitmix64: a deterministic sample of k of n. */
static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* A trained model, kept across rebases (a retry redistributes with the same one). */
typedef struct model {
    bool have;
    uint32_t k;
    float *centroids; /* k x dim */
    float *sample;    /* what it was trained on */
    eng_sq8 sq;       /* both types: IVFSQ8 stores these codes, IVFFlat screens with them */
} model;

/*
 * Step 1, sample: the caller's sample (checked, normalised for cosine), or
 * a deterministic sample of ns of the gathered items (Fisher-Yates prefix).
 */
static cdx_err train_sample(const struct idx *ix, const eng_train_opts *opts, const gathered *g,
                            size_t ns, uint64_t seed, float *sample)
{
    size_t d = ix->cat.dim;
    size_t *perm = malloc((g->n + 1) * sizeof(size_t));
    if (!perm)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    for (size_t i = 0; i < g->n; i++)
        perm[i] = i;
    uint64_t st = seed;
    for (size_t i = 0; opts->sample && i < ns; i++) {
        memcpy(sample + i * d, opts->sample + i * d, d * sizeof(float));
        if (!eng_finite_vec(sample + i * d, d)) {
            free(perm);
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "training sample has NaN or Inf");
        }
        if (ix->cat.metric == ENG_METRIC_COSINE)
            eng_normalize(sample + i * d, d);
    }
    for (size_t i = 0; !opts->sample && i < ns; i++) {
        size_t j = i + (size_t)(splitmix(&st) % (g->n - i));
        size_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
        memcpy(sample + i * d, g->rows[perm[i]].search, d * sizeof(float));
    }
    free(perm);
    return CDX_OK;
}

/* Step 2, k-means: choose k and the sample size, sample, train centroids and the quantiser. */
static cdx_err train_model(const char *name, const struct idx *ix, const eng_train_opts *opts,
                           const eng_manifest *m, const gathered *g, model *md)
{
    size_t d = ix->cat.dim;
    size_t avail = opts->sample ? opts->sample_n : g->n;
    uint32_t k = opts->n_lists ? opts->n_lists : m->n_lists;
    cdx_err err;
    if (!k)
        k = (uint32_t)fmax(1.0, floor(sqrt((double)avail)));
    md->k = k;
    if (avail < k)
        return cdx_fail(CDX_ERR_FAILED_PRECONDITION,
                        "index %s has %zu items; training %u lists needs at least as many", name,
                        g->n, k);
    uint32_t per =
        opts->max_points_per_list ? opts->max_points_per_list : CDX_TRAIN_POINTS_PER_LIST;
    size_t ns = (size_t)per * k < avail ? (size_t)per * k : avail;
    if (opts->sample) {
        /* The caller's sample, all of it (normalised for cosine, like the items). */
        ns = opts->sample_n;
        per = (uint32_t)((ns + k - 1) / k);
    }
    uint64_t seed = opts->seed ? opts->seed : 1234;
    md->sample = malloc(ns * d * sizeof(float));
    md->centroids = malloc((size_t)k * d * sizeof(float));
    if (!md->sample || !md->centroids)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    if ((err = train_sample(ix, opts, g, ns, seed, md->sample)))
        return err;
    eng_kmeans_opts ko = {
        .k = k,
        .max_iters = opts->max_iters ? opts->max_iters : CDX_TRAIN_ITERS_DEFAULT,
        .tolerance = opts->tolerance > 0 ? opts->tolerance : 1e-4f,
        .seed = seed,
        .max_points_per_centroid = per,
        .metric =
            ix->cat.metric == ENG_METRIC_EUCLIDEAN || ix->cat.metric == ENG_METRIC_SQUARED_EUCLIDEAN
                ? ENG_KM_L2
                : ENG_KM_IP,
        .spherical = ix->cat.metric == ENG_METRIC_COSINE,
    };
    eng_kmeans_stats ks;
    if ((err = eng_kmeans_train(md->sample, ns, d, &ko, md->centroids, &ks)))
        return err;
    if ((err = eng_sq8_train(md->sample, ns, d, &md->sq)))
        return err;
    md->have = true;
    cdx_log(CDX_LOG_INFO, "eng_trained", "lists=%u sample=%zu iters=%u", k, ns,
            (unsigned)ks.iterations);
    return CDX_OK;
}

/* The manifest of the new model: m's, with md's centroids and quantiser and no segments. */
static cdx_err trained_manifest(const eng_manifest *m, const model *md, size_t d,
                                eng_manifest **out)
{
    uint32_t k = md->k;
    eng_manifest *nm;
    cdx_err err = eng_manifest_clone_ref(m, &nm);
    if (err)
        return err;
    *out = nm;
    for (uint32_t c = 0; c < eng_manifest_nclusters(m); c++)
        free(nm->clusters[c].seg);
    free(nm->clusters);
    free(nm->centroids);
    free(nm->sq_vmin);
    free(nm->sq_step);
    nm->sq_vmin = nm->sq_step = NULL;
    nm->n_clusters = k;
    nm->train_gen = m->train_gen + 1;
    nm->clusters = calloc(k, sizeof(*nm->clusters));
    nm->centroids = malloc((size_t)k * d * sizeof(float));
    if (!nm->clusters || !nm->centroids)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    memcpy(nm->centroids, md->centroids, (size_t)k * d * sizeof(float));
    if (md->sq.vmin) {
        nm->sq_vmin = malloc(d * sizeof(float));
        nm->sq_step = malloc(d * sizeof(float));
        if (!nm->sq_vmin || !nm->sq_step)
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        memcpy(nm->sq_vmin, md->sq.vmin, d * sizeof(float));
        memcpy(nm->sq_step, md->sq.step, d * sizeof(float));
    }
    return eng_manifest_probe_build(nm);
}

/*
 * Step 3, redistribute: store the centroids and place every gathered item
 * into the new clusters at version v. The old segments are simply no longer
 * listed; the sweep deletes them a grace after (eng_maint.h).
 */
static cdx_err redistribute(op *o, eng_manifest *nm, uint64_t v, gathered *g, eng_bucketset *bs,
                            uint32_t **assign, eng_seg_out **segs, size_t *nsegs)
{
    size_t d = o->ix->cat.dim;
    cdx_err err = put_centroids(o, nm, v);
    if (err)
        return err;
    *assign = malloc((g->n + 1) * sizeof(uint32_t));
    float *sv = malloc((g->n + 1) * d * sizeof(float));
    if (!*assign || !sv) {
        free(sv);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    for (size_t i = 0; i < g->n; i++)
        memcpy(sv + i * d, g->rows[i].search, d * sizeof(float));
    err = eng_assign_clusters(nm, sv, g->n, *assign);
    free(sv);
    if (err || (err = place(o, nm, v, g, *assign, nm->n_clusters, bs, segs, nsegs)))
        return err;
    for (size_t s = 0; s < *nsegs && !err; s++)
        err = eng_cluster_push(&nm->clusters[(*segs)[s].cluster], &(*segs)[s].ref);
    return err;
}

cdx_err eng_train(eng *e, const char *name, const eng_train_opts *opts, uint64_t *version)
{
    struct idx *ix;
    cdx_err err = eng_idx_get(e, name, &ix);
    if (err)
        return err;
    eng_train_opts def = {0};
    if (!opts)
        opts = &def;
    if (opts->n_lists > CDX_NLISTS_MAX || opts->max_iters > CDX_TRAIN_ITERS_MAX)
        return eng_idx_drop(ix, cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                                         "n_lists at most %d, max_iters at most %d", CDX_NLISTS_MAX,
                                         CDX_TRAIN_ITERS_MAX));
    op o;
    eng_op_index(e, ix, &o);
    model md;
    memset(&md, 0, sizeof(md));
    for (unsigned attempt = 0; attempt < e->cfg.commit_retries; attempt++) {
        attempt_state a;
        memset(&a, 0, sizeof(a));
        if ((err = eng_load_state(&o, true, 0, &a.m)) ||
            (err = eng_buckets_load_all(&o, a.m, &a.bs)) ||
            (err = gather(&o, a.m, &a.bs, NULL, &a.g))) {
            if (err == ENG_MOVED)
                err = CDX_OK; /* a commit landed mid-read: start over from the new head */
            goto next;
        }
        if (!md.have && (err = train_model(name, ix, opts, a.m, &a.g, &md)))
            goto next;
        /* Redistribute (again, on a rebase) with the same model. */
        uint64_t v = a.m->version + 1;
        o.wrote_since = cdx_mono_ms(); /* this attempt's centroids and segments */
        if ((err = trained_manifest(a.m, &md, ix->cat.dim, &a.nm)) ||
            (err = redistribute(&o, a.nm, v, &a.g, &a.bs, &a.assign, &a.segs, &a.nsegs)) ||
            (err = eng_commit_rewrite(&o, a.m, a.nm, &a.bs, &a.committed)))
            goto next;
        if (a.committed && version)
            *version = v;
    next:;
        o.wrote_since = 0;
        bool committed = a.committed;
        attempt_free(&a);
        if (err || committed)
            break;
        eng_backoff(attempt);
    }
    if (!err && !md.have)
        err = cdx_fail(CDX_ERR_INTERNAL, "training produced no model");
    else if (!err && version && !*version)
        err = cdx_fail(CDX_ERR_ABORTED,
                       "index %s: training lost %u commits to concurrent "
                       "writers; retry",
                       name, e->cfg.commit_retries);
    free(md.centroids);
    free(md.sample);
    eng_sq8_free(&md.sq);
    eng_op_end(&o);
    return eng_in_index(err, name);
}

/* What compact() is asked and what it did. */
typedef struct compact_arg {
    uint32_t more_than; /* clusters with more segments than this are rewritten */
    uint64_t done;      /* the committed version (or the current one: nothing to do) */
    uint32_t clusters;  /* clusters rewritten */
} compact_arg;

/* Compaction under the frame of eng_with_op (arg: compact_arg). */
static cdx_err compact(op *o, void *arg)
{
    eng *e = o->e;
    compact_arg *ca = arg;
    cdx_err err = CDX_OK;
    uint64_t done = 0;
    uint32_t nsel = 0;
    bool gated = false;
    for (unsigned attempt = 0; attempt < e->cfg.commit_retries && !err && !done; attempt++) {
        attempt_state a;
        memset(&a, 0, sizeof(a));
        bool *sel = NULL;
        if (attempt == 1) {
            eng_gate_close(o->ix); /* lost once: hold this engine's writers back */
            gated = true;
        }
        if ((err = eng_load_state(o, true, 0, &a.m)))
            goto next;
        const eng_manifest *m = a.m;
        uint32_t nc = eng_manifest_nclusters(m);
        sel = calloc(nc, sizeof(bool));
        if (!sel) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto next;
        }
        nsel = 0;
        for (uint32_t c = 0; c < nc; c++) {
            sel[c] = m->clusters[c].nseg > ca->more_than;
            nsel += sel[c];
        }
        if (!nsel) {
            done = m->version; /* nothing to merge */
            goto next;
        }
        if ((err = eng_buckets_load_all(o, m, &a.bs)) || (err = gather(o, m, &a.bs, sel, &a.g))) {
            if (err == ENG_MOVED)
                err = CDX_OK;
            goto next;
        }
        a.assign = malloc((a.g.n + 1) * sizeof(uint32_t));
        if (!a.assign) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto next;
        }
        for (size_t i = 0; i < a.g.n; i++)
            a.assign[i] = a.g.rows[i].cluster;
        uint64_t v = m->version + 1;
        o->wrote_since = cdx_mono_ms(); /* this attempt's segments */
        if ((err = place(o, m, v, &a.g, a.assign, nc, &a.bs, &a.segs, &a.nsegs)) ||
            (err = eng_manifest_clone_ref(m, &a.nm)))
            goto next;
        eng_manifest *nm = a.nm;
        /* The old segments leave the manifest; the sweep deletes them a grace after. */
        for (uint32_t c = 0; c < nc; c++)
            if (sel[c])
                nm->clusters[c].nseg = 0;
        for (size_t s = 0; s < a.nsegs && !err; s++)
            err = eng_cluster_push(&nm->clusters[a.segs[s].cluster], &a.segs[s].ref);
        if (err || (err = eng_commit_rewrite(o, m, nm, &a.bs, &a.committed)))
            goto next;
        if (a.committed)
            done = v;
    next:
        o->wrote_since = 0;
        attempt_free(&a);
        free(sel);
        if (!err && !done)
            eng_backoff(attempt);
    }
    if (gated)
        eng_gate_open(o->ix);
    if (!err && !done)
        err = cdx_fail(CDX_ERR_ABORTED,
                       "index %s: compaction lost its commits to concurrent "
                       "writers; retry",
                       o->ix->name);
    ca->done = done;
    ca->clusters = done && nsel ? nsel : 0;
    return err;
}

cdx_err eng_compact_over(eng *e, const char *name, uint32_t more_than, uint64_t *version,
                         uint32_t *clusters)
{
    if (more_than == 0)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "compaction threshold must be at least 1");
    compact_arg ca = {.more_than = more_than};
    cdx_err err = eng_with_op(e, name, ENG_WITH_NAMED, compact, &ca);
    if (!err && version)
        *version = ca.done;
    if (!err && clusters)
        *clusters = ca.clusters;
    return err;
}

cdx_err eng_compact(eng *e, const char *name, uint64_t *version)
{
    return eng_compact_over(e, name, 1, version, NULL);
}

/*
 * Key rotation (docs/ROTATION.md): the whole index rewritten under the
 * pending epoch in one commit. Contents are re-sealed first (new random
 * tokens), then every live item is placed into fresh segments of its own
 * cluster (new salts, so new segment names under the new centroid subkey),
 * the centroids re-sealed, and the id map rebuilt from scratch under the new
 * token subkey (every bucket rewritten). Old records are then unreferenced:
 * the sweep deletes them a grace later.
 */

/* The engine is stopping, or the test hook stops the run after `step`. */
static cdx_err rotate_step(op *o, const char *step)
{
    eng *e = o->e;
    pthread_mutex_lock(&e->rot_mu);
    bool stop = e->rot_stop;
    pthread_mutex_unlock(&e->rot_mu);
    if (stop)
        return cdx_fail(CDX_ERR_CANCELLED, "the appliance is stopping; the rotation resumes "
                                           "when it restarts");
    return e->rot_hook ? e->rot_hook(e->rot_hook_arg, o->ix->name, step) : CDX_OK;
}

/*
 * Re-seal the contents of the gathered items under o's (new) epoch with
 * fresh tokens: rows[i].content gets the new token. Old records are read
 * with their own epoch's subkey (the op's spare slot).
 * Errors: ENG_MOVED (a record is gone: superseded meanwhile), the store's and custody's.
 */
static cdx_err rotate_contents(op *o, gathered *g, uint64_t *moved)
{
    enum { CHUNK = CDX_ROTATE_CHUNK };
    cdx_err err = CDX_OK;
    char(*keys)[CDX_STORE_KEY_MAX] = malloc(CHUNK * sizeof(*keys));
    const char *kp[CHUNK];
    size_t at[CHUNK];
    eng_val v[CHUNK];
    eng_buf rec[CHUNK];
    eng_kv kv[CHUNK];
    bool created[CHUNK];
    eng_buf pt;
    eng_buf_init(&pt);
    for (size_t i = 0; i < CHUNK; i++)
        eng_buf_init(&rec[i]);
    if (!keys)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    size_t i = 0;
    while (i < g->n && !err) {
        size_t n = 0;
        for (; i < g->n && n < CHUNK; i++) {
            if (!g->rows[i].content_len)
                continue;
            eng_key_rec(keys[n], o->ix->id, ENG_KEY_CONTENTS, g->rows[i].content);
            kp[n] = keys[n];
            at[n++] = i;
        }
        if (!n)
            break;
        memset(v, 0, sizeof(v));
        if ((err = eng_store_mget(o->e->cfg.store, kp, n, v)))
            break;
        for (size_t j = 0; j < n && !err; j++) {
            eng_row *r = &g->rows[at[j]];
            eng_buf_free(&pt);
            if (!v[j].found) {
                err = cdx_fail(ENG_MOVED, "contents the id map names are missing");
                break;
            }
            if ((err = eng_op_unseal(o, HSM_P_CONTENT, ENG_K_CONTENT, r->content, 0, v[j].data,
                                     v[j].len, NULL, &pt)))
                break;
            if (pt.len != r->content_len) {
                err = cdx_fail(CDX_ERR_INTEGRITY, "contents have the wrong length");
                break;
            }
            eng_buf_free(&rec[j]);
            if ((err = eng_random(r->content, ENG_TOKEN_LEN)) ||
                (err = eng_op_seal(o, HSM_P_CONTENT, ENG_K_CONTENT, r->content, 0, pt.data, pt.len,
                                   &rec[j])))
                break;
            eng_key_rec(keys[j], o->ix->id, ENG_KEY_CONTENTS, r->content);
            kv[j] = (eng_kv){keys[j], rec[j].data, rec[j].len};
        }
        eng_vals_free(v, n);
        if (!err)
            err = eng_store_setnx(o->e->cfg.store, kv, n, created);
        if (!err)
            atomic_fetch_add(&o->ix->rot_done, n);
        *moved += err ? 0 : n;
    }
    eng_buf_free(&pt);
    for (size_t j = 0; j < CHUNK; j++)
        eng_buf_free(&rec[j]);
    free(keys);
    return err;
}

/* The id map of the rotated state: every gathered item under its new token, every bucket. */
static cdx_err rotate_idmap(const gathered *g, eng_bucketset *nb)
{
    for (unsigned b = 0; b < ENG_BUCKETS; b++) {
        if (!(nb->b[b] = calloc(1, sizeof(eng_bucket))))
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        nb->dirty[b] = true;
    }
    for (size_t i = 0; i < g->n; i++) {
        eng_ident id = *g->idents[i];
        memcpy(id.tok, g->rows[i].tok, ENG_TOKEN_LEN);
        memcpy(id.content, g->rows[i].content, ENG_TOKEN_LEN);
        if (!(id.id = malloc(id.id_len + 1u)))
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        memcpy(id.id, g->idents[i]->id, id.id_len + 1u);
        cdx_err err = eng_bucket_put(nb->b[eng_bucket_of(id.tok)], &id);
        if (err) {
            free(id.id);
            return err;
        }
    }
    return CDX_OK;
}

/* One attempt: *done when committed or nothing is pending (then r->to = 0 if never was). */
static cdx_err rotate_attempt(op *o, eng_rotate_report *r, bool *done)
{
    attempt_state a;
    memset(&a, 0, sizeof(a));
    eng_bucketset nb;
    memset(&nb, 0, sizeof(nb));
    struct idx *ix = o->ix;
    cdx_err err;
    /* The keys as the catalog has them now: a --new-key rotation seals the new epoch under
     * the pending key (eng_op_set_epoch picks it). */
    if ((err = eng_op_keys_refresh(o)) || (err = eng_load_state(o, true, 0, &a.m)))
        goto out;
    const eng_manifest *m = a.m;
    if (!m->rot_target) {
        *done = true; /* nothing pending, or another run (appliance) completed it */
        goto out;
    }
    r->from = m->epoch;
    r->to = m->rot_target;
    atomic_store(&ix->rot_done, 0);
    atomic_store(&ix->rot_total, m->count);
    if ((err = eng_buckets_load_all(o, m, &a.bs)) || (err = gather(o, m, &a.bs, NULL, &a.g)) ||
        (err = rotate_step(o, "gathered")))
        goto out;
    uint64_t with_contents = 0;
    for (size_t i = 0; i < a.g.n; i++)
        with_contents += a.g.rows[i].content_len > 0;
    atomic_store(&ix->rot_total, a.g.n + with_contents); /* records to re-encrypt */
    uint64_t v = m->version + 1;
    /* From here on everything is sealed under the new epoch. */
    eng_op_set_epoch(o, r->to);
    o->wrote_since = cdx_mono_ms(); /* this attempt's contents, centroids, segments, buckets */
    if ((err = eng_manifest_clone_ref(m, &a.nm)))
        goto out;
    eng_manifest *nm = a.nm;
    nm->epoch = r->to;
    nm->min_epoch = r->to; /* the old epoch's records are refused from now on */
    nm->rot_target = 0;
    nm->rot_started_ms = 0;
    nm->rotated_ms = cdx_wall_ms();
    uint32_t nc = eng_manifest_nclusters(m);
    for (uint32_t c = 0; c < nc; c++)
        nm->clusters[c].nseg = 0;
    for (size_t i = 0; i < a.g.n && !err; i++)
        err = eng_id_token_w(o, a.g.rows[i].id, a.g.rows[i].id_len, a.g.rows[i].tok);
    uint64_t contents = 0;
    if (err || (err = rotate_contents(o, &a.g, &contents)) ||
        (m->centroids_version && (err = put_centroids(o, nm, v))))
        goto out;
    if (!(a.assign = malloc((a.g.n + 1) * sizeof(uint32_t)))) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < a.g.n; i++)
        a.assign[i] = a.g.rows[i].cluster;
    if ((err = place(o, nm, v, &a.g, a.assign, nc, &a.bs, &a.segs, &a.nsegs)))
        goto out;
    for (size_t s = 0; s < a.nsegs && !err; s++)
        err = eng_cluster_push(&nm->clusters[a.segs[s].cluster], &a.segs[s].ref);
    atomic_fetch_add(&ix->rot_done, a.g.n);
    if (err || (err = rotate_idmap(&a.g, &nb)) || (err = rotate_step(o, "sealed")) ||
        (err = rotate_step(o, "committing")))
        goto out;
    /* The key this attempt sealed under must still be the one the catalog names for the new
     * epoch (a --new-key asked meanwhile on another appliance): else start over. */
    uint32_t sealed_gen = o->key.gen;
    uint8_t sealed_kcv[CDX_KCV_LEN];
    memcpy(sealed_kcv, o->kcv, CDX_KCV_LEN);
    if ((err = eng_op_keys_refresh(o)))
        goto out;
    if (sealed_gen != o->key.gen || memcmp(sealed_kcv, o->kcv, CDX_KCV_LEN)) {
        err = ENG_MOVED;
        goto out;
    }
    if ((err = eng_commit_rewrite(o, m, nm, &nb, &a.committed)))
        goto out;
    if (a.committed) {
        *done = true;
        r->items = a.g.n;
        r->contents = contents;
        r->version = v;
    }
out:
    o->wrote_since = 0;
    eng_bucketset_free(&nb);
    attempt_free(&a);
    return err;
}

/* The rotation run under the frame of eng_with_op (arg: eng_rotate_report). */
static cdx_err rotate_run(op *o, void *arg)
{
    eng *e = o->e;
    eng_rotate_report *r = arg;
    cdx_err err = CDX_OK;
    bool done = false, gated = false;
    uint64_t t0 = cdx_mono_ms();
    pthread_mutex_lock(&o->ix->rot_mu);
    for (unsigned attempt = 0; attempt < e->cfg.commit_retries && !err && !done; attempt++) {
        if (attempt == 1) {
            eng_gate_close(o->ix); /* lost once: hold this engine's writers back */
            gated = true;
        }
        r->attempts = attempt + 1;
        err = rotate_attempt(o, r, &done);
        if (err == ENG_MOVED)
            err = CDX_OK; /* a commit landed mid-read: start over from the new head */
        if (!err && !done)
            eng_backoff(attempt);
    }
    if (gated)
        eng_gate_open(o->ix);
    /* --new-key: the catalog moves to the new key and the old one goes (also when another
     * appliance committed the rotation, or a run stopped after its commit). */
    if (!err && done && r->version)
        err = rotate_step(o, "committed");
    if (!err && done)
        err = eng_rotate_finish(o);
    pthread_mutex_unlock(&o->ix->rot_mu);
    r->ms = cdx_mono_ms() - t0;
    if (!err && !done)
        err = cdx_fail(CDX_ERR_ABORTED,
                       "index %s: the key rotation lost %u commits to concurrent writers; it "
                       "stays pending and is retried",
                       o->ix->name, e->cfg.commit_retries);
    if (err) {
        atomic_fetch_add(&e->rotation_failures, 1);
    } else if (r->version) {
        atomic_fetch_add(&e->rotations, 1);
        cdx_log(CDX_LOG_INFO, "eng_rotated",
                "from_epoch=%u to_epoch=%u items=%llu contents=%llu version=%llu attempts=%u "
                "ms=%llu",
                r->from, r->to, (unsigned long long)r->items, (unsigned long long)r->contents,
                (unsigned long long)r->version, r->attempts, (unsigned long long)r->ms);
    }
    return err;
}

cdx_err eng_rotate_run(eng *e, const char *name, eng_rotate_report *out)
{
    eng_rotate_report r;
    memset(&r, 0, sizeof(r));
    cdx_err err = eng_with_op(e, name, ENG_WITH_NAMED, rotate_run, &r);
    if (!err && !r.version)
        r.to = 0; /* nothing was pending when the run looked */
    if (out)
        *out = r;
    return err;
}
