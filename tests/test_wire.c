/*
 * test_wire.c - request validation (proto/wire_msg.h, wire_alloc.h): the
 * unpack budget, invalid protobuf and bodies, text fields (NUL, UTF-8),
 * lengths and counts at and over every limit. Round trips and the Python
 * client are test_wire_roundtrip.c; frames are test_frame.c.
 */
#include <math.h>
#include <stdalign.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>

#include "cdx_err.h"
#include "cdx_limits.h"
#include "cdx_time.h"
#include "fx_cunit.h"
#include "fx_wire.h"
#include "wire_alloc.h"
#include "wire_msg.h"

/* ---- helpers ------------------------------------------------------------ */

/* Unpack a serialized Request; expect `code` and a detail containing `needle`. */
static void expect_req(const uint8_t *b, size_t len, size_t budget, cdx_err code,
                       const char *needle)
{
    wire_request *r = (wire_request *)1;
    cdx_err_clear();
    cdx_err err = wire_request_unpack(b, len, budget, &r);
    if (err != code)
        printf("\n  expected %s, got %s: %s\n", cdx_err_name(code), cdx_err_name(err),
               cdx_err_detail());
    CU_ASSERT_EQUAL(err, code);
    if (code) {
        CU_ASSERT_PTR_NULL(r);
        if (needle)
            CU_ASSERT_TRUE(fx_detail_has(needle));
    }
    wire_request_free(err ? NULL : r);
}

static void expect_msg(const Cipherdex__V1__Request *req, cdx_err code, const char *needle)
{
    size_t len;
    uint8_t *b = fx_pb_pack(&req->base, &len);
    expect_req(b, len, 0, code, needle);
    free(b);
}

/* ---- budget ------------------------------------------------------------- */

static size_t put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    do {
        p[n++] = (uint8_t)((v & 0x7F) | (v > 0x7F ? 0x80 : 0));
        v >>= 7;
    } while (v);
    return n;
}

/* Request{request_id = 77, upsert = {index = "x", items = n x empty Item}}. */
static uint8_t *million_items(size_t n, size_t *len)
{
    size_t inner = 3 + 2 * n;
    uint8_t *b = malloc(inner + 32);
    CU_ASSERT_FATAL(b != NULL);
    size_t off = 0;
    b[off++] = 0x08; /* field 1, varint */
    off += put_varint(b + off, 77);
    off += put_varint(b + off, 16 << 3 | 2); /* upsert */
    off += put_varint(b + off, inner);
    b[off++] = 0x0A; /* index */
    b[off++] = 1;
    b[off++] = 'x';
    for (size_t i = 0; i < n; i++) {
        b[off++] = 0x12; /* items, length 0 */
        b[off++] = 0;
    }
    *len = off;
    return b;
}

static void test_budget_million_items(void)
{
    size_t len;
    uint8_t *b = million_items(1000000, &len);
    size_t budget = wire_unpack_budget(len);

    double t0 = cdx_mono_s();
    expect_req(b, len, 0, CDX_ERR_RESOURCE_EXHAUSTED, "memory budget");
    double dt = cdx_mono_s() - t0;
    printf("  %zu-byte frame, budget %zu: refused in %.1f ms\n", len, budget, dt * 1e3);
    CU_ASSERT_TRUE(dt < 2.0);
    CU_ASSERT_EQUAL(wire_peek_request_id(b, len), 77); /* the error can still echo it */

    /* Directly: the allocator never holds more than the budget. */
    wire_alloc *a;
    CU_ASSERT_EQUAL_FATAL(wire_alloc_new(budget, &a), CDX_OK);
    ProtobufCMessage *m =
        protobuf_c_message_unpack(&cipherdex__v1__request__descriptor, wire_alloc_pb(a), len, b);
    CU_ASSERT_PTR_NULL(m);
    CU_ASSERT_TRUE(wire_alloc_over_budget(a));
    CU_ASSERT_TRUE(wire_alloc_peak(a) <= budget);
    printf("  peak %zu bytes in %zu allocations\n", wire_alloc_peak(a), wire_alloc_count(a));
    wire_alloc_free(a);

    /* With a budget large enough it decodes, and shows why the budget is needed. */
    size_t small = 20000;
    free(b);
    b = million_items(small, &len);
    CU_ASSERT_EQUAL_FATAL(wire_alloc_new(SIZE_MAX / 2, &a), CDX_OK);
    m = protobuf_c_message_unpack(&cipherdex__v1__request__descriptor, wire_alloc_pb(a), len, b);
    CU_ASSERT_PTR_NOT_NULL(m);
    printf("  %zu empty items: a %zu-byte frame peaks at %zu bytes (%.0fx)\n", small, len,
           wire_alloc_peak(a), (double)wire_alloc_peak(a) / (double)len);
    wire_alloc_free(a);
    /* ...and then fails validation: items need an id and a vector. */
    expect_req(b, len, SIZE_MAX / 2, CDX_ERR_INVALID_ARGUMENT, "upsert.items[0].id: empty");
    free(b);
}

/* Budget accounting: frees are counted, the arena releases what is left. */
static void test_alloc_accounting(void)
{
    wire_alloc *a;
    CU_ASSERT_EQUAL(wire_alloc_new(0, &a), CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL_FATAL(wire_alloc_new(1000, &a), CDX_OK);
    ProtobufCAllocator *pa = wire_alloc_pb(a);
    size_t ov = wire_alloc_overhead();
    uint8_t *p1 = pa->alloc(pa->allocator_data, 100);
    uint8_t *p2 = pa->alloc(pa->allocator_data, 200);
    CU_ASSERT_FATAL(p1 && p2);
    CU_ASSERT_EQUAL((uintptr_t)p1 % 8, 0);
    CU_ASSERT_EQUAL(p1[100], 0); /* the terminator */
    memset(p1, 'a', 100);
    CU_ASSERT_EQUAL(wire_alloc_used(a), 300 + 2 * ov);
    CU_ASSERT_EQUAL(wire_alloc_blocks(a), 2);
    CU_ASSERT_PTR_NULL(pa->alloc(pa->allocator_data, 1000)); /* over budget */
    CU_ASSERT_TRUE(wire_alloc_over_budget(a));
    CU_ASSERT_PTR_NULL(pa->alloc(pa->allocator_data, SIZE_MAX)); /* no overflow */
    pa->free(pa->allocator_data, p1);
    pa->free(pa->allocator_data, NULL);
    CU_ASSERT_EQUAL(wire_alloc_used(a), 200 + ov);
    CU_ASSERT_EQUAL(wire_alloc_blocks(a), 1);
    CU_ASSERT_EQUAL(wire_alloc_peak(a), 300 + 2 * ov);
    CU_ASSERT_EQUAL(wire_alloc_count(a), 2);
    wire_alloc_free(a); /* p2 still live: freed here (ASan checks) */
    wire_alloc_free(NULL);
    CU_ASSERT_EQUAL(wire_unpack_budget(1000), 4000 + CDX_UNPACK_BUDGET_SLACK);
    CU_ASSERT_EQUAL(wire_unpack_budget(SIZE_MAX), SIZE_MAX);
}

/* Realistic upserts fit the budget comfortably; report the ratios. */
static void test_budget_realistic(void)
{
    static const size_t dims[] = {8, 16, 128, 768};
    for (size_t k = 0; k < sizeof(dims) / sizeof(dims[0]); k++) {
        size_t n = dims[k] <= 16 ? 50000 : 2000, dim = dims[k];
        Cipherdex__V1__Item *items = calloc(n, sizeof(*items));
        Cipherdex__V1__Item **ptrs = calloc(n, sizeof(*ptrs));
        float *vec = calloc(dim, sizeof(float));
        char(*ids)[24] = calloc(n, 24);
        CU_ASSERT_FATAL(items && ptrs && vec && ids);
        for (size_t i = 0; i < dim; i++)
            vec[i] = (float)i * 0.5f;
        for (size_t i = 0; i < n; i++) {
            cipherdex__v1__item__init(&items[i]);
            snprintf(ids[i], 24, "doc-%zu", i);
            items[i].id = wire_str(ids[i]);
            items[i].n_vector = dim;
            items[i].vector = vec;
            items[i].metadata = wire_str("{\"k\":1}");
            ptrs[i] = &items[i];
        }
        Cipherdex__V1__UpsertRequest up = CIPHERDEX__V1__UPSERT_REQUEST__INIT;
        up.index = wire_str("docs");
        up.n_items = n;
        up.items = ptrs;
        Cipherdex__V1__Request req = CIPHERDEX__V1__REQUEST__INIT;
        req.body_case = CIPHERDEX__V1__REQUEST__BODY_UPSERT;
        req.upsert = &up;
        size_t len;
        uint8_t *b = fx_pb_pack(&req.base, &len);
        wire_alloc *a;
        CU_ASSERT_FATAL(wire_alloc_new(SIZE_MAX / 2, &a) == CDX_OK);
        ProtobufCMessage *m = protobuf_c_message_unpack(&cipherdex__v1__request__descriptor,
                                                        wire_alloc_pb(a), len, b);
        CU_ASSERT_PTR_NOT_NULL(m);
        double ratio = (double)wire_alloc_peak(a) / (double)len;
        printf("  %zu items of dim %zu: frame %zu bytes, peak %zu (%.2fx)\n", n, dim, len,
               wire_alloc_peak(a), ratio);
        wire_alloc_free(a);
        if (dim >= 16)
            expect_req(b, len, 0, CDX_OK, NULL);
        free(b);
        free(items);
        free(ptrs);
        free(vec);
        free(ids);
    }
}

/* ---- invalid protobuf, bodies ------------------------------------------- */

static void test_invalid_protobuf(void)
{
    static const struct {
        const char *b;
        size_t n;
    } rows[] = {
        {"\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF", 11}, /* endless varint */
        {"\x08", 1},                                          /* truncated varint */
        {"\x0A\x05"
         "ab",
         4}, /* request_id as length-delimited */
        {"\x82\x01\x10"
         "abc",
         6},                         /* body longer than the frame */
        {"\x82\x01\x02\x0A\xFF", 5}, /* nested length past its end */
        {"\x0B\x00", 2},             /* wire type 3 (groups) */
        {"\x00\x00", 2},             /* field number 0 */
        {"garbage that is not protobuf at all", 35},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        expect_req((const uint8_t *)rows[i].b, rows[i].n, 0, CDX_ERR_INVALID_ARGUMENT,
                   "not a valid protobuf Request");
    /* Field number 0 in a two-byte tag: protobuf-c keeps it as unknown; we refuse it. */
    expect_req((const uint8_t *)"\x85\x00RRRR\x52\x00", 8, 0, CDX_ERR_INVALID_ARGUMENT,
               "request: field number 0");
    expect_req((const uint8_t *)"\x52\x06\x85\x00RRRR", 8, 0, CDX_ERR_INVALID_ARGUMENT,
               "health: field number 0");
}

static void test_bodies(void)
{
    /* Empty frame and request_id only: no body. */
    expect_req(NULL, 0, 0, CDX_ERR_INVALID_ARGUMENT, "no body");
    expect_req((const uint8_t *)"\x08\x05", 2, 0, CDX_ERR_INVALID_ARGUMENT, "no body");
    CU_ASSERT_EQUAL(wire_peek_request_id((const uint8_t *)"\x08\x05", 2), 5);
    /* A body from the future (field 99) and an unknown low field. */
    expect_req((const uint8_t *)"\x08\x05\x9A\x06\x00", 5, 0, CDX_ERR_INVALID_ARGUMENT, "field 99");
    expect_req((const uint8_t *)"\x18\x01", 2, 0, CDX_ERR_INVALID_ARGUMENT, "no body");
    /* Every known body with its defaults: health and list_indexes are fine as they are. */
    Cipherdex__V1__HealthRequest h = CIPHERDEX__V1__HEALTH_REQUEST__INIT;
    Cipherdex__V1__Request req = CIPHERDEX__V1__REQUEST__INIT;
    req.body_case = CIPHERDEX__V1__REQUEST__BODY_HEALTH;
    req.health = &h;
    expect_msg(&req, CDX_OK, NULL);
    CU_ASSERT_STRING_EQUAL(wire_body_name(&req), "health");
    /* Unknown fields inside a body are ignored (forward compatibility). */
    expect_req((const uint8_t *)"\x52\x03\xA0\x06\x01", 5, 0, CDX_OK, NULL);
}

/* ---- text fields: NUL and invalid UTF-8 everywhere ---------------------- */

enum {
    F_CREATE_NAME,
    F_CREATE_METRIC,
    F_CREATE_TYPE,
    F_KEK_NAME,
    F_DESCRIBE_NAME,
    F_DELETE_INDEX_NAME,
    F_TRAIN_INDEX,
    F_UPSERT_INDEX,
    F_ITEM_ID,
    F_ITEM_METADATA,
    F_QUERY_INDEX,
    F_QUERY_FILTER,
    F_GET_INDEX,
    F_GET_ID,
    F_DELETE_INDEX,
    F_DELETE_ID,
    F_LIST_INDEX,
    F_LIST_CURSOR,
    F_COUNT
};

static const char *const field_paths[F_COUNT] = {
    "create_index.name",
    "create_index.metric",
    "create_index.index_type",
    "create_index.unwrap_key.kek_name",
    "describe_index.name",
    "delete_index.name",
    "train.index",
    "upsert.index",
    "upsert.items[1].id",
    "upsert.items[1].metadata",
    "query.index",
    "query.filter",
    "get.index",
    "get.ids[2]",
    "delete.index",
    "delete.ids[2]",
    "list_ids.index",
    "list_ids.cursor",
};

/* Pack a valid request of the kind `f` belongs to, with field f set to v. */
static uint8_t *build_with(int f, ProtobufCBinaryData v, size_t *len)
{
    Cipherdex__V1__Request req = CIPHERDEX__V1__REQUEST__INIT;
    Cipherdex__V1__CreateIndexRequest ci = CIPHERDEX__V1__CREATE_INDEX_REQUEST__INIT;
    Cipherdex__V1__UnwrapKey uk = CIPHERDEX__V1__UNWRAP_KEY__INIT;
    Cipherdex__V1__DescribeIndexRequest di = CIPHERDEX__V1__DESCRIBE_INDEX_REQUEST__INIT;
    Cipherdex__V1__DeleteIndexRequest dl = CIPHERDEX__V1__DELETE_INDEX_REQUEST__INIT;
    Cipherdex__V1__TrainRequest tr = CIPHERDEX__V1__TRAIN_REQUEST__INIT;
    Cipherdex__V1__UpsertRequest up = CIPHERDEX__V1__UPSERT_REQUEST__INIT;
    Cipherdex__V1__Item it[3], *itp[3];
    Cipherdex__V1__QueryRequest q = CIPHERDEX__V1__QUERY_REQUEST__INIT;
    Cipherdex__V1__GetRequest g = CIPHERDEX__V1__GET_REQUEST__INIT;
    Cipherdex__V1__DeleteRequest de = CIPHERDEX__V1__DELETE_REQUEST__INIT;
    Cipherdex__V1__ListIdsRequest li = CIPHERDEX__V1__LIST_IDS_REQUEST__INIT;
    ProtobufCBinaryData ids[3] = {wire_str("a"), wire_str("b"), wire_str("c")};

    req.request_id = 42;
    switch (f) {
    case F_CREATE_NAME:
    case F_CREATE_METRIC:
    case F_CREATE_TYPE:
    case F_KEK_NAME:
        ci.name = f == F_CREATE_NAME ? v : wire_str("docs");
        ci.metric = f == F_CREATE_METRIC ? v : wire_str("cosine");
        ci.index_type = f == F_CREATE_TYPE ? v : wire_str("ivfflat");
        ci.dimension = 4;
        uk.kek_name = f == F_KEK_NAME ? v : wire_str("kek1");
        uk.wrapped_key = wire_bin(fx_wrapped40, 40);
        ci.key_source_case = CIPHERDEX__V1__CREATE_INDEX_REQUEST__KEY_SOURCE_UNWRAP_KEY;
        ci.unwrap_key = &uk;
        req.body_case = CIPHERDEX__V1__REQUEST__BODY_CREATE_INDEX;
        req.create_index = &ci;
        break;
    case F_DESCRIBE_NAME:
        di.name = v;
        req.body_case = CIPHERDEX__V1__REQUEST__BODY_DESCRIBE_INDEX;
        req.describe_index = &di;
        break;
    case F_DELETE_INDEX_NAME:
        dl.name = v;
        dl.confirm_id = wire_bin(fx_id16, 16);
        req.body_case = CIPHERDEX__V1__REQUEST__BODY_DELETE_INDEX;
        req.delete_index = &dl;
        break;
    case F_TRAIN_INDEX:
        tr.index = v;
        req.body_case = CIPHERDEX__V1__REQUEST__BODY_TRAIN;
        req.train = &tr;
        break;
    case F_UPSERT_INDEX:
    case F_ITEM_ID:
    case F_ITEM_METADATA:
        for (int i = 0; i < 3; i++) {
            cipherdex__v1__item__init(&it[i]);
            it[i].id = ids[i];
            it[i].n_vector = 4;
            it[i].vector = (float *)fx_vec4;
            it[i].metadata = wire_str("{\"a\":1}");
            it[i].contents = wire_bin("\0\xFF", 2); /* contents are bytes: anything goes */
            itp[i] = &it[i];
        }
        if (f == F_ITEM_ID)
            it[1].id = v;
        if (f == F_ITEM_METADATA)
            it[1].metadata = v;
        up.index = f == F_UPSERT_INDEX ? v : wire_str("docs");
        up.n_items = 3;
        up.items = itp;
        req.body_case = CIPHERDEX__V1__REQUEST__BODY_UPSERT;
        req.upsert = &up;
        break;
    case F_QUERY_INDEX:
    case F_QUERY_FILTER:
        q.index = f == F_QUERY_INDEX ? v : wire_str("docs");
        q.filter = f == F_QUERY_FILTER ? v : wire_str("{\"a\":1}");
        q.n_vectors = 4;
        q.vectors = (float *)fx_vec4;
        req.body_case = CIPHERDEX__V1__REQUEST__BODY_QUERY;
        req.query = &q;
        break;
    case F_GET_INDEX:
    case F_GET_ID:
        g.index = f == F_GET_INDEX ? v : wire_str("docs");
        if (f == F_GET_ID)
            ids[2] = v;
        g.n_ids = 3;
        g.ids = ids;
        req.body_case = CIPHERDEX__V1__REQUEST__BODY_GET;
        req.get = &g;
        break;
    case F_DELETE_INDEX:
    case F_DELETE_ID:
        de.index = f == F_DELETE_INDEX ? v : wire_str("docs");
        if (f == F_DELETE_ID)
            ids[2] = v;
        de.n_ids = 3;
        de.ids = ids;
        req.body_case = CIPHERDEX__V1__REQUEST__BODY_DELETE;
        req.delete_ = &de;
        break;
    case F_LIST_INDEX:
    case F_LIST_CURSOR:
        li.index = f == F_LIST_INDEX ? v : wire_str("docs");
        li.cursor = f == F_LIST_CURSOR ? v : wire_str("00ff");
        req.body_case = CIPHERDEX__V1__REQUEST__BODY_LIST_IDS;
        req.list_ids = &li;
        break;
    }
    return fx_pb_pack(&req.base, len);
}

static void test_text_fields(void)
{
    static const struct {
        const char *s;
        size_t n;
        const char *why;
    } bad[] = {
        {"a\0b", 3, "NUL byte at offset 1"},
        {"\0", 1, "NUL byte at offset 0"},
        {"ab\xC0\xAF", 4, "at byte 2 (overlong encoding)"},
        {"\xE0\x80\xAF", 3, "at byte 0 (overlong encoding)"},
        {"\xF0\x82\x82\xAC", 4, "at byte 0 (overlong encoding)"},
        {"x\xED\xA0\x80", 4, "at byte 1 (surrogate)"},
        {"\xED\xBF\xBF", 3, "at byte 0 (surrogate)"},
        {"abc\xE2\x82", 5, "at byte 3 (truncated sequence)"},
        {"\xF0\x9F\x98", 3, "at byte 0 (truncated sequence)"},
        {"\xC3", 1, "at byte 0 (truncated sequence)"},
        {"\x80", 1, "at byte 0 (unexpected continuation byte)"},
        {"\xF4\x90\x80\x80", 4, "at byte 0 (code point above U+10FFFF)"},
        {"\xFE", 1, "at byte 0 (code point above U+10FFFF)"},
    };
    char want[160];
    size_t checked = 0;

    for (int f = 0; f < F_COUNT; f++) {
        size_t len;
        /* Positive control: valid multi-byte text passes ("é€😀" is also a fine cursor here). */
        uint8_t *b = build_with(f, wire_str("d\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80"), &len);
        expect_req(b, len, 0, CDX_OK, NULL);
        free(b);
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            b = build_with(f, wire_bin(bad[i].s, bad[i].n), &len);
            snprintf(want, sizeof(want), "%s: %s%s", field_paths[f],
                     strncmp(bad[i].why, "NUL", 3) ? "invalid UTF-8 " : "", bad[i].why);
            expect_req(b, len, 0, CDX_ERR_INVALID_ARGUMENT, want);
            free(b);
            checked++;
        }
    }
    printf("  %zu bad strings in %d fields refused\n", checked, F_COUNT);
}

/* The server's text fields come out NUL-terminated (wire_text). */
static void test_text_terminated(void)
{
    size_t len;
    uint8_t *b = build_with(F_ITEM_ID, wire_str("some-id"), &len);
    wire_request *r;
    CU_ASSERT_EQUAL_FATAL(wire_request_unpack(b, len, 0, &r), CDX_OK);
    const Cipherdex__V1__UpsertRequest *up = wire_request_msg(r)->upsert;
    CU_ASSERT_STRING_EQUAL(wire_text(up->index), "docs");
    CU_ASSERT_STRING_EQUAL(wire_text(up->items[1]->id), "some-id");
    CU_ASSERT_STRING_EQUAL(wire_text(up->items[1]->metadata), "{\"a\":1}");
    CU_ASSERT_EQUAL(up->items[0]->contents.len, 2);
    CU_ASSERT_EQUAL(up->items[0]->contents.data[1], 0xFF);
    CU_ASSERT_TRUE(wire_request_mem(r) > len);
    wire_request_free(r);
    wire_request_free(NULL);
    free(b);
}

/* ---- limits ------------------------------------------------------------- */

static ProtobufCBinaryData filled(size_t n, char c)
{
    char *p = malloc(n ? n : 1);
    CU_ASSERT_FATAL(p != NULL);
    memset(p, c, n);
    return wire_bin(p, n);
}

static void expect_field(int f, size_t n, const char *needle)
{
    size_t len;
    ProtobufCBinaryData v = filled(n, 'a');
    uint8_t *b = build_with(f, v, &len);
    expect_req(b, len, SIZE_MAX / 2, needle ? CDX_ERR_INVALID_ARGUMENT : CDX_OK, needle);
    free(b);
    free(v.data);
}

static void test_lengths(void)
{
    expect_field(F_CREATE_NAME, CDX_INDEX_NAME_MAX, NULL);
    expect_field(F_CREATE_NAME, CDX_INDEX_NAME_MAX + 1,
                 "create_index.name: 129 bytes exceed the limit of 128");
    expect_field(F_CREATE_NAME, 0, "create_index.name: empty (required)");
    expect_field(F_CREATE_METRIC, 0, "create_index.metric: empty (required)");
    expect_field(F_KEK_NAME, CDX_KEK_NAME_MAX + 1, "create_index.unwrap_key.kek_name: 41 bytes");
    expect_field(F_UPSERT_INDEX, 0, "upsert.index: empty (required)");
    expect_field(F_ITEM_ID, CDX_ITEM_ID_MAX, NULL);
    expect_field(F_ITEM_ID, CDX_ITEM_ID_MAX + 1, "upsert.items[1].id: 257 bytes exceed");
    expect_field(F_ITEM_ID, 0, "upsert.items[1].id: empty (required)");
    expect_field(F_ITEM_METADATA, CDX_METADATA_MAX, NULL);
    expect_field(F_ITEM_METADATA, CDX_METADATA_MAX + 1, "upsert.items[1].metadata: 65537 bytes");
    expect_field(F_QUERY_FILTER, CDX_FILTER_TEXT_MAX + 1, "query.filter: 65537 bytes");
    expect_field(F_GET_ID, CDX_ITEM_ID_MAX + 1, "get.ids[2]: 257 bytes");
    expect_field(F_DELETE_ID, 0, "delete.ids[2]: empty (required)");
    expect_field(F_LIST_CURSOR, CDX_CURSOR_MAX, NULL);
    expect_field(F_LIST_CURSOR, CDX_CURSOR_MAX + 1, "list_ids.cursor: 513 bytes");
    expect_field(F_DESCRIBE_NAME, 0, "describe_index.name: empty");
    expect_field(F_TRAIN_INDEX, 0, "train.index: empty");
}

static void expect_big(const fx_reqs *r, cdx_err code, const char *needle)
{
    size_t len;
    uint8_t *b = fx_pb_pack(&r->req.base, &len);
    expect_req(b, len, SIZE_MAX / 2, code, needle);
    free(b);
}

static void test_counts(void)
{
    fx_reqs r;
    size_t n = CDX_UPSERT_BATCH_MAX + 1;
    Cipherdex__V1__Item *items = calloc(n, sizeof(*items));
    Cipherdex__V1__Item **ptrs = calloc(n, sizeof(*ptrs));
    ProtobufCBinaryData *ids = calloc(CDX_GET_BATCH_MAX + 1, sizeof(*ids));
    float *big = calloc(CDX_DIM_MAX + 1, sizeof(float));
    char(*idtext)[12] = calloc(n, 12);
    CU_ASSERT_FATAL(items && ptrs && ids && big && idtext);

    for (size_t i = 0; i < n; i++) {
        cipherdex__v1__item__init(&items[i]);
        snprintf(idtext[i], 12, "%zu", i);
        items[i].id = wire_str(idtext[i]);
        items[i].n_vector = 1;
        items[i].vector = big;
        ptrs[i] = &items[i];
    }
    for (size_t i = 0; i <= CDX_GET_BATCH_MAX; i++)
        ids[i] = wire_str("x");

    /* upsert: items per batch, vector dims, empty batch, empty vector, non-finite values */
    fx_reqs_init(&r, CIPHERDEX__V1__REQUEST__BODY_UPSERT);
    r.up.items = ptrs;
    r.up.n_items = CDX_UPSERT_BATCH_MAX;
    expect_big(&r, CDX_OK, NULL);
    r.up.n_items = n;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT,
               "upsert.items: 100001 entries exceed the limit of "
               "100000");
    r.up.n_items = 0;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "upsert.items: empty (required)");
    r.up.n_items = 3;
    items[2].n_vector = CDX_DIM_MAX + 1;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "upsert.items[2].vector: 4097 entries exceed");
    items[2].n_vector = CDX_DIM_MAX;
    expect_big(&r, CDX_OK, NULL);
    items[2].n_vector = 0;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "upsert.items[2].vector: empty (required)");
    items[2].n_vector = 4;
    big[3] = NAN;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "upsert.items[2].vector: value 3 is not finite");
    big[3] = INFINITY;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "upsert.items[2].vector: value 3 is not finite");
    big[3] = 0;
    ProtobufCBinaryData huge = filled(CDX_CONTENTS_MAX + 1, 'c');
    items[1].contents = huge;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "upsert.items[1].contents: 16777217 bytes exceed");
    items[1].contents.len = CDX_CONTENTS_MAX;
    expect_big(&r, CDX_OK, NULL);
    items[1].contents.len = 0;
    free(huge.data);

    /* get / delete: ids per request */
    fx_reqs_init(&r, CIPHERDEX__V1__REQUEST__BODY_GET);
    r.g.ids = ids;
    r.g.n_ids = CDX_GET_BATCH_MAX;
    expect_big(&r, CDX_OK, NULL);
    r.g.n_ids = CDX_GET_BATCH_MAX + 1;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "get.ids: 10001 entries exceed the limit of 10000");
    r.g.n_ids = 0;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "get.ids: empty (required)");
    fx_reqs_init(&r, CIPHERDEX__V1__REQUEST__BODY_DELETE);
    r.de.ids = ids;
    r.de.n_ids = CDX_GET_BATCH_MAX + 1;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "delete.ids: 10001 entries exceed");
    r.de.n_ids = 0;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "delete.ids: empty (required)");

    /* query: top_k, n_probes, vectors */
    fx_reqs_init(&r, CIPHERDEX__V1__REQUEST__BODY_QUERY);
    r.q.top_k = CDX_TOPK_MAX;
    r.q.n_probes = CDX_NLISTS_MAX;
    r.q.max_probes = CDX_NLISTS_MAX;
    expect_big(&r, CDX_OK, NULL);
    r.q.top_k = CDX_TOPK_MAX + 1;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "query.top_k: 1001 is out of range (0..1000)");
    r.q.top_k = 0;
    r.q.n_probes = CDX_NLISTS_MAX + 1;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "query.n_probes: 65537 is out of range");
    r.q.n_probes = 0;
    r.q.max_probes = CDX_NLISTS_MAX + 1;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "query.max_probes: 65537 is out of range");
    r.q.max_probes = 0;
    r.q.n_vectors = 0;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "query.vectors: empty (required)");
    r.q.n_vectors = 4;
    r.q.vectors = big;
    big[0] = -NAN;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "query.vectors: value 0 is not finite");
    big[0] = 0;

    /* create_index: dimension, n_lists, key sources */
    fx_reqs_init(&r, CIPHERDEX__V1__REQUEST__BODY_CREATE_INDEX);
    expect_big(&r, CDX_OK, NULL);
    r.ci.dimension = 0;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "create_index.dimension: 0 is out of range (1..4096)");
    r.ci.dimension = CDX_DIM_MAX + 1;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "create_index.dimension: 4097");
    r.ci.dimension = 4;
    r.ci.n_lists = CDX_NLISTS_MAX + 1;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "create_index.n_lists: 65537");
    r.ci.n_lists = 0;
    r.ci.key_source_case = CIPHERDEX__V1__CREATE_INDEX_REQUEST__KEY_SOURCE_ADOPT_KEY;
    r.ci.adopt_key = &r.ak;
    r.ak.key_id = wire_bin(fx_id16, 15);
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT,
               "create_index.adopt_key.key_id: must be exactly 16 bytes (got 15)");
    r.ak.key_id = wire_bin(fx_id16, 16);
    expect_big(&r, CDX_OK, NULL);
    r.ci.key_source_case = CIPHERDEX__V1__CREATE_INDEX_REQUEST__KEY_SOURCE_UNWRAP_KEY;
    r.ci.unwrap_key = &r.uk;
    r.uk.kek_name = wire_str("kek");
    r.uk.wrapped_key = wire_bin(fx_wrapped40, 39);
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT,
               "create_index.unwrap_key.wrapped_key: must be exactly 40 bytes (got 39)");
    r.uk.wrapped_key = wire_bin(fx_wrapped40, 40);
    r.uk.kek_name = wire_str("");
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "create_index.unwrap_key.kek_name: empty");

    /* delete_index confirmation */
    fx_reqs_init(&r, CIPHERDEX__V1__REQUEST__BODY_DELETE_INDEX);
    /* Absent passes the wire (the server answers FAILED_PRECONDITION: confirm with the id);
     * longer than an id does not. */
    r.dl.confirm_id = wire_bin(NULL, 0);
    expect_big(&r, CDX_OK, NULL);
    uint8_t id17[17] = {0};
    r.dl.confirm_id = wire_bin(id17, 17);
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "delete_index.confirm_id");

    /* train options */
    fx_reqs_init(&r, CIPHERDEX__V1__REQUEST__BODY_TRAIN);
    expect_big(&r, CDX_OK, NULL);
    r.tr.max_iters = CDX_TRAIN_ITERS_MAX + 1;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "train.max_iters: 1001");
    r.tr.max_iters = 0;
    r.tr.n_lists = CDX_NLISTS_MAX + 1;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "train.n_lists: 65537");
    r.tr.n_lists = 0;
    r.tr.max_points_per_list = CDX_TRAIN_POINTS_PER_LIST_MAX + 1;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "train.max_points_per_list: 4097");
    r.tr.max_points_per_list = 0;
    r.tr.tolerance = -1;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "train.tolerance: -1 is negative");
    r.tr.tolerance = NAN;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "train.tolerance: value 0 is not finite");

    /* list_ids page size */
    fx_reqs_init(&r, CIPHERDEX__V1__REQUEST__BODY_LIST_IDS);
    r.li.limit = CDX_LIST_PAGE_MAX;
    expect_big(&r, CDX_OK, NULL);
    r.li.limit = CDX_LIST_PAGE_MAX + 1;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "list_ids.limit: 10001 is out of range (0..10000)");

    /* accept_rollback: the index name is required; the version is the server's to check. */
    fx_reqs_init(&r, CIPHERDEX__V1__REQUEST__BODY_ACCEPT_ROLLBACK);
    expect_big(&r, CDX_OK, NULL);
    r.ar.index = wire_str("");
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "accept_rollback.index: empty (required)");

    free(items);
    free(ptrs);
    free(ids);
    free(big);
    free(idtext);
}

/* ---- main --------------------------------------------------------------- */

int main(void)
{
    static const fx_test tests[] = {
        {"allocator accounting", test_alloc_accounting},
        {"budget: million empty items", test_budget_million_items},
        {"budget: realistic upserts", test_budget_realistic},
        {"invalid protobuf", test_invalid_protobuf},
        {"bodies", test_bodies},
        {"text fields: NUL and UTF-8", test_text_fields},
        {"text fields terminated", test_text_terminated},
        {"lengths", test_lengths},
        {"counts and ranges", test_counts},
    };
    return fx_cunit_run1("wire", tests, FX_LEN(tests));
}
