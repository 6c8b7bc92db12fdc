#!/usr/bin/env bash
# Key custody walkthrough (the first demo): a throwaway SoftHSM2 token driven by the offline
# admin tool, checked by OpenSC's pkcs11-tool. bash tests/demo/custody.sh BUILD_DIR


# $1 = build dir.
set -euo pipefail
build=${1:?build dir}
tool="$build/appliance/cipherdex-hsm"
module=/usr/lib/softhsm/libsofthsm2.so
dir=$(mktemp -d "${TMPDIR:-/tmp}/cipherdex-demo.XXXXXX")
trap 'rm -rf "$dir"' EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "A throwaway SoftHSM2 token in $dir"
mkdir -p "$dir/tokens"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$dir" >"$dir/softhsm2.conf"
export SOFTHSM2_CONF="$dir/softhsm2.conf"
pin=$(openssl rand -hex 8)
so=$(openssl rand -hex 8)
# softhsm2-util only takes PINs on its command line; this token lives for a minute.
softhsm2-util --init-token --free --label cipherdex-demo --pin "$pin" --so-pin "$so" >/dev/null
install -m 0600 /dev/null "$dir/pin"
printf '%s' "$pin" >"$dir/pin"
cat >"$dir/cipherdex.conf" <<CONF
[hsm]
module = $module
token = pkcs11:token=cipherdex-demo
pin = file:$dir/pin
CONF
hsm() { CDX_LOG_LEVEL=warn "$tool" --config "$dir/cipherdex.conf" "$@"; }

step "Tokens the module shows"
hsm tokens

step "The deployment's root key (generated on the token)"
hsm root create --deployment-id "$(openssl rand -hex 16)"

step "An index key generated on the token"
gen_id=$(openssl rand -hex 16)
hsm index generate --id "$gen_id"

step "An index key imported from a key file (openssl rand -base64 32)"
openssl rand -base64 32 >"$dir/index_key.txt"
imp_id=$(openssl rand -hex 16)
hsm index import --id "$imp_id" --key-file "$dir/index_key.txt"
rm -f "$dir/index_key.txt"

step "A KMS-style data key unwrapped with a KEK on the token (RFC 5649)"
openssl rand -hex 32 >"$dir/kek.hex"
xxd -r -p "$dir/kek.hex" | openssl base64 -A >"$dir/kek.b64"
hsm kek import kms --key-file "$dir/kek.b64"
openssl rand 32 >"$dir/dek.bin"
openssl enc -id-aes256-wrap-pad -K "$(cat "$dir/kek.hex")" -iv A65959A6 -in "$dir/dek.bin" -out "$dir/dek.wrapped"
rm -f "$dir/kek.hex" "$dir/kek.b64" "$dir/dek.bin"
unw_id=$(openssl rand -hex 16)
hsm index unwrap --id "$unw_id" --kek kms --wrapped "$dir/dek.wrapped"

step "What an auditor sees: every key sensitive, not extractable, not derivable/modifiable/copyable"
hsm keys

step "The same keys through OpenSC's pkcs11-tool"
PIN_FOR_P11TOOL="$pin" pkcs11-tool --module "$module" --token-label cipherdex-demo \
    --login --pin env:PIN_FOR_P11TOOL --list-objects --type secrkey 2>/dev/null

step "The value cannot be read out (pkcs11-tool --read-object)"
if PIN_FOR_P11TOOL="$pin" pkcs11-tool --module "$module" --token-label cipherdex-demo --login \
    --pin env:PIN_FOR_P11TOOL --read-object --type secrkey --label "cipherdex-index-$gen_id" \
    >/dev/null 2>"$dir/read.err"; then
    echo "UNEXPECTED: the key value was readable" >&2
    exit 1
fi
echo "refused: $(grep -m1 -o "CKR_[A-Z_]*\|sensitive[^.]*" "$dir/read.err" || tail -1 "$dir/read.err")"

step "Crypto-shredding: destroy the imported index key"
hsm index destroy --id "$imp_id" --yes
hsm index kcv --id "$imp_id" || echo "(as expected: the key is gone)"

step "Done"
echo "demo: OK"
