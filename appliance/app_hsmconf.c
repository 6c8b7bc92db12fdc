#include "app_hsmconf.h"
#include "app_ini.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cdx_limits.h"

/* ---- the [hsm] section ---- */

enum {
    K_MODULE,
    K_TOKEN,
    K_PIN,
    K_ALLOW_ENV_PIN,
    K_ALLOW_UNLOCKED,
    K_SESSIONS,
    K_TTL,
    K_SECMEM,
    K_INIT_ARGS,
    K_UNWRAP_MECH,
    K_HMAC_KT,
    K_COPYABLE,
    K_COUNT
};

static const char *const key_names[K_COUNT] = {
    "module",        "token",         "pin",          "allow_env_pin", "allow_unlocked_memory",
    "sessions",      "subkey_ttl_ms", "secmem_bytes", "init_args",     "unwrap_mechanism",
    "hmac_key_type", "copyable",
};

_Static_assert(K_COUNT <= sizeof(((app_hsmconf_seen *)0)->line) / sizeof(unsigned),
               "app_hsmconf_seen.line too small");

static cdx_err bad(const char *key, const char *what)
{
    return cdx_fail(CDX_ERR_CONFIG, "%s: %s", key, what);
}

static bool contains_ci(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; *hay; hay++)
        if (strncasecmp(hay, needle, n) == 0)
            return true;
    return false;
}

/* auto | kwp | pad | 0xNNNN (a CKM_ value, vendor mechanisms included). */
static cdx_err unwrap_mech(const char *key, const char *value, unsigned long *out)
{
    if (!strcmp(value, "auto")) {
        *out = 0;
        return CDX_OK;
    }
    if (!strcmp(value, "kwp")) {
        *out = 0x210BUL; /* CKM_AES_KEY_WRAP_KWP */
        return CDX_OK;
    }
    if (!strcmp(value, "pad")) {
        *out = 0x210AUL; /* CKM_AES_KEY_WRAP_PAD */
        return CDX_OK;
    }
    if (strncmp(value, "0x", 2) == 0 && value[2]) {
        char *end = NULL;
        errno = 0;
        unsigned long long v = strtoull(value + 2, &end, 16);
        if (errno == 0 && *end == '\0' && v != 0 && v <= 0xffffffffULL) {
            *out = (unsigned long)v;
            return CDX_OK;
        }
    }
    return bad(key, "must be auto, kwp (CKM_AES_KEY_WRAP_KWP), pad (CKM_AES_KEY_WRAP_PAD) or a "
                    "mechanism number such as 0x210b");
}

cdx_err app_hsmconf_set(hsm_config *cfg, app_hsmconf_seen *seen, unsigned line, const char *key,
                        const char *value)
{
    int k;
    uint64_t n;
    cdx_err err;

    for (k = 0; k < K_COUNT; k++)
        if (strcmp(key, key_names[k]) == 0)
            break;
    if (k == K_COUNT)
        return cdx_fail(CDX_ERR_CONFIG,
                        "unknown key `%s` in [hsm] (known: module, token, pin, allow_env_pin, "
                        "allow_unlocked_memory, sessions, subkey_ttl_ms, secmem_bytes, init_args, "
                        "unwrap_mechanism, hmac_key_type, copyable)",
                        key);
    if (seen) {
        if (seen->mask & (1u << k))
            return cdx_fail(CDX_ERR_CONFIG, "%s: set twice (first on line %u); keep one", key,
                            seen->line[k]);
        seen->mask |= 1u << k;
        seen->line[k] = line;
    }
    if (value[0] == '\0')
        return bad(key, "empty value");

    switch (k) {
    case K_MODULE:
        if (value[0] != '/')
            return bad(key, "must be an absolute path to the PKCS#11 module (.so)");
        return app_ini_str(key, value, cfg->module_path, sizeof(cfg->module_path));
    case K_TOKEN:
        if (strncasecmp(value, "pkcs11:", 7) != 0)
            return bad(key, "must be an RFC 7512 URI such as pkcs11:token=cipherdex");
        if (contains_ci(value, "pin-value") || contains_ci(value, "pin-source"))
            return bad(key, "the URI must not carry a PIN; set `pin = file:/path` instead");
        return app_ini_str(key, value, cfg->token_uri, sizeof(cfg->token_uri));
    case K_PIN:
        if (strncmp(value, "file:", 5) == 0) {
            if (value[5] != '/')
                return bad(key, "file: needs an absolute path (pin = file:/etc/cipherdex/pin)");
        } else if (strncmp(value, "cred:", 5) == 0 || strncmp(value, "env:", 4) == 0) {
            if (strchr(value, ':')[1] == '\0')
                return bad(key, "the source needs a name after the scheme");
        } else {
            return bad(key, "PIN source must be file:/path, cred:NAME or env:NAME "
                            "(the PIN itself never goes in the configuration)");
        }
        return app_ini_str(key, value, cfg->pin_source, sizeof(cfg->pin_source));
    case K_ALLOW_ENV_PIN:
        return app_ini_bool(key, value, &cfg->allow_env_pin);
    case K_ALLOW_UNLOCKED:
        return app_ini_bool(key, value, &cfg->allow_unlocked_memory);
    case K_SESSIONS:
        err = app_ini_uint(key, value, CDX_SESSIONS_MAX, false, &n);
        if (err == CDX_OK)
            cfg->sessions = (unsigned)n;
        return err;
    case K_TTL:
        err = app_ini_uint(key, value, CDX_SUBKEY_TTL_MAX_MS, false, &n);
        if (err == CDX_OK)
            cfg->subkey_ttl_ms = (uint32_t)n;
        return err;
    case K_SECMEM:
        err = app_ini_uint(key, value, CDX_SECMEM_MAX, true, &n);
        if (err == CDX_OK)
            cfg->secmem_bytes = (size_t)n;
        return err;
    case K_INIT_ARGS:
        /* Passed verbatim as C_Initialize's pReserved; only the module can judge it. */
        return app_ini_str(key, value, cfg->init_args, sizeof(cfg->init_args));
    case K_UNWRAP_MECH:
        return unwrap_mech(key, value, &cfg->unwrap_mechanism);
    case K_HMAC_KT:
        if (!strcmp(value, "auto"))
            cfg->hmac_key_type = HSM_HMAC_KT_AUTO;
        else if (!strcmp(value, "generic"))
            cfg->hmac_key_type = HSM_HMAC_KT_GENERIC;
        else if (!strcmp(value, "sha256_hmac"))
            cfg->hmac_key_type = HSM_HMAC_KT_SHA256;
        else
            return bad(key, "must be auto (CKK_GENERIC_SECRET, falling back to CKK_SHA256_HMAC), "
                            "generic or sha256_hmac");
        return CDX_OK;
    case K_COPYABLE:
        if (!strcmp(value, "required"))
            cfg->copyable = HSM_COPYABLE_REQUIRED;
        else if (!strcmp(value, "unsupported"))
            cfg->copyable = HSM_COPYABLE_UNSUPPORTED;
        else
            return bad(key, "must be required (the default) or unsupported (accept a token "
                            "without CKA_COPYABLE; see docs/CUSTODY.md)");
        return CDX_OK;
    }
    return bad(key, "unhandled key"); /* not reached */
}

typedef struct load_ctx {
    hsm_config *cfg;
    app_hsmconf_seen seen;
} load_ctx;

static cdx_err load_one(void *user, unsigned line, const char *section, const char *key,
                        const char *value)
{
    load_ctx *l = user;

    if (section[0] == '\0')
        return cdx_fail(CDX_ERR_CONFIG, "key `%s` outside any [section] (put it under [hsm]?)",
                        key);
    if (strcasecmp(section, APP_HSMCONF_SECTION) == 0 && strcmp(section, APP_HSMCONF_SECTION))
        return cdx_fail(CDX_ERR_CONFIG, "section [%s]: section names are lower case ([hsm])",
                        section);
    if (strcmp(section, APP_HSMCONF_SECTION) != 0)
        return CDX_OK; /* other sections are other loaders' business */
    return app_hsmconf_set(l->cfg, &l->seen, line, key, value);
}

cdx_err app_hsmconf_load(const char *path, hsm_config *cfg)
{
    load_ctx l = {.cfg = cfg};
    return app_ini_load(path, load_one, &l);
}
