package server

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/killswitch"
)

// reviewStore is an in-memory killswitch.Store.
type reviewStore struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (s *reviewStore) PutState(_ context.Context, k string, v []byte, _ audit.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[k] = append([]byte(nil), v...)
	return nil
}

func (s *reviewStore) GetState(k string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[k], nil
}

type reviewClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *reviewClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *reviewClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// TestReviewAutoTripSpendWindowKept: the README example policy says "trip when more than
// 25 USDC is signed within an hour" and "trip on 20 denials within a minute". autoTrip folds
// both into one killswitch.AutoTrip with a single Window = min(1m, ...) = 1 minute, so the
// spend trip only looks at the last minute: 20 USDC now and 20 USDC two minutes later (40 USDC
// within the hour, over the 25 USDC limit) never trips the switch.
func TestReviewAutoTripSpendWindowKept(t *testing.T) {
	p, err := policyengine.Load(filepath.Join("..", "..", "testdata", "policy", "example.yaml"), policyengine.CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	k := p.KillSwitch()
	if len(k.SpendVelocity) != 1 || k.SpendVelocity[0].Window != time.Hour || k.DenialBurst.Window != time.Minute {
		t.Fatalf("example policy changed: %+v", k)
	}
	clk := &reviewClock{t: time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)}
	ks, err := killswitch.New(killswitch.Options{Store: &reviewStore{m: map[string][]byte{}}, Clock: clk, AutoTrip: autoTrip(p)})
	if err != nil {
		t.Fatal(err)
	}
	ks.ObserveSpend(20_000_000) // 20 USDC
	clk.add(2 * time.Minute)
	ks.ObserveSpend(20_000_000) // 40 USDC within the hour
	if !ks.Engaged() {
		t.Fatalf("40 USDC signed within one hour did not trip the 25 USDC/hour spend velocity wire (autoTrip window = %s)", autoTrip(p).Window)
	}
}
