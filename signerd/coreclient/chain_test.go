package coreclient_test

import (
	"context"
	"errors"
	"math/big"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"
	"github.com/ethereum/go-ethereum/ethclient"
	"github.com/ethereum/go-ethereum/ethclient/simulated"

	"github.com/signerd/signerd/signerd/coreclient"
	"github.com/signerd/signerd/signerd/fourmica"
)

// simChainID is the chain id of go-ethereum's simulated backend.
const simChainID = 1337

var (
	noCode   = common.HexToAddress("0x4d1ca0000000000000000000000000000000c0de") // an address with no code
	stubAddr = common.HexToAddress("0x5106000000000000000000000000000000000001") // getUserAllAssets stub
	ether    = new(big.Int).Exp(big.NewInt(10), big.NewInt(18), nil)
)

// viewStub is EVM code that answers a call whose selector is getUserAllAssets (0xc4edab2d)
// with ret and stops (success, empty return) on any other call:
//
//	PUSH1 0 CALLDATALOAD PUSH1 0xe0 SHR PUSH4 0xc4edab2d EQ PUSH1 0x10 JUMPI STOP
//	JUMPDEST PUSH2 len PUSH2 0x20 PUSH1 0 CODECOPY PUSH2 len PUSH1 0 RETURN <ret>
func viewStub(ret []byte) []byte {
	n := len(ret)
	code := []byte{0x60, 0x00, 0x35, 0x60, 0xe0, 0x1c, 0x63, 0xc4, 0xed, 0xab, 0x2d, 0x14, 0x60, 0x10, 0x57, 0x00,
		0x5b, 0x61, byte(n >> 8), byte(n), 0x61, 0x00, 0x20, 0x60, 0x00, 0x39, 0x61, byte(n >> 8), byte(n), 0x60, 0x00, 0xf3}
	return append(code, ret...)
}

type assetRow = struct {
	Asset                      common.Address
	Collateral                 *big.Int
	WithdrawalRequestTimestamp *big.Int
	WithdrawalRequestAmount    *big.Int
}

// newSim starts an in-process chain with the SoftHSM wallet funded (1000 ETH) and the
// getUserAllAssets stub answering rows.
func newSim(t testing.TB, rows []assetRow) *simulated.Backend {
	t.Helper()
	m, _ := coreclient.Method("getUserAllAssets(address)")
	ret, err := m.Outputs.Pack(rows)
	if err != nil {
		t.Fatal(err)
	}
	sim := simulated.NewBackend(types.GenesisAlloc{
		wallet.Address(): {Balance: new(big.Int).Mul(big.NewInt(1000), ether)},
		stubAddr:         {Code: viewStub(ret), Balance: new(big.Int)},
	})
	t.Cleanup(func() { _ = sim.Close() })
	return sim
}

// countingChain counts the transactions handed to the RPC.
type countingChain struct {
	coreclient.Chain
	sent atomic.Int64
}

func (c *countingChain) SendTransaction(ctx context.Context, tx *types.Transaction) error {
	c.sent.Add(1)
	return c.Chain.SendTransaction(ctx, tx)
}

func newChainClient(t testing.TB, ch coreclient.Chain, mutate func(*coreclient.Options)) *coreclient.Client {
	t.Helper()
	f := newFakeCore(t, simChainID)
	o := coreclient.Options{BaseURL: f.Srv.URL, Domain: coreclient.Domain{ChainID: simChainID, EIP712Name: "4mica", EIP712Version: "1", Contract: noCode},
		Signer: wallet, Chain: ch, ReceiptPoll: 5 * time.Millisecond}
	if mutate != nil {
		mutate(&o)
	}
	c, err := coreclient.New(o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// checkMined fetches the mined transaction and checks it is an EIP-1559 transaction on the
// simulated chain, sent by the SoftHSM wallet, carrying exactly call's destination, value and
// calldata.
func checkMined(t *testing.T, sim *simulated.Backend, hash common.Hash, call coreclient.Call) {
	t.Helper()
	ctx := context.Background()
	tx, pending, err := sim.Client().TransactionByHash(ctx, hash)
	if err != nil || pending {
		t.Fatalf("mined tx: pending=%v err=%v", pending, err)
	}
	from, err := types.Sender(types.LatestSignerForChainID(big.NewInt(simChainID)), tx)
	if err != nil || from != wallet.Address() {
		t.Fatalf("mined tx sender %s (%v), want the wallet %s", from, err, wallet.Address())
	}
	if tx.Type() != types.DynamicFeeTxType || tx.ChainId().Uint64() != simChainID {
		t.Fatalf("tx type %d chain %s, want EIP-1559 on %d", tx.Type(), tx.ChainId(), simChainID)
	}
	if *tx.To() != call.To || tx.Value().Cmp(call.Value) != 0 || string(tx.Data()) != string(call.Data) {
		t.Fatalf("mined tx to=%s value=%s data=%x, want to=%s value=%s data=%x", tx.To(), tx.Value(), tx.Data(), call.To, call.Value, call.Data)
	}
}

func TestTransactionsOnSimulatedChain(t *testing.T) {
	sim := newSim(t, nil)
	ch := &countingChain{Chain: sim.Client()}
	sc := &countingSigner{Signer: wallet}
	var authorized []coreclient.CallKind
	c := newChainClient(t, ch, func(o *coreclient.Options) {
		o.Signer = sc
		o.Authorize = func(_ context.Context, call coreclient.Call) error {
			authorized = append(authorized, call.Kind)
			return nil
		}
	})
	ctx := context.Background()
	contract, err := c.Contract(ctx)
	if err != nil || contract != noCode {
		t.Fatalf("contract %s %v", contract, err)
	}

	// deposit() payable to an address without code: executes as a plain call (§5.5 calldata).
	dep := coreclient.DepositETH(contract, fourmica.MustU256("1000000000000000000"))
	tx, err := c.Send(ctx, dep)
	if err != nil {
		t.Fatal(err)
	}
	sim.Commit()
	r, err := c.Wait(ctx, tx.Hash())
	if err != nil || r.Status != types.ReceiptStatusSuccessful {
		t.Fatalf("deposit receipt %+v %v", r, err)
	}
	checkMined(t, sim, tx.Hash(), dep)
	if string(tx.Data()) != "\xd0\xe3\x0d\xb0" {
		t.Fatalf("deposit calldata %x, want d0e30db0", tx.Data())
	}
	if bal, _ := sim.Client().BalanceAt(ctx, noCode, nil); bal.Cmp(ether) != 0 {
		t.Fatalf("contract balance %s, want 1 ETH", bal)
	}

	// depositStablecoin(asset, amount) calldata, mined as sent.
	ds := coreclient.DepositStablecoin(contract, usdc, fourmica.MustU256("2500000"))
	tx, err = c.Send(ctx, ds)
	if err != nil {
		t.Fatal(err)
	}
	sim.Commit()
	if r, err := c.Wait(ctx, tx.Hash()); err != nil || r.Status != 1 {
		t.Fatalf("depositStablecoin receipt %v", err)
	}
	checkMined(t, sim, tx.Hash(), ds)
	if tx.Nonce() != 1 {
		t.Fatalf("second tx nonce %d, want 1", tx.Nonce())
	}

	// ETH pay tab: plain transfer to the recipient with the memo; SendAndWait while blocks are
	// produced in the background.
	recipient := common.HexToAddress("0x2222222222222222222222222222222222222222")
	pay := coreclient.PayTabETH(recipient, fourmica.MustU256("0xdeadbeef"), fourmica.U256FromUint64(7), fourmica.MustU256("300000000000000"))
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				sim.Commit()
			}
		}
	}()
	tx, r, err = c.SendAndWait(ctx, pay)
	close(stop)
	<-done
	if err != nil || r.Status != 1 {
		t.Fatalf("pay tab: %v", err)
	}
	checkMined(t, sim, tx.Hash(), pay)
	if string(tx.Data()) != "tab_id:0xdeadbeef;req_id:0x7" {
		t.Fatalf("memo %q", tx.Data())
	}
	if bal, _ := sim.Client().BalanceAt(ctx, recipient, nil); bal.String() != "300000000000000" {
		t.Fatalf("recipient balance %s", bal)
	}
	// Gas: the limit carries the margin over the estimate; fees are EIP-1559 caps.
	if r.GasUsed >= tx.Gas() || tx.GasFeeCap().Cmp(tx.GasTipCap()) < 0 {
		t.Fatalf("gas used %d limit %d feeCap %s tip %s", r.GasUsed, tx.Gas(), tx.GasFeeCap(), tx.GasTipCap())
	}
	if ch.sent.Load() != 3 || sc.n.Load() != 3 || len(authorized) != 3 || authorized[2] != coreclient.KindPayTabETH {
		t.Fatalf("sent %d signed %d authorized %v", ch.sent.Load(), sc.n.Load(), authorized)
	}
}

func TestFreeCollateralWithChain(t *testing.T) {
	user := wallet.Address()
	rows := []assetRow{
		{Asset: common.Address{}, Collateral: big.NewInt(9), WithdrawalRequestTimestamp: big.NewInt(0), WithdrawalRequestAmount: big.NewInt(0)},
		{Asset: usdc, Collateral: new(big.Int).Mul(big.NewInt(10), ether), WithdrawalRequestTimestamp: big.NewInt(1_700_000_000), WithdrawalRequestAmount: new(big.Int).Mul(big.NewInt(2), ether)},
	}
	sim := newSim(t, rows)
	f := newFakeCore(t, simChainID)
	f.Set(assetPath(user, usdc), `{"user_address":"`+strings.ToLower(user.Hex())+`","asset_address":"`+strings.ToLower(usdc.Hex())+`","total":"10000000000000000000","locked":"0x29a2241af62c0000","version":1,"updated_at":1}`) // locked 3e18
	f.Set(assetPath(user, common.Address{}), `null`)
	f.Set("GET /core/public-params", strings.NewReplacer(`"chain_id":84532`, `"chain_id":1337`,
		"0x1111111111111111111111111111111111111111", strings.ToLower(stubAddr.Hex())).Replace(paramsJSON))
	mk := func(chain coreclient.Chain) *coreclient.Client {
		c, err := coreclient.New(coreclient.Options{BaseURL: f.Srv.URL, Signer: wallet, Chain: chain,
			Domain: coreclient.Domain{ChainID: simChainID, EIP712Name: "4mica", EIP712Version: "1"}})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ctx := context.Background()
	c := mk(sim.Client()) // contract address discovered from Core's public params

	assets, err := c.UserAssets(ctx, user)
	if err != nil {
		t.Fatal(err)
	}
	if len(assets) != 2 || assets[1].Asset != usdc || assets[1].WithdrawalRequestAmount.Dec() != "2000000000000000000" ||
		assets[1].WithdrawalRequestTimestamp.Dec() != "1700000000" || assets[0].Collateral.Dec() != "9" {
		t.Fatalf("user assets %+v", assets)
	}
	col, err := c.FreeCollateral(ctx, user, usdc)
	if err != nil {
		t.Fatal(err)
	}
	if !col.Registered || !col.PendingKnown || col.Total.Dec() != "10000000000000000000" || col.Locked.Dec() != "3000000000000000000" ||
		col.PendingWithdrawal.Dec() != "2000000000000000000" || col.Free.Dec() != "5000000000000000000" {
		t.Fatalf("collateral %+v", col)
	}
	// Without a chain the pending withdrawal is unknown and Free is only an upper bound.
	col, err = mk(nil).FreeCollateral(ctx, user, usdc)
	if err != nil || col.PendingKnown || col.Free.Dec() != "7000000000000000000" {
		t.Fatalf("no chain: %+v %v", col, err)
	}
	// No Core record: not registered, nothing free.
	col, err = c.FreeCollateral(ctx, user, common.Address{})
	if err != nil || col.Registered || !col.Free.IsZero() {
		t.Fatalf("unregistered: %+v %v", col, err)
	}
	// A view at an address without the contract fails as a chain error, not as zero.
	c2, _ := coreclient.New(coreclient.Options{BaseURL: f.Srv.URL, Chain: sim.Client(),
		Domain: coreclient.Domain{ChainID: simChainID, EIP712Name: "4mica", EIP712Version: "1", Contract: noCode}})
	if _, err := c2.UserAssets(ctx, user); !errors.Is(err, coreclient.ErrChain) {
		t.Fatalf("view without contract: %v", err)
	}
}

func TestSendRefusals(t *testing.T) {
	sim := newSim(t, nil)
	user := wallet.Address()
	deny := errors.New("over the daily limit")
	for _, tc := range []struct {
		name   string
		mutate func(*coreclient.Options)
		class  error
		signed bool // whether the signer is reached
	}{
		{"signer fails", func(o *coreclient.Options) { o.Signer = failingSigner{addr: user} }, coreclient.ErrSigner, true},
		{"signature from another key", func(o *coreclient.Options) { o.Signer = newLyingSigner(t, user) }, coreclient.ErrSignature, true},
		{"chain id differs", func(o *coreclient.Options) { o.Domain.ChainID = testChain }, coreclient.ErrChainMismatch, false},
		{"policy denies", func(o *coreclient.Options) {
			o.Authorize = func(context.Context, coreclient.Call) error { return deny }
		}, coreclient.ErrDenied, false},
		{"fee cap above maximum", func(o *coreclient.Options) { o.MaxFeePerGas = big.NewInt(1) }, coreclient.ErrDenied, false},
		{"no chain", func(o *coreclient.Options) { o.Chain = nil }, coreclient.ErrNoChain, false},
		{"no signer", func(o *coreclient.Options) { o.Signer = nil }, coreclient.ErrNoSigner, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch := &countingChain{Chain: sim.Client()}
			var cs *countingSigner
			c := newChainClient(t, ch, func(o *coreclient.Options) {
				tc.mutate(o)
				if o.Signer != nil {
					cs = &countingSigner{Signer: o.Signer}
					o.Signer = cs
				}
				if o.Chain != nil {
					o.Chain = ch
				}
			})
			_, err := c.Send(context.Background(), coreclient.DepositETH(noCode, fourmica.U256FromUint64(1)))
			if !errors.Is(err, tc.class) {
				t.Fatalf("err = %v, want %v", err, tc.class)
			}
			if ch.sent.Load() != 0 {
				t.Fatal("a transaction reached the RPC")
			}
			if cs != nil && (cs.n.Load() > 0) != tc.signed {
				t.Fatalf("signer called %d times, want reached=%v", cs.n.Load(), tc.signed)
			}
			if tc.name == "policy denies" && !errors.Is(err, deny) {
				t.Fatalf("denial lost its reason: %v", err)
			}
		})
	}
}

// receiptChain answers TransactionReceipt from a canned receipt (a chain whose transaction
// reverted); nothing else is called by Wait.
type receiptChain struct {
	coreclient.Chain
	r *types.Receipt
}

func (c receiptChain) TransactionReceipt(context.Context, common.Hash) (*types.Receipt, error) {
	return c.r, nil
}

func TestWaitReportsRevert(t *testing.T) {
	ch := receiptChain{r: &types.Receipt{Status: types.ReceiptStatusFailed, BlockNumber: big.NewInt(12)}}
	c := newChainClient(t, ch, nil)
	r, err := c.Wait(context.Background(), common.Hash{1})
	var re *coreclient.RevertedError
	if !errors.As(err, &re) || !errors.Is(err, coreclient.ErrTxReverted) || re.Block != 12 || r == nil {
		t.Fatalf("err = %v, want RevertedError in block 12", err)
	}
	// A receipt that never comes: Wait ends with the context.
	sim := newSim(t, nil)
	c2 := newChainClient(t, sim.Client(), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c2.Wait(ctx, common.Hash{2}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait for a missing receipt: %v", err)
	}
}

// autoCommit mines a block every 20 ms until the returned stop is called.
func autoCommit(sim *simulated.Backend) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-quit:
				return
			case <-time.After(20 * time.Millisecond):
				sim.Commit()
			}
		}
	}()
	return func() { close(quit); <-done }
}

func tabJSON(tab string, user, recipient, asset common.Address) string {
	return `{"tab_id":"` + tab + `","user_address":"` + strings.ToLower(user.Hex()) + `","recipient_address":"` + strings.ToLower(recipient.Hex()) +
		`","asset_address":"` + strings.ToLower(asset.Hex()) + `","accepted_guarantee_version":1,"start_timestamp":1700000000,"ttl_seconds":86400,` +
		`"status":"OPEN","settlement_status":"PENDING","created_at":1700000000,"updated_at":1700000000}`
}

// TestPayTabAndDepositCalls builds the settlement transactions from Core's tab and sends them
// on the simulated chain.
func TestPayTabAndDepositCalls(t *testing.T) {
	sim := newSim(t, nil)
	f := newFakeCore(t, simChainID)
	user := wallet.Address()
	recipient := common.HexToAddress("0x3333333333333333333333333333333333333333")
	f.Set("GET /core/tabs/0x2a", tabJSON("0x2a", user, recipient, common.Address{}))
	f.Set("GET /core/tabs/0x2b", tabJSON("0x2b", user, recipient, usdc))
	f.Set("GET /core/tabs/0x2c", tabJSON("0x2c", recipient, user, common.Address{})) // someone else's tab
	f.Set("GET /core/tabs/0x2d", `null`)
	f.Set("GET /core/tabs/0x2e", tabJSON("0x2f", user, recipient, common.Address{})) // answer for another tab
	c, err := coreclient.New(coreclient.Options{BaseURL: f.Srv.URL, Signer: wallet, Chain: sim.Client(), ReceiptPoll: 5 * time.Millisecond,
		Domain: coreclient.Domain{ChainID: simChainID, EIP712Name: "4mica", EIP712Version: "1", Contract: noCode}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	amount := fourmica.MustU256("12345")
	stop := autoCommit(sim)
	defer stop()

	eth, err := c.PayTabCalls(ctx, fourmica.U256FromUint64(0x2a), fourmica.U256FromUint64(3), amount)
	if err != nil || len(eth) != 1 || eth[0].Kind != coreclient.KindPayTabETH || eth[0].To != recipient || string(eth[0].Data) != "tab_id:0x2a;req_id:0x3" {
		t.Fatalf("ETH tab calls %+v %v", eth, err)
	}
	erc, err := c.PayTabCalls(ctx, fourmica.U256FromUint64(0x2b), fourmica.U256FromUint64(3), amount)
	if err != nil || len(erc) != 2 || erc[0].Kind != coreclient.KindApprove || erc[0].To != usdc || erc[1].Kind != coreclient.KindPayTabERC20 || erc[1].To != noCode {
		t.Fatalf("ERC-20 tab calls %+v %v", erc, err)
	}
	if want := coreclient.PayTabERC20(noCode, fourmica.U256FromUint64(0x2b), usdc, amount, recipient); string(erc[1].Data) != string(want.Data) {
		t.Fatalf("payTabInERC20Token calldata %x, want %x", erc[1].Data, want.Data)
	}
	for _, call := range append(eth, erc...) {
		tx, r, err := c.SendAndWait(ctx, call)
		if err != nil || r.Status != types.ReceiptStatusSuccessful {
			t.Fatalf("%s: %v", call.Kind, err)
		}
		checkMined(t, sim, tx.Hash(), call)
	}
	for _, tab := range []uint64{0x2c, 0x2d} {
		if _, err := c.PayTabCalls(ctx, fourmica.U256FromUint64(tab), fourmica.U256{}, amount); !errors.Is(err, coreclient.ErrInvalidArgument) {
			t.Errorf("tab %#x: %v, want ErrInvalidArgument", tab, err)
		}
	}
	if _, err := c.PayTabCalls(ctx, fourmica.U256FromUint64(0x2e), fourmica.U256{}, amount); !errors.Is(err, coreclient.ErrBadResponse) {
		t.Errorf("answer for another tab: %v, want ErrBadResponse", err)
	}
	if _, err := c.PayTabCalls(ctx, fourmica.U256FromUint64(0x2a), fourmica.U256{}, fourmica.U256{}); !errors.Is(err, coreclient.ErrInvalidArgument) {
		t.Errorf("zero payment: %v", err)
	}

	dep, err := c.DepositCalls(ctx, common.Address{}, amount)
	if err != nil || len(dep) != 1 || dep[0].Kind != coreclient.KindDeposit || dep[0].Value.String() != "12345" {
		t.Fatalf("ETH deposit calls %+v %v", dep, err)
	}
	dep, err = c.DepositCalls(ctx, usdc, amount)
	if err != nil || len(dep) != 2 || dep[0].Kind != coreclient.KindApprove || dep[0].Recipient != noCode || dep[1].Kind != coreclient.KindDepositStablecoin {
		t.Fatalf("stablecoin deposit calls %+v %v", dep, err)
	}
	if _, err := c.DepositCalls(ctx, usdc, fourmica.U256{}); !errors.Is(err, coreclient.ErrInvalidArgument) {
		t.Fatalf("zero deposit: %v", err)
	}
	if _, err := c.Send(ctx, coreclient.Call{Kind: coreclient.KindDeposit}); !errors.Is(err, coreclient.ErrInvalidArgument) {
		t.Fatalf("send to address 0: %v", err)
	}
}

var _ coreclient.Chain = (*ethclient.Client)(nil)
