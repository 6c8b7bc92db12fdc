"""ctest test_python_client, part 1: the `cipherdex` package (packaging/python), pip-installed in
a venv by run_test.sh, checked three ways. Exits non-zero on the first wrong answer.

1. Against the repository's sources: StatusCode mirrors proto/cdx_err.h and the docs/WIRE.md
   table, every Request.body member has a typed method, the frame cap is cdx_limits.h's.
2. Against a fake server on a loopback socket: the wire contract (missing status, another
   request's id, wrong body, oversized frames, a cut connection, a silent server).
3. Against a live dev stack (environment of DIR/cipherdex.env, with an attestation key on the
   token): every operation, and an error path per exception class it can reach.

argv[1] = the source tree.
"""
import hashlib
import importlib.metadata
import math
import os
import random
import re
import socket
import struct
import subprocess
import sys
import threading

import cipherdex
import checks
from checks import check
from cipherdex import (AlreadyExists, CipherdexError, Client, ConnectionLost, FailedPrecondition,
                       FrameTooLarge, InvalidArgument, Item, KeyNotFound, NotFound,
                       PermissionDenied, ProtocolError, RateLimited, Retry, Stale, StatusCode,
                       Unauthenticated, pb)

SRC = sys.argv[1]


def expect(cls, fn, what, says=None):
    """fn() raises cls (a CipherdexError subclass: with its code and name, and a message, which
    contains `says` when given). Returns the exception."""
    try:
        fn()
    except cls as e:
        if issubclass(cls, CipherdexError) and cls.status is not None:
            check(e.code == int(cls.status) and e.name == cls.status.name and e.message,
                  f"{what}: {cls.__name__} carries code {int(cls.status)}, its name and a "
                  f"message ({e.code} {e.name} {e.message!r})")
        if says is not None:
            check(says in str(e), f"{what}: the error says {says!r} ({e})")
        return e
    except Exception as e:  # noqa: BLE001 - reported as a failure
        check(False, f"{what}: raised {type(e).__name__}: {e}, expected {cls.__name__}")
    check(False, f"{what}: no error, expected {cls.__name__}")
    return None


# ---------------------------------------------------------------------------------------------
# 1. The package against the repository's sources
# ---------------------------------------------------------------------------------------------

def mirrors_sources():
    with open(os.path.join(SRC, "proto", "cdx_err.h")) as f:
        c_codes = {m.group(1): int(m.group(2)) for m in
                   re.finditer(r"\bCDX_(?:ERR_)?(\w+) = (\d+),", f.read())}
    py_codes = {s.name: int(s) for s in StatusCode}
    check(c_codes == py_codes, f"StatusCode mirrors proto/cdx_err.h (differences: "
          f"{set(c_codes.items()) ^ set(py_codes.items())})")
    with open(os.path.join(SRC, "docs", "WIRE.md")) as f:
        rows = {int(m.group(1)): m.group(2) for m in
                re.finditer(r"^\| (\d+) \| ([A-Z_]+) \|", f.read(), re.M)}
    check(all(rows.get(int(s)) == s.name for s in StatusCode),
          "every StatusCode is a row of docs/WIRE.md's status table")
    for s in StatusCode:
        if s == StatusCode.OK:
            continue
        cls = cipherdex.error_class(s)
        check(cls is not CipherdexError and cls.status == s and issubclass(cls, CipherdexError)
              and getattr(cipherdex, cls.__name__) is cls,
              f"{s.name} has its own exception class, exported by the package")
    e = cipherdex.errors.error_for(999, "from a newer server")
    check(type(e) is CipherdexError and e.code == 999 and e.name == "CODE_999",
          "an unknown code raises CipherdexError itself, with the number")
    check(len({cipherdex.error_class(s) for s in StatusCode if s}) == len(StatusCode) - 1,
          "one class per code")

    body = [f.name for f in pb.Request.DESCRIPTOR.oneofs_by_name["body"].fields]
    check(tuple(body) == cipherdex.OPERATIONS,
          f"OPERATIONS lists every Request.body member in order (proto has {body})")
    check([f.name for f in pb.Response.DESCRIPTOR.oneofs_by_name["body"].fields] == body,
          "Response.body mirrors Request.body")
    check(all(callable(getattr(Client, op, None)) for op in body),
          f"a typed Client method per operation (missing: "
          f"{[op for op in body if not hasattr(Client, op)]})")

    with open(os.path.join(SRC, "proto", "cdx_limits.h")) as f:
        m = re.search(r"#define CDX_FRAME_MAX_DEFAULT\s+\((\d+)u \* 1024u \* 1024u\)", f.read())
    check(m and cipherdex.DEFAULT_MAX_FRAME == int(m.group(1)) << 20,
          "DEFAULT_MAX_FRAME is the daemon's CDX_FRAME_MAX_DEFAULT")
    if os.path.isdir(os.path.join(SRC, ".git")) or os.path.isfile(os.path.join(SRC, ".git")):
        tracked = subprocess.run(["git", "-C", SRC, "ls-files", "packaging/python/cipherdex"],
                                 check=True, capture_output=True, text=True).stdout.split()
        check(tracked and not any(t.endswith("_pb2.py") for t in tracked),
              "no generated protobuf module is committed")
    check(os.path.dirname(pb.__file__) == os.path.dirname(cipherdex.__file__),
          "the generated module is installed inside the package")

    srcpkg = os.path.join(SRC, "packaging", "python")
    if not os.path.exists(os.path.join(srcpkg, "cipherdex", "cipherdex_pb2.py")):
        r = subprocess.run([sys.executable, "-c", "import cipherdex"], capture_output=True,
                           text=True, env=dict(os.environ, PYTHONPATH=srcpkg,
                                               PYTHONDONTWRITEBYTECODE="1"))
        check(r.returncode != 0 and "generated from proto/cipherdex.proto" in r.stderr,
              "importing the source directory says to install the package")

    with open(os.path.join(SRC, "CMakeLists.txt")) as f:
        m = re.search(r"project\(cipherdex VERSION ([0-9.]+)", f.read())
    check(m and cipherdex.__version__ == m.group(1) == importlib.metadata.version("cipherdex"),
          "the package's version is the project's, in the code and the installed metadata")

    check(cipherdex.retryable("upsert", 107) and not cipherdex.retryable("train", 107),
          "STORE_UNAVAILABLE: idempotent operations retry, train does not")
    check(cipherdex.retryable("create_index", 122) and not cipherdex.retryable("query", 3),
          "RATE_LIMITED retries anything; INVALID_ARGUMENT nothing")
    check(cipherdex.parse_address("[::1]:7700") == ("::1", 7700), "IPv6 addresses parse")
    expect(ValueError, lambda: cipherdex.parse_address("localhost"), "an address without port")
    expect(ValueError, lambda: Client("127.0.0.1", 1, connect=False), "mutual TLS needs a cert",
           "cert=")


# ---------------------------------------------------------------------------------------------
# 2. The wire contract against a fake server (plaintext, loopback)
# ---------------------------------------------------------------------------------------------

def read_frame(conn):
    hdr = b""
    while len(hdr) < 4:
        chunk = conn.recv(4 - len(hdr))
        if not chunk:
            return None
        hdr += chunk
    (n,) = struct.unpack(">I", hdr)
    data = b""
    while len(data) < n:
        data += conn.recv(n - len(data))
    return pb.Request.FromString(data)


def frame(msg):
    data = msg.SerializeToString()
    return struct.pack(">I", len(data)) + data


class FakeServer:
    """Accepts one connection, reads one Request, answers with answer(request) (bytes to send,
    or None to stay silent until release() is called), then closes the connection."""

    def __init__(self, answer):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.answer = answer
        self.released = threading.Event()
        self.requests = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        conn, _ = self.sock.accept()
        with conn:
            req = read_frame(conn)
            if req is None:
                return
            self.requests.append(req)
            out = self.answer(req)
            if out is None:
                self.released.wait(30)
            else:
                conn.sendall(out)

    def close(self):
        self.released.set()
        self.thread.join(30)
        self.sock.close()


def fake(answer, fn, timeout=5.0):
    """Run fn(client) against a FakeServer answering with answer; returns (whether the client
    was still connected afterwards, the server)."""
    srv = FakeServer(answer)
    c = Client("127.0.0.1", srv.port, plaintext=True, timeout=timeout)
    try:
        fn(c)
        connected = c.connected
    finally:
        c.close()
        srv.close()
    return connected, srv


def ok(req, **status):
    r = pb.Response(request_id=req.request_id)
    r.status.code = status.get("code", 0)
    r.status.message = status.get("message", "")
    r.status.retry_after_ms = status.get("retry_after_ms", 0)
    return r


def wire_contract():
    def healthy(req):
        r = ok(req)
        r.health.token_ok = True
        r.health.server_version = "fake"
        return frame(r)
    _, srv = fake(healthy, lambda c: check(c.health().server_version == "fake", "a health call"))
    check(srv.requests[0].request_id == 1 and srv.requests[0].WhichOneof("body") == "health",
          "the request carries its id and the body member of its operation")

    def no_status(req):
        return frame(pb.Response(request_id=req.request_id, health=pb.HealthResponse()))
    up, _ = fake(no_status, lambda c: expect(ProtocolError, c.health, "a response without status",
                                             "without a status"))
    check(not up, "a broken contract closes the connection")

    def other_id(req):
        r = ok(req)
        r.request_id = req.request_id + 7
        r.health.SetInParent()
        return frame(r)
    fake(other_id, lambda c: expect(ProtocolError, c.health, "another request's id",
                                    "answers request 8"))

    def wrong_body(req):
        r = ok(req)
        r.describe_index.SetInParent()
        return frame(r)
    fake(wrong_body, lambda c: expect(ProtocolError, c.health, "an answer of another operation",
                                      "'describe_index' for a health request"))

    def ragged(req):
        r = ok(req)
        res = r.query.results.add()
        res.ids.extend(["a", "b"])
        res.distances.append(0.5)
        return frame(r)
    fake(ragged, lambda c: expect(ProtocolError, lambda: c.query("x", [1.0]),
                                  "a query answer with ragged parallel fields", "differ in length"))

    def refused_id0(req):
        r = ok(req, code=5, message="no index named x")
        r.request_id = 0  # a request the server could not decode far enough
        return frame(r)
    fake(refused_id0, lambda c: expect(NotFound, lambda: c.describe_index("x"),
                                       "a status with request id 0", "no index named x"))

    def limited(req):
        return frame(ok(req, code=122, message="slow down", retry_after_ms=250))
    fake(limited, lambda c: check(
        expect(RateLimited, c.health, "RATE_LIMITED").retry_after_ms == 250,
        "RateLimited carries retry_after_ms"))

    def newer(req):
        return frame(ok(req, code=140, message="a code from a newer server"))
    up, _ = fake(newer, lambda c: check(
        type(expect(CipherdexError, c.health, "an unknown code")) is CipherdexError,
        "an unknown code raises CipherdexError"))
    check(up, "a refusal keeps the connection")

    def huge(req):
        return struct.pack(">I", 64 << 20 | 1)
    up, _ = fake(huge, lambda c: expect(FrameTooLarge, c.health, "a response over max_frame",
                                        "over this client's max_frame"))
    check(not up, "an oversized response closes the connection")

    def cut(req):
        return struct.pack(">I", 100) + b"partial"
    fake(cut, lambda c: expect(ConnectionLost, c.health, "a connection cut mid-frame",
                               "closed the connection"))

    fake(lambda req: None, lambda c: expect(ConnectionLost, c.health, "a silent server",
                                            "no answer within 0.3 s"), timeout=0.3)

    def garbage(req):
        return struct.pack(">I", 3) + b"\xff\xff\xff"
    fake(garbage, lambda c: expect(ProtocolError, c.health, "an unparsable response",
                                   "does not parse"))

    c = Client("127.0.0.1", 1, plaintext=True, connect=False)
    expect(ValueError, lambda: c.call("no_such_op", pb.HealthRequest()), "an unknown operation",
           "unknown operation")


# ---------------------------------------------------------------------------------------------
# 3. A live daemon
# ---------------------------------------------------------------------------------------------

def live():
    env = os.environ
    dim = 16
    rng = random.Random(7)
    vecs = {f"doc-{i}": [rng.uniform(-1, 1) for _ in range(dim)] for i in range(300)}
    name = f"pkg-{os.getpid()}-{random.randrange(1 << 20)}"

    with Client.from_env() as c:
        h = c.health()
        check(h.token_ok and h.store_ok and h.server_version and h.status in ("ok", "degraded"),
              f"health: {h}")

        # create_index: every key source reaches the server and is answered.
        info = c.create_index(name, dim, "cosine", n_lists=4)
        check(info.name == name and info.dimension == dim and len(info.id) == 16
              and info.metric == "cosine" and info.index_type == "ivfflat" and info.n_lists == 4,
              f"create_index: {info}")
        check(info.key_source == "generate" and info.key_owned and info.status == "ok",
              "the key is generated on the token and owned by the index")
        p = info.key_provenance
        check(p.origin == "generated" and p.born_on_token == "yes"
              and p.attributes["extractable"] == "no" and p.attributes["derive"] == "no",
              f"key provenance as a dataclass with an attribute dict: {p}")
        expect(AlreadyExists, lambda: c.create_index(name, dim, "cosine"), "the same name again")
        expect(InvalidArgument, lambda: c.create_index(name + "-m", dim, "manhattan"),
               "an unknown metric", "metric")
        expect(FailedPrecondition, lambda: c.create_index(name + "-i", dim, "cosine",
                                                          import_key=os.urandom(32)),
               "a plaintext key on an appliance that does not import them", "plaintext")
        expect(KeyNotFound, lambda: c.create_index(name + "-a", dim, "cosine",
                                                   adopt_key_id=os.urandom(16)),
               "adopting a key the token does not hold", "no key labelled")
        expect(KeyNotFound, lambda: c.create_index(name + "-u", dim, "cosine", unwrap_kek="nokek",
                                                   wrapped_key=os.urandom(40)),
               "unwrapping with a KEK the token does not hold", "cipherdex-kek-nokek")
        expect(InvalidArgument, lambda: c.create_index(name + "-w", dim, "cosine",
                                                       unwrap_kek="k", wrapped_key=b"short"),
               "a wrapped key of the wrong length", "40 bytes")
        expect(ValueError, lambda: c.create_index(name + "-2", dim, "cosine", import_key=b"k" * 32,
                                                  adopt_key_id=b"i" * 16),
               "two key sources at once", "one key source")
        expect(NotFound, lambda: c.describe_index(name + "-a"), "a refused create left nothing")

        # upsert: Item objects and dicts; metadata dicts (nested, non-ASCII) and contents bytes.
        def meta(i):
            return {"n": i, "even": i % 2 == 0, "tags": ["a", "é"], "doc": {"page": i // 10}}
        items = [Item(id=k, vector=v, metadata=meta(i), contents=f"contents of {k}".encode())
                 for i, (k, v) in enumerate(vecs.items())]
        up = c.upsert(name, items[:150])
        check(up.upserted == 150 and up.version > info.version, "upsert returns its commit")
        dicts = [{"id": it.id, "vector": it.vector, "metadata": it.metadata,
                  "contents": it.contents} for it in items[150:]]
        up2 = c.upsert(name, dicts)
        check(up2.upserted == 150 and up2.version > up.version, "upsert of dicts; versions grow")
        expect(InvalidArgument, lambda: c.upsert(name, [Item(id="short", vector=[1.0, 2.0])]),
               "a vector of the wrong dimension", "dimension")
        expect(ValueError, lambda: c.upsert(name, [Item(id="nan", vector=vecs["doc-1"],
                                                        metadata={"x": math.nan})]),
               "NaN in metadata is refused before sending")
        expect(ValueError, lambda: c.upsert(name, [{"id": "x", "vectr": [1.0]}]),
               "a misspelt item key", "vectr")

        t = c.train(name)
        check(t.version > up2.version, "train commits a new version")

        # query: several vectors, everything included.
        q = c.query(name, [vecs["doc-7"], vecs["doc-42"]], top_k=5, n_probes=4,
                    include_vectors=True, include_metadata=True, include_contents=True,
                    min_version=t.version)
        check(len(q.results) == 2 and q.n_probes == 4 and q.version >= t.version,
              "one result list per query vector; n_probes and version")
        m = q.results[0][0]
        check(m.id == "doc-7" and abs(m.distance) < 1e-5, "nearest of doc-7 is doc-7")
        check(q.results[1][0].id == "doc-42", "nearest of doc-42 is doc-42")
        check(m.metadata == meta(7), f"metadata comes back as the dict sent ({m.metadata})")
        check(m.contents == b"contents of doc-7", "contents come back")
        check(len(m.vector) == dim and all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
                                           for a, b in zip(m.vector, vecs["doc-7"])),
              "the vector comes back, split per match")
        check([x.distance for x in q.results[0]] == sorted(x.distance for x in q.results[0]),
              "best first")
        q1 = c.query(name, vecs["doc-9"], top_k=3)
        check(len(q1.results) == 1 and len(q1.results[0]) == 3 and q1.results[0][0].id == "doc-9"
              and q1.results[0][0].metadata is None and q1.results[0][0].vector is None,
              "one vector as a flat list; nothing included unless asked")
        q2 = c.query(name, vecs["doc-7"], top_k=10, n_probes=100, filter={"even": True},
                     include_metadata=True)
        check(q2.results[0] and all(x.metadata["even"] for x in q2.results[0])
              and q2.n_probes == 4, "a filter as a dict; n_probes clamped to the clusters")
        q3 = c.query(name, vecs["doc-7"], top_k=50, n_probes=4,
                     filter='{"doc.page": {"$lt": 2}}', include_metadata=True)
        check(q3.results[0] and all(x.metadata["n"] < 20 for x in q3.results[0]),
              "a filter as JSON text, with a dot path")
        expect(InvalidArgument, lambda: c.query(name, [1.0, 2.0], top_k=3),
               "a query vector of the wrong dimension", "dimension")
        expect(InvalidArgument, lambda: c.query(name, vecs["doc-1"], filter={"n": {"$near": 1}}),
               "an unknown filter operator", "$near")

        # get: found and missing ids, include flags.
        g = c.get(name, ["doc-3", "nope"], include_vectors=True, include_metadata=True,
                  include_contents=True)
        check(g.found == [True, False] and g.items[1] is None, "get: a missing id is None")
        it = g.items[0]
        check(it.id == "doc-3" and it.metadata == meta(3) and it.contents == b"contents of doc-3"
              and all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(it.vector, vecs["doc-3"])),
              "get returns the item as upserted")
        bare = c.get(name, ["doc-3"]).items[0]
        check(list(bare.vector) == [] and bare.metadata is None and bare.contents == b"",
              "get without include flags returns the id only")
        expect(Stale, lambda: c.get(name, ["doc-3"], min_version=q.version + 1000),
               "min_version above the served version", "older than the requested")
        expect(TypeError, lambda: c.get(name, "doc-3"), "ids as one string")

        d = c.delete(name, ["doc-3", "doc-4", "nope"])
        check(d.deleted == 2 and d.version > t.version, "delete counts existing ids")

        pages, cursor = 0, ""
        seen = []
        while True:
            page = c.list_ids(name, cursor=cursor, limit=64)
            pages += 1
            seen += page.ids
            cursor = page.next_cursor
            if not cursor:
                break
        check(len(seen) == 298 and len(set(seen)) == 298 and pages == 5,
              f"list_ids pages cover every id once ({len(seen)} in {pages} pages)")
        check(sorted(c.iter_ids(name, page_size=100)) == sorted(seen), "iter_ids")
        expect(InvalidArgument, lambda: c.list_ids(name, cursor="forged"),
               "a cursor that was not issued")

        # compact: the delete left tombstone segments; merging them once, then nothing.
        k = c.compact(name)
        check(k.clusters_compacted >= 1 and k.version > d.version,
              f"compact merges the clusters the delete touched ({k})")
        check(k.retired_bytes >= 60 * k.records_waiting
              and (k.records_waiting > 0) == (k.retired_bytes > 0),
              f"compact counts the retired records' bytes ({k})")
        k2 = c.compact(name)
        check(k2.clusters_compacted == 0 and k2.version == 0, "a second compact merges nothing")
        info3 = c.describe_index(name)
        check(info3.dead_rows == 0 and info3.last_compaction_ms > 0
              and info3.retired_bytes >= 60 * info3.records_waiting,
              f"describe after compaction: no dead rows, and when it ran ({info3})")
        rot = c.rotate(name, wait=True)
        check(rot.to_epoch == rot.from_epoch + 1 and rot.index is not None
              and rot.index.key_epoch == rot.to_epoch and c.describe_index(name).count == info3.count,
              f"rotate --wait: the next epoch, the same items ({rot})")
        rot2 = c.rotate(name, wait=True, new_key=True)
        check(rot2.index is not None and rot2.index.key_generation == 1
              and rot2.index.kcv != rot.index.kcv and c.describe_index(name).count == info3.count
              and rot2.key_remains == "",
              f"rotate --new-key: generation 1, another KCV, the same items ({rot2})")
        purged = c.purge()
        check(isinstance(purged, int) and c.purge() == 0, "purge, then nothing more to purge")
        info2 = c.describe_index(name)
        check(info2.count == 298 and info2.n_clusters == 4 and info2.version >= k.version,
              f"describe after training, deletes and compaction ({info2.count} items)")
        check(c.get(name, ["doc-5"]).found == [True] and c.get(name, ["doc-4"]).found == [False],
              "compaction kept the live items and not the deleted ones")

        # accept_rollback: nothing to accept; the confirmation is checked.
        ar = c.accept_rollback(name, info2.version)
        check(ar.version == info2.version and ar.previous_version <= ar.version,
              f"accept_rollback of an index not in rollback changes nothing ({ar})")
        expect(FailedPrecondition, lambda: c.accept_rollback(name, 0), "confirm_version 0")

        # attest: the statement carries our nonce and names the key it came with.
        nonce = os.urandom(32)
        a = c.attest(name, nonce)
        check(a.evidence[:1] == b"\x30" and nonce in a.evidence and a.nonce == nonce,
              "attest: DER evidence carrying our nonce")
        check(hashlib.sha256(a.attestation_public_key).digest() == a.attestation_key_id,
              "attestation_key_id is SHA-256 of the public key")
        check(c.attest(name).nonce != nonce, "a fresh random nonce by default")
        expect(InvalidArgument, lambda: c.attest(name, b"short"), "a nonce under 8 bytes",
               "nonce")

        tail = c.audit_tail(5)
        check(0 < len(tail.records) <= 5 and tail.state == "ok" and tail.last_seq >= 5
              and tail.records[-1].startswith("cdxa1 "), f"audit_tail: {tail.state}")
        lst = c.list_indexes()
        mine = [i for i in lst.indexes if i.name == name]
        check(len(mine) == 1 and mine[0].status == "ok" and lst.unreadable_entries == 0,
              "list_indexes shows the index, serving")

        # The raw call reaches any operation with the generated messages.
        raw = c.call("describe_index", pb.DescribeIndexRequest(name=name))
        check(raw.index.count == 298 and info2.raw.count == 298,
              "call() and .raw give the protobuf messages")

        # Frame caps: a request over the cap is not sent; a response over it closes.
        with Client.from_env(max_frame=4096) as small:
            expect(FrameTooLarge, lambda: small.upsert(name, [Item(id="big", vector=vecs["doc-1"],
                                                                   contents=b"x" * 8000)]),
                   "a request over max_frame", "nothing was sent")
            check(small.connected and small.health().token_ok,
                  "the connection stays usable after a refused request")
            check(c.get(name, ["big"]).found == [False], "the refused upsert wrote nothing")
            c.upsert(name, [Item(id="big", vector=vecs["doc-1"], contents=b"y" * 8000)])
            expect(FrameTooLarge, lambda: small.get(name, ["big"], include_contents=True),
                   "a response over max_frame", "the connection was closed")
            check(not small.connected, "closed after an oversized response")
            check(small.health().token_ok, "the next call reconnects")

        # Retries: a healthy call is sent once.
        with Client.from_env(retry=Retry(attempts=3)) as r:
            check(r.describe_index(name).name == name and r.attempts == 1,
                  "a retried typed call that succeeds is sent once")

        # Permissions: the application certificate is granted nothing.
        with Client.from_env(cert=env["CIPHERDEX_APP_CERT"], key=env["CIPHERDEX_APP_KEY"]) as app:
            check(app.health().token_ok, "any valid certificate may ask for health")
            expect(PermissionDenied, lambda: app.describe_index(name), "describe without read")
            expect(PermissionDenied, lambda: app.query(name, vecs["doc-1"]), "query without read")
            expect(PermissionDenied, lambda: app.upsert(name, items[:1]), "upsert without write")
            expect(PermissionDenied, lambda: app.delete_index(name, info.id),
                   "delete_index without admin")
            expect(PermissionDenied, app.audit_tail, "audit_tail without operators")
            check(name not in [i.name for i in app.list_indexes().indexes],
                  "list_indexes hides what the principal may not see")

        # A certificate the server refuses (its own: serverAuth, not clientAuth).
        pki = dict(ln.strip().split("=", 1) for ln in open(env["CIPHERDEX_PKI_TXT"]) if "=" in ln)

        def refused():
            with Client.from_env(cert=pki["server_cert"], key=pki["server_key"]) as bad:
                bad.health()
        expect(Unauthenticated, refused, "a certificate without clientAuth",
               "refused this client's certificate")

        # delete_index: the confirmation, then the key is crypto-shredded.
        expect(FailedPrecondition, lambda: c.delete_index(name, b"\0" * 16),
               "delete_index with another id", "confirm")
        di = c.delete_index(name, info.id)
        check(di.key_destroyed and di.key_remains == "",
              "delete_index destroys the generated key and leaves nothing")
        expect(NotFound, lambda: c.describe_index(name), "a deleted index")
        expect(NotFound, lambda: c.call("describe_index", pb.DescribeIndexRequest(name=name)),
               "call() raises the status class too")
    expect(ConnectionLost, c.health, "a closed client", "closed")


def main():
    mirrors_sources()
    wire_contract()
    live()
    print(f"python package: {checks.count} checks passed")


if __name__ == "__main__":
    main()
