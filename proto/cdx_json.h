/*
 * cdx_json.h - JSON string escaping: the one escaper behind the JSON log lines
 * and the CLIs' --json output (which do not otherwise need a JSON library).
 *
 * Whatever the input, the output is valid JSON: '"', '\\' and control
 * characters (below 0x20, and 0x7f) are escaped (\" \\ \n \r \t, else
 * \u00XX), and bytes that are not strict UTF-8 (cdx_utf8.h) become \ufffd,
 * one per offending byte.
 *
 * Thread-safe; no allocation.
 */
#ifndef CDX_JSON_H
#define CDX_JSON_H

#include <stddef.h>
#include <stdio.h>

/*
 * Escape s[0..n) (the inside of a JSON string, without quotes) into
 * out[0..cap), NUL-terminated; an escape is never cut in half: output stops
 * at the last whole character that fits. Returns the bytes written (without
 * the NUL); *consumed (may be NULL) = input bytes taken. cap 0 writes nothing.
 */
size_t cdx_json_escape(char *out, size_t cap, const char *s, size_t n, size_t *consumed);

/* Write s[0..n) to f as one quoted JSON string. Returns 0, or EOF on a write error. */
int cdx_json_fput(FILE *f, const char *s, size_t n);

#endif
