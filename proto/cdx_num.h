/*
 * cdx_num.h - decimal numbers from command lines: no minus sign, no suffix,
 * nothing after the digits. Shared by the CLI and the admin tool.
 */
#ifndef CDX_NUM_H
#define CDX_NUM_H

#include <stdbool.h>
#include <stdint.h>

/* Parse s into *out; false (out unchanged) when s is not such a number in range. */
bool cdx_parse_u64(const char *s, uint64_t *out);
bool cdx_parse_u32(const char *s, uint32_t *out);

#endif
