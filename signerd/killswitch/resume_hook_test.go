package killswitch

import (
	"context"
	"errors"
	"testing"
)

// TestBeforeResume: the hook runs only on the call that releases the switch (the confirming
// operator's, with two-operator resume), with the switch still engaged; a failing hook keeps
// the switch engaged, records nothing and leaves the pending resume pending.
func TestBeforeResume(t *testing.T) {
	st := newMemStore()
	var s *Switch
	calls := 0
	var fail error
	s = mustNew(t, Options{Store: st, Clock: newClock(), RequireSecondOperator: true, BeforeResume: func(context.Context) error {
		calls++
		if !s.Engaged() {
			t.Error("BeforeResume ran after the switch was released")
		}
		return fail
	}})
	ctx := context.Background()
	if err := s.Engage(ctx, "alice", "test"); err != nil {
		t.Fatal(err)
	}
	if res, err := s.Resume(ctx, "alice"); err != nil || res.Pending == nil {
		t.Fatalf("first resume: %+v %v", res, err)
	}
	if calls != 0 {
		t.Fatalf("hook ran on the request, not the confirmation (%d calls)", calls)
	}
	fail = errors.New("backend gone")
	_, err := s.Resume(ctx, "bob")
	if !errors.Is(err, ErrNotReady) || calls != 1 {
		t.Fatalf("failing hook: err %v, calls %d", err, calls)
	}
	if !s.Engaged() || s.Status().PendingResume == nil {
		t.Fatalf("after a failed hook: %+v", s.Status())
	}
	if k := st.kinds(); len(k) != 2 || k[1] != ActionResumeRequested {
		t.Fatalf("audit actions %v: a failed hook must record nothing", k)
	}
	if _, ok := s.Pass(); ok {
		t.Fatal("a pass was granted after a failed resume")
	}
	fail = nil
	res, err := s.Resume(ctx, "bob")
	if err != nil || !res.Resumed || calls != 2 || s.Engaged() {
		t.Fatalf("resume: %+v %v calls %d engaged %v", res, err, calls, s.Engaged())
	}
}
