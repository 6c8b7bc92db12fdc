/*
 * app_config.h - the daemon's configuration file (cipherdexd --config FILE).
 *
 * One INI file, sections and keys below (docs/CONFIG.md has the table with
 * defaults). Unknown sections and keys, a key set twice, and bad values are
 * errors reported as "file:line: key: what is wrong"; nothing is guessed.
 *
 *   [server]  listen, tls_cert, tls_key, client_ca, crl, allow_tls12, insecure,
 *             handshake_timeout_ms, idle_timeout_s, min_recv_bytes_per_s,
 *             max_connections, max_handshaking, max_handshaking_per_source,
 *             max_frame_bytes, inflight_bytes,
 *             max_outstanding, output_high_water, workers, admins,
 *             deployment_id, ports_file
 *   [hsm]     see app_hsmconf.h (the admin tool reads the same section)
 *   [store]   backend (redis | memory), redis (host:port | unix:/path),
 *             redis_user, redis_password_file, redis_connections,
 *             redis_timeout_ms, redis_start_wait_s,
 *             allow_unsafe_durability
 *   [keys]    subkey_ttl_ms (or [hsm] subkey_ttl_ms; not both),
 *             allow_plaintext_import, require_generated, attest_certificates
 *   [cache]   bytes, preload
 *   [engine]  manifest_max_age_ms, gc_grace_ms, query_threads, max_probes
 *   [maintenance] enabled, interval_ms, compact_segments
 *   [state]   dir, token_mark_ms
 *   [log]     level (error | warn | info | debug), format (kv | json)
 *   [metrics] listen (host:port, empty = off)
 *
 * Loading fills one caller-owned app_config; not thread-safe while loading.
 * A loaded, checked app_config is only read afterwards and may be shared
 * by every thread.
 */
#ifndef APP_CONFIG_H
#define APP_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "app_addr.h"
#include "cdx_err.h"
#include "cdx_limits.h"
#include "hsm_config.h"

#define APP_PATH_MAX 4096

typedef enum app_store_backend {
    APP_STORE_REDIS = 0,
    APP_STORE_MEMORY = 1,
} app_store_backend;

typedef enum app_log_format {
    APP_LOG_KV = 0,
    APP_LOG_JSON = 1,
} app_log_format;

typedef struct app_config {
    /* [server] */
    char listen[APP_ADDR_MAX]; /* host:port, [v6]:port */
    char tls_cert[APP_PATH_MAX], tls_key[APP_PATH_MAX], client_ca[APP_PATH_MAX];
    char crl[APP_PATH_MAX]; /* optional */
    bool allow_tls12;       /* TLS 1.2 with ECDHE + AEAD besides 1.3 */
    bool insecure;          /* plaintext TCP, no client authentication */
    uint32_t handshake_timeout_ms;
    uint32_t idle_timeout_s;
    uint32_t min_recv_bytes_per_s; /* while a frame is arriving */
    uint32_t max_connections;
    uint32_t max_handshaking;            /* connections still in their TLS handshake */
    uint32_t max_handshaking_per_source; /* ... from one source address */
    uint64_t max_frame_bytes;
    uint64_t inflight_bytes;    /* all connections' requests being decoded or served */
    uint32_t max_outstanding;   /* requests per connection before reading stops */
    uint64_t output_high_water; /* queued response bytes before reading stops */
    uint32_t workers;           /* engine worker threads; 0 = one per CPU */
    /* Deprecated: appliance admins, typed (pol_principal_legacy: untyped entries become
     * "uri:..."); the policy file's [appliance] admins replaces it. */
    char admins[CDX_ADMINS_MAX][CDX_PRINCIPAL_MAX + 1];
    size_t n_admins;
    size_t n_admins_untyped;   /* entries written without a type (warned about at start) */
    char policy[APP_PATH_MAX]; /* the access policy file (docs/POLICY.md); "" = admins only */
    bool allow_software_token; /* a software token does not degrade /healthz (still logged) */
    uint8_t deployment_id[CDX_ID_LEN];
    bool have_deployment_id;
    char ports_file[APP_PATH_MAX]; /* optional: bound addresses written here once listening */
    /* [hsm] and [keys] */
    hsm_config hsm;
    /* [store] */
    app_store_backend backend;
    char redis[APP_ADDR_MAX]; /* host:port or unix:/path */
    char redis_user[128];
    char redis_password_file[APP_PATH_MAX];
    uint32_t redis_connections, redis_timeout_ms;
    uint32_t redis_start_wait_s; /* a LOADING Redis at start is waited for this long */
    bool allow_unsafe_durability;
    /* [keys] */
    bool allow_plaintext_import; /* create_index may carry a plaintext key (development) */
    bool require_generated;      /* refuse keys the token does not say it generated */
    /* PEM certificates for attestation statements' intermediateCertificates (the first one
     * certifying the attestation key, e.g. a vendor's attestation certificate;
     * docs/ATTESTATION.md);
     * "" = none */
    char attest_certificates[APP_PATH_MAX];
    /* [cache] */
    uint64_t cache_bytes;
    bool cache_preload;
    /* [engine] */
    uint32_t manifest_max_age_ms, gc_grace_ms, query_threads;
    uint32_t token_mark_ms; /* [state] token_mark_ms: rollback marks on the token; 0 = off */
    uint32_t max_probes;    /* filtered queries widen up to this many clusters; 0 = all */
    /* [maintenance] (engine/eng_maint.h) */
    bool maint_enabled;
    uint32_t maint_interval_ms;
    uint32_t maint_compact_segments; /* 0 = never compact */
    /* [audit] (docs/AUDIT.md) */
    bool audit_enabled;
    char audit_dir[APP_PATH_MAX]; /* "" = <[state] dir>/audit */
    int audit_sync;               /* app_audit_sync */
    uint32_t audit_sync_interval_ms;
    uint32_t audit_checkpoint_s;
    uint64_t audit_rotate_bytes;
    bool audit_fail_open; /* on_failure = open */
    bool audit_syslog;
    bool audit_index_names; /* records name the index, not only its id */
    /* [state] */
    char state_dir[APP_PATH_MAX];
    /* [log] */
    int log_level; /* cdx_log_level */
    app_log_format log_format;
    /* [metrics] */
    char metrics_listen[APP_ADDR_MAX];
} app_config;

/* Defaults (docs/CONFIG.md); hsm via hsm_config_init. */
void app_config_init(app_config *c);

/*
 * Load `path` over c (initialise it first). Checks every key and value, not
 * the file system; app_config_check does the cross-key checks.
 * Errors: CDX_ERR_CONFIG (detail "path:line: ...").
 */
CDX_MUST_CHECK cdx_err app_config_load(const char *path, app_config *c);

/*
 * Cross-key checks: TLS files and client CA required unless insecure;
 * admins required unless insecure; deployment_id required; redis address
 * required for the redis backend; host:port forms parse; the maintenance
 * interval within CDX_MAINT_INTERVAL_MS_MIN..MAX.
 * Errors: CDX_ERR_CONFIG with what to fix.
 */
CDX_MUST_CHECK cdx_err app_config_check(const app_config *c);

#endif
