//go:build !no_pkcs11

package pkcs11

import (
	"fmt"

	p11 "github.com/miekg/pkcs11"
)

// Test hooks, compiled into the test binary only.

// RawKey gives tests direct PKCS#11 access to a key's private object on a fresh session.
type RawKey struct {
	b    *Backend
	sh   p11.SessionHandle
	priv p11.ObjectHandle
}

// OpenRawKey opens a new session on b's token and resolves the private key of uri.
func OpenRawKey(b *Backend, uri string) (*RawKey, error) {
	u, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	c := b.conn
	b.mu.Unlock()
	if c == nil {
		return nil, fmt.Errorf("not connected")
	}
	sh, err := b.mod.ctx.OpenSession(c.slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		return nil, err
	}
	hs, err := b.findObjects(sh, []*p11.Attribute{p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PRIVATE_KEY), p11.NewAttribute(p11.CKA_ID, u.ID)})
	if err != nil || len(hs) != 1 {
		b.mod.ctx.CloseSession(sh)
		return nil, fmt.Errorf("find: %v (%d objects)", err, len(hs))
	}
	return &RawKey{b: b, sh: sh, priv: hs[0]}, nil
}

// Sign is the raw C_SignInit + C_Sign loop body (CKM_ECDSA).
func (r *RawKey) Sign(digest []byte) ([]byte, error) {
	if err := r.b.mod.ctx.SignInit(r.sh, ecdsaMech, r.priv); err != nil {
		return nil, err
	}
	return r.b.mod.ctx.Sign(r.sh, digest)
}

// ReadValue tries to read CKA_VALUE of the private key.
func (r *RawKey) ReadValue() ([]byte, error) {
	a, err := r.b.mod.ctx.GetAttributeValue(r.sh, r.priv, []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)})
	if err != nil {
		return nil, err
	}
	return a[0].Value, nil
}

// SetBool tries to set a boolean attribute ("extractable", "sensitive", "sign") of the private key.
func (r *RawKey) SetBool(name string, v bool) error {
	t := map[string]uint{"extractable": p11.CKA_EXTRACTABLE, "sensitive": p11.CKA_SENSITIVE, "sign": p11.CKA_SIGN}[name]
	return r.b.mod.ctx.SetAttributeValue(r.sh, r.priv, []*p11.Attribute{p11.NewAttribute(t, v)})
}

// Close closes the raw session.
func (r *RawKey) Close() { _ = r.b.mod.ctx.CloseSession(r.sh) }

// IsCKR reports whether err carries the named PKCS#11 return value.
func IsCKR(err error, name string) bool {
	var e p11.Error
	if !asP11(err, &e) {
		return false
	}
	return e.Error() == "pkcs11: "+fmt.Sprintf("0x%X: %s", uint(e), name)
}

func asP11(err error, e *p11.Error) bool {
	pe, ok := err.(p11.Error)
	if ok {
		*e = pe
	}
	return ok
}

// FillSlots takes every concurrency slot of b (as if all sessions were busy) and returns a
// function that gives them back.
func FillSlots(b *Backend) func() {
	for i := 0; i < cap(b.sem); i++ {
		b.sem <- struct{}{}
	}
	return func() {
		for i := 0; i < cap(b.sem); i++ {
			<-b.sem
		}
	}
}

// Waiting returns the number of callers waiting for a slot.
func Waiting(b *Backend) int64 { return b.waiting.Load() }

// PublicKey exposes a signer's 65-byte public key to the benchmarks.
func (s *signer) PublicKey() []byte { return s.pub65 }
