/* Manifest bodies (immutable). */
#include <stdlib.h>
#include <string.h>

#include <math.h>
#include "eng_manifest.h"

uint32_t eng_manifest_nclusters(const eng_manifest *m)
{
    return m->n_clusters ? m->n_clusters : 1;
}

void eng_manifest_free(eng_manifest *m)
{
    if (!m)
        return;
    if (m->clusters) {
        for (uint32_t i = 0; i < eng_manifest_nclusters(m); i++)
            free(m->clusters[i].seg);
        free(m->clusters);
    }
    free(m->retired);
    free(m->centroids);
    free(m->sq_vmin);
    free(m->sq_step);
    eng_probe_free(m->probe);
    free(m);
}

cdx_err eng_cluster_push(eng_cluster *c, const eng_segref *s)
{
    if (c->nseg == c->capseg) {
        uint32_t cap = c->capseg ? c->capseg * 2 : 4;
        eng_segref *p = realloc(c->seg, cap * sizeof(*p));
        if (!p)
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        c->seg = p;
        c->capseg = cap;
    }
    c->seg[c->nseg++] = *s;
    return CDX_OK;
}

cdx_err eng_retire(eng_manifest *m, const uint8_t token[ENG_TOKEN_LEN], uint64_t when)
{
    if (m->nretired == m->capretired) {
        uint32_t cap = m->capretired ? m->capretired * 2 : 16;
        eng_retired *p = realloc(m->retired, cap * sizeof(*p));
        if (!p)
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        m->retired = p;
        m->capretired = cap;
    }
    memcpy(m->retired[m->nretired].token, token, ENG_TOKEN_LEN);
    m->retired[m->nretired].retire_ms = when;
    m->nretired++;
    return CDX_OK;
}

cdx_err eng_manifest_clone(const eng_manifest *src, eng_manifest **out)
{
    eng_manifest *m = calloc(1, sizeof(*m));
    if (!m)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    *m = *src;
    m->clusters = NULL;
    m->retired = NULL;
    m->centroids = NULL;
    m->sq_vmin = m->sq_step = NULL;
    m->probe = eng_probe_ref(src->probe);
    m->nretired = m->capretired = 0;
    uint32_t nc = eng_manifest_nclusters(src);
    m->clusters = calloc(nc, sizeof(*m->clusters));
    if (!m->clusters)
        goto oom;
    for (uint32_t i = 0; i < nc; i++)
        for (uint32_t j = 0; j < src->clusters[i].nseg; j++)
            if (eng_cluster_push(&m->clusters[i], &src->clusters[i].seg[j]))
                goto oom;
    for (uint32_t i = 0; i < src->nretired; i++)
        if (eng_retire(m, src->retired[i].token, src->retired[i].retire_ms))
            goto oom;
    size_t d = src->dim;
    if (src->centroids) {
        m->centroids = malloc((size_t)src->n_clusters * d * sizeof(float));
        if (!m->centroids)
            goto oom;
        memcpy(m->centroids, src->centroids, (size_t)src->n_clusters * d * sizeof(float));
    }
    if (src->sq_vmin) {
        m->sq_vmin = malloc(d * sizeof(float));
        m->sq_step = malloc(d * sizeof(float));
        if (!m->sq_vmin || !m->sq_step)
            goto oom;
        memcpy(m->sq_vmin, src->sq_vmin, d * sizeof(float));
        memcpy(m->sq_step, src->sq_step, d * sizeof(float));
    }
    *out = m;
    return CDX_OK;
oom:
    eng_manifest_free(m);
    return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
}

void eng_manifest_encode(const eng_manifest *m, eng_buf *b)
{
    /* Sized once: manifests run to megabytes, and every commit writes one. */
    uint32_t nc = eng_manifest_nclusters(m);
    bool ep = m->min_epoch || m->rot_target || m->rot_started_ms || m->rotated_ms;
    size_t size = 2103 + 4 + 24 * (size_t)m->nretired + (ep ? 24 : 0);
    for (uint32_t i = 0; i < nc; i++)
        size += 4 + 56 * (size_t)m->clusters[i].nseg;
    eng_buf_grow(b, size);
    eng_buf_u8(b, ep ? ENG_MANIFEST_FMT_EPOCH : ENG_MANIFEST_FMT);
    eng_buf_u32(b, m->dim);
    eng_buf_u8(b, m->metric);
    eng_buf_u8(b, m->type);
    eng_buf_u32(b, m->n_lists);
    eng_buf_u32(b, m->n_clusters);
    eng_buf_u32(b, m->train_gen);
    eng_buf_u64(b, m->centroids_version);
    eng_buf_put(b, m->centroids_token, ENG_TOKEN_LEN);
    eng_buf_u32(b, m->centroids_len);
    eng_buf_u64(b, m->count);
    for (unsigned i = 0; i < ENG_BUCKETS; i++)
        eng_buf_u64(b, m->bucket_version[i]);
    for (uint32_t i = 0; i < nc; i++) {
        const eng_cluster *c = &m->clusters[i];
        eng_buf_u32(b, c->nseg);
        for (uint32_t j = 0; j < c->nseg; j++) {
            const eng_segref *s = &c->seg[j];
            eng_buf_put(b, s->token, ENG_TOKEN_LEN);
            eng_buf_put(b, s->salt, ENG_SALT_LEN);
            eng_buf_u64(b, s->version);
            eng_buf_u32(b, s->rows);
            eng_buf_u32(b, s->search_len);
            eng_buf_u32(b, s->vectors_len);
            eng_buf_u32(b, s->meta_len);
        }
    }
    eng_buf_u32(b, m->nretired);
    for (uint32_t i = 0; i < m->nretired; i++) {
        eng_buf_put(b, m->retired[i].token, ENG_TOKEN_LEN);
        eng_buf_u64(b, m->retired[i].retire_ms);
    }
    if (ep) {
        eng_buf_u32(b, m->min_epoch);
        eng_buf_u32(b, m->rot_target);
        eng_buf_u64(b, m->rot_started_ms);
        eng_buf_u64(b, m->rotated_ms);
    }
}

cdx_err eng_manifest_decode(const uint8_t *p, size_t n, eng_manifest **out)
{
    eng_rd r;
    eng_rd_init(&r, p, n);
    eng_manifest *m = calloc(1, sizeof(*m));
    if (!m)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    uint8_t fmt = eng_rd_u8(&r);
    m->dim = eng_rd_u32(&r);
    m->metric = eng_rd_u8(&r);
    m->type = eng_rd_u8(&r);
    m->n_lists = eng_rd_u32(&r);
    m->n_clusters = eng_rd_u32(&r);
    m->train_gen = eng_rd_u32(&r);
    m->centroids_version = eng_rd_u64(&r);
    eng_rd_copy(&r, m->centroids_token, ENG_TOKEN_LEN);
    m->centroids_len = eng_rd_u32(&r);
    m->count = eng_rd_u64(&r);
    for (unsigned i = 0; i < ENG_BUCKETS; i++)
        m->bucket_version[i] = eng_rd_u64(&r);
    if (r.bad || (fmt != ENG_MANIFEST_FMT && fmt != ENG_MANIFEST_FMT_EPOCH) || m->dim == 0 ||
        m->dim > CDX_DIM_MAX || m->n_clusters > CDX_NLISTS_MAX)
        goto bad;
    uint32_t nc = eng_manifest_nclusters(m);
    m->clusters = calloc(nc, sizeof(*m->clusters));
    if (!m->clusters)
        goto oom;
    for (uint32_t i = 0; i < nc; i++) {
        uint32_t ns = eng_rd_u32(&r);
        /* Each segment entry is 56 bytes: a count beyond what is left is a lie. */
        if (r.bad || ns > r.left / 56)
            goto bad;
        for (uint32_t j = 0; j < ns; j++) {
            eng_segref s;
            eng_rd_copy(&r, s.token, ENG_TOKEN_LEN);
            eng_rd_copy(&r, s.salt, ENG_SALT_LEN);
            s.version = eng_rd_u64(&r);
            s.rows = eng_rd_u32(&r);
            s.search_len = eng_rd_u32(&r);
            s.vectors_len = eng_rd_u32(&r);
            s.meta_len = eng_rd_u32(&r);
            if (eng_cluster_push(&m->clusters[i], &s))
                goto oom;
        }
    }
    uint32_t nr = eng_rd_u32(&r);
    if (r.bad || nr > r.left / 24)
        goto bad;
    for (uint32_t i = 0; i < nr; i++) {
        uint8_t t[ENG_TOKEN_LEN];
        eng_rd_copy(&r, t, ENG_TOKEN_LEN);
        uint64_t when = eng_rd_u64(&r);
        if (eng_retire(m, t, when))
            goto oom;
    }
    if (fmt == ENG_MANIFEST_FMT_EPOCH) {
        m->min_epoch = eng_rd_u32(&r);
        m->rot_target = eng_rd_u32(&r);
        m->rot_started_ms = eng_rd_u64(&r);
        m->rotated_ms = eng_rd_u64(&r);
        if (m->rot_target && m->rot_target <= m->min_epoch)
            goto bad;
    }
    if (!eng_rd_done(&r))
        goto bad;
    *out = m;
    return CDX_OK;
bad:
    eng_manifest_free(m);
    return cdx_fail(CDX_ERR_INTEGRITY, "manifest body is malformed");
oom:
    eng_manifest_free(m);
    return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
}
eng_manifest *eng_manifest_ref(eng_manifest *m)
{
    if (m)
        atomic_fetch_add(&m->refs, 1);
    return m;
}

void eng_manifest_unref(eng_manifest *m)
{
    if (m && atomic_fetch_sub(&m->refs, 1) == 1)
        eng_manifest_free(m);
}
cdx_err eng_manifest_probe_build(eng_manifest *m)
{
    eng_probe_free(m->probe);
    m->probe = NULL;
    if (!m->n_clusters || !m->centroids)
        return CDX_OK;
    return eng_probe_new(m->centroids, m->n_clusters, m->dim, eng_km_of(m), &m->probe);
}

void eng_centroids_encode(const eng_manifest *m, eng_buf *b)
{
    eng_buf_u32(b, m->n_clusters);
    eng_buf_u32(b, m->dim);
    eng_buf_put(b, m->centroids, (size_t)m->n_clusters * m->dim * sizeof(float));
    eng_buf_u8(b, m->sq_vmin ? 1 : 0);
    if (m->sq_vmin) {
        eng_buf_put(b, m->sq_vmin, m->dim * sizeof(float));
        eng_buf_put(b, m->sq_step, m->dim * sizeof(float));
    }
}

cdx_err eng_centroids_decode(eng_manifest *m, const uint8_t *p, size_t n)
{
    eng_rd r;
    eng_rd_init(&r, p, n);
    uint32_t k = eng_rd_u32(&r), d = eng_rd_u32(&r);
    if (r.bad || k != m->n_clusters || d != m->dim)
        return cdx_fail(CDX_ERR_INTEGRITY, "centroids do not match the manifest");
    size_t cb = (size_t)k * d * sizeof(float);
    const uint8_t *c = eng_rd_ptr(&r, cb);
    uint8_t has = eng_rd_u8(&r);
    const uint8_t *vmin = has ? eng_rd_ptr(&r, d * sizeof(float)) : NULL;
    const uint8_t *step = has ? eng_rd_ptr(&r, d * sizeof(float)) : NULL;
    if (!eng_rd_done(&r) || !has)
        return cdx_fail(CDX_ERR_INTEGRITY, "centroids record is malformed");
    m->centroids = malloc(cb ? cb : 1);
    if (!m->centroids)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    memcpy(m->centroids, c, cb);
    for (size_t i = 0; i < (size_t)k * d; i++)
        if (!isfinite(m->centroids[i]))
            return cdx_fail(CDX_ERR_INTEGRITY, "centroids record holds a non-finite value");
    if (has) {
        m->sq_vmin = malloc(d * sizeof(float));
        m->sq_step = malloc(d * sizeof(float));
        if (!m->sq_vmin || !m->sq_step)
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        memcpy(m->sq_vmin, vmin, d * sizeof(float));
        memcpy(m->sq_step, step, d * sizeof(float));
        for (uint32_t i = 0; i < d; i++)
            if (!isfinite(m->sq_vmin[i]) || !isfinite(m->sq_step[i]) || m->sq_step[i] < 0)
                return cdx_fail(CDX_ERR_INTEGRITY, "centroids record holds a bad quantiser");
    }
    return eng_manifest_probe_build(m);
}
cdx_err eng_manifest_clone_ref(const eng_manifest *m, eng_manifest **out)
{
    cdx_err err = eng_manifest_clone(m, out);
    if (!err)
        atomic_init(&(*out)->refs, 1);
    return err;
}

cdx_err eng_assign_clusters(const eng_manifest *m, const float *x, size_t n, uint32_t *out)
{
    if (!m->n_clusters) {
        memset(out, 0, n * sizeof(*out));
        return CDX_OK;
    }
    return eng_kmeans_assign(x, n, m->dim, m->centroids, m->n_clusters, eng_km_of(m), out, NULL);
}
