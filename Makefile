# signerd — see README.md. `make run` is the demo, `make test` the full test suite (what CI runs).
GO ?= go
export CGO_ENABLED := 1

.PHONY: setup run test unit fuzz bench bench-memory build crash

setup:
	./scripts/setup.sh

build:
	$(GO) build ./...

run: setup
	./scripts/demo-daemon.sh

# The test command README.md shows and .ci/run calls.
test: setup
	$(GO) vet ./...
	./scripts/demo-daemon.sh >/dev/null   # the main job (make run) must work too
	$(GO) test -count=1 -timeout 40m ./...
	./scripts/fuzz-short.sh

unit:
	$(GO) test -count=1 ./...

fuzz:
	FUZZTIME=1000000x ./scripts/fuzz-short.sh

bench: setup
	./scripts/bench.sh

# Daemon memory: VmRSS/VmHWM of a real signerd (TPM-sealed key on swtpm) over 1,000,000 signed
# guarantees from 16 clients (BENCH_RSS_N overrides); fails above 200 MB. 5 to 12 minutes
# (1,500-4,000 guarantees/s, depending on other load); the ledger takes about 1 GB in $TMPDIR.
bench-memory: setup
	$(GO) test -count=1 -timeout 60m -run '^$$' -bench '^BenchmarkDaemonRSS$$' -benchtime 1x ./signerd/e2e

# SIGKILL crash test at full size: 100 kills, 16 clients (CRASH_KILLS, CRASH_CLIENTS override;
# go test ./... runs it with 20 kills). Needs SoftHSM2 (make setup).
crash:
	./scripts/crash.sh
