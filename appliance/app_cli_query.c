/*
 * cipherdex query: one vector (results printed), or a file of query vectors
 * (QPS and latency percentiles), over one or --clients N connections, with
 * recall@k against exact ground truth computed from a base file.
 */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app_cli.h"
#include "app_vecs.h"
#include "cdx_time.h"

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
    app_client *c;
    cdx_err err;
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
        for (size_t k = 0; k < x->n_ids; k++) {
            json_t *h = json_pack("{s:o,s:f}", "id", cli_jstr(x->ids[k]), "distance",
                                  (double)x->distances[k]);
            if (x->n_metadata > k)
                json_object_set_new(h, "metadata", cli_jstr(x->metadata[k]));
            json_array_append_new(j->jout, h);
        }
        return;
    }
    printf("%-4s %-40s %12s%s\n", "RANK", "ID", "DISTANCE", x->n_metadata ? "  METADATA" : "");
    for (size_t k = 0; k < x->n_ids; k++)
        printf("%-4zu %-40.*s %12.6g%s%.*s\n", k + 1, (int)x->ids[k].len, x->ids[k].data,
               x->distances[k], x->n_metadata > k ? "  " : "",
               x->n_metadata > k ? (int)x->metadata[k].len : 0,
               x->n_metadata > k ? (const char *)x->metadata[k].data : "");
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
        if (!e)
            e = jobs[t].err;
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

/* QPS, p50/p99 and recall of a --file run. */
static void report_run(const cli *x, double *lat, size_t nq, uint32_t clients, double el,
                       const int64_t *res, const int64_t *gt, uint32_t top_k, const qjob *job)
{
    qsort(lat, nq, sizeof(double), cmp_dbl);
    double p50 = lat[(nq - 1) / 2], p99 = lat[(size_t)ceil(0.99 * (double)nq) - 1];
    double recall = gt ? app_vecs_recall_at_k(res, gt, nq, top_k) : -1;
    if (x->json) {
        json_t *j =
            json_pack("{s:I,s:i,s:f,s:f,s:f}", "queries", (json_int_t)nq, "clients", (int)clients,
                      "qps", el > 0 ? nq / el : 0.0, "p50_ms", p50 * 1e3, "p99_ms", p99 * 1e3);
        if (gt)
            json_object_set_new(j, "recall_at_k", json_real(recall));
        json_object_set_new(j, "n_probes", json_integer(job->probed));
        cli_print_json(j);
    } else {
        printf("%zu queries in %.2f s: %.0f QPS (%u client%s, one query per request), "
               "p50 %.3f ms, p99 %.3f ms\n",
               nq, el, el > 0 ? nq / el : 0.0, clients, clients > 1 ? "s" : "", p50 * 1e3,
               p99 * 1e3);
        if (gt)
            printf("recall@%u against exact ground truth: %.4f\n", top_k, recall);
        if (job->probed) /* QueryResponse.n_probes: the most any query reported */
            printf("clusters probed per query: %s%u (%s)\n", job->filter ? "up to " : "",
                   job->probed,
                   job->filter   ? "widened where fewer than top-k matched the filter"
                   : job->probes ? "--probes, at most the index's clusters"
                                 : "the server's automatic count");
    }
}

int cli_query(cli *x, cli_args *a)
{
    if (a->i >= a->n)
        return cli_usage("query needs an index name");
    const char *index = a->v[a->i++];
    const char *file = NULL, *vec = NULL, *filter = NULL, *gt_base = NULL, *prefix = "";
    uint32_t top_k = 10, probes = 0, max_probes = 0, clients = 1;
    uint64_t limit = 0;
    unsigned inc = 0;
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
        else if (!strcmp(o, "--include"))
            inc = cli_include_flags(cli_opt_value(a, o));
        else if (!strcmp(o, "--top-k")) {
            if (!cli_parse_u32(cli_opt_value(a, o), &top_k))
                return cli_usage("--top-k needs a number");
        } else if (!strcmp(o, "--probes")) {
            if (!cli_parse_u32(cli_opt_value(a, o), &probes))
                return cli_usage("--probes needs a number");
        } else if (!strcmp(o, "--max-probes")) {
            if (!cli_parse_u32(cli_opt_value(a, o), &max_probes))
                return cli_usage("--max-probes needs a number");
        } else if (!strcmp(o, "--limit")) {
            if (!cli_parse_u64(cli_opt_value(a, o), &limit))
                return cli_usage("--limit needs a number");
        } else if (!strcmp(o, "--clients")) {
            if (!cli_parse_u32(cli_opt_value(a, o), &clients) || !clients || clients > 256)
                return cli_usage("--clients needs 1..256");
        } else
            return cli_usage("query: unknown option %s", o);
    }
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
    double *lat = malloc(nq * sizeof(double));
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
    if (e)
        rc = cli_fail(x, e);
    else if (file)
        report_run(x, lat, nq, clients, el, res, gt, top_k, &base);
    else if (x->json)
        cli_print_json(json_pack("{s:O,s:i}", "results", jout, "n_probes", (int)base.probed));
    json_decref(jout);
    free(q);
    free(gt);
    free(res);
    free(lat);
    return rc;
}
