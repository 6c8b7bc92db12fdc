/* Typed principals (pol_principal.h). */
#include "pol_principal.h"

#include <stdio.h>
#include <string.h>

static const char *const TYPES[] = {"uri:", "dns:", "cn:"};

/* The value of a typed principal: 1..CDX_PRINCIPAL_VALUE_MAX allowed bytes. */
static cdx_err check_value(const char *text, const char *v)
{
    size_t n = strlen(v);
    if (n == 0)
        return cdx_fail(CDX_ERR_CONFIG, "principal `%s` has an empty value", text);
    if (n > CDX_PRINCIPAL_VALUE_MAX)
        return cdx_fail(CDX_ERR_CONFIG, "principal `%.40s...` is longer than %d bytes", text,
                        CDX_PRINCIPAL_VALUE_MAX);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c < 0x21 || c > 0x7e || c == '"' || c == '\\')
            return cdx_fail(CDX_ERR_CONFIG,
                            "principal `%.40s` has byte 0x%02x (allowed: printable ASCII "
                            "without space, quote or backslash)",
                            text, c);
    }
    return CDX_OK;
}

cdx_err pol_principal_check(const char *text)
{
    if (!text)
        return cdx_fail(CDX_ERR_CONFIG, "principal missing");
    if (!strcmp(text, POL_ANONYMOUS))
        return CDX_OK;
    for (size_t i = 0; i < sizeof(TYPES) / sizeof(TYPES[0]); i++) {
        size_t l = strlen(TYPES[i]);
        if (!strncmp(text, TYPES[i], l))
            return check_value(text, text + l);
    }
    return cdx_fail(CDX_ERR_CONFIG,
                    "principal `%.60s` has no type: write uri:VALUE (URI subjectAltName), "
                    "dns:VALUE (DNS subjectAltName), cn:VALUE (subject CN) or anonymous",
                    text);
}

cdx_err pol_principal_legacy(const char *text, char *out, size_t cap, bool *was_untyped)
{
    *was_untyped = false;
    if (!text || !*text)
        return cdx_fail(CDX_ERR_CONFIG, "empty principal");
    bool typed = !strcmp(text, POL_ANONYMOUS);
    for (size_t i = 0; !typed && i < sizeof(TYPES) / sizeof(TYPES[0]); i++)
        typed = !strncmp(text, TYPES[i], strlen(TYPES[i]));
    int n = typed ? snprintf(out, cap, "%s", text) : snprintf(out, cap, "uri:%s", text);
    if (n < 0 || (size_t)n >= cap)
        return cdx_fail(CDX_ERR_CONFIG, "principal `%.40s...` is longer than %d bytes", text,
                        CDX_PRINCIPAL_MAX);
    *was_untyped = !typed;
    cdx_err err = pol_principal_check(out);
    if (err)
        out[0] = '\0';
    return err;
}
