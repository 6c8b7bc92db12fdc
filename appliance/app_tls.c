/*
 * app_tls.c - the daemon's server-side TLS context (mutual TLS).
 *
 * Files are parsed here rather than with SSL_CTX_use_*_file so that every
 * refusal can name the file and what is wrong with it; OpenSSL's own error
 * strings go to the log.
 */
#include "app_tls.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "cdx_log.h"

/* Longest chain we verify: leaf, a few intermediates, root. */
#define APP_TLS_VERIFY_DEPTH 5

/* TLS 1.2 (allow_tls12 only): ECDHE key exchange with AEAD ciphers, nothing else. */
static const char TLS12_CIPHERS[] = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                                    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
                                    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256";
static const char TLS13_SUITES[] =
    "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256";
/* Elliptic-curve groups only: TLS 1.3 would otherwise also offer finite-field DH. */
static const char GROUPS[] = "X25519:P-256:P-384";
static const unsigned char SID_CTX[] = "cipherdexd";

struct app_tls {
    pthread_mutex_t mu;
    SSL_CTX *ctx; /* current context; each SSL holds its own reference */
    char cert[APP_PATH_MAX], key[APP_PATH_MAX], ca[APP_PATH_MAX], crl[APP_PATH_MAX];
    bool tls12;
};

/* ---- error mapping ---------------------------------------------------- */

/*
 * Move OpenSSL's error queue to the log (raw strings, for whoever debugs)
 * and return the first reason as a short phrase for the detail.
 */
static const char *ossl_drain(const char *op)
{
    const char *first = NULL;
    unsigned long e;
    char buf[256];

    while ((e = ERR_get_error()) != 0) {
        ERR_error_string_n(e, buf, sizeof(buf));
        cdx_log(CDX_LOG_WARN, "tls_openssl_error", "op=%s err=\"%s\"", op, buf);
        if (!first)
            first = ERR_reason_error_string(e);
    }
    return first ? first : "no reason given";
}

static cdx_err ossl_internal(const char *op)
{
    const char *why = ossl_drain(op);
    return cdx_fail(CDX_ERR_INTERNAL, "TLS setup: %s failed: %s", op, why);
}

/* CDX_ERR_CONFIG with the detail "key path: what is wrong". */
__attribute__((format(printf, 3, 4))) static cdx_err conf_fail(const char *key, const char *path,
                                                               const char *fmt, ...)
{
    char msg[768];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return cdx_fail(CDX_ERR_CONFIG, "%s %s: %s", key, path, msg);
}

static void time_str(const ASN1_TIME *t, char *buf, size_t cap)
{
    BIO *b = BIO_new(BIO_s_mem());
    int n = 0;

    buf[0] = '\0';
    if (b && t && ASN1_TIME_print(b, t) == 1)
        n = BIO_read(b, buf, (int)cap - 1);
    buf[n > 0 ? n : 0] = '\0';
    BIO_free(b);
    ERR_clear_error();
}

static void subject_str(X509 *x, char *buf, size_t cap)
{
    if (!X509_NAME_oneline(X509_get_subject_name(x), buf, (int)cap))
        snprintf(buf, cap, "?");
}

/* Never prompt for a pass phrase (a daemon has no terminal): encrypted keys fail. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    return -1;
}

/* ---- reading files ---------------------------------------------------- */

static cdx_err open_pem(const char *key, const char *path, BIO **out, mode_t *mode)
{
    struct stat st;
    FILE *f = fopen(path, "re");

    if (!f)
        return conf_fail(key, path, "cannot open: %s", strerror(errno));
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return conf_fail(key, path, "not a regular file");
    }
    if (mode)
        *mode = st.st_mode;
    *out = BIO_new_fp(f, BIO_CLOSE);
    if (!*out) {
        fclose(f);
        return ossl_internal("BIO_new_fp");
    }
    return CDX_OK;
}

/*
 * Every certificate (certs != NULL) or CRL (crls != NULL) of a PEM file, in
 * file order. An empty result or a damaged block is an error.
 */
static cdx_err read_pem(const char *key, const char *path, STACK_OF(X509) **certs,
                        STACK_OF(X509_CRL) **crls)
{
    BIO *b = NULL;
    STACK_OF(X509_INFO) *infos = NULL;
    cdx_err e = open_pem(key, path, &b, NULL);

    if (e)
        return e;
    if (certs && !(*certs = sk_X509_new_null())) {
        e = ossl_internal("sk_X509_new_null");
        goto out;
    }
    if (crls && !(*crls = sk_X509_CRL_new_null())) {
        e = ossl_internal("sk_X509_CRL_new_null");
        goto out;
    }
    infos = PEM_X509_INFO_read_bio(b, NULL, no_passphrase, NULL);
    if (!infos) {
        const char *why = ossl_drain(key);
        e = conf_fail(key, path, "not readable as PEM: %s", why);
        goto out;
    }
    for (int i = 0; i < sk_X509_INFO_num(infos); i++) {
        X509_INFO *in = sk_X509_INFO_value(infos, i);
        if (certs && in->x509) {
            if (!sk_X509_push(*certs, in->x509)) {
                e = ossl_internal("sk_X509_push");
                goto out;
            }
            in->x509 = NULL; /* now owned by the stack */
        }
        if (crls && in->crl) {
            if (!sk_X509_CRL_push(*crls, in->crl)) {
                e = ossl_internal("sk_X509_CRL_push");
                goto out;
            }
            in->crl = NULL;
        }
    }
    if (certs && sk_X509_num(*certs) == 0)
        e = conf_fail(key, path, "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file");
    else if (crls && sk_X509_CRL_num(*crls) == 0)
        e = conf_fail(key, path, "no PEM CRL (-----BEGIN X509 CRL-----) in the file");
out:
    sk_X509_INFO_pop_free(infos, X509_INFO_free);
    if (e) {
        if (certs) {
            sk_X509_pop_free(*certs, X509_free);
            *certs = NULL;
        }
        if (crls) {
            sk_X509_CRL_pop_free(*crls, X509_CRL_free);
            *crls = NULL;
        }
    }
    BIO_free(b);
    return e;
}

/* A certificate outside its validity period would fail every handshake: say so now. */
static cdx_err check_validity(const char *key, const char *path, X509 *x, const char *what)
{
    char when[64];

    if (X509_cmp_current_time(X509_get0_notAfter(x)) <= 0) {
        time_str(X509_get0_notAfter(x), when, sizeof(when));
        return conf_fail(key, path, "%s expired on %s", what, when);
    }
    if (X509_cmp_current_time(X509_get0_notBefore(x)) >= 0) {
        time_str(X509_get0_notBefore(x), when, sizeof(when));
        return conf_fail(key, path, "%s is not valid before %s (check the clock)", what, when);
    }
    return CDX_OK;
}

/* ---- the server certificate and key ------------------------------------ */

static cdx_err load_server(const app_tls *t, SSL_CTX *ctx)
{
    STACK_OF(X509) *chain = NULL;
    EVP_PKEY *pkey = NULL;
    BIO *b = NULL;
    mode_t mode = 0;
    cdx_err e;

    if ((e = read_pem("tls_cert", t->cert, &chain, NULL)))
        goto out;
    X509 *leaf = sk_X509_value(chain, 0);
    if ((e = check_validity("tls_cert", t->cert, leaf, "the server certificate")))
        goto out;
    if (X509_check_purpose(leaf, X509_PURPOSE_SSL_SERVER, 0) != 1) {
        ossl_drain("X509_check_purpose");
        e = conf_fail("tls_cert", t->cert,
                      "the first certificate may not be used by a TLS server (its key usage or "
                      "extended key usage excludes serverAuth)");
        goto out;
    }
    if (SSL_CTX_use_certificate(ctx, leaf) != 1) {
        const char *why = ossl_drain("SSL_CTX_use_certificate");
        e = conf_fail("tls_cert", t->cert, "OpenSSL refused the certificate: %s", why);
        goto out;
    }
    for (int i = 1; i < sk_X509_num(chain); i++) {
        if (SSL_CTX_add1_chain_cert(ctx, sk_X509_value(chain, i)) != 1) {
            const char *why = ossl_drain("SSL_CTX_add1_chain_cert");
            e = conf_fail("tls_cert", t->cert, "OpenSSL refused chain certificate %d: %s", i + 1,
                          why);
            goto out;
        }
    }

    if ((e = open_pem("tls_key", t->key, &b, &mode)))
        goto out;
    /* Others: refused. Group: a warning (root:<daemon group> 0640 is a common layout). */
    if (mode & 007) {
        e = conf_fail("tls_key", t->key,
                      "mode %04o gives others access to the private key; chmod 600",
                      (unsigned)(mode & 07777));
        goto out;
    }
    if (mode & 070)
        cdx_log(CDX_LOG_WARN, "tls_key_permissions",
                "path=\"%s\" mode=%04o msg=\"readable by group; chmod 600 unless intended\"",
                t->key, (unsigned)(mode & 07777));
    pkey = PEM_read_bio_PrivateKey(b, NULL, no_passphrase, NULL);
    if (!pkey) {
        const char *why = ossl_drain("PEM_read_bio_PrivateKey");
        e = conf_fail("tls_key", t->key,
                      "not an unencrypted PEM private key (%s); encrypted keys are not supported",
                      why);
        goto out;
    }
    if (X509_check_private_key(leaf, pkey) != 1) {
        ossl_drain("X509_check_private_key");
        e = conf_fail("tls_key", t->key, "does not match the certificate in tls_cert %s", t->cert);
        goto out;
    }
    if (SSL_CTX_use_PrivateKey(ctx, pkey) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        const char *why = ossl_drain("SSL_CTX_use_PrivateKey");
        e = conf_fail("tls_key", t->key, "OpenSSL refused the key: %s", why);
        goto out;
    }
out:
    EVP_PKEY_free(pkey);
    BIO_free(b);
    sk_X509_pop_free(chain, X509_free);
    return e;
}

/* ---- client authentication: CA, CRL, verification ---------------------- */

static cdx_err load_crls(const app_tls *t, STACK_OF(X509) *cas, X509_STORE *store)
{
    STACK_OF(X509_CRL) *crls = NULL;
    char when[64], name[256];
    cdx_err e;

    if ((e = read_pem("crl", t->crl, NULL, &crls)))
        return e;
    for (int i = 0; i < sk_X509_CRL_num(crls); i++) {
        X509_CRL *crl = sk_X509_CRL_value(crls, i);
        bool signed_by_ca = false;

        for (int j = 0; j < sk_X509_num(cas) && !signed_by_ca; j++) {
            X509 *ca = sk_X509_value(cas, j);
            signed_by_ca =
                X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(ca)) == 0 &&
                X509_CRL_verify(crl, X509_get0_pubkey(ca)) == 1;
        }
        ERR_clear_error();
        if (!signed_by_ca) {
            if (!X509_NAME_oneline(X509_CRL_get_issuer(crl), name, sizeof(name)))
                snprintf(name, sizeof(name), "?");
            e = conf_fail("crl", t->crl,
                          "CRL %d (issuer %s) is not signed by any CA in client_ca %s", i + 1, name,
                          t->ca);
            goto out;
        }
        if (X509_cmp_current_time(X509_CRL_get0_lastUpdate(crl)) >= 0) {
            time_str(X509_CRL_get0_lastUpdate(crl), when, sizeof(when));
            e = conf_fail("crl", t->crl, "CRL %d is not valid before %s (check the clock)", i + 1,
                          when);
            goto out;
        }
        /*
         * An expired CRL is refused here so the operator learns at start or
         * SIGHUP; one that expires while loaded makes OpenSSL refuse every
         * client (fail closed) until a fresh one is reloaded.
         */
        const ASN1_TIME *next = X509_CRL_get0_nextUpdate(crl);
        if (next && X509_cmp_current_time(next) <= 0) {
            time_str(next, when, sizeof(when));
            e = conf_fail("crl", t->crl,
                          "CRL %d has expired (nextUpdate %s): install a fresh CRL from the CA",
                          i + 1, when);
            goto out;
        }
        if (X509_STORE_add_crl(store, crl) != 1) {
            e = ossl_internal("X509_STORE_add_crl");
            goto out;
        }
    }
    /* Clients of a CA without a CRL fail with "unable to get CRL": warn now. */
    for (int j = 0; j < sk_X509_num(cas); j++) {
        X509 *ca = sk_X509_value(cas, j);
        bool have = false;
        for (int i = 0; i < sk_X509_CRL_num(crls) && !have; i++)
            have = X509_NAME_cmp(X509_CRL_get_issuer(sk_X509_CRL_value(crls, i)),
                                 X509_get_subject_name(ca)) == 0;
        if (!have) {
            subject_str(ca, name, sizeof(name));
            cdx_log(CDX_LOG_WARN, "tls_crl_missing",
                    "path=\"%s\" ca=\"%s\" msg=\"no CRL for this CA: its clients are refused\"",
                    t->crl, name);
        }
    }
out:
    sk_X509_CRL_pop_free(crls, X509_CRL_free);
    return e;
}

/*
 * Runs for every certificate of the client's chain. OpenSSL's own checks
 * (chain to client_ca, validity, purpose ssl_client, CRL) come first; the
 * leaf additionally needs an EKU extension that lists clientAuth (OpenSSL
 * accepts a certificate without EKU for any purpose) and a usable principal.
 */
static int verify_cb(int ok, X509_STORE_CTX *sc)
{
    int depth = X509_STORE_CTX_get_error_depth(sc);
    X509 *x = X509_STORE_CTX_get_current_cert(sc);
    char principal[CDX_PRINCIPAL_MAX + 1];

    if (!ok) {
        int err = X509_STORE_CTX_get_error(sc);
        if (err == X509_V_ERR_CRL_HAS_EXPIRED)
            cdx_log(CDX_LOG_ERROR, "tls_crl_expired",
                    "msg=\"the CRL is past its nextUpdate: every client is refused until a fresh "
                    "CRL is installed and reloaded (SIGHUP)\"");
        else
            cdx_log(CDX_LOG_INFO, "tls_client_refused", "depth=%d reason=\"%s\"", depth,
                    X509_verify_cert_error_string(err));
        return 0;
    }
    if (depth != 0 || !x)
        return 1;
    if (!(X509_get_extension_flags(x) & EXFLAG_XKUSAGE) ||
        !(X509_get_extended_key_usage(x) & XKU_SSL_CLIENT)) {
        X509_STORE_CTX_set_error(sc, X509_V_ERR_INVALID_PURPOSE);
        cdx_log(CDX_LOG_INFO, "tls_client_refused",
                "depth=0 reason=\"no extended key usage clientAuth\"");
        return 0;
    }
    if (app_tls_principal_x509(x, principal, sizeof(principal)) != CDX_OK) {
        X509_STORE_CTX_set_error(sc, X509_V_ERR_APPLICATION_VERIFICATION);
        /* The detail says which rule failed, never the rejected bytes themselves. */
        cdx_log(CDX_LOG_INFO, "tls_client_refused", "depth=0 reason=\"%s\"", cdx_err_detail());
        cdx_err_clear();
        return 0;
    }
    return 1;
}

static cdx_err load_clients(const app_tls *t, SSL_CTX *ctx)
{
    STACK_OF(X509) *cas = NULL;
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    X509_VERIFY_PARAM *vp = SSL_CTX_get0_param(ctx);
    char name[256];
    cdx_err e;

    if ((e = read_pem("client_ca", t->ca, &cas, NULL)))
        goto out;
    for (int i = 0; i < sk_X509_num(cas); i++) {
        X509 *ca = sk_X509_value(cas, i);
        char what[320];

        subject_str(ca, name, sizeof(name));
        snprintf(what, sizeof(what), "certificate %d (%s)", i + 1, name);
        if (X509_check_ca(ca) != 1) {
            e = conf_fail("client_ca", t->ca, "%s is not a CA (basicConstraints CA:TRUE missing)",
                          what);
            goto out;
        }
        if ((e = check_validity("client_ca", t->ca, ca, what)))
            goto out;
        if (X509_STORE_add_cert(store, ca) != 1 || SSL_CTX_add_client_CA(ctx, ca) != 1) {
            e = ossl_internal("X509_STORE_add_cert");
            goto out;
        }
    }
    unsigned long flags = X509_V_FLAG_X509_STRICT;
    if (t->crl[0]) {
        if ((e = load_crls(t, cas, store)))
            goto out;
        flags |= X509_V_FLAG_CRL_CHECK; /* the leaf; intermediates would need their CA's CRL */
    }
    if (X509_VERIFY_PARAM_set_flags(vp, flags) != 1 ||
        X509_VERIFY_PARAM_set_purpose(vp, X509_PURPOSE_SSL_CLIENT) != 1) {
        e = ossl_internal("X509_VERIFY_PARAM_set_flags");
        goto out;
    }
    X509_VERIFY_PARAM_set_depth(vp, APP_TLS_VERIFY_DEPTH);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_cb);
out:
    sk_X509_pop_free(cas, X509_free);
    return e;
}

/* ---- the context -------------------------------------------------------- */

static cdx_err build_ctx(const app_tls *t, SSL_CTX **out)
{
    SSL_CTX *ctx = NULL;
    cdx_err e = CDX_OK;

    *out = NULL;
    ERR_clear_error();
    ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        return ossl_internal("SSL_CTX_new");
    /* Fixed here rather than inherited from the system's openssl.cnf. */
    SSL_CTX_set_security_level(ctx, 2);
    if (SSL_CTX_set_min_proto_version(ctx, t->tls12 ? TLS1_2_VERSION : TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_ciphersuites(ctx, TLS13_SUITES) != 1 ||
        SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS) != 1 ||
        SSL_CTX_set1_groups_list(ctx, GROUPS) != 1 ||
        SSL_CTX_set_session_id_context(ctx, SID_CTX, sizeof(SID_CTX) - 1) != 1 ||
        SSL_CTX_set_num_tickets(ctx, 0) != 1 || SSL_CTX_set_max_early_data(ctx, 0) != 1) {
        e = ossl_internal("SSL_CTX protocol settings");
        goto out;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_clear_options(ctx, SSL_OP_ALLOW_CLIENT_RENEGOTIATION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);

    if ((e = load_server(t, ctx)) || (e = load_clients(t, ctx)))
        goto out;
    *out = ctx;
    ctx = NULL;
out:
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return e;
}

cdx_err app_tls_new(const app_config *cfg, app_tls **out)
{
    app_tls *t = NULL;
    cdx_err e;

    if (!cfg || !out)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "app_tls_new: NULL argument");
    *out = NULL;
    if (cfg->insecure)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "app_tls_new: insecure = yes has no TLS");
    if (!cfg->tls_cert[0] || !cfg->tls_key[0] || !cfg->client_ca[0])
        return cdx_fail(CDX_ERR_CONFIG, "tls_cert, tls_key and client_ca are required "
                                        "(unless insecure = yes)");
    t = calloc(1, sizeof(*t));
    if (!t)
        return cdx_fail(CDX_ERR_INTERNAL, "app_tls_new: out of memory");
    if (pthread_mutex_init(&t->mu, NULL) != 0) {
        free(t);
        return cdx_fail(CDX_ERR_INTERNAL, "app_tls_new: pthread_mutex_init failed");
    }
    /* Same sizes as in app_config: no truncation. */
    memcpy(t->cert, cfg->tls_cert, sizeof(t->cert));
    memcpy(t->key, cfg->tls_key, sizeof(t->key));
    memcpy(t->ca, cfg->client_ca, sizeof(t->ca));
    memcpy(t->crl, cfg->crl, sizeof(t->crl));
    t->tls12 = cfg->allow_tls12;
    if ((e = build_ctx(t, &t->ctx)))
        goto out;
    cdx_log(CDX_LOG_INFO, "tls_ready", "protocols=%s crl=%s", t->tls12 ? "1.3,1.2" : "1.3",
            t->crl[0] ? "yes" : "no");
    *out = t;
    t = NULL;
out:
    app_tls_free(t);
    return e;
}

void app_tls_free(app_tls *t)
{
    if (!t)
        return;
    SSL_CTX_free(t->ctx);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

cdx_err app_tls_reload(app_tls *t)
{
    SSL_CTX *fresh = NULL, *old;
    cdx_err e;

    if (!t)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "app_tls_reload: NULL argument");
    if ((e = build_ctx(t, &fresh))) {
        cdx_log(CDX_LOG_ERROR, "tls_reload_failed",
                "code=%s detail=\"%s\" msg=\"keeping the previous context\"", cdx_err_name(e),
                cdx_err_detail());
        return e;
    }
    pthread_mutex_lock(&t->mu);
    old = t->ctx;
    t->ctx = fresh;
    pthread_mutex_unlock(&t->mu);
    SSL_CTX_free(old); /* open connections hold their own reference */
    cdx_log(CDX_LOG_INFO, "tls_reloaded", "protocols=%s crl=%s", t->tls12 ? "1.3,1.2" : "1.3",
            t->crl[0] ? "yes" : "no");
    return CDX_OK;
}

SSL *app_tls_ssl_new(app_tls *t)
{
    SSL *ssl;

    if (!t) {
        cdx_fail(CDX_ERR_INVALID_ARGUMENT, "app_tls_ssl_new: NULL argument");
        return NULL;
    }
    pthread_mutex_lock(&t->mu);
    ssl = SSL_new(t->ctx);
    pthread_mutex_unlock(&t->mu);
    if (!ssl)
        ossl_internal("SSL_new");
    return ssl;
}

/* ---- principal ----------------------------------------------------------- */

/*
 * The typed principal "TYPE:VALUE" (pol_principal.h): the type names the
 * field, so a CN that spells a URI is not that URI's principal (review M1).
 */
static cdx_err take_name(const unsigned char *s, int len, const char *what, const char *type,
                         char *out)
{
    if (len <= 0)
        return cdx_fail(CDX_ERR_UNAUTHENTICATED, "client certificate: empty %s", what);
    if (len > CDX_PRINCIPAL_VALUE_MAX)
        return cdx_fail(CDX_ERR_UNAUTHENTICATED,
                        "client certificate: %s is %d bytes, longer than %d", what, len,
                        CDX_PRINCIPAL_VALUE_MAX);
    for (int i = 0; i < len; i++)
        if (s[i] < 0x21 || s[i] > 0x7e || s[i] == '"' || s[i] == '\\')
            return cdx_fail(CDX_ERR_UNAUTHENTICATED,
                            "client certificate: %s has byte 0x%02x at %d (allowed: printable "
                            "ASCII without space, quote or backslash)",
                            what, s[i], i);
    size_t tl = strlen(type);
    memcpy(out, type, tl);
    memcpy(out + tl, s, (size_t)len);
    out[tl + (size_t)len] = '\0';
    return CDX_OK;
}

static cdx_err principal_from_cn(X509 *x, char *out)
{
    X509_NAME *nm = X509_get_subject_name(x);
    unsigned char *utf8 = NULL;
    cdx_err e;

    int i = X509_NAME_get_index_by_NID(nm, NID_commonName, -1);
    if (i < 0)
        return cdx_fail(CDX_ERR_UNAUTHENTICATED,
                        "client certificate names no principal: no URI or DNS subjectAltName "
                        "and no subject CN");
    if (X509_NAME_get_index_by_NID(nm, NID_commonName, i) >= 0)
        return cdx_fail(CDX_ERR_UNAUTHENTICATED,
                        "client certificate has several subject CNs and no URI or DNS "
                        "subjectAltName: the principal is ambiguous");
    int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(nm, i)));
    if (n < 0) {
        ERR_clear_error();
        return cdx_fail(CDX_ERR_UNAUTHENTICATED, "client certificate: subject CN undecodable");
    }
    e = take_name(utf8, n, "subject CN", "cn:", out);
    OPENSSL_free(utf8);
    return e;
}

cdx_err app_tls_principal_x509(X509 *x, char *out, size_t cap)
{
    GENERAL_NAMES *gens = NULL;
    const GENERAL_NAME *uri = NULL, *dns = NULL;
    int crit = -1;
    cdx_err e;

    if (!x || !out || cap < CDX_PRINCIPAL_MAX + 1)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                        "app_tls_principal: NULL argument or buffer under %d bytes",
                        CDX_PRINCIPAL_MAX + 1);
    out[0] = '\0';
    gens = X509_get_ext_d2i(x, NID_subject_alt_name, &crit, NULL);
    if (!gens && crit != -1) {
        /* -2: the extension appears twice; >= 0: present but undecodable. */
        ERR_clear_error();
        return cdx_fail(CDX_ERR_UNAUTHENTICATED,
                        "client certificate: subjectAltName is repeated or undecodable");
    }
    for (int i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, i);
        if (gn->type == GEN_URI && !uri)
            uri = gn;
        else if (gn->type == GEN_DNS && !dns)
            dns = gn;
    }
    if (uri)
        e = take_name(ASN1_STRING_get0_data(uri->d.uniformResourceIdentifier),
                      ASN1_STRING_length(uri->d.uniformResourceIdentifier), "URI SAN", "uri:", out);
    else if (dns)
        e = take_name(ASN1_STRING_get0_data(dns->d.dNSName), ASN1_STRING_length(dns->d.dNSName),
                      "DNS SAN", "dns:", out);
    else
        e = principal_from_cn(x, out);
    GENERAL_NAMES_free(gens);
    if (e)
        out[0] = '\0';
    return e;
}

cdx_err app_tls_issuer_sha256(SSL *ssl, uint8_t out[32])
{
    STACK_OF(X509) *chain = ssl ? SSL_get0_verified_chain(ssl) : NULL;
    int n = chain ? sk_X509_num(chain) : 0;
    if (n < 1)
        return cdx_fail(CDX_ERR_UNAUTHENTICATED, "no verified client certificate chain");
    X509 *ca = sk_X509_value(chain, n > 1 ? 1 : 0);
    unsigned len = 0;
    unsigned char md[EVP_MAX_MD_SIZE];
    if (!X509_digest(ca, EVP_sha256(), md, &len) || len != 32) {
        ERR_clear_error();
        return cdx_fail(CDX_ERR_UNAUTHENTICATED, "cannot fingerprint the issuing CA");
    }
    memcpy(out, md, 32);
    return CDX_OK;
}

cdx_err app_tls_principal(SSL *ssl, char *out, size_t cap)
{
    if (!ssl || !out || cap < CDX_PRINCIPAL_MAX + 1)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                        "app_tls_principal: NULL argument or buffer under %d bytes",
                        CDX_PRINCIPAL_MAX + 1);
    out[0] = '\0';
    X509 *x = SSL_get0_peer_certificate(ssl);
    if (!x)
        return cdx_fail(CDX_ERR_UNAUTHENTICATED, "no client certificate");
    long v = SSL_get_verify_result(ssl);
    if (v != X509_V_OK)
        return cdx_fail(CDX_ERR_UNAUTHENTICATED, "client certificate did not verify: %s",
                        X509_verify_cert_error_string(v));
    return app_tls_principal_x509(x, out, cap);
}
