// Package hardening applies signerd's process-level protections at start-up (not dumpable, no
// core files, restrictive umask) and checks that secret-bearing files (config, PIN) are not
// readable by others. Every call here works without root (platform notes §4).
package hardening

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Umask is the file-creation mask the daemon runs with: owner-only files and sockets by
// default; sockets are widened explicitly with chmod where the configuration asks for it.
const Umask = 0o077

// Report says what Apply did; it is logged at start.
type Report struct {
	Dumpable  bool // PR_GET_DUMPABLE after the call (want false)
	CoreLimit uint64
	Umask     int // the mask now in force
}

// Apply makes the process non-dumpable (so /proc/PID/{mem,environ} are root-owned and
// ptrace by same-uid processes fails), sets RLIMIT_CORE to 0 (irreversible without
// CAP_SYS_RESOURCE) and installs Umask. It fails if any step fails: the daemon refuses to run
// unprotected.
func Apply() (Report, error) {
	var r Report
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return r, fmt.Errorf("hardening: prctl(PR_SET_DUMPABLE, 0): %w", err)
	}
	d, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	if err != nil {
		return r, fmt.Errorf("hardening: prctl(PR_GET_DUMPABLE): %w", err)
	}
	r.Dumpable = d != 0
	if r.Dumpable {
		return r, errors.New("hardening: process is still dumpable")
	}
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		return r, fmt.Errorf("hardening: setrlimit(RLIMIT_CORE, 0): %w", err)
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_CORE, &lim); err != nil {
		return r, fmt.Errorf("hardening: getrlimit(RLIMIT_CORE): %w", err)
	}
	r.CoreLimit = lim.Max
	if lim.Cur != 0 || lim.Max != 0 {
		return r, fmt.Errorf("hardening: RLIMIT_CORE is %d/%d, want 0/0", lim.Cur, lim.Max)
	}
	unix.Umask(Umask)
	r.Umask = Umask
	return r, nil
}

// ErrExposed is returned (wrapped) when a secret-bearing file can be read or written by others.
var ErrExposed = errors.New("file is accessible to other users")

// CheckPrivateFile refuses a file that is not a regular file, that is readable or writable by
// "other", or writable by its group, or that belongs to a user other than the daemon's uid or
// root. Use it for the config file.
func CheckPrivateFile(path string) error {
	return check(path, 0o027)
}

// CheckSecretFile is stricter: the file may be read by its owner only (mode 0400 or 0600).
// Use it for PIN files and key material.
func CheckSecretFile(path string) error {
	return check(path, 0o077)
}

func check(path string, forbidden os.FileMode) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&forbidden != 0 {
		return fmt.Errorf("%s: mode %04o: %w (want no %04o bits)", path, perm, ErrExposed, forbidden)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if st.Uid != uint32(os.Geteuid()) && st.Uid != 0 {
			return fmt.Errorf("%s: owned by uid %d, not by the daemon (uid %d) or root: %w", path, st.Uid, os.Geteuid(), ErrExposed)
		}
	}
	return nil
}
