package coreclient_test

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"testing"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/crypto"

	"github.com/signerd/signerd/hsm"
	_ "github.com/signerd/signerd/hsm/pkcs11"
	"github.com/signerd/signerd/hsm/pkcs11/softhsmtest"
	"github.com/signerd/signerd/signerd/coreclient"
)

// hsm.Signer is what the daemon passes as coreclient.Signer.
var _ coreclient.Signer = hsm.Signer(nil)

var (
	env     *softhsmtest.Env
	backend hsm.Backend
	wallet  hsm.Signer // a secp256k1 key generated on a SoftHSM2 token
)

// TestMain creates one SoftHSM2 token with one wallet key for the whole binary. A missing
// SoftHSM2 is a failure, never a skip.
func TestMain(m *testing.M) {
	var err error
	if env, err = softhsmtest.Setup("core"); err != nil {
		fmt.Fprintln(os.Stderr, "softhsm setup:", err)
		os.Exit(1)
	}
	code := func() int {
		ctx := context.Background()
		if backend, err = hsm.Open(ctx, env.Options("core")); err != nil {
			fmt.Fprintln(os.Stderr, "open pkcs11 backend:", err)
			return 1
		}
		defer backend.Close()
		k, err := backend.Generate(ctx, hsm.GenerateOptions{Label: "core-wallet"})
		if err != nil {
			fmt.Fprintln(os.Stderr, "generate:", err)
			return 1
		}
		if wallet, err = backend.Signer(ctx, k.URI); err != nil {
			fmt.Fprintln(os.Stderr, "signer:", err)
			return 1
		}
		return m.Run()
	}()
	env.Cleanup()
	os.Exit(code)
}

// countingSigner wraps a signer and counts its calls.
type countingSigner struct {
	coreclient.Signer
	n atomic.Int64
}

func (s *countingSigner) SignDigest(ctx context.Context, d [32]byte) ([65]byte, error) {
	s.n.Add(1)
	return s.Signer.SignDigest(ctx, d)
}

// failingSigner's device fails.
type failingSigner struct{ addr common.Address }

func (s failingSigner) Address() common.Address { return s.addr }
func (s failingSigner) SignDigest(context.Context, [32]byte) ([65]byte, error) {
	return [65]byte{}, errors.New("CKR_DEVICE_ERROR")
}

// lyingSigner claims addr but signs with another key: its signatures recover elsewhere.
type lyingSigner struct {
	addr common.Address
	key  *ecdsa.PrivateKey
}

func (s lyingSigner) Address() common.Address { return s.addr }
func (s lyingSigner) SignDigest(_ context.Context, d [32]byte) ([65]byte, error) {
	sig, err := crypto.Sign(d[:], s.key)
	if err != nil {
		return [65]byte{}, err
	}
	var out [65]byte
	copy(out[:], sig)
	out[64] += 27
	return out, nil
}

func newLyingSigner(t testing.TB, addr common.Address) lyingSigner {
	k, err := crypto.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return lyingSigner{addr: addr, key: k}
}
