/*
 * app_out.h - what the command-line tools print: one record as aligned
 * "key  value" lines or one JSON object, a table with column widths from a
 * first pass, and JSON strings and keys for hand-built JSON.
 *
 * JSON strings go through cdx_json (proto/cdx_json.h): '"', '\\' and
 * control characters are escaped, and bytes that are not strict UTF-8 print
 * as \ufffd, so the output is valid JSON whatever a token or a server sends.
 *
 * Every function writes to the FILE it is given and reports nothing: the
 * caller checks ferror()/fflush() once at the end, so a listing cut short
 * does not look like success. Thread-safe as far as stdio is (each call
 * makes several writes: do not share one FILE between threads printing at
 * once). No allocation.
 */
#ifndef APP_OUT_H
#define APP_OUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

/* Largest table cell, including its NUL (longer cells are cut by the cell function). */
#define APP_OUT_CELL_MAX 512
/* Most columns of a table. */
#define APP_OUT_COLS_MAX 32

/* Write s (NUL-terminated) as one quoted JSON string. */
void app_out_json_str(FILE *f, const char *s);

/* Write `"k":`. */
void app_out_json_key(FILE *f, const char *k);

/* ---- one record ---- */

typedef enum app_out_type { APP_OUT_STR, APP_OUT_BOOL, APP_OUT_NUM } app_out_type;

typedef struct app_out_field {
    const char *key;
    app_out_type type;
    const char *s; /* APP_OUT_STR */
    bool b;        /* APP_OUT_BOOL: "yes"/"no", JSON true/false */
    unsigned long long n;
} app_out_field;

#define APP_FSTR(k, v)  ((app_out_field){.key = (k), .type = APP_OUT_STR, .s = (v)})
#define APP_FBOOL(k, v) ((app_out_field){.key = (k), .type = APP_OUT_BOOL, .b = (v)})
#define APP_FNUM(k, v)  ((app_out_field){.key = (k), .type = APP_OUT_NUM, .n = (v)})

/*
 * Print fields[0..n). With json: one line {"command":<command>,"k":v,...}
 * ("command" left out when command is NULL). Without: one "key  value" line
 * per field, the keys padded to the longest.
 */
void app_out_record(FILE *f, bool json, const char *command, const app_out_field *fields, size_t n);

/* ---- tables ---- */

/* Write the text of cell (row, col) into buf[0..cap) (NUL-terminated, cut to fit). */
typedef void (*app_out_cell_fn)(const void *row, int col, char *buf, size_t cap);

/*
 * Print a header line and one line per row, columns separated by two
 * spaces and padded to their widest cell (the last column is not padded).
 * Row i is at (const char *)rows + i * stride; cell() is called twice per
 * cell (widths, then text). ncols is 1..APP_OUT_COLS_MAX; extra columns are
 * not printed.
 */
void app_out_table(FILE *f, const char *const *header, int ncols, const void *rows, size_t stride,
                   size_t nrows, app_out_cell_fn cell);

#endif
