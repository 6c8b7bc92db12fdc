/*
 * fuzz_policy.c - fuzz target for the access policy file and the audit
 * trail's line verifier (policy/): bytes an operator's editor, or someone
 * with write access to the files, may produce.
 *
 * The first byte selects:
 *  - even: the rest is a policy file, loaded as cipherdexd loads it
 *    (app_policy_build: libinih with line numbers, pol_builder); a failed
 *    load's detail names the file; a policy that loads answers pol_allows,
 *    pol_sees, pol_limits_of and pol_issuer_ok for a few principals, and the
 *    appliance admins it names may do everything;
 *  - odd: the rest is an audit trail, split into lines and verified with a
 *    fixed key (pol_audit_verify_line, pol_audit_verify_end); then the same
 *    bodies are chained anew with that key, which must verify.
 *
 * Built two ways (see tests/fuzz/fuzz_main.h): by CMake with fuzz_main.c
 * (`fuzz_policy [--seeds DIR] FILE|DIR...`), or for libFuzzer with
 * -DCDX_LIBFUZZER -fsanitize=fuzzer,address,undefined (./run fuzz).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "app_config.h"
#include "app_policy.h"
#include "cdx_err.h"
#include "pol_audit.h"
#include "pol_policy.h"

#ifndef CDX_LIBFUZZER
#include "fuzz_main.h"
#else
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
#endif

static const uint8_t KEY[32] = {1, 2, 3};

static cdx_err mac(void *arg, const void *msg, size_t len, uint8_t out[32])
{
    (void)arg;
    unsigned n = 32;
    return HMAC(EVP_sha256(), KEY, 32, msg, len, out, &n) ? CDX_OK
                                                          : cdx_fail(CDX_ERR_INTERNAL, "HMAC");
}

static void policy_file(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz_policy", MFD_CLOEXEC);
    if (fd < 0)
        return;
    if (size && write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return;
    }
    app_config c;
    app_config_init(&c);
    snprintf(c.policy, sizeof(c.policy), "/proc/self/fd/%d", fd);
    pol_policy *p = NULL;
    if (app_policy_build(&c, &p) != CDX_OK) {
        if (strncmp(cdx_err_detail(), c.policy, strlen(c.policy)) != 0)
            abort(); /* a policy error names the file */
        close(fd);
        return;
    }
    static const char *const who[] = {"uri:spiffe://a", "dns:b.example", "cn:c",
                                      "anonymous",      "uri:x",         "cn:aud"};
    static const char *const idx[] = {"docs-1", "a", "payroll", "x"};
    uint8_t fp[32] = {0};
    for (size_t i = 0; i < sizeof(who) / sizeof(who[0]); i++) {
        pol_limits l;
        pol_limits_of(p, who[i], &l);
        (void)pol_issuer_ok(p, who[i], fp);
        bool admin = pol_allows(p, who[i], POL_NEED_OPERATOR, NULL) &&
                     pol_allows(p, who[i], POL_NEED_ADMIN, "zz-nobody-granted-this");
        for (size_t j = 0; j < sizeof(idx) / sizeof(idx[0]); j++) {
            bool r = pol_allows(p, who[i], POL_NEED_READ, idx[j]);
            bool a = pol_allows(p, who[i], POL_NEED_ADMIN, idx[j]);
            bool at = pol_allows(p, who[i], POL_NEED_ATTEST, idx[j]);
            if (a && !r)
                abort(); /* admin implies read */
            if (a && !at)
                abort(); /* admin implies attest (docs/POLICY.md) */
            if (at && !pol_sees(p, who[i], idx[j]))
                abort(); /* attest on an index shows it in the list */
            if ((r || a) && !pol_sees(p, who[i], idx[j]))
                abort(); /* what one may use, one may see */
            if (admin && !a)
                abort(); /* appliance admins may do everything */
        }
    }
    pol_policy_free(p);
    close(fd);
}

static void audit_trail(const uint8_t *data, size_t size)
{
    pol_audit_verifier v;
    pol_audit_verify_init(&v, NULL, mac, NULL);
    pol_audit_pos fresh = {0};
    bool broken = false;
    size_t start = 0;
    for (size_t i = 0; i <= size; i++) {
        if (i < size && data[i] != '\n')
            continue;
        size_t n = i - start;
        char line[POL_AUDIT_LINE_MAX + 1];
        if (n < sizeof(line)) {
            memcpy(line, data + start, n);
            line[n] = '\0';
            /* A verifier stops trusting the trail at the first bad record: so does this. */
            if (!broken && pol_audit_verify_line(&v, line, n) != CDX_OK)
                broken = true;
            pol_audit_pos any; /* hostile lines: a head is read or refused, never more */
            if (pol_audit_line_head(line, n, &any) == CDX_OK && any.seq == UINT64_MAX)
                abort();
            /* The same text as a body, chained anew, must verify. */
            char out[POL_AUDIT_LINE_MAX];
            size_t len;
            pol_audit_pos before = fresh;
            if (pol_audit_append(&fresh, 1000 + i, line, mac, NULL, out, sizeof(out), &len) ==
                CDX_OK) {
                pol_audit_verifier w;
                pol_audit_verify_init(&w, &before, mac, NULL);
                if (pol_audit_verify_line(&w, out, len) != CDX_OK)
                    abort();
                /* ... and a verifier starting at it (archived predecessors) finds the same
                 * place in the chain from the line alone */
                pol_audit_pos head;
                if (pol_audit_line_head(out, len, &head) != CDX_OK || head.seq != before.seq ||
                    memcmp(head.hash, before.hash, POL_AUDIT_HASH_LEN))
                    abort();
            }
        }
        start = i + 1;
    }
    if (!broken && pol_audit_verify_end(&v, 5000, 1000) == CDX_OK && !v.stopped &&
        v.pos.ts_ms + 1000 < 5000)
        abort(); /* an old, unstopped tail must be reported */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    if (data[0] % 2 == 0)
        policy_file(data + 1, size - 1);
    else
        audit_trail(data + 1, size - 1);
    return 0;
}

#ifndef CDX_LIBFUZZER

int fuzz_write_seeds(const char *dir)
{
    static const char policy[] =
        "[appliance]\nadmins = uri:spiffe://a\noperators = cn:c\n"
        "[role r]\nmembers = dns:b.example, uri:x\n"
        "[index docs-*]\nread = role:r\nwrite = uri:spiffe://a\nadmin = uri:x\nattest = cn:aud\n"
        "[limits default]\nrequests_per_second = 10\nbytes_per_second = 1M\n"
        "[limits role:r]\nconcurrency = 0\n"
        "[ca c1]\nsha256 = 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n"
        "principals = role:r\n";
    static const char bad[] = "[index docs\nread = spiffe://untyped\n[role x]\nmembers = role:y\n";
    static const uint8_t even = 0, odd = 1;
    if (fuzz_seed_sel(dir, "policy", &even, 1, policy, sizeof(policy) - 1) ||
        fuzz_seed_sel(dir, "policy_bad", &even, 1, bad, sizeof(bad) - 1))
        return -1;
    /* A real trail of three records, and one with its second record edited. */
    char trail[3 * POL_AUDIT_LINE_MAX], line[POL_AUDIT_LINE_MAX];
    size_t n = 0, len;
    pol_audit_pos pos = {0};
    static const char *const bodies[] = {"kind=start", "kind=request op=query code=OK",
                                         "kind=stop"};
    for (size_t i = 0; i < 3; i++) {
        if (pol_audit_append(&pos, 1000 + i, bodies[i], mac, NULL, line, sizeof(line), &len))
            return -1;
        memcpy(trail + n, line, len);
        n += len;
    }
    if (fuzz_seed_sel(dir, "trail", &odd, 1, trail, n))
        return -1;
    char *at = strstr(trail, "code=OK");
    if (at)
        at[5] = 'K';
    return fuzz_seed_sel(dir, "trail_edited", &odd, 1, trail, n);
}

#endif
