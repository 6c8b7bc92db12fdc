/*
 * app_cli.h - private to the cipherdex CLI (cipherdex.c and app_cli_*.c):
 * the context every command gets, argument helpers and output helpers.
 *
 * One command group per file: app_cli_index.c (health, index ...),
 * app_cli_upsert.c (upsert, with the JSON Lines loader), app_cli_query.c
 * (query: worker threads, latency, recall), app_cli_ids.c (get, delete,
 * list-ids). cipherdex.c holds the global options, the command table and
 * the help text.
 *
 * A command returns the process exit code: 0, 1 for a failed call (after
 * cli_fail printed it), 2 for a usage error (after cli_usage printed it).
 * Not thread-safe: the CLI's main thread owns the cli; query worker
 * threads each get their own connection.
 */
#ifndef APP_CLI_H
#define APP_CLI_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "app_client.h"
#include "cdx_limits.h"
#include "cdx_num.h" /* cdx_parse_u64, cdx_parse_u32 for options */

/* Everything a command needs: the global options and the connection. */
typedef struct cli {
    app_client_opts conn; /* from --addr, --ca, ... or the CIPHERDEX_* variables */
    bool json;            /* --json: one JSON document per command on stdout */
    app_client *c;        /* connected before the command runs */
} cli;

/* A command's arguments: v[i..n) are still to read. */
typedef struct cli_args {
    int n;
    char **v;
    int i;
} cli_args;

/* Print "cipherdex: <message> (see cipherdex --help)" to stderr; returns 2. */
int cli_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * A failed call: the code, its name and the detail to stderr (and as a JSON
 * object on stdout with --json); returns 1.
 */
int cli_fail(const cli *x, cdx_err e);

/* The value of option `name` (the next argument); a missing value exits 2 with a usage error. */
const char *cli_opt_value(cli_args *a, const char *name);


/*
 * --include: a comma list of vectors, metadata, contents (or all, none) as
 * APP_INCLUDE_* bits in *flags; an unknown word is a usage error (returns 2
 * after cli_usage), else 0.
 */
int cli_include_opt(const char *s, unsigned *flags);

/* Print j indented to stdout and release it. */
void cli_print_json(json_t *j);

/* A protobuf string or bytes field as a JSON string. */
json_t *cli_jstr(ProtobufCBinaryData b);

/* Lower-case hex of b into out (2 * b.len + 1 bytes). */
void cli_hex(ProtobufCBinaryData b, char *out);

/* ---- what was stored, as JSON and table cells (app_cli_show.c) ---- */

/* How a cut table cell ends. */
#define CDX_CLI_CUT_MARK "..."

/* The shortest decimal that reads back as the same float, as a JSON number. */
json_t *cli_jfloat(float v);

/* v[0..n) as a JSON array of numbers. */
json_t *cli_jvector(const float *v, size_t n);

/*
 * o["metadata"] = the metadata parsed as a JSON object (null when empty);
 * text that is not a JSON object goes to o["metadata_text"] as a string.
 */
void cli_jset_metadata(json_t *o, ProtobufCBinaryData m);

/* True when b is strict UTF-8 without NUL (then it prints as a JSON string). */
bool cli_is_text(ProtobufCBinaryData b);

/* o["contents"] = the contents as a string when cli_is_text, else o["contents_base64"]. */
void cli_jset_contents(json_t *o, ProtobufCBinaryData c);

/*
 * One-line table cells (malloc'ed; the caller frees): control characters
 * and bytes that are not UTF-8 escaped (\n, \t, \xNN), cut to width
 * characters ending in CDX_CLI_CUT_MARK (width 0: never cut; *cut set when
 * cut). Contents that are not text print as "(binary, N bytes)"; a vector
 * as [x, y, ...] with 4 significant digits.
 */
char *cli_cell_text(ProtobufCBinaryData b, size_t width, bool *cut);
char *cli_cell_contents(ProtobufCBinaryData b, size_t width, bool *cut);
char *cli_cell_vector(const float *v, size_t n, size_t width, bool *cut);

/* A table of malloc'ed cells, columns padded by characters (UTF-8 aware). */
typedef struct cli_table cli_table;

/* header must outlive the table. NULL when out of memory. */
cli_table *cli_table_new(int ncols, const char *const *header);

/* Add a row of ncols cells; the table owns them (freed with it, or at once if out of memory). */
void cli_table_add(cli_table *t, char **cells);

void cli_table_print(const cli_table *t, FILE *f);

/* NULL is a no-op. */
void cli_table_free(cli_table *t);

/* When cut: a note on stderr saying how to see the cut values whole. */
void cli_cut_note(bool cut, size_t width);

/* Print j as one compact line (JSONL) to f and release it; floats with at most 9 digits. */
void cli_json_line(FILE *f, json_t *j);

/* ---- the progress file of an upload (app_cli_resume.c) ---- */

/* What an upload committed in order from its input's first row. */
typedef struct cli_resume_rec {
    char index[CDX_INDEX_NAME_MAX + 1];
    uint64_t rows;      /* rows [0, rows) of the input are committed */
    char through[48];   /* the last of them as the user sees it: "line 2001", "row 2000" */
    uint8_t sha256[32]; /* SHA-256 of those rows as they were sent (app_cli_upsert.c) */
    uint64_t version;   /* the commit that landed the last of them */
} cli_resume_rec;

/*
 * Read the progress file at path: 0 and *r filled, 1 when there is no such
 * file, -1 when it cannot be read or is not a progress file (said on stderr).
 */
int cli_resume_read(const char *path, cli_resume_rec *r);

/*
 * Replace the progress file at path (via path.tmp, fsync, rename); input is
 * recorded for the reader's information. 0, or -1 with errno set.
 */
int cli_resume_write(const char *path, const char *input, const cli_resume_rec *r);

/* A progress bar on stderr when it is a terminal. t0 from cdx_mono_s(). */
void cli_progress(const char *what, size_t done, size_t total, double t0);

/* The commands (see cipherdex.c's table and docs/CLI.md). */
int cli_health(cli *x, cli_args *a);
int cli_index(cli *x, cli_args *a);
int cli_upsert(cli *x, cli_args *a);
int cli_query(cli *x, cli_args *a);
int cli_get(cli *x, cli_args *a);
int cli_delete(cli *x, cli_args *a);
int cli_list_ids(cli *x, cli_args *a);
int cli_audit(cli *x, cli_args *a);

#endif
