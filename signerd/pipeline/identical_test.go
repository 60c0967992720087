package pipeline_test

import (
	"context"
	"sync"
	"testing"
)

// TestIdenticalConcurrentRequestsOneSignature: many identical requests at once get one
// and the same signature in every mode (passes: a soundness check, kept for the record).
func TestIdenticalConcurrentRequestsOneSignature(t *testing.T) {
	modes(t, func(t *testing.T, mode reservationMode) {
		f := newFixture(t, mode)
		for round := uint64(1); round <= 20; round++ {
			var wg sync.WaitGroup
			var mu sync.Mutex
			sigs := map[[65]byte]int{}
			for i := 0; i < 16; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r, err := f.p.Sign(context.Background(), f.adm, f.request(round, 1))
					if err != nil {
						return
					}
					mu.Lock()
					sigs[r.Signature]++
					mu.Unlock()
					r.Done()
				}()
			}
			wg.Wait()
			if len(sigs) != 1 {
				t.Fatalf("round %d: %d distinct signatures sent for one (wallet, tab, req)", round, len(sigs))
			}
		}
	})
}
