package audit

import (
	"bytes"
	"strings"
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

// FuzzParseAnchor: arbitrary anchor text never panics the parser, and whatever parses comes
// back unchanged through the short form and the head line signerctl prints.
func FuzzParseAnchor(f *testing.F) {
	h := "0x00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
	for _, s := range []string{"12:" + h, "seq=12 hash=" + h + " time=2026-11-21T12:00:07Z", `{"seq":12,"hash":"` + h + `"}`,
		"0:0x" + strings.Repeat("0", 64), "seq=1 seq=2", "12:0x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAnchor(s)
		if err != nil {
			return
		}
		for _, form := range []string{a.String(), HeadInfo{Seq: a.Seq, Hash: a.Hash}.Line()} {
			if b, err := ParseAnchor(form); err != nil || b != a {
				t.Fatalf("%q parsed to %v, its form %q to %v (%v)", s, a, form, b, err)
			}
		}
	})
}
