//go:build !no_tpm

package tpm

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/common/hexutil"
	"github.com/ethereum/go-ethereum/crypto"

	"github.com/signerd/signerd/hsm"
)

// fileExt names sealed key files in KeyDir: <id>.tpmkey.
const fileExt = ".tpmkey"

// fileVersion is the current key file format.
const fileVersion = 1

// keyFile is one sealed key on disk: the TPM blobs (useless without the TPM that sealed them)
// and the metadata a security team cares about. It holds no plaintext key material.
type keyFile struct {
	Version      int            `json:"version"`
	ID           string         `json:"id"`
	Address      common.Address `json:"address"`
	PublicKey    hexutil.Bytes  `json:"public_key,omitempty"` // uncompressed secp256k1 (65 bytes)
	Label        string         `json:"label"`
	Origin       hsm.Origin     `json:"origin"`
	PCRs         []int          `json:"pcrs,omitempty"`          // sha256 bank
	PolicyDigest hexutil.Bytes  `json:"policy_digest,omitempty"` // PolicyPCR digest the seal requires
	ParentName   hexutil.Bytes  `json:"parent_name"`             // TPM name of the storage root key
	Created      time.Time      `json:"created"`
	Retired      bool           `json:"retired,omitempty"`
	RetiredAt    *time.Time     `json:"retired_at,omitempty"`
	Public       []byte         `json:"public"`  // TPM2B_PUBLIC of the sealed object
	Private      []byte         `json:"private"` // TPM2B_PRIVATE (encrypted by the TPM)
}

func keyPath(dir, id string) string { return filepath.Join(dir, id+fileExt) }

// readKeyFile reads and validates one key file; any damage is reported as hsm.ErrCorrupt.
func readKeyFile(dir, id string) (*keyFile, error) {
	b, err := os.ReadFile(keyPath(dir, id))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s", hsm.ErrUnknownKey, KeyURI(id))
		}
		return nil, fmt.Errorf("%w: read %s: %v", hsm.ErrUnavailable, KeyURI(id), err)
	}
	var kf keyFile
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&kf); err != nil {
		return nil, fmt.Errorf("%w: key file of %s: %v", hsm.ErrCorrupt, KeyURI(id), err)
	}
	switch {
	case kf.Version != fileVersion:
		return nil, fmt.Errorf("%w: key file of %s: version %d", hsm.ErrCorrupt, KeyURI(id), kf.Version)
	case kf.ID != id:
		return nil, fmt.Errorf("%w: key file of %s names id %q", hsm.ErrCorrupt, KeyURI(id), kf.ID)
	case kf.Address == (common.Address{}):
		return nil, fmt.Errorf("%w: key file of %s has no address", hsm.ErrCorrupt, KeyURI(id))
	case len(kf.Public) == 0 || len(kf.Private) == 0 || len(kf.ParentName) == 0:
		return nil, fmt.Errorf("%w: key file of %s lacks a blob", hsm.ErrCorrupt, KeyURI(id))
	case kf.Origin != hsm.OriginGenerated && kf.Origin != hsm.OriginImported:
		return nil, fmt.Errorf("%w: key file of %s: origin %q", hsm.ErrCorrupt, KeyURI(id), kf.Origin)
	case len(kf.PCRs) > 0 && len(kf.PolicyDigest) != 32:
		return nil, fmt.Errorf("%w: key file of %s: PCRs without a policy digest", hsm.ErrCorrupt, KeyURI(id))
	}
	if len(kf.PublicKey) > 0 && (len(kf.PublicKey) != 65 ||
		common.BytesToAddress(crypto.Keccak256(kf.PublicKey[1:])[12:]) != kf.Address) {
		return nil, fmt.Errorf("%w: key file of %s: public key does not match the address", hsm.ErrCorrupt, KeyURI(id))
	}
	if err := validPCRs(kf.PCRs); err != nil {
		return nil, fmt.Errorf("%w: key file of %s: %v", hsm.ErrCorrupt, KeyURI(id), err)
	}
	return &kf, nil
}

// writeKeyFile writes kf atomically: a temporary file in the same directory, fsync, rename,
// fsync of the directory. A crash leaves either the old file or the new one.
func writeKeyFile(dir string, kf *keyFile) error {
	b, err := json.MarshalIndent(kf, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	return writeAtomic(dir, kf.ID+fileExt, b)
}

func writeAtomic(dir, name string, data []byte) (err error) {
	f, err := os.CreateTemp(dir, "."+name+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		_ = f.Close()
		return err
	}
	if _, err = f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err = f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	return syncDir(dir)
}

// removeKeyFile deletes a key file durably.
func removeKeyFile(dir, id string) error {
	if err := os.Remove(keyPath(dir, id)); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// listKeyIDs returns the ids of the key files in dir.
func listKeyIDs(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range ents {
		// A temporary file left by a crash during writeAtomic: the rename never happened.
		if strings.HasPrefix(e.Name(), ".") && strings.Contains(e.Name(), fileExt+".tmp") {
			_ = os.Remove(filepath.Join(dir, e.Name()))
			continue
		}
		id, ok := strings.CutSuffix(e.Name(), fileExt)
		if ok && e.Type().IsRegular() && validID(id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// validPCRs checks a PCR list: indexes 0..23, strictly increasing.
func validPCRs(pcrs []int) error {
	for i, p := range pcrs {
		if p < 0 || p > 23 {
			return fmt.Errorf("PCR %d out of range 0..23", p)
		}
		if i > 0 && p <= pcrs[i-1] {
			return fmt.Errorf("PCRs %v not strictly increasing", pcrs)
		}
	}
	return nil
}
