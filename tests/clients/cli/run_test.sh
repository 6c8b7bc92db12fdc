#!/usr/bin/env bash
# ctest test_cli: the whole lifecycle through the `cipherdex` CLI against a dev stack (Redis
# store): health, index create/list/describe/train/delete, upsert from JSON Lines and fvecs,
# query (table and --json, filter), get, delete, list-ids, error exits. $1 = build, $2 = source.
set -euo pipefail
build=$(cd "${1:?build dir}" && pwd)
src=${2:?source dir}
base=${CDX_TEST_TMP:-/tmp}
mkdir -p "$base"
dir=$(mktemp -d "$base/cli.XXXXXX")
trap 'for d in "$dir/dev2" "$dir"; do bash "$src/tests/dev/stack.sh" down "$d" >/dev/null 2>&1 || true; done
      rm -rf "$dir"' EXIT
bash "$src/tests/dev/stack.sh" up "$build" "$dir" >/dev/null
# shellcheck disable=SC1091
source "$dir/cipherdex.env"
cli() { "$CIPHERDEX_CLI" "$@"; }
pass=0
ok() { pass=$((pass + 1)); }
fail() { echo "FAIL: $*" >&2; exit 1; }
json() { /usr/bin/python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

cli health | grep -q "^token: ok" && ok || fail "health"
cli --json index create docs --dim 4 --metric cosine --type ivfflat --lists 2 >"$dir/create.json"
id=$(json 'd["id"]' <"$dir/create.json")
[[ ${#id} == 32 ]] && ok || fail "create returns a 32-hex id"
cli index create docs --dim 4 >/dev/null 2>"$dir/err" && fail "create twice" || true
grep -q "error 6 ALREADY_EXISTS" "$dir/err" && ok || fail "ALREADY_EXISTS with code and name"

/usr/bin/python3 - "$dir/items.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(40):
        v = [1.0, i / 40.0, (i % 7) / 7.0, 0.5 if i % 2 else -0.5]
        f.write(json.dumps({"id": f"d{i}", "vector": v, "metadata": {"n": i, "odd": i % 2 == 1},
                            "contents": f"text {i}"}) + "\n")
PY
cli upsert docs --file "$dir/items.jsonl" | grep -q "upserted 40 items" && ok || fail "upsert jsonl"
cli index train docs | grep -q "trained docs" && ok || fail "train"
[[ $(cli --json index describe docs | json 'd["count"]') == 40 ]] && ok || fail "describe count"
cli index list | grep -q "^docs .* generated  *ok$" && ok || fail "index list"
cli index list | grep -q "^docs  *ready  " && ok || fail "index list shows the STATE"
# Provenance (issue 10): generated on this token, as the token reported it at creation.
cli index describe docs | grep -q "^key origin:  generated; generated on the token, never outside it$" &&
    ok || fail "describe shows the key's origin"
[[ $(cli --json index describe docs | json 'd["key_provenance"]["attributes"]["extractable"]') == False ]] &&
    ok || fail "describe --json shows the attributes read back"

# Walkthrough problem 10: a failed batch stops the upload, and the error says exactly which lines
# were committed, which failed (naming the item's own line) and which were not sent.
cli index create cos --dim 4 --metric cosine >/dev/null
/usr/bin/python3 - "$dir/holes.jsonl" "$dir/baddim.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    f.write("\n")  # line 1 blank: lines and rows differ
    for i in range(30):  # lines 2..31; the zero vector (no direction for cosine) on line 15
        v = [0.0, 0.0, 0.0, 0.0] if i == 13 else [1.0, i + 1.0, 0.5, -0.5]
        f.write(json.dumps({"id": f"h{i}", "vector": v}) + "\n")
with open(sys.argv[2], "w") as f:
    for i in range(10):
        f.write(json.dumps({"id": f"b{i}", "vector": [1.0, 2.0, 3.0] if i == 6 else [1.0, 2.0, 3.0, 4.0]}) + "\n")
PY
set +e
cli upsert cos --file "$dir/holes.jsonl" --batch 5 >/dev/null 2>"$dir/err"; rc=$?
set -e
[[ $rc == 1 ]] && grep -q "Committed (version [0-9]*): lines 2-11, lines 17-21. Failed, nothing of it applied: lines 12-16 (the item at line 15: item 3: a zero vector" "$dir/err" &&
    grep -q "Not sent: lines 22-31" "$dir/err" && ok || fail "upsert holes are reported: $(cat "$dir/err")"
[[ $(cli --json index describe cos | json 'd["count"]') == 15 ]] && ok || fail "15 rows committed"
set +e
cli upsert cos --file "$dir/baddim.jsonl" >/dev/null 2>"$dir/err"; rc=$?
set -e
[[ $rc == 1 ]] && grep -q "line 7: the vector has 3 numbers, index cos has dimension 4; nothing was sent" "$dir/err" &&
    ok || fail "a wrong dimension is found before sending: $(cat "$dir/err")"
[[ $(cli --json index describe cos | json 'd["count"]') == 15 ]] && ok || fail "nothing of baddim sent"

# Walkthrough problem 1: a key another index holds cannot be adopted again; the failed create
# leaves nothing to delete, and the holder keeps its records.
hsm() {
    "$build/appliance/cipherdex-hsm" --module "$CIPHERDEX_HSM_MODULE" \
        --token "pkcs11:token=$CIPHERDEX_TOKEN_LABEL" --pin-source "file:$CIPHERDEX_PIN_FILE" "$@"
}
kid=$(hsm --json index generate | json 'd["id"]')
cli --json index create prod --dim 4 --adopt-key "$kid" >"$dir/prod.json"
[[ $(json 'd["key_provenance"]["origin"] + " " + d["key_provenance"]["born_on_token"]' <"$dir/prod.json") == "adopted yes" ]] &&
    ok || fail "an adopted key that the token generated"
cli upsert prod --file "$dir/items.jsonl" >/dev/null
set +e
cli index create typo --dim 4 --adopt-key "$kid" >/dev/null 2>"$dir/err"; rc=$?
set -e
[[ $rc == 1 ]] && grep -q "KEY_IN_USE.*index prod" "$dir/err" && ok || fail "adopt in use: rc $rc"
cli index list | grep -q "^typo " && fail "the failed create left typo" || ok
set +e
cli index delete typo --confirm "$kid" >/dev/null 2>"$dir/err"; rc=$?
set -e
[[ $rc == 1 ]] && grep -q "NOT_FOUND" "$dir/err" && ok || fail "nothing named typo to delete"
[[ $(cli --json index describe prod | json 'd["count"]') == 40 ]] && ok || fail "prod keeps its items"
cli index delete prod --confirm "$kid" >"$dir/del.txt"
grep -q "deleted prod; its key was not destroyed" "$dir/del.txt" &&
    grep -q "^remains: the adopted key stays on the token; destroy it with .cipherdex-hsm index destroy --id $kid --yes." "$dir/del.txt" &&
    ok || fail "delete prod says the adopted key remains, and how to destroy it"
hsm index check --id "$kid" --kcv "$(hsm --json index kcv --id "$kid" | json 'd["kcv"]')" >/dev/null &&
    ok || fail "an adopted key outlives its index"

cli --json query docs --vector "1,0.25,0.4285714,-0.5" --top-k 3 --include metadata >"$dir/q.json"
[[ $(json 'd["results"][0]["id"]' <"$dir/q.json") == d10 ]] && ok || fail "nearest is d10"
cli query docs --vector "1,0.25,0.43,-0.5" --top-k 5 --filter '{"odd": true}' --include metadata |
    tail -n +2 | grep -vq '"odd":true' && fail "filter leaked" || ok
cli --json get docs d3 nope --include metadata,contents >"$dir/g.json"
[[ $(json '[i["found"] for i in d["items"]]' <"$dir/g.json") == "[True, False]" ]] && ok || fail "get found"
cli delete docs d1 d2 nope | grep -q "deleted 2 of 3 ids" && ok || fail "delete"
[[ $(cli list-ids docs --all | wc -l) == 38 ]] && ok || fail "list-ids --all"
[[ $(cli list-ids docs --limit 10 2>/dev/null | wc -l) == 10 ]] && ok || fail "list-ids page"
# On-demand compaction (admin): the delete left clusters with two segments; they merge, the
# items stay, and a second run has nothing to merge.
cli --json index compact docs >"$dir/c.json"
(($(json 'd["clusters_compacted"]' <"$dir/c.json") >= 1)) && (($(json 'd["version"]' <"$dir/c.json") > 0)) &&
    ok || fail "index compact merges the deleted items' clusters"
[[ $(cli list-ids docs --all | wc -l) == 38 ]] && ok || fail "compaction keeps every live item"
[[ $(cli --json get docs d3 d1 | json '[i["found"] for i in d["items"]]') == "[True, False]" ]] &&
    ok || fail "compaction: d3 still there, d1 still gone"
cli index compact docs | grep -q "^compacted docs: 0 clusters merged" && ok || fail "compact again: nothing"
# Key rotation (admin; docs/ROTATION.md): a new epoch, every record re-encrypted, the same
# answers; --new-key is refused as not implemented; list shows the state.
cli --json query docs --vector "1,0.25,0.4285714,-0.5" --top-k 5 >"$dir/q0.json"
cli --json index rotate docs --wait >"$dir/r.json"
[[ $(json 'd["key_epoch"], d["rotate_to"], d["state"]' <"$dir/r.json") == "(1, 0, 'ready')" ]] &&
    ok || fail "index rotate --wait: epoch 1, ready: $(cat "$dir/r.json")"
[[ $(cli --json index describe docs | json 'd["key_epoch"], d["min_epoch"], d["count"]') == "(1, 1, 38)" ]] &&
    ok || fail "describe after rotate"
cli --json query docs --vector "1,0.25,0.4285714,-0.5" --top-k 5 >"$dir/q1.json"
[[ $(json '[r["id"] for r in d["results"]]' <"$dir/q0.json") == "$(json '[r["id"] for r in d["results"]]' <"$dir/q1.json")" ]] &&
    ok || fail "the same answers after rotation: $(tr -d "\n " <"$dir/q0.json") $(tr -d "\n " <"$dir/q1.json")"
[[ $(cli --json get docs d3 d1 --include contents | json '[i["found"] for i in d["items"]]') == "[True, False]" ]] &&
    ok || fail "rotation: d3 still there, d1 still gone"
[[ $(cli list-ids docs --all | wc -l) == 38 ]] && ok || fail "rotation keeps every live item"
cli index rotate docs | grep -q "^rotating docs: key epoch 1 -> 2 started" && ok || fail "index rotate (background)"
cli index list | grep -Eq "^docs +(rotating|ready) " && ok || fail "index list shows docs rotating or ready"
# The background finishes it: bounded wait for the state (nothing else signals it).
for _ in $(seq 100); do
    [[ $(cli --json index describe docs | json 'd["key_epoch"]') == 2 ]] && break
    sleep 0.1
done
[[ $(cli --json index describe docs | json 'd["key_epoch"], d["state"], d["rotate_to"]') == "(2, 'ready', 0)" ]] &&
    ok || fail "epoch 2 after the background rotation"
cli index describe docs | grep -q "^key epoch:   2 (minimum readable 2)" && ok || fail "describe shows the epoch"
set +e
cli index rotate docs --new-key >/dev/null 2>"$dir/err"; rc=$?
set -e
[[ $rc == 1 ]] && grep -q "UNIMPLEMENTED" "$dir/err" && ok || fail "--new-key is not implemented: rc $rc"

# fvecs input with generated ids, and a query file with recall against exact ground truth.
/usr/bin/python3 - "$dir/base.fvecs" <<'PY'
import random, struct, sys
r = random.Random(3)
with open(sys.argv[1], "wb") as f:
    for i in range(500):
        f.write(struct.pack("<i", 4) + struct.pack("<4f", *[r.uniform(-1, 1) for _ in range(4)]))
PY
cli index create flat --dim 4 >/dev/null
cli upsert flat --file "$dir/base.fvecs" --id-prefix v --batch 64 | grep -q "upserted 500" && ok || fail "fvecs"
out=$(cli query flat --file "$dir/base.fvecs" --limit 50 --ground-truth "$dir/base.fvecs" --id-prefix v)
grep -q "recall@10 against exact ground truth: 1.0000" <<<"$out" && ok || fail "exhaustive recall 1: $out"
grep -q "QPS" <<<"$out" && ok || fail "QPS line"

# Errors: the server's code and message, exit 1; usage errors exit 2.
set +e
cli query flat --vector "1,2" >/dev/null 2>"$dir/err"; rc=$?
set -e
[[ $rc == 1 ]] && grep -q "error 3 INVALID_ARGUMENT" "$dir/err" && ok || fail "wrong dimension: rc $rc"
set +e
cli index delete flat >/dev/null 2>&1; rc=$?
set -e
[[ $rc == 2 ]] && ok || fail "delete without --confirm is a usage error"
fid=$(cli --json index describe flat | json 'd["id"]')
cli --json index delete flat --confirm "$fid" >"$dir/del.json"
[[ $(json 'd["deleted"], d["key_destroyed"], d["key_remains"]' <"$dir/del.json") == "(True, True, '')" ]] &&
    ok || fail "index delete crypto-shreds a generated key, nothing remains"
set +e
cli index describe flat >/dev/null 2>"$dir/err"; rc=$?
set -e
[[ $rc == 1 ]] && grep -q "NOT_FOUND" "$dir/err" && ok || fail "deleted index NOT_FOUND"
# The seed's development-key flow (issue 10): refused by default, a 0644 key file refused by the
# CLI, then on a stack that allows plaintext import: imported, and said so everywhere.
(umask 077 && openssl rand -base64 32 >"$dir/index_key.txt")
set +e
cli index create devkey --dim 4 --key-file "$dir/index_key.txt" >/dev/null 2>"$dir/err"; rc=$?
set -e
[[ $rc == 1 ]] && grep -q "FAILED_PRECONDITION.*allow_plaintext_import" "$dir/err" && ok ||
    fail "plaintext import refused by default: rc $rc"
cli index list | grep -q "^devkey " && fail "the refused import left devkey" || ok
cp "$dir/index_key.txt" "$dir/open_key.txt" && chmod 644 "$dir/open_key.txt"
set +e
cli index create devkey --dim 4 --key-file "$dir/open_key.txt" >/dev/null 2>"$dir/err"; rc=$?
set -e
[[ $rc == 1 ]] && grep -q "chmod 600" "$dir/err" && ok || fail "a 0644 key file: rc $rc"
dev2="$dir/dev2"
mkdir -p "$dev2"
bash "$src/tests/dev/stack.sh" up "$build" "$dev2" --store memory --allow-plaintext-import >/dev/null
(
    # shellcheck disable=SC1091
    source "$dev2/cipherdex.env"
    "$CIPHERDEX_CLI" health | grep -q "plaintext key import is allowed" || exit 11
    "$CIPHERDEX_CLI" --json index create devkey --dim 4 --key-file "$dir/index_key.txt" \
        >"$dir/devkey.json" || exit 12
    [[ $(json 'd["key_provenance"]["origin"] + " " + d["key_provenance"]["born_on_token"]' \
        <"$dir/devkey.json") == "imported no" ]] || exit 13
    # The same key for a second index: one key belongs to one index.
    "$CIPHERDEX_CLI" index create devkey2 --dim 4 --key-file "$dir/index_key.txt" \
        >/dev/null 2>"$dir/err" && exit 14
    grep -q "KEY_IN_USE.*index devkey" "$dir/err" || exit 15
    grep -q "plaintext_import_allowed" "$dev2/cipherdexd.log" || exit 16
    exit 0
) && ok || fail "the development-key flow on a stack that allows it (step $?)"
bash "$src/tests/dev/stack.sh" down "$dev2" >/dev/null
cli --help | grep -q "list-ids INDEX" && ok || fail "--help"
qh=$(cli query --help)
grep -q "query INDEX" <<<"$qh" && ! grep -q "upsert INDEX" <<<"$qh" && ok || fail "query --help shows only query"
echo "test_cli: $pass checks passed"
