// Package swtpmtest starts a real swtpm (TPM 2.0 emulator) in socket mode for tests: a fresh
// state directory per test, a Unix data socket, and helpers to kill, stop and restart the
// emulator on the same state (sealed blobs survive a restart, as on real hardware).
//
// swtpm must be installed (Debian: apt-get install swtpm swtpm-tools); when it is not, Start
// fails the test rather than skipping it, so CI cannot pass without exercising the TPM.
package swtpmtest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TPM is one swtpm instance owned by a test.
type TPM struct {
	t        testing.TB
	bin      string
	StateDir string // TPM state (seeds, NV); persists across Restart
	sockDir  string
	DataPath string // Unix socket of the TPM command channel
	CtrlPath string // Unix socket of swtpm's control channel
	LogPath  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start launches swtpm in a temporary state directory and registers cleanup with t.
func Start(t testing.TB) *TPM {
	t.Helper()
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		t.Fatalf("swtpmtest: swtpm not installed (apt-get install swtpm swtpm-tools): %v", err)
	}
	// Unix socket paths are limited to 108 bytes: keep them under a short /tmp directory.
	sockDir, err := os.MkdirTemp("", "swtpm")
	if err != nil {
		t.Fatal(err)
	}
	s := &TPM{
		t:        t,
		bin:      bin,
		StateDir: t.TempDir(),
		sockDir:  sockDir,
		DataPath: filepath.Join(sockDir, "data.sock"),
		CtrlPath: filepath.Join(sockDir, "ctrl.sock"),
	}
	s.LogPath = filepath.Join(s.StateDir, "swtpm.log")
	t.Cleanup(func() {
		s.Kill()
		_ = os.RemoveAll(sockDir)
	})
	if err := s.start(); err != nil {
		t.Fatalf("swtpmtest: %v", err)
	}
	return s
}

// Address is the endpoint for hsm.TPMOptions.Address ("unix:/path").
func (s *TPM) Address() string { return "unix:" + s.DataPath }

// Running reports whether the swtpm process is alive.
func (s *TPM) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

func (s *TPM) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done != nil {
		select {
		case <-s.done:
		default:
			return errors.New("already running")
		}
	}
	_ = os.Remove(s.DataPath)
	_ = os.Remove(s.CtrlPath)
	cmd := exec.Command(s.bin, "socket", "--tpm2",
		"--tpmstate", "dir="+s.StateDir,
		"--server", "type=unixio,path="+s.DataPath,
		"--ctrl", "type=unixio,path="+s.CtrlPath,
		"--flags", "not-need-init,startup-clear",
		"--log", "file="+s.LogPath+",level=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start swtpm: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-done:
			log, _ := os.ReadFile(s.LogPath)
			return fmt.Errorf("swtpm exited at start: %s", log)
		default:
		}
		if _, err := os.Stat(s.DataPath); err == nil {
			// The socket exists; a probe connection proves swtpm accepts (it serves one client
			// at a time, and the probe is closed at once).
			if c, err := net.DialTimeout("unix", s.DataPath, time.Second); err == nil {
				_ = c.Close()
				return nil
			}
		}
		if time.Now().After(deadline) {
			return errors.New("swtpm did not open its socket within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *TPM) signal(sig os.Signal) {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Kill ends swtpm abruptly (SIGKILL), as a crash or a removed device would.
func (s *TPM) Kill() { s.signal(syscall.SIGKILL) }

// Stop ends swtpm gracefully (SIGTERM).
func (s *TPM) Stop() { s.signal(syscall.SIGTERM) }

// Restart starts swtpm again on the same state directory (after Kill or Stop), failing the
// test if it cannot.
func (s *TPM) Restart() {
	s.t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		s.t.Fatalf("swtpmtest: restart: %v", err)
	}
}
