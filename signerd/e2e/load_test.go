package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// record is a payment record as the admin API shows it.
type record struct {
	ID        string         `json:"record_id"`
	Status    string         `json:"status"`
	Wallet    string         `json:"wallet"`
	TabID     string         `json:"tab_id"`
	ReqID     string         `json:"req_id"`
	Claims    string         `json:"claims"`
	ClaimsHsh string         `json:"claims_hash"`
	Signature string         `json:"signature"`
	TaskID    string         `json:"task_id"`
	Digest    string         `json:"digest"`
	Code      string         `json:"code"`
	Charges   []recordCharge `json:"charges"`
}

// recordCharge is one budget charge of a payment record as the admin API shows it.
type recordCharge struct {
	Key     string `json:"key"`
	WindowS int64  `json:"window_s"`
	Amount  string `json:"amount"`
}

func (e *env) records(t *testing.T) []record {
	t.Helper()
	st, raw, err := e.adminClient().call("GET", "/v1/admin/ledger/records?wallet="+wallet1, nil)
	if err != nil || st != 200 {
		t.Fatalf("ledger records: %d %v %s", st, err, raw)
	}
	var out struct {
		Records []record `json:"records"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	return out.Records
}

func countSigned(rs []record) int {
	n := 0
	for _, r := range rs {
		if r.Status == "signed" {
			n++
		}
	}
	return n
}

type ksOutcome struct {
	start, end time.Time
	status     int
	code       string
}

// TestKillSwitchUnderLoad: 32 clients sign; once the engage call returns no signature is
// committed or returned any more, and requests get 503 kill_switch_engaged; the state survives a
// restart; resuming needs two different operators (alice = root, bob = nobody).
func TestKillSwitchUnderLoad(t *testing.T) {
	needRoot(t) // bob (nobody) confirms the resume
	e := newEnv(t, envOptions{twoOperators: true})
	e.start()
	var (
		mu       sync.Mutex
		outcomes []ksOutcome
		stop     atomic.Bool
		wg       sync.WaitGroup
	)
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := e.agentClient()
			defer c.close()
			for !stop.Load() {
				o := ksOutcome{start: time.Now()}
				st, _, ae, err := sign(c, newClaims("10"), nil)
				o.end, o.status, o.code = time.Now(), st, ae.Code
				if err != nil {
					o.code = err.Error()
				}
				mu.Lock()
				outcomes = append(outcomes, o)
				mu.Unlock()
			}
		}()
	}
	// Let the load build up: at least 32 signatures before the stop (bounded).
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		mu.Lock()
		n := 0
		for _, o := range outcomes {
			if o.status == 200 {
				n++
			}
		}
		mu.Unlock()
		if n >= 32 {
			break
		}
	}
	st, raw, err := e.adminClient().call("POST", "/v1/admin/kill-switch", map[string]any{"engaged": true, "reason": "load test"})
	returned := time.Now()
	if err != nil || st != 200 {
		t.Fatalf("engage: %d %v %s", st, err, raw)
	}
	signedAtReturn := countSigned(e.records(t))
	time.Sleep(500 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	signedEnd := countSigned(e.records(t))
	if signedEnd != signedAtReturn {
		t.Fatalf("%d signatures committed after the engage call returned", signedEnd-signedAtReturn)
	}
	var ok200, late, refusedAfter int
	for _, o := range outcomes {
		if o.status == 200 {
			ok200++
		}
		if o.start.After(returned) {
			if o.status != 503 || o.code != "kill_switch_engaged" {
				t.Fatalf("request started after engage returned got %d %s", o.status, o.code)
			}
			refusedAfter++
		}
		if o.status == 200 && o.end.After(returned) {
			late++ // written before the pass was released, read by the client just after
		}
	}
	if ok200 != signedEnd {
		t.Fatalf("clients received %d signatures, the ledger has %d signed records", ok200, signedEnd)
	}
	if ok200 < 32 || refusedAfter < 32 {
		t.Fatalf("load too light to prove anything: %d signed before, %d refused after", ok200, refusedAfter)
	}
	t.Logf("%d signatures before the stop, %d requests refused after it (%d responses read just after the call returned)", ok200, refusedAfter, late)

	// Durable: a restarted daemon starts engaged.
	e.stopClean()
	e.start()
	out, _, code := e.ctl("status")
	if code != 0 || !strings.Contains(out, "ENGAGED") || !strings.Contains(out, "load test") {
		t.Fatalf("status after restart: %d\n%s", code, out)
	}
	if st, _, ae, _ := sign(e.agentClient(), newClaims("10"), nil); st != 503 || ae.Code != "kill_switch_engaged" {
		t.Fatalf("after restart: %d %+v", st, ae)
	}
	// Resume with two operators.
	out, errs, code := e.ctl("resume")
	if code != 0 || !strings.Contains(out, "second, different operator") {
		t.Fatalf("alice resume: %d %s %s", code, out, errs)
	}
	if _, errs, code := e.ctl("resume"); code != 1 || !strings.Contains(errs, "second_operator_required") {
		t.Fatalf("alice again: %d %s", code, errs)
	}
	if st, _, _, _ := sign(e.agentClient(), newClaims("10"), nil); st != 503 {
		t.Fatalf("signing after one operator's resume: %d", st)
	}
	if out, errs, code := e.ctlAs(nobodyUID, "resume"); code != 0 || !strings.Contains(out, "released") {
		t.Fatalf("bob confirms: %d %s %s", code, out, errs)
	}
	if st, g, ae, _ := sign(e.agentClient(), newClaims("10"), nil); st != 200 {
		t.Fatalf("after resume: %d %+v", st, ae)
	} else {
		verifyGuarantee(t, g)
	}

	// The trip file engages it too, and resume is refused while the file exists.
	trip := filepath.Join(e.dir, "STOP")
	os.WriteFile(trip, nil, 0o600)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if st, _, _, _ := sign(e.agentClient(), newClaims("10"), nil); st == 503 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("trip file did not engage the kill switch")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, errs, code := e.ctl("resume"); code != 1 || !strings.Contains(errs, "trip_file_present") {
		t.Fatalf("resume with trip file: %d %s", code, errs)
	}
	os.Remove(trip)
	e.ctl("resume")
	e.ctlAs(nobodyUID, "resume")
	if st, _, ae, _ := sign(e.agentClient(), newClaims("10"), nil); st != 200 {
		t.Fatalf("after trip-file resume: %d %+v", st, ae)
	}
	if out, _, code := e.ctl("audit", "verify"); code != 0 {
		t.Fatalf("audit verify: %s", out)
	}
}

const budgetPolicy = allowUSDCPolicy + `budgets:
  - id: shared
    per: [agent]
    window: day
    limit: "%LIMIT%"
`

// TestBudgetRace: 64 concurrent clients against one budget; the total signed never exceeds it,
// and exactly as many requests as fit are signed.
func TestBudgetRace(t *testing.T) {
	e := newEnv(t, envOptions{policy: strings.Replace(budgetPolicy, "%LIMIT%", "2500", 1)})
	e.start()
	var signed, exhausted, other atomic.Int64
	var total big.Int
	var mu sync.Mutex
	parallel(64, func(i int) {
		c := e.agentClient()
		defer c.close()
		for j := 0; j < 2; j++ {
			st, g, ae, err := sign(c, newClaims("100"), nil)
			switch {
			case err == nil && st == 200:
				signed.Add(1)
				verifyGuarantee(t, g)
				mu.Lock()
				total.Add(&total, big.NewInt(100))
				mu.Unlock()
			case st == 403 && ae.Code == "budget_exhausted":
				exhausted.Add(1)
			default:
				other.Add(1)
				t.Errorf("unexpected: %d %+v %v", st, ae, err)
			}
		}
	})
	if total.Cmp(big.NewInt(2500)) > 0 {
		t.Fatalf("signed %s against a budget of 2500", total.String())
	}
	if signed.Load() != 25 || exhausted.Load() != 103 {
		t.Fatalf("signed %d, exhausted %d, other %d; want 25 and 103", signed.Load(), exhausted.Load(), other.Load())
	}
	if n := countSigned(e.records(t)); n != 25 {
		t.Fatalf("ledger has %d signed records", n)
	}
	out, _, code := e.ctl("ledger", "spend", "--json")
	if code != 0 || !(strings.Contains(out, `"used":"2500"`) || strings.Contains(out, `"used":2500`)) {
		t.Fatalf("ledger spend: %d %s", code, out)
	}
}

// TestOverloaded: past limits.max_in_flight concurrent signing requests, callers get 503
// overloaded with Retry-After, and the daemon keeps serving.
func TestOverloaded(t *testing.T) {
	e := newEnv(t, envOptions{extra: "  max_in_flight: 2"})
	e.start()
	var ok, overloaded, other atomic.Int64
	var retryAfter atomic.Bool
	parallel(32, func(i int) {
		c := e.agentClient()
		defer c.close()
		for j := 0; j < 4; j++ {
			body := mustJSON(map[string]any{"claims": newClaims("1")})
			req, _ := http.NewRequest("POST", "http://signerd/v1/guarantees", bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			resp, err := c.h.Do(req)
			if err != nil {
				other.Add(1)
				continue
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			switch {
			case resp.StatusCode == 200:
				ok.Add(1)
			case resp.StatusCode == 503 && errOf(raw).Code == "overloaded":
				overloaded.Add(1)
				if resp.Header.Get("Retry-After") != "" {
					retryAfter.Store(true)
				}
			default:
				other.Add(1)
				t.Errorf("unexpected %d %s", resp.StatusCode, raw)
			}
		}
	})
	if ok.Load() == 0 || overloaded.Load() == 0 || !retryAfter.Load() || other.Load() != 0 {
		t.Fatalf("ok %d, overloaded %d (Retry-After %v), other %d", ok.Load(), overloaded.Load(), retryAfter.Load(), other.Load())
	}
	if n := countSigned(e.records(t)); int64(n) != ok.Load() {
		t.Fatalf("ledger has %d signed, clients got %d", n, ok.Load())
	}
}
