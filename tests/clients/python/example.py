"""The example of docs/PYTHON.md (ctest test_python_client runs it, part 2): create an index,
upsert, train, query, get, delete, clean up, against the appliance that CIPHERDEX_ADDR,
CIPHERDEX_CA, CIPHERDEX_CERT and CIPHERDEX_KEY name (DIR/cipherdex.env of `./run up DIR`)."""
import os
import random

from cipherdex import AlreadyExists, Client, InvalidArgument, Item, NotFound

with Client.from_env() as c:  # or Client(host, port, ca=..., cert=..., key=...)
    print("appliance", c.health().server_version)
    name = f"example-{os.getpid()}"
    try:
        info = c.create_index(name, 4, "cosine", n_lists=2)  # key generated on the token
    except AlreadyExists:
        info = c.describe_index(name)

    rng = random.Random(1)
    items = [Item(id=f"doc-{i}", vector=[rng.uniform(-1, 1) for _ in range(4)],
                  metadata={"lang": "en" if i % 2 else "fr", "year": 2000 + i},
                  contents=f"text of doc-{i}".encode())
             for i in range(100)]
    written = c.upsert(name, items)
    c.train(name)

    res = c.query(name, items[7].vector, top_k=3, filter={"lang": "en"},
                  include_metadata=True, min_version=written.version)
    for m in res.results[0]:
        print(f"{m.id}  {m.distance:.4f}  {m.metadata}")
    assert res.results[0][0].id == "doc-7"

    got = c.get(name, ["doc-1", "doc-999"], include_contents=True)
    print("doc-1:", got.items[0].contents, "doc-999 found:", got.found[1])

    try:
        c.query(name, [1.0, 2.0])  # wrong dimension
    except InvalidArgument as e:
        print(f"refused: {e.name} ({e.code}): {e.message}")

    c.delete(name, ["doc-1"])
    c.delete_index(name, confirm_id=info.id)
    try:
        c.describe_index(name)
    except NotFound:
        print("index deleted")
