/*
 * test_daemon: cipherdexd as a process - configuration checking, start-up on a
 * throwaway token, readiness through the systemd notify protocol (a datagram
 * socket this test owns), /healthz and /metrics, SIGHUP reload, SIGTERM stop.
 */
#include <CUnit/Basic.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fx_proc.h"
#include "fx_softhsm.h"
#include "fx_tmp.h"
#include "fx_cunit.h"
#include "fx_daemon.h"

static char *dir;
static fx_token *tok;
static char bin[4096];

static void write_file(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    CU_ASSERT_FATAL(f != NULL);
    fputs(text, f);
    fclose(f);
    chmod(path, mode);
}

/* A memory-store, insecure configuration on this test's token; returns its path. */
static const char *make_conf(const char *name, const char *extra)
{
    static char path[4096];
    char text[8192];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    snprintf(text, sizeof(text),
             "[server]\ninsecure = yes\nlisten = 127.0.0.1:0\n"
             "deployment_id = 0123456789abcdef0123456789abcdef\nports_file = %s/ports\n"
             "workers = 2\n"
             "[hsm]\nmodule = %s\ntoken = pkcs11:token=%s\npin = file:%s\n"
             "allow_unlocked_memory = yes\n"
             "[store]\nbackend = memory\n[state]\ndir = %s/state\n"
             "[metrics]\nlisten = 127.0.0.1:0\n%s",
             dir, fx_softhsm_module(), fx_token_label(tok), fx_token_pin_file(tok), dir, extra);
    write_file(path, text, 0600);
    return path;
}

static void test_check_config(void)
{
    char out[4096];
    const char *good = make_conf("good.conf", "");
    const char *argv[] = {bin, "--check-config", good, NULL};
    int rc = fx_run(argv, NULL, out, sizeof(out));
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT(strstr(out, "configuration OK") != NULL);
    const char *bad = make_conf("bad.conf", "[cache]\nbytes = lots\n");
    argv[2] = bad;
    rc = fx_run(argv, NULL, out, sizeof(out));
    CU_ASSERT_EQUAL(rc, 2);
    CU_ASSERT(strstr(out, "bad.conf:") != NULL && strstr(out, "bytes: `lots`") != NULL);
    /* Without insecure, the TLS files must exist. */
    char path[4200];
    snprintf(path, sizeof(path), "%s/tls.conf", dir);
    write_file(path,
               "[server]\ntls_cert = /nonexistent/c.pem\ntls_key = /nonexistent/k.pem\n"
               "client_ca = /nonexistent/ca.pem\nadmins = a\n"
               "deployment_id = 0123456789abcdef0123456789abcdef\n",
               0600);
    argv[2] = path;
    rc = fx_run(argv, NULL, out, sizeof(out));
    CU_ASSERT_EQUAL(rc, 2);
    CU_ASSERT(strstr(out, "tls_cert `/nonexistent/c.pem` is not a readable file") != NULL);
    /* The PIN file gets the daemon's own secret-file checks: no access for group or others,
     * and no symbolic link. */
    char pin[4200], text[8192];
    snprintf(path, sizeof(path), "%s/pin.conf", dir);
    snprintf(pin, sizeof(pin), "%s/pin-checked", dir);
    snprintf(text, sizeof(text),
             "[server]\ninsecure = yes\nlisten = 127.0.0.1:0\n"
             "deployment_id = 0123456789abcdef0123456789abcdef\n"
             "[hsm]\nmodule = %s\ntoken = pkcs11:token=%s\npin = file:%s\n"
             "[store]\nbackend = memory\n[state]\ndir = %s/state\n",
             fx_softhsm_module(), fx_token_label(tok), pin, dir);
    write_file(path, text, 0600);
    write_file(pin, "1234\n", 0644);
    rc = fx_run(argv, NULL, out, sizeof(out));
    CU_ASSERT_EQUAL(rc, 2);
    CU_ASSERT(strstr(out, "accessible by group or others") != NULL);
    unlink(pin);
    CU_ASSERT_EQUAL(symlink(fx_token_pin_file(tok), pin), 0);
    rc = fx_run(argv, NULL, out, sizeof(out));
    CU_ASSERT_EQUAL(rc, 2);
    CU_ASSERT(strstr(out, "symbolic link") != NULL);
    unlink(pin);
    write_file(pin, "1234\n", 0600);
    rc = fx_run(argv, NULL, out, sizeof(out));
    CU_ASSERT_EQUAL(rc, 0);
    const char *usage[] = {bin, "--bogus", NULL};
    CU_ASSERT_EQUAL(fx_run(usage, NULL, out, sizeof(out)), 2);
    const char *ver[] = {bin, "--version", NULL};
    CU_ASSERT_EQUAL(fx_run(ver, NULL, out, sizeof(out)), 0);
}

static char *http_get(uint16_t port, const char *path)
{
    char req[256];
    snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\n\r\n", path);
    return fx_http(AF_INET, port, req);
}

static void test_run_and_signals(void)
{
    const char *conf = make_conf("run.conf", "[log]\nlevel = info\n");
    char env_notify[128];
    int s = fx_notify_open(env_notify, sizeof(env_notify));
    CU_ASSERT_FATAL(s >= 0);
    pid_t pid = fx_daemon_spawn(bin, conf, tok, env_notify);
    CU_ASSERT_FATAL(pid >= 0);
    CU_ASSERT_FATAL(fx_notify_wait(s, "READY=1", 60, NULL, 0) == 0);
    /* The ports file is complete before READY. */
    char ports_path[4200], line[256];
    snprintf(ports_path, sizeof(ports_path), "%s/ports", dir);
    FILE *f = fopen(ports_path, "r");
    CU_ASSERT_FATAL(f != NULL);
    unsigned port = 0;
    while (fgets(line, sizeof(line), f))
        if (!strncmp(line, "metrics=127.0.0.1:", 18))
            port = (unsigned)atoi(line + 18);
    fclose(f);
    CU_ASSERT_FATAL(port > 0);
    char *r = http_get((uint16_t)port, "/healthz");
    /* Memory store: serving, but degraded (data is volatile); the token answers. */
    CU_ASSERT(strstr(r, " 200") != NULL);
    CU_ASSERT(strstr(r, "\"status\":\"degraded\"") != NULL);
    CU_ASSERT(strstr(r, "\"token\":\"ok\"") != NULL);
    CU_ASSERT(strstr(r, "\"store_kind\":\"memory\"") != NULL);
    free(r);
    r = http_get((uint16_t)port, "/metrics");
    CU_ASSERT(strstr(r, "cipherdex_block_cache_hit_ratio") != NULL);
    CU_ASSERT(strstr(r, "cipherdex_subkey_derivations_total") != NULL);
    free(r);
    /* SIGHUP: RELOADING then READY again, still serving. */
    kill(pid, SIGHUP);
    char msg[512];
    CU_ASSERT(fx_notify_wait(s, "RELOADING=1", 30, msg, sizeof(msg)) == 0);
    CU_ASSERT(fx_notify_wait(s, "READY=1", 30, msg, sizeof(msg)) == 0);
    r = http_get((uint16_t)port, "/healthz");
    CU_ASSERT(strstr(r, " 200") != NULL);
    free(r);
    /* SIGTERM: STOPPING, then a clean exit. */
    kill(pid, SIGTERM);
    CU_ASSERT(fx_notify_wait(s, "STOPPING=1", 30, msg, sizeof(msg)) == 0);
    int st = 0;
    CU_ASSERT_EQUAL(waitpid(pid, &st, 0), pid);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    close(s);
}

static void test_start_failure(void)
{
    /* A wrong PIN: the daemon refuses to start with its own exit status (3, which the unit's
     * RestartPreventExitStatus lists: no restart spends another PIN attempt), and says why. */
    char pin[4200], out[8192];
    snprintf(pin, sizeof(pin), "%s/wrong.pin", dir);
    write_file(pin, "not-the-pin\n", 0600);
    const char *conf = make_conf("wrongpin.conf", "");
    /* Rewrite the pin line. */
    FILE *f = fopen(conf, "r");
    char text[8192];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    char *p = strstr(text, "pin = file:");
    CU_ASSERT_FATAL(p != NULL);
    char *eol = strchr(p, '\n');
    char fixed[8192];
    snprintf(fixed, sizeof(fixed), "%.*spin = file:%s%s", (int)(p - text), text, pin, eol);
    write_file(conf, fixed, 0600);
    const char *argv[] = {bin, "--config", conf, NULL};
    char envbuf[4300];
    snprintf(envbuf, sizeof(envbuf), "SOFTHSM2_CONF=%s", fx_token_conf(tok));
    const char *env[] = {envbuf, NULL};
    int rc = fx_run_env(argv, env, NULL, out, sizeof(out));
    CU_ASSERT_EQUAL(rc, 3);
    CU_ASSERT(strstr(out, "HSM_PIN_INCORRECT") != NULL);
    /* The shipped unit does not restart on it. */
    char unit[4300], utext[8192];
    snprintf(unit, sizeof(unit), "%s/packaging/cipherdexd.service", getenv("CDX_SOURCE_DIR"));
    FILE *uf = fopen(unit, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(uf);
    size_t un = fread(utext, 1, sizeof(utext) - 1, uf);
    fclose(uf);
    utext[un] = '\0';
    const char *rp = strstr(utext, "\nRestartPreventExitStatus=");
    CU_ASSERT_PTR_NOT_NULL_FATAL(rp);
    char line[128];
    rp += strlen("\nRestartPreventExitStatus=");
    snprintf(line, sizeof(line), " %.*s ", (int)strcspn(rp, "\n"), rp);
    CU_ASSERT_PTR_NOT_NULL(strstr(line, " 3 ")); /* the PIN status */
    CU_ASSERT_PTR_NOT_NULL(strstr(line, " 2 ")); /* the configuration status */
}

int main(void)
{
    if (fx_daemon_bin(bin, sizeof(bin)))
        return 1;
    dir = fx_tmpdir_new("daemon");
    tok = fx_token_new("daemontok");
    if (!dir || !tok)
        return 1;
    static const fx_test tests[] = {
        {"--check-config", test_check_config},
        {"start, /healthz, /metrics, SIGHUP, SIGTERM", test_run_and_signals},
        {"start refused with a wrong PIN", test_start_failure},
    };
    int rc = fx_cunit_run1("daemon", tests, FX_LEN(tests));
    fx_token_free(tok);
    fx_rm_rf(dir);
    free(dir);
    return rc;
}
