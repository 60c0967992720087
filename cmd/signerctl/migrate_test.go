package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/signerd/signerd/signerd/ledger"
)

// fixtureV1 is a bbolt ledger written by signerd's last bbolt version (see
// signerd/ledger/testdata/gen-ledger-v1.go for how it was made).
const fixtureV1 = "../../signerd/ledger/testdata/ledger-v1-bbolt.db"

// TestAuditVerifyDBAsksToMigrateV1Ledger: `audit verify --db` on a ledger file of the bbolt
// version refuses, saying to start the daemon once (and leaves the file alone); once
// ledger.Open (what the daemon does at start) migrated it, the same command verifies it.
func TestAuditVerifyDBAsksToMigrateV1Ledger(t *testing.T) {
	raw, err := os.ReadFile(fixtureV1)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "signerd.db")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	out, errs, code := ctl("audit", "verify", "--db", path)
	if code == 0 || !strings.Contains(errs, "earlier signerd version") || !strings.Contains(errs, "start the daemon once") {
		t.Fatalf("verify --db on a v1 ledger: %d %q %q", code, out, errs)
	}
	if got, _ := os.ReadFile(path); string(got) != string(raw) {
		t.Fatal("signerctl changed the v1 ledger file")
	}
	l, err := ledger.Open(ledger.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	out, errs, code = ctl("audit", "verify", "--db", path)
	if code != 0 || !strings.Contains(out, "audit log OK: 16 records") || !strings.Contains(out, "pruned") {
		t.Fatalf("verify --db after the migration: %d %q %q", code, out, errs)
	}
}
