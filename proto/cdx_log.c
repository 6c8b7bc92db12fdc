#include "cdx_log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static atomic_int level = -1;

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
    /* One fputs per line so concurrent threads do not interleave inside a line. */
    size_t len = strlen(line);
    if (len + 1 < sizeof(line)) {
        line[len] = '\n';
        line[len + 1] = '\0';
    }
    fputs(line, stderr);
}
