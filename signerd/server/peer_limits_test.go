package server_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/signerd/signerd/signerd/config"
)

// spoofScript connects to the agent socket from a forked child that then execs the "trusted"
// binary; the parent keeps the connection (same socket) and speaks on it. SO_PEERCRED names the
// child's pid, and when the daemon reads /proc/<pid>/exe the child already runs the trusted
// binary. With argv[3] == "direct" the parent connects itself (control: must be refused).
const spoofScript = `
import os, socket, sys, time
path, trusted, mode = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
pid = 0
if mode == "direct":
    s.connect(path)
else:
    pid = os.fork()
    if pid == 0:
        s.connect(path)
        os.execv(trusted, [trusted, "30"])
    real = os.path.realpath(trusted)
    while True:
        try:
            if os.readlink("/proc/%d/exe" % pid) == real:
                break
        except OSError:
            pass
        time.sleep(0.01)
print("READY", flush=True)
sys.stdin.readline()
s.sendall(b"GET /v1/wallets HTTP/1.1\r\nHost: signerd\r\nConnection: close\r\n\r\n")
data = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    data += b
if pid:
    os.kill(pid, 9)
print(data.decode(errors="replace").replace("\r\n", " | "), flush=True)
`

// TestExePinIsDefenceInDepth documents a known limitation (docs/policy.md, caller entries): a
// caller entry pinned to an executable (exe + exe_sha256) admits only processes running that
// binary when they connect, which the control checks (python connecting itself is refused).
// But the daemon reads /proc/<peer pid>/exe when it accepts the connection; a same-uid process
// that connects from a child which immediately execs the trusted binary, and keeps the
// connection in the parent, is admitted as the agent. That cannot be closed via /proc, so the
// pin is defence in depth only; the spoof is logged, not failed. Holding the daemon at
// max_connections makes the race certain.
func TestExePinIsDefenceInDepth(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 needed for this reproduction")
	}
	trusted, err := filepath.EvalSymlinks("/bin/sleep")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(trusted)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	pol := strings.Replace(mustRead(t, "testdata/policy.yaml"), "      - uid: self\n",
		"      - uid: self\n        exe: "+trusted+"\n        exe_sha256: \""+hex.EncodeToString(sum[:])+"\"\n", 1)
	d := startDaemon(t, func(c *config.Config) { c.Limits.MaxConnections = 1 })
	t.Cleanup(func() { d.admin.http.CloseIdleConnections() })
	if err := os.WriteFile(d.cfg.Policy, []byte(pol), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := d.admin.do(t, "POST", "/v1/admin/policy/reload", nil); r.Status != 200 {
		t.Fatalf("reload: %d %s", r.Status, r.Raw)
	}
	script := filepath.Join(d.dir, "spoof.py")
	if err := os.WriteFile(script, []byte(spoofScript), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(mode string, beforeSend func()) string {
		cmd := exec.Command(py, script, d.cfg.Sockets.Agent.Path, trusted, mode)
		in, _ := cmd.StdinPipe()
		outp, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Wait()
		rd := bufio.NewReader(outp)
		if l, err := rd.ReadString('\n'); err != nil || strings.TrimSpace(l) != "READY" {
			t.Fatalf("script: %q %v", l, err)
		}
		beforeSend()
		in.Write([]byte("\n"))
		l, _ := rd.ReadString('\n')
		return l
	}
	// Control: the script itself (python, not the pinned binary) is refused.
	if got := run("direct", func() {}); !strings.HasPrefix(got, "HTTP/1.1 403") {
		t.Fatalf("control: python connecting directly: %s", got)
	}
	// Spoof: hold the only connection slot so the spoofed connection waits in the backlog
	// until the child has exec'd, then let the daemon accept it.
	holder, err := net.Dial("unix", d.cfg.Sockets.Agent.Path)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	got := run("spoof", func() {
		holder.Close()
		time.Sleep(200 * time.Millisecond)
	})
	switch {
	case strings.HasPrefix(got, "HTTP/1.1 200"):
		t.Logf("known limitation (exe pins are not a boundary against the same uid): a python process that connected and then exec'd %s was admitted", trusted)
	case strings.HasPrefix(got, "HTTP/1.1 403"):
		t.Logf("the exec spoof was refused this time (timing); the limitation stands")
	default:
		t.Fatalf("spoof attempt: unexpected answer %q", got)
	}
}

// TestShutdownAtConnectionLimit: with limits.max_connections reached (here by one idle
// keep-alive connection), limitListener.Accept waits for a free slot. http.Server.Shutdown
// closes the listener and waits — without looking at ctx — for the Serve loop to return, so
// the listener's Close must wake that Accept, or SIGTERM's drain_timeout is not honoured.
func TestShutdownAtConnectionLimit(t *testing.T) {
	d := startDaemon(t, func(c *config.Config) { c.Limits.MaxConnections = 1 })
	if r := d.agent.do(t, "GET", "/v1/health", nil); r.Status != 200 { // leaves one idle keep-alive connection
		t.Fatalf("health: %d", r.Status)
	}
	t.Cleanup(func() { d.agent.http.CloseIdleConnections(); d.admin.http.CloseIdleConnections() })
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		done <- d.Shutdown(ctx)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		d.agent.http.CloseIdleConnections()
		d.admin.http.CloseIdleConnections()
		<-done
		t.Fatal("Shutdown with a 2 s context had not returned after 5 s: it waits for the connection-limited Accept")
	}
}
