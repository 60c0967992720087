package server

import (
	"context"
	"fmt"
	"sync"

	"github.com/ethereum/go-ethereum/common"

	"github.com/signerd/signerd/hsm"
)

// keyring resolves wallet addresses to signers of the key backend. It is rebuilt after every
// key operation (generate, import, retire) so keys change without a restart; the hot path
// takes one read lock for a map lookup.
type keyring struct {
	backend hsm.Backend

	mu      sync.RWMutex
	signers map[common.Address]hsm.Signer
	order   []common.Address // backend list order: the first is the default wallet
	infos   []hsm.KeyInfo
}

func newKeyring(b hsm.Backend) *keyring {
	return &keyring{backend: b, signers: map[common.Address]hsm.Signer{}}
}

// reset makes b the backend and refreshes from it (a reopened backend).
func (k *keyring) reset(ctx context.Context, b hsm.Backend) error {
	k.mu.Lock()
	old := k.backend
	k.backend = b
	k.mu.Unlock()
	if err := k.refresh(ctx); err != nil {
		k.mu.Lock()
		k.backend = old
		k.mu.Unlock()
		return err
	}
	return nil
}

// refresh lists the backend's keys and opens a signer for each active one.
func (k *keyring) refresh(ctx context.Context) error {
	k.mu.RLock()
	b := k.backend
	k.mu.RUnlock()
	infos, err := b.List(ctx)
	if err != nil {
		return fmt.Errorf("listing keys: %w", err)
	}
	signers := make(map[common.Address]hsm.Signer, len(infos))
	var order []common.Address
	for _, in := range infos {
		if in.Retired {
			continue
		}
		if _, dup := signers[in.Address]; dup {
			continue
		}
		s, err := b.Signer(ctx, in.URI)
		if err != nil {
			return fmt.Errorf("opening signer for %s: %w", in.URI, err)
		}
		signers[in.Address] = s
		order = append(order, in.Address)
	}
	k.mu.Lock()
	k.signers, k.order, k.infos = signers, order, infos
	k.mu.Unlock()
	return nil
}

// Signer implements pipeline.Keys.
func (k *keyring) Signer(_ context.Context, wallet common.Address) (hsm.Signer, error) {
	k.mu.RLock()
	s, ok := k.signers[wallet]
	k.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w: wallet %s", hsm.ErrUnknownKey, wallet.Hex())
	}
	return s, nil
}

// addresses lists the active wallets, default first.
func (k *keyring) addresses() []common.Address {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return append([]common.Address(nil), k.order...)
}

// list returns every key the backend reported at the last refresh.
func (k *keyring) list() []hsm.KeyInfo {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return append([]hsm.KeyInfo(nil), k.infos...)
}
