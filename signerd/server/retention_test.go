package server_test

import (
	"bytes"
	"encoding/hex"
	"io"
	"net/url"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/ledger"
	"github.com/signerd/signerd/signerd/server"
)

// getRaw fetches an NDJSON answer (the test client's do decodes single JSON objects).
func getRaw(t *testing.T, c *client, path string) (int, []byte) {
	t.Helper()
	resp, err := c.http.Get("http://signerd" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// TestLedgerPruneTwoStep drives retention through a real daemon: export (changes nothing, also
// when never confirmed), a wrong plan (409, nothing deleted), the confirmed prune (old signed
// records and audit records gone, new ones kept, budgets unchanged, chain verifies from the
// checkpoint, old anchors "pruned"), a retry of a pruned request (409, not signed again) and
// a second run (nothing to prune).
func TestLedgerPruneTwoStep(t *testing.T) {
	pol, err := os.ReadFile("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var offset atomic.Int64
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	d := launchDaemon(t, pol, 300*time.Millisecond, nil, func(o *server.Options) { o.Clock = clock })

	var old []map[string]any
	for req := uint64(1); req <= 3; req++ {
		c := d.claims(1, req, 5, nil)
		old = append(old, c)
		d.checkSigned(t, d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": c}))
	}
	oldHead, _ := headOf(t, d)
	start := time.Now()
	offset.Store(int64(48 * time.Hour))
	d.checkSigned(t, d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(2, 1, 5, func(c map[string]any) {
		c["timestamp"] = clock().Unix()
	})}))
	spend := d.admin.do(t, "GET", "/v1/admin/ledger/spend", nil)
	if spend.Status != 200 {
		t.Fatalf("spend: %d %s", spend.Status, spend.Raw)
	}
	before := start.Add(time.Minute).UTC().Format(time.RFC3339Nano)
	exportPath := "/v1/admin/ledger/prune/export?" + url.Values{"before": {before}}.Encode()

	if r := d.admin.do(t, "GET", "/v1/admin/ledger/prune/export?"+url.Values{"before": {clock().Format(time.RFC3339)}}.Encode(), nil); r.Status != 400 {
		t.Fatalf("too recent: %d %s", r.Status, r.Raw)
	}
	st, arch := getRaw(t, d.admin, exportPath)
	if st != 200 {
		t.Fatalf("export: %d %s", st, arch)
	}
	sum, err := ledger.VerifyArchive(bytes.NewReader(arch))
	if err != nil {
		t.Fatal(err)
	}
	if sum.PaymentRecords != 3 || sum.Through != audit.Checkpoint(oldHead.Anchor()) {
		t.Fatalf("archive %+v (old head %d)", sum, oldHead.Seq)
	}
	// Never confirmed (the CLI failed to write the archive, or crashed): nothing pruned.
	if v := d.admin.do(t, "GET", "/v1/admin/audit/verify", nil); v.Status != 200 || v.Body["ok"] != true || v.Body["pruned_through"] != nil {
		t.Fatalf("after export only: %s", v.Raw)
	}
	hx := func(b [32]byte) string { return "0x" + hex.EncodeToString(b[:]) }
	bad := sum.Plan
	bad[31] ^= 1
	if r := d.admin.do(t, "POST", "/v1/admin/ledger/prune", map[string]any{"before": before, "plan": hx(bad), "archive_sha256": hx(sum.SHA256)}); r.Status != 409 || r.errCode() != "prune_plan_changed" {
		t.Fatalf("wrong plan: %d %s", r.Status, r.Raw)
	}
	if recs := d.admin.do(t, "GET", "/v1/admin/ledger/records?limit=100", nil); len(recs.Body["records"].([]any)) != 4 {
		t.Fatalf("records after a refused prune: %s", recs.Raw)
	}

	r := d.admin.do(t, "POST", "/v1/admin/ledger/prune", map[string]any{"before": before, "plan": hx(sum.Plan), "archive_sha256": hx(sum.SHA256)})
	if r.Status != 200 || r.Body["payment_records"] != float64(3) || r.Body["pruned_through"] != float64(sum.Through.Seq) {
		t.Fatalf("prune: %d %s", r.Status, r.Raw)
	}
	newHead, _ := headOf(t, d)
	v := d.admin.do(t, "GET", anchorsQuery(sum.Hashes[1].String(), oldHead.Anchor().String(), newHead.Anchor().String()), nil)
	if v.Status != 200 || v.Body["ok"] != true || v.Body["pruned_through"] != float64(sum.Through.Seq) || v.Body["checkpoint_hash"] != hx(sum.Through.Hash) {
		t.Fatalf("verify after prune: %s", v.Raw)
	}
	as := v.Body["anchors"].([]any)
	if st := func(i int) any { return as[i].(map[string]any)["status"] }; st(0) != "pruned" || st(1) != "ok" || st(2) != "ok" {
		t.Fatalf("anchors after prune: %s", v.Raw)
	}
	last, _, err := d.Ledger().AuditRecord(newHead.Seq)
	if err != nil || last.Event.Kind != audit.KindRetention || last.Event.Operator != "alice" || last.Event.Attrs["archive_sha256"] != hx(sum.SHA256) {
		t.Fatalf("retention audit record %+v %v", last.Event, err)
	}
	recs := d.admin.do(t, "GET", "/v1/admin/ledger/records?limit=100", nil)
	if rs := recs.Body["records"].([]any); len(rs) != 1 || rs[0].(map[string]any)["tab_id"] != "2" {
		t.Fatalf("records after prune: %s", recs.Raw)
	}
	if s := d.admin.do(t, "GET", "/v1/admin/ledger/spend", nil); !bytes.Equal(s.Raw, spend.Raw) {
		t.Fatalf("spend changed by the prune:\n%s\n%s", spend.Raw, s.Raw)
	}

	// A retry of a pruned signed request (with the clock back where it was) is refused, not
	// signed or charged again.
	offset.Store(0)
	if r := d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": old[0]}); r.Status != 409 || r.errCode() != "replay_conflict" {
		t.Fatalf("retry of a pruned request: %d %s", r.Status, r.Raw)
	}
	offset.Store(int64(48 * time.Hour))

	// Twice: nothing left to prune.
	_, arch2 := getRaw(t, d.admin, exportPath)
	s2, err := ledger.VerifyArchive(bytes.NewReader(arch2))
	if err != nil || s2.AuditRecords != 0 || s2.PaymentRecords != 0 || s2.From != sum.Through {
		t.Fatalf("second export %+v %v", s2, err)
	}
	if r := d.admin.do(t, "POST", "/v1/admin/ledger/prune", map[string]any{"before": before, "plan": hx(s2.Plan), "archive_sha256": hx(s2.SHA256)}); r.Status != 400 {
		t.Fatalf("empty prune: %d %s", r.Status, r.Raw)
	}
	if v := d.admin.do(t, "GET", "/v1/admin/audit/verify", nil); v.Body["ok"] != true || v.Body["pruned_through"] != float64(sum.Through.Seq) {
		t.Fatalf("verify at the end: %s", v.Raw)
	}
}

// TestLedgerPruneRacesHTTP: through a real daemon, the daemon clock stepped back after the
// export refuses the prune (400, nothing deleted); two prunes of the same archive at once:
// exactly one deletes (200), the other is 409 prune_plan_changed; a pruned record id is 404.
func TestLedgerPruneRacesHTTP(t *testing.T) {
	pol, err := os.ReadFile("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var offset atomic.Int64
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	d := launchDaemon(t, pol, 300*time.Millisecond, nil, func(o *server.Options) { o.Clock = clock })
	for req := uint64(1); req <= 2; req++ {
		d.checkSigned(t, d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(1, req, 5, nil)}))
	}
	start := time.Now()
	offset.Store(int64(48 * time.Hour))
	d.checkSigned(t, d.agent.do(t, "POST", "/v1/guarantees", map[string]any{"claims": d.claims(2, 1, 5, func(c map[string]any) {
		c["timestamp"] = clock().Unix()
	})}))
	before := start.Add(time.Minute).UTC().Format(time.RFC3339Nano)
	st, arch := getRaw(t, d.admin, "/v1/admin/ledger/prune/export?"+url.Values{"before": {before}}.Encode())
	if st != 200 {
		t.Fatalf("export: %d %s", st, arch)
	}
	sum, err := ledger.VerifyArchive(bytes.NewReader(arch))
	if err != nil {
		t.Fatal(err)
	}
	hx := func(b [32]byte) string { return "0x" + hex.EncodeToString(b[:]) }
	body := map[string]any{"before": before, "plan": hx(sum.Plan), "archive_sha256": hx(sum.SHA256)}

	offset.Store(int64(12 * time.Hour)) // the daemon clock stepped back 36 h
	if r := d.admin.do(t, "POST", "/v1/admin/ledger/prune", body); r.Status != 400 {
		t.Fatalf("prune with the clock stepped back: %d %s", r.Status, r.Raw)
	}
	if recs := d.admin.do(t, "GET", "/v1/admin/ledger/records?limit=100", nil); len(recs.Body["records"].([]any)) != 3 {
		t.Fatalf("records after a refused prune: %s", recs.Raw)
	}
	offset.Store(int64(48 * time.Hour))

	codes := make(chan int, 2)
	for range 2 {
		go func() { codes <- d.admin.do(t, "POST", "/v1/admin/ledger/prune", body).Status }()
	}
	a, b := <-codes, <-codes
	if a+b != 200+409 {
		t.Fatalf("two prunes at once: %d and %d", a, b)
	}
	if r := d.admin.do(t, "GET", "/v1/admin/ledger/records?id=1", nil); r.Status != 404 {
		t.Fatalf("pruned record: %d %s", r.Status, r.Raw)
	}
	if v := d.admin.do(t, "GET", "/v1/admin/audit/verify", nil); v.Body["ok"] != true || v.Body["pruned_through"] != float64(sum.Through.Seq) {
		t.Fatalf("verify: %s", v.Raw)
	}
}
