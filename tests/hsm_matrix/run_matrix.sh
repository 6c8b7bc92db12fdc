#!/usr/bin/env bash
# The steps and module fixtures are called by name ("s_$step", "mod_${mod}_up").
# shellcheck disable=SC2317
# The PKCS#11 module matrix (docs/CUSTODY.md "Module matrix"; `./run test --hsm-matrix`).
#
#   run_matrix.sh BUILD_DIR [--modules softhsm,opencryptoki,p11kit-remote,nss] [--out FILE]
#                 [--expect FILE] [--require-all] [--strict]
#
# For each module: a throwaway (or re-initialised) token, the cipherdex-hsm flow of
# reviews/2026-12-04-pkcs11-portability.md §1 (tokens, keys, root, index generate/import/kcv/
# check/adopt, kek create/import, index unwrap of an `openssl enc -id-aes256-wrap-pad` blob,
# destroy), then cipherdexd on the module with [store] backend = memory and the CLI: health,
# index create, upsert, query, get, describe, create --unwrap-kek, index delete.
# Prints the matrix (step x module: PASS / FAIL: first error line / SKIP: reason) and writes it
# to FILE [BUILD_DIR/hsm-matrix.md] with every cell's full detail in FILE.tsv.
# Exit 1 when a cell expected to pass (tests/hsm_matrix/expected.txt) does not, or a module is
# unavailable under --require-all; with --strict also when a known failure now passes.
# Scratch dirs under $CDX_TEST_TMP (or /tmp); everything started is stopped on exit.
set -euo pipefail

HERE="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=modules.sh
source "$HERE/modules.sh"

die() { echo "hsm-matrix: $*" >&2; exit 2; }

ALL_MODULES=(softhsm opencryptoki p11kit-remote nss)
STEPS=(probe tokens keys hsm-probe root-create root-existing idx-generate idx-import idx-kcv idx-check
       idx-adopt kek-create kek-import idx-unwrap idx-destroy kek-destroy custody-suite
       d-start d-health d-create d-upsert d-query d-get d-describe d-unwrap d-delete)

(($# >= 1)) || die "usage: run_matrix.sh BUILD_DIR [--modules LIST] [--out FILE] [--expect FILE] [--require-all] [--strict]"
BUILD="$(cd "$1" && pwd)"
shift
MODULES=("${ALL_MODULES[@]}") OUT="$BUILD/hsm-matrix.md" EXPECT_FILE="$HERE/expected.txt"
REQUIRE_ALL=0 STRICT=0
while (($#)); do
    case "$1" in
    --modules) IFS=, read -r -a MODULES <<<"${2:?--modules needs a list}"; shift ;;
    --out) OUT="${2:?--out needs a file}"; shift ;;
    --expect) EXPECT_FILE="${2:?--expect needs a file}"; shift ;;
    --require-all) REQUIRE_ALL=1 ;;
    --strict) STRICT=1 ;;
    *) die "unknown option '$1'" ;;
    esac
    shift
done
for m in "${MODULES[@]}"; do
    [[ " ${ALL_MODULES[*]} " == *" $m "* ]] || die "unknown module '$m' (known: ${ALL_MODULES[*]})"
done

HSM="$BUILD/appliance/cipherdex-hsm"
DAEMON="$BUILD/appliance/cipherdexd"
CLI="$BUILD/appliance/cipherdex"
PKI="$BUILD/tests/fixtures/fx_pki_tool"
PROBE="$BUILD/tests/hsm_matrix/cdx_p11probe"
CUSTODY_SUITE="$BUILD/tests/test_custody_module"
for b in "$HSM" "$DAEMON" "$CLI" "$PKI" "$PROBE" "$CUSTODY_SUITE"; do
    [[ -x "$b" ]] || die "$b missing: build first (cmake --build $BUILD)"
done
PY=/usr/bin/python3

base="${CDX_TEST_TMP:-/tmp}"
mkdir -p "$base"
WORK="$(mktemp -d "$base/hsm-matrix.XXXXXX")"
MATRIX_PIDS_FILE="$WORK/pids"
: >"$MATRIX_PIDS_FILE"
CUR_MOD=""

cleanup() {
    local rc=$? pid what
    set +e
    stop_daemon
    if [[ -n "$CUR_MOD" ]]; then "mod_${CUR_MOD//-/_}_down"; fi
    # Anything a module's down did not stop (interrupted run).
    while read -r pid what; do
        echo "hsm-matrix: stopping leftover $what (pid $pid)" >&2
        stop_pid "$pid"
    done < <(tac "$MATRIX_PIDS_FILE" 2>/dev/null)
    if [[ "${CDX_HSM_MATRIX_KEEP:-0}" == 1 ]]; then
        echo "hsm-matrix: kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- expectations -----------------------------------------------------------------------------

declare -A EXP=() WHY=()
load_expectations() {
    local mod step exp why
    while read -r mod step exp why; do
        [[ -z "$mod" || "$mod" == \#* ]] && continue
        [[ "$exp" == pass || "$exp" == fail || "$exp" == skip ]] ||
            die "$EXPECT_FILE: '$exp' is not pass, fail or skip ($mod $step)"
        if [[ "$step" == "*" ]]; then
            local s
            for s in "${STEPS[@]}"; do EXP["$mod/$s"]="$exp"; WHY["$mod/$s"]="$why"; done
        else
            [[ " ${STEPS[*]} " == *" $step "* ]] || die "$EXPECT_FILE: unknown step '$step'"
            EXP["$mod/$step"]="$exp"
            WHY["$mod/$step"]="$why"
        fi
    done <"$EXPECT_FILE"
}
load_expectations

# ---- helpers ----------------------------------------------------------------------------------

declare -A RES=() DET=()
OUTP=""    # output of the last cap
DETAIL=""  # why a step failed or was skipped

# cap CMD...: run CMD (60 s limit) with the module's environment; output in OUTP, status returned.
cap() {
    local rc=0
    OUTP="$(env "${M_ENV[@]}" CDX_LOG_LEVEL=error timeout 60 "$@" 2>&1)" || rc=$?
    return "$rc"
}

# The first line of OUTP worth showing: an error line of our programs, else the first line.
first_error() {
    local l
    l="$(grep -m1 -E '^(cipherdex-hsm|cipherdexd|cipherdex): |error [0-9]+ [A-Z_]+|Segmentation|[A-Z_]{6,}: ' <<<"$OUTP" || true)"
    [[ -n "$l" ]] || l="$(grep -m1 -v '^[[:space:]]*$' <<<"$OUTP" || true)"
    printf '%s' "${l:-no output}"
}

fail_with() {
    local what="$1"
    # 128+N: killed by signal N (139 = SIGSEGV: the crash of reviews/2026-12-04 E9).
    if [[ "$what" =~ ^exit\ (1[3-9][0-9])$ ]]; then what+=" (SIG$(kill -l "$((BASH_REMATCH[1] - 128))"))"; fi
    DETAIL="$what${OUTP:+: $(first_error)}"
    return 1
}

jget() { # jget EXPR: EXPR over the JSON document on stdin (d), printed
    "$PY" -c 'import json,sys
try:
    d = json.load(sys.stdin); print(eval(sys.argv[1]))
except Exception:
    pass' "$1"
}

hexof() { od -An -v -tx1 "$1" | tr -d ' \n'; }
kcv_hex() { # kcv_hex KEYHEX: Cipherdex's KCV (HMAC-SHA256 of "cipherdex/v1/kcv", 8 bytes)
    printf 'cipherdex/v1/kcv' | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$1" -r | cut -c1-16
}

uri_of() { # pkcs11:token=<label percent-encoded outside RFC 3986 unreserved>
    local s="$1" o="" c i
    for ((i = 0; i < ${#s}; i++)); do
        c="${s:i:1}"
        case "$c" in
        [A-Za-z0-9._~-]) o+="$c" ;;
        *) o+="$(printf '%%%02X' "'$c")" ;;
        esac
    done
    printf 'pkcs11:token=%s' "$o"
}

# need STEP...: 0 if every STEP passed in this module, else DETAIL names the first that did not.
need() {
    local s
    for s in "$@"; do
        if [[ "${RES[$CUR_MOD/$s]:-}" != PASS ]]; then
            DETAIL="needs $s"
            return 1
        fi
    done
}

hsm() { cap "$HSM" --config "$MOD_DIR/hsm.conf" "$@"; }

# ---- which optional [hsm] keys this build accepts ---------------------------------------------

declare -A SUPPORTS=()
# supports KEY VALUE: does this build's config parser accept `KEY = VALUE` in [hsm]? A CONFIG
# error naming KEY means no (an older build: the fix branches add init_args and copyable).
supports() {
    local key="$1" val="$2" f="$WORK/probe-$1.conf" out
    [[ -n "${SUPPORTS[$key]:-}" ]] && { [[ "${SUPPORTS[$key]}" == yes ]]; return; }
    printf '[hsm]\nmodule = /nonexistent/module.so\ntoken = pkcs11:token=x\npin = file:%s\n%s = %s\n' \
        "$WORK/none.pin" "$key" "$val" >"$f"
    printf 'x' >"$WORK/none.pin"
    chmod 600 "$WORK/none.pin"
    out="$("$HSM" --config "$f" keys 2>&1 || true)"
    if grep -q "CONFIG" <<<"$out" && grep -q -- "$key" <<<"$out"; then
        SUPPORTS[$key]=no
        SUPPORT_MSG[$key]="$(grep -m1 CONFIG <<<"$out")"
        return 1
    fi
    SUPPORTS[$key]=yes
}
declare -A SUPPORT_MSG=()

# hsm_section: the [hsm] lines shared by cipherdex-hsm and cipherdexd for the current module.
hsm_section() {
    printf '[hsm]\nmodule = %s\ntoken = %s\npin = file:%s\nsessions = 2\n' \
        "$M_MODULE" "$(uri_of "$M_LABEL")" "$M_PIN_FILE"
    if [[ " $M_NEEDS " == *" init_args "* ]] && supports init_args "$M_INIT_ARGS"; then
        printf 'init_args = %s\n' "$M_INIT_ARGS"
    fi
    if [[ " $M_NEEDS " == *" copyable "* ]] && supports copyable unsupported; then
        printf 'copyable = unsupported\n'
    fi
}

# ---- the steps: s_<step> returns 0 PASS, 1 FAIL, 77 SKIP (DETAIL says why) --------------------

MECHS=""
s_probe() {
    local args=("$PROBE" "$M_MODULE" "$M_LABEL")
    [[ -z "$M_INIT_ARGS" ]] || args+=("$M_INIT_ARGS")
    cap "${args[@]}" || fail_with "the fixture's token is not visible through $(basename "$M_MODULE")" || return 1
    MECHS="$OUTP"
    DETAIL="$(grep -m1 '^token ' <<<"$OUTP" | cut -d' ' -f2-), $(grep -c '^mech ' <<<"$OUTP") mechanisms"
}

# unwrap_skip: the reason the token cannot unwrap an RFC 5649 blob, or "" if it can. Judged from
# the probe's mechanism list (CKF_UNWRAP = 0x40000 on 0x210A or 0x210B).
unwrap_skip() {
    local reason="" w mech flags ok=0
    while read -r w mech flags; do
        [[ "$w" == mech && ("$mech" == 0x0000210a || "$mech" == 0x0000210b) ]] || continue
        ((flags & 0x40000)) && ok=1
    done <<<"$MECHS"
    if ((ok == 0)); then
        if [[ "$CUR_MOD" == p11kit-remote ]]; then
            reason="p11-kit RPC does not carry CKM_AES_KEY_WRAP* (remoting; SoftHSM behind it has them)"
        else
            reason="token lists no CKM_AES_KEY_WRAP_PAD/KWP with CKF_UNWRAP"
        fi
    fi
    printf '%s' "$reason"
}

s_tokens() {
    hsm --json tokens || fail_with "exit $?" || return 1
    grep -q "\"label\":\"$M_LABEL\"" <<<"$OUTP" || { DETAIL="exit 0 but '$M_LABEL' is not listed"; return 1; }
    grep -q '"matches_uri":true' <<<"$OUTP" || { DETAIL="no token matches the URI"; return 1; }
}

s_keys() { hsm keys || fail_with "exit $?"; }

# cipherdex-hsm probe: Cipherdex's own verdict on the token (exit 1 when it cannot run there).
s_hsm_probe() {
    local rc=0 verdict
    hsm probe || rc=$?
    # "verdict: ..." and the first reason after it.
    verdict="$(awk '/^verdict:/{v=$0; n=NR} n && NR==n+1{v=v "; " $0} END{print v}' <<<"$OUTP")"
    if ((rc != 0)); then
        DETAIL="exit $rc${verdict:+: $verdict}"
        [[ -n "$verdict" ]] || fail_with "exit $rc"
        return 1
    fi
    DETAIL="$verdict"
}

DEPLOY="" ROOT_KCV=""
s_root_create() {
    DEPLOY="$(random_hex 32)"
    hsm --json root create --deployment-id "$DEPLOY" || fail_with "exit $?" || return 1
    [[ "$(jget 'd["status"]' <<<"$OUTP")" == created ]] || { DETAIL="status not 'created': $OUTP"; return 1; }
    ROOT_KCV="$(jget 'd["kcv"]' <<<"$OUTP")"
}
s_root_existing() {
    need root-create || return 77
    hsm --json root create --deployment-id "$DEPLOY" || fail_with "exit $?" || return 1
    [[ "$(jget 'd["status"]' <<<"$OUTP")" == existing ]] || { DETAIL="status not 'existing': $OUTP"; return 1; }
    [[ "$(jget 'd["kcv"]' <<<"$OUTP")" == "$ROOT_KCV" ]] || { DETAIL="KCV changed"; return 1; }
}

GEN_ID="" GEN_KCV=""
s_idx_generate() {
    hsm --json index generate || fail_with "exit $?" || return 1
    GEN_ID="$(jget 'd["id"]' <<<"$OUTP")" GEN_KCV="$(jget 'd["kcv"]' <<<"$OUTP")"
    [[ ${#GEN_ID} == 32 && ${#GEN_KCV} == 16 ]] || { DETAIL="no id/kcv in: $OUTP"; return 1; }
}

s_idx_import() {
    local key="$MOD_DIR/index.key" want got
    head -c 32 /dev/urandom >"$key.bin"
    (umask 077 && base64 -w0 <"$key.bin" >"$key" && echo >>"$key")
    want="$(kcv_hex "$(hexof "$key.bin")")"
    hsm --json index import --key-file "$key" --id "$(random_hex 32)" || fail_with "exit $?" || return 1
    got="$(jget 'd["kcv"]' <<<"$OUTP")"
    [[ "$got" == "$want" ]] || { DETAIL="KCV $got, OpenSSL says $want"; return 1; }
}

s_idx_kcv() {
    need idx-generate || return 77
    hsm --json index kcv --id "$GEN_ID" || fail_with "exit $?" || return 1
    [[ "$(jget 'd["kcv"]' <<<"$OUTP")" == "$GEN_KCV" ]] || { DETAIL="KCV differs from generate's"; return 1; }
}

s_idx_check() {
    need idx-generate || return 77
    hsm index check --id "$GEN_ID" --kcv "$GEN_KCV" || fail_with "matching KCV: exit $?" || return 1
    local rc=0
    hsm index check --id "$GEN_ID" --kcv 0000000000000000 || rc=$?
    if [[ $rc != 3 ]] || ! grep -q KEY_REPLACED <<<"$OUTP"; then
        fail_with "wrong KCV: exit $rc (want 3 KEY_REPLACED)"
    fi
}

s_idx_adopt() {
    need idx-generate || return 77
    hsm --json index adopt --id "$GEN_ID" || fail_with "exit $?" || return 1
    [[ "$(jget 'd["kcv"]' <<<"$OUTP")" == "$GEN_KCV" ]] || { DETAIL="KCV differs"; return 1; }
}

# kek_refused NAME: the KEK command just failed. On a token that cannot hold a KEK Cipherdex
# accepts (no RFC 5649 unwrap mechanism; or the token drops CKA_UNWRAP_TEMPLATE, security M2) the
# refusal must name the reason and leave no object behind: then the step is SKIP with that reason
# (return 77). Anything else is a failure (return 1).
kek_refused() {
    local name="$1" rc="$2" reason="" out="$OUTP"
    if grep -q "not created: a KEK only serves index unwrap" <<<"$out"; then
        reason="kek refused by name: no RFC 5649 unwrap mechanism"
    elif grep -q "not created: the token accepted CKA_UNWRAP_TEMPLATE but does not keep it" <<<"$out"; then
        reason="kek refused by name: the token does not keep CKA_UNWRAP_TEMPLATE (M2)"
    else
        fail_with "exit $rc"
        return 1
    fi
    hsm --json keys || { fail_with "keys after the refusal: exit $?"; return 1; }
    if grep -q "cipherdex-kek-$name" <<<"$OUTP"; then
        DETAIL="refused, but cipherdex-kek-$name is left on the token"
        return 1
    fi
    DETAIL="$reason"
    return 77
}

s_kek_create() {
    local rc=0
    hsm kek create spare || rc=$?
    ((rc == 0)) || kek_refused spare "$rc"
}

KEK_HEX=""
s_kek_import() {
    local f="$MOD_DIR/kek.key"
    head -c 32 /dev/urandom >"$f.bin"
    (umask 077 && base64 -w0 <"$f.bin" >"$f" && echo >>"$f")
    KEK_HEX="$(hexof "$f.bin")"
    local rc=0
    hsm kek import kms1 --key-file "$f" || rc=$?
    ((rc == 0)) || kek_refused kms1 "$rc"
}

# wrapped_blob: a fresh 32-byte key wrapped under kms1 as a KMS would (RFC 5649, 40 bytes) in
# $MOD_DIR/dek.wrapped; its KCV in WRAP_KCV.
WRAP_KCV=""
wrapped_blob() {
    head -c 32 /dev/urandom >"$MOD_DIR/dek.bin"
    openssl enc -id-aes256-wrap-pad -K "$KEK_HEX" -iv A65959A6 -in "$MOD_DIR/dek.bin" \
        -out "$MOD_DIR/dek.wrapped"
    WRAP_KCV="$(kcv_hex "$(hexof "$MOD_DIR/dek.bin")")"
    [[ "$(stat -c %s "$MOD_DIR/dek.wrapped")" == 40 ]]
}

s_idx_unwrap() {
    local r
    r="$(unwrap_skip)"
    [[ -z "$r" ]] || { DETAIL="$r"; return 77; }
    need kek-import || return 77
    wrapped_blob || { DETAIL="openssl enc -id-aes256-wrap-pad failed"; return 1; }
    hsm --json index unwrap --kek kms1 --wrapped "$MOD_DIR/dek.wrapped" || fail_with "exit $?" || return 1
    [[ "$(jget 'd["kcv"]' <<<"$OUTP")" == "$WRAP_KCV" ]] || { DETAIL="KCV $(jget 'd["kcv"]' <<<"$OUTP"), OpenSSL says $WRAP_KCV"; return 1; }
}

s_idx_destroy() {
    need idx-generate || return 77
    hsm index destroy --id "$GEN_ID" --yes || fail_with "exit $?" || return 1
    local rc=0
    hsm index kcv --id "$GEN_ID" || rc=$?
    if [[ $rc != 1 ]] || ! grep -q KEY_NOT_FOUND <<<"$OUTP"; then
        fail_with "after destroy, kcv exit $rc (want KEY_NOT_FOUND)"
    fi
}

s_kek_destroy() {
    need kek-create || return 77
    hsm kek destroy spare --yes || fail_with "exit $?"
}

# The module-neutral custody suite (tests/test_custody_module.c) on this module's token: its
# CUnit summary must show every test run and passed.
s_custody_suite() {
    local env=(CDX_CM_MODULE="$M_MODULE" CDX_CM_TOKEN="$(uri_of "$M_LABEL")"
               CDX_CM_PIN_FILE="$M_PIN_FILE")
    [[ " $M_NEEDS " == *" init_args "* ]] && env+=(CDX_CM_INIT_ARGS="$M_INIT_ARGS")
    [[ " $M_NEEDS " == *" copyable "* ]] && env+=(CDX_CM_COPYABLE=unsupported)
    local rc=0
    OUTP="$(env "${M_ENV[@]}" "${env[@]}" CDX_LOG_LEVEL=error timeout 120 "$CUSTODY_SUITE" 2>&1)" || rc=$?
    printf '%s\n' "$OUTP" >"$MOD_DIR/custody-suite.out"
    local tests
    tests="$(awk '$1 == "tests" {print $2 "/" $4 " passed, " $5 " failed"}' <<<"$OUTP")"
    if ((rc != 0)) || [[ -z "$tests" ]]; then
        DETAIL="exit $rc${tests:+ ($tests)}: $(grep -m1 -E 'FAILED|^ +[0-9]+\. ' <<<"$OUTP" || true)"
        return 1
    fi
    DETAIL="CUnit $tests"
    if grep -q "KEK refused" <<<"$OUTP"; then DETAIL+="; KEK refused by name"; fi
}

# ---- the daemon --------------------------------------------------------------------------------

DPID="" API=""
stop_daemon() {
    [[ -n "$DPID" ]] || return 0
    stop_pid "$DPID"
    DPID=""
}

cli() {
    cap "$CLI" --addr "$API" --ca "$MOD_DIR/pki/ca.pem" --cert "$MOD_DIR/pki/client.pem" \
        --key "$MOD_DIR/pki/client.key" "$@"
}

s_d_start() {
    local d="$MOD_DIR" principal
    "$PKI" "$d/pki" >"$d/pki.txt" 2>&1 || { DETAIL="fx_pki_tool failed"; return 1; }
    principal="$(sed -n 's/^client_principal=//p' "$d/pki.txt")"
    [[ -n "$DEPLOY" ]] || DEPLOY="$(random_hex 32)"
    {
        printf '# written by tests/hsm_matrix/run_matrix.sh for %s\n[server]\n' "$CUR_MOD"
        printf 'listen = 127.0.0.1:0\nports_file = %s/ports\n' "$d"
        printf 'tls_cert = %s/pki/server.pem\ntls_key = %s/pki/server.key\nclient_ca = %s/pki/ca.pem\n' "$d" "$d" "$d"
        printf 'admins = %s\ndeployment_id = %s\n\n' "$principal" "$DEPLOY"
        hsm_section
        printf 'allow_unlocked_memory = yes\n\n[keys]\nsubkey_ttl_ms = 60000\n\n[store]\nbackend = memory\n\n'
        printf '[cache]\nbytes = 64M\n\n[state]\ndir = %s/state\n\n[metrics]\nlisten = 127.0.0.1:0\n' "$d"
    } >"$d/cipherdexd.conf"
    cap "$DAEMON" --check-config "$d/cipherdexd.conf" || fail_with "--check-config" || return 1
    rm -f "$d/ports"
    env "${M_ENV[@]}" "$DAEMON" --config "$d/cipherdexd.conf" >"$d/cipherdexd.log" 2>&1 &
    DPID=$!
    track_pid "$DPID" cipherdexd
    local deadline=$((SECONDS + 60))
    until [[ -s "$d/ports" ]]; do
        if ! kill -0 "$DPID" 2>/dev/null || ((SECONDS >= deadline)); then
            OUTP="$(cat "$d/cipherdexd.log")"
            stop_daemon
            fail_with "cipherdexd did not start"
            return 1
        fi
        sleep 0.1
    done
    API="$(sed -n 's/^api=//p' "$d/ports")"
}

s_d_health() {
    need d-start || return 77
    cli health || fail_with "exit $?" || return 1
    grep -q '^token: ok' <<<"$OUTP" || { DETAIL="no 'token: ok': $(head -n3 <<<"$OUTP" | tr '\n' ' ')"; return 1; }
}

IDX_ID=""
s_d_create() {
    need d-start || return 77
    cli --json index create docs --dim 8 --metric euclidean || fail_with "exit $?" || return 1
    IDX_ID="$(jget 'd["id"]' <<<"$OUTP")"
    [[ ${#IDX_ID} == 32 ]] || { DETAIL="no id: $OUTP"; return 1; }
}

# 50 items of 8 dimensions, and the ids of the 3 nearest to the query, computed here.
make_items() {
    "$PY" - "$MOD_DIR/items.jsonl" "$MOD_DIR/expected-top3" <<'PY'
import json, random, sys
r = random.Random(7)
items = [[r.uniform(-1, 1) for _ in range(8)] for _ in range(50)]
with open(sys.argv[1], "w") as f:
    for i, v in enumerate(items):
        f.write(json.dumps({"id": f"v{i}", "vector": v, "metadata": {"n": i}}) + "\n")
q = [0.1 * k - 0.35 for k in range(8)]
order = sorted(range(50), key=lambda i: sum((a - b) ** 2 for a, b in zip(items[i], q)))
with open(sys.argv[2], "w") as f:
    f.write(" ".join(f"v{i}" for i in order[:3]))
PY
}
QUERY="-0.35,-0.25,-0.15,-0.05,0.05,0.15,0.25,0.35"

s_d_upsert() {
    need d-create || return 77
    make_items
    cli upsert docs --file "$MOD_DIR/items.jsonl" || fail_with "exit $?" || return 1
    grep -q "upserted 50 items" <<<"$OUTP" || { DETAIL="$(head -n1 <<<"$OUTP")"; return 1; }
}

s_d_query() {
    need d-upsert || return 77
    cli --json query docs --vector "$QUERY" --top-k 3 || fail_with "exit $?" || return 1
    local got want
    got="$(jget '" ".join(r["id"] for r in d["results"])' <<<"$OUTP")"
    want="$(cat "$MOD_DIR/expected-top3")"
    [[ "$got" == "$want" ]] || { DETAIL="top-3 '$got', exact '$want'"; return 1; }
    DETAIL="top-3 $got"
}

s_d_get() {
    need d-upsert || return 77
    cli --json get docs v3 nope --include metadata || fail_with "exit $?" || return 1
    [[ "$(jget '[i["found"] for i in d["items"]]' <<<"$OUTP")" == "[True, False]" ]] ||
        { DETAIL="found flags wrong: $OUTP"; return 1; }
}

s_d_describe() {
    need d-upsert || return 77
    cli --json index describe docs || fail_with "exit $?" || return 1
    [[ "$(jget 'd["count"]' <<<"$OUTP")" == 50 ]] || { DETAIL="count not 50: $OUTP"; return 1; }
    # Provenance: generated here; the CKA_COPYABLE opt-in recorded exactly where it was used.
    local origin want=False got
    origin="$(jget 'd["key_provenance"]["origin"]' <<<"$OUTP")"
    [[ "$origin" == generated ]] || { DETAIL="key origin '$origin', want generated"; return 1; }
    # M_NEEDS has copyable for the modules that lack CKA_COPYABLE (modules.sh).
    [[ " $M_NEEDS " == *" copyable "* ]] && want=True
    got="$(jget 'd["key_provenance"]["copyable_not_enforced"]' <<<"$OUTP")"
    [[ "$got" == "$want" ]] || { DETAIL="copyable_not_enforced $got, want $want"; return 1; }
    DETAIL="origin generated, copyable_not_enforced $got"
}

s_d_unwrap() {
    local r
    r="$(unwrap_skip)"
    [[ -z "$r" ]] || { DETAIL="$r"; return 77; }
    need d-start kek-import || return 77
    wrapped_blob || { DETAIL="openssl enc -id-aes256-wrap-pad failed"; return 1; }
    cli --json index create wrapped --dim 8 --unwrap-kek kms1 --wrapped-file "$MOD_DIR/dek.wrapped" ||
        fail_with "exit $?" || return 1
    [[ -n "$(jget 'd["id"]' <<<"$OUTP")" ]] || { DETAIL="no id: $OUTP"; return 1; }
}

s_d_delete() {
    need d-create || return 77
    cli index delete docs --confirm "$IDX_ID" || fail_with "exit $?" || return 1
    local rc=0
    cli index describe docs || rc=$?
    if [[ $rc != 1 ]] || ! grep -q NOT_FOUND <<<"$OUTP"; then
        fail_with "after delete, describe exit $rc (want NOT_FOUND)"
    fi
}

# ---- running a module --------------------------------------------------------------------------

UNEXPECTED=() FLIPS=()
record() { # record STEP RESULT DETAIL
    local key="$CUR_MOD/$1" exp="${EXP[$CUR_MOD/$1]:-pass}" why="${WHY[$CUR_MOD/$1]:-}"
    RES[$key]="$2"
    DET[$key]="$3"
    case "$exp/$2" in
    pass/PASS | fail/FAIL | fail/SKIP | skip/SKIP) ;;
    pass/SKIP)
        # Blocked by an earlier failure: that failure was already counted.
        [[ "$3" == needs\ * ]] || UNEXPECTED+=("$key: SKIP ($3), expected pass")
        ;;
    pass/FAIL | skip/FAIL) UNEXPECTED+=("$key: FAIL ($3), expected $exp") ;;
    fail/PASS | skip/PASS) FLIPS+=("$key: PASS, expected $exp${why:+ ($why)}: flip it in $EXPECT_FILE") ;;
    esac
    local mark=""
    case "$exp/$2" in pass/PASS | fail/FAIL | fail/SKIP | skip/SKIP) ;; *) mark=" [expected $exp]" ;; esac
    printf '  %-14s %-4s%s %s\n' "$1" "$2" "$mark" "$3"
}

run_module() {
    local mod="$1" fn step rc
    CUR_MOD="$mod"
    fn="${mod//-/_}"
    MOD_DIR="$WORK/$mod"
    mkdir -p "$MOD_DIR"
    MECHS="" DEPLOY="" ROOT_KCV="" GEN_ID="" GEN_KCV="" KEK_HEX="" IDX_ID="" API=""
    echo "=== $mod ==="
    if ! "mod_${fn}_up" "$MOD_DIR"; then
        echo "  unavailable: $M_UNAVAILABLE"
        UNAVAILABLE[$mod]="$M_UNAVAILABLE"
        for step in "${STEPS[@]}"; do
            RES[$mod/$step]=SKIP
            DET[$mod/$step]="module unavailable: $M_UNAVAILABLE"
        done
        CUR_MOD=""
        return
    fi
    NOTES[$mod]="$M_NOTE"
    echo "  $M_NOTE"
    {
        hsm_section
    } >"$MOD_DIR/hsm.conf"
    local k
    for k in init_args copyable; do
        if [[ " $M_NEEDS " == *" $k "* && "${SUPPORTS[$k]:-}" == no ]]; then
            NOTES[$mod]+="; this build has no [hsm] $k (${SUPPORT_MSG[$k]})"
            echo "  this build has no [hsm] $k: left out of the config"
        fi
    done
    for step in "${STEPS[@]}"; do
        DETAIL="" OUTP=""
        rc=0
        "s_${step//-/_}" || rc=$?
        printf '%s\n' "$OUTP" >"$MOD_DIR/$step.out"
        case $rc in
        0) record "$step" PASS "$DETAIL" ;;
        77) record "$step" SKIP "$DETAIL" ;;
        *) record "$step" FAIL "${DETAIL:-exit $rc}" ;;
        esac
    done
    stop_daemon
    "mod_${fn}_down"
    CUR_MOD=""
}

declare -A UNAVAILABLE=() NOTES=()
start=$SECONDS
for m in "${MODULES[@]}"; do
    run_module "$m"
done

# ---- the report --------------------------------------------------------------------------------

cell() { # cell MOD STEP: the table text
    local key="$1/$2" r="${RES[$1/$2]}" d="${DET[$1/$2]}" exp="${EXP[$1/$2]:-pass}" t
    # Shorter than the TSV: no exit status before an error line, no program name, no stock
    # phrase in front of the token's own words.
    d="$(sed -E -e 's/^exit [0-9]+: //' -e 's/^cipherdexd did not start: //' -e 's/(cipherdex-hsm|cipherdexd|cipherdex): (cannot start: )?//' \
        -e 's/(the token refused the operation|the key token is unavailable|no token matches the configured URI|the token lacks a required mechanism|the token key has the wrong attributes): //' <<<"$d")"
    case "$r" in
    PASS) t="PASS${d:+ ($d)}" ;;
    FAIL) t="FAIL: $d" ;;
    SKIP) t="SKIP: $d" ;;
    esac
    ((${#t} <= 110)) || t="${t:0:107}..."
    case "$exp/$r" in
    pass/PASS | fail/FAIL | fail/SKIP | skip/SKIP) ;;
    *) [[ -n "${UNAVAILABLE[$1]:-}" ]] || t="$t [expected $exp]" ;;
    esac
    t="${t//|/\\|}"
    printf '%s' "$t"
}

{
    echo "# PKCS#11 module matrix"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$HERE" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$HERE" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)'), build $BUILD, $((SECONDS - start)) s."
    echo "Expectations: $([[ "$EXPECT_FILE" == "$HERE/expected.txt" ]] && echo tests/hsm_matrix/expected.txt || echo "$EXPECT_FILE"). Cells: PASS, FAIL: first error line, SKIP: reason;"
    echo "[expected X] marks a cell that differs from its expectation."
    echo
    for m in "${MODULES[@]}"; do
        if [[ -n "${UNAVAILABLE[$m]:-}" ]]; then
            echo "- **$m**: unavailable: ${UNAVAILABLE[$m]}"
        else
            echo "- **$m**: ${NOTES[$m]}"
        fi
    done
    echo
    printf '| step |'
    for m in "${MODULES[@]}"; do printf ' %s |' "$m"; done
    printf '\n|---|'
    for m in "${MODULES[@]}"; do printf -- '---|'; done
    printf '\n'
    for s in "${STEPS[@]}"; do
        printf '| %s |' "$s"
        for m in "${MODULES[@]}"; do printf ' %s |' "$(cell "$m" "$s")"; done
        printf '\n'
    done
    echo
    if ((${#UNEXPECTED[@]})); then
        echo "Unexpected (these fail the run):"
        printf -- '- %s\n' "${UNEXPECTED[@]}"
    fi
    if ((${#FLIPS[@]})); then
        echo "Now passing although expected otherwise$( ((STRICT)) && echo ' (--strict: these fail the run)'):"
        printf -- '- %s\n' "${FLIPS[@]}"
    fi
} >"$OUT"
{
    printf 'module\tstep\texpected\tresult\tdetail\n'
    for m in "${MODULES[@]}"; do
        for s in "${STEPS[@]}"; do
            printf '%s\t%s\t%s\t%s\t%s\n' "$m" "$s" "${EXP[$m/$s]:-pass}" "${RES[$m/$s]}" "${DET[$m/$s]}"
        done
    done
} >"$OUT.tsv"

echo
cat "$OUT"
echo "hsm-matrix: table in $OUT, every cell's detail in $OUT.tsv"

rc=0
((${#UNEXPECTED[@]} == 0)) || rc=1
((STRICT == 0 || ${#FLIPS[@]} == 0)) || rc=1
if ((REQUIRE_ALL)) && ((${#UNAVAILABLE[@]})); then
    echo "hsm-matrix: --require-all: ${!UNAVAILABLE[*]} unavailable"
    rc=1
fi
echo "hsm-matrix: $( ((rc == 0)) && echo OK || echo FAILED) (${#UNEXPECTED[@]} unexpected, ${#FLIPS[@]} to flip, ${#UNAVAILABLE[@]} modules unavailable)"
exit "$rc"
