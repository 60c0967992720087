package ledger

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"math/big"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/signerd/signerd/signerd/bucketstore"
)

// TestCrashAfterPrune: a ledger pruned (40 signed records on the keys the crash child uses,
// so its requests meet pruned replay entries) is hammered by the SIGKILL child, killed, and
// reopened, twice. After each kill: the chain verifies from the checkpoint, the pruned keys are
// still marked pruned (never signed again), every signature a client received is durable,
// and after releasing orphans the lifetime usage is the pruned records' charges plus the
// live signed records' (a prune changes no budget, a crash neither).
func TestCrashAfterPrune(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "crash.db")
	old := time.Now().Add(-72 * time.Hour)
	l, err := Open(Options{Path: path, Clock: func() time.Time { return old }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pruned := map[string]RecordID{}
	for tab := 0; tab < 8; tab++ {
		for req := 0; req < 5; req++ {
			claims := []byte(fmt.Sprintf(`{"tab":%d,"req":%d,"v":0}`, tab, req))
			r, err := l.Reserve(ctx, Reservation{Wallet: wallet, TabID: big.NewInt(int64(tab)), ReqID: big.NewInt(int64(req)),
				Claims: claims, Charges: crashCharges(5), Principal: "uid:1000", Agent: "agent-a", Rule: "allow"})
			if err != nil || r.Outcome != Reserved {
				t.Fatal(r.Outcome, err)
			}
			if _, err := l.Commit(ctx, r.RecordID, fakeSig(claims, r.RecordID)); err != nil {
				t.Fatal(err)
			}
			pruned[string(replayKey(wallet, big.NewInt(int64(tab)), big.NewInt(int64(req))))] = r.RecordID
		}
	}
	l.Close()
	if l, err = Open(Options{Path: path}); err != nil {
		t.Fatal(err)
	}
	var arch bytes.Buffer
	sum, err := l.ExportArchive(&arch, time.Now().Add(-48*time.Hour))
	if err == nil {
		_, err = l.Prune(ctx, PruneRequest{Before: sum.Before, Plan: sum.Plan})
	}
	if err != nil || sum.PaymentRecords != 40 {
		t.Fatalf("prune: %+v %v", sum, err)
	}
	l.Close()

	received := map[RecordID]string{}
	for round := 0; round < 2; round++ {
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
		sc := bufio.NewScanner(stdout)
		if !sc.Scan() || sc.Text() != "READY" {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("child did not start: %s", stderr.String())
		}
		time.Sleep(time.Duration(100+rand.Intn(200)) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			switch {
			case len(f) == 3 && f[0] == "SIG":
				id, _ := strconv.ParseUint(f[1], 10, 64)
				received[RecordID(id)] = f[2]
			case len(f) > 0 && f[0] == "ERR":
				t.Errorf("child: %s", sc.Text())
			}
		}
		_ = cmd.Wait()

		l, err := Open(Options{Path: path})
		if err != nil {
			t.Fatal(err)
		}
		if rep, err := l.VerifyAudit(); err != nil || !rep.OK || rep.PrunedThrough < sum.Through.Seq {
			t.Fatalf("round %d: verify: %+v %v", round, rep, err)
		}
		liveTotal := new(big.Int)
		if err := l.DB().View(func(tx *bucketstore.Tx) error {
			for k, id := range pruned {
				e, err := parseReplay([]byte(k), tx.Bucket(bucketReplay).Get([]byte(k)))
				if err != nil || e.status != replayPruned || e.id != id {
					t.Errorf("round %d: pruned key of record %d now %+v %v", round, id, e, err)
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		for id, sig := range received {
			if id <= 40 {
				t.Errorf("record id %d reused after the prune", id)
			}
			r, err := l.Record(id)
			if err != nil || r.Status != StatusSigned || hex.EncodeToString(r.Signature) != sig {
				t.Errorf("round %d: received signature of record %d: %+v %v", round, id, r, err)
			}
		}
		if err := l.DB().View(func(tx *bucketstore.Tx) error {
			return tx.Bucket(bucketRecords).ForEach(func(k, v []byte) error {
				r, err := loadRecord(tx, RecordID(new(big.Int).SetBytes(k).Uint64()), v)
				if err != nil || r.Status == StatusReleased { // possibly signed intents keep their charges
					return err
				}
				for _, c := range r.Charges {
					if c.Key == "total/wallet" {
						liveTotal.Add(liveTotal, c.Amount)
					}
				}
				return nil
			})
		}); err != nil {
			t.Fatal(err)
		}
		u, err := l.Usage("total/wallet", 0, time.Now())
		if err != nil || u.Cmp(new(big.Int).Add(liveTotal, big.NewInt(200))) != 0 {
			t.Errorf("round %d: total usage %s, live signed or possibly signed %s + pruned 200", round, u, liveTotal)
		}
		l.Close()
	}
	if len(received) == 0 {
		t.Fatal("the child signed nothing")
	}
}
