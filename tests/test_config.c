/* test_config: the daemon's configuration file (appliance/app_config.c, app_ini.c). */
#include <CUnit/Basic.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app_config.h"
#include "app_policy.h"
#include "app_hsmconf.h"
#include "cdx_log.h"
#include "fx_tmp.h"
#include "fx_cunit.h"

static char *dir;
static char path[4096];

static void write_conf(const char *text)
{
    FILE *f = fopen(path, "w");
    CU_ASSERT_FATAL(f != NULL);
    fputs(text, f);
    fclose(f);
}

/* Load text; return the error and leave the detail in `why`. */
static cdx_err load(const char *text, app_config *c, char *why, size_t cap)
{
    write_conf(text);
    app_config_init(c);
    cdx_err e = app_config_load(path, c);
    snprintf(why, cap, "%s", e ? cdx_err_detail() : "");
    return e;
}

#define GOOD_SERVER                                                                                \
    "[server]\nlisten = 127.0.0.1:7700\ntls_cert = /etc/c/server.pem\ntls_key = "                  \
    "/etc/c/server.key\n"                                                                          \
    "client_ca = /etc/c/ca.pem\nadmins = spiffe://corp/admin, dns:ops.example.com\n"               \
    "deployment_id = 00112233445566778899aabbccddeeff\n"

static void test_defaults(void)
{
    app_config c;
    app_config_init(&c);
    CU_ASSERT_STRING_EQUAL(c.listen, "127.0.0.1:7700");
    CU_ASSERT_EQUAL(c.idle_timeout_s, 300);
    CU_ASSERT_EQUAL(c.max_outstanding, 16);
    CU_ASSERT_EQUAL(c.max_frame_bytes, 64ull << 20);
    CU_ASSERT_EQUAL(c.backend, APP_STORE_REDIS);
    CU_ASSERT_FALSE(c.insecure);
    CU_ASSERT_FALSE(c.allow_tls12);
    CU_ASSERT_TRUE(c.maint_enabled);
    CU_ASSERT_EQUAL(c.maint_interval_ms, 1000);
    CU_ASSERT_EQUAL(c.maint_compact_segments, 32);
    CU_ASSERT_EQUAL(c.max_probes, 0); /* filtered queries may widen to every cluster */
    /* Defaults alone are not a working configuration: TLS files, admins, deployment. */
    CU_ASSERT_EQUAL(app_config_check(&c), CDX_ERR_CONFIG);
}

static void test_full_file(void)
{
    app_config c;
    char why[512];
    cdx_err e = load(GOOD_SERVER "crl = /etc/c/crl.pem\nallow_tls12 = yes\nidle_timeout_s = 60\n"
                                 "max_frame_bytes = 8M\ninflight_bytes = 2G\nworkers = 4\n"
                                 "[hsm]\nmodule = /usr/lib/softhsm/libsofthsm2.so\n"
                                 "token = pkcs11:token=cdx\npin = file:/etc/c/pin\n"
                                 "unwrap_mechanism = 0x80001234\n"
                                 "[store]\nbackend = redis\nredis = unix:/run/redis.sock\n"
                                 "redis_user = cdx\nredis_password_file = /etc/c/redis.pw\n"
                                 "[keys]\nsubkey_ttl_ms = 5000\n"
                                 "[cache]\nbytes = 512M\npreload = on\n"
                                 "[engine]\nmanifest_max_age_ms = 100\nmax_probes = 64\n"
                                 "gc_grace_ms = 1000\n"
                                 "[maintenance]\nenabled = no\ninterval_ms = 250\n"
                                 "compact_segments = 0\n"
                                 "[state]\ndir = /var/lib/cdx\n"
                                 "[log]\nlevel = debug\nformat = json\n"
                                 "[metrics]\nlisten = [::1]:9100\n",
                     &c, why, sizeof(why));
    if (e)
        fprintf(stderr, "\n  %s\n", why);
    CU_ASSERT_EQUAL_FATAL(e, CDX_OK);
    CU_ASSERT_EQUAL(app_config_check(&c), CDX_OK);
    CU_ASSERT_EQUAL(c.n_admins, 2);
    CU_ASSERT_STRING_EQUAL(c.admins[0], "uri:spiffe://corp/admin");
    CU_ASSERT_STRING_EQUAL(c.admins[1], "dns:ops.example.com");
    CU_ASSERT_EQUAL(c.n_admins_untyped, 1); /* the first: read as uri:, warned about */
    CU_ASSERT_TRUE(c.have_deployment_id);
    CU_ASSERT_EQUAL(c.deployment_id[15], 0xff);
    CU_ASSERT_TRUE(c.allow_tls12);
    CU_ASSERT_EQUAL(c.idle_timeout_s, 60);
    CU_ASSERT_EQUAL(c.max_frame_bytes, 8u << 20);
    CU_ASSERT_EQUAL(c.inflight_bytes, 2ull << 30);
    CU_ASSERT_EQUAL(c.workers, 4);
    CU_ASSERT_STRING_EQUAL(c.redis, "unix:/run/redis.sock");
    CU_ASSERT_EQUAL(c.hsm.subkey_ttl_ms, 5000);
    CU_ASSERT_EQUAL(c.cache_bytes, 512u << 20);
    CU_ASSERT_TRUE(c.cache_preload);
    CU_ASSERT_EQUAL(c.manifest_max_age_ms, 100);
    CU_ASSERT_EQUAL(c.gc_grace_ms, 1000); /* the floor itself is accepted */
    CU_ASSERT_EQUAL(c.max_probes, 64);
    CU_ASSERT_FALSE(c.maint_enabled);
    CU_ASSERT_EQUAL(c.maint_interval_ms, 250);
    CU_ASSERT_EQUAL(c.maint_compact_segments, 0);
    CU_ASSERT_EQUAL(c.log_level, CDX_LOG_DEBUG);
    CU_ASSERT_EQUAL(c.log_format, APP_LOG_JSON);
    CU_ASSERT_STRING_EQUAL(c.metrics_listen, "[::1]:9100");
    CU_ASSERT_STRING_EQUAL(c.hsm.token_uri, "pkcs11:token=cdx");
    CU_ASSERT_EQUAL(c.hsm.unwrap_mechanism, 0x80001234UL);
    /* The named forms of [hsm] unwrap_mechanism. */
    static const struct {
        const char *v;
        unsigned long want;
    } um[] = {{"auto", 0}, {"kwp", 0x210B}, {"pad", 0x210A}, {"0x210b", 0x210B}};
    for (size_t i = 0; i < sizeof(um) / sizeof(um[0]); i++) {
        hsm_config h;
        hsm_config_init(&h);
        h.unwrap_mechanism = 77;
        CU_ASSERT_EQUAL(app_hsmconf_set(&h, NULL, 1, "unwrap_mechanism", um[i].v), CDX_OK);
        CU_ASSERT_EQUAL(h.unwrap_mechanism, um[i].want);
    }
    hsm_config h;
    hsm_config_init(&h);
    CU_ASSERT_EQUAL(app_hsmconf_set(&h, NULL, 1, "hmac_key_type", "sha256_hmac"), CDX_OK);
    CU_ASSERT_EQUAL(h.hmac_key_type, HSM_HMAC_KT_SHA256);
    CU_ASSERT_EQUAL(app_hsmconf_set(&h, NULL, 1, "hmac_key_type", "generic"), CDX_OK);
    CU_ASSERT_EQUAL(h.hmac_key_type, HSM_HMAC_KT_GENERIC);
    CU_ASSERT_EQUAL(app_hsmconf_set(&h, NULL, 1, "hmac_key_type", "auto"), CDX_OK);
    CU_ASSERT_EQUAL(h.hmac_key_type, HSM_HMAC_KT_AUTO);
    CU_ASSERT_EQUAL(app_hsmconf_set(&h, NULL, 1, "hmac_key_type", "hmac"), CDX_ERR_CONFIG);
    CU_ASSERT_EQUAL(h.copyable, HSM_COPYABLE_REQUIRED);
    CU_ASSERT_EQUAL(app_hsmconf_set(&h, NULL, 1, "copyable", "unsupported"), CDX_OK);
    CU_ASSERT_EQUAL(h.copyable, HSM_COPYABLE_UNSUPPORTED);
    CU_ASSERT_EQUAL(app_hsmconf_set(&h, NULL, 1, "copyable", "no"), CDX_ERR_CONFIG);
}

/* Every bad line is reported with its line number and what is wrong. */
static void test_errors(void)
{
    static const struct {
        const char *text;
        const char *want; /* substring of the detail */
    } cases[] = {
        {"[server]\nlisten = 1.2.3.4:7700\nbogus = 1\n", ":3: unknown key `bogus` in [server]"},
        {"[nope]\nx = 1\n", ":2: unknown section [nope]"},
        {"x = 1\n", ":1: key `x` outside any [section]"},
        {"[server]\nidle_timeout_s = -1\n", ":2: idle_timeout_s: `-1` is not a non-negative"},
        {"[server]\nidle_timeout_s = 99999999\n", "is above the maximum"},
        {"[server]\ninsecure = maybe\n", "insecure: `maybe` is not a boolean"},
        {"[server]\nworkers = 2\nworkers = 3\n", ":3: workers: set twice (first on line 2)"},
        {"[server]\nadmins = a,,b\n", "admins: empty principal"},
        {"[server]\nadmins = a b\n", "space or control"},
        {"[server]\nadmins = a, a\n", "listed twice"},
        {"[server]\ndeployment_id = 0011\n", "deployment_id: must be 32 hex digits"},
        {"[server]\ntls_cert =\n", ":2: tls_cert: empty value"},
        {"[store]\nbackend = sqlite\n", "backend: `sqlite` is not redis or memory"},
        {"[keys]\nsubkey_ttl_ms = 1\n[hsm]\nsubkey_ttl_ms = 2\n",
         ":4: subkey_ttl_ms: already set on line 2"},
        {"[hsm]\npin = 1234\n", "PIN source must be file:"},
        {"[hsm]\nunwrap_mechanism = rfc5649\n", "unwrap_mechanism: must be auto, kwp"},
        {"[hsm]\nunwrap_mechanism = 0x\n", "unwrap_mechanism: must be auto, kwp"},
        {"[hsm]\nunwrap_mechanism = 0x0\n", "unwrap_mechanism: must be auto, kwp"},
        {"[log]\nlevel = loud\n", "level: `loud` is not error"},
        {"[cache]\nbytes = 10T\n", "bytes: `10T` is not a non-negative decimal number"},
        /* The wire layer's own ceiling (a larger cap would make every connection fail). */
        {"[server]\nmax_frame_bytes = 512M\n", "max_frame_bytes: `512M` is above the maximum"},
        {"[server\n", ":1: syntax error"},
        {"[maintenance]\ninterval_ms = 90000000\n", "interval_ms: `90000000` is above the maximum"},
        {"[maintenance]\ncompact_segments = 70000\n", "is above the maximum"},
        {"[maintenance]\nsweep = yes\n", "unknown key `sweep` in [maintenance]"},
        {"[engine]\nmax_probes = 70000\n", "max_probes: `70000` is above the maximum"},
        {"[engine]\nmax_probes = all\n", "max_probes: `all` is not a non-negative"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        app_config c;
        char why[512];
        CU_ASSERT_EQUAL(load(cases[i].text, &c, why, sizeof(why)), CDX_ERR_CONFIG);
        bool ok = strstr(why, cases[i].want) != NULL && strncmp(why, path, strlen(path)) == 0;
        CU_ASSERT(ok);
        if (!ok)
            fprintf(stderr, "\n  case %zu: got `%s`, want `%s`", i, why, cases[i].want);
    }
    app_config c;
    app_config_init(&c);
    CU_ASSERT_EQUAL(app_config_load("/nonexistent/cipherdexd.conf", &c), CDX_ERR_CONFIG);
}

/* Cross-key checks say what to fix. */
static void test_check(void)
{
    static const struct {
        const char *text;
        const char *want;
    } cases[] = {
        {"[server]\nadmins = a\ndeployment_id = 00112233445566778899aabbccddeeff\n",
         "tls_cert and tls_key are required"},
        {GOOD_SERVER "[store]\nredis = localhost\n",
         "[store] redis: `localhost`: expected host:port"},
        {GOOD_SERVER "[store]\nredis = localhost:0\n", "[store] redis: port 0"},
        {GOOD_SERVER "[store]\nredis = unix:relative\n", "unix: needs an absolute path"},
        {GOOD_SERVER "[store]\nredis_user = u\n", "redis_user needs redis_password_file"},
        {GOOD_SERVER "max_frame_bytes = 4M\ninflight_bytes = 1M\n",
         "inflight_bytes must be at least"},
        {GOOD_SERVER "[state]\ndir = relative\n", "[state] dir must be an absolute path"},
        {GOOD_SERVER "[metrics]\nlisten = ::1:80\n", "[metrics] listen"},
        {GOOD_SERVER "[maintenance]\ninterval_ms = 5\n", "[maintenance] interval_ms must be"},
        {GOOD_SERVER "[engine]\ngc_grace_ms = 999\n", "gc_grace_ms must be 0 (the default"},
        {GOOD_SERVER "[engine]\ngc_grace_ms = 5000\nmanifest_max_age_ms = 5000\n",
         "gc_grace_ms (5000) must exceed manifest_max_age_ms (5000)"},
        {"[server]\ninsecure = yes\n", "deployment_id is required"},
        /* review L8: no TLS, no authentication: loopback only */
        {"[server]\ninsecure = yes\nlisten = 0.0.0.0:7700\n"
         "deployment_id = 00112233445566778899aabbccddeeff\n",
         "may only listen on loopback"},
        {"[server]\ninsecure = yes\nlisten = 10.1.2.3:7700\n"
         "deployment_id = 00112233445566778899aabbccddeeff\n",
         "may only listen on loopback"},
        {"[server]\ntls_cert = /c\ntls_key = /k\nclient_ca = /ca\n"
         "deployment_id = 00112233445566778899aabbccddeeff\n",
         "[server] policy is required"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        app_config c;
        char why[512];
        cdx_err e = load(cases[i].text, &c, why, sizeof(why));
        CU_ASSERT_EQUAL_FATAL(e, CDX_OK);
        CU_ASSERT_EQUAL(app_config_check(&c), CDX_ERR_CONFIG);
        bool ok = strstr(cdx_err_detail(), cases[i].want) != NULL;
        CU_ASSERT(ok);
        if (!ok)
            fprintf(stderr, "\n  check %zu: got `%s`, want `%s`", i, cdx_err_detail(),
                    cases[i].want);
    }
    /* Insecure mode needs no TLS files and no admins, and an empty metrics listen turns it off. */
    app_config c;
    char why[512];
    CU_ASSERT_EQUAL(load("[server]\ninsecure = yes\ndeployment_id = "
                         "00112233445566778899aabbccddeeff\n[store]\nbackend = memory\n"
                         "[metrics]\nlisten =\n",
                         &c, why, sizeof(why)),
                    CDX_OK);
    CU_ASSERT_EQUAL(app_config_check(&c), CDX_OK);
    CU_ASSERT_EQUAL(c.metrics_listen[0], '\0');
}

/* The configuration shipped in packaging/ is valid as it stands. */
static void test_packaged(void)
{
    const char *src = getenv("CDX_SOURCE_DIR");
    char p[4096];
    CU_ASSERT_FATAL(src != NULL);
    snprintf(p, sizeof(p), "%s/packaging/cipherdexd.conf", src);
    app_config c;
    app_config_init(&c);
    cdx_err e = app_config_load(p, &c);
    if (e)
        fprintf(stderr, "\n  %s\n", cdx_err_detail());
    CU_ASSERT_EQUAL_FATAL(e, CDX_OK);
    /* Its one placeholder must be replaced before use, and the check says so. */
    CU_ASSERT_EQUAL(app_config_check(&c), CDX_ERR_CONFIG);
    CU_ASSERT(strstr(cdx_err_detail(), "all-zero placeholder") != NULL);
    c.deployment_id[0] = 1;
    CU_ASSERT_EQUAL(app_config_check(&c), CDX_OK);
    CU_ASSERT_STRING_EQUAL(c.hsm.pin_source, "cred:pin");
    /* A production example (review M7): loopback unless set, a CRL, a policy, no SoftHSM. */
    CU_ASSERT_STRING_EQUAL(c.listen, "127.0.0.1:7700");
    CU_ASSERT_NOT_EQUAL(c.crl[0], '\0');
    CU_ASSERT_EQUAL(c.n_admins, 0);
    CU_ASSERT_PTR_NULL(strstr(c.hsm.module_path, "softhsm"));
    CU_ASSERT_FALSE(c.allow_software_token);
    /* The shipped policy example builds. */
    snprintf(c.policy, sizeof(c.policy), "%s/packaging/policy.ini", src);
    pol_policy *pol = NULL;
    e = app_policy_build(&c, &pol);
    if (e)
        fprintf(stderr, "\n  %s\n", cdx_err_detail());
    CU_ASSERT_EQUAL_FATAL(e, CDX_OK);
    size_t rules, roles, admins, ops;
    pol_policy_counts(pol, &rules, &roles, &admins, &ops);
    CU_ASSERT_EQUAL(rules, 5);
    CU_ASSERT_EQUAL(roles, 1);
    CU_ASSERT_EQUAL(admins, 1);
    CU_ASSERT_EQUAL(ops, 1);
    CU_ASSERT_TRUE(
        pol_allows(pol, "uri:spiffe://example.org/search-frontend", POL_NEED_READ, "search-en"));
    CU_ASSERT_FALSE(
        pol_allows(pol, "uri:spiffe://example.org/search-frontend", POL_NEED_WRITE, "search-en"));
    CU_ASSERT_FALSE(
        pol_allows(pol, "uri:spiffe://example.org/hr-portal", POL_NEED_READ, "search-en"));
    pol_policy_free(pol);
}

static void test_addr_split(void)
{
    char host[64];
    uint16_t port = 0;
    CU_ASSERT_EQUAL(app_addr_split("127.0.0.1:80", host, sizeof(host), &port), CDX_OK);
    CU_ASSERT_STRING_EQUAL(host, "127.0.0.1");
    CU_ASSERT_EQUAL(port, 80);
    CU_ASSERT_EQUAL(app_addr_split("[::1]:65535", host, sizeof(host), &port), CDX_OK);
    CU_ASSERT_STRING_EQUAL(host, "::1");
    CU_ASSERT_EQUAL(port, 65535);
    CU_ASSERT_EQUAL(app_addr_split("localhost:7700", host, sizeof(host), &port), CDX_OK);
    CU_ASSERT_EQUAL(app_addr_split("127.0.0.1:0", host, sizeof(host), &port), CDX_OK);
    CU_ASSERT_EQUAL(port, 0);
    static const char *bad[] = {"",       ":80",     "host",  "host:", "host:65536",
                                "::1:80", "[::1]80", "[::1]", "h:8x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CU_ASSERT_EQUAL(app_addr_split(bad[i], host, sizeof(host), &port), CDX_ERR_CONFIG);
    CU_ASSERT_EQUAL(app_addr_split("averyveryverylonghostname:1", host, 8, &port), CDX_ERR_CONFIG);
    CU_ASSERT_EQUAL(app_addr_split("h:+80", host, sizeof(host), &port), CDX_ERR_CONFIG);
    CU_ASSERT_EQUAL(app_addr_split("h:99999999999999999999", host, sizeof(host), &port),
                    CDX_ERR_CONFIG);
    CU_ASSERT_EQUAL(app_addr_split("h:00080", host, sizeof(host), &port), CDX_OK);
    CU_ASSERT_EQUAL(port, 80);
    /* Resolving: a passive stream address, or the setting's name in the error. */
    struct addrinfo *ai = NULL;
    CU_ASSERT_EQUAL(app_addr_resolve("127.0.0.1:0", "[server] listen", &ai), CDX_OK);
    CU_ASSERT(ai != NULL && ai->ai_socktype == SOCK_STREAM);
    freeaddrinfo(ai);
    CU_ASSERT_EQUAL(app_addr_resolve("nocolon", "[metrics] listen", &ai), CDX_ERR_CONFIG);
    CU_ASSERT(ai == NULL);
    CU_ASSERT(strncmp(cdx_err_detail(), "[metrics] listen: ", 18) == 0);
}

int main(void)
{
    static const fx_test tests[] = {
        {"defaults", test_defaults},
        {"a full file", test_full_file},
        {"bad lines: line number and what is wrong", test_errors},
        {"cross-key checks", test_check},
        {"host:port parsing", test_addr_split},
        {"packaged configuration", test_packaged},
    };
    dir = fx_tmpdir_new("config");
    if (!dir)
        return 1;
    snprintf(path, sizeof(path), "%s/cipherdexd.conf", dir);
    int rc = fx_cunit_run1("config", tests, FX_LEN(tests));
    unlink(path);
    fx_rm_rf(dir);
    free(dir);
    return rc;
}
