/*
 * hsm_ckr.h - the edge where CK_RV becomes cdx_err (internal to pkcs11/).
 * The raw value is kept for the log; callers never see CK_RV.
 * Thread-safe (no shared state; hsm_ckr_fail sets the calling thread's detail).
 */
#ifndef HSM_CKR_H
#define HSM_CKR_H

#include <stdbool.h>

#include <p11-kit/pkcs11.h>

#include "cdx_err.h"

/* "CKR_DEVICE_ERROR", or "CKR_0x...". Returns a static or thread-local string. */
const char *hsm_ckr_name(CK_RV rv);

/* True when rv means the session, login, token, device or a handle is gone: recover. */
bool hsm_ckr_recoverable(CK_RV rv);

/* True for PIN states after which we must never log in again on our own. */
bool hsm_ckr_pin_fatal(CK_RV rv);

/*
 * The cdx_err hsm_ckr_fail maps rv to, without logging or setting the
 * detail (for callers that log the raw value with more context, such as a
 * slot id, and keep the error per item). CKR_OK gives CDX_OK.
 */
cdx_err hsm_ckr_code(CK_RV rv);

/*
 * Generic mapping for an operation that failed with rv (not CKR_OK); logs
 * event=`what` with the raw value and sets the detail. Returns
 * CDX_ERR_HSM_UNAVAILABLE (recoverable rv), CDX_ERR_HSM_PIN_INCORRECT /
 * _LOCKED (PIN states), CDX_ERR_RESOURCE_EXHAUSTED (host or device memory, session count),
 * CDX_ERR_MECHANISM_UNSUPPORTED, or CDX_ERR_HSM_FAILED.
 */
cdx_err hsm_ckr_fail(CK_RV rv, const char *what);

/*
 * hsm_ckr_fail for a key creation (`what` = C_GenerateKey, C_CreateObject,
 * C_UnwrapKey) of the object labelled `label`: a template the token refused
 * (CKR_ATTRIBUTE_TYPE_INVALID, CKR_ATTRIBUTE_VALUE_INVALID,
 * CKR_TEMPLATE_INCONSISTENT, CKR_GENERAL_ERROR - NSS's answer to an unknown
 * attribute) gets CDX_ERR_HSM_FAILED with a hint naming the template's
 * portability-sensitive parts and docs/CUSTODY.md "Token compatibility".
 * Logs the raw value. Returns what hsm_ckr_fail returns otherwise.
 */
cdx_err hsm_ckr_fail_create(CK_RV rv, const char *what, const char *label);

#endif
