package ledger

import (
	"context"
	"errors"
	"math/big"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/signerd/signerd/signerd/bucketstore"
)

// damagedFixture is a closed ledger whose data sits in a table file and in the write-ahead log.
func damagedFixture(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "d.db")
	l, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := int64(0); i < 400; i++ {
		if i == 200 { // the first half goes to a table file
			if err := l.db.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		r, err := l.Reserve(ctx, resv(1, i, `{"n":1}`, charge("life", 0, 1<<40, 5)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.Commit(ctx, r.RecordID, sig65(byte(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// damage copies the store and applies f to every file of the copy whose name has the suffix.
func damage(t *testing.T, path, suffix string, f func([]byte) []byte) (string, int) {
	t.Helper()
	cp := filepath.Join(t.TempDir(), "copy.db")
	if err := bucketstore.CopyClosed(path, cp); err != nil {
		t.Fatal(err)
	}
	if mark, err := os.ReadFile(path + ".head"); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(cp+".head", mark, 0o600); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(cp, "*"+suffix))
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, f(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return cp, len(files)
}

// TestDamagedFilesGiveClearErrors: random byte flips and truncation of each kind of store file
// either leave a ledger that verifies, or are reported as damage naming what is wrong — never a
// panic, never a ledger that opens with wrong state.
func TestDamagedFilesGiveClearErrors(t *testing.T) {
	path := damagedFixture(t)
	rng := rand.New(rand.NewPCG(7, 7))
	flip := func(b []byte) []byte {
		for i := 0; i < 8 && len(b) > 0; i++ {
			b[rng.IntN(len(b))] ^= byte(1 + rng.IntN(255))
		}
		return b
	}
	half := func(b []byte) []byte { return b[:len(b)/2] }
	for _, suffix := range []string{".sst", ".log", "MANIFEST-000001", "OPTIONS-000003"} {
		for name, f := range map[string]func([]byte) []byte{"flipped": flip, "truncated": half} {
			cp, n := damage(t, path, suffix, f)
			if n == 0 {
				t.Fatalf("the fixture has no %s file", suffix)
			}
			l, err := Open(Options{Path: cp})
			if err != nil {
				if !errors.Is(err, ErrCorrupt) && !strings.Contains(err.Error(), "corrupt") && !strings.Contains(err.Error(), "damaged") {
					t.Errorf("%s %s: open error does not say the store is damaged: %v", name, suffix, err)
				}
				continue
			}
			rep, err := l.VerifyAudit()
			if err != nil && !errors.Is(err, ErrCorrupt) {
				t.Errorf("%s %s: verify: %v", name, suffix, err)
			}
			if recs, _ := l.ByTab(wallet, big.NewInt(1)); err == nil && len(recs) != 400 {
				t.Errorf("%s %s: opened with %d of 400 records and no error", name, suffix, len(recs))
			}
			t.Logf("%s %s: opened; verify ok=%v state=%q err=%v", name, suffix, rep.OK, rep.State, err)
			l.Close()
		}
	}
}
