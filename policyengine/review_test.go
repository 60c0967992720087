package policyengine

import (
	"errors"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
)

// Adversarial review of the policy actions: attempts to get a non-guarantee action allowed (or
// not counted, or not denied) by a policy that did not mean it. Each case states the decision
// a security reviewer expects.

// reviewPolicy: one agent with a guarantee rule, a pay_tab rule, a deposit rule (USDC and ETH at
// address 0), deny rules written several ways, a guarantee budget and a pay_tab budget.
const reviewPolicy = `version: 1
assets:
  USDC: {address: "0x036CbD53842c5426634e7929541eC2318f3dCF7e", decimals: 6}
  ETH:  {address: "0x0000000000000000000000000000000000000000", decimals: 18}
agents:
  a:
    callers: [{uid: 1}]
    wallets: ["0x00000000000000000000000000000000000000f1"]
rules:
  - {id: g, effect: allow, agents: [a], sellers: any, networks: [eip155:84532], assets: [USDC], max_amount: "5 USDC"}
  - id: tabs
    effect: allow
    actions: [pay_tab]
    agents: [a]
    sellers: ["0x00000000000000000000000000000000000000aa", "0x00000000000000000000000000000000000000bb", "0x00000000000000000000000000000000000000cc"]
    networks: [eip155:84532]
    assets: [USDC, ETH]
    max_amount: ["20 USDC", "0.01 ETH"]
  - {id: dep, effect: allow, actions: [deposit], agents: [a], networks: any, assets: [USDC, ETH], max_amount: ["100 USDC", "0.05 ETH"]}
  # "this address, on any host": must also block pay_tab (no host) and host-less guarantees.
  - {id: deny-bb-any-host, effect: deny, sellers: [{address: "0x00000000000000000000000000000000000000bb", host: "*"}]}
  # a plain address: guarantees and pay_tab.
  - {id: deny-cc, effect: deny, sellers: ["0x00000000000000000000000000000000000000cc"]}
  # a deny on the ETH alias: every action in ETH.
  - {id: deny-eth-mainnet, effect: deny, assets: [ETH], chain_ids: [1]}
  - {id: deny-mainnet, effect: deny, networks: [eip155:1]}
budgets:
  - {id: g-daily, per: [agent], window: day, limit: "10 USDC"}
  - {id: tabs-daily, actions: [pay_tab], per: [agent], window: day, limit: "30 USDC"}
approvals:
  - {id: big-g, at_or_above: "4 USDC", group: fin, timeout: 5m}
`

var (
	rvWallet = common.HexToAddress("0xf1")
	rvUSDC   = common.HexToAddress("0x036CbD53842c5426634e7929541eC2318f3dCF7e")
	rvNow    = time.Unix(1767600000, 0)
)

func rvCompile(t *testing.T, src string) *Policy {
	t.Helper()
	p, err := Compile(map[string][]byte{"p.yaml": []byte(src)}, CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func rvIntent(act Action) *Intent {
	in := &Intent{Agent: "a", Action: act, Wallet: rvWallet, Network: "eip155:84532", ChainID: 84532, Asset: rvUSDC,
		Amount: big.NewInt(1_000_000), Timestamp: uint64(rvNow.Unix())}
	switch act {
	case ActionGuarantee:
		in.Version, in.PayTo = 1, common.HexToAddress("0xaa")
	case ActionPayTab:
		in.PayTo, in.TabID = common.HexToAddress("0xaa"), big.NewInt(7)
	case ActionCancelWithdrawal, ActionFinalizeWithdrawal:
		in.Amount = nil
	}
	return in
}

// Decisions an attacker (or a careless policy author) would like to be different.
func TestReviewActionDecisions(t *testing.T) {
	p := rvCompile(t, reviewPolicy)
	maxU := new(big.Int).Sub(new(big.Int).Lsh(bigOne, 256), bigOne)
	for _, tc := range []struct {
		name string
		act  Action
		mut  func(*Intent)
		out  Outcome
		code string
		rule string
	}{
		{"pay_tab to a listed recipient", ActionPayTab, nil, Allow, "", "tabs"},
		{"pay_tab to an unlisted recipient", ActionPayTab, func(in *Intent) { in.PayTo = common.HexToAddress("0xdd") }, Deny, CodeSellerNotAllowed, "tabs"},
		{"pay_tab to a recipient denied by address", ActionPayTab, func(in *Intent) { in.PayTo = common.HexToAddress("0xcc") }, Deny, CodeSellerNotAllowed, "deny-cc"},
		{"pay_tab to a recipient denied as {address, host: *}", ActionPayTab, func(in *Intent) { in.PayTo = common.HexToAddress("0xbb") }, Deny, CodeSellerNotAllowed, "deny-bb-any-host"},
		{"host-less guarantee to {address, host: *}", ActionGuarantee, func(in *Intent) { in.PayTo = common.HexToAddress("0xbb") }, Deny, CodeSellerNotAllowed, "deny-bb-any-host"},
		{"guarantee to {address, host: *} with a host", ActionGuarantee, func(in *Intent) { in.PayTo, in.Host = common.HexToAddress("0xbb"), "api.x.example" }, Deny, CodeSellerNotAllowed, "deny-bb-any-host"},
		{"pay_tab over the rule's max", ActionPayTab, func(in *Intent) { in.Amount = big.NewInt(20_000_001) }, Deny, CodeAmountOverLimit, "tabs"},
		{"pay_tab of max uint256", ActionPayTab, func(in *Intent) { in.Amount = maxU }, Deny, CodeAmountOverLimit, "tabs"},
		{"pay_tab over uint256", ActionPayTab, func(in *Intent) { in.Amount = new(big.Int).Add(maxU, bigOne) }, Deny, CodeInvalidIntent, "intent"},
		{"pay_tab with a negative amount", ActionPayTab, func(in *Intent) { in.Amount = big.NewInt(-1) }, Deny, CodeInvalidIntent, "intent"},
		{"pay_tab with a negative tab id", ActionPayTab, func(in *Intent) { in.TabID = big.NewInt(-7) }, Deny, CodeInvalidIntent, "intent"},
		{"guarantee with a negative tab id", ActionGuarantee, func(in *Intent) { in.TabID = big.NewInt(-7) }, Deny, CodeInvalidIntent, "intent"},
		{"pay_tab in ETH (address 0) under its cap", ActionPayTab, func(in *Intent) { in.Asset, in.Amount = common.Address{}, big.NewInt(1e16) }, Allow, "", "tabs"},
		{"pay_tab in ETH over its cap", ActionPayTab, func(in *Intent) { in.Asset, in.Amount = common.Address{}, big.NewInt(1e16+1) }, Deny, CodeAmountOverLimit, "tabs"},
		{"pay_tab in an unlisted token", ActionPayTab, func(in *Intent) { in.Asset = common.HexToAddress("0xee") }, Deny, CodeAssetNotAllowed, "tabs"},
		{"deposit ETH under the ETH cap", ActionDeposit, func(in *Intent) { in.Asset, in.Amount = common.Address{}, big.NewInt(5e16) }, Allow, "", "dep"},
		{"deposit ETH over the ETH cap (USDC cap must not apply)", ActionDeposit, func(in *Intent) { in.Asset, in.Amount = common.Address{}, big.NewInt(5e16+1) }, Deny, CodeAmountOverLimit, "dep"},
		{"deposit of a token the rule lists no cap for", ActionDeposit, func(in *Intent) { in.Asset = common.HexToAddress("0xee") }, Deny, CodeAssetNotAllowed, "dep"},
		{"deposit of max uint256", ActionDeposit, func(in *Intent) { in.Amount = maxU }, Deny, CodeAmountOverLimit, "dep"},
		{"deposit of 0", ActionDeposit, func(in *Intent) { in.Amount = big.NewInt(0) }, Deny, CodeInvalidIntent, "intent"},
		{"ETH deposit on mainnet denied by the ETH alias + chain id", ActionDeposit, func(in *Intent) { in.Asset, in.Network, in.ChainID = common.Address{}, "eip155:1", 1 }, Deny, CodeNetworkNotAllowed, "deny-eth-mainnet"},
		{"deposit of USDC on mainnet denied by network", ActionDeposit, func(in *Intent) { in.Network, in.ChainID = "eip155:1", 1 }, Deny, CodeNetworkNotAllowed, "deny-mainnet"},
		{"withdraw on mainnet denied by network (no allow rule either)", ActionWithdraw, func(in *Intent) { in.Network, in.ChainID = "eip155:1", 1 }, Deny, CodeNetworkNotAllowed, "deny-mainnet"},
		{"deposit with a CAIP-2 network that hides the chain id", ActionDeposit, func(in *Intent) { in.Network = "eip155:1" }, Deny, CodeInvalidIntent, "intent"},
		{"withdraw: no rule allows it", ActionWithdraw, nil, Deny, CodeActionNotAllowed, "dep"},
		{"finalize: no rule allows it", ActionFinalizeWithdrawal, nil, Deny, CodeActionNotAllowed, "dep"},
		{"an undeclared action", Action(6), nil, Deny, CodeInvalidIntent, "intent"},
		{"an undeclared action 255", Action(255), nil, Deny, CodeInvalidIntent, "intent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := rvIntent(tc.act)
			if tc.mut != nil {
				tc.mut(in)
			}
			d := p.Evaluate(in, NewMemLedger(), rvNow)
			if d.Outcome != tc.out || d.Code != tc.code || (tc.rule != "" && d.Rule != tc.rule) {
				t.Fatalf("got %v, want %v %s (rule %s)", d, tc.out, tc.code, tc.rule)
			}
		})
	}
}

// The deny on {address, host: "*"} in the table above needs a deny-rule fix; an allow rule
// written the same way must NOT start allowing host-less guarantees (allow stays narrow).
func TestReviewAnyHostAddressAllowStaysNarrow(t *testing.T) {
	src := strings.Replace(reviewPolicy, "{id: g, effect: allow, agents: [a], sellers: any,",
		`{id: g, effect: allow, agents: [a], sellers: [{address: "0x00000000000000000000000000000000000000aa", host: "*"}],`, 1)
	p := rvCompile(t, src)
	in := rvIntent(ActionGuarantee)
	if d := p.Evaluate(in, NewMemLedger(), rvNow); d.Outcome != Deny || d.Code != CodeSellerNotAllowed {
		t.Fatalf("host-less guarantee under an {address, host: *} allow: %v", d)
	}
	in.Host = "api.x.example"
	if d := p.Evaluate(in, NewMemLedger(), rvNow); d.Outcome == Deny {
		t.Fatalf("guarantee with a host under an {address, host: *} allow: %v", d)
	}
}

// Budgets and approvals without `actions:` are for guarantees only. pay_tab settles a tab whose
// guarantees were already counted when they were signed, so a guarantee budget that also counted
// pay_tab would count the same money twice and refuse to pay a debt (which the recipient then
// takes from the collateral anyway). pay_tab is capped by its own rule's max_amount and by
// budgets that name it. These decisions pin that default.
func TestReviewBudgetDefaults(t *testing.T) {
	p := rvCompile(t, reviewPolicy)
	led := NewMemLedger()
	apply := func(in *Intent) Decision {
		t.Helper()
		d := p.Evaluate(in, led, rvNow)
		if d.Outcome == Allow {
			if err := led.Apply(d.Charges, rvNow); err != nil {
				t.Fatal(err)
			}
		}
		return d
	}
	// 10 USDC of guarantees exhaust g-daily.
	for i := 0; i < 3; i++ {
		g := rvIntent(ActionGuarantee)
		g.Amount = big.NewInt(3_000_000)
		if d := apply(g); d.Outcome != Allow {
			t.Fatalf("guarantee %d: %v", i, d)
		}
	}
	g := rvIntent(ActionGuarantee)
	g.Amount = big.NewInt(1_000_001)
	if d := apply(g); d.Code != CodeBudgetExhausted || d.Rule != "g-daily" {
		t.Fatalf("guarantee over the daily budget: %v", d)
	}
	// pay_tab is not charged to g-daily, only to tabs-daily (30 USDC).
	for i := 0; i < 2; i++ {
		pt := rvIntent(ActionPayTab)
		pt.Amount = big.NewInt(15_000_000)
		d := apply(pt)
		if d.Outcome != Allow {
			t.Fatalf("pay_tab %d: %v", i, d)
		}
		for _, c := range d.Charges {
			if c.Budget != "tabs-daily" {
				t.Fatalf("pay_tab charged to %s", c.Budget)
			}
		}
	}
	pt := rvIntent(ActionPayTab)
	if d := apply(pt); d.Code != CodeBudgetExhausted || d.Rule != "tabs-daily" {
		t.Fatalf("pay_tab over its own budget: %v", d)
	}
	// The guarantee approval (no actions) does not hold a pay_tab of 15 USDC ≥ 4 USDC; the
	// pay_tab's own max_amount is what bounds it.
	led2 := NewMemLedger()
	pt = rvIntent(ActionPayTab)
	pt.Amount = big.NewInt(15_000_000)
	if d := p.Evaluate(pt, led2, rvNow); d.Outcome != Allow {
		t.Fatalf("pay_tab vs a guarantee-only approval: %v", d)
	}
	// An ETH pay_tab and a USDC pay_tab never share a counter, even with a base-unit limit.
	raw := rvCompile(t, strings.Replace(reviewPolicy, "approvals:\n", "  - {id: any-asset, actions: [pay_tab], per: [agent], window: day, limit: \"10000000000000000\"}\napprovals:\n", 1))
	led3 := NewMemLedger()
	eth := rvIntent(ActionPayTab)
	eth.Asset, eth.Amount = common.Address{}, big.NewInt(1e16)
	d := raw.Evaluate(eth, led3, rvNow)
	if d.Outcome != Allow {
		t.Fatalf("eth pay_tab: %v", d)
	}
	_ = led3.Apply(d.Charges, rvNow)
	usdc := rvIntent(ActionPayTab)
	if d := raw.Evaluate(usdc, led3, rvNow); d.Outcome != Allow {
		t.Fatalf("usdc pay_tab after eth filled the base-unit budget: %v", d)
	}
}

// Action names are exact: no case folding, no whitespace, no aliases, no null item; a
// misspelt `action:` key (singular) is an unknown field, never a silently ignored one.
func TestReviewActionNamesCompile(t *testing.T) {
	base := actionsBase + "rules:\n  - {id: r, effect: allow, agents: [a], networks: any, assets: any, actions: [%s]}\n"
	for _, name := range []string{"Deposit", "DEPOSIT", `" deposit"`, `"deposit "`, "pay-tab", "payTab", "withdrawal", "all", "'*'", "~", `""`, "1"} {
		src := strings.Replace(base, "%s", name, 1)
		if _, err := Compile(map[string][]byte{"p.yaml": []byte(src)}, CompileOptions{}); err == nil {
			t.Errorf("actions: [%s] compiled", name)
		}
	}
	for _, src := range []string{
		actionsBase + "rules:\n  - {id: r, effect: allow, agents: [a], networks: any, assets: any, action: [deposit]}\n",
		actionsBase + "rules:\n  - {id: d, effect: deny, agents: [a], action: [withdraw]}\n",
		actionsBase + "budgets:\n  - {id: b, action: [pay_tab], per: [agent], window: day, limit: \"1 USDC\"}\n",
		actionsBase + "approvals:\n  - {id: x, Actions: [pay_tab], at_or_above: \"1 USDC\", group: g, timeout: 5m}\n",
		actionsBase + "rules:\n  - {id: d, effect: deny, actions: ~}\n",
	} {
		_, err := Compile(map[string][]byte{"p.yaml": []byte(src)}, CompileOptions{})
		var ces CompileErrors
		if err == nil || !errors.As(err, &ces) {
			t.Errorf("compiled (or not a compile error: %v):\n%s", err, src)
		}
	}
}

// JSON intents: the action and tab_id decode exactly; amounts never negative, fractional,
// exponent-form or over uint256; unknown fields refused.
func TestReviewIntentJSON(t *testing.T) {
	maxU := "115792089237316195423570985008687907853269984665640564039457584007913129639935"
	ok := map[string]func(*Intent) bool{
		`{"amount":"` + maxU + `","action":"deposit"}`:                      func(in *Intent) bool { return in.Amount.BitLen() == 256 && in.Action == ActionDeposit },
		`{"amount":"0x` + strings.Repeat("f", 64) + `","action":"pay_tab"}`: func(in *Intent) bool { return in.Amount.BitLen() == 256 },
		`{"amount":1,"action":null}`:                                        func(in *Intent) bool { return in.Action == ActionGuarantee },
		`{"amount":"0","action":"cancel_withdrawal"}`:                       func(in *Intent) bool { return in.Amount.Sign() == 0 },
		`{"amount":1,"action":"pay_tab","tab_id":"` + maxU + `"}`:           func(in *Intent) bool { return in.TabID.BitLen() == 256 },
		`{"amount":1,"action":"pay_tab","tab_id":"0x00000000000000000001"}`: func(in *Intent) bool { return in.TabID.Int64() == 1 },
	}
	for src, check := range ok {
		in, err := DecodeIntent([]byte(src))
		if err != nil || !check(in) {
			t.Errorf("%s: %+v %v", src, in, err)
		}
	}
	for _, src := range []string{
		`{"amount":-1,"action":"deposit"}`,
		`{"amount":"-1","action":"deposit"}`,
		`{"amount":"+1","action":"deposit"}`,
		`{"amount":1e6,"action":"deposit"}`,
		`{"amount":"1e6","action":"deposit"}`,
		`{"amount":1.0,"action":"deposit"}`,
		`{"amount":" 1","action":"deposit"}`,
		`{"amount":"0x","action":"deposit"}`,
		`{"amount":"0x-1","action":"deposit"}`,
		`{"amount":"115792089237316195423570985008687907853269984665640564039457584007913129639936","action":"deposit"}`,
		`{"amount":"0x1` + strings.Repeat("0", 64) + `","action":"deposit"}`,
		`{"amount":true,"action":"deposit"}`,
		`{"amount":[1],"action":"deposit"}`,
		`{"amount":1,"action":"Deposit"}`,
		`{"amount":1,"action":" deposit"}`,
		`{"amount":1,"action":"deposit\u0000"}`,
		`{"amount":1,"action":1}`,
		`{"amount":1,"action":["deposit"]}`,
		`{"amount":1,"action":"pay_tab","tab_id":-7}`,
		`{"amount":1,"action":"pay_tab","tab_id":1.5}`,
		`{"amount":1,"action":"deposit","actions":["pay_tab"]}`,
		`{"amount":1,"action":"deposit","recipient":"0xaa"}`,
		`{"amount":1,"action":"deposit"} {"amount":2}`,
		`{"action":"deposit"}`,
	} {
		if in, err := DecodeIntent([]byte(src)); err == nil {
			t.Errorf("%s decoded: %+v", src, in)
		}
	}
}

// Adding or changing `actions:` on an approval changes the hash, writing the default does not,
// and a deny on {address, host: "*"} keeps its hash (its matching widened, not its text).
func TestReviewHash(t *testing.T) {
	h := func(src string) [32]byte { return rvCompile(t, src).Hash() }
	appr := "approvals:\n  - {id: x, %sat_or_above: \"1 USDC\", group: g, timeout: 5m}\n"
	f := func(acts string) string { return actionsBase + strings.Replace(appr, "%s", acts, 1) }
	base := h(f(""))
	if h(f("actions: [guarantee], ")) != base {
		t.Error("an approval with its default actions written changed the hash")
	}
	if h(f("actions: [guarantee, pay_tab], ")) == base || h(f("actions: [pay_tab], ")) == base {
		t.Error("an approval's actions are not in the hash")
	}
	if h(f("actions: [pay_tab], ")) == h(f("actions: [guarantee, pay_tab], ")) {
		t.Error("two different approval action sets hash the same")
	}
	// Deny rules: the implicit set depends on the selectors; an explicit set equal to another
	// selector's implicit set must still hash differently from the rule it is not.
	d1 := actionsBase + "rules:\n  - {id: d, effect: deny, agents: [a]}\n"
	d2 := actionsBase + "rules:\n  - {id: d, effect: deny, agents: [a], actions: [guarantee, pay_tab]}\n"
	d3 := actionsBase + "rules:\n  - {id: d, effect: deny, agents: [a], actions: [guarantee, deposit, withdraw, cancel_withdrawal, finalize_withdrawal, pay_tab]}\n"
	if h(d1) == h(d2) {
		t.Error("a deny on agents for every action hashes like one for guarantee and pay_tab")
	}
	if h(d1) != h(d3) {
		t.Error("a deny on agents with every action written hashes unlike its default")
	}
}

// Every policy under testdata/policy keeps its decisions with this review's fixes: the
// *.cases.yaml files still pass (TestCasesFiles runs them too) and the hashes are the ones
// recorded in the docs.
func TestReviewTestdataUnchanged(t *testing.T) {
	p := mustLoad(t, filepath.Join(testdataDir, "collateral.yaml"), CompileOptions{})
	const want = "5b00c798cc5c789b4aa9775ef14e596a47caf43b05d5149c73d226586788277f"
	h := p.Hash()
	if got := common.Bytes2Hex(h[:]); got != want {
		t.Fatalf("collateral.yaml hash %s, docs say %s", got, want)
	}
}
