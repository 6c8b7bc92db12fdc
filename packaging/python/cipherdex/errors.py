"""Status codes and the exceptions that carry them.

Every response of the appliance carries a status: a stable numeric code and a message that says
what to fix. 0-16 keep the meanings of ``google.rpc.Code``; Cipherdex's own conditions start at
100 (docs/WIRE.md, "Status codes"). Numbers never change once released; new ones are only
added. ``StatusCode`` mirrors ``proto/cdx_err.h`` (the package's test checks that it does).

A status other than OK raises the ``CipherdexError`` subclass of its code (``NotFound`` for 5,
``PermissionDenied`` for 7, ...). A code this package does not know yet (a newer server) raises
``CipherdexError`` itself, with the number in ``.code``.
"""
import enum
from typing import Dict, FrozenSet, Optional, Type


class StatusCode(enum.IntEnum):
    """Wire status codes (``Status.code``). Never renumbered."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16
    INTEGRITY = 100
    ROLLBACK_DETECTED = 101
    HSM_UNAVAILABLE = 102
    HSM_PIN_INCORRECT = 103
    KEY_NOT_FOUND = 104
    KEY_REPLACED = 105
    KEY_AMBIGUOUS = 106
    STORE_UNAVAILABLE = 107
    AUDIT_UNAVAILABLE = 108
    BUSY = 109
    FRAME_TOO_LARGE = 110
    STALE = 111
    HSM_PIN_LOCKED = 112
    TOKEN_NOT_FOUND = 113
    KEY_ATTRIBUTES = 114
    BAD_KEY_FILE = 115
    BAD_WRAPPED_KEY = 116
    MECHANISM_UNSUPPORTED = 117
    CONFIG = 118
    MEMLOCK = 119
    HSM_FAILED = 120
    KEY_IN_USE = 121
    RATE_LIMITED = 122


def status_name(code: int) -> str:
    """The stable name of a code ("NOT_FOUND"), or "CODE_<n>" for one this package lacks."""
    try:
        return StatusCode(code).name
    except ValueError:
        return f"CODE_{code}"


class CipherdexError(Exception):
    """A response whose status is not OK.

    ``.code``: the numeric status (int); ``.name``: its stable name ("NOT_FOUND");
    ``.message``: the server's explanation of what to fix (never contains secrets; do not parse
    it); ``.retry_after_ms``: with RATE_LIMITED, how long to wait before sending again (else 0).
    """

    #: The code this class stands for (None on the base class).
    status: Optional[StatusCode] = None

    def __init__(self, code: int, message: str, retry_after_ms: int = 0):
        self.code = int(code)
        self.name = status_name(self.code)
        self.message = message
        self.retry_after_ms = int(retry_after_ms)
        super().__init__(f"{self.name} ({self.code}): {message}")


class ProtocolError(Exception):
    """The server broke the wire contract (no status, another request's id, a body that does
    not answer the request). The connection is closed: its stream can no longer be trusted."""


class ConnectionLost(ProtocolError):
    """The connection failed or closed before the answer came (including the client's timeout):
    the request's outcome is unknown. Reconnect (``Client.reconnect``) to go on; only idempotent
    requests may simply be sent again (docs/WIRE.md, "What to retry")."""


# One class per code; the docstrings are docs/WIRE.md's meanings, shortened.
class Cancelled(CipherdexError):
    """CANCELLED: the operation was cancelled."""

    status = StatusCode.CANCELLED


class Unknown(CipherdexError):
    """UNKNOWN: unknown error."""

    status = StatusCode.UNKNOWN


class InvalidArgument(CipherdexError):
    """INVALID_ARGUMENT: the request is malformed or a field is invalid (the message names it)."""

    status = StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(CipherdexError):
    """DEADLINE_EXCEEDED: deadline exceeded; the work may have completed."""

    status = StatusCode.DEADLINE_EXCEEDED


class NotFound(CipherdexError):
    """NOT_FOUND: no such index (or other object)."""

    status = StatusCode.NOT_FOUND


class AlreadyExists(CipherdexError):
    """ALREADY_EXISTS: an index with that name exists."""

    status = StatusCode.ALREADY_EXISTS


class PermissionDenied(CipherdexError):
    """PERMISSION_DENIED: the principal may not do this (docs/POLICY.md)."""

    status = StatusCode.PERMISSION_DENIED


class ResourceExhausted(CipherdexError):
    """RESOURCE_EXHAUSTED: a memory budget or quota was exceeded: send less per request."""

    status = StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(CipherdexError):
    """FAILED_PRECONDITION: the state does not allow it (e.g. a confirmation differs)."""

    status = StatusCode.FAILED_PRECONDITION


class Aborted(CipherdexError):
    """ABORTED: a concurrent change won; nothing was applied; retry."""

    status = StatusCode.ABORTED


class OutOfRange(CipherdexError):
    """OUT_OF_RANGE: out of range."""

    status = StatusCode.OUT_OF_RANGE


class Unimplemented(CipherdexError):
    """UNIMPLEMENTED: not implemented."""

    status = StatusCode.UNIMPLEMENTED


class Internal(CipherdexError):
    """INTERNAL: internal error (a bug: please report)."""

    status = StatusCode.INTERNAL


class Unavailable(CipherdexError):
    """UNAVAILABLE: the daemon is stopping or overloaded; nothing was applied."""

    status = StatusCode.UNAVAILABLE


class DataLoss(CipherdexError):
    """DATA_LOSS: data loss."""

    status = StatusCode.DATA_LOSS


class Unauthenticated(CipherdexError):
    """UNAUTHENTICATED: not authenticated (e.g. the server refused the certificate)."""

    status = StatusCode.UNAUTHENTICATED


class IntegrityError(CipherdexError):
    """INTEGRITY: a stored record failed its integrity check."""

    status = StatusCode.INTEGRITY


class RollbackDetected(CipherdexError):
    """ROLLBACK_DETECTED: the store went back to an older head (accept_rollback)."""

    status = StatusCode.ROLLBACK_DETECTED


class HsmUnavailable(CipherdexError):
    """HSM_UNAVAILABLE: the key token is unavailable."""

    status = StatusCode.HSM_UNAVAILABLE


class HsmPinIncorrect(CipherdexError):
    """HSM_PIN_INCORRECT: the token rejected the PIN."""

    status = StatusCode.HSM_PIN_INCORRECT


class KeyNotFound(CipherdexError):
    """KEY_NOT_FOUND: key not found on the token."""

    status = StatusCode.KEY_NOT_FOUND


class KeyReplaced(CipherdexError):
    """KEY_REPLACED: the token key was replaced (KCV mismatch)."""

    status = StatusCode.KEY_REPLACED


class KeyAmbiguous(CipherdexError):
    """KEY_AMBIGUOUS: several token objects match the key."""

    status = StatusCode.KEY_AMBIGUOUS


class StoreUnavailable(CipherdexError):
    """STORE_UNAVAILABLE: the store is unavailable."""

    status = StatusCode.STORE_UNAVAILABLE


class AuditUnavailable(CipherdexError):
    """AUDIT_UNAVAILABLE: the audit trail cannot be written (fail closed)."""

    status = StatusCode.AUDIT_UNAVAILABLE


class Busy(CipherdexError):
    """BUSY: busy; nothing was applied; retry later."""

    status = StatusCode.BUSY


class FrameTooLarge(CipherdexError):
    """FRAME_TOO_LARGE: a frame (request or response) exceeds the cap."""

    status = StatusCode.FRAME_TOO_LARGE


class Stale(CipherdexError):
    """STALE: the served state is older than the request's min_version."""

    status = StatusCode.STALE


class HsmPinLocked(CipherdexError):
    """HSM_PIN_LOCKED: the token PIN is locked or expired."""

    status = StatusCode.HSM_PIN_LOCKED


class TokenNotFound(CipherdexError):
    """TOKEN_NOT_FOUND: no token matches the configured URI."""

    status = StatusCode.TOKEN_NOT_FOUND


class KeyAttributes(CipherdexError):
    """KEY_ATTRIBUTES: the token key has the wrong attributes."""

    status = StatusCode.KEY_ATTRIBUTES


class BadKeyFile(CipherdexError):
    """BAD_KEY_FILE: the key file is not base64 of 32 bytes."""

    status = StatusCode.BAD_KEY_FILE


class BadWrappedKey(CipherdexError):
    """BAD_WRAPPED_KEY: the wrapped key is invalid (length, or fails to unwrap)."""

    status = StatusCode.BAD_WRAPPED_KEY


class MechanismUnsupported(CipherdexError):
    """MECHANISM_UNSUPPORTED: the token lacks a required mechanism."""

    status = StatusCode.MECHANISM_UNSUPPORTED


class ConfigError(CipherdexError):
    """CONFIG: invalid configuration."""

    status = StatusCode.CONFIG


class Memlock(CipherdexError):
    """MEMLOCK: secret memory cannot be locked."""

    status = StatusCode.MEMLOCK


class HsmFailed(CipherdexError):
    """HSM_FAILED: the token refused the operation."""

    status = StatusCode.HSM_FAILED


class KeyInUse(CipherdexError):
    """KEY_IN_USE: the key already belongs to another index."""

    status = StatusCode.KEY_IN_USE


class RateLimited(CipherdexError):
    """RATE_LIMITED: over the principal's limits; wait retry_after_ms and send again."""

    status = StatusCode.RATE_LIMITED


_BY_CODE: Dict[int, Type[CipherdexError]] = {
    int(c.status): c for c in CipherdexError.__subclasses__() if c.status is not None
}


def error_class(code: int) -> Type[CipherdexError]:
    """The exception class raised for status ``code`` (CipherdexError for an unknown code)."""
    return _BY_CODE.get(int(code), CipherdexError)


def error_for(code: int, message: str, retry_after_ms: int = 0) -> CipherdexError:
    """The exception for a non-OK status."""
    return error_class(code)(code, message, retry_after_ms)


# docs/WIRE.md, "What to retry". Statuses saying nothing was applied: any request may be sent
# again (RATE_LIMITED after Status.retry_after_ms).
RETRY_ANY: FrozenSet[int] = frozenset({StatusCode.ABORTED, StatusCode.UNAVAILABLE,
                                       StatusCode.BUSY, StatusCode.RATE_LIMITED})
# Statuses that may leave the outcome unknown: only idempotent requests.
RETRY_IDEMPOTENT: FrozenSet[int] = RETRY_ANY | {StatusCode.DEADLINE_EXCEEDED,
                                                StatusCode.HSM_UNAVAILABLE,
                                                StatusCode.STORE_UNAVAILABLE,
                                                StatusCode.AUDIT_UNAVAILABLE}
# Operations that may be sent again after an unknown outcome (a dropped connection). Not
# create_index, delete_index, train or compact: describe the index to see what happened.
IDEMPOTENT: FrozenSet[str] = frozenset({"health", "describe_index", "list_indexes", "get",
                                        "query", "list_ids", "upsert", "delete", "attest",
                                        "accept_rollback", "audit_tail", "purge"})


def retryable(operation: str, code: int) -> bool:
    """May ``operation`` (a Request.body member name, "upsert") be sent again after status
    ``code``?"""
    return int(code) in (RETRY_IDEMPOTENT if operation in IDEMPOTENT else RETRY_ANY)
