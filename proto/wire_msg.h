/*
 * wire_msg.h - decoding and validating Request frames, packing Response
 * frames (and the reverse, for clients and tests).
 *
 * The C types are protobuf-c's, generated at build time from a copy of
 * proto/cipherdex.proto whose `string` fields are `bytes`: every text field
 * is a ProtobufCBinaryData with its exact length. A message returned by
 * wire_request_unpack / wire_response_unpack has been checked completely:
 *  - every text field is strict UTF-8 without NUL (cdx_utf8.h), and is
 *    NUL-terminated at data[len] (wire_text() gives a C string);
 *  - every bytes/text field is within its length limit and every repeated
 *    field within its count limit (cdx_limits.h; docs/WIRE.md);
 *  - every float is finite;
 *  - the request has a known body, whose scalar fields are in range
 *    (dimension, top_k, n_probes, n_lists, limit, training options) and
 *    whose required fields are present (index names, ids, vectors).
 * What needs the index (vector length = dimension, metric names, name
 * charset, metadata and filter JSON) is the engine's to check.
 *
 * Errors carry a detail naming the field path and what is wrong, e.g.
 * "upsert.items[3].id: invalid UTF-8 at byte 5 (overlong encoding)".
 *
 * Generated names: Cipherdex__V1__Request, cipherdex__v1__request__descriptor,
 * CIPHERDEX__V1__REQUEST__BODY_QUERY ...; the `delete` member is spelled
 * `delete_` in C.
 */
#ifndef WIRE_MSG_H
#define WIRE_MSG_H

#include <stddef.h>
#include <stdint.h>

#include "cdx_err.h"
#include "cipherdex.pb-c.h"

typedef struct wire_request wire_request;
typedef struct wire_response wire_response;

/*
 * Decode and validate one Request frame body (the bytes after the length
 * prefix). `budget` caps the heap the decoding may use (0 means
 * wire_unpack_budget(len): 4 x len + 1 MiB). On success *out owns the
 * message and all its memory (wire_request_free).
 * Errors: CDX_ERR_INVALID_ARGUMENT (not a valid protobuf Request; no body or
 * a body this server does not know; a field that fails validation),
 * CDX_ERR_RESOURCE_EXHAUSTED (decoding needs more than the budget, or out
 * of memory).
 */
CDX_MUST_CHECK cdx_err wire_request_unpack(const uint8_t *frame, size_t len, size_t budget,
                                           wire_request **out);

/* The decoded message (valid until wire_request_free). */
const Cipherdex__V1__Request *wire_request_msg(const wire_request *r);

/* Heap bytes the decoded request holds (for in-flight budgets). */
size_t wire_request_mem(const wire_request *r);

/* Free the request and everything it holds; NULL is a no-op. */
void wire_request_free(wire_request *r);

/*
 * The request_id of a frame without decoding it (no allocation): so an error
 * response can echo it even when decoding fails. 0 when the frame has none
 * or is malformed before it.
 */
uint64_t wire_peek_request_id(const uint8_t *frame, size_t len);

/* Name of the body member ("query", "create_index"...), "none" if unset, "unknown" otherwise. */
const char *wire_body_name(const Cipherdex__V1__Request *req);

/*
 * Validate a request (what wire_request_unpack does after decoding), e.g. in
 * a client before sending. Errors: CDX_ERR_INVALID_ARGUMENT with the field.
 */
CDX_MUST_CHECK cdx_err wire_request_check(const Cipherdex__V1__Request *req);

/*
 * Validate a response: text fields UTF-8 without NUL, lengths and counts,
 * status present. Errors: CDX_ERR_INVALID_ARGUMENT with the field.
 */
CDX_MUST_CHECK cdx_err wire_response_check(const Cipherdex__V1__Response *resp);

/*
 * Self-check of the validator's tables against the compiled schema: every
 * bytes and repeated field reachable from Request and Response has a limit,
 * and every text field of the contract is a bytes field here. Run by the
 * tests and cheap enough for a server to run at start.
 * Errors: CDX_ERR_INTERNAL naming the field.
 */
CDX_MUST_CHECK cdx_err wire_schema_check(void);

/*
 * Pack a response into a frame (length prefix + body; *frame malloc'ed,
 * caller frees). Status.message is cut to CDX_STATUS_MESSAGE_MAX bytes at a
 * character boundary and at its first invalid UTF-8 byte, so an error detail
 * can never break a client; everything else must already be valid (the
 * response is checked: a failure is a server bug).
 * Errors: CDX_ERR_INTERNAL (no status, or a field fails wire_response_check:
 * detail names it), CDX_ERR_FRAME_TOO_LARGE (packed size > max_frame; 0 means
 * CDX_FRAME_MAX_DEFAULT: answer with a smaller page or fewer includes),
 * CDX_ERR_RESOURCE_EXHAUSTED.
 */
CDX_MUST_CHECK cdx_err wire_response_pack(const Cipherdex__V1__Response *resp, size_t max_frame,
                                          uint8_t **frame, size_t *len);

/*
 * Pack a status-only response: code (a cdx_err) and message (NULL means
 * cdx_strerror(code); sanitised as in wire_response_pack).
 * Errors: CDX_ERR_RESOURCE_EXHAUSTED.
 */
CDX_MUST_CHECK cdx_err wire_response_error(uint64_t request_id, cdx_err code, const char *message,
                                           uint8_t **frame, size_t *len);

/*
 * Pack a request into a frame as a client does. Not validated (tests send
 * invalid requests this way; clients may call wire_request_check first).
 * Errors: CDX_ERR_FRAME_TOO_LARGE, CDX_ERR_RESOURCE_EXHAUSTED.
 */
CDX_MUST_CHECK cdx_err wire_request_pack(const Cipherdex__V1__Request *req, size_t max_frame,
                                         uint8_t **frame, size_t *len);

/*
 * Decode and validate one Response frame body, as a client does (budget as
 * in wire_request_unpack). Errors: CDX_ERR_INVALID_ARGUMENT (not a valid
 * Response, no status: a protocol error), CDX_ERR_RESOURCE_EXHAUSTED.
 */
CDX_MUST_CHECK cdx_err wire_response_unpack(const uint8_t *frame, size_t len, size_t budget,
                                            wire_response **out);
const Cipherdex__V1__Response *wire_response_msg(const wire_response *r);
void wire_response_free(wire_response *r);

/*
 * A text field of a message decoded by wire_request_unpack or
 * wire_response_unpack as a C string ("" when empty): validated, so it has
 * no NUL inside and ends at data[len].
 */
static inline const char *wire_text(ProtobufCBinaryData b)
{
    return b.len ? (const char *)b.data : "";
}

/* A ProtobufCBinaryData viewing p[0..n) (for building messages; not copied). */
static inline ProtobufCBinaryData wire_bin(const void *p, size_t n)
{
    ProtobufCBinaryData b = {n, (uint8_t *)(uintptr_t)p};
    return b;
}

/* A ProtobufCBinaryData viewing the C string s (NULL: empty). */
ProtobufCBinaryData wire_str(const char *s);

#endif
