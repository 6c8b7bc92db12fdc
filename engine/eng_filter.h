/*
 * eng_filter.h - Mongo-style metadata filters (docs/FILTERS.md).
 *
 * A filter is JSON text such as {"price": {"$gt": 5}, "tags": "red"}. It is
 * parsed once into a small tree (eng_filter) and then evaluated against the
 * metadata object of every candidate of the probed clusters, before top-k.
 * Operators: $eq $ne $gt $gte $lt $lte $in $nin $exists $and $or $not; dot
 * paths into nested objects. docs/FILTERS.md has the full rule table.
 *
 * A compiled filter is immutable: eng_filter_match may be called from many
 * threads at once on the same filter.
 */
#ifndef ENG_FILTER_H
#define ENG_FILTER_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "cdx_err.h"

/* Most values in one $in / $nin array (they also count toward CDX_FILTER_NODES_MAX). */
#define ENG_FILTER_IN_MAX 1024

typedef struct eng_filter eng_filter;

/*
 * Parse and compile a filter. `text` holds `len` bytes (not NUL-terminated).
 * Empty text (len 0) and "{}" give a filter that matches everything.
 *
 * Limits: len <= CDX_FILTER_TEXT_MAX, JSON nesting <= CDX_JSON_DEPTH_MAX,
 * nodes <= CDX_FILTER_NODES_MAX (each $and/$or/$not counts 1; each other
 * operator, including the implicit $eq of {"field": value}, counts 1 plus 1
 * per operand: 1 for a single value, n for an $in/$nin array of n values).
 *
 * Errors: CDX_ERR_INVALID_ARGUMENT for any malformed filter (bad JSON, limit
 * exceeded, unknown operator, wrong operand type, empty field name or path
 * segment, field name starting with '$', operators mixed with plain keys);
 * the detail starts with "filter: " and names the operator and location, e.g.
 * "filter: $gt at .price expects a number or string, got an array".
 * CDX_ERR_RESOURCE_EXHAUSTED when memory runs out. *out is NULL on error.
 */
cdx_err eng_filter_parse(const char *text, size_t len, eng_filter **out);

/*
 * Does `metadata` (a JSON object from eng_json_parse_object, or NULL for an
 * item without metadata, which behaves as {}) satisfy the filter? A NULL
 * filter matches everything. Never fails; thread-safe.
 */
bool eng_filter_match(const eng_filter *f, const json_t *metadata);

/* True when the filter has no condition (NULL, empty text or "{}"): callers may skip it. */
bool eng_filter_is_trivial(const eng_filter *f);

/* Free a filter; NULL is a no-op. */
void eng_filter_free(eng_filter *f);

#endif
