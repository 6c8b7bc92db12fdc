/* The daemon's configuration file (see app_config.h, docs/CONFIG.md). */
#include "app_config.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "app_hsmconf.h"
#include "app_ini.h"
#include "pol_principal.h"
#include "cdx_hex.h"
#include "cdx_log.h"

typedef enum kind { T_BOOL, T_U32, T_U64, T_SIZE, T_STR, T_SPECIAL } kind;

typedef struct keydef {
    const char *section, *key;
    kind t;
    size_t off, cap; /* field offset; string capacity */
    uint64_t max;
} keydef;

#define F(field) offsetof(app_config, field), sizeof(((app_config *)0)->field)
#define N(field) offsetof(app_config, field), 0

static const keydef keys[] = {
    {"server", "listen", T_STR, F(listen), 0},
    {"server", "tls_cert", T_STR, F(tls_cert), 0},
    {"server", "tls_key", T_STR, F(tls_key), 0},
    {"server", "client_ca", T_STR, F(client_ca), 0},
    {"server", "crl", T_STR, F(crl), 0},
    {"server", "allow_tls12", T_BOOL, N(allow_tls12), 0},
    {"server", "insecure", T_BOOL, N(insecure), 0},
    {"server", "handshake_timeout_ms", T_U32, N(handshake_timeout_ms), 600000},
    {"server", "idle_timeout_s", T_U32, N(idle_timeout_s), 86400},
    {"server", "min_recv_bytes_per_s", T_U32, N(min_recv_bytes_per_s), 1u << 30},
    {"server", "max_connections", T_U32, N(max_connections), CDX_CONNECTIONS_MAX},
    {"server", "max_handshaking", T_U32, N(max_handshaking), CDX_CONNECTIONS_MAX},
    {"server", "max_handshaking_per_source", T_U32, N(max_handshaking_per_source),
     CDX_CONNECTIONS_MAX},
    {"server", "max_frame_bytes", T_SIZE, N(max_frame_bytes), CDX_FRAME_MAX_LIMIT},
    {"server", "inflight_bytes", T_SIZE, N(inflight_bytes), CDX_INFLIGHT_MAX},
    {"server", "max_outstanding", T_U32, N(max_outstanding), CDX_OUTSTANDING_MAX},
    {"server", "output_high_water", T_SIZE, N(output_high_water), 1ull << 32},
    {"server", "workers", T_U32, N(workers), CDX_WORKERS_MAX},
    {"server", "admins", T_SPECIAL, 0, 0, 0},
    {"server", "policy", T_STR, F(policy), 0},
    {"server", "allow_software_token", T_BOOL, N(allow_software_token), 0},
    {"server", "deployment_id", T_SPECIAL, 0, 0, 0},
    {"server", "ports_file", T_STR, F(ports_file), 0},
    {"store", "backend", T_SPECIAL, 0, 0, 0},
    {"store", "redis", T_STR, F(redis), 0},
    {"store", "redis_user", T_STR, F(redis_user), 0},
    {"store", "redis_password_file", T_STR, F(redis_password_file), 0},
    {"store", "redis_connections", T_U32, N(redis_connections), CDX_STORE_CONNECTIONS_MAX},
    {"store", "redis_timeout_ms", T_U32, N(redis_timeout_ms), 600000},
    {"store", "redis_start_wait_s", T_U32, N(redis_start_wait_s), 86400},
    {"store", "allow_unsafe_durability", T_BOOL, N(allow_unsafe_durability), 0},
    {"keys", "subkey_ttl_ms", T_SPECIAL, 0, 0, 0},
    {"keys", "allow_plaintext_import", T_BOOL, N(allow_plaintext_import), 0},
    {"keys", "require_generated", T_BOOL, N(require_generated), 0},
    {"keys", "attest_certificates", T_STR, F(attest_certificates), 0},
    {"cache", "bytes", T_SIZE, N(cache_bytes), 1ull << 40},
    {"cache", "preload", T_BOOL, N(cache_preload), 0},
    {"engine", "manifest_max_age_ms", T_U32, N(manifest_max_age_ms), 3600000},
    {"engine", "gc_grace_ms", T_U32, N(gc_grace_ms), 7u * 86400000u},
    {"engine", "query_threads", T_U32, N(query_threads), CDX_WORKERS_MAX},
    {"engine", "max_probes", T_U32, N(max_probes), CDX_NLISTS_MAX},
    {"maintenance", "enabled", T_BOOL, N(maint_enabled), 0},
    {"maintenance", "interval_ms", T_U32, N(maint_interval_ms), CDX_MAINT_INTERVAL_MS_MAX},
    {"maintenance", "compact_segments", T_U32, N(maint_compact_segments),
     CDX_MAINT_COMPACT_SEGMENTS_MAX},
    {"audit", "enabled", T_BOOL, N(audit_enabled), 0},
    {"audit", "dir", T_STR, F(audit_dir), 0},
    {"audit", "sync", T_SPECIAL, 0, 0, 0},
    {"audit", "sync_interval_ms", T_U32, N(audit_sync_interval_ms), 60000},
    {"audit", "checkpoint_s", T_U32, N(audit_checkpoint_s), 86400},
    {"audit", "rotate_bytes", T_SIZE, N(audit_rotate_bytes), 1ull << 40},
    {"audit", "on_failure", T_SPECIAL, 0, 0, 0},
    {"audit", "syslog", T_BOOL, N(audit_syslog), 0},
    {"audit", "index_names", T_BOOL, N(audit_index_names), 0},
    {"state", "dir", T_STR, F(state_dir), 0},
    {"state", "token_mark_ms", T_U32, N(token_mark_ms), 86400000},
    {"log", "level", T_SPECIAL, 0, 0, 0},
    {"log", "format", T_SPECIAL, 0, 0, 0},
    {"metrics", "listen", T_STR, F(metrics_listen), 0},
};
#define NKEYS (sizeof(keys) / sizeof(keys[0]))

static const char *const sections[] = {"server", "hsm", "store", "keys",    "cache",      "engine",
                                       "state",  "log", "audit", "metrics", "maintenance"};

void app_config_init(app_config *c)
{
    memset(c, 0, sizeof(*c));
    hsm_config_init(&c->hsm);
    snprintf(c->listen, sizeof(c->listen), "127.0.0.1:7700");
    c->handshake_timeout_ms = CDX_HANDSHAKE_TIMEOUT_MS_DEFAULT;
    c->idle_timeout_s = CDX_IDLE_TIMEOUT_S_DEFAULT;
    c->min_recv_bytes_per_s = CDX_MIN_RECV_RATE_DEFAULT;
    c->max_connections = CDX_CONNECTIONS_DEFAULT;
    c->max_handshaking = CDX_HANDSHAKING_DEFAULT;
    c->max_handshaking_per_source = CDX_HANDSHAKING_PER_SOURCE_DEFAULT;
    c->max_frame_bytes = CDX_FRAME_MAX_DEFAULT;
    c->inflight_bytes = CDX_INFLIGHT_DEFAULT;
    c->max_outstanding = CDX_OUTSTANDING_DEFAULT;
    c->output_high_water = CDX_OUTPUT_HIGH_WATER_DEFAULT;
    c->backend = APP_STORE_REDIS;
    snprintf(c->redis, sizeof(c->redis), "127.0.0.1:6379");
    c->redis_start_wait_s = CDX_REDIS_START_WAIT_S_DEFAULT;
    c->cache_bytes = CDX_CACHE_BYTES_DEFAULT;
    c->maint_enabled = true;
    c->maint_interval_ms = CDX_MAINT_INTERVAL_MS_DEFAULT;
    c->maint_compact_segments = CDX_MAINT_COMPACT_SEGMENTS_DEFAULT;
    snprintf(c->state_dir, sizeof(c->state_dir), "/var/lib/cipherdex");
    c->token_mark_ms = CDX_TOKEN_MARK_MS_DEFAULT;
    c->audit_enabled = true;
    c->audit_sync_interval_ms = CDX_AUDIT_SYNC_INTERVAL_MS_DEFAULT;
    c->audit_checkpoint_s = CDX_AUDIT_CHECKPOINT_S_DEFAULT;
    c->audit_rotate_bytes = CDX_AUDIT_ROTATE_BYTES_DEFAULT;
    c->log_level = CDX_LOG_INFO;
    snprintf(c->metrics_listen, sizeof(c->metrics_listen), "127.0.0.1:7701");
}

typedef struct load_ctx {
    app_config *c;
    app_hsmconf_seen hsm_seen;
    unsigned seen_line[NKEYS];
    unsigned ttl_line; /* [keys] or [hsm] subkey_ttl_ms */
} load_ctx;

static cdx_err set_admins(app_config *c, const char *v)
{
    char buf[CDX_ADMINS_MAX * (CDX_PRINCIPAL_MAX + 2)];
    if (strlen(v) >= sizeof(buf))
        return cdx_fail(CDX_ERR_CONFIG, "admins: list too long");
    snprintf(buf, sizeof(buf), "%s", v);
    c->n_admins = 0;
    c->n_admins_untyped = 0;
    /* Split by hand: strtok would silently skip an empty entry ("a,,b"). */
    for (char *t = buf, *next; t; t = next) {
        next = strchr(t, ',');
        if (next)
            *next++ = '\0';
        while (*t == ' ' || *t == '\t')
            t++;
        size_t n = strlen(t);
        while (n && (t[n - 1] == ' ' || t[n - 1] == '\t'))
            t[--n] = '\0';
        if (n == 0)
            return cdx_fail(CDX_ERR_CONFIG, "admins: empty principal in the list");
        if (n > CDX_PRINCIPAL_MAX)
            return cdx_fail(CDX_ERR_CONFIG, "admins: principal `%.40s...` longer than %d bytes", t,
                            CDX_PRINCIPAL_MAX);
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)t[i] < 0x21 || t[i] == 0x7f)
                return cdx_fail(CDX_ERR_CONFIG,
                                "admins: principal `%s` has a space or control "
                                "character",
                                t);
        if (c->n_admins == CDX_ADMINS_MAX)
            return cdx_fail(CDX_ERR_CONFIG, "admins: more than %d principals", CDX_ADMINS_MAX);
        /* Typed as the policy types principals: an untyped entry is a URI SAN, never a CN. */
        char typed[CDX_PRINCIPAL_MAX + 1];
        bool untyped = false;
        cdx_err err = pol_principal_legacy(t, typed, sizeof(typed), &untyped);
        if (err) {
            char why[300];
            snprintf(why, sizeof(why), "%s", cdx_err_detail());
            return cdx_fail(CDX_ERR_CONFIG, "admins: %s", why);
        }
        for (size_t i = 0; i < c->n_admins; i++)
            if (!strcmp(c->admins[i], typed))
                return cdx_fail(CDX_ERR_CONFIG, "admins: `%s` listed twice", t);
        memcpy(c->admins[c->n_admins++], typed, strlen(typed) + 1);
        c->n_admins_untyped += untyped;
    }
    if (c->n_admins == 0)
        return cdx_fail(CDX_ERR_CONFIG, "admins: no principal given");
    return CDX_OK;
}

static cdx_err set_special(load_ctx *l, unsigned line, const char *section, const char *key,
                           const char *v)
{
    app_config *c = l->c;
    if (!strcmp(key, "admins"))
        return set_admins(c, v);
    if (!strcmp(key, "deployment_id")) {
        if (strlen(v) != 2 * CDX_ID_LEN || cdx_hex_decode(v, c->deployment_id, CDX_ID_LEN) != 0)
            return cdx_fail(CDX_ERR_CONFIG,
                            "deployment_id: must be %d hex digits (16 bytes), "
                            "the same on every appliance sharing the store",
                            2 * CDX_ID_LEN);
        c->have_deployment_id = true;
        return CDX_OK;
    }
    if (!strcmp(key, "backend")) {
        if (!strcmp(v, "redis"))
            c->backend = APP_STORE_REDIS;
        else if (!strcmp(v, "memory"))
            c->backend = APP_STORE_MEMORY;
        else
            return cdx_fail(CDX_ERR_CONFIG, "backend: `%s` is not redis or memory", v);
        return CDX_OK;
    }
    if (!strcmp(key, "subkey_ttl_ms")) { /* [keys] */
        (void)section;
        if (l->ttl_line)
            return cdx_fail(CDX_ERR_CONFIG,
                            "subkey_ttl_ms: already set on line %u ([hsm] or "
                            "[keys]); keep one",
                            l->ttl_line);
        uint64_t n;
        cdx_err err = app_ini_uint(key, v, CDX_SUBKEY_TTL_MAX_MS, false, &n);
        if (err)
            return err;
        c->hsm.subkey_ttl_ms = (uint32_t)n;
        l->ttl_line = line;
        return CDX_OK;
    }
    if (!strcmp(key, "sync")) { /* [audit] */
        static const char *const names[] = {"interval", "always", "none"};
        for (int i = 0; i < 3; i++)
            if (!strcmp(v, names[i])) {
                c->audit_sync = i;
                return CDX_OK;
            }
        return cdx_fail(CDX_ERR_CONFIG, "sync: `%s` is not interval, always or none", v);
    }
    if (!strcmp(key, "on_failure")) {
        if (strcmp(v, "closed") && strcmp(v, "open"))
            return cdx_fail(CDX_ERR_CONFIG, "on_failure: `%s` is not closed or open", v);
        c->audit_fail_open = !strcmp(v, "open");
        return CDX_OK;
    }
    if (!strcmp(key, "level")) {
        static const char *const names[] = {"error", "warn", "info", "debug"};
        for (int i = 0; i < 4; i++)
            if (!strcmp(v, names[i])) {
                c->log_level = i;
                return CDX_OK;
            }
        return cdx_fail(CDX_ERR_CONFIG, "level: `%s` is not error, warn, info or debug", v);
    }
    if (!strcmp(key, "format")) {
        if (!strcmp(v, "kv"))
            c->log_format = APP_LOG_KV;
        else if (!strcmp(v, "json"))
            c->log_format = APP_LOG_JSON;
        else
            return cdx_fail(CDX_ERR_CONFIG, "format: `%s` is not kv or json", v);
        return CDX_OK;
    }
    return cdx_fail(CDX_ERR_CONFIG, "%s: unhandled key", key); /* not reached */
}

static cdx_err load_one(void *user, unsigned line, const char *section, const char *key,
                        const char *value)
{
    load_ctx *l = user;
    app_config *c = l->c;
    uint8_t *base = (uint8_t *)c;

    if (section[0] == '\0')
        return cdx_fail(CDX_ERR_CONFIG, "key `%s` outside any [section]", key);
    bool known = false;
    for (size_t i = 0; i < sizeof(sections) / sizeof(sections[0]); i++)
        known |= !strcmp(section, sections[i]);
    if (!known)
        return cdx_fail(CDX_ERR_CONFIG,
                        "unknown section [%s] (known: server, hsm, store, keys, "
                        "cache, engine, state, log, metrics, maintenance)",
                        section);
    if (!strcmp(section, "hsm")) {
        if (!strcmp(key, "subkey_ttl_ms")) {
            if (l->ttl_line)
                return cdx_fail(CDX_ERR_CONFIG,
                                "subkey_ttl_ms: already set on line %u ([hsm] "
                                "or [keys]); keep one",
                                l->ttl_line);
            l->ttl_line = line;
        }
        return app_hsmconf_set(&c->hsm, &l->hsm_seen, line, key, value);
    }
    size_t k;
    for (k = 0; k < NKEYS; k++)
        if (!strcmp(keys[k].section, section) && !strcmp(keys[k].key, key))
            break;
    if (k == NKEYS) {
        char known_keys[512] = "";
        for (size_t i = 0; i < NKEYS; i++)
            if (!strcmp(keys[i].section, section)) {
                size_t n = strlen(known_keys);
                snprintf(known_keys + n, sizeof(known_keys) - n, "%s%s", n ? ", " : "",
                         keys[i].key);
            }
        return cdx_fail(CDX_ERR_CONFIG, "unknown key `%s` in [%s] (known: %s)", key, section,
                        known_keys);
    }
    if (l->seen_line[k])
        return cdx_fail(CDX_ERR_CONFIG, "%s: set twice (first on line %u); keep one", key,
                        l->seen_line[k]);
    l->seen_line[k] = line;
    const keydef *d = &keys[k];
    /* Strings may be empty only where empty means "none": crl, redis_user, metrics listen. */
    bool empty_ok = (!strcmp(section, "server") && !strcmp(key, "crl")) ||
                    (!strcmp(section, "store") && !strcmp(key, "redis_user")) ||
                    (!strcmp(section, "metrics") && !strcmp(key, "listen"));
    if (value[0] == '\0' && !empty_ok)
        return cdx_fail(CDX_ERR_CONFIG, "%s: empty value", key);
    uint64_t n;
    cdx_err err;
    switch (d->t) {
    case T_BOOL:
        return app_ini_bool(key, value, (bool *)(void *)(base + d->off));
    case T_U32:
        if ((err = app_ini_uint(key, value, d->max, false, &n)))
            return err;
        *(uint32_t *)(void *)(base + d->off) = (uint32_t)n;
        return CDX_OK;
    case T_U64:
    case T_SIZE:
        if ((err = app_ini_uint(key, value, d->max, d->t == T_SIZE, &n)))
            return err;
        *(uint64_t *)(void *)(base + d->off) = n;
        return CDX_OK;
    case T_STR:
        return app_ini_str(key, value, (char *)(base + d->off), d->cap);
    case T_SPECIAL:
        return set_special(l, line, section, key, value);
    }
    return cdx_fail(CDX_ERR_CONFIG, "%s: unhandled key", key); /* not reached */
}

cdx_err app_config_load(const char *path, app_config *c)
{
    load_ctx l = {.c = c};
    return app_ini_load(path, load_one, &l);
}

/* Prefix the detail an address check left (copied: cdx_fail formats into the same buffer). */
static cdx_err addr_fail(const char *where)
{
    char why[256];
    snprintf(why, sizeof(why), "%s", cdx_err_detail());
    return cdx_fail(CDX_ERR_CONFIG, "%s: %s", where, why);
}

cdx_err app_config_check(const app_config *c)
{
    char host[APP_ADDR_MAX];
    uint16_t port;
    if (app_addr_split(c->listen, host, sizeof(host), &port))
        return addr_fail("[server] listen");
    if (!c->insecure) {
        if (!c->tls_cert[0] || !c->tls_key[0])
            return cdx_fail(CDX_ERR_CONFIG, "[server] tls_cert and tls_key are required (or "
                                            "insecure = yes for plaintext, never in production)");
        if (!c->client_ca[0])
            return cdx_fail(CDX_ERR_CONFIG, "[server] client_ca is required: clients "
                                            "authenticate with certificates (mutual TLS)");
        if (c->n_admins == 0 && !c->policy[0])
            return cdx_fail(CDX_ERR_CONFIG,
                            "[server] policy is required: the access policy file saying who may "
                            "do what (docs/POLICY.md); the deprecated [server] admins alone "
                            "still works");
    } else {
        /* No TLS, no authentication: never reachable from another machine (review L8). */
        char ih[APP_ADDR_MAX];
        uint16_t ip;
        if (!app_addr_split(c->listen, ih, sizeof(ih), &ip) && strcmp(ih, "127.0.0.1") &&
            strcmp(ih, "::1") && strcmp(ih, "localhost") && strncmp(ih, "unix:", 5))
            return cdx_fail(CDX_ERR_CONFIG,
                            "[server] listen = %s with insecure = yes: plaintext without "
                            "authentication may only listen on loopback (127.0.0.1, ::1)",
                            c->listen);
    }
    static const uint8_t zero[CDX_ID_LEN];
    if (!c->have_deployment_id)
        return cdx_fail(CDX_ERR_CONFIG, "[server] deployment_id is required (32 hex digits, the "
                                        "same on every appliance sharing the store)");
    if (!memcmp(c->deployment_id, zero, CDX_ID_LEN))
        return cdx_fail(CDX_ERR_CONFIG,
                        "[server] deployment_id is the all-zero placeholder: "
                        "generate one (od -An -N16 -tx1 /dev/urandom | tr -d ' \\n')");
    if (c->max_frame_bytes < 1024)
        return cdx_fail(CDX_ERR_CONFIG, "[server] max_frame_bytes below 1 KiB");
    if (c->inflight_bytes < c->max_frame_bytes)
        return cdx_fail(CDX_ERR_CONFIG, "[server] inflight_bytes must be at least "
                                        "max_frame_bytes, or no large request could ever run");
    if (c->max_connections == 0 || c->max_outstanding == 0)
        return cdx_fail(CDX_ERR_CONFIG, "[server] max_connections and max_outstanding must be "
                                        "at least 1");
    if (c->max_handshaking == 0 || c->max_handshaking_per_source == 0)
        return cdx_fail(CDX_ERR_CONFIG, "[server] max_handshaking and max_handshaking_per_source "
                                        "must be at least 1");
    if (c->backend == APP_STORE_REDIS) {
        if (strncmp(c->redis, "unix:", 5) == 0) {
            if (c->redis[5] != '/')
                return cdx_fail(CDX_ERR_CONFIG, "[store] redis: unix: needs an absolute path");
        } else if (app_addr_split(c->redis, host, sizeof(host), &port)) {
            return addr_fail("[store] redis");
        } else if (port == 0) {
            return cdx_fail(CDX_ERR_CONFIG, "[store] redis: port 0");
        }
        if (c->redis_user[0] && !c->redis_password_file[0])
            return cdx_fail(CDX_ERR_CONFIG, "[store] redis_user needs redis_password_file");
        if (c->redis_password_file[0] && c->redis_password_file[0] != '/')
            return cdx_fail(CDX_ERR_CONFIG, "[store] redis_password_file must be absolute");
    }
    /* The sweep deletes what it saw unreferenced for gc_grace_ms: a reader on a manifest that
     * old, or a writer whose contents wait for their commit, must finish within it. */
    if (c->gc_grace_ms && c->gc_grace_ms < CDX_GC_GRACE_MS_MIN)
        return cdx_fail(CDX_ERR_CONFIG,
                        "[engine] gc_grace_ms must be 0 (the default, 10 minutes) or at least %u",
                        CDX_GC_GRACE_MS_MIN);
    if (c->gc_grace_ms && c->gc_grace_ms <= c->manifest_max_age_ms)
        return cdx_fail(CDX_ERR_CONFIG,
                        "[engine] gc_grace_ms (%u) must exceed manifest_max_age_ms (%u): a reader "
                        "may use a state that old, and the sweep would delete records it reads",
                        c->gc_grace_ms, c->manifest_max_age_ms);
    if (c->maint_interval_ms < CDX_MAINT_INTERVAL_MS_MIN)
        return cdx_fail(CDX_ERR_CONFIG, "[maintenance] interval_ms must be at least %u",
                        CDX_MAINT_INTERVAL_MS_MIN);
    if (c->state_dir[0] != '/')
        return cdx_fail(CDX_ERR_CONFIG, "[state] dir must be an absolute path");
    if (c->audit_dir[0] && c->audit_dir[0] != '/')
        return cdx_fail(CDX_ERR_CONFIG, "[audit] dir must be an absolute path");
    if (c->audit_sync_interval_ms < 10)
        return cdx_fail(CDX_ERR_CONFIG, "[audit] sync_interval_ms must be at least 10");
    if (c->audit_rotate_bytes && c->audit_rotate_bytes < 64 * 1024)
        return cdx_fail(CDX_ERR_CONFIG,
                        "[audit] rotate_bytes must be 0 (never) or at least 64 KiB");
    if (c->metrics_listen[0] && app_addr_split(c->metrics_listen, host, sizeof(host), &port))
        return addr_fail("[metrics] listen");
    return CDX_OK;
}
