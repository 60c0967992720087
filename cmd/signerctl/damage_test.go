package main

import (
	"context"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/signerd/signerd/signerd/ledger"
)

// TestAuditVerifyDBOnDamagedLedgerSaysWhat: `audit verify --db` on a ledger whose write-ahead
// log was cut off or has flipped bytes exits non-zero with a message naming the damage, never
// a panic or a stack dump.
func TestAuditVerifyDBOnDamagedLedgerSaysWhat(t *testing.T) {
	for name, damage := range map[string]func([]byte) []byte{
		"cut off": func(b []byte) []byte { return b[:len(b)/3] },
		"flipped": func(b []byte) []byte {
			for i := len(b) / 8; i < len(b)/2; i += 509 {
				b[i] ^= 0xa5
			}
			return b
		},
	} {
		path := filepath.Join(t.TempDir(), "signerd.db")
		l, err := ledger.Open(ledger.Options{Path: path})
		if err != nil {
			t.Fatal(err)
		}
		for i := int64(0); i < 50; i++ {
			r, err := l.Reserve(context.Background(), ledger.Reservation{TabID: big.NewInt(1), ReqID: big.NewInt(i),
				Claims: []byte(`{"damage":"test"}`), Scheme: "eip712"})
			if err == nil {
				_, err = l.Commit(context.Background(), r.RecordID, make([]byte, 65))
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		l.Close()
		logs, _ := filepath.Glob(filepath.Join(path, "*.log"))
		if len(logs) == 0 {
			t.Fatal("no write-ahead log")
		}
		for _, f := range logs {
			b, _ := os.ReadFile(f)
			os.WriteFile(f, damage(b), 0o600)
		}
		out, errs, code := ctl("audit", "verify", "--db", path)
		all := out + errs
		t.Logf("%s: %s", name, strings.TrimSpace(all))
		if code == 0 || strings.Contains(all, "goroutine ") || strings.Contains(all, "panic") ||
			!(strings.Contains(all, "damaged") || strings.Contains(all, "gone") || strings.Contains(all, "corrupt")) {
			t.Errorf("%s: verify --db: %d %q %q", name, code, out, errs)
		}
		if _, err := ledger.Open(ledger.Options{Path: path}); err == nil || !strings.Contains(err.Error(), "corrupt") {
			t.Errorf("%s: the daemon's Open: %v", name, err)
		}
	}
}
