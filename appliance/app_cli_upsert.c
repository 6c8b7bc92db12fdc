/* cipherdex upsert: vectors from .fvecs/.bvecs/IDX files or JSON Lines, two batches in flight. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app_cli.h"
#include "app_vecs.h"
#include "cdx_limits.h"
#include "cdx_time.h"

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

static void jsonl_free(jl_item *jl, size_t n)
{
    for (size_t i = 0; jl && i < n; i++) {
        free(jl[i].id);
        free(jl[i].vec);
        free(jl[i].meta);
        free(jl[i].contents);
    }
    free(jl);
}

static bool ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* What to upload: the parsed options and the loaded rows. */
typedef struct upload {
    const char *index, *prefix;
    uint64_t start;
    bool jsonl;
    jl_item *jl; /* JSON Lines rows */
    float *x;    /* or vector-file rows, n x d */
    size_t n, d;
    uint8_t *lab; /* IDX labels as {"label":N} metadata, or NULL */
} upload;

/* Row `row` of the upload as an item; vector-file ids and metadata go to id/meta buffers. */
static app_item item_of(const upload *u, size_t row, char id[300], char meta[64])
{
    if (u->jsonl) {
        const jl_item *j = &u->jl[row];
        return (app_item){.id = j->id,
                          .vector = j->vec,
                          .dim = j->dim,
                          .metadata = j->meta,
                          .contents = j->contents,
                          .contents_len = j->contents ? strlen(j->contents) : 0};
    }
    snprintf(id, 300, "%s%" PRIu64, u->prefix, u->start + row);
    app_item it = {.id = id, .vector = u->x + row * u->d, .dim = u->d};
    if (u->lab) {
        snprintf(meta, 64, "{\"label\":%u}", u->lab[row]);
        it.metadata = meta;
    }
    return it;
}

int cli_upsert(cli *x, cli_args *a)
{
    if (a->i >= a->n)
        return cli_usage("upsert needs an index name");
    upload u = {.index = a->v[a->i++], .prefix = ""};
    const char *file = NULL, *labels = NULL;
    uint32_t batch = 1000;
    uint64_t limit = 0;
    for (; a->i < a->n; a->i++) {
        const char *o = a->v[a->i];
        if (!strcmp(o, "--file"))
            file = cli_opt_value(a, o);
        else if (!strcmp(o, "--labels"))
            labels = cli_opt_value(a, o);
        else if (!strcmp(o, "--id-prefix"))
            u.prefix = cli_opt_value(a, o);
        else if (!strcmp(o, "--batch")) {
            if (!cli_parse_u32(cli_opt_value(a, o), &batch) || !batch ||
                batch > CDX_UPSERT_BATCH_MAX)
                return cli_usage("--batch needs 1..%d", CDX_UPSERT_BATCH_MAX);
        } else if (!strcmp(o, "--start")) {
            if (!cli_parse_u64(cli_opt_value(a, o), &u.start))
                return cli_usage("--start needs a number");
        } else if (!strcmp(o, "--limit")) {
            if (!cli_parse_u64(cli_opt_value(a, o), &limit))
                return cli_usage("--limit needs a number");
        } else
            return cli_usage("upsert: unknown option %s", o);
    }
    if (!file)
        return cli_usage("upsert needs --file (.fvecs, .bvecs, IDX images, or .jsonl)");
    size_t nlab = 0;
    u.jsonl = ends_with(file, ".jsonl") || ends_with(file, ".json");
    if (u.jsonl) {
        if (load_jsonl(file, &u.jl, &u.n))
            return 1;
    } else if (app_vecs_load(file, &u.x, &u.n, &u.d)) {
        fprintf(stderr, "cipherdex: %s\n", cdx_err_detail());
        return 1;
    }
    if (labels && app_vecs_load_idx_labels(labels, &u.lab, &nlab)) {
        fprintf(stderr, "cipherdex: %s\n", cdx_err_detail());
        return 1;
    }
    if (labels && nlab != u.n) {
        fprintf(stderr, "cipherdex: %zu labels for %zu vectors\n", nlab, u.n);
        return 1;
    }
    size_t n_all = u.n; /* rows loaded (freed below), before --limit */
    size_t n = u.n;
    if (limit && limit < n)
        n = (size_t)limit;
    app_item *items = calloc(batch, sizeof(*items));
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
            for (size_t i = 0; i < m; i++)
                items[i] = item_of(&u, off + i, ids[i], meta[i]);
            if ((e = app_client_upsert_send(x->c, u.index, items, m, NULL)))
                break;
            off += m;
            inflight++;
            continue;
        }
        wire_response *w = NULL;
        e = app_client_recv(x->c, &w);
        inflight--;
        if (e) {
            wire_response_free(w);
            break;
        }
        const Cipherdex__V1__UpsertResponse *ur = wire_response_msg(w)->upsert;
        done += ur->upserted;
        version = ur->version;
        wire_response_free(w);
        cli_progress("upsert", done, n, t0);
    }
    double el = cdx_mono_s() - t0;
    free(items);
    free(ids);
    free(meta);
    free(u.x);
    free(u.lab);
    jsonl_free(u.jl, n_all);
    if (e)
        return cli_fail(x, e);
    if (x->json)
        cli_print_json(json_pack("{s:s,s:I,s:I,s:f,s:f}", "index", u.index, "upserted",
                                 (json_int_t)done, "version", (json_int_t)version, "seconds", el,
                                 "vectors_per_s", el > 0 ? done / el : 0.0));
    else
        printf("upserted %zu items into %s in %.2f s (%.0f/s), version %" PRIu64 "\n", done,
               u.index, el, el > 0 ? done / el : 0.0, version);
    return 0;
}
