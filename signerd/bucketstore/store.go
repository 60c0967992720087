// Package bucketstore keeps named buckets of ordered keys in a pebble database: transactions
// that read their own writes (an indexed pebble batch), cursors, per-bucket sequences and
// consistent read-only views (a pebble snapshot).
//
// It is the storage engine under signerd's embedded ledger and audit log. A write transaction
// is committed in one of two ways: Update commits it with a synced write-ahead-log append (one
// fdatasync), Apply commits it without one (visible to readers at once, durable with the next
// Sync). One Sync makes every transaction applied before it durable, so a caller that applies
// many transactions and then syncs once shares one fdatasync between all of them. Nothing on
// that path rewrites pages: pebble appends to its WAL and flushes memtables in the background.
//
// # Layout
//
// A bucket named N exists when the key 'b'‖N exists; its value is the bucket's sequence (8 bytes
// big-endian). Key K of bucket N is stored as 'd'‖N‖0x00‖K. Bucket names must not contain 0x00.
//
// # Faults
//
// Pebble checksums its WAL records and table blocks. A checksum mismatch, an undecodable file or
// a panic inside pebble while serving a call comes back as an error matching ErrCorrupt that
// names what is wrong; nothing in this package panics on a damaged store.
package bucketstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Errors.
var (
	// ErrCorrupt is the class of every error caused by damaged store files or altered contents
	// (audit.ErrCorrupt and ledger.ErrCorrupt are this error).
	ErrCorrupt = errors.New("corrupt")
	// ErrLocked means another process holds the store open.
	ErrLocked = errors.New("bucketstore: store in use by another process")
	// ErrNotWritable is returned by writes in a read-only transaction.
	ErrNotWritable = errors.New("bucketstore: transaction not writable")
	// ErrKeyRequired is returned by Put with an empty key.
	ErrKeyRequired = errors.New("bucketstore: key required")
	// ErrBadBucketName is returned for an empty bucket name or one containing 0x00.
	ErrBadBucketName = errors.New("bucketstore: bad bucket name")
	// ErrNotFound is returned when the store directory does not exist and Options.ReadOnly is set.
	ErrNotFound = errors.New("bucketstore: no store at this path")
)

// Options configure Open.
type Options struct {
	// ReadOnly opens an existing store for reading only (offline inspection tools).
	ReadOnly bool
	// CacheBytes is the block cache size. Default 32 MiB.
	CacheBytes int64
}

// DB is an open store. Transactions may run concurrently; write transactions are not isolated
// from each other (the caller serialises them, as signerd's ledger committer does).
type DB struct {
	p     *pebble.DB
	dir   string
	ro    bool
	syncs *atomic.Uint64 // fdatasyncs of write-ahead-log files (countingFS)
	// damage is the first corruption pebble reported from its own goroutines (see Damage).
	damage *atomic.Pointer[CorruptError]

	// known caches the names of buckets that exist in committed state, so that a transaction
	// finds a bucket without reading its marker. DeleteBucket bumps deleteGen and clears it; a
	// transaction adds the names it found only if no delete committed since it began.
	knownMu   sync.Mutex
	known     map[string]bool
	deleteGen uint64
}

// IsStore reports whether dir looks like a store directory (it has a pebble manifest pointer).
func IsStore(dir string) bool {
	if fi, err := os.Stat(filepath.Join(dir, "CURRENT")); err == nil && fi.Mode().IsRegular() {
		return true
	}
	m, _ := filepath.Glob(filepath.Join(dir, "marker.manifest.*"))
	return len(m) > 0
}

// Open opens (or, unless ReadOnly, creates) the store in directory dir.
func Open(dir string, o Options) (db *DB, err error) {
	if o.ReadOnly && !IsStore(dir) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, dir)
	}
	if o.CacheBytes <= 0 {
		o.CacheBytes = 32 << 20
	}
	cache := pebble.NewCache(o.CacheBytes)
	defer cache.Unref()
	damage := new(atomic.Pointer[CorruptError])
	syncs := new(atomic.Uint64)
	opts := &pebble.Options{
		FS: countingFS{FS: vfs.Default, syncs: syncs},
		// Damage found in the background (a compaction reading a table) is recorded for Damage,
		// not fatal: pebble's default would end the process with a stack dump.
		EventListener: &pebble.EventListener{
			DataCorruption: func(info pebble.DataCorruptionInfo) {
				damage.CompareAndSwap(nil, &CorruptError{Op: "background read", Cause: info.String()})
			},
			BackgroundError: func(err error) {
				if errors.Is(err, pebble.ErrCorruption) {
					damage.CompareAndSwap(nil, &CorruptError{Op: "background work", Cause: err.Error()})
				}
			},
		},
		ReadOnly:           o.ReadOnly,
		Cache:              cache,
		Logger:             quietLogger{},
		FormatMajorVersion: pebble.FormatNewest,
		MemTableSize:       4 << 20,
	}
	// Bloom filters on every level: a Get of an absent key (a new replay key, say) reads no
	// table block.
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	defer recoverCorrupt(&err, "open")
	p, err := pebble.Open(dir, opts)
	if err != nil {
		return nil, openError(dir, err)
	}
	return &DB{p: p, dir: dir, ro: o.ReadOnly, known: map[string]bool{}, damage: damage, syncs: syncs}, nil
}

// Close closes the store. Transactions must have ended.
func (d *DB) Close() (err error) {
	defer recoverCorrupt(&err, "close")
	return d.p.Close()
}

// Path returns the store directory.
func (d *DB) Path() string { return d.dir }

// Damage returns the first corruption found by the store's background work (compactions,
// flushes), or nil. Reads and writes that meet damage return it themselves.
func (d *DB) Damage() error {
	if e := d.damage.Load(); e != nil {
		return e
	}
	return nil
}

// Syncs returns how many synced WAL writes (fdatasyncs) this handle completed: Update commits
// and Sync calls.
func (d *DB) Syncs() uint64 { return d.syncs.Load() }

// View runs fn in a read-only transaction over a consistent snapshot.
func (d *DB) View(fn func(*Tx) error) (err error) {
	defer recoverCorrupt(&err, "read")
	gen := d.generation()
	snap := d.p.NewSnapshot()
	tx := &Tx{db: d, r: snap}
	defer func() {
		tx.closeCursors()
		_ = snap.Close()
	}()
	err = fn(tx)
	if tx.err != nil { // a read fault is never taken for an absent key
		return tx.err
	}
	if err != nil {
		return classify(err, "read")
	}
	d.remember(gen, tx.buckets)
	return nil
}

// Update runs fn in a write transaction and commits it with a synced WAL write if fn returns
// nil; an error from fn discards every write of the transaction.
func (d *DB) Update(fn func(*Tx) error) error {
	return d.update(fn, true)
}

// Apply is Update without the sync: once it returns nil the writes are visible to every later
// transaction and reach the disk with the next Update or Sync (a crash before that loses them).
func (d *DB) Apply(fn func(*Tx) error) error {
	return d.update(fn, false)
}

func (d *DB) update(fn func(*Tx) error, sync bool) (err error) {
	p, err := d.apply(fn, func() bool { return sync }, false)
	if p != nil {
		p.close()
	}
	return err
}

// ApplySync is Apply that, when wantSync (asked once fn has run) says so, also starts the
// transaction's synced write-ahead-log append without waiting for it: once it returns the
// writes are visible, and Pending.Wait returns once they (and everything applied before them)
// are durable. The store shares one fdatasync between every append waiting for it.
func (d *DB) ApplySync(fn func(*Tx) error, wantSync func() bool) (*Pending, error) {
	return d.apply(fn, wantSync, true)
}

// Pending is an ApplySync transaction whose durability has not been awaited yet.
type Pending struct {
	b *pebble.Batch // nil: nothing was written
}

// Written reports whether the transaction wrote anything (and so started a synced append).
func (p *Pending) Written() bool { return p != nil && p.b != nil }

// Wait returns once the transaction is durable (or the sync failed).
func (p *Pending) Wait() (err error) {
	if p == nil || p.b == nil {
		return nil
	}
	defer recoverCorrupt(&err, "sync")
	defer p.close()
	return classify(p.b.SyncWait(), "sync")
}

func (p *Pending) close() {
	if p.b != nil {
		_ = p.b.Close()
		p.b = nil
	}
}

// apply runs fn in a write transaction and commits it: synced (waiting unless noWait) or not.
// With noWait the batch stays open in the returned Pending; otherwise it is closed.
func (d *DB) apply(fn func(*Tx) error, wantSync func() bool, noWait bool) (p *Pending, err error) {
	if d.ro {
		return nil, ErrNotWritable
	}
	defer recoverCorrupt(&err, "write")
	gen := d.generation()
	b := d.p.NewIndexedBatch()
	tx := &Tx{db: d, r: b, b: b}
	p = &Pending{}
	defer func() {
		tx.closeCursors()
		if p.b == nil {
			_ = b.Close()
		}
	}()
	if err := fn(tx); err != nil || tx.err != nil {
		if tx.err != nil { // a read fault is never taken for an absent key: nothing is written
			return p, tx.err
		}
		return p, err
	}
	if b.Empty() {
		d.remember(gen, tx.buckets)
		return p, nil
	}
	sync := wantSync()
	switch {
	case sync && noWait:
		if err := d.p.ApplyNoSyncWait(b, pebble.Sync); err != nil {
			return p, classify(err, "commit")
		}
		p.b = b
	case sync:
		err = b.Commit(pebble.Sync)
	default:
		err = b.Commit(pebble.NoSync)
	}
	if err != nil {
		return p, classify(err, "commit")
	}
	if tx.deleted {
		d.forget()
	} else {
		d.remember(gen, tx.buckets)
	}
	return p, nil
}

func (d *DB) generation() uint64 {
	d.knownMu.Lock()
	defer d.knownMu.Unlock()
	return d.deleteGen
}

// remember adds the buckets a transaction that began at gen found or created, unless a bucket
// was deleted since.
func (d *DB) remember(gen uint64, found map[string]*Bucket) {
	if len(found) == 0 {
		return
	}
	d.knownMu.Lock()
	defer d.knownMu.Unlock()
	if gen != d.deleteGen {
		return
	}
	for name := range found {
		d.known[name] = true
	}
}

// forget clears the cache after a transaction that deleted a bucket.
func (d *DB) forget() {
	d.knownMu.Lock()
	defer d.knownMu.Unlock()
	d.deleteGen++
	clear(d.known)
}

func (d *DB) isKnown(name []byte) bool {
	d.knownMu.Lock()
	defer d.knownMu.Unlock()
	return d.known[string(name)]
}

// Sync makes every transaction applied before it durable with one synced WAL write.
func (d *DB) Sync() (err error) {
	if d.ro {
		return ErrNotWritable
	}
	defer recoverCorrupt(&err, "sync")
	return classify(d.p.LogData(nil, pebble.Sync), "sync")
}

// Checkpoint writes a consistent copy of the store into the new directory dir (hard links where
// possible). The copy opens with Open like the original.
func (d *DB) Checkpoint(dir string) (err error) {
	defer recoverCorrupt(&err, "checkpoint")
	return classify(d.p.Checkpoint(dir, pebble.WithFlushedWAL()), "checkpoint")
}

// Tx is a transaction. It is not safe for concurrent use and its byte slices are its own
// copies (valid after the transaction ends).
type Tx struct {
	db      *DB
	r       reader
	b       *pebble.Batch // nil in a read-only transaction
	gen     uint64        // bumped by every write, so cursors see them
	deleted bool          // the transaction deleted a bucket
	err     error         // the first read fault (View and Update return it)
	cursors []*Cursor
	buckets map[string]*Bucket // buckets known to exist in this transaction
}

type reader interface {
	Get(key []byte) ([]byte, io.Closer, error)
	NewIter(o *pebble.IterOptions) (*pebble.Iterator, error)
}

func (tx *Tx) closeCursors() {
	for _, c := range tx.cursors {
		c.close()
	}
	tx.cursors = nil
}

func (tx *Tx) get(k []byte) ([]byte, error) {
	v, cl, err := tx.r.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		err = classify(err, "get")
		if tx.err == nil {
			tx.err = err
		}
		return nil, err
	}
	out := make([]byte, len(v))
	copy(out, v)
	_ = cl.Close()
	return out, nil
}

func (tx *Tx) set(k, v []byte) error {
	if tx.b == nil {
		return ErrNotWritable
	}
	tx.gen++
	return tx.b.Set(k, v, nil)
}

func (tx *Tx) del(k []byte) error {
	if tx.b == nil {
		return ErrNotWritable
	}
	tx.gen++
	return tx.b.Delete(k, nil)
}

func markerKey(name []byte) []byte { return append([]byte{'b'}, name...) }

func validName(name []byte) bool { return len(name) > 0 && bytes.IndexByte(name, 0) < 0 }

// Bucket returns the bucket named name, or nil if it does not exist.
func (tx *Tx) Bucket(name []byte) *Bucket {
	if b := tx.buckets[string(name)]; b != nil {
		return b
	}
	if !validName(name) {
		return nil
	}
	if !tx.deleted && tx.db.isKnown(name) {
		return tx.known(name)
	}
	v, err := tx.get(markerKey(name))
	if err != nil || v == nil {
		return nil
	}
	return tx.known(name)
}

// known returns the transaction's Bucket for name, which exists.
func (tx *Tx) known(name []byte) *Bucket {
	if b := tx.buckets[string(name)]; b != nil {
		return b
	}
	if tx.buckets == nil {
		tx.buckets = map[string]*Bucket{}
	}
	b := newBucket(tx, append([]byte(nil), name...))
	tx.buckets[string(name)] = b
	return b
}

// CreateBucketIfNotExists returns the bucket named name, creating it if needed.
func (tx *Tx) CreateBucketIfNotExists(name []byte) (*Bucket, error) {
	if !validName(name) {
		return nil, ErrBadBucketName
	}
	v, err := tx.get(markerKey(name))
	if err != nil {
		return nil, err
	}
	if v == nil {
		if err := tx.set(markerKey(name), make([]byte, 8)); err != nil {
			return nil, err
		}
	}
	return tx.known(name), nil
}

// DeleteBucket deletes the bucket named name and every key in it.
func (tx *Tx) DeleteBucket(name []byte) error {
	if !validName(name) {
		return ErrBadBucketName
	}
	if tx.b == nil {
		return ErrNotWritable
	}
	b := newBucket(tx, name)
	delete(tx.buckets, string(name))
	tx.deleted = true
	tx.gen++
	if err := tx.b.DeleteRange(b.prefix, b.upper, nil); err != nil {
		return err
	}
	return tx.del(markerKey(name))
}

// BucketNames lists the buckets in key order.
func (tx *Tx) BucketNames() ([][]byte, error) {
	it, err := tx.r.NewIter(&pebble.IterOptions{LowerBound: []byte{'b'}, UpperBound: []byte{'c'}})
	if err != nil {
		return nil, classify(err, "iterate")
	}
	defer it.Close()
	var out [][]byte
	for ok := it.First(); ok; ok = it.Next() {
		out = append(out, append([]byte(nil), it.Key()[1:]...))
	}
	return out, classify(it.Error(), "iterate")
}

// Bucket is a named set of ordered keys inside a transaction.
type Bucket struct {
	tx            *Tx
	name          []byte
	prefix, upper []byte
}

func newBucket(tx *Tx, name []byte) *Bucket {
	p := make([]byte, 0, len(name)+2)
	p = append(append(append(p, 'd'), name...), 0)
	u := append(append([]byte{'d'}, name...), 1)
	return &Bucket{tx: tx, name: name, prefix: p, upper: u}
}

func (b *Bucket) key(k []byte) []byte {
	out := make([]byte, len(b.prefix)+len(k))
	copy(out, b.prefix)
	copy(out[len(b.prefix):], k)
	return out
}

// Get returns the value of k, or nil if absent (an empty stored value is a non-nil empty slice).
func (b *Bucket) Get(k []byte) []byte {
	v, err := b.tx.get(b.key(k))
	if err != nil {
		return nil
	}
	return v
}

// Put sets k to v.
func (b *Bucket) Put(k, v []byte) error {
	if len(k) == 0 {
		return ErrKeyRequired
	}
	return b.tx.set(b.key(k), v)
}

// Delete removes k (absent keys are fine).
func (b *Bucket) Delete(k []byte) error { return b.tx.del(b.key(k)) }

// Sequence returns the bucket's sequence.
func (b *Bucket) Sequence() uint64 {
	v, err := b.tx.get(markerKey(b.name))
	if err != nil || len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// SetSequence sets the bucket's sequence.
func (b *Bucket) SetSequence(n uint64) error {
	return b.tx.set(markerKey(b.name), binary.BigEndian.AppendUint64(nil, n))
}

// ForEach calls fn for every key in order; an error from fn stops the walk and is returned.
func (b *Bucket) ForEach(fn func(k, v []byte) error) error {
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return c.Err()
}

// BucketStats are a bucket's counts.
type BucketStats struct {
	KeyN int // number of keys
}

// Stats counts the bucket's keys (a full scan: for tests and tools).
func (b *Bucket) Stats() BucketStats {
	n := 0
	_ = b.ForEach(func(_, _ []byte) error { n++; return nil })
	return BucketStats{KeyN: n}
}

// quietLogger drops pebble's informational logs; errors go to stderr, and Fatalf panics so
// that the call serving it reports a damaged store instead of exiting the process.
type quietLogger struct{}

func (quietLogger) Infof(string, ...any) {}
func (quietLogger) Errorf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "pebble: "+format+"\n", a...)
}
func (quietLogger) Fatalf(format string, a ...any) { panic(fmt.Sprintf(format, a...)) }

// CorruptError says what is damaged. It matches ErrCorrupt.
type CorruptError struct {
	Op    string
	Cause string
}

func (e *CorruptError) Error() string {
	return "bucketstore: store damaged during " + e.Op + ": " + e.Cause
}

// Is makes CorruptError match ErrCorrupt.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

// openError classifies a failed open: an existing store that pebble cannot open for any reason
// but a lock held elsewhere, a missing or unreadable path, is damaged.
func openError(dir string, err error) error {
	err = classify(err, "open "+dir)
	switch {
	case errors.Is(err, ErrCorrupt), errors.Is(err, ErrLocked), !IsStore(dir),
		errors.Is(err, fs.ErrPermission), errors.Is(err, fs.ErrNotExist):
		return err
	}
	return &CorruptError{Op: "open " + dir, Cause: err.Error()}
}

// classify maps pebble's corruption and lock errors to this package's classes.
func classify(err error, op string) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrCorrupt), errors.Is(err, ErrNotWritable), errors.Is(err, ErrLocked):
		return err
	case errors.Is(err, pebble.ErrCorruption), pebble.IsCorruptionError(err):
		return &CorruptError{Op: op, Cause: err.Error()}
	case isLockErr(err):
		return fmt.Errorf("%w (%v)", ErrLocked, err)
	}
	return err
}

func isLockErr(err error) bool {
	s := err.Error()
	return bytes.Contains([]byte(s), []byte("lock held by current process")) ||
		bytes.Contains([]byte(s), []byte("resource temporarily unavailable"))
}

// recoverCorrupt turns a panic raised while pebble reads damaged files into a CorruptError.
func recoverCorrupt(err *error, op string) {
	if r := recover(); r != nil {
		*err = &CorruptError{Op: op, Cause: fmt.Sprint(r)}
	}
}

// CopyClosed copies the files of a store that no process has open from directory src into the
// new directory dst (for offline backups and tests). The LOCK file is not copied.
func CopyClosed(src, dst string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	if err := os.Mkdir(dst, 0o700); err != nil {
		return err
	}
	for _, e := range entries {
		if e.Name() == "LOCK" || !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// Flush writes the memtables to table files (for tools and tests; the store flushes on its own).
func (d *DB) Flush() (err error) {
	defer recoverCorrupt(&err, "flush")
	return classify(d.p.Flush(), "flush")
}
