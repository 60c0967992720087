package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/signerd/signerd/signerd/fourmica"
)

func TestAllowAndReplay(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.start()
	c := e.agentClient()
	cl := newClaims("1000")
	st, g, ae, err := sign(c, cl, nil)
	if err != nil || st != 200 {
		t.Fatalf("allow: %d %+v %v\n%s", st, ae, err, e.log())
	}
	verifyGuarantee(t, g)
	// Same (wallet, tab, req) and identical claims: the stored signature again.
	st, g2, ae, err := sign(c, cl, nil)
	if err != nil || st != 200 || g2.Signature != g.Signature || g2.RecordID != g.RecordID {
		t.Fatalf("replay same claims: %d %+v %v: %s vs %s", st, ae, err, g2.Signature, g.Signature)
	}
	// Same key, different claims: 409.
	st, _, ae, err = sign(c, cl.with("amount", "1001"), nil)
	if err != nil || st != 409 || ae.Code != "replay_conflict" {
		t.Fatalf("replay different claims: %d %+v %v", st, ae, err)
	}
	// Next req id on the same tab is fine.
	st, g3, ae, err := sign(c, cl.with("req_id", "0x2"), nil)
	if err != nil || st != 200 || g3.Signature == g.Signature {
		t.Fatalf("next req: %d %+v %v", st, ae, err)
	}
	verifyGuarantee(t, g3)
	e.stopClean()
}

// TestDenialCodes: every policy denial code the daemon can produce over the agent socket, with
// its HTTP status and rule, and the daemon keeps signing afterwards.
func TestDenialCodes(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.start()
	c := e.agentClient()
	now := time.Now().Unix()
	v2 := func(registry string) claims {
		return newClaims("1000").canonicalV2(t, registry, "0x2222222222222222222222222222222222222222", 80, "hard-finality")
	}
	cases := []struct {
		name   string
		claims claims
		labels map[string]string
		wallet string
		status int
		code   string
		rule   string
	}{
		{name: "zero amount", claims: newClaims("0"), status: 403, code: "invalid_intent"},
		{name: "stale timestamp", claims: newClaims("1000").with("timestamp", now-3600), status: 403, code: "stale_timestamp"},
		{name: "seller not allowed", claims: newClaims("1000").with("recipient_address", "0x9999999999999999999999999999999999999999"), status: 403, code: "seller_not_allowed"},
		{name: "explicitly denied seller", claims: newClaims("1000").with("recipient_address", sellerBad), status: 403, code: "seller_not_allowed", rule: "drainer"},
		{name: "asset not allowed", claims: newClaims("1000").with("asset_address", "0x4200000000000000000000000000000000000006"), status: 403, code: "asset_not_allowed"},
		{name: "amount over limit", claims: newClaims("1000001"), labels: map[string]string{"task": "big"}, status: 403, code: "amount_over_limit"},
		{name: "version not allowed", claims: v2(sellerOK), status: 403, code: "version_not_allowed"},
		{name: "validation not allowed", claims: v2("0x3333333333333333333333333333333333333333"), labels: map[string]string{"task": "v2", "suite": "v2"}, status: 403, code: "validation_not_allowed"},
		{name: "deny rule by label", claims: newClaims("1000"), labels: map[string]string{"task": "f", "state": "frozen"}, status: 403, code: "denied_by_rule", rule: "frozen"},
		{name: "network denied", claims: newClaims("1000"), labels: map[string]string{"task": "n", "suite": "nonet"}, status: 403, code: "network_not_allowed", rule: "no-net"},
		{name: "wallet of another user", claims: newClaims("1000").with("user_address", "0x6813Eb9362372EEF6200f3b1dbC3f819671cBA69"), status: 403, code: "wallet_not_allowed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, _, ae, err := sign(c, tc.claims, tc.labels)
			if err != nil {
				t.Fatal(err)
			}
			if st != tc.status || ae.Code != tc.code || (tc.rule != "" && ae.Rule != tc.rule) || ae.Reason == "" {
				t.Fatalf("got %d %+v, want %d %s rule %q", st, ae, tc.status, tc.code, tc.rule)
			}
		})
	}
	// The v2 rule does allow good V2 claims (so the validation case above is a real denial).
	if st, g, ae, _ := sign(c, v2(sellerOK), map[string]string{"task": "v2", "suite": "v2"}); st != 200 {
		t.Fatalf("good v2: %d %+v", st, ae)
	} else {
		verifyGuarantee(t, g)
	}
	t.Run("budget exhausted", func(t *testing.T) {
		lb := map[string]string{"task": "b", "suite": "budget"}
		for i := 0; i < 2; i++ {
			if st, _, ae, _ := sign(c, newClaims("1000"), lb); st != 200 {
				t.Fatalf("within budget %d: %d %+v", i, st, ae)
			}
		}
		st, _, ae, _ := sign(c, newClaims("1000"), lb) // 3000 > 2500
		if st != 403 || ae.Code != "budget_exhausted" || ae.Rule != "budget-suite" {
			t.Fatalf("over budget: %d %+v", st, ae)
		}
		if st, _, ae, _ := sign(c, newClaims("500"), lb); st != 200 { // exactly 2500
			t.Fatalf("to the limit: %d %+v", st, ae)
		}
	})
	t.Run("rate limited", func(t *testing.T) {
		lb := map[string]string{"task": "r", "suite": "rate"}
		for i := 0; i < 2; i++ {
			if st, _, ae, _ := sign(c, newClaims("1"), lb); st != 200 {
				t.Fatalf("within rate %d: %d %+v", i, st, ae)
			}
		}
		if st, _, ae, _ := sign(c, newClaims("1"), lb); st != 403 || ae.Code != "rate_limited" {
			t.Fatalf("over rate: %d %+v", st, ae)
		}
	})
	t.Run("unknown wallet parameter", func(t *testing.T) {
		st, raw, _ := c.call("POST", "/v1/guarantees", map[string]any{"wallet": "0x6813Eb9362372EEF6200f3b1dbC3f819671cBA69", "claims": newClaims("1")})
		if ae := errOf(raw); st != 400 || ae.Code != "invalid_request" || ae.Field != "wallet" {
			t.Fatalf("foreign wallet: %d %s", st, raw)
		}
	})
	t.Run("kill switch engaged", func(t *testing.T) {
		if out, errs, code := e.ctl("stop", "--reason", "denial-code test"); code != 0 {
			t.Fatalf("stop: %d %s %s", code, out, errs)
		}
		st, _, ae, _ := sign(c, newClaims("1"), nil)
		if st != 503 || ae.Code != "kill_switch_engaged" {
			t.Fatalf("while engaged: %d %+v", st, ae)
		}
		if out, errs, code := e.ctl("resume"); code != 0 {
			t.Fatalf("resume: %d %s %s", code, out, errs)
		}
	})
	// Still serving.
	if st, g, ae, _ := sign(c, newClaims("7"), nil); st != 200 {
		t.Fatalf("after denials: %d %+v", st, ae)
	} else {
		verifyGuarantee(t, g)
	}
	// Prometheus metrics on the admin socket count decisions by code.
	st, metrics, err := e.adminClient().call("GET", "/metrics", nil)
	if err != nil || st != 200 {
		t.Fatalf("metrics: %d %v", st, err)
	}
	for _, want := range []string{`signerd_decisions_total{code="stale_timestamp",decision="deny"} 1`,
		`signerd_decisions_total{code="budget_exhausted",decision="deny"} 1`, `signerd_kill_switch_engaged 0`} {
		if !strings.Contains(string(metrics), want) {
			t.Fatalf("metrics lack %s", want)
		}
	}
	// Every policy denial is in the audit log with its code (denials are audited asynchronously:
	// allow a moment for the next group commit).
	want := map[string]bool{"budget_exhausted": true, "rate_limited": true}
	for _, tc := range cases {
		want[tc.code] = true
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, errs, code := e.ctl("audit", "export")
		if code != 0 {
			t.Fatalf("audit export: %s", errs)
		}
		missing := []string{}
		for c := range want {
			if !strings.Contains(out, `"decision":"deny","code":"`+c+`"`) {
				missing = append(missing, c)
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("denials without an audit record: %v", missing)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

const sample402 = `{"x402Version": 1, "error": "payment required", "accepts": [{
  "scheme": "4mica-credit", "network": "eip155:84532", "maxAmountRequired": "10000",
  "payTo": "0x1234567890123456789012345678901234567890", "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
  "resource": "https://api.example.com/v1/weather", "description": "one forecast", "mimeType": "application/json",
  "maxTimeoutSeconds": 300, "extra": {"tabEndpoint": "https://api.example.com/x402/tab"}}]}`

// TestX402Payment: the x402 endpoint returns a payment header whose guarantee verifies, and a
// retry with the same tab and request id returns the same header.
func TestX402Payment(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.start()
	c := e.agentClient()
	body := map[string]any{"requirements": json.RawMessage(sample402), "tab": map[string]any{"tab_id": randHex(16), "next_req_id": "0x0"}}
	st, raw, err := c.call("POST", "/v1/x402/payments", body)
	if err != nil || st != 200 {
		t.Fatalf("x402: %d %v %s", st, err, raw)
	}
	var pay struct {
		Header   string `json:"header"`
		Value    string `json:"value"`
		RecordID string `json:"record_id"`
	}
	json.Unmarshal(raw, &pay)
	if pay.Header != "X-PAYMENT" || pay.RecordID == "" {
		t.Fatalf("x402 answer: %s", raw)
	}
	env, err := fourmica.DecodeEnvelope(pay.Value)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := devDomain.VerifyRequest(env.Payload); err != nil {
		t.Fatalf("x402 guarantee does not verify: %v", err)
	}
	if p := env.Payload.Claims.Payment(); !strings.EqualFold(p.User.Hex(), wallet1) || p.Amount.Dec() != "10000" {
		t.Fatalf("x402 claims: user %s amount %s", p.User.Hex(), p.Amount.Dec())
	}
	st, raw2, _ := c.call("POST", "/v1/x402/payments", body)
	var again struct {
		Value string `json:"value"`
	}
	json.Unmarshal(raw2, &again)
	if st != 200 || again.Value != pay.Value {
		t.Fatalf("x402 retry: %d %s", st, raw2)
	}
	// A seller the policy does not allow is refused.
	bad := strings.Replace(sample402, "0x1234567890123456789012345678901234567890", "0x9999999999999999999999999999999999999999", 1)
	st, raw, _ = c.call("POST", "/v1/x402/payments", map[string]any{"requirements": json.RawMessage(bad), "tab": map[string]any{"tab_id": randHex(16), "next_req_id": "0x0"}})
	if st != 403 || errOf(raw).Code != "seller_not_allowed" {
		t.Fatalf("x402 bad seller: %d %s", st, raw)
	}
}

// TestAutoTrip: the policy's kill_switch.auto_trip engages the switch after a burst of denials.
func TestAutoTrip(t *testing.T) {
	e := newEnv(t, envOptions{policy: apiPolicy + "kill_switch:\n  auto_trip:\n    denials: {count: 5, window: 1m}\n"})
	e.start()
	c := e.agentClient()
	for i := 0; i < 5; i++ {
		if st, _, ae, _ := sign(c, newClaims("1").with("timestamp", 5), nil); st != 403 {
			t.Fatalf("denial %d: %d %+v", i, st, ae)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, _, ae, _ := sign(c, newClaims("1"), nil)
		if st == 503 && ae.Code == "kill_switch_engaged" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("5 denials did not trip the kill switch: %d %+v", st, ae)
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, _, _ := e.ctl("status")
	if !strings.Contains(out, "ENGAGED") || !strings.Contains(out, "by auto") {
		t.Fatalf("status: %s", out)
	}
}
