/* rel_common: fixtures, clients, the per-id model and the results file (see rel_common.h). */
#include "rel_common.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fx_tmp.h"

rel_env R = {.s = FX_STACK_INIT};

#define GET_CHUNK  500
#define LIST_CHUNK 1000

double rel_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

void rel_pause_ms(double ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000),
                          .tv_nsec = (long)((ms - (double)(time_t)(ms / 1000) * 1000) * 1e6)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

uint64_t rel_rand(void)
{
    uint64_t x = R.seed;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return R.seed = x;
}

int rel_setup(void)
{
    const char *full = getenv("CDX_RELIABILITY_FULL");
    const char *seed = getenv("CDX_RELIABILITY_SEED");
    R.full = full && !strcmp(full, "1");
    R.seed =
        seed ? strtoull(seed, NULL, 0) : (uint64_t)time(NULL) * 2654435761u + (uint64_t)getpid();
    if (!R.seed)
        R.seed = 1;
    printf("reliability: %s mode, seed %llu (CDX_RELIABILITY_SEED reproduces the fault timing)\n",
           R.full ? "full" : "short", (unsigned long long)R.seed);
    /* appendfsync always: the setting under which no acknowledged write may be lost (F1). */
    fx_redis_opts ro = {.appendonly = 1, .appendfsync = "always"};
    return fx_stack_open(&R.s, "reliab", &ro);
}

void rel_teardown(void)
{
    (void)fx_stack_close(&R.s); /* each part checks its own stop */
}

int rel_write_conf(const rel_conf *c)
{
    char server[1024], sections[4096];
    int n = snprintf(server, sizeof(server), "workers = 4\n%s", c && c->server ? c->server : "");
    int m = snprintf(sections, sizeof(sections), "[cache]\nbytes = 64M\n%s",
                     c && c->sections ? c->sections : "");
    if (n < 0 || (size_t)n >= sizeof(server) || m < 0 || (size_t)m >= sizeof(sections))
        return -1;
    fx_stack_conf sc = {.server = server,
                        .module = c ? c->module : NULL,
                        .store = c ? c->store : NULL,
                        .sections = sections};
    return fx_stack_write_conf(&R.s, &sc);
}

int rel_daemon_start(double *ms)
{
    double t0 = rel_now_ms();
    if (fx_stack_start(&R.s))
        return -1;
    if (ms)
        *ms = rel_now_ms() - t0;
    return 0;
}

app_client *rel_client(uint32_t timeout_ms, cdx_err *err)
{
    app_client_opts o = {.addr = R.s.addr,
                         .ca = fx_pki_ca(R.s.pki, 0),
                         .cert = R.s.admin->cert,
                         .key = R.s.admin->key,
                         .timeout_ms = timeout_ms};
    app_client *c = NULL;
    cdx_err e = app_client_connect(&o, &c);
    if (err)
        *err = e;
    return e ? NULL : c;
}

app_client *rel_client_wait(double deadline_ms)
{
    do {
        app_client *c = rel_client(5000, NULL);
        if (c) {
            wire_response *w = NULL;
            cdx_err e = app_client_health(c, &w);
            wire_response_free(w);
            if (!e)
                return c;
            app_client_free(c);
        }
        rel_pause_ms(20); /* polling a condition against the deadline */
    } while (rel_now_ms() < deadline_ms);
    return NULL;
}

cdx_err rel_create_index(app_client *c, const char *name)
{
    const app_index_spec spec = {
        .name = name, .dimension = REL_DIM, .metric = "euclidean", .index_type = "ivfflat"};
    wire_response *w = NULL;
    cdx_err e = app_client_create_index(c, &spec, &w);
    wire_response_free(w);
    return e;
}

void rel_hist_add(rel_id *m, uint32_t tag)
{
    for (size_t i = 0; i < m->nhist; i++)
        if (m->hist[i] == tag)
            return;
    if (m->nhist == m->caphist) {
        size_t cap = m->caphist ? m->caphist * 2 : 8;
        uint32_t *h = realloc(m->hist, cap * sizeof(*h));
        if (!h)
            abort();
        m->hist = h;
        m->caphist = cap;
    }
    m->hist[m->nhist++] = tag;
}

void rel_model_free(rel_id *m, size_t n)
{
    for (size_t i = 0; m && i < n; i++)
        free(m[i].hist);
    free(m);
}

void rel_id_name(uint32_t i, char *out, size_t cap)
{
    snprintf(out, cap, "id-%u", i);
}

void rel_batch_make(rel_batch *b, const uint32_t *ids, size_t n, uint32_t tag)
{
    b->n = n;
    b->items = calloc(n, sizeof(*b->items));
    b->vecs = calloc(n * REL_DIM, sizeof(float));
    b->names = calloc(n, sizeof(*b->names));
    if (!b->items || !b->vecs || !b->names)
        abort();
    for (size_t i = 0; i < n; i++) {
        float *v = b->vecs + i * REL_DIM;
        rel_id_name(ids[i], b->names[i], sizeof(b->names[i]));
        v[0] = (float)ids[i];
        v[1] = (float)(tag >> 16);
        v[2] = (float)(tag & 0xffff);
        v[3] = 0.5f;
        b->items[i] = (app_item){.id = b->names[i], .vector = v, .dim = REL_DIM};
    }
}

void rel_batch_free(rel_batch *b)
{
    free(b->items);
    free(b->vecs);
    free(b->names);
    memset(b, 0, sizeof(*b));
}

cdx_err rel_upsert(app_client *c, const char *index, const uint32_t *ids, size_t n, uint32_t tag,
                   uint64_t *version)
{
    rel_batch b;
    rel_batch_make(&b, ids, n, tag);
    wire_response *w = NULL;
    cdx_err e = app_client_upsert(c, index, b.items, n, &w);
    if (!e && version)
        *version = wire_response_msg(w)->upsert->version;
    wire_response_free(w);
    rel_batch_free(&b);
    return e;
}

/* The tag a returned item carries, 0 when absent; UINT32_MAX when its bytes are no write's. */
static uint32_t seen_tag(const Cipherdex__V1__GetResponse *g, size_t i, uint32_t id)
{
    if (i >= g->n_found || !g->found[i])
        return 0;
    const Cipherdex__V1__Item *it = g->items[i];
    if (it->n_vector != REL_DIM || it->vector[0] != (float)id || it->vector[3] != 0.5f ||
        it->vector[1] < 0 || it->vector[1] > 65535 || it->vector[2] < 0 || it->vector[2] > 65535)
        return UINT32_MAX;
    uint32_t tag = (uint32_t)it->vector[1] << 16 | (uint32_t)it->vector[2];
    return tag ? tag : UINT32_MAX;
}

static bool in_hist(const rel_id *m, uint32_t tag)
{
    for (size_t i = 0; i < m->nhist; i++)
        if (m->hist[i] == tag)
            return true;
    return false;
}

static int count_list_ids(app_client *c, const char *index, size_t *out, cdx_err *err)
{
    size_t n = 0;
    char *cursor = NULL;
    do {
        wire_response *w = NULL;
        cdx_err e = app_client_list_ids(c, index, cursor, LIST_CHUNK, &w);
        free(cursor);
        cursor = NULL;
        if (e) {
            *err = e;
            wire_response_free(w);
            return -1;
        }
        const Cipherdex__V1__ListIdsResponse *lr = wire_response_msg(w)->list_ids;
        n += lr->n_ids;
        if (lr->next_cursor.len)
            cursor = strndup((const char *)lr->next_cursor.data, lr->next_cursor.len);
        wire_response_free(w);
    } while (cursor);
    *out = n;
    return 0;
}

int rel_verify(app_client *c, const char *index, rel_id *m, size_t n, rel_check *r,
               int *count_mismatch)
{
    uint32_t *seen = calloc(n ? n : 1, sizeof(*seen));
    size_t pending = 0, applied = 0, present = 0;
    bool any_uncertain = false;
    int rc = -1;
    char(*names)[24] = calloc(GET_CHUNK, sizeof(*names));
    const char **ptrs = calloc(GET_CHUNK, sizeof(*ptrs));
    if (!seen || !names || !ptrs)
        abort();
    r->err = CDX_OK;
    for (size_t base = 0; base < n; base += GET_CHUNK) {
        size_t k = n - base < GET_CHUNK ? n - base : GET_CHUNK;
        for (size_t i = 0; i < k; i++) {
            rel_id_name((uint32_t)(base + i), names[i], sizeof(names[i]));
            ptrs[i] = names[i];
        }
        wire_response *w = NULL;
        cdx_err e = app_client_get(c, index, ptrs, k, APP_INCLUDE_VECTORS, 0, &w);
        if (e) {
            r->err = e;
            wire_response_free(w);
            goto out;
        }
        const Cipherdex__V1__GetResponse *g = wire_response_msg(w)->get;
        for (size_t i = 0; i < k; i++)
            seen[base + i] = i < g->n_items ? seen_tag(g, i, (uint32_t)(base + i)) : UINT32_MAX;
        wire_response_free(w);
    }
    for (size_t i = 0; i < n; i++) {
        rel_id *x = &m[i];
        uint32_t s = seen[i];
        r->checked++;
        if (s != 0 && (s == UINT32_MAX || !in_hist(x, s))) {
            r->corrupt++;
        } else if (x->uncertain) {
            any_uncertain = true;
        } else if (x->pend && s == x->pend) {
            applied++;
        } else if (s != x->cur) {
            if (s == 0)
                r->lost++;
            else if (x->cur == 0)
                r->resurrected++;
            else
                r->stale++;
        }
        if (x->pend)
            pending++;
    }
    if (applied && applied != pending)
        r->partial++;
    if (applied)
        r->applied_unknown++;
    /* The model is now what the store holds. */
    for (size_t i = 0; i < n; i++) {
        if (seen[i] != UINT32_MAX)
            m[i].cur = seen[i];
        m[i].pend = 0;
        m[i].uncertain = false;
        if (m[i].cur)
            present++;
    }
    size_t listed = 0;
    if (count_list_ids(c, index, &listed, &r->err))
        goto out;
    wire_response *w = NULL;
    cdx_err e = app_client_describe_index(c, index, &w);
    if (e) {
        r->err = e;
        wire_response_free(w);
        goto out;
    }
    uint64_t count = wire_response_msg(w)->describe_index->index->count;
    wire_response_free(w);
    if (count_mismatch && !any_uncertain && (count != listed || listed != present)) {
        fprintf(stderr, "count mismatch: describe %llu, list_ids %zu, model %zu\n",
                (unsigned long long)count, listed, present);
        *count_mismatch = 1;
    }
    rc = 0;
out:
    free(seen);
    free(names);
    free(ptrs);
    return rc;
}

void rel_result(const char *fmt, ...)
{
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    printf("\n    RESULT %s\n", line);
    const char *path = getenv("CDX_RELIABILITY_RESULTS");
    if (!path || !*path)
        return;
    FILE *f = fopen(path, "a");
    if (!f)
        return;
    fprintf(f, "mode=%s\t%s\n", R.full ? "full" : "short", line);
    fclose(f);
}

void rel_hist_text(const unsigned long *h, char *out, size_t cap)
{
    size_t off = 0;
    out[0] = '\0';
    for (int i = 1; i < 128 && off < cap; i++)
        if (h[i]) {
            int n = snprintf(out + off, cap - off, "%s%s:%lu", off ? " " : "",
                             cdx_err_name((cdx_err)i), h[i]);
            if (n < 0)
                break;
            off += (size_t)n;
        }
    if (!off)
        snprintf(out, cap, "none");
}

bool rel_model_write(rel_id *m, const uint32_t *ids, size_t n, uint32_t tag, cdx_err e,
                     unsigned long errs[128])
{
    for (size_t i = 0; i < n; i++) {
        if (!e)
            m[ids[i]].cur = tag;
        m[ids[i]].pend = e ? tag : 0;
    }
    if (e)
        errs[e < 128 ? e : CDX_ERR_UNKNOWN]++;
    return !e;
}
