/*
 * cipherdex - command-line client of cipherdexd (docs/CLI.md).
 *
 *   cipherdex [connection options] COMMAND [options]
 *
 * Connection: --addr HOST:PORT, --ca FILE, --cert FILE, --key FILE (or
 * CIPHERDEX_ADDR, CIPHERDEX_CA, CIPHERDEX_CERT, CIPHERDEX_KEY), --insecure,
 * --timeout-ms N. Output: tables, or --json (one JSON document per command).
 * Errors print the server's code and message and exit 1 (2: usage).
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "app_client.h"
#include "app_vecs.h"
#include "cdx_hex.h"
#include "cdx_limits.h"
#include "cdx_time.h"

typedef struct gopts {
    app_client_opts conn;
    bool json;
} gopts;

static gopts G;
static app_client *C;

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cipherdex: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see cipherdex --help)\n");
    va_end(ap);
    return 2;
}

/* A failed call: the server's (or the transport's) code and message. */
static int fail(cdx_err e)
{
    if (G.json) {
        json_t *j = json_pack("{s:i,s:s,s:s}", "code", (int)e, "name", cdx_err_name(e), "message",
                              cdx_err_detail());
        json_dumpf(j, stdout, JSON_COMPACT);
        printf("\n");
        json_decref(j);
    }
    fprintf(stderr, "cipherdex: error %d %s: %s\n", (int)e, cdx_err_name(e), cdx_err_detail());
    return 1;
}

static int connect_server(void)
{
    cdx_err e = app_client_connect(&G.conn, &C);
    return e ? fail(e) : 0;
}

/* ---- small helpers ---- */

static void progress(const char *what, size_t done, size_t total, double t0)
{
    if (!isatty(2) || !total)
        return;
    int width = 30, fill = (int)((double)done / (double)total * width);
    double el = cdx_mono_s() - t0;
    fprintf(stderr, "\r%s [%.*s%*s] %zu/%zu %.0f/s ", what, fill, "##############################",
            width - fill, "", done, total, el > 0 ? (double)done / el : 0.0);
    if (done == total)
        fprintf(stderr, "\n");
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    if (!s || !*s || *s == '-')
        return false;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

static bool parse_u32(const char *s, uint32_t *out)
{
    uint64_t v;
    if (!parse_u64(s, &v) || v > UINT32_MAX)
        return false;
    *out = (uint32_t)v;
    return true;
}

/* Options of a subcommand: --name value pairs and positionals. */
typedef struct args {
    int n;
    char **v;
    int i;
} args;

static const char *opt_value(args *a, const char *name)
{
    if (a->i + 1 >= a->n) {
        usage_error("%s needs a value", name);
        exit(2);
    }
    return a->v[++a->i];
}

static void print_json(json_t *j)
{
    json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    printf("\n");
    json_decref(j);
}

static json_t *jstr(ProtobufCBinaryData b)
{
    return json_stringn((const char *)b.data, b.len);
}

static void hex(ProtobufCBinaryData b, char *out)
{
    cdx_hex_encode(b.data, b.len, out);
}

static unsigned include_flags(const char *s)
{
    unsigned f = 0;
    if (strstr(s, "vector"))
        f |= 1;
    if (strstr(s, "metadata"))
        f |= 2;
    if (strstr(s, "contents"))
        f |= 4;
    return f;
}

/* ---- commands ---- */

static int cmd_health(void)
{
    Cipherdex__V1__Request r = CIPHERDEX__V1__REQUEST__INIT;
    Cipherdex__V1__HealthRequest h = CIPHERDEX__V1__HEALTH_REQUEST__INIT;
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_HEALTH;
    r.health = &h;
    wire_response *w = NULL;
    cdx_err e = app_client_call(C, &r, &w);
    if (!w)
        return fail(e);
    const Cipherdex__V1__HealthResponse *hr = wire_response_msg(w)->health;
    if (hr) {
        if (G.json)
            print_json(json_pack("{s:s,s:b,s:b,s:s%,s:I}", "status", e ? "unhealthy" : "ok",
                                 "token_ok", hr->token_ok, "store_ok", hr->store_ok,
                                 "server_version", (const char *)hr->server_version.data,
                                 hr->server_version.len, "uptime_s", (json_int_t)hr->uptime_s));
        else
            printf("status: %s\ntoken: %s\nstore: %s\nserver: %.*s\nuptime: %" PRIu64 " s\n",
                   e ? "unhealthy" : "ok", hr->token_ok ? "ok" : "unreachable",
                   hr->store_ok ? "ok" : "unreachable", (int)hr->server_version.len,
                   hr->server_version.data, hr->uptime_s);
    }
    wire_response_free(w);
    return e ? fail(e) : 0;
}

static json_t *info_json(const Cipherdex__V1__IndexInfo *x)
{
    char id[33] = "", kcv[17] = "";
    hex(x->id, id);
    hex(x->kcv, kcv);
    return json_pack("{s:o,s:o,s:s,s:i,s:o,s:o,s:i,s:i,s:I,s:I,s:s,s:o,s:b,s:i,s:I}", "name",
                     jstr(x->name), "state", jstr(x->state), "id", id, "dimension", x->dimension,
                     "metric", jstr(x->metric), "index_type", jstr(x->index_type), "n_lists",
                     x->n_lists, "n_clusters", x->n_clusters, "count", (json_int_t)x->count,
                     "version", (json_int_t)x->version, "kcv", kcv, "key_source",
                     jstr(x->key_source), "key_owned", x->key_owned, "segments", x->segments,
                     "created_ms", (json_int_t)x->created_ms);
}

static void info_print(const Cipherdex__V1__IndexInfo *x)
{
    char id[33] = "", kcv[17] = "";
    hex(x->id, id);
    hex(x->kcv, kcv);
    printf("name:        %.*s\nid:          %s\nstate:       %.*s\ndimension:   %u\n"
           "metric:      %.*s\ntype:        %.*s\nlists:       %u (trained clusters: %u)\n"
           "items:       %" PRIu64 "\nversion:     %" PRIu64 "\nsegments:    %u\n"
           "key:         %.*s%s, KCV %s\n",
           (int)x->name.len, x->name.data, id, (int)x->state.len, x->state.data, x->dimension,
           (int)x->metric.len, x->metric.data, (int)x->index_type.len, x->index_type.data,
           x->n_lists, x->n_clusters, x->count, x->version, x->segments, (int)x->key_source.len,
           x->key_source.data, x->key_owned ? " (destroyed with the index)" : " (adopted)", kcv);
}

static int cmd_index(args *a)
{
    if (a->i >= a->n)
        return usage_error("index needs create, list, describe, delete or train");
    const char *sub = a->v[a->i++];
    Cipherdex__V1__Request r = CIPHERDEX__V1__REQUEST__INIT;
    wire_response *w = NULL;
    cdx_err e;
    if (!strcmp(sub, "list")) {
        Cipherdex__V1__ListIndexesRequest l = CIPHERDEX__V1__LIST_INDEXES_REQUEST__INIT;
        r.body_case = CIPHERDEX__V1__REQUEST__BODY_LIST_INDEXES;
        r.list_indexes = &l;
        if ((e = app_client_call(C, &r, &w)))
            goto out;
        const Cipherdex__V1__ListIndexesResponse *lr = wire_response_msg(w)->list_indexes;
        if (G.json) {
            json_t *arr = json_array();
            for (size_t i = 0; i < lr->n_indexes; i++)
                json_array_append_new(arr, info_json(lr->indexes[i]));
            print_json(json_pack("{s:o}", "indexes", arr));
        } else {
            printf("%-32s %-6s %-9s %-17s %-7s %10s %8s\n", "NAME", "DIM", "TYPE", "METRIC",
                   "LISTS", "ITEMS", "VERSION");
            for (size_t i = 0; i < lr->n_indexes; i++) {
                const Cipherdex__V1__IndexInfo *x = lr->indexes[i];
                printf("%-32.*s %-6u %-9.*s %-17.*s %-7u %10" PRIu64 " %8" PRIu64 "\n",
                       (int)x->name.len, x->name.data, x->dimension, (int)x->index_type.len,
                       x->index_type.data, (int)x->metric.len, x->metric.data, x->n_clusters,
                       x->count, x->version);
            }
        }
        goto out;
    }
    if (a->i >= a->n)
        return usage_error("index %s needs an index name", sub);
    const char *name = a->v[a->i++];
    if (!strcmp(sub, "create")) {
        Cipherdex__V1__CreateIndexRequest c = CIPHERDEX__V1__CREATE_INDEX_REQUEST__INIT;
        Cipherdex__V1__UnwrapKey uk = CIPHERDEX__V1__UNWRAP_KEY__INIT;
        Cipherdex__V1__AdoptKey ak = CIPHERDEX__V1__ADOPT_KEY__INIT;
        uint8_t wrapped[CDX_WRAPPED_KEY_LEN + 1], kid[CDX_ID_LEN];
        c.name = wire_str(name);
        c.metric = wire_str("euclidean");
        c.index_type = wire_str("ivfflat");
        for (; a->i < a->n; a->i++) {
            const char *o = a->v[a->i];
            if (!strcmp(o, "--dim") || !strcmp(o, "--dimension")) {
                if (!parse_u32(opt_value(a, o), &c.dimension))
                    return usage_error("--dim needs a number");
            } else if (!strcmp(o, "--metric")) {
                c.metric = wire_str(opt_value(a, o));
            } else if (!strcmp(o, "--type")) {
                c.index_type = wire_str(opt_value(a, o));
            } else if (!strcmp(o, "--lists")) {
                if (!parse_u32(opt_value(a, o), &c.n_lists))
                    return usage_error("--lists needs a number");
            } else if (!strcmp(o, "--unwrap-kek")) {
                uk.kek_name = wire_str(opt_value(a, o));
                c.key_source_case = CIPHERDEX__V1__CREATE_INDEX_REQUEST__KEY_SOURCE_UNWRAP_KEY;
                c.unwrap_key = &uk;
            } else if (!strcmp(o, "--wrapped-file")) {
                FILE *f = fopen(opt_value(a, o), "rb");
                size_t n = f ? fread(wrapped, 1, sizeof(wrapped), f) : 0;
                if (f)
                    fclose(f);
                if (n != CDX_WRAPPED_KEY_LEN)
                    return usage_error("--wrapped-file must hold exactly %d bytes",
                                       CDX_WRAPPED_KEY_LEN);
                uk.wrapped_key = wire_bin(wrapped, n);
            } else if (!strcmp(o, "--adopt-key")) {
                if (cdx_hex_decode(opt_value(a, o), kid, CDX_ID_LEN))
                    return usage_error("--adopt-key needs the key id: 32 hex digits");
                ak.key_id = wire_bin(kid, CDX_ID_LEN);
                c.key_source_case = CIPHERDEX__V1__CREATE_INDEX_REQUEST__KEY_SOURCE_ADOPT_KEY;
                c.adopt_key = &ak;
            } else {
                return usage_error("index create: unknown option %s", o);
            }
        }
        if (!c.dimension)
            return usage_error("index create needs --dim N");
        r.body_case = CIPHERDEX__V1__REQUEST__BODY_CREATE_INDEX;
        r.create_index = &c;
        if ((e = app_client_call(C, &r, &w)))
            goto out;
        const Cipherdex__V1__IndexInfo *x = wire_response_msg(w)->create_index->index;
        G.json ? print_json(info_json(x)) : info_print(x);
        goto out;
    }
    if (!strcmp(sub, "describe")) {
        Cipherdex__V1__DescribeIndexRequest d = CIPHERDEX__V1__DESCRIBE_INDEX_REQUEST__INIT;
        d.name = wire_str(name);
        r.body_case = CIPHERDEX__V1__REQUEST__BODY_DESCRIBE_INDEX;
        r.describe_index = &d;
        if ((e = app_client_call(C, &r, &w)))
            goto out;
        const Cipherdex__V1__IndexInfo *x = wire_response_msg(w)->describe_index->index;
        G.json ? print_json(info_json(x)) : info_print(x);
        goto out;
    }
    if (!strcmp(sub, "delete")) {
        Cipherdex__V1__DeleteIndexRequest d = CIPHERDEX__V1__DELETE_INDEX_REQUEST__INIT;
        uint8_t id[CDX_ID_LEN];
        bool have = false;
        for (; a->i < a->n; a->i++) {
            const char *o = a->v[a->i];
            if (!strcmp(o, "--confirm")) {
                if (cdx_hex_decode(opt_value(a, o), id, CDX_ID_LEN))
                    return usage_error("--confirm needs the index id (32 hex digits, from "
                                       "`index describe`)");
                have = true;
            } else {
                return usage_error("index delete: unknown option %s", o);
            }
        }
        if (!have)
            return usage_error("index delete destroys the index key and all data: repeat "
                               "with --confirm <index id from `index describe`>");
        d.name = wire_str(name);
        d.confirm_id = wire_bin(id, CDX_ID_LEN);
        r.body_case = CIPHERDEX__V1__REQUEST__BODY_DELETE_INDEX;
        r.delete_index = &d;
        if ((e = app_client_call(C, &r, &w)))
            goto out;
        G.json ? print_json(json_pack("{s:s,s:b}", "index", name, "deleted", 1))
               : (void)printf("deleted %s\n", name);
        goto out;
    }
    if (!strcmp(sub, "train")) {
        Cipherdex__V1__TrainRequest t = CIPHERDEX__V1__TRAIN_REQUEST__INIT;
        t.index = wire_str(name);
        for (; a->i < a->n; a->i++) {
            const char *o = a->v[a->i];
            uint64_t v;
            if (!strcmp(o, "--lists")) {
                if (!parse_u32(opt_value(a, o), &t.n_lists))
                    return usage_error("--lists needs a number");
            } else if (!strcmp(o, "--iters")) {
                if (!parse_u32(opt_value(a, o), &t.max_iters))
                    return usage_error("--iters needs a number");
            } else if (!strcmp(o, "--seed")) {
                if (!parse_u64(opt_value(a, o), &v))
                    return usage_error("--seed needs a number");
                t.seed = v;
            } else if (!strcmp(o, "--tolerance")) {
                t.tolerance = strtof(opt_value(a, o), NULL);
            } else if (!strcmp(o, "--max-points-per-list")) {
                if (!parse_u32(opt_value(a, o), &t.max_points_per_list))
                    return usage_error("--max-points-per-list needs a number");
            } else {
                return usage_error("index train: unknown option %s", o);
            }
        }
        r.body_case = CIPHERDEX__V1__REQUEST__BODY_TRAIN;
        r.train = &t;
        double t0 = cdx_mono_s();
        if ((e = app_client_call(C, &r, &w)))
            goto out;
        uint64_t ver = wire_response_msg(w)->train->version;
        G.json
            ? print_json(json_pack("{s:s,s:I,s:f}", "index", name, "version", (json_int_t)ver,
                                   "seconds", cdx_mono_s() - t0))
            : (void)printf("trained %s: version %" PRIu64 " in %.2f s\n", name, ver, cdx_mono_s() - t0);
        goto out;
    }
    return usage_error("index: unknown subcommand %s", sub);
out:
    wire_response_free(w);
    return e ? fail(e) : 0;
}

/* Items from a JSON Lines file: {"id":..., "vector":[...], "metadata":{...}, "contents":"..."}. */
typedef struct jl_item {
    char *id;
    float *vec;
    size_t dim;
    char *meta;
    char *contents;
} jl_item;

static int load_jsonl(const char *path, jl_item **out, size_t *n)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "cipherdex: %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 0, line = 0;
    *out = NULL;
    *n = 0;
    char *buf = NULL;
    size_t bcap = 0;
    ssize_t len;
    while ((len = getline(&buf, &bcap, f)) > 0) {
        line++;
        if (len == 1 && buf[0] == '\n')
            continue;
        json_error_t je;
        json_t *j = json_loadb(buf, (size_t)len, JSON_REJECT_DUPLICATES, &je);
        json_t *id = j ? json_object_get(j, "id") : NULL;
        json_t *vec = j ? json_object_get(j, "vector") : NULL;
        if (!j || !json_is_string(id) || !json_is_array(vec)) {
            fprintf(stderr, "cipherdex: %s:%zu: %s\n", path, line,
                    !j ? je.text : "each line needs \"id\" (string) and \"vector\" (array)");
            json_decref(j);
            free(buf);
            fclose(f);
            return -1;
        }
        if (*n == cap) {
            cap = cap ? cap * 2 : 1024;
            *out = realloc(*out, cap * sizeof(**out));
        }
        jl_item *it = &(*out)[(*n)++];
        memset(it, 0, sizeof(*it));
        it->id = strdup(json_string_value(id));
        it->dim = json_array_size(vec);
        it->vec = malloc((it->dim ? it->dim : 1) * sizeof(float));
        for (size_t i = 0; i < it->dim; i++)
            it->vec[i] = (float)json_number_value(json_array_get(vec, i));
        json_t *m = json_object_get(j, "metadata");
        if (m && !json_is_null(m))
            it->meta = json_dumps(m, JSON_COMPACT);
        json_t *ct = json_object_get(j, "contents");
        if (json_is_string(ct))
            it->contents = strdup(json_string_value(ct));
        json_decref(j);
    }
    free(buf);
    fclose(f);
    return 0;
}

static bool ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static int cmd_upsert(args *a)
{
    if (a->i >= a->n)
        return usage_error("upsert needs an index name");
    const char *index = a->v[a->i++];
    const char *file = NULL, *labels = NULL, *prefix = "";
    uint32_t batch = 1000;
    uint64_t start = 0, limit = 0;
    for (; a->i < a->n; a->i++) {
        const char *o = a->v[a->i];
        if (!strcmp(o, "--file"))
            file = opt_value(a, o);
        else if (!strcmp(o, "--labels"))
            labels = opt_value(a, o);
        else if (!strcmp(o, "--id-prefix"))
            prefix = opt_value(a, o);
        else if (!strcmp(o, "--batch")) {
            if (!parse_u32(opt_value(a, o), &batch) || !batch || batch > CDX_UPSERT_BATCH_MAX)
                return usage_error("--batch needs 1..%d", CDX_UPSERT_BATCH_MAX);
        } else if (!strcmp(o, "--start")) {
            if (!parse_u64(opt_value(a, o), &start))
                return usage_error("--start needs a number");
        } else if (!strcmp(o, "--limit")) {
            if (!parse_u64(opt_value(a, o), &limit))
                return usage_error("--limit needs a number");
        } else
            return usage_error("upsert: unknown option %s", o);
    }
    if (!file)
        return usage_error("upsert needs --file (.fvecs, .bvecs, IDX images, or .jsonl)");
    float *x = NULL;
    size_t n = 0, d = 0;
    jl_item *jl = NULL;
    uint8_t *lab = NULL;
    size_t nlab = 0;
    char err[512];
    bool jsonl = ends_with(file, ".jsonl") || ends_with(file, ".json");
    if (jsonl) {
        if (load_jsonl(file, &jl, &n))
            return 1;
    } else if (app_vecs_load(file, &x, &n, &d, err, sizeof(err))) {
        fprintf(stderr, "cipherdex: %s\n", err);
        return 1;
    }
    if (labels && app_vecs_load_idx_labels(labels, &lab, &nlab, err, sizeof(err))) {
        fprintf(stderr, "cipherdex: %s\n", err);
        return 1;
    }
    if (labels && nlab != n) {
        fprintf(stderr, "cipherdex: %zu labels for %zu vectors\n", nlab, n);
        return 1;
    }
    if (limit && limit < n)
        n = (size_t)limit;
    Cipherdex__V1__Item *items = calloc(batch, sizeof(*items));
    Cipherdex__V1__Item **ptrs = calloc(batch, sizeof(*ptrs));
    char(*ids)[300] = calloc(batch, 300);
    char(*meta)[64] = calloc(batch, 64);
    double t0 = cdx_mono_s();
    cdx_err e = CDX_OK;
    uint64_t version = 0;
    size_t done = 0;
    /* Two batches in flight: the next is on the wire while the server commits this one. */
    size_t inflight = 0;
    for (size_t off = 0; off < n || inflight;) {
        if (off < n && inflight < 2) {
            size_t m = n - off < batch ? n - off : batch;
            for (size_t i = 0; i < m; i++) {
                Cipherdex__V1__Item *it = &items[i];
                cipherdex__v1__item__init(it);
                size_t row = off + i;
                if (jsonl) {
                    it->id = wire_str(jl[row].id);
                    it->vector = jl[row].vec;
                    it->n_vector = jl[row].dim;
                    if (jl[row].meta)
                        it->metadata = wire_str(jl[row].meta);
                    if (jl[row].contents)
                        it->contents = wire_str(jl[row].contents);
                } else {
                    snprintf(ids[i], sizeof(ids[i]), "%s%" PRIu64, prefix, start + row);
                    it->id = wire_str(ids[i]);
                    it->vector = x + row * d;
                    it->n_vector = d;
                    if (lab) {
                        snprintf(meta[i], sizeof(meta[i]), "{\"label\":%u}", lab[row]);
                        it->metadata = wire_str(meta[i]);
                    }
                }
                ptrs[i] = it;
            }
            Cipherdex__V1__Request r = CIPHERDEX__V1__REQUEST__INIT;
            Cipherdex__V1__UpsertRequest u = CIPHERDEX__V1__UPSERT_REQUEST__INIT;
            u.index = wire_str(index);
            u.n_items = m;
            u.items = ptrs;
            r.body_case = CIPHERDEX__V1__REQUEST__BODY_UPSERT;
            r.upsert = &u;
            if ((e = app_client_send(C, &r, NULL)))
                break;
            off += m;
            inflight++;
            continue;
        }
        wire_response *w = NULL;
        e = app_client_recv(C, &w);
        inflight--;
        if (e) {
            wire_response_free(w);
            break;
        }
        const Cipherdex__V1__UpsertResponse *ur = wire_response_msg(w)->upsert;
        done += ur->upserted;
        version = ur->version;
        wire_response_free(w);
        progress("upsert", done, n, t0);
    }
    double el = cdx_mono_s() - t0;
    free(items);
    free(ptrs);
    free(ids);
    free(meta);
    free(x);
    free(lab);
    for (size_t i = 0; jl && i < n; i++) {
        free(jl[i].id);
        free(jl[i].vec);
        free(jl[i].meta);
        free(jl[i].contents);
    }
    free(jl);
    if (e)
        return fail(e);
    if (G.json)
        print_json(json_pack("{s:s,s:I,s:I,s:f,s:f}", "index", index, "upserted", (json_int_t)done,
                             "version", (json_int_t)version, "seconds", el, "vectors_per_s",
                             el > 0 ? done / el : 0.0));
    else
        printf("upserted %zu items into %s in %.2f s (%.0f/s), version %" PRIu64 "\n", done, index,
               el, el > 0 ? done / el : 0.0, version);
    return 0;
}

/* One client's share of a query run: queries first, first + stride, ... */
typedef struct qjob {
    const char *index, *filter, *prefix;
    float *q;
    size_t d, nq, plen;
    uint32_t top_k, probes, stride, first;
    unsigned inc;
    double *lat, t0;
    int64_t *res;
    json_t *jout;
    bool print;
    app_client *c;
    cdx_err err;
} qjob;

static void query_worker(qjob *j)
{
    for (size_t i = j->first; i < j->nq && !j->err; i += j->stride) {
        Cipherdex__V1__Request r = CIPHERDEX__V1__REQUEST__INIT;
        Cipherdex__V1__QueryRequest qr = CIPHERDEX__V1__QUERY_REQUEST__INIT;
        qr.index = wire_str(j->index);
        qr.vectors = j->q + i * j->d;
        qr.n_vectors = j->d;
        qr.top_k = j->top_k;
        qr.n_probes = j->probes;
        if (j->filter)
            qr.filter = wire_str(j->filter);
        qr.include_vectors = j->inc & 1;
        qr.include_metadata = (j->inc & 2) != 0;
        qr.include_contents = (j->inc & 4) != 0;
        r.body_case = CIPHERDEX__V1__REQUEST__BODY_QUERY;
        r.query = &qr;
        wire_response *w = NULL;
        double t1 = cdx_mono_s();
        cdx_err e = app_client_call(j->c, &r, &w);
        j->lat[i] = cdx_mono_s() - t1;
        if (e) {
            j->err = e;
            wire_response_free(w);
            break;
        }
        const Cipherdex__V1__QueryResult *x = wire_response_msg(w)->query->results[0];
        size_t plen = j->plen, top_k = j->top_k;
        if (j->res)
            for (size_t r2 = 0; r2 < top_k; r2++) {
                j->res[i * top_k + r2] = -1;
                if (r2 < x->n_ids && x->ids[r2].len > plen &&
                    !memcmp(x->ids[r2].data, j->prefix, plen)) {
                    char tmp[32];
                    size_t l = x->ids[r2].len - plen < 31 ? x->ids[r2].len - plen : 31;
                    memcpy(tmp, x->ids[r2].data + plen, l);
                    tmp[l] = '\0';
                    j->res[i * top_k + r2] = strtoll(tmp, NULL, 10);
                }
            }
        if (j->print) { /* one vector: print its results */
            if (G.json) {
                for (size_t k = 0; k < x->n_ids; k++) {
                    json_t *h = json_pack("{s:o,s:f}", "id", jstr(x->ids[k]), "distance",
                                          (double)x->distances[k]);
                    if (x->n_metadata > k)
                        json_object_set_new(h, "metadata", jstr(x->metadata[k]));
                    json_array_append_new(j->jout, h);
                }
            } else {
                printf("%-4s %-40s %12s%s\n", "RANK", "ID", "DISTANCE",
                       x->n_metadata ? "  METADATA" : "");
                for (size_t k = 0; k < x->n_ids; k++)
                    printf("%-4zu %-40.*s %12.6g%s%.*s\n", k + 1, (int)x->ids[k].len,
                           x->ids[k].data, x->distances[k], x->n_metadata > k ? "  " : "",
                           x->n_metadata > k ? (int)x->metadata[k].len : 0,
                           x->n_metadata > k ? (const char *)x->metadata[k].data : "");
            }
        }
        wire_response_free(w);
        if (j->first == 0)
            progress("query", i + 1, j->nq, j->t0);
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

static int cmd_query(args *a)
{
    if (a->i >= a->n)
        return usage_error("query needs an index name");
    const char *index = a->v[a->i++];
    const char *file = NULL, *vec = NULL, *filter = NULL, *gt_base = NULL, *prefix = "";
    uint32_t top_k = 10, probes = 0, clients = 1;
    uint64_t limit = 0;
    unsigned inc = 0;
    for (; a->i < a->n; a->i++) {
        const char *o = a->v[a->i];
        if (!strcmp(o, "--file"))
            file = opt_value(a, o);
        else if (!strcmp(o, "--vector"))
            vec = opt_value(a, o);
        else if (!strcmp(o, "--filter"))
            filter = opt_value(a, o);
        else if (!strcmp(o, "--ground-truth"))
            gt_base = opt_value(a, o);
        else if (!strcmp(o, "--id-prefix"))
            prefix = opt_value(a, o);
        else if (!strcmp(o, "--include"))
            inc = include_flags(opt_value(a, o));
        else if (!strcmp(o, "--top-k")) {
            if (!parse_u32(opt_value(a, o), &top_k))
                return usage_error("--top-k needs a number");
        } else if (!strcmp(o, "--probes")) {
            if (!parse_u32(opt_value(a, o), &probes))
                return usage_error("--probes needs a number");
        } else if (!strcmp(o, "--limit")) {
            if (!parse_u64(opt_value(a, o), &limit))
                return usage_error("--limit needs a number");
        } else if (!strcmp(o, "--clients")) {
            if (!parse_u32(opt_value(a, o), &clients) || !clients || clients > 256)
                return usage_error("--clients needs 1..256");
        } else
            return usage_error("query: unknown option %s", o);
    }
    float *q = NULL;
    size_t nq = 0, d = 0;
    char err[512];
    if (vec) {
        size_t cap = 16;
        q = malloc(cap * sizeof(float));
        for (char *p = (char *)vec, *end; *p; p = end) {
            while (*p == ',' || *p == ' ' || *p == '[' || *p == ']')
                p++;
            if (!*p)
                break;
            float v = strtof(p, &end);
            if (end == p)
                return usage_error("--vector: `%s` is not a list of numbers", vec);
            if (d == cap)
                q = realloc(q, (cap *= 2) * sizeof(float));
            q[d++] = v;
        }
        nq = 1;
    } else if (file) {
        if (app_vecs_load(file, &q, &nq, &d, err, sizeof(err))) {
            fprintf(stderr, "cipherdex: %s\n", err);
            return 1;
        }
        if (limit && limit < nq)
            nq = (size_t)limit;
    } else {
        return usage_error("query needs --vector \"x,y,...\" or --file F");
    }
    int64_t *gt = NULL;
    if (gt_base) { /* exact top-k over the base file, for recall@k */
        float *base = NULL;
        size_t nb = 0, db = 0;
        if (app_vecs_load(gt_base, &base, &nb, &db, err, sizeof(err)) || db != d) {
            fprintf(stderr, "cipherdex: ground truth: %s\n", db != d ? "dimension differs" : err);
            return 1;
        }
        gt = malloc(nq * top_k * sizeof(int64_t));
        if (isatty(2))
            fprintf(stderr, "computing exact ground truth (%zu x %zu)...\n", nq, nb);
        app_vecs_ground_truth(base, nb, q, nq, d, top_k, gt);
        free(base);
    }
    double *lat = malloc(nq * sizeof(double));
    int64_t *res = gt ? malloc(nq * top_k * sizeof(int64_t)) : NULL;
    json_t *jout = json_array();
    cdx_err e = CDX_OK;
    double t0 = cdx_mono_s();
    size_t plen = strlen(prefix);
    qjob base = {.index = index,
                 .q = q,
                 .d = d,
                 .nq = nq,
                 .top_k = top_k,
                 .probes = probes,
                 .filter = filter,
                 .inc = inc,
                 .prefix = prefix,
                 .plen = plen,
                 .lat = lat,
                 .res = res,
                 .jout = jout,
                 .print = !file,
                 .t0 = t0,
                 .stride = clients,
                 .c = C};
    if (clients <= 1) {
        query_worker(&base);
        e = base.err;
    } else {
        /* Concurrent clients: each its own connection, queries dealt round-robin. */
        pthread_t *th = calloc(clients, sizeof(pthread_t));
        qjob *jobs = calloc(clients, sizeof(qjob));
        for (uint32_t t = 0; t < clients; t++) {
            jobs[t] = base;
            jobs[t].first = t;
            jobs[t].c = NULL;
            jobs[t].err = app_client_connect(&G.conn, &jobs[t].c);
        }
        t0 = cdx_mono_s();
        for (uint32_t t = 0; t < clients; t++) {
            jobs[t].t0 = t0;
            if (!jobs[t].err)
                pthread_create(&th[t], NULL, query_thread, &jobs[t]);
        }
        for (uint32_t t = 0; t < clients; t++) {
            if (!jobs[t].c)
                continue;
            pthread_join(th[t], NULL);
            app_client_free(jobs[t].c);
        }
        for (uint32_t t = 0; t < clients && !e; t++)
            e = jobs[t].err;
        free(th);
        free(jobs);
    }
    double el = cdx_mono_s() - t0;
    int rc = 0;
    if (e) {
        rc = fail(e);
    } else if (file) {
        qsort(lat, nq, sizeof(double), cmp_dbl);
        double p50 = lat[(nq - 1) / 2], p99 = lat[(size_t)ceil(0.99 * (double)nq) - 1];
        double recall = gt ? app_vecs_recall_at_k(res, gt, nq, top_k) : -1;
        if (G.json) {
            json_t *j = json_pack("{s:I,s:i,s:f,s:f,s:f}", "queries", (json_int_t)nq, "clients",
                                  (int)clients, "qps", el > 0 ? nq / el : 0.0, "p50_ms", p50 * 1e3,
                                  "p99_ms", p99 * 1e3);
            if (gt)
                json_object_set_new(j, "recall_at_k", json_real(recall));
            print_json(j);
        } else {
            printf("%zu queries in %.2f s: %.0f QPS (%u client%s, one query per request), "
                   "p50 %.3f ms, p99 %.3f ms\n",
                   nq, el, el > 0 ? nq / el : 0.0, clients, clients > 1 ? "s" : "", p50 * 1e3,
                   p99 * 1e3);
            if (gt)
                printf("recall@%u against exact ground truth: %.4f\n", top_k, recall);
        }
    } else if (G.json) {
        print_json(json_pack("{s:O}", "results", jout));
    }
    json_decref(jout);
    free(q);
    free(gt);
    free(res);
    free(lat);
    return rc;
}

static int cmd_ids(args *a, const char *what)
{
    if (a->i >= a->n)
        return usage_error("%s needs an index name", what);
    const char *index = a->v[a->i++];
    unsigned inc = 0;
    ProtobufCBinaryData *ids = calloc((size_t)a->n + 1, sizeof(*ids));
    size_t n = 0;
    for (; a->i < a->n; a->i++) {
        if (!strcmp(a->v[a->i], "--include"))
            inc = include_flags(opt_value(a, "--include"));
        else
            ids[n++] = wire_str(a->v[a->i]);
    }
    if (!n) {
        free(ids);
        return usage_error("%s needs at least one id", what);
    }
    Cipherdex__V1__Request r = CIPHERDEX__V1__REQUEST__INIT;
    Cipherdex__V1__GetRequest g = CIPHERDEX__V1__GET_REQUEST__INIT;
    Cipherdex__V1__DeleteRequest dl = CIPHERDEX__V1__DELETE_REQUEST__INIT;
    if (!strcmp(what, "get")) {
        g.index = wire_str(index);
        g.ids = ids;
        g.n_ids = n;
        g.include_vectors = inc & 1;
        g.include_metadata = (inc & 2) != 0;
        g.include_contents = (inc & 4) != 0;
        r.body_case = CIPHERDEX__V1__REQUEST__BODY_GET;
        r.get = &g;
    } else {
        dl.index = wire_str(index);
        dl.ids = ids;
        dl.n_ids = n;
        r.body_case = CIPHERDEX__V1__REQUEST__BODY_DELETE;
        r.delete_ = &dl;
    }
    wire_response *w = NULL;
    cdx_err e = app_client_call(C, &r, &w);
    free(ids);
    if (e) {
        wire_response_free(w);
        return fail(e);
    }
    const Cipherdex__V1__Response *resp = wire_response_msg(w);
    if (resp->body_case == CIPHERDEX__V1__RESPONSE__BODY_DELETE) {
        G.json ? print_json(json_pack("{s:I,s:I}", "deleted", (json_int_t)resp->delete_->deleted,
                                      "version", (json_int_t)resp->delete_->version))
               : (void)printf("deleted %" PRIu64 " of %zu ids, version %" PRIu64 "\n",
                              resp->delete_->deleted, n, resp->delete_->version);
    } else {
        const Cipherdex__V1__GetResponse *gr = resp->get;
        json_t *arr = json_array();
        for (size_t i = 0; i < gr->n_items; i++) {
            const Cipherdex__V1__Item *it = gr->items[i];
            bool found = i < gr->n_found && gr->found[i];
            json_t *o = json_pack("{s:o,s:b}", "id", jstr(it->id), "found", found);
            if (it->n_vector) {
                json_t *v = json_array();
                for (size_t k = 0; k < it->n_vector; k++)
                    json_array_append_new(v, json_real(it->vector[k]));
                json_object_set_new(o, "vector", v);
            }
            if (it->metadata.len)
                json_object_set_new(o, "metadata", jstr(it->metadata));
            if (it->contents.len)
                json_object_set_new(o, "contents_bytes",
                                    json_integer((json_int_t)it->contents.len));
            json_array_append_new(arr, o);
            if (!G.json)
                printf("%-40.*s %s%s%.*s\n", (int)it->id.len, it->id.data,
                       found ? "found" : "not found", it->metadata.len ? "  " : "",
                       (int)it->metadata.len,
                       it->metadata.len ? (const char *)it->metadata.data : "");
        }
        if (G.json)
            print_json(json_pack("{s:o,s:I}", "items", arr, "version", (json_int_t)gr->version));
        else
            json_decref(arr);
    }
    wire_response_free(w);
    return 0;
}

static int cmd_list_ids(args *a)
{
    if (a->i >= a->n)
        return usage_error("list-ids needs an index name");
    const char *index = a->v[a->i++], *cursor = NULL;
    uint32_t limit = 1000;
    bool all = false;
    for (; a->i < a->n; a->i++) {
        const char *o = a->v[a->i];
        if (!strcmp(o, "--cursor"))
            cursor = opt_value(a, o);
        else if (!strcmp(o, "--all"))
            all = true;
        else if (!strcmp(o, "--limit")) {
            if (!parse_u32(opt_value(a, o), &limit))
                return usage_error("--limit needs a number");
        } else
            return usage_error("list-ids: unknown option %s", o);
    }
    json_t *arr = json_array();
    char *next = cursor ? strdup(cursor) : NULL;
    cdx_err e = CDX_OK;
    do {
        Cipherdex__V1__Request r = CIPHERDEX__V1__REQUEST__INIT;
        Cipherdex__V1__ListIdsRequest l = CIPHERDEX__V1__LIST_IDS_REQUEST__INIT;
        l.index = wire_str(index);
        l.limit = limit;
        if (next)
            l.cursor = wire_str(next);
        r.body_case = CIPHERDEX__V1__REQUEST__BODY_LIST_IDS;
        r.list_ids = &l;
        wire_response *w = NULL;
        if ((e = app_client_call(C, &r, &w))) {
            wire_response_free(w);
            break;
        }
        const Cipherdex__V1__ListIdsResponse *lr = wire_response_msg(w)->list_ids;
        for (size_t i = 0; i < lr->n_ids; i++) {
            if (G.json)
                json_array_append_new(arr, jstr(lr->ids[i]));
            else
                printf("%.*s\n", (int)lr->ids[i].len, lr->ids[i].data);
        }
        free(next);
        next = lr->next_cursor.len
                   ? strndup((const char *)lr->next_cursor.data, lr->next_cursor.len)
                   : NULL;
        wire_response_free(w);
    } while (all && next);
    if (!e && G.json) {
        json_t *o = json_pack("{s:o}", "ids", arr);
        if (next)
            json_object_set_new(o, "next_cursor", json_string(next));
        print_json(o);
    } else {
        json_decref(arr);
        if (!e && next && !all)
            fprintf(stderr, "more: --cursor %s\n", next);
    }
    free(next);
    return e ? fail(e) : 0;
}

/* Each command's usage; continuation lines start with spaces. */
static const char *const usage_lines[] = {
    "  health\n",
    "  index create NAME --dim N [--metric euclidean|squared_euclidean|cosine|inner_product]\n"
    "               [--type ivfflat|ivfsq8] [--lists N]\n"
    "               [--unwrap-kek KEK --wrapped-file F | --adopt-key KEYID]\n",
    "  index list\n",
    "  index describe NAME\n",
    "  index delete NAME --confirm INDEX_ID\n",
    "  index train NAME [--lists N] [--iters N] [--seed N] [--tolerance F]\n"
    "               [--max-points-per-list N]\n",
    "  upsert INDEX --file F [--labels IDX_LABELS] [--id-prefix P] [--start N] [--batch N]\n"
    "               [--limit N]   F: .fvecs, .bvecs, IDX images (plain or .gz), .jsonl\n"
    "               ({\"id\":..., \"vector\":[...], \"metadata\":{...}, \"contents\":\"...\"})\n",
    "  query INDEX (--vector \"x,y,...\" | --file F [--limit N] [--clients N]) [--top-k N]\n"
    "               [--probes N] [--filter JSON] [--include vectors,metadata,contents]\n"
    "               [--ground-truth BASE_FILE [--id-prefix P]]   (recall@k, QPS, p50/p99)\n",
    "  get INDEX ID... [--include vectors,metadata,contents]\n",
    "  delete INDEX ID...\n",
    "  list-ids INDEX [--limit N] [--cursor C] [--all]\n",
};

/* The whole help, or only the usage of `cmd` ("index", "query", ...) when given. */
static void help(const char *cmd)
{
    printf("usage: cipherdex [connection options] %s\n\n", cmd ? cmd : "COMMAND [options]");
    printf("connection (or the environment variables in brackets):\n"
           "  --addr HOST:PORT   server address [CIPHERDEX_ADDR]\n"
           "  --ca FILE          CA bundle for the server certificate [CIPHERDEX_CA]\n"
           "  --cert FILE        client certificate [CIPHERDEX_CERT]\n"
           "  --key FILE         client key [CIPHERDEX_KEY]\n"
           "  --insecure         plaintext TCP (a test server with insecure = yes)\n"
           "  --timeout-ms N     connect and I/O timeout (default 30000)\n"
           "  --json             JSON output for scripts\n\n%s",
           cmd ? "" : "commands:\n");
    size_t n = cmd ? strlen(cmd) : 0;
    for (size_t i = 0; i < sizeof(usage_lines) / sizeof(usage_lines[0]); i++) {
        const char *u = usage_lines[i] + 2; /* after the indent */
        if (!cmd || (!strncmp(u, cmd, n) && (u[n] == ' ' || u[n] == '\n')))
            fputs(usage_lines[i], stdout);
    }
    printf("\nErrors print the server's status code and message and exit 1; usage errors exit "
           "2.\nMore: docs/CLI.md\n");
}

int main(int argc, char **argv)
{
    G.conn.addr = getenv("CIPHERDEX_ADDR");
    G.conn.ca = getenv("CIPHERDEX_CA");
    G.conn.cert = getenv("CIPHERDEX_CERT");
    G.conn.key = getenv("CIPHERDEX_KEY");
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *o = argv[i];
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) {
            help(NULL);
            return 0;
        }
        if (!strcmp(o, "--json")) {
            G.json = true;
            continue;
        }
        if (!strcmp(o, "--insecure")) {
            G.conn.insecure = true;
            continue;
        }
        if (i + 1 >= argc)
            return usage_error("%s needs a value", o);
        const char *v = argv[++i];
        if (!strcmp(o, "--addr"))
            G.conn.addr = v;
        else if (!strcmp(o, "--ca"))
            G.conn.ca = v;
        else if (!strcmp(o, "--cert"))
            G.conn.cert = v;
        else if (!strcmp(o, "--key"))
            G.conn.key = v;
        else if (!strcmp(o, "--timeout-ms")) {
            if (!parse_u32(v, &G.conn.timeout_ms))
                return usage_error("--timeout-ms needs a number");
        } else
            return usage_error("unknown option %s", o);
    }
    if (i >= argc) {
        help(NULL);
        return 2;
    }
    const char *cmd = argv[i++];
    args a = {.n = argc, .v = argv, .i = i};
    for (int k = i; k < argc; k++)
        if (!strcmp(argv[k], "--help")) {
            help(cmd); /* that command's usage */
            return 0;
        }
    if (!G.conn.addr)
        return usage_error("no server address: --addr HOST:PORT or CIPHERDEX_ADDR");
    if (!G.conn.insecure && (!G.conn.ca || !G.conn.cert))
        return usage_error("TLS needs --ca and --cert/--key (or CIPHERDEX_CA, CIPHERDEX_CERT, "
                           "CIPHERDEX_KEY); --insecure only for a plaintext test server");
    static const char *const known[] = {"health", "index",  "upsert",  "query",
                                        "get",    "delete", "list-ids"};
    bool ok = false;
    for (size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++)
        ok |= !strcmp(cmd, known[k]);
    if (!ok)
        return usage_error("unknown command %s", cmd);
    int rc = connect_server();
    if (rc)
        return rc;
    if (!strcmp(cmd, "health"))
        rc = cmd_health();
    else if (!strcmp(cmd, "index"))
        rc = cmd_index(&a);
    else if (!strcmp(cmd, "upsert"))
        rc = cmd_upsert(&a);
    else if (!strcmp(cmd, "query"))
        rc = cmd_query(&a);
    else if (!strcmp(cmd, "get") || !strcmp(cmd, "delete"))
        rc = cmd_ids(&a, cmd);
    else
        rc = cmd_list_ids(&a);
    app_client_free(C);
    return rc;
}
