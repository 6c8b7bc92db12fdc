/*
 * app_policy.h - the daemon's access policy: loaded from the file
 * [server] policy names (with the deprecated [server] admins as appliance
 * admins), checked with file:line errors, swapped atomically on SIGHUP.
 *
 * The holder is shared by the event loop (reload) and the workers (checks):
 * every function is thread-safe. docs/POLICY.md is the reference.
 */
#ifndef APP_POLICY_H
#define APP_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "app_config.h"
#include "cdx_err.h"
#include "pol_policy.h"

typedef struct app_policy app_policy;

/*
 * Build the policy of cfg: its policy file, if any, plus the admins list.
 * Errors: CDX_ERR_CONFIG (detail "path:line: ..."), CDX_ERR_RESOURCE_EXHAUSTED.
 */
CDX_MUST_CHECK cdx_err app_policy_build(const app_config *cfg, pol_policy **out);

/* A holder with cfg's policy in force. Errors: as app_policy_build. */
CDX_MUST_CHECK cdx_err app_policy_new(const app_config *cfg, app_policy **out);

/* NULL is a no-op. */
void app_policy_free(app_policy *h);

/*
 * Reload from cfg (SIGHUP): on success the new policy replaces the old one
 * at once; on failure the old one stays in force and the error is kept for
 * app_policy_status. Errors: as app_policy_build.
 */
CDX_MUST_CHECK cdx_err app_policy_reload(app_policy *h, const app_config *cfg);

/* pol_allows and pol_sees on the policy in force. h NULL: nothing is allowed or seen. */
bool app_policy_allows(app_policy *h, const char *principal, pol_need need, const char *index);
bool app_policy_sees(app_policy *h, const char *principal, const char *index);

/* pol_issuer_ok on the policy in force (h NULL: true). */
bool app_policy_issuer_ok(app_policy *h, const char *principal, const uint8_t issuer[32]);

/* pol_limits_of on the policy in force (h NULL: no limits). */
void app_policy_limits(app_policy *h, const char *principal, pol_limits *out);

/*
 * For /healthz and the log: the number of successful loads, and the last
 * reload error ("" when the last reload, or the first load, succeeded).
 */
void app_policy_status(app_policy *h, uint64_t *loads, char *last_error, size_t cap);

#endif
