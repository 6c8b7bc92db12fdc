#!/usr/bin/env bash
# ./run demo: the appliance end to end on Fashion-MNIST, through the daemon and the CLI.
# A dev stack (tests/dev/stack.sh: token, CA, redis-server, cipherdexd) in a temp dir; an
# index whose key is generated on the token; 60,000 training images uploaded over mutual
# TLS; training; the 10,000 test images queried one at a time with recall@10 against exact
# ground truth, QPS and p50/p99; what Redis holds; what the token holds; teardown.
# $1 = build dir.
set -euo pipefail
build=$(cd "${1:?build dir}" && pwd)
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
data=/usr/share/datasets/fashion-mnist
[[ -f "$data/train-images-idx3-ubyte.gz" ]] || { echo "demo: $data missing (dataset-fashion-mnist)" >&2; exit 1; }
dir=$(mktemp -d "${TMPDIR:-/tmp}/cipherdex-demo.XXXXXX")
cleanup() {
    bash "$root/tests/dev/stack.sh" down "$dir" >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
t_start=$SECONDS

step "Dev stack in $dir: SoftHSM2 token, throwaway CA, redis-server (AOF), cipherdexd (mutual TLS)"
bash "$root/tests/dev/stack.sh" up "$build" "$dir"
# shellcheck disable=SC1091
source "$dir/cipherdex.env"
cli() { "$CIPHERDEX_CLI" "$@"; }
cli health

step "Create an index; its 256-bit key is generated on the token and never leaves it"
cli index create fashion --dim 784 --metric euclidean --type ivfsq8 --lists 1024

step "Upload the 60,000 training images (batches of 1,000; each label as JSON metadata)"
cli upsert fashion --file "$data/train-images-idx3-ubyte.gz" \
    --labels "$data/train-labels-idx1-ubyte.gz" --id-prefix img-

step "Train: k-means (1,024 lists, 10 iterations) on the token-keyed, encrypted data"
# (k-means on 60,000 x 784 takes 10-50 s, longer on a busy machine: past the CLI's 30 s default)
cli --timeout-ms 600000 index train fashion --lists 1024 --iters 10
cli index describe fashion

step "Query the 10,000 test images one at a time (top 10, the automatic probe count) against exact ground truth"
# No --probes: the server's automatic count, max(sqrt(lists), lists/32, 8) = 32 of 1,024 here
# (docs/FILTERS.md, "Probes"); the recall printed is the default's. The results (one JSON line
# per query) go to a file; the summary (QPS, recall) to the terminal.
cli query fashion --file "$data/t10k-images-idx3-ubyte.gz" --top-k 10 \
    --ground-truth "$data/train-images-idx3-ubyte.gz" --id-prefix img- --out "$dir/results.jsonl"
echo "first result line: $(head -c 160 "$dir/results.jsonl")..."

step "One query with metadata, filtered to label 9 (ankle boots)"
cli get fashion img-0 --include metadata
# Test image N as "x,y,...".
image() {
    /usr/bin/python3 - "$data/t10k-images-idx3-ubyte.gz" "$1" <<'PY'
import gzip, sys
with gzip.open(sys.argv[1]) as f:
    f.read(16 + 784 * int(sys.argv[2]))
    print(",".join(str(b) for b in f.read(784)))
PY
}
q=$(image 0)
cli query fashion --vector "$q" --top-k 5 --filter '{"label": 9}' --include metadata

step "A filtered query far from its matches: a pullover (test image 1) filtered to ankle boots"
# Fewer than top_k matches in the probed clusters: the query probes the next-nearest clusters
# too (doubling), up to --max-probes or [engine] max_probes (default: all); the answer says how
# many it probed. --max-probes 32 (= the automatic count) turns widening off.
q=$(image 1)
cli query fashion --vector "$q" --top-k 5 --filter '{"label": 9}' --include metadata
probed() { /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["n_probes"])'; }
echo "clusters probed: $(cli --json query fashion --vector "$q" --top-k 5 --filter '{"label": 9}' | probed) of 1024"
echo "without widening (--max-probes 32):"
cli query fashion --vector "$q" --top-k 5 --filter '{"label": 9}' --max-probes 32

step "What Redis holds: ciphertext and tokens only"
rhost=${CIPHERDEX_REDIS%:*}
rport=${CIPHERDEX_REDIS##*:}
echo "keys: $(redis-cli -h "$rhost" -p "$rport" dbsize)"
# (`|| true`: head closing the pipe early is not a failure)
key=$({ redis-cli -h "$rhost" -p "$rport" --scan --pattern 'cdx:*:s:*' || true; } | head -n 1)
echo "a segment key: $key"
echo "its first 96 bytes (44-byte clear header: format, kind, epoch, version, time, KCV, nonce; then AES-256-GCM ciphertext):"
{ redis-cli -h "$rhost" -p "$rport" --no-raw getrange "$key" 0 95 || true; } | head -c 400
echo
found=$({ redis-cli -h "$rhost" -p "$rport" --scan || true; } | head -n 300 |
    while read -r k; do redis-cli -h "$rhost" -p "$rport" --raw get "$k"; done | grep -ac '"label"' || true)
echo "of 300 values scanned, $found contain the metadata text \"label\" in clear"

step "What the token holds: the index key is sensitive, never extractable"
CDX_DEMO_PIN="$(cat "$CIPHERDEX_PIN_FILE")" pkcs11-tool --module "$CIPHERDEX_HSM_MODULE" \
    --token-label "$CIPHERDEX_TOKEN_LABEL" --login --pin env:CDX_DEMO_PIN --list-objects \
    --type secrkey 2>/dev/null | { grep -E "Secret Key|label|Usage|Access" || true; } | head -n 12

step "The audit trail: every request and key use, chained and MACed under a token-derived key"
cli audit tail -n 4 | cut -c1-220
dep=$(sed -n 's/^deployment_id = //p' "$dir/cipherdexd.conf")
"$build/appliance/cipherdex-hsm" --config "$dir/cipherdexd.conf" audit verify "$dir/state/audit" \
    --deployment-id "$dep" --max-age 120

step "Operators' endpoint: /healthz"
/usr/bin/python3 -c "import urllib.request,sys; print(urllib.request.urlopen('http://$CIPHERDEX_METRICS/healthz').read().decode())"

step "Done in $((SECONDS - t_start)) s; tearing down"
