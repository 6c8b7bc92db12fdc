/*
 * cipherdex - command-line client of cipherdexd (docs/CLI.md).
 *
 *   cipherdex [connection options] COMMAND [options]
 *
 * Connection: --addr HOST:PORT, --ca FILE, --cert FILE, --key FILE (or
 * CIPHERDEX_ADDR, CIPHERDEX_CA, CIPHERDEX_CERT, CIPHERDEX_KEY), --insecure,
 * --timeout-ms N. Output: tables, or --json (one JSON document per command).
 * Errors print the server's code and message and exit 1 (2: usage).
 *
 * This file holds the global options, the command table and the help; the
 * commands live in app_cli_<group>.c (see app_cli.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app_cli.h"

/* One command: its name, its handler, and its usage (continuation lines start with spaces). */
static const struct command {
    const char *name;
    int (*run)(cli *x, cli_args *a);
    const char *usage;
} commands[] = {
    {"health", cli_health, "  health\n"},
    {"index", cli_index,
     "  index create NAME --dim N [--metric euclidean|squared_euclidean|cosine|inner_product]\n"
     "               [--type ivfflat|ivfsq8] [--lists N]\n"
     "               [--unwrap-kek KEK --wrapped-file F | --adopt-key KEYID]\n"
     "  index list\n"
     "  index describe NAME\n"
     "  index delete NAME --confirm INDEX_ID\n"
     "  index train NAME [--lists N] [--iters N] [--seed N] [--tolerance F]\n"
     "               [--max-points-per-list N]\n"
     "  index accept-rollback NAME --version V   (admin: serve the store's version V again)\n"
     "  index compact NAME   (admin: merge segments and sweep deleted data now)\n"
     "  index rotate NAME [--wait] [--new-key]\n"
     "                       (admin: new key epoch, every record re-encrypted in the background)\n"
     "  index purge   (appliance admin: remove shredded, deleted-and-restored and orphan data)\n"
     "  index attest NAME [--nonce HEX] [--out FILE]   (attest: a signed statement about the\n"
     "               index key; verify with cipherdex-hsm attest verify)\n"},
    {"upsert", cli_upsert,
     "  upsert INDEX --file F [--labels IDX_LABELS] [--id-prefix P] [--start N] [--batch N]\n"
     "               [--batch-bytes N] [--limit N] [--resume [--progress FILE] | --start-line N]\n"
     "               F: .fvecs, .bvecs, IDX images (plain or .gz), .jsonl ({\"id\":...,\n"
     "               \"vector\":[...], \"metadata\":{...}, \"contents\":\"...\" or "
     "\"contents_base64\"})\n"
     "               batches: at most --batch items (1000) and --batch-bytes (16 MiB); a failed\n"
     "               upload says what landed; --resume skips the rows committed in order\n"
     "               (recorded in F.progress); re-running is safe (upsert replaces by id)\n"},
    {"query", cli_query,
     "  query INDEX --vector \"x,y,...\" [--top-k N] [--probes N] [--filter JSON [--max-probes "
     "N]]\n"
     "               [--include vectors,metadata,contents|all|none] [--full]\n"
     "               (default: ids and distances; --full: table cells not cut)\n"
     "  query INDEX --file F [--limit N] [--clients N] [--out FILE | --no-results] [--top-k N]\n"
     "               [--probes N] [--filter JSON [--max-probes N]] [--include ...]\n"
     "               [--ground-truth BASE_FILE [--id-prefix P]]\n"
     "               (results: one JSON line per query to stdout or FILE; QPS, p50/p99 and\n"
     "               recall@k: a summary on stderr)\n"},
    {"get", cli_get,
     "  get INDEX ID... [--include vectors,metadata,contents|all|none] [--full]\n"
     "               (default: metadata; ids starting with -- go after --)\n"},
    {"delete", cli_delete, "  delete INDEX ID...\n"},
    {"list-ids", cli_list_ids, "  list-ids INDEX [--limit N] [--cursor C] [--all]\n"},
    {"audit", cli_audit,
     "  audit tail [-n N] [--follow]   (operators: the audit trail's last records and state)\n"},
};

static const struct command *find_command(const char *name)
{
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (!strcmp(commands[i].name, name))
            return &commands[i];
    return NULL;
}

/* The whole help, or only the usage of `cmd` ("index", "query", ...) when given. */
static void help(const char *cmd)
{
    printf("usage: cipherdex [connection options] %s\n\n", cmd ? cmd : "COMMAND [options]");
    printf("connection (or the environment variables in brackets):\n"
           "  --addr HOST:PORT   server address [CIPHERDEX_ADDR]\n"
           "  --ca FILE          CA bundle for the server certificate [CIPHERDEX_CA]\n"
           "  --cert FILE        client certificate [CIPHERDEX_CERT]\n"
           "  --key FILE         client key [CIPHERDEX_KEY]\n"
           "  --insecure         plaintext TCP (a test server with insecure = yes)\n"
           "  --timeout-ms N     connect and I/O timeout (default 30000)\n"
           "  --json             JSON output for scripts\n\n%s",
           cmd ? "" : "commands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (!cmd || !strcmp(cmd, commands[i].name))
            fputs(commands[i].usage, stdout);
    printf("\nErrors print the server's status code and message and exit 1; usage errors exit "
           "2.\nMore: docs/CLI.md\n");
}

/* Global options up to the command; returns the command's index in argv, or -exit code. */
static int global_options(cli *x, int argc, char **argv)
{
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *o = argv[i];
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) {
            help(NULL);
            return 0;
        }
        if (!strcmp(o, "--json")) {
            x->json = true;
            continue;
        }
        if (!strcmp(o, "--insecure")) {
            x->conn.insecure = true;
            continue;
        }
        if (i + 1 >= argc)
            return -cli_usage("%s needs a value", o);
        const char *v = argv[++i];
        if (!strcmp(o, "--addr"))
            x->conn.addr = v;
        else if (!strcmp(o, "--ca"))
            x->conn.ca = v;
        else if (!strcmp(o, "--cert"))
            x->conn.cert = v;
        else if (!strcmp(o, "--key"))
            x->conn.key = v;
        else if (!strcmp(o, "--timeout-ms")) {
            if (!cdx_parse_u32(v, &x->conn.timeout_ms))
                return -cli_usage("--timeout-ms needs a number");
        } else
            return -cli_usage("unknown option %s", o);
    }
    if (i >= argc) {
        help(NULL);
        return -2;
    }
    return i;
}

int main(int argc, char **argv)
{
    cli x = {.conn = {.addr = getenv("CIPHERDEX_ADDR"),
                      .ca = getenv("CIPHERDEX_CA"),
                      .cert = getenv("CIPHERDEX_CERT"),
                      .key = getenv("CIPHERDEX_KEY")}};
    int i = global_options(&x, argc, argv);
    if (i <= 0)
        return -i;
    const char *name = argv[i++];
    cli_args a = {.n = argc, .v = argv, .i = i};
    for (int k = i; k < argc; k++)
        if (!strcmp(argv[k], "--help")) {
            help(name); /* that command's usage */
            return 0;
        }
    if (!x.conn.addr)
        return cli_usage("no server address: --addr HOST:PORT or CIPHERDEX_ADDR");
    if (!x.conn.insecure && (!x.conn.ca || !x.conn.cert))
        return cli_usage("TLS needs --ca and --cert/--key (or CIPHERDEX_CA, CIPHERDEX_CERT, "
                         "CIPHERDEX_KEY); --insecure only for a plaintext test server");
    const struct command *cmd = find_command(name);
    if (!cmd)
        return cli_usage("unknown command %s", name);
    cdx_err e = app_client_connect(&x.conn, &x.c);
    if (e)
        return cli_fail(&x, e);
    int rc = cmd->run(&x, &a);
    app_client_free(x.c);
    return rc;
}
