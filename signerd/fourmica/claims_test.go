package fourmica

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/ethereum/go-ethereum/crypto"
)

func TestBadInputsNameTheField(t *testing.T) {
	var file struct {
		Cases []struct {
			Name   string                     `json:"name"`
			Base   string                     `json:"base"`
			Set    map[string]json.RawMessage `json:"set"`
			Delete []string                   `json:"delete"`
			Raw    *string                    `json:"raw"`
			Field  string                     `json:"field"`
		} `json:"cases"`
	}
	if err := json.Unmarshal(claimsTestdata(t, "bad-claims.json"), &file); err != nil {
		t.Fatal(err)
	}
	if len(file.Cases) < 30 {
		t.Fatalf("only %d cases", len(file.Cases))
	}
	for _, tc := range file.Cases {
		t.Run(tc.Name, func(t *testing.T) {
			var input []byte
			if tc.Raw != nil {
				input = []byte(*tc.Raw)
			} else {
				var obj map[string]json.RawMessage
				if err := json.Unmarshal(claimsTestdata(t, tc.Base), &obj); err != nil {
					t.Fatal(err)
				}
				for k, v := range tc.Set {
					obj[k] = v
				}
				for _, k := range tc.Delete {
					delete(obj, k)
				}
				input, _ = json.Marshal(obj)
			}
			var err error
			if strings.HasPrefix(tc.Base, "request") {
				_, err = DecodeRequest(input)
			} else {
				_, err = DecodeClaims(input)
			}
			if err == nil {
				t.Fatalf("accepted %s", input)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not match ErrInvalid", err)
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tc.Field {
				t.Fatalf("error %q names field %q, want %q", err, fe.Field, tc.Field)
			}
		})
	}
}

// The sample files decode, re-encode byte for byte (compacted), and the requests verify.
func TestSampleTestdata(t *testing.T) {
	d, err := NewDomain("4mica", "1", 84532)
	if err != nil {
		t.Fatal(err)
	}
	key, err := crypto.HexToECDSA(strings.Repeat("0", 63) + "2")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"v1", "v2"} {
		raw := claimsTestdata(t, "claims-"+v+".json")
		c, err := DecodeClaims(raw)
		if err != nil {
			t.Fatal(err)
		}
		if c.Version.String() != v {
			t.Fatalf("version %s", c.Version)
		}
		out, _ := json.Marshal(c)
		var want bytes.Buffer
		_ = json.Compact(&want, raw)
		if !bytes.Equal(out, want.Bytes()) {
			t.Fatalf("re-encoded\n%s\nwant\n%s", out, want.Bytes())
		}
		reqRaw := claimsTestdata(t, "request-"+v+".json")
		req, err := DecodeRequest(reqRaw)
		if err != nil {
			t.Fatal(err)
		}
		digest, err := d.VerifyRequest(req)
		if err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		// The body is exactly what signing the sample claims with key 0x…02 produces.
		sigRaw, _ := crypto.Sign(digest[:], key)
		sig, _ := NormalizeSignature(sigRaw)
		body, _ := json.Marshal(Request{Claims: c, Signature: sig, Scheme: SchemeEIP712})
		want.Reset()
		_ = json.Compact(&want, reqRaw)
		if !bytes.Equal(body, want.Bytes()) {
			t.Fatalf("signed body\n%s\nwant\n%s", body, want.Bytes())
		}
	}
}

func TestU256Forms(t *testing.T) {
	max := "0xffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
	for _, tc := range []struct{ in, want string }{
		{`"0x0"`, "0x0"}, {`"0x000"`, "0x0"}, {`0`, "0x0"}, {`"0"`, "0x0"},
		{`"0x01"`, "0x1"}, {`"0xABCdef"`, "0xabcdef"}, {`255`, "0xff"}, {`"255"`, "0xff"},
		{`18446744073709551615`, "0xffffffffffffffff"}, {`"0o17"`, "0xf"}, {`"0b101"`, "0x5"},
		{`"115792089237316195423570985008687907853269984665640564039457584007913129639935"`, max},
		{`"` + max + `"`, max},
		{`"57896044618658097711785492504343953926634992332820282019728792003956564819968"`, "0x8" + strings.Repeat("0", 63)},
	} {
		var u U256
		if err := json.Unmarshal([]byte(tc.in), &u); err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if u.Hex() != tc.want {
			t.Errorf("%s → %s, want %s", tc.in, u.Hex(), tc.want)
		}
		out, _ := json.Marshal(u)
		if string(out) != `"`+tc.want+`"` {
			t.Errorf("marshal %s", out)
		}
	}
	for _, bad := range []string{`""`, `"0x"`, `" 1"`, `"1 "`, `"+1"`, `"-0"`, `1e3`, `1.0`, `-1`, `null`, `true`, `"0x1_0"`, `"１"`} {
		var u U256
		if err := json.Unmarshal([]byte(bad), &u); err == nil {
			t.Errorf("%s accepted as %s", bad, u.Hex())
		}
	}
}

func TestAddressCase(t *testing.T) {
	for _, in := range []string{
		"0x2B5AD5c4795c026514f8317c7a215E218DcCD6cF", "0x2b5ad5c4795c026514f8317c7a215e218dccd6cf",
		"0X2B5AD5C4795C026514F8317C7A215E218DCCD6CF", "2b5ad5c4795c026514f8317c7a215e218dccd6cf",
	} {
		a, err := ParseAddress(in)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if a.Hex() != "0x2b5ad5c4795c026514f8317c7a215e218dccd6cf" {
			t.Fatalf("%s → %s", in, a.Hex())
		}
	}
}

func TestClaimsUnionMisuse(t *testing.T) {
	d, _ := NewDomain("4mica", "1", 1)
	if _, err := d.Digest(Claims{}, SchemeEIP712); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty union: %v", err)
	}
	if _, err := d.Digest(Claims{Version: V2, V1: &ClaimsV1{}}, SchemeEIP712); !errors.Is(err, ErrInvalid) {
		t.Fatalf("mismatched union: %v", err)
	}
	if _, err := d.DigestV1(&ClaimsV1{}, "eip-712"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("unknown scheme: %v", err)
	}
	if _, err := json.Marshal(Claims{}); err == nil {
		t.Fatal("empty union marshalled")
	}
	if _, err := NewDomain("4mica", "1", 0); !errors.Is(err, ErrInvalid) {
		t.Fatal("chain id 0 accepted")
	}
}

func TestV2ChainIDCheck(t *testing.T) {
	c, err := DecodeClaims(claimsTestdata(t, "claims-v2.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.V2.Check(84532); err != nil {
		t.Fatal(err)
	}
	var fe *FieldError
	if err := c.V2.Check(1); !errors.As(err, &fe) || fe.Field != "validation_chain_id" {
		t.Fatalf("chain id mismatch: %v", err)
	}
}

// Digests do not allocate (a deterministic property; timing is left to the benchmarks).
func TestDigestAllocs(t *testing.T) {
	d, _ := NewDomain("4mica", "1", 84532)
	c1, _ := DecodeClaims(claimsTestdata(t, "claims-v1.json"))
	c2, _ := DecodeClaims(claimsTestdata(t, "claims-v2.json"))
	for _, c := range []Claims{c1, c2} {
		for _, s := range []Scheme{SchemeEIP712, SchemeEIP191} {
			if n := testing.AllocsPerRun(200, func() { _, _ = d.Digest(c, s) }); n != 0 {
				t.Errorf("%s %s digest: %v allocs", c.Version, s, n)
			}
		}
	}
}

// Pooled hashers are safe under concurrent use (run with -race).
func TestConcurrentDigests(t *testing.T) {
	d, _ := NewDomain("4mica", "1", 84532)
	g := newClaimGen(7)
	cs := make([]Claims, 64)
	want := make([]Hash, len(cs))
	for i := range cs {
		if i%2 == 0 {
			cs[i] = ClaimsOfV1(g.v1(^uint64(0)))
		} else {
			cs[i] = ClaimsOfV2(g.v2(84532, ^uint64(0)))
		}
		want[i], _ = d.Digest(cs[i], SchemeEIP712)
	}
	done := make(chan error, 8)
	for w := 0; w < 8; w++ {
		go func(w int) {
			for k := 0; k < 200; k++ {
				i := (w*31 + k) % len(cs)
				if h, _ := d.Digest(cs[i], SchemeEIP712); h != want[i] {
					done <- errors.New("concurrent digest differs")
					return
				}
			}
			done <- nil
		}(w)
	}
	for w := 0; w < 8; w++ {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

func TestInvalidUTF8Rejected(t *testing.T) {
	raw := claimsTestdata(t, "claims-v2.json")
	bad := bytes.Replace(raw, []byte("hard-finality"), []byte("hard-\xff"), 1)
	var fe *FieldError
	if _, err := DecodeClaims(bad); !errors.As(err, &fe) || fe.Field != "claims" {
		t.Fatalf("invalid UTF-8 input: %v", err)
	}
	c, err := DecodeClaims(raw)
	if err != nil {
		t.Fatal(err)
	}
	c.V2.RequiredValidationTag = "hard-\xff"
	c.V2.Fill()
	if err := c.V2.Check(0); !errors.As(err, &fe) || fe.Field != "required_validation_tag" {
		t.Fatalf("invalid UTF-8 tag: %v", err)
	}
}

func TestInvalidUTF8TagNotDigestedOrEncoded(t *testing.T) {
	c, _ := DecodeClaims(claimsTestdata(t, "claims-v2.json"))
	c.V2.RequiredValidationTag = "\xc3"
	d, _ := NewDomain("4mica", "1", 84532)
	if _, err := d.Digest(c, SchemeEIP712); !errors.Is(err, ErrInvalid) {
		t.Fatalf("digest: %v", err)
	}
	if _, err := json.Marshal(c); err == nil {
		t.Fatal("marshalled invalid UTF-8 tag")
	}
}
