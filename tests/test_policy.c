/*
 * test_policy.c - typed principals and the access policy (policy/), and
 * the daemon's policy file loading (appliance/app_policy.c): file:line
 * errors, reload keeping the old policy on a bad file.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "app_config.h"
#include "app_policy.h"
#include "app_ratelimit.h"
#include "cdx_limits.h"
#include "cdx_err.h"
#include "fx_cunit.h"
#include "fx_tmp.h"
#include "pol_policy.h"
#include "pol_principal.h"

/* Build a policy from "section|key|value" lines (line numbers from 1). */
static cdx_err build(const char *const *keys, size_t n, pol_policy **out)
{
    pol_builder *b = NULL;
    cdx_err err = pol_builder_new(&b);
    if (err)
        return err;
    for (size_t i = 0; i < n; i++) {
        char sec[256], key[64];
        const char *p = strchr(keys[i], '|'), *q = p ? strchr(p + 1, '|') : NULL;
        if (!p || !q)
            abort();
        snprintf(sec, sizeof(sec), "%.*s", (int)(p - keys[i]), keys[i]);
        snprintf(key, sizeof(key), "%.*s", (int)(q - p - 1), p + 1);
        if ((err = pol_builder_key(b, (unsigned)i + 1, sec, key, q + 1))) {
            pol_builder_free(b);
            return err;
        }
    }
    return pol_builder_finish(b, out);
}

static void test_principals(void)
{
    static const char *const good[] = {"uri:spiffe://corp/app", "dns:app.corp.example", "cn:carol",
                                       "anonymous"};
    static const char *const bad[] = {"spiffe://corp/app", "uri:",      "URI:x", "cn:a b",
                                      "dns:a\"b",          "email:x@y", "",      "anonymous2"};
    for (size_t i = 0; i < FX_LEN(good); i++)
        CU_ASSERT_EQUAL(pol_principal_check(good[i]), CDX_OK);
    for (size_t i = 0; i < FX_LEN(bad); i++)
        CU_ASSERT_EQUAL(pol_principal_check(bad[i]), CDX_ERR_CONFIG);
    CU_ASSERT_EQUAL(pol_principal_check("spiffe://corp/app"), CDX_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "has no type"));
    char big[CDX_PRINCIPAL_MAX + 8];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    memcpy(big, "uri:", 4);
    CU_ASSERT_EQUAL(pol_principal_check(big), CDX_ERR_CONFIG);
    big[4 + CDX_PRINCIPAL_VALUE_MAX] = '\0';
    CU_ASSERT_EQUAL(pol_principal_check(big), CDX_OK);

    /* The deprecated admins list: untyped is a URI SAN, never a CN. */
    char out[CDX_PRINCIPAL_MAX + 1];
    bool untyped = false;
    CU_ASSERT_EQUAL(pol_principal_legacy("spiffe://corp/admin", out, sizeof(out), &untyped),
                    CDX_OK);
    CU_ASSERT_STRING_EQUAL(out, "uri:spiffe://corp/admin");
    CU_ASSERT_TRUE(untyped);
    CU_ASSERT_EQUAL(pol_principal_legacy("cn:ops", out, sizeof(out), &untyped), CDX_OK);
    CU_ASSERT_STRING_EQUAL(out, "cn:ops");
    CU_ASSERT_FALSE(untyped);
    CU_ASSERT_EQUAL(pol_principal_legacy("a b", out, sizeof(out), &untyped), CDX_ERR_CONFIG);
}

/* The review's C1 and M1 as policy checks: default deny, tenants apart, CN is not URI. */
static void test_grants(void)
{
    static const char *const keys[] = {
        "appliance|admins|uri:spiffe://corp/ops",
        "appliance|operators|uri:spiffe://corp/monitor",
        "role app-a|members|uri:spiffe://corp/app-a, dns:a.corp.example",
        "index docs-*|read|role:app-a, uri:spiffe://corp/search",
        "index docs-*|write|role:app-a",
        "index docs-?x|admin|uri:spiffe://corp/team-a",
        "index payroll|read|uri:spiffe://corp/payroll",
        "index payroll|write|uri:spiffe://corp/payroll-writer",
        "index payroll|attest|uri:spiffe://corp/auditor",
    };
    pol_policy *p = NULL;
    CU_ASSERT_EQUAL_FATAL(build(keys, FX_LEN(keys), &p), CDX_OK);
    const char *a = "uri:spiffe://corp/app-a", *ops = "uri:spiffe://corp/ops";
    /* role members, by both of their names */
    CU_ASSERT_TRUE(pol_allows(p, a, POL_NEED_READ, "docs-en"));
    CU_ASSERT_TRUE(pol_allows(p, "dns:a.corp.example", POL_NEED_WRITE, "docs-en"));
    CU_ASSERT_FALSE(pol_allows(p, a, POL_NEED_ADMIN, "docs-en"));
    /* another tenant's index: nothing */
    CU_ASSERT_FALSE(pol_allows(p, a, POL_NEED_READ, "payroll"));
    CU_ASSERT_FALSE(pol_sees(p, a, "payroll"));
    /* default deny: an index nobody granted, a principal nobody named */
    CU_ASSERT_FALSE(pol_allows(p, a, POL_NEED_READ, "orphan"));
    CU_ASSERT_FALSE(pol_allows(p, "uri:spiffe://corp/stranger", POL_NEED_READ, "docs-en"));
    /* read only; write does not imply read; admin implies both */
    CU_ASSERT_FALSE(pol_allows(p, "uri:spiffe://corp/search", POL_NEED_WRITE, "docs-en"));
    CU_ASSERT_TRUE(pol_allows(p, "uri:spiffe://corp/payroll-writer", POL_NEED_WRITE, "payroll"));
    CU_ASSERT_FALSE(pol_allows(p, "uri:spiffe://corp/payroll-writer", POL_NEED_READ, "payroll"));
    CU_ASSERT_TRUE(pol_allows(p, "uri:spiffe://corp/team-a", POL_NEED_READ, "docs-ax"));
    CU_ASSERT_TRUE(pol_allows(p, "uri:spiffe://corp/team-a", POL_NEED_ADMIN, "docs-ax"));
    CU_ASSERT_FALSE(pol_allows(p, "uri:spiffe://corp/team-a", POL_NEED_ADMIN, "docs-abx"));
    /* attest (docs/POLICY.md): its own grant, which reads nothing; index admins and appliance
     * admins have it; read and write do not */
    const char *aud = "uri:spiffe://corp/auditor";
    CU_ASSERT_TRUE(pol_allows(p, aud, POL_NEED_ATTEST, "payroll"));
    CU_ASSERT_FALSE(pol_allows(p, aud, POL_NEED_READ, "payroll"));
    CU_ASSERT_FALSE(pol_allows(p, aud, POL_NEED_ATTEST, "docs-en"));
    CU_ASSERT_TRUE(pol_sees(p, aud, "payroll"));
    CU_ASSERT_FALSE(pol_allows(p, "uri:spiffe://corp/payroll", POL_NEED_ATTEST, "payroll"));
    CU_ASSERT_FALSE(pol_allows(p, a, POL_NEED_ATTEST, "docs-en"));
    CU_ASSERT_TRUE(pol_allows(p, "uri:spiffe://corp/team-a", POL_NEED_ATTEST, "docs-ax"));
    CU_ASSERT_TRUE(pol_allows(p, ops, POL_NEED_ATTEST, "payroll"));
    CU_ASSERT_FALSE(pol_allows(p, "uri:spiffe://corp/monitor", POL_NEED_ATTEST, "payroll"));
    CU_ASSERT_STRING_EQUAL(pol_need_name(POL_NEED_ATTEST), "attest");
    /* M1: a CN that spells a URI principal is not that principal */
    CU_ASSERT_FALSE(pol_allows(p, "cn:spiffe://corp/ops", POL_NEED_ADMIN, "docs-en"));
    CU_ASSERT_FALSE(pol_allows(p, "cn:spiffe://corp/app-a", POL_NEED_READ, "docs-en"));
    /* appliance admins: everything; operators: the list and health, no data */
    CU_ASSERT_TRUE(pol_allows(p, ops, POL_NEED_ADMIN, "payroll"));
    CU_ASSERT_TRUE(pol_allows(p, ops, POL_NEED_OPERATOR, NULL));
    CU_ASSERT_TRUE(pol_allows(p, "uri:spiffe://corp/monitor", POL_NEED_OPERATOR, NULL));
    CU_ASSERT_TRUE(pol_sees(p, "uri:spiffe://corp/monitor", "payroll"));
    CU_ASSERT_FALSE(pol_allows(p, "uri:spiffe://corp/monitor", POL_NEED_READ, "payroll"));
    CU_ASSERT_FALSE(pol_allows(p, a, POL_NEED_OPERATOR, NULL));
    /* health needs nothing; a NULL policy allows nothing else */
    CU_ASSERT_TRUE(pol_allows(p, "anonymous", POL_NEED_NONE, NULL));
    CU_ASSERT_FALSE(pol_allows(NULL, ops, POL_NEED_READ, "docs-en"));
    CU_ASSERT_FALSE(pol_allows(p, "anonymous", POL_NEED_READ, "docs-en"));
    size_t r, ro, ad, op;
    pol_policy_counts(p, &r, &ro, &ad, &op);
    CU_ASSERT_EQUAL(r, 7);
    CU_ASSERT_EQUAL(ro, 1);
    CU_ASSERT_EQUAL(ad, 1);
    CU_ASSERT_EQUAL(op, 1);
    pol_policy_free(p);
    pol_policy_free(NULL);
    pol_builder_free(NULL);
}

/* Every malformed key is refused with what is wrong; undefined roles name their line. */
static void test_bad_policies(void)
{
    static const struct {
        const char *key, *want;
    } cases[] = {
        {"index docs|read|spiffe://corp/app", "has no type"},
        {"index docs|read|uri:a,,uri:b", "empty entry"},
        {"index docs|reed|uri:a", "has no key `reed` (known: read, write, admin, attest)"},
        {"index docs|attests|uri:a", "has no key `attests`"},
        {"index do/cs|read|uri:a", "has `/`"},
        {"indexes docs|read|uri:a", "unknown section"},
        {"appliance|owners|uri:a", "[appliance] has no key `owners`"},
        {"role a b|members|uri:a", "has ` `"},
        {"role r|members|role:s", "cannot contain a role"},
        {"role r|users|uri:a", "has no key `users`"},
        {"index docs|read|role:bad/name", "has `/`"},
    };
    for (size_t i = 0; i < FX_LEN(cases); i++) {
        const char *k[] = {cases[i].key};
        pol_policy *p = NULL;
        CU_ASSERT_EQUAL(build(k, 1, &p), CDX_ERR_CONFIG);
        if (!strstr(cdx_err_detail(), cases[i].want))
            fprintf(stderr, "\n  %s: %s\n", cases[i].key, cdx_err_detail());
        CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), cases[i].want));
        CU_ASSERT_PTR_NULL(p);
    }
    static const char *const undefined[] = {"role a|members|uri:x",
                                            "index docs|read|role:a, role:b"};
    pol_policy *p = NULL;
    CU_ASSERT_EQUAL(build(undefined, 2, &p), CDX_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "line 2: role:b is not defined"));
}

/* [limits]: default, per role and per principal, the most generous wins; bad values refused. */
static void test_limits(void)
{
    static const char *const keys[] = {
        "role slow|members|uri:s1, uri:both",
        "role fast|members|uri:f1, uri:both",
        "limits default|requests_per_second|10",
        "limits default|bytes_per_second|1M",
        "limits default|concurrency|4",
        "limits role:slow|requests_per_second|2",
        "limits role:fast|requests_per_second|500",
        "limits role:fast|burst|1000",
        "limits uri:nolimit|concurrency|0",
    };
    pol_policy *p = NULL;
    CU_ASSERT_EQUAL_FATAL(build(keys, FX_LEN(keys), &p), CDX_OK);
    pol_limits l;
    pol_limits_of(p, "uri:other", &l);
    CU_ASSERT_EQUAL(l.requests_per_s, 10);
    CU_ASSERT_EQUAL(l.bytes_per_s, 1u << 20);
    CU_ASSERT_EQUAL(l.concurrency, 4);
    CU_ASSERT_EQUAL(l.burst, 0);
    pol_limits_of(p, "uri:s1", &l);
    CU_ASSERT_EQUAL(l.requests_per_s, 2);
    CU_ASSERT_EQUAL(l.concurrency, 4); /* not set by the role: the default's */
    pol_limits_of(p, "uri:both", &l);  /* in both roles: the more generous */
    CU_ASSERT_EQUAL(l.requests_per_s, 500);
    CU_ASSERT_EQUAL(l.burst, 1000);
    pol_limits_of(p, "uri:nolimit", &l);
    CU_ASSERT_EQUAL(l.concurrency, 0);
    CU_ASSERT_EQUAL(l.requests_per_s, 10);
    pol_policy_free(p);
    pol_limits_of(NULL, "uri:x", &l);
    CU_ASSERT_EQUAL(l.requests_per_s, 0);

    static const struct {
        const char *key, *want;
    } bad[] = {
        {"limits default|requests_per_second|ten", "is not a number"},
        {"limits default|requests_per_second|-1", "is not a number"},
        {"limits default|bytes_per_second|5T", "is not a number"},
        {"limits default|concurrency|99999999", "is larger than"},
        {"limits default|rps|1", "has no key `rps`"},
        {"limits spiffe://x|burst|1", "has no type"},
    };
    for (size_t i = 0; i < FX_LEN(bad); i++) {
        const char *k[] = {bad[i].key};
        CU_ASSERT_EQUAL(build(k, 1, &p), CDX_ERR_CONFIG);
        CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), bad[i].want));
    }
    const char *undefined[] = {"limits role:ghost|burst|1"};
    CU_ASSERT_EQUAL(build(undefined, 1, &p), CDX_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "role:ghost is not defined"));
}

/* [ca]: principals only valid from one CA (review M1's "bind to the issuing CA"). */
static void test_ca_binding(void)
{
    static const char *const keys[] = {
        "role app|members|uri:spiffe://corp/app",
        "ca corp|sha256|"
        "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:"
        "dd:ee:ff",
        "ca corp|principals|uri:spiffe://corp/admin, role:app",
        "ca partner|sha256|ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100",
        "ca partner|principals|uri:spiffe://corp/admin",
    };
    pol_policy *p = NULL;
    CU_ASSERT_EQUAL_FATAL(build(keys, FX_LEN(keys), &p), CDX_OK);
    uint8_t corp[32], partner[32], other[32];
    for (int i = 0; i < 32; i++) {
        corp[i] = (uint8_t)((i % 16) * 0x11);
        partner[i] = (uint8_t)(0xff - corp[i]);
        other[i] = 0x42;
    }
    CU_ASSERT_TRUE(pol_issuer_ok(p, "uri:spiffe://corp/admin", corp));
    CU_ASSERT_TRUE(pol_issuer_ok(p, "uri:spiffe://corp/admin", partner)); /* either of its CAs */
    CU_ASSERT_FALSE(pol_issuer_ok(p, "uri:spiffe://corp/admin", other));
    CU_ASSERT_FALSE(pol_issuer_ok(p, "uri:spiffe://corp/admin", NULL));
    CU_ASSERT_TRUE(pol_issuer_ok(p, "uri:spiffe://corp/app", corp)); /* through its role */
    CU_ASSERT_FALSE(pol_issuer_ok(p, "uri:spiffe://corp/app", partner));
    CU_ASSERT_TRUE(pol_issuer_ok(p, "uri:spiffe://corp/free", other)); /* bound to nothing */
    pol_policy_free(p);
    static const struct {
        const char *key, *want;
    } bad[] = {
        {"ca x|sha256|0011", "has 4 hex digits, need 64"},
        {"ca x|sha256|zz", "is not a SHA-256 fingerprint"},
        {"ca x|issuer|a", "has no key `issuer`"},
        {"ca x|principals|spiffe://untyped", "has no type"},
    };
    for (size_t i = 0; i < FX_LEN(bad); i++) {
        const char *k[] = {bad[i].key};
        CU_ASSERT_EQUAL(build(k, 1, &p), CDX_ERR_CONFIG);
        CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), bad[i].want));
    }
    const char *nosha[] = {"ca x|principals|uri:a"};
    CU_ASSERT_EQUAL(build(nosha, 1, &p), CDX_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "line 1: [ca x] has no sha256"));
}

/* The token buckets and the concurrency cap, on a clock the test drives. */
static void test_ratelimit(void)
{
    app_ratelimit *r = NULL;
    CU_ASSERT_EQUAL_FATAL(app_ratelimit_new(&r), CDX_OK);
    const uint64_t s = 1000000000ull;
    pol_limits l = {.requests_per_s = 2, .burst = 3, .bytes_per_s = 1000, .concurrency = 2};
    uint32_t retry = 0;
    bool tr = false;
    /* the burst, then refused with a hint that is long enough */
    for (int i = 0; i < 2; i++) {
        CU_ASSERT_EQUAL(app_ratelimit_enter(r, "uri:a", &l, 10, 10 * s, &retry, &tr), CDX_OK);
        CU_ASSERT_TRUE(tr);
    }
    CU_ASSERT_EQUAL(app_ratelimit_enter(r, "uri:a", &l, 10, 10 * s, &retry, &tr),
                    CDX_ERR_RATE_LIMITED); /* concurrency 2 */
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "concurrency 2"));
    CU_ASSERT_EQUAL(retry, CDX_RATE_CONCURRENCY_RETRY_MS);
    app_ratelimit_leave(r, "uri:a");
    app_ratelimit_leave(r, "uri:a");
    CU_ASSERT_EQUAL(app_ratelimit_enter(r, "uri:a", &l, 10, 10 * s, &retry, &tr), CDX_OK);
    app_ratelimit_leave(r, "uri:a");
    CU_ASSERT_EQUAL(app_ratelimit_enter(r, "uri:a", &l, 10, 10 * s, &retry, &tr),
                    CDX_ERR_RATE_LIMITED); /* the burst of 3 is used */
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "request rate"));
    CU_ASSERT_TRUE(retry > 0 && retry <= 501);
    /* another principal has its own buckets */
    CU_ASSERT_EQUAL(app_ratelimit_enter(r, "uri:b", &l, 10, 10 * s, &retry, &tr), CDX_OK);
    app_ratelimit_leave(r, "uri:b");
    /* half a second later one token is back */
    CU_ASSERT_EQUAL(app_ratelimit_enter(r, "uri:a", &l, 10, 10 * s + s / 2, &retry, &tr), CDX_OK);
    app_ratelimit_leave(r, "uri:a");
    /* bytes: 1000 per second, a new principal's bucket full */
    CU_ASSERT_EQUAL(app_ratelimit_enter(r, "uri:c", &l, 900, 20 * s, &retry, &tr), CDX_OK);
    app_ratelimit_leave(r, "uri:c");
    CU_ASSERT_EQUAL(app_ratelimit_enter(r, "uri:c", &l, 900, 20 * s, &retry, &tr),
                    CDX_ERR_RATE_LIMITED);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), "byte rate"));
    CU_ASSERT_TRUE(retry >= 800 && retry <= 801);
    /* a request larger than a second's bytes passes on a full bucket */
    CU_ASSERT_EQUAL(app_ratelimit_enter(r, "uri:c", &l, 5000, 30 * s, &retry, &tr), CDX_OK);
    app_ratelimit_leave(r, "uri:c");
    /* no limits: admitted untracked */
    pol_limits none = {0};
    CU_ASSERT_EQUAL(app_ratelimit_enter(r, "uri:a", &none, 10, 10 * s, &retry, &tr), CDX_OK);
    CU_ASSERT_FALSE(tr);
    app_ratelimit_free(r);
    app_ratelimit_free(NULL);
}

/* The daemon's loader: file:line errors, admins merged, reload keeps the old policy. */
static void test_policy_file(void)
{
    char *dir = fx_tmpdir_new("policy");
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    app_config cfg;
    app_config_init(&cfg);
    snprintf(cfg.policy, sizeof(cfg.policy), "%s/policy.ini", dir);
    snprintf(cfg.admins[0], sizeof(cfg.admins[0]), "uri:spiffe://corp/root");
    cfg.n_admins = 1;
    FILE *f = fopen(cfg.policy, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs("; two applications\n[index a-*]\nread = uri:spiffe://corp/a\n", f);
    fclose(f);
    app_policy *h = NULL;
    CU_ASSERT_EQUAL_FATAL(app_policy_new(&cfg, &h), CDX_OK);
    CU_ASSERT_TRUE(app_policy_allows(h, "uri:spiffe://corp/a", POL_NEED_READ, "a-1"));
    CU_ASSERT_TRUE(app_policy_allows(h, "uri:spiffe://corp/root", POL_NEED_ADMIN, "b"));
    CU_ASSERT_FALSE(app_policy_allows(h, "uri:spiffe://corp/a", POL_NEED_READ, "b-1"));

    /* A bad file: path:line and the reason; the old policy stays; status says so. */
    f = fopen(cfg.policy, "w");
    fputs("[index b-*]\nread = uri:spiffe://corp/a\nwrite = spiffe://corp/a\n", f);
    fclose(f);
    CU_ASSERT_EQUAL(app_policy_reload(h, &cfg), CDX_ERR_CONFIG);
    char want[4200];
    snprintf(want, sizeof(want), "%s:3:", cfg.policy);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), want));
    CU_ASSERT_TRUE(app_policy_allows(h, "uri:spiffe://corp/a", POL_NEED_READ, "a-1"));
    CU_ASSERT_FALSE(app_policy_allows(h, "uri:spiffe://corp/a", POL_NEED_READ, "b-1"));
    uint64_t loads = 0;
    char why[512];
    app_policy_status(h, &loads, why, sizeof(why));
    CU_ASSERT_EQUAL(loads, 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "has no type"));

    /* Fixed: the new policy is in force at once, the error is gone. */
    f = fopen(cfg.policy, "w");
    fputs("[index b-*]\nread = uri:spiffe://corp/a\n", f);
    fclose(f);
    CU_ASSERT_EQUAL(app_policy_reload(h, &cfg), CDX_OK);
    CU_ASSERT_FALSE(app_policy_allows(h, "uri:spiffe://corp/a", POL_NEED_READ, "a-1"));
    CU_ASSERT_TRUE(app_policy_allows(h, "uri:spiffe://corp/a", POL_NEED_READ, "b-1"));
    app_policy_status(h, &loads, why, sizeof(why));
    CU_ASSERT_EQUAL(loads, 2);
    CU_ASSERT_STRING_EQUAL(why, "");

    /* A missing file is an error naming it. */
    unlink(cfg.policy);
    CU_ASSERT_EQUAL(app_policy_reload(h, &cfg), CDX_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(cdx_err_detail(), cfg.policy));
    app_policy_free(h);
    app_policy_free(NULL);
    CU_ASSERT_FALSE(app_policy_allows(NULL, "uri:x", POL_NEED_READ, "a"));
    fx_rm_rf(dir);
    free(dir);
}

int main(void)
{
    static const fx_test tests[] = {
        {"typed principals; the deprecated admins list", test_principals},
        {"grants: default deny, roles, patterns, tenants apart, CN is not URI", test_grants},
        {"malformed policies refused with the reason", test_bad_policies},
        {"policy file: file:line errors, reload keeps the old policy", test_policy_file},
        {"[limits]: default, role, principal, most generous; bad values", test_limits},
        {"rate limiter: buckets, concurrency, hints, per principal", test_ratelimit},
        {"[ca]: principals bound to their issuing CA", test_ca_binding},
    };
    static const fx_suite suite = {.name = "policy", .tests = tests, .ntests = FX_LEN(tests)};
    return fx_cunit_run(&suite, 1);
}
