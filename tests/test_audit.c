/*
 * test_audit.c - the audit trail's record chain (policy/pol_audit.c): a
 * chain verifies; every tamper case is caught and named: an edited, a
 * deleted, a reordered, an inserted (forged without the key), a spliced
 * record, a cut tail (against the checkpoint interval), and a chain
 * continued across files (rotation).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "cdx_err.h"
#include "fx_cunit.h"
#include "pol_audit.h"

/* The test's stand-in for the token-derived audit subkey. */
static cdx_err mac_with(void *arg, const void *msg, size_t len, uint8_t out[32])
{
    unsigned n = 32;
    return HMAC(EVP_sha256(), arg, 32, msg, len, out, &n) ? CDX_OK
                                                          : cdx_fail(CDX_ERR_INTERNAL, "HMAC");
}

static uint8_t key[32], other_key[32];

#define NREC 8
static char lines[NREC][POL_AUDIT_LINE_MAX];
static size_t lens[NREC];
static const uint64_t T0 = 1800000000000ull;

/* NREC records: start, requests, a checkpoint, and a stop at the end (clean) or not. */
static void write_chain(bool clean)
{
    pol_audit_pos pos = {0};
    static const char *const bodies[NREC] = {
        "kind=start version=1",
        "kind=request principal=\"uri:spiffe://a\" op=query index_id=00 code=OK",
        "kind=key_use purpose=query epoch=0 source=token",
        "kind=request principal=\"uri:spiffe://b\" op=get index_id=11 code=PERMISSION_DENIED",
        "kind=checkpoint records=4",
        "kind=request principal=\"uri:spiffe://a\" op=upsert index_id=00 items=3 code=OK",
        "kind=policy_reload result=ok",
        "kind=stop"};
    for (int i = 0; i < NREC; i++) {
        const char *b = bodies[i];
        if (i == NREC - 1 && !clean)
            b = "kind=request op=health code=OK";
        CU_ASSERT_EQUAL_FATAL(pol_audit_append(&pos, T0 + 1000u * (unsigned)i, b, mac_with, key,
                                               lines[i], sizeof(lines[i]), &lens[i]),
                              CDX_OK);
    }
    CU_ASSERT_EQUAL(pos.seq, NREC);
}

/* Verify lines in the given order; return the verifier's error (CDX_OK when all pass). */
static cdx_err verify(const int *order, int n, const uint8_t *k, pol_audit_verifier *v)
{
    pol_audit_verify_init(v, NULL, mac_with, (void *)k);
    for (int i = 0; i < n; i++) {
        cdx_err e = pol_audit_verify_line(v, lines[order[i]], lens[order[i]]);
        if (e)
            return e;
    }
    return CDX_OK;
}

static void test_good_chain(void)
{
    write_chain(true);
    int all[NREC];
    for (int i = 0; i < NREC; i++)
        all[i] = i;
    pol_audit_verifier v;
    CU_ASSERT_EQUAL(verify(all, NREC, key, &v), CDX_OK);
    CU_ASSERT_EQUAL(v.records, NREC);
    CU_ASSERT_EQUAL(v.checkpoints, 1);
    CU_ASSERT_TRUE(v.stopped);
    CU_ASSERT_EQUAL(pol_audit_verify_end(&v, T0 + 3600000, 60000), CDX_OK);
    /* lines are printable, newline-terminated, and start as documented */
    for (int i = 0; i < NREC; i++) {
        CU_ASSERT_EQUAL(lines[i][lens[i] - 1], '\n');
        CU_ASSERT_EQUAL(strncmp(lines[i], "cdxa1 ", 6), 0);
    }
    CU_ASSERT_EQUAL(strncmp(lines[0], "cdxa1 1 ", 8), 0);
    /* a body that could fake the MAC field, or with controls, is refused */
    pol_audit_pos pos = {0};
    char out[POL_AUDIT_LINE_MAX];
    size_t n;
    CU_ASSERT_EQUAL(pol_audit_append(&pos, T0, "a=1 mac=00", mac_with, key, out, sizeof(out), &n),
                    CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(pol_audit_append(&pos, T0, "a=\n", mac_with, key, out, sizeof(out), &n),
                    CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(pol_audit_append(&pos, T0, "", mac_with, key, out, sizeof(out), &n),
                    CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(pos.seq, 0);
}

static void expect(const int *order, int n, const uint8_t *k, const char *why)
{
    pol_audit_verifier v;
    CU_ASSERT_EQUAL(verify(order, n, k, &v), CDX_ERR_INTEGRITY);
    if (!strstr(cdx_err_detail(), why))
        fprintf(stderr, "\n  want `%s` in: %s", why, cdx_err_detail());
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), why));
}

static void test_tampering(void)
{
    write_chain(true);
    /* edited: one byte of record 4's body */
    char saved[POL_AUDIT_LINE_MAX];
    memcpy(saved, lines[3], sizeof(saved));
    char *at = strstr(lines[3], "PERMISSION_DENIED");
    CU_ASSERT_PTR_NOT_NULL_FATAL(at);
    memcpy(at, "OK               ", 17);
    int all[NREC] = {0, 1, 2, 3, 4, 5, 6, 7};
    expect(all, NREC, key, "audit record 4 fails its MAC");
    memcpy(lines[3], saved, sizeof(saved));
    /* deleted: record 3 */
    int del[] = {0, 1, 3, 4, 5, 6, 7};
    expect(del, 7, key, "audit record 3 carries sequence number 4");
    /* reordered: 5 before 4 */
    int reo[] = {0, 1, 2, 4, 3, 5, 6, 7};
    expect(reo, NREC, key, "audit record 4 carries sequence number 5");
    /* the whole chain under a key that is not the audit key (forged) */
    expect(all, NREC, other_key, "audit record 1 fails its MAC");
    /* appended: a record made without the key, continuing the chain */
    {
        pol_audit_verifier v;
        CU_ASSERT_EQUAL_FATAL(verify(all, NREC, key, &v), CDX_OK);
        pol_audit_pos forger = v.pos;
        char out[POL_AUDIT_LINE_MAX];
        size_t n;
        CU_ASSERT_EQUAL_FATAL(pol_audit_append(&forger, T0 + 9000, "kind=request op=delete",
                                               mac_with, other_key, out, sizeof(out), &n),
                              CDX_OK);
        CU_ASSERT_EQUAL(pol_audit_verify_line(&v, out, n), CDX_ERR_INTEGRITY);
        CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "audit record 9 fails its MAC"));
    }
    /* spliced: a record of another chain with the right number (made with the key) */
    {
        pol_audit_pos other = {.seq = 3};
        memset(other.hash, 0x5a, sizeof(other.hash));
        char out[POL_AUDIT_LINE_MAX];
        size_t n;
        CU_ASSERT_EQUAL_FATAL(pol_audit_append(&other, T0 + 3000, "kind=request op=get", mac_with,
                                               key, out, sizeof(out), &n),
                              CDX_OK);
        pol_audit_verifier v;
        int head[] = {0, 1, 2};
        CU_ASSERT_EQUAL_FATAL(verify(head, 3, key, &v), CDX_OK);
        CU_ASSERT_EQUAL(pol_audit_verify_line(&v, out, n), CDX_ERR_INTEGRITY);
        CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "does not follow record 3"));
    }
    /* malformed */
    {
        pol_audit_verifier v;
        pol_audit_verify_init(&v, NULL, mac_with, key);
        CU_ASSERT_EQUAL(pol_audit_verify_line(&v, "cdxa1 1 2 3\n", 12), CDX_ERR_INTEGRITY);
        CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "audit record 1 is malformed"));
        char cut[POL_AUDIT_LINE_MAX];
        memcpy(cut, lines[0], lens[0]);
        CU_ASSERT_EQUAL(pol_audit_verify_line(&v, cut, lens[0] - 10), CDX_ERR_INTEGRITY);
    }
}

/* A cut tail: no clean stop, and the last record older than the checkpoint interval allows. */
static void test_truncated_tail(void)
{
    write_chain(false); /* the writer is still running: no stop record */
    int first5[] = {0, 1, 2, 3, 4};
    pol_audit_verifier v;
    CU_ASSERT_EQUAL_FATAL(verify(first5, 5, key, &v), CDX_OK);
    CU_ASSERT_FALSE(v.stopped);
    /* records 6-8 cut off; the verifier expects the trail to reach T0 + 20 s, with checkpoints
     * every 5 s: the last record (T0 + 4 s) is too old */
    CU_ASSERT_EQUAL(pol_audit_verify_end(&v, T0 + 20000, 5000), CDX_ERR_INTEGRITY);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "the trail ends at record 5"));
    /* the whole running chain reaches T0 + 7 s: fine at T0 + 10 s */
    int all[NREC] = {0, 1, 2, 3, 4, 5, 6, 7};
    CU_ASSERT_EQUAL_FATAL(verify(all, NREC, key, &v), CDX_OK);
    CU_ASSERT_EQUAL(pol_audit_verify_end(&v, T0 + 10000, 5000), CDX_OK);
    /* a cleanly stopped chain needs no expectation */
    write_chain(true);
    CU_ASSERT_EQUAL_FATAL(verify(all, NREC, key, &v), CDX_OK);
    CU_ASSERT_EQUAL(pol_audit_verify_end(&v, T0 + 999999999, 5000), CDX_OK);
}

/* Rotation: a second file continues the chain; verified alone from the first file's end. */
static void test_rotation(void)
{
    write_chain(true);
    int file1[] = {0, 1, 2, 3};
    pol_audit_verifier v;
    CU_ASSERT_EQUAL_FATAL(verify(file1, 4, key, &v), CDX_OK);
    pol_audit_pos end1 = v.pos;
    pol_audit_verify_init(&v, &end1, mac_with, key);
    for (int i = 4; i < NREC; i++)
        CU_ASSERT_EQUAL(pol_audit_verify_line(&v, lines[i], lens[i]), CDX_OK);
    CU_ASSERT_EQUAL(v.records, NREC - 4);
    /* the second file after a wrong first file end: refused */
    pol_audit_pos wrong = end1;
    wrong.hash[0] ^= 1;
    pol_audit_verify_init(&v, &wrong, mac_with, key);
    CU_ASSERT_EQUAL(pol_audit_verify_line(&v, lines[4], lens[4]), CDX_ERR_INTEGRITY);
}

int main(void)
{
    memset(key, 0x33, sizeof(key));
    memset(other_key, 0x44, sizeof(other_key));
    static const fx_test tests[] = {
        {"a chain verifies; bodies that could fake a field are refused", test_good_chain},
        {"edited, deleted, reordered, forged, appended, spliced, malformed", test_tampering},
        {"a cut tail against the checkpoint interval", test_truncated_tail},
        {"rotation: a file continues the previous one's chain", test_rotation},
    };
    static const fx_suite suite = {.name = "audit", .tests = tests, .ntests = FX_LEN(tests)};
    return fx_cunit_run(&suite, 1);
}
