package approvals

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/ledger"
)

// TestDurableWithRealLedger: approvals survive closing and reopening the ledger; every step is
// in the verified audit chain.
func TestDurableWithRealLedger(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ledger.db")
	clk := &fakeClock{t: time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)}
	open := func() (*ledger.Ledger, *Manager) {
		l, err := ledger.Open(ledger.Options{Path: path, Clock: clk.Now})
		if err != nil {
			t.Fatal(err)
		}
		m, err := New(Options{Auditor: l, Clock: clk})
		if err != nil {
			t.Fatal(err)
		}
		return l, m
	}
	l, m := open()
	a, _ := m.Submit(ctx, req("approve-me"))
	b, _ := m.Submit(ctx, req("leave-pending"))
	c, _ := m.Submit(ctx, req("let-expire"))
	if _, err := m.Approve(ctx, a.ID, "alice"); err != nil {
		t.Fatal(err)
	}
	l.Close()

	l, m = open()
	if g, err := m.Get(a.ID); err != nil || g.State != Approved || g.DecidedBy != "alice" {
		t.Fatalf("approved after reopen: %+v %v", g, err)
	}
	if g, _ := m.Submit(ctx, req("approve-me")); g.ID != a.ID || g.State != Approved {
		t.Fatalf("re-submission after reopen: %+v", g)
	}
	if g, _ := m.Submit(ctx, req("leave-pending")); g.ID != b.ID || g.State != Pending {
		t.Fatalf("pending after reopen: %+v", g)
	}
	if _, err := m.Deny(ctx, b.ID, "bob", "no"); err != nil {
		t.Fatal(err)
	}
	clk.Advance(11 * time.Minute) // c expires
	if g, _ := m.Get(c.ID); g.State != Expired {
		t.Fatalf("expiry: %+v", g)
	}
	l.Close()

	l, m = open()

	for id, want := range map[string]State{a.ID: Approved, b.ID: Denied, c.ID: Expired} {
		if g, err := m.Get(id); err != nil || g.State != want {
			t.Fatalf("%s after second reopen: %+v %v (want %s)", id, g, err, want)
		}
	}
	rep, err := l.VerifyAudit()
	if err != nil || !rep.OK {
		t.Fatalf("audit: %+v %v", rep, err)
	}
	counts := map[string]int{}
	for seq := uint64(1); seq <= rep.HeadSeq; seq++ {
		r, _, _ := l.AuditRecord(seq)
		if r.Event.Kind == audit.KindApproval {
			counts[r.Event.Attrs["action"]]++
		}
	}
	if counts[ActionRequested] != 3 || counts[ActionApproved] != 1 || counts[ActionDenied] != 1 || counts[ActionExpired] != 1 {
		t.Fatalf("audit actions %v", counts)
	}
	// Past Retain, decided approvals are not reloaded.
	l.Close()
	clk.Advance(25 * time.Hour)
	l, m = open()
	if len(m.List()) != 0 {
		t.Fatalf("retained beyond Retain: %+v", m.List())
	}
	l.Close()
}
