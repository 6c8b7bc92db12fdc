/*
 * test_hsm_tool.c - the cipherdex-hsm admin tool, run as a program against a
 * throwaway SoftHSM token: every subcommand, the attributes an auditor
 * checks, and the errors an operator meets (bad key file, wrong PIN, usage).
 *
 * Key check values are recomputed here with OpenSSL (HMAC-SHA256 of
 * "cipherdex/v1/kcv", first 8 bytes) for keys whose bytes the test knows, and
 * the wrapped key is made here with EVP_aes_256_wrap_pad, as a KMS would.
 */
#include <CUnit/Basic.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fx_softhsm.h"
#include "fx_tmp.h"
#include "cdx_hex.h"
#include "fx_cunit.h"
#include "fx_custody.h"
#include "hsm_keys.h"
#include "hsm_subkey.h"
#include "pol_audit.h"

#define OUT_CAP (256 * 1024)
#define LABEL   "cdx-hsm-tool"

static fx_token *tok;
static char tool[4096];
static char conf[4096];
static char *out;

/* State carried between tests (CUnit runs them in order). */
static uint8_t kek[32];
static char gen_id[33], gen_kcv[17];
static char imp_id[33], unw_id[33], unw64_id[33];
static char deploy_id[33];

static const char *const quiet_env[] = {"CDX_LOG_LEVEL=error", NULL};

static void hex(const uint8_t *b, size_t n, char *o)
{
    for (size_t i = 0; i < n; i++)
        sprintf(o + 2 * i, "%02x", b[i]);
}

static int write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    int rc = fwrite(data, 1, n, f) == n ? 0 : -1;
    if (fclose(f) != 0)
        rc = -1;
    if (rc == 0)
        rc = chmod(path, 0600);
    return rc;
}

static void path_in_dir(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", fx_token_dir(tok), name);
}

/* A base64 key file as `openssl rand -base64 32` writes it. */
static int write_key_file(const char *path, const uint8_t *key, size_t n)
{
    unsigned char b64[128];
    int len = EVP_EncodeBlock(b64, key, (int)n);
    b64[len++] = '\n';
    return write_file(path, b64, (size_t)len);
}

static void kcv_of(const uint8_t key[32], char out_hex[17])
{
    uint8_t mac[32];
    unsigned len = 0;
    static const char msg[] = "cipherdex/v1/kcv";
    HMAC(EVP_sha256(), key, 32, (const unsigned char *)msg, sizeof(msg) - 1, mac, &len);
    hex(mac, 8, out_hex);
}

/*
 * Run the tool with --config CONF (or another config when cfg is given) and
 * the NULL-terminated arguments, with env (NULL-terminated, NULL: quiet_env)
 * added to its environment; output (stdout+stderr) lands in `out`.
 */
static int run_va(const char *const *env, const char *cfg, va_list ap)
{
    const char *argv[32];
    int n = 0;

    argv[n++] = tool;
    if (cfg) {
        argv[n++] = "--config";
        argv[n++] = cfg;
    }
    for (const char *a; (a = va_arg(ap, const char *)) && n < 31;)
        argv[n++] = a;
    argv[n] = NULL;
    out[0] = '\0';
    return fx_run_env(argv, env ? env : quiet_env, NULL, out, OUT_CAP);
}

static int run_cfg(const char *cfg, ...)
{
    va_list ap;
    va_start(ap, cfg);
    int rc = run_va(NULL, cfg, ap);
    va_end(ap);
    return rc;
}

static int run_env_cfg(const char *const *env, const char *cfg, ...)
{
    va_list ap;
    va_start(ap, cfg);
    int rc = run_va(env, cfg, ap);
    va_end(ap);
    return rc;
}

#define run(...) run_cfg(conf, __VA_ARGS__, NULL)

/* Copy the string value of "key":"..." from a JSON line into val. */
static bool json_get(const char *json, const char *key, char *val, size_t cap)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":\"", key);
    const char *p = strstr(json, pat);
    if (!p)
        return false;
    p += strlen(pat);
    const char *e = strchr(p, '"');
    if (!e || (size_t)(e - p) >= cap)
        return false;
    memcpy(val, p, (size_t)(e - p));
    val[e - p] = '\0';
    return true;
}

/* The JSON object of the key labelled `label` in `keys --json` output. */
static bool key_object(const char *json, const char *label, char *obj, size_t cap)
{
    char pat[128];
    snprintf(pat, sizeof(pat), "\"label\":\"%s\"", label);
    const char *p = strstr(json, pat);
    if (!p)
        return false;
    const char *b = p;
    while (b > json && *b != '{')
        b--;
    const char *e = strstr(p, "}}");
    if (!e || (size_t)(e + 2 - b) >= cap)
        return false;
    memcpy(obj, b, (size_t)(e + 2 - b));
    obj[e + 2 - b] = '\0';
    return true;
}

static int suite_init(void)
{
    const char *bin = getenv("CDX_BIN_DIR");
    char pinpath[4096], text[16384];

    if (!bin) {
        fprintf(stderr, "CDX_BIN_DIR is not set (run through ctest)\n");
        return -1;
    }
    snprintf(tool, sizeof(tool), "%s/appliance/cipherdex-hsm", bin);
    out = malloc(OUT_CAP);
    tok = fx_token_new(LABEL);
    if (!out || !tok)
        return -1;
    char *uri = fx_token_uri(tok);
    if (!uri)
        return -1;
    snprintf(pinpath, sizeof(pinpath), "%s", fx_token_pin_file(tok));
    snprintf(text, sizeof(text),
             "# written by test_hsm_tool\n[redis]\nurl = whatever\n\n[hsm]\nmodule = %s\n"
             "token = %s\npin = file:%s\nsessions = 2\n",
             fx_softhsm_module(), uri, pinpath);
    free(uri);
    path_in_dir(conf, sizeof(conf), "cipherdex.conf");
    return write_file(conf, text, strlen(text));
}

static int suite_clean(void)
{
    fx_token_free(tok);
    free(out);
    return 0;
}

/* ---- tests ---- */

static void test_usage(void)
{
    CU_ASSERT_EQUAL(run_cfg(NULL, NULL), 2);
    CU_ASSERT_EQUAL(run_cfg(NULL, "--help", NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "index unwrap"));
    CU_ASSERT_EQUAL(run("index", "unwrap", "--help"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "--wrapped"));
    CU_ASSERT_EQUAL(run("frobnicate"), 2);
    CU_ASSERT_EQUAL(run("index", "generate", "--kcv", "0011223344556677"), 2);
    CU_ASSERT_EQUAL(run("index", "kcv"), 2);
    CU_ASSERT_EQUAL(run("index", "kcv", "--id", "xyz"), 2);
    /* A PIN is never taken from the command line. */
    CU_ASSERT_EQUAL(run("--pin", "1234", "keys"), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "never accepted"));
    CU_ASSERT_EQUAL(run("--pin=1234", "keys"), 2);
}

static void test_config_errors(void)
{
    char bad[4096];
    path_in_dir(bad, sizeof(bad), "bad.conf");
    const char text[] = "[hsm]\nmodule = /usr/lib/softhsm/libsofthsm2.so\nfrobs = 3\n";
    CU_ASSERT_EQUAL_FATAL(write_file(bad, text, sizeof(text) - 1), 0);
    CU_ASSERT_EQUAL(run_cfg(bad, "keys", NULL), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "CONFIG"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "bad.conf:3"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "frobs"));

    const char text2[] = "[hsm]\nsessions = lots\n";
    CU_ASSERT_EQUAL_FATAL(write_file(bad, text2, sizeof(text2) - 1), 0);
    CU_ASSERT_EQUAL(run_cfg(bad, "tokens", NULL), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "bad.conf:2"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "sessions"));
}

static void test_tokens(void)
{
    CU_ASSERT_EQUAL(run("tokens"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, LABEL));
    CU_ASSERT_EQUAL(run("--json", "tokens"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"label\":\"" LABEL "\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"matches_uri\":true"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"initialized\":true"));
}

static void test_root_create(void)
{
    uint8_t id[16];
    char kcv1[17], kcv2[17], status[32];

    CU_ASSERT_EQUAL_FATAL(RAND_bytes(id, sizeof(id)), 1);
    hex(id, sizeof(id), deploy_id);
    CU_ASSERT_EQUAL(run("--json", "root", "create", "--deployment-id", deploy_id), 0);
    CU_ASSERT_TRUE(json_get(out, "status", status, sizeof(status)));
    CU_ASSERT_STRING_EQUAL(status, "created");
    CU_ASSERT_TRUE(json_get(out, "kcv", kcv1, sizeof(kcv1)));
    CU_ASSERT_EQUAL(run("--json", "root", "create", "--deployment-id", deploy_id), 0);
    CU_ASSERT_TRUE(json_get(out, "status", status, sizeof(status)));
    CU_ASSERT_STRING_EQUAL(status, "existing");
    CU_ASSERT_TRUE(json_get(out, "kcv", kcv2, sizeof(kcv2)));
    CU_ASSERT_STRING_EQUAL(kcv1, kcv2);
}

static cdx_err audit_mac(void *arg, const void *msg, size_t len, uint8_t mac[32])
{
    return hsm_subkey_hmac(arg, msg, len, mac);
}

/*
 * audit verify: a trail MACed under the root key's audit subkey (derived here through custody,
 * as the daemon will) verifies; an edited record is named by file:line; a trail MACed under
 * another key fails at its first record.
 */
static void test_audit_verify(void)
{
    hsm_config cfg;
    fx_hsm_config(tok, NULL, 0, &cfg);
    hsm_custody *c = fx_custody_open(&cfg);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    hsm_key_ref root = {.kind = HSM_KEY_ROOT};
    CU_ASSERT_EQUAL_FATAL(cdx_hex_decode(deploy_id, root.id, 16), 0);
    hsm_subkey *sk = NULL;
    CU_ASSERT_EQUAL_FATAL(hsm_subkey_get(c, &root, NULL, HSM_P_AUDIT, 0, &sk), CDX_OK);
    char path[4096], trail[5 * POL_AUDIT_LINE_MAX];
    path_in_dir(path, sizeof(path), "audit.log");
    static const char *const bodies[] = {"kind=start", "kind=request op=query code=OK",
                                         "kind=request op=get code=PERMISSION_DENIED",
                                         "kind=checkpoint records=3", "kind=stop"};
    pol_audit_pos pos = {0};
    size_t n = 0;
    for (size_t i = 0; i < 5; i++) {
        size_t len = 0;
        CU_ASSERT_EQUAL_FATAL(pol_audit_append(&pos, 1800000000000ull + i, bodies[i], audit_mac, sk,
                                               trail + n, sizeof(trail) - n, &len),
                              CDX_OK);
        n += len;
    }
    hsm_subkey_release(sk);
    hsm_custody_free(c);
    CU_ASSERT_EQUAL_FATAL(write_file(path, trail, n), 0);
    CU_ASSERT_EQUAL(run("--json", "audit", "verify", path, "--deployment-id", deploy_id), 0);
    char v[64];
    CU_ASSERT_TRUE(json_get(out, "status", v, sizeof(v)) && !strcmp(v, "ok"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"records\":5"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"clean_stop\":true"));
    /* edited: record 3's code */
    char *at = strstr(trail, "PERMISSION_DENIED");
    CU_ASSERT_PTR_NOT_NULL_FATAL(at);
    memcpy(at, "OK_______________", 17);
    CU_ASSERT_EQUAL_FATAL(write_file(path, trail, n), 0);
    CU_ASSERT_NOT_EQUAL(run("audit", "verify", path, "--deployment-id", deploy_id), 0);
    char want[4200];
    snprintf(want, sizeof(want), "%s:3:", path);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, want));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "audit record 3 fails its MAC"));
    /* a missing file is named */
    CU_ASSERT_NOT_EQUAL(
        run("audit", "verify", "/nonexistent/audit.log", "--deployment-id", deploy_id), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "/nonexistent/audit.log"));
}

static void test_kek_import(void)
{
    char path[4096];

    CU_ASSERT_EQUAL_FATAL(RAND_bytes(kek, sizeof(kek)), 1);
    path_in_dir(path, sizeof(path), "kek.b64");
    CU_ASSERT_EQUAL_FATAL(write_key_file(path, kek, sizeof(kek)), 0);
    CU_ASSERT_EQUAL(run("kek", "import", "kms1", "--key-file", path), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "cipherdex-kek-kms1"));
    CU_ASSERT_EQUAL(run("kek", "create", "spare"), 0);
    CU_ASSERT_EQUAL(run("kek", "create", "bad/name"), 2);
}

/* probe: SoftHSM 2.6.1 takes the full template, refuses to make a key derivable, and has no KWP. */
static void test_probe(void)
{
    CU_ASSERT_EQUAL(run("probe"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "verdict: Cipherdex can run on this token"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "CKM_SHA256_HMAC              yes"));
    CU_ASSERT_EQUAL(run("--json", "probe"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"can_run\":true"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"generate_full_template\":\"ok\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"copy_with_derive_refused_means_not_ok\":\"CKR_"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"never_extractable\":true"));
    /* It leaves nothing on the token. */
    CU_ASSERT_EQUAL(run("keys"), 0);
    CU_ASSERT_PTR_NULL(strstr(out, "cipherdex-probe"));
}

static void test_index_generate(void)
{
    char status[32], label[80], want[80];

    CU_ASSERT_EQUAL(run("--json", "index", "generate"), 0);
    CU_ASSERT_TRUE(json_get(out, "status", status, sizeof(status)));
    CU_ASSERT_STRING_EQUAL(status, "generated");
    CU_ASSERT_TRUE_FATAL(json_get(out, "id", gen_id, sizeof(gen_id)));
    CU_ASSERT_EQUAL(strlen(gen_id), 32);
    CU_ASSERT_TRUE_FATAL(json_get(out, "kcv", gen_kcv, sizeof(gen_kcv)));
    CU_ASSERT_EQUAL(strlen(gen_kcv), 16);
    CU_ASSERT_TRUE(json_get(out, "label", label, sizeof(label)));
    snprintf(want, sizeof(want), "cipherdex-index-%s", gen_id);
    CU_ASSERT_STRING_EQUAL(label, want);
    /* The same id again is refused. */
    CU_ASSERT_EQUAL(run("index", "generate", "--id", gen_id), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "ALREADY_EXISTS"));
}

static void test_index_import(void)
{
    uint8_t key[32], id[16];
    char path[4096], kcv[17], want[17];

    CU_ASSERT_EQUAL_FATAL(RAND_bytes(key, sizeof(key)), 1);
    CU_ASSERT_EQUAL_FATAL(RAND_bytes(id, sizeof(id)), 1);
    hex(id, sizeof(id), imp_id);
    path_in_dir(path, sizeof(path), "index_key.txt");
    CU_ASSERT_EQUAL_FATAL(write_key_file(path, key, sizeof(key)), 0);
    CU_ASSERT_EQUAL(run("--json", "index", "import", "--key-file", path, "--id", imp_id), 0);
    CU_ASSERT_TRUE(json_get(out, "kcv", kcv, sizeof(kcv)));
    kcv_of(key, want);
    CU_ASSERT_STRING_EQUAL(kcv, want);
    /* The same key again (another id): refused, naming the object that has it. */
    CU_ASSERT_EQUAL(run("index", "import", "--key-file", path), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "KEY_IN_USE"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, imp_id));
    /* A key file others may read is refused, like a PIN file. */
    CU_ASSERT_EQUAL(chmod(path, 0644), 0);
    CU_ASSERT_EQUAL(run("index", "import", "--key-file", path), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "chmod 600"));
}

static void test_bad_key_file(void)
{
    char path[4096];
    uint8_t short_key[16] = {1};

    path_in_dir(path, sizeof(path), "bad_key.txt");
    CU_ASSERT_EQUAL_FATAL(write_file(path, "not base64 at all!\n", 19), 0);
    CU_ASSERT_EQUAL(run("index", "import", "--key-file", path), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "BAD_KEY_FILE"));
    CU_ASSERT_EQUAL_FATAL(write_key_file(path, short_key, sizeof(short_key)), 0);
    CU_ASSERT_EQUAL(run("index", "import", "--key-file", path), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "BAD_KEY_FILE"));
    path_in_dir(path, sizeof(path), "missing.txt");
    CU_ASSERT_EQUAL(run("kek", "import", "k2", "--key-file", path), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "BAD_KEY_FILE"));
}

/* RFC 5649 wrap of dek under the KEK, as a KMS hands out a data key. */
static int wrap(const uint8_t dek[32], uint8_t blob[48])
{
    return fx_kms_wrap(kek, dek, 32, blob) == 40 ? 0 : -1;
}

static void test_index_unwrap(void)
{
    uint8_t dek[32], blob[48], id[16]; /* the blob is 40 bytes */
    unsigned char b64[80];
    char path[4096], kcv[17], want[17];

    CU_ASSERT_EQUAL_FATAL(RAND_bytes(dek, sizeof(dek)), 1);
    CU_ASSERT_EQUAL_FATAL(wrap(dek, blob), 0);
    kcv_of(dek, want);

    /* Raw blob. */
    CU_ASSERT_EQUAL_FATAL(RAND_bytes(id, sizeof(id)), 1);
    hex(id, sizeof(id), unw_id);
    path_in_dir(path, sizeof(path), "dek.wrapped");
    CU_ASSERT_EQUAL_FATAL(write_file(path, blob, 40), 0);
    CU_ASSERT_EQUAL(
        run("--json", "index", "unwrap", "--kek", "kms1", "--wrapped", path, "--id", unw_id), 0);
    CU_ASSERT_TRUE(json_get(out, "kcv", kcv, sizeof(kcv)));
    CU_ASSERT_STRING_EQUAL(kcv, want);

    /* Base64 of the blob, under a random id; the same key gives the same KCV. */
    int len = EVP_EncodeBlock(b64, blob, 40);
    b64[len++] = '\n';
    path_in_dir(path, sizeof(path), "dek.wrapped.b64");
    CU_ASSERT_EQUAL_FATAL(write_file(path, b64, (size_t)len), 0);
    CU_ASSERT_EQUAL(run("index", "unwrap", "--kek", "kms1", "--wrapped", path), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "BAD_WRAPPED_KEY"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "--base64"));
    CU_ASSERT_EQUAL(
        run("--json", "index", "unwrap", "--kek", "kms1", "--wrapped", path, "--base64"), 0);
    CU_ASSERT_TRUE(json_get(out, "kcv", kcv, sizeof(kcv)));
    CU_ASSERT_STRING_EQUAL(kcv, want);
    CU_ASSERT_TRUE(json_get(out, "id", unw64_id, sizeof(unw64_id)));

    /* Tampered blob, wrong KEK, short blob. */
    blob[20] ^= 1;
    path_in_dir(path, sizeof(path), "tampered.wrapped");
    CU_ASSERT_EQUAL_FATAL(write_file(path, blob, 40), 0);
    CU_ASSERT_EQUAL(run("index", "unwrap", "--kek", "kms1", "--wrapped", path), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "BAD_WRAPPED_KEY"));
    CU_ASSERT_EQUAL(run("index", "unwrap", "--kek", "nosuch", "--wrapped", path), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "KEY_NOT_FOUND"));
    CU_ASSERT_EQUAL_FATAL(write_file(path, blob, 39), 0);
    CU_ASSERT_EQUAL(run("index", "unwrap", "--kek", "kms1", "--wrapped", path), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "BAD_WRAPPED_KEY"));
}

static void test_index_adopt_kcv_check(void)
{
    char kcv[17];
    uint8_t none[16];
    char none_hex[33];

    CU_ASSERT_EQUAL(run("--json", "index", "adopt", "--id", gen_id), 0);
    CU_ASSERT_TRUE(json_get(out, "kcv", kcv, sizeof(kcv)));
    CU_ASSERT_STRING_EQUAL(kcv, gen_kcv);
    CU_ASSERT_EQUAL(run("--json", "index", "adopt", "--id", unw_id), 0);

    CU_ASSERT_EQUAL(run("--json", "index", "kcv", "--id", gen_id), 0);
    CU_ASSERT_TRUE(json_get(out, "kcv", kcv, sizeof(kcv)));
    CU_ASSERT_STRING_EQUAL(kcv, gen_kcv);

    CU_ASSERT_EQUAL(run("index", "check", "--id", gen_id, "--kcv", gen_kcv), 0);
    CU_ASSERT_EQUAL(run("index", "check", "--id", gen_id, "--kcv", "0000000000000000"), 3);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "KEY_REPLACED"));
    CU_ASSERT_EQUAL(run("--json", "index", "check", "--id", gen_id, "--kcv", "0000000000000000"),
                    3);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"name\":\"KEY_REPLACED\""));

    memset(none, 0xee, sizeof(none));
    hex(none, sizeof(none), none_hex);
    CU_ASSERT_EQUAL(run("index", "adopt", "--id", none_hex), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "KEY_NOT_FOUND"));
    CU_ASSERT_EQUAL(run("index", "kcv", "--id", none_hex), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "KEY_NOT_FOUND"));
}

static void check_key(const char *json, const char *label, bool generated)
{
    char obj[8192];

    CU_ASSERT_TRUE_FATAL(key_object(json, label, obj, sizeof(obj)));
    CU_ASSERT_PTR_NOT_NULL(strstr(obj, "\"template\":\"ok\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(obj, "\"wrong\":[]"));
    CU_ASSERT_PTR_NOT_NULL(strstr(obj, "\"derive\":false"));
    CU_ASSERT_PTR_NOT_NULL(strstr(obj, "\"modifiable\":false"));
    CU_ASSERT_PTR_NOT_NULL(strstr(obj, "\"copyable\":false"));
    CU_ASSERT_PTR_NOT_NULL(strstr(obj, "\"sensitive\":true"));
    CU_ASSERT_PTR_NOT_NULL(strstr(obj, "\"extractable\":false"));
    CU_ASSERT_PTR_NOT_NULL(strstr(obj, "\"encrypt\":false"));
    CU_ASSERT_PTR_NOT_NULL(strstr(obj, "\"wrap\":false"));
    CU_ASSERT_PTR_NOT_NULL(strstr(obj, generated ? "\"local\":true" : "\"local\":false"));
    CU_ASSERT_PTR_NOT_NULL(
        strstr(obj, generated ? "\"never_extractable\":true" : "\"never_extractable\":false"));
    if (!strstr(obj, "\"template\":\"ok\""))
        fprintf(stderr, "\n%s: %s\n", label, obj);
}

static void test_keys_json(void)
{
    char label[80];

    CU_ASSERT_EQUAL_FATAL(run("--json", "keys"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"mismatches\":0"));
    /* root, 2 KEKs, generated, imported, 2 unwrapped */
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"count\":7"));
    check_key(out, "cipherdex-root", true);
    check_key(out, "cipherdex-kek-kms1", false);
    check_key(out, "cipherdex-kek-spare", true);
    snprintf(label, sizeof(label), "cipherdex-index-%s", gen_id);
    check_key(out, label, true);
    snprintf(label, sizeof(label), "cipherdex-index-%s", imp_id);
    check_key(out, label, false);
    snprintf(label, sizeof(label), "cipherdex-index-%s", unw_id);
    check_key(out, label, false);
    snprintf(label, sizeof(label), "cipherdex-index-%s", unw64_id);
    check_key(out, label, false);

    /* Root and index keys sign (HMAC) only; KEKs unwrap only. */
    char obj[8192];
    CU_ASSERT_TRUE_FATAL(key_object(out, "cipherdex-root", obj, sizeof(obj)));
    CU_ASSERT_PTR_NOT_NULL(strstr(obj, "\"sign\":true"));
    CU_ASSERT_PTR_NOT_NULL(strstr(obj, "\"unwrap\":false"));
    CU_ASSERT_PTR_NOT_NULL(strstr(obj, "\"key_type\":\"generic_secret\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(obj, "\"unwrap_template\":null"));
    /* KEKs carry the index-key unwrap template (security review M2), imported or created. */
    CU_ASSERT_TRUE_FATAL(key_object(out, "cipherdex-kek-kms1", obj, sizeof(obj)));
    CU_ASSERT_PTR_NOT_NULL(strstr(obj, "\"sign\":false"));
    CU_ASSERT_PTR_NOT_NULL(strstr(obj, "\"unwrap\":true"));
    CU_ASSERT_PTR_NOT_NULL(strstr(obj, "\"unwrap_template\":true"));
    CU_ASSERT_TRUE_FATAL(key_object(out, "cipherdex-kek-spare", obj, sizeof(obj)));
    CU_ASSERT_PTR_NOT_NULL(strstr(obj, "\"unwrap_template\":true"));
    CU_ASSERT_PTR_NOT_NULL(strstr(obj, "\"key_type\":\"aes\""));

    /* The table names every key too. */
    CU_ASSERT_EQUAL(run("keys"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "TEMPLATE"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, gen_id));
}

/* An independent tool sees the same keys, and sees them sensitive. */
static void test_pkcs11_tool(void)
{
    /* OpenSC's tools read `--pin env:NAME` from the environment: the PIN stays out of argv. */
    const char *argv[] = {
        "pkcs11-tool", "--module", fx_softhsm_module(), "--token-label",  LABEL,
        "--login",     "--pin",    "env:CDX_TEST_PIN",  "--list-objects", "--type",
        "secrkey",     NULL};
    char label[80], pin_env[64];

    snprintf(pin_env, sizeof(pin_env), "CDX_TEST_PIN=%s", fx_token_pin(tok));
    const char *const env[] = {pin_env, NULL};
    int rc = fx_run_env(argv, env, NULL, out, OUT_CAP);
    if (rc == 127) {
        fprintf(stderr, "\npkcs11-tool not installed (opensc): skipped\n");
        return;
    }
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    snprintf(label, sizeof(label), "label:      cipherdex-index-%s", gen_id);
    const char *p = strstr(out, label);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    const char *acc = strstr(p, "Access:");
    CU_ASSERT_PTR_NOT_NULL_FATAL(acc);
    const char *eol = strchr(acc, '\n');
    CU_ASSERT_PTR_NOT_NULL_FATAL(eol);
    char line[256];
    snprintf(line, sizeof(line), "%.*s", (int)(eol - acc), acc);
    CU_ASSERT_PTR_NOT_NULL(strstr(line, "sensitive"));
    CU_ASSERT_PTR_NOT_NULL(strstr(line, "never extractable"));

    snprintf(label, sizeof(label), "label:      cipherdex-index-%s", imp_id);
    p = strstr(out, label);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    acc = strstr(p, "Access:");
    CU_ASSERT_PTR_NOT_NULL_FATAL(acc);
    CU_ASSERT_EQUAL(strncmp(acc, "Access:     sensitive", 21), 0);
}

static void test_wrong_pin(void)
{
    char pin[4096], cfg[4096], text[8192];
    char *uri = fx_token_uri(tok);

    CU_ASSERT_PTR_NOT_NULL_FATAL(uri);
    path_in_dir(pin, sizeof(pin), "wrong.pin");
    CU_ASSERT_EQUAL_FATAL(write_file(pin, "0000000000000000", 16), 0);
    path_in_dir(cfg, sizeof(cfg), "wrongpin.conf");
    snprintf(text, sizeof(text), "[hsm]\nmodule = %s\ntoken = %s\npin = file:%s\n",
             fx_softhsm_module(), uri, pin);
    free(uri);
    CU_ASSERT_EQUAL_FATAL(write_file(cfg, text, strlen(text)), 0);
    CU_ASSERT_EQUAL(run_cfg(cfg, "keys", NULL), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "HSM_PIN_INCORRECT"));
    /* Flags override the file: the right PIN source works. */
    char src[4200];
    snprintf(src, sizeof(src), "file:%s", fx_token_pin_file(tok));
    CU_ASSERT_EQUAL(run_cfg(cfg, "--pin-source", src, "keys", NULL), 0);
    /* No such token. */
    CU_ASSERT_EQUAL(run("--token", "pkcs11:token=no-such-token", "keys"), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "TOKEN_NOT_FOUND"));
}

/* Key generations (rotate --new-key): kcv, check and destroy take --gen N. */
static void test_generations(void)
{
    hsm_config cfg;
    fx_hsm_config(tok, NULL, 0, &cfg);
    hsm_custody *c = fx_custody_open(&cfg);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    hsm_key_ref g1 = {.kind = HSM_KEY_INDEX, .gen = 1};
    CU_ASSERT_EQUAL_FATAL(cdx_hex_decode(gen_id, g1.id, 16), 0);
    uint8_t k1[8];
    CU_ASSERT_EQUAL_FATAL(hsm_index_key_generate_ref(c, &g1, k1), CDX_OK);
    hsm_custody_free(c);
    char k1hex[17], kcv[17], label[80], want_label[80];
    hex(k1, 8, k1hex);
    CU_ASSERT_STRING_NOT_EQUAL(k1hex, gen_kcv);
    snprintf(want_label, sizeof(want_label), "cipherdex-index-%s.g1", gen_id);

    CU_ASSERT_EQUAL(run("--json", "index", "kcv", "--id", gen_id, "--gen", "1"), 0);
    CU_ASSERT_TRUE(json_get(out, "kcv", kcv, sizeof(kcv)));
    CU_ASSERT_STRING_EQUAL(kcv, k1hex);
    CU_ASSERT_TRUE(json_get(out, "label", label, sizeof(label)));
    CU_ASSERT_STRING_EQUAL(label, want_label);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"generation\":1"));
    /* --gen 0 is the plain key */
    CU_ASSERT_EQUAL(run("--json", "index", "kcv", "--id", gen_id, "--gen", "0"), 0);
    CU_ASSERT_TRUE(json_get(out, "kcv", kcv, sizeof(kcv)));
    CU_ASSERT_STRING_EQUAL(kcv, gen_kcv);
    CU_ASSERT_EQUAL(run("index", "check", "--id", gen_id, "--gen", "1", "--kcv", k1hex), 0);
    CU_ASSERT_EQUAL(run("index", "check", "--id", gen_id, "--gen", "1", "--kcv", gen_kcv), 3);
    CU_ASSERT_EQUAL(run("index", "kcv", "--id", gen_id, "--gen", "2"), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "KEY_NOT_FOUND"));
    static const char *const bad[] = {"-1", "x", "", "4294967296", "1x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CU_ASSERT_EQUAL(run("index", "kcv", "--id", gen_id, "--gen", bad[i]), 2);
        CU_ASSERT_PTR_NOT_NULL(strstr(out, *bad[i] ? "--gen: expected a key generation"
                                                   : "option --gen: empty value"));
    }
    /* Destroying generation 1 leaves generation 0 alone. */
    CU_ASSERT_EQUAL(run("index", "destroy", "--id", gen_id, "--gen", "1"), 2);
    CU_ASSERT_EQUAL(run("index", "destroy", "--id", gen_id, "--gen", "1", "--yes"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, want_label));
    CU_ASSERT_EQUAL(run("index", "kcv", "--id", gen_id, "--gen", "1"), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "KEY_NOT_FOUND"));
    CU_ASSERT_EQUAL(run("index", "check", "--id", gen_id, "--kcv", gen_kcv), 0);
}

static void test_destroy(void)
{
    CU_ASSERT_EQUAL(run("index", "destroy", "--id", gen_id), 2);
    CU_ASSERT_EQUAL(run("index", "kcv", "--id", gen_id), 0);
    CU_ASSERT_EQUAL(run("index", "destroy", "--id", gen_id, "--yes"), 0);
    CU_ASSERT_EQUAL(run("index", "kcv", "--id", gen_id), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "KEY_NOT_FOUND"));
    CU_ASSERT_EQUAL(run("index", "destroy", "--id", gen_id, "--yes"), 1);
    CU_ASSERT_EQUAL(run("kek", "destroy", "spare"), 2);
    CU_ASSERT_EQUAL(run("kek", "destroy", "spare", "--yes"), 0);
    CU_ASSERT_EQUAL(run("--json", "keys"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"count\":5"));
    CU_ASSERT_PTR_NULL(strstr(out, gen_id));
    CU_ASSERT_PTR_NULL(strstr(out, "cipherdex-kek-spare"));
}

/*
 * A module that does not load or initialise: exit 1 with HSM_UNAVAILABLE and
 * the reason (review E9: `tokens` died with SIGSEGV in libp11 here).
 */
static void test_tokens_module_failures(void)
{
    const char *wrap = getenv("CDX_P11WRAP");
    CU_ASSERT_PTR_NOT_NULL_FATAL(wrap);
    CU_ASSERT_EQUAL(
        run_cfg(NULL, "tokens", "--module", "/usr/lib/x86_64-linux-gnu/libssl.so.3", NULL), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "HSM_UNAVAILABLE"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "is not a PKCS#11 module"));
    CU_ASSERT_EQUAL(run_cfg(NULL, "--json", "tokens", "--module",
                            "/usr/lib/x86_64-linux-gnu/libssl.so.3", NULL),
                    1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"name\":\"HSM_UNAVAILABLE\""));

    static const char *const init_fails[] = {"CDX_LOG_LEVEL=error",
                                             "P11WRAP_INJECT=C_Initialize=0x6", NULL};
    CU_ASSERT_EQUAL(run_env_cfg(init_fails, NULL, "tokens", "--module", wrap, NULL), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "HSM_UNAVAILABLE"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "C_Initialize: CKR_FUNCTION_FAILED"));
    /* The commands that log in say the same. */
    CU_ASSERT_EQUAL(run_env_cfg(init_fails, conf, "keys", "--module", wrap, NULL), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "C_Initialize: CKR_FUNCTION_FAILED"));
}

/* A slot whose C_GetTokenInfo fails is shown with its error, and the run fails. */
static void test_tokens_unreadable_slot(void)
{
    const char *wrap = getenv("CDX_P11WRAP");
    CU_ASSERT_PTR_NOT_NULL_FATAL(wrap);
    static const char *const env[] = {"CDX_LOG_LEVEL=error", "P11WRAP_INJECT=C_GetTokenInfo=0x30",
                                      NULL};
    CU_ASSERT_EQUAL(run_env_cfg(env, conf, "tokens", "--module", wrap, NULL), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "STATUS"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "HSM_UNAVAILABLE (C_GetTokenInfo: CKR_DEVICE_ERROR)"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "slots could not be read"));
    CU_ASSERT_EQUAL(run_env_cfg(env, conf, "--json", "tokens", "--module", wrap, NULL), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"detail\":\"C_GetTokenInfo: CKR_DEVICE_ERROR\""));
    /* One JSON object: the error is inside it. */
    CU_ASSERT_PTR_NULL(strstr(strstr(out, "\"command\":\"tokens\"") + 1, "\"command\""));
    CU_ASSERT_EQUAL(run_env_cfg(env, conf, "keys", "--module", wrap, NULL), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "TOKEN_NOT_FOUND"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "unreadable (C_GetTokenInfo: CKR_DEVICE_ERROR"));
    /* Healthy slots say ok. */
    CU_ASSERT_EQUAL(run("tokens"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, " ok"));
    CU_ASSERT_EQUAL(run("--json", "tokens"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"error\":null"));
}

/*
 * A module that returns a new, uninitialised function list per
 * C_GetFunctionList (p11-kit client/proxy; the wrapper imitates it): every
 * command works, since custody initialises and uses one list.
 */
static void test_fresh_function_lists(void)
{
    const char *wrap = getenv("CDX_P11WRAP");
    CU_ASSERT_PTR_NOT_NULL_FATAL(wrap);
    static const char *const env[] = {"CDX_LOG_LEVEL=error", "P11WRAP_FRESH_LISTS=1", NULL};
    char id[33], kcv[17], kcv2[17];
    CU_ASSERT_EQUAL(run_env_cfg(env, conf, "--json", "tokens", "--module", wrap, NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"label\":\"" LABEL "\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"matches_uri\":true"));
    CU_ASSERT_EQUAL(run_env_cfg(env, conf, "--json", "index", "generate", "--module", wrap, NULL),
                    0);
    CU_ASSERT_TRUE_FATAL(json_get(out, "id", id, sizeof(id)));
    CU_ASSERT_TRUE(json_get(out, "kcv", kcv, sizeof(kcv)));
    CU_ASSERT_EQUAL(
        run_env_cfg(env, conf, "--json", "index", "kcv", "--id", id, "--module", wrap, NULL), 0);
    CU_ASSERT_TRUE(json_get(out, "kcv", kcv2, sizeof(kcv2)));
    CU_ASSERT_STRING_EQUAL(kcv, kcv2);
    CU_ASSERT_EQUAL(
        run_env_cfg(env, conf, "index", "destroy", "--id", id, "--yes", "--module", wrap, NULL), 0);
}

/* init_args from [hsm] and from --init-args are accepted (the wrapper drops pReserved). */
static void test_init_args(void)
{
    const char *wrap = getenv("CDX_P11WRAP");
    CU_ASSERT_PTR_NOT_NULL_FATAL(wrap);
    char cfg[4096], text[8192];
    char *uri = fx_token_uri(tok);
    CU_ASSERT_PTR_NOT_NULL_FATAL(uri);
    path_in_dir(cfg, sizeof(cfg), "initargs.conf");
    snprintf(text, sizeof(text),
             "[hsm]\nmodule = %s\ntoken = %s\npin = file:%s\n"
             "init_args = configdir='sql:/nonexistent' certPrefix='' keyPrefix='' "
             "secmod='secmod.db' flags=\n",
             wrap, uri, fx_token_pin_file(tok));
    free(uri);
    CU_ASSERT_EQUAL_FATAL(write_file(cfg, text, strlen(text)), 0);
    CU_ASSERT_EQUAL(run_cfg(cfg, "keys", NULL), 0);
    CU_ASSERT_EQUAL(run("tokens", "--init-args", "x=1", "--module", wrap), 0);
    CU_ASSERT_EQUAL(run("--help"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "--init-args"));
    /* Twice in the file is an error, as for every key. */
    snprintf(text, sizeof(text), "[hsm]\ninit_args = a\ninit_args = b\n");
    CU_ASSERT_EQUAL_FATAL(write_file(cfg, text, strlen(text)), 0);
    CU_ASSERT_EQUAL(run_cfg(cfg, "tokens", NULL), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "init_args: set twice"));
}

int main(void)
{
    static const fx_test tests[] = {
        {"usage", test_usage},
        {"config errors", test_config_errors},
        {"tokens", test_tokens},
        {"probe", test_probe},
        {"root create", test_root_create},
        {"audit verify: ok, an edited record named, a missing file", test_audit_verify},
        {"kek import/create", test_kek_import},
        {"index generate", test_index_generate},
        {"index import", test_index_import},
        {"bad key file", test_bad_key_file},
        {"index unwrap", test_index_unwrap},
        {"index adopt/kcv/check", test_index_adopt_kcv_check},
        {"keys --json attributes", test_keys_json},
        {"pkcs11-tool sees sensitive keys", test_pkcs11_tool},
        {"wrong pin", test_wrong_pin},
        {"key generations: kcv, check and destroy --gen N", test_generations},
        {"destroy", test_destroy},
        {"tokens: module fails to load or initialise", test_tokens_module_failures},
        {"tokens: unreadable slot", test_tokens_unreadable_slot},
        {"fresh function list per C_GetFunctionList (p11-kit)", test_fresh_function_lists},
        {"init_args", test_init_args},
    };
    static const fx_suite suite = {.name = "hsm_tool",
                                   .init = suite_init,
                                   .clean = suite_clean,
                                   .tests = tests,
                                   .ntests = FX_LEN(tests)};
    return fx_cunit_run(&suite, 1);
}
