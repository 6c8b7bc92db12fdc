/*
 * pol_evidence.h - attestation evidence in the shape of
 * draft-ietf-rats-pkix-key-attestation (docs/ATTESTATION.md), sans-IO:
 * encoding what the appliance read from the token, parsing and verifying a
 * statement somebody hands over. No token access here (the signature is
 * made by the caller, on the token); every byte given to the parser is
 * treated as hostile, so it can be fuzzed (tests/fuzz/fuzz_evidence.c).
 *
 *   PkixEvidence ::= SEQUENCE {
 *       tbs                      TbsPkixEvidence,
 *       signatures               SEQUENCE SIZE (1..MAX) OF SignatureBlock,
 *       intermediateCertificates [0] IMPLICIT SEQUENCE OF Certificate OPTIONAL }
 *   TbsPkixEvidence ::= SEQUENCE {
 *       version          INTEGER (1),
 *       reportedEntities SEQUENCE SIZE (1..MAX) OF ReportedEntity }
 *   ReportedEntity ::= SEQUENCE {
 *       entityType         OBJECT IDENTIFIER,
 *       reportedAttributes SEQUENCE SIZE (1..MAX) OF ReportedAttribute }
 *   ReportedAttribute ::= SEQUENCE {
 *       attributeType OBJECT IDENTIFIER,
 *       value         AttributeValue OPTIONAL }   -- absent: the token did not say
 *   AttributeValue ::= CHOICE {
 *       bytes [0] IMPLICIT OCTET STRING, utf8String [1] IMPLICIT UTF8String,
 *       bool [2] IMPLICIT BOOLEAN, time [3] IMPLICIT GeneralizedTime,
 *       int [4] IMPLICIT INTEGER, oid [5] IMPLICIT OBJECT IDENTIFIER }
 *   SignatureBlock ::= SEQUENCE {
 *       sid                SEQUENCE { keyId [0] EXPLICIT OCTET STRING },
 *       signatureAlgorithm AlgorithmIdentifier,   -- ecdsa-with-SHA256, no parameters
 *       signatureValue     OCTET STRING }         -- DER ECDSA-Sig-Value
 *
 * keyId = SHA-256 of the attestation public key's SubjectPublicKeyInfo DER,
 * also the transaction claim attestation_key_id. The signature is ECDSA
 * P-256 with SHA-256 over the DER of TbsPkixEvidence. OIDs: one table,
 * pol_evidence_oids.h (provisional arc).
 *
 * The encoding is hand-written DER (not OpenSSL ASN1 templates): the parser
 * takes definite, minimal lengths only, low tag numbers only, and accepts a
 * statement only if encoding what it parsed gives back the very same bytes
 * (so BOOLEAN is 00/FF, INTEGERs are minimal, times are YYYYMMDDHHMMSSZ:
 * one statement, one encoding), with exactly one transaction, one platform
 * and one key entity in that order, every claim of the table under its own
 * entity with its own value type, required claims present, single claims
 * once. Unknown OIDs are refused.
 *
 * Thread-safety: no shared state; objects are not shared between threads.
 * Errors: CDX_ERR_INTEGRITY (a statement that does not parse, does not
 * verify, carries the wrong nonce or the wrong key), CDX_ERR_STALE (its
 * timestamp is outside the freshness window), CDX_ERR_INVALID_ARGUMENT (the
 * caller's arguments), CDX_ERR_RESOURCE_EXHAUSTED (memory); the detail says
 * which check failed.
 */
#ifndef POL_EVIDENCE_H
#define POL_EVIDENCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/evp.h>

#include "cdx_err.h"
#include "pol_evidence_oids.h"

/* Value types (the AttributeValue CHOICE tag numbers). */
typedef enum pol_ev_type {
    POL_EV_T_BYTES = 0,
    POL_EV_T_UTF8 = 1,
    POL_EV_T_BOOL = 2,
    POL_EV_T_TIME = 3,
    POL_EV_T_INT = 4,
    POL_EV_T_OID = 5,
} pol_ev_type;

enum { POL_EV_F_R = 1, POL_EV_F_M = 2 }; /* required; may repeat */

#define POL_EV_ENUM_ENT(e, n, name) e = n,
typedef enum pol_ev_entity { CDX_EV_ENTITIES(POL_EV_ENUM_ENT) POL_EV_NENTITIES } pol_ev_entity;
#undef POL_EV_ENUM_ENT

#define POL_EV_ENUM_CLAIM(e, ent, n, t, f, name) e,
typedef enum pol_ev_claim { CDX_EV_CLAIMS(POL_EV_ENUM_CLAIM) POL_EV_NCLAIMS } pol_ev_claim;
#undef POL_EV_ENUM_CLAIM

/* Version of TbsPkixEvidence this code writes and reads. */
#define POL_EV_VERSION 1

/* Names ("transaction", "nonce") and the dotted OID of a claim; static strings, "?" if out of
 * range. Pure. */
const char *pol_ev_entity_name(pol_ev_entity e);
const char *pol_ev_claim_name(pol_ev_claim c);
pol_ev_entity pol_ev_claim_entity(pol_ev_claim c);
pol_ev_type pol_ev_claim_type(pol_ev_claim c);
/* "2.25.….1.2.3" into buf (at least 80 bytes). */
void pol_ev_claim_oid_text(pol_ev_claim c, char *buf, size_t cap);

/* One claim's value, as built or parsed (pointers into the builder / parsed copy). */
typedef struct pol_ev_value {
    pol_ev_claim claim;
    bool present; /* false: the attribute carries no value (the token did not report it) */
    pol_ev_type type;
    const uint8_t *data; /* bytes / utf8 / oid contents */
    size_t len;
    bool b;    /* bool */
    int64_t i; /* int; time: seconds since the epoch (UTC) */
} pol_ev_value;

/* ---- building (the appliance) ---- */

typedef struct pol_ev_builder pol_ev_builder;

/* Errors: CDX_ERR_RESOURCE_EXHAUSTED. */
CDX_MUST_CHECK cdx_err pol_ev_builder_new(pol_ev_builder **out);
/* NULL is a no-op. */
void pol_ev_builder_free(pol_ev_builder *b);

/*
 * Add a claim (its entity comes from the table). The type must be the
 * claim's (CDX_ERR_INVALID_ARGUMENT otherwise); data is copied. A claim
 * added twice that may not repeat is CDX_ERR_INVALID_ARGUMENT.
 * pol_ev_add_absent: the attribute without a value ("the token did not say").
 * Errors: CDX_ERR_INVALID_ARGUMENT, CDX_ERR_RESOURCE_EXHAUSTED.
 */
CDX_MUST_CHECK cdx_err pol_ev_add_bytes(pol_ev_builder *b, pol_ev_claim c, const void *data,
                                        size_t len);
CDX_MUST_CHECK cdx_err pol_ev_add_utf8(pol_ev_builder *b, pol_ev_claim c, const char *s);
CDX_MUST_CHECK cdx_err pol_ev_add_bool(pol_ev_builder *b, pol_ev_claim c, bool v);
CDX_MUST_CHECK cdx_err pol_ev_add_int(pol_ev_builder *b, pol_ev_claim c, int64_t v);
CDX_MUST_CHECK cdx_err pol_ev_add_time(pol_ev_builder *b, pol_ev_claim c, int64_t unix_s);
CDX_MUST_CHECK cdx_err pol_ev_add_absent(pol_ev_builder *b, pol_ev_claim c);

/*
 * The DER of TbsPkixEvidence (the bytes to sign); *out malloc'ed.
 * Errors: CDX_ERR_INVALID_ARGUMENT (a required claim is missing, or the
 * result would exceed CDX_EVIDENCE_MAX), CDX_ERR_RESOURCE_EXHAUSTED.
 */
CDX_MUST_CHECK cdx_err pol_ev_builder_tbs(const pol_ev_builder *b, uint8_t **out, size_t *len);

/*
 * The DER PkixEvidence from the signed TBS, the key id (SHA-256 of the
 * signing key's SPKI DER), the signature (DER ECDSA-Sig-Value) and, if
 * certs_len > 0, the DER certificates (concatenated, each a SEQUENCE) for
 * intermediateCertificates. *out malloc'ed.
 * Errors: CDX_ERR_INVALID_ARGUMENT (sizes, certificates not DER
 * SEQUENCEs), CDX_ERR_RESOURCE_EXHAUSTED.
 */
CDX_MUST_CHECK cdx_err pol_ev_assemble(const uint8_t *tbs, size_t tbs_len, const uint8_t key_id[32],
                                       const uint8_t *sig, size_t sig_len, const uint8_t *certs,
                                       size_t certs_len, uint8_t **out, size_t *len);

/* SHA-256 of pub's SubjectPublicKeyInfo DER. Errors: CDX_ERR_INVALID_ARGUMENT. */
CDX_MUST_CHECK cdx_err pol_ev_key_id(EVP_PKEY *pub, uint8_t out[32]);

/*
 * r||s (64 bytes, as PKCS#11 CKM_ECDSA returns them for P-256) as a DER
 * ECDSA-Sig-Value; *out malloc'ed. Errors: CDX_ERR_INVALID_ARGUMENT,
 * CDX_ERR_RESOURCE_EXHAUSTED.
 */
CDX_MUST_CHECK cdx_err pol_ev_sig_der(const uint8_t rs[64], uint8_t **out, size_t *len);

/* ---- parsing and verifying (any verifier) ---- */

typedef struct pol_ev pol_ev;

/*
 * Parse a DER PkixEvidence strictly (see above). The input is copied.
 * Errors: CDX_ERR_INTEGRITY (the detail names the first problem and its
 * offset), CDX_ERR_RESOURCE_EXHAUSTED.
 */
CDX_MUST_CHECK cdx_err pol_ev_parse(const uint8_t *der, size_t len, pol_ev **out);
/* NULL is a no-op. */
void pol_ev_free(pol_ev *ev);

/*
 * Verify: the signature over the TBS bytes with `pub` (ECDSA P-256,
 * SHA-256), the signer key id and the attestation_key_id claim equal to
 * SHA-256 of pub's SPKI, the nonce claim equal to `nonce`, and the
 * timestamp no older than max_age_s before now_s (max_age_s 0: not checked)
 * and no later than CDX_ATTEST_CLOCK_SKEW_S after it.
 * Errors: CDX_ERR_INTEGRITY (signature, key, nonce), CDX_ERR_STALE
 * (timestamp), CDX_ERR_INVALID_ARGUMENT (pub not an EC P-256 key).
 */
CDX_MUST_CHECK cdx_err pol_ev_verify(const pol_ev *ev, EVP_PKEY *pub, const uint8_t *nonce,
                                     size_t nonce_len, int64_t now_s, int64_t max_age_s);

/* The claims in statement order. */
size_t pol_ev_count(const pol_ev *ev);
const pol_ev_value *pol_ev_at(const pol_ev *ev, size_t i);
/* The first value of claim c, or NULL. */
const pol_ev_value *pol_ev_get(const pol_ev *ev, pol_ev_claim c);

/* Where the signed bytes are in the parsed copy (for tests and tools). */
void pol_ev_tbs(const pol_ev *ev, const uint8_t **tbs, size_t *len);
/* The signature (DER ECDSA-Sig-Value) and the signer's key id. */
void pol_ev_signature(const pol_ev *ev, const uint8_t **sig, size_t *len, const uint8_t **key_id);
/* intermediateCertificates' contents (the DER certificates one after another; 0 if absent). */
void pol_ev_certs(const pol_ev *ev, const uint8_t **der, size_t *len);

/*
 * A value as text: hex for bytes, the string (non-printable bytes as \xNN)
 * for utf8, true/false, RFC 3339 UTC for times, decimal for ints (hex
 * 0x... for mechanisms and key types), "n/a" when absent. Truncated to cap.
 */
void pol_ev_value_text(const pol_ev_value *v, char *buf, size_t cap);

#endif
