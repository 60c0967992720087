//go:build !no_tpm

package main

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/signerd/signerd/attestation"
	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/hsm/tpm/swtpmtest"
)

// TestKeysTPMStateAndAttest, offline on a real swtpm: `keys list` shows each TPM key's state
// (unsealed in unseal-once mode, sealed in per-signature mode) next to the extractable fact,
// and `keys attest` prints (or writes) a CBOR attestation document that attestation.Verify
// accepts for the nonce and binds to the key's wallet address.
func TestKeysTPMStateAndAttest(t *testing.T) {
	sw := swtpmtest.Start(t)
	dir := t.TempDir()
	backend := func(name string, perSig bool) string {
		p := filepath.Join(dir, name+".yaml")
		y := fmt.Sprintf("type: tpm\ntpm:\n  address: %q\n  key_dir: %q\n  unseal_per_signature: %v\n", sw.Address(), filepath.Join(dir, "keys"), perSig)
		if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	once, perSig := backend("once", false), backend("persig", true)

	var gen struct{ Key hsm.KeyInfo }
	out, errs, rc := ctl("keys", "generate", "--backend", once, "--label", "tpm-wallet", "--json")
	if rc != 0 || json.Unmarshal([]byte(out), &gen) != nil || gen.Key.URI == "" {
		t.Fatalf("generate rc=%d %s %s", rc, out, errs)
	}
	uri, addr := gen.Key.URI, gen.Key.Address

	for _, tc := range []struct{ backend, state string }{{once, "state=unsealed"}, {perSig, "state=sealed"}} {
		out, errs, rc = ctl("keys", "list", "--backend", tc.backend)
		if rc != 0 || !strings.Contains(out, "EXTRACTABLE,"+tc.state) || !strings.Contains(out, uri) {
			t.Fatalf("list (%s) rc=%d:\n%s%s", filepath.Base(tc.backend), rc, out, errs)
		}
	}

	nonce := bytes.Repeat([]byte{0xa5}, 16)
	out, errs, rc = ctl("keys", "attest", "--backend", once, "--uri", uri, "--nonce", "0x"+hex.EncodeToString(nonce))
	if rc != 0 {
		t.Fatalf("attest rc=%d %s", rc, errs)
	}
	doc, err := base64.StdEncoding.DecodeString(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("attest output is not base64: %v\n%s", err, out)
	}
	res, err := attestation.Verify(doc, nonce, nil)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if res.WalletAddress != addr {
		t.Fatalf("attested wallet %x, want %s", res.WalletAddress, addr.Hex())
	}
	if _, err := attestation.Verify(doc, bytes.Repeat([]byte{0x5a}, 16), nil); err == nil {
		t.Fatal("the document verifies under another nonce")
	}

	file := filepath.Join(dir, "att.cbor")
	out, errs, rc = ctl("keys", "attest", "--backend", once, "--uri", uri, "--nonce", hex.EncodeToString(nonce), "--out", file)
	if rc != 0 || !strings.Contains(out, file) {
		t.Fatalf("attest --out rc=%d %s %s", rc, out, errs)
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := attestation.Verify(raw, nonce, nil); err != nil || res.WalletAddress != addr {
		t.Fatalf("verify --out file: %v", err)
	}

	for _, bad := range [][]string{
		{"keys", "attest", "--backend", once, "--uri", uri},                                     // no nonce
		{"keys", "attest", "--backend", once, "--nonce", hex.EncodeToString(nonce)},             // no uri
		{"keys", "attest", "--backend", once, "--uri", uri, "--nonce", "0x0102"},                // too short
		{"keys", "attest", "--backend", once, "--uri", uri, "--nonce", "zz" + "00000000000000"}, // not hex
	} {
		if _, errs, rc := ctl(bad...); rc != exitUsage {
			t.Errorf("%v: rc=%d %s", bad, rc, errs)
		}
	}
	if _, errs, rc := ctl("keys", "attest", "--backend", once, "--uri", "tpm:id=nope", "--nonce", hex.EncodeToString(nonce)); rc != exitRefused {
		t.Errorf("unknown key: rc=%d %s", rc, errs)
	}
}

// TestKeysAttestViaDaemon: with --socket, attest asks the daemon's admin API and prints the
// document it returns.
func TestKeysAttestViaDaemon(t *testing.T) {
	f := newFake(t, map[string]func(w http.ResponseWriter, body string){
		"POST /v1/admin/keys/attest": reply(200, `{"uri":"tpm:id=k1","document":"AQID"}`),
	})
	out, errs, rc := ctl("keys", "attest", "--socket", f.sock, "--uri", "tpm:id=k1", "--nonce", "0x0011223344556677")
	if rc != 0 || strings.TrimSpace(out) != "AQID" {
		t.Fatalf("rc=%d %q %s", rc, out, errs)
	}
	if l := f.last(); !strings.Contains(l, `"nonce":"0011223344556677"`) || !strings.Contains(l, `"uri":"tpm:id=k1"`) {
		t.Fatalf("request: %s", l)
	}
}
