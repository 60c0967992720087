package ledger

import (
	"context"
	"path/filepath"
	"testing"
)

// TestDeferredIDReusedAfterRestart: a deferred reservation's id is handed out (and can
// reach a client in a 503's record_id when its Commit fails) but the records bucket's sequence
// is not persisted (its group is rolled back as read-only), so after a restart the same id
// names a different record.
func TestDeferredIDReusedAfterRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l.db")
	l, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r1, err := l.ReserveDeferred(ctx, resv(1, 1, "a"))
	if err != nil || r1.Outcome != Reserved {
		t.Fatal(err)
	}
	l.Close() // as a crash: the pending deferred reservation is lost
	l2, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	r2, err := l2.Reserve(ctx, resv(2, 2, "b"))
	if err != nil {
		t.Fatal(err)
	}
	if r2.RecordID == r1.RecordID {
		t.Fatalf("record id %d handed out twice (before and after a restart) for different requests", r1.RecordID)
	}
}

// TestDeferredIDsAcrossBlocks: deferred reservations write nothing, but the id high-water mark
// is raised (durably, before the new ids are answered) every idBlock ids, so after a restart no
// id handed out before is reused, also past the first block, and the mark is on disk.
func TestDeferredIDsAcrossBlocks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l.db")
	l, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var last RecordID
	n := idBlock + 5
	for i := 1; i <= n; i++ {
		r, err := l.ReserveDeferred(ctx, resv(1, int64(i), "a"))
		if err != nil || r.Outcome != Reserved || r.RecordID <= last {
			t.Fatalf("reservation %d: %+v %v (last id %d)", i, r, err, last)
		}
		last = r.RecordID
	}
	if l.Stats().ReadOnly == 0 {
		t.Fatal("every deferred reservation was written: the high-water mark should cost a write per block only")
	}
	if st := l.Stats(); st.Updates-st.ReadOnly > 3 {
		t.Fatalf("%d writing transactions for %d deferred reservations, want 2", st.Updates-st.ReadOnly, n)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 2; round++ {
		l, err = Open(Options{Path: path})
		if err != nil {
			t.Fatal(err)
		}
		r, err := l.ReserveDeferred(ctx, resv(2, int64(round), "b"))
		if err != nil || r.Outcome != Reserved || r.RecordID <= last {
			t.Fatalf("after restart %d: %+v %v (last id before %d)", round, r, err, last)
		}
		last = r.RecordID
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
