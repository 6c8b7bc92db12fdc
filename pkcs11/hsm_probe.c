/* The token capability probe (hsm_probe.h). */
#include "hsm_probe.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "hsm_internal.h"

static const hsm_probe_mech MECHS[HSM_PROBE_MECHS] = {
    {"CKM_SHA256_HMAC", CKM_SHA256_HMAC, CKF_SIGN, "subkeys and KCVs", true, 0, 0, 0, 0},
    {"CKM_GENERIC_SECRET_KEY_GEN", CKM_GENERIC_SECRET_KEY_GEN, CKF_GENERATE, "root and index keys",
     true, 0, 0, 0, 0},
    {"CKM_SHA256_KEY_GEN", CKM_SHA256_KEY_GEN, CKF_GENERATE, "CKK_SHA256_HMAC keys", false, 0, 0, 0,
     0},
    {"CKM_AES_KEY_GEN", CKM_AES_KEY_GEN, CKF_GENERATE, "KEKs (kek create)", false, 0, 0, 0, 0},
    {"CKM_AES_KEY_WRAP_KWP", CKM_AES_KEY_WRAP_KWP, CKF_UNWRAP, "unwrap (RFC 5649)", false, 0, 0, 0,
     0},
    {"CKM_AES_KEY_WRAP_PAD", CKM_AES_KEY_WRAP_PAD, CKF_UNWRAP,
     "unwrap (RFC 5649 on SoftHSM/nShield; PKCS#7 on NSS)", false, 0, 0, 0, 0},
    {"CKM_AES_KEY_WRAP", CKM_AES_KEY_WRAP, CKF_UNWRAP, "(RFC 3394: not used)", false, 0, 0, 0, 0},
    {"CKM_SHA256", CKM_SHA256, CKF_DIGEST, "(not used)", false, 0, 0, 0, 0},
};

const char *hsm_probe_rv_name(unsigned long rv)
{
    return hsm_ckr_name((CK_RV)rv);
}

static void say(hsm_probe *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(hsm_probe *p, const char *fmt, ...)
{
    size_t l = strlen(p->verdict);
    if (l + 2 >= sizeof(p->verdict))
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->verdict + l, sizeof(p->verdict) - l, fmt, ap);
    va_end(ap);
    l = strlen(p->verdict);
    if (l + 1 < sizeof(p->verdict))
        strcat(p->verdict, "\n");
}

/*
 * A session copy of the index-key template: CKA_TOKEN FALSE, key type kt, and
 * CKA_COPYABLE dropped unless `copyable`. Returns the attribute count.
 */
static CK_ULONG session_template(CK_ATTRIBUTE *t, CK_KEY_TYPE *kt, bool copyable, const char *label,
                                 const uint8_t *id)
{
    static CK_BBOOL F = CK_FALSE;
    struct hsm_create a = {.kind = HSM_KEY_INDEX,
                           .how = HSM_HOW_GENERATE,
                           .key_type = CKK_GENERIC_SECRET,
                           .copyable = true};
    CK_ULONG n = hsm_tmpl_build(&a, t, label, id), m = 0;
    for (CK_ULONG i = 0; i < n; i++) {
        if (t[i].type == CKA_COPYABLE && !copyable)
            continue;
        t[m] = t[i];
        if (t[m].type == CKA_TOKEN)
            t[m].pValue = &F;
        if (t[m].type == CKA_KEY_TYPE)
            t[m].pValue = kt;
        m++;
    }
    return m;
}

static hsm_probe_try tried(CK_RV rv)
{
    return (hsm_probe_try){.tried = true, .rv = (unsigned long)rv};
}

static cdx_err probe_op(hsm_custody *c, CK_SESSION_HANDLE s, void *arg, CK_RV *rv)
{
    hsm_probe *p = arg;
    CK_RV r;
    CK_ATTRIBUTE t[40];
    static const uint8_t id[CDX_ID_LEN] = {0xcd, 0x70, 0x0b, 0xe0};
    const char *label = "cipherdex-probe";
    CK_MECHANISM gen = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
    CK_KEY_TYPE generic = CKK_GENERIC_SECRET, hmac = CKK_SHA256_HMAC;
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE, h2 = CK_INVALID_HANDLE, h3 = CK_INVALID_HANDLE;

    /* Templates Cipherdex could use, most protective first. */
    CK_ULONG n = session_template(t, &generic, true, label, id);
    p->gen_full = tried(r = c->f->C_GenerateKey(s, &gen, t, n, &h));
    if (r != CKR_OK) {
        h = CK_INVALID_HANDLE;
        n = session_template(t, &generic, false, label, id);
        p->gen_no_copyable = tried(r = c->f->C_GenerateKey(s, &gen, t, n, &h));
        if (r != CKR_OK)
            h = CK_INVALID_HANDLE;
    }
    n = session_template(t, &hmac, true, label, id);
    p->gen_sha256_hmac = tried(r = c->f->C_GenerateKey(s, &gen, t, n, &h3));
    if (r != CKR_OK)
        h3 = CK_INVALID_HANDLE;
    if (h == CK_INVALID_HANDLE && h3 != CK_INVALID_HANDLE) {
        h = h3; /* go on with the key the token could make */
        h3 = CK_INVALID_HANDLE;
    }
    if (h != CK_INVALID_HANDLE) {
        hsm_key_info ki;
        unsigned unknown = 0;
        if ((r = hsm_tmpl_read(c, s, h, &ki, &unknown)) == CKR_OK) {
            p->attrs = ki.attrs & ~unknown;
            p->unknown = unknown;
        }
        uint8_t mac[32];
        p->sign = tried(hsm_sign_hmac(c, s, h, "probe", 5, mac));
        CK_BBOOL T = CK_TRUE;
        CK_ATTRIBUTE d = {CKA_DERIVE, &T, sizeof(T)};
        p->set_derive = tried(c->f->C_SetAttributeValue(s, h, &d, 1));
        p->copy_derive = tried(r = c->f->C_CopyObject(s, h, &d, 1, &h2));
        if (r != CKR_OK)
            h2 = CK_INVALID_HANDLE;
    }
    CK_OBJECT_HANDLE all[3] = {h, h2, h3};
    for (int i = 0; i < 3; i++)
        if (all[i] != CK_INVALID_HANDLE)
            (void)c->f->C_DestroyObject(s, all[i]);

    /* What custody decides here (hsm_caps.c): the same calls index create makes. */
    p->pad_kat = -1;
    if (hsm_mech_has(c, CKM_AES_KEY_WRAP_PAD, CKF_UNWRAP)) {
        bool kat = false;
        if ((r = hsm_unwrap_kat(c, s, CKM_AES_KEY_WRAP_PAD, &kat)) != CKR_OK) {
            *rv = r;
            return hsm_ckr_fail(r, "unwrap known-answer test");
        }
        p->pad_kat = kat;
    }
    cdx_err err = hsm_caps_probe(c, s, false, rv);
    if (err && err != CDX_ERR_KEY_ATTRIBUTES) /* a refusal is a finding here */
        return err;
    p->copyable_supported = atomic_load(&c->copyable_cap) != 2;
    p->copyable_opt_in = c->cfg.copyable == HSM_COPYABLE_UNSUPPORTED;
    p->allowed_mechanisms = atomic_load(&c->allowed_mechs_ok);
    /* A session KEK with the KEK template: does the token keep CKA_UNWRAP_TEMPLATE? */
    if (hsm_mech_has(c, CKM_AES_KEY_GEN, CKF_GENERATE)) {
        static CK_BBOOL F = CK_FALSE;
        struct hsm_create ka = {.kind = HSM_KEY_KEK,
                                .how = HSM_HOW_GENERATE,
                                .key_type = CKK_AES,
                                .hmac_kt = hsm_hmac_key_type(c),
                                .copyable = hsm_caps_copyable(c)};
        CK_ATTRIBUTE kt[40];
        CK_ULONG kn = hsm_tmpl_build(&ka, kt, "cipherdex-probe-kek", id);
        for (CK_ULONG i = 0; i < kn; i++)
            if (kt[i].type == CKA_TOKEN)
                kt[i].pValue = &F;
        CK_MECHANISM aes = {CKM_AES_KEY_GEN, NULL, 0};
        CK_OBJECT_HANDLE kh = CK_INVALID_HANDLE;
        p->kek = tried(r = c->f->C_GenerateKey(s, &aes, kt, kn, &kh));
        if (r == CKR_OK) {
            hsm_key_info ki;
            unsigned unknown = 0;
            p->kek_utmpl_kept =
                hsm_tmpl_read(c, s, kh, &ki, &unknown) == CKR_OK &&
                !(hsm_tmpl_wrong(HSM_KEY_KEK, &ki, unknown & ~hsm_tmpl_optional(c)) &
                  HSM_A_UNWRAP_TEMPLATE);
            (void)c->f->C_DestroyObject(s, kh);
        }
    }

    CK_MECHANISM_TYPE m = 0;
    err = hsm_unwrap_mech(c, s, &m, rv);
    if (err == CDX_ERR_MECHANISM_UNSUPPORTED)
        snprintf(p->unwrap_why, sizeof(p->unwrap_why), "%s", cdx_err_detail());
    else if (err)
        return err;
    p->unwrap_mech = err ? 0 : m;
    snprintf(p->unwrap_name, sizeof(p->unwrap_name), "%s", p->unwrap_mech ? hsm_mech_name(m) : "");
    p->hmac_key_type = hsm_hmac_key_type(c);
    return CDX_OK;
}

static bool ok(hsm_probe_try t)
{
    return t.tried && t.rv == CKR_OK;
}

cdx_err hsm_probe_run(hsm_custody *c, hsm_probe *p)
{
    memset(p, 0, sizeof(*p));
    memcpy(p->mech, MECHS, sizeof(MECHS));
    CK_INFO info;
    if (c->f->C_GetInfo(&info) == CKR_OK) {
        hsm_unpad(p->library, sizeof(p->library), info.libraryDescription,
                  sizeof(info.libraryDescription));
        p->cryptoki_major = info.cryptokiVersion.major;
        p->cryptoki_minor = info.cryptokiVersion.minor;
    }
    CK_TOKEN_INFO ti;
    CK_RV r = c->f->C_GetTokenInfo(c->slot_id, &ti);
    if (r != CKR_OK)
        return hsm_ckr_fail(r, "C_GetTokenInfo");
    hsm_unpad(p->label, sizeof(p->label), ti.label, sizeof(ti.label));
    hsm_unpad(p->manufacturer, sizeof(p->manufacturer), ti.manufacturerID,
              sizeof(ti.manufacturerID));
    hsm_unpad(p->model, sizeof(p->model), ti.model, sizeof(ti.model));
    hsm_unpad(p->serial, sizeof(p->serial), ti.serialNumber, sizeof(ti.serialNumber));
    p->max_sessions = ti.ulMaxSessionCount;
    p->max_rw_sessions = ti.ulMaxRwSessionCount;
    p->pin_min = ti.ulMinPinLen;
    p->pin_max = ti.ulMaxPinLen;
    CK_ULONG nm = 0;
    if (c->f->C_GetMechanismList(c->slot_id, NULL, &nm) == CKR_OK)
        p->n_mechanisms = nm;
    for (size_t i = 0; i < HSM_PROBE_MECHS; i++) {
        CK_MECHANISM_INFO mi;
        if (c->f->C_GetMechanismInfo(c->slot_id, p->mech[i].type, &mi) == CKR_OK) {
            p->mech[i].listed = true;
            p->mech[i].flags = mi.flags;
            p->mech[i].min_key = mi.ulMinKeySize;
            p->mech[i].max_key = mi.ulMaxKeySize;
        }
    }
    cdx_err err = hsm_run(c, probe_op, p, true);
    if (err)
        return err;

    /* The verdict. */
    p->can_run = true;
    for (size_t i = 0; i < HSM_PROBE_MECHS; i++) {
        const hsm_probe_mech *m = &p->mech[i];
        bool usable = m->listed && (m->flags & m->need);
        if (m->required && !usable) {
            p->can_run = false;
            say(p, "MISSING: %s with %s (%s)", m->name,
                m->need == CKF_SIGN ? "CKF_SIGN" : "CKF_GENERATE", m->use);
        }
    }
    if (p->unwrap_mech && !(ok(p->kek) && p->kek_utmpl_kept))
        say(p,
            "no unwrap: KEKs are refused here: %s (security review M2: a KEK must force the "
            "index-key template on what it unwraps)",
            ok(p->kek)     ? "the token accepts CKA_UNWRAP_TEMPLATE but does not keep it"
            : p->kek.tried ? "the token refuses Cipherdex's KEK template"
                           : "no CKM_AES_KEY_GEN");
    else if (p->unwrap_mech)
        say(p, "unwrap: %s%s", hsm_mech_name(p->unwrap_mech),
            c->cfg.unwrap_mechanism                  ? " ([hsm] unwrap_mechanism)"
            : p->unwrap_mech == CKM_AES_KEY_WRAP_PAD ? " (passed the RFC 5649 known-answer test)"
                                                     : "");
    else
        say(p,
            "no unwrap: `index create --unwrap-kek` cannot work here (generate and adopt "
            "can): %s",
            p->unwrap_why);
    if (!p->copyable_supported && !p->copyable_opt_in) {
        say(p, "CKA_COPYABLE not honoured on token objects: Cipherdex refuses to create or adopt "
               "keys here by default; a PIN holder could copy a key into a derivable one "
               "(docs/CUSTODY.md; `[hsm] copyable = unsupported` accepts that)");
        p->can_run = false;
    } else if (!p->copyable_supported) {
        say(p, "CKA_COPYABLE not honoured on token objects; accepted by `[hsm] copyable = "
               "unsupported`: forbid copy and derive with the HSM's own policy (keys record it)");
    }
    if (ok(p->gen_full)) {
        say(p, "ok: index keys with the full template (CKA_COPYABLE FALSE) as session objects");
    } else if (ok(p->gen_no_copyable)) {
        say(p, "CKA_COPYABLE refused on session keys (%s): keys can be made only without it",
            hsm_probe_rv_name(p->gen_full.rv));
        if (!p->copyable_opt_in)
            p->can_run = false;
    } else if (ok(p->gen_sha256_hmac)) {
        say(p,
            "CKK_GENERIC_SECRET HMAC keys refused (%s); CKK_SHA256_HMAC works (YubiHSM 2 "
            "style): `[hsm] hmac_key_type = sha256_hmac`",
            hsm_probe_rv_name(p->gen_full.rv));
    } else {
        say(p, "MISSING: the token generates no 32-byte HMAC key with Cipherdex's template (%s)",
            hsm_probe_rv_name(p->gen_full.rv));
        p->can_run = false;
    }
    if (p->sign.tried && !ok(p->sign)) {
        say(p, "MISSING: HMAC-SHA256 with such a key fails (%s)", hsm_probe_rv_name(p->sign.rv));
        p->can_run = false;
    }
    if (ok(p->set_derive)) {
        say(p, "UNSAFE: the token let CKA_DERIVE be set on a CKA_MODIFIABLE=FALSE key");
        p->can_run = false;
    }
    if (ok(p->copy_derive))
        say(p, "WARNING: C_CopyObject made a derivable copy of the key (CKA_COPYABLE not "
               "enforced): restrict copy and derive with the HSM's own policy");
    if (p->unknown)
        say(p, "the token does not report some attributes (n/a below): listings show n/a and "
               "Cipherdex treats them as not proven");
    return CDX_OK;
}
