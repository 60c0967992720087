package fourmica

import (
	"bytes"
	"encoding/hex"
	"encoding/json"

	"math/big"
	"strconv"
	"strings"
)

// Address is a 20-byte Ethereum address. JSON: accepted as hex in any case with or without
// "0x"; emitted as lowercase "0x" hex (Core stores addresses lowercased).
type Address [20]byte

// Hash is a 32-byte value (bytes32, digests). JSON: "0x" + 64 hex chars in any case ("0x"
// optional on input); emitted lowercase.
type Hash [32]byte

// U256 is a Solidity uint256 stored as 32 big-endian bytes, so it encodes into an ABI word by
// copying. JSON: accepted as a "0x"/"0o"/"0b"-prefixed string, a decimal string or a JSON
// integer (u64 range, as serde_json gives Core); emitted as minimal lowercase "0x" hex.
type U256 [32]byte

// ParseAddress parses a 20-byte hex address (any case, "0x" optional).
func ParseAddress(s string) (Address, error) {
	var a Address
	if err := decodeFixedHex(a[:], s); err != "" {
		return a, &FieldError{Field: "address", Reason: err}
	}
	return a, nil
}

// Hex returns the lowercase "0x" form.
func (a Address) Hex() string { return "0x" + hex.EncodeToString(a[:]) }

// String returns the lowercase "0x" form.
func (a Address) String() string { return a.Hex() }

// IsZero reports whether a is the zero address (ETH as an asset).
func (a Address) IsZero() bool { return a == Address{} }

// MarshalText emits lowercase "0x" hex.
func (a Address) MarshalText() ([]byte, error) { return []byte(a.Hex()), nil }

// UnmarshalText accepts hex in any case, "0x" optional.
func (a *Address) UnmarshalText(b []byte) error {
	v, err := ParseAddress(string(b))
	if err != nil {
		return err
	}
	*a = v
	return nil
}

// ParseHash parses a 32-byte hex value (any case, "0x" optional).
func ParseHash(s string) (Hash, error) {
	var h Hash
	if err := decodeFixedHex(h[:], s); err != "" {
		return h, &FieldError{Field: "hash", Reason: err}
	}
	return h, nil
}

// Hex returns the lowercase "0x" form.
func (h Hash) Hex() string { return "0x" + hex.EncodeToString(h[:]) }

// String returns the lowercase "0x" form.
func (h Hash) String() string { return h.Hex() }

// IsZero reports whether h is all zero bytes.
func (h Hash) IsZero() bool { return h == Hash{} }

// MarshalText emits lowercase "0x" hex.
func (h Hash) MarshalText() ([]byte, error) { return []byte(h.Hex()), nil }

// UnmarshalText accepts hex in any case, "0x" optional.
func (h *Hash) UnmarshalText(b []byte) error {
	v, err := ParseHash(string(b))
	if err != nil {
		return err
	}
	*h = v
	return nil
}

func decodeFixedHex(dst []byte, s string) string {
	if strings.HasPrefix(s, "0x") || strings.HasPrefix(s, "0X") {
		s = s[2:]
	}
	if len(s) != 2*len(dst) {
		return "want " + strconv.Itoa(len(dst)) + " bytes as hex, got " + strconv.Itoa(len(s)) + " hex chars"
	}
	if _, err := hex.Decode(dst, []byte(s)); err != nil {
		return "not hex"
	}
	return ""
}

var (
	bigTwo256 = new(big.Int).Lsh(big.NewInt(1), 256)
)

// U256FromUint64 returns v as a U256.
func U256FromUint64(v uint64) U256 {
	var u U256
	for i := 0; i < 8; i++ {
		u[31-i] = byte(v >> (8 * i))
	}
	return u
}

// U256FromBig converts a non-negative big.Int below 2^256.
func U256FromBig(b *big.Int) (U256, error) {
	var u U256
	if b == nil || b.Sign() < 0 {
		return u, &FieldError{Field: "uint256", Reason: "negative"}
	}
	if b.Cmp(bigTwo256) >= 0 {
		return u, &FieldError{Field: "uint256", Reason: "above 2^256-1"}
	}
	b.FillBytes(u[:])
	return u, nil
}

// ParseU256 parses "0x…" hex, "0o…" octal, "0b…" binary or a decimal string, like Core's
// ruint parser. Values above 2^256−1, signs, blanks and empty digits are rejected.
func ParseU256(s string) (U256, error) {
	base, digits := 10, s
	if len(s) >= 2 && s[0] == '0' {
		switch s[1] {
		case 'x', 'X':
			base, digits = 16, s[2:]
		case 'o', 'O':
			base, digits = 8, s[2:]
		case 'b', 'B':
			base, digits = 2, s[2:]
		}
	}
	if digits == "" {
		return U256{}, &FieldError{Field: "uint256", Reason: "no digits"}
	}
	for i := 0; i < len(digits); i++ {
		c := digits[i]
		ok := false
		switch base {
		case 16:
			ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
		case 10:
			ok = c >= '0' && c <= '9'
		case 8:
			ok = c >= '0' && c <= '7'
		case 2:
			ok = c == '0' || c == '1'
		}
		if !ok {
			if c == '-' {
				return U256{}, &FieldError{Field: "uint256", Reason: "negative"}
			}
			return U256{}, &FieldError{Field: "uint256", Reason: "invalid digit " + strconv.QuoteRune(rune(c))}
		}
	}
	b, ok := new(big.Int).SetString(digits, base)
	if !ok {
		return U256{}, &FieldError{Field: "uint256", Reason: "not a number"}
	}
	return U256FromBig(b)
}

// MustU256 is ParseU256 that panics; for constants in tests and examples.
func MustU256(s string) U256 {
	u, err := ParseU256(s)
	if err != nil {
		panic(err)
	}
	return u
}

// Big returns u as a new big.Int.
func (u U256) Big() *big.Int { return new(big.Int).SetBytes(u[:]) }

// IsZero reports whether u == 0.
func (u U256) IsZero() bool { return u == U256{} }

// Cmp compares u and v (-1, 0, +1).
func (u U256) Cmp(v U256) int { return bytes.Compare(u[:], v[:]) }

// Uint64 returns u and whether it fits in 64 bits.
func (u U256) Uint64() (uint64, bool) {
	for _, b := range u[:24] {
		if b != 0 {
			return 0, false
		}
	}
	var v uint64
	for _, b := range u[24:] {
		v = v<<8 | uint64(b)
	}
	return v, true
}

// Hex returns the minimal lowercase "0x" hex form ("0x0" for zero), as Core serializes U256.
func (u U256) Hex() string {
	return string(u.appendHex(make([]byte, 0, 66)))
}

func (u U256) appendHex(dst []byte) []byte {
	const digits = "0123456789abcdef"
	dst = append(dst, '0', 'x')
	started := false
	for _, b := range u[:] {
		for _, n := range [2]byte{b >> 4, b & 15} {
			if n == 0 && !started {
				continue
			}
			started = true
			dst = append(dst, digits[n])
		}
	}
	if !started {
		dst = append(dst, '0')
	}
	return dst
}

// String returns the minimal "0x" hex form.
func (u U256) String() string { return u.Hex() }

// Dec returns the decimal form.
func (u U256) Dec() string { return u.Big().String() }

// MarshalJSON emits a JSON string with the minimal "0x" hex form.
func (u U256) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 68)
	b = append(b, '"')
	b = u.appendHex(b)
	return append(b, '"'), nil
}

// UnmarshalJSON accepts a string (hex/octal/binary/decimal) or a JSON integer in u64 range.
func (u *U256) UnmarshalJSON(b []byte) error {
	v, err := u256FromJSON(b)
	if err != nil {
		return err
	}
	*u = v
	return nil
}

func u256FromJSON(b []byte) (U256, error) {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return U256{}, &FieldError{Field: "uint256", Reason: "bad JSON string"}
		}
		return ParseU256(s)
	}
	n, err := u64FromJSON(b)
	if err != nil {
		return U256{}, err
	}
	return U256FromUint64(n), nil
}

// u64FromJSON accepts only a JSON integer literal in [0, 2^64-1] (serde_json u64).
func u64FromJSON(b []byte) (uint64, error) {
	b = bytes.TrimSpace(b)
	s := string(b)
	if s == "" || s == "null" {
		return 0, &FieldError{Field: "uint", Reason: "missing"}
	}
	if s[0] == '"' {
		return 0, &FieldError{Field: "uint", Reason: "must be a JSON number, not a string"}
	}
	if s[0] == '-' {
		return 0, &FieldError{Field: "uint", Reason: "negative"}
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, &FieldError{Field: "uint", Reason: "not an unsigned integer"}
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, &FieldError{Field: "uint", Reason: "above 2^64-1"}
	}
	return n, nil
}

// Bytes returns a copy of h as a slice.
func (h Hash) Bytes() []byte { return append([]byte(nil), h[:]...) }
