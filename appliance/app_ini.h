/*
 * app_ini.h - INI configuration files (libinih) with exact line numbers, and
 * the strict value parsers every section loader shares.
 */
#ifndef APP_INI_H
#define APP_INI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cdx_err.h"

/*
 * One key of an INI file for a section handler. Return CDX_OK, or an error
 * with a cdx_fail detail that says what is wrong (the loader prefixes
 * file:line).
 */
typedef cdx_err (*app_ini_fn)(void *user, unsigned line, const char *section, const char *key,
                              const char *value);

/*
 * Parse an INI file with libinih, calling fn for every key of every
 * section, with exact line numbers. Stops at the first error; syntax errors
 * and lines too long for libinih are reported too.
 * Errors: CDX_ERR_CONFIG (detail "path:line: ..."; "path: ..." when the file
 * cannot be opened), or whatever fn returned (its detail prefixed likewise).
 */
cdx_err app_ini_load(const char *path, app_ini_fn fn, void *user);

/* yes/no, true/false, on/off, 1/0 (any case). Errors: CDX_ERR_CONFIG ("key: ..."). */
cdx_err app_ini_bool(const char *key, const char *v, bool *out);

/*
 * Decimal digits only (no sign, no spaces, no hex), at most max;
 * allow_suffix permits K, M or G (binary multiples, also KiB/MiB/GiB) for
 * sizes. Errors: CDX_ERR_CONFIG ("key: ...").
 */
cdx_err app_ini_uint(const char *key, const char *v, uint64_t max, bool allow_suffix,
                     uint64_t *out);

/* Copy v into dst (cap bytes with the NUL). Errors: CDX_ERR_CONFIG when it does not fit. */
cdx_err app_ini_str(const char *key, const char *v, char *dst, size_t cap);

#endif
