/* One request frame in, one response frame out (see app_dispatch.h). */
#include "app_dispatch.h"
#include "app_auditrec.h"
#include "app_attest.h"
#include "app_policy.h"
#include "app_ratelimit.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "cdx_hex.h"
#include "cdx_limits.h"
#include "cdx_log.h"
#include "cdx_time.h"
#include "eng_maint.h"
#include "hsm_provenance.h"
#include "hsm_subkey.h"
#include "wire_alloc.h"
#include "wire_msg.h"

#ifndef CDX_VERSION
#define CDX_VERSION "0.1.0"
#endif

typedef Cipherdex__V1__Request Req;
typedef Cipherdex__V1__Response Resp;

/* Everything a handler allocates for its response, freed after packing. */
typedef struct scratch {
    void *p[16];
    int n;
    eng_index_info *infos;
    eng_query_result *qres;
    eng_get_result *gres;
    char **ids;
    size_t *id_lens, nids;
    char *cursor;
    const char *principal;     /* the caller (audit lines) */
    size_t frame_len;          /* the request frame's length */
    app_budget *budget;        /* env->budget */
    _Atomic uint64_t reserved; /* held in budget until the answer is packed */
} scratch;

static void *keep(scratch *s, void *p)
{
    if (p && s->n < 16)
        s->p[s->n++] = p;
    return p;
}

static void scratch_free(scratch *s)
{
    for (int i = 0; i < s->n; i++)
        free(s->p[i]);
    free(s->infos);
    eng_query_result_free(s->qres);
    eng_get_result_free(s->gres);
    if (s->ids)
        eng_ids_free(s->ids, s->id_lens, s->nids);
    free(s->cursor);
}

static void *alloc(scratch *s, size_t n)
{
    return keep(s, calloc(1, n ? n : 1));
}

/*
 * Reserve n bytes of the in-flight budget for this request's working memory
 * (at most the whole budget); given back once the answer is packed.
 * Errors: CDX_ERR_BUSY when it does not fit now.
 */
static cdx_err reserve(const app_dispatch_env *env, scratch *s, uint64_t n)
{
    app_budget *b = env->budget;
    if (!b || n == 0)
        return CDX_OK;
    if (n > b->limit)
        n = b->limit;
    if (!app_budget_take(b, n))
        return cdx_fail(CDX_ERR_BUSY,
                        "the daemon's in-flight memory budget (inflight_bytes = %llu) cannot "
                        "take this request's working memory (about %llu bytes) now: retry later",
                        (unsigned long long)b->limit, (unsigned long long)n);
    atomic_fetch_add(&s->reserved, n);
    return CDX_OK;
}

/*
 * The engine's memory hook (eng_thread_mem_hook) while a handler runs: each
 * byte of the answer's hits is reserved twice (the hits, then the packed
 * frame) as the engine builds them. Called from query threads too.
 */
static bool mem_hook(void *arg, size_t n)
{
    scratch *s = arg;
    uint64_t need = 2 * (uint64_t)n;
    if (!app_budget_take(s->budget, need))
        return false;
    atomic_fetch_add(&s->reserved, need);
    return true;
}

static const char *key_source_name(eng_key_source k)
{
    return k == ENG_KEY_UNWRAP ? "unwrap" : k == ENG_KEY_ADOPT ? "adopt" : "generate";
}

/* Room for an IndexInfo's provenance, which fill_info points into (no allocation). */
typedef struct prov_buf {
    Cipherdex__V1__KeyProvenance p;
    Cipherdex__V1__KeyAttribute a[HSM_NATTRS];
    Cipherdex__V1__KeyAttribute *ap[HSM_NATTRS];
} prov_buf;

static const char *yes_no_na(unsigned bit, uint32_t attrs, uint32_t unknown)
{
    return unknown & bit ? "n/a" : attrs & bit ? "yes" : "no";
}

static void fill_prov(const eng_key_prov *in, prov_buf *b)
{
    Cipherdex__V1__KeyProvenance *p = &b->p;
    cipherdex__v1__key_provenance__init(p);
    p->origin = wire_str(eng_key_origin_name((eng_key_origin)in->origin));
    p->kek_name = wire_str(in->kek);
    p->token_serial = wire_str(in->serial);
    p->token_model = wire_str(in->token_model);
    p->copyable_not_enforced = (in->flags & ENG_PROV_COPYABLE_NOT_ENFORCED) != 0;
    if (in->origin == ENG_ORIGIN_UNKNOWN) {
        p->born_on_token = wire_str("n/a");
        return;
    }
    hsm_key_facts f = {.attrs = in->attrs, .unknown = in->unknown};
    int born = hsm_facts_born_on_token(&f);
    p->born_on_token = wire_str(born > 0 ? "yes" : born == 0 ? "no" : "n/a");
    for (unsigned i = 0; i < HSM_NATTRS; i++) {
        cipherdex__v1__key_attribute__init(&b->a[i]);
        b->a[i].name = wire_str(hsm_attr_name(1u << i));
        b->a[i].value = wire_str(yes_no_na(1u << i, in->attrs, in->unknown));
        b->ap[i] = &b->a[i];
    }
    p->n_attributes = HSM_NATTRS;
    p->attributes = b->ap;
}

static void fill_info(const eng_index_info *in, Cipherdex__V1__IndexInfo *out, prov_buf *pb)
{
    cipherdex__v1__index_info__init(out);
    out->name = wire_str(in->name);
    out->state = wire_str(in->state);
    out->id = wire_bin(in->id, CDX_ID_LEN);
    out->dimension = in->dimension;
    out->metric = wire_str(eng_metric_name(in->metric));
    out->index_type = wire_str(eng_index_type_name(in->type));
    out->n_lists = in->n_lists;
    out->n_clusters = in->n_clusters;
    out->count = in->count;
    out->version = in->version;
    out->kcv = wire_bin(in->kcv, CDX_KCV_LEN);
    out->key_source = wire_str(key_source_name(in->key_source));
    out->key_owned = in->owned;
    out->segments = in->segments;
    out->created_ms = in->created_ms;
    out->dead_rows = in->dead_rows;
    out->segment_bytes = in->segment_bytes;
    out->records_waiting = in->records_waiting;
    out->retired_bytes = in->retired_bytes;
    out->last_compaction_ms = in->last_compaction_ms;
    out->last_sweep_ms = in->last_sweep_ms;
    out->status = wire_str(in->status[0] ? in->status : "ok");
    out->status_message = wire_str(in->status_message);
    fill_prov(&in->prov, pb);
    out->key_provenance = &pb->p;
    out->key_epoch = in->key_epoch;
    out->min_epoch = in->min_epoch;
    out->rotate_to = in->rotate_to;
    out->rotate_done = in->rotate_done;
    out->rotate_total = in->rotate_total;
    out->rotate_started_ms = in->rotate_started_ms;
    out->rotated_ms = in->rotated_ms;
    out->key_generation = in->key_gen;
    out->new_key_generation = in->new_key_gen;
    if (in->new_key_gen)
        out->new_key_kcv = wire_bin(in->new_key_kcv, CDX_KCV_LEN);
}

/* Ids of a request as the engine wants them. */
static cdx_err id_arrays(scratch *s, const ProtobufCBinaryData *ids, size_t n, const char ***out,
                         size_t **lens)
{
    *out = alloc(s, n * sizeof(char *));
    *lens = alloc(s, n * sizeof(size_t));
    if (!*out || !*lens)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    for (size_t i = 0; i < n; i++) {
        (*out)[i] = wire_text(ids[i]);
        (*lens)[i] = ids[i].len;
    }
    return CDX_OK;
}

static cdx_err do_health(const app_dispatch_env *env, const Req *q, Resp *r, scratch *s)
{
    (void)q;
    Cipherdex__V1__HealthResponse *h = alloc(s, sizeof(*h));
    app_wire_health *wh = alloc(s, sizeof(*wh));
    ProtobufCBinaryData *warn = alloc(s, CDX_HEALTH_WARNINGS_MAX * sizeof(*warn));
    if (!h || !wh || !warn)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    cipherdex__v1__health_response__init(h);
    wh->token_ok = wh->store_ok = true;
    if (env->health)
        env->health(env->health_arg, wh);
    bool tok = wh->token_ok, store = wh->store_ok;
    h->token_ok = tok;
    h->store_ok = store;
    h->status = wire_str(wh->n_warnings ? "degraded" : "ok");
    /* The detail (what is wrong with the appliance) is for operators and appliance admins;
     * everyone else gets the verdict (docs/POLICY.md). */
    bool detail = app_policy_allows(env->policy, s->principal, POL_NEED_OPERATOR, NULL);
    for (size_t i = 0; detail && i < wh->n_warnings && i < CDX_HEALTH_WARNINGS_MAX; i++)
        if (wh->warnings[i][0])
            warn[h->n_warnings++] = wire_str(wh->warnings[i]);
    h->warnings = warn;
    h->indexes_in_rollback = detail ? wh->indexes_in_rollback : 0;
    h->max_frame_bytes = env->cfg ? env->cfg->max_frame_bytes : CDX_FRAME_MAX_DEFAULT;
    h->server_version = wire_str(CDX_VERSION);
    int64_t now = cdx_mono_ms();
    h->uptime_s = now > env->started_ms ? (uint64_t)(now - env->started_ms) / 1000 : 0;
    r->body_case = CIPHERDEX__V1__RESPONSE__BODY_HEALTH;
    r->health = h;
    if (!tok || !store)
        return cdx_fail(CDX_ERR_UNAVAILABLE, "%s%s%s", tok ? "" : "the token does not answer",
                        !tok && !store ? "; " : "", store ? "" : "the store does not answer");
    return CDX_OK;
}

static cdx_err do_create(const app_dispatch_env *env, const Req *q, Resp *r, scratch *s)
{
    const Cipherdex__V1__CreateIndexRequest *c = q->create_index;
    cdx_err err;
    eng_create ec = {.name = wire_text(c->name), .dimension = c->dimension, .n_lists = c->n_lists};
    ec.metric = eng_metric_parse(wire_text(c->metric));
    ec.type = c->index_type.len ? eng_index_type_parse(wire_text(c->index_type)) : ENG_IVFFLAT;
    if (!ec.metric)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                        "metric `%s`: use euclidean, "
                        "squared_euclidean, cosine or inner_product",
                        wire_text(c->metric));
    if (!ec.type)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "index_type `%s`: use ivfflat or ivfsq8",
                        wire_text(c->index_type));
    switch (c->key_source_case) {
    case CIPHERDEX__V1__CREATE_INDEX_REQUEST__KEY_SOURCE_UNWRAP_KEY:
        ec.key_source = ENG_KEY_UNWRAP;
        ec.kek_name = wire_text(c->unwrap_key->kek_name);
        ec.wrapped = c->unwrap_key->wrapped_key.data;
        ec.wrapped_len = c->unwrap_key->wrapped_key.len;
        break;
    case CIPHERDEX__V1__CREATE_INDEX_REQUEST__KEY_SOURCE_ADOPT_KEY:
        if (c->adopt_key->key_id.len != CDX_ID_LEN)
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "adopt_key.key_id must be %d bytes, got %zu",
                            CDX_ID_LEN, c->adopt_key->key_id.len);
        ec.key_source = ENG_KEY_ADOPT;
        memcpy(ec.adopt_id, c->adopt_key->key_id.data, CDX_ID_LEN);
        break;
    case CIPHERDEX__V1__CREATE_INDEX_REQUEST__KEY_SOURCE_IMPORT_KEY:
        ec.key_source = ENG_KEY_IMPORT;
        ec.import_key = c->import_key->key.data; /* 32 bytes: the wire rule checked it */
        break;
    default:
        ec.key_source = ENG_KEY_GENERATE;
    }
    eng_index_info *info = alloc(s, sizeof(*info));
    Cipherdex__V1__CreateIndexResponse *cr = alloc(s, sizeof(*cr));
    Cipherdex__V1__IndexInfo *ii = alloc(s, sizeof(*ii));
    prov_buf *pb = alloc(s, sizeof(*pb));
    if (!info || !cr || !ii || !pb)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    if ((err = eng_index_create(env->engine, &ec, info)))
        return err;
    cipherdex__v1__create_index_response__init(cr);
    fill_info(info, ii, pb);
    cr->index = ii;
    r->body_case = CIPHERDEX__V1__RESPONSE__BODY_CREATE_INDEX;
    r->create_index = cr;
    return CDX_OK;
}

static cdx_err do_describe(const app_dispatch_env *env, const Req *q, Resp *r, scratch *s)
{
    eng_index_info *info = alloc(s, sizeof(*info));
    Cipherdex__V1__DescribeIndexResponse *dr = alloc(s, sizeof(*dr));
    Cipherdex__V1__IndexInfo *ii = alloc(s, sizeof(*ii));
    prov_buf *pb = alloc(s, sizeof(*pb));
    if (!info || !dr || !ii || !pb)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    cdx_err err = eng_index_describe(env->engine, wire_text(q->describe_index->name), info);
    if (err)
        return err;
    cipherdex__v1__describe_index_response__init(dr);
    fill_info(info, ii, pb);
    dr->index = ii;
    r->body_case = CIPHERDEX__V1__RESPONSE__BODY_DESCRIBE_INDEX;
    r->describe_index = dr;
    return CDX_OK;
}

static cdx_err do_list_indexes(const app_dispatch_env *env, const Req *q, Resp *r, scratch *s)
{
    (void)q;
    size_t n = 0, unreadable = 0;
    cdx_err err = eng_index_list_all(env->engine, &s->infos, &n, &unreadable);
    if (err)
        return err;
    /* Only what the caller may see; the unreadable count is appliance-wide: operators only. */
    size_t kept = 0;
    for (size_t i = 0; i < n; i++)
        if (app_policy_sees(env->policy, s->principal, s->infos[i].name))
            s->infos[kept++] = s->infos[i];
    n = kept;
    if (!app_policy_allows(env->policy, s->principal, POL_NEED_OPERATOR, NULL))
        unreadable = 0;
    Cipherdex__V1__ListIndexesResponse *lr = alloc(s, sizeof(*lr));
    Cipherdex__V1__IndexInfo *arr = alloc(s, n * sizeof(*arr));
    Cipherdex__V1__IndexInfo **ptrs = alloc(s, n * sizeof(*ptrs));
    prov_buf *pb = alloc(s, n * sizeof(*pb));
    if (!lr || !arr || !ptrs || !pb)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    cipherdex__v1__list_indexes_response__init(lr);
    for (size_t i = 0; i < n; i++) {
        fill_info(&s->infos[i], &arr[i], &pb[i]);
        ptrs[i] = &arr[i];
    }
    lr->n_indexes = n;
    lr->indexes = ptrs;
    lr->unreadable_entries = (uint32_t)unreadable;
    r->body_case = CIPHERDEX__V1__RESPONSE__BODY_LIST_INDEXES;
    r->list_indexes = lr;
    return CDX_OK;
}

/*
 * What of index key `info` (its current generation) remains once the appliance is done with
 * it, and how to destroy it; "" when nothing does (a key generated for the index).
 */
static void key_remains(const eng_index_info *info, char *out, size_t cap)
{
    char idhex[2 * CDX_ID_LEN + 1], gen[32] = "";
    cdx_hex_encode(info->id, CDX_ID_LEN, idhex);
    if (info->key_gen)
        snprintf(gen, sizeof(gen), " --gen %u", info->key_gen);
    out[0] = '\0';
    if (!info->owned)
        snprintf(out, cap,
                 "the adopted key stays on the token; destroy it with `cipherdex-hsm index "
                 "destroy --id %s%s --yes`",
                 idhex, gen);
    else if (info->prov.origin == ENG_ORIGIN_UNWRAPPED)
        snprintf(out, cap,
                 "the token copy is destroyed; the wrapped copy under KEK %s is wherever "
                 "your KMS keeps it: destroy it there",
                 info->prov.kek[0] ? info->prov.kek : "?");
    else if (info->prov.origin == ENG_ORIGIN_IMPORTED)
        snprintf(out, cap,
                 "the token copy is destroyed; the key was imported in plaintext: destroy "
                 "every copy of the key file it came from");
}

static cdx_err do_delete_index(const app_dispatch_env *env, const Req *q, Resp *r, scratch *s)
{
    const Cipherdex__V1__DeleteIndexRequest *d = q->delete_index;
    cdx_err err;
    if (d->confirm_id.len && d->confirm_id.len != CDX_ID_LEN)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                        "confirm_id must be the %d-byte index id, got "
                        "%zu bytes",
                        CDX_ID_LEN, d->confirm_id.len);
    if (d->confirm_id.len != CDX_ID_LEN)
        return cdx_fail(CDX_ERR_FAILED_PRECONDITION,
                        "delete_index needs confirm_id: the index id (%d bytes, from "
                        "describe_index)",
                        CDX_ID_LEN);
    /* What the key is, before it goes: the answer says whether it was crypto-shredded. */
    eng_index_info *info = alloc(s, sizeof(*info));
    char *remains = alloc(s, CDX_STATUS_MESSAGE_MAX / 2);
    Cipherdex__V1__DeleteIndexResponse *dr = alloc(s, sizeof(*dr));
    if (!info || !remains || !dr)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    bool known = eng_index_describe(env->engine, wire_text(d->name), info) == CDX_OK;
    if ((err = eng_index_delete(env->engine, wire_text(d->name), d->confirm_id.data)))
        return err;
    cipherdex__v1__delete_index_response__init(dr);
    if (known) {
        dr->key_destroyed = info->owned;
        key_remains(info, remains, CDX_STATUS_MESSAGE_MAX / 2);
    }
    dr->key_remains = wire_str(remains);
    r->body_case = CIPHERDEX__V1__RESPONSE__BODY_DELETE_INDEX;
    r->delete_index = dr;
    return CDX_OK;
}

static cdx_err do_accept_rollback(const app_dispatch_env *env, const Req *q, Resp *r, scratch *s)
{
    const Cipherdex__V1__AcceptRollbackRequest *a = q->accept_rollback;
    if (!a->confirm_version)
        return cdx_fail(CDX_ERR_FAILED_PRECONDITION,
                        "accept_rollback needs confirm_version: the store's head version of the "
                        "index (list_indexes shows it), so that exactly that state is accepted");
    Cipherdex__V1__AcceptRollbackResponse *ar = alloc(s, sizeof(*ar));
    if (!ar)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    cipherdex__v1__accept_rollback_response__init(ar);
    cdx_err err = eng_accept_rollback(env->engine, wire_text(a->index), a->confirm_version,
                                      &ar->previous_version, &ar->version);
    /* The audit line: who accepted what. Index names never go to the log; the engine logs
     * the index id with the same versions (eng_rollback_accepted). */
    cdx_log(CDX_LOG_WARN, "admin_accept_rollback",
            "principal=\"%s\" confirm_version=%llu previous=%llu accepted=%llu code=%s",
            s->principal ? s->principal : "", (unsigned long long)a->confirm_version,
            (unsigned long long)ar->previous_version, (unsigned long long)ar->version,
            cdx_err_name(err));
    if (err)
        return err;
    r->body_case = CIPHERDEX__V1__RESPONSE__BODY_ACCEPT_ROLLBACK;
    r->accept_rollback = ar;
    return CDX_OK;
}

static cdx_err do_train(const app_dispatch_env *env, const Req *q, Resp *r, scratch *s)
{
    const Cipherdex__V1__TrainRequest *t = q->train;
    cdx_err err;
    if (!(t->tolerance >= 0) || t->tolerance >= 1)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "tolerance must be in [0, 1) (0: default)");
    eng_train_opts o = {.n_lists = t->n_lists,
                        .max_iters = t->max_iters,
                        .tolerance = t->tolerance,
                        .seed = t->seed,
                        .max_points_per_list = t->max_points_per_list};
    Cipherdex__V1__TrainResponse *tr = alloc(s, sizeof(*tr));
    if (!tr)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    cipherdex__v1__train_response__init(tr);
    if ((err = eng_train(env->engine, wire_text(t->index), &o, &tr->version)))
        return err;
    r->body_case = CIPHERDEX__V1__RESPONSE__BODY_TRAIN;
    r->train = tr;
    return CDX_OK;
}

static cdx_err do_upsert(const app_dispatch_env *env, const Req *q, Resp *r, scratch *s)
{
    const Cipherdex__V1__UpsertRequest *u = q->upsert;
    uint32_t dim = 0;
    cdx_err err = eng_index_dimension(env->engine, wire_text(u->index), &dim);
    if (err)
        return err;
    eng_item *items = alloc(s, u->n_items * sizeof(*items));
    Cipherdex__V1__UpsertResponse *ur = alloc(s, sizeof(*ur));
    if (!items || !ur)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    for (size_t i = 0; i < u->n_items; i++) {
        const Cipherdex__V1__Item *it = u->items[i];
        if (it->n_vector != dim)
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                            "item %zu (%s): vector has %zu floats, the index has dimension %u", i,
                            wire_text(it->id), it->n_vector, dim);
        items[i] = (eng_item){.id = wire_text(it->id),
                              .id_len = it->id.len,
                              .vector = it->vector,
                              .metadata = it->metadata.len ? wire_text(it->metadata) : NULL,
                              .metadata_len = it->metadata.len,
                              .contents = it->contents.len ? it->contents.data : NULL,
                              .contents_len = it->contents.len};
    }
    cipherdex__v1__upsert_response__init(ur);
    /* The engine seals a copy of every item (records, segment blocks) while it writes. */
    if ((err = reserve(env, s, s->frame_len)))
        return err;
    if ((err = eng_upsert(env->engine, wire_text(u->index), items, u->n_items, &ur->version)))
        return err;
    ur->upserted = u->n_items;
    r->body_case = CIPHERDEX__V1__RESPONSE__BODY_UPSERT;
    r->upsert = ur;
    return CDX_OK;
}

static cdx_err do_query(const app_dispatch_env *env, const Req *q, Resp *r, scratch *s)
{
    const Cipherdex__V1__QueryRequest *qr = q->query;
    uint32_t dim = 0;
    cdx_err err = eng_index_dimension(env->engine, wire_text(qr->index), &dim);
    if (err)
        return err;
    if (qr->n_vectors == 0 || qr->n_vectors % dim)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                        "vectors holds %zu floats: one or more vectors of the index's dimension "
                        "%u, row-major",
                        qr->n_vectors, dim);
    size_t nq = qr->n_vectors / dim;
    if (nq > CDX_QUERY_BATCH_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "%zu query vectors; at most %d per request", nq,
                        CDX_QUERY_BATCH_MAX);
    unsigned want = ENG_WANT_DISTANCE | (qr->include_vectors ? ENG_WANT_VECTOR : 0) |
                    (qr->include_metadata ? ENG_WANT_METADATA : 0) |
                    (qr->include_contents ? ENG_WANT_CONTENTS : 0);
    eng_query eq = {.vectors = qr->vectors,
                    .nq = nq,
                    .top_k = qr->top_k,
                    .n_probes = qr->n_probes,
                    .max_probes = qr->max_probes,
                    .filter = qr->filter.len ? wire_text(qr->filter) : NULL,
                    .filter_len = qr->filter.len,
                    .want = want,
                    .min_version = qr->min_version};
    if ((err = eng_query_run(env->engine, wire_text(qr->index), &eq, &s->qres)))
        return err;
    eng_query_result *res = s->qres;
    size_t total = 0;
    for (size_t i = 0; i < nq; i++)
        total += res->n[i];
    Cipherdex__V1__QueryResponse *out = alloc(s, sizeof(*out));
    Cipherdex__V1__QueryResult *rs = alloc(s, nq * sizeof(*rs));
    Cipherdex__V1__QueryResult **rp = alloc(s, nq * sizeof(*rp));
    ProtobufCBinaryData *ids = alloc(s, total * sizeof(*ids));
    float *dists = alloc(s, total * sizeof(float));
    float *vecs = qr->include_vectors ? alloc(s, total * dim * sizeof(float)) : NULL;
    ProtobufCBinaryData *meta = qr->include_metadata ? alloc(s, total * sizeof(*meta)) : NULL;
    ProtobufCBinaryData *cont = qr->include_contents ? alloc(s, total * sizeof(*cont)) : NULL;
    if (!out || !rs || !rp || !ids || !dists || (qr->include_vectors && !vecs) ||
        (qr->include_metadata && !meta) || (qr->include_contents && !cont))
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    cipherdex__v1__query_response__init(out);
    size_t at = 0;
    for (size_t i = 0; i < nq; i++) {
        Cipherdex__V1__QueryResult *x = &rs[i];
        cipherdex__v1__query_result__init(x);
        size_t n = res->n[i];
        x->n_ids = x->n_distances = n;
        x->ids = ids + at;
        x->distances = dists + at;
        for (size_t j = 0; j < n; j++) {
            const eng_hit *h = &res->hits[i][j];
            ids[at + j] = wire_bin(h->id, h->id_len);
            dists[at + j] = h->distance;
            if (vecs) {
                if (h->vector)
                    memcpy(vecs + (at + j) * dim, h->vector, dim * sizeof(float));
            }
            if (meta)
                meta[at + j] = wire_bin(h->metadata ? h->metadata : "", h->metadata_len);
            if (cont)
                cont[at + j] = wire_bin(h->contents, h->contents_len);
        }
        if (vecs) {
            x->n_vectors = n * dim;
            x->vectors = vecs + at * dim;
        }
        if (meta) {
            x->n_metadata = n;
            x->metadata = meta + at;
        }
        if (cont) {
            x->n_contents = n;
            x->contents = cont + at;
        }
        rp[i] = x;
        at += n;
    }
    out->n_results = nq;
    out->results = rp;
    out->version = res->version;
    out->n_probes = res->n_probes;
    r->body_case = CIPHERDEX__V1__RESPONSE__BODY_QUERY;
    r->query = out;
    return CDX_OK;
}

static cdx_err do_get(const app_dispatch_env *env, const Req *q, Resp *r, scratch *s)
{
    const Cipherdex__V1__GetRequest *g = q->get;
    const char **ids;
    size_t *lens;
    cdx_err err = id_arrays(s, g->ids, g->n_ids, &ids, &lens);
    if (err)
        return err;
    uint32_t dim = 0;
    if (g->include_vectors && (err = eng_index_dimension(env->engine, wire_text(g->index), &dim)))
        return err;
    unsigned want = (g->include_vectors ? ENG_WANT_VECTOR : 0) |
                    (g->include_metadata ? ENG_WANT_METADATA : 0) |
                    (g->include_contents ? ENG_WANT_CONTENTS : 0);
    if ((err = eng_get(env->engine, wire_text(g->index), ids, lens, g->n_ids, want, g->min_version,
                       &s->gres)))
        return err;
    eng_get_result *res = s->gres;
    Cipherdex__V1__GetResponse *out = alloc(s, sizeof(*out));
    Cipherdex__V1__Item *items = alloc(s, res->n * sizeof(*items));
    Cipherdex__V1__Item **ip = alloc(s, res->n * sizeof(*ip));
    protobuf_c_boolean *found = alloc(s, res->n * sizeof(*found));
    if (!out || !items || !ip || !found)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    cipherdex__v1__get_response__init(out);
    for (size_t i = 0; i < res->n; i++) {
        Cipherdex__V1__Item *it = &items[i];
        cipherdex__v1__item__init(it);
        it->id = g->ids[i];
        found[i] = res->found[i];
        if (res->found[i]) {
            const eng_hit *h = &res->hits[i];
            if (h->vector && dim) {
                it->n_vector = dim;
                it->vector = h->vector;
            }
            if (h->metadata)
                it->metadata = wire_bin(h->metadata, h->metadata_len);
            if (h->contents)
                it->contents = wire_bin(h->contents, h->contents_len);
        }
        ip[i] = it;
    }
    out->n_items = out->n_found = res->n;
    out->items = ip;
    out->found = found;
    out->version = res->version;
    r->body_case = CIPHERDEX__V1__RESPONSE__BODY_GET;
    r->get = out;
    return CDX_OK;
}

static cdx_err do_delete(const app_dispatch_env *env, const Req *q, Resp *r, scratch *s)
{
    const Cipherdex__V1__DeleteRequest *d = q->delete_;
    const char **ids;
    size_t *lens;
    cdx_err err = id_arrays(s, d->ids, d->n_ids, &ids, &lens);
    if (err)
        return err;
    Cipherdex__V1__DeleteResponse *out = alloc(s, sizeof(*out));
    if (!out)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    cipherdex__v1__delete_response__init(out);
    if ((err = eng_delete(env->engine, wire_text(d->index), ids, lens, d->n_ids, &out->deleted,
                          &out->version)))
        return err;
    r->body_case = CIPHERDEX__V1__RESPONSE__BODY_DELETE;
    r->delete_ = out;
    return CDX_OK;
}

static cdx_err do_list_ids(const app_dispatch_env *env, const Req *q, Resp *r, scratch *s)
{
    const Cipherdex__V1__ListIdsRequest *l = q->list_ids;
    /* Cursors bound to the caller and the index, expiring, under a rotating key (review L6). */
    const char *who = s->principal ? s->principal : "";
    cdx_err err = eng_list_ids_for(env->engine, wire_text(l->index), who, strlen(who), 0,
                                   l->cursor.len ? wire_text(l->cursor) : NULL, l->limit, &s->ids,
                                   &s->id_lens, &s->nids, &s->cursor);
    if (err)
        return err;
    Cipherdex__V1__ListIdsResponse *out = alloc(s, sizeof(*out));
    ProtobufCBinaryData *ids = alloc(s, s->nids * sizeof(*ids));
    if (!out || !ids)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    cipherdex__v1__list_ids_response__init(out);
    for (size_t i = 0; i < s->nids; i++)
        ids[i] = wire_bin(s->ids[i], s->id_lens[i]);
    out->n_ids = s->nids;
    out->ids = ids;
    out->next_cursor = wire_str(s->cursor ? s->cursor : "");
    r->body_case = CIPHERDEX__V1__RESPONSE__BODY_LIST_IDS;
    r->list_ids = out;
    return CDX_OK;
}

/* attest: a statement about the index's key, signed on the token (docs/ATTESTATION.md). */
static cdx_err do_attest(const app_dispatch_env *env, const Req *q, Resp *r, scratch *s)
{
    const Cipherdex__V1__AttestRequest *a = q->attest;
    if (!env->attest_key || !env->custody)
        return cdx_fail(CDX_ERR_FAILED_PRECONDITION,
                        "this appliance has no attestation key: an administrator creates it with "
                        "`cipherdex-hsm attest-key create` and restarts cipherdexd "
                        "(docs/ATTESTATION.md)");
    eng_index_info *info = alloc(s, sizeof(*info));
    Cipherdex__V1__AttestResponse *out = alloc(s, sizeof(*out));
    if (!info || !out)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    cdx_err err = eng_index_describe(env->engine, wire_text(a->index), info);
    if (err)
        return err;
    if (strcmp(info->state, "ready"))
        return cdx_fail(CDX_ERR_FAILED_PRECONDITION,
                        "index `%s` is %s, not ready: its key cannot be attested now", info->name,
                        info->state);
    uint8_t *der = NULL, *kid = alloc(s, 32);
    size_t der_len = 0;
    unsigned char *spki = NULL;
    int spki_len = i2d_PUBKEY(env->attest_key, &spki);
    if (!kid || spki_len <= 0) {
        OPENSSL_free(spki);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    uint8_t *spki_copy = keep(s, malloc((size_t)spki_len));
    if (spki_copy)
        memcpy(spki_copy, spki, (size_t)spki_len);
    SHA256(spki, (size_t)spki_len, kid);
    OPENSSL_free(spki);
    if (!spki_copy)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    err = app_attest_make(env->custody, env->attest_key, info, a->nonce.data, a->nonce.len,
                          (int64_t)time(NULL), env->attest_certs, env->attest_certs_len, &der,
                          &der_len);
    if (err)
        return err;
    keep(s, der);
    cipherdex__v1__attest_response__init(out);
    out->evidence = wire_bin(der, der_len);
    out->attestation_public_key = wire_bin(spki_copy, (size_t)spki_len);
    out->attestation_key_id = wire_bin(kid, 32);
    r->body_case = CIPHERDEX__V1__RESPONSE__BODY_ATTEST;
    r->attest = out;
    return CDX_OK;
}

/* ---- the operations table: the one place that says who may do what ---- */

/* purge: remove what no live index owns (docs/ADMIN.md, "Purge"); appliance admins only. */
static cdx_err do_purge(const app_dispatch_env *env, const Req *q, Resp *r, scratch *s)
{
    (void)q;
    Cipherdex__V1__PurgeResponse *pr = alloc(s, sizeof(*pr));
    if (!pr)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    cipherdex__v1__purge_response__init(pr);
    uint64_t removed = 0;
    cdx_err err = eng_purge(env->engine, &removed);
    if (err)
        return err;
    pr->removed = removed;
    r->body_case = CIPHERDEX__V1__RESPONSE__BODY_PURGE;
    r->purge = pr;
    return CDX_OK;
}

/* compact: merge segments and sweep now (docs/ADMIN.md, "Store maintenance"). */
static cdx_err do_compact(const app_dispatch_env *env, const Req *q, Resp *r, scratch *s)
{
    Cipherdex__V1__CompactResponse *cr = alloc(s, sizeof(*cr));
    if (!cr)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    cipherdex__v1__compact_response__init(cr);
    eng_maint_policy pol = {.compact_segments = 1}; /* every cluster with more than one */
    eng_maint_report rep;
    memset(&rep, 0, sizeof(rep));
    cdx_err err = eng_maintain(env->engine, wire_text(q->compact->index), &pol, &rep);
    if (err)
        return err;
    if (rep.compact_lost)
        return cdx_fail(CDX_ERR_ABORTED, "concurrent writers won every compaction attempt; "
                                         "retry when the index is quieter");
    cr->clusters_compacted = rep.clusters_compacted;
    cr->version = rep.compact_version;
    cr->records_deleted = rep.sweep.deleted;
    cr->records_waiting = rep.sweep.waiting;
    cr->retired_bytes = rep.sweep.waiting_bytes;
    cr->next_delete_ms = rep.sweep.next_ms;
    r->body_case = CIPHERDEX__V1__RESPONSE__BODY_COMPACT;
    r->compact = cr;
    return CDX_OK;
}

/* rotate: start a key rotation; with wait, run it here (docs/ROTATION.md). */
static cdx_err do_rotate(const app_dispatch_env *env, const Req *q, Resp *r, scratch *s)
{
    const char *name = wire_text(q->rotate->index);
    Cipherdex__V1__RotateResponse *rr = alloc(s, sizeof(*rr));
    Cipherdex__V1__IndexInfo *ii = alloc(s, sizeof(*ii));
    eng_index_info *info = alloc(s, sizeof(*info));
    prov_buf *pb = alloc(s, sizeof(*pb));
    char *remains = alloc(s, CDX_STATUS_MESSAGE_MAX / 2);
    if (!rr || !ii || !info || !pb || !remains)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    cipherdex__v1__rotate_response__init(rr);
    cdx_err err = eng_rotate_key(env->engine, name, q->rotate->new_key, info);
    if (err)
        return err;
    /* Pending, the catalog still names the old key: what becomes of it when the switch comes. */
    remains[0] = '\0';
    if (q->rotate->new_key && info->new_key_gen)
        key_remains(info, remains, CDX_STATUS_MESSAGE_MAX / 2);
    rr->key_remains = wire_str(remains);
    if (q->rotate->wait) {
        /* The epochs of the rotation started or resumed (the background may finish it first:
         * then the run finds nothing pending and version stays 0). */
        uint32_t from = info->rotate_to ? info->key_epoch : info->key_epoch - 1;
        uint32_t to = info->rotate_to ? info->rotate_to : info->key_epoch;
        eng_rotate_report rep;
        if ((err = eng_rotate_run(env->engine, name, &rep)) ||
            (err = eng_index_describe(env->engine, name, info)))
            return err;
        rr->from_epoch = rep.to ? rep.from : from;
        rr->to_epoch = rep.to ? rep.to : to;
        rr->items = rep.items;
        rr->contents = rep.contents;
        rr->version = rep.version;
        rr->ms = rep.ms;
        rr->attempts = rep.attempts;
    }
    fill_info(info, ii, pb);
    rr->index = ii;
    r->body_case = CIPHERDEX__V1__RESPONSE__BODY_ROTATE;
    r->rotate = rr;
    return CDX_OK;
}

/* The audit trail's last records and state, for operators (docs/AUDIT.md). */
static cdx_err do_audit_tail(const app_dispatch_env *env, const Req *q, Resp *r, scratch *s)
{
    Cipherdex__V1__AuditTailResponse *ar = alloc(s, sizeof(*ar));
    if (!ar)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    cipherdex__v1__audit_tail_response__init(ar);
    app_audit_stats st;
    app_audit_stats_get(env->audit, &st);
    char *err_text = alloc(s, sizeof(st.error));
    if (!err_text)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    snprintf(err_text, sizeof(st.error), "%s", st.error);
    ar->state = wire_str(env->audit ? app_audit_state_name(st.state) : "off");
    ar->last_seq = st.last_seq;
    ar->lost = st.lost;
    ar->error = wire_str(err_text);
    if (env->audit) {
        size_t n = q->audit_tail->limit ? q->audit_tail->limit : CDX_AUDIT_TAIL_DEFAULT, len = 0;
        char *text = NULL;
        cdx_err err = app_audit_tail(env->audit, n, &text, &len);
        if (err)
            return err;
        keep(s, text);
        size_t lines = 0;
        for (size_t i = 0; i < len; i++)
            lines += text[i] == '\n';
        ProtobufCBinaryData *recs = lines ? alloc(s, lines * sizeof(*recs)) : NULL;
        if (lines && !recs)
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        for (size_t i = 0, at = 0; i < len && ar->n_records < lines; i++)
            if (text[i] == '\n') {
                recs[ar->n_records++] = (ProtobufCBinaryData){i - at, (uint8_t *)text + at};
                at = i + 1;
            }
        ar->records = recs;
    }
    r->body_case = CIPHERDEX__V1__RESPONSE__BODY_AUDIT_TAIL;
    r->audit_tail = ar;
    return CDX_OK;
}

/*
 * What an operation needs from the caller's principal (pol_need): none
 * (health; the index list, filtered to what the caller may see), read,
 * write, admin or attest on the index it names.
 */
#define NEED_NONE     POL_NEED_NONE
#define NEED_READ     POL_NEED_READ
#define NEED_WRITE    POL_NEED_WRITE
#define NEED_ADMIN    POL_NEED_ADMIN
#define NEED_ATTEST   POL_NEED_ATTEST
#define NEED_OPERATOR POL_NEED_OPERATOR /* appliance-wide: operators and admins */
typedef pol_need need;

typedef cdx_err (*handler)(const app_dispatch_env *env, const Req *q, Resp *r, scratch *s);

/* The index an operation touches (NULL: the catalog, or nothing). */
typedef const char *(*touches)(const Req *q);

static const char *index_none(const Req *q)
{
    (void)q;
    return NULL;
}
static const char *index_create(const Req *q)
{
    return wire_text(q->create_index->name);
}
static const char *index_describe(const Req *q)
{
    return wire_text(q->describe_index->name);
}
static const char *index_delete_index(const Req *q)
{
    return wire_text(q->delete_index->name);
}
static const char *index_train(const Req *q)
{
    return wire_text(q->train->index);
}
static const char *index_upsert(const Req *q)
{
    return wire_text(q->upsert->index);
}
static const char *index_query(const Req *q)
{
    return wire_text(q->query->index);
}
static const char *index_get(const Req *q)
{
    return wire_text(q->get->index);
}
static const char *index_delete(const Req *q)
{
    return wire_text(q->delete_->index);
}
static const char *index_list_ids(const Req *q)
{
    return wire_text(q->list_ids->index);
}
static const char *index_compact(const Req *q)
{
    return wire_text(q->compact->index);
}
static const char *index_rotate(const Req *q)
{
    return wire_text(q->rotate->index);
}
static const char *index_accept_rollback(const Req *q)
{
    return wire_text(q->accept_rollback->index);
}
static const char *index_attest(const Req *q)
{
    return wire_text(q->attest->index);
}

static const struct op_def {
    Cipherdex__V1__Request__BodyCase body;
    app_op op; /* the metric label, and the name in errors (app_op_name) */
    need need;
    touches index;
    handler fn;
} ops[] = {
    {CIPHERDEX__V1__REQUEST__BODY_HEALTH, APP_OP_HEALTH, NEED_NONE, index_none, do_health},
    {CIPHERDEX__V1__REQUEST__BODY_CREATE_INDEX, APP_OP_CREATE_INDEX, NEED_ADMIN, index_create,
     do_create},
    {CIPHERDEX__V1__REQUEST__BODY_DESCRIBE_INDEX, APP_OP_DESCRIBE_INDEX, NEED_READ, index_describe,
     do_describe},
    {CIPHERDEX__V1__REQUEST__BODY_LIST_INDEXES, APP_OP_LIST_INDEXES, NEED_NONE, index_none,
     do_list_indexes},
    {CIPHERDEX__V1__REQUEST__BODY_DELETE_INDEX, APP_OP_DELETE_INDEX, NEED_ADMIN, index_delete_index,
     do_delete_index},
    {CIPHERDEX__V1__REQUEST__BODY_TRAIN, APP_OP_TRAIN, NEED_ADMIN, index_train, do_train},
    {CIPHERDEX__V1__REQUEST__BODY_UPSERT, APP_OP_UPSERT, NEED_WRITE, index_upsert, do_upsert},
    {CIPHERDEX__V1__REQUEST__BODY_QUERY, APP_OP_QUERY, NEED_READ, index_query, do_query},
    {CIPHERDEX__V1__REQUEST__BODY_GET, APP_OP_GET, NEED_READ, index_get, do_get},
    {CIPHERDEX__V1__REQUEST__BODY_DELETE, APP_OP_DELETE, NEED_WRITE, index_delete, do_delete},
    {CIPHERDEX__V1__REQUEST__BODY_LIST_IDS, APP_OP_LIST_IDS, NEED_READ, index_list_ids,
     do_list_ids},
    {CIPHERDEX__V1__REQUEST__BODY_ACCEPT_ROLLBACK, APP_OP_ACCEPT_ROLLBACK, NEED_ADMIN,
     index_accept_rollback, do_accept_rollback},
    {CIPHERDEX__V1__REQUEST__BODY_AUDIT_TAIL, APP_OP_AUDIT_TAIL, NEED_OPERATOR, index_none,
     do_audit_tail},
    {CIPHERDEX__V1__REQUEST__BODY_COMPACT, APP_OP_COMPACT, NEED_ADMIN, index_compact, do_compact},
    /* Appliance-wide: NEED_ADMIN without an index is for appliance admins only. */
    {CIPHERDEX__V1__REQUEST__BODY_PURGE, APP_OP_PURGE, NEED_ADMIN, index_none, do_purge},
    {CIPHERDEX__V1__REQUEST__BODY_ROTATE, APP_OP_ROTATE, NEED_ADMIN, index_rotate, do_rotate},
    {CIPHERDEX__V1__REQUEST__BODY_ATTEST, APP_OP_ATTEST, NEED_ATTEST, index_attest, do_attest},
};

static const struct op_def *op_find(Cipherdex__V1__Request__BodyCase body)
{
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
        if (ops[i].body == body)
            return &ops[i];
    return NULL;
}

/*
 * May `principal` run `d` on `index` (NULL: catalog-wide)? The one
 * authorisation check, made before any handler runs and before the index is
 * looked up: the answer is the same whether the index exists or not, so a
 * principal without rights on a name learns nothing about it.
 */
static cdx_err authorize(const app_dispatch_env *env, const char *principal, const struct op_def *d,
                         const char *index)
{
    if (app_policy_allows(env->policy, principal, d->need, index))
        return CDX_OK;
    return cdx_fail(CDX_ERR_PERMISSION_DENIED,
                    "%s needs `%s` on index `%s`, which the policy does not grant to %s "
                    "(docs/POLICY.md)",
                    app_op_name(d->op), pol_need_name(d->need), index ? index : "", principal);
}

/*
 * Refusals every operator wants in the log, with who asked: authorisation,
 * authentication, limits and budgets, and what a hostile store does.
 */
static bool refusal(cdx_err e)
{
    return e == CDX_ERR_PERMISSION_DENIED || e == CDX_ERR_UNAUTHENTICATED ||
           e == CDX_ERR_RATE_LIMITED || e == CDX_ERR_RESOURCE_EXHAUSTED || e == CDX_ERR_BUSY ||
           e == CDX_ERR_INTEGRITY || e == CDX_ERR_ROLLBACK_DETECTED;
}

/* s for a quoted log value: quotes, backslashes and controls become '?'. */
static void log_safe(char *s)
{
    for (; *s; s++)
        if (*s == '"' || *s == '\\' || (unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
            *s = '?';
}

static bool name_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
}

/*
 * Replace every whole-word occurrence of `name` in s with "-": the reasons
 * name the index the client sent (`name`, "index name: ..."), and the log
 * has its id instead. Whole words only, so a short name does not eat into
 * other words.
 */
static void mask_name(char *s, const char *name)
{
    size_t nl = name ? strlen(name) : 0;
    if (nl == 0)
        return;
    for (char *at = s; (at = strstr(at, name)) != NULL;) {
        if ((at > s && name_char(at[-1])) || name_char(at[nl])) {
            at++;
            continue;
        }
        *at = '-';
        memmove(at + 1, at + nl, strlen(at + nl) + 1);
        at++;
    }
}

/*
 * The index a request named, by id, for its audit record and its refusal
 * log line: the one the engine opened for it, else one catalog lookup of the
 * name. The lookup is made only where the id is wanted and affordable: for
 * the audit record of any request but the cheap refusals (limits, budget,
 * the trail itself), and for the log line of authorisation and integrity
 * refusals. NULL: none, or the name does not resolve.
 */
static const uint8_t *resolve_index(const app_dispatch_env *env, const char *index, cdx_err err,
                                    const uint8_t *opened, eng_index_info *ii)
{
    if (!index)
        return NULL; /* catalog-wide */
    if (opened)
        return opened;
    bool cheap = err == CDX_ERR_RATE_LIMITED || err == CDX_ERR_BUSY ||
                 err == CDX_ERR_AUDIT_UNAVAILABLE || err == CDX_ERR_RESOURCE_EXHAUSTED;
    bool for_log = err == CDX_ERR_PERMISSION_DENIED || err == CDX_ERR_INTEGRITY ||
                   err == CDX_ERR_ROLLBACK_DETECTED;
    if (!env->engine || !((env->audit && !cheap) || for_log))
        return NULL;
    return eng_index_describe(env->engine, index, ii) == CDX_OK ? ii->id : NULL;
}

/*
 * The operational log line of a refusal: who, what, which index (by id,
 * resolve_index: index names are never logged), the request id, the code
 * and the reason.
 */
static void log_refusal(const char *principal, app_op op, const char *index, const uint8_t *id,
                        uint64_t rid, cdx_err err, char *why)
{
    char idhex[2 * CDX_ID_LEN + 1] = "-";
    if (id)
        cdx_hex_encode(id, CDX_ID_LEN, idhex);
    if (index && !id && err == CDX_ERR_PERMISSION_DENIED)
        snprintf(idhex, sizeof(idhex), "none");
    mask_name(why, index);
    log_safe(why);
    cdx_log(CDX_LOG_WARN, "request_refused",
            "principal=\"%s\" op=%s index_id=%s request_id=%llu code=%s msg=\"%s\"",
            principal ? principal : "", app_op_name(op), idhex, (unsigned long long)rid,
            cdx_err_name(err), why[0] ? why : cdx_strerror(err));
}

/* Items, ids or results the request carried, for its audit record. */
static uint64_t audit_items(const Req *q, const Resp *r)
{
    switch (q->body_case) {
    case CIPHERDEX__V1__REQUEST__BODY_UPSERT:
        return q->upsert->n_items;
    case CIPHERDEX__V1__REQUEST__BODY_GET:
        return q->get->n_ids;
    case CIPHERDEX__V1__REQUEST__BODY_DELETE:
        return q->delete_->n_ids;
    case CIPHERDEX__V1__REQUEST__BODY_QUERY:
        return r->body_case == CIPHERDEX__V1__RESPONSE__BODY_QUERY ? r->query->n_results : 0;
    case CIPHERDEX__V1__REQUEST__BODY_LIST_IDS:
        return r->body_case == CIPHERDEX__V1__RESPONSE__BODY_LIST_IDS ? r->list_ids->n_ids : 0;
    default:
        return 0;
    }
}

/* What the audit trail knows of one request before its record is written. */
typedef struct audit_ctx {
    const char *principal;
    const wire_request *wr; /* NULL: undecodable */
    const char *index;      /* the name the request gave (NULL: none) */
    const uint8_t *index_id;
    uint32_t epoch;
    uint64_t rid, bytes_in, t0;
    uint32_t keys_cache, keys_token;
} audit_ctx;

/* Lifecycle records of a successful create, delete_index, accept_rollback or rotate. */
static cdx_err audit_lifecycle(const app_dispatch_env *env, const audit_ctx *x, const Req *q,
                               const Resp *r)
{
    char extra[512];
    switch (q->body_case) {
    case CIPHERDEX__V1__REQUEST__BODY_CREATE_INDEX: {
        const Cipherdex__V1__IndexInfo *ii = r->create_index->index;
        const Cipherdex__V1__KeyProvenance *p = ii->key_provenance;
        char kek[CDX_KEK_NAME_MAX * 3 + 4], serial[3 * 16 + 4];
        char origin[64], born[16];
        app_audit_value(kek, sizeof(kek), p ? wire_text(p->kek_name) : "-");
        app_audit_value(serial, sizeof(serial), p ? wire_text(p->token_serial) : "-");
        app_audit_value(origin, sizeof(origin), p ? wire_text(p->origin) : "-");
        app_audit_value(born, sizeof(born), p ? wire_text(p->born_on_token) : "-");
        snprintf(extra, sizeof(extra),
                 "origin=%s kek=%s born_on_token=%s token_serial=%s copyable_not_enforced=%s",
                 origin, kek, born, serial, p && p->copyable_not_enforced ? "yes" : "no");
        return app_auditrec_lifecycle(env->audit, "create",
                                      ii->id.len == CDX_ID_LEN ? ii->id.data : x->index_id,
                                      x->principal, x->rid, extra);
    }
    case CIPHERDEX__V1__REQUEST__BODY_DELETE_INDEX:
        return app_auditrec_lifecycle(env->audit, "delete", q->delete_index->confirm_id.data,
                                      x->principal, x->rid, "key=destroyed_or_released");
    case CIPHERDEX__V1__REQUEST__BODY_ACCEPT_ROLLBACK:
        snprintf(extra, sizeof(extra), "previous_version=%llu version=%llu",
                 (unsigned long long)r->accept_rollback->previous_version,
                 (unsigned long long)r->accept_rollback->version);
        return app_auditrec_lifecycle(env->audit, "accept_rollback", x->index_id, x->principal,
                                      x->rid, extra);
    case CIPHERDEX__V1__REQUEST__BODY_ROTATE: {
        const Cipherdex__V1__RotateResponse *rr = r->rotate;
        const Cipherdex__V1__IndexInfo *ii = rr->index;
        snprintf(extra, sizeof(extra), "key_epoch=%u rotate_to=%u wait=%s version=%llu",
                 ii ? ii->key_epoch : 0, ii ? ii->rotate_to : 0, q->rotate->wait ? "yes" : "no",
                 (unsigned long long)rr->version);
        return app_auditrec_lifecycle(env->audit, "rotate", x->index_id, x->principal, x->rid,
                                      extra);
    }
    default:
        return CDX_OK;
    }
}

/*
 * The request's audit record (and its lifecycle record). When it cannot be
 * written (fail closed), the answer becomes CDX_ERR_AUDIT_UNAVAILABLE: no
 * result leaves without its record. Returns true when it replaced the answer.
 */
static bool audit_request(const app_dispatch_env *env, const audit_ctx *x, const Resp *r,
                          cdx_err err, app_dispatch_result *res)
{
    const Req *q = x->wr ? wire_request_msg(x->wr) : NULL;
    const uint8_t *id = x->index_id;
    if (!id && q && r->body_case == CIPHERDEX__V1__RESPONSE__BODY_DESCRIBE_INDEX &&
        r->describe_index->index && r->describe_index->index->id.len == CDX_ID_LEN)
        id = r->describe_index->index->id.data;
    if (!id && q && q->body_case == CIPHERDEX__V1__REQUEST__BODY_DELETE_INDEX &&
        q->delete_index->confirm_id.len == CDX_ID_LEN)
        id = q->delete_index->confirm_id.data;
    audit_ctx lx = *x;
    lx.index_id = id;
    cdx_err aerr = CDX_OK;
    if (!err && q)
        aerr = audit_lifecycle(env, &lx, q, r);
    app_audit_req ar = {.op = app_op_name(res->op),
                        .principal = x->principal,
                        .index_id = id,
                        .index_name = env->audit_index_names ? x->index : NULL,
                        .items = q ? audit_items(q, r) : 0,
                        .epoch = x->epoch,
                        .code = (int)err,
                        .request_id = x->rid,
                        .bytes_in = x->bytes_in,
                        .bytes_out = res->len,
                        .keys_cache = x->keys_cache,
                        .keys_token = x->keys_token,
                        .us = (cdx_mono_ns() - x->t0) / 1000};
    if (!aerr)
        aerr = app_auditrec_request(env->audit, &ar);
    if (!aerr)
        return false;
    char why[300];
    snprintf(why, sizeof(why),
             "%s; the %s %s its audit record could not be written (fail closed)%s",
             cdx_err_detail(), app_op_name(res->op), err ? "was refused, and" : "ran, but",
             err ? "" : ": a write may have been applied, retry once the trail is back");
    free(res->frame);
    res->frame = NULL;
    res->len = 0;
    if (wire_response_error(x->rid, CDX_ERR_AUDIT_UNAVAILABLE, why, &res->frame, &res->len))
        res->frame = NULL;
    res->status = CDX_ERR_AUDIT_UNAVAILABLE;
    return true;
}

/* Engine stage times of this request (this worker thread's share) into the histograms. */
static void observe_stages(app_metrics *m)
{
    uint64_t st[ENG_STAGE_COUNT];
    eng_thread_stages(st);
    if (!m)
        return;
    if (st[ENG_STAGE_KEYS])
        app_metrics_observe(m, APP_STAGE_KEYS, st[ENG_STAGE_KEYS]);
    if (st[ENG_STAGE_FETCH])
        app_metrics_observe(m, APP_STAGE_FETCH, st[ENG_STAGE_FETCH]);
    if (st[ENG_STAGE_DECRYPT])
        app_metrics_observe(m, APP_STAGE_DECRYPT, st[ENG_STAGE_DECRYPT]);
    if (st[ENG_STAGE_COARSE] + st[ENG_STAGE_DISTANCE])
        app_metrics_observe(m, APP_STAGE_DISTANCE, st[ENG_STAGE_COARSE] + st[ENG_STAGE_DISTANCE]);
}

void app_dispatch(const app_dispatch_env *env, const char *principal, const uint8_t *frame,
                  size_t len, app_dispatch_result *res)
{
    uint64_t t0 = cdx_mono_ns();
    wire_request *wr = NULL;
    scratch s;
    memset(&s, 0, sizeof(s));
    s.principal = principal;
    memset(res, 0, sizeof(*res));
    res->op = APP_OP_INVALID;
    uint64_t rid = wire_peek_request_id(frame, len);
    eng_thread_stages((uint64_t[ENG_STAGE_COUNT]){0}); /* start this request's stage clock */
    { /* and forget what this thread touched before (a refusal's log line describes an index) */
        uint8_t id[CDX_ID_LEN];
        uint32_t ep, kc, kt;
        (void)eng_thread_index(id, &ep);
        hsm_thread_keyuse(&kc, &kt);
    }
    /* protobuf-c allocates far more than the frame for many tiny fields: bound it, and hold
     * that bound in the in-flight budget while the request is decoded and served. */
    s.frame_len = len;
    /* The principal's limits first: a refused request costs nothing more (docs/POLICY.md). */
    uint32_t retry_ms = 0;
    bool tracked = false;
    pol_limits lim;
    app_policy_limits(env->policy, principal, &lim);
    cdx_err err =
        app_ratelimit_enter(env->rate, principal, &lim, len, cdx_mono_ns(), &retry_ms, &tracked);
    if (!err)
        err = reserve(env, &s, wire_unpack_budget(len));
    if (!err)
        err = wire_request_unpack(frame, len, wire_unpack_budget(len), &wr);
    if (env->metrics)
        app_metrics_observe(env->metrics, APP_STAGE_DECODE, cdx_mono_ns() - t0);
    Resp r = CIPHERDEX__V1__RESPONSE__INIT;
    Cipherdex__V1__Status st = CIPHERDEX__V1__STATUS__INIT;
    const char *index = NULL; /* the index the request names, for the refusal log */
    if (!err) {
        const Req *q = wire_request_msg(wr);
        rid = q->request_id;
        const struct op_def *d = op_find(q->body_case);
        if (d)
            index = d->index(q);
        if (!d)
            err = cdx_fail(CDX_ERR_INVALID_ARGUMENT, "request has no known body");
        else {
            res->op = d->op;
            app_auditrec_thread_request(rid, principal);
            /* Fail closed: nothing that must be audited runs while the trail cannot be
             * written (health stays answerable: it touches no key and no data). */
            if (d->op != APP_OP_HEALTH)
                err = app_audit_check(env->audit);
            if (!err)
                err = authorize(env, principal, d, index);
            if (!err && env->budget) { /* answers are reserved as the engine builds them */
                s.budget = env->budget;
                eng_thread_mem_hook(mem_hook, &s);
            }
            if (!err)
                err = d->fn(env, q, &r, &s);
            eng_thread_mem_hook(NULL, NULL);
        }
        /* A plaintext key (create_index import_key): the token has it, or refused it. Wipe
         * the decoded copy here, whatever the outcome, and have the server wipe the frame. */
        if (q->body_case == CIPHERDEX__V1__REQUEST__BODY_CREATE_INDEX &&
            q->create_index->key_source_case ==
                CIPHERDEX__V1__CREATE_INDEX_REQUEST__KEY_SOURCE_IMPORT_KEY &&
            q->create_index->import_key) {
            OPENSSL_cleanse(q->create_index->import_key->key.data,
                            q->create_index->import_key->key.len);
            res->wipe_request = true;
        }
    } else {
        res->wipe_request = true; /* undecodable: it may have carried a key */
    }
    observe_stages(env->metrics);
    uint32_t keys_cache = 0, keys_token = 0;
    hsm_thread_keyuse(&keys_cache, &keys_token);
    uint8_t ix_id[CDX_ID_LEN];
    uint32_t ix_epoch = 0;
    bool ix_known = eng_thread_index(ix_id, &ix_epoch);
    uint64_t t1 = cdx_mono_ns();
    r.request_id = rid;
    r.status = &st;
    st.code = (int32_t)err;
    st.retry_after_ms = err == CDX_ERR_RATE_LIMITED ? retry_ms : 0;
    char refused_why[512] = "";
    if (err && refusal(err))
        snprintf(refused_why, sizeof(refused_why), "%s",
                 cdx_err_detail()[0] ? cdx_err_detail() : cdx_strerror(err));
    if (err) { /* an error answers with a status only */
        r.body_case = CIPHERDEX__V1__RESPONSE__BODY__NOT_SET;
        st.message = wire_str(cdx_err_detail()[0] ? cdx_err_detail() : cdx_strerror(err));
    }
    size_t max_frame = env->cfg ? (size_t)env->cfg->max_frame_bytes : CDX_FRAME_MAX_DEFAULT;
    cdx_err perr = wire_response_pack(&r, max_frame, &res->frame, &res->len);
    if (perr) { /* typically: the answer is larger than a frame may be */
        char why[300];
        snprintf(why, sizeof(why), "the response cannot be sent: %s; ask for fewer results",
                 cdx_err_detail());
        err = perr;
        if (wire_response_error(rid, perr, why, &res->frame, &res->len))
            res->frame = NULL;
    }
    eng_index_info named;
    const uint8_t *index_id = resolve_index(env, index, err, ix_known ? ix_id : NULL, &named);
    if (env->audit) {
        audit_ctx ax = {.principal = principal,
                        .wr = wr,
                        .index = index,
                        .index_id = index_id,
                        .epoch = ix_epoch,
                        .rid = rid,
                        .bytes_in = len,
                        .t0 = t0,
                        .keys_cache = keys_cache,
                        .keys_token = keys_token};
        if (audit_request(env, &ax, &r, err, res))
            err = res->status;
    }
    app_auditrec_thread_request(0, NULL);
    res->status = err;
    if (refusal(err))
        log_refusal(principal, res->op, index, index_id, rid, err, refused_why);
    if (env->metrics) {
        app_metrics_observe(env->metrics, APP_STAGE_ENCODE, cdx_mono_ns() - t1);
        app_metrics_observe(env->metrics, APP_STAGE_REQUEST, cdx_mono_ns() - t0);
        app_metrics_request(env->metrics, res->op, err);
        if (err == CDX_ERR_STORE_UNAVAILABLE)
            app_metrics_inc(env->metrics, APP_C_STORE_ERRORS, 1);
    }
    if (tracked)
        app_ratelimit_leave(env->rate, principal);
    scratch_free(&s);
    wire_request_free(wr);
    if (env->budget) /* the packed answer is charged by the server once queued */
        app_budget_give(env->budget, atomic_load(&s.reserved));
}
