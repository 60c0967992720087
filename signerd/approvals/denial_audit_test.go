package approvals

import (
	"context"
	"crypto/sha256"
	"path/filepath"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"

	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/ledger"
	"github.com/signerd/signerd/signerd/pipeline"
)

// TestAdapterAuditsApprovalDenied: every time the adapter tells the pipeline a request's
// approval was denied or expired (which the pipeline answers with 403 approval_denied), a
// decision record is in the real ledger's audit chain: the long poll that sees the denial, and
// each re-submission of the denied or expired request. Pending and approved answers add none.
func TestAdapterAuditsApprovalDenied(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)}
	l, err := ledger.Open(ledger.Options{Path: filepath.Join(t.TempDir(), "ledger.db"), Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	m, err := New(Options{Auditor: l, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	p := ForPipeline(m)
	pr := pipeline.ApprovalRequest{Fingerprint: sha256.Sum256([]byte("deny-me")), Agent: "agent-1", Principal: "uid:1000",
		Wallet: common.HexToAddress("0xabc"), Rule: "big-spend", Timeout: time.Minute,
		Summary: map[string]string{"tab_id": "7", "req_id": "3", "scheme": "eip712", "amount": "5"}}

	st, err := p.Submit(ctx, pr)
	if err != nil || st.State != pipeline.ApprovalWaiting {
		t.Fatalf("submit: %+v %v", st, err)
	}
	if _, err := m.Deny(ctx, st.ID, "bob", "not this one"); err != nil {
		t.Fatal(err)
	}
	if w, _ := p.Wait(ctx, st.ID, time.Millisecond); w.State != pipeline.ApprovalDenied {
		t.Fatalf("wait: %+v", w)
	}
	for range 2 {
		if again, _ := p.Submit(ctx, pr); again.State != pipeline.ApprovalDenied || again.ID != st.ID {
			t.Fatalf("re-submission: %+v", again)
		}
	}
	// An expired one, re-submitted.
	pr2 := pr
	pr2.Fingerprint = sha256.Sum256([]byte("let-expire"))
	st2, _ := p.Submit(ctx, pr2)
	clk.Advance(2 * time.Minute)
	m.Sweep(ctx)
	if again, _ := p.Submit(ctx, pr2); again.State != pipeline.ApprovalDenied {
		t.Fatalf("expired re-submission: %+v", again)
	}
	// Approved: no refusal record.
	pr3 := pr
	pr3.Fingerprint = sha256.Sum256([]byte("approve-me"))
	st3, _ := p.Submit(ctx, pr3)
	m.Approve(ctx, st3.ID, "bob")
	p.Submit(ctx, pr3)

	// Async records are written with the next group: an AppendAudit flushes behind them.
	if _, err := l.AppendAudit(ctx, audit.Event{Kind: audit.KindPolicyReload, Decision: "allow"}); err != nil {
		t.Fatal(err)
	}
	var refusals []audit.Event
	seq, _, err := l.AuditHead()
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= seq; i++ {
		r, ok, err := l.AuditRecord(i)
		if err != nil || !ok {
			t.Fatalf("record %d: %v %v", i, ok, err)
		}
		if r.Event.Kind == audit.KindDecision {
			refusals = append(refusals, r.Event)
		}
	}
	if len(refusals) != 4 {
		t.Fatalf("%d decision records, want 4 (long poll, 2 re-submissions, expired re-submission): %+v", len(refusals), refusals)
	}
	for i, ev := range refusals {
		want := st.ID
		if i == 3 {
			want = st2.ID
		}
		if ev.Decision != "deny" || ev.Code != pipeline.CodeApprovalDenied || ev.ApprovalID != want || ev.Agent != "agent-1" ||
			ev.Rule != "big-spend" || ev.TabID != "7" || ev.ReqID != "3" || ev.Wallet != pr.Wallet.Hex() {
			t.Errorf("record %d: %+v", i, ev)
		}
	}
	if refusals[0].Attrs["refused_at"] != "long_poll" || refusals[1].Attrs["refused_at"] != "resubmitted" ||
		refusals[0].Reason != "not this one" || refusals[3].Attrs["approval_state"] != "expired" {
		t.Errorf("attrs: %+v / %+v / %+v", refusals[0], refusals[1], refusals[3])
	}
	if rep, err := l.VerifyAudit(); err != nil || !rep.OK {
		t.Fatalf("audit verify: %+v %v", rep, err)
	}
}
