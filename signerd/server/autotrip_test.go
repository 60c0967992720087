package server_test

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestPolicyReloadAppliesAutoTrip: a policy reload through the admin API puts the new
// policy's kill_switch.auto_trip in force (the daemon started without one), and a later reload
// without it turns automatic trips off again.
func TestPolicyReloadAppliesAutoTrip(t *testing.T) {
	d := startDaemon(t, nil)
	base := mustRead(t, "testdata/policy.yaml")
	deny := func(req uint64) {
		t.Helper()
		r := d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(31, req, 1, func(c map[string]any) {
			c["recipient_address"] = "0xbad0000000000000000000000000000000000bad"
		})})
		if r.Status != 403 {
			t.Fatalf("denial %d: %d %s", req, r.Status, r.Raw)
		}
	}
	engaged := func() bool {
		return d.admin.do(t, "GET", "/v1/admin/kill-switch", nil).Body["engaged"] == true
	}

	// Start-up policy has no auto_trip: many denials, no trip.
	for i := uint64(1); i <= 4; i++ {
		deny(i)
	}
	time.Sleep(100 * time.Millisecond)
	if engaged() {
		t.Fatal("engaged without an auto_trip policy")
	}

	// Reload with a denial burst of 3 per minute: three denials trip the switch.
	if err := os.WriteFile(d.cfg.Policy, []byte(base+"\nkill_switch:\n  auto_trip:\n    denials: {count: 3, window: 1m}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := d.admin.do(t, "POST", "/v1/admin/policy/reload", nil); r.Status != 200 {
		t.Fatalf("reload: %d %s", r.Status, r.Raw)
	}
	for i := uint64(10); i < 13; i++ {
		deny(i)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !engaged() {
		if time.Now().After(deadline) {
			t.Fatal("3 denials under the reloaded auto_trip policy did not engage the kill switch")
		}
		time.Sleep(20 * time.Millisecond)
	}
	st := d.admin.do(t, "GET", "/v1/admin/kill-switch", nil)
	if st.str("by") != "auto" || !strings.Contains(st.str("reason"), "3 denials") {
		t.Fatalf("engaged by %q (%q), want the automatic trip", st.str("by"), st.str("reason"))
	}

	// Resume, reload without auto_trip: denials no longer trip it.
	if r := d.admin.do(t, "POST", "/v1/admin/kill-switch", map[string]any{"engaged": false}); r.Status != 200 {
		t.Fatalf("resume: %d %s", r.Status, r.Raw)
	}
	if err := os.WriteFile(d.cfg.Policy, []byte(base), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := d.admin.do(t, "POST", "/v1/admin/policy/reload", nil); r.Status != 200 {
		t.Fatalf("reload: %d %s", r.Status, r.Raw)
	}
	for i := uint64(20); i < 26; i++ {
		deny(i)
	}
	time.Sleep(100 * time.Millisecond)
	if engaged() {
		t.Fatal("auto_trip still in force after a reload that removed it")
	}
}

// TestSpendTripCountsAssetOverItsOwnWindow: signatures feed the spend wire with their asset
// (the handlers observe the signed claims), over the wire's own window, not the denial burst's.
func TestSpendTripCountsAssetOverItsOwnWindow(t *testing.T) {
	d := startDaemon(t, nil)
	pol := mustRead(t, "testdata/policy.yaml") + "\nkill_switch:\n  auto_trip:\n    denials: {count: 50, window: 1s}\n    spend:\n      - {limit: \"0.0015 USDC\", window: hour}\n"
	if err := os.WriteFile(d.cfg.Policy, []byte(pol), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := d.admin.do(t, "POST", "/v1/admin/policy/reload", nil); r.Status != 200 {
		t.Fatalf("reload: %d %s", r.Status, r.Raw)
	}
	engaged := func() bool { return d.admin.do(t, "GET", "/v1/admin/kill-switch", nil).Body["engaged"] == true }
	if r := d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(0x41, 1, 1000, nil)}); r.Status != 200 {
		t.Fatalf("first: %d %s", r.Status, r.Raw)
	}
	time.Sleep(1100 * time.Millisecond) // past the denial window
	if engaged() {
		t.Fatal("tripped below the limit")
	}
	if r := d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(0x41, 2, 1000, nil)}); r.Status != 200 {
		t.Fatalf("second: %d %s", r.Status, r.Raw)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !engaged() {
		if time.Now().After(deadline) {
			t.Fatal("2000 base units of USDC within the hour did not trip the 1500/hour wire")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
