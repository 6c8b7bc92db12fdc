/*
 * cipherdex-hsm audit verify FILE --deployment-id HEX32: check an audit
 * trail (policy/pol_audit.h) offline, with the token: every record's MAC
 * under the root key's audit subkey (derived on the token), the sequence and
 * the chain of previous-record hashes. Reports OK with counts, or the first
 * broken record (file:line) and why.
 */
#include <stdio.h>
#include <string.h>

#include "app_hsmtool.h"
#include "cdx_hex.h"
#include "hsm_keys.h"
#include "hsm_subkey.h"
#include "pol_audit.h"

static cdx_err audit_mac(void *arg, const void *msg, size_t len, uint8_t out[POL_AUDIT_HASH_LEN])
{
    return hsm_subkey_hmac(arg, msg, len, out);
}

cdx_err app_hsmtool_audit_verify(ctx *x)
{
    uint8_t dep[CDX_ID_LEN];
    cdx_err err;
    if ((err = app_hsmtool_hex_arg(x, O_DEPLOYMENT_ID, dep, sizeof(dep))))
        return err;
    FILE *f = fopen(x->arg, "r");
    if (!f)
        return cdx_fail(CDX_ERR_NOT_FOUND, "%s: cannot open the audit trail", x->arg);
    if ((err = app_hsmtool_open_custody(x))) {
        fclose(f);
        return err;
    }
    hsm_key_ref root = {.kind = HSM_KEY_ROOT};
    memcpy(root.id, dep, sizeof(dep));
    hsm_subkey *sk = NULL;
    if ((err = hsm_subkey_get(x->c, &root, NULL, HSM_P_AUDIT, 0, &sk))) {
        fclose(f);
        return err;
    }
    pol_audit_verifier v;
    pol_audit_verify_init(&v, NULL, audit_mac, sk);
    char line[POL_AUDIT_LINE_MAX + 2];
    unsigned long lineno = 0;
    while (!err && fgets(line, sizeof(line), f)) {
        lineno++;
        size_t n = strlen(line);
        if (n && line[n - 1] != '\n' && !feof(f))
            err = cdx_fail(CDX_ERR_INTEGRITY, "audit record %llu is longer than %d bytes",
                           (unsigned long long)v.pos.seq + 1, POL_AUDIT_LINE_MAX);
        else
            err = pol_audit_verify_line(&v, line, n);
        if (err == CDX_ERR_INTEGRITY) {
            char why[400];
            snprintf(why, sizeof(why), "%s", cdx_err_detail());
            err = cdx_fail(CDX_ERR_INTEGRITY, "%s:%lu: %s", x->arg, lineno, why);
        }
    }
    fclose(f);
    hsm_subkey_release(sk);
    if (err)
        return err;
    char hash[2 * POL_AUDIT_HASH_LEN + 1];
    cdx_hex_encode(v.pos.hash, POL_AUDIT_HASH_LEN, hash);
    app_out_field fields[] = {
        APP_FSTR("status", "ok"),        APP_FSTR("file", x->arg),
        APP_FNUM("records", v.records),  APP_FNUM("checkpoints", v.checkpoints),
        APP_FNUM("last_seq", v.pos.seq), APP_FNUM("last_ts_ms", v.pos.ts_ms),
        APP_FSTR("last_hash", hash),     APP_FBOOL("clean_stop", v.stopped),
    };
    app_hsmtool_record(x, fields, sizeof(fields) / sizeof(fields[0]));
    return CDX_OK;
}
