package policyengine

import (
	"github.com/ethereum/go-ethereum/common"
	"path/filepath"
	"reflect"
	"testing"
)

func TestApprovalsInfo(t *testing.T) {
	p := mustLoad(t, filepath.Join(testdataDir, "example.yaml"), CompileOptions{})
	got := p.Approvals()
	want := []ApprovalInfo{{ID: "large-research-payment", Group: "finance"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Approvals() = %+v, want %+v", got, want)
	}
	if p.Summary().Approvals != len(got) {
		t.Fatalf("Summary().Approvals = %d, Approvals() has %d", p.Summary().Approvals, len(got))
	}
}

func TestWalletAllowed(t *testing.T) {
	ex := mustLoad(t, filepath.Join(testdataDir, "example.yaml"), CompileOptions{})
	dev := mustLoad(t, filepath.Join(testdataDir, "dev.yaml"), CompileOptions{SelfUID: UID(1000)})
	listed := common.HexToAddress("0x2B5AD5c4795c026514f8317c7a215E218DcCD6cF")
	other := common.HexToAddress("0x6813Eb9362372EEF6200f3b1dbC3f819671cBA69")
	for _, c := range []struct {
		name   string
		p      *Policy
		agent  string
		wallet common.Address
		want   bool
	}{
		{"listed wallet", ex, "research-bot", listed, true},
		{"another agent's wallet", ex, "research-bot", other, false},
		{"unknown agent", ex, "nobody", listed, false},
		{"zero wallet", ex, "research-bot", common.Address{}, false},
		{"wallets: any", dev, dev.Agents()[0], other, true},
		{"wallets: any, zero wallet", dev, dev.Agents()[0], common.Address{}, false},
	} {
		if got := c.p.WalletAllowed(c.agent, c.wallet); got != c.want {
			t.Errorf("%s: WalletAllowed = %v, want %v", c.name, got, c.want)
		}
	}
}
