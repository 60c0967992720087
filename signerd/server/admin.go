package server

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ethereum/go-ethereum/common"

	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/signerd/approvals"
	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/config"
	"github.com/signerd/signerd/signerd/fourmica"
	"github.com/signerd/signerd/signerd/killswitch"
	"github.com/signerd/signerd/signerd/ledger"
	"github.com/signerd/signerd/signerd/pipeline"
)

// adminRoutes is the admin socket's API: operators only (config.Operators, by peer uid).
func (d *Daemon) adminRoutes() http.Handler {
	mux := http.NewServeMux()
	op := func(route string, h func(http.ResponseWriter, *http.Request, config.Operator)) http.HandlerFunc {
		return d.instrument("admin", route, func(w http.ResponseWriter, r *http.Request) {
			c, ok := d.caller(w, r)
			if !ok {
				return
			}
			o, ok := d.cfg.Operator(c.UID)
			if !ok {
				writeError(w, r, &pipeline.Error{Kind: pipeline.Denied, Status: http.StatusForbidden, Code: pipeline.CodeUnknownCaller,
					Reason: "uid " + strconv.FormatUint(uint64(c.UID), 10) + " is not an operator"})
				return
			}
			h(w, r, o)
		})
	}
	mux.HandleFunc("POST /v1/admin/kill-switch", op("kill_switch", d.handleKillSwitch))
	mux.HandleFunc("GET /v1/admin/kill-switch", op("kill_switch_status", func(w http.ResponseWriter, r *http.Request, _ config.Operator) {
		writeValue(w, r, http.StatusOK, d.ks.Status())
	}))
	mux.HandleFunc("GET /v1/admin/status", op("status", d.handleStatus))
	mux.HandleFunc("POST /v1/admin/policy/reload", op("policy_reload", d.handlePolicyReload))
	mux.HandleFunc("GET /v1/admin/policy", op("policy", func(w http.ResponseWriter, r *http.Request, _ config.Operator) {
		writeValue(w, r, http.StatusOK, d.policyInfo(d.policy.Load(), ""))
	}))
	mux.HandleFunc("GET /v1/admin/approvals", op("approvals", d.handleApprovalsList))
	mux.HandleFunc("GET /v1/admin/approvals/{id}", op("approval", d.handleApprovalGet))
	mux.HandleFunc("POST /v1/admin/approvals/{id}/approve", op("approval_approve", d.handleApprove))
	mux.HandleFunc("POST /v1/admin/approvals/{id}/deny", op("approval_deny", d.handleDeny))
	mux.HandleFunc("GET /v1/admin/audit/verify", op("audit_verify", d.handleAuditVerify))
	mux.HandleFunc("POST /v1/admin/audit/verify", op("audit_verify", d.handleAuditVerify))
	mux.HandleFunc("GET /v1/admin/audit/head", op("audit_head", d.handleAuditHead))
	mux.HandleFunc("GET /v1/admin/audit/export", op("audit_export", d.handleAuditExport))
	mux.HandleFunc("GET /v1/admin/ledger/spend", op("ledger_spend", d.handleSpend))
	mux.HandleFunc("GET /v1/admin/ledger/records", op("ledger_records", d.handleRecords))
	mux.HandleFunc("GET /v1/admin/ledger/prune/export", op("ledger_prune_export", d.handlePruneExport))
	mux.HandleFunc("POST /v1/admin/ledger/prune", op("ledger_prune", d.handlePrune))
	mux.HandleFunc("GET /v1/admin/keys", op("keys", d.handleKeys))
	mux.HandleFunc("POST /v1/admin/keys/generate", op("keys_generate", d.handleKeyGenerate))
	mux.HandleFunc("POST /v1/admin/keys/import", op("keys_import", d.handleKeyImport))
	mux.HandleFunc("POST /v1/admin/keys/retire", op("keys_retire", d.handleKeyRetire))
	mux.HandleFunc("POST /v1/admin/keys/attest", op("keys_attest", d.handleKeyAttest))
	mux.HandleFunc("GET /v1/ready", op("ready", d.handleReady))
	mux.HandleFunc("GET /v1/admin/core", op("core", d.handleCoreStatus))
	mux.HandleFunc("GET /v1/health", d.instrument("admin", "health", d.handleHealth))
	mh := d.metricsHandler()
	mux.HandleFunc("GET /metrics", op("metrics", func(w http.ResponseWriter, r *http.Request, _ config.Operator) { mh.ServeHTTP(w, r) }))
	return d.withFallback("admin", mux)
}

// adminError writes an operator-facing error (operators see the cause's text: it never
// holds secrets, and they need it).
func adminError(w http.ResponseWriter, r *http.Request, status int, code string, err error) {
	writeError(w, r, &pipeline.Error{Kind: pipeline.Failed, Status: status, Code: code, Reason: err.Error()})
}

// writeList answers 200 {name: list}; a nil list is sent as [], never null.
func writeList[T any](w http.ResponseWriter, r *http.Request, name string, list []T) {
	if list == nil {
		list = []T{}
	}
	writeValue(w, r, http.StatusOK, map[string]any{name: list})
}

func (d *Daemon) handleKillSwitch(w http.ResponseWriter, r *http.Request, o config.Operator) {
	var body struct {
		Engaged *bool  `json:"engaged"`
		Reason  string `json:"reason"`
	}
	if e := decodeBody(r, d.cfg.Limits.MaxBodyBytes, &body); e != nil {
		writeError(w, r, e)
		return
	}
	if body.Engaged == nil {
		writeError(w, r, pipeline.Invalidf("engaged", "missing (true to stop signing, false to resume)"))
		return
	}
	if *body.Engaged {
		if strings.TrimSpace(body.Reason) == "" {
			writeError(w, r, pipeline.Invalidf("reason", "required when engaging"))
			return
		}
		if err := d.EngageKillSwitch(r.Context(), o.Name, body.Reason); err != nil {
			adminError(w, r, http.StatusServiceUnavailable, "kill_switch_not_drained", err)
			return
		}
		d.log.Warn("kill switch engaged", "operator", o.Name, "reason", body.Reason)
		writeValue(w, r, http.StatusOK, map[string]any{"status": d.ks.Status()})
		return
	}
	res, err := d.ks.Resume(r.Context(), o.Name)
	if err != nil {
		status, code := http.StatusConflict, "resume_refused"
		switch {
		case errors.Is(err, killswitch.ErrNotEngaged):
			code = "not_engaged"
		case errors.Is(err, killswitch.ErrSameOperator):
			code = "second_operator_required"
		case errors.Is(err, killswitch.ErrConfirmExpired):
			code = "confirmation_expired"
		case errors.Is(err, killswitch.ErrTripFilePresent):
			code = "trip_file_present"
		case errors.Is(err, killswitch.ErrNotReady):
			status, code = http.StatusServiceUnavailable, pipeline.CodeBackendUnavailable
		default:
			status, code = http.StatusServiceUnavailable, pipeline.CodeStoreUnavailable
		}
		adminError(w, r, status, code, err)
		return
	}
	if res.Resumed {
		d.log.Warn("kill switch released", "operator", o.Name)
	}
	status := http.StatusOK
	if res.Pending != nil {
		status = http.StatusAccepted
	}
	writeValue(w, r, status, map[string]any{"status": d.ks.Status(), "resume": res})
}

func (d *Daemon) handleStatus(w http.ResponseWriter, r *http.Request, _ config.Operator) {
	ok, rd := d.ready(r.Context())
	st := d.ledger.Stats()
	writeValue(w, r, http.StatusOK, map[string]any{
		"ready":       ok,
		"readiness":   rd,
		"kill_switch": d.ks.Status(),
		"policy":      d.policyInfo(d.policy.Load(), ""),
		"network":     d.cfg.Protocol.Network,
		"domain":      map[string]any{"name": d.cfg.Protocol.EIP712Name, "version": d.cfg.Protocol.EIP712Version, "chain_id": d.cfg.Protocol.ChainID},
		"wallets":     d.Wallets(),
		"ledger":      map[string]any{"path": d.ledger.Path(), "groups": st.Groups, "ops": st.Ops, "updates": st.Updates, "async_errors": st.AsyncErrors},
		"approvals":   map[string]any{"pending": countPending(d.approvals.List())},
		"inflight":    len(d.sem),
		"uptime":      time.Since(d.started).Round(time.Second).String(),
		"pid":         pid(),
	})
}

func countPending(as []approvals.Approval) int {
	n := 0
	for _, a := range as {
		if a.State == approvals.Pending {
			n++
		}
	}
	return n
}

func (d *Daemon) handlePolicyReload(w http.ResponseWriter, r *http.Request, o config.Operator) {
	info, err := d.ReloadPolicy(r.Context(), o.Name, "admin")
	if err != nil {
		code, status := "policy_invalid", http.StatusUnprocessableEntity
		if !errors.Is(err, ErrPolicyRejected) {
			code, status = pipeline.CodeStoreUnavailable, http.StatusServiceUnavailable
		}
		adminError(w, r, status, code, err)
		return
	}
	writeValue(w, r, http.StatusOK, info)
}

func (d *Daemon) handleApprovalsList(w http.ResponseWriter, r *http.Request, _ config.Operator) {
	list := d.approvals.List()
	if s := r.URL.Query().Get("state"); s != "" {
		out := list[:0]
		for _, a := range list {
			if string(a.State) == s {
				out = append(out, a)
			}
		}
		list = out
	}
	writeList(w, r, "approvals", list)
}

func approvalError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, approvals.ErrNotFound):
		adminError(w, r, http.StatusNotFound, "not_found", err)
	case errors.Is(err, approvals.ErrDecided):
		adminError(w, r, http.StatusConflict, "already_decided", err)
	case errors.Is(err, approvals.ErrNotInGroup):
		adminError(w, r, http.StatusForbidden, "not_in_group", err)
	default:
		adminError(w, r, http.StatusServiceUnavailable, pipeline.CodeStoreUnavailable, err)
	}
}

// writeApproval answers 200 with the approval an approvals call returned, or with its error.
func writeApproval(w http.ResponseWriter, r *http.Request, a approvals.Approval, err error) {
	if err != nil {
		approvalError(w, r, err)
		return
	}
	writeValue(w, r, http.StatusOK, a)
}

// decisionReason decodes the optional body {"reason"} of an approve or deny ("" without a
// body); false means it wrote the decoding error.
func (d *Daemon) decisionReason(w http.ResponseWriter, r *http.Request) (string, bool) {
	var body struct {
		Reason string `json:"reason"`
	}
	if r.ContentLength != 0 {
		if e := decodeBody(r, d.cfg.Limits.MaxBodyBytes, &body); e != nil {
			writeError(w, r, e)
			return "", false
		}
	}
	return body.Reason, true
}

func (d *Daemon) handleApprovalGet(w http.ResponseWriter, r *http.Request, _ config.Operator) {
	a, err := d.approvals.Get(r.PathValue("id"))
	writeApproval(w, r, a, err)
}

func (d *Daemon) handleApprove(w http.ResponseWriter, r *http.Request, o config.Operator) {
	// An approve's reason is accepted (and checked) but not recorded: approvals.Approve takes none.
	if _, ok := d.decisionReason(w, r); !ok {
		return
	}
	a, err := d.approvals.Approve(r.Context(), r.PathValue("id"), o.Name)
	writeApproval(w, r, a, err)
}

func (d *Daemon) handleDeny(w http.ResponseWriter, r *http.Request, o config.Operator) {
	reason, ok := d.decisionReason(w, r)
	if !ok {
		return
	}
	a, err := d.approvals.Deny(r.Context(), r.PathValue("id"), o.Name, reason)
	writeApproval(w, r, a, err)
}

// maxAnchors bounds the anchors one verify request may check.
const maxAnchors = 100000

// auditAnchors reads the anchors of a verify request: repeated query parameters
// anchor=SEQ:0xHASH (GET), or a JSON body {"anchors": ["SEQ:0xHASH" | "seq=N hash=0x…", …]}
// (POST, for many anchors). false means it wrote the error (400 naming the bad anchor).
func (d *Daemon) auditAnchors(w http.ResponseWriter, r *http.Request) ([]audit.Anchor, bool) {
	texts := r.URL.Query()["anchor"]
	if r.Method == http.MethodPost {
		var body struct {
			Anchors []string `json:"anchors"`
		}
		if e := decodeBody(r, d.cfg.Limits.MaxBodyBytes, &body); e != nil {
			writeError(w, r, e)
			return nil, false
		}
		texts = append(texts, body.Anchors...)
	}
	if len(texts) > maxAnchors {
		writeError(w, r, pipeline.Invalidf("anchors", "at most %d per request", maxAnchors))
		return nil, false
	}
	anchors := make([]audit.Anchor, 0, len(texts))
	for _, s := range texts {
		a, err := audit.ParseAnchor(s)
		if err != nil {
			writeError(w, r, pipeline.Invalidf("anchor", "%s", strings.TrimPrefix(err.Error(), "audit: ")))
			return nil, false
		}
		anchors = append(anchors, a)
	}
	return anchors, true
}

// handleAuditVerify verifies the whole chain and checks the request's anchors (see
// auditAnchors): 200 with the report, whose ok is false on a broken chain or a failed anchor.
func (d *Daemon) handleAuditVerify(w http.ResponseWriter, r *http.Request, _ config.Operator) {
	anchors, ok := d.auditAnchors(w, r)
	if !ok {
		return
	}
	rep, err := d.ledger.VerifyAudit()
	if err != nil && !errors.Is(err, audit.ErrCorrupt) {
		adminError(w, r, http.StatusServiceUnavailable, pipeline.CodeStoreUnavailable, err)
		return
	}
	if len(anchors) > 0 {
		head := rep.HeadSeq
		if seq, _, err := d.ledger.AuditHead(); err == nil {
			head = seq
		}
		cp, err := d.ledger.AuditCheckpoint()
		if err != nil {
			adminError(w, r, http.StatusServiceUnavailable, pipeline.CodeStoreUnavailable, err)
			return
		}
		res, err := audit.CheckAnchorsAfter(anchors, head, cp, d.ledger.AuditRecord)
		if err != nil {
			adminError(w, r, http.StatusServiceUnavailable, pipeline.CodeStoreUnavailable, err)
			return
		}
		_ = rep.AddAnchors(res) // a failed anchor is reported in rep (ok false), not as an error
	}
	writeValue(w, r, http.StatusOK, rep)
}

// handleAuditHead answers the audit head to anchor outside the appliance: {"seq", "hash",
// "time", "line"} (audit.HeadInfo). A head that does not match the last record is 500
// audit_corrupt.
func (d *Daemon) handleAuditHead(w http.ResponseWriter, r *http.Request, _ config.Operator) {
	seq, h, err := d.ledger.AuditHead()
	var info audit.HeadInfo
	if err == nil {
		info, err = audit.HeadFrom(seq, h, d.ledger.AuditRecord)
	}
	switch {
	case errors.Is(err, audit.ErrCorrupt):
		adminError(w, r, http.StatusInternalServerError, "audit_corrupt", err)
	case err != nil:
		adminError(w, r, http.StatusServiceUnavailable, pipeline.CodeStoreUnavailable, err)
	default:
		writeValue(w, r, http.StatusOK, info)
	}
}

func (d *Daemon) handleAuditExport(w http.ResponseWriter, r *http.Request, _ config.Operator) {
	var from uint64
	if s := r.URL.Query().Get("from"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			writeError(w, r, pipeline.Invalidf("from", "want a sequence number"))
			return
		}
		from = v
	}
	// Records before the prune checkpoint were deleted by retention (they are in its archives):
	// an export asked to start there starts at the checkpoint + 1. Say so in headers (the body
	// stays JSON lines); the first line's seq and prev (= the checkpoint hash) are authoritative
	// should a prune run between this read and the export.
	cp, err := d.ledger.AuditCheckpoint()
	switch {
	case errors.Is(err, audit.ErrCorrupt):
		adminError(w, r, http.StatusInternalServerError, "audit_corrupt", err)
		return
	case err != nil:
		adminError(w, r, http.StatusServiceUnavailable, pipeline.CodeStoreUnavailable, err)
		return
	}
	if cp.Seq > 0 && max(from, 1) <= cp.Seq {
		w.Header().Set("X-Audit-Pruned-Through", strconv.FormatUint(cp.Seq, 10))
		w.Header().Set("X-Audit-Checkpoint-Hash", "0x"+hex.EncodeToString(cp.Hash[:]))
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	if err := d.ledger.ExportAudit(w, from); err != nil {
		d.log.Error("audit export failed midway", "err", err)
	}
}

func (d *Daemon) handleSpend(w http.ResponseWriter, r *http.Request, _ config.Operator) {
	q := r.URL.Query()
	now := d.clock()
	key := q.Get("key")
	if key == "" {
		all, err := d.ledger.SpendAll(now)
		if err != nil {
			adminError(w, r, http.StatusServiceUnavailable, pipeline.CodeStoreUnavailable, err)
			return
		}
		writeList(w, r, "spend", all)
		return
	}
	win, err := parseWindow(q.Get("window"))
	if err != nil {
		writeError(w, r, pipeline.Invalidf("window", "want minute, hour, day, 30d, a duration like 15m, or 0 (lifetime)"))
		return
	}
	sp, err := d.ledger.Spend(key, win, now)
	if err != nil {
		adminError(w, r, http.StatusServiceUnavailable, pipeline.CodeStoreUnavailable, err)
		return
	}
	writeValue(w, r, http.StatusOK, sp)
}

// parseWindow reads a budget window: minute, hour, day, 30d, a Go duration, or 0.
func parseWindow(s string) (time.Duration, error) {
	switch s {
	case "", "0", "lifetime":
		return 0, nil
	case "minute":
		return time.Minute, nil
	case "hour":
		return time.Hour, nil
	case "day":
		return 24 * time.Hour, nil
	case "30d", "30days", "month":
		return 30 * 24 * time.Hour, nil
	}
	if n, ok := strings.CutSuffix(s, "d"); ok {
		v, err := strconv.Atoi(n)
		if err == nil && v > 0 {
			return time.Duration(v) * 24 * time.Hour, nil
		}
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return 0, errors.New("bad window")
	}
	return v, nil
}

func (d *Daemon) handleRecords(w http.ResponseWriter, r *http.Request, _ config.Operator) {
	q := r.URL.Query()
	if s := q.Get("id"); s != "" {
		id, err := ledger.ParseRecordID(s)
		if err != nil {
			writeError(w, r, pipeline.Invalidf("id", "want a record id"))
			return
		}
		rec, err := d.ledger.Record(id)
		if errors.Is(err, ledger.ErrNotFound) {
			adminError(w, r, http.StatusNotFound, "not_found", err)
			return
		} else if err != nil {
			adminError(w, r, http.StatusServiceUnavailable, pipeline.CodeStoreUnavailable, err)
			return
		}
		writeValue(w, r, http.StatusOK, map[string]any{"records": []*ledger.PaymentRecord{rec}})
		return
	}
	var recs []*ledger.PaymentRecord
	var err error
	if ws := q.Get("wallet"); ws != "" {
		a, perr := fourmica.ParseAddress(ws)
		if perr != nil {
			writeError(w, r, pipeline.Invalidf("wallet", "not an address"))
			return
		}
		var tab *big.Int
		if ts := q.Get("tab"); ts != "" {
			u, perr := fourmica.ParseU256(ts)
			if perr != nil {
				writeError(w, r, pipeline.Invalidf("tab", "not a 256-bit integer"))
				return
			}
			tab = u.Big()
		}
		recs, err = d.ledger.ByTab(common.Address(a), tab)
	} else {
		n := 50
		if s := q.Get("limit"); s != "" {
			if n, err = strconv.Atoi(s); err != nil || n < 1 || n > 10000 {
				writeError(w, r, pipeline.Invalidf("limit", "want 1..10000"))
				return
			}
		}
		recs, err = d.ledger.Recent(n)
	}
	if err != nil {
		adminError(w, r, http.StatusServiceUnavailable, pipeline.CodeStoreUnavailable, err)
		return
	}
	writeList(w, r, "records", recs)
}

func (d *Daemon) handleKeys(w http.ResponseWriter, r *http.Request, _ config.Operator) {
	keys, err := d.be().List(r.Context())
	if err != nil {
		adminError(w, r, http.StatusServiceUnavailable, pipeline.CodeBackendUnavailable, err)
		return
	}
	writeList(w, r, "keys", keys)
}

// keysChanged refreshes the signers and recompiles the policy for the new wallet set, and
// audits the key operation.
func (d *Daemon) keysChanged(ctx context.Context, o config.Operator, action string, k hsm.KeyInfo) error {
	ev := audit.Event{Kind: audit.KindKeyOp, Operator: o.Name, Wallet: fourmica.Address(k.Address).Hex(),
		Attrs: map[string]string{"action": action, "uri": k.URI, "label": k.Label, "backend": k.Backend, "origin": string(k.Origin)}}
	if _, err := d.ledger.AppendAudit(ctx, ev); err != nil {
		d.log.Error("audit of a key operation failed", "action", action, "err", err)
	}
	if err := d.keys.refresh(ctx); err != nil {
		return err
	}
	if _, err := d.ReloadPolicy(ctx, o.Name, "keys:"+action); err != nil {
		d.log.Error("policy recompile after a key change failed", "err", err)
	}
	return nil
}

// writeKeyChanged finishes a key operation the backend has done: keysChanged (audit, signers,
// policy), then the answer {"key": k}, or 503 backend_unavailable if the signers could not be
// refreshed.
func (d *Daemon) writeKeyChanged(w http.ResponseWriter, r *http.Request, o config.Operator, action string, k hsm.KeyInfo) {
	if err := d.keysChanged(r.Context(), o, action, k); err != nil {
		adminError(w, r, http.StatusServiceUnavailable, pipeline.CodeBackendUnavailable, err)
		return
	}
	writeValue(w, r, http.StatusOK, map[string]any{"key": k})
}

// keyAttester is a backend that can attest its keys (hsm/tpm's Backend.Attest).
type keyAttester interface {
	Attest(ctx context.Context, uri string, nonce []byte) ([]byte, error)
}

// handleKeyAttest answers {"uri", "nonce": hex} with {"uri", "document": base64 CBOR}: a TPM
// quote binding the key's wallet public key and sealing policy to the verifier's nonce
// (package attestation). Through the daemon because it holds the TPM connection. Audited.
func (d *Daemon) handleKeyAttest(w http.ResponseWriter, r *http.Request, o config.Operator) {
	var body struct {
		URI   string `json:"uri"`
		Nonce string `json:"nonce"`
	}
	if e := decodeBody(r, d.cfg.Limits.MaxBodyBytes, &body); e != nil {
		writeError(w, r, e)
		return
	}
	if body.URI == "" {
		writeError(w, r, pipeline.Invalidf("uri", "required"))
		return
	}
	nonce, err := hex.DecodeString(strings.TrimPrefix(body.Nonce, "0x"))
	if err != nil || len(nonce) < 8 || len(nonce) > 64 {
		writeError(w, r, pipeline.Invalidf("nonce", "8 to 64 bytes in hex"))
		return
	}
	b := d.be()
	at, ok := b.(keyAttester)
	if !ok {
		adminError(w, r, http.StatusUnprocessableEntity, "not_supported", errors.New("the "+b.Name()+" backend cannot attest keys (TPM keys only)"))
		return
	}
	doc, err := at.Attest(r.Context(), body.URI, nonce)
	if err != nil {
		keyError(w, r, err)
		return
	}
	ev := audit.Event{Kind: audit.KindKeyOp, Operator: o.Name,
		Attrs: map[string]string{"action": "attest", "uri": body.URI, "backend": b.Name(), "nonce": hex.EncodeToString(nonce)}}
	if _, err := d.ledger.AppendAudit(r.Context(), ev); err != nil {
		d.log.Error("audit of a key attestation failed", "err", err)
	}
	writeValue(w, r, http.StatusOK, map[string]any{"uri": body.URI, "document": doc})
}

func keyError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, hsm.ErrInvalidOptions), errors.Is(err, hsm.ErrBadKey):
		adminError(w, r, http.StatusBadRequest, pipeline.CodeInvalidRequest, err)
	case errors.Is(err, hsm.ErrUnknownKey), errors.Is(err, hsm.ErrBadURI):
		adminError(w, r, http.StatusNotFound, "unknown_key", err)
	case errors.Is(err, hsm.ErrKeyRetired):
		adminError(w, r, http.StatusConflict, "key_retired", err)
	default:
		adminError(w, r, http.StatusServiceUnavailable, pipeline.CodeBackendUnavailable, err)
	}
}

func (d *Daemon) handleKeyGenerate(w http.ResponseWriter, r *http.Request, o config.Operator) {
	var body struct {
		Label string `json:"label"`
	}
	if e := decodeBody(r, d.cfg.Limits.MaxBodyBytes, &body); e != nil {
		writeError(w, r, e)
		return
	}
	if body.Label == "" {
		writeError(w, r, pipeline.Invalidf("label", "required"))
		return
	}
	k, err := d.be().Generate(r.Context(), hsm.GenerateOptions{Label: body.Label})
	if err != nil {
		keyError(w, r, err)
		return
	}
	d.writeKeyChanged(w, r, o, "generate", k)
}

func (d *Daemon) handleKeyImport(w http.ResponseWriter, r *http.Request, o config.Operator) {
	// key_hex stays raw bytes (never a Go string, which could not be wiped) and is zeroed, with
	// the request body, once the key is on the device.
	var body struct {
		Label      string          `json:"label"`
		KeyHex     json.RawMessage `json:"key_hex"`
		Keystore   json.RawMessage `json:"keystore"`
		Passphrase string          `json:"passphrase"`
	}
	defer func() { clear(body.KeyHex); clear(body.Keystore) }()
	if e := decodeBodyWipe(r, d.cfg.Limits.MaxBodyBytes, &body, true); e != nil {
		writeError(w, r, e)
		return
	}
	opts := hsm.ImportOptions{Label: body.Label, Passphrase: body.Passphrase}
	hasKS := len(body.Keystore) > 0 && string(body.Keystore) != "null"
	hasKey := len(body.KeyHex) > 0 && string(body.KeyHex) != "null"
	switch {
	case body.Label == "":
		writeError(w, r, pipeline.Invalidf("label", "required"))
		return
	case hasKey && hasKS:
		writeError(w, r, pipeline.Invalidf("key_hex", "give key_hex or keystore, not both"))
		return
	case hasKey:
		raw := body.KeyHex
		if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
			writeError(w, r, pipeline.Invalidf("key_hex", "must be a string"))
			return
		}
		raw = bytes.TrimPrefix(raw[1:len(raw)-1], []byte("0x"))
		k := make([]byte, hex.DecodedLen(len(raw)))
		if n, err := hex.Decode(k, raw); err != nil || n != 32 {
			clear(k)
			writeError(w, r, pipeline.Invalidf("key_hex", "want 32 bytes of hex"))
			return
		}
		opts.Key = k
	case hasKS:
		ks := []byte(body.Keystore)
		// The keystore may be sent as a JSON string holding the JSON.
		var s string
		if json.Unmarshal(ks, &s) == nil {
			ks = []byte(s)
		}
		opts.Keystore = ks
		defer clear(ks)
	default:
		writeError(w, r, pipeline.Invalidf("key_hex", "key_hex or keystore is required"))
		return
	}
	k, err := d.be().Import(r.Context(), opts)
	clear(opts.Key)
	if err != nil {
		keyError(w, r, err)
		return
	}
	d.writeKeyChanged(w, r, o, "import", k)
}

func (d *Daemon) handleKeyRetire(w http.ResponseWriter, r *http.Request, o config.Operator) {
	var body struct {
		URI string `json:"uri"`
	}
	if e := decodeBody(r, d.cfg.Limits.MaxBodyBytes, &body); e != nil {
		writeError(w, r, e)
		return
	}
	if body.URI == "" {
		writeError(w, r, pipeline.Invalidf("uri", "required"))
		return
	}
	if err := d.be().Retire(r.Context(), body.URI); err != nil {
		keyError(w, r, err)
		return
	}
	var info hsm.KeyInfo
	if keys, err := d.be().List(r.Context()); err == nil {
		for _, k := range keys {
			if k.URI == body.URI {
				info = k
			}
		}
	}
	if info.URI == "" {
		info = hsm.KeyInfo{URI: body.URI, Retired: true}
	}
	d.writeKeyChanged(w, r, o, "retire", info)
}

func (d *Daemon) handleReady(w http.ResponseWriter, r *http.Request, _ config.Operator) {
	ok, st := d.ready(r.Context())
	st["ready"] = ok
	status := http.StatusOK
	if !ok {
		status = http.StatusServiceUnavailable
	}
	writeValue(w, r, status, st)
}

// ---- retention (see ledger/prune.go and docs/ledger.md#retention) ----

// pruneBody is the body of both retention steps.
type pruneBody struct {
	Before        string `json:"before"`                   // RFC 3339
	Plan          string `json:"plan,omitempty"`           // 0x-hex, from the archive's trailer (prune only)
	ArchiveSHA256 string `json:"archive_sha256,omitempty"` // 0x-hex, from the archive's trailer (prune only)
}

func parseHash32(field, s string) ([32]byte, *pipeline.Error) {
	var h [32]byte
	b, err := hex.DecodeString(strings.TrimPrefix(s, "0x"))
	if err != nil || len(b) != 32 {
		return h, pipeline.Invalidf(field, "want 32 bytes as 0x-hex")
	}
	copy(h[:], b)
	return h, nil
}

func (d *Daemon) pruneRequest(w http.ResponseWriter, r *http.Request) (pruneBody, time.Time, bool) {
	var body pruneBody
	if e := decodeBody(r, d.cfg.Limits.MaxBodyBytes, &body); e != nil {
		writeError(w, r, e)
		return body, time.Time{}, false
	}
	before, err := time.Parse(time.RFC3339Nano, body.Before)
	if err != nil {
		writeError(w, r, pipeline.Invalidf("before", "want an RFC 3339 time"))
		return body, time.Time{}, false
	}
	return body, before, true
}

// writtenTracker notes whether anything was written, so an error before the first byte can
// still be answered as an error.
type writtenTracker struct {
	w       http.ResponseWriter
	written bool
}

func (t *writtenTracker) Write(p []byte) (int, error) {
	if !t.written {
		t.w.Header().Set("Content-Type", "application/x-ndjson")
		t.w.WriteHeader(http.StatusOK)
		t.written = true
	}
	return t.w.Write(p)
}

// handlePruneExport (GET ?before=RFC3339) is step 1 of retention: it streams the archive of
// what a prune at "before" would delete (ledger.ExportArchive) and changes nothing. A stream cut short lacks
// the trailer, which the CLI requires before it confirms.
func (d *Daemon) handlePruneExport(w http.ResponseWriter, r *http.Request, _ config.Operator) {
	before, err := time.Parse(time.RFC3339Nano, r.URL.Query().Get("before"))
	if err != nil {
		writeError(w, r, pipeline.Invalidf("before", "want an RFC 3339 time"))
		return
	}
	tw := &writtenTracker{w: w}
	_, err = d.ledger.ExportArchive(tw, before)
	switch {
	case err == nil:
	case tw.written:
		d.log.Error("archive export failed midway (nothing pruned)", "err", err)
	case errors.Is(err, ledger.ErrPlanChanged):
		adminError(w, r, http.StatusConflict, "prune_plan_changed", err)
	case errors.Is(err, ledger.ErrInvalid):
		writeError(w, r, pipeline.Invalidf("before", "%s", strings.TrimPrefix(err.Error(), "ledger: invalid argument: ")))
	case errors.Is(err, ledger.ErrCorrupt):
		adminError(w, r, http.StatusInternalServerError, "audit_corrupt", err)
	default:
		adminError(w, r, http.StatusServiceUnavailable, pipeline.CodeStoreUnavailable, err)
	}
}

// handlePrune is step 2 of retention, once the operator's archive is written and synced: it
// deletes what the archive holds if the selection is still the archive's plan (409
// prune_plan_changed otherwise: nothing deleted), with a retention audit record naming the
// operator and the archive's SHA-256.
func (d *Daemon) handlePrune(w http.ResponseWriter, r *http.Request, o config.Operator) {
	body, before, ok := d.pruneRequest(w, r)
	if !ok {
		return
	}
	plan, e := parseHash32("plan", body.Plan)
	if e != nil {
		writeError(w, r, e)
		return
	}
	sha, e := parseHash32("archive_sha256", body.ArchiveSHA256)
	if e != nil {
		writeError(w, r, e)
		return
	}
	sum, err := d.ledger.Prune(r.Context(), ledger.PruneRequest{Before: before, Plan: plan, ArchiveSHA256: sha, Operator: o.Name})
	switch {
	case errors.Is(err, ledger.ErrPlanChanged):
		adminError(w, r, http.StatusConflict, "prune_plan_changed", err)
	case errors.Is(err, ledger.ErrInvalid):
		writeError(w, r, pipeline.Invalidf("before", "%s", strings.TrimPrefix(err.Error(), "ledger: invalid argument: ")))
	case errors.Is(err, ledger.ErrCorrupt):
		adminError(w, r, http.StatusInternalServerError, "audit_corrupt", err)
	case err != nil:
		adminError(w, r, http.StatusServiceUnavailable, pipeline.CodeStoreUnavailable, err)
	default:
		d.log.Info("ledger pruned", "operator", o.Name, "pruned_through", sum.Through.Seq,
			"audit_records", sum.AuditRecords, "payment_records", sum.PaymentRecords)
		writeValue(w, r, http.StatusOK, map[string]any{
			"before": before.UTC().Format(time.RFC3339Nano), "pruned_through": sum.Through.Seq,
			"checkpoint_hash": "0x" + hex.EncodeToString(sum.Through.Hash[:]),
			"audit_records":   sum.AuditRecords, "payment_records": sum.PaymentRecords,
			"plan": "0x" + hex.EncodeToString(sum.Plan[:]), "archive_sha256": "0x" + hex.EncodeToString(sum.SHA256[:]),
		})
	}
}
