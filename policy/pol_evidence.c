/* Attestation evidence: DER encoding, strict parsing, verification (pol_evidence.h). */
#include "pol_evidence.h"
#include "pol_evidence_oids.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "cdx_hex.h"
#include "cdx_limits.h"
#include "cdx_utf8.h"

/* ---- the table ---- */

static const uint8_t ARC[] = {CDX_EV_ARC_DER};
static const uint8_t ECDSA_SHA256[] = {CDX_EV_ECDSA_SHA256_DER};

static const struct claim_def {
    pol_ev_entity entity;
    uint8_t n;
    pol_ev_type type;
    unsigned flags;
    const char *name;
} CLAIMS[POL_EV_NCLAIMS] = {
#define ROW(e, ent, num, t, f, nm) [e] = {ent, num, t, f, nm},
    CDX_EV_CLAIMS(ROW)
#undef ROW
};

static const struct ent_def {
    uint8_t n;
    const char *name;
} ENTS[POL_EV_NENTITIES] = {
#define ROW(e, num, nm) [e] = {num, nm},
    CDX_EV_ENTITIES(ROW)
#undef ROW
};

const char *pol_ev_entity_name(pol_ev_entity e)
{
    return (unsigned)e < POL_EV_NENTITIES ? ENTS[e].name : "?";
}

const char *pol_ev_claim_name(pol_ev_claim c)
{
    return (unsigned)c < POL_EV_NCLAIMS ? CLAIMS[c].name : "?";
}

pol_ev_entity pol_ev_claim_entity(pol_ev_claim c)
{
    return (unsigned)c < POL_EV_NCLAIMS ? CLAIMS[c].entity : POL_EV_NENTITIES;
}

pol_ev_type pol_ev_claim_type(pol_ev_claim c)
{
    return (unsigned)c < POL_EV_NCLAIMS ? CLAIMS[c].type : POL_EV_T_BYTES;
}

void pol_ev_claim_oid_text(pol_ev_claim c, char *buf, size_t cap)
{
    if ((unsigned)c >= POL_EV_NCLAIMS) {
        snprintf(buf, cap, "?");
        return;
    }
    snprintf(buf, cap, "%s.1.%u.%u", CDX_EV_ARC_TEXT, ENTS[CLAIMS[c].entity].n, CLAIMS[c].n);
}

/* ---- DER writing ---- */

typedef struct dbuf {
    uint8_t *p;
    size_t n, cap;
    bool oom;
} dbuf;

static void put(dbuf *d, const void *src, size_t n)
{
    if (d->oom || n == 0)
        return;
    if (d->n + n > d->cap) {
        size_t cap = d->cap ? d->cap : 256;
        while (cap < d->n + n)
            cap *= 2;
        uint8_t *p = realloc(d->p, cap);
        if (!p) {
            d->oom = true;
            return;
        }
        d->p = p;
        d->cap = cap;
    }
    memcpy(d->p + d->n, src, n);
    d->n += n;
}

static void put_hdr(dbuf *d, uint8_t tag, size_t len)
{
    uint8_t h[5];
    size_t k = 0;
    h[k++] = tag;
    if (len < 0x80)
        h[k++] = (uint8_t)len;
    else if (len < 0x100) {
        h[k++] = 0x81;
        h[k++] = (uint8_t)len;
    } else if (len < 0x10000) {
        h[k++] = 0x82;
        h[k++] = (uint8_t)(len >> 8);
        h[k++] = (uint8_t)len;
    } else {
        h[k++] = 0x83;
        h[k++] = (uint8_t)(len >> 16);
        h[k++] = (uint8_t)(len >> 8);
        h[k++] = (uint8_t)len;
    }
    put(d, h, k);
}

static void put_tlv(dbuf *d, uint8_t tag, const void *v, size_t len)
{
    put_hdr(d, tag, len);
    put(d, v, len);
}

/* Wrap inner's bytes in a TLV of tag into d, and free inner. */
static void put_wrap(dbuf *d, uint8_t tag, dbuf *inner)
{
    if (inner->oom)
        d->oom = true;
    put_tlv(d, tag, inner->p, inner->n);
    free(inner->p);
    memset(inner, 0, sizeof(*inner));
}

/* Minimal two's complement of v. */
static size_t int_bytes(int64_t v, uint8_t out[8])
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)v >> (56 - 8 * i));
    size_t s = 0;
    while (s < 7 && ((b[s] == 0x00 && !(b[s + 1] & 0x80)) || (b[s] == 0xff && (b[s + 1] & 0x80))))
        s++;
    memcpy(out, b + s, 8 - s);
    return 8 - s;
}

static void put_int(dbuf *d, uint8_t tag, int64_t v)
{
    uint8_t b[8];
    size_t n = int_bytes(v, b);
    put_tlv(d, tag, b, n);
}

/* Days since 1970-01-01 of a proleptic Gregorian date. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned dd)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + dd - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

/* "YYYYMMDDHHMMSSZ" of t (1970..9999). */
static bool time_text(int64_t t, char out[16])
{
    if (t < 0 || t > 253402300799LL)
        return false;
    time_t tt = (time_t)t;
    struct tm tm;
    if (!gmtime_r(&tt, &tm))
        return false;
    strftime(out, 16, "%Y%m%d%H%M%SZ", &tm);
    return strlen(out) == 15;
}

static void put_oid(dbuf *d, const uint8_t *suffix, size_t n)
{
    put_hdr(d, 0x06, sizeof(ARC) + n);
    put(d, ARC, sizeof(ARC));
    put(d, suffix, n);
}

static void put_value(dbuf *d, const pol_ev_value *v)
{
    uint8_t tag = (uint8_t)(0x80 | v->type);
    switch (v->type) {
    case POL_EV_T_BYTES:
    case POL_EV_T_UTF8:
    case POL_EV_T_OID:
        put_tlv(d, tag, v->data, v->len);
        break;
    case POL_EV_T_BOOL:
        put_tlv(d, tag, (uint8_t[]){v->b ? 0xff : 0x00}, 1);
        break;
    case POL_EV_T_INT:
        put_int(d, tag, v->i);
        break;
    case POL_EV_T_TIME: {
        char t[16];
        if (!time_text(v->i, t))
            d->oom = true; /* cannot happen: checked when added or parsed */
        put_tlv(d, tag, t, 15);
        break;
    }
    }
}

/* DER TbsPkixEvidence of vals (grouped by entity, in order within each). */
static cdx_err encode_tbs(const pol_ev_value *vals, size_t n, uint8_t **out, size_t *len)
{
    dbuf ents = {0};
    for (unsigned e = 0; e < POL_EV_NENTITIES; e++) {
        dbuf attrs = {0}, ent = {0};
        for (size_t i = 0; i < n; i++) {
            const pol_ev_value *v = &vals[i];
            if (CLAIMS[v->claim].entity != e)
                continue;
            dbuf a = {0};
            put_oid(&a, (uint8_t[]){1, ENTS[e].n, CLAIMS[v->claim].n}, 3);
            if (v->present)
                put_value(&a, v);
            put_wrap(&attrs, 0x30, &a);
        }
        put_oid(&ent, (uint8_t[]){0, ENTS[e].n}, 2);
        put_wrap(&ent, 0x30, &attrs);
        put_wrap(&ents, 0x30, &ent);
    }
    dbuf tbs = {0}, outer = {0};
    put_int(&tbs, 0x02, POL_EV_VERSION);
    put_wrap(&tbs, 0x30, &ents);
    put_wrap(&outer, 0x30, &tbs);
    if (outer.oom) {
        free(outer.p);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory encoding evidence");
    }
    *out = outer.p;
    *len = outer.n;
    return CDX_OK;
}

/* ---- the builder ---- */

struct pol_ev_builder {
    pol_ev_value v[CDX_EVIDENCE_CLAIMS_MAX];
    size_t n;
};

cdx_err pol_ev_builder_new(pol_ev_builder **out)
{
    *out = calloc(1, sizeof(**out));
    return *out ? CDX_OK : cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
}

void pol_ev_builder_free(pol_ev_builder *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->n; i++)
        free((void *)b->v[i].data);
    free(b);
}

static cdx_err add(pol_ev_builder *b, pol_ev_claim c, pol_ev_type t, bool present,
                   pol_ev_value **slot)
{
    if ((unsigned)c >= POL_EV_NCLAIMS)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "unknown evidence claim %d", (int)c);
    if (present && CLAIMS[c].type != t)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "evidence claim %s has another value type",
                        CLAIMS[c].name);
    if (!(CLAIMS[c].flags & POL_EV_F_M))
        for (size_t i = 0; i < b->n; i++)
            if (b->v[i].claim == c)
                return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "evidence claim %s added twice",
                                CLAIMS[c].name);
    if (b->n == CDX_EVIDENCE_CLAIMS_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "more than %d evidence claims",
                        CDX_EVIDENCE_CLAIMS_MAX);
    pol_ev_value *v = &b->v[b->n++];
    memset(v, 0, sizeof(*v));
    v->claim = c;
    v->type = CLAIMS[c].type;
    v->present = present;
    *slot = v;
    return CDX_OK;
}

static cdx_err add_data(pol_ev_builder *b, pol_ev_claim c, pol_ev_type t, const void *data,
                        size_t len)
{
    if (len > CDX_EVIDENCE_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "evidence claim too long");
    pol_ev_value *v;
    cdx_err err = add(b, c, t, true, &v);
    if (err)
        return err;
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) {
        b->n--;
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    if (len)
        memcpy(copy, data, len);
    v->data = copy;
    v->len = len;
    return CDX_OK;
}

cdx_err pol_ev_add_bytes(pol_ev_builder *b, pol_ev_claim c, const void *data, size_t len)
{
    return add_data(b, c, POL_EV_T_BYTES, data, len);
}

cdx_err pol_ev_add_utf8(pol_ev_builder *b, pol_ev_claim c, const char *s)
{
    size_t n = strlen(s);
    if (!cdx_utf8_valid((const uint8_t *)s, n, NULL, NULL))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "evidence claim %s is not UTF-8",
                        pol_ev_claim_name(c));
    return add_data(b, c, POL_EV_T_UTF8, s, n);
}

cdx_err pol_ev_add_bool(pol_ev_builder *b, pol_ev_claim c, bool val)
{
    pol_ev_value *v;
    cdx_err err = add(b, c, POL_EV_T_BOOL, true, &v);
    if (!err)
        v->b = val;
    return err;
}

cdx_err pol_ev_add_int(pol_ev_builder *b, pol_ev_claim c, int64_t val)
{
    pol_ev_value *v;
    cdx_err err = add(b, c, POL_EV_T_INT, true, &v);
    if (!err)
        v->i = val;
    return err;
}

cdx_err pol_ev_add_time(pol_ev_builder *b, pol_ev_claim c, int64_t unix_s)
{
    char t[16];
    if (!time_text(unix_s, t))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "time %lld out of range", (long long)unix_s);
    pol_ev_value *v;
    cdx_err err = add(b, c, POL_EV_T_TIME, true, &v);
    if (!err)
        v->i = unix_s;
    return err;
}

cdx_err pol_ev_add_absent(pol_ev_builder *b, pol_ev_claim c)
{
    pol_ev_value *v;
    return add(b, c, (pol_ev_type)0, false, &v);
}

/* Required claims present; nothing else to check (add() checked the rest). */
static cdx_err check_required(const pol_ev_value *v, size_t n, cdx_err code)
{
    unsigned count[POL_EV_NCLAIMS] = {0};
    unsigned per_ent[POL_EV_NENTITIES] = {0};
    for (size_t i = 0; i < n; i++) {
        count[v[i].claim]++;
        per_ent[CLAIMS[v[i].claim].entity]++;
    }
    for (unsigned c = 0; c < POL_EV_NCLAIMS; c++) {
        if ((CLAIMS[c].flags & POL_EV_F_R) && count[c] == 0)
            return cdx_fail(code, "evidence lacks the required claim %s.%s",
                            ENTS[CLAIMS[c].entity].name, CLAIMS[c].name);
        if (!(CLAIMS[c].flags & POL_EV_F_M) && count[c] > 1)
            return cdx_fail(code, "evidence repeats the claim %s.%s", ENTS[CLAIMS[c].entity].name,
                            CLAIMS[c].name);
    }
    for (unsigned e = 0; e < POL_EV_NENTITIES; e++)
        if (!per_ent[e])
            return cdx_fail(code, "evidence has no %s claims", ENTS[e].name);
    return CDX_OK;
}

cdx_err pol_ev_builder_tbs(const pol_ev_builder *b, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    cdx_err err = check_required(b->v, b->n, CDX_ERR_INVALID_ARGUMENT);
    if (err)
        return err;
    if ((err = encode_tbs(b->v, b->n, out, len)))
        return err;
    if (*len > CDX_EVIDENCE_MAX / 2) {
        free(*out);
        *out = NULL;
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "evidence claims exceed %d bytes",
                        CDX_EVIDENCE_MAX / 2);
    }
    return CDX_OK;
}

/* ---- DER reading ---- */

typedef struct rd {
    const uint8_t *p;
    size_t n;
    const uint8_t *base; /* start of the whole input, for offsets in messages */
} rd;

/* One TLV of tag `tag` from r into *v (its contents); r advances past it. */
static cdx_err get(rd *r, uint8_t tag, rd *v, const char *what)
{
    size_t off = (size_t)(r->p - r->base);
    if (r->n < 2)
        return cdx_fail(CDX_ERR_INTEGRITY, "evidence truncated at byte %zu (%s)", off, what);
    if (r->p[0] != tag)
        return cdx_fail(CDX_ERR_INTEGRITY, "evidence byte %zu: tag 0x%02x, expected 0x%02x (%s)",
                        off, r->p[0], tag, what);
    size_t len, hl;
    uint8_t l0 = r->p[1];
    if (l0 < 0x80) {
        len = l0;
        hl = 2;
    } else {
        size_t k = l0 & 0x7f;
        if (k == 0 || k > 3 || r->n < 2 + k)
            return cdx_fail(CDX_ERR_INTEGRITY, "evidence byte %zu: bad length (%s)", off, what);
        len = 0;
        for (size_t i = 0; i < k; i++)
            len = (len << 8) | r->p[2 + i];
        size_t min = k == 1 ? 0x80 : k == 2 ? 0x100 : 0x10000;
        if (len < min)
            return cdx_fail(CDX_ERR_INTEGRITY, "evidence byte %zu: length not minimal (%s)", off,
                            what);
        hl = 2 + k;
    }
    if (len > r->n - hl)
        return cdx_fail(CDX_ERR_INTEGRITY, "evidence byte %zu: length %zu past the end (%s)", off,
                        len, what);
    v->p = r->p + hl;
    v->n = len;
    v->base = r->base;
    r->p += hl + len;
    r->n -= hl + len;
    return CDX_OK;
}

static cdx_err end(const rd *r, const char *what)
{
    if (r->n)
        return cdx_fail(CDX_ERR_INTEGRITY, "evidence byte %zu: trailing data in %s",
                        (size_t)(r->p - r->base), what);
    return CDX_OK;
}

struct pol_ev {
    uint8_t *der;
    size_t len;
    const uint8_t *tbs, *sig, *key_id, *certs;
    size_t tbs_len, sig_len, certs_len;
    pol_ev_value v[CDX_EVIDENCE_CLAIMS_MAX];
    size_t n;
};

static bool digits(const uint8_t *s, size_t n, unsigned *out)
{
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    *out = v;
    return true;
}

static bool parse_time(const uint8_t *s, size_t n, int64_t *out)
{
    unsigned y, mo, d, h, mi, se;
    if (n != 15 || s[14] != 'Z' || !digits(s, 4, &y) || !digits(s + 4, 2, &mo) ||
        !digits(s + 6, 2, &d) || !digits(s + 8, 2, &h) || !digits(s + 10, 2, &mi) ||
        !digits(s + 12, 2, &se))
        return false;
    static const unsigned mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 || mi > 59 || se > 59)
        return false;
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (mo == 2 && d == 29 && !leap)
        return false;
    *out = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se;
    return true;
}

static cdx_err parse_value(rd *a, pol_ev_value *v)
{
    size_t off = (size_t)(a->p - a->base);
    if (a->n == 0) {
        v->present = false;
        return CDX_OK;
    }
    uint8_t want = (uint8_t)(0x80 | CLAIMS[v->claim].type);
    rd c;
    cdx_err err = get(a, want, &c, CLAIMS[v->claim].name);
    if (err)
        return err;
    v->present = true;
    v->data = c.p;
    v->len = c.n;
    switch (v->type) {
    case POL_EV_T_BYTES:
        break;
    case POL_EV_T_UTF8:
        if (!cdx_utf8_valid(c.p, c.n, NULL, NULL))
            return cdx_fail(CDX_ERR_INTEGRITY, "evidence byte %zu: %s is not UTF-8", off,
                            CLAIMS[v->claim].name);
        break;
    case POL_EV_T_BOOL:
        if (c.n != 1 || (c.p[0] != 0 && c.p[0] != 0xff))
            return cdx_fail(CDX_ERR_INTEGRITY, "evidence byte %zu: %s is not a DER BOOLEAN", off,
                            CLAIMS[v->claim].name);
        v->b = c.p[0] != 0;
        break;
    case POL_EV_T_INT: {
        if (c.n < 1 || c.n > 8)
            return cdx_fail(CDX_ERR_INTEGRITY, "evidence byte %zu: %s is not a 64-bit INTEGER", off,
                            CLAIMS[v->claim].name);
        uint64_t u = (c.p[0] & 0x80) ? ~(uint64_t)0 : 0;
        for (size_t i = 0; i < c.n; i++)
            u = (u << 8) | c.p[i];
        v->i = (int64_t)u;
        break;
    }
    case POL_EV_T_TIME:
        if (!parse_time(c.p, c.n, &v->i))
            return cdx_fail(CDX_ERR_INTEGRITY,
                            "evidence byte %zu: %s is not a GeneralizedTime YYYYMMDDHHMMSSZ", off,
                            CLAIMS[v->claim].name);
        break;
    case POL_EV_T_OID:
        break;
    }
    return end(a, "a claim");
}

/* Which claim of entity e has OID arc.1.<e>.<n>? */
static cdx_err claim_of(const rd *oid, pol_ev_entity e, pol_ev_claim *out)
{
    if (oid->n == sizeof(ARC) + 3 && !memcmp(oid->p, ARC, sizeof(ARC)) &&
        oid->p[sizeof(ARC)] == 1 && oid->p[sizeof(ARC) + 1] == ENTS[e].n)
        for (unsigned c = 0; c < POL_EV_NCLAIMS; c++)
            if (CLAIMS[c].entity == e && CLAIMS[c].n == oid->p[sizeof(ARC) + 2]) {
                *out = (pol_ev_claim)c;
                return CDX_OK;
            }
    return cdx_fail(CDX_ERR_INTEGRITY, "evidence byte %zu: unknown claim type in the %s entity",
                    (size_t)(oid->p - oid->base), ENTS[e].name);
}

static cdx_err parse_tbs(pol_ev *ev, rd tbs)
{
    rd ver, ents, v;
    cdx_err err;
    if ((err = get(&tbs, 0x02, &ver, "version")))
        return err;
    if (ver.n != 1 || ver.p[0] != POL_EV_VERSION)
        return cdx_fail(CDX_ERR_INTEGRITY, "evidence version is not %d", POL_EV_VERSION);
    if ((err = get(&tbs, 0x30, &ents, "reportedEntities")) || (err = end(&tbs, "the TBS")))
        return err;
    for (unsigned e = 0; e < POL_EV_NENTITIES; e++) {
        rd ent, type, attrs;
        if ((err = get(&ents, 0x30, &ent, ENTS[e].name)) ||
            (err = get(&ent, 0x06, &type, "entityType")))
            return err;
        if (type.n != sizeof(ARC) + 2 || memcmp(type.p, ARC, sizeof(ARC)) ||
            type.p[sizeof(ARC)] != 0 || type.p[sizeof(ARC) + 1] != ENTS[e].n)
            return cdx_fail(CDX_ERR_INTEGRITY,
                            "evidence byte %zu: entity %u is not the %s entity (the entities are "
                            "transaction, platform, key, in that order)",
                            (size_t)(type.p - type.base), e + 1, ENTS[e].name);
        if ((err = get(&ent, 0x30, &attrs, "reportedAttributes")) || (err = end(&ent, "an entity")))
            return err;
        if (attrs.n == 0)
            return cdx_fail(CDX_ERR_INTEGRITY, "evidence: the %s entity has no claims",
                            ENTS[e].name);
        while (attrs.n) {
            rd a, oid;
            if ((err = get(&attrs, 0x30, &a, "a claim")) ||
                (err = get(&a, 0x06, &oid, "attributeType")))
                return err;
            if (ev->n == CDX_EVIDENCE_CLAIMS_MAX)
                return cdx_fail(CDX_ERR_INTEGRITY, "evidence has more than %d claims",
                                CDX_EVIDENCE_CLAIMS_MAX);
            pol_ev_value *val = &ev->v[ev->n];
            memset(val, 0, sizeof(*val));
            if ((err = claim_of(&oid, (pol_ev_entity)e, &val->claim)))
                return err;
            val->type = CLAIMS[val->claim].type;
            if ((err = parse_value(&a, val)))
                return err;
            ev->n++;
        }
    }
    if ((err = end(&ents, "reportedEntities")))
        return err;
    (void)v;
    return check_required(ev->v, ev->n, CDX_ERR_INTEGRITY);
}

cdx_err pol_ev_parse(const uint8_t *der, size_t len, pol_ev **out)
{
    *out = NULL;
    if (len > CDX_EVIDENCE_MAX)
        return cdx_fail(CDX_ERR_INTEGRITY, "evidence is %zu bytes, more than %d", len,
                        CDX_EVIDENCE_MAX);
    pol_ev *ev = calloc(1, sizeof(*ev));
    if (!ev || !(ev->der = malloc(len ? len : 1))) {
        free(ev);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    if (len)
        memcpy(ev->der, der, len);
    ev->len = len;
    rd all = {ev->der, len, ev->der}, top, tbs, sigs, blk, sid, kid, kido, alg, algo, sig;
    const uint8_t *tbs_start;
    uint8_t *re = NULL, *re2 = NULL;
    size_t re_len = 0, re2_len = 0;
    cdx_err err;
    if ((err = get(&all, 0x30, &top, "PkixEvidence")) || (err = end(&all, "the input")))
        goto out;
    tbs_start = top.p;
    if ((err = get(&top, 0x30, &tbs, "TbsPkixEvidence")))
        goto out;
    ev->tbs = tbs_start;
    ev->tbs_len = (size_t)(top.p - tbs_start);
    if ((err = parse_tbs(ev, tbs)))
        goto out;
    if ((err = get(&top, 0x30, &sigs, "signatures")) ||
        (err = get(&sigs, 0x30, &blk, "SignatureBlock")))
        goto out;
    if (sigs.n) {
        err = cdx_fail(CDX_ERR_INTEGRITY, "evidence carries more than one signature");
        goto out;
    }
    if ((err = get(&blk, 0x30, &sid, "sid")) || (err = get(&sid, 0xa0, &kid, "keyId")) ||
        (err = end(&sid, "sid")) || (err = get(&kid, 0x04, &kido, "keyId")) ||
        (err = end(&kid, "keyId")))
        goto out;
    if (kido.n != 32) {
        err = cdx_fail(CDX_ERR_INTEGRITY, "evidence keyId is not 32 bytes");
        goto out;
    }
    ev->key_id = kido.p;
    if ((err = get(&blk, 0x30, &alg, "signatureAlgorithm")) ||
        (err = get(&alg, 0x06, &algo, "algorithm")) || (err = end(&alg, "signatureAlgorithm")))
        goto out;
    if (algo.n != sizeof(ECDSA_SHA256) || memcmp(algo.p, ECDSA_SHA256, sizeof(ECDSA_SHA256))) {
        err = cdx_fail(CDX_ERR_INTEGRITY, "evidence signature algorithm is not ecdsa-with-SHA256");
        goto out;
    }
    if ((err = get(&blk, 0x04, &sig, "signatureValue")) || (err = end(&blk, "SignatureBlock")))
        goto out;
    if (sig.n < 8 || sig.n > 72) {
        err = cdx_fail(CDX_ERR_INTEGRITY, "evidence signature is %zu bytes, not an ECDSA P-256 one",
                       sig.n);
        goto out;
    }
    ev->sig = sig.p;
    ev->sig_len = sig.n;
    if (top.n) {
        rd certs, c;
        if ((err = get(&top, 0xa0, &certs, "intermediateCertificates")) ||
            (err = end(&top, "PkixEvidence")))
            goto out;
        ev->certs = certs.p;
        ev->certs_len = certs.n;
        if (certs.n == 0) {
            err = cdx_fail(CDX_ERR_INTEGRITY, "evidence has an empty intermediateCertificates");
            goto out;
        }
        while (certs.n)
            if ((err = get(&certs, 0x30, &c, "a certificate")))
                goto out;
    }
    /* One statement, one encoding: what we parsed must encode to the very same bytes. */
    if ((err = encode_tbs(ev->v, ev->n, &re, &re_len)))
        goto out;
    if (re_len != ev->tbs_len || memcmp(re, ev->tbs, re_len)) {
        err = cdx_fail(CDX_ERR_INTEGRITY, "evidence TBS is not in canonical DER");
        goto out;
    }
    if ((err = pol_ev_assemble(ev->tbs, ev->tbs_len, ev->key_id, ev->sig, ev->sig_len, ev->certs,
                               ev->certs_len, &re2, &re2_len)))
        goto out;
    if (re2_len != len || memcmp(re2, ev->der, len)) {
        err = cdx_fail(CDX_ERR_INTEGRITY, "evidence is not in canonical DER");
        goto out;
    }
    *out = ev;
    ev = NULL;
out:
    if (err == CDX_ERR_INVALID_ARGUMENT)
        err = cdx_fail(CDX_ERR_INTEGRITY, "evidence: %s", cdx_err_detail());
    free(re);
    free(re2);
    pol_ev_free(ev);
    return err;
}

void pol_ev_free(pol_ev *ev)
{
    if (!ev)
        return;
    free(ev->der);
    free(ev);
}

cdx_err pol_ev_assemble(const uint8_t *tbs, size_t tbs_len, const uint8_t key_id[32],
                        const uint8_t *sig, size_t sig_len, const uint8_t *certs, size_t certs_len,
                        uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (tbs_len + sig_len + certs_len + 128 > CDX_EVIDENCE_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "evidence would exceed %d bytes",
                        CDX_EVIDENCE_MAX);
    rd cr = {certs, certs_len, certs}, c;
    while (cr.n)
        if (get(&cr, 0x30, &c, "a certificate"))
            return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                            "intermediate certificates are not DER certificates: %s",
                            cdx_err_detail());
    dbuf d = {0}, top = {0}, blk = {0}, sid = {0}, kid = {0}, alg = {0}, sigs = {0}, cs = {0};
    put(&top, tbs, tbs_len);
    put_tlv(&kid, 0x04, key_id, 32);
    put_wrap(&sid, 0xa0, &kid);
    put_wrap(&blk, 0x30, &sid);
    put_tlv(&alg, 0x06, ECDSA_SHA256, sizeof(ECDSA_SHA256));
    put_wrap(&blk, 0x30, &alg);
    put_tlv(&blk, 0x04, sig, sig_len);
    put_wrap(&sigs, 0x30, &blk);
    put_wrap(&top, 0x30, &sigs);
    if (certs_len) {
        put(&cs, certs, certs_len);
        put_wrap(&top, 0xa0, &cs);
    }
    put_wrap(&d, 0x30, &top);
    if (d.oom) {
        free(d.p);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory encoding evidence");
    }
    *out = d.p;
    *len = d.n;
    return CDX_OK;
}

cdx_err pol_ev_key_id(EVP_PKEY *pub, uint8_t out[32])
{
    unsigned char *spki = NULL;
    int n = pub ? i2d_PUBKEY(pub, &spki) : -1;
    if (n <= 0)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "cannot encode the public key");
    SHA256(spki, (size_t)n, out);
    OPENSSL_free(spki);
    return CDX_OK;
}

cdx_err pol_ev_sig_der(const uint8_t rs[64], uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    ECDSA_SIG *s = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(rs, 32, NULL), *sv = BN_bin2bn(rs + 32, 32, NULL);
    if (!s || !r || !sv || !ECDSA_SIG_set0(s, r, sv)) {
        ECDSA_SIG_free(s);
        BN_free(r);
        BN_free(sv);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    unsigned char *der = NULL;
    int n = i2d_ECDSA_SIG(s, &der);
    ECDSA_SIG_free(s);
    if (n <= 0)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "cannot encode the ECDSA signature");
    *out = malloc((size_t)n);
    if (!*out) {
        OPENSSL_free(der);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    memcpy(*out, der, (size_t)n);
    *len = (size_t)n;
    OPENSSL_free(der);
    return CDX_OK;
}

const pol_ev_value *pol_ev_get(const pol_ev *ev, pol_ev_claim c)
{
    for (size_t i = 0; i < ev->n; i++)
        if (ev->v[i].claim == c)
            return &ev->v[i];
    return NULL;
}

cdx_err pol_ev_verify(const pol_ev *ev, EVP_PKEY *pub, const uint8_t *nonce, size_t nonce_len,
                      int64_t now_s, int64_t max_age_s)
{
    char group[64] = "";
    size_t glen = 0;
    if (!pub || !EVP_PKEY_is_a(pub, "EC") ||
        !EVP_PKEY_get_utf8_string_param(pub, "group", group, sizeof(group), &glen) ||
        strcmp(group, "prime256v1"))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "the public key is not an EC P-256 key");
    uint8_t kid[32];
    cdx_err err = pol_ev_key_id(pub, kid);
    if (err)
        return err;
    const pol_ev_value *ak = pol_ev_get(ev, POL_EV_AK_ID);
    if (CRYPTO_memcmp(kid, ev->key_id, 32) || !ak || !ak->present || ak->len != 32 ||
        CRYPTO_memcmp(kid, ak->data, 32))
        return cdx_fail(CDX_ERR_INTEGRITY,
                        "evidence is signed by another key than the one given (key id differs)");
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pub) == 1 &&
             EVP_DigestVerify(md, ev->sig, ev->sig_len, ev->tbs, ev->tbs_len) == 1;
    EVP_MD_CTX_free(md);
    if (!ok)
        return cdx_fail(CDX_ERR_INTEGRITY, "evidence signature does not verify");
    const pol_ev_value *nv = pol_ev_get(ev, POL_EV_NONCE);
    if (!nv || !nv->present || nv->len != nonce_len || !nonce ||
        CRYPTO_memcmp(nv->data, nonce, nonce_len))
        return cdx_fail(CDX_ERR_INTEGRITY,
                        "evidence answers another nonce (a replayed or misdirected statement)");
    const pol_ev_value *tv = pol_ev_get(ev, POL_EV_TIMESTAMP);
    if (!tv || !tv->present)
        return cdx_fail(CDX_ERR_INTEGRITY, "evidence has no timestamp");
    if (tv->i > now_s + CDX_ATTEST_CLOCK_SKEW_S)
        return cdx_fail(CDX_ERR_STALE, "evidence timestamp is %lld s in the future",
                        (long long)(tv->i - now_s));
    if (max_age_s > 0 && tv->i < now_s - max_age_s)
        return cdx_fail(CDX_ERR_STALE, "evidence is %lld s old, more than the %lld s allowed",
                        (long long)(now_s - tv->i), (long long)max_age_s);
    return CDX_OK;
}

size_t pol_ev_count(const pol_ev *ev)
{
    return ev->n;
}

const pol_ev_value *pol_ev_at(const pol_ev *ev, size_t i)
{
    return i < ev->n ? &ev->v[i] : NULL;
}

void pol_ev_tbs(const pol_ev *ev, const uint8_t **tbs, size_t *len)
{
    *tbs = ev->tbs;
    *len = ev->tbs_len;
}

void pol_ev_signature(const pol_ev *ev, const uint8_t **sig, size_t *len, const uint8_t **key_id)
{
    *sig = ev->sig;
    *len = ev->sig_len;
    *key_id = ev->key_id;
}

void pol_ev_certs(const pol_ev *ev, const uint8_t **der, size_t *len)
{
    *der = ev->certs;
    *len = ev->certs_len;
}

void pol_ev_value_text(const pol_ev_value *v, char *buf, size_t cap)
{
    if (cap == 0)
        return;
    buf[0] = '\0';
    if (!v->present) {
        snprintf(buf, cap, "n/a");
        return;
    }
    switch (v->type) {
    case POL_EV_T_BYTES:
    case POL_EV_T_OID: {
        size_t off = 0;
        for (size_t i = 0; i < v->len && off + 3 <= cap; i++)
            off += (size_t)snprintf(buf + off, cap - off, "%02x", v->data[i]);
        break;
    }
    case POL_EV_T_UTF8: {
        size_t off = 0;
        for (size_t i = 0; i < v->len && off + 5 <= cap; i++) {
            uint8_t ch = v->data[i];
            if (ch < 0x20 || ch == 0x7f || ch == '\\')
                off += (size_t)snprintf(buf + off, cap - off, "\\x%02x", ch);
            else
                buf[off++] = (char)ch;
        }
        buf[off < cap ? off : cap - 1] = '\0';
        break;
    }
    case POL_EV_T_BOOL:
        snprintf(buf, cap, "%s", v->b ? "true" : "false");
        break;
    case POL_EV_T_TIME: {
        time_t t = (time_t)v->i;
        struct tm tm;
        if (gmtime_r(&t, &tm))
            strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
        break;
    }
    case POL_EV_T_INT:
        if (v->claim == POL_EV_ALLOWED_MECH || v->claim == POL_EV_KEY_TYPE)
            snprintf(buf, cap, "0x%llx", (unsigned long long)v->i);
        else
            snprintf(buf, cap, "%lld", (long long)v->i);
        break;
    }
}
