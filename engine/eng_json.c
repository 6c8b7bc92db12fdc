/*
 * eng_json.c - strict JSON parsing for item metadata and filters.
 */
#include "eng_json.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cdx_limits.h"

const char *eng_json_type_name(const json_t *j)
{
    switch (j ? json_typeof(j) : JSON_NULL) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
    default:
        return "null";
    }
}

/*
 * Nesting depth of the brackets outside strings, checked before jansson sees
 * the text: jansson recurses once per level (up to 2048), and a cheap linear
 * scan keeps that recursion off the table for hostile input. Exact for valid
 * JSON; for invalid JSON either this or jansson reports an error.
 */
static cdx_err check_depth(const char *text, size_t len)
{
    size_t depth = 0;
    size_t line = 1, col = 0;
    bool in_str = false, esc = false;

    for (size_t i = 0; i < len; i++) {
        char c = text[i];

        col++;
        if (c == '\n') {
            line++;
            col = 0;
        }
        if (in_str) {
            if (esc)
                esc = false;
            else if (c == '\\')
                esc = true;
            else if (c == '"')
                in_str = false;
            continue;
        }
        if (c == '"') {
            in_str = true;
        } else if (c == '{' || c == '[') {
            if (++depth > CDX_JSON_DEPTH_MAX)
                return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                                "JSON nesting deeper than %d levels at line %zu column %zu",
                                CDX_JSON_DEPTH_MAX, line, col);
        } else if ((c == '}' || c == ']') && depth > 0) {
            depth--;
        }
    }
    return CDX_OK;
}

/*
 * NUL anywhere in a string or key. jansson already refuses \u0000 unless
 * JSON_ALLOW_NUL is given; this keeps the guarantee if flags ever change
 * (C string users downstream would silently truncate). Recursion is bounded
 * by the depth check.
 */
static bool has_nul(const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_STRING:
        return strlen(json_string_value(j)) != json_string_length(j);
    case JSON_ARRAY:
        for (size_t i = 0; i < json_array_size(j); i++) {
            if (has_nul(json_array_get(j, i)))
                return true;
        }
        return false;
    case JSON_OBJECT:
        for (void *it = json_object_iter((json_t *)j); it;
             it = json_object_iter_next((json_t *)j, it)) {
            if (strlen(json_object_iter_key(it)) != json_object_iter_key_len(it) ||
                has_nul(json_object_iter_value(it)))
                return true;
        }
        return false;
    default:
        return false;
    }
}

cdx_err eng_json_parse_object(const char *text, size_t len, size_t max_len, json_t **out)
{
    json_error_t jerr;
    json_t *j = NULL;
    cdx_err err;

    *out = NULL;
    if (!text && len > 0)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "JSON text is NULL");
    if (len > max_len)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "JSON text is %zu bytes; the limit is %zu", len,
                        max_len);
    if (len == 0)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "JSON text is empty; expected an object");
    err = check_depth(text, len);
    if (err != CDX_OK)
        return err;

    /* JSON_DECODE_ANY so that a scalar gets our "must be an object" message. */
    j = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!j) {
        switch (json_error_code(&jerr)) {
        case json_error_out_of_memory:
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory parsing JSON");
        case json_error_null_character:
        case json_error_null_byte_in_key:
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                            "JSON string contains \\u0000 (NUL is not allowed) at line %d "
                            "column %d",
                            jerr.line, jerr.column);
        default:
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "invalid JSON at line %d column %d: %s",
                            jerr.line, jerr.column, jerr.text);
        }
    }
    if (!json_is_object(j)) {
        err = cdx_fail(CDX_ERR_INVALID_ARGUMENT, "JSON text must be an object, got %s",
                       eng_json_type_name(j));
        goto out;
    }
    if (has_nul(j)) {
        err =
            cdx_fail(CDX_ERR_INVALID_ARGUMENT, "JSON string contains \\u0000 (NUL is not allowed)");
        goto out;
    }
    *out = j;
    j = NULL;
    err = CDX_OK;
out:
    json_decref(j);
    return err;
}

char *eng_json_canonical(const json_t *j)
{
    if (!j)
        return NULL;
    /* jansson keeps object keys in insertion order (2.8+): no sorting, so a
     * client reads its metadata back in the order it wrote it. */
    return json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
}
