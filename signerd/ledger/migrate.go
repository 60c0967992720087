package ledger

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/bucketstore"
)

// boltMagic is bbolt's file magic (little-endian uint32 at offset 16 of the first meta page).
var boltMagic = []byte{0xed, 0xda, 0x0c, 0xed}

// IsBoltFile reports whether path is a regular file that starts like a bbolt database: a
// ledger written by an earlier signerd version, which Open migrates.
func IsBoltFile(path string) (bool, error) {
	fi, err := os.Stat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return false, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return false, &StoreError{Op: "migrate", Err: err}
	}
	defer f.Close()
	head := make([]byte, 20)
	if _, err := f.ReadAt(head, 0); err != nil {
		return false, fmt.Errorf("%w: %s is a file but not a ledger (too short)", ErrCorrupt, path)
	}
	if !bytes.Equal(head[16:20], boltMagic) {
		return false, fmt.Errorf("%w: %s is a file but not a ledger (no bbolt magic)", ErrCorrupt, path)
	}
	return true, nil
}

// migrateIfBolt converts a ledger file written by the bbolt versions of signerd into the
// current store, once: every bucket is copied with its sequences into path+".migrating", the
// copy is verified (the audit chain verifies and every bucket holds the same keys and values as
// the original), the original is renamed to path+".bbolt-backup-<UTC time>" and kept, and the
// copy is renamed to path. A crash at any step leaves the original in place (the next start
// migrates again from scratch), the finished store, or — between the two renames — the backup
// and the copy but nothing at path, which the next start undoes (see undoInterruptedSwitch)
// before migrating again.
func migrateIfBolt(path string, lockTimeout time.Duration) (backup string, err error) {
	if err := undoInterruptedSwitch(path); err != nil {
		return "", err
	}
	ok, err := IsBoltFile(path)
	if !ok || err != nil {
		return "", err
	}
	// A damaged file can make bbolt panic or fault on its memory map: that is corruption.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			_ = os.RemoveAll(path + ".migrating")
			err = fmt.Errorf("%w: %s: the bbolt ledger cannot be read (%v); the file was left as it is", ErrCorrupt, path, r)
		}
	}()
	src, err := openBolt(path, lockTimeout)
	if err != nil {
		return "", err
	}
	defer src.Close()
	if err := checkSchema(src, path); err != nil {
		return "", err
	}
	tmp := path + ".migrating"
	if err := os.RemoveAll(tmp); err != nil {
		return "", &StoreError{Op: "migrate", Err: err}
	}
	if err := copyBolt(src, tmp); err != nil {
		_ = os.RemoveAll(tmp)
		return "", err
	}
	dir := filepath.Dir(path)
	if err := syncDir(dir); err != nil { // the copy's directory entry is durable before the renames
		return "", err
	}
	backup = backupName(path, time.Now())
	if err := os.Rename(path, backup); err != nil {
		return "", &StoreError{Op: "migrate: keep the bbolt ledger as " + backup, Err: err}
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", &StoreError{Op: "migrate: switch to the new store", Err: err}
	}
	return backup, syncDir(dir)
}

// openBolt opens the bbolt ledger at path read-only. A file bbolt cannot read is ErrCorrupt.
func openBolt(path string, lockTimeout time.Duration) (*bolt.DB, error) {
	src, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: lockTimeout})
	switch {
	case errors.Is(err, berrors.ErrInvalid) || errors.Is(err, berrors.ErrChecksum) || errors.Is(err, berrors.ErrVersionMismatch):
		return nil, fmt.Errorf("%w: %s is not a readable bbolt ledger: %v", ErrCorrupt, path, err)
	case err != nil:
		return nil, &StoreError{Op: "migrate: open the bbolt ledger", Err: err}
	}
	return src, nil
}

// checkSchema checks that src is a signerd ledger (ErrCorrupt if it is a bbolt file of
// something else) of the schema this build migrates (ErrInvalid if another).
func checkSchema(src *bolt.DB, path string) error {
	return src.View(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		if m == nil || m.Get(schemaKey) == nil {
			return fmt.Errorf("%w: %s is a bbolt file but not a signerd ledger (no schema in it)", ErrCorrupt, path)
		}
		if v := m.Get(schemaKey); !bytes.Equal(v, schemaVersion) {
			return fmt.Errorf("%w: %s: ledger schema %q, this build migrates %q", ErrInvalid, path, v, schemaVersion)
		}
		return nil
	})
}

// backupPrefix is what the name of a bbolt ledger kept by a migration starts with, after the
// ledger's own name.
const backupPrefix = ".bbolt-backup-"

// backupName names the backup of the bbolt ledger at path migrated at now: path+
// ".bbolt-backup-<UTC time>", with "-N" added if a file of that name exists (a rename would
// replace it).
func backupName(path string, now time.Time) string {
	name := path + backupPrefix + now.UTC().Format("20060102T150405Z")
	for n, cand := 1, name; ; n++ {
		if _, err := os.Lstat(cand); errors.Is(err, fs.ErrNotExist) {
			return cand
		}
		cand = fmt.Sprintf("%s-%d", name, n)
	}
}

// undoInterruptedSwitch repairs a migration that stopped between its two renames: nothing at
// path, the verified copy at path+".migrating" and the original already renamed to its backup.
// Without it Open would create an empty ledger at path, forgetting every signature, replay key
// and charge. The newest backup is renamed back to path, so the migration runs again from
// scratch (re-copied, re-verified). With nothing at path, a copy, and no backup, it refuses.
func undoInterruptedSwitch(path string) error {
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if _, err := os.Lstat(path + ".migrating"); err != nil {
		return nil
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return &StoreError{Op: "migrate: look for the bbolt backup", Err: err}
	}
	last := ""
	for _, e := range entries { // names sort by their UTC time: the last one is the newest
		if e.Type().IsRegular() && strings.HasPrefix(e.Name(), base+backupPrefix) {
			last = filepath.Join(dir, e.Name())
		}
	}
	if last == "" {
		return &StoreError{Op: "migrate", Err: fmt.Errorf("%s is missing and %s.migrating, an interrupted migration's copy, is there, but no %s%s* file: restore the ledger file (or remove %s.migrating if the ledger is meant to start empty)", path, path, path, backupPrefix, path)}
	}
	if ok, err := IsBoltFile(last); !ok {
		return fmt.Errorf("%w: %s, the backup of an interrupted migration, is not a bbolt ledger (%v)", ErrCorrupt, last, err)
	}
	if err := os.Rename(last, path); err != nil {
		return &StoreError{Op: "migrate: put the bbolt ledger back from " + last, Err: err}
	}
	return syncDir(filepath.Dir(path))
}

// copyBolt copies every bucket of src into a new store at dir, then verifies the copy.
func copyBolt(src *bolt.DB, dir string) error {
	dst, err := bucketstore.Open(dir, bucketstore.Options{})
	if err != nil {
		return &StoreError{Op: "migrate: create the store", Err: err}
	}
	defer dst.Close()
	err = src.View(func(stx *bolt.Tx) error {
		return stx.ForEach(func(name []byte, sb *bolt.Bucket) error {
			return copyBucket(dst, name, sb)
		})
	})
	if err != nil {
		return &StoreError{Op: "migrate: copy", Err: err}
	}
	if err := dst.Update(func(tx *bucketstore.Tx) error {
		if tx.Bucket(bucketPending) != nil || tx.Bucket(bucketRecords) == nil {
			return nil
		}
		if _, err := tx.CreateBucketIfNotExists(bucketPending); err != nil { // a file older than the index
			return err
		}
		return fillPending(tx)
	}); err != nil {
		return &StoreError{Op: "migrate: pending index", Err: err}
	}
	if err := verifyCopy(src, dst); err != nil {
		return err
	}
	return bindMigratedState(dst)
}

// bindMigratedState appends, to the copy's audit log, one migration record per operator state
// key the old ledger had (its SHA-256), so that the state check knows every key (see
// verifystate.go); with no state, one record marks the migration.
func bindMigratedState(dst *bucketstore.DB) error {
	err := dst.Update(func(tx *bucketstore.Tx) error {
		now := time.Now()
		n := 0
		c := tx.Bucket(bucketState).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			h := sha256.Sum256(v)
			ev := audit.Event{Kind: audit.KindMigration, Reason: "operator state carried over from the bbolt ledger",
				Attrs: map[string]string{attrStateKey: string(k), attrStateSHA256: hex.EncodeToString(h[:])}}
			if _, err := audit.Append(tx, now, ev); err != nil {
				return err
			}
			n++
		}
		if err := c.Err(); err != nil || n > 0 {
			return err
		}
		_, err := audit.Append(tx, now, audit.Event{Kind: audit.KindMigration, Reason: "migrated from the bbolt ledger"})
		return err
	})
	if err != nil {
		return &StoreError{Op: "migrate: bind the state", Err: err}
	}
	return nil
}

// copyBucket copies one bucket in transactions of at most 4096 keys.
func copyBucket(dst *bucketstore.DB, name []byte, sb *bolt.Bucket) error {
	c := sb.Cursor()
	k, v := c.First()
	first := true
	for first || k != nil {
		first = false
		err := dst.Update(func(tx *bucketstore.Tx) error {
			b, err := tx.CreateBucketIfNotExists(name)
			if err != nil {
				return err
			}
			if err := b.SetSequence(sb.Sequence()); err != nil {
				return err
			}
			for n := 0; k != nil && n < 4096; k, v = c.Next() {
				if v == nil {
					return fmt.Errorf("%w: bucket %q holds a nested bucket %x (not a ledger)", ErrCorrupt, name, k)
				}
				if err := b.Put(k, v); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// verifyCopy checks that dst holds exactly src's buckets, keys, values and sequences, and that
// the copied audit chain verifies.
func verifyCopy(src *bolt.DB, dst *bucketstore.DB) error {
	err := src.View(func(stx *bolt.Tx) error {
		return dst.View(func(dtx *bucketstore.Tx) error {
			n := 0
			err := stx.ForEach(func(name []byte, sb *bolt.Bucket) error {
				n++
				return sameBucket(name, sb, dtx.Bucket(name))
			})
			if err != nil {
				return err
			}
			names, err := dtx.BucketNames()
			if err != nil {
				return err
			}
			if len(names) != n && !(len(names) == n+1 && stx.Bucket(bucketPending) == nil) {
				return fmt.Errorf("%d buckets copied, %d in the original", len(names), n)
			}
			_, err = audit.VerifyTx(dtx)
			return err
		})
	})
	if err != nil {
		return &StoreError{Op: "migrate: verify the copy", Err: err}
	}
	return nil
}

func sameBucket(name []byte, sb *bolt.Bucket, db *bucketstore.Bucket) error {
	if db == nil || db.Sequence() != sb.Sequence() {
		return fmt.Errorf("bucket %q missing or its sequence differs", name)
	}
	sc, dc := sb.Cursor(), db.Cursor()
	sk, sv := sc.First()
	dk, dv := dc.First()
	for ; sk != nil || dk != nil; sk, sv = sc.Next() {
		if !bytes.Equal(sk, dk) || !bytes.Equal(sv, dv) {
			return fmt.Errorf("bucket %q differs at key %x", name, sk)
		}
		dk, dv = dc.Next()
	}
	return dc.Err()
}

// syncDir fsyncs a directory so that renames in it are durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return &StoreError{Op: "migrate: sync directory", Err: err}
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return &StoreError{Op: "migrate: sync directory", Err: err}
	}
	return nil
}
