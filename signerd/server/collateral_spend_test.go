package server_test

import (
	"strings"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
)

// TestCollateralPayTabSpendTrip: a tab payment is money leaving the wallet, so it feeds the
// kill switch's spend-velocity trip wires as a guarantee does: a replay (same request_id) is
// not counted again, and the payment that brings the hour's ETH over the limit engages the
// switch (operator "auto").
func TestCollateralPayTabSpendTrip(t *testing.T) {
	recipient := common.HexToAddress("0x00000000000000000000000000000000000000a7")
	policy := collateralPolicy + `  - id: tabs
    effect: allow
    actions: [pay_tab]
    agents: [tester]
    sellers: ["` + recipient.Hex() + `"]
    networks: [eip155:1337]
    assets: [ETH]
    max_amount: "0.01 ETH"
kill_switch:
  auto_trip:
    spend:
      - {limit: "0.002 ETH", window: hour}
`
	e := launchCollateralDaemon(t, collateralLaunch{policy: policy})
	e.core.Set("GET /core/tabs/0x2a", `{"tab_id":"0x2a","user_address":"`+strings.ToLower(e.wallet)+`","recipient_address":"`+
		strings.ToLower(recipient.Hex())+`","asset_address":"0x0000000000000000000000000000000000000000","accepted_guarantee_version":1,`+
		`"start_timestamp":1700000000,"ttl_seconds":86400,"status":"OPEN","settlement_status":"PENDING","created_at":1700000000,"updated_at":1700000000}`)
	pay := func(id, amount string) *response {
		return e.agent.do(t, "POST", "/v1/collateral", map[string]any{"action": "pay_tab", "tab_id": "0x2a", "req_id": "1", "amount": amount, "request_id": id})
	}
	engaged := func() bool { return e.admin.do(t, "GET", "/v1/admin/kill-switch", nil).Body["engaged"] == true }

	if r := pay("tab-1", "1500000000000000"); r.Status != 200 || r.str("pay_to") == "" {
		t.Fatalf("first payment: %d %s", r.Status, r.Raw)
	}
	if r := pay("tab-1", "1500000000000000"); r.Status != 200 || r.Body["replayed"] != true {
		t.Fatalf("replay: %d %s", r.Status, r.Raw)
	}
	time.Sleep(100 * time.Millisecond)
	if engaged() {
		t.Fatal("engaged at 0.0015 ETH (the replay was counted again, or the limit is wrong)")
	}
	if r := pay("tab-2", "1000000000000000"); r.Status != 200 {
		t.Fatalf("second payment: %d %s", r.Status, r.Raw)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !engaged() {
		if time.Now().After(deadline) {
			t.Fatal("0.0025 ETH of tab payments within the hour did not engage the kill switch (limit 0.002 ETH)")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := e.admin.do(t, "GET", "/v1/admin/kill-switch", nil); st.str("by") != "auto" {
		t.Fatalf("engaged by %q, want the automatic trip", st.str("by"))
	}
}
