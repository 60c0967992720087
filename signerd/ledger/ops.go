package ledger

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/signerd/signerd/signerd/bucketstore"

	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/audit"
)

// Audit codes Reserve writes for replay outcomes (denials use the policyengine codes).
const (
	CodeReplayConflict  = "replay_conflict"  // same (wallet, tab_id, req_id), different claims or scheme (digest)
	CodeReplayDuplicate = "replay_duplicate" // same key and claims, already signed: stored signature returned
	CodeReplayResume    = "replay_resume"    // same key and claims, reserved but never signed
	CodeSigningFailed   = "signing_failed"   // default Release code
)

// MaxClaims bounds Reservation.Claims (bytes).
const MaxClaims = 64 << 10

// Reservation is everything Reserve records for one allowed request.
type Reservation struct {
	Wallet common.Address // signing wallet
	TabID  *big.Int       // 4mica tab id, 0 ≤ TabID < 2^256
	ReqID  *big.Int       // 4mica req id, 0 ≤ ReqID < 2^256
	// Claims is the canonical encoding of the claims being signed. Its SHA-256 is the replay
	// comparison: the same key with the same Claims bytes is a retry, with other bytes a conflict.
	Claims []byte
	// Charges are the budget charges from the policy decision; all are checked, then all debited.
	Charges []policyengine.Charge

	Principal  string
	Agent      string
	PolicyHash []byte
	Rule       string   // the allow rule
	Digest     [32]byte // digest that will be signed
	Scheme     string   // "eip712" | "eip191"
	TaskID     string
	// ResumeOnly asks only for the intent already recorded under the key with the same claims
	// and digest (Duplicate or Resumable); anything else is NotResumable and nothing is written
	// or charged. For a retry the policy denied because of the very request it retries (budget,
	// rate, clock): it gets that request's signature, or a new one over the recorded digest.
	ResumeOnly bool
}

func (r *Reservation) validate() error {
	if r.TabID == nil || r.ReqID == nil || r.TabID.Sign() < 0 || r.ReqID.Sign() < 0 ||
		r.TabID.BitLen() > 256 || r.ReqID.BitLen() > 256 {
		return fmt.Errorf("%w: tab_id and req_id must be in [0, 2^256)", ErrInvalid)
	}
	if len(r.Claims) == 0 || len(r.Claims) > MaxClaims {
		return fmt.Errorf("%w: claims length %d not in [1, %d]", ErrInvalid, len(r.Claims), MaxClaims)
	}
	if len(r.PolicyHash) > 64 || len(r.Charges) > 256 {
		return fmt.Errorf("%w: policy hash or charge list too long", ErrInvalid)
	}
	for i, c := range r.Charges {
		if err := validCharge(c); err != nil {
			return fmt.Errorf("%w: charge %d: %v", ErrInvalid, i, err)
		}
	}
	return nil
}

func validCharge(c policyengine.Charge) error {
	switch {
	case c.Key == "" || strings.IndexByte(c.Key, 0) >= 0 || len(c.Key) > 4096:
		return fmt.Errorf("bad budget key %q", c.Key)
	case c.Window < 0:
		return fmt.Errorf("negative window")
	case c.Amount == nil || c.Amount.Sign() < 0:
		return fmt.Errorf("amount must be ≥ 0")
	case c.Limit == nil || c.Limit.Sign() < 0:
		return fmt.Errorf("limit must be ≥ 0")
	}
	return nil
}

// Outcome is the kind of a Reserve result.
type Outcome int

// Reserve outcomes.
const (
	// Reserved: new record, charges debited. Sign, then Commit (or Release on failure).
	Reserved Outcome = iota + 1
	// Duplicate: same key and claims, already signed. Return Result.Signature; nothing was charged.
	Duplicate
	// Resumable: same key and claims, reserved but never signed (e.g. a crash between reserve and
	// commit). The caller may sign Result.RecordID now; charges stay as they were (no double charge).
	Resumable
	// Conflict: same key, different claims → 409 replay_conflict. Nothing written but the audit record.
	Conflict
	// BudgetExhausted: a charge does not fit; Result.Budget names it. Nothing written but the audit record.
	BudgetExhausted
	// NotResumable: a ResumeOnly reservation found no intent with its claims to resume. Nothing
	// written, no audit record: the caller's own denial stands and the caller audits it.
	NotResumable
)

func (o Outcome) String() string {
	switch o {
	case Reserved:
		return "reserved"
	case Duplicate:
		return "duplicate"
	case Resumable:
		return "resumable"
	case Conflict:
		return "conflict"
	case BudgetExhausted:
		return "budget_exhausted"
	case NotResumable:
		return "not_resumable"
	}
	return "invalid"
}

// Result is the outcome of Reserve.
type Result struct {
	Outcome  Outcome
	RecordID RecordID // Reserved, Duplicate, Resumable; for Conflict the record holding the key
	// Signature is the stored signature (Duplicate only).
	Signature []byte
	// Digest is the stored record's digest (Duplicate, Resumable): sign this one.
	Digest [32]byte
	// Budget identifies the charge that did not fit (BudgetExhausted only); Budget.Code() is the
	// denial code (budget_exhausted or rate_limited).
	Budget *policyengine.BudgetError
	// Charge is the charge that did not fit and Used the counter's usage before it, including
	// earlier charges of the same request on that counter (BudgetExhausted only).
	Charge *policyengine.Charge
	Used   *big.Int
	// AuditSeq is the seq of the audit record written for this call.
	AuditSeq uint64

	op *opBase // the Reserve call's op, for Durable
}

type reserveOp struct {
	opBase
	l   *Ledger
	r   Reservation
	h   [32]byte
	res Result
}

// earlyOK: only an intent to be signed may be released before the fsync (the caller signs while
// the group is made durable, and sends the signature only once Result.Durable returned nil).
// Duplicate signatures, conflicts and denials wait for durability.
func (o *reserveOp) earlyOK() bool { return o.res.Outcome == Reserved || o.res.Outcome == Resumable }

// wroteNothing: a NotResumable answer writes nothing.
func (o *reserveOp) wroteNothing() bool {
	return o.err == nil && o.res.AuditSeq == 0 && o.res.Outcome == NotResumable
}

// lazy: a NotResumable answer wrote nothing and needs no fsync.
func (o *reserveOp) lazy() bool { return o.err == nil && o.res.Outcome == NotResumable }

// Reserve decides a request's intent and records it: it checks the replay key and every budget
// charge and, if all pass, writes the payment record (status reserved), the replay entry and the
// debits with one audit record, in one group. See Outcome for the results. Every outcome writes
// exactly one audit record (kind decision): allow (Reserved, with the charges), allow with code
// replay_duplicate or replay_resume, or deny with replay_conflict / the budget's code.
//
// A Reserved or Resumable result is returned as soon as the intent is decided, before it is
// durable, so that the caller signs while the group's write-ahead-log append is fsynced: the
// caller must call Result.Durable and send the signature only if it returned nil. Every other
// outcome (Duplicate, Conflict, BudgetExhausted, errors) is returned only once durable.
func (l *Ledger) Reserve(ctx context.Context, r Reservation) (Result, error) {
	if err := r.validate(); err != nil {
		return Result{}, err
	}
	o := &reserveOp{opBase: newBase(false), l: l, r: r, h: sha256.Sum256(r.Claims)}
	o.early = make(chan struct{})
	if err := l.submit(ctx, o); err != nil {
		return Result{}, err
	}
	o.res.op = &o.opBase
	return o.res, nil
}

// Durable waits until the intent of a Reserved or Resumable result is on disk. It returns nil
// once it is, the group's *StoreError if its write failed (the signature must then be withheld),
// or ctx's error (the caller gave up waiting: withhold the signature too). For other outcomes it
// returns nil at once.
func (r Result) Durable(ctx context.Context) error {
	if r.op == nil {
		return nil
	}
	select {
	case <-r.op.done:
		return r.op.err
	case <-ctx.Done():
		select {
		case <-r.op.done:
			return r.op.err
		default:
			return ctx.Err()
		}
	}
}

func (o *reserveOp) event() audit.Event {
	r := &o.r
	ev := audit.Event{Kind: audit.KindDecision, Principal: r.Principal, Agent: r.Agent,
		Wallet: r.Wallet.Hex(), TabID: r.TabID.String(), ReqID: r.ReqID.String(),
		PolicyHash: r.PolicyHash, Rule: r.Rule, Digest: r.Digest[:], ClaimsHash: o.h[:],
		Scheme: r.Scheme}
	if r.TaskID != "" {
		ev.Attrs = map[string]string{"task_id": r.TaskID}
	}
	return ev
}

func (o *reserveOp) apply(tx *bucketstore.Tx, now time.Time) error {
	r := &o.r
	o.res = Result{}
	rk := replayKey(r.Wallet, r.TabID, r.ReqID)
	ev := o.event()

	// 1. Replay.
	if done, err := o.replay(tx, now, rk, ev); done || err != nil {
		return err
	}
	if r.ResumeOnly { // no intent with these claims to resume: the caller's denial stands
		o.res.Outcome = NotResumable
		return nil
	}

	// 2. Budgets: check every charge (charges of this request on the same counter add up).
	type ck struct {
		key string
		w   time.Duration
	}
	pending := map[ck]*big.Int{}
	for _, c := range r.Charges {
		k := ck{c.Key, c.Window}
		p := pending[k]
		if p == nil {
			p = new(big.Int)
			pending[k] = p
		}
		p.Add(p, c.Amount)
		used := o.l.usage.current(c.Key, c.Window, now)
		if new(big.Int).Add(used, p).Cmp(c.Limit) > 0 {
			cc := c
			o.res.Outcome, o.res.Charge = BudgetExhausted, &cc
			o.res.Used = used.Add(used, p).Sub(used, c.Amount)
			o.res.Budget = &policyengine.BudgetError{Budget: c.Budget, Key: c.Key, Window: c.Window, Count: c.Count}
			ev.Decision, ev.Code, ev.Rule = "deny", o.res.Budget.Code(), c.Budget
			ev.Reason = fmt.Sprintf("budget %s (key %s, window %s) would exceed its limit %s", c.Budget, c.Key, c.Window, c.Limit)
			return o.audit(tx, now, ev)
		}
	}

	// 3. Write: record, replay entry, debits, audit.
	// Ids come from the committer's counter, which never goes back even if this transaction
	// fails and is backed by a durable high-water mark across restarts (see nextID), so an id
	// released before its group is durable (Reserve) can never name another record.
	seq, err := o.l.nextID(tx)
	if err != nil {
		return err
	}
	rec := &PaymentRecord{ID: RecordID(seq), Status: StatusReserved, Created: now, Updated: now,
		Principal: r.Principal, Agent: r.Agent, Wallet: r.Wallet, TabID: r.TabID, ReqID: r.ReqID,
		ClaimsHash: o.h, Claims: r.Claims, PolicyHash: r.PolicyHash, Rule: r.Rule, Digest: r.Digest,
		Scheme: r.Scheme, TaskID: r.TaskID}
	for _, c := range r.Charges {
		b := policyengine.BucketIndex(c.Window, now)
		rec.Charges = append(rec.Charges, ChargeRecord{Budget: c.Budget, Key: c.Key, Window: c.Window,
			Bucket: b, Amount: new(big.Int).Set(c.Amount), Count: c.Count})
		if c.Amount.Sign() > 0 {
			if err := o.l.addUsage(tx, c.Key, c.Window, b, c.Amount); err != nil {
				return err
			}
		}
	}
	if err := putRecord(tx, rec); err != nil {
		return err
	}
	if err := tx.Bucket(bucketPending).Put(rec.ID.key(), nil); err != nil {
		return err
	}
	o.l.hot.put(rec)
	if err := tx.Bucket(bucketReplay).Put(rk, replayEntry{o.h, rec.ID, StatusReserved.byte()}.bytes()); err != nil {
		return err
	}
	o.res.Outcome, o.res.RecordID, o.res.Digest = Reserved, rec.ID, r.Digest
	ev.Decision, ev.RecordID, ev.Charges = "allow", uint64(rec.ID), auditCharges(rec.Charges)
	return o.audit(tx, now, ev)
}

// replay answers a request whose key is in use: done reports that it was answered (Conflict,
// Duplicate, Resumable, or NotResumable for a ResumeOnly request with other claims).
func (o *reserveOp) replay(tx *bucketstore.Tx, now time.Time, rk []byte, ev audit.Event) (bool, error) {
	v := tx.Bucket(bucketReplay).Get(rk)
	if v == nil {
		return false, nil
	}
	e, err := parseReplay(rk, v)
	if err != nil {
		o.err = err
		return true, nil
	}
	if e.status == StatusReleased.byte() {
		return false, nil
	}
	o.res.RecordID, ev.RecordID = e.id, uint64(e.id)
	var rec *PaymentRecord
	if e.status != replayPruned {
		if rec, err = getRecord(tx, e.id); err != nil {
			o.err = fmt.Errorf("replay entry points to record %d: %w", e.id, err)
			return true, nil
		}
	}
	switch {
	case o.r.ResumeOnly && (rec == nil || e.claims != o.h || rec.Digest != o.r.Digest):
		o.res = Result{Outcome: NotResumable}
		return true, nil
	case rec == nil:
		// Signed long ago and pruned (archived, see prune.go): never signed or charged again.
		o.res.Outcome = Conflict
		ev.Decision, ev.Code = "deny", CodeReplayConflict
		ev.Reason = fmt.Sprintf("(wallet, tab_id, req_id) was used by record %d, signed and since pruned (archived): it is not signed again", e.id)
	case e.claims != o.h || rec.Digest != o.r.Digest: // other claims, or the same claims under another scheme
		o.res.Outcome = Conflict
		ev.Decision, ev.Code = "deny", CodeReplayConflict
		ev.Reason = fmt.Sprintf("(wallet, tab_id, req_id) already used by record %d with different claims or scheme", e.id)
	case rec.Status == StatusSigned:
		o.res.Outcome, o.res.Signature, o.res.Digest = Duplicate, rec.Signature, rec.Digest
		ev.Decision, ev.Code, ev.Signature = "allow", CodeReplayDuplicate, rec.Signature
		ev.Reason = "retry of a signed request: stored signature returned"
	default:
		o.res.Outcome, o.res.Digest = Resumable, rec.Digest
		ev.Decision, ev.Code = "allow", CodeReplayResume
		ev.Reason = "retry of a reserved, unsigned request (possibly signed before a restart): re-signed, not charged again"
	}
	return true, o.audit(tx, now, ev)
}

func (o *reserveOp) audit(tx *bucketstore.Tx, now time.Time, ev audit.Event) error {
	ar, err := audit.Append(tx, now, ev)
	if err != nil {
		return err
	}
	o.res.AuditSeq = ar.Seq
	return nil
}

func auditCharges(cs []ChargeRecord) []audit.Charge {
	out := make([]audit.Charge, len(cs))
	for i, c := range cs {
		out[i] = audit.Charge{Key: c.Key, Window: uint64(c.Window / time.Second), Amount: c.Amount.String(), Bucket: c.Bucket}
	}
	return out
}

// CommitResult is the outcome of Commit.
type CommitResult struct {
	// Signature is the durable signature for the record: the one to send. It differs from the
	// signature passed to Commit only when the record was already signed (two concurrent
	// requests for the same key both resumed it); then the first durable one wins.
	Signature []byte
	// AlreadySigned reports that the record was signed before this call (nothing written).
	AlreadySigned bool
	AuditSeq      uint64
}

type commitOp struct {
	opBase
	l      *Ledger
	id     RecordID
	sig    []byte
	lazyOp bool // RecordSignature: nobody waits for durability
	res    CommitResult
}

// Commit makes sig durable for record id (status signed, signature stored, audit record of kind
// signature) in one transaction. Only after Commit returns nil may
// the signature leave the daemon, and the daemon must send CommitResult.Signature. Errors:
// ErrNotFound, ErrReleased (the reservation was released: do not send), ErrInvalid (empty sig).
func (l *Ledger) Commit(ctx context.Context, id RecordID, sig []byte) (CommitResult, error) {
	if len(sig) == 0 || len(sig) > 1024 {
		return CommitResult{}, fmt.Errorf("%w: signature length %d", ErrInvalid, len(sig))
	}
	o := &commitOp{opBase: newBase(false), l: l, id: id, sig: append([]byte(nil), sig...)}
	if err := l.submit(ctx, o); err != nil {
		return CommitResult{}, err
	}
	return o.res, nil
}

// RecordSignature is Commit without the fsync: it returns once sig is applied (visible to every
// later read and write: an identical retry gets it as a Duplicate), and the signature reaches
// the disk with the next group that syncs. The caller sends CommitResult.Signature once the
// intent is durable (Result.Durable); a crash before the signature is on disk leaves the intent
// possibly signed (see the package comment). Errors as for Commit.
func (l *Ledger) RecordSignature(ctx context.Context, id RecordID, sig []byte) (CommitResult, error) {
	if len(sig) == 0 || len(sig) > 1024 {
		return CommitResult{}, fmt.Errorf("%w: signature length %d", ErrInvalid, len(sig))
	}
	o := &commitOp{opBase: newBase(false), l: l, id: id, sig: append([]byte(nil), sig...), lazyOp: true}
	if err := l.submit(ctx, o); err != nil {
		return CommitResult{}, err
	}
	return o.res, nil
}

func (o *commitOp) earlyOK() bool { return false }

func (o *commitOp) lazy() bool { return o.lazyOp }

func (o *commitOp) wroteNothing() bool { return false }

func (o *commitOp) apply(tx *bucketstore.Tx, now time.Time) error {
	o.res = CommitResult{}
	var rec *PaymentRecord
	var err error
	if h := o.l.hot.take(o.id); h != nil && isPending(tx, o.id) {
		// Reserved by this process and still pending (neither signed nor released): the fields
		// the signature's audit record needs are in memory; no need to read and decode it.
		rec = h
	} else {
		rec, err = getRecord(tx, o.id)
	}
	if err != nil {
		o.err = err
		return nil
	}
	switch rec.Status {
	case StatusReleased:
		o.err = ErrReleased
		return nil
	case StatusSigned:
		o.res = CommitResult{Signature: rec.Signature, AlreadySigned: true}
		return nil
	}
	// The signature goes to bucketSigs (ordered appends); the record and the replay entry stay
	// as they are (the entry's 'r' plus a signature means signed).
	if err := putSignature(tx, rec.ID, now, o.sig); err != nil {
		return err
	}
	if err := tx.Bucket(bucketPending).Delete(rec.ID.key()); err != nil {
		return err
	}
	ar, err := audit.Append(tx, now, audit.Event{Kind: audit.KindSignature, RecordID: uint64(rec.ID),
		Principal: rec.Principal, Agent: rec.Agent, Wallet: rec.Wallet.Hex(), TabID: rec.TabID.String(),
		ReqID: rec.ReqID.String(), Digest: rec.Digest[:], Signature: o.sig, Scheme: rec.Scheme,
		ClaimsHash: rec.ClaimsHash[:]})
	if err != nil {
		return err
	}
	o.res = CommitResult{Signature: o.sig, AuditSeq: ar.Seq}
	return nil
}

// setReplayStatus updates the replay entry of rec if it still points at rec.
func setReplayStatus(tx *bucketstore.Tx, rec *PaymentRecord, s Status) error {
	rb := tx.Bucket(bucketReplay)
	rk := replayKey(rec.Wallet, rec.TabID, rec.ReqID)
	v := rb.Get(rk)
	if v == nil {
		return nil
	}
	e, err := parseReplay(rk, v)
	if err != nil || e.id != rec.ID {
		return nil
	}
	e.status = s.byte()
	return rb.Put(rk, e.bytes())
}

type releaseOp struct {
	opBase
	l            *Ledger
	id           RecordID
	code, reason string
}

// Release records that signing failed after the reservation: the charges are refunded to the
// buckets they were added to (a bucket already pruned has nothing left to refund), the record is
// marked released with code and reason, the replay entry is marked released so a retry can
// reserve again, and two audit records (signing_failed, reservation_released) are written, all in
// one transaction. Releasing a released record is a no-op; a signed record cannot be released
// (ErrAlreadySigned). code defaults to "signing_failed".
func (l *Ledger) Release(ctx context.Context, id RecordID, code, reason string) error {
	if code == "" {
		code = CodeSigningFailed
	}
	return l.submit(ctx, &releaseOp{opBase: newBase(false), l: l, id: id, code: code, reason: reason})
}

func (o *releaseOp) earlyOK() bool { return false }

func (o *releaseOp) lazy() bool { return false }

func (o *releaseOp) wroteNothing() bool { return false }

func (o *releaseOp) apply(tx *bucketstore.Tx, now time.Time) error {
	o.l.hot.take(o.id)
	rec, err := getRecord(tx, o.id)
	if err != nil {
		o.err = err
		return nil
	}
	switch rec.Status {
	case StatusReleased:
		return nil
	case StatusSigned:
		o.err = ErrAlreadySigned
		return nil
	}
	return o.l.releaseRecord(tx, now, rec, o.code, o.reason)
}

// releaseRecord refunds rec's charges, marks it released, frees its replay key, drops it from
// the pending index and writes the two audit records. rec must be reserved.
func (l *Ledger) releaseRecord(tx *bucketstore.Tx, now time.Time, rec *PaymentRecord, code, reason string) error {
	for _, c := range rec.Charges {
		if c.Amount.Sign() == 0 {
			continue
		}
		if err := l.addUsage(tx, c.Key, c.Window, c.Bucket, new(big.Int).Neg(c.Amount)); err != nil {
			return err
		}
	}
	rec.Status, rec.Code, rec.Reason, rec.Updated = StatusReleased, code, reason, now
	if err := putRecord(tx, rec); err != nil {
		return err
	}
	if err := setReplayStatus(tx, rec, StatusReleased); err != nil {
		return err
	}
	if err := tx.Bucket(bucketPending).Delete(rec.ID.key()); err != nil {
		return err
	}
	return auditRelease(tx, now, rec, code, reason, "charges refunded, replay key freed")
}

// auditRelease writes the signing_failed and reservation_released records of a release.
func auditRelease(tx *bucketstore.Tx, now time.Time, rec *PaymentRecord, code, reason, what string) error {
	base := audit.Event{RecordID: uint64(rec.ID), Principal: rec.Principal, Agent: rec.Agent,
		Wallet: rec.Wallet.Hex(), TabID: rec.TabID.String(), ReqID: rec.ReqID.String(), Digest: rec.Digest[:]}
	ev := base
	ev.Kind, ev.Code, ev.Reason = audit.KindSigningFailed, code, reason
	if _, err := audit.Append(tx, now, ev); err != nil {
		return err
	}
	ev = base
	ev.Kind, ev.Charges, ev.Reason = audit.KindReservationReleased, auditCharges(rec.Charges), what
	_, err := audit.Append(tx, now, ev)
	return err
}

// CodeOrphaned is the release code ReleaseUnsent uses.
const CodeOrphaned = "orphaned_reservation"

type unsentOp struct {
	opBase
	l              *Ledger
	scheme, reason string
	n              int
}

func (o *unsentOp) earlyOK() bool      { return false }
func (o *unsentOp) wroteNothing() bool { return false }
func (o *unsentOp) lazy() bool         { return false }

// ReleaseUnsent releases, as Release does (refund, free the replay key, audit signing_failed with
// code orphaned_reservation and reservation_released), every intent of the given scheme that has
// neither a signature nor a release, in one transaction, and returns how many it released.
//
// It is for schemes whose signature never leaves the daemon before it is committed durably
// (collateral transactions are broadcast only after Commit): at start-up, before serving, such
// an intent was certainly not sent. Intents of other schemes are possibly signed and stay.
func (l *Ledger) ReleaseUnsent(ctx context.Context, scheme, reason string) (int, error) {
	if scheme == "" {
		return 0, fmt.Errorf("%w: scheme required", ErrInvalid)
	}
	o := &unsentOp{opBase: newBase(false), l: l, scheme: scheme, reason: reason}
	err := l.submit(ctx, o)
	return o.n, err
}

func (o *unsentOp) apply(tx *bucketstore.Tx, now time.Time) error {
	o.n = 0
	var ids []RecordID
	c := tx.Bucket(bucketPending).Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		if len(k) != 8 {
			o.err = corruptf("pending key %x", k)
			return nil
		}
		ids = append(ids, RecordID(binary.BigEndian.Uint64(k)))
	}
	for _, id := range ids {
		rec, err := getRecord(tx, id)
		if err != nil {
			o.err = fmt.Errorf("pending record %d: %w", id, err)
			return o.err // partial releases must not commit without the rest
		}
		if rec.Status != StatusReserved || rec.Scheme != o.scheme {
			continue
		}
		if err := o.l.releaseRecord(tx, now, rec, CodeOrphaned, o.reason); err != nil {
			return err
		}
		o.n++
	}
	return c.Err()
}

// fillPending rebuilds the pending index from the records (files written before it existed).
func fillPending(tx *bucketstore.Tx) error {
	p := tx.Bucket(bucketPending)
	return tx.Bucket(bucketRecords).ForEach(func(k, v []byte) error {
		if len(k) != 8 {
			return corruptf("record key %x", k)
		}
		r, err := loadRecord(tx, RecordID(binary.BigEndian.Uint64(k)), v)
		if err != nil {
			return err
		}
		if r.Status == StatusReserved {
			return p.Put(k, nil)
		}
		return nil
	})
}

type stateOp struct {
	opBase
	key   string
	value []byte // nil deletes
	ev    audit.Event
	rec   audit.Record
}

// PutState sets key to value (nil value deletes the key) and appends ev to the audit log in one
// durable transaction: for the kill switch, approvals and other operator state. ev.Kind must be
// a valid audit kind. When it returns nil both are on disk.
func (l *Ledger) PutState(ctx context.Context, key string, value []byte, ev audit.Event) error {
	if key == "" || len(key) > 4096 {
		return fmt.Errorf("%w: state key length %d", ErrInvalid, len(key))
	}
	if !ev.Kind.Valid() {
		return fmt.Errorf("%w: audit kind %q", ErrInvalid, ev.Kind)
	}
	o := &stateOp{opBase: newBase(false), key: key, ev: ev, value: value}
	if value != nil {
		o.value = append([]byte{}, value...)
	}
	// Bind the value to the chain (see verifystate.go).
	attrs := make(map[string]string, len(ev.Attrs)+2)
	for k, v := range ev.Attrs {
		attrs[k] = v
	}
	attrs[attrStateKey], attrs[attrStateSHA256] = key, ""
	if value != nil {
		h := sha256.Sum256(value)
		attrs[attrStateSHA256] = hex.EncodeToString(h[:])
	}
	o.ev.Attrs = attrs
	return l.submit(ctx, o)
}

func (o *stateOp) earlyOK() bool { return false }

func (o *stateOp) lazy() bool { return false }

func (o *stateOp) wroteNothing() bool { return false }

func (o *stateOp) apply(tx *bucketstore.Tx, now time.Time) error {
	b := tx.Bucket(bucketState)
	var err error
	if o.value == nil {
		err = b.Delete([]byte(o.key))
	} else {
		err = b.Put([]byte(o.key), o.value)
	}
	if err != nil {
		return err
	}
	o.rec, err = audit.Append(tx, now, o.ev)
	return err
}

type auditOp struct {
	opBase
	ev  audit.Event
	rec audit.Record
}

// AppendAudit appends ev to the audit log and waits until it is durable: for events with no
// ledger change (policy reload, key operations, approval steps, denials that must be durable
// before the response).
func (l *Ledger) AppendAudit(ctx context.Context, ev audit.Event) (audit.Record, error) {
	if !ev.Kind.Valid() {
		return audit.Record{}, fmt.Errorf("%w: audit kind %q", ErrInvalid, ev.Kind)
	}
	o := &auditOp{opBase: newBase(false), ev: ev}
	err := l.submit(ctx, o)
	return o.rec, err
}

// AuditAsync queues ev and returns at once without waiting for durability: the cheap way to
// audit a policy denial (no signature leaves, so the response need not wait for the fsync). The
// record is written with the next group. It returns ErrClosed after Close, the ledger's sticky
// *StoreError after a failed group (see Health), and ErrOverloaded when the queue is full (the
// record is then NOT queued; the caller may AppendAudit instead). Write failures are counted in
// Stats.AsyncErrors.
func (l *Ledger) AuditAsync(ev audit.Event) error {
	if !ev.Kind.Valid() {
		return fmt.Errorf("%w: audit kind %q", ErrInvalid, ev.Kind)
	}
	return l.enqueue(nil, &auditOp{opBase: newBase(true), ev: ev})
}

// ErrOverloaded is returned by AuditAsync when the queue is full.
var ErrOverloaded = errors.New("ledger: queue full")

func (o *auditOp) earlyOK() bool { return false }

func (o *auditOp) lazy() bool { return o.async }

func (o *auditOp) wroteNothing() bool { return false }

func (o *auditOp) apply(tx *bucketstore.Tx, now time.Time) error {
	var err error
	o.rec, err = audit.Append(tx, now, o.ev)
	return err
}
