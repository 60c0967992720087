package killswitch

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/signerd/signerd/signerd/audit"
)

// memStore is a Store in memory that also keeps the audit events it was given.
type memStore struct {
	mu     sync.Mutex
	data   map[string][]byte
	events []audit.Event
	fail   error
}

func newMemStore() *memStore { return &memStore{data: map[string][]byte{}} }

func (m *memStore) PutState(_ context.Context, key string, value []byte, ev audit.Event) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	m.data[key] = append([]byte(nil), value...)
	m.events = append(m.events, ev)
	return nil
}

func (m *memStore) GetState(key string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.data[key], nil
}

func (m *memStore) kinds() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var k []string
	for _, e := range m.events {
		if e.Kind != audit.KindKillSwitch {
			panic("wrong audit kind " + e.Kind)
		}
		k = append(k, e.Attrs["action"])
	}
	return k
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)} }

func mustNew(t *testing.T, o Options) *Switch {
	t.Helper()
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Fatal("New without Store succeeded")
	}
	if _, err := New(Options{Store: newMemStore(), ConfirmWithin: -time.Second}); err == nil {
		t.Fatal("negative ConfirmWithin accepted")
	}
	if _, err := New(Options{Store: newMemStore(), AutoTrip: &AutoTrip{MaxDenials: 3}}); err == nil {
		t.Fatal("AutoTrip without Window accepted")
	}
}

// TestEngageDrainsPasses: signers take passes concurrently; after Engage returns, no pass is
// outstanding, no further pass is granted and no further "signature" is counted.
func TestEngageDrainsPasses(t *testing.T) {
	for round := 0; round < 20; round++ {
		st := newMemStore()
		var held atomic.Int64 // granted passes not yet released
		var drainedAtOnEngage atomic.Int64
		s := mustNew(t, Options{Store: st, OnEngage: func() { drainedAtOnEngage.Store(held.Load() + 1) }})
		var out atomic.Int64 // signatures "returned" to clients
		var stop atomic.Bool
		var wg sync.WaitGroup
		for g := 0; g < 32; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !stop.Load() {
					release, ok := s.Pass()
					if !ok {
						time.Sleep(100 * time.Microsecond)
						continue
					}
					held.Add(1)
					// "sign" for a while, then write the response.
					time.Sleep(time.Duration(50+g*10) * time.Microsecond)
					out.Add(1)
					held.Add(-1)
					release()
				}
			}()
		}
		time.Sleep(5 * time.Millisecond)
		if err := s.Engage(context.Background(), "alice", "test"); err != nil {
			t.Fatal(err)
		}
		after := out.Load()
		if n := held.Load(); n != 0 {
			t.Fatalf("round %d: %d passes outstanding after Engage returned", round, n)
		}
		if drainedAtOnEngage.Load() != 1 {
			t.Fatalf("round %d: OnEngage ran with %d passes in flight (or not at all)", round, drainedAtOnEngage.Load()-1)
		}
		time.Sleep(5 * time.Millisecond)
		stop.Store(true)
		wg.Wait()
		if got := out.Load(); got != after {
			t.Fatalf("round %d: %d signatures returned after Engage returned", round, got-after)
		}
		if after == 0 {
			t.Fatalf("round %d: no signature before Engage; the test proves nothing", round)
		}
		if _, ok := s.Pass(); ok {
			t.Fatal("Pass succeeded while engaged")
		}
	}
}

func TestEngageWaitsForOutstandingPassAndHonoursContext(t *testing.T) {
	s := mustNew(t, Options{Store: newMemStore()})
	release, ok := s.Pass()
	if !ok {
		t.Fatal("no pass on a released switch")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	err := s.Engage(ctx, "alice", "stop")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Engage with a pass outstanding and a short ctx: %v", err)
	}
	if !s.Engaged() {
		t.Fatal("switch not engaged after a timed-out Engage")
	}
	done := make(chan error, 1)
	go func() { done <- s.Engage(context.Background(), "bob", "again") }()
	select {
	case <-done:
		t.Fatal("Engage returned while a pass is outstanding")
	case <-time.After(20 * time.Millisecond):
	}
	release()
	release() // idempotent
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st := s.Status(); st.Reason != "stop" || st.By != "alice" || st.Inflight != 0 {
		t.Fatalf("status %+v: want the first engage's reason and no passes in flight", st)
	}
}

func TestDurableAcrossReopen(t *testing.T) {
	st := newMemStore()
	clk := newClock()
	s := mustNew(t, Options{Store: st, Clock: clk})
	if s.Engaged() {
		t.Fatal("fresh switch engaged")
	}
	if err := s.Engage(context.Background(), "alice", "suspicious spend"); err != nil {
		t.Fatal(err)
	}
	s2 := mustNew(t, Options{Store: st, Clock: clk})
	if !s2.Engaged() {
		t.Fatal("reopened switch is not engaged")
	}
	if _, ok := s2.Pass(); ok {
		t.Fatal("reopened engaged switch granted a pass")
	}
	stt := s2.Status()
	if stt.Reason != "suspicious spend" || stt.By != "alice" || !stt.Since.Equal(clk.Now()) {
		t.Fatalf("status after reopen: %+v", stt)
	}
	if res, err := s2.Resume(context.Background(), "bob"); err != nil || !res.Resumed {
		t.Fatalf("resume: %+v %v", res, err)
	}
	s3 := mustNew(t, Options{Store: st, Clock: clk})
	if s3.Engaged() {
		t.Fatal("reopened after resume: still engaged")
	}
	want := []string{ActionEngaged, ActionResumed}
	if got := st.kinds(); len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("audit events %v, want %v", got, want)
	}
}

func TestTwoOperatorResume(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	clk := newClock()
	o := Options{Store: st, Clock: clk, RequireSecondOperator: true, ConfirmWithin: 5 * time.Minute}
	s := mustNew(t, o)
	if _, err := s.Resume(ctx, "alice"); !errors.Is(err, ErrNotEngaged) {
		t.Fatalf("resume while released: %v", err)
	}
	if err := s.Engage(ctx, "alice", "drill"); err != nil {
		t.Fatal(err)
	}
	res, err := s.Resume(ctx, "alice")
	if err != nil || res.Resumed || res.Pending == nil || res.Pending.By != "alice" {
		t.Fatalf("first resume: %+v %v", res, err)
	}
	if !s.Engaged() {
		t.Fatal("released after one operator")
	}
	if _, err := s.Resume(ctx, "alice"); !errors.Is(err, ErrSameOperator) {
		t.Fatalf("same operator twice: %v", err)
	}
	// The pending resume is durable.
	s = mustNew(t, o)
	if p := s.Status().PendingResume; p == nil || p.By != "alice" {
		t.Fatalf("pending resume lost on reopen: %+v", s.Status())
	}
	clk.Advance(5*time.Minute + time.Second)
	if _, err := s.Resume(ctx, "bob"); !errors.Is(err, ErrConfirmExpired) {
		t.Fatalf("late confirmation: %v", err)
	}
	if !s.Engaged() || s.Status().PendingResume != nil {
		t.Fatalf("after a late confirmation: %+v", s.Status())
	}
	// bob now asks; a new stop cancels the pending resume; then alice asks, bob confirms in time.
	if res, err := s.Resume(ctx, "bob"); err != nil || res.Pending == nil {
		t.Fatalf("bob asks: %+v %v", res, err)
	}
	if err := s.Engage(ctx, "carol", "again"); err != nil {
		t.Fatal(err)
	}
	if s.Status().PendingResume != nil {
		t.Fatal("engage did not cancel the pending resume")
	}
	if res, err := s.Resume(ctx, "alice"); err != nil || res.Pending == nil {
		t.Fatalf("alice asks: %+v %v", res, err)
	}
	clk.Advance(4 * time.Minute)
	res, err = s.Resume(ctx, "bob")
	if err != nil || !res.Resumed {
		t.Fatalf("bob confirms in time: %+v %v", res, err)
	}
	if s.Engaged() {
		t.Fatal("still engaged after two operators")
	}
	if _, ok := s.Pass(); !ok {
		t.Fatal("no pass after resume")
	}
}

func TestStoreFailureFailsClosed(t *testing.T) {
	st := newMemStore()
	s := mustNew(t, Options{Store: st})
	st.fail = errors.New("disk full")
	if err := s.Engage(context.Background(), "alice", "x"); err == nil {
		t.Fatal("Engage reported success without a durable record")
	}
	if !s.Engaged() {
		t.Fatal("not engaged in memory after a storage error")
	}
	if _, ok := s.Pass(); ok {
		t.Fatal("pass granted")
	}
	// A later Engage retries the durable write.
	st.fail = nil
	if err := s.Engage(context.Background(), "alice", "x"); err != nil {
		t.Fatal(err)
	}
	if !mustNew(t, Options{Store: st}).Engaged() {
		t.Fatal("retry did not make the state durable")
	}
	// Resume that cannot be recorded keeps the switch engaged.
	st.fail = errors.New("disk full")
	if _, err := s.Resume(context.Background(), "bob"); err == nil || !s.Engaged() {
		t.Fatalf("resume without durable record: err=%v engaged=%v", err, s.Engaged())
	}
}

func TestCorruptStateStartsEngaged(t *testing.T) {
	st := newMemStore()
	st.data[StateKey] = []byte("{not json")
	s, err := New(Options{Store: st})
	if !errors.Is(err, ErrCorrupt) || s == nil || !s.Engaged() {
		t.Fatalf("corrupt state: switch=%v err=%v", s, err)
	}
}

func TestTripFile(t *testing.T) {
	dir := t.TempDir()
	trip := filepath.Join(dir, "STOP")
	var engagedCalls atomic.Int32
	s := mustNew(t, Options{Store: newMemStore(), TripFile: trip, TripInterval: 10 * time.Millisecond,
		OnEngage: func() { engagedCalls.Add(1) }})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Watch(ctx, func(err error) { t.Error(err) })
	time.Sleep(40 * time.Millisecond)
	if s.Engaged() {
		t.Fatal("engaged without a trip file")
	}
	if err := os.WriteFile(trip, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for !s.Engaged() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if !s.Engaged() || s.Status().By != "trip-file" {
		t.Fatalf("trip file did not engage: %+v", s.Status())
	}
	if _, err := s.Resume(ctx, "alice"); !errors.Is(err, ErrTripFilePresent) {
		t.Fatalf("resume with trip file present: %v", err)
	}
	os.Remove(trip)
	if res, err := s.Resume(ctx, "alice"); err != nil || !res.Resumed {
		t.Fatalf("resume: %+v %v", res, err)
	}
	time.Sleep(40 * time.Millisecond)
	if s.Engaged() {
		t.Fatal("re-engaged without a trip file")
	}
	if engagedCalls.Load() != 1 {
		t.Fatalf("OnEngage ran %d times, want 1", engagedCalls.Load())
	}
}

func TestAutoTripDenials(t *testing.T) {
	clk := newClock()
	s := mustNew(t, Options{Store: newMemStore(), Clock: clk, AutoTrip: &AutoTrip{MaxDenials: 5, Window: time.Minute}})
	for i := 0; i < 4; i++ {
		s.ObserveDenial()
		clk.Advance(20 * time.Second) // the window slides: never 5 within a minute
	}
	if s.Engaged() {
		t.Fatal("tripped on a slow trickle of denials")
	}
	for i := 0; i < 4; i++ {
		s.ObserveDenial()
	}
	if !s.Engaged() {
		t.Fatal("burst of denials did not trip")
	}
	waitDurable(t, s)
	if st := s.Status(); st.By != "auto" {
		t.Fatalf("status %+v", st)
	}
}

func TestAutoTripSpend(t *testing.T) {
	clk := newClock()
	s := mustNew(t, Options{Store: newMemStore(), Clock: clk, AutoTrip: &AutoTrip{Spend: []SpendTrip{{Limit: 1000, Window: time.Hour}}}})
	s.ObserveSpend(600)
	clk.Advance(61 * time.Minute)
	s.ObserveSpend(600) // the first left the window
	if s.Engaged() {
		t.Fatal("tripped although the window holds 600")
	}
	s.ObserveSpend(401)
	if !s.Engaged() {
		t.Fatal("1001 within the window did not trip")
	}
	waitDurable(t, s)
}

func waitDurable(t *testing.T, s *Switch) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		ok := s.state.Engaged
		s.mu.Unlock()
		if ok {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatal("automatic trip never recorded durably")
}

func TestSetAutoTrip(t *testing.T) {
	clk := newClock()
	s := mustNew(t, Options{Store: newMemStore(), Clock: clk})
	for i := 0; i < 10; i++ {
		s.ObserveDenial()
	}
	if s.Engaged() {
		t.Fatal("tripped without AutoTrip")
	}
	if err := s.SetAutoTrip(&AutoTrip{MaxDenials: 3}); err == nil {
		t.Fatal("AutoTrip without window accepted")
	}
	if err := s.SetAutoTrip(&AutoTrip{MaxDenials: 3, Window: time.Minute}); err != nil {
		t.Fatal(err)
	}
	s.ObserveDenial()
	s.ObserveDenial()
	if s.Engaged() {
		t.Fatal("tripped early")
	}
	s.ObserveDenial()
	if !s.Engaged() {
		t.Fatal("did not trip after SetAutoTrip")
	}
	waitDurable(t, s)
}
