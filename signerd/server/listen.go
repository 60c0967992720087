package server

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/signerd/signerd/signerd/config"
)

// Listen creates the Unix socket s.Path with mode s.Mode and group s.Group. A stale socket
// file left by a dead daemon is replaced; a live one (something answers) is an error, and so
// is any other kind of file at the path. The socket is created under the daemon's umask
// (owner only) and widened afterwards, so it is never more open than configured.
func Listen(s config.Socket) (*net.UnixListener, error) {
	if fi, err := os.Lstat(s.Path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("listen %s: a non-socket file is in the way", s.Path)
		}
		if c, err := net.DialTimeout("unix", s.Path, 200*time.Millisecond); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen %s: another process is serving this socket", s.Path)
		}
		if err := os.Remove(s.Path); err != nil {
			return nil, fmt.Errorf("listen %s: removing stale socket: %w", s.Path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: s.Path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(true)
	if s.Group != "" {
		gid, err := config.LookupGroup(s.Group)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("listen %s: group %q: %w", s.Path, s.Group, err)
		}
		if err := os.Chown(s.Path, -1, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("listen %s: chown group %d: %w", s.Path, gid, err)
		}
	}
	if err := os.Chmod(s.Path, os.FileMode(s.Mode)); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen %s: chmod: %w", s.Path, err)
	}
	return ln, nil
}

// limitListener bounds the number of open connections: past the limit Accept waits until one
// closes (clients queue in the socket backlog), so a caller opening connections in a loop cannot
// exhaust the daemon's file descriptors. Close ends a waiting Accept at once (net.ErrClosed),
// so http.Server.Shutdown is not held up by a full listener.
type limitListener struct {
	net.Listener
	sem       chan struct{}
	closed    chan struct{}
	closeOnce sync.Once
}

func limitConns(l net.Listener, n int) net.Listener {
	return &limitListener{Listener: l, sem: make(chan struct{}, n), closed: make(chan struct{})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.sem }}, nil
}

// Close closes the listener and wakes an Accept waiting for a free slot.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
