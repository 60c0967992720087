package server_test

import (
	"sync"
	"testing"
	"time"

	"github.com/signerd/signerd/signerd/server"
)

// reviewClock is a settable clock for the daemon.
type reviewClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *reviewClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *reviewClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// startDaemonPolicyClock is startDaemon with a given policy text and the daemon's clock.
func startDaemonPolicyClock(t *testing.T, policy string, clock func() time.Time) *testDaemon {
	t.Helper()
	return startDaemonPolicyOpts(t, policy, func(o *server.Options) { o.Clock = clock })
}

// startDaemonPolicyOpts is startDaemon with a given policy text and server options (and a
// 100 ms approvals wait cap).
func startDaemonPolicyOpts(t *testing.T, policy string, mutate func(*server.Options)) *testDaemon {
	t.Helper()
	return launchDaemon(t, []byte(policy), 100*time.Millisecond, nil, mutate)
}

// approvalPolicy mirrors the README example's numbers: a 60 s timestamp skew and a 15 minute
// approval timeout.
const approvalPolicy = `version: 1
settings:
  max_timestamp_skew: 60s
assets:
  USDC:
    address: "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
    decimals: 6
agents:
  tester:
    callers:
      - uid: self
    wallets: any
rules:
  - id: allow-usdc
    effect: allow
    agents: [tester]
    sellers: any
    networks: [eip155:84532]
    assets: [USDC]
    max_amount: "1 USDC"
approvals:
  - id: big-payment
    agents: [tester]
    at_or_above: "0.25 USDC"
    group: finance
    timeout: 15m
`

// TestReviewApprovalOutlivesTimestampSkew: a request held for approval is approved by the
// operator five minutes later, well inside the approval's 15 minute timeout. The agent
// re-submits the same claims, as the 202 tells it to, and is refused stale_timestamp: the
// claims' timestamp is checked against the clock before the approval is looked at. Every
// approval decided later than max_timestamp_skew after the request is useless.
func TestReviewApprovalOutlivesTimestampSkew(t *testing.T) {
	clk := &reviewClock{t: time.Now().Truncate(time.Second)}
	d := startDaemonPolicyClock(t, approvalPolicy, clk.now)
	cl := d.claims(0x51, 1, 300_000, func(m map[string]any) { m["timestamp"] = clk.now().Unix() })
	body := map[string]any{"claims": cl}
	r := d.agent.do(t, "POST", "/v1/guarantees", body)
	if r.Status != 202 || r.errCode() != "approval_pending" {
		t.Fatalf("want 202 approval_pending: %d %s", r.Status, r.Raw)
	}
	id := r.errField("approval_id")
	clk.add(5 * time.Minute)
	if a := d.admin.do(t, "POST", "/v1/admin/approvals/"+id+"/approve", nil); a.Status != 200 {
		t.Fatalf("approve after 5 minutes (timeout 15m): %d %s", a.Status, a.Raw)
	}
	again := d.agent.do(t, "POST", "/v1/guarantees", body)
	if again.Status != 200 {
		t.Fatalf("approved request re-submitted: %d %s", again.Status, again.Raw)
	}
	d.checkSigned(t, again)
}

// TestApprovalsFullIsOverloaded: an agent at its cap of pending approvals gets 503 overloaded
// with Retry-After (not store_unavailable); a re-submission of a request already held still
// gets its 202.
func TestApprovalsFullIsOverloaded(t *testing.T) {
	d := startDaemonPolicyOpts(t, approvalPolicy, func(o *server.Options) { o.Config.Approvals.MaxPendingPerAgent = 2 })
	var first map[string]any
	for i := range 2 {
		body := map[string]any{"claims": d.claims(0x61, uint64(i+1), 300_000, nil)}
		if i == 0 {
			first = body
		}
		if r := d.agent.do(t, "POST", "/v1/guarantees", body); r.Status != 202 || r.errCode() != "approval_pending" {
			t.Fatalf("approval %d: %d %s", i, r.Status, r.Raw)
		}
	}
	r := d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(0x61, 3, 300_000, nil)})
	if r.Status != 503 || r.errCode() != "overloaded" || r.Header.Get("Retry-After") == "" {
		t.Fatalf("third pending approval of one agent: %d %s (Retry-After %q), want 503 overloaded with Retry-After",
			r.Status, r.Raw, r.Header.Get("Retry-After"))
	}
	if r := d.agent.do(t, "POST", "/v1/guarantees", first); r.Status != 202 {
		t.Fatalf("re-submission of a held request at the cap: %d %s", r.Status, r.Raw)
	}
}

// TestApprovedStaleRequestBoundedByApprovalTimeout: the freshness exception of an approved
// request lasts only until the approval's own expiry; after it the stale claims are refused.
func TestApprovedStaleRequestBoundedByApprovalTimeout(t *testing.T) {
	clk := &reviewClock{t: time.Now().Truncate(time.Second)}
	d := startDaemonPolicyClock(t, approvalPolicy, clk.now)
	body := map[string]any{"claims": d.claims(0x52, 1, 300_000, func(m map[string]any) { m["timestamp"] = clk.now().Unix() })}
	r := d.agent.do(t, "POST", "/v1/guarantees", body)
	if r.Status != 202 {
		t.Fatalf("want 202: %d %s", r.Status, r.Raw)
	}
	if a := d.admin.do(t, "POST", "/v1/admin/approvals/"+r.errField("approval_id")+"/approve", nil); a.Status != 200 {
		t.Fatalf("approve: %d %s", a.Status, a.Raw)
	}
	clk.add(16 * time.Minute) // past the 15 minute approval timeout
	again := d.agent.do(t, "POST", "/v1/guarantees", body)
	if again.Status != 403 || again.errCode() != "stale_timestamp" {
		t.Fatalf("approved request re-submitted after its approval's timeout: %d %s, want 403 stale_timestamp", again.Status, again.Raw)
	}
}
