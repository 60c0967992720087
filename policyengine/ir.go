package policyengine

import (
	"math/big"
	"sort"
	"strings"

	"github.com/ethereum/go-ethereum/common"
	"github.com/fxamacker/cbor/v2"
)

// The IR is the canonical, order-free form of a compiled policy that Hash covers: every set is a
// sorted list, every amount is in base units, every address is lowercase hex. Changing how a
// policy is written (order, files, symbols vs addresses) without changing its meaning keeps the hash.

type irSelector struct {
	// Actions is omitted when it is the default for the kind (guarantee only; for a deny rule,
	// implicitDenyActions), so policies written before actions existed keep their hash.
	Actions  []string    `cbor:"actions,omitempty"`
	Agents   []string    `cbor:"agents,omitempty"`
	Sellers  []string    `cbor:"sellers,omitempty"`
	Networks []string    `cbor:"networks,omitempty"`
	ChainIDs []uint64    `cbor:"chain_ids,omitempty"`
	Assets   []string    `cbor:"assets,omitempty"`
	Versions uint8       `cbor:"versions,omitempty"`
	Labels   [][2]string `cbor:"labels,omitempty"`
	AnyOf    []string    `cbor:"unconstrained,omitempty"` // which selector fields are `any`/absent
}

type irAsset struct {
	Symbol   string `cbor:"symbol"`
	Address  string `cbor:"address"`
	Decimals uint8  `cbor:"decimals"`
}

type irCaller struct {
	UID       *uint32 `cbor:"uid,omitempty"`
	GID       *uint32 `cbor:"gid,omitempty"`
	User      string  `cbor:"user,omitempty"`
	Group     string  `cbor:"group,omitempty"`
	Exe       string  `cbor:"exe,omitempty"`
	ExeSHA256 string  `cbor:"exe_sha256,omitempty"`
}

type irAgent struct {
	Name      string     `cbor:"name"`
	Callers   []irCaller `cbor:"callers"`
	AnyWallet bool       `cbor:"any_wallet"`
	Wallets   []string   `cbor:"wallets"`
}

type irCap struct {
	Asset string `cbor:"asset"` // "" = any
	Max   []byte `cbor:"max"`
}

type irV2 struct {
	Registries []string `cbor:"registries,omitempty"`
	Validators []string `cbor:"validators,omitempty"`
	MinScore   uint8    `cbor:"min_score"`
	Tags       []string `cbor:"tags,omitempty"`
	AnyTags    bool     `cbor:"any_tags"`
}

type irRule struct {
	ID        string     `cbor:"id"`
	Effect    string     `cbor:"effect"`
	Code      string     `cbor:"code,omitempty"`
	Sel       irSelector `cbor:"sel"`
	MaxAmount []irCap    `cbor:"max_amount,omitempty"`
	V2        *irV2      `cbor:"v2,omitempty"`
}

type irBudget struct {
	ID     string     `cbor:"id"`
	Sel    irSelector `cbor:"sel"`
	Asset  string     `cbor:"asset,omitempty"`
	Per    uint8      `cbor:"per"`
	Window int64      `cbor:"window_s"`
	Limit  []byte     `cbor:"limit"`
	Count  bool       `cbor:"count"`
}

type irApproval struct {
	ID        string     `cbor:"id"`
	Sel       irSelector `cbor:"sel"`
	Asset     string     `cbor:"asset,omitempty"`
	Threshold []byte     `cbor:"threshold"`
	Group     string     `cbor:"group"`
	Timeout   int64      `cbor:"timeout_s"`
}

type irKill struct {
	DenialCount  int       `cbor:"denial_count"`
	DenialWindow int64     `cbor:"denial_window_s"`
	Spend        []irSpend `cbor:"spend,omitempty"`
}

type irSpend struct {
	Asset   string `cbor:"asset"`
	Limit   []byte `cbor:"limit"`
	WindowS int64  `cbor:"window_s"`
}

type irPolicy struct {
	Format    string       `cbor:"format"`
	MaxSkew   int64        `cbor:"max_skew_s"`
	Assets    []irAsset    `cbor:"assets"`
	Agents    []irAgent    `cbor:"agents"`
	Rules     []irRule     `cbor:"rules"`
	Budgets   []irBudget   `cbor:"budgets"`
	Approvals []irApproval `cbor:"approvals"`
	Kill      irKill       `cbor:"kill"`
}

func hexAddr(a common.Address) string { return strings.ToLower(a.Hex()) }

func sortedKeys[K comparable](m map[K]struct{}, f func(K) string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, f(k))
	}
	sort.Strings(out)
	return out
}

// irSel encodes a selector; def is the kind's default action set (not encoded).
func irSel(s *selector, def actionSet) irSelector {
	var o irSelector
	if s.actions != def {
		o.Actions = s.actions.names()
	}
	if s.agents != nil {
		o.Agents = sortedKeys(s.agents, func(k string) string { return k })
	} else {
		o.AnyOf = append(o.AnyOf, "agents")
	}
	if s.sellers != nil {
		o.Sellers = s.sellers.src
	} else {
		o.AnyOf = append(o.AnyOf, "sellers")
	}
	if s.networks != nil {
		o.Networks = sortedKeys(s.networks, func(k string) string { return k })
	} else {
		o.AnyOf = append(o.AnyOf, "networks")
	}
	if s.chainIDs != nil {
		for k := range s.chainIDs {
			o.ChainIDs = append(o.ChainIDs, k)
		}
		sort.Slice(o.ChainIDs, func(i, j int) bool { return o.ChainIDs[i] < o.ChainIDs[j] })
	} else {
		o.AnyOf = append(o.AnyOf, "chain_ids")
	}
	if s.assets != nil {
		o.Assets = sortedKeys(s.assets, hexAddr)
	} else {
		o.AnyOf = append(o.AnyOf, "assets")
	}
	o.Versions = s.versions
	o.Labels = s.labels
	return o
}

func assetAddr(a *Asset) string {
	if a == nil {
		return ""
	}
	return hexAddr(a.Address)
}

func encodeIR(p *Policy) ([]byte, error) {
	ir := irPolicy{Format: "signerd-policy-ir/1", MaxSkew: int64(p.maxSkew.Seconds())}
	syms := make([]string, 0, len(p.assets))
	for s := range p.assets {
		syms = append(syms, s)
	}
	sort.Strings(syms)
	for _, s := range syms {
		a := p.assets[s]
		ir.Assets = append(ir.Assets, irAsset{a.Symbol, hexAddr(a.Address), a.Decimals})
	}
	for _, a := range p.agentList {
		ia := irAgent{Name: a.name, AnyWallet: a.anyWallet}
		for _, w := range a.wallets {
			ia.Wallets = append(ia.Wallets, hexAddr(w)) // order kept: the first is the default
		}
		for _, cm := range a.callers {
			ia.Callers = append(ia.Callers, irCaller{cm.uid, cm.gid, cm.user, cm.group, cm.exe, cm.exeSHA256})
		}
		ir.Agents = append(ir.Agents, ia)
	}
	for _, rs := range [][]*rule{p.allowRules, p.denyRules} {
		for _, r := range rs {
			x := irRule{ID: r.id, Effect: "allow", Code: r.code, Sel: irSel(&r.sel, setGuarantee)}
			if r.effect == effectDeny {
				x.Effect = "deny"
				x.Sel = irSel(&r.sel, implicitDenyActions(&r.sel))
			}
			for _, c := range r.maxAmount {
				x.MaxAmount = append(x.MaxAmount, irCap{assetAddr(c.asset), c.max.Bytes()})
			}
			sort.Slice(x.MaxAmount, func(i, j int) bool { return x.MaxAmount[i].Asset < x.MaxAmount[j].Asset })
			if r.v2 != nil {
				x.V2 = &irV2{Registries: sortedKeys(r.v2.registries, hexAddr), Validators: sortedKeys(r.v2.validators, hexAddr),
					MinScore: r.v2.minScore, Tags: sortedKeys(r.v2.tags, func(k string) string { return k }), AnyTags: r.v2.tags == nil}
			}
			ir.Rules = append(ir.Rules, x)
		}
	}
	sort.Slice(ir.Rules, func(i, j int) bool { return ir.Rules[i].ID < ir.Rules[j].ID })
	for _, b := range p.budgets {
		ir.Budgets = append(ir.Budgets, irBudget{b.id, irSel(&b.sel, setGuarantee), assetAddr(b.asset), uint8(b.per), int64(b.window.Seconds()), b.limit.Bytes(), b.count})
	}
	for _, a := range p.approvals {
		ir.Approvals = append(ir.Approvals, irApproval{a.id, irSel(&a.sel, setGuarantee), assetAddr(a.asset), a.threshold.Bytes(), a.group, int64(a.timeout.Seconds())})
	}
	ir.Kill.DenialCount = p.kill.DenialBurst.Count
	ir.Kill.DenialWindow = int64(p.kill.DenialBurst.Window.Seconds())
	for _, s := range p.kill.SpendVelocity {
		ir.Kill.Spend = append(ir.Kill.Spend, irSpend{assetAddr(s.Asset), s.Limit.Bytes(), int64(s.Window.Seconds())})
	}
	sort.Slice(ir.Kill.Spend, func(i, j int) bool {
		a, b := ir.Kill.Spend[i], ir.Kill.Spend[j]
		if a.Asset != b.Asset {
			return a.Asset < b.Asset
		}
		if a.WindowS != b.WindowS {
			return a.WindowS < b.WindowS
		}
		return new(big.Int).SetBytes(a.Limit).Cmp(new(big.Int).SetBytes(b.Limit)) < 0
	})
	em, err := cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		return nil, err
	}
	return em.Marshal(ir)
}
