/*
 * app_tls.h - the daemon's server-side TLS context (mutual TLS).
 *
 * Built from [server] tls_cert, tls_key, client_ca, crl and allow_tls12
 * (docs/TLS.md has the full list of what is accepted and refused):
 *   - TLS 1.3 only; with allow_tls12 also TLS 1.2 restricted to ECDHE key
 *     exchange with AEAD ciphers (AES-GCM, ChaCha20-Poly1305); ECDHE groups
 *     only (X25519, P-256, P-384), never finite-field DH;
 *   - no renegotiation, no session tickets, no session cache (so no
 *     resumption), no compression, no early data;
 *   - a client certificate is required; it must chain to client_ca, carry
 *     an extended key usage extension that lists clientAuth (a certificate
 *     without EKU is refused), not be revoked by the configured CRL, and
 *     name a usable principal (app_tls_principal's rules).
 *
 * Thread safety: app_tls_ssl_new and app_tls_reload may be called from any
 * thread; the context is swapped under a lock and every SSL keeps a
 * reference to the context it was made from, so connections already open
 * are not affected by a reload.
 *
 * OpenSSL errors are mapped here: the detail (cdx_err_detail) names the
 * file and what is wrong; the raw OpenSSL error strings go to the log
 * (event=tls_openssl_error).
 */
#ifndef APP_TLS_H
#define APP_TLS_H

#include <stddef.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "app_config.h"
#include "cdx_err.h"

typedef struct app_tls app_tls;

/*
 * Build a TLS context from cfg's [server] TLS keys (copied: cfg may go away
 * afterwards). Checks: every file readable and in PEM; the server key
 * matches the first certificate of tls_cert; that certificate is within its
 * validity period and may be used by a TLS server; every certificate in
 * client_ca is a CA within its validity period; every CRL in crl (optional)
 * is signed by a CA of client_ca and is current (nextUpdate not passed).
 * Errors:
 *   CDX_ERR_INVALID_ARGUMENT  cfg or out NULL, or cfg->insecure (no TLS then);
 *   CDX_ERR_CONFIG            a file is missing, unreadable or wrong; the
 *                             detail starts with the key and the path
 *                             ("tls_key /etc/c/server.key: does not match ...");
 *   CDX_ERR_INTERNAL          OpenSSL could not allocate or set up a context.
 */
cdx_err app_tls_new(const app_config *cfg, app_tls **out);

/* Free t (NULL: no-op). SSL objects made from it stay valid until freed. */
void app_tls_free(app_tls *t);

/*
 * Re-read tls_cert, tls_key, client_ca and crl from the paths given at
 * app_tls_new (for SIGHUP) and swap in a fresh context. Connections
 * already open keep the context they were made with. On any error the old
 * context stays in use.
 * Errors: as app_tls_new (CDX_ERR_CONFIG naming the file, CDX_ERR_INTERNAL).
 */
cdx_err app_tls_reload(app_tls *t);

/*
 * A new server-side SSL for one connection, from the current context; the
 * caller attaches it to a socket (SSL_set_fd or a bufferevent) and frees it
 * with SSL_free.
 * Returns NULL on failure with the detail set (CDX_ERR_INTERNAL: OpenSSL
 * could not allocate it).
 */
SSL *app_tls_ssl_new(app_tls *t);

/*
 * The typed principal (pol_principal.h) of the verified client certificate
 * of a completed handshake on ssl, NUL-terminated in out (cap >=
 * CDX_PRINCIPAL_MAX + 1): "uri:" and the first URI SAN, else "dns:" and the
 * first DNS SAN, else "cn:" and the subject's CN if there is exactly one.
 * The name must be 1..CDX_PRINCIPAL_VALUE_MAX bytes of printable ASCII
 * (0x21-0x7e) without `"` or `\` (no NUL, no space: safe to quote in a log
 * line).
 * Errors:
 *   CDX_ERR_INVALID_ARGUMENT  ssl or out NULL, cap < CDX_PRINCIPAL_MAX + 1;
 *   CDX_ERR_UNAUTHENTICATED   no peer certificate, it did not verify, no
 *                             URI/DNS SAN or CN, several CNs, or the name
 *                             breaks the length or character rules.
 */
cdx_err app_tls_principal(SSL *ssl, char *out, size_t cap);

/*
 * The SHA-256 fingerprint of the CA certificate that issued the verified
 * client certificate of a completed handshake (the second certificate of
 * the verified chain; the client's own when it is trusted directly).
 * Errors: CDX_ERR_UNAUTHENTICATED (no verified chain).
 */
cdx_err app_tls_issuer_sha256(SSL *ssl, uint8_t out[32]);

/*
 * The same rules applied to a certificate (used by the handshake's verify
 * callback, so a connection without a usable principal never completes).
 * Errors: as app_tls_principal, except that verification is not checked.
 */
cdx_err app_tls_principal_x509(X509 *cert, char *out, size_t cap);

#endif
