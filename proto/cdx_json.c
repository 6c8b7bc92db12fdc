#include "cdx_json.h"

#include <stdint.h>
#include <string.h>

#include "cdx_utf8.h"

/* The escaped form of one input character at s[0..n) into e (>= 7 bytes); returns its length. */
static size_t escape_one(const uint8_t *s, size_t n, char *e, size_t *in)
{
    static const char hex[] = "0123456789abcdef";
    uint8_t c = s[0];

    *in = 1;
    char two = 0; /* the letter of a two-character escape */
    switch (c) {
    case '"':
    case '\\':
        two = (char)c;
        break;
    case '\n':
        two = 'n';
        break;
    case '\r':
        two = 'r';
        break;
    case '\t':
        two = 't';
        break;
    default:
        break;
    }
    if (two) {
        e[0] = '\\';
        e[1] = two;
        return 2;
    }
    if (c < 0x20 || c == 0x7f) {
        memcpy(e, "\\u00", 4);
        e[4] = hex[c >> 4];
        e[5] = hex[c & 15];
        return 6;
    }
    if (c < 0x80) {
        e[0] = (char)c;
        return 1;
    }
    size_t l = cdx_utf8_char_len(s, n, NULL);
    if (l == 0) {
        memcpy(e, "\\ufffd", 6);
        return 6;
    }
    memcpy(e, s, l);
    *in = l;
    return l;
}

size_t cdx_json_escape(char *out, size_t cap, const char *s, size_t n, size_t *consumed)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t o = 0, i = 0;

    if (cap == 0) {
        if (consumed)
            *consumed = 0;
        return 0;
    }
    while (i < n) {
        char e[8];
        size_t in, l = escape_one(p + i, n - i, e, &in);
        if (o + l >= cap)
            break;
        memcpy(out + o, e, l);
        o += l;
        i += in;
    }
    out[o] = '\0';
    if (consumed)
        *consumed = i;
    return o;
}

int cdx_json_fput(FILE *f, const char *s, size_t n)
{
    char buf[512];

    if (fputc('"', f) == EOF)
        return EOF;
    while (n > 0) {
        size_t used, w = cdx_json_escape(buf, sizeof(buf), s, n, &used);
        if (fwrite(buf, 1, w, f) != w)
            return EOF;
        s += used;
        n -= used;
    }
    return fputc('"', f) == EOF ? EOF : 0;
}
