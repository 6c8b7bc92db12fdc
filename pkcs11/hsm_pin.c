#include "hsm_pin.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cdx_limits.h"
#include "hsm_secfile.h"
#include "hsm_secmem.h"

/* Read at most CDX_PIN_MAX bytes of `path` straight into locked memory. */
static cdx_err read_file(const char *path, bool check_mode, char **pin, size_t *len)
{
    const hsm_secfile_opts o = {
        .what = "PIN file", .max = CDX_PIN_MAX, .err = CDX_ERR_CONFIG, .any_mode = !check_mode};
    return hsm_secfile_read(path, &o, pin, len);
}

cdx_err hsm_pin_read(const char *source, bool allow_env, char **pin, size_t *len)
{
    *pin = NULL;
    *len = 0;
    if (!source || !*source)
        return cdx_fail(CDX_ERR_CONFIG, "no PIN source configured (pin = file:/path | cred:NAME)");
    if (!strncmp(source, "file:", 5)) {
        const char *path = source + 5;
        if (path[0] != '/')
            return cdx_fail(CDX_ERR_CONFIG, "PIN file path must be absolute: %s", path);
        return read_file(path, true, pin, len);
    }
    if (!strncmp(source, "cred:", 5)) {
        const char *name = source + 5;
        const char *dir = getenv("CREDENTIALS_DIRECTORY");
        if (!*name || strchr(name, '/'))
            return cdx_fail(CDX_ERR_CONFIG, "bad systemd credential name '%s'", name);
        if (!dir || !*dir)
            return cdx_fail(CDX_ERR_CONFIG,
                            "PIN source cred:%s but $CREDENTIALS_DIRECTORY is not set "
                            "(use LoadCredential= in the systemd unit)",
                            name);
        char path[PATH_MAX];
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, name) >= sizeof(path))
            return cdx_fail(CDX_ERR_CONFIG, "credential path too long");
        /* systemd owns the mode of credential files; do not second-guess it. */
        return read_file(path, false, pin, len);
    }
    if (!strncmp(source, "env:", 4)) {
        const char *name = source + 4;
        if (!allow_env)
            return cdx_fail(CDX_ERR_CONFIG,
                            "PIN source env:%s refused: environment variables leak to child "
                            "processes and /proc; use file: or cred:, or set allow_env_pin = yes",
                            name);
        const char *v = getenv(name);
        if (!v || !*v)
            return cdx_fail(CDX_ERR_CONFIG, "environment variable %s (PIN source) is empty or unset",
                            name);
        size_t n = strlen(v);
        if (n > CDX_PIN_MAX)
            return cdx_fail(CDX_ERR_CONFIG, "PIN in %s is longer than %d bytes", name, CDX_PIN_MAX);
        char *buf = hsm_secmem_alloc(n + 1);
        if (!buf)
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "secret memory exhausted reading the PIN");
        memcpy(buf, v, n);
        *pin = buf;
        *len = n;
        return CDX_OK;
    }
    return cdx_fail(CDX_ERR_CONFIG, "unknown PIN source '%.16s...': use file:/path, cred:NAME or env:NAME",
                    source);
}
