/*
 * app_hsmtool.h - the insides of cipherdex-hsm shared by its two files:
 * app_hsmtool.c (main, command table, argument parsing, configuration) and
 * app_hsmtool_cmds.c (the commands). Nothing else includes this.
 */
#ifndef APP_HSMTOOL_H
#define APP_HSMTOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "app_out.h"
#include "cdx_err.h"
#include "hsm_config.h"
#include "hsm_custody.h"

#define PROG "cipherdex-hsm"

/* ---- options ---- */

enum {
    O_CONFIG,
    O_MODULE,
    O_TOKEN,
    O_PIN_SOURCE,
    O_JSON,
    O_HELP,
    O_YES,
    O_BASE64,
    O_DEPLOYMENT_ID,
    O_ID,
    O_KCV,
    O_KEY_FILE,
    O_KEK,
    O_WRAPPED,
    O_INIT_ARGS,
    O_REPLACE,
    O_SUBJECT,
    O_PUBLIC_KEY,
    O_NONCE,
    O_MAX_AGE,
    O_GEN,
    O_COUNT
};

#define BIT(o) (1u << (o))

#define MAX_WORDS 3

typedef struct ctx ctx;

typedef struct cmd {
    const char *group; /* "index" */
    const char *verb;  /* "generate", or NULL for one-word commands */
    const char *arg;   /* name of the one positional argument, or NULL */
    unsigned allowed;  /* options besides the global ones */
    unsigned required;
    bool login;
    cdx_err (*run)(ctx *x);
    const char *synopsis;
    const char *help;
} cmd;

struct ctx {
    const char *val[O_COUNT];
    unsigned given; /* BIT(O_*) of the options on the command line */
    const char *words[MAX_WORDS];
    int nwords;
    const cmd *cmd;
    const char *arg; /* the positional argument (KEK name) */
    bool json;
    bool usage;        /* the error is a usage error (exit 2) */
    bool json_printed; /* the command's JSON object already carries its error */
    hsm_config cfg;
    hsm_custody *c;
    bool secmem; /* we hold a reference on the secret arena */
};

/* ---- app_hsmtool.c ---- */

/* cdx_fail(CDX_ERR_INVALID_ARGUMENT, ...) and mark it a usage error (exit 2). */
cdx_err app_hsmtool_usage(ctx *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Decode option `opt` as exactly n bytes of hex. Errors: usage (CDX_ERR_INVALID_ARGUMENT). */
cdx_err app_hsmtool_hex_arg(ctx *x, int opt, uint8_t *out, size_t n);

/* "group verb" of the chosen command into buf. */
const char *app_hsmtool_command_name(const ctx *x, char *buf, size_t cap);

/* Print one result record of the chosen command (JSON with --json). */
void app_hsmtool_record(const ctx *x, const app_out_field *f, size_t n);

/*
 * Open custody on the configured token (x->c; main frees it). Errors:
 * CDX_ERR_CONFIG (no token URI or PIN source), those of hsm_config_check and
 * hsm_custody_open.
 */
cdx_err app_hsmtool_open_custody(ctx *x);

/* The secret arena before custody is open (key files are read before login). */
cdx_err app_hsmtool_secmem_up(ctx *x);

/* ---- app_hsmtool_cmds.c ----
 * One function per subcommand (cipherdex-hsm usage names them), run on the
 * parsed options in x: each opens custody itself when it needs the token,
 * prints its result to stdout (app_out: text or --json) and returns CDX_OK or
 * the first error, whose detail main() prints. Not thread-safe (one process,
 * one command).
 */

/*
 * The JSON error object {"code","name","message","detail"} on stdout, closed with '}' when
 * `close` (else the caller adds members and the brace).
 */
void app_hsmtool_json_error(cdx_err err, const char *detail, bool close);

cdx_err app_hsmtool_tokens(ctx *x);
cdx_err app_hsmtool_keys(ctx *x);
cdx_err app_hsmtool_probe(ctx *x);        /* app_hsmtool_probe.c */
cdx_err app_hsmtool_audit_verify(ctx *x); /* app_hsmtool_audit.c */
/* app_hsmtool_attest.c */
cdx_err app_hsmtool_attest_key_create(ctx *x);
cdx_err app_hsmtool_attest_key_show(ctx *x);
cdx_err app_hsmtool_attest_key_csr(ctx *x);
cdx_err app_hsmtool_attest_verify(ctx *x);
cdx_err app_hsmtool_root_create(ctx *x);
cdx_err app_hsmtool_kek_create(ctx *x);
cdx_err app_hsmtool_kek_import(ctx *x);
cdx_err app_hsmtool_kek_destroy(ctx *x);
cdx_err app_hsmtool_index_generate(ctx *x);
cdx_err app_hsmtool_index_import(ctx *x);
cdx_err app_hsmtool_index_unwrap(ctx *x);
cdx_err app_hsmtool_index_adopt(ctx *x);
cdx_err app_hsmtool_index_kcv(ctx *x);
cdx_err app_hsmtool_index_check(ctx *x);
cdx_err app_hsmtool_index_destroy(ctx *x);

#endif
