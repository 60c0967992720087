package pipeline_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"errors"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/crypto"

	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/fourmica"
	"github.com/signerd/signerd/signerd/killswitch"
	"github.com/signerd/signerd/signerd/ledger"
	"github.com/signerd/signerd/signerd/pipeline"
)

// The pipeline's fault paths, with a real ledger and kill switch and a stand-in signer (the
// server tests cover the SoftHSM2 path end to end).

// allowPolicy allows every intent of uid 1000 with one budget charge of the amount.
type allowPolicy struct {
	wallet common.Address
	limit  int64
}

func (p allowPolicy) Principal(c policyengine.Caller) (string, bool) { return "agent", c.UID == 1000 }
func (p allowPolicy) Wallets(string) []common.Address                { return []common.Address{p.wallet} }
func (p allowPolicy) Hash() [32]byte                                 { return [32]byte{1} }
func (p allowPolicy) WalletAllowed(_ string, w common.Address) bool  { return w == p.wallet }
func (p allowPolicy) Evaluate(in *policyengine.Intent, _ policyengine.UsageReader, _ time.Time) policyengine.Decision {
	if in.Wallet != p.wallet {
		return policyengine.Decision{Code: policyengine.CodeWalletNotAllowed, Rule: "wallets", Reason: "not this wallet"}
	}
	return policyengine.Decision{Outcome: policyengine.Allow, Rule: "allow-all", Charges: []policyengine.Charge{{
		Budget: "b", Key: "b|agent", Limit: big.NewInt(p.limit), Amount: new(big.Int).Set(in.Amount),
	}}}
}

// keySigner signs in memory; fail makes it fail like a device error.
type keySigner struct {
	key  *ecdsa.PrivateKey
	fail error
	hook func()
}

func (s *keySigner) Address() common.Address { return crypto.PubkeyToAddress(s.key.PublicKey) }
func (s *keySigner) SignDigest(_ context.Context, d [32]byte) ([65]byte, error) {
	if s.hook != nil {
		s.hook()
	}
	var out [65]byte
	if s.fail != nil {
		return out, s.fail
	}
	sig, err := crypto.Sign(d[:], s.key)
	if err != nil {
		return out, err
	}
	copy(out[:], sig)
	out[64] += 27
	return out, nil
}

type keys struct{ s *keySigner }

func (k keys) Signer(_ context.Context, w common.Address) (hsm.Signer, error) {
	if w != k.s.Address() {
		return nil, hsm.ErrUnknownKey
	}
	return k.s, nil
}

// hookLedger lets a test act between ledger steps or make Commit fail.
type hookLedger struct {
	*ledger.Ledger
	afterReserve func()
	commitErr    error
}

func (h *hookLedger) Reserve(ctx context.Context, r ledger.Reservation) (ledger.Result, error) {
	res, err := h.Ledger.Reserve(ctx, r)
	if h.afterReserve != nil {
		h.afterReserve()
	}
	return res, err
}

func (h *hookLedger) Commit(ctx context.Context, id ledger.RecordID, sig []byte) (ledger.CommitResult, error) {
	if h.commitErr != nil {
		return ledger.CommitResult{}, h.commitErr
	}
	return h.Ledger.Commit(ctx, id, sig)
}

func (h *hookLedger) RecordSignature(ctx context.Context, id ledger.RecordID, sig []byte) (ledger.CommitResult, error) {
	if h.commitErr != nil {
		return ledger.CommitResult{}, h.commitErr
	}
	return h.Ledger.RecordSignature(ctx, id, sig)
}

type fixture struct {
	p      *pipeline.Pipeline
	l      *hookLedger
	ks     *killswitch.Switch
	signer *keySigner
	adm    *pipeline.Admission
	ts     uint64
}

func newFixture(t *testing.T, mode reservationMode) *fixture {
	t.Helper()
	l, err := ledger.Open(ledger.Options{Path: filepath.Join(t.TempDir(), "l.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ks, err := killswitch.New(killswitch.Options{Store: l})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := crypto.GenerateKey()
	s := &keySigner{key: key}
	dom, _ := fourmica.NewDomain("4mica", "1", 84532)
	hl := &hookLedger{Ledger: l}
	p, err := pipeline.New(pipeline.Options{Domain: dom, Network: "eip155:84532", Ledger: hl, KillSwitch: ks,
		Keys: keys{s}}, allowPolicy{wallet: s.Address(), limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	adm, err := p.Admit(policyengine.Caller{UID: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{p: p, l: hl, ks: ks, signer: s, adm: adm, ts: uint64(time.Now().Unix())}
}

func (f *fixture) request(req, amount uint64) *pipeline.Request {
	c := &fourmica.ClaimsV1{User: fourmica.Address(f.signer.Address()), TabID: fourmica.U256FromUint64(9),
		ReqID: fourmica.U256FromUint64(req), Amount: fourmica.U256FromUint64(amount), Timestamp: f.ts}
	return &pipeline.Request{Claims: fourmica.ClaimsOfV1(c), Scheme: fourmica.SchemeEIP712}
}

// reservationMode remains from the three reservation modes the ledger had; there is one now
// (the intent is written while the key signs), and modes runs a test in it.
type reservationMode string

const intentMode reservationMode = "intent"

func modes(t *testing.T, fn func(t *testing.T, mode reservationMode)) {
	t.Run(string(intentMode), func(t *testing.T) { fn(t, intentMode) })
}

func TestUnknownCallerAndKillSwitchAreDenials(t *testing.T) {
	f := newFixture(t, intentMode)
	_, err := f.p.Admit(policyengine.Caller{UID: 7})
	if e := pipeline.AsError(err); e.Kind != pipeline.Denied || e.Code != pipeline.CodeUnknownCaller || e.Status != 403 {
		t.Fatalf("unknown caller: %+v", e)
	}
	if err := f.ks.Engage(context.Background(), "op", "test"); err != nil {
		t.Fatal(err)
	}
	_, err = f.p.Admit(policyengine.Caller{UID: 1000})
	if e := pipeline.AsError(err); e.Kind != pipeline.Denied || e.Code != pipeline.CodeKillSwitch || e.Status != 503 {
		t.Fatalf("kill switch: %+v", e)
	}
}

// TestSigningFailureReleases: a signing fault after the reservation releases it (charges
// refunded, replay key freed), audits both facts, and is a fault, not a denial.
func TestSigningFailureReleases(t *testing.T) {
	modes(t, func(t *testing.T, mode reservationMode) {
		f := newFixture(t, mode)
		f.signer.fail = hsm.ErrUnavailable
		_, err := f.p.Sign(context.Background(), f.adm, f.request(1, 60))
		e := pipeline.AsError(err)
		if e.Kind != pipeline.Failed || e.Code != pipeline.CodeBackendUnavailable || e.RecordID == 0 || strings.Contains(e.Reason, "hsm:") {
			t.Fatalf("got %+v", e)
		}
		rec, err := f.l.Record(ledger.RecordID(e.RecordID))
		if err != nil || rec.Status != ledger.StatusReleased {
			t.Fatalf("record %+v %v", rec, err)
		}
		if u, _ := f.l.Usage("b|agent", 0, time.Now()); u.Sign() != 0 {
			t.Fatalf("charge not refunded: %s", u)
		}
		var buf bytes.Buffer
		if err := f.l.ExportAudit(&buf, 0); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"signing_failed", "reservation_released"} {
			if !strings.Contains(buf.String(), k) {
				t.Errorf("audit lacks %s", k)
			}
		}
		// The replay key is free again: the retry signs.
		f.signer.fail = nil
		res, err := f.p.Sign(context.Background(), f.adm, f.request(1, 60))
		if err != nil {
			t.Fatalf("retry: %v", err)
		}
		res.Done()
		if f.ks.Status().Inflight != 0 {
			t.Fatal("a pass leaked")
		}
	})
}

// TestKillSwitchBetweenReserveAndSign: engaged after the reservation, the request is refused,
// its reservation released, and no signature is made.
func TestKillSwitchBetweenReserveAndSign(t *testing.T) {
	modes(t, func(t *testing.T, mode reservationMode) {
		testKillSwitchBetweenReserveAndSign(t, newFixture(t, mode))
	})
}

func testKillSwitchBetweenReserveAndSign(t *testing.T, f *fixture) {
	signed := false
	f.signer.hook = func() { signed = true }
	f.l.afterReserve = func() {
		if err := f.ks.Engage(context.Background(), "op", "stop"); err != nil {
			t.Error(err)
		}
	}
	_, err := f.p.Sign(context.Background(), f.adm, f.request(1, 1))
	e := pipeline.AsError(err)
	if e.Kind != pipeline.Denied || e.Code != pipeline.CodeKillSwitch || signed {
		t.Fatalf("got %+v, signed=%v", e, signed)
	}
	if rec, err := f.l.Record(ledger.RecordID(e.RecordID)); err != nil || rec.Status != ledger.StatusReleased {
		t.Fatalf("record %+v %v", rec, err)
	}
}

// TestEngageWaitsForInFlight: Engage does not return while a signed result is held (its
// response not yet written); once Done is called it returns.
func TestEngageWaitsForInFlight(t *testing.T) {
	modes(t, func(t *testing.T, mode reservationMode) {
		f := newFixture(t, mode)
		res, err := f.p.Sign(context.Background(), f.adm, f.request(1, 1))
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- f.ks.Engage(context.Background(), "op", "stop") }()
		select {
		case <-done:
			t.Fatal("Engage returned while a signature was on its way out")
		case <-time.After(100 * time.Millisecond):
		}
		res.Done()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}

// TestCommitFailureWithholdsSignature: if the signature cannot be made durable, it is not
// returned.
func TestCommitFailureWithholdsSignature(t *testing.T) {
	modes(t, func(t *testing.T, mode reservationMode) {
		f := newFixture(t, mode)
		f.l.commitErr = errors.New("disk full")
		res, err := f.p.Sign(context.Background(), f.adm, f.request(1, 1))
		if res != nil || pipeline.AsError(err).Code != pipeline.CodeStoreUnavailable {
			t.Fatalf("res %v err %v", res, err)
		}
		if f.ks.Status().Inflight != 0 {
			t.Fatal("a pass leaked")
		}
	})
}

// TestBudgetAndReplayOutcomes: the ledger's verdicts map to the right kinds and codes, in both
// modes, and no pass leaks.
func TestBudgetAndReplayOutcomes(t *testing.T) {
	modes(t, func(t *testing.T, mode reservationMode) {
		f := newFixture(t, mode)
		ctx := context.Background()
		res, err := f.p.Sign(ctx, f.adm, f.request(1, 60))
		if err != nil {
			t.Fatal(err)
		}
		res.Done()
		again, err := f.p.Sign(ctx, f.adm, f.request(1, 60))
		if err != nil || !again.Replayed || again.Signature != res.Signature {
			t.Fatalf("duplicate: %+v %v", again, err)
		}
		again.Done()
		_, err = f.p.Sign(ctx, f.adm, f.request(1, 61))
		if e := pipeline.AsError(err); e.Kind != pipeline.Conflict || e.Status != 409 {
			t.Fatalf("conflict: %+v", e)
		}
		// A retry the policy would deny for the budget the first request used still gets the
		// stored signature.
		f.p.SetPolicy(denyBudget{allowPolicy{wallet: f.signer.Address(), limit: 100}})
		adm, _ := f.p.Admit(policyengine.Caller{UID: 1000}) // an admission keeps the policy it was admitted under
		if r, err := f.p.Sign(ctx, adm, f.request(1, 60)); err != nil || r.Signature != res.Signature {
			t.Fatalf("retry over budget: %+v %v", r, err)
		} else {
			r.Done()
		}
		if _, err := f.p.Sign(ctx, adm, f.request(3, 1)); err == nil || pipeline.AsError(err).Code != policyengine.CodeBudgetExhausted {
			t.Fatalf("new request over budget: %v", err)
		}
		f.p.SetPolicy(allowPolicy{wallet: f.signer.Address(), limit: 100})
		// 60 used of 100: 50 more does not fit (the ledger decides; the stand-in policy does not check usage).
		_, err = f.p.Sign(ctx, f.adm, f.request(2, 50))
		if e := pipeline.AsError(err); e.Kind != pipeline.Denied || e.Code != policyengine.CodeBudgetExhausted || e.Rule != "b" {
			t.Fatalf("budget: %+v", e)
		}
		if f.ks.Status().Inflight != 0 {
			t.Fatal("a pass leaked")
		}
	})
}

// denyBudget denies everything with budget_exhausted.
type denyBudget struct{ allowPolicy }

func (denyBudget) Evaluate(*policyengine.Intent, policyengine.UsageReader, time.Time) policyengine.Decision {
	return policyengine.Decision{Code: policyengine.CodeBudgetExhausted, Rule: "b", Reason: "spent"}
}
