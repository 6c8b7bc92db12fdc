#!/usr/bin/env bash
# ctest bench_ivf_smoke: the CI-sized benchmark (bench_ivf --short) on Fashion-MNIST, in
# process, memory and Redis stores; fails unless every system answers and the encrypted
# engine's recall@10 at nprobe 16 is at least 0.99 (exhaustive-like at nlist 256), and
# its batched answers agree with its one-at-a-time ones. $1 = bench_ivf binary.
set -euo pipefail
bin=${1:?bench_ivf}
base=${CDX_TEST_TMP:-/tmp}
mkdir -p "$base" # the cleanup test may have removed it; do not depend on test order
dir=$(mktemp -d "$base/bench-smoke.XXXXXX")
trap 'rm -rf "$dir"' EXIT
systems="cipherdex:flat-mem,cipherdex:sq8-redis-cold"
if "$bin" --help 2>&1 | grep -q ' faiss'; then
    systems="faiss,$systems"
fi
CDX_LOG_LEVEL=warn "$bin" --short --systems "$systems" --csv "$dir/ivf.csv" --out "$dir/ivf.md"
cat "$dir/ivf.md"
awk -F, 'NR > 1 && $1 ~ /^cipherdex/ {
            rows++
            if ($3 == 16 && $6 < 0.99) { print "recall too low: " $0; bad++ }
            if ($7 != $6) { print "batched recall differs: " $0; bad++ }
         }
         END { if (rows < 6) { print "expected 6 cipherdex rows, got " rows; bad++ }
               if (bad) exit 1; print "bench smoke: " rows " rows OK" }' "$dir/ivf.csv"
