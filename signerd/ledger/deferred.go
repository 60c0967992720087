package ledger

import (
	"context"
	"crypto/sha256"
	"math/big"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/signerd/signerd/signerd/audit"
)

// Deferred reservations (ReserveDeferred) are held in the committer's memory instead of being
// written: the record, the replay entry, the debits and the decision audit record are written
// by Commit together with the signature, in ONE transaction (one fsync per signed request), or
// by Release as a released record. While a deferred reservation is pending, every replay check
// and every budget check (of Reserve, ReserveEarly and ReserveDeferred) counts it, so budgets and
// replay keys stay exact. A crash loses pending deferred reservations — harmless, because none of
// their signatures can have been sent (Commit had not returned) — and, with them, the allow
// decisions of requests that never got an answer.
//
// The pending set is committer-only state. Changes made while a group is applied are staged and
// merged only when the group's transaction commits; a re-run or a failed transaction discards
// them, so memory never disagrees with the file.

// deferredRes is one pending deferred reservation.
type deferredRes struct {
	rec *PaymentRecord // status reserved, charges with their bucket indices
	rk  string         // replay key
}

// pendingSet is the committer's pending deferred reservations plus the current group's staged
// changes.
type pendingSet struct {
	byID    map[RecordID]*deferredRes
	byKey   map[string]*deferredRes
	added   map[RecordID]*deferredRes // staged in the current attempt
	removed map[RecordID]bool         // staged in the current attempt
}

func newPendingSet() *pendingSet {
	return &pendingSet{byID: map[RecordID]*deferredRes{}, byKey: map[string]*deferredRes{},
		added: map[RecordID]*deferredRes{}, removed: map[RecordID]bool{}}
}

// reset discards the staged changes (start of an attempt).
func (p *pendingSet) reset() {
	clear(p.added)
	clear(p.removed)
}

// merge applies the staged changes (the attempt's transaction committed).
func (p *pendingSet) merge() {
	for id := range p.removed {
		if d := p.byID[id]; d != nil {
			delete(p.byID, id)
			if p.byKey[d.rk] == d {
				delete(p.byKey, d.rk)
			}
		}
	}
	for id, d := range p.added {
		if !p.removed[id] {
			p.byID[id] = d
			p.byKey[d.rk] = d
		}
	}
	p.reset()
}

func (p *pendingSet) get(id RecordID) *deferredRes {
	if p.removed[id] {
		return nil
	}
	if d := p.added[id]; d != nil {
		return d
	}
	return p.byID[id]
}

func (p *pendingSet) getKey(rk string) *deferredRes {
	for _, d := range p.added {
		if d.rk == rk && !p.removed[d.rec.ID] {
			return d
		}
	}
	if d := p.byKey[rk]; d != nil && !p.removed[d.rec.ID] {
		return d
	}
	return nil
}

func (p *pendingSet) add(d *deferredRes) { p.added[d.rec.ID] = d }
func (p *pendingSet) remove(id RecordID) { p.removed[id] = true }

// usage is what pending deferred reservations hold on (key, window) in buckets ≥ first (later
// buckets too, as usageTx: charges made while the clock was ahead).
func (p *pendingSet) usage(key string, window time.Duration, first int64) *big.Int {
	sum := new(big.Int)
	visit := func(d *deferredRes) {
		for _, c := range d.rec.Charges {
			if c.Key == key && c.Window == window && c.Bucket >= first {
				sum.Add(sum, c.Amount)
			}
		}
	}
	for id, d := range p.byID {
		if !p.removed[id] {
			visit(d)
		}
	}
	for id, d := range p.added {
		if !p.removed[id] {
			visit(d)
		}
	}
	return sum
}

// ReserveDeferred decides a reservation exactly like Reserve (replay key and every budget charge,
// counting all pending reservations) but writes nothing for a Reserved outcome: the reservation
// is held in the committer's memory and returned at once, and Commit then writes the record, the
// replay entry, the debits, the decision audit record, the signature and its audit record in one
// transaction — one fsync per signed request instead of two. Release writes the record as
// released with its three audit records (decision, signing_failed, reservation_released).
//
// Outcomes that are answered without signing (Duplicate, Conflict, BudgetExhausted, and
// Resumable for a durable reserved record) write their decision audit record and wait for it, as
// with Reserve. A Resumable for a reservation still pending in memory (an identical request in
// flight) returns at once with the same record id.
//
// Trade-off: a crash loses pending deferred reservations and their allow decisions. No signature
// of theirs can have been sent (Commit had not returned), no budget was charged on disk, and an
// agent retry reserves afresh, so the ledger stays consistent; only the audit log does not show
// the decisions of requests that never got an answer. If Commit fails, the pending reservation is
// dropped and its signature must not be sent; a failed group transaction also stops the ledger
// taking writes until restart (see Health). Its record id is never given to another record, even
// after a restart (see nextID).
func (l *Ledger) ReserveDeferred(ctx context.Context, r Reservation) (Result, error) {
	if err := r.validate(); err != nil {
		return Result{}, err
	}
	o := &reserveOp{opBase: newBase(false), l: l, r: r, h: sha256.Sum256(r.Claims), deferred: true}
	o.early = make(chan struct{})
	if err := l.submit(ctx, o); err != nil {
		return Result{}, err
	}
	return o.res, nil
}

// writeDeferred writes a pending deferred reservation's record (status reserved or released),
// replay entry and debits (signed only), and its decision audit record. Used by Commit and
// Release.
func writeDeferred(tx *bolt.Tx, now time.Time, d *deferredRes, signed bool) error {
	rec := d.rec
	b := tx.Bucket(bucketRecords)
	if b.Sequence() < uint64(rec.ID) {
		if err := b.SetSequence(uint64(rec.ID)); err != nil {
			return err
		}
	}
	if err := putRecord(tx, rec); err != nil { // reserved (a signature follows) or released
		return err
	}
	if signed {
		for _, c := range rec.Charges {
			if c.Amount.Sign() > 0 {
				if err := addUsage(tx, c.Key, c.Window, c.Bucket, c.Amount); err != nil {
					return err
				}
			}
		}
		if err := tx.Bucket(bucketReplay).Put([]byte(d.rk), replayEntry{rec.ClaimsHash, rec.ID, StatusReserved.byte()}.bytes()); err != nil {
			return err
		}
	}
	ev := audit.Event{Kind: audit.KindDecision, Decision: "allow", RecordID: uint64(rec.ID),
		Principal: rec.Principal, Agent: rec.Agent, Wallet: rec.Wallet.Hex(), TabID: rec.TabID.String(),
		ReqID: rec.ReqID.String(), PolicyHash: rec.PolicyHash, Rule: rec.Rule, Digest: rec.Digest[:],
		ClaimsHash: rec.ClaimsHash[:], Scheme: rec.Scheme, Charges: auditCharges(rec.Charges),
		Attrs: map[string]string{"reserved_at": rec.Created.UTC().Format(time.RFC3339Nano), "deferred": "true"}}
	if rec.TaskID != "" {
		ev.Attrs["task_id"] = rec.TaskID
	}
	_, err := audit.Append(tx, now, ev)
	return err
}
