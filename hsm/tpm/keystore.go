//go:build !no_tpm

package tpm

import "github.com/signerd/signerd/hsm"

// keystoreInto decrypts an Ethereum keystore v3 JSON (hsm.DecryptKeystoreV3, which checks the
// key against the file's address) and moves its 32-byte private key into dst, zeroing the
// decoded copy. The keystore decoder's own transient buffers stay on the Go heap until reused;
// see docs/tpm.md.
func keystoreInto(js []byte, passphrase string, dst []byte) error {
	key, _, err := hsm.DecryptKeystoreV3(js, passphrase)
	if err != nil {
		return err
	}
	defer hsm.Zero(key)
	copy(dst, key)
	return nil
}
