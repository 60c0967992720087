package ledger

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/signerd/signerd/signerd/bucketstore"
)

// reseal rewrites an edited archive as a forger would: header and trailer counts fixed, the
// SHA-256 recomputed. The plan is kept unless plan is given.
func reseal(t *testing.T, lines []string, plan string) string {
	t.Helper()
	body := lines[:len(lines)-1]
	var hdr archiveHeader
	if err := json.Unmarshal([]byte(body[0]), &hdr); err != nil {
		t.Fatal(err)
	}
	var tr archiveTrailer
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &tr); err != nil {
		t.Fatal(err)
	}
	hdr.AuditRecords, hdr.PaymentRecords = 0, 0
	for _, l := range body[1:] {
		if strings.HasPrefix(l, `{"type":"payment_record"`) {
			hdr.PaymentRecords++
		} else {
			hdr.AuditRecords++
		}
	}
	hb, _ := json.Marshal(hdr)
	out := string(hb) + "\n" + strings.Join(body[1:], "")
	tr.SHA256 = hash32(sha256.Sum256([]byte(out)))
	tr.AuditRecords, tr.PaymentRecords = hdr.AuditRecords, hdr.PaymentRecords
	if plan != "" {
		tr.Plan = plan
	}
	tb, _ := json.Marshal(tr)
	return out + string(tb) + "\n"
}

func archiveLines(b []byte) []string {
	lines := strings.SplitAfter(string(b), "\n")
	return lines[:len(lines)-1]
}

// TestVerifyArchiveForgedTrailer: an archive edited and resealed (counts and SHA-256
// recomputed) verified before the plan was recomputed from the archive's lines: a payment
// record dropped or altered passed, and the CLI then confirmed the trailer's plan, so the
// daemon deleted a record the archive did not hold. Now the plan is recomputed and compared.
func TestVerifyArchiveForgedTrailer(t *testing.T) {
	l, _, _ := pruneFixture(t)
	var arch bytes.Buffer
	sum, err := l.ExportArchive(&arch, t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	lines := archiveLines(arch.Bytes())
	n := len(lines)
	if got := reseal(t, lines, ""); got != arch.String() {
		t.Fatalf("reseal of an unedited archive differs:\n%s\n%s", got, arch.String())
	}
	altered := append([]string(nil), lines...)
	altered[n-2] = strings.Replace(altered[n-2], `"reason":"test"`, `"reason":"tset"`, 1)
	if altered[n-2] == lines[n-2] {
		t.Fatal("fixture: released record line not found last")
	}
	cases := map[string]string{
		"payment record dropped, resealed": reseal(t, append(append([]string(nil), lines[:n-2]...), lines[n-1]), ""),
		"payment record altered, resealed": reseal(t, altered, ""),
		"plan of another selection":        reseal(t, lines, hash32(sha256.Sum256([]byte("x")))),
		"payment records swapped":          reseal(t, append(append(append([]string(nil), lines[:n-3]...), lines[n-2], lines[n-3]), lines[n-1]), ""),
	}
	for name, text := range cases {
		if _, err := VerifyArchive(strings.NewReader(text)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v", name, err)
		}
	}
	vs, err := VerifyArchive(&arch)
	if err != nil || vs.Plan != sum.Plan {
		t.Fatalf("genuine archive: %v (plan %x want %x)", err, vs.Plan, sum.Plan)
	}
}

// TestPrunePlanBindsContent: a record whose content changes between export and prune (same
// id, same status, same time: here written directly, as a bug or a tamperer would) is not
// deleted: the plan holds each record's content hash, not only its id.
func TestPrunePlanBindsContent(t *testing.T) {
	l, _, _ := pruneFixture(t)
	before := t0.Add(time.Hour)
	var arch bytes.Buffer
	sum, err := l.ExportArchive(&arch, before)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.db.Update(func(tx *bucketstore.Tx) error {
		rec, err := getRecord(tx, 4)
		if err != nil {
			return err
		}
		rec.Reason = "changed after the export"
		return putRecord(tx, rec)
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Prune(context.Background(), PruneRequest{Before: before, Plan: sum.Plan}); !errors.Is(err, ErrPlanChanged) {
		t.Fatalf("prune after a content change: %v", err)
	}
	if rec, err := l.Record(4); err != nil || rec.Reason != "changed after the export" {
		t.Fatalf("record 4 after a refused prune: %+v %v", rec, err)
	}
}

// TestPruneAnotherLedgersArchive: the plan of an archive of ledger A does not prune ledger B,
// even when both hold the same record ids and statuses.
func TestPruneAnotherLedgersArchive(t *testing.T) {
	a, _, _ := pruneFixture(t)
	b, _, _ := pruneFixture(t)
	before := t0.Add(time.Hour)
	// Make B differ from A in one archived record only.
	if err := b.db.Update(func(tx *bucketstore.Tx) error {
		rec, err := getRecord(tx, 4)
		if err != nil {
			return err
		}
		rec.Reason = "b"
		return putRecord(tx, rec)
	}); err != nil {
		t.Fatal(err)
	}
	var arch bytes.Buffer
	sa, err := a.ExportArchive(&arch, before)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Prune(context.Background(), PruneRequest{Before: before, Plan: sa.Plan}); !errors.Is(err, ErrPlanChanged) {
		t.Fatalf("A's plan on B: %v", err)
	}
	if _, err := b.Record(1); err != nil {
		t.Fatal("B lost record 1")
	}
}

// TestPruneRaces: what changes between export and prune. A pending record signed meanwhile is
// kept (its update is after before) and does not change the plan; a collateral
// pending-broadcast mark written meanwhile changes the plan (nothing deleted); two prunes of
// the same plan at once: exactly one deletes.
func TestPruneRaces(t *testing.T) {
	l, _, _ := pruneFixture(t)
	ctx := context.Background()
	before := t0.Add(time.Hour)
	var arch bytes.Buffer
	sum, err := l.ExportArchive(&arch, before)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Commit(ctx, 5, sig65(5)); err != nil { // pending → signed now
		t.Fatal(err)
	}
	mark := []byte(UnbroadcastPrefix + wallet.Hex() + "/2")
	if err := l.db.Update(func(tx *bucketstore.Tx) error { return tx.Bucket(bucketState).Put(mark, []byte{1}) }); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Prune(ctx, PruneRequest{Before: before, Plan: sum.Plan}); !errors.Is(err, ErrPlanChanged) {
		t.Fatalf("prune after a collateral mark: %v", err)
	}
	if err := l.db.Update(func(tx *bucketstore.Tx) error { return tx.Bucket(bucketState).Delete(mark) }); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = l.Prune(ctx, PruneRequest{Before: before, Plan: sum.Plan})
		}()
	}
	wg.Wait()
	ok, changed := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ErrPlanChanged):
			changed++
		}
	}
	if ok != 1 || changed != 1 {
		t.Fatalf("two prunes at once: %v", errs)
	}
	if rec, err := l.Record(5); err != nil || rec.Status != StatusSigned {
		t.Fatalf("record signed between export and prune: %+v %v", rec, err)
	}
	if rep, err := l.VerifyAudit(); err != nil || !rep.OK || rep.PrunedThrough != sum.Through.Seq {
		t.Fatalf("%+v %v", rep, err)
	}
}

// TestPruneClockSteppedBack: the daemon clock stepped back after the export. A record signed
// then carries an old time, but a before the records could be older than is then within
// MinPruneAge of the clock: the prune is refused (nothing deleted); once the clock is right
// again the record signed meanwhile is selected and the old plan no longer matches.
func TestPruneClockSteppedBack(t *testing.T) {
	l, clk, _ := pruneFixture(t)
	ctx := context.Background()
	before := t0.Add(time.Hour)
	var arch bytes.Buffer
	sum, err := l.ExportArchive(&arch, before)
	if err != nil {
		t.Fatal(err)
	}
	saved := clk.Now()
	clk.Advance(saved.Sub(t0.Add(30*time.Minute)) * -1) // back to t0+30m
	if _, err := l.Commit(ctx, 5, sig65(5)); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Prune(ctx, PruneRequest{Before: before, Plan: sum.Plan}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("prune with the clock stepped back: %v", err)
	}
	clk.Advance(saved.Sub(clk.Now()))
	if _, err := l.Prune(ctx, PruneRequest{Before: before, Plan: sum.Plan}); !errors.Is(err, ErrPlanChanged) {
		t.Fatalf("prune after the clock came back: %v", err)
	}
	for id := RecordID(1); id <= 6; id++ {
		if _, err := l.Record(id); err != nil {
			t.Fatalf("record %d: %v", id, err)
		}
	}
}

// TestVerifyArchiveVersion1: an archive written before the plan bound content (version 1, plan
// over the ids only) still verifies, its plan recomputed the version 1 way; altered, it fails.
func TestVerifyArchiveVersion1(t *testing.T) {
	l, _, _ := pruneFixture(t)
	var arch bytes.Buffer
	if _, err := l.ExportArchive(&arch, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	lines := archiveLines(arch.Bytes())
	lines[0] = strings.Replace(lines[0], `"version":2`, `"version":1`, 1)
	v2, err := VerifyArchive(strings.NewReader(reseal(t, lines, "")))
	if err == nil {
		t.Fatal("a version 1 header with a version 2 plan verified")
	}
	var ids []RecordID
	for id := RecordID(1); id <= 4; id++ {
		ids = append(ids, id)
	}
	p := prunePlan{before: t0.Add(time.Hour), through: v2.Through, ids: ids, version: 1}
	if _, err := VerifyArchive(strings.NewReader(reseal(t, lines, hash32(p.digest())))); err != nil {
		t.Fatalf("version 1 archive: %v", err)
	}
}

// TestPruneUnreadableMark: a pending-broadcast mark whose record id does not parse used to be
// ignored, so the record it was meant to protect could be pruned while its transaction was
// unbroadcast. Now export and prune refuse (corrupt) until it is cleared.
func TestPruneUnreadableMark(t *testing.T) {
	l, _, _ := pruneFixture(t)
	before := t0.Add(time.Hour)
	var arch bytes.Buffer
	sum, err := l.ExportArchive(&arch, before)
	if err != nil {
		t.Fatal(err)
	}
	mark := []byte(UnbroadcastPrefix + wallet.Hex() + "/0000000000000000000x")
	if err := l.db.Update(func(tx *bucketstore.Tx) error { return tx.Bucket(bucketState).Put(mark, []byte{1}) }); err != nil {
		t.Fatal(err)
	}
	if _, err := l.ExportArchive(&bytes.Buffer{}, before); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("export with an unreadable mark: %v", err)
	}
	if _, err := l.Prune(context.Background(), PruneRequest{Before: before, Plan: sum.Plan}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("prune with an unreadable mark: %v", err)
	}
	if _, err := l.Record(1); err != nil {
		t.Fatal(err)
	}
}

// TestPruneBeforeOutOfRange: a before outside int64 nanoseconds (a typo like year 1000, whose
// UnixNano wraps to year 2169) selected every audit record but the head — records newer than
// before and than MinPruneAge — while payment records (compared as times) were not. Now a
// before earlier than 1970 is refused (ErrInvalid), on export, prune and in VerifyArchive.
func TestPruneBeforeOutOfRange(t *testing.T) {
	l, _, _ := pruneFixture(t)
	for _, y := range []int{1000, 1500, 1969} {
		before := time.Date(y, 1, 1, 0, 0, 0, 0, time.UTC)
		var arch bytes.Buffer
		sum, err := l.ExportArchive(&arch, before)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("export before %d: %+v %v", y, sum, err)
		}
		if _, err := l.Prune(context.Background(), PruneRequest{Before: before, Plan: sum.Plan}); !errors.Is(err, ErrInvalid) {
			t.Errorf("prune before %d: %v", y, err)
		}
	}
	if rep, err := l.VerifyAudit(); err != nil || rep.PrunedThrough != 0 {
		t.Fatalf("%+v %v", rep, err)
	}
}

// TestPrunedKeyAllReservePaths: a retry of a pruned signed request is refused on every
// reservation path (Reserve), same claims or not, and charges
// nothing.
func TestPrunedKeyAllReservePaths(t *testing.T) {
	l, clk, _ := pruneFixture(t)
	ctx := context.Background()
	var arch bytes.Buffer
	sum, err := l.ExportArchive(&arch, t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Prune(ctx, PruneRequest{Before: sum.Before, Plan: sum.Plan}); err != nil {
		t.Fatal(err)
	}
	used, _ := l.Usage("life/agent-a", 0, clk.Now())
	for name, reserve := range map[string]func(context.Context, Reservation) (Result, error){
		"Reserve": l.Reserve} {
		for _, claims := range []string{`{"n":1}`, `{"n":"other"}`} {
			res, err := reserve(ctx, resv(1, 1, claims, charge("life", 0, 1000, 10)))
			if err != nil || res.Outcome != Conflict {
				t.Errorf("%s %s of a pruned signed key: %+v %v", name, claims, res.Outcome, err)
			}
		}
	}
	if u, _ := l.Usage("life/agent-a", 0, clk.Now()); u.Cmp(used) != 0 {
		t.Fatalf("usage %s after refused retries, was %s", u, used)
	}
}
