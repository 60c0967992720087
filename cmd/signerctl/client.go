package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

// defaultAdminSocket is where signerctl looks for a daemon's admin socket when neither
// --socket nor SIGNERD_ADMIN_SOCKET says otherwise.
const defaultAdminSocket = "/run/signerd/admin.sock"

// adminSocket resolves the admin socket path from a --socket flag value and the environment.
func adminSocket(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if env := os.Getenv("SIGNERD_ADMIN_SOCKET"); env != "" {
		return env
	}
	return defaultAdminSocket
}

// apiError is the daemon's error envelope: {"error": {"code", "reason", "rule"?, "record_id"?}}.
type apiError struct {
	Status   int    `json:"-"`
	Code     string `json:"code"`
	Reason   string `json:"reason"`
	Rule     string `json:"rule,omitempty"`
	RecordID string `json:"record_id,omitempty"`
}

func (e *apiError) Error() string {
	s := fmt.Sprintf("%s: %s", e.Code, e.Reason)
	if e.Rule != "" {
		s += " (rule " + e.Rule + ")"
	}
	return s
}

// daemonClient speaks JSON over HTTP/1.1 on a daemon's Unix socket.
type daemonClient struct {
	socket string
	http   *http.Client
}

func newDaemonClient(socket string) *daemonClient {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}
	return &daemonClient{socket: socket, http: &http.Client{Transport: tr, Timeout: 2 * time.Minute}}
}

// do sends in (JSON-encoded unless nil) and decodes a 2xx body into out (unless nil).
// A non-2xx answer is returned as *apiError.
func (c *daemonClient) do(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://signerd"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach signerd at %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading signerd's answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var env struct {
			Error apiError `json:"error"`
		}
		if json.Unmarshal(raw, &env) != nil || env.Error.Code == "" {
			return &apiError{Status: resp.StatusCode, Code: "http_" + fmt.Sprint(resp.StatusCode), Reason: string(bytes.TrimSpace(raw))}
		}
		env.Error.Status = resp.StatusCode
		return &env.Error
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("decoding signerd's answer: %w", err)
	}
	return nil
}
