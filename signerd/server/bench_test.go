package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/crypto"

	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/signerd/config"
)

// The benchmarks compare, on the same SoftHSM2 token, the raw signing loop (Signer.SignDigest,
// which includes low-s normalisation and the recovery-id search) with end-to-end signed
// guarantees through the agent socket (HTTP/1.1, JSON, policy, durable ledger reservation and
// commit, verification), at concurrency 1, 2 and 4. Each reports ops/s and p50/p99 latency.
//
//	go test -run '^$' -bench 'RawSign|EndToEnd' -benchtime 2000x ./signerd/server

func BenchmarkRawSign(b *testing.B) {
	ctx := context.Background()
	be, err := hsm.Open(ctx, env.Options("daemon"))
	if err != nil {
		b.Fatal(err)
	}
	defer be.Close()
	keys, err := be.List(ctx)
	if err != nil || len(keys) == 0 {
		k, err := be.Generate(ctx, hsm.GenerateOptions{Label: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		keys = []hsm.KeyInfo{k}
	}
	var s hsm.Signer
	for _, k := range keys {
		if !k.Retired {
			if s, err = be.Signer(ctx, k.URI); err != nil {
				b.Fatal(err)
			}
			break
		}
	}
	for _, c := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("c=%d", c), func(b *testing.B) {
			runConcurrent(b, c, func(i int) error {
				d := crypto.Keccak256Hash([]byte(fmt.Sprint(i)))
				_, err := s.SignDigest(ctx, d)
				return err
			})
		})
	}
}

func BenchmarkEndToEnd(b *testing.B) {
	d := startDaemon(b, func(c *config.Config) {
		// SIGNERD_BENCH_STATE_DIR=/dev/shm puts the ledger on tmpfs, to separate the daemon's
		// own cost from the disk's fsync latency (diagnostic only: tmpfs is not durable).
		if dir := os.Getenv("SIGNERD_BENCH_STATE_DIR"); dir != "" {
			sd, err := os.MkdirTemp(dir, "signerd-bench-")
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { os.RemoveAll(sd) })
			c.StateDir = sd
		}
	})
	for _, c := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("c=%d", c), func(b *testing.B) {
			clients := make([]*client, c)
			for i := range clients {
				clients[i] = newClient(d.cfg.Sockets.Agent.Path)
			}
			var tab atomic.Uint64
			tabBase := uint64(time.Now().UnixNano())
			runConcurrentW(b, c, func(w, i int) error {
				body, _ := json.Marshal(map[string]any{"claims": d.claims(tabBase+tab.Add(1), uint64(i), 1, nil)})
				resp, err := clients[w].http.Post("http://signerd/v1/guarantees", "application/json", bytes.NewReader(body))
				if err != nil {
					return err
				}
				raw, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					return fmt.Errorf("status %d: %s", resp.StatusCode, raw)
				}
				return nil
			})
		})
	}
}

func runConcurrent(b *testing.B, c int, op func(i int) error) {
	runConcurrentW(b, c, func(_, i int) error { return op(i) })
}

// runConcurrentW runs b.N ops on c workers and reports ops/s, p50 and p99.
func runConcurrentW(b *testing.B, c int, op func(w, i int) error) {
	var next atomic.Int64
	lat := make([][]time.Duration, c)
	var wg sync.WaitGroup
	var failed atomic.Value
	b.ResetTimer()
	cpu0 := cpuTime()
	start := time.Now()
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for {
				i := int(next.Add(1))
				if i > b.N {
					return
				}
				t0 := time.Now()
				if err := op(w, i); err != nil {
					failed.Store(err)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}(w)
	}
	wg.Wait()
	el := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	if len(all) == 0 {
		return
	}
	b.ReportMetric(float64(b.N)/el.Seconds(), "ops/s")
	b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
	// CPU of this process (client, daemon, and SoftHSM inside it) per op: independent of how
	// busy the machine is, unlike the wall-clock figures.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
}

// cpuTime is the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
