/*
 * rel_common.h - what the parts of the reliability harness share: the
 * fixtures (a token, a throwaway redis-server with appendfsync always, a PKI,
 * cipherdexd restarted at will), clients that wait for a restarted daemon, a
 * per-id model of acknowledged writes checked with get, and the results file.
 *
 * Values: every item has DIM floats {id number, tag >> 16, tag & 0xffff, 0.5}
 * with a tag unique per write, so a get tells exactly which write is visible
 * (tag 0 = absent) and whether the bytes are one that was ever sent.
 */
#ifndef REL_COMMON_H
#define REL_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "app_client.h"
#include "fx_daemon.h"
#include "fx_pki.h"
#include "fx_redis.h"
#include "fx_softhsm.h"
#include "fx_stack.h"

#define REL_DIM 4

typedef struct rel_env {
    bool full;  /* CDX_RELIABILITY_FULL=1 */
    fx_stack s; /* token, redis-server (appendfsync always), PKI, cipherdexd */
    uint64_t seed;
} rel_env;

extern rel_env R;

/* Daemon configuration: what a part adds to the stack's (fx_stack_conf; NULL fields add nothing).
 */
typedef fx_stack_conf rel_conf;

/* Fixtures for one part; 0 or -1. rel_teardown stops everything. */
int rel_setup(void);
void rel_teardown(void);

/* Write R.s.conf; start the daemon (fills R.s.addr, R.s.metrics); 0 or -1. Milliseconds taken in
 * *ms. */
int rel_write_conf(const rel_conf *c);
int rel_daemon_start(double *ms);

/* Monotonic milliseconds. */
double rel_now_ms(void);
/* Fault timing (never synchronisation): a pause of ms milliseconds. */
void rel_pause_ms(double ms);
/* xorshift on R.seed. */
uint64_t rel_rand(void);

/* A client of R.s.addr as admin (timeout_ms per I/O); NULL with the error in *err. */
app_client *rel_client(uint32_t timeout_ms, cdx_err *err);
/* Connect and answer a health call, retried until deadline_ms (rel_now_ms) passes. */
app_client *rel_client_wait(double deadline_ms);

cdx_err rel_create_index(app_client *c, const char *name);

/* The per-id model. */
typedef struct rel_id {
    uint32_t cur;  /* tag of the last acknowledged write (0: absent) */
    uint32_t pend; /* tag of a write of unknown outcome since (0: none) */
    bool uncertain;
    uint32_t *hist; /* every tag ever sent for this id */
    size_t nhist, caphist;
} rel_id;

void rel_hist_add(rel_id *m, uint32_t tag);
void rel_model_free(rel_id *m, size_t n);
/*
 * The outcome e of a write of tag to ids[0..n) into the model: acknowledged
 * (e == 0: each id's current tag, nothing pending; returns true) or of
 * unknown outcome (each id has tag pending; errs[e] counted; returns false).
 */
bool rel_model_write(rel_id *m, const uint32_t *ids, size_t n, uint32_t tag, cdx_err e,
                     unsigned long errs[128]);

/* Item id text of id number i. */
void rel_id_name(uint32_t i, char *out, size_t cap);

/* Build an upsert of ids[0..n) with tag (items and their storage in *b). */
typedef struct rel_batch {
    app_item *items;
    float *vecs;
    char (*names)[24];
    size_t n;
} rel_batch;
void rel_batch_make(rel_batch *b, const uint32_t *ids, size_t n, uint32_t tag);
void rel_batch_free(rel_batch *b);

/* Synchronous upsert of ids with tag; *version set on success. */
cdx_err rel_upsert(app_client *c, const char *index, const uint32_t *ids, size_t n, uint32_t tag,
                   uint64_t *version);

typedef struct rel_check {
    size_t checked, lost, stale, resurrected, corrupt, partial, applied_unknown;
    cdx_err err; /* the first get/describe/list error, CDX_OK if none */
} rel_check;

/*
 * Read every id of m[0..n) with get and compare with the model: an id must
 * show its last acknowledged tag, or its pending tag; pending tags must be all
 * visible or none (else partial++). Afterwards the model is what was seen
 * (pending resolved). Uncertain ids only have to show a tag ever sent.
 * Also compares describe's count and the list_ids count with the model's
 * (*count_mismatch = 1 when they differ; skipped while ids are uncertain).
 * Returns 0, or -1 when a call failed (r->err).
 */
int rel_verify(app_client *c, const char *index, rel_id *m, size_t n, rel_check *r,
               int *count_mismatch);

/* Append a "key=value\t..." line to $CDX_RELIABILITY_RESULTS (and print it). */
void rel_result(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* "CODE:n CODE:n" for a histogram of cdx_err codes (0..127). */
void rel_hist_text(const unsigned long *h, char *out, size_t cap);

#endif
