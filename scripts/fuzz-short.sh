#!/usr/bin/env bash
# Runs every Fuzz target in the module for a short budget (FUZZTIME, default 100000x each).
# Targets are found by grep so new ones are picked up without editing this script.
#
# The budget is an execution count, not a duration: with a duration, Go 1.26's fuzz
# coordinator can report "context deadline exceeded" as a failure at the deadline when
# no input failed (golang/go#75804, fixed in Go 1.27). A count has no deadline to race.
# 100000 executions take 3-10 s per target on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${FUZZTIME:-100000x}
grep -rl --include='*_test.go' '^func Fuzz' . | sort | while read -r f; do
  pkg=./$(dirname "${f#./}")
  for fn in $(grep -oE '^func (Fuzz[A-Za-z0-9_]+)' "$f" | awk '{print $2}'); do
    echo "fuzz: $pkg $fn ($t)"
    go test -run='^$' -fuzz="^${fn}\$" -fuzztime="$t" -fuzzminimizetime=0 "$pkg"
  done
done
