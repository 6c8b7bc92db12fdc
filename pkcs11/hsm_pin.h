/*
 * hsm_pin.h - read a token PIN from its configured source into locked memory.
 *
 * Sources: "file:/abs/path" (must not be readable by group or others),
 * "cred:NAME" (systemd credential, $CREDENTIALS_DIRECTORY/NAME), "env:NAME"
 * (only when allowed). Never a command-line argument. One trailing newline
 * is stripped.
 *
 * Needs the secret arena (hsm_secmem_init). Thread-safe (reads the
 * environment: do not setenv() concurrently).
 */
#ifndef HSM_PIN_H
#define HSM_PIN_H

#include <stdbool.h>
#include <stddef.h>

#include "cdx_err.h"

/*
 * On success *pin is a hsm_secmem buffer holding *len bytes (plus a NUL),
 * owned by the caller: release it with hsm_secmem_free(). On error *pin is
 * NULL and *len 0.
 * Errors: CDX_ERR_CONFIG (unknown scheme, env not allowed, file missing,
 * unreadable, group/world readable, empty, longer than CDX_PIN_MAX, no
 * $CREDENTIALS_DIRECTORY); CDX_ERR_RESOURCE_EXHAUSTED (secret arena full).
 */
CDX_MUST_CHECK cdx_err hsm_pin_read(const char *source, bool allow_env, char **pin, size_t *len);

#endif
