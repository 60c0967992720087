//go:build !no_tpm

package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
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
	// `signerctl attest verify` checks the same documents without Go: the CBOR file, and the
	// base64 `keys attest` printed; a flipped byte or another nonce fails with exit 1.
	out, errs, rc = ctl("attest", "verify", "--doc", file, "--nonce", hex.EncodeToString(nonce))
	if rc != 0 || !strings.Contains(out, "attestation OK") || !strings.Contains(out, addr.Hex()) || !strings.Contains(out, "matches --nonce") || !strings.Contains(out, "sealing     none") { // this backend seals to no PCRs
		t.Fatalf("attest verify --doc file: rc=%d\n%s%s", rc, out, errs)
	}
	b64 := filepath.Join(dir, "att.b64")
	if err := os.WriteFile(b64, []byte(base64.StdEncoding.EncodeToString(doc)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errs, rc := ctl("attest", "verify", "--doc", b64, "--nonce", hex.EncodeToString(nonce)); rc != 0 || !strings.Contains(out, addr.Hex()) {
		t.Fatalf("attest verify base64: rc=%d\n%s%s", rc, out, errs)
	}
	tampered := bytes.Clone(raw)
	tampered[len(tampered)-10] ^= 0x80 // inside the signature
	tamperedFile := filepath.Join(dir, "tampered.cbor")
	if err := os.WriteFile(tamperedFile, tampered, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errs, rc := ctl("attest", "verify", "--doc", tamperedFile, "--nonce", hex.EncodeToString(nonce)); rc != exitRefused || !strings.Contains(out, "NOT verified") {
		t.Fatalf("attest verify tampered: rc=%d\n%s%s", rc, out, errs)
	}
	if out, errs, rc := ctl("attest", "verify", "--doc", file, "--nonce", strings.Repeat("5a", 16)); rc != exitRefused || !strings.Contains(out, "nonce does not match") {
		t.Fatalf("attest verify other nonce: rc=%d\n%s%s", rc, out, errs)
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

// goldenNonce is the nonce of attestation/testdata/quote.cbor (quoted once by swtpm).
const goldenNonce = "golden nonce 0123456789abcdef"

func goldenDoc(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "attestation", "testdata", "quote.cbor"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeTemp(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAttestVerifyGolden: `attest verify` on the golden document: what it proves (wallet,
// sealing PCRs, nonce, AK), the nonce and AK pins, base64 and stdin input, and that the wrong
// nonce, another AK, and a bit flipped in any byte of the document each fail with exit 1.
func TestAttestVerifyGolden(t *testing.T) {
	doc := goldenDoc(t)
	res, err := attestation.Verify(doc, []byte(goldenNonce), nil)
	if err != nil {
		t.Fatal(err)
	}
	wallet := "0x" + hex.EncodeToString(res.WalletAddress[:])
	file := writeTemp(t, "quote.cbor", doc)
	nonceHex := "0x" + hex.EncodeToString([]byte(goldenNonce))

	out, errs, rc := ctl("attest", "verify", "--doc", file, "--nonce", nonceHex)
	for _, want := range []string{"attestation OK", "matches --nonce", "PCRs [16]", fmt.Sprintf("policy 0x%x", res.SealPolicy), "NOT pinned", "(sealing)", fmt.Sprintf("16  0x%x", res.PCRs[16])} {
		if rc != 0 || !strings.Contains(out, want) {
			t.Fatalf("verify lacks %q: rc=%d\n%s%s", want, rc, out, errs)
		}
	}
	if !strings.Contains(strings.ToLower(out), wallet) {
		t.Fatalf("verify does not name wallet %s:\n%s", wallet, out)
	}
	// Without --nonce: verified, but freshness is said not to be proven.
	if out, _, rc := ctl("attest", "verify", "--doc", file); rc != 0 || !strings.Contains(out, "NOT checked") {
		t.Fatalf("no nonce: rc=%d %s", rc, out)
	}
	// Base64 (what `keys attest` prints) on stdin.
	if out, errs, rc := ctlIn(base64.StdEncoding.EncodeToString(doc)+"\n", "attest", "verify", "--doc", "-", "--nonce", nonceHex); rc != 0 || !strings.Contains(out, "attestation OK") {
		t.Fatalf("base64 on stdin: rc=%d %s %s", rc, out, errs)
	}
	// --json.
	out, _, rc = ctl("attest", "verify", "--doc", file, "--nonce", nonceHex, "--json")
	var j struct {
		OK           bool              `json:"ok"`
		Wallet       string            `json:"wallet_address"`
		SealPCRs     []int             `json:"seal_pcrs"`
		PCRs         map[string]string `json:"pcrs"`
		NonceChecked bool              `json:"nonce_checked"`
		AK           struct {
			Name   string `json:"name"`
			PEM    string `json:"public_key_pem"`
			Pinned bool   `json:"pinned"`
		} `json:"ak"`
	}
	if rc != 0 || json.Unmarshal([]byte(out), &j) != nil || !j.OK || !strings.EqualFold(j.Wallet, wallet) || len(j.SealPCRs) != 1 || j.SealPCRs[0] != 16 ||
		len(j.PCRs) != 9 || !j.NonceChecked || j.AK.Pinned || !strings.HasPrefix(j.AK.Name, "0x000b") || !strings.Contains(j.AK.PEM, "BEGIN PUBLIC KEY") {
		t.Fatalf("--json: rc=%d %s", rc, out)
	}

	// Pinning: --save-ak, then --ak-pub with that file and --ak-name; another AK fails.
	akFile := filepath.Join(t.TempDir(), "ak.pem")
	if out, errs, rc := ctl("attest", "verify", "--doc", file, "--nonce", nonceHex, "--save-ak", akFile); rc != 0 || !strings.Contains(out, akFile) {
		t.Fatalf("--save-ak: rc=%d %s %s", rc, out, errs)
	}
	if _, errs, rc := ctl("attest", "verify", "--doc", file, "--save-ak", akFile); rc != exitRefused || !strings.Contains(errs, "exists") {
		t.Fatalf("--save-ak over an existing file: rc=%d %s", rc, errs)
	}
	if out, _, rc := ctl("attest", "verify", "--doc", file, "--nonce", nonceHex, "--ak-pub", akFile); rc != 0 || !strings.Contains(out, "matches the pinned key (--ak-pub") {
		t.Fatalf("--ak-pub: rc=%d %s", rc, out)
	}
	if out, _, rc := ctl("attest", "verify", "--doc", file, "--nonce", nonceHex, "--ak-name", j.AK.Name); rc != 0 || !strings.Contains(out, "matches the pinned key (--ak-name") {
		t.Fatalf("--ak-name: rc=%d %s", rc, out)
	}
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&other.PublicKey)
	otherFile := writeTemp(t, "other.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	otherName := "0x000b" + strings.Repeat("ab", 32)

	flipped := bytes.Clone(doc)
	flipped[len(flipped)/2] ^= 0x01
	fails := []struct {
		name string
		args []string
		want string
	}{
		{"wrong nonce", []string{"--doc", file, "--nonce", "0x" + strings.Repeat("5a", 16)}, "nonce does not match"},
		{"other pinned AK", []string{"--doc", file, "--nonce", nonceHex, "--ak-pub", otherFile}, "not the pinned attestation key"},
		{"other AK name", []string{"--doc", file, "--nonce", nonceHex, "--ak-name", otherName}, "not the pinned --ak-name"},
		{"flipped byte", []string{"--doc", writeTemp(t, "flipped.cbor", flipped), "--nonce", nonceHex}, "NOT verified"},
		{"truncated", []string{"--doc", writeTemp(t, "short.cbor", doc[:len(doc)-1])}, "malformed document"},
		{"not a document", []string{"--doc", writeTemp(t, "text", []byte("hello world\n"))}, "NOT verified"},
		{"empty", []string{"--doc", writeTemp(t, "empty", nil)}, "empty"},
		{"missing file", []string{"--doc", filepath.Join(t.TempDir(), "none")}, "no such file"},
	}
	for _, tc := range fails {
		out, errs, rc := ctl(append([]string{"attest", "verify"}, tc.args...)...)
		if rc != exitRefused || !strings.Contains(out, tc.want) || strings.Contains(out, "attestation OK") {
			t.Errorf("%s: rc=%d, want 1 and %q\n%s%s", tc.name, rc, tc.want, out, errs)
		}
	}
	out, _, rc = ctl("attest", "verify", "--doc", file, "--nonce", "0x"+strings.Repeat("5a", 16), "--json")
	if rc != exitRefused || !strings.Contains(out, `"ok": false`) || !strings.Contains(out, "nonce does not match") {
		t.Errorf("failure --json: rc=%d %s", rc, out)
	}
	// A bit flipped in any byte of the document fails (never verifies, never crashes).
	for i := range doc {
		bad := bytes.Clone(doc)
		bad[i] ^= 1 << (i % 8)
		if out, _, rc := ctlIn(base64.StdEncoding.EncodeToString(bad), "attest", "verify", "--doc", "-", "--nonce", nonceHex); rc != exitRefused || !strings.Contains(out, "NOT verified") {
			t.Fatalf("bit flipped in byte %d: rc=%d %s", i, rc, out)
		}
	}

	for _, bad := range [][]string{
		{"attest"},
		{"attest", "check", "--doc", file},
		{"attest", "verify"},
		{"attest", "verify", "--doc", file, "--nonce", "0x0102"},
		{"attest", "verify", "--doc", file, "--ak-pub", akFile, "--ak-name", j.AK.Name},
		{"attest", "verify", "--doc", file, "--ak-name", "0x1234"},
		{"attest", "verify", "--doc", file, "--ak-pub", file},
		{"attest", "verify", "--doc", file, "extra"},
	} {
		if out, errs, rc := ctl(bad...); rc != exitUsage || out != "" {
			t.Errorf("%v: rc=%d, want 2\n%s%s", bad, rc, out, errs)
		}
	}
}
