package killswitch

import (
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
)

// TestAutoTripSpendPerAssetAndWindow: each spend wire keeps its own window (independent of
// the denial burst's) and counts only its asset; a wire for any asset sums them all; an
// unknown asset (ObserveSpend) counts against every wire.
func TestAutoTripSpendPerAssetAndWindow(t *testing.T) {
	usdc, eurc := common.HexToAddress("0x036CbD53842c5426634e7929541eC2318f3dCF7e"), common.HexToAddress("0xE0")
	trip := func() *AutoTrip {
		return &AutoTrip{MaxDenials: 20, Window: time.Minute, Spend: []SpendTrip{
			{Asset: &usdc, Limit: 25_000_000, Window: time.Hour},
			{Asset: &eurc, Limit: 5_000_000, Window: time.Minute},
		}}
	}
	for _, tc := range []struct {
		name  string
		steps func(s *Switch, clk *fakeClock)
		want  bool
	}{
		{"usdc over an hour, not a minute", func(s *Switch, clk *fakeClock) {
			s.ObserveAssetSpend(usdc, 20_000_000)
			clk.Advance(2 * time.Minute)
			s.ObserveAssetSpend(usdc, 20_000_000)
		}, true},
		{"usdc below its limit within the hour", func(s *Switch, clk *fakeClock) {
			s.ObserveAssetSpend(usdc, 20_000_000)
			clk.Advance(61 * time.Minute)
			s.ObserveAssetSpend(usdc, 20_000_000)
		}, false},
		{"other asset's units do not count for usdc", func(s *Switch, clk *fakeClock) {
			s.ObserveAssetSpend(usdc, 20_000_000)
			s.ObserveAssetSpend(common.HexToAddress("0xAA"), 20_000_000)
		}, false},
		{"eurc has its own minute", func(s *Switch, clk *fakeClock) {
			s.ObserveAssetSpend(eurc, 3_000_000)
			clk.Advance(2 * time.Minute)
			s.ObserveAssetSpend(eurc, 3_000_000)
		}, false},
		{"eurc within its minute", func(s *Switch, clk *fakeClock) {
			s.ObserveAssetSpend(eurc, 3_000_000)
			s.ObserveAssetSpend(eurc, 3_000_000)
		}, true},
		{"unknown asset counts against every wire", func(s *Switch, clk *fakeClock) {
			s.ObserveSpend(6_000_000)
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newClock()
			s := mustNew(t, Options{Store: newMemStore(), Clock: clk, AutoTrip: trip()})
			tc.steps(s, clk)
			if s.Engaged() != tc.want {
				t.Fatalf("engaged = %v, want %v", s.Engaged(), tc.want)
			}
			if tc.want {
				waitDurable(t, s)
			}
		})
	}
	// A wire for any asset sums every asset.
	clk := newClock()
	s := mustNew(t, Options{Store: newMemStore(), Clock: clk, AutoTrip: &AutoTrip{Spend: []SpendTrip{{Limit: 10, Window: time.Minute}}}})
	s.ObserveAssetSpend(usdc, 6)
	s.ObserveAssetSpend(eurc, 5)
	if !s.Engaged() {
		t.Fatal("any-asset wire did not sum two assets")
	}
	waitDurable(t, s)
	if _, err := New(Options{Store: newMemStore(), AutoTrip: &AutoTrip{Spend: []SpendTrip{{Limit: 1}}}}); err == nil {
		t.Fatal("spend wire without a window accepted")
	}
}
