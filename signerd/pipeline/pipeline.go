// Package pipeline is signerd's signing pipeline: the one path every signature takes, in a
// fixed order — kill switch → caller → decode and validate → policy → replay check and intent
// (replay record + budget charges + payment record + decision, decided atomically in the
// ledger) → kill switch again (an in-flight pass) → HSM signature, while the intent's
// write-ahead-log append is fsynced → signature recorded → response once the intent is
// durable → pass released.
//
// A signature never leaves before its intent is durable; after a crash an intent without a
// recorded signature is possibly signed (its charges stand, an identical retry re-signs it).
// If signing fails, the intent is released durably and both facts are audited. The package talks to
// its neighbours through the small interfaces below, so tests and the daemon can wire real
// parts (ledger, policy, key backend, kill switch, approvals) or stand-ins.
package pipeline

import (
	"context"
	"crypto/sha256"
	"log/slog"
	"math/big"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ethereum/go-ethereum/common"

	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/fourmica"
	"github.com/signerd/signerd/signerd/ledger"
)

// Policy is a compiled policy as the pipeline uses it (see policyengine).
type Policy interface {
	// Principal maps a caller to its agent; ok is false for a caller the policy does not know.
	Principal(c policyengine.Caller) (agent string, ok bool)
	// Wallets lists the wallets agent may use.
	Wallets(agent string) []common.Address
	// WalletAllowed reports whether agent may use wallet (a listed one, or any for an agent
	// declared `wallets: any`), as Evaluate decides it.
	WalletAllowed(agent string, wallet common.Address) bool
	// Evaluate decides one intent against current usage.
	Evaluate(in *policyengine.Intent, usage policyengine.UsageReader, now time.Time) policyengine.Decision
	// Hash is the policy's content hash.
	Hash() [32]byte
}

// Ledger is the durable store (see signerd/ledger; *ledger.Ledger satisfies it): replay
// records, budget usage and payment records, each change audited in the same transaction.
type Ledger interface {
	policyengine.UsageReader
	Reserve(ctx context.Context, r ledger.Reservation) (ledger.Result, error)
	Commit(ctx context.Context, id ledger.RecordID, sig []byte) (ledger.CommitResult, error)
	RecordSignature(ctx context.Context, id ledger.RecordID, sig []byte) (ledger.CommitResult, error)
	Release(ctx context.Context, id ledger.RecordID, code, reason string) error
	AuditAsync(ev audit.Event) error
	AppendAudit(ctx context.Context, ev audit.Event) (audit.Record, error)
	ByTab(wallet common.Address, tab *big.Int) ([]*ledger.PaymentRecord, error)
}

// KillSwitch is the emergency stop (see signerd/killswitch).
type KillSwitch interface {
	Engaged() bool
	Pass() (release func(), ok bool)
}

// ApprovalState is where an approval stands.
type ApprovalState int

const (
	// ApprovalWaiting: no decision yet.
	ApprovalWaiting ApprovalState = iota
	// ApprovalApproved: an operator approved; the request proceeds.
	ApprovalApproved
	// ApprovalDenied: an operator denied it, or it expired.
	ApprovalDenied
)

// ApprovalRequest describes a request held for approval.
type ApprovalRequest struct {
	Fingerprint [32]byte // identifies the request: a re-submission finds the same approval
	Agent       string
	Principal   string
	Wallet      common.Address
	Rule        string
	Group       string
	Timeout     time.Duration
	Summary     map[string]string // what an operator sees (amount, seller, tab, ...)
}

// ApprovalStatus is the answer of Approvals.
type ApprovalStatus struct {
	ID     string
	State  ApprovalState
	Reason string // why it was denied, if it was
}

// Approvals holds requests for a human decision (see signerd/approvals).
type Approvals interface {
	// Submit files the request, or returns the existing approval with the same fingerprint.
	Submit(ctx context.Context, r ApprovalRequest) (ApprovalStatus, error)
	// Wait long-polls an approval for at most maxWait.
	Wait(ctx context.Context, id string, maxWait time.Duration) (ApprovalStatus, error)
}

// Keys finds the signer for a wallet address (see hsm).
type Keys interface {
	Signer(ctx context.Context, wallet common.Address) (hsm.Signer, error)
}

// Options wire a Pipeline. Every field but Approvals, Logger and Clock is required.
type Options struct {
	Domain     *fourmica.Domain
	Network    string // CAIP-2 network the daemon signs for, e.g. eip155:84532
	Ledger     Ledger
	KillSwitch KillSwitch
	Keys       Keys
	Approvals  Approvals     // nil: NeedsApproval decisions are denied
	MaxWait    time.Duration // approval long poll
	Logger     *slog.Logger
	Clock      func() time.Time
	// Observe, if set, is told every final outcome (metrics, auto-trips).
	Observe func(o Outcome)
}

// Outcome is reported to Options.Observe once per request.
type Outcome struct {
	Decision string // allow | deny | needs_approval | invalid | conflict | fault
	Code     string
	Amount   *fourmica.U256
	Replayed bool
}

// Pipeline signs guarantees. It is safe for concurrent use.
type Pipeline struct {
	o        Options
	policy   atomic.Pointer[policyBox]
	stopping chan struct{} // closed by Stop: approval long polls end at once
	stopOnce sync.Once
}

// Stop ends every approval long poll now (their callers get 202 approval_pending) so a
// shutdown drains quickly; signing in flight is not interrupted.
func (p *Pipeline) Stop() { p.stopOnce.Do(func() { close(p.stopping) }) }

type policyBox struct{ p Policy }

// New validates opts and returns a pipeline using policy p.
func New(opts Options, p Policy) (*Pipeline, error) {
	switch {
	case opts.Domain == nil:
		return nil, errOpt("Domain")
	case opts.Network == "":
		return nil, errOpt("Network")
	case opts.Ledger == nil:
		return nil, errOpt("Ledger")
	case opts.KillSwitch == nil:
		return nil, errOpt("KillSwitch")
	case opts.Keys == nil:
		return nil, errOpt("Keys")
	case p == nil:
		return nil, errOpt("policy")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	pl := &Pipeline{o: opts, stopping: make(chan struct{})}
	pl.policy.Store(&policyBox{p})
	return pl, nil
}

type optError string

func (e optError) Error() string { return "pipeline: Options." + string(e) + " is required" }

func errOpt(name string) error { return optError(name) }

// Policy returns the policy in force.
func (p *Pipeline) Policy() Policy { return p.policy.Load().p }

// SetPolicy swaps the policy atomically; requests already past the policy step finish under
// the old one.
func (p *Pipeline) SetPolicy(pol Policy) { p.policy.Store(&policyBox{pol}) }

// Network is the CAIP-2 network the pipeline signs for.
func (p *Pipeline) Network() string { return p.o.Network }

// Domain is the EIP-712 domain the pipeline signs under.
func (p *Pipeline) Domain() *fourmica.Domain { return p.o.Domain }

// Admission is a caller that passed the first two steps (kill switch, caller).
type Admission struct {
	Caller policyengine.Caller
	Agent  string
	policy Policy
}

// Principal renders the caller as the audit log names it.
func (a *Admission) Principal() string { return principal(&a.Caller) }

func principal(c *policyengine.Caller) string {
	if c.User != "" {
		return "uid:" + utoa(uint64(c.UID)) + "(" + c.User + ")"
	}
	return "uid:" + utoa(uint64(c.UID))
}

func utoa(v uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(b[i:])
		}
	}
}

// Admit runs the first two steps: the kill switch and the caller's identity. Run it before
// decoding the body, so an engaged switch or an unknown caller costs no parsing.
func (p *Pipeline) Admit(c policyengine.Caller) (*Admission, error) {
	if p.o.KillSwitch.Engaged() {
		return nil, errKillSwitch()
	}
	pol := p.Policy()
	agent, ok := pol.Principal(c)
	if !ok {
		return nil, denied(403, CodeUnknownCaller, "", "this caller is not mapped to any agent")
	}
	return &Admission{Caller: c, Agent: agent, policy: pol}, nil
}

// Wallets lists the wallets the admitted caller may use.
func (p *Pipeline) Wallets(a *Admission) []common.Address { return a.policy.Wallets(a.Agent) }

// WalletAllowed reports whether the admitted caller's agent may use wallet under the policy in
// force for the request.
func (p *Pipeline) WalletAllowed(a *Admission, wallet common.Address) bool {
	return a.policy.WalletAllowed(a.Agent, wallet)
}

// Request is one decoded signing request.
type Request struct {
	// Wallet, if set, must equal the claims' user_address.
	Wallet *common.Address
	Claims fourmica.Claims
	Scheme fourmica.Scheme
	// Task context supplied by the agent.
	TaskID     string
	TaskLabels map[string]string
	// Seller context (x402): the resource URL and its host.
	ResourceURL string
	Host        string
}

// Result is a signed guarantee. Call Done after the response has been written: it releases
// the kill-switch pass (Engage waits for it).
type Result struct {
	Claims    fourmica.Claims
	Scheme    fourmica.Scheme
	Digest    [32]byte
	Signature [65]byte
	RecordID  ledger.RecordID
	Replayed  bool // the stored signature of an earlier identical request
	release   func()
}

// Done releases the in-flight pass. It is safe to call more than once.
func (r *Result) Done() {
	if r != nil && r.release != nil {
		r.release()
		r.release = nil
	}
}

// claimsHash binds the scheme and the canonical claims.
func claimsHash(scheme fourmica.Scheme, canon []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte(scheme))
	h.Write([]byte{0})
	h.Write(canon)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// Lookup returns the current ledger record of (wallet, tab, req), or nil.
func (p *Pipeline) Lookup(wallet common.Address, tab, req *big.Int) (*ledger.PaymentRecord, error) {
	recs, err := p.o.Ledger.ByTab(wallet, tab)
	if err != nil {
		return nil, err
	}
	for _, r := range recs {
		if r.ReqID != nil && r.ReqID.Cmp(req) == 0 {
			return r, nil
		}
	}
	return nil, nil
}
