package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// sdkLoop is scripts/sdk-baseline.mjs in serve mode: the official @4mica/sdk PaymentSigner
// signing guarantees in one node process with the key in its memory and nothing durable (the
// unisolated baseline), driven round by round so that its rounds alternate with the daemon's.
type sdkLoop struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    *bufio.Scanner
	stderr bytes.Buffer
}

// oracleDir is where scripts/setup.sh installs the 4Mica oracle (and with it @4mica/sdk):
// SIGNERD_ORACLE_DIR, else SIGNERD_SHARED_DIR/oracle, else ../shared/oracle beside the repo.
func oracleDir(root string) string {
	if d := os.Getenv("SIGNERD_ORACLE_DIR"); d != "" {
		return d
	}
	shared := os.Getenv("SIGNERD_SHARED_DIR")
	if shared == "" {
		shared = filepath.Join(root, "..", "shared")
	}
	return filepath.Join(shared, "oracle")
}

// startSDKLoop starts the node process. It fails when node or the oracle's @4mica/sdk is
// missing (make setup installs both).
func startSDKLoop() (*sdkLoop, error) {
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	node, err := exec.LookPath("node")
	if err != nil {
		return nil, fmt.Errorf("the SDK baseline needs node (make setup): %w", err)
	}
	oracle := oracleDir(root)
	if _, err := os.Stat(filepath.Join(oracle, "node_modules", "@4mica", "sdk")); err != nil {
		return nil, fmt.Errorf("the SDK baseline needs @4mica/sdk in %s (make setup runs npm ci there): %w", oracle, err)
	}
	s := &sdkLoop{cmd: exec.Command(node, filepath.Join(root, "scripts", "sdk-baseline.mjs"), "--serve")}
	s.cmd.Env = append(os.Environ(), "SIGNERD_ORACLE_DIR="+oracle)
	s.cmd.Stderr = &s.stderr
	if s.in, err = s.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	s.out = bufio.NewScanner(out)
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	return s, nil
}

// round signs n guarantees in the node process and returns the time it took there.
func (s *sdkLoop) round(n int) (time.Duration, error) {
	if _, err := fmt.Fprintf(s.in, "%d\n", n); err != nil {
		return 0, fmt.Errorf("sdk-baseline: %v: %s", err, s.stderr.String())
	}
	if !s.out.Scan() {
		return 0, fmt.Errorf("sdk-baseline ended: %v: %s", s.out.Err(), s.stderr.String())
	}
	f := strings.Fields(s.out.Text())
	if len(f) != 2 || f[0] != strconv.Itoa(n) {
		return 0, fmt.Errorf("sdk-baseline answered %q to %d", s.out.Text(), n)
	}
	ns, err := strconv.ParseInt(f[1], 10, 64)
	return time.Duration(ns), err
}

// arm is the loop as a benchmark arm (it measures rounds, not single calls).
func (s *sdkLoop) arm() *arm {
	return &arm{round: func(_, n int) (time.Duration, []time.Duration, error) {
		d, err := s.round(n)
		return d, nil, err
	}}
}

// close ends the node process (end of stdin) and waits for it.
func (s *sdkLoop) close() error {
	s.in.Close()
	if err := s.cmd.Wait(); err != nil {
		return fmt.Errorf("sdk-baseline: %v: %s", err, s.stderr.String())
	}
	return nil
}
