/*
 * fuzz_codec.c - fuzz target for the decoders of the engine's record
 * plaintexts: catalog entry, head, manifest, id-map bucket, search block.
 * They only ever see authenticated plaintext, and still read it as hostile
 * (docs/RECORDS.md): this checks that they do.
 *
 * The first input byte picks the decoder (and, for search blocks, whether
 * the screen aux area is expected); the rest is the plaintext. A decode
 * either fails with INTEGRITY (or RESOURCE_EXHAUSTED) and nothing to free,
 * or succeeds; then encoding the result and decoding it again must give the
 * same encoding (the codec is a fixpoint after one round).
 *
 * Built two ways (see tests/fuzz/fuzz_main.h):
 *  - by CMake with fuzz_main.c: `fuzz_codec [--seeds DIR] FILE|DIR...`;
 *  - for libFuzzer (clang 14, Debian libclang-rt-14-dev): compile this file
 *    with -DCDX_LIBFUZZER -fsanitize=fuzzer,address,undefined, -Iengine
 *    -Iproto -Ipkcs11, and link it against a cdx_engine built with the same
 *    flags.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cdx_err.h"
#include "eng_buf.h"

/* ---- the codecs under test ----
 * Declared in engine/eng_internal.h today; when that header is split per
 * concept, these includes become eng_catalog.h, eng_head.h, eng_manifest.h,
 * eng_idmap.h and eng_segment.h. Nothing else in this file names a header. */
#include "eng_internal.h"

#ifndef CDX_LIBFUZZER
#include "fuzz_main.h"
#else
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
#endif

enum { C_CAT, C_HEAD, C_MANIFEST, C_BUCKET, C_SEARCH, C_SEARCH_AUX, C_N };

static bool ok_failure(cdx_err e)
{
    if (e == CDX_ERR_INTEGRITY || e == CDX_ERR_RESOURCE_EXHAUSTED)
        return true;
    fprintf(stderr, "unexpected error %s: %s\n", cdx_err_name(e), cdx_err_detail());
    return false;
}

/* b1 and b2 hold the same bytes; frees both. */
static void same(eng_buf *b1, eng_buf *b2)
{
    if (!eng_buf_ok(b1) || !eng_buf_ok(b2) || b1->len != b2->len ||
        memcmp(b1->data, b2->data, b1->len) != 0)
        abort();
    eng_buf_free(b1);
    eng_buf_free(b2);
}

static void fuzz_cat(const uint8_t *p, size_t n)
{
    eng_catentry c, c2;
    cdx_err e = eng_cat_decode(p, n, &c);
    if (e) {
        if (!ok_failure(e))
            abort();
        return;
    }
    eng_buf b1, b2;
    eng_buf_init(&b1);
    eng_buf_init(&b2);
    eng_cat_encode(&c, &b1);
    if (eng_cat_decode(b1.data, b1.len, &c2) != CDX_OK)
        abort();
    eng_cat_encode(&c2, &b2);
    same(&b1, &b2);
}

static void fuzz_head(const uint8_t *p, size_t n)
{
    eng_head h, h2;
    cdx_err e = eng_head_decode(p, n, &h);
    if (e) {
        if (!ok_failure(e))
            abort();
        return;
    }
    eng_buf b1, b2;
    eng_buf_init(&b1);
    eng_buf_init(&b2);
    eng_head_encode(&h, &b1);
    if (eng_head_decode(b1.data, b1.len, &h2) != CDX_OK)
        abort();
    eng_head_encode(&h2, &b2);
    same(&b1, &b2);
}

static void fuzz_manifest(const uint8_t *p, size_t n)
{
    eng_manifest *m = NULL, *m2 = NULL;
    cdx_err e = eng_manifest_decode(p, n, &m); /* *out untouched on error */
    if (e) {
        if (!ok_failure(e))
            abort();
        return;
    }
    eng_buf b1, b2;
    eng_buf_init(&b1);
    eng_buf_init(&b2);
    eng_manifest_encode(m, &b1);
    if (eng_manifest_decode(b1.data, b1.len, &m2) != CDX_OK)
        abort();
    eng_manifest_encode(m2, &b2);
    same(&b1, &b2);
    eng_manifest_free(m);
    eng_manifest_free(m2);
}

static void fuzz_bucket(const uint8_t *p, size_t n)
{
    eng_bucket b = {0}, bb = {0};
    cdx_err e = eng_bucket_decode(p, n, &b);
    if (e) {
        if (!ok_failure(e))
            abort();
        eng_bucket_free(&b);
        return;
    }
    eng_buf b1, b2;
    eng_buf_init(&b1);
    eng_buf_init(&b2);
    eng_bucket_encode(&b, &b1);
    if (b1.len != eng_bucket_encoded_len(&b))
        abort();
    if (eng_bucket_decode(b1.data, b1.len, &bb) != CDX_OK)
        abort();
    eng_bucket_encode(&bb, &b2);
    same(&b1, &b2);
    eng_bucket_free(&b);
    eng_bucket_free(&bb);
}

/* The header's own rows and code size are the expected ones, so the fuzzer
 * reaches past the first check. */
static void fuzz_search(const uint8_t *p, size_t n, bool aux)
{
    uint32_t rows = n >= 4 ? eng_rd32(p) : 0, cs = n >= 8 ? eng_rd32(p + 4) : 0;
    uint8_t *plain = malloc(n ? n : 1);
    if (!plain)
        return;
    memcpy(plain, p, n);
    eng_search *s = NULL;
    cdx_err e = eng_search_decode(plain, n, rows, cs, aux, &s); /* takes plain */
    if (e) {
        if (!ok_failure(e))
            abort();
        return;
    }
    /* Every id and tombstone lies inside the plaintext. */
    for (uint32_t i = 0; i < s->rows; i++)
        if ((size_t)s->id_pos[i] + s->id_len[i] > s->plain_len)
            abort();
    if (s->ntomb &&
        (s->tombs < s->plain || s->tombs + (size_t)s->ntomb * 20 > s->plain + s->plain_len))
        abort();
    eng_search_release(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    switch (data[0] % C_N) {
    case C_CAT:
        fuzz_cat(p, n);
        break;
    case C_HEAD:
        fuzz_head(p, n);
        break;
    case C_MANIFEST:
        fuzz_manifest(p, n);
        break;
    case C_BUCKET:
        fuzz_bucket(p, n);
        break;
    default:
        fuzz_search(p, n, data[0] % C_N == C_SEARCH_AUX);
        break;
    }
    return 0;
}

#ifndef CDX_LIBFUZZER

/* One seed: the selector byte, then b. */
static int seed(const char *dir, const char *name, int sel, const eng_buf *b)
{
    const uint8_t s = (uint8_t)sel;
    return eng_buf_ok(b) ? fuzz_seed_sel(dir, name, &s, 1, b->data, b->len) : -1;
}

int fuzz_write_seeds(const char *dir)
{
    int rc = 0;
    eng_buf b;

    eng_catentry c = {.state = ENG_ST_READY,
                      .dim = 8,
                      .metric = 1,
                      .type = 1,
                      .n_lists = 16,
                      .has_kcv = 1,
                      .owned = 1,
                      .created_ms = 1700000000000ull};
    strcpy(c.name, "docs");
    memset(c.id, 0xa5, sizeof(c.id));
    memset(c.kcv, 0x5a, sizeof(c.kcv));
    eng_buf_init(&b);
    eng_cat_encode(&c, &b);
    rc |= seed(dir, "catalog", C_CAT, &b);
    eng_buf_free(&b);

    eng_head h = {.version = 7, .manifest_len = 2048, .write_time = 1700000000000ull};
    memset(h.manifest_token, 0x11, sizeof(h.manifest_token));
    eng_buf_init(&b);
    eng_head_encode(&h, &b);
    rc |= seed(dir, "head", C_HEAD, &b);
    eng_buf_free(&b);

    /* A trained manifest: 2 clusters, 3 segments, a retired token, some buckets. */
    eng_manifest *m = calloc(1, sizeof(*m));
    if (!m)
        return -1;
    m->version = 9;
    m->dim = 8;
    m->metric = 1;
    m->type = 1;
    m->n_lists = 2;
    m->n_clusters = 2;
    m->train_gen = 1;
    m->centroids_version = 5;
    m->centroids_len = 64;
    m->count = 30;
    m->bucket_version[0] = 3;
    m->bucket_version[200] = 9;
    m->clusters = calloc(2, sizeof(eng_cluster));
    if (!m->clusters)
        return -1;
    for (uint32_t i = 0; i < 3; i++) {
        eng_segref s = {
            .version = 4 + i, .rows = 10, .search_len = 400, .vectors_len = 380, .meta_len = 90};
        memset(s.token, (int)(0x20 + i), sizeof(s.token));
        memset(s.salt, (int)(0x30 + i), sizeof(s.salt));
        rc |= eng_cluster_push(&m->clusters[i % 2], &s) ? -1 : 0;
    }
    uint8_t rt[ENG_TOKEN_LEN];
    memset(rt, 0x77, sizeof(rt));
    rc |= eng_retire(m, rt, 1700000000000ull) ? -1 : 0;
    eng_buf_init(&b);
    eng_manifest_encode(m, &b);
    rc |= seed(dir, "manifest", C_MANIFEST, &b);
    eng_buf_free(&b);
    /* Untrained: one pseudo-cluster, no segments. */
    free(m->clusters[1].seg);
    m->clusters[1] = (eng_cluster){0};
    m->n_clusters = 0;
    eng_buf_init(&b);
    eng_manifest_encode(m, &b);
    rc |= seed(dir, "manifest_untrained", C_MANIFEST, &b);
    eng_buf_free(&b);
    eng_manifest_free(m);

    eng_bucket bk = {0};
    for (int i = 0; i < 3; i++) {
        eng_ident e = {.cluster = (uint32_t)i,
                       .row = (uint32_t)(i * 2),
                       .commit_version = 4,
                       .content_len = i == 1 ? 33 : 0,
                       .id_len = 6};
        memset(e.tok, 0x40 + i, sizeof(e.tok));
        memset(e.seg, 0x20 + i, sizeof(e.seg));
        if (i == 1)
            memset(e.content, 0x66, sizeof(e.content));
        e.id = malloc(8);
        if (!e.id)
            return -1;
        snprintf(e.id, 8, "item-%d", i);
        rc |= eng_bucket_put(&bk, &e) ? -1 : 0;
    }
    eng_buf_init(&b);
    eng_bucket_encode(&bk, &b);
    rc |= seed(dir, "bucket", C_BUCKET, &b);
    eng_buf_free(&b);
    eng_bucket_free(&bk);
    eng_buf_init(&b);
    eng_buf_u32(&b, 0);
    rc |= seed(dir, "bucket_empty", C_BUCKET, &b);
    eng_buf_free(&b);

    /* Search blocks: 3 rows of 8-byte codes, ids, a tombstone; with and without aux. */
    static const uint8_t codes[24] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    static const float aux[6] = {1, 0.5f, 2, 0.25f, 3, 0};
    static const char *const ids[3] = {"a", "bb", "item-3"};
    static const uint16_t lens[3] = {1, 2, 6};
    eng_tomb t = {.row = 2};
    memset(t.seg, 0x21, sizeof(t.seg));
    eng_buf_init(&b);
    rc |= eng_search_encode(&b, 3, 8, codes, NULL, false, ids, lens, &t, 1) ? 0 : -1;
    rc |= seed(dir, "search", C_SEARCH, &b);
    eng_buf_free(&b);
    eng_buf_init(&b);
    rc |= eng_search_encode(&b, 3, 8, codes, aux, true, ids, lens, NULL, 0) ? 0 : -1;
    rc |= seed(dir, "search_aux", C_SEARCH_AUX, &b);
    eng_buf_free(&b);

    /* Hostile shapes: huge counts, nothing at all. */
    static const uint8_t huge[] = {0xff, 0xff, 0xff, 0xff, 0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff};
    for (int sel = 0; sel < C_N; sel++) {
        char name[32];
        eng_buf_init(&b);
        eng_buf_put(&b, huge, sizeof(huge));
        snprintf(name, sizeof(name), "huge_%d", sel);
        rc |= seed(dir, name, sel, &b);
        eng_buf_free(&b);
        eng_buf_init(&b);
        snprintf(name, sizeof(name), "empty_%d", sel);
        rc |= seed(dir, name, sel, &b);
        eng_buf_free(&b);
    }
    return rc ? -1 : 0;
}

#endif
