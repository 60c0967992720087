package audit

import (
	"bytes"
	"errors"
	"testing"

	"github.com/signerd/signerd/signerd/bucketstore"
)

func pruneLog(t *testing.T, db *bucketstore.DB, through uint64, want [32]byte) error {
	t.Helper()
	return db.Update(func(tx *bucketstore.Tx) error {
		_, _, err := PruneTx(tx, through, want)
		return err
	})
}

func hashOf(t *testing.T, db *bucketstore.DB, seq uint64) [32]byte {
	t.Helper()
	r, err := Decode(seq, raw(t, db, seq))
	if err != nil {
		t.Fatal(err)
	}
	return r.Hash
}

// TestPruneCheckpoint: every export line rebuilds to its hash; a prune keeps the chain
// verifiable from the checkpoint; wrong hashes and the head are refused; a broken link at the
// checkpoint is detected.
func TestPruneCheckpoint(t *testing.T) {
	db := newLog(t, 30)
	var exp bytes.Buffer
	if err := Export(db, &exp, 0); err != nil {
		t.Fatal(err)
	}
	cc := NewChainCheck(Checkpoint{})
	for _, line := range bytes.Split(bytes.TrimSpace(exp.Bytes()), []byte{'\n'}) {
		r, err := ParseJSONRecord(line)
		if err != nil {
			t.Fatal(err)
		}
		if err := cc.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	if cc.N != 30 || cc.Last.Hash != hashOf(t, db, 30) {
		t.Fatalf("chain check of the export: %+v", cc)
	}
	if err := pruneLog(t, db, 10, hashOf(t, db, 9)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("wrong hash: %v", err)
	}
	if err := pruneLog(t, db, 30, hashOf(t, db, 30)); err == nil {
		t.Fatal("pruned the head")
	}
	h10 := hashOf(t, db, 10)
	if err := pruneLog(t, db, 10, h10); err != nil {
		t.Fatal(err)
	}
	if err := pruneLog(t, db, 5, hashOf(t, db, 20)); err == nil {
		t.Fatal("pruned backwards")
	}
	rep, err := Verify(db)
	if err != nil || rep.Records != 20 || rep.HeadSeq != 30 || rep.PrunedThrough != 10 {
		t.Fatalf("verify after prune: %+v %v", rep, err)
	}
	// The first record after the checkpoint no longer links to it.
	reencode(t, db, 11, func(r *Record) { r.Prev = bytes.Repeat([]byte{1}, 32) })
	rep, err = Verify(db)
	if !errors.Is(err, ErrCorrupt) || rep.FirstBad == nil || rep.FirstBad.Seq != 11 {
		t.Fatalf("broken link at checkpoint: %+v %v", rep, err)
	}
}
