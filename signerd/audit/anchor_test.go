package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/signerd/signerd/signerd/bucketstore"
)

func headOf(t *testing.T, db *bucketstore.DB) HeadInfo {
	t.Helper()
	h, err := ReadHead(db)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// anchorAt returns the anchor of record seq as it is now.
func anchorAt(t *testing.T, db *bucketstore.DB, seq uint64) Anchor {
	t.Helper()
	var a Anchor
	_ = db.View(func(tx *bucketstore.Tx) error {
		r, ok, err := Get(tx, seq)
		if !ok || err != nil {
			t.Fatalf("record %d: %v %v", seq, ok, err)
		}
		a = Anchor{Seq: seq, Hash: r.Hash}
		return nil
	})
	return a
}

// copyDB copies the bbolt file of db (closed afterwards by the test) to a new file and opens it.
func copyDB(t *testing.T, db *bucketstore.DB) *bucketstore.DB {
	t.Helper()
	p := filepath.Join(t.TempDir(), "copy.db")
	if err := db.Checkpoint(p); err != nil {
		t.Fatal(err)
	}
	c, err := bucketstore.Open(p, bucketstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// rewriteChain replaces the whole log by a fresh, internally consistent chain of n records
// (what someone with write access to the file and the format can do).
func rewriteChain(t *testing.T, db *bucketstore.DB, n int, reason string) {
	t.Helper()
	err := db.Update(func(tx *bucketstore.Tx) error {
		for _, b := range [][]byte{BucketRecords, BucketHead} {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
		}
		if err := Init(tx); err != nil {
			return err
		}
		for i := 1; i <= n; i++ {
			if _, err := Append(tx, t0.Add(time.Duration(i)*time.Second), Event{Kind: KindPolicyReload, Reason: fmt.Sprintf("%s %d", reason, i)}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// truncateTo deletes the records after seq and moves the head back to seq (a rollback).
func truncateTo(t *testing.T, db *bucketstore.DB, seq uint64) {
	t.Helper()
	err := db.Update(func(tx *bucketstore.Tx) error {
		last, _, err := Head(tx)
		if err != nil {
			return err
		}
		for s := seq + 1; s <= last; s++ {
			if err := tx.Bucket(BucketRecords).Delete(seqKey(s)); err != nil {
				return err
			}
		}
		r, _, err := Get(tx, seq)
		if err != nil {
			return err
		}
		h := make([]byte, 40)
		copy(h, seqKey(seq))
		copy(h[8:], r.Hash[:])
		return tx.Bucket(BucketHead).Put(HeadKey, h)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestHeadInfo(t *testing.T) {
	db := newLog(t, 7)
	h := headOf(t, db)
	a := anchorAt(t, db, 7)
	if h.Seq != 7 || h.Hash != a.Hash || !h.Time.Equal(t0.Add(7*time.Second)) {
		t.Fatalf("head %+v, want seq 7 hash %x time %s", h, a.Hash, t0.Add(7*time.Second))
	}
	line := h.Line()
	want := fmt.Sprintf("seq=7 hash=0x%x time=2026-11-21T12:00:07Z", a.Hash)
	if line != want {
		t.Fatalf("line %q, want %q", line, want)
	}
	// The line, the short form and the JSON all parse back to the same anchor.
	j, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{line, a.String(), string(j)} {
		got, err := ParseAnchor(s)
		if err != nil || got != a {
			t.Fatalf("ParseAnchor(%q) = %v, %v; want %v", s, got, err, a)
		}
	}
	var back HeadInfo
	if err := json.Unmarshal(j, &back); err != nil || back.Seq != h.Seq || back.Hash != h.Hash || !back.Time.Equal(h.Time) {
		t.Fatalf("JSON round trip %s → %+v %v", j, back, err)
	}
	// An empty log: seq 0, zero hash, no time; its anchor holds for every log.
	empty := headOf(t, newLog(t, 0))
	if empty.Seq != 0 || empty.Hash != ([32]byte{}) || !empty.Time.IsZero() || strings.Contains(empty.Line(), "time=") {
		t.Fatalf("empty head %+v %q", empty, empty.Line())
	}
	if rep, err := VerifyAnchored(db, []Anchor{empty.Anchor()}); err != nil || !rep.OK {
		t.Fatalf("empty-log anchor on a 7-record log: %+v %v", rep, err)
	}
	// A head that does not match its last record is corruption, not a head.
	reencode(t, db, 7, func(r *Record) { r.Event.Reason = "changed" })
	if _, err := ReadHead(db); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("head over an altered last record: %v", err)
	}
	put(t, db, 7, nil)
	if _, err := ReadHead(db); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("head over a missing last record: %v", err)
	}
}

func TestParseAnchor(t *testing.T) {
	const h = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
	good := []struct {
		in  string
		seq uint64
	}{
		{"12:0x" + h, 12},
		{"  12:" + h + "  ", 12},
		{"12:0X" + strings.ToUpper(h), 12},
		{"seq=12 hash=0x" + h, 12},
		{"hash=0x" + h + " seq=12 time=2026-11-21T12:00:07.123456789Z", 12},
		{"seq=12\thash=0x" + h + "  time=2026-11-21T12:00:07Z", 12},
		{`{"seq":12,"hash":"0x` + h + `","time":"2026-11-21T12:00:07Z","line":"x"}`, 12},
		{"0:0x" + strings.Repeat("0", 64), 0},
	}
	for _, c := range good {
		a, err := ParseAnchor(c.in)
		if err != nil || a.Seq != c.seq || (c.seq != 0 && fmt.Sprintf("%x", a.Hash) != h) {
			t.Errorf("ParseAnchor(%q) = %v, %v", c.in, a, err)
		}
	}
	bad := []struct{ in, problem string }{
		{"", "empty"},
		{"12", "want SEQ:0xHASH"},
		{"12:0x" + h[:62], "64 hex digits"},
		{"12:0x" + h + "00", "64 hex digits"},
		{"12:0x" + h[:62] + "zz", "not hex"},
		{"-1:0x" + h, "decimal"},
		{"+1:0x" + h, "decimal"},
		{"x:0x" + h, "decimal"},
		{"99999999999999999999:0x" + h, "out of range"},
		{"0:0x" + h, "seq 0"},
		{"seq=12", "want seq=N hash=0xHASH"},
		{"hash=0x" + h, "want seq=N hash=0xHASH"},
		{"seq=12 hash=0x" + h + " host=a", "unknown key"},
		{"seq=12 seq=13 hash=0x" + h, "twice"},
		{"seq=12 hash=0x" + h + " time=yesterday", "RFC 3339"},
		{"seq=12 hash=0x" + h + " trailing", "not key=value"},
		{`{"seq":12}`, "needs seq and hash"},
		{`{"seq":-1,"hash":"0x` + h + `"}`, "JSON object"},
		{`{"seq":12,`, "JSON object"},
	}
	for _, c := range bad {
		_, err := ParseAnchor(c.in)
		var se *AnchorSyntaxError
		if !errors.As(err, &se) || !errors.Is(err, ErrBadAnchor) || !strings.Contains(err.Error(), c.problem) {
			t.Errorf("ParseAnchor(%q): got %v, want a syntax error containing %q", c.in, err, c.problem)
			continue
		}
		if c.in != "" && !strings.Contains(err.Error(), fmt.Sprintf("%q", shorten(strings.TrimSpace(c.in)))) {
			t.Errorf("error %q does not name the text %q", err, c.in)
		}
	}
}

func TestParseAnchorsFile(t *testing.T) {
	const h = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
	file := "# anchors taken hourly by cron\n\n" +
		"seq=3 hash=0x" + h + " time=2026-11-21T12:00:03Z\n" +
		"   # indented comment\n" +
		"5:0x" + h + "   # trailing comment\n" +
		"\t\n" +
		`{"seq":9,"hash":"0x` + h + `"}` + "\n" +
		"seq=11 hash=0x" + h // no final newline
	got, err := ParseAnchors(strings.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for _, a := range got {
		seqs = append(seqs, a.Seq)
	}
	if fmt.Sprint(seqs) != "[3 5 9 11]" {
		t.Fatalf("seqs %v", seqs)
	}
	_, err = ParseAnchors(strings.NewReader("# ok\n3:0x" + h + "\nseq=4 hash=0xnothex\n"))
	var se *AnchorSyntaxError
	if !errors.As(err, &se) || se.Line != 3 || !strings.Contains(err.Error(), "line 3") || !strings.Contains(err.Error(), "seq=4 hash=0xnothex") {
		t.Fatalf("bad line: %v", err)
	}
	_, err = ParseAnchors(io.MultiReader(strings.NewReader("1:0x"+h+"\n"), strings.NewReader(strings.Repeat("x", MaxAnchorLine+10))))
	if !errors.As(err, &se) || se.Line != 2 {
		t.Fatalf("long line: %v", err)
	}
	if as, err := ParseAnchors(strings.NewReader("\n# nothing\n")); err != nil || len(as) != 0 {
		t.Fatalf("empty file: %v %v", as, err)
	}
}

// TestVerifyAnchored: each anchor outcome, and the point of the feature: a truncation and a
// full rewrite that plain verification accepts are caught by an anchor taken before.
func TestVerifyAnchored(t *testing.T) {
	var zero [32]byte
	cases := []struct {
		name    string
		n       int                                              // records in the original log
		anchors func(t *testing.T, db *bucketstore.DB) []Anchor  // taken from the original
		attack  func(t *testing.T, db *bucketstore.DB)           // applied to a copy (nil: none)
		chainOK bool                                             // plain Verify of the copy
		want    []AnchorStatus                                   // per anchor
		problem string                                           // in the first failed anchor's problem
		check   func(t *testing.T, rep Report, anchors []Anchor) // extra checks (may be nil)
	}{
		{name: "anchors ok", n: 9,
			anchors: func(t *testing.T, db *bucketstore.DB) []Anchor {
				return []Anchor{anchorAt(t, db, 1), anchorAt(t, db, 5), headOf(t, db).Anchor()}
			},
			chainOK: true, want: []AnchorStatus{AnchorOK, AnchorOK, AnchorOK}},
		{name: "log grew since the anchor", n: 9,
			anchors: func(t *testing.T, db *bucketstore.DB) []Anchor { return []Anchor{headOf(t, db).Anchor()} },
			attack: func(t *testing.T, db *bucketstore.DB) {
				_ = db.Update(func(tx *bucketstore.Tx) error {
					_, err := Append(tx, t0.Add(time.Hour), Event{Kind: KindKillSwitch})
					return err
				})
			},
			chainOK: true, want: []AnchorStatus{AnchorOK}},
		{name: "anchor beyond the head", n: 9,
			anchors: func(t *testing.T, db *bucketstore.DB) []Anchor {
				return []Anchor{{Seq: 10, Hash: anchorAt(t, db, 9).Hash}}
			},
			chainOK: true, want: []AnchorStatus{AnchorMissing}, problem: "no record 10 (its head is seq 9): it was truncated or rolled back"},
		{name: "anchor hash mismatch", n: 9,
			anchors: func(t *testing.T, db *bucketstore.DB) []Anchor {
				a := anchorAt(t, db, 4)
				a.Hash[0] ^= 1
				return []Anchor{anchorAt(t, db, 3), a}
			},
			chainOK: true, want: []AnchorStatus{AnchorOK, AnchorMismatch}, problem: "record 4 has hash 0x",
			check: func(t *testing.T, rep Report, anchors []Anchor) {
				if rep.Anchors[1].Found != fmt.Sprintf("0x%x", func() [32]byte { h := anchors[1].Hash; h[0] ^= 1; return h }()) {
					t.Errorf("found %s", rep.Anchors[1].Found)
				}
			}},
		{name: "empty-log anchor", n: 2,
			anchors: func(t *testing.T, db *bucketstore.DB) []Anchor { return []Anchor{{Seq: 0, Hash: zero}} },
			chainOK: true, want: []AnchorStatus{AnchorOK}},
		{name: "tail truncated, head rolled back", n: 9,
			anchors: func(t *testing.T, db *bucketstore.DB) []Anchor {
				return []Anchor{anchorAt(t, db, 4), headOf(t, db).Anchor()}
			},
			attack:  func(t *testing.T, db *bucketstore.DB) { truncateTo(t, db, 6) },
			chainOK: true, want: []AnchorStatus{AnchorOK, AnchorMissing}, problem: "no record 9 (its head is seq 6)"},
		{name: "rolled back and re-grown past the anchor", n: 9,
			anchors: func(t *testing.T, db *bucketstore.DB) []Anchor {
				return []Anchor{anchorAt(t, db, 5), headOf(t, db).Anchor()}
			},
			attack: func(t *testing.T, db *bucketstore.DB) {
				truncateTo(t, db, 6)
				for i := 0; i < 5; i++ {
					_ = db.Update(func(tx *bucketstore.Tx) error {
						_, err := Append(tx, t0.Add(time.Hour), Event{Kind: KindDecision, Decision: "allow"})
						return err
					})
				}
			},
			chainOK: true, want: []AnchorStatus{AnchorOK, AnchorMismatch}, problem: "record 9 has hash"},
		{name: "full rewrite, same length", n: 9,
			anchors: func(t *testing.T, db *bucketstore.DB) []Anchor {
				return []Anchor{anchorAt(t, db, 2), headOf(t, db).Anchor()}
			},
			attack:  func(t *testing.T, db *bucketstore.DB) { rewriteChain(t, db, 9, "forged") },
			chainOK: true, want: []AnchorStatus{AnchorMismatch, AnchorMismatch}, problem: "was rewritten"},
		{name: "full rewrite, longer", n: 9,
			anchors: func(t *testing.T, db *bucketstore.DB) []Anchor { return []Anchor{headOf(t, db).Anchor()} },
			attack:  func(t *testing.T, db *bucketstore.DB) { rewriteChain(t, db, 20, "forged") },
			chainOK: true, want: []AnchorStatus{AnchorMismatch}},
		{name: "full rewrite, shorter", n: 9,
			anchors: func(t *testing.T, db *bucketstore.DB) []Anchor {
				return []Anchor{anchorAt(t, db, 3), headOf(t, db).Anchor()}
			},
			attack:  func(t *testing.T, db *bucketstore.DB) { rewriteChain(t, db, 4, "forged") },
			chainOK: true, want: []AnchorStatus{AnchorMismatch, AnchorMissing}},
		{name: "anchored record unreadable (chain broken too)", n: 9,
			anchors: func(t *testing.T, db *bucketstore.DB) []Anchor {
				return []Anchor{anchorAt(t, db, 2), anchorAt(t, db, 5)}
			},
			attack:  func(t *testing.T, db *bucketstore.DB) { put(t, db, 5, []byte{0xff, 0x00}) },
			chainOK: false, want: []AnchorStatus{AnchorOK, AnchorMismatch}, problem: "unreadable"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			orig := newLog(t, c.n)
			anchors := c.anchors(t, orig)
			db := copyDB(t, orig)
			if c.attack != nil {
				c.attack(t, db)
			}
			plain, perr := Verify(db)
			if plain.OK != c.chainOK || (perr == nil) != c.chainOK {
				t.Fatalf("plain verify of the copy: %+v %v, want ok=%v", plain, perr, c.chainOK)
			}
			rep, err := VerifyAnchored(db, anchors)
			if len(rep.Anchors) != len(anchors) {
				t.Fatalf("%d results for %d anchors: %+v", len(rep.Anchors), len(anchors), rep)
			}
			failed := 0
			var first AnchorResult
			for i, r := range rep.Anchors {
				if r.Status != c.want[i] || r.Seq != anchors[i].Seq || r.Anchor != anchors[i].String() {
					t.Errorf("anchor %d (%s): %+v, want %s", i, anchors[i], r, c.want[i])
				}
				if r.Status != AnchorOK {
					if failed == 0 {
						first = r
					}
					failed++
					if !strings.Contains(r.Problem, fmt.Sprintf("record %d", r.Seq)) {
						t.Errorf("problem %q does not name record %d", r.Problem, r.Seq)
					}
				} else if r.Problem != "" || r.Found != "" {
					t.Errorf("ok anchor with problem: %+v", r)
				}
			}
			switch {
			case failed == 0 && c.chainOK:
				if err != nil || !rep.OK {
					t.Fatalf("all good but %+v %v", rep, err)
				}
			case !c.chainOK:
				var ce *CorruptError
				if !errors.As(err, &ce) || rep.OK || rep.FirstBad == nil {
					t.Fatalf("broken chain: %+v %v", rep, err)
				}
			default:
				var ae *AnchorError
				if !errors.As(err, &ae) || !errors.Is(err, ErrAnchorFailed) || !errors.Is(err, ErrCorrupt) || rep.OK || rep.FirstBad != nil {
					t.Fatalf("failed anchor: %+v %v", rep, err)
				}
				if ae.Failed != failed || ae.First != first || !strings.Contains(err.Error(), first.Anchor) {
					t.Fatalf("AnchorError %+v, want %d failed, first %+v", ae, failed, first)
				}
			}
			if c.problem != "" && !strings.Contains(first.Problem, c.problem) {
				t.Errorf("first failed anchor's problem %q lacks %q", first.Problem, c.problem)
			}
			if c.check != nil {
				c.check(t, rep, anchors)
			}
			// The original is untouched and still matches every anchor taken from it.
			if rep, err := VerifyAnchored(orig, anchors); c.name != "anchor beyond the head" && c.name != "anchor hash mismatch" && (err != nil || !rep.OK) {
				t.Errorf("original: %+v %v", rep, err)
			}
		})
	}
}
