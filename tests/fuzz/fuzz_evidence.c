/*
 * fuzz_evidence.c - fuzz target for attestation statements
 * (policy/pol_evidence): the DER a verifier is handed, every byte hostile.
 *
 * The input is parsed (pol_ev_parse). A statement that parses must: parse
 * again the same; print every claim (pol_ev_value_text); rebuild, claim by
 * claim through the builder, into the very same TBS bytes (one statement,
 * one encoding); and verify (pol_ev_verify with a fixed test key and the
 * statement's own nonce) to OK, INTEGRITY or STALE, nothing else.
 *
 * Built two ways (see tests/fuzz/fuzz_main.h): by CMake with fuzz_main.c
 * (`fuzz_evidence [--seeds DIR] FILE|DIR...`), or for libFuzzer with
 * -DCDX_LIBFUZZER -fsanitize=fuzzer,address,undefined (./run fuzz).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "cdx_err.h"
#include "pol_evidence.h"

#ifndef CDX_LIBFUZZER
#include "fuzz_main.h"
#else
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
#endif

/* A public test key made for this target (not a secret: it signs only the seeds). */
static const char TEST_KEY[] = "-----BEGIN PRIVATE KEY-----\n"
                               "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgKMAFtrtpS0WKCV3A\n"
                               "aiYCQbZuJxnmLxAm2S0z+bWKPvWhRANCAAQDUeCjIlsekee55RkmfVqDzodg+LP/\n"
                               "rFbmKTOFNYmFkAODkk8BfBWqZjU/zzn2v29pwnNjqOWKPLS2FnKnWnyz\n"
                               "-----END PRIVATE KEY-----\n";

static EVP_PKEY *test_key(void)
{
    static EVP_PKEY *k;
    if (!k) {
        BIO *b = BIO_new_mem_buf(TEST_KEY, -1);
        k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
        BIO_free(b);
        if (!k)
            abort();
    }
    return k;
}

/* Rebuild the parsed claims through the builder: the TBS must come out byte for byte. */
static void rebuild(const pol_ev *ev)
{
    pol_ev_builder *b = NULL;
    if (pol_ev_builder_new(&b))
        return;
    for (size_t i = 0; i < pol_ev_count(ev); i++) {
        const pol_ev_value *v = pol_ev_at(ev, i);
        cdx_err err = CDX_OK;
        if (!v->present)
            err = pol_ev_add_absent(b, v->claim);
        else if (v->type == POL_EV_T_BYTES)
            err = pol_ev_add_bytes(b, v->claim, v->data, v->len);
        else if (v->type == POL_EV_T_UTF8) {
            char *s = malloc(v->len + 1);
            if (!s)
                goto out;
            memcpy(s, v->data, v->len);
            s[v->len] = '\0';
            err = pol_ev_add_utf8(b, v->claim, s);
            free(s);
        } else if (v->type == POL_EV_T_BOOL)
            err = pol_ev_add_bool(b, v->claim, v->b);
        else if (v->type == POL_EV_T_INT)
            err = pol_ev_add_int(b, v->claim, v->i);
        else if (v->type == POL_EV_T_TIME)
            err = pol_ev_add_time(b, v->claim, v->i);
        else
            abort(); /* no claim of the table has another type */
        if (err == CDX_ERR_RESOURCE_EXHAUSTED)
            goto out;
        if (err)
            abort(); /* what the parser accepted, the builder must take */
    }
    uint8_t *tbs = NULL;
    size_t len = 0;
    const uint8_t *want;
    size_t want_len;
    pol_ev_tbs(ev, &want, &want_len);
    cdx_err err = pol_ev_builder_tbs(b, &tbs, &len);
    if (err == CDX_OK && (len != want_len || memcmp(tbs, want, len)))
        abort();
    if (err && err != CDX_ERR_RESOURCE_EXHAUSTED)
        abort();
    free(tbs);
out:
    pol_ev_builder_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pol_ev *ev = NULL, *again = NULL;
    if (pol_ev_parse(data, size, &ev) != CDX_OK)
        return 0;
    if (pol_ev_parse(data, size, &again) != CDX_OK || pol_ev_count(again) != pol_ev_count(ev))
        abort();
    char text[512];
    for (size_t i = 0; i < pol_ev_count(ev); i++)
        pol_ev_value_text(pol_ev_at(ev, i), text, sizeof(text));
    rebuild(ev);
    const pol_ev_value *n = pol_ev_get(ev, POL_EV_NONCE);
    const pol_ev_value *t = pol_ev_get(ev, POL_EV_TIMESTAMP);
    if (!n || !t)
        abort(); /* required claims */
    cdx_err err = pol_ev_verify(ev, test_key(), n->present ? n->data : NULL,
                                n->present ? n->len : 0, t->present ? t->i : 0, 300);
    if (err != CDX_OK && err != CDX_ERR_INTEGRITY && err != CDX_ERR_STALE)
        abort();
    pol_ev_free(again);
    pol_ev_free(ev);
    return 0;
}

#ifndef CDX_LIBFUZZER
/* A statement with every claim, signed with the test key; certificates optional. */
static int statement(uint8_t **out, size_t *len, bool certs)
{
    pol_ev_builder *b = NULL;
    uint8_t kid[32], nonce[16] = {1, 2, 3}, *tbs = NULL, *der = NULL;
    unsigned char sig[80];
    size_t tl = 0, sl = sizeof(sig);
    int rc = -1;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || pol_ev_builder_new(&b) || pol_ev_key_id(test_key(), kid) ||
        pol_ev_add_bytes(b, POL_EV_NONCE, nonce, sizeof(nonce)) ||
        pol_ev_add_time(b, POL_EV_TIMESTAMP, 1796000000) ||
        pol_ev_add_bytes(b, POL_EV_AK_ID, kid, 32))
        goto out;
    for (unsigned c = 0; c < POL_EV_NCLAIMS; c++) {
        cdx_err err = CDX_OK;
        if (pol_ev_claim_entity((pol_ev_claim)c) == POL_EV_ENT_TRANSACTION)
            continue;
        switch (pol_ev_claim_type((pol_ev_claim)c)) {
        case POL_EV_T_UTF8:
            err = pol_ev_add_utf8(b, (pol_ev_claim)c, "text");
            break;
        case POL_EV_T_BOOL:
            err = c % 3 ? pol_ev_add_bool(b, (pol_ev_claim)c, c % 2)
                        : pol_ev_add_absent(b, (pol_ev_claim)c);
            break;
        case POL_EV_T_INT:
            err = pol_ev_add_int(b, (pol_ev_claim)c, 0x251);
            if (!err && c == POL_EV_ALLOWED_MECH)
                err = pol_ev_add_int(b, (pol_ev_claim)c, -129);
            break;
        default:
            err = pol_ev_add_bytes(b, (pol_ev_claim)c, "\x00\x01\x02\x03\x04\x05\x06\x07", 8);
        }
        if (err)
            goto out;
    }
    if (pol_ev_builder_tbs(b, &tbs, &tl) ||
        EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, test_key()) != 1 ||
        EVP_DigestSign(md, sig, &sl, tbs, tl) != 1)
        goto out;
    static const uint8_t cert[] = {0x30, 0x03, 0x02, 0x01, 0x05};
    if (pol_ev_assemble(tbs, tl, kid, sig, sl, certs ? cert : NULL, certs ? sizeof(cert) : 0, &der,
                        len))
        goto out;
    *out = der;
    rc = 0;
out:
    EVP_MD_CTX_free(md);
    free(tbs);
    pol_ev_builder_free(b);
    return rc;
}

int fuzz_write_seeds(const char *dir)
{
    uint8_t *a = NULL, *c = NULL;
    size_t al = 0, cl = 0;
    int rc = -1;
    if (statement(&a, &al, false) || statement(&c, &cl, true))
        goto out;
    /* the seed must itself be a good statement */
    pol_ev *ev = NULL;
    if (pol_ev_parse(a, al, &ev) != CDX_OK)
        goto out;
    pol_ev_free(ev);
    if (fuzz_seed(dir, "statement", a, al) || fuzz_seed(dir, "statement_certs", c, cl) ||
        fuzz_seed(dir, "truncated", a, al / 2) || fuzz_seed(dir, "empty", "", 0))
        goto out;
    rc = 0;
out:
    free(a);
    free(c);
    return rc;
}
#endif
