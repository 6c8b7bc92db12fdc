"""Example and check: create an index, upsert, query, get, list, delete - against a live
cipherdexd (environment from ./run up: CIPHERDEX_ADDR, CIPHERDEX_CA, CIPHERDEX_CERT,
CIPHERDEX_KEY). Exits non-zero on the first wrong answer."""
import json
import math
import os
import random
import sys

import cipherdex_pb2 as pb
from cipherdex_client import CipherdexError, Client

checks = 0


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)


def main():
    c = Client(os.environ["CIPHERDEX_ADDR"], os.environ.get("CIPHERDEX_CA"),
               os.environ.get("CIPHERDEX_CERT"), os.environ.get("CIPHERDEX_KEY"),
               insecure=os.environ.get("CIPHERDEX_INSECURE") == "1")
    h = c.call(health=pb.HealthRequest())
    check(h.token_ok and h.store_ok, "health: token and store ok")

    name = f"py-{random.randrange(1 << 30)}"
    dim = 16
    info = c.call(create_index=pb.CreateIndexRequest(name=name, dimension=dim, metric="Cosine",
                                                     index_type="IVFFLAT", n_lists=4)).index
    check(info.name == name and info.dimension == dim and len(info.id) == 16, "create_index")
    check(info.key_source == "generate" and info.key_owned, "key generated on the token")

    rng = random.Random(7)
    vecs = {f"doc-{i}": [rng.uniform(-1, 1) for _ in range(dim)] for i in range(300)}
    items = [pb.Item(id=k, vector=v, metadata=json.dumps({"n": i, "even": i % 2 == 0}),
                     contents=f"contents of {k}".encode())
             for i, (k, v) in enumerate(vecs.items())]
    up = c.call(upsert=pb.UpsertRequest(index=name, items=items[:150]))
    check(up.upserted == 150 and up.version > 0, "upsert returns its commit version")
    up2 = c.call(upsert=pb.UpsertRequest(index=name, items=items[150:]))
    check(up2.version > up.version, "versions increase")
    c.call(train=pb.TrainRequest(index=name))  # 0s: the index's n_lists and defaults

    # Each stored vector's nearest neighbour is itself (cosine distance ~0).
    q = [vecs["doc-7"], vecs["doc-42"]]
    res = c.call(query=pb.QueryRequest(index=name, vectors=q[0] + q[1], top_k=5, n_probes=4,
                                       include_metadata=True, min_version=up2.version))
    check(len(res.results) == 2, "one result per query vector")
    check(res.results[0].ids[0] == "doc-7" and abs(res.results[0].distances[0]) < 1e-5,
          "nearest of doc-7 is doc-7")
    check(res.results[1].ids[0] == "doc-42", "nearest of doc-42 is doc-42")
    check(json.loads(res.results[0].metadata[0])["n"] == 7, "metadata comes back")
    check(list(res.results[0].distances) == sorted(res.results[0].distances), "best first")

    # A filter before top-k.
    res = c.call(query=pb.QueryRequest(index=name, vectors=vecs["doc-7"], top_k=10,
                                       filter='{"even": true}', include_metadata=True))
    check(all(json.loads(m)["even"] for m in res.results[0].metadata), "filter applied")

    g = c.call(get=pb.GetRequest(index=name, ids=["doc-3", "nope"], include_vectors=True,
                                 include_contents=True))
    check(list(g.found) == [True, False], "get: found flags")
    check(all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(g.items[0].vector, vecs["doc-3"])),
          "get returns the vector as upserted")
    check(g.items[0].contents == b"contents of doc-3", "contents round trip")

    d = c.call(delete=pb.DeleteRequest(index=name, ids=["doc-3", "doc-4", "nope"]))
    check(d.deleted == 2, "delete counts existing ids")

    seen, cursor = [], ""
    while True:
        page = c.call(list_ids=pb.ListIdsRequest(index=name, cursor=cursor, limit=64))
        seen += list(page.ids)
        cursor = page.next_cursor
        if not cursor:
            break
    check(len(seen) == 298 and len(set(seen)) == 298, "list_ids pages cover every id once")

    # Attestation: a statement about the index key signed on the token, or FAILED_PRECONDITION
    # (9) when the appliance has no attestation key yet (cipherdex-hsm attest-key create).
    try:
        ev, spki, nonce = c.attest(name)
        check(ev[0] == 0x30 and nonce in ev, "attest: DER evidence carrying our nonce")
    except CipherdexError as e:
        check(e.code in (7, 9), f"attest refused with a reason: {e}")

    # Errors carry a code and a message that says what to fix.
    try:
        c.call(query=pb.QueryRequest(index=name, vectors=[1.0, 2.0], top_k=3))
        check(False, "a wrong vector length is refused")
    except CipherdexError as e:
        check(e.code == 3 and "dimension" in e.message, f"INVALID_ARGUMENT names the problem: {e}")
    try:
        c.call(describe_index=pb.DescribeIndexRequest(name="no-such-index"))
        check(False, "unknown index")
    except CipherdexError as e:
        check(e.code == 5, "NOT_FOUND for an unknown index")
    try:
        c.call(delete_index=pb.DeleteIndexRequest(name=name))
        check(False, "delete_index without confirmation")
    except CipherdexError as e:
        check(e.code == 9, "delete_index needs the index id (FAILED_PRECONDITION)")

    info = c.call(describe_index=pb.DescribeIndexRequest(name=name)).index
    check(info.count == 298 and info.n_clusters == 4, "describe after training and deletes")
    c.call(delete_index=pb.DeleteIndexRequest(name=name, confirm_id=info.id))
    try:
        c.call(describe_index=pb.DescribeIndexRequest(name=name))
        check(False, "index gone")
    except CipherdexError as e:
        check(e.code == 5, "deleted index is NOT_FOUND")
    c.close()
    print(f"python client: {checks} checks passed")


if __name__ == "__main__":
    main()
