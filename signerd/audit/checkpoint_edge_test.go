package audit

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/signerd/signerd/signerd/bucketstore"
)

// TestPruneAllButHead: pruned through head-1, the log is one record; head, verify, export
// (from a pruned seq: it starts at the first kept record, lines carry their seq), anchors
// (before, at, after the checkpoint) all work; a record appended next (the retention record
// of a real prune) chains from it; a rewritten checkpoint is detected.
func TestPruneAllButHead(t *testing.T) {
	db := newLog(t, 12)
	h11 := hashOf(t, db, 11)
	h5 := hashOf(t, db, 5)
	if err := pruneLog(t, db, 11, h11); err != nil {
		t.Fatal(err)
	}
	var hi HeadInfo
	if err := db.View(func(tx *bucketstore.Tx) (err error) { hi, err = HeadInfoTx(tx); return err }); err != nil || hi.Seq != 12 {
		t.Fatalf("head after pruning all but it: %+v %v", hi, err)
	}
	rep, err := Verify(db)
	if err != nil || !rep.OK || rep.Records != 1 || rep.PrunedThrough != 11 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	var exp bytes.Buffer
	if err := Export(db, &exp, 3); err != nil || !strings.HasPrefix(exp.String(), `{"seq":12,`) || strings.Count(exp.String(), "\n") != 1 {
		t.Fatalf("export --from 3 after prune: %v %q", err, exp.String())
	}
	if err := db.Update(func(tx *bucketstore.Tx) error {
		_, err := Append(tx, t0.Add(time.Hour), Event{Kind: KindRetention, Operator: "alice"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	h12 := hashOf(t, db, 12)
	ar, err := VerifyAnchored(db, []Anchor{{Seq: 5, Hash: h5}, {Seq: 11, Hash: h11}, {Seq: 12, Hash: h12}})
	if err != nil || !ar.OK || ar.Records != 2 || ar.Anchors[0].Status != AnchorPruned || ar.Anchors[1].Status != AnchorOK || ar.Anchors[2].Status != AnchorOK {
		t.Fatalf("anchors: %+v %v", ar, err)
	}
	// Someone with write access rewrites the checkpoint: record 12 no longer links to it.
	if err := db.Update(func(tx *bucketstore.Tx) error {
		v := append([]byte(nil), tx.Bucket(BucketCheckpoint).Get(CheckpointKey)...)
		v[20] ^= 1
		return tx.Bucket(BucketCheckpoint).Put(CheckpointKey, v)
	}); err != nil {
		t.Fatal(err)
	}
	if rep, err := Verify(db); !errors.Is(err, ErrCorrupt) || rep.FirstBad == nil || rep.FirstBad.Seq != 12 {
		t.Fatalf("rewritten checkpoint: %+v %v", rep, err)
	}
}
