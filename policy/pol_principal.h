/*
 * pol_principal.h - typed principals (docs/POLICY.md).
 *
 * A principal is the text "TYPE:VALUE", where TYPE names the certificate
 * field it came from: "uri" (the first URI subjectAltName), "dns" (the
 * first DNS subjectAltName, when there is no URI SAN) or "cn" (the subject
 * CN, when there is no SAN); or the single word "anonymous" (insecure mode,
 * no TLS). Comparing the whole text compares type and value, so a
 * certificate whose CN spells an admin's URI is "cn:spiffe://..." and is not
 * that admin (security review M1).
 *
 * VALUE: 1..CDX_PRINCIPAL_VALUE_MAX bytes of printable ASCII without space,
 * quote or backslash (what app_tls accepts from a certificate).
 *
 * Pure functions: thread-safe.
 */
#ifndef POL_PRINCIPAL_H
#define POL_PRINCIPAL_H

#include <stdbool.h>
#include <stddef.h>

#include "cdx_err.h"
#include "cdx_limits.h"

/* The principal of a client without TLS (insecure mode). */
#define POL_ANONYMOUS "anonymous"

/*
 * Check that `text` is a typed principal ("uri:...", "dns:...", "cn:..." or
 * "anonymous"). Errors: CDX_ERR_CONFIG, the detail saying what is wrong.
 */
CDX_MUST_CHECK cdx_err pol_principal_check(const char *text);

/*
 * A principal as written in the deprecated [server] admins list: typed
 * entries are kept; an untyped one is taken as a URI SAN ("uri:" + text),
 * never as a CN. Writes at most cap bytes with the NUL; *was_untyped tells
 * the caller to warn. Errors: CDX_ERR_CONFIG (invalid, or too long).
 */
CDX_MUST_CHECK cdx_err pol_principal_legacy(const char *text, char *out, size_t cap,
                                            bool *was_untyped);

#endif
