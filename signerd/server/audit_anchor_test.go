package server_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/signerd/signerd/signerd/bucketstore"

	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/config"
)

// appendAudit writes n key_op records through the daemon's ledger.
func appendAudit(t *testing.T, d *testDaemon, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := d.Ledger().AppendAudit(context.Background(), audit.Event{Kind: audit.KindKeyOp, Operator: "alice",
			Attrs: map[string]string{"action": "test", "n": fmt.Sprint(i)}}); err != nil {
			t.Fatal(err)
		}
	}
}

// headOf asks the daemon for the audit head and checks it against the ledger.
func headOf(t *testing.T, d *testDaemon) (audit.HeadInfo, *response) {
	t.Helper()
	r := d.admin.do(t, "GET", "/v1/admin/audit/head", nil)
	if r.Status != 200 {
		t.Fatalf("audit head: %d %s", r.Status, r.Raw)
	}
	var h audit.HeadInfo
	if err := h.UnmarshalJSON(r.Raw); err != nil {
		t.Fatalf("audit head answer %s: %v", r.Raw, err)
	}
	return h, r
}

func anchorsQuery(anchors ...string) string {
	q := url.Values{}
	for _, a := range anchors {
		q.Add("anchor", a)
	}
	return "/v1/admin/audit/verify?" + q.Encode()
}

// TestAuditHeadAndAnchors: the head endpoint gives what the ledger holds, and verify checks
// anchors given as query parameters (GET) or in a JSON body (POST).
func TestAuditHeadAndAnchors(t *testing.T) {
	d := startDaemon(t, nil)
	appendAudit(t, d, 5)
	h, r := headOf(t, d)
	seq, hash, err := d.Ledger().AuditHead()
	if err != nil {
		t.Fatal(err)
	}
	if h.Seq != seq || h.Hash != hash || seq < 5 || h.Time.IsZero() || time.Since(h.Time) > time.Minute {
		t.Fatalf("head %+v, ledger says %d %x", h, seq, hash)
	}
	if r.str("line") != h.Line() || r.str("hash") != fmt.Sprintf("0x%x", hash) || !strings.HasPrefix(h.Line(), fmt.Sprintf("seq=%d hash=0x%x time=", seq, hash)) {
		t.Fatalf("head answer %s", r.Raw)
	}
	early, _, err := d.Ledger().AuditRecord(2)
	if err != nil {
		t.Fatal(err)
	}
	a2 := audit.Anchor{Seq: 2, Hash: early.Hash}
	wrong := h.Anchor()
	wrong.Hash[31] ^= 0x55
	beyond := audit.Anchor{Seq: seq + 100, Hash: hash}

	cases := []struct {
		name    string
		method  string
		path    string
		body    any
		status  int
		code    string // error code when not 200
		ok      bool
		want    []audit.AnchorStatus
		problem string // in the answer (first failed anchor's problem, or the error reason)
	}{
		{name: "no anchors", method: "GET", path: "/v1/admin/audit/verify", status: 200, ok: true},
		{name: "head line anchor ok", method: "GET", path: anchorsQuery(h.Line()), status: 200, ok: true, want: []audit.AnchorStatus{audit.AnchorOK}},
		{name: "short form anchors ok", method: "GET", path: anchorsQuery(a2.String(), h.Anchor().String()), status: 200, ok: true,
			want: []audit.AnchorStatus{audit.AnchorOK, audit.AnchorOK}},
		{name: "anchor beyond the head", method: "GET", path: anchorsQuery(a2.String(), beyond.String()), status: 200,
			want: []audit.AnchorStatus{audit.AnchorOK, audit.AnchorMissing}, problem: fmt.Sprintf("no record %d (its head is seq %d)", seq+100, seq)},
		{name: "anchor hash mismatch", method: "GET", path: anchorsQuery(wrong.String()), status: 200,
			want: []audit.AnchorStatus{audit.AnchorMismatch}, problem: fmt.Sprintf("record %d has hash 0x%x", seq, hash)},
		{name: "POST body: comment text is not an anchor", method: "POST", path: "/v1/admin/audit/verify", body: map[string]any{"anchors": []string{"# not a comment here", a2.String()}},
			status: 400, code: "invalid_request", problem: `"# not a comment here"`},
		{name: "POST body anchors ok and failed", method: "POST", path: "/v1/admin/audit/verify", body: map[string]any{"anchors": []string{h.Line(), a2.String(), beyond.String()}},
			status: 200, want: []audit.AnchorStatus{audit.AnchorOK, audit.AnchorOK, audit.AnchorMissing}, problem: "truncated or rolled back"},
		{name: "malformed query anchor", method: "GET", path: anchorsQuery(a2.String(), "12:0xnothex"), status: 400, code: "invalid_request", problem: `"12:0xnothex"`},
		{name: "malformed line anchor", method: "GET", path: anchorsQuery("seq=3 hash=0x01"), status: 400, code: "invalid_request", problem: "64 hex digits"},
		{name: "POST without a body", method: "POST", path: "/v1/admin/audit/verify", status: 400, code: "invalid_request"},
		{name: "POST anchors not strings", method: "POST", path: "/v1/admin/audit/verify", body: []byte(`{"anchors":[12]}`), status: 400, code: "invalid_request"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := d.admin.do(t, tc.method, tc.path, tc.body)
			if r.Status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.Status, tc.status, r.Raw)
			}
			if tc.status != 200 {
				if r.errCode() != tc.code || !strings.Contains(r.errField("reason"), tc.problem) {
					t.Fatalf("error %s, want %s containing %q", r.Raw, tc.code, tc.problem)
				}
				return
			}
			if r.Body["ok"] != tc.ok || r.Body["first_bad"] != nil {
				t.Fatalf("ok %v first_bad %v, want ok %v: %s", r.Body["ok"], r.Body["first_bad"], tc.ok, r.Raw)
			}
			got, _ := r.Body["anchors"].([]any)
			if len(got) != len(tc.want) {
				t.Fatalf("%d anchor results, want %d: %s", len(got), len(tc.want), r.Raw)
			}
			var problems []string
			for i, g := range got {
				m := g.(map[string]any)
				if m["status"] != string(tc.want[i]) {
					t.Errorf("anchor %d: %v, want %s", i, m, tc.want[i])
				}
				if p, _ := m["problem"].(string); p != "" {
					problems = append(problems, p)
				}
			}
			if tc.problem != "" && (len(problems) == 0 || !strings.Contains(problems[0], tc.problem)) {
				t.Errorf("problems %q lack %q", problems, tc.problem)
			}
		})
	}
}

// TestAuditAnchorNonOperator: the head and verify endpoints are for operators only.
func TestAuditAnchorNonOperator(t *testing.T) {
	d := startDaemon(t, func(c *config.Config) {
		c.Operators = []config.Operator{{Name: "someone-else", UID: 4242}}
	})
	for _, tc := range []struct{ method, path string }{
		{"GET", "/v1/admin/audit/head"},
		{"GET", anchorsQuery("1:0x" + strings.Repeat("00", 32))},
		{"POST", "/v1/admin/audit/verify"},
	} {
		var body any
		if tc.method == "POST" {
			body = map[string]any{"anchors": []string{}}
		}
		r := d.admin.do(t, tc.method, tc.path, body)
		if r.Status != 403 || r.errCode() != "unknown_caller" {
			t.Errorf("%s %s as a non-operator: %d %s", tc.method, tc.path, r.Status, r.Raw)
		}
	}
}

// TestAuditAnchorCatchesRewrite is the point of anchoring: an anchor taken from a daemon, then
// the chain in (a copy of) its ledger file rewritten from record 1 on and re-hashed to a new
// head. A daemon started on the rewritten file reports the chain unbroken, and the anchor
// mismatched.
func TestAuditAnchorCatchesRewrite(t *testing.T) {
	d := startDaemon(t, nil)
	appendAudit(t, d, 6)
	h, _ := headOf(t, d)
	if err := d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Copy the stopped daemon's ledger file and rewrite its whole audit chain, longer than before.
	stateDir := filepath.Join(t.TempDir(), "state")
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := bucketstore.CopyClosed(filepath.Join(d.cfg.StateDir, "signerd.db"), filepath.Join(stateDir, "signerd.db")); err != nil {
		t.Fatal(err)
	}
	db, err := bucketstore.Open(filepath.Join(stateDir, "signerd.db"), bucketstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bucketstore.Tx) error {
		for _, b := range [][]byte{audit.BucketRecords, audit.BucketHead} {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
		}
		if err := audit.Init(tx); err != nil {
			return err
		}
		for i := uint64(0); i < h.Seq+3; i++ {
			if _, err := audit.Append(tx, h.Time, audit.Event{Kind: audit.KindPolicyReload, Reason: "nothing happened"}); err != nil {
				return err
			}
		}
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	d2 := startDaemon(t, func(c *config.Config) { c.StateDir = stateDir })
	if r := d2.admin.do(t, "GET", "/v1/admin/audit/verify", nil); r.Status != 200 || r.Body["ok"] != true {
		t.Fatalf("plain verify of the rewritten chain should pass (that is why anchors exist): %d %s", r.Status, r.Raw)
	}
	r := d2.admin.do(t, "GET", anchorsQuery(h.Line()), nil)
	if r.Status != 200 || r.Body["ok"] != false || r.Body["first_bad"] != nil {
		t.Fatalf("verify with the anchor: %d %s", r.Status, r.Raw)
	}
	res := r.Body["anchors"].([]any)[0].(map[string]any)
	if res["status"] != "mismatch" || !strings.Contains(res["problem"].(string), "rewritten") || res["anchor"] != h.Anchor().String() {
		t.Fatalf("anchor result %v", res)
	}
}
