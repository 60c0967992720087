//go:build !no_tpm

package tpm

import (
	"context"
	"fmt"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/signerd/signerd/attestation"
	"github.com/signerd/signerd/hsm"
)

// Attest returns a deterministic CBOR attestation document (package attestation) for the key
// at uri: a TPM quote over the boot PCRs and the key's sealing PCRs whose qualifying data binds
// nonce, the wallet public key and the key's sealing policy digest. Verify it with
// attestation.Verify. Retired keys can be attested (their blobs still exist).
func (b *Backend) Attest(ctx context.Context, uri string, nonce []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k, err := b.lookup(uri)
	if err != nil {
		return nil, err
	}
	k.mu.RLock()
	kf, destroyed, corrupt := k.meta, k.destroyed, k.corrupt
	k.mu.RUnlock()
	switch {
	case destroyed:
		return nil, fmt.Errorf("%w: %s", hsm.ErrUnknownKey, uri)
	case corrupt != nil:
		return nil, corrupt
	case len(kf.PublicKey) != 65:
		return nil, fmt.Errorf("%w: key file of %s predates public keys; import the key again to attest it", hsm.ErrInvalidOptions, uri)
	}
	var doc *attestation.Document
	err = b.withTPM(func(t transport.TPM, _ srkInfo) error {
		var err error
		doc, err = attestation.Quote(t, attestation.Input{
			Nonce: nonce, WalletPubKey: kf.PublicKey, SealPolicy: kf.PolicyDigest, SealPCRs: kf.PCRs,
		})
		return err // a link failure drops the connection in withTPM
	})
	if err != nil {
		return nil, fmt.Errorf("tpm: attest %s: %w", uri, err)
	}
	return doc.Marshal()
}
