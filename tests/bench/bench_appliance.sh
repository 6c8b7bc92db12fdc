#!/usr/bin/env bash
# Through the appliance (docs/BENCH.md, "Through the appliance"): a dev stack (TLS, Redis store), Fashion-
# MNIST uploaded and trained (IVFSQ8, 1,024 lists), the cache warmed by a first pass, then the
# test images queried by 4 concurrent clients, one query per request; compared with the
# in-process engine's one-at-a-time QPS on Redis, warm, measured in the same run by bench_ivf.
# $1 = build dir. CDX_BENCH_SHORT=1: 10,000 base vectors, 256 lists, 1,000 queries.
set -euo pipefail
build=$(cd "${1:?build dir}" && pwd)
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
data=/usr/share/datasets/fashion-mnist
short=${CDX_BENCH_SHORT:-0}
lists=1024 nq=5000 nb=60000
if [[ "$short" == "1" ]]; then lists=256 nq=1000 nb=10000; fi
base=${CDX_TEST_TMP:-/tmp}
mkdir -p "$base"
dir=$(mktemp -d "$base/bench-appliance.XXXXXX")
trap 'bash "$root/tests/dev/stack.sh" down "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT

echo "bench_appliance: in-process engine (bench_ivf cipherdex:sq8-redis-warm, nlist $lists, nprobe 16)" >&2
"$build/tests/bench/bench_ivf" --nlist "$lists" --nprobe 16 --queries "$nq" --big-queries 0 \
    --nb "$nb" --systems cipherdex:sq8-redis-warm --out "$dir/inproc.md" >/dev/null 2>"$dir/inproc.err"
inproc=$(awk -F'|' '/^\| cipherdex:sq8-redis-warm \| '"$lists"' \| 16 \|/ {gsub(/[ ,]/,"",$7); print $7}' "$dir/inproc.md")
inproc_p50=$(awk -F'|' '/^\| cipherdex:sq8-redis-warm \| '"$lists"' \| 16 \|/ {gsub(/ /,"",$8); print $8}' "$dir/inproc.md")
inproc_p99=$(awk -F'|' '/^\| cipherdex:sq8-redis-warm \| '"$lists"' \| 16 \|/ {gsub(/ /,"",$9); print $9}' "$dir/inproc.md")

echo "bench_appliance: dev stack, upload, train" >&2
bash "$root/tests/dev/stack.sh" up "$build" "$dir" >/dev/null
# shellcheck disable=SC1091
source "$dir/cipherdex.env"
cli() { "$CIPHERDEX_CLI" "$@"; }
cli index create fmnist --dim 784 --type ivfsq8 --lists "$lists" >/dev/null
cli upsert fmnist --file "$data/train-images-idx3-ubyte.gz" --id-prefix img- --limit "$nb" >/dev/null
cli index train fmnist --lists "$lists" --iters 10 >/dev/null
q=(query fmnist --file "$data/t10k-images-idx3-ubyte.gz" --limit "$nq" --probes 16 --top-k 10)
# --no-results: measure only; the summary is the one JSON line on stderr.
cli "${q[@]}" --clients 4 --no-results 2>/dev/null # warm the block cache
one=$(cli --json "${q[@]}" --clients 1 --no-results 2>&1 >/dev/null)
four=$(cli --json "${q[@]}" --clients 4 --no-results 2>&1 >/dev/null)
field() { /usr/bin/python3 -c "import json,sys; print(round(json.loads(sys.argv[1])[sys.argv[2]], 3))" "$1" "$2"; }
q1=$(field "$one" qps) q4=$(field "$four" qps)
ratio=$(/usr/bin/python3 -c "print(round($q4 / $inproc, 2) if $inproc else 0)")
echo
echo "### Through the appliance (TLS 1.3, mutual auth, Redis store, warm cache; IVFSQ8 nlist $lists nprobe 16, $nq queries, one query per request)"
echo
echo "| system | clients | QPS | p50 ms | p99 ms | x in-process one-at-a-time |"
echo "|---|---:|---:|---:|---:|---:|"
echo "| in-process engine, Redis warm (bench_ivf) | 1 | $inproc | $inproc_p50 | $inproc_p99 | 1.00 |"
echo "| cipherdexd over mutual TLS | 1 | $q1 | $(field "$one" p50_ms) | $(field "$one" p99_ms) | $(/usr/bin/python3 -c "print(round($q1 / $inproc, 2) if $inproc else 0)") |"
echo "| cipherdexd over mutual TLS | 4 | $q4 | $(field "$four" p50_ms) | $(field "$four" p99_ms) | $ratio |"
echo
echo "Target: 4 clients through the appliance >= 0.5x the in-process one-at-a-time QPS: $( /usr/bin/python3 -c "print('met' if $q4 >= 0.5 * $inproc else 'MISSED')")."

# The audit trail's cost (docs/AUDIT.md). "On" is the default: a record per request and per
# token call, written before the answer, fdatasync every second; "off" is [audit] enabled = no.
# This machine is shared and noisy, so the two alternate over 3 rounds (off/on, on/off,
# off/on), each measurement after a restart and a warming pass, 5,000 queries by 4 clients;
# the medians are compared.
echo "bench_appliance: audit trail on/off, 3 alternating rounds" >&2
records_on=$(wc -l <"$dir/state/audit/audit.log")
conf="$dir/cipherdexd.conf"
qa=(query fmnist --file "$data/t10k-images-idx3-ubyte.gz" --limit 5000 --probes 16 --top-k 10)
measure() { # $1 = on|off: prints the QPS of one measurement
    sed -i '/^\[audit\]$/,$d' "$conf"
    [[ "$1" == off ]] && printf '[audit]\nenabled = no\n' >>"$conf"
    bash "$root/tests/dev/stack.sh" restart "$build" "$dir" >/dev/null
    # shellcheck disable=SC1091
    source "$dir/cipherdex.env"
    cli "${qa[@]}" --clients 4 --no-results 2>/dev/null # warm the block cache again
    field "$(cli --json "${qa[@]}" --clients 4 --no-results 2>&1 >/dev/null)" qps
}
on=() off=()
for order in "off on" "on off" "off on"; do
    for m in $order; do
        if [[ "$m" == on ]]; then on+=("$(measure on)"); else off+=("$(measure off)"); fi
    done
done
sed -i '/^\[audit\]$/,$d' "$conf"
median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
mon=$(median "${on[@]}") moff=$(median "${off[@]}")
echo
echo "### The audit trail's cost (4 clients, 5,000 queries, 3 alternating rounds, same run)"
echo
echo "| audit trail | QPS per round | median QPS | x trail off |"
echo "|---|---|---:|---:|"
echo "| on (default [audit] settings) | ${on[*]} | $mon | $(/usr/bin/python3 -c "print(round($mon / $moff, 3) if $moff else 0)") |"
echo "| off ([audit] enabled = no) | ${off[*]} | $moff | 1.000 |"
echo
echo "Trail cost: $(/usr/bin/python3 -c "print(round(100 * (1 - $mon / $moff), 1) if $moff else 0)")% of query throughput (target <= 10%: $(/usr/bin/python3 -c "print('met' if $mon >= 0.9 * $moff else 'MISSED')")). The first 4-client run's trail held $records_on records (one per request, one per token call)."
echo "Machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)."
