/*
 * cdx_hex.h - lower-case hex for ids, KCVs and tokens in logs, labels and CLIs.
 */
#ifndef CDX_HEX_H
#define CDX_HEX_H

#include <stddef.h>
#include <stdint.h>

/* Write 2n lower-case hex digits and a NUL into out (2n + 1 bytes). */
void cdx_hex_encode(const uint8_t *b, size_t n, char *out);

/* Decode exactly 2n hex digits (either case) from s; returns 0, or -1 if s is not that. */
int cdx_hex_decode(const char *s, uint8_t *out, size_t n);

#endif
