/*
 * eng_buf.h - a growable byte buffer for building records, and a bounded
 * cursor for parsing them (after authentication, but parsed as if hostile:
 * every length is checked against what is left before it is used).
 *
 * Integers are big-endian on the wire. Writers never fail halfway: an
 * allocation failure sets a sticky error flag checked once at the end
 * (eng_buf_ok), which keeps builders free of error plumbing.
 */
#ifndef ENG_BUF_H
#define ENG_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * A buffer belongs to one thread at a time; nothing here locks. No function
 * returns a cdx_err: writers record failure in `failed`, readers in `bad`.
 */
typedef struct eng_buf {
    uint8_t *data;
    size_t len, cap;
    bool failed;
} eng_buf;

/* An empty buffer (no allocation yet). */
void eng_buf_init(eng_buf *b);
/* Free (wiping the whole capacity: buffers often held plaintext) and leave it empty, reusable. */
void eng_buf_free(eng_buf *b);
/* False once any write failed to allocate (the contents are then incomplete). */
bool eng_buf_ok(const eng_buf *b);
/*
 * Append n uninitialised bytes and return where they start (NULL, and the
 * buffer failed, if allocation failed). The pointer is valid until the next
 * write: later writes may move the data.
 */
uint8_t *eng_buf_reserve(eng_buf *b, size_t n);
/*
 * Make room for n more bytes without adding them (one allocation for a
 * known size). False, and the buffer failed, if allocation failed.
 */
bool eng_buf_grow(eng_buf *b, size_t n);
/* Append n bytes from p (p may be NULL when n is 0). */
void eng_buf_put(eng_buf *b, const void *p, size_t n);
/* Append an integer, big-endian. */
void eng_buf_u8(eng_buf *b, uint8_t v);
void eng_buf_u16(eng_buf *b, uint16_t v);
void eng_buf_u32(eng_buf *b, uint32_t v);
void eng_buf_u64(eng_buf *b, uint64_t v);
/* u32 length then bytes. */
void eng_buf_lbytes(eng_buf *b, const void *p, size_t n);

/* Big-endian helpers for fixed fields: store v at p / load from p (no bounds: the caller sized it). */
void eng_be16(uint8_t *p, uint16_t v);
void eng_be32(uint8_t *p, uint32_t v);
void eng_be64(uint8_t *p, uint64_t v);
uint16_t eng_rd16(const uint8_t *p);
uint32_t eng_rd32(const uint8_t *p);
uint64_t eng_rd64(const uint8_t *p);

/* A read cursor; any short read sets `bad` and yields zeros. */
typedef struct eng_rd {
    const uint8_t *p;
    size_t left;
    bool bad;
} eng_rd;

/* A cursor over p[0..n) (p is borrowed and must outlive it). */
void eng_rd_init(eng_rd *r, const uint8_t *p, size_t n);
/* Read a big-endian integer; 0 (and bad) if too few bytes are left. */
uint8_t eng_rd_u8(eng_rd *r);
uint16_t eng_rd_u16(eng_rd *r);
uint32_t eng_rd_u32(eng_rd *r);
uint64_t eng_rd_u64(eng_rd *r);
/* Copy n bytes out; zeros (and bad) if fewer are left. */
void eng_rd_copy(eng_rd *r, void *out, size_t n);
/* Point at the next n bytes without copying (NULL and bad if fewer are left). */
const uint8_t *eng_rd_ptr(eng_rd *r, size_t n);
/*
 * u32 length (<= max) then bytes: returns a pointer into the input and sets
 * *len; NULL, *len 0 and bad if the length exceeds max or what is left.
 */
const uint8_t *eng_rd_lbytes(eng_rd *r, size_t max, size_t *len);
/* True when everything was consumed and nothing was short. */
bool eng_rd_done(const eng_rd *r);

#endif
