"""Cipherdex client: typed calls to cipherdexd over mutual TLS (docs/PYTHON.md).

    from cipherdex import Client, NotFound
    with Client("127.0.0.1", 7700, ca="ca.pem", cert="client.pem", key="client.key") as c:
        c.create_index("docs", 768, "cosine")

The protobuf classes (``cipherdex.pb``) are generated from proto/cipherdex.proto when the
package is built; ``Client.call(operation, message)`` reaches any operation with them.
"""
import importlib.util

if importlib.util.find_spec(f"{__name__}.cipherdex_pb2") is None:
    # A source checkout on sys.path, not an installed package.
    raise ImportError("cipherdex.cipherdex_pb2 is generated from proto/cipherdex.proto when the "
                      "package is built: install it (pip install --no-build-isolation "
                      "--no-index packaging/python, docs/PYTHON.md) instead of importing the "
                      "source directory")

from . import cipherdex_pb2 as pb
from .client import DEFAULT_MAX_FRAME, DEFAULT_PORT, OPERATIONS, Client, Retry, parse_address
from .errors import (IDEMPOTENT, RETRY_ANY, RETRY_IDEMPOTENT, CipherdexError, ConnectionLost,
                     ProtocolError, StatusCode, error_class, retryable, status_name)
# One exception class per status code (errors.py).
from .errors import (
    Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
    PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted, OutOfRange,
    Unimplemented, Internal, Unavailable, DataLoss, Unauthenticated, IntegrityError,
    RollbackDetected, HsmUnavailable, HsmPinIncorrect, KeyNotFound, KeyReplaced,
    KeyAmbiguous, StoreUnavailable, AuditUnavailable, Busy, FrameTooLarge, Stale,
    HsmPinLocked, TokenNotFound, KeyAttributes, BadKeyFile, BadWrappedKey,
    MechanismUnsupported, ConfigError, Memlock, HsmFailed, KeyInUse, RateLimited)
from .types import (AcceptRollbackResult, Attestation, AuditTail, CompactResult, RotateResult,
                    DeleteIndexResult, DeleteResult, GetResult, Health, IdPage, IndexInfo,
                    IndexList, Item, KeyProvenance, Match, QueryResult, TrainResult,
                    UpsertResult)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_FRAME", "DEFAULT_PORT", "OPERATIONS", "Client", "Retry", "parse_address",
    "IDEMPOTENT", "RETRY_ANY", "RETRY_IDEMPOTENT", "CipherdexError", "ConnectionLost",
    "ProtocolError", "StatusCode", "error_class", "retryable", "status_name", "Cancelled",
    "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound", "AlreadyExists",
    "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange",
    "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
    "IntegrityError", "RollbackDetected", "HsmUnavailable", "HsmPinIncorrect",
    "KeyNotFound", "KeyReplaced", "KeyAmbiguous", "StoreUnavailable", "AuditUnavailable",
    "Busy", "FrameTooLarge", "Stale", "HsmPinLocked", "TokenNotFound", "KeyAttributes",
    "BadKeyFile", "BadWrappedKey", "MechanismUnsupported", "ConfigError", "Memlock",
    "HsmFailed", "KeyInUse", "RateLimited", "AcceptRollbackResult", "Attestation",
    "AuditTail", "CompactResult", "RotateResult", "DeleteIndexResult", "DeleteResult", "GetResult",
    "Health", "IdPage", "IndexInfo", "IndexList", "Item", "KeyProvenance", "Match",
    "QueryResult", "TrainResult", "UpsertResult",
    "pb", "__version__",
]
