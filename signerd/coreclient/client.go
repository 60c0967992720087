package coreclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/ethereum/go-ethereum/common"
)

// Signer signs 32-byte digests with the wallet key. hsm.Signer satisfies it: SignDigest
// returns r‖s‖v with v in {27, 28}. The client re-verifies every signature by recovery before
// using it.
type Signer interface {
	Address() common.Address
	SignDigest(ctx context.Context, digest [32]byte) ([65]byte, error)
}

// Domain is what signerd is configured to sign for. Core's public params and SIWE template
// must match it (§1.1, §5.1); otherwise the client refuses with ErrDomainMismatch.
type Domain struct {
	ChainID       uint64 // EIP-712 chainId = Core's chain_id = the chain of every transaction
	EIP712Name    string // e.g. "4mica" (case-sensitive, §1.1)
	EIP712Version string // e.g. "1"
	// Contract pins the Core4Mica address. Deposits, approvals and ERC-20 tab payments need it
	// (ErrNoContract without); views (Contract, UserAssets) fall back to Core's public params.
	Contract common.Address
}

// Options configure a Client. BaseURL and Domain are required.
type Options struct {
	// BaseURL is Core's HTTP base URL, e.g. "https://base.api.4mica.xyz/". http or https, no
	// user info, no query.
	BaseURL string
	// Domain is the expected signing domain.
	Domain Domain
	// Signer is the wallet; needed for login (SIWE) and transactions.
	Signer Signer
	// Chain is the Ethereum RPC (an *ethclient.Client satisfies it); needed for transactions,
	// views and the on-chain pending withdrawal in FreeCollateral.
	Chain Chain
	// HTTPClient talks to Core; default: a client with a 30 s timeout.
	HTTPClient *http.Client
	// SIWEDomain, when set, must equal (case-insensitively) the domain in Core's SIWE template.
	SIWEDomain string
	// Authorize, when set, is asked before any transaction is signed; an error refuses it
	// (ErrDenied). This is where the daemon's spending policy plugs in.
	Authorize func(ctx context.Context, call Call) error
	// Now is the clock (token expiry); default time.Now.
	Now func() time.Time
	// RefreshMargin: refresh the access token this long before it expires (capped at half its
	// lifetime); default 60 s.
	RefreshMargin time.Duration
	// GasMarginPercent is added to eth_estimateGas; default 20.
	GasMarginPercent uint64
	// MaxFeePerGas refuses a transaction whose fee cap would exceed it (ErrDenied); nil means
	// DefaultMaxFeePerGas (there is always a cap: the RPC alone never decides the fee).
	MaxFeePerGas *big.Int
	// ReceiptPoll is the receipt polling interval of Wait; default 1 s.
	ReceiptPoll time.Duration
	// Logger receives debug/warn lines (never tokens); default discards.
	Logger *slog.Logger
}

// Client is a thin client for 4Mica Core's HTTP API and the Core4Mica contract, for one
// wallet. It is safe for concurrent use.
type Client struct {
	base     *url.URL
	opts     Options
	http     *http.Client
	log      *slog.Logger
	now      func() time.Time
	authSem  chan struct{} // capacity 1: serialises login/refresh (single flight), ctx-aware
	tok      *tokens       // guarded by authSem
	stateMu  sync.Mutex
	params   *PublicParams // last discovered, guarded by stateMu
	chainOK  bool          // chain id of Options.Chain verified, guarded by stateMu
	sendMu   sync.Mutex    // one transaction at a time: nonce from PendingNonceAt
	maxBody  int64
	gasPct   uint64
	poll     time.Duration
	refreshM time.Duration
}

const maxAnswer = 16 << 20

// New validates opts and returns a Client. It does no I/O.
func New(opts Options) (*Client, error) {
	if opts.BaseURL == "" {
		return nil, fmt.Errorf("%w: BaseURL is required", ErrInvalidOptions)
	}
	u, err := url.Parse(opts.BaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%w: BaseURL must be an absolute http(s) URL", ErrInvalidOptions)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%w: BaseURL must not carry user info, a query or a fragment", ErrInvalidOptions)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	if opts.Domain.ChainID == 0 {
		return nil, fmt.Errorf("%w: Domain.ChainID is required", ErrInvalidOptions)
	}
	if opts.Domain.EIP712Name == "" || opts.Domain.EIP712Version == "" {
		return nil, fmt.Errorf("%w: Domain.EIP712Name and Domain.EIP712Version are required", ErrInvalidOptions)
	}
	if opts.RefreshMargin < 0 || opts.ReceiptPoll < 0 {
		return nil, fmt.Errorf("%w: negative duration", ErrInvalidOptions)
	}
	if opts.GasMarginPercent > 1000 {
		return nil, fmt.Errorf("%w: GasMarginPercent above 1000", ErrInvalidOptions)
	}
	if opts.MaxFeePerGas != nil && opts.MaxFeePerGas.Sign() <= 0 {
		return nil, fmt.Errorf("%w: MaxFeePerGas must be positive", ErrInvalidOptions)
	}
	c := &Client{base: u, opts: opts, authSem: make(chan struct{}, 1), http: opts.HTTPClient, log: opts.Logger, now: opts.Now,
		maxBody: maxAnswer, gasPct: opts.GasMarginPercent, poll: opts.ReceiptPoll, refreshM: opts.RefreshMargin}
	if c.http == nil {
		c.http = &http.Client{Timeout: 30 * time.Second}
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.gasPct == 0 {
		c.gasPct = 20
	}
	if c.poll == 0 {
		c.poll = time.Second
	}
	if c.refreshM == 0 {
		c.refreshM = 60 * time.Second
	}
	return c, nil
}

// Wallet returns the signer's address (zero without a signer).
func (c *Client) Wallet() common.Address {
	if c.opts.Signer == nil {
		return common.Address{}
	}
	return c.opts.Signer.Address()
}

// request is one HTTP exchange with Core.
type request struct {
	method string
	path   string // absolute path below BaseURL, e.g. "/core/public-params"
	auth   bool   // send the bearer token (every path except §5.1's public ones)
	in     any    // JSON body, or nil
}

// do performs r and decodes a 2xx JSON answer into out (a pointer; JSON null leaves a nil
// pointer target nil). On a protected path a 401 triggers one fresh SIWE login and one retry
// (§5.1); a second 401 is returned as *HTTPError.
func (c *Client) do(ctx context.Context, r request, out any) error {
	status, body, used, err := c.exchange(ctx, r)
	if err != nil {
		return err
	}
	if status == http.StatusUnauthorized && r.auth {
		c.log.Debug("core answered 401; logging in again", "path", r.path)
		c.invalidate(used)
		if status, body, _, err = c.exchange(ctx, r); err != nil {
			return err
		}
	}
	if status < 200 || status > 299 {
		return c.httpError(r, status, body)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(body, out); err != nil {
		return &ResponseError{Op: r.method + " " + r.path, Reason: sanitize(err.Error())}
	}
	return nil
}

// exchange sends r once (with the current bearer token when r.auth) and returns the status,
// the body and the token it used.
func (c *Client) exchange(ctx context.Context, r request) (status int, body []byte, token string, err error) {
	op := r.method + " " + r.path
	if r.auth {
		if token, err = c.accessToken(ctx); err != nil {
			return 0, nil, "", err
		}
	}
	var rd io.Reader
	if r.in != nil {
		b, err := json.Marshal(r.in)
		if err != nil {
			return 0, nil, "", invalidArg("encode %s body: %v", op, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, c.base.String()+r.path, rd)
	if err != nil {
		return 0, nil, "", invalidArg("build %s: %v", op, err)
	}
	req.Header.Set("Accept", "application/json")
	if r.in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, "", &NetworkError{Op: op, Err: stripURL(err)}
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(io.LimitReader(resp.Body, c.maxBody+1))
	if err != nil {
		return 0, nil, "", &NetworkError{Op: op, Err: stripURL(err)}
	}
	if int64(len(body)) > c.maxBody {
		return 0, nil, "", &ResponseError{Op: op, Reason: fmt.Sprintf("answer larger than %d bytes", c.maxBody)}
	}
	return resp.StatusCode, body, token, nil
}

// stripURL drops the *url.Error wrapper (its text repeats the URL) but keeps the cause.
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// httpError builds *HTTPError from Core's {"error": "..."} envelope (§5) or the raw text.
func (c *Client) httpError(r request, status int, body []byte) error {
	var env struct {
		Error *string `json:"error"`
	}
	msg := string(body)
	if json.Unmarshal(body, &env) == nil && env.Error != nil {
		msg = *env.Error
	}
	return &HTTPError{Method: r.method, Path: r.path, Status: status, Message: sanitize(msg)}
}
