package pipeline

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/common/hexutil"
	"github.com/ethereum/go-ethereum/core/types"
	"github.com/ethereum/go-ethereum/crypto"

	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/coreclient"
	"github.com/signerd/signerd/signerd/fourmica"
	"github.com/signerd/signerd/signerd/ledger"
)

// Codes of the collateral pipeline (besides the policy's and the pipeline's).
const (
	CodeCoreUnavailable = "core_unavailable" // no Core configured, Core unreachable or its domain does not match
	CodeCoreRefused     = "core_refused"     // Core answered an error or a malformed answer
	CodeChainError      = "chain_error"      // the Ethereum RPC failed (nothing signed, unless record_id is set)
	CodeTxWouldRevert   = "tx_would_revert"  // gas estimation says the contract reverts the call
	CodeFeeCapExceeded  = "fee_cap_exceeded" // the fee cap would exceed core.max_fee_per_gas_wei
	CodeBroadcastFailed = "broadcast_failed" // signed and recorded, but the RPC did not take it: retry the same request_id
	CodeReceiptTimeout  = "receipt_timeout"  // an approve was sent but not mined in time: retry the same request_id
	// CodePendingBroadcast: the wallet has a signed transaction whose broadcast is not
	// confirmed; a new transaction would take its nonce. Retry the named request_id first.
	CodePendingBroadcast = "pending_broadcast"
	// CodePolicyChanged: a retry would sign a transaction decided under another policy (a
	// reload since): the unsigned part of the request is released; use a new request_id.
	CodePolicyChanged = "policy_changed"
)

// Codes of the broadcast audit records (audit.KindBroadcast).
const (
	BroadcastPending = "broadcast_pending" // about to sign: the wallet's next transaction waits for this one's broadcast
	BroadcastSent    = "tx_broadcast"      // the RPC took the transaction (or already had it)
	BroadcastFailed  = "broadcast_failed"  // the RPC did not take it; the record stays signed and pending
	BroadcastMined   = "tx_mined"          // a rebroadcast got "nonce too low" and the receipt shows it mined
	BroadcastDropped = "tx_dropped"        // "nonce too low" and no receipt: its nonce went to another transaction
	BroadcastCleared = "broadcast_cleared" // a pending mark of a reservation released before signing
)

// pendingPrefix is the ledger state prefix of the transactions signed (or about to be) whose
// broadcast is not confirmed: pendingPrefix + lowercase wallet + "/" + record id (20 digits).
const pendingPrefix = ledger.UnbroadcastPrefix

// receiptLookup bounds the receipt lookup after a rebroadcast answered "nonce too low".
const receiptLookup = 3 * time.Second

// pendingMark is the value of a pending-broadcast state entry.
type pendingMark struct {
	RequestID string `json:"request_id"`
	Tab       string `json:"tab"` // decimal ledger tab key
	Index     int    `json:"index"`
}

// collateralState is what the collateral pipeline needs of the ledger besides Ledger: durable
// state entries written with their audit record (*ledger.Ledger implements it).
type collateralState interface {
	PutState(ctx context.Context, key string, value []byte, ev audit.Event) error
	StateWithPrefix(prefix string) (map[string][]byte, error)
}

func pendingWalletPrefix(w common.Address) string {
	return pendingPrefix + strings.ToLower(w.Hex()) + "/"
}

func pendingKey(w common.Address, id ledger.RecordID) string {
	return fmt.Sprintf("%s%020d", pendingWalletPrefix(w), uint64(id))
}

// SchemeTx is the ledger scheme of a collateral transaction: the digest is the EIP-1559
// signing hash of the unsigned transaction stored in the record's claims.
const SchemeTx = "tx-eip1559"

// MaxRequestID bounds CollateralRequest.RequestID (bytes).
const MaxRequestID = 128

// CollateralChain is what the collateral pipeline needs of 4Mica Core and the chain (the
// daemon implements it with signerd/coreclient, one client per wallet).
type CollateralChain interface {
	// Calls returns the contract calls that carry out req for wallet, in order (one, or an
	// ERC-20 approve and the call). For pay_tab it reads the tab from Core.
	Calls(ctx context.Context, wallet common.Address, req *CollateralRequest) ([]coreclient.Call, error)
	// Prepare builds the unsigned EIP-1559 transaction of call (nonce, gas, fees).
	Prepare(ctx context.Context, wallet common.Address, call coreclient.Call) (*coreclient.Prepared, error)
	// Broadcast sends a signed transaction.
	Broadcast(ctx context.Context, wallet common.Address, tx *types.Transaction) error
	// Wait polls the receipt of hash until it is mined or ctx ends.
	Wait(ctx context.Context, wallet common.Address, hash common.Hash) (*types.Receipt, error)
}

// CollateralRequest is one decoded collateral or settlement request of an agent.
type CollateralRequest struct {
	Action    policyengine.Action // deposit, withdraw, cancel_withdrawal, finalize_withdrawal or pay_tab
	Wallet    *common.Address     // nil: the agent's first wallet
	Asset     *common.Address     // zero address = ETH; pay_tab: optional, must be the tab's
	Amount    *big.Int            // deposit, withdraw, pay_tab
	TabID     *big.Int            // pay_tab
	ReqID     *big.Int            // pay_tab
	RequestID string              // the agent's idempotency key
	Wait      bool                // wait for the receipts
	// WaitTimeout bounds each receipt wait (Wait, and between the two transactions of an
	// approve + call request).
	WaitTimeout time.Duration
}

// CollateralResult is the outcome of a collateral request.
type CollateralResult struct {
	Action    policyengine.Action
	Wallet    common.Address
	Asset     common.Address
	Amount    *big.Int // nil for cancel/finalize
	PayTo     common.Address
	TxHashes  []common.Hash
	RecordIDs []ledger.RecordID
	Status    string // sent | mined | reverted
	Replayed  bool   // the transactions were signed by an earlier attempt with this request_id
	Blocks    []uint64
	Note      string
	// PaymentSigned (pay_tab): the payment transaction (the request's last) was signed in this
	// call (also when its broadcast then failed): the daemon feeds Amount of Asset to the
	// kill switch's spend-velocity trips. Also set on a result returned with an error.
	PaymentSigned bool
}

// collateralIdentity is what makes two requests "the same request": every field the agent
// chose except wait.
type collateralIdentity struct {
	RequestID string `json:"request_id"`
	Action    string `json:"action"`
	Wallet    string `json:"wallet"`
	Asset     string `json:"asset,omitempty"`
	Amount    string `json:"amount,omitempty"`
	TabID     string `json:"tab_id,omitempty"`
	ReqID     string `json:"req_id,omitempty"`
}

// collateralClaims is the canonical content of a collateral record (ledger Claims).
type collateralClaims struct {
	V       int                `json:"v"`
	Request collateralIdentity `json:"request"`
	Index   int                `json:"index"`
	Count   int                `json:"count"`
	Kind    string             `json:"kind"`
	Tx      string             `json:"tx"` // 0x RLP (typed envelope) of the unsigned transaction
	// Calls (first record only, v 2) are every call of the request as decided: the later
	// transactions are built from them, never from a new Core read.
	Calls []storedCall `json:"calls,omitempty"`
}

// claimsVersion is the version of collateralClaims written now (v 2: the first record
// carries the request's calls).
const claimsVersion = 2

// storedCall is a coreclient.Call as recorded at decision time.
type storedCall struct {
	Kind      string         `json:"kind"`
	To        common.Address `json:"to"`
	Value     *hexutil.Big   `json:"value"`
	Data      hexutil.Bytes  `json:"data"`
	Asset     common.Address `json:"asset"`
	Amount    fourmica.U256  `json:"amount"`
	TabID     fourmica.U256  `json:"tab_id"`
	ReqID     fourmica.U256  `json:"req_id"`
	Recipient common.Address `json:"recipient"`
}

func storeCalls(calls []coreclient.Call) []storedCall {
	out := make([]storedCall, len(calls))
	for i, c := range calls {
		v := c.Value
		if v == nil {
			v = new(big.Int)
		}
		out[i] = storedCall{Kind: string(c.Kind), To: c.To, Value: (*hexutil.Big)(new(big.Int).Set(v)), Data: append(hexutil.Bytes(nil), c.Data...),
			Asset: c.Asset, Amount: c.Amount, TabID: c.TabID, ReqID: c.ReqID, Recipient: c.Recipient}
	}
	return out
}

func loadCalls(sc []storedCall) []coreclient.Call {
	out := make([]coreclient.Call, len(sc))
	for i, c := range sc {
		v := new(big.Int)
		if c.Value != nil {
			v.Set(c.Value.ToInt())
		}
		out[i] = coreclient.Call{Kind: coreclient.CallKind(c.Kind), To: c.To, Value: v, Data: append([]byte(nil), c.Data...),
			Asset: c.Asset, Amount: c.Amount, TabID: c.TabID, ReqID: c.ReqID, Recipient: c.Recipient}
	}
	return out
}

// sameTx reports whether the unsigned transaction tx carries call (destination, value, data).
func sameTx(tx *types.Transaction, call coreclient.Call) bool {
	return tx.To() != nil && *tx.To() == call.To && tx.Value().Cmp(call.Value) == 0 && bytes.Equal(tx.Data(), call.Data)
}

// CollateralTabID is the ledger tab key of a request id: uint256(keccak256("signerd/collateral/v1:"
// + request_id)). The records of a request are (wallet, this key, index of the transaction).
func CollateralTabID(requestID string) *big.Int {
	return new(big.Int).SetBytes(crypto.Keccak256([]byte("signerd/collateral/v1:" + requestID)))
}

// ValidateCollateral checks a request's fields (400 invalid_request naming the field) without
// side effects; Collateral runs it first.
func ValidateCollateral(r *CollateralRequest) error {
	if e := r.validate(); e != nil {
		return e
	}
	return nil
}

func (r *CollateralRequest) validate() *Error {
	switch r.Action {
	case policyengine.ActionDeposit, policyengine.ActionWithdraw, policyengine.ActionCancelWithdrawal,
		policyengine.ActionFinalizeWithdrawal, policyengine.ActionPayTab:
	default:
		return invalid("action", "want deposit, withdraw, cancel_withdrawal, finalize_withdrawal or pay_tab")
	}
	if r.RequestID == "" {
		return invalid("request_id", "missing (an idempotency key of your choice, at most %d bytes)", MaxRequestID)
	}
	if len(r.RequestID) > MaxRequestID {
		return invalid("request_id", "longer than %d bytes", MaxRequestID)
	}
	for _, c := range r.RequestID {
		if c < 0x21 || c > 0x7e {
			return invalid("request_id", "printable ASCII without spaces only")
		}
	}
	needsAmount := r.Action == policyengine.ActionDeposit || r.Action == policyengine.ActionWithdraw || r.Action == policyengine.ActionPayTab
	switch {
	case needsAmount && r.Amount == nil:
		return invalid("amount", "missing (required for %s)", r.Action)
	case needsAmount && (r.Amount.Sign() <= 0 || r.Amount.BitLen() > 256):
		return invalid("amount", "must be a positive uint256")
	case !needsAmount && r.Amount != nil:
		return invalid("amount", "not allowed for %s (the contract acts on the pending withdrawal)", r.Action)
	}
	if r.Action == policyengine.ActionPayTab {
		if r.TabID == nil || r.TabID.Sign() == 0 {
			return invalid("tab_id", "missing (required for pay_tab)")
		}
		if r.ReqID == nil {
			return invalid("req_id", "missing (required for pay_tab)")
		}
	} else {
		if r.TabID != nil {
			return invalid("tab_id", "only for pay_tab")
		}
		if r.ReqID != nil {
			return invalid("req_id", "only for pay_tab")
		}
		if r.Asset == nil {
			return invalid("asset", "missing (0x0000000000000000000000000000000000000000 is ETH)")
		}
	}
	return nil
}

func (r *CollateralRequest) identity(wallet common.Address) collateralIdentity {
	id := collateralIdentity{RequestID: r.RequestID, Action: r.Action.String(), Wallet: hexAddr(wallet)}
	if r.Asset != nil {
		id.Asset = hexAddr(*r.Asset)
	}
	if r.Amount != nil {
		id.Amount = r.Amount.String()
	}
	if r.TabID != nil {
		id.TabID = r.TabID.String()
	}
	if r.ReqID != nil {
		id.ReqID = r.ReqID.String()
	}
	return id
}

// walletLocks serialise the nonce-taking sections of the collateral requests of one wallet
// in one pipeline: from the pending-broadcast check and the read of the wallet's pending nonce
// (Prepare) through the reservation, the durable commit and the broadcast (until the RPC took
// the transaction or its failure is recorded). Two requests building at once would take the
// same nonce. Receipt waits are never made under it.
var walletLocks = &keyedLocks{} // by lockKey

// requestLocks serialise the attempts of one request_id on one wallet: a retry sent while
// an attempt is still running (between the two transactions of an approve + call, say) waits
// for it, then continues from the records it left. Taken before the wallet lock, never while
// holding it.
var requestLocks = &keyedLocks{} // by requestKey

// allowanceLocks serialise, per wallet, the requests made of an ERC-20 approve and a call that
// spends the allowance (stablecoin deposit, ERC-20 pay_tab): held from before the approve is
// built until the call is broadcast, across the wait for the approve's receipt. approve sets
// the allowance (it does not add to it): another approve of the wallet mined between a
// request's approve and its call would change the allowance the call spends. Requests of one
// call never touch an allowance and do not take it. Taken after the request's lock and before
// the wallet's.
var allowanceLocks = &keyedLocks{} // by lockKey

// lookups names the pending-broadcast marks whose transaction the RPC answered "nonce too low"
// and whose receipt is being looked up without the wallet lock (lookupKey → struct{}).
var lookups sync.Map

type lockKey struct {
	p *Pipeline
	w common.Address
}

type requestKey struct {
	p   *Pipeline
	w   common.Address
	tab string
}

type lookupKey struct {
	p   *Pipeline
	key string // pending-broadcast state key
}

// keyedLocks are mutexes by key that honour a context while waiting; an entry exists only
// while someone holds or waits for it (a request_id's lock does not outlive its attempts).
type keyedLocks struct {
	mu sync.Mutex
	m  map[any]*keyedLock
}

type keyedLock struct {
	ch   chan struct{} // capacity 1: full while held
	refs int           // holders and waiters
}

func (k *keyedLocks) put(key any) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if l := k.m[key]; l != nil {
		if l.refs--; l.refs == 0 {
			delete(k.m, key)
		}
	}
}

func acquire(ctx context.Context, k *keyedLocks, key any) (func(), error) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[any]*keyedLock{}
	}
	l := k.m[key]
	if l == nil {
		l = &keyedLock{ch: make(chan struct{}, 1)}
		k.m[key] = l
	}
	l.refs++
	k.mu.Unlock()
	select {
	case l.ch <- struct{}{}:
		return func() { <-l.ch; k.put(key) }, nil
	case <-ctx.Done():
		k.put(key)
		return nil, ctx.Err()
	}
}

// hold is a lock a request takes and gives back, possibly several times; release is
// idempotent.
type hold struct {
	take   func(context.Context) (func(), error)
	unlock func() // nil while not held
}

func (h *hold) lock(ctx context.Context) error {
	if h.unlock != nil {
		return nil
	}
	u, err := h.take(ctx)
	if err != nil {
		return err
	}
	h.unlock = u
	return nil
}

func (h *hold) release() {
	if h.unlock != nil {
		h.unlock()
		h.unlock = nil
	}
}

func (p *Pipeline) walletHold(w common.Address) *hold {
	return &hold{take: func(ctx context.Context) (func(), error) { return acquire(ctx, walletLocks, lockKey{p, w}) }}
}

func (p *Pipeline) allowanceHold(w common.Address) *hold {
	return &hold{take: func(ctx context.Context) (func(), error) { return acquire(ctx, allowanceLocks, lockKey{p, w}) }}
}

func (p *Pipeline) requestHold(w common.Address, tab *big.Int) *hold {
	return &hold{take: func(ctx context.Context) (func(), error) {
		return acquire(ctx, requestLocks, requestKey{p, w, tab.String()})
	}}
}

func errWalletBusy(err error) *Error {
	return fault(http.StatusServiceUnavailable, CodeOverloaded, "another collateral request of this wallet is in progress", err)
}

// storedTx is a collateral record read back from the ledger.
type storedTx struct {
	rec    *ledger.PaymentRecord
	claims collateralClaims
	tx     *types.Transaction // unsigned
}

func parseStored(rec *ledger.PaymentRecord) (*storedTx, error) {
	st := &storedTx{rec: rec}
	if rec.Scheme != SchemeTx {
		return nil, fmt.Errorf("record %d has scheme %q, not %s", rec.ID, rec.Scheme, SchemeTx)
	}
	if err := json.Unmarshal(rec.Claims, &st.claims); err != nil {
		return nil, fmt.Errorf("record %d: claims: %w", rec.ID, err)
	}
	if st.claims.V != 1 && st.claims.V != claimsVersion {
		return nil, fmt.Errorf("record %d: claims version %d", rec.ID, st.claims.V)
	}
	raw, err := hexutil.Decode(st.claims.Tx)
	if err != nil {
		return nil, fmt.Errorf("record %d: tx: %w", rec.ID, err)
	}
	st.tx = new(types.Transaction)
	if err := st.tx.UnmarshalBinary(raw); err != nil {
		return nil, fmt.Errorf("record %d: tx: %w", rec.ID, err)
	}
	if st.tx.Type() != types.DynamicFeeTxType || st.tx.ChainId() == nil ||
		[32]byte(types.LatestSignerForChainID(st.tx.ChainId()).Hash(st.tx)) != rec.Digest {
		return nil, fmt.Errorf("record %d: stored transaction does not hash to the record's digest", rec.ID)
	}
	return st, nil
}

// Collateral runs a collateral or settlement request from the validation step on, for an
// admitted caller: validate → (retry of a recorded request_id: the stored transactions) →
// Core/tab lookup → policy (Intent with the action) → per transaction: unsigned transaction
// (nonce, gas, fees) → durable reservation (Scheme tx-eip1559, digest = signing hash, charges on
// the first transaction only) → kill-switch pass → HSM signature → recovered-sender check →
// durable commit → broadcast → pass released. A transaction is broadcast only after its
// signature is durable; a failed broadcast leaves it signed (502 broadcast_failed) and a retry
// with the same request_id broadcasts the same signed transaction again.
//
// A policy decision NeedsApproval holds the request with the approvals (as a guarantee's): it
// is filed (or found, by agent and request identity), long-polled for at most MaxWait with the
// wallet unlocked, and then runs again from the start (fresh policy decision; the approval is
// found approved and the charges are reserved then). Still waiting: 202 approval_pending with
// the approval id; denied or expired: 403 approval_denied; nothing is built or signed before
// the approval.
func (p *Pipeline) Collateral(ctx context.Context, a *Admission, req *CollateralRequest, ch CollateralChain) (res *CollateralResult, err error) {
	defer func() { p.observe(Outcome{}, err, err == nil && res.Replayed) }()
	return p.collateral(ctx, a, req, ch, true)
}

// collateral is Collateral; mayWait says whether a waiting approval may be long-polled (false
// on the run after the poll).
func (p *Pipeline) collateral(ctx context.Context, a *Admission, req *CollateralRequest, ch CollateralChain, mayWait bool) (res *CollateralResult, err error) {
	if e := req.validate(); e != nil {
		return nil, e
	}
	if ch == nil {
		return nil, fault(http.StatusServiceUnavailable, CodeCoreUnavailable, "no 4Mica Core is configured", nil)
	}
	pol := a.policy
	var wallet common.Address
	if req.Wallet != nil {
		wallet = *req.Wallet
	} else {
		ws := pol.Wallets(a.Agent)
		if len(ws) == 0 {
			return nil, denied(http.StatusForbidden, policyengine.CodeWalletNotAllowed, "", "the agent may use no wallet")
		}
		wallet = ws[0]
	}
	if !pol.WalletAllowed(a.Agent, wallet) {
		// Before the ledger, Core or the chain is asked anything about this wallet: a Core read
		// logs in with a SIWE message signed by the wallet's key, and a retry would resume
		// another agent's request.
		reason := "agent " + a.Agent + " may not use wallet " + hexAddr(wallet)
		phash := pol.Hash()
		p.auditAsync(ctx, audit.Event{Kind: audit.KindDecision, Principal: a.Principal(), Agent: a.Agent, Wallet: hexAddr(wallet),
			PolicyHash: phash[:], Scheme: SchemeTx, Decision: "deny", Code: policyengine.CodeWalletNotAllowed,
			Rule: "agents." + a.Agent + ".wallets", Reason: reason,
			Attrs: map[string]string{"action": req.Action.String(), "request_id": req.RequestID}})
		return nil, denied(http.StatusForbidden, policyengine.CodeWalletNotAllowed, "agents."+a.Agent+".wallets", reason)
	}
	id := req.identity(wallet)
	idJSON, _ := json.Marshal(id)
	idHash := sha256.Sum256(idJSON)
	tab := CollateralTabID(req.RequestID)
	phash := pol.Hash()
	base := audit.Event{
		Kind: audit.KindDecision, Principal: a.Principal(), Agent: a.Agent, Wallet: hexAddr(wallet),
		TabID: tab.String(), PolicyHash: phash[:], ClaimsHash: idHash[:], Scheme: SchemeTx,
		Attrs: map[string]string{"action": req.Action.String(), "request_id": req.RequestID},
	}

	// Lock order: the request's lock, then the wallet's. The wallet lock is given back for
	// every receipt wait (between the two transactions of an approve + call, and for wait);
	// the request lock for the approval long poll and the final receipt wait.
	reqHold, allowHold, walletHold := p.requestHold(wallet, tab), p.allowanceHold(wallet), p.walletHold(wallet)
	defer reqHold.release()
	defer allowHold.release()
	defer walletHold.release()
	if err := reqHold.lock(ctx); err != nil {
		return nil, fault(http.StatusServiceUnavailable, CodeOverloaded, "another attempt of this request_id is in progress", err)
	}
	if err := walletHold.lock(ctx); err != nil {
		return nil, errWalletBusy(err)
	}

	// A request_id already recorded: the same request continues where it stopped.
	recs, rerr := p.o.Ledger.ByTab(wallet, tab)
	if rerr != nil {
		return nil, fault(http.StatusServiceUnavailable, CodeStoreUnavailable, "the ledger could not be read", rerr)
	}
	var prior []*storedTx
	for i, rec := range recs {
		st, perr := parseStored(rec)
		if perr != nil {
			return nil, fault(http.StatusInternalServerError, CodeInternal, "a stored collateral record is unreadable", perr)
		}
		if rec.Agent != a.Agent {
			// Another agent's request on a shared wallet: its transactions and its reservation
			// are not this caller's to see or resume (the request_id is taken on this wallet).
			ev := base
			ev.Decision, ev.Code, ev.RecordID = "deny", CodeReplayConflict, uint64(rec.ID)
			ev.Reason = "request_id " + req.RequestID + " was used on this wallet by another agent"
			p.auditAsync(ctx, ev)
			return nil, &Error{Kind: Conflict, Status: http.StatusConflict, Code: CodeReplayConflict,
				Reason: "request_id " + req.RequestID + " was already used on this wallet by another agent; choose another request_id"}
		}
		if st.claims.Request != id {
			return nil, &Error{Kind: Conflict, Status: http.StatusConflict, Code: CodeReplayConflict, RecordID: uint64(rec.ID),
				Reason: "request_id " + req.RequestID + " was already used for a different request"}
		}
		if rec.Status == ledger.StatusReleased {
			return nil, &Error{Kind: Conflict, Status: http.StatusConflict, Code: CodeReplayConflict, RecordID: uint64(rec.ID),
				Reason: "request_id " + req.RequestID + " was used by a request that stopped before signing (its reservation was released); send it again with a new request_id"}
		}
		if rec.ReqID == nil || rec.ReqID.Cmp(big.NewInt(int64(i))) != 0 || st.claims.Index != i ||
			(i > 0 && st.claims.Count != prior[0].claims.Count) || st.claims.Count < len(recs) || st.claims.Count > 2 {
			return nil, fault(http.StatusInternalServerError, CodeInternal, "stored collateral records are inconsistent", fmt.Errorf("record %d: index %d of %d", rec.ID, st.claims.Index, st.claims.Count))
		}
		prior = append(prior, st)
	}
	if len(prior) > 0 {
		first := prior[0]
		if first.claims.Calls != nil {
			// The recorded calls must be the ones the recorded transactions carry.
			calls := loadCalls(first.claims.Calls)
			ok := len(calls) == first.claims.Count
			for i, st := range prior {
				ok = ok && sameTx(st.tx, calls[i]) && string(calls[i].Kind) == st.claims.Kind
			}
			if !ok {
				return nil, fault(http.StatusInternalServerError, CodeInternal, "stored collateral records are inconsistent",
					fmt.Errorf("record %d: stored calls do not match the stored transactions", first.rec.ID))
			}
		}
		if e := p.policyChanged(ctx, prior, phash, base); e != nil {
			return nil, e
		}
	}

	res = &CollateralResult{Action: req.Action, Wallet: wallet, Amount: req.Amount, Status: "sent"}
	if req.Asset != nil {
		res.Asset = *req.Asset
	}
	var calls []coreclient.Call
	var dec policyengine.Decision
	count := 0
	if len(prior) > 0 {
		count = prior[0].claims.Count
		res.Replayed = true
	} else {
		if calls, err = ch.Calls(ctx, wallet, req); err != nil {
			return nil, CoreError(err)
		}
		if len(calls) == 0 || len(calls) > 2 {
			return nil, fault(http.StatusInternalServerError, CodeInternal, "internal error", fmt.Errorf("%d calls for %s", len(calls), req.Action))
		}
		count = len(calls)
		last := calls[len(calls)-1]
		if req.Action == policyengine.ActionPayTab {
			if req.Asset != nil && *req.Asset != last.Asset {
				return nil, invalid("asset", "the tab's asset is %s", hexAddr(last.Asset))
			}
			res.Asset, res.PayTo = last.Asset, last.Recipient
		}
		now := p.o.Clock()
		in := &policyengine.Intent{Caller: a.Caller, Agent: a.Agent, Action: req.Action, Wallet: wallet, Asset: res.Asset,
			Network: p.o.Network, ChainID: p.o.Domain.ChainID(), Timestamp: uint64(now.Unix())}
		if req.Amount != nil {
			in.Amount = new(big.Int).Set(req.Amount)
		}
		if req.Action == policyengine.ActionPayTab {
			in.PayTo, in.TabID = res.PayTo, new(big.Int).Set(req.TabID)
		}
		dec = pol.Evaluate(in, p.o.Ledger, now)
		switch dec.Outcome {
		case policyengine.Allow:
		case policyengine.NeedsApproval:
			summary := map[string]string{"action": req.Action.String(), "request_id": req.RequestID, "wallet": hexAddr(wallet),
				"asset": hexAddr(res.Asset), "reason": dec.Reason, "scheme": SchemeTx, "transactions": fmt.Sprint(len(calls))}
			if req.Amount != nil {
				summary["amount"] = req.Amount.String()
			}
			if req.Action == policyengine.ActionPayTab {
				summary["pay_to"], summary["tab_id"], summary["req_id"] = hexAddr(res.PayTo), req.TabID.String(), req.ReqID.String()
			}
			st, aerr := p.submitApproval(ctx, ApprovalRequest{
				Fingerprint: claimsHash(fourmica.Scheme("approval:collateral:"+a.Agent), idHash[:]), Agent: a.Agent, Principal: a.Principal(),
				Wallet: wallet, Rule: dec.Rule, Group: dec.Group, Timeout: dec.Timeout, Summary: summary,
			}, dec)
			if aerr != nil {
				return nil, aerr
			}
			if st.State == ApprovalWaiting && mayWait && p.o.MaxWait > 0 {
				// Wait without holding the wallet or the request; once approved, start over.
				walletHold.release()
				reqHold.release()
				if st, aerr = p.waitApproval(ctx, st); aerr != nil {
					return nil, aerr
				}
				if st.State == ApprovalApproved {
					return p.collateral(ctx, a, req, ch, false)
				}
			}
			if aerr := approvalOutcome(st, dec); aerr != nil {
				return nil, aerr
			}
			base.ApprovalID = st.ID // the broadcast records name the approval that let it through
		default:
			if dec.Code == policyengine.CodeUsageUnavailable {
				return nil, fault(http.StatusServiceUnavailable, CodeStoreUnavailable, "the budget ledger is unavailable", dec.Err)
			}
			ev := base
			ev.Decision, ev.Code, ev.Rule, ev.Reason = "deny", dec.Code, dec.Rule, dec.Reason
			p.auditAsync(ctx, ev)
			return nil, denied(http.StatusForbidden, dec.Code, dec.Rule, dec.Reason)
		}
	}

	if count == 2 && len(prior) < count {
		// approve + call with the call still to build: the wallet's other approve + call
		// requests wait until the call is broadcast (allowanceLocks). Lock order: give the
		// wallet back, take the allowance, take the wallet again (the decision above holds:
		// budgets are enforced again by the reservation, nonces are read below).
		walletHold.release()
		if err := allowHold.lock(ctx); err != nil {
			return nil, fault(http.StatusServiceUnavailable, CodeOverloaded, "another approve + call request of this wallet is in progress", err)
		}
		if err := walletHold.lock(ctx); err != nil {
			return nil, errWalletBusy(err)
		}
	}

	var signer hsm.Signer
	getSigner := func() (hsm.Signer, *Error) {
		if signer != nil {
			return signer, nil
		}
		s, serr := p.o.Keys.Signer(ctx, wallet)
		if serr != nil {
			if errors.Is(serr, hsm.ErrUnknownKey) || errors.Is(serr, hsm.ErrKeyRetired) {
				return nil, denied(http.StatusForbidden, CodeUnknownWallet, "", "no active key for this wallet")
			}
			return nil, backendFault(serr)
		}
		signer = s
		return s, nil
	}
	if len(prior) == 0 {
		// The key must exist before anything is reserved.
		if _, e := getSigner(); e != nil {
			return nil, e
		}
	}

	var known []string // per transaction: sent, or what a "nonce too low" rebroadcast found
	for i := 0; i < count; i++ {
		var (
			utx    *types.Transaction
			claims []byte
			digest [32]byte
			kind   string
		)
		if i < len(prior) {
			st := prior[i]
			utx, claims, digest, kind = st.tx, st.rec.Claims, st.rec.Digest, st.claims.Kind
		} else {
			if calls == nil {
				// A retry that stopped between the two transactions: the decision was made (and
				// charged) with the first one, on the calls recorded with it; the rest is built
				// from those calls, never from a new Core read.
				if prior[0].claims.Calls == nil {
					return res, &Error{Kind: Conflict, Status: http.StatusConflict, Code: CodeReplayConflict, RecordID: uint64(prior[0].rec.ID),
						Reason: "request_id " + req.RequestID + " was recorded without its call list (older signerd); send it again with a new request_id"}
				}
				calls = loadCalls(prior[0].claims.Calls)
				if len(calls) != count {
					return res, fault(http.StatusInternalServerError, CodeInternal, "stored collateral records are inconsistent", fmt.Errorf("%d calls, recorded %d", len(calls), count))
				}
			}
			if i > 0 {
				// The call after an ERC-20 approve can only be estimated once the approve is
				// mined. The wait takes no nonce: other requests of the wallet go on meanwhile
				// (this request's lock keeps its own retries out). One of them may take the
				// nonce after the approve's; this call then takes the next one when it is
				// built below: nothing needs the two nonces to be consecutive.
				walletHold.release()
				if e := p.waitMined(ctx, ch, wallet, req, res.TxHashes[i-1]); e != nil {
					return res, e
				}
				if err := walletHold.lock(ctx); err != nil {
					return res, errWalletBusy(err)
				}
			}
			if e := p.checkPending(ctx, wallet, base); e != nil {
				return res, e
			}
			prep, perr := ch.Prepare(ctx, wallet, calls[i])
			if perr != nil {
				return res, CoreError(perr)
			}
			raw, merr := prep.Tx.MarshalBinary()
			if merr != nil {
				return res, fault(http.StatusInternalServerError, CodeInternal, "internal error", merr)
			}
			kind = string(calls[i].Kind)
			if !sameTx(prep.Tx, calls[i]) {
				return res, fault(http.StatusInternalServerError, CodeInternal, "internal error", fmt.Errorf("prepared transaction %d is not the decided call", i))
			}
			cc := collateralClaims{V: claimsVersion, Request: id, Index: i, Count: count, Kind: kind, Tx: hexutil.Encode(raw)}
			if i == 0 {
				cc.Calls = storeCalls(calls)
			}
			claims, _ = json.Marshal(cc)
			utx, digest = prep.Tx, prep.Hash
		}
		resv := ledger.Reservation{
			Wallet: wallet, TabID: tab, ReqID: big.NewInt(int64(i)), Claims: claims, Principal: a.Principal(), Agent: a.Agent,
			PolicyHash: phash[:], Rule: dec.Rule, Digest: digest, Scheme: SchemeTx,
		}
		if i == 0 && len(prior) == 0 {
			resv.Charges = dec.Charges
		}
		if err := walletHold.lock(ctx); err != nil {
			return res, errWalletBusy(err)
		}
		rr, rerr := p.o.Ledger.Reserve(ctx, resv)
		if rerr != nil {
			return res, fault(http.StatusServiceUnavailable, CodeStoreUnavailable, "the ledger could not record the request", rerr)
		}
		var stored []byte
		switch rr.Outcome {
		case ledger.Reserved, ledger.Resumable:
		case ledger.Duplicate:
			stored = rr.Signature
		case ledger.BudgetExhausted:
			code, rule := policyengine.CodeBudgetExhausted, ""
			if b := rr.Budget; b != nil {
				code, rule = b.Code(), b.Budget
			}
			return res, denied(http.StatusForbidden, code, rule, "the budget would be exceeded")
		case ledger.Conflict:
			return res, &Error{Kind: Conflict, Status: http.StatusConflict, Code: CodeReplayConflict, RecordID: uint64(rr.RecordID),
				Reason: "request_id " + req.RequestID + " was already used for a different request"}
		default:
			return res, fault(http.StatusInternalServerError, CodeInternal, "internal error", errors.New("unknown reserve outcome "+rr.Outcome.String()))
		}
		hash, status, e := p.signAndBroadcast(ctx, ch, getSigner, walletHold, wallet, rr.RecordID, fmt.Sprint(i), utx, digest, stored, kind, base)
		walletHold.release() // broadcast (or its failure) recorded: the nonce is settled
		res.RecordIDs = append(res.RecordIDs, rr.RecordID)
		if req.Action == policyengine.ActionPayTab && i == count-1 && stored == nil &&
			(e == nil || e.Code == CodeBroadcastFailed || e.Code == CodeChainError) {
			res.PaymentSigned = true // signed and committed in this call (errors after the commit only)
		}
		if e != nil {
			return res, e
		}
		res.TxHashes = append(res.TxHashes, hash)
		known = append(known, status)
		if status == "dropped" {
			res.Status = "dropped"
			res.Note = "transaction " + hash.Hex() + " can never be mined: its nonce was used by another transaction of the wallet " +
				"(nonce too low, no receipt); nothing of this request happened after it — send it again with a new request_id"
			return res, nil
		}
	}
	allowHold.release() // every transaction is broadcast: the allowance is spent by the call
	if !req.Wait && len(known) == count {
		// A rebroadcast that found every transaction already mined says so.
		st := "mined"
		for _, k := range known {
			if k == "sent" {
				st = ""
				break
			}
			if k == "reverted" {
				st = "reverted"
			}
		}
		if st != "" {
			res.Status = st
		}
	}

	if req.Wait {
		// Every transaction is broadcast: the receipts are awaited without the wallet (its
		// other requests go on) and without the request (a retry rebroadcasts and waits too).
		walletHold.release()
		reqHold.release()
		res.Status = "mined"
		for _, h := range res.TxHashes {
			wctx, cancel := context.WithTimeout(ctx, req.WaitTimeout)
			r, werr := ch.Wait(wctx, wallet, h)
			cancel()
			switch {
			case errors.Is(werr, coreclient.ErrTxReverted) && r != nil:
				res.Status = "reverted"
				res.Blocks = append(res.Blocks, r.BlockNumber.Uint64())
			case werr != nil:
				res.Status, res.Note = "sent", "not mined within the receipt timeout (the transactions are sent; ask the chain later)"
				return res, nil
			default:
				res.Blocks = append(res.Blocks, r.BlockNumber.Uint64())
			}
		}
	}
	return res, nil
}

// policyChanged refuses a retry that would sign or build a transaction decided under another
// policy than the one in force (a reload since the first attempt): the unsigned records of the
// request are released (their charges with them), the denial is audited, and the agent is told
// to use a new request_id, which the current policy decides afresh. Signed records are not
// affected: their signature exists and they are only broadcast again.
func (p *Pipeline) policyChanged(ctx context.Context, prior []*storedTx, phash [32]byte, base audit.Event) *Error {
	decided := prior[0].rec.PolicyHash
	stale := false
	for _, st := range prior {
		if st.rec.Status != ledger.StatusSigned && !bytes.Equal(st.rec.PolicyHash, phash[:]) {
			stale = true
		}
	}
	if !stale && prior[0].claims.Count > len(prior) && !bytes.Equal(decided, phash[:]) {
		stale = true // the rest of the request would be built under the old decision
	}
	if !stale {
		return nil
	}
	const reason = "policy changed since this request was reserved; use a new request_id"
	var released []string
	for _, st := range prior {
		if st.rec.Status == ledger.StatusReserved {
			p.release(st.rec.ID, CodePolicyChanged, reason)
			released = append(released, fmt.Sprint(uint64(st.rec.ID)))
		}
	}
	ev := base
	ev.Decision, ev.Code, ev.Reason = "deny", CodePolicyChanged, reason
	ev.RecordID = uint64(prior[0].rec.ID)
	ev.Attrs = map[string]string{"action": base.Attrs["action"], "request_id": base.Attrs["request_id"],
		"decided_policy": hexutil.Encode(decided), "released": strings.Join(released, ",")}
	p.auditAsync(ctx, ev)
	return denied(http.StatusForbidden, CodePolicyChanged, "", reason)
}

// state returns the ledger's state store; a ledger without one cannot track broadcasts, so
// nothing is signed (fail closed).
func (p *Pipeline) state() (collateralState, *Error) {
	st, ok := p.o.Ledger.(collateralState)
	if !ok {
		return nil, fault(http.StatusInternalServerError, CodeInternal, "internal error", errors.New("the ledger keeps no state entries"))
	}
	return st, nil
}

// checkPending refuses a new transaction for wallet while one of its signed transactions has
// no confirmed broadcast: the new one would take the same nonce and the old one could never
// be mined. Marks of reservations released before signing are cleared.
func (p *Pipeline) checkPending(ctx context.Context, wallet common.Address, base audit.Event) *Error {
	st, e := p.state()
	if e != nil {
		return e
	}
	marks, err := st.StateWithPrefix(pendingWalletPrefix(wallet))
	if err != nil {
		return fault(http.StatusServiceUnavailable, CodeStoreUnavailable, "the ledger could not be read", err)
	}
	keys := make([]string, 0, len(marks))
	for k := range marks {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if _, busy := lookups.Load(lookupKey{p, k}); busy {
			// The RPC answered "nonce too low" for that transaction and its receipt is being
			// looked up: its nonce is used on chain, below the pending nonce the next
			// transaction takes. The mark goes (or stays, on a failed lookup) when that ends.
			continue
		}
		var m pendingMark
		tab, ok := new(big.Int), false
		if json.Unmarshal(marks[k], &m) == nil {
			tab, ok = tab.SetString(m.Tab, 10)
		}
		if !ok {
			return fault(http.StatusInternalServerError, CodeInternal, "a pending-broadcast entry is unreadable", fmt.Errorf("state %s", k))
		}
		recs, err := p.o.Ledger.ByTab(wallet, tab)
		if err != nil {
			return fault(http.StatusServiceUnavailable, CodeStoreUnavailable, "the ledger could not be read", err)
		}
		var rec *ledger.PaymentRecord
		for _, r := range recs {
			if r.ReqID != nil && r.ReqID.Cmp(big.NewInt(int64(m.Index))) == 0 && pendingKey(wallet, r.ID) == k {
				rec = r
			}
		}
		if rec == nil {
			return fault(http.StatusInternalServerError, CodeInternal, "a pending-broadcast entry names no record", fmt.Errorf("state %s", k))
		}
		if rec.Status == ledger.StatusReleased {
			ev := base
			ev.Kind, ev.Decision, ev.Code, ev.RecordID, ev.ReqID = audit.KindBroadcast, "allow", BroadcastCleared, uint64(rec.ID), fmt.Sprint(m.Index)
			ev.TabID, ev.ClaimsHash = tab.String(), rec.ClaimsHash[:]
			ev.Attrs = map[string]string{"request_id": m.RequestID}
			ev.Reason = "the reservation was released before signing: nothing to broadcast"
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
			err := st.PutState(cctx, k, nil, ev)
			cancel()
			if err != nil {
				return fault(http.StatusServiceUnavailable, CodeStoreUnavailable, "the ledger could not record the request", err)
			}
			continue
		}
		ev := base
		ev.Decision, ev.Code = "deny", CodePendingBroadcast
		ev.Reason = "pending broadcast of request_id " + m.RequestID
		p.auditAsync(ctx, ev)
		return &Error{Kind: Conflict, Status: http.StatusConflict, Code: CodePendingBroadcast, RecordID: uint64(rec.ID),
			Reason: "transaction " + fmt.Sprint(m.Index) + " of request_id " + m.RequestID + " (record " + fmt.Sprint(uint64(rec.ID)) +
				") is signed but its broadcast is not confirmed; send that request again (same request_id) first: a new transaction would take its nonce"}
	}
	return nil
}

// waitMined waits for the receipt of a request's earlier transaction before the next one is
// built.
func (p *Pipeline) waitMined(ctx context.Context, ch CollateralChain, wallet common.Address, req *CollateralRequest, h common.Hash) *Error {
	wctx, cancel := context.WithTimeout(ctx, req.WaitTimeout)
	defer cancel()
	if _, err := ch.Wait(wctx, wallet, h); err != nil {
		if errors.Is(err, coreclient.ErrTxReverted) {
			return fault(http.StatusBadGateway, CodeChainError, "transaction "+h.Hex()+" of this request reverted on chain", err)
		}
		return fault(http.StatusGatewayTimeout, CodeReceiptTimeout, "transaction "+h.Hex()+" is sent but not mined yet; send the same request (same request_id) again to continue", err)
	}
	return nil
}

// signAndBroadcast signs a reserved transaction (or takes its stored signature), makes the
// signature durable, and broadcasts it, all under one kill-switch pass. Before a fresh
// signature, a pending-broadcast mark for the record is made durable (with its audit record),
// so a transaction that is signed is known to hold its nonce until its broadcast is confirmed;
// the mark is removed, with the broadcast's audit record, once the RPC took it. status is
// "sent", or what a rebroadcast answered "nonce too low" found: "mined", "reverted" or
// "dropped".
//
// walletHold is held on entry; it is given back during the receipt lookup after "nonce too
// low" (that transaction's nonce is used on chain, so a new transaction of the wallet cannot
// take it: checkPending lets other requests past its mark meanwhile).
func (p *Pipeline) signAndBroadcast(ctx context.Context, ch CollateralChain, getSigner func() (hsm.Signer, *Error), walletHold *hold, wallet common.Address,
	id ledger.RecordID, index string, utx *types.Transaction, digest [32]byte, stored []byte, kind string, base audit.Event) (hash common.Hash, status string, e *Error) {
	st, e := p.state()
	if e != nil {
		if stored == nil {
			p.release(id, ledger.CodeSigningFailed, "no state store")
		}
		return common.Hash{}, "", e
	}
	release, ok := p.o.KillSwitch.Pass()
	if !ok {
		if stored == nil {
			p.release(id, CodeKillSwitch, "kill switch engaged before signing")
		}
		e := errKillSwitch()
		e.RecordID = uint64(id)
		return common.Hash{}, "", e
	}
	defer release()
	key := pendingKey(wallet, id)
	ev := base
	ev.Kind, ev.RecordID, ev.Digest, ev.ReqID, ev.Decision = audit.KindBroadcast, uint64(id), digest[:], index, "allow"
	ev.Attrs = map[string]string{"action": base.Attrs["action"], "request_id": base.Attrs["request_id"], "kind": kind, "nonce": fmt.Sprint(utx.Nonce())}
	putState := func(value []byte, ev audit.Event) error {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
		defer cancel()
		return st.PutState(cctx, key, value, ev)
	}
	var sig [65]byte
	if stored == nil {
		signer, e := getSigner()
		if e != nil {
			p.release(id, ledger.CodeSigningFailed, "no signer: "+e.Code)
			e.RecordID = uint64(id)
			return common.Hash{}, "", e
		}
		ix, _ := strconv.Atoi(index)
		mark, _ := json.Marshal(pendingMark{RequestID: base.Attrs["request_id"], Tab: base.TabID, Index: ix})
		pev := ev
		pev.Code, pev.Reason = BroadcastPending, "about to sign: the wallet's next transaction waits until this one is broadcast"
		if err := putState(mark, pev); err != nil {
			p.release(id, ledger.CodeSigningFailed, "pending-broadcast mark not recorded")
			e := fault(http.StatusServiceUnavailable, CodeStoreUnavailable, "the ledger could not record the request; nothing was signed", err)
			e.RecordID = uint64(id)
			return common.Hash{}, "", e
		}
		s, err := signer.SignDigest(ctx, digest)
		if err == nil {
			_, err = coreclient.Finish(utx, s, wallet) // the recovered sender must be the wallet
		}
		if err != nil {
			clear(s[:])
			p.o.Logger.Error("signing a collateral transaction failed after reservation", "record_id", uint64(id), "wallet", hexAddr(wallet), "err", err)
			p.release(id, ledger.CodeSigningFailed, "signing failed: "+safeCause(err))
			e := backendFault(err)
			if errors.Is(err, coreclient.ErrSignature) {
				e = fault(http.StatusServiceUnavailable, CodeBackendUnavailable, "the key backend's signature does not recover to the wallet", err)
			}
			e.RecordID = uint64(id)
			return common.Hash{}, "", e
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
		cr, err := p.o.Ledger.Commit(cctx, id, s[:])
		cancel()
		if err != nil || len(cr.Signature) != 65 {
			if err == nil {
				err = errors.New("ledger returned a malformed signature")
			}
			p.o.Logger.Error("commit failed; transaction withheld", "record_id", uint64(id), "err", err)
			e := fault(http.StatusServiceUnavailable, CodeStoreUnavailable, "the signature could not be recorded; the transaction was not sent", err)
			e.RecordID = uint64(id)
			return common.Hash{}, "", e
		}
		copy(sig[:], cr.Signature)
	} else {
		if len(stored) != 65 {
			return common.Hash{}, "", fault(http.StatusInternalServerError, CodeInternal, "a stored signature is malformed", fmt.Errorf("record %d: %d bytes", id, len(stored)))
		}
		copy(sig[:], stored)
	}
	signed, err := coreclient.Finish(utx, sig, wallet)
	if err != nil {
		e := fault(http.StatusInternalServerError, CodeInternal, "a stored signature does not recover to the wallet", err)
		e.RecordID = uint64(id)
		return common.Hash{}, "", e
	}
	hash = signed.Hash()
	ev.Attrs["tx_hash"] = hash.Hex()
	berr := ch.Broadcast(ctx, wallet, signed)
	status = "sent"
	switch {
	case berr == nil:
		ev.Code, ev.Reason = BroadcastSent, "transaction handed to the Ethereum RPC"
	case alreadyKnown(berr):
		ev.Code, ev.Reason = BroadcastSent, "transaction already known to the RPC ("+safeChainCause(berr)+")"
	case nonceTooLow(berr):
		// Its nonce is used: either by this very transaction (mined) or by another one. The
		// wallet's pending nonce is past it, so the lookup needs no wallet lock.
		lk := lookupKey{p, key}
		lookups.Store(lk, struct{}{})
		defer lookups.Delete(lk) // after the mark's removal below (or the error return)
		walletHold.release()
		lctx, cancel := context.WithTimeout(ctx, receiptLookup)
		r, werr := ch.Wait(lctx, wallet, hash)
		cancel()
		switch {
		case werr == nil || (errors.Is(werr, coreclient.ErrTxReverted) && r != nil):
			status = "mined"
			if werr != nil {
				status = "reverted"
			}
			ev.Code, ev.Reason = BroadcastMined, "rebroadcast answered nonce too low; the receipt shows the transaction mined ("+status+")"
			ev.Attrs["block"] = r.BlockNumber.String()
		case errors.Is(werr, context.DeadlineExceeded) && !errors.Is(werr, coreclient.ErrChain) && ctx.Err() == nil:
			status = "dropped"
			ev.Code = BroadcastDropped
			ev.Reason = "rebroadcast answered nonce too low and the chain has no receipt: another transaction took its nonce; it will never be mined"
		default:
			e := fault(http.StatusBadGateway, CodeChainError, "transaction "+hash.Hex()+" is signed and its nonce is used on chain, but its receipt could not be read ("+
				safeChainCause(werr)+"); send the same request (same request_id) again", werr)
			e.RecordID = uint64(id)
			return hash, "", e
		}
	default:
		ev.Code = BroadcastFailed
		ev.Reason = "signed and recorded; the RPC did not take it: " + safeChainCause(berr)
		p.auditAsync(ctx, ev)
		p.o.Logger.Warn("collateral transaction broadcast failed", "record_id", uint64(id), "tx", hash.Hex(), "err", berr)
		e := fault(http.StatusBadGateway, CodeBroadcastFailed, "transaction "+hash.Hex()+" is signed and recorded but the Ethereum RPC did not take it ("+
			safeChainCause(berr)+"); send the same request (same request_id) again to broadcast the same transaction", berr)
		e.RecordID = uint64(id)
		return hash, "", e
	}
	// The broadcast is settled: remove the mark with the broadcast's audit record. If that
	// fails, the mark stays and the wallet's next request is refused until this one is retried.
	if err := putState(nil, ev); err != nil {
		p.o.Logger.Error("broadcast state not recorded; the wallet's next request will ask for a retry of this one", "record_id", uint64(id), "tx", hash.Hex(), "err", err)
	}
	return hash, status, nil
}

// alreadyKnown reports an RPC answer meaning the node already has this very transaction.
func alreadyKnown(err error) bool {
	s := strings.ToLower(err.Error())
	return strings.Contains(s, "already known") || strings.Contains(s, "known transaction") || strings.Contains(s, "already imported")
}

// nonceTooLow reports an RPC answer meaning the transaction's nonce is already used on chain.
func nonceTooLow(err error) bool {
	return strings.Contains(strings.ToLower(err.Error()), "nonce too low")
}

// safeChainCause names a chain failure without the RPC's text (which may carry the RPC URL).
func safeChainCause(err error) string {
	var ce *coreclient.ChainError
	if errors.As(err, &ce) {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return ce.Op + ": timeout"
		}
		return ce.Op + " failed"
	}
	if errors.Is(err, coreclient.ErrChainMismatch) {
		return "the RPC's chain id is not the configured one"
	}
	return "RPC error"
}

// CoreError maps a coreclient error to the pipeline's typed error (safe reason, cause kept).
func CoreError(err error) *Error {
	var he *coreclient.HTTPError
	switch {
	case errors.Is(err, coreclient.ErrInvalidArgument):
		return &Error{Kind: Invalid, Status: http.StatusBadRequest, Code: CodeInvalidRequest, Field: "tab_id", Reason: err.Error(), Cause: err}
	case errors.As(err, &he) && he.Status == http.StatusNotFound && strings.Contains(he.Path, "/core/tabs/"):
		return &Error{Kind: Invalid, Status: http.StatusBadRequest, Code: CodeInvalidRequest, Field: "tab_id", Reason: "Core knows no such tab", Cause: err}
	case errors.Is(err, coreclient.ErrNoContract):
		return fault(http.StatusServiceUnavailable, CodeCoreUnavailable, "no Core4Mica contract is pinned (core.contract); nothing was built or signed", err)
	case errors.Is(err, coreclient.ErrUnreachable):
		return fault(http.StatusServiceUnavailable, CodeCoreUnavailable, "4Mica Core is unreachable", err)
	case errors.Is(err, coreclient.ErrDomainMismatch):
		return fault(http.StatusServiceUnavailable, CodeCoreUnavailable, "4Mica Core's domain does not match this daemon's: "+err.Error(), err)
	case errors.Is(err, coreclient.ErrRefused), errors.Is(err, coreclient.ErrBadResponse):
		return fault(http.StatusBadGateway, CodeCoreRefused, err.Error(), err)
	case errors.Is(err, coreclient.ErrDenied):
		return denied(http.StatusForbidden, CodeFeeCapExceeded, "", strings.TrimPrefix(err.Error(), coreclient.ErrDenied.Error()+": "))
	case errors.Is(err, coreclient.ErrChainMismatch), errors.Is(err, coreclient.ErrNoChain):
		return fault(http.StatusServiceUnavailable, CodeCoreUnavailable, safeChainCause(err), err)
	case errors.Is(err, coreclient.ErrChain):
		var ce *coreclient.ChainError
		if errors.As(err, &ce) && ce.Op == "EstimateGas" && strings.Contains(strings.ToLower(ce.Err.Error()), "revert") {
			return &Error{Kind: Invalid, Status: http.StatusUnprocessableEntity, Code: CodeTxWouldRevert,
				Reason: "the contract would revert this transaction (gas estimation failed); nothing was signed", Cause: err}
		}
		return fault(http.StatusBadGateway, CodeChainError, "the Ethereum RPC failed ("+safeChainCause(err)+"); nothing was signed", err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fault(http.StatusServiceUnavailable, CodeCoreUnavailable, "the request ended before Core or the chain answered", err)
	}
	return fault(http.StatusBadGateway, CodeCoreRefused, "4Mica Core or the chain failed", err)
}
