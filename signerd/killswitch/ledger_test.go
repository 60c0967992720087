package killswitch

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/ledger"
)

// TestDurableWithRealLedger: the switch's state survives closing and reopening a real ledger
// file, and each change is in the verified audit chain.
func TestDurableWithRealLedger(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ledger.db")
	open := func() *ledger.Ledger {
		l, err := ledger.Open(ledger.Options{Path: path})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	l := open()
	s := mustNew(t, Options{Store: l, RequireSecondOperator: true})
	if err := s.Engage(ctx, "alice", "incident 42"); err != nil {
		t.Fatal(err)
	}
	if res, err := s.Resume(ctx, "alice"); err != nil || res.Pending == nil {
		t.Fatalf("%+v %v", res, err)
	}
	l.Close()

	l = open()
	s = mustNew(t, Options{Store: l, RequireSecondOperator: true})
	st := s.Status()
	if !st.Engaged || st.Reason != "incident 42" || st.PendingResume == nil || st.PendingResume.By != "alice" {
		t.Fatalf("after reopen: %+v", st)
	}
	if res, err := s.Resume(ctx, "bob"); err != nil || !res.Resumed {
		t.Fatalf("%+v %v", res, err)
	}
	l.Close()

	l = open()
	defer l.Close()
	if s = mustNew(t, Options{Store: l}); s.Engaged() {
		t.Fatal("engaged after resume and reopen")
	}
	rep, err := l.VerifyAudit()
	if err != nil || !rep.OK {
		t.Fatalf("audit verify: %+v %v", rep, err)
	}
	var actions []string
	for seq := uint64(1); seq <= rep.HeadSeq; seq++ {
		r, ok, err := l.AuditRecord(seq)
		if err != nil || !ok {
			t.Fatal(seq, ok, err)
		}
		if r.Event.Kind == audit.KindKillSwitch {
			actions = append(actions, r.Event.Attrs["action"]+"/"+r.Event.Operator)
		}
	}
	want := []string{"engaged/alice", "resume_requested/alice", "resumed/bob"}
	if len(actions) != len(want) {
		t.Fatalf("audit actions %v, want %v", actions, want)
	}
	for i := range want {
		if actions[i] != want[i] {
			t.Fatalf("audit actions %v, want %v", actions, want)
		}
	}
}
