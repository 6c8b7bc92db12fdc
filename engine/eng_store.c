/*
 * eng_store.c - the backend-independent part of the store: argument
 * validation, output hygiene and dispatch through the backend's ops.
 *
 * Validation lives here once so every backend (and the fault wrapper in
 * front of them) refuses exactly the same inputs.
 */
#include "eng_store_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cdx_limits.h"

void eng_vals_free(eng_val *v, size_t n)
{
    if (!v)
        return;
    for (size_t i = 0; i < n; i++) {
        free(v[i].data);
        v[i].data = NULL;
        v[i].len = 0;
        v[i].found = false;
    }
}

void eng_keys_free(char **keys, size_t n)
{
    if (!keys)
        return;
    for (size_t i = 0; i < n; i++)
        free(keys[i]);
    free(keys);
}

bool eng_store_key_ok(const char *s)
{
    size_t i;

    if (!s)
        return false;
    /* Printable ASCII without space: keys travel in logs and redis-cli sessions unquoted. */
    for (i = 0; s[i]; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i >= CDX_STORE_KEY_MAX || c <= 0x20 || c >= 0x7f)
            return false;
    }
    return i > 0;
}

cdx_err eng_val_copy(eng_val *v, const void *data, size_t len)
{
    v->data = malloc(len ? len : 1);
    if (!v->data)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory copying a %zu-byte value", len);
    if (len)
        memcpy(v->data, data, len);
    v->len = len;
    v->found = true;
    return CDX_OK;
}

/* One token of a glob pattern against one character; *tlen gets the token's length. */
static bool glob_token(const char *p, size_t plen, unsigned char c, size_t *tlen)
{
    if (p[0] == '?') {
        *tlen = 1;
        return true;
    }
    if (p[0] == '\\' && plen >= 2) {
        *tlen = 2;
        return (unsigned char)p[1] == c;
    }
    if (p[0] != '[') {
        *tlen = 1;
        return (unsigned char)p[0] == c;
    }
    size_t i = 1;
    bool neg = false, hit = false;
    if (i < plen && p[i] == '^') {
        neg = true;
        i++;
    }
    for (;;) {
        if (i >= plen)
            break; /* unterminated: the class runs to the end of the pattern (Redis) */
        if (p[i] == '\\' && i + 1 < plen) {
            hit |= (unsigned char)p[i + 1] == c;
            i += 2;
        } else if (p[i] == ']') {
            i++;
            break;
        } else if (i + 2 < plen && p[i + 1] == '-') {
            unsigned char lo = (unsigned char)p[i], hi = (unsigned char)p[i + 2];
            if (lo > hi) {
                unsigned char t = lo;
                lo = hi;
                hi = t;
            }
            hit |= c >= lo && c <= hi;
            i += 3;
        } else {
            hit |= (unsigned char)p[i] == c;
            i++;
        }
    }
    *tlen = i;
    return neg ? !hit : hit;
}

bool eng_glob_match(const char *pat, size_t plen, const char *str, size_t slen)
{
    /* Every token but `*` matches exactly one character, so backtracking to the last star suffices.
     */
    size_t pi = 0, si = 0, star_p = SIZE_MAX, star_s = 0;

    while (si < slen) {
        if (pi < plen && pat[pi] == '*') {
            while (pi < plen && pat[pi] == '*')
                pi++;
            if (pi == plen)
                return true;
            star_p = pi;
            star_s = si;
            continue;
        }
        size_t tl = 0;
        if (pi < plen && glob_token(pat + pi, plen - pi, (unsigned char)str[si], &tl)) {
            pi += tl;
            si++;
            continue;
        }
        if (star_p == SIZE_MAX)
            return false;
        pi = star_p;
        si = ++star_s;
    }
    while (pi < plen && pat[pi] == '*')
        pi++;
    return pi == plen;
}

/* ---- validation ---- */

static cdx_err check_store(const eng_store *s, const char *op)
{
    if (!s || !s->ops)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "%s: store is NULL", op);
    return CDX_OK;
}

static cdx_err check_n(size_t n, const void *arr, const char *op)
{
    if (n > CDX_STORE_BATCH_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                        "%s: %zu keys in one call, the limit is %d: split the batch", op, n,
                        CDX_STORE_BATCH_MAX);
    if (n > 0 && !arr)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "%s: %zu keys but a NULL array", op, n);
    return CDX_OK;
}

static cdx_err check_key(const char *key, const char *op, size_t i)
{
    if (!eng_store_key_ok(key))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                        "%s: key %zu is %s: keys are 1-%d bytes of printable ASCII without spaces",
                        op, i, key ? "invalid" : "NULL", CDX_STORE_KEY_MAX);
    return CDX_OK;
}

static cdx_err check_keys(const char *const *keys, size_t n, const char *op)
{
    cdx_err e = check_n(n, keys, op);
    for (size_t i = 0; e == CDX_OK && i < n; i++)
        e = check_key(keys[i], op, i);
    return e;
}

static cdx_err check_kvs(const eng_kv *kv, size_t n, const char *op)
{
    uint64_t total = 0;
    cdx_err e = check_n(n, kv, op);

    for (size_t i = 0; e == CDX_OK && i < n; i++) {
        e = check_key(kv[i].key, op, i);
        if (e != CDX_OK)
            break;
        if (kv[i].len > CDX_STORE_VALUE_MAX)
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                            "%s: value %zu is %zu bytes, the limit is %u: store it in blocks", op,
                            i, kv[i].len, CDX_STORE_VALUE_MAX);
        if (kv[i].len > 0 && !kv[i].val)
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "%s: value %zu is NULL with length %zu", op,
                            i, kv[i].len);
        total += kv[i].len;
        if (total > CDX_STORE_REPLY_MAX)
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                            "%s: the values add up to more than %u bytes: split the batch", op,
                            CDX_STORE_REPLY_MAX);
    }
    return e;
}

static void zero_vals(eng_val *out, size_t n)
{
    if (out && n)
        memset(out, 0, n * sizeof(*out));
}

/* ---- dispatch ---- */

void eng_store_free(eng_store *s)
{
    if (s && s->ops)
        s->ops->free(s);
}

const char *eng_store_kind(const eng_store *s)
{
    return s && s->ops ? s->ops->kind(s) : "(null)";
}

void eng_store_retry_now(eng_store *s)
{
    if (s && s->ops && s->ops->retry_now)
        s->ops->retry_now(s);
}

cdx_err eng_store_mget(eng_store *s, const char *const *keys, size_t n, eng_val *out)
{
    cdx_err e = check_store(s, "mget");

    if (e == CDX_OK)
        e = check_keys(keys, n, "mget");
    if (e == CDX_OK && n > 0 && !out)
        e = cdx_fail(CDX_ERR_INVALID_ARGUMENT, "mget: out is NULL");
    if (e != CDX_OK)
        return e;
    zero_vals(out, n);
    if (n == 0)
        return CDX_OK;
    e = s->ops->mget(s, keys, n, out);
    if (e != CDX_OK)
        eng_vals_free(out, n);
    return e;
}

cdx_err eng_store_getrange(eng_store *s, const eng_range *r, size_t n, eng_val *out)
{
    cdx_err e = check_store(s, "getrange");

    if (e == CDX_OK)
        e = check_n(n, r, "getrange");
    for (size_t i = 0; e == CDX_OK && i < n; i++) {
        e = check_key(r[i].key, "getrange", i);
        if (e == CDX_OK && (r[i].len > CDX_STORE_VALUE_MAX || r[i].off > (uint64_t)INT64_MAX ||
                            r[i].len > (uint64_t)INT64_MAX - r[i].off))
            e = cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                         "getrange: range %zu (offset %llu, length %llu) is out of bounds: at most "
                         "%u bytes below 2^63",
                         i, (unsigned long long)r[i].off, (unsigned long long)r[i].len,
                         CDX_STORE_VALUE_MAX);
    }
    if (e == CDX_OK && n > 0 && !out)
        e = cdx_fail(CDX_ERR_INVALID_ARGUMENT, "getrange: out is NULL");
    if (e != CDX_OK)
        return e;
    zero_vals(out, n);
    if (n == 0)
        return CDX_OK;
    e = s->ops->getrange(s, r, n, out);
    if (e != CDX_OK)
        eng_vals_free(out, n);
    return e;
}

cdx_err eng_store_strlen(eng_store *s, const char *const *keys, size_t n, uint64_t *len)
{
    cdx_err e = check_store(s, "strlen");

    if (e == CDX_OK)
        e = check_keys(keys, n, "strlen");
    if (e == CDX_OK && n > 0 && !len)
        e = cdx_fail(CDX_ERR_INVALID_ARGUMENT, "strlen: len is NULL");
    if (e != CDX_OK)
        return e;
    if (n == 0)
        return CDX_OK;
    memset(len, 0, n * sizeof(*len));
    e = s->ops->strlen(s, keys, n, len);
    if (e != CDX_OK)
        memset(len, 0, n * sizeof(*len));
    return e;
}

cdx_err eng_store_setnx(eng_store *s, const eng_kv *kv, size_t n, bool *created)
{
    cdx_err e = check_store(s, "setnx");

    if (e == CDX_OK)
        e = check_kvs(kv, n, "setnx");
    if (e == CDX_OK && n > 0 && !created)
        e = cdx_fail(CDX_ERR_INVALID_ARGUMENT, "setnx: created is NULL");
    if (e != CDX_OK)
        return e;
    if (n == 0)
        return CDX_OK;
    memset(created, 0, n * sizeof(*created));
    return s->ops->setnx(s, kv, n, created);
}

cdx_err eng_store_set(eng_store *s, const eng_kv *kv, size_t n)
{
    cdx_err e = check_store(s, "set");

    if (e == CDX_OK)
        e = check_kvs(kv, n, "set");
    if (e != CDX_OK || n == 0)
        return e;
    return s->ops->set(s, kv, n);
}

cdx_err eng_store_del(eng_store *s, const char *const *keys, size_t n, uint64_t *deleted)
{
    uint64_t dummy = 0;
    cdx_err e = check_store(s, "del");

    if (deleted)
        *deleted = 0;
    if (e == CDX_OK)
        e = check_keys(keys, n, "del");
    if (e != CDX_OK || n == 0)
        return e;
    return s->ops->del(s, keys, n, deleted ? deleted : &dummy);
}

cdx_err eng_store_scan(eng_store *s, const char *match, uint64_t *cursor, char ***keys, size_t *n)
{
    cdx_err e = check_store(s, "scan");

    if (keys)
        *keys = NULL;
    if (n)
        *n = 0;
    if (e != CDX_OK)
        return e;
    if (!cursor || !keys || !n)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "scan: cursor, keys and n must not be NULL");
    if (!match || !match[0] || strlen(match) > CDX_STORE_KEY_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "scan: the pattern must be 1-%d bytes",
                        CDX_STORE_KEY_MAX);
    e = s->ops->scan(s, match, cursor, keys, n);
    if (e != CDX_OK) {
        eng_keys_free(*keys, *n);
        *keys = NULL;
        *n = 0;
    }
    return e;
}

cdx_err eng_store_watch(eng_store *s, const char *key, eng_txn **txn, eng_val *cur)
{
    cdx_err e = check_store(s, "watch");

    if (txn)
        *txn = NULL;
    zero_vals(cur, 1);
    if (e == CDX_OK)
        e = check_key(key, "watch", 0);
    if (e == CDX_OK && (!txn || !cur))
        e = cdx_fail(CDX_ERR_INVALID_ARGUMENT, "watch: txn and cur must not be NULL");
    if (e != CDX_OK)
        return e;
    e = s->ops->watch(s, key, txn, cur);
    if (e != CDX_OK) {
        eng_vals_free(cur, 1);
        *txn = NULL;
    }
    return e;
}

cdx_err eng_store_commit(eng_txn *t, const eng_kv *kv, size_t n, bool *committed)
{
    cdx_err e;

    if (committed)
        *committed = false;
    if (!t)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "commit: transaction is NULL");
    e = check_kvs(kv, n, "commit");
    if (e == CDX_OK && !committed)
        e = cdx_fail(CDX_ERR_INVALID_ARGUMENT, "commit: committed is NULL");
    if (e != CDX_OK) {
        /* The contract frees the transaction whatever happens. */
        t->store->ops->abort(t);
        return e;
    }
    return t->store->ops->commit(t, kv, n, committed);
}

void eng_store_abort(eng_txn *t)
{
    if (t)
        t->store->ops->abort(t);
}

cdx_err eng_store_check(eng_store *s, char *desc, size_t cap)
{
    cdx_err e = check_store(s, "check");

    if (e != CDX_OK)
        return e;
    if (!desc || cap == 0)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "check: desc buffer is empty");
    desc[0] = '\0';
    char why[ENG_DURABILITY_WHY_MAX] = "";
    return s->ops->check(s, desc, cap, why, sizeof(why));
}

cdx_err eng_store_durability(eng_store *s, eng_durability *out)
{
    cdx_err e = check_store(s, "durability");

    if (e != CDX_OK)
        return e;
    if (!out)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "durability: out is NULL");
    memset(out, 0, sizeof(*out));
    e = s->ops->check(s, out->settings, sizeof(out->settings), out->why, sizeof(out->why));
    out->refused = e == CDX_ERR_CONFIG;
    out->degraded = out->refused || out->why[0];
    if (out->refused && !out->why[0]) /* a backend that refuses says why; be safe anyway */
        snprintf(out->why, sizeof(out->why), "%s", cdx_err_detail());
    return e == CDX_ERR_CONFIG ? CDX_OK : e;
}
