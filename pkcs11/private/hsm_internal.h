/*
 * hsm_internal.h - the custody context's insides and the key machinery
 * shared by the files of pkcs11/ (hsm_custody.c, hsm_template.c,
 * hsm_keyref.c, hsm_keys.c, hsm_subkey.c, and hsm_admin.c in the admin
 * library). Nothing outside pkcs11/ includes this.
 *
 * Locking: c->lock (shared for operations, exclusive for recovery) is held by
 * hsm_run around every hsm_op_fn; c->keys_mu guards the handle cache
 * (c->keys); the functions below that take a session run inside an
 * hsm_op_fn, so under the shared lock.
 */
#ifndef HSM_INTERNAL_H
#define HSM_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <p11-kit/pkcs11.h>

#include "cdx_limits.h"
#include "hsm_ckr.h"
#include "hsm_admin.h"
#include "hsm_custody.h"
#include "hsm_keys.h"

/* A found key: its handle is valid only in the generation it was found in. */
struct hsm_keyent {
    hsm_key_kind kind;
    uint32_t kgen; /* hsm_key_ref.gen */
    uint8_t id[CDX_ID_LEN];
    CK_OBJECT_HANDLE h;
    uint64_t gen;                   /* 0 = no valid handle */
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
    void *dl; /* our dlopen of the module, for the context's life */
    /* The one function list custody calls, taken once at open (p11-kit's modules hand out a
     * new, uninitialised list per C_GetFunctionList) and kept across recoveries. */
    CK_FUNCTION_LIST_PTR f;
    atomic_bool mark_public_warned; /* hsm_mark.c: logged once that marks are public objects */

    /* Operations hold it shared; recovery holds it exclusive. */
    pthread_rwlock_t lock;
    bool inited;    /* f is initialised (by us or by someone else in the process) */
    bool owns_init; /* our C_Initialize returned CKR_OK: we finalise it (unload, recovery);
                       false with inited = CKR_CRYPTOKI_ALREADY_INITIALIZED: shared, never
                       finalised by us */
    CK_SLOT_ID slot_id;
    CK_UTF8CHAR serial[16]; /* of the token we logged in to: detects a re-initialised token */
    uint64_t gen;
    bool healthy;
    cdx_err login_block; /* set after a PIN failure: never log in again on our own */
    int64_t next_try_ms; /* recovery back-off */
    uint32_t backoff_ms;
    atomic_bool retry_now; /* hsm_custody_retry_now: ignore the back-off once */

    pthread_mutex_t pool_mu;
    pthread_cond_t pool_cv;
    CK_SESSION_HANDLE pool[CDX_SESSIONS_MAX];
    unsigned nfree, nopen, max_sessions;

    pthread_mutex_t keys_mu;
    struct hsm_keyent *keys;
    size_t nkeys, capkeys;

    atomic_uint_fast64_t derivations, cache_hits, kcv_computes, recoveries, logins;

    struct hsm_subcache *cache;

    hsm_event_fn ev_fn; /* the audit's key-use hook (hsm_custody_set_event_hook) */
    void *ev_arg;

    /* Capabilities decided by asking the token (hsm_caps.c); 0 = not decided yet. */
    atomic_ulong unwrap_mech;
    atomic_ulong hmac_kt;         /* CKK_ of new root/index keys once generation decided it */
    atomic_int copyable_cap;      /* 0 not probed, 1 CKA_COPYABLE supported, 2 not */
    atomic_bool allowed_mechs_ok; /* CKA_ALLOWED_MECHANISMS supported (probed with it) */
};

/* Report a key-use event to the hook, if any. */
void hsm_emit(hsm_custody *c, hsm_event_kind kind, int key_kind, const uint8_t *key_id, int purpose,
              int kcv, cdx_err result);

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

/* ---- key identity and the handle cache (hsm_keyref.c) ---- */

/* KEK names: 1-40 of [A-Za-z0-9_.-]; NULL is invalid (public as hsm_kek_name_valid). */
bool hsm_valid_kek_name(const char *name);

/* "cipherdex-kek-<name>" (name already checked with hsm_valid_kek_name). */
void hsm_label_kek(const char *name, char out[CDX_LABEL_MAX + 1]);

/* Look for a secret-key object with this label (any id): KEKs are found by label alone. */
CK_RV hsm_find_label(hsm_custody *c, CK_SESSION_HANDLE s, const char *label, CK_OBJECT_HANDLE *h,
                     unsigned *n);

/*
 * The root/index object of k (class + CKA_ID + label). Errors:
 * CDX_ERR_KEY_NOT_FOUND, CDX_ERR_KEY_AMBIGUOUS, a CK_RV failure (stored in *rv).
 */
cdx_err hsm_find_key(hsm_custody *c, CK_SESSION_HANDLE s, const hsm_key_ref *k, CK_OBJECT_HANDLE *h,
                     CK_RV *rv);

/* The KEK "cipherdex-kek-<name>" (class + label). Errors as hsm_find_key. */
cdx_err hsm_find_kek(hsm_custody *c, CK_SESSION_HANDLE s, const char *name, CK_OBJECT_HANDLE *h,
                     CK_RV *rv);

/* KCV of the key behind h: first 8 bytes of HMAC-SHA256(key, "cipherdex/v1/kcv"). */
CK_RV hsm_compute_kcv(hsm_custody *c, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                      uint8_t kcv[CDX_KCV_LEN]);

/* Remember handle + KCV of a key we just created or verified (current generation). */
void hsm_key_remember(hsm_custody *c, const hsm_key_ref *k, CK_OBJECT_HANDLE h,
                      const uint8_t kcv[CDX_KCV_LEN]);

/* ---- what a Cipherdex key object looks like (hsm_template.c) ---- */

/* The boolean attributes Cipherdex reads, their HSM_A_* bits and names, in listing order. */
typedef struct hsm_battr {
    CK_ATTRIBUTE_TYPE type;
    unsigned bit;
    const char *name;
} hsm_battr;
extern const hsm_battr hsm_battrs[];
extern const size_t hsm_nbattrs;

/*
 * Read the attributes of h into *ki (label, id, type, length, HSM_A_* bits);
 * *unknown = the bits the token would not report. For an object with
 * CKA_UNWRAP TRUE (a KEK), HSM_A_UNWRAP_TEMPLATE tells whether its
 * CKA_UNWRAP_TEMPLATE equals hsm_tmpl_unwrap's (unknown if it cannot be
 * read). Returns the CK_RV.
 */
CK_RV hsm_tmpl_read(hsm_custody *c, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, hsm_key_info *ki,
                    unsigned *unknown);

/* HSM_A_* bits of ki that break the template of `kind` (unknown required bits count as wrong). */
unsigned hsm_tmpl_wrong(hsm_key_kind kind, const hsm_key_info *ki, unsigned unknown);

/* The HSM_A_* bits whose "unknown" this context accepts (COPYABLE under the opt-in). */
unsigned hsm_tmpl_optional(hsm_custody *c);

/*
 * Check a found object against its kind's template (type, length and flags).
 * Errors: CDX_ERR_KEY_ATTRIBUTES (detail names each wrong attribute), a CK_RV
 * failure (stored in *rv).
 */
cdx_err hsm_tmpl_check(hsm_custody *c, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, hsm_key_kind kind,
                       const char *label, CK_RV *rv);

/* ---- creating a key object (hsm_keys.c; templates in hsm_template.c) ---- */

typedef enum hsm_create_how { HSM_HOW_GENERATE, HSM_HOW_IMPORT, HSM_HOW_UNWRAP } hsm_create_how;

/* Entries of the index-key unwrap template a KEK carries (hsm_tmpl_unwrap). */
#define HSM_UTMPL_MAX 16

/*
 * Fill t (room for HSM_UTMPL_MAX) with the index-key template (key type
 * *hmac_kt) as a KEK's
 * CKA_UNWRAP_TEMPLATE: class, key type and every protection flag of
 * hsm_tmpl_build's index template (no label, id or CKA_VALUE_LEN, which an
 * unwrap template cannot hold on SoftHSM), CKA_MODIFIABLE last. Returns the
 * count. Cipherdex's own unwrap template is a superset, so the token accepts
 * it; any template asking for something else (extractable, not sensitive,
 * derivable, ...) is refused by a token that enforces the attribute.
 */
CK_ULONG hsm_tmpl_unwrap(CK_ATTRIBUTE *t, const CK_KEY_TYPE *hmac_kt, bool copyable);

/*
 * Read h's CKA_UNWRAP_TEMPLATE and compare it with hsm_tmpl_unwrap's (the
 * key type may be CKK_GENERIC_SECRET or CKK_SHA256_HMAC): *state = 1 equal,
 * 0 absent or different, -1 not readable; *kt (may be NULL) = the key type
 * it names. Returns a CK_RV only for failures recovery may cure.
 */
CK_RV hsm_tmpl_read_unwrap(hsm_custody *c, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, int *state,
                           CK_KEY_TYPE *kt);

/* True for the HMAC key types Cipherdex accepts (CKK_GENERIC_SECRET, CKK_SHA256_HMAC). */
bool hsm_hmac_type_ok(CK_ULONG kt);

/* Key type for a new root/index key: the configured one, else the one generation settled on. */
CK_KEY_TYPE hsm_hmac_key_type(hsm_custody *c);

struct hsm_create;

/*
 * Makes the object from the template t[0..n): C_GenerateKey, C_UnwrapKey or
 * (in the admin library only) C_CreateObject. On a CK_RV failure that
 * recovery may cure it stores the CK_RV in *rv.
 */
typedef cdx_err (*hsm_make_fn)(hsm_custody *c, CK_SESSION_HANDLE s, struct hsm_create *a,
                               CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *h, CK_RV *rv);

struct hsm_create {
    hsm_key_kind kind;
    hsm_key_ref ref;      /* root/index */
    const char *kek_name; /* KEK being created, or KEK used to unwrap */
    hsm_create_how how;   /* what the template holds and the log line says */
    hsm_make_fn make;
    const uint8_t *key;  /* HSM_HOW_IMPORT: CKA_VALUE (CDX_KEY_LEN bytes) */
    const uint8_t *blob; /* HSM_HOW_UNWRAP */
    size_t blob_len;
    uint8_t kcv[CDX_KCV_LEN];
    CK_OBJECT_HANDLE h;
    CK_ATTRIBUTE utmpl[HSM_UTMPL_MAX]; /* a KEK's CKA_UNWRAP_TEMPLATE (hsm_tmpl_build) */
    CK_KEY_TYPE key_type;              /* of the new object: CKK_AES (KEK) or hsm_hmac_key_type */
    CK_KEY_TYPE hmac_kt;               /* HMAC key type a KEK's unwrap template names */
    bool copyable;                     /* CKA_COPYABLE FALSE in the template (hsm_caps_copyable) */
    bool allowed_mechs; /* CKA_ALLOWED_MECHANISMS {CKM_SHA256_HMAC} on a root/index key */
};

/*
 * Create the object a describes: refuse an existing label, make it, compute
 * the KCV (root/index), check the template (destroying a non-conforming
 * object), re-check after an interrupted attempt, remember the handle and log
 * it. kcv_out may be NULL. Errors: CDX_ERR_ALREADY_EXISTS,
 * CDX_ERR_KEY_ATTRIBUTES, what a->make returns, the custody errors.
 */
CDX_MUST_CHECK cdx_err hsm_key_create(hsm_custody *c, struct hsm_create *a, uint8_t *kcv_out);

/*
 * Fill t (room for 24) with the template of the new object a describes,
 * labelled `label` with CKA_ID `id`; returns the count. The last entry is
 * CKA_MODIFIABLE (SoftHSM applies it last on unwrap). A KEK's template
 * carries CKA_UNWRAP_TEMPLATE, built into a->utmpl.
 */
CK_ULONG hsm_tmpl_build(struct hsm_create *a, CK_ATTRIBUTE *t, const char *label,
                        const uint8_t *id);

/* The KCV's message: KCV = HMAC-SHA256(key, HSM_KCV_MSG)[0..8] (docs/KEYS.md). */
#define HSM_KCV_MSG "cipherdex/v1/kcv"

/*
 * Generate a->kind's key on the token. KEKs: CKM_AES_KEY_GEN. Root/index
 * keys: a->key_type with its key-generation mechanism (CKK_GENERIC_SECRET:
 * CKM_GENERIC_SECRET_KEY_GEN; CKK_SHA256_HMAC: CKM_SHA256_KEY_GEN if listed,
 * else CKM_GENERIC_SECRET_KEY_GEN), checked for CKF_GENERATE first; with
 * [hsm] hmac_key_type = auto a refused CKK_GENERIC_SECRET
 * (CKR_ATTRIBUTE_VALUE_INVALID, CKR_TEMPLATE_INCONSISTENT,
 * CKR_MECHANISM_INVALID, or no CKF_GENERATE) is retried as CKK_SHA256_HMAC
 * and that choice is kept for the context.
 */
cdx_err hsm_make_generate(hsm_custody *c, CK_SESSION_HANDLE s, struct hsm_create *a,
                          CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *h, CK_RV *rv);
/* C_CreateObject with the key bytes as CKA_VALUE (hsm_import.c; KEK import uses it too). */
cdx_err hsm_make_import(hsm_custody *c, CK_SESSION_HANDLE s, struct hsm_create *a, CK_ATTRIBUTE *t,
                        CK_ULONG n, CK_OBJECT_HANDLE *h, CK_RV *rv);

/*
 * Destroy a root/index key (k) or a KEK (kek_name), re-checking after an
 * interrupted attempt; a key's cached subkeys are dropped first.
 * Errors: CDX_ERR_KEY_NOT_FOUND, CDX_ERR_KEY_AMBIGUOUS, the custody errors.
 */
CDX_MUST_CHECK cdx_err hsm_object_destroy(hsm_custody *c, const hsm_key_ref *k,
                                          const char *kek_name);

/* ---- capabilities (hsm_caps.c) ---- */

/*
 * A blank-padded CK_UTF8CHAR field (CK_TOKEN_INFO label, model, ...) as a C
 * string in dst (cap bytes): padding removed, bytes outside printable ASCII
 * replaced by '?'.
 */
void hsm_unpad(char *dst, size_t cap, const CK_UTF8CHAR *src, size_t n);

/*
 * A software token: its slot lacks CKF_HW_SLOT, or its model (unpadded) is
 * one of the software tokens Debian ships (SoftHSM, IBM SoftTok, NSS). Pure.
 */
bool hsm_software_token(const CK_SLOT_INFO *si, const char *model);

/* Label of the objects the capability probes make and destroy again. */
#define HSM_PROBE_LABEL "cipherdex-probe"

#ifndef CKM_AES_KEY_WRAP_KWP
#define CKM_AES_KEY_WRAP_KWP 0x0000210BUL /* RFC 5649, PKCS#11 3.0 */
#endif

#ifndef CKM_SHA256_KEY_GEN
#define CKM_SHA256_KEY_GEN 0x00004005UL /* PKCS#11 3.0: generates CKK_SHA256_HMAC keys */
#endif

/*
 * The unwrap known-answer test for mechanism m (session objects only): *ok
 * when the fixed RFC 5649 blob unwraps to the key of known KCV. Returns a
 * CK_RV only for failures recovery may cure.
 */
CK_RV hsm_unwrap_kat(hsm_custody *c, CK_SESSION_HANDLE s, CK_MECHANISM_TYPE m, bool *ok);

/* True when the token lists mechanism m with every bit of `flag` (C_GetMechanismInfo). */
bool hsm_mech_has(hsm_custody *c, CK_MECHANISM_TYPE m, CK_FLAGS flag);

/* "CKM_AES_KEY_WRAP_KWP", ..., or "mechanism 0x..." (thread-local buffer). */
const char *hsm_mech_name(CK_MECHANISM_TYPE m);

/*
 * The RFC 5649 unwrap mechanism for this token, decided once per custody:
 * [hsm] unwrap_mechanism if set; else CKM_AES_KEY_WRAP_KWP if listed with
 * CKF_UNWRAP; else CKM_AES_KEY_WRAP_PAD if listed with CKF_UNWRAP and it
 * passes the known-answer test (a session KEK from fixed bytes unwraps a
 * fixed 40-byte RFC 5649 blob to a key of known KCV). Runs inside an op.
 * Errors: CDX_ERR_MECHANISM_UNSUPPORTED (none, or the KAT failed), a CK_RV
 * failure of the KAT (stored in *rv).
 */
cdx_err hsm_unwrap_mech(hsm_custody *c, CK_SESSION_HANDLE s, CK_MECHANISM_TYPE *out, CK_RV *rv);

/*
 * Probe (once per context, with keys from public bytes: a token object
 * labelled HSM_PROBE_LABEL destroyed at once, or a session object if the
 * token refuses to import token objects) whether the token supports
 * CKA_COPYABLE and CKA_ALLOWED_MECHANISMS, and
 * refuse to create (creating) or adopt keys on a token without CKA_COPYABLE
 * unless [hsm] copyable = unsupported. Runs inside an op.
 * Errors: CDX_ERR_KEY_ATTRIBUTES (no CKA_COPYABLE, not opted in; the detail
 * names the token and what is lost), a CK_RV failure (stored in *rv).
 */
cdx_err hsm_caps_probe(hsm_custody *c, CK_SESSION_HANDLE s, bool creating, CK_RV *rv);

/*
 * False when CKA_COPYABLE is left out of templates and may read unknown: the
 * token lacks it and [hsm] copyable = unsupported. True otherwise.
 */
bool hsm_caps_copyable(hsm_custody *c);

/* Subkey cache lifecycle (hsm_subkey.c). */
cdx_err hsm_subcache_new(hsm_custody *c);
void hsm_subcache_free(hsm_custody *c);
void hsm_subcache_drop_key(hsm_custody *c, const hsm_key_ref *k);
uint64_t hsm_subcache_count(hsm_custody *c);

#endif
