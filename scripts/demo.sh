#!/usr/bin/env bash
# Offline protocol demo (no daemon; `make run` is scripts/demo-daemon.sh): builds signerctl into
# ./bin and, for the sample claims in testdata/claims, prints the digest Core verifies, the
# Core-ready PaymentGuaranteeRequest body (pre-signed with vector key 0x…02) and the verify result.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bin
go build -o bin/signerctl ./cmd/signerctl
ctl=./bin/signerctl
chain=84532 # EIP-712 domain: name 4mica, version 1, chain id 84532 (Base Sepolia)

for v in v1 v2; do
  echo "== guarantee $v (testdata/claims/claims-$v.json), domain 4mica/1/$chain"
  echo -n "digest eip712: "
  "$ctl" guarantee digest --chain-id "$chain" <"testdata/claims/claims-$v.json"
  echo -n "digest eip191: "
  "$ctl" guarantee digest --chain-id "$chain" --scheme eip191 <"testdata/claims/claims-$v.json"
  echo "Core-ready request body (POST /core/guarantees), testdata/claims/request-$v.json:"
  cat "testdata/claims/request-$v.json"
  echo -n "verify: "
  "$ctl" guarantee verify --chain-id "$chain" <"testdata/claims/request-$v.json"
  echo
done

echo "== tampered body (amount 0x1 -> 0x2) must be rejected:"
if sed 's/"amount": "0x1"/"amount": "0x2"/' testdata/claims/request-v1.json | "$ctl" guarantee verify --chain-id "$chain" 2>&1; then
  echo "demo: tampered request was accepted" >&2
  exit 1
fi
echo "demo: ok"
