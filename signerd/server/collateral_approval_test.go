package server_test

import (
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"

	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/pipeline"
)

// collateralApprovalPolicy is collateralPolicy with deposits of 0.02 ETH or more held for the
// finance group (15 minutes) and a daily deposit budget.
const collateralApprovalPolicy = collateralPolicy + `approvals:
  - id: big-deposits
    actions: [deposit]
    agents: [tester]
    at_or_above: "0.02 ETH"
    group: finance
    timeout: 15m
budgets:
  - id: deposits-daily
    actions: [deposit]
    per: [agent]
    window: day
    limit: "0.2 ETH"
`

// testClock is a settable daemon clock.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// approvalSteps returns the approval audit records' actions of approval id, in order.
func approvalSteps(t *testing.T, e *collateralEnv, id string) (steps []string, broadcasts []audit.Event) {
	t.Helper()
	head, _, err := e.Ledger().AuditHead()
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= head; i++ {
		r, ok, err := e.Ledger().AuditRecord(i)
		if err != nil || !ok {
			t.Fatalf("audit record %d: %v %v", i, ok, err)
		}
		switch {
		case r.Event.Kind == audit.KindApproval && r.Event.ApprovalID == id:
			steps = append(steps, r.Event.Attrs["action"])
		case r.Event.Kind == audit.KindBroadcast && r.Event.ApprovalID == id:
			broadcasts = append(broadcasts, r.Event)
		}
	}
	return steps, broadcasts
}

// TestCollateralApprovals: a deposit the policy holds for approval answers 202 approval_pending
// with the approval id and sends nothing (no record, no charge); the operator sees it (action,
// request_id, amount) in the admin list. Approved → the re-submission is signed, charged and
// sent (and a further retry replays it); denied → 403 approval_denied, nothing sent; expired
// (daemon clock past the timeout) → 403 approval_denied, nothing sent; approved while the agent
// long-polls → that same call sends it. Every step is in the audit log, and the broadcast
// record names the approval.
func TestCollateralApprovals(t *testing.T) {
	clk := &testClock{t: time.Now()}
	e := launchCollateralDaemon(t, collateralLaunch{policy: collateralApprovalPolicy, maxWait: 700 * time.Millisecond, clock: clk.now})
	wallet := common.HexToAddress(e.wallet)
	amount := new(big.Int).Mul(big.NewInt(30), finney) // 0.03 ETH: held
	records := func(id string) int {
		recs, err := e.Ledger().ByTab(wallet, pipeline.CollateralTabID(id))
		if err != nil {
			t.Fatal(err)
		}
		return len(recs)
	}
	// held submits a deposit and returns its approval id (202; nothing recorded or sent). The
	// long poll is 700 ms: the first answer comes after it.
	held := func(id string) string {
		t.Helper()
		sent := e.chain.distinct()
		r := e.agent.do(t, "POST", "/v1/collateral", deposit(id, amount, false))
		aid := r.errField("approval_id")
		if r.Status != 202 || r.errCode() != "approval_pending" || aid == "" || r.errField("rule") != "big-deposits" {
			t.Fatalf("%s: %d %s, want 202 approval_pending", id, r.Status, r.Raw)
		}
		if e.chain.distinct() != sent || records(id) != 0 {
			t.Fatalf("%s held for approval but %d sent, %d records", id, e.chain.distinct()-sent, records(id))
		}
		return aid
	}

	// Approve.
	a1 := held("ap-1")
	l := e.admin.do(t, "GET", "/v1/admin/approvals", nil)
	if l.Status != 200 || !strings.Contains(string(l.Raw), a1) || !strings.Contains(string(l.Raw), `"request_id":"ap-1"`) ||
		!strings.Contains(string(l.Raw), `"action":"deposit"`) || !strings.Contains(string(l.Raw), amount.String()) {
		t.Fatalf("admin list: %d %s", l.Status, l.Raw)
	}
	if a := e.admin.do(t, "POST", "/v1/admin/approvals/"+a1+"/approve", nil); a.Status != 200 {
		t.Fatalf("approve: %d %s", a.Status, a.Raw)
	}
	sent := e.chain.distinct()
	r := e.agent.do(t, "POST", "/v1/collateral", deposit("ap-1", amount, true))
	hashes, _ := r.Body["tx_hashes"].([]any)
	if r.Status != 200 || r.str("status") != "mined" || len(hashes) != 1 || e.chain.distinct() != sent+1 {
		t.Fatalf("approved deposit: %d %s", r.Status, r.Raw)
	}
	recs, _ := e.Ledger().ByTab(wallet, pipeline.CollateralTabID("ap-1"))
	if len(recs) != 1 || len(recs[0].Charges) == 0 || recs[0].Charges[0].Budget != "deposits-daily" || recs[0].Charges[0].Amount.Cmp(amount) != 0 {
		t.Fatalf("approved deposit's record: %+v", recs)
	}
	again := e.agent.do(t, "POST", "/v1/collateral", deposit("ap-1", amount, false))
	if h, _ := again.Body["tx_hashes"].([]any); again.Status != 200 || again.Body["replayed"] != true || len(h) != 1 || h[0] != hashes[0] ||
		e.chain.distinct() != sent+1 {
		t.Fatalf("retry of the approved deposit: %d %s", again.Status, again.Raw)
	}
	steps, bcs := approvalSteps(t, e, a1)
	if strings.Join(steps, ",") != "requested,approved" || len(bcs) < 2 || bcs[len(bcs)-1].Attrs["tx_hash"] != hashes[0] {
		t.Fatalf("audit of approval %s: steps %v, broadcast records %+v", a1, steps, bcs)
	}

	// Deny.
	a2 := held("ap-2")
	if d := e.admin.do(t, "POST", "/v1/admin/approvals/"+a2+"/deny", map[string]any{"reason": "not now"}); d.Status != 200 {
		t.Fatalf("deny: %d %s", d.Status, d.Raw)
	}
	sent = e.chain.distinct()
	r = e.agent.do(t, "POST", "/v1/collateral", deposit("ap-2", amount, false))
	if r.Status != 403 || r.errCode() != "approval_denied" || r.errField("approval_id") != a2 || e.chain.distinct() != sent || records("ap-2") != 0 {
		t.Fatalf("denied deposit: %d %s", r.Status, r.Raw)
	}
	if steps, _ := approvalSteps(t, e, a2); strings.Join(steps, ",") != "requested,denied" {
		t.Fatalf("audit of approval %s: %v", a2, steps)
	}
	// The refusal's decision record is queued for the next group commit.
	var ds []audit.Event
	for deadline := time.Now().Add(2 * time.Second); len(ds) == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		ds = e.decisions(t, "approval_denied")
	}
	if len(ds) != 1 || ds[0].ApprovalID != a2 || ds[0].Attrs["request_id"] != "ap-2" || ds[0].Attrs["action"] != "deposit" {
		t.Fatalf("approval_denied decision records: %+v", ds)
	}

	// Expire.
	a3 := held("ap-3")
	clk.add(16 * time.Minute)
	r = e.agent.do(t, "POST", "/v1/collateral", deposit("ap-3", amount, false))
	if r.Status != 403 || r.errCode() != "approval_denied" || r.errField("approval_id") != a3 || e.chain.distinct() != sent || records("ap-3") != 0 {
		t.Fatalf("expired approval: %d %s", r.Status, r.Raw)
	}
	if steps, _ := approvalSteps(t, e, a3); strings.Join(steps, ",") != "requested,expired" {
		t.Fatalf("audit of approval %s: %v", a3, steps)
	}

	// Approved while the agent waits: the same call goes on and sends it.
	done := make(chan *response, 1)
	go func() { done <- e.agent.do(t, "POST", "/v1/collateral", deposit("ap-4", amount, false)) }()
	var a4 string
	for deadline := time.Now().Add(time.Second); a4 == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		l := e.admin.do(t, "GET", "/v1/admin/approvals", nil)
		list, _ := l.Body["approvals"].([]any)
		for _, x := range list {
			ap, _ := x.(map[string]any)
			sum, _ := ap["summary"].(map[string]any)
			if sum["request_id"] == "ap-4" && ap["state"] == "pending" {
				a4, _ = ap["id"].(string)
			}
		}
	}
	if a4 == "" {
		t.Fatal("ap-4 not held")
	}
	if a := e.admin.do(t, "POST", "/v1/admin/approvals/"+a4+"/approve", nil); a.Status != 200 {
		t.Fatalf("approve ap-4: %d %s", a.Status, a.Raw)
	}
	r = <-done
	if h, _ := r.Body["tx_hashes"].([]any); r.Status != 200 || len(h) != 1 || e.chain.distinct() != sent+1 || records("ap-4") != 1 {
		t.Fatalf("approved during the long poll: %d %s", r.Status, r.Raw)
	}
	// A deposit under the threshold is not held.
	if r := e.agent.do(t, "POST", "/v1/collateral", deposit("small-1", finney, false)); r.Status != 200 {
		t.Fatalf("small deposit: %d %s", r.Status, r.Raw)
	}
	if rep, err := e.Ledger().VerifyAudit(); err != nil || !rep.OK {
		t.Fatalf("audit: %+v %v", rep, err)
	}
}
