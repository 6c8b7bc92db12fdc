/*
 * test_wire_roundtrip.c - every request and response through pack, the
 * frame codec and unpack (proto/wire_msg.h), response errors, the schema
 * rules of proto/cipherdex.proto, and a Python client generated from that
 * file exchanging frames with this C code.
 */
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>

#include <unistd.h>

#include "cdx_err.h"
#include "cdx_limits.h"
#include "fx_cunit.h"
#include "fx_tmp.h"
#include "fx_wire.h"
#include "wire_alloc.h"
#include "wire_frame.h"
#include "wire_msg.h"

#ifndef CDX_PROTO_FILE
#error "CDX_PROTO_FILE (path of proto/cipherdex.proto) must be defined by the build"
#endif

/* ---- round trips -------------------------------------------------------- */

/* Frame -> decoder -> body. */
static uint8_t *through_decoder(const uint8_t *frame, size_t flen, size_t *len)
{
    wire_dec *d = wire_dec_new(0);
    size_t used = 0, off = 0;
    uint8_t *body = NULL;
    /* in two pieces, to go through the partial path too */
    size_t half = flen / 2;
    CU_ASSERT_EQUAL(wire_dec_feed(d, frame, half, &used), CDX_OK);
    off = used;
    CU_ASSERT_EQUAL(wire_dec_feed(d, frame + off, flen - off, &used), CDX_OK);
    CU_ASSERT_EQUAL(off + used, flen);
    CU_ASSERT_EQUAL(wire_dec_take(d, &body, len), CDX_OK);
    wire_dec_free(d);
    return body;
}

/* Round trip through framing and unpacking; the re-serialized bytes must be identical. */
static void round_trip_request(const Cipherdex__V1__Request *req)
{
    uint8_t *frame, *body, *again;
    size_t flen, blen, alen, olen;
    uint8_t *orig = fx_pb_pack(&req->base, &olen);

    CU_ASSERT_EQUAL_FATAL(wire_request_pack(req, 0, &frame, &flen), CDX_OK);
    CU_ASSERT_EQUAL(flen, olen + 4);
    body = through_decoder(frame, flen, &blen);
    wire_request *r = NULL;
    cdx_err err = wire_request_unpack(body, blen, 0, &r);
    if (err)
        printf("\n  %s: %s\n", wire_body_name(req), cdx_err_detail());
    CU_ASSERT_EQUAL_FATAL(err, CDX_OK);
    const Cipherdex__V1__Request *got = wire_request_msg(r);
    CU_ASSERT_EQUAL(got->request_id, req->request_id);
    CU_ASSERT_EQUAL(got->body_case, req->body_case);
    CU_ASSERT_STRING_EQUAL(wire_body_name(got), wire_body_name(req));
    again = fx_pb_pack(&got->base, &alen);
    CU_ASSERT_TRUE(alen == olen && !memcmp(again, orig, olen));
    CU_ASSERT_EQUAL(wire_peek_request_id(body, blen), req->request_id);
    free(again);
    wire_request_free(r);
    free(body);
    free(frame);
    free(orig);
}

static void round_trip_response(const Cipherdex__V1__Response *resp)
{
    uint8_t *frame, *body, *again;
    size_t flen, blen, alen, olen;
    uint8_t *orig = fx_pb_pack(&resp->base, &olen);

    cdx_err err = wire_response_pack(resp, 0, &frame, &flen);
    if (err)
        printf("\n  %s\n", cdx_err_detail());
    CU_ASSERT_EQUAL_FATAL(err, CDX_OK);
    CU_ASSERT_EQUAL(flen, olen + 4);
    body = through_decoder(frame, flen, &blen);
    wire_response *r = NULL;
    err = wire_response_unpack(body, blen, 0, &r);
    if (err)
        printf("\n  %s\n", cdx_err_detail());
    CU_ASSERT_EQUAL_FATAL(err, CDX_OK);
    const Cipherdex__V1__Response *got = wire_response_msg(r);
    CU_ASSERT_EQUAL(got->request_id, resp->request_id);
    CU_ASSERT_EQUAL(got->body_case, resp->body_case);
    CU_ASSERT_EQUAL(got->status->code, resp->status->code);
    again = fx_pb_pack(&got->base, &alen);
    CU_ASSERT_TRUE(alen == olen && !memcmp(again, orig, olen));
    free(again);
    wire_response_free(r);
    free(body);
    free(frame);
    free(orig);
}

static void test_round_trip_requests(void)
{
    static const float v8[8] = {0.5f, -1.25f, 3e-8f, 1e30f, -0.0f, 7, 8, 9};
    ProtobufCBinaryData ids[2] = {wire_str("α"), wire_str("doc-2")};
    fx_reqs r;
    Cipherdex__V1__Item it[2], *itp[2] = {&it[0], &it[1]};
    Cipherdex__V1__HealthRequest h = CIPHERDEX__V1__HEALTH_REQUEST__INIT;
    Cipherdex__V1__DescribeIndexRequest di = CIPHERDEX__V1__DESCRIBE_INDEX_REQUEST__INIT;
    Cipherdex__V1__ListIndexesRequest ll = CIPHERDEX__V1__LIST_INDEXES_REQUEST__INIT;
    Cipherdex__V1__GenerateKey gk = CIPHERDEX__V1__GENERATE_KEY__INIT;
    int bodies = 0;

    for (int body = CIPHERDEX__V1__REQUEST__BODY_HEALTH;
         body <= CIPHERDEX__V1__REQUEST__BODY_ACCEPT_ROLLBACK; body++) {
        fx_reqs_init(&r, body);
        r.req.request_id = 0xFEDCBA9876543210ull + (uint64_t)body;
        switch (body) {
        case CIPHERDEX__V1__REQUEST__BODY_HEALTH:
            r.req.health = &h;
            break;
        case CIPHERDEX__V1__REQUEST__BODY_CREATE_INDEX:
            r.ci.n_lists = 1024;
            r.ci.key_source_case = CIPHERDEX__V1__CREATE_INDEX_REQUEST__KEY_SOURCE_GENERATE_KEY;
            r.ci.generate_key = &gk;
            round_trip_request(&r.req);
            r.ci.key_source_case = CIPHERDEX__V1__CREATE_INDEX_REQUEST__KEY_SOURCE_ADOPT_KEY;
            r.ci.adopt_key = &r.ak;
            r.ak.key_id = wire_bin(fx_id16, 16);
            round_trip_request(&r.req);
            r.ci.key_source_case = CIPHERDEX__V1__CREATE_INDEX_REQUEST__KEY_SOURCE_UNWRAP_KEY;
            r.ci.unwrap_key = &r.uk;
            r.uk.kek_name = wire_str("prod-kek");
            r.uk.wrapped_key = wire_bin(fx_wrapped40, 40);
            break;
        case CIPHERDEX__V1__REQUEST__BODY_DESCRIBE_INDEX:
            di.name = wire_str("docs");
            r.req.describe_index = &di;
            break;
        case CIPHERDEX__V1__REQUEST__BODY_LIST_INDEXES:
            r.req.list_indexes = &ll;
            break;
        case CIPHERDEX__V1__REQUEST__BODY_DELETE_INDEX:
            break;
        case CIPHERDEX__V1__REQUEST__BODY_TRAIN:
            r.tr.n_lists = 256;
            r.tr.max_iters = 30;
            r.tr.tolerance = 1e-5f;
            r.tr.seed = 99;
            r.tr.max_points_per_list = 512;
            break;
        case CIPHERDEX__V1__REQUEST__BODY_UPSERT:
            for (int i = 0; i < 2; i++) {
                cipherdex__v1__item__init(&it[i]);
                it[i].id = ids[i];
                it[i].n_vector = 8;
                it[i].vector = (float *)v8;
            }
            it[0].metadata = wire_str("{\"lang\":\"fr\",\"n\":[1,2]}");
            it[1].contents = wire_bin("\x00\x01\x02\xFF", 4);
            r.up.n_items = 2;
            r.up.items = itp;
            break;
        case CIPHERDEX__V1__REQUEST__BODY_QUERY:
            r.q.n_vectors = 8;
            r.q.vectors = (float *)v8;
            r.q.top_k = 7;
            r.q.n_probes = 3;
            r.q.filter = wire_str("{\"lang\":{\"$in\":[\"fr\",\"de\"]}}");
            r.q.include_vectors = r.q.include_metadata = r.q.include_contents = 1;
            r.q.min_version = 12345;
            break;
        case CIPHERDEX__V1__REQUEST__BODY_GET:
            r.g.n_ids = 2;
            r.g.ids = ids;
            r.g.include_metadata = 1;
            r.g.min_version = 3;
            break;
        case CIPHERDEX__V1__REQUEST__BODY_DELETE:
            r.de.n_ids = 2;
            r.de.ids = ids;
            break;
        case CIPHERDEX__V1__REQUEST__BODY_LIST_IDS:
            r.li.cursor = wire_str("0123abcd");
            r.li.limit = 50;
            break;
        case CIPHERDEX__V1__REQUEST__BODY_ACCEPT_ROLLBACK:
            r.ar.confirm_version = UINT64_MAX;
            break;
        }
        round_trip_request(&r.req);
        bodies++;
    }
    CU_ASSERT_EQUAL(bodies, 12);
}

static void test_round_trip_responses(void)
{
    static const float v4[4] = {1, 2, 3, 4};
    static const uint8_t kcv[8] = {9, 8, 7, 6, 5, 4, 3, 2};
    Cipherdex__V1__Response resp;
    Cipherdex__V1__Status st = CIPHERDEX__V1__STATUS__INIT;
    Cipherdex__V1__IndexInfo info = CIPHERDEX__V1__INDEX_INFO__INIT, *infos[2] = {&info, &info};
    Cipherdex__V1__HealthResponse h = CIPHERDEX__V1__HEALTH_RESPONSE__INIT;
    Cipherdex__V1__CreateIndexResponse cr = CIPHERDEX__V1__CREATE_INDEX_RESPONSE__INIT;
    Cipherdex__V1__DescribeIndexResponse dr = CIPHERDEX__V1__DESCRIBE_INDEX_RESPONSE__INIT;
    Cipherdex__V1__ListIndexesResponse lr = CIPHERDEX__V1__LIST_INDEXES_RESPONSE__INIT;
    Cipherdex__V1__DeleteIndexResponse dir = CIPHERDEX__V1__DELETE_INDEX_RESPONSE__INIT;
    Cipherdex__V1__TrainResponse tr = CIPHERDEX__V1__TRAIN_RESPONSE__INIT;
    Cipherdex__V1__UpsertResponse ur = CIPHERDEX__V1__UPSERT_RESPONSE__INIT;
    Cipherdex__V1__QueryResponse qr = CIPHERDEX__V1__QUERY_RESPONSE__INIT;
    Cipherdex__V1__QueryResult res[2], *resp_res[2] = {&res[0], &res[1]};
    Cipherdex__V1__GetResponse gr = CIPHERDEX__V1__GET_RESPONSE__INIT;
    Cipherdex__V1__Item it[2], *itp[2] = {&it[0], &it[1]};
    Cipherdex__V1__DeleteResponse der = CIPHERDEX__V1__DELETE_RESPONSE__INIT;
    Cipherdex__V1__ListIdsResponse lir = CIPHERDEX__V1__LIST_IDS_RESPONSE__INIT;
    Cipherdex__V1__AcceptRollbackResponse arr = CIPHERDEX__V1__ACCEPT_ROLLBACK_RESPONSE__INIT;
    ProtobufCBinaryData warn[2] = {wire_str("store durability: appendfsync=everysec ..."),
                                   wire_str("1 index(es) in rollback")};
    ProtobufCBinaryData ids[2] = {wire_str("a"), wire_str("b")};
    ProtobufCBinaryData md[2] = {wire_str("{}"), wire_str("")};
    ProtobufCBinaryData ct[2] = {wire_bin("\0x", 2), wire_str("")};
    float dist[2] = {0.25f, 1.5f};
    float vecs[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    protobuf_c_boolean found[2] = {1, 0};

    info.name = wire_str("docs");
    info.state = wire_str("ready");
    info.id = wire_bin(fx_id16, 16);
    info.dimension = 4;
    info.metric = wire_str("cosine");
    info.index_type = wire_str("ivfsq8");
    info.n_lists = 64;
    info.n_clusters = 64;
    info.count = 1000000;
    info.version = 77;
    info.kcv = wire_bin(kcv, 8);
    info.key_source = wire_str("generate");
    info.key_owned = 1;
    info.segments = 12;
    info.created_ms = 1700000000000ull;
    info.status = wire_str("rollback_detected");
    info.status_message = wire_str("index docs: the store's head is version 77, older than 80");
    h.token_ok = h.store_ok = 1;
    h.server_version = wire_str("0.1.0");
    h.uptime_s = 3600;
    h.status = wire_str("degraded");
    h.n_warnings = 2;
    h.warnings = warn;
    h.indexes_in_rollback = 1;
    arr.previous_version = 80;
    arr.version = 77;
    cr.index = dr.index = &info;
    lr.n_indexes = 2;
    lr.indexes = infos;
    tr.version = 5;
    ur.version = 6;
    ur.upserted = 2;
    for (int i = 0; i < 2; i++) {
        cipherdex__v1__query_result__init(&res[i]);
        res[i].n_ids = res[i].n_distances = 2;
        res[i].ids = ids;
        res[i].distances = dist;
        res[i].n_vectors = 8;
        res[i].vectors = vecs;
        res[i].n_metadata = res[i].n_contents = 2;
        res[i].metadata = md;
        res[i].contents = ct;
        cipherdex__v1__item__init(&it[i]);
        it[i].id = ids[i];
    }
    it[0].n_vector = 4;
    it[0].vector = (float *)v4;
    it[0].metadata = wire_str("{\"a\":true}");
    qr.n_results = 2;
    qr.results = resp_res;
    qr.version = 9;
    gr.n_items = gr.n_found = 2;
    gr.items = itp;
    gr.found = found;
    gr.version = 10;
    der.deleted = 1;
    der.version = 11;
    lir.n_ids = 2;
    lir.ids = ids;
    lir.next_cursor = wire_str("ff00");

    for (int body = CIPHERDEX__V1__RESPONSE__BODY_HEALTH;
         body <= CIPHERDEX__V1__RESPONSE__BODY_ACCEPT_ROLLBACK; body++) {
        cipherdex__v1__response__init(&resp);
        resp.request_id = 1000 + (uint64_t)body;
        resp.status = &st;
        resp.body_case = (Cipherdex__V1__Response__BodyCase)body;
        switch (body) {
        case CIPHERDEX__V1__RESPONSE__BODY_HEALTH:
            resp.health = &h;
            break;
        case CIPHERDEX__V1__RESPONSE__BODY_CREATE_INDEX:
            resp.create_index = &cr;
            break;
        case CIPHERDEX__V1__RESPONSE__BODY_DESCRIBE_INDEX:
            resp.describe_index = &dr;
            break;
        case CIPHERDEX__V1__RESPONSE__BODY_LIST_INDEXES:
            resp.list_indexes = &lr;
            break;
        case CIPHERDEX__V1__RESPONSE__BODY_DELETE_INDEX:
            resp.delete_index = &dir;
            break;
        case CIPHERDEX__V1__RESPONSE__BODY_TRAIN:
            resp.train = &tr;
            break;
        case CIPHERDEX__V1__RESPONSE__BODY_UPSERT:
            resp.upsert = &ur;
            break;
        case CIPHERDEX__V1__RESPONSE__BODY_QUERY:
            resp.query = &qr;
            break;
        case CIPHERDEX__V1__RESPONSE__BODY_GET:
            resp.get = &gr;
            break;
        case CIPHERDEX__V1__RESPONSE__BODY_DELETE:
            resp.delete_ = &der;
            break;
        case CIPHERDEX__V1__RESPONSE__BODY_LIST_IDS:
            resp.list_ids = &lir;
            break;
        case CIPHERDEX__V1__RESPONSE__BODY_ACCEPT_ROLLBACK:
            resp.accept_rollback = &arr;
            break;
        }
        round_trip_response(&resp);
    }
}

static void test_response_errors(void)
{
    uint8_t *frame, *body;
    size_t flen, blen;
    wire_response *r;

    /* A status-only error response; its message sanitised (cut before invalid UTF-8). */
    CU_ASSERT_EQUAL_FATAL(
        wire_response_error(7, CDX_ERR_NOT_FOUND, "no index \"d\xC3\xA9\xFFx\"", &frame, &flen),
        CDX_OK);
    body = through_decoder(frame, flen, &blen);
    CU_ASSERT_EQUAL_FATAL(wire_response_unpack(body, blen, 0, &r), CDX_OK);
    CU_ASSERT_EQUAL(wire_response_msg(r)->request_id, 7);
    CU_ASSERT_EQUAL(wire_response_msg(r)->status->code, 5);
    CU_ASSERT_STRING_EQUAL(wire_text(wire_response_msg(r)->status->message),
                           "no index \"d\xC3\xA9");
    CU_ASSERT_EQUAL(wire_response_msg(r)->body_case, CIPHERDEX__V1__RESPONSE__BODY__NOT_SET);
    wire_response_free(r);
    wire_response_free(NULL);
    free(body);
    free(frame);

    /* Default message; a long one is cut at the limit on a character boundary. */
    CU_ASSERT_EQUAL(wire_response_error(1, CDX_ERR_STALE, NULL, &frame, &flen), CDX_OK);
    CU_ASSERT_TRUE(flen > 4 && memmem(frame, flen, cdx_strerror(CDX_ERR_STALE),
                                      strlen(cdx_strerror(CDX_ERR_STALE))) != NULL);
    free(frame);
    char *lng = malloc(3 * CDX_STATUS_MESSAGE_MAX + 1);
    for (size_t i = 0; i < CDX_STATUS_MESSAGE_MAX; i++)
        memcpy(lng + 3 * i, "\xE2\x82\xAC", 3);
    lng[3 * CDX_STATUS_MESSAGE_MAX] = 0;
    CU_ASSERT_EQUAL(wire_response_error(1, CDX_ERR_INTERNAL, lng, &frame, &flen), CDX_OK);
    CU_ASSERT_EQUAL_FATAL(wire_response_unpack(frame + 4, flen - 4, 0, &r), CDX_OK);
    size_t ml = wire_response_msg(r)->status->message.len;
    CU_ASSERT_TRUE(ml <= CDX_STATUS_MESSAGE_MAX && ml > CDX_STATUS_MESSAGE_MAX - 3 && ml % 3 == 0);
    wire_response_free(r);
    free(frame);
    free(lng);

    /* No status: a protocol error for the client, a bug for the server. */
    Cipherdex__V1__Response resp = CIPHERDEX__V1__RESPONSE__INIT;
    resp.request_id = 3;
    size_t len;
    uint8_t *b = fx_pb_pack(&resp.base, &len);
    r = (wire_response *)1;
    CU_ASSERT_EQUAL(wire_response_unpack(b, len, 0, &r), CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NULL(r);
    CU_ASSERT_TRUE(fx_detail_has("no status"));
    free(b);
    CU_ASSERT_EQUAL(wire_response_pack(&resp, 0, &frame, &flen), CDX_ERR_INTERNAL);

    /* The server refuses to send invalid text (it would break clients). */
    Cipherdex__V1__Status st = CIPHERDEX__V1__STATUS__INIT;
    Cipherdex__V1__ListIdsResponse lir = CIPHERDEX__V1__LIST_IDS_RESPONSE__INIT;
    ProtobufCBinaryData bad = wire_bin("a\0", 2);
    lir.n_ids = 1;
    lir.ids = &bad;
    resp.status = &st;
    resp.body_case = CIPHERDEX__V1__RESPONSE__BODY_LIST_IDS;
    resp.list_ids = &lir;
    CU_ASSERT_EQUAL(wire_response_pack(&resp, 0, &frame, &flen), CDX_ERR_INTERNAL);
    CU_ASSERT_TRUE(fx_detail_has("list_ids.ids[0]: NUL byte"));
    /* Or a frame over the cap. */
    lir.n_ids = 0;
    CU_ASSERT_EQUAL(wire_response_pack(&resp, 3, &frame, &flen), CDX_ERR_FRAME_TOO_LARGE);
    CU_ASSERT_PTR_NULL(frame);
}

static void test_schema(void)
{
    cdx_err err = wire_schema_check();
    if (err)
        printf("\n  %s\n", cdx_err_detail());
    CU_ASSERT_EQUAL(err, CDX_OK);
}

/* ---- other languages: Python from the .proto, unchanged ----------------- */

static const char py_script[] =
    "import sys, struct\n"
    "try:\n"
    "    from google.protobuf import __version__ as v\n"
    "except ImportError:\n"
    "    print('SKIP: python3-protobuf is not installed'); sys.exit(77)\n"
    "gen, work = sys.argv[1], sys.argv[2]\n"
    "sys.path.insert(0, gen)\n"
    "import cipherdex_pb2 as pb\n"
    "# 1. read the C server's response frame\n"
    "data = open(work + '/resp.bin', 'rb').read()\n"
    "(n,) = struct.unpack('>I', data[:4]); assert n == len(data) - 4\n"
    "r = pb.Response(); r.ParseFromString(data[4:])\n"
    "assert r.HasField('status') and r.status.code == 0, r\n"
    "assert r.WhichOneof('body') == 'query'\n"
    "res = r.query.results[0]\n"
    "assert list(res.ids) == ['d\\u00e9j\\u00e0', 'x'], list(res.ids)\n"
    "assert list(res.distances) == [0.5, 2.0]\n"
    "assert list(res.metadata) == ['{\"k\":\"\\u20ac\"}', '']\n"
    "assert r.request_id == 31337 and r.query.version == 4\n"
    "# 2. write a request frame for the C server\n"
    "q = pb.Request(request_id=2**64 - 1)\n"
    "it = q.upsert.items.add(id='\\u00e9\\u20ac\\U0001F600', vector=[1.5, -2.0],\n"
    "                        metadata='{\"a\": 1}', contents=b'\\x00\\xff')\n"
    "q.upsert.index = 'docs'\n"
    "body = q.SerializeToString()\n"
    "open(work + '/req.bin', 'wb').write(struct.pack('>I', len(body)) + body)\n"
    "# 3. every message of the contract is there\n"
    "for m in ['Request', 'Response', 'Status', 'Item', 'IndexInfo', 'CreateIndexRequest',\n"
    "          'UnwrapKey', 'AdoptKey', 'GenerateKey', 'TrainRequest', 'QueryRequest',\n"
    "          'QueryResponse', 'QueryResult', 'GetRequest', 'GetResponse', 'DeleteRequest',\n"
    "          'ListIdsRequest', 'ListIdsResponse', 'DeleteIndexRequest']:\n"
    "    assert hasattr(pb, m), m\n"
    "names = [f.name for f in pb.Request.DESCRIPTOR.oneofs_by_name['body'].fields]\n"
    "assert names == [f.name for f in pb.Response.DESCRIPTOR.oneofs_by_name['body'].fields]\n"
    "print('python ok: protobuf', v, names)\n";

static void test_python_client(void)
{
    char out[4096], path[512];
    const char *const ver[] = {"protoc", "--version", NULL};
    if (fx_run(ver, NULL, out, sizeof(out)) != 0) {
        printf("\n  SKIPPED: protoc not found (Debian package protobuf-compiler)\n");
        return;
    }
    if (access("/usr/bin/python3", X_OK) != 0) {
        printf("\n  SKIPPED: /usr/bin/python3 not found\n");
        return;
    }
    char *dir = fx_tmpdir_new("wire-py");
    CU_ASSERT_FATAL(dir != NULL);

    /* protoc compiles the contract as it is, from its own directory. */
    char proto_dir[512], py_out[600];
    snprintf(proto_dir, sizeof(proto_dir), "-I%s", CDX_PROTO_FILE);
    *strrchr(proto_dir, '/') = '\0';
    snprintf(py_out, sizeof(py_out), "--python_out=%s", dir);
    const char *const gen[] = {"protoc", proto_dir, py_out, CDX_PROTO_FILE, NULL};
    int rc = fx_run(gen, NULL, out, sizeof(out));
    if (rc)
        printf("\n  protoc: %s\n", out);
    CU_ASSERT_EQUAL_FATAL(rc, 0);

    /* The C side's response frame. */
    Cipherdex__V1__Response resp = CIPHERDEX__V1__RESPONSE__INIT;
    Cipherdex__V1__Status st = CIPHERDEX__V1__STATUS__INIT;
    Cipherdex__V1__QueryResponse qr = CIPHERDEX__V1__QUERY_RESPONSE__INIT;
    Cipherdex__V1__QueryResult res = CIPHERDEX__V1__QUERY_RESULT__INIT, *resp_res = &res;
    ProtobufCBinaryData ids[2] = {wire_str("d\xC3\xA9j\xC3\xA0"), wire_str("x")};
    ProtobufCBinaryData md[2] = {wire_str("{\"k\":\"\xE2\x82\xAC\"}"), wire_str("")};
    float dist[2] = {0.5f, 2.0f};
    res.n_ids = res.n_distances = res.n_metadata = 2;
    res.ids = ids;
    res.distances = dist;
    res.metadata = md;
    qr.n_results = 1;
    qr.results = &resp_res;
    qr.version = 4;
    resp.request_id = 31337;
    resp.status = &st;
    resp.body_case = CIPHERDEX__V1__RESPONSE__BODY_QUERY;
    resp.query = &qr;
    uint8_t *frame;
    size_t flen;
    CU_ASSERT_EQUAL_FATAL(wire_response_pack(&resp, 0, &frame, &flen), CDX_OK);
    snprintf(path, sizeof(path), "%s/resp.bin", dir);
    FILE *f = fopen(path, "wb");
    CU_ASSERT_FATAL(f != NULL);
    CU_ASSERT_EQUAL(fwrite(frame, 1, flen, f), flen);
    fclose(f);
    free(frame);

    const char *const py[] = {"/usr/bin/python3", "-c", py_script, dir, dir, NULL};
    rc = fx_run(py, NULL, out, sizeof(out));
    if (rc == 77) {
        printf("\n  SKIPPED: %s", out);
        goto out;
    }
    printf("\n  %s", out);
    CU_ASSERT_EQUAL_FATAL(rc, 0);

    /* The Python client's request frame, through the decoder and the validator. */
    snprintf(path, sizeof(path), "%s/req.bin", dir);
    f = fopen(path, "rb");
    CU_ASSERT_FATAL(f != NULL);
    uint8_t buf[1024];
    size_t n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    size_t blen;
    uint8_t *body = through_decoder(buf, n, &blen);
    wire_request *r;
    CU_ASSERT_EQUAL_FATAL(wire_request_unpack(body, blen, 0, &r), CDX_OK);
    const Cipherdex__V1__Request *req = wire_request_msg(r);
    CU_ASSERT_EQUAL(req->request_id, UINT64_MAX);
    CU_ASSERT_EQUAL_FATAL(req->body_case, CIPHERDEX__V1__REQUEST__BODY_UPSERT);
    CU_ASSERT_STRING_EQUAL(wire_text(req->upsert->index), "docs");
    const Cipherdex__V1__Item *it = req->upsert->items[0];
    CU_ASSERT_STRING_EQUAL(wire_text(it->id), "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
    CU_ASSERT_TRUE(it->n_vector == 2 && it->vector[0] == 1.5f && it->vector[1] == -2.0f);
    CU_ASSERT_STRING_EQUAL(wire_text(it->metadata), "{\"a\": 1}");
    CU_ASSERT_TRUE(it->contents.len == 2 && it->contents.data[1] == 0xFF);
    wire_request_free(r);
    free(body);
out:
    fx_rm_rf(dir);
    free(dir);
}

/* ---- main --------------------------------------------------------------- */

int main(void)
{
    static const fx_test tests[] = {
        {"round trip requests", test_round_trip_requests},
        {"round trip responses", test_round_trip_responses},
        {"response errors", test_response_errors},
        {"schema rules", test_schema},
        {"python client", test_python_client},
    };
    return fx_cunit_run1("wire-roundtrip", tests, FX_LEN(tests));
}
