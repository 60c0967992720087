package server_test

import (
	"bytes"
	"encoding/json"
	"testing"
)

// TestReviewDuplicateKeysRejected: the request decoder is documented as strict (unknown fields,
// duplicate CBOR map keys rejected), but encoding/json matches field names case-insensitively
// and keeps the last duplicate, so a body with two "claims" members ("claims" and "Claims") is
// accepted and the second one is signed. Anything in front of the daemon (an agent-side guard,
// a logging proxy) that reads the first member sees other claims than those signed.
func TestReviewDuplicateKeysRejected(t *testing.T) {
	d := startDaemon(t, nil)
	first, _ := json.Marshal(d.claims(0x71, 1, 1, nil))
	second, _ := json.Marshal(d.claims(0x71, 1, 400_000, nil))
	for _, body := range []string{
		`{"claims":` + string(first) + `,"Claims":` + string(second) + `}`,
		`{"claims":` + string(first) + `,"claims":` + string(second) + `}`,
	} {
		r := d.agent.do(t, "POST", "/v1/guarantees", []byte(body))
		if r.Status != 400 {
			amount := ""
			if r.Status == 200 {
				amount = d.checkSigned(t, r).Claims.Payment().Amount.Dec()
			}
			t.Errorf("body with two claims members: %d (signed amount %q), want 400 invalid_request", r.Status, amount)
		}
	}
}

// TestClaimsCaseVariantsRejected: inside claims, keys are matched exactly (fourmica's decoder
// reads exact keys and rejects duplicates; the daemon rejects any key that is not a Core claim
// field), so a case variant next to the real field is refused, not silently ignored.
func TestClaimsCaseVariantsRejected(t *testing.T) {
	d := startDaemon(t, nil)
	for _, tc := range []struct{ key, field string }{
		{"Amount", "claims.Amount"},
		{"AMOUNT", "claims.AMOUNT"},
		{"amount", "claims.amount"}, // exact duplicate
	} {
		good, _ := json.Marshal(d.claims(0x72, 1, 1, nil))
		body := `{"claims":` + string(good[:len(good)-1]) + `,"` + tc.key + `":"400000"}}`
		r := d.agent.do(t, "POST", "/v1/guarantees", []byte(body))
		if r.Status != 400 || r.errCode() != "invalid_request" {
			t.Errorf("claims with %q beside amount: %d %s, want 400 invalid_request", tc.key, r.Status, r.Raw)
		}
		if !bytes.Contains(r.Raw, []byte(tc.field)) {
			t.Errorf("claims with %q: the answer does not name %s: %s", tc.key, tc.field, r.Raw)
		}
	}
}
