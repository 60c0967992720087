package ledger

import (
	"context"
	"testing"
	"time"
)

// TestClockStepBackForgetsCharges: charges made while the wall clock was ahead are put in
// "future" buckets; once the clock is stepped back (NTP correction), usageTx stops at the
// current bucket and does not count them, so the same daily budget can be spent again.
func TestClockStepBackForgetsCharges(t *testing.T) {
	clk := &fakeClock{t: t0.Add(6 * time.Hour)} // clock 6 h ahead
	l := openTest(t, clk)
	ctx := context.Background()
	day := 24 * time.Hour
	if r, err := l.Reserve(ctx, resv(1, 1, "a", charge("daily", day, 100, 100))); err != nil || r.Outcome != Reserved {
		t.Fatal(err, r.Outcome)
	}
	clk.Advance(-6 * time.Hour) // corrected
	r, err := l.Reserve(ctx, resv(1, 2, "b", charge("daily", day, 100, 100)))
	if err != nil {
		t.Fatal(err)
	}
	if r.Outcome == Reserved {
		t.Fatalf("a daily budget of 100 was charged 200 within 6 hours after a clock step back")
	}
}

// TestPruneTimeConservative: the committer never sweeps on a clock that went back behind the
// latest time it showed, sweeps every PruneEvery otherwise, and never relative to a time after
// now. (Forward wall steps are bounded by the clock's monotonic reading, which a fake clock
// cannot show; with time.Now, now.Sub(lastPrune) is monotonic elapsed time.)
func TestPruneTimeConservative(t *testing.T) {
	l := &Ledger{opts: Options{PruneEvery: time.Minute}, lastPrune: t0, pruneAt: t0, maxSeen: t0}
	steps := []struct {
		now   time.Time
		prune bool
	}{
		{t0.Add(30 * time.Second), false},             // too soon
		{t0.Add(2 * time.Hour), true},                 // swept at now
		{t0.Add(time.Hour), false},                    // stepped back: never
		{t0.Add(2*time.Hour + 30*time.Second), false}, // caught up, but PruneEvery not elapsed
		{t0.Add(2*time.Hour + 2*time.Minute), true},
	}
	for i, s := range steps {
		at, ok := l.pruneTime(s.now)
		if ok != s.prune {
			t.Fatalf("step %d (%s): prune %v, want %v", i, s.now, ok, s.prune)
		}
		if ok {
			if at.After(s.now) {
				t.Fatalf("step %d: pruned relative to %s, after now %s", i, at, s.now)
			}
			l.lastPrune, l.pruneAt = s.now, at
		}
	}
}
