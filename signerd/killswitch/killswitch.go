// Package killswitch is signerd's emergency stop: one switch that, once engaged, lets no
// further signature leave the daemon until operators resume it.
//
// The hot path reads one atomic flag (Engaged) and takes an in-flight pass (Pass) right before
// signing; Engage sets the flag, makes it durable with an audit record and then waits until
// every outstanding pass is released, so when Engage returns no signature is on its way out.
// The state survives restarts (New loads it from the Store), a trip file engages it, and
// Resume may require a second, different operator's confirmation within a time limit.
package killswitch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ethereum/go-ethereum/common"

	"github.com/signerd/signerd/signerd/audit"
)

// StateKey is the key under which the switch keeps its state in the Store.
const StateKey = "killswitch"

// Actions the switch records in its audit records (audit.KindKillSwitch, Attrs["action"]).
const (
	ActionEngaged         = "engaged"
	ActionResumeRequested = "resume_requested"
	ActionResumeExpired   = "resume_expired"
	ActionResumed         = "resumed"
)

// Errors returned by Resume and Engage. They are safe to show to an operator.
var (
	// ErrNotEngaged: Resume was called while the switch is not engaged.
	ErrNotEngaged = errors.New("kill switch is not engaged")
	// ErrSameOperator: the confirming operator is the one who asked for the resume.
	ErrSameOperator = errors.New("resume must be confirmed by a different operator")
	// ErrConfirmExpired: the confirmation came after ConfirmWithin; the pending resume is dropped.
	ErrConfirmExpired = errors.New("pending resume expired; ask again")
	// ErrTripFilePresent: the trip file still exists, so resuming would re-engage at once.
	ErrTripFilePresent = errors.New("trip file still present; remove it before resuming")
	// ErrNoOperator: an operator name is required.
	ErrNoOperator = errors.New("operator is required")
	// ErrCorrupt: the stored state cannot be decoded; the switch starts engaged.
	ErrCorrupt = errors.New("kill switch state is corrupt")
	// ErrNotReady: Options.BeforeResume failed (e.g. the key backend could not be reopened
	// after its keys were zeroized); the switch stays engaged.
	ErrNotReady = errors.New("kill switch stays engaged: the daemon could not be made ready to sign again")
)

// Clock tells the time; tests inject a fake one.
type Clock interface{ Now() time.Time }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Store keeps the switch's state durable and records each change in the audit log in the
// same transaction (signerd/ledger's Ledger satisfies it). GetState returns (nil, nil) when the
// key was never written.
type Store interface {
	PutState(ctx context.Context, key string, value []byte, ev audit.Event) error
	GetState(key string) ([]byte, error)
}

// Options configure a Switch.
type Options struct {
	Store Store // required
	Clock Clock // default: the system clock
	// RequireSecondOperator makes Resume a two-step action: a first operator asks, a second,
	// different operator confirms within ConfirmWithin.
	RequireSecondOperator bool
	ConfirmWithin         time.Duration // default 10 minutes
	// TripFile, when set, engages the switch whenever the file exists (see Watch).
	TripFile     string
	TripInterval time.Duration // how often Watch polls TripFile; default 200 ms
	// OnEngage runs once per transition to engaged, after in-flight passes have drained
	// (e.g. to zeroize unsealed keys). It must not block for long.
	OnEngage func()
	// BeforeResume, when set, runs when a Resume call is about to release the switch (after
	// the second operator's confirmation, if required), with the switch still engaged; e.g. to
	// reopen a key backend whose keys OnEngage zeroized. If it fails, Resume returns an error
	// wrapping ErrNotReady, nothing is recorded and the switch stays engaged (a pending resume
	// stays pending). It runs under the switch's state lock: Status waits for it.
	BeforeResume func(ctx context.Context) error
	// AutoTrip, when set, engages the switch automatically on bursts (see Observe).
	AutoTrip *AutoTrip
}

// AutoTrip engages the switch when too many denials, or too much spend, happen in a window.
// Zero fields disable that trigger.
type AutoTrip struct {
	MaxDenials int           // denials within Window that trip the switch
	Window     time.Duration // the denial burst's sliding window
	// Spend lists the spend-velocity trip wires, each with its own asset, limit and window.
	Spend []SpendTrip
}

// SpendTrip trips the switch when the base units signed within Window exceed Limit. Asset
// names the token counted; nil counts every asset's base units summed. Sums saturate at the
// largest uint64 (which trips every wire).
type SpendTrip struct {
	Asset  *common.Address
	Limit  uint64
	Window time.Duration
}

// validate checks the windows of the enabled triggers.
func (a *AutoTrip) validate() error {
	if a == nil {
		return nil
	}
	if a.MaxDenials > 0 && a.Window <= 0 {
		return errors.New("killswitch: AutoTrip.Window must be positive")
	}
	for _, w := range a.Spend {
		if w.Window <= 0 {
			return errors.New("killswitch: AutoTrip.Spend window must be positive")
		}
	}
	return nil
}

// PendingResume is a resume asked for by one operator, waiting for a second.
type PendingResume struct {
	By        string    `json:"by"`
	At        time.Time `json:"at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Status is the switch's state as operators see it.
type Status struct {
	Engaged               bool           `json:"engaged"`
	Reason                string         `json:"reason,omitempty"`
	By                    string         `json:"by,omitempty"`
	Since                 time.Time      `json:"since,omitzero"`
	PendingResume         *PendingResume `json:"pending_resume,omitempty"`
	RequireSecondOperator bool           `json:"require_second_operator"`
	Inflight              int64          `json:"inflight"` // passes held (plus refusals being counted)
}

// ResumeResult says what a Resume call did.
type ResumeResult struct {
	Resumed bool           `json:"resumed"`           // the switch is released
	Pending *PendingResume `json:"pending,omitempty"` // a second operator must confirm
}

// persisted is the stored form of the state.
type persisted struct {
	Engaged bool           `json:"engaged"`
	Reason  string         `json:"reason,omitempty"`
	By      string         `json:"by,omitempty"`
	Since   time.Time      `json:"since,omitzero"`
	Pending *PendingResume `json:"pending_resume,omitempty"`
}

// Switch is the kill switch. It is safe for concurrent use.
type Switch struct {
	opts Options

	engaged  atomic.Bool
	inflight atomic.Int64
	drained  chan struct{} // a token is sent when inflight drops to zero while engaged

	mu    sync.Mutex // guards state and serializes state changes
	state persisted

	auto     autoState
	autoTrip atomic.Pointer[AutoTrip]
}

// New opens the switch, loading its durable state: a daemon restarted while engaged starts
// engaged. If the stored state cannot be decoded the switch starts engaged and New returns
// the switch together with an error wrapping ErrCorrupt (fail closed).
func New(opts Options) (*Switch, error) {
	if opts.Store == nil {
		return nil, errors.New("killswitch: Options.Store is required")
	}
	if opts.Clock == nil {
		opts.Clock = systemClock{}
	}
	if opts.ConfirmWithin < 0 || opts.TripInterval < 0 {
		return nil, errors.New("killswitch: negative duration in options")
	}
	if opts.ConfirmWithin == 0 {
		opts.ConfirmWithin = 10 * time.Minute
	}
	if opts.TripInterval == 0 {
		opts.TripInterval = 200 * time.Millisecond
	}
	if err := opts.AutoTrip.validate(); err != nil {
		return nil, err
	}
	s := &Switch{opts: opts, drained: make(chan struct{}, 1)}
	if opts.AutoTrip != nil {
		s.autoTrip.Store(opts.AutoTrip.clone())
	}
	raw, err := opts.Store.GetState(StateKey)
	if err != nil {
		return nil, fmt.Errorf("killswitch: loading state: %w", err)
	}
	if len(raw) > 0 {
		var p persisted
		if err := json.Unmarshal(raw, &p); err != nil {
			s.state = persisted{Engaged: true, Reason: "stored kill switch state is corrupt", By: "signerd", Since: opts.Clock.Now()}
			s.engaged.Store(true)
			return s, fmt.Errorf("killswitch: %w: %v", ErrCorrupt, err)
		}
		s.state = p
		s.engaged.Store(p.Engaged)
	}
	return s, nil
}

// Engaged reports whether the switch is engaged. It is one atomic load.
func (s *Switch) Engaged() bool { return s.engaged.Load() }

// Pass takes an in-flight pass for one signature. ok is false when the switch is engaged;
// otherwise release must be called (once) after the signature has been written out or dropped.
// Engage waits for every pass taken before it to be released.
func (s *Switch) Pass() (release func(), ok bool) {
	s.inflight.Add(1)
	if s.engaged.Load() {
		s.done()
		return nil, false
	}
	var once atomic.Bool
	return func() {
		if once.CompareAndSwap(false, true) {
			s.done()
		}
	}, true
}

func (s *Switch) done() {
	if s.inflight.Add(-1) == 0 && s.engaged.Load() {
		select {
		case s.drained <- struct{}{}:
		default:
		}
	}
}

// Engage engages the switch: from this call on no new pass is granted. It records the state
// durably with an audit record and then waits until every outstanding pass is released, so
// once Engage returns nil no further signature can leave the daemon. If ctx ends first the
// switch stays engaged and ctx's error is returned. A storage error leaves the switch engaged
// in memory (fail closed) and is returned. Engaging an engaged switch keeps the first reason.
func (s *Switch) Engage(ctx context.Context, operator, reason string) error {
	if operator == "" {
		return ErrNoOperator
	}
	s.engaged.Store(true)
	first, err := s.persistEngage(ctx, operator, reason)
	if err != nil {
		return err
	}
	if err := s.waitDrained(ctx); err != nil {
		if first && s.opts.OnEngage != nil {
			go func() {
				_ = s.waitDrained(context.Background())
				s.opts.OnEngage()
			}()
		}
		return err
	}
	if first && s.opts.OnEngage != nil {
		s.opts.OnEngage()
	}
	return nil
}

// persistEngage records the engaged state; first reports a transition from not engaged.
func (s *Switch) persistEngage(ctx context.Context, operator, reason string) (first bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.engaged.Store(true) // a Resume racing with this Engage may have cleared the flag
	if s.state.Engaged && s.state.Pending == nil {
		return false, nil // already durable
	}
	now := s.opts.Clock.Now()
	next := s.state
	first = !next.Engaged
	if first {
		next = persisted{Engaged: true, Reason: reason, By: operator, Since: now}
	}
	next.Pending = nil // a new stop cancels a pending resume
	ev := event(ActionEngaged, operator, reason, nil)
	if err := s.put(ctx, next, ev); err != nil {
		// Stay engaged in memory; the durable record could not be written (a later Engage
		// retries, since s.state still says what is on disk).
		return first, fmt.Errorf("killswitch: engaged in memory but not recorded durably: %w", err)
	}
	s.state = next
	return first, nil
}

func event(action, operator, reason string, attrs map[string]string) audit.Event {
	if attrs == nil {
		attrs = map[string]string{}
	}
	attrs["action"] = action
	return audit.Event{Kind: audit.KindKillSwitch, Operator: operator, Reason: reason, Attrs: attrs}
}

func (s *Switch) put(ctx context.Context, p persisted, ev audit.Event) error {
	raw, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return s.opts.Store.PutState(ctx, StateKey, raw, ev)
}

func (s *Switch) waitDrained(ctx context.Context) error {
	t := time.NewTicker(5 * time.Millisecond) // belt and braces against a lost token
	defer t.Stop()
	for s.inflight.Load() != 0 {
		select {
		case <-s.drained:
		case <-t.C:
		case <-ctx.Done():
			return fmt.Errorf("killswitch: engaged, but %d signatures still in flight: %w", s.inflight.Load(), ctx.Err())
		}
	}
	return nil
}

// Resume asks to release the switch. Without RequireSecondOperator it releases at once. With
// it, the first call records a pending resume (Result.Pending) and a second call by a different
// operator within ConfirmWithin releases the switch; the same operator again gives
// ErrSameOperator, a late confirmation ErrConfirmExpired (and drops the pending resume).
func (s *Switch) Resume(ctx context.Context, operator string) (ResumeResult, error) {
	if operator == "" {
		return ResumeResult{}, ErrNoOperator
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.state.Engaged && !s.engaged.Load() {
		return ResumeResult{}, ErrNotEngaged
	}
	if s.opts.TripFile != "" {
		if _, err := os.Stat(s.opts.TripFile); err == nil {
			return ResumeResult{}, ErrTripFilePresent
		}
	}
	now := s.opts.Clock.Now()
	if s.opts.RequireSecondOperator {
		p := s.state.Pending
		switch {
		case p == nil:
			next := s.state
			next.Pending = &PendingResume{By: operator, At: now, ExpiresAt: now.Add(s.opts.ConfirmWithin)}
			ev := event(ActionResumeRequested, operator, "",
				map[string]string{"expires_at": next.Pending.ExpiresAt.UTC().Format(time.RFC3339Nano)})
			if err := s.put(ctx, next, ev); err != nil {
				return ResumeResult{}, fmt.Errorf("killswitch: recording resume request: %w", err)
			}
			s.state = next
			pc := *next.Pending
			return ResumeResult{Pending: &pc}, nil
		case now.After(p.ExpiresAt):
			next := s.state
			next.Pending = nil
			ev := event(ActionResumeExpired, operator, "confirmation too late; pending resume dropped",
				map[string]string{"requested_by": p.By})
			if err := s.put(ctx, next, ev); err != nil {
				return ResumeResult{}, fmt.Errorf("killswitch: dropping expired resume: %w", err)
			}
			s.state = next
			return ResumeResult{}, ErrConfirmExpired
		case p.By == operator:
			return ResumeResult{}, ErrSameOperator
		}
	}
	if s.opts.BeforeResume != nil {
		if err := s.opts.BeforeResume(ctx); err != nil {
			return ResumeResult{}, fmt.Errorf("%w: %w", ErrNotReady, err)
		}
	}
	ev := event(ActionResumed, operator, "", nil)
	if p := s.state.Pending; p != nil {
		ev.Attrs["requested_by"] = p.By
	}
	if err := s.put(ctx, persisted{}, ev); err != nil {
		return ResumeResult{}, fmt.Errorf("killswitch: recording resume: %w", err)
	}
	s.state = persisted{}
	s.auto.reset()
	s.engaged.Store(false)
	return ResumeResult{Resumed: true}, nil
}

// Status returns the switch's state.
func (s *Switch) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{
		Engaged:               s.engaged.Load(),
		Reason:                s.state.Reason,
		By:                    s.state.By,
		Since:                 s.state.Since,
		RequireSecondOperator: s.opts.RequireSecondOperator,
		Inflight:              s.inflight.Load(),
	}
	if p := s.state.Pending; p != nil {
		pc := *p
		st.PendingResume = &pc
	}
	if st.Engaged && !s.state.Engaged {
		st.Reason = "engaged in memory; durable record pending or failed"
	}
	return st
}

// Watch polls the trip file (if configured) every TripInterval until ctx ends, engaging the
// switch whenever the file exists. It returns when ctx is done. Engage errors are passed to
// onError (which may be nil).
func (s *Switch) Watch(ctx context.Context, onError func(error)) {
	if s.opts.TripFile == "" {
		<-ctx.Done()
		return
	}
	t := time.NewTicker(s.opts.TripInterval)
	defer t.Stop()
	for {
		s.checkTripFile(ctx, onError)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Switch) checkTripFile(ctx context.Context, onError func(error)) {
	if s.engaged.Load() {
		return
	}
	if _, err := os.Stat(s.opts.TripFile); err != nil {
		return
	}
	if err := s.Engage(ctx, "trip-file", "trip file "+s.opts.TripFile+" exists"); err != nil && onError != nil {
		onError(err)
	}
}
