#include "app_out.h"

#include <string.h>

#include "cdx_json.h"

void app_out_json_str(FILE *f, const char *s)
{
    (void)cdx_json_fput(f, s, strlen(s)); /* write errors: the caller's ferror() check */
}

void app_out_json_key(FILE *f, const char *k)
{
    app_out_json_str(f, k);
    fputc(':', f);
}

void app_out_record(FILE *f, bool json, const char *command, const app_out_field *fields, size_t n)
{
    if (json) {
        fputc('{', f);
        if (command) {
            app_out_json_key(f, "command");
            app_out_json_str(f, command);
        }
        for (size_t i = 0; i < n; i++) {
            if (command || i)
                fputc(',', f);
            app_out_json_key(f, fields[i].key);
            if (fields[i].type == APP_OUT_STR)
                app_out_json_str(f, fields[i].s);
            else if (fields[i].type == APP_OUT_BOOL)
                fputs(fields[i].b ? "true" : "false", f);
            else
                fprintf(f, "%llu", fields[i].n);
        }
        fputs("}\n", f);
        return;
    }
    int w = 0;
    for (size_t i = 0; i < n; i++)
        if ((int)strlen(fields[i].key) > w)
            w = (int)strlen(fields[i].key);
    for (size_t i = 0; i < n; i++) {
        if (fields[i].type == APP_OUT_STR)
            fprintf(f, "%-*s  %s\n", w, fields[i].key, fields[i].s);
        else if (fields[i].type == APP_OUT_BOOL)
            fprintf(f, "%-*s  %s\n", w, fields[i].key, fields[i].b ? "yes" : "no");
        else
            fprintf(f, "%-*s  %llu\n", w, fields[i].key, fields[i].n);
    }
}

void app_out_table(FILE *f, const char *const *header, int ncols, const void *rows, size_t stride,
                   size_t nrows, app_out_cell_fn cell)
{
    int w[APP_OUT_COLS_MAX] = {0};
    char buf[APP_OUT_CELL_MAX];

    if (ncols > APP_OUT_COLS_MAX)
        ncols = APP_OUT_COLS_MAX;
    for (int j = 0; j < ncols; j++)
        w[j] = (int)strlen(header[j]);
    for (size_t i = 0; i < nrows; i++)
        for (int j = 0; j < ncols; j++) {
            cell((const char *)rows + i * stride, j, buf, sizeof(buf));
            if ((int)strlen(buf) > w[j])
                w[j] = (int)strlen(buf);
        }
    for (int j = 0; j < ncols; j++)
        if (j + 1 < ncols)
            fprintf(f, "%-*s  ", w[j], header[j]);
        else
            fprintf(f, "%s\n", header[j]);
    for (size_t i = 0; i < nrows; i++)
        for (int j = 0; j < ncols; j++) {
            cell((const char *)rows + i * stride, j, buf, sizeof(buf));
            if (j + 1 < ncols)
                fprintf(f, "%-*s  ", w[j], buf);
            else
                fprintf(f, "%s\n", buf);
        }
}
