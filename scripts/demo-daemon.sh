#!/usr/bin/env bash
# One-command demo: start `signerd dev` in a temporary directory, run the demo agent against it
# (an x402 payment header and a signed 4Mica payment guarantee, both verified independently),
# then stop the daemon with SIGTERM. KEEP=1 keeps the directory (token, ledger, audit log).
set -euo pipefail
cd "$(dirname "$0")/.."
export CGO_ENABLED=1

work=$(mktemp -d "${TMPDIR:-/tmp}/signerd-demo.XXXXXX")
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [ "${KEEP:-0}" = 1 ]; then echo "demo: state kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

echo "demo: building signerd and the demo agent" >&2
go build -o "$work/bin/signerd" ./cmd/signerd
go build -o "$work/bin/demoagent" ./cmd/demoagent

echo "demo: starting signerd dev --dir $work/dev" >&2
"$work/bin/signerd" dev --dir "$work/dev" 2>"$work/signerd.log" &
pid=$!

for _ in $(seq 1 150); do
  [ -S "$work/dev/agent.sock" ] && break
  if ! kill -0 "$pid" 2>/dev/null; then echo "demo: signerd exited early:" >&2; cat "$work/signerd.log" >&2; exit 1; fi
  sleep 0.2
done
[ -S "$work/dev/agent.sock" ] || { echo "demo: agent socket never appeared" >&2; cat "$work/signerd.log" >&2; exit 1; }

"$work/bin/demoagent" --socket "$work/dev/agent.sock"

echo >&2
echo "demo: stopping signerd (SIGTERM)" >&2
kill -TERM "$pid"
status=0; wait "$pid" || status=$?
pid=""
sed 's/^/  signerd: /' "$work/signerd.log" >&2
if [ "$status" -ne 0 ]; then echo "demo: signerd exited with $status" >&2; exit 1; fi
echo "demo: signerd stopped cleanly" >&2
