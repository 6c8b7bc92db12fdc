#include "hsm_config.h"

#include <string.h>

#include <p11-kit/uri.h>

#include "cdx_limits.h"

void hsm_config_init(hsm_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
}

cdx_err hsm_config_check(const hsm_config *cfg)
{
    cdx_err err = CDX_OK;
    P11KitUri *uri = NULL;

    if (!cfg->module_path[0])
        return cdx_fail(CDX_ERR_CONFIG, "hsm module path is not set");
    if (cfg->module_path[0] != '/')
        return cdx_fail(CDX_ERR_CONFIG, "hsm module path must be absolute: %s", cfg->module_path);
    if (!cfg->token_uri[0])
        return cdx_fail(CDX_ERR_CONFIG, "hsm token URI is not set (e.g. pkcs11:token=LABEL)");
    uri = p11_kit_uri_new();
    if (!uri)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    int r = p11_kit_uri_parse(cfg->token_uri, P11_KIT_URI_FOR_TOKEN, uri);
    if (r != P11_KIT_URI_OK) {
        err = cdx_fail(CDX_ERR_CONFIG, "token URI '%s' does not parse: %s", cfg->token_uri,
                       p11_kit_uri_message(r));
        goto out;
    }
    if (p11_kit_uri_get_pin_value(uri)) {
        /* Do not echo the URI: it holds the PIN. */
        err = cdx_fail(CDX_ERR_CONFIG,
                       "token URI carries a pin-value: remove it and set the PIN source "
                       "(pin = file:/path or cred:NAME)");
        goto out;
    }
    if (p11_kit_uri_get_pin_source(uri)) {
        err = cdx_fail(CDX_ERR_CONFIG,
                       "token URI carries a pin-source: set the PIN source in the hsm section "
                       "instead (pin = file:/path or cred:NAME)");
        goto out;
    }
    CK_TOKEN_INFO *ti = p11_kit_uri_get_token_info(uri);
    /* p11-kit leaves fields the URI does not name zero-filled ("match anything"). */
    if (!ti->label[0] && !ti->serialNumber[0] && !ti->manufacturerID[0] && !ti->model[0]) {
        err = cdx_fail(CDX_ERR_CONFIG,
                       "token URI '%s' names no token: give token=LABEL or serial=SERIAL",
                       cfg->token_uri);
        goto out;
    }
    if (!cfg->pin_source[0]) {
        err = cdx_fail(CDX_ERR_CONFIG, "no PIN source configured (pin = file:/path | cred:NAME)");
        goto out;
    }
    if (strncmp(cfg->pin_source, "file:", 5) && strncmp(cfg->pin_source, "cred:", 5) &&
        strncmp(cfg->pin_source, "env:", 4)) {
        err = cdx_fail(CDX_ERR_CONFIG, "unknown PIN source scheme: use file:, cred: or env:");
        goto out;
    }
    if (!strncmp(cfg->pin_source, "env:", 4) && !cfg->allow_env_pin) {
        err = cdx_fail(CDX_ERR_CONFIG,
                       "PIN source env: is refused unless allow_env_pin = yes (prefer file: or cred:)");
        goto out;
    }
    if (cfg->sessions > CDX_SESSIONS_MAX) {
        err = cdx_fail(CDX_ERR_CONFIG, "sessions = %u exceeds the maximum %d", cfg->sessions,
                       CDX_SESSIONS_MAX);
        goto out;
    }
    if (cfg->subkey_ttl_ms > CDX_SUBKEY_TTL_MAX_MS) {
        err = cdx_fail(CDX_ERR_CONFIG, "subkey_ttl_ms = %u exceeds the maximum %u",
                       cfg->subkey_ttl_ms, CDX_SUBKEY_TTL_MAX_MS);
        goto out;
    }
    if (cfg->secmem_bytes > CDX_SECMEM_MAX) {
        err = cdx_fail(CDX_ERR_CONFIG, "secmem_bytes = %zu exceeds the maximum %u",
                       cfg->secmem_bytes, (unsigned)CDX_SECMEM_MAX);
        goto out;
    }
out:
    p11_kit_uri_free(uri);
    return err;
}
