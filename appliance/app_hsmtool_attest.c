/*
 * cipherdex-hsm attest-key create|show|csr and attest verify
 * (docs/ATTESTATION.md, docs/ADMIN.md): the token's attestation key pair,
 * a PKCS#10 request signed on the token so an operator's CA can certify it,
 * and the offline check of a statement (no token needed).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "app_hsmtool.h"
#include "cdx_hex.h"
#include "cdx_limits.h"
#include "hsm_admin.h"
#include "hsm_attest.h"
#include "pol_evidence.h"

static cdx_err key_id_hex(EVP_PKEY *pk, char out[65])
{
    uint8_t kid[32];
    cdx_err err = pol_ev_key_id(pk, kid);
    if (!err)
        cdx_hex_encode(kid, sizeof(kid), out);
    return err;
}

cdx_err app_hsmtool_attest_key_create(ctx *x)
{
    cdx_err err;
    bool replaced = false;
    EVP_PKEY *pk = NULL;
    char kid[65];
    if ((err = app_hsmtool_open_custody(x)) ||
        (err = hsm_attest_key_create(x->c, (x->given & BIT(O_REPLACE)) != 0, &replaced)) ||
        (err = hsm_attest_key_public(x->c, &pk)) || (err = key_id_hex(pk, kid)))
        goto out;
    app_out_field f[] = {APP_FSTR("status", replaced ? "replaced" : "created"),
                         APP_FSTR("label", CDX_ATTEST_LABEL), APP_FSTR("key_id", kid)};
    app_hsmtool_record(x, f, sizeof(f) / sizeof(f[0]));
out:
    EVP_PKEY_free(pk);
    return err;
}

cdx_err app_hsmtool_attest_key_show(ctx *x)
{
    cdx_err err;
    EVP_PKEY *pk = NULL;
    BIO *b = NULL;
    char kid[65];
    if ((err = app_hsmtool_open_custody(x)) || (err = hsm_attest_key_public(x->c, &pk)) ||
        (err = key_id_hex(pk, kid)))
        goto out;
    b = BIO_new(BIO_s_mem());
    char *pem = NULL;
    long n;
    if (!b || PEM_write_bio_PUBKEY(b, pk) != 1 || (n = BIO_get_mem_data(b, &pem)) <= 0) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "cannot write the public key as PEM");
        goto out;
    }
    if (x->json) {
        char *s = strndup(pem, (size_t)n);
        if (!s) {
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto out;
        }
        app_out_field f[] = {APP_FSTR("label", CDX_ATTEST_LABEL), APP_FSTR("key_id", kid),
                             APP_FSTR("public_key_pem", s)};
        app_hsmtool_record(x, f, sizeof(f) / sizeof(f[0]));
        free(s);
    } else { /* the PEM alone, so `attest-key show > ak.pem` gives a usable file */
        fwrite(pem, 1, (size_t)n, stdout);
    }
out:
    BIO_free(b);
    EVP_PKEY_free(pk);
    return err;
}

/* "/CN=a/O=b" as an X509_NAME. Escapes are not supported: a value cannot hold '/'. */
static cdx_err subject_parse(ctx *x, const char *s, X509_NAME **out)
{
    *out = NULL;
    if (!s || s[0] != '/' || !s[1])
        return app_hsmtool_usage(x, "--subject needs the form /CN=name[/O=org...]");
    X509_NAME *n = X509_NAME_new();
    char *copy = strdup(s + 1), *save = NULL;
    cdx_err err = CDX_OK;
    if (!n || !copy) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (char *part = strtok_r(copy, "/", &save); part; part = strtok_r(NULL, "/", &save)) {
        char *eq = strchr(part, '=');
        if (!eq || eq == part || !eq[1]) {
            err = app_hsmtool_usage(x, "--subject: `%s` is not KEY=VALUE", part);
            goto out;
        }
        *eq = '\0';
        if (!X509_NAME_add_entry_by_txt(n, part, MBSTRING_UTF8, (const unsigned char *)eq + 1, -1,
                                        -1, 0)) {
            err =
                app_hsmtool_usage(x, "--subject: unknown attribute `%s` (CN, O, OU, C, ...)", part);
            goto out;
        }
    }
    if (X509_NAME_entry_count(n) == 0)
        err = app_hsmtool_usage(x, "--subject names nothing");
out:
    free(copy);
    if (err)
        X509_NAME_free(n);
    else
        *out = n;
    return err;
}

/*
 * The PKCS#10 request: subject, the attestation public key, ecdsa-with-SHA256, and a
 * signature made on the token over SHA-256 of the CertificationRequestInfo DER.
 */
cdx_err app_hsmtool_attest_key_csr(ctx *x)
{
    cdx_err err;
    EVP_PKEY *pk = NULL;
    X509_NAME *name = NULL;
    X509_REQ *req = NULL;
    X509_ALGOR *alg = NULL;
    ASN1_BIT_STRING *bits = NULL;
    unsigned char *tbs = NULL;
    uint8_t *sig = NULL, digest[32], rs[64];
    size_t sig_len = 0;
    if ((err = subject_parse(x, x->val[O_SUBJECT], &name)) || (err = app_hsmtool_open_custody(x)) ||
        (err = hsm_attest_key_public(x->c, &pk)))
        goto out;
    req = X509_REQ_new();
    alg = X509_ALGOR_new();
    bits = ASN1_BIT_STRING_new();
    if (!req || !alg || !bits || !X509_REQ_set_version(req, 0) ||
        !X509_REQ_set_subject_name(req, name) || !X509_REQ_set_pubkey(req, pk) ||
        !X509_ALGOR_set0(alg, OBJ_nid2obj(NID_ecdsa_with_SHA256), V_ASN1_UNDEF, NULL) ||
        !X509_REQ_set1_signature_algo(req, alg)) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "cannot build the certificate request");
        goto out;
    }
    int n = i2d_re_X509_REQ_tbs(req, &tbs);
    if (n <= 0) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "cannot encode the certificate request");
        goto out;
    }
    SHA256(tbs, (size_t)n, digest);
    if ((err = hsm_attest_sign(x->c, digest, rs)) || (err = pol_ev_sig_der(rs, &sig, &sig_len)))
        goto out;
    if (!ASN1_BIT_STRING_set(bits, sig, (int)sig_len)) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    /* A signature is a whole number of bytes: no unused bits. */
    bits->flags &= ~(ASN1_STRING_FLAG_BITS_LEFT | 0x07);
    bits->flags |= ASN1_STRING_FLAG_BITS_LEFT;
    X509_REQ_set0_signature(req, bits);
    bits = NULL;
    if (X509_REQ_verify(req, pk) != 1) {
        err = cdx_fail(CDX_ERR_KEY_ATTRIBUTES,
                       "the request signed on the token does not verify with its public key");
        goto out;
    }
    if (PEM_write_X509_REQ(stdout, req) != 1)
        err = cdx_fail(CDX_ERR_INTERNAL, "cannot write the request");
out:
    OPENSSL_free(tbs);
    free(sig);
    ASN1_BIT_STRING_free(bits);
    X509_ALGOR_free(alg);
    X509_REQ_free(req);
    X509_NAME_free(name);
    EVP_PKEY_free(pk);
    return err;
}

static cdx_err read_file(const char *path, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return cdx_fail(CDX_ERR_NOT_FOUND, "%s: cannot open", path);
    uint8_t *buf = malloc(CDX_EVIDENCE_MAX + 1);
    size_t n = buf ? fread(buf, 1, CDX_EVIDENCE_MAX + 1, f) : 0;
    fclose(f);
    if (!buf)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    if (n > CDX_EVIDENCE_MAX) {
        free(buf);
        return cdx_fail(CDX_ERR_INTEGRITY, "%s: more than %d bytes, not a statement", path,
                        CDX_EVIDENCE_MAX);
    }
    *out = buf;
    *len = n;
    return CDX_OK;
}

/* attest verify FILE --public-key PEM --nonce HEX [--max-age SECONDS]: no token needed. */
cdx_err app_hsmtool_attest_verify(ctx *x)
{
    uint8_t nonce[CDX_ATTEST_NONCE_MAX], *der = NULL;
    size_t der_len = 0, nl = strlen(x->val[O_NONCE]);
    long long max_age = CDX_ATTEST_MAX_AGE_S;
    EVP_PKEY *pk = NULL;
    pol_ev *ev = NULL;
    app_out_field *f = NULL;
    char(*vals)[512] = NULL;
    char(*keys)[96] = NULL;
    cdx_err err;
    if (nl % 2 || nl / 2 < CDX_ATTEST_NONCE_MIN || nl / 2 > CDX_ATTEST_NONCE_MAX ||
        cdx_hex_decode(x->val[O_NONCE], nonce, nl / 2))
        return app_hsmtool_usage(x, "--nonce needs %d to %d bytes in hex", CDX_ATTEST_NONCE_MIN,
                                 CDX_ATTEST_NONCE_MAX);
    if (x->val[O_MAX_AGE]) {
        char *end = NULL;
        max_age = strtoll(x->val[O_MAX_AGE], &end, 10);
        if (!end || *end || max_age < 0 || max_age > 100LL * 365 * 86400)
            return app_hsmtool_usage(x, "--max-age needs seconds (0: not checked)");
    }
    FILE *pf = fopen(x->val[O_PUBLIC_KEY], "r");
    if (!pf)
        return cdx_fail(CDX_ERR_NOT_FOUND, "%s: cannot open the public key", x->val[O_PUBLIC_KEY]);
    pk = PEM_read_PUBKEY(pf, NULL, NULL, NULL);
    fclose(pf);
    if (!pk)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "%s: not a PEM public key", x->val[O_PUBLIC_KEY]);
    if ((err = read_file(x->arg, &der, &der_len)) || (err = pol_ev_parse(der, der_len, &ev)) ||
        (err = pol_ev_verify(ev, pk, nonce, nl / 2, (int64_t)time(NULL), max_age))) {
        char why[400];
        snprintf(why, sizeof(why), "%s", cdx_err_detail());
        err = cdx_fail(err, "%s: %s", x->arg, why);
        goto out;
    }
    size_t nc = pol_ev_count(ev);
    f = calloc(nc + 3, sizeof(*f));
    vals = calloc(nc, sizeof(*vals));
    keys = calloc(nc, sizeof(*keys));
    if (!f || !vals || !keys) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    /* intermediateCertificates: outside the signature; counted, not trusted (the verifier checks
     * them against its own roots: docs/ATTESTATION.md) */
    const uint8_t *cd;
    size_t cl, ncerts = 0;
    pol_ev_certs(ev, &cd, &cl);
    for (const unsigned char *cp = cd; cl && cp < cd + cl; ncerts++) {
        X509 *c = d2i_X509(NULL, &cp, (long)(cl - (size_t)(cp - cd)));
        if (!c) {
            err = cdx_fail(CDX_ERR_INTEGRITY,
                           "%s: intermediateCertificates holds a non-certificate", x->arg);
            goto out;
        }
        X509_free(c);
    }
    f[0] = APP_FSTR("status", "ok");
    f[1] = APP_FSTR("file", x->arg);
    f[2] = APP_FNUM("certificates", ncerts);
    unsigned nmech = 0;
    for (size_t i = 0; i < nc; i++) {
        const pol_ev_value *v = pol_ev_at(ev, i);
        int l = snprintf(keys[i], sizeof(keys[i]), "%s.%s",
                         pol_ev_entity_name(pol_ev_claim_entity(v->claim)),
                         pol_ev_claim_name(v->claim));
        if (v->claim == POL_EV_ALLOWED_MECH && l > 0) /* repeats: one key each */
            snprintf(keys[i] + l, sizeof(keys[i]) - (size_t)l, ".%u", nmech++);
        pol_ev_value_text(v, vals[i], sizeof(vals[i]));
        f[i + 3] = APP_FSTR(keys[i], vals[i]);
    }
    app_hsmtool_record(x, f, nc + 3);
out:
    free(f);
    free(vals);
    free(keys);
    free(der);
    pol_ev_free(ev);
    EVP_PKEY_free(pk);
    return err;
}
