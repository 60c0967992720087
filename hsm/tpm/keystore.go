//go:build !no_tpm

package tpm

import (
	"fmt"

	"github.com/ethereum/go-ethereum/accounts/keystore"

	"github.com/signerd/signerd/hsm"
)

// keystoreInto decrypts an Ethereum keystore v3 JSON and writes its 32-byte private key into
// dst, clearing the decoded big.Int's words afterwards (go-ethereum's decoder leaves other
// transient copies on the heap; see docs/tpm.md).
func keystoreInto(js []byte, passphrase string, dst []byte) error {
	k, err := keystore.DecryptKey(js, passphrase)
	if err != nil {
		return fmt.Errorf("%w: keystore: %v", hsm.ErrBadKey, err)
	}
	d := k.PrivateKey.D
	defer clear(d.Bits())
	if d.BitLen() > 256 || d.Sign() <= 0 {
		return fmt.Errorf("%w: keystore key out of range", hsm.ErrBadKey)
	}
	d.FillBytes(dst)
	return nil
}
