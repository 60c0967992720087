package ledger

// The fixture testdata/ledger-v1-bbolt.db is a bbolt ledger written by signerd's last bbolt
// version (commit 72aca84) with testdata/gen-ledger-v1.go, run in a worktree of that commit
// (the program's comment gives the steps and everything the file holds). The tests below read
// what they expect from the fixture with go.etcd.io/bbolt directly, then migrate a copy of it.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/bucketstore"
)

const fixtureV1 = "testdata/ledger-v1-bbolt.db"

// fixtureNow is shortly after the fixture's last write (2026-03-05 09:15 UTC): every day-4
// charge is still inside its daily and hourly windows.
var fixtureNow = time.Date(2026, 3, 5, 9, 30, 0, 0, time.UTC)

// Record ids in the fixture (ids 1-4 were archived and pruned).
const (
	fxCollateral RecordID = 5 // signed, its pending-broadcast mark still set
	fxOrphan     RecordID = 6 // tab 1 req 5: reserved, never signed or released
	fxSigned     RecordID = 7 // tab 2 req 1: signed
	fxReleased   RecordID = 9 // tab 2 req 3: released
)

// boltBucket is one bucket of the fixture as bbolt reads it.
type boltBucket struct {
	seq  uint64
	keys [][]byte
	vals map[string][]byte
}

// readBolt reads every bucket of the bbolt file at path with bbolt itself.
func readBolt(t *testing.T, path string) map[string]*boltBucket {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	out := map[string]*boltBucket{}
	err = db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			bb := &boltBucket{seq: b.Sequence(), vals: map[string][]byte{}}
			out[string(name)] = bb
			return b.ForEach(func(k, v []byte) error {
				bb.keys = append(bb.keys, bytes.Clone(k))
				bb.vals[string(k)] = bytes.Clone(v)
				return nil
			})
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// copyFixture copies the fixture to a new directory and returns the copy's path.
func copyFixture(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(fixtureV1)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "signerd.db")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// openFixtureLedger opens the ledger at path with the clock at fixtureNow and no usage sweeps.
func openFixtureLedger(t *testing.T, path string) *Ledger {
	t.Helper()
	l, err := Open(Options{Path: path, Clock: func() time.Time { return fixtureNow }, PruneEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// backups lists the bbolt backups kept next to path.
func backups(t *testing.T, path string) []string {
	t.Helper()
	m, err := filepath.Glob(path + backupPrefix + "*")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// checkSwitched checks that path is a store directory, that exactly one backup is kept and
// that it is byte-identical to the fixture, and that no .migrating copy is left.
func checkSwitched(t *testing.T, path string) {
	t.Helper()
	if fi, err := os.Stat(path); err != nil || !fi.IsDir() || !bucketstore.IsStore(path) {
		t.Fatalf("%s is not a store directory after the migration (%v)", path, err)
	}
	bs := backups(t, path)
	if len(bs) != 1 {
		t.Fatalf("backups %v, want one", bs)
	}
	want, _ := os.ReadFile(fixtureV1)
	if got, err := os.ReadFile(bs[0]); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("backup %s differs from the fixture (%v)", bs[0], err)
	}
	if _, err := os.Lstat(path + ".migrating"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf(".migrating left behind: %v", err)
	}
}

// checkSameBuckets checks that the store holds every bucket of the bbolt fixture with the same
// sequence, keys and values (and the pending index, which the fixture has too).
func checkSameBuckets(t *testing.T, l *Ledger, want map[string]*boltBucket) {
	t.Helper()
	err := l.DB().View(func(tx *bucketstore.Tx) error {
		names, err := tx.BucketNames()
		if err != nil {
			return err
		}
		if len(names) != len(want) {
			t.Errorf("%d buckets, the fixture has %d", len(names), len(want))
		}
		for name, wb := range want {
			b := tx.Bucket([]byte(name))
			if b == nil {
				t.Errorf("bucket %q missing", name)
				continue
			}
			if b.Sequence() != wb.seq {
				t.Errorf("bucket %q sequence %d, want %d", name, b.Sequence(), wb.seq)
			}
			var keys [][]byte
			c := b.Cursor()
			for k, v := c.First(); k != nil; k, v = c.Next() {
				if name == "audit_head" || (name == "audit" && len(keys) == len(wb.keys)) {
					break // the migration appended its own records (checkMigratedAudit)
				}
				keys = append(keys, bytes.Clone(k))
				if !bytes.Equal(v, wb.vals[string(k)]) {
					t.Errorf("bucket %q key %x: value differs", name, k)
				}
			}
			if name == "audit_head" {
				continue
			}
			if !reflect.DeepEqual(keys, wb.keys) {
				t.Errorf("bucket %q: %d keys, want %d (or in another order)", name, len(keys), len(wb.keys))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// fixtureRecords decodes the fixture's payment records as bbolt holds them, with their
// signatures merged from the sigs bucket (as the bbolt version read them).
func fixtureRecords(t *testing.T, fx map[string]*boltBucket) map[RecordID]*PaymentRecord {
	t.Helper()
	out := map[RecordID]*PaymentRecord{}
	for _, k := range fx["records"].keys {
		id := RecordID(binary.BigEndian.Uint64(k))
		r, err := decodeRecord(id, fx["records"].vals[string(k)])
		if err != nil {
			t.Fatal(err)
		}
		if sv := fx["sigs"].vals[string(k)]; sv != nil {
			r.Status, r.Signature = StatusSigned, sv[8:]
			r.Updated = time.Unix(0, int64(binary.BigEndian.Uint64(sv[:8]))).UTC()
		}
		out[id] = r
	}
	return out
}

// TestOpenMigratesV1LedgerKeepingABackup migrates a copy of the fixture: the path becomes a
// store, the original is kept byte-identical as the backup, and every bucket is copied as is.
func TestOpenMigratesV1LedgerKeepingABackup(t *testing.T) {
	path := copyFixture(t)
	if ok, err := IsBoltFile(path); !ok || err != nil {
		t.Fatalf("IsBoltFile(fixture) = %v, %v", ok, err)
	}
	fx := readBolt(t, fixtureV1)
	l := openFixtureLedger(t, path)
	checkSwitched(t, path)
	checkSameBuckets(t, l, fx)
	if ok, err := IsBoltFile(path); ok || err != nil {
		t.Fatalf("IsBoltFile(migrated store) = %v, %v", ok, err)
	}
}

// TestMigratedLedgerKeepsRecordsStateAndAudit reads every payment record, replay entry, usage
// counter, state key and audit record of the fixture through the migrated ledger's API.
func TestMigratedLedgerKeepsRecordsStateAndAudit(t *testing.T) {
	fx := readBolt(t, fixtureV1)
	l := openFixtureLedger(t, copyFixture(t))
	want := fixtureRecords(t, fx)
	statuses := map[RecordID]Status{fxCollateral: StatusSigned, fxOrphan: StatusReserved, fxSigned: StatusSigned, 8: StatusSigned, fxReleased: StatusReleased}
	if len(want) != len(statuses) {
		t.Fatalf("fixture holds %d records, want %d", len(want), len(statuses))
	}
	for id, w := range want {
		if w.Status != statuses[id] {
			t.Fatalf("fixture record %d is %s, want %s", id, w.Status, statuses[id])
		}
		got, err := l.Record(id)
		if err != nil {
			t.Fatal(err)
		}
		gj, _ := json.Marshal(got)
		wj, _ := json.Marshal(w)
		if !bytes.Equal(gj, wj) {
			t.Errorf("record %d:\n got %s\nwant %s", id, gj, wj)
		}
		if w.Scheme == "eip712" && (len(got.Charges) != 3 || (w.Status == StatusSigned) != (len(got.Signature) == 65)) {
			t.Errorf("record %d: charges %d, signature %x", id, len(got.Charges), got.Signature)
		}
	}
	checkMigratedReplay(t, l, fx)
	checkMigratedUsage(t, l)
	checkMigratedState(t, l, fx)
	checkMigratedAudit(t, l, fx)
}

// checkMigratedReplay checks the replay entries: the three signed records of tab 1 were
// pruned (entries marked 'p'), the released one's entry is gone, the rest name their records.
func checkMigratedReplay(t *testing.T, l *Ledger, fx map[string]*boltBucket) {
	t.Helper()
	if n := len(fx["replay"].keys); n != 8 {
		t.Fatalf("fixture holds %d replay entries, want 8", n)
	}
	pruned := 0
	err := l.DB().View(func(tx *bucketstore.Tx) error {
		for _, k := range fx["replay"].keys {
			v := tx.Bucket(bucketReplay).Get(k)
			e, err := parseReplay(k, v)
			if err != nil || !bytes.Equal(v, fx["replay"].vals[string(k)]) {
				t.Errorf("replay entry %x: %v", k, err)
				continue
			}
			if e.status == replayPruned {
				pruned++
			} else if _, err := l.Record(e.id); err != nil {
				t.Errorf("replay entry %x names record %d: %v", k, e.id, err)
			}
		}
		if tx.Bucket(bucketReplay).Get(replayKey(fxWallet(t, l), big.NewInt(1), big.NewInt(4))) != nil {
			t.Error("the pruned released record's replay entry is back")
		}
		return nil
	})
	if err != nil || pruned != 3 {
		t.Fatalf("pruned replay entries %d, want 3 (%v)", pruned, err)
	}
}

// fxWallet is the fixture's signing wallet (the wallet of its orphan record).
func fxWallet(t *testing.T, l *Ledger) (w [20]byte) {
	t.Helper()
	r, err := l.Record(fxOrphan)
	if err != nil {
		t.Fatal(err)
	}
	return r.Wallet
}

// checkMigratedUsage checks the budget counters at fixtureNow: daily and hourly windows hold
// day 4's two signed guarantees (the released one was refunded; day 1's buckets had expired
// and were swept by the old version), the lifetime counter every unreleased charge: three
// pruned, the orphan and the two of day 4.
func checkMigratedUsage(t *testing.T, l *Ledger) {
	t.Helper()
	for _, c := range []struct {
		key    string
		window time.Duration
		want   int64
	}{{"daily/agent-a", 24 * time.Hour, 200}, {"life/agent-a", 0, 600}, {"rate/agent-a", time.Hour, 2}} {
		u, err := l.Usage(c.key, c.window, fixtureNow)
		if err != nil || u.Int64() != c.want {
			t.Errorf("usage %s/%s = %v (%v), want %d", c.key, c.window, u, err, c.want)
		}
	}
}

// checkMigratedState checks every state key of the fixture: the kill switch (engaged), the
// approval and the collateral pending-broadcast mark.
func checkMigratedState(t *testing.T, l *Ledger, fx map[string]*boltBucket) {
	t.Helper()
	st := fx["state"]
	if len(st.keys) != 3 || !strings.Contains(string(st.vals["killswitch"]), `"engaged":true`) {
		t.Fatalf("fixture state: %q", st.keys)
	}
	for _, k := range st.keys {
		v, err := l.GetState(string(k))
		if err != nil || !bytes.Equal(v, st.vals[string(k)]) {
			t.Errorf("state %q = %q (%v), want %q", k, v, err, st.vals[string(k)])
		}
	}
	for prefix, n := range map[string]int{"approval/": 1, UnbroadcastPrefix: 1} {
		m, err := l.StateWithPrefix(prefix)
		if err != nil || len(m) != n {
			t.Errorf("StateWithPrefix(%q): %d keys (%v), want %d", prefix, len(m), err, n)
		}
	}
}

// checkMigratedAudit checks every audit record, the head and the prune checkpoint against the
// fixture, and that the chain verifies from the checkpoint.
func checkMigratedAudit(t *testing.T, l *Ledger, fx map[string]*boltBucket) {
	t.Helper()
	for _, k := range fx["audit"].keys {
		seq := binary.BigEndian.Uint64(k)
		want, err := audit.Decode(seq, fx["audit"].vals[string(k)])
		if err != nil {
			t.Fatal(err)
		}
		got, ok, err := l.AuditRecord(seq)
		if err != nil || !ok || !reflect.DeepEqual(got, want) {
			t.Errorf("audit record %d: ok=%v err=%v\n got %+v\nwant %+v", seq, ok, err, got, want)
		}
	}
	cpv := fx["audit_checkpoint"].vals["checkpoint"]
	cp, err := l.AuditCheckpoint()
	if err != nil || cp.Seq != binary.BigEndian.Uint64(cpv[:8]) || !bytes.Equal(cp.Hash[:], cpv[8:]) {
		t.Fatalf("checkpoint %d %x (%v), fixture %x", cp.Seq, cp.Hash, err, cpv)
	}
	// The migration appended one record per operator state key, binding its value.
	hv := fx["audit_head"].vals["head"]
	oldHead, states := binary.BigEndian.Uint64(hv[:8]), uint64(len(fx["state"].keys))
	seq, _, err := l.AuditHead()
	if err != nil || seq != oldHead+states {
		t.Fatalf("head %d (%v), fixture head %d + %d state keys", seq, err, oldHead, states)
	}
	if r, _, _ := l.AuditRecord(oldHead + 1); !bytes.Equal(r.Prev, hv[8:]) || r.Event.Kind != audit.KindMigration {
		t.Fatalf("first record after the fixture's head: %+v", r)
	}
	for s := oldHead + 1; s <= seq; s++ {
		r, _, _ := l.AuditRecord(s)
		k := r.Event.Attrs["state_key"]
		if h := sha256.Sum256(fx["state"].vals[k]); r.Event.Kind != audit.KindMigration || r.Event.Attrs["state_sha256"] != hex.EncodeToString(h[:]) {
			t.Errorf("migration record %d: %+v", s, r.Event)
		}
	}
	rep, err := l.VerifyAudit()
	if err != nil || !rep.OK || rep.PrunedThrough != cp.Seq || rep.HeadSeq != seq || rep.Records != uint64(len(fx["audit"].keys))+states {
		t.Fatalf("verify after migration: %+v %v", rep, err)
	}
	kinds := map[audit.Kind]bool{}
	for s := cp.Seq + 1; s <= seq; s++ {
		r, _, _ := l.AuditRecord(s)
		kinds[r.Event.Kind] = true
	}
	for _, k := range []audit.Kind{audit.KindRetention, audit.KindDecision, audit.KindSignature, audit.KindApproval, audit.KindKeyOp, audit.KindKillSwitch} {
		if !kinds[k] {
			t.Errorf("no %s record after the checkpoint", k)
		}
	}
}

// TestSecondOpenDoesNotMigrateAgain reopens a migrated ledger: no second backup, same head.
func TestSecondOpenDoesNotMigrateAgain(t *testing.T) {
	path := copyFixture(t)
	l := openFixtureLedger(t, path)
	seq, h, err := l.AuditHead()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openFixtureLedger(t, path)
	checkSwitched(t, path)
	seq2, h2, err := l.AuditHead()
	if err != nil || seq2 != seq || h2 != h {
		t.Fatalf("head after reopening %d %x (%v), was %d %x", seq2, h2, err, seq, h)
	}
}

// retryOf is the reservation an agent retrying rec sends again (same key, claims, digest and
// charges).
func retryOf(rec *PaymentRecord) Reservation {
	r := Reservation{Wallet: rec.Wallet, TabID: rec.TabID, ReqID: rec.ReqID, Claims: rec.Claims,
		Principal: rec.Principal, Agent: rec.Agent, PolicyHash: rec.PolicyHash, Rule: rec.Rule,
		Digest: rec.Digest, Scheme: rec.Scheme, TaskID: rec.TaskID}
	for _, c := range rec.Charges {
		r.Charges = append(r.Charges, policyengine.Charge{Budget: c.Budget, Key: c.Key, Window: c.Window,
			Limit: big.NewInt(1 << 40), Amount: c.Amount, Count: c.Count})
	}
	return r
}

// TestRetriesOfV1RequestsAfterMigration retries requests the bbolt version answered: a signed
// one gets its stored signature, other claims under its key a conflict, and a key whose signed
// record was pruned a conflict (never signed again).
func TestRetriesOfV1RequestsAfterMigration(t *testing.T) {
	fx := readBolt(t, fixtureV1)
	l := openFixtureLedger(t, copyFixture(t))
	ctx := context.Background()
	rec, err := l.Record(fxSigned)
	if err != nil {
		t.Fatal(err)
	}
	res, err := l.Reserve(ctx, retryOf(rec))
	wantSig := fx["sigs"].vals[string(fxSigned.key())][8:]
	if err != nil || res.Outcome != Duplicate || res.RecordID != fxSigned || !bytes.Equal(res.Signature, wantSig) {
		t.Fatalf("identical retry: %v %d %x (%v), want duplicate of %d with %x", res.Outcome, res.RecordID, res.Signature, err, fxSigned, wantSig)
	}
	other := retryOf(rec)
	other.Claims = append(bytes.Clone(rec.Claims[:len(rec.Claims)-1]), ` `...)
	if res, err := l.Reserve(ctx, other); err != nil || res.Outcome != Conflict || res.RecordID != fxSigned {
		t.Fatalf("retry with other claims: %v %d (%v), want conflict", res.Outcome, res.RecordID, err)
	}
	pruned := retryOf(rec)
	pruned.TabID, pruned.ReqID = big.NewInt(1), big.NewInt(1)
	if res, err := l.Reserve(ctx, pruned); err != nil || res.Outcome != Conflict {
		t.Fatalf("retry of a pruned signed request: %v (%v), want conflict", res.Outcome, err)
	}
	if u, _ := l.Usage("life/agent-a", 0, fixtureNow); u.Int64() != 600 {
		t.Fatalf("retries charged: lifetime usage %s, want 600", u)
	}
}

// TestV1OrphanIsPossiblySignedAfterMigration: the bbolt version left tab 1 req 5 reserved
// (a crash before Commit). After the migration it counts as possibly signed, and an identical
// retry resumes it — its digest is signed again — without a new charge.
func TestV1OrphanIsPossiblySignedAfterMigration(t *testing.T) {
	l := openFixtureLedger(t, copyFixture(t))
	ctx := context.Background()
	if n, err := l.PossiblySigned(); err != nil || n != 1 {
		t.Fatalf("PossiblySigned = %d (%v), want 1 (the orphan)", n, err)
	}
	rec, err := l.Record(fxOrphan)
	if err != nil || rec.Status != StatusReserved {
		t.Fatalf("orphan: %+v %v", rec, err)
	}
	before, _ := l.Usage("life/agent-a", 0, fixtureNow)
	res, err := l.Reserve(ctx, retryOf(rec))
	if err != nil || res.Outcome != Resumable || res.RecordID != fxOrphan || res.Digest != rec.Digest {
		t.Fatalf("identical retry of the orphan: %v %d (%v), want resumable %d", res.Outcome, res.RecordID, err, fxOrphan)
	}
	if err := res.Durable(ctx); err != nil {
		t.Fatal(err)
	}
	if after, _ := l.Usage("life/agent-a", 0, fixtureNow); after.Cmp(before) != 0 {
		t.Fatalf("resuming charged again: lifetime usage %s, was %s", after, before)
	}
	if _, err := l.Commit(ctx, fxOrphan, bytes.Repeat([]byte{7}, 65)); err != nil {
		t.Fatal(err)
	}
	if n, err := l.PossiblySigned(); err != nil || n != 0 {
		t.Fatalf("PossiblySigned after the commit = %d (%v), want 0", n, err)
	}
}

// copyToMigrating copies the bbolt ledger at path into path+".migrating" as a migration does,
// leaving the original in place (a migration interrupted after the copy).
func copyToMigrating(t *testing.T, path string) {
	t.Helper()
	src, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if err := copyBolt(src, path+".migrating"); err != nil {
		t.Fatal(err)
	}
}

// TestMigrationInterruptedAfterTheCopyRunsAgain: a .migrating copy left by an earlier attempt
// (complete, plus a stray file) is discarded; the migration runs again and leaves none.
func TestMigrationInterruptedAfterTheCopyRunsAgain(t *testing.T) {
	path := copyFixture(t)
	copyToMigrating(t, path)
	if err := os.WriteFile(filepath.Join(path+".migrating", "stray"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	l := openFixtureLedger(t, path)
	checkSwitched(t, path)
	checkSameBuckets(t, l, readBolt(t, fixtureV1))
}

// TestMigrationInterruptedBetweenTheRenamesIsRedone: a crash after the original was renamed
// to its backup but before the copy was renamed to path leaves nothing at path. Open must not
// start an empty ledger there: it puts the original back and migrates again.
func TestMigrationInterruptedBetweenTheRenamesIsRedone(t *testing.T) {
	path := copyFixture(t)
	copyToMigrating(t, path)
	if err := os.Rename(path, backupName(path, time.Now().Add(-time.Hour))); err != nil {
		t.Fatal(err)
	}
	l := openFixtureLedger(t, path)
	checkSwitched(t, path)
	checkSameBuckets(t, l, readBolt(t, fixtureV1))
	if n, err := l.PossiblySigned(); err != nil || n != 1 {
		t.Fatalf("PossiblySigned = %d (%v): the orphan was lost", n, err)
	}
}

// TestInterruptedMigrationWithoutBackupRefuses: nothing at path and a .migrating copy but no
// backup to put back: Open refuses rather than starting an empty ledger.
func TestInterruptedMigrationWithoutBackupRefuses(t *testing.T) {
	path := copyFixture(t)
	copyToMigrating(t, path)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	l, err := Open(Options{Path: path})
	if err == nil {
		l.Close()
		t.Fatal("Open started a ledger with the original missing")
	}
	if !strings.Contains(err.Error(), ".migrating") {
		t.Fatalf("error does not say what is wrong: %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Open created %s: %v", path, err)
	}
}

// notALedger writes the files TestNotALedgerAtPathIsCorrupt puts at the ledger's path.
func notALedger(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	fixture, err := os.ReadFile(fixtureV1)
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other.bolt")
	db, err := bolt.Open(other, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("sessions"))
		if err != nil {
			return err
		}
		return b.Put([]byte("k"), []byte("v"))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	otherRaw, _ := os.ReadFile(other)
	garbage := bytes.Repeat([]byte{0x5a}, 8192)
	copy(garbage[16:], boltMagic)
	smashed := bytes.Clone(fixture)
	for i := 32; i < 2*4096; i++ { // both meta pages, after the magic
		smashed[i] ^= 0xff
	}
	return map[string][]byte{
		"text":              []byte("signerd ledger? no: a config file someone put here\n"),
		"empty":             nil,
		"bbolt of another":  otherRaw,
		"magic and garbage": garbage,
		"smashed meta":      smashed,
		"truncated":         fixture[:3*4096],
	}
}

// TestNotALedgerAtPathIsCorrupt puts files that are not bbolt ledgers (or damaged ones) at the
// ledger's path: Open fails with ErrCorrupt, without a panic, and leaves the file as it was
// (no backup, no .migrating copy).
func TestNotALedgerAtPathIsCorrupt(t *testing.T) {
	for name, raw := range notALedger(t, t.TempDir()) {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "signerd.db")
			if err := os.WriteFile(path, raw, 0o600); err != nil {
				t.Fatal(err)
			}
			l, err := Open(Options{Path: path})
			if err == nil {
				l.Close()
				t.Fatal("Open accepted it")
			}
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) {
				t.Fatalf("error %v: not ErrCorrupt naming the file", err)
			}
			t.Log(err)
			if got, _ := os.ReadFile(path); !bytes.Equal(got, raw) {
				t.Fatal("the file was changed")
			}
			if m, _ := filepath.Glob(path + ".*"); len(m) != 0 {
				t.Fatalf("left behind: %v", m)
			}
		})
	}
}
