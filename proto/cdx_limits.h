/*
 * cdx_limits.h - every limit in Cipherdex, in one place (as SQLite does).
 *
 * A limit here is a hard cap enforced before allocation; configuration may
 * lower some of them, never raise them.
 */
#ifndef CDX_LIMITS_H
#define CDX_LIMITS_H

/* ---- identifiers and key material ---- */
#define CDX_ID_LEN          16 /* deployment id, index id: CKA_ID bytes */
#define CDX_KEY_LEN         32 /* root and index keys: 256-bit generic secrets */
#define CDX_SUBKEY_LEN      32 /* HMAC-SHA256 output */
#define CDX_KCV_LEN         8  /* key check value bytes */
#define CDX_WRAPPED_KEY_LEN 40 /* RFC 5649 wrap of a 32-byte key */
#define CDX_PURPOSE_MAX     32 /* longest purpose name, ASCII */
#define CDX_LABEL_MAX       64 /* longest token object label we create or accept */
#define CDX_KEK_LABEL_MIN   1

/* ---- PKCS#11 custody ---- */
#define CDX_PIN_MAX               256   /* bytes of PIN read from a source */
#define CDX_KEY_FILE_MAX          1024  /* bytes of a base64 key file */
#define CDX_SESSIONS_DEFAULT      4     /* session pool size */
#define CDX_SESSIONS_MAX          64
#define CDX_SUBKEY_TTL_MAX_MS     86400000u /* a day */
#define CDX_SUBKEY_CACHE_MAX      4096  /* cached subkeys */
#define CDX_SECMEM_DEFAULT        (256u * 1024u) /* locked arena for secrets */
#define CDX_SECMEM_MAX            (64u * 1024u * 1024u)
#define CDX_RELOGIN_BACKOFF_MIN_MS 250
#define CDX_RELOGIN_BACKOFF_MAX_MS 1000 /* re-login attempts back off up to this: service
                                          * resumes within about a second of the token's return
                                          * (one failed attempt costs a finalise + initialise) */
#define CDX_TOKENS_LISTED_MAX     16    /* tokens named in a TOKEN_NOT_FOUND message */
#define CDX_KEYS_LISTED_MAX       65536 /* objects the admin listing will walk */

/* ---- daemon (cipherdexd; the configuration may lower these, never raise them) ---- */
#define CDX_PRINCIPAL_MAX          255               /* bytes of a typed principal ("uri:...") */
#define CDX_PRINCIPAL_VALUE_MAX    (CDX_PRINCIPAL_MAX - 4) /* its value: the SAN or CN */
#define CDX_ADMINS_MAX             64                /* admin principals in the configuration */
#define CDX_POLICY_RULES_MAX       4096              /* [index] sections x permissions x subjects */
#define CDX_POLICY_ROLES_MAX       256               /* [role] sections */
#define CDX_POLICY_SUBJECTS_MAX    1024              /* principals and roles in one list */
#define CDX_RATE_PRINCIPALS_MAX    4096              /* principals with rate-limit state */
#define CDX_LINGER_MS              1000              /* a refused handshake drains this long */
#define CDX_LINGER_MAX             64                /* ... at most this many at once */
#define CDX_RATE_CONCURRENCY_RETRY_MS 50             /* retry hint when the concurrency cap is hit */
#define CDX_CURSOR_WINDOW_MS  (15 * 60 * 1000) /* list_ids cursor sealing key: one per window */
#define CDX_CURSOR_TTL_MS     (15 * 60 * 1000) /* a cursor expires this long after issue */
#define CDX_CURSOR_SKEW_MS    (60 * 1000)      /* issue times this far ahead (appliances' clocks) */
#define CDX_CONNECTIONS_MAX        65536
#define CDX_CONNECTIONS_DEFAULT    1024
#define CDX_OUTSTANDING_MAX        1024              /* requests per connection */
#define CDX_OUTSTANDING_DEFAULT    16
#define CDX_INFLIGHT_DEFAULT       (1ull << 30)      /* global in-flight request bytes */
#define CDX_INFLIGHT_MAX           (64ull << 30)
#define CDX_OUTPUT_HIGH_WATER_DEFAULT (16u << 20)    /* queued response bytes per connection */
#define CDX_HANDSHAKE_TIMEOUT_MS_DEFAULT 3000        /* a TLS 1.3 handshake is 1 RTT + ms of CPU */
#define CDX_HANDSHAKING_DEFAULT    256               /* connections still in their TLS handshake */
#define CDX_HANDSHAKING_PER_SOURCE_DEFAULT 32        /* ... from one source address */
#define CDX_ACCEPT_RESERVE_FDS     8  /* descriptors held back so that accepting never takes the
                                       * last ones (Redis reconnects, token, state files) */
#define CDX_FDS_BASE               64 /* stdio, listeners, loop, pool, logs, state files, token */
#define CDX_IDLE_TIMEOUT_S_DEFAULT 300
#define CDX_MIN_RECV_RATE_DEFAULT  1024              /* bytes/s while a frame is arriving */
#define CDX_WORKERS_MAX            256
#define CDX_CACHE_BYTES_DEFAULT    (256ull << 20)

/* ---- store ---- */
#define CDX_STORE_KEY_MAX        256                  /* bytes of a store key */
#define CDX_STORE_VALUE_MAX      (64u * 1024u * 1024u) /* one value or range */
#define CDX_STORE_REPLY_MAX      (512u * 1024u * 1024u) /* all values of one call */
#define CDX_STORE_BATCH_MAX      100000               /* keys in one call */
#define CDX_STORE_SCAN_COUNT     1000                 /* SCAN COUNT hint */
#define CDX_STORE_CONNECTIONS_MAX 64
#define CDX_STORE_PASSWORD_MAX   1024                 /* bytes of the Redis password_file */
#define CDX_REDIS_START_WAIT_S_DEFAULT 600           /* a LOADING Redis at daemon start */

/* ---- maintenance (engine/eng_maint.h) ---- */
#define CDX_MAINT_INTERVAL_MS_DEFAULT    1000    /* between scheduler passes */
#define CDX_PURGE_IDS_MAX                4096    /* unreferenced index ids one purge removes */
#define CDX_TOKEN_MARK_MS_DEFAULT        5000    /* [state] token_mark_ms: token rollback marks */
#define CDX_MAINT_INTERVAL_MS_MIN        10
#define CDX_MAINT_INTERVAL_MS_MAX        86400000
#define CDX_MAINT_COMPACT_SEGMENTS_DEFAULT 32    /* compact a cluster with more segments than this */
#define CDX_MAINT_COMPACT_SEGMENTS_MAX   65536
#define CDX_SWEEP_BATCH                  1024    /* headers read / keys deleted per store call */
#define CDX_GATE_WAIT_MS                 2000    /* longest a writer waits for a compaction */
#define CDX_GC_GRACE_MS_MIN              1000    /* [engine] gc_grace_ms floor (0 = the default) */
#define CDX_ROTATE_RETRY_MS              1000    /* a failed background key rotation runs again */
#define CDX_ROTATE_CHUNK                 256     /* contents re-sealed per store round trip */

/* ---- indexes and items ---- */
#define CDX_INDEX_NAME_MAX   128        /* [A-Za-z0-9_.-]{1,128} */
#define CDX_ITEM_ID_MAX      256        /* bytes, valid UTF-8, no NUL */
#define CDX_METADATA_MAX     (64u * 1024u) /* JSON object text */
#define CDX_CONTENTS_MAX     (16u * 1024u * 1024u)
#define CDX_DIM_MAX          4096
#define CDX_NLISTS_MAX       65536
#define CDX_TOPK_MAX         1000
#define CDX_TOPK_DEFAULT     10
#define CDX_PROBES_AUTO_MIN  8          /* automatic n_probes: at least this many clusters (or all) */
#define CDX_PROBES_AUTO_DIV  32         /* ... and at least n_clusters / this (and sqrt(n_clusters)) */
#define CDX_UPSERT_BATCH_MAX 100000     /* items in one upsert */
#define CDX_QUERY_BATCH_MAX  10000      /* query vectors in one request */
#define CDX_GET_BATCH_MAX    10000      /* ids in one get/delete */
#define CDX_LIST_PAGE_MAX    10000      /* ids per list_ids page */
#define CDX_JSON_DEPTH_MAX   32         /* nesting of metadata and filters */
#define CDX_FILTER_NODES_MAX 1024       /* operators + operands in one filter */
#define CDX_FILTER_TEXT_MAX  (64u * 1024u)
#define CDX_TRAIN_POINTS_PER_LIST 256   /* training sample cap = this x n_lists */
#define CDX_TRAIN_ITERS_DEFAULT   20
#define CDX_TRAIN_ITERS_MAX       1000
#define CDX_TRAIN_POINTS_PER_LIST_MAX 4096 /* TrainRequest.max_points_per_list */
#define CDX_LIST_PAGE_DEFAULT 1000      /* ids per list_ids page when the limit is 0 */
#define CDX_CURSOR_MAX        512       /* characters of a list_ids cursor (hex of a sealed record) */
#define CDX_KEK_NAME_MAX      40        /* [A-Za-z0-9_.-]{1,40}: label "cipherdex-kek-<name>" */
#define CDX_ENUM_TEXT_MAX     32        /* metric / index_type names on the wire */
#define CDX_TOKEN_MODEL_MAX   49        /* "<manufacturerID 32> <model 16>" of CK_TOKEN_INFO */
#define CDX_KEY_ATTRS_MAX     32        /* KeyProvenance.attributes */
#define CDX_WRITE_THREADS_MAX 4         /* threads one write spreads its sealing and sgemm over */
#define CDX_QUERY_THREADS_MAX 64        /* threads one batched query runs on */
#define CDX_WCACHE_ITEMS_MAX  (1u << 20) /* id-map entries an index's write cache keeps (~110 B each) */
#define CDX_READ_ATTEMPTS     4 /* reads of a page under a fresh head before ABORTED (a writer outran it) */

/* ---- wire (proto/: frames and request decoding) ---- */
#define CDX_FRAME_HDR_LEN        4                      /* big-endian body length */
#define CDX_FRAME_MAX_DEFAULT    (64u * 1024u * 1024u)  /* frame cap unless configured lower */
#define CDX_FRAME_MAX_LIMIT      (256u * 1024u * 1024u) /* highest cap a configuration may set */
/* Largest answer (get/query hits, as the engine counts them) built when no
 * smaller limit is configured; the daemon passes its max_frame_bytes. */
#define CDX_RESULT_MAX_DEFAULT   CDX_FRAME_MAX_LIMIT
#define CDX_FRAME_FIRST_INSECURE (64u * 1024u)          /* first frame on a plaintext connection */
#define CDX_FRAME_BUF_INITIAL    (64u * 1024u) /* a frame's buffer grows with the bytes received */
/*
 * Unpacking a frame may use at most FACTOR x frame + SLACK bytes of heap
 * (protobuf-c needs ~57x for a frame of empty repeated messages; upserts of
 * vectors of 16+ dimensions need under 4x: docs/WIRE.md). wire_unpack_budget()
 * computes it.
 */
#define CDX_UNPACK_BUDGET_FACTOR 4
#define CDX_UNPACK_BUDGET_SLACK  (1024u * 1024u)
#define CDX_STATUS_MESSAGE_MAX   1024  /* bytes of a Status.message the server sends */
#define CDX_VERSION_TEXT_MAX     64    /* HealthResponse.server_version */
#define CDX_HEALTH_WARNINGS_MAX  8     /* HealthResponse.warnings: one per condition, few exist */
#define CDX_HEALTHZ_PROBE_MS     1000  /* /healthz asks the token and the store at most this often */

/* ---- the cipherdex CLI (appliance/app_cli*.c; docs/CLI.md) ---- */
#define CDX_CLI_CELL_WIDTH      60  /* characters of a metadata/contents/vector table cell (--full: all) */
#define CDX_CLI_BATCH_DEFAULT   1000 /* upsert: items per batch (--batch) */
#define CDX_CLI_BATCH_BYTES_DEFAULT (16u * 1024u * 1024u) /* upsert: bytes per batch (--batch-bytes),
                                               * a quarter of the default frame cap */
#define CDX_CLI_BATCH_SLACK     (64u * 1024u) /* upsert: bytes kept under the frame cap for the
                                               * request's own fields and per-item overhead misestimates */
#define CDX_CLI_PROGRESS_MAX    4096 /* bytes of an upsert progress file */

/* ---- vector files (appliance/app_vecs: CLI, demo, bench) ---- */
#define CDX_VECS_DIM_MAX   65536u            /* dimensions per vector in a loaded file */
#define CDX_VECS_ELEMS_MAX ((size_t)1 << 32) /* n x d per file (16 GiB of float32) */

/* The audit trail (appliance/app_audit.h, docs/AUDIT.md) */
#define CDX_AUDIT_SYNC_INTERVAL_MS_DEFAULT 1000u /* a power loss may take this much of the trail */
#define CDX_AUDIT_CHECKPOINT_S_DEFAULT     60u   /* a cut tail is visible at this granularity */
#define CDX_AUDIT_ROTATE_BYTES_DEFAULT     (64ull << 20)
#define CDX_AUDIT_TAIL_MAX                 1000u /* records per audit_tail answer */
#define CDX_AUDIT_TAIL_DEFAULT             20u
#define CDX_AUDIT_LINE_MAX                 4096  /* one record line, with its newline */
/* ---- attestation (docs/ATTESTATION.md) ---- */
#define CDX_ATTEST_NONCE_MIN     8     /* bytes of the client's nonce, at least */
#define CDX_ATTEST_NONCE_MAX     64    /* and at most */
#define CDX_EVIDENCE_MAX         65536 /* bytes of a DER evidence statement, certificates included */
#define CDX_EVIDENCE_CLAIMS_MAX  128   /* claims in one statement */
#define CDX_ATTEST_CLOCK_SKEW_S  60    /* a verifier accepts timestamps this far in its future */
#define CDX_ATTEST_MAX_AGE_S     300   /* default freshness window of the verifiers */
#define CDX_ATTEST_SPKI_MAX      256   /* bytes of the attestation key's SPKI DER (P-256: 91) */
#define CDX_ATTEST_MECHS_MAX     32    /* CKA_ALLOWED_MECHANISMS entries reported */
#define CDX_ATTEST_LABEL         "cipherdex-attest" /* the attestation key pair's label */

#endif
