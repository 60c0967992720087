package policyengine

import (
	"math/big"
	"strings"
	"time"

	"github.com/ethereum/go-ethereum/common"
)

// Policy is a compiled, immutable spending policy. It is safe for concurrent use; swap policies by
// replacing the pointer. Its identity is Hash().
type Policy struct {
	hash    [32]byte
	maxSkew time.Duration

	agents    map[string]*agentDef
	agentList []*agentDef // sorted by name
	assets    map[string]*Asset
	assetByAd map[common.Address]*Asset

	denyRules  []*rule // sorted by id
	allowRules []*rule // sorted by id
	budgets    []*budget
	approvals  []*approval
	kill       KillSwitchConfig
	sources    []string
}

type agentDef struct {
	name      string
	callers   []callerMatch
	anyWallet bool
	wallets   []common.Address
	walletSet map[common.Address]struct{}
}

type callerMatch struct {
	uid, gid  *uint32
	user      string
	group     string
	exe       string
	exeSHA256 string
}

// hostPattern is an exact host, "*" (any host) or "*.suffix" (any subdomain, not the apex).
type hostPattern struct {
	any    bool
	exact  string
	suffix string // ".example.com" for "*.example.com"
}

type sellerSet struct {
	addrAnyHost map[common.Address]struct{}
	addrHosts   map[common.Address][]hostPattern
	hostExact   map[string]struct{}
	hostSuffix  map[string]struct{} // ".example.com" for "*.example.com"
	hostAny     bool
	src         []string // canonical entries, sorted, for the hash
}

// firstHost returns the first entry that involves a host ("api.x.example", "0x…@api.x.example"), or "".
func (s *sellerSet) firstHost() string {
	for _, e := range s.src {
		if i := strings.IndexByte(e, '@'); i >= 0 && i < len(e)-1 {
			return strings.TrimPrefix(e, "@")
		}
	}
	return ""
}

// denyAddrOnAnyHost makes a deny rule's {address, host: "*"} entries match the address with
// or without a host: "this address, whatever the host" must also block pay_tab (which has no
// host) and guarantees that name no host. Only deny rules widen this way; an allow rule's
// {address, host: "*"} still needs a host. src (the hash) is unchanged.
func (s *sellerSet) denyAddrOnAnyHost() {
	if s == nil {
		return
	}
	for a, hps := range s.addrHosts {
		for _, hp := range hps {
			if hp.any {
				s.addrAnyHost[a] = struct{}{}
			}
		}
	}
}

type selector struct {
	actions  actionSet           // the actions it applies to (never empty once compiled)
	agents   map[string]struct{} // nil = any
	sellers  *sellerSet          // nil = any
	networks map[string]struct{}
	chainIDs map[uint64]struct{}
	assets   map[common.Address]struct{}
	versions uint8 // bit (1<<v); 0 = any
	labels   [][2]string
}

type ruleEffect int

const (
	effectAllow ruleEffect = iota + 1
	effectDeny
)

type amountCap struct {
	asset *Asset // nil = any asset (base units)
	max   *big.Int
}

type v2Constraint struct {
	registries map[common.Address]struct{}
	validators map[common.Address]struct{}
	minScore   uint8
	tags       map[string]struct{}
}

type rule struct {
	id          string
	effect      ruleEffect
	description string
	sel         selector
	code        string // deny only
	maxAmount   []amountCap
	v2          *v2Constraint
}

type dim uint8

const (
	dimAgent dim = 1 << iota
	dimWallet
	dimSeller
	dimAsset
	dimTask
)

type budget struct {
	id          string
	description string
	sel         selector
	asset       *Asset // amount budgets written in token units apply to that asset only
	per         dim
	window      time.Duration
	limit       *big.Int
	count       bool
}

type approval struct {
	id          string
	description string
	sel         selector
	asset       *Asset
	threshold   *big.Int
	group       string
	timeout     time.Duration
}

// KillSwitchConfig is the compiled kill_switch.auto_trip section, for the daemon to enforce.
type KillSwitchConfig struct {
	// DenialBurst trips the switch after Count denials within Window (Count 0 = disabled).
	DenialBurst struct {
		Count  int
		Window time.Duration
	}
	// SpendVelocity trips the switch when the amount signed within Window exceeds Limit.
	SpendVelocity []SpendVelocity
}

// SpendVelocity is one spend-rate trip wire; Asset nil means base units of any asset summed.
type SpendVelocity struct {
	Asset  *Asset
	Limit  *big.Int
	Window time.Duration
}

// Hash is the SHA-256 of the policy's deterministic CBOR encoding: equal for policies with the
// same meaning (rule order and file layout do not matter).
func (p *Policy) Hash() [32]byte { return p.hash }

// MaxTimestampSkew is how far a claim timestamp may be from the appliance clock.
func (p *Policy) MaxTimestampSkew() time.Duration { return p.maxSkew }

// KillSwitch returns the compiled kill_switch.auto_trip configuration.
func (p *Policy) KillSwitch() KillSwitchConfig { return p.kill }

// Asset returns the declared asset with this symbol.
func (p *Policy) Asset(symbol string) (*Asset, bool) { a, ok := p.assets[symbol]; return a, ok }

// AssetByAddress returns the declared asset at this address.
func (p *Policy) AssetByAddress(a common.Address) (*Asset, bool) {
	x, ok := p.assetByAd[a]
	return x, ok
}

// ParseAmount parses "0.05 USDC" (declared asset) or a whole number of base units.
func (p *Policy) ParseAmount(s string) (*big.Int, *Asset, error) {
	a, err := parseAmount(s, p.assets)
	if err != nil {
		return nil, nil, err
	}
	return a.value, a.asset, nil
}

// Agents lists the agent names, sorted.
func (p *Policy) Agents() []string {
	out := make([]string, len(p.agentList))
	for i, a := range p.agentList {
		out[i] = a.name
	}
	return out
}

// Principal maps socket credentials to an agent. It fails (ok=false) when no agent or more than
// one agent matches: an ambiguous caller is an unknown caller.
func (p *Policy) Principal(c Caller) (agent string, ok bool) {
	found := ""
	for _, a := range p.agentList {
		for i := range a.callers {
			if a.callers[i].matches(&c) {
				if found != "" && found != a.name {
					return "", false
				}
				found = a.name
				break
			}
		}
	}
	return found, found != ""
}

func (m *callerMatch) matches(c *Caller) bool {
	if m.uid != nil && *m.uid != c.UID {
		return false
	}
	if m.gid != nil && *m.gid != c.GID {
		return false
	}
	if m.user != "" && m.user != c.User {
		return false
	}
	if m.group != "" && m.group != c.Group {
		in := false
		for _, g := range c.Groups {
			if g == m.group {
				in = true
				break
			}
		}
		if !in {
			return false
		}
	}
	if m.exe != "" && m.exe != c.Exe {
		return false
	}
	if m.exeSHA256 != "" && m.exeSHA256 != c.ExeSHA256 {
		return false
	}
	return true
}

// Wallets returns the wallets an agent may use, the first being its default. For an agent
// declared with `wallets: any` it returns CompileOptions.Wallets (the wallets the daemon holds).
func (p *Policy) Wallets(agent string) []common.Address {
	a := p.agents[agent]
	if a == nil {
		return nil
	}
	return append([]common.Address(nil), a.wallets...)
}

// WalletAllowed reports whether agent may use wallet, as Evaluate decides it (step 3): a
// wallet the agent lists, or any non-zero wallet for an agent declared `wallets: any` with no
// list. An unknown agent may use none.
func (p *Policy) WalletAllowed(agent string, wallet common.Address) bool {
	a := p.agents[agent]
	return a != nil && a.walletAllowed(wallet)
}

func (a *agentDef) walletAllowed(wallet common.Address) bool {
	if wallet == (common.Address{}) {
		return false
	}
	if a.anyWallet && len(a.walletSet) == 0 {
		return true
	}
	_, ok := a.walletSet[wallet]
	return ok
}

// AnyWallet reports whether the agent was declared with `wallets: any`.
func (p *Policy) AnyWallet(agent string) bool {
	a := p.agents[agent]
	return a != nil && a.anyWallet
}

// ApprovalInfo names one approval of the policy and the operator group that may decide it.
type ApprovalInfo struct {
	ID    string
	Group string
}

// Approvals lists the policy's approvals in compiled order.
func (p *Policy) Approvals() []ApprovalInfo {
	out := make([]ApprovalInfo, len(p.approvals))
	for i, a := range p.approvals {
		out[i] = ApprovalInfo{ID: a.id, Group: a.group}
	}
	return out
}

// Summary counts what the policy contains.
type Summary struct {
	Agents, Assets, AllowRules, DenyRules, Budgets, RateLimits, Approvals, Sellers int
	Files                                                                          []string
}

// Summary describes the policy's size.
func (p *Policy) Summary() Summary {
	s := Summary{Agents: len(p.agentList), Assets: len(p.assets), AllowRules: len(p.allowRules),
		DenyRules: len(p.denyRules), Approvals: len(p.approvals), Files: p.sources}
	for _, b := range p.budgets {
		if b.count {
			s.RateLimits++
		} else {
			s.Budgets++
		}
	}
	for _, r := range append(append([]*rule{}, p.allowRules...), p.denyRules...) {
		if r.sel.sellers != nil {
			s.Sellers += len(r.sel.sellers.src)
		}
	}
	return s
}
