package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

func pendingApproval(t *testing.T, c *client, cl claims) string {
	t.Helper()
	st, _, ae, err := sign(c, cl, nil)
	if err != nil || st != 202 || ae.Code != "approval_pending" || ae.ApprovalID == "" || ae.Rule != "big-payment" {
		t.Fatalf("want 202 approval_pending: %d %+v %v", st, ae, err)
	}
	return ae.ApprovalID
}

func TestApprovals(t *testing.T) {
	needRoot(t) // bob (nobody) tries to approve
	e := newEnv(t, envOptions{})
	e.start()
	c := e.agentClient()

	t.Run("approve", func(t *testing.T) {
		cl := newClaims("600000")
		id := pendingApproval(t, c, cl)
		// Re-submitting while pending gives the same approval.
		if id2 := pendingApproval(t, c, cl); id2 != id {
			t.Fatalf("re-submission filed a new approval %s (first %s)", id2, id)
		}
		out, errs, code := e.ctl("approvals", "list")
		if code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "pending") || !strings.Contains(out, "600000") {
			t.Fatalf("approvals list: %d\n%s%s", code, out, errs)
		}
		// bob is not in the finance group.
		if out, errs, code := e.ctlAs(nobodyUID, "approvals", "approve", id); code != 1 || !strings.Contains(errs, "not_in_group") {
			t.Fatalf("bob approves: %d %s %s", code, out, errs)
		}
		// The agent can poll its approval.
		st, raw, _ := c.call("GET", "/v1/approvals/"+id, nil)
		if st != 200 || !strings.Contains(string(raw), "pending") {
			t.Fatalf("agent poll: %d %s", st, raw)
		}
		if out, errs, code := e.ctl("approvals", "approve", id); code != 0 || !strings.Contains(out, "approved "+id) {
			t.Fatalf("approve: %d %s %s", code, out, errs)
		}
		st, g, ae, _ := sign(c, cl, nil)
		if st != 200 {
			t.Fatalf("approved request re-submitted: %d %+v", st, ae)
		}
		verifyGuarantee(t, g)
		if out, errs, code := e.ctl("approvals", "deny", id, "--reason", "late"); code != 1 || !strings.Contains(errs, "already_decided") {
			t.Fatalf("deny after approve: %d %s %s", code, out, errs)
		}
	})

	t.Run("deny", func(t *testing.T) {
		cl := newClaims("700000")
		id := pendingApproval(t, c, cl)
		if out, errs, code := e.ctl("approvals", "deny", id, "--reason", "not this vendor"); code != 0 {
			t.Fatalf("deny: %d %s %s", code, out, errs)
		}
		st, _, ae, _ := sign(c, cl, nil)
		if st != 403 || ae.Code != "approval_denied" || !strings.Contains(ae.Reason, "not this vendor") {
			t.Fatalf("denied request re-submitted: %d %+v", st, ae)
		}
	})

	t.Run("expire", func(t *testing.T) {
		cl := newClaims("800000")
		id := pendingApproval(t, c, cl)
		time.Sleep(3500 * time.Millisecond) // the rule's timeout is 3s
		st, _, ae, _ := sign(c, cl, nil)
		if st != 403 || ae.Code != "approval_denied" {
			t.Fatalf("expired approval: %d %+v", st, ae)
		}
		out, _, _ := e.ctl("approvals", "list", "--state", "expired", "--json")
		if !strings.Contains(out, id) {
			t.Fatalf("expired approval not listed: %s", out)
		}
		if _, errs, code := e.ctl("approvals", "approve", id); code != 1 || !strings.Contains(errs, "already_decided") {
			t.Fatalf("approve after expiry: %d %s", code, errs)
		}
	})

	// Every step is in the audit log.
	out, errs, code := e.ctl("audit", "export")
	if code != 0 {
		t.Fatalf("audit export: %s", errs)
	}
	seen := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var r struct {
			Kind  string            `json:"kind"`
			Attrs map[string]string `json:"attrs"`
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("export line %q: %v", line, err)
		}
		if r.Kind == "approval" {
			seen[r.Attrs["action"]]++
		}
	}
	if seen["requested"] != 3 || seen["approved"] != 1 || seen["denied"] != 1 || seen["expired"] != 1 {
		t.Fatalf("approval audit records: %v", seen)
	}
	if out, errs, code := e.ctl("audit", "verify"); code != 0 || !strings.Contains(out, "OK") {
		t.Fatalf("audit verify: %d %s %s", code, out, errs)
	}
}

func TestPolicyReload(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.start()
	c := e.agentClient()
	if st, _, ae, _ := sign(c, newClaims("1000"), nil); st != 200 {
		t.Fatalf("before reload: %d %+v", st, ae)
	}
	statusHash := func() string {
		out, _, code := e.ctl("status", "--json")
		var st struct {
			Policy struct {
				Hash string `json:"hash"`
			} `json:"policy"`
		}
		if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
			t.Fatalf("status: %d %s", code, out)
		}
		return st.Policy.Hash
	}
	h0 := statusHash()
	// Good: a lower per-request maximum takes effect at once.
	e.writePolicy(strings.Replace(apiPolicy, `max_amount: "1000000"`, `max_amount: "500"`, 1))
	out, errs, code := e.ctl("reload-policy")
	if code != 0 || !strings.Contains(out, "policy reloaded") {
		t.Fatalf("reload good: %d %s %s", code, out, errs)
	}
	h1 := statusHash()
	if h1 == h0 {
		t.Fatal("policy hash unchanged after a good reload")
	}
	if st, _, ae, _ := sign(c, newClaims("1000"), nil); st != 403 || ae.Code != "amount_over_limit" {
		t.Fatalf("after good reload: %d %+v", st, ae)
	}
	// Bad: refused, the last good policy stays in force.
	e.writePolicy("version: 1\nrules:\n  - id: broken\n    effect: maybe\n")
	out, errs, code = e.ctl("reload-policy")
	if code != 1 || !strings.Contains(errs, "policy_invalid") {
		t.Fatalf("reload bad: %d %s %s", code, out, errs)
	}
	if statusHash() != h1 {
		t.Fatal("a bad policy replaced the good one")
	}
	if st, _, ae, _ := sign(c, newClaims("1000"), nil); st != 403 || ae.Code != "amount_over_limit" {
		t.Fatalf("after bad reload: %d %+v", st, ae)
	}
	if st, _, ae, _ := sign(c, newClaims("400"), nil); st != 200 {
		t.Fatalf("after bad reload, small amount: %d %+v", st, ae)
	}
	// A policy without an allow rule for this request: default deny.
	e.writePolicy(strings.Replace(apiPolicy, "  - id: allow-usdc\n    effect: allow\n    agents: [tester]\n",
		"  - id: allow-usdc\n    effect: allow\n    agents: [tester]\n    labels: {suite: never}\n", 1))
	if _, errs, code := e.ctl("reload-policy"); code != 0 {
		t.Fatalf("reload: %s", errs)
	}
	if st, _, ae, _ := sign(c, newClaims("5"), nil); st != 403 || ae.Code != "default_deny" {
		t.Fatalf("no allow rule: %d %+v", st, ae)
	}
	// SIGHUP reloads too.
	e.writePolicy(apiPolicy)
	e.proc.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(10 * time.Second)
	for statusHash() != h0 {
		if time.Now().After(deadline) {
			t.Fatalf("SIGHUP did not reload\n%s", e.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st, _, ae, _ := sign(c, newClaims("1000"), nil); st != 200 {
		t.Fatalf("after SIGHUP: %d %+v", st, ae)
	}
	// Reloads are audited.
	out, _, _ = e.ctl("audit", "export")
	if n := strings.Count(out, `"kind":"policy_reload"`); n < 4 {
		t.Fatalf("%d policy_reload audit records, want ≥ 4", n)
	}
}

// TestOtherUIDRefused: a caller whose uid the policy does not know gets 403 unknown_caller on
// the agent socket; on the admin socket a uid that is not an operator is refused, and an
// operator's uid (bob = nobody) is served.
func TestOtherUIDRefused(t *testing.T) {
	if syscall.Getuid() != 0 {
		// Without root no client can run as another uid: check the same refusal with a policy
		// that maps some other uid instead of ours.
		e := newEnv(t, envOptions{policy: strings.Replace(apiPolicy, "callers: [{uid: self}]", "callers: [{uid: 4242}]", 1)})
		e.start()
		if st, _, ae, _ := sign(e.agentClient(), newClaims("1000"), nil); st != 403 || ae.Code != "unknown_caller" {
			t.Fatalf("caller unknown to the policy: %d %+v", st, ae)
		}
		return
	}
	e := newEnv(t, envOptions{})
	e.start()
	body, _ := json.Marshal(map[string]any{"claims": newClaims("1000")})
	asUID := func(uid, gid uint32, sock, method, path string, data []byte) (string, string) {
		if clientBin == "" {
			t.Fatal("no client binary")
		}
		cmd := exec.Command(clientBin)
		cmd.Env = append(os.Environ(), "SIGNERD_E2E_CLIENT=1", "SIGNERD_E2E_SOCK="+sock, "SIGNERD_E2E_METHOD="+method, "SIGNERD_E2E_PATH="+path)
		cmd.Stdin = bytes.NewReader(data)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("client as %d: %v %s", uid, err, out)
		}
		s := strings.TrimSpace(string(out))
		i := strings.LastIndex(s, "\n")
		return s[:i], s[i+1:]
	}
	b, code := asUID(nobodyUID, nobodyUID, e.agent, "POST", "/v1/guarantees", body)
	if code != "403" || errOf([]byte(b)).Code != "unknown_caller" {
		t.Fatalf("agent socket as nobody: %s %s", code, b)
	}
	b, code = asUID(65533, nobodyUID, e.admin, "GET", "/v1/admin/status", nil)
	if code != "403" || errOf([]byte(b)).Code != "unknown_caller" {
		t.Fatalf("admin socket as a non-operator: %s %s", code, b)
	}
	if out, errs, code := e.ctlAs(nobodyUID, "status"); code != 0 || !strings.Contains(out, "kill switch") {
		t.Fatalf("admin socket as operator bob: %d %s %s", code, out, errs)
	}
	// Root (the policy's agent) still signs.
	if st, _, ae, _ := sign(e.agentClient(), newClaims("1000"), nil); st != 200 {
		t.Fatalf("root: %d %+v", st, ae)
	}
}

// TestApprovalSurvivesRestart: an approval filed and approved before a restart lets the agent's
// re-submission through after it; a pending one is still pending with the same id.
func TestApprovalSurvivesRestart(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.start()
	c := e.agentClient()
	approved, pending := newClaims("600000"), newClaims("700000")
	id1 := pendingApproval(t, c, approved)
	id2 := pendingApproval(t, c, pending)
	if _, errs, code := e.ctl("approvals", "approve", id1); code != 0 {
		t.Fatal(errs)
	}
	e.stopClean()
	e.start()
	c = e.agentClient()
	if st, g, ae, _ := sign(c, approved, nil); st != 200 {
		t.Fatalf("approved before restart: %d %+v", st, ae)
	} else {
		verifyGuarantee(t, g)
	}
	if id := pendingApproval(t, c, pending); id != id2 {
		t.Fatalf("pending approval after restart: %s, was %s", id, id2)
	}
}

// TestApprovalLongPoll: the agent's request is held (long poll) and answered as soon as an
// operator approves, well before the configured wait ends.
func TestApprovalLongPoll(t *testing.T) {
	e := newEnv(t, envOptions{maxWait: 20 * time.Second})
	e.start()
	c := e.agentClient()
	type res struct {
		st  int
		ae  apiErr
		dur time.Duration
	}
	done := make(chan res, 1)
	start := time.Now()
	go func() {
		st, _, ae, _ := sign(c, newClaims("600000"), nil)
		done <- res{st, ae, time.Since(start)}
	}()
	var id string
	deadline := time.Now().Add(10 * time.Second)
	for id == "" {
		out, _, _ := e.ctl("approvals", "list", "--state", "pending", "--json")
		var l struct {
			Approvals []struct {
				ID string `json:"id"`
			} `json:"approvals"`
		}
		json.Unmarshal([]byte(out), &l)
		if len(l.Approvals) > 0 {
			id = l.Approvals[0].ID
		} else if time.Now().After(deadline) {
			t.Fatal("the held request never showed up as a pending approval")
		} else {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if _, errs, code := e.ctl("approvals", "approve", id); code != 0 {
		t.Fatal(errs)
	}
	r := <-done
	if r.st != 200 || r.dur >= 20*time.Second {
		t.Fatalf("held request: %d %+v after %v", r.st, r.ae, r.dur)
	}
}
