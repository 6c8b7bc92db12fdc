/*
 * app_auditrec.h - what the appliance writes to its audit trail
 * (app_audit.h; the record kinds are listed in docs/AUDIT.md): one record
 * per request, one per key use on the token (the custody event hook), and
 * lifecycle events. Bodies are key=value pairs whose values are
 * percent-encoded (app_audit_value), so a principal or an index name can
 * never forge a field.
 *
 * Thread-safe: the request context is per thread.
 */
#ifndef APP_AUDITREC_H
#define APP_AUDITREC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "app_audit.h"
#include "cdx_limits.h"
#include "hsm_custody.h"

/* One served request, as the trail records it. */
typedef struct app_audit_req {
    const char *op;          /* the operation's name (app_op_name) */
    const char *principal;   /* typed principal ("uri:...", "anonymous") */
    const uint8_t *index_id; /* CDX_ID_LEN bytes; NULL: none or unknown */
    const char *index_name;  /* written only when the trail is configured to (NULL: not) */
    uint64_t items;          /* items, ids or results the request carried */
    uint32_t epoch;          /* the index key's epoch */
    int code;                /* cdx_err */
    uint64_t request_id;
    uint64_t bytes_in, bytes_out;
    uint32_t keys_cache, keys_token; /* hsm_thread_keyuse masks */
    uint64_t us;                     /* time served, microseconds */
} app_audit_req;

/* Write the request's record. Errors: app_audit_write's. */
CDX_MUST_CHECK cdx_err app_auditrec_request(app_audit *a, const app_audit_req *r);

/*
 * A lifecycle event: `event` (create, delete, accept_rollback,
 * policy_reload, ...), the index it concerns (NULL: none) and extra
 * key=value pairs already in the trail's alphabet ("" or NULL: none).
 * Errors: app_audit_write's.
 */
CDX_MUST_CHECK cdx_err app_auditrec_lifecycle(app_audit *a, const char *event,
                                              const uint8_t *index_id, const char *principal,
                                              uint64_t request_id, const char *extra);

/*
 * The request this thread serves, for the key-use records the custody hook
 * writes meanwhile (principal NULL: none; the pointer must stay valid until
 * cleared).
 */
void app_auditrec_thread_request(uint64_t request_id, const char *principal);

/* The custody event hook (hsm_custody_set_event_hook); arg is the app_audit. */
void app_auditrec_key_event(void *arg, const hsm_event *ev);

/* The MAC function for app_audit_config: arg is an hsm_subkey (the audit subkey). */
cdx_err app_auditrec_mac(void *arg, const void *msg, size_t len, uint8_t out[POL_AUDIT_HASH_LEN]);

#endif
