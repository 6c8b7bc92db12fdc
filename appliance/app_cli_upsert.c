/*
 * cipherdex upsert: vectors from .fvecs/.bvecs/IDX files or JSON Lines, in
 * batches bounded by items and by bytes, two in flight. A failed upload says
 * which rows landed, and a progress file next to the input (or --progress
 * FILE) lets --resume skip the rows committed in order (docs/CLI.md).
 */
#include <errno.h>
#include <openssl/evp.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    char *contents; /* "contents" (text) or "contents_base64" decoded (any bytes) */
    size_t contents_len;
} jl_item;

/* Standard base64 (with padding) into a malloc'ed buffer; false when s is not that. */
static bool b64_decode(const char *s, uint8_t **out, size_t *n)
{
    size_t len = strlen(s);
    *out = NULL;
    *n = 0;
    if (len % 4 || len / 4 * 3 > CDX_CONTENTS_MAX + 3)
        return false;
    uint8_t *b = malloc(len / 4 * 3 + 1);
    int got = b ? EVP_DecodeBlock(b, (const unsigned char *)s, (int)len) : -1;
    if (got < 0) {
        free(b);
        return false;
    }
    size_t pad = len >= 1 && s[len - 1] == '=' ? (len >= 2 && s[len - 2] == '=' ? 2 : 1) : 0;
    *out = b;
    *n = (size_t)got - pad;
    return true;
}

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
        json_t *ct = json_object_get(j, "contents"), *cb = json_object_get(j, "contents_base64");
        const char *bad = NULL;
        if (m && !json_is_null(m) && !json_is_object(m))
            bad = "\"metadata\" must be a JSON object";
        else if (ct && cb)
            bad = "give \"contents\" (text) or \"contents_base64\", not both";
        else if (ct && !json_is_string(ct))
            bad = "\"contents\" must be a string (binary contents: \"contents_base64\")";
        else if (cb &&
                 (!json_is_string(cb) ||
                  !b64_decode(json_string_value(cb), (uint8_t **)&it->contents, &it->contents_len)))
            bad = "\"contents_base64\" must be a string of standard base64";
        if (bad) {
            fprintf(stderr, "cipherdex: %s:%zu: %s\n", path, line, bad);
            json_decref(j);
            free(buf);
            fclose(f);
            return -1;
        }
        if (m && !json_is_null(m))
            it->meta = json_dumps(m, JSON_COMPACT);
        if (ct) {
            it->contents_len = json_string_length(ct);
            it->contents = malloc(it->contents_len + 1);
            memcpy(it->contents, json_string_value(ct), it->contents_len + 1);
        }
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
                          .contents_len = j->contents_len};
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

/* The number of `where` (the line, or the 1-based row): what --start-line takes. */
static size_t line_of(const upload *u, size_t row)
{
    return u->jsonl ? u->jl[row].line : row + 1;
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

/* Bytes an item adds to an upsert request: its fields with generous protobuf overhead. */
static size_t item_bytes(const app_item *it)
{
    return strlen(it->id) + it->dim * sizeof(float) + (it->metadata ? strlen(it->metadata) : 0) +
           it->contents_len + 32;
}

/* ---- the progress record: rows [0, rec.rows) committed, and their SHA-256 ---- */

typedef struct progress {
    const char *path; /* NULL: not recorded */
    const char *input;
    cli_resume_rec rec;
    EVP_MD_CTX *h; /* over rows [0, rec.rows) as sent */
    bool warned;
} progress;

static void put64(EVP_MD_CTX *h, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (56 - 8 * i));
    EVP_DigestUpdate(h, b, 8);
}

/* Rows [from, to) into h, as they are sent: id, vector (float32 bits), metadata, contents. */
static void hash_rows(EVP_MD_CTX *h, const upload *u, size_t from, size_t to)
{
    char id[300], meta[64];
    for (size_t r = from; r < to; r++) {
        app_item it = item_of(u, r, id, meta);
        size_t ml = it.metadata ? strlen(it.metadata) : 0;
        put64(h, strlen(it.id));
        EVP_DigestUpdate(h, it.id, strlen(it.id));
        put64(h, it.dim);
        for (size_t k = 0; k < it.dim; k++) {
            uint32_t bits;
            memcpy(&bits, &it.vector[k], 4);
            uint8_t b[4] = {(uint8_t)(bits >> 24), (uint8_t)(bits >> 16), (uint8_t)(bits >> 8),
                            (uint8_t)bits};
            EVP_DigestUpdate(h, b, 4);
        }
        put64(h, ml);
        EVP_DigestUpdate(h, it.metadata ? it.metadata : "", ml);
        put64(h, it.contents_len);
        EVP_DigestUpdate(h, it.contents ? it.contents : "", it.contents_len);
    }
}

/* The digest so far, without ending h. */
static void hash_peek(EVP_MD_CTX *h, uint8_t out[32])
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    unsigned n = 0;
    if (!c || !EVP_MD_CTX_copy_ex(c, h) || !EVP_DigestFinal_ex(c, out, &n))
        memset(out, 0, 32); /* out of memory: a record no input matches */
    EVP_MD_CTX_free(c);
}

/* Rows [rec.rows, to) were committed (at `version`): extend the record and write it. */
static void progress_advance(progress *p, const upload *u, size_t to, uint64_t version)
{
    if (to <= p->rec.rows)
        return;
    hash_rows(p->h, u, p->rec.rows, to);
    p->rec.rows = to;
    p->rec.version = version;
    where(u, to - 1, p->rec.through, sizeof(p->rec.through));
    hash_peek(p->h, p->rec.sha256);
    if (p->path && cli_resume_write(p->path, p->input, &p->rec) && !p->warned) {
        fprintf(stderr,
                "cipherdex: cannot record progress in %s (%s): --resume will not know this run "
                "(--start-line still works; --progress FILE puts the record elsewhere)\n",
                p->path, strerror(errno));
        p->warned = true;
    }
}

/*
 * --resume: the rows the progress file says were committed, if they are still the input's
 * first rows; -1 (said why) when the record does not fit this upload.
 */
static long long resume_rows(progress *p, const upload *u, size_t n_all)
{
    cli_resume_rec r;
    int rc = cli_resume_read(p->path, &r);
    if (rc < 0)
        return -1;
    if (rc == 1) {
        fprintf(stderr,
                "cipherdex: no progress file %s: nothing recorded, uploading from the "
                "first row\n",
                p->path);
        return 0;
    }
    if (strcmp(r.index, u->index)) {
        fprintf(stderr,
                "cipherdex: %s records an upload into index %s, not %s: nothing was sent "
                "(--progress FILE names another record)\n",
                p->path, r.index, u->index);
        return -1;
    }
    if (r.rows > n_all) {
        fprintf(stderr,
                "cipherdex: %s records %" PRIu64 " committed rows but %s has %zu: nothing was "
                "sent (re-run without --resume: upserting the same ids again overwrites)\n",
                p->path, r.rows, p->input, n_all);
        return -1;
    }
    uint8_t sha[32];
    hash_rows(p->h, u, 0, (size_t)r.rows);
    hash_peek(p->h, sha);
    if (memcmp(sha, r.sha256, 32)) {
        fprintf(stderr,
                "cipherdex: the first %" PRIu64 " rows of %s (through %s) are not the ones %s "
                "recorded as committed: nothing was sent. Re-run without --resume (upserting "
                "the same ids again overwrites) or give --start-line\n",
                r.rows, p->input, r.through, p->path);
        return -1;
    }
    p->rec = r;
    return (long long)r.rows;
}

/*
 * Walkthrough problem 10: after a failed batch, say exactly which rows were committed, which
 * failed (naming the item's own line when the server names the item), whose outcome is unknown
 * (the connection dropped), which were not sent, and how to finish.
 */
static void report_partial(const upload *u, const span *ok, size_t nok, span failed,
                           const char *why, span unknown, size_t unsent_from, size_t n,
                           uint64_t version, const progress *p, const char *file)
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
    if (unknown.to > unknown.from) {
        range(u, unknown, buf, sizeof(buf));
        fprintf(stderr, ". Sent, outcome unknown (the connection failed: %s): %s",
                why && why[0] ? why : "no answer", buf);
    }
    if (unsent_from < n) {
        range(u, (span){unsent_from, n}, buf, sizeof(buf));
        fprintf(stderr, ". Not sent: %s", buf);
    }
    fprintf(stderr, ".\n");
    size_t next = (size_t)p->rec.rows; /* the first row not committed in order */
    if (next < n) {
        where(u, next, buf, sizeof(buf));
        fprintf(stderr, "To finish, from %s: cipherdex upsert %s --file %s ", buf, u->index, file);
        if (p->path && !p->warned && p->rec.rows)
            fprintf(stderr, "--resume (%s records %s as the last committed in order), or ", p->path,
                    p->rec.through);
        fprintf(stderr,
                "--start-line %zu. Re-running the whole upload is safe too: upsert replaces "
                "items by id.\n",
                line_of(u, next));
    }
}

/* Every row has one dimension, the index's: checked before anything is sent. */
static int check_dims(cli *x, const upload *u, size_t from, size_t n)
{
    wire_response *w = NULL;
    cdx_err e = app_client_describe_index(x->c, u->index, &w);
    if (e) {
        wire_response_free(w);
        return cli_fail(x, e);
    }
    uint32_t dim = wire_response_msg(w)->describe_index->index->dimension;
    wire_response_free(w);
    for (size_t r = from; r < n; r++) {
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

/*
 * Batches must fit the server's frame cap, which its health answer reports (field 8; 0 from
 * older servers, or no answer when it is unavailable: then the default cap is assumed). A
 * bound above the cap is lowered to it, less CDX_CLI_BATCH_SLACK (half of it for tiny caps),
 * and said when it was the user's.
 */
static uint64_t fit_server_cap(cli *x, uint64_t batch_bytes, bool given, uint64_t *server_cap)
{
    wire_response *w = NULL;
    uint64_t cap = 0;
    cdx_err e = app_client_health(x->c, &w);
    const Cipherdex__V1__Response *r = w ? wire_response_msg(w) : NULL;
    if (r && r->body_case == CIPHERDEX__V1__RESPONSE__BODY_HEALTH)
        cap = r->health->max_frame_bytes;
    (void)e; /* a server that cannot answer health will refuse the upload with the reason */
    wire_response_free(w);
    *server_cap = cap ? cap : CDX_FRAME_MAX_DEFAULT;
    if (!cap)
        return batch_bytes;
    uint64_t fit = cap > 2 * CDX_CLI_BATCH_SLACK ? cap - CDX_CLI_BATCH_SLACK : cap / 2;
    if (batch_bytes <= fit)
        return batch_bytes;
    if (given)
        fprintf(stderr,
                "cipherdex: --batch-bytes %" PRIu64 " lowered to %" PRIu64
                ": the server accepts frames of at most %" PRIu64 " bytes\n",
                batch_bytes, fit, cap);
    return fit;
}

/*
 * Every row fits the server's frame cap on its own (a larger one would only make the server
 * drop the connection): checked before anything is sent.
 */
static int check_sizes(const upload *u, size_t from, size_t n, uint64_t cap)
{
    char id[300], meta[64], at[48];
    for (size_t r = from; r < n; r++) {
        app_item it = item_of(u, r, id, meta);
        size_t b = item_bytes(&it);
        if (b + CDX_INDEX_NAME_MAX + 64 > cap) {
            where(u, r, at, sizeof(at));
            fprintf(stderr,
                    "cipherdex: %s: this item is about %zu bytes, more than the server's frame "
                    "cap of %" PRIu64 " bytes ([server] max_frame_bytes) allows in one request; "
                    "nothing was sent\n",
                    at, b, cap);
            return 1;
        }
    }
    return 0;
}

/*
 * Send rows [first, n) in batches of at most `batch` items and `batch_bytes` bytes (a single
 * larger item goes alone), two in flight: the next is on the wire while the server commits
 * this one. Each batch's rows are remembered so that a failure can say exactly what was
 * committed; the progress record follows the rows committed in order. Returns the exit code.
 */
static int send_all(cli *x, const upload *u, size_t first, size_t n, uint32_t batch,
                    size_t batch_bytes, progress *pr, const char *file)
{
    app_item *items = calloc(batch, sizeof(*items));
    char(*ids)[300] = calloc(batch, 300);
    char(*meta)[64] = calloc(batch, 64);
    double t0 = cdx_mono_s();
    cdx_err e = CDX_OK;
    uint64_t version = 0;
    size_t done = 0, batches = 0;
    span fly[2], ok[CDX_UPSERT_SPANS_MAX], failed = {0, 0}, unknown = {0, 0};
    size_t inflight = 0, nok = 0, sent_to = first;
    char why[512] = "";
    bool broken = false; /* the connection failed: what was in flight has an unknown outcome */
    if (!items || !ids || !meta) {
        e = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory for a batch of %u items", batch);
        goto out;
    }
    for (size_t off = first;;) {
        if (off < n && inflight < 2 && e == CDX_OK) {
            size_t m = 0, bytes = 0;
            while (off + m < n && m < batch) {
                app_item it = item_of(u, off + m, ids[m], meta[m]);
                size_t b = item_bytes(&it);
                if (m && bytes + b > batch_bytes)
                    break;
                items[m++] = it;
                bytes += b;
            }
            cdx_err se = app_client_upsert_send(x->c, u->index, items, m, NULL);
            if (se) {
                e = se;
                snprintf(why, sizeof(why), "%s", cdx_err_detail());
                if (se == CDX_ERR_FRAME_TOO_LARGE || se == CDX_ERR_RESOURCE_EXHAUSTED) {
                    failed = (span){off, off + m}; /* refused here: nothing of it was sent */
                    if (se == CDX_ERR_FRAME_TOO_LARGE)
                        snprintf(why + strlen(why), sizeof(why) - strlen(why),
                                 "; this batch of %zu item%s is about %zu bytes: lower "
                                 "--batch-bytes (now %zu) or --batch",
                                 m, m == 1 ? "" : "s", bytes, batch_bytes);
                } else {
                    broken = true; /* a write failed: the connection is gone */
                }
                sent_to = off; /* from here nothing was sent */
                continue;
            }
            fly[inflight++] = (span){off, off + m};
            batches++;
            off += m;
            sent_to = off;
            continue;
        }
        if (!inflight || broken)
            break;
        wire_response *w = NULL;
        cdx_err re = app_client_recv(x->c, &w);
        span sp = fly[0];
        if (re && !w) { /* transport or protocol: no answer, the connection is unusable */
            wire_response_free(w);
            if (e == CDX_OK) {
                e = re;
                snprintf(why, sizeof(why), "%s", cdx_err_detail());
            }
            broken = true;
            unknown = (span){fly[0].from, fly[inflight - 1].to};
            inflight = 0;
            break;
        }
        fly[0] = fly[1];
        inflight--;
        if (re) { /* the server refused this batch: stop sending; learn what the other did */
            wire_response_free(w);
            if (e == CDX_OK) {
                e = re;
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
        if (sp.from == pr->rec.rows)
            progress_advance(pr, u, sp.to, version);
        cli_progress("upsert", done, n - first, t0);
    }
    if (broken && inflight) /* sent, never answered */
        unknown = (span){fly[0].from, fly[inflight - 1].to};
    if (e) {
        if (nok || failed.to > failed.from || unknown.to > unknown.from || sent_to > first)
            report_partial(u, ok, nok, failed, why, unknown,
                           failed.to > sent_to ? failed.to : sent_to, n, version, pr, file);
        cdx_fail(e, "%s", why);
    }
out:;
    double el = cdx_mono_s() - t0;
    free(items);
    free(ids);
    free(meta);
    if (e)
        return cli_fail(x, e);
    if (x->json)
        cli_print_json(json_pack("{s:s,s:I,s:I,s:I,s:I,s:f,s:f}", "index", u->index, "upserted",
                                 (json_int_t)done, "skipped", (json_int_t)first, "batches",
                                 (json_int_t)batches, "version", (json_int_t)version, "seconds", el,
                                 "vectors_per_s", el > 0 ? done / el : 0.0));
    else
        printf("upserted %zu items into %s in %.2f s (%.0f/s, %zu batch%s), version %" PRIu64 "\n",
               done, u->index, el, el > 0 ? done / el : 0.0, batches, batches == 1 ? "" : "es",
               version);
    return 0;
}

int cli_upsert(cli *x, cli_args *a)
{
    if (a->i >= a->n)
        return cli_usage("upsert needs an index name");
    upload u = {.index = a->v[a->i++], .prefix = ""};
    const char *file = NULL, *labels = NULL, *progress_path = NULL;
    uint32_t batch = CDX_CLI_BATCH_DEFAULT;
    uint64_t limit = 0, start_line = 0, batch_bytes = CDX_CLI_BATCH_BYTES_DEFAULT;
    bool resume = false, bytes_given = false;
    for (; a->i < a->n; a->i++) {
        const char *o = a->v[a->i];
        if (!strcmp(o, "--file"))
            file = cli_opt_value(a, o);
        else if (!strcmp(o, "--labels"))
            labels = cli_opt_value(a, o);
        else if (!strcmp(o, "--id-prefix"))
            u.prefix = cli_opt_value(a, o);
        else if (!strcmp(o, "--progress"))
            progress_path = cli_opt_value(a, o);
        else if (!strcmp(o, "--resume"))
            resume = true;
        else if (!strcmp(o, "--batch")) {
            if (!cdx_parse_u32(cli_opt_value(a, o), &batch) || !batch ||
                batch > CDX_UPSERT_BATCH_MAX)
                return cli_usage("--batch needs 1..%d", CDX_UPSERT_BATCH_MAX);
        } else if (!strcmp(o, "--batch-bytes")) {
            bytes_given = true;
            if (!cdx_parse_u64(cli_opt_value(a, o), &batch_bytes) || batch_bytes < 1024 ||
                batch_bytes > CDX_FRAME_MAX_DEFAULT - CDX_CLI_BATCH_SLACK)
                return cli_usage("--batch-bytes needs 1024..%u (the frame cap, %u, less %u for "
                                 "the request's own fields)",
                                 CDX_FRAME_MAX_DEFAULT - CDX_CLI_BATCH_SLACK, CDX_FRAME_MAX_DEFAULT,
                                 CDX_CLI_BATCH_SLACK);
        } else if (!strcmp(o, "--start-line")) {
            if (!cdx_parse_u64(cli_opt_value(a, o), &start_line) || !start_line)
                return cli_usage("--start-line needs a line number from 1");
        } else if (!strcmp(o, "--start")) {
            if (!cdx_parse_u64(cli_opt_value(a, o), &u.start))
                return cli_usage("--start needs a number");
        } else if (!strcmp(o, "--limit")) {
            if (!cdx_parse_u64(cli_opt_value(a, o), &limit))
                return cli_usage("--limit needs a number");
        } else
            return cli_usage("upsert: unknown option %s", o);
    }
    if (!file)
        return cli_usage("upsert needs --file (.fvecs, .bvecs, IDX images, or .jsonl)");
    if (resume && start_line)
        return cli_usage("--resume or --start-line, not both");
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

    /* Where to start, and the progress record (rows [0, first) count as committed). */
    char auto_path[4096];
    if (!progress_path) {
        snprintf(auto_path, sizeof(auto_path), "%s.progress", file);
        progress_path = auto_path;
    }
    progress pr = {.path = progress_path, .input = file, .h = EVP_MD_CTX_new()};
    snprintf(pr.rec.index, sizeof(pr.rec.index), "%s", u.index);
    int rc = 0;
    size_t first = 0;
    if (!pr.h || !EVP_DigestInit_ex(pr.h, EVP_sha256(), NULL)) {
        fprintf(stderr, "cipherdex: out of memory\n");
        rc = 1;
        goto out;
    }
    if (resume) {
        long long r = resume_rows(&pr, &u, n_all);
        if (r < 0) {
            rc = 1;
            goto out;
        }
        first = (size_t)r;
    } else if (start_line) {
        while (first < n_all && line_of(&u, first) < start_line)
            first++;
        hash_rows(pr.h, &u, 0, first);
        pr.rec.rows = first;
    }
    if (first > n)
        first = n;
    if (first) {
        char at[48];
        where(&u, first - 1, at, sizeof(at));
        fprintf(stderr, "cipherdex: skipping %zu row%s (through %s)%s\n", first,
                first == 1 ? "" : "s", at,
                resume ? ", committed by an earlier run" : ", as --start-line says");
    }
    /* Before anything is sent: every row has the index's dimension (one describe). */
    if (first < n && check_dims(x, &u, first, n)) {
        rc = 1;
        goto out;
    }
    if (first < n) {
        uint64_t cap = 0;
        batch_bytes = fit_server_cap(x, batch_bytes, bytes_given, &cap);
        if (check_sizes(&u, first, n, cap)) {
            rc = 1;
            goto out;
        }
    }
    rc = send_all(x, &u, first, n, batch, (size_t)batch_bytes, &pr, file);
    if (!rc && pr.path && unlink(pr.path) && errno != ENOENT)
        fprintf(stderr, "cipherdex: the upload is complete but %s could not be removed: %s\n",
                pr.path, strerror(errno));
out:
    EVP_MD_CTX_free(pr.h);
    free(u.x);
    free(u.lab);
    jsonl_free(u.jl, n_all);
    return rc;
}
