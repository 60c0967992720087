package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/signerd/signerd/policyengine"
)

func init() {
	register("policy", "check, test and explain spending policies (offline)", runPolicy)
}

const policyUsage = `usage: signerctl policy <subcommand> [flags]

  check   [--self-uid N|self] [--wallet 0x…]… FILE|DIR        compile; print the hash and a summary
  test    [--self-uid N|self] [--wallet 0x…]… FILE|DIR CASES   run a cases file (fake clock, in-memory budgets)
  explain [--self-uid N|self] [--wallet 0x…]… [--now RFC3339] [--json] FILE|DIR INTENT.json
                                                               the decision and every rule that matched

--self-uid gives the uid that "uid: self" means (the daemon's uid; "self" = this process's uid).
--wallet lists the wallets the daemon holds (what "wallets: any" means). For test, the cases
file's options section is used unless these flags are given. Exit status: 0 ok, 1 policy/cases
failure, 2 usage error.
`

type walletList []common.Address

func (w *walletList) String() string { return fmt.Sprint(*w) }
func (w *walletList) Set(s string) error {
	if !common.IsHexAddress(s) || !strings.HasPrefix(strings.ToLower(s), "0x") {
		return fmt.Errorf("%q is not an address", s)
	}
	*w = append(*w, common.HexToAddress(s))
	return nil
}

type policyFlags struct {
	fs      *flag.FlagSet
	stderr  io.Writer
	selfUID string
	wallets walletList
}

func newPolicyFlags(name string, stderr io.Writer) *policyFlags {
	pf := &policyFlags{fs: flag.NewFlagSet("policy "+name, flag.ContinueOnError), stderr: stderr}
	pf.fs.SetOutput(stderr)
	pf.fs.Usage = func() { fmt.Fprint(stderr, policyUsage) }
	pf.fs.StringVar(&pf.selfUID, "self-uid", "", "uid that `uid: self` means (N or self)")
	pf.fs.Var(&pf.wallets, "wallet", "a wallet the daemon holds (repeatable)")
	return pf
}

func (pf *policyFlags) given() bool { return pf.selfUID != "" || len(pf.wallets) > 0 }

func (pf *policyFlags) options() (policyengine.CompileOptions, error) {
	var o policyengine.CompileOptions
	switch pf.selfUID {
	case "":
	case "self":
		o.SelfUID = policyengine.UID(uint32(os.Getuid()))
	default:
		u, err := strconv.ParseUint(pf.selfUID, 10, 32)
		if err != nil {
			return o, fmt.Errorf("--self-uid %q: want a number or self", pf.selfUID)
		}
		o.SelfUID = policyengine.UID(uint32(u))
	}
	o.Wallets = pf.wallets
	return o, nil
}

// parse parses args and requires exactly nargs arguments after the flags; false means a usage
// error was printed (exit status 2).
func (pf *policyFlags) parse(args []string, nargs int) bool {
	if err := pf.fs.Parse(args); err != nil {
		return false
	}
	if pf.fs.NArg() != nargs {
		fmt.Fprint(pf.stderr, policyUsage)
		return false
	}
	return true
}

// compile loads the policy named by the first argument with the compile options o. With a nil
// policy it returns the exit status, after printing why: 2 if err (from getting o) is set, 1 if
// the policy does not compile.
func (pf *policyFlags) compile(o policyengine.CompileOptions, err error) (*policyengine.Policy, int) {
	if err != nil {
		fmt.Fprintln(pf.stderr, err)
		return nil, 2
	}
	p := loadPolicy(pf.fs.Arg(0), o, pf.stderr)
	if p == nil {
		return nil, 1
	}
	return p, 0
}

func runPolicy(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, policyUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	switch args[0] {
	case "check":
		return policyCheck(args[1:], stdout, stderr)
	case "test":
		return policyTest(args[1:], stdout, stderr)
	case "explain":
		return policyExplain(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "signerctl policy: unknown subcommand %q\n%s", args[0], policyUsage)
	return 2
}

func loadPolicy(path string, o policyengine.CompileOptions, stderr io.Writer) *policyengine.Policy {
	p, err := policyengine.Load(path, o)
	if err != nil {
		var ces policyengine.CompileErrors
		if errors.As(err, &ces) {
			for _, e := range ces {
				fmt.Fprintln(stderr, e)
			}
			fmt.Fprintf(stderr, "policy does not compile: %d error(s)\n", len(ces))
		} else {
			fmt.Fprintln(stderr, err)
		}
		return nil
	}
	return p
}

func policyCheck(args []string, stdout, stderr io.Writer) int {
	pf := newPolicyFlags("check", stderr)
	if !pf.parse(args, 1) {
		return 2
	}
	p, code := pf.compile(pf.options())
	if p == nil {
		return code
	}
	printSummary(stdout, p)
	return 0
}

func printSummary(w io.Writer, p *policyengine.Policy) {
	h := p.Hash()
	s := p.Summary()
	fmt.Fprintf(w, "ok: %s\n", strings.Join(s.Files, ", "))
	fmt.Fprintf(w, "hash:       sha256:%x\n", h[:])
	fmt.Fprintf(w, "agents:     %d (%s)\n", s.Agents, strings.Join(p.Agents(), ", "))
	for _, a := range p.Agents() {
		ws := p.Wallets(a)
		var parts []string
		for _, x := range ws {
			parts = append(parts, x.Hex())
		}
		if p.AnyWallet(a) {
			parts = append(parts, "any wallet the daemon holds")
		}
		fmt.Fprintf(w, "  %s wallets: %s\n", a, strings.Join(parts, ", "))
	}
	fmt.Fprintf(w, "assets:     %d\n", s.Assets)
	fmt.Fprintf(w, "rules:      %d allow, %d deny (%d seller entries)\n", s.AllowRules, s.DenyRules, s.Sellers)
	fmt.Fprintf(w, "budgets:    %d amount budgets, %d rate limits\n", s.Budgets, s.RateLimits)
	fmt.Fprintf(w, "approvals:  %d\n", s.Approvals)
	fmt.Fprintf(w, "max skew:   %s\n", p.MaxTimestampSkew())
	k := p.KillSwitch()
	if k.DenialBurst.Count > 0 || len(k.SpendVelocity) > 0 {
		var parts []string
		if k.DenialBurst.Count > 0 {
			parts = append(parts, fmt.Sprintf("%d denials per %s", k.DenialBurst.Count, k.DenialBurst.Window))
		}
		for _, sv := range k.SpendVelocity {
			parts = append(parts, fmt.Sprintf("spend over %s per %s", policyengine.FormatAmount(sv.Limit, sv.Asset), sv.Window))
		}
		fmt.Fprintf(w, "auto-trip:  %s\n", strings.Join(parts, "; "))
	}
}

func policyTest(args []string, stdout, stderr io.Writer) int {
	pf := newPolicyFlags("test", stderr)
	verbose := pf.fs.Bool("v", false, "print every step, not only failures")
	if !pf.parse(args, 2) {
		return 2
	}
	src, err := os.ReadFile(pf.fs.Arg(1))
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	var o policyengine.CompileOptions
	if pf.given() {
		o, err = pf.options()
	} else {
		o, err = policyengine.CasesCompileOptions(src)
	}
	p, code := pf.compile(o, err)
	if p == nil {
		return code
	}
	rep, err := policyengine.RunCases(p, src)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	h := p.Hash()
	fmt.Fprintf(stdout, "policy sha256:%x\n", h[:])
	for _, r := range rep.Results {
		if r.Mismatch != "" {
			fmt.Fprintf(stdout, "FAIL step %d %q: %s\n", r.Step, r.Name, r.Mismatch)
		} else if *verbose {
			fmt.Fprintf(stdout, "ok   step %d %q: %s\n", r.Step, r.Name, r.Decision)
		}
	}
	fmt.Fprintf(stdout, "%d checks, %d failed\n", len(rep.Results), rep.Failures)
	if rep.Failures > 0 {
		return 1
	}
	return 0
}

type explainJSON struct {
	Policy   string               `json:"policy_sha256"`
	Now      time.Time            `json:"now"`
	Agent    string               `json:"agent,omitempty"`
	Outcome  string               `json:"outcome"`
	Code     string               `json:"code,omitempty"`
	Rule     string               `json:"rule,omitempty"`
	Reason   string               `json:"reason,omitempty"`
	Group    string               `json:"group,omitempty"`
	TimeoutS int64                `json:"timeout_s,omitempty"`
	Charges  []chargeJSON         `json:"charges"`
	Matches  []policyengine.Match `json:"matches"`
}

type chargeJSON struct {
	Budget  string `json:"budget"`
	Key     string `json:"key"`
	WindowS int64  `json:"window_s"`
	Limit   string `json:"limit"`
	Amount  string `json:"amount"`
	Count   bool   `json:"count,omitempty"`
}

func policyExplain(args []string, stdout, stderr io.Writer) int {
	pf := newPolicyFlags("explain", stderr)
	nowS := pf.fs.String("now", "", "appliance clock (RFC 3339); default: the intent's timestamp")
	asJSON := pf.fs.Bool("json", false, "print JSON")
	if !pf.parse(args, 2) {
		return 2
	}
	p, code := pf.compile(pf.options())
	if p == nil {
		return code
	}
	raw, err := os.ReadFile(pf.fs.Arg(1))
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	in, err := policyengine.DecodeIntent(raw)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	now := time.Unix(int64(in.Timestamp), 0).UTC()
	if *nowS != "" {
		if now, err = time.Parse(time.RFC3339, *nowS); err != nil {
			fmt.Fprintf(stderr, "--now: %v\n", err)
			return 2
		}
	} else if in.Timestamp == 0 || in.Timestamp > 1<<40 {
		now = time.Now().UTC()
	}
	d := p.Explain(in, policyengine.NewMemLedger(), now)
	h := p.Hash()
	if *asJSON {
		out := explainJSON{Policy: fmt.Sprintf("%x", h[:]), Now: now, Agent: d.Agent, Outcome: d.Outcome.String(), Code: d.Code,
			Rule: d.Rule, Reason: d.Reason, Group: d.Group, TimeoutS: int64(d.Timeout / time.Second), Matches: d.Matches, Charges: []chargeJSON{}}
		for _, c := range d.Charges {
			out.Charges = append(out.Charges, chargeJSON{c.Budget, c.Key, int64(c.Window / time.Second), c.Limit.String(), c.Amount.String(), c.Count})
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(out)
		return 0
	}
	fmt.Fprintf(stdout, "policy   sha256:%x\nnow      %s (budgets empty: in-memory ledger)\n", h[:], now.Format(time.RFC3339))
	fmt.Fprintf(stdout, "decision %s\n", d.Outcome)
	if d.Agent != "" {
		fmt.Fprintf(stdout, "agent    %s\n", d.Agent)
	}
	if d.Outcome == policyengine.Deny {
		fmt.Fprintf(stdout, "code     %s\n", d.Code)
	}
	fmt.Fprintf(stdout, "rule     %s\n", d.Rule)
	if d.Reason != "" {
		fmt.Fprintf(stdout, "reason   %s\n", d.Reason)
	}
	if d.Outcome == policyengine.NeedsApproval {
		fmt.Fprintf(stdout, "group    %s\ntimeout  %s\n", d.Group, d.Timeout)
	}
	if len(d.Matches) > 0 {
		fmt.Fprintln(stdout, "matched:")
		for _, m := range d.Matches {
			fmt.Fprintf(stdout, "  %-9s %-28s %-32s %s\n", m.Kind, m.Rule, m.Effect, m.Detail)
		}
	}
	if len(d.Charges) > 0 {
		cs := append([]policyengine.Charge(nil), d.Charges...)
		sort.Slice(cs, func(i, j int) bool { return cs[i].Budget < cs[j].Budget })
		fmt.Fprintln(stdout, "charges (debited atomically if signed):")
		for _, c := range cs {
			win := "lifetime"
			if c.Window > 0 {
				win = c.Window.String()
			}
			fmt.Fprintf(stdout, "  %-20s +%s of %s per %s  key %s\n", c.Budget, c.Amount, c.Limit, win, c.Key)
		}
	}
	return 0
}
