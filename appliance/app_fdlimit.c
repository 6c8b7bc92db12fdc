/* The daemon's file-descriptor budget (see app_fdlimit.h). */
#include "app_fdlimit.h"

#include <errno.h>
#include <string.h>
#include <sys/resource.h>

#include "cdx_limits.h"
#include "cdx_log.h"

#define MIN_CONNECTIONS  16
#define HTTP_FDS         (16 + 1) /* app_http: MHD's connection limit + its listener */
#define REDIS_CONNS_DFLT 8        /* eng_redis_opts.connections 0 */

uint64_t app_fd_overhead(const app_config *cfg)
{
    uint64_t redis = cfg->backend == APP_STORE_REDIS
                         ? (cfg->redis_connections ? cfg->redis_connections : REDIS_CONNS_DFLT)
                         : 0;
    uint64_t sessions = cfg->hsm.sessions ? cfg->hsm.sessions : CDX_SESSIONS_DEFAULT;
    uint64_t http = cfg->metrics_listen[0] ? HTTP_FDS : 0;
    return CDX_FDS_BASE + CDX_ACCEPT_RESERVE_FDS + redis + sessions + http;
}

uint32_t app_fd_fit_connections(const app_config *cfg, uint64_t limit)
{
    uint64_t over = app_fd_overhead(cfg);
    if (limit >= over + cfg->max_connections)
        return cfg->max_connections;
    uint64_t fit = limit > over ? limit - over : 0;
    return fit < MIN_CONNECTIONS ? 0 : (uint32_t)fit;
}

cdx_err app_fd_fit(app_config *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return cdx_fail(CDX_ERR_INTERNAL, "getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
    uint64_t need = app_fd_overhead(cfg) + cfg->max_connections;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        struct rlimit want = rl;
        want.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need : rl.rlim_max;
        if (want.rlim_cur > rl.rlim_cur && setrlimit(RLIMIT_NOFILE, &want) == 0) {
            cdx_log(CDX_LOG_INFO, "fd_limit_raised", "soft=%llu->%llu need=%llu",
                    (unsigned long long)rl.rlim_cur, (unsigned long long)want.rlim_cur,
                    (unsigned long long)need);
            rl = want;
        }
    }
    uint64_t limit = rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)rl.rlim_cur;
    uint32_t fit = app_fd_fit_connections(cfg, limit);
    if (fit == 0)
        return cdx_fail(CDX_ERR_CONFIG,
                        "RLIMIT_NOFILE is %llu, which leaves fewer than %d connections after the "
                        "%llu descriptors for Redis, the token, the HTTP endpoint and files: raise "
                        "LimitNOFILE (systemd) or ulimit -n to at least %llu",
                        (unsigned long long)limit, MIN_CONNECTIONS,
                        (unsigned long long)app_fd_overhead(cfg), (unsigned long long)need);
    if (fit < cfg->max_connections) {
        cdx_log(CDX_LOG_WARN, "fd_limit_low",
                "max_connections=%u serving=%u nofile=%llu need=%llu msg=\"RLIMIT_NOFILE is too "
                "low for [server] max_connections; raise LimitNOFILE\"",
                cfg->max_connections, fit, (unsigned long long)limit, (unsigned long long)need);
        cfg->max_connections = fit;
    }
    return CDX_OK;
}
