/*
 * Segments (eng_segment.h): the search-block codec (the part of a segment
 * every query reads), and building and storing segments.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "eng_int.h"
#include "eng_op.h"
#include "eng_par.h"
#include "eng_screen.h"
#include "eng_segment.h"
#include "eng_sq8.h"
#include "eng_store.h"

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
    /* Each row still needs an id (2 length bytes + at least 1): a count the bytes left
     * cannot hold is refused before it sizes an allocation (found by fuzz_codec). */
    if (s->rows > r.left / 3)
        goto bad;
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
    if (s->ntomb > r.left / ENG_TOMB_LEN)
        goto bad;
    s->tombs = eng_rd_ptr(&r, (size_t)s->ntomb * ENG_TOMB_LEN);
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

void eng_segs_free(eng_seg_out *s, size_t n)
{
    for (size_t i = 0; s && i < n; i++)
        eng_buf_free(&s[i].val);
    free(s);
}

static cdx_err seg_token(op *o, uint32_t cluster, const uint8_t salt[ENG_SALT_LEN],
                         uint8_t tok[ENG_TOKEN_LEN])
{
    eng_sealer *k;
    uint8_t msg[4 + ENG_SALT_LEN], mac[CDX_SUBKEY_LEN];
    cdx_err err = eng_op_sealer(o, HSM_P_CENTROID, &k);
    if (err)
        return err;
    eng_be32(msg, cluster);
    memcpy(msg + 4, salt, ENG_SALT_LEN);
    if ((err = eng_sealer_hmac(k, msg, sizeof(msg), mac)))
        return err;
    memcpy(tok, mac, ENG_TOKEN_LEN);
    return CDX_OK;
}

/*
 * Build one segment of `cluster` from rows (pointers) and tombstones: search
 * block, vector block (unless the search block holds the originals), metadata
 * block, each sealed on its own, concatenated into one value. The plaintexts
 * are written straight into the value, sized once, and sealed in place.
 */
cdx_err eng_segment_build(op *o, const eng_manifest *m, uint64_t version, uint32_t cluster,
                          eng_row **rows, uint32_t nrows, const eng_tomb *tombs, uint32_t ntomb,
                          eng_seg_out *out)
{
    cdx_err err;
    size_t d = m->dim;
    uint32_t cs = eng_code_size(m);
    bool vec = !eng_originals_in_search(m);
    const char **ids = NULL;
    uint16_t *idl = NULL;
    eng_sealer *sl;
    eng_buf *val = &out->val;
    memset(out, 0, sizeof(*out));
    eng_buf_init(val);
    out->cluster = cluster;
    if ((err = eng_op_sealer(o, HSM_P_PAYLOAD, &sl)) ||
        (err = eng_random(out->ref.salt, ENG_SALT_LEN)) ||
        (err = seg_token(o, cluster, out->ref.salt, out->ref.token)))
        return err;
    out->ref.version = version;
    out->ref.rows = nrows;
    ids = malloc((nrows + 1u) * sizeof(*ids));
    idl = malloc((nrows + 1u) * sizeof(*idl));
    if (!ids || !idl) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    size_t idbytes = 0, metabytes = 0;
    for (uint32_t i = 0; i < nrows; i++) {
        ids[i] = rows[i]->id;
        idl[i] = rows[i]->id_len;
        idbytes += 2u + rows[i]->id_len;
        metabytes += 4u + rows[i]->meta_len;
        memcpy(rows[i]->seg, out->ref.token, ENG_TOKEN_LEN);
        rows[i]->row = i;
    }
    /* The three records, so the value is allocated once and nothing moves while sealing. */
    size_t total = 3 * ENG_REC_OVERHEAD + 12 + (size_t)nrows * cs +
                   (eng_coded(m) ? (size_t)nrows * 2 * sizeof(float) : 0) + idbytes +
                   ENG_TOMB_LEN * (size_t)ntomb + (vec ? (size_t)nrows * d * sizeof(float) : 0) +
                   4 + metabytes;
    if (!eng_buf_grow(val, total)) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    eng_rec_id id = {.scope = o->key.id,
                     .kind = ENG_K_SEARCH,
                     .token = out->ref.token,
                     .epoch = o->epoch,
                     .version = version};
    size_t at = val->len;
    eng_buf_reserve(val, ENG_REC_HDR);
    uint8_t *codes =
        eng_search_encode(val, nrows, cs, NULL, NULL, eng_coded(m), ids, idl, tombs, ntomb);
    if (!codes) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    eng_sq8 q = {.d = d, .vmin = m->sq_vmin, .step = m->sq_step};
    for (uint32_t i = 0; i < nrows; i++) {
        if (eng_coded(m)) {
            float aux[2];
            eng_sq8_encode(&q, rows[i]->search, 1, codes + (size_t)i * cs);
            eng_screen_row_aux(&q, rows[i]->search, codes + (size_t)i * cs, aux);
            if (eng_is_sq8(m))
                aux[1] = 0; /* IVFSQ8 scores the codes themselves */
            memcpy(codes + (size_t)nrows * cs + 8 * (size_t)i, aux, sizeof(aux));
        } else
            memcpy(codes + (size_t)i * cs, rows[i]->search, cs);
    }
    if ((err = eng_rec_seal_at(sl, &id, cdx_wall_ms(), o->kcv, val, at)))
        goto out;
    out->ref.search_len = (uint32_t)(val->len - at);
    if (vec) {
        at = val->len;
        eng_buf_reserve(val, ENG_REC_HDR);
        for (uint32_t i = 0; i < nrows; i++)
            eng_buf_put(val, rows[i]->orig, d * sizeof(float));
        id.kind = ENG_K_VECTORS;
        if ((err = eng_rec_seal_at(sl, &id, cdx_wall_ms(), o->kcv, val, at)))
            goto out;
        out->ref.vectors_len = (uint32_t)(val->len - at);
    }
    at = val->len;
    eng_buf_reserve(val, ENG_REC_HDR);
    eng_buf_u32(val, nrows);
    for (uint32_t i = 0; i < nrows; i++)
        eng_buf_lbytes(val, rows[i]->meta, rows[i]->meta_len);
    id.kind = ENG_K_META;
    if ((err = eng_rec_seal_at(sl, &id, cdx_wall_ms(), o->kcv, val, at)))
        goto out;
    out->ref.meta_len = (uint32_t)(val->len - at);
out:
    free(ids);
    free(idl);
    return err;
}

/* Write segments (SET NX under fresh tokens: never overwriting anything). */
cdx_err eng_segments_put(op *o, eng_seg_out *s, size_t n)
{
    if (n == 0)
        return CDX_OK;
    char(*keys)[CDX_STORE_KEY_MAX] = calloc(n, sizeof(*keys));
    eng_kv *kv = calloc(n, sizeof(*kv));
    bool *created = calloc(n, sizeof(*created));
    cdx_err err = CDX_OK;
    if (!keys || !kv || !created) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        eng_key_rec(keys[i], o->ix->id, ENG_KEY_SEGMENT, s[i].ref.token);
        kv[i] = (eng_kv){keys[i], s[i].val.data, s[i].val.len};
    }
    if ((err = eng_store_setnx(o->e->cfg.store, kv, n, created)))
        goto out;
    for (size_t i = 0; i < n; i++)
        if (!created[i]) {
            err = cdx_fail(CDX_ERR_INTERNAL, "segment name collision (never expected)");
            goto out;
        }
out:
    free(keys);
    free(kv);
    free(created);
    return err;
}

typedef struct seg_part {
    eng_part p;
    eng_seg_build *b;
    op o; /* op_worker copy: own sealers */
} seg_part;

static void *seg_part_main(void *arg)
{
    seg_part *w = arg;
    eng_seg_build *b = w->b;
    cdx_err err = CDX_OK;
    for (;;) {
        size_t j = atomic_fetch_add(&b->next, 1);
        if (j >= b->n)
            break;
        err = eng_segment_build(&w->o, b->m, b->version, b->cls[j], b->rows + b->rs[j],
                                (uint32_t)(b->rs[j + 1] - b->rs[j]), b->tombs + b->ts[j],
                                (uint32_t)(b->ts[j + 1] - b->ts[j]), &b->segs[j]);
        if (err) {
            atomic_store(&b->next, b->n); /* the others stop too */
            break;
        }
    }
    eng_part_done(&w->p, err);
    return NULL;
}

/*
 * Build (seal) every segment, on several threads when there are many.
 * Segments land at their own index, so their order (ascending cluster) does
 * not depend on the threads.
 */
cdx_err eng_segments_build(op *o, eng_seg_build *b)
{
    hsm_subkey *k;
    cdx_err err;
    /* Workers share the op's subkeys and must not fetch any: fetch them first. */
    if ((err = eng_op_key(o, HSM_P_PAYLOAD, &k)) || (err = eng_op_key(o, HSM_P_CENTROID, &k)))
        return err;
    seg_part w[CDX_WRITE_THREADS_MAX];
    const eng_part *ps[CDX_WRITE_THREADS_MAX];
    unsigned nt = eng_par_threads(b->n, 16);
    for (unsigned i = 0; i < nt; i++) {
        w[i].b = b;
        eng_op_worker(o, &w[i].o);
        ps[i] = &w[i].p;
    }
    eng_par_run(seg_part_main, w, sizeof(w[0]), nt, true);
    for (unsigned i = 0; i < nt; i++)
        eng_op_sealers_free(&w[i].o);
    return eng_parts_err(ps, nt);
}
