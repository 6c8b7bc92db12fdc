/*
 * test_tls: the daemon's server TLS context (appliance/app_tls.c) in real
 * handshakes over a socketpair against client contexts built here (which
 * verify the server's certificate and name), with a throwaway PKI
 * (tests/fixtures/fx_pki.c).
 */
#include <CUnit/Basic.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "app_tls.h"
#include "cdx_log.h"
#include "fx_pki.h"
#include "fx_tmp.h"
#include "fx_cunit.h"

static char *dir;
static fx_pki *pki;
static const fx_cert *srv, *srv_rsa, *c_uri, *c_dns, *c_cn, *c_2cn, *c_srveku, *c_noeku, *c_other,
    *c_revoked, *c_expired, *c_nul, *c_long, *c_maxlen, *c_space, *c_utf8, *c_noname;
static const char *crl; /* CA 0's CRL listing c_revoked */

/* ---- helpers ------------------------------------------------------------- */

static void cfg_init(app_config *c, const fx_cert *server, const char *crl_path, bool tls12)
{
    app_config_init(c);
    snprintf(c->tls_cert, sizeof(c->tls_cert), "%s", server->cert);
    snprintf(c->tls_key, sizeof(c->tls_key), "%s", server->key);
    snprintf(c->client_ca, sizeof(c->client_ca), "%s", fx_pki_ca(pki, 0));
    if (crl_path)
        snprintf(c->crl, sizeof(c->crl), "%s", crl_path);
    c->allow_tls12 = tls12;
}

static app_tls *tls_new(const fx_cert *server, const char *crl_path, bool tls12)
{
    app_config c;
    app_tls *t = NULL;

    cfg_init(&c, server, crl_path, tls12);
    cdx_err e = app_tls_new(&c, &t);
    if (e)
        fprintf(stderr, "\n  app_tls_new: %s: %s\n", cdx_err_name(e), cdx_err_detail());
    CU_ASSERT_EQUAL(e, CDX_OK);
    return t;
}

static int n_new_sessions; /* sessions (tickets or ids) the client was handed */
static bool try_reneg;     /* handshake(): the client then asks for a renegotiation */

static int on_new_session(SSL *ssl, SSL_SESSION *sess)
{
    n_new_sessions++;
    return 0; /* not kept */
}

typedef struct cli_opts {
    const fx_cert *cert; /* NULL: no client certificate */
    bool tls12_only;     /* offer TLS 1.2 only */
    const char *ciphers; /* TLS 1.2 cipher list [OpenSSL default] */
} cli_opts;

static SSL_CTX *client_ctx(const cli_opts *o)
{
    SSL_CTX *c = SSL_CTX_new(TLS_client_method());
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_EQUAL(SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION), 1);
    if (o->tls12_only)
        CU_ASSERT_EQUAL(SSL_CTX_set_max_proto_version(c, TLS1_2_VERSION), 1);
    if (o->ciphers)
        CU_ASSERT_EQUAL(SSL_CTX_set_cipher_list(c, o->ciphers), 1);
    CU_ASSERT_EQUAL(SSL_CTX_load_verify_file(c, fx_pki_ca(pki, 0)), 1);
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
    if (o->cert) {
        CU_ASSERT_EQUAL(SSL_CTX_use_certificate_file(c, o->cert->cert, SSL_FILETYPE_PEM), 1);
        CU_ASSERT_EQUAL(SSL_CTX_use_PrivateKey_file(c, o->cert->key, SSL_FILETYPE_PEM), 1);
    }
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(c, on_new_session);
    return c;
}

typedef struct hs {
    int server_ok, client_ok; /* handshake completed on that side */
    int data_ok;              /* a request and an answer went through */
    long server_verify;       /* server's verdict on the client certificate */
    cdx_err principal_err;
    char principal[CDX_PRINCIPAL_MAX + 1];
    int version; /* negotiated, client side */
    char cipher[64];
    unsigned long long server_serial; /* of the certificate the client saw */
    int reused;
    int renegotiated;     /* a TLS 1.2 renegotiation asked by the client completed */
    SSL_SESSION *session; /* client's session (caller frees) when keep */
} hs;

/* Drive both nonblocking ends until neither makes progress. */
static int pump(SSL *s, SSL *c, int *s_done, int *c_done)
{
    for (int round = 0; round < 200 && !(*s_done && *c_done); round++) {
        SSL *side[2] = {s, c};
        int *done[2] = {s_done, c_done};
        for (int i = 0; i < 2; i++) {
            if (*done[i])
                continue;
            int rv = SSL_do_handshake(side[i]);
            if (rv == 1) {
                *done[i] = 1;
            } else {
                int err = SSL_get_error(side[i], rv);
                if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE)
                    *done[i] = -1;
            }
        }
    }
    ERR_clear_error();
    return 0;
}

/* Nonblocking write on `w`, read on `r` until the bytes arrive. */
static int transfer(SSL *w, SSL *r, const char *msg)
{
    char buf[64];
    size_t len = strlen(msg);

    if (SSL_write(w, msg, (int)len) != (int)len)
        return -1;
    for (int i = 0; i < 200; i++) {
        int n = SSL_read(r, buf, sizeof(buf));
        if (n > 0)
            return (size_t)n == len && !memcmp(buf, msg, len) ? 0 : -1;
        int err = SSL_get_error(r, n);
        if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE)
            return -1;
    }
    return -1;
}

/*
 * One connection: server SSL `pre` (or a fresh one from t), client from
 * cctx verifying the server as `host` (name or IP; NULL "localhost").
 */
static void handshake(app_tls *t, SSL *pre, SSL_CTX *cctx, const char *host, SSL_SESSION *resume,
                      bool keep, hs *r)
{
    int sv[2];
    SSL *s = pre, *c = NULL;

    memset(r, 0, sizeof(*r));
    r->principal_err = CDX_ERR_UNKNOWN;
    if (!host)
        host = "localhost";
    CU_ASSERT_EQUAL_FATAL(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    fcntl(sv[0], F_SETFL, O_NONBLOCK);
    fcntl(sv[1], F_SETFL, O_NONBLOCK);
    if (!s)
        s = app_tls_ssl_new(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    c = SSL_new(cctx);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    SSL_set_fd(s, sv[0]);
    SSL_set_fd(c, sv[1]);
    SSL_set_accept_state(s);
    SSL_set_connect_state(c);
    if (strchr(host, ':') || (host[0] >= '0' && host[0] <= '9')) {
        CU_ASSERT_EQUAL(X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c), host), 1);
    } else {
        CU_ASSERT_EQUAL(SSL_set1_host(c, host), 1);
        SSL_set_tlsext_host_name(c, host);
    }
    if (resume)
        SSL_set_session(c, resume);

    int sd = 0, cd = 0;
    pump(s, c, &sd, &cd);
    r->server_ok = sd == 1;
    r->client_ok = cd == 1;
    r->server_verify = SSL_get_verify_result(s);
    if (r->server_ok && r->client_ok) {
        r->data_ok = transfer(c, s, "ping") == 0 && transfer(s, c, "pong") == 0;
        r->principal_err = app_tls_principal(s, r->principal, sizeof(r->principal));
        r->version = SSL_version(c);
        snprintf(r->cipher, sizeof(r->cipher), "%s", SSL_get_cipher_name(c));
        r->reused = SSL_session_reused(c);
        X509 *peer = SSL_get0_peer_certificate(c);
        uint64_t serial = 0;
        if (peer)
            ASN1_INTEGER_get_uint64(&serial, X509_get0_serialNumber(peer));
        r->server_serial = serial;
        if (keep)
            r->session = SSL_get1_session(c);
        if (try_reneg && r->version == TLS1_2_VERSION && SSL_renegotiate(c) == 1) {
            char buf[8];
            for (int i = 0; i < 100 && !r->renegotiated; i++) {
                int rv = SSL_do_handshake(c);
                if (rv == 1 && !SSL_renegotiate_pending(c)) {
                    r->renegotiated = 1;
                    break;
                }
                int err = SSL_get_error(c, rv);
                if (rv != 1 && err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE)
                    break;
                SSL_read(s, buf, sizeof(buf)); /* the server sees the new ClientHello here */
            }
        }
    } else if (r->client_ok) {
        /* TLS 1.3: the client finishes first; the server's refusal arrives as an alert. */
        char buf[8];
        CU_ASSERT_TRUE(SSL_read(c, buf, sizeof(buf)) <= 0);
    }
    ERR_clear_error();
    SSL_free(s);
    SSL_free(c);
    close(sv[0]);
    close(sv[1]);
}

/* Handshake with a client presenting `cert` (NULL: none), default client settings. */
static void connect_as(app_tls *t, const fx_cert *cert, hs *r)
{
    cli_opts o = {.cert = cert};
    SSL_CTX *c = client_ctx(&o);
    handshake(t, NULL, c, NULL, NULL, false, r);
    SSL_CTX_free(c);
}

static X509 *load_x509(const char *path)
{
    FILE *f = fopen(path, "r");
    X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    CU_ASSERT_PTR_NOT_NULL(x);
    return x;
}

static int copy_file(const char *from, const char *to)
{
    char buf[16384];
    FILE *in = fopen(from, "rb"), *out = in ? fopen(to, "wb") : NULL;
    size_t n;
    int rc = in && out ? 0 : -1;

    while (rc == 0 && (n = fread(buf, 1, sizeof(buf), in)) > 0)
        if (fwrite(buf, 1, n, out) != n)
            rc = -1;
    if (in)
        fclose(in);
    if (out && fclose(out) != 0)
        rc = -1;
    return rc;
}

/* ---- suite setup ------------------------------------------------------- */

static int suite_init(void)
{
    char longuri[CDX_PRINCIPAL_VALUE_MAX + 2], maxuri[CDX_PRINCIPAL_VALUE_MAX + 1];
    static const char nuluri[] = "spiffe://cipherdex/ev\0il";

    /* Refusals are logged at info: keep the output short unless asked. */
    if (!getenv("CDX_LOG_LEVEL"))
        cdx_log_set_level(CDX_LOG_ERROR);
    dir = fx_tmpdir_new("tls");
    if (!dir || !(pki = fx_pki_new(dir)))
        return 1;
    memset(longuri, 'a', sizeof(longuri) - 1);
    memcpy(longuri, "spiffe://", 9);
    longuri[sizeof(longuri) - 1] = '\0'; /* CDX_PRINCIPAL_VALUE_MAX + 1 bytes */
    memset(maxuri, 'b', sizeof(maxuri) - 1);
    memcpy(maxuri, "spiffe://", 9);
    maxuri[sizeof(maxuri) - 1] = '\0'; /* exactly CDX_PRINCIPAL_VALUE_MAX bytes */

    fx_cert_opts so = {
        .cn = "localhost", .dns = {"localhost"}, .ip = {"127.0.0.1", "::1"}, .eku = FX_EKU_SERVER};
    srv = fx_pki_issue(pki, &so, "server");
    so.rsa = 1;
    srv_rsa = fx_pki_issue(pki, &so, "server-rsa");
    c_uri = fx_pki_issue(pki,
                         &(fx_cert_opts){.uri = "spiffe://cipherdex/alice",
                                         .dns = {"alice.clients.example"},
                                         .cn = "alice"},
                         "c-uri");
    c_dns = fx_pki_issue(pki,
                         &(fx_cert_opts){.dns = {"bob.clients.example", "bob2.example"},
                                         .cn = "bob",
                                         .ip = {"10.0.0.1"}},
                         "c-dns");
    c_cn = fx_pki_issue(pki, &(fx_cert_opts){.cn = "carol"}, "c-cn");
    c_2cn = fx_pki_issue(pki, &(fx_cert_opts){.cn = "dave", .cn2 = "mallory"}, "c-2cn");
    c_srveku = fx_pki_issue(pki, &(fx_cert_opts){.cn = "erin", .eku = FX_EKU_SERVER}, "c-srveku");
    c_noeku = fx_pki_issue(pki, &(fx_cert_opts){.cn = "frank", .eku = FX_EKU_NONE}, "c-noeku");
    c_other = fx_pki_issue(pki, &(fx_cert_opts){.cn = "grace", .ca = 1}, "c-other");
    c_revoked = fx_pki_issue(pki, &(fx_cert_opts){.cn = "heidi"}, "c-revoked");
    c_expired = fx_pki_issue(
        pki, &(fx_cert_opts){.cn = "ivan", .not_before_s = -2 * 86400, .not_after_s = -86400},
        "c-expired");
    c_nul =
        fx_pki_issue(pki, &(fx_cert_opts){.uri = nuluri, .uri_len = sizeof(nuluri) - 1}, "c-nul");
    c_long = fx_pki_issue(pki, &(fx_cert_opts){.uri = longuri}, "c-long");
    c_maxlen = fx_pki_issue(pki, &(fx_cert_opts){.uri = maxuri}, "c-maxlen");
    c_space = fx_pki_issue(pki, &(fx_cert_opts){.cn = "judy smith"}, "c-space");
    c_utf8 = fx_pki_issue(pki, &(fx_cert_opts){.cn = "k\xc3\xa4the"}, "c-utf8");
    c_noname = fx_pki_issue(pki, &(fx_cert_opts){.ip = {"10.0.0.2"}}, "c-noname");
    const fx_cert *rev[] = {c_revoked};
    crl = fx_pki_crl(pki, NULL, rev, 1, "crl");
    return srv && srv_rsa && c_uri && c_dns && c_cn && c_2cn && c_srveku && c_noeku && c_other &&
                   c_revoked && c_expired && c_nul && c_long && c_maxlen && c_space && c_utf8 &&
                   c_noname && crl
               ? 0
               : 1;
}

static int suite_clean(void)
{
    fx_pki_free(pki);
    if (dir) {
        fx_rm_rf(dir);
        free(dir);
    }
    return 0;
}

/* ---- tests ------------------------------------------------------------- */

static void test_accept_principals(void)
{
    app_tls *t = tls_new(srv, NULL, false);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    struct {
        const fx_cert *cert;
        const char *principal;
    } cases[] = {
        {c_uri, "uri:spiffe://cipherdex/alice"}, /* URI wins over DNS and CN */
        {c_dns, "dns:bob.clients.example"},      /* first DNS SAN wins over CN */
        {c_cn, "cn:carol"},                      /* no SAN: the single CN */
        {c_maxlen, NULL},                        /* exactly CDX_PRINCIPAL_VALUE_MAX bytes */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        hs r;
        connect_as(t, cases[i].cert, &r);
        CU_ASSERT_TRUE(r.server_ok);
        CU_ASSERT_TRUE(r.client_ok);
        CU_ASSERT_TRUE(r.data_ok);
        CU_ASSERT_EQUAL(r.version, TLS1_3_VERSION);
        CU_ASSERT_EQUAL(r.principal_err, CDX_OK);
        if (cases[i].principal) {
            CU_ASSERT_STRING_EQUAL(r.principal, cases[i].principal);
        } else {
            CU_ASSERT_EQUAL(strlen(r.principal), CDX_PRINCIPAL_MAX);
        }
    }
    app_tls_free(t);
}

static void test_server_name_verified(void)
{
    app_tls *t = tls_new(srv, NULL, false);
    cli_opts o = {.cert = c_cn};
    SSL_CTX *c = client_ctx(&o);
    static const char *good[] = {"localhost", "127.0.0.1", "::1"};
    hs r;

    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    for (size_t i = 0; i < 3; i++) {
        handshake(t, NULL, c, good[i], NULL, false, &r);
        CU_ASSERT_TRUE(r.server_ok && r.client_ok && r.data_ok);
    }
    /* The fixture's server certificate names nothing else: the client refuses. */
    handshake(t, NULL, c, "wrong.example", NULL, false, &r);
    CU_ASSERT_FALSE(r.client_ok);
    handshake(t, NULL, c, "127.0.0.2", NULL, false, &r);
    CU_ASSERT_FALSE(r.client_ok);
    SSL_CTX_free(c);
    app_tls_free(t);
}

static void test_refused(void)
{
    app_tls *t = tls_new(srv, crl, false);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    struct {
        const fx_cert *cert;
        long verify; /* expected server verdict; -1: any failure */
        const char *what;
    } cases[] = {
        {NULL, X509_V_OK, "no client certificate"},
        {c_other, -1, "another CA (same name, other key)"},
        {c_revoked, X509_V_ERR_CERT_REVOKED, "revoked"},
        {c_srveku, X509_V_ERR_INVALID_PURPOSE, "EKU serverAuth only"},
        {c_noeku, X509_V_ERR_INVALID_PURPOSE, "no EKU extension"},
        {c_expired, X509_V_ERR_CERT_HAS_EXPIRED, "expired"},
        {c_2cn, X509_V_ERR_APPLICATION_VERIFICATION, "two CNs, no SAN"},
        {c_nul, X509_V_ERR_APPLICATION_VERIFICATION, "NUL in the URI SAN"},
        {c_long, X509_V_ERR_APPLICATION_VERIFICATION, "principal too long"},
        {c_space, X509_V_ERR_APPLICATION_VERIFICATION, "space in the CN"},
        {c_utf8, X509_V_ERR_APPLICATION_VERIFICATION, "non-ASCII CN"},
        {c_noname, X509_V_ERR_APPLICATION_VERIFICATION, "IP SAN only, no CN"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        hs r;
        connect_as(t, cases[i].cert, &r);
        if (r.server_ok)
            fprintf(stderr, "\n  accepted: %s\n", cases[i].what);
        CU_ASSERT_FALSE(r.server_ok);
        if (cases[i].verify >= 0 && r.server_verify != cases[i].verify)
            fprintf(stderr, "\n  %s: verify result %ld (%s)\n", cases[i].what, r.server_verify,
                    X509_verify_cert_error_string(r.server_verify));
        if (cases[i].verify >= 0) {
            CU_ASSERT_EQUAL(r.server_verify, cases[i].verify);
        } else {
            CU_ASSERT_NOT_EQUAL(r.server_verify, X509_V_OK);
        }
    }
    /* The CRL does not refuse everyone. */
    hs ok;
    connect_as(t, c_uri, &ok);
    CU_ASSERT_TRUE(ok.server_ok && ok.data_ok);
    app_tls_free(t);
}

static void test_principal_rules(void)
{
    static const struct {
        const fx_cert *const *cert;
        cdx_err want;
        const char *principal;
    } cases[] = {
        {&c_uri, CDX_OK, "uri:spiffe://cipherdex/alice"},
        {&c_dns, CDX_OK, "dns:bob.clients.example"},
        {&c_cn, CDX_OK, "cn:carol"},
        {&c_2cn, CDX_ERR_UNAUTHENTICATED, NULL},
        {&c_nul, CDX_ERR_UNAUTHENTICATED, NULL},
        {&c_long, CDX_ERR_UNAUTHENTICATED, NULL},
        {&c_space, CDX_ERR_UNAUTHENTICATED, NULL},
        {&c_utf8, CDX_ERR_UNAUTHENTICATED, NULL},
        {&c_noname, CDX_ERR_UNAUTHENTICATED, NULL},
    };
    char p[CDX_PRINCIPAL_MAX + 1];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        X509 *x = load_x509((*cases[i].cert)->cert);
        cdx_err e = app_tls_principal_x509(x, p, sizeof(p));
        CU_ASSERT_EQUAL(e, cases[i].want);
        if (cases[i].principal) {
            CU_ASSERT_STRING_EQUAL(p, cases[i].principal);
        } else {
            CU_ASSERT_EQUAL(p[0], '\0');
        }
        X509_free(x);
    }
    X509 *x = load_x509(c_2cn->cert);
    CU_ASSERT_EQUAL(app_tls_principal_x509(x, p, sizeof(p)), CDX_ERR_UNAUTHENTICATED);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "several subject CNs"));
    CU_ASSERT_EQUAL(app_tls_principal_x509(x, p, CDX_PRINCIPAL_MAX), CDX_ERR_INVALID_ARGUMENT);
    X509_free(x);
    /* A connection whose handshake never completed has no principal. */
    app_tls *t = tls_new(srv, NULL, false);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    SSL *s = app_tls_ssl_new(t);
    CU_ASSERT_EQUAL(app_tls_principal(s, p, sizeof(p)), CDX_ERR_UNAUTHENTICATED);
    SSL_free(s);
    app_tls_free(t);
}

static void test_context_settings(void)
{
    app_tls *t = tls_new(srv, NULL, false);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    SSL *s = app_tls_ssl_new(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    uint64_t opts = SSL_get_options(s);
    CU_ASSERT_TRUE(opts & SSL_OP_NO_RENEGOTIATION);
    CU_ASSERT_TRUE(opts & SSL_OP_NO_TICKET);
    CU_ASSERT_TRUE(opts & SSL_OP_NO_COMPRESSION);
    CU_ASSERT_FALSE(opts & SSL_OP_ALLOW_CLIENT_RENEGOTIATION);
    SSL_CTX *ctx = SSL_get_SSL_CTX(s);
    CU_ASSERT_EQUAL(SSL_CTX_get_num_tickets(ctx), 0);
    CU_ASSERT_EQUAL(SSL_CTX_get_session_cache_mode(ctx), SSL_SESS_CACHE_OFF);
    CU_ASSERT_EQUAL(SSL_get_verify_mode(s), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT);
    CU_ASSERT_EQUAL(SSL_get_min_proto_version(s), TLS1_3_VERSION);
    CU_ASSERT_EQUAL(SSL_get_max_early_data(s), 0);
    SSL_free(s);
    app_tls_free(t);
}

static void tls12_case(app_tls *t, const fx_cert *client, const char *ciphers, bool want_ok)
{
    cli_opts o = {.cert = client, .tls12_only = true, .ciphers = ciphers};
    SSL_CTX *c = client_ctx(&o);
    hs r;
    handshake(t, NULL, c, NULL, NULL, false, &r);
    if ((r.server_ok && r.client_ok) != want_ok)
        fprintf(stderr, "\n  TLS 1.2 with %s: %s\n", ciphers ? ciphers : "default ciphers",
                want_ok ? "refused" : "accepted");
    CU_ASSERT_EQUAL(r.server_ok && r.client_ok && r.data_ok, want_ok);
    if (want_ok) {
        CU_ASSERT_EQUAL(r.version, TLS1_2_VERSION);
        CU_ASSERT_STRING_EQUAL(r.cipher, ciphers);
        CU_ASSERT_STRING_EQUAL(r.principal, "cn:carol");
    }
    SSL_CTX_free(c);
}

static void test_tls12(void)
{
    app_tls *t13 = tls_new(srv, NULL, false);
    app_tls *t12 = tls_new(srv, NULL, true);
    app_tls *t12rsa = tls_new(srv_rsa, NULL, true);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t13);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t12);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t12rsa);

    /* Default: TLS 1.3 only. */
    tls12_case(t13, c_cn, NULL, false);
    tls12_case(t13, c_cn, "ECDHE-ECDSA-AES128-GCM-SHA256", false);
    /* allow_tls12: ECDHE with AEAD only. */
    tls12_case(t12, c_cn, "ECDHE-ECDSA-AES128-GCM-SHA256", true);
    tls12_case(t12, c_cn, "ECDHE-ECDSA-AES256-GCM-SHA384", true);
    tls12_case(t12, c_cn, "ECDHE-ECDSA-CHACHA20-POLY1305", true);
    tls12_case(t12, c_cn, "ECDHE-ECDSA-AES128-SHA256", false); /* CBC */
    tls12_case(t12, c_cn, "ECDHE-ECDSA-AES256-SHA", false);    /* CBC, SHA-1 */
    /* An RSA server key makes the non-ECDHE key exchanges possible at all. */
    tls12_case(t12rsa, c_cn, "ECDHE-RSA-AES256-GCM-SHA384", true);
    tls12_case(t12rsa, c_cn, "ECDHE-RSA-CHACHA20-POLY1305", true);
    tls12_case(t12rsa, c_cn, "AES128-GCM-SHA256", false);         /* RSA key exchange */
    tls12_case(t12rsa, c_cn, "DHE-RSA-AES128-GCM-SHA256", false); /* finite-field DH */
    tls12_case(t12rsa, c_cn, "ECDHE-RSA-AES128-SHA256", false);   /* CBC */
    /* Client authentication is the same under TLS 1.2. */
    tls12_case(t12, c_noeku, "ECDHE-ECDSA-AES128-GCM-SHA256", false);
    tls12_case(t12, NULL, "ECDHE-ECDSA-AES128-GCM-SHA256", false);
    /* No renegotiation (TLS 1.3 has none; TLS 1.2 clients may ask). */
    cli_opts ro = {.cert = c_cn, .tls12_only = true, .ciphers = "ECDHE-ECDSA-AES128-GCM-SHA256"};
    SSL_CTX *rc = client_ctx(&ro);
    hs rr;
    try_reneg = true;
    handshake(t12, NULL, rc, NULL, NULL, false, &rr);
    try_reneg = false;
    CU_ASSERT_TRUE(rr.server_ok && rr.data_ok);
    CU_ASSERT_EQUAL(rr.version, TLS1_2_VERSION);
    CU_ASSERT_FALSE(rr.renegotiated);
    SSL_CTX_free(rc);
    /* allow_tls12 still prefers 1.3. */
    hs r;
    connect_as(t12, c_cn, &r);
    CU_ASSERT_TRUE(r.server_ok && r.data_ok);
    CU_ASSERT_EQUAL(r.version, TLS1_3_VERSION);
    app_tls_free(t13);
    app_tls_free(t12);
    app_tls_free(t12rsa);
}

/* No ticket, no session id: a second connection cannot resume the first. */
static void no_resumption(app_tls *t, bool tls12)
{
    cli_opts o = {.cert = c_uri,
                  .tls12_only = tls12,
                  .ciphers = tls12 ? "ECDHE-ECDSA-AES128-GCM-SHA256" : NULL};
    SSL_CTX *c = client_ctx(&o);
    hs r1, r2;

    n_new_sessions = 0;
    handshake(t, NULL, c, NULL, NULL, true, &r1);
    CU_ASSERT_TRUE(r1.server_ok && r1.client_ok && r1.data_ok);
    CU_ASSERT_EQUAL(r1.version, tls12 ? TLS1_2_VERSION : TLS1_3_VERSION);
    CU_ASSERT_EQUAL(n_new_sessions, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r1.session);
    CU_ASSERT_FALSE(SSL_SESSION_is_resumable(r1.session));
    CU_ASSERT_FALSE(SSL_SESSION_has_ticket(r1.session));
    handshake(t, NULL, c, NULL, r1.session, false, &r2);
    CU_ASSERT_TRUE(r2.server_ok && r2.client_ok && r2.data_ok);
    CU_ASSERT_FALSE(r2.reused);
    CU_ASSERT_EQUAL(n_new_sessions, 0);
    SSL_SESSION_free(r1.session);
    SSL_CTX_free(c);
}

static void test_no_tickets(void)
{
    app_tls *t = tls_new(srv, NULL, true);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    no_resumption(t, false);
    no_resumption(t, true);
    app_tls_free(t);
}

static void test_reload(void)
{
    fx_cert_opts so = {.cn = "localhost", .dns = {"localhost"}, .eku = FX_EKU_SERVER};
    const fx_cert *a = fx_pki_issue(pki, &so, "rl-server");
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    unsigned long long serial_a = a->serial;
    const char *crl0 = fx_pki_crl(pki, NULL, NULL, 0, "rl-crl");
    CU_ASSERT_PTR_NOT_NULL_FATAL(crl0);
    app_tls *t = tls_new(a, crl0, false);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    hs r;

    SSL *opened = app_tls_ssl_new(t); /* a connection accepted before the reload */
    CU_ASSERT_PTR_NOT_NULL_FATAL(opened);
    const fx_cert *b = fx_pki_issue(pki, &so, "rl-server"); /* same paths, new cert */
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_NOT_EQUAL(b->serial, serial_a);
    connect_as(t, c_cn, &r); /* files changed, not reloaded: still A */
    CU_ASSERT_TRUE(r.server_ok);
    CU_ASSERT_EQUAL(r.server_serial, serial_a);

    CU_ASSERT_EQUAL(app_tls_reload(t), CDX_OK);
    connect_as(t, c_cn, &r);
    CU_ASSERT_TRUE(r.server_ok && r.data_ok);
    CU_ASSERT_EQUAL(r.server_serial, b->serial);
    cli_opts o = {.cert = c_cn};
    SSL_CTX *c = client_ctx(&o);
    handshake(t, opened, c, NULL, NULL, false, &r); /* frees `opened` */
    CU_ASSERT_TRUE(r.server_ok && r.data_ok);
    CU_ASSERT_EQUAL(r.server_serial, serial_a);
    SSL_CTX_free(c);

    /* The CRL is re-read too: revoke carol. */
    const fx_cert *rev[] = {c_cn};
    CU_ASSERT_PTR_NOT_NULL(fx_pki_crl(pki, NULL, rev, 1, "rl-crl"));
    CU_ASSERT_EQUAL(app_tls_reload(t), CDX_OK);
    connect_as(t, c_cn, &r);
    CU_ASSERT_FALSE(r.server_ok);
    CU_ASSERT_EQUAL(r.server_verify, X509_V_ERR_CERT_REVOKED);
    connect_as(t, c_uri, &r);
    CU_ASSERT_TRUE(r.server_ok);

    /* A failed reload keeps the previous context. */
    CU_ASSERT_EQUAL(copy_file(c_uri->key, b->key), 0);
    CU_ASSERT_EQUAL(app_tls_reload(t), CDX_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), b->key));
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "does not match"));
    connect_as(t, c_uri, &r);
    CU_ASSERT_TRUE(r.server_ok && r.data_ok);
    CU_ASSERT_EQUAL(r.server_serial, b->serial);
    CU_ASSERT_EQUAL(unlink(crl0), 0);
    CU_ASSERT_EQUAL(app_tls_reload(t), CDX_ERR_CONFIG);
    connect_as(t, c_cn, &r); /* still revoked: the old CRL is still in force */
    CU_ASSERT_FALSE(r.server_ok);
    app_tls_free(t);
}

/* app_tls_new with cfg; expect CDX_ERR_CONFIG whose detail holds both needles. */
static void expect_config_error(const app_config *cfg, const char *n1, const char *n2)
{
    app_tls *t = NULL;
    cdx_err e = app_tls_new(cfg, &t);
    CU_ASSERT_EQUAL(e, CDX_ERR_CONFIG);
    CU_ASSERT_PTR_NULL(t);
    const char *d = cdx_err_detail();
    if (!strstr(d, n1) || (n2 && !strstr(d, n2)))
        fprintf(stderr, "\n  detail `%s` lacks `%s` / `%s`\n", d, n1, n2 ? n2 : "");
    CU_ASSERT_PTR_NOT_NULL(strstr(d, n1));
    if (n2)
        CU_ASSERT_PTR_NOT_NULL(strstr(d, n2));
    app_tls_free(t);
}

static void test_config_errors(void)
{
    app_config c;
    char missing[4096], garbage[4096], enckey[4096], expired_crl[4096];
    app_tls *t = NULL;

    snprintf(missing, sizeof(missing), "%s/no-such-file.pem", dir);
    snprintf(garbage, sizeof(garbage), "%s/garbage.pem", dir);
    snprintf(enckey, sizeof(enckey), "%s/encrypted.key", dir);
    FILE *f = fopen(garbage, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs("this is not PEM\n", f);
    fclose(f);
    chmod(garbage, 0600); /* also used as a key: not refused for its mode first */

    cfg_init(&c, srv, NULL, false);
    snprintf(c.tls_cert, sizeof(c.tls_cert), "%s", missing);
    expect_config_error(&c, "tls_cert", missing);
    cfg_init(&c, srv, NULL, false);
    snprintf(c.tls_key, sizeof(c.tls_key), "%s", missing);
    expect_config_error(&c, "tls_key", missing);
    cfg_init(&c, srv, NULL, false);
    snprintf(c.client_ca, sizeof(c.client_ca), "%s", missing);
    expect_config_error(&c, "client_ca", missing);
    cfg_init(&c, srv, missing, false);
    expect_config_error(&c, "crl", missing);
    cfg_init(&c, srv, NULL, false);
    snprintf(c.tls_cert, sizeof(c.tls_cert), "%s", dir); /* a directory */
    expect_config_error(&c, dir, "not a regular file");

    /* Key of another certificate. */
    cfg_init(&c, srv, NULL, false);
    snprintf(c.tls_key, sizeof(c.tls_key), "%s", c_uri->key);
    expect_config_error(&c, c_uri->key, "does not match the certificate");
    /* Not PEM. */
    cfg_init(&c, srv, NULL, false);
    snprintf(c.tls_cert, sizeof(c.tls_cert), "%s", garbage);
    expect_config_error(&c, garbage, "no PEM certificate");
    cfg_init(&c, srv, NULL, false);
    snprintf(c.tls_key, sizeof(c.tls_key), "%s", garbage);
    expect_config_error(&c, garbage, "not an unencrypted PEM private key");
    cfg_init(&c, srv, garbage, false);
    expect_config_error(&c, garbage, "no PEM CRL");
    /* A certificate file given as the key, a key given as the CA. */
    cfg_init(&c, srv, NULL, false);
    snprintf(c.client_ca, sizeof(c.client_ca), "%s", srv->key);
    expect_config_error(&c, srv->key, "no PEM certificate");
    /* A pass-phrase protected key: never prompted for. */
    {
        FILE *in = fopen(srv->key, "r"), *out = fopen(enckey, "w");
        EVP_PKEY *k = in ? PEM_read_PrivateKey(in, NULL, NULL, NULL) : NULL;
        CU_ASSERT_PTR_NOT_NULL_FATAL(k);
        CU_ASSERT_EQUAL(
            PEM_write_PKCS8PrivateKey(out, k, EVP_aes_256_cbc(), NULL, 0, NULL, (void *)"secret"),
            1);
        EVP_PKEY_free(k);
        fclose(in);
        fclose(out);
        chmod(enckey, 0600);
    }
    cfg_init(&c, srv, NULL, false);
    snprintf(c.tls_key, sizeof(c.tls_key), "%s", enckey);
    expect_config_error(&c, enckey, "encrypted keys are not supported");
    /* A private key others can read: refused (group access only warns). */
    CU_ASSERT_EQUAL(chmod(srv->key, 0604), 0);
    cfg_init(&c, srv, NULL, false);
    expect_config_error(&c, srv->key, "gives others access to the private key");
    CU_ASSERT_EQUAL(chmod(srv->key, 0600), 0);
    /* A leaf as client CA. */
    cfg_init(&c, srv, NULL, false);
    snprintf(c.client_ca, sizeof(c.client_ca), "%s", c_cn->cert);
    expect_config_error(&c, c_cn->cert, "is not a CA");
    /* A client certificate as server certificate (EKU clientAuth only). */
    cfg_init(&c, c_cn, NULL, false);
    expect_config_error(&c, c_cn->cert, "serverAuth");
    /* An expired server certificate. */
    cfg_init(&c, c_expired, NULL, false);
    expect_config_error(&c, c_expired->cert, "expired");
    /* A CRL of another CA, an expired CRL. */
    const char *crl_other = fx_pki_crl(pki, &(fx_crl_opts){.ca = 1}, NULL, 0, "crl-other");
    CU_ASSERT_PTR_NOT_NULL_FATAL(crl_other);
    cfg_init(&c, srv, crl_other, false);
    expect_config_error(&c, crl_other, "not signed by any CA in client_ca");
    const char *crl_old =
        fx_pki_crl(pki, &(fx_crl_opts){.last_update_s = -2 * 86400, .next_update_s = -86400}, NULL,
                   0, "crl-expired");
    CU_ASSERT_PTR_NOT_NULL_FATAL(crl_old);
    snprintf(expired_crl, sizeof(expired_crl), "%s", crl_old);
    cfg_init(&c, srv, expired_crl, false);
    expect_config_error(&c, expired_crl, "has expired");
    /* Required files, insecure mode. */
    cfg_init(&c, srv, NULL, false);
    c.client_ca[0] = '\0';
    expect_config_error(&c, "client_ca", NULL);
    cfg_init(&c, srv, NULL, false);
    c.insecure = true;
    CU_ASSERT_EQUAL(app_tls_new(&c, &t), CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(app_tls_new(NULL, &t), CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NULL(app_tls_ssl_new(NULL));
    CU_ASSERT_EQUAL(app_tls_reload(NULL), CDX_ERR_INVALID_ARGUMENT);
    app_tls_free(NULL);
}

/* A CRL that passes its nextUpdate while loaded refuses every client (fail closed). */
static void test_crl_expires_while_loaded(void)
{
    /* 4 s of validity: margin for a loaded CI machine between writing and the first handshake. */
    time_t made = time(NULL);
    const char *p = fx_pki_crl(pki, &(fx_crl_opts){.next_update_s = 4}, NULL, 0, "crl-short");
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    app_tls *t = tls_new(srv, p, false);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    hs r;
    connect_as(t, c_uri, &r);
    CU_ASSERT_TRUE(r.server_ok);
    while (time(NULL) <= made + 5)
        sleep(1);
    connect_as(t, c_uri, &r);
    CU_ASSERT_FALSE(r.server_ok);
    CU_ASSERT_EQUAL(r.server_verify, X509_V_ERR_CRL_HAS_EXPIRED);
    app_tls_free(t);
}

/* fx_pki_tool, as ./run up will use it: its files make a working mutual-TLS pair. */
static void test_pki_tool(void)
{
    const char *bin = getenv("CDX_BIN_DIR");
    char tool[4096], out[4096], tdir[2048], path[4096];
    struct stat st;

    if (!bin) {
        fprintf(stderr, "\n  CDX_BIN_DIR unset: skipped\n");
        return;
    }
    snprintf(tool, sizeof(tool), "%s/tests/fixtures/fx_pki_tool", bin);
    snprintf(tdir, sizeof(tdir), "%s/dev-pki", dir);
    const char *argv[] = {tool, tdir, NULL};
    CU_ASSERT_EQUAL_FATAL(fx_run(argv, NULL, out, sizeof(out)), 0);
    snprintf(path, sizeof(path), "client_cert=%s/client.pem\n", tdir);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, path));
    snprintf(path, sizeof(path), "%s/client.key", tdir);
    CU_ASSERT_EQUAL(stat(path, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
    snprintf(path, sizeof(path), "%s/server.key", tdir);
    CU_ASSERT_EQUAL(stat(path, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
    /* The application certificate (a non-admin principal for the clients' tests). */
    snprintf(path, sizeof(path), "app_cert=%s/app.pem\n", tdir);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, path));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "app_principal=spiffe://cipherdex/dev-app\n"));
    snprintf(path, sizeof(path), "%s/app.key", tdir);
    CU_ASSERT_EQUAL(stat(path, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);

    app_config c;
    app_tls *t = NULL;
    app_config_init(&c);
    snprintf(c.tls_cert, sizeof(c.tls_cert), "%s/server.pem", tdir);
    snprintf(c.tls_key, sizeof(c.tls_key), "%s/server.key", tdir);
    snprintf(c.client_ca, sizeof(c.client_ca), "%s/ca.pem", tdir);
    CU_ASSERT_EQUAL_FATAL(app_tls_new(&c, &t), CDX_OK);

    SSL_CTX *cc = SSL_CTX_new(TLS_client_method());
    CU_ASSERT_PTR_NOT_NULL_FATAL(cc);
    CU_ASSERT_EQUAL(SSL_CTX_load_verify_file(cc, c.client_ca), 1);
    SSL_CTX_set_verify(cc, SSL_VERIFY_PEER, NULL);
    snprintf(path, sizeof(path), "%s/client.pem", tdir);
    CU_ASSERT_EQUAL(SSL_CTX_use_certificate_file(cc, path, SSL_FILETYPE_PEM), 1);
    snprintf(path, sizeof(path), "%s/client.key", tdir);
    CU_ASSERT_EQUAL(SSL_CTX_use_PrivateKey_file(cc, path, SSL_FILETYPE_PEM), 1);
    static const char *hosts[] = {"127.0.0.1", "::1", "localhost"};
    for (size_t i = 0; i < 3; i++) {
        hs r;
        handshake(t, NULL, cc, hosts[i], NULL, false, &r);
        CU_ASSERT_TRUE(r.server_ok && r.client_ok && r.data_ok);
        CU_ASSERT_STRING_EQUAL(r.principal, "uri:spiffe://cipherdex/dev-admin");
    }
    SSL_CTX_free(cc);
    app_tls_free(t);
    const char *bad[] = {tool, NULL};
    CU_ASSERT_EQUAL(fx_run(bad, NULL, NULL, 0), 2);
}

int main(void)
{
    static const fx_test tests[] = {
        {"accepted: URI, DNS and CN principals", test_accept_principals},
        {"client verifies the server's name and IP", test_server_name_verified},
        {"refused: no cert, other CA, revoked, EKU, expired, names", test_refused},
        {"principal rules", test_principal_rules},
        {"context settings", test_context_settings},
        {"TLS 1.2: off by default, ECDHE+AEAD only when allowed", test_tls12},
        {"no session tickets, no resumption", test_no_tickets},
        {"reload swaps certs and CRL; a failed reload keeps the old", test_reload},
        {"config errors name the file", test_config_errors},
        {"a CRL expiring while loaded refuses everyone", test_crl_expires_while_loaded},
        {"fx_pki_tool makes a working dev PKI", test_pki_tool},
    };
    static const fx_suite suite = {.name = "tls",
                                   .init = suite_init,
                                   .clean = suite_clean,
                                   .tests = tests,
                                   .ntests = FX_LEN(tests)};
    return fx_cunit_run(&suite, 1);
}
