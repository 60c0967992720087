//go:build !no_pkcs11

package pkcs11_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/hsm/pkcs11"
)

var (
	benchOnce    sync.Once
	benchBackend *pkcs11.Backend
	benchKey     hsm.KeyInfo
	benchErr     error
	benchDigests [1024][32]byte
)

// benchSetup opens the "bench" token once (4 sessions) and generates one key on it.
func benchSetup(b *testing.B) (*pkcs11.Backend, hsm.KeyInfo) {
	benchOnce.Do(func() {
		o := env.Options("bench")
		o.PKCS11.Sessions = 4
		var be hsm.Backend
		be, benchErr = hsm.Open(context.Background(), o)
		if benchErr != nil {
			return
		}
		benchBackend = be.(*pkcs11.Backend)
		benchKey, benchErr = benchBackend.Generate(context.Background(), hsm.GenerateOptions{Label: "bench"})
		for i := range benchDigests {
			rand.Read(benchDigests[i][:])
		}
	})
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return benchBackend, benchKey
}

// runConcurrent runs b.N calls of op spread over conc goroutines (goroutine g calls op(g, i))
// and reports ops/s, p50 and p99 latency.
func runConcurrent(b *testing.B, conc int, op func(g, i int) error) {
	lat := make([]time.Duration, b.N)
	cpu0 := cpuTime()
	var next atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for g := 0; g < conc; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= b.N {
					return
				}
				t0 := time.Now()
				if err := op(g, i); err != nil {
					failed.Store(err)
					return
				}
				lat[i] = time.Since(t0)
			}
		}(g)
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
}

// cpuTime is the process's user+system CPU time (the machine is shared, so CPU per op is a
// steadier cost measure than wall-clock throughput).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkSignPKCS11 is the backend's full signing path: pool slot, C_SignInit + C_Sign,
// low-s, v by recovery (verification) — a 65-byte Ethereum signature.
func BenchmarkSignPKCS11(b *testing.B) {
	be, ki := benchSetup(b)
	s, err := be.Signer(context.Background(), ki.URI)
	if err != nil {
		b.Fatal(err)
	}
	for _, conc := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("c=%d", conc), func(b *testing.B) {
			runConcurrent(b, conc, func(_, i int) error {
				_, err := s.SignDigest(context.Background(), benchDigests[i%len(benchDigests)])
				return err
			})
		})
	}
}

// BenchmarkRawCSign is the floor: a bare C_SignInit + C_Sign loop on the same token and key,
// one session per goroutine, raw r‖s only.
func BenchmarkRawCSign(b *testing.B) {
	be, ki := benchSetup(b)
	for _, conc := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("c=%d", conc), func(b *testing.B) {
			raws := make([]*pkcs11.RawKey, conc)
			for g := range raws {
				r, err := pkcs11.OpenRawKey(be, ki.URI)
				if err != nil {
					b.Fatal(err)
				}
				defer r.Close()
				raws[g] = r
			}
			runConcurrent(b, conc, func(g, i int) error {
				_, err := raws[g].Sign(benchDigests[i%len(benchDigests)][:])
				return err
			})
		})
	}
}

// BenchmarkRawCSignVerify is the raw loop plus the verification every returned signature needs
// (hsm.FromRS: low-s and v by recovery): the floor for any backend that verifies, so the
// difference to BenchmarkSignPKCS11 is the backend's own overhead.
func BenchmarkRawCSignVerify(b *testing.B) {
	be, ki := benchSetup(b)
	s, err := be.Signer(context.Background(), ki.URI)
	if err != nil {
		b.Fatal(err)
	}
	pub := s.(interface{ PublicKey() []byte }).PublicKey()
	for _, conc := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("c=%d", conc), func(b *testing.B) {
			raws := make([]*pkcs11.RawKey, conc)
			for g := range raws {
				r, err := pkcs11.OpenRawKey(be, ki.URI)
				if err != nil {
					b.Fatal(err)
				}
				defer r.Close()
				raws[g] = r
			}
			runConcurrent(b, conc, func(g, i int) error {
				d := benchDigests[i%len(benchDigests)]
				rs, err := raws[g].Sign(d[:])
				if err != nil {
					return err
				}
				_, err = hsm.FromRS(d, rs, pub)
				return err
			})
		})
	}
}

// BenchmarkSignVsRaw alternates short rounds of three arms at each concurrency — the backend,
// the raw C_Sign loop, and the raw loop plus hsm.FromRS (the verification) — so that load from
// other processes on a shared machine hits all alike. It reports each arm's throughput and CPU
// per signature, ratio = backend / raw, ceiling = (raw + verification) / raw — the best ratio a
// backend that verifies every signature by recovery, as the interface requires, can reach — and
// of-ceiling = backend / (raw + verification).
func BenchmarkSignVsRaw(b *testing.B) {
	be, ki := benchSetup(b)
	s, err := be.Signer(context.Background(), ki.URI)
	if err != nil {
		b.Fatal(err)
	}
	pub := s.(interface{ PublicKey() []byte }).PublicKey()
	for _, conc := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("c=%d", conc), func(b *testing.B) {
			raws := make([]*pkcs11.RawKey, conc)
			for g := range raws {
				r, err := pkcs11.OpenRawKey(be, ki.URI)
				if err != nil {
					b.Fatal(err)
				}
				defer r.Close()
				raws[g] = r
			}
			const round = 100
			arms := []struct {
				name string
				op   func(g int, d [32]byte) error
			}{
				{"backend", func(_ int, d [32]byte) error { _, err := s.SignDigest(context.Background(), d); return err }},
				{"raw", func(g int, d [32]byte) error { _, err := raws[g].Sign(d[:]); return err }},
				{"rawverify", func(g int, d [32]byte) error {
					rs, err := raws[g].Sign(d[:])
					if err == nil {
						_, err = hsm.FromRS(d, rs, pub)
					}
					return err
				}},
			}
			wall := make([]time.Duration, len(arms))
			cpu := make([]time.Duration, len(arms))
			n := make([]int, len(arms))
			run := func(op func(g int, d [32]byte) error, base int) {
				var next atomic.Int64
				var wg sync.WaitGroup
				for g := 0; g < conc; g++ {
					wg.Add(1)
					go func(g int) {
						defer wg.Done()
						for {
							i := int(next.Add(1) - 1)
							if i >= round {
								return
							}
							if err := op(g, benchDigests[(base+i)%len(benchDigests)]); err != nil {
								b.Error(err)
								return
							}
						}
					}(g)
				}
				wg.Wait()
			}
			b.ResetTimer()
			for done := 0; done < b.N; done += len(arms) * round {
				for a, arm := range arms {
					c0, t0 := cpuTime(), time.Now()
					run(arm.op, done)
					wall[a] += time.Since(t0)
					cpu[a] += cpuTime() - c0
					n[a] += round
				}
			}
			b.StopTimer()
			for a, arm := range arms {
				b.ReportMetric(float64(n[a])/wall[a].Seconds(), arm.name+"-ops/s")
				b.ReportMetric(float64(cpu[a].Microseconds())/float64(n[a]), arm.name+"-cpu-µs/op")
			}
			ops := func(a int) float64 { return float64(n[a]) / wall[a].Seconds() }
			b.ReportMetric(ops(0)/ops(1), "ratio")
			// ceiling: the best ratio any backend that verifies by recovery can reach here (raw
			// loop plus the verification, against the raw loop); of-ceiling: how close we are.
			b.ReportMetric(ops(2)/ops(1), "ceiling")
			b.ReportMetric(ops(0)/ops(2), "of-ceiling")
		})
	}
}
