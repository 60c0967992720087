package policyengine

import (
	"fmt"
	"math/big"
	"math/rand"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
)

const propertyPolicy = `
version: 1
assets:
  USDC: {address: "0x036CbD53842c5426634e7929541eC2318f3dCF7e", decimals: 6}
agents:
  a1: {callers: [{uid: 1}], wallets: ["0x00000000000000000000000000000000000000f1"]}
  a2: {callers: [{uid: 2}], wallets: ["0x00000000000000000000000000000000000000f2"]}
rules:
  - {id: all, effect: allow, agents: any, sellers: any, networks: any, assets: any, max_amount: "60"}
budgets:
  - {id: agent-minute, per: [agent], window: minute, limit: "400"}
  - {id: agent-hour,   per: [agent], window: hour,   limit: "3000"}
  - {id: seller-10s,   per: [seller], window: 10s,   limit: "150"}
  - {id: wallet-day,   per: [wallet], window: day,   limit: "20000"}
  - {id: task-life,    per: [agent, task], window: lifetime, limit: "900"}
  - {id: rate-30s,     per: [agent, seller], window: 30s, max_requests: 7}
`

type applied struct {
	t      time.Time
	amount int64
}

// TestBudgetsNeverOverspend drives random intents and clock advances from several goroutines
// through Evaluate + MemLedger.Apply and checks, from the log of what was actually debited, that
// no window of any budget ever holds more than its limit.
func TestBudgetsNeverOverspend(t *testing.T) {
	p, err := Compile(map[string][]byte{"p.yaml": []byte(propertyPolicy)}, CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for seed := int64(1); seed <= 3; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { runProperty(t, p, seed, 4, 1500) })
	}
}

func runProperty(t *testing.T, p *Policy, seed int64, workers, steps int) {
	led := NewMemLedger()
	var clock atomic.Int64
	clock.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	var mu sync.Mutex
	log := map[string][]applied{} // key|window -> debits
	limits := map[string]*Charge{}
	var allowed, denied atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(seed*1000 + int64(w)))
			for i := 0; i < steps; i++ {
				// Advance the shared clock: mostly small steps, sometimes long jumps.
				var adv time.Duration
				switch r := rng.Intn(100); {
				case r < 70:
					adv = time.Duration(rng.Intn(1500)) * time.Millisecond
				case r < 95:
					adv = time.Duration(rng.Intn(20)) * time.Second
				default:
					adv = time.Duration(rng.Intn(90)) * time.Minute
				}
				now := time.Unix(0, clock.Add(int64(adv)))
				agent := 1 + rng.Intn(2)
				in := &Intent{Caller: Caller{UID: uint32(agent)}, Wallet: common.BigToAddress(big.NewInt(int64(0xf0 + agent))),
					PayTo: common.BigToAddress(big.NewInt(int64(0xc0 + rng.Intn(3)))), Host: "x.example",
					Network: "eip155:84532", ChainID: 84532, Asset: common.HexToAddress("0x036CbD53842c5426634e7929541eC2318f3dCF7e"),
					Amount: big.NewInt(int64(1 + rng.Intn(60))), Version: 1, Timestamp: uint64(now.Unix()), TaskID: fmt.Sprint("t", i/200, "-", rng.Intn(3))}
				d := p.Evaluate(in, led, now)
				if d.Outcome != Allow {
					if d.Code != CodeBudgetExhausted && d.Code != CodeRateLimited {
						t.Errorf("unexpected denial %v", d)
						return
					}
					denied.Add(1)
					continue
				}
				at, err := led.ApplyAt(d.Charges, now)
				if err != nil {
					denied.Add(1) // lost a race with another worker: fine, nothing debited
					continue
				}
				allowed.Add(1)
				mu.Lock()
				for i := range d.Charges {
					c := d.Charges[i]
					k := fmt.Sprintf("%s|%d", c.Key, c.Window)
					log[k] = append(log[k], applied{at, c.Amount.Int64()})
					limits[k] = &c
				}
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	if allowed.Load() < 100 || denied.Load() < 100 {
		t.Fatalf("the run did not exercise both sides: %d allowed, %d denied", allowed.Load(), denied.Load())
	}
	if err := checkWindows(log, limits); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d allowed, %d denied, %d counters", allowed.Load(), denied.Load(), len(log))
}

// Sequentially, Evaluate and Apply agree: whatever Evaluate allows, Apply accepts.
func TestEvaluateAgreesWithApply(t *testing.T) {
	p, err := Compile(map[string][]byte{"p.yaml": []byte(propertyPolicy)}, CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	led := NewMemLedger()
	rng := rand.New(rand.NewSource(7))
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var allowed, denied int
	for i := 0; i < 3000; i++ {
		now = now.Add(time.Duration(rng.Intn(3000)) * time.Millisecond)
		in := &Intent{Caller: Caller{UID: 1}, Wallet: common.BigToAddress(big.NewInt(0xf1)), PayTo: common.BigToAddress(big.NewInt(int64(0xc0 + rng.Intn(2)))),
			Host: "x.example", Network: "eip155:84532", ChainID: 84532, Amount: big.NewInt(int64(1 + rng.Intn(60))), Version: 1,
			Timestamp: uint64(now.Unix()), TaskID: fmt.Sprint("t", i/50)}
		d := p.Evaluate(in, led, now)
		err := led.Apply(d.Charges, now)
		if d.Outcome == Allow {
			allowed++
			if err != nil {
				t.Fatalf("step %d: Evaluate allowed but Apply refused: %v", i, err)
			}
		} else {
			denied++
			if err == nil {
				t.Fatalf("step %d: Evaluate denied (%v) but Apply accepted", i, d)
			}
		}
	}
	if allowed == 0 || denied == 0 {
		t.Fatalf("allowed %d denied %d", allowed, denied)
	}
}

// checkWindows verifies that for every counter, every window (T-w, T] ending at a debit holds at
// most the limit (the maximum over all T is reached at a debit time).
func checkWindows(log map[string][]applied, limits map[string]*Charge) error {
	for k, entries := range log {
		c := limits[k]
		limit := c.Limit.Int64()
		sort.Slice(entries, func(i, j int) bool { return entries[i].t.Before(entries[j].t) })
		sum, lo := int64(0), 0
		for hi := range entries {
			sum += entries[hi].amount
			if c.Window > 0 {
				for !entries[lo].t.After(entries[hi].t.Add(-c.Window)) {
					sum -= entries[lo].amount
					lo++
				}
			}
			if sum > limit {
				return fmt.Errorf("budget %s: %d in the window ending %s, limit %d", k, sum, entries[hi].t, limit)
			}
		}
	}
	return nil
}

// The checker itself can fail: an overspend 59 s apart in a one-minute window is caught, the
// same debits 61 s apart are not.
func TestCheckWindowsDetectsOverspend(t *testing.T) {
	t0 := time.Unix(1000, 0)
	lim := map[string]*Charge{"k": {Window: time.Minute, Limit: big.NewInt(10)}}
	if checkWindows(map[string][]applied{"k": {{t0, 6}, {t0.Add(59 * time.Second), 5}}}, lim) == nil {
		t.Fatal("overspend not detected")
	}
	if err := checkWindows(map[string][]applied{"k": {{t0, 6}, {t0.Add(61 * time.Second), 5}}}, lim); err != nil {
		t.Fatal(err)
	}
}
