#!/usr/bin/env bash
# Runs every Fuzz target in the module for a short time (FUZZTIME, default 10s each).
# Targets are found by grep so new ones are picked up without editing this script.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${FUZZTIME:-10s}
grep -rl --include='*_test.go' '^func Fuzz' . | sort | while read -r f; do
  pkg=./$(dirname "${f#./}")
  for fn in $(grep -oE '^func (Fuzz[A-Za-z0-9_]+)' "$f" | awk '{print $2}'); do
    echo "fuzz: $pkg $fn ($t)"
    go test -run='^$' -fuzz="^${fn}\$" -fuzztime="$t" -fuzzminimizetime=0 "$pkg"
  done
done
