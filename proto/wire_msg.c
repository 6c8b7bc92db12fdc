#include "wire_msg.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cdx_limits.h"
#include "wire_alloc.h"
#include "wire_frame.h"
#include "wire_text_fields.h"
#include "cdx_utf8.h"

/* ---- limits per field --------------------------------------------------- */

#define NOLIMIT SIZE_MAX /* bounded by the frame cap only (response-side lists) */
#define PKG     "cipherdex.v1."

/*
 * Every bytes field (text or binary) and every repeated field of the schema
 * has a rule; test_wire checks that none is missing, and a field without one
 * fails validation (CDX_ERR_INTERNAL) rather than passing unchecked.
 * min_len/max_len: bytes of each value (of each element when repeated);
 * min_count/max_count: elements of a repeated field.
 */
typedef struct rule {
    const char *msg, *field;
    size_t min_len, max_len;
    size_t min_count, max_count;
} rule;

/* clang-format off */
static const rule rules[] = {
    {PKG "Status", "message", 0, CDX_STATUS_MESSAGE_MAX, 0, 0},
    {PKG "Item", "id", 1, CDX_ITEM_ID_MAX, 0, 0},
    {PKG "Item", "vector", 0, 0, 0, CDX_DIM_MAX},
    {PKG "Item", "metadata", 0, CDX_METADATA_MAX, 0, 0},
    {PKG "Item", "contents", 0, CDX_CONTENTS_MAX, 0, 0},
    {PKG "IndexInfo", "name", 1, CDX_INDEX_NAME_MAX, 0, 0},
    {PKG "IndexInfo", "state", 0, CDX_ENUM_TEXT_MAX, 0, 0},
    {PKG "IndexInfo", "id", 0, CDX_ID_LEN, 0, 0},
    {PKG "IndexInfo", "metric", 0, CDX_ENUM_TEXT_MAX, 0, 0},
    {PKG "IndexInfo", "index_type", 0, CDX_ENUM_TEXT_MAX, 0, 0},
    {PKG "IndexInfo", "kcv", 0, CDX_KCV_LEN, 0, 0},
    {PKG "IndexInfo", "new_key_kcv", 0, CDX_KCV_LEN, 0, 0},
    {PKG "IndexInfo", "key_source", 0, CDX_ENUM_TEXT_MAX, 0, 0},
    {PKG "IndexInfo", "status", 0, CDX_ENUM_TEXT_MAX, 0, 0},
    {PKG "IndexInfo", "status_message", 0, CDX_STATUS_MESSAGE_MAX, 0, 0},
    {PKG "KeyProvenance", "origin", 0, CDX_ENUM_TEXT_MAX, 0, 0},
    {PKG "KeyProvenance", "kek_name", 0, CDX_KEK_NAME_MAX, 0, 0},
    {PKG "KeyProvenance", "born_on_token", 0, CDX_ENUM_TEXT_MAX, 0, 0},
    {PKG "KeyProvenance", "token_serial", 0, CDX_ENUM_TEXT_MAX, 0, 0},
    {PKG "KeyProvenance", "token_model", 0, CDX_TOKEN_MODEL_MAX, 0, 0},
    {PKG "KeyProvenance", "attributes", 0, 0, 0, CDX_KEY_ATTRS_MAX},
    {PKG "KeyAttribute", "name", 0, CDX_ENUM_TEXT_MAX, 0, 0},
    {PKG "KeyAttribute", "value", 0, CDX_ENUM_TEXT_MAX, 0, 0},
    {PKG "HealthResponse", "server_version", 0, CDX_VERSION_TEXT_MAX, 0, 0},
    {PKG "HealthResponse", "status", 0, CDX_ENUM_TEXT_MAX, 0, 0},
    {PKG "HealthResponse", "warnings", 1, CDX_STATUS_MESSAGE_MAX, 0, CDX_HEALTH_WARNINGS_MAX},
    {PKG "CreateIndexRequest", "name", 1, CDX_INDEX_NAME_MAX, 0, 0},
    {PKG "CreateIndexRequest", "metric", 1, CDX_ENUM_TEXT_MAX, 0, 0},
    {PKG "CreateIndexRequest", "index_type", 1, CDX_ENUM_TEXT_MAX, 0, 0},
    {PKG "UnwrapKey", "kek_name", 1, CDX_KEK_NAME_MAX, 0, 0},
    {PKG "UnwrapKey", "wrapped_key", CDX_WRAPPED_KEY_LEN, CDX_WRAPPED_KEY_LEN, 0, 0},
    {PKG "AdoptKey", "key_id", CDX_ID_LEN, CDX_ID_LEN, 0, 0},
    {PKG "ImportKey", "key", CDX_KEY_LEN, CDX_KEY_LEN, 0, 0},
    {PKG "DescribeIndexRequest", "name", 1, CDX_INDEX_NAME_MAX, 0, 0},
    {PKG "ListIndexesResponse", "indexes", 0, 0, 0, NOLIMIT},
    {PKG "DeleteIndexRequest", "name", 1, CDX_INDEX_NAME_MAX, 0, 0},
    /* 0 bytes passes here so the server can say FAILED_PRECONDITION: "confirm with the id". */
    {PKG "DeleteIndexRequest", "confirm_id", 0, CDX_ID_LEN, 0, 0},
    {PKG "TrainRequest", "index", 1, CDX_INDEX_NAME_MAX, 0, 0},
    {PKG "UpsertRequest", "index", 1, CDX_INDEX_NAME_MAX, 0, 0},
    {PKG "UpsertRequest", "items", 0, 0, 1, CDX_UPSERT_BATCH_MAX},
    {PKG "QueryRequest", "index", 1, CDX_INDEX_NAME_MAX, 0, 0},
    {PKG "QueryRequest", "vectors", 0, 0, 1, (size_t)CDX_QUERY_BATCH_MAX * CDX_DIM_MAX},
    {PKG "QueryRequest", "filter", 0, CDX_FILTER_TEXT_MAX, 0, 0},
    {PKG "QueryResponse", "results", 0, 0, 0, CDX_QUERY_BATCH_MAX},
    {PKG "QueryResult", "ids", 1, CDX_ITEM_ID_MAX, 0, CDX_TOPK_MAX},
    {PKG "QueryResult", "distances", 0, 0, 0, CDX_TOPK_MAX},
    {PKG "QueryResult", "vectors", 0, 0, 0, (size_t)CDX_TOPK_MAX * CDX_DIM_MAX},
    {PKG "QueryResult", "metadata", 0, CDX_METADATA_MAX, 0, CDX_TOPK_MAX},
    {PKG "QueryResult", "contents", 0, CDX_CONTENTS_MAX, 0, CDX_TOPK_MAX},
    {PKG "GetRequest", "index", 1, CDX_INDEX_NAME_MAX, 0, 0},
    {PKG "GetRequest", "ids", 1, CDX_ITEM_ID_MAX, 1, CDX_GET_BATCH_MAX},
    {PKG "GetResponse", "items", 0, 0, 0, CDX_GET_BATCH_MAX},
    {PKG "GetResponse", "found", 0, 0, 0, CDX_GET_BATCH_MAX},
    {PKG "DeleteRequest", "index", 1, CDX_INDEX_NAME_MAX, 0, 0},
    {PKG "DeleteRequest", "ids", 1, CDX_ITEM_ID_MAX, 1, CDX_GET_BATCH_MAX},
    {PKG "ListIdsRequest", "index", 1, CDX_INDEX_NAME_MAX, 0, 0},
    {PKG "ListIdsRequest", "cursor", 0, CDX_CURSOR_MAX, 0, 0},
    {PKG "ListIdsResponse", "ids", 1, CDX_ITEM_ID_MAX, 0, CDX_LIST_PAGE_MAX},
    {PKG "ListIdsResponse", "next_cursor", 0, CDX_CURSOR_MAX, 0, 0},
    {PKG "AcceptRollbackRequest", "index", 1, CDX_INDEX_NAME_MAX, 0, 0},
    {PKG "CompactRequest", "index", 1, CDX_INDEX_NAME_MAX, 0, 0},
    {PKG "RotateRequest", "index", 1, CDX_INDEX_NAME_MAX, 0, 0},
    {PKG "DeleteIndexResponse", "key_remains", 0, CDX_STATUS_MESSAGE_MAX, 0, 0},
    {PKG "RotateResponse", "key_remains", 0, CDX_STATUS_MESSAGE_MAX, 0, 0},
    {PKG "AuditTailResponse", "records", 1, CDX_AUDIT_LINE_MAX, 0, CDX_AUDIT_TAIL_MAX},
    {PKG "AuditTailResponse", "state", 0, CDX_ENUM_TEXT_MAX, 0, 0},
    {PKG "AuditTailResponse", "error", 0, CDX_STATUS_MESSAGE_MAX, 0, 0},
    {PKG "AttestRequest", "index", 1, CDX_INDEX_NAME_MAX, 0, 0},
    {PKG "AttestRequest", "nonce", CDX_ATTEST_NONCE_MIN, CDX_ATTEST_NONCE_MAX, 0, 0},
    {PKG "AttestResponse", "evidence", 1, CDX_EVIDENCE_MAX, 0, 0},
    {PKG "AttestResponse", "attestation_public_key", 1, CDX_ATTEST_SPKI_MAX, 0, 0},
    {PKG "AttestResponse", "attestation_key_id", 32, 32, 0, 0},
};
/* clang-format on */

#define N_RULES (sizeof(rules) / sizeof(rules[0]))

typedef struct text_field {
    const char *msg, *field;
} text_field;

#define X_TEXT(m, f) {m, f},
static const text_field text_fields[] = {WIRE_TEXT_FIELDS(X_TEXT)};
#undef X_TEXT

#define N_TEXT (sizeof(text_fields) / sizeof(text_fields[0]))

/* ---- the walker --------------------------------------------------------- */

#define WALK_DEPTH_MAX  8  /* the schema nests 4 deep; more is a schema bug */
#define WALK_FIELDS_MAX 40 /* fields of one message (IndexInfo has 25 and reserves 19-23) */
#define WALK_DESCS_MAX  64 /* message types of the schema (44 today) */

/* Per field: index of its rule (-1: none) and whether it is text. */
typedef struct finfo {
    int16_t rule;
    bool text;
} finfo;

typedef struct dcache {
    const ProtobufCMessageDescriptor *d;
    finfo f[WALK_FIELDS_MAX];
} dcache;

typedef struct walker {
    bool floats;      /* check that floats are finite (requests) */
    cdx_err code;     /* error code for a failed check */
    const char *root; /* names the top-level message in details */
    struct {
        const char *name;
        size_t idx; /* SIZE_MAX: not an element */
    } path[WALK_DEPTH_MAX + 1];
    unsigned depth;
    dcache cache[WALK_DESCS_MAX];
    size_t ncache;
} walker;

static const char *path_str(const walker *w, char *buf, size_t cap)
{
    size_t n = 0;
    snprintf(buf, cap, "%s", w->root);
    if (w->depth == 0)
        return buf;
    buf[0] = '\0';
    for (unsigned i = 0; i < w->depth && n < cap; i++) {
        int k;
        if (w->path[i].idx == SIZE_MAX)
            k = snprintf(buf + n, cap - n, "%s%s", i ? "." : "", w->path[i].name);
        else
            k = snprintf(buf + n, cap - n, "%s%s[%zu]", i ? "." : "", w->path[i].name,
                         w->path[i].idx);
        if (k < 0)
            break;
        n += (size_t)k;
    }
    return buf;
}

__attribute__((format(printf, 3, 4))) static cdx_err wfail(const walker *w, cdx_err code,
                                                           const char *fmt, ...)
{
    char path[256], msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return cdx_fail(code, "%s: %s", path_str(w, path, sizeof(path)), msg);
}

static const dcache *resolve(walker *w, const ProtobufCMessageDescriptor *d)
{
    for (size_t i = 0; i < w->ncache; i++)
        if (w->cache[i].d == d)
            return &w->cache[i];
    if (w->ncache == WALK_DESCS_MAX || d->n_fields > WALK_FIELDS_MAX)
        return NULL;
    dcache *c = &w->cache[w->ncache++];
    c->d = d;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const char *fname = d->fields[i].name;
        c->f[i].rule = -1;
        c->f[i].text = false;
        for (size_t k = 0; k < N_RULES; k++)
            if (!strcmp(rules[k].msg, d->name) && !strcmp(rules[k].field, fname)) {
                c->f[i].rule = (int16_t)k;
                break;
            }
        for (size_t k = 0; k < N_TEXT; k++)
            if (!strcmp(text_fields[k].msg, d->name) && !strcmp(text_fields[k].field, fname))
                c->f[i].text = true;
    }
    return c;
}

static cdx_err check_bytes(const walker *w, const rule *r, bool text, const ProtobufCBinaryData *b)
{
    if (b->len && !b->data)
        return wfail(w, w->code, "length %zu without data", b->len);
    if (b->len > r->max_len)
        return wfail(w, w->code, "%zu bytes exceed the limit of %zu", b->len, r->max_len);
    if (b->len < r->min_len) {
        if (r->min_len == r->max_len)
            return wfail(w, w->code, "must be exactly %zu bytes (got %zu)", r->min_len, b->len);
        if (b->len == 0)
            return wfail(w, w->code, "empty (required)");
        return wfail(w, w->code, "%zu bytes, at least %zu needed", b->len, r->min_len);
    }
    if (text) {
        size_t bad = 0;
        const char *why = NULL;
        if (!cdx_utf8_valid(b->data, b->len, &bad, &why)) {
            if (b->data[bad] == 0)
                return wfail(w, w->code, "NUL byte at offset %zu", bad);
            return wfail(w, w->code, "invalid UTF-8 at byte %zu (%s)", bad, why);
        }
    }
    return CDX_OK;
}

static cdx_err check_floats(const walker *w, const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return wfail(w, w->code, "value %zu is not finite (NaN or infinity)", i);
    return CDX_OK;
}

static cdx_err walk(walker *w, const ProtobufCMessage *m);

static cdx_err walk_field(walker *w, const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
                          const finfo *fi)
{
    const char *base = (const char *)m;
    const void *member = base + f->offset;
    const rule *r = fi->rule >= 0 ? &rules[fi->rule] : NULL;
    bool needs_rule = f->label == PROTOBUF_C_LABEL_REPEATED || f->type == PROTOBUF_C_TYPE_BYTES ||
                      f->type == PROTOBUF_C_TYPE_STRING;
    cdx_err err = CDX_OK;

    if (f->type == PROTOBUF_C_TYPE_STRING)
        return wfail(w, CDX_ERR_INTERNAL, "string field in the server's schema copy");
    if (needs_rule && !r)
        return wfail(w, CDX_ERR_INTERNAL, "no validation rule for %s.%s", m->descriptor->name,
                     f->name);

    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
        size_t n = *(const size_t *)(const void *)(base + f->quantifier_offset);
        const void *arr = *(const void *const *)member;
        if (n > r->max_count)
            return wfail(w, w->code, "%zu entries exceed the limit of %zu", n, r->max_count);
        if (n < r->min_count)
            return wfail(w, w->code, n ? "%zu entries, at least %zu needed" : "empty (required)", n,
                         r->min_count);
        if (n && !arr)
            return wfail(w, w->code, "%zu entries without data", n);
        switch (f->type) {
        case PROTOBUF_C_TYPE_BYTES:
            for (size_t i = 0; i < n && !err; i++) {
                w->path[w->depth - 1].idx = i;
                err = check_bytes(w, r, fi->text, &((const ProtobufCBinaryData *)arr)[i]);
            }
            break;
        case PROTOBUF_C_TYPE_MESSAGE:
            for (size_t i = 0; i < n && !err; i++) {
                const ProtobufCMessage *sub = ((const ProtobufCMessage *const *)arr)[i];
                w->path[w->depth - 1].idx = i;
                if (!sub)
                    err = wfail(w, w->code, "missing element");
                else
                    err = walk(w, sub);
            }
            break;
        case PROTOBUF_C_TYPE_FLOAT:
            if (w->floats)
                err = check_floats(w, arr, n);
            break;
        default:
            break;
        }
        w->path[w->depth - 1].idx = SIZE_MAX;
        return err;
    }

    switch (f->type) {
    case PROTOBUF_C_TYPE_BYTES:
        return check_bytes(w, r, fi->text, member);
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)member;
        return sub ? walk(w, sub) : CDX_OK;
    }
    case PROTOBUF_C_TYPE_FLOAT:
        return w->floats ? check_floats(w, member, 1) : CDX_OK;
    default:
        return CDX_OK;
    }
}

static cdx_err walk(walker *w, const ProtobufCMessage *m)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const dcache *c;

    /*
     * protobuf-c keeps a field numbered 0 as an unknown field when its tag is
     * encoded in more than one byte (it rejects only the one-byte form).
     * Field 0 is not valid protobuf: other parsers, and protobuf-c re-reading
     * what it would re-serialize, refuse it.
     */
    for (size_t i = 0; i < m->n_unknown_fields; i++)
        if (m->unknown_fields[i].tag == 0)
            return wfail(w, w->code, "field number 0 (not valid protobuf)");
    if (w->depth >= WALK_DEPTH_MAX)
        return wfail(w, CDX_ERR_INTERNAL, "messages nested too deep");
    if (!(c = resolve(w, d)))
        return wfail(w, CDX_ERR_INTERNAL, "schema larger than the validator's tables (%s)",
                     d->name);
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t which =
                *(const uint32_t *)(const void *)((const char *)m + f->quantifier_offset);
            if (which != f->id)
                continue;
        }
        w->path[w->depth].name = f->name;
        w->path[w->depth].idx = SIZE_MAX;
        w->depth++;
        cdx_err err = walk_field(w, m, f, &c->f[i]);
        w->depth--;
        if (err)
            return err;
    }
    return CDX_OK;
}

static walker *walker_new(bool floats, cdx_err code, const char *root)
{
    walker *w = calloc(1, sizeof(*w));
    if (w) {
        w->floats = floats;
        w->code = code;
        w->root = root;
    }
    return w;
}

/* ---- schema self-check -------------------------------------------------- */

static cdx_err schema_visit(const ProtobufCMessageDescriptor *d,
                            const ProtobufCMessageDescriptor **seen, size_t *nseen)
{
    for (size_t i = 0; i < *nseen; i++)
        if (seen[i] == d)
            return CDX_OK;
    if (*nseen == WALK_DESCS_MAX)
        return cdx_fail(CDX_ERR_INTERNAL, "schema has more than %d message types", WALK_DESCS_MAX);
    if (d->n_fields > WALK_FIELDS_MAX)
        return cdx_fail(CDX_ERR_INTERNAL, "%s has more than %d fields", d->name, WALK_FIELDS_MAX);
    seen[(*nseen)++] = d;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        bool found = false;
        if (f->type == PROTOBUF_C_TYPE_STRING)
            return cdx_fail(CDX_ERR_INTERNAL,
                            "%s.%s is a string field (the build must convert "
                            "it to bytes)",
                            d->name, f->name);
        for (size_t k = 0; k < N_RULES && !found; k++)
            found = !strcmp(rules[k].msg, d->name) && !strcmp(rules[k].field, f->name);
        if ((f->label == PROTOBUF_C_LABEL_REPEATED || f->type == PROTOBUF_C_TYPE_BYTES) && !found)
            return cdx_fail(CDX_ERR_INTERNAL, "%s.%s has no validation rule", d->name, f->name);
        if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
            cdx_err err = schema_visit(f->descriptor, seen, nseen);
            if (err)
                return err;
        }
    }
    return CDX_OK;
}

cdx_err wire_schema_check(void)
{
    const ProtobufCMessageDescriptor *seen[WALK_DESCS_MAX];
    size_t nseen = 0;
    cdx_err err;

    if ((err = schema_visit(&cipherdex__v1__request__descriptor, seen, &nseen)) ||
        (err = schema_visit(&cipherdex__v1__response__descriptor, seen, &nseen)))
        return err;
    /* Every rule and every text field names a real field. */
    for (size_t k = 0; k < N_RULES + N_TEXT; k++) {
        const char *m = k < N_RULES ? rules[k].msg : text_fields[k - N_RULES].msg;
        const char *fn = k < N_RULES ? rules[k].field : text_fields[k - N_RULES].field;
        const ProtobufCFieldDescriptor *f = NULL;
        for (size_t i = 0; i < nseen && !f; i++)
            if (!strcmp(seen[i]->name, m))
                f = protobuf_c_message_descriptor_get_field_by_name(seen[i], fn);
        if (!f)
            return cdx_fail(CDX_ERR_INTERNAL, "validation rule for %s.%s: no such field", m, fn);
        if (k >= N_RULES && f->type != PROTOBUF_C_TYPE_BYTES)
            return cdx_fail(CDX_ERR_INTERNAL, "text field %s.%s is not bytes", m, fn);
    }
    return CDX_OK;
}

/* ---- request checks ----------------------------------------------------- */

static const char *const body_names[] = {
    [CIPHERDEX__V1__REQUEST__BODY_HEALTH] = "health",
    [CIPHERDEX__V1__REQUEST__BODY_CREATE_INDEX] = "create_index",
    [CIPHERDEX__V1__REQUEST__BODY_DESCRIBE_INDEX] = "describe_index",
    [CIPHERDEX__V1__REQUEST__BODY_LIST_INDEXES] = "list_indexes",
    [CIPHERDEX__V1__REQUEST__BODY_DELETE_INDEX] = "delete_index",
    [CIPHERDEX__V1__REQUEST__BODY_TRAIN] = "train",
    [CIPHERDEX__V1__REQUEST__BODY_UPSERT] = "upsert",
    [CIPHERDEX__V1__REQUEST__BODY_QUERY] = "query",
    [CIPHERDEX__V1__REQUEST__BODY_GET] = "get",
    [CIPHERDEX__V1__REQUEST__BODY_DELETE] = "delete",
    [CIPHERDEX__V1__REQUEST__BODY_LIST_IDS] = "list_ids",
    [CIPHERDEX__V1__REQUEST__BODY_ACCEPT_ROLLBACK] = "accept_rollback",
    [CIPHERDEX__V1__REQUEST__BODY_AUDIT_TAIL] = "audit_tail",
    [CIPHERDEX__V1__REQUEST__BODY_COMPACT] = "compact",
    [CIPHERDEX__V1__REQUEST__BODY_ATTEST] = "attest",
    [CIPHERDEX__V1__REQUEST__BODY_ROTATE] = "rotate",
    [CIPHERDEX__V1__REQUEST__BODY_PURGE] = "purge",
};
#define BODY_LAST (sizeof(body_names) / sizeof(body_names[0]) - 1)

const char *wire_body_name(const Cipherdex__V1__Request *req)
{
    unsigned c = (unsigned)req->body_case;
    if (c == CIPHERDEX__V1__REQUEST__BODY__NOT_SET)
        return "none";
    if (c < sizeof(body_names) / sizeof(body_names[0]) && body_names[c])
        return body_names[c];
    return "unknown";
}

static cdx_err range(const char *op, const char *field, uint64_t v, uint64_t lo, uint64_t hi)
{
    if (v < lo || v > hi)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "%s.%s: %llu is out of range (%llu..%llu)", op,
                        field, (unsigned long long)v, (unsigned long long)lo,
                        (unsigned long long)hi);
    return CDX_OK;
}

/* Scalar ranges and requirements the per-field rules cannot express. */
static cdx_err check_body(const Cipherdex__V1__Request *req)
{
    const char *op = wire_body_name(req);
    cdx_err err = CDX_OK;

    switch (req->body_case) {
    case CIPHERDEX__V1__REQUEST__BODY_CREATE_INDEX: {
        const Cipherdex__V1__CreateIndexRequest *b = req->create_index;
        if ((err = range(op, "dimension", b->dimension, 1, CDX_DIM_MAX)) ||
            (err = range(op, "n_lists", b->n_lists, 0, CDX_NLISTS_MAX)))
            return err;
        break;
    }
    case CIPHERDEX__V1__REQUEST__BODY_TRAIN: {
        const Cipherdex__V1__TrainRequest *b = req->train;
        if ((err = range(op, "n_lists", b->n_lists, 0, CDX_NLISTS_MAX)) ||
            (err = range(op, "max_iters", b->max_iters, 0, CDX_TRAIN_ITERS_MAX)) ||
            (err = range(op, "max_points_per_list", b->max_points_per_list, 0,
                         CDX_TRAIN_POINTS_PER_LIST_MAX)))
            return err;
        if (b->tolerance < 0)
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "%s.tolerance: %g is negative", op,
                            (double)b->tolerance);
        break;
    }
    case CIPHERDEX__V1__REQUEST__BODY_UPSERT: {
        const Cipherdex__V1__UpsertRequest *b = req->upsert;
        for (size_t i = 0; i < b->n_items; i++)
            if (b->items[i]->n_vector == 0)
                return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "%s.items[%zu].vector: empty (required)",
                                op, i);
        break;
    }
    case CIPHERDEX__V1__REQUEST__BODY_QUERY: {
        const Cipherdex__V1__QueryRequest *b = req->query;
        if ((err = range(op, "top_k", b->top_k, 0, CDX_TOPK_MAX)) ||
            (err = range(op, "n_probes", b->n_probes, 0, CDX_NLISTS_MAX)) ||
            (err = range(op, "max_probes", b->max_probes, 0, CDX_NLISTS_MAX)))
            return err;
        break;
    }
    case CIPHERDEX__V1__REQUEST__BODY_LIST_IDS:
        if ((err = range(op, "limit", req->list_ids->limit, 0, CDX_LIST_PAGE_MAX)))
            return err;
        break;
    case CIPHERDEX__V1__REQUEST__BODY_AUDIT_TAIL:
        if ((err = range(op, "limit", req->audit_tail->limit, 0, CDX_AUDIT_TAIL_MAX)))
            return err;
        break;
    default:
        break;
    }
    return CDX_OK;
}

cdx_err wire_request_check(const Cipherdex__V1__Request *req)
{
    cdx_err err = CDX_OK;
    walker *w = NULL;

    if (req->body_case == CIPHERDEX__V1__REQUEST__BODY__NOT_SET) {
        for (size_t i = 0; i < req->base.n_unknown_fields; i++) {
            uint32_t tag = req->base.unknown_fields[i].tag;
            if (tag >= 10)
                return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                                "request body is field %u, which this server does not know "
                                "(known: 10-%u); upgrade the server or the client",
                                (unsigned)tag, (unsigned)BODY_LAST);
        }
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                        "request has no body: set one operation (health, create_index, ...)");
    }
    if (!strcmp(wire_body_name(req), "unknown"))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "request body %u is unknown",
                        (unsigned)req->body_case);
    if (!(w = walker_new(true, CDX_ERR_INVALID_ARGUMENT, "request"))) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    if ((err = walk(w, &req->base)))
        goto out;
    err = check_body(req);
out:
    free(w);
    return err;
}

cdx_err wire_response_check(const Cipherdex__V1__Response *resp)
{
    cdx_err err = CDX_OK;
    walker *w = NULL;

    if (!resp->status)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "response has no status (protocol error)");
    if (!(w = walker_new(false, CDX_ERR_INVALID_ARGUMENT, "response"))) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    err = walk(w, &resp->base);
out:
    free(w);
    return err;
}

/* ---- unpacking ---------------------------------------------------------- */

struct wire_request {
    wire_alloc *a; /* owns every block of msg */
    Cipherdex__V1__Request *msg;
};

struct wire_response {
    wire_alloc *a;
    Cipherdex__V1__Response *msg;
};

static cdx_err unpack(const ProtobufCMessageDescriptor *d, const char *what, const uint8_t *frame,
                      size_t len, size_t budget, wire_alloc **a_out, ProtobufCMessage **m_out)
{
    wire_alloc *a = NULL;
    ProtobufCMessage *m = NULL;
    cdx_err err;

    *a_out = NULL;
    *m_out = NULL;
    if (!frame && len)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "NULL frame");
    if (!budget)
        budget = wire_unpack_budget(len);
    if ((err = wire_alloc_new(budget, &a)))
        return err;
    m = protobuf_c_message_unpack(d, wire_alloc_pb(a), len, frame);
    if (!m) {
        if (wire_alloc_over_budget(a))
            err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED,
                           "decoding this %zu-byte %s needs more than its memory budget of %zu "
                           "bytes (%d x frame + %u): send fewer, larger items per request, with "
                           "packed repeated fields",
                           len, what, budget, CDX_UNPACK_BUDGET_FACTOR, CDX_UNPACK_BUDGET_SLACK);
        else
            err = cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                           "frame of %zu bytes is not a valid protobuf %s", len, what);
        goto out;
    }
    *a_out = a;
    *m_out = m;
    a = NULL;
out:
    wire_alloc_free(a); /* frees whatever protobuf-c left behind */
    return err;
}

cdx_err wire_request_unpack(const uint8_t *frame, size_t len, size_t budget, wire_request **out)
{
    wire_request *r = NULL;
    ProtobufCMessage *m = NULL;
    cdx_err err;

    *out = NULL;
    if (!(r = calloc(1, sizeof(*r))))
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    if ((err =
             unpack(&cipherdex__v1__request__descriptor, "Request", frame, len, budget, &r->a, &m)))
        goto out;
    r->msg = (Cipherdex__V1__Request *)m;
    if ((err = wire_request_check(r->msg)))
        goto out;
    *out = r;
    r = NULL;
out:
    wire_request_free(r);
    return err;
}

const Cipherdex__V1__Request *wire_request_msg(const wire_request *r)
{
    return r->msg;
}

size_t wire_request_mem(const wire_request *r)
{
    return wire_alloc_used(r->a) + sizeof(*r);
}

void wire_request_free(wire_request *r)
{
    if (!r)
        return;
    wire_alloc_free(r->a); /* the arena holds every block of the message */
    free(r);
}

cdx_err wire_response_unpack(const uint8_t *frame, size_t len, size_t budget, wire_response **out)
{
    wire_response *r = NULL;
    ProtobufCMessage *m = NULL;
    cdx_err err;

    *out = NULL;
    if (!(r = calloc(1, sizeof(*r))))
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    if ((err = unpack(&cipherdex__v1__response__descriptor, "Response", frame, len, budget, &r->a,
                      &m)))
        goto out;
    r->msg = (Cipherdex__V1__Response *)m;
    if ((err = wire_response_check(r->msg)))
        goto out;
    *out = r;
    r = NULL;
out:
    wire_response_free(r);
    return err;
}

const Cipherdex__V1__Response *wire_response_msg(const wire_response *r)
{
    return r->msg;
}

void wire_response_free(wire_response *r)
{
    if (!r)
        return;
    wire_alloc_free(r->a);
    free(r);
}

/* ---- request_id without decoding ---------------------------------------- */

static bool varint(const uint8_t *p, size_t n, size_t *off, uint64_t *v)
{
    uint64_t x = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (*off >= n)
            return false;
        uint8_t b = p[(*off)++];
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return true;
        }
    }
    return false;
}

uint64_t wire_peek_request_id(const uint8_t *frame, size_t len)
{
    size_t off = 0;
    uint64_t id = 0;

    if (!frame)
        return 0;
    while (off < len) {
        uint64_t key, v;
        if (!varint(frame, len, &off, &key))
            break;
        switch (key & 7) {
        case 0:
            if (!varint(frame, len, &off, &v))
                return id;
            if (key >> 3 == 1)
                id = v; /* the last occurrence wins, as in protobuf */
            break;
        case 1:
            if (len - off < 8)
                return id;
            off += 8;
            break;
        case 2:
            if (!varint(frame, len, &off, &v) || v > len - off)
                return id;
            off += (size_t)v;
            break;
        case 5:
            if (len - off < 4)
                return id;
            off += 4;
            break;
        default:
            return id;
        }
    }
    return id;
}

/* ---- packing ------------------------------------------------------------ */

static cdx_err pack(const ProtobufCMessage *m, size_t max_frame, uint8_t **frame, size_t *len)
{
    *frame = NULL;
    *len = 0;
    if (!max_frame)
        max_frame = CDX_FRAME_MAX_DEFAULT;
    size_t n = protobuf_c_message_get_packed_size(m);
    if (n > max_frame || n > UINT32_MAX)
        return cdx_fail(CDX_ERR_FRAME_TOO_LARGE,
                        "message of %zu bytes exceeds the frame cap of %zu bytes", n, max_frame);
    uint8_t *f = malloc(CDX_FRAME_HDR_LEN + n);
    if (!f)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory for a frame of %zu bytes", n);
    size_t got = protobuf_c_message_pack(m, f + CDX_FRAME_HDR_LEN);
    if (got != n) {
        free(f);
        return cdx_fail(CDX_ERR_INTERNAL, "packed %zu bytes, expected %zu", got, n);
    }
    wire_frame_header((uint32_t)n, f);
    *frame = f;
    *len = CDX_FRAME_HDR_LEN + n;
    return CDX_OK;
}

/* A status message cut to the limit, at a character boundary, before any invalid byte. */
static ProtobufCBinaryData sane_message(ProtobufCBinaryData m)
{
    size_t n = m.len < CDX_STATUS_MESSAGE_MAX ? m.len : CDX_STATUS_MESSAGE_MAX;
    if (!m.data)
        n = 0;
    m.len = cdx_utf8_prefix(m.data, n);
    return m;
}

cdx_err wire_response_pack(const Cipherdex__V1__Response *resp, size_t max_frame, uint8_t **frame,
                           size_t *len)
{
    *frame = NULL;
    *len = 0;
    if (!resp->status)
        return cdx_fail(CDX_ERR_INTERNAL, "response without a status");
    Cipherdex__V1__Response r = *resp;
    Cipherdex__V1__Status st = *resp->status;
    st.message = sane_message(st.message);
    r.status = &st;
    cdx_err err = wire_response_check(&r);
    if (err == CDX_ERR_INVALID_ARGUMENT)
        return cdx_prefix(CDX_ERR_INTERNAL, "invalid response: ");
    if (err)
        return err;
    return pack(&r.base, max_frame, frame, len);
}

cdx_err wire_response_error(uint64_t request_id, cdx_err code, const char *message, uint8_t **frame,
                            size_t *len)
{
    Cipherdex__V1__Response r = CIPHERDEX__V1__RESPONSE__INIT;
    Cipherdex__V1__Status st = CIPHERDEX__V1__STATUS__INIT;

    st.code = (int32_t)code;
    st.message = sane_message(wire_str(message ? message : cdx_strerror(code)));
    r.request_id = request_id;
    r.status = &st;
    return pack(&r.base, 0, frame, len);
}

cdx_err wire_request_pack(const Cipherdex__V1__Request *req, size_t max_frame, uint8_t **frame,
                          size_t *len)
{
    return pack(&req->base, max_frame, frame, len);
}

ProtobufCBinaryData wire_str(const char *s)
{
    return wire_bin(s, s ? strlen(s) : 0);
}
