package coreclient_test

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/crypto"

	"github.com/signerd/signerd/signerd/coreclient"
	"github.com/signerd/signerd/signerd/fourmica"
)

// The selector table of §5.5 (plus ERC-20 approve, which §5.5 names without a selector).
var docSelectors = []struct{ sig, selector string }{
	{"deposit()", "d0e30db0"},
	{"depositStablecoin(address,uint256)", "a587f4f3"},
	{"requestWithdrawal(uint256)", "9ee679e8"},
	{"requestWithdrawal(address,uint256)", "da95ebf7"},
	{"cancelWithdrawal()", "22611280"},
	{"cancelWithdrawal(address)", "3e0db869"},
	{"finalizeWithdrawal()", "c5b6aa2f"},
	{"finalizeWithdrawal(address)", "4abf24cb"},
	{"payTabInERC20Token(uint256,address,uint256,address)", "a0eb8057"},
	{"getUserAllAssets(address)", "c4edab2d"},
	{"approve(address,uint256)", "095ea7b3"},
}

func TestSelectorsMatchDoc(t *testing.T) {
	for _, s := range docSelectors {
		m, ok := coreclient.Method(s.sig)
		if !ok {
			t.Errorf("%s: not in the built-in ABI", s.sig)
			continue
		}
		if got := hex.EncodeToString(m.ID); got != s.selector {
			t.Errorf("%s: ABI selector %s, doc says %s", s.sig, got, s.selector)
		}
		if got := hex.EncodeToString(crypto.Keccak256([]byte(s.sig))[:4]); got != s.selector {
			t.Errorf("%s: keccak selector %s, doc says %s", s.sig, got, s.selector)
		}
	}
}

func word(b []byte) string { return hex.EncodeToString(common.LeftPadBytes(b, 32)) }

func TestCalldataBuilders(t *testing.T) {
	contract := common.HexToAddress("0x1111111111111111111111111111111111111111")
	asset := common.HexToAddress("0x036cbd53842c5426634e7929541ec2318f3dcf7e")
	rcpt := common.HexToAddress("0x2222222222222222222222222222222222222222")
	amt := fourmica.MustU256("123456789")
	max := fourmica.MustU256("0xffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff")
	tab := fourmica.MustU256("0xdeadbeef")
	for _, tc := range []struct {
		name  string
		call  coreclient.Call
		to    common.Address
		value string
		data  string // hex without 0x
		kind  coreclient.CallKind
	}{
		{"deposit", coreclient.DepositETH(contract, amt), contract, "123456789", "d0e30db0", coreclient.KindDeposit},
		{"depositStablecoin", coreclient.DepositStablecoin(contract, asset, max), contract, "0",
			"a587f4f3" + word(asset[:]) + strings.Repeat("ff", 32), coreclient.KindDepositStablecoin},
		{"approve", coreclient.ApproveERC20(asset, contract, amt), asset, "0",
			"095ea7b3" + word(contract[:]) + word(amt[:]), coreclient.KindApprove},
		{"requestWithdrawal ETH", coreclient.RequestWithdrawal(contract, common.Address{}, amt), contract, "0",
			"9ee679e8" + word(amt[:]), coreclient.KindRequestWithdrawal},
		{"requestWithdrawal ERC20", coreclient.RequestWithdrawal(contract, asset, amt), contract, "0",
			"da95ebf7" + word(asset[:]) + word(amt[:]), coreclient.KindRequestWithdrawal},
		{"cancelWithdrawal ETH", coreclient.CancelWithdrawal(contract, common.Address{}), contract, "0", "22611280", coreclient.KindCancelWithdrawal},
		{"cancelWithdrawal ERC20", coreclient.CancelWithdrawal(contract, asset), contract, "0", "3e0db869" + word(asset[:]), coreclient.KindCancelWithdrawal},
		{"finalizeWithdrawal ETH", coreclient.FinalizeWithdrawal(contract, common.Address{}), contract, "0", "c5b6aa2f", coreclient.KindFinalizeWithdrawal},
		{"finalizeWithdrawal ERC20", coreclient.FinalizeWithdrawal(contract, asset), contract, "0", "4abf24cb" + word(asset[:]), coreclient.KindFinalizeWithdrawal},
		{"payTabInERC20Token", coreclient.PayTabERC20(contract, tab, asset, amt, rcpt), contract, "0",
			"a0eb8057" + word(tab[:]) + word(asset[:]) + word(amt[:]) + word(rcpt[:]), coreclient.KindPayTabERC20},
		{"pay tab ETH", coreclient.PayTabETH(rcpt, tab, fourmica.U256FromUint64(7), amt), rcpt, "123456789",
			hex.EncodeToString([]byte("tab_id:0xdeadbeef;req_id:0x7")), coreclient.KindPayTabETH},
	} {
		if tc.call.To != tc.to || tc.call.Value.String() != tc.value || hex.EncodeToString(tc.call.Data) != tc.data || tc.call.Kind != tc.kind {
			t.Errorf("%s:\n got to=%s value=%s kind=%s data=%x\nwant to=%s value=%s kind=%s data=%s", tc.name,
				tc.call.To, tc.call.Value, tc.call.Kind, tc.call.Data, tc.to, tc.value, tc.kind, tc.data)
		}
	}
	if got := hex.EncodeToString(coreclient.GetUserAllAssetsCalldata(rcpt)); got != "c4edab2d"+word(rcpt[:]) {
		t.Errorf("getUserAllAssets calldata %s", got)
	}
}

// TestPayTabMemoAsCoreParsesIt parses the memo the way Core does (CORE
// crates/blockchain/src/txtools.rs: split on ';', strip "tab_id:"/"req_id:", U256::from_str,
// where no prefix means decimal) and checks the ids come back.
func TestPayTabMemoAsCoreParsesIt(t *testing.T) {
	for _, tc := range []struct{ tab, req, memo string }{
		{"0", "0", "tab_id:0x0;req_id:0x0"},
		{"42", "7", "tab_id:0x2a;req_id:0x7"},
		{"0xffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", "18446744073709551616",
			"tab_id:0xffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff;req_id:0x10000000000000000"},
	} {
		tab, req := fourmica.MustU256(tc.tab), fourmica.MustU256(tc.req)
		memo := coreclient.PayTabMemo(tab, req)
		if memo != tc.memo {
			t.Errorf("memo %q, want %q", memo, tc.memo)
		}
		var gotTab, gotReq string
		for _, part := range strings.Split(memo, ";") {
			if v, ok := strings.CutPrefix(part, "tab_id:"); ok {
				gotTab = v
			} else if v, ok := strings.CutPrefix(part, "req_id:"); ok {
				gotReq = v
			}
		}
		pt, err1 := fourmica.ParseU256(gotTab)
		pr, err2 := fourmica.ParseU256(gotReq)
		if err1 != nil || err2 != nil || pt != tab || pr != req {
			t.Errorf("%s: Core would read tab %v req %v (%v %v)", memo, pt, pr, err1, err2)
		}
		if !bytes.Equal(coreclient.PayTabETH(common.Address{1}, tab, req, fourmica.U256{}).Data, []byte(memo)) {
			t.Errorf("PayTabETH data differs from the memo")
		}
	}
}

func TestFreeAmount(t *testing.T) {
	u := fourmica.U256FromUint64
	for _, tc := range []struct{ total, locked, pending, free uint64 }{
		{10, 3, 2, 5},
		{10, 3, 0, 7},
		{10, 10, 0, 0},
		{10, 3, 8, 0},  // pending above what is left: saturates (Core's saturating_sub)
		{10, 12, 0, 0}, // locked above total
		{0, 0, 0, 0},
	} {
		if got := coreclient.FreeAmount(u(tc.total), u(tc.locked), u(tc.pending)); got != u(tc.free) {
			t.Errorf("free(%d,%d,%d) = %s, want %d", tc.total, tc.locked, tc.pending, got.Dec(), tc.free)
		}
	}
}
