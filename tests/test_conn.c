/*
 * test_conn: connections and recovery at the daemon's edge - cipherdexd as a
 * child process (its stderr captured, so log lines can be counted):
 *   - raw TCP sockets that never start TLS cannot lock mutual-TLS clients out
 *     (max_handshaking, per source address; the oldest silent one goes first);
 *   - /healthz and /metrics answer with the daemon's descriptors past 1024
 *     (libmicrohttpd on epoll/poll, not select);
 *   - out of descriptors (EMFILE), the listener pauses instead of spinning:
 *     little CPU, one rate-limited log line, and service resumes when
 *     sockets close;
 *   - the descriptor budget at start (app_fdlimit.h);
 *   - the C client's retry helper across daemon kills (app_client_call_retry):
 *     idempotent requests are retried on a fresh connection, others are not;
 *   - SIGHUP ends the store's reconnect back-off (the next request is served).
 */
#include <CUnit/Basic.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "app_client.h"
#include "app_config.h"
#include "app_fdlimit.h"
#include "cdx_time.h"
#include "fx_cunit.h"
#include "fx_daemon.h"
#include "fx_pki.h"
#include "fx_proc.h"
#include "fx_redis.h"
#include "fx_softhsm.h"
#include "fx_stack.h"
#include "fx_tmp.h"

/* The token, Redis and PKI; this suite runs its own daemons (dmn: several, insecure ones, stderr
 * in a file) on them rather than the stack's. */
static fx_stack S = FX_STACK_INIT;

/* ---- a daemon with its stderr in a file ---- */

typedef struct dmn {
    pid_t pid;
    int notify_fd;
    char notify_env[128];
    char conf[4300], log[4300], ports[4300], api[64];
    uint16_t metrics_port;
} dmn;

static void nap_ms(long ms) /* polling against a deadline, or a measurement window */
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/*
 * Write DIR/<name>.conf: listen on 127.0.0.1:port (0: any), insecure or mutual
 * TLS, `server_extra` appended to [server].
 */
static void dmn_conf(dmn *d, const char *name, uint16_t port, bool insecure,
                     const char *server_extra)
{
    char text[32768], tls[16384] = "";
    memset(d, 0, sizeof(*d));
    d->pid = -1;
    d->notify_fd = -1;
    snprintf(d->conf, sizeof(d->conf), "%s/%s.conf", S.dir, name);
    snprintf(d->log, sizeof(d->log), "%s/%s.log", S.dir, name);
    snprintf(d->ports, sizeof(d->ports), "%s/%s.ports", S.dir, name);
    if (!insecure)
        snprintf(tls, sizeof(tls),
                 "tls_cert = %s\ntls_key = %s\nclient_ca = %s\nadmins = spiffe://test/admin\n",
                 S.srv->cert, S.srv->key, fx_pki_ca(S.pki, 0));
    snprintf(text, sizeof(text),
             "[server]\nlisten = 127.0.0.1:%u\nports_file = %s\n%s%s"
             "deployment_id = 00112233445566778899aabbccddeef0\nworkers = 2\n"
             "max_frame_bytes = 8M\ninflight_bytes = 64M\n%s"
             "[hsm]\nmodule = %s\ntoken = pkcs11:token=%s\npin = file:%s\n"
             "allow_unlocked_memory = yes\n"
             "[store]\nredis = %s:%d\n[state]\ndir = %s/state-%s\n"
             "[cache]\nbytes = 16M\n[metrics]\nlisten = 127.0.0.1:0\n[log]\nlevel = warn\n",
             (unsigned)port, d->ports, insecure ? "insecure = yes\n" : "", tls,
             server_extra ? server_extra : "", fx_softhsm_module(), fx_token_label(S.tok),
             fx_token_pin_file(S.tok), fx_redis_host(S.redis), fx_redis_port(S.redis), S.dir, name);
    FILE *f = fopen(d->conf, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static int dmn_start(dmn *d)
{
    if (d->notify_fd < 0 &&
        (d->notify_fd = fx_notify_open(d->notify_env, sizeof(d->notify_env))) < 0)
        return -1;
    unlink(d->ports);
    pid_t parent = getpid();
    d->pid = fork();
    if (d->pid == 0) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
            _exit(127);
        int lf = open(d->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (lf < 0 || dup2(lf, 2) < 0)
            _exit(127);
        close_range(3, ~0u, 0); /* hold none of the test's sockets open */
        putenv(d->notify_env);
        setenv("SOFTHSM2_CONF", fx_token_conf(S.tok), 1);
        execl(S.bin, S.bin, "--config", d->conf, (char *)NULL);
        _exit(127);
    }
    if (d->pid < 0 || fx_notify_wait(d->notify_fd, "READY=1", 60, NULL, 0) != 0)
        return -1;
    char m[64];
    if (fx_daemon_port(d->ports, "api", d->api, sizeof(d->api)) ||
        fx_daemon_port(d->ports, "metrics", m, sizeof(m)))
        return -1;
    d->metrics_port = (uint16_t)atoi(strrchr(m, ':') + 1);
    return 0;
}

static void dmn_kill(dmn *d, int sig)
{
    if (d->pid <= 0)
        return;
    kill(d->pid, sig);
    waitpid(d->pid, NULL, 0);
    d->pid = -1;
}

static void dmn_close(dmn *d)
{
    dmn_kill(d, SIGTERM);
    if (d->notify_fd >= 0)
        close(d->notify_fd);
    d->notify_fd = -1;
}

/* Lines of the daemon's log containing `what`. */
static int log_count(const dmn *d, const char *what)
{
    FILE *f = fopen(d->log, "r");
    char line[4096];
    int n = 0;
    while (f && fgets(line, sizeof(line), f))
        n += strstr(line, what) != NULL;
    if (f)
        fclose(f);
    return n;
}

/* Descriptors the daemon has open now. */
static int dmn_fds(const dmn *d)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)d->pid);
    DIR *dd = opendir(path);
    int n = 0;
    for (struct dirent *e; dd && (e = readdir(dd));)
        n += e->d_name[0] != '.';
    if (dd)
        closedir(dd);
    return n;
}

/* CPU time (user + system, all threads) the daemon used so far, in ms. */
static long dmn_cpu_ms(const dmn *d)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)d->pid);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (long)((ut + st) * 1000 / (unsigned long)sysconf(_SC_CLK_TCK));
}

/* A counter of /metrics ("cipherdex_connections_accepted_total"), -1 when unreadable. */
static long long metric(const dmn *d, const char *name)
{
    char *r = fx_http(AF_INET, d->metrics_port, "GET /metrics HTTP/1.0\r\n\r\n");
    long long v = -1;
    char key[128];
    snprintf(key, sizeof(key), "\n%s ", name);
    char *p = r ? strstr(r, key) : NULL;
    if (p)
        v = atoll(p + strlen(key));
    free(r);
    return v;
}

/* Connections the daemon has taken from its listener (accepted or refused at once). */
static long long taken(const dmn *d)
{
    return metric(d, "cipherdex_connections_accepted_total") +
           metric(d, "cipherdex_connections_refused_total");
}

/* Poll until the daemon has taken want connections (deadline 20 s). */
static bool wait_taken(const dmn *d, long long want)
{
    int64_t end = cdx_mono_ms() + 20000;
    while (taken(d) < want) {
        if (cdx_mono_ms() > end)
            return false;
        nap_ms(20);
    }
    return true;
}

/* ---- sockets ---- */

/* A plain TCP connection to the API from source address src (NULL: any). */
static int raw_connect(const char *api, const char *src)
{
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)atoi(strrchr(api, ':') + 1))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (src) {
        struct sockaddr_in b = {.sin_family = AF_INET};
        inet_pton(AF_INET, src, &b.sin_addr);
        if (bind(fd, (struct sockaddr *)&b, sizeof(b)) != 0) {
            close(fd);
            return -1;
        }
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Has the server closed fd? (It never writes to a connection that sent no TLS.) */
static bool closed_by_peer(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 0) <= 0)
        return false;
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_DONTWAIT | MSG_PEEK);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

static int count_closed(const int *fds, int n)
{
    int k = 0;
    for (int i = 0; i < n; i++)
        k += fds[i] >= 0 && closed_by_peer(fds[i]);
    return k;
}

static app_client_opts client_opts(const char *api, uint32_t timeout_ms)
{
    return (app_client_opts){.addr = api,
                             .ca = fx_pki_ca(S.pki, 0),
                             .cert = S.admin->cert,
                             .key = S.admin->key,
                             .timeout_ms = timeout_ms};
}

/* A mutual-TLS health request; its outcome. */
static cdx_err tls_health(const char *api, uint32_t timeout_ms)
{
    app_client_opts o = client_opts(api, timeout_ms);
    app_client *c = NULL;
    cdx_err e = app_client_connect(&o, &c);
    if (!e) {
        wire_response *w = NULL;
        e = app_client_health(c, &w);
        wire_response_free(w);
    }
    app_client_free(c);
    return e;
}

/* ---- tests ---- */

/* The descriptor budget: what fits, what is lowered, what is refused. */
static void test_fd_budget(void)
{
    app_config c;
    app_config_init(&c);
    uint64_t over = app_fd_overhead(&c);
    CU_ASSERT_TRUE(over >= 64 + 8 + 8 && over < 200); /* base, reserve, Redis pool, sessions */
    CU_ASSERT_EQUAL(app_fd_fit_connections(&c, over + 1024), 1024);
    CU_ASSERT_EQUAL(app_fd_fit_connections(&c, 1024), 1024 - over); /* a 1024 soft limit */
    CU_ASSERT_EQUAL(app_fd_fit_connections(&c, over + 15), 0);      /* too few: refuse */
    c.redis_connections = 64;
    CU_ASSERT_EQUAL(app_fd_overhead(&c), over + 56);
    /* The shipped unit's LimitNOFILE fits the defaults with room to spare. */
    app_config_init(&c);
    CU_ASSERT_EQUAL(app_fd_fit_connections(&c, 16384), c.max_connections);
}

/* What the clients retry (docs/WIRE.md, "What to retry"). */
static void test_retry_rules(void)
{
    Cipherdex__V1__Request r = CIPHERDEX__V1__REQUEST__INIT;
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_UPSERT;
    CU_ASSERT_TRUE(app_request_idempotent(&r));
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_QUERY;
    CU_ASSERT_TRUE(app_request_idempotent(&r));
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_DELETE;
    CU_ASSERT_TRUE(app_request_idempotent(&r));
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_CREATE_INDEX;
    CU_ASSERT_FALSE(app_request_idempotent(&r));
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_TRAIN;
    CU_ASSERT_FALSE(app_request_idempotent(&r));
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_DELETE_INDEX;
    CU_ASSERT_FALSE(app_request_idempotent(&r));
    CU_ASSERT_FALSE(app_request_idempotent(NULL));
    CU_ASSERT_TRUE(app_status_retryable(CDX_ERR_UNAVAILABLE, false));
    CU_ASSERT_TRUE(app_status_retryable(CDX_ERR_ABORTED, false));
    CU_ASSERT_TRUE(app_status_retryable(CDX_ERR_BUSY, false));
    CU_ASSERT_TRUE(app_status_retryable(CDX_ERR_STORE_UNAVAILABLE, true));
    CU_ASSERT_FALSE(app_status_retryable(CDX_ERR_STORE_UNAVAILABLE, false));
    CU_ASSERT_TRUE(app_status_retryable(CDX_ERR_HSM_UNAVAILABLE, true));
    CU_ASSERT_FALSE(app_status_retryable(CDX_ERR_INVALID_ARGUMENT, true));
    CU_ASSERT_FALSE(app_status_retryable(CDX_ERR_INTEGRITY, true));
    CU_ASSERT_FALSE(app_status_retryable(CDX_ERR_ROLLBACK_DETECTED, true));
}

/*
 * More raw sockets than max_connections, none starting TLS: a mutual-TLS
 * client still gets in at once (before, the sockets held every slot until
 * the handshake timeout). A flood from one address does not evict another
 * address's handshakes.
 */
static void test_raw_socket_flood(void)
{
    dmn d;
    dmn_conf(&d, "flood", 0, false,
             "max_connections = 32\nmax_handshaking = 8\nmax_handshaking_per_source = 4\n"
             "handshake_timeout_ms = 60000\n");
    CU_ASSERT_FATAL(dmn_start(&d) == 0);
    enum { FLOOD = 40, OTHER = 4 };
    int fds[FLOOD], other[OTHER];
    long long taken0 = taken(&d);
    for (int i = 0; i < FLOOD; i++)
        fds[i] = raw_connect(d.api, "127.0.0.1");
    CU_ASSERT_TRUE(wait_taken(&d, taken0 + FLOOD));
    for (int i = 0; i < OTHER; i++)
        other[i] = raw_connect(d.api, "127.0.0.2");
    CU_ASSERT_TRUE(wait_taken(&d, taken0 + FLOOD + OTHER));
    /* A client with a certificate is served promptly (well within the handshake timeout). */
    int64_t t0 = cdx_mono_ms();
    cdx_err e = tls_health(d.api, 5000);
    int64_t took = cdx_mono_ms() - t0;
    CU_ASSERT_EQUAL(e, CDX_OK);
    CU_ASSERT_TRUE(took < 2000);
    /* Of the flood, max_handshaking_per_source - 1 remain (the client took a slot of that
     * address); the server closed the rest. */
    int64_t end = cdx_mono_ms() + 10000;
    while (count_closed(fds, FLOOD) < FLOOD - 3 && cdx_mono_ms() < end)
        nap_ms(10);
    CU_ASSERT_EQUAL(count_closed(fds, FLOOD), FLOOD - 3);
    /* The other address's handshakes were not evicted by the flood (nor by the client). */
    CU_ASSERT_EQUAL(count_closed(other, OTHER), 0);
    long long ev = metric(&d, "cipherdex_handshakes_evicted_total");
    CU_ASSERT_EQUAL(ev, FLOOD - 3);
    printf("\n    %d raw sockets + %d from another address: mutual-TLS health in %lld ms "
           "(code %s), %lld handshakes evicted, %d evict log lines ",
           FLOOD, OTHER, (long long)took, cdx_err_name(e), ev, log_count(&d, "handshake_evicted"));
    CU_ASSERT_TRUE(log_count(&d, "handshake_evicted") <= 2); /* rate-limited */
    for (int i = 0; i < FLOOD; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    for (int i = 0; i < OTHER; i++)
        if (other[i] >= 0)
            close(other[i]);
    CU_ASSERT_EQUAL(tls_health(d.api, 5000), CDX_OK);
    dmn_close(&d);
}

/*
 * With the daemon's descriptors past FD_SETSIZE (1024), /healthz and /metrics
 * still answer: libmicrohttpd polls with epoll (or poll), never select().
 * 1,100 idle plaintext connections (insecure: no handshake cap applies) put
 * the descriptors there.
 */
static void test_healthz_past_1024_fds(void)
{
    enum { N = 1100 };
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < N + 256) {
        printf("\n    skipped: the hard RLIMIT_NOFILE (%llu) is below %d ",
               (unsigned long long)rl.rlim_max, N + 256);
        return;
    }
    /* For the test's own sockets; the daemon raises its soft limit itself (app_fd_fit). */
    struct rlimit want = {.rlim_cur = 4096, .rlim_max = rl.rlim_max};
    if (rl.rlim_max != RLIM_INFINITY && want.rlim_cur > rl.rlim_max)
        want.rlim_cur = rl.rlim_max;
    CU_ASSERT_FATAL(setrlimit(RLIMIT_NOFILE, &want) == 0);
    dmn d;
    dmn_conf(&d, "fds", 0, true, "max_connections = 1500\nidle_timeout_s = 600\n");
    CU_ASSERT_FATAL(dmn_start(&d) == 0);
    static int fds[N];
    int opened = 0;
    for (int i = 0; i < N; i++)
        opened += (fds[i] = raw_connect(d.api, NULL)) >= 0;
    CU_ASSERT_EQUAL(opened, N);
    int64_t end = cdx_mono_ms() + 20000;
    while (dmn_fds(&d) < N && cdx_mono_ms() < end)
        nap_ms(20);
    int nfd = dmn_fds(&d);
    CU_ASSERT_TRUE(nfd > 1024 + 50);
    char *h = fx_http(AF_INET, d.metrics_port, "GET /healthz HTTP/1.0\r\n\r\n");
    char *m = fx_http(AF_INET, d.metrics_port, "GET /metrics HTTP/1.0\r\n\r\n");
    CU_ASSERT_PTR_NOT_NULL(strstr(h, "\"status\":"));
    CU_ASSERT_PTR_NOT_NULL(strstr(m, "cipherdex_connections "));
    printf("\n    daemon holds %d descriptors: /healthz %s, /metrics %s ", nfd,
           strstr(h, "\"status\":") ? "answers" : "FAILS", m[0] ? "answers" : "FAILS");
    free(h);
    free(m);
    for (int i = 0; i < N; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    dmn_close(&d);
    setrlimit(RLIMIT_NOFILE, &rl);
}

/*
 * Out of descriptors: the listener pauses (little CPU, at most a few log
 * lines, where it used to spin logging every failed accept), and service
 * resumes when the sockets close.
 */
static void test_emfile_backoff(void)
{
    dmn d;
    dmn_conf(&d, "emfile", 0, false,
             "max_connections = 64\nmax_handshaking = 64\nmax_handshaking_per_source = 64\n"
             "handshake_timeout_ms = 60000\n");
    CU_ASSERT_FATAL(dmn_start(&d) == 0);
    CU_ASSERT_EQUAL_FATAL(tls_health(d.api, 5000), CDX_OK); /* Redis and token connections open */
    int base = dmn_fds(&d);
    struct rlimit lim;
    CU_ASSERT_FATAL(prlimit(d.pid, RLIMIT_NOFILE, NULL, &lim) == 0);
    struct rlimit low = {.rlim_cur = (rlim_t)base + 4, .rlim_max = lim.rlim_max};
    CU_ASSERT_FATAL(prlimit(d.pid, RLIMIT_NOFILE, &low, NULL) == 0);
    int before = log_count(&d, "accept");
    enum { FLOOD = 30 };
    int fds[FLOOD];
    for (int i = 0; i < FLOOD; i++)
        fds[i] = raw_connect(d.api, NULL); /* the kernel's backlog takes them */
    /* The daemon runs out: wait for its first accept failure to show in the log. */
    int64_t end = cdx_mono_ms() + 10000;
    while (log_count(&d, "accept") == before && cdx_mono_ms() < end)
        nap_ms(10);
    CU_ASSERT_TRUE(log_count(&d, "accept") > before);
    /* A measurement window: what the daemon spends while out of descriptors. */
    long cpu0 = dmn_cpu_ms(&d);
    int lines0 = log_count(&d, "accept");
    nap_ms(1500);
    long cpu = dmn_cpu_ms(&d) - cpu0;
    int lines = log_count(&d, "accept") - lines0;
    printf("\n    out of descriptors for 1.5 s: daemon CPU %ld ms, %d more accept log lines "
           "(%d in all) ",
           cpu, lines, log_count(&d, "accept") - before);
    CU_ASSERT_TRUE(cpu >= 0 && cpu < 200);
    CU_ASSERT_TRUE(lines <= 1);
    CU_ASSERT_TRUE(log_count(&d, "accept") - before <= 3);
    /* The sockets go away: service resumes. */
    for (int i = 0; i < FLOOD; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    int64_t t0 = cdx_mono_ms();
    cdx_err e;
    end = t0 + 15000;
    while ((e = tls_health(d.api, 2000)) != CDX_OK && cdx_mono_ms() < end)
        nap_ms(50);
    CU_ASSERT_EQUAL(e, CDX_OK);
    printf("served again %lld ms after the sockets closed ", (long long)(cdx_mono_ms() - t0));
    prlimit(d.pid, RLIMIT_NOFILE, &lim, NULL);
    dmn_close(&d);
}

/*
 * SIGHUP ends the daemon's reconnect back-offs: Redis down long enough for
 * the back-off to reach its cap, back again, SIGHUP, and the very next
 * request is served (without it, it may fail for up to the back-off).
 * Runs last: it restarts the suite's Redis.
 */
static void test_sighup_retries_now(void)
{
    dmn d;
    dmn_conf(&d, "hup", 0, false, NULL);
    CU_ASSERT_FATAL(dmn_start(&d) == 0);
    app_client_opts o = client_opts(d.api, 5000);
    app_client *c = NULL;
    wire_response *w = NULL;
    CU_ASSERT_EQUAL_FATAL(app_client_connect(&o, &c), CDX_OK);
    CU_ASSERT_EQUAL(app_client_health(c, &w), CDX_OK);
    wire_response_free(w);
    fx_redis_kill9(S.redis);
    int64_t t0 = cdx_mono_ms();
    while (cdx_mono_ms() - t0 < 3300) { /* requests keep coming while Redis is away */
        CU_ASSERT_EQUAL(app_client_health(c, &w), CDX_ERR_UNAVAILABLE);
        wire_response_free(w);
        nap_ms(20);
    }
    CU_ASSERT_EQUAL_FATAL(fx_redis_restart(S.redis), 0);
    kill(d.pid, SIGHUP);
    CU_ASSERT_FATAL(fx_notify_wait(d.notify_fd, "READY=1", 30, NULL, 0) == 0);
    cdx_err e = app_client_health(c, &w);
    CU_ASSERT_EQUAL(e, CDX_OK);
    printf("\n    first health request after Redis's return and SIGHUP: %s ", cdx_err_name(e));
    wire_response_free(w);
    app_client_free(c);
    dmn_close(&d);
}

static uint16_t free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    uint16_t p = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &al) == 0)
        p = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return p;
}

static Cipherdex__V1__Request upsert_req(Cipherdex__V1__UpsertRequest *u, Cipherdex__V1__Item *it,
                                         Cipherdex__V1__Item **ptrs, float (*vec)[4],
                                         char (*ids)[16], int first, int n)
{
    Cipherdex__V1__Request r = CIPHERDEX__V1__REQUEST__INIT;
    cipherdex__v1__upsert_request__init(u);
    for (int i = 0; i < n; i++) {
        cipherdex__v1__item__init(&it[i]);
        snprintf(ids[i], 16, "id-%d", first + i);
        for (int k = 0; k < 4; k++)
            vec[i][k] = (float)(first + i + k);
        it[i].id = wire_str(ids[i]);
        it[i].vector = vec[i];
        it[i].n_vector = 4;
        ptrs[i] = &it[i];
    }
    u->index = wire_str("retry");
    u->items = ptrs;
    u->n_items = (size_t)n;
    r.body_case = CIPHERDEX__V1__REQUEST__BODY_UPSERT;
    r.upsert = u;
    return r;
}

/*
 * app_client_call_retry across kill -9 + restart of the daemon (same port):
 * an upsert on the dead connection is sent again on a new one and applied
 * once; a create_index is not retried after the connection dropped (unknown
 * outcome); a refused connection is retried until the daemon is back.
 */
static void test_client_retry(void)
{
    dmn d;
    uint16_t port = free_port();
    dmn_conf(&d, "retry", port, false, NULL);
    CU_ASSERT_FATAL(dmn_start(&d) == 0);
    app_client_opts o = client_opts(d.api, 5000);
    app_client *c = NULL;
    app_retry rt = {0};
    wire_response *w = NULL;

    Cipherdex__V1__Request cr = CIPHERDEX__V1__REQUEST__INIT;
    Cipherdex__V1__CreateIndexRequest ci = CIPHERDEX__V1__CREATE_INDEX_REQUEST__INIT;
    ci.name = wire_str("retry");
    ci.dimension = 4;
    ci.metric = wire_str("euclidean");
    ci.index_type = wire_str("ivfflat");
    cr.body_case = CIPHERDEX__V1__REQUEST__BODY_CREATE_INDEX;
    cr.create_index = &ci;
    cdx_err e = app_client_call_retry(&c, &o, &rt, &cr, &w);
    if (e)
        fprintf(stderr, "create_index: %s: %s\n", cdx_err_name(e), cdx_err_detail());
    CU_ASSERT_EQUAL_FATAL(e, CDX_OK);
    wire_response_free(w);
    CU_ASSERT_EQUAL(rt.attempts, 1);
    CU_ASSERT_EQUAL(rt.reconnects, 1); /* c was NULL: connected first */

    Cipherdex__V1__UpsertRequest u;
    Cipherdex__V1__Item it[10], *ptrs[10];
    float vec[10][4];
    char ids[10][16];
    Cipherdex__V1__Request ur = upsert_req(&u, it, ptrs, vec, ids, 0, 10);
    CU_ASSERT_EQUAL(app_client_call_retry(&c, &o, &rt, &ur, &w), CDX_OK);
    wire_response_free(w);
    CU_ASSERT_EQUAL(rt.attempts, 1);

    /* kill -9 and restart: c's connection is dead; the upsert goes out again on a new one. */
    dmn_kill(&d, SIGKILL);
    CU_ASSERT_FATAL(dmn_start(&d) == 0);
    ur = upsert_req(&u, it, ptrs, vec, ids, 10, 10);
    CU_ASSERT_EQUAL(app_client_call_retry(&c, &o, &rt, &ur, &w), CDX_OK);
    wire_response_free(w);
    CU_ASSERT_EQUAL(rt.attempts, 2);
    CU_ASSERT_EQUAL(rt.reconnects, 1);
    CU_ASSERT_PTR_NOT_NULL(c);
    /* Applied once, all of it: 20 items. */
    CU_ASSERT_EQUAL(app_client_describe_index(c, "retry", &w), CDX_OK);
    if (w)
        CU_ASSERT_EQUAL(wire_response_msg(w)->describe_index->index->count, 20);
    wire_response_free(w);
    /* The same batch again (as after a lost answer): still 20 items. */
    CU_ASSERT_EQUAL(app_client_call_retry(&c, &o, &rt, &ur, &w), CDX_OK);
    wire_response_free(w);
    CU_ASSERT_EQUAL(app_client_describe_index(c, "retry", &w), CDX_OK);
    if (w)
        CU_ASSERT_EQUAL(wire_response_msg(w)->describe_index->index->count, 20);
    wire_response_free(w);

    /* Not idempotent: a create_index on the dead connection is not sent again. */
    dmn_kill(&d, SIGKILL);
    CU_ASSERT_FATAL(dmn_start(&d) == 0);
    ci.name = wire_str("retry2");
    CU_ASSERT_EQUAL(app_client_call_retry(&c, &o, &rt, &cr, &w), CDX_ERR_UNAVAILABLE);
    CU_ASSERT_PTR_NULL(w);
    CU_ASSERT_EQUAL(rt.attempts, 1);
    CU_ASSERT_PTR_NULL(c);

    /* Nothing listening yet: connecting is retried (nothing was sent) until the daemon is up. */
    dmn_kill(&d, SIGKILL);
    app_retry fast = {.max_attempts = 3, .first_delay_ms = 10};
    CU_ASSERT_EQUAL(app_client_call_retry(&c, &o, &fast, &cr, &w), CDX_ERR_UNAVAILABLE);
    CU_ASSERT_EQUAL(fast.attempts, 3);
    CU_ASSERT_EQUAL(fast.reconnects, 0);
    CU_ASSERT_FATAL(dmn_start(&d) == 0);
    CU_ASSERT_EQUAL(app_client_call_retry(&c, &o, &rt, &cr, &w), CDX_OK);
    wire_response_free(w);
    app_client_free(c);
    dmn_close(&d);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    fx_redis_opts ro = {.appendonly = 1, .appendfsync = "always"};
    if (fx_stack_open(&S, "conn", &ro)) {
        fx_stack_close(&S);
        return 1;
    }
    static const fx_test tests[] = {
        {"descriptor budget at start", test_fd_budget},
        {"what the clients retry", test_retry_rules},
        {"raw sockets cannot lock out mutual-TLS clients", test_raw_socket_flood},
        {"/healthz and /metrics past 1024 descriptors", test_healthz_past_1024_fds},
        {"EMFILE: the listener pauses, then resumes", test_emfile_backoff},
        {"client retry helper across daemon kills", test_client_retry},
        {"SIGHUP: the next request retries Redis at once", test_sighup_retries_now},
    };
    int rc = fx_cunit_run1("conn", tests, FX_LEN(tests));
    if (fx_stack_close(&S) && !rc)
        rc = 1;
    return rc;
}
