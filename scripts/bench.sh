#!/usr/bin/env bash
# End-to-end signing throughput against the raw PKCS#11 signing loop, in one run on the same
# SoftHSM2 token (signerd/e2e BenchmarkE2EVsRaw): signed guarantees per second through the agent
# socket of a real signerd process (policy, durable ledger, HSM, recovery) versus bare
# C_SignInit+C_Sign in the benchmark process, at concurrency 1, 2 and 4.
# Prints ops/s and p50 for each side, the ratio and the added p50 latency per concurrency, appends
# the figures to docs/performance.md, and ends with `ratio=<min ratio>`.
# BENCH_OPS (default 1500) sets the operations per side and concurrency.
set -euo pipefail
cd "$(dirname "$0")/.."
export CGO_ENABLED=1
ops=${BENCH_OPS:-1500}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

echo "bench: building and running BenchmarkE2EVsRaw (BENCH_OPS=$ops per side and concurrency)" >&2
BENCH_OPS=$ops go test -count=1 -run '^$' -bench '^BenchmarkE2EVsRaw$' -benchtime 1x ./signerd/e2e >"$out" 2>&1 || {
  cat "$out" >&2
  echo "bench: benchmark failed" >&2
  exit 1
}
grep -q '^BENCHROW' "$out" || { cat "$out" >&2; echo "bench: no figures" >&2; exit 1; }

table=$(awk '/^BENCHROW/ {
  for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
  printf "| %s | %s | %s | %s | %s | %s | %s |\n", v["conc"], v["e2e_ops_s"], v["raw_ops_s"], v["ratio"], v["e2e_p50_us"], v["raw_p50_us"], v["added_p50_us"]
}' "$out")
min=$(awk '/^BENCHROW/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "ratio") r = kv[2] } if (m == "" || r + 0 < m + 0) m = r } END { print m }' "$out")
header="| concurrency | end-to-end ops/s | raw C_Sign ops/s | ratio | e2e p50 µs | raw p50 µs | added p50 µs |
|---|---|---|---|---|---|---|"

echo
echo "$header"
echo "$table"
echo

when=$(date -u +%Y-%m-%dT%H:%MZ)
load=$(cut -d' ' -f1-3 /proc/loadavg)
{
  [ -f docs/performance.md ] || printf '# signerd performance\n\nFigures appended by the benchmark scripts; newest last.\n'
  printf '\n## End-to-end vs raw PKCS#11 (scripts/bench.sh, %s)\n\n' "$when"
  printf 'Same SoftHSM2 token, one run, %s operations per side and concurrency, sides alternating in rounds of 100. Host: %s cores, load average %s at the end.\n\n' "$ops" "$(nproc)" "$load"
  echo "$header"
  echo "$table"
  printf '\nmin ratio = %s\n' "$min"
} >>docs/performance.md
echo "bench: figures appended to docs/performance.md" >&2
echo "ratio=$min"
