#!/usr/bin/env bash
# ctest test_cli: the whole lifecycle through the `cipherdex` CLI against a dev stack (Redis
# store): health, index create/list/describe/train/delete, upsert from JSON Lines and fvecs
# (byte-bounded batches, failed batches, --resume, --start-line), query (table and --json,
# filter, --include, batch results as JSON Lines), get (--include, JSON shapes, cut cells),
# delete, list-ids, error exits. $1 = build, $2 = source.
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
# ... and how to finish: the progress file next to the input records the rows committed in order
# (lines 2-11), --resume skips exactly them once the bad line is fixed.
grep -q "To finish, from line 12: cipherdex upsert cos --file $dir/holes.jsonl --resume ($dir/holes.jsonl.progress records line 11 as the last committed in order), or --start-line 12. Re-running the whole upload is safe too" "$dir/err" &&
    ok || fail "the failure says how to finish: $(cat "$dir/err")"
grep -q "^rows 10$" "$dir/holes.jsonl.progress" && grep -q "^through line 11$" "$dir/holes.jsonl.progress" &&
    ok || fail "progress file: $(cat "$dir/holes.jsonl.progress")"
cp "$dir/holes.jsonl" "$dir/holes.orig.jsonl"
sed -i '15s/\[0.0, 0.0, 0.0, 0.0\]/[1.0, 14.0, 0.5, -0.5]/' "$dir/holes.jsonl"   # fix line 15
# An edited prefix is refused: the record's SHA-256 no longer matches lines 2-11.
sed '3s/"h1"/"h1x"/' "$dir/holes.jsonl" >"$dir/edited.jsonl"
cp "$dir/holes.jsonl.progress" "$dir/edited.jsonl.progress"
set +e
cli upsert cos --file "$dir/edited.jsonl" --resume >/dev/null 2>"$dir/err"; rc=$?
set -e
[[ $rc == 1 ]] && grep -q "the first 10 rows of $dir/edited.jsonl (through line 11) are not the ones .* recorded as committed: nothing was sent" "$dir/err" &&
    ok || fail "resume refuses an edited prefix: rc $rc $(cat "$dir/err")"
cli --json upsert cos --file "$dir/holes.jsonl" --resume --batch 5 >"$dir/resume.json" 2>"$dir/err"
[[ $(json 'd["upserted"], d["skipped"], d["batches"]' <"$dir/resume.json") == "(20, 10, 4)" ]] &&
    grep -q "skipping 10 rows (through line 11), committed by an earlier run" "$dir/err" &&
    ok || fail "--resume sends the 20 rows after line 11: $(cat "$dir/resume.json" "$dir/err")"
[[ $(cli --json index describe cos | json 'd["count"]') == 30 ]] && ok || fail "--resume completes: 30 rows"
[[ ! -e "$dir/holes.jsonl.progress" ]] && ok || fail "a complete upload removes its progress file"
# --start-line takes the line numbers the messages use.
set +e
cli upsert cos --file "$dir/holes.orig.jsonl" --start-line 17 >/dev/null 2>"$dir/err"; rc=$?
set -e
[[ $rc == 0 ]] && grep -q "skipping 15 rows (through line 16), as --start-line says" "$dir/err" &&
    ok || fail "--start-line 17 skips lines up to 16: rc $rc $(cat "$dir/err")"
set +e
cli upsert cos --file "$dir/baddim.jsonl" >/dev/null 2>"$dir/err"; rc=$?
set -e
[[ $rc == 1 ]] && grep -q "line 7: the vector has 3 numbers, index cos has dimension 4; nothing was sent" "$dir/err" &&
    ok || fail "a wrong dimension is found before sending: $(cat "$dir/err")"
[[ $(cli --json index describe cos | json 'd["count"]') == 30 ]] && ok || fail "nothing of baddim sent"

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
# rotate --new-key on an adopted key: the index moves to a key of its own (generation 1); the
# adopted key stays on the token, and the answer says so and how to destroy it.
kid2=$(hsm --json index generate | json 'd["id"]')
cli index create prod2 --dim 4 --adopt-key "$kid2" >/dev/null
cli upsert prod2 --file "$dir/items.jsonl" >/dev/null
cli index rotate prod2 --new-key --wait >"$dir/rot2.txt"
grep -q "^old key, once the rotation completes: the adopted key stays on the token; destroy it with .cipherdex-hsm index destroy --id $kid2 --yes.$" "$dir/rot2.txt" &&
    ok || fail "rotate --new-key says the adopted key remains: $(cat "$dir/rot2.txt")"
[[ $(cli --json index describe prod2 | json '(d["count"], d["key_generation"], d["key_owned"], d["key_provenance"]["origin"])') == "(40, 1, True, 'generated')" ]] &&
    ok || fail "after rotate --new-key: the same items, generation 1, a key of its own"
cli index delete prod2 --confirm "$kid2" >/dev/null
set +e
hsm index kcv --id "$kid2" --gen 1 >/dev/null 2>&1; rc=$?
set -e
[[ $rc == 1 ]] && hsm index kcv --id "$kid2" >/dev/null && hsm index destroy --id "$kid2" --yes >/dev/null &&
    ok || fail "delete destroys generation 1, the adopted generation 0 stays until cipherdex-hsm destroys it"

cli --json query docs --vector "1,0.25,0.4285714,-0.5" --top-k 3 --include metadata >"$dir/q.json"
[[ $(json 'd["results"][0]["id"]' <"$dir/q.json") == d10 ]] && ok || fail "nearest is d10"
# 6 clusters (sqrt(40)): the automatic count (at least 8) probes all of them, and says so.
[[ $(json 'd["n_probes"]' <"$dir/q.json") == $(cli --json index describe docs | json 'd["n_clusters"]') ]] &&
    ok || fail "--json n_probes: every cluster of a 6-cluster index"
# Widening over the wire (QueryRequest.max_probes, 20): d39 is not in the cluster nearest to
# d0, so one probe finds no match for {"n": 39} unless the query may widen, and then it does.
cli --json query docs --vector "1,0,0,-0.5" --probes 1 --max-probes 1 --filter '{"n": 39}' >"$dir/q1.json" 2>/dev/null
[[ $(json '(len(d["results"]), d["n_probes"])' <"$dir/q1.json") == "(0, 1)" ]] &&
    ok || fail "--max-probes 1: no widening, 1 cluster probed: $(cat "$dir/q1.json")"
cli --json query docs --vector "1,0,0,-0.5" --probes 1 --filter '{"n": 39}' >"$dir/q2.json"
[[ $(json '(d["results"][0]["id"], d["n_probes"] > 1)' <"$dir/q2.json") == "('d39', True)" ]] &&
    ok || fail "widened: d39 found beyond the first cluster: $(cat "$dir/q2.json")"
cli query docs --vector "1,0.25,0.43,-0.5" --top-k 5 --filter '{"odd": true}' --include metadata |
    tail -n +2 | grep -vq '"odd":true' && fail "filter leaked" || ok
cli --json get docs d3 nope --include metadata,contents >"$dir/g.json"
[[ $(json '[i["found"] for i in d["items"]]' <"$dir/g.json") == "[True, False]" ]] && ok || fail "get found"

# Walkthrough problem 5: get and query show what was stored. JSON: metadata an object, the
# vector numbers, contents a string (text) or contents_base64 (bytes that are not UTF-8 or hold
# NUL); an item that is not found has no fields. Binary contents go in as contents_base64 too.
/usr/bin/python3 - "$dir/more.jsonl" <<'PY2'
import base64, json, sys
with open(sys.argv[1], "w") as f:
    f.write(json.dumps({"id": "bin1", "vector": [1.0, 0.9, 0.1, 0.5],
                        "contents_base64": base64.b64encode(b"\x00\x01\xffbin").decode()}) + "\n")
    f.write(json.dumps({"id": "long1", "vector": [1.0, 0.8, 0.2, 0.5], "metadata": {"k": "v"},
                        "contents": "first line\n" + "L" * 200 + " \u00e9t\u00e9"}) + "\n")
PY2
cli upsert docs --file "$dir/more.jsonl" >/dev/null
cli --json get docs d3 bin1 long1 nope --include contents,vectors,metadata >"$dir/g.json"
/usr/bin/python3 - "$dir/g.json" <<'PY2' && ok || fail "get --json shapes: $(cat "$dir/g.json")"
import base64, json, sys
d = json.load(open(sys.argv[1]))
d3, b, l, nope = d["items"]
assert d3["metadata"] == {"n": 3, "odd": True}, d3
assert d3["contents"] == "text 3" and "contents_base64" not in d3
assert [round(v, 6) for v in d3["vector"]] == [1.0, 0.075, round(3 / 7, 6), 0.5], d3["vector"]
assert all(isinstance(v, float) for v in d3["vector"])
assert "contents" not in b and base64.b64decode(b["contents_base64"]) == b"\x00\x01\xffbin", b
assert b["metadata"] is None
assert l["contents"] == "first line\n" + "L" * 200 + " \u00e9t\u00e9" and l["metadata"] == {"k": "v"}
assert nope == {"id": "nope", "found": False}, nope
PY2
# Tables: get shows metadata by default; long values are cut (with a note on stderr saying how
# to see them whole), binary contents are named, --full prints everything on one line each.
cli get docs d3 >"$dir/t.txt"
head -1 "$dir/t.txt" | grep -q "^ID  *FOUND  *METADATA$" && grep -q '^d3  *found  *{"n":3,"odd":true}$' "$dir/t.txt" &&
    ok || fail "get table default: $(cat "$dir/t.txt")"
[[ $(cli get docs d3 --include none | head -1) =~ ^ID\ +FOUND$ ]] && ok || fail "--include none"
cli get docs bin1 long1 --include contents >"$dir/t.txt" 2>"$dir/err"
grep -q "^bin1  *found  *(binary, 6 bytes)$" "$dir/t.txt" &&
    grep -q '^long1  *found  *first line\\nLLLL*\.\.\.$' "$dir/t.txt" &&
    [[ $(grep "^long1" "$dir/t.txt" | sed 's/^long1  *found  *//' | wc -m) == 61 ]] &&
    grep -q "cut, ending in \"...\": --full prints them whole" "$dir/err" &&
    ok || fail "cut cells: $(cat "$dir/t.txt" "$dir/err")"
cli get docs long1 --include contents --full >"$dir/t.txt" 2>"$dir/err"
grep -q 'first line\\nL\{200\} été$' "$dir/t.txt" && [[ ! -s "$dir/err" ]] && ok || fail "--full: $(cat "$dir/t.txt")"
set +e
cli get docs d3 --include metadata,colour >/dev/null 2>"$dir/err"; rc=$?
set -e
[[ $rc == 2 ]] && grep -q "unknown field .colour." "$dir/err" && ok || fail "--include typo: rc $rc"
cli --json query docs --vector "1,0.9,0.1,0.5" --top-k 2 --include metadata,contents,vectors >"$dir/q.json"
/usr/bin/python3 - "$dir/q.json" <<'PY2' && ok || fail "query --json shapes: $(cat "$dir/q.json")"
import json, sys
r = json.load(open(sys.argv[1]))["results"]
assert r[0]["id"] == "bin1" and isinstance(r[0]["distance"], float) and r[0]["metadata"] is None
assert "contents_base64" in r[0] and len(r[0]["vector"]) == 4
assert isinstance(r[1]["metadata"], dict) and isinstance(r[1]["contents"], str), r[1]
PY2
cli query docs --vector "1,0.9,0.1,0.5" --top-k 2 --include contents,vectors >"$dir/t.txt" 2>/dev/null
head -1 "$dir/t.txt" | grep -q "^RANK  ID  *DISTANCE  *CONTENTS  *VECTOR$" &&
    grep -q "^1  *bin1  .*(binary, 6 bytes)  *\[1, 0.9, 0.1, 0.5\]$" "$dir/t.txt" &&
    ok || fail "query table with contents and vectors: $(cat "$dir/t.txt")"
cli delete docs bin1 long1 >/dev/null
cli delete docs d1 d2 nope | grep -q "deleted 2 of 3 ids" && ok || fail "delete"
[[ $(cli list-ids docs --all | wc -l) == 38 ]] && ok || fail "list-ids --all"
[[ $(cli list-ids docs --limit 10 2>/dev/null | wc -l) == 10 ]] && ok || fail "list-ids page"
# describe shows what the deletes left behind: 4 dead rows (bin1, long1, d1, d2), nothing
# compacted yet.
cli --json index describe docs >"$dir/d.json"
[[ $(json '(d["dead_rows"], d["last_compaction_ms"], d["segment_bytes"] > 0)' <"$dir/d.json") == "(4, 0, True)" ]] &&
    ok || fail "describe: dead rows before compaction"
# On-demand compaction (admin): the delete left clusters with two segments; they merge, the
# items stay, and a second run has nothing to merge.
cli --json index compact docs >"$dir/c.json"
(($(json 'd["clusters_compacted"]' <"$dir/c.json") >= 1)) && (($(json 'd["version"]' <"$dir/c.json") > 0)) &&
    ok || fail "index compact merges the deleted items' clusters"
# What the sweep keeps for the grace is counted in records and in bytes (at least a segment each).
[[ $(json 'd["retired_bytes"] >= 60 * d["records_waiting"] and (d["records_waiting"] > 0) == (d["retired_bytes"] > 0)' <"$dir/c.json") == True ]] &&
    ok || fail "index compact: retired bytes with the waiting records: $(cat "$dir/c.json")"
[[ $(cli list-ids docs --all | wc -l) == 38 ]] && ok || fail "compaction keeps every live item"
[[ $(cli --json get docs d3 d1 | json '[i["found"] for i in d["items"]]') == "[True, False]" ]] &&
    ok || fail "compaction: d3 still there, d1 still gone"
cli index compact docs | grep -q "^compacted docs: 0 clusters merged" && ok || fail "compact again: nothing"
cli --json index describe docs >"$dir/d.json"
[[ $(json '(d["dead_rows"], d["last_compaction_ms"] > 0, d["last_sweep_ms"] > 0)' <"$dir/d.json") == "(0, True, True)" ]] &&
    ok || fail "describe: no dead rows after compaction, and when it ran"
cli index describe docs | grep -q "^last compaction: 20" && ok || fail "describe prints the last compaction"
# An index this appliance never swept says so instead of claiming 0 waiting (nothing was
# written to it, so maintenance leaves it alone); after a sweep, the measured figures.
cli index create fresh --dim 4 >/dev/null
cli index describe fresh | grep -q "^waiting for sweep: not measured yet (no sweep of this index on this appliance since it started" &&
    ok || fail "describe before any sweep: not measured"
cli index compact fresh >/dev/null
cli index describe fresh | grep -q "^waiting for sweep: 0 records, 0 bytes (retired" &&
    ok || fail "describe after a sweep: records and bytes"
cli index delete fresh --confirm "$(cli --json index describe fresh | json 'd["id"]')" >/dev/null
# Key rotation (admin; docs/ROTATION.md): a new epoch, every record re-encrypted, the same
# answers; list shows the state; --new-key moves the index to a new token key (new KCV).
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
kcv0=$(cli --json index describe docs | json 'd["kcv"]')
[[ $(cli --json index describe docs | json 'd["key_generation"], d["new_key_generation"]') == "(0, 0)" ]] &&
    ok || fail "describe: key generation 0 before --new-key"
cli --json index rotate docs --wait --new-key >"$dir/r.json"
[[ $(json 'd["key_epoch"], d["rotate_to"], d["state"]' <"$dir/r.json") == "(3, 0, 'ready')" ]] &&
    ok || fail "index rotate --wait --new-key: epoch 3, ready: $(cat "$dir/r.json")"
cli --json index describe docs >"$dir/d.json"
kcv1=$(json 'd["kcv"]' <"$dir/d.json")
[[ $(json 'd["key_epoch"], d["key_generation"], d["new_key_generation"], d["key_owned"], d["count"]' <"$dir/d.json") == "(3, 1, 0, True, 38)" ]] &&
    ok || fail "describe after --new-key: epoch 3, generation 1: $(tr -d "\n " <"$dir/d.json")"
[[ -n $kcv1 && $kcv1 != "$kcv0" ]] && ok || fail "--new-key: the KCV changed ($kcv0 -> $kcv1)"
cli index describe docs | grep -q "^key:         generation 1" && ok || fail "describe prints the key generation"
cli index describe docs | grep -q "$kcv1" && ok || fail "describe prints the new KCV"
cli --json query docs --vector "1,0.25,0.4285714,-0.5" --top-k 5 >"$dir/q2.json"
[[ $(json '[r["id"] for r in d["results"]]' <"$dir/q0.json") == "$(json '[r["id"] for r in d["results"]]' <"$dir/q2.json")" ]] &&
    ok || fail "the same answers after --new-key: $(tr -d "\n " <"$dir/q2.json")"
[[ $(cli --json get docs d3 d1 --include contents | json '[i["found"] for i in d["items"]]') == "[True, False]" ]] &&
    ok || fail "--new-key: d3 still there, d1 still gone"

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
# A batch query writes its results, one JSON line per query in file order (also with several
# clients); QPS and recall go to a summary on stderr.
cli query flat --file "$dir/base.fvecs" --limit 50 --ground-truth "$dir/base.fvecs" --id-prefix v \
    --clients 3 >"$dir/r.jsonl" 2>"$dir/sum.txt"
grep -q "recall@10 against exact ground truth: 1.0000" "$dir/sum.txt" && ok || fail "exhaustive recall 1: $(cat "$dir/sum.txt")"
grep -q "QPS" "$dir/sum.txt" && grep -q "results: 50 lines (JSON, one per query) in stdout" "$dir/sum.txt" &&
    ok || fail "summary: $(cat "$dir/sum.txt")"
[[ $(wc -l <"$dir/r.jsonl") == 50 ]] && ok || fail "50 result lines"
/usr/bin/python3 - "$dir/r.jsonl" <<'PY2' && ok || fail "result lines: $(head -2 "$dir/r.jsonl")"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert [l["query"] for l in lines] == list(range(50))
for i, l in enumerate(lines):
    assert set(l) == {"query", "ids", "distances"}, l
    assert len(l["ids"]) == 10 and len(l["distances"]) == 10 and l["ids"][0] == f"v{i}", l
    assert l["distances"][0] == 0 and l["distances"] == sorted(l["distances"])
PY2
cli --json query flat --file "$dir/base.fvecs" --limit 7 --top-k 3 --include vectors --out "$dir/r2.jsonl" \
    >"$dir/stdout.txt" 2>"$dir/sum.json"
[[ ! -s "$dir/stdout.txt" && $(wc -l <"$dir/r2.jsonl") == 7 ]] && ok || fail "--out: the results go to the file only"
[[ $(json '(d["queries"], d["results_written"], d["qps"] > 0)' <"$dir/sum.json") == "(7, 7, True)" ]] &&
    ok || fail "--json summary on stderr: $(cat "$dir/sum.json")"
[[ $(tail -1 "$dir/r2.jsonl" | json '(d["query"], len(d["results"]), len(d["results"][0]["vector"]))') == "(6, 3, 4)" ]] &&
    ok || fail "--include in result lines: $(tail -1 "$dir/r2.jsonl")"
[[ -z $(cli query flat --file "$dir/base.fvecs" --limit 5 --no-results 2>/dev/null) ]] && ok || fail "--no-results"
# Byte-bounded batches: 40 items of about 351 bytes each (id 3, vector 16, contents 300, 32 of
# overhead) under --batch-bytes 2048 go 5 to a batch; an item over the bound goes alone.
/usr/bin/python3 - "$dir/big.jsonl" <<'PY2'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(40):
        f.write(json.dumps({"id": f"c{i:02d}", "vector": [1.0, i, 0.5, -0.5], "contents": "x" * 300}) + "\n")
PY2
[[ $(cli --json upsert flat --file "$dir/big.jsonl" --batch-bytes 2048 | json 'd["upserted"], d["batches"]') == "(40, 8)" ]] &&
    ok || fail "--batch-bytes 2048: 8 batches of 5"
[[ $(cli --json upsert flat --file "$dir/big.jsonl" --batch-bytes 2048 --batch 3 | json 'd["batches"]') == 14 ]] &&
    ok || fail "--batch 3 bounds the items too: 14 batches"
[[ $(cli --json upsert flat --file "$dir/big.jsonl" | json 'd["batches"]') == 1 ]] && ok || fail "default: one batch"
set +e
cli upsert flat --file "$dir/big.jsonl" --batch-bytes 100 >/dev/null 2>&1; rc=$?
set -e
[[ $rc == 2 ]] && ok || fail "--batch-bytes below 1024 is a usage error"
[[ $(cli --json upsert flat --file "$dir/base.fvecs" --id-prefix v --start-line 401 2>/dev/null | json 'd["upserted"], d["skipped"]') == "(100, 400)" ]] &&
    ok || fail "--start-line on a vector file counts rows"
mapfile -t cids < <(printf 'c%02d\n' {0..39})
cli delete flat "${cids[@]}" >/dev/null
# Trained: the summary says how many clusters the automatic count probed (16 lists: 8).
cli index train flat --lists 16 >/dev/null
out=$(cli query flat --file "$dir/base.fvecs" --limit 20 --no-results 2>&1)
grep -q "^clusters probed per query: 8 (the server's automatic count)" <<<"$out" && ok || fail "probes line: $out"

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
    # Its delete destroys the token copy and says the key file is the copy left to destroy.
    "$CIPHERDEX_CLI" index delete devkey --confirm "$(json 'd["id"]' <"$dir/devkey.json")" \
        >"$dir/devdel.txt" || exit 17
    grep -q "^remains: the token copy is destroyed; the key was imported in plaintext: destroy every copy of the key file it came from$" \
        "$dir/devdel.txt" || exit 18
    exit 0
) && ok || fail "the development-key flow on a stack that allows it (step $?)"
# A server with a 2 MiB frame cap says so in health (field 8), and upsert sizes its batches under
# it: 5 items of 1 MiB contents go one per batch, where the 16 MiB default would not fit.
sed -i 's/^\[server\]$/[server]\nmax_frame_bytes = 2M/' "$dev2/cipherdexd.conf"
(
    # shellcheck disable=SC1091
    source "$dev2/cipherdex.env"
    bash "$src/tests/dev/stack.sh" restart "$build" "$dev2" >/dev/null || exit 21
    # shellcheck disable=SC1091
    source "$dev2/cipherdex.env"
    [[ $("$CIPHERDEX_CLI" --json health | json 'd["max_frame_bytes"]') == 2097152 ]] || exit 22
    /usr/bin/python3 -c '
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(5):
        f.write(json.dumps({"id": f"m{i}", "vector": [1, i, 0, 0], "contents": "y" * (1 << 20)}) + "\n")
' "$dir/mib.jsonl"
    "$CIPHERDEX_CLI" index create fr --dim 4 >/dev/null || exit 23
    [[ $("$CIPHERDEX_CLI" --json upsert fr --file "$dir/mib.jsonl" | json 'd["upserted"], d["batches"]') == "(5, 5)" ]] || exit 24
    "$CIPHERDEX_CLI" upsert fr --file "$dir/mib.jsonl" --batch-bytes 8000000 2>&1 >/dev/null |
        grep -q "lowered to 2031616: the server accepts frames of at most 2097152 bytes" || exit 25
    # An item that cannot fit any request is named before anything is sent.
    /usr/bin/python3 -c '
import json, sys
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"id": "huge", "vector": [1, 9, 0, 0], "contents": "z" * (3 << 20)}) + "\n")
' "$dir/mib.jsonl"
    "$CIPHERDEX_CLI" upsert fr --file "$dir/mib.jsonl" >/dev/null 2>"$dir/err" && exit 26
    grep -q "line 6: this item is about 3145[0-9]* bytes, more than the server's frame cap of 2097152 bytes (\[server\] max_frame_bytes) allows in one request; nothing was sent" "$dir/err" || exit 27
    exit 0
) && ok || fail "batches under the server's frame cap (step $?)"
bash "$src/tests/dev/stack.sh" down "$dev2" >/dev/null
cli --help | grep -q "list-ids INDEX" && ok || fail "--help"
qh=$(cli query --help)
grep -q "query INDEX" <<<"$qh" && ! grep -q "upsert INDEX" <<<"$qh" && ok || fail "query --help shows only query"
echo "test_cli: $pass checks passed"
