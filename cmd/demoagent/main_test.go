package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/hsm/pkcs11/softhsmtest"
	"github.com/signerd/signerd/signerd/config"
	"github.com/signerd/signerd/signerd/server"
)

var env *softhsmtest.Env

func TestMain(m *testing.M) {
	var err error
	if env, err = softhsmtest.Setup("demo"); err != nil {
		fmt.Fprintln(os.Stderr, "softhsm setup:", err) // never skip: CI must fail
		os.Exit(1)
	}
	code := m.Run()
	env.Cleanup()
	os.Exit(code)
}

// TestDemoAgent runs the demo agent against a daemon configured like `signerd dev` (dev policy,
// Base Sepolia, domain 4mica/1) on a real SoftHSM2 token.
func TestDemoAgent(t *testing.T) {
	dir := t.TempDir()
	cfg, err := config.Dev(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg.HSM = env.Options("demo")
	if err := os.WriteFile(cfg.Policy, config.DevPolicy, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	b, err := hsm.Open(ctx, cfg.HSM)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Generate(ctx, hsm.GenerateOptions{Label: "dev-wallet"}); err != nil {
		t.Fatal(err)
	}
	d, err := server.Open(ctx, server.Options{Config: cfg, Backend: b, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	d.Start()
	defer func() {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		d.Shutdown(sctx)
	}()
	var out bytes.Buffer
	if err := run(filepath.Join(dir, "agent.sock"), 84532, "4mica", "1", &out); err != nil {
		t.Fatalf("demo agent: %v\n%s", err, out.String())
	}
	for _, want := range []string{"X-PAYMENT: ey", "Core-ready PaymentGuaranteeRequest body", `"scheme": "eip712"`, "recovers to " + strings.ToLower(d.Wallets()[0])} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	// The wrong domain makes the independent verification fail: the check can fail.
	if err := run(filepath.Join(dir, "agent.sock"), 84532, "4Mica", "1", io.Discard); err == nil {
		t.Error("verification under another EIP-712 domain name passed")
	}
}
