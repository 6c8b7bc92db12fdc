/*
 * app_hsmtool_cmds.c - the commands of cipherdex-hsm (docs/ADMIN.md):
 * tokens, keys, root, kek, index. Each parses nothing itself beyond its
 * options' values, opens custody only when it needs the token, and prints
 * one record or table through app_out.
 */
#include <errno.h>
#include <openssl/evp.h>
#include <p11-kit/pkcs11.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "app_hsmtool.h"
#include "app_out.h"
#include "cdx_err.h"
#include "cdx_hex.h"
#include "cdx_limits.h"
#include "cdx_num.h"
#include "hsm_admin.h"
#include "hsm_custody.h"
#include "hsm_keys.h"
#include "hsm_secmem.h"

#define WRAPPED_FILE_MAX 4096

/* Token strings are blank-padded fixed-width fields. */
static void trim_copy(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    while (n > 0 && src[n - 1] == ' ')
        n--;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* ---- tokens ---- */

static void token_cell(const void *row, int col, char *buf, size_t cap)
{
    const hsm_token_info *t = row;
    if (t->err && col != 4 && col != 7) {
        snprintf(buf, cap, "-"); /* nothing is known of an unreadable slot's token */
        return;
    }
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
    case 6:
        snprintf(buf, cap, "%s", t->matches_uri ? "yes" : "no");
        break;
    default:
        if (t->err)
            snprintf(buf, cap, "%s (%s)", cdx_err_name(t->err), t->err_text);
        else
            snprintf(buf, cap, "ok");
        break;
    }
}

cdx_err app_hsmtool_tokens(ctx *x)
{
    static const char *const header[] = {"LABEL", "SERIAL",      "MANUFACTURER", "MODEL",
                                         "SLOT",  "INITIALIZED", "MATCHES_URI",  "STATUS"};
    hsm_token_info *t = NULL;
    size_t n = 0, bad = 0, first_bad = 0;
    const char *uri = x->cfg.token_uri[0] ? x->cfg.token_uri : NULL;
    cdx_err err = hsm_token_list(x->cfg.module_path, x->cfg.init_args, uri, &t, &n);
    if (err)
        return err;
    for (size_t i = n; i-- > 0;)
        if (t[i].err) {
            bad++;
            first_bad = i;
        }
    if (bad)
        err = cdx_fail(t[first_bad].err, "%zu of %zu slots could not be read; slot %lu: %s", bad, n,
                       t[first_bad].slot_id, t[first_bad].err_text);

    if (x->json) {
        char b[64];
        printf("{\"command\":\"tokens\",");
        app_out_json_key(stdout, "module");
        app_out_json_str(stdout, x->cfg.module_path);
        putchar(',');
        app_out_json_key(stdout, "uri");
        if (uri)
            app_out_json_str(stdout, uri);
        else
            fputs("null", stdout);
        fputs(",\"tokens\":[", stdout);
        for (size_t i = 0; i < n; i++) {
            printf("%s{", i ? "," : "");
            if (t[i].err) {
                printf("\"slot_id\":%lu,\"error\":{\"code\":%d,", t[i].slot_id, (int)t[i].err);
                app_out_json_key(stdout, "name");
                app_out_json_str(stdout, cdx_err_name(t[i].err));
                putchar(',');
                app_out_json_key(stdout, "detail");
                app_out_json_str(stdout, t[i].err_text);
                fputs("}}", stdout);
                continue;
            }
            app_out_json_key(stdout, "label");
            trim_copy(b, sizeof(b), t[i].label);
            app_out_json_str(stdout, b);
            putchar(',');
            app_out_json_key(stdout, "serial");
            trim_copy(b, sizeof(b), t[i].serial);
            app_out_json_str(stdout, b);
            putchar(',');
            app_out_json_key(stdout, "manufacturer");
            trim_copy(b, sizeof(b), t[i].manufacturer);
            app_out_json_str(stdout, b);
            putchar(',');
            app_out_json_key(stdout, "model");
            trim_copy(b, sizeof(b), t[i].model);
            app_out_json_str(stdout, b);
            printf(",\"slot_id\":%lu,\"initialized\":%s,\"matches_uri\":%s,\"error\":null}",
                   t[i].slot_id, t[i].initialized ? "true" : "false",
                   t[i].matches_uri ? "true" : "false");
        }
        /* An unreadable slot fails the run; the error goes in this one object. */
        fputs("],\"error\":", stdout);
        if (err) {
            app_hsmtool_json_error(err, cdx_err_detail(), true);
            x->json_printed = true;
        } else {
            fputs("null", stdout);
        }
        puts("}");
    } else {
        app_out_table(stdout, header, 8, t, sizeof(*t), n, token_cell);
        if (!uri)
            fprintf(stderr, "(no token URI configured: MATCHES_URI is no for every token)\n");
    }
    free(t);
    return err;
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
    HSM_A_UNWRAP_TEMPLATE,
};
#define N_ATTRS (sizeof(all_attrs) / sizeof(all_attrs[0]))

/* Attribute columns of the table: what an auditor checks. */
static const unsigned table_attrs[] = {
    HSM_A_SENSITIVE,
    HSM_A_EXTRACTABLE,
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
    HSM_A_UNWRAP_TEMPLATE,
};
#define N_TABLE_ATTRS (sizeof(table_attrs) / sizeof(table_attrs[0]))
#define N_KEY_COLS    (6 + (int)N_TABLE_ATTRS + 1)

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
    else if (t == CKK_SHA256_HMAC)
        snprintf(buf, cap, "sha256_hmac");
    else if (t == (unsigned long)-1)
        snprintf(buf, cap, "n/a");
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
            int w =
                snprintf(buf + len, cap - len, "%s%s", len ? "," : "", hsm_attr_name(all_attrs[i]));
            if (w > 0)
                len += (size_t)w;
        }
}

/*
 * One attribute as JSON: "true", "false", or "null" when the token did not
 * report it (never read as FALSE) or it does not apply (the unwrap template of
 * a key that is not a KEK).
 */
static const char *attr_value(const hsm_key_info *k, unsigned a)
{
    if (a == HSM_A_UNWRAP_TEMPLATE && k->kind != HSM_KEY_KEK && !(k->attrs & HSM_A_UNWRAP))
        return "null";
    if (k->unknown & a)
        return "null";
    return (k->attrs & a) ? "true" : "false";
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
    case 4: /* 0: the token does not say (unwrapped keys on SoftHSM, imports on opencryptoki) */
        if (k->value_len)
            snprintf(buf, cap, "%lu", k->value_len);
        else
            snprintf(buf, cap, "n/a");
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
        const char *v = attr_value(k, a);
        /* Mark deviations so they stand out in a long listing. */
        snprintf(buf, cap, "%s%s",
                 !strcmp(v, "true")    ? "yes"
                 : !strcmp(v, "false") ? "no"
                                       : "n/a",
                 (k->wrong & a) ? "!" : "");
        return;
    }
    template_str(k, buf, cap);
}

static void key_json(const hsm_key_info *k)
{
    char b[APP_OUT_CELL_MAX];

    putchar('{');
    app_out_json_key(stdout, "kind");
    app_out_json_str(stdout, kind_name(k->kind));
    putchar(',');
    app_out_json_key(stdout, "label");
    app_out_json_str(stdout, k->label);
    putchar(',');
    app_out_json_key(stdout, "id");
    key_cell(k, 2, b, sizeof(b));
    app_out_json_str(stdout, b);
    putchar(',');
    app_out_json_key(stdout, "key_type");
    key_type_name(k->key_type, b, sizeof(b));
    app_out_json_str(stdout, b);
    if (k->value_len)
        printf(",\"value_len\":%lu,", k->value_len);
    else
        fputs(",\"value_len\":null,", stdout);
    app_out_json_key(stdout, "kcv");
    if (k->has_kcv) {
        cdx_hex_encode(k->kcv, CDX_KCV_LEN, b);
        app_out_json_str(stdout, b);
    } else {
        fputs("null", stdout);
    }
    putchar(',');
    app_out_json_key(stdout, "template");
    template_str(k, b, sizeof(b));
    app_out_json_str(stdout, b);
    fputs(",\"wrong\":[", stdout);
    bool first = true;
    for (size_t i = 0; i < N_ATTRS; i++)
        if (k->wrong & all_attrs[i]) {
            if (!first)
                putchar(',');
            app_out_json_str(stdout, hsm_attr_name(all_attrs[i]));
            first = false;
        }
    fputs("],\"attributes\":{", stdout);
    for (size_t i = 0; i < N_ATTRS; i++) {
        if (i)
            putchar(',');
        app_out_json_key(stdout, hsm_attr_name(all_attrs[i]));
        fputs(attr_value(k, all_attrs[i]), stdout);
    }
    fputs("}}", stdout);
}

cdx_err app_hsmtool_keys(ctx *x)
{
    const char *header[N_KEY_COLS];
    char upper[N_TABLE_ATTRS][40];
    hsm_key_info *k = NULL;
    size_t n = 0, bad = 0;
    cdx_err err;

    if ((err = app_hsmtool_open_custody(x)) || (err = hsm_key_list(x->c, &k, &n)))
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
            for (const char *s = hsm_attr_name(table_attrs[j]); *s && m + 1 < sizeof(upper[j]); s++)
                upper[j][m++] = (char)(*s >= 'a' && *s <= 'z' ? *s - 'a' + 'A' : *s);
            upper[j][m] = '\0';
            header[6 + j] = upper[j];
        }
        header[N_KEY_COLS - 1] = "TEMPLATE";
        app_out_table(stdout, header, N_KEY_COLS, k, sizeof(*k), n, key_cell);
        if (n == 0)
            fprintf(stderr, "no cipherdex- keys on this token\n");
        if (bad)
            fprintf(stderr, "warning: %zu key(s) do not match their template (marked !)\n", bad);
    }
    free(k);
    return CDX_OK;
}

/* ---- root ---- */

cdx_err app_hsmtool_root_create(ctx *x)
{
    uint8_t id[CDX_ID_LEN], kcv[CDX_KCV_LEN];
    char idhex[2 * CDX_ID_LEN + 1], kcvhex[2 * CDX_KCV_LEN + 1], label[CDX_LABEL_MAX + 1];
    bool created = false;
    cdx_err err;

    if ((err = app_hsmtool_hex_arg(x, O_DEPLOYMENT_ID, id, sizeof(id))))
        return err;
    if ((err = app_hsmtool_open_custody(x)))
        return err;
    if ((err = hsm_root_key_ensure(x->c, id, kcv, &created)))
        return err;
    hsm_key_ref ref = {.kind = HSM_KEY_ROOT};
    memcpy(ref.id, id, sizeof(id));
    hsm_key_label(&ref, label);
    cdx_hex_encode(id, sizeof(id), idhex);
    cdx_hex_encode(kcv, sizeof(kcv), kcvhex);
    app_out_field f[] = {APP_FSTR("status", created ? "created" : "existing"),
                         APP_FSTR("label", label), APP_FSTR("deployment_id", idhex),
                         APP_FSTR("kcv", kcvhex)};
    app_hsmtool_record(x, f, sizeof(f) / sizeof(f[0]));
    return CDX_OK;
}

/* ---- KEKs ---- */

static cdx_err kek_name_arg(ctx *x)
{
    if (!hsm_kek_name_valid(x->arg))
        return app_hsmtool_usage(x, "KEK name `%s`: use 1-40 characters of A-Z a-z 0-9 _ . -",
                                 x->arg);
    return CDX_OK;
}

static void print_kek(ctx *x, const char *status)
{
    char label[CDX_LABEL_MAX + 16];
    snprintf(label, sizeof(label), "cipherdex-kek-%s", x->arg);
    app_out_field f[] = {APP_FSTR("status", status), APP_FSTR("name", x->arg),
                         APP_FSTR("label", label)};
    app_hsmtool_record(x, f, sizeof(f) / sizeof(f[0]));
}

cdx_err app_hsmtool_kek_create(ctx *x)
{
    cdx_err err;
    if ((err = kek_name_arg(x)) || (err = app_hsmtool_open_custody(x)) ||
        (err = hsm_kek_generate(x->c, x->arg)))
        return err;
    print_kek(x, "created");
    return CDX_OK;
}

cdx_err app_hsmtool_kek_import(ctx *x)
{
    uint8_t *key = NULL;
    cdx_err err;

    if ((err = kek_name_arg(x)) || (err = app_hsmtool_secmem_up(x)))
        goto out;
    /* Read (and validate) the key file before touching the token. */
    if ((err = hsm_key_file_read(x->val[O_KEY_FILE], &key)) ||
        (err = app_hsmtool_open_custody(x)) || (err = hsm_kek_import(x->c, x->arg, key)))
        goto out;
    print_kek(x, "imported");
out:
    hsm_secmem_free(key); /* wipes */
    return err;
}

cdx_err app_hsmtool_kek_destroy(ctx *x)
{
    cdx_err err;
    if ((err = kek_name_arg(x)))
        return err;
    if (!(x->given & BIT(O_YES)))
        return app_hsmtool_usage(
            x,
            "destroying KEK `%s` cannot be undone (wrapped keys made for it can "
            "no longer be unwrapped); add --yes",
            x->arg);
    if ((err = app_hsmtool_open_custody(x)) || (err = hsm_kek_destroy(x->c, x->arg)))
        return err;
    print_kek(x, "destroyed");
    return CDX_OK;
}

/* ---- index keys ---- */

/* One index key (generation ref->gen) and its KCV if known. */
static void print_index_ref(ctx *x, const char *status, const hsm_key_ref *ref, const uint8_t *kcv)
{
    char idhex[2 * CDX_ID_LEN + 1], kcvhex[2 * CDX_KCV_LEN + 1], label[CDX_LABEL_MAX + 1];

    hsm_key_label(ref, label);
    cdx_hex_encode(ref->id, CDX_ID_LEN, idhex);
    app_out_field f[5] = {APP_FSTR("status", status), APP_FSTR("id", idhex),
                          APP_FSTR("label", label), APP_FNUM("generation", ref->gen)};
    size_t n = 4;
    if (kcv) {
        cdx_hex_encode(kcv, CDX_KCV_LEN, kcvhex);
        f[n++] = APP_FSTR("kcv", kcvhex);
    }
    app_hsmtool_record(x, f, n);
}

static void print_index(ctx *x, const char *status, const uint8_t id[CDX_ID_LEN],
                        const uint8_t *kcv)
{
    hsm_key_ref ref = {.kind = HSM_KEY_INDEX};

    memcpy(ref.id, id, CDX_ID_LEN);
    print_index_ref(x, status, &ref, kcv);
}

/* --id and --gen (default 0): which index key. */
static cdx_err index_ref_arg(ctx *x, hsm_key_ref *ref)
{
    cdx_err err = app_hsmtool_hex_arg(x, O_ID, ref->id, sizeof(ref->id));
    if (err || !x->val[O_GEN])
        return err;
    if (!cdx_parse_u32(x->val[O_GEN], &ref->gen))
        return app_hsmtool_usage(x, "--gen: expected a key generation 0..%u, got `%s`", UINT32_MAX,
                                 x->val[O_GEN]);
    return CDX_OK;
}

/* --id if given, else a fresh random id from the token's RNG (custody must be open). */
static cdx_err index_id(ctx *x, uint8_t id[CDX_ID_LEN])
{
    if (x->val[O_ID])
        return app_hsmtool_hex_arg(x, O_ID, id, CDX_ID_LEN);
    return hsm_random(x->c, id, CDX_ID_LEN);
}

cdx_err app_hsmtool_index_generate(ctx *x)
{
    uint8_t id[CDX_ID_LEN], kcv[CDX_KCV_LEN];
    cdx_err err;

    if (x->val[O_ID] && (err = app_hsmtool_hex_arg(x, O_ID, id, sizeof(id))))
        return err;
    if ((err = app_hsmtool_open_custody(x)) || (err = index_id(x, id)) ||
        (err = hsm_index_key_generate(x->c, id, kcv)))
        return err;
    print_index(x, "generated", id, kcv);
    return CDX_OK;
}

/* The same key bytes must not become a second token object: name the one that has them. */
static cdx_err not_on_token(ctx *x, const uint8_t *key)
{
    uint8_t kcv[CDX_KCV_LEN];
    hsm_key_info *ki = NULL;
    size_t n = 0;
    cdx_err err = hsm_kcv_of_bytes(key, kcv);
    if (err || (err = hsm_key_list(x->c, &ki, &n)))
        return err;
    for (size_t i = 0; i < n && !err; i++)
        if (ki[i].kind == HSM_KEY_INDEX && ki[i].has_kcv &&
            !CRYPTO_memcmp(ki[i].kcv, kcv, CDX_KCV_LEN))
            err = cdx_fail(CDX_ERR_KEY_IN_USE,
                           "this key is already on the token as %s (the same KCV): use that "
                           "object (index create --adopt-key), do not import it twice",
                           ki[i].label);
    free(ki);
    return err;
}

cdx_err app_hsmtool_index_import(ctx *x)
{
    uint8_t id[CDX_ID_LEN], kcv[CDX_KCV_LEN];
    uint8_t *key = NULL;
    cdx_err err;

    if (x->val[O_ID] && (err = app_hsmtool_hex_arg(x, O_ID, id, sizeof(id))))
        goto out;
    if ((err = app_hsmtool_secmem_up(x)) || (err = hsm_key_file_read(x->val[O_KEY_FILE], &key)))
        goto out;
    if ((err = app_hsmtool_open_custody(x)) || (err = index_id(x, id)) ||
        (err = not_on_token(x, key)) || (err = hsm_index_key_import(x->c, id, key, kcv)))
        goto out;
    print_index(x, "imported", id, kcv);
out:
    hsm_secmem_free(key);
    return err;
}

/* A character of a base64 text file: the alphabet, the pad, line breaks and spaces. */
static bool is_b64_text(unsigned char c)
{
    return hsm_b64_char(c) || c == '=' || c == '\n' || c == '\r' || c == ' ';
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
            looks_b64 = is_b64_text(raw[i]);
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

cdx_err app_hsmtool_index_unwrap(ctx *x)
{
    uint8_t id[CDX_ID_LEN], kcv[CDX_KCV_LEN], blob[CDX_WRAPPED_KEY_LEN];
    size_t blen = 0;
    cdx_err err;

    if (!hsm_kek_name_valid(x->val[O_KEK]))
        return app_hsmtool_usage(x, "--kek `%s`: use 1-40 characters of A-Z a-z 0-9 _ . -",
                                 x->val[O_KEK]);
    if (x->val[O_ID] && (err = app_hsmtool_hex_arg(x, O_ID, id, sizeof(id))))
        return err;
    if ((err = read_wrapped(x, blob, sizeof(blob), &blen)))
        return err;
    if ((err = app_hsmtool_open_custody(x)) || (err = index_id(x, id)) ||
        (err = hsm_index_key_unwrap(x->c, id, x->val[O_KEK], blob, blen, kcv)))
        return err;
    print_index(x, "unwrapped", id, kcv);
    return CDX_OK;
}

cdx_err app_hsmtool_index_adopt(ctx *x)
{
    uint8_t id[CDX_ID_LEN], kcv[CDX_KCV_LEN];
    cdx_err err;

    if ((err = app_hsmtool_hex_arg(x, O_ID, id, sizeof(id))) ||
        (err = app_hsmtool_open_custody(x)) || (err = hsm_index_key_adopt(x->c, id, kcv)))
        return err;
    print_index(x, "adoptable", id, kcv);
    return CDX_OK;
}

cdx_err app_hsmtool_index_kcv(ctx *x)
{
    hsm_key_ref ref = {.kind = HSM_KEY_INDEX};
    uint8_t kcv[CDX_KCV_LEN];
    cdx_err err;

    if ((err = index_ref_arg(x, &ref)) || (err = app_hsmtool_open_custody(x)) ||
        (err = hsm_key_kcv(x->c, &ref, kcv)))
        return err;
    print_index_ref(x, "ok", &ref, kcv);
    return CDX_OK;
}

cdx_err app_hsmtool_index_check(ctx *x)
{
    hsm_key_ref ref = {.kind = HSM_KEY_INDEX};
    uint8_t want[CDX_KCV_LEN];
    cdx_err err;

    if ((err = index_ref_arg(x, &ref)) ||
        (err = app_hsmtool_hex_arg(x, O_KCV, want, sizeof(want))) ||
        (err = app_hsmtool_open_custody(x)) || (err = hsm_key_check(x->c, &ref, want)))
        return err;
    print_index_ref(x, "match", &ref, want);
    return CDX_OK;
}

cdx_err app_hsmtool_index_destroy(ctx *x)
{
    hsm_key_ref ref = {.kind = HSM_KEY_INDEX};
    cdx_err err;

    if ((err = index_ref_arg(x, &ref)))
        return err;
    if (!(x->given & BIT(O_YES)))
        return app_hsmtool_usage(x,
                                 "destroying an index key cannot be undone: everything encrypted "
                                 "under it becomes unreadable (crypto-shredding); add --yes");
    if ((err = app_hsmtool_open_custody(x)) || (err = hsm_key_destroy(x->c, &ref)))
        return err;
    print_index_ref(x, "destroyed", &ref, NULL);
    return CDX_OK;
}
