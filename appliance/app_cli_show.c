/*
 * How the cipherdex CLI shows what was stored (see app_cli.h): metadata,
 * contents and vectors as JSON values, and as one-line table cells cut to a
 * width, in a table whose columns are padded by characters, not bytes.
 */
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app_cli.h"
#include "cdx_limits.h"
#include "cdx_utf8.h"

json_t *cli_jfloat(float v)
{
    /* The shortest decimal that reads back as the same float: 0.1f prints as 0.1, not as the
     * double 0.100000001490116. (cli_print_json and cli_json_line print 9 digits at most.) */
    char buf[32];
    for (int p = 6; p <= 9; p++) {
        snprintf(buf, sizeof(buf), "%.*g", p, (double)v);
        if (strtof(buf, NULL) == v)
            break;
    }
    return json_real(strtod(buf, NULL));
}

json_t *cli_jvector(const float *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, cli_jfloat(v[i]));
    return a;
}

void cli_jset_metadata(json_t *o, ProtobufCBinaryData m)
{
    if (!m.len) {
        json_object_set_new(o, "metadata", json_null());
        return;
    }
    json_error_t je;
    json_t *j = json_loadb((const char *)m.data, m.len, JSON_DECODE_ANY, &je);
    if (j && json_is_object(j)) {
        json_object_set_new(o, "metadata", j);
        return;
    }
    /* The server stores only JSON objects; anything else is shown as it came, under a name
     * a script cannot mistake for the object. */
    json_decref(j);
    json_object_set_new(o, "metadata_text", cli_jstr(m));
}

bool cli_is_text(ProtobufCBinaryData b)
{
    return cdx_utf8_valid(b.data, b.len, NULL, NULL);
}

void cli_jset_contents(json_t *o, ProtobufCBinaryData c)
{
    if (cli_is_text(c)) {
        json_object_set_new(o, "contents", cli_jstr(c));
        return;
    }
    size_t cap = 4 * ((c.len + 2) / 3) + 1;
    unsigned char *b64 = malloc(cap);
    if (!b64) {
        json_object_set_new(o, "contents_base64", json_null());
        return;
    }
    /* EVP_EncodeBlock takes an int length: contents are at most CDX_CONTENTS_MAX (16 MiB). */
    int n = EVP_EncodeBlock(b64, c.data, (int)c.len);
    json_object_set_new(o, "contents_base64", json_stringn((const char *)b64, (size_t)n));
    free(b64);
}

/* ---- table cells ---- */

/* A growing string. */
typedef struct sbuf {
    char *s;
    size_t len, cap, chars;
    bool oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n, size_t chars)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
    b->chars += chars;
}

static char *sb_done(sbuf *b)
{
    if (b->oom || !b->s) {
        free(b->s);
        return strdup(b->oom ? "?" : "");
    }
    return b->s;
}

/* Cut a finished cell to width characters (0: no limit), the last ones being the marker. */
static char *cut_to(sbuf *b, size_t width, bool *cut)
{
    char *s = sb_done(b);
    size_t mark = strlen(CDX_CLI_CUT_MARK);
    if (!width || b->oom || b->chars <= width || width <= mark)
        return s;
    size_t keep = width - mark, chars = 0, i = 0;
    for (; s[i]; i++) {
        if (((unsigned char)s[i] & 0xc0) != 0x80) {
            if (chars == keep)
                break;
            chars++;
        }
    }
    char *o = malloc(i + mark + 1);
    if (!o)
        return s;
    memcpy(o, s, i);
    memcpy(o + i, CDX_CLI_CUT_MARK, mark + 1);
    free(s);
    *cut = true;
    return o;
}

char *cli_cell_text(ProtobufCBinaryData b, size_t width, bool *cut)
{
    sbuf o = {0};
    const char *p = (const char *)b.data;
    for (size_t i = 0; i < b.len;) {
        size_t l = cdx_utf8_char_len(b.data + i, b.len - i, NULL);
        unsigned char c = (unsigned char)p[i];
        if (l && !(l == 1 && (c < 0x20 || c == 0x7f))) {
            sb_put(&o, p + i, l, 1);
            i += l;
            continue;
        }
        /* A control character or a byte that is not UTF-8: visible, on one line. */
        char esc[8];
        if (c == '\n')
            snprintf(esc, sizeof(esc), "\\n");
        else if (c == '\t')
            snprintf(esc, sizeof(esc), "\\t");
        else if (c == '\r')
            snprintf(esc, sizeof(esc), "\\r");
        else
            snprintf(esc, sizeof(esc), "\\x%02x", c);
        sb_put(&o, esc, strlen(esc), strlen(esc));
        i++;
    }
    return cut_to(&o, width, cut);
}

char *cli_cell_contents(ProtobufCBinaryData b, size_t width, bool *cut)
{
    if (cli_is_text(b))
        return cli_cell_text(b, width, cut);
    char buf[64];
    snprintf(buf, sizeof(buf), "(binary, %zu bytes)", b.len);
    return strdup(buf);
}

char *cli_cell_vector(const float *v, size_t n, size_t width, bool *cut)
{
    sbuf o = {0};
    sb_put(&o, "[", 1, 1);
    for (size_t i = 0; i < n && (!width || o.chars <= width); i++) {
        char num[40];
        int l = snprintf(num, sizeof(num), "%s%.4g", i ? ", " : "", (double)v[i]);
        sb_put(&o, num, (size_t)l, (size_t)l);
    }
    if (!width || o.chars <= width)
        sb_put(&o, "]", 1, 1);
    else
        sb_put(&o, "...]", 4, 4); /* more than fits: cut_to cuts it */
    return cut_to(&o, width, cut);
}

/* ---- tables ---- */

struct cli_table {
    int ncols;
    const char *const *header;
    char **cells; /* nrows x ncols, owned */
    size_t nrows, cap;
};

cli_table *cli_table_new(int ncols, const char *const *header)
{
    cli_table *t = calloc(1, sizeof(*t));
    if (t) {
        t->ncols = ncols;
        t->header = header;
    }
    return t;
}

void cli_table_add(cli_table *t, char **cells)
{
    if (t->nrows == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        char **p = realloc(t->cells, cap * (size_t)t->ncols * sizeof(char *));
        if (!p) {
            for (int j = 0; j < t->ncols; j++)
                free(cells[j]);
            return;
        }
        t->cells = p;
        t->cap = cap;
    }
    memcpy(t->cells + t->nrows * (size_t)t->ncols, cells, (size_t)t->ncols * sizeof(char *));
    t->nrows++;
}

/* Characters (not bytes) of a UTF-8 cell. */
static size_t chars_of(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xc0) != 0x80;
    return n;
}

void cli_table_print(const cli_table *t, FILE *f)
{
    size_t *w = calloc((size_t)t->ncols, sizeof(size_t));
    if (!w)
        return;
    for (int j = 0; j < t->ncols; j++)
        w[j] = strlen(t->header[j]);
    for (size_t i = 0; i < t->nrows; i++)
        for (int j = 0; j < t->ncols; j++) {
            size_t c = chars_of(t->cells[i * (size_t)t->ncols + (size_t)j]);
            if (c > w[j])
                w[j] = c;
        }
    for (size_t i = 0; i <= t->nrows; i++) {
        const char *const *row =
            i ? (const char *const *)t->cells + (i - 1) * (size_t)t->ncols : t->header;
        int last = t->ncols - 1; /* no padding after the last cell that has text */
        while (last > 0 && !row[last][0])
            last--;
        for (int j = 0; j <= last; j++) {
            if (j == last)
                fprintf(f, "%s\n", row[j]);
            else
                fprintf(f, "%s%*s  ", row[j], (int)(w[j] - chars_of(row[j])), "");
        }
    }
    free(w);
}

void cli_table_free(cli_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->nrows * (size_t)t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    free(t);
}

void cli_cut_note(bool cut, size_t width)
{
    fflush(stdout); /* after the table, also when stdout is a file or a pipe */
    if (cut)
        fprintf(stderr,
                "(values longer than %zu characters are cut, ending in \"%s\": --full prints them "
                "whole, --json prints them whole as JSON)\n",
                width, CDX_CLI_CUT_MARK);
}
