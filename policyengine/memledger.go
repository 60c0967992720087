package policyengine

import (
	"errors"
	"fmt"
	"math/big"
	"sync"
	"time"
)

// ErrBudgetExhausted is matched (errors.Is) by the error Apply returns when a charge does not fit.
var ErrBudgetExhausted = errors.New("policyengine: budget exhausted")

// BudgetError identifies the charge that did not fit. It wraps ErrBudgetExhausted.
type BudgetError struct {
	Budget string
	Key    string
	Window time.Duration
	Count  bool // a request-count limit (rate_limited) rather than an amount budget
}

func (e *BudgetError) Error() string {
	return fmt.Sprintf("policyengine: budget %s exhausted (key %s, window %s)", e.Budget, e.Key, e.Window)
}

// Unwrap returns ErrBudgetExhausted.
func (e *BudgetError) Unwrap() error { return ErrBudgetExhausted }

// Code is the denial code the exhaustion maps to (budget_exhausted or rate_limited).
func (e *BudgetError) Code() string {
	if e.Count {
		return CodeRateLimited
	}
	return CodeBudgetExhausted
}

// MemLedger is an in-memory UsageReader with atomic check-and-debit, for tests, dry runs and the
// CLI. It uses the bucket scheme of BucketIndex, so memory per counter is bounded by
// WindowBuckets(window). Safe for concurrent use.
//
// Its clock never goes backwards: a call whose now is earlier than the latest now it has seen
// (callers whose clocks were read before another caller's, or a stepped wall clock) is treated
// as happening at that latest time. Placing a charge later keeps it counted longer, and
// checking at the latest time sees everything a fixed-size ring still holds; without this, a
// charge far in the future could evict a bucket that an earlier-clocked check still needs.
// A durable ledger with a ring of WindowBuckets slots needs the same rule.
type MemLedger struct {
	mu       sync.Mutex
	counters map[counterKey]*ring
	hw       time.Time // latest time seen: charges are placed and checked at max(now, hw)
}

type counterKey struct {
	key    string
	window time.Duration
}

type ring struct {
	idx []int64
	amt []*big.Int
}

// NewMemLedger returns an empty ledger.
func NewMemLedger() *MemLedger { return &MemLedger{counters: map[counterKey]*ring{}} }

func newRing(window time.Duration) *ring {
	n := WindowBuckets(window)
	r := &ring{idx: make([]int64, n), amt: make([]*big.Int, n)}
	for i := range r.idx {
		r.idx[i] = -1 << 63
	}
	return r
}

// sum adds every bucket with index ≥ first. Buckets after cur exist only when callers' clocks
// disagree (a charge applied with a later now); counting them keeps the window conservative.
func (r *ring) sum(first int64, out *big.Int) {
	out.SetInt64(0)
	for i, ix := range r.idx {
		if ix >= first && r.amt[i] != nil {
			out.Add(out, r.amt[i])
		}
	}
}

func (r *ring) add(cur int64, amount *big.Int) {
	n := int64(len(r.idx))
	s := int(((cur % n) + n) % n)
	if r.idx[s] > cur && r.amt[s] != nil {
		// The slot holds a newer bucket (this caller's clock is behind): merge into it, which
		// keeps the amount counted at least as long as its own bucket would.
		r.amt[s].Add(r.amt[s], amount)
		return
	}
	if r.idx[s] != cur || r.amt[s] == nil {
		r.idx[s] = cur
		r.amt[s] = new(big.Int)
	}
	r.amt[s].Add(r.amt[s], amount)
}

// Usage implements UsageReader.
func (l *MemLedger) Usage(key string, window time.Duration, now time.Time) (*big.Int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.hw.After(now) {
		now = l.hw
	}
	out := new(big.Int)
	if r := l.counters[counterKey{key, window}]; r != nil {
		r.sum(WindowFirstBucket(window, now), out)
	}
	return out, nil
}

// Apply checks every charge against its limit at now and, only if all fit, debits all of them:
// all or nothing, under one lock. The error identifies the first charge that does not fit.
func (l *MemLedger) Apply(charges []Charge, now time.Time) error {
	_, err := l.ApplyAt(charges, now)
	return err
}

// ApplyAt is Apply that also returns the time the charges were placed at: max(now, the latest
// time the ledger has seen).
func (l *MemLedger) ApplyAt(charges []Charge, now time.Time) (time.Time, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.hw.After(now) {
		now = l.hw
	} else {
		l.hw = now
	}
	return now, l.apply(charges, now)
}

func (l *MemLedger) apply(charges []Charge, now time.Time) error {
	// Charges in one request could share a counter; accumulate what this call adds per counter.
	pending := make(map[counterKey]*big.Int, len(charges))
	var used big.Int
	for _, c := range charges {
		if c.Amount == nil || c.Limit == nil || c.Amount.Sign() < 0 {
			return fmt.Errorf("policyengine: malformed charge for budget %s", c.Budget)
		}
		ck := counterKey{c.Key, c.Window}
		used.SetInt64(0)
		if r := l.counters[ck]; r != nil {
			r.sum(WindowFirstBucket(c.Window, now), &used)
		}
		p := pending[ck]
		if p == nil {
			p = new(big.Int)
			pending[ck] = p
		}
		p.Add(p, c.Amount)
		used.Add(&used, p)
		if used.Cmp(c.Limit) > 0 {
			return &BudgetError{Budget: c.Budget, Key: c.Key, Window: c.Window, Count: c.Count}
		}
	}
	for ck, p := range pending {
		r := l.counters[ck]
		if r == nil {
			r = newRing(ck.window)
			l.counters[ck] = r
		}
		r.add(BucketIndex(ck.window, now), p)
	}
	return nil
}

// Prune drops counters with nothing left inside their window at now (windowed counters only).
func (l *MemLedger) Prune(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for ck, r := range l.counters {
		if ck.window == 0 {
			continue
		}
		first := WindowFirstBucket(ck.window, now)
		live := false
		for _, ix := range r.idx {
			if ix >= first {
				live = true
				break
			}
		}
		if !live {
			delete(l.counters, ck)
		}
	}
}
