/*
 * app_client.h - the small C client library the CLI (and C applications)
 * use: one blocking connection, TLS with server-certificate and host-name
 * (or IP) verification and a client certificate, length-prefixed frames,
 * response statuses mapped to cdx_err.
 *
 * Requests may be pipelined: app_client_send several, then app_client_recv
 * the answers in the same order (the server answers in order). A response
 * whose request_id does not match, or that has no status, is a protocol
 * error (CDX_ERR_DATA_LOSS): the connection is then unusable.
 *
 * The typed calls at the end (app_client_upsert, _query, _get, ...) build
 * the protobuf request from plain C arguments, so callers never assemble a
 * Cipherdex__V1__*Request by hand; they return the decoded response for
 * the caller to read (wire_response_msg) and free (wire_response_free).
 *
 * Thread-safety: an app_client is not thread-safe; use one connection per
 * thread (as `cipherdex query --clients N` does). Distinct connections are
 * independent and may be used from different threads at once. A write
 * blocks SIGPIPE for the calling thread only, for its duration.
 */
#ifndef APP_CLIENT_H
#define APP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cdx_err.h"
#include "wire_msg.h"

typedef struct app_client_opts {
    const char *addr;    /* host:port or [v6]:port */
    const char *ca;      /* CA bundle the server certificate must chain to */
    const char *cert;    /* client certificate (PEM) */
    const char *key;     /* its key (PEM) */
    bool insecure;       /* plaintext TCP (a server started with insecure = yes) */
    uint32_t timeout_ms; /* connect and per-I/O timeout; 0 = 30000 */
    size_t max_frame;    /* largest response accepted; 0 = CDX_FRAME_MAX_DEFAULT */
} app_client_opts;

typedef struct app_client app_client;

/*
 * Connect (and handshake). The server name checked against the certificate
 * is the host part of addr (an IP address is matched against IP SANs).
 * Errors: CDX_ERR_INVALID_ARGUMENT (options), CDX_ERR_UNAVAILABLE (cannot
 * connect, timeout), CDX_ERR_UNAUTHENTICATED (TLS handshake or certificate
 * verification failed: the detail says which), CDX_ERR_CONFIG (files).
 */
CDX_MUST_CHECK cdx_err app_client_connect(const app_client_opts *o, app_client **out);

/* Close; NULL is a no-op. */
void app_client_free(app_client *c);

/*
 * Send one request; its request_id is set to the next id of this
 * connection (returned in *id, may be NULL).
 * Errors: CDX_ERR_UNAVAILABLE (I/O), CDX_ERR_FRAME_TOO_LARGE, what
 * wire_request_pack returns.
 */
CDX_MUST_CHECK cdx_err app_client_send(app_client *c, Cipherdex__V1__Request *req, uint64_t *id);

/*
 * Receive the next response (the oldest request sent). *out is the decoded
 * response whatever its status (free it with wire_response_free). The
 * return value is the response's status code (CDX_OK, or the server's
 * error, its message as the detail), or a transport/protocol error with
 * *out NULL.
 */
CDX_MUST_CHECK cdx_err app_client_recv(app_client *c, wire_response **out);

/*
 * send + recv: *out as app_client_recv leaves it (NULL when the send
 * failed). Errors: those of app_client_send and app_client_recv.
 */
CDX_MUST_CHECK cdx_err app_client_call(app_client *c, Cipherdex__V1__Request *req,
                                       wire_response **out);

/* ---- retrying ----------------------------------------------------------
 *
 * docs/WIRE.md, "What to retry", is the contract these follow. A dropped
 * connection (or a timeout) leaves the outcome unknown: the request may
 * have been applied (a daemon killed mid-upsert had committed 20 of 94 such
 * batches in a review). Only an idempotent request may be sent again then.
 */

/*
 * Requests that may be sent again after an unknown outcome: the reads
 * (health, describe_index, list_indexes, get, query, list_ids) and the
 * idempotent writes: upsert (the same ids with the same values leave the
 * same items; only the commit version differs) and delete by ids (deleting
 * again deletes nothing more; `deleted` then counts only what the retry
 * removed). create_index, delete_index and train are not: after an unknown
 * outcome, describe the index to see what happened. NULL: false.
 */
bool app_request_idempotent(const Cipherdex__V1__Request *req);

/*
 * Is a status the server answered worth sending the request again for?
 * ABORTED, UNAVAILABLE and BUSY say nothing was applied: true for every
 * request. DEADLINE_EXCEEDED, HSM_UNAVAILABLE and STORE_UNAVAILABLE may
 * leave the outcome unknown (a commit cut off): true only when idempotent.
 * Everything else (bad requests, permissions, integrity, rollback) fails
 * the same way again: false.
 */
bool app_status_retryable(cdx_err code, bool idempotent);

/* Retry policy (zeros take the defaults), and what happened (filled in). */
typedef struct app_retry {
    unsigned max_attempts;   /* connect + send tries in all; 0 = 8 */
    uint32_t first_delay_ms; /* pause after the first failure, doubling, with jitter; 0 = 50 */
    uint32_t max_delay_ms;   /* longest pause; 0 = 2000 */
    uint32_t total_ms;       /* no new try after this long; 0 = 30000 */
    unsigned attempts;       /* out: tries made */
    unsigned reconnects;     /* out: connections (re)opened */
} app_retry;

/*
 * app_client_call with retries. *c is the connection to use (NULL: connect
 * with o first); after a transport error it is freed and a new one is made
 * with o, so o must stay valid. The request is tried again, after a
 * growing pause, when the connection could not be made (nothing was sent),
 * when the server answered a status app_status_retryable accepts, or when
 * the connection dropped or timed out and the request is idempotent. On
 * return *c is a working connection or NULL, and the return value and *out
 * are those of the last try (app_client_call's). r may be NULL (defaults).
 * Blocks the calling thread for the pauses (nanosleep).
 * Errors: app_client_connect's and app_client_call's.
 */
CDX_MUST_CHECK cdx_err app_client_call_retry(app_client **c, const app_client_opts *o, app_retry *r,
                                             Cipherdex__V1__Request *req, wire_response **out);

/* ---- typed calls -------------------------------------------------------
 *
 * Each builds one request from its arguments and calls it (app_client_call):
 * the return value and *out are exactly app_client_call's (*out is the
 * server's response, also when it carries an error status; NULL on a
 * transport error; free it with wire_response_free). Strings are
 * NUL-terminated UTF-8; nothing passed in is kept after the call returns.
 * Besides app_client_call's errors, those that build an array can fail with
 * CDX_ERR_RESOURCE_EXHAUSTED (out of memory; nothing was sent, *out NULL).
 * The server validates every field; these only carry them.
 */

/* What get and query return besides ids (and distances): bits to OR. */
enum {
    APP_INCLUDE_VECTORS = 1,
    APP_INCLUDE_METADATA = 2,
    APP_INCLUDE_CONTENTS = 4,
};

typedef enum app_key_source {
    APP_KEY_GENERATE = 0, /* generated on the token (the default) */
    APP_KEY_UNWRAP,       /* a KMS-wrapped key unwrapped on the token with a KEK */
    APP_KEY_ADOPT,        /* an existing token key (minted by cipherdex-hsm) */
    APP_KEY_IMPORT,       /* a plaintext key (development; the appliance must allow it) */
} app_key_source;

/* create_index. NULL strings are sent empty (the server applies its default or refuses). */
typedef struct app_index_spec {
    const char *name;
    uint32_t dimension;
    const char *metric;     /* euclidean, squared_euclidean, cosine, inner_product */
    const char *index_type; /* ivfflat (empty means ivfflat), ivfsq8 */
    uint32_t n_lists;       /* 0: chosen when training */
    app_key_source key_source;
    const char *kek_name;   /* APP_KEY_UNWRAP: the KEK's name */
    const uint8_t *wrapped; /* APP_KEY_UNWRAP: the wrapped key (CDX_WRAPPED_KEY_LEN bytes) */
    size_t wrapped_len;
    const uint8_t *adopt_id;   /* APP_KEY_ADOPT: the key's CKA_ID, CDX_ID_LEN bytes */
    const uint8_t *import_key; /* APP_KEY_IMPORT: CDX_KEY_LEN bytes (the request frame holding
                                  them is wiped once sent) */
} app_index_spec;

/* train; all zero means the server's defaults. */
typedef struct app_train_opts {
    uint32_t n_lists, max_iters;
    float tolerance;
    uint64_t seed;
    uint32_t max_points_per_list;
} app_train_opts;

/* One item of an upsert. */
typedef struct app_item {
    const char *id;
    const float *vector; /* dim floats */
    size_t dim;
    const char *metadata; /* a JSON object as text; NULL or "" for none */
    const void *contents; /* opaque bytes; contents_len 0 for none */
    size_t contents_len;
} app_item;

/* query: one or more vectors of the index's dimension, row-major. */
typedef struct app_query_spec {
    const float *vectors;
    size_t n_floats;      /* number of floats in vectors (queries x dimension) */
    uint32_t top_k;       /* 0: the server's default */
    uint32_t n_probes;    /* 0: the server's default */
    uint32_t max_probes;  /* widening ceiling with a filter; 0: the server's default */
    const char *filter;   /* JSON filter text, or NULL */
    unsigned include;     /* APP_INCLUDE_* */
    uint64_t min_version; /* 0: any */
} app_query_spec;

CDX_MUST_CHECK cdx_err app_client_health(app_client *c, wire_response **out);
CDX_MUST_CHECK cdx_err app_client_create_index(app_client *c, const app_index_spec *spec,
                                               wire_response **out);
CDX_MUST_CHECK cdx_err app_client_describe_index(app_client *c, const char *name,
                                                 wire_response **out);
CDX_MUST_CHECK cdx_err app_client_list_indexes(app_client *c, wire_response **out);

/* confirm_id: the index id (CDX_ID_LEN bytes) or NULL to send none (the server then refuses). */
CDX_MUST_CHECK cdx_err app_client_delete_index(app_client *c, const char *name,
                                               const uint8_t *confirm_id, wire_response **out);

/*
 * accept_rollback (admin): accept the store's head of `index`, which must be
 * at confirm_version (its version in list_indexes), although this appliance
 * saw a newer one. The response body is accept_rollback.
 */
CDX_MUST_CHECK cdx_err app_client_accept_rollback(app_client *c, const char *index,
                                                  uint64_t confirm_version, wire_response **out);

/*
 * attest: a signed statement about `index`'s key answering `nonce`
 * (CDX_ATTEST_NONCE_MIN..MAX bytes; docs/ATTESTATION.md). The response body
 * is attest (evidence, attestation_public_key, attestation_key_id).
 */
CDX_MUST_CHECK cdx_err app_client_attest(app_client *c, const char *index, const uint8_t *nonce,
                                         size_t nonce_len, wire_response **out);

/* o may be NULL (the server's defaults). */
CDX_MUST_CHECK cdx_err app_client_train(app_client *c, const char *index, const app_train_opts *o,
                                        wire_response **out);

CDX_MUST_CHECK cdx_err app_client_upsert(app_client *c, const char *index, const app_item *items,
                                         size_t n, wire_response **out);

/*
 * The send half of app_client_upsert, for pipelining batches: collect the
 * answer with app_client_recv. *id as app_client_send (may be NULL).
 * Errors: those of app_client_send, CDX_ERR_RESOURCE_EXHAUSTED.
 */
CDX_MUST_CHECK cdx_err app_client_upsert_send(app_client *c, const char *index,
                                              const app_item *items, size_t n, uint64_t *id);

CDX_MUST_CHECK cdx_err app_client_query(app_client *c, const char *index, const app_query_spec *q,
                                        wire_response **out);

/* include: APP_INCLUDE_*; min_version 0: any. */
CDX_MUST_CHECK cdx_err app_client_get(app_client *c, const char *index, const char *const *ids,
                                      size_t n, unsigned include, uint64_t min_version,
                                      wire_response **out);

CDX_MUST_CHECK cdx_err app_client_delete(app_client *c, const char *index, const char *const *ids,
                                         size_t n, wire_response **out);

/* cursor: NULL (or "") for the first page; limit 0: the server's default page. */
/*
 * rotate (admin): start a key rotation of the index (docs/ROTATION.md); with
 * wait, run it to completion first. The response body is rotate.
 */
CDX_MUST_CHECK cdx_err app_client_rotate(app_client *c, const char *index, bool wait, bool new_key,
                                         wire_response **out);

/* compact (admin): merge the index's segments and sweep now; the response body is compact. */
CDX_MUST_CHECK cdx_err app_client_compact(app_client *c, const char *index, wire_response **out);

/* purge (appliance admin): remove what no live index owns; the response body is purge. */
CDX_MUST_CHECK cdx_err app_client_purge(app_client *c, wire_response **out);
/* The audit trail's last `limit` records (0: 20) and state; operators only (docs/AUDIT.md). */
CDX_MUST_CHECK cdx_err app_client_audit_tail(app_client *c, uint32_t limit, wire_response **out);
CDX_MUST_CHECK cdx_err app_client_list_ids(app_client *c, const char *index, const char *cursor,
                                           uint32_t limit, wire_response **out);

#endif
