/*
 * app_dispatch.h - one request frame in, one response frame out: decode
 * under the memory budget, authorise, call the engine, encode.
 *
 * Runs on a worker thread. Every outcome is a Response carrying a Status
 * (code = cdx_err value, message = what to fix); a request whose id cannot
 * be read is answered with request_id 0. Only running out of memory while
 * building the error response itself leaves *out NULL (the connection is
 * then closed).
 *
 * Every operation is a row of one table in app_dispatch.c: its request
 * body, its metric name (app_op), what it needs from the principal (none,
 * read, write, admin), the index it touches, and its handler. The
 * principal is checked once, against that row, before the handler runs.
 * Until the policy module lands: create_index, delete_index, train and
 * accept_rollback need the caller's principal in [server] admins (CDX_ERR_PERMISSION_DENIED
 * otherwise); any authenticated principal may do the rest. delete_index
 * must also carry the index id as confirm_id. In insecure mode the
 * principal is "anonymous".
 *
 * Thread-safe: any number of workers may dispatch at once with the same
 * env (which is only read; the engine and metrics are thread-safe).
 */
#ifndef APP_DISPATCH_H
#define APP_DISPATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "app_config.h"
#include "app_flow.h"
#include "app_metrics.h"
#include "eng.h"
#include "hsm_custody.h"

/* What the health callback reports for the wire's health request. */
typedef struct app_wire_health {
    bool token_ok, store_ok; /* reachable */
    /* Why the appliance is degraded (serving with a warning), one sentence each; none: ok. */
    char warnings[CDX_HEALTH_WARNINGS_MAX][CDX_STATUS_MESSAGE_MAX / 2];
    size_t n_warnings;
    uint32_t indexes_in_rollback;
} app_wire_health;

typedef struct app_dispatch_env {
    eng *engine;
    const app_config *cfg; /* admins, max_frame_bytes */
    app_metrics *metrics;  /* may be NULL */
    /* health: fills *out, which comes zeroed with token_ok and store_ok true (may be NULL:
     * both reachable, no warnings) */
    void (*health)(void *arg, app_wire_health *out);
    void *health_arg;
    int64_t started_ms; /* for uptime */
    /*
     * The in-flight budget (may be NULL: nothing reserved). A request
     * reserves its decode budget before it is decoded, an upsert its
     * frame's size again for the records the engine seals, and a get or
     * query twice each byte of its hits as the engine builds them
     * (eng_thread_mem_hook); CDX_ERR_BUSY when that does not fit now. All of
     * it is given back once the answer is packed (the server then charges
     * the answer until it is written).
     */
    app_budget *budget;
    /* Who may do what (app_policy.h). NULL: nothing but health and an empty index list. */
    struct app_policy *policy;
    /* Per-principal rate and concurrency limits (app_ratelimit.h); NULL: none. */
    struct app_ratelimit *rate;
    /*
     * The audit trail (app_audit.h); NULL: none. Every request is recorded
     * once answered; while the trail cannot be written (fail closed) every
     * request but health is refused with CDX_ERR_AUDIT_UNAVAILABLE, and an
     * answer whose record cannot be written is replaced by that error.
     */
    struct app_audit *audit;
    bool audit_index_names; /* records carry the index name besides its id */
    /* Attestation (docs/ATTESTATION.md): the custody context the engine uses, and the
     * attestation public key found at start (NULL: none on the token; attest then answers
     * FAILED_PRECONDITION naming `cipherdex-hsm attest-key create`). Only read. */
    hsm_custody *custody;
    EVP_PKEY *attest_key;
    /* [keys] attest_certificates as concatenated DER for intermediateCertificates (NULL, 0:
     * none). */
    const uint8_t *attest_certs;
    size_t attest_certs_len;
} app_dispatch_env;

typedef struct app_dispatch_result {
    uint8_t *frame; /* the response frame, length prefix included (malloc'ed) */
    size_t len;
    app_op op;
    cdx_err status;
    bool wipe_request; /* the request frame may hold a secret (a plaintext key): wipe it */
} app_dispatch_result;

/*
 * Serve one request frame body (frame[0..len), without the length prefix)
 * for `principal`. res->frame is the response frame (malloc'ed, caller
 * frees), res->op the operation (APP_OP_INVALID when the frame did not
 * decode), res->status the code the response carries. res->frame is NULL
 * only when memory ran out (close the connection).
 */
void app_dispatch(const app_dispatch_env *env, const char *principal, const uint8_t *frame,
                  size_t len, app_dispatch_result *res);

#endif
