package policyengine

import (
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
)

const testdataDir = "../testdata/policy"

// TestCasesFiles runs every *.cases.yaml under testdata/policy against the policy beside it
// (NAME.yaml or the directory NAME/), and checks that together they expect every denial code.
func TestCasesFiles(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(testdataDir, "*.cases.yaml"))
	if err != nil || len(files) < 3 {
		t.Fatalf("want at least 3 cases files, got %v (%v)", files, err)
	}
	seen := map[string]bool{}
	outcomes := map[Outcome]int{}
	for _, cf := range files {
		base := strings.TrimSuffix(cf, ".cases.yaml")
		pol := base + ".yaml"
		if st, err := os.Stat(base); err == nil && st.IsDir() {
			pol = base
		}
		t.Run(filepath.Base(base), func(t *testing.T) {
			rep, err := RunCasesFiles(pol, cf)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rep.Results {
				if r.Mismatch != "" {
					t.Errorf("step %d %q: %s", r.Step, r.Name, r.Mismatch)
					continue
				}
				seen[r.Decision.Code] = r.Decision.Outcome == Deny || seen[r.Decision.Code]
				outcomes[r.Decision.Outcome]++
			}
		})
	}
	for _, c := range Codes {
		if c == CodeUsageUnavailable { // needs a failing ledger: TestUsageUnavailable
			continue
		}
		if !seen[c] {
			t.Errorf("no case file exercises denial code %s", c)
		}
	}
	if outcomes[Allow] == 0 || outcomes[NeedsApproval] == 0 || outcomes[Deny] == 0 {
		t.Errorf("outcomes not all exercised: %v", outcomes)
	}
}

// A cases file whose expectation is wrong must fail: the runner can fail.
func TestCasesRunnerReportsMismatch(t *testing.T) {
	p := mustLoad(t, filepath.Join(testdataDir, "example.yaml"), CompileOptions{})
	src := []byte(`
intent_defaults: {agent: research-bot, wallet: "0x2B5AD5c4795c026514f8317c7a215E218DcCD6cF",
  pay_to: "0x00000000000000000000000000000000000000aa", host: api.weather.example,
  network: "eip155:84532", chain_id: 84532, amount: "0.10 USDC", version: 1}
steps:
  - {name: really allowed, expect: deny, code: seller_not_allowed}
  - {name: right, expect: allow}
  - {name: wrong rule, expect: allow, rule: support-lookups}
`)
	rep, err := RunCases(p, src)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Failures != 2 || rep.Results[0].Mismatch == "" || rep.Results[1].Mismatch != "" || rep.Results[2].Mismatch == "" {
		t.Fatalf("want 2 mismatches (steps 1 and 3), got %+v", rep.Results)
	}
	for _, bad := range []string{"steps: [{expect: maybe}]", "steps: [{expect: deny, code: nope}]", "stepz: []", "steps: [{advance: 1h, expect: allow}]"} {
		if _, err := RunCases(p, []byte(bad)); err == nil {
			t.Errorf("cases %q: want error", bad)
		}
	}
}

func mustLoad(t testing.TB, path string, o CompileOptions) *Policy {
	t.Helper()
	p, err := Load(path, o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestCompileErrors(t *testing.T) {
	base := "version: 1\nassets:\n  USDC: {address: \"0x036CbD53842c5426634e7929541eC2318f3dCF7e\", decimals: 6}\nagents:\n  a:\n    callers: [{uid: 1}]\n    wallets: [\"0x00000000000000000000000000000000000000f1\"]\n"
	allow := "rules:\n  - id: r\n    effect: allow\n    agents: [a]\n    sellers: any\n    networks: any\n    assets: any\n"
	for _, tc := range []struct {
		name, src, want string
	}{
		{"unknown top-level field", base + "rulez: []\n", "p.yaml:8:1: unknown field \"rulez\""},
		{"unknown rule field", base + allow + "    max_ammount: \"1 USDC\"\n", "p.yaml:15:5: rules[r]: unknown field \"max_ammount\""},
		{"float amount without asset", base + allow + "    max_amount: \"0.5\"\n", "rules[r].max_amount[0]: amount \"0.5\": a decimal amount needs an asset symbol"},
		{"too many decimals", base + allow + "    max_amount: \"0.0000001 USDC\"\n", "has 7 decimal places; the asset has 6"},
		{"unknown asset symbol", base + allow + "    max_amount: \"1 DAI\"\n", "unknown asset \"DAI\""},
		{"allow rule without sellers", base + "rules:\n  - id: r\n    effect: allow\n    agents: [a]\n    networks: any\n    assets: any\n", "p.yaml:9:5: rules[r]: missing sellers: list them, or write `sellers: any`"},
		{"unknown agent", base + strings.Replace(allow, "[a]", "[b]", 1), "rules[r].agents[0]: unknown agent \"b\""},
		{"duplicate id", base + allow + "  - id: r\n    effect: deny\n    agents: [a]\n", "id \"r\" is already used"},
		{"bad effect", base + "rules:\n  - id: r\n    effect: maybe\n", "effect must be allow or deny"},
		{"bad host", base + strings.Replace(allow, "sellers: any", "sellers: [\"api.*.example\"]", 1), "is not a host pattern"},
		{"bad address", base + strings.Replace(allow, "sellers: any", "sellers: [\"0x1234\"]", 1), "is not an address"},
		{"bad network", base + strings.Replace(allow, "networks: any", "networks: [base]", 1), "is not a CAIP-2 network id"},
		{"empty list", base + strings.Replace(allow, "sellers: any", "sellers: []", 1), "empty list"},
		{"uid self without option", strings.Replace(base, "uid: 1", "uid: self", 1), "`uid: self` needs the daemon's uid"},
		{"caller with exe only", strings.Replace(base, "{uid: 1}", "{exe: /bin/x}", 1), "a caller needs at least one of uid, gid, user, group"},
		{"budget with both", base + "budgets:\n  - {id: b, per: [agent], window: hour, limit: \"1 USDC\", max_requests: 3}\n", "exactly one of limit"},
		{"budget bad window", base + "budgets:\n  - {id: b, per: [agent], window: fortnight, limit: \"1 USDC\"}\n", "duration \"fortnight\""},
		{"budget bad per", base + "budgets:\n  - {id: b, per: [planet], window: hour, limit: \"1 USDC\"}\n", "per must list agent, wallet, seller, asset or task"},
		{"approval missing group", base + "approvals:\n  - {id: x, at_or_above: \"1 USDC\", timeout: 5m}\n", "missing group"},
		{"deny with max_amount", base + "rules:\n  - {id: d, effect: deny, agents: [a], max_amount: \"1 USDC\"}\n", "max_amount is only for allow rules"},
		{"deny matching everything", base + "rules:\n  - {id: d, effect: deny}\n", "a deny rule must match on something"},
		{"unknown deny code", base + "rules:\n  - {id: d, effect: deny, agents: [a], code: nope}\n", "unknown denial code \"nope\""},
		{"missing version", strings.Replace(base, "version: 1\n", "", 1), "missing `version: 1`"},
		{"wrong version", strings.Replace(base, "version: 1", "version: 2", 1), "unsupported policy version"},
		{"aliases", base + "x: &a 1\n", "anchors, aliases and merge keys are not allowed"},
		{"duplicate key", base + "version: 1\n", "p.yaml:8:1: field \"version\" given twice"},
		{"yaml syntax", "version: 1\nagents: [\n", "p.yaml: YAML:"},
		{"v2 min score", base + allow + "    v2: {registries: any, min_score: 0}\n", "min_score must be 1..100"},
		{"no agents", "version: 1\n", "no agents"},
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

func TestHashIgnoresOrderAndLayout(t *testing.T) {
	src := readFile(t, filepath.Join(testdataDir, "example.yaml"))
	p1, err := Compile(map[string][]byte{"a.yaml": []byte(src)}, CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Move the deny rule (last rule) to the front and the budgets before the rules.
	i, j := strings.Index(src, "  - id: block-drainer"), strings.Index(src, "budgets:")
	deny := src[i:j]
	reordered := strings.Replace(src[:i]+src[j:], "rules:\n", "rules:\n"+deny, 1)
	// Split into two files: everything from budgets: onward goes to a second file.
	k := strings.Index(reordered, "budgets:")
	p2, err := Compile(map[string][]byte{"1.yaml": []byte(reordered[:k]), "2.yaml": []byte("version: 1\n" + reordered[k:])}, CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p1.Hash() != p2.Hash() {
		t.Fatalf("reordering/splitting changed the hash")
	}
	p3, err := Compile(map[string][]byte{"a.yaml": []byte(strings.Replace(src, `limit: "2 USDC"`, `limit: "2.000001 USDC"`, 1))}, CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p3.Hash() == p1.Hash() {
		t.Fatalf("changing a limit by one base unit did not change the hash")
	}
	// The same policy compiled with another self uid differs (uid: self is resolved).
	dev := filepath.Join(testdataDir, "dev.yaml")
	if mustLoad(t, dev, CompileOptions{SelfUID: UID(1)}).Hash() == mustLoad(t, dev, CompileOptions{SelfUID: UID(2)}).Hash() {
		t.Fatalf("self uid not covered by the hash")
	}
}

type failingUsage struct{}

func (failingUsage) Usage(string, time.Duration, time.Time) (*big.Int, error) {
	return nil, errors.New("disk on fire")
}

func exampleIntent() *Intent {
	return &Intent{Agent: "research-bot", Wallet: common.HexToAddress("0x2B5AD5c4795c026514f8317c7a215E218DcCD6cF"),
		PayTo: common.HexToAddress("0xaa"), Host: "api.weather.example", Network: "eip155:84532", ChainID: 84532,
		Asset: common.HexToAddress("0x036CbD53842c5426634e7929541eC2318f3dCF7e"), Amount: big.NewInt(100000), Version: 1,
		Timestamp: 1767600000, TaskID: "t"}
}

func TestUsageUnavailableFailsClosed(t *testing.T) {
	p := mustLoad(t, filepath.Join(testdataDir, "example.yaml"), CompileOptions{})
	now := time.Unix(1767600000, 0)
	if d := p.Evaluate(exampleIntent(), NewMemLedger(), now); d.Outcome != Allow || len(d.Charges) != 3 {
		t.Fatalf("baseline: %v charges %d", d, len(d.Charges))
	}
	for _, u := range []UsageReader{failingUsage{}, nil} {
		d := p.Evaluate(exampleIntent(), u, now)
		if d.Outcome != Deny || d.Code != CodeUsageUnavailable || d.Err == nil {
			t.Fatalf("usage %T: want deny usage_unavailable with Err, got %v (err %v)", u, d, d.Err)
		}
		if strings.Contains(d.Reason, "fire") {
			t.Fatalf("the fault leaked into the caller-facing reason: %q", d.Reason)
		}
	}
	var zero Decision
	if zero.Outcome != Deny || zero.Allowed() {
		t.Fatal("the zero Decision must deny")
	}
	if d := p.Evaluate(nil, nil, now); d.Code != CodeInvalidIntent {
		t.Fatalf("nil intent: %v", d)
	}
}

func TestPrincipalAndWallets(t *testing.T) {
	w := common.HexToAddress("0x00000000000000000000000000000000000000e1")
	p := mustLoad(t, filepath.Join(testdataDir, "coverage"), CompileOptions{SelfUID: UID(1000), Wallets: []common.Address{w}})
	for _, tc := range []struct {
		c    Caller
		want string
	}{
		{Caller{UID: 1000}, "self-agent"},
		{Caller{UID: 10, GID: 500}, "ops"},
		{Caller{UID: 77, GID: 500}, ""}, // ambiguous
		{Caller{UID: 77, GID: 1}, "ops-twin"},
		{Caller{UID: 5, User: "idle"}, "idle"},
		{Caller{UID: 5}, ""},
	} {
		got, ok := p.Principal(tc.c)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("Principal(%+v) = %q %v, want %q", tc.c, got, ok, tc.want)
		}
	}
	if ws := p.Wallets("self-agent"); len(ws) != 1 || ws[0] != w {
		t.Errorf("wallets: any → %v, want the daemon's wallet", ws)
	}
	if ws := p.Wallets("ops"); len(ws) != 2 || ws[0] != common.HexToAddress("0xf1") {
		t.Errorf("ops wallets %v (first must be the default)", ws)
	}
	if p.Wallets("nobody") != nil {
		t.Error("unknown agent has wallets")
	}
	ks := p.KillSwitch()
	if ks.DenialBurst.Count != 5 || ks.DenialBurst.Window != 10*time.Second {
		t.Errorf("kill switch %+v", ks)
	}
}

func TestAmountParsing(t *testing.T) {
	usdc := &Asset{Symbol: "USDC", Decimals: 6}
	assets := map[string]*Asset{"USDC": usdc, "ETH": {Symbol: "ETH", Decimals: 18}}
	for s, want := range map[string]string{"0.05 USDC": "50000", "1 USDC": "1000000", "1.000001 USDC": "1000001",
		"0.000000000000000001 ETH": "1", "12": "12", "0 USDC": "0"} {
		a, err := parseAmount(s, assets)
		if err != nil || a.value.String() != want {
			t.Errorf("%q → %v %v, want %s", s, a.value, err, want)
		}
	}
	for _, s := range []string{"0.05", "1e6", "-1 USDC", ".5 USDC", "5. USDC", "1,5 USDC", "0x10", "1 2 USDC", "", "NaN USDC", "1.0000001 USDC"} {
		if _, err := parseAmount(s, assets); err == nil {
			t.Errorf("%q parsed", s)
		}
	}
	if got := FormatAmount(big.NewInt(50000), usdc); got != "0.05 USDC" {
		t.Errorf("FormatAmount = %q", got)
	}
}

func TestHosts(t *testing.T) {
	for in, want := range map[string]string{"API.Example.com": "api.example.com", "a.b:8443": "a.b", "[::1]:80": "::1", "x.y.": "x.y"} {
		if got := normHost(in); got != want {
			t.Errorf("normHost(%q) = %q want %q", in, got, want)
		}
	}
	for in, want := range map[string]string{"https://u:p@Api.X.com:443/p?q#f": "api.x.com", "http://a.b": "a.b", "nohost": ""} {
		if got := hostOfURL(in); got != want {
			t.Errorf("hostOfURL(%q) = %q want %q", in, got, want)
		}
	}
	keys := []string{}
	for _, k := range Codes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i := 1; i < len(keys); i++ {
		if keys[i] == keys[i-1] {
			t.Errorf("duplicate code %s", keys[i])
		}
	}
}

// YAML reads an unquoted 0x… as an integer; cases files must keep the text (regression).
func TestCasesUnquotedAddresses(t *testing.T) {
	p := mustLoad(t, filepath.Join(testdataDir, "example.yaml"), CompileOptions{})
	src := []byte(`
intent_defaults:
  agent: research-bot
  wallet: 0x2B5AD5c4795c026514f8317c7a215E218DcCD6cF
  pay_to: 0x00000000000000000000000000000000000000aa
  host: api.weather.example
  network: eip155:84532
  chain_id: 84532
  amount: 0.10 USDC
  version: 1
steps:
  - {name: unquoted, expect: allow}
  - {name: integer amount, intent: {amount: 100000, asset: USDC}, expect: allow}
  - {name: a raw amount names no asset, intent: {amount: 100000}, expect: deny, code: asset_not_allowed}
`)
	rep, err := RunCases(p, src)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Failures != 0 {
		t.Fatalf("%+v", rep.Results)
	}
}
