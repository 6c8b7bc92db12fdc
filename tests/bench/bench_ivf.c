/* bench_ivf: IVF systems side by side on Fashion-MNIST (or any .fvecs/.bvecs/IDX pair), one
 * process, one thread: recall@k against exact ground truth, QPS one query at a time and batched,
 * latency percentiles, build times, and the ratio to Faiss. docs/BENCH.md explains the output. */
#include "app_vecs.h"
#include "eng.h"
#include "bench_sys.h"
#include "fx_rand.h"

#include <cblas.h>
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* OpenBLAS extensions; declared here too because <cblas.h> may be another vendor's. */
void openblas_set_num_threads(int num_threads);
char *openblas_get_config(void);

/* ---- registry: systems built into this binary --------------------------------------------- */

static const bench_sys *const registry[] = {
#ifdef CDX_BENCH_HAVE_FAISS
    &bench_sys_faiss,
#endif
    &bench_sys_engine,
    NULL,
};

/* What runs without --systems; the engine's entries go here too. */
#ifdef CDX_BENCH_HAVE_FAISS
#define BENCH_DEFAULT_SYSTEMS                                                                     \
    "faiss,cipherdex:flat-mem,cipherdex:sq8-mem,cipherdex:flat-redis-warm,"                       \
    "cipherdex:flat-redis-cold,cipherdex:sq8-redis-cold"
#else
#define BENCH_DEFAULT_SYSTEMS                                                                     \
    "cipherdex:flat-mem,cipherdex:sq8-mem,cipherdex:flat-redis-warm,cipherdex:flat-redis-cold,"   \
    "cipherdex:sq8-redis-cold"
#endif
#define BENCH_REFERENCE "faiss" /* the ratio columns divide by this system's rows */

#define MAX_LIST   32
#define MAX_RUNS   16
#define MAX_REPEAT 15

/* ---- options ------------------------------------------------------------------------------ */

typedef struct {
    size_t v[MAX_LIST];
    size_t n;
} size_list;

typedef struct {
    const char *data_dir, *base_path, *query_path, *out_path, *csv_path, *plot_path;
    const char *systems;
    size_list nlist, nprobe, big_nprobe;
    size_t queries, big_queries, nb_max, k, sample_per_list;
    unsigned iters, repeat;
    uint64_t seed;
    bool short_mode;
} options;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bench_ivf [options]\n"
            "  --short            CI smoke run: nlist 256, nprobe 1,4,16, 200 queries,\n"
            "                     10,000 base vectors, no 10,000-query runs\n"
            "  --data DIR         Fashion-MNIST IDX directory (default "
            "/usr/share/datasets/fashion-mnist)\n"
            "  --base FILE        base vectors instead (.fvecs/.bvecs/idx3-ubyte, plain or .gz)\n"
            "  --query FILE       query vectors instead (same formats)\n"
            "  --nb N             use the first N base vectors (default all)\n"
            "  --nlist L          comma list (default 256,1024)\n"
            "  --nprobe L         sweep (default 1,2,4,8,16,32,64; values above nlist skipped)\n"
            "  --queries N        queries in the sweep (default 1000)\n"
            "  --big-queries N    queries for the --big-nprobe runs (default 10000; 0 = none)\n"
            "  --big-nprobe L     (default 8,16,32)\n"
            "  --k N              neighbours (default 10)\n"
            "  --iters N          k-means iterations for every system (default 10)\n"
            "  --sample-per-list N  training sample = min(nb, N * nlist) points (default 256)\n"
            "  --repeat N         time each search run N times, report the median QPS (default 1)\n"
            "  --seed N           sample and k-means seed (default 1234)\n"
            "  --systems L        comma list of name or name:variant (default \"%s\")\n"
            "  --out FILE         also write the Markdown report there\n"
            "  --csv FILE         CSV of every row (default: --out with .csv)\n"
            "  --plot FILE        PNG: recall@k vs one-at-a-time QPS (needs gnuplot)\n"
            "Systems built in:",
            BENCH_DEFAULT_SYSTEMS);
    for (size_t i = 0; registry[i]; i++)
        fprintf(f, " %s", registry[i]->name);
    fprintf(f, "%s\n", registry[0] ? "" : " none (libfaiss-dev was missing at configure time)");
}

static bool parse_size(const char *s, size_t *out)
{
    char *end;
    errno = 0;
    if (!s || *s < '0' || *s > '9')
        return false;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > (1ull << 40))
        return false;
    *out = (size_t)v;
    return true;
}

static bool parse_list(const char *s, size_list *l)
{
    l->n = 0;
    while (s && *s) {
        char buf[32];
        size_t len = strcspn(s, ",");
        if (len == 0 || len >= sizeof buf || l->n == MAX_LIST)
            return false;
        memcpy(buf, s, len);
        buf[len] = 0;
        if (!parse_size(buf, &l->v[l->n]) || l->v[l->n] == 0)
            return false;
        l->n++;
        s += len;
        if (*s == ',')
            s++;
    }
    return l->n > 0;
}

static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){
        .data_dir = "/usr/share/datasets/fashion-mnist",
        .systems = BENCH_DEFAULT_SYSTEMS,
        .nlist = {{256, 1024}, 2},
        .nprobe = {{1, 2, 4, 8, 16, 32, 64}, 7},
        .big_nprobe = {{8, 16, 32}, 3},
        .queries = 1000,
        .big_queries = 10000,
        .k = 10,
        .sample_per_list = 256,
        .iters = 10,
        .repeat = 1,
        .seed = 1234,
    };
    bool nlist_set = false, nprobe_set = false, q_set = false, nb_set = false, big_set = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        size_t n;
        bool ok = true, takes = true;
        if (!strcmp(a, "--short")) {
            o->short_mode = true;
            takes = false;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            exit(0);
        } else if (!v) {
            ok = false;
        } else if (!strcmp(a, "--data")) {
            o->data_dir = v;
        } else if (!strcmp(a, "--base")) {
            o->base_path = v;
        } else if (!strcmp(a, "--query")) {
            o->query_path = v;
        } else if (!strcmp(a, "--out")) {
            o->out_path = v;
        } else if (!strcmp(a, "--csv")) {
            o->csv_path = v;
        } else if (!strcmp(a, "--plot")) {
            o->plot_path = v;
        } else if (!strcmp(a, "--systems")) {
            o->systems = v;
        } else if (!strcmp(a, "--nlist")) {
            ok = parse_list(v, &o->nlist);
            nlist_set = true;
        } else if (!strcmp(a, "--nprobe")) {
            ok = parse_list(v, &o->nprobe);
            nprobe_set = true;
        } else if (!strcmp(a, "--big-nprobe")) {
            ok = parse_list(v, &o->big_nprobe);
        } else if (!strcmp(a, "--queries")) {
            ok = parse_size(v, &o->queries) && o->queries > 0;
            q_set = true;
        } else if (!strcmp(a, "--big-queries")) {
            ok = parse_size(v, &o->big_queries);
            big_set = true;
        } else if (!strcmp(a, "--nb")) {
            ok = parse_size(v, &o->nb_max) && o->nb_max > 0;
            nb_set = true;
        } else if (!strcmp(a, "--k")) {
            ok = parse_size(v, &o->k) && o->k > 0 && o->k <= 1024;
        } else if (!strcmp(a, "--sample-per-list")) {
            ok = parse_size(v, &o->sample_per_list) && o->sample_per_list > 0;
        } else if (!strcmp(a, "--iters")) {
            ok = parse_size(v, &n) && n > 0 && n <= 1000;
            o->iters = (unsigned)n;
        } else if (!strcmp(a, "--repeat")) {
            ok = parse_size(v, &n) && n > 0 && n <= MAX_REPEAT;
            o->repeat = (unsigned)n;
        } else if (!strcmp(a, "--seed")) {
            ok = parse_size(v, &n);
            o->seed = n;
        } else {
            fprintf(stderr, "bench_ivf: unknown option '%s'\n", a);
            usage(stderr);
            return -1;
        }
        if (!ok) {
            fprintf(stderr, "bench_ivf: bad or missing value for %s\n", a);
            return -1;
        }
        if (takes)
            i++;
    }
    /* --short sets defaults; explicit options still win. */
    if (o->short_mode) {
        if (!nlist_set)
            o->nlist = (size_list){{256}, 1};
        if (!nprobe_set)
            o->nprobe = (size_list){{1, 4, 16}, 3};
        if (!q_set)
            o->queries = 200;
        if (!nb_set)
            o->nb_max = 10000;
        if (!big_set)
            o->big_queries = 0;
    }
    return 0;
}

/* ---- small helpers ------------------------------------------------------------------------ */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int dbl_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted array. */
static double percentile(const double *sorted, size_t n, double p)
{
    size_t r = (size_t)ceil(p * (double)n);
    return n ? sorted[r ? r - 1 : 0] : 0;
}

/* 12345.6 -> "12,346"; below 100 one decimal. */
static const char *fmt_qps(char *buf, size_t cap, double v)
{
    if (!(v >= 0) || v >= 1e15) {
        snprintf(buf, cap, "-");
        return buf;
    }
    if (v < 100) {
        snprintf(buf, cap, "%.1f", v);
        return buf;
    }
    char tmp[32];
    int len = snprintf(tmp, sizeof tmp, "%.0f", v);
    size_t o = 0;
    for (int i = 0; i < len && o + 2 < cap; i++) {
        if (i > 0 && (len - i) % 3 == 0)
            buf[o++] = ',';
        buf[o++] = tmp[i];
    }
    buf[o] = 0;
    return buf;
}

/* "model name (family F model M)": OpenBLAS's kernel choice depends on the model number. */
static void cpu_model(char *buf, size_t cap)
{
    snprintf(buf, cap, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512], name[256] = "unknown CPU";
    int family = -1, model = -1;
    while ((family < 0 || model < 0 || !strcmp(name, "unknown CPU")) &&
           fgets(line, sizeof line, f)) {
        char *p = strchr(line, ':');
        if (!p)
            continue;
        p += 1 + strspn(p + 1, " \t");
        p[strcspn(p, "\n")] = 0;
        if (!strncmp(line, "model name", 10))
            snprintf(name, sizeof name, "%s", p);
        else if (!strncmp(line, "cpu family", 10))
            family = atoi(p);
        else if (!strncmp(line, "model", 5) && strchr(" \t", line[5]))
            model = atoi(p);
    }
    fclose(f);
    snprintf(buf, cap, "%s (family %d model %d)", name, family, model);
}

static long thread_count(void)
{
    long n = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "Threads: %ld", &n) == 1)
            break;
    fclose(f);
    return n;
}

/* OpenMP (libgomp) and OpenBLAS read their settings from the environment when they are loaded,
 * before main: if they are not what the benchmark needs, set them and start again, once. An
 * OPENBLAS_CORETYPE already set is left alone. */
static void pin_one_thread(char **argv)
{
    bool again = false;
    const char *a = getenv("OMP_NUM_THREADS"), *b = getenv("OPENBLAS_NUM_THREADS");
    if (!(a && !strcmp(a, "1") && b && !strcmp(b, "1"))) {
        setenv("OMP_NUM_THREADS", "1", 1);
        setenv("OPENBLAS_NUM_THREADS", "1", 1);
        again = true;
    }
    const char *core;
    if (!getenv("OPENBLAS_CORETYPE") && (core = eng_blas_better_coretype())) {
        setenv("OPENBLAS_CORETYPE", core, 1);
        setenv("BENCH_IVF_CORETYPE_SET", "1", 1); /* for the report */
        again = true;
    }
    if (again) {
        execv("/proc/self/exe", argv);
        fprintf(stderr, "bench_ivf: re-exec failed (%s); pinning threads at run time only\n",
                strerror(errno));
    }
    openblas_set_num_threads(1);
}

static void loadavg(char *buf, size_t cap)
{
    snprintf(buf, cap, "?");
    FILE *f = fopen("/proc/loadavg", "r");
    if (!f)
        return;
    double l1, l5, l15;
    if (fscanf(f, "%lf %lf %lf", &l1, &l5, &l15) == 3)
        snprintf(buf, cap, "%.2f %.2f %.2f", l1, l5, l15);
    fclose(f);
}

/* ---- data --------------------------------------------------------------------------------- */

typedef struct {
    float *x;
    size_t n, d;
    char name[4096];
} vecs;

/* The first existing of DIR/STEM and DIR/STEM.gz. */
static int load_idx_named(const char *dir, const char *stem, vecs *v)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, stem);
    if (access(path, R_OK) != 0)
        snprintf(path, sizeof path, "%s/%s.gz", dir, stem);
    if (app_vecs_load_idx(path, &v->x, &v->n, &v->d) != CDX_OK) {
        fprintf(stderr, "bench_ivf: %s\n", cdx_err_detail());
        return -1;
    }
    snprintf(v->name, sizeof v->name, "%s", path);
    return 0;
}

static int load_path(const char *path, vecs *v)
{
    if (app_vecs_load(path, &v->x, &v->n, &v->d) != CDX_OK) {
        fprintf(stderr, "bench_ivf: %s\n", cdx_err_detail());
        return -1;
    }
    snprintf(v->name, sizeof v->name, "%s", path);
    return 0;
}

/* Labels only sanity-check that the IDX pair belongs together (counts must match). */
static int check_labels(const char *dir, const char *stem, size_t want)
{
    char path[4096];
    uint8_t *lab;
    size_t n;
    snprintf(path, sizeof path, "%s/%s", dir, stem);
    if (access(path, R_OK) != 0)
        snprintf(path, sizeof path, "%s/%s.gz", dir, stem);
    if (access(path, R_OK) != 0)
        return 0; /* optional */
    if (app_vecs_load_idx_labels(path, &lab, &n) != CDX_OK) {
        fprintf(stderr, "bench_ivf: %s\n", cdx_err_detail());
        return -1;
    }
    free(lab);
    if (n != want) {
        fprintf(stderr, "bench_ivf: %s has %zu labels for %zu images\n", path, n, want);
        return -1;
    }
    return 0;
}

/* ---- runs --------------------------------------------------------------------------------- */

typedef struct {
    const bench_sys *sys;
    const char *variant;
    char label[96];
} sys_sel;

typedef struct {
    size_t sel, nlist, nprobe, nq;
    bool big;
    double recall, recall_batch, qps1, qpsb, p50, p99;
} row_t;

typedef struct {
    size_t sel, nlist, nsample;
    bool ok;
    double train_s, add_s;
    char *notes; /* report() output, malloc'd */
} build_t;

typedef struct {
    row_t *rows;
    size_t nrows, caprows;
    build_t *builds;
    size_t nbuilds, capbuilds;
    int failures;
} results;

static int parse_systems(const char *spec, sys_sel *sel, size_t *nsel)
{
    *nsel = 0;
    const char *s = spec;
    while (*s) {
        size_t len = strcspn(s, ",");
        if (len == 0 || len >= sizeof sel->label || *nsel == MAX_RUNS) {
            fprintf(stderr, "bench_ivf: bad --systems '%s'\n", spec);
            return -1;
        }
        sys_sel *e = &sel[*nsel];
        memcpy(e->label, s, len);
        e->label[len] = 0;
        char name[96];
        memcpy(name, e->label, len + 1);
        char *colon = strchr(name, ':');
        e->variant = NULL;
        if (colon) {
            *colon = 0;
            e->variant = e->label + (colon - name) + 1;
        }
        e->sys = NULL;
        for (size_t i = 0; registry[i]; i++)
            if (!strcmp(registry[i]->name, name))
                e->sys = registry[i];
        if (!e->sys) {
            fprintf(stderr, "bench_ivf: system '%s' is not built into this binary%s\n", name,
                    !strcmp(name, "faiss") ? " (libfaiss-dev was missing at configure time)" : "");
            return -1;
        }
        (*nsel)++;
        s += len;
        if (*s == ',')
            s++;
    }
    return 0;
}

static void *grow(void *p, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return p;
    size_t nc = *cap ? *cap * 2 : 64;
    void *q = realloc(p, nc * elem);
    if (!q) {
        fprintf(stderr, "bench_ivf: out of memory\n");
        exit(1);
    }
    *cap = nc;
    return q;
}

typedef struct {
    const vecs *query;
    const int64_t *gt; /* k per query, for the first max(queries, big_queries) queries */
    size_t k;
    int64_t *labels;
    float *dist;
    double *lat;
} search_ctx;

/* One nprobe setting: one at a time, then batched, each `repeat` times. QPS is the median over
 * the repeats (shared machines are noisy); latency percentiles pool every one-at-a-time query;
 * recall comes from the first pass (later passes must not differ: systems are deterministic). */
static int measure(const sys_sel *e, void *s, search_ctx *c, size_t nq, unsigned repeat, row_t *r)
{
    const size_t d = c->query->d, k = c->k;
    double q1[MAX_REPEAT], qb[MAX_REPEAT];
    for (unsigned rep = 0; rep < repeat; rep++) {
        double *lat = c->lat + (size_t)rep * nq;
        double t0 = now_s();
        for (size_t i = 0; i < nq; i++) {
            double a = now_s();
            if (e->sys->search(s, c->query->x + i * d, 1, k, c->labels + i * k, c->dist + i * k))
                return -1;
            lat[i] = now_s() - a;
        }
        q1[rep] = (double)nq / (now_s() - t0);
        if (rep == 0)
            r->recall = app_vecs_recall_at_k(c->labels, c->gt, nq, k);
    }
    for (unsigned rep = 0; rep < repeat; rep++) {
        double t0 = now_s();
        if (e->sys->search(s, c->query->x, nq, k, c->labels, c->dist))
            return -1;
        qb[rep] = (double)nq / (now_s() - t0);
        if (rep == 0)
            r->recall_batch = app_vecs_recall_at_k(c->labels, c->gt, nq, k);
    }
    size_t nlat = (size_t)repeat * nq;
    qsort(c->lat, nlat, sizeof *c->lat, dbl_cmp);
    r->p50 = percentile(c->lat, nlat, 0.50) * 1e3;
    r->p99 = percentile(c->lat, nlat, 0.99) * 1e3;
    qsort(q1, repeat, sizeof *q1, dbl_cmp);
    qsort(qb, repeat, sizeof *qb, dbl_cmp);
    r->qps1 = repeat % 2 ? q1[repeat / 2] : (q1[repeat / 2 - 1] + q1[repeat / 2]) / 2;
    r->qpsb = repeat % 2 ? qb[repeat / 2] : (qb[repeat / 2 - 1] + qb[repeat / 2]) / 2;
    return 0;
}

static char *capture_report(const sys_sel *e, void *s)
{
    char *buf = NULL;
    size_t len = 0;
    if (!e->sys->report)
        return NULL;
    FILE *m = open_memstream(&buf, &len);
    if (!m)
        return NULL;
    e->sys->report(s, m);
    fclose(m);
    return buf;
}

static void run_system(const options *o, const sys_sel *e, size_t seli, const vecs *base,
                       const float *sample, size_t nsample, size_t nlist, search_ctx *c,
                       results *res)
{
    res->builds = grow(res->builds, &res->capbuilds, res->nbuilds, sizeof *res->builds);
    build_t *b = &res->builds[res->nbuilds++];
    *b = (build_t){.sel = seli, .nlist = nlist, .nsample = nsample};
    const char *stage = "create";
    void *s = e->sys->create(base->d, nlist, e->variant);
    if (!s)
        goto failed;
    stage = "train";
    double t0 = now_s();
    if (e->sys->train(s, sample, nsample, o->iters, o->seed))
        goto failed;
    b->train_s = now_s() - t0;
    stage = "add";
    t0 = now_s();
    if (e->sys->add(s, base->x, base->n))
        goto failed;
    b->add_s = now_s() - t0;
    fprintf(stderr, "bench_ivf: %s nlist %zu: train %.2f s, add %.2f s\n", e->label, nlist,
            b->train_s, b->add_s);

    for (int pass = 0; pass < 2; pass++) {
        const size_list *pl = pass ? &o->big_nprobe : &o->nprobe;
        size_t nq = pass ? o->big_queries : o->queries;
        if (nq == 0)
            continue;
        for (size_t i = 0; i < pl->n; i++) {
            size_t nprobe = pl->v[i];
            if (nprobe > nlist)
                continue;
            stage = "search";
            if (e->sys->set_nprobe(s, nprobe))
                goto failed;
            res->rows = grow(res->rows, &res->caprows, res->nrows, sizeof *res->rows);
            row_t *r = &res->rows[res->nrows];
            *r = (row_t){.sel = seli, .nlist = nlist, .nprobe = nprobe, .nq = nq, .big = pass};
            if (measure(e, s, c, nq, o->repeat, r))
                goto failed;
            res->nrows++;
            fprintf(stderr,
                    "bench_ivf: %s nlist %zu nprobe %zu (%zu q): recall %.4f, %.0f QPS, "
                    "batch %.0f QPS\n",
                    e->label, nlist, nprobe, nq, r->recall, r->qps1, r->qpsb);
        }
    }
    b->ok = true;
    b->notes = capture_report(e, s);
    e->sys->destroy(s);
    return;
failed:
    fprintf(stderr, "bench_ivf: %s nlist %zu: %s failed; skipping the rest of this system\n",
            e->label, nlist, stage);
    res->failures++;
    if (s) {
        b->notes = capture_report(e, s);
        e->sys->destroy(s);
    }
    size_t len = strlen(e->label) + strlen(stage) + 64;
    char *note = malloc(len);
    if (note) {
        snprintf(note, len, "- %s nlist %zu: FAILED at %s\n", e->label, nlist, stage);
        free(b->notes);
        b->notes = note;
    }
}

/* The reference row with the same nlist/nprobe/query count, if any. */
static const row_t *reference(const results *res, const sys_sel *sel, const row_t *r)
{
    for (size_t i = 0; i < res->nrows; i++) {
        const row_t *x = &res->rows[i];
        if (!strcmp(sel[x->sel].label, BENCH_REFERENCE) && x->nlist == r->nlist &&
            x->nprobe == r->nprobe && x->nq == r->nq)
            return x;
    }
    return NULL;
}

static const build_t *build_of(const results *res, size_t sel, size_t nlist)
{
    for (size_t i = 0; i < res->nbuilds; i++)
        if (res->builds[i].sel == sel && res->builds[i].nlist == nlist)
            return &res->builds[i];
    return NULL;
}

/* Side by side: nlist, then the sweep before the big runs, then nprobe, then system order. */
static int row_cmp(const void *pa, const void *pb)
{
    const row_t *a = pa, *b = pb;
    if (a->nlist != b->nlist)
        return a->nlist < b->nlist ? -1 : 1;
    if (a->big != b->big)
        return a->big ? 1 : -1;
    if (a->nprobe != b->nprobe)
        return a->nprobe < b->nprobe ? -1 : 1;
    return (a->sel > b->sel) - (a->sel < b->sel);
}

/* ---- output ------------------------------------------------------------------------------- */

typedef struct {
    char cpu[512], blas[4096], blas_config[256], load0[64], load1[64];
    const vecs *base, *query;
    size_t nq_gt;
    double gt_s;
    long threads;
} env_info;

static void write_markdown(FILE *f, const options *o, const env_info *env, const sys_sel *sel,
                           size_t nsel, const results *res)
{
    char b1[32], b2[32], b3[32];
    fprintf(f, "## IVF search, one thread: %s\n\n", o->short_mode ? "short run" : "full run");
    fprintf(f, "- base: %zu x %zu (%s); queries: %s\n", env->base->n, env->base->d, env->base->name,
            env->query->name);
    const char *core = getenv("OPENBLAS_CORETYPE");
    fprintf(f, "- machine: %s; load average %s at the start, %s at the end\n", env->cpu, env->load0,
            env->load1);
    fprintf(f, "- BLAS: %s (%s)%s%s%s\n", env->blas, env->blas_config,
            core ? "; OPENBLAS_CORETYPE=" : "", core ? core : "",
            getenv("BENCH_IVF_CORETYPE_SET") ? " (set by bench_ivf: OpenBLAS had picked its "
                                               "Prescott fallback for this CPU)"
                                             : "");
    fprintf(f,
            "- threads: OMP_NUM_THREADS=%s OPENBLAS_NUM_THREADS=%s; process threads after the "
            "runs: %ld\n",
            getenv("OMP_NUM_THREADS") ? getenv("OMP_NUM_THREADS") : "unset",
            getenv("OPENBLAS_NUM_THREADS") ? getenv("OPENBLAS_NUM_THREADS") : "unset",
            env->threads);
    fprintf(f,
            "- ground truth: exact L2 top-%zu (sgemm screen + double rescoring, ties by "
            "smaller index) for %zu queries: %.2f s\n",
            o->k, env->nq_gt, env->gt_s);
    fprintf(f,
            "- training: one sample of min(nb, %zu x nlist) base vectors drawn with seed "
            "%" PRIu64 ", the same for every system, %u k-means iterations\n",
            o->sample_per_list, o->seed, o->iters);
    fprintf(f, "- search: QPS %s; p50/p99 over every one-at-a-time query\n\n",
            o->repeat > 1 ? "is the median of the repeated runs" : "from one timed run");

    fprintf(f, "| system | nlist | train sample | k-means iters | train s | add s | "
               "add vectors/s |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for (size_t i = 0; i < res->nbuilds; i++) {
        const build_t *b = &res->builds[i];
        if (!b->ok) {
            fprintf(f, "| %s | %zu | %zu | %u | failed | | |\n", sel[b->sel].label, b->nlist,
                    b->nsample, o->iters);
            continue;
        }
        fprintf(f, "| %s | %zu | %zu | %u | %.2f | %.2f | %s |\n", sel[b->sel].label, b->nlist,
                b->nsample, o->iters, b->train_s, b->add_s,
                fmt_qps(b1, sizeof b1, (double)env->base->n / b->add_s));
    }

    fprintf(f,
            "\n| system | nlist | nprobe | queries | recall@%zu | QPS 1-at-a-time | p50 ms | "
            "p99 ms | QPS batch | x %s 1-at-a-time | x %s batch |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            o->k, BENCH_REFERENCE, BENCH_REFERENCE);
    for (size_t i = 0; i < res->nrows; i++) {
        const row_t *r = &res->rows[i];
        const row_t *ref = reference(res, sel, r);
        char r1[16] = "-", r2[16] = "-";
        if (ref) {
            snprintf(r1, sizeof r1, "%.2f", r->qps1 / ref->qps1);
            snprintf(r2, sizeof r2, "%.2f", r->qpsb / ref->qpsb);
        }
        fprintf(f, "| %s | %zu | %zu | %zu | %.4f | %s | %.3f | %.3f | %s | %s | %s |\n",
                sel[r->sel].label, r->nlist, r->nprobe, r->nq, r->recall,
                fmt_qps(b2, sizeof b2, r->qps1), r->p50, r->p99, fmt_qps(b3, sizeof b3, r->qpsb),
                r1, r2);
    }

    bool notes = false;
    for (size_t i = 0; i < res->nrows; i++) {
        const row_t *r = &res->rows[i];
        if (fabs(r->recall - r->recall_batch) > 1e-9) {
            if (!notes)
                fprintf(f, "\n");
            notes = true;
            fprintf(f,
                    "- note: %s nlist %zu nprobe %zu: batched recall %.4f differs from "
                    "one-at-a-time %.4f\n",
                    sel[r->sel].label, r->nlist, r->nprobe, r->recall_batch, r->recall);
        }
    }
    for (size_t i = 0; i < res->nbuilds; i++) {
        if (res->builds[i].notes) {
            if (!notes)
                fprintf(f, "\n");
            notes = true;
            fputs(res->builds[i].notes, f);
        }
    }
    if (nsel == 0)
        fprintf(f, "\n- no systems ran: %s\n",
                registry[0] ? "--systems was empty"
                            : "this bench_ivf was built without Faiss (libfaiss-dev missing)");
}

static int write_csv(const char *path, const options *o, const env_info *env, const sys_sel *sel,
                     const results *res)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "bench_ivf: %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f, "system,nlist,nprobe,queries,k,recall,recall_batch,qps_single,p50_ms,p99_ms,"
               "qps_batch,ratio_single,ratio_batch,train_sample,iters,train_s,add_s,add_per_s\n");
    for (size_t i = 0; i < res->nrows; i++) {
        const row_t *r = &res->rows[i];
        const row_t *ref = reference(res, sel, r);
        const build_t *b = build_of(res, r->sel, r->nlist);
        fprintf(f, "%s,%zu,%zu,%zu,%zu,%.6f,%.6f,%.2f,%.4f,%.4f,%.2f,", sel[r->sel].label, r->nlist,
                r->nprobe, r->nq, o->k, r->recall, r->recall_batch, r->qps1, r->p50, r->p99,
                r->qpsb);
        if (ref)
            fprintf(f, "%.4f,%.4f,", r->qps1 / ref->qps1, r->qpsb / ref->qpsb);
        else
            fprintf(f, ",,");
        fprintf(f, "%zu,%u,%.4f,%.4f,%.1f\n", b ? b->nsample : 0, o->iters, b ? b->train_s : 0,
                b ? b->add_s : 0, b && b->add_s > 0 ? (double)env->base->n / b->add_s : 0);
    }
    if (fclose(f) != 0) {
        fprintf(stderr, "bench_ivf: %s: write failed\n", path);
        return -1;
    }
    return 0;
}

/* gnuplot single-quoted string: a quote is written twice. */
static void gp_quote(FILE *g, const char *s)
{
    fputc('\'', g);
    for (; *s; s++) {
        if (*s == '\'')
            fputc('\'', g);
        fputc(*s, g);
    }
    fputc('\'', g);
}

/* recall@k on x, one-at-a-time QPS on a log y axis, one line per system and nlist (sweep rows),
 * each point labelled with its nprobe. */
static int write_plot(const char *path, const options *o, const sys_sel *sel, size_t nsel,
                      const results *res, const env_info *env)
{
    void (*old)(int) = signal(SIGPIPE, SIG_IGN); /* a dying gnuplot must not kill the bench */
    FILE *g = popen("gnuplot", "w");
    if (!g) {
        signal(SIGPIPE, old);
        fprintf(stderr, "bench_ivf: cannot run gnuplot: %s\n", strerror(errno));
        return -1;
    }
    fprintf(g, "set terminal pngcairo size 1100,700 font 'sans,11' noenhanced\nset output ");
    gp_quote(g, path);
    fprintf(g,
            "\nset title 'IVF on %zu x %zu vectors, k = %zu, one thread: recall vs QPS "
            "(labels: nprobe)'\n",
            env->base->n, env->base->d, o->k);
    fprintf(g,
            "set xlabel 'recall@%zu'\nset ylabel 'queries/s, one query at a time (log)'\n"
            "set logscale y\nset format y '%%.0f'\n"
            "set ytics add (2, 5, 20, 50, 200, 500, 2000, 5000, 20000, 50000, 200000)\n"
            "set grid xtics ytics mytics\nset key outside right top\n",
            o->k);
    size_t nseries = 0;
    char titles[64][128];
    for (size_t si = 0; si < nsel; si++) {
        for (size_t li = 0; li < o->nlist.n && nseries < 64; li++) {
            bool any = false;
            for (size_t i = 0; i < res->nrows; i++) {
                const row_t *r = &res->rows[i];
                if (r->sel != si || r->nlist != o->nlist.v[li] || r->big)
                    continue;
                if (!any)
                    fprintf(g, "$d%zu << EOD\n", nseries);
                any = true;
                fprintf(g, "%.6f %.3f %zu\n", r->recall, r->qps1, r->nprobe);
            }
            if (any) {
                fprintf(g, "EOD\n");
                snprintf(titles[nseries], sizeof titles[nseries], "%s nlist %zu", sel[si].label,
                         o->nlist.v[li]);
                nseries++;
            }
        }
    }
    if (nseries == 0) {
        fprintf(g, "set xrange [0:1]\nset yrange [1:10]\nplot NaN title 'no data'\n");
    } else {
        fprintf(g, "plot ");
        for (size_t i = 0; i < nseries; i++) {
            fprintf(g, "%s$d%zu using 1:2 with linespoints lw 2 pt 7 ps 0.8 title ",
                    i ? ", \\\n     " : "", i);
            gp_quote(g, titles[i]);
            fprintf(g,
                    ", $d%zu using 1:2:3 with labels offset char 0.6,0.6 font ',8' "
                    "notitle",
                    i);
        }
        fprintf(g, "\n");
    }
    int st = pclose(g);
    signal(SIGPIPE, old);
    if (st != 0) {
        fprintf(stderr, "bench_ivf: gnuplot failed (status %d)\n", st);
        return -1;
    }
    return 0;
}

/* ---- main --------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    options o;
    if (parse_args(argc, argv, &o) != 0)
        return 2;
    pin_one_thread(argv);

    sys_sel sel[MAX_RUNS];
    size_t nsel;
    if (parse_systems(o.systems, sel, &nsel) != 0)
        return 2;
    if (nsel == 0)
        fprintf(stderr, "bench_ivf: no systems to run (built in:%s); computing ground truth only\n",
                registry[0] ? "" : " none: libfaiss-dev was missing at configure time");

    vecs base = {0}, query = {0};
    int rc = 1;
    if (o.base_path || o.query_path) {
        if (!o.base_path || !o.query_path) {
            fprintf(stderr, "bench_ivf: --base and --query go together\n");
            return 2;
        }
        if (load_path(o.base_path, &base) || load_path(o.query_path, &query))
            goto out;
    } else {
        if (load_idx_named(o.data_dir, "train-images-idx3-ubyte", &base) ||
            load_idx_named(o.data_dir, "t10k-images-idx3-ubyte", &query) ||
            check_labels(o.data_dir, "train-labels-idx1-ubyte", base.n) ||
            check_labels(o.data_dir, "t10k-labels-idx1-ubyte", query.n))
            goto out;
    }
    if (base.d != query.d) {
        fprintf(stderr, "bench_ivf: base has %zu dims, queries %zu\n", base.d, query.d);
        goto out;
    }
    if (o.nb_max && o.nb_max < base.n)
        base.n = o.nb_max; /* the first nb rows; the tail stays allocated, unused */
    if (o.queries > query.n || o.big_queries > query.n) {
        fprintf(stderr, "bench_ivf: only %zu queries available; clamping\n", query.n);
        if (o.queries > query.n)
            o.queries = query.n;
        if (o.big_queries > query.n)
            o.big_queries = query.n;
    }

    env_info env = {.base = &base, .query = &query};
    cpu_model(env.cpu, sizeof env.cpu);
    loadavg(env.load0, sizeof env.load0);
    Dl_info dli;
    snprintf(env.blas, sizeof env.blas, "unknown");
    if (dladdr((void *)cblas_sgemm, &dli) && dli.dli_fname) {
        char real[4096];
        snprintf(env.blas, sizeof env.blas, "%s",
                 realpath(dli.dli_fname, real) ? real : dli.dli_fname);
    }
    snprintf(env.blas_config, sizeof env.blas_config, "%s", openblas_get_config());

    /* Ground truth for the most queries any run uses (runs use a prefix of the query set). */
    env.nq_gt = o.queries > o.big_queries ? o.queries : o.big_queries;
    int64_t *gt = malloc(env.nq_gt * o.k * sizeof *gt);
    search_ctx ctx = {
        .query = &query,
        .gt = gt,
        .k = o.k,
        .labels = malloc(env.nq_gt * o.k * sizeof *ctx.labels),
        .dist = malloc(env.nq_gt * o.k * sizeof *ctx.dist),
        .lat = malloc(env.nq_gt * o.repeat * sizeof *ctx.lat),
    };
    results res = {0};
    float *sample = NULL;
    size_t *perm = malloc(base.n * sizeof *perm);
    if (!gt || !ctx.labels || !ctx.dist || !ctx.lat || !perm) {
        fprintf(stderr, "bench_ivf: out of memory\n");
        goto out_free;
    }
    fprintf(stderr, "bench_ivf: ground truth for %zu queries x %zu base vectors...\n", env.nq_gt,
            base.n);
    double t0 = now_s();
    if (app_vecs_ground_truth(base.x, base.n, query.x, env.nq_gt, base.d, o.k, gt) != CDX_OK) {
        fprintf(stderr, "bench_ivf: ground truth: out of memory\n");
        goto out_free;
    }
    env.gt_s = now_s() - t0;
    fprintf(stderr, "bench_ivf: ground truth: %.2f s\n", env.gt_s);

    for (size_t li = 0; li < o.nlist.n; li++) {
        size_t nlist = o.nlist.v[li];
        /* One seeded sample per nlist (partial Fisher-Yates), handed to every system. */
        size_t m = o.sample_per_list * nlist < base.n ? o.sample_per_list * nlist : base.n;
        uint64_t rng = o.seed;
        for (size_t i = 0; i < base.n; i++)
            perm[i] = i;
        for (size_t i = 0; i < m; i++) {
            size_t j = i + (size_t)(fx_splitmix64(&rng) % (base.n - i));
            size_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        free(sample);
        sample = malloc(m * base.d * sizeof *sample);
        if (!sample) {
            fprintf(stderr, "bench_ivf: out of memory\n");
            goto out_free;
        }
        for (size_t i = 0; i < m; i++)
            memcpy(sample + i * base.d, base.x + perm[i] * base.d, base.d * sizeof *sample);
        for (size_t si = 0; si < nsel; si++)
            run_system(&o, &sel[si], si, &base, sample, m, nlist, &ctx, &res);
    }
    qsort(res.rows, res.nrows, sizeof *res.rows, row_cmp);
    env.threads = thread_count();
    loadavg(env.load1, sizeof env.load1);

    char *md = NULL;
    size_t mdlen = 0;
    FILE *mf = open_memstream(&md, &mdlen);
    if (!mf)
        goto out_free;
    write_markdown(mf, &o, &env, sel, nsel, &res);
    fclose(mf);
    fputs(md, stdout);
    fflush(stdout);
    rc = res.failures ? 1 : 0;
    if (o.out_path) {
        FILE *f = fopen(o.out_path, "w");
        if (!f || fputs(md, f) < 0 || fclose(f) != 0) {
            fprintf(stderr, "bench_ivf: cannot write %s\n", o.out_path);
            rc = 1;
        }
    }
    free(md);
    char csv_buf[4096];
    const char *csv = o.csv_path;
    if (!csv && o.out_path) {
        snprintf(csv_buf, sizeof csv_buf, "%s", o.out_path);
        char *dot = strrchr(csv_buf, '.'), *slash = strrchr(csv_buf, '/');
        if (dot && (!slash || dot > slash))
            *dot = 0;
        if (strlen(csv_buf) + 5 < sizeof csv_buf)
            strcat(csv_buf, ".csv");
        csv = csv_buf;
    }
    if (csv && write_csv(csv, &o, &env, sel, &res) != 0)
        rc = 1;
    if (o.plot_path && write_plot(o.plot_path, &o, sel, nsel, &res, &env) != 0)
        fprintf(stderr, "bench_ivf: no plot (the tables above are complete)\n");

out_free:
    for (size_t i = 0; i < res.nbuilds; i++)
        free(res.builds[i].notes);
    free(res.builds);
    free(res.rows);
    free(sample);
    free(perm);
    free(gt);
    free(ctx.labels);
    free(ctx.dist);
    free(ctx.lat);
out:
    free(base.x);
    free(query.x);
    return rc;
}
