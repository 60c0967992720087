package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"
	"github.com/ethereum/go-ethereum/ethclient"

	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/config"
	"github.com/signerd/signerd/signerd/coreclient"
	"github.com/signerd/signerd/signerd/fourmica"
	"github.com/signerd/signerd/signerd/pipeline"
)

// coreState is the daemon's connection to 4Mica Core (config core:) and the chain: the
// discovered public params, the domain check, and one coreclient.Client per wallet.
type coreState struct {
	d       *Daemon
	cfg     config.Core
	baseURL string
	poll    time.Duration

	mu       sync.Mutex
	disc     *coreclient.Client // no signer: public params only
	chain    coreclient.Chain   // injected (tests) or dialled from rpc_url / Core's params
	rpcHost  string             // scheme://host of the RPC dialled (never its path: it may hold an API key)
	params   *coreclient.PublicParams
	domainOK bool
	lastErr  string
	lastTry  time.Time
	clients  map[common.Address]*coreclient.Client
}

// coreRetryEvery bounds how often a request triggers a new discovery while Core is down.
const coreRetryEvery = 2 * time.Second

// openCore builds the Core connection. With core.url set it discovers Core's public params
// and refuses to start (error) when Core's signing domain differs from the daemon's protocol
// config; Core unreachable is only a warning (guarantees do not need Core).
func (d *Daemon) openCore(ctx context.Context, opts Options) (*coreState, error) {
	cs := &coreState{d: d, cfg: d.cfg.Core, baseURL: d.cfg.Core.URL, poll: opts.CoreReceiptPoll, chain: opts.CoreChain,
		clients: map[common.Address]*coreclient.Client{}}
	if opts.CoreURL != "" {
		cs.baseURL = opts.CoreURL
	}
	if cs.baseURL == "" {
		return cs, nil
	}
	if cs.poll == 0 {
		cs.poll = time.Second
	}
	if cs.cfg.ContractAddress() == (common.Address{}) {
		return nil, errors.New("core: refusing to start: core.contract is required with core.url (the Core4Mica address deposits, approvals and tab payments go to is pinned, never taken from Core)")
	}
	var err error
	if cs.disc, err = coreclient.New(coreclient.Options{BaseURL: cs.baseURL, Domain: cs.domain(common.Address{}),
		HTTPClient: &http.Client{Timeout: 10 * time.Second}, Logger: d.log}); err != nil {
		return nil, fmt.Errorf("core: %w", err)
	}
	if cs.chain == nil && cs.cfg.RPCURL != "" {
		if err := cs.dial(ctx, cs.cfg.RPCURL); err != nil {
			return nil, err
		}
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := cs.discover(dctx); err != nil {
		if errors.Is(err, coreclient.ErrDomainMismatch) {
			return nil, fmt.Errorf("core: refusing to start: %v (protocol: chain_id %d, eip712_name %q, eip712_version %q; signatures for a domain Core rejects are worthless)",
				err, d.cfg.Protocol.ChainID, d.cfg.Protocol.EIP712Name, d.cfg.Protocol.EIP712Version)
		}
		d.log.Warn("4Mica Core unreachable at start; guarantees are served, collateral endpoints answer 503 core_unavailable until Core answers",
			"core", cs.baseURL, "err", err)
	}
	return cs, nil
}

func (cs *coreState) domain(contract common.Address) coreclient.Domain {
	p := cs.d.cfg.Protocol
	if contract == (common.Address{}) {
		contract = cs.cfg.ContractAddress()
	}
	return coreclient.Domain{ChainID: p.ChainID, EIP712Name: p.EIP712Name, EIP712Version: p.EIP712Version, Contract: contract}
}

// dial connects the RPC (cs.mu held or not yet shared).
func (cs *coreState) dial(ctx context.Context, rpcURL string) error {
	u, err := url.Parse(rpcURL)
	if err != nil || u.Host == "" {
		return fmt.Errorf("core: rpc url is not an absolute URL")
	}
	c, err := ethclient.DialContext(ctx, rpcURL)
	if err != nil {
		return fmt.Errorf("core: dialling the Ethereum RPC %s://%s: %w", u.Scheme, u.Host, err)
	}
	cs.chain, cs.rpcHost = c, u.Scheme+"://"+u.Host
	return nil
}

// discover fetches and checks Core's public params; on success the RPC is dialled from them
// when no rpc_url is configured, and the RPC's chain id is checked.
func (cs *coreState) discover(ctx context.Context) error {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.lastTry = time.Now()
	p, err := cs.disc.Discover(ctx)
	if err != nil {
		cs.domainOK, cs.lastErr = false, err.Error()
		return err
	}
	cs.params = p
	if cs.chain == nil {
		if p.EthereumHTTPRPCURL == "" {
			cs.lastErr = "Core's public params name no ethereum_http_rpc_url and core.rpc_url is not set"
			return fmt.Errorf("%w: %s", coreclient.ErrNoChain, cs.lastErr)
		}
		if err := cs.dial(ctx, p.EthereumHTTPRPCURL); err != nil {
			cs.lastErr = err.Error()
			return err
		}
	}
	id, err := cs.chain.ChainID(ctx)
	if err != nil {
		cs.lastErr = "Ethereum RPC unreachable (ChainID)"
		return &coreclient.ChainError{Op: "ChainID", Err: err}
	}
	if !id.IsUint64() || id.Uint64() != cs.d.cfg.Protocol.ChainID {
		err := &coreclient.DomainMismatchError{Field: "rpc chain id", Core: id.String(), Want: fmt.Sprint(cs.d.cfg.Protocol.ChainID)}
		cs.lastErr = err.Error()
		return err
	}
	cs.domainOK, cs.lastErr = true, ""
	cs.d.log.Info("4Mica Core discovered", "core", cs.baseURL, "chain_id", p.ChainID, "contract", p.ContractAddress.Hex(),
		"eip712_name", p.EIP712Name, "eip712_version", p.EIP712Version)
	return nil
}

// ready returns nil when Core's domain is checked, retrying discovery at most every
// coreRetryEvery; otherwise a 503 core_unavailable error.
func (cs *coreState) ready(ctx context.Context) *pipeline.Error {
	if cs.disc == nil {
		return &pipeline.Error{Kind: pipeline.Failed, Status: http.StatusServiceUnavailable, Code: pipeline.CodeCoreUnavailable,
			Reason: "no 4Mica Core is configured (config core.url)"}
	}
	cs.mu.Lock()
	ok, last := cs.domainOK, cs.lastTry
	cs.mu.Unlock()
	if ok {
		return nil
	}
	if time.Since(last) >= coreRetryEvery {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := cs.discover(dctx)
		cancel()
		if err == nil {
			return nil
		}
		if errors.Is(err, coreclient.ErrDomainMismatch) {
			cs.d.log.Error("4Mica Core's domain does not match this daemon's: collateral endpoints stay unavailable", "err", err)
		}
	}
	cs.mu.Lock()
	msg := cs.lastErr
	cs.mu.Unlock()
	return &pipeline.Error{Kind: pipeline.Failed, Status: http.StatusServiceUnavailable, Code: pipeline.CodeCoreUnavailable,
		Reason: "4Mica Core is not available: " + msg, RetryAfter: coreRetryEvery}
}

// client returns the coreclient.Client of wallet (created on first use).
func (cs *coreState) client(wallet common.Address) (*coreclient.Client, error) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if c := cs.clients[wallet]; c != nil {
		return c, nil
	}
	// The contract is the pinned one (core.contract), never Core's answer: deposits, approvals
	// and ERC-20 tab payments go to it (discovery only checks that Core names the same).
	c, err := coreclient.New(coreclient.Options{BaseURL: cs.baseURL, Domain: cs.domain(common.Address{}),
		Signer: coreSigner{d: cs.d, wallet: wallet}, Chain: cs.chain, SIWEDomain: cs.cfg.SIWEDomain,
		HTTPClient: &http.Client{Timeout: 30 * time.Second}, MaxFeePerGas: cs.cfg.MaxFeePerGas(), ReceiptPoll: cs.poll, Logger: cs.d.log})
	if err != nil {
		return nil, err
	}
	cs.clients[wallet] = c
	return c, nil
}

// coreSigner is a wallet's signer for Core's SIWE login: it goes through the kill switch (no
// signature of any kind while it is engaged), looks the key up at each use (keys can be
// retired or the backend reopened) and audits every login signature.
type coreSigner struct {
	d      *Daemon
	wallet common.Address
}

func (s coreSigner) Address() common.Address { return s.wallet }

func (s coreSigner) SignDigest(ctx context.Context, digest [32]byte) ([65]byte, error) {
	release, ok := s.d.ks.Pass()
	if !ok {
		return [65]byte{}, errors.New("kill switch engaged")
	}
	defer release()
	sg, err := s.d.keys.Signer(ctx, s.wallet)
	if err != nil {
		return [65]byte{}, err
	}
	sig, err := sg.SignDigest(ctx, digest)
	if err != nil {
		return sig, err
	}
	if aerr := s.d.ledger.AuditAsync(audit.Event{Kind: audit.KindDecision, Decision: "allow", Code: "core_login",
		Wallet: fourmica.Address(s.wallet).Hex(), Digest: digest[:], Signature: sig[:], Scheme: "eip191",
		Reason: "SIWE login to 4Mica Core (personal_sign)", Attrs: map[string]string{"core": s.d.core.baseURL}}); aerr != nil {
		s.d.log.Error("audit of a Core login signature failed; signature not used", "err", aerr)
		return [65]byte{}, aerr
	}
	return sig, nil
}

// collateralChain implements pipeline.CollateralChain with the wallet's coreclient.Client.
type collateralChain struct{ cs *coreState }

func (c collateralChain) Calls(ctx context.Context, wallet common.Address, req *pipeline.CollateralRequest) ([]coreclient.Call, error) {
	cl, err := c.cs.client(wallet)
	if err != nil {
		return nil, err
	}
	if req.Action == policyengine.ActionPayTab {
		return cl.PayTabCalls(ctx, u256(req.TabID), u256(req.ReqID), u256(req.Amount))
	}
	contract, err := cl.PinnedContract(ctx)
	if err != nil {
		return nil, err
	}
	asset := *req.Asset
	switch req.Action {
	case policyengine.ActionDeposit:
		return cl.DepositCalls(ctx, asset, u256(req.Amount))
	case policyengine.ActionWithdraw:
		return []coreclient.Call{coreclient.RequestWithdrawal(contract, asset, u256(req.Amount))}, nil
	case policyengine.ActionCancelWithdrawal:
		return []coreclient.Call{coreclient.CancelWithdrawal(contract, asset)}, nil
	case policyengine.ActionFinalizeWithdrawal:
		return []coreclient.Call{coreclient.FinalizeWithdrawal(contract, asset)}, nil
	}
	return nil, fmt.Errorf("%w: action %s", coreclient.ErrInvalidArgument, req.Action)
}

func (c collateralChain) Prepare(ctx context.Context, wallet common.Address, call coreclient.Call) (*coreclient.Prepared, error) {
	cl, err := c.cs.client(wallet)
	if err != nil {
		return nil, err
	}
	return cl.Prepare(ctx, call, nil)
}

func (c collateralChain) Broadcast(ctx context.Context, wallet common.Address, tx *types.Transaction) error {
	cl, err := c.cs.client(wallet)
	if err != nil {
		return err
	}
	return cl.Broadcast(ctx, tx)
}

func (c collateralChain) Wait(ctx context.Context, wallet common.Address, hash common.Hash) (*types.Receipt, error) {
	cl, err := c.cs.client(wallet)
	if err != nil {
		return nil, err
	}
	return cl.Wait(ctx, hash)
}

// u256 converts a validated (0 ≤ v < 2^256) integer.
func u256(v *big.Int) fourmica.U256 {
	u, _ := fourmica.U256FromBig(v)
	return u
}

// collateralBody is the body of POST /v1/collateral.
type collateralBody struct {
	Action    *string         `json:"action"`
	Wallet    *string         `json:"wallet"`
	Asset     *string         `json:"asset"`
	Amount    json.RawMessage `json:"amount"`
	TabID     json.RawMessage `json:"tab_id"`
	ReqID     json.RawMessage `json:"req_id"`
	RequestID *string         `json:"request_id"`
	Wait      *bool           `json:"wait"`
}

// collateralAnswer is the answer of POST /v1/collateral.
type collateralAnswer struct {
	Action    string   `json:"action"`
	Wallet    string   `json:"wallet"`
	Asset     string   `json:"asset"`
	Amount    string   `json:"amount,omitempty"`
	PayTo     string   `json:"pay_to,omitempty"`
	TxHashes  []string `json:"tx_hashes"`
	RecordIDs []string `json:"record_ids"`
	Status    string   `json:"status"`
	Replayed  bool     `json:"replayed,omitempty"`
	Blocks    []uint64 `json:"blocks,omitempty"`
	Note      string   `json:"note,omitempty"`
}

func parseAddrField(field string, s *string) (*common.Address, *pipeline.Error) {
	if s == nil {
		return nil, nil
	}
	a, err := fourmica.ParseAddress(*s)
	if err != nil {
		return nil, pipeline.Invalidf(field, "not a 20-byte hex address")
	}
	ca := common.Address(a)
	return &ca, nil
}

func (d *Daemon) handleCollateralPost(w http.ResponseWriter, r *http.Request) {
	adm, done, ok := d.admit(w, r)
	if !ok {
		return
	}
	defer done()
	var body collateralBody
	if e := decodeBody(r, d.cfg.Limits.MaxBodyBytes, &body); e != nil {
		d.invalid(w, r, e)
		return
	}
	req := &pipeline.CollateralRequest{}
	if body.Action == nil {
		d.invalid(w, r, pipeline.Invalidf("action", "missing"))
		return
	}
	act, err := policyengine.ParseAction(*body.Action)
	if err != nil || act == policyengine.ActionGuarantee {
		d.invalid(w, r, pipeline.Invalidf("action", "want deposit, withdraw, cancel_withdrawal, finalize_withdrawal or pay_tab"))
		return
	}
	req.Action = act
	var e *pipeline.Error
	if req.Wallet, e = parseAddrField("wallet", body.Wallet); e != nil {
		d.invalid(w, r, e)
		return
	}
	if req.Asset, e = parseAddrField("asset", body.Asset); e != nil {
		d.invalid(w, r, e)
		return
	}
	if len(body.Amount) > 0 && string(body.Amount) != "null" {
		u, e := u256Field("amount", body.Amount, true)
		if e != nil {
			d.invalid(w, r, e)
			return
		}
		req.Amount = u.Big()
	}
	if len(body.TabID) > 0 && string(body.TabID) != "null" {
		u, e := u256Field("tab_id", body.TabID, true)
		if e != nil {
			d.invalid(w, r, e)
			return
		}
		req.TabID = u.Big()
	}
	if len(body.ReqID) > 0 && string(body.ReqID) != "null" {
		u, e := u256Field("req_id", body.ReqID, true)
		if e != nil {
			d.invalid(w, r, e)
			return
		}
		req.ReqID = u.Big()
	}
	if body.RequestID != nil {
		req.RequestID = *body.RequestID
	}
	if body.Wait != nil {
		req.Wait = *body.Wait
	}
	req.WaitTimeout = d.cfg.Core.ReceiptTimeout
	if max := d.cfg.Limits.WriteTimeout - 5*time.Second; max > 0 && (req.WaitTimeout == 0 || req.WaitTimeout > max) {
		req.WaitTimeout = max // the answer must still be written
	}
	var ch pipeline.CollateralChain
	// Core is needed only once the request is valid: validate first (400 before 503).
	if pipeline.ValidateCollateral(req) == nil {
		if ce := d.core.ready(r.Context()); ce != nil {
			d.metrics.decisions.WithLabelValues("fault", ce.Code).Inc()
			writeError(w, r, ce)
			return
		}
		ch = collateralChain{d.core}
	}
	res, err := d.pipe.Collateral(r.Context(), adm, req, ch)
	if res != nil && res.PaymentSigned && res.Amount != nil {
		// A tab payment is money leaving the wallet, as a guarantee is: the same spend trips.
		v := ^uint64(0)
		if res.Amount.IsUint64() {
			v = res.Amount.Uint64()
		}
		d.ks.ObserveAssetSpend(res.Asset, v)
	}
	if err != nil {
		d.fail(w, r, err)
		return
	}
	out := collateralAnswer{Action: res.Action.String(), Wallet: fourmica.Address(res.Wallet).Hex(), Asset: fourmica.Address(res.Asset).Hex(),
		TxHashes: []string{}, RecordIDs: []string{}, Status: res.Status, Replayed: res.Replayed, Blocks: res.Blocks, Note: res.Note}
	if res.Amount != nil {
		out.Amount = res.Amount.String()
	}
	if res.PayTo != (common.Address{}) {
		out.PayTo = fourmica.Address(res.PayTo).Hex()
	}
	for _, h := range res.TxHashes {
		out.TxHashes = append(out.TxHashes, h.Hex())
	}
	for _, id := range res.RecordIDs {
		out.RecordIDs = append(out.RecordIDs, id.String())
	}
	writeValue(w, r, http.StatusOK, out)
}

func (d *Daemon) handleCollateralGet(w http.ResponseWriter, r *http.Request) {
	adm, done, ok := d.admit(w, r)
	if !ok {
		return
	}
	defer done()
	q := r.URL.Query()
	allowed := d.pipe.Wallets(adm)
	var wallet common.Address
	if s := q.Get("wallet"); s != "" {
		a, e := parseAddrField("wallet", &s)
		if e != nil {
			d.invalid(w, r, e)
			return
		}
		wallet = *a
		if !d.pipe.WalletAllowed(adm, wallet) {
			writeError(w, r, &pipeline.Error{Kind: pipeline.Denied, Status: http.StatusForbidden, Code: policyengine.CodeWalletNotAllowed,
				Reason: "this agent may not use wallet " + fourmica.Address(wallet).Hex()})
			return
		}
	} else if len(allowed) > 0 {
		wallet = allowed[0]
	} else {
		writeError(w, r, &pipeline.Error{Kind: pipeline.Denied, Status: http.StatusForbidden, Code: policyengine.CodeWalletNotAllowed, Reason: "the agent may use no wallet"})
		return
	}
	var asset common.Address
	if s := q.Get("asset"); s != "" {
		a, e := parseAddrField("asset", &s)
		if e != nil {
			d.invalid(w, r, e)
			return
		}
		asset = *a
	}
	if ce := d.core.ready(r.Context()); ce != nil {
		writeError(w, r, ce)
		return
	}
	cl, err := d.core.client(wallet)
	if err != nil {
		d.fail(w, r, pipeline.CoreError(err))
		return
	}
	col, err := cl.FreeCollateral(r.Context(), wallet, asset)
	if err != nil {
		d.fail(w, r, pipeline.CoreError(err))
		return
	}
	writeValue(w, r, http.StatusOK, map[string]any{
		"wallet": fourmica.Address(wallet).Hex(), "asset": fourmica.Address(asset).Hex(), "registered": col.Registered,
		"total": col.Total.Dec(), "locked": col.Locked.Dec(), "pending_withdrawal": col.PendingWithdrawal.Dec(),
		"free": col.Free.Dec(), "pending_known": col.PendingKnown,
	})
}

// handleCoreStatus is GET /v1/admin/core.
func (d *Daemon) handleCoreStatus(w http.ResponseWriter, r *http.Request, _ config.Operator) {
	cs := d.core
	out := map[string]any{"configured": cs.disc != nil}
	if cs.disc != nil {
		cs.mu.Lock()
		out["url"], out["siwe_domain"], out["domain_ok"] = cs.baseURL, cs.cfg.SIWEDomain, cs.domainOK
		if cs.rpcHost != "" {
			out["rpc"] = cs.rpcHost
		}
		if cs.cfg.Contract != "" {
			out["contract_pinned"] = cs.cfg.ContractAddress().Hex()
		}
		if p := cs.params; p != nil {
			out["params"] = map[string]any{"chain_id": p.ChainID, "contract": p.ContractAddress.Hex(), "eip712_name": p.EIP712Name,
				"eip712_version": p.EIP712Version}
		}
		if cs.lastErr != "" {
			out["last_error"] = cs.lastErr
		}
		if !cs.lastTry.IsZero() {
			out["last_attempt"] = cs.lastTry.UTC().Format(time.RFC3339)
		}
		cs.mu.Unlock()
	}
	writeValue(w, r, http.StatusOK, out)
}
