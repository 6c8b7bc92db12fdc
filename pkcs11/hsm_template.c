/*
 * What a Cipherdex key object looks like on the token: the attribute table,
 * reading an object's attributes, checking them against the kind's template,
 * and building the template of a new object (docs/KEYS.md "Templates").
 */
#include "hsm_internal.h"

#include <stdio.h>
#include <string.h>

static CK_BBOOL T = CK_TRUE, F = CK_FALSE;
static CK_OBJECT_CLASS SECRET = CKO_SECRET_KEY;
static CK_KEY_TYPE GENERIC = CKK_GENERIC_SECRET, AES = CKK_AES;
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
#define KEK_TRUE (HSM_A_TOKEN | HSM_A_PRIVATE | HSM_A_SENSITIVE | HSM_A_UNWRAP)
#define KEK_FALSE                                                                                  \
    (HSM_A_EXTRACTABLE | HSM_A_VERIFY | HSM_A_ENCRYPT | HSM_A_DECRYPT | HSM_A_WRAP | HSM_A_SIGN |  \
     HSM_A_DERIVE | HSM_A_MODIFIABLE | HSM_A_COPYABLE)

CK_RV hsm_tmpl_read(hsm_custody *c, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, hsm_key_info *ki,
                    unsigned *unknown)
{
    CK_BBOOL v[NBATTRS];
    CK_ATTRIBUTE t[NBATTRS + 4];
    char label[CDX_LABEL_MAX + 1];
    uint8_t id[CDX_ID_LEN];
    CK_KEY_TYPE kt = (CK_KEY_TYPE)-1;
    CK_ULONG vl = 0;
    for (size_t i = 0; i < NBATTRS; i++) {
        v[i] = CK_FALSE;
        t[i] = (CK_ATTRIBUTE){hsm_battrs[i].type, &v[i], sizeof(CK_BBOOL)};
    }
    t[NBATTRS] = (CK_ATTRIBUTE){CKA_LABEL, label, CDX_LABEL_MAX};
    t[NBATTRS + 1] = (CK_ATTRIBUTE){CKA_ID, id, sizeof(id)};
    t[NBATTRS + 2] = (CK_ATTRIBUTE){CKA_KEY_TYPE, &kt, sizeof(kt)};
    t[NBATTRS + 3] = (CK_ATTRIBUTE){CKA_VALUE_LEN, &vl, sizeof(vl)};
    CK_RV rv = c->f->C_GetAttributeValue(s, h, t, NBATTRS + 4);
    /* Per PKCS#11 these still fill every attribute they can. */
    if (rv != CKR_OK && rv != CKR_ATTRIBUTE_SENSITIVE && rv != CKR_ATTRIBUTE_TYPE_INVALID &&
        rv != CKR_BUFFER_TOO_SMALL)
        return rv;
    memset(ki, 0, sizeof(*ki));
    *unknown = 0;
    for (size_t i = 0; i < NBATTRS; i++) {
        if (t[i].ulValueLen == CK_UNAVAILABLE_INFORMATION)
            *unknown |= hsm_battrs[i].bit;
        else if (v[i])
            ki->attrs |= hsm_battrs[i].bit;
    }
    if (t[NBATTRS].ulValueLen != CK_UNAVAILABLE_INFORMATION) {
        memcpy(ki->label, label, t[NBATTRS].ulValueLen);
        ki->label[t[NBATTRS].ulValueLen] = '\0';
    }
    if (t[NBATTRS + 1].ulValueLen != CK_UNAVAILABLE_INFORMATION) {
        ki->id_len = t[NBATTRS + 1].ulValueLen;
        memcpy(ki->id, id, ki->id_len);
    }
    ki->key_type = t[NBATTRS + 2].ulValueLen == CK_UNAVAILABLE_INFORMATION ? (CK_ULONG)-1 : kt;
    ki->value_len = t[NBATTRS + 3].ulValueLen == CK_UNAVAILABLE_INFORMATION ? 0 : vl;
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
    for (size_t i = 0; i < NBATTRS; i++) {
        if (!(wrong & hsm_battrs[i].bit))
            continue;
        int w = snprintf(buf + off, cap - off, "%s%s", off ? "," : "", hsm_battrs[i].name);
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
    unsigned wrong = hsm_tmpl_wrong(kind, &ki, unknown);
    CK_KEY_TYPE want = kind == HSM_KEY_KEK ? CKK_AES : CKK_GENERIC_SECRET;
    char names[256];
    wrong_names(wrong, names, sizeof(names));
    if (ki.key_type != want)
        return cdx_fail(CDX_ERR_KEY_ATTRIBUTES, "%s has key type 0x%lx, need %s", label,
                        ki.key_type, kind == HSM_KEY_KEK ? "CKK_AES" : "CKK_GENERIC_SECRET");
    /* Unwrapped keys report CKA_VALUE_LEN 0 on SoftHSM; the KCV's HMAC enforces >= 32. */
    if (ki.value_len != CDX_KEY_LEN && !(ki.value_len == 0 && kind != HSM_KEY_KEK))
        return cdx_fail(CDX_ERR_KEY_ATTRIBUTES, "%s is %lu bytes long, need %d", label,
                        ki.value_len, CDX_KEY_LEN);
    if (wrong)
        return cdx_fail(CDX_ERR_KEY_ATTRIBUTES,
                        "%s does not match the Cipherdex template; wrong: %s (every key must be "
                        "sensitive, not extractable, not derivable, not modifiable, not copyable)",
                        label, names);
    return CDX_OK;
}

CK_ULONG hsm_tmpl_build(const struct hsm_create *a, CK_ATTRIBUTE *t, const char *label,
                        const uint8_t *id)
{
    CK_ULONG n = 0;
    bool kek = a->kind == HSM_KEY_KEK;
    t[n++] = (CK_ATTRIBUTE){CKA_CLASS, &SECRET, sizeof(SECRET)};
    t[n++] = (CK_ATTRIBUTE){CKA_KEY_TYPE, kek ? &AES : &GENERIC, sizeof(CK_KEY_TYPE)};
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
    t[n++] = (CK_ATTRIBUTE){CKA_COPYABLE, &F, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, strlen(label)};
    t[n++] = (CK_ATTRIBUTE){CKA_ID, (void *)id, CDX_ID_LEN};
    t[n++] = (CK_ATTRIBUTE){CKA_MODIFIABLE, &F, 1};
    return n;
}
