/*
 * fuzz_ini.c - fuzz target for the configuration loader (appliance/app_ini,
 * app_config): cipherdexd's configuration file made of hostile bytes.
 *
 * The input becomes a file (an anonymous memfd, named through /proc/self/fd,
 * so nothing is written anywhere) that is loaded twice:
 *  - app_ini_load with a handler that runs every value through the strict
 *    value parsers (bool, uint with and without suffixes, str); line numbers
 *    never decrease and every error detail names the file;
 *  - app_config_load over the defaults, then app_config_check when it
 *    loaded; a failed load's detail names the file.
 *
 * Built two ways (see tests/fuzz/fuzz_main.h):
 *  - by CMake with fuzz_main.c: `fuzz_ini [--seeds DIR] FILE|DIR...`;
 *  - for libFuzzer (clang 14, Debian libclang-rt-14-dev): compile this file
 *    with -DCDX_LIBFUZZER -fsanitize=fuzzer,address,undefined against the
 *    cdx_appconf sources (appliance/app_ini.c app_hsmconf.c app_config.c, the
 *    pkcs11/ and proto/ files they use) and -linih.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "app_config.h"
#include "app_ini.h"
#include "cdx_err.h"

#ifndef CDX_LIBFUZZER
#include "fuzz_main.h"
#else
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
#endif

typedef struct walk {
    unsigned last_line;
    size_t keys;
} walk;

static cdx_err each_key(void *user, unsigned line, const char *section, const char *key,
                        const char *value)
{
    walk *w = user;
    if (!section || !key || !value || line < w->last_line)
        abort();
    w->last_line = line;
    w->keys++;
    bool b;
    uint64_t u;
    char s[64];
    (void)app_ini_bool(key, value, &b);
    (void)app_ini_uint(key, value, UINT64_MAX, true, &u);
    if (app_ini_uint(key, value, 1000, false, &u) == CDX_OK && u > 1000)
        abort();
    if (app_ini_str(key, value, s, sizeof(s)) == CDX_OK && strcmp(s, value) != 0)
        abort();
    /* A key named "stop" ends the walk with an error, as a section loader would. */
    return strcmp(key, "stop") ? CDX_OK : cdx_fail(CDX_ERR_CONFIG, "stop here");
}

static void names_file(const char *path)
{
    if (strncmp(cdx_err_detail(), path, strlen(path)) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz_ini", MFD_CLOEXEC);
    if (fd < 0)
        return 0;
    if (size && write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);

    walk w = {0};
    if (app_ini_load(path, each_key, &w) != CDX_OK)
        names_file(path);

    app_config c;
    app_config_init(&c);
    if (app_config_load(path, &c) == CDX_OK) {
        cdx_err checked = app_config_check(&c); /* any verdict will do; it must not crash */
        (void)checked;
    } else
        names_file(path);
    close(fd);
    return 0;
}

#ifndef CDX_LIBFUZZER

int fuzz_write_seeds(const char *dir)
{
    static const struct {
        const char *name, *text;
    } seeds[] = {
        {"full", "[server]\nlisten = 127.0.0.1:7443\ntls_cert = /etc/c.pem\ntls_key = /etc/k.pem\n"
                 "client_ca = /etc/ca.pem\ncrl = /etc/crl.pem\nadmins = spiffe://a, b.example.org\n"
                 "deployment_id = 00112233445566778899aabbccddeef0\nworkers = 4\n"
                 "max_frame_bytes = 8M\ninflight_bytes = 64M\nhandshake_timeout_ms = 1500\n"
                 "[hsm]\nmodule = /usr/lib/softhsm/libsofthsm2.so\ntoken = pkcs11:token=t\n"
                 "pin = file:/run/pin\n[store]\nredis = unix:/run/redis.sock\nconnections = 8\n"
                 "[cache]\nbytes = 1G\n[engine]\nquery_threads = 2\n[state]\ndir = /var/lib/cdx\n"
                 "[log]\nlevel = info\nformat = json\n[metrics]\nlisten = [::1]:9100\n"},
        {"insecure", "[server]\ninsecure = yes\nlisten = 127.0.0.1:0\n[store]\nbackend = memory\n"},
        {"comments", "; comment\n# another\n\n[server]  \n  listen=0.0.0.0:1 ; trailing\n"},
        {"bad_number", "[cache]\nbytes = lots\n"},
        {"suffix_overflow", "[cache]\nbytes = 99999999999999999999T\n"},
        {"unknown", "[nosuch]\nkey = value\n[server]\nnosuchkey = 1\n"},
        {"no_section", "listen = 1.2.3.4:5\n"},
        {"syntax", "[server\nlisten\n= value\n"},
        {"stop", "[a]\nx = 1\nstop = now\ny = 2\n"},
        {"crlf", "[server]\r\nlisten = 127.0.0.1:1\r\n"},
        {"nul", "[server]\nlisten = 127.0.0.1:1\0trailing\n"},
        {"bad_utf8", "[server]\nadmins = \xff\xfe, \xed\xa0\x80\n"},
        {"empty", ""},
    };
    for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++) {
        size_t n = strlen(seeds[i].text);
        if (!strcmp(seeds[i].name, "nul"))
            n = sizeof("[server]\nlisten = 127.0.0.1:1\0trailing\n") - 1;
        if (fuzz_seed(dir, seeds[i].name, seeds[i].text, n))
            return -1;
    }
    /* A line far longer than libinih's buffer. */
    static char longline[20000];
    size_t n = (size_t)snprintf(longline, sizeof(longline), "[server]\nlisten = ");
    while (n < sizeof(longline) - 2)
        longline[n++] = 'x';
    longline[n++] = '\n';
    return fuzz_seed(dir, "long_line", longline, n);
}

#endif
