/* Generic INI loading with exact line numbers, and value parsers (see app_ini.h). */
#include "app_ini.h"

#include <errno.h>
#include <ini.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

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

cdx_err app_ini_bool(const char *key, const char *v, bool *out)
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
cdx_err app_ini_uint(const char *key, const char *v, uint64_t max, bool allow_suffix, uint64_t *out)
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
        else if (strcasecmp(p, "g") == 0 || strcasecmp(p, "gib") == 0)
            mul = 1024ull * 1024 * 1024;
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
                    allow_suffix ? " (optionally with suffix K, M or G)" : "");
too_big:
    return cdx_fail(CDX_ERR_CONFIG, "%s: `%s` is above the maximum %llu", key, v,
                    (unsigned long long)max);
}

cdx_err app_ini_str(const char *key, const char *v, char *dst, size_t cap)
{
    size_t n = strlen(v);
    if (n >= cap)
        return cdx_fail(CDX_ERR_CONFIG, "%s: value is %zu bytes, the limit is %zu", key, n,
                        cap - 1);
    memcpy(dst, v, n + 1);
    return CDX_OK;
}
