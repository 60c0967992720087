package ledger

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// BenchmarkPrune20k: export and prune of 20,000 signed records (40,000 audit records), the
// figures docs/ledger.md gives. Run: go test -run '^$' -bench Prune20k -benchtime 1x ./signerd/ledger
func BenchmarkPrune20k(b *testing.B) {
	for range b.N {
		b.StopTimer()
		clk := &fakeClock{t: t0}
		l, err := Open(Options{Path: filepath.Join(b.TempDir(), "l.db"), Clock: clk.Now})
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		var wg sync.WaitGroup
		for w := range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 20000 / 64 {
					req := int64(w*1000 + i)
					r, err := l.Reserve(ctx, resv(int64(w), req, fmt.Sprintf(`{"amount":"%d","pad":"%0400d"}`, req, 0), charge("life", 0, 1<<40, 1)))
					if err == nil {
						_, err = l.Commit(ctx, r.RecordID, sig65(1))
					}
					if err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		clk.Advance(48 * time.Hour)
		if _, err := l.Reserve(ctx, resv(999, 1, `{}`)); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t1 := time.Now()
		sum, err := l.ExportArchive(io.Discard, t0.Add(time.Hour))
		if err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		if _, err := l.Prune(ctx, PruneRequest{Before: sum.Before, Plan: sum.Plan}); err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		b.ReportMetric(float64(t2.Sub(t1).Milliseconds()), "export-ms")
		b.ReportMetric(float64(t3.Sub(t2).Milliseconds()), "prune-ms")
		b.ReportMetric(float64(sum.PaymentRecords), "records")
		l.Close()
	}
}
