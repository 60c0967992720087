package policyengine

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"gopkg.in/yaml.v3"
)

// A cases file is a sequence of steps run against one policy with a fake clock and a MemLedger,
// so budgets carry across steps. Format (YAML, unknown fields are errors):
//
//	options: {self_uid: 1000, wallets: ["0x…"]}   # CompileOptions for the policy (optional)
//	start: 2026-01-05T09:00:00Z                   # the fake clock's start (default 2026-01-01T00:00:00Z)
//	intent_defaults: {agent: research-bot, …}     # merged into every step's intent
//	steps:
//	  - name: small purchase
//	    intent: {pay_to: "0x…", amount: "0.05 USDC"}
//	    expect: allow                             # allow | deny | needs_approval
//	    code: seller_not_allowed                  # deny: the expected code
//	    rule: research-data                       # optional: the deciding rule
//	    group: finance                            # optional (needs_approval)
//	    repeat: 3                                 # run the step 3 times (default 1)
//	    approve: true                             # needs_approval: apply the charges as if approved
//	  - advance: 1h                               # move the clock
//
// Intent fields are those of Intent's JSON form; in addition asset may be a declared symbol,
// amount may be written "0.05 USDC", timestamp defaults to the clock and timestamp_offset: -2m
// shifts it, and a field set to null removes a default. Allowed (and approved) steps debit their
// charges through MemLedger.Apply.
type casesFile struct {
	Options        *casesOptions `yaml:"options"`
	Start          string        `yaml:"start"`
	IntentDefaults yaml.Node     `yaml:"intent_defaults"`
	Steps          []caseStep    `yaml:"steps"`
}

type casesOptions struct {
	SelfUID *uint32  `yaml:"self_uid"`
	Wallets []string `yaml:"wallets"`
}

type caseStep struct {
	Name    string    `yaml:"name"`
	Advance string    `yaml:"advance"`
	Intent  yaml.Node `yaml:"intent"`
	Expect  string    `yaml:"expect"`
	Code    string    `yaml:"code"`
	Rule    string    `yaml:"rule"`
	Group   string    `yaml:"group"`
	Repeat  int       `yaml:"repeat"`
	Approve bool      `yaml:"approve"`
}

// CaseResult is the outcome of one executed step.
type CaseResult struct {
	Step     int    // 1-based index in steps
	Name     string // step name (with #n for repeats)
	Decision Decision
	Mismatch string // "" when the decision matched the expectation
}

// CasesReport is what RunCases returns.
type CasesReport struct {
	Policy   *Policy
	Results  []CaseResult
	Failures int
}

// DefaultCasesStart is the fake clock's start when a cases file gives none.
var DefaultCasesStart = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// CasesCompileOptions reads only the options section of a cases file.
func CasesCompileOptions(cases []byte) (CompileOptions, error) {
	var cf casesFile
	if err := decodeStrictYAML(cases, &cf); err != nil {
		return CompileOptions{}, err
	}
	return cf.compileOptions()
}

func (cf *casesFile) compileOptions() (CompileOptions, error) {
	var o CompileOptions
	if cf.Options == nil {
		return o, nil
	}
	o.SelfUID = cf.Options.SelfUID
	for _, w := range cf.Options.Wallets {
		if !isAddress(w) {
			return o, fmt.Errorf("options.wallets: %q is not an address", w)
		}
		o.Wallets = append(o.Wallets, common.HexToAddress(w))
	}
	return o, nil
}

func decodeStrictYAML(b []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("cases: %w", err)
	}
	return nil
}

// RunCasesFiles compiles the policy at policyPath with the cases file's options and runs it.
func RunCasesFiles(policyPath, casesPath string) (*CasesReport, error) {
	src, err := os.ReadFile(casesPath)
	if err != nil {
		return nil, err
	}
	opts, err := CasesCompileOptions(src)
	if err != nil {
		return nil, err
	}
	p, err := Load(policyPath, opts)
	if err != nil {
		return nil, err
	}
	return RunCases(p, src)
}

// RunCases runs a cases file against p. An error means the cases file itself is malformed.
func RunCases(p *Policy, cases []byte) (*CasesReport, error) {
	var cf casesFile
	if err := decodeStrictYAML(cases, &cf); err != nil {
		return nil, err
	}
	now := DefaultCasesStart
	if cf.Start != "" {
		t, err := time.Parse(time.RFC3339, cf.Start)
		if err != nil {
			return nil, fmt.Errorf("cases: start: %w", err)
		}
		now = t
	}
	if len(cf.Steps) == 0 {
		return nil, fmt.Errorf("cases: no steps")
	}
	defaults, err := nodeMap(&cf.IntentDefaults)
	if err != nil {
		return nil, fmt.Errorf("cases: intent_defaults: %w", err)
	}
	rep := &CasesReport{Policy: p}
	led := NewMemLedger()
	for i, st := range cf.Steps {
		if st.Advance != "" {
			if st.Intent.Kind != 0 || st.Expect != "" {
				return nil, fmt.Errorf("cases: step %d: advance is a step of its own", i+1)
			}
			d, err := parseAdvance(st.Advance)
			if err != nil {
				return nil, fmt.Errorf("cases: step %d: %w", i+1, err)
			}
			now = now.Add(d)
			continue
		}
		switch st.Expect {
		case "allow", "deny", "needs_approval":
		default:
			return nil, fmt.Errorf("cases: step %d (%s): expect must be allow, deny or needs_approval", i+1, st.Name)
		}
		if st.Expect == "deny" && !isCode(st.Code) {
			return nil, fmt.Errorf("cases: step %d (%s): deny needs a known code, got %q", i+1, st.Name, st.Code)
		}
		n := st.Repeat
		if n <= 0 {
			n = 1
		}
		stepIntent, err := nodeMap(&st.Intent)
		if err != nil {
			return nil, fmt.Errorf("cases: step %d (%s): intent: %w", i+1, st.Name, err)
		}
		for r := 0; r < n; r++ {
			in, err := buildCaseIntent(p, defaults, stepIntent, now)
			if err != nil {
				return nil, fmt.Errorf("cases: step %d (%s): %w", i+1, st.Name, err)
			}
			d := p.Explain(in, led, now)
			name := st.Name
			if n > 1 {
				name = fmt.Sprintf("%s #%d", st.Name, r+1)
			}
			res := CaseResult{Step: i + 1, Name: name, Decision: d}
			var why []string
			if d.Outcome.String() != st.Expect {
				why = append(why, fmt.Sprintf("want %s, got %s", st.Expect, d))
			} else {
				if st.Code != "" && d.Code != st.Code {
					why = append(why, fmt.Sprintf("want code %s, got %s (%s)", st.Code, d.Code, d.Reason))
				}
				if st.Rule != "" && d.Rule != st.Rule {
					why = append(why, fmt.Sprintf("want rule %s, got %s", st.Rule, d.Rule))
				}
				if st.Group != "" && d.Group != st.Group {
					why = append(why, fmt.Sprintf("want group %s, got %s", st.Group, d.Group))
				}
			}
			if d.Outcome == Allow || (d.Outcome == NeedsApproval && st.Approve) {
				if err := led.Apply(d.Charges, now); err != nil {
					why = append(why, fmt.Sprintf("applying charges failed: %v", err))
				}
			}
			res.Mismatch = strings.Join(why, "; ")
			if res.Mismatch != "" {
				rep.Failures++
			}
			rep.Results = append(rep.Results, res)
		}
	}
	return rep, nil
}

func parseAdvance(s string) (time.Duration, error) {
	if strings.HasSuffix(s, "d") {
		return parseDuration(s)
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("advance %q: write a duration such as 30s, 1h or 1d", s)
	}
	return d, nil
}

// buildCaseIntent merges defaults and the step's intent, resolves symbols and decodes it.
func buildCaseIntent(p *Policy, defaults, step map[string]any, now time.Time) (*Intent, error) {
	m := map[string]any{}
	for k, v := range defaults {
		m[k] = v
	}
	for k, v := range step {
		if v == nil {
			delete(m, k)
			continue
		}
		m[k] = v
	}
	if s, ok := m["asset"].(string); ok && !isAddress(s) {
		a, ok := p.Asset(s)
		if !ok {
			return nil, fmt.Errorf("unknown asset symbol %q", s)
		}
		m["asset"] = a.Address.Hex()
	}
	if s, ok := m["amount"].(string); ok && strings.Contains(s, " ") {
		v, a, err := p.ParseAmount(s)
		if err != nil {
			return nil, err
		}
		if a != nil {
			if _, has := m["asset"]; !has {
				m["asset"] = a.Address.Hex()
			}
		}
		m["amount"] = v.String()
	}
	ts := now.Unix()
	if off, ok := m["timestamp_offset"]; ok {
		s, _ := off.(string)
		neg := strings.HasPrefix(s, "-")
		d, err := time.ParseDuration(strings.TrimPrefix(strings.TrimPrefix(s, "-"), "+"))
		if err != nil {
			return nil, fmt.Errorf("timestamp_offset %v: %w", off, err)
		}
		if neg {
			d = -d
		}
		ts += int64(d / time.Second)
		delete(m, "timestamp_offset")
	}
	if _, ok := m["timestamp"]; !ok {
		m["timestamp"] = ts
	}
	// Unknown keys are caught by DecodeIntent.
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return DecodeIntent(b)
}

// nodeMap converts a YAML mapping into JSON-ready values, keeping the source text of scalars:
// an unquoted 0x… address stays a string (YAML would read it as an integer), plain numbers
// become json.Number, true/false booleans, null nil.
func nodeMap(n *yaml.Node) (map[string]any, error) {
	if n.Kind == 0 {
		return nil, nil
	}
	v, err := nodeValue(n, 0)
	if err != nil {
		return nil, err
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("line %d: expected a mapping", n.Line)
	}
	return m, nil
}

func nodeValue(n *yaml.Node, depth int) (any, error) {
	if depth > 8 {
		return nil, fmt.Errorf("line %d: nested too deeply", n.Line)
	}
	switch n.Kind {
	case yaml.AliasNode:
		return nodeValue(n.Alias, depth+1)
	case yaml.ScalarNode:
		switch {
		case n.Tag == "!!null":
			return nil, nil
		case n.Tag == "!!bool":
			return n.Value == "true", nil
		case (n.Tag == "!!int" || n.Tag == "!!float") && !strings.HasPrefix(n.Value, "0x") && !strings.HasPrefix(n.Value, "0X"):
			return json.Number(n.Value), nil
		}
		return n.Value, nil
	case yaml.SequenceNode:
		out := make([]any, 0, len(n.Content))
		for _, c := range n.Content {
			v, err := nodeValue(c, depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	case yaml.MappingNode:
		out := map[string]any{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Value == "<<" { // merge key: copy the referenced mapping's entries first
				mv, err := nodeValue(v, depth+1)
				if err != nil {
					return nil, err
				}
				mm, ok := mv.(map[string]any)
				if !ok {
					return nil, fmt.Errorf("line %d: << needs a mapping", k.Line)
				}
				for kk, vv := range mm {
					if _, set := out[kk]; !set {
						out[kk] = vv
					}
				}
				continue
			}
			val, err := nodeValue(v, depth+1)
			if err != nil {
				return nil, err
			}
			out[k.Value] = val
		}
		return out, nil
	}
	return nil, fmt.Errorf("line %d: unexpected YAML", n.Line)
}
