package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const policyTestdata = "../../testdata/policy"

func runPolicyCtl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestPolicyCheck(t *testing.T) {
	code, out, errs := runPolicyCtl(t, "policy", "check", filepath.Join(policyTestdata, "example.yaml"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{"hash:       sha256:", "agents:     2 (research-bot, support-bot)", "rules:      2 allow, 1 deny", "budgets:    3 amount budgets, 1 rate limits", "auto-trip:  20 denials per 1m0s"} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
	// dev.yaml needs the daemon's uid.
	if code, _, errs := runPolicyCtl(t, "policy", "check", filepath.Join(policyTestdata, "dev.yaml")); code != 1 || !strings.Contains(errs, "dev.yaml:14:14: agents.dev.callers[0].uid") {
		t.Fatalf("dev.yaml without --self-uid: exit %d, %s", code, errs)
	}
	if code, out, errs := runPolicyCtl(t, "policy", "check", "--self-uid", "self", "--wallet", "0x2B5AD5c4795c026514f8317c7a215E218DcCD6cF", filepath.Join(policyTestdata, "dev.yaml")); code != 0 || !strings.Contains(out, "dev wallets: 0x2B5AD5c4795c026514f8317c7a215E218DcCD6cF, any wallet the daemon holds") {
		t.Fatalf("dev.yaml with --self-uid: exit %d\n%s%s", code, out, errs)
	}
	// A directory is one policy.
	if code, out, errs := runPolicyCtl(t, "policy", "check", "--self-uid", "1000", filepath.Join(policyTestdata, "coverage")); code != 0 || !strings.Contains(out, "00-base.yaml") {
		t.Fatalf("coverage dir: exit %d\n%s%s", code, out, errs)
	}
	// A broken policy: errors with positions, exit 1.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("version: 1\nagents:\n  a: {callers: [{uid: 1}], wallets: any, color: red}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := runPolicyCtl(t, "policy", "check", bad); code != 1 || !strings.Contains(errs, "bad.yaml:3:42: agents.a: unknown field \"color\"") {
		t.Fatalf("bad policy: exit %d: %s", code, errs)
	}
	// The docs' broken example: all three errors, in source order, with positions.
	code, _, errs = runPolicyCtl(t, "policy", "check", filepath.Join(policyTestdata, "broken.yaml"))
	if code != 1 || !strings.Contains(errs, "broken.yaml:35:9: rules[research-data].sellers[1]") ||
		!strings.Contains(errs, "broken.yaml:41:17: rules[research-data].max_amount[0]") ||
		!strings.Contains(errs, "broken.yaml:83:5: budgets[support-rate]: unknown field \"colour\"") {
		t.Fatalf("broken.yaml: exit %d\n%s", code, errs)
	}
	if code, _, _ := runPolicyCtl(t, "policy", "check"); code != 2 {
		t.Fatalf("no file: exit %d", code)
	}
	if code, _, _ := runPolicyCtl(t, "policy", "frobnicate"); code != 2 {
		t.Fatalf("unknown subcommand: exit %d", code)
	}
}

func TestPolicyTest(t *testing.T) {
	for _, pair := range [][2]string{{"example.yaml", "example.cases.yaml"}, {"dev.yaml", "dev.cases.yaml"}, {"coverage", "coverage.cases.yaml"}} {
		code, out, errs := runPolicyCtl(t, "policy", "test", filepath.Join(policyTestdata, pair[0]), filepath.Join(policyTestdata, pair[1]))
		if code != 0 || !strings.Contains(out, ", 0 failed") {
			t.Fatalf("%s: exit %d\n%s%s", pair[0], code, out, errs)
		}
	}
	// A wrong expectation makes the command fail and name the step.
	cases := filepath.Join(t.TempDir(), "c.yaml")
	src := `intent_defaults: {agent: research-bot, wallet: "0x2B5AD5c4795c026514f8317c7a215E218DcCD6cF", pay_to: "0x00000000000000000000000000000000000000aa",
  host: api.weather.example, network: "eip155:84532", chain_id: 84532, amount: "0.10 USDC", version: 1}
steps:
  - {name: fine, expect: allow}
  - {name: wrong on purpose, expect: deny, code: seller_not_allowed}
`
	if err := os.WriteFile(cases, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, _ := runPolicyCtl(t, "policy", "test", filepath.Join(policyTestdata, "example.yaml"), cases)
	if code != 1 || !strings.Contains(out, `FAIL step 2 "wrong on purpose": want deny, got allow`) || !strings.Contains(out, "2 checks, 1 failed") {
		t.Fatalf("exit %d\n%s", code, out)
	}
}

func TestPolicyExplain(t *testing.T) {
	dir := t.TempDir()
	intent := filepath.Join(dir, "i.json")
	src := `{"caller":{"uid":1001,"gid":1001},"wallet":"0x2B5AD5c4795c026514f8317c7a215E218DcCD6cF",
 "pay_to":"0xbad0000000000000000000000000000000000bad","resource_url":"https://api.weather.example/today",
 "network":"eip155:84532","chain_id":84532,"asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e",
 "amount":"300000","version":1,"timestamp":1767600000,"task_id":"t-9"}`
	if err := os.WriteFile(intent, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runPolicyCtl(t, "policy", "explain", filepath.Join(policyTestdata, "example.yaml"), intent)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{"decision deny", "code     seller_not_allowed", "rule     block-drainer", "deny      block-drainer", "allow     research-data                overridden"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain lacks %q:\n%s", want, out)
		}
	}
	// The same payment to an allowed seller: needs approval (0.30 ≥ 0.25), with charges.
	if err := os.WriteFile(intent, []byte(strings.Replace(src, "0xbad0000000000000000000000000000000000bad", "0x00000000000000000000000000000000000000aa", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, _ = runPolicyCtl(t, "policy", "explain", "--json", filepath.Join(policyTestdata, "example.yaml"), intent)
	var got struct {
		Outcome, Rule, Group string
		Charges              []struct{ Budget string }
		Matches              []struct{ Rule, Kind, Effect string }
	}
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil {
		t.Fatalf("exit %d\n%s", code, out)
	}
	if got.Outcome != "needs_approval" || got.Rule != "large-research-payment" || got.Group != "finance" || len(got.Charges) != 3 {
		t.Fatalf("explain --json: %+v", got)
	}
	kinds := map[string]bool{}
	for _, m := range got.Matches {
		kinds[m.Kind] = true
	}
	for _, k := range []string{"agent", "allow", "budget", "approval"} {
		if !kinds[k] {
			t.Errorf("no %s match in %+v", k, got.Matches)
		}
	}
	// An intent file with an unknown field is refused.
	if err := os.WriteFile(intent, []byte(`{"amount":"1","colour":"red"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := runPolicyCtl(t, "policy", "explain", filepath.Join(policyTestdata, "example.yaml"), intent); code != 1 || !strings.Contains(errs, "unknown field") {
		t.Fatalf("unknown field: exit %d %s", code, errs)
	}
}
