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
