package policyengine

import (
	"fmt"
	"math/big"
	"time"

	"github.com/ethereum/go-ethereum/common"
)

// Caller is the identity of the process on the other end of the agent socket, as read from
// SO_PEERCRED and /proc by the daemon. Zero-valued string fields are "unknown".
type Caller struct {
	UID       uint32   `json:"uid"`
	GID       uint32   `json:"gid"`
	PID       int32    `json:"pid"`
	User      string   `json:"user,omitempty"`
	Group     string   `json:"group,omitempty"`
	Groups    []string `json:"groups,omitempty"`
	Exe       string   `json:"exe,omitempty"`
	ExeSHA256 string   `json:"exe_sha256,omitempty"`
}

// Intent is one thing an agent asks the daemon to do with a wallet — by default a payment
// guarantee to sign (Action zero) — with everything the policy decides on. Addresses are compared
// as 20-byte values; Amount is in the asset's base units and must not be modified while a
// Decision that refers to it is in use.
//
// Which fields an action uses (the others must be zero; Evaluate denies invalid_intent naming the
// field): every action uses Caller/Agent, Wallet, Network, ChainID, Asset (the zero address is
// ETH for collateral actions), Amount, Timestamp (for actions other than a guarantee: when the
// agent asked) and TaskID/TaskLabels. A guarantee also uses PayTo, ResourceURL/Host, Version and
// the V2 fields, and may carry TabID. pay_tab uses PayTo (the recipient) and TabID (both
// required). cancel_withdrawal and finalize_withdrawal carry Amount 0 (or nil).
type Intent struct {
	Caller      Caller         `json:"caller"`
	Agent       string         `json:"agent,omitempty"`
	Action      Action         `json:"action,omitempty"` // zero = ActionGuarantee
	Wallet      common.Address `json:"wallet"`
	PayTo       common.Address `json:"pay_to"`
	TabID       *big.Int       `json:"tab_id,omitempty"` // 4Mica tab id (uint256); pay_tab only (optional on a guarantee)
	ResourceURL string         `json:"resource_url,omitempty"`
	Host        string         `json:"host,omitempty"`
	Network     string         `json:"network"`
	ChainID     uint64         `json:"chain_id"`
	Asset       common.Address `json:"asset"`
	Amount      *big.Int       `json:"amount"`
	Version     int            `json:"version"`

	ValidationRegistry common.Address `json:"validation_registry,omitempty"`
	Validator          common.Address `json:"validator,omitempty"`
	MinScore           uint8          `json:"min_score,omitempty"`
	Tag                string         `json:"tag,omitempty"`
	ValidationChainID  uint64         `json:"validation_chain_id,omitempty"`

	Timestamp  uint64            `json:"timestamp"`
	TaskID     string            `json:"task_id,omitempty"`
	TaskLabels map[string]string `json:"task_labels,omitempty"`
}

// Outcome is the kind of a Decision.
type Outcome int

const (
	// Deny is the zero Outcome so that a zero Decision never allows.
	Deny Outcome = iota
	// Allow: sign, after applying Charges atomically.
	Allow
	// NeedsApproval: hold until a member of Group approves or Timeout passes; apply Charges on approval.
	NeedsApproval
)

func (o Outcome) String() string {
	switch o {
	case Allow:
		return "allow"
	case NeedsApproval:
		return "needs_approval"
	default:
		return "deny"
	}
}

// Stable denial codes. Callers may switch on them; they are never renamed.
const (
	CodeUnknownCaller        = "unknown_caller"         // no (or more than one) agent matches the caller
	CodeWalletNotAllowed     = "wallet_not_allowed"     // the agent may not use this wallet
	CodeInvalidIntent        = "invalid_intent"         // malformed intent (amount ≤ 0, bad version, inconsistent network/chain id, …)
	CodeStaleTimestamp       = "stale_timestamp"        // claim timestamp further from the appliance clock than max_timestamp_skew
	CodeSellerNotAllowed     = "seller_not_allowed"     // payTo / host not allowed (or explicitly denied)
	CodeNetworkNotAllowed    = "network_not_allowed"    // network or chain id not allowed
	CodeAssetNotAllowed      = "asset_not_allowed"      // asset not allowed
	CodeVersionNotAllowed    = "version_not_allowed"    // guarantee version not allowed
	CodeValidationNotAllowed = "validation_not_allowed" // V2 registry / validator / score / tag not allowed
	CodeAmountOverLimit      = "amount_over_limit"      // over a per-request maximum
	CodeBudgetExhausted      = "budget_exhausted"       // an amount budget would be exceeded
	CodeRateLimited          = "rate_limited"           // a request-count limit would be exceeded
	CodeDeniedByRule         = "denied_by_rule"         // a deny rule matched that names no more specific code
	CodeDefaultDeny          = "default_deny"           // no allow rule applies to this agent and request
	CodeUsageUnavailable     = "usage_unavailable"      // the budget ledger could not be read (fault; fails closed)
	CodeActionNotAllowed     = "action_not_allowed"     // the agent's allow rules do not cover this action (e.g. deposit)
)

// Codes lists every denial code the engine can return.
var Codes = []string{
	CodeUnknownCaller, CodeWalletNotAllowed, CodeInvalidIntent, CodeStaleTimestamp,
	CodeSellerNotAllowed, CodeNetworkNotAllowed, CodeAssetNotAllowed, CodeVersionNotAllowed,
	CodeValidationNotAllowed, CodeAmountOverLimit, CodeBudgetExhausted, CodeRateLimited,
	CodeDeniedByRule, CodeDefaultDeny, CodeUsageUnavailable, CodeActionNotAllowed,
}

// Charge is one counter a request debits if it is signed: Amount added to Key's usage in Window,
// which must stay ≤ Limit. Limit and Amount are shared with the policy/intent: read-only.
type Charge struct {
	Budget string        // budget rule id
	Key    string        // fully resolved counter key (budget id + the values of its "per" dimensions)
	Window time.Duration // sliding window; 0 = no window (lifetime counter, e.g. per task)
	Limit  *big.Int      // maximum usage within Window
	Amount *big.Int      // what this request adds (1 for request-count limits)
	Count  bool          // true for a request-count (rate) limit
}

// Match is one rule that matched during evaluation, for explanations.
type Match struct {
	Rule   string `json:"rule"`
	Kind   string `json:"kind"`   // "allow", "deny", "budget", "rate", "approval", "asset", "agent", "clock", "closest_allow"
	Effect string `json:"effect"` // what it did: "allow", "deny", "charge", "needs_approval", "no_match:<code>"
	Detail string `json:"detail,omitempty"`
}

// Decision is the engine's answer for one Intent.
type Decision struct {
	Outcome Outcome
	Code    string        // denial code (Deny only)
	Rule    string        // the deciding rule id (deny rule, allow rule, budget, approval)
	Reason  string        // one human sentence
	Group   string        // NeedsApproval: approver group
	Timeout time.Duration // NeedsApproval: how long to wait before denying
	Agent   string        // the agent the intent was evaluated as
	Charges []Charge      // counters to debit atomically if the request proceeds
	Matches []Match       // every rule that matched, with details: filled by Explain only (Evaluate leaves it nil to stay fast)
	Err     error         // the wrapped fault behind CodeUsageUnavailable (log it, do not show it)
}

// Allowed reports whether the decision is an unconditional Allow.
func (d Decision) Allowed() bool { return d.Outcome == Allow }

// String renders the decision on one line.
func (d Decision) String() string {
	switch d.Outcome {
	case Allow:
		return fmt.Sprintf("allow (rule %s)", d.Rule)
	case NeedsApproval:
		return fmt.Sprintf("needs_approval (rule %s, group %s, timeout %s)", d.Rule, d.Group, d.Timeout)
	default:
		return fmt.Sprintf("deny %s (rule %s): %s", d.Code, d.Rule, d.Reason)
	}
}

// UsageReader returns how much of a counter was used within the window ending at now (bucketed,
// see BucketIndex). An error makes Evaluate deny with CodeUsageUnavailable (fail closed).
type UsageReader interface {
	Usage(key string, window time.Duration, now time.Time) (*big.Int, error)
}
