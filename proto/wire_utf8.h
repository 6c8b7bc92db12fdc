/*
 * wire_utf8.h - strict UTF-8 validation for the contract's text fields.
 *
 * Strict means RFC 3629: no overlong encodings, no UTF-16 surrogates
 * (U+D800..U+DFFF), nothing above U+10FFFF, no truncated or stray
 * continuation bytes. Text on the wire also must not contain NUL (U+0000).
 */
#ifndef WIRE_UTF8_H
#define WIRE_UTF8_H

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
bool wire_utf8_valid(const uint8_t *s, size_t n, size_t *bad, const char **why);

/*
 * Length of the longest prefix of s[0..n) that is strict UTF-8 without NUL
 * (for cutting a message at a character boundary).
 */
size_t wire_utf8_prefix(const uint8_t *s, size_t n);

#endif
