#include "app_hsmconf.h"

#include <errno.h>
#include <ini.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "cdx_limits.h"

/* ---- generic INI loading with exact line numbers ---- */

/*
 * libinih (Debian build) has no line-number handler and splits lines longer
 * than INI_MAX_LINE into several "lines". Feeding it through our own reader
 * lets us count lines exactly and refuse over-long ones instead of
 * misparsing them.
 */
typedef struct ini_run {
    FILE *f;
    unsigned line;
    app_ini_fn fn;
    void *user;
    cdx_err err;
    unsigned err_line;
    char msg[400];
} ini_run;

static char *ini_read(char *buf, int num, void *stream)
{
    ini_run *r = stream;

    if (r->err != CDX_OK)
        return NULL; /* stop at the first error */
    if (!fgets(buf, num, r->f))
        return NULL;
    r->line++;
    size_t n = strlen(buf);
    if (n == (size_t)num - 1 && buf[n - 1] != '\n') {
        int c = getc(r->f);
        if (c != EOF) {
            r->err = CDX_ERR_CONFIG;
            r->err_line = r->line;
            snprintf(r->msg, sizeof(r->msg), "line longer than %d characters", num - 2);
            return NULL;
        }
    }
    return buf;
}

static int ini_cb(void *user, const char *section, const char *key, const char *value)
{
    ini_run *r = user;

    if (r->err != CDX_OK)
        return 0;
    cdx_err_clear();
    cdx_err e = r->fn(r->user, r->line, section, key, value);
    if (e != CDX_OK) {
        r->err = e;
        r->err_line = r->line;
        snprintf(r->msg, sizeof(r->msg), "%s", cdx_err_detail());
        return 0;
    }
    return 1;
}

cdx_err app_ini_load(const char *path, app_ini_fn fn, void *user)
{
    ini_run r = {.fn = fn, .user = user};
    cdx_err err = CDX_OK;

    r.f = fopen(path, "r");
    if (!r.f)
        return cdx_fail(CDX_ERR_CONFIG, "%s: cannot open configuration file: %s", path,
                        strerror(errno));
    int rc = ini_parse_stream(ini_read, &r, ini_cb, &r);
    if (ferror(r.f)) {
        err = cdx_fail(CDX_ERR_CONFIG, "%s: read error", path);
        goto out;
    }
    /* A syntax error before the handler's error is the first problem. */
    if (rc > 0 && (r.err == CDX_OK || (unsigned)rc < r.err_line)) {
        err = cdx_fail(CDX_ERR_CONFIG,
                       "%s:%d: syntax error (expected `[section]`, `key = value` or a comment)",
                       path, rc);
        goto out;
    }
    if (rc < 0) {
        err = cdx_fail(CDX_ERR_CONFIG, "%s: cannot parse (out of memory)", path);
        goto out;
    }
    if (r.err != CDX_OK)
        err = cdx_fail(r.err, "%s:%u: %s", path, r.err_line, r.msg);
out:
    fclose(r.f);
    return err;
}

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
    K_COUNT
};

static const char *const key_names[K_COUNT] = {
    "module",   "token",         "pin",          "allow_env_pin", "allow_unlocked_memory",
    "sessions", "subkey_ttl_ms", "secmem_bytes",
};

_Static_assert(K_COUNT <= sizeof(((app_hsmconf_seen *)0)->line) / sizeof(unsigned),
               "app_hsmconf_seen.line too small");

static cdx_err bad(const char *key, const char *what)
{
    return cdx_fail(CDX_ERR_CONFIG, "%s: %s", key, what);
}

static cdx_err parse_bool(const char *key, const char *v, bool *out)
{
    static const char *const yes[] = {"yes", "true", "on", "1"};
    static const char *const no[] = {"no", "false", "off", "0"};

    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *out = true;
            return CDX_OK;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *out = false;
            return CDX_OK;
        }
    }
    return cdx_fail(CDX_ERR_CONFIG, "%s: `%s` is not a boolean (use yes or no)", key, v);
}

/*
 * Decimal digits only: strtoull would accept "-1" (and wrap), "+5", " 7"
 * and hex. `allow_suffix` permits K or M (binary multiples) for sizes.
 */
static cdx_err parse_uint(const char *key, const char *v, uint64_t max, bool allow_suffix,
                          uint64_t *out)
{
    uint64_t n = 0;
    const char *p = v;

    if (*p < '0' || *p > '9')
        goto bad_number;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (n > (UINT64_MAX - 9) / 10)
            goto too_big;
        n = n * 10 + (uint64_t)(*p - '0');
    }
    if (allow_suffix && *p) {
        uint64_t mul = 0;
        if (strcasecmp(p, "k") == 0 || strcasecmp(p, "kib") == 0)
            mul = 1024;
        else if (strcasecmp(p, "m") == 0 || strcasecmp(p, "mib") == 0)
            mul = 1024 * 1024;
        if (!mul)
            goto bad_number;
        if (n > UINT64_MAX / mul)
            goto too_big;
        n *= mul;
        p += strlen(p);
    }
    if (*p)
        goto bad_number;
    if (n > max)
        goto too_big;
    *out = n;
    return CDX_OK;
bad_number:
    return cdx_fail(CDX_ERR_CONFIG, "%s: `%s` is not a non-negative decimal number%s", key, v,
                    allow_suffix ? " (optionally with suffix K or M)" : "");
too_big:
    return cdx_fail(CDX_ERR_CONFIG, "%s: `%s` is above the maximum %llu", key, v,
                    (unsigned long long)max);
}

static cdx_err copy_str(const char *key, const char *v, char *dst, size_t cap)
{
    size_t n = strlen(v);
    if (n >= cap)
        return cdx_fail(CDX_ERR_CONFIG, "%s: value is %zu bytes, the limit is %zu", key, n,
                        cap - 1);
    memcpy(dst, v, n + 1);
    return CDX_OK;
}

static bool contains_ci(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; *hay; hay++)
        if (strncasecmp(hay, needle, n) == 0)
            return true;
    return false;
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
                        "allow_unlocked_memory, sessions, subkey_ttl_ms, secmem_bytes)",
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
        return copy_str(key, value, cfg->module_path, sizeof(cfg->module_path));
    case K_TOKEN:
        if (strncasecmp(value, "pkcs11:", 7) != 0)
            return bad(key, "must be an RFC 7512 URI such as pkcs11:token=cipherdex");
        if (contains_ci(value, "pin-value") || contains_ci(value, "pin-source"))
            return bad(key, "the URI must not carry a PIN; set `pin = file:/path` instead");
        return copy_str(key, value, cfg->token_uri, sizeof(cfg->token_uri));
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
        return copy_str(key, value, cfg->pin_source, sizeof(cfg->pin_source));
    case K_ALLOW_ENV_PIN:
        return parse_bool(key, value, &cfg->allow_env_pin);
    case K_ALLOW_UNLOCKED:
        return parse_bool(key, value, &cfg->allow_unlocked_memory);
    case K_SESSIONS:
        err = parse_uint(key, value, CDX_SESSIONS_MAX, false, &n);
        if (err == CDX_OK)
            cfg->sessions = (unsigned)n;
        return err;
    case K_TTL:
        err = parse_uint(key, value, CDX_SUBKEY_TTL_MAX_MS, false, &n);
        if (err == CDX_OK)
            cfg->subkey_ttl_ms = (uint32_t)n;
        return err;
    case K_SECMEM:
        err = parse_uint(key, value, CDX_SECMEM_MAX, true, &n);
        if (err == CDX_OK)
            cfg->secmem_bytes = (size_t)n;
        return err;
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
