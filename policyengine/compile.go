package policyengine

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"gopkg.in/yaml.v3"
)

// CompileOptions are facts about the running daemon the policy may refer to.
type CompileOptions struct {
	// SelfUID is the daemon's own uid; a caller written `uid: self` means this uid. When nil,
	// `uid: self` is a compile error.
	SelfUID *uint32
	// Wallets are the wallets the daemon holds; an agent declared `wallets: any` may use any of
	// them (Wallets(agent) returns this list, the first being the default).
	Wallets []common.Address
}

// UID returns a pointer to u, for CompileOptions.SelfUID.
func UID(u uint32) *uint32 { return &u }

// DefaultMaxTimestampSkew applies when settings.max_timestamp_skew is not written.
const DefaultMaxTimestampSkew = 60 * time.Second

// maxSourceBytes bounds one policy file.
const maxSourceBytes = 16 << 20

// Load compiles a policy file, or every *.yaml / *.yml file of a directory (not recursive) as one
// policy. It only reads files.
func Load(path string, opts CompileOptions) (*Policy, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("policyengine: %w", err)
	}
	files := map[string][]byte{}
	var names []string
	if st.IsDir() {
		ents, err := os.ReadDir(path)
		if err != nil {
			return nil, fmt.Errorf("policyengine: %w", err)
		}
		for _, e := range ents {
			n := e.Name()
			if e.Type().IsRegular() && (strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml")) {
				names = append(names, filepath.Join(path, n))
			}
		}
		if len(names) == 0 {
			return nil, fmt.Errorf("policyengine: no *.yaml files in %s", path)
		}
	} else {
		names = []string{path}
	}
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			return nil, fmt.Errorf("policyengine: %w", err)
		}
		files[n] = b
	}
	return Compile(files, opts)
}

// item is one YAML element with the file it came from.
type item struct {
	file string
	key  *yaml.Node
	val  *yaml.Node
}

type compiler struct {
	opts CompileOptions
	errs CompileErrors
	file string
	p    *Policy
	ids  map[string]string // id -> where defined
}

func (c *compiler) errAt(file string, n *yaml.Node, path, format string, args ...any) {
	if len(c.errs) >= maxErrors {
		return
	}
	e := &CompileError{File: file, Path: path, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line, e.Col = n.Line, n.Column
	}
	c.errs = append(c.errs, e)
}

// fields checks a mapping node: only the allowed keys, no duplicates; returns key -> value.
func (c *compiler) fields(file string, n *yaml.Node, path string, allowed ...string) map[string]*yaml.Node {
	out := map[string]*yaml.Node{}
	if n.Kind != yaml.MappingNode {
		c.errAt(file, n, path, "expected a mapping (key: value), found %s", kindName(n))
		return out
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			c.errAt(file, k, path, "keys must be plain strings")
			continue
		}
		ok := false
		for _, a := range allowed {
			if a == k.Value {
				ok = true
				break
			}
		}
		if !ok {
			c.errAt(file, k, path, "unknown field %q (allowed: %s)", k.Value, strings.Join(allowed, ", "))
			continue
		}
		if _, dup := out[k.Value]; dup {
			c.errAt(file, k, path, "field %q given twice", k.Value)
			continue
		}
		out[k.Value] = v
	}
	return out
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "nothing"
		}
		return fmt.Sprintf("%q", n.Value)
	case yaml.AliasNode:
		return "an alias"
	}
	return "a document"
}

func (c *compiler) scalar(file string, n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		c.errAt(file, n, path, "expected a value, found %s", kindName(n))
		return "", false
	}
	return n.Value, true
}

func (c *compiler) str(file string, n *yaml.Node, path string) (string, bool) {
	s, ok := c.scalar(file, n, path)
	if ok && s == "" {
		c.errAt(file, n, path, "must not be empty")
		return "", false
	}
	return s, ok
}

// list returns the items of a sequence; a scalar "any" returns (nil, true, true).
func (c *compiler) list(file string, n *yaml.Node, path string, anyOK bool) (items []*yaml.Node, isAny bool, ok bool) {
	if n.Kind == yaml.ScalarNode && n.Value == "any" && n.Tag != "!!null" && n.Style == 0 {
		if !anyOK {
			c.errAt(file, n, path, "`any` is not allowed here")
			return nil, false, false
		}
		return nil, true, true
	}
	if n.Kind != yaml.SequenceNode {
		if anyOK {
			c.errAt(file, n, path, "expected a list or `any`, found %s", kindName(n))
		} else {
			c.errAt(file, n, path, "expected a list, found %s", kindName(n))
		}
		return nil, false, false
	}
	if len(n.Content) == 0 {
		c.errAt(file, n, path, "empty list (an empty list would match nothing; remove the rule or write `any`)")
		return nil, false, false
	}
	return n.Content, false, true
}

func (c *compiler) uint(file string, n *yaml.Node, path string, bits int) (uint64, bool) {
	s, ok := c.scalar(file, n, path)
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseUint(s, 10, bits)
	if err != nil {
		c.errAt(file, n, path, "expected a whole number (0..%d), found %q", uint64(1)<<bits-1, s)
		return 0, false
	}
	return v, true
}

func (c *compiler) address(file string, n *yaml.Node, path string) (common.Address, bool) {
	s, ok := c.scalar(file, n, path)
	if !ok {
		return common.Address{}, false
	}
	if !isAddress(s) {
		c.errAt(file, n, path, "%q is not an address (0x + 40 hex digits)", s)
		return common.Address{}, false
	}
	return common.HexToAddress(s), true
}

func isAddress(s string) bool {
	if len(s) != 42 || (s[:2] != "0x" && s[:2] != "0X") {
		return false
	}
	_, err := hex.DecodeString(s[2:])
	return err == nil
}

var (
	reIdent   = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$`)
	reSymbol  = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9._-]{0,31}$`)
	reCAIP2   = regexp.MustCompile(`^[-a-z0-9]{3,8}:[-_a-zA-Z0-9]{1,32}$`)
	reHost    = regexp.MustCompile(`^(\*|(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*)$`)
	reSHA256  = regexp.MustCompile(`^[0-9a-f]{64}$`)
	reLabelKV = regexp.MustCompile(`^[A-Za-z0-9._/-]{1,63}$`)
)

func (c *compiler) ident(file string, n *yaml.Node, path, what string) (string, bool) {
	s, ok := c.str(file, n, path)
	if !ok {
		return "", false
	}
	if !reIdent.MatchString(s) {
		c.errAt(file, n, path, "%s %q: use letters, digits, '.', '_' and '-' (at most 64)", what, s)
		return "", false
	}
	return s, true
}

func (c *compiler) duration(file string, n *yaml.Node, path string) (time.Duration, bool) {
	s, ok := c.str(file, n, path)
	if !ok {
		return 0, false
	}
	d, err := parseDuration(s)
	if err != nil {
		c.errAt(file, n, path, "%v", err)
		return 0, false
	}
	return d, true
}

// parseDuration accepts Go durations ("90s", "1h30m"), whole days ("30d") and minute/hour/day.
func parseDuration(s string) (time.Duration, error) {
	switch s {
	case "minute":
		return time.Minute, nil
	case "hour":
		return time.Hour, nil
	case "day":
		return 24 * time.Hour, nil
	}
	var d time.Duration
	if strings.HasSuffix(s, "d") {
		n, err := strconv.ParseUint(strings.TrimSuffix(s, "d"), 10, 16)
		if err != nil {
			return 0, fmt.Errorf("duration %q: write e.g. 30s, 5m, 1h, 1d or 30d", s)
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		d, err = time.ParseDuration(s)
		if err != nil {
			return 0, fmt.Errorf("duration %q: write e.g. 30s, 5m, 1h, 1d or 30d", s)
		}
	}
	if d < time.Second || d > 366*24*time.Hour {
		return 0, fmt.Errorf("duration %q must be between 1s and 366d", s)
	}
	if d%time.Second != 0 {
		return 0, fmt.Errorf("duration %q must be whole seconds", s)
	}
	return d, nil
}

// Compile compiles policy sources (file name -> YAML) into a Policy. Several files form one
// policy: assets and agents are merged by name, rules, budgets and approvals are concatenated,
// settings and kill_switch may appear in one file only. File names only label errors.
func Compile(files map[string][]byte, opts CompileOptions) (*Policy, error) {
	c := &compiler{opts: opts, ids: map[string]string{}, p: &Policy{
		agents: map[string]*agentDef{}, assets: map[string]*Asset{}, assetByAd: map[common.Address]*Asset{},
		maxSkew: DefaultMaxTimestampSkew,
	}}
	if len(files) == 0 {
		return nil, CompileErrors{{Msg: "no policy files"}}
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	c.p.sources = names

	var assets, agents, rules, budgets, approvals []item
	var settings, kill *item
	for _, name := range names {
		src := files[name]
		if len(src) > maxSourceBytes {
			c.errAt(name, nil, "", "file larger than %d bytes", maxSourceBytes)
			continue
		}
		var doc yaml.Node
		if err := yaml.Unmarshal(src, &doc); err != nil {
			c.errAt(name, nil, "", "YAML: %v", strings.TrimPrefix(err.Error(), "yaml: "))
			continue
		}
		if doc.Kind == 0 {
			c.errAt(name, nil, "", "empty file")
			continue
		}
		if bad := findAlias(&doc); bad != nil {
			c.errAt(name, bad, "", "YAML anchors, aliases and merge keys are not allowed in policies")
			continue
		}
		root := doc.Content[0]
		f := c.fields(name, root, "", "version", "settings", "assets", "agents", "rules", "budgets", "approvals", "kill_switch")
		if v, ok := f["version"]; !ok {
			c.errAt(name, root, "version", "missing `version: 1`")
		} else if s, _ := c.scalar(name, v, "version"); s != "1" {
			c.errAt(name, v, "version", "unsupported policy version %q (this signerd reads version 1)", s)
		}
		mapItems := func(key string, dst *[]item) {
			n, ok := f[key]
			if !ok {
				return
			}
			if n.Kind != yaml.MappingNode {
				c.errAt(name, n, key, "expected a mapping of name: definition, found %s", kindName(n))
				return
			}
			for i := 0; i+1 < len(n.Content); i += 2 {
				*dst = append(*dst, item{name, n.Content[i], n.Content[i+1]})
			}
		}
		listItems := func(key string, dst *[]item) {
			n, ok := f[key]
			if !ok {
				return
			}
			if n.Kind != yaml.SequenceNode {
				c.errAt(name, n, key, "expected a list, found %s", kindName(n))
				return
			}
			for _, e := range n.Content {
				*dst = append(*dst, item{name, nil, e})
			}
		}
		mapItems("assets", &assets)
		mapItems("agents", &agents)
		listItems("rules", &rules)
		listItems("budgets", &budgets)
		listItems("approvals", &approvals)
		for _, k := range []string{"settings", "kill_switch"} {
			n, ok := f[k]
			if !ok {
				continue
			}
			dst := &settings
			if k == "kill_switch" {
				dst = &kill
			}
			if *dst != nil {
				c.errAt(name, n, k, "%s is already defined in %s", k, (*dst).file)
				continue
			}
			*dst = &item{name, nil, n}
		}
	}
	if len(c.errs) > 0 {
		return nil, c.errs
	}
	if settings != nil {
		c.compileSettings(*settings)
	}
	for _, it := range assets {
		c.compileAsset(it)
	}
	for _, it := range agents {
		c.compileAgent(it)
	}
	if len(agents) == 0 {
		c.errAt(names[0], nil, "agents", "no agents: declare at least one agent and the callers it maps from")
	}
	for i, it := range rules {
		c.compileRule(i, it)
	}
	for i, it := range budgets {
		c.compileBudget(i, it)
	}
	for i, it := range approvals {
		c.compileApproval(i, it)
	}
	if kill != nil {
		c.compileKill(*kill)
	}
	if len(c.errs) > 0 {
		return nil, c.errs
	}
	p := c.p
	sort.Slice(p.agentList, func(i, j int) bool { return p.agentList[i].name < p.agentList[j].name })
	sort.Slice(p.allowRules, func(i, j int) bool { return p.allowRules[i].id < p.allowRules[j].id })
	sort.Slice(p.denyRules, func(i, j int) bool { return p.denyRules[i].id < p.denyRules[j].id })
	sort.Slice(p.budgets, func(i, j int) bool { return p.budgets[i].id < p.budgets[j].id })
	sort.Slice(p.approvals, func(i, j int) bool { return p.approvals[i].id < p.approvals[j].id })
	enc, err := encodeIR(p)
	if err != nil {
		return nil, fmt.Errorf("policyengine: encoding compiled policy: %w", err)
	}
	p.hash = sha256.Sum256(enc)
	return p, nil
}

func findAlias(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.AliasNode || n.Anchor != "" || n.Tag == "!!merge" {
		return n
	}
	for _, ch := range n.Content {
		if b := findAlias(ch); b != nil {
			return b
		}
	}
	return nil
}

func (c *compiler) defineID(file string, n *yaml.Node, path, id string) bool {
	if prev, dup := c.ids[id]; dup {
		c.errAt(file, n, path, "id %q is already used (%s); ids must be unique across rules, budgets and approvals", id, prev)
		return false
	}
	c.ids[id] = fmt.Sprintf("%s:%d", file, n.Line)
	return true
}

func (c *compiler) compileSettings(it item) {
	f := c.fields(it.file, it.val, "settings", "max_timestamp_skew")
	if n, ok := f["max_timestamp_skew"]; ok {
		if d, ok := c.duration(it.file, n, "settings.max_timestamp_skew"); ok {
			if d > time.Hour {
				c.errAt(it.file, n, "settings.max_timestamp_skew", "at most 1h")
			}
			c.p.maxSkew = d
		}
	}
}

func (c *compiler) compileAsset(it item) {
	sym := it.key.Value
	path := "assets." + sym
	if !reSymbol.MatchString(sym) {
		c.errAt(it.file, it.key, path, "asset symbol %q: letters, digits, '.', '_', '-', starting with a letter", sym)
		return
	}
	if _, dup := c.p.assets[sym]; dup {
		c.errAt(it.file, it.key, path, "asset %s is declared twice", sym)
		return
	}
	f := c.fields(it.file, it.val, path, "address", "decimals")
	a := &Asset{Symbol: sym}
	an, ok1 := f["address"]
	dn, ok2 := f["decimals"]
	if !ok1 || !ok2 {
		c.errAt(it.file, it.val, path, "an asset needs address and decimals")
		return
	}
	addr, ok := c.address(it.file, an, path+".address")
	if !ok {
		return
	}
	dec, ok := c.uint(it.file, dn, path+".decimals", 8)
	if !ok {
		return
	}
	if dec > 36 {
		c.errAt(it.file, dn, path+".decimals", "at most 36 decimals")
		return
	}
	if other, dup := c.p.assetByAd[addr]; dup {
		c.errAt(it.file, an, path+".address", "address already declared as %s", other.Symbol)
		return
	}
	a.Address, a.Decimals = addr, uint8(dec)
	c.p.assets[sym] = a
	c.p.assetByAd[addr] = a
}

func (c *compiler) compileAgent(it item) {
	name := it.key.Value
	path := "agents." + name
	if !reIdent.MatchString(name) {
		c.errAt(it.file, it.key, path, "agent name %q: use letters, digits, '.', '_' and '-'", name)
		return
	}
	if _, dup := c.p.agents[name]; dup {
		c.errAt(it.file, it.key, path, "agent %s is declared twice", name)
		return
	}
	f := c.fields(it.file, it.val, path, "callers", "wallets", "description")
	a := &agentDef{name: name, walletSet: map[common.Address]struct{}{}}
	cn, ok := f["callers"]
	if !ok {
		c.errAt(it.file, it.val, path, "an agent needs callers (which socket peers it is)")
	} else if items, _, ok := c.list(it.file, cn, path+".callers", false); ok {
		for i, e := range items {
			if m, ok := c.compileCaller(it.file, e, fmt.Sprintf("%s.callers[%d]", path, i)); ok {
				a.callers = append(a.callers, m)
			}
		}
	}
	wn, ok := f["wallets"]
	if !ok {
		c.errAt(it.file, it.val, path, "an agent needs wallets (a list of addresses, or `any` for the wallets the daemon holds)")
	} else if items, isAny, ok := c.list(it.file, wn, path+".wallets", true); ok {
		if isAny {
			a.anyWallet = true
			for _, w := range c.opts.Wallets {
				if _, dup := a.walletSet[w]; !dup && w != (common.Address{}) {
					a.walletSet[w] = struct{}{}
					a.wallets = append(a.wallets, w)
				}
			}
		}
		for i, e := range items {
			w, ok := c.address(it.file, e, fmt.Sprintf("%s.wallets[%d]", path, i))
			if !ok {
				continue
			}
			if _, dup := a.walletSet[w]; dup {
				c.errAt(it.file, e, fmt.Sprintf("%s.wallets[%d]", path, i), "wallet listed twice")
				continue
			}
			a.walletSet[w] = struct{}{}
			a.wallets = append(a.wallets, w)
		}
	}
	if d, ok := f["description"]; ok {
		c.scalar(it.file, d, path+".description")
	}
	c.p.agents[name] = a
	c.p.agentList = append(c.p.agentList, a)
}

func (c *compiler) compileCaller(file string, n *yaml.Node, path string) (callerMatch, bool) {
	var m callerMatch
	f := c.fields(file, n, path, "uid", "gid", "user", "group", "exe", "exe_sha256")
	okAll := true
	if v, ok := f["uid"]; ok {
		if v.Kind == yaml.ScalarNode && v.Value == "self" {
			if c.opts.SelfUID == nil {
				c.errAt(file, v, path+".uid", "`uid: self` needs the daemon's uid (CompileOptions.SelfUID / --self-uid)")
				okAll = false
			} else {
				u := *c.opts.SelfUID
				m.uid = &u
			}
		} else if u, ok := c.uint(file, v, path+".uid", 32); ok {
			u32 := uint32(u)
			m.uid = &u32
		} else {
			okAll = false
		}
	}
	if v, ok := f["gid"]; ok {
		if g, ok := c.uint(file, v, path+".gid", 32); ok {
			g32 := uint32(g)
			m.gid = &g32
		} else {
			okAll = false
		}
	}
	for _, k := range []string{"user", "group", "exe", "exe_sha256"} {
		v, ok := f[k]
		if !ok {
			continue
		}
		s, ok := c.str(file, v, path+"."+k)
		if !ok {
			okAll = false
			continue
		}
		switch k {
		case "user":
			m.user = s
		case "group":
			m.group = s
		case "exe":
			if !strings.HasPrefix(s, "/") {
				c.errAt(file, v, path+".exe", "exe must be an absolute path")
				okAll = false
			}
			m.exe = s
		case "exe_sha256":
			if !reSHA256.MatchString(s) {
				c.errAt(file, v, path+".exe_sha256", "expected 64 lowercase hex digits")
				okAll = false
			}
			m.exeSHA256 = s
		}
	}
	if m.uid == nil && m.gid == nil && m.user == "" && m.group == "" && okAll {
		c.errAt(file, n, path, "a caller needs at least one of uid, gid, user, group (exe alone does not identify a caller)")
		okAll = false
	}
	return m, okAll
}

var selectorFields = []string{"actions", "agents", "sellers", "networks", "chain_ids", "assets", "versions", "labels"}

// compileActions reads `actions:` (a list of action names; `any` is refused so that a later
// signerd with more actions never widens a policy). written is false when the field is absent.
func (c *compiler) compileActions(file string, f map[string]*yaml.Node, path string) (set actionSet, written, ok bool) {
	n, has := f["actions"]
	if !has {
		return 0, false, true
	}
	items, _, ok := c.list(file, n, path+".actions", false)
	if !ok {
		return 0, true, false
	}
	for i, e := range items {
		p := fmt.Sprintf("%s.actions[%d]", path, i)
		name, sok := c.str(file, e, p)
		if !sok {
			ok = false
			continue
		}
		a, err := ParseAction(name)
		if err != nil {
			c.errAt(file, e, p, "%v", err)
			ok = false
			continue
		}
		if set&a.bit() != 0 {
			c.errAt(file, e, p, "action %s listed twice", name)
			ok = false
			continue
		}
		set |= a.bit()
	}
	return set, true, ok
}

// implicitDenyActions is what a deny rule without `actions:` applies to: every action for which
// each of its selectors means something. A deny on sellers also blocks pay_tab to those
// recipients (not deposits or withdrawals, which have none); a deny on versions only guarantees.
func implicitDenyActions(s *selector) actionSet {
	acts := setAll
	if s.sellers != nil {
		acts &= setRecipient
	}
	if s.versions != 0 {
		acts &= setGuarantee
	}
	return acts
}

// checkActions refuses selectors that mean nothing for some of the actions written: sellers for
// actions without a recipient, host patterns for pay_tab, versions for anything but guarantees.
func (c *compiler) checkActions(file string, node *yaml.Node, f map[string]*yaml.Node, path string, s *selector) bool {
	ok := true
	at := func(k string) *yaml.Node {
		if n, has := f[k]; has {
			return n
		}
		return node
	}
	if s.sellers != nil {
		if x := s.actions & setCollateral; x != 0 {
			c.errAt(file, at("sellers"), path+".sellers", "sellers name recipients and these actions have none: %s (sellers apply to guarantee and pay_tab); put them in a rule of their own", x)
			ok = false
		} else if h := s.sellers.firstHost(); h != "" && s.actions&setPayTab != 0 {
			c.errAt(file, at("sellers"), path+".sellers", "seller %q names a host, and pay_tab has none (hosts apply to guarantees only): list pay_tab recipients by address, in a rule of their own", h)
			ok = false
		}
	}
	if s.versions != 0 && s.actions != setGuarantee {
		c.errAt(file, at("versions"), path+".versions", "versions apply to guarantees only, and this rule also covers %s", s.actions&^setGuarantee)
		ok = false
	}
	return ok
}

// compileSelector reads the selector fields present in f. required lists fields that must be
// present (for allow rules: explicit `any` rather than silent omission).
func (c *compiler) compileSelector(file string, node *yaml.Node, f map[string]*yaml.Node, path string, required ...string) (selector, bool) {
	var s selector
	ok := true
	for _, r := range required {
		if _, has := f[r]; !has {
			c.errAt(file, node, path, "missing %s: list them, or write `%s: any`", r, r)
			ok = false
		}
	}
	if n, has := f["agents"]; has {
		items, isAny, lok := c.list(file, n, path+".agents", true)
		ok = ok && lok
		if !isAny && lok {
			s.agents = map[string]struct{}{}
			for i, e := range items {
				p := fmt.Sprintf("%s.agents[%d]", path, i)
				name, nok := c.str(file, e, p)
				if !nok {
					ok = false
					continue
				}
				if _, known := c.p.agents[name]; !known {
					c.errAt(file, e, p, "unknown agent %q", name)
					ok = false
				}
				s.agents[name] = struct{}{}
			}
		}
	}
	if n, has := f["sellers"]; has {
		items, isAny, lok := c.list(file, n, path+".sellers", true)
		ok = ok && lok
		if !isAny && lok {
			set, sok := c.compileSellers(file, items, path+".sellers")
			ok = ok && sok
			s.sellers = set
		}
	}
	if n, has := f["networks"]; has {
		items, isAny, lok := c.list(file, n, path+".networks", true)
		ok = ok && lok
		if !isAny && lok {
			s.networks = map[string]struct{}{}
			for i, e := range items {
				p := fmt.Sprintf("%s.networks[%d]", path, i)
				v, vok := c.str(file, e, p)
				if vok && !reCAIP2.MatchString(v) {
					c.errAt(file, e, p, "%q is not a CAIP-2 network id (e.g. eip155:84532)", v)
					vok = false
				}
				if !vok {
					ok = false
					continue
				}
				s.networks[v] = struct{}{}
			}
		}
	}
	if n, has := f["chain_ids"]; has {
		items, isAny, lok := c.list(file, n, path+".chain_ids", true)
		ok = ok && lok
		if !isAny && lok {
			s.chainIDs = map[uint64]struct{}{}
			for i, e := range items {
				v, vok := c.uint(file, e, fmt.Sprintf("%s.chain_ids[%d]", path, i), 64)
				if !vok {
					ok = false
					continue
				}
				s.chainIDs[v] = struct{}{}
			}
		}
	}
	if n, has := f["assets"]; has {
		items, isAny, lok := c.list(file, n, path+".assets", true)
		ok = ok && lok
		if !isAny && lok {
			s.assets = map[common.Address]struct{}{}
			for i, e := range items {
				p := fmt.Sprintf("%s.assets[%d]", path, i)
				v, vok := c.str(file, e, p)
				if !vok {
					ok = false
					continue
				}
				if a := c.p.assets[v]; a != nil {
					s.assets[a.Address] = struct{}{}
				} else if isAddress(v) {
					s.assets[common.HexToAddress(v)] = struct{}{}
				} else {
					c.errAt(file, e, p, "unknown asset %q (declare it under assets, or write its address)", v)
					ok = false
				}
			}
		}
	}
	if n, has := f["versions"]; has {
		items, isAny, lok := c.list(file, n, path+".versions", true)
		ok = ok && lok
		if !isAny && lok {
			for i, e := range items {
				p := fmt.Sprintf("%s.versions[%d]", path, i)
				v, vok := c.uint(file, e, p, 8)
				if vok && v != 1 && v != 2 {
					c.errAt(file, e, p, "guarantee version must be 1 or 2")
					vok = false
				}
				if !vok {
					ok = false
					continue
				}
				s.versions |= 1 << v
			}
		}
	}
	if n, has := f["labels"]; has {
		if n.Kind != yaml.MappingNode || len(n.Content) == 0 {
			c.errAt(file, n, path+".labels", "expected a non-empty mapping of label: value (value * = present)")
			ok = false
		} else {
			seen := map[string]bool{}
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := path + ".labels." + k.Value
				vs, vok := c.str(file, v, p)
				if k.Kind != yaml.ScalarNode || !reLabelKV.MatchString(k.Value) || seen[k.Value] {
					c.errAt(file, k, p, "bad or repeated label name")
					ok = false
					continue
				}
				seen[k.Value] = true
				if !vok {
					ok = false
					continue
				}
				s.labels = append(s.labels, [2]string{k.Value, vs})
			}
			sort.Slice(s.labels, func(i, j int) bool { return s.labels[i][0] < s.labels[j][0] })
		}
	}
	return s, ok
}

func (c *compiler) compileSellers(file string, items []*yaml.Node, path string) (*sellerSet, bool) {
	set := &sellerSet{addrAnyHost: make(map[common.Address]struct{}, len(items)), addrHosts: map[common.Address][]hostPattern{},
		hostExact: map[string]struct{}{}, hostSuffix: map[string]struct{}{}, src: make([]string, 0, len(items))}
	ok := true
	seen := make(map[string]bool, len(items))
	for i, e := range items {
		// Fast path: a plain address entry (the common case in long allowlists).
		if e.Kind == yaml.ScalarNode && e.Tag != "!!null" && len(e.Value) == 42 && e.Value[0] == '0' && (e.Value[1] == 'x' || e.Value[1] == 'X') {
			var a common.Address
			if _, err := hex.Decode(a[:], []byte(e.Value[2:])); err == nil {
				if _, dup := set.addrAnyHost[a]; dup {
					c.errAt(file, e, fmt.Sprintf("%s[%d]", path, i), "seller listed twice")
					ok = false
					continue
				}
				set.addrAnyHost[a] = struct{}{}
				set.src = append(set.src, "0x"+hex.EncodeToString(a[:])+"@")
				continue
			}
		}
		p := fmt.Sprintf("%s[%d]", path, i)
		var addrS, hostS string
		var hostNode = e
		if e.Kind == yaml.MappingNode {
			f := c.fields(file, e, p, "address", "host")
			if an, has := f["address"]; has {
				a, aok := c.address(file, an, p+".address")
				if !aok {
					ok = false
					continue
				}
				addrS = strings.ToLower(a.Hex())
			}
			if hn, has := f["host"]; has {
				hostNode = hn
				h, hok := c.str(file, hn, p+".host")
				if !hok {
					ok = false
					continue
				}
				hostS = h
			}
			if addrS == "" && hostS == "" {
				c.errAt(file, e, p, "a seller needs an address, a host, or both")
				ok = false
				continue
			}
		} else {
			v, vok := c.str(file, e, p)
			if !vok {
				ok = false
				continue
			}
			if strings.HasPrefix(v, "0x") || strings.HasPrefix(v, "0X") {
				if !isAddress(v) {
					c.errAt(file, e, p, "%q is not an address (0x + 40 hex digits)", v)
					ok = false
					continue
				}
				addrS = strings.ToLower(v)
			} else {
				hostS = v
			}
		}
		var hp hostPattern
		if hostS != "" {
			h := strings.ToLower(hostS)
			if !reHost.MatchString(h) {
				c.errAt(file, hostNode, p, "%q is not a host pattern (api.example.com, *.example.com or *)", hostS)
				ok = false
				continue
			}
			switch {
			case h == "*":
				hp.any = true
			case strings.HasPrefix(h, "*."):
				hp.suffix = h[1:]
			default:
				hp.exact = h
			}
			hostS = h
		}
		if addrS != "" && hostS == "" {
			a := common.HexToAddress(addrS)
			if _, dup := set.addrAnyHost[a]; dup {
				c.errAt(file, e, p, "seller listed twice")
				ok = false
				continue
			}
			set.addrAnyHost[a] = struct{}{}
			set.src = append(set.src, addrS+"@")
			continue
		}
		canon := addrS + "@" + hostS
		if seen[canon] {
			c.errAt(file, e, p, "seller listed twice")
			ok = false
			continue
		}
		seen[canon] = true
		set.src = append(set.src, canon)
		if addrS != "" {
			a := common.HexToAddress(addrS)
			set.addrHosts[a] = append(set.addrHosts[a], hp)
			continue
		}
		switch {
		case hp.any:
			set.hostAny = true
		case hp.suffix != "":
			set.hostSuffix[hp.suffix] = struct{}{}
		default:
			set.hostExact[hp.exact] = struct{}{}
		}
	}
	sort.Strings(set.src)
	return set, ok
}

func (c *compiler) ruleHeader(i int, it item, kind string, extra ...string) (id string, path string, f map[string]*yaml.Node, ok bool) {
	path = fmt.Sprintf("%s[%d]", kind, i)
	if it.val.Kind == yaml.MappingNode { // name errors by id when the id is readable
		for j := 0; j+1 < len(it.val.Content); j += 2 {
			if k, v := it.val.Content[j], it.val.Content[j+1]; k.Value == "id" && v.Kind == yaml.ScalarNode && reIdent.MatchString(v.Value) {
				path = fmt.Sprintf("%s[%s]", kind, v.Value)
				break
			}
		}
	}
	allowed := append(append([]string{"id", "description"}, selectorFields...), extra...)
	f = c.fields(it.file, it.val, path, allowed...)
	idn, has := f["id"]
	if !has {
		if it.val.Kind == yaml.MappingNode {
			c.errAt(it.file, it.val, path, "missing id")
		}
		return "", path, f, false
	}
	id, ok = c.ident(it.file, idn, path+".id", "id")
	if !ok {
		return "", path, f, false
	}
	path = fmt.Sprintf("%s[%s]", kind, id)
	if !c.defineID(it.file, idn, path, id) {
		return "", path, f, false
	}
	if d, has := f["description"]; has {
		c.scalar(it.file, d, path+".description")
	}
	return id, path, f, true
}

func (c *compiler) compileRule(i int, it item) {
	id, path, f, ok := c.ruleHeader(i, it, "rules", "effect", "code", "max_amount", "v2")
	if !ok {
		return
	}
	r := &rule{id: id}
	if d, has := f["description"]; has {
		r.description = d.Value
	}
	en, has := f["effect"]
	if !has {
		c.errAt(it.file, it.val, path, "missing effect: allow or deny")
		return
	}
	switch en.Value {
	case "allow":
		r.effect = effectAllow
	case "deny":
		r.effect = effectDeny
	default:
		c.errAt(it.file, en, path+".effect", "effect must be allow or deny, found %q", en.Value)
		return
	}
	acts, actsWritten, aok := c.compileActions(it.file, f, path)
	if !actsWritten {
		acts = setGuarantee // deny rules: replaced by implicitDenyActions below
	}
	var sok bool
	if r.effect == effectAllow {
		required := []string{"agents", "sellers", "networks", "assets"}
		if acts&setRecipient == 0 {
			required = []string{"agents", "networks", "assets"} // no recipient: sellers mean nothing
		}
		r.sel, sok = c.compileSelector(it.file, it.val, f, path, required...)
		if n, has := f["code"]; has {
			c.errAt(it.file, n, path+".code", "code is only for deny rules")
			sok = false
		}
	} else {
		r.sel, sok = c.compileSelector(it.file, it.val, f, path)
		for _, k := range []string{"max_amount", "v2"} {
			if n, has := f[k]; has {
				c.errAt(it.file, n, path+"."+k, "%s is only for allow rules (a deny rule only matches)", k)
				sok = false
			}
		}
		if n, has := f["code"]; has {
			code, cok := c.str(it.file, n, path+".code")
			if cok && !isCode(code) {
				c.errAt(it.file, n, path+".code", "unknown denial code %q (one of: %s)", code, strings.Join(Codes, ", "))
				cok = false
			}
			sok = sok && cok
			r.code = code
		} else {
			r.code = derivedDenyCode(&r.sel, f)
			if r.code == CodeDeniedByRule && actsWritten && acts != setAll {
				r.code = CodeActionNotAllowed // e.g. {effect: deny, agents: [x], actions: [withdraw]}
			}
		}
		if r.sel.isEmpty() && (!actsWritten || acts == setAll) {
			c.errAt(it.file, it.val, path, "a deny rule must match on something (actions, agents, sellers, networks, …)")
			sok = false
		}
		if !actsWritten {
			acts = implicitDenyActions(&r.sel)
		}
		r.sel.sellers.denyAddrOnAnyHost()
	}
	r.sel.actions = acts
	sok = sok && aok
	if actsWritten && aok {
		sok = c.checkActions(it.file, it.val, f, path, &r.sel) && sok
	}
	if n, has := f["max_amount"]; has {
		var nodes []*yaml.Node
		if n.Kind == yaml.SequenceNode {
			nodes = n.Content
		} else {
			nodes = []*yaml.Node{n}
		}
		seen := map[*Asset]bool{}
		for j, e := range nodes {
			p := fmt.Sprintf("%s.max_amount[%d]", path, j)
			s, vok := c.str(it.file, e, p)
			if !vok {
				sok = false
				continue
			}
			a, err := parseAmount(s, c.p.assets)
			if err != nil {
				c.errAt(it.file, e, p, "%v", err)
				sok = false
				continue
			}
			if seen[a.asset] {
				c.errAt(it.file, e, p, "a second cap for the same asset")
				sok = false
				continue
			}
			seen[a.asset] = true
			r.maxAmount = append(r.maxAmount, amountCap{asset: a.asset, max: a.value})
		}
	}
	if n, has := f["v2"]; has {
		v2, vok := c.compileV2(it.file, n, path+".v2")
		sok = sok && vok
		r.v2 = v2
		if aok && acts != setGuarantee {
			c.errAt(it.file, n, path+".v2", "v2 applies to guarantees only, and this rule also covers %s", acts&^setGuarantee)
			sok = false
		}
	}
	if !sok {
		return
	}
	if r.effect == effectAllow {
		c.p.allowRules = append(c.p.allowRules, r)
	} else {
		c.p.denyRules = append(c.p.denyRules, r)
	}
}

func isCode(s string) bool {
	for _, c := range Codes {
		if c == s {
			return true
		}
	}
	return false
}

// derivedDenyCode picks the code of a deny rule from what it matches on.
func derivedDenyCode(s *selector, f map[string]*yaml.Node) string {
	switch {
	case s.sellers != nil:
		return CodeSellerNotAllowed
	case s.networks != nil || s.chainIDs != nil:
		return CodeNetworkNotAllowed
	case s.assets != nil:
		return CodeAssetNotAllowed
	case s.versions != 0:
		return CodeVersionNotAllowed
	}
	return CodeDeniedByRule
}

func (s *selector) isEmpty() bool {
	return s.agents == nil && s.sellers == nil && s.networks == nil && s.chainIDs == nil &&
		s.assets == nil && s.versions == 0 && len(s.labels) == 0
}

func (c *compiler) compileV2(file string, n *yaml.Node, path string) (*v2Constraint, bool) {
	f := c.fields(file, n, path, "registries", "validators", "min_score", "tags")
	v := &v2Constraint{}
	ok := true
	addrs := func(key string) map[common.Address]struct{} {
		nn, has := f[key]
		if !has {
			return nil
		}
		items, isAny, lok := c.list(file, nn, path+"."+key, true)
		if !lok {
			ok = false
			return nil
		}
		if isAny {
			return nil
		}
		m := map[common.Address]struct{}{}
		for i, e := range items {
			a, aok := c.address(file, e, fmt.Sprintf("%s.%s[%d]", path, key, i))
			if !aok {
				ok = false
				continue
			}
			m[a] = struct{}{}
		}
		return m
	}
	if _, has := f["registries"]; !has {
		c.errAt(file, n, path, "v2 needs registries (the trusted validation registries, or `any`)")
		ok = false
	}
	v.registries = addrs("registries")
	v.validators = addrs("validators")
	if sn, has := f["min_score"]; has {
		s, sok := c.uint(file, sn, path+".min_score", 8)
		if sok && (s < 1 || s > 100) {
			c.errAt(file, sn, path+".min_score", "min_score must be 1..100")
			sok = false
		}
		ok = ok && sok
		v.minScore = uint8(s)
	}
	if tn, has := f["tags"]; has {
		items, isAny, lok := c.list(file, tn, path+".tags", true)
		ok = ok && lok
		if !isAny && lok {
			v.tags = map[string]struct{}{}
			for i, e := range items {
				if e.Kind != yaml.ScalarNode {
					c.errAt(file, e, fmt.Sprintf("%s.tags[%d]", path, i), "expected a string")
					ok = false
					continue
				}
				v.tags[e.Value] = struct{}{}
			}
		}
	}
	return v, ok
}

func (c *compiler) compileBudget(i int, it item) {
	id, path, f, ok := c.ruleHeader(i, it, "budgets", "per", "window", "limit", "max_requests")
	if !ok {
		return
	}
	b := &budget{id: id}
	if d, has := f["description"]; has {
		b.description = d.Value
	}
	var sok bool
	b.sel, sok = c.guaranteeDefaultSelector(it, f, path)
	if pn, has := f["per"]; has {
		items, _, lok := c.list(it.file, pn, path+".per", false)
		sok = sok && lok
		for j, e := range items {
			p := fmt.Sprintf("%s.per[%d]", path, j)
			var d dim
			switch e.Value {
			case "agent":
				d = dimAgent
			case "wallet":
				d = dimWallet
			case "seller":
				d = dimSeller
			case "asset":
				d = dimAsset
			case "task":
				d = dimTask
			default:
				c.errAt(it.file, e, p, "per must list agent, wallet, seller, asset or task; found %q", e.Value)
				sok = false
				continue
			}
			if b.per&d != 0 {
				c.errAt(it.file, e, p, "%s listed twice", e.Value)
				sok = false
			}
			if d == dimSeller && b.sel.actions&setCollateral != 0 {
				c.errAt(it.file, e, p, "per seller needs a recipient, and these actions have none: %s; put them in a budget of their own", b.sel.actions&setCollateral)
				sok = false
			}
			b.per |= d
		}
	}
	wn, has := f["window"]
	if !has {
		c.errAt(it.file, it.val, path, "missing window: minute, hour, day, 30d, any duration, or lifetime")
		sok = false
	} else if wn.Value == "lifetime" {
		b.window = 0
	} else if d, dok := c.duration(it.file, wn, path+".window"); dok {
		b.window = d
	} else {
		sok = false
	}
	ln, hasL := f["limit"]
	rn, hasR := f["max_requests"]
	switch {
	case hasL == hasR:
		c.errAt(it.file, it.val, path, "a budget needs exactly one of limit (an amount) or max_requests (a count)")
		sok = false
	case hasL:
		s, lok := c.str(it.file, ln, path+".limit")
		if lok {
			a, err := parseAmount(s, c.p.assets)
			if err != nil {
				c.errAt(it.file, ln, path+".limit", "%v", err)
				sok = false
			} else {
				b.limit, b.asset = a.value, a.asset
			}
		} else {
			sok = false
		}
	default:
		n, rok := c.uint(it.file, rn, path+".max_requests", 63)
		if rok && n == 0 {
			c.errAt(it.file, rn, path+".max_requests", "max_requests must be at least 1 (to forbid, write a deny rule)")
			rok = false
		}
		sok = sok && rok
		b.limit, b.count = new(big.Int).SetUint64(n), true
	}
	if !sok {
		return
	}
	if !b.count {
		b.per |= dimAsset // amounts of different assets never share a counter
	}
	c.p.budgets = append(c.p.budgets, b)
}

// guaranteeDefaultSelector compiles the selector of a budget or an approval with its actions:
// without `actions:` it applies to guarantees only, as before actions existed.
func (c *compiler) guaranteeDefaultSelector(it item, f map[string]*yaml.Node, path string) (selector, bool) {
	acts, actsWritten, aok := c.compileActions(it.file, f, path)
	sel, sok := c.compileSelector(it.file, it.val, f, path)
	sel.actions = setGuarantee
	if actsWritten && aok {
		sel.actions = acts
		sok = c.checkActions(it.file, it.val, f, path, &sel) && sok
	}
	return sel, sok && aok
}

func (c *compiler) compileApproval(i int, it item) {
	id, path, f, ok := c.ruleHeader(i, it, "approvals", "at_or_above", "group", "timeout")
	if !ok {
		return
	}
	a := &approval{id: id}
	if d, has := f["description"]; has {
		a.description = d.Value
	}
	var sok bool
	a.sel, sok = c.guaranteeDefaultSelector(it, f, path)
	for _, k := range []string{"at_or_above", "group", "timeout"} {
		if _, has := f[k]; !has {
			c.errAt(it.file, it.val, path, "missing %s", k)
			sok = false
		}
	}
	if !sok {
		return
	}
	if s, ok := c.str(it.file, f["at_or_above"], path+".at_or_above"); ok {
		am, err := parseAmount(s, c.p.assets)
		if err != nil {
			c.errAt(it.file, f["at_or_above"], path+".at_or_above", "%v", err)
			sok = false
		} else {
			a.threshold, a.asset = am.value, am.asset
		}
	} else {
		sok = false
	}
	if g, ok := c.ident(it.file, f["group"], path+".group", "group"); ok {
		a.group = g
	} else {
		sok = false
	}
	if d, ok := c.duration(it.file, f["timeout"], path+".timeout"); ok {
		a.timeout = d
	} else {
		sok = false
	}
	if sok {
		c.p.approvals = append(c.p.approvals, a)
	}
}

func (c *compiler) compileKill(it item) {
	f := c.fields(it.file, it.val, "kill_switch", "auto_trip")
	at, has := f["auto_trip"]
	if !has {
		return
	}
	g := c.fields(it.file, at, "kill_switch.auto_trip", "denials", "spend")
	if dn, has := g["denials"]; has {
		h := c.fields(it.file, dn, "kill_switch.auto_trip.denials", "count", "window")
		cn, ok1 := h["count"]
		wn, ok2 := h["window"]
		if !ok1 || !ok2 {
			c.errAt(it.file, dn, "kill_switch.auto_trip.denials", "needs count and window")
		} else if n, ok := c.uint(it.file, cn, "kill_switch.auto_trip.denials.count", 31); ok {
			if w, ok := c.duration(it.file, wn, "kill_switch.auto_trip.denials.window"); ok {
				if n == 0 {
					c.errAt(it.file, cn, "kill_switch.auto_trip.denials.count", "count must be at least 1")
				}
				c.p.kill.DenialBurst.Count, c.p.kill.DenialBurst.Window = int(n), w
			}
		}
	}
	if sn, has := g["spend"]; has {
		items, _, ok := c.list(it.file, sn, "kill_switch.auto_trip.spend", false)
		if !ok {
			return
		}
		for i, e := range items {
			p := fmt.Sprintf("kill_switch.auto_trip.spend[%d]", i)
			h := c.fields(it.file, e, p, "limit", "window")
			ln, ok1 := h["limit"]
			wn, ok2 := h["window"]
			if !ok1 || !ok2 {
				c.errAt(it.file, e, p, "needs limit and window")
				continue
			}
			s, ok := c.str(it.file, ln, p+".limit")
			if !ok {
				continue
			}
			am, err := parseAmount(s, c.p.assets)
			if err != nil {
				c.errAt(it.file, ln, p+".limit", "%v", err)
				continue
			}
			w, ok := c.duration(it.file, wn, p+".window")
			if !ok {
				continue
			}
			c.p.kill.SpendVelocity = append(c.p.kill.SpendVelocity, SpendVelocity{Asset: am.asset, Limit: am.value, Window: w})
		}
	}
}
