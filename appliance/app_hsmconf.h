/*
 * app_hsmconf.h - the [hsm] section of the Cipherdex configuration file.
 *
 *   [hsm]
 *   module = /usr/lib/softhsm/libsofthsm2.so
 *   token = pkcs11:token=cipherdex
 *   pin = file:/etc/cipherdex/pin
 *   allow_env_pin = no
 *   allow_unlocked_memory = no
 *   sessions = 4
 *   subkey_ttl_ms = 0
 *   secmem_bytes = 262144
 *   init_args = configdir='sql:/var/lib/cipherdex/nssdb' ...   (C_Initialize pReserved; optional)
 *   unwrap_mechanism = auto      (auto | kwp | pad | 0xNNNN)
 *   hmac_key_type = auto         (auto | generic | sha256_hmac)
 *   copyable = required          (required | unsupported)
 *
 * The admin tool and the daemon read the same file. Unknown keys and bad
 * values in [hsm] are errors reported as "file:line: key: what is wrong";
 * other sections belong to other loaders and are skipped here.
 */
#ifndef APP_HSMCONF_H
#define APP_HSMCONF_H

#include <stdbool.h>

#include "cdx_err.h"
#include "app_ini.h"
#include "hsm_config.h"

#define APP_HSMCONF_SECTION "hsm"

/*
 * Per-file state for the [hsm] handler: which keys were already set (a key
 * given twice is an error, not a silent override). Zero it before a file.
 */
typedef struct app_hsmconf_seen {
    unsigned mask;
    unsigned line[16];
} app_hsmconf_seen;

/*
 * Apply one `key = value` of section [hsm] to cfg. `line` is where it was
 * read (for the "set twice" message). On error returns CDX_ERR_CONFIG with a
 * cdx_fail detail "key: what is wrong" (no file:line: the loader adds it).
 * A larger INI loader calls this for every key of its [hsm] section.
 */
cdx_err app_hsmconf_set(hsm_config *cfg, app_hsmconf_seen *seen, unsigned line, const char *key,
                        const char *value);

/*
 * Load the [hsm] section of `path` into cfg (which the caller initialised
 * with hsm_config_init and may have pre-filled: keys in the file override
 * it). Other sections are ignored. Does not run hsm_config_check (flags may
 * still override fields).
 * Errors: CDX_ERR_CONFIG.
 */
cdx_err app_hsmconf_load(const char *path, hsm_config *cfg);

#endif
