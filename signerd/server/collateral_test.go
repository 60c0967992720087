package server_test

import (
	"context"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"
	"github.com/ethereum/go-ethereum/ethclient/simulated"

	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/signerd/config"
	"github.com/signerd/signerd/signerd/coreclient"
	"github.com/signerd/signerd/signerd/coreclient/corefake"
	"github.com/signerd/signerd/signerd/server"
)

// simChainID is the chain id of go-ethereum's simulated backend: the daemon signs for it.
const simChainID = 1337

// collateralPolicy: the test uid may sign guarantees and deposit up to 0.05 ETH; every other
// action is denied by default (action_not_allowed).
const collateralPolicy = `version: 1
settings: {max_timestamp_skew: 120s}
assets:
  ETH: {address: "0x0000000000000000000000000000000000000000", decimals: 18}
  USDX: {address: "0x5106000000000000000000000000000000000002", decimals: 6}
agents:
  tester:
    callers: [{uid: self}]
    wallets: any
rules:
  - id: guarantees
    effect: allow
    agents: [tester]
    sellers: any
    networks: [eip155:1337]
    assets: [ETH]
    max_amount: "1 ETH"
  - id: eth-deposits
    effect: allow
    actions: [deposit]
    agents: [tester]
    networks: [eip155:1337]
    assets: [ETH, USDX]
    max_amount: ["0.05 ETH", "100 USDX"]
`

var (
	// core4mica is the contract address: EVM code answering getUserAllAssets (§5.5) with canned
	// rows and accepting any other call (deposit() with value succeeds).
	core4mica = common.HexToAddress("0x5106000000000000000000000000000000000001")
	// usdx stands for an ERC-20 token: the same stub code accepts approve(…).
	usdx   = common.HexToAddress("0x5106000000000000000000000000000000000002")
	ether  = new(big.Int).Exp(big.NewInt(10), big.NewInt(18), nil)
	finney = new(big.Int).Exp(big.NewInt(10), big.NewInt(15), nil) // 0.001 ETH
)

// viewStub is EVM code that answers a call whose selector is getUserAllAssets (0xc4edab2d)
// with ret and stops (success, empty return) on any other call.
func viewStub(ret []byte) []byte {
	n := len(ret)
	code := []byte{0x60, 0x00, 0x35, 0x60, 0xe0, 0x1c, 0x63, 0xc4, 0xed, 0xab, 0x2d, 0x14, 0x60, 0x10, 0x57, 0x00,
		0x5b, 0x61, byte(n >> 8), byte(n), 0x61, 0x00, 0x20, 0x60, 0x00, 0x39, 0x61, byte(n >> 8), byte(n), 0x60, 0x00, 0xf3}
	return append(code, ret...)
}

// countingChain counts the transactions handed to the RPC and can refuse the next ones.
type countingChain struct {
	coreclient.Chain
	sent    atomic.Int64
	failing atomic.Int64 // refuse this many SendTransaction calls (a node that is down)
	mu      sync.Mutex
	hashes  map[common.Hash]bool
}

func (c *countingChain) SendTransaction(ctx context.Context, tx *types.Transaction) error {
	if c.failing.Load() > 0 {
		c.failing.Add(-1)
		return errors.New("connection refused")
	}
	c.sent.Add(1)
	c.mu.Lock()
	c.hashes[tx.Hash()] = true
	c.mu.Unlock()
	return c.Chain.SendTransaction(ctx, tx)
}

func (c *countingChain) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.hashes)
}

type collateralEnv struct {
	*testDaemon
	core  *corefake.Core
	sim   *simulated.Backend
	chain *countingChain
	// noMining stops the block every 20 ms (transactions stay pending) while set.
	noMining atomic.Bool
}

// startCollateralDaemon starts a daemon on the shared SoftHSM2 token signing for the simulated
// chain (every active wallet funded in genesis), with the fake Core at core.url. editCore may
// change the fake Core's answers before the daemon starts.
func startCollateralDaemon(t *testing.T, editCore func(*corefake.Core)) *collateralEnv {
	return restartCollateralDaemon(t, editCore, nil, "")
}

// restartCollateralDaemon is startCollateralDaemon; with prev it reuses prev's fake Core and
// chain, and with stateDir it keeps the ledger there (a restart of the same daemon).
func restartCollateralDaemon(t *testing.T, editCore func(*corefake.Core), prev *collateralEnv, stateDir string) *collateralEnv {
	t.Helper()
	return launchCollateralDaemon(t, collateralLaunch{editCore: editCore, prev: prev, stateDir: stateDir})
}

// collateralLaunch tunes launchCollateralDaemon; the zero value is startCollateralDaemon's.
type collateralLaunch struct {
	editCore func(*corefake.Core)
	prev     *collateralEnv
	stateDir string
	policy   string           // default collateralPolicy
	maxWait  time.Duration    // approvals long poll; default 300 ms
	clock    func() time.Time // the daemon's clock; default time.Now
}

func launchCollateralDaemon(t *testing.T, o collateralLaunch) *collateralEnv {
	t.Helper()
	editCore, prev, stateDir := o.editCore, o.prev, o.stateDir
	if o.policy == "" {
		o.policy = collateralPolicy
	}
	if o.maxWait == 0 {
		o.maxWait = 300 * time.Millisecond
	}
	e := &collateralEnv{}
	if prev != nil {
		e.core, e.sim, e.chain = prev.core, prev.sim, prev.chain
	} else {
		e.core = corefake.New(t, simChainID)
		e.core.PublicParams(simChainID, "4mica", "1", core4mica, "")
	}
	if editCore != nil {
		editCore(e.core)
	}
	m, _ := coreclient.Method("getUserAllAssets(address)")
	rows := []struct {
		Asset                      common.Address
		Collateral                 *big.Int
		WithdrawalRequestTimestamp *big.Int
		WithdrawalRequestAmount    *big.Int
	}{{common.Address{}, big.NewInt(1000), big.NewInt(1700000000), big.NewInt(50)}}
	ret, err := m.Outputs.Pack(rows)
	if err != nil {
		t.Fatal(err)
	}
	e.testDaemon = launchDaemon(t, []byte(o.policy), o.maxWait, func(c *config.Config) {
		c.Protocol = config.Protocol{Network: "eip155:1337", EIP712Name: "4mica", EIP712Version: "1", ChainID: simChainID}
		c.Core = config.Core{URL: e.core.URL(), SIWEDomain: "core.test", Contract: core4mica.Hex(), ReceiptTimeout: 10 * time.Second}
		if stateDir != "" {
			c.StateDir = stateDir
		}
	}, func(so *server.Options) {
		if o.clock != nil {
			so.Clock = o.clock
		}
		if prev != nil {
			so.CoreChain, so.CoreReceiptPoll = e.chain, 10*time.Millisecond
			return
		}
		keys, err := so.Backend.List(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		alloc := types.GenesisAlloc{core4mica: {Code: viewStub(ret), Balance: new(big.Int)}, usdx: {Code: viewStub(nil), Balance: new(big.Int)}}
		for _, k := range keys {
			alloc[k.Address] = types.Account{Balance: new(big.Int).Mul(big.NewInt(100), ether)}
		}
		e.sim = simulated.NewBackend(alloc)
		t.Cleanup(func() { _ = e.sim.Close() })
		e.chain = &countingChain{Chain: e.sim.Client(), hashes: map[common.Hash]bool{}}
		so.CoreChain, so.CoreReceiptPoll = e.chain, 10*time.Millisecond
	})
	if prev != nil {
		return e // prev mines
	}
	// Mine a block every 20 ms.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				if !e.noMining.Load() {
					e.sim.Commit()
				}
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return e
}

func deposit(id string, amount *big.Int, wait bool) map[string]any {
	return map[string]any{"action": "deposit", "asset": "0x0000000000000000000000000000000000000000", "amount": amount.String(),
		"request_id": id, "wait": wait}
}

func TestCollateralEndToEnd(t *testing.T) {
	e := startCollateralDaemon(t, nil)
	wallet := common.HexToAddress(e.wallet)
	ctx := context.Background()

	// Admin view of Core.
	st := e.admin.do(t, "GET", "/v1/admin/core", nil)
	params, _ := st.Body["params"].(map[string]any)
	if st.Status != 200 || st.Body["configured"] != true || st.Body["domain_ok"] != true || params["chain_id"] != float64(simChainID) ||
		!strings.EqualFold(params["contract"].(string), core4mica.Hex()) {
		t.Fatalf("admin core: %d %s", st.Status, st.Raw)
	}

	// collateral show: Core's total/locked, the contract's pending withdrawal.
	e.core.Asset(wallet, common.Address{}, "1000", "100")
	show := e.agent.do(t, "GET", "/v1/collateral?asset=0x0000000000000000000000000000000000000000", nil)
	if show.Status != 200 || show.str("total") != "1000" || show.str("locked") != "100" || show.str("pending_withdrawal") != "50" ||
		show.str("free") != "850" || show.Body["pending_known"] != true || !strings.EqualFold(show.str("wallet"), e.wallet) {
		t.Fatalf("collateral show: %d %s", show.Status, show.Raw)
	}
	if e.core.Count("POST /auth/verify") != 1 {
		t.Fatalf("SIWE logins: %d, want 1", e.core.Count("POST /auth/verify"))
	}

	// An allowed deposit is signed, recorded, broadcast and mined.
	amount := new(big.Int).Mul(big.NewInt(10), finney) // 0.01 ETH
	r := e.agent.do(t, "POST", "/v1/collateral", deposit("dep-1", amount, true))
	if r.Status != 200 || r.str("status") != "mined" {
		t.Fatalf("deposit: %d %s", r.Status, r.Raw)
	}
	hashes, _ := r.Body["tx_hashes"].([]any)
	if len(hashes) != 1 || e.chain.sent.Load() != 1 {
		t.Fatalf("deposit: %d hashes, %d sent: %s", len(hashes), e.chain.sent.Load(), r.Raw)
	}
	hash := common.HexToHash(hashes[0].(string))
	tx, pending, err := e.sim.Client().TransactionByHash(ctx, hash)
	if err != nil || pending {
		t.Fatalf("mined tx: pending=%v err=%v", pending, err)
	}
	from, err := types.Sender(types.LatestSignerForChainID(big.NewInt(simChainID)), tx)
	if err != nil || from != wallet {
		t.Fatalf("sender %s (%v), want the wallet %s", from, err, wallet)
	}
	if *tx.To() != core4mica || tx.Value().Cmp(amount) != 0 || common.Bytes2Hex(tx.Data()) != "d0e30db0" || tx.Type() != types.DynamicFeeTxType {
		t.Fatalf("tx to=%s value=%s data=%x type=%d", tx.To(), tx.Value(), tx.Data(), tx.Type())
	}
	rcpt, err := e.sim.Client().TransactionReceipt(ctx, hash)
	if err != nil || rcpt.Status != types.ReceiptStatusSuccessful {
		t.Fatalf("receipt %+v %v", rcpt, err)
	}
	nonce, _ := e.sim.Client().PendingNonceAt(ctx, wallet)

	// The same request_id again: the same transaction, nothing new signed or sent.
	again := e.agent.do(t, "POST", "/v1/collateral", deposit("dep-1", amount, false))
	h2, _ := again.Body["tx_hashes"].([]any)
	if again.Status != 200 || len(h2) != 1 || h2[0] != hashes[0] || again.Body["replayed"] != true {
		t.Fatalf("retry: %d %s, want the same tx %s", again.Status, again.Raw, hashes[0])
	}
	if n, _ := e.sim.Client().PendingNonceAt(ctx, wallet); n != nonce || e.chain.distinct() != 1 {
		t.Fatalf("retry made a new transaction: nonce %d → %d, %d distinct txs", nonce, n, e.chain.distinct())
	}
	// The same request_id for another request: a conflict.
	conflict := e.agent.do(t, "POST", "/v1/collateral", deposit("dep-1", new(big.Int).Mul(big.NewInt(11), finney), false))
	if conflict.Status != 409 || conflict.errCode() != "replay_conflict" || conflict.errField("record_id") == "" {
		t.Fatalf("same request_id, other amount: %d %s", conflict.Status, conflict.Raw)
	}

	sent := e.chain.sent.Load()
	for _, tc := range []struct {
		name   string
		body   map[string]any
		status int
		code   string
		field  string
	}{
		{"over max_amount", deposit("dep-big", new(big.Int).Mul(big.NewInt(100), finney), false), 403, "amount_over_limit", ""},
		{"action not allowed", map[string]any{"action": "withdraw", "asset": "0x0000000000000000000000000000000000000000", "amount": "1000", "request_id": "wd-1"}, 403, "action_not_allowed", ""},
		{"no request_id", map[string]any{"action": "deposit", "asset": "0x0000000000000000000000000000000000000000", "amount": "1000"}, 400, "invalid_request", "request_id"},
		{"no amount", map[string]any{"action": "deposit", "asset": "0x0000000000000000000000000000000000000000", "request_id": "x"}, 400, "invalid_request", "amount"},
		{"amount on cancel", map[string]any{"action": "cancel_withdrawal", "asset": "0x0000000000000000000000000000000000000000", "amount": "1", "request_id": "x"}, 400, "invalid_request", "amount"},
		{"guarantee action", map[string]any{"action": "guarantee", "request_id": "x"}, 400, "invalid_request", "action"},
		{"long request_id", deposit(strings.Repeat("a", 129), finney, false), 400, "invalid_request", "request_id"},
		{"unknown field", map[string]any{"action": "deposit", "bogus": 1}, 400, "invalid_request", "bogus"},
	} {
		got := e.agent.do(t, "POST", "/v1/collateral", tc.body)
		if got.Status != tc.status || got.errCode() != tc.code || (tc.field != "" && !strings.Contains(got.errField("field"), tc.field)) {
			t.Errorf("%s: %d %s, want %d %s (field %s)", tc.name, got.Status, got.Raw, tc.status, tc.code, tc.field)
		}
		if tc.status == 403 && (got.errField("rule") == "" && tc.code != "action_not_allowed" || got.errField("reason") == "") {
			t.Errorf("%s: a denial carries rule and reason: %s", tc.name, got.Raw)
		}
	}
	if e.chain.sent.Load() != sent {
		t.Fatalf("a refused request sent a transaction (%d → %d)", sent, e.chain.sent.Load())
	}
	waitAudit(t, e.testDaemon, "amount_over_limit")
	waitAudit(t, e.testDaemon, "action_not_allowed")
	waitAudit(t, e.testDaemon, "tx_broadcast")
	waitAudit(t, e.testDaemon, "replay_duplicate") // the retry of dep-1, recorded by the ledger
	waitAudit(t, e.testDaemon, hashes[0].(string))

	// Kill switch engaged: nothing is signed or sent.
	if k := e.admin.do(t, "POST", "/v1/admin/kill-switch", map[string]any{"engaged": true, "reason": "test"}); k.Status != 200 {
		t.Fatalf("engage: %d %s", k.Status, k.Raw)
	}
	ks := e.agent.do(t, "POST", "/v1/collateral", deposit("dep-ks", finney, false))
	if ks.Status != 503 || ks.errCode() != "kill_switch_engaged" || e.chain.sent.Load() != sent {
		t.Fatalf("kill switch: %d %s, sent %d", ks.Status, ks.Raw, e.chain.sent.Load())
	}
	if k := e.admin.do(t, "POST", "/v1/admin/kill-switch", map[string]any{"engaged": false}); k.Status != 200 {
		t.Fatalf("resume: %d %s", k.Status, k.Raw)
	}

	// The RPC refuses the broadcast: the signed transaction is kept (502 broadcast_failed with
	// its record) and the retry with the same request_id broadcasts that same transaction.
	e.chain.failing.Store(1)
	bf := e.agent.do(t, "POST", "/v1/collateral", deposit("dep-2", finney, false))
	if bf.Status != 502 || bf.errCode() != "broadcast_failed" || bf.errField("record_id") == "" || !strings.Contains(bf.errField("reason"), "0x") {
		t.Fatalf("broadcast failure: %d %s", bf.Status, bf.Raw)
	}
	reason := bf.errField("reason")
	retry := e.agent.do(t, "POST", "/v1/collateral", deposit("dep-2", finney, true))
	rh, _ := retry.Body["tx_hashes"].([]any)
	if retry.Status != 200 || len(rh) != 1 || !strings.Contains(reason, rh[0].(string)) || retry.str("status") != "mined" {
		t.Fatalf("retry after a failed broadcast: %d %s (first: %s)", retry.Status, retry.Raw, reason)
	}
	if e.chain.distinct() != 2 {
		t.Fatalf("%d distinct transactions, want 2", e.chain.distinct())
	}

	waitAudit(t, e.testDaemon, "broadcast_failed")
	// A stablecoin deposit is two transactions, approve then depositStablecoin, as one request.
	two := e.agent.do(t, "POST", "/v1/collateral", map[string]any{"action": "deposit", "asset": usdx.Hex(), "amount": "5000000", "request_id": "usdx-1", "wait": true})
	th, _ := two.Body["tx_hashes"].([]any)
	rids, _ := two.Body["record_ids"].([]any)
	if two.Status != 200 || len(th) != 2 || len(rids) != 2 || two.str("status") != "mined" {
		t.Fatalf("stablecoin deposit: %d %s", two.Status, two.Raw)
	}
	for i, want := range []struct {
		to       common.Address
		selector string
	}{{usdx, "095ea7b3"}, {core4mica, "a587f4f3"}} {
		tx, _, err := e.sim.Client().TransactionByHash(ctx, common.HexToHash(th[i].(string)))
		if err != nil || *tx.To() != want.to || common.Bytes2Hex(tx.Data()[:4]) != want.selector || tx.Value().Sign() != 0 {
			t.Fatalf("tx %d: %v to=%s data=%x", i, err, tx.To(), tx.Data())
		}
	}
	twoAgain := e.agent.do(t, "POST", "/v1/collateral", map[string]any{"action": "deposit", "asset": usdx.Hex(), "amount": "5000000", "request_id": "usdx-1"})
	if th2, _ := twoAgain.Body["tx_hashes"].([]any); twoAgain.Status != 200 || len(th2) != 2 || th2[0] != th[0] || th2[1] != th[1] {
		t.Fatalf("stablecoin retry: %d %s", twoAgain.Status, twoAgain.Raw)
	}
	if e.chain.distinct() != 4 {
		t.Fatalf("%d distinct transactions, want 4", e.chain.distinct())
	}

	// The audit chain verifies.
	if v := e.admin.do(t, "GET", "/v1/admin/audit/verify", nil); v.Status != 200 || v.Body["ok"] != true {
		t.Fatalf("audit verify: %d %s", v.Status, v.Raw)
	}
}

// TestCollateralCoreDown: Core unreachable at start does not stop the daemon (guarantees need
// no Core); collateral answers 503 core_unavailable until a later discovery succeeds.
func TestCollateralCoreDown(t *testing.T) {
	e := startCollateralDaemon(t, func(c *corefake.Core) { c.Force("GET /core/public-params", 503, `{"error":"maintenance"}`) })
	r := e.agent.do(t, "POST", "/v1/collateral", deposit("down-1", finney, false))
	if r.Status != 503 || r.errCode() != "core_unavailable" {
		t.Fatalf("core down: %d %s", r.Status, r.Raw)
	}
	show := e.agent.do(t, "GET", "/v1/collateral", nil)
	if show.Status != 503 || show.errCode() != "core_unavailable" {
		t.Fatalf("show with core down: %d %s", show.Status, show.Raw)
	}
	st := e.admin.do(t, "GET", "/v1/admin/core", nil)
	if st.Body["domain_ok"] != false || !strings.Contains(st.str("last_error"), "503") {
		t.Fatalf("admin core: %s", st.Raw)
	}
	if e.chain.sent.Load() != 0 {
		t.Fatal("a transaction was sent")
	}
	// Core comes back: a later request rediscovers it.
	e.core.Unset("GET /core/public-params")
	e.core.PublicParams(simChainID, "4mica", "1", core4mica, "")
	deadline := time.Now().Add(5 * time.Second)
	for {
		r = e.agent.do(t, "POST", "/v1/collateral", deposit("down-2", finney, false))
		if r.Status == 200 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if r.Status != 200 || e.chain.sent.Load() != 1 {
		t.Fatalf("after Core came back: %d %s", r.Status, r.Raw)
	}
}

// TestCollateralDomainMismatchRefusesStart: Core's EIP-712 name differs from the daemon's
// protocol config: the daemon does not start, and says which field differs.
func TestCollateralDomainMismatchRefusesStart(t *testing.T) {
	for _, tc := range []struct {
		name, field string
		edit        func(*corefake.Core)
		pin         string
	}{
		{"name", "eip712_name", func(c *corefake.Core) { c.PublicParams(simChainID, "4Mica", "1", core4mica, "") }, core4mica.Hex()},
		{"chain", "chain_id", func(c *corefake.Core) { c.PublicParams(84532, "4mica", "1", core4mica, "") }, core4mica.Hex()},
		{"contract", "contract_address", func(c *corefake.Core) { c.PublicParams(simChainID, "4mica", "1", core4mica, "") }, "0x00000000000000000000000000000000000000c0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := corefake.New(t, simChainID)
			tc.edit(f)
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(collateralPolicy), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg := &config.Config{
				StateDir: filepath.Join(dir, "state"),
				Sockets: config.Sockets{Agent: config.Socket{Path: filepath.Join(dir, "agent.sock"), Mode: 0o660},
					Admin: config.Socket{Path: filepath.Join(dir, "admin.sock"), Mode: 0o600}},
				HSM: env.Options("daemon"), Policy: filepath.Join(dir, "policy.yaml"),
				Protocol:  config.Protocol{Network: "eip155:1337", EIP712Name: "4mica", EIP712Version: "1", ChainID: simChainID},
				Operators: []config.Operator{{Name: "alice", UID: uint32(os.Getuid())}},
				Core:      config.Core{URL: f.URL(), SIWEDomain: "core.test", Contract: tc.pin},
			}
			cfg.Defaults()
			b, err := hsm.Open(context.Background(), cfg.HSM)
			if err != nil {
				t.Fatal(err)
			}
			sim := simulated.NewBackend(types.GenesisAlloc{})
			defer sim.Close()
			d, err := server.Open(context.Background(), server.Options{Config: cfg, Backend: b, CoreChain: sim.Client()})
			if err == nil {
				_ = d.Shutdown(context.Background())
				t.Fatal("the daemon started against a Core with another domain")
			}
			if !strings.Contains(err.Error(), tc.field) || !strings.Contains(err.Error(), "refusing to start") {
				t.Fatalf("error %q does not name %s", err, tc.field)
			}
			t.Logf("refused: %v", err)
		})
	}
}

// TestCollateralBroadcastAfterRestart: the daemon signs and records a deposit but the RPC does
// not take it (the state of a crash between the commit and the broadcast); the daemon stops,
// a new one starts on the same ledger, and the retry with the same request_id broadcasts the
// same signed transaction, which is mined.
func TestCollateralBroadcastAfterRestart(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	a := restartCollateralDaemon(t, nil, nil, state)
	a.chain.failing.Store(1)
	r := a.agent.do(t, "POST", "/v1/collateral", deposit("crash-1", finney, false))
	if r.Status != 502 || r.errCode() != "broadcast_failed" {
		t.Fatalf("first attempt: %d %s", r.Status, r.Raw)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	b := restartCollateralDaemon(t, nil, a, state)
	again := b.agent.do(t, "POST", "/v1/collateral", deposit("crash-1", finney, true))
	hs, _ := again.Body["tx_hashes"].([]any)
	if again.Status != 200 || len(hs) != 1 || !strings.Contains(r.errField("reason"), hs[0].(string)) || again.str("status") != "mined" ||
		again.Body["replayed"] != true {
		t.Fatalf("after restart: %d %s (first: %s)", again.Status, again.Raw, r.Raw)
	}
	if a.chain.distinct() != 1 {
		t.Fatalf("%d distinct transactions, want 1", a.chain.distinct())
	}
}
