/*
 * Custody context: module loading (one CK_FUNCTION_LIST, initialised by us
 * or found already initialised), token discovery, login, session pool,
 * recovery.
 */
#include "hsm_internal.h"

#include <dlfcn.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <p11-kit/uri.h>

#include "cdx_log.h"
#include "hsm_pin.h"
#include "hsm_secmem.h"
#include "hsm_subkey.h"
#include "cdx_time.h"

static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static hsm_custody *registry;

/* Copy a blank-padded PKCS#11 string field into a NUL-terminated, trimmed one. */
static void padded(char *dst, size_t cap, const CK_UTF8CHAR *src, size_t len)
{
    size_t n = len < cap - 1 ? len : cap - 1;
    memcpy(dst, src, n);
    while (n > 0 && (dst[n - 1] == ' ' || dst[n - 1] == '\0'))
        n--;
    dst[n] = '\0';
}

/* ---------------------------------------------------------------- sessions */

/* Take a session, opening one if the pool may grow. Caller holds the shared lock. */
static cdx_err pool_get(hsm_custody *c, CK_SESSION_HANDLE *s, CK_RV *rv)
{
    cdx_err err = CDX_OK;
    pthread_mutex_lock(&c->pool_mu);
    for (;;) {
        if (c->nfree > 0) {
            *s = c->pool[--c->nfree];
            break;
        }
        if (c->nopen < c->max_sessions) {
            c->nopen++;
            pthread_mutex_unlock(&c->pool_mu);
            CK_RV r =
                c->f->C_OpenSession(c->slot_id, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, s);
            pthread_mutex_lock(&c->pool_mu);
            if (r == CKR_OK)
                break;
            c->nopen--;
            pthread_cond_signal(&c->pool_cv);
            if (r == CKR_SESSION_COUNT && c->nopen > 0) {
                c->max_sessions = c->nopen; /* the token's limit is lower than ours */
                continue;
            }
            *rv = r;
            err = hsm_ckr_fail(r, "C_OpenSession");
            break;
        }
        pthread_cond_wait(&c->pool_cv, &c->pool_mu);
    }
    pthread_mutex_unlock(&c->pool_mu);
    return err;
}

/* Return a session; a broken one is closed instead of pooled. */
static void pool_put(hsm_custody *c, CK_SESSION_HANDLE s, bool broken)
{
    if (broken)
        (void)c->f->C_CloseSession(s);
    pthread_mutex_lock(&c->pool_mu);
    if (broken)
        c->nopen--;
    else
        c->pool[c->nfree++] = s;
    pthread_cond_signal(&c->pool_cv);
    pthread_mutex_unlock(&c->pool_mu);
}

/* ---------------------------------------------------------------- token */

static cdx_err token_matches(const char *uri_s, const CK_TOKEN_INFO *ti, bool *match)
{
    P11KitUri *uri = p11_kit_uri_new();
    if (!uri)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    int r = p11_kit_uri_parse(uri_s, P11_KIT_URI_FOR_TOKEN, uri);
    if (r != P11_KIT_URI_OK) {
        p11_kit_uri_free(uri);
        return cdx_fail(CDX_ERR_CONFIG, "token URI does not parse: %s", p11_kit_uri_message(r));
    }
    *match = p11_kit_uri_match_token_info(uri, (CK_TOKEN_INFO *)ti) == 1;
    p11_kit_uri_free(uri);
    return CDX_OK;
}

/* ---------------------------------------------------------------- module */

/*
 * dlopen the module and take its function list. The list is kept for the
 * context's life: p11-kit's client and proxy modules hand out a new,
 * uninitialised list on every C_GetFunctionList, so only the list we
 * C_Initialize may be used. RTLD_NODELETE: a module is never unloaded, so a
 * later context in the same process finds it as it was left. opencryptoki
 * 3.8.1 crashes (SIGSEGV in libitm, from its TPM token's ST_Initialize) when
 * it is unloaded and loaded again in a process that also uses libcrypto.
 */
static cdx_err mod_open(const char *path, void **dl, CK_FUNCTION_LIST_PTR *f)
{
    cdx_err err = CDX_OK;
    *f = NULL;
    *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (!*dl)
        return cdx_fail(CDX_ERR_HSM_UNAVAILABLE, "PKCS#11 module %s does not load: %s", path,
                        dlerror());
    CK_C_GetFunctionList gfl = (CK_C_GetFunctionList)dlsym(*dl, "C_GetFunctionList");
    if (!gfl) {
        err = cdx_fail(CDX_ERR_HSM_UNAVAILABLE,
                       "%s is not a PKCS#11 module (it has no C_GetFunctionList)", path);
        goto out;
    }
    CK_RV rv = gfl(f);
    if (rv != CKR_OK || !*f) {
        if (rv == CKR_OK)
            rv = CKR_GENERAL_ERROR; /* a list we cannot use */
        (void)hsm_ckr_fail(rv, "C_GetFunctionList");
        err = cdx_fail(CDX_ERR_HSM_UNAVAILABLE,
                       "PKCS#11 module %s failed to load: C_GetFunctionList: %s", path,
                       hsm_ckr_name(rv));
        goto out;
    }
out:
    if (err) {
        *f = NULL;
        dlclose(*dl);
        *dl = NULL;
    }
    return err;
}

/*
 * C_Initialize f with CKF_OS_LOCKING_OK and init_args as pReserved.
 * *owned: true when this call initialised it (the caller finalises it),
 * false when it was already initialised by someone else in the process
 * (shared: never finalise it).
 */
static cdx_err mod_init(const char *path, CK_FUNCTION_LIST_PTR f, const char *init_args,
                        bool *owned)
{
    CK_C_INITIALIZE_ARGS a;
    memset(&a, 0, sizeof(a));
    a.flags = CKF_OS_LOCKING_OK;
    a.pReserved = init_args && init_args[0] ? (CK_VOID_PTR)init_args : NULL;
    *owned = false;
    CK_RV rv = f->C_Initialize(&a);
    if (rv == CKR_OK) {
        *owned = true;
        return CDX_OK;
    }
    if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED)
        return CDX_OK;
    (void)hsm_ckr_fail(rv, "C_Initialize");
    return cdx_fail(CDX_ERR_HSM_UNAVAILABLE,
                    "PKCS#11 module %s failed to initialise: C_Initialize: %s%s", path,
                    hsm_ckr_name(rv),
                    a.pReserved ? ""
                                : " (a module that needs C_Initialize parameters, such as NSS "
                                  "softokn, takes them from [hsm] init_args)");
}

/* Present slots through f; *ids malloc'ed. Returns the CK_RV. */
static CK_RV slot_ids(CK_FUNCTION_LIST_PTR f, CK_SLOT_ID **ids, CK_ULONG *n)
{
    *ids = NULL;
    *n = 0;
    for (int tries = 0; tries < 4; tries++) { /* slots may appear between the two calls */
        CK_ULONG cnt = 0;
        CK_RV rv = f->C_GetSlotList(CK_TRUE, NULL, &cnt);
        if (rv != CKR_OK)
            return rv;
        CK_SLOT_ID *v = calloc(cnt ? cnt : 1, sizeof(*v));
        if (!v)
            return CKR_HOST_MEMORY;
        rv = f->C_GetSlotList(CK_TRUE, v, &cnt);
        if (rv == CKR_OK) {
            *ids = v;
            *n = cnt;
            return CKR_OK;
        }
        free(v);
        if (rv != CKR_BUFFER_TOO_SMALL)
            return rv;
    }
    return CKR_BUFFER_TOO_SMALL;
}

/*
 * Every present slot's token through f (the one list custody initialised).
 * A slot whose C_GetTokenInfo fails is kept, with its error mapped to a
 * cdx_err in ->err and the CK_RV's name in ->err_text; the raw value is
 * logged here. *out is malloc'ed (free()).
 * Errors: CDX_ERR_HSM_UNAVAILABLE (no slot list), CDX_ERR_CONFIG (uri does
 * not parse), CDX_ERR_RESOURCE_EXHAUSTED.
 */
static cdx_err scan_tokens(CK_FUNCTION_LIST_PTR f, const char *uri, hsm_token_info **out,
                           size_t *nout)
{
    cdx_err err = CDX_OK;
    CK_SLOT_ID *ids = NULL;
    CK_ULONG n = 0;
    hsm_token_info *v = NULL;
    *out = NULL;
    *nout = 0;

    CK_RV rv = slot_ids(f, &ids, &n);
    if (rv != CKR_OK) {
        err = hsm_ckr_fail(rv, "C_GetSlotList");
        if (err != CDX_ERR_RESOURCE_EXHAUSTED)
            err = cdx_fail(CDX_ERR_HSM_UNAVAILABLE, "cannot list the module's slots (%s)",
                           hsm_ckr_name(rv));
        goto out;
    }
    v = calloc(n ? n : 1, sizeof(*v));
    if (!v) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (CK_ULONG i = 0; i < n; i++) {
        hsm_token_info *t = &v[i];
        CK_TOKEN_INFO ti;
        t->slot_id = ids[i];
        rv = f->C_GetTokenInfo(ids[i], &ti);
        if (rv != CKR_OK) {
            cdx_log(CDX_LOG_WARN, "pkcs11_error", "op=C_GetTokenInfo slot=%lu ckr=%s rv=0x%lx",
                    (unsigned long)ids[i], hsm_ckr_name(rv), (unsigned long)rv);
            t->err = hsm_ckr_code(rv);
            snprintf(t->err_text, sizeof(t->err_text), "C_GetTokenInfo: %s", hsm_ckr_name(rv));
            continue;
        }
        padded(t->label, sizeof(t->label), ti.label, sizeof(ti.label));
        padded(t->serial, sizeof(t->serial), ti.serialNumber, sizeof(ti.serialNumber));
        padded(t->manufacturer, sizeof(t->manufacturer), ti.manufacturerID,
               sizeof(ti.manufacturerID));
        padded(t->model, sizeof(t->model), ti.model, sizeof(ti.model));
        t->initialized = (ti.flags & CKF_TOKEN_INITIALIZED) != 0;
        bool m = false;
        if (uri && *uri && (err = token_matches(uri, &ti, &m)))
            goto out;
        t->matches_uri = m;
    }
    *out = v;
    *nout = n;
    v = NULL;
out:
    free(v);
    free(ids);
    return err;
}

/* The tokens seen, for a TOKEN_NOT_FOUND message: initialised tokens, unreadable slots. */
static void describe_tokens(const hsm_token_info *v, size_t n, char *buf, size_t cap)
{
    size_t off = 0;
    unsigned listed = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n && listed < CDX_TOKENS_LISTED_MAX; i++) {
        int w;
        if (v[i].err)
            w = snprintf(buf + off, cap - off, "%sslot %lu unreadable (%s, %s)", listed ? ", " : "",
                         v[i].slot_id, v[i].err_text, cdx_err_name(v[i].err));
        else if (v[i].initialized)
            w = snprintf(buf + off, cap - off, "%s'%s' (serial %s)", listed ? ", " : "", v[i].label,
                         v[i].serial);
        else
            continue;
        if (w < 0 || (size_t)w >= cap - off)
            break;
        off += (size_t)w;
        listed++;
    }
    if (listed == 0)
        snprintf(buf, cap, "none");
}

/*
 * Drop every session and key handle, and finalise the module if we
 * initialised it; a shared module (initialised by someone else in the
 * process) only loses our sessions. Caller holds the exclusive lock.
 */
static void unload_locked(hsm_custody *c)
{
    pthread_mutex_lock(&c->pool_mu);
    if (c->inited && !c->owns_init) /* C_Finalize would close them; we may not call it */
        for (unsigned i = 0; i < c->nfree; i++)
            (void)c->f->C_CloseSession(c->pool[i]);
    c->nfree = 0;
    c->nopen = 0;
    pthread_mutex_unlock(&c->pool_mu);
    pthread_mutex_lock(&c->keys_mu);
    for (size_t i = 0; i < c->nkeys; i++)
        c->keys[i].gen = 0;
    pthread_mutex_unlock(&c->keys_mu);
    if (c->inited && c->owns_init) {
        CK_RV rv = c->f->C_Finalize(NULL);
        if (rv != CKR_OK)
            cdx_log(CDX_LOG_WARN, "pkcs11_error", "op=C_Finalize ckr=%s rv=0x%lx", hsm_ckr_name(rv),
                    (unsigned long)rv);
    }
    c->inited = false;
    c->owns_init = false;
}

/*
 * (Re)initialise the module, find the token, open a session and log in.
 * `initial` selects TOKEN_NOT_FOUND (configuration) over HSM_UNAVAILABLE
 * (a token that was there went away). Caller holds the exclusive lock.
 */
static cdx_err connect_locked(hsm_custody *c, bool initial)
{
    cdx_err err = CDX_OK;
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    hsm_token_info *tv = NULL;
    size_t nt = 0;

    unload_locked(c);
    /* Every failure goes through out: it marks custody unhealthy, so the re-login back-off
     * and health see the failure (an early return here once left healthy set). */
    if ((err = mod_init(c->cfg.module_path, c->f, c->cfg.init_args, &c->owns_init)))
        goto out;
    c->inited = true;
    if ((err = scan_tokens(c->f, c->cfg.token_uri, &tv, &nt)))
        goto out;
    unsigned matches = 0;
    size_t pick = 0;
    for (size_t i = 0; i < nt; i++)
        if (!tv[i].err && tv[i].matches_uri && tv[i].initialized) {
            matches++;
            pick = i;
        }
    if (matches != 1) {
        char seen[1024];
        describe_tokens(tv, nt, seen, sizeof(seen));
        if (matches > 1)
            err = cdx_fail(CDX_ERR_CONFIG,
                           "token URI %s matches %u tokens; add serial= to pick one (tokens: %s)",
                           c->cfg.token_uri, matches, seen);
        else
            err = cdx_fail(initial ? CDX_ERR_TOKEN_NOT_FOUND : CDX_ERR_HSM_UNAVAILABLE,
                           "no initialised token matches %s; tokens found: %s", c->cfg.token_uri,
                           seen);
        goto out;
    }
    c->slot_id = tv[pick].slot_id;
    CK_TOKEN_INFO ti; /* the raw serial, for token_same */
    CK_RV rv = c->f->C_GetTokenInfo(c->slot_id, &ti);
    if (rv != CKR_OK) {
        err = hsm_ckr_fail(rv, "C_GetTokenInfo");
        if (err == CDX_ERR_HSM_FAILED)
            err = CDX_ERR_HSM_UNAVAILABLE;
        goto out;
    }
    memcpy(c->serial, ti.serialNumber, sizeof(c->serial));
    CK_MECHANISM_INFO mi;
    if (c->f->C_GetMechanismInfo(c->slot_id, CKM_SHA256_HMAC, &mi) != CKR_OK ||
        !(mi.flags & CKF_SIGN)) {
        err = cdx_fail(CDX_ERR_MECHANISM_UNSUPPORTED,
                       "the token lacks CKM_SHA256_HMAC signing, needed to derive subkeys");
        goto out;
    }
    rv = c->f->C_OpenSession(c->slot_id, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK) {
        err = hsm_ckr_fail(rv, "C_OpenSession");
        if (err == CDX_ERR_HSM_FAILED)
            err = CDX_ERR_HSM_UNAVAILABLE;
        goto out;
    }
    atomic_fetch_add(&c->logins, 1);
    rv = c->f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)c->pin, c->pin_len);
    hsm_emit(c, HSM_EV_LOGIN, 0, NULL, 0, -1,
             rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN ? CDX_OK : hsm_ckr_code(rv));
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
        err = hsm_ckr_fail(rv, "C_Login");
        if (hsm_ckr_pin_fatal(rv))
            c->login_block = err;
        else if (err == CDX_ERR_HSM_FAILED)
            err = cdx_fail(CDX_ERR_HSM_UNAVAILABLE, "login failed (%s)", hsm_ckr_name(rv));
        goto out;
    }
    pthread_mutex_lock(&c->pool_mu);
    c->pool[c->nfree++] = s;
    c->nopen = 1;
    pthread_mutex_unlock(&c->pool_mu);
    s = CK_INVALID_HANDLE;
    c->gen++;
    c->healthy = true;
out:
    if (s != CK_INVALID_HANDLE)
        (void)c->f->C_CloseSession(s);
    free(tv);
    if (err)
        c->healthy = false;
    return err;
}

/* Recover after a recoverable CK_RV seen in generation seen_gen. */
static cdx_err recover(hsm_custody *c, uint64_t seen_gen)
{
    cdx_err err = CDX_OK;
    pthread_rwlock_wrlock(&c->lock);
    if (c->healthy && c->gen != seen_gen)
        goto out; /* another thread already recovered */
    if (c->login_block) {
        err = cdx_fail(c->login_block,
                       "the token rejected the PIN earlier; Cipherdex will not log in again on its "
                       "own (a real HSM would lock the PIN): fix the PIN and restart");
        goto out;
    }
    int64_t now = cdx_mono_ms();
    if (atomic_exchange(&c->retry_now, false)) { /* an operator asked: try now, from the start */
        c->next_try_ms = 0;
        c->backoff_ms = CDX_RELOGIN_BACKOFF_MIN_MS;
    }
    if (now < c->next_try_ms) {
        err = cdx_fail(CDX_ERR_HSM_UNAVAILABLE,
                       "the token is unavailable; next reconnection attempt in %lld ms",
                       (long long)(c->next_try_ms - now));
        goto out;
    }
    hsm_subkey_flush(c);
    cdx_log(CDX_LOG_WARN, "hsm_recover", "generation=%llu", (unsigned long long)c->gen);
    err = connect_locked(c, false);
    if (err) {
        if (!c->login_block) {
            c->next_try_ms = now + c->backoff_ms;
            c->backoff_ms = c->backoff_ms * 2 > CDX_RELOGIN_BACKOFF_MAX_MS
                                ? CDX_RELOGIN_BACKOFF_MAX_MS
                                : c->backoff_ms * 2;
        }
        cdx_log(CDX_LOG_ERROR, "hsm_recover_failed", "code=%s backoff_ms=%u", cdx_err_name(err),
                c->backoff_ms);
        hsm_emit(c, HSM_EV_RECOVER, 0, NULL, 0, -1, err);
        goto out;
    }
    c->backoff_ms = CDX_RELOGIN_BACKOFF_MIN_MS;
    c->next_try_ms = 0;
    atomic_fetch_add(&c->recoveries, 1);
    hsm_emit(c, HSM_EV_RECOVER, 0, NULL, 0, -1, CDX_OK);
    cdx_log(CDX_LOG_INFO, "hsm_recovered", "generation=%llu", (unsigned long long)c->gen);
out:
    pthread_rwlock_unlock(&c->lock);
    return err;
}

/*
 * Is the token we logged in to still there? A token re-initialised or
 * removed under a running process does not always fail with a "gone" code:
 * SoftHSM answers searches with nothing and creations with
 * CKR_GENERAL_ERROR. Checked only on such failures, so it costs nothing on
 * the hot path.
 */
static bool token_same(hsm_custody *c)
{
    CK_TOKEN_INFO ti;
    if (c->f->C_GetTokenInfo(c->slot_id, &ti) != CKR_OK)
        return false;
    return (ti.flags & CKF_TOKEN_INITIALIZED) &&
           !memcmp(ti.serialNumber, c->serial, sizeof(c->serial));
}

cdx_err hsm_run(hsm_custody *c, hsm_op_fn op, void *arg, bool idempotent)
{
    for (int attempt = 0;; attempt++) {
        CK_RV rv = CKR_OK;
        cdx_err err;
        pthread_rwlock_rdlock(&c->lock);
        uint64_t gen = c->gen;
        if (!c->healthy) {
            rv = CKR_DEVICE_ERROR; /* still down from an earlier failure */
            err = CDX_ERR_HSM_UNAVAILABLE;
        } else {
            CK_SESSION_HANDLE s;
            err = pool_get(c, &s, &rv);
            if (!err) {
                err = op(c, s, arg, &rv);
                if ((err == CDX_ERR_KEY_NOT_FOUND || err == CDX_ERR_HSM_FAILED ||
                     err == CDX_ERR_BAD_WRAPPED_KEY) &&
                    !token_same(c)) {
                    cdx_log(CDX_LOG_WARN, "hsm_token_changed", "code=%s", cdx_err_name(err));
                    rv = CKR_TOKEN_NOT_PRESENT;
                }
                pool_put(c, s, rv != CKR_OK && hsm_ckr_recoverable(rv));
            }
        }
        pthread_rwlock_unlock(&c->lock);
        if (err == CDX_OK || rv == CKR_OK || !hsm_ckr_recoverable(rv))
            return err;
        if (attempt > 0)
            return cdx_fail(CDX_ERR_HSM_UNAVAILABLE, "token still failing after recovery (%s)",
                            hsm_ckr_name(rv));
        cdx_err rerr = recover(c, gen);
        if (rerr)
            return rerr;
        if (!idempotent)
            return HSM_INTERRUPTED;
    }
}

CK_RV hsm_find(hsm_custody *c, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl, CK_ULONG n,
               CK_OBJECT_HANDLE *h, unsigned *count)
{
    CK_OBJECT_HANDLE found[2];
    CK_ULONG got = 0;
    CK_RV rv = c->f->C_FindObjectsInit(s, tmpl, n);
    if (rv != CKR_OK)
        return rv;
    rv = c->f->C_FindObjects(s, found, 2, &got);
    CK_RV rv2 = c->f->C_FindObjectsFinal(s);
    if (rv == CKR_OK)
        rv = rv2;
    if (rv != CKR_OK)
        return rv;
    *count = (unsigned)got;
    if (got >= 1)
        *h = found[0];
    return CKR_OK;
}

CK_RV hsm_sign_hmac(hsm_custody *c, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, const void *msg,
                    size_t len, uint8_t out[32])
{
    CK_MECHANISM mech = {CKM_SHA256_HMAC, NULL, 0};
    CK_ULONG olen = 32;
    CK_RV rv = c->f->C_SignInit(s, &mech, h);
    if (rv != CKR_OK)
        return rv;
    rv = c->f->C_Sign(s, (CK_BYTE_PTR)msg, len, out, &olen);
    if (rv == CKR_OK && olen != 32)
        rv = CKR_GENERAL_ERROR;
    return rv;
}

/* ---------------------------------------------------------------- lifecycle */

static bool same_config(const hsm_config *a, const hsm_config *b)
{
    return !strcmp(a->token_uri, b->token_uri) && !strcmp(a->pin_source, b->pin_source) &&
           a->subkey_ttl_ms == b->subkey_ttl_ms && a->allow_env_pin == b->allow_env_pin &&
           !strcmp(a->init_args, b->init_args) && a->unwrap_mechanism == b->unwrap_mechanism &&
           a->hmac_key_type == b->hmac_key_type && a->copyable == b->copyable;
}

static void destroy(hsm_custody *c)
{
    hsm_subcache_free(c);
    pthread_rwlock_wrlock(&c->lock);
    /* A shared module's login ends with our last session (closed by unload_locked). */
    if (c->inited && c->owns_init && c->healthy && c->nfree > 0)
        (void)c->f->C_Logout(c->pool[0]);
    unload_locked(c);
    pthread_rwlock_unlock(&c->lock);
    if (c->dl)
        dlclose(c->dl);
    hsm_secmem_free(c->pin);
    free(c->keys);
    pthread_rwlock_destroy(&c->lock);
    pthread_mutex_destroy(&c->pool_mu);
    pthread_cond_destroy(&c->pool_cv);
    pthread_mutex_destroy(&c->keys_mu);
    OPENSSL_cleanse(c, sizeof(*c));
    free(c);
    hsm_secmem_shutdown();
}

cdx_err hsm_custody_open(const hsm_config *cfg_in, hsm_custody **out)
{
    cdx_err err;
    hsm_custody *c = NULL;
    hsm_config cfg = *cfg_in;
    *out = NULL;

    if ((err = hsm_config_check(&cfg)))
        return err;
    char real[PATH_MAX];
    if (!realpath(cfg.module_path, real))
        return cdx_fail(CDX_ERR_CONFIG, "PKCS#11 module %s does not exist", cfg.module_path);
    snprintf(cfg.module_path, sizeof(cfg.module_path), "%s", real);

    pthread_mutex_lock(&registry_mu);
    for (hsm_custody *it = registry; it; it = it->next) {
        if (strcmp(it->cfg.module_path, cfg.module_path))
            continue;
        if (!same_config(&it->cfg, &cfg)) {
            err = cdx_fail(CDX_ERR_CONFIG,
                           "module %s is already in use in this process with another token, PIN "
                           "source, subkey TTL or init_args; one custody context per module",
                           cfg.module_path);
        } else {
            it->refs++;
            *out = it;
            err = CDX_OK;
        }
        pthread_mutex_unlock(&registry_mu);
        return err;
    }

    /* A network HSM that drops its socket must not kill us with SIGPIPE. */
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);

    if ((err = hsm_secmem_init(cfg.secmem_bytes, cfg.allow_unlocked_memory)))
        goto unlock;
    c = calloc(1, sizeof(*c));
    if (!c) {
        hsm_secmem_shutdown();
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto unlock;
    }
    c->refs = 1;
    c->cfg = cfg;
    c->max_sessions = cfg.sessions ? cfg.sessions : CDX_SESSIONS_DEFAULT;
    c->backoff_ms = CDX_RELOGIN_BACKOFF_MIN_MS;
    pthread_rwlock_init(&c->lock, NULL);
    pthread_mutex_init(&c->pool_mu, NULL);
    pthread_cond_init(&c->pool_cv, NULL);
    pthread_mutex_init(&c->keys_mu, NULL);

    if ((err = hsm_pin_read(cfg.pin_source, cfg.allow_env_pin, &c->pin, &c->pin_len)))
        goto fail;
    /* One function list for the context's life: the one we initialise and call. */
    if ((err = mod_open(cfg.module_path, &c->dl, &c->f)))
        goto fail;
    pthread_rwlock_wrlock(&c->lock);
    err = connect_locked(c, true);
    pthread_rwlock_unlock(&c->lock);
    if (err)
        goto fail;
    if ((err = hsm_subcache_new(c)))
        goto fail;
    c->next = registry;
    registry = c;
    *out = c;
    cdx_log(CDX_LOG_INFO, "hsm_open",
            "slot=%lu sessions=%u subkey_ttl_ms=%u locked=%d module_init=%s",
            (unsigned long)c->slot_id, c->max_sessions, cfg.subkey_ttl_ms, hsm_secmem_locked(),
            c->owns_init ? "own" : "shared");
    goto unlock;
fail:
    destroy(c);
unlock:
    pthread_mutex_unlock(&registry_mu);
    return err;
}

void hsm_custody_free(hsm_custody *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&registry_mu);
    if (--c->refs > 0) {
        pthread_mutex_unlock(&registry_mu);
        return;
    }
    for (hsm_custody **pp = &registry; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    destroy(c);
    pthread_mutex_unlock(&registry_mu);
}

void hsm_custody_stats(hsm_custody *c, hsm_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->derivations = atomic_load(&c->derivations);
    out->cache_hits = atomic_load(&c->cache_hits);
    out->kcv_computes = atomic_load(&c->kcv_computes);
    out->recoveries = atomic_load(&c->recoveries);
    out->logins = atomic_load(&c->logins);
    pthread_rwlock_rdlock(&c->lock);
    out->generation = c->gen;
    pthread_rwlock_unlock(&c->lock);
    out->cached_subkeys = hsm_subcache_count(c);
}

const char *hsm_event_name(hsm_event_kind k)
{
    switch (k) {
    case HSM_EV_DERIVE:
        return "derive";
    case HSM_EV_LOGIN:
        return "login";
    case HSM_EV_RECOVER:
        return "recover";
    case HSM_EV_GENERATE:
        return "generate";
    case HSM_EV_UNWRAP:
        return "unwrap";
    case HSM_EV_IMPORT:
        return "import";
    case HSM_EV_ADOPT:
        return "adopt";
    case HSM_EV_DESTROY:
        return "destroy";
    case HSM_EV_ATTEST:
        return "attest_sign";
    case HSM_EV_ATTRS:
        return "read_attributes";
    }
    return "unknown";
}

void hsm_custody_set_event_hook(hsm_custody *c, hsm_event_fn fn, void *arg)
{
    if (!c)
        return;
    c->ev_fn = fn;
    c->ev_arg = arg;
}

void hsm_emit(hsm_custody *c, hsm_event_kind kind, int key_kind, const uint8_t *key_id, int purpose,
              int kcv, cdx_err result)
{
    if (!c || !c->ev_fn)
        return;
    hsm_event ev = {.kind = kind,
                    .key_kind = key_kind,
                    .key_id = key_id,
                    .purpose = purpose,
                    .kcv = kcv,
                    .result = result};
    c->ev_fn(c->ev_arg, &ev);
}

uint32_t hsm_custody_subkey_ttl(const hsm_custody *c)
{
    return c->cfg.subkey_ttl_ms;
}

/* ---------------------------------------------------------------- random */

struct rand_arg {
    void *buf;
    size_t len;
};

static cdx_err rand_op(hsm_custody *c, CK_SESSION_HANDLE s, void *arg, CK_RV *rv)
{
    struct rand_arg *a = arg;
    CK_RV r = c->f->C_GenerateRandom(s, a->buf, (CK_ULONG)a->len);
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "C_GenerateRandom");
    }
    return CDX_OK;
}

struct token_arg {
    char *manufacturer, *model;
    bool software;
};

void hsm_unpad(char *dst, size_t cap, const CK_UTF8CHAR *src, size_t n)
{
    size_t l = n < cap - 1 ? n : cap - 1;
    memcpy(dst, src, l);
    while (l > 0 && (dst[l - 1] == ' ' || dst[l - 1] == '\0'))
        l--;
    dst[l] = '\0';
    for (size_t i = 0; i < l; i++)
        if ((unsigned char)dst[i] < 0x20 || (unsigned char)dst[i] > 0x7e)
            dst[i] = '?';
}

static cdx_err token_op(hsm_custody *c, CK_SESSION_HANDLE s, void *arg, CK_RV *rv)
{
    (void)s;
    struct token_arg *a = arg;
    CK_TOKEN_INFO ti;
    CK_SLOT_INFO si;
    CK_RV r = c->f->C_GetTokenInfo(c->slot_id, &ti);
    if (r == CKR_OK)
        r = c->f->C_GetSlotInfo(c->slot_id, &si);
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "C_GetTokenInfo");
    }
    hsm_unpad(a->manufacturer, 33, ti.manufacturerID, sizeof(ti.manufacturerID));
    hsm_unpad(a->model, 17, ti.model, sizeof(ti.model));
    a->software = hsm_software_token(&si, a->model);
    return CDX_OK;
}

bool hsm_software_token(const CK_SLOT_INFO *si, const char *model)
{
    static const char *const soft[] = {"SoftHSM", "SoftTok", "NSS"};
    bool software = !(si->flags & CKF_HW_SLOT);
    for (size_t i = 0; i < sizeof(soft) / sizeof(soft[0]); i++)
        software |= strstr(model, soft[i]) != NULL;
    return software;
}

cdx_err hsm_custody_token(hsm_custody *c, char manufacturer[33], char model[17], bool *software)
{
    struct token_arg a = {manufacturer, model, false};
    manufacturer[0] = model[0] = '\0';
    cdx_err err = hsm_run(c, token_op, &a, true);
    *software = a.software;
    return err;
}

void hsm_custody_serial(const hsm_custody *c, char out[17])
{
    hsm_unpad(out, 17, c->serial, sizeof(c->serial));
}

void hsm_custody_retry_now(hsm_custody *c)
{
    if (c)
        atomic_store(&c->retry_now, true);
}

cdx_err hsm_random(hsm_custody *c, void *buf, size_t len)
{
    if (len == 0 || len > (1u << 20))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "random length %zu out of range (1..1 MiB)", len);
    struct rand_arg a = {buf, len};
    return hsm_run(c, rand_op, &a, true);
}

/* ---------------------------------------------------------------- listing */

cdx_err hsm_token_list(const char *module_path, const char *init_args, const char *uri,
                       hsm_token_info **out, size_t *n)
{
    cdx_err err;
    *out = NULL;
    *n = 0;
    char real[PATH_MAX];
    if (!module_path || !realpath(module_path, real))
        return cdx_fail(CDX_ERR_CONFIG, "PKCS#11 module %s does not exist",
                        module_path ? module_path : "(null)");
    pthread_mutex_lock(&registry_mu);
    for (hsm_custody *c = registry; c; c = c->next) {
        if (strcmp(c->cfg.module_path, real))
            continue;
        /* A context is open: list through its function list rather than finalising under it. */
        pthread_rwlock_rdlock(&c->lock);
        if (c->inited)
            err = scan_tokens(c->f, uri, out, n);
        else
            err = cdx_fail(CDX_ERR_HSM_UNAVAILABLE, "the token is being recovered; retry");
        pthread_rwlock_unlock(&c->lock);
        pthread_mutex_unlock(&registry_mu);
        return err;
    }
    void *dl = NULL;
    CK_FUNCTION_LIST_PTR f = NULL;
    bool inited = false, owned = false;
    if ((err = mod_open(real, &dl, &f)))
        goto out;
    if ((err = mod_init(real, f, init_args, &owned)))
        goto out;
    inited = true;
    err = scan_tokens(f, uri, out, n);
out:
    if (inited && owned) {
        CK_RV rv = f->C_Finalize(NULL);
        if (rv != CKR_OK)
            cdx_log(CDX_LOG_WARN, "pkcs11_error", "op=C_Finalize ckr=%s rv=0x%lx", hsm_ckr_name(rv),
                    (unsigned long)rv);
    }
    if (dl)
        dlclose(dl);
    pthread_mutex_unlock(&registry_mu);
    return err;
}
