package server_test

import (
	"context"
	"math/big"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
)

// TestCollateralWaitDoesNotBlockWallet: over the socket, against the simulated chain with
// mining stopped, a deposit with wait: true is sent and waits for its receipt; a second deposit
// of the same wallet is signed and sent meanwhile (status sent, the next nonce) before the
// first is mined; then the chain mines and the first returns mined.
func TestCollateralWaitDoesNotBlockWallet(t *testing.T) {
	e := startCollateralDaemon(t, nil)
	wallet := common.HexToAddress(e.wallet)
	ctx := context.Background()
	amount := new(big.Int).Mul(big.NewInt(10), finney)
	e.noMining.Store(true)
	time.Sleep(50 * time.Millisecond) // let a Commit already under way end

	first := make(chan *response, 1)
	go func() { first <- e.agent.do(t, "POST", "/v1/collateral", deposit("wait-a", amount, true)) }()
	// a is waiting once its transaction is pending on the chain.
	deadline := time.Now().Add(10 * time.Second)
	for e.chain.sent.Load() < 1 {
		if time.Now().After(deadline) {
			t.Fatal("a was never broadcast")
		}
		time.Sleep(5 * time.Millisecond)
	}
	b := e.agent.do(t, "POST", "/v1/collateral", deposit("wait-b", amount, false))
	if b.Status != 200 || b.str("status") != "sent" {
		t.Fatalf("b while a waits: %d %s", b.Status, b.Raw)
	}
	select {
	case r := <-first:
		t.Fatalf("a returned before anything was mined: %d %s", r.Status, r.Raw)
	default:
	}
	if n, _ := e.sim.Client().NonceAt(ctx, wallet, nil); n != 0 {
		t.Fatalf("mined nonce %d before mining resumed", n)
	}
	if n, _ := e.sim.Client().PendingNonceAt(ctx, wallet); n != 2 || e.chain.distinct() != 2 {
		t.Fatalf("pending nonce %d, %d distinct transactions; want 2, 2", n, e.chain.distinct())
	}
	e.noMining.Store(false)
	var a *response
	select {
	case a = <-first:
	case <-time.After(10 * time.Second):
		t.Fatal("a did not return after mining resumed")
	}
	if a.Status != 200 || a.str("status") != "mined" {
		t.Fatalf("a after mining: %d %s", a.Status, a.Raw)
	}
	for _, r := range []*response{a, b} {
		hs, _ := r.Body["tx_hashes"].([]any)
		if len(hs) != 1 {
			t.Fatalf("hashes: %s", r.Raw)
		}
		tx, _, err := e.sim.Client().TransactionByHash(ctx, common.HexToHash(hs[0].(string)))
		if err != nil {
			t.Fatal(err)
		}
		want := uint64(0)
		if r == b {
			want = 1
		}
		if tx.Nonce() != want {
			t.Fatalf("nonce %d, want %d", tx.Nonce(), want)
		}
	}
}
