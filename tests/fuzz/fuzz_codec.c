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

/* ---- the codecs under test ---- */
#include "eng_catalog.h"
#include "eng_head.h"
#include "eng_idmap.h"
#include "eng_manifest.h"
#include "eng_segment.h"

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

/* A decoded value of one of the codecs below. */
typedef union value {
    eng_catentry cat;
    eng_head head;
    eng_manifest *manifest;
    eng_bucket bucket;
} value;

/* The codec of kind k (C_CAT..C_BUCKET) on a value. */
static cdx_err decode(int k, const uint8_t *p, size_t n, value *v)
{
    switch (k) {
    case C_CAT:
        return eng_cat_decode(p, n, &v->cat);
    case C_HEAD:
        return eng_head_decode(p, n, &v->head);
    case C_MANIFEST:
        return eng_manifest_decode(p, n, &v->manifest); /* *out untouched on error */
    default:
        return eng_bucket_decode(p, n, &v->bucket);
    }
}

static void encode(int k, const value *v, eng_buf *b)
{
    switch (k) {
    case C_CAT:
        eng_cat_encode(&v->cat, b);
        break;
    case C_HEAD:
        eng_head_encode(&v->head, b);
        break;
    case C_MANIFEST:
        eng_manifest_encode(v->manifest, b);
        break;
    default:
        eng_bucket_encode(&v->bucket, b);
        if (b->len != eng_bucket_encoded_len(&v->bucket)) /* as long as it says */
            abort();
        break;
    }
}

/* Also after a failed decode. */
static void release(int k, value *v)
{
    if (k == C_MANIFEST)
        eng_manifest_free(v->manifest);
    else if (k == C_BUCKET)
        eng_bucket_free(&v->bucket);
}

/* Decode p[0..n) with codec k: an acceptable failure, or a value whose
 * encoding decodes again to a value with the same encoding. */
static void round_trip(int k, const uint8_t *p, size_t n)
{
    value v1, v2;
    memset(&v1, 0, sizeof(v1));
    memset(&v2, 0, sizeof(v2));
    cdx_err e = decode(k, p, n, &v1);
    if (e) {
        if (!ok_failure(e))
            abort();
        release(k, &v1);
        return;
    }
    eng_buf b1, b2;
    eng_buf_init(&b1);
    eng_buf_init(&b2);
    encode(k, &v1, &b1);
    if (decode(k, b1.data, b1.len, &v2) != CDX_OK)
        abort();
    encode(k, &v2, &b2);
    same(&b1, &b2);
    release(k, &v1);
    release(k, &v2);
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
    int sel = data[0] % C_N;
    if (sel < C_SEARCH)
        round_trip(sel, data + 1, size - 1);
    else
        fuzz_search(data + 1, size - 1, sel == C_SEARCH_AUX);
    return 0;
}

#ifndef CDX_LIBFUZZER

/* One seed: the selector byte, then b. */
static int seed(const char *dir, const char *name, int sel, const eng_buf *b)
{
    const uint8_t s = (uint8_t)sel;
    return eng_buf_ok(b) ? fuzz_seed_sel(dir, name, &s, 1, b->data, b->len) : -1;
}

/* One seed: the selector byte k, then v encoded with codec k. */
static int seed_value(const char *dir, const char *name, int k, const value *v)
{
    eng_buf b;
    eng_buf_init(&b);
    encode(k, v, &b);
    int rc = seed(dir, name, k, &b);
    eng_buf_free(&b);
    return rc;
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
    rc |= seed_value(dir, "catalog", C_CAT, &(value){.cat = c});

    eng_head h = {.version = 7, .manifest_len = 2048, .write_time = 1700000000000ull};
    memset(h.manifest_token, 0x11, sizeof(h.manifest_token));
    rc |= seed_value(dir, "head", C_HEAD, &(value){.head = h});

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
    rc |= seed_value(dir, "manifest", C_MANIFEST, &(value){.manifest = m});
    /* Untrained: one pseudo-cluster, no segments. */
    free(m->clusters[1].seg);
    m->clusters[1] = (eng_cluster){0};
    m->n_clusters = 0;
    rc |= seed_value(dir, "manifest_untrained", C_MANIFEST, &(value){.manifest = m});
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
    rc |= seed_value(dir, "bucket", C_BUCKET, &(value){.bucket = bk});
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
