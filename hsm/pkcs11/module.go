//go:build !no_pkcs11

package pkcs11

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"sync"

	p11 "github.com/miekg/pkcs11"
	"github.com/signerd/signerd/hsm"
)

// module is one loaded PKCS#11 library, shared by every backend of the process that names the
// same path: C_Initialize runs once per process, and login state belongs to the process.
//
// Any use of ctx holds mu for reading; only (re)initialisation holds it for writing, so
// C_Finalize never runs under an in-flight call. gen is bumped by every (re)initialisation:
// sessions and object handles obtained under an older gen are dead.
type module struct {
	path string
	ctx  *p11.Ctx

	mu          sync.RWMutex
	initialized bool
	gen         uint64

	loginMu sync.Mutex
	logins  map[uint][32]byte // slot -> tag of the PIN this process logged in with (this gen)
}

var (
	modulesMu sync.Mutex
	modules   = map[string]*module{}
	// pinSalt keys the in-memory PIN tags so they are useless outside this process.
	pinSalt = func() []byte { b := make([]byte, 32); _, _ = rand.Read(b); return b }()
)

// pinTag returns a salted digest of pin, used to refuse a second backend that presents a
// different PIN for a token this process is already logged in to.
func pinTag(pin []byte) [32]byte {
	h := sha256.New()
	h.Write(pinSalt)
	h.Write(pin)
	var t [32]byte
	h.Sum(t[:0])
	return t
}

// getModule returns the shared module for path, loading and initialising it on first use.
// env is applied to the process environment before the first C_Initialize (SoftHSM reads
// SOFTHSM2_CONF there); once the module is initialised a conflicting env is refused.
func getModule(path string, env map[string]string) (*module, error) {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	m := modules[path]
	if m == nil {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("%w: PKCS#11 module %s: %v", hsm.ErrInvalidOptions, path, err)
		}
		for k, v := range env {
			if err := os.Setenv(k, v); err != nil {
				return nil, fmt.Errorf("%w: setting %s: %v", hsm.ErrInvalidOptions, k, err)
			}
		}
		ctx := p11.New(path)
		if ctx == nil {
			return nil, fmt.Errorf("%w: cannot load PKCS#11 module %s", hsm.ErrInvalidOptions, path)
		}
		m = &module{path: path, ctx: ctx, logins: map[uint][32]byte{}}
		modules[path] = m
	} else {
		for k, v := range env {
			if os.Getenv(k) != v {
				return nil, fmt.Errorf("%w: module %s is already initialised in this process with a different %s", hsm.ErrInvalidOptions, path, k)
			}
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.initialized {
		if err := m.initLocked(); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// initLocked runs C_Initialize; mu is held for writing.
func (m *module) initLocked() error {
	err := m.ctx.Initialize()
	if err != nil && !isCKR(err, p11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		m.initialized = false
		return fmt.Errorf("%w: C_Initialize of %s failed: %v", hsm.ErrUnavailable, m.path, err)
	}
	m.initialized = true
	m.gen++
	m.loginMu.Lock()
	m.logins = map[uint][32]byte{}
	m.loginMu.Unlock()
	return nil
}

// reinit finalises and re-initialises the module so that it rescans its tokens, unless some
// other backend already did so since generation seen. SoftHSM2 only loads token directories
// at C_Initialize, and after its token directory vanished it keeps failing until then.
func (m *module) reinit(seen uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.initialized && m.gen != seen {
		return nil
	}
	if m.initialized {
		_ = m.ctx.Finalize() // the sessions of every backend on this module die here
		m.initialized = false
	}
	return m.initLocked()
}

// login logs the user in on the token in slot through sh. CKR_USER_ALREADY_LOGGED_IN is
// success only when this process logged in with the same PIN (or did not log in itself).
func (m *module) login(sh p11.SessionHandle, slot uint, pin []byte) error {
	tag := pinTag(pin)
	m.loginMu.Lock()
	defer m.loginMu.Unlock()
	err := m.ctx.Login(sh, p11.CKU_USER, string(pin))
	switch {
	case err == nil:
		m.logins[slot] = tag
		return nil
	case isCKR(err, p11.CKR_USER_ALREADY_LOGGED_IN):
		if prev, ok := m.logins[slot]; ok && prev != tag {
			return fmt.Errorf("%w: the token is logged in with another PIN", hsm.ErrBadPIN)
		}
		m.logins[slot] = tag
		return nil
	case isCKR(err, p11.CKR_PIN_INCORRECT), isCKR(err, p11.CKR_PIN_INVALID), isCKR(err, p11.CKR_PIN_LEN_RANGE):
		return fmt.Errorf("%w: the token refused the PIN (%v)", hsm.ErrBadPIN, err)
	case isCKR(err, p11.CKR_PIN_LOCKED), isCKR(err, p11.CKR_PIN_EXPIRED):
		return fmt.Errorf("%w: the token's user PIN is locked or expired (%v)", hsm.ErrBadPIN, err)
	}
	return fmt.Errorf("C_Login: %w", err)
}

// isCKR reports whether err is the PKCS#11 return value rv.
func isCKR(err error, rv uint) bool {
	var e p11.Error
	return errors.As(err, &e) && uint(e) == rv
}

// deviceFailure reports whether err means the token or its sessions are gone, so that the
// backend must turn unhealthy and reconnect.
func deviceFailure(err error) bool {
	var e p11.Error
	if !errors.As(err, &e) {
		return false
	}
	switch uint(e) {
	case p11.CKR_SESSION_HANDLE_INVALID, p11.CKR_SESSION_CLOSED, p11.CKR_DEVICE_REMOVED,
		p11.CKR_DEVICE_ERROR, p11.CKR_DEVICE_MEMORY, p11.CKR_TOKEN_NOT_PRESENT,
		p11.CKR_TOKEN_NOT_RECOGNIZED, p11.CKR_GENERAL_ERROR, p11.CKR_SLOT_ID_INVALID,
		p11.CKR_CRYPTOKI_NOT_INITIALIZED, p11.CKR_USER_NOT_LOGGED_IN,
		p11.CKR_OBJECT_HANDLE_INVALID, p11.CKR_KEY_HANDLE_INVALID, p11.CKR_FUNCTION_FAILED:
		return true
	}
	return false
}
