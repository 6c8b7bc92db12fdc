#include "wire_alloc.h"

#include <assert.h>
#include <stdalign.h>
#include <stdint.h>
#include <stdlib.h>

#include "cdx_limits.h"

/*
 * Header before every block. Payloads are 8-byte aligned, the strictest
 * alignment of anything protobuf-c stores (uint64_t, double, size_t,
 * pointers; no long double), which keeps the per-block overhead at 25 bytes.
 */
typedef struct blk {
    struct blk *prev, *next;
    size_t size; /* payload bytes asked for */
} blk;

#define ALIGN 8
static_assert(alignof(uint64_t) <= ALIGN && alignof(double) <= ALIGN && alignof(void *) <= ALIGN &&
                  alignof(size_t) <= ALIGN,
              "wire_alloc payload alignment");
#define HDR_SIZE ((sizeof(blk) + ALIGN - 1) / ALIGN * ALIGN)
#define OVERHEAD (HDR_SIZE + 1) /* header + trailing zero byte */

struct wire_alloc {
    ProtobufCAllocator pb; /* allocator_data points back here */
    size_t budget;
    size_t used, peak;
    size_t blocks, count;
    bool over;
    blk head; /* circular list of live blocks */
};

size_t wire_alloc_overhead(void)
{
    return OVERHEAD;
}

static void *pb_alloc(void *data, size_t size)
{
    wire_alloc *a = data;
    if (size > SIZE_MAX - OVERHEAD)
        goto refuse;
    size_t total = size + OVERHEAD;
    if (total > a->budget - a->used)
        goto refuse;
    blk *b = malloc(total);
    if (!b)
        return NULL;
    b->size = size;
    b->next = a->head.next;
    b->prev = &a->head;
    a->head.next->prev = b;
    a->head.next = b;
    unsigned char *p = (unsigned char *)b + HDR_SIZE;
    p[size] = 0;
    a->used += total;
    if (a->used > a->peak)
        a->peak = a->used;
    a->blocks++;
    a->count++;
    return p;
refuse:
    a->over = true;
    return NULL;
}

static void pb_free(void *data, void *ptr)
{
    wire_alloc *a = data;
    if (!ptr)
        return;
    blk *b = (blk *)((unsigned char *)ptr - HDR_SIZE);
    b->prev->next = b->next;
    b->next->prev = b->prev;
    a->used -= b->size + OVERHEAD;
    a->blocks--;
    free(b);
}

cdx_err wire_alloc_new(size_t budget, wire_alloc **out)
{
    *out = NULL;
    if (budget == 0)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "unpack budget must be positive");
    wire_alloc *a = calloc(1, sizeof(*a));
    if (!a)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    a->pb.alloc = pb_alloc;
    a->pb.free = pb_free;
    a->pb.allocator_data = a;
    a->budget = budget;
    a->head.next = a->head.prev = &a->head;
    *out = a;
    return CDX_OK;
}

void wire_alloc_free(wire_alloc *a)
{
    if (!a)
        return;
    blk *b = a->head.next;
    while (b != &a->head) {
        blk *next = b->next;
        free(b);
        b = next;
    }
    free(a);
}

ProtobufCAllocator *wire_alloc_pb(wire_alloc *a)
{
    return &a->pb;
}

size_t wire_alloc_used(const wire_alloc *a)
{
    return a->used;
}

size_t wire_alloc_peak(const wire_alloc *a)
{
    return a->peak;
}

size_t wire_alloc_blocks(const wire_alloc *a)
{
    return a->blocks;
}

size_t wire_alloc_count(const wire_alloc *a)
{
    return a->count;
}

bool wire_alloc_over_budget(const wire_alloc *a)
{
    return a->over;
}

size_t wire_unpack_budget(size_t frame_len)
{
    if (frame_len > (SIZE_MAX - CDX_UNPACK_BUDGET_SLACK) / CDX_UNPACK_BUDGET_FACTOR)
        return SIZE_MAX;
    return frame_len * CDX_UNPACK_BUDGET_FACTOR + CDX_UNPACK_BUDGET_SLACK;
}
