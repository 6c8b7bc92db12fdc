#!/bin/sh
# Verify a Cipherdex attestation statement with the openssl command line only: the commands of
# docs/ATTESTATION.md "Verifying with openssl", run by test_attest on good and bad statements.
#
#   attest_openssl.sh EVIDENCE.der ATTEST_PUBKEY.pem WORKDIR
#
# Exit 0 when the signature verifies; the claims are left in WORKDIR/claims.txt. Nonce and
# freshness are the verifier's to compare (the doc shows where they are).
set -eu
ev=$1 pub=$2 d=$3

# 1. Read the claims (OIDs in docs/ATTESTATION.md; -dump shows each value's bytes).
openssl asn1parse -inform DER -in "$ev" -i -dump > "$d/claims.txt"

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
