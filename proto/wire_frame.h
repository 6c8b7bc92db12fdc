/*
 * wire_frame.h - sans-IO frame codec: a 4-byte big-endian length, then the
 * body (one serialized protobuf message; a zero-length body is a valid empty
 * message).
 *
 * The decoder does no I/O: the caller feeds it whatever bytes arrived and
 * takes complete frames out, so it runs the same over a socket, a TLS
 * stream, a test buffer or a fuzzer's input. It holds at most one frame: once
 * a frame is complete, feeding stops consuming until the frame is taken
 * (natural back-pressure: the caller stops reading from the peer).
 *
 * The length is checked against the cap as soon as its 4 bytes are in,
 * before anything is allocated. The body buffer then grows with the bytes
 * actually received (CDX_FRAME_BUF_INITIAL first, doubling up to the
 * announced length), so a peer announcing 64 MiB and sending nothing pins
 * 64 KiB, not 64 MiB.
 *
 * Typical loop:
 *
 *     while (n > 0) {
 *         size_t used;
 *         if ((err = wire_dec_feed(d, p, n, &used)))
 *             goto close;              // FRAME_TOO_LARGE: the stream is lost
 *         p += used, n -= used;
 *         if (wire_dec_ready(d)) {
 *             wire_dec_take(d, &body, &len);
 *             handle(body, len);
 *             free(body);
 *         }
 *     }
 *
 * Not thread-safe: one decoder per connection.
 */
#ifndef WIRE_FRAME_H
#define WIRE_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cdx_err.h"
#include "cdx_limits.h"

typedef struct wire_dec wire_dec;

/*
 * A decoder accepting frame bodies of at most max_frame bytes (1 ..
 * CDX_FRAME_MAX_LIMIT; 0 means CDX_FRAME_MAX_DEFAULT). Returns NULL when
 * max_frame is out of range or memory is short.
 */
wire_dec *wire_dec_new(size_t max_frame);

/* Free the decoder and any partial or untaken frame; NULL is a no-op. */
void wire_dec_free(wire_dec *d);

/*
 * A smaller cap for the first frame only (1 .. max_frame; insecure mode uses
 * CDX_FRAME_FIRST_INSECURE so an unauthenticated peer cannot make the server
 * buffer much). Call before feeding. Errors: CDX_ERR_INVALID_ARGUMENT (out
 * of range), CDX_ERR_FAILED_PRECONDITION (bytes already fed).
 */
CDX_MUST_CHECK cdx_err wire_dec_set_first_max(wire_dec *d, size_t first_max);

/*
 * Consume bytes from buf[0..len) until the current frame is complete or the
 * input is exhausted; *used gets the bytes consumed (the rest belongs to
 * later frames: feed it again after taking the frame).
 * Errors: CDX_ERR_FRAME_TOO_LARGE (the announced length exceeds the cap;
 * nothing was allocated; the decoder is then failed and every later call
 * returns the same error: close the connection),
 * CDX_ERR_FAILED_PRECONDITION (a complete frame is waiting: take it first;
 * *used is 0), CDX_ERR_RESOURCE_EXHAUSTED (out of memory for the body),
 * CDX_ERR_INVALID_ARGUMENT (NULL buf with len > 0).
 */
CDX_MUST_CHECK cdx_err wire_dec_feed(wire_dec *d, const uint8_t *buf, size_t len, size_t *used);

/* True when a complete frame is waiting to be taken. */
bool wire_dec_ready(const wire_dec *d);

/*
 * Take the waiting frame: *body is malloc'ed (the caller frees it; NULL for
 * an empty frame), *len its length. Errors: CDX_ERR_NOT_FOUND (no complete
 * frame yet).
 */
CDX_MUST_CHECK cdx_err wire_dec_take(wire_dec *d, uint8_t **body, size_t *len);

/*
 * Bytes of an unfinished frame received so far, header included; 0 at a
 * frame boundary. Non-zero when the peer closes means a truncated frame.
 */
size_t wire_dec_pending(const wire_dec *d);

/* Bytes still needed to complete the current frame (4 at a frame boundary). */
size_t wire_dec_missing(const wire_dec *d);

/* Heap bytes the decoder holds now (for in-flight budgets). */
size_t wire_dec_buffered(const wire_dec *d);

/* Frames completed so far. */
uint64_t wire_dec_frames(const wire_dec *d);

/* Write the 4-byte big-endian length prefix of a body of `len` bytes. */
void wire_frame_header(uint32_t len, uint8_t hdr[CDX_FRAME_HDR_LEN]);

/*
 * Encode one frame: *out (malloc'ed, caller frees) = header + body,
 * *out_len = 4 + len. body may be NULL when len is 0.
 * Errors: CDX_ERR_FRAME_TOO_LARGE (len > max_frame; max_frame 0 means
 * CDX_FRAME_MAX_DEFAULT), CDX_ERR_RESOURCE_EXHAUSTED, CDX_ERR_INVALID_ARGUMENT.
 */
CDX_MUST_CHECK cdx_err wire_frame_encode(const uint8_t *body, size_t len, size_t max_frame,
                                         uint8_t **out, size_t *out_len);

#endif
