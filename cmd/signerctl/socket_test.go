package main

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

const sampleMetrics = `# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 12
# HELP signerd_kill_switch_engaged 1 while the kill switch is engaged.
# TYPE signerd_kill_switch_engaged gauge
signerd_kill_switch_engaged 0
# HELP signerd_decisions_total Decisions by outcome and code.
# TYPE signerd_decisions_total counter
signerd_decisions_total{code="ok",decision="allow"} 3
`

// TestMetrics runs `signerctl metrics` against a stand-in admin socket: everything, filtered
// by prefix, via $SIGNERD_ADMIN_SOCKET, a refusal (exit 1) and an unreachable daemon (exit 3).
func TestMetrics(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "admin.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex // the handler runs on the server's goroutines
	var paths []string
	refuse := false
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.Method+" "+r.URL.Path)
		refusing := refuse
		mu.Unlock()
		if refusing {
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, `{"error":{"code":"unknown_caller","reason":"not an operator"}}`)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		io.WriteString(w, sampleMetrics)
	})}
	go srv.Serve(ln)
	defer srv.Close()

	metrics := func(args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		rc := run(append([]string{"metrics"}, args...), strings.NewReader(""), &out, &errb)
		return out.String(), errb.String(), rc
	}
	t.Setenv("SIGNERD_ADMIN_SOCKET", "")
	out, errs, rc := metrics("--socket", sock)
	mu.Lock()
	seen := strings.Join(paths, ",")
	mu.Unlock()
	if rc != 0 || out != sampleMetrics || seen != "GET /metrics" {
		t.Fatalf("metrics: rc=%d out=%q err=%q requests=%q", rc, out, errs, seen)
	}
	want := "# HELP signerd_kill_switch_engaged 1 while the kill switch is engaged.\n# TYPE signerd_kill_switch_engaged gauge\nsignerd_kill_switch_engaged 0\n"
	if out, errs, rc := metrics("signerd_kill", "--socket", sock); rc != 0 || out != want {
		t.Fatalf("metrics signerd_kill: rc=%d out=%q err=%q", rc, out, errs)
	}
	t.Setenv("SIGNERD_ADMIN_SOCKET", sock)
	if out, errs, rc := metrics("go_", "signerd_decisions"); rc != 0 || strings.Count(out, "\n") != 6 || strings.Contains(out, "kill_switch") {
		t.Fatalf("metrics via $SIGNERD_ADMIN_SOCKET: rc=%d out=%q err=%q", rc, out, errs)
	}
	mu.Lock()
	refuse = true
	mu.Unlock()
	if _, errs, rc := metrics(); rc != exitRefused || !strings.Contains(errs, "unknown_caller") {
		t.Fatalf("refused: rc=%d err=%q", rc, errs)
	}
	if _, errs, rc := metrics("--socket", filepath.Join(dir, "nobody.sock")); rc != exitUnreachable {
		t.Fatalf("unreachable: rc=%d err=%q", rc, errs)
	}
	if _, _, rc := metrics("--bogus"); rc != exitUsage {
		t.Fatalf("bad flag: rc=%d", rc)
	}
}
