#!/bin/sh
# Print the claims of a Cipherdex attestation statement with openssl and coreutils only (the
# commands of docs/ATTESTATION.md "Reading the claims"), one line each: OID, value type (the
# AttributeValue tag: [0] bytes, [1] UTF8String, [2] BOOLEAN, [3] GeneralizedTime, [4] INTEGER),
# value in hex, and UTF8String and time values also as text; "-" for a claim without a value
# (the token did not report it). Run by test_attest.
#
#   attest_claims.sh EVIDENCE.der
set -eu
ev=$1
{ openssl asn1parse -inform DER -in "$ev"; echo END; } | while IFS= read -r line; do
    case $line in
    *"d=6"*OBJECT* | *"d=1"* | END)
        [ -n "${oid:-}" ] && printf '%s - -\n' "$oid" # the previous claim had no value
        oid=
        case $line in *"d=6"*OBJECT*) oid=${line##*:} ;; esac
        ;;
    *"d=6"*"prim: cont ["*)
        set -- $(echo "$line" | tr ':=[]' '    ')
        hex=$(tail -c +$(($1 + $5 + 1)) "$ev" | head -c "$7" | od -An -v -tx1 | tr -d ' \n')
        case ${10} in
        1 | 3) printf '%s [%s] %s "%s"\n' "$oid" "${10}" "$hex" \
                      "$(tail -c +$(($1 + $5 + 1)) "$ev" | head -c "$7")" ;;
        *) printf '%s [%s] %s\n' "$oid" "${10}" "$hex" ;;
        esac
        oid=
        ;;
    esac
done
