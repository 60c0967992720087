package coreclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ethereum/go-ethereum/accounts"
	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/common/hexutil"
	"github.com/ethereum/go-ethereum/crypto"
)

// SIWETemplate is the "siwe" object of POST /auth/nonce (§5.1; keys camelCase).
type SIWETemplate struct {
	Domain     string `json:"domain"`
	URI        string `json:"uri"`
	ChainID    uint64 `json:"chainId"`
	Statement  string `json:"statement"`
	Expiration string `json:"expiration"`
	IssuedAt   string `json:"issuedAt"`
}

type nonceAnswer struct {
	Nonce string        `json:"nonce"`
	SIWE  *SIWETemplate `json:"siwe"`
}

type tokenAnswer struct {
	AccessToken  string  `json:"access_token"`
	RefreshToken string  `json:"refresh_token"`
	ExpiresIn    *uint64 `json:"expires_in"`
}

// tokens is the session state. Never logged, never put into errors.
type tokens struct {
	access, refresh string
	refreshAt       time.Time // refresh (not log in) from this instant on
}

// BuildSIWEMessage renders the SIWE message exactly as §5.1's template (the Rust SDK's
// build_siwe_message and the TS SDK's buildSiweMessage, which are identical):
//
//	{domain} wants you to sign in with your Ethereum account:\n{address}\n\n{statement}\n\nURI: {uri}\nVersion: 1\nChain ID: {chainId}\nNonce: {nonce}\nIssued At: {issuedAt}\nExpiration Time: {expiration}
//
// address is written in EIP-55 form (alloy's Address Display, as the Rust SDK sends it; Core
// parses any case). A template field or nonce containing a line break is refused: it would let
// Core's text smuggle extra SIWE fields into what the wallet signs.
func BuildSIWEMessage(t SIWETemplate, address common.Address, nonce string) (string, error) {
	fields := [...][2]string{{"domain", t.Domain}, {"uri", t.URI}, {"statement", t.Statement},
		{"expiration", t.Expiration}, {"issuedAt", t.IssuedAt}, {"nonce", nonce}}
	for _, f := range fields {
		if strings.ContainsAny(f[1], "\r\n") {
			return "", fmt.Errorf("siwe %s contains a line break", f[0])
		}
		if f[1] == "" && f[0] != "statement" {
			return "", fmt.Errorf("siwe %s is empty", f[0])
		}
	}
	return t.Domain + " wants you to sign in with your Ethereum account:\n" +
		address.Hex() + "\n\n" +
		t.Statement + "\n\n" +
		"URI: " + t.URI + "\n" +
		"Version: 1\n" +
		"Chain ID: " + strconv.FormatUint(t.ChainID, 10) + "\n" +
		"Nonce: " + nonce + "\n" +
		"Issued At: " + t.IssuedAt + "\n" +
		"Expiration Time: " + t.Expiration, nil
}

// PersonalSignDigest is the EIP-191 personal_sign digest of msg:
// keccak256("\x19Ethereum Signed Message:\n" + len(msg) + msg) (§5.1).
func PersonalSignDigest(msg []byte) [32]byte {
	return [32]byte(accounts.TextHash(msg))
}

// Login performs a fresh SIWE login (§5.1): POST /auth/nonce, build the message from Core's
// template, personal_sign it with the Signer (verified by recovery), POST /auth/verify. It
// refuses to sign when the template's chain id (or domain, with Options.SIWEDomain) is not
// the configured one. Protected calls log in by themselves; Login is for an explicit check.
func (c *Client) Login(ctx context.Context) error {
	if err := c.lockAuth(ctx); err != nil {
		return err
	}
	defer c.unlockAuth()
	return c.loginLocked(ctx)
}

func (c *Client) loginLocked(ctx context.Context) error {
	s := c.opts.Signer
	if s == nil {
		return ErrNoSigner
	}
	addr := s.Address()
	var na nonceAnswer
	if err := c.do(ctx, request{method: http.MethodPost, path: "/auth/nonce", in: map[string]string{"address": addr.Hex()}}, &na); err != nil {
		return err
	}
	if na.Nonce == "" || na.SIWE == nil {
		return &ResponseError{Op: "POST /auth/nonce", Reason: "missing nonce or siwe template"}
	}
	t := *na.SIWE
	if t.ChainID != c.opts.Domain.ChainID {
		return &DomainMismatchError{Field: "siwe.chainId", Core: strconv.FormatUint(t.ChainID, 10), Want: strconv.FormatUint(c.opts.Domain.ChainID, 10)}
	}
	if c.opts.SIWEDomain != "" && !strings.EqualFold(t.Domain, c.opts.SIWEDomain) {
		return &DomainMismatchError{Field: "siwe.domain", Core: sanitize(t.Domain), Want: c.opts.SIWEDomain}
	}
	if err := checkSIWEFields(t, c.now()); err != nil {
		return err
	}
	msg, err := BuildSIWEMessage(t, addr, na.Nonce)
	if err != nil {
		return &ResponseError{Op: "POST /auth/nonce", Reason: err.Error()}
	}
	sig, err := c.sign(ctx, PersonalSignDigest([]byte(msg)))
	if err != nil {
		return err
	}
	var ta tokenAnswer
	in := map[string]string{"address": addr.Hex(), "message": msg, "signature": hexutil.Encode(sig[:])}
	if err := c.do(ctx, request{method: http.MethodPost, path: "/auth/verify", in: in}, &ta); err != nil {
		return err
	}
	if err := c.store("POST /auth/verify", ta); err != nil {
		return err
	}
	c.log.Debug("core login", "wallet", addr.Hex())
	return nil
}

// sign signs digest with the Signer and checks that the signature recovers to the wallet
// (v in {27, 28}). It returns ErrSigner or ErrSignature; nothing is sent on error.
func (c *Client) sign(ctx context.Context, digest [32]byte) ([65]byte, error) {
	s := c.opts.Signer
	if s == nil {
		return [65]byte{}, ErrNoSigner
	}
	sig, err := s.SignDigest(ctx, digest)
	if err != nil {
		return [65]byte{}, fmt.Errorf("%w: %w", ErrSigner, err)
	}
	if sig[64] != 27 && sig[64] != 28 {
		return [65]byte{}, fmt.Errorf("%w: v=%d, want 27 or 28", ErrSignature, sig[64])
	}
	norm := sig
	norm[64] -= 27
	pub, err := crypto.SigToPub(digest[:], norm[:])
	if err != nil || crypto.PubkeyToAddress(*pub) != s.Address() {
		return [65]byte{}, ErrSignature
	}
	return sig, nil
}

// store records a token answer; refreshAt = now + expires_in − margin, the margin being
// Options.RefreshMargin capped at half the lifetime.
func (c *Client) store(op string, ta tokenAnswer) error {
	if ta.AccessToken == "" || ta.RefreshToken == "" || ta.ExpiresIn == nil {
		return &ResponseError{Op: op, Reason: "missing access_token, refresh_token or expires_in"}
	}
	life := time.Duration(*ta.ExpiresIn) * time.Second
	if *ta.ExpiresIn > uint64(365*24*3600) {
		life = 365 * 24 * time.Hour
	}
	margin := min(c.refreshM, life/2)
	c.tok = &tokens{access: ta.AccessToken, refresh: ta.RefreshToken, refreshAt: c.now().Add(life - margin)}
	return nil
}

// accessToken returns a valid access token: the cached one, a refreshed one (POST
// /auth/refresh, §5.1) when it is about to expire, or a new login when there is none or the
// refresh is refused with 401.
func (c *Client) accessToken(ctx context.Context) (string, error) {
	if err := c.lockAuth(ctx); err != nil {
		return "", err
	}
	defer c.unlockAuth()
	if c.tok != nil && c.now().Before(c.tok.refreshAt) {
		return c.tok.access, nil
	}
	if c.tok != nil {
		var ta tokenAnswer
		err := c.do(ctx, request{method: http.MethodPost, path: "/auth/refresh", in: map[string]string{"refresh_token": c.tok.refresh}}, &ta)
		if err == nil {
			if err := c.store("POST /auth/refresh", ta); err != nil {
				return "", err
			}
			c.log.Debug("core token refreshed")
			return c.tok.access, nil
		}
		var he *HTTPError
		if !errors.As(err, &he) || he.Status != http.StatusUnauthorized {
			return "", err
		}
		c.log.Debug("core refused the refresh token; logging in again")
		c.tok = nil
	}
	if err := c.loginLocked(ctx); err != nil {
		return "", err
	}
	return c.tok.access, nil
}

// lockAuth takes the session lock or gives up when ctx ends (a login in flight on another
// goroutine may take as long as Core and the signer do).
func (c *Client) lockAuth(ctx context.Context) error {
	select {
	case c.authSem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return &NetworkError{Op: "wait for the Core session", Err: ctx.Err()}
	}
}

func (c *Client) unlockAuth() { <-c.authSem }

// invalidate forgets the session if its access token is still used (Core answered 401 to
// it), so the next protected call logs in again.
func (c *Client) invalidate(used string) {
	c.authSem <- struct{}{}
	defer c.unlockAuth()
	if c.tok != nil && c.tok.access == used {
		c.tok = nil
	}
}

// Logout revokes the refresh token (POST /auth/logout, §5.1) and forgets the session. It
// reports whether Core revoked a token.
func (c *Client) Logout(ctx context.Context) (bool, error) {
	if err := c.lockAuth(ctx); err != nil {
		return false, err
	}
	defer c.unlockAuth()
	if c.tok == nil {
		return false, nil
	}
	var out struct {
		Revoked bool `json:"revoked"`
	}
	err := c.do(ctx, request{method: http.MethodPost, path: "/auth/logout", in: map[string]string{"refresh_token": c.tok.refresh}}, &out)
	c.tok = nil
	return out.Revoked, err
}

// SIWE bounds on the template fields Core alone chooses (checked before anything is signed).
const (
	siweMaxSkew     = 5 * time.Minute // |Issued At − client clock|
	siweMaxLifetime = time.Hour       // Expiration Time at most this far ahead of the client clock
)

// checkSIWEFields refuses a SIWE template whose URI is on another host than its domain, whose
// Issued At is more than siweMaxSkew from now, or whose Expiration Time is missing, not after
// Issued At or more than siweMaxLifetime ahead: a login message is signed only for the
// checked host and for a short time (ResponseError naming the field; nothing is signed).
func checkSIWEFields(t SIWETemplate, now time.Time) error {
	bad := func(format string, args ...any) error {
		return &ResponseError{Op: "POST /auth/nonce", Reason: "siwe " + fmt.Sprintf(format, args...)}
	}
	u, err := url.Parse(t.URI)
	if err != nil || u.Host == "" {
		return bad("uri %q: not an absolute URI", sanitize(t.URI))
	}
	dh, dp := t.Domain, ""
	if h, p, err := net.SplitHostPort(t.Domain); err == nil {
		dh, dp = h, p
	}
	if !strings.EqualFold(u.Hostname(), dh) || (dp != "" && u.Port() != dp) {
		return bad("uri %q: host is not the domain %q", sanitize(t.URI), sanitize(t.Domain))
	}
	issued, err := time.Parse(time.RFC3339Nano, t.IssuedAt)
	if err != nil {
		return bad("issuedAt %q: not an RFC 3339 time", sanitize(t.IssuedAt))
	}
	if d := issued.Sub(now); d > siweMaxSkew || d < -siweMaxSkew {
		return bad("issuedAt %s is more than %s from this client's clock (%s)", issued.UTC().Format(time.RFC3339), siweMaxSkew, now.UTC().Format(time.RFC3339))
	}
	exp, err := time.Parse(time.RFC3339Nano, t.Expiration)
	if err != nil {
		return bad("expiration %q: missing or not an RFC 3339 time (a login message must expire)", sanitize(t.Expiration))
	}
	if !exp.After(issued) {
		return bad("expiration %s is not after issuedAt %s", exp.UTC().Format(time.RFC3339), issued.UTC().Format(time.RFC3339))
	}
	if exp.Sub(now) > siweMaxLifetime {
		return bad("expiration %s is more than %s ahead of this client's clock", exp.UTC().Format(time.RFC3339), siweMaxLifetime)
	}
	return nil
}
