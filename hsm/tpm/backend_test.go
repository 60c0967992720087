//go:build !no_tpm

package tpm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/accounts/keystore"
	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/crypto"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/signerd/signerd/attestation"
	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/hsm/tpm/swtpmtest"
	"github.com/signerd/signerd/signerd/fourmica"
)

type mode struct {
	name   string
	perSig bool
}

var modes = []mode{{"unseal-once", false}, {"per-signature", true}}

func testOptions(sw *swtpmtest.TPM, dir string, perSig bool, pcrs []int) hsm.TPMOptions {
	return hsm.TPMOptions{
		Address:            sw.Address(),
		KeyDir:             dir,
		PCRs:               pcrs,
		UnsealPerSignature: perSig,
		HealthInterval:     50 * time.Millisecond,
		CommandTimeout:     5 * time.Second,
	}
}

func openTest(t *testing.T, opts hsm.TPMOptions) *Backend {
	t.Helper()
	b, err := Open(context.Background(), opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func randDigest(t testing.TB) [32]byte {
	var d [32]byte
	if _, err := rand.Read(d[:]); err != nil {
		t.Fatal(err)
	}
	return d
}

// checkSig verifies a signature independently of hsm.VerifyEth: v in {27,28}, low s, and
// recovery to addr.
func checkSig(t testing.TB, digest [32]byte, sig [65]byte, addr common.Address) {
	t.Helper()
	if sig[64] != 27 && sig[64] != 28 {
		t.Fatalf("v = %d", sig[64])
	}
	norm := sig
	norm[64] -= 27
	pub, err := crypto.Ecrecover(digest[:], norm[:])
	if err != nil {
		t.Fatalf("Ecrecover: %v", err)
	}
	if got := common.BytesToAddress(crypto.Keccak256(pub[1:])[12:]); got != addr {
		t.Fatalf("signature recovers to %s, want %s", got.Hex(), addr.Hex())
	}
	if !crypto.VerifySignature(pub, digest[:], norm[:64]) {
		t.Fatal("VerifySignature failed (high s?)")
	}
}

func signOK(t *testing.T, b *Backend, uri string, addr common.Address) {
	t.Helper()
	s, err := b.Signer(context.Background(), uri)
	if err != nil {
		t.Fatalf("Signer(%s): %v", uri, err)
	}
	if s.Address() != addr {
		t.Fatalf("signer address %s, want %s", s.Address().Hex(), addr.Hex())
	}
	d := randDigest(t)
	sig, err := s.SignDigest(context.Background(), d)
	if err != nil {
		t.Fatalf("SignDigest: %v", err)
	}
	checkSig(t, d, sig, addr)
}

func TestParseURI(t *testing.T) {
	for _, tc := range []struct {
		uri, id string
		ok      bool
	}{
		{"tpm:key=0123456789abcdef", "0123456789abcdef", true},
		{"tpm:key=0123456789ABCDEF", "", false},
		{"tpm:key=0123456789abcde", "", false},
		{"tpm:key=0123456789abcdef0", "", false},
		{"tpm:id=0123456789abcdef", "", false},
		{"pkcs11:id=%01", "", false},
		{"", "", false},
		{"tpm:", "", false},
		{"TPM:key=0123456789abcdef", "", false},
	} {
		id, err := ParseURI(tc.uri)
		if tc.ok {
			if err != nil || id != tc.id {
				t.Errorf("ParseURI(%q) = %q, %v", tc.uri, id, err)
			}
			if KeyURI(id) != tc.uri {
				t.Errorf("KeyURI(%q) = %q", id, KeyURI(id))
			}
		} else if !errors.Is(err, hsm.ErrBadURI) {
			t.Errorf("ParseURI(%q) err = %v, want ErrBadURI", tc.uri, err)
		}
	}
}

func TestOpenOptions(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		opts hsm.TPMOptions
		want error
	}{
		{"no endpoint", hsm.TPMOptions{KeyDir: dir}, hsm.ErrInvalidOptions},
		{"both endpoints", hsm.TPMOptions{Device: "/dev/tpmrm0", Address: "unix:/x", KeyDir: dir}, hsm.ErrInvalidOptions},
		{"bad scheme", hsm.TPMOptions{Address: "udp:1.2.3.4:5", KeyDir: dir}, hsm.ErrInvalidOptions},
		{"relative unix", hsm.TPMOptions{Address: "unix:sock", KeyDir: dir}, hsm.ErrInvalidOptions},
		{"tcp no port", hsm.TPMOptions{Address: "tcp:localhost", KeyDir: dir}, hsm.ErrInvalidOptions},
		{"no key dir", hsm.TPMOptions{Address: "unix:/x"}, hsm.ErrInvalidOptions},
		{"pcr range", hsm.TPMOptions{Address: "unix:/x", KeyDir: dir, PCRs: []int{24}}, hsm.ErrInvalidOptions},
		{"pcr order", hsm.TPMOptions{Address: "unix:/x", KeyDir: dir, PCRs: []int{7, 7}}, hsm.ErrInvalidOptions},
		{"unreachable", hsm.TPMOptions{Address: "unix:" + filepath.Join(dir, "none.sock"), KeyDir: dir}, hsm.ErrUnavailable},
		{"no device", hsm.TPMOptions{Device: "/dev/nonexistent-tpm", KeyDir: dir}, hsm.ErrUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Open(context.Background(), tc.opts)
			if err == nil {
				b.Close()
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Open err = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestRegistry(t *testing.T) {
	sw := swtpmtest.Start(t)
	b, err := hsm.Open(context.Background(), hsm.Options{Type: "tpm", TPM: testOptions(sw, t.TempDir(), false, nil)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Name() != "tpm" {
		t.Fatalf("Name = %q", b.Name())
	}
	if h := b.Health(context.Background()); !h.OK {
		t.Fatalf("health %+v", h)
	}
}

func TestLifecycle(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			ctx := context.Background()
			sw := swtpmtest.Start(t)
			dir := t.TempDir()
			b := openTest(t, testOptions(sw, dir, m.perSig, []int{16}))

			gen, err := b.Generate(ctx, hsm.GenerateOptions{Label: "agent-1"})
			if err != nil {
				t.Fatalf("Generate: %v", err)
			}
			if gen.Origin != hsm.OriginGenerated || gen.Label != "agent-1" || gen.Backend != "tpm" ||
				len(gen.SealedPCRs) != 1 || gen.SealedPCRs[0] != 16 || gen.NonExtractable || gen.CreatedAt.IsZero() {
				t.Fatalf("generated KeyInfo %+v", gen)
			}
			if _, err := ParseURI(gen.URI); err != nil {
				t.Fatal(err)
			}
			priv, err := crypto.GenerateKey()
			if err != nil {
				t.Fatal(err)
			}
			want := crypto.PubkeyToAddress(priv.PublicKey)
			raw := crypto.FromECDSA(priv)
			imp, err := b.Import(ctx, hsm.ImportOptions{Label: "migrated", Key: raw})
			if err != nil {
				t.Fatalf("Import: %v", err)
			}
			if !bytes.Equal(raw, make([]byte, 32)) {
				t.Fatal("Import did not zero the caller's key bytes")
			}
			if imp.Address != want || imp.Origin != hsm.OriginImported {
				t.Fatalf("imported KeyInfo %+v, want address %s", imp, want.Hex())
			}
			// The same key again is refused.
			if _, err := b.Import(ctx, hsm.ImportOptions{Key: crypto.FromECDSA(priv)}); !errors.Is(err, hsm.ErrBadKey) {
				t.Fatalf("duplicate import err = %v", err)
			}
			for _, bad := range [][]byte{make([]byte, 31), make([]byte, 32), bytes.Repeat([]byte{0xff}, 32)} {
				if _, err := b.Import(ctx, hsm.ImportOptions{Key: bad}); !errors.Is(err, hsm.ErrBadKey) {
					t.Fatalf("import of invalid key err = %v", err)
				}
			}
			signOK(t, b, gen.URI, gen.Address)
			signOK(t, b, imp.URI, want)

			list, err := b.List(ctx)
			if err != nil || len(list) != 2 {
				t.Fatalf("List = %v, %v", list, err)
			}
			for _, ki := range list {
				if ki.Facts["parameter_encryption"] == "off" || ki.Facts["policy_digest"] == nil {
					t.Fatalf("facts %v", ki.Facts)
				}
			}

			// Retire: listed, never signs (even through a signer obtained before).
			s, err := b.Signer(ctx, gen.URI)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Retire(ctx, gen.URI); err != nil {
				t.Fatalf("Retire: %v", err)
			}
			if k, _ := b.lookup(gen.URI); k.mem != nil && !k.mem.IsZero() {
				t.Fatal("retired key still in memory")
			}
			if _, err := s.SignDigest(ctx, randDigest(t)); !errors.Is(err, hsm.ErrKeyRetired) {
				t.Fatalf("sign with retired key err = %v", err)
			}
			if _, err := b.Signer(ctx, gen.URI); !errors.Is(err, hsm.ErrKeyRetired) {
				t.Fatalf("Signer(retired) err = %v", err)
			}
			list, _ = b.List(ctx)
			retired := 0
			for _, ki := range list {
				if ki.Retired {
					retired++
					if ki.URI != gen.URI || ki.Facts["state"] != "retired" {
						t.Fatalf("retired entry %+v", ki)
					}
				}
			}
			if len(list) != 2 || retired != 1 {
				t.Fatalf("after retire: %d keys, %d retired", len(list), retired)
			}

			// Retirement and keys persist across a reopen.
			b.Close()
			b = openTest(t, testOptions(sw, dir, m.perSig, []int{16}))
			if _, err := b.Signer(ctx, gen.URI); !errors.Is(err, hsm.ErrKeyRetired) {
				t.Fatalf("Signer(retired) after reopen err = %v", err)
			}
			signOK(t, b, imp.URI, want)

			// Destroy removes the blob.
			s, _ = b.Signer(ctx, imp.URI)
			if err := b.Destroy(ctx, imp.URI); err != nil {
				t.Fatalf("Destroy: %v", err)
			}
			id, _ := ParseURI(imp.URI)
			if _, err := os.Stat(keyPath(dir, id)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("blob still on disk: %v", err)
			}
			if _, err := s.SignDigest(ctx, randDigest(t)); !errors.Is(err, hsm.ErrUnknownKey) {
				t.Fatalf("sign with destroyed key err = %v", err)
			}
			if _, err := b.Signer(ctx, imp.URI); !errors.Is(err, hsm.ErrUnknownKey) {
				t.Fatalf("Signer(destroyed) err = %v", err)
			}
			if err := b.Destroy(ctx, imp.URI); !errors.Is(err, hsm.ErrUnknownKey) {
				t.Fatalf("second Destroy err = %v", err)
			}
			if _, err := b.Signer(ctx, "tpm:key=0000000000000000"); !errors.Is(err, hsm.ErrUnknownKey) {
				t.Fatalf("unknown key err = %v", err)
			}
			if _, err := b.Signer(ctx, "tpm:nope"); !errors.Is(err, hsm.ErrBadURI) {
				t.Fatalf("malformed URI err = %v", err)
			}
			if err := b.Retire(ctx, "pkcs11:id=%01"); !errors.Is(err, hsm.ErrBadURI) {
				t.Fatalf("Retire(malformed) err = %v", err)
			}
			list, _ = b.List(ctx)
			if len(list) != 1 {
				t.Fatalf("after destroy: %d keys", len(list))
			}
		})
	}
}

func TestConcurrentSigning(t *testing.T) {
	const workers, total = 8, 2000
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			ctx := context.Background()
			sw := swtpmtest.Start(t)
			b := openTest(t, testOptions(sw, t.TempDir(), m.perSig, []int{16}))
			ki, err := b.Generate(ctx, hsm.GenerateOptions{Label: "hot"})
			if err != nil {
				t.Fatal(err)
			}
			s, err := b.Signer(ctx, ki.URI)
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range total / workers {
						d := sha256.Sum256(fmt.Appendf(nil, "%d/%d", w, i))
						sig, err := s.SignDigest(ctx, d)
						if err != nil {
							errs <- err
							return
						}
						norm := sig
						norm[64] -= 27
						pub, err := crypto.SigToPub(d[:], norm[:])
						if err != nil || crypto.PubkeyToAddress(*pub) != ki.Address {
							errs <- fmt.Errorf("signature %d/%d does not recover to %s", w, i, ki.Address.Hex())
							return
						}
						// 4Mica Core's rules, and already in the SDKs' canonical form.
						if err := fourmica.VerifySignature(fourmica.Hash(d), sig[:], fourmica.Address(ki.Address)); err != nil {
							errs <- fmt.Errorf("signature %d/%d fails fourmica verification: %v", w, i, err)
							return
						}
						if c, err := fourmica.NormalizeSignature(sig[:]); err != nil || c != fourmica.Signature(sig) {
							errs <- fmt.Errorf("signature %d/%d is not canonical", w, i)
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
		})
	}
}

func TestKeystoreImport(t *testing.T) {
	ctx := context.Background()
	sw := swtpmtest.Start(t)
	b := openTest(t, testOptions(sw, t.TempDir(), false, nil))
	priv, err := crypto.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	k := &keystore.Key{Address: crypto.PubkeyToAddress(priv.PublicKey), PrivateKey: priv}
	js, err := keystore.EncryptKey(k, "correct horse", keystore.LightScryptN, keystore.LightScryptP)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Import(ctx, hsm.ImportOptions{Keystore: js, Passphrase: "wrong"}); !errors.Is(err, hsm.ErrBadKey) {
		t.Fatalf("wrong passphrase err = %v", err)
	}
	ki, err := b.Import(ctx, hsm.ImportOptions{Label: "from-keystore", Keystore: js, Passphrase: "correct horse"})
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	if ki.Address != k.Address || ki.Origin != hsm.OriginImported {
		t.Fatalf("imported %s, want %s", ki.Address.Hex(), k.Address.Hex())
	}
	signOK(t, b, ki.URI, k.Address)
	if _, err := b.Import(ctx, hsm.ImportOptions{Keystore: js, Key: make([]byte, 32)}); !errors.Is(err, hsm.ErrBadKey) {
		t.Fatalf("both key and keystore err = %v", err)
	}
}

// extendPCR extends a PCR through the backend's own connection (swtpm serves one client).
func extendPCR(t *testing.T, b *Backend, pcr int) {
	t.Helper()
	d := sha256.Sum256([]byte("another boot"))
	err := b.withTPM(func(tp transport.TPM, _ srkInfo) error {
		_, err := tpm2.PCRExtend{
			PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
			Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]}}},
		}.Execute(tp)
		return err
	})
	if err != nil {
		t.Fatalf("PCRExtend: %v", err)
	}
}

func resetPCR(t *testing.T, b *Backend, pcr int) {
	t.Helper()
	err := b.withTPM(func(tp transport.TPM, _ srkInfo) error {
		_, err := tpm2.PCRReset{PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)}}.Execute(tp)
		return err
	})
	if err != nil {
		t.Fatalf("PCRReset: %v", err)
	}
}

func TestPCRPolicyMismatch(t *testing.T) {
	ctx := context.Background()
	sw := swtpmtest.Start(t)
	dir := t.TempDir()

	// Per-signature mode sees the change on the next signature.
	b := openTest(t, testOptions(sw, dir, true, []int{16}))
	ki, err := b.Generate(ctx, hsm.GenerateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	signOK(t, b, ki.URI, ki.Address)
	extendPCR(t, b, 16)
	s, err := b.Signer(ctx, ki.URI)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.SignDigest(ctx, randDigest(t)); !errors.Is(err, hsm.ErrPolicyMismatch) {
		t.Fatalf("per-signature sign after PCR extend err = %v, want ErrPolicyMismatch", err)
	}
	if h := b.Health(ctx); !h.OK {
		t.Fatalf("a policy mismatch must not make the TPM unhealthy: %+v", h)
	}
	// Restoring the PCR (16 is resettable) makes the key sign again, in the same backend.
	resetPCR(t, b, 16)
	signOK(t, b, ki.URI, ki.Address)
	extendPCR(t, b, 16)
	b.Close()

	// Unseal-once mode: the key cannot be unsealed at start.
	b = openTest(t, testOptions(sw, dir, false, []int{16}))
	if _, err := b.Signer(ctx, ki.URI); !errors.Is(err, hsm.ErrPolicyMismatch) {
		t.Fatalf("unseal-once Signer after PCR extend err = %v, want ErrPolicyMismatch", err)
	}
	list, _ := b.List(ctx)
	if len(list) != 1 || list[0].Facts["state"] != "policy_mismatch" {
		t.Fatalf("list %+v", list)
	}
	// Restoring the PCR (16 is resettable) makes the key usable again.
	resetPCR(t, b, 16)
	b.Close()
	b = openTest(t, testOptions(sw, dir, false, []int{16}))
	signOK(t, b, ki.URI, ki.Address)
}

func corruptPrivateBlob(t *testing.T, dir, uri string) {
	t.Helper()
	id, _ := ParseURI(uri)
	path := keyPath(dir, id)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	var kf keyFile
	if err := json.Unmarshal(raw, &kf); err != nil {
		t.Fatal(err)
	}
	kf.Private[len(kf.Private)-5] ^= 0x40 // inside the encrypted sensitive area
	out, _ := json.Marshal(&kf)
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptBlob(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			ctx := context.Background()
			sw := swtpmtest.Start(t)
			dir := t.TempDir()
			b := openTest(t, testOptions(sw, dir, m.perSig, nil))
			bad, err := b.Generate(ctx, hsm.GenerateOptions{Label: "bad"})
			if err != nil {
				t.Fatal(err)
			}
			good, err := b.Generate(ctx, hsm.GenerateOptions{Label: "good"})
			if err != nil {
				t.Fatal(err)
			}
			garbled, err := b.Generate(ctx, hsm.GenerateOptions{Label: "garbled"})
			if err != nil {
				t.Fatal(err)
			}
			swapped, err := b.Generate(ctx, hsm.GenerateOptions{Label: "swapped"})
			if err != nil {
				t.Fatal(err)
			}
			b.Close()
			corruptPrivateBlob(t, dir, bad.URI)
			// Metadata naming another (consistent) key than the sealed blob holds.
			other, _ := crypto.GenerateKey()
			sid, _ := ParseURI(swapped.URI)
			kf, err := readKeyFile(dir, sid)
			if err != nil {
				t.Fatal(err)
			}
			kf.PublicKey = crypto.FromECDSAPub(&other.PublicKey)
			kf.Address = crypto.PubkeyToAddress(other.PublicKey)
			if err := writeKeyFile(dir, kf); err != nil {
				t.Fatal(err)
			}
			gid, _ := ParseURI(garbled.URI)
			if err := os.WriteFile(keyPath(dir, gid), []byte("{\"version\":1,"), 0o600); err != nil {
				t.Fatal(err)
			}

			b = openTest(t, testOptions(sw, dir, m.perSig, nil))
			for _, uri := range []string{bad.URI, garbled.URI, swapped.URI} {
				s, err := b.Signer(ctx, uri)
				if err == nil {
					_, err = s.SignDigest(ctx, randDigest(t))
				}
				if !errors.Is(err, hsm.ErrCorrupt) {
					t.Fatalf("%s: err = %v, want ErrCorrupt", uri, err)
				}
			}
			signOK(t, b, good.URI, good.Address)
			if h := b.Health(ctx); !h.OK {
				t.Fatalf("corrupt blob must not make the TPM unhealthy: %+v", h)
			}
			list, _ := b.List(ctx)
			states := map[string]any{}
			for _, ki := range list {
				states[ki.URI] = ki.Facts["state"]
			}
			if states[garbled.URI] != "corrupt" || len(list) != 4 {
				t.Fatalf("states %v", states)
			}
			if !m.perSig && (states[bad.URI] != "corrupt" || states[swapped.URI] != "corrupt") {
				t.Fatalf("states %v", states)
			}
		})
	}
}

func waitHealth(t *testing.T, b *Backend, want bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		h := b.Health(context.Background())
		if h.OK == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("health stayed %+v, want OK=%v", h, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTPMGoneAndBack(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			ctx := context.Background()
			sw := swtpmtest.Start(t)
			b := openTest(t, testOptions(sw, t.TempDir(), m.perSig, []int{16}))
			ki, err := b.Generate(ctx, hsm.GenerateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			s, err := b.Signer(ctx, ki.URI)
			if err != nil {
				t.Fatal(err)
			}
			// Signing runs while the TPM dies: no panic, every failure is ErrUnavailable.
			stop := make(chan struct{})
			var wg sync.WaitGroup
			var mu sync.Mutex
			var odd []error
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						d := randDigest(t)
						sig, err := s.SignDigest(ctx, d)
						if err == nil {
							if verr := hsm.VerifyEth(d, sig, ki.Address); verr != nil {
								err = verr
							}
						}
						if err != nil && !errors.Is(err, hsm.ErrUnavailable) {
							mu.Lock()
							odd = append(odd, err)
							mu.Unlock()
						}
					}
				}()
			}
			time.Sleep(50 * time.Millisecond)
			sw.Kill()
			waitHealth(t, b, false)
			if _, err := s.SignDigest(ctx, randDigest(t)); !errors.Is(err, hsm.ErrUnavailable) {
				t.Fatalf("sign with TPM gone err = %v, want ErrUnavailable", err)
			}
			if _, err := b.Generate(ctx, hsm.GenerateOptions{}); !errors.Is(err, hsm.ErrUnavailable) {
				t.Fatalf("generate with TPM gone err = %v, want ErrUnavailable", err)
			}
			if !m.perSig {
				k, _ := b.lookup(ki.URI)
				k.mu.RLock()
				zero := k.mem.IsZero()
				k.mu.RUnlock()
				if !zero {
					t.Fatal("cached key not zeroed while the TPM is gone")
				}
			}
			sw.Restart()
			waitHealth(t, b, true)
			close(stop)
			wg.Wait()
			if len(odd) > 0 {
				t.Fatalf("unexpected errors while the TPM went away: %v", odd[0])
			}
			for range 5 {
				signOK(t, b, ki.URI, ki.Address)
			}
		})
	}
}

func TestBlobsSurviveRestart(t *testing.T) {
	ctx := context.Background()
	sw := swtpmtest.Start(t)
	dir := t.TempDir()
	b := openTest(t, testOptions(sw, dir, false, []int{16}))
	ki, err := b.Generate(ctx, hsm.GenerateOptions{Label: "persist"})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	sw.Stop()
	sw.Restart()
	for _, m := range modes {
		b := openTest(t, testOptions(sw, dir, m.perSig, []int{16}))
		signOK(t, b, ki.URI, ki.Address)
		b.Close()
	}
}

func TestLockedMemoryZeroed(t *testing.T) {
	ctx := context.Background()
	sw := swtpmtest.Start(t)
	b := openTest(t, testOptions(sw, t.TempDir(), false, nil))
	var kis []hsm.KeyInfo
	for range 2 {
		ki, err := b.Generate(ctx, hsm.GenerateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		kis = append(kis, ki)
	}
	// Before Close the locked buffers hold the keys.
	for _, ki := range kis {
		k, _ := b.lookup(ki.URI)
		if addr, err := addressOf(k.sec); err != nil || addr != ki.Address {
			t.Fatalf("locked buffer of %s does not hold the key: %v", ki.URI, err)
		}
	}
	released := map[string]bool{}
	testHookReleased = func(id string, mem []byte) {
		released[id] = len(mem) == 32 && bytes.Equal(mem, make([]byte, 32))
	}
	defer func() { testHookReleased = nil }()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	for _, ki := range kis {
		id, _ := ParseURI(ki.URI)
		zero, seen := released[id]
		if !seen || !zero {
			t.Fatalf("%s: released=%v zero=%v", ki.URI, seen, zero)
		}
	}
	s, err := b.Signer(ctx, kis[0].URI)
	if err == nil {
		_, err = s.SignDigest(ctx, randDigest(t))
	}
	if !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("sign after Close err = %v", err)
	}
}

func TestZeroize(t *testing.T) {
	ctx := context.Background()
	sw := swtpmtest.Start(t)
	b := openTest(t, testOptions(sw, t.TempDir(), false, nil))
	ki, err := b.Generate(ctx, hsm.GenerateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s, _ := b.Signer(ctx, ki.URI)
	k, _ := b.lookup(ki.URI)
	if k.mem.IsZero() {
		t.Fatal("key buffer zero before Zeroize")
	}
	var z hsm.Zeroizer = b
	z.Zeroize()
	if !k.mem.IsZero() {
		t.Fatal("key buffer not zero after Zeroize")
	}
	if _, err := s.SignDigest(ctx, randDigest(t)); !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("sign after Zeroize err = %v", err)
	}
	if h := b.Health(ctx); h.OK {
		t.Fatalf("health after Zeroize %+v", h)
	}
	// The monitor's reconnect logic must not unseal the key again.
	time.Sleep(150 * time.Millisecond)
	if !k.mem.IsZero() {
		t.Fatal("key re-unsealed after Zeroize")
	}
}

// TestParameterEncryption watches the wire: with parameter encryption (the default) the key's
// bytes never cross it, in either direction; with it turned off they do (so the check works).
func TestParameterEncryption(t *testing.T) {
	for _, tc := range []struct {
		name    string
		perSig  bool
		pcrs    []int
		off     bool
		visible bool
	}{
		{"once/pcr", false, []int{16}, false, false},
		{"per-signature/pcr", true, []int{16}, false, false},
		{"per-signature/no-pcr", true, nil, false, false},
		{"insecure-off", true, []int{16}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			sw := swtpmtest.Start(t)
			priv, err := crypto.GenerateKey()
			if err != nil {
				t.Fatal(err)
			}
			secret := crypto.FromECDSA(priv)
			var mu sync.Mutex
			seen := 0
			testHookWire = func(cmd, rsp []byte) {
				mu.Lock()
				defer mu.Unlock()
				if bytes.Contains(cmd, secret) || bytes.Contains(rsp, secret) {
					seen++
				}
			}
			defer func() { testHookWire = nil }()
			opts := testOptions(sw, t.TempDir(), tc.perSig, tc.pcrs)
			opts.InsecureNoParameterEncryption = tc.off
			b, err := Open(ctx, opts)
			if err != nil {
				t.Fatal(err)
			}
			ki, err := b.Import(ctx, hsm.ImportOptions{Key: crypto.FromECDSA(priv)})
			if err != nil {
				t.Fatal(err)
			}
			for range 3 {
				signOK(t, b, ki.URI, ki.Address)
			}
			b.Close()
			b, err = Open(ctx, opts) // unseal-once mode unseals here
			if err != nil {
				t.Fatal(err)
			}
			signOK(t, b, ki.URI, ki.Address)
			b.Close()
			mu.Lock()
			defer mu.Unlock()
			if tc.visible != (seen > 0) {
				t.Fatalf("key bytes seen in %d TPM messages; want visible=%v", seen, tc.visible)
			}
		})
	}
}

// TestPCRDriftUnsealOnce: a key unsealed once is zeroed by the monitor when its PCRs change
// while the backend runs, and unsealed again when they are restored.
func TestPCRDriftUnsealOnce(t *testing.T) {
	ctx := context.Background()
	sw := swtpmtest.Start(t)
	b := openTest(t, testOptions(sw, t.TempDir(), false, []int{16}))
	ki, err := b.Generate(ctx, hsm.GenerateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := b.Generate(ctx, hsm.GenerateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := b.Signer(ctx, ki.URI)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := b.lookup(ki.URI)
	extendPCR(t, b, 16)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := s.SignDigest(ctx, randDigest(t))
		if errors.Is(err, hsm.ErrPolicyMismatch) {
			break
		}
		if err != nil || time.Now().After(deadline) {
			t.Fatalf("sign after PCR drift err = %v, want ErrPolicyMismatch", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	k.mu.RLock()
	zero := k.mem.IsZero()
	k.mu.RUnlock()
	if !zero {
		t.Fatal("key not zeroed after PCR drift")
	}
	// Other keys sealed to the same PCRs are zeroed too; health stays OK (the TPM is fine).
	if _, err := b.Signer(ctx, plain.URI); !errors.Is(err, hsm.ErrPolicyMismatch) {
		t.Fatalf("second key err = %v", err)
	}
	if h := b.Health(ctx); !h.OK {
		t.Fatalf("health %+v", h)
	}
	resetPCR(t, b, 16)
	deadline = time.Now().Add(10 * time.Second)
	for {
		if _, err := s.SignDigest(ctx, randDigest(t)); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("sign after PCR restore err = %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	signOK(t, b, ki.URI, ki.Address)
}

func TestAttest(t *testing.T) {
	ctx := context.Background()
	sw := swtpmtest.Start(t)
	b := openTest(t, testOptions(sw, t.TempDir(), false, []int{16}))
	extendPCR(t, b, 16) // seal to a non-trivial value
	ki, err := b.Generate(ctx, hsm.GenerateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nonce := randDigest(t)
	doc, err := b.Attest(ctx, ki.URI, nonce[:])
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	res, err := attestation.Verify(doc, nonce[:], nil)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if common.Address(res.WalletAddress) != ki.Address || len(res.SealPCRs) != 1 {
		t.Fatalf("result %+v", res)
	}
	if _, err := b.Attest(ctx, "tpm:key=0000000000000000", nonce[:]); !errors.Is(err, hsm.ErrUnknownKey) {
		t.Fatalf("unknown key err = %v", err)
	}
	// Once the PCR moves, the attestation shows the key could not be unsealed.
	extendPCR(t, b, 16)
	doc, err = b.Attest(ctx, ki.URI, nonce[:])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attestation.Verify(doc, nonce[:], res.AKPublic); !errors.Is(err, attestation.ErrPolicy) {
		t.Fatalf("after PCR drift err = %v, want ErrPolicy", err)
	}
}

// TestStaleTempFile: a temporary file left by a crash in the middle of a key-file write is
// removed at open and never listed; other stray files are left alone and ignored.
func TestStaleTempFile(t *testing.T) {
	sw := swtpmtest.Start(t)
	dir := t.TempDir()
	stale := filepath.Join(dir, ".0123456789abcdef"+fileExt+".tmp42")
	stray := filepath.Join(dir, "notes.txt")
	for _, p := range []string{stale, stray} {
		if err := os.WriteFile(p, []byte("{"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b := openTest(t, testOptions(sw, dir, false, nil))
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale temp file still there: %v", err)
	}
	if _, err := os.Stat(stray); err != nil {
		t.Fatalf("stray file removed: %v", err)
	}
	if list, _ := b.List(context.Background()); len(list) != 0 {
		t.Fatalf("list %+v", list)
	}
}

// TestPerSignatureKeySwitch: per-signature mode keeps the last key's sealed object loaded; signing
// round-robin with several keys must always use the right one, and an attestation (one more
// transient object) still fits beside it.
func TestPerSignatureKeySwitch(t *testing.T) {
	ctx := context.Background()
	sw := swtpmtest.Start(t)
	b := openTest(t, testOptions(sw, t.TempDir(), true, []int{16}))
	var kis []hsm.KeyInfo
	for range 3 {
		ki, err := b.Generate(ctx, hsm.GenerateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		kis = append(kis, ki)
	}
	for i := range 30 {
		ki := kis[i%len(kis)]
		if i%7 == 0 {
			ki = kis[0]
		}
		signOK(t, b, ki.URI, ki.Address)
		if i == 10 {
			nonce := randDigest(t)
			doc, err := b.Attest(ctx, ki.URI, nonce[:])
			if err != nil {
				t.Fatalf("Attest beside a loaded key: %v", err)
			}
			if _, err := attestation.Verify(doc, nonce[:], nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Retire the key whose object is loaded: it must not sign again.
	last := kis[29%len(kis)]
	if err := b.Retire(ctx, last.URI); err != nil {
		t.Fatal(err)
	}
	s, err := b.Signer(ctx, kis[0].URI)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.SignDigest(ctx, randDigest(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Signer(ctx, last.URI); !errors.Is(err, hsm.ErrKeyRetired) {
		t.Fatalf("retired err = %v", err)
	}
}
