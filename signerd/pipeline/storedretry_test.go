package pipeline_test

import (
	"bytes"
	"context"
	"math/big"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ethereum/go-ethereum/common"

	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/ledger"
)

// TestStoredRetryHandsOutSignatureBeforeDurable: a signature is recorded without an fsync of
// its own (RecordSignature) and readers see it at once. An identical retry the policy denies
// (budget/rate/stale) is answered from the ledger (ResumeOnly): the stored signature must not
// be handed out until a sync that began after the signature was applied has completed.
func TestStoredRetryHandsOutSignatureBeforeDurable(t *testing.T) {
	early := 0
	const rounds = 40
	f := newFixture(t, intentMode)
	f.p.SetPolicy(denyBudget{allowPolicy{wallet: f.signer.Address(), limit: 1 << 40}})
	admDeny, _ := f.p.Admit(policyengine.Caller{UID: 1000})
	f.p.SetPolicy(allowPolicy{wallet: f.signer.Address(), limit: 1 << 40})
	ctx := context.Background()
	for i := 1; i <= rounds; i++ {
		req := uint64(i)
		var stop atomic.Bool
		got := make(chan bool, 1)
		go func() {
			for !stop.Load() {
				rec, _ := f.p.Lookup(f.signer.Address(), big.NewInt(9), new(big.Int).SetUint64(req))
				if rec == nil || rec.Status != ledger.StatusSigned {
					continue
				}
				seen := f.l.Stats().Syncs // completed syncs when the signature was first visible
				r, err := f.p.Sign(ctx, admDeny, f.request(req, 1))
				if err != nil {
					got <- false
					return
				}
				before := f.l.Stats().Syncs == seen // no sync completed since
				r.Done()
				got <- before
				return
			}
			got <- false
		}()
		res, err := f.p.Sign(ctx, f.adm, f.request(req, 1))
		if err != nil {
			t.Fatal(err)
		}
		res.Done()
		stop.Store(true)
		if <-got {
			early++
		}
	}
	if early > 0 {
		t.Fatalf("%d of %d retries were given the stored signature before any sync after it had completed", early, rounds)
	}
}

// TestStoredRetryIsNotAudited: the stored-signature answer to a policy-denied retry is
// a decision that lets a signature out, but nothing is written to the audit log for it (the
// ledger's Duplicate path writes an allow/replay_duplicate record).
func TestStoredRetryIsNotAudited(t *testing.T) {
	f := newFixture(t, intentMode)
	ctx := context.Background()
	res, err := f.p.Sign(ctx, f.adm, f.request(1, 60))
	if err != nil {
		t.Fatal(err)
	}
	res.Done()
	seq0, _, _ := f.l.AuditHead()
	f.p.SetPolicy(denyBudget{allowPolicy{wallet: f.signer.Address(), limit: 100}})
	adm, _ := f.p.Admit(policyengine.Caller{UID: 1000})
	r, err := f.p.Sign(ctx, adm, f.request(1, 60))
	if err != nil || r.Signature != res.Signature {
		t.Fatalf("retry: %v", err)
	}
	r.Done()
	// Flush anything queued asynchronously.
	if _, err := f.l.AppendAudit(ctx, auditMarker()); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := f.l.ExportAudit(&buf, seq0+1); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), ledger.CodeReplayDuplicate) {
		t.Fatalf("no audit record for the signature handed out to the retry; audit after it:\n%s", buf.String())
	}
}

var _ = common.Address{}

func auditMarker() audit.Event {
	return audit.Event{Kind: audit.KindPolicyReload, Reason: "review2 marker"}
}
