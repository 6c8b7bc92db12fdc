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
    size_t line; /* 1-based line of the file */
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
        it->line = line;
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

/* Rows [from, to) of the input. */
typedef struct span {
    size_t from, to;
} span;

/* Committed row ranges remembered for the failure report (more are merged or dropped). */
#define CDX_UPSERT_SPANS_MAX 64

/* "line L" of a JSON Lines row, or "row R" (1-based) of a vector file. */
static void where(const upload *u, size_t row, char *buf, size_t cap)
{
    if (u->jsonl)
        snprintf(buf, cap, "line %zu", u->jl[row].line);
    else
        snprintf(buf, cap, "row %zu", row + 1);
}

/* "lines 1-1000" for rows [from, to). */
static void range(const upload *u, span s, char *buf, size_t cap)
{
    char a[48], b[48];
    where(u, s.from, a, sizeof(a));
    where(u, s.to - 1, b, sizeof(b));
    if (s.to - s.from == 1)
        snprintf(buf, cap, "%s", a);
    else
        snprintf(buf, cap, "%ss %s-%s", u->jsonl ? "line" : "row", a + (u->jsonl ? 5 : 4),
                 b + (u->jsonl ? 5 : 4));
}

/*
 * Walkthrough problem 10: after a failed batch, say exactly which rows were committed, which
 * failed (naming the item's own line when the server names the item), and which were not sent.
 */
static void report_partial(const upload *u, const span *ok, size_t nok, span failed,
                           const char *why, size_t sent_to, size_t n, uint64_t version)
{
    char buf[96];
    fprintf(stderr, "cipherdex: upsert into %s stopped. ", u->index);
    if (!nok)
        fprintf(stderr, "Nothing was committed");
    else
        fprintf(stderr, "Committed (version %" PRIu64 "): ", version);
    for (size_t i = 0; i < nok; i++) {
        range(u, ok[i], buf, sizeof(buf));
        fprintf(stderr, "%s%s", i ? ", " : "", buf);
    }
    if (failed.to > failed.from) {
        range(u, failed, buf, sizeof(buf));
        fprintf(stderr, ". Failed, nothing of it applied: %s", buf);
        size_t item;
        if (why && sscanf(why, "item %zu", &item) == 1 && failed.from + item < failed.to) {
            where(u, failed.from + item, buf, sizeof(buf));
            fprintf(stderr, " (the item at %s: %s)", buf, why);
        } else if (why && why[0]) {
            fprintf(stderr, " (%s)", why);
        }
    }
    if (sent_to < n) {
        range(u, (span){sent_to, n}, buf, sizeof(buf));
        fprintf(stderr, ". Not sent: %s", buf);
    }
    fprintf(stderr, ". Upserting the same ids again is safe: it overwrites.\n");
}

/* Every row has one dimension, the index's: checked before anything is sent. */
static int check_dims(cli *x, const upload *u, size_t n)
{
    wire_response *w = NULL;
    cdx_err e = app_client_describe_index(x->c, u->index, &w);
    if (e) {
        wire_response_free(w);
        return cli_fail(x, e);
    }
    uint32_t dim = wire_response_msg(w)->describe_index->index->dimension;
    wire_response_free(w);
    for (size_t r = 0; r < n; r++) {
        size_t d = u->jsonl ? u->jl[r].dim : u->d;
        if (d != dim) {
            char at[48];
            where(u, r, at, sizeof(at));
            fprintf(stderr,
                    "cipherdex: %s: the vector has %zu numbers, index %s has dimension %u; "
                    "nothing was sent\n",
                    at, d, u->index, dim);
            return 1;
        }
    }
    return 0;
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
    /* Before anything is sent: every row has the index's dimension (one describe). */
    if (n && check_dims(x, &u, n)) {
        free(u.x);
        free(u.lab);
        jsonl_free(u.jl, n_all);
        return 1;
    }
    app_item *items = calloc(batch, sizeof(*items));
    char(*ids)[300] = calloc(batch, 300);
    char(*meta)[64] = calloc(batch, 64);
    double t0 = cdx_mono_s();
    cdx_err e = CDX_OK;
    uint64_t version = 0;
    size_t done = 0;
    /* Two batches in flight: the next is on the wire while the server commits this one. Each
     * batch's rows are remembered so a failure can say exactly what was committed. */
    span fly[2], ok[CDX_UPSERT_SPANS_MAX];
    size_t inflight = 0, nok = 0, sent_to = 0;
    span failed = {0, 0};
    char why[512] = "";
    cdx_err first = CDX_OK;
    for (size_t off = 0; off < n || inflight;) {
        if (off < n && inflight < 2 && first == CDX_OK) {
            size_t m = n - off < batch ? n - off : batch;
            for (size_t i = 0; i < m; i++)
                items[i] = item_of(&u, off + i, ids[i], meta[i]);
            if ((e = app_client_upsert_send(x->c, u.index, items, m, NULL)))
                break;
            fly[inflight++] = (span){off, off + m};
            off += m;
            sent_to = off;
            continue;
        }
        if (!inflight)
            break;
        wire_response *w = NULL;
        e = app_client_recv(x->c, &w);
        span sp = fly[0];
        fly[0] = fly[1];
        inflight--;
        if (e) {
            wire_response_free(w);
            if (e == CDX_ERR_UNAVAILABLE || e == CDX_ERR_DEADLINE_EXCEEDED) /* connection */
                break;
            if (first == CDX_OK) { /* stop sending; learn what the batch in flight did */
                first = e;
                failed = sp;
                snprintf(why, sizeof(why), "%s", cdx_err_detail());
            }
            continue;
        }
        const Cipherdex__V1__UpsertResponse *ur = wire_response_msg(w)->upsert;
        done += ur->upserted;
        version = ur->version;
        wire_response_free(w);
        if (nok && ok[nok - 1].to == sp.from)
            ok[nok - 1].to = sp.to;
        else if (nok < CDX_UPSERT_SPANS_MAX)
            ok[nok++] = sp;
        cli_progress("upsert", done, n, t0);
    }
    if (!e && first != CDX_OK) {
        e = first;
        report_partial(&u, ok, nok, failed, why, sent_to, n, version);
        cdx_fail(e, "%s", why);
    } else if (e && (nok || inflight)) {
        report_partial(&u, ok, nok, inflight ? fly[0] : (span){sent_to, sent_to}, cdx_err_detail(),
                       sent_to, n, version);
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
