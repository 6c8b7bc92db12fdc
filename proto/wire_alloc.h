/*
 * wire_alloc.h - a ProtobufCAllocator with a byte budget.
 *
 * protobuf_c_message_unpack allocates far more than the frame it reads when
 * the frame holds many tiny repeated messages (measured with protobuf-c
 * 1.4.1: a million empty items in a 2 MB frame took 113.5 MB in 1,000,017
 * mallocs, ~57x). Unpacking under a wire_alloc refuses any allocation
 * that would take the live total (payload plus this allocator's per-block
 * header) over the budget, so such a frame fails fast with
 * CDX_ERR_RESOURCE_EXHAUSTED after using at most `budget` bytes.
 *
 * Every block carries a small header (its size and links; payloads are
 * 8-byte aligned, enough for every protobuf-c type), so frees are
 * counted exactly, and wire_alloc_free releases whatever is still live (a
 * message freed by discarding its arena, or blocks protobuf-c leaked on an
 * error path). Every block also ends with one zero byte past the size asked
 * for: a `bytes` field unpacked under a wire_alloc is NUL-terminated at
 * data[len] (wire_msg.h relies on it for the contract's text fields).
 *
 * Not thread-safe: one allocator per unpack.
 */
#ifndef WIRE_ALLOC_H
#define WIRE_ALLOC_H

#include <stdbool.h>
#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

#include "cdx_err.h"

typedef struct wire_alloc wire_alloc;

/* Per-block overhead counted against the budget (header + terminator). */
size_t wire_alloc_overhead(void);

/*
 * A new allocator with `budget` bytes. Errors: CDX_ERR_INVALID_ARGUMENT
 * (budget 0), CDX_ERR_RESOURCE_EXHAUSTED (out of memory).
 */
CDX_MUST_CHECK cdx_err wire_alloc_new(size_t budget, wire_alloc **out);

/* Free every block still live, then the allocator; NULL is a no-op. */
void wire_alloc_free(wire_alloc *a);

/* The ProtobufCAllocator to pass to protobuf-c (valid until wire_alloc_free). */
ProtobufCAllocator *wire_alloc_pb(wire_alloc *a);

/* Bytes live now and at the peak (headers included). */
size_t wire_alloc_used(const wire_alloc *a);
size_t wire_alloc_peak(const wire_alloc *a);

/* Blocks live now, and allocations made in total. */
size_t wire_alloc_blocks(const wire_alloc *a);
size_t wire_alloc_count(const wire_alloc *a);

/* True once an allocation was refused for the budget (not for lack of memory). */
bool wire_alloc_over_budget(const wire_alloc *a);

/* The budget for unpacking a frame of `frame_len` bytes (FACTOR x len + SLACK, saturating). */
size_t wire_unpack_budget(size_t frame_len);

#endif
