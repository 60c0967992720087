package fourmica

import (
	"errors"
	"math/big"
	"strings"
	"testing"

	"github.com/ethereum/go-ethereum/crypto"
)

func TestSignatureRules(t *testing.T) {
	key, _ := crypto.HexToECDSA(strings.Repeat("0", 63) + "7")
	user := Address(crypto.PubkeyToAddress(key.PublicKey))
	other := Address{1}
	digest := Hash(crypto.Keccak256Hash([]byte("digest")))
	raw, err := crypto.Sign(digest[:], key) // v in {0,1}, low s
	if err != nil {
		t.Fatal(err)
	}
	parity := raw[64]

	norm, err := NormalizeSignature(raw)
	if err != nil || norm[64] != 27+parity {
		t.Fatalf("normalize: %v v=%d", err, norm[64])
	}
	// High-s twin: s' = n - s, parity flipped. Core accepts it; Normalize restores the low form.
	high := append([]byte(nil), raw...)
	s := new(big.Int).SetBytes(raw[32:64])
	new(big.Int).Sub(secpN, s).FillBytes(high[32:64])
	high[64] = parity ^ 1

	cases := []struct {
		name string
		sig  []byte
		user Address
		want error
	}{
		{"v 0/1", raw, user, nil},
		{"v 27/28", norm[:], user, nil},
		{"eip155 v", withV(raw, 35+parity), user, nil},
		{"high s", high, user, nil},
		{"high s v 27/28", withV(high, 27+(parity^1)), user, nil},
		{"wrong parity", withV(raw, 27+(parity^1)), user, ErrSignatureMismatch},
		{"other user", norm[:], other, ErrSignatureMismatch},
		{"v 2", withV(raw, 2), user, ErrInvalid},
		{"v 29", withV(raw, 29), user, ErrInvalid},
		{"64 bytes", raw[:64], user, ErrInvalid},
		{"66 bytes", append(append([]byte(nil), raw...), 0), user, ErrInvalid},
		{"zero r", append(make([]byte, 32), raw[32:]...), user, ErrInvalid},
	}
	for _, tc := range cases {
		err := VerifySignature(digest, tc.sig, tc.user)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
	hn, err := NormalizeSignature(high)
	if err != nil || hn != norm {
		t.Fatalf("high-s normalised to %s, want %s (%v)", hn, norm, err)
	}
	if _, err := ParseSignature(norm.Hex()[2:]); err != nil {
		t.Fatalf("no 0x prefix: %v", err)
	}
}

func withV(sig []byte, v byte) []byte {
	out := append([]byte(nil), sig...)
	out[64] = v
	return out
}

func TestSignedRequest(t *testing.T) {
	d, _ := NewDomain("4mica", "1", 84532)
	c, err := DecodeClaims(claimsTestdata(t, "claims-v2.json"))
	if err != nil {
		t.Fatal(err)
	}
	key, _ := crypto.HexToECDSA(strings.Repeat("0", 63) + "2")
	digest, _ := d.Digest(c, SchemeEIP712)
	raw, _ := crypto.Sign(digest[:], key)
	r, err := d.SignedRequest(c, SchemeEIP712, raw)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := DecodeRequest(claimsTestdata(t, "request-v2.json"))
	if r.Signature != want.Signature {
		t.Fatalf("signature %s, want %s", r.Signature, want.Signature)
	}
	if _, err := d.SignedRequest(c, SchemeEIP191, raw); !errors.Is(err, ErrSignatureMismatch) {
		t.Fatalf("signature over another digest accepted: %v", err)
	}
	other, _ := NewDomain("4mica", "1", 1)
	if _, err := other.SignedRequest(c, SchemeEIP712, raw); !errors.Is(err, ErrInvalid) {
		t.Fatalf("V2 claims for another chain accepted: %v", err)
	}
}
