package ledger

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/bucketstore"
)

// stateFixture is a closed ledger with every kind of bound state: signed records (durable and
// lazily recorded), a released one, a possibly signed one, daily and lifetime usage, operator
// state written and deleted; pruned once when prune is set (so the state base is used).
func stateFixture(t *testing.T, prune bool) (string, *fakeClock) {
	t.Helper()
	l, clk, path := pruneFixture(t)
	ctx := context.Background()
	if prune {
		var a bytes.Buffer
		s, err := l.ExportArchive(&a, t0.Add(2*time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.Prune(ctx, PruneRequest{Before: s.Before, Plan: s.Plan}); err != nil {
			t.Fatal(err)
		}
	}
	day := charge("daily", 24*time.Hour, 1000, 7)
	r, _ := l.Reserve(ctx, resv(3, 1, `{"n":3}`, day))
	if err := r.Durable(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := l.RecordSignature(ctx, r.RecordID, sig65(3)); err != nil {
		t.Fatal(err)
	}
	l.Reserve(ctx, resv(3, 2, `{"n":4}`, day)) // left reserved: possibly signed
	r, _ = l.Reserve(ctx, resv(3, 3, `{"n":5}`, day))
	l.Release(ctx, r.RecordID, "", "hsm down")
	for _, kv := range [][2]string{{"ks", "engaged"}, {"ks", "resumed"}, {"gone", "x"}} {
		if err := l.PutState(ctx, kv[0], []byte(kv[1]), audit.Event{Kind: audit.KindKillSwitch}); err != nil {
			t.Fatal(err)
		}
	}
	l.PutState(ctx, "gone", nil, audit.Event{Kind: audit.KindKillSwitch})
	if rep, err := l.VerifyState(clk.Now()); err != nil || !rep.OK || rep.Unbound != "" {
		t.Fatalf("untouched ledger: %+v %v", rep, err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path, clk
}

// edit applies change to a copy of the closed ledger at path and returns VerifyState's answer.
func edit(t *testing.T, path string, now time.Time, change func(tx *bucketstore.Tx) error) error {
	t.Helper()
	cp := filepath.Join(t.TempDir(), "copy.db")
	if err := bucketstore.CopyClosed(path, cp); err != nil {
		t.Fatal(err)
	}
	db, err := bucketstore.Open(cp, bucketstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(change); err != nil {
		t.Fatal(err)
	}
	db.Close()
	l, err := Open(Options{Path: cp})
	if err != nil {
		return err
	}
	defer l.Close()
	_, err = l.VerifyState(now)
	return err
}

// firstKey returns the first key of bucket b whose value satisfies ok.
func firstKey(tx *bucketstore.Tx, b []byte, ok func(k, v []byte) bool) []byte {
	c := tx.Bucket(b).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if ok(k, v) {
			return k
		}
	}
	return nil
}

func any2(k, v []byte) bool { return true }

// TestOfflineEditsOfDecidingStateAreDetected: every edit of the state that decides — made with
// the store's own tools, so every checksum is valid — is reported by VerifyState, with and
// without a prune behind the live chain.
func TestOfflineEditsOfDecidingStateAreDetected(t *testing.T) {
	edits := map[string]func(tx *bucketstore.Tx) error{
		"usage lowered": func(tx *bucketstore.Tx) error {
			k := firstKey(tx, bucketUsage, any2)
			return tx.Bucket(bucketUsage).Put(k, []byte{1})
		},
		"usage deleted": func(tx *bucketstore.Tx) error {
			return tx.Bucket(bucketUsage).Delete(firstKey(tx, bucketUsage, any2))
		},
		"replay entry deleted": func(tx *bucketstore.Tx) error {
			return tx.Bucket(bucketReplay).Delete(firstKey(tx, bucketReplay, func(_, v []byte) bool { return v[40] != replayPruned }))
		},
		"replay entry released": func(tx *bucketstore.Tx) error {
			k := firstKey(tx, bucketReplay, func(_, v []byte) bool { return v[40] == 'r' })
			v := append([]byte(nil), tx.Bucket(bucketReplay).Get(k)...)
			v[40] = 'x'
			return tx.Bucket(bucketReplay).Put(k, v)
		},
		"signature flipped": func(tx *bucketstore.Tx) error {
			k := firstKey(tx, bucketSigs, any2)
			v := append([]byte(nil), tx.Bucket(bucketSigs).Get(k)...)
			v[20] ^= 1
			return tx.Bucket(bucketSigs).Put(k, v)
		},
		"signature removed": func(tx *bucketstore.Tx) error {
			k := firstKey(tx, bucketSigs, any2)
			if err := tx.Bucket(bucketSigs).Delete(k); err != nil {
				return err
			}
			return tx.Bucket(bucketPending).Put(k, nil)
		},
		"record released": func(tx *bucketstore.Tx) error {
			k := firstKey(tx, bucketPending, any2)
			rec, err := getRecord(tx, RecordID(binary.BigEndian.Uint64(k)))
			if err != nil {
				return err
			}
			rec.Status = StatusReleased
			return putRecord(tx, rec)
		},
		"record deleted": func(tx *bucketstore.Tx) error {
			return tx.Bucket(bucketRecords).Delete(firstKey(tx, bucketPending, any2))
		},
		"operator state replaced": func(tx *bucketstore.Tx) error {
			return tx.Bucket(bucketState).Put([]byte("ks"), []byte("engaged"))
		},
		"operator state forged": func(tx *bucketstore.Tx) error {
			return tx.Bucket(bucketState).Put([]byte("approval/forged"), []byte(`{"state":"approved"}`))
		},
		"deleted operator state restored": func(tx *bucketstore.Tx) error {
			return tx.Bucket(bucketState).Put([]byte("gone"), []byte("x"))
		},
		"key marked pruned": func(tx *bucketstore.Tx) error {
			k := firstKey(tx, bucketReplay, func(_, v []byte) bool { return v[40] == 'r' })
			v := append([]byte(nil), tx.Bucket(bucketReplay).Get(k)...)
			v[40] = replayPruned
			return tx.Bucket(bucketReplay).Put(k, v)
		},
	}
	for _, prune := range []bool{false, true} {
		path, clk := stateFixture(t, prune)
		for name, change := range edits {
			err := edit(t, path, clk.Now(), change)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "corrupt") {
				t.Errorf("pruned=%v, %s: VerifyState said %v", prune, name, err)
			}
		}
		if err := edit(t, path, clk.Now(), func(*bucketstore.Tx) error { return nil }); err != nil {
			t.Fatalf("pruned=%v, an untouched copy: %v", prune, err)
		}
	}
}

// TestStateBaseIsBoundToTheChain: a prune's stored state base is checked against its retention
// record; editing it (to hide an edit of the state) is reported.
func TestStateBaseIsBoundToTheChain(t *testing.T) {
	path, clk := stateFixture(t, true)
	err := edit(t, path, clk.Now(), func(tx *bucketstore.Tx) error {
		v := append([]byte(nil), tx.Bucket(bucketMeta).Get(stateBaseKey)...)
		v[len(v)-1] ^= 1
		return tx.Bucket(bucketMeta).Put(stateBaseKey, v)
	})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "base") {
		t.Fatalf("edited base: %v", err)
	}
}
