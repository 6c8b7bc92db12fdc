"""The Cipherdex client: one TLS connection (mutual TLS by default), length-prefixed protobuf
frames, one typed method per wire operation.

A frame is a 4-byte big-endian length and one serialized message (docs/WIRE.md, "Framing").
The client sends ``Request { request_id; oneof body }`` and reads one ``Response`` per request,
in order; the response must echo the request's id and answer with the body member of the same
name. Frames larger than ``max_frame`` are refused in both directions.

One ``Client`` is one connection: use one per thread.
"""
import os
import random
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

from . import cipherdex_pb2 as pb
from .errors import (IDEMPOTENT, CipherdexError, ConnectionLost, FrameTooLarge, ProtocolError,
                     StatusCode, Unauthenticated, error_for, retryable)
from .types import (AcceptRollbackResult, Attestation, AuditTail, CompactResult, RotateResult,
                    DeleteIndexResult, DeleteResult, GetResult, Health, IdPage, IndexInfo,
                    IndexList, Item, Match, QueryResult, TrainResult, UpsertResult,
                    metadata_from_wire, metadata_to_wire)

#: The daemon's frame cap unless it is configured otherwise (CDX_FRAME_MAX_DEFAULT in
#: proto/cdx_limits.h). Raise ``max_frame`` when the appliance sets a larger max_frame_bytes.
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
#: The largest cap the 4-byte length prefix can express.
FRAME_LENGTH_MAX = 0xFFFFFFFF
#: The daemon's default API port ([server] listen = 127.0.0.1:7700).
DEFAULT_PORT = 7700

_HDR = struct.Struct(">I")

Vector = Sequence[float]


@dataclass(frozen=True)
class Retry:
    """How ``Client.call_retry`` (and, with ``Client(retry=Retry())``, every typed call) retries,
    as docs/WIRE.md "What to retry" says: after a status that ``retryable()`` accepts; after a
    lost connection (reconnecting) when the operation is idempotent; when reconnecting fails
    (nothing was sent). Pauses grow from ``first_delay`` seconds, doubling with jitter, up to
    ``max_delay``; at most ``attempts`` tries within ``total`` seconds; RATE_LIMITED waits at least
    its ``retry_after_ms``."""

    attempts: int = 8
    first_delay: float = 0.05
    max_delay: float = 2.0
    total: float = 30.0


def _refused_certificate(e: ssl.SSLError) -> bool:
    """An SSLError that is the server's alert about our certificate (unknown CA, revoked,
    expired, wrong EKU, none sent)."""
    reason = getattr(e, "reason", "") or ""
    return reason.endswith(("_CERTIFICATE", "CERTIFICATE_REVOKED", "CERTIFICATE_EXPIRED",
                            "CERTIFICATE_UNKNOWN", "UNKNOWN_CA", "ACCESS_DENIED",
                            "CERTIFICATE_REQUIRED"))


def _refused(e: BaseException) -> CipherdexError:
    return Unauthenticated(StatusCode.UNAUTHENTICATED,
                           f"the server refused this client's certificate: {e}")


def _floats(v: Iterable[Any], what: str) -> List[float]:
    try:
        return [float(x) for x in v]
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must be a sequence of numbers: {e}") from None


def _is_number(x: Any) -> bool:
    try:
        float(x)
    except (TypeError, ValueError):
        return False
    return not isinstance(x, (str, bytes))


def parse_address(addr: str) -> "tuple[str, int]":
    """"HOST:PORT" or "[IPv6]:PORT" -> (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {addr!r}: expected HOST:PORT or [IPv6]:PORT")
    return host.strip("[]"), int(port)


class Client:
    """A connection to cipherdexd.

    ``Client(host, port, ca=..., cert=..., key=...)`` connects at once over TLS (1.2 or newer),
    checks the server's certificate against ``ca`` (the system's CAs when None) and its name
    against ``server_hostname`` (default: ``host``; an IP address is checked against the
    certificate's IP SANs), and presents the client certificate ``cert`` with its private key
    ``key`` (None: in the ``cert`` file). ``timeout`` (seconds) bounds connecting and each wait
    for the server; when it passes, the call raises ``ConnectionLost``. ``plaintext=True`` speaks
    plain TCP, for a daemon configured ``insecure = yes`` (tests only). ``retry``: retry every
    typed call with this policy (default: no retries).

    Every typed method raises the ``CipherdexError`` subclass of the status when the server
    refuses (``NotFound``, ``PermissionDenied``, ...), ``ConnectionLost`` when the connection
    fails before the answer (outcome unknown; the next call reconnects), ``ProtocolError`` when
    the server breaks the wire contract, and ``TypeError``/``ValueError`` for arguments that
    cannot be encoded (nothing is sent then). A request larger than ``max_frame`` raises
    ``FrameTooLarge`` before anything is sent; a response larger than it closes the connection
    and raises ``FrameTooLarge``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
                 ca: Optional[str] = None, cert: Optional[str] = None,
                 key: Optional[str] = None, timeout: Optional[float] = 30.0,
                 max_frame: int = DEFAULT_MAX_FRAME, server_hostname: Optional[str] = None,
                 plaintext: bool = False, retry: Optional[Retry] = None, connect: bool = True):
        if not 0 < max_frame <= FRAME_LENGTH_MAX:
            raise ValueError(f"max_frame must be 1..{FRAME_LENGTH_MAX} bytes, not {max_frame}")
        if not plaintext and cert is None:
            raise ValueError("mutual TLS needs a client certificate: pass cert= (and key= "
                             "unless the key is in the cert file), or plaintext=True for an "
                             "insecure test daemon")
        self.host = host
        self.port = int(port)
        self.timeout = timeout
        self.max_frame = max_frame
        self.retry = retry
        #: How many tries the last call_retry (or retried typed call) made.
        self.attempts = 0
        self._plaintext = plaintext
        self._server_hostname = server_hostname or host
        self._ctx: Optional[ssl.SSLContext] = None
        if not plaintext:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(cert, key)
            self._ctx = ctx
        self._sock: Optional[socket.socket] = None
        self._closed = False
        self._next_id = 1
        if connect:
            self.connect()

    @classmethod
    def from_address(cls, addr: str, **kwargs: Any) -> "Client":
        """``Client.from_address("127.0.0.1:7700", ca=..., cert=..., key=...)``."""
        host, port = parse_address(addr)
        return cls(host, port, **kwargs)

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **kwargs: Any) -> "Client":
        """A client for the appliance the environment names, as ``./run up`` writes it to
        DIR/cipherdex.env: CIPHERDEX_ADDR (HOST:PORT), CIPHERDEX_CA, CIPHERDEX_CERT,
        CIPHERDEX_KEY. Keyword arguments override and add to them."""
        env = os.environ if environ is None else environ
        if "CIPHERDEX_ADDR" not in env:
            raise ValueError("CIPHERDEX_ADDR is not set (HOST:PORT of cipherdexd)")
        for name, var in (("ca", "CIPHERDEX_CA"), ("cert", "CIPHERDEX_CERT"),
                          ("key", "CIPHERDEX_KEY")):
            if env.get(var):
                kwargs.setdefault(name, env[var])
        return cls.from_address(env["CIPHERDEX_ADDR"], **kwargs)

    # -- connection -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> None:
        """Open the connection (closing any open one). Raises OSError when the server cannot be
        reached, ssl.SSLError when the TLS handshake fails, Unauthenticated when the server
        refuses this client's certificate during it."""
        self.close()
        self._closed = False
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ctx is None:
                self._sock = raw
                return
            try:
                self._sock = self._ctx.wrap_socket(raw, server_hostname=self._server_hostname)
            except ssl.SSLCertVerificationError:
                raise
            except ssl.SSLError as e:
                if _refused_certificate(e):
                    raise _refused(e) from e
                raise
        except BaseException:
            raw.close()
            raise

    def reconnect(self) -> None:
        """Close this connection (if any) and open a new one with the same settings."""
        self.connect()

    def close(self) -> None:
        """Close the connection; a later call reconnects only through ``connect()``."""
        self._closed = True
        self._drop()

    def _drop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "connected" if self.connected else "not connected"
        return f"<cipherdex.Client {self.host}:{self.port} {state}>"

    # -- frames -----------------------------------------------------------------------------

    def _recv_exact(self, n: int) -> bytearray:
        assert self._sock is not None
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self._sock.recv_into(view[got:], n - got)
            if k == 0:
                raise ConnectionLost("the server closed the connection before answering")
            got += k
        return buf

    def _pending_alert(self) -> Optional[ssl.SSLError]:
        """After a failed write: the server's certificate alert, if it is already here."""
        assert self._sock is not None
        try:
            self._sock.settimeout(0.05)
            self._sock.recv(1)
        except ssl.SSLError as e:
            return e if _refused_certificate(e) else None
        except OSError:
            return None
        return None

    def _exchange(self, frame: bytes) -> "pb.Response":
        """Send one frame and read one Response; on any failure the connection is dropped."""
        assert self._sock is not None
        try:
            self._sock.settimeout(self.timeout)
            self._sock.sendall(frame)
            (n,) = _HDR.unpack(self._recv_exact(_HDR.size))
            if n > self.max_frame:
                raise FrameTooLarge(StatusCode.FRAME_TOO_LARGE,
                                    f"the response is {n} bytes, over this client's max_frame "
                                    f"of {self.max_frame}: ask for less (fewer ids, smaller "
                                    f"top_k, no contents) or raise max_frame; the connection "
                                    f"was closed")
            body = self._recv_exact(n)
        except ssl.SSLError as e:
            self._drop()
            if _refused_certificate(e):  # TLS 1.3: the alert comes with the first answer
                raise _refused(e) from e
            raise ConnectionLost(f"the connection failed: {e}") from e
        except socket.timeout as e:
            self._drop()
            raise ConnectionLost(f"no answer within {self.timeout} s; the outcome is unknown "
                                 f"and the connection was closed") from e
        except OSError as e:  # reset, broken pipe: outcome unknown
            alert = self._pending_alert()
            self._drop()
            if alert is not None:  # the server refused our certificate before we wrote
                raise _refused(alert) from e
            raise ConnectionLost(f"the connection failed: {e}") from e
        except (ConnectionLost, FrameTooLarge):
            self._drop()
            raise
        resp = pb.Response()
        try:
            resp.ParseFromString(bytes(body))
        except Exception as e:  # google.protobuf.message.DecodeError
            self._drop()
            raise ProtocolError(f"the response does not parse as a Response: {e}") from e
        return resp

    # -- generic calls ----------------------------------------------------------------------

    def call(self, operation: str, message: Any) -> Any:
        """Send one request whose body member is ``operation`` (a ``Request.body`` member name:
        "query") holding ``message`` (the matching protobuf request, ``pb.QueryRequest(...)``)
        and return the protobuf body of the answer (``QueryResponse``). Works for any operation
        of the .proto this package was built from, typed method or not. Raises as the class
        docstring says."""
        req = pb.Request(request_id=self._next_id)
        self._next_id += 1
        if req.DESCRIPTOR.fields_by_name.get(operation) is None or \
                req.DESCRIPTOR.fields_by_name[operation].containing_oneof is None:
            raise ValueError(f"unknown operation {operation!r}")
        getattr(req, operation).CopyFrom(message)
        data = req.SerializeToString()
        if len(data) > self.max_frame:
            raise FrameTooLarge(StatusCode.FRAME_TOO_LARGE,
                                f"the {operation} request is {len(data)} bytes, over the frame "
                                f"cap of {self.max_frame}: send fewer or smaller items per "
                                f"request (nothing was sent)")
        if self._sock is None:
            if self._closed:
                raise ConnectionLost("the client is closed: call connect() first")
            self.connect()  # the previous request lost the connection; this one is new
        resp = self._exchange(_HDR.pack(len(data)) + data)
        if not resp.HasField("status"):
            self._drop()
            raise ProtocolError("a response without a status")
        if resp.request_id not in (req.request_id, 0):
            self._drop()
            raise ProtocolError(f"the response answers request {resp.request_id}, "
                                f"expected {req.request_id}")
        st = resp.status
        if st.code != StatusCode.OK:
            raise error_for(st.code, st.message, st.retry_after_ms)
        if resp.WhichOneof("body") != operation:
            self._drop()
            raise ProtocolError(f"answer body {resp.WhichOneof('body')!r} for a {operation} "
                                f"request")
        return getattr(resp, operation)

    def call_retry(self, operation: str, message: Any, policy: Optional[Retry] = None) -> Any:
        """``call()`` with retries (``policy``, default ``self.retry`` or ``Retry()``).
        ``self.attempts`` says how many tries were made. Raises the last error."""
        p = policy or self.retry or Retry()
        idempotent = operation in IDEMPOTENT
        deadline = time.monotonic() + p.total
        delay = p.first_delay
        self.attempts = 0
        while True:
            self.attempts += 1
            last: BaseException
            try:
                if self._sock is None:
                    self.connect()
                return self.call(operation, message)
            except FrameTooLarge:
                raise  # the same frame is too large again
            except Unauthenticated:
                raise  # a refused certificate fails the same way every time
            except CipherdexError as e:
                if not retryable(operation, e.code):
                    raise
                last = e
            except ProtocolError as e:
                if not isinstance(e, ConnectionLost) or not idempotent:
                    raise
                last = e
            except ssl.SSLCertVerificationError:
                raise  # fails the same way every time
            except OSError as e:  # connecting failed (ssl.SSLError included): nothing was sent
                self._drop()
                last = e
            pause = delay / 2 + random.uniform(0, delay / 2)
            if isinstance(last, CipherdexError) and last.retry_after_ms:
                pause = max(pause, last.retry_after_ms / 1000.0)  # the principal's bucket
            if self.attempts >= p.attempts or time.monotonic() + pause > deadline:
                raise last
            time.sleep(pause)
            delay = min(delay * 2, p.max_delay)

    def _invoke(self, operation: str, message: Any) -> Any:
        if self.retry is not None:
            return self.call_retry(operation, message)
        return self.call(operation, message)

    # -- typed operations: one per Request.body member --------------------------------------

    def health(self) -> Health:
        """Liveness and the reachability of the token and the store (any valid certificate).
        Raises Unavailable when either does not answer."""
        r = self._invoke("health", pb.HealthRequest())
        return Health(token_ok=r.token_ok, store_ok=r.store_ok, server_version=r.server_version,
                      uptime_s=r.uptime_s, status=r.status, warnings=list(r.warnings),
                      indexes_in_rollback=r.indexes_in_rollback, raw=r)

    def create_index(self, name: str, dimension: int, metric: str, *,
                     index_type: str = "ivfflat", n_lists: int = 0,
                     unwrap_kek: Optional[str] = None, wrapped_key: Optional[bytes] = None,
                     adopt_key_id: Optional[bytes] = None,
                     import_key: Optional[bytes] = None) -> IndexInfo:
        """Create an index (admin) and provision its key on the token: generated there
        (default), unwrapped there from ``wrapped_key`` (40 bytes) with the KEK ``unwrap_kek``,
        an existing token key adopted by its 16-byte ``adopt_key_id``, or (development only,
        refused unless the appliance allows it) the plaintext 32-byte ``import_key``.
        ``metric``: "euclidean", "squared_euclidean", "cosine" or "inner_product";
        ``index_type``: "ivfflat" (the default) or "ivfsq8"; ``n_lists``: 0 lets training choose."""
        req = pb.CreateIndexRequest(name=name, dimension=dimension, metric=metric,
                                    index_type=index_type, n_lists=n_lists)
        sources = [s for s, v in (("unwrap", unwrap_kek is not None or wrapped_key is not None),
                                  ("adopt", adopt_key_id is not None),
                                  ("import", import_key is not None)) if v]
        if len(sources) > 1:
            raise ValueError(f"one key source at most, not {' and '.join(sources)}")
        if unwrap_kek is not None or wrapped_key is not None:
            if unwrap_kek is None or wrapped_key is None:
                raise ValueError("unwrapping a key needs both unwrap_kek and wrapped_key")
            req.unwrap_key.kek_name = unwrap_kek
            req.unwrap_key.wrapped_key = bytes(wrapped_key)
        elif adopt_key_id is not None:
            req.adopt_key.key_id = bytes(adopt_key_id)
        elif import_key is not None:
            req.import_key.key = bytes(import_key)
        else:
            req.generate_key.SetInParent()
        try:
            r = self._invoke("create_index", req)
        finally:
            req.Clear()  # the request may hold a plaintext key: drop our copy at once
        return IndexInfo._from_pb(r.index)

    def describe_index(self, name: str) -> IndexInfo:
        """One index's parameters and counters."""
        return IndexInfo._from_pb(self._invoke("describe_index",
                                               pb.DescribeIndexRequest(name=name)).index)

    def list_indexes(self) -> IndexList:
        """Every index the caller may see, sorted by name; a broken index is listed with its
        ``status`` rather than failing the list."""
        r = self._invoke("list_indexes", pb.ListIndexesRequest())
        return IndexList(indexes=[IndexInfo._from_pb(i) for i in r.indexes],
                         unreadable_entries=r.unreadable_entries, raw=r)

    def delete_index(self, name: str, confirm_id: bytes) -> DeleteIndexResult:
        """Delete an index, its records and (when it owns it) its token key (admin). Cannot be
        undone: ``confirm_id`` must be the index's id (``IndexInfo.id``), else
        FailedPrecondition."""
        r = self._invoke("delete_index",
                         pb.DeleteIndexRequest(name=name, confirm_id=bytes(confirm_id)))
        return DeleteIndexResult(key_destroyed=r.key_destroyed, key_remains=r.key_remains, raw=r)

    def train(self, index: str, *, n_lists: int = 0, max_iters: int = 0, tolerance: float = 0.0,
              seed: int = 0, max_points_per_list: int = 0) -> TrainResult:
        """(Re)build the IVF clusters with k-means (admin). 0 means the documented default of
        each parameter (n_lists: the index's; max_iters 20; tolerance 1e-4; seed 1234;
        max_points_per_list 256)."""
        r = self._invoke("train", pb.TrainRequest(index=index, n_lists=n_lists,
                                                  max_iters=max_iters, tolerance=tolerance,
                                                  seed=seed,
                                                  max_points_per_list=max_points_per_list))
        return TrainResult(version=r.version, raw=r)

    def upsert(self, index: str, items: Iterable[Union[Item, Mapping[str, Any]]]) -> UpsertResult:
        """Insert or replace items, all or nothing. Each item is an ``Item`` or a dict with the
        same keys (id, vector, and optionally metadata as a dict, contents as bytes)."""
        msgs = []
        for it in items:
            if isinstance(it, Mapping):
                unknown = set(it) - {"id", "vector", "metadata", "contents"}
                if unknown:
                    raise ValueError(f"item keys {sorted(unknown)}: expected id, vector, "
                                     f"metadata, contents")
                it = Item(**it)
            if not isinstance(it, Item):
                raise TypeError(f"items must be Item or dict, not {type(it).__name__}")
            msgs.append(pb.Item(id=it.id, vector=_floats(it.vector, f"item {it.id!r} vector"),
                                metadata=metadata_to_wire(it.metadata),
                                contents=bytes(it.contents)))
        r = self._invoke("upsert", pb.UpsertRequest(index=index, items=msgs))
        return UpsertResult(version=r.version, upserted=r.upserted, raw=r)

    def query(self, index: str, vectors: Union[Vector, Sequence[Vector]], *, top_k: int = 0,
              n_probes: int = 0, filter: Optional[Union[str, Mapping[str, Any]]] = None,
              include_vectors: bool = False, include_metadata: bool = False,
              include_contents: bool = False, min_version: int = 0,
              max_probes: int = 0) -> QueryResult:
        """Nearest neighbours of one vector (a sequence of floats) or of several (a sequence of
        vectors); ``results[i]`` answers vector i either way. ``top_k`` 0 means 10, ``n_probes``
        0 automatic. ``filter``: a Mongo-style filter (docs/FILTERS.md) as a dict or JSON text;
        a filtered query short of ``top_k`` matches widens its probes up to ``max_probes``
        clusters (0: the server's [engine] max_probes, else all; docs/FILTERS.md "Probes").
        ``min_version``: raise Stale if the index version served is older."""
        vs = list(vectors)
        rows = [vs] if vs and _is_number(vs[0]) else vs
        flat: List[float] = []
        for i, v in enumerate(rows):
            flat += _floats(v, f"query vector {i}")
        if isinstance(filter, Mapping):
            filter = metadata_to_wire(filter)
        r = self._invoke("query", pb.QueryRequest(
            index=index, vectors=flat, top_k=top_k, n_probes=n_probes, filter=filter or "",
            include_vectors=include_vectors, include_metadata=include_metadata,
            include_contents=include_contents, min_version=min_version, max_probes=max_probes))
        results = []
        for res in r.results:
            n = len(res.ids)
            if (len(res.distances) != n or (include_metadata and len(res.metadata) != n)
                    or (include_contents and len(res.contents) != n)
                    or (include_vectors and (len(res.vectors) % n if n else len(res.vectors)))):
                self._drop()
                raise ProtocolError("a query result whose parallel fields differ in length")
            dim = len(res.vectors) // n if n and include_vectors else 0
            results.append([Match(
                id=res.ids[j], distance=res.distances[j],
                vector=list(res.vectors[j * dim:(j + 1) * dim]) if include_vectors else None,
                metadata=metadata_from_wire(res.metadata[j]) if include_metadata else None,
                contents=bytes(res.contents[j]) if include_contents else None)
                for j in range(n)])
        return QueryResult(results=results, version=r.version, n_probes=r.n_probes, raw=r)

    def get(self, index: str, ids: Sequence[str], *, include_vectors: bool = False,
            include_metadata: bool = False, include_contents: bool = False,
            min_version: int = 0) -> GetResult:
        """Items by id: ``items[i]`` answers ``ids[i]`` (None when absent)."""
        if isinstance(ids, str):
            raise TypeError("ids must be a list of ids, not one string")
        r = self._invoke("get", pb.GetRequest(index=index, ids=list(ids),
                                              include_vectors=include_vectors,
                                              include_metadata=include_metadata,
                                              include_contents=include_contents,
                                              min_version=min_version))
        if len(r.items) != len(r.found):
            self._drop()
            raise ProtocolError("a get answer whose items and found differ in length")
        items = [Item._from_pb(m) if f else None for m, f in zip(r.items, r.found)]
        return GetResult(items=items, version=r.version, raw=r)

    def delete(self, index: str, ids: Sequence[str]) -> DeleteResult:
        """Delete items by id; ids that do not exist are ignored (``deleted`` counts the
        others)."""
        if isinstance(ids, str):
            raise TypeError("ids must be a list of ids, not one string")
        r = self._invoke("delete", pb.DeleteRequest(index=index, ids=list(ids)))
        return DeleteResult(deleted=r.deleted, version=r.version, raw=r)

    def list_ids(self, index: str, *, cursor: str = "", limit: int = 0) -> IdPage:
        """One page of ids (``limit`` 0 means 1000); pass ``next_cursor`` for the next."""
        r = self._invoke("list_ids", pb.ListIdsRequest(index=index, cursor=cursor, limit=limit))
        return IdPage(ids=list(r.ids), next_cursor=r.next_cursor, raw=r)

    def iter_ids(self, index: str, *, page_size: int = 0) -> Iterator[str]:
        """Every id of an index, page after page (list_ids)."""
        cursor = ""
        while True:
            page = self.list_ids(index, cursor=cursor, limit=page_size)
            yield from page.ids
            cursor = page.next_cursor
            if not cursor:
                return

    def accept_rollback(self, index: str, confirm_version: int) -> AcceptRollbackResult:
        """Accept the store's current, older head of an index (admin; after RollbackDetected).
        ``confirm_version`` must be that head's version (``IndexInfo.version`` in
        ``list_indexes``), else FailedPrecondition."""
        r = self._invoke("accept_rollback", pb.AcceptRollbackRequest(
            index=index, confirm_version=confirm_version))
        return AcceptRollbackResult(previous_version=r.previous_version, version=r.version,
                                    raw=r)

    def attest(self, index: str, nonce: Optional[bytes] = None) -> Attestation:
        """A statement about ``index``'s key signed on the token (the ``attest`` permission).
        ``nonce``: 8-64 bytes, default 32 random ones. Verify ``evidence`` against a public key
        pinned out of band (``cipherdex-hsm attest verify``, docs/ATTESTATION.md).
        FailedPrecondition when the token has no attestation key."""
        if nonce is None:
            nonce = os.urandom(32)
        r = self._invoke("attest", pb.AttestRequest(index=index, nonce=bytes(nonce)))
        return Attestation(evidence=bytes(r.evidence),
                           attestation_public_key=bytes(r.attestation_public_key),
                           attestation_key_id=bytes(r.attestation_key_id), nonce=bytes(nonce),
                           raw=r)

    def audit_tail(self, limit: int = 0) -> AuditTail:
        """The audit trail's last records (appliance operators and admins); ``limit`` 0 means
        20."""
        r = self._invoke("audit_tail", pb.AuditTailRequest(limit=limit))
        return AuditTail(records=list(r.records), state=r.state, last_seq=r.last_seq,
                         lost=r.lost, error=r.error, raw=r)

    def compact(self, index: str) -> CompactResult:
        """Merge every cluster's segments and sweep unreferenced records past their grace now
        (admin). Aborted when concurrent writers won every attempt."""
        r = self._invoke("compact", pb.CompactRequest(index=index))
        return CompactResult(clusters_compacted=r.clusters_compacted, version=r.version,
                             records_deleted=r.records_deleted,
                             records_waiting=r.records_waiting,
                             next_delete_ms=r.next_delete_ms, retired_bytes=r.retired_bytes,
                             raw=r)

    def rotate(self, index: str, *, wait: bool = False, new_key: bool = False) -> RotateResult:
        """Start an online key rotation to the next epoch (admin; docs/ROTATION.md): every record
        is re-encrypted in the background; with ``wait`` the request runs it and returns when it
        is done. Not idempotent: a retry after completion starts one more. ``new_key``: a new
        index key generated on the token for the new epoch, the old one destroyed when done
        (an adopted key is left on the token: ``key_remains`` of the result says what of the
        old key remains and how to destroy it)."""
        r = self._invoke("rotate", pb.RotateRequest(index=index, wait=wait, new_key=new_key))
        info = IndexInfo._from_pb(r.index) if r.HasField("index") else None
        return RotateResult(index=info, from_epoch=r.from_epoch, to_epoch=r.to_epoch,
                            items=r.items, contents=r.contents, version=r.version, ms=r.ms,
                            attempts=r.attempts, key_remains=r.key_remains, raw=r)

    def purge(self) -> int:
        """Remove from the store what no live index owns (appliance admins only): indexes whose
        key is gone from the token, restored copies of deleted indexes, unreferenced records.
        Returns the store keys removed; a second call removes nothing more."""
        return self._invoke("purge", pb.PurgeRequest()).removed


#: The Request.body members the typed methods cover; ``tests`` check this against the .proto.
OPERATIONS = ("health", "create_index", "describe_index", "list_indexes", "delete_index",
              "train", "upsert", "query", "get", "delete", "list_ids", "accept_rollback",
              "attest", "audit_tail", "compact", "rotate", "purge")
