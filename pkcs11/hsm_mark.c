/*
 * Rollback marks on the token (hsm_mark.h): one CKO_DATA object per index.
 * This is the only C_CreateObject of a token object in the daemon library;
 * it makes data, never a key.
 */
#include "hsm_mark.h"

#include <stdio.h>
#include <string.h>

#include "cdx_hex.h"
#include "cdx_log.h"
#include "hsm_internal.h"

#define MARK_MAGIC   "cdxmark1"
#define MARK_LEN     21
#define MARK_MAX_DUP 8 /* objects with one mark's label merged at once */

static const char APP[] = "cipherdex";

static void mark_label(const uint8_t id[CDX_ID_LEN], char out[CDX_LABEL_MAX + 1])
{
    char h[2 * CDX_ID_LEN + 1];
    cdx_hex_encode(id, CDX_ID_LEN, h);
    snprintf(out, CDX_LABEL_MAX + 1, "cipherdex-mark-%s", h);
}

static void mark_encode(const hsm_mark *m, uint8_t out[MARK_LEN])
{
    memcpy(out, MARK_MAGIC, 8);
    for (int i = 0; i < 8; i++)
        out[8 + i] = (uint8_t)(m->version >> (56 - 8 * i));
    out[16] = m->deleted ? 1 : 0;
    for (int i = 0; i < 4; i++)
        out[17 + i] = (uint8_t)(m->gen >> (24 - 8 * i));
}

static cdx_err mark_decode(const uint8_t *p, CK_ULONG n, hsm_mark *m)
{
    if (n != MARK_LEN || memcmp(p, MARK_MAGIC, 8) || p[16] > 1)
        return cdx_fail(CDX_ERR_INTEGRITY, "a rollback mark on the token is malformed");
    m->version = 0;
    for (int i = 0; i < 8; i++)
        m->version = m->version << 8 | p[8 + i];
    m->deleted = p[16] == 1;
    m->gen = 0;
    for (int i = 0; i < 4; i++)
        m->gen = m->gen << 8 | p[17 + i];
    return CDX_OK;
}

/* Merge m into `into`: a later generation replaces it (an accepted rollback); within one,
 * the higher version, and deleted once deleted. */
static void mark_merge(hsm_mark *into, const hsm_mark *m)
{
    if (m->gen != into->gen) {
        if (m->gen > into->gen)
            *into = *m;
        return;
    }
    if (m->version > into->version)
        into->version = m->version;
    into->deleted = into->deleted || m->deleted;
}

/* Every object with the mark's label (up to MARK_MAX_DUP). */
static cdx_err find_all(hsm_custody *c, CK_SESSION_HANDLE s, const uint8_t id[CDX_ID_LEN],
                        CK_OBJECT_HANDLE *h, CK_ULONG *got, CK_RV *rv)
{
    CK_OBJECT_CLASS data = CKO_DATA;
    char label[CDX_LABEL_MAX + 1];
    mark_label(id, label);
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &data, sizeof(data)},
        {CKA_LABEL, label, strlen(label)},
        {CKA_APPLICATION, (void *)APP, sizeof(APP) - 1},
    };
    *got = 0;
    CK_RV r = c->f->C_FindObjectsInit(s, t, 3);
    if (r == CKR_OK) {
        r = c->f->C_FindObjects(s, h, MARK_MAX_DUP, got);
        CK_RV r2 = c->f->C_FindObjectsFinal(s);
        if (r == CKR_OK)
            r = r2;
    }
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "C_FindObjects (rollback mark)");
    }
    return CDX_OK;
}

/* Every object with the mark's label and their merged value. */
static cdx_err mark_find(hsm_custody *c, CK_SESSION_HANDLE s, const uint8_t id[CDX_ID_LEN],
                         CK_OBJECT_HANDLE *h, unsigned *n, hsm_mark *merged, CK_RV *rv)
{
    char label[CDX_LABEL_MAX + 1];
    mark_label(id, label);
    CK_ULONG got = 0;
    *n = 0;
    memset(merged, 0, sizeof(*merged));
    cdx_err err = find_all(c, s, id, h, &got, rv);
    if (err)
        return err;
    CK_RV r;
    for (CK_ULONG i = 0; i < got; i++) {
        uint8_t v[MARK_LEN + 1];
        CK_ATTRIBUTE a = {CKA_VALUE, v, sizeof(v)};
        r = c->f->C_GetAttributeValue(s, h[i], &a, 1);
        if (r == CKR_BUFFER_TOO_SMALL)
            return cdx_fail(CDX_ERR_INTEGRITY, "the rollback mark %s on the token is malformed",
                            label);
        if (r != CKR_OK) {
            *rv = r;
            return hsm_ckr_fail(r, "C_GetAttributeValue (rollback mark)");
        }
        hsm_mark m = {0};
        if ((err = mark_decode(v, a.ulValueLen, &m)))
            return cdx_prefix(err, "%s: ", label);
        mark_merge(merged, &m);
    }
    *n = (unsigned)got;
    return CDX_OK;
}

struct mark_arg {
    const uint8_t *id;
    hsm_mark m;   /* in: what to write */
    bool exact;   /* set, not merge */
    bool remove;  /* destroy every copy */
    bool found;   /* out */
    hsm_mark out; /* out: what the token holds afterwards */
};

static cdx_err read_op(hsm_custody *c, CK_SESSION_HANDLE s, void *arg, CK_RV *rv)
{
    struct mark_arg *a = arg;
    CK_OBJECT_HANDLE h[MARK_MAX_DUP];
    unsigned n;
    cdx_err err = mark_find(c, s, a->id, h, &n, &a->out, rv);
    a->found = n > 0;
    return err;
}

/* Destroy objects h[from..n). */
static cdx_err destroy_from(hsm_custody *c, CK_SESSION_HANDLE s, const CK_OBJECT_HANDLE *h,
                            unsigned from, unsigned n, CK_RV *rv)
{
    for (unsigned i = from; i < n; i++) {
        CK_RV r = c->f->C_DestroyObject(s, h[i]);
        if (r != CKR_OK && r != CKR_OBJECT_HANDLE_INVALID) { /* invalid: another writer won */
            *rv = r;
            return hsm_ckr_fail(r, "C_DestroyObject (rollback mark)");
        }
    }
    return CDX_OK;
}

/*
 * Write: merge (or set) into a new object, then destroy the old ones (tokens
 * keep a data object's CKA_VALUE read-only: SoftHSM 2.6.1 answers
 * CKR_ATTRIBUTE_READ_ONLY). A merge creates before it destroys, so a failure
 * between leaves two objects that the next read merges; an exact set (which
 * may lower the mark) destroys first, so it leaves at worst no token mark.
 * Idempotent: repeating it after an interrupted attempt gives the same mark.
 */
static cdx_err write_op(hsm_custody *c, CK_SESSION_HANDLE s, void *arg, CK_RV *rv)
{
    struct mark_arg *a = arg;
    CK_OBJECT_HANDLE h[MARK_MAX_DUP];
    unsigned n;
    hsm_mark cur;
    cdx_err err = mark_find(c, s, a->id, h, &n, &cur, rv);
    if (err == CDX_ERR_INTEGRITY && (a->exact || a->remove)) {
        /* An operator's explicit value replaces a malformed one: find the objects again. */
        CK_ULONG got = 0;
        if ((err = find_all(c, s, a->id, h, &got, rv)))
            return err;
        n = (unsigned)got;
        err = CDX_OK;
    }
    if (err)
        return err;
    if (a->remove || a->exact) {
        if ((err = destroy_from(c, s, h, 0, n, rv)) || a->remove)
            return err;
        n = 0;
    }
    hsm_mark w = a->m;
    if (a->exact) /* a new generation: every appliance adopts it as it is */
        w.gen = (a->m.gen > cur.gen ? a->m.gen : cur.gen) + 1;
    else if (n && cur.gen >= w.gen)
        mark_merge(&w, &cur); /* else: the token lost its mark or holds an older generation */
    a->out = w;
    if (n == 1 && w.version == cur.version && w.deleted == cur.deleted && w.gen == cur.gen)
        return CDX_OK; /* nothing new */
    uint8_t v[MARK_LEN];
    mark_encode(&w, v);
    CK_OBJECT_CLASS data = CKO_DATA;
    CK_BBOOL yes = CK_TRUE;
    char label[CDX_LABEL_MAX + 1];
    mark_label(a->id, label);
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &data, sizeof(data)},
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_LABEL, label, strlen(label)},
        {CKA_APPLICATION, (void *)APP, sizeof(APP) - 1},
        {CKA_VALUE, v, MARK_LEN},
    };
    CK_OBJECT_HANDLE nh;
    CK_RV r = c->f->C_CreateObject(s, t, sizeof(t) / sizeof(t[0]), &nh);
    if (r == CKR_ATTRIBUTE_VALUE_INVALID || r == CKR_TEMPLATE_INCONSISTENT) {
        /* NSS softokn keeps no private data objects (CKR_ATTRIBUTE_VALUE_INVALID): a public one
         * then. The mark is no secret; on such a token whoever opens a session could edit it. */
        CK_BBOOL no = CK_FALSE;
        t[2].pValue = &no;
        if ((r = c->f->C_CreateObject(s, t, sizeof(t) / sizeof(t[0]), &nh)) == CKR_OK &&
            !atomic_exchange(&c->mark_public_warned, true)) {
            cdx_log(CDX_LOG_WARN, "hsm_mark_public",
                    "msg=\"the token refuses private data objects: rollback marks are public "
                    "token objects here (anyone with a session could edit them)\"");
        }
    }
    if (r == CKR_ATTRIBUTE_VALUE_INVALID || r == CKR_TEMPLATE_INCONSISTENT ||
        r == CKR_ATTRIBUTE_TYPE_INVALID)
        return cdx_fail(CDX_ERR_MECHANISM_UNSUPPORTED,
                        "the token refuses data objects (C_CreateObject: %s): no rollback marks "
                        "on it; set [state] token_mark_ms = 0",
                        hsm_ckr_name(r));
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "C_CreateObject (rollback mark)");
    }
    return destroy_from(c, s, h, 0, n, rv);
}

cdx_err hsm_mark_read(hsm_custody *c, const uint8_t id[CDX_ID_LEN], hsm_mark *m, bool *found)
{
    struct mark_arg a = {.id = id};
    cdx_err err = hsm_run(c, read_op, &a, true);
    *m = err ? (hsm_mark){0} : a.out;
    *found = !err && a.found;
    return err;
}

static cdx_err mark_write(hsm_custody *c, struct mark_arg *a)
{
    /* Idempotent: a merge, an exact set and a removal all converge when repeated. */
    return hsm_run(c, write_op, a, true);
}

cdx_err hsm_mark_raise(hsm_custody *c, const uint8_t id[CDX_ID_LEN], const hsm_mark *m,
                       hsm_mark *out)
{
    struct mark_arg a = {.id = id, .m = *m};
    cdx_err err = mark_write(c, &a);
    if (!err && out)
        *out = a.out;
    return err;
}

cdx_err hsm_mark_set(hsm_custody *c, const uint8_t id[CDX_ID_LEN], const hsm_mark *m, hsm_mark *out)
{
    struct mark_arg a = {.id = id, .m = *m, .exact = true};
    cdx_err err = mark_write(c, &a);
    if (!err && out)
        *out = a.out;
    if (!err) {
        char h[2 * CDX_ID_LEN + 1];
        cdx_hex_encode(id, CDX_ID_LEN, h);
        cdx_log(CDX_LOG_WARN, "hsm_mark_set", "index_id=%s version=%llu deleted=%d gen=%u", h,
                (unsigned long long)a.out.version, a.out.deleted, a.out.gen);
    }
    return err;
}

cdx_err hsm_mark_remove(hsm_custody *c, const uint8_t id[CDX_ID_LEN])
{
    struct mark_arg a = {.id = id, .remove = true};
    return mark_write(c, &a);
}
