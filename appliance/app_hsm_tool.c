/*
 * app_hsm_tool.c - cipherdex-hsm, the offline admin tool for Cipherdex's
 * keys on a PKCS#11 token (DESIGN §3): list tokens and keys, create the
 * root key, manage KEKs, provision, check and destroy index keys.
 *
 * It reads the daemon's configuration file ([hsm] section) and never takes
 * a PIN on the command line (it would show in ps and shell history): the
 * PIN comes from the configured source, through hsm_pin into locked memory.
 */
#include <errno.h>
#include <openssl/evp.h>
#include <p11-kit/pkcs11.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app_hsmconf.h"
#include "cdx_err.h"
#include "cdx_hex.h"
#include "cdx_limits.h"
#include "cdx_log.h"
#include "hsm_config.h"
#include "hsm_custody.h"
#include "hsm_admin.h"
#include "hsm_keys.h"
#include "hsm_secmem.h"

#define PROG             "cipherdex-hsm"
#define DEFAULT_MODULE   "/usr/lib/softhsm/libsofthsm2.so"
#define WRAPPED_FILE_MAX 4096

enum { EXIT_ERROR = 1, EXIT_USAGE = 2, EXIT_REPLACED = 3 };

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
    O_COUNT
};

#define BIT(o) (1u << (o))
#define GLOBAL_OPTS                                                                                \
    (BIT(O_CONFIG) | BIT(O_MODULE) | BIT(O_TOKEN) | BIT(O_PIN_SOURCE) | BIT(O_JSON) | BIT(O_HELP))

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
};

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
    bool usage; /* the error is a usage error (exit 2) */
    hsm_config cfg;
    hsm_custody *c;
    bool secmem; /* we hold a reference on the secret arena */
};

static cdx_err usage_fail(ctx *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static cdx_err usage_fail(ctx *x, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cdx_vfail(CDX_ERR_INVALID_ARGUMENT, fmt, ap);
    va_end(ap);
    x->usage = true;
    return CDX_ERR_INVALID_ARGUMENT;
}

/* ---- small helpers ---- */

static cdx_err hex_arg(ctx *x, int opt, uint8_t *out, size_t n)
{
    const char *s = x->val[opt];
    if (strlen(s) != 2 * n)
        return usage_fail(x, "--%s: expected %zu hex digits, got %zu", optdefs[opt].name, 2 * n,
                          strlen(s));
    if (cdx_hex_decode(s, out, n) != 0)
        return usage_fail(x, "--%s: `%s` is not hexadecimal", optdefs[opt].name, s);
    return CDX_OK;
}

/* Token strings are blank-padded fixed-width fields. */
static void trim_copy(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    while (n > 0 && src[n - 1] == ' ')
        n--;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* ---- JSON output (a tiny escaping printer: only strings need care) ---- */

/* Length of the valid UTF-8 sequence at s, or 0 if it is not one. */
static size_t utf8_len(const unsigned char *s)
{
    unsigned char c = s[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xbf;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef)
        n = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        n = 4;
    else
        return 0;
    /* Reject overlong forms, surrogates and code points above U+10FFFF. */
    if (c == 0xe0)
        lo = 0xa0;
    else if (c == 0xed)
        hi = 0x9f;
    else if (c == 0xf0)
        lo = 0x90;
    else if (c == 0xf4)
        hi = 0x8f;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return n;
}

static void json_str(const char *str)
{
    const unsigned char *s = (const unsigned char *)str;

    putchar('"');
    while (*s) {
        size_t n = utf8_len(s);
        if (n == 0) {
            fputs("\\ufffd", stdout); /* token strings are not promised to be UTF-8 */
            s++;
        } else if (n > 1) {
            fwrite(s, 1, n, stdout);
            s += n;
        } else {
            switch (*s) {
            case '"':
                fputs("\\\"", stdout);
                break;
            case '\\':
                fputs("\\\\", stdout);
                break;
            case '\n':
                fputs("\\n", stdout);
                break;
            case '\r':
                fputs("\\r", stdout);
                break;
            case '\t':
                fputs("\\t", stdout);
                break;
            default:
                if (*s < 0x20 || *s == 0x7f)
                    printf("\\u%04x", *s);
                else
                    putchar(*s);
            }
            s++;
        }
    }
    putchar('"');
}

static void json_key(const char *k)
{
    json_str(k);
    putchar(':');
}

/* ---- single-object output: "key  value" lines, or one JSON object ---- */

typedef enum { F_STR, F_BOOL, F_NUM } ftype;

typedef struct field {
    const char *key;
    ftype type;
    const char *s;
    bool b;
    unsigned long long n;
} field;

#define FSTR(k, v)  ((field){.key = (k), .type = F_STR, .s = (v)})
#define FBOOL(k, v) ((field){.key = (k), .type = F_BOOL, .b = (v)})

static const char *command_name(const ctx *x, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s%s%s", x->cmd->group, x->cmd->verb ? " " : "",
             x->cmd->verb ? x->cmd->verb : "");
    return buf;
}

static void print_record(const ctx *x, const field *f, size_t n)
{
    char name[64];

    if (x->json) {
        putchar('{');
        json_key("command");
        json_str(command_name(x, name, sizeof(name)));
        for (size_t i = 0; i < n; i++) {
            putchar(',');
            json_key(f[i].key);
            if (f[i].type == F_STR)
                json_str(f[i].s);
            else if (f[i].type == F_BOOL)
                fputs(f[i].b ? "true" : "false", stdout);
            else
                printf("%llu", f[i].n);
        }
        puts("}");
        return;
    }
    int w = 0;
    for (size_t i = 0; i < n; i++)
        if ((int)strlen(f[i].key) > w)
            w = (int)strlen(f[i].key);
    for (size_t i = 0; i < n; i++) {
        if (f[i].type == F_STR)
            printf("%-*s  %s\n", w, f[i].key, f[i].s);
        else if (f[i].type == F_BOOL)
            printf("%-*s  %s\n", w, f[i].key, f[i].b ? "yes" : "no");
        else
            printf("%-*s  %llu\n", w, f[i].key, f[i].n);
    }
}

/* ---- tables: widths from a first pass, then print ---- */

#define CELL_MAX 512

typedef void (*cell_fn)(const void *row, int col, char *buf, size_t cap);

static void print_table(const char *const *header, int ncols, const void *rows, size_t stride,
                        size_t nrows, cell_fn cell)
{
    int w[32] = {0};
    char buf[CELL_MAX];

    for (int j = 0; j < ncols; j++)
        w[j] = (int)strlen(header[j]);
    for (size_t i = 0; i < nrows; i++)
        for (int j = 0; j < ncols; j++) {
            cell((const char *)rows + i * stride, j, buf, sizeof(buf));
            if ((int)strlen(buf) > w[j])
                w[j] = (int)strlen(buf);
        }
    for (int j = 0; j < ncols; j++)
        if (j + 1 < ncols)
            printf("%-*s  ", w[j], header[j]);
        else
            printf("%s\n", header[j]);
    for (size_t i = 0; i < nrows; i++)
        for (int j = 0; j < ncols; j++) {
            cell((const char *)rows + i * stride, j, buf, sizeof(buf));
            if (j + 1 < ncols)
                printf("%-*s  ", w[j], buf);
            else
                printf("%s\n", buf);
        }
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

static cdx_err open_custody(ctx *x)
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
static cdx_err secmem_up(ctx *x)
{
    cdx_err err = hsm_secmem_init(x->cfg.secmem_bytes, x->cfg.allow_unlocked_memory);
    if (err == CDX_OK)
        x->secmem = true;
    return err;
}

/* ---- tokens ---- */

static void token_cell(const void *row, int col, char *buf, size_t cap)
{
    const hsm_token_info *t = row;
    switch (col) {
    case 0:
        trim_copy(buf, cap, t->label);
        break;
    case 1:
        trim_copy(buf, cap, t->serial);
        break;
    case 2:
        trim_copy(buf, cap, t->manufacturer);
        break;
    case 3:
        trim_copy(buf, cap, t->model);
        break;
    case 4:
        snprintf(buf, cap, "%lu", t->slot_id);
        break;
    case 5:
        snprintf(buf, cap, "%s", t->initialized ? "yes" : "no");
        break;
    default:
        snprintf(buf, cap, "%s", t->matches_uri ? "yes" : "no");
        break;
    }
}

static cdx_err cmd_tokens(ctx *x)
{
    static const char *const header[] = {"LABEL", "SERIAL",      "MANUFACTURER", "MODEL",
                                         "SLOT",  "INITIALIZED", "MATCHES_URI"};
    hsm_token_info *t = NULL;
    size_t n = 0;
    const char *uri = x->cfg.token_uri[0] ? x->cfg.token_uri : NULL;
    cdx_err err = hsm_token_list(x->cfg.module_path, uri, &t, &n);
    if (err)
        return err;

    if (x->json) {
        char b[64];
        printf("{\"command\":\"tokens\",");
        json_key("module");
        json_str(x->cfg.module_path);
        putchar(',');
        json_key("uri");
        if (uri)
            json_str(uri);
        else
            fputs("null", stdout);
        fputs(",\"tokens\":[", stdout);
        for (size_t i = 0; i < n; i++) {
            printf("%s{", i ? "," : "");
            json_key("label");
            trim_copy(b, sizeof(b), t[i].label);
            json_str(b);
            putchar(',');
            json_key("serial");
            trim_copy(b, sizeof(b), t[i].serial);
            json_str(b);
            putchar(',');
            json_key("manufacturer");
            trim_copy(b, sizeof(b), t[i].manufacturer);
            json_str(b);
            putchar(',');
            json_key("model");
            trim_copy(b, sizeof(b), t[i].model);
            json_str(b);
            printf(",\"slot_id\":%lu,\"initialized\":%s,\"matches_uri\":%s}", t[i].slot_id,
                   t[i].initialized ? "true" : "false", t[i].matches_uri ? "true" : "false");
        }
        puts("]}");
    } else {
        print_table(header, 7, t, sizeof(*t), n, token_cell);
        if (!uri)
            fprintf(stderr, "(no token URI configured: MATCHES_URI is no for every token)\n");
    }
    free(t);
    return CDX_OK;
}

/* ---- keys ---- */

static const unsigned all_attrs[] = {
    HSM_A_TOKEN,
    HSM_A_PRIVATE,
    HSM_A_SENSITIVE,
    HSM_A_EXTRACTABLE,
    HSM_A_ALWAYS_SENSITIVE,
    HSM_A_NEVER_EXTRACTABLE,
    HSM_A_LOCAL,
    HSM_A_SIGN,
    HSM_A_VERIFY,
    HSM_A_ENCRYPT,
    HSM_A_DECRYPT,
    HSM_A_WRAP,
    HSM_A_UNWRAP,
    HSM_A_DERIVE,
    HSM_A_MODIFIABLE,
    HSM_A_COPYABLE,
    HSM_A_DESTROYABLE,
};
#define N_ATTRS (sizeof(all_attrs) / sizeof(all_attrs[0]))

/* Attribute columns of the table: what an auditor checks. */
static const unsigned table_attrs[] = {
    HSM_A_SENSITIVE, HSM_A_EXTRACTABLE, HSM_A_NEVER_EXTRACTABLE, HSM_A_LOCAL, HSM_A_SIGN,
    HSM_A_VERIFY,    HSM_A_ENCRYPT,     HSM_A_DECRYPT,           HSM_A_WRAP,  HSM_A_UNWRAP,
    HSM_A_DERIVE,    HSM_A_MODIFIABLE,  HSM_A_COPYABLE,
};
#define N_TABLE_ATTRS (sizeof(table_attrs) / sizeof(table_attrs[0]))
#define N_KEY_COLS    (6 + (int)N_TABLE_ATTRS + 1)

static const char *attr_name(unsigned bit)
{
    const char *s = hsm_attr_name(bit);
    return s ? s : "?";
}

static const char *kind_name(hsm_key_kind k)
{
    switch (k) {
    case HSM_KEY_ROOT:
        return "root";
    case HSM_KEY_INDEX:
        return "index";
    case HSM_KEY_KEK:
        return "kek";
    }
    return "unknown";
}

static void key_type_name(unsigned long t, char *buf, size_t cap)
{
    if (t == CKK_GENERIC_SECRET)
        snprintf(buf, cap, "generic_secret");
    else if (t == CKK_AES)
        snprintf(buf, cap, "aes");
    else
        snprintf(buf, cap, "0x%lx", t);
}

/* "ok", or the wrong attributes joined by commas. */
static void template_str(const hsm_key_info *k, char *buf, size_t cap)
{
    size_t len = 0;

    if (k->kind == 0) {
        snprintf(buf, cap, "unknown kind");
        return;
    }
    if (k->wrong == 0) {
        snprintf(buf, cap, "ok");
        return;
    }
    buf[0] = '\0';
    for (size_t i = 0; i < N_ATTRS; i++)
        if ((k->wrong & all_attrs[i]) && len < cap) {
            int w = snprintf(buf + len, cap - len, "%s%s", len ? "," : "", attr_name(all_attrs[i]));
            if (w > 0)
                len += (size_t)w;
        }
}

static void key_cell(const void *row, int col, char *buf, size_t cap)
{
    const hsm_key_info *k = row;
    switch (col) {
    case 0:
        snprintf(buf, cap, "%s", kind_name(k->kind));
        return;
    case 1:
        snprintf(buf, cap, "%s", k->label);
        return;
    case 2:
        if (k->id_len * 2 + 1 > cap || k->id_len == 0)
            snprintf(buf, cap, "-");
        else
            cdx_hex_encode(k->id, k->id_len, buf);
        return;
    case 3:
        key_type_name(k->key_type, buf, cap);
        return;
    case 4:
        snprintf(buf, cap, "%lu", k->value_len);
        return;
    case 5:
        if (k->has_kcv)
            cdx_hex_encode(k->kcv, CDX_KCV_LEN, buf);
        else
            snprintf(buf, cap, "-");
        return;
    }
    col -= 6;
    if (col < (int)N_TABLE_ATTRS) {
        unsigned a = table_attrs[col];
        /* Mark deviations so they stand out in a long listing. */
        snprintf(buf, cap, "%s%s", (k->attrs & a) ? "yes" : "no", (k->wrong & a) ? "!" : "");
        return;
    }
    template_str(k, buf, cap);
}

static void key_json(const hsm_key_info *k)
{
    char b[CELL_MAX];

    putchar('{');
    json_key("kind");
    json_str(kind_name(k->kind));
    putchar(',');
    json_key("label");
    json_str(k->label);
    putchar(',');
    json_key("id");
    key_cell(k, 2, b, sizeof(b));
    json_str(b);
    putchar(',');
    json_key("key_type");
    key_type_name(k->key_type, b, sizeof(b));
    json_str(b);
    printf(",\"value_len\":%lu,", k->value_len);
    json_key("kcv");
    if (k->has_kcv) {
        cdx_hex_encode(k->kcv, CDX_KCV_LEN, b);
        json_str(b);
    } else {
        fputs("null", stdout);
    }
    putchar(',');
    json_key("template");
    template_str(k, b, sizeof(b));
    json_str(b);
    fputs(",\"wrong\":[", stdout);
    bool first = true;
    for (size_t i = 0; i < N_ATTRS; i++)
        if (k->wrong & all_attrs[i]) {
            if (!first)
                putchar(',');
            json_str(attr_name(all_attrs[i]));
            first = false;
        }
    fputs("],\"attributes\":{", stdout);
    for (size_t i = 0; i < N_ATTRS; i++) {
        if (i)
            putchar(',');
        json_key(attr_name(all_attrs[i]));
        fputs((k->attrs & all_attrs[i]) ? "true" : "false", stdout);
    }
    fputs("}}", stdout);
}

static cdx_err cmd_keys(ctx *x)
{
    const char *header[N_KEY_COLS];
    char upper[N_TABLE_ATTRS][40];
    hsm_key_info *k = NULL;
    size_t n = 0, bad = 0;
    cdx_err err;

    if ((err = open_custody(x)) || (err = hsm_key_list(x->c, &k, &n)))
        return err;

    for (size_t i = 0; i < n; i++)
        if (k[i].kind == 0 || k[i].wrong)
            bad++;
    if (x->json) {
        fputs("{\"command\":\"keys\",\"keys\":[", stdout);
        for (size_t i = 0; i < n; i++) {
            if (i)
                putchar(',');
            key_json(&k[i]);
        }
        printf("],\"count\":%zu,\"mismatches\":%zu}\n", n, bad);
    } else {
        static const char *const fixed[] = {"KIND", "LABEL", "ID", "TYPE", "LEN", "KCV"};
        for (int j = 0; j < 6; j++)
            header[j] = fixed[j];
        for (size_t j = 0; j < N_TABLE_ATTRS; j++) {
            size_t m = 0;
            for (const char *s = attr_name(table_attrs[j]); *s && m + 1 < sizeof(upper[j]); s++)
                upper[j][m++] = (char)(*s >= 'a' && *s <= 'z' ? *s - 'a' + 'A' : *s);
            upper[j][m] = '\0';
            header[6 + j] = upper[j];
        }
        header[N_KEY_COLS - 1] = "TEMPLATE";
        print_table(header, N_KEY_COLS, k, sizeof(*k), n, key_cell);
        if (n == 0)
            fprintf(stderr, "no cipherdex- keys on this token\n");
        if (bad)
            fprintf(stderr, "warning: %zu key(s) do not match their template (marked !)\n", bad);
    }
    free(k);
    return CDX_OK;
}

/* ---- root ---- */

static cdx_err cmd_root_create(ctx *x)
{
    uint8_t id[CDX_ID_LEN], kcv[CDX_KCV_LEN];
    char idhex[2 * CDX_ID_LEN + 1], kcvhex[2 * CDX_KCV_LEN + 1], label[CDX_LABEL_MAX + 1];
    bool created = false;
    cdx_err err;

    if ((err = hex_arg(x, O_DEPLOYMENT_ID, id, sizeof(id))))
        return err;
    if ((err = open_custody(x)))
        return err;
    if ((err = hsm_root_key_ensure(x->c, id, kcv, &created)))
        return err;
    hsm_key_ref ref = {.kind = HSM_KEY_ROOT};
    memcpy(ref.id, id, sizeof(id));
    hsm_key_label(&ref, label);
    cdx_hex_encode(id, sizeof(id), idhex);
    cdx_hex_encode(kcv, sizeof(kcv), kcvhex);
    field f[] = {FSTR("status", created ? "created" : "existing"), FSTR("label", label),
                 FSTR("deployment_id", idhex), FSTR("kcv", kcvhex)};
    print_record(x, f, sizeof(f) / sizeof(f[0]));
    return CDX_OK;
}

/* ---- KEKs ---- */

static cdx_err kek_name_arg(ctx *x)
{
    if (!hsm_kek_name_valid(x->arg))
        return usage_fail(x, "KEK name `%s`: use 1-40 characters of A-Z a-z 0-9 _ . -", x->arg);
    return CDX_OK;
}

static void print_kek(ctx *x, const char *status)
{
    char label[CDX_LABEL_MAX + 16];
    snprintf(label, sizeof(label), "cipherdex-kek-%s", x->arg);
    field f[] = {FSTR("status", status), FSTR("name", x->arg), FSTR("label", label)};
    print_record(x, f, sizeof(f) / sizeof(f[0]));
}

static cdx_err cmd_kek_create(ctx *x)
{
    cdx_err err;
    if ((err = kek_name_arg(x)) || (err = open_custody(x)) ||
        (err = hsm_kek_generate(x->c, x->arg)))
        return err;
    print_kek(x, "created");
    return CDX_OK;
}

static cdx_err cmd_kek_import(ctx *x)
{
    uint8_t *key = NULL;
    cdx_err err;

    if ((err = kek_name_arg(x)) || (err = secmem_up(x)))
        goto out;
    /* Read (and validate) the key file before touching the token. */
    if ((err = hsm_key_file_read(x->val[O_KEY_FILE], &key)) || (err = open_custody(x)) ||
        (err = hsm_kek_import(x->c, x->arg, key)))
        goto out;
    print_kek(x, "imported");
out:
    hsm_secmem_free(key); /* wipes */
    return err;
}

static cdx_err cmd_kek_destroy(ctx *x)
{
    cdx_err err;
    if ((err = kek_name_arg(x)))
        return err;
    if (!(x->given & BIT(O_YES)))
        return usage_fail(x,
                          "destroying KEK `%s` cannot be undone (wrapped keys made for it can "
                          "no longer be unwrapped); add --yes",
                          x->arg);
    if ((err = open_custody(x)) || (err = hsm_kek_destroy(x->c, x->arg)))
        return err;
    print_kek(x, "destroyed");
    return CDX_OK;
}

/* ---- index keys ---- */

static void print_index(ctx *x, const char *status, const uint8_t id[CDX_ID_LEN],
                        const uint8_t *kcv)
{
    char idhex[2 * CDX_ID_LEN + 1], kcvhex[2 * CDX_KCV_LEN + 1], label[CDX_LABEL_MAX + 1];
    hsm_key_ref ref = {.kind = HSM_KEY_INDEX};

    memcpy(ref.id, id, CDX_ID_LEN);
    hsm_key_label(&ref, label);
    cdx_hex_encode(id, CDX_ID_LEN, idhex);
    field f[4] = {FSTR("status", status), FSTR("id", idhex), FSTR("label", label)};
    size_t n = 3;
    if (kcv) {
        cdx_hex_encode(kcv, CDX_KCV_LEN, kcvhex);
        f[n++] = FSTR("kcv", kcvhex);
    }
    print_record(x, f, n);
}

/* --id if given, else a fresh random id from the token's RNG (custody must be open). */
static cdx_err index_id(ctx *x, uint8_t id[CDX_ID_LEN])
{
    if (x->val[O_ID])
        return hex_arg(x, O_ID, id, CDX_ID_LEN);
    return hsm_random(x->c, id, CDX_ID_LEN);
}

static cdx_err cmd_index_generate(ctx *x)
{
    uint8_t id[CDX_ID_LEN], kcv[CDX_KCV_LEN];
    cdx_err err;

    if (x->val[O_ID] && (err = hex_arg(x, O_ID, id, sizeof(id))))
        return err;
    if ((err = open_custody(x)) || (err = index_id(x, id)) ||
        (err = hsm_index_key_generate(x->c, id, kcv)))
        return err;
    print_index(x, "generated", id, kcv);
    return CDX_OK;
}

static cdx_err cmd_index_import(ctx *x)
{
    uint8_t id[CDX_ID_LEN], kcv[CDX_KCV_LEN];
    uint8_t *key = NULL;
    cdx_err err;

    if (x->val[O_ID] && (err = hex_arg(x, O_ID, id, sizeof(id))))
        goto out;
    if ((err = secmem_up(x)) || (err = hsm_key_file_read(x->val[O_KEY_FILE], &key)))
        goto out;
    if ((err = open_custody(x)) || (err = index_id(x, id)) ||
        (err = hsm_index_key_import(x->c, id, key, kcv)))
        goto out;
    print_index(x, "imported", id, kcv);
out:
    hsm_secmem_free(key);
    return err;
}

static bool is_b64_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/' || c == '=' || c == '\n' || c == '\r' || c == ' ';
}

/*
 * The wrapped key is ciphertext, not a secret: ordinary memory is fine.
 * EVP_Decode* skips whitespace and line breaks, as `base64` writes them.
 */
static cdx_err read_wrapped(ctx *x, uint8_t *out, size_t cap, size_t *len)
{
    const char *path = x->val[O_WRAPPED];
    uint8_t raw[WRAPPED_FILE_MAX + 1];
    size_t n;
    cdx_err err = CDX_OK;
    FILE *f = fopen(path, "rb");

    if (!f)
        return cdx_fail(CDX_ERR_BAD_WRAPPED_KEY, "%s: cannot open: %s", path, strerror(errno));
    n = fread(raw, 1, sizeof(raw), f);
    if (ferror(f)) {
        err = cdx_fail(CDX_ERR_BAD_WRAPPED_KEY, "%s: read error", path);
        goto out;
    }
    if (n > WRAPPED_FILE_MAX) {
        err = cdx_fail(CDX_ERR_BAD_WRAPPED_KEY, "%s: larger than %d bytes; expected %d", path,
                       WRAPPED_FILE_MAX, CDX_WRAPPED_KEY_LEN);
        goto out;
    }
    if (x->given & BIT(O_BASE64)) {
        EVP_ENCODE_CTX *e = EVP_ENCODE_CTX_new();
        uint8_t dec[WRAPPED_FILE_MAX];
        int a = 0, b = 0, rc = -1;
        if (e) {
            EVP_DecodeInit(e);
            rc = EVP_DecodeUpdate(e, dec, &a, raw, (int)n);
            if (rc >= 0)
                rc = EVP_DecodeFinal(e, dec + a, &b);
            EVP_ENCODE_CTX_free(e);
        }
        if (rc < 0) {
            err = cdx_fail(CDX_ERR_BAD_WRAPPED_KEY,
                           "%s: not valid base64 (drop --base64 if "
                           "the file holds the raw blob)",
                           path);
            goto out;
        }
        n = (size_t)a + (size_t)b;
        memcpy(raw, dec, n);
    }
    if (n != CDX_WRAPPED_KEY_LEN) {
        bool looks_b64 = !(x->given & BIT(O_BASE64)) && n > 0;
        for (size_t i = 0; looks_b64 && i < n; i++)
            looks_b64 = is_b64_char(raw[i]);
        err = cdx_fail(CDX_ERR_BAD_WRAPPED_KEY,
                       "%s: %zu bytes after decoding, expected exactly %d (RFC 5649 wrap of a "
                       "32-byte key)%s",
                       path, n, CDX_WRAPPED_KEY_LEN,
                       looks_b64 ? "; the file looks like base64: add --base64" : "");
        goto out;
    }
    if (n > cap) {
        err = cdx_fail(CDX_ERR_INTERNAL, "wrapped key buffer too small");
        goto out;
    }
    memcpy(out, raw, n);
    *len = n;
out:
    fclose(f);
    return err;
}

static cdx_err cmd_index_unwrap(ctx *x)
{
    uint8_t id[CDX_ID_LEN], kcv[CDX_KCV_LEN], blob[CDX_WRAPPED_KEY_LEN];
    size_t blen = 0;
    cdx_err err;

    if (!hsm_kek_name_valid(x->val[O_KEK]))
        return usage_fail(x, "--kek `%s`: use 1-40 characters of A-Z a-z 0-9 _ . -", x->val[O_KEK]);
    if (x->val[O_ID] && (err = hex_arg(x, O_ID, id, sizeof(id))))
        return err;
    if ((err = read_wrapped(x, blob, sizeof(blob), &blen)))
        return err;
    if ((err = open_custody(x)) || (err = index_id(x, id)) ||
        (err = hsm_index_key_unwrap(x->c, id, x->val[O_KEK], blob, blen, kcv)))
        return err;
    print_index(x, "unwrapped", id, kcv);
    return CDX_OK;
}

static cdx_err cmd_index_adopt(ctx *x)
{
    uint8_t id[CDX_ID_LEN], kcv[CDX_KCV_LEN];
    cdx_err err;

    if ((err = hex_arg(x, O_ID, id, sizeof(id))) || (err = open_custody(x)) ||
        (err = hsm_index_key_adopt(x->c, id, kcv)))
        return err;
    print_index(x, "adoptable", id, kcv);
    return CDX_OK;
}

static cdx_err cmd_index_kcv(ctx *x)
{
    hsm_key_ref ref = {.kind = HSM_KEY_INDEX};
    uint8_t kcv[CDX_KCV_LEN];
    cdx_err err;

    if ((err = hex_arg(x, O_ID, ref.id, sizeof(ref.id))) || (err = open_custody(x)) ||
        (err = hsm_key_kcv(x->c, &ref, kcv)))
        return err;
    print_index(x, "ok", ref.id, kcv);
    return CDX_OK;
}

static cdx_err cmd_index_check(ctx *x)
{
    hsm_key_ref ref = {.kind = HSM_KEY_INDEX};
    uint8_t want[CDX_KCV_LEN];
    cdx_err err;

    if ((err = hex_arg(x, O_ID, ref.id, sizeof(ref.id))) ||
        (err = hex_arg(x, O_KCV, want, sizeof(want))) || (err = open_custody(x)) ||
        (err = hsm_key_check(x->c, &ref, want)))
        return err;
    print_index(x, "match", ref.id, want);
    return CDX_OK;
}

static cdx_err cmd_index_destroy(ctx *x)
{
    hsm_key_ref ref = {.kind = HSM_KEY_INDEX};
    cdx_err err;

    if ((err = hex_arg(x, O_ID, ref.id, sizeof(ref.id))))
        return err;
    if (!(x->given & BIT(O_YES)))
        return usage_fail(x, "destroying an index key cannot be undone: everything encrypted "
                             "under it becomes unreadable (crypto-shredding); add --yes");
    if ((err = open_custody(x)) || (err = hsm_key_destroy(x->c, &ref)))
        return err;
    print_index(x, "destroyed", ref.id, NULL);
    return CDX_OK;
}

/* ---- command table and help ---- */

static const cmd commands[] = {
    {"tokens", NULL, NULL, 0, 0, false, cmd_tokens, "tokens",
     "List the tokens the module shows, without logging in: label, serial, manufacturer,\n"
     "model, slot, whether initialised, and whether the configured token URI selects it.\n"},
    {"keys", NULL, NULL, 0, 0, true, cmd_keys, "keys",
     "List every secret key whose label starts with cipherdex-: kind, label, CKA_ID, key\n"
     "type, length, KCV and attributes. TEMPLATE is `ok` or the attributes that differ\n"
     "from the kind's template (also marked ! in their columns). Root and index keys must\n"
     "read DERIVE, MODIFIABLE and COPYABLE no; generated keys are LOCAL and\n"
     "NEVER_EXTRACTABLE, imported and unwrapped keys cannot be (PKCS#11 rules).\n"},
    {"root", "create", NULL, BIT(O_DEPLOYMENT_ID), BIT(O_DEPLOYMENT_ID), true, cmd_root_create,
     "root create --deployment-id HEX32",
     "Create the deployment's root key (label cipherdex-root, CKA_ID = deployment id) if\n"
     "none exists, or check the existing one. Prints created or existing, and the KCV.\n"},
    {"kek", "create", "NAME", 0, 0, true, cmd_kek_create, "kek create NAME",
     "Generate an AES-256 key-encryption key cipherdex-kek-NAME on the token (unwrap\n"
     "only, never extractable). Its value never leaves the token: use `kek import` for a\n"
     "KEK shared with a KMS.\n"},
    {"kek", "import", "NAME", BIT(O_KEY_FILE), BIT(O_KEY_FILE), true, cmd_kek_import,
     "kek import NAME --key-file FILE",
     "Import a KEK shared with a KMS: FILE holds base64 of 32 bytes. The bytes go through\n"
     "locked memory and are wiped after the import; delete FILE afterwards.\n"},
    /* --yes is checked by the command, which says what would be lost. */
    {"kek", "destroy", "NAME", BIT(O_YES), 0, true, cmd_kek_destroy, "kek destroy NAME --yes",
     "Destroy the KEK cipherdex-kek-NAME.\n"},
    {"index", "generate", NULL, BIT(O_ID), 0, true, cmd_index_generate,
     "index generate [--id HEX32]",
     "Generate an index key on the token (CKA_LOCAL, never extractable). Without --id a\n"
     "random index id comes from the token's RNG. Prints id, label and KCV.\n"},
    {"index", "import", NULL, BIT(O_ID) | BIT(O_KEY_FILE), BIT(O_KEY_FILE), true, cmd_index_import,
     "index import --key-file FILE [--id HEX32]",
     "Import an index key from FILE (base64 of 32 bytes: openssl rand -base64 32). The\n"
     "bytes go through locked memory and are wiped after; delete FILE afterwards.\n"},
    {"index", "unwrap", NULL, BIT(O_ID) | BIT(O_KEK) | BIT(O_WRAPPED) | BIT(O_BASE64),
     BIT(O_KEK) | BIT(O_WRAPPED), true, cmd_index_unwrap,
     "index unwrap --kek NAME --wrapped FILE [--base64] [--id HEX32]",
     "Unwrap a KMS-style encrypted data key with KEK cipherdex-kek-NAME on the token\n"
     "(CKM_AES_KEY_WRAP_PAD, RFC 5649). FILE holds the 40-byte wrapped blob, or its\n"
     "base64 with --base64. The key bytes never reach this host in clear.\n"},
    {"index", "adopt", NULL, BIT(O_ID), BIT(O_ID), true, cmd_index_adopt, "index adopt --id HEX32",
     "Check that the existing key cipherdex-index-HEX32 (CKA_ID HEX32) has every template\n"
     "attribute, so an index can be created on it. Prints its KCV.\n"},
    {"index", "kcv", NULL, BIT(O_ID), BIT(O_ID), true, cmd_index_kcv, "index kcv --id HEX32",
     "Compute the key check value of an index key on the token.\n"},
    {"index", "check", NULL, BIT(O_ID) | BIT(O_KCV), BIT(O_ID) | BIT(O_KCV), true, cmd_index_check,
     "index check --id HEX32 --kcv HEX16",
     "Compare the key's KCV with the recorded one: exit 0 if they match, 3 (KEY_REPLACED)\n"
     "if the key under that label is a different key.\n"},
    {"index", "destroy", NULL, BIT(O_ID) | BIT(O_YES), BIT(O_ID), true, cmd_index_destroy,
     "index destroy --id HEX32 --yes",
     "Destroy an index key (crypto-shredding): its data can never be decrypted again once\n"
     "every appliance's subkey TTL has passed. Refused without --yes.\n"},
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
               "  --json             one JSON object on stdout instead of a table\n"
               "  --help             this text; `" PROG " COMMAND --help` for one command\n"
               "\nFlags override the file, the file overrides CIPHERDEX_HSM_MODULE,\n"
               "CIPHERDEX_TOKEN_URI and CIPHERDEX_PIN_SOURCE.\n"
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
                return usage_fail(x, "unexpected argument `%s`", a);
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
            return usage_fail(x, "unknown option `%s` (options are long: --name)", a);
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        if ((nlen == 3 && strncmp(name, "pin", 3) == 0) ||
            (nlen == 6 && strncmp(name, "so-pin", 6) == 0))
            return usage_fail(x, "a PIN is never accepted on the command line (it would show "
                                 "in ps and shell history): use --pin-source file:/path or "
                                 "`pin = file:/path` in the [hsm] section");
        int o;
        for (o = 0; o < O_COUNT; o++)
            if (strlen(optdefs[o].name) == nlen && strncmp(optdefs[o].name, name, nlen) == 0)
                break;
        if (o == O_COUNT)
            return usage_fail(x, "unknown option `--%.*s`", (int)nlen, name);
        if (x->given & BIT(o))
            return usage_fail(x, "option --%s given twice", optdefs[o].name);
        x->given |= BIT(o);
        x->json = x->given & BIT(O_JSON); /* early, so a later usage error is JSON too */
        if (!optdefs[o].has_arg) {
            if (eq)
                return usage_fail(x, "option --%s takes no value", optdefs[o].name);
            continue;
        }
        if (eq) {
            x->val[o] = eq + 1;
        } else {
            if (i + 1 >= argc)
                return usage_fail(x, "option --%s needs a value", optdefs[o].name);
            x->val[o] = argv[++i];
        }
        if (x->val[o][0] == '\0')
            return usage_fail(x, "option --%s: empty value", optdefs[o].name);
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
        return usage_fail(x, "no command given");
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
            return usage_fail(x, "`%s %s` needs %s", c->group, c->verb, c->arg);
        if (x->nwords > want)
            return usage_fail(x, "unexpected argument `%s`", x->words[want]);
        x->arg = c->arg ? x->words[want - 1] : NULL;
        unsigned extra = x->given & ~(GLOBAL_OPTS | c->allowed);
        for (int o = 0; o < O_COUNT; o++)
            if (extra & BIT(o))
                return usage_fail(x, "option --%s does not apply to `%s%s%s`", optdefs[o].name,
                                  c->group, c->verb ? " " : "", c->verb ? c->verb : "");
        unsigned missing = c->required & ~x->given;
        for (int o = 0; o < O_COUNT; o++)
            if (missing & BIT(o))
                return usage_fail(x, "`%s%s%s` needs --%s", c->group, c->verb ? " " : "",
                                  c->verb ? c->verb : "", optdefs[o].name);
        return CDX_OK;
    }
    if (!group_known)
        return usage_fail(x, "unknown command `%s`", g);
    if (help) {
        group_help(stdout, g);
        *done = true;
        return CDX_OK;
    }
    if (!v)
        return usage_fail(x, "`%s` needs a subcommand", g);
    return usage_fail(x, "unknown subcommand `%s %s`", g, v);
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
    if (x->json) {
        char name[64];
        printf("{");
        if (x->cmd) {
            json_key("command");
            json_str(command_name(x, name, sizeof(name)));
            putchar(',');
        }
        printf("\"error\":{\"code\":%d,", (int)err);
        json_key("name");
        json_str(cdx_err_name(err));
        putchar(',');
        json_key("message");
        json_str(cdx_strerror(err));
        putchar(',');
        json_key("detail");
        json_str(detail);
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
