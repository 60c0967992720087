package audit

import (
	"bytes"
	"testing"
)

// FuzzDecode: arbitrary stored bytes never panic the decoder, and whatever decodes is exactly
// the canonical encoding of the record it decodes to (so a record has one byte form, one hash).
func FuzzDecode(f *testing.F) {
	r := Record{Seq: 3, Time: t0.UnixNano(), Prev: make([]byte, 32), Event: Event{Kind: KindDecision,
		Decision: "allow", RecordID: 9, Charges: []Charge{{Key: "k", Window: 60, Amount: "5", Bucket: -2}},
		Attrs: map[string]string{"a": "b"}, Signature: make([]byte, 65)}}
	b, _ := Encode(&r)
	f.Add(b)
	f.Add([]byte{0xa0})
	f.Add([]byte{0xbf, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := Decode(3, data)
		if err != nil {
			return
		}
		again, err := Encode(&got)
		if err != nil || !bytes.Equal(again, data) {
			t.Fatalf("decoded a non-canonical form: %x → %x (%v)", data, again, err)
		}
	})
}
