"""A small Cipherdex client in Python: TLS (mutual), length-prefixed frames, protobuf.

The protobuf classes come from proto/cipherdex.proto compiled with
`protoc --python_out=DIR -I proto proto/cipherdex.proto` (Debian: protobuf-compiler,
python3-protobuf; run with /usr/bin/python3, which has python3-protobuf).
"""
import os
import random
import socket
import ssl
import struct
import time

import cipherdex_pb2 as pb

# docs/WIRE.md, "What to retry". Statuses saying nothing was applied: any request may be sent
# again (ABORTED, UNAVAILABLE, BUSY, RATE_LIMITED: after Status.retry_after_ms).
RETRY_ANY = frozenset({10, 14, 109, 122})
UNAUTHENTICATED = 16
RATE_LIMITED = 122
# Statuses that may leave the outcome unknown (a commit cut off): only idempotent requests
# (DEADLINE_EXCEEDED, HSM_UNAVAILABLE, STORE_UNAVAILABLE).
RETRY_IDEMPOTENT = RETRY_ANY | {4, 102, 107}
# Requests that may be sent again after an unknown outcome (a dropped connection): the reads,
# upsert (the same ids with the same values leave the same items) and delete by ids. Not
# create_index, delete_index or train: describe the index to see what happened instead.
IDEMPOTENT = frozenset({"health", "describe_index", "list_indexes", "get", "query", "list_ids",
                        "upsert", "delete", "attest"})


class CipherdexError(Exception):
    """A response whose status is not OK: .code (see the README's status table), .message,
    .retry_after_ms (with RATE_LIMITED: how long to wait before sending again)."""

    def __init__(self, code, message, retry_after_ms=0):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms


class ProtocolError(Exception):
    """The server broke the wire contract (no status, wrong request id, oversized frame)."""


class ConnectionLost(ProtocolError):
    """The connection closed before the answer came: the request's outcome is unknown."""


def _refused_certificate(e):
    """An SSLError that is the server's alert about our certificate (unknown CA, revoked,
    expired, wrong EKU, none sent)."""
    reason = getattr(e, "reason", "") or ""
    return reason.endswith(("_CERTIFICATE", "CERTIFICATE_REVOKED", "CERTIFICATE_EXPIRED",
                            "CERTIFICATE_UNKNOWN", "UNKNOWN_CA", "ACCESS_DENIED",
                            "CERTIFICATE_REQUIRED"))


def retryable(name, code):
    """May request `name` (an oneof body name, "upsert") be sent again after status `code`?"""
    return code in (RETRY_IDEMPOTENT if name in IDEMPOTENT else RETRY_ANY)


class Client:
    def __init__(self, addr, ca=None, cert=None, key=None, insecure=False, timeout=30.0,
                 max_frame=64 << 20):
        self._args = (addr, ca, cert, key, insecure, timeout)
        self.max_frame = max_frame
        self.next_id = 1
        self.sock = None
        self._connect()

    def _connect(self):
        addr, ca, cert, key, insecure, timeout = self._args
        host, _, port = addr.rpartition(":")
        host = host.strip("[]")
        raw = socket.create_connection((host, int(port)), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if insecure:
            self.sock = raw
        else:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(cert, key)
            # The server name is checked: an IP address against the certificate's IP SANs.
            try:
                self.sock = ctx.wrap_socket(raw, server_hostname=host)
            except BaseException:
                raw.close()
                raise

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def reconnect(self):
        """Close this connection (if any) and open a new one with the same settings."""
        self.close()
        self._connect()

    def _recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionLost("the server closed the connection")
            buf += chunk
        return bytes(buf)

    def _pending_alert(self):
        """After a failed write: the server's certificate alert, if it is already here."""
        try:
            self.sock.settimeout(0.05)
            self.sock.recv(1)
        except ssl.SSLError as e:
            return e if _refused_certificate(e) else None
        except OSError:
            return None
        return None

    def call(self, **body):
        """call(query=pb.QueryRequest(...)) -> the response body (QueryResponse, ...)."""
        (name, msg), = body.items()
        req = pb.Request(request_id=self.next_id)
        self.next_id += 1
        getattr(req, name).CopyFrom(msg)
        data = req.SerializeToString()
        if self.sock is None:
            raise ConnectionLost("not connected (an earlier call lost the connection)")
        try:
            self.sock.sendall(struct.pack(">I", len(data)) + data)
            (n,) = struct.unpack(">I", self._recv_exact(4))
        except ssl.SSLError as e:
            self.close()
            if _refused_certificate(e):  # TLS 1.3: the alert comes with the first answer
                raise CipherdexError(UNAUTHENTICATED,
                                     f"the server refused this client's certificate: {e}") from e
            raise ConnectionLost(f"the connection failed: {e}") from e
        except OSError as e:  # reset, broken pipe, timeout: outcome unknown
            alert = self._pending_alert()
            self.close()
            if alert is not None:  # the server refused our certificate before we wrote
                raise CipherdexError(UNAUTHENTICATED,
                                     f"the server refused this client's certificate: {alert}"
                                     ) from e
            raise ConnectionLost(f"the connection failed: {e}") from e
        except ConnectionLost:
            self.close()
            raise
        if n > self.max_frame:
            raise ProtocolError(f"response of {n} bytes exceeds the cap")
        resp = pb.Response()
        try:
            resp.ParseFromString(self._recv_exact(n))
        except OSError as e:
            self.close()
            raise ConnectionLost(f"the connection failed: {e}") from e
        except ConnectionLost:
            self.close()
            raise
        if not resp.HasField("status"):
            raise ProtocolError("response without a status")
        if resp.request_id not in (req.request_id, 0):
            raise ProtocolError(f"response to {resp.request_id}, expected {req.request_id}")
        if resp.status.code != 0:
            raise CipherdexError(resp.status.code, resp.status.message,
                                 resp.status.retry_after_ms)
        if resp.WhichOneof("body") != name:
            raise ProtocolError(f"answer body {resp.WhichOneof('body')!r} for {name!r}")
        return getattr(resp, name)

    def attest(self, index, nonce=None):
        """A signed statement about `index`'s key (docs/ATTESTATION.md): returns (evidence DER,
        attestation public key as SPKI DER, the nonce sent). `nonce`: 8-64 bytes, default 32
        random ones. Verify the DER against a public key pinned out of band (cipherdex-hsm
        attest-key show), with `cipherdex-hsm attest verify` or the openssl commands of the doc."""
        if nonce is None:
            nonce = os.urandom(32)
        r = self.call(attest=pb.AttestRequest(index=index, nonce=nonce))
        return r.evidence, r.attestation_public_key, nonce

    def call_retry(self, attempts=8, first_delay=0.05, max_delay=2.0, total=30.0, **body):
        """call() with retries, as docs/WIRE.md "What to retry" says: after a status that
        retryable() accepts; after a lost connection (reconnecting) when the request is
        idempotent; when reconnecting fails (nothing was sent). Pauses grow from first_delay
        (doubling, with jitter) up to max_delay; at most `attempts` tries within `total`
        seconds. Raises the last error. self.attempts says how many tries were made."""
        (name, _), = body.items()
        idempotent = name in IDEMPOTENT
        deadline = time.monotonic() + total
        delay = first_delay
        self.attempts = 0
        while True:
            self.attempts += 1
            try:
                if self.sock is None:
                    self._connect()
                return self.call(**body)
            except CipherdexError as e:
                if not retryable(name, e.code):
                    raise
                last = e
            except ConnectionLost as e:
                if not idempotent:
                    raise
                last = e
            except ssl.SSLCertVerificationError:
                raise  # fails the same way every time
            except ssl.SSLError as e:
                if not _refused_certificate(e):
                    self.close()
                    last = e
                else:
                    # The server refused this client's certificate at the handshake: sending
                    # again fails the same way.
                    self.close()
                    raise CipherdexError(UNAUTHENTICATED,
                                         f"the server refused this client's certificate: {e}"
                                         ) from e
            except OSError as e:  # connecting failed: nothing was sent
                self.close()
                last = e
            pause = delay / 2 + random.uniform(0, delay / 2)
            if isinstance(last, CipherdexError) and last.retry_after_ms:
                pause = max(pause, last.retry_after_ms / 1000.0)  # the principal's bucket
            if self.attempts >= attempts or time.monotonic() + pause > deadline:
                raise last
            time.sleep(pause)
            delay = min(delay * 2, max_delay)
