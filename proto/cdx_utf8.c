#include "cdx_utf8.h"

/*
 * Lead byte ranges and second-byte constraints as in RFC 3629's table:
 *   00..7F
 *   C2..DF 80..BF
 *   E0     A0..BF 80..BF      (E0 80..9F would be overlong)
 *   E1..EC 80..BF 80..BF
 *   ED     80..9F 80..BF      (ED A0..BF would be a surrogate)
 *   EE..EF 80..BF 80..BF
 *   F0     90..BF 80..BF 80..BF  (F0 80..8F overlong)
 *   F1..F3 80..BF 80..BF 80..BF
 *   F4     80..8F 80..BF 80..BF  (F4 90.. above U+10FFFF)
 */
size_t cdx_utf8_char_len(const uint8_t *s, size_t n, const char **why)
{
    const char *ignored;
    if (!why)
        why = &ignored;
    if (n == 0) {
        *why = "truncated sequence";
        return 0;
    }
    uint8_t c = s[0];
    size_t len;
    uint8_t lo = 0x80, hi = 0xBF; /* range of the second byte */

    if (c == 0) {
        *why = "NUL byte";
        return 0;
    }
    if (c < 0x80)
        return 1;
    if (c < 0xC0) {
        *why = "unexpected continuation byte";
        return 0;
    }
    if (c < 0xC2) {
        *why = "overlong encoding";
        return 0;
    }
    if (c < 0xE0) {
        len = 2;
    } else if (c < 0xF0) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c < 0xF5) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        *why = "code point above U+10FFFF";
        return 0;
    }
    if (n < 2) {
        *why = "truncated sequence";
        return 0;
    }
    if (s[1] < lo || s[1] > hi) {
        if (s[1] < 0x80 || s[1] > 0xBF)
            *why = "truncated sequence";
        else if (c == 0xE0 || c == 0xF0)
            *why = "overlong encoding";
        else if (c == 0xED)
            *why = "surrogate";
        else
            *why = "code point above U+10FFFF";
        return 0;
    }
    for (size_t i = 2; i < len; i++) {
        if (i >= n || s[i] < 0x80 || s[i] > 0xBF) {
            *why = "truncated sequence";
            return 0;
        }
    }
    return len;
}

bool cdx_utf8_valid(const uint8_t *s, size_t n, size_t *bad, const char **why)
{
    const char *w = NULL;
    size_t i = 0;

    while (i < n) {
        /* ASCII fast path, 8 bytes at a time. */
        while (n - i >= 8) {
            uint64_t v = 0;
            for (int k = 0; k < 8; k++)
                v |= (uint64_t)s[i + (size_t)k] << (8 * k);
            /* any byte >= 0x80 or == 0x00 leaves the fast path */
            if ((v & 0x8080808080808080ull) ||
                ((v - 0x0101010101010101ull) & ~v & 0x8080808080808080ull))
                break;
            i += 8;
        }
        if (i >= n)
            break;
        size_t l = cdx_utf8_char_len(s + i, n - i, &w);
        if (!l) {
            if (bad)
                *bad = i;
            if (why)
                *why = w;
            return false;
        }
        i += l;
    }
    return true;
}

size_t cdx_utf8_prefix(const uint8_t *s, size_t n)
{
    const char *w;
    size_t i = 0;

    while (i < n) {
        size_t l = cdx_utf8_char_len(s + i, n - i, &w);
        if (!l)
            break;
        i += l;
    }
    return i;
}
