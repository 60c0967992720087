//go:build !no_tpm

package server_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/signerd/signerd/attestation"
	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/hsm/tpm/swtpmtest"
	"github.com/signerd/signerd/signerd/config"
	"github.com/signerd/signerd/signerd/server"
)

// openTPMDaemon opens (and starts) a daemon whose key backend is the TPM backend on sw,
// reusing dir's state; the daemon opens the backend itself, so it can reopen it.
func openTPMDaemon(t *testing.T, dir string, opts hsm.Options) *testDaemon {
	t.Helper()
	cfg := &config.Config{
		StateDir: filepath.Join(dir, "state"),
		Sockets: config.Sockets{
			Agent: config.Socket{Path: filepath.Join(dir, "agent.sock"), Mode: 0o660},
			Admin: config.Socket{Path: filepath.Join(dir, "admin.sock"), Mode: 0o600},
		},
		HSM:       opts,
		Policy:    filepath.Join(dir, "policy.yaml"),
		Protocol:  config.Protocol{Network: "eip155:84532", EIP712Name: "4mica", EIP712Version: "1", ChainID: 84532},
		Approvals: config.Approvals{MaxWait: 300 * time.Millisecond},
		Operators: []config.Operator{{Name: "alice", UID: uint32(os.Getuid())}},
	}
	cfg.Defaults()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	d, err := server.Open(context.Background(), server.Options{Config: cfg, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	d.Start()
	td := &testDaemon{Daemon: d, cfg: cfg, dir: dir, agent: newClient(cfg.Sockets.Agent.Path), admin: newClient(cfg.Sockets.Admin.Path)}
	td.wallet = strings.ToLower(d.Wallets()[0])
	return td
}

func (d *testDaemon) stop(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

// signDirect signs a digest with the daemon's current backend, bypassing the kill switch.
func signDirect(t *testing.T, d *testDaemon) error {
	t.Helper()
	b := d.BackendForTest()
	keys, err := b.List(context.Background())
	if err != nil || len(keys) == 0 {
		t.Fatalf("list: %v %v", keys, err)
	}
	s, err := b.Signer(context.Background(), keys[0].URI)
	if err != nil {
		return err
	}
	_, err = s.SignDigest(context.Background(), [32]byte{1, 2, 3})
	return err
}

// TestKillSwitchZeroizesTPMKeys: with the TPM backend (unsealed keys in locked memory) on a
// real swtpm, engaging the kill switch zeroizes the keys (the backend itself refuses to sign,
// readiness says why), resuming reopens the backend (keys unsealed again) and the daemon signs
// again; a daemon restarted while engaged zeroizes at start and resumes the same way.
func TestKillSwitchZeroizesTPMKeys(t *testing.T) {
	sw := swtpmtest.Start(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(mustRead(t, "testdata/policy.yaml")), 0o600); err != nil {
		t.Fatal(err)
	}
	opts := hsm.Options{Type: "tpm", TPM: hsm.TPMOptions{Address: sw.Address(), KeyDir: filepath.Join(dir, "tpm-keys"),
		HealthInterval: 200 * time.Millisecond, CommandTimeout: 10 * time.Second}}
	b, err := hsm.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Generate(context.Background(), hsm.GenerateOptions{Label: "tpm-wallet"}); err != nil {
		t.Fatal(err)
	}
	b.Close()

	d := openTPMDaemon(t, dir, opts)
	d.checkSigned(t, d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(41, 1, 1, nil)}))
	if err := signDirect(t, d); err != nil {
		t.Fatalf("backend signs before the stop: %v", err)
	}

	// Engage: when the call returns, the unsealed keys are zeroed.
	if r := d.admin.do(t, "POST", "/v1/admin/kill-switch", map[string]any{"engaged": true, "reason": "test"}); r.Status != 200 {
		t.Fatalf("engage: %d %s", r.Status, r.Raw)
	}
	zeroized := d.BackendForTest()
	if err := signDirect(t, d); !errors.Is(err, hsm.ErrUnavailable) || !strings.Contains(err.Error(), "zeroized") {
		t.Fatalf("backend signature after engage: %v, want refused (zeroized)", err)
	}
	if r := d.admin.do(t, "GET", "/v1/ready", nil); r.Status != 503 || !strings.Contains(string(r.Raw), "zeroized") {
		t.Fatalf("ready while zeroized: %d %s", r.Status, r.Raw)
	}
	if r := d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(41, 2, 1, nil)}); r.Status != 503 || r.errCode() != "kill_switch_engaged" {
		t.Fatalf("sign while engaged: %d %s", r.Status, r.Raw)
	}

	// Resume: the backend is reopened (keys unsealed again) and the daemon signs.
	if r := d.admin.do(t, "POST", "/v1/admin/kill-switch", map[string]any{"engaged": false}); r.Status != 200 {
		t.Fatalf("resume: %d %s", r.Status, r.Raw)
	}
	if d.BackendForTest() == zeroized {
		t.Fatal("resume kept the zeroized backend")
	}
	if err := signDirect(t, d); err != nil {
		t.Fatalf("backend signature after resume: %v", err)
	}
	if r := d.admin.do(t, "GET", "/v1/ready", nil); r.Status != 200 {
		t.Fatalf("ready after resume: %d %s", r.Status, r.Raw)
	}
	d.checkSigned(t, d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(41, 3, 1, nil)}))

	// Restart while engaged: keys unsealed at open are zeroized at once; resume signs again.
	if r := d.admin.do(t, "POST", "/v1/admin/kill-switch", map[string]any{"engaged": true, "reason": "before restart"}); r.Status != 200 {
		t.Fatalf("engage: %d %s", r.Status, r.Raw)
	}
	d.stop(t)
	d = openTPMDaemon(t, dir, opts)
	defer d.stop(t)
	if err := signDirect(t, d); !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("backend signature after a restart while engaged: %v, want refused", err)
	}
	if r := d.admin.do(t, "POST", "/v1/admin/kill-switch", map[string]any{"engaged": false}); r.Status != 200 {
		t.Fatalf("resume after restart: %d %s", r.Status, r.Raw)
	}
	d.checkSigned(t, d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(41, 4, 1, nil)}))

	// Resume refused while the backend cannot be reopened: the switch stays engaged.
	if r := d.admin.do(t, "POST", "/v1/admin/kill-switch", map[string]any{"engaged": true, "reason": "tpm going away"}); r.Status != 200 {
		t.Fatalf("engage: %d %s", r.Status, r.Raw)
	}
	sw.Stop()
	if r := d.admin.do(t, "POST", "/v1/admin/kill-switch", map[string]any{"engaged": false}); r.Status != 503 || r.errCode() != "backend_unavailable" {
		t.Fatalf("resume without a TPM: %d %s", r.Status, r.Raw)
	}
	if st := d.KillSwitch().Status(); !st.Engaged {
		t.Fatal("the switch was released although the backend could not be reopened")
	}
	sw.Restart()
	if r := d.admin.do(t, "POST", "/v1/admin/kill-switch", map[string]any{"engaged": false}); r.Status != 200 {
		t.Fatalf("resume with the TPM back: %d %s", r.Status, r.Raw)
	}
	d.checkSigned(t, d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(41, 5, 1, nil)}))
}

// TestKeyAttestRoute: POST /v1/admin/keys/attest returns a TPM quote document that
// attestation.Verify accepts for the nonce and binds to the wallet; it is audited; bad input is
// 400 and a PKCS#11 backend answers 422 not_supported.
func TestKeyAttestRoute(t *testing.T) {
	sw := swtpmtest.Start(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(mustRead(t, "testdata/policy.yaml")), 0o600); err != nil {
		t.Fatal(err)
	}
	opts := hsm.Options{Type: "tpm", TPM: hsm.TPMOptions{Address: sw.Address(), KeyDir: filepath.Join(dir, "tpm-keys"), CommandTimeout: 10 * time.Second}}
	b, err := hsm.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	ki, err := b.Generate(context.Background(), hsm.GenerateOptions{Label: "tpm-wallet"})
	b.Close()
	if err != nil {
		t.Fatal(err)
	}
	d := openTPMDaemon(t, dir, opts)
	defer d.stop(t)

	nonce := []byte("0123456789abcdef")
	r := d.admin.do(t, "POST", "/v1/admin/keys/attest", map[string]any{"uri": ki.URI, "nonce": hex.EncodeToString(nonce)})
	if r.Status != 200 {
		t.Fatalf("attest: %d %s", r.Status, r.Raw)
	}
	doc, err := base64.StdEncoding.DecodeString(r.str("document"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := attestation.Verify(doc, nonce, nil)
	if err != nil || res.WalletAddress != ki.Address {
		t.Fatalf("verify: %v", err)
	}
	for _, bad := range []map[string]any{{"uri": ki.URI, "nonce": "0102"}, {"uri": ki.URI}, {"nonce": hex.EncodeToString(nonce)}} {
		if r := d.admin.do(t, "POST", "/v1/admin/keys/attest", bad); r.Status != 400 {
			t.Errorf("%v: %d %s", bad, r.Status, r.Raw)
		}
	}
	if r := d.admin.do(t, "POST", "/v1/admin/keys/attest", map[string]any{"uri": "tpm:id=nope", "nonce": hex.EncodeToString(nonce)}); r.Status != 404 {
		t.Errorf("unknown key: %d %s", r.Status, r.Raw)
	}
	var buf bytes.Buffer
	if err := d.Ledger().ExportAudit(&buf, 0); err != nil || !strings.Contains(buf.String(), `"attest"`) {
		t.Fatalf("attestation not audited: %v", err)
	}

	p := startDaemon(t, nil)
	if r := p.admin.do(t, "POST", "/v1/admin/keys/attest", map[string]any{"uri": "pkcs11:id=%01", "nonce": hex.EncodeToString(nonce)}); r.Status != 422 || r.errCode() != "not_supported" {
		t.Errorf("pkcs11 attest: %d %s", r.Status, r.Raw)
	}
}
