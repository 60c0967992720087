package killswitch

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// autoState keeps the sliding windows for automatic trips.
type autoState struct {
	mu      sync.Mutex
	denials []time.Time
	spends  []spend
	total   uint64
}

type spend struct {
	at     time.Time
	amount uint64
}

// SetAutoTrip replaces the automatic-trip settings (e.g. after a policy reload); nil disables
// automatic trips. The sliding windows start afresh.
func (s *Switch) SetAutoTrip(a *AutoTrip) error {
	if a != nil && (a.MaxDenials > 0 || a.MaxSpend > 0) && a.Window <= 0 {
		return errors.New("killswitch: AutoTrip.Window must be positive")
	}
	if a != nil {
		c := *a
		a = &c
	}
	s.autoTrip.Store(a)
	s.auto.reset()
	return nil
}

func (a *autoState) reset() {
	a.mu.Lock()
	a.denials, a.spends, a.total = nil, nil, 0
	a.mu.Unlock()
}

// ObserveDenial records one policy denial for the automatic denial-burst trip. When
// AutoTrip.MaxDenials denials fall within AutoTrip.Window the switch engages (in the
// background, operator "auto"). It is a no-op without AutoTrip.
func (s *Switch) ObserveDenial() {
	at := s.autoTrip.Load()
	if at == nil || at.MaxDenials <= 0 || s.engaged.Load() {
		return
	}
	now := s.opts.Clock.Now()
	s.auto.mu.Lock()
	cut := now.Add(-at.Window)
	d := s.auto.denials
	i := 0
	for i < len(d) && !d[i].After(cut) {
		i++
	}
	d = append(d[i:], now)
	s.auto.denials = d
	trip := len(d) >= at.MaxDenials
	if trip {
		s.auto.denials = nil
	}
	s.auto.mu.Unlock()
	if trip {
		s.autoEngage(fmt.Sprintf("automatic trip: %d denials within %s", at.MaxDenials, at.Window))
	}
}

// ObserveSpend records amount base units signed for the automatic spend-velocity trip. When the
// sum within AutoTrip.Window exceeds AutoTrip.MaxSpend the switch engages (in the background,
// operator "auto"). It is a no-op without AutoTrip.
func (s *Switch) ObserveSpend(amount uint64) {
	at := s.autoTrip.Load()
	if at == nil || at.MaxSpend == 0 || s.engaged.Load() {
		return
	}
	now := s.opts.Clock.Now()
	s.auto.mu.Lock()
	cut := now.Add(-at.Window)
	sp := s.auto.spends
	i := 0
	for i < len(sp) && !sp[i].at.After(cut) {
		s.auto.total -= sp[i].amount
		i++
	}
	sp = append(sp[i:], spend{now, amount})
	s.auto.spends = sp
	total := s.auto.total + amount
	if total < s.auto.total { // overflow: saturate
		total = ^uint64(0)
	}
	s.auto.total = total
	trip := total > at.MaxSpend
	if trip {
		s.auto.spends, s.auto.total = nil, 0
	}
	s.auto.mu.Unlock()
	if trip {
		s.autoEngage(fmt.Sprintf("automatic trip: spend above %d within %s", at.MaxSpend, at.Window))
	}
}

func (s *Switch) autoEngage(reason string) {
	s.engaged.Store(true) // stop new passes at once; Engage makes it durable and drains
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = s.Engage(ctx, "auto", reason)
	}()
}
