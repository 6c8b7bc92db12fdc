/* cipherdex-hsm probe: the configured token's capability table and verdict (hsm_probe.h). */
#include <stdio.h>
#include <string.h>

#include "app_hsmtool.h"
#include "hsm_keys.h"
#include "hsm_probe.h"

static const char *try_text(hsm_probe_try t)
{
    return !t.tried ? "not tried" : t.rv == 0 ? "ok" : hsm_probe_rv_name(t.rv);
}

static void try_json(const char *key, hsm_probe_try t, bool last)
{
    app_out_json_key(stdout, key);
    if (t.tried)
        app_out_json_str(stdout, try_text(t));
    else
        fputs("null", stdout);
    fputs(last ? "" : ",", stdout);
}

static const char *attr_text(const hsm_probe *p, unsigned bit)
{
    return p->unknown & bit ? "n/a" : p->attrs & bit ? "yes" : "no";
}

static const char *kt_name(unsigned long kt)
{
    return kt == 0x10UL ? "CKK_GENERIC_SECRET" : kt == 0x2bUL ? "CKK_SHA256_HMAC" : "?";
}

static void print_json(const hsm_probe *p)
{
    printf("{\"command\":\"probe\",\"token\":{");
    const char *kv[][2] = {{"label", p->label},
                           {"manufacturer", p->manufacturer},
                           {"model", p->model},
                           {"serial", p->serial},
                           {"library", p->library}};
    for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); i++) {
        app_out_json_key(stdout, kv[i][0]);
        app_out_json_str(stdout, kv[i][1]);
        putchar(',');
    }
    printf("\"cryptoki\":\"%u.%u\",\"max_sessions\":%lu,\"max_rw_sessions\":%lu,"
           "\"pin_len\":[%lu,%lu],\"mechanisms\":%lu},\"mechanisms\":[",
           p->cryptoki_major, p->cryptoki_minor, p->max_sessions, p->max_rw_sessions, p->pin_min,
           p->pin_max, p->n_mechanisms);
    for (size_t i = 0; i < HSM_PROBE_MECHS; i++) {
        const hsm_probe_mech *m = &p->mech[i];
        printf("%s{", i ? "," : "");
        app_out_json_key(stdout, "name");
        app_out_json_str(stdout, m->name);
        printf(",\"type\":\"0x%lx\",\"listed\":%s,\"usable\":%s,\"flags\":\"0x%lx\",", m->type,
               m->listed ? "true" : "false", m->listed && (m->flags & m->need) ? "true" : "false",
               m->flags);
        app_out_json_key(stdout, "use");
        app_out_json_str(stdout, m->use);
        printf(",\"required\":%s}", m->required ? "true" : "false");
    }
    fputs("],\"behaviour\":{", stdout);
    try_json("generate_full_template", p->gen_full, false);
    try_json("generate_without_copyable", p->gen_no_copyable, false);
    try_json("generate_sha256_hmac_type", p->gen_sha256_hmac, false);
    try_json("hmac_sign", p->sign, false);
    try_json("set_derive_refused_means_not_ok", p->set_derive, false);
    try_json("copy_with_derive_refused_means_not_ok", p->copy_derive, true);
    fputs("},\"attributes\":{", stdout);
    for (unsigned i = 0; i < HSM_NATTRS; i++) {
        printf("%s", i ? "," : "");
        app_out_json_key(stdout, hsm_attr_name(1u << i));
        const char *v = attr_text(p, 1u << i);
        fputs(!strcmp(v, "n/a") ? "null" : !strcmp(v, "yes") ? "true" : "false", stdout);
    }
    printf("},\"custody\":{\"copyable\":%s,\"copyable_opt_in\":%s,\"allowed_mechanisms\":%s,"
           "\"pad_kat\":%s,\"unwrap_mechanism\":",
           p->copyable_supported ? "true" : "false", p->copyable_opt_in ? "true" : "false",
           p->allowed_mechanisms ? "true" : "false",
           p->pad_kat < 0 ? "null"
           : p->pad_kat   ? "true"
                          : "false");
    if (p->unwrap_mech)
        printf("\"0x%lx\"", p->unwrap_mech);
    else
        fputs("null", stdout);
    fputs(",\"unwrap_why\":", stdout);
    if (p->unwrap_mech)
        fputs("null", stdout);
    else
        app_out_json_str(stdout, p->unwrap_why);
    printf(",\"hmac_key_type\":\"%s\",", kt_name(p->hmac_key_type));
    try_json("kek_session_create", p->kek, false);
    printf("\"kek_unwrap_template_kept\":%s",
           p->kek.tried && !p->kek.rv ? (p->kek_utmpl_kept ? "true" : "false") : "null");
    printf("},\"can_run\":%s,\"verdict\":[", p->can_run ? "true" : "false");
    const char *s = p->verdict;
    bool first = true;
    while (*s) {
        const char *e = strchr(s, '\n');
        size_t l = e ? (size_t)(e - s) : strlen(s);
        char line[512];
        snprintf(line, sizeof(line), "%.*s", (int)l, s);
        printf("%s", first ? "" : ",");
        app_out_json_str(stdout, line);
        first = false;
        s += l + (e ? 1 : 0);
    }
    puts("]}");
}

/* A CK_TOKEN_INFO session limit: 0 is CK_EFFECTIVELY_INFINITE, ~0 CK_UNAVAILABLE_INFORMATION. */
static void limit_text(unsigned long v, char *buf, size_t cap)
{
    if (v == 0)
        snprintf(buf, cap, "no limit");
    else if (v == ~0UL)
        snprintf(buf, cap, "n/a");
    else
        snprintf(buf, cap, "%lu", v);
}

static void print_text(const hsm_probe *p)
{
    printf("token        %s (%s %s), serial %s\n", p->label, p->manufacturer, p->model, p->serial);
    printf("library      %s, PKCS#11 %u.%u\n", p->library, p->cryptoki_major, p->cryptoki_minor);
    char ms[24], mrw[24];
    limit_text(p->max_sessions, ms, sizeof(ms));
    limit_text(p->max_rw_sessions, mrw, sizeof(mrw));
    printf("sessions     max %s, read-write max %s\n", ms, mrw);
    printf("PIN length   %lu-%lu\n", p->pin_min, p->pin_max);
    printf("mechanisms   %lu listed; the ones Cipherdex uses:\n", p->n_mechanisms);
    for (size_t i = 0; i < HSM_PROBE_MECHS; i++) {
        const hsm_probe_mech *m = &p->mech[i];
        const char *state = !m->listed             ? "absent"
                            : (m->flags & m->need) ? "yes"
                                                   : "listed, flag missing";
        printf("  %-28s %-22s %s%s\n", m->name, state, m->use, m->required ? " (required)" : "");
    }
    printf("session-key tests (CKA_TOKEN false, destroyed after):\n");
    printf("  %-44s %s\n", "generate, full template (COPYABLE false)", try_text(p->gen_full));
    printf("  %-44s %s\n", "generate without CKA_COPYABLE", try_text(p->gen_no_copyable));
    printf("  %-44s %s\n", "generate as CKK_SHA256_HMAC", try_text(p->gen_sha256_hmac));
    printf("  %-44s %s\n", "HMAC-SHA256 sign", try_text(p->sign));
    printf("  %-44s %s\n", "set CKA_DERIVE true (must be refused)", try_text(p->set_derive));
    printf("  %-44s %s\n", "copy with CKA_DERIVE true (must be refused)", try_text(p->copy_derive));
    printf("custody's decisions with this configuration (as index create makes them):\n");
    printf("  %-44s %s\n", "CKA_COPYABLE honoured on token objects",
           p->copyable_supported ? "yes"
           : p->copyable_opt_in  ? "no (accepted: [hsm] copyable = unsupported)"
                                 : "no (keys refused)");
    printf("  %-44s %s\n", "CKA_ALLOWED_MECHANISMS honoured", p->allowed_mechanisms ? "yes" : "no");
    printf("  %-44s %s\n", "0x210A known-answer test (RFC 5649)",
           p->pad_kat < 0 ? "not run"
           : p->pad_kat   ? "passed"
                          : "failed");
    if (p->unwrap_mech)
        printf("  %-44s %s (0x%lx)\n", "index unwrap mechanism", p->unwrap_name, p->unwrap_mech);
    else
        printf("  %-44s none: %s\n", "index unwrap mechanism", p->unwrap_why);
    printf("  %-44s %s\n", "HMAC key type of new keys", kt_name(p->hmac_key_type));
    printf("  %-44s %s\n", "KEK keeps CKA_UNWRAP_TEMPLATE (session KEK)",
           !p->kek.tried       ? "not tried (no CKM_AES_KEY_GEN)"
           : p->kek.rv         ? hsm_probe_rv_name(p->kek.rv)
           : p->kek_utmpl_kept ? "yes"
                               : "no (KEKs refused)");
    printf("attributes read back:");
    for (unsigned i = 0; i < HSM_NATTRS; i++)
        printf(" %s=%s", hsm_attr_name(1u << i), attr_text(p, 1u << i));
    printf("\nverdict: Cipherdex %s on this token\n%s", p->can_run ? "can run" : "CANNOT run",
           p->verdict);
}

cdx_err app_hsmtool_probe(ctx *x)
{
    hsm_probe p;
    cdx_err err;
    if ((err = app_hsmtool_open_custody(x)) || (err = hsm_probe_run(x->c, &p)))
        return err;
    if (x->json)
        print_json(&p);
    else
        print_text(&p);
    if (!p.can_run)
        return cdx_fail(CDX_ERR_MECHANISM_UNSUPPORTED,
                        "Cipherdex cannot run on token %s as configured: see the verdict", p.label);
    return CDX_OK;
}
