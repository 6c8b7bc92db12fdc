/* app_vecs: hostile-input-safe vector loaders, exact ground truth, recall. See app_vecs.h. */
#include "app_vecs.h"

#include <cblas.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "cdx_limits.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "fvecs/bvecs payloads are read as host floats: little-endian hosts only"
#endif

#define IDX_MAGIC_UBYTE_1D 0x00000801u
#define IDX_MAGIC_UBYTE_3D 0x00000803u
#define CHUNK              (1u << 20)

/* The file's content is wrong (short, malformed, out of bounds). */
#define BAD CDX_ERR_INVALID_ARGUMENT

static cdx_err open_gz(const char *path, gzFile *out)
{
    *out = gzopen(path, "rb");
    if (!*out)
        return cdx_fail(CDX_ERR_NOT_FOUND, "%s: cannot open", path);
    gzbuffer(*out, 256 * 1024);
    return CDX_OK;
}

static cdx_err gz_error(gzFile f, const char *path)
{
    int zerr;
    const char *msg = gzerror(f, &zerr);
    return cdx_fail(BAD, "%s: read error: %s", path, msg ? msg : "?");
}

/*
 * Reads exactly len bytes. CDX_OK; *eof true instead when eof is not NULL
 * and the file ended cleanly before the first byte; or BAD (short read,
 * corrupt gzip stream).
 */
static cdx_err read_exact(gzFile f, const char *path, void *buf, size_t len, bool *eof)
{
    unsigned char *p = buf;
    size_t got = 0;
    if (eof)
        *eof = false;
    while (got < len) {
        size_t want = len - got;
        if (want > (1u << 30))
            want = 1u << 30;
        int r = gzread(f, p + got, (unsigned)want);
        if (r < 0)
            return gz_error(f, path);
        if (r == 0)
            break;
        got += (size_t)r;
    }
    if (got == len)
        return CDX_OK;
    if (got == 0 && eof) {
        /* gzread reports a gzip stream cut short as a plain end of file: ask gzerror. */
        int zerr;
        gzerror(f, &zerr);
        if (zerr != Z_OK)
            return cdx_fail(BAD, "%s: truncated gzip stream", path);
        *eof = true;
        return CDX_OK;
    }
    return cdx_fail(BAD, "%s: truncated (wanted %zu more bytes, got %zu)", path, len, got);
}

/* The payload must end exactly where the header says. */
static cdx_err expect_eof(gzFile f, const char *path)
{
    unsigned char extra;
    int r = gzread(f, &extra, 1);
    if (r < 0)
        return gz_error(f, path);
    if (r != 0)
        return cdx_fail(BAD, "%s: trailing data after the announced payload", path);
    int zerr;
    gzerror(f, &zerr);
    if (zerr != Z_OK) /* Z_BUF_ERROR: the gzip stream ended early (its trailer is missing) */
        return cdx_fail(BAD, "%s: truncated gzip stream", path);
    return CDX_OK;
}

static uint32_t be32(const unsigned char *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static uint32_t le32(const unsigned char *b)
{
    return (uint32_t)b[3] << 24 | (uint32_t)b[2] << 16 | (uint32_t)b[1] << 8 | b[0];
}

/* Reads total bytes and widens them to float32, CHUNK bytes at a time. */
static cdx_err read_u8_as_float(gzFile f, const char *path, float *out, size_t total)
{
    unsigned char *tmp = malloc(CHUNK);
    cdx_err err = CDX_OK;
    if (!tmp)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", path);
    for (size_t done = 0; done < total && !err;) {
        size_t len = total - done < CHUNK ? total - done : CHUNK;
        if (!(err = read_exact(f, path, tmp, len, NULL))) {
            for (size_t i = 0; i < len; i++)
                out[done + i] = (float)tmp[i];
            done += len;
        }
    }
    free(tmp);
    return err;
}

cdx_err app_vecs_load_idx(const char *path, float **out, size_t *n, size_t *d)
{
    unsigned char h[16];
    float *v = NULL;
    gzFile f;
    *out = NULL;
    cdx_err err = open_gz(path, &f);
    if (err)
        return err;
    if ((err = read_exact(f, path, h, sizeof h, NULL)))
        goto out;
    uint32_t magic = be32(h), cnt = be32(h + 4), rows = be32(h + 8), cols = be32(h + 12);
    if (magic != IDX_MAGIC_UBYTE_3D) {
        err = cdx_fail(BAD, "%s: IDX magic 0x%08x, want 0x%08x (ubyte, 3 dims)", path, magic,
                       IDX_MAGIC_UBYTE_3D);
        goto out;
    }
    /* Bound each factor before multiplying so nothing can wrap. */
    if (cnt == 0 || rows == 0 || cols == 0 || rows > CDX_VECS_DIM_MAX || cols > CDX_VECS_DIM_MAX ||
        (size_t)rows * cols > CDX_VECS_DIM_MAX || (size_t)cnt * rows * cols > CDX_VECS_ELEMS_MAX) {
        err = cdx_fail(BAD, "%s: IDX dims %u x %u x %u out of bounds", path, cnt, rows, cols);
        goto out;
    }
    size_t dim = (size_t)rows * cols, total = (size_t)cnt * dim;
    v = malloc(total * sizeof *v);
    if (!v) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "%s: out of memory for %zu floats", path, total);
        goto out;
    }
    if ((err = read_u8_as_float(f, path, v, total)) || (err = expect_eof(f, path)))
        goto out;
    *out = v;
    *n = cnt;
    *d = dim;
    v = NULL;
out:
    free(v);
    gzclose(f);
    return err;
}

cdx_err app_vecs_load_idx_labels(const char *path, uint8_t **out, size_t *n)
{
    unsigned char h[8];
    uint8_t *v = NULL;
    gzFile f;
    *out = NULL;
    cdx_err err = open_gz(path, &f);
    if (err)
        return err;
    if ((err = read_exact(f, path, h, sizeof h, NULL)))
        goto out;
    uint32_t magic = be32(h), cnt = be32(h + 4);
    if (magic != IDX_MAGIC_UBYTE_1D) {
        err = cdx_fail(BAD, "%s: IDX magic 0x%08x, want 0x%08x (ubyte, 1 dim)", path, magic,
                       IDX_MAGIC_UBYTE_1D);
        goto out;
    }
    if (cnt == 0) { /* a uint32 count is within CDX_VECS_ELEMS_MAX */
        err = cdx_fail(BAD, "%s: IDX label count 0", path);
        goto out;
    }
    v = malloc(cnt);
    if (!v) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", path);
        goto out;
    }
    if ((err = read_exact(f, path, v, cnt, NULL)) || (err = expect_eof(f, path)))
        goto out;
    *out = v;
    *n = cnt;
    v = NULL;
out:
    free(v);
    gzclose(f);
    return err;
}

/*
 * An xvecs row format: elem bytes per component, and how to read one row of
 * dim components into row (tmp: dim * elem bytes of scratch; `index` is the
 * row's number, for errors).
 */
typedef struct xvecs_fmt {
    size_t elem;
    cdx_err (*decode)(gzFile f, const char *path, float *row, size_t dim, size_t index,
                      unsigned char *tmp);
} xvecs_fmt;

/* fvecs: float32 components, which must be finite. */
static cdx_err decode_f32(gzFile f, const char *path, float *row, size_t dim, size_t index,
                          unsigned char *tmp)
{
    (void)tmp;
    cdx_err err = read_exact(f, path, row, dim * sizeof(float), NULL);
    if (err)
        return err;
    for (size_t i = 0; i < dim; i++)
        if (!isfinite(row[i]))
            return cdx_fail(BAD, "%s: vector %zu has a non-finite component", path, index);
    return CDX_OK;
}

/* bvecs: uint8 components, widened. */
static cdx_err decode_u8(gzFile f, const char *path, float *row, size_t dim, size_t index,
                         unsigned char *tmp)
{
    (void)index;
    cdx_err err = read_exact(f, path, tmp, dim, NULL);
    if (err)
        return err;
    for (size_t i = 0; i < dim; i++)
        row[i] = (float)tmp[i];
    return CDX_OK;
}

static const xvecs_fmt FVECS = {sizeof(float), decode_f32};
static const xvecs_fmt BVECS = {1, decode_u8};

/*
 * fvecs and bvecs: records of int32 d + d components, all with the same d.
 * The count is unknown up front (gzip), so the array grows, bounded by
 * CDX_VECS_ELEMS_MAX; the row format decodes each record's payload.
 */
static cdx_err load_xvecs(const char *path, const xvecs_fmt *fmt, float **out, size_t *n, size_t *d)
{
    float *v = NULL;
    unsigned char *tmp = NULL;
    size_t cnt = 0, dim = 0, cap = 0; /* cap in vectors */
    gzFile f;
    *out = NULL;
    cdx_err err = open_gz(path, &f);
    if (err)
        return err;
    for (;;) {
        unsigned char h[4];
        bool eof;
        if ((err = read_exact(f, path, h, 4, &eof)))
            goto out;
        if (eof)
            break;
        uint32_t rd = le32(h);
        if (cnt == 0) {
            if (rd == 0 || rd > CDX_VECS_DIM_MAX) {
                err = cdx_fail(BAD, "%s: dimension %u out of bounds", path, rd);
                goto out;
            }
            dim = rd;
            if (!(tmp = malloc(dim * fmt->elem))) {
                err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", path);
                goto out;
            }
        } else if (rd != dim) {
            err = cdx_fail(BAD, "%s: vector %zu has dimension %u, the first had %zu", path, cnt, rd,
                           dim);
            goto out;
        }
        if ((cnt + 1) * dim > CDX_VECS_ELEMS_MAX) {
            err = cdx_fail(BAD, "%s: more than %zu elements", path, (size_t)CDX_VECS_ELEMS_MAX);
            goto out;
        }
        if (cnt == cap) {
            size_t ncap = cap ? cap * 2 : 1024;
            if (ncap * dim > CDX_VECS_ELEMS_MAX)
                ncap = CDX_VECS_ELEMS_MAX / dim;
            float *nv = realloc(v, ncap * dim * sizeof *v);
            if (!nv) {
                err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "%s: out of memory at %zu vectors", path,
                               cnt);
                goto out;
            }
            v = nv;
            cap = ncap;
        }
        if ((err = fmt->decode(f, path, v + cnt * dim, dim, cnt, tmp)))
            goto out;
        cnt++;
    }
    if (cnt == 0) {
        err = cdx_fail(BAD, "%s: no vectors", path);
        goto out;
    }
    /* Give back the unused tail of the doubling buffer. */
    float *shrunk = realloc(v, cnt * dim * sizeof *v);
    *out = shrunk ? shrunk : v;
    *n = cnt;
    *d = dim;
    v = NULL;
out:
    free(tmp);
    free(v);
    gzclose(f);
    return err;
}

cdx_err app_vecs_load_fvecs(const char *path, float **out, size_t *n, size_t *d)
{
    return load_xvecs(path, &FVECS, out, n, d);
}

cdx_err app_vecs_load_bvecs(const char *path, float **out, size_t *n, size_t *d)
{
    return load_xvecs(path, &BVECS, out, n, d);
}

static bool ends_with(const char *s, size_t len, const char *suffix)
{
    size_t l = strlen(suffix);
    return len >= l && memcmp(s + len - l, suffix, l) == 0;
}

cdx_err app_vecs_load(const char *path, float **out, size_t *n, size_t *d)
{
    size_t len = strlen(path);
    if (ends_with(path, len, ".gz"))
        len -= 3; /* the loaders read gzip and plain files alike */
    if (ends_with(path, len, ".fvecs"))
        return app_vecs_load_fvecs(path, out, n, d);
    if (ends_with(path, len, ".bvecs"))
        return app_vecs_load_bvecs(path, out, n, d);
    if (ends_with(path, len, "idx3-ubyte") || ends_with(path, len, ".idx"))
        return app_vecs_load_idx(path, out, n, d);
    *out = NULL;
    return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                    "%s: unknown format (want .fvecs, .bvecs, *idx3-ubyte or .idx, "
                    "optionally .gz)",
                    path);
}

/* ---- ground truth --------------------------------------------------------------------------- */

/* Exact result entries; "worse" = larger distance, then larger index. */
typedef struct {
    double dist;
    int64_t idx;
} gt_ent;

static bool worse(const gt_ent *a, const gt_ent *b)
{
    return a->dist > b->dist || (a->dist == b->dist && a->idx > b->idx);
}

/* Max-heap (worst on top) of at most k exact entries. */
typedef struct {
    gt_ent *e;
    size_t n, k;
} gt_heap;

static void heap_push(gt_heap *h, gt_ent x)
{
    size_t i;
    if (h->n < h->k) {
        i = h->n++;
        while (i > 0 && worse(&x, &h->e[(i - 1) / 2])) {
            h->e[i] = h->e[(i - 1) / 2];
            i = (i - 1) / 2;
        }
        h->e[i] = x;
        return;
    }
    if (!worse(&h->e[0], &x))
        return;
    i = 0;
    for (;;) { /* sift x down from the root */
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && worse(&h->e[c + 1], &h->e[c]))
            c++;
        if (!worse(&h->e[c], &x))
            break;
        h->e[i] = h->e[c];
        i = c;
    }
    h->e[i] = x;
}

static int ent_cmp(const void *pa, const void *pb)
{
    const gt_ent *a = pa, *b = pb;
    return worse(a, b) ? 1 : worse(b, a) ? -1 : 0;
}

static double exact_l2(const float *a, const float *b, size_t d)
{
    double s = 0;
    for (size_t i = 0; i < d; i++) {
        double t = (double)a[i] - (double)b[i];
        s += t * t;
    }
    return isnan(s) ? INFINITY : s; /* keeps the ordering total */
}

/* Writes the heap's contents, best first, padded with -1. */
static void heap_emit(gt_heap *h, int64_t *row)
{
    qsort(h->e, h->n, sizeof *h->e, ent_cmp);
    for (size_t r = 0; r < h->k; r++)
        row[r] = r < h->n ? h->e[r].idx : -1;
}

static void exact_scan(const float *base, size_t nb, const float *q, size_t d, gt_heap *h)
{
    h->n = 0;
    for (size_t j = 0; j < nb; j++)
        heap_push(h, (gt_ent){exact_l2(q, base + j * d, d), (int64_t)j});
}

/* Screening state of one query: the k smallest approximate distances (a max-heap of values only:
 * any k items bound the k-th true distance from above) and the items the bound cannot exclude. */
typedef struct {
    double *top; /* k approximate values, max on top */
    size_t ntop;
    gt_ent *cand; /* dist field holds the item's lower bound minus its own error share */
    size_t ncand, capcand;
    double nq, slack;
    bool exact; /* screening cannot be trusted (overflow range): scan in double */
} gt_screen;

static void top_push(gt_screen *s, size_t k, double a)
{
    size_t i;
    if (s->ntop < k) {
        i = s->ntop++;
        while (i > 0 && a > s->top[(i - 1) / 2]) {
            s->top[i] = s->top[(i - 1) / 2];
            i = (i - 1) / 2;
        }
        s->top[i] = a;
        return;
    }
    i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= k)
            break;
        if (c + 1 < k && s->top[c + 1] > s->top[c])
            c++;
        if (!(s->top[c] > a))
            break;
        s->top[i] = s->top[c];
        i = c;
    }
    s->top[i] = a;
}

static void cand_prune(gt_screen *s, double limit)
{
    size_t w = 0;
    for (size_t i = 0; i < s->ncand; i++)
        if (s->cand[i].dist <= limit)
            s->cand[w++] = s->cand[i];
    s->ncand = w;
}

/*
 * Why this is exact: with s~ the float dot product from sgemm, |s~ - s| <= gamma_d |q||x| <=
 * gamma_d (|q|^2 + |x|^2) / 2 whatever the summation order (gamma_d ~ d * 2^-24). The screening
 * value a_j = |x_j|^2 - 2 s~_j (double) is the true squared distance minus |q|^2 to within
 * e_j = c (|q|^2 + |x_j|^2) + e0, with c = (2d + 4) 2^-24 (twice gamma_d) and e0 covering float
 * underflow. The current k smallest a values give U = top + c (|q|^2 + max|x|^2) + e0 >= the k-th
 * true distance, and U only decreases, so every item with a_j - e_j <= U is kept as a candidate
 * and no true neighbour (nor an item tied with the k-th) is ever dropped. Candidates are then
 * ranked by exact double distances, ties by index.
 */
cdx_err app_vecs_ground_truth(const float *base, size_t nb, const float *q, size_t nq, size_t d,
                              size_t k, int64_t *gt)
{
    if (k == 0 || nq == 0)
        return CDX_OK;
    const size_t QB = 256, NBB = 16384;
    const double c = (2.0 * (double)d + 4.0) * (FLT_EPSILON / 2);
    const double e0 = 4.0 * (double)d * FLT_MIN;
    const double big = 1e36; /* beyond this, float products may overflow: no screening */
    size_t qb_max = nq < QB ? nq : QB, nbb_max = nb < NBB ? nb : NBB;
    cdx_err rc = CDX_ERR_RESOURCE_EXHAUSTED;
    double *nx = malloc((nb ? nb : 1) * sizeof *nx);
    double *w = malloc((nb ? nb : 1) * sizeof *w);
    size_t ndots = qb_max * nbb_max;
    float *dots = malloc((ndots ? ndots : 1) * sizeof *dots);
    gt_screen *sc = calloc(qb_max, sizeof *sc);
    gt_ent *hbuf = malloc(k * sizeof *hbuf);
    if (!nx || !w || !dots || !sc || !hbuf)
        goto out;
    for (size_t i = 0; i < qb_max; i++) {
        sc[i].top = malloc(k * sizeof *sc[i].top);
        sc[i].capcand = 4 * k + 64;
        sc[i].cand = malloc(sc[i].capcand * sizeof *sc[i].cand);
        if (!sc[i].top || !sc[i].cand)
            goto out;
    }
    gt_heap heap = {hbuf, 0, k};
    double nx_max = 0;
    bool nx_bad = d == 0; /* sgemm rejects K = 0 */
    for (size_t j = 0; j < nb; j++) {
        double s = 0;
        for (size_t i = 0; i < d; i++)
            s += (double)base[j * d + i] * base[j * d + i];
        nx[j] = s;
        w[j] = s - c * s;
        if (!isfinite(s))
            nx_bad = true;
        else if (s > nx_max)
            nx_max = s;
    }

    for (size_t q0 = 0; q0 < nq; q0 += QB) {
        size_t qb = nq - q0 < QB ? nq - q0 : QB;
        for (size_t i = 0; i < qb; i++) {
            gt_screen *s = &sc[i];
            const float *qi = q + (q0 + i) * d;
            double n2 = 0;
            for (size_t l = 0; l < d; l++)
                n2 += (double)qi[l] * qi[l];
            s->nq = n2;
            s->ntop = 0;
            s->ncand = 0;
            s->exact = nx_bad || !(n2 + nx_max < big);
            s->slack = 2 * c * n2 + c * nx_max + 2 * e0;
        }
        for (size_t b0 = 0; b0 < nb; b0 += NBB) {
            size_t nbb = nb - b0 < NBB ? nb - b0 : NBB;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)qb, (int)nbb, (int)d, 1.0f,
                        q + q0 * d, (int)d, base + b0 * d, (int)d, 0.0f, dots, (int)nbb);
            for (size_t i = 0; i < qb; i++) {
                gt_screen *s = &sc[i];
                if (s->exact)
                    continue;
                const float *row = dots + i * nbb;
                for (size_t jj = 0; jj < nbb; jj++) {
                    size_t j = b0 + jj;
                    double dot = row[jj];
                    double a = nx[j] - 2 * dot;
                    if (s->ntop < k || a < s->top[0])
                        top_push(s, k, a);
                    double lim = s->ntop < k ? INFINITY : s->top[0] + s->slack;
                    double t = w[j] - 2 * dot;
                    if (!(t <= lim))
                        continue;
                    if (s->ncand == s->capcand) {
                        cand_prune(s, lim);
                        if (s->ncand > s->capcand / 2) {
                            gt_ent *nc = realloc(s->cand, 2 * s->capcand * sizeof *nc);
                            if (!nc)
                                goto out;
                            s->cand = nc;
                            s->capcand *= 2;
                        }
                    }
                    s->cand[s->ncand++] = (gt_ent){t, (int64_t)j};
                }
            }
        }
        for (size_t i = 0; i < qb; i++) {
            gt_screen *s = &sc[i];
            const float *qi = q + (q0 + i) * d;
            int64_t *out_row = gt + (q0 + i) * k;
            size_t want = nb < k ? nb : k;
            heap.n = 0;
            if (!s->exact) {
                cand_prune(s, s->ntop < k ? INFINITY : s->top[0] + s->slack);
                for (size_t m = 0; m < s->ncand; m++) {
                    size_t j = (size_t)s->cand[m].idx;
                    heap_push(&heap, (gt_ent){exact_l2(qi, base + j * d, d), (int64_t)j});
                }
            }
            /* NaN inputs can starve the screen; a full double scan is always right. */
            if (s->exact || heap.n < want)
                exact_scan(base, nb, qi, d, &heap);
            heap_emit(&heap, out_row);
        }
    }
    rc = CDX_OK;
out:
    if (sc)
        for (size_t i = 0; i < qb_max; i++) {
            free(sc[i].top);
            free(sc[i].cand);
        }
    free(sc);
    free(hbuf);
    free(dots);
    free(w);
    free(nx);
    if (rc)
        return cdx_fail(rc, "out of memory computing the ground truth");
    return CDX_OK;
}

double app_vecs_recall_at_k(const int64_t *res, const int64_t *gt, size_t nq, size_t k)
{
    if (nq == 0 || k == 0)
        return 0;
    double sum = 0;
    for (size_t i = 0; i < nq; i++) {
        const int64_t *r = res + i * k, *g = gt + i * k;
        size_t hit = 0, valid = 0;
        for (size_t a = 0; a < k; a++) {
            if (g[a] < 0)
                continue;
            valid++;
            for (size_t b = 0; b < k; b++) {
                if (r[b] == g[a]) {
                    hit++;
                    break;
                }
            }
        }
        sum += valid ? (double)hit / (double)valid : 1.0;
    }
    return sum / (double)nq;
}
