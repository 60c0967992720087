package policyengine

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
	"strings"
)

// maxIntentBytes bounds an intent document.
const maxIntentBytes = 64 << 10

// ParseBaseUnits parses a non-negative integer amount: decimal digits or 0x-hex.
func ParseBaseUnits(s string) (*big.Int, error) {
	base := 10
	digits := s
	if strings.HasPrefix(s, "0x") || strings.HasPrefix(s, "0X") {
		base, digits = 16, s[2:]
	}
	if digits == "" || len(digits) > 80 {
		return nil, fmt.Errorf("amount %q is not a base-unit integer", s)
	}
	for _, r := range digits {
		ok := (r >= '0' && r <= '9') || (base == 16 && ((r >= 'a' && r <= 'f') || (r >= 'A' && r <= 'F')))
		if !ok {
			return nil, fmt.Errorf("amount %q is not a base-unit integer", s)
		}
	}
	v, ok := new(big.Int).SetString(digits, base)
	if !ok || v.Cmp(maxUint256) > 0 {
		return nil, fmt.Errorf("amount %q is out of range", s)
	}
	return v, nil
}

// UnmarshalJSON decodes an intent; amount may be a JSON integer, a decimal string or a 0x string
// (base units). Unknown fields are errors.
func (in *Intent) UnmarshalJSON(b []byte) error {
	type plain Intent
	var aux struct {
		plain
		Amount json.RawMessage `json:"amount"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&aux); err != nil {
		return err
	}
	*in = Intent(aux.plain)
	in.Amount = nil
	raw := bytes.TrimSpace(aux.Amount)
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	s := string(raw)
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return err
		}
	}
	v, err := ParseBaseUnits(s)
	if err != nil {
		return err
	}
	in.Amount = v
	return nil
}

// DecodeIntent decodes one JSON intent (the `explain` file format). It rejects unknown fields,
// trailing data and documents over 64 KiB; a missing amount is an error.
func DecodeIntent(data []byte) (*Intent, error) {
	if len(data) > maxIntentBytes {
		return nil, fmt.Errorf("intent larger than %d bytes", maxIntentBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var in Intent
	if err := dec.Decode(&in); err != nil {
		return nil, fmt.Errorf("intent: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("intent: trailing data")
	}
	if in.Amount == nil {
		return nil, fmt.Errorf("intent: amount missing")
	}
	return &in, nil
}
