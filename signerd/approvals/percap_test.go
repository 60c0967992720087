package approvals

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestMaxPendingPerAgent: one agent at its cap is refused (ErrAgentTooManyWaiting, which is
// also ErrTooManyWaiting) while another agent still files; a decision or an expiry frees a
// slot; re-submitting a known request is never refused.
func TestMaxPendingPerAgent(t *testing.T) {
	ctx := context.Background()
	m, _, clk := setup(t, Options{MaxPending: 10, MaxPendingPerAgent: 2})
	a1, err := m.Submit(ctx, req("a1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Submit(ctx, req("a2")); err != nil {
		t.Fatal(err)
	}
	_, err = m.Submit(ctx, req("a3"))
	if !errors.Is(err, ErrAgentTooManyWaiting) || !errors.Is(err, ErrTooManyWaiting) {
		t.Fatalf("third pending approval of one agent: %v, want ErrAgentTooManyWaiting", err)
	}
	if got, err := m.Submit(ctx, req("a1")); err != nil || got.ID != a1.ID {
		t.Fatalf("re-submission at the cap: %+v %v", got, err)
	}
	other := req("b1")
	other.Agent = "agent-2"
	if _, err := m.Submit(ctx, other); err != nil {
		t.Fatalf("another agent blocked by agent-1's cap: %v", err)
	}
	if _, err := m.Deny(ctx, a1.ID, "alice", "no"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Submit(ctx, req("a3")); err != nil {
		t.Fatalf("after a denial freed a slot: %v", err)
	}
	if _, err := m.Submit(ctx, req("a4")); !errors.Is(err, ErrAgentTooManyWaiting) {
		t.Fatalf("cap again: %v", err)
	}
	clk.Advance(11 * time.Minute) // every pending approval expires
	if _, err := m.Submit(ctx, req("a4")); err != nil {
		t.Fatalf("after expiry freed the slots: %v", err)
	}
	if _, err := New(Options{Auditor: &memAudit{}, MaxPendingPerAgent: -1}); err == nil {
		t.Fatal("negative MaxPendingPerAgent accepted")
	}
}
