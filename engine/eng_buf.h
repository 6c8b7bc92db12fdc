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

typedef struct eng_buf {
    uint8_t *data;
    size_t len, cap;
    bool failed;
} eng_buf;

void eng_buf_init(eng_buf *b);
/* Free (wiping the contents: buffers often held plaintext). */
void eng_buf_free(eng_buf *b);
bool eng_buf_ok(const eng_buf *b);
/* Reserve n more bytes and return where they start (NULL if allocation failed). */
uint8_t *eng_buf_reserve(eng_buf *b, size_t n);
/* Make room for n more bytes without adding them (one allocation for a known size). */
bool eng_buf_grow(eng_buf *b, size_t n);
void eng_buf_put(eng_buf *b, const void *p, size_t n);
void eng_buf_u8(eng_buf *b, uint8_t v);
void eng_buf_u16(eng_buf *b, uint16_t v);
void eng_buf_u32(eng_buf *b, uint32_t v);
void eng_buf_u64(eng_buf *b, uint64_t v);
/* u32 length then bytes. */
void eng_buf_lbytes(eng_buf *b, const void *p, size_t n);

/* Big-endian helpers for fixed fields. */
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

void eng_rd_init(eng_rd *r, const uint8_t *p, size_t n);
uint8_t eng_rd_u8(eng_rd *r);
uint16_t eng_rd_u16(eng_rd *r);
uint32_t eng_rd_u32(eng_rd *r);
uint64_t eng_rd_u64(eng_rd *r);
/* Copy n bytes out. */
void eng_rd_copy(eng_rd *r, void *out, size_t n);
/* Point at the next n bytes without copying (NULL and bad if fewer are left). */
const uint8_t *eng_rd_ptr(eng_rd *r, size_t n);
/* u32 length (<= max) then bytes: returns a pointer into the input. */
const uint8_t *eng_rd_lbytes(eng_rd *r, size_t max, size_t *len);
/* True when everything was consumed and nothing was short. */
bool eng_rd_done(const eng_rd *r);

#endif
