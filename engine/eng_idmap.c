/* Id-map buckets: id token -> where the live copy of the item is. */
#include <stdlib.h>
#include <string.h>

#include "eng_internal.h"

unsigned eng_bucket_of(const uint8_t tok[ENG_TOKEN_LEN])
{
    return tok[0] % ENG_BUCKETS;
}

void eng_bucket_free(eng_bucket *b)
{
    if (!b)
        return;
    for (uint32_t i = 0; i < b->n; i++)
        free(b->e[i].id);
    free(b->e);
    memset(b, 0, sizeof(*b));
}

static size_t lower_bound(const eng_bucket *b, const uint8_t tok[ENG_TOKEN_LEN])
{
    size_t lo = 0, hi = b->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (memcmp(b->e[mid].tok, tok, ENG_TOKEN_LEN) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

eng_ident *eng_bucket_find(eng_bucket *b, const uint8_t tok[ENG_TOKEN_LEN])
{
    size_t i = lower_bound(b, tok);
    return i < b->n && !memcmp(b->e[i].tok, tok, ENG_TOKEN_LEN) ? &b->e[i] : NULL;
}

cdx_err eng_bucket_put(eng_bucket *b, eng_ident *e)
{
    size_t i = lower_bound(b, e->tok);
    if (i < b->n && !memcmp(b->e[i].tok, e->tok, ENG_TOKEN_LEN)) {
        free(b->e[i].id);
        b->e[i] = *e;
        return CDX_OK;
    }
    if (b->n == b->cap) {
        uint32_t cap = b->cap ? b->cap * 2 : 16;
        eng_ident *p = realloc(b->e, cap * sizeof(*p));
        if (!p)
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        b->e = p;
        b->cap = cap;
    }
    memmove(&b->e[i + 1], &b->e[i], (b->n - i) * sizeof(*b->e));
    b->e[i] = *e;
    b->n++;
    return CDX_OK;
}

bool eng_bucket_remove(eng_bucket *b, const uint8_t tok[ENG_TOKEN_LEN])
{
    size_t i = lower_bound(b, tok);
    if (i >= b->n || memcmp(b->e[i].tok, tok, ENG_TOKEN_LEN))
        return false;
    free(b->e[i].id);
    memmove(&b->e[i], &b->e[i + 1], (b->n - i - 1) * sizeof(*b->e));
    b->n--;
    return true;
}

size_t eng_bucket_encoded_len(const eng_bucket *b)
{
    size_t n = 4;
    for (uint32_t i = 0; i < b->n; i++)
        n += 70 + (size_t)b->e[i].id_len;
    return n;
}

void eng_bucket_encode(const eng_bucket *b, eng_buf *out)
{
    /* One reservation and direct stores: buckets are rewritten whole on every commit. */
    uint8_t *p = eng_buf_reserve(out, eng_bucket_encoded_len(b));
    if (!p)
        return;
    eng_be32(p, b->n);
    p += 4;
    for (uint32_t i = 0; i < b->n; i++) {
        const eng_ident *e = &b->e[i];
        memcpy(p, e->tok, ENG_TOKEN_LEN);
        eng_be32(p + 16, e->cluster);
        memcpy(p + 20, e->seg, ENG_TOKEN_LEN);
        eng_be32(p + 36, e->row);
        eng_be64(p + 40, e->commit_version);
        memcpy(p + 48, e->content, ENG_TOKEN_LEN);
        eng_be32(p + 64, e->content_len);
        eng_be16(p + 68, e->id_len);
        memcpy(p + 70, e->id, e->id_len);
        p += 70 + (size_t)e->id_len;
    }
}

cdx_err eng_bucket_decode(const uint8_t *p, size_t n, eng_bucket *b)
{
    eng_rd r;
    eng_rd_init(&r, p, n);
    memset(b, 0, sizeof(*b));
    uint32_t cnt = eng_rd_u32(&r);
    /* An entry is at least 71 bytes: a count beyond that is a lie. */
    if (r.bad || cnt > r.left / 71)
        goto bad;
    b->e = calloc(cnt ? cnt : 1, sizeof(*b->e));
    if (!b->e)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    b->cap = cnt ? cnt : 1;
    for (uint32_t i = 0; i < cnt; i++) {
        eng_ident *e = &b->e[i];
        eng_rd_copy(&r, e->tok, ENG_TOKEN_LEN);
        e->cluster = eng_rd_u32(&r);
        eng_rd_copy(&r, e->seg, ENG_TOKEN_LEN);
        e->row = eng_rd_u32(&r);
        e->commit_version = eng_rd_u64(&r);
        eng_rd_copy(&r, e->content, ENG_TOKEN_LEN);
        e->content_len = eng_rd_u32(&r);
        e->id_len = eng_rd_u16(&r);
        const uint8_t *id = eng_rd_ptr(&r, e->id_len);
        if (!id || e->id_len == 0 || e->id_len > CDX_ITEM_ID_MAX ||
            e->content_len > CDX_CONTENTS_MAX)
            goto bad;
        e->id = malloc(e->id_len + 1u);
        if (!e->id) {
            eng_bucket_free(b);
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        }
        memcpy(e->id, id, e->id_len);
        e->id[e->id_len] = '\0';
        b->n++;
        if (i > 0 && memcmp(b->e[i - 1].tok, e->tok, ENG_TOKEN_LEN) >= 0)
            goto bad;
    }
    if (!eng_rd_done(&r))
        goto bad;
    return CDX_OK;
bad:
    eng_bucket_free(b);
    return cdx_fail(CDX_ERR_INTEGRITY, "id-map bucket is malformed");
}
