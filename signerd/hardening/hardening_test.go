package hardening

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestApply runs Apply in a child process (its effects are irreversible) and checks them there.
func TestApply(t *testing.T) {
	if os.Getenv("HARDENING_CHILD") == "1" {
		rep, err := Apply()
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		d, _ := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
		var lim unix.Rlimit
		_ = unix.Getrlimit(unix.RLIMIT_CORE, &lim)
		old := unix.Umask(0)
		fmt.Printf("dumpable=%d core=%d/%d umask=%04o report=%v", d, lim.Cur, lim.Max, old, rep.Dumpable)
		os.Exit(0)
	}
	exe, _ := os.Executable()
	cmd := exec.Command(exe, "-test.run=^TestApply$")
	cmd.Env = append(os.Environ(), "HARDENING_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if !strings.Contains(string(out), "dumpable=0 core=0/0 umask=0077 report=false") {
		t.Fatalf("child reports %s", out)
	}
}

func TestCheckFiles(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		mode            os.FileMode
		private, secret bool // accepted?
	}{
		{0o600, true, true}, {0o400, true, true}, {0o640, true, false}, {0o660, false, false},
		{0o604, false, false}, {0o644, false, false}, {0o606, false, false},
	}
	for _, c := range cases {
		if err := os.Chmod(p, c.mode); err != nil {
			t.Fatal(err)
		}
		if err := CheckPrivateFile(p); (err == nil) != c.private || (err != nil && !errors.Is(err, ErrExposed)) {
			t.Errorf("CheckPrivateFile %04o: %v", c.mode, err)
		}
		if err := CheckSecretFile(p); (err == nil) != c.secret {
			t.Errorf("CheckSecretFile %04o: %v", c.mode, err)
		}
	}
	if err := CheckSecretFile(dir); err == nil {
		t.Error("a directory accepted as a secret file")
	}
}
