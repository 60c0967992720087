package fourmica

import (
	"bytes"
	"encoding/hex"
	"math/big"
	"strconv"
	"strings"

	"github.com/ethereum/go-ethereum/crypto"
)

// Signature is a 65-byte Ethereum signature r(32) ‖ s(32) ‖ v(1).
type Signature [65]byte

var (
	secpN     = crypto.S256().Params().N
	secpHalfN = new(big.Int).Rsh(secpN, 1)
)

// ParseSignature decodes hex ("0x" optional, as Core prepends it when missing) and requires
// exactly 65 bytes. It does not check v or s; see NormalizeSignature and VerifySignature.
func ParseSignature(s string) (Signature, error) {
	var sig Signature
	h := s
	if strings.HasPrefix(h, "0x") || strings.HasPrefix(h, "0X") {
		h = h[2:]
	}
	if len(h)%2 != 0 {
		return sig, &FieldError{Field: "signature", Reason: "odd number of hex digits"}
	}
	raw, err := hex.DecodeString(h)
	if err != nil {
		return sig, &FieldError{Field: "signature", Reason: "not hex"}
	}
	if len(raw) != 65 {
		return sig, &FieldError{Field: "signature", Reason: "invalid signature length " + strconv.Itoa(len(raw)) + " (want 65)"}
	}
	copy(sig[:], raw)
	return sig, nil
}

// Hex returns "0x" + 130 lowercase hex chars.
func (s Signature) Hex() string { return "0x" + hex.EncodeToString(s[:]) }

// String returns the hex form (a signature is public, not key material).
func (s Signature) String() string { return s.Hex() }

// MarshalText emits the "0x" hex form.
func (s Signature) MarshalText() ([]byte, error) { return []byte(s.Hex()), nil }

// UnmarshalText parses hex (see ParseSignature).
func (s *Signature) UnmarshalText(b []byte) error {
	v, err := ParseSignature(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// parity maps v to the y-parity the way alloy's normalize_v does (Core): 0/1, 27/28, and
// EIP-155 values ≥ 35. Others are rejected.
func parity(v byte) (byte, bool) {
	switch {
	case v == 0 || v == 1:
		return v, true
	case v == 27 || v == 28:
		return v - 27, true
	case v >= 35:
		return (v - 35) & 1, true
	}
	return 0, false
}

// canonical returns sig as r ‖ low-s ‖ parity(0/1), the form go-ethereum recovery takes.
func canonical(sig []byte) ([65]byte, error) {
	var out [65]byte
	if len(sig) != 65 {
		return out, &FieldError{Field: "signature", Reason: "invalid signature length " + strconv.Itoa(len(sig)) + " (want 65)"}
	}
	p, ok := parity(sig[64])
	if !ok {
		return out, &FieldError{Field: "signature", Reason: "invalid v " + strconv.Itoa(int(sig[64]))}
	}
	copy(out[:64], sig[:64])
	r := new(big.Int).SetBytes(sig[:32])
	s := new(big.Int).SetBytes(sig[32:64])
	if r.Sign() == 0 || r.Cmp(secpN) >= 0 {
		return out, &FieldError{Field: "signature", Reason: "r out of range"}
	}
	if s.Sign() == 0 || s.Cmp(secpN) >= 0 {
		return out, &FieldError{Field: "signature", Reason: "s out of range"}
	}
	if s.Cmp(secpHalfN) > 0 {
		s.Sub(secpN, s)
		s.FillBytes(out[32:64])
		p ^= 1
	}
	out[64] = p
	return out, nil
}

// NormalizeSignature returns sig in the form the SDKs emit: low s (flipping the recovery id
// when s is negated) and v = 27/28. It accepts v 0/1, 27/28 or ≥35 and rejects other lengths.
func NormalizeSignature(sig []byte) (Signature, error) {
	c, err := canonical(sig)
	if err != nil {
		return Signature{}, err
	}
	c[64] += 27
	return Signature(c), nil
}

// RecoverSigner recovers the address that signed digest, following Core's rules (65 bytes;
// v 0/1/27/28/≥35; high s normalised before recovery).
func RecoverSigner(digest Hash, sig []byte) (Address, error) {
	c, err := canonical(sig)
	if err != nil {
		return Address{}, err
	}
	pub, err := crypto.SigToPub(digest[:], c[:])
	if err != nil {
		return Address{}, &FieldError{Field: "signature", Reason: "recovery failed"}
	}
	return Address(crypto.PubkeyToAddress(*pub)), nil
}

// VerifySignature checks sig over digest recovers to user, as Core does. A malformed signature
// is a *FieldError (ErrInvalid); a well-formed one for another address is ErrSignatureMismatch.
func VerifySignature(digest Hash, sig []byte, user Address) error {
	got, err := RecoverSigner(digest, sig)
	if err != nil {
		return err
	}
	if !bytes.Equal(got[:], user[:]) {
		return ErrSignatureMismatch
	}
	return nil
}

// VerifyRequest computes the digest of r under domain d and verifies r's signature against the
// claims' user_address. It returns the digest. V2 claims must also pass Check(d.ChainID()).
func (d *Domain) VerifyRequest(r *Request) (Hash, error) {
	if err := r.Claims.valid(); err != nil {
		return Hash{}, prefixField("claims", err)
	}
	if r.Claims.Version == V2 {
		if err := r.Claims.V2.Check(d.chainID); err != nil {
			return Hash{}, prefixField("claims", err)
		}
	}
	digest, err := d.Digest(r.Claims, r.Scheme)
	if err != nil {
		return Hash{}, err
	}
	return digest, VerifySignature(digest, r.Signature[:], r.Claims.Payment().User)
}

// SignedRequest is the last step of signing: it normalises sig (low s, v 27/28), checks that it
// recovers to the claims' user over the digest of c under d and scheme (V2 claims must also pass
// Check(d.ChainID())), and returns the Core-ready request. A signature that does not verify is
// never returned.
func (d *Domain) SignedRequest(c Claims, scheme Scheme, sig []byte) (*Request, error) {
	norm, err := NormalizeSignature(sig)
	if err != nil {
		return nil, err
	}
	r := &Request{Claims: c, Signature: norm, Scheme: scheme}
	if _, err := d.VerifyRequest(r); err != nil {
		return nil, err
	}
	return r, nil
}
