/*
 * test_frame.c - the sans-IO frame decoder and encoder (proto/wire_frame.h):
 * frames fed byte by byte, in random chunks and in one buffer; caps on the
 * first and on later frames; truncated frames; the encoder.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>

#include "cdx_err.h"
#include "cdx_limits.h"
#include "fx_cunit.h"
#include "fx_rand.h"
#include "wire_frame.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

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
    switch (fx_splitmix64(&rng_state) % 4) {
    case 0:
        return 1 + fx_splitmix64(&rng_state) % 3;
    case 1:
        return 1 + fx_splitmix64(&rng_state) % 64;
    case 2:
        return 1 + fx_splitmix64(&rng_state) % 5000;
    default:
        return 1 + fx_splitmix64(&rng_state) % 150000;
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
    CU_ASSERT_TRUE(fx_detail_has("1001 bytes exceeds the cap of 1000"));
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
    CU_ASSERT_TRUE(fx_detail_has("for the first frame"));
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

/* ---- main --------------------------------------------------------------- */

int main(void)
{
    static const fx_test tests[] = {
        {"decoder byte by byte", test_dec_byte_by_byte},
        {"decoder random chunks", test_dec_random_chunks},
        {"decoder one buffer", test_dec_one_buffer},
        {"decoder over cap", test_dec_over_cap},
        {"decoder first-frame cap", test_dec_first_cap},
        {"decoder truncated frame", test_dec_truncated},
        {"encoder", test_encode},
    };
    return fx_cunit_run1("frame", tests, FX_LEN(tests));
}
