//go:build !no_pkcs11

package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/crypto"

	"github.com/signerd/signerd/hsm"
)

func runCtl(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	rc := run(args, strings.NewReader(""), &out, &errb)
	return out.String(), errb.String(), rc
}

// TestKeysOffline walks the whole offline flow on a real SoftHSM2 token: init-softhsm,
// generate, import (keystore v3 and raw), list, sign, retire. (One SoftHSM2 configuration
// per process, so this is a single sequential test.)
func TestKeysOffline(t *testing.T) {
	t.Setenv("SIGNERD_ADMIN_SOCKET", "") // "keys list" with no backend must be a usage error
	dir := t.TempDir()
	out, errs, rc := runCtl(t, "keys", "init-softhsm", "--dir", dir, "--label", "ctl")
	if rc != 0 {
		t.Fatalf("init-softhsm rc=%d %s", rc, errs)
	}
	backend := filepath.Join(dir, "ctl.yaml")
	if !strings.Contains(out, "export SOFTHSM2_CONF="+filepath.Join(dir, "softhsm2.conf")) || !strings.Contains(out, backend) {
		t.Fatalf("init-softhsm output:\n%s", out)
	}
	fi, err := os.Stat(filepath.Join(dir, "ctl.pin"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("PIN file: %v %v", err, fi)
	}
	if _, errs, rc := runCtl(t, "keys", "init-softhsm", "--dir", dir, "--label", "ctl"); rc == 0 || !strings.Contains(errs, "already exists") {
		t.Fatalf("second init of the same label: rc=%d %s", rc, errs)
	}

	var gen struct{ Key hsm.KeyInfo }
	out, errs, rc = runCtl(t, "keys", "generate", "--backend", backend, "--label", "agent-1", "--json")
	if rc != 0 || json.Unmarshal([]byte(out), &gen) != nil {
		t.Fatalf("generate rc=%d %s %s", rc, out, errs)
	}
	if gen.Key.Origin != hsm.OriginGenerated || !gen.Key.NonExtractable {
		t.Fatalf("generated: %+v", gen.Key)
	}

	// keystore v3 (the Web3 Secret Storage pbkdf2 test vector)
	var vec struct {
		Password   string `json:"password"`
		PrivateKey string `json:"private_key"`
	}
	raw, _ := os.ReadFile("../../hsm/testdata/keystore-v3-vectors.json")
	json.Unmarshal(raw, &vec)
	pk, err := crypto.HexToECDSA(vec.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	wantAddr := crypto.PubkeyToAddress(pk.PublicKey)
	passFile := filepath.Join(dir, "pass")
	os.WriteFile(passFile, []byte(vec.Password+"\n"), 0o600)
	var imp struct{ Key hsm.KeyInfo }
	out, errs, rc = runCtl(t, "keys", "import", "--backend", backend, "--label", "migrated", "--keystore", "../../hsm/testdata/keystore-v3-pbkdf2.json", "--passphrase-file", passFile, "--json")
	if rc != 0 || json.Unmarshal([]byte(out), &imp) != nil || imp.Key.Address != wantAddr || imp.Key.Origin != hsm.OriginImported {
		t.Fatalf("keystore import rc=%d %s %s (want %s)", rc, out, errs, wantAddr.Hex())
	}

	// raw key file: refused at 0644, accepted at 0600
	k2, _ := crypto.GenerateKey()
	keyFile := filepath.Join(dir, "raw.key")
	os.WriteFile(keyFile, []byte("0x"+hex.EncodeToString(crypto.FromECDSA(k2))+"\n"), 0o644)
	os.Chmod(keyFile, 0o644)
	if _, errs, rc := runCtl(t, "keys", "import", "--backend", backend, "--label", "raw", "--key-file", keyFile); rc != exitUsage || !strings.Contains(errs, "mode 0644") {
		t.Fatalf("0644 key file: rc=%d %s", rc, errs)
	}
	os.Chmod(keyFile, 0o600)
	out, errs, rc = runCtl(t, "keys", "import", "--backend", backend, "--label", "raw", "--key-file", keyFile)
	if rc != 0 || !strings.Contains(out, crypto.PubkeyToAddress(k2.PublicKey).Hex()) {
		t.Fatalf("raw import rc=%d %s %s", rc, out, errs)
	}

	// list (table and JSON), with flags instead of --backend
	out, errs, rc = runCtl(t, "keys", "list", "--token", "ctl", "--pin-file", filepath.Join(dir, "ctl.pin"))
	if rc != 0 || strings.Count(out, "pkcs11:token=ctl;") != 3 || !strings.Contains(out, "generated,non-extractable") {
		t.Fatalf("list rc=%d\n%s%s", rc, out, errs)
	}

	// sign: the signature recovers to the key's address
	digest := crypto.Keccak256([]byte("hello"))
	var sg struct {
		Address   common.Address `json:"address"`
		Signature string         `json:"signature"`
	}
	out, errs, rc = runCtl(t, "keys", "sign", "--backend", backend, "--uri", gen.Key.URI, "--digest", "0x"+hex.EncodeToString(digest), "--json")
	if rc != 0 || json.Unmarshal([]byte(out), &sg) != nil {
		t.Fatalf("sign rc=%d %s %s", rc, out, errs)
	}
	sig, _ := hex.DecodeString(strings.TrimPrefix(sg.Signature, "0x"))
	var d32 [32]byte
	var s65 [65]byte
	copy(d32[:], digest)
	copy(s65[:], sig)
	if len(sig) != 65 || hsm.VerifyEth(d32, s65, gen.Key.Address) != nil || sg.Address != gen.Key.Address {
		t.Fatalf("signature %s does not verify for %s", sg.Signature, gen.Key.Address.Hex())
	}

	// retire (URI as a positional argument), then signing is refused
	out, errs, rc = runCtl(t, "keys", "retire", "--backend", backend, gen.Key.URI)
	if rc != 0 || !strings.Contains(out, "RETIRED") {
		t.Fatalf("retire rc=%d %s %s", rc, out, errs)
	}
	if _, errs, rc := runCtl(t, "keys", "sign", "--backend", backend, "--uri", gen.Key.URI, "--digest", "0x"+hex.EncodeToString(digest)); rc != exitRefused || !strings.Contains(errs, "retired") {
		t.Fatalf("sign with a retired key: rc=%d %s", rc, errs)
	}

	// usage errors
	for _, args := range [][]string{
		{"keys"}, {"keys", "nope"}, {"keys", "generate", "--backend", backend},
		{"keys", "sign", "--backend", backend, "--uri", gen.Key.URI, "--digest", "0x12"},
		{"keys", "import", "--backend", backend, "--label", "x"},
		{"keys", "list"},
	} {
		if _, _, rc := runCtl(t, args...); rc != exitUsage {
			t.Errorf("%q: rc=%d, want %d", args, rc, exitUsage)
		}
	}
	if _, errs, rc := runCtl(t, "keys", "list", "--token", "no-such-token", "--pin-file", filepath.Join(dir, "ctl.pin")); rc != exitRefused || !strings.Contains(errs, "token not found") {
		t.Errorf("missing token: rc=%d %s", rc, errs)
	}
}

// TestKeysViaDaemon checks the admin-API contract the daemon implements, against a stand-in
// server on a real Unix socket.
func TestKeysViaDaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "admin.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	key := hsm.KeyInfo{URI: "pkcs11:token=w;id=%01;object=a;type=private", Label: "a", Backend: "pkcs11", Origin: hsm.OriginGenerated, NonExtractable: true}
	var got []string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got = append(got, r.Method+" "+r.URL.Path+" "+strings.TrimSpace(string(body)))
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/v1/admin/keys":
			json.NewEncoder(w).Encode(map[string]any{"keys": []hsm.KeyInfo{key}})
		case "/v1/admin/keys/retire":
			if !strings.Contains(string(body), `"uri":"pkcs11:token=w;id=%01;object=a;type=private"`) {
				w.WriteHeader(404)
				w.Write([]byte(`{"error":{"code":"unknown_key","reason":"no such key"}}`))
				return
			}
			k := key
			k.Retired = true
			json.NewEncoder(w).Encode(map[string]any{"key": k})
		default:
			json.NewEncoder(w).Encode(map[string]any{"key": key})
		}
	})}
	go srv.Serve(ln)
	defer srv.Close()

	dir := t.TempDir()
	keyFile := filepath.Join(dir, "k")
	os.WriteFile(keyFile, []byte(strings.Repeat("11", 32)), 0o600)
	pass := filepath.Join(dir, "p")
	os.WriteFile(pass, []byte("pw\n"), 0o600)
	ks := filepath.Join(dir, "ks.json")
	os.WriteFile(ks, []byte(`{"version":3}`), 0o600)

	steps := []struct {
		args []string
		rc   int
		want string // request the server must have seen
		out  string
	}{
		{[]string{"keys", "list", "--socket", sock}, 0, "GET /v1/admin/keys ", "generated,non-extractable"},
		{[]string{"keys", "generate", "--socket", sock, "--label", "a"}, 0, `POST /v1/admin/keys/generate {"label":"a"}`, "uri:"},
		{[]string{"keys", "import", "--socket", sock, "--label", "a", "--key-file", keyFile}, 0, `POST /v1/admin/keys/import {"label":"a","key_hex":"` + strings.Repeat("11", 32) + `"}`, "address:"},
		{[]string{"keys", "import", "--socket", sock, "--label", "a", "--keystore", ks, "--passphrase-file", pass}, 0, `POST /v1/admin/keys/import {"label":"a","keystore":"{\"version\":3}","passphrase":"pw"}`, "address:"},
		{[]string{"keys", "retire", "--socket", sock, key.URI}, 0, `POST /v1/admin/keys/retire {"uri":"pkcs11:token=w;id=%01;object=a;type=private"}`, "RETIRED"},
		{[]string{"keys", "retire", "--socket", sock, "pkcs11:id=%02"}, exitRefused, `POST /v1/admin/keys/retire {"uri":"pkcs11:id=%02"}`, ""},
	}
	for _, s := range steps {
		got = nil
		out, errs, rc := runCtl(t, s.args...)
		if rc != s.rc || len(got) != 1 || got[0] != s.want || !strings.Contains(out, s.out) {
			t.Fatalf("%q: rc=%d out=%q err=%q requests=%q", s.args, rc, out, errs, got)
		}
	}
	if _, errs, rc := runCtl(t, "keys", "list", "--socket", filepath.Join(dir, "nobody.sock")); rc != exitUnreachable {
		t.Fatalf("unreachable daemon: rc=%d %s", rc, errs)
	}

	// No --socket and no backend: $SIGNERD_ADMIN_SOCKET names the daemon, as for the admin
	// commands; a named backend still wins over it.
	t.Setenv("SIGNERD_ADMIN_SOCKET", sock)
	got = nil
	if out, errs, rc := runCtl(t, "keys", "list"); rc != 0 || len(got) != 1 || got[0] != "GET /v1/admin/keys " || !strings.Contains(out, key.URI) {
		t.Fatalf("keys list via $SIGNERD_ADMIN_SOCKET: rc=%d out=%q err=%q requests=%q", rc, out, errs, got)
	}
	got = nil
	if _, errs, rc := runCtl(t, "keys", "list", "--backend", filepath.Join(dir, "missing.yaml")); rc != exitUsage || len(got) != 0 {
		t.Fatalf("--backend with $SIGNERD_ADMIN_SOCKET set: rc=%d err=%q requests=%q", rc, errs, got)
	}
	if _, errs, rc := runCtl(t, "keys", "sign", "--uri", key.URI, "--digest", "0x"+strings.Repeat("11", 32)); rc != exitUsage || !strings.Contains(errs, "offline only") {
		t.Fatalf("sign with only $SIGNERD_ADMIN_SOCKET: rc=%d err=%q", rc, errs)
	}
}

// TestPrintKeysSorted: the list is sorted by label (then URI) whatever order the backend or
// the daemon answers in (the TPM backend lists by key id), and the facts column has no
// spaces, so the table's columns can be cut with awk.
func TestPrintKeysSorted(t *testing.T) {
	keys := []hsm.KeyInfo{
		{URI: "tpm:key=0000000000000003", Label: "raw", Origin: hsm.OriginImported, SealedPCRs: []int{7, 16}},
		{URI: "tpm:key=0000000000000001", Label: "migrated", Origin: hsm.OriginImported},
		{URI: "tpm:key=0000000000000002", Label: "agent-1", Origin: hsm.OriginGenerated},
		{URI: "tpm:key=0000000000000000", Label: "agent-1", Origin: hsm.OriginGenerated},
	}
	var b bytes.Buffer
	if rc := printKeys(keys, false, &b); rc != 0 {
		t.Fatal(rc)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	var got []string
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) != 4 {
			t.Fatalf("row %q has %d columns, want 4", l, len(f))
		}
		got = append(got, f[1]+" "+f[3])
	}
	want := []string{"agent-1 tpm:key=0000000000000000", "agent-1 tpm:key=0000000000000002", "migrated tpm:key=0000000000000001", "raw tpm:key=0000000000000003"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("order %q, want %q", got, want)
	}
	if !strings.Contains(b.String(), "sealed-pcrs=[7,16]") {
		t.Fatalf("facts: %s", b.String())
	}
	b.Reset()
	var js struct{ Keys []hsm.KeyInfo }
	if printKeys(keys, true, &b) != 0 || json.Unmarshal(b.Bytes(), &js) != nil || len(js.Keys) != 4 || js.Keys[0].URI != "tpm:key=0000000000000000" || js.Keys[3].Label != "raw" {
		t.Fatalf("JSON order: %s", b.String())
	}
	if keys[0].Label != "raw" {
		t.Fatal("printKeys reordered the caller's slice")
	}
}
