package coreclient

import (
	"context"
	"fmt"
	"math/big"
	"strings"

	"github.com/ethereum/go-ethereum/accounts/abi"
	"github.com/ethereum/go-ethereum/common"
)

// CallKind names what a Call does, for the policy (Options.Authorize) and the log.
type CallKind string

// The calls of §5.5.
const (
	KindDeposit            CallKind = "deposit"             // deposit() payable
	KindDepositStablecoin  CallKind = "deposit_stablecoin"  // depositStablecoin(address,uint256)
	KindApprove            CallKind = "approve"             // ERC-20 approve(address,uint256)
	KindRequestWithdrawal  CallKind = "request_withdrawal"  // requestWithdrawal(uint256) / (address,uint256)
	KindCancelWithdrawal   CallKind = "cancel_withdrawal"   // cancelWithdrawal() / (address)
	KindFinalizeWithdrawal CallKind = "finalize_withdrawal" // finalizeWithdrawal() / (address)
	KindPayTabERC20        CallKind = "pay_tab_erc20"       // payTabInERC20Token(uint256,address,uint256,address)
	KindPayTabETH          CallKind = "pay_tab_eth"         // plain ETH transfer with the tab memo
)

// Call is one transaction to make: where it goes, the ETH it carries and its calldata, plus
// the facts a spending policy decides on (asset, amount, tab, recipient).
type Call struct {
	Kind  CallKind
	To    common.Address
	Value *big.Int // wei sent with the call; never nil
	Data  []byte

	Asset     common.Address // collateral / payment asset; zero = ETH (§5.5)
	Amount    U256           // amount moved, approved or requested
	TabID     U256           // pay-tab calls
	ReqID     U256           // ETH pay-tab memo
	Recipient common.Address // pay-tab calls
}

// core4MicaABI is the subset of CORE contracts/src/Core4Mica.sol that a payer calls (§5.5),
// plus ERC-20 approve.
const core4MicaABI = `[
{"type":"function","name":"deposit","stateMutability":"payable","inputs":[],"outputs":[]},
{"type":"function","name":"depositStablecoin","stateMutability":"nonpayable","inputs":[{"name":"asset","type":"address"},{"name":"amount","type":"uint256"}],"outputs":[]},
{"type":"function","name":"requestWithdrawal","stateMutability":"nonpayable","inputs":[{"name":"amount","type":"uint256"}],"outputs":[]},
{"type":"function","name":"requestWithdrawal","stateMutability":"nonpayable","inputs":[{"name":"asset","type":"address"},{"name":"amount","type":"uint256"}],"outputs":[]},
{"type":"function","name":"cancelWithdrawal","stateMutability":"nonpayable","inputs":[],"outputs":[]},
{"type":"function","name":"cancelWithdrawal","stateMutability":"nonpayable","inputs":[{"name":"asset","type":"address"}],"outputs":[]},
{"type":"function","name":"finalizeWithdrawal","stateMutability":"nonpayable","inputs":[],"outputs":[]},
{"type":"function","name":"finalizeWithdrawal","stateMutability":"nonpayable","inputs":[{"name":"asset","type":"address"}],"outputs":[]},
{"type":"function","name":"payTabInERC20Token","stateMutability":"nonpayable","inputs":[{"name":"tabId","type":"uint256"},{"name":"asset","type":"address"},{"name":"amount","type":"uint256"},{"name":"recipient","type":"address"}],"outputs":[]},
{"type":"function","name":"getUserAllAssets","stateMutability":"view","inputs":[{"name":"userAddr","type":"address"}],
 "outputs":[{"name":"","type":"tuple[]","components":[{"name":"asset","type":"address"},{"name":"collateral","type":"uint256"},{"name":"withdrawalRequestTimestamp","type":"uint256"},{"name":"withdrawalRequestAmount","type":"uint256"}]}]},
{"type":"function","name":"approve","stateMutability":"nonpayable","inputs":[{"name":"spender","type":"address"},{"name":"amount","type":"uint256"}],"outputs":[{"name":"","type":"bool"}]}
]`

// methods maps a canonical signature ("requestWithdrawal(address,uint256)") to its ABI method,
// so overloads are picked by signature, not by go-ethereum's renaming.
var methods = func() map[string]abi.Method {
	parsed, err := abi.JSON(strings.NewReader(core4MicaABI))
	if err != nil {
		panic("coreclient: bad built-in ABI: " + err.Error())
	}
	m := make(map[string]abi.Method, len(parsed.Methods))
	for _, meth := range parsed.Methods {
		m[meth.Sig] = meth
	}
	return m
}()

// Method returns the ABI method for a canonical signature such as "deposit()"; ok is false
// for a function this package does not know.
func Method(sig string) (abi.Method, bool) {
	m, ok := methods[sig]
	return m, ok
}

// pack encodes a call of the method with signature sig: 4-byte selector then the ABI-encoded
// arguments (go-ethereum accounts/abi).
func pack(sig string, args ...any) []byte {
	m, ok := methods[sig]
	if !ok {
		panic("coreclient: unknown method " + sig)
	}
	enc, err := m.Inputs.Pack(args...)
	if err != nil {
		panic(fmt.Sprintf("coreclient: pack %s: %v", sig, err)) // arguments are typed; cannot happen
	}
	return append(append([]byte{}, m.ID...), enc...)
}

// DepositETH is deposit() payable on Core4Mica with value amount (§5.5, selector 0xd0e30db0).
func DepositETH(contract common.Address, amount U256) Call {
	return Call{Kind: KindDeposit, To: contract, Value: amount.Big(), Data: pack("deposit()"), Amount: amount}
}

// DepositStablecoin is depositStablecoin(asset, amount) (§5.5, 0xa587f4f3). It needs an
// ERC-20 approve(Core4Mica, amount) first (ApproveERC20).
func DepositStablecoin(contract, asset common.Address, amount U256) Call {
	return Call{Kind: KindDepositStablecoin, To: contract, Value: new(big.Int),
		Data: pack("depositStablecoin(address,uint256)", asset, amount.Big()), Asset: asset, Amount: amount}
}

// ApproveERC20 is approve(spender, amount) on the token contract (selector 0x095ea7b3); the
// spender for deposits and ERC-20 tab payments is Core4Mica (§5.5).
func ApproveERC20(token, spender common.Address, amount U256) Call {
	return Call{Kind: KindApprove, To: token, Value: new(big.Int),
		Data: pack("approve(address,uint256)", spender, amount.Big()), Asset: token, Amount: amount, Recipient: spender}
}

// RequestWithdrawal is requestWithdrawal(amount) for ETH (asset zero, 0x9ee679e8) or
// requestWithdrawal(asset, amount) for a stablecoin (0xda95ebf7) (§5.5). One request per
// (user, asset); a new one overwrites the old.
func RequestWithdrawal(contract, asset common.Address, amount U256) Call {
	c := Call{Kind: KindRequestWithdrawal, To: contract, Value: new(big.Int), Asset: asset, Amount: amount}
	if asset == (common.Address{}) {
		c.Data = pack("requestWithdrawal(uint256)", amount.Big())
	} else {
		c.Data = pack("requestWithdrawal(address,uint256)", asset, amount.Big())
	}
	return c
}

// CancelWithdrawal is cancelWithdrawal() for ETH (0x22611280) or cancelWithdrawal(asset)
// (0x3e0db869) (§5.5).
func CancelWithdrawal(contract, asset common.Address) Call {
	c := Call{Kind: KindCancelWithdrawal, To: contract, Value: new(big.Int), Asset: asset}
	if asset == (common.Address{}) {
		c.Data = pack("cancelWithdrawal()")
	} else {
		c.Data = pack("cancelWithdrawal(address)", asset)
	}
	return c
}

// FinalizeWithdrawal is finalizeWithdrawal() for ETH (0xc5b6aa2f) or finalizeWithdrawal(asset)
// (0x4abf24cb), allowed after withdrawalGracePeriod (§5.5).
func FinalizeWithdrawal(contract, asset common.Address) Call {
	c := Call{Kind: KindFinalizeWithdrawal, To: contract, Value: new(big.Int), Asset: asset}
	if asset == (common.Address{}) {
		c.Data = pack("finalizeWithdrawal()")
	} else {
		c.Data = pack("finalizeWithdrawal(address)", asset)
	}
	return c
}

// PayTabERC20 is payTabInERC20Token(tabId, asset, amount, recipient) (§5.5, 0xa0eb8057): the
// contract moves amount from the wallet to recipient (needs approve to Core4Mica).
func PayTabERC20(contract common.Address, tabID U256, asset common.Address, amount U256, recipient common.Address) Call {
	return Call{Kind: KindPayTabERC20, To: contract, Value: new(big.Int),
		Data:  pack("payTabInERC20Token(uint256,address,uint256,address)", tabID.Big(), asset, amount.Big(), recipient),
		Asset: asset, Amount: amount, TabID: tabID, Recipient: recipient}
}

// PayTabETH pays a tab in ETH: not a contract call but a plain transfer of amount to the
// recipient whose calldata is the UTF-8 memo "tab_id:0x<hex>;req_id:0x<hex>" (§5.5): the Rust
// SDK's format!("tab_id:{:#x};req_id:{:#x}"), minimal lowercase hex. Core parses the memo with
// U256::from_str, so the 0x prefix is required (the TS SDK's unprefixed memo is misread, §9.2).
func PayTabETH(recipient common.Address, tabID, reqID, amount U256) Call {
	return Call{Kind: KindPayTabETH, To: recipient, Value: amount.Big(),
		Data: []byte(PayTabMemo(tabID, reqID)), Amount: amount, TabID: tabID, ReqID: reqID, Recipient: recipient}
}

// PayTabMemo returns "tab_id:0x<hex>;req_id:0x<hex>" (§5.5).
func PayTabMemo(tabID, reqID U256) string {
	return "tab_id:" + tabID.Hex() + ";req_id:" + reqID.Hex()
}

// GetUserAllAssetsCalldata is the calldata of the view getUserAllAssets(user) (0xc4edab2d).
func GetUserAllAssetsCalldata(user common.Address) []byte {
	return pack("getUserAllAssets(address)", user)
}

// DepositCalls returns the transactions that deposit amount of asset as collateral (§5.5):
// [deposit()] with value for ETH (asset zero), or [approve(Core4Mica, amount),
// depositStablecoin(asset, amount)] for a stablecoin, to be sent in that order. The contract
// is Options.Domain.Contract; without one it refuses (ErrNoContract) and asks Core nothing.
func (c *Client) DepositCalls(ctx context.Context, asset common.Address, amount U256) ([]Call, error) {
	if amount.IsZero() {
		return nil, invalidArg("deposit amount is 0 (the contract reverts)")
	}
	contract, err := c.PinnedContract(ctx)
	if err != nil {
		return nil, err
	}
	if asset == (common.Address{}) {
		return []Call{DepositETH(contract, amount)}, nil
	}
	return []Call{ApproveERC20(asset, contract, amount), DepositStablecoin(contract, asset, amount)}, nil
}

// PayTabCalls returns the transactions that pay amount on a tab (§5.5), after reading the tab
// from Core: for an ETH tab the plain transfer to the tab's recipient with the
// "tab_id:0x…;req_id:0x…" memo; for an ERC-20 tab [approve(Core4Mica, amount),
// payTabInERC20Token(tabId, asset, amount, recipient)]. Core attributes a payment to the tab
// only if its sender is the tab's user, its recipient the tab's recipient and its asset the
// tab's asset (§5.5), so a tab whose user is not this wallet is refused (ErrInvalidArgument),
// as is a tab Core does not know. Without Options.Domain.Contract it refuses (ErrNoContract)
// before reading the tab.
func (c *Client) PayTabCalls(ctx context.Context, tabID, reqID, amount U256) ([]Call, error) {
	if amount.IsZero() {
		return nil, invalidArg("payment amount is 0")
	}
	contract, err := c.PinnedContract(ctx)
	if err != nil {
		return nil, err
	}
	tab, err := c.Tab(ctx, tabID)
	if err != nil {
		return nil, err
	}
	if tab == nil {
		return nil, invalidArg("Core knows no tab %s", tabID.Hex())
	}
	if tab.TabID != tabID {
		return nil, &ResponseError{Op: "GET /core/tabs/" + tabID.Hex(), Reason: "answer is for tab " + tab.TabID.Hex()}
	}
	if w := c.Wallet(); tab.UserAddress != w {
		return nil, invalidArg("tab %s belongs to user %s, not to this wallet %s", tabID.Hex(), tab.UserAddress.Hex(), w.Hex())
	}
	if tab.AssetAddress == (common.Address{}) {
		return []Call{PayTabETH(tab.RecipientAddress, tabID, reqID, amount)}, nil
	}
	return []Call{ApproveERC20(tab.AssetAddress, contract, amount),
		PayTabERC20(contract, tabID, tab.AssetAddress, amount, tab.RecipientAddress)}, nil
}
