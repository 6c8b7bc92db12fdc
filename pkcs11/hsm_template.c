/*
 * What a Cipherdex key object looks like on the token: the attribute table,
 * reading an object's attributes, checking them against the kind's template,
 * and building the template of a new object (docs/KEYS.md "Templates").
 */
#include "hsm_internal.h"

#include <stdio.h>
#include <string.h>

#include "cdx_log.h"

static CK_BBOOL T = CK_TRUE, F = CK_FALSE;
static CK_OBJECT_CLASS SECRET = CKO_SECRET_KEY;
static CK_KEY_TYPE GENERIC = CKK_GENERIC_SECRET;
static CK_MECHANISM_TYPE HMAC_MECH = CKM_SHA256_HMAC;
static CK_ULONG LEN32 = CDX_KEY_LEN;

const hsm_battr hsm_battrs[] = {
    {CKA_TOKEN, HSM_A_TOKEN, "token"},
    {CKA_PRIVATE, HSM_A_PRIVATE, "private"},
    {CKA_SENSITIVE, HSM_A_SENSITIVE, "sensitive"},
    {CKA_EXTRACTABLE, HSM_A_EXTRACTABLE, "extractable"},
    {CKA_ALWAYS_SENSITIVE, HSM_A_ALWAYS_SENSITIVE, "always_sensitive"},
    {CKA_NEVER_EXTRACTABLE, HSM_A_NEVER_EXTRACTABLE, "never_extractable"},
    {CKA_LOCAL, HSM_A_LOCAL, "local"},
    {CKA_SIGN, HSM_A_SIGN, "sign"},
    {CKA_VERIFY, HSM_A_VERIFY, "verify"},
    {CKA_ENCRYPT, HSM_A_ENCRYPT, "encrypt"},
    {CKA_DECRYPT, HSM_A_DECRYPT, "decrypt"},
    {CKA_WRAP, HSM_A_WRAP, "wrap"},
    {CKA_UNWRAP, HSM_A_UNWRAP, "unwrap"},
    {CKA_DERIVE, HSM_A_DERIVE, "derive"},
    {CKA_MODIFIABLE, HSM_A_MODIFIABLE, "modifiable"},
    {CKA_COPYABLE, HSM_A_COPYABLE, "copyable"},
    {CKA_DESTROYABLE, HSM_A_DESTROYABLE, "destroyable"},
};
#define NBATTRS (sizeof(hsm_battrs) / sizeof(hsm_battrs[0]))
const size_t hsm_nbattrs = NBATTRS;

const char *hsm_attr_name(unsigned bit)
{
    if (bit == HSM_A_UNWRAP_TEMPLATE)
        return "unwrap_template";
    for (size_t i = 0; i < NBATTRS; i++)
        if (hsm_battrs[i].bit == bit)
            return hsm_battrs[i].name;
    return "?";
}

/* What the template of each kind requires (docs/KEYS.md). */
#define SECRET_TRUE (HSM_A_TOKEN | HSM_A_PRIVATE | HSM_A_SENSITIVE | HSM_A_SIGN)
#define SECRET_FALSE                                                                               \
    (HSM_A_EXTRACTABLE | HSM_A_VERIFY | HSM_A_ENCRYPT | HSM_A_DECRYPT | HSM_A_WRAP |               \
     HSM_A_UNWRAP | HSM_A_DERIVE | HSM_A_MODIFIABLE | HSM_A_COPYABLE)
#define KEK_TRUE                                                                                   \
    (HSM_A_TOKEN | HSM_A_PRIVATE | HSM_A_SENSITIVE | HSM_A_UNWRAP | HSM_A_UNWRAP_TEMPLATE)
#define KEK_FALSE                                                                                  \
    (HSM_A_EXTRACTABLE | HSM_A_VERIFY | HSM_A_ENCRYPT | HSM_A_DECRYPT | HSM_A_WRAP | HSM_A_SIGN |  \
     HSM_A_DERIVE | HSM_A_MODIFIABLE | HSM_A_COPYABLE)

bool hsm_hmac_type_ok(CK_ULONG kt)
{
    return kt == CKK_GENERIC_SECRET || kt == CKK_SHA256_HMAC;
}

CK_KEY_TYPE hsm_hmac_key_type(hsm_custody *c)
{
    if (c->cfg.hmac_key_type == HSM_HMAC_KT_SHA256)
        return CKK_SHA256_HMAC;
    if (c->cfg.hmac_key_type == HSM_HMAC_KT_GENERIC)
        return CKK_GENERIC_SECRET;
    CK_KEY_TYPE kt = (CK_KEY_TYPE)atomic_load(&c->hmac_kt);
    return kt == CKK_SHA256_HMAC ? CKK_SHA256_HMAC : CKK_GENERIC_SECRET;
}

unsigned hsm_tmpl_optional(hsm_custody *c)
{
    return hsm_caps_copyable(c) ? 0 : HSM_A_COPYABLE;
}

CK_ULONG hsm_tmpl_unwrap(CK_ATTRIBUTE *t, const CK_KEY_TYPE *hmac_kt, bool copyable)
{
    CK_ULONG n = 0;
    t[n++] = (CK_ATTRIBUTE){CKA_CLASS, &SECRET, sizeof(SECRET)};
    t[n++] = (CK_ATTRIBUTE){CKA_KEY_TYPE, (void *)hmac_kt, sizeof(CK_KEY_TYPE)};
    t[n++] = (CK_ATTRIBUTE){CKA_TOKEN, &T, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_PRIVATE, &T, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_SENSITIVE, &T, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_EXTRACTABLE, &F, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_SIGN, &T, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_VERIFY, &F, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_ENCRYPT, &F, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_DECRYPT, &F, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_WRAP, &F, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_UNWRAP, &F, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_DERIVE, &F, 1};
    if (copyable)
        t[n++] = (CK_ATTRIBUTE){CKA_COPYABLE, &F, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_MODIFIABLE, &F, 1};
    return n;
}

/*
 * Is the entry `got` (type, value read back) what `want` says? Booleans compare as truth values;
 * the key type may be either HMAC key type.
 */
static bool utmpl_entry_ok(const CK_ATTRIBUTE *want, CK_ATTRIBUTE_TYPE type, const uint8_t *val,
                           CK_ULONG len)
{
    if (want->type != type)
        return false;
    if (type == CKA_KEY_TYPE) {
        CK_KEY_TYPE kt;
        if (len != sizeof(kt))
            return false;
        memcpy(&kt, val, sizeof(kt));
        return hsm_hmac_type_ok(kt);
    }
    if (want->ulValueLen == 1) /* CK_BBOOL */
        return len == 1 && (val[0] != CK_FALSE) == (*(const CK_BBOOL *)want->pValue != CK_FALSE);
    return len == want->ulValueLen && memcmp(val, want->pValue, len) == 0;
}

/* The three-step read of an attribute array: its size, the entries' types and lengths, values. */
CK_RV hsm_tmpl_read_unwrap(hsm_custody *c, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, int *state,
                           CK_KEY_TYPE *kt)
{
    enum { CAP = 32 };
    CK_ATTRIBUTE want[HSM_UTMPL_MAX], got[CAP];
    CK_ULONG val[CAP]; /* CK_ULONG-aligned: the token may store a CK_ULONG there */
    CK_ATTRIBUTE a = {CKA_UNWRAP_TEMPLATE, NULL, 0};
    CK_ULONG nw = hsm_tmpl_unwrap(want, &GENERIC, hsm_caps_copyable(c));

    *state = -1;
    CK_RV rv = c->f->C_GetAttributeValue(s, h, &a, 1);
    if (hsm_ckr_recoverable(rv))
        return rv;
    if (rv == CKR_ATTRIBUTE_TYPE_INVALID) { /* the token does not know the attribute */
        *state = 0;
        return CKR_OK;
    }
    if (rv != CKR_OK || a.ulValueLen == CK_UNAVAILABLE_INFORMATION)
        return CKR_OK;
    CK_ULONG n = a.ulValueLen / sizeof(CK_ATTRIBUTE);
    if (a.ulValueLen % sizeof(CK_ATTRIBUTE) || n != nw) { /* empty, or not ours */
        *state = 0;
        return CKR_OK;
    }
    memset(got, 0, sizeof(got));
    a.pValue = got;
    rv = c->f->C_GetAttributeValue(s, h, &a, 1); /* types and lengths */
    if (hsm_ckr_recoverable(rv))
        return rv;
    if (rv != CKR_OK)
        return CKR_OK;
    for (CK_ULONG i = 0; i < n; i++) {
        if (got[i].ulValueLen > sizeof(val[i])) { /* no entry of ours is that long */
            *state = 0;
            return CKR_OK;
        }
        got[i].pValue = &val[i];
    }
    rv = c->f->C_GetAttributeValue(s, h, &a, 1); /* values */
    if (hsm_ckr_recoverable(rv))
        return rv;
    if (rv != CKR_OK)
        return CKR_OK;
    /* Same count, every wanted entry present exactly once with its value: equal. */
    for (CK_ULONG w = 0; w < nw; w++) {
        unsigned hits = 0;
        for (CK_ULONG i = 0; i < n; i++)
            if (got[i].type == want[w].type) {
                if (!utmpl_entry_ok(&want[w], got[i].type, (const uint8_t *)&val[i],
                                    got[i].ulValueLen)) {
                    *state = 0;
                    return CKR_OK;
                }
                if (got[i].type == CKA_KEY_TYPE && kt)
                    memcpy(kt, &val[i], sizeof(*kt));
                hits++;
            }
        if (hits != 1) {
            *state = 0;
            return CKR_OK;
        }
    }
    *state = 1;
    return CKR_OK;
}

/*
 * A boolean the token did not write keeps this value and reads as "unknown": never as FALSE,
 * so a token that stops filling the template early cannot make a key look unextractable.
 */
#define UNFILLED ((CK_BBOOL)0xA5)

/* Set t[i] up for a (re-)read: booleans to UNFILLED, every length to its buffer's size. */
static void arm(CK_ATTRIBUTE *t, const CK_ULONG *cap, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        t[i].ulValueLen = cap[i];
        if (i < NBATTRS)
            *(CK_BBOOL *)t[i].pValue = UNFILLED;
    }
}

CK_RV hsm_tmpl_read(hsm_custody *c, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, hsm_key_info *ki,
                    unsigned *unknown)
{
    enum { N = NBATTRS + 4 };
    CK_BBOOL v[NBATTRS];
    CK_ATTRIBUTE t[N];
    CK_ULONG cap[N];
    char label[CDX_LABEL_MAX + 1];
    uint8_t id[CDX_ID_LEN];
    CK_KEY_TYPE kt = (CK_KEY_TYPE)-1;
    CK_ULONG vl = 0;
    for (size_t i = 0; i < NBATTRS; i++)
        t[i] = (CK_ATTRIBUTE){hsm_battrs[i].type, &v[i], sizeof(CK_BBOOL)};
    t[NBATTRS] = (CK_ATTRIBUTE){CKA_LABEL, label, CDX_LABEL_MAX};
    t[NBATTRS + 1] = (CK_ATTRIBUTE){CKA_ID, id, sizeof(id)};
    t[NBATTRS + 2] = (CK_ATTRIBUTE){CKA_KEY_TYPE, &kt, sizeof(kt)};
    t[NBATTRS + 3] = (CK_ATTRIBUTE){CKA_VALUE_LEN, &vl, sizeof(vl)};
    for (size_t i = 0; i < N; i++)
        cap[i] = t[i].ulValueLen;
    arm(t, cap, N);
    CK_RV rv = c->f->C_GetAttributeValue(s, h, t, N);
    if (rv != CKR_OK) {
        if (hsm_ckr_recoverable(rv))
            return rv;
        /* PKCS#11 says the others are still filled, but not every token does: ask for each
         * attribute alone; one that still fails is unknown. */
        cdx_log(CDX_LOG_DEBUG, "pkcs11_attributes_one_by_one", "ckr=%s rv=0x%lx", hsm_ckr_name(rv),
                (unsigned long)rv);
        kt = (CK_KEY_TYPE)-1;
        vl = 0;
        arm(t, cap, N);
        for (size_t i = 0; i < N; i++) {
            CK_RV r1 = c->f->C_GetAttributeValue(s, h, &t[i], 1);
            if (hsm_ckr_recoverable(r1))
                return r1;
            if (r1 != CKR_OK)
                t[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
        }
    }
    memset(ki, 0, sizeof(*ki));
    *unknown = 0;
    for (size_t i = 0; i < NBATTRS; i++) {
        if (t[i].ulValueLen != sizeof(CK_BBOOL) || v[i] == UNFILLED)
            *unknown |= hsm_battrs[i].bit;
        else if (v[i] != CK_FALSE)
            ki->attrs |= hsm_battrs[i].bit;
    }
    if (t[NBATTRS].ulValueLen <= CDX_LABEL_MAX) {
        memcpy(ki->label, label, t[NBATTRS].ulValueLen);
        ki->label[t[NBATTRS].ulValueLen] = '\0';
    }
    if (t[NBATTRS + 1].ulValueLen <= sizeof(id)) {
        ki->id_len = t[NBATTRS + 1].ulValueLen;
        memcpy(ki->id, id, ki->id_len);
    }
    ki->key_type = t[NBATTRS + 2].ulValueLen == sizeof(kt) ? kt : (CK_ULONG)-1;
    /* 0 = unknown (not reported, or reported as 0). */
    ki->value_len = t[NBATTRS + 3].ulValueLen == sizeof(vl) ? vl : 0;
    if ((ki->attrs & HSM_A_UNWRAP) || (*unknown & HSM_A_UNWRAP)) {
        int st;
        if ((rv = hsm_tmpl_read_unwrap(c, s, h, &st, NULL)) != CKR_OK)
            return rv;
        if (st < 0)
            *unknown |= HSM_A_UNWRAP_TEMPLATE;
        else if (st > 0)
            ki->attrs |= HSM_A_UNWRAP_TEMPLATE;
    }
    ki->unknown = *unknown;
    return CKR_OK;
}

unsigned hsm_tmpl_wrong(hsm_key_kind kind, const hsm_key_info *ki, unsigned unknown)
{
    unsigned must_t = kind == HSM_KEY_KEK ? KEK_TRUE : SECRET_TRUE;
    unsigned must_f = kind == HSM_KEY_KEK ? KEK_FALSE : SECRET_FALSE;
    return ((must_t & ~ki->attrs) | (must_f & ki->attrs) | (unknown & (must_t | must_f)));
}

static void wrong_names(unsigned wrong, char *buf, size_t cap)
{
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i <= NBATTRS; i++) {
        unsigned bit = i < NBATTRS ? hsm_battrs[i].bit : HSM_A_UNWRAP_TEMPLATE;
        if (!(wrong & bit))
            continue;
        const char *name = i < NBATTRS ? hsm_battrs[i].name : "unwrap_template";
        int w = snprintf(buf + off, cap - off, "%s%s", off ? "," : "", name);
        if (w < 0 || (size_t)w >= cap - off)
            break;
        off += (size_t)w;
    }
}

cdx_err hsm_tmpl_check(hsm_custody *c, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, hsm_key_kind kind,
                       const char *label, CK_RV *rv)
{
    hsm_key_info ki;
    unsigned unknown;
    CK_RV r = hsm_tmpl_read(c, s, h, &ki, &unknown);
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "C_GetAttributeValue");
    }
    unsigned wrong = hsm_tmpl_wrong(kind, &ki, unknown & ~hsm_tmpl_optional(c));
    char names[256];
    wrong_names(wrong, names, sizeof(names));
    if (kind == HSM_KEY_KEK ? ki.key_type != CKK_AES : !hsm_hmac_type_ok(ki.key_type))
        return cdx_fail(CDX_ERR_KEY_ATTRIBUTES, "%s has key type 0x%lx, need %s", label,
                        ki.key_type,
                        kind == HSM_KEY_KEK ? "CKK_AES" : "CKK_GENERIC_SECRET or CKK_SHA256_HMAC");
    /* CKA_VALUE_LEN 0 or unavailable is "unknown" (SoftHSM reports 0 for unwrapped keys,
     * opencryptoki reports none for imported AES keys): the KCV's HMAC and the unwrap
     * known-answer test prove the keys work. A length the token does report must be 32. */
    if (ki.value_len != CDX_KEY_LEN && ki.value_len != 0)
        return cdx_fail(CDX_ERR_KEY_ATTRIBUTES, "%s is %lu bytes long, need %d", label,
                        ki.value_len, CDX_KEY_LEN);
    if (wrong == HSM_A_UNWRAP_TEMPLATE)
        return cdx_fail(CDX_ERR_KEY_ATTRIBUTES,
                        "%s has no CKA_UNWRAP_TEMPLATE forcing the index-key template (sensitive, "
                        "not extractable, not derivable, not modifiable, not copyable, sign only): "
                        "anyone holding the PIN could unwrap a data key under it as an extractable "
                        "key. Cipherdex will not unwrap with it; make the KEK with cipherdex-hsm "
                        "kek create or kek import",
                        label);
    if (wrong)
        return cdx_fail(CDX_ERR_KEY_ATTRIBUTES,
                        "%s does not match the Cipherdex template; wrong: %s (every key must be "
                        "sensitive, not extractable, not derivable, not modifiable, not copyable; "
                        "a KEK also needs the index-key CKA_UNWRAP_TEMPLATE)",
                        label, names);
    return CDX_OK;
}

CK_ULONG hsm_tmpl_build(struct hsm_create *a, CK_ATTRIBUTE *t, const char *label, const uint8_t *id)
{
    CK_ULONG n = 0;
    bool kek = a->kind == HSM_KEY_KEK;
    /* a->key_type: CKK_AES for a KEK, else set by the caller (hsm_hmac_key_type). */
    t[n++] = (CK_ATTRIBUTE){CKA_CLASS, &SECRET, sizeof(SECRET)};
    t[n++] = (CK_ATTRIBUTE){CKA_KEY_TYPE, &a->key_type, sizeof(CK_KEY_TYPE)};
    if (a->how == HSM_HOW_GENERATE)
        t[n++] = (CK_ATTRIBUTE){CKA_VALUE_LEN, &LEN32, sizeof(LEN32)};
    if (a->how == HSM_HOW_IMPORT)
        t[n++] = (CK_ATTRIBUTE){CKA_VALUE, (void *)a->key, CDX_KEY_LEN};
    t[n++] = (CK_ATTRIBUTE){CKA_TOKEN, &T, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_PRIVATE, &T, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_SENSITIVE, &T, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_EXTRACTABLE, &F, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_SIGN, kek ? &F : &T, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_VERIFY, &F, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_ENCRYPT, &F, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_DECRYPT, &F, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_WRAP, &F, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_UNWRAP, kek ? &T : &F, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_DERIVE, &F, 1};
    if (a->copyable)
        t[n++] = (CK_ATTRIBUTE){CKA_COPYABLE, &F, 1};
    else if (a->allowed_mechs) /* the compensating control where COPYABLE is missing */
        t[n++] = (CK_ATTRIBUTE){CKA_ALLOWED_MECHANISMS, &HMAC_MECH, sizeof(HMAC_MECH)};
    t[n++] = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, strlen(label)};
    t[n++] = (CK_ATTRIBUTE){CKA_ID, (void *)id, CDX_ID_LEN};
    if (kek) {
        CK_ULONG nu = hsm_tmpl_unwrap(a->utmpl, &a->hmac_kt, a->copyable);
        t[n++] = (CK_ATTRIBUTE){CKA_UNWRAP_TEMPLATE, a->utmpl, nu * sizeof(CK_ATTRIBUTE)};
    }
    t[n++] = (CK_ATTRIBUTE){CKA_MODIFIABLE, &F, 1};
    return n;
}
