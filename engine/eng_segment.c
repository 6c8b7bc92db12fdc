/* Search blocks: the part of a segment every query reads. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "eng_internal.h"

uint8_t *eng_search_encode(eng_buf *b, uint32_t rows, uint32_t code_size, const uint8_t *codes,
                           const float *aux, bool with_aux, const char *const *ids,
                           const uint16_t *id_lens, const eng_tomb *tombs, uint32_t ntomb)
{
    eng_buf_u32(b, rows);
    eng_buf_u32(b, code_size);
    eng_buf_u32(b, ntomb);
    size_t at = b->len, cb = (size_t)rows * code_size;
    uint8_t *c = eng_buf_reserve(b, cb + (with_aux ? (size_t)rows * 2 * sizeof(float) : 0));
    if (c && codes && rows)
        memcpy(c, codes, cb);
    if (c && aux && with_aux && rows)
        memcpy(c + cb, aux, (size_t)rows * 2 * sizeof(float));
    for (uint32_t i = 0; i < rows; i++) {
        eng_buf_u16(b, id_lens[i]);
        eng_buf_put(b, ids[i], id_lens[i]);
    }
    for (uint32_t i = 0; i < ntomb; i++) {
        eng_buf_put(b, tombs[i].seg, ENG_TOKEN_LEN);
        eng_buf_u32(b, tombs[i].row);
    }
    /* Later writes may have moved the buffer. */
    return eng_buf_ok(b) ? b->data + at : NULL;
}

static void search_free(eng_search *s)
{
    if (s->plain) {
        OPENSSL_cleanse(s->plain, s->plain_len);
        free(s->plain);
    }
    free(s->aux);
    free(s->id_pos);
    free(s->id_len);
    free(s);
}

void eng_search_release(eng_search *s)
{
    if (s && atomic_fetch_sub(&s->refs, 1) == 1)
        search_free(s);
}

cdx_err eng_search_decode(uint8_t *plain, size_t n, uint32_t expect_rows, uint32_t code_size,
                          bool with_aux, eng_search **out)
{
    eng_search *s = calloc(1, sizeof(*s));
    if (!s) {
        OPENSSL_cleanse(plain, n);
        free(plain);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    s->plain = plain;
    s->plain_len = n;
    atomic_init(&s->refs, 1);
    eng_rd r;
    eng_rd_init(&r, plain, n);
    s->rows = eng_rd_u32(&r);
    s->code_size = eng_rd_u32(&r);
    s->ntomb = eng_rd_u32(&r);
    if (r.bad || s->rows != expect_rows || s->code_size != code_size)
        goto bad;
    if (s->rows && (size_t)s->rows * code_size / s->rows != code_size)
        goto bad;
    s->codes = eng_rd_ptr(&r, (size_t)s->rows * code_size);
    if (r.bad)
        goto bad;
    if (with_aux) {
        /* Copied out: the floats sit at any alignment in the plaintext. */
        const uint8_t *a = eng_rd_ptr(&r, (size_t)s->rows * 2 * sizeof(float));
        if (r.bad)
            goto bad;
        s->aux = malloc((size_t)s->rows * 2 * sizeof(float) + 1);
        if (!s->aux) {
            search_free(s);
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        }
        memcpy(s->aux, a, (size_t)s->rows * 2 * sizeof(float));
        for (size_t i = 0; i < (size_t)s->rows * 2; i++)
            if (!isfinite(s->aux[i]) || s->aux[i] < 0)
                goto bad; /* a bound must be a bound */
    }
    s->id_pos = malloc((s->rows ? s->rows : 1) * sizeof(uint32_t));
    s->id_len = malloc((s->rows ? s->rows : 1) * sizeof(uint16_t));
    if (!s->id_pos || !s->id_len) {
        search_free(s);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    for (uint32_t i = 0; i < s->rows; i++) {
        uint16_t l = eng_rd_u16(&r);
        const uint8_t *id = eng_rd_ptr(&r, l);
        if (!id || l == 0 || l > CDX_ITEM_ID_MAX)
            goto bad;
        s->id_pos[i] = (uint32_t)(id - plain);
        s->id_len[i] = l;
    }
    if (s->ntomb > r.left / 20)
        goto bad;
    s->tombs = eng_rd_ptr(&r, (size_t)s->ntomb * 20);
    if (!eng_rd_done(&r))
        goto bad;
    s->bytes = sizeof(*s) + n + s->rows * (with_aux ? 14u : 6u);
    *out = s;
    return CDX_OK;
bad:
    search_free(s);
    return cdx_fail(CDX_ERR_INTEGRITY, "search block is malformed");
}

cdx_err eng_vectors_wrap(uint8_t *plain, size_t n, uint32_t rows, uint32_t dim, eng_search **out)
{
    eng_search *s = NULL;
    if ((size_t)rows * dim * sizeof(float) != n) {
        OPENSSL_cleanse(plain, n);
        free(plain);
        return cdx_fail(CDX_ERR_INTEGRITY, "vector block is malformed");
    }
    s = calloc(1, sizeof(*s));
    if (!s) {
        OPENSSL_cleanse(plain, n);
        free(plain);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    s->plain = plain;
    s->plain_len = n;
    s->rows = rows;
    s->code_size = dim * (uint32_t)sizeof(float);
    s->codes = plain;
    s->bytes = sizeof(*s) + n;
    atomic_init(&s->refs, 1);
    *out = s;
    return CDX_OK;
}
