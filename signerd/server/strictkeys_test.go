package server

import (
	"testing"
)

// TestCheckKeys: duplicate keys at any depth and case variants of struct fields are rejected,
// naming the field; exact, unique keys pass.
func TestCheckKeys(t *testing.T) {
	for _, tc := range []struct {
		body  string
		field string // "" = accepted
	}{
		{`{"claims":{"a":1},"scheme":"eip712","task":{"id":"x","labels":{"k":"v","K":"w"}}}`, ""},
		{`{"claims":{},"Claims":{}}`, "Claims"},
		{`{"claims":{},"claims":{}}`, "claims"},
		{`{"CLAIMS":{}}`, "CLAIMS"},
		{`{"\u0063laims":{},"claims":{}}`, "claims"},
		{`{"\u0043laims":{}}`, "Claims"},
		{`{"claims":{"amount":"1","amount":"2"}}`, "claims.amount"},
		{`{"task":{"id":"x","ID":"y"}}`, "task.ID"},
		{`{"task":{"labels":{"k":"v","k":"w"}}}`, "task.labels.k"},
		{`{"claims":{"x":[{"a":1,"a":2}]}}`, "claims.x.a"},
		{`{"claims":{"s":"\"}{\\\"","t":"a,b:c"},"scheme":"eip191"}`, ""},
		{`{"wallet":null,"task":null}`, ""},
	} {
		var dst guaranteeRequest
		e := checkKeys([]byte(tc.body), &dst)
		switch {
		case tc.field == "" && e != nil:
			t.Errorf("%s: rejected %s: %s", tc.body, e.Field, e.Reason)
		case tc.field != "" && e == nil:
			t.Errorf("%s: accepted, want field %s rejected", tc.body, tc.field)
		case tc.field != "" && e.Field != tc.field:
			t.Errorf("%s: rejected field %q, want %q", tc.body, e.Field, tc.field)
		}
	}
	// Many keys (past the small-object path) still find the duplicate.
	b := []byte(`{"claims":{`)
	for i := range 40 {
		b = append(b, `"k`...)
		b = append(b, byte('a'+i%26), byte('a'+i/26))
		b = append(b, `":1,`...)
	}
	b = append(b, `"kaa":2}}`...)
	var dst guaranteeRequest
	if e := checkKeys(b, &dst); e == nil || e.Field != "claims.kaa" {
		t.Fatalf("duplicate after 40 keys: %v", e)
	}
}

func BenchmarkCheckKeys(b *testing.B) {
	body := []byte(`{"claims":{"version":"v1","user_address":"0x1234567890123456789012345678901234567890","recipient_address":"0x1234567890123456789012345678901234567890","tab_id":"0x61","req_id":"0x1","amount":"0x3e8","asset_address":"0x036cbd53842c5426634e7929541ec2318f3dcf7e","timestamp":1767600000},"task":{"id":"t","labels":{"a":"b"}}}`)
	b.ReportAllocs()
	for b.Loop() {
		var dst guaranteeRequest
		if e := checkKeys(body, &dst); e != nil {
			b.Fatal(e)
		}
	}
}
