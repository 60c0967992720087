package policyengine

import (
	"bytes"
	"encoding/json"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
)

func fuzzSeeds(f *testing.F) {
	for _, n := range []string{"example.yaml", "dev.yaml", "coverage/00-base.yaml"} {
		b, err := os.ReadFile(filepath.Join(testdataDir, n))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(propertyPolicy))
	f.Add([]byte("version: 1\nagents: {a: {callers: [{uid: 1}], wallets: any}}\nrules: [{id: r, effect: allow, agents: any, sellers: any, networks: any, assets: any}]\n"))
}

// FuzzCompile: a policy either fails to compile (and yields no Policy) or compiles into one
// whose decisions respect the engine's invariants — malformed input never yields an allow.
func FuzzCompile(f *testing.F) {
	fuzzSeeds(f)
	opts := CompileOptions{SelfUID: UID(1000)}
	f.Fuzz(func(t *testing.T, src []byte) {
		p, err := Compile(map[string][]byte{"f.yaml": src}, opts)
		if err != nil {
			if p != nil {
				t.Fatal("error with a policy")
			}
			return
		}
		p2, err := Compile(map[string][]byte{"f.yaml": src}, opts)
		if err != nil || p2.Hash() != p.Hash() {
			t.Fatalf("compile is not deterministic: %v", err)
		}
		checkInvariants(t, p)
	})
}

// checkInvariants evaluates probe intents and asserts what must hold for every valid policy.
func checkInvariants(t *testing.T, p *Policy) {
	now := time.Unix(1767600000, 0)
	led := NewMemLedger()
	for _, agent := range append(p.Agents(), "") {
		for _, mut := range []func(*Intent){
			func(*Intent) {},
			func(in *Intent) { in.Wallet = common.Address{} },
			func(in *Intent) { in.Timestamp -= 2 * 3600 },
			func(in *Intent) { in.Amount = big.NewInt(0) },
			func(in *Intent) { in.Version = 3 },
			func(in *Intent) { in.Agent = ""; in.Caller = Caller{UID: 1000} },
			func(in *Intent) { in.Agent = ""; in.Caller = Caller{UID: 424242, GID: 424242} },
		} {
			in := exampleIntent()
			in.Agent = agent
			in.Timestamp = uint64(now.Unix())
			if ws := p.Wallets(agent); len(ws) > 0 {
				in.Wallet = ws[0]
			}
			mut(in)
			d := p.Evaluate(in, led, now)
			if d.Outcome == Deny {
				if !isCode(d.Code) || d.Rule == "" {
					t.Fatalf("denial without code/rule: %+v", d)
				}
				continue
			}
			// Allowed or NeedsApproval: everything the engine guarantees must hold.
			if in.Wallet == (common.Address{}) || in.Amount.Sign() <= 0 || in.Version == 3 || int64(in.Timestamp) < now.Unix()-3600 {
				t.Fatalf("%v for an invalid intent %+v", d, in)
			}
			name := in.Agent
			if name == "" {
				var ok bool
				if name, ok = p.Principal(in.Caller); !ok {
					t.Fatalf("%v for an unknown caller", d)
				}
			}
			ctx := evalCtx{in: in, agent: name}
			if ctx.validate() != "" {
				t.Fatal("allowed an intent that does not validate")
			}
			allowedBy := false
			for _, r := range p.allowRules {
				if r.sel.matchScope(&ctx) {
					if _, code, _ := r.allows(&ctx); code == "" {
						allowedBy = true
					}
				}
			}
			for _, r := range p.denyRules {
				if r.sel.matchAll(&ctx) {
					t.Fatalf("%v although deny rule %s matches", d, r.id)
				}
			}
			if !allowedBy {
				t.Fatalf("%v without an allow rule", d)
			}
			for _, c := range d.Charges {
				if c.Amount.Cmp(c.Limit) > 0 {
					t.Fatalf("%v with a charge over its limit: %+v", d, c)
				}
			}
		}
	}
}

// FuzzDecodeIntent: the intent decoder never panics, and what it accepts is a well-formed intent
// that re-encodes to itself and evaluates without panicking.
func FuzzDecodeIntent(f *testing.F) {
	f.Add([]byte(`{"agent":"research-bot","wallet":"0x2B5AD5c4795c026514f8317c7a215E218DcCD6cF","pay_to":"0x00000000000000000000000000000000000000aa","host":"api.weather.example","network":"eip155:84532","chain_id":84532,"asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","amount":"100000","version":1,"timestamp":1767600000,"task_id":"t"}`))
	f.Add([]byte(`{"caller":{"uid":1001},"amount":"0x10","version":2,"min_score":80,"task_labels":{"a":"b"}}`))
	f.Add([]byte(`{"amount":123}`))
	f.Add([]byte(`{"amount":"1e3"}`))
	f.Add([]byte(`{"amount":null}`))
	p, err := Load(filepath.Join(testdataDir, "example.yaml"), CompileOptions{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := DecodeIntent(data)
		if err != nil {
			if in != nil {
				t.Fatal("error with an intent")
			}
			return
		}
		if in.Amount == nil || in.Amount.Sign() < 0 || in.Amount.BitLen() > 256 {
			t.Fatalf("bad amount %v", in.Amount)
		}
		b1, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		in2, err := DecodeIntent(b1)
		if err != nil {
			t.Fatalf("re-decoding %s: %v", b1, err)
		}
		b2, _ := json.Marshal(in2)
		if !bytes.Equal(b1, b2) {
			t.Fatalf("round trip differs:\n%s\n%s", b1, b2)
		}
		d := p.Evaluate(in, NewMemLedger(), time.Unix(int64(in.Timestamp&(1<<40-1)), 0))
		if d.Outcome == Allow && in.Amount.Cmp(big.NewInt(500000)) > 0 {
			t.Fatalf("allowed %s over the example's 0.50 USDC cap", in.Amount)
		}
	})
}
