"""A small Cipherdex client in Python: TLS (mutual), length-prefixed frames, protobuf.

The protobuf classes come from proto/cipherdex.proto compiled with
`protoc --python_out=DIR -I proto proto/cipherdex.proto` (Debian: protobuf-compiler,
python3-protobuf; run with /usr/bin/python3, which has python3-protobuf).
"""
import socket
import ssl
import struct

import cipherdex_pb2 as pb


class CipherdexError(Exception):
    """A response whose status is not OK: .code (see the README's status table), .message."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ProtocolError(Exception):
    """The server broke the wire contract (no status, wrong request id, oversized frame)."""


class Client:
    def __init__(self, addr, ca=None, cert=None, key=None, insecure=False, timeout=30.0,
                 max_frame=64 << 20):
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
            self.sock = ctx.wrap_socket(raw, server_hostname=host)
        self.max_frame = max_frame
        self.next_id = 1

    def close(self):
        self.sock.close()

    def _recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ProtocolError("the server closed the connection")
            buf += chunk
        return bytes(buf)

    def call(self, **body):
        """call(query=pb.QueryRequest(...)) -> the response body (QueryResponse, ...)."""
        (name, msg), = body.items()
        req = pb.Request(request_id=self.next_id)
        self.next_id += 1
        getattr(req, name).CopyFrom(msg)
        data = req.SerializeToString()
        self.sock.sendall(struct.pack(">I", len(data)) + data)
        (n,) = struct.unpack(">I", self._recv_exact(4))
        if n > self.max_frame:
            raise ProtocolError(f"response of {n} bytes exceeds the cap")
        resp = pb.Response()
        resp.ParseFromString(self._recv_exact(n))
        if not resp.HasField("status"):
            raise ProtocolError("response without a status")
        if resp.request_id not in (req.request_id, 0):
            raise ProtocolError(f"response to {resp.request_id}, expected {req.request_id}")
        if resp.status.code != 0:
            raise CipherdexError(resp.status.code, resp.status.message)
        if resp.WhichOneof("body") != name:
            raise ProtocolError(f"answer body {resp.WhichOneof('body')!r} for {name!r}")
        return getattr(resp, name)
