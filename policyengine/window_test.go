package policyengine

import (
	"errors"
	"math/big"
	"testing"
	"time"
)

func TestBucketScheme(t *testing.T) {
	for _, tc := range []struct {
		w, width time.Duration
	}{
		{time.Minute, time.Second}, {time.Hour, time.Minute}, {24 * time.Hour, 24 * time.Minute},
		{30 * 24 * time.Hour, 12 * time.Hour}, {10 * time.Second, time.Second}, {90 * time.Second, time.Second},
	} {
		if got := BucketWidth(tc.w); got != tc.width {
			t.Errorf("BucketWidth(%s) = %s, want %s", tc.w, got, tc.width)
		}
		// Never under-count: any t in (now-w, now] is in [first, current].
		now := time.Unix(1736000000, 123456789)
		first, cur := WindowFirstBucket(tc.w, now), BucketIndex(tc.w, now)
		for _, back := range []time.Duration{0, time.Nanosecond, tc.w / 2, tc.w - time.Nanosecond, tc.w} {
			ix := BucketIndex(tc.w, now.Add(-back))
			if ix < first || ix > cur {
				t.Errorf("w=%s: charge %s ago in bucket %d outside [%d,%d]", tc.w, back, ix, first, cur)
			}
		}
		if int(cur-first)+1 > WindowBuckets(tc.w) {
			t.Errorf("w=%s: span %d buckets > WindowBuckets %d", tc.w, cur-first+1, WindowBuckets(tc.w))
		}
	}
	if BucketIndex(time.Minute, time.Unix(-1, 0)) != -1 {
		t.Errorf("negative times must floor")
	}
}

func TestMemLedgerAllOrNothing(t *testing.T) {
	l := NewMemLedger()
	now := time.Unix(1736000000, 0)
	a := Charge{Budget: "a", Key: "a", Window: time.Hour, Limit: big.NewInt(10), Amount: big.NewInt(6)}
	b := Charge{Budget: "b", Key: "b", Window: time.Minute, Limit: big.NewInt(1), Amount: big.NewInt(1), Count: true}
	if err := l.Apply([]Charge{a, b}, now); err != nil {
		t.Fatal(err)
	}
	err := l.Apply([]Charge{a, b}, now)
	var be *BudgetError
	if !errors.Is(err, ErrBudgetExhausted) || !errors.As(err, &be) || be.Budget != "a" {
		t.Fatalf("want budget a exhausted, got %v", err)
	}
	// Nothing of the failed Apply was debited.
	if u, _ := l.Usage("b", time.Minute, now); u.Int64() != 1 {
		t.Fatalf("b usage %s, want 1", u)
	}
	// After the minute rolls over, b has room again but a (hourly) still has 6 of 10.
	later := now.Add(61 * time.Second)
	if err := l.Apply([]Charge{b}, later); err != nil {
		t.Fatal(err)
	}
	if u, _ := l.Usage("a", time.Hour, later); u.Int64() != 6 {
		t.Fatalf("a usage %s, want 6", u)
	}
	if u, _ := l.Usage("a", time.Hour, now.Add(time.Hour+time.Minute+time.Second)); u.Sign() != 0 {
		t.Fatalf("a usage after the hour %s, want 0", u)
	}
}

func TestMemLedgerPrune(t *testing.T) {
	l := NewMemLedger()
	now := time.Unix(1736000000, 0)
	ch := []Charge{
		{Budget: "m", Key: "m", Window: time.Minute, Limit: big.NewInt(10), Amount: big.NewInt(1)},
		{Budget: "life", Key: "life", Window: 0, Limit: big.NewInt(10), Amount: big.NewInt(1)},
	}
	if err := l.Apply(ch, now); err != nil {
		t.Fatal(err)
	}
	l.Prune(now.Add(30 * time.Second))
	if len(l.counters) != 2 {
		t.Fatalf("pruned a live counter: %d left", len(l.counters))
	}
	l.Prune(now.Add(3 * time.Minute))
	if len(l.counters) != 1 {
		t.Fatalf("want only the lifetime counter left, have %d", len(l.counters))
	}
	if u, _ := l.Usage("life", 0, now.Add(1000*time.Hour)); u.Int64() != 1 {
		t.Fatalf("lifetime usage %s", u)
	}
}
