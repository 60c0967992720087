package policyengine

import (
	"encoding/json"
	"errors"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
)

const actionsBase = "version: 1\nassets:\n  USDC: {address: \"0x036CbD53842c5426634e7929541eC2318f3dCF7e\", decimals: 6}\nagents:\n  a:\n    callers: [{uid: 1}]\n    wallets: [\"0x00000000000000000000000000000000000000f1\"]\n"

// Compile errors for actions, each naming the rule (budget, approval) by id.
func TestActionCompileErrors(t *testing.T) {
	rule := func(extra string) string {
		return actionsBase + "rules:\n  - id: r\n    effect: allow\n    agents: [a]\n    networks: any\n    assets: any\n" + extra
	}
	for _, tc := range []struct{ name, src, want string }{
		{"unknown action", rule("    actions: [teleport]\n"), `rules[r].actions[0]: unknown action "teleport" (one of: guarantee, deposit, withdraw, cancel_withdrawal, finalize_withdrawal, pay_tab)`},
		{"action twice", rule("    actions: [deposit, deposit]\n"), "rules[r].actions[1]: action deposit listed twice"},
		{"actions any", rule("    actions: any\n"), "rules[r].actions: `any` is not allowed here"},
		{"actions empty", rule("    actions: []\n"), "rules[r].actions: empty list"},
		{"actions not a list", rule("    actions: deposit\n"), "rules[r].actions: expected a list"},
		{"sellers on a deposit rule", rule("    actions: [deposit]\n    sellers: [\"0x00000000000000000000000000000000000000aa\"]\n"),
			"rules[r].sellers: sellers name recipients and these actions have none: deposit"},
		{"sellers on a rule mixing guarantee and withdraw", rule("    actions: [guarantee, withdraw]\n    sellers: [\"0x00000000000000000000000000000000000000aa\"]\n"),
			"rules[r].sellers: sellers name recipients and these actions have none: withdraw"},
		{"host seller on pay_tab", rule("    actions: [pay_tab]\n    sellers: [\"0x00000000000000000000000000000000000000aa\", api.x.example]\n"),
			`rules[r].sellers: seller "api.x.example" names a host, and pay_tab has none`},
		{"address+host seller on pay_tab", rule("    actions: [guarantee, pay_tab]\n    sellers: [{address: \"0x00000000000000000000000000000000000000aa\", host: api.x.example}]\n"),
			`seller "0x00000000000000000000000000000000000000aa@api.x.example" names a host, and pay_tab has none`},
		{"pay_tab rule without sellers", rule("    actions: [pay_tab]\n"), "rules[r]: missing sellers: list them, or write `sellers: any`"},
		{"deposit rule without networks", actionsBase + "rules:\n  - {id: r, effect: allow, actions: [deposit], agents: [a], assets: any}\n", "rules[r]: missing networks"},
		{"versions on a deposit rule", rule("    actions: [deposit]\n    versions: [1]\n"), "rules[r].versions: versions apply to guarantees only, and this rule also covers deposit"},
		{"v2 on a rule with pay_tab", rule("    actions: [guarantee, pay_tab]\n    sellers: any\n    v2: {registries: any}\n"), "rules[r].v2: v2 applies to guarantees only, and this rule also covers pay_tab"},
		{"deny with sellers and deposit", actionsBase + "rules:\n  - {id: d, effect: deny, actions: [deposit], sellers: [\"0x00000000000000000000000000000000000000aa\"]}\n",
			"rules[d].sellers: sellers name recipients and these actions have none: deposit"},
		{"deny with every action and nothing else", actionsBase + "rules:\n  - {id: d, effect: deny, actions: [guarantee, deposit, withdraw, cancel_withdrawal, finalize_withdrawal, pay_tab]}\n",
			"rules[d]: a deny rule must match on something"},
		{"budget per seller on withdrawals", actionsBase + "budgets:\n  - {id: b, actions: [withdraw], per: [agent, seller], window: day, limit: \"1 USDC\"}\n",
			"budgets[b].per[1]: per seller needs a recipient, and these actions have none: withdraw"},
		{"budget unknown action", actionsBase + "budgets:\n  - {id: b, actions: [withdrawal], per: [agent], window: day, limit: \"1 USDC\"}\n",
			`budgets[b].actions[0]: unknown action "withdrawal"`},
		{"approval sellers on deposits", actionsBase + "approvals:\n  - {id: x, actions: [deposit], sellers: [\"0x00000000000000000000000000000000000000aa\"], at_or_above: \"1 USDC\", group: g, timeout: 5m}\n",
			"approvals[x].sellers: sellers name recipients and these actions have none: deposit"},
		{"approval versions on pay_tab", actionsBase + "approvals:\n  - {id: x, actions: [pay_tab], versions: [2], at_or_above: \"1 USDC\", group: g, timeout: 5m}\n",
			"approvals[x].versions: versions apply to guarantees only"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Compile(map[string][]byte{"p.yaml": []byte(tc.src)}, CompileOptions{})
			if err == nil || p != nil {
				t.Fatalf("compiled; want error containing %q", tc.want)
			}
			var ces CompileErrors
			if !errors.As(err, &ces) {
				t.Fatalf("want CompileErrors, got %T %v", err, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

// What compiles, and what actions the compiled selectors apply to.
func TestActionDefaults(t *testing.T) {
	src := actionsBase + `rules:
  - {id: g, effect: allow, agents: [a], sellers: any, networks: any, assets: any}
  - {id: mixed, effect: allow, actions: [guarantee, deposit], agents: [a], sellers: any, networks: any, assets: any}
  - {id: tabs, effect: allow, actions: [pay_tab], agents: [a], sellers: ["0x00000000000000000000000000000000000000aa"], networks: any, assets: any}
  - {id: collateral, effect: allow, actions: [deposit, withdraw, cancel_withdrawal, finalize_withdrawal], agents: [a], networks: any, assets: any}
  - {id: d-agent, effect: deny, agents: [a], chain_ids: [1]}
  - {id: d-seller, effect: deny, sellers: ["0x00000000000000000000000000000000000000bb", bad.example]}
  - {id: d-version, effect: deny, versions: [2], agents: [a]}
  - {id: d-seller-any, effect: deny, sellers: any, assets: ["0x00000000000000000000000000000000000000cc"]}
  - {id: d-only-withdraw, effect: deny, actions: [withdraw]}
  - {id: d-agent-withdraw, effect: deny, agents: [a], actions: [withdraw]}
  - {id: d-guarantee-sellers, effect: deny, actions: [guarantee], sellers: [bad2.example]}
budgets:
  - {id: b, per: [agent], window: day, limit: "1 USDC"}
  - {id: bw, actions: [withdraw, finalize_withdrawal], per: [agent], window: day, max_requests: 3}
approvals:
  - {id: ap, at_or_above: "1 USDC", group: g, timeout: 5m}
  - {id: apd, actions: [deposit], at_or_above: "1 USDC", group: g, timeout: 5m}
`
	p, err := Compile(map[string][]byte{"p.yaml": []byte(src)}, CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	codes := map[string]string{}
	for _, r := range append(append([]*rule{}, p.allowRules...), p.denyRules...) {
		got[r.id] = r.sel.actions.String()
		codes[r.id] = r.code
	}
	for _, b := range p.budgets {
		got[b.id] = b.sel.actions.String()
	}
	for _, a := range p.approvals {
		got[a.id] = a.sel.actions.String()
	}
	all := "guarantee, deposit, withdraw, cancel_withdrawal, finalize_withdrawal, pay_tab"
	for id, want := range map[string]string{
		"g": "guarantee", "mixed": "guarantee, deposit", "tabs": "pay_tab",
		"collateral":      "deposit, withdraw, cancel_withdrawal, finalize_withdrawal",
		"d-agent":         all,                  // agents and chain ids mean something for every action
		"d-seller":        "guarantee, pay_tab", // sellers: the actions with a recipient
		"d-version":       "guarantee",          // versions: guarantees only
		"d-seller-any":    all,                  // `sellers: any` constrains nothing
		"d-only-withdraw": "withdraw", "d-agent-withdraw": "withdraw", "d-guarantee-sellers": "guarantee",
		"b": "guarantee", "bw": "withdraw, finalize_withdrawal", "ap": "guarantee", "apd": "deposit",
	} {
		if got[id] != want {
			t.Errorf("%s applies to [%s], want [%s]", id, got[id], want)
		}
	}
	for id, want := range map[string]string{"d-only-withdraw": CodeActionNotAllowed, "d-agent-withdraw": CodeActionNotAllowed,
		"d-seller": CodeSellerNotAllowed, "d-agent": CodeNetworkNotAllowed, "d-guarantee-sellers": CodeSellerNotAllowed} {
		if codes[id] != want {
			t.Errorf("deny rule %s has code %s, want %s", id, codes[id], want)
		}
	}
}

// Writing a kind's default actions explicitly does not change the hash; changing them does.
func TestActionsHash(t *testing.T) {
	hash := func(src string) [32]byte {
		t.Helper()
		p, err := Compile(map[string][]byte{"p.yaml": []byte(actionsBase + src)}, CompileOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p.Hash()
	}
	allow := "rules:\n  - {id: r, effect: allow, %sagents: [a], sellers: any, networks: any, assets: any}\n"
	deny := "  - {id: d, effect: deny, %ssellers: [\"0x00000000000000000000000000000000000000bb\"]}\n"
	budget := "budgets:\n  - {id: b, %sper: [agent], window: day, limit: \"1 USDC\"}\n"
	f := func(tmpl, acts string) string { return strings.Replace(tmpl, "%s", acts, 1) }
	base := hash(f(allow, "") + f(deny, "") + f(budget, ""))
	if h := hash(f(allow, "actions: [guarantee], ") + f(deny, "actions: [pay_tab, guarantee], ") + f(budget, "actions: [guarantee], ")); h != base {
		t.Error("writing the default actions changed the hash")
	}
	for name, src := range map[string]string{
		"allow":  f(allow, "actions: [guarantee, deposit], ") + f(deny, "") + f(budget, ""),
		"deny":   f(allow, "") + f(deny, "actions: [guarantee], ") + f(budget, ""),
		"budget": f(allow, "") + f(deny, "") + f(budget, "actions: [guarantee, withdraw], "),
	} {
		if hash(src) == base {
			t.Errorf("changing the %s's actions did not change the hash", name)
		}
	}
}

// Policies written before actions existed allow no other action: every probe of every
// non-guarantee action against them is denied, while the same probe as a guarantee may pass.
func TestExistingPoliciesAllowOnlyGuarantees(t *testing.T) {
	now := time.Unix(1767600000, 0)
	for _, tc := range []struct {
		path string
		opts CompileOptions
	}{
		{"example.yaml", CompileOptions{}},
		{"dev.yaml", CompileOptions{SelfUID: UID(1000), Wallets: []common.Address{common.HexToAddress("0x2B5AD5c4795c026514f8317c7a215E218DcCD6cF")}}},
		{"coverage", CompileOptions{SelfUID: UID(1000), Wallets: []common.Address{common.HexToAddress("0xe1")}}},
	} {
		p := mustLoad(t, filepath.Join(testdataDir, tc.path), tc.opts)
		guaranteesAllowed := 0
		for _, agent := range p.Agents() {
			for _, w := range p.Wallets(agent) {
				g := exampleIntent()
				g.Agent, g.Wallet, g.Timestamp, g.Amount = agent, w, uint64(now.Unix()), big.NewInt(1)
				g.TaskLabels = map[string]string{"env": "prod"}
				if d := p.Evaluate(g, NewMemLedger(), now); d.Outcome != Deny {
					guaranteesAllowed++
				}
				for _, act := range Actions[1:] {
					in := collateralIntent(act, agent, w, now)
					in.Asset, in.Network, in.ChainID = g.Asset, g.Network, g.ChainID
					in.TaskLabels = g.TaskLabels
					d := p.Evaluate(in, NewMemLedger(), now)
					if d.Outcome != Deny {
						t.Errorf("%s: agent %s: %s was not denied: %v", tc.path, agent, act, d)
					} else if d.Code != CodeActionNotAllowed && d.Code != CodeDefaultDeny && d.Code != CodeSellerNotAllowed &&
						d.Code != CodeDeniedByRule && d.Code != CodeNetworkNotAllowed && d.Code != CodeAssetNotAllowed {
						t.Errorf("%s: agent %s: %s denied with %v", tc.path, agent, act, d)
					}
				}
			}
		}
		if guaranteesAllowed == 0 {
			t.Errorf("%s: the probe allowed no guarantee either (the test proves nothing)", tc.path)
		}
	}
}

func collateralIntent(act Action, agent string, wallet common.Address, now time.Time) *Intent {
	in := &Intent{Agent: agent, Action: act, Wallet: wallet, Network: "eip155:84532", ChainID: 84532,
		Asset: common.HexToAddress("0x036CbD53842c5426634e7929541eC2318f3dCF7e"), Amount: big.NewInt(1000), Timestamp: uint64(now.Unix())}
	switch act {
	case ActionCancelWithdrawal, ActionFinalizeWithdrawal:
		in.Amount = nil
	case ActionPayTab:
		in.PayTo, in.TabID = common.HexToAddress("0xaa"), big.NewInt(0x7f3a)
	}
	return in
}

// Intent validation per action: each malformed intent is denied invalid_intent with a reason
// naming the field; nil amounts on cancel/finalize are 0.
func TestActionIntentValidation(t *testing.T) {
	p := mustLoad(t, filepath.Join(testdataDir, "collateral.yaml"), CompileOptions{})
	now := time.Unix(1767600000, 0)
	w := common.HexToAddress("0xa1")
	for _, tc := range []struct {
		name string
		act  Action
		mut  func(*Intent)
		want string // "" = allowed
	}{
		{"deposit", ActionDeposit, nil, ""},
		{"unknown action", Action(9), nil, "action 9 is not one of: guarantee, deposit, withdraw"},
		{"deposit amount 0", ActionDeposit, func(in *Intent) { in.Amount = big.NewInt(0) }, "deposit: amount must be a positive"},
		{"deposit amount nil", ActionDeposit, func(in *Intent) { in.Amount = nil }, "deposit: amount must be a positive"},
		{"deposit amount over uint256", ActionDeposit, func(in *Intent) { in.Amount = new(big.Int).Lsh(bigOne, 256) }, "deposit: amount exceeds uint256"},
		{"deposit with pay_to", ActionDeposit, func(in *Intent) { in.PayTo = common.HexToAddress("0xaa") }, "deposit: pay_to must be empty"},
		{"deposit with tab_id", ActionDeposit, func(in *Intent) { in.TabID = big.NewInt(1) }, "deposit: tab_id is only for pay_tab"},
		{"deposit with version", ActionDeposit, func(in *Intent) { in.Version = 1 }, "deposit: version must be 0"},
		{"deposit with host", ActionDeposit, func(in *Intent) { in.Host = "x.example" }, "deposit: host and resource_url are for guarantees only"},
		{"deposit with resource_url", ActionDeposit, func(in *Intent) { in.ResourceURL = "https://x.example/" }, "deposit: host and resource_url"},
		{"deposit with a V2 field", ActionDeposit, func(in *Intent) { in.MinScore = 5 }, "deposit: validation_registry, validator, min_score"},
		{"deposit without network", ActionDeposit, func(in *Intent) { in.Network = "" }, "deposit: network missing"},
		{"deposit with mismatched chain id", ActionDeposit, func(in *Intent) { in.ChainID = 1 }, "network eip155:84532 does not match chain id 1"},
		{"withdraw", ActionWithdraw, nil, ""},
		{"cancel with nil amount", ActionCancelWithdrawal, nil, ""},
		{"cancel with amount 0", ActionCancelWithdrawal, func(in *Intent) { in.Amount = big.NewInt(0) }, ""},
		{"cancel with an amount", ActionCancelWithdrawal, func(in *Intent) { in.Amount = big.NewInt(1) }, "cancel_withdrawal: amount must be 0"},
		{"finalize with an amount", ActionFinalizeWithdrawal, func(in *Intent) { in.Amount = big.NewInt(1) }, "finalize_withdrawal: amount must be 0"},
		{"pay_tab", ActionPayTab, nil, ""},
		{"pay_tab without recipient", ActionPayTab, func(in *Intent) { in.PayTo = common.Address{} }, "pay_tab: pay_to (the tab's recipient) missing"},
		{"pay_tab without tab id", ActionPayTab, func(in *Intent) { in.TabID = nil }, "pay_tab: tab_id missing"},
		{"pay_tab with tab id 0", ActionPayTab, func(in *Intent) { in.TabID = big.NewInt(0) }, "pay_tab: tab_id missing"},
		{"pay_tab with a huge tab id", ActionPayTab, func(in *Intent) { in.TabID = new(big.Int).Lsh(bigOne, 256) }, "pay_tab: tab_id exceeds uint256"},
		{"pay_tab with a host", ActionPayTab, func(in *Intent) { in.Host = "x.example" }, "pay_tab: host and resource_url"},
		{"pay_tab without timestamp", ActionPayTab, func(in *Intent) { in.Timestamp = 0 }, "claim timestamp missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := collateralIntent(tc.act, "treasury-bot", w, now)
			in.Amount = map[bool]*big.Int{true: nil, false: big.NewInt(1000)}[tc.act == ActionCancelWithdrawal || tc.act == ActionFinalizeWithdrawal]
			if tc.act == ActionPayTab {
				in.Amount = big.NewInt(1000)
			}
			if tc.mut != nil {
				tc.mut(in)
			}
			d := p.Evaluate(in, NewMemLedger(), now)
			if tc.want == "" {
				if d.Outcome != Allow {
					t.Fatalf("want allow, got %v", d)
				}
				return
			}
			if d.Outcome != Deny || !strings.Contains(d.Reason, tc.want) || d.Rule == "" {
				t.Fatalf("want deny with reason containing %q, got %v", tc.want, d)
			}
			if !strings.Contains(tc.want, "timestamp") && d.Code != CodeInvalidIntent {
				t.Fatalf("want invalid_intent, got %v", d)
			}
		})
	}
}

// The action's JSON form: a name, omitted for a guarantee; tab_id like amount.
func TestActionJSON(t *testing.T) {
	in := collateralIntent(ActionPayTab, "treasury-bot", common.HexToAddress("0xa1"), time.Unix(1767600000, 0))
	in.TabID, _ = new(big.Int).SetString("7f3a0000000000000000000000000000000000000000000000000000000000ff", 16)
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"action":"pay_tab"`) {
		t.Fatalf("no action name in %s", b)
	}
	back, err := DecodeIntent(b)
	if err != nil || back.Action != ActionPayTab || back.TabID.Cmp(in.TabID) != 0 {
		t.Fatalf("round trip: %+v %v", back, err)
	}
	g, _ := json.Marshal(exampleIntent())
	if strings.Contains(string(g), "action") || strings.Contains(string(g), "tab_id") {
		t.Fatalf("a guarantee carries an action or tab id: %s", g)
	}
	for src, want := range map[string]Action{
		`{"amount":"1"}`: ActionGuarantee, `{"amount":"1","action":"guarantee"}`: ActionGuarantee,
		`{"amount":"1","action":"deposit"}`: ActionDeposit, `{"amount":0,"action":"finalize_withdrawal"}`: ActionFinalizeWithdrawal,
	} {
		in, err := DecodeIntent([]byte(src))
		if err != nil || in.Action != want {
			t.Errorf("%s: %v %v, want %s", src, in, err, want)
		}
	}
	if in, err := DecodeIntent([]byte(`{"amount":"1","action":"pay_tab","tab_id":"0x10"}`)); err != nil || in.TabID.Int64() != 16 {
		t.Errorf("tab_id as 0x string: %v %v", in, err)
	}
	for src, want := range map[string]string{
		`{"amount":"1","action":"teleport"}`: `action: unknown action "teleport"`,
		`{"amount":"1","action":""}`:         `action: unknown action ""`,
		`{"amount":"1","action":3}`:          "action",
		`{"amount":"1","tab_id":"0xzz"}`:     `tab_id "0xzz" is not a base-unit integer`,
		`{"amount":"1","tab_id":"-1"}`:       `tab_id "-1" is not a base-unit integer`,
	} {
		if _, err := DecodeIntent([]byte(src)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want it to contain %q", src, err, want)
		}
	}
	if _, err := json.Marshal(&Intent{Action: Action(42), Amount: bigOne}); err == nil {
		t.Error("marshalled an undeclared action")
	}
	if s := Action(42).String(); s != "action(42)" {
		t.Errorf("String = %q", s)
	}
}

// Explain names the rules an action did not match and why.
func TestExplainAction(t *testing.T) {
	p := mustLoad(t, filepath.Join(testdataDir, "collateral.yaml"), CompileOptions{})
	now := time.Unix(1767600000, 0)
	in := collateralIntent(ActionDeposit, "research-bot", common.HexToAddress("0xb1"), now)
	d := p.Explain(in, NewMemLedger(), now)
	if d.Code != CodeActionNotAllowed || d.Rule != "guarantees" {
		t.Fatalf("%v", d)
	}
	found := false
	for _, m := range d.Matches {
		if m.Rule == "guarantees" && m.Effect == "no_match:"+CodeActionNotAllowed && strings.Contains(m.Detail, "allows guarantee, not deposit") {
			found = true
		}
	}
	if !found {
		t.Fatalf("matches %+v", d.Matches)
	}
}

// FuzzEvaluateActions: any decodable intent evaluated against collateral.yaml either is denied
// with a code and rule, or is allowed/held only if it validates for its action, no deny rule
// matches it, an allow rule covering its action allows it, and no charge is over its limit.
func FuzzEvaluateActions(f *testing.F) {
	f.Add([]byte(`{"agent":"treasury-bot","action":"deposit","wallet":"0x00000000000000000000000000000000000000a1","network":"eip155:84532","chain_id":84532,"asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","amount":"5000000","timestamp":1767600000}`))
	f.Add([]byte(`{"agent":"treasury-bot","action":"pay_tab","wallet":"0x00000000000000000000000000000000000000a1","pay_to":"0x00000000000000000000000000000000000000aa","tab_id":"0x7f3a","network":"eip155:84532","chain_id":84532,"asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","amount":"5000000","timestamp":1767600000}`))
	f.Add([]byte(`{"agent":"treasury-bot","action":"finalize_withdrawal","wallet":"0x00000000000000000000000000000000000000a1","network":"eip155:84532","chain_id":84532,"asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","amount":0,"timestamp":1767600000}`))
	f.Add([]byte(`{"agent":"intern-bot","action":"withdraw","wallet":"0x00000000000000000000000000000000000000c1","network":"eip155:84532","chain_id":84532,"asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","amount":"1","timestamp":1767600000}`))
	f.Add([]byte(`{"agent":"research-bot","wallet":"0x00000000000000000000000000000000000000b1","pay_to":"0x00000000000000000000000000000000000000aa","host":"a.example","network":"eip155:84532","chain_id":84532,"asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","amount":"1","version":1,"timestamp":1767600000}`))
	p, err := Load(filepath.Join(testdataDir, "collateral.yaml"), CompileOptions{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := DecodeIntent(data)
		if err != nil {
			return
		}
		now := time.Unix(1767600000, 0)
		d := p.Evaluate(in, NewMemLedger(), now)
		if d.Outcome == Deny {
			if !isCode(d.Code) || d.Rule == "" || d.Reason == "" {
				t.Fatalf("denial without code/rule/reason: %+v", d)
			}
			return
		}
		ctx := evalCtx{in: in, agent: d.Agent}
		if r := ctx.validate(); r != "" {
			t.Fatalf("%v for an invalid intent (%s)", d, r)
		}
		for _, r := range p.denyRules {
			if r.sel.matchAll(&ctx) {
				t.Fatalf("%v although deny rule %s matches", d, r.id)
			}
		}
		allowedBy := ""
		for _, r := range p.allowRules {
			if r.sel.matchScope(&ctx) {
				if _, code, _ := r.allows(&ctx); code == "" {
					allowedBy = r.id
				}
			}
		}
		if allowedBy == "" {
			t.Fatalf("%v without an allow rule", d)
		}
		for _, r := range p.allowRules {
			if r.id == allowedBy && r.sel.actions&in.Action.bit() == 0 {
				t.Fatalf("%v by rule %s, which does not cover %s", d, r.id, in.Action)
			}
		}
		for _, c := range d.Charges {
			if c.Amount.Sign() <= 0 || c.Amount.Cmp(c.Limit) > 0 {
				t.Fatalf("%v with a bad charge %+v", d, c)
			}
		}
	})
}

// BenchmarkEvaluateActions: one allowed decision per action on collateral.yaml, whose rules for
// other actions must not cost an allocation each.
func BenchmarkEvaluateActions(b *testing.B) {
	p := mustLoad(b, filepath.Join(testdataDir, "collateral.yaml"), CompileOptions{})
	now := time.Unix(1767600000, 0)
	g := exampleIntent()
	g.Agent, g.Wallet, g.PayTo, g.Amount, g.Timestamp = "treasury-bot", common.HexToAddress("0xa1"), common.HexToAddress("0xaa"), big.NewInt(1000), uint64(now.Unix())
	for _, in := range []*Intent{g, collateralIntent(ActionDeposit, "treasury-bot", common.HexToAddress("0xa1"), now),
		collateralIntent(ActionFinalizeWithdrawal, "treasury-bot", common.HexToAddress("0xa1"), now),
		collateralIntent(ActionPayTab, "treasury-bot", common.HexToAddress("0xa1"), now)} {
		b.Run(in.Action.String(), func(b *testing.B) {
			u := &zeroUsage{}
			if d := p.Evaluate(in, u, now); d.Outcome != Allow {
				b.Fatalf("setup: %v", d)
			}
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if d := p.Evaluate(in, u, now); d.Outcome != Allow {
					b.Fatal(d)
				}
			}
		})
	}
}
