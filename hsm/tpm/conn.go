//go:build !no_tpm

package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// maxResponse bounds a TPM response (TPM 2.0 responses are at most a few KiB).
const maxResponse = 1 << 16

// connError marks a failure of the link to the TPM (as opposed to an error code the TPM
// returned): the connection is dropped and re-established.
type connError struct{ err error }

func (e *connError) Error() string { return "tpm link: " + e.err.Error() }
func (e *connError) Unwrap() error { return e.err }

// testHookWire, when set by tests before Open, sees every command and response on a stream.
var testHookWire func(cmd, rsp []byte)

// streamConn is a TPM transport over a byte stream (swtpm's socket server over TCP or a Unix
// socket). It frames responses exactly: the 10-byte header, then the rest of the size it
// announces (tpmutil.RunCommandRaw's single Read is not safe on a stream).
type streamConn struct {
	c       net.Conn
	timeout time.Duration
}

func (s *streamConn) Send(cmd []byte) ([]byte, error) {
	if s.timeout > 0 {
		_ = s.c.SetDeadline(time.Now().Add(s.timeout))
	}
	if _, err := s.c.Write(cmd); err != nil {
		return nil, &connError{err}
	}
	var hdr [10]byte
	if _, err := io.ReadFull(s.c, hdr[:]); err != nil {
		return nil, &connError{err}
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < 10 || size > maxResponse {
		return nil, &connError{fmt.Errorf("bad response size %d", size)}
	}
	rsp := make([]byte, size)
	copy(rsp, hdr[:])
	if _, err := io.ReadFull(s.c, rsp[10:]); err != nil {
		return nil, &connError{err}
	}
	if testHookWire != nil {
		testHookWire(cmd, rsp)
	}
	return rsp, nil
}

func (s *streamConn) Close() error { return s.c.Close() }

// deviceConn wraps a kernel TPM device so that its I/O failures are marked as link failures.
type deviceConn struct{ t transport.TPMCloser }

func (d *deviceConn) Send(cmd []byte) ([]byte, error) {
	rsp, err := d.t.Send(cmd)
	if err != nil {
		return nil, &connError{err}
	}
	return rsp, nil
}

func (d *deviceConn) Close() error { return d.t.Close() }

// endpoint is a parsed TPM location.
type endpoint struct {
	device  string // /dev/tpmrm0
	network string // "tcp" | "unix"
	address string
}

func (e endpoint) String() string {
	if e.device != "" {
		return e.device
	}
	return e.network + ":" + e.address
}

// simulator reports whether the endpoint is an emulator socket without a resource manager
// (objects and sessions left by a previous client stay loaded and must be flushed).
func (e endpoint) simulator() bool { return e.device == "" }

// parseEndpoint validates Device / Address options: exactly one of them.
func parseEndpoint(device, address string) (endpoint, error) {
	switch {
	case device != "" && address != "":
		return endpoint{}, errors.New("set only one of device and address")
	case device != "":
		if !strings.HasPrefix(device, "/") {
			return endpoint{}, fmt.Errorf("device %q is not an absolute path", device)
		}
		return endpoint{device: device}, nil
	case address != "":
		network, addr, ok := strings.Cut(address, ":")
		if !ok || addr == "" {
			return endpoint{}, fmt.Errorf("address %q: want tcp:host:port or unix:/path", address)
		}
		switch network {
		case "tcp":
			if _, _, err := net.SplitHostPort(addr); err != nil {
				return endpoint{}, fmt.Errorf("address %q: %v", address, err)
			}
		case "unix":
			if !strings.HasPrefix(addr, "/") {
				return endpoint{}, fmt.Errorf("address %q: unix socket path must be absolute", address)
			}
		default:
			return endpoint{}, fmt.Errorf("address %q: want tcp:host:port or unix:/path", address)
		}
		return endpoint{network: network, address: addr}, nil
	default:
		return endpoint{}, errors.New("set device (e.g. /dev/tpmrm0) or address (tcp:host:port, unix:/path)")
	}
}

// dial opens one connection to the TPM.
func dial(e endpoint, timeout time.Duration) (transport.TPMCloser, error) {
	if e.device != "" {
		t, err := linuxtpm.Open(e.device)
		if err != nil {
			return nil, &connError{err}
		}
		return &deviceConn{t}, nil
	}
	c, err := net.DialTimeout(e.network, e.address, timeout)
	if err != nil {
		return nil, &connError{err}
	}
	return &streamConn{c: c, timeout: timeout}, nil
}
