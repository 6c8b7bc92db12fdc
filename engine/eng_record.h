/*
 * eng_record.h - every stored record: a clear header, then AES-256-GCM.
 *
 *   header (44 bytes, clear):
 *     be16 format (1) | u8 kind | u8 flags (0) | be32 epoch | be64 version |
 *     be64 write_time (ms, UTC) | kcv[8] | nonce[12]
 *   ciphertext | tag[16]
 *
 *   K_rec = HMAC-SHA256(K_purpose, "cipherdex/v1/record" 0x00 kind token[16] be64(version))
 *   AD    = be16(format) scope_id[16] kind token[16] be32(epoch) be64(version)
 *           be64(write_time) kcv[8]
 *
 * scope_id is the index id (or the deployment id for catalog records), token
 * the record's identity (segment token, manifest token, bucket number...), so
 * a record moved to another key, another index, another version or another
 * kind fails authentication. The nonce is random (96 bits) and every record
 * has its own key, far from GCM's per-key limits. The KCV in the header is
 * compared with the expected one *before* anything is decrypted: a different
 * key behind the same label is KEY_REPLACED, never garbage.
 * docs/RECORDS.md gives the encodings byte-exact.
 */
#ifndef ENG_RECORD_H
#define ENG_RECORD_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/types.h>

#include "cdx_err.h"
#include "cdx_limits.h"
#include "eng_buf.h"
#include "hsm_subkey.h"

#define ENG_REC_FORMAT   1
#define ENG_REC_HDR      44
#define ENG_REC_TAG      16
#define ENG_REC_OVERHEAD (ENG_REC_HDR + ENG_REC_TAG)

typedef enum eng_kind {
    ENG_K_CATALOG = 1,   /* root key, purpose catalog */
    ENG_K_HEAD = 2,      /* manifest purpose */
    ENG_K_MANIFEST = 3,  /* manifest purpose */
    ENG_K_BUCKET = 4,    /* manifest purpose: id-map bucket */
    ENG_K_SEARCH = 5,    /* payload purpose: codes, ids, tombstones */
    ENG_K_VECTORS = 6,   /* payload purpose: original vectors */
    ENG_K_META = 7,      /* payload purpose: metadata */
    ENG_K_CONTENT = 8,   /* content purpose */
    ENG_K_CENTROIDS = 9, /* manifest purpose: centroids + quantiser */
    ENG_K_CURSOR = 10,   /* query purpose: sealed cursors handed to clients */
    ENG_K_KEYCLAIM = 11, /* root key, purpose catalog: the index a token key belongs to */
} eng_kind;

/* "search", "manifest", ... for messages. */
const char *eng_kind_name(eng_kind k);

typedef struct eng_rec_hdr {
    uint16_t format;
    uint8_t kind;
    uint32_t epoch;
    uint64_t version;
    uint64_t write_time;
    uint8_t kcv[CDX_KCV_LEN];
} eng_rec_hdr;

/* Everything that names a record. */
typedef struct eng_rec_id {
    const uint8_t *scope; /* 16 bytes */
    eng_kind kind;
    const uint8_t *token; /* 16 bytes */
    uint32_t epoch;
    uint64_t version;
} eng_rec_id;

/*
 * Seal plaintext into out (appended). kcv NULL = zeros (kinds without one).
 * Errors: CDX_ERR_INTERNAL (OpenSSL), CDX_ERR_RESOURCE_EXHAUSTED.
 */
cdx_err eng_rec_seal(const hsm_subkey *k, const eng_rec_id *id, uint64_t write_time,
                     const uint8_t *kcv, const uint8_t *pt, size_t ptlen, eng_buf *out);

/*
 * A sealer seals many records under one subkey: the HMAC that derives each
 * K_rec is keyed once (re-initialised per record), the AES-GCM context is
 * re-keyed instead of rebuilt, and nonces come from a pool drawn in one
 * RAND_bytes call. The records are byte-for-byte what eng_rec_seal makes.
 * It holds OpenSSL state keyed with the subkey: free it before the subkey
 * handle is released, and use one sealer per thread.
 */
#define ENG_NONCE_POOL 32 /* nonces drawn at once */

typedef struct eng_sealer {
    EVP_MAC_CTX *mac; /* NULL: not initialised */
    EVP_CIPHER_CTX *gcm;
    uint8_t pool[ENG_NONCE_POOL * 12];
    size_t pool_left; /* unused nonces at the end of pool */
} eng_sealer;

/* Errors: CDX_ERR_INTERNAL (OpenSSL), CDX_ERR_RESOURCE_EXHAUSTED. */
cdx_err eng_sealer_init(eng_sealer *s, const hsm_subkey *k);
/* Wipe and free (a zeroed or freed sealer is a no-op). */
void eng_sealer_free(eng_sealer *s);
/* HMAC-SHA256(subkey, msg), like hsm_subkey_hmac. Errors: CDX_ERR_INTERNAL. */
cdx_err eng_sealer_hmac(eng_sealer *s, const void *msg, size_t len, uint8_t out[32]);
/*
 * Seal in place: out holds, from offset `at`, ENG_REC_HDR reserved bytes and
 * then the plaintext up to out->len. Fills the header, encrypts in place and
 * appends the tag. On failure out is cut back to `at` (plaintext wiped).
 * Errors: CDX_ERR_INTERNAL (OpenSSL), CDX_ERR_RESOURCE_EXHAUSTED.
 */
cdx_err eng_rec_seal_at(eng_sealer *s, const eng_rec_id *id, uint64_t write_time,
                        const uint8_t *kcv, eng_buf *out, size_t at);
/* eng_rec_seal with a sealer. */
cdx_err eng_rec_seal_s(eng_sealer *s, const eng_rec_id *id, uint64_t write_time, const uint8_t *kcv,
                       const uint8_t *pt, size_t ptlen, eng_buf *out);

/*
 * Parse the clear header. Errors: CDX_ERR_INTEGRITY (too short, unknown format).
 */
cdx_err eng_rec_header(const uint8_t *rec, size_t len, eng_rec_hdr *h);

/*
 * Authenticate and decrypt. The header's kind and version must equal id's
 * (a record of another version is a replay: INTEGRITY), its KCV must equal
 * expected_kcv when given. A KCV that differs is INTEGRITY too: the caller's
 * subkey was derived with the same expected KCV, so the token key itself
 * checked out and the record is what is wrong (moved from another index or
 * forged in the store: a store problem, not an HSM one; review L2). Plaintext
 * appended to out. Errors: CDX_ERR_INTEGRITY, CDX_ERR_INTERNAL.
 */
cdx_err eng_rec_open(const hsm_subkey *k, const eng_rec_id *id, const uint8_t *expected_kcv,
                     const uint8_t *rec, size_t len, eng_rec_hdr *h, eng_buf *out);

/* Random bytes from OpenSSL's DRBG (nonces, salts, tokens). Errors: CDX_ERR_INTERNAL. */
cdx_err eng_random(void *buf, size_t n);

#endif
