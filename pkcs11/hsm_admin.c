/*
 * Admin-only key custody (library cdx_pkcs11_admin): importing key bytes,
 * key files, KEK create/import/destroy, and listing the token's keys. The
 * only C_CreateObject of a token key is here (the daemon library's only other
 * one, in hsm_caps.c, makes a session-only KEK from public known-answer bytes).
 */
#include "hsm_admin.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "hsm_internal.h"
#include "hsm_secfile.h"
#include "hsm_secmem.h"

/* ---------------------------------------------------------------- import */

/* C_CreateObject of the template, which carries the key bytes as CKA_VALUE. */
static cdx_err make_import(hsm_custody *c, CK_SESSION_HANDLE s, struct hsm_create *a,
                           CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *h, CK_RV *rv)
{
    CK_RV r = c->f->C_CreateObject(s, t, n, h);
    if (r != CKR_OK) {
        char label[CDX_LABEL_MAX + 1];
        if (a->kind == HSM_KEY_KEK)
            hsm_label_kek(a->kek_name, label);
        else
            hsm_key_label(&a->ref, label);
        *rv = r;
        return hsm_ckr_fail_create(r, "C_CreateObject", label);
    }
    return CDX_OK;
}

cdx_err hsm_index_key_import(hsm_custody *c, const uint8_t id[CDX_ID_LEN],
                             const uint8_t key[CDX_KEY_LEN], uint8_t kcv_out[CDX_KCV_LEN])
{
    struct hsm_create a = {
        .kind = HSM_KEY_INDEX, .how = HSM_HOW_IMPORT, .make = make_import, .key = key};
    a.ref.kind = HSM_KEY_INDEX;
    memcpy(a.ref.id, id, CDX_ID_LEN);
    return hsm_key_create(c, &a, kcv_out);
}

cdx_err hsm_index_key_import_file(hsm_custody *c, const uint8_t id[CDX_ID_LEN], const char *path,
                                  uint8_t kcv_out[CDX_KCV_LEN])
{
    uint8_t *key = NULL;
    cdx_err err = hsm_key_file_read(path, &key);
    if (err)
        return err;
    err = hsm_index_key_import(c, id, key, kcv_out);
    hsm_secmem_free(key); /* wiped right after the token has it */
    return err;
}

/* ---------------------------------------------------------------- KEKs */

bool hsm_kek_name_valid(const char *name)
{
    return hsm_valid_kek_name(name);
}

cdx_err hsm_kek_generate(hsm_custody *c, const char *name)
{
    if (!hsm_kek_name_valid(name))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "KEK name must be 1-40 of [A-Za-z0-9_.-]");
    struct hsm_create a = {
        .kind = HSM_KEY_KEK, .how = HSM_HOW_GENERATE, .make = hsm_make_generate, .kek_name = name};
    return hsm_key_create(c, &a, NULL);
}

cdx_err hsm_kek_import(hsm_custody *c, const char *name, const uint8_t key[CDX_KEY_LEN])
{
    if (!hsm_kek_name_valid(name))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "KEK name must be 1-40 of [A-Za-z0-9_.-]");
    struct hsm_create a = {.kind = HSM_KEY_KEK,
                           .how = HSM_HOW_IMPORT,
                           .make = make_import,
                           .kek_name = name,
                           .key = key};
    return hsm_key_create(c, &a, NULL);
}

cdx_err hsm_kek_destroy(hsm_custody *c, const char *name)
{
    if (!hsm_kek_name_valid(name))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "KEK name must be 1-40 of [A-Za-z0-9_.-]");
    return hsm_object_destroy(c, NULL, name);
}

/* ---------------------------------------------------------------- listing */

const char *hsm_attr_name(unsigned bit)
{
    if (bit == HSM_A_UNWRAP_TEMPLATE)
        return "unwrap_template";
    for (size_t i = 0; i < hsm_nbattrs; i++)
        if (hsm_battrs[i].bit == bit)
            return hsm_battrs[i].name;
    return "?";
}

struct list_arg {
    hsm_key_info *v;
    size_t n;
};

static int cmp_info(const void *a, const void *b)
{
    return strcmp(((const hsm_key_info *)a)->label, ((const hsm_key_info *)b)->label);
}

static cdx_err list_op(hsm_custody *c, CK_SESSION_HANDLE s, void *arg, CK_RV *rv)
{
    struct list_arg *a = arg;
    CK_OBJECT_CLASS secret = CKO_SECRET_KEY;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &secret, sizeof(secret)}};
    CK_OBJECT_HANDLE *hs = NULL;
    size_t nh = 0, cap = 0;
    cdx_err err = CDX_OK;
    free(a->v);
    a->v = NULL;
    a->n = 0;
    CK_RV r = c->f->C_FindObjectsInit(s, t, 1);
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "C_FindObjectsInit");
    }
    for (;;) {
        if (nh == cap) {
            cap = cap ? cap * 2 : 64;
            CK_OBJECT_HANDLE *p = realloc(hs, cap * sizeof(*p));
            if (!p) {
                err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
                break;
            }
            hs = p;
        }
        CK_ULONG got = 0;
        r = c->f->C_FindObjects(s, hs + nh, cap - nh, &got);
        if (r != CKR_OK) {
            *rv = r;
            err = hsm_ckr_fail(r, "C_FindObjects");
            break;
        }
        nh += got;
        if (got == 0 || nh >= CDX_KEYS_LISTED_MAX)
            break;
    }
    (void)c->f->C_FindObjectsFinal(s);
    if (err)
        goto out;
    /* What the token supports decides which unknowns are accepted (not a refusal here). */
    err = hsm_caps_probe(c, s, false, rv);
    if (err == CDX_ERR_KEY_ATTRIBUTES)
        err = CDX_OK;
    if (err)
        goto out;
    unsigned optional = hsm_tmpl_optional(c);
    a->v = calloc(nh ? nh : 1, sizeof(*a->v));
    if (!a->v) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < nh; i++) {
        hsm_key_info ki;
        unsigned unknown;
        r = hsm_tmpl_read(c, s, hs[i], &ki, &unknown);
        if (r != CKR_OK) {
            *rv = r;
            err = hsm_ckr_fail(r, "C_GetAttributeValue");
            goto out;
        }
        if (strncmp(ki.label, "cipherdex-", 10))
            continue;
        if (!strcmp(ki.label, "cipherdex-root"))
            ki.kind = HSM_KEY_ROOT;
        else if (!strncmp(ki.label, "cipherdex-index-", 16))
            ki.kind = HSM_KEY_INDEX;
        else if (!strncmp(ki.label, "cipherdex-kek-", 14))
            ki.kind = HSM_KEY_KEK;
        if (ki.kind)
            ki.wrong = hsm_tmpl_wrong(ki.kind, &ki, unknown & ~optional);
        if (ki.kind != HSM_KEY_KEK && (ki.attrs & HSM_A_SIGN) && hsm_hmac_type_ok(ki.key_type)) {
            r = hsm_compute_kcv(c, s, hs[i], ki.kcv);
            if (r == CKR_OK)
                ki.has_kcv = true;
            else if (hsm_ckr_recoverable(r)) {
                *rv = r;
                err = hsm_ckr_fail(r, "KCV (C_Sign)");
                goto out;
            }
        }
        a->v[a->n++] = ki;
    }
    qsort(a->v, a->n, sizeof(*a->v), cmp_info);
out:
    free(hs);
    if (err) {
        free(a->v);
        a->v = NULL;
        a->n = 0;
    }
    return err;
}

cdx_err hsm_key_list(hsm_custody *c, hsm_key_info **out, size_t *n)
{
    struct list_arg a = {0};
    cdx_err err = hsm_run(c, list_op, &a, true);
    *out = a.v;
    *n = a.n;
    return err;
}

/* ---------------------------------------------------------------- key files */

bool hsm_b64_char(unsigned char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           ch == '+' || ch == '/';
}

static bool is_space(unsigned char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\v' || ch == '\f' || ch == '\r';
}

cdx_err hsm_key_file_read(const char *path, uint8_t **key)
{
    /* Any mode: `openssl rand -base64 32 > f`, as docs/ADMIN.md says, makes a 0644 file. */
    const hsm_secfile_opts o = {.what = "key file",
                                .max = CDX_KEY_FILE_MAX,
                                .err = CDX_ERR_BAD_KEY_FILE,
                                .any_mode = true,
                                .allow_empty = true};
    cdx_err err = CDX_OK;
    char *text = NULL;
    uint8_t *raw = NULL;
    size_t n = 0;

    *key = NULL;
    if ((err = hsm_secfile_read(path, &o, &text, &n)))
        return err;
    raw = hsm_secmem_alloc(CDX_KEY_FILE_MAX);
    if (!raw) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "secret memory exhausted reading a key file");
        goto out;
    }
    /* Drop whitespace (openssl rand -base64 ends with a newline), then validate strictly. */
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (!is_space((unsigned char)text[i]))
            text[m++] = text[i];
    size_t pad = 0;
    while (pad < 2 && m > pad && text[m - 1 - pad] == '=')
        pad++;
    for (size_t i = 0; i < m - pad; i++)
        if (!hsm_b64_char((unsigned char)text[i])) {
            err = cdx_fail(CDX_ERR_BAD_KEY_FILE,
                           "key file %s is not base64 (bad character at offset %zu); create it "
                           "with: openssl rand -base64 32",
                           path, i);
            goto out;
        }
    if (m == 0 || m % 4 != 0) {
        err = cdx_fail(CDX_ERR_BAD_KEY_FILE,
                       "key file %s is not base64 (%zu characters, not a multiple of 4)", path, m);
        goto out;
    }
    int dec = EVP_DecodeBlock(raw, (const unsigned char *)text, (int)m);
    size_t len = dec < 0 ? 0 : (size_t)dec - pad;
    if (dec < 0) {
        err = cdx_fail(CDX_ERR_BAD_KEY_FILE, "key file %s is not valid base64", path);
        goto out;
    }
    if (len != CDX_KEY_LEN) {
        err = cdx_fail(CDX_ERR_BAD_KEY_FILE,
                       "key file %s decodes to %zu bytes; an index key is exactly 32 bytes "
                       "(openssl rand -base64 32)",
                       path, len);
        goto out;
    }
    *key = hsm_secmem_alloc(CDX_KEY_LEN);
    if (!*key) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "secret memory exhausted reading a key file");
        goto out;
    }
    memcpy(*key, raw, CDX_KEY_LEN);
out:
    hsm_secmem_free(text);
    hsm_secmem_free(raw);
    return err;
}
