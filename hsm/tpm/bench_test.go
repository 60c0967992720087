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

	"github.com/ethereum/go-ethereum/crypto"
	"github.com/ethereum/go-ethereum/crypto/secp256k1"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/hsm/tpm/swtpmtest"
)

// BenchmarkSignTPM measures SignDigest (including the backend's recovery check) against a real
// swtpm over a Unix socket, in both unseal modes at concurrency 1, 2 and 4, and reports ops/s,
// p50 and p99 latency. Two baselines run in the same process: bare libsecp256k1 signing with
// a key in memory (the floor of unseal-once mode), and an unseal that starts a fresh salted
// session each time (what per-signature mode would cost without session reuse).
//
//	go test -run '^$' -bench BenchmarkSignTPM -benchtime 2000x ./hsm/tpm/
func BenchmarkSignTPM(b *testing.B) {
	sw := swtpmtest.Start(b)
	dir := b.TempDir()
	ctx := context.Background()
	open := func(b *testing.B, perSig bool) (*Backend, hsm.Signer) {
		be, err := Open(ctx, hsm.TPMOptions{Address: sw.Address(), KeyDir: dir, PCRs: []int{16}, UnsealPerSignature: perSig})
		if err != nil {
			b.Fatal(err)
		}
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
		return be, s
	}
	for _, m := range modes {
		for _, conc := range []int{1, 2, 4} {
			b.Run(fmt.Sprintf("%s/c=%d", m.name, conc), func(b *testing.B) {
				be, s := open(b, m.perSig)
				defer be.Close()
				runLoad(b, conc, func(d [32]byte) error {
					_, err := s.SignDigest(ctx, d)
					return err
				})
			})
		}
	}
	b.Run("baseline-secp256k1-sign/c=1", func(b *testing.B) {
		k, _ := crypto.GenerateKey()
		sec := crypto.FromECDSA(k)
		runLoad(b, 1, func(d [32]byte) error {
			_, err := secp256k1.Sign(d[:], sec)
			return err
		})
	})
	b.Run("baseline-unseal-fresh-session/c=1", func(b *testing.B) {
		be, s := open(b, true)
		defer be.Close()
		kf := s.(*signer).k.meta
		sec := make([]byte, 32)
		runLoad(b, 1, func(d [32]byte) error {
			return be.withTPM(func(t transport.TPM, srk srkInfo) error {
				return unsealInto(t, srk, kf, sec, true, nil)
			})
		})
	})
}

// runLoad runs b.N calls of fn spread over conc goroutines and reports ops/s, p50 and p99.
func runLoad(b *testing.B, conc int, fn func(d [32]byte) error) {
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
			binary.BigEndian.PutUint32(d[:4], uint32(w)+1)
			for i := range n {
				binary.BigEndian.PutUint64(d[24:], uint64(i))
				t0 := time.Now()
				if err := fn(d); err != nil {
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
	if len(all) == 0 {
		return
	}
	slices.Sort(all)
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "ops/s")
	b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
}
