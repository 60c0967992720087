package hsm

import (
	"bytes"
	"fmt"
	"math/big"

	"github.com/ethereum/go-ethereum/crypto"
)

var (
	secpN     = crypto.S256().Params().N
	secpHalfN = new(big.Int).Rsh(secpN, 1)
)

// FromRS turns a raw 64-byte r‖s signature over digest (as a PKCS#11 token returns it) into a
// 65-byte Ethereum signature with low s and v in {27, 28}, choosing v by recovering the public
// key and comparing it to pub65 (uncompressed, 0x04‖X‖Y). It fails with ErrSignature if neither
// recovery id yields pub65. It tries v=0 first: 1.5 recoveries on average.
func FromRS(digest [32]byte, rs []byte, pub65 []byte) ([65]byte, error) {
	sig, err := lowS(rs)
	if err != nil {
		return [65]byte{}, err
	}
	for v := byte(0); v < 2; v++ {
		if recoversTo(digest, sig, v, pub65) {
			sig[64] = v + 27
			return sig, nil
		}
	}
	return [65]byte{}, fmt.Errorf("%w: no recovery id yields the key", ErrSignature)
}

// lowS checks the length and range of r‖s and returns it with s in the lower half (EIP-2).
func lowS(rs []byte) ([65]byte, error) {
	var sig [65]byte
	if len(rs) != 64 {
		return sig, fmt.Errorf("%w: device returned %d signature bytes, want 64", ErrSignature, len(rs))
	}
	copy(sig[:64], rs)
	s := new(big.Int).SetBytes(sig[32:64])
	if s.Sign() == 0 || s.Cmp(secpN) >= 0 {
		return [65]byte{}, fmt.Errorf("%w: s out of range", ErrSignature)
	}
	if s.Cmp(secpHalfN) > 0 {
		s.Sub(secpN, s)
		s.FillBytes(sig[32:64])
	}
	return sig, nil
}

// recoversTo reports whether sig with recovery id v recovers to pub65.
func recoversTo(digest [32]byte, sig [65]byte, v byte, pub65 []byte) bool {
	sig[64] = v
	got, err := crypto.Ecrecover(digest[:], sig[:])
	return err == nil && bytes.Equal(got, pub65)
}

// VerifyEth checks that a 65-byte signature with v in {27, 28} and low s recovers to addr.
// Backends call it on every signature before returning it.
func VerifyEth(digest [32]byte, sig [65]byte, addr [20]byte) error {
	if sig[64] != 27 && sig[64] != 28 {
		return fmt.Errorf("%w: v=%d", ErrSignature, sig[64])
	}
	s := new(big.Int).SetBytes(sig[32:64])
	if s.Sign() == 0 || s.Cmp(secpHalfN) > 0 {
		return fmt.Errorf("%w: s not low", ErrSignature)
	}
	norm := sig
	norm[64] -= 27
	pub, err := crypto.SigToPub(digest[:], norm[:])
	if err != nil {
		return fmt.Errorf("%w: recovery failed", ErrSignature)
	}
	if crypto.PubkeyToAddress(*pub) != addr {
		return fmt.Errorf("%w: recovers to another address", ErrSignature)
	}
	return nil
}
