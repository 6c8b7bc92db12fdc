/* Per-principal limits (app_ratelimit.h). */
#include "app_ratelimit.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cdx_limits.h"

typedef struct entry {
    char principal[CDX_PRINCIPAL_MAX + 1]; /* "" = free */
    double req_tokens, byte_tokens;        /* what the buckets hold */
    uint64_t last_ns;                      /* last refill */
    uint32_t inflight;
} entry;

struct app_ratelimit {
    pthread_mutex_t mu;
    entry *e;
    size_t n; /* used slots (a dense prefix of e) */
};

cdx_err app_ratelimit_new(app_ratelimit **out)
{
    app_ratelimit *r = calloc(1, sizeof(*r));
    if (r)
        r->e = calloc(CDX_RATE_PRINCIPALS_MAX, sizeof(entry));
    if (!r || !r->e) {
        free(r);
        *out = NULL;
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    pthread_mutex_init(&r->mu, NULL);
    *out = r;
    return CDX_OK;
}

void app_ratelimit_free(app_ratelimit *r)
{
    if (!r)
        return;
    pthread_mutex_destroy(&r->mu);
    free(r->e);
    free(r);
}

/* The principal's entry, made (full buckets) or recycled (the longest idle) if new. */
static entry *find(app_ratelimit *r, const char *principal, const pol_limits *l, uint64_t now)
{
    for (size_t i = 0; i < r->n; i++)
        if (!strcmp(r->e[i].principal, principal))
            return &r->e[i];
    entry *e = NULL;
    if (r->n < CDX_RATE_PRINCIPALS_MAX) {
        e = &r->e[r->n++];
    } else {
        for (size_t i = 0; i < r->n; i++)
            if (!r->e[i].inflight && (!e || r->e[i].last_ns < e->last_ns))
                e = &r->e[i];
        if (!e)
            return NULL; /* every known principal has a request in flight */
    }
    memset(e, 0, sizeof(*e));
    snprintf(e->principal, sizeof(e->principal), "%s", principal);
    e->req_tokens = l->burst ? l->burst : l->requests_per_s;
    e->byte_tokens = (double)l->bytes_per_s;
    e->last_ns = now;
    return e;
}

cdx_err app_ratelimit_enter(app_ratelimit *r, const char *principal, const pol_limits *l,
                            uint64_t bytes, uint64_t now_ns, uint32_t *retry_ms, bool *tracked)
{
    *retry_ms = 0;
    *tracked = false;
    if (!r || !principal || (!l->requests_per_s && !l->bytes_per_s && !l->concurrency))
        return CDX_OK;
    pthread_mutex_lock(&r->mu);
    entry *e = find(r, principal, l, now_ns);
    cdx_err err = CDX_OK;
    if (!e) {
        *retry_ms = CDX_RATE_CONCURRENCY_RETRY_MS;
        err = cdx_fail(CDX_ERR_RATE_LIMITED, "too many principals with requests in flight");
        goto out;
    }
    /* Refill by the time since the last request, up to the buckets' sizes. */
    double dt = now_ns > e->last_ns ? (double)(now_ns - e->last_ns) / 1e9 : 0;
    e->last_ns = now_ns;
    double req_cap = l->burst ? l->burst : l->requests_per_s;
    e->req_tokens += dt * l->requests_per_s;
    if (e->req_tokens > req_cap)
        e->req_tokens = req_cap;
    e->byte_tokens += dt * (double)l->bytes_per_s;
    if (e->byte_tokens > (double)l->bytes_per_s)
        e->byte_tokens = (double)l->bytes_per_s;

    if (l->concurrency && e->inflight >= l->concurrency) {
        *retry_ms = CDX_RATE_CONCURRENCY_RETRY_MS;
        err = cdx_fail(CDX_ERR_RATE_LIMITED,
                       "%s has %u requests being served, its limit (concurrency %u); retry "
                       "after %u ms",
                       principal, e->inflight, l->concurrency, *retry_ms);
        goto out;
    }
    if (l->requests_per_s && e->req_tokens < 1.0) {
        *retry_ms = (uint32_t)((1.0 - e->req_tokens) * 1000.0 / l->requests_per_s) + 1;
        err = cdx_fail(CDX_ERR_RATE_LIMITED,
                       "%s is over its request rate (%u per second, burst %.0f); retry after %u "
                       "ms",
                       principal, l->requests_per_s, req_cap, *retry_ms);
        goto out;
    }
    /* A request larger than a whole second's bytes passes when the bucket is full. */
    double need = (double)bytes < (double)l->bytes_per_s ? (double)bytes : (double)l->bytes_per_s;
    if (l->bytes_per_s && e->byte_tokens < need) {
        *retry_ms = (uint32_t)((need - e->byte_tokens) * 1000.0 / (double)l->bytes_per_s) + 1;
        err = cdx_fail(CDX_ERR_RATE_LIMITED,
                       "%s is over its byte rate (%llu bytes per second); retry after %u ms",
                       principal, (unsigned long long)l->bytes_per_s, *retry_ms);
        goto out;
    }
    if (l->requests_per_s)
        e->req_tokens -= 1.0;
    if (l->bytes_per_s)
        e->byte_tokens -= need;
    e->inflight++;
    *tracked = true;
out:
    pthread_mutex_unlock(&r->mu);
    return err;
}

void app_ratelimit_leave(app_ratelimit *r, const char *principal)
{
    if (!r || !principal)
        return;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n; i++)
        if (!strcmp(r->e[i].principal, principal)) {
            if (r->e[i].inflight)
                r->e[i].inflight--;
            break;
        }
    pthread_mutex_unlock(&r->mu);
}
