package pipeline_test

import (
	"bytes"
	"context"
	"errors"
	"math/big"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"
	"github.com/ethereum/go-ethereum/crypto"

	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/coreclient"
	"github.com/signerd/signerd/signerd/fourmica"
	"github.com/signerd/signerd/signerd/killswitch"
	"github.com/signerd/signerd/signerd/ledger"
	"github.com/signerd/signerd/signerd/pipeline"
)

// Adversarial review of the collateral path with the real policy engine, a real ledger and kill
// switch, two agents with one wallet each, and a chain/Core stand-in that follows §5.5. Tests
// that fail today are skipped with "finding N" and listed in the review report with the fix.

var (
	rvUSDC       = common.HexToAddress("0x036CbD53842c5426634e7929541eC2318f3dCF7e")
	rvRecipient  = common.HexToAddress("0x00000000000000000000000000000000000000aa")
	rvAttacker   = common.HexToAddress("0x00000000000000000000000000000000000000ee")
	rvCoreTabIDs = big.NewInt(0x2b)
)

// multiKeys serves several in-memory wallets.
type multiKeys map[common.Address]*keySigner

func (k multiKeys) Signer(_ context.Context, w common.Address) (hsm.Signer, error) {
	if s := k[w]; s != nil {
		return s, nil
	}
	return nil, hsm.ErrUnknownKey
}

// countSigner counts signatures per wallet.
type countSigner struct {
	*keySigner
	mu *sync.Mutex
	n  *int
}

func (s countSigner) SignDigest(ctx context.Context, d [32]byte) ([65]byte, error) {
	s.mu.Lock()
	*s.n++
	s.mu.Unlock()
	return s.keySigner.SignDigest(ctx, d)
}

// reviewChain is a CollateralChain following §5.5: deposits as coreclient builds them and
// pay_tab from a tab whose recipient and asset "Core" answers (recipient can change between
// calls, as a compromised Core could make it).
type reviewChain struct {
	fakeChain
	mu         sync.Mutex
	calls      map[common.Address]int // Calls per wallet (for pay_tab: a Core read = a SIWE login)
	recipients []common.Address       // recipient answered by the n-th tab read (last one repeats)
	tabReads   int
}

func (c *reviewChain) Calls(ctx context.Context, w common.Address, r *pipeline.CollateralRequest) ([]coreclient.Call, error) {
	c.mu.Lock()
	if c.calls == nil {
		c.calls = map[common.Address]int{}
	}
	c.calls[w]++
	c.mu.Unlock()
	if r.Action != policyengine.ActionPayTab {
		return c.fakeChain.Calls(ctx, w, r)
	}
	c.mu.Lock()
	rc := c.recipients[min(c.tabReads, len(c.recipients)-1)]
	c.tabReads++
	c.mu.Unlock()
	amt, _ := fourmica.U256FromBig(r.Amount)
	tab, _ := fourmica.U256FromBig(r.TabID)
	return []coreclient.Call{coreclient.ApproveERC20(rvUSDC, contract, amt), coreclient.PayTabERC20(contract, tab, rvUSDC, amt, rc)}, nil
}

func (c *reviewChain) callsFor(w common.Address) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[w]
}

const rvPolicyTmpl = `version: 1
assets:
  USDC: {address: "0x036CbD53842c5426634e7929541eC2318f3dCF7e", decimals: 6}
  ETH:  {address: "0x0000000000000000000000000000000000000000", decimals: 18}
agents:
  a: {callers: [{uid: 1000}], wallets: ["WALLET_A"]}
  b: {callers: [{uid: 1001}], wallets: ["WALLET_B"]}
rules:
  - {id: deposits, effect: allow, actions: [deposit], agents: [a, b], networks: [eip155:84532], assets: [USDC, ETH], max_amount: ["100 USDC", "1 ETH"]}
  - id: tabs
    effect: allow
    actions: [pay_tab]
    agents: [a]
    sellers: ["0x00000000000000000000000000000000000000aa"]
    networks: [eip155:84532]
    assets: [USDC]
    max_amount: "20 USDC"
budgets:
  - {id: dep-daily, actions: [deposit], per: [agent], window: day, limit: "150 USDC"}
`

type rvFixture struct {
	p        *pipeline.Pipeline
	l        *hookLedger
	ks       *killswitch.Switch
	wa, wb   common.Address
	admA     *pipeline.Admission
	admB     *pipeline.Admission
	sigMu    sync.Mutex
	sigs     int
	pol      *policyengine.Policy
	polDenyA *policyengine.Policy // the same policy with agent a's deposit rule removed
}

func newRVFixture(t *testing.T) *rvFixture {
	t.Helper()
	l, err := ledger.Open(ledger.Options{Path: filepath.Join(t.TempDir(), "l.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ks, err := killswitch.New(killswitch.Options{Store: l})
	if err != nil {
		t.Fatal(err)
	}
	f := &rvFixture{l: &hookLedger{Ledger: l}, ks: ks}
	ka, _ := crypto.GenerateKey()
	kb, _ := crypto.GenerateKey()
	sa, sb := &keySigner{key: ka}, &keySigner{key: kb}
	f.wa, f.wb = sa.Address(), sb.Address()
	src := bytes.ReplaceAll([]byte(rvPolicyTmpl), []byte("WALLET_A"), []byte(f.wa.Hex()))
	src = bytes.ReplaceAll(src, []byte("WALLET_B"), []byte(f.wb.Hex()))
	if f.pol, err = policyengine.Compile(map[string][]byte{"p.yaml": src}, policyengine.CompileOptions{}); err != nil {
		t.Fatal(err)
	}
	denyA := bytes.Replace(src, []byte("agents: [a, b], networks"), []byte("agents: [b], networks"), 1)
	if f.polDenyA, err = policyengine.Compile(map[string][]byte{"p.yaml": denyA}, policyengine.CompileOptions{}); err != nil {
		t.Fatal(err)
	}
	keys := multiKeys{f.wa: sa, f.wb: sb}
	dom, _ := fourmica.NewDomain("4mica", "1", 84532)
	f.p, err = pipeline.New(pipeline.Options{Domain: dom, Network: "eip155:84532", Ledger: f.l, KillSwitch: ks,
		Keys: countingKeys{keys, f}}, f.pol)
	if err != nil {
		t.Fatal(err)
	}
	if f.admA, err = f.p.Admit(policyengine.Caller{UID: 1000}); err != nil {
		t.Fatal(err)
	}
	if f.admB, err = f.p.Admit(policyengine.Caller{UID: 1001}); err != nil {
		t.Fatal(err)
	}
	return f
}

// countingKeys counts every signature made with any wallet.
type countingKeys struct {
	k multiKeys
	f *rvFixture
}

func (c countingKeys) Signer(ctx context.Context, w common.Address) (hsm.Signer, error) {
	s, err := c.k.Signer(ctx, w)
	if err != nil {
		return nil, err
	}
	return countSigner{keySigner: s.(*keySigner), mu: &c.f.sigMu, n: &c.f.sigs}, nil
}

func (f *rvFixture) signatures() int {
	f.sigMu.Lock()
	defer f.sigMu.Unlock()
	return f.sigs
}

func rvDeposit(id string, w *common.Address, amount int64) *pipeline.CollateralRequest {
	r := depositReq(id, rvUSDC, amount)
	r.Wallet = w
	return r
}

func rvPayTab(id string, amount int64) *pipeline.CollateralRequest {
	return &pipeline.CollateralRequest{Action: policyengine.ActionPayTab, Amount: big.NewInt(amount), TabID: new(big.Int).Set(rvCoreTabIDs),
		ReqID: big.NewInt(3), RequestID: id, WaitTimeout: time.Second}
}

// payTabRecipient decodes the recipient (4th word) of a payTabInERC20Token calldata.
func payTabRecipient(t *testing.T, data []byte) common.Address {
	t.Helper()
	if len(data) != 4+4*32 {
		t.Fatalf("payTabInERC20Token calldata of %d bytes", len(data))
	}
	return common.BytesToAddress(data[4+3*32:])
}

// Regression: the policy decides pay_tab on the recipient Core names for the tab: an unlisted
// recipient is denied before anything is reserved or signed; a listed one is allowed and the
// payTabInERC20Token calldata carries exactly that recipient and the evaluated amount.
func TestReviewPayTabRecipientFromCore(t *testing.T) {
	f := newRVFixture(t)
	ctx := context.Background()
	ch := &reviewChain{recipients: []common.Address{rvAttacker}}
	_, err := f.p.Collateral(ctx, f.admA, rvPayTab("pt-1", 5_000_000), ch)
	if e := pipeline.AsError(err); e.Kind != pipeline.Denied || e.Code != policyengine.CodeSellerNotAllowed || e.RecordID != 0 {
		t.Fatalf("pay_tab to an unlisted recipient: %+v", e)
	}
	if f.signatures() != 0 || ch.distinct() != 0 || ch.prepares != 0 {
		t.Fatalf("denied pay_tab: %d signatures, %d sent, %d prepared", f.signatures(), ch.distinct(), ch.prepares)
	}
	ch2 := &reviewChain{recipients: []common.Address{rvRecipient}}
	res, err := f.p.Collateral(ctx, f.admA, rvPayTab("pt-2", 5_000_000), ch2)
	if err != nil || len(res.TxHashes) != 2 || res.PayTo != rvRecipient || res.Asset != rvUSDC {
		t.Fatalf("pay_tab to the listed recipient: %+v %v", res, err)
	}
	last := ch2.sent[1]
	if got := payTabRecipient(t, last.Data()); got != rvRecipient {
		t.Fatalf("payTabInERC20Token recipient %s", got.Hex())
	}
	if amt := new(big.Int).SetBytes(last.Data()[4+2*32 : 4+3*32]); amt.Int64() != 5_000_000 || last.Value().Sign() != 0 {
		t.Fatalf("payTabInERC20Token amount %s value %s", amt, last.Value())
	}
	// Over the rule's max: denied before Core's calls are prepared.
	_, err = f.p.Collateral(ctx, f.admA, rvPayTab("pt-3", 20_000_001), ch2)
	if e := pipeline.AsError(err); e.Code != policyengine.CodeAmountOverLimit {
		t.Fatalf("pay_tab over max_amount: %+v", e)
	}
	// An agent without a pay_tab rule: action_not_allowed.
	_, err = f.p.Collateral(ctx, f.admB, rvPayTab("pt-4", 1), ch2)
	if e := pipeline.AsError(err); e.Code != policyengine.CodeActionNotAllowed {
		t.Fatalf("pay_tab by an agent without a pay_tab rule: %+v", e)
	}
	// The agent names an asset other than the tab's: invalid, nothing signed.
	eth := common.Address{}
	r := rvPayTab("pt-5", 1)
	r.Asset = &eth
	before := f.signatures()
	_, err = f.p.Collateral(ctx, f.admA, r, ch2)
	if e := pipeline.AsError(err); e.Kind != pipeline.Invalid || e.Field != "asset" || f.signatures() != before {
		t.Fatalf("pay_tab with another asset than the tab's: %+v", e)
	}
}

// Regression: request_id collisions. The same request_id with another action, amount or asset
// is 409 and signs nothing; the same request_id on two wallets (two agents) are two requests.
func TestReviewRequestIDCollisions(t *testing.T) {
	f := newRVFixture(t)
	ctx := context.Background()
	ch := &reviewChain{}
	if _, err := f.p.Collateral(ctx, f.admA, rvDeposit("same", nil, 10), ch); err != nil {
		t.Fatal(err)
	}
	sigs := f.signatures()
	for name, req := range map[string]*pipeline.CollateralRequest{
		"other amount": rvDeposit("same", nil, 11),
		"other asset":  depositReq("same", common.Address{}, 10),
		"other action": {Action: policyengine.ActionWithdraw, Asset: &rvUSDC, Amount: big.NewInt(10), RequestID: "same", WaitTimeout: time.Second},
	} {
		_, err := f.p.Collateral(ctx, f.admA, req, ch)
		if e := pipeline.AsError(err); e.Code != pipeline.CodeReplayConflict || e.Status != 409 {
			t.Errorf("%s: %+v, want 409 replay_conflict", name, e)
		}
	}
	if f.signatures() != sigs {
		t.Fatalf("a conflicting request_id was signed")
	}
	// The same request_id by another agent on its own wallet is its own request.
	res, err := f.p.Collateral(ctx, f.admB, rvDeposit("same", nil, 10), ch)
	if err != nil || res.Replayed || res.Wallet != f.wb || len(res.TxHashes) != 2 {
		t.Fatalf("same request_id on another wallet: %+v %v", res, err)
	}
	// Collateral record keys never collide with one another across request ids.
	if pipeline.CollateralTabID("a").Cmp(pipeline.CollateralTabID("b")) == 0 || pipeline.CollateralTabID("x").Sign() <= 0 {
		t.Fatal("CollateralTabID collides")
	}
}

// Regression: the kill switch engaged between a broadcast failure and the retry: the retry
// (same request_id, stored signature) broadcasts nothing; after resume it broadcasts the same
// signed transaction.
func TestReviewKillSwitchStopsRebroadcast(t *testing.T) {
	f := newRVFixture(t)
	ctx := context.Background()
	ch := &failingBroadcast{reviewChain: reviewChain{}, fail: 1}
	_, err := f.p.Collateral(ctx, f.admA, depositReq("kb-1", common.Address{}, 10), ch)
	e := pipeline.AsError(err)
	if e.Code != pipeline.CodeBroadcastFailed || e.RecordID == 0 {
		t.Fatalf("broadcast failure: %+v", e)
	}
	rec, _ := f.l.Record(ledger.RecordID(e.RecordID))
	if rec == nil || len(rec.Signature) != 65 {
		t.Fatalf("the transaction answered as signed is not recorded with its signature: %+v", rec)
	}
	if err := f.ks.Engage(ctx, "op", "review"); err != nil {
		t.Fatal(err)
	}
	_, err = f.p.Collateral(ctx, f.admA, depositReq("kb-1", common.Address{}, 10), ch)
	if e := pipeline.AsError(err); e.Code != pipeline.CodeKillSwitch || ch.distinct() != 0 {
		t.Fatalf("retry under the kill switch: %+v, %d sent", e, ch.distinct())
	}
	if _, err := f.ks.Resume(ctx, "op"); err != nil {
		t.Fatal(err)
	}
	res, err := f.p.Collateral(ctx, f.admA, depositReq("kb-1", common.Address{}, 10), ch)
	if err != nil || ch.distinct() != 1 || res.TxHashes[0] != ch.sent[0].Hash() || f.signatures() != 1 {
		t.Fatalf("retry after resume: %+v %v (%d signatures)", res, err, f.signatures())
	}
}

type failingBroadcast struct {
	reviewChain
	mu   sync.Mutex
	fail int
}

func (c *failingBroadcast) Broadcast(ctx context.Context, w common.Address, tx *types.Transaction) error {
	c.mu.Lock()
	if c.fail > 0 {
		c.fail--
		c.mu.Unlock()
		return &coreclient.ChainError{Op: "SendTransaction", Err: errors.New("connection refused")}
	}
	c.mu.Unlock()
	return c.reviewChain.Broadcast(ctx, w, tx)
}

// Finding 1: an agent names a wallet it may not use. The request must be denied
// wallet_not_allowed before Core or the chain is asked anything: for pay_tab, Calls reads the
// tab from Core, which logs in with a SIWE message signed by that wallet's HSM key.
func TestReviewForeignWalletDeniedBeforeCore(t *testing.T) {

	f := newRVFixture(t)
	ctx := context.Background()
	ch := &reviewChain{recipients: []common.Address{rvRecipient}}
	for name, req := range map[string]*pipeline.CollateralRequest{
		"deposit": rvDeposit("fw-1", &f.wa, 10),
		"pay_tab": func() *pipeline.CollateralRequest { r := rvPayTab("fw-2", 1); r.Wallet = &f.wa; return r }(),
	} {
		_, err := f.p.Collateral(ctx, f.admB, req, ch)
		if e := pipeline.AsError(err); e.Code != policyengine.CodeWalletNotAllowed {
			t.Errorf("%s on a foreign wallet: %+v", name, e)
		}
	}
	if n := ch.callsFor(f.wa); n != 0 {
		t.Fatalf("Core/chain asked %d times for a wallet the agent may not use", n)
	}
}

// Finding 2: a retry skips the policy, so another agent that repeats agent a's request
// (same request_id and fields, wallet a) resumes it: it gets a's transaction hashes, and a
// reservation a left unsigned (commit failure) is signed and broadcast on b's request.
func TestReviewRetryByAnotherAgent(t *testing.T) {

	f := newRVFixture(t)
	ctx := context.Background()
	ch := &reviewChain{}
	f.l.commitErr = errors.New("disk full")
	_, err := f.p.Collateral(ctx, f.admA, depositReq("ra-1", common.Address{}, 10), ch)
	if e := pipeline.AsError(err); e.Code != pipeline.CodeStoreUnavailable {
		t.Fatalf("commit failure: %+v", e)
	}
	f.l.commitErr = nil
	sigs := f.signatures()
	req := depositReq("ra-1", common.Address{}, 10)
	req.Wallet = &f.wa
	res, err := f.p.Collateral(ctx, f.admB, req, ch)
	if e := pipeline.AsError(err); err == nil || e.Code != policyengine.CodeWalletNotAllowed {
		t.Fatalf("agent b resumed agent a's reservation: %+v %v", res, err)
	}
	if f.signatures() != sigs || ch.distinct() != 0 {
		t.Fatalf("agent b's request signed %d and sent %d transactions of wallet a", f.signatures()-sigs, ch.distinct())
	}
}

// Finding 2 on a shared wallet: agent c may use wallet a too, but a request_id agent a used on
// that wallet is not c's to resume or to see: 409 replay_conflict, nothing signed or sent.
func TestReviewRetryByAnotherAgentSharedWallet(t *testing.T) {
	f := newRVFixture(t)
	ctx := context.Background()
	src := strings.Replace(rvPolicyTmpl, "rules:", "  c: {callers: [{uid: 1002}], wallets: [\""+f.wa.Hex()+"\"]}\nrules:", 1)
	src = strings.ReplaceAll(src, "WALLET_A", f.wa.Hex())
	src = strings.ReplaceAll(src, "WALLET_B", f.wb.Hex())
	src = strings.Replace(src, "agents: [a, b], networks", "agents: [a, b, c], networks", 1)
	pol, err := policyengine.Compile(map[string][]byte{"p.yaml": []byte(src)}, policyengine.CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f.p.SetPolicy(pol)
	admA, _ := f.p.Admit(policyengine.Caller{UID: 1000})
	admC, err := f.p.Admit(policyengine.Caller{UID: 1002})
	if err != nil {
		t.Fatal(err)
	}
	ch := &reviewChain{}
	f.l.commitErr = errors.New("disk full")
	if _, err := f.p.Collateral(ctx, admA, depositReq("sw-1", common.Address{}, 10), ch); pipeline.AsError(err).Code != pipeline.CodeStoreUnavailable {
		t.Fatalf("commit failure: %v", err)
	}
	f.l.commitErr = nil
	sigs := f.signatures()
	req := depositReq("sw-1", common.Address{}, 10)
	req.Wallet = &f.wa
	res, err := f.p.Collateral(ctx, admC, req, ch)
	if e := pipeline.AsError(err); err == nil || e.Code != pipeline.CodeReplayConflict || e.Status != 409 || e.RecordID != 0 {
		t.Fatalf("agent c resumed agent a's reservation: %+v %+v", res, e)
	}
	if f.signatures() != sigs || ch.distinct() != 0 {
		t.Fatalf("agent c's request signed %d and sent %d transactions", f.signatures()-sigs, ch.distinct())
	}
	// Agent a itself resumes it.
	if res, err := f.p.Collateral(ctx, admA, depositReq("sw-1", common.Address{}, 10), ch); err != nil || len(res.TxHashes) != 1 {
		t.Fatalf("agent a's own retry: %+v %v", res, err)
	}
}

// Finding 3: the policy is replaced (reload) between a failed commit and the retry; the new
// policy no longer allows agent a's deposit. The retry signs the reserved transaction anyway:
// nothing re-checks a reservation made under another policy hash before signing it.
func TestReviewRetryAfterPolicyReload(t *testing.T) {

	f := newRVFixture(t)
	ctx := context.Background()
	ch := &reviewChain{}
	f.l.commitErr = errors.New("disk full")
	_, err := f.p.Collateral(ctx, f.admA, depositReq("pr-1", common.Address{}, 10), ch)
	if e := pipeline.AsError(err); e.Code != pipeline.CodeStoreUnavailable {
		t.Fatalf("commit failure: %+v", e)
	}
	f.l.commitErr = nil
	f.p.SetPolicy(f.polDenyA)
	adm, err := f.p.Admit(policyengine.Caller{UID: 1000})
	if err != nil {
		t.Fatal(err)
	}
	sigs := f.signatures()
	_, err = f.p.Collateral(ctx, adm, depositReq("pr-1", common.Address{}, 10), ch)
	if err == nil || f.signatures() != sigs || ch.distinct() != 0 {
		t.Fatalf("retry under a policy that denies: err %v, %d new signatures, %d sent", err, f.signatures()-sigs, ch.distinct())
	}
	e := pipeline.AsError(err)
	if e.Kind != pipeline.Denied || e.Code != pipeline.CodePolicyChanged || e.Reason != "policy changed since this request was reserved; use a new request_id" {
		t.Fatalf("retry under a reloaded policy: %+v", e)
	}
	recs, _ := f.l.ByTab(f.wa, pipeline.CollateralTabID("pr-1"))
	if len(recs) != 1 || recs[0].Status != ledger.StatusReleased || recs[0].Code != pipeline.CodePolicyChanged {
		t.Fatalf("the stale reservation is not released: %+v", recs)
	}
	// The same request_id again: released, so a new request_id is needed (nothing signed).
	_, err = f.p.Collateral(ctx, adm, depositReq("pr-1", common.Address{}, 10), ch)
	if e := pipeline.AsError(err); e.Code != pipeline.CodeReplayConflict || f.signatures() != sigs {
		t.Fatalf("retry after the release: %+v", e)
	}
}

// Finding 4: the second transaction of an ERC-20 pay_tab (approve, then payTabInERC20Token) is
// built on retry from a new read of the tab, without the policy: if Core now names another
// recipient, the payment goes to a recipient the policy never allowed.
func TestReviewPayTabSecondTxRecipientPinned(t *testing.T) {

	f := newRVFixture(t)
	ctx := context.Background()
	ch := &reviewChain{recipients: []common.Address{rvRecipient, rvAttacker}}
	ch.failPrepare = map[int]error{1: &coreclient.ChainError{Op: "EstimateGas", Err: errors.New("connection reset")}}
	res, err := f.p.Collateral(ctx, f.admA, rvPayTab("p2-1", 5_000_000), ch)
	if e := pipeline.AsError(err); e.Code != pipeline.CodeChainError || res == nil || len(res.TxHashes) != 1 {
		t.Fatalf("second prepare fails: %+v %+v", e, res)
	}
	reads := ch.tabReads
	res, err = f.p.Collateral(ctx, f.admA, rvPayTab("p2-1", 5_000_000), ch)
	for _, tx := range ch.sent {
		if len(tx.Data()) == 4+4*32 && payTabRecipient(t, tx.Data()) != rvRecipient {
			t.Fatalf("payTabInERC20Token sent to %s, the policy allowed only %s", payTabRecipient(t, tx.Data()).Hex(), rvRecipient.Hex())
		}
	}
	// The retry completes the request with the recorded calls, without reading the tab again.
	if err != nil || !res.Replayed || len(res.TxHashes) != 2 || ch.tabReads != reads {
		t.Fatalf("retry: %+v %v (%d new tab reads)", res, err, ch.tabReads-reads)
	}
	if last := ch.sent[len(ch.sent)-1]; payTabRecipient(t, last.Data()) != rvRecipient {
		t.Fatalf("payTabInERC20Token not sent on retry")
	}
}

// nonceTooLowChain answers every broadcast with geth's "nonce too low": another transaction of
// the wallet already took the nonce, so this one can never be mined.
type nonceTooLowChain struct{ reviewChain }

func (c *nonceTooLowChain) Broadcast(context.Context, common.Address, *types.Transaction) error {
	return &coreclient.ChainError{Op: "SendTransaction", Err: errors.New("nonce too low: next nonce 8, tx nonce 7")}
}

// Wait behaves as coreclient.Wait for a transaction the chain never saw: no receipt until ctx ends.
func (c *nonceTooLowChain) Wait(ctx context.Context, _ common.Address, _ common.Hash) (*types.Receipt, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// Finding 9: "nonce too low" on a transaction the chain has never seen is counted as sent
// (alreadyKnown): the agent gets 200 "sent" with a hash that can never be mined. Only "already
// known" (the same hash) means the transaction got through; "nonce too low" needs the receipt.
// Either an error or a status saying the transaction was dropped is acceptable.
func TestReviewNonceTooLowIsNotSent(t *testing.T) {
	f := newRVFixture(t)
	ch := &nonceTooLowChain{}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := f.p.Collateral(ctx, f.admA, depositReq("nt-1", common.Address{}, 10), ch)
	if err == nil && (res.Status == "sent" || res.Status == "mined") {
		t.Fatalf("answered %q with hashes %v for a transaction whose nonce is taken", res.Status, res.TxHashes)
	}
}

// Finding 3, the rest of a request: the approve of an ERC-20 pay_tab is sent, the payment is
// not built yet (its prepare failed), and the policy is reloaded. The payment is not built under
// the old decision: 403 policy_changed, nothing more signed or sent (the agent sends a new
// request_id, which the current policy decides). Without a reload the retry completes and
// reports the payment as signed in this call (for the spend trips).
func TestReviewPolicyReloadBeforeSecondTx(t *testing.T) {
	for _, reload := range []bool{true, false} {
		f := newRVFixture(t)
		ctx := context.Background()
		ch := &reviewChain{recipients: []common.Address{rvRecipient}}
		ch.failPrepare = map[int]error{1: &coreclient.ChainError{Op: "EstimateGas", Err: errors.New("connection reset")}}
		res, err := f.p.Collateral(ctx, f.admA, rvPayTab("rl-1", 5_000_000), ch)
		if e := pipeline.AsError(err); e.Code != pipeline.CodeChainError || res == nil || len(res.TxHashes) != 1 || res.PaymentSigned {
			t.Fatalf("second prepare fails: %+v %+v", e, res)
		}
		adm := f.admA
		if reload {
			f.p.SetPolicy(f.polDenyA) // pay_tab still allowed, but another policy hash
			if adm, err = f.p.Admit(policyengine.Caller{UID: 1000}); err != nil {
				t.Fatal(err)
			}
		}
		sigs, sent := f.signatures(), ch.distinct()
		res, err = f.p.Collateral(ctx, adm, rvPayTab("rl-1", 5_000_000), ch)
		if reload {
			if e := pipeline.AsError(err); e.Code != pipeline.CodePolicyChanged || f.signatures() != sigs || ch.distinct() != sent {
				t.Fatalf("rest of the request after a reload: %+v (%d signed, %d sent)", e, f.signatures()-sigs, ch.distinct()-sent)
			}
			continue
		}
		if err != nil || len(res.TxHashes) != 2 || !res.PaymentSigned || f.signatures() != sigs+1 {
			t.Fatalf("rest of the request: %+v %v", res, err)
		}
		// A replay signs nothing and reports no payment signed.
		res, err = f.p.Collateral(ctx, adm, rvPayTab("rl-1", 5_000_000), ch)
		if err != nil || !res.Replayed || res.PaymentSigned {
			t.Fatalf("replay: %+v %v", res, err)
		}
	}
}
