package e2e

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// benchPolicy is the policy of the end-to-end benchmarks: allowUSDCPolicy's per-request cap
// (1 USDC), a daily budget and a per-minute rate limit, both far above what a run uses, so every
// request is evaluated against all three and none is denied.
const benchPolicy = allowUSDCPolicy + `budgets:
  - id: daily
    per: [agent]
    window: day
    limit: "1000000000000000"
  - id: rate
    per: [agent]
    window: minute
    max_requests: 1000000000
`

// benchOps is BENCH_OPS, the operations per side and concurrency of the end-to-end benchmarks
// (default 1500).
func benchOps() int {
	if n, err := strconv.Atoi(os.Getenv("BENCH_OPS")); err == nil && n > 0 {
		return n
	}
	return 1500
}

// arm is one side of an alternating benchmark: round runs the calls base..base+n-1 and returns
// their wall time and, when it measures them, each call's latency.
type arm struct {
	round func(base, n int) (time.Duration, []time.Duration, error)
	wall  time.Duration
	lat   []time.Duration
	calls int
}

func (a *arm) opsPerSec() float64 { return float64(a.calls) / a.wall.Seconds() }

// p50 is the median latency of the arm's calls (0 when it does not measure them).
func (a *arm) p50() time.Duration { return p50(a.lat) }

// alternate runs ops calls on each arm in rounds of at most round calls, one arm's round after
// the other's, so that load from other processes on a shared machine hits every arm alike.
func alternate(ops, round int, arms ...*arm) error {
	for done := 0; done < ops; done += round {
		n := min(round, ops-done)
		for _, a := range arms {
			d, lat, err := a.round(done, n)
			if err != nil {
				return err
			}
			a.wall += d
			a.lat = append(a.lat, lat...)
			a.calls += n
		}
	}
	return nil
}

// concurrent makes a round out of a per-call op: conc workers take the calls base..base+n-1 in
// turn, worker g calling op(g, i), and each call's latency is measured.
func concurrent(conc int, op func(g, i int) error) func(base, n int) (time.Duration, []time.Duration, error) {
	return func(base, n int) (time.Duration, []time.Duration, error) {
		var next atomic.Int64
		var wg sync.WaitGroup
		var once sync.Once
		var failed error
		lat := make([]time.Duration, n)
		start := time.Now()
		for g := 0; g < conc; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
					t0 := time.Now()
					if err := op(g, base+i); err != nil {
						once.Do(func() { failed = err })
						return
					}
					lat[i] = time.Since(t0)
				}
			}()
		}
		wg.Wait()
		return time.Since(start), lat, failed
	}
}

// guaranteeBodies returns n POST /v1/guarantees bodies: 1 µUSDC from wallet to sellerOK, each
// on a fresh tab, EIP-712.
func guaranteeBodies(n int, wallet string) [][]byte {
	bodies := make([][]byte, n)
	for i := range bodies {
		bodies[i] = mustJSON(map[string]any{"claims": newClaims("1").with("user_address", wallet), "scheme": "eip712"})
	}
	return bodies
}

// postGuarantee sends one body to /v1/guarantees and wants 200.
func postGuarantee(c *client, body []byte) error {
	st, raw, err := c.call("POST", "/v1/guarantees", body)
	if err != nil || st != 200 {
		return fmt.Errorf("guarantee: %d %v %s", st, err, raw)
	}
	return nil
}

// warmClients opens conc keep-alive agent clients and sends one guarantee on each, so that the
// measured rounds start with open connections.
func warmClients(e *env, conc int, wallet string) ([]*client, error) {
	clients := make([]*client, conc)
	for g := range clients {
		clients[g] = e.agentClient()
	}
	err := parallelErr(conc, func(g int) error { return postGuarantee(clients[g], guaranteeBodies(1, wallet)[0]) })
	return clients, err
}

// parallelErr runs f(i) for i in [0,n) on n goroutines and returns the first error.
func parallelErr(n int, f func(i int) error) error {
	errs := make([]error, n)
	parallel(n, func(i int) { errs[i] = f(i) })
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func closeClients(cs []*client) {
	for _, c := range cs {
		c.close()
	}
}

// randomDigests returns n random 32-byte digests.
func randomDigests(n int) [][32]byte {
	d := make([][32]byte, n)
	for i := range d {
		rand.Read(d[i][:])
	}
	return d
}

func p50(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
