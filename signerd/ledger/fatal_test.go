package ledger

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/signerd/signerd/signerd/audit"
)

// TestFailedGroupIsFatal: once a group's transaction failed (its effect on the file is unknown:
// a failed fdatasync can follow bbolt's meta page write), every later write fails with the same
// *StoreError — also writes already queued behind the failed group — and Health keeps reporting
// it, even though the file would accept writes again.
func TestFailedGroupIsFatal(t *testing.T) {
	l := openTest(t, &fakeClock{t: t0})
	ctx := context.Background()
	day := 24 * time.Hour
	r, err := l.Reserve(ctx, resv(1, 1, "a", charge("daily", day, 100, 10)))
	if err != nil || r.Outcome != Reserved {
		t.Fatal(r, err)
	}
	if err := l.Health(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	fail := true
	l.testHookAfterApply = func() error {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			fail = false // only this one group fails
			return errors.New("injected fdatasync failure")
		}
		return nil
	}
	if _, err := l.AppendAudit(ctx, audit.Event{Kind: audit.KindKeyOp, Reason: "x"}); err == nil {
		t.Fatal("the injected failure did not fail the group")
	}
	var first *StoreError
	if err := l.Health(); !errors.As(err, &first) {
		t.Fatalf("health after a failed group: %v", err)
	}

	writes := map[string]func() error{
		"reserve": func() error { _, err := l.Reserve(ctx, resv(1, 2, "b", charge("daily", day, 100, 10))); return err },
		"commit":  func() error { _, err := l.Commit(ctx, r.RecordID, sig65(1)); return err },
		"release": func() error { return l.Release(ctx, r.RecordID, "", "x") },
		"record_signature": func() error {
			_, err := l.RecordSignature(ctx, r.RecordID, sig65(1))
			return err
		},
		"put_state":    func() error { return l.PutState(ctx, "k", []byte("v"), audit.Event{Kind: audit.KindApproval}) },
		"append_audit": func() error { _, err := l.AppendAudit(ctx, audit.Event{Kind: audit.KindKeyOp}); return err },
		"audit_async":  func() error { return l.AuditAsync(audit.Event{Kind: audit.KindKeyOp}) },
	}
	for name, w := range writes {
		var se *StoreError
		if err := w(); !errors.As(err, &se) || se != first {
			t.Errorf("%s after a failed group: %v, want the sticky %v", name, err, first)
		}
	}
	if err := l.Health(); !errors.As(err, &first) {
		t.Fatalf("health later: %v", err)
	}
	// Nothing after the failure reached the file.
	if rec, err := l.Record(r.RecordID); err != nil || rec.Status != StatusReserved {
		t.Fatalf("record after refused writes: %+v %v", rec, err)
	}
	if v, err := l.GetState("k"); err != nil || v != nil {
		t.Fatalf("state written after the failure: %q %v", v, err)
	}
}
