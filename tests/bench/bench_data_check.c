/* bench_data_check: ctest for bench_data (loaders on hostile files, exact ground truth, recall).
 * Needs no dataset: it writes small files into a private temp directory. */
#include "app_vecs.h"
#include "fx_tmp.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

static int failures;
static char dir[4096];

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static uint64_t rng_state = 42;

static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

static const char *path_of(const char *name)
{
    static char p[8192];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return p;
}

/* Writes bytes to dir/name, gzip-compressed when gz (possibly truncated to cut bytes). */
static void put(const char *name, const void *buf, size_t len, bool gz)
{
    const char *p = path_of(name);
    if (gz) {
        gzFile f = gzopen(p, "wb");
        gzwrite(f, buf, (unsigned)len);
        gzclose(f);
    } else {
        FILE *f = fopen(p, "wb");
        fwrite(buf, 1, len, f);
        fclose(f);
    }
}

static void be(unsigned char *b, uint32_t v)
{
    b[0] = (unsigned char)(v >> 24);
    b[1] = (unsigned char)(v >> 16);
    b[2] = (unsigned char)(v >> 8);
    b[3] = (unsigned char)v;
}

/* IDX image file: header (magic, n, rows, cols) + payload_len bytes of value i % 251. */
static size_t idx_image(unsigned char *buf, uint32_t magic, uint32_t n, uint32_t r, uint32_t c,
                        size_t payload_len)
{
    be(buf, magic);
    be(buf + 4, n);
    be(buf + 8, r);
    be(buf + 12, c);
    for (size_t i = 0; i < payload_len; i++)
        buf[16 + i] = (unsigned char)(i % 251);
    return 16 + payload_len;
}

static int load_idx(const char *name)
{
    float *x = NULL;
    size_t n = 0, d = 0;
    int rc = app_vecs_load_idx(path_of(name), &x, &n, &d) == CDX_OK ? 0 : -1;
    CHECK(rc == 0 || x == NULL);
    if (rc == 0) {
        CHECK(n == 3 && d == 6);
        CHECK(x[0] == 0.0f && x[17] == 17.0f);
    }
    free(x);
    return rc;
}

static void test_idx(void)
{
    unsigned char buf[256];
    size_t len = idx_image(buf, 0x803, 3, 2, 3, 18);
    put("ok-idx3-ubyte", buf, len, false);
    CHECK(load_idx("ok-idx3-ubyte") == 0);
    put("ok-idx3-ubyte.gz", buf, len, true);
    CHECK(load_idx("ok-idx3-ubyte.gz") == 0);

    put("short", buf, len - 1, false); /* one byte missing */
    CHECK(load_idx("short") != 0);
    put("short.gz", buf, len - 1, true);
    CHECK(load_idx("short.gz") != 0);
    put("long", buf, len + 1, false); /* one byte too many */
    CHECK(load_idx("long") != 0);
    put("header", buf, 10, false);
    CHECK(load_idx("header") != 0);
    put("empty", buf, 0, false);
    CHECK(load_idx("empty") != 0);

    len = idx_image(buf, 0x801, 3, 2, 3, 18); /* labels magic */
    put("magic", buf, len, false);
    CHECK(load_idx("magic") != 0);
    len = idx_image(buf, 0x0c03, 3, 2, 3, 18); /* int32 element type */
    put("type", buf, len, false);
    CHECK(load_idx("type") != 0);
    len = idx_image(buf, 0x803, 0, 2, 3, 0);
    put("zero", buf, len, false);
    CHECK(load_idx("zero") != 0);
    len = idx_image(buf, 0x803, 3, 70000, 1, 0); /* rows over the bound */
    put("rows", buf, len, false);
    CHECK(load_idx("rows") != 0);
    len = idx_image(buf, 0x803, 3, 300, 300, 0); /* rows*cols over the bound */
    put("dims", buf, len, false);
    CHECK(load_idx("dims") != 0);
    len = idx_image(buf, 0x803, 0xffffffffu, 65536, 1, 0); /* n*d over the bound */
    put("count", buf, len, false);
    CHECK(load_idx("count") != 0);
    len = idx_image(buf, 0x803, 1000000, 28, 28, 18); /* plausible header, tiny payload */
    put("lies.gz", buf, len, true);
    CHECK(load_idx("lies.gz") != 0);

    /* Truncated gzip stream: a valid file's compressed bytes cut short. */
    len = idx_image(buf, 0x803, 3, 2, 3, 18);
    put("full.gz", buf, len, true);
    FILE *f = fopen(path_of("full.gz"), "rb");
    unsigned char z[512];
    size_t zl = fread(z, 1, sizeof z, f);
    fclose(f);
    for (size_t cut = 1; cut < zl - 10; cut++) { /* every truncation, trailer included */
        put("cut.gz", z, zl - cut, false);
        CHECK(load_idx("cut.gz") != 0);
    }

    /* Labels. */
    unsigned char lb[16] = {0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9};
    put("labels", lb, 11, false);
    uint8_t *l = NULL;
    size_t n = 0;
    CHECK(app_vecs_load_idx_labels(path_of("labels"), &l, &n) == CDX_OK && n == 3 &&
          l[2] == 9);
    free(l);
    put("labels-long", lb, 12, false);
    CHECK(app_vecs_load_idx_labels(path_of("labels-long"), &l, &n) != CDX_OK);
    put("labels-3d", buf, len, false);
    CHECK(app_vecs_load_idx_labels(path_of("labels-3d"), &l, &n) != CDX_OK);

    /* The documented codes: a missing file, hostile content, an unknown name; *out stays NULL. */
    float *x = (float *)1;
    size_t nx = 0, dx = 0;
    CHECK(app_vecs_load(path_of("no-such.fvecs"), &x, &nx, &dx) == CDX_ERR_NOT_FOUND && !x);
    CHECK(strstr(cdx_err_detail(), "cannot open") != NULL);
    x = (float *)1;
    CHECK(app_vecs_load_idx(path_of("magic"), &x, &nx, &dx) == CDX_ERR_INVALID_ARGUMENT && !x);
    CHECK(strstr(cdx_err_detail(), "IDX magic") != NULL);
    CHECK(app_vecs_load(path_of("labels"), &x, &nx, &dx) == CDX_ERR_INVALID_ARGUMENT && !x);
    CHECK(strstr(cdx_err_detail(), "unknown format") != NULL);
}

static void le(unsigned char *b, uint32_t v)
{
    memcpy(b, &v, 4); /* little-endian host (bench_data.c checks) */
}

static int load_vec(const char *name, size_t want_n, size_t want_d)
{
    float *x = NULL;
    size_t n = 0, d = 0;
    int rc = app_vecs_load(path_of(name), &x, &n, &d) == CDX_OK ? 0 : -1;
    if (rc == 0) {
        CHECK(n == want_n && d == want_d);
        CHECK(x[0] == 1.0f && x[n * d - 1] == (float)(n * d));
    }
    free(x);
    return rc;
}

static void test_xvecs(void)
{
    unsigned char buf[4096];
    size_t off = 0;
    float v = 1.0f;
    for (int i = 0; i < 5; i++) { /* 5 vectors of 3 floats: 1..15 */
        le(buf + off, 3);
        off += 4;
        for (int j = 0; j < 3; j++, v += 1.0f, off += 4)
            memcpy(buf + off, &v, 4);
    }
    put("a.fvecs", buf, off, false);
    CHECK(load_vec("a.fvecs", 5, 3) == 0);
    put("a.fvecs.gz", buf, off, true);
    CHECK(load_vec("a.fvecs.gz", 5, 3) == 0);
    FILE *f = fopen(path_of("a.fvecs.gz"), "rb");
    unsigned char z[4096];
    size_t zl = fread(z, 1, sizeof z, f);
    fclose(f);
    put("cut.fvecs.gz", z, zl - 4, false); /* all records present, gzip trailer cut */
    CHECK(load_vec("cut.fvecs.gz", 5, 3) != 0);
    put("t.fvecs", buf, off - 2, false);
    CHECK(load_vec("t.fvecs", 5, 3) != 0);
    put("h.fvecs", buf, off - 12 - 2, false); /* cut inside a record header */
    CHECK(load_vec("h.fvecs", 4, 3) != 0);
    put("e.fvecs", buf, 0, false);
    CHECK(load_vec("e.fvecs", 0, 0) != 0);
    unsigned char bad[4096];
    memcpy(bad, buf, off);
    le(bad + 16, 4); /* second record claims 4 dims */
    put("d.fvecs", bad, off, false);
    CHECK(load_vec("d.fvecs", 5, 3) != 0);
    memcpy(bad, buf, off);
    float nan = NAN;
    memcpy(bad + 8, &nan, 4);
    put("n.fvecs", bad, off, false);
    CHECK(load_vec("n.fvecs", 5, 3) != 0);
    le(bad, 0);
    put("z.fvecs", bad, off, false);
    CHECK(load_vec("z.fvecs", 5, 3) != 0);
    le(bad, 0x7fffffff);
    put("big.fvecs", bad, off, false);
    CHECK(load_vec("big.fvecs", 5, 3) != 0);

    off = 0;
    for (int i = 0, k = 1; i < 4; i++) { /* 4 vectors of 2 bytes: 1..8 */
        le(buf + off, 2);
        off += 4;
        for (int j = 0; j < 2; j++)
            buf[off++] = (unsigned char)k++;
    }
    put("b.bvecs", buf, off, false);
    CHECK(load_vec("b.bvecs", 4, 2) == 0);
    put("b.txt", buf, off, false);
    CHECK(load_vec("b.txt", 4, 2) != 0);
}

/* Reference: every distance in double, full sort by (distance, index). */
typedef struct {
    double d;
    int64_t i;
} ent;

static int ent_cmp(const void *a, const void *b)
{
    const ent *x = a, *y = b;
    if (x->d != y->d)
        return x->d < y->d ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

static void brute(const float *base, size_t nb, const float *q, size_t nq, size_t d, size_t k,
                  int64_t *gt)
{
    ent *e = malloc((nb ? nb : 1) * sizeof *e);
    for (size_t i = 0; i < nq; i++) {
        for (size_t j = 0; j < nb; j++) {
            double s = 0;
            for (size_t l = 0; l < d; l++) {
                double t = (double)q[i * d + l] - base[j * d + l];
                s += t * t;
            }
            e[j] = (ent){s, (int64_t)j};
        }
        qsort(e, nb, sizeof *e, ent_cmp);
        for (size_t r = 0; r < k; r++)
            gt[i * k + r] = r < nb ? e[r].i : -1;
    }
    free(e);
}

static void check_gt(const char *what, const float *base, size_t nb, const float *q, size_t nq,
                     size_t d, size_t k)
{
    int64_t *a = malloc(nq * k * sizeof *a), *b = malloc(nq * k * sizeof *b);
    CHECK(app_vecs_ground_truth(base, nb, q, nq, d, k, a) == CDX_OK);
    brute(base, nb, q, nq, d, k, b);
    size_t diff = 0;
    for (size_t i = 0; i < nq * k; i++)
        diff += a[i] != b[i];
    if (diff)
        fprintf(stderr, "ground truth %s: %zu of %zu entries differ\n", what, diff, nq * k);
    CHECK(diff == 0);
    CHECK(app_vecs_recall_at_k(a, b, nq, k) == 1.0);
    free(a);
    free(b);
}

static void test_gt(void)
{
    /* uint8-like data with many exact duplicates and near-ties; more base rows than one sgemm
     * block (16384) so block boundaries are crossed. */
    size_t nb = 20000, nq = 300, d = 64;
    float *base = malloc(nb * d * sizeof *base), *q = malloc(nq * d * sizeof *q);
    for (size_t j = 0; j < nb; j++) {
        if (j % 7 == 3 && j > 100) { /* duplicate of an earlier row */
            memcpy(base + j * d, base + (rnd() % (j - 1)) * d, d * sizeof *base);
            continue;
        }
        for (size_t l = 0; l < d; l++)
            base[j * d + l] = (float)(rnd() % 4 * 80 + (l % 3 == 0 ? rnd() % 2 : 0));
    }
    for (size_t i = 0; i < nq; i++) {
        for (size_t l = 0; l < d; l++)
            q[i * d + l] = (float)(rnd() % 256);
        if (i % 3 == 0) /* queries that sit on base rows: distance 0 and duplicates tie */
            memcpy(q + i * d, base + (rnd() % nb) * d, d * sizeof *q);
    }
    check_gt("uint8 ties", base, nb, q, nq, d, 10);
    check_gt("k=100", base, 3000, q, 50, d, 100);
    /* Large magnitudes: float error is far above the gaps between distances. */
    for (size_t j = 0; j < 5000 * d; j++)
        base[j] = (float)(rnd() % 1000) * 1e4f + 1e7f;
    for (size_t i = 0; i < 50 * d; i++)
        q[i] = (float)(rnd() % 1000) * 1e4f + 1e7f;
    check_gt("large", base, 5000, q, 50, d, 10);
    /* Overflow range takes the exact path. */
    for (size_t j = 0; j < 500 * d; j++)
        base[j] = (float)(rnd() % 100) * 1e17f;
    check_gt("huge", base, 500, q, 20, d, 10);
    /* Fewer base rows than k, and d = 1. */
    check_gt("nb<k", base, 4, q, 5, d, 10);
    check_gt("d=1", base, 1000, q, 40, 1, 10);
    free(base);
    free(q);
}

static void test_recall(void)
{
    int64_t gt[4] = {1, 2, 3, 4}, res[4] = {2, 9, 2, -1};
    CHECK(fabs(app_vecs_recall_at_k(res, gt, 2, 2) - 0.25) < 1e-12); /* 1/2 and 0/2 */
    int64_t res2[4] = {2, 1, 4, 3};
    CHECK(app_vecs_recall_at_k(res2, gt, 2, 2) == 1.0);
}

int main(void)
{
    /* The fixtures' scratch dirs: created under $CDX_TEST_TMP whatever ran before. */
    char *d = fx_tmpdir_new("bench_data");
    if (!d) {
        perror("fx_tmpdir_new");
        return 1;
    }
    snprintf(dir, sizeof dir, "%s", d);
    free(d);
    test_idx();
    test_xvecs();
    test_gt();
    test_recall();
    if (fx_rm_rf(dir) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    if (failures) {
        fprintf(stderr, "bench_data_check: %d check(s) failed\n", failures);
        return 1;
    }
    printf("bench_data_check: all checks passed\n");
    return 0;
}
