/* The appliance's audit records (see app_auditrec.h). */
#include "app_auditrec.h"

#include <stdio.h>
#include <string.h>

#include "cdx_hex.h"
#include "hsm_subkey.h"

static _Thread_local uint64_t tl_rid;
static _Thread_local const char *tl_principal;

void app_auditrec_thread_request(uint64_t request_id, const char *principal)
{
    tl_rid = request_id;
    tl_principal = principal;
}

cdx_err app_auditrec_mac(void *arg, const void *msg, size_t len, uint8_t out[POL_AUDIT_HASH_LEN])
{
    return hsm_subkey_hmac(arg, msg, len, out);
}

static void id_hex(const uint8_t *id, char out[2 * CDX_ID_LEN + 1])
{
    if (id)
        cdx_hex_encode(id, CDX_ID_LEN, out);
    else
        snprintf(out, 2 * CDX_ID_LEN + 1, "-");
}

/* "payload:cache,query:token": each purpose used, and whether the token was asked. */
static void keys_text(uint32_t cache, uint32_t token, char *out, size_t cap)
{
    size_t n = 0;
    out[0] = '\0';
    for (int p = 1; p < 32; p++) {
        uint32_t bit = 1u << p;
        const char *name = hsm_purpose_name((hsm_purpose)p);
        if (!((cache | token) & bit) || !name)
            continue;
        int w = snprintf(out + n, cap - n, "%s%s:%s", n ? "," : "", name,
                         token & bit ? "token" : "cache");
        if (w < 0 || (size_t)w >= cap - n)
            break;
        n += (size_t)w;
    }
    if (n == 0)
        snprintf(out, cap, "-");
}

cdx_err app_auditrec_request(app_audit *a, const app_audit_req *r)
{
    if (!a)
        return CDX_OK;
    char principal[CDX_PRINCIPAL_MAX * 3 + 4], idhex[2 * CDX_ID_LEN + 1], keys[256];
    char name[CDX_INDEX_NAME_MAX * 3 + 16] = "";
    app_audit_value(principal, sizeof(principal), r->principal);
    id_hex(r->index_id, idhex);
    keys_text(r->keys_cache, r->keys_token, keys, sizeof(keys));
    if (r->index_name) {
        char v[CDX_INDEX_NAME_MAX * 3 + 4];
        app_audit_value(v, sizeof(v), r->index_name);
        snprintf(name, sizeof(name), " index=%s", v);
    }
    char body[POL_AUDIT_LINE_MAX - 256];
    snprintf(body, sizeof(body),
             "kind=request op=%s principal=%s index_id=%s%s items=%llu epoch=%u code=%s "
             "request_id=%llu bytes_in=%llu bytes_out=%llu keys=%s us=%llu",
             r->op, principal, idhex, name, (unsigned long long)r->items, (unsigned)r->epoch,
             cdx_err_name((cdx_err)r->code), (unsigned long long)r->request_id,
             (unsigned long long)r->bytes_in, (unsigned long long)r->bytes_out, keys,
             (unsigned long long)r->us);
    return app_audit_write(a, body);
}

cdx_err app_auditrec_lifecycle(app_audit *a, const char *event, const uint8_t *index_id,
                               const char *principal, uint64_t request_id, const char *extra)
{
    if (!a)
        return CDX_OK;
    char p[CDX_PRINCIPAL_MAX * 3 + 4], idhex[2 * CDX_ID_LEN + 1];
    app_audit_value(p, sizeof(p), principal ? principal : "-");
    id_hex(index_id, idhex);
    char body[POL_AUDIT_LINE_MAX - 256];
    snprintf(body, sizeof(body),
             "kind=lifecycle event=%s index_id=%s principal=%s request_id=%llu%s%s", event, idhex,
             p, (unsigned long long)request_id, extra && extra[0] ? " " : "", extra ? extra : "");
    return app_audit_write(a, body);
}

void app_auditrec_key_event(void *arg, const hsm_event *ev)
{
    app_audit *a = arg;
    char idhex[2 * CDX_ID_LEN + 1], p[CDX_PRINCIPAL_MAX * 3 + 4];
    id_hex(ev->key_id, idhex);
    app_audit_value(p, sizeof(p), tl_principal ? tl_principal : "-");
    const char *purpose = ev->purpose ? hsm_purpose_name((hsm_purpose)ev->purpose) : NULL;
    char body[1400];
    snprintf(body, sizeof(body),
             "kind=key event=%s key=%s %s=%s purpose=%s epoch=%u kcv=%s result=%s "
             "request_id=%llu principal=%s",
             hsm_event_name(ev->kind),
             ev->key_kind == HSM_KEY_ROOT    ? "root"
             : ev->key_kind == HSM_KEY_INDEX ? "index"
                                             : "-",
             ev->key_kind == HSM_KEY_ROOT ? "deployment_id" : "index_id", idhex,
             purpose ? purpose : "-", (unsigned)ev->epoch,
             ev->kcv < 0 ? "-"
             : ev->kcv   ? "ok"
                         : "mismatch",
             cdx_err_name(ev->result), (unsigned long long)(tl_principal ? tl_rid : 0), p);
    /* A failure is the trail's state now: the request's own record will report it. */
    if (app_audit_write(a, body) != CDX_OK)
        return;
}
