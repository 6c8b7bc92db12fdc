/*
 * cdx_log.h - structured log lines (key=value) on stderr.
 *
 * Never pass secrets, vectors, metadata, contents or index names in clear:
 * callers log ids in hex and codes, nothing else.
 */
#ifndef CDX_LOG_H
#define CDX_LOG_H

typedef enum cdx_log_level {
    CDX_LOG_ERROR = 0,
    CDX_LOG_WARN = 1,
    CDX_LOG_INFO = 2,
    CDX_LOG_DEBUG = 3,
} cdx_log_level;

typedef enum cdx_log_format {
    CDX_LOG_FMT_KV = 0,   /* ts=... level=... event=... key=value ... */
    CDX_LOG_FMT_JSON = 1, /* {"ts":"...","level":"...","event":"...","key":"value",...} */
} cdx_log_format;

/* Output format for every later line (default key=value). */
void cdx_log_set_format(cdx_log_format f);

/* Lines above `lvl` are dropped. Default: CDX_LOG_INFO, or CDX_LOG_LEVEL=error|warn|info|debug. */
void cdx_log_set_level(cdx_log_level lvl);
cdx_log_level cdx_log_get_level(void);

/*
 * Write one line: `ts=... level=... event=<event> <fmt...>`. `fmt` is
 * key=value pairs; values with spaces must be quoted by the caller.
 */
void cdx_log(cdx_log_level lvl, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
