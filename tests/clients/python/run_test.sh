#!/usr/bin/env bash
# ctest test_python_client: the cipherdex package (packaging/python, docs/PYTHON.md), installed
# the documented offline way into a fresh venv (pip builds it, running protoc on
# proto/cipherdex.proto), then against a dev stack (Redis store, an attestation key on the
# token): test_package.py (the package against the sources, a fake server and every operation
# of the live daemon with its error classes), example.py (the docs' example) and retry_test.py
# (retries across daemon kills). $1 = build dir, $2 = source dir.
set -euo pipefail
build=$(cd "${1:?build dir}" && pwd)
src=$(cd "${2:?source dir}" && pwd)
here="$src/tests/clients/python"
command -v protoc >/dev/null || { echo "protoc missing (protobuf-compiler)"; exit 1; }
/usr/bin/python3 -c 'import ensurepip, google.protobuf, setuptools, wheel' || {
    echo "missing Debian packages: python3-venv python3-protobuf python3-setuptools python3-wheel"
    exit 1
}
base=${CDX_TEST_TMP:-/tmp}
mkdir -p "$base"
dir=$(mktemp -d "$base/pyclient.XXXXXX")
trap 'bash "$src/tests/dev/stack.sh" down "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT

# The install of docs/PYTHON.md, offline, as on a fresh machine (no pip configuration, no
# index, no extra wheel directories); build outputs go to $dir, not into the source tree.
/usr/bin/python3 -m venv --system-site-packages "$dir/venv"
if ! env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
        CIPHERDEX_BUILD_BASE="$dir/pybuild" \
        "$dir/venv/bin/pip" install --no-build-isolation --no-index "$src/packaging/python" \
        >"$dir/pip.log" 2>&1; then
    cat "$dir/pip.log"
    exit 1
fi
py="$dir/venv/bin/python"
"$py" -c 'import cipherdex, sys; assert cipherdex.__file__.startswith(sys.prefix), cipherdex.__file__'

bash "$src/tests/dev/stack.sh" up "$build" "$dir" --store redis
# shellcheck disable=SC1091
source "$dir/cipherdex.env"
# An attestation key on the token; the daemon loads it at start.
"$build/appliance/cipherdex-hsm" --config "$dir/cipherdexd.conf" attest-key create >/dev/null
bash "$src/tests/dev/stack.sh" restart "$build" "$dir"
# shellcheck disable=SC1091
source "$dir/cipherdex.env"
export CIPHERDEX_PKI_TXT="$dir/pki.txt"

cd "$dir"   # nothing of the source tree on the import path but the scripts' own directory
"$py" "$here/test_package.py" "$src"
"$py" "$here/example.py"
CIPHERDEX_STACK_DIR="$dir" CIPHERDEX_DAEMON="$build/appliance/cipherdexd" "$py" "$here/retry_test.py"
