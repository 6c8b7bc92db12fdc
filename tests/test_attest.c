/*
 * test_attest.c - HSM key attestation (docs/ATTESTATION.md).
 *
 * evidence: the statement for an index key on a throwaway SoftHSM token
 *   (pkcs11/hsm_attest, appliance/app_attest, policy/pol_evidence): the
 *   claims match the token, and every forged (random signature, another
 *   key's signature), replayed (other nonce), stale, claim-edited (each
 *   claim, and each byte of the statement) or wrong-key statement is
 *   refused, by the C verifier and by the openssl command line
 *   (tests/attest_openssl.sh, the doc's commands); the claims agree with
 *   pkcs11-tool's view of the same key and token; strict DER.
 * hsmtool: cipherdex-hsm attest-key create/show/csr (openssl req -verify)
 *   and attest verify on good and bad statements.
 * wire: cipherdexd's attest: no attestation key (FAILED_PRECONDITION, the
 *   daemon still serves), the attest permission, a statement that verifies
 *   with the key pinned from attest-key show, `cipherdex index attest`, and
 *   [keys] attest_certificates carrying a CA-certified key's chain.
 */
#include <CUnit/Basic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "app_attest.h"
#include "app_client.h"
#include "cdx_hex.h"
#include "cdx_limits.h"
#include "fx_cunit.h"
#include "fx_custody.h"
#include "fx_softhsm.h"
#include "fx_client.h"
#include "fx_stack.h"
#include "fx_tmp.h"
#include "hsm_admin.h"
#include "hsm_attest.h"
#include "hsm_keys.h"
#include "hsm_provenance.h"
#include "pol_evidence.h"

#define OUT_CAP (256 * 1024)

static const char *const quiet_env[] = {"CDX_LOG_LEVEL=error", NULL};

static char *out;         /* output of the last command run */
static fx_token *ttok;    /* the hsmtool suite's token */
static char script[4096]; /* tests/attest_openssl.sh */
static char tool[4096];   /* cipherdex-hsm */

/* ---- helpers ---- */

static int write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    int rc = fwrite(p, 1, n, f) == n ? 0 : -1;
    return fclose(f) ? -1 : rc;
}

static int write_pem(const char *path, EVP_PKEY *pk)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    int rc = PEM_write_PUBKEY(f, pk) == 1 ? 0 : -1;
    return fclose(f) ? -1 : rc;
}

static EVP_PKEY *ec_key(const char *curve)
{
    return EVP_PKEY_Q_keygen(NULL, NULL, "EC", curve);
}

/* parse + verify. */
static cdx_err check(const uint8_t *der, size_t len, EVP_PKEY *pk, const uint8_t *nonce, size_t nl,
                     int64_t now, int64_t max_age)
{
    pol_ev *ev = NULL;
    cdx_err err = pol_ev_parse(der, len, &ev);
    if (!err)
        err = pol_ev_verify(ev, pk, nonce, nl, now, max_age);
    pol_ev_free(ev);
    return err;
}

/*
 * The openssl command line on a statement (tests/attest_openssl.sh): 0 when the signature
 * verifies with pub_pem and the statement names that key, and, when given, answers nonce_hex
 * and is at most max_age seconds old.
 */
static int openssl_check(const char *dir, const uint8_t *der, size_t len, const char *pub_pem,
                         const char *nonce_hex, const char *max_age)
{
    char ev[4200];
    snprintf(ev, sizeof(ev), "%s/ev.der", dir);
    if (write_file(ev, der, len))
        return -1;
    const char *argv[] = {"sh", script, ev, pub_pem, dir, nonce_hex, max_age, NULL};
    return fx_run(argv, NULL, out, OUT_CAP);
}

static int openssl_verify(const char *dir, const uint8_t *der, size_t len, const char *pub_pem)
{
    return openssl_check(dir, der, len, pub_pem, NULL, NULL);
}

/* ---- suite: evidence, on one token ---- */

static fx_token *tok;
static hsm_custody *cust;
static EVP_PKEY *ak;        /* the token's attestation public key */
static eng_index_info info; /* an index whose key was generated on the token */
static char dir[4096], ak_pem[4200];
static uint8_t nonce[32];
static uint8_t *good; /* a statement for `nonce`, made at `made` */
static size_t good_len;
static int64_t made;

static int ev_init(void)
{
    out = malloc(OUT_CAP);
    const char *src = getenv("CDX_SOURCE_DIR");
    if (!out || !src)
        return -1;
    snprintf(script, sizeof(script), "%s/tests/attest_openssl.sh", src);
    const char *bin = getenv("CDX_BIN_DIR");
    if (!bin)
        return -1;
    snprintf(tool, sizeof(tool), "%s/appliance/cipherdex-hsm", bin);
    tok = fx_token_new("attest-ev");
    if (!tok)
        return -1;
    hsm_config cfg;
    fx_hsm_config(tok, NULL, 0, &cfg);
    cust = fx_custody_open(&cfg);
    if (!cust)
        return -1;
    snprintf(dir, sizeof(dir), "%s", fx_token_dir(tok));
    snprintf(ak_pem, sizeof(ak_pem), "%s/ak.pem", dir);
    hsm_key_facts kf;
    memset(&info, 0, sizeof(info));
    snprintf(info.name, sizeof(info.name), "docs");
    if (hsm_random(cust, info.id, CDX_ID_LEN) || hsm_index_key_generate(cust, info.id, info.kcv) ||
        hsm_attest_key_create(cust, false, NULL) || hsm_attest_key_public(cust, &ak) ||
        write_pem(ak_pem, ak))
        return -1;
    hsm_key_ref k = {.kind = HSM_KEY_INDEX};
    memcpy(k.id, info.id, CDX_ID_LEN);
    if (hsm_key_facts_read(cust, &k, &kf))
        return -1;
    info.prov.origin = ENG_ORIGIN_GENERATED;
    info.prov.attrs = kf.attrs;
    info.prov.unknown = kf.unknown;
    snprintf(info.prov.serial, sizeof(info.prov.serial), "%s", kf.serial);
    RAND_bytes(nonce, sizeof(nonce));
    made = (int64_t)time(NULL);
    return app_attest_make(cust, ak, &info, nonce, sizeof(nonce), made, NULL, 0, &good, &good_len)
               ? -1
               : 0;
}

static int ev_clean(void)
{
    free(good);
    EVP_PKEY_free(ak);
    hsm_custody_free(cust);
    fx_token_free(tok);
    return 0;
}

static const pol_ev_value *claim(const pol_ev *ev, pol_ev_claim c)
{
    const pol_ev_value *v = pol_ev_get(ev, c);
    CU_ASSERT_PTR_NOT_NULL_FATAL(v);
    return v;
}

static void is_bool(const pol_ev *ev, pol_ev_claim c, bool want)
{
    const pol_ev_value *v = claim(ev, c);
    CU_ASSERT(v->present && v->type == POL_EV_T_BOOL && v->b == want);
    if (!(v->present && v->b == want))
        fprintf(stderr, "claim %s: want %d\n", pol_ev_claim_name(c), want);
}

static bool bytes_are(const pol_ev_value *v, const void *p, size_t n)
{
    return v->present && v->len == n && !memcmp(v->data, p, n);
}

static bool text_is(const pol_ev_value *v, const char *s)
{
    return bytes_are(v, s, strlen(s));
}

/* The statement verifies and says what the token says about a generated index key. */
static void test_claims(void)
{
    pol_ev *ev = NULL;
    CU_ASSERT_FATAL(pol_ev_parse(good, good_len, &ev) == CDX_OK);
    CU_ASSERT(pol_ev_verify(ev, ak, nonce, sizeof(nonce), made, 300) == CDX_OK);
    uint8_t kid[32];
    CU_ASSERT_FATAL(pol_ev_key_id(ak, kid) == CDX_OK);
    CU_ASSERT(bytes_are(claim(ev, POL_EV_NONCE), nonce, sizeof(nonce)));
    CU_ASSERT(bytes_are(claim(ev, POL_EV_AK_ID), kid, 32));
    CU_ASSERT(claim(ev, POL_EV_TIMESTAMP)->i == made);
    CU_ASSERT(bytes_are(claim(ev, POL_EV_KEY_ID), info.id, CDX_ID_LEN));
    CU_ASSERT(bytes_are(claim(ev, POL_EV_KCV), info.kcv, CDX_KCV_LEN));
    CU_ASSERT(text_is(claim(ev, POL_EV_INDEX_NAME), "docs"));
    CU_ASSERT(text_is(claim(ev, POL_EV_ORIGIN), "generated"));
    CU_ASSERT(text_is(claim(ev, POL_EV_SERIAL), info.prov.serial));
    CU_ASSERT(text_is(claim(ev, POL_EV_TOKEN_LABEL), "attest-ev"));
    CU_ASSERT(text_is(claim(ev, POL_EV_SW_NAME), "cipherdex"));
    CU_ASSERT(claim(ev, POL_EV_KEY_TYPE)->i == 0x10); /* CKK_GENERIC_SECRET */
    const pol_ev_value *as = claim(ev, POL_EV_ASSURANCE);
    CU_ASSERT(as->present && memmem(as->data, as->len, "no vendor attestation", 21));
    is_bool(ev, POL_EV_SOFTWARE_TOKEN, true);
    is_bool(ev, POL_EV_SENSITIVE, true);
    is_bool(ev, POL_EV_EXTRACTABLE, false);
    is_bool(ev, POL_EV_NEVER_EXTRACTABLE, true);
    is_bool(ev, POL_EV_ALWAYS_SENSITIVE, true);
    is_bool(ev, POL_EV_LOCAL, true);
    is_bool(ev, POL_EV_CAP_SIGN, true);
    is_bool(ev, POL_EV_CAP_VERIFY, false);
    is_bool(ev, POL_EV_CAP_ENCRYPT, false);
    is_bool(ev, POL_EV_CAP_DECRYPT, false);
    is_bool(ev, POL_EV_CAP_WRAP, false);
    is_bool(ev, POL_EV_CAP_UNWRAP, false);
    is_bool(ev, POL_EV_CAP_DERIVE, false);
    is_bool(ev, POL_EV_MODIFIABLE, false);
    is_bool(ev, POL_EV_COPYABLE, false);
    is_bool(ev, POL_EV_BORN_ON_TOKEN, true);
    is_bool(ev, POL_EV_COPYABLE_NOT_ENFORCED, false);
    /* SoftHSM reports CKA_ALLOWED_MECHANISMS; custody sets {CKM_SHA256_HMAC} when it can. */
    bool hmac = false, absent = false;
    for (size_t i = 0; i < pol_ev_count(ev); i++) {
        const pol_ev_value *v = pol_ev_at(ev, i);
        if (v->claim == POL_EV_ALLOWED_MECH) {
            absent |= !v->present;
            hmac |= v->present && v->i == 0x251;
        }
    }
    CU_ASSERT(hmac != absent);
    pol_ev_free(ev);
}

/* Random signatures (as r||s, then DER) never verify. */
static void test_forged_random(void)
{
    const uint8_t *tbs, *sig, *kid;
    size_t tbs_len, sig_len;
    pol_ev *ev = NULL;
    CU_ASSERT_FATAL(pol_ev_parse(good, good_len, &ev) == CDX_OK);
    pol_ev_tbs(ev, &tbs, &tbs_len);
    pol_ev_signature(ev, &sig, &sig_len, &kid);
    int refused = 0;
    for (int i = 0; i < 200; i++) {
        uint8_t rs[64], *fsig = NULL, *der = NULL;
        size_t fl = 0, dl = 0;
        RAND_bytes(rs, sizeof(rs));
        CU_ASSERT_FATAL(pol_ev_sig_der(rs, &fsig, &fl) == CDX_OK);
        CU_ASSERT_FATAL(pol_ev_assemble(tbs, tbs_len, kid, fsig, fl, NULL, 0, &der, &dl) == CDX_OK);
        refused += check(der, dl, ak, nonce, sizeof(nonce), made, 300) == CDX_ERR_INTEGRITY;
        if (i < 3) /* and the openssl command line agrees (a few: a process each) */
            CU_ASSERT(openssl_verify(dir, der, dl, ak_pem) != 0);
        free(fsig);
        free(der);
    }
    CU_ASSERT(refused == 200);
    pol_ev_free(ev);
}

/* Signed by another P-256 key: refused with the token's key, whatever key id it names. */
static void test_forged_other_key(void)
{
    const uint8_t *tbs, *sig, *kid;
    size_t tbs_len, sig_len;
    pol_ev *ev = NULL;
    EVP_PKEY *other = ec_key("P-256");
    CU_ASSERT_FATAL(other != NULL);
    CU_ASSERT_FATAL(pol_ev_parse(good, good_len, &ev) == CDX_OK);
    pol_ev_tbs(ev, &tbs, &tbs_len);
    pol_ev_signature(ev, &sig, &sig_len, &kid);
    uint8_t osig[80], okid[32];
    size_t olen = sizeof(osig);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    CU_ASSERT_FATAL(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, other) == 1 &&
                    EVP_DigestSign(md, osig, &olen, tbs, tbs_len) == 1);
    EVP_MD_CTX_free(md);
    CU_ASSERT_FATAL(pol_ev_key_id(other, okid) == CDX_OK);
    const uint8_t *kids[2] = {kid, okid};
    for (int k = 0; k < 2; k++) {
        uint8_t *der = NULL;
        size_t dl = 0;
        CU_ASSERT_FATAL(pol_ev_assemble(tbs, tbs_len, kids[k], osig, olen, NULL, 0, &der, &dl) ==
                        CDX_OK);
        CU_ASSERT(check(der, dl, ak, nonce, sizeof(nonce), made, 300) == CDX_ERR_INTEGRITY);
        /* the forger's own key does not make it valid either: the claim names the token's key */
        CU_ASSERT(check(der, dl, other, nonce, sizeof(nonce), made, 300) == CDX_ERR_INTEGRITY);
        CU_ASSERT(openssl_verify(dir, der, dl, ak_pem) != 0);
        free(der);
    }
    pol_ev_free(ev);
    EVP_PKEY_free(other);
}

/* Replayed: another nonce (one bit, shorter, longer) is refused. */
static void test_replay(void)
{
    uint8_t other[33];
    memcpy(other, nonce, sizeof(nonce));
    other[32] = 0;
    CU_ASSERT(check(good, good_len, ak, other, 32, made, 300) == CDX_OK);
    for (size_t i = 0; i < sizeof(nonce); i++) {
        other[i] ^= 0x80;
        CU_ASSERT(check(good, good_len, ak, other, 32, made, 300) == CDX_ERR_INTEGRITY);
        other[i] ^= 0x80;
    }
    CU_ASSERT(check(good, good_len, ak, other, 31, made, 300) == CDX_ERR_INTEGRITY);
    CU_ASSERT(check(good, good_len, ak, other, 33, made, 300) == CDX_ERR_INTEGRITY);
    CU_ASSERT(check(good, good_len, ak, NULL, 0, made, 300) == CDX_ERR_INTEGRITY);
    /* the openssl path compares the nonce claim too */
    char nh[65], oh[67];
    cdx_hex_encode(nonce, sizeof(nonce), nh);
    CU_ASSERT(openssl_check(dir, good, good_len, ak_pem, nh, NULL) == 0);
    other[0] ^= 0x80;
    cdx_hex_encode(other, 32, oh);
    CU_ASSERT(openssl_check(dir, good, good_len, ak_pem, oh, NULL) != 0);
    CU_ASSERT(strstr(out, "another nonce") != NULL);
    cdx_hex_encode(other, 31, oh);
    CU_ASSERT(openssl_check(dir, good, good_len, ak_pem, oh, NULL) != 0);
}

/* Stale: older than max age, or from the future beyond the skew. */
static void test_stale(void)
{
    CU_ASSERT(check(good, good_len, ak, nonce, 32, made + 300, 300) == CDX_OK);
    CU_ASSERT(check(good, good_len, ak, nonce, 32, made + 301, 300) == CDX_ERR_STALE);
    CU_ASSERT(check(good, good_len, ak, nonce, 32, made + 100000, 0) == CDX_OK); /* unchecked */
    CU_ASSERT(check(good, good_len, ak, nonce, 32, made - CDX_ATTEST_CLOCK_SKEW_S, 300) == CDX_OK);
    CU_ASSERT(check(good, good_len, ak, nonce, 32, made - CDX_ATTEST_CLOCK_SKEW_S - 1, 300) ==
              CDX_ERR_STALE);
    /* and with openssl and the system clock: a statement made 1000 s ago, or 1000 s ahead */
    char nh[65];
    cdx_hex_encode(nonce, sizeof(nonce), nh);
    const int64_t when[2] = {(int64_t)time(NULL) - 1000, (int64_t)time(NULL) + 1000};
    for (int i = 0; i < 2; i++) {
        uint8_t *der = NULL;
        size_t dl = 0;
        CU_ASSERT_FATAL(app_attest_make(cust, ak, &info, nonce, sizeof(nonce), when[i], NULL, 0,
                                        &der, &dl) == CDX_OK);
        CU_ASSERT(check(der, dl, ak, nonce, 32, (int64_t)time(NULL), 300) == CDX_ERR_STALE);
        CU_ASSERT(openssl_check(dir, der, dl, ak_pem, nh, "300") != 0);
        CU_ASSERT(strstr(out, "stale") != NULL);
        CU_ASSERT(openssl_check(dir, der, dl, ak_pem, nh, "100000") == (i == 0 ? 0 : 1));
        free(der);
    }
    CU_ASSERT(openssl_check(dir, good, good_len, ak_pem, nh, "300") == 0);
}

/* One byte of each claim's value flipped (two ways): refused by C and by openssl. */
static void test_claim_edit_each(void)
{
    pol_ev *ev = NULL;
    CU_ASSERT_FATAL(pol_ev_parse(good, good_len, &ev) == CDX_OK);
    const uint8_t *tbs;
    size_t tbs_len;
    pol_ev_tbs(ev, &tbs, &tbs_len);
    uint8_t *copy = malloc(good_len);
    CU_ASSERT_FATAL(copy != NULL);
    size_t edited = 0, refused = 0, refused_openssl = 0, with_value = 0;
    for (size_t i = 0; i < pol_ev_count(ev); i++) {
        const pol_ev_value *v = pol_ev_at(ev, i);
        if (!v->present || !v->len)
            continue;
        with_value++;
        size_t at = (size_t)(v->data - tbs); /* the value's first byte, from the TBS' start */
        size_t tbs_off = 0;
        /* the TBS follows the outer header (2-4 bytes): find it by content */
        for (size_t o = 0; o + tbs_len <= good_len; o++)
            if (!memcmp(good + o, tbs, tbs_len)) {
                tbs_off = o;
                break;
            }
        static const uint8_t flips[2] = {0x01, 0xff};
        for (int f = 0; f < 2; f++) {
            memcpy(copy, good, good_len);
            copy[tbs_off + at] ^= flips[f];
            edited++;
            refused += check(copy, good_len, ak, nonce, 32, made, 300) != CDX_OK;
            if (f == 0)
                refused_openssl += openssl_verify(dir, copy, good_len, ak_pem) != 0;
        }
    }
    /* every claim of the table is there (kek_name only for unwrapped keys), most with a value */
    for (unsigned c = 0; c < POL_EV_NCLAIMS; c++)
        CU_ASSERT(c == POL_EV_KEK_NAME || pol_ev_get(ev, (pol_ev_claim)c) != NULL);
    CU_ASSERT(with_value >= 37);
    CU_ASSERT(edited == 2 * with_value);
    CU_ASSERT(refused == edited);
    CU_ASSERT(refused_openssl == with_value);
    free(copy);
    pol_ev_free(ev);
}

/* Every single byte of the statement flipped: refused (structure, canonical DER or signature). */
static void test_every_byte(void)
{
    uint8_t *copy = malloc(good_len);
    CU_ASSERT_FATAL(copy != NULL);
    size_t refused = 0;
    for (size_t i = 0; i < good_len; i++) {
        memcpy(copy, good, good_len);
        copy[i] ^= 0x01;
        refused += check(copy, good_len, ak, nonce, 32, made, 300) != CDX_OK;
    }
    CU_ASSERT(refused == good_len);
    free(copy);
}

/* The wrong key: another P-256 key, another curve, none. */
static void test_wrong_key(void)
{
    EVP_PKEY *p256 = ec_key("P-256"), *p384 = ec_key("P-384");
    CU_ASSERT_FATAL(p256 && p384);
    CU_ASSERT(check(good, good_len, p256, nonce, 32, made, 300) == CDX_ERR_INTEGRITY);
    CU_ASSERT(check(good, good_len, p384, nonce, 32, made, 300) == CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT(check(good, good_len, NULL, nonce, 32, made, 300) == CDX_ERR_INVALID_ARGUMENT);
    char other_pem[4200];
    snprintf(other_pem, sizeof(other_pem), "%s/other.pem", dir);
    CU_ASSERT_FATAL(write_pem(other_pem, p256) == 0);
    CU_ASSERT(openssl_verify(dir, good, good_len, other_pem) != 0);
    EVP_PKEY_free(p256);
    EVP_PKEY_free(p384);
}

/* Strict DER: truncations, trailing bytes, a non-minimal length, nothing at all. */
static void test_strict_der(void)
{
    pol_ev *ev = NULL;
    for (size_t n = 0; n < good_len; n++) {
        CU_ASSERT(pol_ev_parse(good, n, &ev) == CDX_ERR_INTEGRITY);
        CU_ASSERT(ev == NULL);
    }
    uint8_t *big = malloc(good_len + 2);
    CU_ASSERT_FATAL(big != NULL);
    memcpy(big, good, good_len);
    big[good_len] = 0;
    CU_ASSERT(pol_ev_parse(big, good_len + 1, &ev) == CDX_ERR_INTEGRITY);
    /* the outer length in long form with one more length byte than needed */
    CU_ASSERT_FATAL(good[1] == 0x82);
    big[0] = 0x30;
    big[1] = 0x83;
    big[2] = 0x00;
    memcpy(big + 3, good + 2, good_len - 2);
    CU_ASSERT(pol_ev_parse(big, good_len + 1, &ev) == CDX_ERR_INTEGRITY);
    CU_ASSERT(fx_detail_has("not minimal"));
    free(big);
    CU_ASSERT(pol_ev_parse((const uint8_t *)"", 0, &ev) == CDX_ERR_INTEGRITY);
    /* the intact one still parses, and the certificate slot round-trips */
    CU_ASSERT(pol_ev_parse(good, good_len, &ev) == CDX_OK);
    const uint8_t *tbs, *sig, *kid, *certs;
    size_t tbs_len, sig_len, certs_len;
    pol_ev_tbs(ev, &tbs, &tbs_len);
    pol_ev_signature(ev, &sig, &sig_len, &kid);
    unsigned char *spki = NULL;
    int sl = i2d_PUBKEY(ak, &spki); /* any DER SEQUENCE stands in for a certificate here */
    uint8_t *der = NULL;
    size_t dl = 0;
    CU_ASSERT_FATAL(sl > 0 && pol_ev_assemble(tbs, tbs_len, kid, sig, sig_len, spki, (size_t)sl,
                                              &der, &dl) == CDX_OK);
    pol_ev *ev2 = NULL;
    CU_ASSERT_FATAL(pol_ev_parse(der, dl, &ev2) == CDX_OK);
    pol_ev_certs(ev2, &certs, &certs_len);
    CU_ASSERT(certs_len == (size_t)sl && !memcmp(certs, spki, certs_len));
    CU_ASSERT(pol_ev_verify(ev2, ak, nonce, 32, made, 300) == CDX_OK);
    free(der);
    CU_ASSERT(pol_ev_assemble(tbs, tbs_len, kid, sig, sig_len, (const uint8_t *)"\x04\x00", 2, &der,
                              &dl) == CDX_ERR_INVALID_ARGUMENT);
    OPENSSL_free(spki);
    pol_ev_free(ev2);
    pol_ev_free(ev);
}

/* The doc's openssl commands verify the good statement and show the claims. */
static void test_openssl_good(void)
{
    const char *keep = getenv("CDX_ATTEST_EXAMPLE_DIR"); /* docs/ATTESTATION.md's example */
    if (keep) {
        char p[4200], nh[65];
        snprintf(p, sizeof(p), "%s/ev.der", keep);
        CU_ASSERT(write_file(p, good, good_len) == 0);
        snprintf(p, sizeof(p), "%s/ak.pem", keep);
        CU_ASSERT(write_pem(p, ak) == 0);
        snprintf(p, sizeof(p), "%s/nonce.hex", keep);
        cdx_hex_encode(nonce, sizeof(nonce), nh);
        CU_ASSERT(write_file(p, nh, strlen(nh)) == 0);
    }
    CU_ASSERT(openssl_verify(dir, good, good_len, ak_pem) == 0);
    CU_ASSERT(strstr(out, "Verified OK") != NULL);
    char claims[4200];
    snprintf(claims, sizeof(claims), "%s/claims.txt", dir);
    FILE *f = fopen(claims, "r");
    CU_ASSERT_FATAL(f != NULL);
    size_t n = fread(out, 1, OUT_CAP - 1, f);
    out[n] = '\0';
    fclose(f);
    CU_ASSERT(strstr(out, "2.25.144211767722024654500488149802296319553.1.2.3") != NULL);
    CU_ASSERT(strstr(out, "ecdsa-with-SHA256") != NULL);
    /* the doc's claim reader: one line per claim, each value as the C parser reads it */
    char ev[4200], claims_sh[4200];
    snprintf(ev, sizeof(ev), "%s/ev.der", dir);
    snprintf(claims_sh, sizeof(claims_sh), "%s/tests/attest_claims.sh", getenv("CDX_SOURCE_DIR"));
    const char *argv[] = {"sh", claims_sh, ev, NULL};
    CU_ASSERT_FATAL(fx_run(argv, NULL, out, OUT_CAP) == 0);
    pol_ev *pe = NULL;
    CU_ASSERT_FATAL(pol_ev_parse(good, good_len, &pe) == CDX_OK);
    size_t lines = 0;
    for (const char *p = out; (p = strchr(p, '\n')); p++)
        lines++;
    CU_ASSERT(lines == pol_ev_count(pe));
    for (size_t i = 0; i < pol_ev_count(pe); i++) {
        const pol_ev_value *v = pol_ev_at(pe, i);
        char oid[96], want[1200], hexv[1100];
        pol_ev_claim_oid_text(v->claim, oid, sizeof(oid));
        if (!v->present)
            snprintf(want, sizeof(want), "%s - -\n", oid);
        else {
            cdx_hex_encode(v->data, v->len < 512 ? v->len : 0, hexv);
            snprintf(want, sizeof(want), "%s [%d] %s", oid, (int)v->type, hexv);
        }
        CU_ASSERT(strstr(out, want) != NULL);
        if (!strstr(out, want))
            fprintf(stderr, "claims.sh lacks `%s`\n", want);
    }
    pol_ev_free(pe);
}

/* The words of pkcs11-tool's "Usage:" or "Access:" line, comma separated: is `w` one of them? */
static bool has_word(const char *line, const char *w)
{
    char buf[512];
    snprintf(buf, sizeof(buf), "%s", line);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        while (*t == ' ')
            t++;
        size_t l = strlen(t);
        while (l && (t[l - 1] == ' ' || t[l - 1] == '\n'))
            t[--l] = '\0';
        if (!strcmp(t, w))
            return true;
    }
    return false;
}

/* "  key  : value" line of pkcs11-tool's output after `from`, value into v. */
static bool field(const char *from, const char *key, char *v, size_t cap)
{
    const char *p = strstr(from, key);
    if (!p)
        return false;
    p = strchr(p, ':');
    if (!p)
        return false;
    p++;
    while (*p == ' ')
        p++;
    size_t l = strcspn(p, "\n");
    snprintf(v, cap, "%.*s", (int)l, p);
    return true;
}

/* Every claim agrees with what pkcs11-tool (opensc) reads from the same key and token. */
static void test_pkcs11_tool(void)
{
    pol_ev *ev = NULL;
    CU_ASSERT_FATAL(pol_ev_parse(good, good_len, &ev) == CDX_OK);
    const char *argv[] = {"pkcs11-tool",   "--module",        fx_softhsm_module(),
                          "--token-label", "attest-ev",       "--login",
                          "--pin",         fx_token_pin(tok), "--list-objects",
                          "--type",        "secrkey",         NULL};
    CU_ASSERT_FATAL(fx_run(argv, NULL, out, OUT_CAP) == 0);
    char label[80], idhex[33], v[256];
    hsm_key_ref k = {.kind = HSM_KEY_INDEX};
    memcpy(k.id, info.id, CDX_ID_LEN);
    hsm_key_label(&k, label);
    cdx_hex_encode(info.id, CDX_ID_LEN, idhex);
    const char *obj = strstr(out, label);
    CU_ASSERT_FATAL(obj != NULL);
    const char *head = obj;
    while (head > out && strncmp(head, "Secret Key Object", 17))
        head--;
    CU_ASSERT(strstr(head, "Generic secret length 32") == head + strlen("Secret Key Object; "));
    CU_ASSERT(field(obj, "ID:", v, sizeof(v)) && !strcmp(v, idhex));
    char usage[256], access[256];
    CU_ASSERT_FATAL(field(obj, "Usage:", usage, sizeof(usage)));
    CU_ASSERT_FATAL(field(obj, "Access:", access, sizeof(access)));
    static const struct {
        pol_ev_claim c;
        const char *word;
        bool usage;
    } map[] = {
        {POL_EV_CAP_ENCRYPT, "encrypt", true},
        {POL_EV_CAP_DECRYPT, "decrypt", true},
        {POL_EV_CAP_VERIFY, "verify", true},
        {POL_EV_CAP_WRAP, "wrap", true},
        {POL_EV_CAP_UNWRAP, "unwrap", true},
        {POL_EV_CAP_DERIVE, "derive", true},
        {POL_EV_SENSITIVE, "sensitive", false},
        {POL_EV_ALWAYS_SENSITIVE, "always sensitive", false},
        {POL_EV_NEVER_EXTRACTABLE, "never extractable", false},
        {POL_EV_EXTRACTABLE, "extractable", false},
        {POL_EV_LOCAL, "local", false},
    };
    for (size_t i = 0; i < FX_LEN(map); i++) {
        const pol_ev_value *cv = claim(ev, map[i].c);
        bool tool_says = has_word(map[i].usage ? usage : access, map[i].word);
        CU_ASSERT(cv->present && cv->b == tool_says);
        if (!(cv->present && cv->b == tool_says))
            fprintf(stderr, "claim %s = %d, pkcs11-tool: %s\n", pol_ev_claim_name(map[i].c), cv->b,
                    map[i].usage ? usage : access);
    }
    /* the token: pkcs11-tool -L */
    const char *argl[] = {"pkcs11-tool", "--module", fx_softhsm_module(), "-L", NULL};
    CU_ASSERT_FATAL(fx_run(argl, NULL, out, OUT_CAP) == 0);
    const char *slot = strstr(out, "token label        : attest-ev");
    CU_ASSERT_FATAL(slot != NULL);
    static const struct {
        pol_ev_claim c;
        const char *key;
    } tmap[] = {
        {POL_EV_MANUFACTURER, "token manufacturer"},
        {POL_EV_MODEL, "token model"},
        {POL_EV_HW_VERSION, "hardware version"},
        {POL_EV_FW_VERSION, "firmware version"},
        {POL_EV_SERIAL, "serial num"},
    };
    for (size_t i = 0; i < FX_LEN(tmap); i++) {
        CU_ASSERT_FATAL(field(slot, tmap[i].key, v, sizeof(v)));
        CU_ASSERT(text_is(claim(ev, tmap[i].c), v));
        if (!text_is(claim(ev, tmap[i].c), v))
            fprintf(stderr, "%s: pkcs11-tool says `%s`\n", tmap[i].key, v);
    }
    pol_ev_free(ev);
}

/* A self-signed certificate for key k, PEM, into path (extra: bytes appended after it). */
static int cert_file(const char *path, EVP_PKEY *k, const char *extra)
{
    X509 *x = X509_new();
    X509_NAME *n = X509_NAME_new();
    int ok =
        x && n && X509_set_version(x, 2) && ASN1_INTEGER_set(X509_get_serialNumber(x), 1) &&
        X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"t", -1, -1, 0) &&
        X509_set_subject_name(x, n) && X509_set_issuer_name(x, n) &&
        X509_gmtime_adj(X509_getm_notBefore(x), 0) &&
        X509_gmtime_adj(X509_getm_notAfter(x), 3600) && X509_set_pubkey(x, k) &&
        X509_sign(x, k, EVP_sha256()) > 0;
    FILE *f = ok ? fopen(path, "w") : NULL;
    ok = f && PEM_write_X509(f, x) == 1 && (!extra || fputs(extra, f) >= 0);
    if (f && fclose(f))
        ok = 0;
    X509_NAME_free(n);
    X509_free(x);
    return ok ? 0 : -1;
}

/* [keys] attest_certificates: read as DER; the first must certify the attestation key. */
static void test_certs_load(void)
{
    EVP_PKEY *k = ec_key("P-256"), *other = ec_key("P-256");
    CU_ASSERT_FATAL(k && other);
    char path[4200];
    snprintf(path, sizeof(path), "%s/chain.pem", dir);
    uint8_t *der = NULL;
    size_t dl = 0;
    CU_ASSERT_FATAL(cert_file(path, k, NULL) == 0);
    CU_ASSERT(app_attest_certs_load(path, k, &der, &dl) == CDX_OK);
    const unsigned char *p = der;
    X509 *x = der ? d2i_X509(NULL, &p, (long)dl) : NULL;
    CU_ASSERT(x && p == der + dl && EVP_PKEY_eq(X509_get0_pubkey(x), k) == 1);
    X509_free(x);
    free(der);
    CU_ASSERT(app_attest_certs_load(path, other, &der, &dl) == CDX_ERR_KEY_ATTRIBUTES);
    CU_ASSERT(app_attest_certs_load(path, NULL, &der, &dl) == CDX_ERR_KEY_ATTRIBUTES);
    CU_ASSERT(der == NULL && dl == 0);
    CU_ASSERT_FATAL(cert_file(path, k, "-----BEGIN CERTIFICATE-----\nnot base64\n") == 0);
    CU_ASSERT(app_attest_certs_load(path, k, &der, &dl) == CDX_ERR_CONFIG);
    CU_ASSERT_FATAL(write_file(path, "", 0) == 0);
    CU_ASSERT(app_attest_certs_load(path, k, &der, &dl) == CDX_ERR_CONFIG);
    snprintf(path, sizeof(path), "%s/none.pem", dir);
    CU_ASSERT(app_attest_certs_load(path, k, &der, &dl) == CDX_ERR_CONFIG);
    EVP_PKEY_free(k);
    EVP_PKEY_free(other);
}

/* Nonce bounds, a KCV that differs from the catalog's, and the key pair's life. */
static void test_refusals(void)
{
    uint8_t *der = NULL, n[65] = {0};
    size_t dl = 0;
    CU_ASSERT(app_attest_make(cust, ak, &info, n, 7, made, NULL, 0, &der, &dl) ==
              CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT(app_attest_make(cust, ak, &info, n, 65, made, NULL, 0, &der, &dl) ==
              CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT(der == NULL);
    CU_ASSERT(app_attest_make(cust, ak, &info, n, 8, made, NULL, 0, &der, &dl) == CDX_OK);
    free(der);
    CU_ASSERT(app_attest_make(cust, ak, &info, n, 64, made, NULL, 0, &der, &dl) == CDX_OK);
    free(der);
    eng_index_info other = info;
    other.kcv[0] ^= 1;
    CU_ASSERT(app_attest_make(cust, ak, &other, n, 8, made, NULL, 0, &der, &dl) ==
              CDX_ERR_KEY_REPLACED);
    RAND_bytes(other.id, CDX_ID_LEN);
    CU_ASSERT(app_attest_make(cust, ak, &other, n, 8, made, NULL, 0, &der, &dl) ==
              CDX_ERR_KEY_NOT_FOUND);
    /* the key pair: create refuses an existing one; replace makes a new one */
    bool replaced = false;
    CU_ASSERT(hsm_attest_key_create(cust, false, &replaced) == CDX_ERR_ALREADY_EXISTS);
    CU_ASSERT(!replaced);
    CU_ASSERT(hsm_attest_key_create(cust, true, &replaced) == CDX_OK);
    CU_ASSERT(replaced);
    EVP_PKEY *nk = NULL;
    CU_ASSERT_FATAL(hsm_attest_key_public(cust, &nk) == CDX_OK);
    CU_ASSERT(EVP_PKEY_eq(nk, ak) != 1);
    /* the old statement does not verify with the new key; a daemon holding the old public key
     * refuses to hand out what it cannot stand behind */
    CU_ASSERT(check(good, good_len, nk, nonce, 32, made, 300) == CDX_ERR_INTEGRITY);
    CU_ASSERT(app_attest_make(cust, ak, &info, n, 8, made, NULL, 0, &der, &dl) ==
              CDX_ERR_KEY_ATTRIBUTES);
    CU_ASSERT(app_attest_make(cust, nk, &info, n, 8, made, NULL, 0, &der, &dl) == CDX_OK);
    CU_ASSERT(check(der, dl, nk, n, 8, made, 300) == CDX_OK);
    free(der);
    EVP_PKEY_free(nk);
}

static const fx_test ev_tests[] = {
    {"claims", test_claims},
    {"forged: random signatures", test_forged_random},
    {"forged: another key", test_forged_other_key},
    {"replayed: other nonces", test_replay},
    {"stale", test_stale},
    {"claim-edited: each claim", test_claim_edit_each},
    {"edited: each byte", test_every_byte},
    {"wrong key", test_wrong_key},
    {"strict DER", test_strict_der},
    {"openssl command line", test_openssl_good},
    {"pkcs11-tool agrees", test_pkcs11_tool},
    {"attest_certificates file", test_certs_load},
    {"refusals and the key pair's life", test_refusals},
};

/* ---- suite: cipherdex-hsm ---- */

static char tdir[4096], tpem[4200], tfile[4200], nhex[65];

/* cipherdex-hsm on token t with the NULL-terminated arguments; output in `out`. */
static int tool_on(const fx_token *t, const char *a1, ...)
{
    const char *argv[24];
    int n = 0;
    char uri[200], pin[4200];
    snprintf(uri, sizeof(uri), "pkcs11:token=%s", fx_token_label(t));
    snprintf(pin, sizeof(pin), "file:%s", fx_token_pin_file(t));
    argv[n++] = tool;
    argv[n++] = "--token";
    argv[n++] = uri;
    argv[n++] = "--pin-source";
    argv[n++] = pin;
    argv[n++] = a1;
    va_list ap;
    va_start(ap, a1);
    for (const char *a; (a = va_arg(ap, const char *)) && n < 23;)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    return fx_run_env(argv, quiet_env, NULL, out, OUT_CAP);
}
#define TOOL(...) tool_on(ttok, __VA_ARGS__, NULL)

static int tool_init(void)
{
    ttok = fx_token_new("attest-tool");
    if (!ttok)
        return -1;
    snprintf(tdir, sizeof(tdir), "%s", fx_token_dir(ttok));
    snprintf(tpem, sizeof(tpem), "%s/ak.pem", tdir);
    snprintf(tfile, sizeof(tfile), "%s/ev.der", tdir);
    return 0;
}

static int tool_clean(void)
{
    fx_token_free(ttok);
    return 0;
}

static void test_tool_key(void)
{
    CU_ASSERT(TOOL("attest-key", "show") == 1);
    CU_ASSERT(strstr(out, "attest-key create") != NULL);
    CU_ASSERT(TOOL("attest-key", "create") == 0);
    CU_ASSERT(TOOL("attest-key", "create") == 1);
    CU_ASSERT(strstr(out, "ALREADY_EXISTS") != NULL);
    CU_ASSERT(TOOL("--json", "attest-key", "create", "--replace") == 0);
    CU_ASSERT(strstr(out, "\"status\":\"replaced\"") != NULL);
    CU_ASSERT_FATAL(TOOL("attest-key", "show") == 0);
    CU_ASSERT_FATAL(!strncmp(out, "-----BEGIN PUBLIC KEY-----", 26));
    CU_ASSERT_FATAL(write_file(tpem, out, strlen(out)) == 0);
    /* the CSR, signed on the token, verifies with openssl and carries the attestation key */
    CU_ASSERT(TOOL("attest-key", "csr", "--subject", "no-slash") == 2);
    CU_ASSERT_FATAL(TOOL("attest-key", "csr", "--subject", "/CN=cipherdex attest/O=Test") == 0);
    char csr[4200];
    snprintf(csr, sizeof(csr), "%s/csr.pem", tdir);
    CU_ASSERT_FATAL(write_file(csr, out, strlen(out)) == 0);
    const char *req[] = {"openssl", "req", "-in", csr, "-verify", "-noout", NULL};
    CU_ASSERT(fx_run(req, NULL, out, OUT_CAP) == 0);
    CU_ASSERT(strstr(out, "verify OK") != NULL);
    const char *pub[] = {"openssl", "req", "-in", csr, "-pubkey", "-noout", NULL};
    CU_ASSERT(fx_run(pub, NULL, out, OUT_CAP) == 0);
    FILE *f = fopen(tpem, "r");
    char pem[1024] = "";
    size_t pn = f ? fread(pem, 1, sizeof(pem) - 1, f) : 0;
    if (f)
        fclose(f);
    pem[pn] = '\0';
    CU_ASSERT(pn > 0 && !strcmp(out, pem));
}

/* A statement from an in-process custody on the tool's token, verified by the tool. */
static void test_tool_verify(void)
{
    hsm_config cfg;
    fx_hsm_config(ttok, NULL, 0, &cfg);
    hsm_custody *c = fx_custody_open(&cfg);
    CU_ASSERT_FATAL(c != NULL);
    eng_index_info ii;
    memset(&ii, 0, sizeof(ii));
    snprintf(ii.name, sizeof(ii.name), "tool");
    EVP_PKEY *pk = NULL;
    uint8_t n[16];
    RAND_bytes(n, sizeof(n));
    cdx_hex_encode(n, sizeof(n), nhex);
    CU_ASSERT_FATAL(hsm_random(c, ii.id, CDX_ID_LEN) == CDX_OK &&
                    hsm_index_key_generate(c, ii.id, ii.kcv) == CDX_OK &&
                    hsm_attest_key_public(c, &pk) == CDX_OK);
    int64_t now = (int64_t)time(NULL);
    uint8_t *der = NULL, *old = NULL;
    size_t dl = 0, ol = 0;
    CU_ASSERT_FATAL(app_attest_make(c, pk, &ii, n, sizeof(n), now, NULL, 0, &der, &dl) == CDX_OK);
    CU_ASSERT_FATAL(app_attest_make(c, pk, &ii, n, sizeof(n), now - 1000, NULL, 0, &old, &ol) ==
                    CDX_OK);
    CU_ASSERT_FATAL(write_file(tfile, der, dl) == 0);
    CU_ASSERT(TOOL("attest", "verify", tfile, "--public-key", tpem, "--nonce", nhex) == 0);
    CU_ASSERT(strstr(out, "key.sensitive") && strstr(out, "platform.assurance"));
    CU_ASSERT(TOOL("--json", "attest", "verify", tfile, "--public-key", tpem, "--nonce", nhex) ==
              0);
    CU_ASSERT(strstr(out, "\"key.extractable\":\"false\"") != NULL);
    /* replayed: another nonce */
    char other[65];
    snprintf(other, sizeof(other), "%s", nhex);
    other[0] = other[0] == '0' ? '1' : '0';
    CU_ASSERT(TOOL("attest", "verify", tfile, "--public-key", tpem, "--nonce", other) == 1);
    CU_ASSERT(strstr(out, "nonce") != NULL);
    CU_ASSERT(TOOL("attest", "verify", tfile, "--public-key", tpem, "--nonce", "00") == 2);
    /* stale */
    CU_ASSERT_FATAL(write_file(tfile, old, ol) == 0);
    CU_ASSERT(TOOL("attest", "verify", tfile, "--public-key", tpem, "--nonce", nhex, "--max-age",
                   "300") == 1);
    CU_ASSERT(strstr(out, "STALE") != NULL);
    CU_ASSERT(TOOL("attest", "verify", tfile, "--public-key", tpem, "--nonce", nhex, "--max-age",
                   "0") == 0);
    /* wrong key */
    EVP_PKEY *other_key = ec_key("P-256");
    char opem[4200];
    snprintf(opem, sizeof(opem), "%s/other.pem", tdir);
    CU_ASSERT_FATAL(other_key && write_pem(opem, other_key) == 0);
    CU_ASSERT_FATAL(write_file(tfile, der, dl) == 0);
    CU_ASSERT(TOOL("attest", "verify", tfile, "--public-key", opem, "--nonce", nhex) == 1);
    /* forged: a random signature */
    pol_ev *ev = NULL;
    CU_ASSERT_FATAL(pol_ev_parse(der, dl, &ev) == CDX_OK);
    const uint8_t *tbs, *sig, *kid;
    size_t tl, sl;
    pol_ev_tbs(ev, &tbs, &tl);
    pol_ev_signature(ev, &sig, &sl, &kid);
    uint8_t rs[64], *fs = NULL, *fd = NULL;
    size_t fsl = 0, fdl = 0;
    RAND_bytes(rs, sizeof(rs));
    CU_ASSERT_FATAL(pol_ev_sig_der(rs, &fs, &fsl) == CDX_OK &&
                    pol_ev_assemble(tbs, tl, kid, fs, fsl, NULL, 0, &fd, &fdl) == CDX_OK);
    CU_ASSERT_FATAL(write_file(tfile, fd, fdl) == 0);
    CU_ASSERT(TOOL("attest", "verify", tfile, "--public-key", tpem, "--nonce", nhex) == 1);
    /* claim-edited: one byte of every claim's value */
    size_t tbs_off = 0, edited = 0, refused = 0;
    for (size_t o = 0; o + tl <= dl; o++)
        if (!memcmp(der + o, tbs, tl)) {
            tbs_off = o;
            break;
        }
    uint8_t *copy = malloc(dl);
    CU_ASSERT_FATAL(copy != NULL);
    for (size_t i = 0; i < pol_ev_count(ev); i++) {
        const pol_ev_value *v = pol_ev_at(ev, i);
        if (!v->present || !v->len)
            continue;
        memcpy(copy, der, dl);
        copy[tbs_off + (size_t)(v->data - tbs)] ^= 0x01;
        CU_ASSERT_FATAL(write_file(tfile, copy, dl) == 0);
        edited++;
        refused += TOOL("attest", "verify", tfile, "--public-key", tpem, "--nonce", nhex) == 1;
    }
    CU_ASSERT(edited >= 36 && refused == edited);
    if (refused != edited || edited < 36)
        fprintf(stderr, "edited %zu refused %zu\n", edited, refused);
    /* not a statement at all */
    CU_ASSERT_FATAL(write_file(tfile, "hello", 5) == 0);
    CU_ASSERT(TOOL("attest", "verify", tfile, "--public-key", tpem, "--nonce", nhex) == 1);
    free(copy);
    free(fs);
    free(fd);
    pol_ev_free(ev);
    free(der);
    free(old);
    EVP_PKEY_free(other_key);
    EVP_PKEY_free(pk);
    hsm_custody_free(c);
}

static const fx_test tool_tests[] = {
    {"attest-key create, show, csr", test_tool_key},
    {"attest verify", test_tool_verify},
};

/* ---- suite: the daemon ---- */

static fx_stack S = FX_STACK_INIT;
static const fx_cert *auditor, *reader;

static const char POLICY[] = "[index att-*]\n"
                             "attest = uri:spiffe://test/auditor\n"
                             "read = uri:spiffe://test/reader\n";

static app_client *client_as(const fx_cert *c)
{
    return fx_stack_client(&S, c);
}

static cdx_err attest(app_client *c, const char *index, const uint8_t *n, size_t nl, uint8_t **der,
                      size_t *dl)
{
    wire_response *w = NULL;
    cdx_err e = app_client_attest(c, index, n, nl, &w);
    if (!e && der) {
        const Cipherdex__V1__AttestResponse *r = wire_response_msg(w)->attest;
        *der = malloc(r->evidence.len);
        memcpy(*der, r->evidence.data, r->evidence.len);
        *dl = r->evidence.len;
    }
    wire_response_free(w);
    return e;
}

static int wire_init(void)
{
    if (fx_stack_open(&S, "attest", NULL))
        return -1;
    auditor = fx_pki_issue(S.pki, &(fx_cert_opts){.uri = "spiffe://test/auditor"}, "auditor");
    reader = fx_pki_issue(S.pki, &(fx_cert_opts){.uri = "spiffe://test/reader"}, "reader");
    if (!auditor || !reader)
        return -1;
    return fx_stack_write_conf(&S, &(fx_stack_conf){.policy = POLICY}) || fx_stack_start(&S);
}

static int wire_clean(void)
{
    return fx_stack_close(&S);
}

#define STOOL(...) tool_on(S.tok, __VA_ARGS__, NULL)

static void test_wire(void)
{
    app_client *admin = client_as(S.admin), *aud = client_as(auditor), *rd = client_as(reader);
    CU_ASSERT_FATAL(admin && aud && rd);
    const app_index_spec spec = {
        .name = "att-1", .dimension = 4, .metric = "euclidean", .index_type = "ivfflat"};
    wire_response *w = NULL;
    CU_ASSERT_FATAL(app_client_create_index(admin, &spec, &w) == CDX_OK);
    wire_response_free(w);
    uint8_t n[32];
    RAND_bytes(n, sizeof(n));
    /* no attestation key yet: a clear refusal, and the daemon serves the rest */
    CU_ASSERT(attest(aud, "att-1", n, sizeof(n), NULL, NULL) == CDX_ERR_FAILED_PRECONDITION);
    CU_ASSERT(fx_detail_has("cipherdex-hsm attest-key create"));
    w = NULL;
    CU_ASSERT(app_client_describe_index(admin, "att-1", &w) == CDX_OK);
    wire_response_free(w);
    app_client_free(admin);
    app_client_free(aud);
    app_client_free(rd);

    /* the administrator creates the key with the daemon stopped, then restarts it */
    CU_ASSERT_FATAL(fx_daemon_stop(&S.d) == 0);
    int rc = STOOL("attest-key", "create");
    if (rc)
        fprintf(stderr, "attest-key create: %d: %s\n", rc, out);
    CU_ASSERT_FATAL(rc == 0);
    CU_ASSERT_FATAL(STOOL("attest-key", "show") == 0);
    char pem[4200];
    snprintf(pem, sizeof(pem), "%s/ak.pem", S.dir);
    CU_ASSERT_FATAL(write_file(pem, out, strlen(out)) == 0);
    CU_ASSERT_FATAL(fx_stack_start(&S) == 0);
    admin = client_as(S.admin);
    aud = client_as(auditor);
    rd = client_as(reader);
    CU_ASSERT_FATAL(admin && aud && rd);
    FILE *f = fopen(pem, "r");
    EVP_PKEY *pinned = f ? PEM_read_PUBKEY(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    CU_ASSERT_FATAL(pinned != NULL);

    uint8_t *der = NULL;
    size_t dl = 0;
    CU_ASSERT_FATAL(attest(aud, "att-1", n, sizeof(n), &der, &dl) == CDX_OK);
    CU_ASSERT(check(der, dl, pinned, n, sizeof(n), (int64_t)time(NULL), 300) == CDX_OK);
    pol_ev *ev = NULL;
    CU_ASSERT_FATAL(pol_ev_parse(der, dl, &ev) == CDX_OK);
    w = NULL;
    CU_ASSERT_FATAL(app_client_describe_index(admin, "att-1", &w) == CDX_OK);
    const Cipherdex__V1__IndexInfo *ii = wire_response_msg(w)->describe_index->index;
    CU_ASSERT(bytes_are(pol_ev_get(ev, POL_EV_KEY_ID), ii->id.data, ii->id.len));
    CU_ASSERT(bytes_are(pol_ev_get(ev, POL_EV_KCV), ii->kcv.data, ii->kcv.len));
    CU_ASSERT(text_is(pol_ev_get(ev, POL_EV_ORIGIN), "generated"));
    CU_ASSERT(text_is(pol_ev_get(ev, POL_EV_INDEX_NAME), "att-1"));
    wire_response_free(w);
    pol_ev_free(ev);
    free(der);
    /* appliance admins may attest; a reader may not; bad nonces and unknown indexes */
    CU_ASSERT(attest(admin, "att-1", n, sizeof(n), NULL, NULL) == CDX_OK);
    CU_ASSERT(attest(rd, "att-1", n, sizeof(n), NULL, NULL) == CDX_ERR_PERMISSION_DENIED);
    CU_ASSERT(fx_detail_has("attest"));
    CU_ASSERT(attest(aud, "att-1", n, 7, NULL, NULL) == CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT(attest(aud, "att-1", n, 0, NULL, NULL) == CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT(attest(aud, "att-none", n, sizeof(n), NULL, NULL) == CDX_ERR_NOT_FOUND);
    CU_ASSERT(attest(aud, "other", n, sizeof(n), NULL, NULL) == CDX_ERR_PERMISSION_DENIED);

    /* the client CLI writes the DER; cipherdex-hsm verifies it with the pinned key */
    char cli[4200], evf[4200], nh[65];
    snprintf(cli, sizeof(cli), "%s/appliance/cipherdex", getenv("CDX_BIN_DIR"));
    snprintf(evf, sizeof(evf), "%s/cli-ev.der", S.dir);
    cdx_hex_encode(n, sizeof(n), nh);
    const char *argv[] = {cli,      "--addr",      S.addr,    "--ca",       fx_pki_ca(S.pki, 0),
                          "--cert", auditor->cert, "--key",   auditor->key, "index",
                          "attest", "att-1",       "--nonce", nh,           "--out",
                          evf,      NULL};
    CU_ASSERT(fx_run_env(argv, quiet_env, NULL, out, OUT_CAP) == 0);
    CU_ASSERT(strstr(out, "signature ok") && strstr(out, "key.never_extractable"));
    CU_ASSERT(STOOL("attest", "verify", evf, "--public-key", pem, "--nonce", nh) == 0);

    /* the operator's CA certifies the key from the CSR; cipherdexd puts the certificate and the
     * CA's in intermediateCertificates ([keys] attest_certificates) */
    char csr[4200], ca_key[4200], ca_pem[4200], cert[4200], chain[4200], sect[4400];
    snprintf(csr, sizeof(csr), "%s/ak.csr", S.dir);
    snprintf(ca_key, sizeof(ca_key), "%s/ak-ca.key", S.dir);
    snprintf(ca_pem, sizeof(ca_pem), "%s/ak-ca.pem", S.dir);
    snprintf(cert, sizeof(cert), "%s/ak-cert.pem", S.dir);
    snprintf(chain, sizeof(chain), "%s/ak-chain.pem", S.dir);
    CU_ASSERT_FATAL(STOOL("attest-key", "csr", "--subject", "/CN=attest test") == 0);
    CU_ASSERT_FATAL(write_file(csr, out, strlen(out)) == 0);
    const char *mkca[] = {"openssl",
                          "req",
                          "-new",
                          "-x509",
                          "-newkey",
                          "ec",
                          "-pkeyopt",
                          "ec_paramgen_curve:P-256",
                          "-nodes",
                          "-keyout",
                          ca_key,
                          "-out",
                          ca_pem,
                          "-days",
                          "2",
                          "-subj",
                          "/CN=attest test CA",
                          NULL};
    CU_ASSERT_FATAL(fx_run(mkca, NULL, out, OUT_CAP) == 0);
    const char *sign[] = {"openssl", "x509",    "-req", "-in",         csr, "-CA",
                          ca_pem,    "-CAkey",  ca_key, "-set_serial", "7", "-days",
                          "2",       "-sha256", "-out", cert,          NULL};
    CU_ASSERT_FATAL(fx_run(sign, NULL, out, OUT_CAP) == 0);
    const char *cat[] = {"sh", "-c", "cat \"$0\" \"$1\" > \"$2\"", cert, ca_pem, chain, NULL};
    CU_ASSERT_FATAL(fx_run(cat, NULL, out, OUT_CAP) == 0);
    snprintf(sect, sizeof(sect), "[keys]\nattest_certificates = %s\n", chain);
    CU_ASSERT_FATAL(fx_daemon_stop(&S.d) == 0);
    CU_ASSERT_FATAL(fx_stack_write_conf(&S, &(fx_stack_conf){.policy = POLICY, .sections = sect}) ==
                    0);
    CU_ASSERT_FATAL(fx_stack_start(&S) == 0);
    app_client *aud2 = client_as(auditor);
    CU_ASSERT_FATAL(aud2 != NULL);
    der = NULL;
    CU_ASSERT_FATAL(attest(aud2, "att-1", n, sizeof(n), &der, &dl) == CDX_OK);
    CU_ASSERT(check(der, dl, pinned, n, sizeof(n), (int64_t)time(NULL), 300) == CDX_OK);
    CU_ASSERT_FATAL(pol_ev_parse(der, dl, &ev) == CDX_OK);
    const uint8_t *certs;
    size_t certs_len;
    pol_ev_certs(ev, &certs, &certs_len);
    const unsigned char *cp = certs;
    X509 *leaf = certs_len ? d2i_X509(NULL, &cp, (long)certs_len) : NULL;
    X509 *ca = leaf ? d2i_X509(NULL, &cp, (long)(certs_len - (size_t)(cp - certs))) : NULL;
    CU_ASSERT(leaf && ca && cp == certs + certs_len);
    CU_ASSERT(leaf && EVP_PKEY_eq(X509_get0_pubkey(leaf), pinned) == 1);
    CU_ASSERT(leaf && ca && X509_verify(leaf, X509_get0_pubkey(ca)) == 1);
    snprintf(evf, sizeof(evf), "%s/chain-ev.der", S.dir);
    CU_ASSERT_FATAL(write_file(evf, der, dl) == 0);
    CU_ASSERT(STOOL("attest", "verify", evf, "--public-key", pem, "--nonce", nh) == 0);
    CU_ASSERT(strstr(out, "certificates") && strstr(out, " 2\n"));
    X509_free(leaf);
    X509_free(ca);
    pol_ev_free(ev);
    free(der);
    app_client_free(aud2);
    EVP_PKEY_free(pinned);
    app_client_free(admin);
    app_client_free(aud);
    app_client_free(rd);
}

static const fx_test wire_tests[] = {
    {"attest on the wire", test_wire},
};

int main(void)
{
    const fx_suite suites[] = {
        {"evidence", ev_init, ev_clean, ev_tests, FX_LEN(ev_tests), NULL, NULL},
        {"hsmtool", tool_init, tool_clean, tool_tests, FX_LEN(tool_tests), NULL, NULL},
        {"wire", wire_init, wire_clean, wire_tests, FX_LEN(wire_tests), NULL, NULL},
    };
    int rc = fx_cunit_run(suites, FX_LEN(suites));
    free(out);
    return rc;
}
