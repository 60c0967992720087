package server_test

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/signerd/signerd/signerd/config"
	"github.com/signerd/signerd/signerd/server"
)

// lockedBuffer collects the daemon's log lines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// orphanLogLines returns the log lines warning about approvals whose group has no operator.
func orphanLogLines(log string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "level=WARN") && strings.Contains(l, "no operator is in its group") {
			out = append(out, l)
		}
	}
	return out
}

// approvalsPolicy is the test policy with the given approvals section instead of its own.
func approvalsPolicy(t *testing.T, approvals string) []byte {
	t.Helper()
	pol, err := os.ReadFile("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(pol, []byte("\napprovals:\n"))
	if i < 0 {
		t.Fatal("testdata/policy.yaml has no approvals section")
	}
	return append(pol[:i+1:i+1], approvals...)
}

func warningsOf(body map[string]any) []string {
	var out []string
	ws, _ := body["warnings"].([]any)
	for _, w := range ws {
		s, _ := w.(string)
		out = append(out, s)
	}
	return out
}

// TestApprovalGroupWarnings: an approval whose group no operator belongs to is reported at
// start-up (log and status) and at every reload (log and the reload answer's "warnings"),
// naming the approval and the group; a policy whose groups all have operators, or a
// configuration where no operator declares groups (anyone may approve), reports nothing.
func TestApprovalGroupWarnings(t *testing.T) {
	const orphan = `approvals:
  - id: big-payment
    agents: [tester]
    at_or_above: "0.5 USDC"
    group: finance
    timeout: 1m
  - id: treasury-hold
    agents: [tester]
    at_or_above: "0.9 USDC"
    group: treasury
    timeout: 1m
`
	logs := &lockedBuffer{}
	d := launchDaemon(t, approvalsPolicy(t, orphan), 300*time.Millisecond, nil, func(o *server.Options) {
		o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	lines := orphanLogLines(logs.String())
	if len(lines) != 1 || !strings.Contains(lines[0], "approval=treasury-hold") || !strings.Contains(lines[0], "group=treasury") {
		t.Fatalf("start-up warning lines %q\nlog:\n%s", lines, logs.String())
	}
	st := d.admin.do(t, "GET", "/v1/admin/status", nil)
	pol, _ := st.Body["policy"].(map[string]any)
	if w := warningsOf(pol); len(w) != 1 || !strings.Contains(w[0], `approval "treasury-hold"`) || !strings.Contains(w[0], `group "treasury"`) || !strings.Contains(w[0], "finance") {
		t.Fatalf("status policy warnings %q (%s)", w, st.Raw)
	}

	policyPath := filepath.Join(d.dir, "policy.yaml")
	reload := func(approvals string) *response {
		t.Helper()
		if err := os.WriteFile(policyPath, approvalsPolicy(t, approvals), 0o600); err != nil {
			t.Fatal(err)
		}
		r := d.admin.do(t, "POST", "/v1/admin/policy/reload", nil)
		if r.Status != 200 {
			t.Fatalf("reload: %d %s", r.Status, r.Raw)
		}
		return r
	}
	// Two orphans: both in the answer and in the log, in source order.
	before := len(orphanLogLines(logs.String()))
	r := reload(strings.ReplaceAll(orphan, "group: finance", "group: risk"))
	w := warningsOf(r.Body)
	if len(w) != 2 || !strings.Contains(w[0], `"big-payment"`) || !strings.Contains(w[0], `"risk"`) || !strings.Contains(w[1], `"treasury-hold"`) {
		t.Fatalf("reload warnings %q (%s)", w, r.Raw)
	}
	lines = orphanLogLines(logs.String())[before:]
	if len(lines) != 2 || !strings.Contains(lines[0], "approval=big-payment group=risk") || !strings.Contains(lines[1], "approval=treasury-hold group=treasury") {
		t.Fatalf("reload warning lines %q", lines)
	}
	// Every group has an operator: no warnings field at all.
	before = len(orphanLogLines(logs.String()))
	r = reload(strings.ReplaceAll(orphan, "group: treasury", "group: finance"))
	if _, has := r.Body["warnings"]; has || !strings.Contains(string(r.Raw), `"hash"`) {
		t.Fatalf("clean reload answer: %s", r.Raw)
	}
	if n := len(orphanLogLines(logs.String())) - before; n != 0 {
		t.Fatalf("clean reload logged %d warnings", n)
	}
	st = d.admin.do(t, "GET", "/v1/admin/status", nil)
	if pol, _ := st.Body["policy"].(map[string]any); len(warningsOf(pol)) != 0 {
		t.Fatalf("status after a clean reload: %s", st.Raw)
	}
	// A rejected reload keeps the previous policy and warns about nothing new.
	if err := os.WriteFile(policyPath, []byte("version: 1\nbogus: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := d.admin.do(t, "POST", "/v1/admin/policy/reload", nil); r.Status != 422 {
		t.Fatalf("bad policy reload: %d %s", r.Status, r.Raw)
	}

	// No operator declares a group: any operator may decide any approval, nothing to report.
	logs2 := &lockedBuffer{}
	launchDaemon(t, approvalsPolicy(t, orphan), 300*time.Millisecond, func(c *config.Config) {
		c.Operators = []config.Operator{{Name: "alice", UID: uint32(os.Getuid())}}
	}, func(o *server.Options) {
		o.Logger = slog.New(slog.NewTextHandler(logs2, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	if lines := orphanLogLines(logs2.String()); len(lines) != 0 {
		t.Fatalf("warned without operator groups: %q", lines)
	}
}

// TestApprovalGroupWarningsPolicyDir: a policy split over a directory of files is checked
// across all of them.
func TestApprovalGroupWarningsPolicyDir(t *testing.T) {
	logs := &lockedBuffer{}
	dir := t.TempDir()
	base := approvalsPolicy(t, "")
	if err := os.WriteFile(filepath.Join(dir, "a.yaml"), base, 0o600); err != nil {
		t.Fatal(err)
	}
	extra := "version: 1\napprovals:\n  - id: ops-hold\n    agents: [tester]\n    at_or_above: \"0.7 USDC\"\n    group: nightshift\n    timeout: 1m\n"
	if err := os.WriteFile(filepath.Join(dir, "b.yaml"), []byte(extra), 0o600); err != nil {
		t.Fatal(err)
	}
	launchDaemon(t, base, 300*time.Millisecond, func(c *config.Config) { c.Policy = dir }, func(o *server.Options) {
		o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	if lines := orphanLogLines(logs.String()); len(lines) != 1 || !strings.Contains(lines[0], "approval=ops-hold group=nightshift") {
		t.Fatalf("policy dir warnings %q\n%s", lines, logs.String())
	}
}
