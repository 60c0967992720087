package coreclient_test

import (
	"context"
	"encoding/hex"
	"errors"
	"math/big"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum"
	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"
	"github.com/ethereum/go-ethereum/crypto"

	"github.com/signerd/signerd/signerd/coreclient"
	"github.com/signerd/signerd/signerd/fourmica"
)

// Adversarial review of coreclient: byte-exact calldata against §5.5, the personal_sign prefix,
// chain binding of signed transactions, and what a malicious Core or RPC can make the wallet
// sign. The findings (5-8) are fixed; their tests run always.

func w32(hexNoPrefix string) string { return strings.Repeat("0", 64-len(hexNoPrefix)) + hexNoPrefix }

// Every builder, byte for byte: selector of §5.5, arguments in the documented order, value 0 on
// every call that is not payable (only deposit() and the ETH tab transfer carry value).
func TestReviewCalldataBytes(t *testing.T) {
	c := common.HexToAddress("0x1111111111111111111111111111111111111111")
	tok := common.HexToAddress("0x036CbD53842c5426634e7929541eC2318f3dCF7e")
	rcp := common.HexToAddress("0x3333333333333333333333333333333333333333")
	amt := fourmica.MustU256("0x0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20") // every byte distinct
	tab := fourmica.MustU256("0x7f3a")
	tokW, cW, rcpW := w32(strings.ToLower(tok.Hex()[2:])), w32(strings.ToLower(c.Hex()[2:])), w32(strings.ToLower(rcp.Hex()[2:]))
	amtW := "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20"
	for _, tc := range []struct {
		name  string
		call  coreclient.Call
		to    common.Address
		data  string
		value *big.Int
	}{
		{"deposit ETH", coreclient.DepositETH(c, amt), c, "d0e30db0", amt.Big()},
		{"depositStablecoin(asset, amount)", coreclient.DepositStablecoin(c, tok, amt), c, "a587f4f3" + tokW + amtW, new(big.Int)},
		{"approve(Core4Mica, amount) on the token", coreclient.ApproveERC20(tok, c, amt), tok, "095ea7b3" + cW + amtW, new(big.Int)},
		{"requestWithdrawal(amount) for ETH", coreclient.RequestWithdrawal(c, common.Address{}, amt), c, "9ee679e8" + amtW, new(big.Int)},
		{"requestWithdrawal(asset, amount)", coreclient.RequestWithdrawal(c, tok, amt), c, "da95ebf7" + tokW + amtW, new(big.Int)},
		{"cancelWithdrawal() for ETH", coreclient.CancelWithdrawal(c, common.Address{}), c, "22611280", new(big.Int)},
		{"cancelWithdrawal(asset)", coreclient.CancelWithdrawal(c, tok), c, "3e0db869" + tokW, new(big.Int)},
		{"finalizeWithdrawal() for ETH", coreclient.FinalizeWithdrawal(c, common.Address{}), c, "c5b6aa2f", new(big.Int)},
		{"finalizeWithdrawal(asset)", coreclient.FinalizeWithdrawal(c, tok), c, "4abf24cb" + tokW, new(big.Int)},
		{"payTabInERC20Token(tabId, asset, amount, recipient)", coreclient.PayTabERC20(c, tab, tok, amt, rcp), c,
			"a0eb8057" + w32("7f3a") + tokW + amtW + rcpW, new(big.Int)},
		{"ETH tab transfer to the recipient with the memo", coreclient.PayTabETH(rcp, tab, fourmica.U256FromUint64(0), amt), rcp,
			hex.EncodeToString([]byte("tab_id:0x7f3a;req_id:0x0")), amt.Big()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.call.To != tc.to {
				t.Errorf("to %s, want %s", tc.call.To.Hex(), tc.to.Hex())
			}
			if got := hex.EncodeToString(tc.call.Data); got != tc.data {
				t.Errorf("data\n got %s\nwant %s", got, tc.data)
			}
			if tc.call.Value == nil || tc.call.Value.Cmp(tc.value) != 0 {
				t.Errorf("value %v, want %s", tc.call.Value, tc.value)
			}
		})
	}
	// The ETH memo: minimal lowercase 0x hex (Rust {:#x}), max values, no padding.
	max := fourmica.MustU256("0x" + strings.Repeat("f", 64))
	if m := coreclient.PayTabMemo(max, fourmica.MustU256("0xABC")); m != "tab_id:0x"+strings.Repeat("f", 64)+";req_id:0xabc" {
		t.Errorf("memo %q", m)
	}
}

// personal_sign really is applied to the SIWE message: the digest is keccak256 of
// "\x19Ethereum Signed Message:\n" + decimal byte length + message, computed here by hand, and
// differs from the raw keccak of the message.
func TestReviewPersonalSignPrefix(t *testing.T) {
	tmpl := coreclient.SIWETemplate{Domain: "core.4mica.example", URI: "https://core.4mica.example", ChainID: 84532,
		Statement: "Sign in to 4mica.", Expiration: "2026-11-21T19:05:00Z", IssuedAt: "2026-11-21T19:00:00Z"}
	msg, err := coreclient.BuildSIWEMessage(tmpl, common.HexToAddress("0xaa"), "n-1")
	if err != nil {
		t.Fatal(err)
	}
	want := crypto.Keccak256([]byte("\x19Ethereum Signed Message:\n" + strconv.Itoa(len(msg)) + msg))
	got := coreclient.PersonalSignDigest([]byte(msg))
	if string(got[:]) != string(want) {
		t.Fatalf("personal_sign digest %x, want %x", got, want)
	}
	if raw := crypto.Keccak256([]byte(msg)); string(raw) == string(got[:]) {
		t.Fatal("no prefix applied")
	}
	// A multi-byte UTF-8 statement: the length is in bytes, not characters.
	tmpl.Statement = "Anmelden bei 4mica – ✓"
	msg, _ = coreclient.BuildSIWEMessage(tmpl, common.HexToAddress("0xaa"), "n-1")
	want = crypto.Keccak256([]byte("\x19Ethereum Signed Message:\n" + strconv.Itoa(len([]byte(msg))) + msg))
	if got := coreclient.PersonalSignDigest([]byte(msg)); string(got[:]) != string(want) {
		t.Fatal("personal_sign length is not the byte length")
	}
}

// A signature is bound to its chain: Finish refuses a legacy transaction, and a signature of
// the chain-A hash attached to the same transaction for chain B recovers to someone else.
func TestReviewFinishChainBinding(t *testing.T) {
	key, _ := crypto.GenerateKey()
	from := crypto.PubkeyToAddress(key.PublicKey)
	to := common.HexToAddress("0x1111111111111111111111111111111111111111")
	mk := func(chain int64) *types.Transaction {
		return types.NewTx(&types.DynamicFeeTx{ChainID: big.NewInt(chain), Nonce: 1, GasTipCap: big.NewInt(1), GasFeeCap: big.NewInt(2), Gas: 21000, To: &to, Value: big.NewInt(1)})
	}
	sign := func(tx *types.Transaction) [65]byte {
		h := types.LatestSignerForChainID(tx.ChainId()).Hash(tx)
		s, err := crypto.Sign(h[:], key)
		if err != nil {
			t.Fatal(err)
		}
		var out [65]byte
		copy(out[:], s)
		out[64] += 27
		return out
	}
	a, b := mk(84532), mk(1)
	if _, err := coreclient.Finish(a, sign(a), from); err != nil {
		t.Fatalf("own chain: %v", err)
	}
	if _, err := coreclient.Finish(b, sign(a), from); !errors.Is(err, coreclient.ErrSignature) {
		t.Fatalf("chain-84532 signature on a chain-1 transaction: %v", err)
	}
	legacy := types.NewTx(&types.LegacyTx{Nonce: 1, GasPrice: big.NewInt(1), Gas: 21000, To: &to, Value: big.NewInt(1)})
	if _, err := coreclient.Finish(legacy, [65]byte{64: 27}, from); !errors.Is(err, coreclient.ErrInvalidArgument) {
		t.Fatalf("legacy transaction: %v", err)
	}
	for _, v := range []byte{2, 26, 29, 35, 37} {
		s := sign(a)
		s[64] = v
		if _, err := coreclient.Finish(a, s, from); !errors.Is(err, coreclient.ErrSignature) {
			t.Errorf("v=%d accepted: %v", v, err)
		}
	}
}

// stubChain is an Ethereum RPC that answers what a malicious or broken RPC may answer; it
// never sends (Prepare does not).
type stubChain struct {
	coreclient.Chain
	id      uint64
	tip     *big.Int
	baseFee *big.Int
}

func (s stubChain) ChainID(context.Context) (*big.Int, error) {
	return new(big.Int).SetUint64(s.id), nil
}
func (s stubChain) PendingNonceAt(context.Context, common.Address) (uint64, error) { return 0, nil }
func (s stubChain) EstimateGas(context.Context, ethereum.CallMsg) (uint64, error)  { return 50000, nil }
func (s stubChain) SuggestGasTipCap(context.Context) (*big.Int, error)             { return s.tip, nil }
func (s stubChain) HeaderByNumber(context.Context, *big.Int) (*types.Header, error) {
	return &types.Header{Number: big.NewInt(1), BaseFee: s.baseFee}, nil
}

// Regression: the transaction is always EIP-1559 with the configured chain id, whatever the RPC
// answers; an RPC on another chain is refused before anything is built.
func TestReviewPrepareChainID(t *testing.T) {
	ctx := context.Background()
	f := newFakeCore(t, testChain)
	c := newClient(t, f, func(o *coreclient.Options) {
		o.Chain = stubChain{id: testChain, tip: big.NewInt(1), baseFee: big.NewInt(10)}
		o.Domain.Contract = contractAddr
	})
	p, err := c.Prepare(ctx, coreclient.DepositETH(contractAddr, fourmica.U256FromUint64(5)), nil)
	if err != nil || p.Tx.Type() != types.DynamicFeeTxType || p.Tx.ChainId().Uint64() != testChain ||
		p.Hash != [32]byte(types.LatestSignerForChainID(big.NewInt(testChain)).Hash(p.Tx)) {
		t.Fatalf("prepared %+v %v", p, err)
	}
	c2 := newClient(t, f, func(o *coreclient.Options) { o.Chain = stubChain{id: 1, tip: big.NewInt(1), baseFee: big.NewInt(10)} })
	if _, err := c2.Prepare(ctx, coreclient.DepositETH(contractAddr, fourmica.U256FromUint64(5)), nil); !errors.Is(err, coreclient.ErrChainMismatch) {
		t.Fatalf("RPC on chain 1: %v", err)
	}
}

// Finding 5 (high): with no contract pinned (core.contract unset), the contract every deposit,
// approve and ERC-20 tab payment goes to is the one Core's public params name. A compromised
// Core names its own contract: deposit() sends the ETH there and approve() lets it pull the
// tokens. The wallet must not build a value- or allowance-moving call to an unpinned contract.
func TestReviewUnpinnedContractFromCore(t *testing.T) {
	f := newFakeCore(t, testChain)
	attacker := common.HexToAddress("0x00000000000000000000000000000000000bad00")
	f.PublicParams(testChain, "4mica", "1", attacker, "")
	c := newClient(t, f, nil) // Domain.Contract zero: not pinned
	calls, err := c.DepositCalls(context.Background(), usdc, fourmica.U256FromUint64(1_000_000))
	if err == nil {
		for _, cl := range calls {
			if cl.To == attacker || cl.Recipient == attacker {
				t.Fatalf("%s built to/for Core's contract %s, which nothing pins", cl.Kind, attacker.Hex())
			}
		}
		t.Fatal("deposit built without a pinned contract")
	}
	if !errors.Is(err, coreclient.ErrNoContract) {
		t.Fatalf("unpinned deposit: %v, want ErrNoContract", err)
	}
	if _, err := c.PayTabCalls(context.Background(), fourmica.U256FromUint64(1), fourmica.U256FromUint64(0), fourmica.U256FromUint64(1)); !errors.Is(err, coreclient.ErrNoContract) {
		t.Fatalf("unpinned pay_tab: %v, want ErrNoContract", err)
	}
	if n := f.Count("GET /core/tabs/0x1"); n != 0 {
		t.Fatalf("unpinned pay_tab read the tab from Core (%d)", n)
	}
	// Pinned: the calls go to the pinned contract.
	c2 := newClient(t, f, func(o *coreclient.Options) { o.Domain.Contract = contractAddr })
	calls, err = c2.DepositCalls(context.Background(), usdc, fourmica.U256FromUint64(1_000_000))
	if err != nil || len(calls) != 2 || calls[0].Recipient != contractAddr || calls[1].To != contractAddr {
		t.Fatalf("pinned deposit: %+v %v", calls, err)
	}
}

// Finding 6 (medium): with no MaxFeePerGas (core.max_fee_per_gas_wei unset) the RPC alone
// decides the fee: a tip of 1,000,000 gwei is signed as asked. The RPC may be the one Core's
// public params name (core.rpc_url unset).
func TestReviewUncappedFee(t *testing.T) {
	f := newFakeCore(t, testChain)
	tip := new(big.Int).Mul(big.NewInt(1_000_000), big.NewInt(1e9)) // 1e15 wei/gas
	c := newClient(t, f, func(o *coreclient.Options) {
		o.Chain = stubChain{id: testChain, tip: tip, baseFee: big.NewInt(1e9)}
		o.Domain.Contract = contractAddr
	})
	p, err := c.Prepare(context.Background(), coreclient.DepositETH(contractAddr, fourmica.U256FromUint64(1)), nil)
	if err == nil {
		t.Fatalf("prepared with tip %s and fee cap %s wei/gas (max fee %s wei) and no cap configured", p.Tx.GasTipCap(), p.Tx.GasFeeCap(),
			new(big.Int).Mul(p.Tx.GasFeeCap(), new(big.Int).SetUint64(p.Tx.Gas())))
	}
	if !errors.Is(err, coreclient.ErrDenied) {
		t.Fatalf("uncapped fee: %v, want ErrDenied", err)
	}
	// A configured cap replaces the default (here: higher, so the same fee is accepted).
	c2 := newClient(t, f, func(o *coreclient.Options) {
		o.Chain = stubChain{id: testChain, tip: tip, baseFee: big.NewInt(1e9)}
		o.Domain.Contract = contractAddr
		o.MaxFeePerGas = new(big.Int).Mul(big.NewInt(2), tip)
	})
	if _, err := c2.Prepare(context.Background(), coreclient.DepositETH(contractAddr, fourmica.U256FromUint64(1)), nil); err != nil {
		t.Fatalf("fee under the configured cap: %v", err)
	}
}

// Finding 7 (low): Prepare signs whatever Value a Call carries, also for kinds that must carry
// none (approve, depositStablecoin, withdrawals, payTabInERC20Token). The builders set 0, but
// nothing enforces it for a Call built elsewhere.
func TestReviewValueOnNonPayableCall(t *testing.T) {
	f := newFakeCore(t, testChain)
	c := newClient(t, f, func(o *coreclient.Options) {
		o.Chain = stubChain{id: testChain, tip: big.NewInt(1), baseFee: big.NewInt(10)}
		o.Domain.Contract = contractAddr
	})
	// deposit() and the ETH tab transfer carry value.
	if _, err := c.Prepare(context.Background(), coreclient.DepositETH(contractAddr, fourmica.U256FromUint64(1e18)), nil); err != nil {
		t.Fatalf("deposit() with value: %v", err)
	}
	if _, err := c.Prepare(context.Background(), coreclient.PayTabETH(contractAddr, fourmica.U256FromUint64(1), fourmica.U256FromUint64(0), fourmica.U256FromUint64(1e18)), nil); err != nil {
		t.Fatalf("ETH tab transfer with value: %v", err)
	}
	for _, call := range []coreclient.Call{
		coreclient.ApproveERC20(usdc, contractAddr, fourmica.U256FromUint64(1)),
		coreclient.DepositStablecoin(contractAddr, usdc, fourmica.U256FromUint64(1)),
		coreclient.RequestWithdrawal(contractAddr, usdc, fourmica.U256FromUint64(1)),
		coreclient.FinalizeWithdrawal(contractAddr, common.Address{}),
		coreclient.PayTabERC20(contractAddr, fourmica.U256FromUint64(1), usdc, fourmica.U256FromUint64(1), contractAddr),
	} {
		call.Value = big.NewInt(1e18)
		if _, err := c.Prepare(context.Background(), call, nil); !errors.Is(err, coreclient.ErrInvalidArgument) {
			t.Errorf("%s with 1 ETH of value: %v", call.Kind, err)
		}
	}
}

// Finding 8 (low): the SIWE fields Core alone controls are signed as given: an Expiration
// Time decades away (a login message valid "forever") and a URI on another host than the
// checked domain are accepted.
func TestReviewSIWEFieldsBounded(t *testing.T) {
	for name, edit := range map[string]func(map[string]any){
		"expiration in 2099":   func(m map[string]any) { m["expiration"] = "2099-01-01T00:00:00Z" },
		"uri on another host":  func(m map[string]any) { m["uri"] = "https://wallet-drainer.example/login" },
		"issuedAt in the past": func(m map[string]any) { m["issuedAt"] = "2001-01-01T00:00:00Z" },
		"no expiration":        func(m map[string]any) { m["expiration"] = "" },
		"expiration before issuedAt": func(m map[string]any) {
			m["expiration"] = time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
		},
		"uri with another port": func(m map[string]any) { m["domain"], m["uri"] = "core.test:3000", "http://core.test:4000" },
	} {
		t.Run(name, func(t *testing.T) {
			f := newFakeCore(t, testChain)
			f.TemplateEdit = edit
			f.Set(assetPath(wallet.Address(), usdc), `null`)
			c := newClient(t, f, nil)
			_, err := c.Asset(context.Background(), wallet.Address(), usdc)
			if err == nil || f.Count("POST /auth/verify") != 0 {
				t.Fatalf("signed and sent a SIWE message with %s (err %v)", name, err)
			}
		})
	}
}
