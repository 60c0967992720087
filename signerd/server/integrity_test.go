package server_test

import (
	"context"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/bucketstore"
	"github.com/signerd/signerd/signerd/config"
	"github.com/signerd/signerd/signerd/ledger"
)

// seedLedger writes one charged, signed record into a new ledger at dir/signerd.db, then edits
// the stored usage offline (with the store's own tools: every checksum stays valid) when
// tamper is set, as a local attacker resetting an exhausted budget would.
func seedLedger(t *testing.T, dir string, tamper bool) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "signerd.db")
	l, err := ledger.Open(ledger.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	res, err := l.Reserve(ctx, ledger.Reservation{TabID: big.NewInt(5), ReqID: big.NewInt(1), Claims: []byte(`{"seed":1}`),
		Scheme: "eip712", Charges: []policyengine.Charge{{Budget: "life", Key: "life/agent", Limit: big.NewInt(100), Amount: big.NewInt(100)}}})
	if err != nil || res.Outcome != ledger.Reserved {
		t.Fatalf("reserve: %+v %v", res, err)
	}
	if _, err := l.Commit(ctx, res.RecordID, make([]byte, 65)); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if !tamper {
		return
	}
	db, err := bucketstore.Open(path, bucketstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bucketstore.Tx) error {
		b := tx.Bucket([]byte("usage"))
		c := b.Cursor()
		k, _ := c.First()
		return b.Delete(k) // the exhausted lifetime budget, reset
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestTamperedLedgerStopsSigning: a ledger whose budget usage was reset offline still opens (its
// newest audit records verify), but the integrity check run at start finds the state does not
// match the audit log: readiness fails with the reason and signing is refused.
func TestTamperedLedgerStopsSigning(t *testing.T) {
	d := startDaemon(t, func(c *config.Config) { seedLedger(t, c.StateDir, true) })
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := d.admin.do(t, "GET", "/v1/ready", nil)
		if r.Status == 503 && strings.Contains(string(r.Raw), "integrity") && strings.Contains(string(r.Raw), "usage") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("readiness never reported the tampered usage: %d %s", r.Status, r.Raw)
		}
		time.Sleep(20 * time.Millisecond)
	}
	r := d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(9, 1, 5, nil)})
	if r.Status != 503 {
		t.Fatalf("signing on a tampered ledger: %d %s", r.Status, r.Raw)
	}
}

// TestIntactLedgerPassesTheStartCheck: the same ledger untouched passes the integrity check and
// the daemon signs.
func TestIntactLedgerPassesTheStartCheck(t *testing.T) {
	d := startDaemon(t, func(c *config.Config) { seedLedger(t, c.StateDir, false) })
	time.Sleep(100 * time.Millisecond) // the background check has long finished on a tiny ledger
	if r := d.admin.do(t, "GET", "/v1/ready", nil); r.Status != 200 {
		t.Fatalf("readiness: %d %s", r.Status, r.Raw)
	}
	if r := d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(9, 1, 5, nil)}); r.Status != 200 {
		t.Fatalf("signing: %d %s", r.Status, r.Raw)
	}
}
