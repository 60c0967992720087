//go:build !no_pkcs11

package pkcs11

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/ethereum/go-ethereum/common"
	p11 "github.com/miekg/pkcs11"
	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/hsm/lockedmem"
)

// Name is the registry name of this backend.
const Name = "pkcs11"

// oidSecp256k1 is the DER encoding of the secp256k1 curve OID, the value of CKA_EC_PARAMS.
var oidSecp256k1 = []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a}

func init() {
	hsm.Register(Name, func(ctx context.Context, opts hsm.Options) (hsm.Backend, error) {
		b, err := Open(ctx, opts.PKCS11)
		if err != nil {
			return nil, err // not a typed nil inside the interface
		}
		return b, nil
	})
}

// Backend keeps secp256k1 keys on one PKCS#11 token and signs through a pool of logged-in
// sessions. It is safe for concurrent use.
type Backend struct {
	opts   hsm.PKCS11Options
	mod    *module
	pin    []byte            // the user PIN, kept for re-login; in pinBuf when locking worked
	pinBuf *lockedmem.Buffer // mlock'ed, non-dumpable memory outside the Go heap (or nil)

	sem        chan struct{} // one slot per session: bounds concurrent device calls
	waiting    atomic.Int64
	maxWaiting int64

	reconnMu  sync.Mutex // serialises reconnection attempts
	mu        sync.Mutex
	conn      *conn // nil while the token is unavailable
	reason    string
	failedGen uint64
	checked   time.Time
	closed    bool

	kick chan struct{}
	stop chan struct{}
	done chan struct{}
}

// conn is one logged-in connection to the token: valid for a single module generation.
type conn struct {
	gen      uint64
	slot     uint
	all      []p11.SessionHandle
	sessions chan p11.SessionHandle

	keysMu sync.RWMutex
	keys   map[string]*keyEntry // by string(CKA_ID)
}

// keyEntry is a resolved key: cached object handles plus public facts.
type keyEntry struct {
	id      []byte
	label   string
	priv    p11.ObjectHandle
	pub     p11.ObjectHandle
	pub65   []byte
	addr    common.Address
	retired atomic.Bool
}

// Open validates opts, reads the PIN, finds the token by label, logs in and fills the session
// pool. Errors: hsm.ErrInvalidOptions, hsm.ErrBadPIN, hsm.ErrTokenNotFound, hsm.ErrUnavailable.
func Open(ctx context.Context, opts hsm.PKCS11Options) (*Backend, error) {
	if opts.Module == "" || opts.TokenLabel == "" {
		return nil, fmt.Errorf("%w: pkcs11 needs module and token_label", hsm.ErrInvalidOptions)
	}
	if opts.Sessions == 0 {
		opts.Sessions = runtime.NumCPU()
	}
	if opts.Sessions < 1 || opts.Sessions > 256 {
		return nil, fmt.Errorf("%w: sessions must be 1..256", hsm.ErrInvalidOptions)
	}
	if opts.MaxWaiting == 0 {
		opts.MaxWaiting = 16 * opts.Sessions
	}
	if opts.MaxWaiting < 0 {
		return nil, fmt.Errorf("%w: max_waiting must not be negative", hsm.ErrInvalidOptions)
	}
	if opts.RetryInterval == 0 {
		opts.RetryInterval = time.Second
	}
	if opts.RetryInterval < 10*time.Millisecond {
		return nil, fmt.Errorf("%w: retry_interval below 10ms", hsm.ErrInvalidOptions)
	}
	pin, err := ReadPIN(opts)
	if err != nil {
		return nil, err
	}
	mod, err := getModule(opts.Module, opts.ModuleEnv)
	if err != nil {
		hsm.Zero(pin)
		return nil, err
	}
	b := &Backend{
		opts: opts, mod: mod, pin: pin,
		sem:        make(chan struct{}, opts.Sessions),
		maxWaiting: int64(opts.MaxWaiting),
		kick:       make(chan struct{}, 1),
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
	}
	if buf, err := lockedmem.New(len(pin)); err == nil {
		copy(buf.Bytes(), pin)
		hsm.Zero(pin)
		b.pin, b.pinBuf = buf.Bytes(), buf
	}
	c, err := b.connect()
	if err != nil {
		b.zeroPIN()
		return nil, err
	}
	b.conn, b.checked = c, time.Now()
	go b.monitor()
	return b, nil
}

// findSlot returns the slot holding the token labelled label. mod.mu is held.
func (b *Backend) findSlot() (uint, error) {
	slots, err := b.mod.ctx.GetSlotList(true)
	if err != nil {
		return 0, fmt.Errorf("%w: C_GetSlotList: %v", hsm.ErrUnavailable, err)
	}
	for _, s := range slots {
		ti, err := b.mod.ctx.GetTokenInfo(s)
		if err != nil {
			continue
		}
		if strings.TrimRight(ti.Label, " \x00") == b.opts.TokenLabel && ti.Flags&p11.CKF_TOKEN_INITIALIZED != 0 {
			return s, nil
		}
	}
	return 0, fmt.Errorf("%w: no token labelled %q in %s", hsm.ErrTokenNotFound, b.opts.TokenLabel, b.opts.Module)
}

// connect finds the token, opens the session pool and logs in.
func (b *Backend) connect() (*conn, error) {
	m := b.mod
	m.mu.RLock()
	defer m.mu.RUnlock()
	if !m.initialized {
		return nil, fmt.Errorf("%w: module %s is not initialised", hsm.ErrUnavailable, m.path)
	}
	slot, err := b.findSlot()
	if err != nil {
		return nil, err
	}
	c := &conn{gen: m.gen, slot: slot, sessions: make(chan p11.SessionHandle, b.opts.Sessions), keys: map[string]*keyEntry{}}
	fail := func(err error) (*conn, error) {
		for _, sh := range c.all {
			_ = m.ctx.CloseSession(sh)
		}
		return nil, err
	}
	for i := 0; i < b.opts.Sessions; i++ {
		sh, err := m.ctx.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
		if err != nil {
			return fail(fmt.Errorf("%w: C_OpenSession on token %q: %v", hsm.ErrUnavailable, b.opts.TokenLabel, err))
		}
		c.all = append(c.all, sh)
		c.sessions <- sh
	}
	if err := m.login(c.all[0], slot, b.pin); err != nil {
		if deviceFailure(err) {
			err = fmt.Errorf("%w: %v", hsm.ErrUnavailable, err)
		}
		return fail(err)
	}
	return c, nil
}

// Name implements hsm.Backend.
func (b *Backend) Name() string { return Name }

// unavailable builds the error returned while the token is unusable.
func (b *Backend) unavailable() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return fmt.Errorf("%w: pkcs11 backend closed", hsm.ErrUnavailable)
	}
	return fmt.Errorf("%w: token %q: %s (reconnecting)", hsm.ErrUnavailable, b.opts.TokenLabel, b.reason)
}

// markFailed retires c after a device failure and wakes the monitor to reconnect.
func (b *Backend) markFailed(c *conn, reason string) {
	b.mu.Lock()
	if b.conn == c && c != nil {
		b.conn = nil
		b.reason = reason
		b.failedGen = c.gen
		b.checked = time.Now()
	}
	b.mu.Unlock()
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// acquire takes one of the Sessions concurrency slots, failing with hsm.ErrOverloaded rather
// than queueing more than MaxWaiting callers.
func (b *Backend) acquire(ctx context.Context) error {
	select {
	case b.sem <- struct{}{}:
		return nil
	default:
	}
	if b.waiting.Add(1) > b.maxWaiting {
		b.waiting.Add(-1)
		return fmt.Errorf("%w: %d callers already waiting for the token", hsm.ErrOverloaded, b.maxWaiting)
	}
	defer b.waiting.Add(-1)
	select {
	case b.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *Backend) release() { <-b.sem }

// withSession runs fn on a logged-in session of the current connection. A device failure
// from fn turns the backend unhealthy and is returned wrapped in hsm.ErrUnavailable.
func (b *Backend) withSession(ctx context.Context, fn func(c *conn, sh p11.SessionHandle) error) error {
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return b.unavailable()
	}
	if err := b.acquire(ctx); err != nil {
		return err
	}
	defer b.release()
	c, err := b.current()
	if err != nil {
		return err
	}
	m := b.mod
	m.mu.RLock()
	defer m.mu.RUnlock()
	if !m.initialized || c.gen != m.gen {
		b.markFailed(c, "the module was re-initialised")
		return b.unavailable()
	}
	sh := <-c.sessions
	err = fn(c, sh)
	c.sessions <- sh
	if err != nil && deviceFailure(err) {
		b.markFailed(c, "device error: "+err.Error())
		return fmt.Errorf("%w: token %q: %v", hsm.ErrUnavailable, b.opts.TokenLabel, err)
	}
	return err
}

// current returns the live connection. When the module was re-initialised (by this backend's
// monitor or by another backend on the same module) since the connection failed, it
// reconnects at once instead of waiting for the monitor, so callers are not failed needlessly.
func (b *Backend) current() (*conn, error) {
	b.mu.Lock()
	c, failedGen := b.conn, b.failedGen
	b.mu.Unlock()
	gen := b.currentGen()
	if c != nil && c.gen == gen {
		return c, nil
	}
	if c != nil {
		b.markFailed(c, "the module was re-initialised")
		failedGen = c.gen
	}
	if gen == failedGen {
		return nil, b.unavailable() // nothing changed since the failure: the monitor handles it
	}
	if err := b.reconnectOnce(); err != nil {
		return nil, b.unavailable()
	}
	b.mu.Lock()
	c = b.conn
	b.mu.Unlock()
	if c == nil {
		return nil, b.unavailable()
	}
	return c, nil
}

// reconnectOnce connects if no connection is installed, serialised with other reconnects.
func (b *Backend) reconnectOnce() error {
	b.reconnMu.Lock()
	defer b.reconnMu.Unlock()
	gen := b.currentGen()
	b.mu.Lock()
	have := b.conn != nil && b.conn.gen == gen
	b.mu.Unlock()
	if have {
		return nil
	}
	c, err := b.connect()
	gen = b.currentGen()
	// Lock order: never take mod.mu while holding b.mu (withSession takes b.mu under mod.mu).
	b.mu.Lock()
	defer b.mu.Unlock()
	if err != nil {
		b.reason = err.Error()
		b.failedGen = gen
		return err
	}
	if b.closed {
		go b.closeConn(c)
		return errors.New("closed")
	}
	b.conn, b.reason, b.checked = c, "", time.Now()
	return nil
}

// probe checks that the token still answers. mod.mu is held.
func (b *Backend) probe(c *conn) error {
	if !b.mod.initialized || c.gen != b.mod.gen {
		return fmt.Errorf("the module was re-initialised")
	}
	if _, err := b.mod.ctx.GetTokenInfo(c.slot); err != nil {
		return fmt.Errorf("token does not answer: %v", err)
	}
	return nil
}

// Health implements hsm.Backend: it probes the token (C_GetTokenInfo) when connected.
func (b *Backend) Health(ctx context.Context) hsm.Health {
	b.mu.Lock()
	c, reason, closed := b.conn, b.reason, b.closed
	b.mu.Unlock()
	now := time.Now()
	if closed {
		return hsm.Health{OK: false, Reason: "backend closed", Checked: now}
	}
	if c == nil {
		return hsm.Health{OK: false, Reason: fmt.Sprintf("token %q unavailable: %s", b.opts.TokenLabel, reason), Checked: now}
	}
	b.mod.mu.RLock()
	err := b.probe(c)
	b.mod.mu.RUnlock()
	if err != nil {
		b.markFailed(c, err.Error())
		return hsm.Health{OK: false, Reason: fmt.Sprintf("token %q unavailable: %s", b.opts.TokenLabel, err), Checked: now}
	}
	return hsm.Health{OK: true, Checked: now}
}

// monitor probes the token while healthy and reconnects while not, every RetryInterval (and
// at once when a failure is reported).
func (b *Backend) monitor() {
	defer close(b.done)
	t := time.NewTicker(b.opts.RetryInterval)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-b.kick:
		case <-t.C:
		}
		b.mu.Lock()
		c, failedGen := b.conn, b.failedGen
		b.mu.Unlock()
		if c != nil {
			b.mod.mu.RLock()
			err := b.probe(c)
			b.mod.mu.RUnlock()
			if err == nil {
				continue
			}
			b.markFailed(c, err.Error())
			failedGen = c.gen
		}
		b.reconnect(failedGen)
	}
}

// reconnect re-initialises the module if nobody did since failedGen (SoftHSM2 rescans its
// token directory only at C_Initialize), then logs in again.
func (b *Backend) reconnect(failedGen uint64) {
	if err := b.mod.reinit(failedGen); err != nil {
		b.setReason(err.Error())
		return
	}
	_ = b.reconnectOnce()
}

func (b *Backend) currentGen() uint64 {
	b.mod.mu.RLock()
	defer b.mod.mu.RUnlock()
	return b.mod.gen
}

func (b *Backend) setReason(r string) {
	b.mu.Lock()
	b.reason = r
	b.mu.Unlock()
}

// closeConn closes c's sessions if c still belongs to the current module generation.
func (b *Backend) closeConn(c *conn) {
	b.mod.mu.RLock()
	defer b.mod.mu.RUnlock()
	if b.mod.initialized && c.gen == b.mod.gen {
		for _, sh := range c.all {
			_ = b.mod.ctx.CloseSession(sh)
		}
	}
}

// Close implements hsm.Backend. It closes this backend's sessions; the module stays
// initialised for other backends of the process.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	c := b.conn
	b.conn = nil
	b.mu.Unlock()
	close(b.stop)
	<-b.done
	// wait for in-flight calls to return their slots before closing sessions
	for i := 0; i < cap(b.sem); i++ {
		b.sem <- struct{}{}
	}
	if c != nil {
		b.closeConn(c)
	}
	b.zeroPIN()
	return nil
}

// zeroPIN wipes the PIN (and releases its locked memory).
func (b *Backend) zeroPIN() {
	hsm.Zero(b.pin)
	if b.pinBuf != nil {
		b.pinBuf.Close()
	}
	b.pin = nil
}

// ---- keys ----

// keyURI returns the URI of a key on this token.
func (b *Backend) keyURI(id []byte, label string) string {
	return URI{Token: b.opts.TokenLabel, ID: id, Object: label, Type: "private"}.String()
}

// parseKeyURI parses uri and checks it names this backend's token.
func (b *Backend) parseKeyURI(uri string) (URI, error) {
	u, err := ParseURI(uri)
	if err != nil {
		return u, err
	}
	if u.Token != "" && u.Token != b.opts.TokenLabel {
		return u, fmt.Errorf("%w: key is on token %q, this backend holds %q", hsm.ErrUnknownKey, u.Token, b.opts.TokenLabel)
	}
	return u, nil
}

// findObjects returns the handles matching tmpl.
func (b *Backend) findObjects(sh p11.SessionHandle, tmpl []*p11.Attribute) ([]p11.ObjectHandle, error) {
	ctx := b.mod.ctx
	if err := ctx.FindObjectsInit(sh, tmpl); err != nil {
		return nil, err
	}
	var out []p11.ObjectHandle
	for {
		hs, _, err := ctx.FindObjects(sh, 64)
		if err != nil {
			_ = ctx.FindObjectsFinal(sh)
			return nil, err
		}
		out = append(out, hs...)
		if len(hs) < 64 {
			break
		}
	}
	return out, ctx.FindObjectsFinal(sh)
}

// privAttrs are read from each private key object.
var privAttrs = []uint{p11.CKA_ID, p11.CKA_LABEL, p11.CKA_EC_PARAMS, p11.CKA_LOCAL, p11.CKA_ALWAYS_SENSITIVE,
	p11.CKA_NEVER_EXTRACTABLE, p11.CKA_SENSITIVE, p11.CKA_EXTRACTABLE, p11.CKA_SIGN}

// keyFacts are the attributes of a private key object that matter to a security team.
type keyFacts struct {
	id, label                                []byte
	secp256k1                                bool
	local, alwaysSensitive, neverExtractable bool
	sensitive, extractable, sign             bool
	retiredMeta                              bool // signerd's metadata object says retired
}

func (b *Backend) readFacts(sh p11.SessionHandle, h p11.ObjectHandle) (keyFacts, error) {
	var f keyFacts
	tmpl := make([]*p11.Attribute, len(privAttrs))
	for i, t := range privAttrs {
		tmpl[i] = p11.NewAttribute(t, nil)
	}
	attrs, err := b.mod.ctx.GetAttributeValue(sh, h, tmpl)
	if err != nil {
		return f, err
	}
	for _, a := range attrs {
		isTrue := len(a.Value) == 1 && a.Value[0] != 0
		switch a.Type {
		case p11.CKA_ID:
			f.id = a.Value
		case p11.CKA_LABEL:
			f.label = a.Value
		case p11.CKA_EC_PARAMS:
			f.secp256k1 = bytes.Equal(a.Value, oidSecp256k1)
		case p11.CKA_LOCAL:
			f.local = isTrue
		case p11.CKA_ALWAYS_SENSITIVE:
			f.alwaysSensitive = isTrue
		case p11.CKA_NEVER_EXTRACTABLE:
			f.neverExtractable = isTrue
		case p11.CKA_SENSITIVE:
			f.sensitive = isTrue
		case p11.CKA_EXTRACTABLE:
			f.extractable = isTrue
		case p11.CKA_SIGN:
			f.sign = isTrue
		}
	}
	return f, nil
}

// retired reports whether the key was retired: signerd retires a key by clearing CKA_SIGN,
// so the token itself refuses to sign with it, and records it in the key's metadata object
// (which alone counts on a token that does not let CKA_SIGN change).
func (f keyFacts) retired() bool { return !f.sign || f.retiredMeta }

// publicPoint finds the public key object with CKA_ID id and returns its handle and 65-byte point.
func (b *Backend) publicPoint(sh p11.SessionHandle, id []byte) (p11.ObjectHandle, []byte, error) {
	hs, err := b.findObjects(sh, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PUBLIC_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_EC),
		p11.NewAttribute(p11.CKA_ID, id),
	})
	if err != nil {
		return 0, nil, err
	}
	if len(hs) != 1 {
		return 0, nil, fmt.Errorf("%w: %d public key objects share CKA_ID %x", hsm.ErrCorrupt, len(hs), id)
	}
	attrs, err := b.mod.ctx.GetAttributeValue(sh, hs[0], []*p11.Attribute{p11.NewAttribute(p11.CKA_EC_POINT, nil)})
	if err != nil {
		return 0, nil, err
	}
	pub, err := parseECPoint(attrs[0].Value)
	if err != nil {
		return 0, nil, err
	}
	return hs[0], pub, nil
}

// parseECPoint turns CKA_EC_POINT (a DER OCTET STRING, or raw on some tokens) into 0x04‖X‖Y.
func parseECPoint(b []byte) ([]byte, error) {
	if len(b) == 65 && b[0] == 0x04 {
		return b, nil
	}
	var raw []byte
	rest, err := asn1.Unmarshal(b, &raw)
	if err != nil || len(rest) != 0 || len(raw) != 65 || raw[0] != 0x04 {
		return nil, fmt.Errorf("%w: malformed CKA_EC_POINT", hsm.ErrCorrupt)
	}
	return raw, nil
}

// info builds the KeyInfo of a key from its attributes and signerd's metadata object.
func (b *Backend) info(f keyFacts, addr common.Address, md meta) hsm.KeyInfo {
	origin := hsm.OriginImported
	if f.local && f.alwaysSensitive && f.neverExtractable {
		origin = hsm.OriginGenerated
	}
	ki := hsm.KeyInfo{
		URI:            b.keyURI(f.id, string(f.label)),
		Address:        addr,
		Label:          string(f.label),
		Backend:        Name,
		Origin:         origin,
		NonExtractable: f.sensitive && !f.extractable,
		Retired:        f.retired(),
		Facts: map[string]any{
			"token":             b.opts.TokenLabel,
			"cka_id":            hex.EncodeToString(f.id),
			"local":             f.local,
			"always_sensitive":  f.alwaysSensitive,
			"never_extractable": f.neverExtractable,
			"sensitive":         f.sensitive,
			"extractable":       f.extractable,
			"sign_allowed":      f.sign,
		},
	}
	ki.CreatedAt = md.CreatedAt
	if !md.RetiredAt.IsZero() {
		ki.Facts["retired_at"] = md.RetiredAt
	}
	return ki
}

// List implements hsm.Backend: every secp256k1 private key on the token with a matching
// public key object, retired ones included.
func (b *Backend) List(ctx context.Context) ([]hsm.KeyInfo, error) {
	var out []hsm.KeyInfo
	err := b.withSession(ctx, func(c *conn, sh p11.SessionHandle) error {
		out = out[:0]
		hs, err := b.findObjects(sh, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PRIVATE_KEY),
			p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_EC),
		})
		if err != nil {
			return err
		}
		metas, err := b.readMetas(sh)
		if err != nil {
			return err
		}
		for _, h := range hs {
			f, err := b.readFacts(sh, h)
			if err != nil {
				return err
			}
			if !f.secp256k1 || len(f.id) == 0 {
				continue
			}
			f.retiredMeta = !metas[string(f.id)].meta.RetiredAt.IsZero()
			pubH, pub, err := b.publicPoint(sh, f.id)
			if err != nil {
				if deviceFailure(err) {
					return err
				}
				continue // a private key without a usable public half cannot sign for an address
			}
			addr := hsm.AddressOf(pub)
			c.cache(f, h, pubH, pub, addr)
			out = append(out, b.info(f, addr, metas[string(f.id)].meta))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Label != out[j].Label {
			return out[i].Label < out[j].Label
		}
		return out[i].URI < out[j].URI
	})
	return out, nil
}

// cache records a resolved key in c.
func (c *conn) cache(f keyFacts, priv, pub p11.ObjectHandle, pub65 []byte, addr common.Address) *keyEntry {
	e := &keyEntry{id: append([]byte(nil), f.id...), label: string(f.label), priv: priv, pub: pub, pub65: pub65, addr: addr}
	e.retired.Store(f.retired())
	c.keysMu.Lock()
	defer c.keysMu.Unlock()
	if old, ok := c.keys[string(f.id)]; ok && old.priv == priv {
		old.retired.Store(f.retired())
		return old
	}
	c.keys[string(f.id)] = e
	return e
}

// resolve returns the cached entry for CKA_ID id, looking it up on the token once (or again
// when fresh is set).
func (b *Backend) resolve(c *conn, sh p11.SessionHandle, id []byte, fresh bool) (*keyEntry, error) {
	if !fresh {
		c.keysMu.RLock()
		e := c.keys[string(id)]
		c.keysMu.RUnlock()
		if e != nil {
			return e, nil
		}
	}
	hs, err := b.findObjects(sh, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PRIVATE_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_EC),
		p11.NewAttribute(p11.CKA_ID, id),
	})
	if err != nil {
		return nil, err
	}
	if len(hs) == 0 {
		c.keysMu.Lock()
		delete(c.keys, string(id))
		c.keysMu.Unlock()
		// An absent object on a token that stopped answering is an outage, not an unknown key.
		if _, err := b.mod.ctx.GetTokenInfo(c.slot); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: no private key with id %x on token %q", hsm.ErrUnknownKey, id, b.opts.TokenLabel)
	}
	if len(hs) > 1 {
		return nil, fmt.Errorf("%w: %d private keys share CKA_ID %x", hsm.ErrCorrupt, len(hs), id)
	}
	f, err := b.readFacts(sh, hs[0])
	if err != nil {
		return nil, err
	}
	if !f.secp256k1 {
		return nil, fmt.Errorf("%w: key %x is not a secp256k1 key", hsm.ErrUnknownKey, id)
	}
	metas, err := b.readMetas(sh)
	if err != nil {
		return nil, err
	}
	f.retiredMeta = !metas[string(id)].meta.RetiredAt.IsZero()
	pubH, pub, err := b.publicPoint(sh, id)
	if err != nil {
		return nil, err
	}
	return c.cache(f, hs[0], pubH, pub, hsm.AddressOf(pub)), nil
}

// lookup resolves uri on the token and refreshes the cache entry.
func (b *Backend) lookup(ctx context.Context, uri string) (*keyEntry, error) {
	u, err := b.parseKeyURI(uri)
	if err != nil {
		return nil, err
	}
	var e *keyEntry
	err = b.withSession(ctx, func(c *conn, sh p11.SessionHandle) error {
		e, err = b.resolve(c, sh, u.ID, true)
		return err
	})
	return e, err
}

// newID returns a random 16-byte CKA_ID.
func newID() ([]byte, error) {
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	return id, nil
}

func checkLabel(l string) error {
	if l == "" || len(l) > 64 || !utf8.ValidString(l) || strings.ContainsFunc(l, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("%w: key label must be 1..64 bytes of printable UTF-8", hsm.ErrInvalidOptions)
	}
	return nil
}

func now() time.Time { return time.Now().UTC().Truncate(time.Second) }

// Generate implements hsm.Backend: a secp256k1 key pair generated on the token, sensitive and
// never extractable, with a random CKA_ID.
func (b *Backend) Generate(ctx context.Context, opts hsm.GenerateOptions) (hsm.KeyInfo, error) {
	if err := checkLabel(opts.Label); err != nil {
		return hsm.KeyInfo{}, err
	}
	id, err := newID()
	if err != nil {
		return hsm.KeyInfo{}, err
	}
	var ki hsm.KeyInfo
	err = b.withSession(ctx, func(c *conn, sh p11.SessionHandle) error {
		pubT := []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PUBLIC_KEY), p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_EC),
			p11.NewAttribute(p11.CKA_TOKEN, true), p11.NewAttribute(p11.CKA_PRIVATE, false), p11.NewAttribute(p11.CKA_VERIFY, true),
			p11.NewAttribute(p11.CKA_EC_PARAMS, oidSecp256k1), p11.NewAttribute(p11.CKA_LABEL, opts.Label),
			p11.NewAttribute(p11.CKA_ID, id),
		}
		privT := []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PRIVATE_KEY), p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_EC),
			p11.NewAttribute(p11.CKA_TOKEN, true), p11.NewAttribute(p11.CKA_PRIVATE, true), p11.NewAttribute(p11.CKA_SIGN, true),
			p11.NewAttribute(p11.CKA_DERIVE, false), p11.NewAttribute(p11.CKA_DECRYPT, false), p11.NewAttribute(p11.CKA_UNWRAP, false),
			p11.NewAttribute(p11.CKA_SENSITIVE, true), p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
			p11.NewAttribute(p11.CKA_LABEL, opts.Label), p11.NewAttribute(p11.CKA_ID, id),
		}
		pubH, privH, err := b.mod.ctx.GenerateKeyPair(sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_EC_KEY_PAIR_GEN, nil)}, pubT, privT)
		if err != nil {
			return fmt.Errorf("C_GenerateKeyPair: %w", err)
		}
		ki, err = b.describe(c, sh, privH, pubH, meta{CreatedAt: now()})
		return err
	})
	return ki, err
}

// describe reads back a freshly made key pair, caches it and returns its KeyInfo.
func (b *Backend) describe(c *conn, sh p11.SessionHandle, privH, pubH p11.ObjectHandle, md meta) (hsm.KeyInfo, error) {
	f, err := b.readFacts(sh, privH)
	if err != nil {
		return hsm.KeyInfo{}, err
	}
	attrs, err := b.mod.ctx.GetAttributeValue(sh, pubH, []*p11.Attribute{p11.NewAttribute(p11.CKA_EC_POINT, nil)})
	if err != nil {
		return hsm.KeyInfo{}, err
	}
	pub, err := parseECPoint(attrs[0].Value)
	if err != nil {
		return hsm.KeyInfo{}, err
	}
	addr := hsm.AddressOf(pub)
	c.cache(f, privH, pubH, pub, addr)
	if err := b.writeMeta(sh, f.id, md); err != nil && deviceFailure(err) {
		return hsm.KeyInfo{}, err
	}
	return b.info(f, addr, md), nil
}

// Import implements hsm.Backend: the key becomes a sensitive, non-extractable token object
// plus a matching public key object. opts.Key is zeroed; a key whose address the token
// already holds is refused.
func (b *Backend) Import(ctx context.Context, opts hsm.ImportOptions) (hsm.KeyInfo, error) {
	key := opts.Key
	defer func() { hsm.Zero(key) }()
	if err := checkLabel(opts.Label); err != nil {
		return hsm.KeyInfo{}, err
	}
	switch {
	case len(opts.Key) > 0 && len(opts.Keystore) > 0:
		return hsm.KeyInfo{}, fmt.Errorf("%w: give a raw key or a keystore, not both", hsm.ErrInvalidOptions)
	case len(opts.Keystore) > 0:
		k, _, err := hsm.DecryptKeystoreV3(opts.Keystore, opts.Passphrase)
		if err != nil {
			return hsm.KeyInfo{}, err
		}
		key = k
	case len(opts.Key) == 0:
		return hsm.KeyInfo{}, fmt.Errorf("%w: nothing to import", hsm.ErrInvalidOptions)
	}
	pub, err := hsm.PublicKey(key)
	if err != nil {
		return hsm.KeyInfo{}, err
	}
	addr := hsm.AddressOf(pub)
	existing, err := b.List(ctx)
	if err != nil {
		return hsm.KeyInfo{}, err
	}
	for _, k := range existing {
		if k.Address == addr {
			return hsm.KeyInfo{}, fmt.Errorf("%w: token %q already holds %s (%s)", hsm.ErrInvalidOptions, b.opts.TokenLabel, addr.Hex(), k.URI)
		}
	}
	id, err := newID()
	if err != nil {
		return hsm.KeyInfo{}, err
	}
	point, err := asn1.Marshal(pub)
	if err != nil {
		return hsm.KeyInfo{}, err
	}
	var ki hsm.KeyInfo
	err = b.withSession(ctx, func(c *conn, sh p11.SessionHandle) error {
		value := p11.NewAttribute(p11.CKA_VALUE, key)
		privT := []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PRIVATE_KEY), p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_EC),
			p11.NewAttribute(p11.CKA_TOKEN, true), p11.NewAttribute(p11.CKA_PRIVATE, true), p11.NewAttribute(p11.CKA_SIGN, true),
			p11.NewAttribute(p11.CKA_DERIVE, false), p11.NewAttribute(p11.CKA_DECRYPT, false), p11.NewAttribute(p11.CKA_UNWRAP, false),
			p11.NewAttribute(p11.CKA_SENSITIVE, true), p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
			p11.NewAttribute(p11.CKA_EC_PARAMS, oidSecp256k1), value,
			p11.NewAttribute(p11.CKA_LABEL, opts.Label), p11.NewAttribute(p11.CKA_ID, id),
		}
		privH, err := b.mod.ctx.CreateObject(sh, privT)
		hsm.Zero(value.Value)
		if err != nil {
			return fmt.Errorf("C_CreateObject(private key): %w", err)
		}
		pubT := []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PUBLIC_KEY), p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_EC),
			p11.NewAttribute(p11.CKA_TOKEN, true), p11.NewAttribute(p11.CKA_PRIVATE, false), p11.NewAttribute(p11.CKA_VERIFY, true),
			p11.NewAttribute(p11.CKA_EC_PARAMS, oidSecp256k1), p11.NewAttribute(p11.CKA_EC_POINT, point),
			p11.NewAttribute(p11.CKA_LABEL, opts.Label), p11.NewAttribute(p11.CKA_ID, id),
		}
		pubH, err := b.mod.ctx.CreateObject(sh, pubT)
		if err != nil {
			_ = b.mod.ctx.DestroyObject(sh, privH)
			return fmt.Errorf("C_CreateObject(public key): %w", err)
		}
		ki, err = b.describe(c, sh, privH, pubH, meta{CreatedAt: now()})
		if err == nil && ki.Address != addr {
			_ = b.mod.ctx.DestroyObject(sh, privH)
			_ = b.mod.ctx.DestroyObject(sh, pubH)
			return fmt.Errorf("%w: token reports another address for the imported key", hsm.ErrCorrupt)
		}
		return err
	})
	return ki, err
}

// Retire implements hsm.Backend. The private key's CKA_SIGN is cleared, so the token itself
// refuses to sign with it, and the time is recorded in signerd's metadata object for the key;
// the key stays listed. A key counts as retired if either says so, so setting CKA_SIGN again
// with another tool does not bring it back.
func (b *Backend) Retire(ctx context.Context, uri string) error {
	u, err := b.parseKeyURI(uri)
	if err != nil {
		return err
	}
	return b.withSession(ctx, func(c *conn, sh p11.SessionHandle) error {
		e, err := b.resolve(c, sh, u.ID, false)
		if err != nil {
			return err
		}
		e.retired.Store(true) // refuse at once, even if the token writes below fail
		if err := b.mod.ctx.SetAttributeValue(sh, e.priv, []*p11.Attribute{p11.NewAttribute(p11.CKA_SIGN, false)}); err != nil &&
			!isCKR(err, p11.CKR_ATTRIBUTE_READ_ONLY) {
			// (a token that keeps CKA_SIGN read-only is left to the metadata object below)
			return fmt.Errorf("clearing CKA_SIGN: %w", err)
		}
		metas, err := b.readMetas(sh)
		if err != nil {
			return err
		}
		md := metas[string(u.ID)].meta
		if md.RetiredAt.IsZero() {
			md.RetiredAt = now()
		}
		return b.writeMeta(sh, u.ID, md)
	})
}

// Destroy implements hsm.Backend: both halves of the key are deleted from the token.
func (b *Backend) Destroy(ctx context.Context, uri string) error {
	u, err := b.parseKeyURI(uri)
	if err != nil {
		return err
	}
	return b.withSession(ctx, func(c *conn, sh p11.SessionHandle) error {
		e, err := b.resolve(c, sh, u.ID, false)
		if err != nil {
			return err
		}
		e.retired.Store(true)
		if err := b.mod.ctx.DestroyObject(sh, e.priv); err != nil {
			return fmt.Errorf("C_DestroyObject(private key): %w", err)
		}
		c.keysMu.Lock()
		delete(c.keys, string(u.ID))
		c.keysMu.Unlock()
		if err := b.mod.ctx.DestroyObject(sh, e.pub); err != nil {
			return fmt.Errorf("C_DestroyObject(public key): %w", err)
		}
		metas, err := b.readMetas(sh)
		if err == nil {
			if m, ok := metas[string(u.ID)]; ok {
				err = b.mod.ctx.DestroyObject(sh, m.h)
			}
		}
		return err
	})
}

// ---- signing ----

// Signer implements hsm.Backend.
func (b *Backend) Signer(ctx context.Context, uri string) (hsm.Signer, error) {
	u, err := b.parseKeyURI(uri)
	if err != nil {
		return nil, err
	}
	e, err := b.lookup(ctx, uri)
	if err != nil {
		return nil, err
	}
	if e.retired.Load() {
		return nil, fmt.Errorf("%w: %s", hsm.ErrKeyRetired, e.addr.Hex())
	}
	return &signer{b: b, id: u.ID, addr: e.addr, pub65: e.pub65}, nil
}

// signer signs with one key of a Backend. The key's handle is re-resolved (from the cache)
// on each call so that it survives reconnections.
type signer struct {
	b     *Backend
	id    []byte
	addr  common.Address
	pub65 []byte
}

// Address implements hsm.Signer.
func (s *signer) Address() common.Address { return s.addr }

var ecdsaMech = []*p11.Mechanism{p11.NewMechanism(p11.CKM_ECDSA, nil)}

// SignDigest implements hsm.Signer: CKM_ECDSA over the digest on the token, then low-s and v
// chosen by recovery against the key's public point (hsm.FromRS), outside the session so the
// token can serve the next caller meanwhile.
func (s *signer) SignDigest(ctx context.Context, digest [32]byte) ([65]byte, error) {
	var rs []byte
	err := s.b.withSession(ctx, func(c *conn, sh p11.SessionHandle) error {
		e, err := s.b.resolve(c, sh, s.id, false)
		if err != nil {
			return err
		}
		if e.retired.Load() {
			return fmt.Errorf("%w: %s", hsm.ErrKeyRetired, s.addr.Hex())
		}
		if e.addr != s.addr {
			return fmt.Errorf("%w: key %x now has another address", hsm.ErrCorrupt, s.id)
		}
		if err := s.b.mod.ctx.SignInit(sh, ecdsaMech, e.priv); err != nil {
			if isCKR(err, p11.CKR_KEY_FUNCTION_NOT_PERMITTED) {
				e.retired.Store(true)
				return fmt.Errorf("%w: the token refuses to sign with %s", hsm.ErrKeyRetired, s.addr.Hex())
			}
			return fmt.Errorf("C_SignInit: %w", err)
		}
		rs, err = s.b.mod.ctx.Sign(sh, digest[:])
		if err != nil {
			return fmt.Errorf("C_Sign: %w", err)
		}
		return nil
	})
	if err != nil {
		return [65]byte{}, err
	}
	return hsm.FromRS(digest, rs, s.pub65)
}
