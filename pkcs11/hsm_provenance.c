/* Key provenance read back from the token (hsm_provenance.h). */
#include "hsm_provenance.h"

#include <string.h>

#include "hsm_internal.h"

struct facts_arg {
    const hsm_key_ref *k;
    hsm_key_facts *out;
};

/* Copy a blank-padded CK_UTF8CHAR field into a C string without the padding. */
static cdx_err facts_op(hsm_custody *c, CK_SESSION_HANDLE s, void *arg, CK_RV *rv)
{
    struct facts_arg *a = arg;
    CK_OBJECT_HANDLE h;
    cdx_err err = hsm_find_key(c, s, a->k, &h, rv);
    if (err)
        return err;
    hsm_key_info ki;
    unsigned unknown = 0;
    CK_RV r = hsm_tmpl_read(c, s, h, &ki, &unknown);
    if (r != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "C_GetAttributeValue");
    }
    a->out->attrs = ki.attrs & ~unknown;
    a->out->unknown = unknown;
    a->out->copyable_not_enforced = !hsm_caps_copyable(c);
    CK_TOKEN_INFO ti;
    if ((r = c->f->C_GetTokenInfo(c->slot_id, &ti)) != CKR_OK) {
        *rv = r;
        return hsm_ckr_fail(r, "C_GetTokenInfo");
    }
    hsm_unpad(a->out->serial, sizeof(a->out->serial), ti.serialNumber, sizeof(ti.serialNumber));
    hsm_unpad(a->out->manufacturer, sizeof(a->out->manufacturer), ti.manufacturerID,
              sizeof(ti.manufacturerID));
    hsm_unpad(a->out->model, sizeof(a->out->model), ti.model, sizeof(ti.model));
    return CDX_OK;
}

cdx_err hsm_key_facts_read(hsm_custody *c, const hsm_key_ref *k, hsm_key_facts *out)
{
    memset(out, 0, sizeof(*out));
    struct facts_arg a = {.k = k, .out = out};
    return hsm_run(c, facts_op, &a, true);
}

int hsm_facts_born_on_token(const hsm_key_facts *f)
{
    const unsigned both = HSM_A_LOCAL | HSM_A_NEVER_EXTRACTABLE;
    if ((f->attrs & both) == both)
        return 1;
    if (both & ~f->attrs & ~f->unknown) /* one of them reported FALSE */
        return 0;
    return -1;
}
