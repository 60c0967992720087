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
func ParseBaseUnits(s string) (*big.Int, error) { return parseUint256(s, "amount") }

// parseUint256 parses decimal digits or 0x-hex up to 2^256-1; what names the field in errors.
func parseUint256(s, what string) (*big.Int, error) {
	base := 10
	digits := s
	if strings.HasPrefix(s, "0x") || strings.HasPrefix(s, "0X") {
		base, digits = 16, s[2:]
	}
	if digits == "" || len(digits) > 80 {
		return nil, fmt.Errorf("%s %q is not a base-unit integer", what, s)
	}
	for _, r := range digits {
		ok := (r >= '0' && r <= '9') || (base == 16 && ((r >= 'a' && r <= 'f') || (r >= 'A' && r <= 'F')))
		if !ok {
			return nil, fmt.Errorf("%s %q is not a base-unit integer", what, s)
		}
	}
	v, ok := new(big.Int).SetString(digits, base)
	if !ok || v.Cmp(maxUint256) > 0 {
		return nil, fmt.Errorf("%s %q is out of range", what, s)
	}
	return v, nil
}

// UnmarshalJSON decodes an intent; amount and tab_id may be a JSON integer, a decimal string or a
// 0x string (base units). action is a name (absent = guarantee). Unknown fields are errors.
func (in *Intent) UnmarshalJSON(b []byte) error {
	type plain Intent
	var aux struct {
		plain
		Amount json.RawMessage `json:"amount"`
		TabID  json.RawMessage `json:"tab_id"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&aux); err != nil {
		return err
	}
	*in = Intent(aux.plain)
	var err error
	if in.Amount, err = decodeUint256(aux.Amount, "amount"); err != nil {
		return err
	}
	if in.TabID, err = decodeUint256(aux.TabID, "tab_id"); err != nil {
		return err
	}
	return nil
}

// decodeUint256 decodes a JSON integer, decimal string or 0x string; absent or null is nil.
func decodeUint256(raw json.RawMessage, what string) (*big.Int, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	s := string(raw)
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, err
		}
	}
	return parseUint256(s, what)
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
