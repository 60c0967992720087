package ledger

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"

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
// copy is renamed to path. A crash at any step leaves either the original in place (the next
// start migrates again from scratch) or the finished store.
func migrateIfBolt(path string, lockTimeout time.Duration) error {
	ok, err := IsBoltFile(path)
	if !ok || err != nil {
		return err
	}
	src, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: lockTimeout})
	if err != nil {
		return &StoreError{Op: "migrate: open the bbolt ledger", Err: err}
	}
	defer src.Close()
	tmp := path + ".migrating"
	if err := os.RemoveAll(tmp); err != nil {
		return &StoreError{Op: "migrate", Err: err}
	}
	if err := copyBolt(src, tmp); err != nil {
		_ = os.RemoveAll(tmp)
		return err
	}
	backup := path + ".bbolt-backup-" + time.Now().UTC().Format("20060102T150405Z")
	if err := os.Rename(path, backup); err != nil {
		return &StoreError{Op: "migrate: keep the bbolt ledger as " + backup, Err: err}
	}
	if err := os.Rename(tmp, path); err != nil {
		return &StoreError{Op: "migrate: switch to the new store", Err: err}
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
	return verifyCopy(src, dst)
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
					return fmt.Errorf("bucket %q holds a nested bucket %x (not a ledger)", name, k)
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
