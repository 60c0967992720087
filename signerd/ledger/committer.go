package ledger

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/bucketstore"
)

// Op states.
const (
	stQueued int32 = iota
	stTaken
	stCanceled
)

// opBase is embedded in every operation.
type opBase struct {
	state atomic.Int32
	done  chan struct{} // closed once the op's outcome is final: durable, or applied for a lazy op
	err   error         // per-op outcome error (set by apply) or the group's store error
	async bool          // nobody waits for the outcome (AuditAsync)
	// early, when non-nil, is closed as soon as the op was applied in a group whose every op
	// applied, before the group is durable — only if the op's earlyOK reports true.
	early     chan struct{}
	earlySent bool // committer-only
}

func (b *opBase) base() *opBase { return b }

// op is one queued write. apply runs inside the group's transaction: it records its own
// outcome (including per-op errors) and returns a non-nil error only for an internal write
// failure that leaves partial writes, which rolls back the group.
type op interface {
	base() *opBase
	apply(tx *bucketstore.Tx, now time.Time) error
	// earlyOK reports whether the applied outcome may be released before the group is durable.
	earlyOK() bool
	// wroteNothing reports, after apply, that the op certainly wrote nothing (a group of such
	// ops is rolled back instead of applied). Ops return false when in doubt.
	wroteNothing() bool
	// lazy reports that the op's effect need not be durable before it is done: it becomes
	// durable with the next group that syncs (signatures recorded after their intent, async
	// audit records). A group of lazy ops is applied without an fsync.
	lazy() bool
}

func newBase(async bool) opBase { return opBase{done: make(chan struct{}), async: async} }

// enqueue queues o without waiting for its outcome. With a nil ctx it does not wait for room
// either: a full queue is ErrOverloaded.
func (l *Ledger) enqueue(ctx context.Context, o op) error {
	var wait <-chan struct{}
	if ctx != nil {
		if err := ctx.Err(); err != nil {
			return err
		}
		wait = ctx.Done()
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return ErrClosed
	}
	if e := l.fatal.Load(); e != nil {
		return e
	}
	if err := l.db.Damage(); err != nil { // found by the store's background work: fail closed
		return &StoreError{Op: "background work", Err: err}
	}
	if wait == nil {
		select {
		case l.q <- o:
			return nil
		default:
			return ErrOverloaded
		}
	}
	select {
	case l.q <- o:
		return nil
	case <-wait:
		return ctx.Err()
	}
}

// submit queues o and waits for its outcome (see the package comment for context handling), or,
// if o.base().early is set, for its early release.
func (l *Ledger) submit(ctx context.Context, o op) error {
	b := o.base()
	early := b.early // nil (never ready in select) unless requested; read before the committer sees o
	if err := l.enqueue(ctx, o); err != nil {
		return err
	}
	select {
	case <-b.done:
	case <-early:
		return nil
	case <-ctx.Done():
		if b.state.CompareAndSwap(stQueued, stCanceled) {
			return ctx.Err()
		}
		select {
		case <-b.done:
		case <-early:
			return nil
		}
	}
	return b.err
}

// errRerun rolls back a group so it can be re-run without a failed op.
var errRerun = errors.New("ledger: re-run group")

// errNothingWritten rolls back a group none of whose ops wrote anything.
var errNothingWritten = errors.New("ledger: nothing written")

// commitLoop is the committer: it takes the first queued op, drains whatever else is queued (up
// to Options.MaxBatch) and applies the group in one transaction.
func (l *Ledger) commitLoop() {
	defer close(l.done)
	defer close(l.syncq)
	batch := make([]op, 0, 64)
	for first := range l.q {
		batch = append(batch[:0], first)
	drain:
		for len(batch) < l.opts.MaxBatch {
			select {
			case o, ok := <-l.q:
				if !ok {
					break drain
				}
				batch = append(batch, o)
			default:
				break drain
			}
		}
		live := batch[:0]
		for _, o := range batch {
			b := o.base()
			if b.state.CompareAndSwap(stQueued, stTaken) {
				live = append(live, o)
			} else {
				close(b.done) // cancelled by its caller
			}
		}
		if len(live) > 0 {
			l.runGroup(live)
		}
	}
}

// runGroup applies a group in one transaction — starting its synced write-ahead-log append if an
// op must be durable — then releases early answers, finishes its lazy ops at once and hands the
// others to the syncer, which completes them once the append is durable, while the committer
// goes on with the next group.
func (l *Ledger) runGroup(group []op) {
	if e := l.fatal.Load(); e != nil { // queued before an earlier group failed: fail closed
		l.finish(group, e)
		return
	}
	failed := make([]bool, len(group))
	var err error
	var pending *bucketstore.Pending
	for {
		now := l.clock()
		l.updates.Add(1)
		l.idHWTx = 0
		l.prunedAt = time.Time{}
		l.usage.discard()
		pending, err = l.db.ApplySync(func(tx *bucketstore.Tx) error { return l.applyGroup(tx, now, group, failed) },
			func() bool { return needsSync(group) })
		if errors.Is(err, errNothingWritten) {
			err = nil
			l.readOnlyGroups.Add(1)
		}
		if !errors.Is(err, errRerun) {
			break
		}
	}
	if err == nil {
		l.usage.merge()
		if !l.prunedAt.IsZero() {
			l.usage.prune(l.prunedAt)
		}
	}
	l.groups.Add(1)
	l.ops.Add(uint64(len(group)))
	if err != nil {
		l.usage.discard()
		// The group's effect is unknown: stop writing for good.
		se := &StoreError{Op: "commit", Err: err}
		l.fatal.CompareAndSwap(nil, se)
		for i, o := range group {
			if !failed[i] {
				o.base().err = se
			}
		}
		l.finish(group, nil)
		return
	}
	// Applied and visible: release early results; Durable reports whether the group's sync
	// succeeded. Not when this group raises the id high-water mark: its new ids are handed out
	// only once that mark is durable.
	for i, o := range group {
		if b := o.base(); l.idHWTx == 0 && !failed[i] && b.early != nil && !b.earlySent && b.err == nil && o.earlyOK() {
			close(b.early)
			b.earlySent = true
		}
	}
	l.idHW = max(l.idHW, l.idHWTx)
	var durable []op
	for _, o := range group {
		if o.lazy() {
			l.finish([]op{o}, nil)
		} else {
			durable = append(durable, o)
		}
	}
	if len(durable) > 0 {
		l.syncq <- syncGroup{ops: durable, head: l.appliedHead, pending: pending}
	}
}

// needsSync reports whether a group holds an op whose outcome must be durable before it is
// answered (asked once the group is applied: an op's laziness may depend on its outcome).
func needsSync(group []op) bool {
	for _, o := range group {
		if !o.lazy() {
			return true
		}
	}
	return false
}

// applyGroup applies every op of the group that has not failed and sweeps expired usage
// buckets when due.
func (l *Ledger) applyGroup(tx *bucketstore.Tx, now time.Time, group []op, failed []bool) error {
	for i, o := range group {
		if failed[i] {
			continue
		}
		o.base().err = nil
		if e := o.apply(tx, now); e != nil {
			failed[i] = true
			o.base().err = e
			return errRerun
		}
	}
	wrote := l.idHWTx != 0
	for i, o := range group {
		if !failed[i] && !o.wroteNothing() {
			wrote = true
			break
		}
	}
	if at, ok := l.pruneTime(now); ok {
		wrote = true
		n, e := pruneUsage(tx, at)
		if e != nil {
			return e
		}
		l.pruned.Add(uint64(n))
		l.lastPrune, l.pruneAt = now, at
		l.prunedAt = at
	}
	if l.testHookAfterApply != nil {
		if err := l.testHookAfterApply(); err != nil {
			return err
		}
	}
	if !wrote {
		return errNothingWritten
	}
	seq, h, err := audit.Head(tx)
	if err != nil {
		return err
	}
	l.appliedHead = audit.Checkpoint{Seq: seq, Hash: h}
	return nil
}

// finish ends ops: err, when non-nil, replaces every op's outcome error.
func (l *Ledger) finish(ops []op, err error) {
	for _, o := range ops {
		b := o.base()
		if err != nil {
			b.err = err
		}
		if b.async && b.err != nil {
			l.asyncErrs.Add(1)
		}
		close(b.done)
	}
}

// syncGroup is an applied group waiting for durability, with the audit head it leaves.
type syncGroup struct {
	ops     []op
	head    audit.Checkpoint
	pending *bucketstore.Pending // its synced append, started when it was applied
}

// syncLoop is the syncer: it waits, group by group in order, until each applied group is
// durable, then finishes its ops. The store shares one fdatasync between every append waiting
// for it, so concurrent groups pay for one sync; a group that wrote nothing (an answer read
// from applied state) waits for a sync of its own so that what it read is durable too.
func (l *Ledger) syncLoop() {
	defer close(l.synced)
	for g := range l.syncq {
		if e := l.fatal.Load(); e != nil {
			g.pending.Wait() // releases the batch; the group fails anyway
			l.finish(g.ops, e)
			continue
		}
		var err error
		if g.pending.Written() {
			err = g.pending.Wait()
		} else {
			err = l.db.Sync()
		}
		if err != nil {
			se := &StoreError{Op: "sync", Err: err}
			l.fatal.CompareAndSwap(nil, se)
			l.finish(g.ops, se)
			continue
		}
		if err := l.mark.write(g.head); err != nil {
			l.markErrs.Add(1) // the mark is a check, not the ledger: counted in Stats, not fatal
		}
		l.finish(g.ops, nil)
	}
}
