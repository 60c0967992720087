package ledger

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/big"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/signerd/signerd/signerd/bucketstore"

	"github.com/signerd/signerd/policyengine"
)

// BenchmarkIntentSignature measures one signing request's ledger work as the pipeline does it
// (Reserve with two budget charges, Durable, then RecordSignature of a 65-byte signature) on a
// real store, at concurrency 1, 8 and 64. It reports requests/s, the p50/p99 latency and the
// synced WAL appends per request.
//
//	go test -run '^$' -bench IntentSignature -benchtime 3000x ./signerd/ledger/
func BenchmarkIntentSignature(b *testing.B) {
	for _, c := range []int{1, 8, 64} {
		benchOne(b, c, 0)
	}
}

// BenchmarkIntentSignSignature adds a simulated signature (300 µs of busy CPU, like SoftHSM's
// ≈ 340 µs per signature; a sleep would round up to ≈ 1.1 ms here) between Reserve and Durable:
// the intent's fsync overlaps it.
//
//	go test -run '^$' -bench IntentSignSignature -benchtime 500x ./signerd/ledger/
func BenchmarkIntentSignSignature(b *testing.B) {
	for _, c := range []int{1, 2, 4, 8} {
		benchOne(b, c, 300*time.Microsecond)
	}
}

func benchOne(b *testing.B, c int, signTime time.Duration) {
	name := fmt.Sprintf("c=%d", c)
	{
		b.Run(name, func(b *testing.B) {
			l, err := Open(Options{Path: filepath.Join(b.TempDir(), "bench.db")})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			ctx := context.Background()
			limit := new(big.Int).Lsh(big.NewInt(1), 200)
			charges := []policyengine.Charge{
				{Budget: "daily", Key: "daily/agent-a", Window: 24 * time.Hour, Limit: limit, Amount: big.NewInt(1000)},
				{Budget: "rate", Key: "rate/agent-a", Window: time.Minute, Limit: limit, Amount: big.NewInt(1), Count: true},
			}
			claims := []byte(`{"user_address":"0x1111111111111111111111111111111111111111","recipient_address":"0x2222222222222222222222222222222222222222","tab_id":"0x1","req_id":"0x0","amount":"0x3e8","asset_address":"0x3333333333333333333333333333333333333333","timestamp":1763726400}`)
			lat := make([]time.Duration, b.N)
			var next atomic.Int64
			before := l.Stats()
			b.ResetTimer()
			cpu0 := cpuTime()
			start := time.Now()
			var wg sync.WaitGroup
			for w := 0; w < c; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := next.Add(1) - 1
						if i >= int64(b.N) {
							return
						}
						t := time.Now()
						r, err := l.Reserve(ctx, Reservation{Wallet: wallet, TabID: big.NewInt(1), ReqID: big.NewInt(i),
							Claims: claims, Charges: charges, Principal: "uid:1000", Agent: "agent-a", Rule: "allow", Scheme: "eip712"})
						if err != nil || r.Outcome != Reserved {
							b.Error(r.Outcome, err)
							return
						}
						if signTime > 0 { // CPU-bound like SoftHSM (≈ 340 µs of CPU per signature)
							for t := time.Now(); time.Since(t) < signTime; {
							}
						}
						if err := r.Durable(ctx); err != nil {
							b.Error(err)
							return
						}
						if _, err := l.RecordSignature(ctx, r.RecordID, sig65(byte(i))); err != nil {
							b.Error(err)
							return
						}
						lat[i] = time.Since(t)
					}
				}()
			}
			wg.Wait()
			el := time.Since(start)
			cpu := cpuTime() - cpu0
			b.StopTimer()
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			st := l.Stats()
			b.ReportMetric(float64(b.N)/el.Seconds(), "req/s")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			b.ReportMetric(float64(st.Ops-before.Ops)/float64(st.Updates-before.Updates), "ops/tx")
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
			b.ReportMetric(float64(st.Syncs-before.Syncs)/float64(b.N), "syncs/op")
		})
	}
}

// BenchmarkStoreUpdateBaseline is the floor under BenchmarkIntentSignature on the same disk at
// the same moment: one bare synced Update putting a 300-byte value, serially. A request at
// concurrency 1 costs one such transaction plus the ledger's work.
func BenchmarkStoreUpdateBaseline(b *testing.B) {
	db, err := bucketstore.Open(filepath.Join(b.TempDir(), "base.db"), bucketstore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	_ = db.Update(func(tx *bucketstore.Tx) error { _, err := tx.CreateBucketIfNotExists([]byte("b")); return err })
	lat := make([]time.Duration, b.N)
	val := make([]byte, 300)
	b.ResetTimer()
	cpu0 := cpuTime()
	for i := 0; i < b.N; i++ {
		t := time.Now()
		err := db.Update(func(tx *bucketstore.Tx) error {
			return tx.Bucket([]byte("b")).Put(binary.BigEndian.AppendUint64(nil, uint64(i)), val)
		})
		if err != nil {
			b.Fatal(err)
		}
		lat[i] = time.Since(t)
	}
	cpu := cpuTime() - cpu0
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
}

// cpuTime is the process's user+system CPU time (independent of how busy the machine is).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
