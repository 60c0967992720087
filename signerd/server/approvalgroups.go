package server

// Approval groups without operators: a policy approval names the group whose members may
// approve its held requests; when no configured operator belongs to that group the requests
// can only expire. The daemon still loads such a policy (it fails closed: nothing is signed
// without an approval) but warns at load and reload, in its log and in the reload answer.

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/config"
)

// policyApproval is one approval of a policy as its source declares it.
type policyApproval struct {
	ID, Group string
}

// approvalGroupWarning is one approval whose group has no operator (ID and Group empty when
// the check itself could not be made); Text is the sentence operators see.
type approvalGroupWarning struct {
	ID, Group, Text string
}

// approvalGroupWarnings returns one warning per approval of p whose group no operator in ops
// belongs to, in source order. When no operator declares any group, any operator may decide
// any approval and nothing is reported.
//
// policyengine does not export its compiled approvals, so the ids and groups are read from
// the policy's source files (p.Summary().Files); if they cannot be read, or no longer hold as
// many approvals as p compiled (edited since), the single warning says the check was skipped.
func approvalGroupWarnings(p *policyengine.Policy, ops []config.Operator) []approvalGroupWarning {
	members := map[string][]string{}
	for _, o := range ops {
		for _, g := range o.Groups {
			members[g] = append(members[g], o.Name)
		}
	}
	sum := p.Summary()
	if len(members) == 0 || sum.Approvals == 0 {
		return nil
	}
	approvals, err := readPolicyApprovals(sum.Files)
	if err == nil && len(approvals) != sum.Approvals {
		err = fmt.Errorf("the policy files hold %d approvals where %d were compiled (edited since the load?)", len(approvals), sum.Approvals)
	}
	if err != nil {
		return []approvalGroupWarning{{Text: "approval groups not checked: " + err.Error()}}
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

// readPolicyApprovals reads the id and group of every entry of the top-level `approvals:` lists
// of the given policy files, in file order (the order policyengine compiles them in).
func readPolicyApprovals(files []string) ([]policyApproval, error) {
	files = slices.Clone(files)
	sort.Strings(files)
	var out []policyApproval
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %v", name, err)
		}
		var doc struct {
			Approvals []struct {
				ID    string `yaml:"id"`
				Group string `yaml:"group"`
			} `yaml:"approvals"`
		}
		if err := yaml.Unmarshal(b, &doc); err != nil {
			return nil, fmt.Errorf("reading %s: %v", name, err)
		}
		for _, a := range doc.Approvals {
			out = append(out, policyApproval{ID: a.ID, Group: a.Group})
		}
	}
	return out, nil
}

// warnApprovalGroups logs approvalGroupWarnings for the policy just compiled (at load and at
// reload) and returns their texts for the reload answer and the status.
func (d *Daemon) warnApprovalGroups(p *policyengine.Policy) []string {
	var texts []string
	for _, w := range approvalGroupWarnings(p, d.cfg.Operators) {
		if w.ID == "" {
			d.log.Warn("policy: "+w.Text, "policy", d.cfg.Policy)
		} else {
			d.log.Warn("policy: approval can never be approved: no operator is in its group",
				"approval", w.ID, "group", w.Group, "policy", d.cfg.Policy, "detail", w.Text)
		}
		texts = append(texts, w.Text)
	}
	return texts
}
