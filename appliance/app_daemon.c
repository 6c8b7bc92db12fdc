/* The daemon's lifecycle (see app_daemon.h). */
#include "app_daemon.h"

#include <pthread.h>
#include "app_policy.h"
#include "app_ratelimit.h"

#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "app_addr.h"
#include "app_audit.h"
#include "app_auditrec.h"
#include "app_dispatch.h"
#include "app_fdlimit.h"
#include "app_attest.h"
#include "app_http.h"
#include "app_server.h"
#include "app_tls.h"
#include "cdx_hex.h"
#include "cdx_log.h"
#include "eng_store.h"
#include "hsm_attest.h"
#include "hsm_custody.h"
#include "hsm_keys.h"
#include "hsm_subkey.h"
#include "cdx_time.h"
#include "eng_maint.h"

struct app_daemon {
    app_config cfg;
    char *config_path;
    hsm_custody *custody;
    EVP_PKEY *attest_key;  /* the attestation public key found at start, or NULL */
    uint8_t *attest_certs; /* [keys] attest_certificates as DER, or NULL */
    size_t attest_certs_len;
    eng_store *store;
    eng *engine;
    eng_maint *maint; /* background compaction and sweep; NULL when disabled */
    app_metrics *metrics;
    app_pool *pool;
    app_http *http;
    app_tls *tls;
    app_server *server;
    app_dispatch_env env;
    app_policy *policy; /* who may do what; swapped on SIGHUP */
    /* /healthz's cache of the token's and the store's answers (review L8) */
    pthread_mutex_t probe_mu;
    int64_t probe_at; /* 0: never asked */
    cdx_err probe_tok, probe_st;
    eng_durability probe_dur;
    app_ratelimit *rate;   /* per-principal limits (the policy's [limits]) */
    app_audit *audit;      /* the audit trail (NULL: [audit] enabled = no) */
    hsm_subkey *audit_key; /* its MAC key: the root key's audit subkey, held while it runs */
    bool ran;              /* reached the event loop: the stop record says a clean stop */
    bool soft_token;       /* the token is a software token (a warning in /healthz) */
    char token_model[52];
    struct event_base *base;
    struct event *ev_drain_deadline;
    struct event *ev_term, *ev_int, *ev_hup, *ev_pool;
};

static unsigned ncpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 && n <= CDX_WORKERS_MAX ? (unsigned)n : 1;
}

/* What both health endpoints report: asked now. */
typedef struct probe_result {
    cdx_err tok, st;    /* the token's and the store's answer */
    eng_durability dur; /* with st == CDX_OK */
    bool store_ok;      /* reachable with acceptable (or explicitly allowed) durability */
    size_t rollbacks;   /* indexes in rollback */
    bool audit_down;    /* the trail cannot be written and fails closed: requests are refused */
    const char *audit_state;
    char warn[CDX_HEALTH_WARNINGS_MAX][CDX_STATUS_MESSAGE_MAX / 2];
    size_t n_warn;
} probe_result;

/*
 * Ask the token and the store now. Degraded (serving, with warnings): weak
 * store durability explicitly allowed (the loss window named), the memory
 * store, indexes in rollback.
 */
static void probe(app_daemon *d, probe_result *p, bool cached)
{
    uint8_t rnd[16];
    memset(p, 0, sizeof(*p));
    if (!cached) {
        p->tok = hsm_random(d->custody, rnd, sizeof(rnd));
        p->st = eng_store_durability(d->store, &p->dur);
    } else {
        /* /healthz has no authentication: hammering it must not become a token operation
         * and a store round trip each (review L8). The rest below is read fresh. */
        pthread_mutex_lock(&d->probe_mu);
        int64_t now = cdx_mono_ms();
        if (!d->probe_at || now - d->probe_at >= CDX_HEALTHZ_PROBE_MS) {
            d->probe_tok = hsm_random(d->custody, rnd, sizeof(rnd));
            d->probe_st = eng_store_durability(d->store, &d->probe_dur);
            d->probe_at = now ? now : 1;
        }
        p->tok = d->probe_tok;
        p->st = d->probe_st;
        p->dur = d->probe_dur;
        pthread_mutex_unlock(&d->probe_mu);
    }
    /* Refused settings are only served when allowed at start (else the daemon did not start);
     * an operator's CONFIG SET since then is reported as down, not quietly served. */
    p->store_ok = p->st == CDX_OK && (!p->dur.refused || d->cfg.allow_unsafe_durability);
    if (p->st == CDX_OK && p->dur.degraded)
        snprintf(p->warn[p->n_warn++], sizeof(p->warn[0]), "store durability: %.480s", p->dur.why);
    if (d->cfg.allow_plaintext_import)
        snprintf(p->warn[p->n_warn++], sizeof(p->warn[0]),
                 "plaintext key import is allowed ([keys] allow_plaintext_import = yes): index "
                 "keys may have existed outside the token; development only");
    if (d->soft_token && !d->cfg.allow_software_token)
        snprintf(p->warn[p->n_warn++], sizeof(p->warn[0]),
                 "the token (%s) is a software token: its keys are files on this machine, not "
                 "in an HSM; for development and tests only",
                 d->token_model);
    uint64_t loads = 0;
    char perr[400];
    app_policy_status(d->policy, &loads, perr, sizeof(perr));
    if (perr[0])
        snprintf(p->warn[p->n_warn++], sizeof(p->warn[0]),
                 "the last policy reload failed, the previous policy is in force: %.380s", perr);
    app_audit_stats as;
    app_audit_stats_get(d->audit, &as);
    if (!d->audit)
        snprintf(p->warn[p->n_warn++], sizeof(p->warn[0]),
                 "the audit trail is disabled ([audit] enabled = no): key use is not recorded");
    else if (as.state == APP_AUDIT_FAILED_OPEN)
        snprintf(p->warn[p->n_warn++], sizeof(p->warn[0]),
                 "the audit trail cannot be written and [audit] on_failure = open: requests are "
                 "served unrecorded (%llu records lost so far): %.200s",
                 (unsigned long long)as.lost, as.error);
    p->audit_down = as.state == APP_AUDIT_FAILED;
    p->audit_state = d->audit ? app_audit_state_name(as.state) : "off";
    p->rollbacks = eng_rollback_count(d->engine);
    if (p->rollbacks)
        snprintf(p->warn[p->n_warn++], sizeof(p->warn[0]),
                 "%zu index(es) in rollback (ROLLBACK_DETECTED): acknowledged writes were lost; "
                 "see `cipherdex index list` and recover with `cipherdex index accept-rollback`",
                 p->rollbacks);
}

/* Copy s into a JSON string body (quotes, backslashes and controls become spaces). */
static void json_text(char *dst, size_t cap, const char *s)
{
    snprintf(dst, cap, "%s", s);
    for (char *c = dst; *c; c++)
        if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20)
            *c = ' ';
}

/* /healthz: the token answers, the store answers with acceptable durability; warnings degrade. */
static void health(void *arg, app_health *out)
{
    app_daemon *d = arg;
    probe_result p;
    probe(d, &p, true);
    out->state = p.tok || !p.store_ok || p.audit_down ? APP_HEALTH_DOWN
                 : p.n_warn                           ? APP_HEALTH_DEGRADED
                                                      : APP_HEALTH_OK;
    char settings[sizeof(p.dur.settings)], w[sizeof(p.warn[0])];
    json_text(settings, sizeof(settings), p.dur.settings);
    size_t n = (size_t)snprintf(
        out->detail, sizeof(out->detail),
        "\"token\":\"%s\",\"store\":\"%s\",\"store_kind\":\"%s\",\"durability\":\"%s\","
        "\"audit\":\"%s\",\"audit_on_failure\":\"%s\",\"indexes_in_rollback\":%zu,"
        "\"warnings\":[",
        p.tok ? cdx_err_name(p.tok) : "ok",
        p.st             ? cdx_err_name(p.st)
        : !p.store_ok    ? "unsafe-durability"
        : p.dur.degraded ? "degraded"
                         : "ok",
        eng_store_kind(d->store), settings, p.audit_state,
        d->cfg.audit_fail_open ? "open" : "closed", p.rollbacks);
    for (size_t i = 0; i < p.n_warn && n < sizeof(out->detail); i++) {
        json_text(w, sizeof(w), p.warn[i]);
        n +=
            (size_t)snprintf(out->detail + n, sizeof(out->detail) - n, "%s\"%s\"", i ? "," : "", w);
    }
    if (n < sizeof(out->detail))
        snprintf(out->detail + n, sizeof(out->detail) - n, "]");
}

/* The health request on the wire: the same verdict as /healthz. */
static void wire_health(void *arg, app_wire_health *out)
{
    app_daemon *d = arg;
    probe_result p;
    probe(d, &p, false); /* the wire: asked now (a client about to retry wants the truth) */
    out->token_ok = p.tok == CDX_OK;
    out->store_ok = p.store_ok;
    out->indexes_in_rollback = (uint32_t)p.rollbacks;
    if (p.audit_down && p.n_warn < CDX_HEALTH_WARNINGS_MAX)
        snprintf(p.warn[p.n_warn++], sizeof(p.warn[0]),
                 "the audit trail cannot be written: requests are refused (AUDIT_UNAVAILABLE) "
                 "until it can");
    for (size_t i = 0; i < p.n_warn; i++)
        snprintf(out->warnings[i], sizeof(out->warnings[i]), "%s", p.warn[i]);
    out->n_warnings = p.n_warn;
}

static void pull(void *arg, app_metrics_pull *p)
{
    app_daemon *d = arg;
    eng_stats es;
    hsm_stats hs;
    eng_get_stats(d->engine, &es);
    hsm_custody_stats(d->custody, &hs);
    p->cache_hits = es.cache_hits;
    p->cache_misses = es.cache_misses;
    p->cache_bytes = es.cache_bytes;
    p->commits = es.commits;
    p->commit_conflicts = es.commit_conflicts;
    p->rotations = es.rotations;
    p->rotation_failures = es.rotation_failures;
    p->rotations_pending = es.rotations_pending;
    p->rotation_done = es.rotation_records_done;
    p->rotation_total = es.rotation_records_total;
    p->subkey_derivations = hs.derivations;
    p->subkey_cache_hits = hs.cache_hits;
    eng_maint_stats ms;
    eng_maint_get_stats(d->maint, &ms);
    p->maint_runs = ms.runs;
    p->maint_errors = ms.errors;
    p->maint_compactions = ms.compactions;
    p->maint_swept = ms.swept;
    p->maint_waiting = ms.waiting;
    p->maint_waiting_bytes = ms.waiting_bytes;
    app_audit_stats as;
    app_audit_stats_get(d->audit, &as);
    p->audit_records = as.records;
    p->audit_failures = as.failures;
    p->audit_lost = as.lost;
    p->audit_state = d->audit ? (int)as.state : -1;
}

/*
 * Redis is still loading its data set at start: say so every few seconds in
 * the log and to systemd, and extend the unit's start timeout meanwhile.
 */
static void store_loading(void *arg, uint32_t waited_ms)
{
    uint32_t *next_ms = arg;
    if (waited_ms < *next_ms)
        return;
    *next_ms = waited_ms + 5000;
    cdx_log(CDX_LOG_WARN, "start_waiting_for_store",
            "waited_ms=%u msg=\"Redis is loading its data set\"", waited_ms);
    sd_notifyf(0, "EXTEND_TIMEOUT_USEC=%u\nSTATUS=waiting for Redis to load its data set (%u s)",
               15u * 1000000u, waited_ms / 1000);
}

static cdx_err open_store(app_daemon *d)
{
    const app_config *c = &d->cfg;
    if (c->backend == APP_STORE_MEMORY) /* the memory store announces itself, loudly */
        return eng_store_memory_new(&d->store);
    char host[APP_ADDR_MAX];
    uint16_t port = 0;
    uint32_t loading_next_ms = 0;
    eng_redis_opts o = {.user = c->redis_user[0] ? c->redis_user : NULL,
                        .password_file = c->redis_password_file[0] ? c->redis_password_file : NULL,
                        .connections = c->redis_connections,
                        .timeout_ms = c->redis_timeout_ms,
                        .allow_unsafe_durability = c->allow_unsafe_durability,
                        .start_wait_ms = c->redis_start_wait_s * 1000u,
                        .on_loading = store_loading,
                        .on_loading_arg = &loading_next_ms};
    if (!strncmp(c->redis, "unix:", 5)) {
        o.unix_path = c->redis + 5;
    } else {
        cdx_err err = app_addr_split(c->redis, host, sizeof(host), &port);
        if (err)
            return err;
        o.host = host;
        o.port = port;
    }
    cdx_err err = eng_store_redis_new(&o, &d->store);
    eng_durability dur;
    if (!err && c->allow_unsafe_durability && eng_store_durability(d->store, &dur) == CDX_OK &&
        dur.degraded)
        cdx_log(CDX_LOG_WARN, "store_unsafe_durability",
                "durability=\"%s\" msg=\"allow_unsafe_durability = yes: acknowledged writes "
                "can be lost; /healthz reports degraded\"",
                dur.settings);
    return err;
}

/* Warm every index's blocks into the cache (cache.preload). Failures are logged, not fatal. */
static void preload(app_daemon *d)
{
    eng_index_info *list = NULL;
    size_t n = 0;
    cdx_err e = eng_index_list(d->engine, &list, &n);
    if (e != CDX_OK) {
        cdx_log(CDX_LOG_WARN, "preload_failed", "code=%s", cdx_err_name(e));
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t blocks = 0;
        char id[2 * CDX_ID_LEN + 1];
        cdx_hex_encode(list[i].id, CDX_ID_LEN, id);
        if (strcmp(list[i].status, "ok") != 0) { /* cannot be served: nothing to warm */
            cdx_log(CDX_LOG_WARN, "preload", "index_id=%s status=%s", id, list[i].status);
            continue;
        }
        cdx_err err = eng_index_warm(d->engine, list[i].name, &blocks);
        /* Index names never go to the log: the id does. */
        cdx_log(err ? CDX_LOG_WARN : CDX_LOG_INFO, "preload", "index_id=%s segments=%llu code=%s",
                id, (unsigned long long)blocks, cdx_err_name(err));
    }
    free(list);
}

static void write_ports(app_daemon *d)
{
    if (!d->cfg.ports_file[0])
        return;
    char tmp[APP_PATH_MAX + 8];
    snprintf(tmp, sizeof(tmp), "%s.tmp", d->cfg.ports_file);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        cdx_log(CDX_LOG_ERROR, "ports_file", "errno=%d", errno);
        return;
    }
    if (d->server) {
        char host[APP_ADDR_MAX];
        uint16_t port;
        if (!app_addr_split(d->cfg.listen, host, sizeof(host), &port))
            fprintf(f, strchr(host, ':') ? "api=[%s]:%u\n" : "api=%s:%u\n",
                    strcmp(host, "0.0.0.0") ? host : "127.0.0.1", app_server_port(d->server));
    }
    if (d->http) {
        char host[APP_ADDR_MAX];
        uint16_t port;
        if (!app_addr_split(d->cfg.metrics_listen, host, sizeof(host), &port))
            fprintf(f, strchr(host, ':') ? "metrics=[%s]:%u\n" : "metrics=%s:%u\n", host,
                    app_http_port(d->http));
    }
    /* fsync then rename: a reader sees the whole file or none. */
    if (fflush(f) != 0 || fsync(fileno(f)) != 0 || fclose(f) != 0 ||
        rename(tmp, d->cfg.ports_file) != 0)
        cdx_log(CDX_LOG_ERROR, "ports_file", "errno=%d", errno);
}

static void on_pool(evutil_socket_t fd, short what, void *arg)
{
    app_daemon *d = arg;
    (void)fd;
    (void)what;
    app_job *list = app_pool_reap(d->pool);
    if (d->server)
        app_server_completions(d->server, list);
}

static void drained(void *arg)
{
    app_daemon *d = arg;
    cdx_log(CDX_LOG_INFO, "drained", "msg=\"every accepted request answered\"");
    event_base_loopexit(d->base, NULL);
}

static void drain_deadline(evutil_socket_t fd, short what, void *arg)
{
    app_daemon *d = arg;
    (void)fd;
    (void)what;
    /* Clients not reading their answers cannot hold the stop forever; the work itself is done
     * or still finishing in the pool, which app_daemon_free drains. */
    cdx_log(CDX_LOG_WARN, "drain_timeout", "connections=%zu",
            d->server ? app_server_connections(d->server) : 0);
    event_base_loopexit(d->base, NULL);
}

static void on_term(evutil_socket_t sig, short what, void *arg)
{
    app_daemon *d = arg;
    (void)what;
    sd_notify(0, "STOPPING=1");
    cdx_log(CDX_LOG_INFO, "stopping", "signal=%d pending_jobs=%zu", (int)sig,
            app_pool_pending(d->pool));
    if (!d->server) {
        event_base_loopexit(d->base, NULL);
        return;
    }
    struct timeval tv = {30, 0};
    d->ev_drain_deadline = evtimer_new(d->base, drain_deadline, d);
    if (d->ev_drain_deadline)
        evtimer_add(d->ev_drain_deadline, &tv);
    app_server_drain(d->server, drained, d);
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
    app_daemon *d = arg;
    (void)sig;
    (void)what;
    sd_notify(0, "RELOADING=1");
    /* An operator who saw the token or Redis come back need not wait out a back-off. */
    hsm_custody_retry_now(d->custody);
    eng_store_retry_now(d->store);
    cdx_log(CDX_LOG_INFO, "retry_now", "msg=\"back-offs of the token and the store reset\"");
    app_config fresh;
    app_config_init(&fresh);
    cdx_err err = app_config_load(d->config_path, &fresh);
    if (!err)
        err = app_config_check(&fresh);
    if (err) {
        cdx_log(CDX_LOG_ERROR, "reload_failed", "code=%s msg=\"%s\"", cdx_err_name(err),
                cdx_err_detail());
    } else {
        cdx_log_set_level((cdx_log_level)fresh.log_level);
        cdx_log_set_format(fresh.log_format == APP_LOG_JSON ? CDX_LOG_FMT_JSON : CDX_LOG_FMT_KV);
        d->cfg.log_level = fresh.log_level;
        d->cfg.log_format = fresh.log_format;
        cdx_err terr = d->tls ? app_tls_reload(d->tls) : CDX_OK;
        if (terr)
            cdx_log(CDX_LOG_ERROR, "reload_tls_failed", "code=%s msg=\"%s\" kept=previous",
                    cdx_err_name(terr), cdx_err_detail());
        /* The policy as the file now says (and the admins list as the config now says); a bad
         * file keeps the old policy in force (logged, and in /healthz). */
        cdx_err perr = app_policy_reload(d->policy, &fresh);
        char extra[64];
        snprintf(extra, sizeof(extra), "result=%s tls=%s", perr ? "kept_previous" : "reloaded",
                 d->tls ? (terr ? "kept" : "reloaded") : "none");
        cdx_err aerr =
            app_auditrec_lifecycle(d->audit, "policy_reload", NULL, "signal:SIGHUP", 0, extra);
        if (aerr)
            cdx_log(CDX_LOG_ERROR, "audit_reload_record", "code=%s msg=\"%s\"", cdx_err_name(aerr),
                    cdx_err_detail());
        cdx_log(CDX_LOG_INFO, "reloaded", "log_level=%d tls=%s policy=%s", fresh.log_level,
                d->tls ? (terr ? "kept" : "reloaded") : "none", perr ? "kept" : "reloaded");
    }
    sd_notify(0, "READY=1");
}

#ifndef CDX_VERSION
#define CDX_VERSION "0.1.0"
#endif

/*
 * The audit trail, before the engine starts using keys: the root key (made
 * here if this is the deployment's first start, as the engine would), its
 * audit subkey derived on the token and held while the daemon runs, the
 * trail opened with a start record, and the key-use hook installed.
 */
static cdx_err open_audit(app_daemon *d)
{
    const app_config *cfg = &d->cfg;
    uint8_t kcv[CDX_KCV_LEN];
    bool created = false;
    cdx_err err = hsm_root_key_ensure(d->custody, cfg->deployment_id, kcv, &created);
    hsm_key_ref root = {.kind = HSM_KEY_ROOT};
    memcpy(root.id, cfg->deployment_id, CDX_ID_LEN);
    if (!err)
        err = hsm_subkey_get(d->custody, &root, kcv, HSM_P_AUDIT, 0, &d->audit_key);
    if (err)
        return err;
    char dir[APP_PATH_MAX + 16], dep[2 * CDX_ID_LEN + 1], man[33], model[17], serial[17];
    char vman[100], vmodel[60], vserial[60];
    if (cfg->audit_dir[0]) {
        snprintf(dir, sizeof(dir), "%s", cfg->audit_dir);
    } else {
        (void)mkdir(cfg->state_dir, 0700); /* the engine would make it; the trail lives in it */
        snprintf(dir, sizeof(dir), "%s/audit", cfg->state_dir);
    }
    cdx_hex_encode(cfg->deployment_id, CDX_ID_LEN, dep);
    bool soft = false;
    if (hsm_custody_token(d->custody, man, model, &soft) != CDX_OK)
        snprintf(man, sizeof(man), "-"), snprintf(model, sizeof(model), "-");
    hsm_custody_serial(d->custody, serial);
    app_audit_value(vman, sizeof(vman), man);
    app_audit_value(vmodel, sizeof(vmodel), model);
    app_audit_value(vserial, sizeof(vserial), serial);
    char start[700];
    snprintf(start, sizeof(start),
             "kind=start version=%s deployment_id=%s root_key=%s token_manufacturer=%s "
             "token_model=%s token_serial=%s pid=%ld sync=%s on_failure=%s",
             CDX_VERSION, dep, created ? "generated" : "found", vman, vmodel, vserial,
             (long)getpid(),
             cfg->audit_sync == APP_AUDIT_SYNC_ALWAYS ? "always"
             : cfg->audit_sync == APP_AUDIT_SYNC_NONE ? "none"
                                                      : "interval",
             cfg->audit_fail_open ? "open" : "closed");
    app_audit_config ac = {.dir = dir,
                           .sync = (app_audit_sync)cfg->audit_sync,
                           .interval_ms = cfg->audit_sync_interval_ms,
                           .checkpoint_ms = cfg->audit_checkpoint_s * 1000u,
                           .rotate_bytes = cfg->audit_rotate_bytes,
                           .fail_open = cfg->audit_fail_open,
                           .syslog = cfg->audit_syslog,
                           .mac = app_auditrec_mac,
                           .mac_arg = d->audit_key};
    if ((err = app_audit_open(&ac, start, &d->audit)))
        return err;
    if (cfg->audit_fail_open)
        cdx_log(CDX_LOG_WARN, "audit_fail_open",
                "msg=\"[audit] on_failure = open: when the trail cannot be written, requests are "
                "served unrecorded (announced in /healthz); the default refuses them\"");
    hsm_custody_set_event_hook(d->custody, app_auditrec_key_event, d->audit);
    return CDX_OK;
}

/*
 * The attestation key (docs/ATTESTATION.md), found by its label at start. Without one the daemon
 * still starts: attest answers FAILED_PRECONDITION naming `cipherdex-hsm attest-key create`.
 */
static void load_attest_key(app_daemon *d)
{
    cdx_err err = hsm_attest_key_public(d->custody, &d->attest_key);
    if (err == CDX_ERR_KEY_NOT_FOUND)
        cdx_log(CDX_LOG_INFO, "attest_key_absent",
                "msg=\"no attestation key on the token: attest requests will be refused until "
                "`cipherdex-hsm attest-key create` is run and the daemon restarted\"");
    else if (err)
        cdx_log(CDX_LOG_WARN, "attest_key_unusable", "code=%s msg=\"%s\"", cdx_err_name(err),
                cdx_err_detail());
    else {
        uint8_t kid[32];
        char hex[65] = "-";
        unsigned char *spki = NULL;
        int n = i2d_PUBKEY(d->attest_key, &spki);
        if (n > 0) {
            SHA256(spki, (size_t)n, kid);
            cdx_hex_encode(kid, sizeof(kid), hex);
        }
        OPENSSL_free(spki);
        cdx_log(CDX_LOG_INFO, "attest_key_loaded", "key_id=%s", hex);
    }
}

cdx_err app_daemon_new(const app_config *cfg, const char *config_path, app_daemon **out)
{
    cdx_err err;
    *out = NULL;
    app_daemon *d = calloc(1, sizeof(*d));
    if (!d)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    d->cfg = *cfg;
    pthread_mutex_init(&d->probe_mu, NULL);
    d->config_path = strdup(config_path ? config_path : "");
    cdx_log_set_level((cdx_log_level)cfg->log_level);
    cdx_log_set_format(cfg->log_format == APP_LOG_JSON ? CDX_LOG_FMT_JSON : CDX_LOG_FMT_KV);
    /* Before anything opens descriptors: max_connections must fit RLIMIT_NOFILE. */
    if ((err = app_fd_fit(&d->cfg)))
        goto fail;
    if (!cfg->insecure && (err = app_tls_new(&d->cfg, &d->tls)))
        goto fail;
    if (cfg->insecure)
        cdx_log(CDX_LOG_WARN, "insecure",
                "msg=\"insecure = yes: PLAINTEXT TCP, NO CLIENT AUTHENTICATION; never in "
                "production; clients are the principal `anonymous`, with what the policy grants "
                "it\"");
    if ((err = app_policy_new(&d->cfg, &d->policy)) || (err = app_ratelimit_new(&d->rate)))
        goto fail;
    if (cfg->n_admins)
        cdx_log(CDX_LOG_WARN, "deprecated_admins",
                "admins=%zu untyped=%zu msg=\"[server] admins is deprecated: its principals are "
                "appliance admins; move them to [appliance] admins of the policy file "
                "(docs/POLICY.md). Untyped entries are read as uri: (a URI subjectAltName), never "
                "as a CN\"",
                cfg->n_admins, cfg->n_admins_untyped);
    if ((err = hsm_custody_open(&d->cfg.hsm, &d->custody)) || (err = open_store(d)))
        goto fail;
    {
        char man[33], model[17];
        if (hsm_custody_token(d->custody, man, model, &d->soft_token) == CDX_OK && d->soft_token)
            cdx_log(CDX_LOG_WARN, "software_token",
                    "manufacturer=\"%s\" model=\"%s\" msg=\"the token is a software token: "
                    "its keys are files on this machine, not in an HSM; for development and "
                    "tests only (docs/CUSTODY.md); /healthz reports degraded unless [server] "
                    "allow_software_token = yes\"",
                    man, model);
        snprintf(d->token_model, sizeof(d->token_model), "%s %s", man, model);
    }
    if (cfg->audit_enabled && (err = open_audit(d)))
        goto fail;
    load_attest_key(d);
    if (cfg->attest_certificates[0]) {
        err = app_attest_certs_load(cfg->attest_certificates, d->attest_key, &d->attest_certs,
                                    &d->attest_certs_len);
        if (err == CDX_ERR_KEY_ATTRIBUTES) /* a key replaced since: serve without the chain */
            cdx_log(CDX_LOG_WARN, "attest_certificates_unused", "msg=\"%s\"", cdx_err_detail());
        else if (err)
            goto fail;
        err = CDX_OK;
    }
    eng_config ec = {.custody = d->custody,
                     .store = d->store,
                     .state_dir = d->cfg.state_dir,
                     .manifest_max_age_ms = cfg->manifest_max_age_ms,
                     .token_mark_ms = cfg->token_mark_ms,
                     .cache_bytes = (size_t)cfg->cache_bytes,
                     .gc_grace_ms = cfg->gc_grace_ms,
                     .query_threads = cfg->query_threads,
                     .max_probes = cfg->max_probes,
                     .result_bytes_max = (size_t)cfg->max_frame_bytes,
                     .allow_plaintext_import = cfg->allow_plaintext_import,
                     .require_generated = cfg->require_generated};
    memcpy(ec.deployment_id, cfg->deployment_id, CDX_ID_LEN);
    if (cfg->allow_plaintext_import)
        cdx_log(CDX_LOG_WARN, "plaintext_import_allowed",
                "msg=\"[keys] allow_plaintext_import = yes: create_index accepts plaintext keys "
                "that existed outside the token; development only, never in production\"");
    if ((err = eng_new(&ec, &d->engine)))
        goto fail;
    if (cfg->cache_preload)
        preload(d);
    eng_maint_config mc = {.interval_ms = cfg->maint_interval_ms,
                           .policy = {.compact_segments = cfg->maint_compact_segments}};
    if (cfg->maint_enabled && (err = eng_maint_start(d->engine, &mc, &d->maint)))
        goto fail;
    if ((err = app_metrics_new(&d->metrics)) ||
        (err = app_pool_new(cfg->workers ? cfg->workers : ncpus(), &d->pool)))
        goto fail;
    if (cfg->metrics_listen[0] &&
        (err = app_http_new(cfg->metrics_listen, d->metrics, health, pull, d, &d->http)))
        goto fail;
    if (evthread_use_pthreads() != 0 || !(d->base = event_base_new())) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "cannot create the event loop");
        goto fail;
    }
    d->ev_term = evsignal_new(d->base, SIGTERM, on_term, d);
    d->ev_int = evsignal_new(d->base, SIGINT, on_term, d);
    d->ev_hup = evsignal_new(d->base, SIGHUP, on_hup, d);
    d->ev_pool = event_new(d->base, app_pool_fd(d->pool), EV_READ | EV_PERSIST, on_pool, d);
    if (!d->ev_term || !d->ev_int || !d->ev_hup || !d->ev_pool || event_add(d->ev_term, NULL) ||
        event_add(d->ev_int, NULL) || event_add(d->ev_hup, NULL) || event_add(d->ev_pool, NULL)) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "cannot register the loop's events");
        goto fail;
    }
    signal(SIGPIPE, SIG_IGN); /* a peer closing mid-write is an error return, not a death */
    d->env = (app_dispatch_env){.engine = d->engine,
                                .cfg = &d->cfg,
                                .metrics = d->metrics,
                                .health = wire_health,
                                .health_arg = d,
                                .started_ms = cdx_mono_ms(),
                                .policy = d->policy,
                                .rate = d->rate,
                                .audit = d->audit,
                                .audit_index_names = cfg->audit_index_names,
                                .custody = d->custody,
                                .attest_key = d->attest_key,
                                .attest_certs = d->attest_certs,
                                .attest_certs_len = d->attest_certs_len};
    if ((err = app_server_new(d->base, &d->cfg, d->tls, d->pool, &d->env, d->metrics, &d->server)))
        goto fail;
    d->env.budget = app_server_budget(d->server); /* before any request runs */
    *out = d;
    return CDX_OK;
fail:
    app_daemon_free(d);
    return err;
}

int app_daemon_run(app_daemon *d)
{
    write_ports(d);
    char id[2 * CDX_ID_LEN + 1];
    cdx_hex_encode(d->cfg.deployment_id, CDX_ID_LEN, id);
    cdx_log(CDX_LOG_INFO, "ready", "deployment=%s store=%s workers=%u api=%u tls=%s metrics=%u", id,
            eng_store_kind(d->store), d->cfg.workers ? d->cfg.workers : ncpus(),
            d->server ? (unsigned)app_server_port(d->server) : 0u, d->tls ? "mutual" : "none",
            d->http ? (unsigned)app_http_port(d->http) : 0u);
    sd_notify(0, "READY=1");
    d->ran = true;
    int rc = event_base_dispatch(d->base);
    /* Drain: the pool finishes every submitted job when it is freed (app_daemon_free). */
    return rc < 0 ? 1 : 0;
}

void app_daemon_free(app_daemon *d)
{
    if (!d)
        return;
    app_http_free(d->http); /* no new health probes into a closing engine */
    if (d->pool) {
        /* Drain: submitted work completes (acknowledged writes stay acknowledged); its answers
         * go to connections that are closing. */
        app_job *left = app_pool_stop(d->pool);
        if (d->server)
            app_server_completions(d->server, left);
    }
    app_server_free(d->server);
    app_pool_free(d->pool);
    if (d->ev_drain_deadline)
        event_free(d->ev_drain_deadline);
    if (d->ev_pool)
        event_free(d->ev_pool);
    if (d->ev_term)
        event_free(d->ev_term);
    if (d->ev_int)
        event_free(d->ev_int);
    if (d->ev_hup)
        event_free(d->ev_hup);
    if (d->base)
        event_base_free(d->base);
    eng_maint_stop(d->maint); /* before the engine it maintains */
    eng_free(d->engine);
    eng_store_free(d->store);
    hsm_custody_set_event_hook(d->custody, NULL, NULL);
    app_audit_close(d->audit, d->ran ? "kind=stop clean=yes" : "kind=stop clean=start_failed");
    hsm_subkey_release(d->audit_key);
    EVP_PKEY_free(d->attest_key);
    free(d->attest_certs);
    hsm_custody_free(d->custody);
    app_tls_free(d->tls);
    app_policy_free(d->policy);
    app_ratelimit_free(d->rate);
    app_metrics_free(d->metrics);
    free(d->config_path);
    pthread_mutex_destroy(&d->probe_mu);
    free(d);
}
