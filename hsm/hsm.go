// Package hsm defines the key-backend interface that holds signerd's wallet keys, the typed
// errors every backend returns, and a registry through which backends are opened by name so a
// build can leave one out (build tags) and still fail with a clear "built without" error.
//
// Implementations live in child packages: hsm/pkcs11 (keys on a PKCS#11 token) and hsm/tpm
// (keys sealed by a TPM 2.0 and unsealed into locked memory).
package hsm

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/ethereum/go-ethereum/common"
)

// Origin says where a key's private half came from.
type Origin string

const (
	// OriginGenerated marks a key generated on the device (or, for TPM, in the appliance).
	OriginGenerated Origin = "generated"
	// OriginImported marks a key brought in from outside (raw bytes or keystore v3).
	OriginImported Origin = "imported"
)

// KeyInfo is what a backend reports about one key: the facts a security team cares about.
type KeyInfo struct {
	URI            string         `json:"uri"`     // pkcs11: (RFC 7512) or tpm: reference
	Address        common.Address `json:"address"` // Ethereum address of the key
	Label          string         `json:"label"`
	Backend        string         `json:"backend"` // "pkcs11" | "tpm"
	Origin         Origin         `json:"origin"`
	NonExtractable bool           `json:"non_extractable"`       // the device refuses to export it
	SealedPCRs     []int          `json:"sealed_pcrs,omitempty"` // TPM: PCRs the seal is bound to
	Retired        bool           `json:"retired"`               // retired keys are listed but never sign
	CreatedAt      time.Time      `json:"created_at,omitempty"`  // zero when the device does not say
	Facts          map[string]any `json:"facts,omitempty"`       // backend-specific extra facts
}

// GenerateOptions are the inputs to Backend.Generate.
type GenerateOptions struct {
	Label string
}

// ImportOptions are the inputs to Backend.Import. Exactly one of Key or Keystore is set.
// The backend zeroes Key once imported; callers must not reuse it.
type ImportOptions struct {
	Label      string
	Key        []byte // 32-byte raw secp256k1 private key
	Keystore   []byte // Ethereum keystore v3 JSON
	Passphrase string // keystore passphrase
}

// Health is a backend's self-report.
type Health struct {
	OK      bool      `json:"ok"`
	Reason  string    `json:"reason,omitempty"`
	Checked time.Time `json:"checked"`
}

// Signer turns 32-byte digests into 65-byte Ethereum signatures with one key.
type Signer interface {
	// Address is the Ethereum address the signatures recover to.
	Address() common.Address
	// SignDigest signs digest and returns r‖s‖v with low s and v in {27, 28}. The backend has
	// verified by recovery that the signature recovers to Address before returning it.
	SignDigest(ctx context.Context, digest [32]byte) ([65]byte, error)
}

// Backend holds wallet keys.
type Backend interface {
	// Name is the registry name of the backend ("pkcs11", "tpm").
	Name() string
	// List returns every key the backend holds, retired ones included.
	List(ctx context.Context) ([]KeyInfo, error)
	// Generate makes a new key.
	Generate(ctx context.Context, opts GenerateOptions) (KeyInfo, error)
	// Import brings in an existing key (for migration).
	Import(ctx context.Context, opts ImportOptions) (KeyInfo, error)
	// Retire marks a key so it no longer signs; it stays listed for audit.
	Retire(ctx context.Context, uri string) error
	// Destroy removes a key for good.
	Destroy(ctx context.Context, uri string) error
	// Health reports whether the backend can sign right now.
	Health(ctx context.Context) Health
	// Signer returns a signer for the key at uri.
	Signer(ctx context.Context, uri string) (Signer, error)
	// Close releases the device; it zeroes any key material held in memory.
	Close() error
}

// Typed errors. Backends wrap these (fmt.Errorf("...: %w", ErrX)) so callers can tell them apart
// with errors.Is; the wrapped text is for the log, the sentinel's text is safe for a caller.
var (
	ErrNotBuilt       = errors.New("hsm: backend not built into this binary")
	ErrUnknownBackend = errors.New("hsm: unknown backend")
	ErrInvalidOptions = errors.New("hsm: invalid backend options")
	ErrUnknownKey     = errors.New("hsm: unknown key")
	ErrKeyRetired     = errors.New("hsm: key is retired")
	ErrBadURI         = errors.New("hsm: malformed key URI")
	ErrBadPIN         = errors.New("hsm: wrong PIN or PIN source unusable")
	ErrTokenNotFound  = errors.New("hsm: token not found")
	ErrUnavailable    = errors.New("hsm: backend unavailable")
	ErrOverloaded     = errors.New("hsm: backend overloaded")
	ErrPolicyMismatch = errors.New("hsm: device state does not satisfy the key's seal policy")
	ErrCorrupt        = errors.New("hsm: key material corrupt")
	ErrBadKey         = errors.New("hsm: invalid key material")
	ErrSignature      = errors.New("hsm: signature did not verify against the key")
)

// Opener opens a backend from validated options.
type Opener func(ctx context.Context, opts Options) (Backend, error)

var (
	registryMu sync.RWMutex
	registry   = map[string]Opener{}
	notBuilt   = map[string]bool{}
)

// Register makes a backend available under name. Child packages call it from init.
func Register(name string, open Opener) {
	registryMu.Lock()
	defer registryMu.Unlock()
	registry[name] = open
}

// RegisterNotBuilt records that a known backend was compiled out, so Open can say so.
func RegisterNotBuilt(name string) {
	registryMu.Lock()
	defer registryMu.Unlock()
	notBuilt[name] = true
}

// Backends lists the registered backend names, sorted.
func Backends() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	out := make([]string, 0, len(registry))
	for n := range registry {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Open opens the backend named by opts.Type.
func Open(ctx context.Context, opts Options) (Backend, error) {
	registryMu.RLock()
	open, ok := registry[opts.Type]
	nb := notBuilt[opts.Type]
	registryMu.RUnlock()
	if !ok {
		if nb {
			return nil, fmt.Errorf("%w: built without %s (rebuild without the no_%s tag)", ErrNotBuilt, opts.Type, opts.Type)
		}
		return nil, fmt.Errorf("%w: %q", ErrUnknownBackend, opts.Type)
	}
	return open(ctx, opts)
}

// Options selects and configures a backend. Only the section named by Type is read.
type Options struct {
	Type   string        `yaml:"type" json:"type"`
	PKCS11 PKCS11Options `yaml:"pkcs11" json:"pkcs11"`
	TPM    TPMOptions    `yaml:"tpm" json:"tpm"`
}
