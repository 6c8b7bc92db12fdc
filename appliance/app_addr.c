/* host:port addresses (see app_addr.h). */
#include "app_addr.h"

#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

/* Decimal digits only (no sign, no spaces), at most 65535. */
static bool parse_port(const char *s, uint16_t *out)
{
    uint32_t n = 0;
    if (*s < '0' || *s > '9')
        return false;
    for (; *s >= '0' && *s <= '9'; s++) {
        n = n * 10 + (uint32_t)(*s - '0');
        if (n > 65535)
            return false;
    }
    if (*s)
        return false;
    *out = (uint16_t)n;
    return true;
}

cdx_err app_addr_split(const char *addr, char *host, size_t cap, uint16_t *port)
{
    const char *colon, *h = addr;
    size_t hl;
    uint16_t p;
    if (addr[0] == '[') {
        const char *end = strchr(addr, ']');
        if (!end || end[1] != ':')
            return cdx_fail(CDX_ERR_CONFIG, "`%s`: an IPv6 address is written [addr]:port", addr);
        h = addr + 1;
        hl = (size_t)(end - h);
        colon = end + 1;
    } else {
        colon = strrchr(addr, ':');
        if (!colon || colon == addr)
            return cdx_fail(CDX_ERR_CONFIG, "`%s`: expected host:port", addr);
        if (memchr(addr, ':', (size_t)(colon - addr)))
            return cdx_fail(CDX_ERR_CONFIG, "`%s`: write an IPv6 address as [addr]:port", addr);
        hl = (size_t)(colon - addr);
    }
    if (hl == 0 || hl >= cap)
        return cdx_fail(CDX_ERR_CONFIG, "`%s`: bad host", addr);
    if (!parse_port(colon + 1, &p))
        return cdx_fail(CDX_ERR_CONFIG, "`%s`: port must be 0-65535 (0: any free port)", addr);
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = p;
    return CDX_OK;
}

cdx_err app_addr_resolve(const char *addr, const char *what, struct addrinfo **out)
{
    char host[APP_ADDR_MAX], port_s[8];
    uint16_t port;
    *out = NULL;
    if (app_addr_split(addr, host, sizeof(host), &port)) {
        /* Copied: cdx_fail formats into the buffer cdx_err_detail returns. */
        char why[256];
        snprintf(why, sizeof(why), "%s", cdx_err_detail());
        return cdx_fail(CDX_ERR_CONFIG, "%s: %s", what, why);
    }
    snprintf(port_s, sizeof(port_s), "%u", port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    int gai = getaddrinfo(host, port_s, &hints, out);
    if (gai)
        return cdx_fail(CDX_ERR_CONFIG, "%s `%s`: %s", what, addr, gai_strerror(gai));
    return CDX_OK;
}
