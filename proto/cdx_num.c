/* Decimal numbers from command lines (cdx_num.h). */
#include "cdx_num.h"

#include <errno.h>
#include <stdlib.h>

bool cdx_parse_u64(const char *s, uint64_t *out)
{
    char *end;
    if (!s || !*s || *s == '-') /* strtoull would wrap "-1" */
        return false;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

bool cdx_parse_u32(const char *s, uint32_t *out)
{
    uint64_t v;
    if (!cdx_parse_u64(s, &v) || v > UINT32_MAX)
        return false;
    *out = (uint32_t)v;
    return true;
}
