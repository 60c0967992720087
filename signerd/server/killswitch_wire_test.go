package server_test

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// gatedListener hands out connections whose first write carrying a signature blocks until the
// gate is opened: it stands for the moment between the handler returning and net/http flushing
// the buffered answer to the socket (a slow reader, a descheduled goroutine).
type gatedListener struct {
	net.Listener
	writing chan struct{} // closed when a signature write starts
	gate    chan struct{} // closed to let it through
	once    sync.Once
}

type gatedConn struct {
	net.Conn
	l *gatedListener
}

func (c *gatedConn) InnerConnForTest() net.Conn { return c.Conn }

func (c *gatedConn) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte(`"signature"`)) {
		c.l.once.Do(func() { close(c.l.writing) })
		<-c.l.gate
	}
	return c.Conn.Write(p)
}

func (l *gatedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &gatedConn{Conn: c, l: l}, nil
}

// TestReviewEngageWaitsForSignatureOnTheWire: the handler releases its kill-switch pass with
// `defer res.Done()` right after writeValue, but writeValue only fills net/http's buffers; the
// bytes reach the socket after the handler returns. So EngageKillSwitch can return ("no further
// signature leaves the daemon") while a signature is still to be written, and the client then
// receives it. Issue 5: "Once the engage call returns, no further signature leaves the daemon,
// including requests already in flight."
func TestReviewEngageWaitsForSignatureOnTheWire(t *testing.T) {
	d := startDaemon(t, nil)
	sock := filepath.Join(d.dir, "gated.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	gl := &gatedListener{Listener: ln, writing: make(chan struct{}), gate: make(chan struct{})}
	srv := d.ServeAgentForTest(gl)
	var openGate sync.Once
	release := func() { openGate.Do(func() { close(gl.gate) }) }
	t.Cleanup(func() { release(); srv.Close() })

	c := newClient(sock)
	got := make(chan *response, 1)
	go func() {
		got <- c.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(0x61, 1, 1000, nil)})
	}()
	select {
	case <-gl.writing:
	case r := <-got:
		t.Fatalf("answer came without a signature write: %d %s", r.Status, r.Raw)
	case <-time.After(10 * time.Second):
		t.Fatal("no answer written")
	}
	// The signature is now between the daemon's buffers and the socket. Engage.
	engaged := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		engaged <- d.EngageKillSwitch(ctx, "alice", "review")
	}()
	var engageReturned bool
	select {
	case err := <-engaged:
		engageReturned = err == nil
	case <-time.After(time.Second):
	}
	release()
	r := <-got
	if engageReturned && r.Status == 200 && r.str("signature") != "" {
		t.Fatalf("EngageKillSwitch returned nil while a signature was still unwritten; the client then received it (%s)", r.str("signature"))
	}
}
