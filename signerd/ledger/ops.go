package ledger

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/ethereum/go-ethereum/common"
	bolt "go.etcd.io/bbolt"

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
}

type reserveOp struct {
	opBase
	l        *Ledger
	r        Reservation
	h        [32]byte
	deferred bool // ReserveDeferred: a Reserved outcome is held in memory, not written
	res      Result
}

// earlyOK: only a reservation to be signed may be released before the fsync (its Commit comes
// after this group and fails if this group did not commit). Duplicate signatures, conflicts and
// denials wait for durability.
func (o *reserveOp) earlyOK() bool { return o.res.Outcome == Reserved || o.res.Outcome == Resumable }

// wroteNothing: a deferred Reserved outcome and a Resumable of a pending deferred reservation
// write nothing (AuditSeq 0 and no error means no audit record was appended).
func (o *reserveOp) wroteNothing() bool {
	return o.err == nil && o.res.AuditSeq == 0 &&
		((o.deferred && o.res.Outcome == Reserved) || o.res.Outcome == Resumable)
}

// Reserve checks the replay key and every budget charge, and if all pass writes the payment
// record (status reserved), the replay entry and the debits, with one audit record, durably, in
// one transaction. See Outcome for the results. Every outcome writes exactly one audit record
// (kind decision): allow (Reserved, with the charges), allow with code replay_duplicate or
// replay_resume, or deny with replay_conflict / the budget's code.
func (l *Ledger) Reserve(ctx context.Context, r Reservation) (Result, error) {
	if err := r.validate(); err != nil {
		return Result{}, err
	}
	o := &reserveOp{opBase: newBase(false), l: l, r: r, h: sha256.Sum256(r.Claims)}
	if err := l.submit(ctx, o); err != nil {
		return Result{}, err
	}
	return o.res, nil
}

// ReserveEarly is Reserve for callers that overlap signing with the reservation's fsync. It
// returns a Reserved or Resumable result as soon as the reservation has been applied in its
// group's transaction, before that transaction is fsynced; every other outcome (Duplicate,
// Conflict, BudgetExhausted, errors) is returned only once durable, as with Reserve.
//
// The caller may sign at once but must still send a signature only after Commit returned nil.
// Commit is always applied in a later transaction than the reservation, so it succeeds only if
// the reservation's transaction committed: if that transaction failed, the ledger has stopped
// taking writes (see the package comment), so Commit and Release return its *StoreError and the
// signature is withheld. After a restart the reservation is either absent (Commit returns
// ErrNotFound) or, if the failed group reached the disk anyway, a reserved record that
// ReleaseOrphans releases; its id is never given to another record. This hides one fsync per
// request behind the signing time.
func (l *Ledger) ReserveEarly(ctx context.Context, r Reservation) (Result, error) {
	if err := r.validate(); err != nil {
		return Result{}, err
	}
	o := &reserveOp{opBase: newBase(false), l: l, r: r, h: sha256.Sum256(r.Claims)}
	o.early = make(chan struct{})
	if err := l.submit(ctx, o); err != nil {
		return Result{}, err
	}
	return o.res, nil
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

func (o *reserveOp) apply(tx *bolt.Tx, now time.Time) error {
	r := &o.r
	o.res = Result{}
	rk := replayKey(r.Wallet, r.TabID, r.ReqID)
	ev := o.event()

	// 1. Replay: a pending deferred reservation of the key first, then the file.
	if d := o.l.pend.getKey(string(rk)); d != nil {
		o.res.RecordID, ev.RecordID = d.rec.ID, uint64(d.rec.ID)
		if d.rec.ClaimsHash != o.h || d.rec.Digest != r.Digest {
			o.res.Outcome = Conflict
			ev.Decision, ev.Code = "deny", CodeReplayConflict
			ev.Reason = fmt.Sprintf("(wallet, tab_id, req_id) in use by pending record %d with different claims or scheme", d.rec.ID)
			return o.audit(tx, now, ev)
		}
		// An identical request is in flight: same record; nothing to write (its decision is
		// written when it is committed or released).
		o.res.Outcome, o.res.Digest = Resumable, d.rec.Digest
		return nil
	}
	if v := tx.Bucket(bucketReplay).Get(rk); v != nil {
		e, err := parseReplay(rk, v)
		if err != nil {
			o.err = err
			return nil
		}
		if e.status == replayPruned {
			// Signed long ago and pruned (archived, see prune.go): never signed or charged again.
			o.res.Outcome, o.res.RecordID, ev.RecordID = Conflict, e.id, uint64(e.id)
			ev.Decision, ev.Code = "deny", CodeReplayConflict
			ev.Reason = fmt.Sprintf("(wallet, tab_id, req_id) was used by record %d, signed and since pruned (archived): it is not signed again", e.id)
			return o.audit(tx, now, ev)
		}
		if e.status != StatusReleased.byte() {
			rec, err := getRecord(tx, e.id)
			if err != nil {
				o.err = fmt.Errorf("replay entry points to record %d: %w", e.id, err)
				return nil
			}
			o.res.RecordID, ev.RecordID = e.id, uint64(e.id)
			switch {
			case e.claims != o.h || rec.Digest != r.Digest: // other claims, or the same claims under another scheme
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
				ev.Reason = "retry of a reserved, unsigned request"
			}
			return o.audit(tx, now, ev)
		}
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
		used, err := usageTx(tx, c.Key, c.Window, now)
		if err != nil {
			o.err = err
			return nil
		}
		used.Add(used, o.l.pend.usage(c.Key, c.Window, policyengine.WindowFirstBucket(c.Window, now)))
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
	// released early (ReserveEarly, ReserveDeferred) can never name another record.
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
		if c.Amount.Sign() > 0 && !o.deferred {
			if err := addUsage(tx, c.Key, c.Window, b, c.Amount); err != nil {
				return err
			}
		}
	}
	if o.deferred {
		rec.TabID, rec.ReqID = new(big.Int).Set(r.TabID), new(big.Int).Set(r.ReqID)
		rec.Claims, rec.PolicyHash = append([]byte(nil), r.Claims...), append([]byte(nil), r.PolicyHash...)
		o.l.pend.add(&deferredRes{rec: rec, rk: string(rk)})
		o.res.Outcome, o.res.RecordID, o.res.Digest = Reserved, rec.ID, r.Digest
		return nil
	}
	if err := putRecord(tx, rec); err != nil {
		return err
	}
	if err := appendOnly(tx.Bucket(bucketPending)).Put(rec.ID.key(), nil); err != nil {
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

func (o *reserveOp) audit(tx *bolt.Tx, now time.Time, ev audit.Event) error {
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
	l        *Ledger
	id       RecordID
	sig      []byte
	deferred bool // the record was a pending deferred reservation
	res      CommitResult
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

func (o *commitOp) earlyOK() bool { return false }

func (o *commitOp) wroteNothing() bool { return false }

func (o *commitOp) apply(tx *bolt.Tx, now time.Time) error {
	o.res, o.deferred = CommitResult{}, false
	var rec *PaymentRecord
	var err error
	if h := o.l.hot.take(o.id); h != nil && isPending(tx, o.id) {
		// Reserved by this process and still pending (neither signed nor released): the fields
		// the signature's audit record needs are in memory; no need to read and decode it.
		rec = h
	} else {
		rec, err = getRecord(tx, o.id)
	}
	if errors.Is(err, ErrNotFound) {
		if d := o.l.pend.get(o.id); d != nil {
			// A deferred reservation: write it (record, replay entry, debits, decision) now.
			if err := writeDeferred(tx, now, d, true); err != nil {
				return err
			}
			o.l.pend.remove(o.id)
			o.deferred = true
			rec, err = d.rec, nil
		}
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
func setReplayStatus(tx *bolt.Tx, rec *PaymentRecord, s Status) error {
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

func (o *releaseOp) wroteNothing() bool { return false }

func (o *releaseOp) apply(tx *bolt.Tx, now time.Time) error {
	o.l.hot.take(o.id)
	rec, err := getRecord(tx, o.id)
	if errors.Is(err, ErrNotFound) {
		if d := o.l.pend.get(o.id); d != nil {
			// A deferred reservation: nothing was charged on disk; keep its history.
			cp := *d.rec
			cp.Status, cp.Code, cp.Reason, cp.Updated = StatusReleased, o.code, o.reason, now
			if err := writeDeferred(tx, now, &deferredRes{rec: &cp, rk: d.rk}, false); err != nil {
				return err
			}
			o.l.pend.remove(o.id)
			return auditRelease(tx, now, &cp, o.code, o.reason, "reservation dropped (deferred: never charged on disk)")
		}
	}
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
	return releaseRecord(tx, now, rec, o.code, o.reason)
}

// releaseRecord refunds rec's charges, marks it released, frees its replay key, drops it from
// the pending index and writes the two audit records. rec must be reserved.
func releaseRecord(tx *bolt.Tx, now time.Time, rec *PaymentRecord, code, reason string) error {
	for _, c := range rec.Charges {
		if c.Amount.Sign() == 0 {
			continue
		}
		if err := addUsage(tx, c.Key, c.Window, c.Bucket, new(big.Int).Neg(c.Amount)); err != nil {
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
func auditRelease(tx *bolt.Tx, now time.Time, rec *PaymentRecord, code, reason, what string) error {
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

// CodeOrphaned is the release code ReleaseOrphans uses.
const CodeOrphaned = "orphaned_reservation"

type orphansOp struct {
	opBase
	reason string
	max    int
	n      int
}

func (o *orphansOp) earlyOK() bool { return false }

func (o *orphansOp) wroteNothing() bool { return false }

// ReleaseOrphans releases every record still reserved — neither signed nor released — as Release
// does (refund, free the replay key, audit signing_failed with code orphaned_reservation and
// reservation_released), at most max records per call (max ≤ 0: 10,000), in one transaction,
// and returns how many it released.
//
// Call it at start-up, before serving, when no request can be in flight: a record left reserved
// by a crash between Reserve and Commit never had its signature sent, so releasing it gives its
// budget back (lifetime counters would otherwise stay charged) and a retry reserves afresh.
// Calling it while requests are being signed would make their Commit fail with ErrReleased (safe,
// but those requests fail).
func (l *Ledger) ReleaseOrphans(ctx context.Context, reason string, max int) (int, error) {
	if max <= 0 {
		max = 10000
	}
	o := &orphansOp{opBase: newBase(false), reason: reason, max: max}
	err := l.submit(ctx, o)
	return o.n, err
}

func (o *orphansOp) apply(tx *bolt.Tx, now time.Time) error {
	o.n = 0
	var ids []RecordID
	c := tx.Bucket(bucketPending).Cursor()
	for k, _ := c.First(); k != nil && len(ids) < o.max; k, _ = c.Next() {
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
			return errRerunWith(o) // partial releases must not commit without the rest
		}
		if rec.Status != StatusReserved {
			if err := tx.Bucket(bucketPending).Delete(id.key()); err != nil {
				return err
			}
			continue
		}
		if err := releaseRecord(tx, now, rec, CodeOrphaned, o.reason); err != nil {
			return err
		}
		o.n++
	}
	return nil
}

// errRerunWith returns the op's own error as the apply failure, so the group is re-run without
// the op and the op reports it.
func errRerunWith(o op) error { return o.base().err }

// fillPending rebuilds the pending index from the records (files written before it existed).
func fillPending(tx *bolt.Tx) error {
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
	return l.submit(ctx, o)
}

func (o *stateOp) earlyOK() bool { return false }

func (o *stateOp) wroteNothing() bool { return false }

func (o *stateOp) apply(tx *bolt.Tx, now time.Time) error {
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
	o := &auditOp{opBase: newBase(true), ev: ev}
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return ErrClosed
	}
	if e := l.fatal.Load(); e != nil {
		return e
	}
	select {
	case l.q <- o:
		return nil
	default:
		return ErrOverloaded
	}
}

// ErrOverloaded is returned by AuditAsync when the queue is full.
var ErrOverloaded = errors.New("ledger: queue full")

func (o *auditOp) earlyOK() bool { return false }

func (o *auditOp) wroteNothing() bool { return false }

func (o *auditOp) apply(tx *bolt.Tx, now time.Time) error {
	var err error
	o.rec, err = audit.Append(tx, now, o.ev)
	return err
}
