// Package approvals holds signing requests that the policy sends to a human: the agent's
// request waits (long poll) while operators list, approve or deny it; an unanswered request
// expires and is denied. Every step is written to the audit log.
//
// A request is identified by its Key (the pipeline derives it from the agent and the claims
// hash), so an agent that re-submits the same request finds the same approval, and once it is
// approved the re-submission proceeds. Budgets are not touched here: the pipeline reserves them
// after approval.
package approvals

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/pipeline"
)

// State is where an approval stands.
type State string

// The states. Expired is a denial decided by the clock.
const (
	Pending  State = "pending"
	Approved State = "approved"
	Denied   State = "denied"
	Expired  State = "expired"
)

// Decided reports whether s is final.
func (s State) Decided() bool { return s != Pending }

// Audit actions (audit.KindApproval, Attrs["action"]).
const (
	ActionRequested = "requested"
	ActionApproved  = "approved"
	ActionDenied    = "denied"
	ActionExpired   = "expired"
)

// Errors. They are safe to show to the caller.
var (
	ErrNotFound       = errors.New("no such approval")
	ErrDecided        = errors.New("approval already decided")
	ErrNoOperator     = errors.New("operator is required")
	ErrNotInGroup     = errors.New("operator is not in the approval's group")
	ErrTooManyWaiting = fmt.Errorf("approvals: %w", pipeline.ErrApprovalsFull)
	// ErrAgentTooManyWaiting is ErrTooManyWaiting for one agent's own cap
	// (Options.MaxPendingPerAgent); errors.Is(err, ErrTooManyWaiting) holds for both.
	ErrAgentTooManyWaiting = fmt.Errorf("%w for this agent", ErrTooManyWaiting)
)

// Clock tells the time; tests inject a fake one.
type Clock interface{ Now() time.Time }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Auditor appends one audit record durably (signerd/ledger's Ledger satisfies it).
type Auditor interface {
	AppendAudit(ctx context.Context, ev audit.Event) (audit.Record, error)
}

// StateStore keeps approvals durable: each change is written under "approval/<id>" together
// with its audit record in one transaction (signerd/ledger's Ledger satisfies it). When
// Options.Auditor also implements StateStore, New uses it and reloads known approvals, so a
// restarted daemon still knows what was pending, approved or denied.
type StateStore interface {
	PutState(ctx context.Context, key string, value []byte, ev audit.Event) error
	StateWithPrefix(prefix string) (map[string][]byte, error)
}

// statePrefix is the StateStore key prefix of approvals.
const statePrefix = "approval/"

// stored is the durable form of one approval.
type stored struct {
	Key      string   `json:"key"` // hex of Request.Key
	Approval Approval `json:"approval"`
}

// Request is a signing request held for approval.
type Request struct {
	Key       [32]byte          // identity of the request (agent + claims hash); same Key → same approval
	Agent     string            // the agent the caller maps to
	Principal string            // the caller, e.g. "uid:1000"
	Wallet    string            // 0x address
	Rule      string            // the policy rule that asked for approval
	Group     string            // the operators' group that may decide
	Timeout   time.Duration     // how long it may wait; 0 = Options.DefaultTimeout
	Summary   map[string]string // what an operator sees (amount, asset, recipient, tab, ...)
}

// Approval is one held request and its decision.
type Approval struct {
	ID        string            `json:"id"`
	State     State             `json:"state"`
	Agent     string            `json:"agent"`
	Principal string            `json:"principal,omitempty"`
	Wallet    string            `json:"wallet,omitempty"`
	Rule      string            `json:"rule,omitempty"`
	Group     string            `json:"group,omitempty"`
	Summary   map[string]string `json:"summary,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
	ExpiresAt time.Time         `json:"expires_at"`
	DecidedAt time.Time         `json:"decided_at,omitzero"`
	DecidedBy string            `json:"decided_by,omitempty"`
	Reason    string            `json:"reason,omitempty"`
}

// Options configure a Manager.
type Options struct {
	Auditor Auditor // required
	Clock   Clock   // default: the system clock
	// DefaultTimeout applies to requests without their own Timeout. Default 15 minutes.
	DefaultTimeout time.Duration
	// Retain is how long decided approvals are kept (so re-submissions find them). Default 24 h.
	Retain time.Duration
	// MaxPending bounds the number of pending approvals. Default 10000.
	MaxPending int
	// MaxPendingPerAgent bounds the pending approvals of one agent, so that one agent cannot
	// fill MaxPending and block everyone else. Default 100 (never more than MaxPending).
	MaxPendingPerAgent int
	// Groups maps a group name to its operators. When nil, any operator may decide any
	// approval; when set, an approval with a Group may only be decided by that group's members
	// (an unknown group has no members).
	Groups map[string][]string
}

type entry struct {
	a       Approval
	key     [32]byte
	decided chan struct{} // closed when the approval is decided
}

// Manager holds approvals in memory. It is safe for concurrent use.
type Manager struct {
	opts  Options
	store StateStore // nil: in memory only
	mu    sync.Mutex
	byID  map[string]*entry
	byKey map[[32]byte]*entry
	// pending counts pending approvals, in all and per agent (kept with every state change).
	pending      int
	pendingAgent map[string]int
}

// New validates opts and returns a Manager.
func New(opts Options) (*Manager, error) {
	if opts.Auditor == nil {
		return nil, errors.New("approvals: Options.Auditor is required")
	}
	if opts.Clock == nil {
		opts.Clock = systemClock{}
	}
	if opts.DefaultTimeout < 0 || opts.Retain < 0 || opts.MaxPending < 0 || opts.MaxPendingPerAgent < 0 {
		return nil, errors.New("approvals: negative option")
	}
	if opts.DefaultTimeout == 0 {
		opts.DefaultTimeout = 15 * time.Minute
	}
	if opts.Retain == 0 {
		opts.Retain = 24 * time.Hour
	}
	if opts.MaxPending == 0 {
		opts.MaxPending = 10000
	}
	if opts.MaxPendingPerAgent == 0 {
		opts.MaxPendingPerAgent = 100
	}
	opts.MaxPendingPerAgent = min(opts.MaxPendingPerAgent, opts.MaxPending)
	m := &Manager{opts: opts, byID: map[string]*entry{}, byKey: map[[32]byte]*entry{}, pendingAgent: map[string]int{}}
	if st, ok := opts.Auditor.(StateStore); ok {
		m.store = st
		if err := m.load(); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// load restores approvals from the store (decided ones older than Retain are left out).
func (m *Manager) load() error {
	all, err := m.store.StateWithPrefix(statePrefix)
	if err != nil {
		return fmt.Errorf("approvals: loading: %w", err)
	}
	now := m.opts.Clock.Now()
	for k, v := range all {
		var st stored
		if err := json.Unmarshal(v, &st); err != nil {
			return fmt.Errorf("approvals: %s is corrupt: %w", k, err)
		}
		kb, herr := hex.DecodeString(st.Key)
		if herr != nil || len(kb) != 32 || st.Approval.ID == "" {
			return fmt.Errorf("approvals: %s is corrupt", k)
		}
		if st.Approval.State.Decided() && now.Sub(st.Approval.DecidedAt) > m.opts.Retain {
			continue
		}
		e := &entry{a: st.Approval, decided: make(chan struct{})}
		copy(e.key[:], kb)
		if e.a.State.Decided() {
			close(e.decided)
		} else {
			m.countPending(e.a.Agent, 1)
		}
		m.byID[e.a.ID] = e
		m.byKey[e.key] = e
	}
	return nil
}

// record makes a (the new state of e) durable together with ev, or only audits ev without a store.
func (m *Manager) record(ctx context.Context, e *entry, a Approval, ev audit.Event) error {
	if m.store == nil {
		_, err := m.opts.Auditor.AppendAudit(ctx, ev)
		return err
	}
	raw, err := json.Marshal(stored{Key: hex.EncodeToString(e.key[:]), Approval: a})
	if err != nil {
		return err
	}
	return m.store.PutState(ctx, statePrefix+a.ID, raw, ev)
}

func newID() string {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("approvals: crypto/rand failed: " + err.Error())
	}
	return "apr_" + hex.EncodeToString(b[:])
}

func (m *Manager) event(e *entry, action, operator, reason string) audit.Event {
	attrs := map[string]string{"action": action}
	if e.a.Group != "" {
		attrs["group"] = e.a.Group
	}
	for k, v := range e.a.Summary {
		if v != "" {
			attrs["summary."+k] = v
		}
	}
	if action == ActionRequested {
		attrs["expires_at"] = e.a.ExpiresAt.UTC().Format(time.RFC3339Nano)
	}
	return audit.Event{Kind: audit.KindApproval, ApprovalID: e.a.ID, Agent: e.a.Agent, Principal: e.a.Principal,
		Wallet: e.a.Wallet, Rule: e.a.Rule, Operator: operator, Reason: reason, Attrs: attrs}
}

// Submit files r and returns its approval. While an approval with the same Key is known (pending,
// or decided within Retain), that approval is returned instead and nothing new is filed. The
// request is audited before Submit returns; if the audit record cannot be written nothing is
// filed and the error is returned.
func (m *Manager) Submit(ctx context.Context, r Request) (Approval, error) {
	expired := m.sweep()
	defer m.auditExpired(ctx, expired)
	now := m.opts.Clock.Now()
	m.mu.Lock()
	if e, ok := m.byKey[r.Key]; ok {
		a := e.a
		m.mu.Unlock()
		return a, nil
	}
	if m.pending >= m.opts.MaxPending {
		m.mu.Unlock()
		return Approval{}, ErrTooManyWaiting
	}
	if m.pendingAgent[r.Agent] >= m.opts.MaxPendingPerAgent {
		m.mu.Unlock()
		return Approval{}, ErrAgentTooManyWaiting
	}
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = m.opts.DefaultTimeout
	}
	e := &entry{key: r.Key, decided: make(chan struct{}), a: Approval{
		ID: newID(), State: Pending, Agent: r.Agent, Principal: r.Principal, Wallet: r.Wallet,
		Rule: r.Rule, Group: r.Group, Summary: maps(r.Summary), CreatedAt: now, ExpiresAt: now.Add(timeout),
	}}
	// Reserve the key so a concurrent Submit of the same request waits for this one's audit.
	m.byKey[r.Key] = e
	m.byID[e.a.ID] = e
	m.countPending(r.Agent, 1)
	m.mu.Unlock()
	if err := m.record(ctx, e, e.a, m.event(e, ActionRequested, "", "")); err != nil {
		m.mu.Lock()
		delete(m.byKey, r.Key)
		delete(m.byID, e.a.ID)
		m.countPending(r.Agent, -1)
		m.mu.Unlock()
		close(e.decided)
		return Approval{}, fmt.Errorf("approvals: recording the request: %w", err)
	}
	return e.a, nil
}

func maps(in map[string]string) map[string]string {
	if in == nil {
		return nil
	}
	out := make(map[string]string, len(in))
	for k, v := range in {
		out[k] = v
	}
	return out
}

// countPending adds delta to the pending counts (m.mu held).
func (m *Manager) countPending(agent string, delta int) {
	m.pending += delta
	if n := m.pendingAgent[agent] + delta; n > 0 {
		m.pendingAgent[agent] = n
	} else {
		delete(m.pendingAgent, agent)
	}
}

// Find returns the known approvals for which match reports true, in no particular order.
// match runs under the Manager's lock and must be cheap; it may see a pending approval whose
// ExpiresAt has passed (not swept yet), so callers check ExpiresAt themselves.
func (m *Manager) Find(match func(a *Approval) bool) []Approval {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Approval
	for _, e := range m.byID {
		if match(&e.a) {
			out = append(out, e.a)
		}
	}
	return out
}

// Lookup returns the approval filed for key, if one is known.
func (m *Manager) Lookup(key [32]byte) (Approval, bool) {
	m.auditExpired(context.Background(), m.sweep())
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.byKey[key]
	if !ok {
		return Approval{}, false
	}
	return e.a, true
}

// Get returns one approval.
func (m *Manager) Get(id string) (Approval, error) {
	m.auditExpired(context.Background(), m.sweep())
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.byID[id]
	if !ok {
		return Approval{}, ErrNotFound
	}
	return e.a, nil
}

// List returns every known approval, pending first, then newest first.
func (m *Manager) List() []Approval {
	m.auditExpired(context.Background(), m.sweep())
	m.mu.Lock()
	out := make([]Approval, 0, len(m.byID))
	for _, e := range m.byID {
		out = append(out, e.a)
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		pi, pj := out[i].State == Pending, out[j].State == Pending
		if pi != pj {
			return pi
		}
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.After(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Wait blocks until the approval is decided, maxWait passes, or ctx ends, and returns the
// approval as it then stands (Pending on timeout). It returns ErrNotFound for an unknown id and
// ctx's error (with the current approval) when ctx ends.
func (m *Manager) Wait(ctx context.Context, id string, maxWait time.Duration) (Approval, error) {
	a, err := m.Get(id)
	if err != nil || a.State.Decided() || maxWait <= 0 {
		return a, err
	}
	m.mu.Lock()
	e := m.byID[id]
	m.mu.Unlock()
	if e == nil {
		return a, ErrNotFound
	}
	// Wake up at maxWait, or when the approval is due to expire (by the wall clock).
	wait := maxWait
	if left := a.ExpiresAt.Sub(m.opts.Clock.Now()); left >= 0 && left < wait {
		wait = left + time.Millisecond
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-e.decided:
	case <-t.C:
	case <-ctx.Done():
		a, _ := m.Get(id)
		return a, ctx.Err()
	}
	return m.Get(id)
}

// Approve decides an approval in favour. The decision is audited before it takes effect.
func (m *Manager) Approve(ctx context.Context, id, operator string) (Approval, error) {
	return m.decide(ctx, id, operator, Approved, "")
}

// Deny decides an approval against, with the operator's reason.
func (m *Manager) Deny(ctx context.Context, id, operator, reason string) (Approval, error) {
	if reason == "" {
		reason = "denied by " + operator
	}
	return m.decide(ctx, id, operator, Denied, reason)
}

func (m *Manager) decide(ctx context.Context, id, operator string, to State, reason string) (Approval, error) {
	if operator == "" {
		return Approval{}, ErrNoOperator
	}
	m.auditExpired(ctx, m.sweep())
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.byID[id]
	if !ok {
		return Approval{}, ErrNotFound
	}
	if e.a.State.Decided() {
		return e.a, fmt.Errorf("%w: %s", ErrDecided, e.a.State)
	}
	if m.opts.Groups != nil && e.a.Group != "" && !slices.Contains(m.opts.Groups[e.a.Group], operator) {
		return e.a, fmt.Errorf("%w %q", ErrNotInGroup, e.a.Group)
	}
	action := ActionApproved
	if to == Denied {
		action = ActionDenied
	}
	// Record first; hold the lock so nobody else decides meanwhile. The store never calls back.
	next := e.a
	next.State, next.DecidedBy, next.DecidedAt, next.Reason = to, operator, m.opts.Clock.Now(), reason
	if err := m.record(ctx, e, next, m.event(e, action, operator, reason)); err != nil {
		return e.a, fmt.Errorf("approvals: recording the decision: %w", err)
	}
	e.a = next
	m.countPending(e.a.Agent, -1)
	close(e.decided)
	return e.a, nil
}

// Sweep expires due approvals (audited) and forgets decided ones older than Retain. Run calls
// it periodically; every other method calls it too, so expiry is exact even without Run.
func (m *Manager) Sweep(ctx context.Context) { m.auditExpired(ctx, m.sweep()) }

// expiry is one expired approval still to be recorded.
type expiry struct {
	e  *entry
	a  Approval
	ev audit.Event
}

// sweep does the in-memory part and returns the expiries to record.
func (m *Manager) sweep() []expiry {
	now := m.opts.Clock.Now()
	var evs []expiry
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, e := range m.byID {
		switch {
		case e.a.State == Pending && !now.Before(e.a.ExpiresAt):
			e.a.State, e.a.DecidedAt, e.a.DecidedBy = Expired, now, "signerd"
			e.a.Reason = "approval expired after " + e.a.ExpiresAt.Sub(e.a.CreatedAt).String() + " without a decision"
			m.countPending(e.a.Agent, -1)
			close(e.decided)
			evs = append(evs, expiry{e, e.a, m.event(e, ActionExpired, "", e.a.Reason)})
		case e.a.State.Decided() && now.Sub(e.a.DecidedAt) > m.opts.Retain:
			delete(m.byID, id)
			if m.byKey[e.key] == e {
				delete(m.byKey, e.key)
			}
		}
	}
	return evs
}

// auditExpired writes expiry records. Expiry takes effect even if the record cannot be written
// (it only ever denies); the error is dropped here and the next write reports the store fault.
func (m *Manager) auditExpired(ctx context.Context, evs []expiry) {
	for _, x := range evs {
		_ = m.record(ctx, x.e, x.a, x.ev)
	}
}

// Run sweeps every interval until ctx ends.
func (m *Manager) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.Sweep(ctx)
		}
	}
}
