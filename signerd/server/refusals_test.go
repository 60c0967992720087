package server_test

import (
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/signerd/signerd/signerd/audit"
)

// decisions returns the audit log's decision records with code.
func (d *testDaemon) decisions(t testing.TB, code string) []audit.Event {
	t.Helper()
	head, _, err := d.Ledger().AuditHead()
	if err != nil {
		t.Fatal(err)
	}
	var out []audit.Event
	for i := uint64(1); i <= head; i++ {
		r, ok, err := d.Ledger().AuditRecord(i)
		if err != nil || !ok {
			t.Fatalf("audit record %d: %v %v", i, ok, err)
		}
		if r.Event.Kind == audit.KindDecision && r.Event.Code == code {
			out = append(out, r.Event)
		}
	}
	return out
}

// countRefusals sums the "count" attributes of refusal records.
func countRefusals(t *testing.T, evs []audit.Event) int {
	t.Helper()
	n := 0
	for _, ev := range evs {
		c, err := strconv.Atoi(ev.Attrs["count"])
		if err != nil || c < 1 {
			t.Fatalf("refusal record without a count: %+v", ev)
		}
		n += c
	}
	return n
}

// TestKillSwitchRefusalsAudited: requests refused because the kill switch is engaged leave
// decision records; a flood from one caller is counted into at most one record per second
// (plus the first refusal's), and the counts add up to the refusals.
func TestKillSwitchRefusalsAudited(t *testing.T) {
	d := startDaemon(t, nil)
	if r := d.admin.do(t, "POST", "/v1/admin/kill-switch", map[string]any{"engaged": true, "reason": "test"}); r.Status != 200 {
		t.Fatalf("engage: %d %s", r.Status, r.Raw)
	}
	// One refusal: its record is queued at once (no flush needed).
	if r := d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(51, 1, 1, nil)}); r.Status != 503 || r.errCode() != "kill_switch_engaged" {
		t.Fatalf("engaged: %d %s", r.Status, r.Raw)
	}
	deadline := time.Now().Add(3 * time.Second)
	for len(d.decisions(t, "kill_switch_engaged")) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("a kill-switch refusal left no decision record")
		}
		time.Sleep(10 * time.Millisecond)
	}
	first := d.decisions(t, "kill_switch_engaged")[0]
	if first.Decision != "deny" || first.Agent != "tester" || first.Principal == "" || first.Attrs["route"] != "/v1/guarantees" || first.Attrs["count"] != "1" {
		t.Fatalf("first refusal record: %+v", first)
	}

	// A flood: 8 clients, 300 refusals in all, on both signing routes.
	const clients, each = 8, 30
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range each {
				path, body := "/v1/guarantees", map[string]any{"claims": d.claims(52, uint64(i*100+j), 1, nil)}
				if j%2 == 1 {
					path, body = "/v1/x402/payments", map[string]any{"payment_required_header": "e30=", "tab": map[string]any{"tab_id": "0x1", "next_req_id": "0x0"}}
				}
				if r := d.agent.do(t, "POST", path, body); r.Status != 503 || r.errCode() != "kill_switch_engaged" {
					t.Errorf("flood: %d %s", r.Status, r.Raw)
				}
			}
		}()
	}
	wg.Wait()
	start := time.Now()
	want := 1 + clients*each
	deadline = time.Now().Add(5 * time.Second)
	for {
		evs := d.decisions(t, "kill_switch_engaged")
		got := countRefusals(t, evs)
		if got == want {
			// One caller, two routes: per route the first record plus one per flush.
			if max := 2 * (2 + int(time.Since(start)/time.Second) + 2); len(evs) > max {
				t.Fatalf("%d records for %d refusals, want at most %d (aggregated)", len(evs), want, max)
			}
			break
		}
		if got > want || time.Now().After(deadline) {
			t.Fatalf("refusals counted %d, want %d (%d records)", got, want, len(evs))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if rep, err := d.Ledger().VerifyAudit(); err != nil || !rep.OK {
		t.Fatalf("audit verify: %+v %v", rep, err)
	}
}

// TestApprovalDeniedResubmissionAudited: a request held for approval, denied by an operator,
// then submitted again gets 403 approval_denied, and that refusal is a decision record.
func TestApprovalDeniedResubmissionAudited(t *testing.T) {
	d := startDaemon(t, nil)
	body := map[string]any{"claims": d.claims(53, 1, 600000, nil), "task": map[string]any{"id": "t-deny"}}
	r := d.agent.do(t, "POST", "/v1/guarantees", body)
	if r.Status != 202 || r.errCode() != "approval_pending" {
		t.Fatalf("want 202 approval_pending: %d %s", r.Status, r.Raw)
	}
	id := r.errField("approval_id")
	if r := d.admin.do(t, "POST", "/v1/admin/approvals/"+id+"/deny", map[string]any{"reason": "no"}); r.Status != 200 {
		t.Fatalf("deny: %d %s", r.Status, r.Raw)
	}
	for range 2 {
		if r := d.agent.do(t, "POST", "/v1/guarantees", body); r.Status != 403 || r.errCode() != "approval_denied" {
			t.Fatalf("re-submission: %d %s", r.Status, r.Raw)
		}
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		evs := d.decisions(t, "approval_denied")
		if len(evs) == 2 {
			for _, ev := range evs {
				if ev.Decision != "deny" || ev.ApprovalID != id || ev.Agent != "tester" || ev.TabID != "53" || ev.ReqID != "1" ||
					ev.Rule != "big-payment" || ev.Attrs["refused_at"] != "resubmitted" {
					t.Fatalf("approval_denied record: %+v", ev)
				}
			}
			break
		}
		if len(evs) > 2 || time.Now().After(deadline) {
			t.Fatalf("%d approval_denied decision records, want 2", len(evs))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
