package policyengine

import (
	"encoding/hex"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"

	"github.com/ethereum/go-ethereum/common"
)

var (
	bigOne  = big.NewInt(1)
	bigZero = new(big.Int) // read-only: the amount of an action without one (cancel/finalize withdrawal)
)

// Evaluate decides one intent at now, reading budget usage through usage. It never mutates
// anything: the caller applies Decision.Charges atomically (MemLedger.Apply or the durable
// ledger) before signing. Evaluation order, each step denying with its own code:
//
//  1. caller → agent (unknown_caller); 2. intent well-formed for its action (invalid_intent);
//  3. wallet (wallet_not_allowed); 4. timestamp skew (stale_timestamp); 5. deny rules — any
//     match denies (deny-overrides); 6. allow rules — at least one must allow, else the closest
//     miss's code (action_not_allowed when the agent's rules cover other actions only) or
//     default_deny; 7. budgets and rate limits (budget_exhausted, rate_limited,
//     usage_unavailable); 8. approval thresholds (NeedsApproval).
//
// Every rule, budget and approval applies to the actions it selects (see docs/policy-actions.md);
// without `actions:` that is guarantees only, except deny rules, which apply to every action
// their selectors mean something for.
//
// Rule order in the source never matters: rules are kept sorted by id and when several match,
// the outcome is the same; the reported rule is the first by id.
func (p *Policy) Evaluate(in *Intent, usage UsageReader, now time.Time) Decision {
	return p.evaluate(in, usage, now, now, false)
}

// EvaluateFreshAt is Evaluate with the timestamp-freshness step (4) measured against freshAt
// instead of now; every window (budgets, rates) still uses now. The caller chooses freshAt: a
// daemon re-evaluating a request an operator has approved (or still holds) passes the time
// the approval was filed, so an approval decided later than max_timestamp_skew is not
// useless. The policy itself knows nothing of approvals.
func (p *Policy) EvaluateFreshAt(in *Intent, usage UsageReader, now, freshAt time.Time) Decision {
	return p.evaluate(in, usage, now, freshAt, false)
}

// Explain is Evaluate with a human detail on every Match (slower; for dry runs and the CLI).
func (p *Policy) Explain(in *Intent, usage UsageReader, now time.Time) Decision {
	return p.evaluate(in, usage, now, now, true)
}

type evalCtx struct {
	in      *Intent
	agent   string
	host    string // lowercase, no port
	verbose bool
}

func deny(d *Decision, code, rule, reason string) Decision {
	d.Outcome, d.Code, d.Rule, d.Reason = Deny, code, rule, reason
	return *d
}

func (p *Policy) evaluate(in *Intent, usage UsageReader, now, freshAt time.Time, verbose bool) Decision {
	var d Decision
	if in == nil {
		return deny(&d, CodeInvalidIntent, "intent", "no intent")
	}
	// 1. Caller → agent.
	agentName := in.Agent
	if agentName == "" {
		var ok bool
		agentName, ok = p.Principal(in.Caller)
		if !ok {
			return deny(&d, CodeUnknownCaller, "agents", fmt.Sprintf("no single agent matches caller uid %d gid %d", in.Caller.UID, in.Caller.GID))
		}
	}
	ag := p.agents[agentName]
	if ag == nil {
		return deny(&d, CodeUnknownCaller, "agents", fmt.Sprintf("agent %q is not declared", agentName))
	}
	d.Agent = agentName
	if verbose {
		d.Matches = append(d.Matches, Match{Rule: "agents." + agentName, Kind: "agent", Effect: "identify", Detail: "caller is agent " + agentName})
	}
	// 2. Well-formed intent.
	ctx := evalCtx{in: in, agent: agentName, verbose: verbose}
	if reason := ctx.validate(); reason != "" {
		return deny(&d, CodeInvalidIntent, "intent", reason)
	}
	// 3. Wallet.
	if in.Wallet == (common.Address{}) {
		return deny(&d, CodeWalletNotAllowed, "agents."+agentName+".wallets", "no wallet given")
	}
	if !ag.walletAllowed(in.Wallet) {
		return deny(&d, CodeWalletNotAllowed, "agents."+agentName+".wallets", fmt.Sprintf("agent %s may not use wallet %s", agentName, in.Wallet.Hex()))
	}
	// 4. Timestamp freshness.
	skew := int64(p.maxSkew / time.Second)
	if in.Timestamp == 0 || in.Timestamp > math.MaxInt64/2 {
		return deny(&d, CodeStaleTimestamp, "settings.max_timestamp_skew", "claim timestamp missing or out of range")
	}
	if diff := freshAt.Unix() - int64(in.Timestamp); diff > skew || diff < -skew {
		when := fmt.Sprintf("%ds old", diff)
		if diff < 0 {
			when = fmt.Sprintf("%ds in the future", -diff)
		}
		return deny(&d, CodeStaleTimestamp, "settings.max_timestamp_skew", fmt.Sprintf("claim timestamp is %s (max skew %ds)", when, skew))
	}
	// 5. Deny rules: any match denies.
	var denyBy *rule
	for _, r := range p.denyRules {
		if r.sel.matchAll(&ctx) {
			if denyBy == nil {
				denyBy = r
			}
			if !verbose {
				break
			}
			d.Matches = append(d.Matches, Match{Rule: r.id, Kind: "deny", Effect: "deny", Detail: r.describe()})
		}
	}
	if denyBy != nil {
		if verbose { // show what the deny overrode
			for _, r := range p.allowRules {
				if !r.sel.matchScope(&ctx) {
					continue
				}
				eff, detail := "overridden", r.describe()
				if _, code, reason := r.allows(&ctx); code != "" {
					eff, detail = "no_match:"+code, reason
				}
				d.Matches = append(d.Matches, Match{Rule: r.id, Kind: "allow", Effect: eff, Detail: detail})
			}
		}
		return deny(&d, denyBy.code, denyBy.id, fmt.Sprintf("deny rule %s matched%s", denyBy.id, descSuffix(denyBy.description)))
	}
	// 6. Allow rules: at least one must allow.
	// A rule for other actions is the weakest miss (stage 0 of allows): it is only reported when
	// no rule for this action came closer, and its reason is formatted only then (no allocation
	// per rule for other actions).
	var allowBy, bestMiss, actionMiss *rule
	bestStage, bestCode, bestReason := -1, "", ""
	actBit := in.Action.bit()
	for _, r := range p.allowRules {
		if !r.sel.matchScope(&ctx) {
			continue
		}
		if r.sel.actions&actBit == 0 {
			if actionMiss == nil {
				actionMiss = r
			}
			if verbose {
				d.Matches = append(d.Matches, Match{Rule: r.id, Kind: "allow", Effect: "no_match:" + CodeActionNotAllowed, Detail: r.actionReason(in)})
			}
			continue
		}
		stage, code, reason := r.allows(&ctx)
		if code == "" {
			if allowBy == nil {
				allowBy = r
			}
			if verbose {
				d.Matches = append(d.Matches, Match{Rule: r.id, Kind: "allow", Effect: "allow", Detail: r.describe()})
				continue
			}
			break
		}
		if verbose {
			d.Matches = append(d.Matches, Match{Rule: r.id, Kind: "allow", Effect: "no_match:" + code, Detail: reason})
		}
		if stage > bestStage {
			bestStage, bestMiss, bestCode, bestReason = stage, r, code, reason
		}
	}
	if allowBy == nil {
		if bestMiss != nil {
			return deny(&d, bestCode, bestMiss.id, bestReason)
		}
		if actionMiss != nil {
			return deny(&d, CodeActionNotAllowed, actionMiss.id, actionMiss.actionReason(in))
		}
		return deny(&d, CodeDefaultDeny, "default", fmt.Sprintf("no allow rule applies to agent %s", agentName))
	}
	d.Rule = allowBy.id
	// 7. Budgets and rate limits. All keys are built into one buffer and converted to a single
	// string (one allocation), then each charge's Key is a substring of it.
	if len(p.budgets) > 0 {
		var bufArr [1024]byte
		var idxArr [32]int32
		var endArr [32]int32
		buf, matched, ends := bufArr[:0], idxArr[:0], endArr[:0]
		hexes := ctx.addrHex()
		zero := ctx.amount().Sign() == 0 // cancel/finalize withdrawal: no amount to count
		for i, b := range p.budgets {
			if b.asset != nil && b.asset.Address != in.Asset {
				continue
			}
			if zero && !b.count {
				continue
			}
			if !b.sel.matchAll(&ctx) {
				continue
			}
			buf = b.key(buf, &ctx, &hexes)
			matched = append(matched, int32(i))
			ends = append(ends, int32(len(buf)))
		}
		keys := string(buf)
		d.Charges = make([]Charge, 0, len(matched))
		var sum big.Int
		exhausted := -1
		var exhaustedUsed *big.Int
		start := int32(0)
		for j, bi := range matched {
			b := p.budgets[bi]
			amt := ctx.amount()
			if b.count {
				amt = bigOne
			}
			ch := Charge{Budget: b.id, Key: keys[start:ends[j]], Window: b.window, Limit: b.limit, Amount: amt, Count: b.count}
			start = ends[j]
			d.Charges = append(d.Charges, ch)
			if usage == nil {
				d.Err = fmt.Errorf("policyengine: no usage reader for budget %s", b.id)
				return deny(&d, CodeUsageUnavailable, b.id, "budget usage could not be read")
			}
			used, err := usage.Usage(ch.Key, ch.Window, now)
			if err != nil || used == nil || used.Sign() < 0 {
				if err == nil {
					err = fmt.Errorf("invalid usage value")
				}
				d.Err = fmt.Errorf("policyengine: reading usage of budget %s: %w", b.id, err)
				return deny(&d, CodeUsageUnavailable, b.id, "budget usage could not be read")
			}
			sum.Add(used, amt)
			over := sum.Cmp(b.limit) > 0
			if verbose {
				eff := "charge"
				if over {
					eff = "exhausted"
				}
				d.Matches = append(d.Matches, Match{Rule: b.id, Kind: b.kind(), Effect: eff,
					Detail: fmt.Sprintf("used %s + %s of %s in %s", p.fmtAmt(used, b), p.fmtAmt(amt, b), p.fmtAmt(b.limit, b), windowName(b.window))})
			}
			if over && exhausted < 0 {
				exhausted = len(d.Charges) - 1
				exhaustedUsed = new(big.Int).Set(used)
			}
		}
		if exhausted >= 0 {
			ch := &d.Charges[exhausted]
			b := p.budgetByID(ch.Budget)
			code := CodeBudgetExhausted
			if ch.Count {
				code = CodeRateLimited
			}
			return deny(&d, code, ch.Budget, fmt.Sprintf("budget %s: %s used of %s in %s; this request needs %s",
				ch.Budget, p.fmtAmt(exhaustedUsed, b), p.fmtAmt(ch.Limit, b), windowName(ch.Window), p.fmtAmt(ch.Amount, b)))
		}
	}
	// 8. Approval thresholds.
	var appr *approval
	for _, a := range p.approvals {
		if a.asset != nil && a.asset.Address != in.Asset {
			continue
		}
		if ctx.amount().Cmp(a.threshold) < 0 || !a.sel.matchAll(&ctx) {
			continue
		}
		if appr == nil {
			appr = a
		}
		if !verbose {
			break
		}
		d.Matches = append(d.Matches, Match{Rule: a.id, Kind: "approval", Effect: "needs_approval",
			Detail: fmt.Sprintf("amount at or above %s needs group %s within %s", FormatAmount(a.threshold, a.asset), a.group, a.timeout)})
	}
	if appr != nil {
		d.Outcome, d.Rule, d.Group, d.Timeout = NeedsApproval, appr.id, appr.group, appr.timeout
		d.Reason = fmt.Sprintf("amount at or above %s needs approval by %s", FormatAmount(appr.threshold, appr.asset), appr.group)
		return d
	}
	d.Outcome = Allow
	return d
}

func descSuffix(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}

func windowName(w time.Duration) string {
	if w == 0 {
		return "lifetime"
	}
	switch {
	case w%(24*time.Hour) == 0:
		return fmt.Sprintf("%dd", w/(24*time.Hour))
	case w%time.Hour == 0:
		return fmt.Sprintf("%dh", w/time.Hour)
	case w%time.Minute == 0:
		return fmt.Sprintf("%dm", w/time.Minute)
	}
	return w.String()
}

func (b *budget) kind() string {
	if b.count {
		return "rate"
	}
	return "budget"
}

func (p *Policy) budgetByID(id string) *budget {
	for _, b := range p.budgets {
		if b.id == id {
			return b
		}
	}
	return nil
}

func (p *Policy) fmtAmt(v *big.Int, b *budget) string {
	if b != nil && b.count {
		return v.String() + " requests"
	}
	if b != nil && b.asset != nil {
		return FormatAmount(v, b.asset)
	}
	return v.String()
}

// amount is the intent's amount; an action without one (cancel/finalize withdrawal) has 0.
func (c *evalCtx) amount() *big.Int {
	if c.in.Amount == nil {
		return bigZero
	}
	return c.in.Amount
}

// validate checks the intent is well formed and normalises the host. "" = fine.
func (c *evalCtx) validate() string {
	in := c.in
	if in.Action != ActionGuarantee {
		return c.validateAction()
	}
	if in.Amount == nil || in.Amount.Sign() <= 0 {
		return "amount must be a positive number of base units"
	}
	if in.Amount.BitLen() > 256 {
		return "amount exceeds uint256"
	}
	if in.Version != 1 && in.Version != 2 {
		return fmt.Sprintf("guarantee version %d is neither 1 nor 2", in.Version)
	}
	if in.Network == "" {
		return "network missing"
	}
	if strings.HasPrefix(in.Network, "eip155:") {
		id, err := strconv.ParseUint(in.Network[len("eip155:"):], 10, 64)
		if err != nil || id != in.ChainID {
			return fmt.Sprintf("network %s does not match chain id %d", in.Network, in.ChainID)
		}
	}
	if in.Version == 2 {
		if in.MinScore < 1 || in.MinScore > 100 {
			return "V2 min_score must be 1..100"
		}
		if in.ValidationChainID != in.ChainID {
			return "V2 validation_chain_id must equal chain_id"
		}
		if in.ValidationRegistry == (common.Address{}) {
			return "V2 validation_registry missing"
		}
	}
	h := normHost(in.Host)
	if in.ResourceURL != "" {
		uh := hostOfURL(in.ResourceURL)
		if uh == "" {
			return "resource_url has no host"
		}
		if h != "" && h != uh {
			return "host does not match resource_url"
		}
		h = uh
	}
	if in.TabID != nil && (in.TabID.Sign() < 0 || in.TabID.BitLen() > 256) {
		return "tab_id must be a uint256 (0 ≤ tab_id < 2^256)"
	}
	c.host = h
	return ""
}

// validateAction checks an intent for an action other than a guarantee: the fields the action
// uses are present and well formed, the others are zero. Messages name the field.
func (c *evalCtx) validateAction() string {
	in := c.in
	act := in.Action
	if !act.Valid() {
		return fmt.Sprintf("action %d is not one of: %s", uint8(act), setAll)
	}
	if act.hasAmount() {
		if in.Amount == nil || in.Amount.Sign() <= 0 {
			return act.String() + ": amount must be a positive number of base units"
		}
		if in.Amount.BitLen() > 256 {
			return act.String() + ": amount exceeds uint256"
		}
	} else if in.Amount != nil && in.Amount.Sign() != 0 {
		return act.String() + ": amount must be 0 (the contract acts on the pending withdrawal request)"
	}
	if in.Version != 0 {
		return fmt.Sprintf("%s: version must be 0 (only guarantees have a guarantee version), got %d", act, in.Version)
	}
	if in.Network == "" {
		return act.String() + ": network missing"
	}
	if strings.HasPrefix(in.Network, "eip155:") {
		id, err := strconv.ParseUint(in.Network[len("eip155:"):], 10, 64)
		if err != nil || id != in.ChainID {
			return fmt.Sprintf("network %s does not match chain id %d", in.Network, in.ChainID)
		}
	}
	if in.ValidationRegistry != (common.Address{}) || in.Validator != (common.Address{}) || in.MinScore != 0 ||
		in.Tag != "" || in.ValidationChainID != 0 {
		return act.String() + ": validation_registry, validator, min_score, tag and validation_chain_id are for V2 guarantees only"
	}
	if in.Host != "" || in.ResourceURL != "" {
		return act.String() + ": host and resource_url are for guarantees only"
	}
	if act == ActionPayTab {
		if in.PayTo == (common.Address{}) {
			return "pay_tab: pay_to (the tab's recipient) missing"
		}
		if in.TabID == nil || in.TabID.Sign() == 0 {
			return "pay_tab: tab_id missing"
		}
		if in.TabID.Sign() < 0 {
			return "pay_tab: tab_id is negative (a uint256)"
		}
		if in.TabID.BitLen() > 256 {
			return "pay_tab: tab_id exceeds uint256"
		}
	} else {
		if in.PayTo != (common.Address{}) {
			return act.String() + ": pay_to must be empty (only guarantees and pay_tab have a recipient)"
		}
		if in.TabID != nil {
			return act.String() + ": tab_id is only for pay_tab (and guarantees)"
		}
	}
	c.host = ""
	return ""
}

// normHost lowercases and strips a port; allocation-free when already lowercase.
func normHost(h string) string {
	if h == "" {
		return ""
	}
	if strings.HasPrefix(h, "[") { // IPv6 literal
		if i := strings.IndexByte(h, ']'); i > 0 {
			h = h[1:i]
		}
	} else if i := strings.LastIndexByte(h, ':'); i >= 0 && strings.Count(h, ":") == 1 {
		h = h[:i]
	}
	h = strings.TrimSuffix(h, ".")
	for i := 0; i < len(h); i++ {
		if c := h[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(h)
		}
	}
	return h
}

// hostOfURL extracts the host of an absolute URL without allocating (except to lowercase).
func hostOfURL(u string) string {
	i := strings.Index(u, "://")
	if i < 0 {
		return ""
	}
	rest := u[i+3:]
	if j := strings.IndexAny(rest, "/?#"); j >= 0 {
		rest = rest[:j]
	}
	if j := strings.LastIndexByte(rest, '@'); j >= 0 {
		rest = rest[j+1:]
	}
	return normHost(rest)
}

func (s *selector) matchScope(c *evalCtx) bool {
	if s.agents != nil {
		if _, ok := s.agents[c.agent]; !ok {
			return false
		}
	}
	for _, l := range s.labels {
		v, ok := c.in.TaskLabels[l[0]]
		if !ok || (l[1] != "*" && v != l[1]) {
			return false
		}
	}
	return true
}

func (s *selector) matchNetwork(in *Intent) bool {
	if s.networks != nil {
		if _, ok := s.networks[in.Network]; !ok {
			return false
		}
	}
	if s.chainIDs != nil {
		if _, ok := s.chainIDs[in.ChainID]; !ok {
			return false
		}
	}
	return true
}

func (s *selector) matchAsset(in *Intent) bool {
	if s.assets == nil {
		return true
	}
	_, ok := s.assets[in.Asset]
	return ok
}

func (s *selector) matchVersion(in *Intent) bool {
	return s.versions == 0 || s.versions&(1<<uint(in.Version)) != 0
}

func (s *selector) matchAll(c *evalCtx) bool {
	return s.actions&c.in.Action.bit() != 0 && s.matchScope(c) && s.matchVersion(c.in) && s.matchNetwork(c.in) && s.matchAsset(c.in) &&
		(s.sellers == nil || s.sellers.match(c.in.PayTo, c.host))
}

func (h *hostPattern) match(host string) bool {
	switch {
	case host == "":
		return false
	case h.any:
		return true
	case h.suffix != "":
		return len(host) > len(h.suffix) && strings.HasSuffix(host, h.suffix)
	default:
		return host == h.exact
	}
}

func (s *sellerSet) match(addr common.Address, host string) bool {
	if _, ok := s.addrAnyHost[addr]; ok {
		return true
	}
	for i := range s.addrHosts[addr] {
		if s.addrHosts[addr][i].match(host) {
			return true
		}
	}
	if host == "" {
		return false
	}
	if s.hostAny {
		return true
	}
	if _, ok := s.hostExact[host]; ok {
		return true
	}
	if len(s.hostSuffix) > 0 {
		for i := 0; i < len(host); i++ {
			if host[i] == '.' && i > 0 {
				if _, ok := s.hostSuffix[host[i:]]; ok {
					return true
				}
			}
		}
	}
	return false
}

// allows runs an allow rule's constraints in a fixed order; it returns how many passed and,
// on failure, the code and reason.
func (r *rule) allows(c *evalCtx) (int, string, string) {
	in := c.in
	if r.sel.actions&in.Action.bit() == 0 {
		return 0, CodeActionNotAllowed, r.actionReason(in)
	}
	if !r.sel.matchVersion(in) {
		return 1, CodeVersionNotAllowed, fmt.Sprintf("rule %s does not allow guarantee version %d", r.id, in.Version)
	}
	if !r.sel.matchNetwork(in) {
		return 2, CodeNetworkNotAllowed, fmt.Sprintf("rule %s does not allow network %s (chain %d)", r.id, in.Network, in.ChainID)
	}
	if !r.sel.matchAsset(in) {
		return 3, CodeAssetNotAllowed, fmt.Sprintf("rule %s does not allow asset %s", r.id, in.Asset.Hex())
	}
	if r.sel.sellers != nil && !r.sel.sellers.match(in.PayTo, c.host) {
		if in.Action == ActionPayTab {
			return 4, CodeSellerNotAllowed, fmt.Sprintf("rule %s does not allow pay_tab to recipient %s", r.id, in.PayTo.Hex())
		}
		return 4, CodeSellerNotAllowed, fmt.Sprintf("rule %s does not allow seller %s (host %q)", r.id, in.PayTo.Hex(), c.host)
	}
	if in.Version == 2 && r.v2 != nil {
		if reason := r.v2.check(in); reason != "" {
			return 5, CodeValidationNotAllowed, fmt.Sprintf("rule %s: %s", r.id, reason)
		}
	}
	if len(r.maxAmount) > 0 {
		var cp *amountCap
		for i := range r.maxAmount {
			m := &r.maxAmount[i]
			if m.asset != nil && m.asset.Address == in.Asset {
				cp = m
				break
			}
			if m.asset == nil && cp == nil {
				cp = m
			}
		}
		if cp == nil {
			return 6, CodeAmountOverLimit, fmt.Sprintf("rule %s has no max_amount for asset %s", r.id, in.Asset.Hex())
		}
		if amt := c.amount(); amt.Cmp(cp.max) > 0 {
			return 6, CodeAmountOverLimit, fmt.Sprintf("rule %s: amount %s is over the per-request maximum %s", r.id, FormatAmount(amt, cp.asset), FormatAmount(cp.max, cp.asset))
		}
	}
	return 7, "", ""
}

func (r *rule) actionReason(in *Intent) string {
	return fmt.Sprintf("rule %s allows %s, not %s", r.id, r.sel.actions, in.Action)
}

func (v *v2Constraint) check(in *Intent) string {
	if v.registries != nil {
		if _, ok := v.registries[in.ValidationRegistry]; !ok {
			return "validation registry " + in.ValidationRegistry.Hex() + " is not trusted"
		}
	}
	if v.validators != nil {
		if _, ok := v.validators[in.Validator]; !ok {
			return "validator " + in.Validator.Hex() + " is not allowed"
		}
	}
	if in.MinScore < v.minScore {
		return fmt.Sprintf("min validation score %d is below the required %d", in.MinScore, v.minScore)
	}
	if v.tags != nil {
		if _, ok := v.tags[in.Tag]; !ok {
			return fmt.Sprintf("validation tag %q is not allowed", in.Tag)
		}
	}
	return ""
}

func (r *rule) describe() string {
	if r.description != "" {
		return r.description
	}
	return r.effect.String() + " rule"
}

func (e ruleEffect) String() string {
	if e == effectDeny {
		return "deny"
	}
	return "allow"
}

// addrHexes holds the lowercase hex of the intent's addresses, encoded once per evaluation.
type addrHexes struct{ wallet, payTo, asset [40]byte }

func (c *evalCtx) addrHex() addrHexes {
	var h addrHexes
	hex.Encode(h.wallet[:], c.in.Wallet[:])
	hex.Encode(h.payTo[:], c.in.PayTo[:])
	hex.Encode(h.asset[:], c.in.Asset[:])
	return h
}

// key appends the counter key: budget id, then each "per" dimension. Strings are
// length-prefixed so no value can forge another key.
func (b *budget) key(buf []byte, c *evalCtx, h *addrHexes) []byte {
	buf = append(buf, b.id...)
	if b.per&dimAgent != 0 {
		buf = append(buf, "|agent="...)
		buf = strconv.AppendInt(buf, int64(len(c.agent)), 10)
		buf = append(buf, ':')
		buf = append(buf, c.agent...)
	}
	if b.per&dimWallet != 0 {
		buf = append(buf, "|wallet=0x"...)
		buf = append(buf, h.wallet[:]...)
	}
	if b.per&dimSeller != 0 {
		buf = append(buf, "|seller=0x"...)
		buf = append(buf, h.payTo[:]...)
	}
	if b.per&dimAsset != 0 {
		buf = append(buf, "|asset=0x"...)
		buf = append(buf, h.asset[:]...)
	}
	if b.per&dimTask != 0 {
		buf = append(buf, "|task="...)
		buf = strconv.AppendInt(buf, int64(len(c.in.TaskID)), 10)
		buf = append(buf, ':')
		buf = append(buf, c.in.TaskID...)
	}
	return buf
}
