package attestation

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"testing"

	"github.com/ethereum/go-ethereum/crypto"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/signerd/signerd/hsm/tpm/swtpmtest"
)

// stream is a minimal exact-framing transport for swtpm's socket.
type stream struct{ c net.Conn }

func (s *stream) Send(cmd []byte) ([]byte, error) {
	if _, err := s.c.Write(cmd); err != nil {
		return nil, err
	}
	hdr := make([]byte, 10)
	if _, err := io.ReadFull(s.c, hdr); err != nil {
		return nil, err
	}
	rsp := make([]byte, binary.BigEndian.Uint32(hdr[2:6]))
	copy(rsp, hdr)
	_, err := io.ReadFull(s.c, rsp[10:])
	return rsp, err
}

func dialTPM(t *testing.T) transport.TPM {
	t.Helper()
	sw := swtpmtest.Start(t)
	c, err := net.Dial("unix", sw.DataPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &stream{c}
}

// trialPolicy asks the TPM for the PolicyPCR digest of pcrs (what sealing records).
func trialPolicy(t *testing.T, tp transport.TPM, pcrs []int) []byte {
	t.Helper()
	sess, closer, err := tpm2.PolicySession(tp, tpm2.TPMAlgSHA256, 16, tpm2.Trial())
	if err != nil {
		t.Fatal(err)
	}
	defer closer()
	if _, err := (tpm2.PolicyPCR{PolicySession: sess.Handle(), Pcrs: Selection(pcrs)}).Execute(tp); err != nil {
		t.Fatal(err)
	}
	pgd, err := tpm2.PolicyGetDigest{PolicySession: sess.Handle()}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	return pgd.PolicyDigest.Buffer
}

func extend(t *testing.T, tp transport.TPM, pcr int) {
	t.Helper()
	d := sha256.Sum256([]byte("drift"))
	if _, err := (tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]}}},
	}).Execute(tp); err != nil {
		t.Fatal(err)
	}
}

func walletPub(t *testing.T) []byte {
	k, err := crypto.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return crypto.FromECDSAPub(&k.PublicKey)
}

func nonce(t *testing.T) []byte {
	n := make([]byte, 32)
	if _, err := rand.Read(n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestQuoteVerify(t *testing.T) {
	tp := dialTPM(t)
	extend(t, tp, 16) // a non-trivial value in the sealing PCR
	in := Input{Nonce: nonce(t), WalletPubKey: walletPub(t), SealPCRs: []int{7, 16}}
	in.SealPolicy = trialPolicy(t, tp, in.SealPCRs)
	d, err := Quote(tp, in)
	if err != nil {
		t.Fatalf("Quote: %v", err)
	}
	doc, err := d.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	res, err := Verify(doc, in.Nonce, nil)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if !bytes.Equal(res.WalletAddress[:], crypto.Keccak256(in.WalletPubKey[1:])[12:]) || len(res.PCRs) != 9 || res.AKPinned {
		t.Fatalf("result %+v", res)
	}
	// The AK is a primary: the same TPM gives the same AK, so it can be pinned.
	d2, err := Quote(tp, in)
	if err != nil {
		t.Fatal(err)
	}
	doc2, _ := d2.Marshal()
	if res2, err := Verify(doc2, in.Nonce, res.AKPublic); err != nil || !res2.AKPinned {
		t.Fatalf("Verify with pinned AK: %v", err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := Verify(doc, in.Nonce, &other.PublicKey); !errors.Is(err, ErrAK) {
		t.Fatalf("other pinned AK err = %v", err)
	}
	// Deterministic encoding: re-encoding a decoded document gives the same bytes.
	back, err := Unmarshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := back.Marshal(); !bytes.Equal(again, doc) {
		t.Fatal("encoding not deterministic")
	}

	mutate := func(f func(d *Document)) []byte {
		c, err := Unmarshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		f(c)
		b, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	otherPub := walletPub(t)
	for _, tc := range []struct {
		name  string
		doc   []byte
		nonce []byte
		want  error
	}{
		{"wrong nonce", doc, nonce(t), ErrNonce},
		{"tampered PCR value", mutate(func(d *Document) { d.PCRs[8].Value[0] ^= 1 }), in.Nonce, ErrPCRDigest},
		{"dropped PCR", mutate(func(d *Document) { d.PCRs = d.PCRs[:8] }), in.Nonce, ErrPCRDigest},
		{"tampered quoted PCR digest", mutate(func(d *Document) { d.Quoted[len(d.Quoted)-1] ^= 1 }), in.Nonce, ErrSignature},
		{"tampered signature", mutate(func(d *Document) { d.Signature[10] ^= 1 }), in.Nonce, ErrSignature},
		{"other wallet key", mutate(func(d *Document) {
			d.WalletPubKey = otherPub
			d.WalletAddress = crypto.Keccak256(otherPub[1:])[12:]
		}), in.Nonce, ErrQualifyingData},
		{"address not the key's", mutate(func(d *Document) { d.WalletAddress[0] ^= 1 }), in.Nonce, ErrMalformed},
		{"other policy", mutate(func(d *Document) { d.SealPolicy[0] ^= 1 }), in.Nonce, ErrQualifyingData},
		{"version", mutate(func(d *Document) { d.Version = 2 }), in.Nonce, ErrMalformed},
		{"garbage", []byte{0xa1, 0x01}, in.Nonce, ErrMalformed},
		{"trailing byte", append(bytes.Clone(doc), 0), in.Nonce, ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Verify(tc.doc, tc.nonce, nil); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestPolicyDigest checks the verifier's PolicyPCR computation against the TPM's own, and that
// a document whose sealing PCRs moved since sealing fails with ErrPolicy.
func TestPolicyDigest(t *testing.T) {
	tp := dialTPM(t)
	for _, pcrs := range [][]int{{16}, {0, 7}, {0, 1, 2, 3, 4, 5, 6, 7, 16}} {
		vals, err := readPCRs(tp, pcrs)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := PolicyPCRDigest(pcrs, vals), trialPolicy(t, tp, pcrs); !bytes.Equal(got, want) {
			t.Fatalf("PCRs %v: computed %x, TPM %x", pcrs, got, want)
		}
	}
	in := Input{Nonce: nonce(t), WalletPubKey: walletPub(t), SealPCRs: []int{16}}
	in.SealPolicy = trialPolicy(t, tp, in.SealPCRs)
	extend(t, tp, 16) // the key could no longer be unsealed
	d, err := Quote(tp, in)
	if err != nil {
		t.Fatal(err)
	}
	doc, _ := d.Marshal()
	if _, err := Verify(doc, in.Nonce, nil); !errors.Is(err, ErrPolicy) {
		t.Fatalf("err = %v, want ErrPolicy", err)
	}
}

func TestQuoteInput(t *testing.T) {
	tp := dialTPM(t)
	for _, in := range []Input{
		{Nonce: []byte("short"), WalletPubKey: walletPub(t)},
		{Nonce: nonce(t), WalletPubKey: walletPub(t)[:33]},
	} {
		if _, err := Quote(tp, in); err == nil {
			t.Fatalf("Quote(%x) succeeded", in.Nonce)
		}
	}
	// Not PCR-bound: verifies without a policy.
	in := Input{Nonce: nonce(t), WalletPubKey: walletPub(t)}
	d, err := Quote(tp, in)
	if err != nil {
		t.Fatal(err)
	}
	doc, _ := d.Marshal()
	if _, err := Verify(doc, in.Nonce, nil); err != nil {
		t.Fatal(err)
	}
}

func FuzzVerify(f *testing.F) {
	f.Add([]byte{0xa1, 0x01, 0x01})
	if doc, err := os.ReadFile("testdata/quote.cbor"); err == nil {
		f.Add(doc)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = Verify(b, []byte("golden nonce 0123456789abcdef"), nil) // must not panic
	})
}

// TestGolden verifies a document quoted once by swtpm and kept in testdata (regenerate with
// SIGNERD_UPDATE_GOLDEN=1), so the verifier is checked against fixed bytes without a TPM.
func TestGolden(t *testing.T) {
	if os.Getenv("SIGNERD_UPDATE_GOLDEN") == "1" {
		tp := dialTPM(t)
		extend(t, tp, 16)
		in := Input{Nonce: []byte("golden nonce 0123456789abcdef"), WalletPubKey: walletPub(t), SealPCRs: []int{16}}
		in.SealPolicy = trialPolicy(t, tp, in.SealPCRs)
		d, err := Quote(tp, in)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := d.Marshal()
		if err := os.WriteFile("testdata/quote.cbor", b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	doc, err := os.ReadFile("testdata/quote.cbor")
	if err != nil {
		t.Fatal(err)
	}
	res, err := Verify(doc, []byte("golden nonce 0123456789abcdef"), nil)
	if err != nil {
		t.Fatalf("golden document: %v", err)
	}
	if len(res.PCRs) != 9 || len(res.SealPolicy) != 32 {
		t.Fatalf("result %+v", res)
	}
	// A bit flipped in any byte of the golden document fails verification (and never panics).
	for i := range doc {
		bad := bytes.Clone(doc)
		bad[i] ^= 1 << (i % 8)
		if _, err := Verify(bad, []byte("golden nonce 0123456789abcdef"), nil); err == nil {
			t.Fatalf("bit %d flipped still verifies", i)
		}
	}
}
