/*
 * cdx_utf8.h - strict UTF-8 validation: the one validator for wire text fields,
 * item ids the engine stores, and what the CLIs print.
 *
 * Strict means RFC 3629: no overlong encodings, no UTF-16 surrogates
 * (U+D800..U+DFFF), nothing above U+10FFFF, no truncated or stray
 * continuation bytes. NUL (U+0000) is refused too: every text this project
 * validates is also handled as a C string somewhere.
 *
 * Pure functions: thread-safe, no allocation.
 */
#ifndef CDX_UTF8_H
#define CDX_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * True when s[0..n) is strict UTF-8 without NUL (n 0 is valid; s may then be
 * NULL). Otherwise false, with *bad (may be NULL) = offset of the first
 * offending byte and *why (may be NULL) = a short static reason ("NUL byte",
 * "overlong encoding", "surrogate", "code point above U+10FFFF", "truncated
 * sequence", "unexpected continuation byte", "invalid byte").
 */
bool cdx_utf8_valid(const uint8_t *s, size_t n, size_t *bad, const char **why);

/*
 * Length of the longest prefix of s[0..n) that is strict UTF-8 without NUL
 * (for cutting a message at a character boundary).
 */
size_t cdx_utf8_prefix(const uint8_t *s, size_t n);

/*
 * Length (1-4) of the one strict UTF-8 character at s[0..n), or 0 when the
 * bytes there are not one (NUL, n == 0, or any of the reasons above), with
 * *why (may be NULL) = the short static reason.
 */
size_t cdx_utf8_char_len(const uint8_t *s, size_t n, const char **why);

#endif
