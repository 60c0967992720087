package e2e

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// crashPolicy lets the test wallet pay sellerOK with two budgets: "capped" (requests labelled
// suite=capped, 30000 base units a day per task; each kill's load uses a task of its own, so
// every load fills a fresh counter: budget races, and possibly-signed records left at a full
// budget, happen at every kill) and "all" (every request, lifetime, never reached: every record
// carries a charge, so a second charge of any retry shows in the usage). Claim timestamps may be
// an hour old, so that retries of keys from early kills stay valid.
const crashPolicy = allowUSDCPolicy + `settings:
  max_timestamp_skew: 1h
budgets:
  - id: capped
    labels: {suite: capped}
    per: [agent, task]
    window: day
    limit: "30000"
  - id: all
    per: [agent]
    window: lifetime
    limit: "1000000000000000"
`

const crashBudgetLimit = 30000

// cappedLabels are the task labels of a request charged to the "capped" budget under task.
func cappedLabels(task string) map[string]string {
	return map[string]string{"task": task, "suite": "capped"}
}

// cappedTask is the task id of the capped requests sent before the kill'th SIGKILL.
func cappedTask(kill int) string { return fmt.Sprintf("capped-%d", kill) }

// crashSettings are the knobs of the crash test: how many times the daemon is SIGKILLed under
// load and how many clients send requests concurrently.
type crashSettings struct {
	kills, clients int
}

// crashSettingsFromEnv reads CRASH_KILLS (default 20, what go test ./... runs in CI; make crash
// sets 100) and CRASH_CLIENTS (default 16). A value that is not a positive integer fails the test.
func crashSettingsFromEnv(t *testing.T) crashSettings {
	t.Helper()
	s := crashSettings{kills: 20, clients: 16}
	for _, v := range []struct {
		name string
		dst  *int
	}{{"CRASH_KILLS", &s.kills}, {"CRASH_CLIENTS", &s.clients}} {
		raw := os.Getenv(v.name)
		if raw == "" {
			continue
		}
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive integer", v.name, raw)
		}
		*v.dst = n
	}
	return s
}

// received is one signature a client got back (200).
type received struct {
	key       string   // normalised tab/req (keyOf)
	claimsSum [32]byte // SHA-256 of the client's JSON claims
	digest    string
	signature string
	recordID  string
}

// crashLoad is the clients' shared state across kills: every signature received and every
// claims sent per key (the claims a retry of a possibly-signed record resends).
type crashLoad struct {
	mu   sync.Mutex
	got  []received
	keys []claims            // claims sent, picked again for retries (same claims) and conflicts (same key)
	sent map[string][]claims // normalised key → the distinct claims sent for it
	// verified counts the received signatures already checked to recover to the wallet.
	verified int
}

func newCrashLoad() *crashLoad { return &crashLoad{sent: map[string][]claims{}} }

// keyOf is the normalised (tab_id, req_id) of claims or of a record: 0x-hex without leading zeros.
func keyOf(tab, req string) string { return hexNum(tab) + "/" + hexNum(req) }

// claimsKey is keyOf for claims.
func claimsKey(cl claims) string { return keyOf(cl["tab_id"].(string), cl["req_id"].(string)) }

// next picks the next request: 60% a new key, 20% an identical retry of a key already sent,
// 20% other claims (another amount) for a key already sent; half of them labelled capped
// (under the task of this kill).
func (l *crashLoad) next(r *mrand.Rand, kill int) (claims, map[string]string) {
	var labels map[string]string
	if r.IntN(2) == 0 {
		labels = cappedLabels(cappedTask(kill))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch p := r.IntN(10); {
	case p < 2 && len(l.keys) > 0:
		return l.keys[r.IntN(len(l.keys))], labels
	case p < 4 && len(l.keys) > 0:
		cl := l.keys[r.IntN(len(l.keys))].with("amount", fmt.Sprint(r.IntN(900)+1))
		k := claimsKey(cl)
		l.sent[k] = append(l.sent[k], cl)
		return cl, labels
	}
	cl := newClaims(fmt.Sprint(r.IntN(900) + 1))
	l.keys = append(l.keys, cl)
	l.sent[claimsKey(cl)] = []claims{cl}
	return cl, labels
}

// receive notes a signature a client got for cl.
func (l *crashLoad) receive(cl claims, g guarantee) {
	raw, _ := json.Marshal(cl)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got = append(l.got, received{key: claimsKey(cl), claimsSum: sha256.Sum256(raw), digest: g.Digest,
		signature: g.Signature, recordID: g.RecordID})
}

// client sends requests until stop is set (the daemon was killed).
func (l *crashLoad) client(e *env, kill, w int, stop *atomic.Bool) {
	c := e.agentClient()
	defer c.close()
	r := mrand.New(mrand.NewPCG(uint64(kill), uint64(w)))
	for !stop.Load() {
		cl, labels := l.next(r, kill)
		st, g, _, err := sign(c, cl, labels)
		switch {
		case err != nil:
			time.Sleep(5 * time.Millisecond) // the daemon is being killed: do not spin until stop is set
		case st == 200:
			l.receive(cl, g)
		}
	}
}

// runUntilKill runs clients against the running daemon for d, SIGKILLs it with requests in
// flight and waits for the clients to stop.
func (l *crashLoad) runUntilKill(e *env, kill, clients int, d time.Duration) {
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := 0; w < clients; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.client(e, kill, w, &stop)
		}()
	}
	time.Sleep(d)
	e.kill()
	stop.Store(true)
	wg.Wait()
}

// crashTally counts what the kills left for the checks to prove something about.
type crashTally struct {
	atKill    int // records reserved (possibly signed) in the file a SIGKILL left, all kills
	retried   int // possibly-signed records retried after a restart: re-signed, not charged again
	conflicts int // different claims for a possibly-signed key refused with 409
}

// TestCrashKeepsIntentsAndResignsWithoutRecharge SIGKILLs signerd under load (CRASH_KILLS times,
// CRASH_CLIENTS clients) and after each restart proves: every signature a client received has
// its intent (record with that digest for that key) on disk; the restart released no intent the
// kill left reserved (possibly signed: its charges stand); no budget window is over its limit and
// usage equals the charges of the live records; no key has two different claims signed or
// possibly signed; the audit chain verifies (offline on the killed file, and online); and every
// record left reserved, retried with the same claims, answers 200 with a signature by the wallet
// over the recorded digest under the same record id, without a second charge, while other
// claims for its key get 409 replay_conflict.
func TestCrashKeepsIntentsAndResignsWithoutRecharge(t *testing.T) {
	s := crashSettingsFromEnv(t)
	e := newEnv(t, envOptions{policy: crashPolicy})
	rng := mrand.New(mrand.NewPCG(1, uint64(time.Now().UnixNano())))
	load := newCrashLoad()
	audit := newAuditFollower()
	var tally crashTally
	began := time.Now()
	e.start()
	for kill := 1; kill <= s.kills; kill++ {
		load.runUntilKill(e, kill, s.clients, time.Duration(50+rng.IntN(450))*time.Millisecond)
		atKill := audit.intentsAtKill(t, e, kill)
		tally.atKill += len(atKill)
		e.start()
		checkCrashInvariants(t, e, load, audit, atKill, kill, &tally)
		if t.Failed() {
			return
		}
	}
	t.Logf("%d kills, %d clients, %s: %d signatures received; %d records left reserved (possibly signed) by the kills; "+
		"%d possibly-signed intents retried (re-signed, same record, no second charge), %d conflicting retries refused",
		s.kills, s.clients, time.Since(began).Round(time.Second), len(load.got), tally.atKill, tally.retried, tally.conflicts)
	if len(load.got) < 2*s.kills {
		t.Fatalf("only %d signatures across %d kills: the load proves little", len(load.got), s.kills)
	}
	if tally.retried == 0 {
		t.Fatalf("no restart left a possibly-signed record to retry (%d reserved at the kills): the retry check proved nothing", tally.atKill)
	}
}

// hexNum normalises a decimal or 0x integer to 0x-hex without leading zeros.
func hexNum(s string) string { return "0x" + amountOf(s).Text(16) }
