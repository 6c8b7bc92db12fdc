/*
 * cipherdex-hsm audit verify FILE|DIR --deployment-id HEX32 [--max-age S]:
 * check an audit trail (policy/pol_audit.h) offline, with the token: every
 * record's MAC under the root key's audit subkey (derived on the token),
 * the sequence and the chain of previous-record hashes, across rotated
 * files. Reports OK with counts, or the first broken record (file:line) and
 * why.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "app_hsmtool.h"
#include "cdx_hex.h"
#include "cdx_num.h"
#include "cdx_time.h"
#include "hsm_keys.h"
#include "hsm_subkey.h"
#include "pol_audit.h"

#define FILES_MAX 100000

static cdx_err audit_mac(void *arg, const void *msg, size_t len, uint8_t out[POL_AUDIT_HASH_LEN])
{
    return hsm_subkey_hmac(arg, msg, len, out);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool rotated_name(const char *n)
{
    size_t l = strlen(n);
    if (l != 6 + 20 + 4 || strncmp(n, "audit-", 6) || strcmp(n + l - 4, ".log"))
        return false;
    for (size_t i = 6; i < 26; i++)
        if (n[i] < '0' || n[i] > '9')
            return false;
    return true;
}

/* The trail's files in chain order: DIR's audit-SEQ.log by name, then audit.log. */
static cdx_err list_files(const char *path, char ***out, size_t *n)
{
    struct stat st;
    *out = NULL;
    *n = 0;
    if (stat(path, &st) != 0)
        return cdx_fail(CDX_ERR_NOT_FOUND, "%s: cannot open the audit trail", path);
    size_t cap = 16;
    char **v = calloc(cap, sizeof(*v));
    if (!v)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    if (!S_ISDIR(st.st_mode)) {
        v[0] = strdup(path);
        *out = v;
        *n = 1;
        return v[0] ? CDX_OK : cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    DIR *d = opendir(path);
    if (!d) {
        free(v);
        return cdx_fail(CDX_ERR_NOT_FOUND, "%s: cannot read the directory", path);
    }
    struct dirent *e;
    bool current = false;
    cdx_err err = CDX_OK;
    while (!err && (e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, "audit.log")) {
            current = true;
            continue;
        }
        if (!rotated_name(e->d_name))
            continue;
        if (*n + 2 > cap) {
            char **nv = cap < FILES_MAX ? realloc(v, 2 * cap * sizeof(*v)) : NULL;
            if (!nv) {
                err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "too many audit files in %s", path);
                break;
            }
            v = nv;
            cap *= 2;
        }
        size_t l = strlen(path) + strlen(e->d_name) + 2;
        if (!(v[*n] = malloc(l)))
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        else
            snprintf(v[(*n)++], l, "%s/%s", path, e->d_name);
    }
    closedir(d);
    if (!err) {
        qsort(v, *n, sizeof(*v), by_name);
        if (current) {
            size_t l = strlen(path) + sizeof("/audit.log");
            if (!(v[*n] = malloc(l)))
                err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            else
                snprintf(v[(*n)++], l, "%s/audit.log", path);
        }
    }
    if (!err && *n == 0)
        err = cdx_fail(CDX_ERR_NOT_FOUND, "%s holds no audit trail files", path);
    *out = v;
    return err;
}

/* Every line of one file into the verifier; the first one of the trail may start mid-chain. */
static cdx_err verify_file(pol_audit_verifier *v, const char *path, bool *first,
                           uint64_t *first_seq)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return cdx_fail(CDX_ERR_NOT_FOUND, "%s: cannot open the audit trail", path);
    char line[POL_AUDIT_LINE_MAX + 2];
    unsigned long lineno = 0;
    cdx_err err = CDX_OK;
    while (!err && fgets(line, sizeof(line), f)) {
        lineno++;
        size_t n = strlen(line);
        if (n && line[n - 1] != '\n' && !feof(f)) {
            err = cdx_fail(CDX_ERR_INTEGRITY, "audit record %llu is longer than %d bytes",
                           (unsigned long long)v->pos.seq + 1, POL_AUDIT_LINE_MAX);
        } else {
            if (*first) {
                pol_audit_pos before;
                if (!(err = pol_audit_line_head(line, n, &before))) {
                    v->pos = before;
                    *first_seq = before.seq + 1;
                }
                *first = false;
            }
            if (!err)
                err = pol_audit_verify_line(v, line, n);
        }
        if (err == CDX_ERR_INTEGRITY) {
            char why[400];
            snprintf(why, sizeof(why), "%s", cdx_err_detail());
            err = cdx_fail(CDX_ERR_INTEGRITY, "%s:%lu: %s", path, lineno, why);
        }
    }
    fclose(f);
    return err;
}

cdx_err app_hsmtool_audit_verify(ctx *x)
{
    uint8_t dep[CDX_ID_LEN];
    cdx_err err;
    uint64_t max_age_s = 0;
    if ((err = app_hsmtool_hex_arg(x, O_DEPLOYMENT_ID, dep, sizeof(dep))))
        return err;
    if (x->val[O_MAX_AGE] && (!cdx_parse_u64(x->val[O_MAX_AGE], &max_age_s) || max_age_s == 0 ||
                              max_age_s > 366ull * 86400))
        return app_hsmtool_usage(x, "--max-age: seconds, 1 to %llu", 366ull * 86400);
    char **files = NULL;
    size_t nfiles = 0;
    hsm_subkey *sk = NULL;
    if ((err = list_files(x->arg, &files, &nfiles)) || (err = app_hsmtool_open_custody(x)))
        goto out;
    hsm_key_ref root = {.kind = HSM_KEY_ROOT};
    memcpy(root.id, dep, sizeof(dep));
    if ((err = hsm_subkey_get(x->c, &root, NULL, HSM_P_AUDIT, 0, &sk)))
        goto out;
    pol_audit_verifier v;
    pol_audit_verify_init(&v, NULL, audit_mac, sk);
    bool first = true;
    uint64_t first_seq = 0;
    for (size_t i = 0; !err && i < nfiles; i++)
        err = verify_file(&v, files[i], &first, &first_seq);
    if (!err && v.records == 0)
        err = cdx_fail(CDX_ERR_NOT_FOUND, "%s: the audit trail holds no records", x->arg);
    if (!err && max_age_s)
        err = pol_audit_verify_end(&v, cdx_wall_ms(), max_age_s * 1000);
    if (err)
        goto out;
    char hash[2 * POL_AUDIT_HASH_LEN + 1];
    cdx_hex_encode(v.pos.hash, POL_AUDIT_HASH_LEN, hash);
    app_out_field fields[] = {
        APP_FSTR("status", "ok"),         APP_FSTR("path", x->arg),
        APP_FNUM("files", nfiles),        APP_FNUM("records", v.records),
        APP_FNUM("first_seq", first_seq), APP_FNUM("checkpoints", v.checkpoints),
        APP_FNUM("last_seq", v.pos.seq),  APP_FNUM("last_ts_ms", v.pos.ts_ms),
        APP_FSTR("last_hash", hash),      APP_FBOOL("clean_stop", v.stopped),
    };
    app_hsmtool_record(x, fields, sizeof(fields) / sizeof(fields[0]));
out:
    hsm_subkey_release(sk);
    for (size_t i = 0; i < nfiles; i++)
        free(files[i]);
    free(files);
    return err;
}
