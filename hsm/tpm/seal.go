//go:build !no_tpm

package tpm

import (
	"bytes"
	"errors"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/signerd/signerd/hsm"
)

// srkInfo is the loaded storage root key every wallet key is sealed under: an ECC NIST P-256
// primary in the owner hierarchy from the TCG reference template, so the same TPM derives the
// same key after every restart.
type srkInfo struct {
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	pub    tpm2.TPMTPublic
}

// createSRK loads the storage root key.
func createSRK(t transport.TPM) (srkInfo, error) {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}.Execute(t)
	if err != nil {
		return srkInfo{}, fmt.Errorf("create storage root key: %w", err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return srkInfo{}, fmt.Errorf("storage root key public area: %w", err)
	}
	return srkInfo{handle: rsp.ObjectHandle, name: rsp.Name, pub: *pub}, nil
}

// flushLeftovers flushes transient objects and sessions another client left loaded in a TPM
// without a resource manager (swtpm over a socket), so they cannot exhaust its few slots.
func flushLeftovers(t transport.TPM) error {
	for _, first := range []tpm2.TPMHandle{0x80000000, 0x02000000, 0x03000000} {
		rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(first), PropertyCount: 64}.Execute(t)
		if err != nil {
			return fmt.Errorf("list loaded handles: %w", err)
		}
		hs, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			return fmt.Errorf("list loaded handles: %w", err)
		}
		for _, h := range hs.Handle {
			if h>>24 != first>>24 {
				continue
			}
			if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(t); err != nil && isLinkError(err) {
				return err
			}
		}
	}
	return nil
}

// pcrSelection selects the given sha256 PCRs.
func pcrSelection(pcrs []int) tpm2.TPMLPCRSelection {
	idx := make([]uint, len(pcrs))
	for i, p := range pcrs {
		idx[i] = uint(p)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(idx...),
	}}}
}

// pcrPolicyDigest computes, in a trial session, the policy digest of PolicyPCR over the
// current values of pcrs.
func pcrPolicyDigest(t transport.TPM, pcrs []int) ([]byte, error) {
	sess, closeSess, err := tpm2.PolicySession(t, tpm2.TPMAlgSHA256, 16, tpm2.Trial())
	if err != nil {
		return nil, fmt.Errorf("trial policy session: %w", err)
	}
	defer func() { _ = closeSess() }()
	if _, err := (tpm2.PolicyPCR{PolicySession: sess.Handle(), Pcrs: pcrSelection(pcrs)}).Execute(t); err != nil {
		return nil, fmt.Errorf("trial PolicyPCR: %w", err)
	}
	pgd, err := tpm2.PolicyGetDigest{PolicySession: sess.Handle()}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("trial PolicyGetDigest: %w", err)
	}
	return slices.Clone(pgd.PolicyDigest.Buffer), nil
}

// sealed is what sealing produces: the TPM blobs and the policy they are bound to.
type sealed struct {
	public, private []byte
	policy          []byte // nil when not bound to PCRs
}

// seal creates a keyedHash sealed-data object holding secret under the SRK. With PCRs, only a
// policy session satisfying PolicyPCR over their current values can unseal it (userWithAuth is
// clear); without, an empty-auth HMAC session can. With encrypt, the secret crosses to the TPM
// AES-128-CFB encrypted under a session salted to the SRK.
func seal(t transport.TPM, srk srkInfo, secret []byte, pcrs []int, encrypt bool) (sealed, error) {
	var out sealed
	attrs := tpm2.TPMAObject{FixedTPM: true, FixedParent: true, NoDA: true, UserWithAuth: len(pcrs) == 0}
	if len(pcrs) > 0 {
		pd, err := pcrPolicyDigest(t, pcrs)
		if err != nil {
			return out, err
		}
		out.policy = pd
	}
	opts := []tpm2.AuthOption{tpm2.Auth(nil)}
	if encrypt {
		opts = append(opts, tpm2.AESEncryption(128, tpm2.EncryptIn), tpm2.Salted(srk.handle, srk.pub))
	}
	rsp, err := tpm2.Create{
		ParentHandle: tpm2.AuthHandle{Handle: srk.handle, Name: srk.name, Auth: tpm2.HMAC(tpm2.TPMAlgSHA256, 16, opts...)},
		InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
			Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: secret}),
		}},
		InPublic: tpm2.New2B(tpm2.TPMTPublic{
			Type:             tpm2.TPMAlgKeyedHash,
			NameAlg:          tpm2.TPMAlgSHA256,
			ObjectAttributes: attrs,
			AuthPolicy:       tpm2.TPM2BDigest{Buffer: out.policy},
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
				Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
			}),
		}),
	}.Execute(t)
	if err != nil {
		return out, fmt.Errorf("seal (TPM2_Create): %w", err)
	}
	out.public = tpm2.Marshal(rsp.OutPublic)
	out.private = tpm2.Marshal(rsp.OutPrivate)
	return out, nil
}

// unsealInto loads the sealed object of kf under the SRK, unseals it (policy or HMAC session;
// with encrypt, the response is AES-128-CFB encrypted under a session salted to the SRK),
// flushes it, copies the 32-byte secret into dst and zeroes the decoded copy.
//
// Errors wrap hsm.ErrCorrupt (the TPM rejects the blob), hsm.ErrPolicyMismatch (the PCRs no
// longer match, or the blob was sealed by another TPM or storage key) or hsm.ErrUnavailable.
//
// With sc, the salted sessions of the connection are reused (continueSession) instead of
// starting a new salted session for every unseal, which costs an ECDH in the TPM.
func unsealInto(t transport.TPM, srk srkInfo, kf *keyFile, dst []byte, encrypt bool, sc *sessionCache) error {
	if !bytes.Equal(kf.ParentName, srk.name.Buffer) {
		return fmt.Errorf("%w: key was sealed under a different storage root key (another TPM, or this TPM was cleared)", hsm.ErrPolicyMismatch)
	}
	var obj tpm2.NamedHandle
	if sc != nil && sc.obj.Handle != 0 && bytes.Equal(sc.objPrivate, kf.Private) {
		obj = sc.obj // still loaded from the previous signature with this key
	} else {
		if sc != nil {
			sc.flushObject(t)
		}
		pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](kf.Public)
		if err != nil {
			return fmt.Errorf("%w: public blob: %v", hsm.ErrCorrupt, err)
		}
		priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](kf.Private)
		if err != nil {
			return fmt.Errorf("%w: private blob: %v", hsm.ErrCorrupt, err)
		}
		lr, err := tpm2.Load{
			ParentHandle: tpm2.NamedHandle{Handle: srk.handle, Name: srk.name},
			InPrivate:    *priv,
			InPublic:     *pub,
		}.Execute(t)
		if err != nil {
			if rc, ok := tpmRC(err); ok && !rc.IsWarning() {
				return fmt.Errorf("%w: the TPM rejected the sealed blob: %v", hsm.ErrCorrupt, err)
			}
			return unavailable("load sealed object", err)
		}
		obj = tpm2.NamedHandle{Handle: lr.ObjectHandle, Name: lr.Name}
		if sc != nil {
			sc.obj, sc.objPrivate = obj, kf.Private
		} else {
			defer func() { _, _ = (tpm2.FlushContext{FlushHandle: obj.Handle}).Execute(t) }()
		}
	}

	var sess tpm2.Session
	if sc != nil {
		var err error
		if sess, err = sc.get(t, srk, len(kf.PCRs) > 0, encrypt); err != nil {
			return unavailable("start unseal session", err)
		}
		if len(kf.PCRs) > 0 {
			if _, err := (tpm2.PolicyPCR{PolicySession: sess.Handle(), Pcrs: pcrSelection(kf.PCRs)}).Execute(t); err != nil {
				sc.discard(t)
				return unavailable("PolicyPCR", err)
			}
		}
	} else {
		var opts []tpm2.AuthOption
		if encrypt {
			opts = append(opts, tpm2.AESEncryption(128, tpm2.EncryptOut), tpm2.Salted(srk.handle, srk.pub))
		}
		if len(kf.PCRs) > 0 {
			sel := pcrSelection(kf.PCRs)
			sess = tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(tp transport.TPM, h tpm2.TPMISHPolicy, _ tpm2.TPM2BNonce) error {
				_, err := tpm2.PolicyPCR{PolicySession: h, Pcrs: sel}.Execute(tp)
				return err
			}, opts...)
		} else {
			sess = tpm2.HMAC(tpm2.TPMAlgSHA256, 16, append(opts, tpm2.Auth(nil))...)
		}
	}
	us, err := tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: obj.Handle, Name: obj.Name, Auth: sess}}.Execute(t)
	if err != nil {
		if sc != nil {
			// A failed command leaves a continued session in an unknown policy state; start over.
			sc.discard(t)
		}
		switch {
		case errors.Is(err, tpm2.TPMRCPolicyFail), errors.Is(err, tpm2.TPMRCPCRChanged):
			return fmt.Errorf("%w: PCRs %v changed since the key was sealed", hsm.ErrPolicyMismatch, kf.PCRs)
		case errors.Is(err, tpm2.TPMRCAuthFail), errors.Is(err, tpm2.TPMRCBadAuth):
			return fmt.Errorf("%w: the TPM refused the unseal authorization: %v", hsm.ErrPolicyMismatch, err)
		}
		return unavailable("unseal", err)
	}
	defer clear(us.OutData.Buffer)
	if len(us.OutData.Buffer) != len(dst) {
		return fmt.Errorf("%w: sealed secret has %d bytes, want %d", hsm.ErrCorrupt, len(us.OutData.Buffer), len(dst))
	}
	copy(dst, us.OutData.Buffer)
	return nil
}

// sessionCache keeps, per connection, what per-signature unsealing reuses: one salted,
// response-encrypting policy session, one HMAC session, and the sealed object of the last key
// (so a run of signatures with one key skips Load and Flush). A policy session is reset by the
// TPM after each successful use, so PolicyPCR is asserted again before every Unseal.
type sessionCache struct {
	policy, hmac           tpm2.Session
	closePolicy, closeHMAC func() error
	obj                    tpm2.NamedHandle // loaded sealed object (Handle 0: none)
	objPrivate             []byte           // its private blob, identifying the key
}

// flushObject unloads the cached sealed object.
func (c *sessionCache) flushObject(t transport.TPM) {
	if c.obj.Handle != 0 && t != nil {
		_, _ = (tpm2.FlushContext{FlushHandle: c.obj.Handle}).Execute(t)
	}
	c.obj, c.objPrivate = tpm2.NamedHandle{}, nil
}

func (c *sessionCache) get(t transport.TPM, srk srkInfo, policy, encrypt bool) (tpm2.Session, error) {
	var opts []tpm2.AuthOption
	if encrypt {
		opts = append(opts, tpm2.AESEncryption(128, tpm2.EncryptOut), tpm2.Salted(srk.handle, srk.pub))
	}
	if policy {
		if c.policy == nil {
			s, closer, err := tpm2.PolicySession(t, tpm2.TPMAlgSHA256, 16, opts...)
			if err != nil {
				return nil, err
			}
			c.policy, c.closePolicy = s, closer
		}
		return c.policy, nil
	}
	if c.hmac == nil {
		s, closer, err := tpm2.HMACSession(t, tpm2.TPMAlgSHA256, 16, append(opts, tpm2.Auth(nil))...)
		if err != nil {
			return nil, err
		}
		c.hmac, c.closeHMAC = s, closer
	}
	return c.hmac, nil
}

// discard flushes the cached sessions and object (best effort; with t nil the connection is
// already gone) so the next unseal starts afresh.
func (c *sessionCache) discard(t transport.TPM) {
	c.flushObject(t)
	if t != nil {
		if c.closePolicy != nil {
			_ = c.closePolicy()
		}
		if c.closeHMAC != nil {
			_ = c.closeHMAC()
		}
	}
	*c = sessionCache{}
}

// isLinkError reports whether err is a failure of the link to the TPM.
func isLinkError(err error) bool {
	var ce *connError
	return errors.As(err, &ce)
}

// tpmRC extracts the response code when the TPM itself rejected a command.
func tpmRC(err error) (tpm2.TPMRC, bool) {
	var rc tpm2.TPMRC
	ok := errors.As(err, &rc)
	return rc, ok
}

// unavailable wraps a TPM fault as hsm.ErrUnavailable, keeping the cause (and whether it was a
// link failure) in the chain for the log and for reconnection.
func unavailable(op string, err error) error {
	return fmt.Errorf("%w: %s: %w", hsm.ErrUnavailable, op, err)
}
