package e2e

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"github.com/ethereum/go-ethereum/common/hexutil"
	"github.com/ethereum/go-ethereum/crypto"
	"math/big"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const crashPolicy = allowUSDCPolicy + `budgets:
  - id: capped
    labels: {suite: capped}
    per: [agent]
    window: day
    limit: "30000"
`

const crashBudgetLimit = 30000

// received is one signature a client got back.
type received struct {
	key       string // tab/req
	claimsSum [32]byte
	amount    int64
	signature string
	recordID  string
	capped    bool
}

// TestCrashSafety: SIGKILL at random moments under load, 20 times. After each restart: the audit
// chain verifies; no (wallet, tab_id, req_id) is signed with two different claims; the capped
// budget's window is within its limit; every signature a client received has its signed ledger
// record and its audit record.
func TestCrashSafety(t *testing.T) {
	e := newEnv(t, envOptions{policy: crashPolicy})
	rng := mrand.New(mrand.NewPCG(1, uint64(time.Now().UnixNano())))
	var (
		mu   sync.Mutex
		got  []received
		keys []claims // keys that were tried, to retry and to conflict
	)
	const iterations, workers = 20, 8
	for it := 0; it < iterations; it++ {
		e.start()
		var stop atomic.Bool
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := e.agentClient()
				defer c.close()
				r := mrand.New(mrand.NewPCG(uint64(it), uint64(w)))
				for !stop.Load() {
					var cl claims
					capped := r.IntN(2) == 0
					mu.Lock()
					switch p := r.IntN(10); {
					case p < 2 && len(keys) > 0: // an agent retry: identical claims
						cl = keys[r.IntN(len(keys))]
					case p < 4 && len(keys) > 0: // same key, different claims
						cl = keys[r.IntN(len(keys))].with("amount", fmt.Sprint(r.IntN(900)+1))
					default:
						cl = newClaims(fmt.Sprint(r.IntN(900) + 1))
						keys = append(keys, cl)
					}
					mu.Unlock()
					var labels map[string]string
					if capped {
						labels = map[string]string{"task": "capped", "suite": "capped"}
					}
					st, g, _, err := sign(c, cl, labels)
					if err != nil || st != 200 {
						if err != nil && stop.Load() {
							return
						}
						continue
					}
					raw, _ := json.Marshal(cl)
					mu.Lock()
					got = append(got, received{key: cl["tab_id"].(string) + "/" + cl["req_id"].(string), claimsSum: sha256.Sum256(raw),
						amount: amountOf(cl["amount"].(string)).Int64(), signature: g.Signature, recordID: g.RecordID, capped: capped})
					mu.Unlock()
				}
			}()
		}
		time.Sleep(time.Duration(50+rng.IntN(450)) * time.Millisecond)
		e.kill()
		stop.Store(true)
		wg.Wait()

		e.start()
		checkCrashInvariants(t, e, got, it)
		if t.Failed() {
			return
		}
		e.kill() // the next round starts from a killed daemon too
	}
	t.Logf("%d iterations, %d signatures received by clients", iterations, len(got))
	if len(got) < 40 {
		t.Fatalf("only %d signatures across %d iterations: the load proves little", len(got), iterations)
	}
}

func checkCrashInvariants(t *testing.T, e *env, got []received, it int) {
	t.Helper()
	if out, errs, code := e.ctl("audit", "verify"); code != 0 || !strings.Contains(out, "OK") {
		t.Fatalf("iteration %d: audit verify: %d %s %s", it, code, out, errs)
	}
	recs := e.records(t)
	byID := map[string]record{}
	signedByKey := map[string]string{} // tab/req → claims hash of its signed record
	capped := new(big.Int)
	for _, r := range recs {
		byID[r.ID] = r
		if r.Status == "released" { // signed and possibly signed (reserved) records count
			continue
		}
		k := fmt.Sprintf("%s/%s", hexNum(r.TabID), hexNum(r.ReqID))
		if h, dup := signedByKey[k]; dup && h != r.ClaimsHsh {
			t.Fatalf("iteration %d: key %s signed with two different claims (%s, %s)", it, k, h, r.ClaimsHsh)
		}
		signedByKey[k] = r.ClaimsHsh
		if r.TaskID == "capped" {
			var c struct {
				Amount string `json:"amount"`
			}
			json.Unmarshal([]byte(r.Claims), &c)
			capped.Add(capped, amountOf(c.Amount))
		}
	}
	if capped.Cmp(big.NewInt(crashBudgetLimit)) > 0 {
		t.Fatalf("iteration %d: capped budget signed %s > %d", it, capped, crashBudgetLimit)
	}
	out, _, code := e.ctl("ledger", "spend", "--json")
	if code != 0 {
		t.Fatalf("ledger spend: %s", out)
	}
	var sp struct {
		Spend []struct {
			Key  string          `json:"key"`
			Used json.RawMessage `json:"used"`
		} `json:"spend"`
	}
	json.Unmarshal([]byte(out), &sp)
	for _, s := range sp.Spend {
		if strings.HasPrefix(s.Key, "capped|") {
			if u := amountOf(strings.Trim(string(s.Used), `"`)); u.Cmp(big.NewInt(crashBudgetLimit)) > 0 {
				t.Fatalf("iteration %d: budget window %s used %s > %d", it, s.Key, u, crashBudgetLimit)
			}
		}
	}
	// Audit records of signatures, by record id.
	exp, errs, code := e.ctl("audit", "export")
	if code != 0 {
		t.Fatalf("audit export: %s", errs)
	}
	sigAudit := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(exp), "\n") {
		var a struct {
			Kind      string `json:"kind"`
			RecordID  uint64 `json:"record_id"`
			Signature string `json:"signature"`
		}
		if json.Unmarshal([]byte(line), &a) == nil && a.Kind == "signature" {
			sigAudit[fmt.Sprint(a.RecordID)] = a.Signature
		}
	}
	clientByKey := map[string][32]byte{}
	for _, g := range got {
		r, ok := byID[g.recordID]
		if ok && r.Status == "reserved" && r.ClaimsHsh != "" {
			// Its intent is on disk; the signature itself was recorded after the answer, without
			// an fsync of its own, and the crash took it: the intent is possibly signed.
			clientByKey[g.key] = g.claimsSum
			continue
		}
		if ok && r.Status == "signed" && !strings.EqualFold(r.Signature, g.signature) && signs(r.Digest, g.signature, r.Wallet) {
			// Possibly signed when the daemon was killed, then re-signed by a retry: the key
			// signed the same recorded digest twice (ECDSA signatures differ), no second charge.
			clientByKey[g.key] = g.claimsSum
			continue
		}
		if !ok || r.Status != "signed" || !strings.EqualFold(r.Signature, g.signature) {
			t.Fatalf("iteration %d: a client received signature %s (record %s) but the ledger has %+v", it, g.signature, g.recordID, r)
		}
		if s, ok := sigAudit[g.recordID]; !ok || !strings.EqualFold(s, g.signature) {
			t.Fatalf("iteration %d: no audit record for the signature of record %s", it, g.recordID)
		}
		if h, ok := clientByKey[g.key]; ok && h != g.claimsSum {
			t.Fatalf("iteration %d: clients received signatures for %s over two different claims", it, g.key)
		}
		clientByKey[g.key] = g.claimsSum
	}
}

// signs reports whether sig (0x hex, 65 bytes, v 27/28) over digest recovers to wallet.
func signs(digest, sig, wallet string) bool {
	d, err1 := hexutil.Decode(digest)
	s, err2 := hexutil.Decode(sig)
	if err1 != nil || err2 != nil || len(d) != 32 || len(s) != 65 {
		return false
	}
	s[64] -= 27
	pub, err := crypto.SigToPub(d, s)
	return err == nil && strings.EqualFold(crypto.PubkeyToAddress(*pub).Hex(), wallet)
}

// hexNum normalises a decimal or 0x integer to 0x-hex without leading zeros.
func hexNum(s string) string { return "0x" + amountOf(s).Text(16) }
