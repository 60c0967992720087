package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSIGHUPAppliesAutoTrip: SIGHUP reloads the policy together with its
// kill_switch.auto_trip settings (the dev policy has none): after the reload a burst of
// denials engages the kill switch automatically.
func TestSIGHUPAppliesAutoTrip(t *testing.T) {
	dir := t.TempDir()
	p := startSignerd(t, "dev", "--dir", dir)
	agent, admin := filepath.Join(dir, "agent.sock"), filepath.Join(dir, "admin.sock")
	p.waitSocket(t, agent)
	p.waitSocket(t, admin)
	_, w := call(t, agent, "GET", "/v1/wallets", nil)
	wallet := w["wallets"].([]any)[0].(map[string]any)["address"].(string)
	stale := func(req int) {
		t.Helper()
		st, m := call(t, agent, "POST", "/v1/guarantees", map[string]any{"claims": map[string]any{
			"version": "v1", "user_address": wallet, "recipient_address": "0x1234567890123456789012345678901234567890",
			"tab_id": "0x78", "req_id": req, "amount": "1000", "asset_address": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
			"timestamp": 5,
		}})
		if st != 403 {
			t.Fatalf("stale request %d: %d %v", req, st, m)
		}
	}
	engaged := func() bool {
		_, m := call(t, admin, "GET", "/v1/admin/kill-switch", nil)
		return m["engaged"] == true
	}
	for i := 1; i <= 4; i++ {
		stale(i)
	}
	time.Sleep(100 * time.Millisecond)
	if engaged() {
		t.Fatal("engaged without auto_trip")
	}

	policy := filepath.Join(dir, "policy.yaml")
	good, err := os.ReadFile(policy)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(policy, append(good, []byte("\nkill_switch:\n  auto_trip:\n    denials: {count: 3, window: 1m}\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	p.signal(t, syscall.SIGHUP)
	waitFor(t, p, "SIGHUP: policy reloaded")
	for i := 10; i < 13; i++ {
		stale(i)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !engaged() {
		if time.Now().After(deadline) {
			t.Fatalf("denials after SIGHUP did not trip the kill switch\n%s", p.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st, m := guarantee(t, dir, wallet, 20); st != 503 || code(m) != "kill_switch_engaged" {
		t.Fatalf("sign after the automatic trip: %d %v", st, m)
	}
	if !strings.Contains(p.log.String(), "automatic kill-switch trips updated") {
		t.Errorf("the reload did not log the new auto_trip settings:\n%s", p.log)
	}
	p.signal(t, syscall.SIGTERM)
	if c := p.wait(t); c != 0 {
		t.Fatalf("exit code %d\n%s", c, p.log)
	}
}
