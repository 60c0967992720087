package approvals

import (
	"context"
	"crypto/sha256"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/pipeline"
)

type memAudit struct {
	mu   sync.Mutex
	evs  []audit.Event
	fail error
}

func (m *memAudit) AppendAudit(_ context.Context, ev audit.Event) (audit.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return audit.Record{}, m.fail
	}
	m.evs = append(m.evs, ev)
	return audit.Record{Seq: uint64(len(m.evs)), Event: ev}, nil
}

func (m *memAudit) actions(id string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, e := range m.evs {
		if e.Kind != audit.KindApproval {
			panic("wrong kind")
		}
		if e.ApprovalID == id {
			out = append(out, e.Attrs["action"]+"/"+e.Operator)
		}
	}
	return out
}

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

func setup(t *testing.T, o Options) (*Manager, *memAudit, *fakeClock) {
	t.Helper()
	au := &memAudit{}
	clk := &fakeClock{t: time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)}
	if o.Auditor == nil {
		o.Auditor = au
	}
	o.Clock = clk
	m, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return m, au, clk
}

func req(name string) Request {
	return Request{Key: sha256.Sum256([]byte(name)), Agent: "agent-1", Principal: "uid:1000", Wallet: "0xabc",
		Rule: "big-spend", Group: "treasury", Timeout: 10 * time.Minute, Summary: map[string]string{"amount": "5"}}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestSubmitSameKeySameID(t *testing.T) {
	ctx := context.Background()
	m, au, _ := setup(t, Options{})
	a1, err := m.Submit(ctx, req("x"))
	if err != nil || a1.State != Pending || a1.ID == "" {
		t.Fatalf("%+v %v", a1, err)
	}
	a2, _ := m.Submit(ctx, req("x"))
	b, _ := m.Submit(ctx, req("y"))
	if a2.ID != a1.ID || b.ID == a1.ID {
		t.Fatalf("ids: %s %s %s", a1.ID, a2.ID, b.ID)
	}
	if got := au.actions(a1.ID); !equal(got, []string{"requested/"}) {
		t.Fatalf("audit %v", got)
	}
	if l := m.List(); len(l) != 2 {
		t.Fatalf("list %d", len(l))
	}
}

func TestApproveThenResubmitProceeds(t *testing.T) {
	ctx := context.Background()
	m, au, _ := setup(t, Options{})
	a, _ := m.Submit(ctx, req("x"))
	done := make(chan Approval, 1)
	go func() {
		got, err := m.Wait(ctx, a.ID, 5*time.Second)
		if err != nil {
			t.Error(err)
		}
		done <- got
	}()
	time.Sleep(10 * time.Millisecond)
	if _, err := m.Approve(ctx, a.ID, "alice"); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-done:
		if got.State != Approved || got.DecidedBy != "alice" {
			t.Fatalf("wait returned %+v", got)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Wait did not wake on approval")
	}
	again, _ := m.Submit(ctx, req("x"))
	if again.ID != a.ID || again.State != Approved {
		t.Fatalf("re-submission: %+v", again)
	}
	if l, ok := m.Lookup(req("x").Key); !ok || l.State != Approved {
		t.Fatalf("lookup %+v %v", l, ok)
	}
	if _, err := m.Deny(ctx, a.ID, "bob", "no"); !errors.Is(err, ErrDecided) {
		t.Fatalf("deny after approve: %v", err)
	}
	if got := au.actions(a.ID); !equal(got, []string{"requested/", "approved/alice"}) {
		t.Fatalf("audit %v", got)
	}
}

func TestDeny(t *testing.T) {
	ctx := context.Background()
	m, au, _ := setup(t, Options{})
	a, _ := m.Submit(ctx, req("x"))
	d, err := m.Deny(ctx, a.ID, "bob", "too expensive")
	if err != nil || d.State != Denied || d.Reason != "too expensive" {
		t.Fatalf("%+v %v", d, err)
	}
	if got, _ := m.Wait(ctx, a.ID, time.Second); got.State != Denied {
		t.Fatalf("wait %+v", got)
	}
	if _, err := m.Approve(ctx, a.ID, "alice"); !errors.Is(err, ErrDecided) {
		t.Fatalf("approve after deny: %v", err)
	}
	if r, _ := m.Submit(ctx, req("x")); r.State != Denied {
		t.Fatalf("re-submission of a denied request: %+v", r)
	}
	if got := au.actions(a.ID); !equal(got, []string{"requested/", "denied/bob"}) {
		t.Fatalf("audit %v", got)
	}
	if _, err := m.Approve(ctx, "apr_nope", "alice"); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	if _, err := m.Approve(ctx, a.ID, ""); !errors.Is(err, ErrNoOperator) {
		t.Fatal(err)
	}
}

func TestExpiry(t *testing.T) {
	ctx := context.Background()
	m, au, clk := setup(t, Options{})
	a, _ := m.Submit(ctx, req("x"))
	clk.Advance(10*time.Minute - time.Second)
	if g, _ := m.Get(a.ID); g.State != Pending {
		t.Fatalf("expired early: %+v", g)
	}
	clk.Advance(time.Second)
	g, _ := m.Get(a.ID)
	if g.State != Expired || !g.State.Decided() {
		t.Fatalf("not expired: %+v", g)
	}
	if _, err := m.Approve(ctx, a.ID, "alice"); !errors.Is(err, ErrDecided) {
		t.Fatalf("approve after expiry: %v", err)
	}
	if got := au.actions(a.ID); !equal(got, []string{"requested/", "expired/"}) {
		t.Fatalf("audit %v", got)
	}
	// Retained decided approvals are forgotten after Retain.
	clk.Advance(25 * time.Hour)
	m.Sweep(ctx)
	if _, err := m.Get(a.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("not forgotten: %v", err)
	}
	if n, _ := m.Submit(ctx, req("x")); n.ID == a.ID || n.State != Pending {
		t.Fatalf("after retention a new approval is filed: %+v", n)
	}
}

func TestWaitTimesOutPending(t *testing.T) {
	ctx := context.Background()
	m, _, _ := setup(t, Options{})
	a, _ := m.Submit(ctx, req("x"))
	start := time.Now()
	g, err := m.Wait(ctx, a.ID, 30*time.Millisecond)
	if err != nil || g.State != Pending || time.Since(start) < 25*time.Millisecond {
		t.Fatalf("%+v %v after %v", g, err, time.Since(start))
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := m.Wait(cctx, a.ID, time.Second); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
	if _, err := m.Wait(ctx, "apr_unknown", time.Millisecond); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
}

func TestGroups(t *testing.T) {
	ctx := context.Background()
	m, _, _ := setup(t, Options{Groups: map[string][]string{"treasury": {"alice"}}})
	a, _ := m.Submit(ctx, req("x"))
	if _, err := m.Approve(ctx, a.ID, "mallory"); !errors.Is(err, ErrNotInGroup) {
		t.Fatalf("outsider approved: %v", err)
	}
	if _, err := m.Approve(ctx, a.ID, "alice"); err != nil {
		t.Fatal(err)
	}
	r := req("y")
	r.Group = "unknown-group"
	b, _ := m.Submit(ctx, r)
	if _, err := m.Deny(ctx, b.ID, "alice", "x"); !errors.Is(err, ErrNotInGroup) {
		t.Fatalf("unknown group decided: %v", err)
	}
}

func TestAuditFailure(t *testing.T) {
	ctx := context.Background()
	au := &memAudit{fail: errors.New("disk gone")}
	m, _, _ := setup(t, Options{Auditor: au})
	if _, err := m.Submit(ctx, req("x")); err == nil {
		t.Fatal("Submit succeeded without its audit record")
	}
	if len(m.List()) != 0 {
		t.Fatal("unaudited request filed")
	}
	au.fail = nil
	a, _ := m.Submit(ctx, req("x"))
	au.fail = errors.New("disk gone")
	if _, err := m.Approve(ctx, a.ID, "alice"); err == nil {
		t.Fatal("approved without audit record")
	}
	if g, _ := m.Get(a.ID); g.State != Pending {
		t.Fatalf("state changed without audit: %+v", g)
	}
}

func TestMaxPending(t *testing.T) {
	ctx := context.Background()
	m, _, _ := setup(t, Options{MaxPending: 2})
	m.Submit(ctx, req("a"))
	m.Submit(ctx, req("b"))
	if _, err := m.Submit(ctx, req("c")); !errors.Is(err, ErrTooManyWaiting) {
		t.Fatal(err)
	}
}

func TestPipelineAdapter(t *testing.T) {
	ctx := context.Background()
	m, _, clk := setup(t, Options{})
	p := ForPipeline(m)
	pr := pipeline.ApprovalRequest{Fingerprint: sha256.Sum256([]byte("p")), Agent: "a", Timeout: time.Minute}
	st, err := p.Submit(ctx, pr)
	if err != nil || st.State != pipeline.ApprovalWaiting {
		t.Fatalf("%+v %v", st, err)
	}
	clk.Advance(time.Minute)
	st, err = p.Wait(ctx, st.ID, time.Millisecond)
	if err != nil || st.State != pipeline.ApprovalDenied || st.Reason == "" {
		t.Fatalf("expired via adapter: %+v %v", st, err)
	}
	pr.Fingerprint = sha256.Sum256([]byte("q"))
	st, _ = p.Submit(ctx, pr)
	m.Approve(ctx, st.ID, "alice")
	if st, _ = p.Submit(ctx, pr); st.State != pipeline.ApprovalApproved {
		t.Fatalf("approved via adapter: %+v", st)
	}
}
