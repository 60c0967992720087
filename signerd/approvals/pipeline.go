package approvals

import (
	"context"
	"time"

	"github.com/signerd/signerd/signerd/pipeline"
)

// ForPipeline adapts m to the pipeline's Approvals interface.
func ForPipeline(m *Manager) pipeline.Approvals { return pipelineAdapter{m} }

type pipelineAdapter struct{ m *Manager }

func (p pipelineAdapter) Submit(ctx context.Context, r pipeline.ApprovalRequest) (pipeline.ApprovalStatus, error) {
	a, err := p.m.Submit(ctx, Request{
		Key: r.Fingerprint, Agent: r.Agent, Principal: r.Principal, Wallet: r.Wallet.Hex(),
		Rule: r.Rule, Group: r.Group, Timeout: r.Timeout, Summary: r.Summary,
	})
	if err != nil {
		return pipeline.ApprovalStatus{}, err
	}
	return status(a), nil
}

func (p pipelineAdapter) Wait(ctx context.Context, id string, maxWait time.Duration) (pipeline.ApprovalStatus, error) {
	a, err := p.m.Wait(ctx, id, maxWait)
	if a.ID == "" {
		return pipeline.ApprovalStatus{}, err
	}
	return status(a), err
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
