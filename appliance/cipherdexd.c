/*
 * cipherdexd - the Cipherdex appliance daemon.
 *
 *   cipherdexd --config FILE         run
 *   cipherdexd --check-config FILE   check the file (syntax, values, cross-key rules, and
 *                                    that the files it names are readable), then exit
 *
 * Exit codes: 0 clean stop / valid configuration, 1 runtime failure,
 * 2 usage or configuration error, 3 the token refused the PIN (incorrect,
 * locked or expired). systemd must not restart on 2 or 3
 * (RestartPreventExitStatus): a restart cannot fix either, and each restart
 * on 3 would spend one of the few wrong-PIN attempts a real HSM allows
 * before it locks or zeroises.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "app_config.h"
#include "app_policy.h"
#include "app_daemon.h"
#include "cdx_log.h"
#include "eng.h"
#include "hsm_secfile.h"

#ifndef CDX_VERSION
#define CDX_VERSION "0.1.0"
#endif

static void usage(FILE *f)
{
    fprintf(f, "usage: cipherdexd --config FILE\n"
               "       cipherdexd --check-config FILE\n"
               "       cipherdexd --version\n"
               "The configuration keys are documented in docs/CONFIG.md.\n");
}

/*
 * A file the configuration names must exist and be readable by this user; a
 * secret one (the TLS key) must not be accessible by others, as the daemon
 * requires (group access only gets a warning there, and here).
 */
static int check_file(const char *what, const char *path, bool secret)
{
    struct stat st;
    if (!path[0])
        return 0;
    if (access(path, R_OK) != 0 || stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
        fprintf(stderr, "cipherdexd: %s `%s` is not a readable file\n", what, path);
        return -1;
    }
    if (secret && (st.st_mode & 007)) {
        fprintf(stderr, "cipherdexd: %s `%s` gives others access (chmod 600)\n", what, path);
        return -1;
    }
    if (secret && (st.st_mode & 070))
        fprintf(stderr,
                "cipherdexd: warning: %s `%s` is readable by group (chmod 600 unless intended)\n",
                what, path);
    return 0;
}

/*
 * A secret file the daemon reads with hsm_secfile (the PIN file, the Redis
 * password file): the same checks it makes at start (opened without
 * following a symbolic link, a regular file, readable, no access for group
 * or others), without reading the secret.
 */
static int check_secret(const char *what, const char *path)
{
    const hsm_secfile_opts o = {.what = what, .err = CDX_ERR_CONFIG};
    if (!path[0])
        return 0;
    if (hsm_secfile_check(path, &o)) {
        fprintf(stderr, "cipherdexd: %s\n", cdx_err_detail());
        return -1;
    }
    return 0;
}

static int load(const char *path, app_config *c, bool files)
{
    app_config_init(c);
    cdx_err err = app_config_load(path, c);
    if (!err)
        err = app_config_check(c);
    if (err) {
        fprintf(stderr, "cipherdexd: %s\n", cdx_err_detail());
        return -1;
    }
    if (!files)
        return 0;
    int bad = 0;
    if (!c->insecure) {
        bad |= check_file("[server] tls_cert", c->tls_cert, false);
        bad |= check_file("[server] tls_key", c->tls_key, true);
        bad |= check_file("[server] client_ca", c->client_ca, false);
        bad |= check_file("[server] crl", c->crl, false);
    }
    bad |= check_file("[hsm] module", c->hsm.module_path, false);
    if (!strncmp(c->hsm.pin_source, "file:", 5))
        bad |= check_secret("[hsm] pin file", c->hsm.pin_source + 5);
    if (c->backend == APP_STORE_REDIS)
        bad |= check_secret("[store] redis_password_file", c->redis_password_file);
    /* The access policy, as the daemon would load it (file:line errors). */
    pol_policy *pol = NULL;
    if (app_policy_build(c, &pol)) {
        fprintf(stderr, "cipherdexd: policy: %s\n", cdx_err_detail());
        bad = 1;
    }
    pol_policy_free(pol);
    return bad ? -1 : 0;
}

/*
 * OpenBLAS 0.3.21 falls back to SSE3 kernels on CPUs it does not know (k-means training ~6x
 * slower) and reads OPENBLAS_CORETYPE only when it loads: set it and start again, once, before
 * anything is opened. An operator's own OPENBLAS_CORETYPE is left alone.
 */
static void blas_kernels(char **argv)
{
    const char *core;
    if (getenv("OPENBLAS_CORETYPE") || getenv("CDX_BLAS_REEXEC") ||
        !(core = eng_blas_better_coretype()))
        return;
    setenv("OPENBLAS_CORETYPE", core, 1);
    setenv("CDX_BLAS_REEXEC", "1", 1);
    execv("/proc/self/exe", argv);
    /* Still running: keep the slow kernels, say so. */
    cdx_log(CDX_LOG_WARN, "blas_reexec_failed", "core=%s", core);
}

enum { EXIT_RUNTIME = 1, EXIT_CONFIG = 2, EXIT_PIN = 3 };

/* The exit status of a failed start (see the top of the file). */
static int exit_status(cdx_err err)
{
    switch (err) {
    case CDX_ERR_CONFIG:
        return EXIT_CONFIG;
    case CDX_ERR_HSM_PIN_INCORRECT:
    case CDX_ERR_HSM_PIN_LOCKED:
        return EXIT_PIN;
    default:
        return EXIT_RUNTIME;
    }
}

int main(int argc, char **argv)
{
    blas_kernels(argv);
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        usage(stdout);
        return 0;
    }
    if (argc == 2 && !strcmp(argv[1], "--version")) {
        printf("cipherdexd %s\n", CDX_VERSION);
        return 0;
    }
    if (argc != 3 || (strcmp(argv[1], "--config") && strcmp(argv[1], "--check-config"))) {
        usage(stderr);
        return 2;
    }
    app_config cfg;
    if (!strcmp(argv[1], "--check-config")) {
        if (load(argv[2], &cfg, true))
            return 2;
        printf("cipherdexd: %s: configuration OK\n", argv[2]);
        return 0;
    }
    if (load(argv[2], &cfg, false))
        return 2;
    app_daemon *d = NULL;
    cdx_err err = app_daemon_new(&cfg, argv[2], &d);
    if (err) {
        cdx_log(CDX_LOG_ERROR, "start_failed", "code=%s msg=\"%s\"", cdx_err_name(err),
                cdx_err_detail());
        fprintf(stderr, "cipherdexd: cannot start: %s: %s\n", cdx_err_name(err), cdx_err_detail());
        return exit_status(err);
    }
    int rc = app_daemon_run(d);
    app_daemon_free(d);
    cdx_log(CDX_LOG_INFO, "stopped", "rc=%d", rc);
    return rc;
}
