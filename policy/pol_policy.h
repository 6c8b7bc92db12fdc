/*
 * pol_policy.h - who may do what (docs/POLICY.md).
 *
 * A policy is built from the keys of a policy file, which the caller reads
 * (the daemon with its INI loader, which supplies line numbers): this module
 * does no I/O, so it is tested and fuzzed on bytes alone.
 *
 *   [appliance]
 *   admins    = uri:spiffe://corp/ops          ; everything, on every index
 *   operators = uri:spiffe://corp/monitoring   ; list every index, health detail
 *
 *   [role app-a]
 *   members = uri:spiffe://corp/app-a, dns:app-a.corp.example
 *
 *   [index docs-*]                             ; index-name pattern: * and ?
 *   read  = role:app-a, uri:spiffe://corp/search-ui
 *   write = role:app-a
 *   admin = uri:spiffe://corp/team-a-admin
 *
 *   [ca corp-clients]                          ; principals only valid from this CA
 *   sha256 = 3f:a1:...                         ; the CA certificate's SHA-256 fingerprint
 *   principals = uri:spiffe://corp/ops, role:app-a
 *
 *   [limits default]                           ; or [limits role:NAME], [limits uri:...]
 *   requests_per_second = 200
 *   burst = 400
 *   bytes_per_second = 64M
 *   concurrency = 16
 *
 * Subjects are typed principals (pol_principal.h) or role:NAME. Default
 * deny: a principal may do on an index only what a rule whose pattern
 * matches the index's name grants it, or what appliance admins may. `write`
 * does not imply `read`; `admin` implies both.
 *
 * A built policy is immutable: concurrent pol_allows/pol_sees calls are
 * safe. A builder is used by one thread.
 */
#ifndef POL_POLICY_H
#define POL_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cdx_err.h"

typedef struct pol_policy pol_policy;
typedef struct pol_builder pol_builder;

/* What an operation needs. */
typedef enum pol_need {
    POL_NEED_NONE,     /* anyone authenticated: health, the (filtered) index list */
    POL_NEED_READ,     /* query, get, list_ids, describe: on the index */
    POL_NEED_WRITE,    /* upsert, delete items: on the index */
    POL_NEED_ADMIN,    /* create, train, compact, rotate, delete, accept_rollback: on the index */
    POL_NEED_OPERATOR, /* every index's name and health detail (appliance-wide) */
    /* attest: a signed statement about the index's key (docs/ATTESTATION.md). Granted by
     * `attest = ...` in [index PATTERN]; index admins and appliance admins have it too, `read`
     * and `write` do not. */
    POL_NEED_ATTEST,
} pol_need;

/* "none", "read", "write", "admin", "operator" or "attest" (static). */
const char *pol_need_name(pol_need n);

/* A builder. Errors: CDX_ERR_RESOURCE_EXHAUSTED. */
CDX_MUST_CHECK cdx_err pol_builder_new(pol_builder **out);

/*
 * One key of the policy file, as the INI loader delivers it. Errors:
 * CDX_ERR_CONFIG, the detail saying what is wrong (without the file:line
 * the caller prefixes): an unknown section or key, a bad principal, role or
 * pattern, a limit exceeded.
 */
CDX_MUST_CHECK cdx_err pol_builder_key(pol_builder *b, unsigned line, const char *section,
                                       const char *key, const char *value);

/*
 * An appliance admin from outside the file (the deprecated [server] admins
 * list, already typed by pol_principal_legacy). Errors: CDX_ERR_CONFIG.
 */
CDX_MUST_CHECK cdx_err pol_builder_admin(pol_builder *b, const char *principal);

/*
 * Finish: check every role:NAME refers to a [role NAME] section. The
 * builder is freed whatever the outcome. Errors: CDX_ERR_CONFIG ("line N:
 * ..." for an undefined role), CDX_ERR_RESOURCE_EXHAUSTED.
 */
CDX_MUST_CHECK cdx_err pol_builder_finish(pol_builder *b, pol_policy **out);

/* Free a builder not finished. NULL is a no-op. */
void pol_builder_free(pol_builder *b);

/* NULL is a no-op. */
void pol_policy_free(pol_policy *p);

/*
 * May `principal` do what `need` names on index `index` (NULL for
 * appliance-wide needs)? Appliance admins may do everything; operators have
 * POL_NEED_OPERATOR; POL_NEED_NONE is always allowed. A NULL policy allows
 * nothing but POL_NEED_NONE.
 */
bool pol_allows(const pol_policy *p, const char *principal, pol_need need, const char *index);

/*
 * May `principal` see that `index` exists (index list, and the difference
 * between NOT_FOUND and PERMISSION_DENIED)? True when it holds any
 * permission on it, or is an operator or appliance admin.
 */
bool pol_sees(const pol_policy *p, const char *principal, const char *index);

/*
 * Is `principal`, whose certificate was issued by the CA with SHA-256
 * fingerprint `issuer` (NULL: unknown, e.g. insecure mode), itself? True when
 * no [ca] section names it, or one that names it has this fingerprint
 * (review M1: all CAs in client_ca are otherwise equal).
 */
bool pol_issuer_ok(const pol_policy *p, const char *principal, const uint8_t issuer[32]);

/* One principal's limits (0: unlimited). */
typedef struct pol_limits {
    uint32_t requests_per_s; /* token bucket refill */
    uint32_t burst;          /* bucket size in requests (0: requests_per_s) */
    uint64_t bytes_per_s;    /* request bytes received, refill; bucket = one second's worth */
    uint32_t concurrency;    /* requests being served at once */
} pol_limits;

/*
 * The limits of `principal`: [limits default] (unlimited without one), with
 * each field a matching [limits PRINCIPAL] or [limits role:NAME] section
 * sets replacing it; several matching sections give the most generous value
 * (0, unlimited, is the most generous).
 */
void pol_limits_of(const pol_policy *p, const char *principal, pol_limits *out);

/* Counts for the log line of a load: rules, roles, appliance admins, operators. */
void pol_policy_counts(const pol_policy *p, size_t *rules, size_t *roles, size_t *admins,
                       size_t *operators);

#endif
