/*
 * hsm_probe.h - what the configured token can do, asked before any key
 * exists (`cipherdex-hsm probe`): its identity and session limits, the
 * mechanisms Cipherdex uses with their flags (C_GetMechanismInfo), and how
 * it treats a key made with Cipherdex's template, tried on session objects
 * (CKA_TOKEN FALSE, destroyed again): whether it accepts the template (with
 * and without CKA_COPYABLE, as CKK_GENERIC_SECRET and as CKK_SHA256_HMAC),
 * which attributes it reports, whether HMAC-SHA256 signs, and whether it
 * refuses to make the key derivable (C_SetAttributeValue, C_CopyObject).
 * Then what custody itself decides on this token with this configuration
 * (hsm_caps.c): CKA_COPYABLE and CKA_ALLOWED_MECHANISMS support (asked on a
 * token object, destroyed at once), the unwrap mechanism index unwrap would
 * use (with the 0x210A known-answer test) or why there is none.
 * The verdict says whether Cipherdex can run on it and what is missing.
 *
 * Admin library (cdx_pkcs11_admin). Thread-safety and the custody errors:
 * as hsm_keys.h.
 */
#ifndef HSM_PROBE_H
#define HSM_PROBE_H

#include <stdbool.h>
#include <stddef.h>

#include "cdx_err.h"
#include "hsm_custody.h"

#define HSM_PROBE_MECHS 8

typedef struct hsm_probe_mech {
    const char *name;    /* "CKM_SHA256_HMAC" */
    unsigned long type;  /* CKM_* */
    unsigned long need;  /* the CKF_* flag Cipherdex uses it with */
    const char *use;     /* what for: "subkeys, KCVs" */
    bool required;       /* Cipherdex cannot run without it */
    bool listed;         /* C_GetMechanismInfo answered */
    unsigned long flags; /* its CKF_* flags when listed */
    unsigned long min_key, max_key;
} hsm_probe_mech;

/* One try on a session key: the CK_RV (0 = CKR_OK) and its name. */
typedef struct hsm_probe_try {
    bool tried;
    unsigned long rv;
} hsm_probe_try;

typedef struct hsm_probe {
    char label[33], manufacturer[33], model[17], serial[17];
    char library[33]; /* C_GetInfo libraryDescription */
    unsigned cryptoki_major, cryptoki_minor;
    unsigned long max_sessions, max_rw_sessions; /* CK_TOKEN_INFO (0 = no limit) */
    unsigned long pin_min, pin_max;
    unsigned long n_mechanisms; /* C_GetMechanismList count */
    hsm_probe_mech mech[HSM_PROBE_MECHS];
    hsm_probe_try gen_full;        /* generic secret, the full template (CKA_COPYABLE FALSE) */
    hsm_probe_try gen_no_copyable; /* the same without CKA_COPYABLE */
    hsm_probe_try gen_sha256_hmac; /* CKK_SHA256_HMAC, the full template */
    hsm_probe_try sign;            /* HMAC-SHA256 with the generated session key */
    hsm_probe_try set_derive;      /* C_SetAttributeValue(CKA_DERIVE TRUE): must fail */
    hsm_probe_try copy_derive;     /* C_CopyObject(CKA_DERIVE TRUE): must fail */
    unsigned attrs, unknown;       /* HSM_A_* of the session key: TRUE / not reported */
    /* custody's decisions (hsm_caps.c), as `index create` would make them */
    bool copyable_supported;     /* CKA_COPYABLE honoured on token objects (or not decidable) */
    bool copyable_opt_in;        /* [hsm] copyable = unsupported */
    bool allowed_mechanisms;     /* CKA_ALLOWED_MECHANISMS honoured */
    int pad_kat;                 /* 0x210A known-answer test: 1 passed, 0 failed, -1 not run */
    unsigned long unwrap_mech;   /* CKM_* index unwrap would use, 0 = none */
    char unwrap_name[40];        /* its name ("CKM_AES_KEY_WRAP_KWP") */
    char unwrap_why[320];        /* when unwrap_mech is 0: why */
    unsigned long hmac_key_type; /* CKK_* of new root/index keys as configured (auto: generic) */
    /* A session KEK made with Cipherdex's KEK template: CKR_OK and whether the token kept its
     * CKA_UNWRAP_TEMPLATE (kek create refuses a token that does not: security review M2). */
    hsm_probe_try kek;
    bool kek_utmpl_kept;
    bool can_run;       /* Cipherdex can create and use index keys here */
    char verdict[1024]; /* one line per finding, "\n"-separated */
} hsm_probe;

/*
 * Probe the custody's token (logged in). Leaves no object behind.
 * Errors: the custody errors.
 */
CDX_MUST_CHECK cdx_err hsm_probe_run(hsm_custody *c, hsm_probe *out);

/* The name of a CK_RV ("CKR_ATTRIBUTE_TYPE_INVALID"). Pure. */
const char *hsm_probe_rv_name(unsigned long rv);

#endif
