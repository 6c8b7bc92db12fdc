# shellcheck shell=bash
# The M_* variables are read by run_matrix.sh, which sources this file.
# shellcheck disable=SC2034
# Module fixtures of the PKCS#11 matrix, sourced by run_matrix.sh.
#
# mod_<name>_up DIR brings one token up under DIR and sets:
#   M_MODULE     the PKCS#11 module path
#   M_LABEL      the token label (the URI is pkcs11:token=<label, percent-encoded>)
#   M_PIN_FILE   the user PIN, mode 0600, no newline
#   M_INIT_ARGS  C_Initialize pReserved string ("" = none)
#   M_NEEDS      [hsm] keys the module needs beyond module/token/pin: "init_args copyable"
#   M_ENV        VAR=VALUE words the token's clients need (exported while the module runs)
#   M_NOTE       one line for the report (versions, what the fixture did)
# and returns 0; or returns 1 with M_UNAVAILABLE set (the column is then skipped).
# mod_<name>_down stops what mod_<name>_up started (by pid) and is safe to call twice.
# Everything started is also listed in $MATRIX_PIDS_FILE ("pid what"), which the matrix's
# EXIT trap stops if a module's down never ran.

SOFTHSM_MODULE=/usr/lib/softhsm/libsofthsm2.so
P11KIT_CLIENT=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
OCK_MODULE=/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so
NSS_MODULE=/usr/lib/x86_64-linux-gnu/libsoftokn3.so
# opencryptoki's soft token ships with SO PIN 87654321 and PIN length 4-8. The fixture keeps the
# default SO PIN: on 3.8.1, C_InitToken on a token whose SO PIN was changed leaves the SO unable
# to log in (CKR_FUNCTION_FAILED, seen 2026-12-05), and the fixture re-initialises every run.
OCK_SO_PIN=87654321
OCK_LABEL=cdx-matrix

mod_reset() {
    M_MODULE="" M_LABEL="" M_PIN_FILE="" M_INIT_ARGS="" M_NEEDS="" M_NOTE="" M_UNAVAILABLE=""
    M_ENV=()
}

# random_hex N: N hex digits.
random_hex() {
    od -An -N"$(($1 / 2))" -tx1 /dev/urandom | tr -d ' \n'
}

track_pid() { echo "$1 $2" >>"$MATRIX_PIDS_FILE"; }
untrack_pid() {
    local tmp="$MATRIX_PIDS_FILE.tmp"
    awk -v p="$1" '$1 != p' "$MATRIX_PIDS_FILE" >"$tmp" && mv "$tmp" "$MATRIX_PIDS_FILE"
}

# stop_pid PID: TERM, wait up to 10 s, then KILL; also the children it forked (p11-kit server
# forks one p11-kit-remote per connection).
stop_pid() {
    local pid="$1" i
    [[ -n "$pid" ]] || return 0
    pkill -TERM -P "$pid" 2>/dev/null || true
    if kill -TERM "$pid" 2>/dev/null; then
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    untrack_pid "$pid"
}

# poll SECONDS CMD...: run CMD every 0.1 s until it succeeds; 1 if the deadline passes.
poll() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

# ---- SoftHSM2: a throwaway token, as every suite uses -----------------------------------------

softhsm_token() { # softhsm_token DIR LABEL: token + softhsm2.conf + user.pin under DIR
    local dir="$1" label="$2" pin so
    mkdir -p "$dir/tokens"
    printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' \
        "$dir/tokens" >"$dir/softhsm2.conf"
    pin="$(random_hex 16)" so="$(random_hex 16)"
    (umask 077 && printf '%s' "$pin" >"$dir/user.pin")
    # softhsm2-util reads PINs only from a terminal or argv: throwaway PINs on argv.
    SOFTHSM2_CONF="$dir/softhsm2.conf" softhsm2-util --init-token --free --label "$label" \
        --pin "$pin" --so-pin "$so" >"$dir/init.log" 2>&1
}

mod_softhsm_up() {
    local dir="$1"
    mod_reset
    [[ -f "$SOFTHSM_MODULE" ]] || { M_UNAVAILABLE="$SOFTHSM_MODULE missing (package softhsm2)"; return 1; }
    softhsm_token "$dir" cdx-matrix-shsm || { M_UNAVAILABLE="softhsm2-util --init-token failed: $(tail -n1 "$dir/init.log")"; return 1; }
    M_MODULE="$SOFTHSM_MODULE" M_LABEL=cdx-matrix-shsm M_PIN_FILE="$dir/user.pin"
    M_ENV=("SOFTHSM2_CONF=$dir/softhsm2.conf")
    M_NOTE="softhsm2 $(dpkg-query -W -f='${Version}' softhsm2 2>/dev/null), fresh token"
}
mod_softhsm_down() { :; }

# ---- SoftHSM behind `p11-kit server` (network-HSM simulation) ---------------------------------

P11KIT_PID=""
mod_p11kit_remote_up() {
    local dir="$1" sock
    mod_reset
    command -v p11-kit >/dev/null || { M_UNAVAILABLE="p11-kit not installed"; return 1; }
    [[ -f "$P11KIT_CLIENT" ]] || { M_UNAVAILABLE="$P11KIT_CLIENT missing (package p11-kit-modules)"; return 1; }
    [[ -f "$SOFTHSM_MODULE" ]] || { M_UNAVAILABLE="$SOFTHSM_MODULE missing (package softhsm2)"; return 1; }
    softhsm_token "$dir" cdx-matrix-remote || { M_UNAVAILABLE="softhsm2-util --init-token failed"; return 1; }
    sock="$dir/p11kit.sock"
    if ((${#sock} > 100)); then # sun_path holds 108 bytes
        sock="$(mktemp -u /tmp/cdx-p11kit.XXXXXX).sock"
    fi
    # The server (and the p11-kit-remote it forks per connection) sees SoftHSM's conf; the
    # clients see only the socket address.
    SOFTHSM2_CONF="$dir/softhsm2.conf" p11-kit server -f --provider "$SOFTHSM_MODULE" \
        -n "$sock" "pkcs11:token=cdx-matrix-remote" >"$dir/p11kit-server.log" 2>&1 &
    P11KIT_PID=$!
    track_pid "$P11KIT_PID" "p11-kit server"
    if ! poll 20 test -S "$sock"; then
        M_UNAVAILABLE="p11-kit server did not create $sock within 20 s: $(tail -n1 "$dir/p11kit-server.log")"
        mod_p11kit_remote_down
        return 1
    fi
    P11KIT_SOCK="$sock"
    M_MODULE="$P11KIT_CLIENT" M_LABEL=cdx-matrix-remote M_PIN_FILE="$dir/user.pin"
    M_ENV=("P11_KIT_SERVER_ADDRESS=unix:path=$sock")
    M_NOTE="p11-kit $(dpkg-query -W -f='${Version}' p11-kit 2>/dev/null) server (pid $P11KIT_PID) on $sock, providing SoftHSM"
}
mod_p11kit_remote_down() {
    stop_pid "$P11KIT_PID"
    P11KIT_PID=""
    [[ -z "${P11KIT_SOCK:-}" ]] || rm -f "$P11KIT_SOCK"
}

# ---- opencryptoki soft token (system daemon pkcsslotd, system token) --------------------------

OCK_SLOTD_PID="" OCK_LOCK_FD=""
mod_opencryptoki_up() {
    local dir="$1" slot info label flags tmp pin
    mod_reset
    if [[ ! -f "$OCK_MODULE" ]] || ! command -v pkcsslotd >/dev/null || ! command -v pkcsconf >/dev/null; then
        M_UNAVAILABLE="opencryptoki not installed (./run deps)"
        return 1
    fi
    [[ "$(id -u)" == 0 ]] ||
        { M_UNAVAILABLE="needs root (pkcsslotd, the system token in /var/lib/opencryptoki)"; return 1; }
    # One matrix at a time owns the system token.
    exec {OCK_LOCK_FD}>"/run/lock/cdx-hsm-matrix-ock.lock"
    flock -w 300 "$OCK_LOCK_FD" || { M_UNAVAILABLE="another matrix holds /run/lock/cdx-hsm-matrix-ock.lock"; return 1; }
    # pkcsconf answers only while a pkcsslotd runs (a zombie one does not count).
    if pkcsconf -s >/dev/null 2>&1; then
        M_NOTE="pkcsslotd already running (left running)"
    else
        # The package's unit is Type=forking; -f keeps it our child, so we stop it by its pid.
        pkcsslotd -f >"$dir/pkcsslotd.log" 2>&1 &
        OCK_SLOTD_PID=$!
        track_pid "$OCK_SLOTD_PID" pkcsslotd
        M_NOTE="started pkcsslotd (pid $OCK_SLOTD_PID)"
    fi
    if ! poll 20 pkcsconf -s; then
        M_UNAVAILABLE="pkcsslotd did not answer within 20 s (pkcsconf -s): $(tail -n1 "$dir/pkcsslotd.log" 2>/dev/null)"
        mod_opencryptoki_down
        return 1
    fi
    # The soft token's slot: the one whose token model is "IBM SoftTok" (slot 3 by default).
    pkcsconf -t >"$dir/pkcsconf-t.txt" 2>&1 || true
    slot="$(awk '/^Token #[0-9]+ Info:/{s=$2; sub(/#/,"",s); sub(/:/,"",s)} /Model: IBM SoftTok/{print s; exit}' "$dir/pkcsconf-t.txt")"
    if [[ -z "$slot" ]]; then
        M_UNAVAILABLE="no IBM SoftTok token in pkcsconf -t (is slot 3 libpkcs11_sw.so in /etc/opencryptoki/opencryptoki.conf?)"
        mod_opencryptoki_down
        return 1
    fi
    info="$(pkcsconf -t -c "$slot" 2>&1)"
    label="$(sed -n 's/^[[:space:]]*Label: *//p' <<<"$info" | sed 's/[[:space:]]*$//')"
    flags="$(sed -n 's/^[[:space:]]*Flags: *//p' <<<"$info")"
    # Never touch a token someone else initialised: only an uninitialised one or our own.
    if [[ "$flags" == *TOKEN_INITIALIZED* && "$label" != "$OCK_LABEL" ]]; then
        M_UNAVAILABLE="slot $slot holds token '$label', not the fixture's ($OCK_LABEL): left alone"
        mod_opencryptoki_down
        return 1
    fi
    # Fresh every run: C_InitToken wipes the objects and the user PIN (label read from stdin),
    # then the SO sets a temporary user PIN and the user changes it (opencryptoki flags a PIN set
    # by the SO as to-be-changed). PINs 8 characters (the token allows 4-8).
    tmp="$(random_hex 8)" pin="$(random_hex 8)"
    if ! printf '%s\n' "$OCK_LABEL" | pkcsconf -I -c "$slot" -S "$OCK_SO_PIN" >"$dir/pkcsconf-init.log" 2>&1 ||
        ! pkcsconf -u -c "$slot" -S "$OCK_SO_PIN" -n "$tmp" >>"$dir/pkcsconf-init.log" 2>&1 ||
        ! pkcsconf -p -c "$slot" -U "$tmp" -n "$pin" >>"$dir/pkcsconf-init.log" 2>&1; then
        M_UNAVAILABLE="pkcsconf could not initialise slot $slot with SO PIN $OCK_SO_PIN: $(grep -v '^Enter' "$dir/pkcsconf-init.log" | tail -n1)"
        mod_opencryptoki_down
        return 1
    fi
    (umask 077 && printf '%s' "$pin" >"$dir/user.pin")
    M_MODULE="$OCK_MODULE" M_LABEL="$OCK_LABEL" M_PIN_FILE="$dir/user.pin" M_NEEDS="copyable"
    M_NOTE="opencryptoki $(dpkg-query -W -f='${Version}' opencryptoki 2>/dev/null), slot $slot re-initialised; $M_NOTE"
}
mod_opencryptoki_down() {
    if [[ -n "$OCK_SLOTD_PID" ]]; then
        stop_pid "$OCK_SLOTD_PID"
        OCK_SLOTD_PID=""
    fi
    if [[ -n "$OCK_LOCK_FD" ]]; then
        exec {OCK_LOCK_FD}>&-
        OCK_LOCK_FD=""
    fi
}

# ---- NSS softokn, loaded directly with init args ----------------------------------------------

mod_nss_up() {
    local dir="$1" pin
    mod_reset
    [[ -f "$NSS_MODULE" ]] || { M_UNAVAILABLE="$NSS_MODULE missing (package libnss3)"; return 1; }
    command -v certutil >/dev/null || { M_UNAVAILABLE="certutil missing (package libnss3-tools)"; return 1; }
    mkdir -p "$dir/nssdb"
    pin="$(random_hex 16)"
    (umask 077 && printf '%s' "$pin" >"$dir/user.pin")
    if ! certutil -N -d "sql:$dir/nssdb" -f "$dir/user.pin" >"$dir/certutil.log" 2>&1; then
        M_UNAVAILABLE="certutil -N failed: $(tail -n1 "$dir/certutil.log")"
        return 1
    fi
    M_MODULE="$NSS_MODULE" M_LABEL="NSS Certificate DB" M_PIN_FILE="$dir/user.pin"
    M_INIT_ARGS="configdir='sql:$dir/nssdb' certPrefix='' keyPrefix='' secmod='secmod.db' flags="
    M_NEEDS="init_args copyable"
    M_NOTE="NSS $(dpkg-query -W -f='${Version}' libnss3 2>/dev/null) softokn, fresh sql: database"
}
mod_nss_down() { :; }
