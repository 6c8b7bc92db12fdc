#!/usr/bin/env bash
# ctest test_python_client: a dev stack (Redis store), the Python classes generated from
# proto/cipherdex.proto with protoc, then example.py against the live daemon.
# $1 = build dir, $2 = source dir.
set -euo pipefail
build=$(cd "${1:?build dir}" && pwd)
src=${2:?source dir}
command -v protoc >/dev/null || { echo "protoc missing (protobuf-compiler)"; exit 1; }
base=${CDX_TEST_TMP:-/tmp}
mkdir -p "$base"
dir=$(mktemp -d "$base/pyclient.XXXXXX")
trap 'bash "$src/tests/dev/stack.sh" down "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
bash "$src/tests/dev/stack.sh" up "$build" "$dir" --store redis
mkdir -p "$dir/gen"
protoc --python_out="$dir/gen" -I "$src/proto" "$src/proto/cipherdex.proto"
# shellcheck disable=SC1091
source "$dir/cipherdex.env"
PYTHONPATH="$dir/gen:$src/tests/clients/python" /usr/bin/python3 "$src/tests/clients/python/example.py"
# The retry helper across daemon kills (the script restarts the stack's daemon itself).
CIPHERDEX_STACK_DIR="$dir" CIPHERDEX_DAEMON="$build/appliance/cipherdexd" \
    PYTHONPATH="$dir/gen:$src/tests/clients/python" /usr/bin/python3 "$src/tests/clients/python/retry_test.py"
