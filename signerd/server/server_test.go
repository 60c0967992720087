package server_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/config"
	"github.com/signerd/signerd/signerd/ledger"
)

func TestAllowSignsAndRecords(t *testing.T) {
	d := startDaemon(t, nil)
	r := d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(1, 1, 5, nil)})
	req := d.checkSigned(t, r)
	id, err := ledger.ParseRecordID(r.str("record_id"))
	if err != nil {
		t.Fatalf("record_id %q: %v", r.str("record_id"), err)
	}
	rec, err := d.Ledger().Record(id)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Status != ledger.StatusSigned || !bytes.Equal(rec.Signature, req.Signature[:]) {
		t.Fatalf("ledger record %+v does not hold the returned signature", rec)
	}
	// wallets lists the wallet for this caller.
	w := d.agent.do(t, "GET", "/v1/wallets", nil)
	if w.Status != 200 || !strings.Contains(string(w.Raw), d.wallet) {
		t.Fatalf("wallets: %d %s", w.Status, w.Raw)
	}
	// The audit chain verifies and holds the decision and the signature.
	v := d.admin.do(t, "GET", "/v1/admin/audit/verify", nil)
	if v.Status != 200 || v.Body["ok"] != true {
		t.Fatalf("audit verify: %d %s", v.Status, v.Raw)
	}
}

func TestDenials(t *testing.T) {
	d := startDaemon(t, nil)
	cases := []struct {
		name   string
		body   map[string]any
		status int
		code   string
	}{
		{"seller denylisted", map[string]any{"claims": d.claims(2, 1, 1, func(c map[string]any) {
			c["recipient_address"] = "0xbad0000000000000000000000000000000000bad"
		})}, 403, policyengine.CodeSellerNotAllowed},
		{"amount over limit", map[string]any{"claims": d.claims(2, 2, 2_000_000, nil)}, 403, policyengine.CodeAmountOverLimit},
		{"stale timestamp", map[string]any{"claims": d.claims(2, 3, 1, func(c map[string]any) { c["timestamp"] = 1_700_000_000 })}, 403, policyengine.CodeStaleTimestamp},
		{"asset not allowed", map[string]any{"claims": d.claims(2, 4, 1, func(c map[string]any) {
			c["asset_address"] = "0x0000000000000000000000000000000000000000"
		})}, 403, policyengine.CodeAssetNotAllowed},
		{"wallet not allowed", map[string]any{"claims": d.claims(2, 5, 1, func(c map[string]any) {
			c["user_address"] = "0x2b5ad5c4795c026514f8317c7a215e218dccd6cf"
		})}, 403, policyengine.CodeWalletNotAllowed},
		{"wallet field differs from claims", map[string]any{"wallet": "0x2b5ad5c4795c026514f8317c7a215e218dccd6cf", "claims": d.claims(2, 6, 1, nil)}, 400, "invalid_request"},
		{"task budget", map[string]any{"claims": d.claims(2, 7, 400_000, nil), "task": map[string]any{"id": "t-budget"}}, 200, ""},
		{"task budget", map[string]any{"claims": d.claims(2, 8, 400_000, nil), "task": map[string]any{"id": "t-budget"}}, 200, ""},
		{"task budget exhausted", map[string]any{"claims": d.claims(2, 9, 400_000, nil), "task": map[string]any{"id": "t-budget"}}, 403, policyengine.CodeBudgetExhausted},
	}
	for _, tc := range cases {
		r := d.agent.do(t, "POST", "/v1/guarantees", tc.body)
		if r.Status != tc.status || r.errCode() != tc.code {
			t.Errorf("%s: got %d %q, want %d %q: %s", tc.name, r.Status, r.errCode(), tc.status, tc.code, r.Raw)
			continue
		}
		if tc.status == 403 && (r.errField("reason") == "" || r.errField("rule") == "") {
			t.Errorf("%s: a denial must carry a rule and a reason: %s", tc.name, r.Raw)
		}
	}
	// Denials are audited (asynchronously: no signature leaves, so the answer does not wait).
	for _, code := range []string{policyengine.CodeSellerNotAllowed, policyengine.CodeAmountOverLimit, policyengine.CodeBudgetExhausted} {
		waitAudit(t, d, code)
	}
}

func TestReplay(t *testing.T) {
	for _, mode := range []string{"durable", "early", "deferred"} {
		t.Run(mode, func(t *testing.T) {
			testReplay(t, startDaemon(t, func(c *config.Config) { c.Performance.Reservation = mode }))
		})
	}
}

func testReplay(t *testing.T, d *testDaemon) {
	claims := d.claims(3, 1, 7, nil)
	first := d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": claims})
	d.checkSigned(t, first)
	again := d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": claims})
	d.checkSigned(t, again)
	if again.str("signature") != first.str("signature") || again.Body["replayed"] != true || again.str("record_id") != first.str("record_id") {
		t.Fatalf("retry did not return the stored signature: %s vs %s", again.Raw, first.Raw)
	}
	changed := d.claims(3, 1, 8, func(c map[string]any) { c["timestamp"] = claims["timestamp"] })
	r := d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": changed})
	if r.Status != 409 || r.errCode() != "replay_conflict" || r.errField("record_id") != first.str("record_id") {
		t.Fatalf("different claims: %d %s", r.Status, r.Raw)
	}
	// Same claims under the other scheme is a different signature: a conflict too.
	r = d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": claims, "scheme": "eip191"})
	if r.Status != 409 || r.errCode() != "replay_conflict" {
		t.Fatalf("same claims, other scheme: %d %s", r.Status, r.Raw)
	}
	// EIP-191 on a fresh req_id signs and verifies under Core's EIP-191 digest.
	r = d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(3, 2, 7, nil), "scheme": "eip191"})
	d.checkSigned(t, r)
}

func TestCBORRoundTrip(t *testing.T) {
	d := startDaemon(t, nil)
	em, _ := cbor.CoreDetEncOptions().EncMode()
	body, err := em.Marshal(map[string]any{"claims": d.claims(4, 1, 3, nil), "task": map[string]any{"id": "cbor", "labels": map[string]string{"k": "v"}}})
	if err != nil {
		t.Fatal(err)
	}
	r := d.agent.raw(t, "POST", "/v1/guarantees", "application/cbor", bytes.NewReader(body))
	if ct := r.Header.Get("Content-Type"); ct != "application/cbor" {
		t.Fatalf("answer Content-Type %q, want application/cbor (%s)", ct, r.Raw)
	}
	d.checkSigned(t, r)
	// CBOR numbers and byte strings are accepted for U256 fields.
	c := d.claims(4, 2, 3, nil)
	c["tab_id"] = []byte{0x04}
	c["req_id"] = uint64(2)
	body, _ = em.Marshal(map[string]any{"claims": c})
	r = d.agent.raw(t, "POST", "/v1/guarantees", "application/cbor", bytes.NewReader(body))
	req := d.checkSigned(t, r)
	if req.Claims.Payment().TabID.Dec() != "4" {
		t.Fatalf("tab_id from a CBOR byte string: %s", req.Claims.Payment().TabID.Dec())
	}
	// Errors come back in CBOR too, naming the field.
	body, _ = em.Marshal(map[string]any{"claims": d.claims(4, 3, 3, nil), "bogus": 1})
	r = d.agent.raw(t, "POST", "/v1/guarantees", "application/cbor", bytes.NewReader(body))
	if r.Status != 400 || r.errCode() != "invalid_request" || r.errField("field") != "bogus" {
		t.Fatalf("unknown CBOR field: %d %v", r.Status, r.Body)
	}
	r = d.agent.raw(t, "POST", "/v1/guarantees", "application/cbor", bytes.NewReader([]byte{0xa1, 0x61}))
	if r.Status != 400 || r.errCode() != "invalid_request" {
		t.Fatalf("truncated CBOR: %d %v", r.Status, r.Body)
	}
}

func TestMalformedRequests(t *testing.T) {
	d := startDaemon(t, nil)
	big := `{"claims":{"version":"v1","pad":"` + strings.Repeat("a", 70<<10) + `"}}`
	cases := []struct {
		name, ct, body string
		status         int
		field          string
	}{
		{"not JSON", "application/json", `{"claims":`, 400, "body"},
		{"unknown field", "application/json", `{"claims":{},"extra":1}`, 400, "extra"},
		{"wrong type", "application/json", `{"claims":{},"scheme":5}`, 400, "scheme"},
		{"claims not an object", "application/json", `{"claims":"x"}`, 400, "claims"},
		{"unknown claims field", "application/json", `{"claims":` + mustJSON(d.claims(5, 1, 1, func(c map[string]any) { c["memo"] = "x" })) + `}`, 400, "claims.memo"},
		{"unknown scheme", "application/json", `{"claims":` + mustJSON(d.claims(5, 1, 1, nil)) + `,"scheme":"eip999"}`, 400, "scheme"},
		{"bad address", "application/json", `{"claims":` + mustJSON(d.claims(5, 1, 1, func(c map[string]any) { c["recipient_address"] = "0x12" })) + `}`, 400, "claims.recipient_address"},
		{"amount above 2^256", "application/json", `{"claims":` + mustJSON(d.claims(5, 1, 1, func(c map[string]any) { c["amount"] = "0x1" + strings.Repeat("0", 64) })) + `}`, 400, "claims.amount"},
		{"trailing data", "application/json", `{"claims":{}} {}`, 400, "body"},
		{"empty body", "application/json", ``, 400, "body"},
		{"huge body", "application/json", big, 413, "body"},
		{"form content type", "application/x-www-form-urlencoded", `a=b`, 415, "Content-Type"},
	}
	for _, tc := range cases {
		r := d.agent.raw(t, "POST", "/v1/guarantees", tc.ct, strings.NewReader(tc.body))
		if r.Status != tc.status || r.errCode() != "invalid_request" || r.errField("field") != tc.field {
			t.Errorf("%s: got %d %s, want %d field %q", tc.name, r.Status, r.Raw, tc.status, tc.field)
		}
	}
	if r := d.agent.do(t, "GET", "/v1/nope", nil); r.Status != 404 {
		t.Errorf("unknown route: %d", r.Status)
	}
	// Still serving.
	d.checkSigned(t, d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(5, 9, 1, nil)}))
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// TestUnknownCaller: a caller the policy does not map, and (as root) a process running as
// another uid, get 403 unknown_caller on both sockets.
func TestUnknownCaller(t *testing.T) {
	d := startDaemon(t, func(c *config.Config) {
		c.Operators = []config.Operator{{Name: "someone-else", UID: 4242}}
	})
	// The policy does not know uid 4242 as an agent, and this process is not an operator.
	if r := d.admin.do(t, "GET", "/v1/admin/status", nil); r.Status != 403 || r.errCode() != "unknown_caller" {
		t.Fatalf("non-operator on the admin socket: %d %s", r.Status, r.Raw)
	}
	// A policy that does not map this uid.
	pol := strings.Replace(mustRead(t, "testdata/policy.yaml"), "uid: self", "uid: 4242", 1)
	d2 := startDaemon(t, nil)
	if err := os.WriteFile(d2.cfg.Policy, []byte(pol), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := d2.admin.do(t, "POST", "/v1/admin/policy/reload", nil); r.Status != 200 {
		t.Fatalf("reload: %d %s", r.Status, r.Raw)
	}
	r := d2.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d2.claims(6, 1, 1, nil)})
	if r.Status != 403 || r.errCode() != "unknown_caller" {
		t.Fatalf("unmapped uid: %d %s", r.Status, r.Raw)
	}
	if os.Getuid() != 0 {
		t.Log("not root: the other-uid client case needs root to switch uid; covered above by an unmapped uid")
		return
	}
	// As root: run this test binary as uid 65534 (gid 65534 owns the sockets) against both sockets.
	d3 := startDaemon(t, func(c *config.Config) {
		c.Sockets.Agent.Group = "65534"
		c.Sockets.Admin.Group = "65534"
		c.Sockets.Admin.Mode = 0o660
	})
	for _, p := range []string{d3.dir, filepath.Dir(d3.dir)} {
		if err := os.Chmod(p, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	exe := copyExecutable(t)
	for _, tc := range []struct{ sock, path string }{
		{d3.cfg.Sockets.Agent.Path, "/v1/wallets"},
		{d3.cfg.Sockets.Admin.Path, "/v1/admin/status"},
	} {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), "SIGNERD_TEST_CLIENT_SOCKET="+tc.sock, "SIGNERD_TEST_CLIENT_PATH="+tc.path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("client as uid 65534: %v: %s", err, out)
		}
		if !strings.HasPrefix(string(out), "403 ") || !strings.Contains(string(out), `"unknown_caller"`) {
			t.Fatalf("uid 65534 on %s: %s", tc.path, out)
		}
	}
}

func mustRead(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// copyExecutable copies the test binary where another uid can run it.
func copyExecutable(t *testing.T) string {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "signerd-exe-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "client")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPolicyReload(t *testing.T) {
	d := startDaemon(t, nil)
	before := d.admin.do(t, "GET", "/v1/admin/policy", nil).str("hash")
	d.checkSigned(t, d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(7, 1, 5000, nil)}))

	// A good policy with a lower per-request maximum: swapped in at once.
	lower := strings.Replace(mustRead(t, "testdata/policy.yaml"), `max_amount: "1 USDC"`, `max_amount: "0.001 USDC"`, 1)
	if err := os.WriteFile(d.cfg.Policy, []byte(lower), 0o600); err != nil {
		t.Fatal(err)
	}
	r := d.admin.do(t, "POST", "/v1/admin/policy/reload", nil)
	if r.Status != 200 || r.str("hash") == before || r.Body["changed"] != true {
		t.Fatalf("good reload: %d %s", r.Status, r.Raw)
	}
	good := r.str("hash")
	if r := d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(7, 2, 5000, nil)}); r.Status != 403 || r.errCode() != policyengine.CodeAmountOverLimit {
		t.Fatalf("new policy not in force: %d %s", r.Status, r.Raw)
	}

	// A policy that does not compile: rejected, the last good one stays in force.
	if err := os.WriteFile(d.cfg.Policy, []byte("version: 1\nrules: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = d.admin.do(t, "POST", "/v1/admin/policy/reload", nil)
	if r.Status != 422 || r.errCode() != "policy_invalid" {
		t.Fatalf("bad reload: %d %s", r.Status, r.Raw)
	}
	if h := d.admin.do(t, "GET", "/v1/admin/policy", nil).str("hash"); h != good {
		t.Fatalf("policy in force %s, want the last good %s", h, good)
	}
	d.checkSigned(t, d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(7, 3, 500, nil)}))
	if r := d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(7, 4, 5000, nil)}); r.Status != 403 {
		t.Fatalf("last good policy not in force: %d %s", r.Status, r.Raw)
	}
	// Both reloads are audited.
	var buf bytes.Buffer
	if err := d.Ledger().ExportAudit(&buf, 0); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(buf.String(), `"policy_reload"`); n != 2 {
		t.Fatalf("%d policy_reload audit records, want 2:\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), "policy_invalid") {
		t.Fatal("the rejected policy is not audited")
	}
}

func TestKillSwitchAdmin(t *testing.T) {
	d := startDaemon(t, func(c *config.Config) { c.Performance.Reservation = "deferred" })
	if r := d.admin.do(t, "POST", "/v1/admin/kill-switch", map[string]any{"engaged": true}); r.Status != 400 {
		t.Fatalf("engage without a reason: %d %s", r.Status, r.Raw)
	}
	r := d.admin.do(t, "POST", "/v1/admin/kill-switch", map[string]any{"engaged": true, "reason": "test stop"})
	if r.Status != 200 {
		t.Fatalf("engage: %d %s", r.Status, r.Raw)
	}
	r = d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(8, 1, 1, nil)})
	if r.Status != 503 || r.errCode() != "kill_switch_engaged" {
		t.Fatalf("signing while engaged: %d %s", r.Status, r.Raw)
	}
	m := d.admin.do(t, "GET", "/metrics", nil)
	for _, want := range []string{"signerd_kill_switch_engaged 1", `signerd_decisions_total{code="kill_switch_engaged",decision="deny"}`} {
		if !strings.Contains(string(m.Raw), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if r := d.admin.do(t, "POST", "/v1/admin/kill-switch", map[string]any{"engaged": false}); r.Status != 200 {
		t.Fatalf("resume: %d %s", r.Status, r.Raw)
	}
	d.checkSigned(t, d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(8, 1, 1, nil)}))
}

func TestApprovals(t *testing.T) {
	d := startDaemon(t, nil)
	body := map[string]any{"claims": d.claims(9, 1, 600_000, nil), "task": map[string]any{"id": "a1"}}
	r := d.agent.do(t, "POST", "/v1/guarantees", body)
	if r.Status != 202 || r.errCode() != "approval_pending" || r.errField("approval_id") == "" {
		t.Fatalf("large payment: %d %s", r.Status, r.Raw)
	}
	id := r.errField("approval_id")
	if g := d.agent.do(t, "GET", "/v1/approvals/"+id, nil); g.Status != 200 || g.str("state") != "pending" {
		t.Fatalf("agent view: %d %s", g.Status, g.Raw)
	}
	l := d.admin.do(t, "GET", "/v1/admin/approvals", nil)
	if l.Status != 200 || !strings.Contains(string(l.Raw), id) {
		t.Fatalf("admin list: %d %s", l.Status, l.Raw)
	}
	if a := d.admin.do(t, "POST", "/v1/admin/approvals/"+id+"/approve", nil); a.Status != 200 {
		t.Fatalf("approve: %d %s", a.Status, a.Raw)
	}
	d.checkSigned(t, d.agent.do(t, "POST", "/v1/guarantees", body))

	// Deny.
	body2 := map[string]any{"claims": d.claims(9, 2, 600_000, nil), "task": map[string]any{"id": "a2"}}
	r = d.agent.do(t, "POST", "/v1/guarantees", body2)
	id2 := r.errField("approval_id")
	if a := d.admin.do(t, "POST", "/v1/admin/approvals/"+id2+"/deny", map[string]any{"reason": "too much"}); a.Status != 200 {
		t.Fatalf("deny: %d %s", a.Status, a.Raw)
	}
	r = d.agent.do(t, "POST", "/v1/guarantees", body2)
	if r.Status != 403 || r.errCode() != "approval_denied" {
		t.Fatalf("denied approval: %d %s", r.Status, r.Raw)
	}
}

func TestX402Payment(t *testing.T) {
	d := startDaemon(t, nil)
	req := `{"x402Version":1,"error":"payment required","accepts":[{"scheme":"exact","network":"eip155:84532","maxAmountRequired":"1","payTo":"0x1234567890123456789012345678901234567890","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e"},{"scheme":"4mica-credit","network":"eip155:84532","maxAmountRequired":"250","payTo":"0x1234567890123456789012345678901234567890","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","resource":"https://api.example.com/x","extra":{"tabEndpoint":"https://api.example.com/tab"}}]}`
	r := d.agent.do(t, "POST", "/v1/x402/payments", []byte(`{"requirements":`+req+`,"tab":{"tab_id":"0xabc","next_req_id":3}}`))
	if r.Status != 200 || r.str("header") != "X-PAYMENT" || r.str("value") == "" {
		t.Fatalf("x402: %d %s", r.Status, r.Raw)
	}
	signed := d.checkSigned(t, r)
	p := signed.Claims.Payment()
	if p.Amount.Dec() != "250" || p.TabID.Dec() != "2748" || p.ReqID.Dec() != "3" {
		t.Fatalf("claims built wrong: %+v", p)
	}
	// A retry (a second later) gets the same signature, not a replay conflict.
	time.Sleep(1100 * time.Millisecond)
	again := d.agent.do(t, "POST", "/v1/x402/payments", []byte(`{"requirements":`+req+`,"tab":{"tab_id":"0xabc","next_req_id":3}}`))
	if again.Status != 200 || again.str("value") != r.str("value") || again.Body["replayed"] != true {
		t.Fatalf("x402 retry: %d %s", again.Status, again.Raw)
	}
	// The same tab and req_id for another amount is a conflict.
	other := strings.Replace(req, `"250"`, `"251"`, 1)
	if c := d.agent.do(t, "POST", "/v1/x402/payments", []byte(`{"requirements":`+other+`,"tab":{"tab_id":"0xabc","next_req_id":3}}`)); c.Status != 409 {
		t.Fatalf("x402 conflicting retry: %d %s", c.Status, c.Raw)
	}
	// x402 v2: requirements in the PAYMENT-REQUIRED header, answer in PAYMENT-SIGNATURE.
	v2 := `{"x402Version":2,"resource":{"url":"https://api.example.com/y","description":"d","mimeType":"application/json"},"accepts":[{"scheme":"4mica-credit","network":"eip155:84532","amount":"77","payTo":"0x1234567890123456789012345678901234567890","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","extra":{"tabEndpoint":"https://api.example.com/tab"}}]}`
	r2 := d.agent.do(t, "POST", "/v1/x402/payments", map[string]any{"payment_required_header": base64.StdEncoding.EncodeToString([]byte(v2)), "tab": map[string]any{"tab_id": "0xabd"}})
	if r2.Status != 200 || r2.str("header") != "PAYMENT-SIGNATURE" {
		t.Fatalf("x402 v2: %d %s", r2.Status, r2.Raw)
	}
	if p := d.checkSigned(t, r2).Claims.Payment(); p.Amount.Dec() != "77" || p.ReqID.Dec() != "0" {
		t.Fatalf("v2 claims: %+v", p)
	}
	if r := d.agent.do(t, "POST", "/v1/x402/payments", []byte(`{"requirements":`+req+`}`)); r.Status != 400 || r.errField("field") != "tab" {
		t.Fatalf("missing tab: %d %s", r.Status, r.Raw)
	}
}

// TestShutdownDrains: requests in flight when Shutdown starts complete with full answers,
// every signature a client received is durable, and the audit chain verifies.
func TestShutdownDrains(t *testing.T) {
	for _, mode := range []string{"durable", "early", "deferred"} {
		t.Run(mode, func(t *testing.T) {
			testShutdownDrains(t, startDaemon(t, func(c *config.Config) { c.Performance.Reservation = mode }))
		})
	}
}

func testShutdownDrains(t *testing.T, d *testDaemon) {
	type got struct{ sig, id string }
	results := make(chan got, 1024)
	stop := make(chan struct{})
	done := make(chan struct{})
	const workers = 4
	for w := 0; w < workers; w++ {
		go func(w int) {
			defer func() { done <- struct{}{} }()
			c := newClient(d.cfg.Sockets.Agent.Path)
			for i := 1; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				b, _ := json.Marshal(map[string]any{"claims": d.claims(uint64(100+w), uint64(i), 1, nil), "task": map[string]any{"id": "drain"}})
				resp, err := c.http.Post("http://signerd/v1/guarantees", "application/json", bytes.NewReader(b))
				if err != nil {
					return // the daemon closed: no answer, no signature
				}
				var body map[string]any
				err = json.NewDecoder(resp.Body).Decode(&body)
				resp.Body.Close()
				if err != nil {
					t.Errorf("truncated answer during drain: %v", err)
					return
				}
				if resp.StatusCode == 200 {
					results <- got{body["signature"].(string), body["record_id"].(string)}
				}
			}
		}(w)
	}
	time.Sleep(300 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lg := d.Ledger()
	if err := d.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	close(stop)
	for i := 0; i < workers; i++ {
		<-done
	}
	close(results)
	// Reopen the ledger file: every received signature is durable.
	l, err := ledger.Open(ledger.Options{Path: lg.Path()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	n := 0
	for g := range results {
		n++
		id, _ := ledger.ParseRecordID(g.id)
		rec, err := l.Record(id)
		if err != nil || rec.Status != ledger.StatusSigned || "0x"+hexs(rec.Signature) != g.sig {
			t.Fatalf("received signature of record %s not durable: %v %+v", g.id, err, rec)
		}
	}
	if n == 0 {
		t.Fatal("no request completed before shutdown")
	}
	if rep, err := l.VerifyAudit(); err != nil || !rep.OK {
		t.Fatalf("audit after drain: %+v %v", rep, err)
	}
	t.Logf("%d signatures received before and during the drain, all durable", n)
}

func hexs(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 2*len(b))
	for i, c := range b {
		out[2*i], out[2*i+1] = digits[c>>4], digits[c&15]
	}
	return string(out)
}

// waitAudit waits until the audit log holds s (denials are audited asynchronously).
func waitAudit(t *testing.T, d *testDaemon, s string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		var buf bytes.Buffer
		if err := d.Ledger().ExportAudit(&buf, 0); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(buf.String(), s) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit log lacks %q", s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestShutdownEndsApprovalWaits: a request held in an approval long poll answers 202 as soon
// as the daemon starts draining, so a shutdown does not wait for the poll to time out.
func TestShutdownEndsApprovalWaits(t *testing.T) {
	d := startDaemon(t, func(c *config.Config) { c.Approvals.MaxWait = 20 * time.Second })
	got := make(chan *response, 1)
	go func() {
		got <- d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(11, 1, 600_000, nil), "task": map[string]any{"id": "w"}})
	}()
	deadline := time.Now().Add(5 * time.Second)
	for len(d.admin.do(t, "GET", "/v1/admin/approvals?state=pending", nil).Body["approvals"].([]any)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the request was never held")
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.Status != 202 || r.errCode() != "approval_pending" {
		t.Fatalf("held request: %d %s", r.Status, r.Raw)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("shutdown took %v", el)
	}
}

// TestKeyImport: a raw key imported through the admin API signs at once (its address is the
// known one for key 0x…02), bad key material is refused, and a retired key stops signing.
func TestKeyImport(t *testing.T) {
	d := startDaemon(t, func(c *config.Config) { c.HSM = env.Options("keys") })
	if r := d.admin.do(t, "POST", "/v1/admin/keys/import", map[string]any{"label": "bad", "key_hex": "0x1234"}); r.Status != 400 || r.errField("field") != "key_hex" {
		t.Fatalf("short key: %d %s", r.Status, r.Raw)
	}
	r := d.admin.do(t, "POST", "/v1/admin/keys/import", map[string]any{"label": "imported",
		"key_hex": "0x0000000000000000000000000000000000000000000000000000000000000002"})
	if r.Status != 200 {
		t.Fatalf("import: %d %s", r.Status, r.Raw)
	}
	key := r.Body["key"].(map[string]any)
	const addr = "0x2b5ad5c4795c026514f8317c7a215e218dccd6cf"
	if key["address"] != addr || key["origin"] != "imported" {
		t.Fatalf("imported key: %v", key)
	}
	d.wallet = addr
	d.checkSigned(t, d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(12, 1, 1, nil)}))
	if r := d.admin.do(t, "POST", "/v1/admin/keys/retire", map[string]any{"uri": key["uri"]}); r.Status != 200 {
		t.Fatalf("retire: %d %s", r.Status, r.Raw)
	}
	if r := d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(12, 2, 1, nil)}); r.Status != 403 {
		t.Fatalf("a retired key signed: %d %s", r.Status, r.Raw)
	}
	waitAudit(t, d, `"key_op"`)
}

// TestExeMatch: callers may be pinned to an executable path and hash (read through
// /proc/PID/exe); a wrong hash makes the caller unknown.
func TestExeMatch(t *testing.T) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	pinned := func(h string) string {
		return strings.Replace(mustRead(t, "testdata/policy.yaml"), "      - uid: self\n",
			"      - uid: self\n        exe: "+exe+"\n        exe_sha256: \""+h+"\"\n", 1)
	}
	for _, tc := range []struct {
		hash   string
		status int
	}{{hex.EncodeToString(sum[:]), 200}, {strings.Repeat("ab", 32), 403}} {
		d := startDaemon(t, nil)
		if err := os.WriteFile(d.cfg.Policy, []byte(pinned(tc.hash)), 0o600); err != nil {
			t.Fatal(err)
		}
		if r := d.admin.do(t, "POST", "/v1/admin/policy/reload", nil); r.Status != 200 {
			t.Fatalf("reload: %d %s", r.Status, r.Raw)
		}
		d.agent = newClient(d.cfg.Sockets.Agent.Path) // a fresh connection: credentials are read per connection
		r := d.agent.do(t, "GET", "/v1/wallets", nil)
		if r.Status != tc.status {
			t.Fatalf("hash %s…: %d %s", tc.hash[:8], r.Status, r.Raw)
		}
	}
}

// TestIntentsLeftByACrashStayPossiblySigned: an intent with no signature when the daemon
// starts may have been signed before a crash: it stays reserved (its charges stand) and is
// counted; the ledger's tests show an identical retry resuming it.
func TestIntentsLeftByACrashStayPossiblySigned(t *testing.T) {
	var orphan ledger.RecordID
	d := startDaemon(t, func(c *config.Config) {
		if err := os.MkdirAll(c.StateDir, 0o700); err != nil {
			t.Fatal(err)
		}
		l, err := ledger.Open(ledger.Options{Path: filepath.Join(c.StateDir, "signerd.db")})
		if err != nil {
			t.Fatal(err)
		}
		res, err := l.Reserve(context.Background(), ledger.Reservation{TabID: big.NewInt(13), ReqID: big.NewInt(1),
			Claims: []byte(`{"orphan":true}`), Charges: nil, Scheme: "eip712"})
		if err != nil || res.Outcome != ledger.Reserved {
			t.Fatalf("reserve: %+v %v", res, err)
		}
		orphan = res.RecordID
		l.Close()
	})
	rec, err := d.Ledger().Record(orphan)
	if err != nil || rec.Status != ledger.StatusReserved {
		t.Fatalf("possibly signed intent after start: %+v %v", rec, err)
	}
	if n, err := d.Ledger().PossiblySigned(); err != nil || n != 1 {
		t.Fatalf("possibly signed count %d %v", n, err)
	}
}

// TestConnectionLimit: past limits.max_connections a new connection is not served until one
// closes, and the daemon keeps serving.
func TestConnectionLimit(t *testing.T) {
	d := startDaemon(t, func(c *config.Config) { c.Limits.MaxConnections = 2 })
	var held []net.Conn
	for i := 0; i < 2; i++ {
		c, err := net.Dial("unix", d.cfg.Sockets.Agent.Path)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	time.Sleep(50 * time.Millisecond) // let the server accept both
	third := newClient(d.cfg.Sockets.Agent.Path)
	third.http.Timeout = 300 * time.Millisecond
	if _, err := third.http.Get("http://signerd/v1/health"); err == nil {
		t.Fatal("a third connection was served past the limit")
	}
	held[0].Close()
	third.http.Timeout = 5 * time.Second
	if r := third.do(t, "GET", "/v1/health", nil); r.Status != 200 {
		t.Fatalf("after a connection closed: %d", r.Status)
	}
	held[1].Close()
}
