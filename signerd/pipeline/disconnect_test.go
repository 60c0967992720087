package pipeline_test

import (
	"context"
	"math/big"
	"testing"

	"github.com/signerd/signerd/signerd/ledger"
)

// TestCallerGoneAfterSigningStillCommits: the agent disconnects (its request context is
// cancelled) while the HSM signs. The signature must still be committed durably, so the
// reservation and its budget charge are not left pinned, and an identical retry gets the
// stored signature.
func TestCallerGoneAfterSigningStillCommits(t *testing.T) {
	modes(t, func(t *testing.T, mode reservationMode) {
		f := newFixture(t, mode)
		ctx, cancel := context.WithCancel(context.Background())
		f.signer.hook = cancel // the caller goes away while the device signs
		res, err := f.p.Sign(ctx, f.adm, f.request(1, 10))
		f.signer.hook = nil
		if err == nil {
			res.Done() // the answer would not reach anyone; what matters is the ledger
		}
		rec, lerr := f.p.Lookup(f.signer.Address(), big.NewInt(9), big.NewInt(1))
		if lerr != nil || rec == nil {
			t.Fatalf("record: %v %v", rec, lerr)
		}
		if rec.Status != ledger.StatusSigned {
			t.Fatalf("record status %q after a disconnect during signing (Sign err: %v); want signed", rec.Status, err)
		}
		retry, err := f.p.Sign(context.Background(), f.adm, f.request(1, 10))
		if err != nil {
			t.Fatalf("identical retry: %v", err)
		}
		defer retry.Done()
		if !retry.Replayed {
			t.Fatal("identical retry was signed again instead of getting the stored signature")
		}
	})
}
