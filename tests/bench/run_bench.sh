#!/usr/bin/env bash
# ./run bench: every benchmark, Markdown on stdout. $1 = build dir.
# CDX_BENCH_SHORT=1: CI-sized IVF run (bench_ivf --short); CDX_BENCH_IVF_ARGS: extra bench_ivf
# options (e.g. "--systems faiss --repeat 3"); CDX_BENCH_SECONDS: bench_custody duration.
set -euo pipefail
build=$(cd "${1:?build dir}" && pwd)
export CDX_TEST_TMP="$build/bench-tmp"
mkdir -p "$CDX_TEST_TMP"
trap 'rm -rf "$CDX_TEST_TMP"' EXIT
secs=${CDX_BENCH_SECONDS:-2}
CDX_LOG_LEVEL=warn "$build/tests/bench/bench_custody" "$secs"

# IVF systems side by side on Fashion-MNIST (docs/BENCH.md): the table on stdout, and
# table, CSV and plot under $build/bench/. Progress goes to stderr.
ivf="$build/tests/bench/bench_ivf"
out="$build/bench"
if [[ ! -x "$ivf" ]]; then
    echo "run_bench: $ivf not built (needs zlib1g-dev and libopenblas-dev; docs/BENCH.md)" >&2
    exit 1
fi
mkdir -p "$out"
rm -f "$out/ivf.md" "$out/ivf.csv" "$out/ivf.png"
args=(--out "$out/ivf.md" --csv "$out/ivf.csv" --plot "$out/ivf.png")
if [[ "${CDX_BENCH_SHORT:-0}" == "1" ]]; then
    args+=(--short)
fi
read -r -a extra <<<"${CDX_BENCH_IVF_ARGS:-}"
echo
"$ivf" "${args[@]}" "${extra[@]}"
echo
echo "- IVF table: $out/ivf.md; CSV: $out/ivf.csv"
# Through the appliance: TLS, Redis, 4 clients, against the in-process engine (docs/BENCH.md).
CDX_BENCH_SHORT="${CDX_BENCH_SHORT:-0}" bash "$(dirname "$0")/bench_appliance.sh" "$build" | tee "$out/appliance.md"
if [[ -s "$out/ivf.png" ]]; then
    echo "- IVF plot (recall@10 vs one-at-a-time QPS): $out/ivf.png"
else
    echo "- IVF plot: not made (is gnuplot installed?)"
fi
