/* Argument and output helpers of the cipherdex CLI (see app_cli.h). */
#include "app_cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cdx_hex.h"
#include "cdx_time.h"

int cli_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cipherdex: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see cipherdex --help)\n");
    va_end(ap);
    return 2;
}

int cli_fail(const cli *x, cdx_err e)
{
    if (x->json) {
        json_t *j = json_pack("{s:i,s:s,s:s}", "code", (int)e, "name", cdx_err_name(e), "message",
                              cdx_err_detail());
        json_dumpf(j, stdout, JSON_COMPACT);
        printf("\n");
        json_decref(j);
    }
    fprintf(stderr, "cipherdex: error %d %s: %s\n", (int)e, cdx_err_name(e), cdx_err_detail());
    return 1;
}

const char *cli_opt_value(cli_args *a, const char *name)
{
    if (a->i + 1 >= a->n) {
        cli_usage("%s needs a value", name);
        exit(2);
    }
    return a->v[++a->i];
}

int cli_include_opt(const char *s, unsigned *flags)
{
    unsigned f = 0;
    for (const char *p = s; *p;) {
        size_t n = strcspn(p, ",");
        if (n == 7 && !strncmp(p, "vectors", n))
            f |= APP_INCLUDE_VECTORS;
        else if (n == 6 && !strncmp(p, "vector", n))
            f |= APP_INCLUDE_VECTORS;
        else if (n == 8 && !strncmp(p, "metadata", n))
            f |= APP_INCLUDE_METADATA;
        else if (n == 8 && !strncmp(p, "contents", n))
            f |= APP_INCLUDE_CONTENTS;
        else if (n == 3 && !strncmp(p, "all", n))
            f |= APP_INCLUDE_VECTORS | APP_INCLUDE_METADATA | APP_INCLUDE_CONTENTS;
        else if (n == 4 && !strncmp(p, "none", n))
            ;
        else if (n)
            return cli_usage("--include: unknown field `%.*s`; use a comma list of "
                             "vectors, metadata, contents (or all, none)",
                             (int)n, p);
        p += n;
        if (*p == ',')
            p++;
    }
    *flags = f;
    return 0;
}

void cli_print_json(json_t *j)
{
    json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    printf("\n");
    json_decref(j);
}

void cli_json_line(FILE *f, json_t *j)
{
    json_dumpf(j, f, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    fputc('\n', f);
    json_decref(j);
}

json_t *cli_jstr(ProtobufCBinaryData b)
{
    /* An empty field may have no data, and json_stringn(NULL, 0) fails. */
    return b.len ? json_stringn((const char *)b.data, b.len) : json_string("");
}

void cli_hex(ProtobufCBinaryData b, char *out)
{
    cdx_hex_encode(b.data, b.len, out);
}

void cli_progress(const char *what, size_t done, size_t total, double t0)
{
    if (!isatty(2) || !total)
        return;
    int width = 30, fill = (int)((double)done / (double)total * width);
    double el = cdx_mono_s() - t0;
    fprintf(stderr, "\r%s [%.*s%*s] %zu/%zu %.0f/s ", what, fill, "##############################",
            width - fill, "", done, total, el > 0 ? (double)done / el : 0.0);
    if (done == total)
        fprintf(stderr, "\n");
}
