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
                           .make = hsm_make_import,
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
