package pipeline

import (
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Kind separates the outcomes a caller must never confuse: a request that was refused by
// design (Denied), one that is held for a human (Pending), one that was malformed (Invalid),
// one that conflicts with a previous request (Conflict), and a fault inside the daemon
// (Failed). Every fault on the signing path denies: no signature is returned.
type Kind int

const (
	// Failed is a fault (key backend, store, internal error). Its zero value fails closed.
	Failed Kind = iota
	// Denied is a refusal by the policy, the kill switch or caller identification.
	Denied
	// Invalid is a malformed request; Field names the offending field.
	Invalid
	// Conflict is a replay of (wallet, tab_id, req_id) with different claims.
	Conflict
	// Pending is a request held for approval; ApprovalID says which.
	Pending
)

func (k Kind) String() string {
	switch k {
	case Denied:
		return "denied"
	case Invalid:
		return "invalid"
	case Conflict:
		return "conflict"
	case Pending:
		return "pending"
	default:
		return "failed"
	}
}

// Stable error codes the pipeline returns besides the policy's denial codes.
const (
	CodeInvalidRequest     = "invalid_request"
	CodeUnknownCaller      = "unknown_caller"
	CodeKillSwitch         = "kill_switch_engaged"
	CodeReplayConflict     = "replay_conflict"
	CodeApprovalPending    = "approval_pending"
	CodeApprovalDenied     = "approval_denied"
	CodeOverloaded         = "overloaded"
	CodeBackendUnavailable = "backend_unavailable"
	CodeStoreUnavailable   = "store_unavailable"
	CodeUnknownWallet      = "unknown_wallet"
	CodeInternal           = "internal_error"
	CodeLedgerCorrupt      = "ledger_corrupt" // a stored signature or record failed its check: never returned
)

// Error is every non-success outcome of the pipeline. Reason is safe to show the caller;
// Cause (faults only) is for the log and never leaves the daemon.
type Error struct {
	Kind       Kind
	Status     int    // HTTP status
	Code       string // machine-readable code
	Rule       string // policy rule id, when a rule decided
	Reason     string // one human sentence, safe for the caller
	Field      string // Invalid: the offending field
	RecordID   uint64 // ledger record concerned, if any
	ApprovalID string // Pending: the approval id
	RetryAfter time.Duration
	Cause      error // Failed: the wrapped cause (log only)
}

func (e *Error) Error() string {
	s := e.Kind.String() + " " + e.Code + ": " + e.Reason
	if e.Rule != "" {
		s += " (rule " + e.Rule + ")"
	}
	if e.Cause != nil {
		s += ": " + e.Cause.Error()
	}
	return s
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Cause }

// AsError returns err as *Error; anything else becomes an internal fault.
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return fault(http.StatusInternalServerError, CodeInternal, "internal error", err)
}

func denied(status int, code, rule, reason string) *Error {
	return &Error{Kind: Denied, Status: status, Code: code, Rule: rule, Reason: reason}
}

func invalid(field, format string, a ...any) *Error {
	return &Error{Kind: Invalid, Status: http.StatusBadRequest, Code: CodeInvalidRequest, Field: field,
		Reason: field + ": " + fmt.Sprintf(format, a...)}
}

// Invalidf builds an Invalid error naming field (used by the server's decoders).
func Invalidf(field, format string, a ...any) *Error { return invalid(field, format, a...) }

// ErrApprovalsFull is returned (wrapped) by an Approvals implementation whose capacity for
// pending approvals is used up; the pipeline answers 503 overloaded with Retry-After, a load
// condition rather than a store fault.
var ErrApprovalsFull = errors.New("too many approvals pending")

// ApprovalsFullRetryAfter is the Retry-After sent when ErrApprovalsFull refuses a request.
const ApprovalsFullRetryAfter = 30 * time.Second

func fault(status int, code, reason string, cause error) *Error {
	return &Error{Kind: Failed, Status: status, Code: code, Reason: reason, Cause: cause}
}

// ErrKillSwitch is the denial returned while the kill switch is engaged.
func errKillSwitch() *Error {
	return denied(http.StatusServiceUnavailable, CodeKillSwitch, "", "the kill switch is engaged; no signatures are issued")
}
