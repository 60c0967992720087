// Package ledger is signerd's durable ledger: replay records, budget usage per window, payment
// records and generic operator state, kept in one store (signerd/bucketstore, on pebble)
// together with the hash-chained audit log (package signerd/audit), so that a ledger change and
// the audit record describing it are applied and made durable together. Engine (engine.go) lists
// the operations and their atomicity for other engines.
//
// # Writes: one committer, one shared fsync
//
// Every write (Reserve, RecordSignature, Commit, Release, PutState, AppendAudit, AuditAsync, ...)
// is queued to a single committer goroutine. The committer takes the first queued operation,
// drains whatever else is queued (up to Options.MaxBatch) and applies the whole group in one
// transaction without a sync: visible at once, durable later. It then hands the group to the
// syncer goroutine, which makes every group applied since its last sync durable with ONE synced
// write-ahead-log append (one fdatasync), while the committer goes on with the next groups (see
// committer.go). Lazy operations (a signature recorded after its intent, AuditAsync) never cause
// a sync: they become durable with the next one. Each operation checks everything first and
// writes last, so a rejected operation writes nothing but its audit record; operations later in
// a group see the writes of earlier ones. If an operation hits an internal write error the group
// is re-run without it. If applying or syncing fails, the outcome is unknown and the ledger
// keeps that *StoreError for good: every later write returns it (writes fail closed) and Health
// reports it until the process restarts and reopens the store.
//
// When a write method returns without error its effect and its audit record are durable — except
// for an early answer (Reserve, below) and lazy operations, whose documentation says when they
// are. If its context ends before the committer takes the operation, nothing is written.
//
// # The signing flow
//
//	res, err := l.Reserve(ctx, ledger.Reservation{...})  // replay check + all charges + record + audit, decided
//	switch res.Outcome {
//	case ledger.Reserved, ledger.Resumable:             // answered once applied: sign res.RecordID's digest now
//	    sig, err := sign(...)                             // ... while the intent's fsync runs
//	    if err != nil { l.Release(ctx, res.RecordID, "backend_unavailable", "..."); deny }
//	    cr, err := l.RecordSignature(ctx, res.RecordID, sig) // applied, durable with a later sync
//	    err = res.Durable(ctx)                            // the intent is on disk: only now may it leave
//	    send(cr.Signature)
//	case ledger.Duplicate:  send(res.Signature)           // an agent retry: the stored signature (verify it)
//	case ledger.Conflict:   409 replay_conflict
//	case ledger.BudgetExhausted: 403 res.Budget.Code()
//	}
//
// After a crash an intent without a signature is possibly signed (its signature may have been
// sent): its charges stand, an identical retry resumes it (Resumable, no second charge) and other
// claims for its key conflict. PossiblySigned counts them. Signatures that leave only after a
// durable Commit (collateral transactions) are released at start-up by ReleaseUnsent instead.
//
// Reserve audits every outcome itself (allow with the reservation, replay duplicate/resume, or a
// deny with its code); policy denials decided before the ledger is reached are audited with
// AuditAsync or AppendAudit.
//
// # Integrity
//
// The state that decides is bound to the audit chain (verifystate.go): VerifyAudit replays the
// chain and compares records, signatures, replay keys, usage and operator state with it. Open
// verifies the newest audit records and the head mark (headmark.go), refusing a ledger that
// lost durable records; CheckInBackground verifies everything and stops writes on a mismatch.
//
// # Reads
//
// Usage implements policyengine.UsageReader from an in-memory index of applied usage
// (usage.go; the authoritative check is the one inside Reserve's group). Record, Recent, ByTab,
// Spend, SpendAll, GetState, VerifyAudit and ExportAudit serve the admin API from store
// snapshots and never wait for the committer.
//
// # Storage
//
// Amounts are *big.Int in memory and minimal big-endian bytes on disk (no leading zeros; zero is
// never stored: a bucket that reaches zero is deleted). Budget usage uses policyengine's
// bucketed sliding windows (BucketWidth, BucketIndex, WindowFirstBucket): a charge is added to
// the bucket of its window at the committer's clock, and usage is the sum of the window's
// buckets and of any later bucket (charged while the clock was ahead, before a step back).
// Buckets older than their window are pruned by the committer (Options.PruneEvery, never on a
// clock that stepped back, and no faster than monotonic time passes), so usage state is
// bounded; payment records and the audit log are history, deleted only by an operator's
// archive-then-prune run (ExportArchive, Prune; see prune.go). A bbolt ledger file of an
// earlier version is migrated at Open (migrate.go).
// See docs/ledger.md for the data model and the durability guarantees.
package ledger

import (
	"encoding/binary"
	"errors"
	"fmt"

	"sync"
	"sync/atomic"
	"time"

	"github.com/signerd/signerd/signerd/bucketstore"

	"github.com/signerd/signerd/signerd/audit"
)

// Errors. Corruption matches ErrCorrupt; I/O faults are wrapped *StoreError.
var (
	// ErrClosed is returned by every method after Close.
	ErrClosed = errors.New("ledger: closed")
	// ErrNotFound means no payment record has the given id.
	ErrNotFound = errors.New("ledger: record not found")
	// ErrReleased means the record was released and can no longer be signed.
	ErrReleased = errors.New("ledger: record released")
	// ErrAlreadySigned means the record is signed and can no longer be released.
	ErrAlreadySigned = errors.New("ledger: record already signed")
	// ErrInvalid marks a malformed argument (the caller's bug, not a fault of the store).
	ErrInvalid = errors.New("ledger: invalid argument")
	// ErrCorrupt is the class of every corruption error (ledger or audit). It is audit.ErrCorrupt.
	ErrCorrupt = audit.ErrCorrupt
)

// StoreError is a fault of the underlying store (I/O, full disk, ...). The message is safe to
// show; the cause is for logs.
type StoreError struct {
	Op  string
	Err error
}

func (e *StoreError) Error() string {
	return "ledger: store failure during " + e.Op + ": " + e.Err.Error()
}

// Unwrap returns the cause.
func (e *StoreError) Unwrap() error { return e.Err }

// Options configure Open. Path is required; the rest have defaults.
type Options struct {
	// Path of the store directory; created (0700) if absent. A bbolt ledger file found there
	// is migrated (see migrate.go). The head mark is kept beside it as Path+".head".
	Path string
	// Clock is the appliance clock used for budget windows, record and audit times. Default time.Now.
	Clock func() time.Time
	// MaxBatch bounds how many operations one transaction groups. Default 1024, at most 65536.
	MaxBatch int
	// QueueSize is the capacity of the operation queue; writers block (honouring their context)
	// when it is full. Default 4096.
	QueueSize int
	// PruneEvery is how much clock time passes between sweeps of expired usage buckets. Default
	// one minute; negative disables pruning.
	PruneEvery time.Duration
	// LockTimeout is how long Open waits for the store (or a bbolt file to migrate) that another
	// process holds open, for example a daemon still exiting. Default 1 s.
	LockTimeout time.Duration
}

func (o *Options) validate() error {
	if o.Path == "" {
		return fmt.Errorf("%w: Options.Path is required", ErrInvalid)
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	switch {
	case o.MaxBatch == 0:
		o.MaxBatch = 1024
	case o.MaxBatch < 0 || o.MaxBatch > 65536:
		return fmt.Errorf("%w: Options.MaxBatch %d out of range [1, 65536]", ErrInvalid, o.MaxBatch)
	}
	switch {
	case o.QueueSize == 0:
		o.QueueSize = 4096
	case o.QueueSize < 0:
		return fmt.Errorf("%w: Options.QueueSize %d negative", ErrInvalid, o.QueueSize)
	}
	if o.PruneEvery == 0 {
		o.PruneEvery = time.Minute
	}
	if o.LockTimeout == 0 {
		o.LockTimeout = time.Second
	} else if o.LockTimeout < 0 {
		return fmt.Errorf("%w: Options.LockTimeout negative", ErrInvalid)
	}
	return nil
}

// Ledger is an open ledger file. All methods are safe for concurrent use.
type Ledger struct {
	db    *bucketstore.DB
	opts  Options
	clock func() time.Time

	mu     sync.RWMutex // guards closed and sending on q
	closed bool
	q      chan op
	done   chan struct{}  // closed when the committer exits
	syncq  chan syncGroup // applied groups waiting for the shared fsync (see syncLoop)
	synced chan struct{}  // closed when the syncer exits
	once   sync.Once

	lastPrune time.Time   // committer-only: clock value at the last sweep (with its monotonic reading, if any)
	pruneAt   time.Time   // committer-only: wall time the last sweep pruned relative to
	maxSeen   time.Time   // committer-only: latest wall time the committer's clock has shown
	lastID    uint64      // committer-only: last record id handed out (never goes back, even if a tx fails)
	idHW      uint64      // committer-only: durable id high-water mark: no id above it was handed out
	idHWTx    uint64      // committer-only: high-water mark written by the current attempt (0: none)
	hot       hotRecords  // committer-only: records reserved by this process (see hot.go)
	prunedAt  time.Time   // committer-only: the time usage was swept at in the group being applied
	usage     *usageIndex // usage per counter bucket, in memory (see usage.go)

	mark           *headMark        // the durable audit head, written after every shared fsync (headmark.go)
	appliedHead    audit.Checkpoint // committer-only: the audit head after the last applied group
	markErrs       atomic.Uint64
	bg             sync.WaitGroup // background integrity checks
	stateUnchecked atomic.Bool
	maxStateCheck  uint64 // maxStateCheck, lowered by tests
	migratedTo     string // backup path of a bbolt ledger migrated at Open ("" if none)

	// testHookAfterApply, if set, runs inside the group's transaction after every operation
	// was applied and early results were released; an error fails the transaction (tests).
	testHookAfterApply func() error

	groups, ops, updates, asyncErrs, pruned, readOnlyGroups atomic.Uint64
	fatal                                                   atomic.Pointer[StoreError] // first failed group transaction; sticky (see Health)
}

// Stats are counters for metrics and tests.
type Stats struct {
	Updates     uint64 // db.Update transactions run (including re-runs after a failed op)
	ReadOnly    uint64 // of those, rolled back because no op wrote anything (no fsync)
	Groups      uint64 // groups committed
	Ops         uint64 // operations applied
	AsyncErrors uint64 // AuditAsync records that could not be written
	Pruned      uint64 // usage buckets pruned
	Queued      int    // operations waiting for the committer now
	Syncs       uint64 // synced write-ahead-log appends (fdatasyncs), shared by groups
	MarkErrors  uint64 // head mark writes that failed (see headmark.go)
}

// Open opens (or creates) the ledger store and starts the committer. A bbolt ledger file written
// by an earlier version at Options.Path is migrated first (see migrate.go).
func Open(opts Options) (*Ledger, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	backup, err := migrateIfBolt(opts.Path, opts.LockTimeout)
	if err != nil {
		return nil, err
	}
	db, err := openStore(opts.Path, opts.LockTimeout)
	if err != nil {
		return nil, &StoreError{Op: "open", Err: err}
	}
	if err := db.Update(initStore); err != nil {
		_ = db.Close()
		if errors.Is(err, ErrInvalid) {
			return nil, err
		}
		return nil, &StoreError{Op: "init", Err: err}
	}
	l := &Ledger{db: db, opts: opts, clock: opts.Clock, q: make(chan op, opts.QueueSize), done: make(chan struct{}),
		syncq: make(chan syncGroup, 1024), synced: make(chan struct{}), hot: hotRecords{m: map[RecordID]*PaymentRecord{}},
		usage: newUsageIndex(), migratedTo: backup, maxStateCheck: maxStateCheck}
	l.lastPrune = opts.Clock()
	l.pruneAt = l.lastPrune.Round(0)
	l.maxSeen = l.pruneAt
	if l.mark, err = openHeadMark(opts.Path + ".head"); err != nil {
		_ = db.Close()
		return nil, err
	}
	mark, marked, err := l.mark.read()
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	if err := db.View(func(tx *bucketstore.Tx) error {
		if _, err := audit.VerifyRecentTx(tx, startWindow); err != nil {
			return fmt.Errorf("the last %d audit records do not verify (run signerctl audit verify --db %s): %w", startWindow, opts.Path, err)
		}
		if marked {
			if err := checkHeadMark(tx, mark, opts.Path); err != nil {
				return err
			}
		}
		seq, h, err := audit.Head(tx)
		l.appliedHead = audit.Checkpoint{Seq: seq, Hash: h}
		if err != nil {
			return err
		}
		if err := l.loadIDs(tx); err != nil {
			return err
		}
		return l.usage.load(tx)
	}); errors.Is(err, ErrCorrupt) {
		_ = db.Close()
		_ = l.mark.close()
		return nil, err
	} else if err != nil {
		_ = l.mark.close()
		_ = db.Close()
		return nil, &StoreError{Op: "init", Err: err}
	}
	go l.commitLoop()
	go l.syncLoop()
	return l, nil
}

// openStore opens the store, waiting up to timeout while another process holds it.
func openStore(path string, timeout time.Duration) (*bucketstore.DB, error) {
	deadline := time.Now().Add(timeout)
	for {
		db, err := bucketstore.Open(path, bucketstore.Options{})
		if !errors.Is(err, bucketstore.ErrLocked) || !time.Now().Before(deadline) {
			return db, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startWindow is how many of the newest audit records Open verifies before the ledger serves;
// CheckInBackground verifies the rest, and the state bound to the chain.
const startWindow = 4096

// CheckInBackground verifies the whole audit chain and the state bound to it (VerifyAudit) in a
// goroutine, then calls done with the outcome (nil: intact). On a mismatch the ledger stops
// taking writes, as after a failed group: Health reports the problem (readiness fails with the
// reason) and every write — every signature — is refused until an operator has looked.
func (l *Ledger) CheckInBackground(done func(error)) {
	l.bg.Add(1)
	go func() {
		defer l.bg.Done()
		err := l.backgroundCheck()
		if errors.Is(err, ErrCorrupt) {
			l.fatal.CompareAndSwap(nil, &StoreError{Op: "integrity check", Err: err})
		}
		if done != nil {
			done(err)
		}
	}()
}

// maxStateCheck bounds the audit records (since the last prune) whose implied state the
// background check holds in memory (about 1.5 KB each); past it only the chain is verified at
// start and `signerctl audit verify --db` checks the state offline (or a prune makes it small).
const maxStateCheck = 200_000

// backgroundCheck verifies the chain, and the state bound to it when the part of the chain to
// replay is small enough to hold in memory.
func (l *Ledger) backgroundCheck() error {
	var big bool
	err := l.view("integrity_check", func(tx *bucketstore.Tx) error {
		head, _, err := audit.Head(tx)
		if err != nil {
			return err
		}
		cp, err := audit.CheckpointTx(tx)
		big = head-cp.Seq > l.maxStateCheck
		return err
	})
	if err != nil || !big {
		if err == nil {
			_, err = l.VerifyAudit()
		}
		return err
	}
	l.stateUnchecked.Store(true)
	return l.view("audit_verify", func(tx *bucketstore.Tx) error {
		_, err := audit.VerifyTx(tx)
		return err
	})
}

// MigratedFrom returns where Open kept the bbolt ledger file it migrated ("" when it migrated
// nothing), for the daemon to say so.
func (l *Ledger) MigratedFrom() string { return l.migratedTo }

// StateUnchecked reports that the last background check verified the chain only (see
// maxStateCheck).
func (l *Ledger) StateUnchecked() bool { return l.stateUnchecked.Load() }

// initStore creates the buckets and checks the schema version.
func initStore(tx *bucketstore.Tx) error {
	rebuildPending := tx.Bucket(bucketPending) == nil && tx.Bucket(bucketRecords) != nil
	for _, b := range [][]byte{bucketMeta, bucketRecords, bucketReplay, bucketUsage, bucketState, bucketSigs, bucketPending} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return err
		}
	}
	m := tx.Bucket(bucketMeta)
	if v := m.Get(schemaKey); v == nil {
		if err := m.Put(schemaKey, schemaVersion); err != nil {
			return err
		}
	} else if string(v) != string(schemaVersion) {
		return fmt.Errorf("%w: ledger schema %q, this build reads %q", ErrInvalid, v, schemaVersion)
	}
	if rebuildPending { // a ledger written before the pending index existed
		if err := fillPending(tx); err != nil {
			return err
		}
	}
	return audit.Init(tx)
}

// loadIDs reads the ids handed out before: the records' sequence, the highest stored record
// (belt and braces) and the high-water mark, which also covers ids that never reached the disk
// (an intent whose group failed after an early answer).
func (l *Ledger) loadIDs(tx *bucketstore.Tx) error {
	b := tx.Bucket(bucketRecords)
	l.lastID = b.Sequence()
	c := b.Cursor()
	if k, _ := c.Last(); len(k) == 8 {
		l.lastID = max(l.lastID, binary.BigEndian.Uint64(k))
	}
	if v := tx.Bucket(bucketMeta).Get(idHWKey); len(v) == 8 {
		l.idHW = binary.BigEndian.Uint64(v)
		l.lastID = max(l.lastID, l.idHW)
	}
	return c.Err()
}

// Close stops accepting writes, commits everything already queued, and closes the file.
func (l *Ledger) Close() error {
	var err error
	l.once.Do(func() {
		l.mu.Lock()
		l.closed = true
		close(l.q)
		l.mu.Unlock()
		<-l.done
		<-l.synced
		l.bg.Wait()                // a running integrity check holds a snapshot of the store
		if l.fatal.Load() == nil { // lazy ops applied last (signatures, async audit) reach the disk
			if e := l.db.Sync(); e != nil {
				err = &StoreError{Op: "close", Err: e}
			} else {
				_ = l.mark.write(l.appliedHead)
			}
		}
		_ = l.mark.close()
		if e := l.db.Close(); e != nil {
			err = &StoreError{Op: "close", Err: e}
		}
	})
	return err
}

// Stats returns the counters.
func (l *Ledger) Stats() Stats {
	return Stats{Updates: l.updates.Load(), ReadOnly: l.readOnlyGroups.Load(), Groups: l.groups.Load(), Ops: l.ops.Load(),
		AsyncErrors: l.asyncErrs.Load(), Pruned: l.pruned.Load(), Queued: len(l.q), Syncs: l.db.Syncs(), MarkErrors: l.markErrs.Load()}
}

// Health reports whether the ledger can take writes: ErrClosed after Close, the *StoreError of
// the first group whose transaction failed (permanent: once a group transaction failed, every
// write fails until the process restarts and reopens the file), else nil. For readiness probes;
// it does no I/O.
func (l *Ledger) Health() error {
	l.mu.RLock()
	closed := l.closed
	l.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if e := l.fatal.Load(); e != nil {
		return e
	}
	if err := l.db.Damage(); err != nil {
		return &StoreError{Op: "background work", Err: err}
	}
	return nil
}

// Path returns the file path.
func (l *Ledger) Path() string { return l.opts.Path }

// nextID hands out the next record id inside tx. Ids never go back, even if tx fails, and no
// id is ever handed out twice, even across restarts: an id above the durable high-water mark
// raises the mark by idBlock in tx (the group then releases no early result, so the new ids
// are answered only once the mark is durable). Open starts above the mark.
func (l *Ledger) nextID(tx *bucketstore.Tx) (uint64, error) {
	l.lastID++
	id := l.lastID
	if id > max(l.idHW, l.idHWTx) {
		hw := id + idBlock - 1
		if err := tx.Bucket(bucketMeta).Put(idHWKey, binary.BigEndian.AppendUint64(nil, hw)); err != nil {
			return 0, err
		}
		l.idHWTx = hw
	}
	return id, tx.Bucket(bucketRecords).SetSequence(id)
}

// pruneTime reports whether the group at now sweeps expired usage buckets, and relative to
// which time. Pruning is conservative about clock steps, because a bucket it deletes is budget
// given back: it never runs while the clock shows a time before the latest it has shown (a step
// back), and it prunes relative to the last sweep's time plus the time elapsed since, measured
// on the clock's monotonic reading when it has one (time.Now), capped at now — so a forward step
// of the wall clock does not delete buckets that are still inside their window in real time.
func (l *Ledger) pruneTime(now time.Time) (time.Time, bool) {
	wall := now.Round(0) // wall reading only
	back := wall.Before(l.maxSeen)
	if !back {
		l.maxSeen = wall
	}
	if l.opts.PruneEvery <= 0 || back {
		return time.Time{}, false
	}
	elapsed := now.Sub(l.lastPrune) // monotonic when both readings have one
	if elapsed < l.opts.PruneEvery {
		return time.Time{}, false
	}
	at := l.pruneAt.Add(elapsed)
	if at.After(wall) {
		at = wall
	}
	return at, true
}

// view runs fn in a read transaction, mapping errors.
func (l *Ledger) view(what string, fn func(tx *bucketstore.Tx) error) error {
	l.mu.RLock()
	closed := l.closed
	l.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	err := l.db.View(fn)
	if err == nil || errors.Is(err, ErrCorrupt) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrInvalid) {
		return err
	}
	var se *StoreError
	if errors.As(err, &se) {
		return err
	}
	return &StoreError{Op: what, Err: err}
}

// DB exposes the store for read-only inspection by tests and tools. Never write to it.
func (l *Ledger) DB() *bucketstore.DB { return l.db }
