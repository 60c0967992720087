package server

import (
	"context"
	"maps"
	"strconv"
	"strings"
	"time"

	"github.com/ethereum/go-ethereum/common"

	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/approvals"
	"github.com/signerd/signerd/signerd/fourmica"
	"github.com/signerd/signerd/signerd/pipeline"
)

// claimsTimestampKey carries the claims' timestamp of the request being signed in its context,
// so the approval filed for it records the timestamp (Summary "timestamp").
type claimsTimestampKey struct{}

func withClaimsTimestamp(ctx context.Context, c *fourmica.Claims) context.Context {
	if p := c.Payment(); p != nil {
		return context.WithValue(ctx, claimsTimestampKey{}, p.Timestamp)
	}
	return ctx
}

// stampedApprovals files approvals with the claims' timestamp in their summary: a later
// re-submission finds the approval by what the policy sees (approvalPolicy) and an x402
// re-submission rebuilds the very same claims (x402ApprovalTimestamp).
type stampedApprovals struct{ pipeline.Approvals }

func (s stampedApprovals) Submit(ctx context.Context, r pipeline.ApprovalRequest) (pipeline.ApprovalStatus, error) {
	if ts, ok := ctx.Value(claimsTimestampKey{}).(uint64); ok {
		sum := maps.Clone(r.Summary)
		if sum == nil {
			sum = map[string]string{}
		}
		sum["timestamp"] = strconv.FormatUint(ts, 10)
		r.Summary = sum
	}
	return s.Approvals.Submit(ctx, r)
}

// approvalPolicy is the compiled policy as the pipeline sees it. A request refused only for
// its timestamp is looked at again when an approval for exactly that payment (agent, wallet,
// recipient, asset, amount, timestamp) is pending or approved: freshness is then measured
// against the time the approval was filed, so an approval decided later than
// max_timestamp_skew is not useless. The answer is taken only if it is NeedsApproval — the
// pipeline then finds the approval by the claims' fingerprint; anything else stays stale.
type approvalPolicy struct {
	*policyengine.Policy
	m *approvals.Manager
}

// Evaluate implements pipeline.Policy.
func (p approvalPolicy) Evaluate(in *policyengine.Intent, usage policyengine.UsageReader, now time.Time) policyengine.Decision {
	dec := p.Policy.Evaluate(in, usage, now)
	if dec.Code != policyengine.CodeStaleTimestamp || in == nil || in.Amount == nil || p.m == nil {
		return dec
	}
	filed, ok := approvalFiledAt(p.m, in, now)
	if !ok {
		return dec
	}
	if again := p.Policy.EvaluateFreshAt(in, usage, now, filed); again.Outcome == policyengine.NeedsApproval {
		return again
	}
	return dec
}

// live reports whether a can still let a stale request through: pending or approved, and
// within the approval's own timeout. Past ExpiresAt an approved request is held to the normal
// timestamp skew again (an approval does not make its claims usable forever).
func live(a *approvals.Approval, now time.Time) bool {
	return (a.State == approvals.Approved || a.State == approvals.Pending) && now.Before(a.ExpiresAt)
}

// approvalFiledAt returns when the earliest live approval for exactly in's payment was filed.
func approvalFiledAt(m *approvals.Manager, in *policyengine.Intent, now time.Time) (time.Time, bool) {
	ts, amount := strconv.FormatUint(in.Timestamp, 10), in.Amount.String()
	wallet, payTo, asset := in.Wallet.Hex(), in.PayTo.Hex(), in.Asset.Hex()
	found := m.Find(func(a *approvals.Approval) bool {
		s := a.Summary
		return a.Agent == in.Agent && live(a, now) && s["timestamp"] == ts && s["amount"] == amount &&
			strings.EqualFold(a.Wallet, wallet) && strings.EqualFold(s["recipient"], payTo) && strings.EqualFold(s["asset"], asset)
	})
	var first time.Time
	for _, a := range found {
		if first.IsZero() || a.CreatedAt.Before(first) {
			first = a.CreatedAt
		}
	}
	return first, !first.IsZero()
}

// x402HeldClaims returns the claims of a live approval filed for agent's x402 payment on
// (wallet, tab, req): build rebuilds the claims with the approval's timestamp and they are taken
// only if they are the payment the approval holds (amount, recipient, asset). A re-submission
// of a held payment thus gets the same claims (same fingerprint, the same approval) instead of
// a new timestamp and a new approval.
func (d *Daemon) x402HeldClaims(agent string, wallet common.Address, tab, req fourmica.U256, now time.Time,
	build func(ts uint64) (fourmica.Claims, error)) (fourmica.Claims, bool) {
	if d.approvals == nil {
		return fourmica.Claims{}, false
	}
	tabS, reqS, w := tab.Dec(), req.Dec(), wallet.Hex()
	found := d.approvals.Find(func(a *approvals.Approval) bool {
		s := a.Summary
		return a.Agent == agent && s["tab_id"] == tabS && s["req_id"] == reqS && s["timestamp"] != "" &&
			live(a, now) && strings.EqualFold(a.Wallet, w)
	})
	for _, a := range found {
		ts, err := strconv.ParseUint(a.Summary["timestamp"], 10, 64)
		if err != nil {
			continue
		}
		if c, err := build(ts); err == nil && approvalMatches(a.Summary, c) {
			return c, true
		}
	}
	return fourmica.Claims{}, false
}

// approvalMatches reports whether claims are the payment an approval's summary holds.
func approvalMatches(sum map[string]string, c fourmica.Claims) bool {
	p := c.Payment()
	return p != nil && sum["amount"] == p.Amount.Dec() && strings.EqualFold(sum["recipient"], p.Recipient.Hex()) &&
		strings.EqualFold(sum["asset"], p.Asset.Hex())
}
