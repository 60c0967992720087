package killswitch

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ethereum/go-ethereum/common"
)

// autoState keeps the sliding windows for automatic trips.
type autoState struct {
	mu      sync.Mutex
	denials []time.Time
	of      *AutoTrip   // the settings wires was built for
	wires   []spendWire // one per AutoTrip.Spend entry
}

// spendWire is one spend trip wire's sliding window.
type spendWire struct {
	spends []spend
	total  uint64
}

type spend struct {
	at     time.Time
	amount uint64
}

func (a *AutoTrip) clone() *AutoTrip {
	c := *a
	c.Spend = slices.Clone(a.Spend)
	for i, w := range c.Spend {
		if w.Asset != nil {
			as := *w.Asset
			c.Spend[i].Asset = &as
		}
	}
	return &c
}

// SetAutoTrip replaces the automatic-trip settings (e.g. after a policy reload); nil disables
// automatic trips. The sliding windows start afresh.
func (s *Switch) SetAutoTrip(a *AutoTrip) error {
	if err := a.validate(); err != nil {
		return err
	}
	if a != nil {
		a = a.clone()
	}
	s.auto.mu.Lock()
	s.autoTrip.Store(a)
	s.auto.denials, s.auto.of, s.auto.wires = nil, nil, nil
	s.auto.mu.Unlock()
	return nil
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

// ObserveSpend records amount base units of an unknown asset: it counts against every spend
// wire (fail safe). Prefer ObserveAssetSpend.
func (s *Switch) ObserveSpend(amount uint64) { s.observeSpend(nil, amount) }

// ObserveAssetSpend records amount base units of asset signed, for the spend-velocity trips:
// it counts against the wires of that asset and those for any asset. When a wire's sum within
// its window exceeds its limit the switch engages (in the background, operator "auto"). It
// is a no-op without spend wires.
func (s *Switch) ObserveAssetSpend(asset common.Address, amount uint64) {
	s.observeSpend(&asset, amount)
}

func (s *Switch) observeSpend(asset *common.Address, amount uint64) {
	at := s.autoTrip.Load()
	if at == nil || len(at.Spend) == 0 || s.engaged.Load() {
		return
	}
	now := s.opts.Clock.Now()
	var tripped *SpendTrip
	s.auto.mu.Lock()
	if s.auto.of != at { // first spend under these settings
		s.auto.of, s.auto.wires = at, make([]spendWire, len(at.Spend))
	}
	for i := range at.Spend {
		cfg := &at.Spend[i]
		if asset != nil && cfg.Asset != nil && *cfg.Asset != *asset {
			continue
		}
		w := &s.auto.wires[i]
		cut := now.Add(-cfg.Window)
		j := 0
		for j < len(w.spends) && !w.spends[j].at.After(cut) {
			w.total -= w.spends[j].amount
			j++
		}
		w.spends = append(w.spends[j:], spend{now, amount})
		total := w.total + amount
		if total < w.total { // overflow: saturate
			total = ^uint64(0)
		}
		w.total = total
		if total > cfg.Limit && tripped == nil {
			tripped = cfg
		}
	}
	if tripped != nil {
		s.auto.wires = make([]spendWire, len(at.Spend))
	}
	s.auto.mu.Unlock()
	if tripped != nil {
		what := "any asset"
		if tripped.Asset != nil {
			what = tripped.Asset.Hex()
		}
		s.autoEngage(fmt.Sprintf("automatic trip: spend of %s above %d base units within %s", what, tripped.Limit, tripped.Window))
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

// reset empties every sliding window (after a resume).
func (a *autoState) reset() {
	a.mu.Lock()
	a.denials, a.of, a.wires = nil, nil, nil
	a.mu.Unlock()
}
