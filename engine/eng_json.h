/*
 * eng_json.h - strict JSON parsing for item metadata and filters (jansson).
 *
 * Metadata and filters arrive as JSON text (docs/WIRE.md, docs/FILTERS.md). They are parsed
 * strictly: one JSON object, bounded length and nesting depth, no duplicate
 * keys, valid UTF-8, no NUL in strings or keys, numbers within int64 (integers)
 * or finite doubles (reals).
 */
#ifndef ENG_JSON_H
#define ENG_JSON_H

#include <stddef.h>

#include <jansson.h>

#include "cdx_err.h"

/*
 * Parse `len` bytes of `text` (not NUL-terminated) into a JSON object.
 *
 * Accepted: exactly one JSON object, `len <= max_len`, containers nested at
 * most CDX_JSON_DEPTH_MAX deep (`{}` is depth 1; `{"a":{}}` depth 2), no
 * duplicate object keys, valid UTF-8, no NUL (raw or \u0000) in any string or
 * key. Integers outside int64 and reals outside the double range are
 * rejected. The depth is checked by a scan of the text before jansson parses
 * it, so hostile nesting never reaches jansson's recursive parser.
 *
 * On success *out is a new reference (json_decref it). On failure *out is
 * NULL and the result is CDX_ERR_INVALID_ARGUMENT (text NULL with len > 0,
 * too long, too deep, not JSON, not an object, duplicate key, NUL, bad UTF-8,
 * number out of range; the detail names the cause and line/column) or
 * CDX_ERR_RESOURCE_EXHAUSTED (out of memory while parsing).
 */
cdx_err eng_json_parse_object(const char *text, size_t len, size_t max_len, json_t **out);

/*
 * Compact JSON text of `j` (any JSON value), object keys in insertion order
 * (the order they were parsed in). Returns a malloc'ed NUL-terminated string
 * the caller frees with free(), or NULL when j is NULL or memory runs out.
 */
char *eng_json_canonical(const json_t *j);

/* "an object", "an array", "a string", "a number", "a boolean", "null" (for messages). */
const char *eng_json_type_name(const json_t *j);

#endif
