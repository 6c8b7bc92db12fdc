#include "cdx_log.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cdx_json.h"

static atomic_int level = -1;
static atomic_int format = CDX_LOG_FMT_KV;

void cdx_log_set_format(cdx_log_format f)
{
    atomic_store(&format, (int)f);
}

/*
 * Append s[0..n) as a JSON string body (quotes not included) at out+o, keeping
 * 8 bytes free for the closing punctuation of the line.
 */
static size_t json_esc(char *out, size_t cap, size_t o, const char *s, size_t n)
{
    if (cap - o <= 8)
        return o;
    return o + cdx_json_escape(out + o, cap - o - 8, s, n, NULL);
}

/*
 * The key=value line as one JSON object: every value becomes a string
 * (quoted values lose their quotes); a token without '=' goes under "msg".
 */
static void to_json(const char *kv, char *out, size_t cap)
{
    size_t o = 0;
    out[o++] = '{';
    const char *p = kv;
    bool first = true;
    while (*p && o + 16 < cap) {
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        const char *k = p, *eq = NULL;
        while (*p && *p != ' ' && *p != '=')
            p++;
        if (*p == '=')
            eq = p;
        const char *v = eq ? eq + 1 : k, *vend;
        if (eq && *v == '"') {
            v++;
            vend = strchr(v, '"');
            if (!vend)
                vend = v + strlen(v);
            p = *vend ? vend + 1 : vend;
        } else {
            vend = v;
            while (*vend && *vend != ' ')
                vend++;
            p = vend;
        }
        if (!first)
            out[o++] = ',';
        first = false;
        out[o++] = '"';
        o = eq ? json_esc(out, cap, o, k, (size_t)(eq - k)) : json_esc(out, cap, o, "msg", 3);
        out[o++] = '"';
        out[o++] = ':';
        out[o++] = '"';
        o = json_esc(out, cap, o, v, (size_t)(vend - v));
        out[o++] = '"';
    }
    out[o++] = '}';
    out[o] = '\0';
}

static cdx_log_level env_level(void)
{
    const char *s = getenv("CDX_LOG_LEVEL");
    if (!s)
        return CDX_LOG_INFO;
    if (!strcmp(s, "error"))
        return CDX_LOG_ERROR;
    if (!strcmp(s, "warn"))
        return CDX_LOG_WARN;
    if (!strcmp(s, "debug"))
        return CDX_LOG_DEBUG;
    return CDX_LOG_INFO;
}

void cdx_log_set_level(cdx_log_level lvl)
{
    atomic_store(&level, (int)lvl);
}

cdx_log_level cdx_log_get_level(void)
{
    int l = atomic_load(&level);
    if (l < 0) {
        l = (int)env_level();
        atomic_store(&level, l);
    }
    return (cdx_log_level)l;
}

void cdx_log(cdx_log_level lvl, const char *event, const char *fmt, ...)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    if (lvl > cdx_log_get_level())
        return;
    char line[1024];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s event=%s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, names[lvl], event);
    if (n < 0 || (size_t)n >= sizeof(line))
        n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    va_end(ap);
    if (atomic_load(&format) == CDX_LOG_FMT_JSON) {
        char js[sizeof(line)]; /* to_json stops early enough to close the object inside it */
        to_json(line, js, sizeof(js) - 2);
        memcpy(line, js, sizeof(js));
    }
    /* One fputs per line so concurrent threads do not interleave inside a line. */
    size_t len = strlen(line);
    if (len + 1 < sizeof(line)) {
        line[len] = '\n';
        line[len + 1] = '\0';
    }
    fputs(line, stderr);
}
