#!/usr/bin/env bash
# Installs what signerd's build, demo and tests need on a Debian machine with Go, idempotently:
# SoftHSM2 and OpenSC (PKCS#11), swtpm (TPM 2.0 emulator), libssl-dev (go-tpm simulator),
# Node.js for the 4Mica conformance oracle, and the oracle's npm packages.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
oracle=${SIGNERD_ORACLE_DIR:-$here/../shared/oracle}

need=()
for p in softhsm2 opensc swtpm swtpm-tools libssl-dev gcc make; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "setup: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ -d "$oracle" ] && [ ! -d "$oracle/node_modules/@4mica" ]; then
  echo "setup: npm ci in $oracle" >&2
  (cd "$oracle" && npm ci --no-audit --no-fund >/dev/null)
fi
go mod download
