package ledger

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/signerd/signerd/signerd/bucketstore"

	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/audit"
)

// The SIGKILL test re-executes the test binary as a child (env crashChildEnv = ledger path). The
// child hammers the ledger with 32 writers and prints "SIG <record id> <signature hex>" after
// each Commit returns; the parent kills it with SIGKILL at a random moment, reopens the file and
// checks the invariants. TestMain runs the child instead of the tests.
const crashChildEnv = "SIGNERD_LEDGER_CRASH_CHILD"

func TestMain(m *testing.M) {
	if path := os.Getenv(crashChildEnv); path != "" {
		crashChild(path)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const (
	crashDailyLimit = 4000
	crashTotalLimit = 9000
)

func crashCharges(amount int64) []policyengine.Charge {
	return []policyengine.Charge{
		{Budget: "daily", Key: "daily/agent-a", Window: 24 * time.Hour, Limit: big.NewInt(crashDailyLimit), Amount: big.NewInt(amount)},
		{Budget: "total", Key: "total/wallet", Window: 0, Limit: big.NewInt(crashTotalLimit), Amount: big.NewInt(amount)},
		{Budget: "rate", Key: "rate/agent-a", Window: time.Minute, Limit: big.NewInt(1 << 40), Amount: big.NewInt(1), Count: true},
	}
}

func fakeSig(claims []byte, id RecordID) []byte {
	h := sha256.Sum256(append(append([]byte{}, claims...), id.String()...))
	return append(bytes.Repeat(h[:], 2), 27)
}

func crashChild(path string) {
	l, err := Open(Options{Path: path, LockTimeout: 5 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(3)
	}
	var outMu sync.Mutex
	say := func(s string) {
		outMu.Lock()
		_, _ = os.Stdout.Write([]byte(s + "\n")) // unbuffered: what was written is in the pipe
		outMu.Unlock()
	}
	say("READY")
	ctx := context.Background()
	var wg sync.WaitGroup
	// One operator-state writer: "STATE n" is printed after PutState(n) returned.
	go func() {
		n := 0
		if v, _ := l.GetState("crash/counter"); v != nil {
			n, _ = strconv.Atoi(string(v))
		}
		for {
			n++
			err := l.PutState(ctx, "crash/counter", []byte(strconv.Itoa(n)),
				audit.Event{Kind: audit.KindKillSwitch, Operator: "crash-test", Attrs: map[string]string{"n": strconv.Itoa(n)}})
			if err != nil {
				say("ERR " + err.Error())
				return
			}
			say(fmt.Sprintf("STATE %d", n))
		}
	}()
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(time.Now().UnixNano() + int64(w)))
			for {
				tab, req, variant := rng.Intn(8), rng.Intn(40), rng.Intn(2)
				claims := []byte(fmt.Sprintf(`{"tab":%d,"req":%d,"v":%d}`, tab, req, variant))
				// Half the writers sign as the pipeline does (Durable, then RecordSignature: the
				// signature is sent once the intent is durable), half commit durably (Commit, as
				// the collateral pipeline does before a broadcast).
				intentOnly := w%2 == 0
				r, err := l.Reserve(ctx, Reservation{Wallet: wallet, TabID: big.NewInt(int64(tab)),
					ReqID: big.NewInt(int64(req)), Claims: claims, Charges: crashCharges(int64(1 + rng.Intn(20))),
					Principal: "uid:1000", Agent: "agent-a", Rule: "allow", Digest: sha256.Sum256(claims)})
				if err != nil {
					say("ERR " + err.Error())
					continue
				}
				switch r.Outcome {
				case Reserved, Resumable:
					if rng.Intn(8) == 0 {
						// ErrAlreadySigned: a concurrent request for the same key resumed and
						// committed it first (expected under this load).
						if err := l.Release(ctx, r.RecordID, "", "injected signing failure"); err != nil && !errors.Is(err, ErrAlreadySigned) {
							say("ERR " + err.Error())
						}
						continue
					}
					cr, err := commitCrash(ctx, l, r, fakeSig(claims, r.RecordID), intentOnly)
					if errors.Is(err, ErrReleased) {
						continue // a concurrent resumer of the same key released it: nothing is sent
					}
					if err != nil {
						say("ERR " + err.Error())
						continue
					}
					tag := "SIG"
					if intentOnly {
						tag = "SIGI"
					}
					say(fmt.Sprintf("%s %d %x", tag, r.RecordID, cr.Signature))
				case Duplicate:
					say(fmt.Sprintf("SIG %d %x", r.RecordID, r.Signature))
				}
			}
		}(w)
	}
	wg.Wait()
}

// commitCrash records sig for r: durably (Commit) or as the pipeline does (Durable, then
// RecordSignature without an fsync of its own).
func commitCrash(ctx context.Context, l *Ledger, r Result, sig []byte, intentOnly bool) (CommitResult, error) {
	if !intentOnly {
		return l.Commit(ctx, r.RecordID, sig)
	}
	if err := r.Durable(ctx); err != nil {
		return CommitResult{}, err
	}
	return l.RecordSignature(ctx, r.RecordID, sig)
}

func TestCrashSIGKILL(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "crash.db")
	rounds := 8
	if testing.Short() {
		rounds = 3
	}
	received := map[RecordID]string{} // every signature a "client" received, across rounds
	intentOnly := map[RecordID]bool{} // of those, the ones sent once only their intent was durable
	maxState := 0                     // highest operator state acknowledged, across rounds
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	for round := 0; round < rounds; round++ {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+path)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1024)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Wait for READY, then let it run 50–400 ms and kill it.
		if l, ok := <-lines; !ok || l != "READY" {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("round %d: child did not start: %q %s", round, l, stderr.String())
		}
		time.Sleep(time.Duration(50+rng.Intn(350)) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		sigs := 0
		for l := range lines {
			switch {
			case strings.HasPrefix(l, "SIG "), strings.HasPrefix(l, "SIGI "):
				f := strings.Fields(l)
				id, _ := strconv.ParseUint(f[1], 10, 64)
				if f[0] == "SIGI" {
					intentOnly[RecordID(id)] = true
				}
				if prev, ok := received[RecordID(id)]; ok && prev != f[2] {
					t.Errorf("record %d returned two different signatures", id)
				}
				received[RecordID(id)] = f[2]
				sigs++
			case strings.HasPrefix(l, "STATE "):
				n, _ := strconv.Atoi(l[6:])
				if n > maxState {
					maxState = n
				}
			case strings.HasPrefix(l, "ERR "):
				t.Errorf("round %d child: %s", round, l)
			}
		}
		err = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: child not killed by SIGKILL: %v %s", round, err, stderr.String())
		}
		t.Logf("round %d: %d signatures received before SIGKILL", round, sigs)
		checkCrashInvariants(t, path, received, intentOnly, maxState)
	}
	if len(received) == 0 {
		t.Fatal("no signature was ever received: the load did not run")
	}
}

// checkCrashInvariants reopens the ledger after a SIGKILL and checks what must hold.
func checkCrashInvariants(t *testing.T, path string, received map[RecordID]string, intentOnly map[RecordID]bool, maxState int) {
	t.Helper()
	l, err := Open(Options{Path: path})
	if err != nil {
		t.Fatalf("reopen after SIGKILL: %v", err)
	}
	defer l.Close()
	// 0. Acknowledged operator state survived.
	if v, err := l.GetState("crash/counter"); err != nil || v == nil && maxState > 0 {
		t.Fatalf("state after SIGKILL: %q %v", v, err)
	} else if n, _ := strconv.Atoi(string(v)); maxState > 0 && n < maxState {
		t.Errorf("state %d after SIGKILL, but %d was acknowledged", n, maxState)
	}
	// 1. The audit chain verifies.
	rep, err := l.VerifyAudit()
	if err != nil || !rep.OK {
		t.Fatalf("audit verify after SIGKILL: %+v %v", rep, err)
	}
	// 2. Records, replay entries and usage agree; no key signed with two claims.
	now := time.Now()
	type rk = string
	live := map[rk]*PaymentRecord{}
	daily, total := new(big.Int), new(big.Int)
	signedAudit := map[uint64]string{}
	err = l.DB().View(func(tx *bucketstore.Tx) error {
		err := tx.Bucket(bucketRecords).ForEach(func(k, v []byte) error {
			id := RecordID(new(big.Int).SetBytes(k).Uint64())
			r, err := loadRecord(tx, id, v)
			if err != nil {
				return err
			}
			if r.Status == StatusReleased {
				return nil
			}
			key := string(replayKey(r.Wallet, r.TabID, r.ReqID))
			if other := live[key]; other != nil {
				t.Errorf("key (tab %s, req %s) has two live records %d and %d (claims %x / %x)",
					r.TabID, r.ReqID, other.ID, r.ID, other.ClaimsHash[:4], r.ClaimsHash[:4])
			}
			live[key] = r
			for _, c := range r.Charges {
				switch c.Key {
				case "daily/agent-a":
					daily.Add(daily, c.Amount)
				case "total/wallet":
					total.Add(total, c.Amount)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		err = tx.Bucket(bucketReplay).ForEach(func(k, v []byte) error {
			e, err := parseReplay(k, v)
			if err != nil {
				return err
			}
			r := live[string(k)]
			if e.status == StatusReleased.byte() {
				if r != nil {
					t.Errorf("replay entry released but record %d is live", r.ID)
				}
				return nil
			}
			if r == nil || r.ID != e.id || r.ClaimsHash != e.claims || e.status != StatusReserved.byte() {
				t.Errorf("replay entry %x (id %d) does not match its record %+v", k[52:], e.id, r)
			}
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(audit.BucketRecords).ForEach(func(k, v []byte) error {
			ar, err := audit.Decode(new(big.Int).SetBytes(k).Uint64(), v)
			if err != nil {
				return err
			}
			if ar.Event.Kind == audit.KindSignature {
				signedAudit[ar.Event.RecordID] = hex.EncodeToString(ar.Event.Signature)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []struct {
		name  string
		w     time.Duration
		sum   *big.Int
		limit int64
	}{{"daily/agent-a", 24 * time.Hour, daily, crashDailyLimit}, {"total/wallet", 0, total, crashTotalLimit}} {
		u, err := l.Usage(key.name, key.w, now)
		if err != nil {
			t.Fatal(err)
		}
		if u.Cmp(key.sum) != 0 {
			t.Errorf("%s: usage %s but live records charge %s", key.name, u, key.sum)
		}
		if u.Cmp(big.NewInt(key.limit)) > 0 {
			t.Errorf("%s: usage %s over its limit %d", key.name, u, key.limit)
		}
	}
	// 3. Intents left without a signature are possibly signed: an identical retry resumes the
	// same record and charges nothing more.
	checkPossiblySigned(t, l, live, now)
	// 4. Every signature a client received is durable in the ledger and in the audit log.
	for id, sig := range received {
		r, err := l.Record(id)
		if err != nil {
			t.Errorf("received signature for record %d but: %v", id, err)
			continue
		}
		if intentOnly[id] && r.Status == StatusReserved {
			continue // sent once its intent was durable; the signature itself was lost in the crash
		}
		if r.Status != StatusSigned || hex.EncodeToString(r.Signature) != sig {
			t.Errorf("record %d: status %s, signature mismatch", id, r.Status)
		}
		if signedAudit[uint64(id)] != sig {
			t.Errorf("record %d: no matching signature audit record", id)
		}
	}
}

// checkPossiblySigned retries every intent left reserved by the crash with its own claims: each
// must resume its record (Resumable, same id and digest) without a charge.
func checkPossiblySigned(t *testing.T, l *Ledger, live map[string]*PaymentRecord, now time.Time) {
	t.Helper()
	n, err := l.PossiblySigned()
	if err != nil {
		t.Fatal(err)
	}
	before, _ := l.Usage("total/wallet", 0, now)
	resumed := 0
	for _, r := range live {
		if r.Status != StatusReserved {
			continue
		}
		res, err := l.Reserve(context.Background(), Reservation{Wallet: r.Wallet, TabID: r.TabID, ReqID: r.ReqID,
			Claims: r.Claims, Charges: crashCharges(1), Principal: r.Principal, Agent: r.Agent, Rule: r.Rule, Digest: r.Digest})
		if err != nil || res.Outcome != Resumable || res.RecordID != r.ID || res.Digest != r.Digest {
			t.Errorf("retry of possibly signed record %d: %+v %v", r.ID, res, err)
		}
		resumed++
	}
	if resumed != n {
		t.Errorf("%d possibly signed intents counted, %d reserved records", n, resumed)
	}
	if after, _ := l.Usage("total/wallet", 0, now); after.Cmp(before) != 0 {
		t.Errorf("retries of possibly signed intents charged again: total usage %s -> %s", before, after)
	}
}
