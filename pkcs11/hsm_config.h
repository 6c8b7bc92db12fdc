/*
 * hsm_config.h - how custody finds the module, the token and the PIN.
 *
 * A plain value struct: the daemon's INI loader and the admin tool fill it,
 * hsm_config_check() validates it before anything is loaded.
 *
 * Pure functions on caller-owned structs: thread-safe on distinct structs.
 */
#ifndef HSM_CONFIG_H
#define HSM_CONFIG_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cdx_err.h"

typedef struct hsm_config {
    char module_path[PATH_MAX];    /* e.g. /usr/lib/softhsm/libsofthsm2.so */
    char token_uri[1024];          /* RFC 7512, e.g. "pkcs11:token=cipherdex" (label/serial/...) */
    char pin_source[PATH_MAX + 8]; /* "file:/path", "cred:NAME" (systemd credential), "env:NAME" */
    bool allow_env_pin;            /* "env:" sources are refused unless this is set */
    bool allow_unlocked_memory;    /* start even if secrets cannot be mlock'ed (loudly) */
    unsigned sessions;             /* session pool size; 0 = CDX_SESSIONS_DEFAULT */
    uint32_t subkey_ttl_ms;        /* cache subkeys this long; 0 = derive for every operation */
    size_t secmem_bytes;           /* locked arena size; 0 = CDX_SECMEM_DEFAULT */
    /* C_Initialize's pReserved string, for modules that need one (NSS softokn:
     * "configdir='sql:DIR' certPrefix='' keyPrefix='' secmod='secmod.db' flags=");
     * "" = NULL. Never logged. */
    char init_args[1024];
    /* RFC 5649 unwrap mechanism (CKM_*); 0 = auto: CKM_AES_KEY_WRAP_KWP if the token lists it
     * for unwrap, else CKM_AES_KEY_WRAP_PAD after a known-answer test (docs/CUSTODY.md). */
    unsigned long unwrap_mechanism;
    int hmac_key_type; /* HSM_HMAC_KT_*: key type of new root/index keys */
    int copyable;      /* HSM_COPYABLE_*: [hsm] copyable */
} hsm_config;

/* [hsm] copyable: what to do on a token without CKA_COPYABLE (docs/CUSTODY.md). */
enum {
    HSM_COPYABLE_REQUIRED = 0,    /* refuse to create or adopt keys on it */
    HSM_COPYABLE_UNSUPPORTED = 1, /* omit the attribute, report it n/a (documented risk) */
};

/* [hsm] hmac_key_type (docs/CUSTODY.md "Token compatibility"). */
enum {
    HSM_HMAC_KT_AUTO = 0,    /* CKK_GENERIC_SECRET, falling back to CKK_SHA256_HMAC */
    HSM_HMAC_KT_GENERIC = 1, /* CKK_GENERIC_SECRET only */
    HSM_HMAC_KT_SHA256 = 2,  /* CKK_SHA256_HMAC only (YubiHSM 2) */
};

/* Defaults: empty strings, no env PIN, locked memory required, TTL 0. */
void hsm_config_init(hsm_config *cfg);

/*
 * Validate without touching the module: paths set, URI parses (p11-kit) and
 * names a token, carries no pin-value/pin-source, PIN source scheme known and
 * allowed, numbers within limits.
 * Errors: CDX_ERR_CONFIG (detail names the field and what to fix).
 */
CDX_MUST_CHECK cdx_err hsm_config_check(const hsm_config *cfg);

#endif
