// Package server is signerd's daemon: two HTTP/1.1 servers on Unix sockets (agent and admin),
// caller identity from SO_PEERCRED, JSON and CBOR codecs with strict decoding, the error
// envelope, the agent and admin routes, Prometheus metrics, and the assembly of the daemon's
// parts (key backend, ledger and audit log, policy, kill switch, approvals, signing pipeline).
//
// Open builds a Daemon from a config; Serve runs it; Shutdown drains in-flight requests and
// closes everything. cmd/signerd wraps it with signals; tests start it in-process.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ethereum/go-ethereum/common"

	"github.com/signerd/signerd/hsm"
	_ "github.com/signerd/signerd/hsm/backends" // link every key backend this build includes
	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/approvals"
	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/config"
	"github.com/signerd/signerd/signerd/coreclient"
	"github.com/signerd/signerd/signerd/fourmica"
	"github.com/signerd/signerd/signerd/killswitch"
	"github.com/signerd/signerd/signerd/ledger"
	"github.com/signerd/signerd/signerd/pipeline"
)

// Options configure Open beyond the config file.
type Options struct {
	Config *config.Config
	Logger *slog.Logger     // default: slog.Default()
	Clock  func() time.Time // default: time.Now
	// Backend, if set, is used instead of opening Config.HSM (tests). The daemon closes it.
	Backend hsm.Backend
	// SelfUID is the uid a policy's `uid: self` means (default: the process's uid).
	SelfUID *uint32
	// CoreChain, CoreURL and CoreReceiptPoll are test hooks for the Core connection (config
	// core:): a chain used instead of dialling the RPC (a simulated backend), a Core base URL
	// replacing core.url, and the receipt polling interval (default 1 s).
	CoreChain       coreclient.Chain
	CoreURL         string
	CoreReceiptPoll time.Duration
}

// Daemon is a running signerd.
type Daemon struct {
	cfg   *config.Config
	log   *slog.Logger
	clock func() time.Time
	self  uint32

	backendMu sync.RWMutex // guards backend (swapped when a zeroized backend is reopened)
	backend   hsm.Backend
	zeroized  atomic.Bool // the backend's in-memory keys were zeroized by the kill switch
	keys      *keyring
	ledger    ledger.Engine
	ks        *killswitch.Switch
	refusals  *refusalAuditor // decision records of kill-switch and unknown-caller refusals
	approvals *approvals.Manager
	pipe      *pipeline.Pipeline
	metrics   *metrics
	core      *coreState // 4Mica Core and the chain (collateral endpoints)

	reloadMu sync.Mutex // serializes policy compiles
	policy   atomic.Pointer[loadedPolicy]

	agentLn, adminLn   *net.UnixListener
	agentSrv, adminSrv *http.Server
	sem                chan struct{} // bounds in-flight signing requests

	started  time.Time
	bgCancel context.CancelFunc
	bg       sync.WaitGroup
	closeMu  sync.Mutex
	closed   bool
	serveErr chan error
}

// loadedPolicy is the policy in force with what operators see about it.
type loadedPolicy struct {
	p        *policyengine.Policy
	hash     [32]byte
	loadedAt time.Time
	warnings []string // approvalGroupWarnings at compile time
}

// Open assembles a daemon from opts and binds its sockets; it does not serve yet. On error
// everything opened so far is closed.
func Open(ctx context.Context, opts Options) (d *Daemon, err error) {
	cfg := opts.Config
	if cfg == nil {
		return nil, errors.New("server: Options.Config is required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d = &Daemon{cfg: cfg, log: opts.Logger, clock: opts.Clock, started: time.Now(), serveErr: make(chan error, 2)}
	if d.log == nil {
		d.log = slog.Default()
	}
	if d.clock == nil {
		d.clock = time.Now
	}
	d.self = uint32(os.Getuid())
	if opts.SelfUID != nil {
		d.self = *opts.SelfUID
	}
	opened := d // `return nil, err` sets d to nil before this deferred close runs
	defer func() {
		if err != nil {
			opened.closeAll()
		}
	}()
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}

	// Key backend.
	d.backend = opts.Backend
	if d.backend == nil {
		if d.backend, err = hsm.Open(ctx, cfg.HSM); err != nil {
			return nil, fmt.Errorf("opening key backend %q: %w", cfg.HSM.Type, err)
		}
	}
	d.keys = newKeyring(d.backend)
	if err := d.keys.refresh(ctx); err != nil {
		return nil, err
	}

	// Ledger and audit log.
	if d.ledger, err = ledger.Open(ledger.Options{Path: filepath.Join(cfg.StateDir, "signerd.db"), Clock: d.clock}); err != nil {
		return nil, fmt.Errorf("opening ledger: %w", err)
	}

	d.refusals = newRefusalAuditor(d.ledger, d.clock, d.log)

	if err := d.recoverLedger(ctx); err != nil {
		return nil, err
	}

	// Policy.
	lp, err := d.compilePolicy()
	if err != nil {
		return nil, fmt.Errorf("loading policy: %w", err)
	}
	d.policy.Store(lp)

	// Kill switch (durable: a daemon restarted while engaged starts engaged).
	ksOpts := killswitch.Options{
		Store: d.ledger, Clock: clockFunc(d.clock),
		RequireSecondOperator: cfg.KillSwitch.TwoOperatorResume, ConfirmWithin: cfg.KillSwitch.ConfirmWithin,
		TripFile: cfg.KillSwitch.TripFile, TripInterval: cfg.KillSwitch.PollInterval,
		AutoTrip: autoTrip(lp.p),
		OnEngage: d.zeroizeKeys, BeforeResume: d.reopenBackend,
	}
	if d.ks, err = killswitch.New(ksOpts); err != nil {
		if d.ks == nil {
			return nil, err
		}
		d.log.Error("kill switch state unreadable: starting engaged", "err", err)
		err = nil
	}
	if d.ks.Engaged() {
		// Restarted while engaged: keys a backend unsealed at open must not sit in memory.
		d.zeroizeKeys()
	}

	// Approvals.
	if d.approvals, err = approvals.New(approvals.Options{Auditor: d.ledger, Clock: clockFunc(d.clock), Groups: cfg.ApprovalGroups(),
		MaxPendingPerAgent: cfg.Approvals.MaxPendingPerAgent}); err != nil {
		return nil, err
	}

	// Pipeline.
	dom, err := fourmica.NewDomain(cfg.Protocol.EIP712Name, cfg.Protocol.EIP712Version, cfg.Protocol.ChainID)
	if err != nil {
		return nil, fmt.Errorf("protocol: %w", err)
	}
	if cfg.Performance.Reservation != "" {
		d.log.Warn("performance.reservation is obsolete and ignored: the intent is always written while the key signs", "value", cfg.Performance.Reservation)
	}
	d.metrics = newMetrics(func() float64 {
		if d.ks.Engaged() {
			return 1
		}
		return 0
	}, d.ledger.Stats)
	d.pipe, err = pipeline.New(pipeline.Options{
		Domain: dom, Network: cfg.Protocol.Network, Ledger: d.ledger, KillSwitch: d.ks, Keys: d.keys,
		Approvals: stampedApprovals{approvals.ForPipeline(d.approvals)}, MaxWait: cfg.Approvals.MaxWait,
		Logger: d.log, Clock: d.clock, Observe: d.observe,
	}, approvalPolicy{lp.p, d.approvals})
	if err != nil {
		return nil, err
	}

	// 4Mica Core (optional): a domain mismatch refuses to start; Core down is a warning.
	if d.core, err = d.openCore(ctx, opts); err != nil {
		return nil, err
	}

	// Sockets.
	d.sem = make(chan struct{}, cfg.Limits.MaxInFlight)
	if d.agentLn, err = Listen(cfg.Sockets.Agent); err != nil {
		return nil, err
	}
	if d.adminLn, err = Listen(cfg.Sockets.Admin); err != nil {
		return nil, err
	}
	d.agentSrv = d.httpServer(d.agentRoutes())
	d.adminSrv = d.httpServer(d.adminRoutes())
	return d, nil
}

func (d *Daemon) httpServer(h http.Handler) *http.Server {
	l := d.cfg.Limits
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: l.ReadHeaderTimeout,
		ReadTimeout:       l.ReadTimeout,
		WriteTimeout:      l.WriteTimeout,
		IdleTimeout:       l.IdleTimeout,
		MaxHeaderBytes:    16 << 10,
		ConnContext:       connContext,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
	}
}

// Serve starts the background tasks and serves both sockets; it returns when Shutdown is
// called (nil) or a server fails.
func (d *Daemon) Serve() error {
	d.Start()
	err := <-d.serveErr
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Start serves both sockets in the background (see Serve).
func (d *Daemon) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	d.bgCancel = cancel
	d.bg.Add(3)
	go func() {
		defer d.bg.Done()
		d.refusals.run(ctx, time.Second)
	}()
	go func() {
		defer d.bg.Done()
		d.ks.Watch(ctx, func(err error) { d.log.Error("kill switch trip file", "err", err) })
	}()
	go func() {
		defer d.bg.Done()
		d.approvals.Run(ctx, time.Second)
	}()
	go func() { d.serveErr <- d.agentSrv.Serve(limitConns(d.agentLn, d.cfg.Limits.MaxConnections)) }()
	go func() { d.serveErr <- d.adminSrv.Serve(limitConns(d.adminLn, d.cfg.Limits.MaxConnections)) }()
	d.log.Info("signerd serving", "agent", d.cfg.Sockets.Agent.Path, "admin", d.cfg.Sockets.Admin.Path,
		"network", d.cfg.Protocol.Network, "wallets", len(d.keys.addresses()), "policy", fourmica.Hash(d.policy.Load().hash).Hex(),
		"kill_switch_engaged", d.ks.Engaged())
}

// Shutdown stops accepting connections, waits for in-flight requests (bounded by ctx), then
// closes the ledger and the key backend.
func (d *Daemon) Shutdown(ctx context.Context) error {
	d.closeMu.Lock()
	if d.closed {
		d.closeMu.Unlock()
		return nil
	}
	d.closeMu.Unlock()
	if d.pipe != nil {
		d.pipe.Stop() // approval long polls answer 202 now
	}
	var errs []error
	var wg sync.WaitGroup
	for _, s := range []*http.Server{d.agentSrv, d.adminSrv} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Shutdown(ctx); err != nil {
				errs = append(errs, err)
			}
		}()
	}
	wg.Wait()
	if d.bgCancel != nil {
		d.bgCancel()
	}
	d.bg.Wait()
	select {
	case d.serveErr <- http.ErrServerClosed:
	default:
	}
	if err := d.closeAll(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (d *Daemon) closeAll() error {
	d.closeMu.Lock()
	defer d.closeMu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	for _, ln := range []*net.UnixListener{d.agentLn, d.adminLn} {
		if ln != nil {
			ln.Close()
		}
	}
	if d.ledger != nil {
		if err := d.ledger.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if b := d.be(); b != nil {
		if err := b.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// be returns the key backend in use.
func (d *Daemon) be() hsm.Backend {
	d.backendMu.RLock()
	defer d.backendMu.RUnlock()
	return d.backend
}

// zeroizeKeys runs when the kill switch engages (after in-flight signatures drained) and at
// start when the switch is engaged: a backend holding key material in process memory (the TPM
// backend's unsealed keys, hsm.Zeroizer) overwrites it with zeros and refuses to sign until
// reopenBackend replaces it. Backends keeping keys in a device (PKCS#11) are left alone.
func (d *Daemon) zeroizeKeys() {
	d.backendMu.Lock()
	defer d.backendMu.Unlock()
	if !d.ks.Engaged() {
		return // a resume got here first; its reopened backend must stay usable
	}
	z, ok := d.backend.(hsm.Zeroizer)
	if !ok {
		return
	}
	z.Zeroize()
	d.zeroized.Store(true)
	d.log.Warn("kill switch: key material held in memory zeroized", "backend", d.backend.Name())
}

// reopenBackend runs when a resume is about to release the kill switch: a zeroized backend is
// closed and opened again from the configuration (the TPM backend unseals its keys afresh),
// and the signers are rebuilt. If that fails the switch stays engaged (killswitch.ErrNotReady).
func (d *Daemon) reopenBackend(ctx context.Context) error {
	d.backendMu.Lock()
	defer d.backendMu.Unlock()
	if !d.zeroized.Load() {
		return nil
	}
	// Close first: a TPM (and swtpm's socket) serves one connection at a time.
	if err := d.backend.Close(); err != nil {
		d.log.Warn("closing the zeroized key backend", "err", err)
	}
	b, err := hsm.Open(ctx, d.cfg.HSM)
	if err != nil {
		d.log.Error("kill switch stays engaged: key backend not reopened", "err", err)
		return fmt.Errorf("reopening key backend %q: %w", d.cfg.HSM.Type, err)
	}
	if err := d.keys.reset(ctx, b); err != nil {
		_ = b.Close()
		d.log.Error("kill switch stays engaged: signers not rebuilt", "err", err)
		return err
	}
	d.backend = b
	d.zeroized.Store(false)
	d.log.Warn("kill switch: key backend reopened", "backend", b.Name(), "wallets", len(d.keys.addresses()))
	return nil
}

// compilePolicy compiles the configured policy for the current wallets.
func (d *Daemon) compilePolicy() (*loadedPolicy, error) {
	p, err := policyengine.Load(d.cfg.Policy, policyengine.CompileOptions{SelfUID: policyengine.UID(d.self), Wallets: d.keys.addresses()})
	if err != nil {
		return nil, err
	}
	return &loadedPolicy{p: p, hash: p.Hash(), loadedAt: d.clock(), warnings: d.warnApprovalGroups(p)}, nil
}

// PolicyInfo describes the policy in force.
type PolicyInfo struct {
	Hash     string    `json:"hash"`
	Previous string    `json:"previous,omitempty"`
	Path     string    `json:"path"`
	LoadedAt time.Time `json:"loaded_at"`
	Agents   []string  `json:"agents"`
	Changed  bool      `json:"changed"`
	Warnings []string  `json:"warnings,omitempty"` // e.g. approvals whose group has no operator
}

// ErrPolicyRejected wraps a policy that failed to compile; the last good one stays in force.
var ErrPolicyRejected = errors.New("policy rejected; the previous policy stays in force")

// ReloadPolicy recompiles the policy and swaps it in atomically. A policy that fails to
// compile leaves the last good one in force. Both outcomes are audited.
func (d *Daemon) ReloadPolicy(ctx context.Context, operator, why string) (PolicyInfo, error) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	old := d.policy.Load()
	oldHash := fourmica.Hash(old.hash).Hex()
	lp, err := d.compilePolicy()
	ev := audit.Event{Kind: audit.KindPolicyReload, Operator: operator, PolicyHash: old.hash[:],
		Attrs: map[string]string{"path": d.cfg.Policy, "trigger": why, "old_hash": oldHash}}
	if err != nil {
		ev.Decision, ev.Code, ev.Reason = "deny", "policy_invalid", truncate(err.Error(), 2000)
		if _, aerr := d.ledger.AppendAudit(ctx, ev); aerr != nil {
			d.log.Error("audit of a rejected policy failed", "err", aerr)
		}
		d.log.Error("policy reload rejected; previous policy stays in force", "operator", operator, "err", err)
		return d.policyInfo(old, ""), fmt.Errorf("%w: %v", ErrPolicyRejected, err)
	}
	ev.Decision, ev.PolicyHash = "allow", lp.hash[:]
	ev.Attrs["new_hash"] = fourmica.Hash(lp.hash).Hex()
	if _, aerr := d.ledger.AppendAudit(ctx, ev); aerr != nil {
		// Fail closed: an unaudited policy change is not applied.
		return d.policyInfo(old, ""), fmt.Errorf("policy reload not applied: audit failed: %w", aerr)
	}
	d.policy.Store(lp)
	d.pipe.SetPolicy(approvalPolicy{lp.p, d.approvals})
	d.applyAutoTrip(old.p, lp.p)
	d.log.Info("policy reloaded", "operator", operator, "hash", fourmica.Hash(lp.hash).Hex(), "previous", oldHash)
	info := d.policyInfo(lp, oldHash)
	info.Changed = lp.hash != old.hash
	return info, nil
}

func (d *Daemon) policyInfo(lp *loadedPolicy, prev string) PolicyInfo {
	return PolicyInfo{Hash: fourmica.Hash(lp.hash).Hex(), Previous: prev, Path: d.cfg.Policy, LoadedAt: lp.loadedAt, Agents: lp.p.Agents(), Warnings: lp.warnings}
}

// EngageKillSwitch engages the kill switch; when it returns nil no further signature leaves.
func (d *Daemon) EngageKillSwitch(ctx context.Context, operator, reason string) error {
	err := d.ks.Engage(ctx, operator, reason)
	return err
}

// KillSwitch exposes the switch (status, resume) to the admin routes and tests.
func (d *Daemon) KillSwitch() *killswitch.Switch { return d.ks }

// Ledger exposes the ledger to tests and tools (read-only use).
func (d *Daemon) Ledger() ledger.Engine { return d.ledger }

// Wallets lists the active wallet addresses, default first.
func (d *Daemon) Wallets() []string {
	var out []string
	for _, a := range d.keys.addresses() {
		out = append(out, fourmica.Address(a).Hex())
	}
	return out
}

// observe feeds metrics and the kill switch's denial-burst trip (spend is observed by the
// handlers, which know the asset: observeSpend).
func (d *Daemon) observe(o pipeline.Outcome) {
	d.metrics.decisions.WithLabelValues(o.Decision, o.Code).Inc()
	if o.Decision == "deny" {
		d.ks.ObserveDenial()
	}
}

// applyAutoTrip puts the new policy's kill_switch.auto_trip settings in force. The switch's
// sliding windows restart only when the settings change (a reload of an unchanged policy does
// not forget recent denials or spend).
func (d *Daemon) applyAutoTrip(old, next *policyengine.Policy) {
	was, now := autoTrip(old), autoTrip(next)
	if reflect.DeepEqual(was, now) {
		return
	}
	if err := d.ks.SetAutoTrip(now); err != nil {
		// autoTrip never yields a zero window for an active trigger; keep the old settings.
		d.log.Error("policy reload: automatic kill-switch trips not updated", "err", err)
		return
	}
	d.log.Info("automatic kill-switch trips updated", "settings", autoTripString(now))
}

func autoTripString(a *killswitch.AutoTrip) string {
	if a == nil {
		return "off"
	}
	out := fmt.Sprintf("denials=%d/%s", a.MaxDenials, a.Window)
	for _, w := range a.Spend {
		asset := "any"
		if w.Asset != nil {
			asset = w.Asset.Hex()
		}
		out += fmt.Sprintf(" spend(%s)=%d/%s", asset, w.Limit, w.Window)
	}
	return out
}

// autoTrip maps the policy's automatic kill-switch triggers onto the switch: the denial burst
// with its window, and every spend-velocity wire with its own asset (nil = any), limit and
// window. A limit beyond uint64 base units can never be reached and is left out.
func autoTrip(p *policyengine.Policy) *killswitch.AutoTrip {
	k := p.KillSwitch()
	var a killswitch.AutoTrip
	if k.DenialBurst.Count > 0 {
		a.MaxDenials, a.Window = k.DenialBurst.Count, k.DenialBurst.Window
	}
	for _, sv := range k.SpendVelocity {
		if sv.Limit == nil || !sv.Limit.IsUint64() || sv.Window <= 0 {
			continue
		}
		w := killswitch.SpendTrip{Limit: sv.Limit.Uint64(), Window: sv.Window}
		if sv.Asset != nil {
			asset := sv.Asset.Address
			w.Asset = &asset
		}
		a.Spend = append(a.Spend, w)
	}
	if a.MaxDenials == 0 && len(a.Spend) == 0 {
		return nil
	}
	return &a
}

type clockFunc func() time.Time

func (c clockFunc) Now() time.Time { return c() }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// observeSpend feeds a fresh signature's amount, with its asset, to the spend-velocity trips.
func (d *Daemon) observeSpend(res *pipeline.Result) {
	p := res.Claims.Payment()
	if res.Replayed || p == nil {
		return
	}
	v, ok := p.Amount.Uint64()
	if !ok {
		v = ^uint64(0)
	}
	d.ks.ObserveAssetSpend(common.Address(p.Asset), v)
}

// recoverLedger settles what a stop left in the ledger, before serving, and starts its
// integrity check.
func (d *Daemon) recoverLedger(ctx context.Context) error {
	if m, ok := d.ledger.(interface{ MigratedFrom() string }); ok && m.MigratedFrom() != "" {
		d.log.Warn("migrated the bbolt ledger to the new store (verified); the original file is kept", "backup", m.MigratedFrom())
	}
	// Collateral transactions are broadcast only after their durable commit: one left without
	// it never left the daemon, and is released (budget refunded, request_id free again).
	if n, err := d.ledger.ReleaseUnsent(ctx, pipeline.SchemeTx, "collateral transaction reserved but never committed before a restart"); err != nil {
		return fmt.Errorf("releasing uncommitted collateral transactions: %w", err)
	} else if n > 0 {
		d.log.Warn("released collateral transactions a restart left uncommitted (never broadcast)", "count", n)
	}
	// Intents left without a signature by a crash are possibly signed (the signature may have
	// left before the crash): their charges stand, and a retry with the same claims re-signs
	// the recorded digest without a second charge.
	if n, err := d.ledger.PossiblySigned(); err != nil {
		return fmt.Errorf("reading the ledger's open intents: %w", err)
	} else if n > 0 {
		d.log.Warn("intents possibly signed before a restart (charges stand; an identical retry re-signs)", "count", n)
	}
	// Open verified the newest audit records; the whole chain and the state bound to it are
	// verified while the daemon serves, and a mismatch stops every write (fail closed).
	d.ledger.CheckInBackground(func(err error) {
		if err != nil {
			d.log.Error("ledger integrity check FAILED: signing stopped until an operator has looked (signerctl audit verify)", "err", err)
			return
		}
		if u, ok := d.ledger.(interface{ StateUnchecked() bool }); ok && u.StateUnchecked() {
			d.log.Warn("ledger integrity check passed for the audit chain; the state bound to it was not compared (too many records since the last prune: run signerctl audit verify --db offline, or prune)")
			return
		}
		d.log.Info("ledger integrity check passed (audit chain and the state bound to it)")
	})
	return nil
}
