package approvals

import (
	"context"
	"time"

	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/pipeline"
)

// ForPipeline adapts m to the pipeline's Approvals interface.
//
// The pipeline refuses a request with 403 approval_denied whenever the adapter reports
// ApprovalDenied (an operator denied it, or it expired), both at the end of a long poll and
// when the same request is submitted again later. The approval's own steps are audited by the
// Manager (kind approval); the adapter adds the decision record of each such refusal (kind
// decision, deny, approval_denied, with the approval id and the request's agent, wallet, tab
// and req ids), written through the Auditor's cheap path when it has one (AuditAsync: queued
// for the next group commit, the refusal does not wait for the fsync), else AppendAudit.
func ForPipeline(m *Manager) pipeline.Approvals { return pipelineAdapter{m} }

type pipelineAdapter struct{ m *Manager }

// asyncAuditor is the ledger's queued, group-committed audit write (ledger.Ledger.AuditAsync).
type asyncAuditor interface {
	AuditAsync(ev audit.Event) error
}

func (p pipelineAdapter) Submit(ctx context.Context, r pipeline.ApprovalRequest) (pipeline.ApprovalStatus, error) {
	a, err := p.m.Submit(ctx, Request{
		Key: r.Fingerprint, Agent: r.Agent, Principal: r.Principal, Wallet: r.Wallet.Hex(),
		Rule: r.Rule, Group: r.Group, Timeout: r.Timeout, Summary: r.Summary,
	})
	if err != nil {
		return pipeline.ApprovalStatus{}, err
	}
	st := status(a)
	p.auditRefusal(ctx, a, st, "resubmitted")
	return st, nil
}

func (p pipelineAdapter) Wait(ctx context.Context, id string, maxWait time.Duration) (pipeline.ApprovalStatus, error) {
	a, err := p.m.Wait(ctx, id, maxWait)
	if a.ID == "" {
		return pipeline.ApprovalStatus{}, err
	}
	st := status(a)
	p.auditRefusal(ctx, a, st, "long_poll")
	return st, err
}

// auditRefusal records the decision refusing a request whose approval was denied or expired.
// A failed audit write is not the caller's fault and changes nothing for it (no signature
// leaves either way); it is counted by the ledger (async) or returned nowhere (sync fallback).
func (p pipelineAdapter) auditRefusal(ctx context.Context, a Approval, st pipeline.ApprovalStatus, when string) {
	if st.State != pipeline.ApprovalDenied {
		return
	}
	ev := DenialEvent(a, when)
	if aa, ok := p.m.opts.Auditor.(asyncAuditor); ok {
		if aa.AuditAsync(ev) == nil {
			return
		}
	}
	_, _ = p.m.opts.Auditor.AppendAudit(ctx, ev)
}

// DenialEvent is the decision record of a request refused because its approval a was denied
// or expired; when says where the refusal happened (long_poll or resubmitted).
func DenialEvent(a Approval, when string) audit.Event {
	reason := a.Reason
	if reason == "" {
		reason = "an operator denied this request, or its approval expired"
	}
	s := a.Summary
	attrs := map[string]string{"approval_state": string(a.State), "refused_at": when}
	if a.DecidedBy != "" {
		attrs["decided_by"] = a.DecidedBy
	}
	// A collateral request is named by its action and request_id (its summary has them).
	for _, k := range []string{"action", "request_id"} {
		if v := s[k]; v != "" {
			attrs[k] = v
		}
	}
	return audit.Event{
		Kind: audit.KindDecision, Decision: "deny", Code: pipeline.CodeApprovalDenied, Rule: a.Rule, Reason: reason,
		Principal: a.Principal, Agent: a.Agent, Wallet: a.Wallet, TabID: s["tab_id"], ReqID: s["req_id"],
		Scheme: s["scheme"], ApprovalID: a.ID, Attrs: attrs,
	}
}

func status(a Approval) pipeline.ApprovalStatus {
	st := pipeline.ApprovalStatus{ID: a.ID, Reason: a.Reason}
	switch a.State {
	case Approved:
		st.State = pipeline.ApprovalApproved
	case Denied, Expired:
		st.State = pipeline.ApprovalDenied
	default:
		st.State = pipeline.ApprovalWaiting
	}
	return st
}
