package pipeline_test

import (
	"context"
	"errors"
	"math/big"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"

	"github.com/signerd/signerd/signerd/coreclient"
	"github.com/signerd/signerd/signerd/pipeline"
)

// gatedChain is fakeChain with a chain that mines nothing until mine is closed: Wait blocks
// until then (or its context ends); waiting reports each Wait call.
type gatedChain struct {
	*fakeChain
	mine    chan struct{}
	waiting chan common.Hash
}

func newGatedChain() *gatedChain {
	return &gatedChain{fakeChain: &fakeChain{}, mine: make(chan struct{}), waiting: make(chan common.Hash, 16)}
}

func (c *gatedChain) Wait(ctx context.Context, _ common.Address, h common.Hash) (*types.Receipt, error) {
	c.waiting <- h
	select {
	case <-c.mine:
		return &types.Receipt{Status: types.ReceiptStatusSuccessful, BlockNumber: big.NewInt(7), TxHash: h}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type collateralOutcome struct {
	res *pipeline.CollateralResult
	err error
}

// TestCollateralWaitDoesNotHoldWallet: a request waiting for its receipt (wait: true, nothing
// mined) does not hold the wallet: a second request of the same wallet is built, signed and
// sent meanwhile with the next nonce; once the chain mines, the first returns mined.
func TestCollateralWaitDoesNotHoldWallet(t *testing.T) {
	f := newFixture(t, intentMode)
	ch := newGatedChain()
	ctx := context.Background()
	eth := common.Address{}
	reqA := depositReq("w-a", eth, 10)
	reqA.Wait, reqA.WaitTimeout = true, time.Minute
	doneA := make(chan collateralOutcome, 1)
	go func() {
		res, err := f.p.Collateral(ctx, f.adm, reqA, ch)
		doneA <- collateralOutcome{res, err}
	}()
	var hashA common.Hash
	select {
	case hashA = <-ch.waiting:
	case o := <-doneA:
		t.Fatalf("a returned before waiting: %+v %v", o.res, o.err)
	case <-time.After(10 * time.Second):
		t.Fatal("a never waited for its receipt")
	}
	bctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resB, err := f.p.Collateral(bctx, f.adm, depositReq("w-b", eth, 20), ch)
	if err != nil || resB.Status != "sent" || len(resB.TxHashes) != 1 {
		t.Fatalf("b while a waits for its receipt: %+v %v", resB, err)
	}
	select {
	case o := <-doneA:
		t.Fatalf("a returned before anything was mined: %+v %v", o.res, o.err)
	default:
	}
	if ch.distinct() != 2 || ch.sent[0].Hash() != hashA || ch.sent[0].Nonce() != 0 || ch.sent[1].Nonce() != 1 || ch.sent[1].Hash() != resB.TxHashes[0] {
		t.Fatalf("sent %d transactions; want a (nonce 0) then b (nonce 1)", ch.distinct())
	}
	close(ch.mine)
	o := <-doneA
	if o.err != nil || o.res.Status != "mined" || len(o.res.TxHashes) != 1 || o.res.TxHashes[0] != hashA || len(o.res.Blocks) != 1 || o.res.Blocks[0] != 7 {
		t.Fatalf("a after mining: %+v %v", o.res, o.err)
	}
	// A retry of a returns the same transaction.
	res, err := f.p.Collateral(ctx, f.adm, depositReq("w-a", eth, 10), ch)
	if err != nil || !res.Replayed || res.TxHashes[0] != hashA || ch.distinct() != 2 {
		t.Fatalf("retry of a: %+v %v", res, err)
	}
}

// TestCollateralApproveCallInterleaved: an approve + call request waiting for its approve to be
// mined does not hold the wallet: another request takes the next nonce meanwhile, and the call
// is then built with the nonce after it (nonces 0, 1, 2: the request's two are not consecutive,
// and nothing needs them to be). A retry of the first request sent while it waits waits for it
// and returns the same two transactions.
func TestCollateralApproveCallInterleaved(t *testing.T) {
	f := newFixture(t, intentMode)
	ch := newGatedChain()
	ctx := context.Background()
	token := common.HexToAddress("0x036CbD53842c5426634e7929541eC2318f3dCF7e")
	reqA := depositReq("i-a", token, 30)
	reqA.WaitTimeout = time.Minute
	doneA := make(chan collateralOutcome, 1)
	go func() {
		res, err := f.p.Collateral(ctx, f.adm, reqA, ch)
		doneA <- collateralOutcome{res, err}
	}()
	select {
	case <-ch.waiting: // the approve is sent; a waits for it to be mined
	case o := <-doneA:
		t.Fatalf("a returned before waiting: %+v %v", o.res, o.err)
	case <-time.After(10 * time.Second):
		t.Fatal("a never waited for its approve")
	}
	// A retry of a while a waits: it waits for a (the request lock), not for the chain.
	retry := make(chan collateralOutcome, 1)
	go func() {
		r := depositReq("i-a", token, 30)
		r.WaitTimeout = time.Minute
		res, err := f.p.Collateral(ctx, f.adm, r, ch)
		retry <- collateralOutcome{res, err}
	}()
	bctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resB, err := f.p.Collateral(bctx, f.adm, depositReq("i-b", common.Address{}, 5), ch)
	if err != nil || resB.Status != "sent" {
		t.Fatalf("b while a waits for its approve: %+v %v", resB, err)
	}
	close(ch.mine)
	o := <-doneA
	if o.err != nil || len(o.res.TxHashes) != 2 || o.res.Status != "sent" {
		t.Fatalf("a: %+v %v", o.res, o.err)
	}
	r := <-retry
	if r.err != nil || !r.res.Replayed || len(r.res.TxHashes) != 2 || r.res.TxHashes[0] != o.res.TxHashes[0] || r.res.TxHashes[1] != o.res.TxHashes[1] {
		t.Fatalf("retry of a: %+v %v (a: %+v)", r.res, r.err, o.res)
	}
	if ch.distinct() != 3 {
		t.Fatalf("%d transactions sent, want 3", ch.distinct())
	}
	nonces := map[common.Hash]uint64{}
	for _, tx := range ch.sent {
		nonces[tx.Hash()] = tx.Nonce()
	}
	if nonces[o.res.TxHashes[0]] != 0 || nonces[resB.TxHashes[0]] != 1 || nonces[o.res.TxHashes[1]] != 2 {
		t.Fatalf("nonces approve %d, b %d, call %d; want 0, 1, 2", nonces[o.res.TxHashes[0]], nonces[resB.TxHashes[0]], nonces[o.res.TxHashes[1]])
	}
	if u, _ := f.l.Usage("b|agent", 0, time.Now()); u.Int64() != 35 {
		t.Fatalf("usage %s, want 35", u)
	}
}

// lookupChain is fakeChain where the first broadcast is refused and that transaction's later
// rebroadcasts answer "nonce too low" with no receipt (its nonce went elsewhere); lookingUp
// reports each receipt lookup of it.
type lookupChain struct {
	*fakeChain
	refused   common.Hash
	lookingUp chan struct{}
}

func (c *lookupChain) Broadcast(ctx context.Context, w common.Address, tx *types.Transaction) error {
	c.mu.Lock()
	first := c.refused == (common.Hash{})
	if first {
		c.refused = tx.Hash()
		c.nonce++ // another client of the wallet takes that nonce
	}
	low := tx.Hash() == c.refused
	c.mu.Unlock()
	switch {
	case first:
		return &coreclient.ChainError{Op: "SendTransaction", Err: errors.New("connection refused")}
	case low:
		return &coreclient.ChainError{Op: "SendTransaction", Err: errors.New("nonce too low: next nonce 1, tx nonce 0")}
	}
	return c.fakeChain.Broadcast(ctx, w, tx)
}

func (c *lookupChain) Wait(ctx context.Context, w common.Address, h common.Hash) (*types.Receipt, error) {
	c.mu.Lock()
	low := h == c.refused
	c.mu.Unlock()
	if !low {
		return c.fakeChain.Wait(ctx, w, h)
	}
	c.lookingUp <- struct{}{}
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestCollateralNonceTooLowLookupUnlocked: the receipt lookup after a rebroadcast answered
// "nonce too low" (up to 3 s) does not hold the wallet, and its pending mark does not refuse
// the wallet's other requests meanwhile (that nonce is used on chain, below the next one): a
// second request is sent during the lookup; the first then returns dropped, and its mark is
// gone.
func TestCollateralNonceTooLowLookupUnlocked(t *testing.T) {
	f := newFixture(t, intentMode)
	ch := &lookupChain{fakeChain: &fakeChain{}, lookingUp: make(chan struct{}, 4)}
	ctx := context.Background()
	eth := common.Address{}
	_, err := f.p.Collateral(ctx, f.adm, depositReq("l-1", eth, 10), ch)
	if e := pipeline.AsError(err); e.Code != pipeline.CodeBroadcastFailed {
		t.Fatalf("l-1: %+v", e)
	}
	// The mark holds the wallet while nobody looks the transaction up.
	_, err = f.p.Collateral(ctx, f.adm, depositReq("l-2", eth, 10), ch)
	if e := pipeline.AsError(err); e.Code != pipeline.CodePendingBroadcast {
		t.Fatalf("l-2 before the retry of l-1: %+v", e)
	}
	done := make(chan collateralOutcome, 1)
	go func() {
		res, err := f.p.Collateral(ctx, f.adm, depositReq("l-1", eth, 10), ch)
		done <- collateralOutcome{res, err}
	}()
	<-ch.lookingUp
	res, err := f.p.Collateral(ctx, f.adm, depositReq("l-3", eth, 10), ch)
	if err != nil || res.Status != "sent" {
		t.Fatalf("l-3 during the lookup: %+v %v", res, err)
	}
	select {
	case o := <-done:
		t.Fatalf("l-1 returned before the lookup ended: %+v %v", o.res, o.err)
	default:
	}
	o := <-done
	if o.err != nil || o.res.Status != "dropped" {
		t.Fatalf("l-1: %+v %v", o.res, o.err)
	}
	if res, err := f.p.Collateral(ctx, f.adm, depositReq("l-4", eth, 10), ch); err != nil || res.Status != "sent" {
		t.Fatalf("l-4 after the drop: %+v %v", res, err)
	}
}

// TestCollateralApproveCallsDoNotInterleave: ERC-20 approve sets the allowance, so a second
// approve + call request of the wallet does not build its approve while the first waits for its
// approve to be mined (it would change the allowance the first call spends); a one-transaction
// request goes on meanwhile. Order: approve A 0, ETH deposit 1, call A 2, approve B 3, call B 4.
func TestCollateralApproveCallsDoNotInterleave(t *testing.T) {
	f := newFixture(t, intentMode)
	ch := newGatedChain()
	ctx := context.Background()
	token := common.HexToAddress("0x036CbD53842c5426634e7929541eC2318f3dCF7e")
	run := func(r *pipeline.CollateralRequest) chan collateralOutcome {
		done := make(chan collateralOutcome, 1)
		r.WaitTimeout = time.Minute
		go func() {
			res, err := f.p.Collateral(ctx, f.adm, r, ch)
			done <- collateralOutcome{res, err}
		}()
		return done
	}
	doneA := run(depositReq("x-a", token, 30))
	select {
	case <-ch.waiting:
	case o := <-doneA:
		t.Fatalf("a returned before waiting: %+v %v", o.res, o.err)
	}
	doneB := run(depositReq("x-b", token, 20))
	c := <-run(depositReq("x-c", common.Address{}, 5))
	if c.err != nil || c.res.Status != "sent" {
		t.Fatalf("eth deposit while a waits: %+v %v", c.res, c.err)
	}
	time.Sleep(200 * time.Millisecond) // b had the time to build its approve, if it could
	if n := ch.distinct(); n != 2 {
		t.Fatalf("%d transactions sent while a waits for its approve, want 2 (a's approve, the eth deposit)", n)
	}
	close(ch.mine)
	a, b := <-doneA, <-doneB
	if a.err != nil || b.err != nil || len(a.res.TxHashes) != 2 || len(b.res.TxHashes) != 2 {
		t.Fatalf("a: %+v %v; b: %+v %v", a.res, a.err, b.res, b.err)
	}
	nonces := map[common.Hash]uint64{}
	for _, tx := range ch.sent {
		nonces[tx.Hash()] = tx.Nonce()
	}
	got := []uint64{nonces[a.res.TxHashes[0]], nonces[c.res.TxHashes[0]], nonces[a.res.TxHashes[1]], nonces[b.res.TxHashes[0]], nonces[b.res.TxHashes[1]]}
	for i, n := range got {
		if n != uint64(i) {
			t.Fatalf("nonces (approve a, eth, call a, approve b, call b) %v, want 0..4", got)
		}
	}
}
