// Package client talks to a signerd daemon over one of its Unix sockets: JSON requests over
// HTTP/1.1, answers decoded into the caller's types, and the daemon's error envelope
// ({"error": {"code", "reason", "rule"?, "record_id"?}}) returned as *Error. signerctl uses it
// on the admin socket; agents written in Go (cmd/demoagent) use it on the agent socket.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// ErrUnreachable wraps every failure to reach the daemon (no socket, refused, broken
// connection), as opposed to an answer the daemon gave (*Error).
var ErrUnreachable = errors.New("cannot reach signerd")

// DefaultTimeout bounds one request; it covers an approval's long poll (20 s by default).
const DefaultTimeout = 2 * time.Minute

// maxAnswer bounds how much of an answer Do reads.
const maxAnswer = 64 << 20

// Error is a refusal or fault the daemon answered with (any non-2xx status).
type Error struct {
	Status   int    `json:"-"`
	Code     string `json:"code"`
	Reason   string `json:"reason"`
	Rule     string `json:"rule,omitempty"`
	RecordID string `json:"record_id,omitempty"`
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s: %s", e.Code, e.Reason)
	if e.Rule != "" {
		s += " (rule " + e.Rule + ")"
	}
	return s
}

// Client sends requests to one socket. It keeps connections open between requests.
type Client struct {
	socket string
	http   *http.Client
}

// New returns a client for the daemon socket at path.
func New(path string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	return &Client{socket: path, http: &http.Client{Transport: tr}}
}

// Socket is the socket path the client talks to.
func (c *Client) Socket() string { return c.socket }

// Do sends in (JSON-encoded unless nil) and decodes a 2xx answer into out (unless nil),
// within DefaultTimeout.
func (c *Client) Do(method, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), DefaultTimeout)
	defer cancel()
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return fmt.Errorf("%w: reading the answer from %s: %v", ErrUnreachable, c.socket, err)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("decoding signerd's answer to %s %s: %w", method, path, err)
	}
	return nil
}

// Stream sends a bodiless request and copies a 2xx answer to w as it arrives, with no overall
// time limit (for exports, which may be large).
func (c *Client) Stream(method, path string, w io.Writer) error {
	resp, err := c.send(context.Background(), method, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	return err
}

// send performs the request and turns a non-2xx answer into *Error (closing its body).
func (c *Client) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://signerd"+path, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w at %s: %v", ErrUnreachable, c.socket, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var env struct {
		Error Error `json:"error"`
	}
	if json.Unmarshal(raw, &env) != nil || env.Error.Code == "" {
		return nil, &Error{Status: resp.StatusCode, Code: "http_" + strconv.Itoa(resp.StatusCode), Reason: string(bytes.TrimSpace(raw))}
	}
	env.Error.Status = resp.StatusCode
	return nil, &env.Error
}
