/*
 * eng_filter.c - compile Mongo-style filters into a tree and evaluate it.
 *
 * The filter's parsed JSON is kept alive by the compiled filter: paths and
 * operands point into it, so compiling copies nothing but structure.
 * Recursion (compile, evaluate, deep equality) is bounded by
 * CDX_JSON_DEPTH_MAX, which the parser enforces on both filters and metadata.
 */
#include "eng_filter.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cdx_limits.h"
#include "eng_json.h"

/* ---- numbers ------------------------------------------------------------ */

/*
 * A JSON number normalised for exact comparison: integral values inside the
 * int64 range (json integers, and reals such as 1.0 or -0.0) are held as
 * int64, everything else as a double. Comparing two doubles converted from
 * int64 would round above 2^53 (2^53+1 == 2^53), so the mixed case is exact.
 */
typedef struct num {
    bool is_int;
    int64_t i;
    double d;
} num;

#define TWO_63 9223372036854775808.0 /* 2^63, exactly representable */

static num num_of(const json_t *j)
{
    num n = {0};

    if (json_is_integer(j)) {
        n.is_int = true;
        n.i = (int64_t)json_integer_value(j);
        return n;
    }
    n.d = json_real_value(j);
    if (n.d >= -TWO_63 && n.d < TWO_63 && (double)(int64_t)n.d == n.d) {
        n.is_int = true;
        n.i = (int64_t)n.d;
    }
    return n;
}

/* Compare an int64 with a double that is non-integral or outside int64. */
static int cmp_int_real(int64_t i, double d)
{
    int64_t fl;

    if (d >= TWO_63)
        return -1;
    if (d < -TWO_63)
        return 1;
    /* d is non-integral here, so |d| < 2^52: i < d exactly when i <= floor(d). */
    fl = (int64_t)d;
    if (d < 0)
        fl--;
    return i <= fl ? -1 : 1;
}

static int num_cmp(num a, num b)
{
    if (a.is_int && b.is_int)
        return (a.i > b.i) - (a.i < b.i);
    if (!a.is_int && !b.is_int)
        return (a.d > b.d) - (a.d < b.d); /* jansson never yields NaN or Inf */
    if (a.is_int)
        return cmp_int_real(a.i, b.d);
    return -cmp_int_real(b.i, a.d);
}

/* Byte-wise: memcmp over the common prefix, then the shorter string first. */
static int str_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);

    if (c != 0)
        return c < 0 ? -1 : 1;
    return (alen > blen) - (alen < blen);
}

/* Deep equality with numbers compared by value (json_equal(1, 1.0) is false). */
static bool deep_eq(const json_t *a, const json_t *b)
{
    if (json_is_number(a) && json_is_number(b))
        return num_cmp(num_of(a), num_of(b)) == 0;
    if (json_typeof(a) != json_typeof(b))
        return false;
    switch (json_typeof(a)) {
    case JSON_STRING:
        return json_string_length(a) == json_string_length(b) &&
               memcmp(json_string_value(a), json_string_value(b), json_string_length(a)) == 0;
    case JSON_ARRAY:
        if (json_array_size(a) != json_array_size(b))
            return false;
        for (size_t i = 0; i < json_array_size(a); i++) {
            if (!deep_eq(json_array_get(a, i), json_array_get(b, i)))
                return false;
        }
        return true;
    case JSON_OBJECT:
        if (json_object_size(a) != json_object_size(b))
            return false;
        for (void *it = json_object_iter((json_t *)a); it;
             it = json_object_iter_next((json_t *)a, it)) {
            const json_t *w =
                json_object_getn(b, json_object_iter_key(it), json_object_iter_key_len(it));

            if (!w || !deep_eq(json_object_iter_value(it), w))
                return false;
        }
        return true;
    default: /* true, false, null: equal types are equal values */
        return true;
    }
}

/* ---- the compiled tree -------------------------------------------------- */

typedef enum op_kind {
    OP_EQ,
    OP_NE,
    OP_GT,
    OP_GTE,
    OP_LT,
    OP_LTE,
    OP_IN,
    OP_NIN,
    OP_EXISTS,
    OP_NOT,
} op_kind;

static const char *const op_names[] = {
    [OP_EQ] = "$eq",         [OP_NE] = "$ne",   [OP_GT] = "$gt", [OP_GTE] = "$gte",
    [OP_LT] = "$lt",         [OP_LTE] = "$lte", [OP_IN] = "$in", [OP_NIN] = "$nin",
    [OP_EXISTS] = "$exists", [OP_NOT] = "$not",
};

/* An operand, with scalars pre-decoded so evaluation does not re-read JSON. */
typedef struct operand {
    json_type type; /* JSON_INTEGER stands for any number */
    num n;
    const char *s;
    size_t len;
    const json_t *j; /* arrays and objects: compared with deep_eq */
} operand;

typedef struct fop {
    op_kind kind;
    operand val;   /* $eq $ne $gt $gte $lt $lte */
    operand *vals; /* $in $nin */
    size_t nvals;
    bool exists;     /* $exists */
    struct fop *sub; /* $not: all of these, negated */
    size_t nsub;
} fop;

typedef struct seg {
    const char *p;
    size_t len;
} seg;

typedef enum node_kind { N_AND, N_OR, N_FIELD } node_kind;

typedef struct node {
    node_kind kind;
    struct node *kids; /* N_AND, N_OR */
    size_t nkids;
    seg *path; /* N_FIELD */
    size_t npath;
    fop *ops; /* N_FIELD: all must hold */
    size_t nops;
} node;

struct eng_filter {
    json_t *doc; /* owns every string the tree points to */
    node root;   /* N_AND */
};

static void ops_free(fop *ops, size_t n)
{
    for (size_t i = 0; ops && i < n; i++) {
        free(ops[i].vals);
        ops_free(ops[i].sub, ops[i].nsub);
    }
    free(ops);
}

static void node_clear(node *nd)
{
    for (size_t i = 0; nd->kids && i < nd->nkids; i++)
        node_clear(&nd->kids[i]);
    free(nd->kids);
    free(nd->path);
    ops_free(nd->ops, nd->nops);
    memset(nd, 0, sizeof(*nd));
}

/* ---- compiling ---------------------------------------------------------- */

typedef struct ctx {
    size_t nodes;
    char loc[256]; /* ".a.b", ".$or[1].price"; "" is the top level */
    size_t loclen;
} ctx;

static const char *where(const ctx *c)
{
    return c->loclen ? c->loc : "top level";
}

/* Append to the location; returns the length to restore afterwards. */
static size_t loc_push(ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static size_t loc_push(ctx *c, const char *fmt, ...)
{
    size_t old = c->loclen;
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(c->loc + old, sizeof(c->loc) - old, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    c->loclen = old + (size_t)n < sizeof(c->loc) ? old + (size_t)n : sizeof(c->loc) - 1;
    return old;
}

static void loc_pop(ctx *c, size_t old)
{
    c->loclen = old;
    c->loc[old] = '\0';
}

static cdx_err count(ctx *c, size_t n)
{
    if (n > CDX_FILTER_NODES_MAX || c->nodes > CDX_FILTER_NODES_MAX - n)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                        "filter: more than %d nodes (operators and operands; limit reached at "
                        "%s)",
                        CDX_FILTER_NODES_MAX, where(c));
    c->nodes += n;
    return CDX_OK;
}

static cdx_err oom(void)
{
    return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "filter: out of memory");
}

static int op_lookup(const char *key, size_t key_len)
{
    for (size_t i = 0; i < sizeof(op_names) / sizeof(op_names[0]); i++) {
        if (strlen(op_names[i]) == key_len && memcmp(op_names[i], key, key_len) == 0)
            return (int)i;
    }
    return -1;
}

static bool is_logical(const char *key)
{
    return strcmp(key, "$and") == 0 || strcmp(key, "$or") == 0;
}

static void operand_of(const json_t *j, operand *o)
{
    memset(o, 0, sizeof(*o));
    o->j = j;
    o->type = json_typeof(j);
    if (json_is_number(j)) {
        o->type = JSON_INTEGER;
        o->n = num_of(j);
    } else if (json_is_string(j)) {
        o->s = json_string_value(j);
        o->len = json_string_length(j);
    }
}

static cdx_err compile_object(ctx *c, const json_t *obj, node *out);

static cdx_err compile_ops(ctx *c, const json_t *obj, const char *owner, fop **out, size_t *nout);

static cdx_err compile_op(ctx *c, op_kind kind, const json_t *val, fop *op)
{
    const char *name = op_names[kind];

    op->kind = kind;
    switch (kind) {
    case OP_EQ:
    case OP_NE:
        operand_of(val, &op->val);
        return count(c, 2);
    case OP_GT:
    case OP_GTE:
    case OP_LT:
    case OP_LTE:
        if (!json_is_number(val) && !json_is_string(val))
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                            "filter: %s at %s expects a number or string, got %s", name, where(c),
                            eng_json_type_name(val));
        operand_of(val, &op->val);
        return count(c, 2);
    case OP_IN:
    case OP_NIN:
        if (!json_is_array(val))
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "filter: %s at %s expects an array, got %s",
                            name, where(c), eng_json_type_name(val));
        if (json_array_size(val) > ENG_FILTER_IN_MAX)
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                            "filter: %s at %s has %zu elements; the limit is %d", name, where(c),
                            json_array_size(val), ENG_FILTER_IN_MAX);
        if (count(c, 1 + json_array_size(val)) != CDX_OK)
            return CDX_ERR_INVALID_ARGUMENT;
        op->nvals = json_array_size(val);
        if (op->nvals == 0)
            return CDX_OK;
        op->vals = calloc(op->nvals, sizeof(*op->vals));
        if (!op->vals)
            return oom();
        for (size_t i = 0; i < op->nvals; i++)
            operand_of(json_array_get(val, i), &op->vals[i]);
        return CDX_OK;
    case OP_EXISTS:
        if (!json_is_boolean(val))
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                            "filter: $exists at %s expects true or false, got %s", where(c),
                            eng_json_type_name(val));
        op->exists = json_is_true(val);
        return count(c, 2);
    case OP_NOT:
        if (!json_is_object(val) || json_object_size(val) == 0)
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                            "filter: $not at %s expects a non-empty operator object such as "
                            "{\"$gt\": 5}, got %s%s",
                            where(c), json_is_object(val) ? "an empty " : "",
                            json_is_object(val) ? "object" : eng_json_type_name(val));
        if (count(c, 1) != CDX_OK)
            return CDX_ERR_INVALID_ARGUMENT;
        return compile_ops(c, val, "$not", &op->sub, &op->nsub);
    }
    return cdx_fail(CDX_ERR_INTERNAL, "filter: operator %d not handled", (int)kind);
}

/*
 * An operator object ({"$gt": 1, "$lt": 9}): every key must be an operator
 * usable on a field. `owner` is NULL for a field's object, "$not" inside $not.
 */
static cdx_err compile_ops(ctx *c, const json_t *obj, const char *owner, fop **out, size_t *nout)
{
    size_t i = 0;
    fop *ops;
    cdx_err err;

    ops = calloc(json_object_size(obj), sizeof(*ops));
    if (!ops)
        return oom();
    *out = ops;
    *nout = json_object_size(obj);
    for (void *it = json_object_iter((json_t *)obj); it;
         it = json_object_iter_next((json_t *)obj, it)) {
        const char *key = json_object_iter_key(it);
        int k;

        if (key[0] != '$') {
            if (owner)
                return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                                "filter: %s at %s expects operators, got plain key \"%s\"", owner,
                                where(c), key);
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                            "filter: operator object at %s mixes operators and plain keys "
                            "(\"%s\"); to match an object value use {\"$eq\": {...}}",
                            where(c), key);
        }
        if (is_logical(key))
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                            "filter: %s at %s cannot be used on a field; use it at the level of "
                            "fields: {\"%s\": [{...}, ...]}",
                            key, where(c), key);
        k = op_lookup(key, json_object_iter_key_len(it));
        if (k < 0)
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "filter: unknown operator %s at %s", key,
                            where(c));
        err = compile_op(c, (op_kind)k, json_object_iter_value(it), &ops[i++]);
        if (err != CDX_OK)
            return err;
    }
    return CDX_OK;
}

/* Split "a.b.c" into segments pointing into `key` (kept alive by the filter). */
static cdx_err compile_path(ctx *c, const char *key, size_t key_len, node *nd)
{
    size_t nseg = 1, start = 0;

    if (key_len == 0)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "filter: empty field name at %s", where(c));
    for (size_t i = 0; i < key_len; i++)
        nseg += key[i] == '.';
    nd->path = calloc(nseg, sizeof(*nd->path));
    if (!nd->path)
        return oom();
    for (size_t i = 0; i <= key_len; i++) {
        if (i < key_len && key[i] != '.')
            continue;
        if (i == start)
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                            "filter: field path \"%s\" at %s has an empty segment", key, where(c));
        if (key[start] == '$')
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                            "filter: field path \"%s\" at %s: segment \"%.*s\" starts with '$' "
                            "(field names must not start with '$')",
                            key, where(c), (int)(i - start), key + start);
        nd->path[nd->npath].p = key + start;
        nd->path[nd->npath].len = i - start;
        nd->npath++;
        start = i + 1;
    }
    return CDX_OK;
}

/* Does this object hold operators ({"$gt": 1}) rather than a literal value? */
static bool has_operator_key(const json_t *obj)
{
    for (void *it = json_object_iter((json_t *)obj); it;
         it = json_object_iter_next((json_t *)obj, it)) {
        if (json_object_iter_key(it)[0] == '$')
            return true;
    }
    return false;
}

static cdx_err compile_field(ctx *c, const char *key, size_t key_len, const json_t *val, node *nd)
{
    size_t old;
    cdx_err err;

    nd->kind = N_FIELD;
    err = compile_path(c, key, key_len, nd);
    if (err != CDX_OK)
        return err;
    old = loc_push(c, ".%s", key);
    if (json_is_object(val) && has_operator_key(val)) {
        err = compile_ops(c, val, NULL, &nd->ops, &nd->nops);
    } else {
        /* {"field": value} is {"field": {"$eq": value}}. */
        nd->ops = calloc(1, sizeof(*nd->ops));
        if (!nd->ops) {
            err = oom();
            goto out;
        }
        nd->nops = 1;
        err = compile_op(c, OP_EQ, val, &nd->ops[0]);
    }
out:
    loc_pop(c, old);
    return err;
}

static cdx_err compile_logical(ctx *c, const char *name, const json_t *val, node *nd)
{
    cdx_err err;

    nd->kind = strcmp(name, "$and") == 0 ? N_AND : N_OR;
    if (!json_is_array(val) || json_array_size(val) == 0)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                        "filter: %s at %s expects a non-empty array of filter objects, got %s%s",
                        name, where(c), json_is_array(val) ? "an empty " : "",
                        json_is_array(val) ? "array" : eng_json_type_name(val));
    err = count(c, 1);
    if (err != CDX_OK)
        return err;
    nd->kids = calloc(json_array_size(val), sizeof(*nd->kids));
    if (!nd->kids)
        return oom();
    nd->nkids = json_array_size(val);
    for (size_t i = 0; i < nd->nkids; i++) {
        const json_t *v = json_array_get(val, i);
        size_t old;

        if (!json_is_object(v))
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                            "filter: %s[%zu] at %s expects a filter object, got %s", name, i,
                            where(c), eng_json_type_name(v));
        old = loc_push(c, ".%s[%zu]", name, i);
        err = compile_object(c, v, &nd->kids[i]);
        loc_pop(c, old);
        if (err != CDX_OK)
            return err;
    }
    return CDX_OK;
}

/* A filter object: its keys (fields, $and, $or) are ANDed. */
static cdx_err compile_object(ctx *c, const json_t *obj, node *out)
{
    size_t i = 0;
    cdx_err err;

    out->kind = N_AND;
    if (json_object_size(obj) == 0)
        return CDX_OK;
    out->kids = calloc(json_object_size(obj), sizeof(*out->kids));
    if (!out->kids)
        return oom();
    out->nkids = json_object_size(obj);
    for (void *it = json_object_iter((json_t *)obj); it;
         it = json_object_iter_next((json_t *)obj, it)) {
        const char *key = json_object_iter_key(it);
        size_t key_len = json_object_iter_key_len(it);
        const json_t *v = json_object_iter_value(it);
        node *kid = &out->kids[i++];

        if (key[0] != '$') {
            err = compile_field(c, key, key_len, v, kid);
        } else if (is_logical(key)) {
            err = compile_logical(c, key, v, kid);
        } else if (op_lookup(key, key_len) >= 0) {
            err = cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                           "filter: %s at %s must be applied to a field: {\"field\": {\"%s\": "
                           "...}}",
                           key, where(c), key);
        } else {
            err = cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                           "filter: unknown operator %s at %s (field names must not start with "
                           "'$')",
                           key, where(c));
        }
        if (err != CDX_OK)
            return err;
    }
    return CDX_OK;
}

cdx_err eng_filter_parse(const char *text, size_t len, eng_filter **out)
{
    eng_filter *f = NULL;
    ctx c = {0};
    cdx_err err;

    *out = NULL;
    f = calloc(1, sizeof(*f));
    if (!f)
        return oom();
    f->root.kind = N_AND;
    if (len == 0) {
        *out = f;
        return CDX_OK;
    }
    err = eng_json_parse_object(text, len, CDX_FILTER_TEXT_MAX, &f->doc);
    if (err != CDX_OK) {
        char detail[512];

        /* The parser's detail is generic ("JSON text ..."): say what it was. */
        snprintf(detail, sizeof(detail), "%s", cdx_err_detail());
        cdx_fail(err, "filter: %s", detail);
        goto out;
    }
    err = compile_object(&c, f->doc, &f->root);
    if (err != CDX_OK)
        goto out;
    *out = f;
    f = NULL;
out:
    eng_filter_free(f);
    return err;
}

void eng_filter_free(eng_filter *f)
{
    if (!f)
        return;
    node_clear(&f->root);
    json_decref(f->doc);
    free(f);
}

bool eng_filter_is_trivial(const eng_filter *f)
{
    return !f || (f->root.kind == N_AND && f->root.nkids == 0);
}

/* ---- evaluating --------------------------------------------------------- */

/* The value at a path, or NULL when missing (a path through a non-object is missing). */
static const json_t *resolve(const json_t *md, const seg *path, size_t npath)
{
    const json_t *cur = md;

    for (size_t i = 0; i < npath; i++) {
        if (!json_is_object(cur))
            return NULL;
        cur = json_object_getn(cur, path[i].p, path[i].len);
    }
    return cur;
}

/* One value equals the operand (no array expansion). */
static bool value_eq(const json_t *v, const operand *o)
{
    switch (o->type) {
    case JSON_INTEGER:
        return json_is_number(v) && num_cmp(num_of(v), o->n) == 0;
    case JSON_STRING:
        return json_is_string(v) && json_string_length(v) == o->len &&
               memcmp(json_string_value(v), o->s, o->len) == 0;
    case JSON_TRUE:
    case JSON_FALSE:
    case JSON_NULL:
        return json_typeof(v) == o->type;
    default:
        return deep_eq(v, o->j);
    }
}

/* $eq: the value equals the operand, or the value is an array with an equal element. */
static bool eq_any(const json_t *v, const operand *o)
{
    if (value_eq(v, o))
        return true;
    for (size_t i = 0; json_is_array(v) && i < json_array_size(v); i++) {
        if (value_eq(json_array_get(v, i), o))
            return true;
    }
    return false;
}

/* One value against a $gt-style operand; a type mismatch is no match. */
static bool value_ord(const json_t *v, op_kind kind, const operand *o)
{
    int c;

    if (o->type == JSON_INTEGER && json_is_number(v))
        c = num_cmp(num_of(v), o->n);
    else if (o->type == JSON_STRING && json_is_string(v))
        c = str_cmp(json_string_value(v), json_string_length(v), o->s, o->len);
    else
        return false;
    switch (kind) {
    case OP_GT:
        return c > 0;
    case OP_GTE:
        return c >= 0;
    case OP_LT:
        return c < 0;
    default:
        return c <= 0;
    }
}

static bool ord_any(const json_t *v, op_kind kind, const operand *o)
{
    if (!json_is_array(v))
        return value_ord(v, kind, o);
    for (size_t i = 0; i < json_array_size(v); i++) {
        if (value_ord(json_array_get(v, i), kind, o))
            return true;
    }
    return false;
}

static bool in_any(const json_t *v, const fop *op)
{
    for (size_t i = 0; i < op->nvals; i++) {
        if (eq_any(v, &op->vals[i]))
            return true;
    }
    return false;
}

static bool match_ops(const fop *ops, size_t n, const json_t *v);

/* `v` is NULL when the field is missing. */
static bool match_op(const fop *op, const json_t *v)
{
    switch (op->kind) {
    case OP_EQ:
        return v && eq_any(v, &op->val);
    case OP_NE:
        return !(v && eq_any(v, &op->val));
    case OP_GT:
    case OP_GTE:
    case OP_LT:
    case OP_LTE:
        return v && ord_any(v, op->kind, &op->val);
    case OP_IN:
        return v && in_any(v, op);
    case OP_NIN:
        return !(v && in_any(v, op));
    case OP_EXISTS:
        return (v != NULL) == op->exists;
    case OP_NOT:
        return !match_ops(op->sub, op->nsub, v);
    }
    return false;
}

static bool match_ops(const fop *ops, size_t n, const json_t *v)
{
    for (size_t i = 0; i < n; i++) {
        if (!match_op(&ops[i], v))
            return false;
    }
    return true;
}

static bool match_node(const node *nd, const json_t *md)
{
    switch (nd->kind) {
    case N_AND:
        for (size_t i = 0; i < nd->nkids; i++) {
            if (!match_node(&nd->kids[i], md))
                return false;
        }
        return true;
    case N_OR:
        for (size_t i = 0; i < nd->nkids; i++) {
            if (match_node(&nd->kids[i], md))
                return true;
        }
        return false;
    case N_FIELD:
        return match_ops(nd->ops, nd->nops, resolve(md, nd->path, nd->npath));
    }
    return false;
}

bool eng_filter_match(const eng_filter *f, const json_t *metadata)
{
    if (!f)
        return true;
    /* No metadata behaves as {}: every path is missing. */
    return match_node(&f->root, json_is_object(metadata) ? metadata : NULL);
}
