#include "hsm_ckr.h"

#include <stdio.h>

#include "cdx_log.h"

#define N(x)                                                                                       \
    {                                                                                              \
        x, #x                                                                                      \
    }
static const struct {
    CK_RV rv;
    const char *name;
} names[] = {
    N(CKR_OK),
    N(CKR_CANCEL),
    N(CKR_HOST_MEMORY),
    N(CKR_SLOT_ID_INVALID),
    N(CKR_GENERAL_ERROR),
    N(CKR_FUNCTION_FAILED),
    N(CKR_ARGUMENTS_BAD),
    N(CKR_ATTRIBUTE_READ_ONLY),
    N(CKR_ATTRIBUTE_SENSITIVE),
    N(CKR_ATTRIBUTE_TYPE_INVALID),
    N(CKR_ATTRIBUTE_VALUE_INVALID),
    N(CKR_ACTION_PROHIBITED),
    N(CKR_DATA_INVALID),
    N(CKR_DATA_LEN_RANGE),
    N(CKR_DEVICE_ERROR),
    N(CKR_DEVICE_MEMORY),
    N(CKR_DEVICE_REMOVED),
    N(CKR_FUNCTION_CANCELED),
    N(CKR_FUNCTION_NOT_SUPPORTED),
    N(CKR_KEY_HANDLE_INVALID),
    N(CKR_KEY_SIZE_RANGE),
    N(CKR_KEY_TYPE_INCONSISTENT),
    N(CKR_KEY_FUNCTION_NOT_PERMITTED),
    N(CKR_KEY_NOT_WRAPPABLE),
    N(CKR_KEY_UNEXTRACTABLE),
    N(CKR_MECHANISM_INVALID),
    N(CKR_MECHANISM_PARAM_INVALID),
    N(CKR_OBJECT_HANDLE_INVALID),
    N(CKR_OPERATION_ACTIVE),
    N(CKR_OPERATION_NOT_INITIALIZED),
    N(CKR_PIN_INCORRECT),
    N(CKR_PIN_INVALID),
    N(CKR_PIN_LEN_RANGE),
    N(CKR_PIN_EXPIRED),
    N(CKR_PIN_LOCKED),
    N(CKR_SESSION_CLOSED),
    N(CKR_SESSION_COUNT),
    N(CKR_SESSION_HANDLE_INVALID),
    N(CKR_SESSION_READ_ONLY),
    N(CKR_TEMPLATE_INCOMPLETE),
    N(CKR_TEMPLATE_INCONSISTENT),
    N(CKR_TOKEN_NOT_PRESENT),
    N(CKR_TOKEN_NOT_RECOGNIZED),
    N(CKR_TOKEN_WRITE_PROTECTED),
    N(CKR_UNWRAPPING_KEY_HANDLE_INVALID),
    N(CKR_UNWRAPPING_KEY_SIZE_RANGE),
    N(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT),
    N(CKR_USER_ALREADY_LOGGED_IN),
    N(CKR_USER_NOT_LOGGED_IN),
    N(CKR_USER_PIN_NOT_INITIALIZED),
    N(CKR_USER_TYPE_INVALID),
    N(CKR_WRAPPED_KEY_INVALID),
    N(CKR_WRAPPED_KEY_LEN_RANGE),
    N(CKR_BUFFER_TOO_SMALL),
    N(CKR_CRYPTOKI_NOT_INITIALIZED),
    N(CKR_CRYPTOKI_ALREADY_INITIALIZED),
    N(CKR_ENCRYPTED_DATA_INVALID),
    N(CKR_ENCRYPTED_DATA_LEN_RANGE),
    N(CKR_RANDOM_NO_RNG),
    N(CKR_DOMAIN_PARAMS_INVALID),
    N(CKR_SIGNATURE_INVALID),
};

const char *hsm_ckr_name(CK_RV rv)
{
    static _Thread_local char buf[32];
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (names[i].rv == rv)
            return names[i].name;
    snprintf(buf, sizeof(buf), "CKR_0x%lx", (unsigned long)rv);
    return buf;
}

bool hsm_ckr_recoverable(CK_RV rv)
{
    switch (rv) {
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_SESSION_CLOSED:
    case CKR_USER_NOT_LOGGED_IN:
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_REMOVED:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_TOKEN_NOT_RECOGNIZED:
    case CKR_OBJECT_HANDLE_INVALID:
    case CKR_KEY_HANDLE_INVALID:
    case CKR_SLOT_ID_INVALID:
    case CKR_CRYPTOKI_NOT_INITIALIZED:
        return true;
    default:
        return false;
    }
}

bool hsm_ckr_pin_fatal(CK_RV rv)
{
    return rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LOCKED || rv == CKR_PIN_EXPIRED ||
           rv == CKR_PIN_INVALID || rv == CKR_PIN_LEN_RANGE;
}

cdx_err hsm_ckr_code(CK_RV rv)
{
    switch (rv) {
    case CKR_OK:
        return CDX_OK;
    case CKR_PIN_INCORRECT:
    case CKR_PIN_INVALID:
    case CKR_PIN_LEN_RANGE:
        return CDX_ERR_HSM_PIN_INCORRECT;
    case CKR_PIN_LOCKED:
    case CKR_PIN_EXPIRED:
        return CDX_ERR_HSM_PIN_LOCKED;
    case CKR_MECHANISM_INVALID:
    case CKR_MECHANISM_PARAM_INVALID:
    case CKR_FUNCTION_NOT_SUPPORTED:
        return CDX_ERR_MECHANISM_UNSUPPORTED;
    case CKR_HOST_MEMORY:
    case CKR_DEVICE_MEMORY:
    case CKR_SESSION_COUNT:
        return CDX_ERR_RESOURCE_EXHAUSTED;
    default:
        return hsm_ckr_recoverable(rv) ? CDX_ERR_HSM_UNAVAILABLE : CDX_ERR_HSM_FAILED;
    }
}

cdx_err hsm_ckr_fail(CK_RV rv, const char *what)
{
    cdx_log(CDX_LOG_WARN, "pkcs11_error", "op=%s ckr=%s rv=0x%lx", what, hsm_ckr_name(rv),
            (unsigned long)rv);
    switch (rv) {
    case CKR_PIN_INCORRECT:
    case CKR_PIN_INVALID:
    case CKR_PIN_LEN_RANGE:
        return cdx_fail(CDX_ERR_HSM_PIN_INCORRECT,
                        "%s: the token rejected the PIN (%s); fix the PIN source. Cipherdex will "
                        "not retry the login on its own",
                        what, hsm_ckr_name(rv));
    case CKR_PIN_LOCKED:
    case CKR_PIN_EXPIRED:
        return cdx_fail(CDX_ERR_HSM_PIN_LOCKED,
                        "%s: the token PIN is %s; a security officer must unlock or reset it", what,
                        rv == CKR_PIN_LOCKED ? "locked" : "expired");
    case CKR_MECHANISM_INVALID:
    case CKR_MECHANISM_PARAM_INVALID:
    case CKR_FUNCTION_NOT_SUPPORTED:
        return cdx_fail(CDX_ERR_MECHANISM_UNSUPPORTED, "%s: the token does not support it (%s)",
                        what, hsm_ckr_name(rv));
    case CKR_HOST_MEMORY:
    case CKR_DEVICE_MEMORY:
    case CKR_SESSION_COUNT:
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "%s: token out of resources (%s)", what,
                        hsm_ckr_name(rv));
    default:
        if (hsm_ckr_recoverable(rv))
            return cdx_fail(CDX_ERR_HSM_UNAVAILABLE, "%s: token unavailable (%s)", what,
                            hsm_ckr_name(rv));
        return cdx_fail(CDX_ERR_HSM_FAILED, "%s: the token refused the operation (%s)", what,
                        hsm_ckr_name(rv));
    }
}

cdx_err hsm_ckr_fail_create(CK_RV rv, const char *what, const char *label)
{
    if (rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_VALUE_INVALID &&
        rv != CKR_TEMPLATE_INCONSISTENT && rv != CKR_GENERAL_ERROR)
        return hsm_ckr_fail(rv, what);
    cdx_log(CDX_LOG_WARN, "pkcs11_error", "op=%s ckr=%s rv=0x%lx label=%s", what, hsm_ckr_name(rv),
            (unsigned long)rv, label);
    return cdx_fail(CDX_ERR_HSM_FAILED,
                    "%s: the token refused the Cipherdex key template for %s (%s). The token may "
                    "not support part of it: CKA_COPYABLE (PKCS#11 2.40), CKA_UNWRAP_TEMPLATE, "
                    "CKA_ALLOWED_MECHANISMS, or the HMAC key type (CKK_GENERIC_SECRET); run "
                    "cipherdex-hsm probe and see docs/CUSTODY.md, \"Token compatibility\" ([hsm] "
                    "copyable, hmac_key_type), and the raw CKR_* in the log",
                    what, label, hsm_ckr_name(rv));
}
