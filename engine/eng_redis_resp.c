/*
 * eng_redis_resp.c - sans-IO reader for one scalar RESP2 reply (see eng_redis_resp.h).
 *
 * States: the type byte, then either a header line ("$<len>" / ":<int>")
 * or a text line ("+..." / "-..."), then for a bulk string its payload and
 * the CRLF after it. Lines must end in CRLF; a lone CR or LF is an error
 * (Redis never sends one in these lines), as is anything else Redis would
 * not send: a sign or space in a length, digits past what fits, a payload
 * not followed by CRLF.
 */
#include "eng_redis_resp.h"

#include <stdlib.h>
#include <string.h>

enum {
    ST_TYPE,    /* waiting for the type byte */
    ST_HDR,     /* "$" / ":" digits until CR */
    ST_HDR_LF,  /* LF after the header's CR */
    ST_LINE,    /* "+" / "-" text until CR */
    ST_LINE_LF, /* LF after the text's CR */
    ST_PAYLOAD, /* bulk bytes */
    ST_CR,      /* CR after the payload */
    ST_LF,      /* LF after the payload */
    ST_DONE,
    ST_ERR,
};

/* Longest header: "-9223372036854775808" (20); a 20-digit length is refused by value. */
#define HDR_MAX 20

void eng_resp_reset(eng_resp *p)
{
    free(p->data);
    memset(p, 0, sizeof(*p));
}

void eng_resp_begin(eng_resp *p, uint64_t bound)
{
    eng_resp_reset(p);
    p->bound = bound;
    p->state = ST_TYPE;
}

static eng_resp_status fail(eng_resp *p, eng_resp_status e, const char *why)
{
    p->state = ST_ERR;
    p->err = e;
    p->why = why;
    free(p->data); /* a half-read payload is of no use to anyone */
    p->data = NULL;
    return e;
}

/* Digits only, at least one; saturates at UINT64_MAX. */
static bool parse_u64(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;

    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned)(s[i] - '0');
        if (d > 9)
            return false;
        v = v > (UINT64_MAX - d) / 10 ? UINT64_MAX : v * 10 + d;
    }
    *out = v;
    return true;
}

/* The header line is complete: interpret it. */
static eng_resp_status header_done(eng_resp *p)
{
    const char *h = p->hdr;
    size_t n = p->hdr_len;
    uint64_t v;

    if (p->type == ':') {
        bool neg = n > 0 && h[0] == '-';
        if (!parse_u64(h + neg, n - neg, &v) ||
            v > (neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX))
            return fail(p, ENG_RESP_EPROTO, "bad integer");
        p->integer = !neg ? (long long)v : v == 0 ? 0 : -(long long)(v - 1) - 1;
        p->kind = ENG_RESP_INT;
        p->state = ST_DONE;
        return ENG_RESP_DONE;
    }
    if (n == 2 && h[0] == '-' && h[1] == '1') {
        p->kind = ENG_RESP_NIL;
        p->state = ST_DONE;
        return ENG_RESP_DONE;
    }
    if (!parse_u64(h, n, &v))
        return fail(p, ENG_RESP_EPROTO, "bad bulk length");
    /* The announcement is only the server's word: check it before allocating for it. */
    if (v > p->bound || v > SIZE_MAX - 1) {
        p->announced = v;
        return fail(p, ENG_RESP_ETOOBIG, "bulk longer than the bound");
    }
    p->data = malloc((size_t)v + 1);
    if (!p->data)
        return fail(p, ENG_RESP_ENOMEM, "out of memory");
    p->data[v] = '\0';
    p->len = (size_t)v;
    p->got = 0;
    p->kind = ENG_RESP_BULK;
    p->state = v ? ST_PAYLOAD : ST_CR;
    return ENG_RESP_MORE;
}

eng_resp_status eng_resp_feed(eng_resp *p, const uint8_t *buf, size_t n, size_t *used)
{
    size_t i = 0;
    eng_resp_status st = ENG_RESP_MORE;

    *used = 0;
    if (p->state == ST_ERR)
        return p->err;
    while (i < n && st == ENG_RESP_MORE) {
        uint8_t c = buf[i];
        switch (p->state) {
        case ST_TYPE:
            i++;
            p->type = (char)c;
            if (c == '$' || c == ':')
                p->state = ST_HDR;
            else if (c == '+' || c == '-')
                p->state = ST_LINE;
            else if (c == '*')
                st = fail(p, ENG_RESP_ETYPE, "array reply");
            else
                st = fail(p, ENG_RESP_EPROTO, "unknown reply type byte");
            break;
        case ST_HDR:
            i++;
            if (c == '\r')
                p->state = ST_HDR_LF;
            else if (p->hdr_len >= HDR_MAX || c == '\n')
                st = fail(p, ENG_RESP_EPROTO, "bad header line");
            else
                p->hdr[p->hdr_len++] = (char)c;
            break;
        case ST_HDR_LF:
            i++;
            st = c == '\n' ? header_done(p) : fail(p, ENG_RESP_EPROTO, "CR without LF");
            break;
        case ST_LINE: {
            /* Text up to the CR in one step; only the first ENG_RESP_TEXT_MAX bytes are kept. */
            const uint8_t *cr = memchr(buf + i, '\r', n - i);
            size_t m = cr ? (size_t)(cr - (buf + i)) : n - i;
            if (memchr(buf + i, '\n', m) || p->line_len + m > ENG_RESP_LINE_MAX) {
                st = fail(p, ENG_RESP_EPROTO, "bad text line");
                break;
            }
            if (p->len < ENG_RESP_TEXT_MAX) {
                size_t keep = ENG_RESP_TEXT_MAX - p->len < m ? ENG_RESP_TEXT_MAX - p->len : m;
                memcpy(p->text + p->len, buf + i, keep);
                p->len += keep;
                p->text[p->len] = '\0';
            }
            p->line_len += m;
            i += m;
            if (cr) {
                i++;
                p->state = ST_LINE_LF;
            }
            break;
        }
        case ST_LINE_LF:
            i++;
            if (c != '\n') {
                st = fail(p, ENG_RESP_EPROTO, "CR without LF");
                break;
            }
            p->kind = p->type == '+' ? ENG_RESP_STATUS : ENG_RESP_ERROR;
            p->state = ST_DONE;
            st = ENG_RESP_DONE;
            break;
        case ST_PAYLOAD: {
            size_t m = p->len - p->got < n - i ? p->len - p->got : n - i;
            memcpy(p->data + p->got, buf + i, m);
            i += m;
            eng_resp_commit(p, m);
            break;
        }
        case ST_CR:
            i++;
            if (c == '\r')
                p->state = ST_LF;
            else
                st = fail(p, ENG_RESP_EPROTO, "payload not followed by CRLF");
            break;
        case ST_LF:
            i++;
            if (c == '\n') {
                p->state = ST_DONE;
                st = ENG_RESP_DONE;
            } else {
                st = fail(p, ENG_RESP_EPROTO, "payload not followed by CRLF");
            }
            break;
        case ST_DONE:
            st = ENG_RESP_DONE;
            break;
        default:
            st = fail(p, ENG_RESP_EPROTO, "reader not started");
            break;
        }
    }
    if (p->state == ST_DONE)
        st = ENG_RESP_DONE;
    *used = i;
    return st;
}

size_t eng_resp_room(eng_resp *p, uint8_t **dst)
{
    if (p->state != ST_PAYLOAD) {
        *dst = NULL;
        return 0;
    }
    *dst = p->data + p->got;
    return p->len - p->got;
}

void eng_resp_commit(eng_resp *p, size_t n)
{
    if (p->state != ST_PAYLOAD)
        return;
    p->got += n < p->len - p->got ? n : p->len - p->got;
    if (p->got == p->len)
        p->state = ST_CR;
}
