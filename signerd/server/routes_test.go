package server_test

import (
	"strings"
	"testing"
)

// TestMethodNotAllowed: a known route asked with another method answers 405
// method_not_allowed in the error envelope with an Allow header, on both sockets; unknown
// paths stay 404 not_found; CBOR clients get the envelope in CBOR.
func TestMethodNotAllowed(t *testing.T) {
	d := startDaemon(t, nil)
	cases := []struct {
		name   string
		c      *client
		method string
		path   string
		status int
		code   string
		allow  []string
	}{
		{"GET on POST /v1/guarantees", d.agent, "GET", "/v1/guarantees", 405, "method_not_allowed", []string{"POST"}},
		{"PUT on POST /v1/guarantees", d.agent, "PUT", "/v1/guarantees", 405, "method_not_allowed", []string{"POST"}},
		{"DELETE on GET /v1/wallets", d.agent, "DELETE", "/v1/wallets", 405, "method_not_allowed", []string{"GET", "HEAD"}},
		{"POST on GET /v1/approvals/{id}", d.agent, "POST", "/v1/approvals/apr_x", 405, "method_not_allowed", []string{"GET", "HEAD"}},
		{"DELETE on the kill switch", d.admin, "DELETE", "/v1/admin/kill-switch", 405, "method_not_allowed", []string{"GET", "HEAD", "POST"}},
		{"GET on POST /v1/admin/policy/reload", d.admin, "GET", "/v1/admin/policy/reload", 405, "method_not_allowed", []string{"POST"}},
		{"unknown path", d.agent, "GET", "/v1/nope", 404, "not_found", nil},
		{"admin route on the agent socket", d.agent, "POST", "/v1/admin/kill-switch", 404, "not_found", nil},
		{"unknown admin path", d.admin, "POST", "/v1/admin/nope", 404, "not_found", nil},
	}
	for _, tc := range cases {
		r := tc.c.raw(t, tc.method, tc.path, "", nil)
		if r.Status != tc.status || r.errCode() != tc.code {
			t.Errorf("%s: got %d %s, want %d %s", tc.name, r.Status, r.Raw, tc.status, tc.code)
			continue
		}
		if !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
			t.Errorf("%s: Content-Type %q", tc.name, r.Header.Get("Content-Type"))
		}
		allow := r.Header.Get("Allow")
		if tc.allow == nil {
			if allow != "" {
				t.Errorf("%s: Allow %q on a 404", tc.name, allow)
			}
			continue
		}
		for _, m := range tc.allow {
			if !strings.Contains(allow, m) {
				t.Errorf("%s: Allow %q lacks %s", tc.name, allow, m)
			}
		}
	}
	// CBOR client: the same envelope in CBOR.
	r := d.agent.raw(t, "GET", "/v1/guarantees", "application/cbor", nil)
	if r.Status != 405 || r.errCode() != "method_not_allowed" || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/cbor") {
		t.Errorf("CBOR 405: %d %q %x", r.Status, r.Header.Get("Content-Type"), r.Raw)
	}
	// Still serving.
	d.checkSigned(t, d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(77, 1, 1, nil)}))
}
