package fourmica

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"testing"
)

// FuzzDecodeClaims: the claims decoder never panics, every rejection is a *FieldError, and
// accepted claims re-encode to a fixed point that digests identically.
func FuzzDecodeClaims(f *testing.F) {
	for _, name := range []string{"claims-v1.json", "claims-v2.json"} {
		f.Add(claimsTestdata(f, name))
	}
	for _, v := range loadVectors(f).Vectors {
		m := map[string]any{}
		_ = json.Unmarshal(v.Input.Claims, &m)
		m["version"] = "v" + string(rune('0'+v.Input.Version))
		b, _ := json.Marshal(m)
		f.Add(b)
	}
	f.Add([]byte(`{"version":"v1","user_address":"0x0","amount":1e400}`))
	f.Add([]byte(`{"version":"v2"}`))
	d, _ := NewDomain("4mica", "1", 84532)
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := DecodeClaims(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		enc, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		c2, err := DecodeClaims(enc)
		if err != nil {
			t.Fatalf("re-decoding %s: %v", enc, err)
		}
		enc2, _ := json.Marshal(c2)
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("not a fixed point:\n%s\n%s", enc, enc2)
		}
		for _, s := range []Scheme{SchemeEIP712, SchemeEIP191} {
			h1, err1 := d.Digest(c, s)
			h2, err2 := d.Digest(c2, s)
			if err1 != nil || err2 != nil || h1 != h2 {
				t.Fatalf("digest differs after round trip")
			}
		}
	})
}

// FuzzDecodeRequest: the request body decoder never panics and round-trips.
func FuzzDecodeRequest(f *testing.F) {
	for _, name := range []string{"request-v1.json", "request-v2.json"} {
		f.Add(claimsTestdata(f, name))
	}
	f.Add([]byte(`{"claims":{"version":"v1"},"signature":"0x","scheme":"eip191"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeRequest(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		enc, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		r2, err := DecodeRequest(enc)
		if err != nil || r2.Signature != r.Signature || r2.Scheme != r.Scheme {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// FuzzParseRequirements: both requirement parsers never panic; a parsed answer always yields
// a 4mica-credit option from which claims and an envelope can be built without panics.
func FuzzParseRequirements(f *testing.F) {
	f.Add(claimsTestdata(f, "x402/v1-402.json"), false)
	f.Add(claimsTestdata(f, "x402/v2-payment-required.json"), true)
	f.Add([]byte(`{"x402Version":2,"accepts":[{"scheme":"4mica-credit","network":"eip155:1","amount":"0x1","asset":"0x0000000000000000000000000000000000000000","payTo":"0x0000000000000000000000000000000000000001","extra":{"tab_endpoint":"http://x/tab","validation_registry_address":"0x0000000000000000000000000000000000000001","validator_address":"0x0000000000000000000000000000000000000002","validator_agent_id":5,"min_validation_score":"0x64","job_hash":"0x0000000000000000000000000000000000000000000000000000000000000001","validation_chain_id":"1"}}]}`), true)
	req, err := DecodeRequest(claimsTestdata(f, "request-v1.json"))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte, v2 bool) {
		var pr *PaymentRequired
		var err error
		if v2 {
			pr, err = ParseRequirementsV2(base64.StdEncoding.EncodeToString(data))
		} else {
			pr, err = ParseRequirementsV1(data)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		r, err := pr.Select("")
		if err != nil {
			t.Fatalf("parsed answer without a selectable option: %v", err)
		}
		tab := TabInfo{TabID: U256FromUint64(1), User: samplePayer}
		if c, err := BuildClaims(pr, r, tab, samplePayer, sampleTimestamp); err == nil && c.Version == V2 {
			if err := c.V2.Check(0); err != nil {
				t.Fatalf("built non-canonical V2 claims: %v", err)
			}
		}
		if _, _, err := BuildEnvelope(pr, r, req); err != nil {
			t.Fatalf("envelope: %v", err)
		}
		_ = TabRequestBody(pr, r, samplePayer)
	})
}

// FuzzParseU256 compares ParseU256 with math/big on arbitrary strings.
func FuzzParseU256(f *testing.F) {
	for _, s := range []string{"0", "0x0", "0xff", "255", "0o17", "0b1", "-1", "0x", "1" + string(make([]byte, 80))} {
		f.Add(s)
	}
	limit := new(big.Int).Lsh(big.NewInt(1), 256)
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseU256(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		// Reference: ruint's rules (0x/0o/0b prefix, else decimal; no sign, no '_').
		base, digits := 10, s
		if len(s) > 2 && s[0] == '0' {
			switch s[1] {
			case 'x', 'X':
				base, digits = 16, s[2:]
			case 'o', 'O':
				base, digits = 8, s[2:]
			case 'b', 'B':
				base, digits = 2, s[2:]
			}
		}
		ref, ok := new(big.Int).SetString(digits, base)
		if !ok || digits[0] == '+' || digits[0] == '-' || ref.Cmp(limit) >= 0 {
			t.Fatalf("ParseU256 accepted %q, math/big (base %d) rejects it", s, base)
		}
		if u.Big().Cmp(ref) != 0 {
			t.Fatalf("%q → %s, math/big %s", s, u.Dec(), ref)
		}
		if v, err := ParseU256(u.Hex()); err != nil || v != u {
			t.Fatalf("hex round trip of %s", u.Hex())
		}
	})
}
