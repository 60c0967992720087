package pipeline_test

import (
	"context"
	"errors"
	"math/big"
	"sync"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"

	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/coreclient"
	"github.com/signerd/signerd/signerd/fourmica"
	"github.com/signerd/signerd/signerd/ledger"
	"github.com/signerd/signerd/signerd/pipeline"
)

var contract = common.HexToAddress("0x1111111111111111111111111111111111111111")

// fakeChain builds transactions without an RPC and records what is broadcast.
type fakeChain struct {
	mu          sync.Mutex
	nonce       uint64
	sent        []*types.Transaction
	failPrepare map[int]error // Prepare call number (0-based) → error
	prepares    int
}

func (c *fakeChain) Calls(_ context.Context, _ common.Address, r *pipeline.CollateralRequest) ([]coreclient.Call, error) {
	amt, _ := fourmica.U256FromBig(r.Amount)
	if *r.Asset == (common.Address{}) {
		return []coreclient.Call{coreclient.DepositETH(contract, amt)}, nil
	}
	return []coreclient.Call{coreclient.ApproveERC20(*r.Asset, contract, amt), coreclient.DepositStablecoin(contract, *r.Asset, amt)}, nil
}

func (c *fakeChain) Prepare(_ context.Context, _ common.Address, call coreclient.Call) (*coreclient.Prepared, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.prepares
	c.prepares++
	if err := c.failPrepare[n]; err != nil {
		return nil, err
	}
	id := big.NewInt(84532)
	tx := types.NewTx(&types.DynamicFeeTx{ChainID: id, Nonce: c.nonce, GasTipCap: big.NewInt(1), GasFeeCap: big.NewInt(2e9), Gas: 60000,
		To: &call.To, Value: call.Value, Data: call.Data})
	return &coreclient.Prepared{Call: call, Tx: tx, Hash: [32]byte(types.LatestSignerForChainID(id).Hash(tx)), ChainID: id}, nil
}

func (c *fakeChain) Broadcast(_ context.Context, _ common.Address, tx *types.Transaction) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.sent {
		if s.Hash() == tx.Hash() {
			return errors.New("already known")
		}
	}
	c.sent = append(c.sent, tx)
	c.nonce++
	return nil
}

func (c *fakeChain) Wait(context.Context, common.Address, common.Hash) (*types.Receipt, error) {
	return &types.Receipt{Status: types.ReceiptStatusSuccessful, BlockNumber: big.NewInt(1)}, nil
}

func (c *fakeChain) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.sent)
}

func depositReq(id string, asset common.Address, amount int64) *pipeline.CollateralRequest {
	return &pipeline.CollateralRequest{Action: policyengine.ActionDeposit, Asset: &asset, Amount: big.NewInt(amount), RequestID: id, WaitTimeout: time.Second}
}

// TestCollateralResumesReservedRecord: the commit fails after the signature (the record stays
// reserved, nothing is broadcast: the state a crash between signing and commit leaves without
// a restart); the retry with the same request_id resumes that record (ledger Resumable), signs
// the stored digest, commits and broadcasts, charging the budget once.
func TestCollateralResumesReservedRecord(t *testing.T) {
	f := newFixture(t, intentMode)
	ch := &fakeChain{}
	ctx := context.Background()
	f.l.commitErr = errors.New("disk full")
	_, err := f.p.Collateral(ctx, f.adm, depositReq("r-1", common.Address{}, 40), ch)
	e := pipeline.AsError(err)
	if e.Code != pipeline.CodeStoreUnavailable || e.RecordID == 0 || ch.distinct() != 0 {
		t.Fatalf("commit failure: %+v, %d sent", e, ch.distinct())
	}
	rec, _ := f.l.Record(ledger.RecordID(e.RecordID))
	if rec == nil || rec.Status != ledger.StatusReserved || rec.Scheme != pipeline.SchemeTx {
		t.Fatalf("record after a failed commit: %+v", rec)
	}
	f.l.commitErr = nil
	res, err := f.p.Collateral(ctx, f.adm, depositReq("r-1", common.Address{}, 40), ch)
	if err != nil || len(res.TxHashes) != 1 || !res.Replayed || res.RecordIDs[0] != ledger.RecordID(e.RecordID) || ch.distinct() != 1 {
		t.Fatalf("resume: %+v %v", res, err)
	}
	from, err := types.Sender(types.LatestSignerForChainID(big.NewInt(84532)), ch.sent[0])
	if err != nil || from != f.signer.Address() || ch.sent[0].Hash() != res.TxHashes[0] || ch.sent[0].Value().Int64() != 40 {
		t.Fatalf("broadcast tx from %s (%v)", from, err)
	}
	if u, _ := f.l.Usage("b|agent", 0, time.Now()); u.Int64() != 40 {
		t.Fatalf("usage %s, want 40 (charged once)", u)
	}
	// And once more: the signed transaction, broadcast again, same hash.
	res2, err := f.p.Collateral(ctx, f.adm, depositReq("r-1", common.Address{}, 40), ch)
	if err != nil || res2.TxHashes[0] != res.TxHashes[0] || ch.distinct() != 1 {
		t.Fatalf("second retry: %+v %v", res2, err)
	}
}

// TestCollateralKillSwitchBeforeSigning: the switch engaged after the caller was admitted:
// the reservation is released, nothing is signed or sent, and the request_id cannot be reused.
func TestCollateralKillSwitchBeforeSigning(t *testing.T) {
	f := newFixture(t, intentMode)
	ch := &fakeChain{}
	ctx := context.Background()
	if err := f.ks.Engage(ctx, "op", "test"); err != nil {
		t.Fatal(err)
	}
	_, err := f.p.Collateral(ctx, f.adm, depositReq("k-1", common.Address{}, 10), ch)
	if e := pipeline.AsError(err); e.Code != pipeline.CodeKillSwitch || e.Kind != pipeline.Denied || ch.distinct() != 0 {
		t.Fatalf("kill switch: %+v", e)
	}
	if u, _ := f.l.Usage("b|agent", 0, time.Now()); u.Sign() != 0 {
		t.Fatalf("charge not refunded: %s", u)
	}
	if _, err := f.ks.Resume(ctx, "op"); err != nil {
		t.Fatal(err)
	}
	_, err = f.p.Collateral(ctx, f.adm, depositReq("k-1", common.Address{}, 10), ch)
	if e := pipeline.AsError(err); e.Code != pipeline.CodeReplayConflict || e.Status != 409 {
		t.Fatalf("released request_id reused: %+v", e)
	}
}

// TestCollateralTwoTransactionsResume: the second transaction of an approve + call request
// cannot be built; the retry rebroadcasts the first (same hash) and builds the second; the
// budget is charged with the first only.
func TestCollateralTwoTransactionsResume(t *testing.T) {
	f := newFixture(t, intentMode)
	ch := &fakeChain{failPrepare: map[int]error{1: &coreclient.ChainError{Op: "EstimateGas", Err: errors.New("connection reset")}}}
	ctx := context.Background()
	token := common.HexToAddress("0x036CbD53842c5426634e7929541eC2318f3dCF7e")
	res, err := f.p.Collateral(ctx, f.adm, depositReq("t-1", token, 30), ch)
	if e := pipeline.AsError(err); e.Code != pipeline.CodeChainError || res == nil || len(res.TxHashes) != 1 || ch.distinct() != 1 {
		t.Fatalf("second prepare fails: %+v %+v", e, res)
	}
	first := res.TxHashes[0]
	res, err = f.p.Collateral(ctx, f.adm, depositReq("t-1", token, 30), ch)
	if err != nil || len(res.TxHashes) != 2 || res.TxHashes[0] != first || ch.distinct() != 2 || !res.Replayed {
		t.Fatalf("resume: %+v %v", res, err)
	}
	if u, _ := f.l.Usage("b|agent", 0, time.Now()); u.Int64() != 30 {
		t.Fatalf("usage %s, want 30", u)
	}
}

func TestCollateralValidation(t *testing.T) {
	f := newFixture(t, intentMode)
	ch := &fakeChain{}
	eth := common.Address{}
	for _, tc := range []struct {
		name  string
		req   pipeline.CollateralRequest
		field string
	}{
		{"guarantee", pipeline.CollateralRequest{Action: policyengine.ActionGuarantee, RequestID: "x"}, "action"},
		{"no request id", pipeline.CollateralRequest{Action: policyengine.ActionDeposit, Asset: &eth, Amount: big.NewInt(1)}, "request_id"},
		{"space in request id", pipeline.CollateralRequest{Action: policyengine.ActionDeposit, Asset: &eth, Amount: big.NewInt(1), RequestID: "a b"}, "request_id"},
		{"zero amount", pipeline.CollateralRequest{Action: policyengine.ActionDeposit, Asset: &eth, Amount: big.NewInt(0), RequestID: "x"}, "amount"},
		{"no asset", pipeline.CollateralRequest{Action: policyengine.ActionWithdraw, Amount: big.NewInt(1), RequestID: "x"}, "asset"},
		{"amount on finalize", pipeline.CollateralRequest{Action: policyengine.ActionFinalizeWithdrawal, Asset: &eth, Amount: big.NewInt(1), RequestID: "x"}, "amount"},
		{"tab on deposit", pipeline.CollateralRequest{Action: policyengine.ActionDeposit, Asset: &eth, Amount: big.NewInt(1), TabID: big.NewInt(1), RequestID: "x"}, "tab_id"},
		{"pay_tab without tab", pipeline.CollateralRequest{Action: policyengine.ActionPayTab, Amount: big.NewInt(1), RequestID: "x"}, "tab_id"},
		{"pay_tab without req", pipeline.CollateralRequest{Action: policyengine.ActionPayTab, Amount: big.NewInt(1), TabID: big.NewInt(1), RequestID: "x"}, "req_id"},
	} {
		_, err := f.p.Collateral(context.Background(), f.adm, &tc.req, ch)
		if e := pipeline.AsError(err); e.Kind != pipeline.Invalid || e.Field != tc.field || e.Status != 400 {
			t.Errorf("%s: %+v, want invalid %s", tc.name, e, tc.field)
		}
	}
	if ch.distinct() != 0 || ch.prepares != 0 {
		t.Fatal("an invalid request reached the chain")
	}
}
