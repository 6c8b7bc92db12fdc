/* The audit trail's record chain (pol_audit.h). */
#include "pol_audit.h"

#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "cdx_hex.h"

#define MAGIC    "cdxa1 "
#define MAC_SEP  " mac="
#define MAC_TAIL (sizeof(MAC_SEP) - 1 + 2 * POL_AUDIT_HASH_LEN) /* " mac=" + 64 hex */

static bool body_ok(const char *b, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)b[i] < 0x20 || (unsigned char)b[i] > 0x7e || b[i] == '\\')
            return false;
    return !memmem(b, n, MAC_SEP, sizeof(MAC_SEP) - 1);
}

cdx_err pol_audit_append(pol_audit_pos *pos, uint64_t ts_ms, const char *body, pol_audit_mac_fn mac,
                         void *arg, char *out, size_t cap, size_t *len)
{
    *len = 0;
    size_t bl = body ? strlen(body) : 0;
    if (!body_ok(body ? body : "", bl))
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT,
                        "audit record body is empty or has a byte outside printable ASCII, a "
                        "backslash, or \" mac=\"");
    char prev[2 * POL_AUDIT_HASH_LEN + 1];
    cdx_hex_encode(pos->hash, POL_AUDIT_HASH_LEN, prev);
    if (cap > POL_AUDIT_LINE_MAX)
        cap = POL_AUDIT_LINE_MAX;
    int n = snprintf(out, cap, MAGIC "%llu %llu %s %s", (unsigned long long)(pos->seq + 1),
                     (unsigned long long)ts_ms, prev, body);
    if (n < 0 || (size_t)n + MAC_TAIL + 2 > cap)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "audit record longer than %d bytes",
                        POL_AUDIT_LINE_MAX - 1);
    uint8_t m[POL_AUDIT_HASH_LEN];
    cdx_err err = mac(arg, out, (size_t)n, m);
    if (err)
        return err;
    char mh[2 * POL_AUDIT_HASH_LEN + 1];
    cdx_hex_encode(m, POL_AUDIT_HASH_LEN, mh);
    n += snprintf(out + n, cap - (size_t)n, MAC_SEP "%s", mh);
    SHA256((const unsigned char *)out, (size_t)n, pos->hash);
    out[n++] = '\n';
    out[n] = '\0';
    pos->seq++;
    pos->ts_ms = ts_ms;
    *len = (size_t)n;
    return CDX_OK;
}

void pol_audit_verify_init(pol_audit_verifier *v, const pol_audit_pos *start, pol_audit_mac_fn mac,
                           void *arg)
{
    memset(v, 0, sizeof(*v));
    if (start)
        v->pos = *start;
    v->mac = mac;
    v->arg = arg;
}

/* 64 hex digits at s (not NUL-terminated there) into out. */
static bool hex32(const char *s, uint8_t out[POL_AUDIT_HASH_LEN])
{
    char buf[2 * POL_AUDIT_HASH_LEN + 1];
    memcpy(buf, s, 2 * POL_AUDIT_HASH_LEN);
    buf[2 * POL_AUDIT_HASH_LEN] = '\0';
    return cdx_hex_decode(buf, out, POL_AUDIT_HASH_LEN) == 0;
}

/* A decimal number ending at a space; *p moves past the space. */
static bool take_u64(const char **p, const char *end, uint64_t *out)
{
    const char *s = *p;
    uint64_t n = 0;
    if (s >= end || *s < '0' || *s > '9')
        return false;
    for (; s < end && *s >= '0' && *s <= '9'; s++) {
        if (n > (UINT64_MAX - 9) / 10)
            return false;
        n = n * 10 + (uint64_t)(*s - '0');
    }
    if (s >= end || *s != ' ')
        return false;
    *p = s + 1;
    *out = n;
    return true;
}

cdx_err pol_audit_line_head(const char *line, size_t len, pol_audit_pos *before)
{
    if (len && line[len - 1] == '\n')
        len--;
    const char *end = line + len, *p = line + sizeof(MAGIC) - 1;
    uint64_t seq = 0, ts = 0;
    memset(before, 0, sizeof(*before));
    if (len <= sizeof(MAGIC) - 1 + MAC_TAIL || memcmp(line, MAGIC, sizeof(MAGIC) - 1) ||
        !take_u64(&p, end, &seq) || !take_u64(&p, end, &ts) || seq == 0 ||
        end - p < (long)(2 * POL_AUDIT_HASH_LEN + 1) || !hex32(p, before->hash))
        return cdx_fail(CDX_ERR_INTEGRITY, "audit record is malformed");
    before->seq = seq - 1;
    return CDX_OK;
}

cdx_err pol_audit_verify_line(pol_audit_verifier *v, const char *line, size_t len)
{
    uint64_t at = v->pos.seq + 1; /* the record this line should be */
    if (len && line[len - 1] == '\n')
        len--;
    const char *end = line + len, *p = line;
    uint64_t seq = 0, ts = 0;
    uint8_t prev[POL_AUDIT_HASH_LEN], got[POL_AUDIT_HASH_LEN], want[POL_AUDIT_HASH_LEN];
    if (len <= sizeof(MAGIC) - 1 + MAC_TAIL || len >= POL_AUDIT_LINE_MAX ||
        memcmp(p, MAGIC, sizeof(MAGIC) - 1) || memcmp(end - MAC_TAIL, MAC_SEP, sizeof(MAC_SEP) - 1))
        return cdx_fail(CDX_ERR_INTEGRITY, "audit record %llu is malformed",
                        (unsigned long long)at);
    p += sizeof(MAGIC) - 1;
    if (!take_u64(&p, end, &seq) || !take_u64(&p, end, &ts) ||
        end - p < (long)(2 * POL_AUDIT_HASH_LEN + 1) || !hex32(p, prev) ||
        p[2 * POL_AUDIT_HASH_LEN] != ' ' || !hex32(end - 2 * POL_AUDIT_HASH_LEN, got))
        return cdx_fail(CDX_ERR_INTEGRITY, "audit record %llu is malformed",
                        (unsigned long long)at);
    const char *body = p + 2 * POL_AUDIT_HASH_LEN + 1;
    if (body >= end - MAC_TAIL || !body_ok(body, (size_t)(end - MAC_TAIL - body)))
        return cdx_fail(CDX_ERR_INTEGRITY, "audit record %llu is malformed",
                        (unsigned long long)at);
    if (seq != at)
        return cdx_fail(CDX_ERR_INTEGRITY,
                        "audit record %llu carries sequence number %llu: records were deleted, "
                        "inserted or reordered",
                        (unsigned long long)at, (unsigned long long)seq);
    if (CRYPTO_memcmp(prev, v->pos.hash, POL_AUDIT_HASH_LEN))
        return cdx_fail(CDX_ERR_INTEGRITY,
                        "audit record %llu does not follow record %llu (its previous-record hash "
                        "differs): the chain was spliced",
                        (unsigned long long)at, (unsigned long long)v->pos.seq);
    cdx_err err = v->mac(v->arg, line, len - MAC_TAIL, want);
    if (err)
        return err;
    if (CRYPTO_memcmp(got, want, POL_AUDIT_HASH_LEN))
        return cdx_fail(CDX_ERR_INTEGRITY,
                        "audit record %llu fails its MAC: it was edited, or written without the "
                        "audit key",
                        (unsigned long long)at);
    SHA256((const unsigned char *)line, len, v->pos.hash);
    v->pos.seq = seq;
    v->pos.ts_ms = ts;
    v->records++;
    size_t bl = (size_t)(end - MAC_TAIL - body);
    v->stopped = bl >= 9 && !memcmp(body, "kind=stop", 9) && (bl == 9 || body[9] == ' ');
    bool cp = bl >= 15 && !memcmp(body, "kind=checkpoint", 15) && (bl == 15 || body[15] == ' ');
    if (cp)
        v->checkpoints++;
    if (cp || v->stopped)
        v->last_checkpoint_ts = ts;
    return CDX_OK;
}

cdx_err pol_audit_verify_end(const pol_audit_verifier *v, uint64_t expect_ts_ms,
                             uint64_t interval_ms)
{
    if (v->stopped || !expect_ts_ms)
        return CDX_OK;
    if (v->pos.ts_ms + interval_ms < expect_ts_ms)
        return cdx_fail(CDX_ERR_INTEGRITY,
                        "the trail ends at record %llu (time %llu ms) without a clean stop, and "
                        "checkpoints come every %llu ms: a tail may be missing up to %llu ms",
                        (unsigned long long)v->pos.seq, (unsigned long long)v->pos.ts_ms,
                        (unsigned long long)interval_ms, (unsigned long long)expect_ts_ms);
    return CDX_OK;
}
