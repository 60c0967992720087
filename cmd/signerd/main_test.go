package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/signerd/signerd/hsm/pkcs11"
	"github.com/signerd/signerd/signerd/config"
)

// TestMain re-executes this test binary as the daemon when SIGNERD_TEST_MAIN is set, so the
// tests drive a real signerd process with real signals.
func TestMain(m *testing.M) {
	if os.Getenv("SIGNERD_TEST_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stderr))
	}
	os.Exit(m.Run())
}

type proc struct {
	cmd  *exec.Cmd
	log  *syncBuf
	done chan error
}

// syncBuf is a bytes.Buffer safe for the writer goroutine of exec and the test's reads.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startSignerd(t *testing.T, args ...string) *proc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), "SIGNERD_TEST_MAIN=1")
	p := &proc{cmd: cmd, log: &syncBuf{}, done: make(chan error, 1)}
	cmd.Stderr, cmd.Stdout = p.log, p.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *proc) waitSocket(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return
		}
		select {
		case err := <-p.done:
			t.Fatalf("signerd exited early: %v\n%s", err, p.log)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("socket %s never answered\n%s", path, p.log)
}

func (p *proc) signal(t *testing.T, s syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(s); err != nil {
		t.Fatal(err)
	}
}

func (p *proc) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(30 * time.Second):
		t.Fatalf("signerd did not exit\n%s", p.log)
		return -1
	}
}

func call(t *testing.T, sock, method, path string, body any) (int, map[string]any) {
	t.Helper()
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://signerd"+path, rd)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	if m == nil {
		m = map[string]any{"raw": string(raw)}
	}
	return resp.StatusCode, m
}

func code(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	s, _ := e["code"].(string)
	return s
}

func guarantee(t *testing.T, dir, wallet string, req int) (int, map[string]any) {
	return call(t, filepath.Join(dir, "agent.sock"), "POST", "/v1/guarantees", map[string]any{"claims": map[string]any{
		"version": "v1", "user_address": wallet, "recipient_address": "0x1234567890123456789012345678901234567890",
		"tab_id": "0x77", "req_id": req, "amount": "1000", "asset_address": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
		"timestamp": time.Now().Unix(),
	}})
}

// TestDevSignals drives `signerd dev` through its life: sign, SIGHUP with a broken policy
// (the last good one stays), SIGUSR1 (kill switch), SIGTERM (clean exit, sockets removed),
// restart (still engaged: durable), resume by the single dev operator, sign again.
func TestDevSignals(t *testing.T) {
	dir := t.TempDir()
	p := startSignerd(t, "dev", "--dir", dir)
	agent, admin := filepath.Join(dir, "agent.sock"), filepath.Join(dir, "admin.sock")
	p.waitSocket(t, agent)
	p.waitSocket(t, admin)

	st, w := call(t, agent, "GET", "/v1/wallets", nil)
	if st != 200 {
		t.Fatalf("wallets: %d %v", st, w)
	}
	wallet := w["wallets"].([]any)[0].(map[string]any)["address"].(string)
	if st, m := guarantee(t, dir, wallet, 1); st != 200 || m["signature"] == nil {
		t.Fatalf("sign: %d %v\n%s", st, m, p.log)
	}

	// The PIN file and the sockets are not open to others.
	for path, max := range map[string]os.FileMode{filepath.Join(dir, "hsm", "pin"): 0o600, admin: 0o600, agent: 0o660} {
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm()&^max != 0 {
			t.Errorf("%s: mode %v, want at most %04o (%v)", path, fi.Mode().Perm(), max, err)
		}
	}

	// SIGHUP with a broken policy: rejected, the last good one stays in force.
	policy := filepath.Join(dir, "policy.yaml")
	good, _ := os.ReadFile(policy)
	if err := os.WriteFile(policy, []byte("version: 1\nagents: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p.signal(t, syscall.SIGHUP)
	waitFor(t, p, "SIGHUP: policy not reloaded")
	if st, m := guarantee(t, dir, wallet, 2); st != 200 {
		t.Fatalf("sign after a rejected reload: %d %v", st, m)
	}
	if err := os.WriteFile(policy, good, 0o600); err != nil {
		t.Fatal(err)
	}
	p.signal(t, syscall.SIGHUP)
	waitFor(t, p, "SIGHUP: policy reloaded")

	// SIGUSR1 engages the kill switch.
	p.signal(t, syscall.SIGUSR1)
	waitFor(t, p, "SIGUSR1: kill switch engaged")
	if st, m := guarantee(t, dir, wallet, 3); st != 503 || code(m) != "kill_switch_engaged" {
		t.Fatalf("sign while engaged: %d %v", st, m)
	}

	// SIGTERM: clean exit, sockets gone.
	p.signal(t, syscall.SIGTERM)
	if c := p.wait(t); c != 0 {
		t.Fatalf("exit code %d\n%s", c, p.log)
	}
	if !strings.Contains(p.log.String(), "stopped cleanly") {
		t.Fatalf("no clean stop in the log:\n%s", p.log)
	}
	for _, s := range []string{agent, admin} {
		if _, err := os.Stat(s); err == nil {
			t.Errorf("%s left behind", s)
		}
	}

	// Restart on the same directory: same token and wallet, still engaged.
	p2 := startSignerd(t, "dev", "--dir", dir)
	p2.waitSocket(t, agent)
	p2.waitSocket(t, admin)
	if st, m := guarantee(t, dir, wallet, 3); st != 503 || code(m) != "kill_switch_engaged" {
		t.Fatalf("restarted while engaged must stay engaged: %d %v", st, m)
	}
	if st, m := call(t, admin, "POST", "/v1/admin/kill-switch", map[string]any{"engaged": false}); st != 200 {
		t.Fatalf("resume: %d %v", st, m)
	}
	if st, m := guarantee(t, dir, wallet, 3); st != 200 {
		t.Fatalf("sign after resume: %d %v", st, m)
	}
	if st, m := call(t, admin, "GET", "/v1/admin/audit/verify", nil); st != 200 || m["ok"] != true {
		t.Fatalf("audit verify: %d %v", st, m)
	}
	pin, _ := os.ReadFile(filepath.Join(dir, "hsm", "pin"))
	if s := strings.TrimSpace(string(pin)); s == "" || strings.Contains(p.log.String()+p2.log.String(), s) {
		t.Errorf("the PIN appears in the log (or is empty)")
	}
	p2.signal(t, syscall.SIGTERM)
	if c := p2.wait(t); c != 0 {
		t.Fatalf("exit code %d\n%s", c, p2.log)
	}
}

func waitFor(t *testing.T, p *proc, s string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.log.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("log never said %q:\n%s", s, p.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestUsageExitCodes: help asked for exits 0 with the usage, a usage mistake exits 2.
func TestUsageExitCodes(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--help"}, 0, "signerd run --config FILE"},
		{[]string{"run", "--help"}, 0, "-config"},
		{[]string{"dev", "-h"}, 0, "-dir"},
		{[]string{"run", "--bogus"}, 2, "flag provided but not defined"},
		{[]string{"dev", "--bogus"}, 2, "flag provided but not defined"},
		{[]string{"nope"}, 2, "usage:"},
	} {
		p := startSignerd(t, c.args...)
		if got := p.wait(t); got != c.code || !strings.Contains(p.log.String(), c.want) {
			t.Errorf("signerd %q: exit %d (want %d), output:\n%s", c.args, got, c.code, p.log)
		}
	}
}

// TestRefusesExposedConfig: a config file others can read is refused before anything starts.
func TestRefusesExposedConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "signerd.yaml")
	if err := os.WriteFile(cfg, []byte("state_dir: x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	p := startSignerd(t, "run", "--config", cfg)
	if c := p.wait(t); c != 1 || !strings.Contains(p.log.String(), "accessible to other users") {
		t.Fatalf("exit %d, log:\n%s", c, p.log)
	}
}

// TestRunWithConfig: `signerd run --config FILE` on a fresh token with no key: a key generated
// through the admin API signs at once (keys without restart), two operators are needed to
// resume, and a retired key stops signing.
func TestRunWithConfig(t *testing.T) {
	dir := t.TempDir()
	hd, err := pkcs11.WriteSoftHSMDir(filepath.Join(dir, "hsm"))
	if err != nil {
		t.Fatal(err)
	}
	if err := hd.InitToken("prod", []byte("123456"), []byte("12345678")); err != nil {
		t.Fatal(err)
	}
	if err := pkcs11.WritePINFile(filepath.Join(dir, "pin"), []byte("123456")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), config.DevPolicy, 0o600); err != nil {
		t.Fatal(err)
	}
	uid := os.Getuid()
	cfg := fmt.Sprintf(`state_dir: state
sockets:
  agent: {path: agent.sock, mode: "0660"}
  admin: {path: admin.sock, mode: "0600"}
hsm:
  type: pkcs11
  pkcs11:
    module: %s
    module_env: {SOFTHSM2_CONF: %s}
    token_label: prod
    pin_file: pin
    sessions: 2
policy: policy.yaml
protocol: {network: "eip155:84532", chain_id: 84532}
kill_switch: {two_operator_resume: true}
operators:
  - {name: alice, uid: %d}
`, pkcs11.SoftHSMModule(), hd.Conf, uid)
	cfgPath := filepath.Join(dir, "signerd.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startSignerd(t, "run", "--config", cfgPath)
	agent, admin := filepath.Join(dir, "agent.sock"), filepath.Join(dir, "admin.sock")
	p.waitSocket(t, admin)

	if st, m := call(t, admin, "GET", "/v1/admin/keys", nil); st != 200 || len(m["keys"].([]any)) != 0 {
		t.Fatalf("keys on a fresh token: %d %v", st, m)
	}
	st, m := call(t, admin, "POST", "/v1/admin/keys/generate", map[string]any{"label": "w1"})
	if st != 200 {
		t.Fatalf("generate: %d %v\n%s", st, m, p.log)
	}
	key := m["key"].(map[string]any)
	wallet, uri := key["address"].(string), key["uri"].(string)
	if st, m := guarantee(t, dir, wallet, 1); st != 200 {
		t.Fatalf("sign with the new key: %d %v\n%s", st, m, p.log)
	}

	// Two-operator resume: the only operator cannot confirm her own resume.
	if st, m := call(t, admin, "POST", "/v1/admin/kill-switch", map[string]any{"engaged": true, "reason": "drill"}); st != 200 {
		t.Fatalf("engage: %d %v", st, m)
	}
	if st, m := call(t, admin, "POST", "/v1/admin/kill-switch", map[string]any{"engaged": false}); st != 202 {
		t.Fatalf("first resume: %d %v", st, m)
	}
	if st, m := call(t, admin, "POST", "/v1/admin/kill-switch", map[string]any{"engaged": false}); st != 409 || code(m) != "second_operator_required" {
		t.Fatalf("same operator confirming: %d %v", st, m)
	}
	if st, m := guarantee(t, dir, wallet, 2); st != 503 {
		t.Fatalf("still engaged: %d %v", st, m)
	}
	p.signal(t, syscall.SIGTERM)
	if c := p.wait(t); c != 0 {
		t.Fatalf("exit %d\n%s", c, p.log)
	}

	// Retire on a fresh start (not engaged state is not needed for key ops).
	p2 := startSignerd(t, "run", "--config", cfgPath)
	p2.waitSocket(t, admin)
	if st, m := call(t, admin, "POST", "/v1/admin/keys/retire", map[string]any{"uri": uri}); st != 200 {
		t.Fatalf("retire: %d %v", st, m)
	}
	st, m = call(t, admin, "GET", "/v1/admin/keys", nil)
	if k := m["keys"].([]any)[0].(map[string]any); st != 200 || k["retired"] != true {
		t.Fatalf("keys after retire: %d %v", st, m)
	}
	st, m = call(t, agent, "GET", "/v1/wallets", nil)
	for _, w := range m["wallets"].([]any) {
		if w.(map[string]any)["active"] == true {
			t.Fatalf("a retired wallet is still active: %v", m)
		}
	}
	p2.signal(t, syscall.SIGTERM)
	if c := p2.wait(t); c != 0 {
		t.Fatalf("exit %d\n%s", c, p2.log)
	}
}
