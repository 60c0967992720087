package ledger

import (
	"context"
	"path/filepath"
	"testing"
)

// TestIntentIDNotReusedAfterRestart: an intent's id is handed out before its group is durable
// (and can reach a client in a 503's record_id); after a restart no later record gets it.
func TestIntentIDNotReusedAfterRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l.db")
	l, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r1, err := l.Reserve(ctx, resv(1, 1, "a"))
	if err != nil || r1.Outcome != Reserved {
		t.Fatal(err)
	}
	l.Close()
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

// TestIntentIDsAcrossBlocks: the id high-water mark is raised (durably, before the new ids are
// answered) every idBlock ids, so after a restart no id handed out before is reused, also past
// the first block.
func TestIntentIDsAcrossBlocks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l.db")
	l, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var last RecordID
	n := idBlock + 5
	for i := 1; i <= n; i++ {
		r, err := l.Reserve(ctx, resv(1, int64(i), "a"))
		if err != nil || r.Outcome != Reserved || r.RecordID <= last {
			t.Fatalf("reservation %d: %+v %v (last id %d)", i, r, err, last)
		}
		last = r.RecordID
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 2; round++ {
		l, err = Open(Options{Path: path})
		if err != nil {
			t.Fatal(err)
		}
		r, err := l.Reserve(ctx, resv(2, int64(round), "b"))
		if err != nil || r.Outcome != Reserved || r.RecordID <= last {
			t.Fatalf("after restart %d: %+v %v (last id before %d)", round, r, err, last)
		}
		last = r.RecordID
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
