/*
 * test_record.c - the record envelope (engine/eng_record.h): the worked
 * vector of docs/RECORDS.md §4 (read from the document itself), seal/open
 * round trips, and every way a record can be altered or misplaced: each
 * header byte, each AD field, the ciphertext, the tag, the length, another
 * kind, token, scope, epoch, version or subkey.
 *
 * The subkeys come from a throwaway SoftHSM token holding the index key of
 * docs/KEYS.md (bytes 00..1f, index id a0..af), as in the appliance.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>
#include <openssl/evp.h>

#include "cdx_err.h"
#include "cdx_hex.h"
#include "eng_buf.h"
#include "eng_record.h"
#include "fx_cunit.h"
#include "fx_engine.h"
#include "hsm_custody.h"
#include "hsm_admin.h"
#include "hsm_keys.h"
#include "hsm_subkey.h"

#ifndef CDX_RECORDS_MD
#error "CDX_RECORDS_MD (path of docs/RECORDS.md) must be defined by the build"
#endif

static fx_token *tok;
static hsm_custody *cust;
static hsm_subkey *k_payload, *k_manifest;
static uint8_t index_id[16], kcv[8];
static char *doc;        /* docs/RECORDS.md */
static const char *sec4; /* its section 4, the worked vector */

/* ---- reading the document ---- */

/* Hex digits of the first `...` after `label` in the document (spaces
 * dropped) into out; returns the byte count, 0 when absent or not hex. */
static size_t doc_hex(const char *label, uint8_t *out, size_t cap)
{
    const char *p = strstr(sec4, label);
    if (!p || !(p = strchr(p + strlen(label), '`')))
        return 0;
    const char *e = strchr(++p, '`');
    char hx[1024];
    size_t n = 0;
    for (; p && p < e && n + 1 < sizeof(hx); p++)
        if (*p != ' ')
            hx[n++] = *p;
    hx[n] = '\0';
    if (n % 2 || n / 2 > cap || cdx_hex_decode(hx, out, n / 2) != 0)
        return 0;
    return n / 2;
}

/* doc_hex() that must find exactly `want` bytes. */
#define DOC_HEX(label, buf, want) CU_ASSERT_EQUAL_FATAL(doc_hex(label, buf, sizeof(buf)), (want))

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    if (s)
        s[n] = '\0';
    fclose(f);
    return s;
}

/* ---- suite ---- */

static int suite_init(void)
{
    uint8_t key[32], want_kcv[8];
    for (int i = 0; i < 32; i++)
        key[i] = (uint8_t)i;
    for (int i = 0; i < 16; i++)
        index_id[i] = (uint8_t)(0xa0 + i);
    doc = slurp(CDX_RECORDS_MD);
    sec4 = doc ? strstr(doc, "\n## 4. Worked test vector") : NULL;
    if (!sec4 || fx_engine_custody("rectok", 60000, &tok, &cust))
        return -1;
    if (hsm_index_key_import(cust, index_id, key, kcv) != CDX_OK)
        return -1;
    if (doc_hex("`a0a1a2a3a4a5a6a7a8a9aaabacadaeaf`, the KCV ", want_kcv, sizeof(want_kcv)) != 8 ||
        memcmp(kcv, want_kcv, 8) != 0) {
        fprintf(stderr, "the index key's KCV is not the one docs/RECORDS.md gives\n");
        return -1;
    }
    hsm_key_ref ref = {.kind = HSM_KEY_INDEX};
    memcpy(ref.id, index_id, 16);
    if (hsm_subkey_get(cust, &ref, kcv, HSM_P_PAYLOAD, 0, &k_payload) != CDX_OK ||
        hsm_subkey_get(cust, &ref, kcv, HSM_P_MANIFEST, 0, &k_manifest) != CDX_OK)
        return -1;
    return 0;
}

static int suite_clean(void)
{
    hsm_subkey_release(k_payload);
    hsm_subkey_release(k_manifest);
    fx_engine_custody_free(&tok, &cust);
    free(doc);
    return 0;
}

static const uint8_t seg_token[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
static const uint8_t zero_token[16];

static eng_rec_id search_id(uint64_t version)
{
    return (eng_rec_id){.scope = index_id,
                        .kind = ENG_K_SEARCH,
                        .token = seg_token,
                        .epoch = 0,
                        .version = version};
}

/* ---- the worked vector of docs/RECORDS.md §4 ---- */

static void test_doc_subkeys(void)
{
    uint8_t want[32];
    DOC_HEX("`K_payload` = ", want, 32);
    CU_ASSERT_EQUAL(memcmp(hsm_subkey_bytes(k_payload), want, 32), 0);
    DOC_HEX("`K_manifest` = ", want, 32);
    CU_ASSERT_EQUAL(memcmp(hsm_subkey_bytes(k_manifest), want, 32), 0);
}

/* K_rec = HMAC(K_payload, message): the message layout and the key. */
static void test_doc_record_key(void)
{
    uint8_t msg[45], want_msg[45], krec[32], want[32];
    DOC_HEX("| K_rec message (45 bytes) |", want_msg, 45);
    size_t o = 0;
    memcpy(msg, "cipherdex/v1/record", 19);
    o = 19;
    msg[o++] = 0;
    msg[o++] = ENG_K_SEARCH;
    memcpy(msg + o, seg_token, 16);
    o += 16;
    eng_be64(msg + o, 1);
    CU_ASSERT_EQUAL(memcmp(msg, want_msg, 45), 0);
    CU_ASSERT_EQUAL_FATAL(hsm_subkey_hmac(k_payload, msg, 45, krec), CDX_OK);
    DOC_HEX("| K_rec |", want, 32);
    CU_ASSERT_EQUAL(memcmp(krec, want, 32), 0);
    /* The head record's key: kind 2, token zeros, version 1, under K_manifest. */
    msg[20] = ENG_K_HEAD;
    memset(msg + 21, 0, 16);
    CU_ASSERT_EQUAL_FATAL(hsm_subkey_hmac(k_manifest, msg, 45, krec), CDX_OK);
    DOC_HEX("under `K_manifest`:\nK_rec = ", want, 32);
    CU_ASSERT_EQUAL(memcmp(krec, want, 32), 0);
}

/* The AD, header, ciphertext and tag of the table, recomputed with plain
 * AES-256-GCM: the document's layout is the one the code opens. */
static void test_doc_gcm(void)
{
    uint8_t krec[32], ad[63], hdr[44], pt[23], ct[23], tag[16], rec[83];
    DOC_HEX("| K_rec |", krec, 32);
    DOC_HEX("| AD (63 bytes) |", ad, 63);
    DOC_HEX("| header (44 bytes) |", hdr, 44);
    DOC_HEX("| plaintext (23 bytes) |", pt, 23);
    DOC_HEX("| ciphertext |", ct, 23);
    DOC_HEX("| tag |", tag, 16);
    DOC_HEX("| whole record (83 bytes) |", rec, 83);
    CU_ASSERT_EQUAL(memcmp(rec, hdr, 44), 0);
    CU_ASSERT_EQUAL(memcmp(rec + 44, ct, 23), 0);
    CU_ASSERT_EQUAL(memcmp(rec + 67, tag, 16), 0);
    /* AD = format, scope, kind, token, epoch, version, write time, KCV. */
    CU_ASSERT_EQUAL(eng_rd16(ad), 1);
    CU_ASSERT_EQUAL(memcmp(ad + 2, index_id, 16), 0);
    CU_ASSERT_EQUAL(ad[18], ENG_K_SEARCH);
    CU_ASSERT_EQUAL(memcmp(ad + 19, seg_token, 16), 0);
    CU_ASSERT_EQUAL(eng_rd32(ad + 35), 0);
    CU_ASSERT_EQUAL(eng_rd64(ad + 39), 1);
    CU_ASSERT_EQUAL(eng_rd64(ad + 47), 1700000000000ull);
    CU_ASSERT_EQUAL(memcmp(ad + 55, kcv, 8), 0);

    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    uint8_t out[23], got_tag[16];
    int l = 0, l2 = 0;
    CU_ASSERT_FATAL(c != NULL);
    CU_ASSERT_EQUAL(EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, krec, hdr + 32), 1);
    CU_ASSERT_EQUAL(EVP_EncryptUpdate(c, NULL, &l, ad, 63), 1);
    CU_ASSERT_EQUAL(EVP_EncryptUpdate(c, out, &l, pt, 23), 1);
    CU_ASSERT_EQUAL(EVP_EncryptFinal_ex(c, out + l, &l2), 1);
    CU_ASSERT_EQUAL(EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, got_tag), 1);
    EVP_CIPHER_CTX_free(c);
    CU_ASSERT_EQUAL(memcmp(out, ct, 23), 0);
    CU_ASSERT_EQUAL(memcmp(got_tag, tag, 16), 0);
}

/* eng_rec_open accepts the document's record and returns its plaintext. */
static void test_doc_open(void)
{
    uint8_t rec[83], pt[23];
    DOC_HEX("| whole record (83 bytes) |", rec, 83);
    DOC_HEX("| plaintext (23 bytes) |", pt, 23);
    eng_rec_id id = search_id(1);
    eng_rec_hdr h;
    eng_buf out;
    eng_buf_init(&out);
    CU_ASSERT_EQUAL_FATAL(eng_rec_open(k_payload, &id, kcv, rec, sizeof(rec), &h, &out), CDX_OK);
    CU_ASSERT_EQUAL(out.len, 23);
    CU_ASSERT_EQUAL(memcmp(out.data, pt, 23), 0);
    CU_ASSERT_EQUAL(h.format, 1);
    CU_ASSERT_EQUAL(h.kind, ENG_K_SEARCH);
    CU_ASSERT_EQUAL(h.epoch, 0);
    CU_ASSERT_EQUAL(h.version, 1);
    CU_ASSERT_EQUAL(h.write_time, 1700000000000ull);
    CU_ASSERT_EQUAL(memcmp(h.kcv, kcv, 8), 0);
    eng_buf_free(&out);
    /* Under the other subkey the same bytes do not open. */
    eng_buf_init(&out);
    CU_ASSERT_EQUAL(eng_rec_open(k_manifest, &id, kcv, rec, sizeof(rec), &h, &out),
                    CDX_ERR_INTEGRITY);
    eng_buf_free(&out);
}

/* ---- round trip ---- */

static cdx_err open_into(const hsm_subkey *k, const eng_rec_id *id, const uint8_t *want_kcv,
                         const uint8_t *rec, size_t len, eng_buf *out)
{
    eng_rec_hdr h;
    eng_buf_init(out);
    return eng_rec_open(k, id, want_kcv, rec, len, &h, out);
}

static void test_round_trip(void)
{
    /* 0 included: an empty plaintext opens into an empty buffer. */
    static const size_t lens[] = {0, 1, 15, 16, 17, 23, 1000, 70000};
    eng_sealer s = {0};
    CU_ASSERT_EQUAL_FATAL(eng_sealer_init(&s, k_payload), CDX_OK);
    for (size_t i = 0; i < FX_LEN(lens); i++) {
        size_t n = lens[i];
        uint8_t *pt = malloc(n + 1);
        CU_ASSERT_FATAL(pt != NULL);
        CU_ASSERT_EQUAL(eng_random(pt, n + 1), CDX_OK);
        eng_rec_id id = search_id(7 + i);
        for (int with_sealer = 0; with_sealer < 2; with_sealer++) {
            eng_buf rec, rec2, out;
            eng_buf_init(&rec);
            eng_buf_init(&rec2);
            cdx_err e = with_sealer ? eng_rec_seal_s(&s, &id, 1234, kcv, pt, n, &rec)
                                    : eng_rec_seal(k_payload, &id, 1234, kcv, pt, n, &rec);
            CU_ASSERT_EQUAL_FATAL(e, CDX_OK);
            CU_ASSERT_EQUAL(rec.len, n + ENG_REC_OVERHEAD);
            eng_rec_hdr h;
            CU_ASSERT_EQUAL(eng_rec_header(rec.data, rec.len, &h), CDX_OK);
            CU_ASSERT_EQUAL(h.kind, ENG_K_SEARCH);
            CU_ASSERT_EQUAL(h.version, 7 + i);
            CU_ASSERT_EQUAL(h.write_time, 1234);
            CU_ASSERT_EQUAL(memcmp(h.kcv, kcv, 8), 0);
            e = open_into(k_payload, &id, kcv, rec.data, rec.len, &out);
            if (e)
                fprintf(stderr, "\n  %zu bytes: %s: %s", n, cdx_err_name(e), cdx_err_detail());
            CU_ASSERT_EQUAL(e, CDX_OK);
            CU_ASSERT_EQUAL(out.len, n);
            CU_ASSERT(n == 0 || memcmp(out.data, pt, n) == 0);
            eng_buf_free(&out);
            /* Nonces are random: sealing again gives another record. */
            CU_ASSERT_EQUAL(eng_rec_seal(k_payload, &id, 1234, kcv, pt, n, &rec2), CDX_OK);
            CU_ASSERT(rec2.len == rec.len && memcmp(rec2.data + 32, rec.data + 32, 12) != 0);
            eng_buf_free(&rec);
            eng_buf_free(&rec2);
        }
        free(pt);
    }
    eng_sealer_free(&s);
}

/* ---- tampering ---- */

static eng_buf sealed(const eng_rec_id *id, size_t n)
{
    uint8_t pt[64];
    for (size_t i = 0; i < sizeof(pt); i++)
        pt[i] = (uint8_t)(i * 7);
    eng_buf rec;
    eng_buf_init(&rec);
    CU_ASSERT_EQUAL(eng_rec_seal(k_payload, id, 1700000000000ull, kcv, pt, n, &rec), CDX_OK);
    return rec;
}

/* Every bit of every byte, header to tag, flipped: refused, never garbage. */
static void test_tamper_every_byte(void)
{
    eng_rec_id id = search_id(3);
    eng_buf rec = sealed(&id, 40);
    CU_ASSERT_FATAL(eng_buf_ok(&rec) && rec.len == 40 + ENG_REC_OVERHEAD);
    size_t bad = 0;
    for (size_t i = 0; i < rec.len; i++)
        for (int bit = 0; bit < 8; bit++) {
            rec.data[i] ^= (uint8_t)(1u << bit);
            eng_buf out;
            cdx_err want = CDX_ERR_INTEGRITY; /* the KCV bytes too: a store problem (L2) */
            cdx_err e = open_into(k_payload, &id, kcv, rec.data, rec.len, &out);
            if (e != want) {
                if (bad++ < 5)
                    fprintf(stderr, "\n  byte %zu bit %d: %s, want %s", i, bit, cdx_err_name(e),
                            cdx_err_name(want));
            }
            CU_ASSERT_EQUAL(out.len, 0);
            eng_buf_free(&out);
            /* Without an expected KCV, the KCV is still authenticated (AD). */
            if (i >= 24 && i < 32) {
                CU_ASSERT_EQUAL(open_into(k_payload, &id, NULL, rec.data, rec.len, &out),
                                CDX_ERR_INTEGRITY);
                eng_buf_free(&out);
            }
            rec.data[i] ^= (uint8_t)(1u << bit);
        }
    CU_ASSERT_EQUAL(bad, 0);
    eng_buf out;
    CU_ASSERT_EQUAL(open_into(k_payload, &id, kcv, rec.data, rec.len, &out), CDX_OK);
    eng_buf_free(&out);
    eng_buf_free(&rec);
}

/* Cut short (below the envelope, and by one byte of tag) or grown by a byte. */
static void test_tamper_length(void)
{
    eng_rec_id id = search_id(3);
    eng_buf rec = sealed(&id, 10);
    eng_buf out;
    static const size_t cuts[] = {0, 1, ENG_REC_HDR - 1, ENG_REC_HDR, ENG_REC_OVERHEAD - 1};
    for (size_t i = 0; i < FX_LEN(cuts); i++) {
        CU_ASSERT_EQUAL(open_into(k_payload, &id, kcv, rec.data, cuts[i], &out), CDX_ERR_INTEGRITY);
        eng_buf_free(&out);
    }
    CU_ASSERT_EQUAL(open_into(k_payload, &id, kcv, rec.data, rec.len - 1, &out), CDX_ERR_INTEGRITY);
    eng_buf_free(&out);
    eng_buf_put(&rec, "", 1);
    CU_ASSERT_EQUAL(open_into(k_payload, &id, kcv, rec.data, rec.len, &out), CDX_ERR_INTEGRITY);
    eng_buf_free(&out);
    eng_rec_hdr h;
    CU_ASSERT_EQUAL(eng_rec_header(rec.data, ENG_REC_HDR - 1, &h), CDX_ERR_INTEGRITY);
    eng_buf_free(&rec);
}

/* The record moved or replayed: another scope, kind, token, epoch or version
 * expected by the reader than the one it was sealed for. */
static void test_misplaced(void)
{
    eng_rec_id id = search_id(5);
    eng_buf rec = sealed(&id, 20);
    uint8_t other[16];
    memcpy(other, index_id, 16);
    other[15] ^= 1;
    eng_rec_id alt[] = {
        {.scope = other, .kind = ENG_K_SEARCH, .token = seg_token, .version = 5},     /* index */
        {.scope = index_id, .kind = ENG_K_VECTORS, .token = seg_token, .version = 5}, /* kind */
        {.scope = index_id, .kind = ENG_K_SEARCH, .token = zero_token, .version = 5}, /* swap */
        {.scope = index_id, .kind = ENG_K_SEARCH, .token = seg_token, .epoch = 1, .version = 5},
        {.scope = index_id, .kind = ENG_K_SEARCH, .token = seg_token, .version = 4}, /* replay */
        {.scope = index_id, .kind = ENG_K_SEARCH, .token = seg_token, .version = 6},
    };
    eng_buf out;
    for (size_t i = 0; i < FX_LEN(alt); i++) {
        CU_ASSERT_EQUAL(open_into(k_payload, &alt[i], kcv, rec.data, rec.len, &out),
                        CDX_ERR_INTEGRITY);
        CU_ASSERT_EQUAL(out.len, 0);
        eng_buf_free(&out);
    }
    /* Another key's KCV expected: refused before any decryption, as INTEGRITY (a record
     * written under another key is the store's problem; the token's own KCV is checked when
     * the subkey is derived: review L2). */
    uint8_t kcv2[8];
    memcpy(kcv2, kcv, 8);
    kcv2[0] ^= 0x80;
    CU_ASSERT_EQUAL(open_into(k_payload, &id, kcv2, rec.data, rec.len, &out), CDX_ERR_INTEGRITY);
    CU_ASSERT_TRUE(fx_detail_has("moved from another index"));
    eng_buf_free(&out);
    /* Another purpose's subkey. */
    CU_ASSERT_EQUAL(open_into(k_manifest, &id, kcv, rec.data, rec.len, &out), CDX_ERR_INTEGRITY);
    eng_buf_free(&out);
    CU_ASSERT_EQUAL(open_into(k_payload, &id, kcv, rec.data, rec.len, &out), CDX_OK);
    eng_buf_free(&out);
    eng_buf_free(&rec);
}

int main(void)
{
    static const fx_test tests[] = {
        {"RECORDS.md vector: K_payload, K_manifest", test_doc_subkeys},
        {"RECORDS.md vector: K_rec message and keys", test_doc_record_key},
        {"RECORDS.md vector: AD, header, AES-256-GCM", test_doc_gcm},
        {"RECORDS.md vector: eng_rec_open", test_doc_open},
        {"seal/open round trip, sealer and plain", test_round_trip},
        {"every bit of every byte flipped", test_tamper_every_byte},
        {"truncated and extended", test_tamper_length},
        {"other scope, kind, token, epoch, version, KCV, subkey", test_misplaced},
    };
    static const fx_suite suite = {.name = "record",
                                   .init = suite_init,
                                   .clean = suite_clean,
                                   .tests = tests,
                                   .ntests = FX_LEN(tests)};
    return fx_cunit_run(&suite, 1);
}
