package policyengine

import (
	"fmt"
	"strings"
)

// Action is what an Intent asks the daemon to do with an agent's wallet. The zero value is
// ActionGuarantee, so an Intent built without an action is a payment guarantee, as before
// actions existed. Its JSON form is the name ("deposit"); a guarantee is omitted.
//
// Withdrawals are three actions because the three contract calls decide different things:
// only requestWithdrawal (ActionWithdraw) names an amount; cancelWithdrawal and
// finalizeWithdrawal act on the pending request and carry amount 0 (see docs/policy-actions.md).
type Action uint8

// The actions a policy decides. Their numeric values are stable (the compiled policy's hash does
// not depend on them, but callers may store them).
const (
	ActionGuarantee          Action = iota // sign a 4Mica payment guarantee (EIP-712 / EIP-191 claims)
	ActionDeposit                          // Core4Mica deposit() / depositStablecoin(asset, amount)
	ActionWithdraw                         // Core4Mica requestWithdrawal([asset,] amount)
	ActionCancelWithdrawal                 // Core4Mica cancelWithdrawal([asset]); amount 0
	ActionFinalizeWithdrawal               // Core4Mica finalizeWithdrawal([asset]); amount 0
	ActionPayTab                           // payTabInERC20Token(tabId, asset, amount, recipient) or the ETH tab transfer
	numActions
)

var actionNames = [numActions]string{"guarantee", "deposit", "withdraw", "cancel_withdrawal", "finalize_withdrawal", "pay_tab"}

// Actions lists every action, in numeric order.
var Actions = []Action{ActionGuarantee, ActionDeposit, ActionWithdraw, ActionCancelWithdrawal, ActionFinalizeWithdrawal, ActionPayTab}

// actionSet is a bit set of actions (bit 1<<Action).
type actionSet uint8

const (
	setGuarantee actionSet = 1 << ActionGuarantee
	setPayTab    actionSet = 1 << ActionPayTab
	setAll       actionSet = 1<<numActions - 1
	// setRecipient: actions with a recipient (PayTo), where sellers mean something.
	setRecipient = setGuarantee | setPayTab
	// setCollateral: actions on the wallet's own collateral, without a recipient.
	setCollateral = setAll &^ setRecipient
)

func (a Action) bit() actionSet { return 1 << a }

// Valid reports whether a is one of the declared actions.
func (a Action) Valid() bool { return a < numActions }

// String returns the action's name ("guarantee", "pay_tab", …).
func (a Action) String() string {
	if a.Valid() {
		return actionNames[a]
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// ParseAction returns the action with this name.
func ParseAction(s string) (Action, error) {
	for i, n := range actionNames {
		if n == s {
			return Action(i), nil
		}
	}
	return 0, fmt.Errorf("unknown action %q (one of: %s)", s, strings.Join(actionNames[:], ", "))
}

// MarshalText encodes the action's name; an undeclared action is an error.
func (a Action) MarshalText() ([]byte, error) {
	if !a.Valid() {
		return nil, fmt.Errorf("action: %d is not a declared action", uint8(a))
	}
	return []byte(actionNames[a]), nil
}

// UnmarshalText decodes an action name.
func (a *Action) UnmarshalText(b []byte) error {
	v, err := ParseAction(string(b))
	if err != nil {
		return fmt.Errorf("action: %w", err)
	}
	*a = v
	return nil
}

// hasAmount reports whether the action's call carries an amount the agent chooses.
func (a Action) hasAmount() bool { return a != ActionCancelWithdrawal && a != ActionFinalizeWithdrawal }

func (s actionSet) names() []string {
	var out []string
	for a := Action(0); a < numActions; a++ {
		if s&a.bit() != 0 {
			out = append(out, actionNames[a])
		}
	}
	return out
}

func (s actionSet) String() string { return strings.Join(s.names(), ", ") }
