/*
 * app_hsmtool.c - cipherdex-hsm, the offline admin tool for Cipherdex's
 * keys on a PKCS#11 token (docs/ADMIN.md): list tokens and keys, create the
 * root key, manage KEKs, provision, check and destroy index keys. This file
 * holds main, the command table and help, argument parsing and the
 * configuration; the commands are in app_hsmtool_cmds.c.
 *
 * It reads the daemon's configuration file ([hsm] section) and never takes
 * a PIN on the command line (it would show in ps and shell history): the
 * PIN comes from the configured source, through hsm_pin into locked memory.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app_hsmconf.h"
#include "app_hsmtool.h"
#include "app_out.h"
#include "cdx_err.h"
#include "cdx_hex.h"
#include "cdx_log.h"
#include "hsm_config.h"
#include "hsm_custody.h"
#include "hsm_secmem.h"

#define DEFAULT_MODULE "/usr/lib/softhsm/libsofthsm2.so"

enum { EXIT_ERROR = 1, EXIT_USAGE = 2, EXIT_REPLACED = 3 };

/* ---- options ---- */

#define GLOBAL_OPTS                                                                                \
    (BIT(O_CONFIG) | BIT(O_MODULE) | BIT(O_TOKEN) | BIT(O_PIN_SOURCE) | BIT(O_JSON) |              \
     BIT(O_HELP) | BIT(O_INIT_ARGS))

static const struct optdef {
    const char *name;
    bool has_arg;
} optdefs[O_COUNT] = {
    [O_CONFIG] = {"config", true},
    [O_MODULE] = {"module", true},
    [O_TOKEN] = {"token", true},
    [O_PIN_SOURCE] = {"pin-source", true},
    [O_JSON] = {"json", false},
    [O_HELP] = {"help", false},
    [O_YES] = {"yes", false},
    [O_BASE64] = {"base64", false},
    [O_DEPLOYMENT_ID] = {"deployment-id", true},
    [O_ID] = {"id", true},
    [O_KCV] = {"kcv", true},
    [O_KEY_FILE] = {"key-file", true},
    [O_KEK] = {"kek", true},
    [O_WRAPPED] = {"wrapped", true},
    [O_INIT_ARGS] = {"init-args", true},
    [O_REPLACE] = {"replace", false},
    [O_SUBJECT] = {"subject", true},
    [O_PUBLIC_KEY] = {"public-key", true},
    [O_NONCE] = {"nonce", true},
    [O_MAX_AGE] = {"max-age", true},
    [O_GEN] = {"gen", true},
};

cdx_err app_hsmtool_usage(ctx *x, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cdx_vfail(CDX_ERR_INVALID_ARGUMENT, fmt, ap);
    va_end(ap);
    x->usage = true;
    return CDX_ERR_INVALID_ARGUMENT;
}

cdx_err app_hsmtool_hex_arg(ctx *x, int opt, uint8_t *out, size_t n)
{
    const char *s = x->val[opt];
    if (strlen(s) != 2 * n)
        return app_hsmtool_usage(x, "--%s: expected %zu hex digits, got %zu", optdefs[opt].name,
                                 2 * n, strlen(s));
    if (cdx_hex_decode(s, out, n) != 0)
        return app_hsmtool_usage(x, "--%s: `%s` is not hexadecimal", optdefs[opt].name, s);
    return CDX_OK;
}

const char *app_hsmtool_command_name(const ctx *x, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s%s%s", x->cmd->group, x->cmd->verb ? " " : "",
             x->cmd->verb ? x->cmd->verb : "");
    return buf;
}

void app_hsmtool_record(const ctx *x, const app_out_field *f, size_t n)
{
    char name[64];
    app_out_record(stdout, x->json, app_hsmtool_command_name(x, name, sizeof(name)), f, n);
}

/* ---- configuration ---- */

/* One setting from outside the file, checked like the file's keys. */
static cdx_err apply(ctx *x, const char *key, const char *value, const char *origin, bool flag)
{
    cdx_err err = app_hsmconf_set(&x->cfg, NULL, 0, key, value);
    if (err == CDX_OK)
        return CDX_OK;
    char d[512];
    snprintf(d, sizeof(d), "%s", cdx_err_detail()); /* cdx_fail overwrites it */
    x->usage = flag;
    return cdx_fail(err, "%s: %s", origin, d);
}

/* Precedence: flags, then the config file, then the environment, then defaults. */
static cdx_err load_config(ctx *x)
{
    static const struct {
        const char *key, *env;
        int opt;
    } src[] = {
        {"module", "CIPHERDEX_HSM_MODULE", O_MODULE},
        {"token", "CIPHERDEX_TOKEN_URI", O_TOKEN},
        {"pin", "CIPHERDEX_PIN_SOURCE", O_PIN_SOURCE},
        {"init_args", "CIPHERDEX_HSM_INIT_ARGS", O_INIT_ARGS},
    };
    const size_t n = sizeof(src) / sizeof(src[0]);
    const char *e;
    cdx_err err;

    hsm_config_init(&x->cfg);
    for (size_t i = 0; i < n; i++)
        if ((e = secure_getenv(src[i].env)) && *e &&
            (err = apply(x, src[i].key, e, src[i].env, false)))
            return err;
    if (x->val[O_CONFIG] && (err = app_hsmconf_load(x->val[O_CONFIG], &x->cfg)))
        return err;
    for (size_t i = 0; i < n; i++)
        if (x->val[src[i].opt] &&
            (err = apply(x, src[i].key, x->val[src[i].opt], "command line", true)))
            return err;
    if (!x->cfg.module_path[0])
        memcpy(x->cfg.module_path, DEFAULT_MODULE, sizeof(DEFAULT_MODULE));
    return CDX_OK;
}

cdx_err app_hsmtool_open_custody(ctx *x)
{
    cdx_err err;

    if (!x->cfg.token_uri[0])
        return cdx_fail(CDX_ERR_CONFIG, "no token URI: set `token = pkcs11:token=LABEL` in "
                                        "[hsm], or pass --token (see `" PROG " tokens`)");
    if (!x->cfg.pin_source[0])
        return cdx_fail(CDX_ERR_CONFIG, "no PIN source: set `pin = file:/path` in [hsm], or "
                                        "pass --pin-source file:/path");
    if ((err = hsm_config_check(&x->cfg)))
        return err;
    return hsm_custody_open(&x->cfg, &x->c);
}

/* Secret memory before custody is open: key files are read before login. */
cdx_err app_hsmtool_secmem_up(ctx *x)
{
    cdx_err err = hsm_secmem_init(x->cfg.secmem_bytes, x->cfg.allow_unlocked_memory);
    if (err == CDX_OK)
        x->secmem = true;
    return err;
}

/* ---- command table and help ---- */

static const cmd commands[] = {
    {"tokens", NULL, NULL, 0, 0, false, app_hsmtool_tokens, "tokens",
     "List the tokens the module shows, without logging in: label, serial, manufacturer,\n"
     "model, slot, whether initialised, whether the configured token URI selects it, and\n"
     "STATUS: ok, or why the slot's token could not be read (C_GetTokenInfo's CKR_...).\n"
     "Exits 1 if any slot could not be read, after listing every slot.\n"},
    {"keys", NULL, NULL, 0, 0, true, app_hsmtool_keys, "keys",
     "List every secret key whose label starts with cipherdex-: kind, label, CKA_ID, key\n"
     "type, length, KCV and attributes. TEMPLATE is `ok` or the attributes that differ\n"
     "from the kind's template (also marked ! in their columns). Root and index keys must\n"
     "read DERIVE, MODIFIABLE and COPYABLE no; generated keys are LOCAL and\n"
     "NEVER_EXTRACTABLE, imported and unwrapped keys cannot be (PKCS#11 rules).\n"},
    {"probe", NULL, NULL, 0, 0, true, app_hsmtool_probe, "probe",
     "Before any key exists: the configured token's identity and session limits, the\n"
     "mechanisms Cipherdex uses and their flags, how the token treats Cipherdex's key\n"
     "template (tried on session keys it destroys again: with and without CKA_COPYABLE,\n"
     "as CKK_SHA256_HMAC, HMAC signing, refusing to make the key derivable), the\n"
     "attributes it reports, and the verdict: whether Cipherdex can run on it and what is\n"
     "missing. Exit status 1 when it cannot.\n"},
    {"audit", "verify", "PATH", BIT(O_DEPLOYMENT_ID) | BIT(O_MAX_AGE), BIT(O_DEPLOYMENT_ID), true,
     app_hsmtool_audit_verify, "audit verify FILE|DIR --deployment-id HEX32 [--max-age SECONDS]",
     "Check an audit trail offline: every record's MAC under the root key's audit subkey\n"
     "(derived on the token), the sequence numbers and the chain of previous-record\n"
     "hashes. DIR is the trail's directory: its rotated files (audit-SEQ.log) and\n"
     "audit.log are checked as one chain, in order. A trail whose first record is not\n"
     "record 1 (older files archived) is checked from there (first_seq says where).\n"
     "--max-age: the trail must end with a clean stop, or reach within SECONDS of now\n"
     "(a running daemon writes a checkpoint every [audit] checkpoint_s): a cut tail fails.\n"
     "Prints ok with the record and checkpoint counts, the last record and whether the\n"
     "trail ends with a clean stop; or fails naming FILE:LINE and the first broken record\n"
     "(edited, forged, deleted, inserted, reordered or spliced).\n"},
    {"attest-key", "create", NULL, BIT(O_REPLACE), 0, true, app_hsmtool_attest_key_create,
     "attest-key create [--replace]",
     "Generate the attestation key pair on the token: EC P-256, label cipherdex-attest,\n"
     "the private key sensitive, not extractable, sign only. Refused if one exists; with\n"
     "--replace the old pair is destroyed first (statements signed by it no longer verify\n"
     "against the new public key: give verifiers the new one). Restart cipherdexd after.\n"},
    {"attest-key", "show", NULL, 0, 0, true, app_hsmtool_attest_key_show, "attest-key show",
     "Print the attestation public key as PEM (with --json: also its key id, SHA-256 of\n"
     "the SubjectPublicKeyInfo DER). Verifiers check statements against it.\n"},
    {"attest-key", "csr", NULL, BIT(O_SUBJECT), BIT(O_SUBJECT), true, app_hsmtool_attest_key_csr,
     "attest-key csr --subject /CN=NAME[/O=ORG...]",
     "Print a PKCS#10 certificate request (PEM) for the attestation key, signed on the\n"
     "token, for an operator's CA to certify (`openssl req -verify` accepts it).\n"},
    {"attest", "verify", "FILE", BIT(O_PUBLIC_KEY) | BIT(O_NONCE) | BIT(O_MAX_AGE),
     BIT(O_PUBLIC_KEY) | BIT(O_NONCE), false, app_hsmtool_attest_verify,
     "attest verify FILE --public-key PEM --nonce HEX [--max-age SECONDS]",
     "Check a DER attestation statement (from `cipherdex index attest --out FILE`) without\n"
     "the token: its structure (strict DER, every claim known), the signature with the\n"
     "given public key, the nonce, and that it is at most SECONDS old (default 300; 0: not\n"
     "checked). Prints ok and the claims, or fails (exit 1) naming the check.\n"},
    {"root", "create", NULL, BIT(O_DEPLOYMENT_ID), BIT(O_DEPLOYMENT_ID), true,
     app_hsmtool_root_create, "root create --deployment-id HEX32",
     "Create the deployment's root key (label cipherdex-root, CKA_ID = deployment id) if\n"
     "none exists, or check the existing one. Prints created or existing, and the KCV.\n"},
    {"kek", "create", "NAME", 0, 0, true, app_hsmtool_kek_create, "kek create NAME",
     "Generate an AES-256 key-encryption key cipherdex-kek-NAME on the token (unwrap\n"
     "only, never extractable). Its value never leaves the token: use `kek import` for a\n"
     "KEK shared with a KMS.\n"},
    {"kek", "import", "NAME", BIT(O_KEY_FILE), BIT(O_KEY_FILE), true, app_hsmtool_kek_import,
     "kek import NAME --key-file FILE",
     "Import a KEK shared with a KMS: FILE holds base64 of 32 bytes. The bytes go through\n"
     "locked memory and are wiped after the import; delete FILE afterwards.\n"},
    /* --yes is checked by the command, which says what would be lost. */
    {"kek", "destroy", "NAME", BIT(O_YES), 0, true, app_hsmtool_kek_destroy,
     "kek destroy NAME --yes", "Destroy the KEK cipherdex-kek-NAME.\n"},
    {"index", "generate", NULL, BIT(O_ID), 0, true, app_hsmtool_index_generate,
     "index generate [--id HEX32]",
     "Generate an index key on the token (CKA_LOCAL, never extractable). Without --id a\n"
     "random index id comes from the token's RNG. Prints id, label and KCV.\n"},
    {"index", "import", NULL, BIT(O_ID) | BIT(O_KEY_FILE), BIT(O_KEY_FILE), true,
     app_hsmtool_index_import, "index import --key-file FILE [--id HEX32]",
     "Import an index key from FILE (base64 of 32 bytes: openssl rand -base64 32). The\n"
     "bytes go through locked memory and are wiped after; delete FILE afterwards.\n"},
    {"index", "unwrap", NULL, BIT(O_ID) | BIT(O_KEK) | BIT(O_WRAPPED) | BIT(O_BASE64),
     BIT(O_KEK) | BIT(O_WRAPPED), true, app_hsmtool_index_unwrap,
     "index unwrap --kek NAME --wrapped FILE [--base64] [--id HEX32]",
     "Unwrap a KMS-style encrypted data key with KEK cipherdex-kek-NAME on the token\n"
     "(CKM_AES_KEY_WRAP_PAD, RFC 5649). FILE holds the 40-byte wrapped blob, or its\n"
     "base64 with --base64. The key bytes never reach this host in clear.\n"},
    {"index", "adopt", NULL, BIT(O_ID), BIT(O_ID), true, app_hsmtool_index_adopt,
     "index adopt --id HEX32",
     "Check that the existing key cipherdex-index-HEX32 (CKA_ID HEX32) has every template\n"
     "attribute, so an index can be created on it. Prints its KCV.\n"},
    {"index", "kcv", NULL, BIT(O_ID) | BIT(O_GEN), BIT(O_ID), true, app_hsmtool_index_kcv,
     "index kcv --id HEX32 [--gen N]",
     "Compute the key check value of an index key on the token. --gen: the key generation\n"
     "(0, the default: the key the index was created with; N: the key `cipherdex index\n"
     "rotate --new-key` made, label cipherdex-index-HEX32.gN; describe shows the current one).\n"},
    {"index", "check", NULL, BIT(O_ID) | BIT(O_KCV) | BIT(O_GEN), BIT(O_ID) | BIT(O_KCV), true,
     app_hsmtool_index_check, "index check --id HEX32 --kcv HEX16 [--gen N]",
     "Compare the key's KCV with the recorded one: exit 0 if they match, 3 (KEY_REPLACED)\n"
     "if the key under that label is a different key.\n"},
    {"index", "destroy", NULL, BIT(O_ID) | BIT(O_YES) | BIT(O_GEN), BIT(O_ID), true,
     app_hsmtool_index_destroy, "index destroy --id HEX32 [--gen N] --yes",
     "Destroy an index key (crypto-shredding): its data can never be decrypted again once\n"
     "every appliance's subkey TTL has passed. Refused without --yes. An index rotated with\n"
     "--new-key has one key per generation while a rotation is pending: `key list` shows\n"
     "them (label suffix .gN); destroy each.\n"},
};
#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static void global_help(FILE *f)
{
    fprintf(f, "Usage: " PROG " [OPTIONS] COMMAND [ARGS]\n\n"
               "Offline administration of Cipherdex keys on a PKCS#11 token.\n\nCommands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %s\n", commands[i].synopsis);
    fprintf(f, "\nOptions (anywhere on the line):\n"
               "  --config FILE      configuration file; its [hsm] section (same file as the "
               "daemon)\n"
               "  --module PATH      PKCS#11 module (default " DEFAULT_MODULE ")\n"
               "  --token URI        RFC 7512 token URI, e.g. pkcs11:token=cipherdex\n"
               "  --pin-source SRC   file:/path, cred:NAME or env:NAME (never the PIN itself)\n"
               "  --init-args STR    C_Initialize parameters (pReserved) for modules that need\n"
               "                     them, e.g. NSS softokn: \"configdir='sql:DIR' ...\"\n"
               "  --json             one JSON object on stdout instead of a table\n"
               "  --help             this text; `" PROG " COMMAND --help` for one command\n"
               "\nFlags override the file, the file overrides CIPHERDEX_HSM_MODULE,\n"
               "CIPHERDEX_TOKEN_URI, CIPHERDEX_PIN_SOURCE and CIPHERDEX_HSM_INIT_ARGS.\n"
               "Exit status: 0 success, 1 error, 2 usage error, 3 KEY_REPLACED.\n");
}

static void command_help(const cmd *c)
{
    printf("Usage: " PROG " [OPTIONS] %s\n\n%s", c->synopsis, c->help);
    if (c->login)
        printf("\nLogs in to the token with the PIN from the configured source.\n");
    printf("See `" PROG " --help` for the global options.\n");
}

static void group_help(FILE *f, const char *group)
{
    fprintf(f, "Usage:\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(commands[i].group, group) == 0)
            fprintf(f, "  " PROG " %s\n", commands[i].synopsis);
}

/* ---- argument parsing ---- */

static cdx_err parse_args(ctx *x, int argc, char **argv)
{
    bool opts_done = false;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (opts_done || a[0] != '-' || a[1] == '\0') {
            if (x->nwords == MAX_WORDS)
                return app_hsmtool_usage(x, "unexpected argument `%s`", a);
            x->words[x->nwords++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            opts_done = true;
            continue;
        }
        if (strcmp(a, "-h") == 0)
            a = "--help";
        if (a[1] != '-')
            return app_hsmtool_usage(x, "unknown option `%s` (options are long: --name)", a);
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        if ((nlen == 3 && strncmp(name, "pin", 3) == 0) ||
            (nlen == 6 && strncmp(name, "so-pin", 6) == 0))
            return app_hsmtool_usage(x,
                                     "a PIN is never accepted on the command line (it would show "
                                     "in ps and shell history): use --pin-source file:/path or "
                                     "`pin = file:/path` in the [hsm] section");
        int o;
        for (o = 0; o < O_COUNT; o++)
            if (strlen(optdefs[o].name) == nlen && strncmp(optdefs[o].name, name, nlen) == 0)
                break;
        if (o == O_COUNT)
            return app_hsmtool_usage(x, "unknown option `--%.*s`", (int)nlen, name);
        if (x->given & BIT(o))
            return app_hsmtool_usage(x, "option --%s given twice", optdefs[o].name);
        x->given |= BIT(o);
        x->json = x->given & BIT(O_JSON); /* early, so a later usage error is JSON too */
        if (!optdefs[o].has_arg) {
            if (eq)
                return app_hsmtool_usage(x, "option --%s takes no value", optdefs[o].name);
            continue;
        }
        if (eq) {
            x->val[o] = eq + 1;
        } else {
            if (i + 1 >= argc)
                return app_hsmtool_usage(x, "option --%s needs a value", optdefs[o].name);
            x->val[o] = argv[++i];
        }
        if (x->val[o][0] == '\0')
            return app_hsmtool_usage(x, "option --%s: empty value", optdefs[o].name);
    }
    return CDX_OK;
}

/* Find the command; prints help and sets *done for --help. */
static cdx_err pick_command(ctx *x, bool *done)
{
    bool help = x->given & BIT(O_HELP);
    const char *g = x->nwords > 0 ? x->words[0] : NULL;
    const char *v = x->nwords > 1 ? x->words[1] : NULL;
    bool group_known = false;

    if (!g) {
        if (help) {
            global_help(stdout);
            *done = true;
            return CDX_OK;
        }
        return app_hsmtool_usage(x, "no command given");
    }
    for (size_t i = 0; i < N_COMMANDS; i++) {
        const cmd *c = &commands[i];
        if (strcmp(c->group, g) != 0)
            continue;
        group_known = true;
        if (c->verb && (!v || strcmp(c->verb, v) != 0))
            continue;
        x->cmd = c;
        int want = 1 + (c->verb != NULL) + (c->arg != NULL);
        if (help) {
            command_help(c);
            *done = true;
            return CDX_OK;
        }
        if (x->nwords < want)
            return app_hsmtool_usage(x, "`%s %s` needs %s", c->group, c->verb, c->arg);
        if (x->nwords > want)
            return app_hsmtool_usage(x, "unexpected argument `%s`", x->words[want]);
        x->arg = c->arg ? x->words[want - 1] : NULL;
        unsigned extra = x->given & ~(GLOBAL_OPTS | c->allowed);
        for (int o = 0; o < O_COUNT; o++)
            if (extra & BIT(o))
                return app_hsmtool_usage(x, "option --%s does not apply to `%s%s%s`",
                                         optdefs[o].name, c->group, c->verb ? " " : "",
                                         c->verb ? c->verb : "");
        unsigned missing = c->required & ~x->given;
        for (int o = 0; o < O_COUNT; o++)
            if (missing & BIT(o))
                return app_hsmtool_usage(x, "`%s%s%s` needs --%s", c->group, c->verb ? " " : "",
                                         c->verb ? c->verb : "", optdefs[o].name);
        return CDX_OK;
    }
    if (!group_known)
        return app_hsmtool_usage(x, "unknown command `%s`", g);
    if (help) {
        group_help(stdout, g);
        *done = true;
        return CDX_OK;
    }
    if (!v)
        return app_hsmtool_usage(x, "`%s` needs a subcommand", g);
    return app_hsmtool_usage(x, "unknown subcommand `%s %s`", g, v);
}
void app_hsmtool_json_error(cdx_err err, const char *detail, bool close)
{
    printf("{\"code\":%d,", (int)err);
    app_out_json_key(stdout, "name");
    app_out_json_str(stdout, cdx_err_name(err));
    putchar(',');
    app_out_json_key(stdout, "message");
    app_out_json_str(stdout, cdx_strerror(err));
    putchar(',');
    app_out_json_key(stdout, "detail");
    app_out_json_str(stdout, detail);
    if (close)
        putchar('}');
}

static void report_error(const ctx *x, cdx_err err)
{
    const char *detail = cdx_err_detail();

    fprintf(stderr, PROG ": %s: %s: %s\n", cdx_err_name(err), cdx_strerror(err),
            detail[0] ? detail : "(no detail)");
    if (x->usage) {
        if (x->cmd)
            fprintf(stderr, "Usage: " PROG " [OPTIONS] %s  (see --help)\n", x->cmd->synopsis);
        else if (x->nwords > 0 && strcmp(x->words[0], "root") && strcmp(x->words[0], "kek") &&
                 strcmp(x->words[0], "index"))
            fprintf(stderr, "Try `" PROG " --help`.\n");
        else if (x->nwords > 0)
            group_help(stderr, x->words[0]);
        else
            fprintf(stderr, "Try `" PROG " --help`.\n");
    }
    if (x->json && !x->json_printed) {
        char name[64];
        printf("{");
        if (x->cmd) {
            app_out_json_key(stdout, "command");
            app_out_json_str(stdout, app_hsmtool_command_name(x, name, sizeof(name)));
            putchar(',');
        }
        fputs("\"error\":", stdout);
        app_hsmtool_json_error(err, detail, false);
        printf(",\"usage\":%s}}\n", x->usage ? "true" : "false");
    }
}

int main(int argc, char **argv)
{
    ctx x = {0};
    bool done = false;
    int rc = 0;
    cdx_err err;

    /* The custody layer's info lines are for the daemon's log; the tool's
     * stdout already says what happened. CDX_LOG_LEVEL still wins. */
    if (!getenv("CDX_LOG_LEVEL"))
        cdx_log_set_level(CDX_LOG_WARN);
    if ((err = parse_args(&x, argc, argv)) || (err = pick_command(&x, &done)))
        goto out;
    if (done)
        goto out;
    if ((err = load_config(&x)))
        goto out;
    err = x.cmd->run(&x);
out:
    if (err != CDX_OK) {
        report_error(&x, err);
        rc = x.usage ? EXIT_USAGE : err == CDX_ERR_KEY_REPLACED ? EXIT_REPLACED : EXIT_ERROR;
    }
    hsm_custody_free(x.c);
    if (x.secmem)
        hsm_secmem_shutdown();
    /* A listing cut short (full disk, closed pipe) must not look like success. */
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, PROG ": cannot write output\n");
        if (rc == 0)
            rc = EXIT_ERROR;
    }
    return rc;
}
