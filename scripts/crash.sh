#!/usr/bin/env bash
# Runs signerd's SIGKILL crash test (signerd/e2e, TestCrashKeepsIntentsAndResignsWithoutRecharge)
# at full size: CRASH_KILLS SIGKILLs (default 100) of a real signerd process on a SoftHSM2 token
# under load from CRASH_CLIENTS concurrent clients (default 16). `go test ./...` runs the same
# test with 20 kills. About 2.5 minutes for 100 kills on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -e /usr/lib/softhsm/libsofthsm2.so ]; then
  echo "crash: SoftHSM2 is not installed (the e2e tests would skip): run make setup" >&2
  exit 1
fi
export CRASH_KILLS=${CRASH_KILLS:-100} CRASH_CLIENTS=${CRASH_CLIENTS:-16}
echo "crash: $CRASH_KILLS SIGKILLs, $CRASH_CLIENTS clients" >&2
exec go test -count=1 -timeout "${CRASH_TIMEOUT:-60m}" -v \
  -run '^TestCrashKeepsIntentsAndResignsWithoutRecharge$' ./signerd/e2e
