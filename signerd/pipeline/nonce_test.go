package pipeline_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"

	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/signerd/coreclient"
	"github.com/signerd/signerd/signerd/ledger"
	"github.com/signerd/signerd/signerd/pipeline"
)

// nodeChain is fakeChain with a node's broadcast answers: refused (connection refused) a
// number of times, or "nonce too low" with a receipt that is there, absent, or unreadable.
type nodeChain struct {
	*fakeChain
	refuse    int    // refuse this many broadcasts
	tooLow    bool   // answer "nonce too low" to every broadcast
	receipt   string // for Wait: "mined", "absent" (until ctx ends), "error"
	waitCalls int
}

func (c *nodeChain) Broadcast(ctx context.Context, w common.Address, tx *types.Transaction) error {
	if c.refuse > 0 {
		c.refuse--
		return &coreclient.ChainError{Op: "SendTransaction", Err: errors.New("connection refused")}
	}
	if c.tooLow {
		return &coreclient.ChainError{Op: "SendTransaction", Err: errors.New("nonce too low: next nonce 5, tx nonce 0")}
	}
	return c.fakeChain.Broadcast(ctx, w, tx)
}

func (c *nodeChain) Wait(ctx context.Context, w common.Address, h common.Hash) (*types.Receipt, error) {
	c.waitCalls++
	switch c.receipt {
	case "absent":
		<-ctx.Done()
		return nil, ctx.Err()
	case "error":
		return nil, &coreclient.ChainError{Op: "TransactionReceipt", Err: errors.New("connection reset")}
	}
	return c.fakeChain.Wait(ctx, w, h)
}

// auditCodes returns the codes of the audit records of kind "broadcast", in order.
func auditCodes(t *testing.T, f *fixture) []string {
	t.Helper()
	var buf bytes.Buffer
	if err := f.l.ExportAudit(&buf, 0); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var r struct {
			Kind string `json:"kind"`
			Code string `json:"code"`
		}
		if json.Unmarshal([]byte(line), &r) == nil && r.Kind == "broadcast" {
			out = append(out, r.Code)
		}
	}
	if rep, err := f.l.VerifyAudit(); err != nil || !rep.OK {
		t.Fatalf("audit verify: %+v %v", rep, err)
	}
	return out
}

// TestCollateralPendingBroadcastHoldsNonce: a signed transaction the RPC refused holds its
// nonce: the wallet's next request is refused (409 pending_broadcast naming the request_id to
// retry) before anything is built, reserved or charged; after the retry broadcasts it, the
// next request takes the next nonce.
func TestCollateralPendingBroadcastHoldsNonce(t *testing.T) {
	f := newFixture(t, intentMode)
	ch := &nodeChain{fakeChain: &fakeChain{}, refuse: 1}
	ctx := context.Background()
	eth := common.Address{}
	_, err := f.p.Collateral(ctx, f.adm, depositReq("a-1", eth, 10), ch)
	ea := pipeline.AsError(err)
	if ea.Code != pipeline.CodeBroadcastFailed || ea.RecordID == 0 {
		t.Fatalf("refused broadcast: %+v", ea)
	}
	for _, id := range []string{"b-1", "b-2"} {
		_, err = f.p.Collateral(ctx, f.adm, depositReq(id, eth, 20), ch)
		e := pipeline.AsError(err)
		if e.Code != pipeline.CodePendingBroadcast || e.Status != 409 || e.Kind != pipeline.Conflict || e.RecordID != ea.RecordID ||
			!strings.Contains(e.Reason, "request_id a-1") {
			t.Fatalf("%s while a-1 is not broadcast: %+v", id, e)
		}
		if recs, _ := f.l.ByTab(f.signer.Address(), pipeline.CollateralTabID(id)); len(recs) != 0 {
			t.Fatalf("%s reserved %d records", id, len(recs))
		}
	}
	if ch.prepares != 1 {
		t.Fatalf("%d transactions built, want 1", ch.prepares)
	}
	if u, _ := f.l.Usage("b|agent", 0, time.Now()); u.Int64() != 10 {
		t.Fatalf("usage %s, want 10", u)
	}
	resA, err := f.p.Collateral(ctx, f.adm, depositReq("a-1", eth, 10), ch)
	if err != nil || !resA.Replayed || resA.Status != "sent" || ch.distinct() != 1 {
		t.Fatalf("retry of a-1: %+v %v", resA, err)
	}
	resB, err := f.p.Collateral(ctx, f.adm, depositReq("b-1", eth, 20), ch)
	if err != nil || ch.distinct() != 2 || ch.sent[1].Nonce() != 1 || ch.sent[0].Nonce() != 0 || resB.TxHashes[0] != ch.sent[1].Hash() {
		t.Fatalf("b-1 after the retry: %+v %v", resB, err)
	}
	want := []string{pipeline.BroadcastPending, pipeline.BroadcastFailed, pipeline.BroadcastSent, pipeline.BroadcastPending, pipeline.BroadcastSent}
	if got := auditCodes(t, f); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("broadcast audit %v, want %v", got, want)
	}
}

// TestCollateralNonceTooLow: a rebroadcast answered "nonce too low" is never reported as sent:
// with a receipt it is mined; without one it is dropped (the request's status says so, its
// mark is cleared so the wallet can go on); an unreadable receipt is a 502 chain_error that
// keeps the wallet's next request waiting.
func TestCollateralNonceTooLow(t *testing.T) {
	f := newFixture(t, intentMode)
	ch := &nodeChain{fakeChain: &fakeChain{}}
	ctx := context.Background()
	eth := common.Address{}
	first, err := f.p.Collateral(ctx, f.adm, depositReq("m-1", eth, 10), ch)
	if err != nil || first.Status != "sent" {
		t.Fatalf("m-1: %+v %v", first, err)
	}
	// Mined: the retry's rebroadcast gets "nonce too low"; the receipt is there.
	ch.tooLow, ch.receipt = true, "mined"
	res, err := f.p.Collateral(ctx, f.adm, depositReq("m-1", eth, 10), ch)
	if err != nil || res.Status != "mined" || res.TxHashes[0] != first.TxHashes[0] || ch.waitCalls != 1 {
		t.Fatalf("rebroadcast of a mined tx: %+v %v", res, err)
	}

	// Signed, refused, then its nonce goes elsewhere (another client of the wallet).
	ch.tooLow, ch.refuse = false, 1
	_, err = f.p.Collateral(ctx, f.adm, depositReq("d-1", eth, 10), ch)
	if e := pipeline.AsError(err); e.Code != pipeline.CodeBroadcastFailed {
		t.Fatalf("d-1: %+v", e)
	}
	ch.tooLow = true
	// The receipt cannot be read: not sent, not dropped; the wallet still waits.
	ch.receipt = "error"
	_, err = f.p.Collateral(ctx, f.adm, depositReq("d-1", eth, 10), ch)
	if e := pipeline.AsError(err); e.Code != pipeline.CodeChainError || e.Status != 502 || e.RecordID == 0 {
		t.Fatalf("unreadable receipt: %+v", e)
	}
	_, err = f.p.Collateral(ctx, f.adm, depositReq("n-1", eth, 10), ch)
	if e := pipeline.AsError(err); e.Code != pipeline.CodePendingBroadcast || !strings.Contains(e.Reason, "d-1") {
		t.Fatalf("n-1 while d-1 is unresolved: %+v", e)
	}
	// No receipt: dropped, with a reason; never "sent".
	ch.receipt = "absent"
	t0 := time.Now()
	res, err = f.p.Collateral(ctx, f.adm, depositReq("d-1", eth, 10), ch)
	if err != nil || res.Status != "dropped" || !strings.Contains(res.Note, "never be mined") || len(res.TxHashes) != 1 {
		t.Fatalf("dropped: %+v %v", res, err)
	}
	t.Logf("dropped verdict after %v", time.Since(t0).Round(time.Millisecond))
	// The wallet goes on.
	ch.tooLow, ch.receipt = false, ""
	if res, err := f.p.Collateral(ctx, f.adm, depositReq("n-1", eth, 10), ch); err != nil || res.Status != "sent" {
		t.Fatalf("n-1 after the drop: %+v %v", res, err)
	}
	got := strings.Join(auditCodes(t, f), ",")
	for _, c := range []string{pipeline.BroadcastMined, pipeline.BroadcastDropped} {
		if !strings.Contains(got, c) {
			t.Fatalf("audit %s lacks %s", got, c)
		}
	}
}

// TestCollateralReleasedMarkCleared: a signing failure after the pending mark releases the
// reservation; the wallet's next request clears the mark (audited) instead of waiting for it.
func TestCollateralReleasedMarkCleared(t *testing.T) {
	f := newFixture(t, intentMode)
	ch := &nodeChain{fakeChain: &fakeChain{}}
	ctx := context.Background()
	eth := common.Address{}
	f.signer.fail = hsm.ErrUnavailable
	_, err := f.p.Collateral(ctx, f.adm, depositReq("s-1", eth, 10), ch)
	e := pipeline.AsError(err)
	if e.Code != pipeline.CodeBackendUnavailable || e.RecordID == 0 {
		t.Fatalf("signing failure: %+v", e)
	}
	if rec, _ := f.l.Record(ledger.RecordID(e.RecordID)); rec == nil || rec.Status != ledger.StatusReleased {
		t.Fatalf("record %+v", rec)
	}
	f.signer.fail = nil
	res, err := f.p.Collateral(ctx, f.adm, depositReq("s-2", eth, 10), ch)
	if err != nil || res.Status != "sent" || ch.sent[0].Nonce() != 0 || ch.sent[0].Value().Cmp(big.NewInt(10)) != 0 {
		t.Fatalf("s-2: %+v %v", res, err)
	}
	want := []string{pipeline.BroadcastPending, pipeline.BroadcastCleared, pipeline.BroadcastPending, pipeline.BroadcastSent}
	if got := auditCodes(t, f); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("broadcast audit %v, want %v", got, want)
	}
}
