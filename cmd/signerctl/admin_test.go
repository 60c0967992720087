package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/ledger"
)

// fakeDaemon serves canned admin answers on a Unix socket and records the requests.
type fakeDaemon struct {
	sock string
	mu   sync.Mutex
	reqs []string // "METHOD path body"
}

func newFake(t *testing.T, routes map[string]func(w http.ResponseWriter, body string)) *fakeDaemon {
	t.Helper()
	dir, err := os.MkdirTemp("", "ctl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &fakeDaemon{sock: filepath.Join(dir, "admin.sock")}
	ln, err := net.Listen("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.reqs = append(f.reqs, r.Method+" "+r.URL.RequestURI()+" "+string(b))
		f.mu.Unlock()
		h, ok := routes[r.Method+" "+r.URL.Path]
		if !ok {
			w.WriteHeader(404)
			io.WriteString(w, `{"error":{"code":"not_found","reason":"no such route"}}`)
			return
		}
		h(w, string(b))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return f
}

func (f *fakeDaemon) last() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reqs) == 0 {
		return ""
	}
	return f.reqs[len(f.reqs)-1]
}

func reply(status int, body string) func(http.ResponseWriter, string) {
	return func(w http.ResponseWriter, _ string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

func ctl(args ...string) (string, string, int) {
	var out, errb bytes.Buffer
	code := run(args, strings.NewReader(""), &out, &errb)
	return out.String(), errb.String(), code
}

const ksEngaged = `{"engaged":true,"reason":"incident","by":"alice","since":"2026-11-21T12:00:00Z","require_second_operator":true,"inflight":0}`

func TestStopResume(t *testing.T) {
	var resumeAnswer func(http.ResponseWriter, string)
	f := newFake(t, map[string]func(http.ResponseWriter, string){
		"POST /v1/admin/kill-switch": func(w http.ResponseWriter, body string) {
			if strings.Contains(body, `"engaged":true`) {
				reply(200, `{"status":`+ksEngaged+`}`)(w, body)
				return
			}
			resumeAnswer(w, body)
		},
	})
	if _, errs, code := ctl("stop", "--socket", f.sock); code != exitUsage || !strings.Contains(errs, "--reason") {
		t.Fatalf("stop without reason: %d %s", code, errs)
	}
	out, errs, code := ctl("stop", "--reason", "incident", "--socket", f.sock)
	if code != 0 || !strings.Contains(out, "ENGAGED") || !strings.Contains(out, "incident") {
		t.Fatalf("stop: %d %s %s", code, out, errs)
	}
	var body map[string]any
	json.Unmarshal([]byte(strings.SplitN(f.last(), " ", 3)[2]), &body)
	if body["engaged"] != true || body["reason"] != "incident" {
		t.Fatalf("stop sent %v", body)
	}
	resumeAnswer = reply(202, `{"status":`+ksEngaged+`,"resume":{"resumed":false,"pending":{"by":"alice","at":"2026-11-21T12:01:00Z","expires_at":"2026-11-21T12:06:00Z"}}}`)
	if out, _, code := ctl("resume", "--socket", f.sock); code != 0 || !strings.Contains(out, "second, different operator") || !strings.Contains(out, "12:06:00") {
		t.Fatalf("resume pending: %d %s", code, out)
	}
	if !strings.Contains(f.last(), `"engaged":false`) {
		t.Fatalf("resume sent %s", f.last())
	}
	resumeAnswer = reply(409, `{"error":{"code":"second_operator_required","reason":"resume must be confirmed by a different operator"}}`)
	out, errs, code = ctl("resume", "--socket", f.sock)
	if code != exitRefused || !strings.Contains(errs, "second_operator_required") || !strings.Contains(errs, "409") {
		t.Fatalf("resume refused: %d %s %s", code, out, errs)
	}
	out, _, code = ctl("resume", "--json", "--socket", f.sock)
	if code != exitRefused || !strings.Contains(out, `"code":"second_operator_required"`) || !strings.Contains(out, `"status":409`) {
		t.Fatalf("resume refused --json: %d %s", code, out)
	}
	resumeAnswer = reply(200, `{"status":{"engaged":false},"resume":{"resumed":true}}`)
	if out, _, code := ctl("resume", "--socket", f.sock); code != 0 || !strings.Contains(out, "released") {
		t.Fatalf("resume done: %d %s", code, out)
	}
}

func TestStatusAndUnreachable(t *testing.T) {
	f := newFake(t, map[string]func(http.ResponseWriter, string){
		"GET /v1/admin/status": reply(200, `{"ready":true,"kill_switch":`+ksEngaged+`,"policy":{"hash":"0xabc","path":"/etc/p.yaml"},"network":"eip155:84532",
			"domain":{"name":"4mica","version":"1","chain_id":84532},"wallets":["0x1111"],"ledger":{"path":"/var/db","ops":5,"groups":3},"approvals":{"pending":2},"inflight":1,"uptime":"5s","pid":42}`),
	})
	out, _, code := ctl("status", "--socket", f.sock)
	for _, want := range []string{"ready", "ENGAGED", "incident", "0xabc", "eip155:84532", "2 pending", "pid 42"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("status lacks %q: %d\n%s", want, code, out)
		}
	}
	if out, _, _ := ctl("status", "--json", "--socket", f.sock); !json.Valid([]byte(out)) {
		t.Fatalf("status --json not JSON: %s", out)
	}
	if _, errs, code := ctl("status", "--socket", filepath.Join(t.TempDir(), "none.sock")); code != exitUnreachable || !strings.Contains(errs, "cannot reach") {
		t.Fatalf("unreachable: %d %s", code, errs)
	}
	t.Setenv("SIGNERD_ADMIN_SOCKET", f.sock)
	if _, _, code := ctl("status"); code != 0 {
		t.Fatal("SIGNERD_ADMIN_SOCKET not used")
	}
}

func TestApprovalsCommands(t *testing.T) {
	list := `{"approvals":[{"id":"apr_1","state":"pending","agent":"bot","rule":"big","group":"finance","summary":{"amount":"600000","recipient":"0x11"},"created_at":"2026-11-21T12:00:00Z","expires_at":"2026-11-21T12:15:00Z"}]}`
	f := newFake(t, map[string]func(http.ResponseWriter, string){
		"GET /v1/admin/approvals":                reply(200, list),
		"POST /v1/admin/approvals/apr_1/approve": reply(200, `{"id":"apr_1","state":"approved","agent":"bot","summary":{"amount":"600000"}}`),
		"POST /v1/admin/approvals/apr_1/deny":    reply(200, `{"id":"apr_1","state":"denied","agent":"bot","reason":"no"}`),
		"POST /v1/admin/approvals/apr_2/approve": reply(403, `{"error":{"code":"not_in_group","reason":"operator is not in the approval's group \"finance\""}}`),
	})
	out, _, code := ctl("approvals", "list", "--socket", f.sock, "--state", "pending")
	if code != 0 || !strings.Contains(out, "apr_1") || !strings.Contains(out, "amount=600000") || !strings.Contains(f.last(), "state=pending") {
		t.Fatalf("list: %d %s (%s)", code, out, f.last())
	}
	if out, _, code := ctl("approvals", "approve", "apr_1", "--socket", f.sock); code != 0 || !strings.Contains(out, "approved apr_1") {
		t.Fatalf("approve: %d %s", code, out)
	}
	if _, _, code := ctl("approvals", "deny", "apr_1", "--socket", f.sock); code != exitUsage {
		t.Fatal("deny without reason accepted")
	}
	if out, _, code := ctl("approvals", "deny", "apr_1", "--reason", "no", "--socket", f.sock); code != 0 || !strings.Contains(out, "denied apr_1") || !strings.Contains(f.last(), `"reason":"no"`) {
		t.Fatalf("deny: %d %s %s", code, out, f.last())
	}
	if _, errs, code := ctl("approvals", "approve", "apr_2", "--socket", f.sock); code != exitRefused || !strings.Contains(errs, "not_in_group") {
		t.Fatalf("refused approve: %d %s", code, errs)
	}
	if _, _, code := ctl("approvals", "approve", "../x", "--socket", f.sock); code != exitUsage {
		t.Fatal("path-like id accepted")
	}
}

func TestAuditAndLedgerViaDaemon(t *testing.T) {
	f := newFake(t, map[string]func(http.ResponseWriter, string){
		"GET /v1/admin/audit/verify":   reply(200, `{"ok":false,"records":6,"head_seq":6,"head_hash":"0x01","first_bad":{"seq":7,"problem":"altered"}}`),
		"GET /v1/admin/audit/export":   reply(200, "{\"seq\":1}\n{\"seq\":2}\n"),
		"GET /v1/admin/ledger/spend":   reply(200, `{"spend":[{"key":"daily|agent=bot","window":86400000000000,"used":"2500","buckets":1}]}`),
		"GET /v1/admin/ledger/records": reply(200, `{"records":[{"record_id":"7","status":"signed","created":"2026-11-21T12:00:00Z","agent":"bot","wallet":"0xw","tab_id":"1","req_id":"2","claims":"{\"amount\":\"0x10\"}","charges":[]}]}`),
	})
	out, _, code := ctl("audit", "verify", "--socket", f.sock)
	if code != exitRefused || !strings.Contains(out, "BROKEN") || !strings.Contains(out, "record 7: altered") {
		t.Fatalf("verify broken: %d %s", code, out)
	}
	file := filepath.Join(t.TempDir(), "audit.jsonl")
	if _, errs, code := ctl("audit", "export", "--out", file, "--socket", f.sock); code != 0 || !strings.Contains(errs, "exported 2 audit records") {
		t.Fatalf("export: %d %s", code, errs)
	}
	if b, _ := os.ReadFile(file); string(b) != "{\"seq\":1}\n{\"seq\":2}\n" {
		t.Fatalf("export file %q", b)
	}
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
		t.Fatalf("export file mode %v", fi.Mode())
	}
	out, _, code = ctl("ledger", "spend", "--socket", f.sock)
	if code != 0 || !strings.Contains(out, "daily|agent=bot") || !strings.Contains(out, "1d") || !strings.Contains(out, "2500") {
		t.Fatalf("spend: %d %s", code, out)
	}
	if _, _, code := ctl("ledger", "spend", "--window", "day", "--socket", f.sock); code != exitUsage {
		t.Fatal("--window without --key accepted")
	}
	out, _, code = ctl("ledger", "records", "--limit", "5", "--socket", f.sock)
	if code != 0 || !strings.Contains(out, "signed") || !strings.Contains(out, " 16 ") || !strings.Contains(f.last(), "limit=5") {
		t.Fatalf("records: %d %s %s", code, out, f.last())
	}
}

// TestAuditVerifyDB opens a real ledger file read-only: good chain, then a tampered record.
func TestAuditVerifyDB(t *testing.T) {
	path := filepath.Join(t.TempDir(), "signerd.db")
	l, err := ledger.Open(ledger.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := l.AppendAudit(context.Background(), audit.Event{Kind: audit.KindPolicyReload, Operator: "alice"}); err != nil {
			t.Fatal(err)
		}
	}
	// While the daemon (here: the open ledger) holds the file, --db refuses.
	if _, errs, code := ctl("audit", "verify", "--db", path); code != exitRefused || !strings.Contains(errs, "locked") {
		t.Fatalf("verify --db while locked: %d %s", code, errs)
	}
	l.Close()
	out, errs, code := ctl("audit", "verify", "--db", path)
	if code != 0 || !strings.Contains(out, "OK: 3 records") {
		t.Fatalf("verify --db: %d %s %s", code, out, errs)
	}
	out, _, code = ctl("audit", "export", "--db", path)
	if code != 0 || strings.Count(out, "\n") != 3 || !strings.Contains(out, `"kind":"policy_reload"`) {
		t.Fatalf("export --db: %d %s", code, out)
	}
	// Tamper with record 2.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(audit.BucketRecords)
		c := b.Cursor()
		k, v := c.First()
		k, v = c.Next()
		nv := append([]byte(nil), v...)
		nv[len(nv)-1] ^= 1
		return b.Put(k, nv)
	})
	db.Close()
	out, _, code = ctl("audit", "verify", "--db", path)
	if code != exitRefused || !strings.Contains(out, "BROKEN") || !strings.Contains(out, "record 2") {
		t.Fatalf("verify tampered: %d %s", code, out)
	}
}
