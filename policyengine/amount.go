package policyengine

import (
	"fmt"
	"math/big"
	"strings"

	"github.com/ethereum/go-ethereum/common"
)

// maxUint256 bounds every amount: 4Mica amounts are uint256.
var maxUint256 = new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 256), big.NewInt(1))

// Asset is a token declared in the policy: symbol, address and decimals.
type Asset struct {
	Symbol   string
	Address  common.Address
	Decimals uint8
}

// amountSpec is a parsed amount: base units, and the asset it is bound to (nil = raw base units, any asset).
type amountSpec struct {
	value *big.Int
	asset *Asset
}

// parseDecimalUnits converts "0.05" with decimals d into base units, exactly (no floats).
func parseDecimalUnits(num string, decimals uint8) (*big.Int, error) {
	if num == "" {
		return nil, fmt.Errorf("empty amount")
	}
	intPart, frac, hasDot := strings.Cut(num, ".")
	if hasDot && frac == "" {
		return nil, fmt.Errorf("amount %q: missing digits after the point", num)
	}
	if intPart == "" {
		return nil, fmt.Errorf("amount %q: missing digits before the point", num)
	}
	for _, s := range []string{intPart, frac} {
		for _, r := range s {
			if r < '0' || r > '9' {
				return nil, fmt.Errorf("amount %q: only digits and one decimal point are allowed", num)
			}
		}
	}
	if len(frac) > int(decimals) {
		return nil, fmt.Errorf("amount %q has %d decimal places; the asset has %d", num, len(frac), decimals)
	}
	if len(intPart)+int(decimals) > 80 {
		return nil, fmt.Errorf("amount %q is too large", num)
	}
	digits := intPart + frac + strings.Repeat("0", int(decimals)-len(frac))
	v, ok := new(big.Int).SetString(digits, 10)
	if !ok {
		return nil, fmt.Errorf("amount %q is not a number", num)
	}
	if v.Cmp(maxUint256) > 0 {
		return nil, fmt.Errorf("amount %q exceeds uint256", num)
	}
	return v, nil
}

// parseAmount parses "0.05 USDC" (token units of a declared asset) or "1000000" (base units, any asset).
func parseAmount(s string, assets map[string]*Asset) (amountSpec, error) {
	f := strings.Fields(s)
	switch len(f) {
	case 1:
		if strings.Contains(f[0], ".") {
			return amountSpec{}, fmt.Errorf("amount %q: a decimal amount needs an asset symbol, e.g. %q", s, f[0]+" USDC")
		}
		v, err := parseDecimalUnits(f[0], 0)
		if err != nil {
			return amountSpec{}, err
		}
		return amountSpec{value: v}, nil
	case 2:
		a := assets[f[1]]
		if a == nil {
			return amountSpec{}, fmt.Errorf("amount %q: unknown asset %q (declare it under assets)", s, f[1])
		}
		v, err := parseDecimalUnits(f[0], a.Decimals)
		if err != nil {
			return amountSpec{}, err
		}
		return amountSpec{value: v, asset: a}, nil
	default:
		return amountSpec{}, fmt.Errorf("amount %q: write \"<number> <ASSET>\" or a whole number of base units", s)
	}
}

// FormatAmount renders base units as token units of asset a ("0.05 USDC"); with a nil asset, base units.
func FormatAmount(v *big.Int, a *Asset) string {
	if v == nil {
		return "<nil>"
	}
	if a == nil {
		return v.String() + " base units"
	}
	s := v.String()
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	d := int(a.Decimals)
	if d > 0 {
		if len(s) <= d {
			s = strings.Repeat("0", d-len(s)+1) + s
		}
		s = s[:len(s)-d] + "." + s[len(s)-d:]
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	if neg {
		s = "-" + s
	}
	return s + " " + a.Symbol
}
