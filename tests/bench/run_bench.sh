#!/usr/bin/env bash
# ./run bench: every benchmark, Markdown on stdout. $1 = build dir.
set -euo pipefail
build=${1:?build dir}
export CDX_TEST_TMP="$build/bench-tmp"
mkdir -p "$CDX_TEST_TMP"
trap 'rm -rf "$CDX_TEST_TMP"' EXIT
secs=${CDX_BENCH_SECONDS:-2}
CDX_LOG_LEVEL=warn "$build/tests/bench/bench_custody" "$secs"
