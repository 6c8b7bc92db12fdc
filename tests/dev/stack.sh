#!/usr/bin/env bash
# Dev stack: ./run up DIR [--store redis|memory] [--allow-plaintext-import] / ./run down DIR
# (README "Dev stack").
#   stack.sh up BUILD_DIR DIR [--store redis|memory] [--allow-plaintext-import]
#   stack.sh down DIR
# Everything lives under DIR: a throwaway SoftHSM token, a throwaway CA with server
# and client certificates, redis-server (AOF with appendfsync always: cipherdexd refuses
# weaker settings; loopback, unauthenticated), cipherdexd on free loopback ports, their logs,
# and DIR/cipherdex.env to source.
set -euo pipefail

die() { echo "stack: $*" >&2; exit 1; }

free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for SECONDS CMD...: run CMD until it succeeds or the deadline passes.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

cmd_up() {
    local build="$1" dir="$2"
    shift 2
    local store=redis import=no
    while (($#)); do
        case "$1" in
        --store) store="${2:-}"; shift ;;
        --allow-plaintext-import) import=yes ;;
        *) die "up: unknown option '$1' (usage: ./run up DIR [--store redis|memory]" \
            "[--allow-plaintext-import])" ;;
        esac
        shift
    done
    [[ "$store" == redis || "$store" == memory ]] || die "--store is redis or memory"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    [[ ! -e "$dir/pids" ]] || die "$dir is already up; ./run down $dir first"
    umask 077

    # Token: a fresh SoftHSM token in DIR. softhsm2-util takes PINs only on its command line,
    # so the throwaway PINs of this dev token are visible to local `ps` for a moment.
    export SOFTHSM2_CONF="$dir/softhsm2.conf"
    mkdir -p "$dir/tokens"
    printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' \
        "$dir/tokens" >"$SOFTHSM2_CONF"
    local pin sopin
    pin="$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
    sopin="$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
    printf '%s' "$pin" >"$dir/user.pin"
    softhsm2-util --init-token --free --label cipherdex-dev --pin "$pin" --so-pin "$sopin" \
        >"$dir/softhsm2-init.log"
    unset pin sopin

    # PKI: CA, server certificate (127.0.0.1, ::1, localhost), admin client certificate.
    "$build/tests/fixtures/fx_pki_tool" "$dir/pki" >"$dir/pki.txt"
    local principal
    principal="$(sed -n 's/^client_principal=//p' "$dir/pki.txt")"

    : >"$dir/pids"
    local redis_line="" redis_addr=""
    if [[ "$store" == redis ]]; then
        local rport
        rport="$(free_port)"
        mkdir -p "$dir/redis"
        redis-server --port "$rport" --bind 127.0.0.1 --protected-mode yes --dir "$dir/redis" \
            --appendonly yes --appendfsync always --save "" --daemonize no \
            --logfile "$dir/redis.log" &
        echo "redis $!" >>"$dir/pids"
        wait_for 20 redis-cli -p "$rport" ping || die "redis-server did not start (see $dir/redis.log)"
        redis_addr="127.0.0.1:$rport"
        redis_line="redis = $redis_addr"
    fi

    local dep
    dep="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
    # Who may do what (docs/POLICY.md): the dev admin certificate administers everything.
    cat >"$dir/policy.ini" <<POLICY
; Dev stack policy written by ./run up (docs/POLICY.md). Grant applications here, e.g.
; [index docs-*]
; read = uri:spiffe://cipherdex/my-app
; write = uri:spiffe://cipherdex/my-app
[appliance]
admins = uri:$principal
POLICY
    cat >"$dir/cipherdexd.conf" <<CONF
# Dev stack configuration written by ./run up (docs/CONFIG.md).
[server]
listen = 127.0.0.1:0
ports_file = $dir/ports
tls_cert = $dir/pki/server.pem
tls_key = $dir/pki/server.key
client_ca = $dir/pki/ca.pem
policy = $dir/policy.ini
# SoftHSM is a software token: fine for a dev stack, degraded in /healthz anywhere else.
allow_software_token = yes
deployment_id = $dep

[hsm]
module = $(ls /usr/lib/softhsm/libsofthsm2.so)
token = pkcs11:token=cipherdex-dev
pin = file:$dir/user.pin
# Dev machines often cap locked memory low; production keeps this off.
allow_unlocked_memory = yes

[keys]
subkey_ttl_ms = 60000
# --allow-plaintext-import: \`cipherdex index create NAME --key-file F\` (development only).
allow_plaintext_import = $import

[store]
backend = $store
$redis_line

[cache]
bytes = 1G

[state]
dir = $dir/state

[metrics]
listen = 127.0.0.1:0
CONF
    "$build/appliance/cipherdexd" --check-config "$dir/cipherdexd.conf" >/dev/null

    start_daemon "$build" "$dir" "$redis_addr"
    local api metrics
    api="$(sed -n 's/^api=//p' "$dir/ports")"
    metrics="$(sed -n 's/^metrics=//p' "$dir/ports")"
    echo "stack up in $dir: cipherdexd $api (metrics $metrics), store $store${redis_addr:+ at $redis_addr}"
    echo "  source $dir/cipherdex.env; \$CIPHERDEX_CLI health"
}

# cipherdexd on $dir/cipherdexd.conf; its addresses into $dir/cipherdex.env.
start_daemon() {
    local build="$1" dir="$2" redis_addr="$3"
    rm -f "$dir/ports"
    "$build/appliance/cipherdexd" --config "$dir/cipherdexd.conf" >"$dir/cipherdexd.log" 2>&1 &
    local dpid=$!
    echo "cipherdexd $dpid" >>"$dir/pids"
    wait_for 60 test -s "$dir/ports" || {
        tail -n 20 "$dir/cipherdexd.log" >&2
        die "cipherdexd did not start (log: $dir/cipherdexd.log)"
    }
    local api metrics
    api="$(sed -n 's/^api=//p' "$dir/ports")"
    metrics="$(sed -n 's/^metrics=//p' "$dir/ports")"
    cat >"$dir/cipherdex.env" <<ENV
# source this file: the dev stack in $dir
export CIPHERDEX_ADDR=$api
export CIPHERDEX_CA=$dir/pki/ca.pem
export CIPHERDEX_CERT=$dir/pki/client.pem
export CIPHERDEX_KEY=$dir/pki/client.key
# An application certificate (uri:spiffe://cipherdex/dev-app) that policy.ini grants nothing yet.
export CIPHERDEX_APP_CERT=$dir/pki/app.pem
export CIPHERDEX_APP_KEY=$dir/pki/app.key
export CIPHERDEX_METRICS=$metrics
export CIPHERDEX_REDIS=$redis_addr
export SOFTHSM2_CONF=$dir/softhsm2.conf
export CIPHERDEX_HSM_MODULE=$(ls /usr/lib/softhsm/libsofthsm2.so)
export CIPHERDEX_TOKEN_LABEL=cipherdex-dev
export CIPHERDEX_PIN_FILE=$dir/user.pin
export CIPHERDEX_CLI=$build/appliance/cipherdex
ENV
}

# Stop cipherdexd alone and start it again on the (possibly edited) configuration.
cmd_restart() {
    local build="$1" dir="$2" name pid
    [[ -f "$dir/pids" ]] || die "$dir has no running stack"
    while read -r name pid; do
        [[ "$name" == "cipherdexd" ]] || continue
        if kill -TERM "$pid" 2>/dev/null; then
            wait_for 60 bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
        fi
    done <"$dir/pids"
    sed -i '/^cipherdexd /d' "$dir/pids"
    export SOFTHSM2_CONF="$dir/softhsm2.conf" # the stack's token, whatever the caller's shell has
    "$build/appliance/cipherdexd" --check-config "$dir/cipherdexd.conf" >/dev/null
    # shellcheck disable=SC1091
    start_daemon "$build" "$dir" "$(. "$dir/cipherdex.env"; echo "$CIPHERDEX_REDIS")"
    echo "cipherdexd restarted in $dir: $(sed -n 's/^api=//p' "$dir/ports")"
}

cmd_down() {
    local dir="$1"
    [[ -f "$dir/pids" ]] || die "$dir has no running stack"
    local name pid
    # cipherdexd first (SIGTERM drains in-flight requests), then redis.
    for want in cipherdexd redis; do
        while read -r name pid; do
            [[ "$name" == "$want" ]] || continue
            if kill -TERM "$pid" 2>/dev/null; then
                wait_for 60 bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
            fi
        done <"$dir/pids"
    done
    rm -f "$dir/pids" "$dir/ports"
    echo "stack down: $dir"
}

case "${1:-}" in
up) shift; (($# >= 2)) || die "usage: stack.sh up BUILD_DIR DIR [--store redis|memory]"; cmd_up "$@" ;;
down) shift; (($# == 1)) || die "usage: stack.sh down DIR"; cmd_down "$1" ;;
restart) shift; (($# == 2)) || die "usage: stack.sh restart BUILD_DIR DIR"; cmd_restart "$1" "$2" ;;
*) die "usage: stack.sh up BUILD_DIR DIR [--store redis|memory] | restart BUILD_DIR DIR | down DIR" ;;
esac
