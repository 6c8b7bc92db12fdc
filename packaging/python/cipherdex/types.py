"""What the typed calls of ``Client`` return: plain, immutable dataclasses built from the
protobuf answers (the messages of proto/cipherdex.proto), with metadata as Python dicts.

Every result keeps the protobuf message it came from in ``.raw``, so a field that a newer
server sends before this package knows about it is still reachable.
"""
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

Metadata = Dict[str, Any]


def metadata_to_wire(metadata: Optional[Mapping[str, Any]]) -> str:
    """A metadata dict as the JSON text the wire carries ("" for None or {}). NaN and infinities
    are refused here (ValueError): JSON has no such numbers."""
    if metadata is None:
        return ""
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict (a JSON object), not {type(metadata).__name__}")
    if not metadata:
        return ""
    return json.dumps(metadata, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def metadata_from_wire(text: str) -> Optional[Metadata]:
    """The wire's JSON text as a dict; None when empty (no metadata, or not asked for)."""
    return json.loads(text) if text else None


@dataclass(frozen=True)
class Item:
    """One stored item: what ``upsert`` sends and what ``get`` returns.

    ``vector``: the embedding (exactly the index's dimension floats; empty in a get answer
    unless asked for). ``metadata``: a JSON object as a dict, None for none (or not asked for).
    ``contents``: opaque bytes, stored encrypted (b"" for none or not asked for)."""

    id: str
    vector: Sequence[float] = ()
    metadata: Optional[Mapping[str, Any]] = None
    contents: bytes = b""

    @classmethod
    def _from_pb(cls, m: Any) -> "Item":
        return cls(id=m.id, vector=list(m.vector), metadata=metadata_from_wire(m.metadata),
                   contents=bytes(m.contents))


@dataclass(frozen=True)
class KeyProvenance:
    """Where an index key came from (docs/KEYS.md "Provenance"). ``attributes`` maps each
    token attribute name ("never_extractable") to "yes", "no" or "n/a", in the wire's order."""

    origin: str
    kek_name: str
    born_on_token: str
    token_serial: str
    token_model: str
    attributes: Dict[str, str]
    copyable_not_enforced: bool

    @classmethod
    def _from_pb(cls, m: Any) -> "KeyProvenance":
        return cls(origin=m.origin, kek_name=m.kek_name, born_on_token=m.born_on_token,
                   token_serial=m.token_serial, token_model=m.token_model,
                   attributes={a.name: a.value for a in m.attributes},
                   copyable_not_enforced=m.copyable_not_enforced)


@dataclass(frozen=True)
class IndexInfo:
    """Parameters and counters of one index (IndexInfo in the .proto, field for field).
    ``status`` is "ok" when this appliance can serve the index; anything else means it cannot,
    and ``status_message`` says why and what to do."""

    name: str
    state: str
    id: bytes
    dimension: int
    metric: str
    index_type: str
    n_lists: int
    n_clusters: int
    count: int
    version: int
    kcv: bytes
    key_source: str
    key_owned: bool
    segments: int
    created_ms: int
    status: str
    status_message: str
    key_provenance: Optional[KeyProvenance]
    dead_rows: int = 0
    segment_bytes: int = 0
    records_waiting: int = 0
    last_compaction_ms: int = 0
    last_sweep_ms: int = 0
    key_epoch: int = 0
    min_epoch: int = 0
    rotate_to: int = 0
    rotate_done: int = 0
    rotate_total: int = 0
    rotate_started_ms: int = 0
    rotated_ms: int = 0
    key_generation: int = 0
    new_key_generation: int = 0
    new_key_kcv: bytes = b""
    retired_bytes: int = 0
    raw: Any = field(repr=False, compare=False, default=None)

    @classmethod
    def _from_pb(cls, m: Any) -> "IndexInfo":
        prov = KeyProvenance._from_pb(m.key_provenance) if m.HasField("key_provenance") else None
        return cls(name=m.name, state=m.state, id=bytes(m.id), dimension=m.dimension,
                   metric=m.metric, index_type=m.index_type, n_lists=m.n_lists,
                   n_clusters=m.n_clusters, count=m.count, version=m.version, kcv=bytes(m.kcv),
                   key_source=m.key_source, key_owned=m.key_owned, segments=m.segments,
                   created_ms=m.created_ms, status=m.status, status_message=m.status_message,
                   key_provenance=prov, dead_rows=m.dead_rows, segment_bytes=m.segment_bytes,
                   records_waiting=m.records_waiting, retired_bytes=m.retired_bytes,
                   last_compaction_ms=m.last_compaction_ms,
                   last_sweep_ms=m.last_sweep_ms, key_epoch=m.key_epoch, min_epoch=m.min_epoch,
                   rotate_to=m.rotate_to, rotate_done=m.rotate_done,
                   rotate_total=m.rotate_total, rotate_started_ms=m.rotate_started_ms,
                   rotated_ms=m.rotated_ms, key_generation=m.key_generation,
                   new_key_generation=m.new_key_generation, new_key_kcv=bytes(m.new_key_kcv),
                   raw=m)


@dataclass(frozen=True)
class Health:
    """Reachability of the appliance's dependencies. ``status`` is "ok" or "degraded" (then
    ``warnings`` says why)."""

    token_ok: bool
    store_ok: bool
    server_version: str
    uptime_s: int
    status: str
    warnings: List[str]
    indexes_in_rollback: int
    raw: Any = field(repr=False, compare=False, default=None)


@dataclass(frozen=True)
class IndexList:
    """Every index the caller may see, sorted by name, and the number of catalog entries that
    failed authentication (normally 0)."""

    indexes: List[IndexInfo]
    unreadable_entries: int
    raw: Any = field(repr=False, compare=False, default=None)


@dataclass(frozen=True)
class DeleteIndexResult:
    """``key_destroyed``: the index key was destroyed on the token. ``key_remains``: what of the
    key remains outside the appliance's reach and how to destroy it ("" when nothing does)."""

    key_destroyed: bool
    key_remains: str
    raw: Any = field(repr=False, compare=False, default=None)


@dataclass(frozen=True)
class TrainResult:
    """``version``: commit version of the retrained index."""

    version: int
    raw: Any = field(repr=False, compare=False, default=None)


@dataclass(frozen=True)
class UpsertResult:
    """``version``: commit version (pass it as ``min_version`` to read your own write);
    ``upserted``: items written."""

    version: int
    upserted: int
    raw: Any = field(repr=False, compare=False, default=None)


@dataclass(frozen=True)
class Match:
    """One neighbour of a query vector. ``distance``: smaller is closer for every metric.
    ``vector``, ``metadata`` and ``contents`` are set only when the query asked for them."""

    id: str
    distance: float
    vector: Optional[List[float]] = None
    metadata: Optional[Metadata] = None
    contents: Optional[bytes] = None


@dataclass(frozen=True)
class QueryResult:
    """``results[i]``: the neighbours of query vector i, best first. ``version``: the index
    version that served the query; ``n_probes``: clusters probed per vector (0: the index is not
    trained and every item was scanned)."""

    results: List[List[Match]]
    version: int
    n_probes: int
    raw: Any = field(repr=False, compare=False, default=None)


@dataclass(frozen=True)
class GetResult:
    """``items[i]`` answers the i-th requested id: an ``Item``, or None when the index does not
    hold it. ``version``: the index version that served the request."""

    items: List[Optional[Item]]
    version: int
    raw: Any = field(repr=False, compare=False, default=None)

    @property
    def found(self) -> List[bool]:
        return [it is not None for it in self.items]


@dataclass(frozen=True)
class DeleteResult:
    """``deleted``: how many of the ids existed (and are now deleted); ``version``: commit
    version."""

    deleted: int
    version: int
    raw: Any = field(repr=False, compare=False, default=None)


@dataclass(frozen=True)
class IdPage:
    """One page of ids; ``next_cursor`` continues (empty at the end)."""

    ids: List[str]
    next_cursor: str
    raw: Any = field(repr=False, compare=False, default=None)


@dataclass(frozen=True)
class AcceptRollbackResult:
    """``previous_version``: the highest version this appliance had seen; ``version``: the
    accepted head version it serves from now."""

    previous_version: int
    version: int
    raw: Any = field(repr=False, compare=False, default=None)


@dataclass(frozen=True)
class Attestation:
    """A signed statement about an index key (docs/ATTESTATION.md). ``evidence``: DER
    PkixEvidence; ``attestation_public_key``: DER SubjectPublicKeyInfo, for convenience only:
    verify against a key obtained out of band; ``nonce``: the nonce that was sent."""

    evidence: bytes
    attestation_public_key: bytes
    attestation_key_id: bytes
    nonce: bytes
    raw: Any = field(repr=False, compare=False, default=None)


@dataclass(frozen=True)
class AuditTail:
    """The audit trail's last record lines (oldest first) and its state: "ok", "failed",
    "failed-open" or "off"; ``last_seq``, ``lost`` records and the last write ``error``."""

    records: List[str]
    state: str
    last_seq: int
    lost: int
    error: str
    raw: Any = field(repr=False, compare=False, default=None)


@dataclass(frozen=True)
class CompactResult:
    """Clusters merged and the version of that commit (0 when nothing needed merging); store
    records deleted, kept until their grace ends (and their stored bytes), and when the first of
    those may go (wall-clock ms, 0 when none waits)."""

    clusters_compacted: int
    version: int
    records_deleted: int
    records_waiting: int
    next_delete_ms: int
    retired_bytes: int = 0
    raw: Any = field(repr=False, compare=False, default=None)


@dataclass(frozen=True)
class RotateResult:
    """The index after a rotate request (state "rotating" with ``rotate_to`` while pending), and
    with ``wait`` what the run did: the epochs, items and contents re-encrypted, the completing
    commit's version (0 when the background finished first), its duration and attempts. With
    ``new_key``, ``key_remains``: what of the old key remains once the rotation completes and how
    to destroy it ("" when nothing does)."""

    index: Optional[IndexInfo]
    from_epoch: int
    to_epoch: int
    items: int
    contents: int
    version: int
    ms: int
    attempts: int
    key_remains: str = ""
    raw: Any = field(repr=False, compare=False, default=None)
