package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/common/hexutil"
	"github.com/ethereum/go-ethereum/core/types"
	"github.com/ethereum/go-ethereum/eth/ethconfig"
	"github.com/ethereum/go-ethereum/ethclient"
	"github.com/ethereum/go-ethereum/ethclient/simulated"
	"github.com/ethereum/go-ethereum/node"

	"github.com/signerd/signerd/signerd/coreclient"
	"github.com/signerd/signerd/signerd/coreclient/corefake"
)

// collateralCrashPolicy: the test uid may deposit ETH (at most 1000 wei a request) into the
// Core4Mica stand-in, under a daily deposit budget.
const collateralCrashPolicy = `version: 1
assets:
  ETH: {address: "0x0000000000000000000000000000000000000000", decimals: 18}
agents:
  tester:
    callers: [{uid: self}]
    wallets: ["{{WALLET}}"]
rules:
  - id: deposits
    effect: allow
    actions: [deposit]
    agents: [tester]
    networks: [eip155:1337]
    assets: [ETH]
    max_amount: "1000"
budgets:
  - id: deposits-daily
    actions: [deposit]
    per: [agent]
    window: day
    limit: "40000"
`

const collateralBudgetLimit = 40000

// crashContract stands for Core4Mica: code STOP, so deposit() with value succeeds.
var crashContract = common.HexToAddress("0x5106000000000000000000000000000000000001")

// simChain is go-ethereum's simulated chain (chain id 1337) served over HTTP JSON-RPC on
// 127.0.0.1 from the test process, a block every 20 ms, so a signerd process can reach it.
type simChain struct {
	sim   *simulated.Backend
	url   string
	eth   *ethclient.Client
	flaky *flakyRPC // in front of url: the daemon's rpc_url (nil: the daemon uses url)
	rpc   string    // the daemon's rpc_url
}

// flakyRPC is an HTTP JSON-RPC proxy in front of the simulated chain that fails some
// eth_sendRawTransaction calls as a node going down would: refused before the node sees the
// transaction, or forwarded and the answer lost (the transaction is in the pool but the daemon
// is told it failed).
type flakyRPC struct {
	target  string
	mu      sync.Mutex
	rng     *mrand.Rand
	refused atomic.Int64
	lost    atomic.Int64
	sends   atomic.Int64
}

func (f *flakyRPC) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var m struct {
		Method string `json:"method"`
	}
	_ = json.Unmarshal(body, &m)
	fate := 100
	if m.Method == "eth_sendRawTransaction" {
		f.sends.Add(1)
		f.mu.Lock()
		fate = f.rng.IntN(100)
		f.mu.Unlock()
	}
	if fate < 10 {
		f.refused.Add(1)
		http.Error(w, "node down", http.StatusServiceUnavailable)
		return
	}
	resp, err := http.Post(f.target, "application/json", bytes.NewReader(body))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if fate < 20 {
		f.lost.Add(1)
		http.Error(w, "answer lost", http.StatusBadGateway)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(resp.StatusCode)
	w.Write(out)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startSimChain(t *testing.T, funded common.Address) *simChain {
	t.Helper()
	port := freePort(t)
	alloc := types.GenesisAlloc{
		crashContract: {Code: []byte{0x00}, Balance: new(big.Int)},
		funded:        {Balance: new(big.Int).Exp(big.NewInt(10), big.NewInt(20), nil)},
	}
	sim := simulated.NewBackend(alloc, func(nc *node.Config, _ *ethconfig.Config) {
		nc.HTTPHost, nc.HTTPPort = "127.0.0.1", port
		nc.HTTPModules = []string{"eth", "net", "web3"}
		nc.HTTPVirtualHosts = []string{"*"}
	})
	c := &simChain{sim: sim, url: fmt.Sprintf("http://127.0.0.1:%d", port)}
	var stopped atomic.Bool
	done := make(chan struct{})
	go func() { // a block every 20 ms
		defer close(done)
		for !stopped.Load() {
			time.Sleep(20 * time.Millisecond)
			sim.Commit()
		}
	}()
	t.Cleanup(func() { stopped.Store(true); <-done; _ = sim.Close() })
	eth, err := ethclient.Dial(c.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(eth.Close)
	if id, err := eth.ChainID(context.Background()); err != nil || id.Uint64() != 1337 {
		t.Fatalf("simulated chain over HTTP: chain id %v, %v", id, err)
	}
	c.eth = eth
	c.rpc = c.url
	return c
}

// newCollateralEnv is a daemon env signing for the simulated chain, with the fake Core (in this
// process, over HTTP) at core.url and the chain's HTTP RPC at core.rpc_url.
func newCollateralEnv(t *testing.T, policy string, flaky bool) (*env, *simChain) {
	t.Helper()
	chain := startSimChain(t, common.HexToAddress(wallet1))
	if flaky {
		chain.flaky = &flakyRPC{target: chain.url, rng: mrand.New(mrand.NewPCG(3, uint64(time.Now().UnixNano())))}
		srv := httptest.NewServer(chain.flaky)
		t.Cleanup(srv.Close)
		chain.rpc = srv.URL
	}
	core := corefake.New(t, 1337)
	core.PublicParams(1337, "4mica", "1", crashContract, chain.rpc)
	e := newEnv(t, envOptions{policy: policy})
	b, err := os.ReadFile(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(b), `protocol: {network: "eip155:84532", chain_id: 84532}`,
		`protocol: {network: "eip155:1337", chain_id: 1337}`, 1)
	if cfg == string(b) {
		t.Fatal("harness config changed: protocol line not found")
	}
	cfg += fmt.Sprintf("core:\n  url: %s\n  siwe_domain: core.test\n  contract: \"%s\"\n  rpc_url: %s\n  receipt_timeout: 10s\n", core.URL(), crashContract.Hex(), chain.rpc)
	if err := os.WriteFile(e.cfg, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return e, chain
}

// collateralAnswer is a 200 answer of POST /v1/collateral.
type collateralAnswer struct {
	TxHashes  []string `json:"tx_hashes"`
	RecordIDs []string `json:"record_ids"`
	Status    string   `json:"status"`
	Replayed  bool     `json:"replayed"`
	Note      string   `json:"note"`
}

type depositReq struct {
	id     string
	amount int64
}

func (d depositReq) body(wait bool) map[string]any {
	return map[string]any{"action": "deposit", "asset": "0x0000000000000000000000000000000000000000",
		"amount": fmt.Sprint(d.amount), "request_id": d.id, "wait": wait}
}

func postCollateral(c *client, body map[string]any) (int, collateralAnswer, apiErr, error) {
	st, raw, err := c.call("POST", "/v1/collateral", body)
	var a collateralAnswer
	if err != nil {
		return 0, a, apiErr{}, err
	}
	if st == 200 {
		return st, a, apiErr{}, json.Unmarshal(raw, &a)
	}
	return st, a, errOf(raw), nil
}

// signedTx is a collateral transaction as the ledger holds it.
type signedTx struct {
	requestID string
	index     int
	amount    int64
	hash      common.Hash
	nonce     uint64
}

// collateralRecords reads the signed collateral records and rebuilds each signed transaction
// from the stored unsigned transaction and signature (its hash is what a client received).
func collateralRecords(t *testing.T, e *env) ([]signedTx, int) {
	t.Helper()
	wallet := common.HexToAddress(wallet1)
	var out []signedTx
	reserved := 0
	for _, r := range e.records(t) {
		var cl struct {
			Request struct {
				RequestID string `json:"request_id"`
				Amount    string `json:"amount"`
			} `json:"request"`
			Index int    `json:"index"`
			Tx    string `json:"tx"`
		}
		if err := json.Unmarshal([]byte(r.Claims), &cl); err != nil || cl.Tx == "" {
			t.Fatalf("record %s is not a collateral record: %v %s", r.ID, err, r.Claims)
		}
		switch r.Status {
		case "signed":
		case "reserved":
			reserved++
			continue
		default:
			continue
		}
		raw, err := hexutil.Decode(cl.Tx)
		if err != nil {
			t.Fatal(err)
		}
		utx := new(types.Transaction)
		if err := utx.UnmarshalBinary(raw); err != nil {
			t.Fatal(err)
		}
		sb, err := hexutil.Decode(r.Signature)
		if err != nil || len(sb) != 65 {
			t.Fatalf("record %s: signature %q", r.ID, r.Signature)
		}
		signed, err := coreclient.Finish(utx, [65]byte(sb), wallet)
		if err != nil {
			t.Fatalf("record %s: stored signature does not make a transaction from the wallet: %v", r.ID, err)
		}
		out = append(out, signedTx{requestID: cl.Request.RequestID, index: cl.Index, amount: amountOf(cl.Request.Amount).Int64(),
			hash: signed.Hash(), nonce: signed.Nonce()})
	}
	return out, reserved
}

// TestCollateralCrashSafety: a real signerd process sends ETH deposits (fake Core in this process
// over HTTP, go-ethereum's simulated chain served over HTTP JSON-RPC behind a proxy that refuses
// 10 % of eth_sendRawTransaction and loses the answer of another 10 %) from 4 clients (an agent
// answered broadcast_failed sends the same request again) and is killed with SIGKILL at random
// moments, 8 times. The run must see broadcast failures and pending_broadcast refusals. After each restart: the audit chain verifies;
// every transaction hash a client received is a signed ledger record of the same request_id; no
// request_id has two signed transactions; the deposit budget is within its limit (ledger
// records and the spend table); a retry of every signed request_id answers 200 with the same
// hashes; then every signed transaction is mined and the wallet's on-chain nonce equals the
// number of signed transactions (nothing signed outside the ledger, nothing lost, no nonce
// taken twice).
func TestCollateralCrashSafety(t *testing.T) {
	e, chain := newCollateralEnv(t, collateralCrashPolicy, true)
	wallet := common.HexToAddress(wallet1)
	rng := mrand.New(mrand.NewPCG(2, uint64(time.Now().UnixNano())))
	var (
		mu       sync.Mutex
		tried    []depositReq
		received = map[string][]string{} // request_id → hashes a client received
		answers  int
		codes    = map[string]int{}
	)
	const iterations, workers = 8, 4
	var stop atomic.Bool
	// agent w of iteration it sends deposits until stop.
	agent := func(it, w int) {
		c := e.agentClient()
		defer c.close()
		r := mrand.New(mrand.NewPCG(uint64(it), uint64(w)))
		var again *depositReq // a request answered broadcast_failed: the agent sends it again
		for !stop.Load() {
			var d depositReq
			mu.Lock()
			switch p := r.IntN(10); {
			case again != nil:
				d, again = *again, nil
			case p < 2 && len(tried) > 0: // an agent retry
				d = tried[r.IntN(len(tried))]
			case p < 3 && len(tried) > 0: // same request_id, another amount
				d = tried[r.IntN(len(tried))]
				d.amount = d.amount%1000 + 1
			default:
				d = depositReq{id: fmt.Sprintf("dep-%d-%d-%s", it, w, randHex(4)), amount: int64(r.IntN(900) + 1)}
				tried = append(tried, d)
			}
			mu.Unlock()
			st, a, ae, err := postCollateral(c, d.body(r.IntN(25) == 0))
			if err != nil || st != 200 {
				if err != nil && stop.Load() {
					return
				}
				if err != nil {
					time.Sleep(2 * time.Millisecond) // the daemon is down until the test restarts it
				}
				if ae.Code == "broadcast_failed" {
					again = &d
				}
				mu.Lock()
				if err != nil {
					codes["transport error"]++
				} else {
					codes[fmt.Sprintf("%d %s", st, ae.Code)]++
				}
				mu.Unlock()
				continue
			}
			if a.Status == "dropped" {
				t.Errorf("request_id %s answered dropped (no other client uses the wallet): %+v", d.id, a)
				return
			}
			mu.Lock()
			answers++
			if prev, ok := received[d.id]; ok && strings.Join(prev, ",") != strings.Join(a.TxHashes, ",") {
				mu.Unlock()
				t.Errorf("request_id %s answered %v, earlier %v", d.id, a.TxHashes, prev)
				return
			}
			received[d.id] = a.TxHashes
			mu.Unlock()
		}
	}
	for it := 0; it < iterations; it++ {
		e.start()
		stop.Store(false)
		agents := make(chan struct{})
		go func() { defer close(agents); parallel(workers, func(w int) { agent(it, w) }) }()
		time.Sleep(time.Duration(150+rng.IntN(600)) * time.Millisecond)
		e.kill()
		stop.Store(true)
		<-agents
		if t.Failed() {
			return
		}

		e.start()
		checkCollateralCrash(t, e, chain, wallet, received, it)
		if t.Failed() {
			return
		}
		e.kill()
	}
	t.Logf("%d iterations, %d answers with hashes, %d request_ids received; other answers: %v; RPC: %d sendRawTransaction, %d refused, %d answers lost",
		iterations, answers, len(received), codes, chain.flaky.sends.Load(), chain.flaky.refused.Load(), chain.flaky.lost.Load())
	if codes["409 pending_broadcast"] == 0 || codes["502 broadcast_failed"] == 0 {
		t.Fatalf("no broadcast failure or pending_broadcast refusal happened: the nonce path was not exercised (%v)", codes)
	}
	if len(received) < 20 {
		t.Fatalf("only %d request_ids answered across %d iterations: the load proves little", len(received), iterations)
	}
}

func checkCollateralCrash(t *testing.T, e *env, chain *simChain, wallet common.Address, received map[string][]string, it int) {
	t.Helper()
	if out, errs, code := e.ctl("audit", "verify"); code != 0 || !strings.Contains(out, "OK") {
		t.Fatalf("iteration %d: audit verify: %d %s %s", it, code, out, errs)
	}
	txs, reserved := collateralRecords(t, e)
	if reserved != 0 {
		t.Fatalf("iteration %d: %d reservations left after restart (should be released)", it, reserved)
	}
	byReq := map[string][]common.Hash{}
	amounts := map[string]int64{}
	nonces := map[uint64]common.Hash{}
	var spent int64
	for _, s := range txs {
		if len(byReq[s.requestID]) != s.index {
			t.Fatalf("iteration %d: request_id %s has signed transaction %d after %d", it, s.requestID, s.index, len(byReq[s.requestID]))
		}
		byReq[s.requestID] = append(byReq[s.requestID], s.hash)
		if s.index == 0 {
			spent += s.amount
			amounts[s.requestID] = s.amount
		}
		if h, dup := nonces[s.nonce]; dup {
			t.Fatalf("iteration %d: nonce %d signed twice (%s and %s: request_id %s)", it, s.nonce, h.Hex(), s.hash.Hex(), s.requestID)
		}
		nonces[s.nonce] = s.hash
	}
	for id, hs := range byReq {
		if len(hs) != 1 {
			t.Fatalf("iteration %d: request_id %s has %d signed transactions (a deposit is one)", it, id, len(hs))
		}
	}
	if spent > collateralBudgetLimit {
		t.Fatalf("iteration %d: deposits signed for %d > budget %d", it, spent, collateralBudgetLimit)
	}
	// The budget's own counters, through the admin API.
	st, raw, err := e.adminClient().call("GET", "/v1/admin/ledger/spend", nil)
	var windows struct {
		Spend []map[string]any `json:"spend"`
	}
	if err != nil || st != 200 || json.Unmarshal(raw, &windows) != nil {
		t.Fatalf("iteration %d: spend: %d %v %s", it, st, err, raw)
	}
	for _, w := range windows.Spend {
		if key, _ := w["key"].(string); strings.HasPrefix(key, "deposits-daily|") {
			if used := amountOf(fmt.Sprint(w["used"])); used.Cmp(big.NewInt(collateralBudgetLimit)) > 0 {
				t.Fatalf("iteration %d: budget window %s used %s > %d", it, key, used, collateralBudgetLimit)
			}
		}
	}
	for id, hs := range received {
		got := byReq[id]
		if len(got) != len(hs) {
			t.Fatalf("iteration %d: a client received %v for %s; the ledger has %v", it, hs, id, got)
		}
		for i := range hs {
			if !strings.EqualFold(hs[i], got[i].Hex()) {
				t.Fatalf("iteration %d: a client received %s for %s; the ledger's signed transaction is %s", it, hs[i], id, got[i].Hex())
			}
		}
	}
	// Retry every signed request_id: the same hashes (a transaction signed but not broadcast
	// before the kill is broadcast now).
	c := e.agentClient()
	defer c.close()
	for id, hs := range byReq {
		for try := 1; ; try++ {
			st, a, ae, err := postCollateral(c, depositReq{id: id, amount: amounts[id]}.body(false))
			if st == 502 && ae.Code == "broadcast_failed" && try < 20 { // the flaky RPC again
				continue
			}
			if err != nil || st != 200 || len(a.TxHashes) != 1 || !strings.EqualFold(a.TxHashes[0], hs[0].Hex()) || a.Status == "dropped" {
				t.Fatalf("iteration %d: retry of %s: %d %v %+v %+v, want %s", it, id, st, err, a, ae, hs[0].Hex())
			}
			break
		}
	}
	// Everything signed is mined, and nothing else was sent from the wallet.
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := chain.eth.NonceAt(ctx, wallet, nil)
		if err == nil && n == uint64(len(txs)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("iteration %d: wallet nonce on chain %d (%v), %d signed transactions in the ledger", it, n, err, len(txs))
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, s := range txs {
		r, err := chain.eth.TransactionReceipt(ctx, s.hash)
		if err != nil || r.Status != types.ReceiptStatusSuccessful {
			t.Fatalf("iteration %d: signed transaction %s (request_id %s) not mined: %v", it, s.hash.Hex(), s.requestID, err)
		}
	}
}
