/*
 * hsm_custody.h - the key-custody context: one per PKCS#11 module per
 * process, reference-counted, shared by every user in the process.
 *
 * The module is dlopen'ed once and its CK_FUNCTION_LIST taken once; that
 * one list is initialised (CKF_OS_LOCKING_OK, [hsm] init_args as pReserved)
 * and used for everything: slot and token discovery by URI, login, random
 * bytes and all secret-key work, in sessions of our own from a bounded pool
 * (worker threads never share a session). If C_Initialize answers
 * CKR_CRYPTOKI_ALREADY_INITIALIZED, the module is shared with another user in
 * the process: custody then never finalises it (recovery closes only its own
 * sessions). SIGPIPE is ignored (a network HSM that drops its socket must not
 * kill us).
 *
 * Recovery: operations hold a read lock. A CK_RV meaning "session/login/
 * device/token/handle gone" makes the failing thread take the write lock,
 * bump the generation, drop every session and key handle, finalise and
 * re-initialise the module (when custody initialised it), find the token,
 * log in, and
 * let operations find keys again by CKA_ID (their KCVs are checked against
 * the ones seen before). Idempotent calls are retried once; generate/unwrap/
 * import/destroy are re-checked by looking the object up instead.
 * After CKR_PIN_INCORRECT, CKR_PIN_LOCKED or CKR_PIN_EXPIRED custody never
 * logs in again on its own (a real HSM would lock or zeroise); other failed
 * recoveries back off exponentially up to CDX_RELOGIN_BACKOFF_MAX_MS (a
 * second: service resumes within about that of the token's return) and
 * report CDX_ERR_HSM_UNAVAILABLE meanwhile; hsm_custody_retry_now ends a
 * back-off early. The process never dies because
 * the token went away.
 *
 * Thread-safety: open, free and hsm_token_list take the process registry's
 * mutex; every other call here and in hsm_keys.h / hsm_subkey.h /
 * hsm_admin.h may run from any thread on a shared context, concurrently
 * with recovery (read/write lock as above). The caller must not use a
 * context after its own hsm_custody_free().
 * Ownership: the context copies the config and holds the PIN in locked
 * memory; it keeps no pointer the caller passed.
 */
#ifndef HSM_CUSTODY_H
#define HSM_CUSTODY_H

#include <stddef.h>
#include <stdint.h>

#include "cdx_err.h"
#include "hsm_config.h"

typedef struct hsm_custody hsm_custody;

/*
 * Open (or join) the custody context for cfg->module_path. A second open in
 * the same process with the same module must name the same token, PIN source
 * and TTL, and gets the same context with its reference count raised.
 * Also sets up locked memory (hsm_secmem_init) and PR_SET_DUMPABLE=0.
 * Errors: CDX_ERR_CONFIG, CDX_ERR_MEMLOCK, CDX_ERR_TOKEN_NOT_FOUND (detail
 * lists the tokens found), CDX_ERR_HSM_PIN_INCORRECT, CDX_ERR_HSM_PIN_LOCKED,
 * CDX_ERR_MECHANISM_UNSUPPORTED (no CKM_SHA256_HMAC), CDX_ERR_HSM_UNAVAILABLE
 * (module fails to load - not a PKCS#11 module - or C_Initialize fails; the
 * detail names the CK_RV), CDX_ERR_RESOURCE_EXHAUSTED.
 */
CDX_MUST_CHECK cdx_err hsm_custody_open(const hsm_config *cfg, hsm_custody **out);

/* Drop one reference; the last one wipes caches, logs out and finalises. NULL is a no-op. */
void hsm_custody_free(hsm_custody *c);

typedef struct hsm_stats {
    uint64_t derivations;  /* subkeys derived on the token (C_Sign) */
    uint64_t cache_hits;   /* subkeys served from the cache */
    uint64_t kcv_computes; /* KCVs computed on the token */
    uint64_t recoveries;   /* successful finalise/initialise/login cycles */
    uint64_t logins;       /* C_Login calls made */
    uint64_t generation;   /* current session generation */
    uint64_t cached_subkeys;
} hsm_stats;

/* Counters of this context (atomics: a consistent-enough snapshot, not a transaction). */
void hsm_custody_stats(hsm_custody *c, hsm_stats *out);

/*
 * Forget the recovery back-off: the next operation that finds the token
 * down tries to reconnect at once (the daemon's SIGHUP calls this).
 * Thread-safe (one atomic store); NULL is a no-op. A PIN failure still
 * blocks re-login (see above).
 */
void hsm_custody_retry_now(hsm_custody *c);

/*
 * Key-use events, for the audit trail (docs/AUDIT.md): every call that
 * uses a key on the token, and every login and recovery, is reported to one
 * hook as it completes. Subkeys served from the cache are not events (they
 * do not touch the token): they are counted per thread (hsm_thread_keyuse).
 */
typedef enum hsm_event_kind {
    HSM_EV_DERIVE = 1, /* a subkey derived on the token (C_Sign HMAC) */
    HSM_EV_LOGIN,      /* C_Login at open or on recovery */
    HSM_EV_RECOVER,    /* finalise/initialise/login after the token failed */
    HSM_EV_GENERATE,   /* a key generated on the token (root or index) */
    HSM_EV_UNWRAP,     /* an index key unwrapped on the token */
    HSM_EV_IMPORT,     /* an index key imported (plaintext, development) */
    HSM_EV_ADOPT,      /* an existing token key adopted for an index */
    HSM_EV_DESTROY,    /* a key destroyed */
    HSM_EV_ATTEST,     /* the attestation key signed a statement (C_Sign, CKM_ECDSA) */
    HSM_EV_ATTRS,      /* an index key's attributes read and its KCV computed (attest) */
} hsm_event_kind;

typedef struct hsm_event {
    hsm_event_kind kind;
    int key_kind;          /* hsm_key_kind (0: no key: login, recover) */
    const uint8_t *key_id; /* CDX_ID_LEN bytes: deployment or index id (NULL: no key) */
    int purpose;           /* hsm_purpose of a derivation (0: none) */
    uint32_t epoch;
    int kcv; /* -1 not checked, 1 the key's KCV matched, 0 it did not */
    cdx_err result;
} hsm_event;

const char *hsm_event_name(hsm_event_kind k);

typedef void (*hsm_event_fn)(void *arg, const hsm_event *ev);

/*
 * Set (fn NULL: clear) the hook. Set it before other threads use c (not
 * synchronised). The hook runs on the thread that used the key, sometimes
 * with the custody lock held: it must not call into custody.
 */
void hsm_custody_set_event_hook(hsm_custody *c, hsm_event_fn fn, void *arg);

/*
 * The calling thread's subkey uses since its last call (then reset), as
 * bit masks over hsm_purpose (bit p): served from the cache, derived on
 * the token. Lets a server attribute one request's key uses.
 */
void hsm_thread_keyuse(uint32_t *cache_hits, uint32_t *token_calls);

/* Subkey TTL in ms this context was opened with (0 = no cache). */
uint32_t hsm_custody_subkey_ttl(const hsm_custody *c);

/*
 * Random bytes from the token's RNG (C_GenerateRandom on a pooled session).
 * Dropping the error would leave buf unfilled: it must be checked.
 * Errors: CDX_ERR_HSM_UNAVAILABLE, CDX_ERR_HSM_FAILED, CDX_ERR_RESOURCE_EXHAUSTED,
 * CDX_ERR_INVALID_ARGUMENT (len 0 or > 1 MiB).
 */
CDX_MUST_CHECK cdx_err hsm_random(hsm_custody *c, void *buf, size_t len);

/*
 * The token this context uses, and whether it is a software token: its
 * slot lacks CKF_HW_SLOT, or its model is one of the software tokens
 * Debian ships (SoftHSM, opencryptoki's IBM SoftTok, NSS). For the daemon's
 * start-up warning (security review M7). Errors: the custody errors.
 */
CDX_MUST_CHECK cdx_err hsm_custody_token(hsm_custody *c, char manufacturer[33], char model[17],
                                         bool *software);

/* The serial number of the token this context logged in to (blank-padding removed). */
void hsm_custody_serial(const hsm_custody *c, char out[17]);

/* Token description for listings (no login needed). */
typedef struct hsm_token_info {
    char label[33];
    char serial[17];
    char manufacturer[33];
    char model[17];
    unsigned long slot_id; /* informative only: never used to find a token */
    int initialized;
    int matches_uri; /* 1 if the configured URI selects this token */
    /* CDX_OK, or why the slot's token could not be read (C_GetTokenInfo failed:
     * CDX_ERR_HSM_UNAVAILABLE, CDX_ERR_HSM_FAILED, CDX_ERR_RESOURCE_EXHAUSTED...);
     * then only slot_id is set and err_text says "C_GetTokenInfo: CKR_...". */
    cdx_err err;
    char err_text[64];
} hsm_token_info;

/*
 * List the tokens of every present slot, through the function list of the
 * context open for this module if there is one, else by loading the module
 * and initialising it (CKF_OS_LOCKING_OK, init_args as pReserved; may be
 * NULL or "") and finalising it again if this call initialised it. `uri` may
 * be NULL. A slot whose token cannot be read is listed with ->err set (the
 * raw CK_RV is logged), never skipped. *out is malloc'ed; free() it (NULL
 * and *n 0 on error).
 * Errors: CDX_ERR_HSM_UNAVAILABLE (not a PKCS#11 module, C_Initialize or
 * C_GetSlotList fails, or the open context is recovering), CDX_ERR_CONFIG (no
 * such module, uri does not parse), CDX_ERR_RESOURCE_EXHAUSTED.
 */
CDX_MUST_CHECK cdx_err hsm_token_list(const char *module_path, const char *init_args,
                                      const char *uri, hsm_token_info **out, size_t *n);

#endif
