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

#include "app_client.h"

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

/* Decimal without sign; false when s is not a number in range. */
bool cli_parse_u64(const char *s, uint64_t *out);
bool cli_parse_u32(const char *s, uint32_t *out);

/* --include "vectors,metadata,contents" as APP_INCLUDE_* bits. */
unsigned cli_include_flags(const char *s);

/* Print j indented to stdout and release it. */
void cli_print_json(json_t *j);

/* A protobuf string or bytes field as a JSON string. */
json_t *cli_jstr(ProtobufCBinaryData b);

/* Lower-case hex of b into out (2 * b.len + 1 bytes). */
void cli_hex(ProtobufCBinaryData b, char *out);

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
