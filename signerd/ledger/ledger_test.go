package ledger

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/signerd/signerd/signerd/bucketstore"

	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/audit"
)

// fakeClock is an injectable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var t0 = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

func openTest(t testing.TB, clk *fakeClock) *Ledger {
	t.Helper()
	opts := Options{Path: filepath.Join(t.TempDir(), "ledger.db")}
	if clk != nil {
		opts.Clock = clk.Now
	}
	l, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

var wallet = common.HexToAddress("0x1111111111111111111111111111111111111111")

func charge(budget string, window time.Duration, limit, amount int64) policyengine.Charge {
	return policyengine.Charge{Budget: budget, Key: budget + "/agent-a", Window: window,
		Limit: big.NewInt(limit), Amount: big.NewInt(amount)}
}

func resv(tab, req int64, claims string, charges ...policyengine.Charge) Reservation {
	return Reservation{Wallet: wallet, TabID: big.NewInt(tab), ReqID: big.NewInt(req),
		Claims: []byte(claims), Charges: charges, Principal: "uid:1000", Agent: "agent-a",
		PolicyHash: bytes.Repeat([]byte{0xab}, 32), Rule: "allow-all", Digest: [32]byte{byte(req)}, Scheme: "eip712"}
}

func sig65(b byte) []byte { return bytes.Repeat([]byte{b}, 65) }

// TestReserveOutcomes walks every Reserve outcome in one ledger, in order.
func TestReserveOutcomes(t *testing.T) {
	clk := &fakeClock{t: t0}
	l := openTest(t, clk)
	ctx := context.Background()
	day := 24 * time.Hour
	steps := []struct {
		name   string
		do     func() (Result, error)
		want   Outcome
		check  func(t *testing.T, r Result)
		usedAt int64 // usage of daily/agent-a after the step
	}{
		{"new request reserves", func() (Result, error) { return l.Reserve(ctx, resv(1, 1, `{"a":1}`, charge("daily", day, 100, 40))) },
			Reserved, func(t *testing.T, r Result) {
				if r.RecordID != 1 {
					t.Errorf("record id %d, want 1", r.RecordID)
				}
			}, 40},
		{"retry before signing is resumable, not charged again", func() (Result, error) {
			return l.Reserve(ctx, resv(1, 1, `{"a":1}`, charge("daily", day, 100, 40)))
		}, Resumable, func(t *testing.T, r Result) {
			if r.RecordID != 1 || r.Digest != ([32]byte{1}) {
				t.Errorf("got %+v", r)
			}
		}, 40},
		{"same key different claims conflicts", func() (Result, error) {
			return l.Reserve(ctx, resv(1, 1, `{"a":2}`, charge("daily", day, 100, 40)))
		}, Conflict, func(t *testing.T, r Result) {
			if r.RecordID != 1 {
				t.Errorf("conflict should name record 1, got %d", r.RecordID)
			}
		}, 40},
		{"commit then retry is duplicate with stored signature", func() (Result, error) {
			if _, err := l.Commit(ctx, 1, sig65(7)); err != nil {
				return Result{}, err
			}
			return l.Reserve(ctx, resv(1, 1, `{"a":1}`, charge("daily", day, 100, 40)))
		}, Duplicate, func(t *testing.T, r Result) {
			if !bytes.Equal(r.Signature, sig65(7)) || r.RecordID != 1 {
				t.Errorf("got %+v", r)
			}
		}, 40},
		{"conflict after signing", func() (Result, error) {
			return l.Reserve(ctx, resv(1, 1, `{"a":3}`))
		}, Conflict, nil, 40},
		{"over budget is exhausted and writes nothing", func() (Result, error) {
			return l.Reserve(ctx, resv(1, 2, `{"a":4}`, charge("daily", day, 100, 61)))
		}, BudgetExhausted, func(t *testing.T, r Result) {
			if r.Budget == nil || r.Budget.Budget != "daily" || r.Budget.Code() != policyengine.CodeBudgetExhausted {
				t.Errorf("budget %+v", r.Budget)
			}
			if r.Charge == nil || r.Charge.Amount.Int64() != 61 || r.Used.Int64() != 40 {
				t.Errorf("charge %+v used %v", r.Charge, r.Used)
			}
		}, 40},
		{"exactly the limit fits", func() (Result, error) {
			return l.Reserve(ctx, resv(1, 2, `{"a":4}`, charge("daily", day, 100, 60)))
		}, Reserved, nil, 100},
		{"one charge of several over limit: nothing debited", func() (Result, error) {
			return l.Reserve(ctx, resv(1, 3, `{"a":5}`, charge("hourly", time.Hour, 1000, 1), charge("daily", day, 100, 1)))
		}, BudgetExhausted, func(t *testing.T, r Result) {
			if u, _ := l.Usage("hourly/agent-a", time.Hour, clk.Now()); u.Sign() != 0 {
				t.Errorf("hourly debited %s on a rejected reservation", u)
			}
		}, 100},
		{"two charges on the same counter add up", func() (Result, error) {
			return l.Reserve(ctx, resv(1, 4, `{"a":6}`, charge("rate", time.Minute, 3, 2), charge("rate", time.Minute, 3, 2)))
		}, BudgetExhausted, func(t *testing.T, r Result) {
			if r.Used.Int64() != 2 { // the first charge of the same request on the counter counts
				t.Errorf("used %v, want 2", r.Used)
			}
		}, 100},
		{"rate limit code", func() (Result, error) {
			c := charge("rate", time.Minute, 0, 1)
			c.Count = true
			return l.Reserve(ctx, resv(1, 5, `{"a":7}`, c))
		}, BudgetExhausted, func(t *testing.T, r Result) {
			if r.Budget.Code() != policyengine.CodeRateLimited {
				t.Errorf("code %s", r.Budget.Code())
			}
		}, 100},
		{"other wallet same tab/req is independent", func() (Result, error) {
			r := resv(1, 1, `{"a":9}`)
			r.Wallet = common.HexToAddress("0x2222222222222222222222222222222222222222")
			return l.Reserve(ctx, r)
		}, Reserved, nil, 100},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			r, err := s.do()
			if err != nil {
				t.Fatal(err)
			}
			if r.Outcome != s.want {
				t.Fatalf("outcome %s, want %s (%+v)", r.Outcome, s.want, r)
			}
			if r.AuditSeq == 0 {
				t.Errorf("no audit record")
			}
			if s.check != nil {
				s.check(t, r)
			}
			u, err := l.Usage("daily/agent-a", day, clk.Now())
			if err != nil || u.Int64() != s.usedAt {
				t.Errorf("daily usage %v (err %v), want %d", u, err, s.usedAt)
			}
		})
	}
	// Every Reserve wrote one audit record, Commit one more: chain verifies.
	rep, err := l.VerifyAudit()
	if err != nil || !rep.OK || rep.Records != uint64(len(steps)+1) {
		t.Fatalf("verify: %+v %v (want %d records)", rep, err, len(steps)+1)
	}
}

func TestCommitAndReleaseErrors(t *testing.T) {
	l := openTest(t, &fakeClock{t: t0})
	ctx := context.Background()
	if _, err := l.Commit(ctx, 99, sig65(1)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("commit unknown: %v", err)
	}
	if err := l.Release(ctx, 99, "", "x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("release unknown: %v", err)
	}
	if _, err := l.Commit(ctx, 1, nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("commit empty sig: %v", err)
	}
	r, err := l.Reserve(ctx, resv(5, 1, "c1"))
	if err != nil || r.Outcome != Reserved {
		t.Fatal(r, err)
	}
	cr, err := l.Commit(ctx, r.RecordID, sig65(1))
	if err != nil || cr.AlreadySigned || !bytes.Equal(cr.Signature, sig65(1)) {
		t.Fatal(cr, err)
	}
	// A second commit (two resumers raced) returns the first durable signature.
	cr, err = l.Commit(ctx, r.RecordID, sig65(2))
	if err != nil || !cr.AlreadySigned || !bytes.Equal(cr.Signature, sig65(1)) {
		t.Fatal(cr, err)
	}
	if err := l.Release(ctx, r.RecordID, "", "late"); !errors.Is(err, ErrAlreadySigned) {
		t.Fatalf("release signed: %v", err)
	}
	r2, _ := l.Reserve(ctx, resv(5, 2, "c2"))
	if err := l.Release(ctx, r2.RecordID, "backend_unavailable", "hsm gone"); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx, r2.RecordID, "", "again"); err != nil {
		t.Fatalf("second release should be a no-op: %v", err)
	}
	if _, err := l.Commit(ctx, r2.RecordID, sig65(3)); !errors.Is(err, ErrReleased) {
		t.Fatalf("commit released: %v", err)
	}
	rec, err := l.Record(r2.RecordID)
	if err != nil || rec.Status != StatusReleased || rec.Code != "backend_unavailable" || rec.Reason != "hsm gone" {
		t.Fatalf("%+v %v", rec, err)
	}
	if _, err := l.Reserve(ctx, Reservation{Wallet: wallet, TabID: big.NewInt(-1), ReqID: big.NewInt(1), Claims: []byte("x")}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("negative tab: %v", err)
	}
	bad := charge("a", time.Hour, 1, 1)
	bad.Key = "a\x00b"
	if _, err := l.Reserve(ctx, resv(5, 3, "c", bad)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("nul in key: %v", err)
	}
}

func TestReleaseRefundsAndFreesReplayKey(t *testing.T) {
	clk := &fakeClock{t: t0}
	l := openTest(t, clk)
	ctx := context.Background()
	c := func(a int64) []policyengine.Charge {
		return []policyengine.Charge{charge("daily", 24*time.Hour, 100, a), charge("hourly", time.Hour, 50, a)}
	}
	r1, _ := l.Reserve(ctx, resv(1, 1, "claims-1", c(30)...))
	clk.Advance(10 * time.Minute) // a different bucket: the refund must hit the original one
	r2, _ := l.Reserve(ctx, resv(1, 2, "claims-2", c(20)...))
	if r1.Outcome != Reserved || r2.Outcome != Reserved {
		t.Fatal(r1, r2)
	}
	if r, _ := l.Reserve(ctx, resv(1, 3, "claims-3", c(1)...)); r.Outcome != BudgetExhausted {
		t.Fatalf("hourly should be full: %v", r.Outcome)
	}
	if err := l.Release(ctx, r1.RecordID, "", "hsm error"); err != nil {
		t.Fatal(err)
	}
	for _, k := range []struct {
		key string
		w   time.Duration
	}{{"daily/agent-a", 24 * time.Hour}, {"hourly/agent-a", time.Hour}} {
		u, _ := l.Usage(k.key, k.w, clk.Now())
		if u.Int64() != 20 {
			t.Errorf("%s usage %s after refund, want 20", k.key, u)
		}
	}
	// The replay key is free again: the same request reserves afresh (a new record)...
	r3, err := l.Reserve(ctx, resv(1, 1, "claims-1", c(30)...))
	if err != nil || r3.Outcome != Reserved || r3.RecordID == r1.RecordID {
		t.Fatalf("re-reserve after release: %+v %v", r3, err)
	}
	// ... and the audit log has signing_failed and reservation_released for r1.
	var kinds []audit.Kind
	var buf bytes.Buffer
	if err := l.ExportAudit(&buf, 0); err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); ; seq++ {
		ar, ok, err := l.AuditRecord(seq)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		if ar.Event.RecordID == uint64(r1.RecordID) {
			kinds = append(kinds, ar.Event.Kind)
		}
	}
	want := []audit.Kind{audit.KindDecision, audit.KindSigningFailed, audit.KindReservationReleased}
	if fmt.Sprint(kinds) != fmt.Sprint(want) {
		t.Fatalf("audit kinds for record %d: %v, want %v", r1.RecordID, kinds, want)
	}
	if bytes.Count(buf.Bytes(), []byte("\n")) != 6 {
		t.Fatalf("export lines:\n%s", buf.String())
	}
}

func TestWindowRollOver(t *testing.T) {
	clk := &fakeClock{t: t0}
	l := openTest(t, clk)
	ctx := context.Background()
	c := charge("hourly", time.Hour, 10, 10)
	if r, _ := l.Reserve(ctx, resv(1, 1, "a", c)); r.Outcome != Reserved {
		t.Fatal(r)
	}
	clk.Advance(59 * time.Minute)
	if r, _ := l.Reserve(ctx, resv(1, 2, "b", c)); r.Outcome != BudgetExhausted {
		t.Fatalf("inside the window: %v", r.Outcome)
	}
	// The charge is counted until its bucket leaves the window (at most one bucket width late).
	clk.Advance(time.Minute + policyengine.BucketWidth(time.Hour))
	if u, _ := l.Usage("hourly/agent-a", time.Hour, clk.Now()); u.Sign() != 0 {
		t.Fatalf("usage after roll-over %s", u)
	}
	if r, _ := l.Reserve(ctx, resv(1, 3, "c", c)); r.Outcome != Reserved {
		t.Fatalf("after roll-over: %v", r.Outcome)
	}
	// Pruning: advance past PruneEvery; the old bucket is deleted by the next group.
	clk.Advance(2 * time.Hour)
	if _, err := l.AppendAudit(ctx, audit.Event{Kind: audit.KindPolicyReload}); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Pruned != 2 {
		t.Fatalf("pruned %d buckets, want 2", st.Pruned)
	}
	n := 0
	_ = l.DB().View(func(tx *bucketstore.Tx) error { n = tx.Bucket(bucketUsage).Stats().KeyN; return nil })
	if n != 0 {
		t.Fatalf("%d usage buckets left after prune", n)
	}
	// Lifetime counters (window 0) are never pruned.
	lc := charge("task", 0, 5, 5)
	if r, _ := l.Reserve(ctx, resv(1, 4, "d", lc)); r.Outcome != Reserved {
		t.Fatal(r)
	}
	clk.Advance(1000 * time.Hour)
	_, _ = l.AppendAudit(ctx, audit.Event{Kind: audit.KindPolicyReload})
	if r, _ := l.Reserve(ctx, resv(1, 5, "e", lc)); r.Outcome != BudgetExhausted {
		t.Fatalf("lifetime counter forgot usage: %v", r.Outcome)
	}
}

func TestConcurrentBudgetNeverExceeded(t *testing.T) {
	clk := &fakeClock{t: t0}
	l := openTest(t, clk)
	ctx := context.Background()
	const limit, workers, per = 1000, 64, 12
	var granted, exhausted atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < per; i++ {
				amt := int64(1 + (w*7+i*3)%5)
				r, err := l.Reserve(ctx, resv(int64(w), int64(i), fmt.Sprint(w, i), charge("daily", 24*time.Hour, limit, amt)))
				if err == nil && r.Outcome == Reserved && w%3 == 2 {
					_, err = l.Commit(ctx, r.RecordID, sig65(1))
				}
				if err != nil {
					t.Error(err)
					return
				}
				switch r.Outcome {
				case Reserved:
					granted.Add(amt)
				case BudgetExhausted:
					exhausted.Add(1)
				default:
					t.Errorf("outcome %s", r.Outcome)
				}
			}
		}(w)
	}
	wg.Wait()
	u, _ := l.Usage("daily/agent-a", 24*time.Hour, clk.Now())
	if granted.Load() > limit || u.Int64() != granted.Load() {
		t.Fatalf("granted %d, usage %s, limit %d", granted.Load(), u, limit)
	}
	if exhausted.Load() == 0 || granted.Load() < limit-5 {
		t.Fatalf("budget not used up: granted %d, exhausted %d", granted.Load(), exhausted.Load())
	}
	st := l.Stats()
	t.Logf("ops %d in %d groups (%d updates), %d fsyncs", st.Ops, st.Groups, st.Updates, st.Syncs)
	if st.Syncs >= st.Ops/2 {
		t.Errorf("group commit did not share fsyncs: %d ops, %d fsyncs", st.Ops, st.Syncs)
	}
}

func TestStateAndAudit(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "l.db")
	l, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if v, err := l.GetState("killswitch"); v != nil || err != nil {
		t.Fatalf("absent key: %v %v", v, err)
	}
	ev := audit.Event{Kind: audit.KindKillSwitch, Operator: "alice", Reason: "test", Attrs: map[string]string{"action": "engaged"}}
	if err := l.PutState(ctx, "killswitch", []byte(`{"engaged":true}`), ev); err != nil {
		t.Fatal(err)
	}
	if err := l.PutState(ctx, "approval/1", []byte{}, audit.Event{Kind: audit.KindApproval}); err != nil {
		t.Fatal(err)
	}
	if err := l.PutState(ctx, "x", []byte("v"), audit.Event{Kind: "bogus"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad kind: %v", err)
	}
	if err := l.AuditAsync(audit.Event{Kind: audit.KindDecision, Decision: "deny", Code: "seller_not_allowed"}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.AppendAudit(ctx, audit.Event{Kind: audit.KindKeyOp, Operator: "bob"}); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Health(); !errors.Is(err, ErrClosed) {
		t.Fatalf("health after close: %v", err)
	}
	if err := l.PutState(ctx, "k", nil, ev); !errors.Is(err, ErrClosed) {
		t.Fatalf("after close: %v", err)
	}
	// Reopen: the state and the four audit records survive, the chain verifies.
	l, err = Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if v, _ := l.GetState("killswitch"); string(v) != `{"engaged":true}` {
		t.Fatalf("state after reopen %q", v)
	}
	if v, _ := l.GetState("approval/1"); v == nil || len(v) != 0 {
		t.Fatalf("empty value should be non-nil empty, got %#v", v)
	}
	if m, _ := l.StateWithPrefix("approval/"); len(m) != 1 {
		t.Fatalf("prefix %v", m)
	}
	rep, err := l.VerifyAudit()
	if err != nil || rep.Records != 4 {
		t.Fatalf("%+v %v", rep, err)
	}
	r, ok, _ := l.AuditRecord(1)
	if !ok || r.Event.Operator != "alice" || r.Event.Attrs["action"] != "engaged" {
		t.Fatalf("%+v", r)
	}
	if err := l.PutState(ctx, "killswitch", nil, ev); err != nil {
		t.Fatal(err)
	}
	if v, _ := l.GetState("killswitch"); v != nil {
		t.Fatalf("deleted key still %q", v)
	}
}

// testOp lets tests put arbitrary work into a group.
type testOp struct {
	opBase
	f func(tx *bucketstore.Tx) error
}

func (o *testOp) apply(tx *bucketstore.Tx, _ time.Time) error { return o.f(tx) }
func (o *testOp) earlyOK() bool                               { return false }
func (o *testOp) wroteNothing() bool                          { return false }
func (o *testOp) lazy() bool                                  { return false }

// blockCommitter queues an op that holds the committer until the returned func is called, so
// that the ops queued meanwhile form one group.
func blockCommitter(t *testing.T, l *Ledger) (unblock func()) {
	started, gate := make(chan struct{}), make(chan struct{})
	o := &testOp{opBase: newBase(false), f: func(*bucketstore.Tx) error { close(started); <-gate; return nil }}
	go func() { _ = l.submit(context.Background(), o) }()
	<-started
	return func() { close(gate); <-o.done }
}

func TestGroupCommitGroups(t *testing.T) {
	l := openTest(t, &fakeClock{t: t0})
	ctx := context.Background()
	// Serial: one op per transaction.
	for i := 0; i < 10; i++ {
		if _, err := l.Reserve(ctx, resv(1, int64(i), "s")); err != nil {
			t.Fatal(err)
		}
	}
	if st := l.Stats(); st.Updates != 10 || st.Ops != 10 {
		t.Fatalf("serial: %+v", st)
	}
	syncs0 := l.Stats().Syncs
	// 64 concurrent writers: far fewer transactions than operations.
	var wg sync.WaitGroup
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				r, err := l.Reserve(ctx, resv(int64(100+w), int64(i), "c"))
				if err == nil {
					_, err = l.Commit(ctx, r.RecordID, sig65(1))
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	st := l.Stats()
	ops, syncs := st.Ops-10, st.Syncs-syncs0
	t.Logf("concurrent: %d ops in %d transactions, %d fsyncs (%.1f ops per fsync)", ops, st.Updates-10, syncs, float64(ops)/float64(syncs))
	if ops != 1280 || syncs > ops/4 || st.Groups != st.Updates {
		t.Fatalf("group commit did not share fsyncs: %+v", st)
	}
}

func TestFailedOpIsRerunAlone(t *testing.T) {
	l := openTest(t, &fakeClock{t: t0})
	ctx := context.Background()
	unblock := blockCommitter(t, l)
	errBoom := errors.New("boom")
	results := make(chan error, 3)
	var ids [2]RecordID
	go func() { r, err := l.Reserve(ctx, resv(1, 1, "a")); ids[0] = r.RecordID; results <- err }()
	time.Sleep(20 * time.Millisecond)
	bad := &testOp{opBase: newBase(false), f: func(tx *bucketstore.Tx) error {
		if err := tx.Bucket(bucketState).Put([]byte("partial"), []byte("x")); err != nil {
			return err
		}
		return errBoom // partial write then failure: must be rolled back
	}}
	go func() { results <- l.submit(ctx, bad) }()
	time.Sleep(20 * time.Millisecond)
	go func() { r, err := l.Reserve(ctx, resv(1, 2, "b")); ids[1] = r.RecordID; results <- err }()
	time.Sleep(20 * time.Millisecond)
	before := l.Stats()
	unblock()
	var got []error
	for i := 0; i < 3; i++ {
		got = append(got, <-results)
	}
	n := 0
	for _, e := range got {
		if errors.Is(e, errBoom) {
			n++
		} else if e != nil {
			t.Fatal(e)
		}
	}
	if n != 1 {
		t.Fatalf("errors %v", got)
	}
	if v, _ := l.GetState("partial"); v != nil {
		t.Fatal("partial write of a failed op was committed")
	}
	for _, id := range ids {
		if r, err := l.Record(id); err != nil || r.Status != StatusReserved {
			t.Fatalf("record %d: %v %v", id, r, err)
		}
	}
	// The blocker's group was already counted in Updates; it and the group of three finish now.
	if st := l.Stats(); st.Updates-before.Updates != 2 || st.Groups-before.Groups != 2 || st.Ops-before.Ops != 4 {
		t.Fatalf("want one group in two transactions: before %+v after %+v", before, st)
	}
	if rep, err := l.VerifyAudit(); err != nil || rep.Records != 2 {
		t.Fatalf("%+v %v", rep, err)
	}
}

func TestCancelledWhileQueuedWritesNothing(t *testing.T) {
	l := openTest(t, &fakeClock{t: t0})
	unblock := blockCommitter(t, l)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, err := l.Reserve(ctx, resv(1, 1, "a", charge("daily", time.Hour, 10, 5)))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
	unblock()
	if u, _ := l.Usage("daily/agent-a", time.Hour, t0); u.Sign() != 0 {
		t.Fatalf("cancelled reservation charged %s", u)
	}
	if rs, _ := l.Recent(10); len(rs) != 0 {
		t.Fatalf("cancelled reservation left %d records", len(rs))
	}
}

func TestQueriesAndOptions(t *testing.T) {
	if _, err := Open(Options{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty path: %v", err)
	}
	if _, err := Open(Options{Path: filepath.Join(t.TempDir(), "x"), MaxBatch: -1}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad MaxBatch: %v", err)
	}
	clk := &fakeClock{t: t0}
	l := openTest(t, clk)
	// A second Open of the same file fails on the lock instead of corrupting it.
	if _, err := Open(Options{Path: l.Path(), LockTimeout: 50 * time.Millisecond}); err == nil {
		t.Fatal("second open of a locked file succeeded")
	}
	ctx := context.Background()
	for i := int64(0); i < 5; i++ {
		r, _ := l.Reserve(ctx, resv(7, i, fmt.Sprint(i), charge("daily", 24*time.Hour, 100, 3), charge("hourly", time.Hour, 100, 2)))
		if i%2 == 0 {
			_, _ = l.Commit(ctx, r.RecordID, sig65(byte(i)))
		}
	}
	_, _ = l.Reserve(ctx, resv(8, 0, "other tab"))
	recent, err := l.Recent(3)
	if err != nil || len(recent) != 3 || recent[0].ID != 6 || recent[2].ID != 4 {
		t.Fatalf("recent: %v %v", recent, err)
	}
	byTab, err := l.ByTab(wallet, big.NewInt(7))
	if err != nil || len(byTab) != 5 || byTab[4].ReqID.Int64() != 4 || byTab[4].Status != StatusSigned {
		t.Fatalf("by tab: %v %v", byTab, err)
	}
	all, _ := l.ByTab(wallet, nil)
	if len(all) != 6 {
		t.Fatalf("by wallet: %d", len(all))
	}
	spend, err := l.SpendAll(clk.Now())
	if err != nil || len(spend) != 2 || spend[0].Key != "daily/agent-a" || spend[0].Used.Int64() != 15 || spend[1].Used.Int64() != 10 {
		t.Fatalf("spend: %+v %v", spend, err)
	}
	one, err := l.Spend("hourly/agent-a", time.Hour, clk.Now())
	if err != nil || one.Used.Int64() != 10 || one.Buckets != 1 {
		t.Fatalf("spend one: %+v %v", one, err)
	}
	if js, _ := one.MarshalJSON(); string(js) != `{"key":"hourly/agent-a","window":3600000000000,"window_s":3600,"used":"10","buckets":1}` {
		t.Fatalf("spend json %s", js)
	}
	rec, _ := l.Record(1)
	js, err := rec.MarshalJSON()
	if err != nil || !bytes.Contains(js, []byte(`"status":"signed"`)) || !bytes.Contains(js, []byte(`"tab_id":"7"`)) {
		t.Fatalf("json %s %v", js, err)
	}
	if _, err := l.Record(999); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	if id, err := ParseRecordID("42"); err != nil || id != 42 {
		t.Fatal(id, err)
	}
	seq, _, err := l.AuditHead()
	if err != nil || seq != 9 {
		t.Fatalf("audit head %d %v", seq, err)
	}
}

func TestReserveEarly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "early.db")
	l, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c := charge("daily", 24*time.Hour, 100, 10)
	r, err := l.Reserve(ctx, resv(1, 1, "a", c))
	if err != nil || r.Outcome != Reserved {
		t.Fatal(r, err)
	}
	if _, err := l.Commit(ctx, r.RecordID, sig65(1)); err != nil {
		t.Fatal(err)
	}

	// The reservation's transaction fails after the early release: the failure is fatal, so
	// Commit fails (the signature is withheld), every later write fails and Health reports it.
	l.testHookAfterApply = func() error { return errors.New("injected commit failure") }
	if err := l.Health(); err != nil {
		t.Fatal(err)
	}
	r2, err := l.Reserve(ctx, resv(1, 2, "b", c))
	var se *StoreError
	switch {
	case err == nil && r2.Outcome == Reserved:
	case errors.As(err, &se): // the early answer raced with the group's end
	default:
		t.Fatalf("early result: %+v %v", r2, err)
	}
	// The early result came before the group finished: wait for it to fail.
	for deadline := time.Now().Add(5 * time.Second); !errors.As(l.Health(), &se); {
		if time.Now().After(deadline) {
			t.Fatalf("health after a failed group: %v", l.Health())
		}
		time.Sleep(time.Millisecond)
	}
	l.testHookAfterApply = nil // the file is fine now; the ledger must still refuse writes
	if r2.Outcome == Reserved {
		if _, err := l.Commit(ctx, r2.RecordID, sig65(2)); !errors.As(err, &se) {
			t.Fatalf("commit of a reservation whose transaction failed: %v", err)
		}
		if err := l.Release(ctx, r2.RecordID, "", "x"); !errors.As(err, &se) {
			t.Fatalf("release: %v", err)
		}
	}
	for _, rv := range []Reservation{resv(1, 1, "a", c), resv(1, 3, "c", c)} {
		if res, err := l.Reserve(ctx, rv); !errors.As(err, &se) {
			t.Fatalf("reserve after a failed group: %+v %v", res, err)
		}
	}
	if err := l.Health(); !errors.As(err, &se) {
		t.Fatalf("health after later writes: %v", err)
	}
	if u, _ := l.Usage("daily/agent-a", 24*time.Hour, time.Now()); u.Int64() != 10 {
		t.Fatalf("usage %s, want 10", u)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// After a restart the ledger takes writes again; the failed group left nothing (the hook
	// failed it before bbolt wrote anything) and ids stay monotonic.
	l, err = Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Health(); err != nil {
		t.Fatal(err)
	}
	if r2.Outcome == Reserved {
		if _, err := l.Commit(ctx, r2.RecordID, sig65(2)); !errors.Is(err, ErrNotFound) {
			t.Fatalf("commit after reopen: %v", err)
		}
	}
	r4, err := l.Reserve(ctx, resv(1, 3, "c", c))
	if err != nil || r4.Outcome != Reserved || r4.RecordID <= r.RecordID || r4.RecordID <= r2.RecordID {
		t.Fatalf("after reopen: %+v %v", r4, err)
	}
	if u, _ := l.Usage("daily/agent-a", 24*time.Hour, time.Now()); u.Int64() != 20 {
		t.Fatalf("usage %s, want 20", u)
	}
	if rep, err := l.VerifyAudit(); err != nil || !rep.OK {
		t.Fatal(rep, err)
	}
}

// TestFileTamperDetected rewrites an audit record offline with valid encoding (the store's
// checksums stay valid: an edit made with the store's own tools) and checks that VerifyAudit
// names the altered record.
func TestFileTamperDetected(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.db")
	l, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 1; i <= 10; i++ {
		if _, err := l.AppendAudit(ctx, audit.Event{Kind: audit.KindKeyOp, Reason: fmt.Sprintf("needle-%02d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bucketstore.Open(path, bucketstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bucketstore.Tx) error {
		b := tx.Bucket(audit.BucketRecords)
		k := binary.BigEndian.AppendUint64(nil, 6)
		v := b.Get(k)
		if !bytes.Contains(v, []byte("needle-06")) {
			return errors.New("record 6 not found")
		}
		return b.Put(k, bytes.ReplaceAll(v, []byte("needle-06"), []byte("needle-96"))) // still valid CBOR, another hash
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	// The daemon's start-up check refuses the ledger, naming where the chain breaks.
	if _, err := Open(Options{Path: path}); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "record 6") {
		t.Fatalf("open of a tampered ledger: %v", err)
	}
	// A full verification names the altered record.
	db, err = bucketstore.Open(path, bucketstore.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var rep audit.Report
	err = db.View(func(tx *bucketstore.Tx) error {
		var err error
		rep, err = VerifyTx(tx, time.Now())
		return err
	})
	var ce *audit.CorruptError
	if !errors.As(err, &ce) || !errors.Is(err, ErrCorrupt) || ce.Seq != 6 || rep.OK || rep.Records != 5 {
		t.Fatalf("report %+v, err %v", rep, err)
	}
}

// TestIntentsLeftByACrashArePossiblySigned: intents that have neither a signature nor a release
// when the ledger is reopened may have had their signature sent before the crash. Their charges
// stand, an identical retry resumes the same record (no second charge) and other claims for the
// same key conflict.
func TestIntentsLeftByACrashArePossiblySigned(t *testing.T) {
	clk := &fakeClock{t: t0}
	path := filepath.Join(t.TempDir(), "o.db")
	l, err := Open(Options{Path: path, Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	life := charge("task", 0, 100, 10) // lifetime counter: only a release gives it back
	var ids []RecordID
	for i := int64(0); i < 4; i++ {
		r, err := l.Reserve(ctx, resv(3, i, fmt.Sprint("o", i), life))
		if err != nil || r.Outcome != Reserved || r.Durable(ctx) != nil {
			t.Fatal(r, err)
		}
		ids = append(ids, r.RecordID)
	}
	if _, err := l.Commit(ctx, ids[0], sig65(1)); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx, ids[1], "", "failed"); err != nil {
		t.Fatal(err)
	}
	_ = l.Close()
	l, err = Open(Options{Path: path, Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if n, err := l.PossiblySigned(); err != nil || n != 2 {
		t.Fatalf("possibly signed %d %v, want 2", n, err)
	}
	if u, _ := l.Usage("task/agent-a", 0, clk.Now()); u.Int64() != 30 {
		t.Fatalf("lifetime usage %s, want 30 (signed + two possibly signed)", u)
	}
	r, err := l.Reserve(ctx, resv(3, 3, "o3", life))
	if err != nil || r.Outcome != Resumable || r.RecordID != ids[3] {
		t.Fatalf("identical retry of a possibly signed intent: %+v %v", r, err)
	}
	if r, _ := l.Reserve(ctx, resv(3, 2, "other", life)); r.Outcome != Conflict || r.RecordID != ids[2] {
		t.Fatalf("other claims for a possibly signed key: %+v", r)
	}
	if cr, err := l.RecordSignature(ctx, ids[3], sig65(3)); err != nil || cr.AlreadySigned {
		t.Fatal(cr, err)
	}
	if u, _ := l.Usage("task/agent-a", 0, clk.Now()); u.Int64() != 30 {
		t.Fatalf("lifetime usage %s after the retry, want 30 (no second charge)", u)
	}
	if n, _ := l.PossiblySigned(); n != 1 {
		t.Fatalf("possibly signed %d after one was signed, want 1", n)
	}
	if rep, err := l.VerifyAudit(); err != nil || !rep.OK {
		t.Fatal(rep, err)
	}
}

func TestPendingIndexRebuilt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.db")
	l, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a, _ := l.Reserve(ctx, resv(1, 1, "a"))
	b, _ := l.Reserve(ctx, resv(1, 2, "b"))
	if _, err := l.Commit(ctx, a.RecordID, sig65(1)); err != nil {
		t.Fatal(err)
	}
	// Simulate a file from before the pending index.
	if err := l.DB().Update(func(tx *bucketstore.Tx) error { return tx.DeleteBucket(bucketPending) }); err != nil {
		t.Fatal(err)
	}
	_ = l.Close()
	l, err = Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	p, err := l.Pending(0)
	if err != nil || len(p) != 1 || p[0].ID != b.RecordID {
		t.Fatalf("rebuilt pending: %v %v", p, err)
	}
}

func TestBackupWhileServing(t *testing.T) {
	l := openTest(t, nil)
	ctx := context.Background()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // writes keep going during the backup
		defer wg.Done()
		for i := int64(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			r, err := l.Reserve(ctx, resv(9, i, "b"))
			if err == nil {
				_, err = l.Commit(ctx, r.RecordID, sig65(9))
			}
			if err != nil {
				t.Error(err)
				return
			}
		}
	}()
	time.Sleep(30 * time.Millisecond)
	dst := filepath.Join(t.TempDir(), "backup.db")
	if err := l.Backup(dst); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	b, err := Open(Options{Path: dst})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	rep, err := b.VerifyAudit()
	if err != nil || !rep.OK || rep.Records == 0 {
		t.Fatalf("backup audit: %+v %v", rep, err)
	}
	recs, err := b.ByTab(wallet, big.NewInt(9))
	if err != nil || len(recs) == 0 {
		t.Fatalf("backup records: %d %v", len(recs), err)
	}
}

func TestMaxBatchBoundsGroups(t *testing.T) {
	l, err := Open(Options{Path: filepath.Join(t.TempDir(), "mb.db"), MaxBatch: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	unblock := blockCommitter(t, l)
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if _, err := l.AppendAudit(context.Background(), audit.Event{Kind: audit.KindKeyOp}); err != nil {
				t.Error(err)
			}
		}(i)
	}
	for l.Stats().Queued < 10 {
		time.Sleep(time.Millisecond)
	}
	unblock()
	wg.Wait()
	// 1 blocker group + ceil(10/3) = 4 groups of at most 3.
	if st := l.Stats(); st.Groups != 5 || st.Ops != 11 {
		t.Fatalf("%+v", st)
	}
}

func auditCount(t *testing.T, l *Ledger) uint64 {
	t.Helper()
	seq, _, err := l.AuditHead()
	if err != nil {
		t.Fatal(err)
	}
	return seq
}

// TestOpenWaitsForAStoreStillHeld: a store held by another ledger (a daemon still exiting) is
// opened once it is released within LockTimeout, and refused as locked after it.
func TestOpenWaitsForAStoreStillHeld(t *testing.T) {
	path := filepath.Join(t.TempDir(), "held.db")
	first, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Options{Path: path, LockTimeout: 50 * time.Millisecond}); !errors.Is(err, bucketstore.ErrLocked) {
		t.Fatalf("open of a held store: %v", err)
	}
	go func() { time.Sleep(100 * time.Millisecond); first.Close() }()
	second, err := Open(Options{Path: path, LockTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("open once released: %v", err)
	}
	second.Close()
}
