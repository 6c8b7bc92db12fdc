#!/usr/bin/env bash
# tests/fuzz/run_fuzz.sh: the libFuzzer campaign over every target in tests/fuzz/ (./run fuzz).
#
# usage: run_fuzz.sh REPLAY_BUILD FUZZ_BUILD OUT_DIR --execs N | --minutes N [--jobs J] [TARGET...]
#
#   REPLAY_BUILD  a normal build (its fuzz_<t> write the seed corpus: `fuzz_<t> --seeds DIR`)
#   FUZZ_BUILD    a build configured with -DCDX_LIBFUZZER=ON (clang): fuzz_<t> are libFuzzer binaries
#   OUT_DIR       corpus/<t> (kept and grown across runs), crashes/<t>, logs, fuzz-results.txt
#   --execs N     N executions per target (libFuzzer -runs)
#   --minutes N   N minutes of wall time in total, shared by the targets (-max_total_time)
#   --jobs J      J targets at a time, one process each [1]; use the machine's cores
#
# Every line of OUT_DIR/fuzz-results.txt (in target order, whatever finished first) is
# "target=<t>\texecs=<n>\tsecs=<s>\trate=<execs/s>\tcov=<edges>\tcrashes=<n>\tstatus=<rc>"; the
# exit status is 1 when any target crashed (crash inputs in OUT_DIR/crashes/<t>/<time of the run>/).
# With J > 1 the targets share the cores, so each one's rate is lower than when it runs alone.
set -euo pipefail

(($# >= 5)) || { sed -n '2,16p' "$0" >&2; exit 2; }
replay="$1" fuzz="$2" out="$3" mode="$4" budget="$5"
shift 5
jobs=1
if [[ "${1:-}" == --jobs ]]; then
    jobs="${2:-}"
    shift 2 || true
fi
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "run_fuzz: bad --jobs '$jobs'" >&2; exit 2; }
targets=("$@")
((${#targets[@]})) || targets=(wire resp filter ini codec redis_reply policy evidence)
[[ "$budget" =~ ^[0-9]+$ ]] && ((budget > 0)) || { echo "run_fuzz: bad budget '$budget'" >&2; exit 2; }
case "$mode" in --execs | --minutes) ;; *) echo "run_fuzz: --execs N or --minutes N, not '$mode'" >&2; exit 2 ;; esac
for t in "${targets[@]}"; do
    [[ -x "$fuzz/tests/fuzz_$t" ]] || { echo "run_fuzz: $fuzz/tests/fuzz_$t is missing (build it with -DCDX_LIBFUZZER=ON)" >&2; exit 1; }
done
# --minutes: the targets run in ceil(n / jobs) rounds, each round gets an equal share of the time.
rounds=$(((${#targets[@]} + jobs - 1) / jobs))

mkdir -p "$out"
results="$out/fuzz-results.txt"
: >"$results"
# One target: seeds, libFuzzer, and its result line in OUT_DIR/result_<t>.txt.
fuzz_one() {
    local t="$1" bin corpus seeds log crashes args start end rc execs cov secs rate
    bin="$fuzz/tests/fuzz_$t"
    # Crash artifacts of this run only (earlier runs' stay in their own dirs).
    corpus="$out/corpus/$t" seeds="$out/seeds/$t" log="$out/fuzz_$t.log"
    crashes="$out/crashes/$t/$(date -u +%Y%m%dT%H%M%S)"
    mkdir -p "$corpus" "$crashes"
    rm -rf "$seeds"
    "$replay/tests/fuzz_$t" --seeds "$seeds" "$seeds" >"$out/seeds_$t.log" 2>&1
    args=(-print_final_stats=1 -timeout=10 -rss_limit_mb=2048 "-artifact_prefix=$crashes/")
    case "$mode" in
    --execs) args+=("-runs=$budget") ;;
    --minutes) args+=("-max_total_time=$(((budget * 60 + rounds - 1) / rounds))") ;;
    esac
    # Frames past the 64 KiB first-frame cap only matter as later frames: 128 KiB is enough.
    [[ "$t" == wire ]] && args+=(-max_len=131072)
    echo "=== fuzz_$t ${args[*]} ==="
    start=$(date +%s.%N)
    rc=0
    # The new corpus dir first (libFuzzer writes there), then the seeds.
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        nice -n 10 "$bin" "${args[@]}" "$corpus" "$seeds" >"$log" 2>&1 || rc=$?
    end=$(date +%s.%N)
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)"
    execs="${execs:-0}"
    # Edges reached (libFuzzer's "cov:"): Debian's libprotobuf-c is not instrumented, so wire's
    # figure counts our code only.
    cov="$( { grep -o 'cov: [0-9]*' "$log" || true; } | tail -n1 | sed 's/cov: //')"
    cov="${cov:-0}"
    secs="$(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.0f", b-a}')"
    rate="$(awk -v e="$execs" -v a="$start" -v b="$end" 'BEGIN{printf "%.0f", (b > a ? e / (b - a) : 0)}')"
    crashes="$(find "$crashes" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)"
    if ((rc != 0 && crashes == 0)); then
        crashes=1 # died without an artifact: count it, the log says why
    fi
    printf 'target=%s\texecs=%s\tsecs=%s\trate=%s\tcov=%s\tcrashes=%s\tstatus=%s\n' \
        "$t" "$execs" "$secs" "$rate" "$cov" "$crashes" "$rc" >"$out/result_$t.txt"
    cat "$out/result_$t.txt"
    grep -E '^(==[0-9]+==ERROR|SUMMARY:)' "$log" | head -n 5 || true
}

rm -f "$out"/result_*.txt
running=0
for t in "${targets[@]}"; do
    if ((running >= jobs)); then
        wait -n || true
        running=$((running - 1))
    fi
    fuzz_one "$t" &
    running=$((running + 1))
done
wait || true
fail=0
for t in "${targets[@]}"; do
    line="$(cat "$out/result_$t.txt" 2>/dev/null || printf 'target=%s\texecs=0\tsecs=0\trate=0\tcov=0\tcrashes=1\tstatus=died' "$t")"
    printf '%s\n' "$line" >>"$results"
    [[ "$line" == *$'\tcrashes=0\t'* ]] || fail=1
done
rm -f "$out"/result_*.txt
exit "$fail"
