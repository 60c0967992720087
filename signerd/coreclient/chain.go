package coreclient

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/ethereum/go-ethereum"
	"github.com/ethereum/go-ethereum/accounts/abi"
	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"
	"github.com/ethereum/go-ethereum/rpc"
)

// Chain is the subset of go-ethereum's *ethclient.Client the client uses. The simulated
// backend's client (ethclient/simulated) satisfies it too.
type Chain interface {
	ChainID(ctx context.Context) (*big.Int, error)
	PendingNonceAt(ctx context.Context, account common.Address) (uint64, error)
	EstimateGas(ctx context.Context, msg ethereum.CallMsg) (uint64, error)
	SuggestGasTipCap(ctx context.Context) (*big.Int, error)
	HeaderByNumber(ctx context.Context, number *big.Int) (*types.Header, error)
	SendTransaction(ctx context.Context, tx *types.Transaction) error
	TransactionReceipt(ctx context.Context, txHash common.Hash) (*types.Receipt, error)
	CallContract(ctx context.Context, msg ethereum.CallMsg, blockNumber *big.Int) ([]byte, error)
}

func (c *Client) chain(ctx context.Context) (Chain, error) {
	ch := c.opts.Chain
	if ch == nil {
		return nil, ErrNoChain
	}
	c.stateMu.Lock()
	ok := c.chainOK
	c.stateMu.Unlock()
	if ok {
		return ch, nil
	}
	id, err := ch.ChainID(ctx)
	if err != nil {
		return nil, chainErr(ctx, "ChainID", err)
	}
	if !id.IsUint64() || id.Uint64() != c.opts.Domain.ChainID {
		return nil, fmt.Errorf("%w: RPC reports %s, configured %d", ErrChainMismatch, id, c.opts.Domain.ChainID)
	}
	c.stateMu.Lock()
	c.chainOK = true
	c.stateMu.Unlock()
	return ch, nil
}

// Prepared is an unsigned EIP-1559 transaction built for one Call, with the hash the wallet
// must sign. The daemon records Tx (RLP) and Hash durably before the signature is made, then
// calls Finish and Broadcast.
type Prepared struct {
	Call    Call
	Tx      *types.Transaction // unsigned (no signature values)
	Hash    [32]byte           // types.LatestSignerForChainID(chainID).Hash(Tx)
	ChainID *big.Int
}

// DefaultMaxFeePerGas is the fee cap Prepare applies when Options.MaxFeePerGas is nil:
// 200 gwei per gas (far above Base's and Ethereum's usual fees, far below what a hostile RPC's
// fee suggestion could cost).
func DefaultMaxFeePerGas() *big.Int { return big.NewInt(200_000_000_000) }

func callKindName(k CallKind) string {
	if k == "" {
		return "generic"
	}
	return string(k)
}

// Prepare builds call as an unsigned EIP-1559 transaction (types.DynamicFeeTx) from the wallet
// on the configured chain, failing closed before anything is signed:
//
//  1. the chain RPC's chain id must equal Options.Domain.ChainID (ErrChainMismatch);
//  2. Options.Authorize, when set, must allow the call (ErrDenied);
//  3. nonce = PendingNonceAt(wallet) (or *nonce when given); gas = EstimateGas +
//     GasMarginPercent; tip = SuggestGasTipCap; fee cap = 2 × base fee of the latest header +
//     tip (at most Options.MaxFeePerGas, default DefaultMaxFeePerGas); value only on
//     deposit() and the ETH tab transfer (ErrInvalidArgument otherwise);
//  4. the signing hash is types.LatestSignerForChainID(chainID).Hash(tx).
//
// Two Prepare calls for the same wallet take the same pending nonce until the first
// transaction is broadcast: callers serialise (Send does).
func (c *Client) Prepare(ctx context.Context, call Call, nonce *uint64) (*Prepared, error) {
	if c.opts.Signer == nil {
		return nil, ErrNoSigner
	}
	if call.Value == nil {
		call.Value = new(big.Int)
	}
	if call.Value.Sign() < 0 || call.Value.BitLen() > 256 {
		return nil, invalidArg("value out of range")
	}
	if call.To == (common.Address{}) {
		return nil, invalidArg("no destination (contract creation and sends to address 0 are not supported)")
	}
	if call.Value.Sign() > 0 && call.Kind != KindDeposit && call.Kind != KindPayTabETH {
		return nil, invalidArg("a %s call carries no ETH (only deposit() and the ETH tab transfer do)", callKindName(call.Kind))
	}
	ch, err := c.chain(ctx)
	if err != nil {
		return nil, err
	}
	if c.opts.Authorize != nil {
		if err := c.opts.Authorize(ctx, call); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrDenied, err)
		}
	}
	from := c.opts.Signer.Address()
	to := call.To
	var n uint64
	if nonce != nil {
		n = *nonce
	} else if n, err = ch.PendingNonceAt(ctx, from); err != nil {
		return nil, chainErr(ctx, "PendingNonceAt", err)
	}
	gas, err := ch.EstimateGas(ctx, ethereum.CallMsg{From: from, To: &to, Value: call.Value, Data: call.Data})
	if err != nil {
		return nil, chainErr(ctx, "EstimateGas", err)
	}
	gas += gas * c.gasPct / 100
	tip, err := ch.SuggestGasTipCap(ctx)
	if err != nil {
		return nil, chainErr(ctx, "SuggestGasTipCap", err)
	}
	head, err := ch.HeaderByNumber(ctx, nil)
	if err != nil {
		return nil, chainErr(ctx, "HeaderByNumber", err)
	}
	if head.BaseFee == nil {
		return nil, &ChainError{Op: "HeaderByNumber", Err: errors.New("latest header has no base fee (chain without EIP-1559)")}
	}
	feeCap := new(big.Int).Add(new(big.Int).Mul(head.BaseFee, big.NewInt(2)), tip)
	m, which := c.opts.MaxFeePerGas, "MaxFeePerGas"
	if m == nil {
		m, which = DefaultMaxFeePerGas(), "the default cap (DefaultMaxFeePerGas)"
	}
	if feeCap.Cmp(m) > 0 {
		return nil, fmt.Errorf("%w: fee cap %s wei/gas above %s %s", ErrDenied, feeCap, which, m)
	}
	chainID := new(big.Int).SetUint64(c.opts.Domain.ChainID)
	tx := types.NewTx(&types.DynamicFeeTx{
		ChainID: chainID, Nonce: n, GasTipCap: tip, GasFeeCap: feeCap, Gas: gas,
		To: &to, Value: call.Value, Data: call.Data,
	})
	return &Prepared{Call: call, Tx: tx, Hash: [32]byte(types.LatestSignerForChainID(chainID).Hash(tx)), ChainID: chainID}, nil
}

// Finish attaches sig (r‖s‖v, v 27/28 or 0/1) to the unsigned EIP-1559 transaction tx and
// checks that the sender recovered from the signed transaction is wallet (ErrSignature).
// It does no I/O: the daemon rebuilds a stored transaction with it after a restart.
func Finish(tx *types.Transaction, sig [65]byte, wallet common.Address) (*types.Transaction, error) {
	if tx == nil || tx.Type() != types.DynamicFeeTxType || tx.ChainId() == nil {
		return nil, invalidArg("not an EIP-1559 transaction")
	}
	switch sig[64] {
	case 27, 28:
		sig[64] -= 27
	case 0, 1:
	default:
		return nil, fmt.Errorf("%w: v=%d", ErrSignature, sig[64])
	}
	signer := types.LatestSignerForChainID(tx.ChainId())
	signed, err := tx.WithSignature(signer, sig[:])
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSignature, err)
	}
	if got, err := types.Sender(signer, signed); err != nil || got != wallet {
		return nil, fmt.Errorf("%w: recovered transaction sender is not the wallet", ErrSignature)
	}
	return signed, nil
}

// Broadcast hands a signed transaction to the chain RPC (SendTransaction). The transaction
// may reach a mempool even when an error is returned (a timeout after the node accepted it).
func (c *Client) Broadcast(ctx context.Context, signed *types.Transaction) error {
	ch, err := c.chain(ctx)
	if err != nil {
		return err
	}
	if err := ch.SendTransaction(ctx, signed); err != nil {
		return chainErr(ctx, "SendTransaction", err)
	}
	c.log.Info("core transaction sent", "tx", signed.Hash().Hex(), "nonce", signed.Nonce())
	return nil
}

// Send builds, signs and sends call as an EIP-1559 transaction (types.DynamicFeeTx) on the
// configured chain, from the wallet, and returns the signed transaction: Prepare, the Signer's
// signature of the hash (re-verified by recovery), Finish (the sender recovered from the
// signed transaction must be the wallet, ErrSignature), Broadcast. Each step fails closed
// before anything is sent.
//
// Send holds a lock for the whole sequence so two calls do not take the same pending nonce.
func (c *Client) Send(ctx context.Context, call Call) (*types.Transaction, error) {
	if c.opts.Signer == nil {
		return nil, ErrNoSigner
	}
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	p, err := c.Prepare(ctx, call, nil)
	if err != nil {
		return nil, err
	}
	sig, err := c.sign(ctx, p.Hash)
	if err != nil {
		return nil, err
	}
	signed, err := Finish(p.Tx, sig, c.opts.Signer.Address())
	if err != nil {
		return nil, err
	}
	if err := c.Broadcast(ctx, signed); err != nil {
		return nil, err
	}
	return signed, nil
}

// Wait polls for the receipt of txHash every Options.ReceiptPoll until it is mined or ctx ends
// ("not found" and geth's "transaction indexing is in progress" mean: ask again; any other RPC
// error is returned as *ChainError, and Wait may be called again since the transaction is sent).
// A receipt with status 0 is returned together with a *RevertedError (ErrTxReverted).
func (c *Client) Wait(ctx context.Context, txHash common.Hash) (*types.Receipt, error) {
	if c.opts.Chain == nil {
		return nil, ErrNoChain
	}
	t := time.NewTicker(c.poll)
	defer t.Stop()
	for {
		r, err := c.opts.Chain.TransactionReceipt(ctx, txHash)
		switch {
		case err == nil && r != nil:
			if r.Status != types.ReceiptStatusSuccessful {
				return r, &RevertedError{TxHash: txHash.Hex(), Block: r.BlockNumber.Uint64()}
			}
			return r, nil
		case err != nil && !errors.Is(err, ethereum.NotFound) && !indexing(err):
			return nil, chainErr(ctx, "TransactionReceipt", err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// chainErr wraps an RPC failure; when ctx has ended it says so (errors.Is(err,
// context.DeadlineExceeded)), since the RPC transport may report it as an i/o timeout.
func chainErr(ctx context.Context, op string, err error) *ChainError {
	cerr := ctx.Err()
	if dl, ok := ctx.Deadline(); ok && cerr == nil && !time.Now().Before(dl) {
		// The transport's own deadline (taken from ctx) can fire before ctx reports it.
		cerr = context.DeadlineExceeded
	}
	if cerr != nil && !errors.Is(err, cerr) {
		err = fmt.Errorf("%w (%v)", cerr, err)
	}
	return &ChainError{Op: op, Err: err}
}

// indexing reports geth's transient "transaction indexing is in progress" answer (its
// TxIndexingError): the node cannot tell yet whether the transaction is mined; ask again.
func indexing(err error) bool {
	const msg = "transaction indexing is in progress"
	var de rpc.DataError
	if errors.As(err, &de) && de.ErrorData() == msg {
		return true
	}
	return err.Error() == msg
}

// SendAndWait is Send then Wait.
func (c *Client) SendAndWait(ctx context.Context, call Call) (*types.Transaction, *types.Receipt, error) {
	tx, err := c.Send(ctx, call)
	if err != nil {
		return nil, nil, err
	}
	r, err := c.Wait(ctx, tx.Hash())
	return tx, r, err
}

// UserAsset is one element of getUserAllAssets(user) (§5.5): the on-chain collateral of the
// user in one asset and its pending withdrawal request (timestamp 0 = none).
type UserAsset struct {
	Asset                      common.Address
	Collateral                 U256
	WithdrawalRequestTimestamp U256
	WithdrawalRequestAmount    U256
}

// UserAssets calls the view getUserAllAssets(user) on Core4Mica at the latest block and decodes
// the tuple[] answer with accounts/abi. ETH (asset 0) comes first.
func (c *Client) UserAssets(ctx context.Context, user common.Address) ([]UserAsset, error) {
	ch, err := c.chain(ctx)
	if err != nil {
		return nil, err
	}
	contract, err := c.Contract(ctx)
	if err != nil {
		return nil, err
	}
	out, err := ch.CallContract(ctx, ethereum.CallMsg{To: &contract, Data: GetUserAllAssetsCalldata(user)}, nil)
	if err != nil {
		return nil, chainErr(ctx, "CallContract getUserAllAssets", err)
	}
	return DecodeUserAssets(out)
}

// DecodeUserAssets decodes the return data of getUserAllAssets.
func DecodeUserAssets(data []byte) ([]UserAsset, error) {
	const op = "getUserAllAssets"
	m := methods["getUserAllAssets(address)"]
	vals, err := m.Outputs.Unpack(data)
	if err != nil {
		return nil, &ChainError{Op: op, Err: fmt.Errorf("decode: %w (no Core4Mica contract at that address?)", err)}
	}
	var raw []struct {
		Asset                      common.Address
		Collateral                 *big.Int
		WithdrawalRequestTimestamp *big.Int
		WithdrawalRequestAmount    *big.Int
	}
	if err := convert(vals, &raw); err != nil {
		return nil, &ChainError{Op: op, Err: err}
	}
	res := make([]UserAsset, len(raw))
	for i, r := range raw {
		res[i].Asset = r.Asset
		for _, p := range []struct {
			dst *U256
			v   *big.Int
		}{{&res[i].Collateral, r.Collateral}, {&res[i].WithdrawalRequestTimestamp, r.WithdrawalRequestTimestamp}, {&res[i].WithdrawalRequestAmount, r.WithdrawalRequestAmount}} {
			u, err := fromBig(p.v)
			if err != nil {
				return nil, &ChainError{Op: op, Err: err}
			}
			*p.dst = u
		}
	}
	return res, nil
}

func convert(vals []any, dst any) (err error) {
	if len(vals) != 1 {
		return fmt.Errorf("decode: %d return values, want 1", len(vals))
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("decode: %v", r)
		}
	}()
	abi.ConvertType(vals[0], dst)
	return nil
}

func fromBig(b *big.Int) (U256, error) {
	if b == nil {
		return U256{}, errors.New("nil integer")
	}
	var u U256
	if b.Sign() < 0 || b.BitLen() > 256 {
		return u, errors.New("integer out of uint256 range")
	}
	b.FillBytes(u[:])
	return u, nil
}

// Collateral is the free collateral of (user, asset) by §6's rule
// free = total − locked − pending_withdrawal (saturating at 0, as Core computes it in CORE
// core/src/persist/repo/guarantees.rs), with its inputs and what the client could know.
type Collateral struct {
	User, Asset common.Address
	// Registered is false when Core has no balance record (GET …/assets/… answered null): Core
	// then refuses every guarantee with "user not registered" (§6) and Free is 0.
	Registered bool
	Total      U256 // Core's total (deposits Core has seen)
	Locked     U256 // Core's locked (guarantees issued and not yet unlocked)
	// PendingWithdrawal is the on-chain withdrawalRequestAmount of getUserAllAssets (§5.5).
	// PendingKnown is false when no chain is configured or the asset is not in the contract's
	// list; Free then ignores it and is only an upper bound.
	PendingWithdrawal U256
	PendingKnown      bool
	OnChainCollateral U256 // the contract's collateral for the asset (when PendingKnown)
	Free              U256
}

// FreeCollateral computes §6's free collateral for (user, asset): Core's total and locked from
// GET /core/users/{user}/assets/{asset} and the pending withdrawal from the contract's
// getUserAllAssets(user). Core applies the rule to its own database copy of the pending
// withdrawal, which it learns from the chain's WithdrawalRequested events after they are
// final; for a request Core has not yet indexed (or a cancellation), the on-chain figure used
// here differs from Core's for a while. The client cannot see Core's copy (no endpoint, §5.2).
func (c *Client) FreeCollateral(ctx context.Context, user, asset common.Address) (*Collateral, error) {
	bal, err := c.Asset(ctx, user, asset)
	if err != nil {
		return nil, err
	}
	res := &Collateral{User: user, Asset: asset}
	if bal == nil {
		return res, nil
	}
	res.Registered, res.Total, res.Locked = true, bal.Total, bal.Locked
	if c.opts.Chain != nil {
		assets, err := c.UserAssets(ctx, user)
		if err != nil {
			return nil, err
		}
		for _, a := range assets {
			if a.Asset == asset {
				res.PendingWithdrawal, res.OnChainCollateral, res.PendingKnown = a.WithdrawalRequestAmount, a.Collateral, true
				break
			}
		}
	}
	res.Free = FreeAmount(res.Total, res.Locked, res.PendingWithdrawal)
	return res, nil
}

// FreeAmount is §6's free = total − locked − pending, each subtraction saturating at 0.
func FreeAmount(total, locked, pending U256) U256 {
	f := total.Big()
	f.Sub(f, locked.Big())
	if f.Sign() < 0 {
		return U256{}
	}
	f.Sub(f, pending.Big())
	if f.Sign() < 0 {
		return U256{}
	}
	u, _ := fromBig(f)
	return u
}
