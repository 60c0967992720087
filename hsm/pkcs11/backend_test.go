//go:build !no_pkcs11

package pkcs11_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/accounts/keystore"
	"github.com/ethereum/go-ethereum/crypto"
	"github.com/google/uuid"
	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/hsm/pkcs11"
	"github.com/signerd/signerd/hsm/pkcs11/softhsmtest"
)

var env *softhsmtest.Env

// Tokens: "wallet" for most tests, "spare" never logged in before the wrong-PIN test,
// "removable" for the unplug test, "bench" for benchmarks.
func TestMain(m *testing.M) {
	var err error
	env, err = softhsmtest.Setup("wallet", "spare", "removable", "bench")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	env.Cleanup()
	os.Exit(code)
}

func open(t testing.TB, label string, mut ...func(*hsm.Options)) *pkcs11.Backend {
	t.Helper()
	o := env.Options(label)
	for _, f := range mut {
		f(&o)
	}
	b, err := hsm.Open(context.Background(), o)
	if err != nil {
		t.Fatalf("open %s: %v", label, err)
	}
	t.Cleanup(func() { b.Close() })
	return b.(*pkcs11.Backend)
}

func randDigest(t testing.TB) (d [32]byte) {
	if _, err := rand.Read(d[:]); err != nil {
		t.Fatal(err)
	}
	return d
}

// checkSig verifies a signature independently of the backend: recovery to addr and VerifyEth.
func checkSig(digest [32]byte, sig [65]byte, ki hsm.KeyInfo) error {
	if sig[64] != 27 && sig[64] != 28 {
		return fmt.Errorf("v=%d", sig[64])
	}
	norm := sig
	norm[64] -= 27
	pub, err := crypto.SigToPub(digest[:], norm[:])
	if err != nil {
		return err
	}
	if got := crypto.PubkeyToAddress(*pub); got != ki.Address {
		return fmt.Errorf("recovers to %s, want %s", got.Hex(), ki.Address.Hex())
	}
	if !crypto.VerifySignature(crypto.FromECDSAPub(pub), digest[:], norm[:64]) {
		return errors.New("VerifySignature (low-s) failed")
	}
	return hsm.VerifyEth(digest, sig, ki.Address)
}

func TestGenerateAndSignConcurrently(t *testing.T) {
	b := open(t, "wallet")
	ctx := context.Background()
	ki, err := b.Generate(ctx, hsm.GenerateOptions{Label: "hot wallet"})
	if err != nil {
		t.Fatal(err)
	}
	if ki.Origin != hsm.OriginGenerated || !ki.NonExtractable || ki.Retired || ki.Backend != "pkcs11" {
		t.Fatalf("facts of a generated key: %+v", ki)
	}
	if !strings.HasPrefix(ki.URI, "pkcs11:token=wallet;id=%") || !strings.HasSuffix(ki.URI, ";object=hot%20wallet;type=private") {
		t.Fatalf("uri %q", ki.URI)
	}
	if ki.CreatedAt.IsZero() {
		t.Fatal("no creation date")
	}
	s, err := b.Signer(ctx, ki.URI)
	if err != nil {
		t.Fatal(err)
	}
	if s.Address() != ki.Address {
		t.Fatal("signer address differs from KeyInfo")
	}
	const total, workers = 2000, 8
	var next, highV atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= total {
				d := randDigest(t)
				sig, err := s.SignDigest(ctx, d)
				if err == nil {
					err = checkSig(d, sig, ki)
				}
				if err != nil {
					errs <- err
					return
				}
				if sig[64] == 28 {
					highV.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// both recovery ids must occur (about half each): the v search is exercised
	if v := highV.Load(); v < total/4 || v > 3*total/4 {
		t.Fatalf("v=28 in %d of %d signatures", v, total)
	}
	if h := b.Health(ctx); !h.OK {
		t.Fatalf("health %+v", h)
	}
	keys, err := b.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, k := range keys {
		found = found || (k.URI == ki.URI && k.Address == ki.Address)
	}
	if !found {
		t.Fatalf("generated key not listed: %+v", keys)
	}
}

func TestImportKeystoreAndRaw(t *testing.T) {
	b := open(t, "wallet")
	ctx := context.Background()
	priv, err := crypto.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	want := crypto.PubkeyToAddress(priv.PublicKey)
	doc, err := keystore.EncryptKey(&keystore.Key{Id: uuid.New(), Address: want, PrivateKey: priv}, "correct horse", keystore.LightScryptN, keystore.LightScryptP)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Import(ctx, hsm.ImportOptions{Label: "migrated", Keystore: doc, Passphrase: "wrong"}); !errors.Is(err, hsm.ErrBadKey) {
		t.Fatalf("wrong passphrase: %v", err)
	}
	ki, err := b.Import(ctx, hsm.ImportOptions{Label: "migrated", Keystore: doc, Passphrase: "correct horse"})
	if err != nil {
		t.Fatal(err)
	}
	if ki.Address != want {
		t.Fatalf("imported address %s, keystore %s", ki.Address.Hex(), want.Hex())
	}
	if ki.Origin != hsm.OriginImported || !ki.NonExtractable {
		t.Fatalf("facts of an imported key: %+v", ki)
	}
	if _, err := b.Import(ctx, hsm.ImportOptions{Label: "again", Key: crypto.FromECDSA(priv)}); !errors.Is(err, hsm.ErrInvalidOptions) {
		t.Fatalf("re-import of the same key: %v", err)
	}
	s, err := b.Signer(ctx, ki.URI)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		d := randDigest(t)
		sig, err := s.SignDigest(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkSig(d, sig, ki); err != nil {
			t.Fatal(err)
		}
	}
	// The token must refuse to reveal the key or to make it extractable.
	raw, err := pkcs11.OpenRawKey(b, ki.URI)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if v, err := raw.ReadValue(); !pkcs11.IsCKR(err, "CKR_ATTRIBUTE_SENSITIVE") {
		t.Fatalf("reading CKA_VALUE: %d bytes, err %v", len(v), err)
	}
	if err := raw.SetBool("extractable", true); err == nil {
		t.Fatal("token let CKA_EXTRACTABLE be set to true")
	}
	if err := raw.SetBool("sensitive", false); err == nil {
		t.Fatal("token let CKA_SENSITIVE be cleared")
	}
	if v, err := raw.ReadValue(); err == nil {
		t.Fatalf("CKA_VALUE readable after attempts (%d bytes)", len(v))
	}

	// raw 32-byte import, and the caller's slice is zeroed
	k2, _ := crypto.GenerateKey()
	kb := crypto.FromECDSA(k2)
	ki2, err := b.Import(ctx, hsm.ImportOptions{Label: "raw", Key: kb})
	if err != nil {
		t.Fatal(err)
	}
	if ki2.Address != crypto.PubkeyToAddress(k2.PublicKey) {
		t.Fatal("raw import address mismatch")
	}
	for _, c := range kb {
		if c != 0 {
			t.Fatal("raw key bytes not zeroed after import")
		}
	}
	if _, err := b.Import(ctx, hsm.ImportOptions{Label: "bad", Key: make([]byte, 32)}); !errors.Is(err, hsm.ErrBadKey) {
		t.Fatalf("zero key: %v", err)
	}
}

func TestRetireAndDestroy(t *testing.T) {
	b := open(t, "wallet")
	ctx := context.Background()
	ki, err := b.Generate(ctx, hsm.GenerateOptions{Label: "old"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := b.Signer(ctx, ki.URI)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.SignDigest(ctx, randDigest(t)); err != nil {
		t.Fatal(err)
	}
	if err := b.Retire(ctx, ki.URI); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SignDigest(ctx, randDigest(t)); !errors.Is(err, hsm.ErrKeyRetired) {
		t.Fatalf("existing signer after retire: %v", err)
	}
	if _, err := b.Signer(ctx, ki.URI); !errors.Is(err, hsm.ErrKeyRetired) {
		t.Fatalf("new signer after retire: %v", err)
	}
	// A second backend (fresh handle cache) sees the retirement on the token itself.
	b2 := open(t, "wallet")
	keys, err := b2.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got *hsm.KeyInfo
	for i := range keys {
		if keys[i].URI == ki.URI {
			got = &keys[i]
		}
	}
	if got == nil || !got.Retired || got.Facts["retired_at"] == nil {
		t.Fatalf("retired key listing: %+v", got)
	}
	if _, err := b2.Signer(ctx, ki.URI); !errors.Is(err, hsm.ErrKeyRetired) {
		t.Fatalf("second backend signer: %v", err)
	}
	// The token refuses too: CKA_SIGN was cleared.
	raw, err := pkcs11.OpenRawKey(b2, ki.URI)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Sign(make([]byte, 32)); !pkcs11.IsCKR(err, "CKR_KEY_FUNCTION_NOT_PERMITTED") {
		t.Fatalf("raw sign with retired key: %v", err)
	}
	// Someone with the PIN sets CKA_SIGN again behind signerd's back: signerd's metadata still
	// says retired, so a fresh backend refuses the key.
	if err := raw.SetBool("sign", true); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	b3 := open(t, "wallet")
	if _, err := b3.Signer(ctx, ki.URI); !errors.Is(err, hsm.ErrKeyRetired) {
		t.Fatalf("CKA_SIGN re-enabled by another tool: %v", err)
	}
	if err := b.Destroy(ctx, ki.URI); err != nil {
		t.Fatal(err)
	}
	if _, err := b2.Signer(ctx, ki.URI); !errors.Is(err, hsm.ErrUnknownKey) {
		t.Fatalf("destroyed key: %v", err)
	}
}

func TestErrors(t *testing.T) {
	ctx := context.Background()
	b := open(t, "wallet")
	ki, err := b.Generate(ctx, hsm.GenerateOptions{Label: "e"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	wrongPIN := filepath.Join(dir, "wrong.pin")
	if err := os.WriteFile(wrongPIN, []byte("000000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	loosePIN := filepath.Join(dir, "loose.pin")
	if err := os.WriteFile(loosePIN, []byte(env.Tokens["wallet"].PIN), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(loosePIN, 0o644)
	t.Setenv("SIGNERD_TEST_PIN", env.Tokens["wallet"].PIN)
	cases := []struct {
		name string
		mut  func(*hsm.Options)
		want error
	}{
		{"wrong PIN on a fresh token", func(o *hsm.Options) { o.PKCS11.TokenLabel = "spare"; o.PKCS11.PINFile = wrongPIN }, hsm.ErrBadPIN},
		{"wrong PIN on a logged-in token", func(o *hsm.Options) { o.PKCS11.PINFile = wrongPIN }, hsm.ErrBadPIN},
		{"missing token", func(o *hsm.Options) { o.PKCS11.TokenLabel = "no-such-token" }, hsm.ErrTokenNotFound},
		{"PIN file mode 0644", func(o *hsm.Options) { o.PKCS11.PINFile = loosePIN }, hsm.ErrBadPIN},
		{"PIN file missing", func(o *hsm.Options) { o.PKCS11.PINFile = filepath.Join(dir, "nope") }, hsm.ErrBadPIN},
		{"no PIN source", func(o *hsm.Options) { o.PKCS11.PINFile = "" }, hsm.ErrInvalidOptions},
		{"unset PIN env", func(o *hsm.Options) { o.PKCS11.PINFile = ""; o.PKCS11.PINEnv = "SIGNERD_TEST_UNSET" }, hsm.ErrBadPIN},
		{"no module", func(o *hsm.Options) { o.PKCS11.Module = filepath.Join(dir, "nope.so") }, hsm.ErrInvalidOptions},
		{"PIN from env", func(o *hsm.Options) { o.PKCS11.PINFile = ""; o.PKCS11.PINEnv = "SIGNERD_TEST_PIN" }, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := env.Options("wallet")
			c.mut(&o)
			got, err := hsm.Open(ctx, o)
			if got != nil {
				got.Close()
			}
			if c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
	if strings.Contains(fmt.Sprint(hsm.Open(ctx, func() hsm.Options { o := env.Options("wallet"); o.PKCS11.PINFile = wrongPIN; return o }())), "000000") {
		t.Fatal("PIN appears in an error")
	}

	u, _ := pkcs11.ParseURI(ki.URI)
	u.ID = []byte("no such id")
	if _, err := b.Signer(ctx, u.String()); !errors.Is(err, hsm.ErrUnknownKey) {
		t.Fatalf("unknown key: %v", err)
	}
	if _, err := b.Signer(ctx, strings.Replace(ki.URI, "token=wallet", "token=other", 1)); !errors.Is(err, hsm.ErrUnknownKey) {
		t.Fatalf("key on another token: %v", err)
	}
	for _, bad := range []string{"", "tpm:x", "pkcs11:object=e", ki.URI + ";pin-value=1234", ki.URI + "?pin-value=1234", "pkcs11:id=%zz", "pkcs11:id=%4"} {
		if _, err := b.Signer(ctx, bad); !errors.Is(err, hsm.ErrBadURI) {
			t.Fatalf("%q: %v", bad, err)
		}
	}
	if err := b.Retire(ctx, u.String()); !errors.Is(err, hsm.ErrUnknownKey) {
		t.Fatalf("retire unknown: %v", err)
	}
}

func TestOverloaded(t *testing.T) {
	ctx := context.Background()
	b := open(t, "wallet", func(o *hsm.Options) { o.PKCS11.Sessions = 1; o.PKCS11.MaxWaiting = 1 })
	ki, err := b.Generate(ctx, hsm.GenerateOptions{Label: "busy"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := b.Signer(ctx, ki.URI)
	if err != nil {
		t.Fatal(err)
	}
	give := pkcs11.FillSlots(b) // the only session is busy
	waiter := make(chan error, 1)
	go func() { _, err := s.SignDigest(ctx, randDigest(t)); waiter <- err }()
	for deadline := time.Now().Add(5 * time.Second); pkcs11.Waiting(b) != 1; {
		if time.Now().After(deadline) {
			t.Fatal("first caller never waited")
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := s.SignDigest(ctx, randDigest(t)); !errors.Is(err, hsm.ErrOverloaded) {
		t.Fatalf("second waiter: %v", err)
	}
	// A waiter whose context ends stops waiting with the context's error.
	give2 := make(chan error, 1)
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	// (the waiting slot is taken by the first waiter, so this one is overloaded, not waiting)
	go func() { _, err := s.SignDigest(cctx, randDigest(t)); give2 <- err }()
	if err := <-give2; !errors.Is(err, hsm.ErrOverloaded) {
		t.Fatalf("third caller: %v", err)
	}
	give()
	if err := <-waiter; err != nil {
		t.Fatalf("the waiting caller: %v", err)
	}
}

// TestTokenRemoval moves the token's directory out of SoftHSM's token directory mid-run and
// back: health turns false with a reason, signing fails with ErrUnavailable, and the backend
// recovers by itself.
func TestTokenRemoval(t *testing.T) {
	ctx := context.Background()
	b := open(t, "removable")
	ki, err := b.Generate(ctx, hsm.GenerateOptions{Label: "r"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := b.Signer(ctx, ki.URI)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.SignDigest(ctx, randDigest(t)); err != nil {
		t.Fatal(err)
	}
	path, err := env.TokenPath("removable")
	if err != nil {
		t.Fatal(err)
	}
	// Signers keep going during the whole outage: every call must end with a valid signature
	// or hsm.ErrUnavailable — nothing else, no hang, no panic.
	stop := make(chan struct{})
	var bg sync.WaitGroup
	var bgOK, bgUnavailable atomic.Int64
	bgErr := make(chan error, 4)
	for w := 0; w < 4; w++ {
		bg.Add(1)
		go func() {
			defer bg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				d := randDigest(t)
				sig, err := s.SignDigest(ctx, d)
				switch {
				case err == nil:
					if err := checkSig(d, sig, ki); err != nil {
						bgErr <- err
						return
					}
					bgOK.Add(1)
				case errors.Is(err, hsm.ErrUnavailable):
					bgUnavailable.Add(1)
					time.Sleep(time.Millisecond)
				default:
					bgErr <- err
					return
				}
			}
		}()
	}
	defer func() {
		close(stop)
		bg.Wait()
		close(bgErr)
		for err := range bgErr {
			t.Errorf("background signer: %v", err)
		}
		t.Logf("background signers: %d signed, %d unavailable", bgOK.Load(), bgUnavailable.Load())
		if bgUnavailable.Load() == 0 {
			t.Error("background signers never saw the outage")
		}
	}()
	time.Sleep(50 * time.Millisecond)

	parked := filepath.Join(t.TempDir(), filepath.Base(path))
	if err := os.Rename(path, parked); err != nil {
		t.Fatal(err)
	}
	restored := false
	defer func() {
		if !restored {
			os.Rename(parked, path)
		}
	}()
	_, err = s.SignDigest(ctx, randDigest(t))
	if !errors.Is(err, hsm.ErrUnavailable) || !strings.Contains(err.Error(), `token "removable"`) {
		t.Fatalf("sign with the token gone: %v", err)
	}
	h := b.Health(ctx)
	if h.OK || h.Reason == "" {
		t.Fatalf("health with the token gone: %+v", h)
	}
	// Give the monitor a few retries while the token is absent: it must stay down, clearly.
	time.Sleep(350 * time.Millisecond)
	h = b.Health(ctx)
	if h.OK || !strings.Contains(h.Reason, "removable") {
		t.Fatalf("health while absent: %+v", h)
	}
	if _, err := s.SignDigest(ctx, randDigest(t)); !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("sign while absent: %v", err)
	}
	t.Logf("while absent: %s", h.Reason)
	if err := os.Rename(parked, path); err != nil {
		t.Fatal(err)
	}
	restored = true
	deadline := time.Now().Add(10 * time.Second)
	for !b.Health(ctx).OK {
		if time.Now().After(deadline) {
			t.Fatalf("did not recover: %+v", b.Health(ctx))
		}
		time.Sleep(20 * time.Millisecond)
	}
	d := randDigest(t)
	sig, err := s.SignDigest(ctx, d)
	if err != nil {
		t.Fatalf("sign after recovery: %v", err)
	}
	if err := checkSig(d, sig, ki); err != nil {
		t.Fatal(err)
	}
}

// TestNotBuilt builds this package with -tags no_pkcs11 and checks hsm.Open says so.
func TestNotBuilt(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatal("go tool not found:", err)
	}
	cmd := exec.Command(gobin, "test", "-tags", "no_pkcs11", "-count=1", "-run", "^TestNotBuiltTagged$", ".")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ok") {
		t.Fatalf("go test -tags no_pkcs11: %v\n%s", err, out)
	}
}

// TestPrepareForAnotherProcess checks the helper for daemon tests: tokens prepared in a second
// directory are opened by a child process (signerctl-like use through hsm.Open there).
func TestPrepareForAnotherProcess(t *testing.T) {
	e, err := softhsmtest.Prepare(t.TempDir(), "child")
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("SOFTHSM2_CONF") == e.Conf {
		t.Fatal("Prepare changed this process's SOFTHSM2_CONF")
	}
	util, err := exec.LookPath("softhsm2-util")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(util, "--show-slots")
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+e.Conf)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Label:            child") {
		t.Fatalf("child process does not see the token: %v\n%s", err, out)
	}
	if fi, err := os.Stat(e.Tokens["child"].PINFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("PIN file: %v", err)
	}
	if o := e.Options("child"); o.PKCS11.ModuleEnv["SOFTHSM2_CONF"] != e.Conf || o.Type != "pkcs11" {
		t.Fatalf("options %+v", o)
	}
}
