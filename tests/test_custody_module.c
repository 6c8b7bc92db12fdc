/*
 * test_custody_module.c - the custody suite that runs on any PKCS#11 module.
 *
 * test_pkcs11 needs SoftHSM underneath (it re-initialises tokens, injects
 * faults through p11wrap and checks SoftHSM's own answers); this suite
 * asks only what every module must do for Cipherdex, with no fault
 * injection and no token re-initialisation, so the module matrix
 * (tests/hsm_matrix, docs/CUSTODY.md) runs it on SoftHSM2, opencryptoki,
 * SoftHSM behind p11-kit server and NSS softokn. In ctest it runs on a
 * throwaway SoftHSM token.
 *
 * The token comes from the environment when CDX_CM_MODULE is set:
 *   CDX_CM_MODULE     module path
 *   CDX_CM_TOKEN      token URI ("pkcs11:token=...")
 *   CDX_CM_PIN_FILE   a 0600 file with the user PIN
 *   CDX_CM_INIT_ARGS  C_Initialize's pReserved (NSS), optional
 *   CDX_CM_COPYABLE   "unsupported" for a token without CKA_COPYABLE, optional
 * Every key it makes has a fresh random id and is destroyed at the end; the
 * token's other objects are left alone.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "cdx_err.h"
#include "fx_cunit.h"
#include "fx_custody.h"
#include "fx_softhsm.h"
#include "hsm_admin.h"
#include "hsm_custody.h"
#include "hsm_import.h"
#include "hsm_keys.h"
#include "hsm_provenance.h"
#include "hsm_subkey.h"

static fx_token *tok; /* the ctest token; NULL when the environment names one */
static hsm_config cfg;

static int suite_init(void)
{
    const char *module = getenv("CDX_CM_MODULE");
    if (!module || !*module) {
        tok = fx_token_new("custmod");
        if (!tok)
            return -1;
        fx_hsm_config(tok, NULL, 0, &cfg);
        return 0;
    }
    const char *uri = getenv("CDX_CM_TOKEN"), *pin = getenv("CDX_CM_PIN_FILE");
    const char *ia = getenv("CDX_CM_INIT_ARGS"), *cp = getenv("CDX_CM_COPYABLE");
    if (!uri || !pin) {
        fprintf(stderr, "CDX_CM_MODULE needs CDX_CM_TOKEN and CDX_CM_PIN_FILE\n");
        return -1;
    }
    hsm_config_init(&cfg);
    snprintf(cfg.module_path, sizeof(cfg.module_path), "%s", module);
    snprintf(cfg.token_uri, sizeof(cfg.token_uri), "%s", uri);
    snprintf(cfg.pin_source, sizeof(cfg.pin_source), "file:%s", pin);
    if (ia)
        snprintf(cfg.init_args, sizeof(cfg.init_args), "%s", ia);
    if (cp && !strcmp(cp, "unsupported"))
        cfg.copyable = HSM_COPYABLE_UNSUPPORTED;
    fprintf(stderr, "custody suite on %s (%s)\n", module, uri);
    return 0;
}

static int suite_clean(void)
{
    fx_token_free(tok);
    return 0;
}

static hsm_custody *open_ctx(void)
{
    hsm_custody *c = fx_custody_open(&cfg);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    return c;
}

static void fresh_id(hsm_key_ref *k)
{
    memset(k, 0, sizeof(*k)); /* generation 0 (hsm_key_ref.gen) */
    k->kind = HSM_KEY_INDEX;
    CU_ASSERT_FATAL(RAND_bytes(k->id, CDX_ID_LEN) == 1);
}

/* The key of `k` in the token's listing, or NULL (*all freed by the caller). */
static const hsm_key_info *listed(const hsm_key_info *all, size_t n, const hsm_key_ref *k)
{
    char label[CDX_LABEL_MAX + 1];
    hsm_key_label(k, label);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(all[i].label, label))
            return &all[i];
    return NULL;
}

static bool kek_listed(hsm_custody *c, const char *name)
{
    hsm_key_info *all = NULL;
    size_t n = 0;
    char label[CDX_LABEL_MAX + 1];
    snprintf(label, sizeof(label), "cipherdex-kek-%s", name);
    if (hsm_key_list(c, &all, &n) != CDX_OK)
        return true; /* cannot tell: count as left */
    bool found = false;
    for (size_t i = 0; i < n; i++)
        found |= !strcmp(all[i].label, label);
    free(all);
    return found;
}

/*
 * Generate, KCV, check, adopt, the listing's template verdict, provenance,
 * subkeys; a second generate under the same id is refused; destroy.
 */
static void test_generated_key(void)
{
    hsm_custody *c = open_ctx();
    hsm_key_ref k;
    fresh_id(&k);
    uint8_t kcv[CDX_KCV_LEN], kcv2[CDX_KCV_LEN], zero[CDX_KCV_LEN] = {0};
    cdx_err e = hsm_index_key_generate(c, k.id, kcv);
    if (e)
        fprintf(stderr, "generate: %s: %s\n", cdx_err_name(e), cdx_err_detail());
    CU_ASSERT_EQUAL_FATAL(e, CDX_OK);
    CU_ASSERT_EQUAL(hsm_key_kcv(c, &k, kcv2), CDX_OK);
    CU_ASSERT_EQUAL(memcmp(kcv, kcv2, CDX_KCV_LEN), 0);
    CU_ASSERT_EQUAL(hsm_key_check(c, &k, kcv), CDX_OK);
    CU_ASSERT_EQUAL(hsm_key_check(c, &k, zero), CDX_ERR_KEY_REPLACED);
    CU_ASSERT_EQUAL(hsm_index_key_generate(c, k.id, kcv2), CDX_ERR_ALREADY_EXISTS);
    memset(kcv2, 0, sizeof(kcv2));
    CU_ASSERT_EQUAL(hsm_index_key_adopt(c, k.id, kcv2), CDX_OK);
    CU_ASSERT_EQUAL(memcmp(kcv, kcv2, CDX_KCV_LEN), 0);

    /* The token says it is protected: sensitive, not extractable, not derivable; nothing the
     * template needs is wrong or unreported (unreported counts as wrong). */
    hsm_key_info *all = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL_FATAL(hsm_key_list(c, &all, &n), CDX_OK);
    const hsm_key_info *ki = listed(all, n, &k);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ki);
    CU_ASSERT_EQUAL(ki->kind, HSM_KEY_INDEX);
    CU_ASSERT_EQUAL(ki->wrong, 0);
    CU_ASSERT_TRUE(ki->attrs & HSM_A_SENSITIVE);
    CU_ASSERT_FALSE(ki->attrs & (HSM_A_EXTRACTABLE | HSM_A_DERIVE | HSM_A_MODIFIABLE));
    CU_ASSERT_TRUE(ki->has_kcv && !memcmp(ki->kcv, kcv, CDX_KCV_LEN));
    free(all);

    hsm_key_facts f;
    CU_ASSERT_EQUAL(hsm_key_facts_read(c, &k, &f), CDX_OK);
    CU_ASSERT_TRUE(f.attrs & HSM_A_SENSITIVE);
    CU_ASSERT_EQUAL(f.copyable_not_enforced,
                    cfg.copyable == HSM_COPYABLE_UNSUPPORTED && (f.unknown & HSM_A_COPYABLE));
    CU_ASSERT_NOT_EQUAL(f.serial[0] | f.model[0], 0);

    for (hsm_purpose p = HSM_P_TOKEN; p <= HSM_P_MANIFEST; p++) {
        hsm_subkey *a = NULL, *b = NULL;
        CU_ASSERT_EQUAL_FATAL(hsm_subkey_get(c, &k, kcv, p, 3, &a), CDX_OK);
        CU_ASSERT_EQUAL_FATAL(hsm_subkey_get(c, &k, kcv, p, 4, &b), CDX_OK);
        CU_ASSERT_NOT_EQUAL(memcmp(hsm_subkey_bytes(a), hsm_subkey_bytes(b), CDX_SUBKEY_LEN), 0);
        hsm_subkey_release(a);
        hsm_subkey_release(b);
    }
    /* A root purpose on an index key is refused. */
    hsm_subkey *r = NULL;
    CU_ASSERT_NOT_EQUAL(hsm_subkey_get(c, &k, kcv, HSM_P_CATALOG, 0, &r), CDX_OK);
    CU_ASSERT_PTR_NULL(r);

    CU_ASSERT_EQUAL(hsm_key_destroy(c, &k), CDX_OK);
    CU_ASSERT_EQUAL(hsm_key_kcv(c, &k, kcv2), CDX_ERR_KEY_NOT_FOUND);
    hsm_custody_free(c);
}

/* A key of known bytes: its KCV and every subkey, computed on the token, equal the host's. */
static void test_known_key(void)
{
    hsm_custody *c = open_ctx();
    hsm_key_ref k;
    fresh_id(&k);
    uint8_t key[CDX_KEY_LEN], kcv[CDX_KCV_LEN], want[CDX_KCV_LEN];
    CU_ASSERT_FATAL(RAND_bytes(key, sizeof(key)) == 1);
    CU_ASSERT_EQUAL_FATAL(hsm_kcv_of_bytes(key, want), CDX_OK);
    cdx_err e = hsm_index_key_import(c, k.id, key, kcv);
    if (e)
        fprintf(stderr, "import: %s: %s\n", cdx_err_name(e), cdx_err_detail());
    CU_ASSERT_EQUAL_FATAL(e, CDX_OK);
    CU_ASSERT_EQUAL(memcmp(kcv, want, CDX_KCV_LEN), 0);
    for (hsm_purpose p = HSM_P_TOKEN; p <= HSM_P_MANIFEST; p++) {
        uint8_t msg[128], host[32];
        unsigned hl = sizeof(host);
        size_t len = hsm_subkey_message(p, k.id, 7, msg, sizeof(msg));
        CU_ASSERT_TRUE_FATAL(len > 0);
        HMAC(EVP_sha256(), key, sizeof(key), msg, len, host, &hl);
        hsm_subkey *sk = NULL;
        CU_ASSERT_EQUAL_FATAL(hsm_subkey_get(c, &k, kcv, p, 7, &sk), CDX_OK);
        CU_ASSERT_EQUAL(memcmp(hsm_subkey_bytes(sk), host, 32), 0);
        hsm_subkey_release(sk);
    }
    /* Imported keys are not "born on the token"; a token may not say. */
    hsm_key_facts f;
    CU_ASSERT_EQUAL(hsm_key_facts_read(c, &k, &f), CDX_OK);
    CU_ASSERT_NOT_EQUAL(hsm_facts_born_on_token(&f), 1);
    CU_ASSERT_EQUAL(hsm_key_destroy(c, &k), CDX_OK);
    hsm_custody_free(c);
}

/*
 * KEKs: either the token can hold one Cipherdex accepts, and then a host-wrapped data key
 * (RFC 5649) unwraps to the host's KCV and a tampered blob is refused; or the KEK is refused
 * by name and nothing is left on the token.
 */

static void test_kek(void)
{
    hsm_custody *c = open_ctx();
    char name[24];
    uint8_t r[4];
    CU_ASSERT_FATAL(RAND_bytes(r, sizeof(r)) == 1);
    snprintf(name, sizeof(name), "cm-%02x%02x%02x%02x", r[0], r[1], r[2], r[3]);
    uint8_t kek[32], dek[32], blob[48], want[CDX_KCV_LEN], kcv[CDX_KCV_LEN];
    CU_ASSERT_FATAL(RAND_bytes(kek, 32) == 1 && RAND_bytes(dek, 32) == 1);
    CU_ASSERT_EQUAL_FATAL(fx_kms_wrap(kek, dek, 32, blob), 40);
    CU_ASSERT_EQUAL_FATAL(hsm_kcv_of_bytes(dek, want), CDX_OK);
    cdx_err e = hsm_kek_import(c, name, kek);
    if (e) {
        /* Refused: only for the two reasons Cipherdex names, leaving nothing. */
        const char *d = cdx_err_detail();
        fprintf(stderr, "(KEK refused: %s) ", d);
        CU_ASSERT_TRUE(
            (e == CDX_ERR_MECHANISM_UNSUPPORTED && strstr(d, "a KEK only serves index unwrap")) ||
            (e == CDX_ERR_KEY_ATTRIBUTES && strstr(d, "does not keep it")));
        CU_ASSERT_FALSE(kek_listed(c, name));
        hsm_custody_free(c);
        return;
    }
    hsm_key_ref k;
    fresh_id(&k);
    e = hsm_index_key_unwrap(c, k.id, name, blob, 40, kcv);
    if (e)
        fprintf(stderr, "unwrap: %s: %s\n", cdx_err_name(e), cdx_err_detail());
    CU_ASSERT_EQUAL(e, CDX_OK);
    CU_ASSERT_EQUAL(memcmp(kcv, want, CDX_KCV_LEN), 0);
    hsm_key_ref k2;
    fresh_id(&k2);
    blob[17] ^= 0x01;
    CU_ASSERT_EQUAL(hsm_index_key_unwrap(c, k2.id, name, blob, 40, kcv), CDX_ERR_BAD_WRAPPED_KEY);
    CU_ASSERT_EQUAL(hsm_key_kcv(c, &k2, kcv), CDX_ERR_KEY_NOT_FOUND);
    if (!e)
        CU_ASSERT_EQUAL(hsm_key_destroy(c, &k), CDX_OK);
    CU_ASSERT_EQUAL(hsm_kek_destroy(c, name), CDX_OK);
    CU_ASSERT_FALSE(kek_listed(c, name));
    hsm_custody_free(c);
}

/* Several threads derive at once through the session pool: every answer is the same. */
struct derive_arg {
    hsm_custody *c;
    hsm_key_ref k;
    uint8_t kcv[CDX_KCV_LEN], want[CDX_SUBKEY_LEN];
    int bad;
};

static void *derive_main(void *p)
{
    struct derive_arg *a = p;
    for (int i = 0; i < 100; i++) {
        hsm_subkey *sk = NULL;
        if (hsm_subkey_get(a->c, &a->k, a->kcv, HSM_P_QUERY, 9, &sk) != CDX_OK ||
            memcmp(hsm_subkey_bytes(sk), a->want, CDX_SUBKEY_LEN) != 0)
            a->bad++;
        hsm_subkey_release(sk);
    }
    return NULL;
}

static void test_threads(void)
{
    hsm_custody *c = open_ctx();
    hsm_key_ref k;
    fresh_id(&k);
    uint8_t kcv[CDX_KCV_LEN];
    CU_ASSERT_EQUAL_FATAL(hsm_index_key_generate(c, k.id, kcv), CDX_OK);
    hsm_subkey *sk = NULL;
    CU_ASSERT_EQUAL_FATAL(hsm_subkey_get(c, &k, kcv, HSM_P_QUERY, 9, &sk), CDX_OK);
    enum { NT = 4 };
    struct derive_arg a[NT];
    pthread_t th[NT];
    for (int i = 0; i < NT; i++) {
        a[i] = (struct derive_arg){.c = c, .k = k};
        memcpy(a[i].kcv, kcv, CDX_KCV_LEN);
        memcpy(a[i].want, hsm_subkey_bytes(sk), CDX_SUBKEY_LEN);
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, derive_main, &a[i]), 0);
    }
    hsm_subkey_release(sk);
    for (int i = 0; i < NT; i++) {
        pthread_join(th[i], NULL);
        CU_ASSERT_EQUAL(a[i].bad, 0);
    }
    CU_ASSERT_EQUAL(hsm_key_destroy(c, &k), CDX_OK);
    hsm_custody_free(c);
}

/*
 * The module is finalised when the context closes and initialised again by the next one in the
 * same process: the keys are still there with the same KCV; random bytes work.
 */
static void test_reopen(void)
{
    hsm_custody *c = open_ctx();
    hsm_key_ref k;
    fresh_id(&k);
    uint8_t kcv[CDX_KCV_LEN], kcv2[CDX_KCV_LEN];
    CU_ASSERT_EQUAL_FATAL(hsm_index_key_generate(c, k.id, kcv), CDX_OK);
    hsm_custody_free(c);
    c = open_ctx();
    CU_ASSERT_EQUAL(hsm_key_kcv(c, &k, kcv2), CDX_OK);
    CU_ASSERT_EQUAL(memcmp(kcv, kcv2, CDX_KCV_LEN), 0);
    uint8_t r1[32], r2[32];
    CU_ASSERT_EQUAL(hsm_random(c, r1, sizeof(r1)), CDX_OK);
    CU_ASSERT_EQUAL(hsm_random(c, r2, sizeof(r2)), CDX_OK);
    CU_ASSERT_NOT_EQUAL(memcmp(r1, r2, sizeof(r1)), 0);
    CU_ASSERT_EQUAL(hsm_key_destroy(c, &k), CDX_OK);
    hsm_custody_free(c);
}

int main(void)
{
    static const fx_test tests[] = {
        {"generated key: KCV, check, adopt, template, provenance, subkeys, destroy",
         test_generated_key},
        {"known key: KCV and every subkey equal the host's", test_known_key},
        {"KEK: unwrap to the host's KCV, or refused by name leaving nothing", test_kek},
        {"four threads derive through the session pool", test_threads},
        {"close and reopen: module re-initialised, keys kept", test_reopen},
    };
    static const fx_suite suite = {.name = "custody_module",
                                   .init = suite_init,
                                   .clean = suite_clean,
                                   .tests = tests,
                                   .ntests = FX_LEN(tests)};
    return fx_cunit_run(&suite, 1);
}
