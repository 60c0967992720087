package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/signerd/signerd/signerd/bucketstore"
)

var t0 = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

// newLog creates a bbolt file with n records of varied kinds.
func newLog(t *testing.T, n int) *bucketstore.DB {
	t.Helper()
	db, err := bucketstore.Open(filepath.Join(t.TempDir(), "audit.db"), bucketstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	if err := db.Update(Init); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		err := db.Update(func(tx *bucketstore.Tx) error {
			ev := Event{Kind: Kinds[i%len(Kinds)], Principal: "uid:1000", RecordID: uint64(i),
				Reason: fmt.Sprintf("event %d", i), Digest: bytes.Repeat([]byte{byte(i)}, 32)}
			if ev.Kind == KindDecision {
				ev.Charges = []Charge{{Key: "daily/a", Window: 86400, Amount: "12345", Bucket: 7}}
				ev.Attrs = map[string]string{"z": "1", "a": "2"}
			}
			r, err := Append(tx, t0.Add(time.Duration(i)*time.Second), ev)
			if err == nil && r.Seq != uint64(i) {
				t.Errorf("seq %d, want %d", r.Seq, i)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return db
}

func raw(t *testing.T, db *bucketstore.DB, seq uint64) []byte {
	var v []byte
	_ = db.View(func(tx *bucketstore.Tx) error {
		v = append([]byte(nil), tx.Bucket(BucketRecords).Get(seqKey(seq))...)
		return nil
	})
	return v
}

func put(t *testing.T, db *bucketstore.DB, seq uint64, v []byte) {
	t.Helper()
	err := db.Update(func(tx *bucketstore.Tx) error {
		if v == nil {
			return tx.Bucket(BucketRecords).Delete(seqKey(seq))
		}
		return tx.Bucket(BucketRecords).Put(seqKey(seq), v)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// reencode decodes record seq, lets f change it, and stores its canonical re-encoding (a
// tamperer who knows the format).
func reencode(t *testing.T, db *bucketstore.DB, seq uint64, f func(r *Record)) {
	t.Helper()
	r, err := Decode(seq, raw(t, db, seq))
	if err != nil {
		t.Fatal(err)
	}
	f(&r)
	b, err := Encode(&r)
	if err != nil {
		t.Fatal(err)
	}
	put(t, db, seq, b)
}

func TestVerifyGood(t *testing.T) {
	db := newLog(t, 20)
	rep, err := Verify(db)
	if err != nil || !rep.OK || rep.Records != 20 || rep.HeadSeq != 20 {
		t.Fatalf("%+v %v", rep, err)
	}
	_ = db.View(func(tx *bucketstore.Tx) error {
		seq, h, _ := Head(tx)
		r, _, _ := Get(tx, 20)
		if seq != 20 || h != r.Hash || rep.HeadHash != hx(h[:]) {
			t.Errorf("head %d %x vs %x %s", seq, h, r.Hash, rep.HeadHash)
		}
		return nil
	})
	// An empty log verifies.
	empty := newLog(t, 0)
	if rep, err := Verify(empty); err != nil || !rep.OK || rep.Records != 0 {
		t.Fatalf("empty: %+v %v", rep, err)
	}
}

func TestTamper(t *testing.T) {
	cases := []struct {
		name    string
		tamper  func(t *testing.T, db *bucketstore.DB)
		seq     uint64
		problem string
	}{
		{"flip a byte in the middle of record 7", func(t *testing.T, db *bucketstore.DB) {
			v := raw(t, db, 7)
			v[len(v)/2] ^= 0x01
			put(t, db, 7, v)
		}, 7, ""},
		{"flip the last byte of record 3", func(t *testing.T, db *bucketstore.DB) {
			v := raw(t, db, 3)
			v[len(v)-1] ^= 0x80
			put(t, db, 3, v)
		}, 3, ""},
		{"canonical rewrite of record 5's reason", func(t *testing.T, db *bucketstore.DB) {
			reencode(t, db, 5, func(r *Record) { r.Event.Reason = "nothing to see" })
		}, 5, "record 5 was altered"},
		{"rewrite of the last record", func(t *testing.T, db *bucketstore.DB) {
			reencode(t, db, 12, func(r *Record) { r.Event.Operator = "mallory" })
		}, 12, "head hash"},
		{"delete record 4", func(t *testing.T, db *bucketstore.DB) { put(t, db, 4, nil) }, 4, "record 4 missing"},
		{"delete the first record", func(t *testing.T, db *bucketstore.DB) { put(t, db, 1, nil) }, 1, "record 1 missing"},
		{"delete the last record", func(t *testing.T, db *bucketstore.DB) { put(t, db, 12, nil) }, 12, "records missing at the end"},
		{"swap records 8 and 9", func(t *testing.T, db *bucketstore.DB) {
			a, b := raw(t, db, 8), raw(t, db, 9)
			put(t, db, 8, b)
			put(t, db, 9, a)
		}, 8, "reordered"},
		{"swap records and fix their seq fields", func(t *testing.T, db *bucketstore.DB) {
			a, _ := Decode(8, raw(t, db, 8))
			b, _ := Decode(9, raw(t, db, 9))
			a.Seq, b.Seq = 9, 8
			ea, _ := Encode(&a)
			eb, _ := Encode(&b)
			put(t, db, 8, eb)
			put(t, db, 9, ea)
		}, 8, "altered or replaced"},
		{"non-canonical encoding of the same record", func(t *testing.T, db *bucketstore.DB) {
			// Re-encode with a non-deterministic encoder: length-prefixed → indefinite-length map.
			v := raw(t, db, 6)
			if v[0]&0xe0 != 0xa0 {
				t.Fatalf("record is not a map: %x", v[0])
			}
			n := v[0] & 0x1f
			w := append([]byte{0xbf}, v[1:]...)
			w = append(w, 0xff)
			_ = n
			put(t, db, 6, w)
		}, 6, "canonical"},
		{"garbage", func(t *testing.T, db *bucketstore.DB) { put(t, db, 2, []byte{0xff, 0x00}) }, 2, "undecodable"},
		{"unknown kind", func(t *testing.T, db *bucketstore.DB) {
			reencode(t, db, 11, func(r *Record) { r.Event.Kind = "erase" })
		}, 11, "unknown kind"},
		{"extra record appended behind the head", func(t *testing.T, db *bucketstore.DB) {
			r, _ := Decode(12, raw(t, db, 12))
			r.Seq, r.Prev = 13, r.Hash[:]
			b, _ := Encode(&r)
			put(t, db, 13, b)
		}, 13, "beyond the head"},
		{"head damaged", func(t *testing.T, db *bucketstore.DB) {
			_ = db.Update(func(tx *bucketstore.Tx) error { return tx.Bucket(BucketHead).Put(HeadKey, []byte{1}) })
		}, 13, "head has 1 bytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			db := newLog(t, 12)
			c.tamper(t, db)
			rep, err := Verify(db)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("want ErrCorrupt, got %v (%+v)", err, rep)
			}
			var ce *CorruptError
			if !errors.As(err, &ce) || rep.OK || rep.FirstBad != ce {
				t.Fatalf("report %+v err %v", rep, err)
			}
			want := c.seq
			if ce.Seq != want || !strings.Contains(ce.Problem, c.problem) {
				t.Fatalf("first bad seq %d (%s), want %d containing %q", ce.Seq, ce.Problem, want, c.problem)
			}
			if c.name != "head damaged" && (rep.Records != want-1 || rep.HeadSeq != want-1) {
				t.Errorf("records good %d (head %d), want %d", rep.Records, rep.HeadSeq, want-1)
			}
		})
	}
}

func TestUnknownKindDetected(t *testing.T) {
	db := newLog(t, 3)
	// Rewrite the whole chain consistently with a bad kind in the last record: only the kind
	// check can catch it.
	reencode(t, db, 3, func(r *Record) { r.Event.Kind = "erase" })
	_ = db.Update(func(tx *bucketstore.Tx) error {
		r, _, _ := Get(tx, 3)
		h := make([]byte, 40)
		copy(h, seqKey(3))
		copy(h[8:], r.Hash[:])
		return tx.Bucket(BucketHead).Put(HeadKey, h)
	})
	_, err := Verify(db)
	var ce *CorruptError
	if !errors.As(err, &ce) || ce.Seq != 3 || !strings.Contains(ce.Problem, "unknown kind") {
		t.Fatalf("%v", err)
	}
}

func TestAppendRejectsUnknownKind(t *testing.T) {
	db := newLog(t, 1)
	err := db.Update(func(tx *bucketstore.Tx) error {
		_, err := Append(tx, t0, Event{Kind: "nope"})
		return err
	})
	if err == nil {
		t.Fatal("unknown kind appended")
	}
	if rep, err := Verify(db); err != nil || rep.Records != 1 {
		t.Fatalf("%+v %v", rep, err)
	}
}

func TestExportJSONLines(t *testing.T) {
	db := newLog(t, 9)
	var buf bytes.Buffer
	if err := Export(db, &buf, 0); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(&buf)
	var prevHash string
	n := 0
	for sc.Scan() {
		n++
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %d: %v", n, err)
		}
		if m["seq"].(float64) != float64(n) || m["kind"] == "" || len(m["hash"].(string)) != 66 {
			t.Fatalf("line %d: %v", n, m)
		}
		if n > 1 && m["prev"] != prevHash {
			t.Fatalf("line %d prev %v, want %s", n, m["prev"], prevHash)
		}
		if m["time"] != t0.Add(time.Duration(n)*time.Second).Format(time.RFC3339Nano) {
			t.Fatalf("time %v", m["time"])
		}
		prevHash = m["hash"].(string)
	}
	if n != 9 {
		t.Fatalf("%d lines", n)
	}
	buf.Reset()
	if err := Export(db, &buf, 8); err != nil || strings.Count(buf.String(), "\n") != 2 {
		t.Fatalf("from 8: %q %v", buf.String(), err)
	}
	// Export stops at an undecodable record with ErrCorrupt.
	put(t, db, 5, []byte{0x01})
	if err := Export(db, &bytes.Buffer{}, 0); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("export of corrupt log: %v", err)
	}
}

// TestEncodingIsDeterministic pins the encoding of one record: a change to field numbers or
// options would silently break verification of existing logs.
func TestEncodingIsDeterministic(t *testing.T) {
	r := Record{Seq: 1, Time: t0.UnixNano(), Prev: make([]byte, 32), Event: Event{Kind: KindKillSwitch,
		Operator: "alice", Attrs: map[string]string{"b": "2", "a": "1"}}}
	a, _ := Encode(&r)
	for i := 0; i < 20; i++ {
		b, _ := Encode(&r)
		if !bytes.Equal(a, b) {
			t.Fatal("encoding not deterministic")
		}
	}
	const want = "a40101021b18ea0da41e9d8000035820000000000000000000000000000000000000000000000000000000000000000004a3016b6b696c6c5f7377697463680f65616c69636514a26161613161626132"
	if got := fmt.Sprintf("%x", a); got != want {
		t.Fatalf("encoding changed:\n got %s\nwant %s", got, want)
	}
	d, err := Decode(1, a)
	if err != nil || d.Event.Attrs["a"] != "1" || d.Event.Operator != "alice" {
		t.Fatalf("%+v %v", d, err)
	}
}
