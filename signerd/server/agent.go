package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ethereum/go-ethereum/common"

	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/approvals"
	"github.com/signerd/signerd/signerd/fourmica"
	"github.com/signerd/signerd/signerd/ledger"
	"github.com/signerd/signerd/signerd/pipeline"
)

// agentRoutes is the agent socket's API.
func (d *Daemon) agentRoutes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/guarantees", d.instrument("agent", "guarantees", d.handleGuarantee))
	mux.HandleFunc("POST /v1/x402/payments", d.instrument("agent", "x402_payments", d.handleX402))
	mux.HandleFunc("GET /v1/wallets", d.instrument("agent", "wallets", d.handleWallets))
	mux.HandleFunc("GET /v1/approvals/{id}", d.instrument("agent", "approval", d.handleAgentApproval))
	mux.HandleFunc("GET /v1/health", d.instrument("agent", "health", d.handleHealth))
	mux.HandleFunc("GET /v1/collateral", d.instrument("agent", "collateral_show", d.handleCollateralGet))
	mux.HandleFunc("POST /v1/collateral", d.instrument("agent", "collateral", d.handleCollateralPost))
	return d.withFallback("agent", mux)
}

// statusWriter records the status for metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(s int) {
	w.status = s
	w.ResponseWriter.WriteHeader(s)
}

// Flush lets streaming handlers (audit export) flush through the wrapper.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection's writer (FlushError, deadlines).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// flushSigned pushes a written answer carrying a signature out of net/http's buffers to the
// socket before the handler releases its kill-switch pass, so that once an engage call returns
// no signature is still waiting in a buffer to leave. An error is deliberately ignored: the
// signature and its records were durable before the first byte was written; a failed write
// breaks the connection, so nothing of it leaves later, and the agent's retry gets the stored
// signature (or the kill switch's refusal). Flush is bounded by the server's WriteTimeout.
func flushSigned(w http.ResponseWriter) {
	_ = http.NewResponseController(w).Flush()
}

func (d *Daemon) instrument(socket, route string, h http.HandlerFunc) http.HandlerFunc {
	c2 := d.metrics.requests.MustCurryWith(map[string]string{"socket": socket, "route": route})
	return func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, status: 200}
		h(sw, r)
		c2.WithLabelValues(strconv.Itoa(sw.status)).Inc()
	}
}

func notFound(w http.ResponseWriter, r *http.Request) {
	writeError(w, r, &pipeline.Error{Kind: pipeline.Invalid, Status: http.StatusNotFound, Code: "not_found", Reason: "no such route: " + r.Method + " " + r.URL.Path})
}

// caller returns the request's peer credentials or writes 403 unknown_caller.
func (d *Daemon) caller(w http.ResponseWriter, r *http.Request) (*policyengine.Caller, bool) {
	c, ok := CallerFrom(r.Context())
	if !ok {
		writeError(w, r, &pipeline.Error{Kind: pipeline.Denied, Status: http.StatusForbidden, Code: pipeline.CodeUnknownCaller, Reason: "the caller's credentials could not be read"})
	}
	return c, ok
}

// admit runs the kill-switch and caller steps and takes an in-flight slot; release must be
// called when it returns ok.
func (d *Daemon) admit(w http.ResponseWriter, r *http.Request) (*pipeline.Admission, func(), bool) {
	c, ok := d.caller(w, r)
	if !ok {
		return nil, nil, false
	}
	adm, err := d.pipe.Admit(*c)
	if err != nil {
		d.observe(pipeline.Outcome{Decision: "deny", Code: pipeline.AsError(err).Code})
		d.fail(w, r, err)
		return nil, nil, false
	}
	select {
	case d.sem <- struct{}{}:
	default:
		d.metrics.decisions.WithLabelValues("fault", pipeline.CodeOverloaded).Inc()
		writeError(w, r, &pipeline.Error{Kind: pipeline.Failed, Status: http.StatusServiceUnavailable, Code: pipeline.CodeOverloaded,
			Reason: "too many requests in flight; retry shortly", RetryAfter: time.Second})
		return nil, nil, false
	}
	d.metrics.inflight.Inc()
	return adm, func() { <-d.sem; d.metrics.inflight.Dec() }, true
}

// fail writes a pipeline error; faults are logged with their cause (never sent).
func (d *Daemon) fail(w http.ResponseWriter, r *http.Request, err error) {
	e := pipeline.AsError(err)
	d.auditRefusal(r, e)
	if e.Kind == pipeline.Failed && e.Cause != nil {
		d.log.Error("request failed", "path", r.URL.Path, "code", e.Code, "record_id", e.RecordID, "err", e.Cause)
	}
	writeError(w, r, e)
}

// auditRefusal records refusals no other step audits: the kill switch engaged before the
// request was read (Admit) or before a stored signature was handed back (RecordID 0; a
// refusal after a reservation is audited with the release), and a caller the policy does not
// map. They go through the refusal auditor (one record per caller and second under a flood).
func (d *Daemon) auditRefusal(r *http.Request, e *pipeline.Error) {
	if !(e.Code == pipeline.CodeKillSwitch && e.RecordID == 0) && e.Code != pipeline.CodeUnknownCaller {
		return
	}
	c, ok := CallerFrom(r.Context())
	if !ok {
		return
	}
	agent := ""
	if e.Code == pipeline.CodeKillSwitch {
		agent, _ = d.policy.Load().p.Principal(*c)
	}
	d.refusals.refuse(c, agent, r.URL.Path, e.Code, e.Reason)
}

// taskCtx is the agent-supplied task context.
type taskCtx struct {
	ID     string            `json:"id"`
	Labels map[string]string `json:"labels"`
}

func (t *taskCtx) check() *pipeline.Error {
	if t == nil {
		return nil
	}
	if len(t.ID) > 256 {
		return pipeline.Invalidf("task.id", "longer than 256 bytes")
	}
	if len(t.Labels) > 32 {
		return pipeline.Invalidf("task.labels", "more than 32 labels")
	}
	for k, v := range t.Labels {
		if k == "" || len(k) > 64 || len(v) > 256 {
			return pipeline.Invalidf("task.labels", "label keys must be 1..64 bytes and values at most 256 bytes")
		}
	}
	return nil
}

// guaranteeRequest is the body of POST /v1/guarantees.
type guaranteeRequest struct {
	Wallet *string         `json:"wallet"`
	Claims json.RawMessage `json:"claims"`
	Scheme *string         `json:"scheme"`
	Task   *taskCtx        `json:"task"`
}

// guaranteeResponse is the answer of POST /v1/guarantees.
type guaranteeResponse struct {
	Signature string          `json:"signature"`
	Digest    string          `json:"digest"`
	Request   json.RawMessage `json:"request"`
	RecordID  string          `json:"record_id"`
	Replayed  bool            `json:"replayed,omitempty"`
}

func parseWallet(s *string) (*common.Address, *pipeline.Error) {
	if s == nil {
		return nil, nil
	}
	a, err := fourmica.ParseAddress(*s)
	if err != nil {
		return nil, pipeline.Invalidf("wallet", "not a 20-byte hex address")
	}
	ca := common.Address(a)
	return &ca, nil
}

// fieldError maps a fourmica input error to invalid_request, prefixing its field.
func fieldError(prefix string, err error) *pipeline.Error {
	var fe *fourmica.FieldError
	if errors.As(err, &fe) {
		f := fe.Field
		if prefix != "" && !strings.HasPrefix(f, prefix+".") && f != prefix {
			f = prefix + "." + f
		}
		return pipeline.Invalidf(f, "%s", fe.Reason)
	}
	return pipeline.Invalidf(prefix, "invalid")
}

func (d *Daemon) handleGuarantee(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	adm, done, ok := d.admit(w, r)
	if !ok {
		return
	}
	defer done()
	var body guaranteeRequest
	if e := decodeBody(r, d.cfg.Limits.MaxBodyBytes, &body); e != nil {
		d.invalid(w, r, e)
		return
	}
	req := &pipeline.Request{Scheme: fourmica.SchemeEIP712}
	var e *pipeline.Error
	if req.Wallet, e = parseWallet(body.Wallet); e != nil {
		d.invalid(w, r, e)
		return
	}
	if len(body.Claims) == 0 || string(body.Claims) == "null" {
		d.invalid(w, r, pipeline.Invalidf("claims", "missing"))
		return
	}
	if e := checkClaimFields(body.Claims); e != nil {
		d.invalid(w, r, e)
		return
	}
	claims, err := fourmica.DecodeClaims(body.Claims)
	if err != nil {
		d.invalid(w, r, fieldError("claims", err))
		return
	}
	req.Claims = claims
	if body.Scheme != nil {
		s, err := fourmica.ParseScheme(*body.Scheme)
		if err != nil {
			d.invalid(w, r, pipeline.Invalidf("scheme", "want eip712 or eip191"))
			return
		}
		req.Scheme = s
	}
	if e := body.Task.check(); e != nil {
		d.invalid(w, r, e)
		return
	}
	if body.Task != nil {
		req.TaskID, req.TaskLabels = body.Task.ID, body.Task.Labels
	}
	res, err := d.pipe.Sign(withClaimsTimestamp(r.Context(), &req.Claims), adm, req)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	defer res.Done() // release the kill-switch pass only after the answer is flushed
	d.observeSpend(res)
	coreReq, err := fourmica.Request{Claims: res.Claims, Signature: fourmica.Signature(res.Signature), Scheme: res.Scheme}.MarshalJSON()
	if err != nil {
		d.fail(w, r, err)
		return
	}
	writeValue(w, r, http.StatusOK, guaranteeResponse{
		Signature: fourmica.Signature(res.Signature).Hex(),
		Digest:    fourmica.Hash(res.Digest).Hex(),
		Request:   coreReq,
		RecordID:  res.RecordID.String(),
		Replayed:  res.Replayed,
	})
	flushSigned(w) // before the deferred res.Done
	d.metrics.latency.WithLabelValues("guarantees").Observe(time.Since(start).Seconds())
}

// invalid counts and writes a decoding error.
func (d *Daemon) invalid(w http.ResponseWriter, r *http.Request, e *pipeline.Error) {
	d.metrics.decisions.WithLabelValues("invalid", e.Code).Inc()
	writeError(w, r, e)
}

// x402Request is the body of POST /v1/x402/payments.
type x402Request struct {
	Requirements          json.RawMessage `json:"requirements"`
	PaymentRequiredHeader *string         `json:"payment_required_header"`
	Tab                   *struct {
		TabID     json.RawMessage `json:"tab_id"`
		NextReqID json.RawMessage `json:"next_req_id"`
	} `json:"tab"`
	Resource *string  `json:"resource"`
	Wallet   *string  `json:"wallet"`
	Task     *taskCtx `json:"task"`
}

// x402Response is the answer of POST /v1/x402/payments.
type x402Response struct {
	Header    string          `json:"header"`
	Value     string          `json:"value"`
	Accepted  json.RawMessage `json:"accepted"`
	RecordID  string          `json:"record_id"`
	Signature string          `json:"signature"`
	Digest    string          `json:"digest"`
	Request   json.RawMessage `json:"request"`
	Replayed  bool            `json:"replayed,omitempty"`
}

func u256Field(field string, raw json.RawMessage, required bool) (fourmica.U256, *pipeline.Error) {
	var u fourmica.U256
	if len(raw) == 0 || string(raw) == "null" {
		if required {
			return u, pipeline.Invalidf(field, "missing")
		}
		return u, nil
	}
	if err := u.UnmarshalJSON(raw); err != nil {
		var fe *fourmica.FieldError
		if errors.As(err, &fe) {
			return u, pipeline.Invalidf(field, "%s", fe.Reason)
		}
		return u, pipeline.Invalidf(field, "not an unsigned 256-bit integer")
	}
	return u, nil
}

func (d *Daemon) handleX402(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	adm, done, ok := d.admit(w, r)
	if !ok {
		return
	}
	defer done()
	var body x402Request
	if e := decodeBody(r, d.cfg.Limits.MaxBodyBytes, &body); e != nil {
		d.invalid(w, r, e)
		return
	}
	hasReq := len(body.Requirements) > 0 && string(body.Requirements) != "null"
	var pr *fourmica.PaymentRequired
	var err error
	switch {
	case hasReq && body.PaymentRequiredHeader != nil:
		d.invalid(w, r, pipeline.Invalidf("requirements", "give either requirements or payment_required_header, not both"))
		return
	case hasReq:
		if pr, err = fourmica.ParseRequirementsV1(body.Requirements); err != nil {
			d.invalid(w, r, fieldError("requirements", err))
			return
		}
	case body.PaymentRequiredHeader != nil:
		if pr, err = fourmica.ParseRequirementsV2(*body.PaymentRequiredHeader); err != nil {
			d.invalid(w, r, fieldError("payment_required_header", err))
			return
		}
	default:
		d.invalid(w, r, pipeline.Invalidf("requirements", "missing (or payment_required_header)"))
		return
	}
	if body.Tab == nil {
		d.invalid(w, r, pipeline.Invalidf("tab", "missing"))
		return
	}
	tabID, e := u256Field("tab.tab_id", body.Tab.TabID, true)
	if e != nil {
		d.invalid(w, r, e)
		return
	}
	reqID, e := u256Field("tab.next_req_id", body.Tab.NextReqID, false)
	if e != nil {
		d.invalid(w, r, e)
		return
	}
	if e := body.Task.check(); e != nil {
		d.invalid(w, r, e)
		return
	}
	wallet, e := parseWallet(body.Wallet)
	if e != nil {
		d.invalid(w, r, e)
		return
	}
	if wallet == nil {
		ws := d.pipe.Wallets(adm)
		if len(ws) == 0 {
			d.fail(w, r, &pipeline.Error{Kind: pipeline.Denied, Status: http.StatusForbidden, Code: policyengine.CodeWalletNotAllowed, Reason: "this caller may use no wallet"})
			return
		}
		wallet = &ws[0]
	}
	opt, err := pr.Select(d.pipe.Network())
	if err != nil {
		d.invalid(w, r, fieldError("requirements", err))
		return
	}
	user := fourmica.Address(*wallet)
	now := d.clock()
	claims, err := fourmica.BuildClaims(pr, opt, fourmica.TabInfo{TabID: tabID, ReqID: reqID, User: user}, user, uint64(now.Unix()))
	if err != nil {
		d.invalid(w, r, fieldError("requirements", err))
		return
	}
	// A re-submission of a payment held for approval reuses the held request's timestamp, so
	// it is the same request (same claims, same approval) and proceeds once approved.
	if held, ok := d.x402HeldClaims(adm.Agent, *wallet, tabID, reqID, now, func(ts uint64) (fourmica.Claims, error) {
		return fourmica.BuildClaims(pr, opt, fourmica.TabInfo{TabID: tabID, ReqID: reqID, User: user}, user, ts)
	}); ok {
		claims = held
	}
	// A retry for the same tab and req_id reuses the first attempt's timestamp, so identical
	// payments give identical claims (and the stored signature) instead of a replay conflict.
	// Only a signed or reserved record counts: a released one was never signed, and its old
	// timestamp would make the retry stale forever.
	if rec, err := d.pipe.Lookup(*wallet, tabID.Big(), reqID.Big()); err == nil && rec != nil &&
		(rec.Status == ledger.StatusSigned || rec.Status == ledger.StatusReserved) {
		if prev, err := fourmica.DecodeClaims(rec.Claims); err == nil && prev.Payment() != nil {
			if again, err := fourmica.BuildClaims(pr, opt, fourmica.TabInfo{TabID: tabID, ReqID: reqID, User: user}, user, prev.Payment().Timestamp); err == nil {
				if b, err := again.MarshalJSON(); err == nil && bytes.Equal(b, rec.Claims) {
					claims = again
				}
			}
		}
	}
	req := &pipeline.Request{Wallet: wallet, Claims: claims, Scheme: fourmica.SchemeEIP712}
	// The host the policy checks is the one the agent called, never one the 402 body (written
	// by the seller) claims. Without the agent's resource there is no host: host-only seller
	// rules do not match.
	if body.Resource != nil && *body.Resource != "" {
		u, err := url.Parse(*body.Resource)
		if err != nil || u.Hostname() == "" || (u.Scheme != "https" && u.Scheme != "http") {
			d.invalid(w, r, pipeline.Invalidf("resource", "want the absolute http(s) URL the agent called"))
			return
		}
		if claimed := sellerResourceURL(pr, opt); claimed != "" {
			if cu, err := url.Parse(claimed); err != nil || !strings.EqualFold(cu.Hostname(), u.Hostname()) {
				d.invalid(w, r, pipeline.Invalidf("resource", "the 402 names another host than the URL the agent called"))
				return
			}
		}
		req.ResourceURL, req.Host = *body.Resource, u.Hostname()
	}
	if body.Task != nil {
		req.TaskID, req.TaskLabels = body.Task.ID, body.Task.Labels
	}
	res, err := d.pipe.Sign(withClaimsTimestamp(r.Context(), &req.Claims), adm, req)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	defer res.Done() // release the kill-switch pass only after the answer is flushed
	d.observeSpend(res)
	signed := &fourmica.Request{Claims: res.Claims, Signature: fourmica.Signature(res.Signature), Scheme: res.Scheme}
	name, value, err := fourmica.BuildEnvelope(pr, opt, signed)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	coreReq, _ := signed.MarshalJSON()
	writeValue(w, r, http.StatusOK, x402Response{
		Header: name, Value: value, Accepted: opt.Raw, RecordID: res.RecordID.String(),
		Signature: fourmica.Signature(res.Signature).Hex(), Digest: fourmica.Hash(res.Digest).Hex(), Request: coreReq, Replayed: res.Replayed,
	})
	flushSigned(w) // before the deferred res.Done
	d.metrics.latency.WithLabelValues("x402_payments").Observe(time.Since(start).Seconds())
}

// sellerResourceURL is the resource the 402 body names (the requirement's, v1, else the v2
// resource object's url). It is the seller's claim: used only to refuse a mismatch with the
// URL the agent says it called, never as the host the policy checks.
func sellerResourceURL(pr *fourmica.PaymentRequired, opt *fourmica.PaymentRequirements) string {
	if opt.Resource != "" {
		return opt.Resource
	}
	if pr.Resource != nil {
		var res struct {
			URL string `json:"url"`
		}
		if json.Unmarshal(pr.Resource, &res) == nil {
			return res.URL
		}
	}
	return ""
}

// callerAgent returns the current policy and the agent the caller maps to under it, or writes
// 403 unknown_caller.
func (d *Daemon) callerAgent(w http.ResponseWriter, r *http.Request) (pipeline.Policy, string, bool) {
	c, ok := d.caller(w, r)
	if !ok {
		return nil, "", false
	}
	pol := d.pipe.Policy()
	agent, ok := pol.Principal(*c)
	if !ok {
		writeError(w, r, &pipeline.Error{Kind: pipeline.Denied, Status: http.StatusForbidden, Code: pipeline.CodeUnknownCaller, Reason: "this caller is not mapped to any agent"})
		return nil, "", false
	}
	return pol, agent, true
}

func (d *Daemon) handleWallets(w http.ResponseWriter, r *http.Request) {
	pol, agent, ok := d.callerAgent(w, r)
	if !ok {
		return
	}
	type wallet struct {
		Address string `json:"address"`
		Default bool   `json:"default,omitempty"`
		Active  bool   `json:"active"`
	}
	out := struct {
		Agent   string   `json:"agent"`
		Network string   `json:"network"`
		ChainID uint64   `json:"chain_id"`
		Wallets []wallet `json:"wallets"`
	}{Agent: agent, Network: d.cfg.Protocol.Network, ChainID: d.cfg.Protocol.ChainID, Wallets: []wallet{}}
	for i, a := range pol.Wallets(agent) {
		_, err := d.keys.Signer(r.Context(), a)
		out.Wallets = append(out.Wallets, wallet{Address: fourmica.Address(a).Hex(), Default: i == 0, Active: err == nil})
	}
	writeValue(w, r, http.StatusOK, out)
}

func (d *Daemon) handleAgentApproval(w http.ResponseWriter, r *http.Request) {
	_, agent, ok := d.callerAgent(w, r)
	if !ok {
		return
	}
	a, err := d.approvals.Get(r.PathValue("id"))
	if err != nil || a.Agent != agent { // another agent's approval is not even acknowledged
		writeError(w, r, &pipeline.Error{Kind: pipeline.Invalid, Status: http.StatusNotFound, Code: "not_found", Reason: "no such approval"})
		return
	}
	// An agent may long-poll with ?wait=10s.
	if ws := r.URL.Query().Get("wait"); ws != "" && !a.State.Decided() {
		wait, err := time.ParseDuration(ws)
		if err != nil || wait < 0 {
			writeError(w, r, pipeline.Invalidf("wait", "want a duration like 10s"))
			return
		}
		wait = min(wait, d.cfg.Approvals.MaxWait)
		if got, err := d.approvals.Wait(r.Context(), a.ID, wait); err == nil || got.ID != "" {
			a = got
		}
	}
	writeValue(w, r, http.StatusOK, agentApproval(a))
}

// agentApproval is what an agent sees of an approval.
func agentApproval(a approvals.Approval) any {
	return struct {
		ID        string    `json:"id"`
		State     string    `json:"state"`
		Reason    string    `json:"reason,omitempty"`
		ExpiresAt time.Time `json:"expires_at"`
	}{a.ID, string(a.State), a.Reason, a.ExpiresAt}
}

func (d *Daemon) handleHealth(w http.ResponseWriter, r *http.Request) {
	writeValue(w, r, http.StatusOK, struct {
		Status     string `json:"status"`
		KillSwitch bool   `json:"kill_switch_engaged"`
		Network    string `json:"network"`
	}{"ok", d.ks.Engaged(), d.cfg.Protocol.Network})
}

// ready reports whether the daemon can sign now: the key backend is healthy and the store
// answers.
func (d *Daemon) ready(ctx context.Context) (bool, map[string]any) {
	h := d.be().Health(ctx)
	st := map[string]any{"backend": h}
	ok := h.OK
	if err := d.ledger.Health(); errors.Is(err, ledger.ErrCorrupt) {
		st["store"] = map[string]any{"ok": false, "reason": "the ledger failed its integrity check: " + err.Error()}
		d.log.Error("readiness: ledger integrity", "err", err)
		ok = false
	} else if err != nil {
		st["store"] = map[string]any{"ok": false, "reason": "the ledger cannot take writes"}
		d.log.Error("readiness: ledger unhealthy", "err", err)
		ok = false
	} else if _, err := d.ledger.GetState("ready-probe"); err != nil {
		st["store"] = map[string]any{"ok": false, "reason": "the ledger cannot be read"}
		d.log.Error("readiness: ledger read failed", "err", err)
		ok = false
	} else {
		st["store"] = map[string]any{"ok": true}
	}
	st["kill_switch_engaged"] = d.ks.Engaged()
	st["wallets"] = len(d.keys.addresses())
	return ok, st
}

// claimFields are the Core wire claim fields (V1 and V2); the daemon rejects any other field
// (Core itself ignores unknown ones, but an agent sending one has a bug worth reporting).
var claimFields = map[string]bool{
	"version": true, "user_address": true, "recipient_address": true, "tab_id": true, "req_id": true,
	"amount": true, "asset_address": true, "timestamp": true,
	"validation_registry_address": true, "validation_request_hash": true, "validation_chain_id": true,
	"validator_address": true, "validator_agent_id": true, "min_validation_score": true,
	"validation_subject_hash": true, "job_hash": true, "required_validation_tag": true,
}

// checkClaimFields rejects unknown claim fields, naming the first one.
func checkClaimFields(raw json.RawMessage) *pipeline.Error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return pipeline.Invalidf("claims", "must be an object")
	}
	for k := range m {
		if !claimFields[k] {
			return pipeline.Invalidf("claims."+k, "unknown field")
		}
	}
	return nil
}
