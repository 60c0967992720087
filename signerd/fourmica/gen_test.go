package fourmica

import (
	"math/rand/v2"
	"strings"
)

// claimGen produces random claims biased towards edge values.
type claimGen struct{ r *rand.Rand }

func newClaimGen(seed uint64) *claimGen {
	return &claimGen{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

var (
	edgeU256 = []U256{
		{}, U256FromUint64(1), U256FromUint64(2),
		MustU256("0x8000000000000000000000000000000000000000000000000000000000000000"), // 2^255
		MustU256("0xffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"), // 2^256-1
		MustU256("0x10000000000000000"), // 2^64
		MustU256("0xffffffffffffffff"),
	}
	edgeTags = []string{
		"", "hard-finality", "ünïcødé ✓ 支払い保証 🚀", strings.Repeat("x", 31), strings.Repeat("y", 32),
		strings.Repeat("z", 33), strings.Repeat("long tag ", 40), "tag with \"quotes\" and \\ and <html>&",
		strings.Repeat("€", 100),
	}
)

const maxSafeInt = 1<<53 - 1 // JavaScript clients (the oracle) cannot go above this

func (g *claimGen) u256() U256 {
	if g.r.IntN(3) == 0 {
		return edgeU256[g.r.IntN(len(edgeU256))]
	}
	var u U256
	n := 1 + g.r.IntN(32) // random byte length
	for i := 32 - n; i < 32; i++ {
		u[i] = byte(g.r.UintN(256))
	}
	return u
}

func (g *claimGen) address() Address {
	var a Address
	switch g.r.IntN(5) {
	case 0: // zero (ETH)
	case 1:
		for i := range a {
			a[i] = 0xff
		}
	default:
		for i := range a {
			a[i] = byte(g.r.UintN(256))
		}
	}
	return a
}

func (g *claimGen) hash() Hash {
	var h Hash
	for i := range h {
		h[i] = byte(g.r.UintN(256))
	}
	if g.r.IntN(8) == 0 {
		h = Hash{31: 1}
	}
	return h
}

// u53 returns a value in [1, 2^53] with edge values (2^53 itself is exact in JavaScript).
func (g *claimGen) u53() uint64 {
	switch g.r.IntN(4) {
	case 0:
		return []uint64{1, 2, 84532, 11155111, 8453, maxSafeInt, 1 << 53, 1 << 32}[g.r.IntN(8)]
	default:
		return 1 + g.r.Uint64N(maxSafeInt)
	}
}

func (g *claimGen) tag() string {
	if g.r.IntN(2) == 0 {
		return edgeTags[g.r.IntN(len(edgeTags))]
	}
	var b strings.Builder
	n := g.r.IntN(120)
	for i := 0; i < n; i++ {
		switch g.r.IntN(6) {
		case 0:
			b.WriteRune(rune(0x4e00 + g.r.IntN(0x5000))) // CJK
		case 1:
			b.WriteRune(rune(0x1f300 + g.r.IntN(0x200))) // emoji
		default:
			b.WriteByte(byte(0x20 + g.r.IntN(0x5f)))
		}
	}
	return b.String()
}

func (g *claimGen) v1(timestampMax uint64) *ClaimsV1 {
	return &ClaimsV1{
		User: g.address(), Recipient: g.address(), TabID: g.u256(), ReqID: g.u256(),
		Amount: g.u256(), Asset: g.address(), Timestamp: g.r.Uint64N(timestampMax),
	}
}

// v2 returns V2 claims with canonical validation hashes for the given chain id.
func (g *claimGen) v2(chainID, timestampMax uint64) *ClaimsV2 {
	c := &ClaimsV2{
		ClaimsV1:           *g.v1(timestampMax),
		ValidationRegistry: g.address(), ValidationChainID: chainID, Validator: g.address(),
		ValidatorAgentID: g.u256(), MinValidationScore: uint8(1 + g.r.IntN(100)),
		JobHash: g.hash(), RequiredValidationTag: g.tag(),
	}
	c.Fill()
	return c
}

// domain returns a random domain (name case, version, chain id up to 2^53).
func (g *claimGen) domain() *Domain {
	names := []string{"4mica", "4Mica", "4MICA", "x", "4mica ✓"}
	versions := []string{"1", "2", "1.0"}
	d, err := NewDomain(names[g.r.IntN(len(names))], versions[g.r.IntN(len(versions))], g.u53())
	if err != nil {
		panic(err)
	}
	return d
}
