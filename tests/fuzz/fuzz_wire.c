/*
 * fuzz_wire.c - fuzz target for the wire layer: frame decoder, budgeted
 * unpacking and validation of requests and responses.
 *
 * LLVMFuzzerTestOneInput treats its input as a byte stream from a peer: the
 * first byte picks a first chunk size, the rest goes through a decoder (1 MiB
 * cap, 64 KiB first frame) in chunks; every frame is unpacked as a Request
 * (and a valid one is re-packed, must unpack again and re-serialize
 * identically), and also as a Response. The whole input is unpacked directly
 * as well.
 *
 * Chunks start at the chosen size and double every FEED_DOUBLE_EVERY feeds:
 * splits still fall at every offset of the first bytes (headers, the start of
 * a body) and at varied offsets later, but a large input costs O(log n) feeds
 * instead of one per byte, which had cut the rate from 33 k to 4 k execs/s.
 * A stream is read up to its FRAMES_MAX-th frame.
 *
 * Built two ways (see tests/fuzz/fuzz_main.h):
 *  - by CMake with fuzz_main.c: `fuzz_wire [--seeds DIR] FILE|DIR...`;
 *  - for libFuzzer (clang 14, Debian libclang-rt-14-dev):
 *      clang -g -O1 -fsanitize=fuzzer,address,undefined -DCDX_LIBFUZZER \
 *        -Iproto -Ibuild/proto/gen tests/fuzz/fuzz_wire.c proto/wire_*.c proto/cdx_err.c \
 *        proto/cdx_utf8.c build/proto/gen/cipherdex.pb-c.c -lprotobuf-c -o fuzz_wire_lf
 *      ./fuzz_wire_lf -max_len=300000 corpus/
 *    (Debian's libprotobuf-c.so is not instrumented: coverage inside it is
 *    not seen by the fuzzer; see docs/WIRE.md.)
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cdx_limits.h"
#include "wire_alloc.h"
#include "wire_frame.h"
#include "wire_msg.h"

#ifndef CDX_LIBFUZZER
#include "fuzz_main.h"
#else
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
#endif

#define FEED_DOUBLE_EVERY 8
/* The decoder is in the same state after every frame taken: past this many frames an input
 * only repeats work (thousands of tiny frames cost ~0.2 s an exec under ASan). */
#define FRAMES_MAX 64

static void check_request(const uint8_t *b, size_t n)
{
    wire_request *r = NULL;
    if (wire_request_unpack(b, n, 0, &r) != CDX_OK)
        return;
    const Cipherdex__V1__Request *req = wire_request_msg(r);
    (void)wire_body_name(req);
    /* A valid request re-packs, unpacks again, and re-serializes identically. */
    uint8_t *frame = NULL;
    size_t flen;
    if (wire_request_pack(req, CDX_FRAME_MAX_LIMIT, &frame, &flen) != CDX_OK)
        abort();
    wire_request *r2 = NULL;
    if (wire_request_unpack(frame + 4, flen - 4, SIZE_MAX / 2, &r2) != CDX_OK)
        abort();
    uint8_t *frame2 = NULL;
    size_t flen2;
    if (wire_request_pack(wire_request_msg(r2), CDX_FRAME_MAX_LIMIT, &frame2, &flen2) != CDX_OK ||
        flen2 != flen || memcmp(frame, frame2, flen))
        abort();
    if (wire_peek_request_id(frame + 4, flen - 4) != req->request_id)
        abort();
    free(frame);
    free(frame2);
    wire_request_free(r2);
    wire_request_free(r);
}

static void check_response(const uint8_t *b, size_t n)
{
    wire_response *r = NULL;
    if (wire_response_unpack(b, n, 0, &r) == CDX_OK) {
        uint8_t *frame = NULL;
        size_t flen;
        /* What a client accepted, a server could have sent. */
        if (wire_response_pack(wire_response_msg(r), CDX_FRAME_MAX_LIMIT, &frame, &flen) != CDX_OK)
            abort();
        free(frame);
    }
    wire_response_free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t chunk = 1;
    if (size > 0) {
        chunk = (size_t)data[0] * 31 + 1;
        data++;
        size--;
    }
    (void)wire_peek_request_id(data, size);
    check_request(data, size);
    check_response(data, size);

    wire_dec *d = wire_dec_new(1024 * 1024);
    if (!d)
        return 0;
    if (wire_dec_set_first_max(d, CDX_FRAME_FIRST_INSECURE) != CDX_OK)
        abort();
    size_t off = 0, feeds = 0, frames = 0;
    while (off < size && frames < FRAMES_MAX) {
        if (++feeds % FEED_DOUBLE_EVERY == 0 && chunk < size)
            chunk *= 2;
        size_t n = size - off < chunk ? size - off : chunk, used = 0;
        if (wire_dec_feed(d, data + off, n, &used) != CDX_OK)
            break; /* over the cap: the connection would be closed */
        off += used;
        if (wire_dec_ready(d)) {
            uint8_t *body;
            size_t blen;
            if (wire_dec_take(d, &body, &blen) != CDX_OK)
                abort();
            check_request(body, blen);
            check_response(body, blen);
            free(body);
            frames++;
        } else if (used != n) {
            abort(); /* must consume everything while no frame is complete */
        }
    }
    if (wire_dec_pending(d) > 0 && wire_dec_missing(d) == 0)
        abort();
    wire_dec_free(d);
    return 0;
}

#ifndef CDX_LIBFUZZER

/* ---- seeds: one file per interesting input ----------------------------- */

/* One seed: the chunk-size selector byte (0: byte by byte), then the stream b[0..n). */
static int write_file(const char *dir, const char *name, const uint8_t *b, size_t n)
{
    static const uint8_t sel = 0;
    return fuzz_seed_sel(dir, name, &sel, 1, b, n);
}

static int write_msg(const char *dir, const char *name, const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *b = malloc(n + 4);
    if (!b)
        return -1;
    wire_frame_header((uint32_t)n, b);
    protobuf_c_message_pack(m, b + 4);
    int rc = write_file(dir, name, b, n + 4);
    free(b);
    return rc;
}

int fuzz_write_seeds(const char *dir)
{
    static const float v[4] = {1, 2, 3, 4};
    static const uint8_t id16[16] = {1}, wrapped[40] = {2};
    int rc = 0;

    Cipherdex__V1__Request req = CIPHERDEX__V1__REQUEST__INIT;
    Cipherdex__V1__HealthRequest h = CIPHERDEX__V1__HEALTH_REQUEST__INIT;
    req.request_id = 1;
    req.body_case = CIPHERDEX__V1__REQUEST__BODY_HEALTH;
    req.health = &h;
    rc |= write_msg(dir, "health", &req.base);

    Cipherdex__V1__UpsertRequest up = CIPHERDEX__V1__UPSERT_REQUEST__INIT;
    Cipherdex__V1__Item it = CIPHERDEX__V1__ITEM__INIT, *itp = &it;
    it.id = wire_str("doc-1");
    it.n_vector = 4;
    it.vector = (float *)v;
    it.metadata = wire_str("{\"a\":1}");
    it.contents = wire_bin("xyz", 3);
    up.index = wire_str("docs");
    up.n_items = 1;
    up.items = &itp;
    req.body_case = CIPHERDEX__V1__REQUEST__BODY_UPSERT;
    req.upsert = &up;
    rc |= write_msg(dir, "upsert", &req.base);
    it.id = wire_bin("a\0b", 3);
    rc |= write_msg(dir, "upsert_nul", &req.base);
    it.id = wire_bin("\xED\xA0\x80", 3);
    rc |= write_msg(dir, "upsert_surrogate", &req.base);

    Cipherdex__V1__QueryRequest q = CIPHERDEX__V1__QUERY_REQUEST__INIT;
    q.index = wire_str("docs");
    q.n_vectors = 4;
    q.vectors = (float *)v;
    q.top_k = 5;
    q.filter = wire_str("{\"a\":{\"$gt\":0}}");
    q.include_metadata = 1;
    req.body_case = CIPHERDEX__V1__REQUEST__BODY_QUERY;
    req.query = &q;
    rc |= write_msg(dir, "query", &req.base);

    Cipherdex__V1__CreateIndexRequest ci = CIPHERDEX__V1__CREATE_INDEX_REQUEST__INIT;
    Cipherdex__V1__UnwrapKey uk = CIPHERDEX__V1__UNWRAP_KEY__INIT;
    ci.name = wire_str("docs");
    ci.dimension = 4;
    ci.metric = wire_str("cosine");
    ci.index_type = wire_str("ivfflat");
    uk.kek_name = wire_str("kek");
    uk.wrapped_key = wire_bin(wrapped, 40);
    ci.key_source_case = CIPHERDEX__V1__CREATE_INDEX_REQUEST__KEY_SOURCE_UNWRAP_KEY;
    ci.unwrap_key = &uk;
    req.body_case = CIPHERDEX__V1__REQUEST__BODY_CREATE_INDEX;
    req.create_index = &ci;
    rc |= write_msg(dir, "create_index", &req.base);

    Cipherdex__V1__DeleteIndexRequest dl = CIPHERDEX__V1__DELETE_INDEX_REQUEST__INIT;
    dl.name = wire_str("docs");
    dl.confirm_id = wire_bin(id16, 16);
    req.body_case = CIPHERDEX__V1__REQUEST__BODY_DELETE_INDEX;
    req.delete_index = &dl;
    rc |= write_msg(dir, "delete_index", &req.base);

    ProtobufCBinaryData ids[2] = {wire_str("a"), wire_str("b")};
    Cipherdex__V1__GetRequest g = CIPHERDEX__V1__GET_REQUEST__INIT;
    g.index = wire_str("docs");
    g.n_ids = 2;
    g.ids = ids;
    req.body_case = CIPHERDEX__V1__REQUEST__BODY_GET;
    req.get = &g;
    rc |= write_msg(dir, "get", &req.base);

    Cipherdex__V1__ListIdsRequest li = CIPHERDEX__V1__LIST_IDS_REQUEST__INIT;
    li.index = wire_str("docs");
    li.cursor = wire_str("00ff");
    li.limit = 10;
    req.body_case = CIPHERDEX__V1__REQUEST__BODY_LIST_IDS;
    req.list_ids = &li;
    rc |= write_msg(dir, "list_ids", &req.base);

    Cipherdex__V1__Response resp = CIPHERDEX__V1__RESPONSE__INIT;
    Cipherdex__V1__Status st = CIPHERDEX__V1__STATUS__INIT;
    Cipherdex__V1__ListIdsResponse lr = CIPHERDEX__V1__LIST_IDS_RESPONSE__INIT;
    st.code = 0;
    lr.n_ids = 2;
    lr.ids = ids;
    lr.next_cursor = wire_str("ab");
    resp.status = &st;
    resp.body_case = CIPHERDEX__V1__RESPONSE__BODY_LIST_IDS;
    resp.list_ids = &lr;
    rc |= write_msg(dir, "response_list_ids", &resp.base);

    /* Raw streams: two frames back to back, over-cap length, truncated, garbage, empty. */
    static const uint8_t two[] = {0, 0, 0, 4, 0x08, 0x01, 0x52, 0x00, 0, 0, 0, 0};
    static const uint8_t huge[] = {0x7F, 0xFF, 0xFF, 0xFF, 1, 2, 3};
    static const uint8_t trunc[] = {0, 0, 0, 9, 0x08, 0x01};
    static const uint8_t junk[] = {0, 0, 0, 6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};
    static const uint8_t unknown[] = {0, 0, 0, 5, 0x08, 0x05, 0x9A, 0x06, 0x00};
    rc |= write_file(dir, "two_frames", two, sizeof(two));
    rc |= write_file(dir, "over_cap", huge, sizeof(huge));
    rc |= write_file(dir, "truncated", trunc, sizeof(trunc));
    rc |= write_file(dir, "garbage", junk, sizeof(junk));
    rc |= write_file(dir, "unknown_body", unknown, sizeof(unknown));
    rc |= write_file(dir, "empty", NULL, 0);
    return rc ? -1 : 0;
}

#endif
