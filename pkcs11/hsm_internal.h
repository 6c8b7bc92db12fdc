/*
 * hsm_internal.h - the custody context's insides, shared by hsm_custody.c,
 * hsm_keys.c and hsm_subkey.c only. Nothing outside pkcs11/ includes this.
 */
#ifndef HSM_INTERNAL_H
#define HSM_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <libp11.h>
#include <p11-kit/pkcs11.h>

#include "cdx_limits.h"
#include "hsm_ckr.h"
#include "hsm_custody.h"
#include "hsm_keys.h"

/* A found key: its handle is valid only in the generation it was found in. */
struct hsm_keyent {
    hsm_key_kind kind;
    uint8_t id[CDX_ID_LEN];
    CK_OBJECT_HANDLE h;
    uint64_t gen;          /* 0 = no valid handle */
    uint8_t kcv[CDX_KCV_LEN];       /* KCV of the object behind h */
    uint8_t known_kcv[CDX_KCV_LEN]; /* KCV seen before (survives recovery) */
    bool known;
};

struct hsm_subcache;

struct hsm_custody {
    struct hsm_custody *next; /* process registry, under the registry mutex */
    unsigned refs;
    hsm_config cfg;
    char *pin; /* locked memory */
    size_t pin_len;
    void *dl;  /* our own dlopen of the module: keeps it mapped across libp11 reloads */
    CK_FUNCTION_LIST_PTR f;

    /* Operations hold it shared; recovery holds it exclusive. */
    pthread_rwlock_t lock;
    PKCS11_CTX *p11;
    PKCS11_SLOT *slots;
    unsigned nslots;
    PKCS11_SLOT *slot;
    CK_SLOT_ID slot_id;
    CK_UTF8CHAR serial[16]; /* of the token we logged in to: detects a re-initialised token */
    uint64_t gen;
    bool healthy;
    cdx_err login_block;   /* set after a PIN failure: never log in again on our own */
    int64_t next_try_ms;   /* recovery back-off */
    uint32_t backoff_ms;

    pthread_mutex_t pool_mu;
    pthread_cond_t pool_cv;
    CK_SESSION_HANDLE pool[CDX_SESSIONS_MAX];
    unsigned nfree, nopen, max_sessions;

    pthread_mutex_t keys_mu;
    struct hsm_keyent *keys;
    size_t nkeys, capkeys;

    pthread_mutex_t rand_mu;

    atomic_uint_fast64_t derivations, cache_hits, kcv_computes, recoveries, logins;

    struct hsm_subcache *cache;
};

/* Monotonic milliseconds. */

/*
 * An operation run with a session under the shared lock. It returns a
 * cdx_err and, when a CK call failed, stores that CK_RV in *rv so the runner
 * can tell "token gone: recover" from "refused".
 */
typedef cdx_err (*hsm_op_fn)(hsm_custody *c, CK_SESSION_HANDLE s, void *arg, CK_RV *rv);

/* Returned by hsm_run for a non-idempotent op interrupted by a recovery: re-check. */
#define HSM_INTERRUPTED CDX_ERR_ABORTED

/*
 * Run op; on a recoverable CK_RV recover the token and, if idempotent, run it
 * once more. Non-idempotent ops get HSM_INTERRUPTED after a successful
 * recovery so the caller can look for the object instead of repeating.
 */
cdx_err hsm_run(hsm_custody *c, hsm_op_fn op, void *arg, bool idempotent);

/* Find exactly one object matching tmpl (count 0: *n = 0; several: *n = 2). */
CK_RV hsm_find(hsm_custody *c, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl, CK_ULONG n,
               CK_OBJECT_HANDLE *h, unsigned *count);

/* HMAC-SHA256 on the token with key h. */
CK_RV hsm_sign_hmac(hsm_custody *c, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, const void *msg,
                    size_t len, uint8_t out[32]);

/*
 * Handle + KCV of a root/index key in the current generation (found by class
 * + CKA_ID + label, KCV computed on first use). With `expected` the KCV must
 * match (KEY_REPLACED); without it, a KCV differing from the one seen before
 * the handle was lost is KEY_REPLACED too.
 */
cdx_err hsm_key_resolve(hsm_custody *c, CK_SESSION_HANDLE s, const hsm_key_ref *k,
                        const uint8_t *expected, CK_OBJECT_HANDLE *h, uint8_t kcv[CDX_KCV_LEN],
                        CK_RV *rv);

/* Forget a key's handle and its known KCV (after we destroyed or created it). */
void hsm_key_forget(hsm_custody *c, const hsm_key_ref *k);

/* Subkey cache lifecycle (hsm_subkey.c). */
cdx_err hsm_subcache_new(hsm_custody *c);
void hsm_subcache_free(hsm_custody *c);
void hsm_subcache_drop_key(hsm_custody *c, const hsm_key_ref *k);
uint64_t hsm_subcache_count(hsm_custody *c);

#endif
