//go:build !no_tpm

package tpm

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/crypto"
	"github.com/ethereum/go-ethereum/crypto/secp256k1"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/hsm/lockedmem"
)

// Name is the registry name of this backend.
const Name = "tpm"

const (
	defaultHealthInterval = time.Second
	defaultCommandTimeout = 30 * time.Second
	// scratchBuffers bounds concurrent per-signature unseals holding a key (the TPM is serial
	// anyway; more buffers would only lock more memory).
	scratchBuffers = 4
)

func init() {
	hsm.Register(Name, func(ctx context.Context, opts hsm.Options) (hsm.Backend, error) {
		return Open(ctx, opts.TPM)
	})
}

// Backend keeps secp256k1 wallet keys sealed by a TPM 2.0. It owns one serialised connection
// to the TPM, reconnects by itself when the TPM goes away and comes back, and holds unsealed
// keys only in locked memory outside the Go heap.
type Backend struct {
	ep      endpoint
	keyDir  string
	pcrs    []int
	perSig  bool
	encrypt bool
	timeout time.Duration
	every   time.Duration
	now     func() time.Time

	tpmMu sync.Mutex // serialises every TPM command sequence; guards conn and srk
	conn  transport.TPMCloser
	srk   srkInfo
	sc    sessionCache // per-signature mode: reused salted sessions of conn

	healthy  atomic.Bool
	reason   atomic.Pointer[string]
	zeroized atomic.Bool
	closed   atomic.Bool

	keysMu sync.RWMutex // guards keys (the map, not the entries)
	keys   map[string]*key

	scratch chan *lockedmem.Buffer // per-signature mode: locked buffers for unsealed keys

	wake chan struct{}
	stop chan struct{}
	wg   sync.WaitGroup
}

// key is one sealed key and, in unseal-once mode, its unsealed copy.
type key struct {
	id string

	mu        sync.RWMutex
	meta      *keyFile // nil when the file is corrupt
	corrupt   error
	destroyed bool
	mem       *lockedmem.Buffer // unseal-once: 32 bytes of locked memory
	sec       []byte            // mem's bytes; valid only when ready
	ready     bool
	err       error // why the key is not ready (policy mismatch, TPM unavailable, ...)
}

// Compile-time checks.
var (
	_ hsm.Backend  = (*Backend)(nil)
	_ hsm.Zeroizer = (*Backend)(nil)
)

// Open validates opts, connects to the TPM, loads the storage root key and the key files in
// KeyDir and, unless UnsealPerSignature is set, unseals every active key into locked memory.
// A key that cannot be unsealed (PCRs changed, corrupt blob) does not fail Open: it is listed
// with its state and its signer reports the error. An unreachable TPM fails Open with
// hsm.ErrUnavailable.
func Open(ctx context.Context, opts hsm.TPMOptions) (*Backend, error) {
	ep, err := parseEndpoint(opts.Device, opts.Address)
	if err != nil {
		return nil, fmt.Errorf("%w: tpm: %v", hsm.ErrInvalidOptions, err)
	}
	if opts.KeyDir == "" {
		return nil, fmt.Errorf("%w: tpm: key_dir is required", hsm.ErrInvalidOptions)
	}
	pcrs := slices.Clone(opts.PCRs)
	if err := validPCRs(pcrs); err != nil {
		return nil, fmt.Errorf("%w: tpm: pcrs: %v", hsm.ErrInvalidOptions, err)
	}
	if opts.HealthInterval < 0 || opts.CommandTimeout < 0 {
		return nil, fmt.Errorf("%w: tpm: negative interval", hsm.ErrInvalidOptions)
	}
	if err := os.MkdirAll(opts.KeyDir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: tpm: key_dir: %v", hsm.ErrInvalidOptions, err)
	}
	b := &Backend{
		ep:      ep,
		keyDir:  opts.KeyDir,
		pcrs:    pcrs,
		perSig:  opts.UnsealPerSignature,
		encrypt: !opts.InsecureNoParameterEncryption,
		timeout: opts.CommandTimeout,
		every:   opts.HealthInterval,
		now:     time.Now,
		keys:    map[string]*key{},
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
	}
	if b.timeout == 0 {
		b.timeout = defaultCommandTimeout
	}
	if b.every == 0 {
		b.every = defaultHealthInterval
	}
	b.setReason("connecting")
	ids, err := listKeyIDs(b.keyDir)
	if err != nil {
		return nil, fmt.Errorf("%w: tpm: key_dir: %v", hsm.ErrInvalidOptions, err)
	}
	for _, id := range ids {
		k := &key{id: id}
		kf, err := readKeyFile(b.keyDir, id)
		if err != nil {
			k.corrupt = err
		} else {
			k.meta = kf
		}
		b.keys[id] = k
	}
	if b.perSig {
		b.scratch = make(chan *lockedmem.Buffer, scratchBuffers)
		for range scratchBuffers {
			m, err := lockedmem.New(32)
			if err != nil {
				b.releaseMemory()
				return nil, fmt.Errorf("%w: tpm: %v", hsm.ErrUnavailable, err)
			}
			b.scratch <- m
		}
	}
	b.tpmMu.Lock()
	err = b.connectLocked()
	b.tpmMu.Unlock()
	if err != nil {
		b.releaseMemory()
		return nil, err
	}
	b.wg.Add(1)
	go b.monitor()
	return b, nil
}

// Name implements hsm.Backend.
func (b *Backend) Name() string { return Name }

func (b *Backend) setReason(r string) { b.reason.Store(&r) }

// connectLocked opens the TPM, loads the SRK and (unseal-once mode) unseals the active keys.
// Called with tpmMu held.
func (b *Backend) connectLocked() error {
	if b.conn != nil {
		return nil
	}
	t, err := dial(b.ep, b.timeout)
	if err != nil {
		b.setReason("TPM unreachable")
		return unavailable("connect to "+b.ep.String(), err)
	}
	if b.ep.simulator() {
		if err := flushLeftovers(t); err != nil {
			_ = t.Close()
			b.setReason("TPM unreachable")
			return unavailable("flush stale handles", err)
		}
	}
	srk, err := createSRK(t)
	if err != nil {
		_ = t.Close()
		b.setReason("TPM refused the storage root key")
		return unavailable("storage root key", err)
	}
	b.conn, b.srk = t, srk
	if !b.perSig && !b.zeroized.Load() {
		for _, k := range b.snapshotKeys() {
			if err := b.unsealCachedLocked(k); err != nil && isLinkError(err) {
				b.dropLocked(err)
				return err
			}
		}
	}
	b.healthy.Store(true)
	b.setReason("")
	return nil
}

// dropLocked closes a failed connection: health turns false, cached keys are zeroed (they are
// unsealed again when the TPM is back), and the monitor is woken to reconnect.
func (b *Backend) dropLocked(cause error) {
	b.healthy.Store(false)
	b.setReason(fmt.Sprintf("TPM connection lost (%v); reconnecting", cause))
	b.sc.discard(nil) // the sessions die with the connection
	if b.conn != nil {
		_ = b.conn.Close()
		b.conn = nil
	}
	if !b.perSig {
		for _, k := range b.snapshotKeys() {
			k.mu.Lock()
			k.forgetLocked(fmt.Errorf("%w: TPM connection lost", hsm.ErrUnavailable))
			k.mu.Unlock()
		}
	}
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// withTPM runs fn on the connection, serialised, and drops the connection on a link failure.
func (b *Backend) withTPM(fn func(t transport.TPM, srk srkInfo) error) error {
	b.tpmMu.Lock()
	defer b.tpmMu.Unlock()
	if b.closed.Load() {
		return fmt.Errorf("%w: backend closed", hsm.ErrUnavailable)
	}
	if b.conn == nil {
		return fmt.Errorf("%w: TPM connection lost; reconnecting", hsm.ErrUnavailable)
	}
	err := fn(b.conn, b.srk)
	if err != nil && isLinkError(err) {
		b.dropLocked(err)
		if !errors.Is(err, hsm.ErrUnavailable) {
			err = unavailable("TPM link", err)
		}
	}
	return err
}

// monitor probes the TPM every interval and reconnects when it is gone.
func (b *Backend) monitor() {
	defer b.wg.Done()
	tick := time.NewTicker(b.every)
	defer tick.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-tick.C:
		case <-b.wake:
			// Give the TPM a moment; a reconnect attempt right after a failure usually fails.
			select {
			case <-b.stop:
				return
			case <-time.After(b.every / 4):
			}
		}
		b.probe()
	}
}

// probe checks the link (GetRandom) or reconnects.
func (b *Backend) probe() {
	b.tpmMu.Lock()
	defer b.tpmMu.Unlock()
	if b.closed.Load() {
		return
	}
	if b.conn == nil {
		_ = b.connectLocked()
		return
	}
	if _, err := (tpm2.GetRandom{BytesRequested: 8}).Execute(b.conn); err != nil {
		if _, isRC := tpmRC(err); !isRC || isLinkError(err) {
			b.dropLocked(err)
		}
		return
	}
	if !b.perSig && !b.zeroized.Load() {
		if err := b.checkPoliciesLocked(); err != nil && isLinkError(err) {
			b.dropLocked(err)
		}
	}
}

// checkPoliciesLocked keeps unseal-once keys in step with the PCRs: it recomputes the PCR
// policy digest of each key's PCR set (a trial session; the keys are not unsealed for this),
// zeroes a cached key whose policy no longer holds, and unseals again a key whose policy holds
// again. Called by the monitor with tpmMu held.
func (b *Backend) checkPoliciesLocked() error {
	current := map[string][]byte{}
	for _, k := range b.snapshotKeys() {
		k.mu.RLock()
		kf, ready, kerr := k.meta, k.ready, k.err
		skip := kf == nil || k.destroyed || kf.Retired || errors.Is(kerr, hsm.ErrCorrupt)
		k.mu.RUnlock()
		if skip {
			continue
		}
		holds := true
		if len(kf.PCRs) > 0 {
			set := fmt.Sprint(kf.PCRs)
			d, ok := current[set]
			if !ok {
				var err error
				if d, err = pcrPolicyDigest(b.conn, kf.PCRs); err != nil {
					return err
				}
				current[set] = d
			}
			holds = subtle.ConstantTimeCompare(d, kf.PolicyDigest) == 1
		}
		switch {
		case ready && !holds:
			k.mu.Lock()
			k.forgetLocked(fmt.Errorf("%w: PCRs %v changed while the key was unsealed; key zeroed", hsm.ErrPolicyMismatch, kf.PCRs))
			k.mu.Unlock()
		case !ready && holds:
			if err := b.unsealCachedLocked(k); err != nil && isLinkError(err) {
				return err
			}
		}
	}
	return nil
}

// Health implements hsm.Backend: it probes the TPM now (reconnecting if it was gone).
func (b *Backend) Health(ctx context.Context) hsm.Health {
	if !b.closed.Load() {
		b.probe()
	}
	h := hsm.Health{OK: b.healthy.Load() && !b.closed.Load() && !b.zeroized.Load(), Checked: b.now()}
	switch {
	case b.closed.Load():
		h.Reason = "backend closed"
	case b.zeroized.Load():
		h.Reason = "key material zeroized (kill switch); reopen the backend"
	case !h.OK:
		h.Reason = *b.reason.Load()
	}
	return h
}

func (b *Backend) snapshotKeys() []*key {
	b.keysMu.RLock()
	defer b.keysMu.RUnlock()
	out := make([]*key, 0, len(b.keys))
	for _, k := range b.keys {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// lookup finds the key a URI names.
func (b *Backend) lookup(uri string) (*key, error) {
	id, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	b.keysMu.RLock()
	k, ok := b.keys[id]
	b.keysMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w: %s", hsm.ErrUnknownKey, uri)
	}
	return k, nil
}

// unsealCachedLocked unseals k into its locked buffer (unseal-once mode). tpmMu is held.
func (b *Backend) unsealCachedLocked(k *key) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.meta == nil || k.destroyed || k.meta.Retired || k.ready {
		return nil
	}
	if k.mem == nil {
		m, err := lockedmem.New(32)
		if err != nil {
			k.err = fmt.Errorf("%w: %v", hsm.ErrUnavailable, err)
			return k.err
		}
		k.mem, k.sec = m, m.Bytes()
	}
	if err := unsealInto(b.conn, b.srk, k.meta, k.sec, b.encrypt, nil); err != nil {
		k.forgetLocked(err)
		return err
	}
	if addr, err := addressOf(k.sec); err != nil || addr != k.meta.Address {
		k.forgetLocked(fmt.Errorf("%w: unsealed key does not match the recorded address of %s", hsm.ErrCorrupt, KeyURI(k.id)))
		return k.err
	}
	k.ready, k.err = true, nil
	return nil
}

// forgetLocked zeroes the cached key and records why it is not usable. k.mu is held.
func (k *key) forgetLocked(why error) {
	if k.mem != nil {
		k.mem.Zero()
	}
	k.ready = false
	k.err = why
}

// Signer implements hsm.Backend.
func (b *Backend) Signer(ctx context.Context, uri string) (hsm.Signer, error) {
	k, err := b.lookup(uri)
	if err != nil {
		return nil, err
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	switch {
	case k.destroyed:
		return nil, fmt.Errorf("%w: %s", hsm.ErrUnknownKey, uri)
	case k.corrupt != nil:
		return nil, k.corrupt
	case k.meta.Retired:
		return nil, fmt.Errorf("%w: %s", hsm.ErrKeyRetired, uri)
	case !b.perSig && !k.ready && k.err != nil && !errors.Is(k.err, hsm.ErrUnavailable):
		return nil, k.err
	}
	return &signer{b: b, k: k, addr: k.meta.Address}, nil
}

// signer signs with one key.
type signer struct {
	b    *Backend
	k    *key
	addr common.Address
}

func (s *signer) Address() common.Address { return s.addr }

// SignDigest implements hsm.Signer. It fails with hsm.ErrUnavailable while the TPM is gone
// (in both modes: the backend fails closed), hsm.ErrKeyRetired / hsm.ErrUnknownKey after
// Retire / Destroy, and hsm.ErrPolicyMismatch when the PCRs no longer satisfy the seal.
func (s *signer) SignDigest(ctx context.Context, digest [32]byte) ([65]byte, error) {
	var sig [65]byte
	if err := ctx.Err(); err != nil {
		return sig, err
	}
	b := s.b
	if b.closed.Load() {
		return sig, fmt.Errorf("%w: backend closed", hsm.ErrUnavailable)
	}
	if b.zeroized.Load() {
		return sig, fmt.Errorf("%w: key material zeroized", hsm.ErrUnavailable)
	}
	if !b.healthy.Load() {
		return sig, fmt.Errorf("%w: TPM unreachable", hsm.ErrUnavailable)
	}
	var raw []byte
	var err error
	if b.perSig {
		raw, err = s.signPerSignature(ctx, digest)
	} else {
		raw, err = s.signCached(digest)
	}
	if err != nil {
		return sig, err
	}
	copy(sig[:], raw)
	sig[64] += 27
	if err := hsm.VerifyEth(digest, sig, s.addr); err != nil {
		if b.perSig {
			// The key just unsealed is not the one the key file names: metadata and blob disagree.
			return [65]byte{}, fmt.Errorf("%w: sealed key does not match the recorded address of %s: %w", hsm.ErrCorrupt, KeyURI(s.k.id), err)
		}
		return [65]byte{}, err
	}
	return sig, nil
}

// usable checks the key's lifecycle state. k.mu is held.
func (k *key) usable() error {
	switch {
	case k.destroyed:
		return fmt.Errorf("%w: %s", hsm.ErrUnknownKey, KeyURI(k.id))
	case k.corrupt != nil:
		return k.corrupt
	case k.meta.Retired:
		return fmt.Errorf("%w: %s", hsm.ErrKeyRetired, KeyURI(k.id))
	}
	return nil
}

func (s *signer) signCached(digest [32]byte) ([]byte, error) {
	k := s.k
	for attempt := 0; ; attempt++ {
		k.mu.RLock()
		if err := k.usable(); err != nil {
			k.mu.RUnlock()
			return nil, err
		}
		if k.ready {
			raw, err := secp256k1.Sign(digest[:], k.sec)
			k.mu.RUnlock()
			if err != nil {
				return nil, fmt.Errorf("%w: sign: %v", hsm.ErrSignature, err)
			}
			return raw, nil
		}
		why := k.err
		k.mu.RUnlock()
		if attempt > 0 {
			if why == nil {
				why = fmt.Errorf("%w: key not unsealed", hsm.ErrUnavailable)
			}
			return nil, why
		}
		// Not unsealed yet (e.g. the TPM was away): try once now.
		if s.b.zeroized.Load() {
			return nil, fmt.Errorf("%w: key material zeroized", hsm.ErrUnavailable)
		}
		if err := s.b.withTPM(func(transport.TPM, srkInfo) error { return s.b.unsealCachedLocked(k) }); err != nil {
			return nil, err
		}
	}
}

func (s *signer) signPerSignature(ctx context.Context, digest [32]byte) ([]byte, error) {
	k := s.k
	k.mu.RLock()
	err := k.usable()
	var kf *keyFile
	if err == nil {
		kf = k.meta
	}
	k.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	var buf *lockedmem.Buffer
	select {
	case buf = <-s.b.scratch:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() {
		buf.Zero()
		s.b.scratch <- buf
	}()
	sec := buf.Bytes()
	if sec == nil {
		return nil, fmt.Errorf("%w: backend closed", hsm.ErrUnavailable)
	}
	if err := s.b.withTPM(func(t transport.TPM, srk srkInfo) error {
		return unsealInto(t, srk, kf, sec, s.b.encrypt, &s.b.sc)
	}); err != nil {
		return nil, err
	}
	raw, err := secp256k1.Sign(digest[:], sec)
	if err != nil {
		return nil, fmt.Errorf("%w: sign: %v", hsm.ErrSignature, err)
	}
	// A Retire or Destroy that raced with the unseal wins: the signature is dropped.
	k.mu.RLock()
	err = k.usable()
	k.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	return raw, nil
}

// addressProbe is the fixed digest signed to derive a key's address: signing and recovering
// keeps the private key in C and locked memory (no big.Int copies on the Go heap).
var addressProbe = crypto.Keccak256([]byte("signerd/hsm/tpm: address derivation"))

// addressOf derives the Ethereum address of a 32-byte private key, rejecting invalid scalars.
func addressOf(sec []byte) (common.Address, error) {
	_, addr, err := publicOf(sec)
	return addr, err
}

// publicOf derives the uncompressed public key and address of a 32-byte private key.
func publicOf(sec []byte) ([]byte, common.Address, error) {
	sig, err := secp256k1.Sign(addressProbe, sec)
	if err != nil {
		return nil, common.Address{}, fmt.Errorf("%w: not a valid secp256k1 private key", hsm.ErrBadKey)
	}
	pub, err := secp256k1.RecoverPubkey(addressProbe, sig)
	if err != nil {
		return nil, common.Address{}, fmt.Errorf("%w: recovery failed", hsm.ErrBadKey)
	}
	return pub, common.BytesToAddress(crypto.Keccak256(pub[1:])[12:]), nil
}

// Generate implements hsm.Backend: 32 bytes from crypto/rand, generated straight into locked
// memory, sealed, checked by unsealing, then written to KeyDir.
func (b *Backend) Generate(ctx context.Context, opts hsm.GenerateOptions) (hsm.KeyInfo, error) {
	m, err := lockedmem.New(32)
	if err != nil {
		return hsm.KeyInfo{}, fmt.Errorf("%w: %v", hsm.ErrUnavailable, err)
	}
	sec := m.Bytes()
	for {
		if _, err := rand.Read(sec); err != nil {
			_ = m.Close()
			return hsm.KeyInfo{}, fmt.Errorf("%w: crypto/rand: %v", hsm.ErrUnavailable, err)
		}
		if _, err := addressOf(sec); err == nil {
			break
		}
	}
	return b.store(ctx, m, opts.Label, hsm.OriginGenerated)
}

// Import implements hsm.Backend: a raw 32-byte key (zeroed once copied) or a keystore v3 JSON.
func (b *Backend) Import(ctx context.Context, opts hsm.ImportOptions) (hsm.KeyInfo, error) {
	if (len(opts.Key) == 0) == (len(opts.Keystore) == 0) {
		clear(opts.Key)
		return hsm.KeyInfo{}, fmt.Errorf("%w: set exactly one of Key and Keystore", hsm.ErrBadKey)
	}
	m, err := lockedmem.New(32)
	if err != nil {
		clear(opts.Key)
		return hsm.KeyInfo{}, fmt.Errorf("%w: %v", hsm.ErrUnavailable, err)
	}
	sec := m.Bytes()
	if len(opts.Key) > 0 {
		ok := len(opts.Key) == 32
		copy(sec, opts.Key)
		clear(opts.Key)
		if !ok {
			_ = m.Close()
			return hsm.KeyInfo{}, fmt.Errorf("%w: raw key must be 32 bytes", hsm.ErrBadKey)
		}
	} else if err := keystoreInto(opts.Keystore, opts.Passphrase, sec); err != nil {
		_ = m.Close()
		return hsm.KeyInfo{}, err
	}
	if _, err := addressOf(sec); err != nil {
		_ = m.Close()
		return hsm.KeyInfo{}, err
	}
	return b.store(ctx, m, opts.Label, hsm.OriginImported)
}

// store seals the key in m, verifies the blob unseals to the same key, writes the key file and
// registers the key. It takes ownership of m.
func (b *Backend) store(ctx context.Context, m *lockedmem.Buffer, label string, origin hsm.Origin) (hsm.KeyInfo, error) {
	keep := false
	defer func() {
		if !keep {
			_ = m.Close()
		}
	}()
	if err := ctx.Err(); err != nil {
		return hsm.KeyInfo{}, err
	}
	if b.zeroized.Load() {
		return hsm.KeyInfo{}, fmt.Errorf("%w: key material zeroized", hsm.ErrUnavailable)
	}
	sec := m.Bytes()
	pub, addr, err := publicOf(sec)
	if err != nil {
		return hsm.KeyInfo{}, err
	}
	for _, k := range b.snapshotKeys() {
		k.mu.RLock()
		dup := k.meta != nil && !k.destroyed && k.meta.Address == addr
		k.mu.RUnlock()
		if dup {
			return hsm.KeyInfo{}, fmt.Errorf("%w: address %s is already held as %s", hsm.ErrBadKey, addr.Hex(), KeyURI(k.id))
		}
	}
	var idb [idLen / 2]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return hsm.KeyInfo{}, fmt.Errorf("%w: crypto/rand: %v", hsm.ErrUnavailable, err)
	}
	kf := &keyFile{
		Version:   fileVersion,
		ID:        hex.EncodeToString(idb[:]),
		Address:   addr,
		PublicKey: pub,
		Label:     label,
		Origin:    origin,
		PCRs:      slices.Clone(b.pcrs),
		Created:   b.now().UTC().Truncate(time.Second),
	}
	check, err := lockedmem.New(32)
	if err != nil {
		return hsm.KeyInfo{}, fmt.Errorf("%w: %v", hsm.ErrUnavailable, err)
	}
	defer check.Close()
	err = b.withTPM(func(t transport.TPM, srk srkInfo) error {
		s, err := seal(t, srk, sec, kf.PCRs, b.encrypt)
		if err != nil {
			return unavailable("seal", err)
		}
		kf.Public, kf.Private, kf.PolicyDigest, kf.ParentName = s.public, s.private, s.policy, slices.Clone(srk.name.Buffer)
		if err := unsealInto(t, srk, kf, check.Bytes(), b.encrypt, nil); err != nil {
			return fmt.Errorf("sealed blob does not unseal: %w", err)
		}
		if subtle.ConstantTimeCompare(check.Bytes(), sec) != 1 {
			return fmt.Errorf("%w: sealed blob unseals to another key", hsm.ErrCorrupt)
		}
		return nil
	})
	if err != nil {
		return hsm.KeyInfo{}, err
	}
	if err := writeKeyFile(b.keyDir, kf); err != nil {
		return hsm.KeyInfo{}, fmt.Errorf("%w: write key file: %v", hsm.ErrUnavailable, err)
	}
	k := &key{id: kf.ID, meta: kf}
	if !b.perSig {
		k.mem, k.sec, k.ready = m, sec, true
		keep = true
	}
	b.keysMu.Lock()
	b.keys[kf.ID] = k
	b.keysMu.Unlock()
	return b.info(k), nil
}

// Retire implements hsm.Backend: the key file is marked retired (atomically) and the cached
// key is zeroed; the key stays listed but never signs again.
func (b *Backend) Retire(ctx context.Context, uri string) error {
	k, err := b.lookup(uri)
	if err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.destroyed {
		return fmt.Errorf("%w: %s", hsm.ErrUnknownKey, uri)
	}
	if k.corrupt != nil {
		return k.corrupt
	}
	if k.meta.Retired {
		return nil
	}
	kf := *k.meta
	now := b.now().UTC().Truncate(time.Second)
	kf.Retired, kf.RetiredAt = true, &now
	if err := writeKeyFile(b.keyDir, &kf); err != nil {
		return fmt.Errorf("%w: write key file: %v", hsm.ErrUnavailable, err)
	}
	k.meta = &kf
	k.forgetLocked(fmt.Errorf("%w: %s", hsm.ErrKeyRetired, uri))
	return nil
}

// Destroy implements hsm.Backend: the sealed blob is deleted and the cached key zeroed. Without
// a backup (an imported keystore) the key is gone for good.
func (b *Backend) Destroy(ctx context.Context, uri string) error {
	k, err := b.lookup(uri)
	if err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.destroyed {
		return fmt.Errorf("%w: %s", hsm.ErrUnknownKey, uri)
	}
	if err := removeKeyFile(b.keyDir, k.id); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: remove key file: %v", hsm.ErrUnavailable, err)
	}
	k.destroyed = true
	k.forgetLocked(fmt.Errorf("%w: %s", hsm.ErrUnknownKey, uri))
	if k.mem != nil {
		_ = k.mem.Close()
		k.mem, k.sec = nil, nil
	}
	b.keysMu.Lock()
	delete(b.keys, k.id)
	b.keysMu.Unlock()
	return nil
}

// List implements hsm.Backend. Corrupt key files are listed with state "corrupt".
func (b *Backend) List(ctx context.Context) ([]hsm.KeyInfo, error) {
	keys := b.snapshotKeys()
	out := make([]hsm.KeyInfo, 0, len(keys))
	for _, k := range keys {
		out = append(out, b.info(k))
	}
	return out, nil
}

func (b *Backend) info(k *key) hsm.KeyInfo {
	k.mu.RLock()
	defer k.mu.RUnlock()
	ki := hsm.KeyInfo{URI: KeyURI(k.id), Backend: Name, Facts: map[string]any{}}
	if k.corrupt != nil {
		ki.Facts["state"] = "corrupt"
		return ki
	}
	kf := k.meta
	ki.Address, ki.Label, ki.Origin = kf.Address, kf.Label, kf.Origin
	ki.SealedPCRs = slices.Clone(kf.PCRs)
	ki.Retired, ki.CreatedAt = kf.Retired, kf.Created
	// The TPM object is fixedTPM, but the secret is unsealed into this process to sign.
	ki.NonExtractable = false
	mode := "once"
	if b.perSig {
		mode = "per_signature"
	}
	state := "sealed"
	switch {
	case kf.Retired:
		state = "retired"
	case b.perSig:
	case k.ready:
		state = "unsealed"
	case errors.Is(k.err, hsm.ErrPolicyMismatch):
		state = "policy_mismatch"
	case errors.Is(k.err, hsm.ErrCorrupt):
		state = "corrupt"
	case k.err != nil:
		state = "unavailable"
	}
	ki.Facts["state"] = state
	ki.Facts["unseal_mode"] = mode
	ki.Facts["storage_key"] = "ECC NIST P-256 SRK (owner hierarchy, TCG template)"
	ki.Facts["sealed_object"] = "keyedHash sealed data, fixedTPM, fixedParent"
	if b.encrypt {
		ki.Facts["parameter_encryption"] = "AES-128-CFB, session salted to the SRK"
	} else {
		ki.Facts["parameter_encryption"] = "off"
	}
	if len(kf.PCRs) > 0 {
		ki.Facts["pcr_bank"] = "sha256"
		ki.Facts["policy_digest"] = hex.EncodeToString(kf.PolicyDigest)
	}
	if kf.RetiredAt != nil {
		ki.Facts["retired_at"] = kf.RetiredAt.Format(time.RFC3339)
	}
	return ki
}

// Zeroize implements hsm.Zeroizer: every cached key is overwritten with zeros now and the
// backend refuses to sign, generate or import until it is closed and opened again.
func (b *Backend) Zeroize() {
	b.zeroized.Store(true)
	for _, k := range b.snapshotKeys() {
		k.mu.Lock()
		k.forgetLocked(fmt.Errorf("%w: key material zeroized", hsm.ErrUnavailable))
		k.mu.Unlock()
	}
}

// testHookReleased, when set by tests, sees each key buffer after it is zeroed and before it
// is unmapped by Close.
var testHookReleased func(id string, mem []byte)

// Close implements hsm.Backend: it stops the monitor, zeroes and unmaps every key buffer and
// closes the TPM connection.
func (b *Backend) Close() error {
	if b.closed.Swap(true) {
		return nil
	}
	close(b.stop)
	b.wg.Wait()
	b.tpmMu.Lock()
	if b.conn != nil {
		b.sc.discard(b.conn)
		if b.ep.simulator() {
			_, _ = (tpm2.FlushContext{FlushHandle: b.srk.handle}).Execute(b.conn)
		}
		_ = b.conn.Close()
		b.conn = nil
	}
	b.healthy.Store(false)
	b.tpmMu.Unlock()
	b.releaseMemory()
	return nil
}

func (b *Backend) releaseMemory() {
	for _, k := range b.snapshotKeys() {
		k.mu.Lock()
		k.forgetLocked(fmt.Errorf("%w: backend closed", hsm.ErrUnavailable))
		if k.mem != nil {
			if testHookReleased != nil {
				testHookReleased(k.id, k.mem.Bytes())
			}
			_ = k.mem.Close()
			k.mem, k.sec = nil, nil
		}
		k.mu.Unlock()
	}
	if b.scratch != nil {
		// Close every scratch buffer (waiting for in-flight signatures to hand theirs back) and
		// put the closed buffers back: a late signer then finds no memory and fails.
		bufs := make([]*lockedmem.Buffer, 0, scratchBuffers)
		for range scratchBuffers {
			m := <-b.scratch
			_ = m.Close()
			bufs = append(bufs, m)
		}
		for _, m := range bufs {
			b.scratch <- m
		}
	}
}
