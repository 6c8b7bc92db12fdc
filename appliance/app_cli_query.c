/*
 * cipherdex query: one vector (results as a table or --json), or a file of
 * query vectors (a batch query: one JSON line of results per query, in file
 * order, to stdout or --out FILE; QPS, latency percentiles and recall@k
 * against exact ground truth computed from a base file go to a summary on
 * stderr), over one or --clients N connections.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app_cli.h"
#include "app_vecs.h"
#include "cdx_limits.h"
#include "cdx_time.h"

/*
 * The batch results: each worker hands in query i's JSON line, and the lines
 * are written in query order (a line waits for the ones before it, so with
 * --clients N at most about N lines wait).
 */
typedef struct qout {
    pthread_mutex_t mu;
    FILE *f;        /* NULL: results not written (--no-results) */
    char **pending; /* nq lines not yet written */
    size_t next, nq, written;
} qout;

static void qout_put(qout *o, size_t i, char *line)
{
    pthread_mutex_lock(&o->mu);
    o->pending[i] = line;
    while (o->next < o->nq && o->pending[o->next]) {
        fputs(o->pending[o->next], o->f);
        fputc('\n', o->f);
        free(o->pending[o->next]);
        o->pending[o->next++] = NULL;
        o->written++;
    }
    pthread_mutex_unlock(&o->mu);
}

/* One client's share of a query run: queries first, first + stride, ... */
typedef struct qjob {
    const char *index, *filter, *prefix;
    float *q;
    size_t d, nq, plen;
    uint32_t top_k, probes, max_probes, stride, first;
    uint32_t probed; /* the most clusters any answer said it probed (QueryResponse.n_probes) */
    unsigned inc;
    double *lat, t0;
    int64_t *res;
    json_t *jout;
    bool print, json;
    size_t width; /* table cells: characters, 0 = whole (--full) */
    qout *out;    /* --file: where the result lines go, or NULL */
    app_client *c;
    cdx_err err;
    size_t failed_at; /* the query that failed (when err) */
} qjob;

/* Result ids prefix<N> as row numbers N (for recall); -1 for anything else. */
static void record_ids(qjob *j, size_t i, const Cipherdex__V1__QueryResult *x)
{
    size_t plen = j->plen, top_k = j->top_k;
    for (size_t r2 = 0; r2 < top_k; r2++) {
        j->res[i * top_k + r2] = -1;
        if (r2 < x->n_ids && x->ids[r2].len > plen && !memcmp(x->ids[r2].data, j->prefix, plen)) {
            char tmp[32];
            size_t l = x->ids[r2].len - plen < 31 ? x->ids[r2].len - plen : 31;
            memcpy(tmp, x->ids[r2].data + plen, l);
            tmp[l] = '\0';
            j->res[i * top_k + r2] = strtoll(tmp, NULL, 10);
        }
    }
}

/* Hit k of a result as JSON: id, distance and the included fields. */
static json_t *hit_json(const Cipherdex__V1__QueryResult *x, size_t k, unsigned inc)
{
    json_t *h =
        json_pack("{s:o,s:o}", "id", cli_jstr(x->ids[k]), "distance", cli_jfloat(x->distances[k]));
    if (inc & APP_INCLUDE_METADATA)
        cli_jset_metadata(h, k < x->n_metadata ? x->metadata[k] : (ProtobufCBinaryData){0});
    if (inc & APP_INCLUDE_CONTENTS)
        cli_jset_contents(h, k < x->n_contents ? x->contents[k] : (ProtobufCBinaryData){0});
    if (inc & APP_INCLUDE_VECTORS) {
        size_t d = x->n_ids ? x->n_vectors / x->n_ids : 0;
        json_object_set_new(h, "vector", cli_jvector(x->vectors + k * d, d));
    }
    return h;
}

/* The results of a single --vector query: a table, or hits added to j->jout; probed: the
 * response's n_probes (a note on stderr when fewer than top_k came back). */
static void print_results(qjob *j, const Cipherdex__V1__QueryResult *x, uint32_t probed)
{
    if (x->n_ids < j->top_k && probed)
        fprintf(stderr, "note: %zu result%s for top-k %u with %u cluster%s probed; %s\n", x->n_ids,
                x->n_ids == 1 ? "" : "s", j->top_k, probed, probed == 1 ? "" : "s",
                j->filter ? "a filter widens its probes up to --max-probes (default: the "
                            "server's [engine] max_probes, else all clusters)"
                          : "--probes N searches more clusters");
    if (j->json) {
        for (size_t k = 0; k < x->n_ids; k++)
            json_array_append_new(j->jout, hit_json(x, k, j->inc));
        return;
    }
    const char *header[6] = {"RANK", "ID", "DISTANCE"};
    int nc = 3;
    if (j->inc & APP_INCLUDE_METADATA)
        header[nc++] = "METADATA";
    if (j->inc & APP_INCLUDE_CONTENTS)
        header[nc++] = "CONTENTS";
    if (j->inc & APP_INCLUDE_VECTORS)
        header[nc++] = "VECTOR";
    cli_table *t = cli_table_new(nc, header);
    bool cut = false;
    size_t d = x->n_ids ? x->n_vectors / x->n_ids : 0;
    for (size_t k = 0; t && k < x->n_ids; k++) {
        char *row[6], num[32];
        int c = 0;
        snprintf(num, sizeof(num), "%zu", k + 1);
        row[c++] = strdup(num);
        row[c++] = cli_cell_text(x->ids[k], 0, &cut);
        snprintf(num, sizeof(num), "%.6g", (double)x->distances[k]);
        row[c++] = strdup(num);
        ProtobufCBinaryData none = {0};
        if (j->inc & APP_INCLUDE_METADATA)
            row[c++] = cli_cell_text(k < x->n_metadata ? x->metadata[k] : none, j->width, &cut);
        if (j->inc & APP_INCLUDE_CONTENTS)
            row[c++] = cli_cell_contents(k < x->n_contents ? x->contents[k] : none, j->width, &cut);
        if (j->inc & APP_INCLUDE_VECTORS)
            row[c++] = cli_cell_vector(x->vectors + k * d, d, j->width, &cut);
        cli_table_add(t, row);
    }
    if (t)
        cli_table_print(t, stdout);
    cli_table_free(t);
    cli_cut_note(cut, j->width);
}

/*
 * Query i's line of a batch run: {"query": i, "ids": [...], "distances": [...]}, and with
 * --include "results": [hits as `query --json` prints them].
 */
static void batch_line(qjob *j, size_t i, const Cipherdex__V1__QueryResult *x)
{
    json_t *ids = json_array(), *dist = json_array();
    for (size_t k = 0; k < x->n_ids; k++) {
        json_array_append_new(ids, cli_jstr(x->ids[k]));
        json_array_append_new(dist, cli_jfloat(x->distances[k]));
    }
    json_t *o = json_pack("{s:I,s:o,s:o}", "query", (json_int_t)i, "ids", ids, "distances", dist);
    if (j->inc) {
        json_t *hits = json_array();
        for (size_t k = 0; k < x->n_ids; k++)
            json_array_append_new(hits, hit_json(x, k, j->inc));
        json_object_set_new(o, "results", hits);
    }
    char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    json_decref(o);
    qout_put(j->out, i, line ? line : strdup("{}"));
}

static void query_worker(qjob *j)
{
    const app_query_spec base = {.n_floats = j->d,
                                 .top_k = j->top_k,
                                 .n_probes = j->probes,
                                 .max_probes = j->max_probes,
                                 .filter = j->filter,
                                 .include = j->inc};
    for (size_t i = j->first; i < j->nq && !j->err; i += j->stride) {
        app_query_spec qs = base;
        qs.vectors = j->q + i * j->d;
        wire_response *w = NULL;
        double t1 = cdx_mono_s();
        cdx_err e = app_client_query(j->c, j->index, &qs, &w);
        j->lat[i] = cdx_mono_s() - t1;
        if (e) {
            j->err = e;
            j->failed_at = i;
            wire_response_free(w);
            break;
        }
        const Cipherdex__V1__QueryResult *x = wire_response_msg(w)->query->results[0];
        if (wire_response_msg(w)->query->n_probes > j->probed)
            j->probed = wire_response_msg(w)->query->n_probes;
        if (j->res)
            record_ids(j, i, x);
        if (j->print) /* one vector: print its results */
            print_results(j, x, wire_response_msg(w)->query->n_probes);
        else if (j->out && j->out->f)
            batch_line(j, i, x);
        wire_response_free(w);
        if (j->first == 0)
            cli_progress("query", i + 1, j->nq, j->t0);
    }
}

static void *query_thread(void *arg)
{
    query_worker(arg);
    return NULL;
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Concurrent clients: each its own connection, queries dealt round-robin. */
static cdx_err run_clients(const cli *x, qjob *base, uint32_t clients)
{
    cdx_err e = CDX_OK;
    pthread_t *th = calloc(clients, sizeof(pthread_t));
    qjob *jobs = calloc(clients, sizeof(qjob));
    for (uint32_t t = 0; t < clients; t++) {
        jobs[t] = *base;
        jobs[t].first = t;
        jobs[t].c = NULL;
        jobs[t].err = app_client_connect(&x->conn, &jobs[t].c);
    }
    base->t0 = cdx_mono_s();
    for (uint32_t t = 0; t < clients; t++) {
        jobs[t].t0 = base->t0;
        if (!jobs[t].err)
            pthread_create(&th[t], NULL, query_thread, &jobs[t]);
    }
    for (uint32_t t = 0; t < clients; t++) {
        if (!jobs[t].c)
            continue;
        pthread_join(th[t], NULL);
        app_client_free(jobs[t].c);
    }
    for (uint32_t t = 0; t < clients; t++) {
        if (jobs[t].err && (!e || jobs[t].failed_at < base->failed_at)) {
            e = jobs[t].err;
            base->failed_at = jobs[t].failed_at;
        }
        if (jobs[t].probed > base->probed)
            base->probed = jobs[t].probed;
    }
    free(th);
    free(jobs);
    return e;
}

/* --vector "x,y,...": one query vector (a usage error exits through the caller). */
static int parse_vector(const char *vec, float **out, size_t *d)
{
    size_t cap = 16;
    float *q = malloc(cap * sizeof(float));
    *d = 0;
    for (char *p = (char *)vec, *end; *p; p = end) {
        while (*p == ',' || *p == ' ' || *p == '[' || *p == ']')
            p++;
        if (!*p)
            break;
        float v = strtof(p, &end);
        if (end == p) {
            free(q);
            return cli_usage("--vector: `%s` is not a list of numbers", vec);
        }
        if (*d == cap)
            q = realloc(q, (cap *= 2) * sizeof(float));
        q[(*d)++] = v;
    }
    *out = q;
    return 0;
}

/* The summary of a --file run, on stderr: QPS, p50/p99, recall, where the results went. */
static void report_run(const cli *x, double *lat, size_t nq, uint32_t clients, double el,
                       const int64_t *res, const int64_t *gt, uint32_t top_k, const char *out,
                       size_t written, const qjob *job)
{
    qsort(lat, nq, sizeof(double), cmp_dbl);
    double p50 = nq ? lat[(nq - 1) / 2] : 0,
           p99 = nq ? lat[(size_t)ceil(0.99 * (double)nq) - 1] : 0;
    double recall = gt ? app_vecs_recall_at_k(res, gt, nq, top_k) : -1;
    if (x->json) {
        json_t *j =
            json_pack("{s:I,s:i,s:f,s:f,s:f,s:I,s:s?}", "queries", (json_int_t)nq, "clients",
                      (int)clients, "qps", el > 0 ? nq / el : 0.0, "p50_ms", p50 * 1e3, "p99_ms",
                      p99 * 1e3, "results_written", (json_int_t)written, "out", out);
        if (gt)
            json_object_set_new(j, "recall_at_k", json_real(recall));
        json_object_set_new(j, "n_probes", json_integer(job->probed));
        cli_json_line(stderr, j);
    } else {
        fprintf(stderr,
                "%zu queries in %.2f s: %.0f QPS (%u client%s, one query per request), "
                "p50 %.3f ms, p99 %.3f ms\n",
                nq, el, el > 0 ? nq / el : 0.0, clients, clients > 1 ? "s" : "", p50 * 1e3,
                p99 * 1e3);
        if (gt)
            fprintf(stderr, "recall@%u against exact ground truth: %.4f\n", top_k, recall);
        if (job->probed) /* QueryResponse.n_probes: the most any query reported */
            fprintf(stderr, "clusters probed per query: %s%u (%s)\n", job->filter ? "up to " : "",
                    job->probed,
                    job->filter   ? "widened where fewer than top-k matched the filter"
                    : job->probes ? "--probes, at most the index's clusters"
                                  : "the server's automatic count");
        if (out)
            fprintf(stderr, "results: %zu lines (JSON, one per query) in %s\n", written, out);
    }
}

int cli_query(cli *x, cli_args *a)
{
    if (a->i >= a->n)
        return cli_usage("query needs an index name");
    const char *index = a->v[a->i++];
    const char *file = NULL, *vec = NULL, *filter = NULL, *gt_base = NULL, *prefix = "";
    uint32_t top_k = 10, probes = 0, max_probes = 0, clients = 1;
    const char *out = NULL;
    uint64_t limit = 0;
    unsigned inc = 0; /* ids and distances only */
    size_t width = CDX_CLI_CELL_WIDTH;
    bool no_results = false;
    for (; a->i < a->n; a->i++) {
        const char *o = a->v[a->i];
        if (!strcmp(o, "--file"))
            file = cli_opt_value(a, o);
        else if (!strcmp(o, "--vector"))
            vec = cli_opt_value(a, o);
        else if (!strcmp(o, "--filter"))
            filter = cli_opt_value(a, o);
        else if (!strcmp(o, "--ground-truth"))
            gt_base = cli_opt_value(a, o);
        else if (!strcmp(o, "--id-prefix"))
            prefix = cli_opt_value(a, o);
        else if (!strcmp(o, "--out"))
            out = cli_opt_value(a, o);
        else if (!strcmp(o, "--no-results"))
            no_results = true;
        else if (!strcmp(o, "--full"))
            width = 0;
        else if (!strcmp(o, "--include")) {
            int rc = cli_include_opt(cli_opt_value(a, o), &inc);
            if (rc)
                return rc;
        } else if (!strcmp(o, "--top-k")) {
            if (!cdx_parse_u32(cli_opt_value(a, o), &top_k))
                return cli_usage("--top-k needs a number");
        } else if (!strcmp(o, "--probes")) {
            if (!cdx_parse_u32(cli_opt_value(a, o), &probes))
                return cli_usage("--probes needs a number");
        } else if (!strcmp(o, "--max-probes")) {
            if (!cdx_parse_u32(cli_opt_value(a, o), &max_probes))
                return cli_usage("--max-probes needs a number");
        } else if (!strcmp(o, "--limit")) {
            if (!cdx_parse_u64(cli_opt_value(a, o), &limit))
                return cli_usage("--limit needs a number");
        } else if (!strcmp(o, "--clients")) {
            if (!cdx_parse_u32(cli_opt_value(a, o), &clients) || !clients || clients > 256)
                return cli_usage("--clients needs 1..256");
        } else
            return cli_usage("query: unknown option %s", o);
    }
    if (vec && file)
        return cli_usage("query takes --vector or --file, not both");
    if ((out || no_results) && !file)
        return cli_usage("--out and --no-results go with --file (a batch query)");
    if (out && no_results)
        return cli_usage("--out or --no-results, not both");
    float *q = NULL;
    size_t nq = 0, d = 0;
    if (vec) {
        int rc = parse_vector(vec, &q, &d);
        if (rc)
            return rc;
        nq = 1;
    } else if (file) {
        if (app_vecs_load(file, &q, &nq, &d)) {
            fprintf(stderr, "cipherdex: %s\n", cdx_err_detail());
            return 1;
        }
        if (limit && limit < nq)
            nq = (size_t)limit;
    } else {
        return cli_usage("query needs --vector \"x,y,...\" or --file F");
    }
    int64_t *gt = NULL;
    if (gt_base) { /* exact top-k over the base file, for recall@k */
        float *base = NULL;
        size_t nb = 0, db = 0;
        cdx_err le = app_vecs_load(gt_base, &base, &nb, &db);
        if (le || db != d) {
            fprintf(stderr, "cipherdex: ground truth: %s\n",
                    le ? cdx_err_detail() : "dimension differs");
            free(base);
            return 1;
        }
        gt = malloc(nq * top_k * sizeof(int64_t));
        if (isatty(2))
            fprintf(stderr, "computing exact ground truth (%zu x %zu)...\n", nq, nb);
        cdx_err ge = app_vecs_ground_truth(base, nb, q, nq, d, top_k, gt);
        free(base);
        if (ge) {
            fprintf(stderr, "cipherdex: ground truth: %s\n", cdx_err_detail());
            free(gt);
            free(q);
            return 1;
        }
    }
    /* A batch query writes its results: stdout, or --out FILE (opened before any query). */
    qout qo = {.f = NULL, .nq = nq};
    pthread_mutex_init(&qo.mu, NULL);
    if (file && !no_results) {
        qo.f = out && strcmp(out, "-") ? fopen(out, "w") : stdout;
        qo.pending = calloc(nq ? nq : 1, sizeof(char *));
        if (!qo.f || !qo.pending) {
            fprintf(stderr, "cipherdex: --out %s: %s\n", out, strerror(errno));
            free(qo.pending);
            pthread_mutex_destroy(&qo.mu);
            free(gt);
            free(q);
            return 1;
        }
    }
    double *lat = malloc((nq ? nq : 1) * sizeof(double));
    int64_t *res = gt ? malloc(nq * top_k * sizeof(int64_t)) : NULL;
    json_t *jout = json_array();
    cdx_err e = CDX_OK;
    qjob base = {.index = index,
                 .q = q,
                 .d = d,
                 .nq = nq,
                 .top_k = top_k,
                 .probes = probes,
                 .max_probes = max_probes,
                 .filter = filter,
                 .inc = inc,
                 .prefix = prefix,
                 .plen = strlen(prefix),
                 .lat = lat,
                 .res = res,
                 .jout = jout,
                 .print = !file,
                 .json = x->json,
                 .width = width,
                 .out = file ? &qo : NULL,
                 .t0 = cdx_mono_s(),
                 .stride = clients,
                 .c = x->c};
    if (clients <= 1) {
        query_worker(&base);
        e = base.err;
    } else {
        e = run_clients(x, &base, clients);
    }
    double el = cdx_mono_s() - base.t0;
    int rc = 0;
    const char *outname = qo.f ? (qo.f == stdout ? "stdout" : out) : NULL;
    if (qo.f && qo.f != stdout) {
        if (fclose(qo.f) && !e)
            e = cdx_fail(CDX_ERR_INTERNAL, "writing %s: %s", out, strerror(errno));
    } else if (qo.f && (fflush(stdout) || ferror(stdout)) && !e) {
        e = cdx_fail(CDX_ERR_INTERNAL, "writing the results to stdout failed");
    }
    if (e) {
        if (file && base.failed_at < nq) {
            fprintf(stderr, "cipherdex: query %zu of %s (counted from 0) failed", base.failed_at,
                    file);
            if (qo.f)
                fprintf(stderr, "; the first %zu results are in %s", qo.written, outname);
            fprintf(stderr, "\n");
        }
        rc = cli_fail(x, e);
    } else if (file) {
        report_run(x, lat, nq, clients, el, res, gt, top_k, outname, qo.written, &base);
    } else if (x->json) {
        cli_print_json(json_pack("{s:O,s:i}", "results", jout, "n_probes", (int)base.probed));
    }
    for (size_t i = 0; qo.pending && i < nq; i++)
        free(qo.pending[i]);
    free(qo.pending);
    pthread_mutex_destroy(&qo.mu);
    json_decref(jout);
    free(q);
    free(gt);
    free(res);
    free(lat);
    return rc;
}
