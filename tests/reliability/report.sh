#!/usr/bin/env bash
# tests/reliability/report.sh: RELIABILITY.md from the campaign's machine-readable output.
#
# usage: report.sh OUT.md RESULTS FUZZ_RESULTS EXEC_GOAL MODE STATUS_FILE
#
#   RESULTS       lines "mode=..\tpart=..\ttest=..\truns=..\tfaults=..\tacked=..\tlost=..\t
#                 corrupt=..\tpartial=..\terrors=..\tverdict=.." from test_reliability
#                 ($CDX_RELIABILITY_RESULTS)
#   FUZZ_RESULTS  lines "target=..\texecs=..\tsecs=..\trate=..\tcrashes=..\tstatus=.." from
#                 tests/fuzz/run_fuzz.sh (may be missing: fuzzing skipped)
#   EXEC_GOAL     executions per target a fuzz row needs to pass
#   MODE          full or short
#   STATUS_FILE   lines "<part> <exit status>" of each test_reliability run
set -euo pipefail
(($# == 6)) || { sed -n '2,14p' "$0" >&2; exit 2; }
out="$1" results="$2" fuzz="$3" goal="$4" mode="$5" status="$6"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

commit="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
dirty=""
[[ -z "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ]] || dirty=" (with uncommitted changes)"
mem="$(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
redis="$(redis-server --version 2>/dev/null | sed -n 's/.*v=\([^ ]*\).*/\1/p')"
softhsm="$(softhsm2-util --version 2>/dev/null || echo unknown)"

# field LINE KEY: the value of KEY in a tab-separated key=value line, '|' escaped for Markdown.
field() {
    awk -F'\t' -v k="$2" '{for (i = 1; i <= NF; i++) if (index($i, k "=") == 1) {
        v = substr($i, length(k) + 2); gsub(/\|/, "\\|", v); print v; exit}}' <<<"$1"
}

{
    echo "# Cipherdex reliability"
    echo
    echo "Written by \`./run reliability\` ($mode mode) — do not edit by hand; rerun it."
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- Commit: \`$commit\`$dirty"
    echo "- Machine: $(nproc) cores ($cpu), $mem, $(uname -sr); Redis $redis, SoftHSM $softhsm"
    echo "- Commands: \`./run reliability\` = release build, then for each part"
    echo "  \`CDX_RELIABILITY_FULL=$([[ $mode == full ]] && echo 1 || echo 0) build/tests/reliability/test_reliability PART\`"
    echo "  (parts: daemon_kill redis_kill token concurrency hostile growth; figures in"
    echo "  \`build/reliability/results.txt\`, logs in \`build/reliability/*.log\`), then"
    echo "  \`./run fuzz --execs N\` (libFuzzer, clang 14, ASan+UBSan; per-target figures in"
    echo "  \`build-fuzz/campaign/fuzz-results.txt\`). The harness is described in"
    echo "  docs/RELIABILITY-HOWTO.md."
    echo
    echo "Lost: an item whose last acknowledged write is not visible (absent, older, or deleted"
    echo "but visible again). Corrupt: a visible item whose value is no write ever sent for it."
    echo "Partial: a batch of unknown outcome that is half applied."
    echo
    echo "## Fault campaign"
    echo
    echo "| test | runs | faults injected | acknowledged ops | lost | corrupt (partial) | errors seen | verdict |"
    echo "|---|---|---|---|---|---|---|---|"
    while IFS= read -r line; do
        [[ -n "$line" ]] || continue
        printf '| %s: %s | %s | %s | %s | %s | %s (%s) | %s | **%s** |\n' \
            "$(field "$line" part)" "$(field "$line" test)" "$(field "$line" runs)" \
            "$(field "$line" faults)" "$(field "$line" acked)" "$(field "$line" lost)" \
            "$(field "$line" corrupt)" "$(field "$line" partial)" "$(field "$line" errors)" \
            "$(field "$line" verdict)"
    done <"$results"
    echo
    # A part that crashed or failed before writing its line still shows up.
    while read -r part rc; do
        if ! grep -q "part=$part" "$results"; then
            echo "- **$part**: exited with status $rc before reporting (see build/reliability/$part.log)."
        elif [[ "$rc" != 0 ]]; then
            echo "- $part: exit status $rc (a threshold failed; see build/reliability/$part.log)."
        fi
    done <"$status"
    echo
    echo "## Fuzzing"
    echo
    if [[ -s "$fuzz" ]]; then
        echo "Goal: at least $goal executions per target, 0 crashes (crash, leak, timeout, OOM"
        echo "or sanitizer report)."
        echo
        echo "| target | executions | seconds | execs/s | edges covered | crashes | verdict |"
        echo "|---|---|---|---|---|---|---|"
        while IFS= read -r line; do
            [[ -n "$line" ]] || continue
            t="$(field "$line" target)" e="$(field "$line" execs)" c="$(field "$line" crashes)"
            v=PASS
            ((c == 0)) || v="FAIL ($c crashes)"
            ((c != 0 || e >= goal)) || v="FAIL (under the goal)"
            printf '| fuzz_%s | %s | %s | %s | %s | %s | **%s** |\n' "$t" "$e" "$(field "$line" secs)" \
                "$(field "$line" rate)" "$(field "$line" cov)" "$c" "$v"
        done <"$fuzz"
    else
        echo "Not run (\`--skip-fuzz\`)."
    fi
} >"$out"
echo "report: wrote $out"
