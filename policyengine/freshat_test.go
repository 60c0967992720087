package policyengine

import (
	"path/filepath"
	"testing"
	"time"
)

// TestEvaluateFreshAt: the freshness step uses the reference time the caller passes, every
// other step (and the windows) the evaluation time.
func TestEvaluateFreshAt(t *testing.T) {
	p := mustLoad(t, filepath.Join(testdataDir, "example.yaml"), CompileOptions{})
	ts := time.Unix(1767600000, 0)
	later := ts.Add(10 * time.Minute)
	if d := p.Evaluate(exampleIntent(), NewMemLedger(), later); d.Code != CodeStaleTimestamp {
		t.Fatalf("10 minutes later without a reference: %v, want stale_timestamp", d)
	}
	if d := p.EvaluateFreshAt(exampleIntent(), NewMemLedger(), later, ts.Add(time.Second)); d.Outcome != Allow {
		t.Fatalf("reference one second after the timestamp: %v, want allow", d)
	}
	if d := p.EvaluateFreshAt(exampleIntent(), NewMemLedger(), later, later); d.Code != CodeStaleTimestamp {
		t.Fatalf("reference = now: %v, want stale_timestamp", d)
	}
	if d := p.EvaluateFreshAt(exampleIntent(), NewMemLedger(), ts, ts.Add(-time.Hour)); d.Code != CodeStaleTimestamp {
		t.Fatalf("timestamp far after the reference: %v, want stale_timestamp", d)
	}
	if a, b := p.Evaluate(exampleIntent(), NewMemLedger(), ts), p.EvaluateFreshAt(exampleIntent(), NewMemLedger(), ts, ts); a.Outcome != b.Outcome || a.Code != b.Code || a.Rule != b.Rule {
		t.Fatalf("EvaluateFreshAt(now, now) %v differs from Evaluate %v", b, a)
	}
}
