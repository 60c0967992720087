//go:build !no_tpm

package tpm

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/hsm/tpm/swtpmtest"
)

// BenchmarkSignTPM measures SignDigest (including the backend's recovery check) against a real
// swtpm over a Unix socket, in both unseal modes at concurrency 1, 2 and 4, and reports ops/s,
// p50 and p99 latency.
//
//	go test -run '^$' -bench BenchmarkSignTPM -benchtime 2000x ./hsm/tpm/
func BenchmarkSignTPM(b *testing.B) {
	sw := swtpmtest.Start(b)
	dir := b.TempDir()
	for _, m := range modes {
		for _, conc := range []int{1, 2, 4} {
			b.Run(fmt.Sprintf("%s/c=%d", m.name, conc), func(b *testing.B) {
				ctx := context.Background()
				be, err := Open(ctx, hsm.TPMOptions{Address: sw.Address(), KeyDir: dir, PCRs: []int{16}, UnsealPerSignature: m.perSig})
				if err != nil {
					b.Fatal(err)
				}
				defer be.Close()
				list, _ := be.List(ctx)
				var uri string
				if len(list) > 0 {
					uri = list[0].URI
				} else {
					ki, err := be.Generate(ctx, hsm.GenerateOptions{Label: "bench"})
					if err != nil {
						b.Fatal(err)
					}
					uri = ki.URI
				}
				s, err := be.Signer(ctx, uri)
				if err != nil {
					b.Fatal(err)
				}
				lat := make([][]time.Duration, conc)
				var wg sync.WaitGroup
				b.ResetTimer()
				start := time.Now()
				for w := range conc {
					n := b.N / conc
					if w < b.N%conc {
						n++
					}
					wg.Add(1)
					go func() {
						defer wg.Done()
						ls := make([]time.Duration, 0, n)
						var d [32]byte
						binary.BigEndian.PutUint32(d[:4], uint32(w))
						for i := range n {
							binary.BigEndian.PutUint64(d[24:], uint64(i))
							t0 := time.Now()
							if _, err := s.SignDigest(ctx, d); err != nil {
								b.Error(err)
								return
							}
							ls = append(ls, time.Since(t0))
						}
						lat[w] = ls
					}()
				}
				wg.Wait()
				elapsed := time.Since(start)
				b.StopTimer()
				all := slices.Concat(lat...)
				slices.Sort(all)
				if len(all) == 0 {
					return
				}
				b.ReportMetric(float64(len(all))/elapsed.Seconds(), "ops/s")
				b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
				b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
			})
		}
	}
}
