package ledger_test

import (
	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/killswitch"
	"github.com/signerd/signerd/signerd/ledger"
)

// The ledger satisfies the interfaces its consumers declare.
var (
	_ killswitch.Store         = (*ledger.Ledger)(nil)
	_ policyengine.UsageReader = (*ledger.Ledger)(nil)
)
