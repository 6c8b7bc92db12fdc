#!/bin/sh
# Verify a Cipherdex attestation statement with the openssl command line and coreutils only: the
# commands of docs/ATTESTATION.md "Verifying with openssl", run by test_attest on good statements
# and on forged, replayed, stale, claim-edited and wrong-key ones.
#
#   attest_openssl.sh EVIDENCE.der ATTEST_PUBKEY.pem WORKDIR [NONCE_HEX [MAX_AGE_SECONDS]]
#
# Exit 0 when the signature verifies with the key, the statement names that key, and (when
# given) it answers NONCE_HEX and is at most MAX_AGE_SECONDS old (60 s of clock skew allowed).
# The claims are left in WORKDIR/claims.txt.
set -eu
ev=$1 pub=$2 d=$3 nonce=${4:-} max_age=${5:-}
here=$(dirname "$0")
arc=2.25.144211767722024654500488149802296319553

# 1. Read the claims (OIDs in docs/ATTESTATION.md).
openssl asn1parse -inform DER -in "$ev" -i > "$d/claims.txt"
sh "$here/attest_claims.sh" "$ev" > "$d/values.txt"

# 2. The signed bytes: the TBS is the first element of the outer SEQUENCE, header included.
#    asn1parse's second line is it: "OFFSET:d=1  hl=HL l=LEN cons: SEQUENCE".
set -- $(openssl asn1parse -inform DER -in "$ev" | sed -n 2p | tr ':=' '  ')
off=$1 hl=$5 len=$7
tail -c +$((off + 1)) "$ev" | head -c $((hl + len)) > "$d/tbs.der"

# 3. The signature: the only OCTET STRING at depth 3 (SignatureBlock.signatureValue); its
#    contents are the DER ECDSA-Sig-Value.
set -- $(openssl asn1parse -inform DER -in "$ev" | grep 'd=3 .*prim: OCTET STRING' | tr ':=' '  ')
off=$1 hl=$5 len=$7
tail -c +$((off + hl + 1)) "$ev" | head -c "$len" > "$d/sig.der"

# 4. Verify: ECDSA P-256 with SHA-256 over the TBS bytes.
openssl dgst -sha256 -verify "$pub" -signature "$d/sig.der" "$d/tbs.der"

# 5. The statement names this key: attestation_key_id = SHA-256 of its SubjectPublicKeyInfo.
kid=$(openssl pkey -pubin -in "$pub" -outform DER | openssl dgst -sha256 -r | cut -d' ' -f1)
grep -qx "$arc\.1\.0\.20 \[0\] $kid" "$d/values.txt" || { echo "another attestation key"; exit 1; }

# 6. It answers our nonce.
if [ -n "$nonce" ]; then
    grep -qx "$arc\.1\.0\.0 \[0\] $nonce" "$d/values.txt" || { echo "another nonce"; exit 1; }
fi

# 7. It is fresh: the timestamp (GeneralizedTime YYYYMMDDHHMMSSZ) against our clock.
if [ -n "$max_age" ]; then
    t=$(sed -n "s/^$arc\.1\.0\.1 \[3\] [0-9a-f]* \"\([0-9]*\)Z\"\$/\1/p" "$d/values.txt")
    ts=$(date -u -d "$(echo "$t" | sed 's/^\(....\)\(..\)\(..\)\(..\)\(..\)\(..\)$/\1-\2-\3 \4:\5:\6/')" +%s)
    now=$(date -u +%s)
    if [ $((now - ts)) -gt "$max_age" ] || [ $((ts - now)) -gt 60 ]; then
        echo "stale: issued $t, now $(date -u +%Y%m%d%H%M%S)"
        exit 1
    fi
fi
echo "statement ok"
