package pipeline

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/ethereum/go-ethereum/common"

	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/fourmica"
	"github.com/signerd/signerd/signerd/ledger"
)

// Sign runs the pipeline from the policy step on for an admitted caller: policy → replay
// check and intent → kill switch pass → HSM signature (while the intent is fsynced) →
// signature recorded → intent durable. On success the caller must write the response and then
// call Result.Done.
func (p *Pipeline) Sign(ctx context.Context, a *Admission, req *Request) (res *Result, err error) {
	out := Outcome{}
	defer func() { p.observe(out, err, err == nil && res.Replayed) }()

	pay := req.Claims.Payment()
	if pay == nil {
		return nil, invalid("claims", "missing")
	}
	out.Amount = &pay.Amount
	wallet := common.Address(pay.User)
	if req.Wallet != nil && *req.Wallet != wallet {
		return nil, invalid("wallet", "does not match claims.user_address")
	}
	switch req.Scheme {
	case fourmica.SchemeEIP712, fourmica.SchemeEIP191:
	default:
		return nil, invalid("scheme", "want eip712 or eip191")
	}
	if req.Claims.Version == fourmica.V2 && req.Claims.V2.ValidationChainID != p.o.Domain.ChainID() {
		return nil, invalid("claims.validation_chain_id", "must equal the chain id %d", p.o.Domain.ChainID())
	}

	now := p.o.Clock()
	pol := a.policy
	intent := p.intent(a, req, wallet, pay)
	dec := pol.Evaluate(intent, p.o.Ledger, now)

	canon, merr := req.Claims.MarshalJSON()
	if merr != nil {
		return nil, invalid("claims", "%s", merr.Error())
	}
	chash := claimsHash(req.Scheme, canon)
	phash := pol.Hash()
	base := audit.Event{
		Kind: audit.KindDecision, Principal: a.Principal(), Agent: a.Agent, Wallet: hexAddr(wallet),
		TabID: pay.TabID.Dec(), ReqID: pay.ReqID.Dec(), PolicyHash: phash[:], ClaimsHash: chash[:],
		Scheme: string(req.Scheme),
	}

	var approvalID string // the approval that let the request through (audited by the approvals manager)
	resumeOnly := false   // the policy denied: only an identical recorded intent may be answered
	switch dec.Outcome {
	case policyengine.Allow:
	case policyengine.NeedsApproval:
		st, aerr := p.awaitApproval(ctx, a, req, wallet, pay, chash, dec, base)
		if aerr != nil {
			return nil, aerr
		}
		approvalID = st.ID
		p.o.Logger.Debug("approved request proceeds", "approval_id", approvalID)
	default:
		if dec.Code == policyengine.CodeUsageUnavailable {
			p.o.Logger.Error("policy could not read usage", "err", dec.Err)
			return nil, fault(http.StatusServiceUnavailable, CodeStoreUnavailable, "the budget ledger is unavailable", dec.Err)
		}
		if !deniedByItself(dec.Code) {
			return nil, p.deny(ctx, base, dec)
		}
		// An agent retrying a request that was signed, or possibly signed before a restart, may
		// now be over its budget, rate or timestamp skew because of that very request: the
		// ledger answers from that request's intent (its signature, or a new one over its
		// digest, with no charge), or not at all and the denial stands.
		resumeOnly = true
	}

	// The key must exist before anything is reserved.
	signer, serr := p.o.Keys.Signer(ctx, wallet)
	if serr != nil {
		if errors.Is(serr, hsm.ErrUnknownKey) || errors.Is(serr, hsm.ErrKeyRetired) {
			return nil, denied(http.StatusForbidden, CodeUnknownWallet, "", "no active key for this wallet")
		}
		return nil, backendFault(serr)
	}

	var digest [32]byte
	dh, derr := p.o.Domain.Digest(req.Claims, req.Scheme)
	if derr != nil {
		return nil, invalid("claims", "%s", derr.Error())
	}
	digest = dh

	resv := ledger.Reservation{
		Wallet: wallet, TabID: pay.TabID.Big(), ReqID: pay.ReqID.Big(), Claims: canon, Charges: dec.Charges,
		Principal: a.Principal(), Agent: a.Agent, PolicyHash: phash[:], Rule: dec.Rule, Digest: digest,
		Scheme: string(req.Scheme), TaskID: req.TaskID, ResumeOnly: resumeOnly,
	}
	if resumeOnly {
		resv.Charges = nil
	}
	// The intent is decided in memory and answered at once; its write-ahead-log append and
	// fsync run while the key signs, and the signature leaves only once both are done.
	rr, rerr := p.o.Ledger.Reserve(ctx, resv)
	if rerr != nil {
		return nil, fault(http.StatusServiceUnavailable, CodeStoreUnavailable, "the ledger could not record the request", rerr)
	}
	if rr.Outcome == ledger.NotResumable {
		return nil, p.deny(ctx, base, dec)
	}
	if res, err, done := p.reserved(rr, req, digest, wallet, nil); done {
		return res, err
	}
	id := rr.RecordID

	// Kill switch again: a pass is held until the response is written.
	release, ok := p.o.KillSwitch.Pass()
	if !ok {
		p.release(id, CodeKillSwitch, "kill switch engaged before signing")
		e := errKillSwitch()
		e.RecordID = uint64(id)
		return nil, e
	}
	sig, err := signAndVerify(ctx, signer, digest, wallet)
	return p.deliver(ctx, req, rr, digest, wallet, sig, err, release)
}

// observe reports a finished request to Options.Observe: the decision and code of err by its
// kind, or allow/ok (replayed: the answer is a stored signature or transaction).
func (p *Pipeline) observe(out Outcome, err error, replayed bool) {
	if p.o.Observe == nil {
		return
	}
	if err != nil {
		e := AsError(err)
		out.Code = e.Code
		switch e.Kind {
		case Denied:
			out.Decision = "deny"
		case Pending:
			out.Decision = "needs_approval"
		case Invalid:
			out.Decision = "invalid"
		case Conflict:
			out.Decision = "conflict"
		default:
			out.Decision = "fault"
		}
	} else {
		out.Decision, out.Code, out.Replayed = "allow", "ok", replayed
	}
	p.o.Observe(out)
}

// signAndVerify signs with the HSM. It verifies by recovery once: the backend has recovered
// the signature to its key's address before returning it (the hsm.Signer contract: low s, v in
// {27, 28}, recovers to Address), so what is left to check is that this address is the claims'
// user_address and that v is Core's.
func signAndVerify(ctx context.Context, s hsm.Signer, digest [32]byte, wallet common.Address) ([65]byte, error) {
	if s.Address() != wallet {
		return [65]byte{}, fmt.Errorf("%w: the key signs for %s, not %s", hsm.ErrSignature, s.Address(), wallet)
	}
	sig, err := s.SignDigest(ctx, digest)
	if err == nil && sig[64] != 27 && sig[64] != 28 {
		err = fmt.Errorf("%w: recovery id %d", hsm.ErrSignature, sig[64])
	}
	if err != nil {
		clear(sig[:])
	}
	return sig, err
}

// reserved handles the ledger's answer. done reports that the request is finished (stored
// signature, conflict, budget); otherwise the record is to be signed. release, when non-nil, is
// a pass already held: reused for a duplicate, released otherwise. A stored signature is
// verified against the wallet before it is returned.
func (p *Pipeline) reserved(rr ledger.Result, req *Request, digest [32]byte, wallet common.Address, release func()) (res *Result, err error, done bool) {
	id := rr.RecordID
	drop := func() {
		if release != nil {
			release()
		}
	}
	conflict := func() error {
		return &Error{Kind: Conflict, Status: http.StatusConflict, Code: CodeReplayConflict, RecordID: uint64(id),
			Reason: "this (wallet, tab_id, req_id) was already used with different claims"}
	}
	switch rr.Outcome {
	case ledger.Reserved:
		return nil, nil, false
	case ledger.Resumable:
		if rr.Digest != digest { // same claims under another scheme
			drop()
			return nil, conflict(), true
		}
		return nil, nil, false
	case ledger.Duplicate:
		if rr.Digest != digest || len(rr.Signature) != 65 {
			drop()
			return nil, conflict(), true
		}
		if verr := fourmica.VerifySignature(digest, rr.Signature, fourmica.Address(wallet)); verr != nil {
			drop()
			p.o.Logger.Error("stored signature does not verify: ledger damaged", "record_id", uint64(id), "err", verr)
			return nil, fault(http.StatusInternalServerError, CodeLedgerCorrupt, "the stored signature of this request is damaged; it was not returned", verr), true
		}
		if release == nil {
			var ok bool
			if release, ok = p.o.KillSwitch.Pass(); !ok {
				return nil, errKillSwitch(), true
			}
		}
		res = &Result{Claims: req.Claims, Scheme: req.Scheme, Digest: digest, RecordID: id, Replayed: true, release: release}
		copy(res.Signature[:], rr.Signature)
		return res, nil, true
	case ledger.Conflict:
		drop()
		return nil, conflict(), true
	case ledger.BudgetExhausted:
		drop()
		code, rule := policyengine.CodeBudgetExhausted, ""
		if b := rr.Budget; b != nil {
			code, rule = b.Code(), b.Budget
		}
		return nil, denied(http.StatusForbidden, code, rule, "the budget would be exceeded"), true
	default:
		drop()
		return nil, fault(http.StatusInternalServerError, CodeInternal, "internal error", errors.New("unknown reserve outcome "+rr.Outcome.String())), true
	}
}

// deliver finishes a signed intent: if signing failed the intent is released durably; else the
// signature is recorded in a later group without an fsync of its own, and returned once the
// intent is durable (Result.Durable). It returns the result holding the pass.
func (p *Pipeline) deliver(ctx context.Context, req *Request, rr ledger.Result, digest [32]byte, wallet common.Address,
	sig [65]byte, err error, release func()) (*Result, error) {
	id := rr.RecordID
	if err != nil {
		release()
		p.o.Logger.Error("signing failed after reservation", "record_id", uint64(id), "wallet", hexAddr(wallet), "err", err)
		p.release(id, ledger.CodeSigningFailed, "signing failed: "+safeCause(err))
		var e *Error
		if errors.Is(err, hsm.ErrKeyRetired) || errors.Is(err, hsm.ErrUnknownKey) {
			// The key went away between the lookup and the signature (retired by an operator,
			// or refused by the token): the same denial as when the lookup finds it retired —
			// a retry cannot succeed.
			e = denied(http.StatusForbidden, CodeUnknownWallet, "", "no active key for this wallet")
		} else {
			e = backendFault(err)
		}
		e.RecordID = uint64(id)
		return nil, e
	}
	// Neither wait depends on the caller staying connected: a disconnect after signing must
	// not leave the intent's fate to chance.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
	defer cancel()
	// The signature is applied while the intent's fsync may still run (the write-ahead log is
	// ordered: no sync covers the signature without the intent, and a replay answer waits for a
	// sync of its own); it leaves only once the intent is durable.
	cr, err := p.o.Ledger.RecordSignature(cctx, id, sig[:])
	if err == nil {
		err = rr.Durable(cctx)
	}
	if err == nil && len(cr.Signature) != 65 {
		err = errors.New("ledger returned a malformed signature")
	}
	if err != nil {
		release()
		clear(sig[:])
		p.o.Logger.Error("intent not durable; signature withheld", "record_id", uint64(id), "err", err)
		e := fault(http.StatusServiceUnavailable, CodeStoreUnavailable, "the request could not be recorded; its signature was not released", err)
		e.RecordID = uint64(id)
		return nil, e
	}
	res := &Result{Claims: req.Claims, Scheme: req.Scheme, Digest: digest, RecordID: id, Replayed: cr.AlreadySigned, release: release}
	copy(res.Signature[:], cr.Signature)
	return res, nil
}

// commitTimeout bounds how long a signed request waits for its durable commit.
const commitTimeout = 30 * time.Second

// release undoes a reservation; a failure is logged (the record stays reserved and is
// resumable, which never lets a signature out).
func (p *Pipeline) release(id ledger.RecordID, code, reason string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.o.Ledger.Release(ctx, id, code, reason); err != nil {
		p.o.Logger.Error("releasing a reservation failed", "record_id", uint64(id), "err", err)
	}
}

func backendFault(err error) *Error {
	switch {
	case errors.Is(err, hsm.ErrOverloaded):
		e := fault(http.StatusServiceUnavailable, CodeOverloaded, "the key backend is busy; retry shortly", err)
		e.RetryAfter = time.Second
		return e
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fault(http.StatusServiceUnavailable, CodeBackendUnavailable, "the request was cancelled before it was signed", err)
	default:
		return fault(http.StatusServiceUnavailable, CodeBackendUnavailable, "the key backend could not sign", err)
	}
}

// safeCause names the class of a signing error without its details.
func safeCause(err error) string {
	for _, s := range []error{hsm.ErrOverloaded, hsm.ErrUnavailable, hsm.ErrSignature, hsm.ErrKeyRetired,
		hsm.ErrUnknownKey, hsm.ErrCorrupt, hsm.ErrPolicyMismatch, context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, s) {
			return s.Error()
		}
	}
	return "backend error"
}

func hexAddr(a common.Address) string { return fourmica.Address(a).Hex() }

func (p *Pipeline) intent(a *Admission, req *Request, wallet common.Address, pay *fourmica.ClaimsV1) *policyengine.Intent {
	in := &policyengine.Intent{
		Caller:      a.Caller,
		Agent:       a.Agent,
		Wallet:      wallet,
		PayTo:       common.Address(pay.Recipient),
		ResourceURL: req.ResourceURL,
		Host:        req.Host,
		Network:     p.o.Network,
		ChainID:     p.o.Domain.ChainID(),
		Asset:       common.Address(pay.Asset),
		Amount:      pay.Amount.Big(),
		Version:     int(req.Claims.Version),
		Timestamp:   pay.Timestamp,
		TaskID:      req.TaskID,
		TaskLabels:  req.TaskLabels,
	}
	if v2 := req.Claims.V2; req.Claims.Version == fourmica.V2 && v2 != nil {
		in.ValidationRegistry = common.Address(v2.ValidationRegistry)
		in.Validator = common.Address(v2.Validator)
		in.MinScore = v2.MinValidationScore
		in.Tag = v2.RequiredValidationTag
		in.ValidationChainID = v2.ValidationChainID
	}
	return in
}

// awaitApproval files the request for approval (or finds the existing one) and long-polls it.
func (p *Pipeline) awaitApproval(ctx context.Context, a *Admission, req *Request, wallet common.Address,
	pay *fourmica.ClaimsV1, chash [32]byte, dec policyengine.Decision, base audit.Event) (ApprovalStatus, error) {
	st, err := p.submitApproval(ctx, ApprovalRequest{
		Fingerprint: approvalFingerprint(a.Agent, chash), Agent: a.Agent, Principal: a.Principal(), Wallet: wallet, Rule: dec.Rule,
		Group: dec.Group, Timeout: dec.Timeout,
		Summary: map[string]string{
			"amount": pay.Amount.Dec(), "asset": pay.Asset.Hex(), "recipient": pay.Recipient.Hex(),
			"tab_id": pay.TabID.Dec(), "req_id": pay.ReqID.Dec(), "scheme": string(req.Scheme),
			"resource": req.ResourceURL, "task_id": req.TaskID, "reason": dec.Reason,
		},
	}, dec)
	if err != nil {
		return st, err
	}
	if st.State == ApprovalWaiting {
		if st, err = p.waitApproval(ctx, st); err != nil {
			return st, err
		}
	}
	return st, approvalOutcome(st, dec)
}

// submitApproval files r for approval, or finds the approval with its fingerprint.
func (p *Pipeline) submitApproval(ctx context.Context, r ApprovalRequest, dec policyengine.Decision) (ApprovalStatus, error) {
	if p.o.Approvals == nil {
		return ApprovalStatus{}, denied(http.StatusForbidden, CodeApprovalDenied, dec.Rule, "this request needs approval and approvals are not configured")
	}
	st, err := p.o.Approvals.Submit(ctx, r)
	if errors.Is(err, ErrApprovalsFull) {
		e := fault(http.StatusServiceUnavailable, CodeOverloaded, "too many requests are waiting for approval; retry later", err)
		e.Rule, e.RetryAfter = dec.Rule, ApprovalsFullRetryAfter
		return st, e
	}
	if err != nil {
		return st, fault(http.StatusServiceUnavailable, CodeStoreUnavailable, "the approval could not be filed", err)
	}
	return st, nil
}

// waitApproval long-polls a waiting approval for at most Options.MaxWait (ended early when
// the pipeline stops).
func (p *Pipeline) waitApproval(ctx context.Context, st ApprovalStatus) (ApprovalStatus, error) {
	if p.o.MaxWait <= 0 {
		return st, nil
	}
	wctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-p.stopping:
			cancel()
		case <-wctx.Done():
		}
	}()
	st, err := p.o.Approvals.Wait(wctx, st.ID, p.o.MaxWait)
	cancel()
	if err != nil && st.ID == "" {
		return st, fault(http.StatusServiceUnavailable, CodeStoreUnavailable, "the approval could not be read", err)
	}
	return st, nil
}

// approvalOutcome is nil for an approved request, 403 approval_denied for a denied or expired
// one, and 202 approval_pending (with the approval id) while it waits.
func approvalOutcome(st ApprovalStatus, dec policyengine.Decision) error {
	switch st.State {
	case ApprovalApproved:
		return nil
	case ApprovalDenied:
		reason := "an operator denied this request, or its approval expired"
		if st.Reason != "" {
			reason = st.Reason
		}
		e := denied(http.StatusForbidden, CodeApprovalDenied, dec.Rule, reason)
		e.ApprovalID = st.ID
		return e
	default:
		return &Error{Kind: Pending, Status: http.StatusAccepted, Code: CodeApprovalPending, Rule: dec.Rule,
			ApprovalID: st.ID, Reason: "held for approval by group " + dec.Group + "; poll the approval and submit again once approved"}
	}
}

func approvalFingerprint(agent string, chash [32]byte) [32]byte {
	return claimsHash(fourmica.Scheme("approval:"+agent), chash[:])
}

// auditAsync records a decision that lets no signature out without waiting for the fsync;
// when the ledger queue is full it waits instead.
func (p *Pipeline) auditAsync(ctx context.Context, ev audit.Event) {
	err := p.o.Ledger.AuditAsync(ev)
	if errors.Is(err, ledger.ErrOverloaded) {
		_, err = p.o.Ledger.AppendAudit(ctx, ev)
	}
	if err != nil {
		p.o.Logger.Error("audit of a decision failed", "code", ev.Code, "err", err)
	}
}

// deniedByItself reports whether a policy denial may be caused by the very request an agent
// retries (it charged the budget, counted against the rate, or its timestamp aged): such a
// denial is put to the ledger as a ResumeOnly reservation first.
func deniedByItself(code string) bool {
	switch code {
	case policyengine.CodeBudgetExhausted, policyengine.CodeRateLimited, policyengine.CodeStaleTimestamp:
		return true
	}
	return false
}

// deny audits a policy denial (asynchronously: no signature leaves) and returns it.
func (p *Pipeline) deny(ctx context.Context, base audit.Event, dec policyengine.Decision) *Error {
	ev := base
	ev.Decision, ev.Code, ev.Rule, ev.Reason = "deny", dec.Code, dec.Rule, dec.Reason
	p.auditAsync(ctx, ev)
	return denied(http.StatusForbidden, dec.Code, dec.Rule, dec.Reason)
}
