package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/hsm/tpm/swtpmtest"
)

// syncsMetric counts the ledger's durable syncs (fsync/fdatasync); a daemon that does not export
// it yet gets syncs_per_request_c64=NA.
const syncsMetric = "signerd_ledger_syncs_total"

// BenchmarkE2ETPM measures signed guarantees end to end through a real signerd process whose
// wallet key is sealed by a TPM (swtpm) and unsealed once at start (docs/tpm.md), with the same
// policy as BenchmarkE2EVsRaw, at 1, 16 and 64 concurrent keep-alive clients. Its rounds
// alternate with rounds of the unisolated baseline: the official @4mica/sdk PaymentSigner
// signing in one node process with the key in memory and nothing durable
// (scripts/sdk-baseline.mjs). It prints one TPMROW line per concurrency (ops/s and p50 end to
// end, the SDK loop's ops/s over the same rounds, and the daemon's signerd_ledger_syncs_total per
// request over the rounds, NA while the daemon does not export it). BENCH_OPS sets the requests
// per side and concurrency (default 1500).
func BenchmarkE2ETPM(b *testing.B) {
	ops := benchOps()
	e := newTPMEnv(b)
	e.start()
	sdk, err := startSDKLoop()
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := sdk.close(); err != nil {
			b.Error(err)
		}
	}()
	if _, err := sdk.round(500); err != nil { // warm-up: JIT, the SDK's lazy initialisation
		b.Fatal(err)
	}
	b.ResetTimer()
	for _, conc := range tpmConcurrencies() {
		clients, err := warmClients(e, conc, e.wallet)
		if err != nil {
			b.Fatal("warm-up: ", err)
		}
		bodies := guaranteeBodies(ops, e.wallet)
		e2e := &arm{round: concurrent(conc, func(g, i int) error { return postGuarantee(clients[g], bodies[i]) })}
		base := sdk.arm()
		syncs0, ok0 := e.counter(syncsMetric)
		cpu0 := procCPU(e.proc.Process.Pid)
		err = alternate(ops, max(100, 8*conc), e2e, base)
		cpu := procCPU(e.proc.Process.Pid) - cpu0
		syncs1, ok1 := e.counter(syncsMetric)
		closeClients(clients)
		if err != nil {
			b.Fatal(err)
		}
		syncs := "NA"
		if ok0 && ok1 {
			syncs = strconv.FormatFloat((syncs1-syncs0)/float64(ops), 'f', 3, 64)
		}
		fmt.Printf("TPMROW conc=%d ops=%d e2e_ops_s=%.0f e2e_p50_us=%d sdk_ops_s=%.0f vs_sdk=%.3f syncs_per_request=%s daemon_cpu_us=%d\n", conc, ops,
			e2e.opsPerSec(), e2e.p50().Microseconds(), base.opsPerSec(), e2e.opsPerSec()/base.opsPerSec(), syncs, cpu.Microseconds()/int64(ops))
		b.ReportMetric(e2e.opsPerSec(), fmt.Sprintf("tpm-ops/s-c%d", conc))
	}
	b.StopTimer()
	e.stopClean()
}

// newTPMEnv starts a swtpm, seals one new wallet key with it (sha256 PCR 16, parameter
// encryption, as docs/tpm.md configures the daemon) and returns an env whose daemon holds that
// key in unseal-once mode, with benchPolicy for it. swtpm serves one client at a time, so the
// sealing backend is closed before the daemon starts.
func newTPMEnv(b *testing.B) *env {
	b.Helper()
	sw := swtpmtest.Start(b)
	keyDir := filepath.Join(b.TempDir(), "tpm-keys")
	opts := hsm.Options{Type: "tpm", TPM: hsm.TPMOptions{Address: sw.Address(), KeyDir: keyDir, PCRs: []int{16}}}
	be, err := hsm.Open(context.Background(), opts)
	if err != nil {
		b.Fatal(err)
	}
	ki, err := be.Generate(context.Background(), hsm.GenerateOptions{Label: "bench"})
	be.Close()
	if err != nil {
		b.Fatal(err)
	}
	section := fmt.Sprintf("hsm:\n  type: tpm\n  tpm: {address: %q, key_dir: %s, pcrs: [16]}", sw.Address(), keyDir)
	return newEnv(b, envOptions{policy: benchPolicy, hsm: section, wallet: ki.Address.Hex()})
}

// counter reads the daemon's Prometheus counter name (summed over its label sets) from the admin
// socket's /metrics; ok is false when the daemon does not export it or cannot be read.
func (e *env) counter(name string) (v float64, ok bool) {
	st, raw, err := e.adminClient().call("GET", "/metrics", nil)
	if err != nil || st != 200 {
		return 0, false
	}
	return counterValue(string(raw), name)
}

// counterValue sums the samples of the counter name in a Prometheus text exposition (lines
// `name value` or `name{labels} value`, optionally followed by a timestamp); ok is false when it
// has none.
func counterValue(text, name string) (sum float64, ok bool) {
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		rest, found := strings.CutPrefix(sc.Text(), name)
		if !found || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue // a comment, another metric, or one whose name only starts with name
		}
		if rest[0] == '{' {
			rest = rest[strings.LastIndexByte(rest, '}')+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		sum, ok = sum+v, true
	}
	return sum, ok
}

// TestCounterValueSumsEverySampleOfTheMetric: a counter's value is the sum of its label sets,
// timestamps are ignored, and metrics whose names only start with it do not count.
func TestCounterValueSumsEverySampleOfTheMetric(t *testing.T) {
	text := `# HELP signerd_ledger_syncs_total Durable syncs.
# TYPE signerd_ledger_syncs_total counter
signerd_ledger_syncs_total{file="ledger"} 40
signerd_ledger_syncs_total{file="audit",note="a}b"} 2 1700000000000
signerd_ledger_syncs_total_created 1.7e9
signerd_ledger_syncs_totalx 99
`
	if v, ok := counterValue(text, syncsMetric); !ok || v != 42 {
		t.Fatalf("got %v %v, want 42 true", v, ok)
	}
	if v, ok := counterValue("signerd_ledger_syncs_total 7\n", syncsMetric); !ok || v != 7 {
		t.Fatalf("unlabelled: got %v %v, want 7 true", v, ok)
	}
}

// TestCounterValueOfAnAbsentMetricIsNotFound: a daemon that does not export the counter (only
// its name as a prefix of others, or in comments) yields ok=false, which the benchmark prints
// as NA instead of failing.
func TestCounterValueOfAnAbsentMetricIsNotFound(t *testing.T) {
	text := "# signerd_ledger_syncs_total is coming\nsignerd_decisions_total{decision=\"allow\"} 5\nsignerd_ledger_syncs_total_created 1\n"
	if v, ok := counterValue(text, syncsMetric); ok {
		t.Fatalf("got %v, want not found", v)
	}
}

// TestCounterReadsTheDaemonsMetrics: env.counter reads a real daemon's /metrics over the admin
// socket (its decision counter is found and counts the signature), so syncs_per_request=NA in
// the benchmark means the daemon lacks the metric, not that the read failed.
func TestCounterReadsTheDaemonsMetrics(t *testing.T) {
	e := newEnv(t, envOptions{policy: benchPolicy})
	e.start()
	if err := postGuarantee(e.agentClient(), guaranteeBodies(1, wallet1)[0]); err != nil {
		t.Fatal(err)
	}
	if v, ok := e.counter("signerd_decisions_total"); !ok || v < 1 {
		t.Fatalf("signerd_decisions_total: %v %v, want at least 1", v, ok)
	}
	// One signed guarantee: its intent needed one fsync (shared or not), its signature none.
	if v, ok := e.counter("signerd_ledger_syncs_total"); !ok || v < 1 {
		t.Fatalf("signerd_ledger_syncs_total: %v %v, want at least 1", v, ok)
	}
	e.stopClean()
}

// procCPU is the user+system CPU time process pid has used (/proc/PID/stat, clock ticks of
// 10 ms: measure over thousands of requests). Zero if it cannot be read.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) start after the last ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// tpmConcurrencies are the client counts BenchmarkE2ETPM measures: 1, 16 and 64, or the
// comma-separated list in BENCH_TPM_CONC (diagnostics: profile one of them alone).
func tpmConcurrencies() []int {
	var out []int
	for _, f := range strings.Split(os.Getenv("BENCH_TPM_CONC"), ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return []int{1, 16, 64}
	}
	return out
}
