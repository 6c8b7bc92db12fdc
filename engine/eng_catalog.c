/* Catalog entries: the name → index mapping, sealed under the root key. */
#include <string.h>

#include "eng_internal.h"

#define CAT_FMT 1

void eng_cat_encode(const eng_catentry *c, eng_buf *b)
{
    eng_buf_u8(b, CAT_FMT);
    eng_buf_u8(b, c->state);
    size_t nl = strlen(c->name);
    eng_buf_u16(b, (uint16_t)nl);
    eng_buf_put(b, c->name, nl);
    eng_buf_put(b, c->id, CDX_ID_LEN);
    eng_buf_u8(b, c->key_source);
    eng_buf_u8(b, c->owned);
    eng_buf_put(b, c->serial, 16);
    eng_buf_u8(b, c->has_kcv);
    eng_buf_put(b, c->kcv, CDX_KCV_LEN);
    eng_buf_u32(b, c->dim);
    eng_buf_u8(b, c->metric);
    eng_buf_u8(b, c->type);
    eng_buf_u32(b, c->n_lists);
    eng_buf_u64(b, c->created_ms);
}

cdx_err eng_cat_decode(const uint8_t *p, size_t n, eng_catentry *c)
{
    eng_rd r;
    eng_rd_init(&r, p, n);
    memset(c, 0, sizeof(*c));
    uint8_t fmt = eng_rd_u8(&r);
    c->state = eng_rd_u8(&r);
    uint16_t nl = eng_rd_u16(&r);
    if (nl > CDX_INDEX_NAME_MAX)
        r.bad = true;
    eng_rd_copy(&r, c->name, r.bad ? 0 : nl);
    eng_rd_copy(&r, c->id, CDX_ID_LEN);
    c->key_source = eng_rd_u8(&r);
    c->owned = eng_rd_u8(&r);
    eng_rd_copy(&r, c->serial, 16);
    c->has_kcv = eng_rd_u8(&r);
    eng_rd_copy(&r, c->kcv, CDX_KCV_LEN);
    c->dim = eng_rd_u32(&r);
    c->metric = eng_rd_u8(&r);
    c->type = eng_rd_u8(&r);
    c->n_lists = eng_rd_u32(&r);
    c->created_ms = eng_rd_u64(&r);
    if (!eng_rd_done(&r) || fmt != CAT_FMT || c->state < ENG_ST_CREATING ||
        c->state > ENG_ST_DELETING || c->dim == 0 || c->dim > CDX_DIM_MAX)
        return cdx_fail(CDX_ERR_INTEGRITY, "catalog entry is malformed");
    return CDX_OK;
}
