package e2e

import (
	"maps"
	"math/big"
	"strings"
	"testing"
)

// retryPossiblySigned: every record left reserved after the restart is an intent whose
// signature may have left before the kill. For each: other claims for its key are refused
// (409 replay_conflict), and a retry with the same claims (and task labels) answers 200 with a
// signature by the wallet over the recorded digest under the same record id; the budget usage
// is the same before and after both (no second charge). The re-signed answers join the
// received signatures that later restarts check.
func retryPossiblySigned(t *testing.T, e *env, v crashView, load *crashLoad, kill int, tally *crashTally) {
	t.Helper()
	c := e.agentClient()
	defer c.close()
	for _, r := range v.recs {
		if r.Status != "reserved" {
			continue
		}
		cl := load.claimsFor(t, r, kill)
		before := readUsage(t, e)
		refuseConflict(t, c, r, cl, kill)
		tally.conflicts++
		g := resignSameClaims(t, c, r, cl, kill)
		if after := readUsage(t, e); !maps.Equal(before, after) {
			t.Fatalf("kill %d: retrying possibly-signed record %s changed the budget usage (a second charge?)\nbefore %v\nafter  %v",
				kill, r.ID, before, after)
		}
		load.receive(cl, g)
		tally.retried++
	}
}

// claimsFor returns the claims a client sent for record r's key whose digest is r's digest.
func (l *crashLoad) claimsFor(t *testing.T, r record, kill int) claims {
	t.Helper()
	k := keyOf(r.TabID, r.ReqID)
	for _, cl := range l.sent[k] {
		d, err := digestOf(cl)
		if err != nil {
			t.Fatalf("digest of %v: %v", cl, err)
		}
		if strings.EqualFold(d, r.Digest) {
			return cl
		}
	}
	t.Fatalf("kill %d: record %s is reserved with digest %s, which no client sent for key %s", kill, r.ID, r.Digest, k)
	return nil
}

// refuseConflict sends other claims (amount + 1, no task labels: no capped budget in the way)
// for r's key and expects 409 replay_conflict.
func refuseConflict(t *testing.T, c *client, r record, cl claims, kill int) {
	t.Helper()
	other := cl.with("amount", new(big.Int).Add(amountOf(cl["amount"].(string)), big.NewInt(1)).String())
	st, _, ae, err := sign(c, other, nil)
	if err != nil || st != 409 || ae.Code != "replay_conflict" {
		t.Fatalf("kill %d: other claims for the key of possibly-signed record %s: %d %s (%s) %v, want 409 replay_conflict",
			kill, r.ID, st, ae.Code, ae.Reason, err)
	}
}

// resignSameClaims retries r with the claims cl (and r's task labels) and expects 200: the same
// record id, the recorded digest, a signature that recovers to the wallet over it.
func resignSameClaims(t *testing.T, c *client, r record, cl claims, kill int) guarantee {
	t.Helper()
	var labels map[string]string
	if strings.HasPrefix(r.TaskID, "capped-") {
		labels = cappedLabels(r.TaskID)
	}
	st, g, ae, err := sign(c, cl, labels)
	if err != nil || st != 200 {
		t.Fatalf("kill %d: retry of possibly-signed record %s (task %q) with the same claims: %d %s (%s) %v, want 200",
			kill, r.ID, r.TaskID, st, ae.Code, ae.Reason, err)
	}
	if g.RecordID != r.ID || !strings.EqualFold(g.Digest, r.Digest) {
		t.Fatalf("kill %d: retry of possibly-signed record %s answered record %s digest %s, want record %s digest %s",
			kill, r.ID, g.RecordID, g.Digest, r.ID, r.Digest)
	}
	verifyGuarantee(t, g)
	if err := signedByWallet(r.Digest, g.Signature); err != nil {
		t.Fatalf("kill %d: retry of record %s: signature does not recover to the wallet over the recorded digest: %v", kill, r.ID, err)
	}
	return g
}
