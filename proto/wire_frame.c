#include "wire_frame.h"

#include <stdlib.h>
#include <string.h>

struct wire_dec {
    size_t max_frame;
    size_t first_max; /* cap of the first frame (= max_frame unless set) */
    uint8_t hdr[CDX_FRAME_HDR_LEN];
    size_t hdr_have;  /* header bytes of the current frame */
    size_t body_len;  /* announced length (valid once hdr_have == 4) */
    size_t body_have; /* body bytes received */
    uint8_t *body;    /* grows with body_have; NULL for an empty frame */
    size_t body_cap;
    bool ready;      /* complete frame waiting to be taken */
    bool failed;     /* an over-cap length was announced: stream lost */
    bool started;    /* any byte fed */
    uint64_t frames; /* frames completed */
    size_t bad_len;  /* the length that failed (for the detail) */
};

wire_dec *wire_dec_new(size_t max_frame)
{
    if (max_frame == 0)
        max_frame = CDX_FRAME_MAX_DEFAULT;
    if (max_frame > CDX_FRAME_MAX_LIMIT)
        return NULL;
    wire_dec *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->max_frame = max_frame;
    d->first_max = max_frame;
    return d;
}

void wire_dec_free(wire_dec *d)
{
    if (!d)
        return;
    free(d->body);
    free(d);
}

cdx_err wire_dec_set_first_max(wire_dec *d, size_t first_max)
{
    if (first_max == 0 || first_max > d->max_frame)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                        "first-frame cap %zu must be between 1 and the frame cap %zu", first_max,
                        d->max_frame);
    if (d->started)
        return cdx_fail(CDX_ERR_FAILED_PRECONDITION,
                        "first-frame cap must be set before any byte is fed");
    d->first_max = first_max;
    return CDX_OK;
}

static size_t current_cap(const wire_dec *d)
{
    return d->frames == 0 ? d->first_max : d->max_frame;
}

static cdx_err too_large(const wire_dec *d)
{
    return cdx_fail(CDX_ERR_FRAME_TOO_LARGE, "frame of %zu bytes exceeds the cap of %zu bytes%s",
                    d->bad_len, current_cap(d), d->frames == 0 ? " for the first frame" : "");
}

/* Make room for `more` body bytes: grow geometrically, never past body_len. */
static cdx_err reserve(wire_dec *d, size_t more)
{
    size_t need = d->body_have + more;
    if (need <= d->body_cap)
        return CDX_OK;
    size_t cap = d->body_cap ? d->body_cap : CDX_FRAME_BUF_INITIAL;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (cap > d->body_len)
        cap = d->body_len;
    uint8_t *p = realloc(d->body, cap);
    if (!p)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory for a frame of %zu bytes",
                        d->body_len);
    d->body = p;
    d->body_cap = cap;
    return CDX_OK;
}

cdx_err wire_dec_feed(wire_dec *d, const uint8_t *buf, size_t len, size_t *used)
{
    size_t off = 0;
    cdx_err err = CDX_OK;

    *used = 0;
    if (d->failed)
        return too_large(d);
    if (d->ready)
        return cdx_fail(CDX_ERR_FAILED_PRECONDITION, "a complete frame is waiting to be taken");
    if (!buf && len)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "NULL input buffer");
    if (len)
        d->started = true;

    if (d->hdr_have < CDX_FRAME_HDR_LEN) {
        size_t n = CDX_FRAME_HDR_LEN - d->hdr_have;
        if (n > len)
            n = len;
        memcpy(d->hdr + d->hdr_have, buf, n);
        d->hdr_have += n;
        off += n;
        if (d->hdr_have < CDX_FRAME_HDR_LEN)
            goto out;
        d->body_len = (size_t)d->hdr[0] << 24 | (size_t)d->hdr[1] << 16 | (size_t)d->hdr[2] << 8 |
                      (size_t)d->hdr[3];
        /* The check that matters: before any allocation. */
        if (d->body_len > current_cap(d)) {
            d->failed = true;
            d->bad_len = d->body_len;
            err = too_large(d);
            goto out;
        }
    }
    size_t n = d->body_len - d->body_have;
    if (n > len - off)
        n = len - off;
    if (n) {
        if ((err = reserve(d, n)))
            goto out;
        memcpy(d->body + d->body_have, buf + off, n);
        d->body_have += n;
        off += n;
    }
    if (d->body_have == d->body_len) {
        d->ready = true;
        d->frames++;
    }
out:
    *used = off;
    return err;
}

bool wire_dec_ready(const wire_dec *d)
{
    return d->ready;
}

cdx_err wire_dec_take(wire_dec *d, uint8_t **body, size_t *len)
{
    *body = NULL;
    *len = 0;
    if (!d->ready)
        return cdx_fail(CDX_ERR_NOT_FOUND, "no complete frame yet (%zu bytes pending)",
                        wire_dec_pending(d));
    *body = d->body;
    *len = d->body_len;
    d->body = NULL;
    d->body_cap = 0;
    d->body_len = 0;
    d->body_have = 0;
    d->hdr_have = 0;
    d->ready = false;
    return CDX_OK;
}

size_t wire_dec_pending(const wire_dec *d)
{
    if (d->ready)
        return 0;
    return d->hdr_have + d->body_have;
}

size_t wire_dec_missing(const wire_dec *d)
{
    if (d->ready)
        return 0;
    if (d->hdr_have < CDX_FRAME_HDR_LEN)
        return CDX_FRAME_HDR_LEN - d->hdr_have;
    return d->body_len - d->body_have;
}

size_t wire_dec_buffered(const wire_dec *d)
{
    return d->body_cap;
}

uint64_t wire_dec_frames(const wire_dec *d)
{
    return d->frames;
}

void wire_frame_header(uint32_t len, uint8_t hdr[CDX_FRAME_HDR_LEN])
{
    hdr[0] = (uint8_t)(len >> 24);
    hdr[1] = (uint8_t)(len >> 16);
    hdr[2] = (uint8_t)(len >> 8);
    hdr[3] = (uint8_t)len;
}

cdx_err wire_frame_encode(const uint8_t *body, size_t len, size_t max_frame, uint8_t **out,
                          size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    if (max_frame == 0)
        max_frame = CDX_FRAME_MAX_DEFAULT;
    if (!body && len)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "NULL frame body");
    if (len > max_frame || len > UINT32_MAX)
        return cdx_fail(CDX_ERR_FRAME_TOO_LARGE,
                        "message of %zu bytes exceeds the cap of %zu bytes", len, max_frame);
    uint8_t *f = malloc(CDX_FRAME_HDR_LEN + len);
    if (!f)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory for a frame of %zu bytes", len);
    wire_frame_header((uint32_t)len, f);
    if (len)
        memcpy(f + CDX_FRAME_HDR_LEN, body, len);
    *out = f;
    *out_len = CDX_FRAME_HDR_LEN + len;
    return CDX_OK;
}
