package ledger

import (
	"bytes"
	"context"
	"errors"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/signerd/signerd/signerd/audit"
)

type failWriter struct{ after int }

func (w *failWriter) Write(p []byte) (int, error) {
	if w.after -= len(p); w.after < 0 {
		return 0, errors.New("disk full")
	}
	return len(p), nil
}

// pruneFixture: three signed records, one released, one reserved (pending) at t0; then 48 h
// later one more signed record. Returns the ledger (on disk), its clock and the path.
func pruneFixture(t *testing.T) (*Ledger, *fakeClock, string) {
	t.Helper()
	clk := &fakeClock{t: t0}
	path := filepath.Join(t.TempDir(), "ledger.db")
	l, err := Open(Options{Path: path, Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	ctx := context.Background()
	life := charge("life", 0, 1000, 10)
	for req := int64(1); req <= 5; req++ {
		res, err := l.Reserve(ctx, resv(1, req, `{"n":1}`, life))
		if err != nil || res.Outcome != Reserved {
			t.Fatalf("reserve %d: %v %v", req, res.Outcome, err)
		}
		switch {
		case req <= 3:
			if _, err := l.Commit(ctx, res.RecordID, sig65(byte(req))); err != nil {
				t.Fatal(err)
			}
		case req == 4:
			if err := l.Release(ctx, res.RecordID, "backend_unavailable", "test"); err != nil {
				t.Fatal(err)
			}
		}
		clk.Advance(time.Minute)
	}
	clk.Advance(48 * time.Hour)
	res, err := l.Reserve(ctx, resv(2, 1, `{"n":2}`, life))
	if err != nil || res.Outcome != Reserved {
		t.Fatal(res.Outcome, err)
	}
	if _, err := l.Commit(ctx, res.RecordID, sig65(9)); err != nil {
		t.Fatal(err)
	}
	return l, clk, path
}

func TestPruneArchiveThenPrune(t *testing.T) {
	l, clk, path := pruneFixture(t)
	ctx := context.Background()
	before := t0.Add(time.Hour)
	lifeUsed := func() *big.Int {
		u, err := l.Usage("life/agent-a", 0, clk.Now())
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	used := lifeUsed() // 3 signed + 1 pending + 1 new = 50
	if used.Int64() != 50 {
		t.Fatalf("fixture usage %s", used)
	}
	full, err := l.VerifyAudit()
	if err != nil {
		t.Fatal(err)
	}

	// Too recent: refused.
	if _, err := l.ExportArchive(&bytes.Buffer{}, clk.Now().Add(-time.Hour)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("recent before: %v", err)
	}
	// A failed archive write: an error, and nothing changes.
	if _, err := l.ExportArchive(&failWriter{after: 300}, before); err == nil {
		t.Fatal("export to a failing writer succeeded")
	}

	var arch bytes.Buffer
	sum, err := l.ExportArchive(&arch, before)
	if err != nil {
		t.Fatal(err)
	}
	if sum.PaymentRecords != 4 || sum.From.Seq != 0 || sum.Through.Seq == 0 || sum.Through.Seq >= full.HeadSeq {
		t.Fatalf("summary %+v (head %d)", sum, full.HeadSeq)
	}
	vs, err := VerifyArchive(bytes.NewReader(arch.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if vs.Plan != sum.Plan || vs.SHA256 != sum.SHA256 || vs.Through != sum.Through || vs.AuditRecords != sum.AuditRecords ||
		vs.PaymentRecords != 4 || len(vs.Hashes) != sum.AuditRecords {
		t.Fatalf("verified %+v, exported %+v", vs, sum)
	}
	// Export alone (a CLI that crashed before confirming) deleted nothing.
	if rep, err := l.VerifyAudit(); err != nil || rep.Records != full.Records || rep.PrunedThrough != 0 {
		t.Fatalf("after export: %+v %v", rep, err)
	}
	if _, err := l.Record(1); err != nil {
		t.Fatal(err)
	}
	// A wrong plan deletes nothing.
	bad := sum.Plan
	bad[0] ^= 1
	if _, err := l.Prune(ctx, PruneRequest{Before: before, Plan: bad}); !errors.Is(err, ErrPlanChanged) {
		t.Fatalf("wrong plan: %v", err)
	}
	if _, err := l.Record(1); err != nil {
		t.Fatal("wrong plan deleted record 1")
	}

	got, err := l.Prune(ctx, PruneRequest{Before: before, Plan: sum.Plan, ArchiveSHA256: sum.SHA256, Operator: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Through != sum.Through || got.PaymentRecords != 4 {
		t.Fatalf("pruned %+v", got)
	}
	rep, err := l.VerifyAudit()
	if err != nil || !rep.OK || rep.PrunedThrough != sum.Through.Seq || rep.HeadSeq != full.HeadSeq+1 ||
		rep.Records != full.HeadSeq+1-sum.Through.Seq || rep.CheckpointHash != "0x"+hexs(sum.Through.Hash) {
		t.Fatalf("verify after prune: %+v %v", rep, err)
	}
	last, _, _ := l.AuditRecord(rep.HeadSeq)
	if last.Event.Kind != audit.KindRetention || last.Event.Operator != "alice" || last.Event.Attrs["archive_sha256"] != "0x"+hexs(sum.SHA256) {
		t.Fatalf("retention record %+v", last.Event)
	}
	// Final old records gone; the pending and the new record kept; budgets unchanged.
	for id, want := range map[RecordID]bool{1: false, 2: false, 3: false, 4: false, 5: true, 6: true} {
		_, err := l.Record(id)
		if (err == nil) != want {
			t.Errorf("record %d: %v, want kept=%v", id, err, want)
		}
	}
	if u := lifeUsed(); u.Cmp(used) != 0 {
		t.Fatalf("usage %s after prune, was %s", u, used)
	}
	// Replay: a retry of a pruned signed request is refused, never signed or charged again; the
	// key of a pruned released record is free; the pending record still resumes.
	if res, err := l.Reserve(ctx, resv(1, 2, `{"n":1}`, charge("life", 0, 1000, 10))); err != nil || res.Outcome != Conflict || res.RecordID != 2 {
		t.Fatalf("retry of pruned signed: %+v %v", res, err)
	}
	if res, err := l.Reserve(ctx, resv(1, 5, `{"n":1}`, charge("life", 0, 1000, 10))); err != nil || res.Outcome != Resumable {
		t.Fatalf("pending: %+v %v", res, err)
	}
	if u := lifeUsed(); u.Cmp(used) != 0 {
		t.Fatalf("usage %s after retries, was %s", u, used)
	}
	if res, err := l.Reserve(ctx, resv(1, 4, `{"n":1}`, charge("life", 0, 1000, 10))); err != nil || res.Outcome != Reserved {
		t.Fatalf("released key: %+v %v", res, err)
	}
	if recs, err := l.ByTab(wallet, big.NewInt(1)); err != nil || len(recs) != 2 {
		t.Fatalf("ByTab after prune: %d records, %v", len(recs), err)
	}

	// Anchors: before the checkpoint pruned (not a failure), at it checked, after it checked.
	a2 := audit.Anchor{Seq: 2, Hash: vs.Hashes[1].Hash}
	atCP := audit.Anchor(sum.Through)
	wrongCP := atCP
	wrongCP.Hash[0] ^= 1
	h, _, _ := l.AuditRecord(rep.HeadSeq)
	ar, err := audit.VerifyAnchored(l.DB(), []audit.Anchor{a2, atCP, {Seq: h.Seq, Hash: h.Hash}})
	if err != nil || !ar.OK || ar.Anchors[0].Status != audit.AnchorPruned || ar.Anchors[1].Status != audit.AnchorOK || ar.Anchors[2].Status != audit.AnchorOK {
		t.Fatalf("anchors: %+v %v", ar.Anchors, err)
	}
	if ar, err := audit.VerifyAnchored(l.DB(), []audit.Anchor{wrongCP}); !errors.Is(err, audit.ErrAnchorFailed) || ar.Anchors[0].Status != audit.AnchorMismatch {
		t.Fatalf("wrong checkpoint anchor: %+v %v", ar.Anchors, err)
	}

	// Twice: the old plan no longer matches; a new export finds nothing; nothing changes.
	if _, err := l.Prune(ctx, PruneRequest{Before: before, Plan: sum.Plan}); !errors.Is(err, ErrPlanChanged) {
		t.Fatalf("second prune with the old plan: %v", err)
	}
	var again bytes.Buffer
	s2, err := l.ExportArchive(&again, before)
	if err != nil || s2.AuditRecords != 0 || s2.PaymentRecords != 0 || s2.From != sum.Through {
		t.Fatalf("second export %+v %v", s2, err)
	}
	if _, err := l.Prune(ctx, PruneRequest{Before: before, Plan: s2.Plan}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty prune: %v", err)
	}

	// Durable: reopen and verify.
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l2, err := Open(Options{Path: path, Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if rep2, err := l2.VerifyAudit(); err != nil || rep2.PrunedThrough != sum.Through.Seq {
		t.Fatalf("after reopen: %+v %v", rep2, err)
	}
}

// TestPruneTwoArchivesChain: a later prune's archive starts at the first one's checkpoint.
func TestPruneTwoArchivesChain(t *testing.T) {
	l, clk, _ := pruneFixture(t)
	ctx := context.Background()
	var a1 bytes.Buffer
	s1, err := l.ExportArchive(&a1, t0.Add(2*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Prune(ctx, PruneRequest{Before: s1.Before, Plan: s1.Plan}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(48 * time.Hour)
	var a2 bytes.Buffer
	s2, err := l.ExportArchive(&a2, clk.Now().Add(-25*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if s2.From != s1.Through || s2.AuditRecords == 0 || s2.PaymentRecords != 3 {
		t.Fatalf("second archive %+v after %+v", s2, s1)
	}
	v2, err := VerifyArchive(&a2)
	if err != nil || v2.From != s1.Through {
		t.Fatalf("verify second: %+v %v", v2, err)
	}
	if _, err := l.Prune(ctx, PruneRequest{Before: s2.Before, Plan: s2.Plan}); err != nil {
		t.Fatal(err)
	}
	if rep, err := l.VerifyAudit(); err != nil || rep.PrunedThrough != s2.Through.Seq {
		t.Fatalf("%+v %v", rep, err)
	}
}

// TestVerifyArchiveDetects: altered, truncated, reordered archives fail.
func TestVerifyArchiveDetects(t *testing.T) {
	l, _, _ := pruneFixture(t)
	var arch bytes.Buffer
	if _, err := l.ExportArchive(&arch, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(arch.String(), "\n")
	lines = lines[:len(lines)-1] // trailing ""
	cases := map[string]string{
		"truncated (no trailer)": strings.Join(lines[:len(lines)-1], ""),
		"cut mid-line":           arch.String()[:arch.Len()-10],
		"audit record altered":   strings.Join(lines[:2], "") + strings.Replace(lines[2], `"time":"2026`, `"time":"2025`, 1) + strings.Join(lines[3:], ""),
		"audit record dropped":   strings.Join(lines[:2], "") + strings.Join(lines[3:], ""),
		"payment record dropped": strings.Join(lines[:len(lines)-2], "") + lines[len(lines)-1],
		"data after trailer":     arch.String() + lines[1],
	}
	for name, text := range cases {
		if _, err := VerifyArchive(strings.NewReader(text)); err == nil || !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func hexs(b [32]byte) string { return strings.TrimPrefix(hash32(b), "0x") }

// TestPruneFailedTransaction: a prune whose transaction fails (I/O at commit) deletes nothing:
// after a reopen every record and the whole chain are still there, and the same archive's
// plan still prunes.
func TestPruneFailedTransaction(t *testing.T) {
	l, clk, path := pruneFixture(t)
	before := t0.Add(time.Hour)
	var arch bytes.Buffer
	sum, err := l.ExportArchive(&arch, before)
	if err != nil {
		t.Fatal(err)
	}
	full, _ := l.VerifyAudit()
	l.testHookAfterApply = func() error { return errors.New("injected fsync failure") }
	var se *StoreError
	if _, err := l.Prune(context.Background(), PruneRequest{Before: before, Plan: sum.Plan}); !errors.As(err, &se) {
		t.Fatalf("failed prune: %v", err)
	}
	l.Close()
	l2, err := Open(Options{Path: path, Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if rep, err := l2.VerifyAudit(); err != nil || rep.Records != full.Records || rep.PrunedThrough != 0 {
		t.Fatalf("after a failed prune: %+v %v", rep, err)
	}
	for id := RecordID(1); id <= 6; id++ {
		if _, err := l2.Record(id); err != nil {
			t.Fatalf("record %d: %v", id, err)
		}
	}
	if _, err := l2.Prune(context.Background(), PruneRequest{Before: before, Plan: sum.Plan}); err != nil {
		t.Fatal(err)
	}
}
