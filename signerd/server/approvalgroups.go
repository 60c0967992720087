package server

// Approval groups without operators: a policy approval names the group whose members may
// approve its held requests; when no configured operator belongs to that group the requests
// can only expire. The daemon still loads such a policy (it fails closed: nothing is signed
// without an approval) but warns at load and reload, in its log and in the reload answer.

import (
	"fmt"
	"sort"
	"strings"

	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/config"
)

// approvalGroupWarning is one approval whose group has no operator; Text is the sentence
// operators see.
type approvalGroupWarning struct {
	ID, Group, Text string
}

// approvalGroupWarnings returns one warning per approval of p whose group no operator in ops
// belongs to, in compiled order. When no operator declares any group, any operator may decide
// any approval and nothing is reported.
func approvalGroupWarnings(p *policyengine.Policy, ops []config.Operator) []approvalGroupWarning {
	members := map[string][]string{}
	for _, o := range ops {
		for _, g := range o.Groups {
			members[g] = append(members[g], o.Name)
		}
	}
	approvals := p.Approvals()
	if len(members) == 0 || len(approvals) == 0 {
		return nil
	}
	groups := make([]string, 0, len(members))
	for g := range members {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	var warnings []approvalGroupWarning
	for _, a := range approvals {
		if len(members[a.Group]) > 0 {
			continue
		}
		warnings = append(warnings, approvalGroupWarning{ID: a.ID, Group: a.Group, Text: fmt.Sprintf(
			"approval %q: no operator is in group %q, so the requests it holds can never be approved and will expire (operators' groups: %s)",
			a.ID, a.Group, strings.Join(groups, ", "))})
	}
	return warnings
}

// warnApprovalGroups logs approvalGroupWarnings for the policy just compiled (at load and at
// reload) and returns their texts for the reload answer and the status.
func (d *Daemon) warnApprovalGroups(p *policyengine.Policy) []string {
	var texts []string
	for _, w := range approvalGroupWarnings(p, d.cfg.Operators) {
		d.log.Warn("policy: approval can never be approved: no operator is in its group",
			"approval", w.ID, "group", w.Group, "policy", d.cfg.Policy, "detail", w.Text)
		texts = append(texts, w.Text)
	}
	return texts
}
