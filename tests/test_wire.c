/*
 * test_wire.c - the wire layer (proto/): frame decoder and encoder, the
 * unpack budget, request validation (UTF-8, NUL, limits, bodies), round
 * trips of every request and response, and a Python client compiled from
 * proto/cipherdex.proto exchanging frames with this C code.
 */
#include <math.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "cdx_err.h"
#include "cdx_limits.h"
#include "fx_tmp.h"
#include "wire_alloc.h"
#include "wire_frame.h"
#include "wire_msg.h"
#include "cdx_utf8.h"
#include "fx_cunit.h"

#ifndef CDX_PROTO_FILE
#error "CDX_PROTO_FILE (path of proto/cipherdex.proto) must be defined by the build"
#endif

/* ---- helpers ------------------------------------------------------------ */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Serialize a message (no frame header); caller frees. */
static uint8_t *pb_pack(const ProtobufCMessage *m, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    uint8_t *b = malloc(*len ? *len : 1);
    CU_ASSERT_FATAL(b != NULL);
    CU_ASSERT_FATAL(protobuf_c_message_pack(m, b) == *len);
    return b;
}

static bool detail_has(const char *needle)
{
    if (strstr(cdx_err_detail(), needle))
        return true;
    printf("\n  detail \"%s\" lacks \"%s\"\n", cdx_err_detail(), needle);
    return false;
}

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
            CU_ASSERT_TRUE(detail_has(needle));
    }
    wire_request_free(err ? NULL : r);
}

static void expect_msg(const Cipherdex__V1__Request *req, cdx_err code, const char *needle)
{
    size_t len;
    uint8_t *b = pb_pack(&req->base, &len);
    expect_req(b, len, 0, code, needle);
    free(b);
}

/* Append a frame of `len` pattern bytes to buf (header + body); returns new length. */
static size_t put_frame(uint8_t *buf, size_t off, size_t len, uint8_t seed)
{
    wire_frame_header((uint32_t)len, buf + off);
    for (size_t i = 0; i < len; i++)
        buf[off + 4 + i] = (uint8_t)(seed + i * 7);
    return off + 4 + len;
}

static bool frame_ok(const uint8_t *body, size_t len, size_t want_len, uint8_t seed)
{
    if (len != want_len)
        return false;
    for (size_t i = 0; i < len; i++)
        if (body[i] != (uint8_t)(seed + i * 7))
            return false;
    return true;
}

/* ---- UTF-8 -------------------------------------------------------------- */

static void test_utf8_table(void)
{
    static const struct {
        const char *s;
        size_t n;
        bool ok;
        size_t bad;
        const char *why;
    } rows[] = {
        {"", 0, true, 0, NULL},
        {"plain ascii text, long enough for the fast path", 47, true, 0, NULL},
        {"\xC3\xA9", 2, true, 0, NULL},         /* U+00E9 */
        {"\xC2\x80", 2, true, 0, NULL},         /* U+0080: smallest 2-byte */
        {"\xE0\xA0\x80", 3, true, 0, NULL},     /* U+0800: smallest 3-byte */
        {"\xED\x9F\xBF", 3, true, 0, NULL},     /* U+D7FF: below the surrogates */
        {"\xEE\x80\x80", 3, true, 0, NULL},     /* U+E000: above them */
        {"\xEF\xBF\xBF", 3, true, 0, NULL},     /* U+FFFF */
        {"\xF0\x90\x80\x80", 4, true, 0, NULL}, /* U+10000 */
        {"\xF4\x8F\xBF\xBF", 4, true, 0, NULL}, /* U+10FFFF */
        {"a\0b", 3, false, 1, "NUL byte"},
        {"abcdefgh\0", 9, false, 8, "NUL byte"}, /* NUL found by the fast path */
        {"\xC0\xAF", 2, false, 0, "overlong encoding"},
        {"\xC1\xBF", 2, false, 0, "overlong encoding"},
        {"x\xE0\x80\xAF", 4, false, 1, "overlong encoding"},
        {"\xF0\x80\x80\xAF", 4, false, 0, "overlong encoding"},
        {"\xF0\x8F\xBF\xBF", 4, false, 0, "overlong encoding"},
        {"\xED\xA0\x80", 3, false, 0, "surrogate"}, /* U+D800 */
        {"\xED\xBF\xBF", 3, false, 0, "surrogate"}, /* U+DFFF */
        {"\xF4\x90\x80\x80", 4, false, 0, "code point above U+10FFFF"},
        {"\xF5\x80\x80\x80", 4, false, 0, "code point above U+10FFFF"},
        {"\xFF", 1, false, 0, "code point above U+10FFFF"},
        {"ab\xC3", 3, false, 2, "truncated sequence"},
        {"\xE2\x82", 2, false, 0, "truncated sequence"},
        {"\xF0\x9F\x98", 3, false, 0, "truncated sequence"},
        {"\xE2\x82x", 3, false, 0, "truncated sequence"},
        {"\xC3(", 2, false, 0, "truncated sequence"},
        {"\x80", 1, false, 0, "unexpected continuation byte"},
        {"abc\xBF", 4, false, 3, "unexpected continuation byte"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        size_t bad = 999;
        const char *why = NULL;
        bool ok = cdx_utf8_valid((const uint8_t *)rows[i].s, rows[i].n, &bad, &why);
        if (ok != rows[i].ok || (!ok && (bad != rows[i].bad || strcmp(why, rows[i].why))))
            printf("\n  row %zu: ok %d bad %zu why %s\n", i, ok, bad, why ? why : "-");
        CU_ASSERT_EQUAL(ok, rows[i].ok);
        if (!rows[i].ok) {
            CU_ASSERT_EQUAL(bad, rows[i].bad);
            CU_ASSERT_STRING_EQUAL(why, rows[i].why);
        }
    }
    CU_ASSERT_EQUAL(cdx_utf8_prefix((const uint8_t *)"ab\xC3\xA9\xE2\x82", 6), 4);
    CU_ASSERT_EQUAL(cdx_utf8_prefix((const uint8_t *)"ab\0c", 4), 2);
}

/* Reference: decode code points arithmetically and apply the rules. */
static bool ref_utf8(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint32_t c = s[i], min;
        size_t len;
        if (c < 0x80) {
            if (c == 0)
                return false;
            i++;
            continue;
        }
        if ((c & 0xE0) == 0xC0)
            len = 2, c &= 0x1F, min = 0x80;
        else if ((c & 0xF0) == 0xE0)
            len = 3, c &= 0x0F, min = 0x800;
        else if ((c & 0xF8) == 0xF0)
            len = 4, c &= 0x07, min = 0x10000;
        else
            return false;
        if (n - i < len)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            c = c << 6 | (s[i + k] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

static void test_utf8_differential(void)
{
    static const uint8_t pool[] = {0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF,
                                   0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE,
                                   0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF};
    uint8_t s[12];
    size_t valid = 0, total = 200000, disagree = 0;
    for (size_t t = 0; t < total; t++) {
        size_t n = rnd() % sizeof(s);
        for (size_t i = 0; i < n; i++)
            s[i] = (rnd() & 3) ? pool[rnd() % sizeof(pool)] : (uint8_t)rnd();
        bool a = cdx_utf8_valid(s, n, NULL, NULL), b = ref_utf8(s, n);
        valid += b;
        if (a != b && disagree++ < 5)
            printf("\n  disagree on %zu bytes (ours %d, reference %d)\n", n, a, b);
        CU_ASSERT_EQUAL(cdx_utf8_prefix(s, n) == n, b);
    }
    printf("  %zu strings, %zu valid, %zu disagreements\n", total, valid, disagree);
    CU_ASSERT_EQUAL(disagree, 0);
    CU_ASSERT_TRUE(valid > total / 20);
}

/* ---- frame decoder ------------------------------------------------------ */

static const size_t frame_sizes[] = {0, 1, 5, 100, 0, 70000, 3, 200000, 0};
#define N_FRAMES (sizeof(frame_sizes) / sizeof(frame_sizes[0]))

static uint8_t *frames_buffer(size_t *len)
{
    size_t total = 0;
    for (size_t i = 0; i < N_FRAMES; i++)
        total += 4 + frame_sizes[i];
    uint8_t *buf = malloc(total);
    CU_ASSERT_FATAL(buf != NULL);
    size_t off = 0;
    for (size_t i = 0; i < N_FRAMES; i++)
        off = put_frame(buf, off, frame_sizes[i], (uint8_t)i);
    *len = off;
    return buf;
}

/* Feed buf in chunks of chunk(i) bytes; returns the frames decoded correctly. */
static size_t decode_chunks(const uint8_t *buf, size_t len, size_t (*chunk)(void))
{
    wire_dec *d = wire_dec_new(0);
    size_t off = 0, got = 0;
    CU_ASSERT_FATAL(d != NULL);
    while (off < len) {
        size_t n = chunk();
        if (n > len - off)
            n = len - off;
        const uint8_t *p = buf + off;
        off += n;
        while (n > 0 || wire_dec_ready(d)) {
            size_t used = 0;
            if (!wire_dec_ready(d)) {
                CU_ASSERT_EQUAL_FATAL(wire_dec_feed(d, p, n, &used), CDX_OK);
                p += used;
                n -= used;
            }
            if (wire_dec_ready(d)) {
                uint8_t *body;
                size_t blen;
                CU_ASSERT_EQUAL_FATAL(wire_dec_take(d, &body, &blen), CDX_OK);
                CU_ASSERT_TRUE(got < N_FRAMES &&
                               frame_ok(body, blen, frame_sizes[got], (uint8_t)got));
                CU_ASSERT_EQUAL(body == NULL, blen == 0);
                free(body);
                got++;
            } else {
                CU_ASSERT_EQUAL(n, 0);
                break;
            }
        }
    }
    CU_ASSERT_EQUAL(wire_dec_pending(d), 0);
    CU_ASSERT_EQUAL(wire_dec_missing(d), 4);
    CU_ASSERT_EQUAL(wire_dec_frames(d), N_FRAMES);
    wire_dec_free(d);
    return got;
}

static size_t one(void)
{
    return 1;
}

static size_t random_chunk(void)
{
    switch (rnd() % 4) {
    case 0:
        return 1 + rnd() % 3;
    case 1:
        return 1 + rnd() % 64;
    case 2:
        return 1 + rnd() % 5000;
    default:
        return 1 + rnd() % 150000;
    }
}

static size_t everything(void)
{
    return SIZE_MAX;
}

static void test_dec_byte_by_byte(void)
{
    size_t len;
    uint8_t *buf = frames_buffer(&len);
    CU_ASSERT_EQUAL(decode_chunks(buf, len, one), N_FRAMES);
    free(buf);
}

static void test_dec_random_chunks(void)
{
    size_t len;
    uint8_t *buf = frames_buffer(&len);
    for (int rep = 0; rep < 20; rep++)
        CU_ASSERT_EQUAL(decode_chunks(buf, len, random_chunk), N_FRAMES);
    free(buf);
}

static void test_dec_one_buffer(void)
{
    size_t len;
    uint8_t *buf = frames_buffer(&len);
    CU_ASSERT_EQUAL(decode_chunks(buf, len, everything), N_FRAMES);

    /* A frame waiting blocks feeding until taken. */
    wire_dec *d = wire_dec_new(0);
    size_t used;
    CU_ASSERT_EQUAL(wire_dec_feed(d, buf, len, &used), CDX_OK);
    CU_ASSERT_EQUAL(used, 4); /* the first frame is empty */
    CU_ASSERT_TRUE(wire_dec_ready(d));
    CU_ASSERT_EQUAL(wire_dec_feed(d, buf + used, len - used, &used), CDX_ERR_FAILED_PRECONDITION);
    CU_ASSERT_EQUAL(used, 0);
    uint8_t *body;
    size_t blen;
    CU_ASSERT_EQUAL(wire_dec_take(d, &body, &blen), CDX_OK);
    CU_ASSERT_PTR_NULL(body);
    CU_ASSERT_EQUAL(blen, 0);
    CU_ASSERT_EQUAL(wire_dec_take(d, &body, &blen), CDX_ERR_NOT_FOUND);
    wire_dec_free(d);
    wire_dec_free(NULL);
    free(buf);
}

static void test_dec_over_cap(void)
{
    uint8_t hdr[8];
    size_t used;

    wire_dec *d = wire_dec_new(1000);
    CU_ASSERT_FATAL(d != NULL);
    wire_frame_header(1000, hdr); /* exactly the cap: fine */
    CU_ASSERT_EQUAL(wire_dec_feed(d, hdr, 4, &used), CDX_OK);
    CU_ASSERT_EQUAL(wire_dec_missing(d), 1000);
    wire_dec_free(d);

    d = wire_dec_new(1000);
    wire_frame_header(1001, hdr);
    memset(hdr + 4, 'x', 4);
    cdx_err_clear();
    CU_ASSERT_EQUAL(wire_dec_feed(d, hdr, 8, &used), CDX_ERR_FRAME_TOO_LARGE);
    CU_ASSERT_EQUAL(used, 4);
    CU_ASSERT_EQUAL(wire_dec_buffered(d), 0); /* nothing allocated */
    CU_ASSERT_TRUE(detail_has("1001 bytes exceeds the cap of 1000"));
    /* The stream cannot be resynchronised: the decoder stays failed. */
    CU_ASSERT_EQUAL(wire_dec_feed(d, hdr + 4, 4, &used), CDX_ERR_FRAME_TOO_LARGE);
    CU_ASSERT_EQUAL(used, 0);
    wire_dec_free(d);

    /* 4 GiB - 1 announced against the default cap, one byte at a time. */
    d = wire_dec_new(0);
    memset(hdr, 0xFF, 4);
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(wire_dec_feed(d, hdr + i, 1, &used), CDX_OK);
    CU_ASSERT_EQUAL(wire_dec_pending(d), 3);
    CU_ASSERT_EQUAL(wire_dec_feed(d, hdr + 3, 1, &used), CDX_ERR_FRAME_TOO_LARGE);
    CU_ASSERT_EQUAL(wire_dec_buffered(d), 0);
    wire_dec_free(d);

    CU_ASSERT_PTR_NULL(wire_dec_new(CDX_FRAME_MAX_LIMIT + 1));

    /* A large announced frame pins only what arrived (plus the initial buffer). */
    d = wire_dec_new(0);
    wire_frame_header(CDX_FRAME_MAX_DEFAULT, hdr);
    memset(hdr + 4, 'y', 4);
    CU_ASSERT_EQUAL(wire_dec_feed(d, hdr, 8, &used), CDX_OK);
    CU_ASSERT_TRUE(wire_dec_buffered(d) <= CDX_FRAME_BUF_INITIAL);
    CU_ASSERT_EQUAL(wire_dec_missing(d), CDX_FRAME_MAX_DEFAULT - 4);
    wire_dec_free(d);
}

static void test_dec_first_cap(void)
{
    size_t used;
    size_t big = CDX_FRAME_FIRST_INSECURE + 1;
    uint8_t *buf = malloc(2 * (big + 4) + 104);
    CU_ASSERT_FATAL(buf != NULL);

    /* First frame over the first-frame cap: refused. */
    wire_dec *d = wire_dec_new(0);
    CU_ASSERT_EQUAL(wire_dec_set_first_max(d, CDX_FRAME_FIRST_INSECURE), CDX_OK);
    size_t len = put_frame(buf, 0, big, 1);
    cdx_err_clear();
    CU_ASSERT_EQUAL(wire_dec_feed(d, buf, len, &used), CDX_ERR_FRAME_TOO_LARGE);
    CU_ASSERT_TRUE(detail_has("for the first frame"));
    wire_dec_free(d);

    /* A small first frame, then the same large frame: accepted. */
    d = wire_dec_new(0);
    CU_ASSERT_EQUAL(wire_dec_set_first_max(d, CDX_FRAME_FIRST_INSECURE), CDX_OK);
    len = put_frame(buf, 0, 100, 2);
    len = put_frame(buf, len, big, 3);
    CU_ASSERT_EQUAL(wire_dec_feed(d, buf, len, &used), CDX_OK);
    CU_ASSERT_EQUAL(used, 104);
    uint8_t *body;
    size_t blen;
    CU_ASSERT_EQUAL(wire_dec_take(d, &body, &blen), CDX_OK);
    CU_ASSERT_TRUE(frame_ok(body, blen, 100, 2));
    free(body);
    CU_ASSERT_EQUAL(wire_dec_feed(d, buf + used, len - used, &used), CDX_OK);
    CU_ASSERT_EQUAL(wire_dec_take(d, &body, &blen), CDX_OK);
    CU_ASSERT_TRUE(frame_ok(body, blen, big, 3));
    free(body);
    /* Too late to set, and out of range. */
    CU_ASSERT_EQUAL(wire_dec_set_first_max(d, 10), CDX_ERR_FAILED_PRECONDITION);
    wire_dec_free(d);
    d = wire_dec_new(1000);
    CU_ASSERT_EQUAL(wire_dec_set_first_max(d, 1001), CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(wire_dec_set_first_max(d, 0), CDX_ERR_INVALID_ARGUMENT);
    wire_dec_free(d);
    free(buf);
}

static void test_dec_truncated(void)
{
    uint8_t buf[32];
    size_t used, len = put_frame(buf, 0, 10, 9);
    uint8_t *body;
    size_t blen;

    wire_dec *d = wire_dec_new(0);
    CU_ASSERT_EQUAL(wire_dec_feed(d, buf, 2, &used), CDX_OK);
    CU_ASSERT_EQUAL(wire_dec_pending(d), 2);
    CU_ASSERT_EQUAL(wire_dec_missing(d), 2);
    CU_ASSERT_EQUAL(wire_dec_feed(d, buf + 2, 7, &used), CDX_OK);
    CU_ASSERT_EQUAL(used, 7);
    CU_ASSERT_FALSE(wire_dec_ready(d));
    CU_ASSERT_EQUAL(wire_dec_pending(d), 9); /* the peer closing now = truncated frame */
    CU_ASSERT_EQUAL(wire_dec_missing(d), 5);
    CU_ASSERT_EQUAL(wire_dec_take(d, &body, &blen), CDX_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(wire_dec_feed(d, NULL, 0, &used), CDX_OK); /* nothing new: still waiting */
    CU_ASSERT_EQUAL(wire_dec_feed(d, buf + 9, len - 9, &used), CDX_OK);
    CU_ASSERT_TRUE(wire_dec_ready(d));
    CU_ASSERT_EQUAL(wire_dec_pending(d), 0);
    CU_ASSERT_EQUAL(wire_dec_take(d, &body, &blen), CDX_OK);
    CU_ASSERT_TRUE(frame_ok(body, blen, 10, 9));
    free(body);
    wire_dec_free(d);
}

static void test_encode(void)
{
    uint8_t *f;
    size_t flen, used;
    const uint8_t body[] = "hello";

    CU_ASSERT_EQUAL(wire_frame_encode(body, 5, 0, &f, &flen), CDX_OK);
    CU_ASSERT_EQUAL(flen, 9);
    CU_ASSERT_EQUAL(memcmp(f, "\0\0\0\5hello", 9), 0);
    wire_dec *d = wire_dec_new(0);
    CU_ASSERT_EQUAL(wire_dec_feed(d, f, flen, &used), CDX_OK);
    uint8_t *out;
    size_t olen;
    CU_ASSERT_EQUAL(wire_dec_take(d, &out, &olen), CDX_OK);
    CU_ASSERT_TRUE(olen == 5 && !memcmp(out, "hello", 5));
    free(out);
    free(f);
    wire_dec_free(d);

    CU_ASSERT_EQUAL(wire_frame_encode(NULL, 0, 0, &f, &flen), CDX_OK);
    CU_ASSERT_EQUAL(flen, 4);
    CU_ASSERT_EQUAL(memcmp(f, "\0\0\0\0", 4), 0);
    free(f);
    CU_ASSERT_EQUAL(wire_frame_encode(body, 5, 4, &f, &flen), CDX_ERR_FRAME_TOO_LARGE);
    CU_ASSERT_PTR_NULL(f);
    CU_ASSERT_EQUAL(wire_frame_encode(NULL, 5, 0, &f, &flen), CDX_ERR_INVALID_ARGUMENT);
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

    double t0 = now_s();
    expect_req(b, len, 0, CDX_ERR_RESOURCE_EXHAUSTED, "memory budget");
    double dt = now_s() - t0;
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
        uint8_t *b = pb_pack(&req.base, &len);
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

static const uint8_t wrapped40[40] = {1, 2, 3};
static const uint8_t id16[16] = {0xAB};
static const float vec4[4] = {1, 2, 3, 4};

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
        uk.wrapped_key = wire_bin(wrapped40, 40);
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
        dl.confirm_id = wire_bin(id16, 16);
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
            it[i].vector = (float *)vec4;
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
        q.vectors = (float *)vec4;
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
    return pb_pack(&req.base, len);
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

/* A request with one body of the given kind, for the count and range tests. */
typedef struct reqs {
    Cipherdex__V1__Request req;
    Cipherdex__V1__CreateIndexRequest ci;
    Cipherdex__V1__AdoptKey ak;
    Cipherdex__V1__UnwrapKey uk;
    Cipherdex__V1__DeleteIndexRequest dl;
    Cipherdex__V1__TrainRequest tr;
    Cipherdex__V1__UpsertRequest up;
    Cipherdex__V1__QueryRequest q;
    Cipherdex__V1__GetRequest g;
    Cipherdex__V1__DeleteRequest de;
    Cipherdex__V1__ListIdsRequest li;
} reqs;

static void reqs_init(reqs *r, int body)
{
    cipherdex__v1__request__init(&r->req);
    cipherdex__v1__create_index_request__init(&r->ci);
    cipherdex__v1__adopt_key__init(&r->ak);
    cipherdex__v1__unwrap_key__init(&r->uk);
    cipherdex__v1__delete_index_request__init(&r->dl);
    cipherdex__v1__train_request__init(&r->tr);
    cipherdex__v1__upsert_request__init(&r->up);
    cipherdex__v1__query_request__init(&r->q);
    cipherdex__v1__get_request__init(&r->g);
    cipherdex__v1__delete_request__init(&r->de);
    cipherdex__v1__list_ids_request__init(&r->li);
    r->ci.name = r->dl.name = wire_str("docs");
    r->tr.index = r->up.index = r->q.index = r->g.index = r->de.index = r->li.index =
        wire_str("docs");
    r->ci.metric = wire_str("euclidean");
    r->ci.index_type = wire_str("ivfsq8");
    r->ci.dimension = 4;
    r->dl.confirm_id = wire_bin(id16, 16);
    r->q.n_vectors = 4;
    r->q.vectors = (float *)vec4;
    r->req.body_case = (Cipherdex__V1__Request__BodyCase)body;
    switch (body) {
    case CIPHERDEX__V1__REQUEST__BODY_CREATE_INDEX:
        r->req.create_index = &r->ci;
        break;
    case CIPHERDEX__V1__REQUEST__BODY_DELETE_INDEX:
        r->req.delete_index = &r->dl;
        break;
    case CIPHERDEX__V1__REQUEST__BODY_TRAIN:
        r->req.train = &r->tr;
        break;
    case CIPHERDEX__V1__REQUEST__BODY_UPSERT:
        r->req.upsert = &r->up;
        break;
    case CIPHERDEX__V1__REQUEST__BODY_QUERY:
        r->req.query = &r->q;
        break;
    case CIPHERDEX__V1__REQUEST__BODY_GET:
        r->req.get = &r->g;
        break;
    case CIPHERDEX__V1__REQUEST__BODY_DELETE:
        r->req.delete_ = &r->de;
        break;
    case CIPHERDEX__V1__REQUEST__BODY_LIST_IDS:
        r->req.list_ids = &r->li;
        break;
    }
}

static void expect_big(const reqs *r, cdx_err code, const char *needle)
{
    size_t len;
    uint8_t *b = pb_pack(&r->req.base, &len);
    expect_req(b, len, SIZE_MAX / 2, code, needle);
    free(b);
}

static void test_counts(void)
{
    reqs r;
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
    reqs_init(&r, CIPHERDEX__V1__REQUEST__BODY_UPSERT);
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
    reqs_init(&r, CIPHERDEX__V1__REQUEST__BODY_GET);
    r.g.ids = ids;
    r.g.n_ids = CDX_GET_BATCH_MAX;
    expect_big(&r, CDX_OK, NULL);
    r.g.n_ids = CDX_GET_BATCH_MAX + 1;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "get.ids: 10001 entries exceed the limit of 10000");
    r.g.n_ids = 0;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "get.ids: empty (required)");
    reqs_init(&r, CIPHERDEX__V1__REQUEST__BODY_DELETE);
    r.de.ids = ids;
    r.de.n_ids = CDX_GET_BATCH_MAX + 1;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "delete.ids: 10001 entries exceed");
    r.de.n_ids = 0;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "delete.ids: empty (required)");

    /* query: top_k, n_probes, vectors */
    reqs_init(&r, CIPHERDEX__V1__REQUEST__BODY_QUERY);
    r.q.top_k = CDX_TOPK_MAX;
    r.q.n_probes = CDX_NLISTS_MAX;
    expect_big(&r, CDX_OK, NULL);
    r.q.top_k = CDX_TOPK_MAX + 1;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "query.top_k: 1001 is out of range (0..1000)");
    r.q.top_k = 0;
    r.q.n_probes = CDX_NLISTS_MAX + 1;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "query.n_probes: 65537 is out of range");
    r.q.n_probes = 0;
    r.q.n_vectors = 0;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "query.vectors: empty (required)");
    r.q.n_vectors = 4;
    r.q.vectors = big;
    big[0] = -NAN;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "query.vectors: value 0 is not finite");
    big[0] = 0;

    /* create_index: dimension, n_lists, key sources */
    reqs_init(&r, CIPHERDEX__V1__REQUEST__BODY_CREATE_INDEX);
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
    r.ak.key_id = wire_bin(id16, 15);
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT,
               "create_index.adopt_key.key_id: must be exactly 16 bytes (got 15)");
    r.ak.key_id = wire_bin(id16, 16);
    expect_big(&r, CDX_OK, NULL);
    r.ci.key_source_case = CIPHERDEX__V1__CREATE_INDEX_REQUEST__KEY_SOURCE_UNWRAP_KEY;
    r.ci.unwrap_key = &r.uk;
    r.uk.kek_name = wire_str("kek");
    r.uk.wrapped_key = wire_bin(wrapped40, 39);
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT,
               "create_index.unwrap_key.wrapped_key: must be exactly 40 bytes (got 39)");
    r.uk.wrapped_key = wire_bin(wrapped40, 40);
    r.uk.kek_name = wire_str("");
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "create_index.unwrap_key.kek_name: empty");

    /* delete_index confirmation */
    reqs_init(&r, CIPHERDEX__V1__REQUEST__BODY_DELETE_INDEX);
    /* Absent passes the wire (the server answers FAILED_PRECONDITION: confirm with the id);
     * longer than an id does not. */
    r.dl.confirm_id = wire_bin(NULL, 0);
    expect_big(&r, CDX_OK, NULL);
    uint8_t id17[17] = {0};
    r.dl.confirm_id = wire_bin(id17, 17);
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "delete_index.confirm_id");

    /* train options */
    reqs_init(&r, CIPHERDEX__V1__REQUEST__BODY_TRAIN);
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
    reqs_init(&r, CIPHERDEX__V1__REQUEST__BODY_LIST_IDS);
    r.li.limit = CDX_LIST_PAGE_MAX;
    expect_big(&r, CDX_OK, NULL);
    r.li.limit = CDX_LIST_PAGE_MAX + 1;
    expect_big(&r, CDX_ERR_INVALID_ARGUMENT, "list_ids.limit: 10001 is out of range (0..10000)");

    free(items);
    free(ptrs);
    free(ids);
    free(big);
    free(idtext);
}

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
    uint8_t *orig = pb_pack(&req->base, &olen);

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
    again = pb_pack(&got->base, &alen);
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
    uint8_t *orig = pb_pack(&resp->base, &olen);

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
    again = pb_pack(&got->base, &alen);
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
    reqs r;
    Cipherdex__V1__Item it[2], *itp[2] = {&it[0], &it[1]};
    Cipherdex__V1__HealthRequest h = CIPHERDEX__V1__HEALTH_REQUEST__INIT;
    Cipherdex__V1__DescribeIndexRequest di = CIPHERDEX__V1__DESCRIBE_INDEX_REQUEST__INIT;
    Cipherdex__V1__ListIndexesRequest ll = CIPHERDEX__V1__LIST_INDEXES_REQUEST__INIT;
    Cipherdex__V1__GenerateKey gk = CIPHERDEX__V1__GENERATE_KEY__INIT;
    int bodies = 0;

    for (int body = CIPHERDEX__V1__REQUEST__BODY_HEALTH;
         body <= CIPHERDEX__V1__REQUEST__BODY_LIST_IDS; body++) {
        reqs_init(&r, body);
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
            r.ak.key_id = wire_bin(id16, 16);
            round_trip_request(&r.req);
            r.ci.key_source_case = CIPHERDEX__V1__CREATE_INDEX_REQUEST__KEY_SOURCE_UNWRAP_KEY;
            r.ci.unwrap_key = &r.uk;
            r.uk.kek_name = wire_str("prod-kek");
            r.uk.wrapped_key = wire_bin(wrapped40, 40);
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
        }
        round_trip_request(&r.req);
        bodies++;
    }
    CU_ASSERT_EQUAL(bodies, 11);
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
    ProtobufCBinaryData ids[2] = {wire_str("a"), wire_str("b")};
    ProtobufCBinaryData md[2] = {wire_str("{}"), wire_str("")};
    ProtobufCBinaryData ct[2] = {wire_bin("\0x", 2), wire_str("")};
    float dist[2] = {0.25f, 1.5f};
    float vecs[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    protobuf_c_boolean found[2] = {1, 0};

    info.name = wire_str("docs");
    info.state = wire_str("ready");
    info.id = wire_bin(id16, 16);
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
    h.token_ok = h.store_ok = 1;
    h.server_version = wire_str("0.1.0");
    h.uptime_s = 3600;
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
         body <= CIPHERDEX__V1__RESPONSE__BODY_LIST_IDS; body++) {
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
    uint8_t *b = pb_pack(&resp.base, &len);
    r = (wire_response *)1;
    CU_ASSERT_EQUAL(wire_response_unpack(b, len, 0, &r), CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NULL(r);
    CU_ASSERT_TRUE(detail_has("no status"));
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
    CU_ASSERT_TRUE(detail_has("list_ids.ids[0]: NUL byte"));
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
        {"utf8 table", test_utf8_table},
        {"utf8 differential", test_utf8_differential},
        {"decoder byte by byte", test_dec_byte_by_byte},
        {"decoder random chunks", test_dec_random_chunks},
        {"decoder one buffer", test_dec_one_buffer},
        {"decoder over cap", test_dec_over_cap},
        {"decoder first-frame cap", test_dec_first_cap},
        {"decoder truncated frame", test_dec_truncated},
        {"encoder", test_encode},
        {"allocator accounting", test_alloc_accounting},
        {"budget: million empty items", test_budget_million_items},
        {"budget: realistic upserts", test_budget_realistic},
        {"invalid protobuf", test_invalid_protobuf},
        {"bodies", test_bodies},
        {"text fields: NUL and UTF-8", test_text_fields},
        {"text fields terminated", test_text_terminated},
        {"lengths", test_lengths},
        {"counts and ranges", test_counts},
        {"round trip requests", test_round_trip_requests},
        {"round trip responses", test_round_trip_responses},
        {"response errors", test_response_errors},
        {"schema rules", test_schema},
        {"python client", test_python_client},
    };
    return fx_cunit_run1("wire", tests, FX_LEN(tests));
}
