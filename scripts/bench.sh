#!/usr/bin/env bash
# End-to-end signing throughput against the raw PKCS#11 signing loop, in one run on the same
# SoftHSM2 token (signerd/e2e BenchmarkE2EVsRaw): signed guarantees per second through the agent
# socket of a real signerd process (policy, durable ledger on disk, HSM, recovery) versus bare
# C_SignInit+C_Sign in the benchmark process, at concurrency 1, 2 and 4.
# Prints ops/s and p50 for each side, the ratio and the added p50 latency per concurrency, appends
# the figures to docs/performance.md, and ends with `ratio=<min ratio>` (durable ledger on disk).
# It also measures, in the same run, what the mandated work costs on this machine (fdatasync of a
# preallocated file beside the ledger, one secp256k1 recovery) and prints, per concurrency, the
# best ratio any implementation could reach with it (the "ceiling" column; see floor_test.go).
# BENCH_OPS (default 1500) sets the operations per side and concurrency. BENCH_TMPFS=1 adds an
# informative second run with the ledger on /dev/shm (no fsync cost; not durable, not the figure).
set -euo pipefail
cd "$(dirname "$0")/.."
export CGO_ENABLED=1
ops=${BENCH_OPS:-1500}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

header="| concurrency | end-to-end ops/s | raw C_Sign ops/s | ratio | e2e p50 µs | raw p50 µs | added p50 µs | ceiling: latency / CPU |
|---|---|---|---|---|---|---|---|"

# run STATE_PARENT: runs the benchmark and leaves the BENCHROW lines in $out.
run() {
  echo "bench: BenchmarkE2EVsRaw, ledger under ${1:-the test directory (disk)}, BENCH_OPS=$ops" >&2
  SIGNERD_BENCH_STATE_DIR=${1:-} BENCH_OPS=$ops go test -count=1 -run '^$' -bench '^BenchmarkE2EVsRaw$' -benchtime 1x ./signerd/e2e >"$out" 2>&1 || {
    cat "$out" >&2
    echo "bench: benchmark failed" >&2
    exit 1
  }
  grep -q '^BENCHROW' "$out" || { cat "$out" >&2; echo "bench: no figures" >&2; exit 1; }
}
table() {
  awk '/^BENCHROW/ {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    printf "| %s | %s | %s | %s | %s | %s | %s | %s / %s |\n", v["conc"], v["e2e_ops_s"], v["raw_ops_s"], v["ratio"], v["e2e_p50_us"], v["raw_p50_us"], v["added_p50_us"], v["lat_ceiling"], v["cpu_ceiling"]
  }' "$out"
}

run ""
disk=$(table)
floor=$(sed -n 's/^FLOORROW //p' "$out")
min=$(awk '/^BENCHROW/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "ratio") r = kv[2] } if (m == "" || r + 0 < m + 0) m = r } END { print m }' "$out")
load=$(cut -d' ' -f1-3 /proc/loadavg)
tmpfs=""
if [ "${BENCH_TMPFS:-0}" = 1 ] && [ -d /dev/shm ]; then
  run /dev/shm
  tmpfs=$(table)
fi

echo
echo "durable ledger on disk:"
echo "$header"
echo "$disk"
echo
echo "mandated work measured in the same run: $floor"
echo "(ceiling = best ratio any implementation could reach with two fdatasync'd writes and two recoveries"
echo " per signature: latency = raw p50 / (raw p50 + added_floor), CPU = raw CPU / (raw CPU + mandated CPU))"
if [ -n "$tmpfs" ]; then
  echo
  echo "informative — ledger on tmpfs (/dev/shm), fsync free, NOT durable:"
  echo "$header"
  echo "$tmpfs"
fi
echo

when=$(date -u +%Y-%m-%dT%H:%MZ)
{
  [ -f docs/performance.md ] || printf '# Performance\n\nMeasured figures, each with the command that produced it.\n'
  printf '\n### scripts/bench.sh run %s (BENCH_OPS=%s, %s cores, load average %s)\n\n' "$when" "$ops" "$(nproc)" "$load"
  echo "Durable ledger on disk:"
  echo
  echo "$header"
  echo "$disk"
  printf '\nMandated work measured in the same run: %s\n' "$floor"
  if [ -n "$tmpfs" ]; then
    printf '\nInformative, ledger on tmpfs (not durable):\n\n'
    echo "$header"
    echo "$tmpfs"
  fi
  printf '\nmin ratio (disk) = %s\n' "$min"
} >>docs/performance.md
echo "bench: figures appended to docs/performance.md" >&2
echo "ratio=$min"
