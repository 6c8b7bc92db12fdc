/*
 * test_utf8.c - strict UTF-8 (proto/cdx_utf8.h): a table of the edge cases
 * with the offset and reason of each refusal, and a differential test
 * against a reference decoder on random bytes.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>

#include "cdx_utf8.h"
#include "fx_cunit.h"
#include "fx_rand.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

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
        size_t n = fx_splitmix64(&rng_state) % sizeof(s);
        for (size_t i = 0; i < n; i++)
            s[i] = (fx_splitmix64(&rng_state) & 3) ? pool[fx_splitmix64(&rng_state) % sizeof(pool)]
                                                   : (uint8_t)fx_splitmix64(&rng_state);
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

/* ---- main --------------------------------------------------------------- */

int main(void)
{
    static const fx_test tests[] = {
        {"utf8 table", test_utf8_table},
        {"utf8 differential", test_utf8_differential},
    };
    return fx_cunit_run1("utf8", tests, FX_LEN(tests));
}
