package coreclient

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
)

// Error classes. Every error this package returns matches exactly one of them with errors.Is;
// the concrete types below carry the details. Messages never contain tokens, PINs or keys.
var (
	// ErrInvalidOptions: New was given unusable Options.
	ErrInvalidOptions = errors.New("coreclient: invalid options")
	// ErrInvalidArgument: a method was called with an unusable argument; nothing was sent.
	ErrInvalidArgument = errors.New("coreclient: invalid argument")
	// ErrUnreachable: Core could not be reached or the exchange broke off (dial, TLS, timeout,
	// reset, truncated body). Matched by *NetworkError. Retrying later may help.
	ErrUnreachable = errors.New("coreclient: Core unreachable")
	// ErrRefused: Core answered with a non-2xx status. Matched by *HTTPError.
	ErrRefused = errors.New("coreclient: Core refused the request")
	// ErrBadResponse: Core answered 2xx with a body that does not follow the protocol
	// (malformed JSON, missing required field, value out of range). Matched by *ResponseError.
	ErrBadResponse = errors.New("coreclient: malformed answer from Core")
	// ErrDomainMismatch: Core (or its SIWE template) names a chain id, EIP-712 name/version or
	// contract other than the configured one; signerd must not sign for it. *DomainMismatchError.
	ErrDomainMismatch = errors.New("coreclient: Core's domain differs from the configured one")
	// ErrSigner: the wallet's Signer failed; nothing was sent.
	ErrSigner = errors.New("coreclient: signer failed")
	// ErrSignature: a signature from the Signer does not recover to the wallet address (or has
	// a bad v); refused before anything was sent.
	ErrSignature = errors.New("coreclient: signature does not recover to the wallet")
	// ErrNoSigner / ErrNoChain: the operation needs Options.Signer / Options.Chain.
	ErrNoSigner = errors.New("coreclient: no signer configured")
	ErrNoChain  = errors.New("coreclient: no chain configured")
	// ErrNoContract: a call that moves value or grants an allowance needs the Core4Mica
	// address pinned in Options.Domain.Contract; Core's public params alone are not trusted.
	ErrNoContract = errors.New("coreclient: no Core4Mica contract pinned (Options.Domain.Contract)")
	// ErrChain: the chain RPC failed or refused (nonce, gas estimate, fees, send, receipt, call).
	// Matched by *ChainError.
	ErrChain = errors.New("coreclient: chain RPC failed")
	// ErrChainMismatch: the chain RPC reports a chain id other than the configured one.
	ErrChainMismatch = errors.New("coreclient: chain id of the RPC differs from the configured one")
	// ErrDenied: Options.Authorize refused a transaction; nothing was signed.
	ErrDenied = errors.New("coreclient: transaction denied by policy")
	// ErrTxReverted: the transaction was mined with status 0. Matched by *RevertedError.
	ErrTxReverted = errors.New("coreclient: transaction reverted")
)

// HTTPError is a non-2xx answer from Core: the status and Core's message from its
// {"error": "<message>"} envelope (§5), or the trimmed text body when the answer is not that
// envelope (axum rejects malformed request JSON before Core's handler with its own text, §5).
type HTTPError struct {
	Method  string
	Path    string // request path without query; holds no secrets
	Status  int
	Message string // Core's message, sanitised (printable, at most 300 bytes)
}

// Error returns "coreclient: Core answered <status> to <method> <path>: <message>".
func (e *HTTPError) Error() string {
	return fmt.Sprintf("coreclient: Core answered %d to %s %s: %s", e.Status, e.Method, e.Path, e.Message)
}

// Is makes errors.Is(err, ErrRefused) true.
func (e *HTTPError) Is(target error) bool { return target == ErrRefused }

// NetworkError is a transport fault talking to Core.
type NetworkError struct {
	Op  string // "GET /core/public-params"
	Err error  // cause, for the log
}

// Error returns a message naming the operation and the cause.
func (e *NetworkError) Error() string { return "coreclient: " + e.Op + ": " + e.Err.Error() }

// Unwrap returns the cause.
func (e *NetworkError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrUnreachable) true.
func (e *NetworkError) Is(target error) bool { return target == ErrUnreachable }

// ResponseError is a 2xx answer that does not follow the protocol.
type ResponseError struct {
	Op     string
	Reason string
}

// Error returns a message naming the operation and what was wrong.
func (e *ResponseError) Error() string {
	return "coreclient: malformed answer to " + e.Op + ": " + e.Reason
}

// Is makes errors.Is(err, ErrBadResponse) true.
func (e *ResponseError) Is(target error) bool { return target == ErrBadResponse }

// DomainMismatchError names the first field in which Core's domain differs from the
// configured one.
type DomainMismatchError struct {
	Field string // "chain_id", "eip712_name", "eip712_version", "contract_address", "siwe.chainId", "siwe.domain"
	Core  string // what Core says
	Want  string // what signerd is configured for
}

// Error returns "coreclient: domain mismatch: <field>: Core has <x>, configured <y>".
func (e *DomainMismatchError) Error() string {
	return fmt.Sprintf("coreclient: domain mismatch: %s: Core has %q, configured %q", e.Field, e.Core, e.Want)
}

// Is makes errors.Is(err, ErrDomainMismatch) true.
func (e *DomainMismatchError) Is(target error) bool { return target == ErrDomainMismatch }

// ChainError is a failed chain RPC call.
type ChainError struct {
	Op  string // "EstimateGas", "SendTransaction", …
	Err error
}

// Error returns "coreclient: chain <op>: <cause>".
func (e *ChainError) Error() string { return "coreclient: chain " + e.Op + ": " + e.Err.Error() }

// Unwrap returns the cause.
func (e *ChainError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrChain) true.
func (e *ChainError) Is(target error) bool { return target == ErrChain }

// RevertedError is a mined transaction with status 0.
type RevertedError struct {
	TxHash string
	Block  uint64
}

// Error returns a message with the transaction hash and block.
func (e *RevertedError) Error() string {
	return fmt.Sprintf("coreclient: transaction %s reverted in block %d", e.TxHash, e.Block)
}

// Is makes errors.Is(err, ErrTxReverted) true.
func (e *RevertedError) Is(target error) bool { return target == ErrTxReverted }

func invalidArg(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidArgument, fmt.Sprintf(format, args...))
}

// sanitize makes text from Core safe to put into an error: printable runes only, at most
// 300 bytes.
func sanitize(s string) string {
	s = strings.TrimSpace(s)
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= 300 {
			b.WriteString("…")
			break
		}
		if unicode.IsPrint(r) {
			b.WriteRune(r)
		} else {
			b.WriteByte(' ')
		}
	}
	if b.Len() == 0 {
		return "(empty body)"
	}
	return b.String()
}
