package hsm

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/ethereum/go-ethereum/accounts/keystore"
	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/crypto"
)

// keystoreV3 is the outer shape of an Ethereum keystore v3 file.
type keystoreV3 struct {
	Address string              `json:"address"`
	Crypto  keystore.CryptoJSON `json:"crypto"`
	Version int                 `json:"version"`
}

// DecryptKeystoreV3 decrypts an Ethereum keystore v3 JSON document with passphrase and returns
// the 32-byte secp256k1 private key and its address. The caller owns the returned slice and must
// zero it (Zero) once the key has been handed to a device. When the file names an address, the
// decrypted key must match it. Errors never contain key material; a wrong passphrase wraps
// ErrBadKey with a "could not decrypt" reason.
func DecryptKeystoreV3(doc []byte, passphrase string) ([]byte, common.Address, error) {
	var ks keystoreV3
	if err := json.Unmarshal(doc, &ks); err != nil {
		return nil, common.Address{}, fmt.Errorf("%w: keystore is not valid JSON", ErrBadKey)
	}
	if ks.Version != 3 {
		return nil, common.Address{}, fmt.Errorf("%w: keystore version %d, want 3", ErrBadKey, ks.Version)
	}
	key, err := keystore.DecryptDataV3(ks.Crypto, passphrase)
	if err != nil {
		// geth says "could not decrypt key with given password" for a MAC mismatch.
		return nil, common.Address{}, fmt.Errorf("%w: could not decrypt keystore (wrong passphrase or damaged file)", ErrBadKey)
	}
	if len(key) != 32 {
		Zero(key)
		return nil, common.Address{}, fmt.Errorf("%w: keystore holds %d key bytes, want 32", ErrBadKey, len(key))
	}
	pub, err := PublicKey(key)
	if err != nil {
		Zero(key)
		return nil, common.Address{}, err
	}
	addr := AddressOf(pub)
	if ks.Address != "" {
		want, err := hex.DecodeString(strings.TrimPrefix(strings.ToLower(ks.Address), "0x"))
		if err != nil || len(want) != 20 || !bytes.Equal(want, addr[:]) {
			Zero(key)
			return nil, common.Address{}, fmt.Errorf("%w: decrypted key does not match the keystore's address", ErrBadKey)
		}
	}
	return key, addr, nil
}

// PublicKey returns the uncompressed public key (0x04‖X‖Y, 65 bytes) of a 32-byte secp256k1
// private key, rejecting zero and out-of-range scalars with ErrBadKey. It keeps no copy of key.
func PublicKey(key []byte) ([]byte, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("%w: private key is %d bytes, want 32", ErrBadKey, len(key))
	}
	var s secp256k1.ModNScalar
	overflow := s.SetByteSlice(key)
	defer s.Zero()
	if overflow || s.IsZero() {
		return nil, fmt.Errorf("%w: private key out of range", ErrBadKey)
	}
	priv := secp256k1.NewPrivateKey(&s)
	defer priv.Zero()
	return priv.PubKey().SerializeUncompressed(), nil
}

// AddressOf returns the Ethereum address of an uncompressed 65-byte public key.
func AddressOf(pub65 []byte) common.Address {
	return common.BytesToAddress(crypto.Keccak256(pub65[1:])[12:])
}

// Zero overwrites b with zeros.
func Zero(b []byte) {
	for i := range b {
		b[i] = 0
	}
}
