#!/usr/bin/env bash
# End-to-end signing benchmarks, in one `go test` run of signerd/e2e (make bench):
#  - BenchmarkE2EVsRaw, SoftHSM2: signed guarantees per second through the agent socket of a real
#    signerd process (policy, durable ledger on disk, HSM, recovery) versus the PKCS#11 backend's
#    own SignDigest loop in the benchmark process on the same token (C_Sign, low-s, v by
#    recovery), at concurrency 1, 2 and 4;
#  - BenchmarkE2ETPM: the same through a signerd process whose key is sealed by swtpm (unsealed
#    once) at 1, 16 and 64 keep-alive clients, against the unisolated baseline: the official
#    @4mica/sdk PaymentSigner signing in one node process (scripts/sdk-baseline.mjs), and the
#    daemon's ledger syncs per request (signerd_ledger_syncs_total on /metrics; NA when the
#    daemon does not export it).
# Each benchmark alternates its two sides in rounds so that load from other processes hits both
# alike. Prints the tables, appends them to docs/performance.md with the load average and the
# command, and ends with name=value lines: ratio_hsm_c1, ratio_hsm (the lower of c=2 and c=4),
# added_p50_us_c1, tpm_ops_s_c64, tpm_p50_us_c1, vs_sdk (TPM ops/s at 64 clients / SDK loop
# ops/s), syncs_per_request_c64.
# BENCH_OPS (default 1500) sets the operations per side and concurrency. BENCH_TMPFS=1 adds an
# informative second SoftHSM2 run with the ledger on /dev/shm (no fsync cost; not durable).
set -euo pipefail
cd "$(dirname "$0")/.."
export CGO_ENABLED=1
ops=${BENCH_OPS:-1500}
cmd="BENCH_OPS=$ops ./scripts/bench.sh"
[ "${BENCH_TMPFS:-0}" = 1 ] && cmd="BENCH_TMPFS=1 $cmd"
out=$(mktemp)
trap 'rm -f "$out"' EXIT

hsm_header="| concurrency | end-to-end ops/s | backend SignDigest ops/s | ratio | e2e p50 µs | SignDigest p50 µs | added p50 µs |
|---|---|---|---|---|---|---|"
tpm_header="| clients | end-to-end ops/s | e2e p50 µs | @4mica/sdk loop ops/s (same rounds) | e2e / SDK | ledger syncs per request | daemon CPU µs per request |
|---|---|---|---|---|---|---|"

# run BENCH_REGEX [STATE_PARENT]: runs the benchmarks and leaves their output in $out.
run() {
  echo "bench: $1, ledger under ${2:-the test directory (disk)}, BENCH_OPS=$ops" >&2
  SIGNERD_BENCH_STATE_DIR=${2:-} BENCH_OPS=$ops go test -count=1 -timeout 60m -run '^$' -bench "$1" -benchtime 1x ./signerd/e2e >"$out" 2>&1 || {
    cat "$out" >&2
    echo "bench: benchmark failed" >&2
    exit 1
  }
}
# field ROW KEY [CONC]: the value of KEY in the ROW lines (of concurrency CONC) of $out.
field() {
  awk -v row="$1" -v key="$2" -v conc="${3:-}" '$1 == row {
    delete v
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    if (conc == "" || v["conc"] == conc) print v[key]
  }' "$out"
}
table() {
  awk -v row="$1" -v cols="$2" '$1 == row {
    delete v
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    n = split(cols, c, " "); line = "|"
    for (i = 1; i <= n; i++) line = line " " v[c[i]] " |"
    print line
  }' "$out"
}
hsm_cols="conc e2e_ops_s raw_ops_s ratio e2e_p50_us raw_p50_us added_p50_us"

load0=$(cut -d' ' -f1-3 /proc/loadavg)
run '^BenchmarkE2E(VsRaw|TPM)$'
for row in BENCHROW TPMROW; do
  grep -q "^$row " "$out" || { cat "$out" >&2; echo "bench: no $row figures" >&2; exit 1; }
done
hsm=$(table BENCHROW "$hsm_cols")
tpm=$(table TPMROW "conc e2e_ops_s e2e_p50_us sdk_ops_s vs_sdk syncs_per_request daemon_cpu_us")
ratio_c1=$(field BENCHROW ratio 1)
ratio_hsm=$(printf '%s\n%s\n' "$(field BENCHROW ratio 2)" "$(field BENCHROW ratio 4)" | sort -g | head -1)
added_c1=$(field BENCHROW added_p50_us 1)
tpm_ops=$(field TPMROW e2e_ops_s 64)
tpm_p50=$(field TPMROW e2e_p50_us 1)
vs_sdk=$(field TPMROW vs_sdk 64)
syncs=$(field TPMROW syncs_per_request 64)
load=$(cut -d' ' -f1-3 /proc/loadavg)
tmpfs=""
if [ "${BENCH_TMPFS:-0}" = 1 ] && [ -d /dev/shm ]; then
  run '^BenchmarkE2EVsRaw$' /dev/shm
  tmpfs=$(table BENCHROW "$hsm_cols")
fi

report() {
  echo "SoftHSM2, durable ledger on disk: end to end through signerd vs the backend's SignDigest loop"
  echo
  echo "$hsm_header"
  echo "$hsm"
  if [ -n "$tmpfs" ]; then
    printf '\nInformative, ledger on tmpfs (/dev/shm), fsync free, NOT durable:\n\n'
    echo "$hsm_header"
    echo "$tmpfs"
  fi
  printf '\nTPM-sealed key on swtpm (unsealed once), durable ledger on disk: end to end through signerd vs the @4mica/sdk PaymentSigner loop in one node process\n\n'
  echo "$tpm_header"
  echo "$tpm"
}

echo
report
echo
when=$(date -u +%Y-%m-%dT%H:%MZ)
{
  [ -f docs/performance.md ] || printf '# Performance\n\nMeasured figures, each with the command that produced it.\n'
  printf '\n### scripts/bench.sh run %s (BENCH_OPS=%s, %s cores, load average %s before, %s after)\n\n' "$when" "$ops" "$(nproc)" "$load0" "$load"
  printf 'Command: `%s`\n\n' "$cmd"
  report
  printf '\nratio_hsm_c1=%s ratio_hsm=%s added_p50_us_c1=%s tpm_ops_s_c64=%s tpm_p50_us_c1=%s vs_sdk=%s syncs_per_request_c64=%s\n' \
    "$ratio_c1" "$ratio_hsm" "$added_c1" "$tpm_ops" "$tpm_p50" "$vs_sdk" "$syncs"
} >>docs/performance.md
echo "bench: figures appended to docs/performance.md" >&2
echo "ratio_hsm_c1=$ratio_c1"
echo "ratio_hsm=$ratio_hsm"
echo "added_p50_us_c1=$added_c1"
echo "tpm_ops_s_c64=$tpm_ops"
echo "tpm_p50_us_c1=$tpm_p50"
echo "vs_sdk=$vs_sdk"
echo "syncs_per_request_c64=$syncs"
