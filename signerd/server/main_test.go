package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/hsm/pkcs11/softhsmtest"
	"github.com/signerd/signerd/signerd/config"
	"github.com/signerd/signerd/signerd/fourmica"
	"github.com/signerd/signerd/signerd/server"
)

var env *softhsmtest.Env

// TestMain sets up one SoftHSM2 token for the whole binary, or, when re-executed as a client
// under another uid (see TestUnknownCaller), performs one request and exits.
func TestMain(m *testing.M) {
	if sock := os.Getenv("SIGNERD_TEST_CLIENT_SOCKET"); sock != "" {
		os.Exit(clientMain(sock, os.Getenv("SIGNERD_TEST_CLIENT_PATH")))
	}
	var err error
	env, err = softhsmtest.Setup("daemon", "keys")
	if err != nil {
		fmt.Fprintln(os.Stderr, "softhsm setup:", err) // never skip: CI must fail
		os.Exit(1)
	}
	code := m.Run()
	env.Cleanup()
	os.Exit(code)
}

// clientMain GETs path on the socket and prints "<status> <body>".
func clientMain(sock, path string) int {
	c := newClient(sock)
	resp, err := c.http.Get("http://signerd" + path)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	fmt.Printf("%d %s", resp.StatusCode, b)
	return 0
}

// testDaemon is a daemon started in-process on a real SoftHSM2 token, with real sockets.
type testDaemon struct {
	*server.Daemon
	cfg    *config.Config
	dir    string
	agent  *client
	admin  *client
	wallet string
}

var walletOnce sync.Map // token label → *sync.Once: one wallet generated per test token

var cborAnswers, _ = cbor.DecOptions{DefaultMapType: reflect.TypeOf(map[string]any(nil))}.DecMode()

// startDaemon starts a daemon in a temp dir; mutate may adjust the config first.
func startDaemon(t testing.TB, mutate func(*config.Config)) *testDaemon {
	t.Helper()
	pol, err := os.ReadFile("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return launchDaemon(t, pol, 300*time.Millisecond, mutate, nil)
}

// launchDaemon starts a daemon in a temp dir with the given policy text and approvals wait
// cap, on the shared test token (a wallet is generated there once). mutateCfg (may be nil)
// adjusts the config before the backend is opened; mutateOpts (may be nil) adjusts the server
// options just before server.Open.
func launchDaemon(t testing.TB, policy []byte, maxWait time.Duration, mutateCfg func(*config.Config), mutateOpts func(*server.Options)) *testDaemon {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), policy, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{
		StateDir: filepath.Join(dir, "state"),
		Sockets: config.Sockets{
			Agent: config.Socket{Path: filepath.Join(dir, "agent.sock"), Mode: 0o660},
			Admin: config.Socket{Path: filepath.Join(dir, "admin.sock"), Mode: 0o600},
		},
		HSM:       env.Options("daemon"),
		Policy:    filepath.Join(dir, "policy.yaml"),
		Protocol:  config.Protocol{Network: "eip155:84532", EIP712Name: "4mica", EIP712Version: "1", ChainID: 84532},
		Approvals: config.Approvals{MaxWait: maxWait},
		Operators: []config.Operator{{Name: "alice", UID: uint32(os.Getuid()), Groups: []string{"finance"}}},
	}
	cfg.Defaults()
	if mutateCfg != nil {
		mutateCfg(cfg)
	}
	ctx := context.Background()
	b, err := hsm.Open(ctx, cfg.HSM)
	if err != nil {
		t.Fatal(err)
	}
	once, _ := walletOnce.LoadOrStore(cfg.HSM.PKCS11.TokenLabel, new(sync.Once))
	once.(*sync.Once).Do(func() {
		keys, err := b.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if !k.Retired {
				return
			}
		}
		if _, err := b.Generate(ctx, hsm.GenerateOptions{Label: "test-wallet"}); err != nil {
			t.Fatal(err)
		}
	})
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	opts := server.Options{Config: cfg, Backend: b, Logger: log}
	if mutateOpts != nil {
		mutateOpts(&opts)
	}
	d, err := server.Open(ctx, opts)
	if err != nil {
		b.Close()
		t.Fatal(err)
	}
	d.Start()
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := d.Shutdown(sctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	td := &testDaemon{Daemon: d, cfg: cfg, dir: dir, agent: newClient(cfg.Sockets.Agent.Path), admin: newClient(cfg.Sockets.Admin.Path)}
	td.wallet = strings.ToLower(d.Wallets()[0])
	return td
}

// client speaks HTTP/1.1 over a Unix socket with a persistent connection.
type client struct {
	http *http.Client
}

func newClient(sock string) *client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		MaxIdleConnsPerHost: 64,
	}
	return &client{http: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// response is a decoded answer.
type response struct {
	Status int
	Header http.Header
	Raw    []byte
	Body   map[string]any
}

func (r *response) errCode() string {
	e, _ := r.Body["error"].(map[string]any)
	s, _ := e["code"].(string)
	return s
}

func (r *response) errField(name string) string {
	e, _ := r.Body["error"].(map[string]any)
	s, _ := e[name].(string)
	return s
}

func (r *response) str(name string) string {
	s, _ := r.Body[name].(string)
	return s
}

// do sends body (a Go value encoded as JSON, or raw bytes with contentType) and decodes JSON.
func (c *client) do(t *testing.T, method, path string, body any) *response {
	t.Helper()
	var rd io.Reader
	ct := ""
	switch b := body.(type) {
	case nil:
	case []byte:
		rd, ct = bytes.NewReader(b), "application/json"
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd, ct = bytes.NewReader(j), "application/json"
	}
	return c.raw(t, method, path, ct, rd)
}

func (c *client) raw(t *testing.T, method, path, ct string, body io.Reader) *response {
	t.Helper()
	req, err := http.NewRequest(method, "http://signerd"+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := &response{Status: resp.StatusCode, Header: resp.Header, Raw: raw}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/cbor") {
		var v map[string]any
		if err := cborAnswers.Unmarshal(raw, &v); err != nil {
			t.Fatalf("CBOR answer does not decode: %v", err)
		}
		out.Body = v
	} else if len(raw) > 0 && raw[0] == '{' {
		if err := json.Unmarshal(raw, &out.Body); err != nil {
			t.Fatalf("JSON answer does not decode: %v: %s", err, raw)
		}
	}
	return out
}

// claims builds V1 wire claims for the test wallet.
func (d *testDaemon) claims(tab, req, amount uint64, mutate func(map[string]any)) map[string]any {
	c := map[string]any{
		"version": "v1", "user_address": d.wallet, "recipient_address": "0x1234567890123456789012345678901234567890",
		"tab_id": "0x" + strconv.FormatUint(tab, 16), "req_id": strconv.FormatUint(req, 10), "amount": strconv.FormatUint(amount, 10),
		"asset_address": "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "timestamp": time.Now().Unix(),
	}
	if mutate != nil {
		mutate(c)
	}
	return c
}

var testDomain = func() *fourmica.Domain {
	d, err := fourmica.NewDomain("4mica", "1", 84532)
	if err != nil {
		panic(err)
	}
	return d
}()

// checkSigned verifies a 200 guarantee answer: the request body decodes, its digest is the one
// reported, and the signature recovers to the wallet under Core's rules.
func (d *testDaemon) checkSigned(t *testing.T, r *response) *fourmica.Request {
	t.Helper()
	if r.Status != 200 {
		t.Fatalf("status %d: %s", r.Status, r.Raw)
	}
	reqJSON, err := json.Marshal(r.Body["request"])
	if err != nil {
		t.Fatal(err)
	}
	req, err := fourmica.DecodeRequest(reqJSON)
	if err != nil {
		t.Fatalf("request body: %v", err)
	}
	digest, err := testDomain.VerifyRequest(req)
	if err != nil {
		t.Fatalf("signature does not verify: %v", err)
	}
	if digest.Hex() != r.str("digest") {
		t.Fatalf("digest %s, answer says %s", digest.Hex(), r.str("digest"))
	}
	if req.Signature.Hex() != r.str("signature") {
		t.Fatalf("signature field differs from the request body's")
	}
	if got := req.Claims.Payment().User.Hex(); got != d.wallet {
		t.Fatalf("signed for %s, want %s", got, d.wallet)
	}
	return req
}

// testWriter sends daemon logs to the test log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
