package ledger

import (
	"context"
	"testing"
)

// TestSameClaimsOtherSchemeIsConflict: the same (wallet, tab_id, req_id) and claims under
// another scheme (so another digest) is a replay conflict in the ledger itself, audited as a
// denial, against a signed or a reserved record — never allow/replay_duplicate or replay_resume.
func TestSameClaimsOtherSchemeIsConflict(t *testing.T) {
	ctx := context.Background()
	other := func(r Reservation) Reservation { r.Digest[31] ^= 0xff; r.Scheme = "eip191"; return r }
	for _, tc := range []struct {
		name  string
		first func(l *Ledger, ctx context.Context, r Reservation) (Result, error)
		sign  bool
	}{
		{"signed", (*Ledger).Reserve, true},
		{"reserved", (*Ledger).Reserve, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := openTest(t, nil)
			first, err := tc.first(l, ctx, resv(1, 7, `{"c":1}`))
			if err != nil || first.Outcome != Reserved {
				t.Fatalf("first: %+v %v", first, err)
			}
			if tc.sign {
				if _, err := l.Commit(ctx, first.RecordID, sig65(1)); err != nil {
					t.Fatal(err)
				}
			}
			got, err := l.Reserve(ctx, other(resv(1, 7, `{"c":1}`)))
			if err != nil {
				t.Fatal(err)
			}
			if got.Outcome != Conflict {
				t.Fatalf("same claims, other scheme: outcome %v, want Conflict", got.Outcome)
			}
			same, err := l.Reserve(ctx, resv(1, 7, `{"c":1}`))
			if err != nil || same.Outcome == Conflict {
				t.Fatalf("identical request after the conflict: %+v %v", same, err)
			}
		})
	}
}
