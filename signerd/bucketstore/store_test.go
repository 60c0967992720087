package bucketstore

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func open(t *testing.T, dir string) *DB {
	t.Helper()
	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func TestWritesAreReadBackInOrderAfterReopen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	db := open(t, dir)
	err := db.Update(func(tx *Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("a"))
		if err != nil {
			return err
		}
		for i := 5; i >= 1; i-- {
			if err := b.Put([]byte{byte(i)}, []byte(fmt.Sprint(i))); err != nil {
				return err
			}
		}
		if err := b.Put([]byte{9}, nil); err != nil { // empty value
			return err
		}
		if _, err := tx.CreateBucketIfNotExists([]byte("ab")); err != nil { // a prefix-sharing name
			return err
		}
		tx.Bucket([]byte("ab")).Put([]byte{1}, []byte("other"))
		return b.SetSequence(41)
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	db, err = Open(dir, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_ = db.View(func(tx *Tx) error {
		b := tx.Bucket([]byte("a"))
		if b == nil || b.Sequence() != 41 || tx.Bucket([]byte("zz")) != nil {
			t.Fatalf("bucket/sequence lost")
		}
		var keys []byte
		_ = b.ForEach(func(k, v []byte) error { keys = append(keys, k[0]); return nil })
		if !bytes.Equal(keys, []byte{1, 2, 3, 4, 5, 9}) {
			t.Fatalf("keys %v", keys)
		}
		if v := b.Get([]byte{9}); v == nil || len(v) != 0 {
			t.Fatalf("empty value read as %v", v)
		}
		if b.Get([]byte{7}) != nil {
			t.Fatal("absent key found")
		}
		c := b.Cursor()
		if k, _ := c.Last(); k[0] != 9 {
			t.Fatalf("last %v", k)
		}
		if k, _ := c.Prev(); k[0] != 5 {
			t.Fatalf("prev %v", k)
		}
		if k, v := c.Seek([]byte{3}); k[0] != 3 || string(v) != "3" {
			t.Fatalf("seek %v %s", k, v)
		}
		return nil
	})
	if err := db.Update(func(*Tx) error { return nil }); !errors.Is(err, ErrNotWritable) {
		t.Fatalf("read-only update: %v", err)
	}
}

func TestCursorSeesItsOwnDeletesAndWrites(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "s"))
	defer db.Close()
	err := db.Update(func(tx *Tx) error {
		b, _ := tx.CreateBucketIfNotExists([]byte("u"))
		for i := 1; i <= 6; i++ {
			b.Put([]byte{byte(i)}, []byte{byte(i)})
		}
		c := b.Cursor()
		var seen []byte
		for k, _ := c.First(); k != nil; {
			seen = append(seen, k[0])
			if k[0]%2 == 0 {
				c.Delete()
				k, _ = c.Seek(k)
				continue
			}
			k, _ = c.Next()
		}
		if !bytes.Equal(seen, []byte{1, 2, 3, 4, 5, 6}) {
			t.Fatalf("walk %v", seen)
		}
		if b.Stats().KeyN != 3 || b.Get([]byte{2}) != nil {
			t.Fatalf("deletes not visible: %d keys", b.Stats().KeyN)
		}
		return tx.DeleteBucket([]byte("u"))
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = db.View(func(tx *Tx) error {
		if tx.Bucket([]byte("u")) != nil {
			t.Fatal("deleted bucket still there")
		}
		return nil
	})
}

func TestAnErrorDiscardsTheTransaction(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "s"))
	defer db.Close()
	boom := errors.New("boom")
	err := db.Update(func(tx *Tx) error {
		b, _ := tx.CreateBucketIfNotExists([]byte("x"))
		b.Put([]byte("k"), []byte("v"))
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatal(err)
	}
	_ = db.View(func(tx *Tx) error {
		if tx.Bucket([]byte("x")) != nil {
			t.Fatal("a failed transaction wrote")
		}
		return nil
	})
}

func TestApplyIsVisibleAndSyncCountsFsyncs(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "s"))
	defer db.Close()
	s0 := db.Syncs()
	for i := 0; i < 10; i++ {
		if err := db.Apply(func(tx *Tx) error {
			b, _ := tx.CreateBucketIfNotExists([]byte("x"))
			return b.Put([]byte{byte(i)}, nil)
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Sync(); err != nil {
		t.Fatal(err)
	}
	if n := db.Syncs() - s0; n != 1 {
		t.Fatalf("%d syncs for ten applies and one sync", n)
	}
	_ = db.View(func(tx *Tx) error {
		if n := tx.Bucket([]byte("x")).Stats().KeyN; n != 10 {
			t.Fatalf("%d keys visible", n)
		}
		return nil
	})
}

func TestSecondOpenIsRefusedAsLocked(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	db := open(t, dir)
	defer db.Close()
	_, err := Open(dir, Options{ReadOnly: true})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v", err)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "none"), Options{ReadOnly: true}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing store: %v", err)
	}
}

func TestDamagedTablesAreReportedAsCorrupt(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	db := open(t, dir)
	_ = db.Update(func(tx *Tx) error {
		b, _ := tx.CreateBucketIfNotExists([]byte("x"))
		for i := 0; i < 2000; i++ {
			b.Put([]byte(fmt.Sprintf("%08d", i)), bytes.Repeat([]byte{byte(i)}, 100))
		}
		return nil
	})
	if err := db.p.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := db.Checkpoint(dir + ".cp"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	tables, _ := filepath.Glob(filepath.Join(dir+".cp", "*.sst"))
	if len(tables) == 0 {
		t.Fatal("no table file")
	}
	for _, f := range tables {
		b, _ := os.ReadFile(f)
		for i := 100; i < len(b)/2; i += 997 {
			b[i] ^= 0x5a
		}
		os.WriteFile(f, b, 0o600)
	}
	db2, err := Open(dir+".cp", Options{ReadOnly: true})
	if err != nil {
		if !errors.Is(err, ErrCorrupt) {
			t.Logf("open refused: %v", err)
		}
		return
	}
	defer db2.Close()
	err = db2.View(func(tx *Tx) error {
		b := tx.Bucket([]byte("x"))
		if b == nil {
			return errors.New("bucket missing")
		}
		c := b.Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
		}
		return c.Err()
	})
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged table read as: %v", err)
	}
}
