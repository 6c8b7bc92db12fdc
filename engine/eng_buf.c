#include "eng_buf.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

void eng_buf_init(eng_buf *b)
{
    memset(b, 0, sizeof(*b));
}

void eng_buf_free(eng_buf *b)
{
    if (b->data) {
        OPENSSL_cleanse(b->data, b->cap);
        free(b->data);
    }
    eng_buf_init(b);
}

bool eng_buf_ok(const eng_buf *b)
{
    return !b->failed;
}

uint8_t *eng_buf_reserve(eng_buf *b, size_t n)
{
    if (b->failed)
        return NULL;
    if (n > SIZE_MAX / 2 - b->len) {
        b->failed = true;
        return NULL;
    }
    if (b->len + n > b->cap || !b->data) { /* storage even for 0 bytes: a non-NULL answer */
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        /* Not realloc: the old block may hold plaintext and must be wiped. */
        uint8_t *d = malloc(cap);
        if (!d) {
            b->failed = true;
            return NULL;
        }
        if (b->data) {
            memcpy(d, b->data, b->len);
            OPENSSL_cleanse(b->data, b->cap);
            free(b->data);
        }
        b->data = d;
        b->cap = cap;
    }
    uint8_t *p = b->data + b->len;
    b->len += n;
    return p;
}

bool eng_buf_grow(eng_buf *b, size_t n)
{
    if (!eng_buf_reserve(b, n))
        return false;
    b->len -= n;
    return true;
}

void eng_buf_put(eng_buf *b, const void *p, size_t n)
{
    uint8_t *d = eng_buf_reserve(b, n);
    if (d && n)
        memcpy(d, p, n);
}

void eng_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

void eng_be32(uint8_t *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

void eng_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

uint16_t eng_rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

uint32_t eng_rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

uint64_t eng_rd64(const uint8_t *p)
{
    return (uint64_t)eng_rd32(p) << 32 | eng_rd32(p + 4);
}

void eng_buf_u8(eng_buf *b, uint8_t v)
{
    eng_buf_put(b, &v, 1);
}

void eng_buf_u16(eng_buf *b, uint16_t v)
{
    uint8_t *p = eng_buf_reserve(b, 2);
    if (p)
        eng_be16(p, v);
}

void eng_buf_u32(eng_buf *b, uint32_t v)
{
    uint8_t *p = eng_buf_reserve(b, 4);
    if (p)
        eng_be32(p, v);
}

void eng_buf_u64(eng_buf *b, uint64_t v)
{
    uint8_t *p = eng_buf_reserve(b, 8);
    if (p)
        eng_be64(p, v);
}

void eng_buf_lbytes(eng_buf *b, const void *p, size_t n)
{
    if (n > UINT32_MAX) {
        b->failed = true;
        return;
    }
    eng_buf_u32(b, (uint32_t)n);
    eng_buf_put(b, p, n);
}

void eng_rd_init(eng_rd *r, const uint8_t *p, size_t n)
{
    r->p = p;
    r->left = n;
    r->bad = false;
}

const uint8_t *eng_rd_ptr(eng_rd *r, size_t n)
{
    if (r->bad || n > r->left) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *p = r->p;
    r->p += n;
    r->left -= n;
    return p;
}

uint8_t eng_rd_u8(eng_rd *r)
{
    const uint8_t *p = eng_rd_ptr(r, 1);
    return p ? p[0] : 0;
}

uint16_t eng_rd_u16(eng_rd *r)
{
    const uint8_t *p = eng_rd_ptr(r, 2);
    return p ? eng_rd16(p) : 0;
}

uint32_t eng_rd_u32(eng_rd *r)
{
    const uint8_t *p = eng_rd_ptr(r, 4);
    return p ? eng_rd32(p) : 0;
}

uint64_t eng_rd_u64(eng_rd *r)
{
    const uint8_t *p = eng_rd_ptr(r, 8);
    return p ? eng_rd64(p) : 0;
}

void eng_rd_copy(eng_rd *r, void *out, size_t n)
{
    const uint8_t *p = eng_rd_ptr(r, n);
    if (p)
        memcpy(out, p, n);
    else
        memset(out, 0, n);
}

const uint8_t *eng_rd_lbytes(eng_rd *r, size_t max, size_t *len)
{
    uint32_t n = eng_rd_u32(r);
    *len = 0;
    if (r->bad || n > max) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *p = eng_rd_ptr(r, n);
    if (p)
        *len = n;
    return p;
}

bool eng_rd_done(const eng_rd *r)
{
    return !r->bad && r->left == 0;
}
