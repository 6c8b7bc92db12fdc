/*
 * app_ratelimit.h - per-principal limits on a live daemon (docs/POLICY.md,
 * "Rate limits"): a token bucket of requests and one of request bytes, and
 * a cap on the principal's requests being served at once. The limits come
 * from the policy (pol_limits_of) at each request, so a reload applies at
 * once.
 *
 * State is kept for at most CDX_RATE_PRINCIPALS_MAX principals; the one
 * idle longest is forgotten first (it starts again with full buckets).
 * Thread-safe.
 */
#ifndef APP_RATELIMIT_H
#define APP_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cdx_err.h"
#include "pol_policy.h"

typedef struct app_ratelimit app_ratelimit;

/* Errors: CDX_ERR_RESOURCE_EXHAUSTED. */
CDX_MUST_CHECK cdx_err app_ratelimit_new(app_ratelimit **out);

/* NULL is a no-op. */
void app_ratelimit_free(app_ratelimit *r);

/*
 * A request of `bytes` from `principal` under limits `l`, at monotonic time
 * now_ns: admitted (CDX_OK; with *tracked, the caller calls
 * app_ratelimit_leave when it is answered), or CDX_ERR_RATE_LIMITED with
 * *retry_ms, the wait after which the buckets hold enough (for the
 * concurrency cap: a short fixed wait), and a detail naming the limit. r
 * NULL, or no limit set, admits without tracking.
 */
CDX_MUST_CHECK cdx_err app_ratelimit_enter(app_ratelimit *r, const char *principal,
                                           const pol_limits *l, uint64_t bytes, uint64_t now_ns,
                                           uint32_t *retry_ms, bool *tracked);

/* A tracked request of `principal` is answered. */
void app_ratelimit_leave(app_ratelimit *r, const char *principal);

#endif
