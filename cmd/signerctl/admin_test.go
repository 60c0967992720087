package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/signerd/signerd/signerd/bucketstore"

	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/hsm/pkcs11/softhsmtest"
	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/config"
	"github.com/signerd/signerd/signerd/ledger"
	"github.com/signerd/signerd/signerd/server"
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
	db, err := bucketstore.Open(path, bucketstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bucketstore.Tx) error {
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

// newLedgerFile creates a stopped daemon's ledger file holding n audit records.
func newLedgerFile(t *testing.T, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "signerd.db")
	l, err := ledger.Open(ledger.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if _, err := l.AppendAudit(context.Background(), audit.Event{Kind: audit.KindPolicyReload, Operator: "alice", Reason: fmt.Sprint("reload ", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// copyLedger copies a ledger file and lets change alter the copy's bbolt file (as someone
// with write access to it would).
func copyLedger(t *testing.T, path string, change func(tx *bucketstore.Tx) error) string {
	t.Helper()
	cp := filepath.Join(t.TempDir(), "signerd.db")
	if err := bucketstore.CopyClosed(path, cp); err != nil {
		t.Fatal(err)
	}
	db, err := bucketstore.Open(cp, bucketstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(change); err != nil {
		t.Fatal(err)
	}
	return cp
}

// rewriteAudit replaces the audit chain by a fresh consistent one of n records.
func rewriteAudit(n int) func(tx *bucketstore.Tx) error {
	return func(tx *bucketstore.Tx) error {
		for _, b := range [][]byte{audit.BucketRecords, audit.BucketHead} {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
		}
		if err := audit.Init(tx); err != nil {
			return err
		}
		for i := 0; i < n; i++ {
			if _, err := audit.Append(tx, time.Now(), audit.Event{Kind: audit.KindPolicyReload, Operator: "mallory"}); err != nil {
				return err
			}
		}
		return nil
	}
}

// truncateAudit deletes the records after seq and moves the head back to seq.
func truncateAudit(seq uint64) func(tx *bucketstore.Tx) error {
	return func(tx *bucketstore.Tx) error {
		b := tx.Bucket(audit.BucketRecords)
		c := b.Cursor()
		var keys [][]byte
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if binary.BigEndian.Uint64(k) > seq {
				keys = append(keys, append([]byte(nil), k...))
			}
		}
		for _, k := range keys {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		r, _, err := audit.Get(tx, seq)
		if err != nil {
			return err
		}
		h := binary.BigEndian.AppendUint64(nil, seq)
		return tx.Bucket(audit.BucketHead).Put(audit.HeadKey, append(h, r.Hash[:]...))
	}
}

func ctlIn(stdin string, args ...string) (string, string, int) {
	var out, errb bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errb)
	return out.String(), errb.String(), code
}

// TestAuditAnchorsDB: audit head and verify --anchor/--anchors on real ledger files (the daemon
// stopped), including a truncated and a fully rewritten chain that plain verify accepts.
func TestAuditAnchorsDB(t *testing.T) {
	path := newLedgerFile(t, 6)
	out, errs, code := ctl("audit", "head", "--db", path)
	line := strings.TrimSpace(out)
	if code != 0 || !strings.HasPrefix(line, "seq=6 hash=0x") || !strings.Contains(line, " time=") || strings.Count(out, "\n") != 1 {
		t.Fatalf("audit head --db: %d %q %s", code, out, errs)
	}
	head, err := audit.ParseAnchor(line)
	if err != nil {
		t.Fatal(err)
	}
	out, _, code = ctl("audit", "head", "--db", path, "--json")
	var hj map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &hj) != nil || hj["seq"] != float64(6) || hj["hash"] != fmt.Sprintf("0x%x", head.Hash) || hj["line"] != line || strings.Count(out, "\n") != 1 {
		t.Fatalf("audit head --json: %d %s", code, out)
	}
	// Anchor of record 3, taken from the export.
	exp, _, _ := ctl("audit", "export", "--db", path, "--from", "3")
	var rec3 struct {
		Seq  uint64 `json:"seq"`
		Hash string `json:"hash"`
	}
	if err := json.Unmarshal([]byte(strings.SplitN(exp, "\n", 2)[0]), &rec3); err != nil || rec3.Seq != 3 {
		t.Fatalf("export line: %v %s", err, exp)
	}
	a3 := fmt.Sprintf("3:%s", rec3.Hash)
	wrong := []byte(head.String()) // the head anchor with its last hex digit changed
	if wrong[len(wrong)-1] == '0' {
		wrong[len(wrong)-1] = '1'
	} else {
		wrong[len(wrong)-1] = '0'
	}
	beyond := fmt.Sprintf("60:0x%x", head.Hash)
	anchorsFile := filepath.Join(t.TempDir(), "anchors.txt")
	if err := os.WriteFile(anchorsFile, []byte("# taken by cron, hourly\n\n"+a3+"\n  # indented comment\n"+line+"  # latest\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badFile := filepath.Join(t.TempDir(), "bad.txt")
	os.WriteFile(badFile, []byte("# ok\n"+a3+"\nseq=4 hash=0xabc\n"), 0o600)
	emptyFile := filepath.Join(t.TempDir(), "empty.txt")
	os.WriteFile(emptyFile, []byte("# nothing yet\n\n"), 0o600)

	truncated := copyLedger(t, path, truncateAudit(4))
	rewritten := copyLedger(t, path, rewriteAudit(6))
	longer := copyLedger(t, path, rewriteAudit(9))

	cases := []struct {
		name  string
		db    string
		stdin string
		args  []string
		code  int
		out   []string // in stdout
		errs  []string // in stderr
	}{
		{"no anchors", path, "", nil, 0, []string{"OK: 6 records"}, nil},
		{"head line anchor ok", path, "", []string{"--anchor", line}, 0, []string{"OK: 6 records", "anchors OK: all 1 match (seq 6)"}, nil},
		{"short form anchors ok", path, "", []string{"--anchor", a3, "--anchor", head.String()}, 0, []string{"anchors OK: all 2 match (seq 3, 6)"}, nil},
		{"file with comments ok", path, "", []string{"--anchors", anchorsFile}, 0, []string{"anchors OK: all 2 match"}, nil},
		{"file on stdin ok", path, a3 + "\n# c\n", []string{"--anchors", "-"}, 0, []string{"anchors OK: all 1 match (seq 3)"}, nil},
		{"anchor beyond the head", path, "", []string{"--anchor", a3, "--anchor", beyond}, 1,
			[]string{"does NOT match its anchors", "1 of 2 anchors FAILED", "anchor " + beyond + " MISSING", "no record 60 (its head is seq 6)", "truncated or rolled back"}, nil},
		{"anchor hash mismatch", path, "", []string{"--anchor", string(wrong)}, 1,
			[]string{"anchor " + string(wrong) + " MISMATCH", "record 6 has hash " + fmt.Sprintf("0x%x", head.Hash), "rewritten"}, nil},
		{"malformed anchor", path, "", []string{"--anchor", a3, "--anchor", "6:0xnothex"}, 2, nil, []string{`"6:0xnothex"`, "64 hex digits"}},
		{"malformed head line", path, "", []string{"--anchor", "seq=6 hash=" + rec3.Hash + " host=x"}, 2, nil, []string{"unknown key", "host=x"}},
		{"malformed line in the file", path, "", []string{"--anchors", badFile}, 2, nil, []string{"line 3", `"seq=4 hash=0xabc"`}},
		{"file without anchors", path, "", []string{"--anchors", emptyFile}, 2, nil, []string{"no anchors"}},
		{"file missing", path, "", []string{"--anchors", filepath.Join(t.TempDir(), "none")}, 2, nil, []string{"--anchors", "no such file"}},
		{"truncated: plain verify passes", truncated, "", nil, 0, []string{"OK: 4 records"}, nil},
		{"truncated: anchor catches it", truncated, "", []string{"--anchors", anchorsFile}, 1,
			[]string{"1 of 2 anchors FAILED", "anchor " + head.String() + " MISSING", "no record 6 (its head is seq 4)"}, nil},
		{"rewritten: plain verify passes", rewritten, "", nil, 0, []string{"OK: 6 records"}, nil},
		{"rewritten: anchor catches it", rewritten, "", []string{"--anchors", anchorsFile}, 1,
			[]string{"2 of 2 anchors FAILED", "anchor " + a3 + " MISMATCH", "anchor " + head.String() + " MISMATCH", "was rewritten"}, nil},
		{"rewritten longer: anchor catches it", longer, "", []string{"--anchor", line}, 1, []string{"chain is unbroken (9 records", "1 of 1 anchors FAILED", "MISMATCH"}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"audit", "verify", "--db", tc.db}, tc.args...)
			out, errs, code := ctlIn(tc.stdin, args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, out, errs)
			}
			for _, w := range tc.out {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tc.errs {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errs)
				}
			}
			if tc.code == 2 && out != "" {
				t.Errorf("usage error wrote to stdout: %s", out)
			}
		})
	}
	// --json carries each anchor's result.
	out, _, code = ctl("audit", "verify", "--db", rewritten, "--anchor", line, "--json")
	var rep audit.Report
	if code != 1 || json.Unmarshal([]byte(out), &rep) != nil || rep.OK || rep.FirstBad != nil || len(rep.Anchors) != 1 || rep.Anchors[0].Status != audit.AnchorMismatch {
		t.Fatalf("verify --json rewritten: %d %s", code, out)
	}
}

// TestAuditAnchorsViaDaemon: head and anchored verify go to the admin API; a daemon that does
// not report the anchors it was sent is never taken for one that checked them.
func TestAuditAnchorsViaDaemon(t *testing.T) {
	const h = "0x00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
	var verifyAnswer func(http.ResponseWriter, string)
	f := newFake(t, map[string]func(http.ResponseWriter, string){
		"GET /v1/admin/audit/head":    reply(200, `{"seq":42,"hash":"`+h+`","time":"2026-11-21T12:00:00.5Z","line":"ignored"}`),
		"POST /v1/admin/audit/verify": func(w http.ResponseWriter, body string) { verifyAnswer(w, body) },
	})
	out, errs, code := ctl("audit", "head", "--socket", f.sock)
	if code != 0 || out != "seq=42 hash="+h+" time=2026-11-21T12:00:00.5Z\n" || f.last() != "GET /v1/admin/audit/head " {
		t.Fatalf("head: %d %q %s (%s)", code, out, errs, f.last())
	}
	out, _, code = ctl("audit", "head", "--json", "--socket", f.sock)
	if code != 0 || !strings.Contains(out, `"seq":42`) || !strings.Contains(out, `"line":"seq=42 hash=`+h) {
		t.Fatalf("head --json: %d %s", code, out)
	}
	// The daemon checks the anchors: they are POSTed in the short form.
	verifyAnswer = func(w http.ResponseWriter, body string) {
		var in struct{ Anchors []string }
		json.Unmarshal([]byte(body), &in)
		res := []map[string]any{}
		for _, a := range in.Anchors {
			res = append(res, map[string]any{"anchor": a, "seq": 42, "status": "ok"})
		}
		b, _ := json.Marshal(map[string]any{"ok": true, "records": 42, "head_seq": 42, "head_hash": h, "anchors": res})
		reply(200, string(b))(w, body)
	}
	out, errs, code = ctl("audit", "verify", "--anchor", "seq=42 hash="+h+" time=2026-11-21T12:00:00Z", "--socket", f.sock)
	if code != 0 || !strings.Contains(out, "anchors OK: all 1 match (seq 42)") || !strings.Contains(f.last(), `{"anchors":["42:`+h+`"]}`) {
		t.Fatalf("verify via daemon: %d %s %s (%s)", code, out, errs, f.last())
	}
	// More anchors than one request carries: several batches, every result kept.
	var many []string
	for i := 0; i < anchorBatch+3; i++ {
		many = append(many, "--anchor", "42:"+h)
	}
	out, errs, code = ctl(append([]string{"audit", "verify", "--socket", f.sock}, many...)...)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("all %d match", anchorBatch+3)) {
		t.Fatalf("batched verify: %d %s %s", code, out, errs)
	}
	// A failed anchor as the daemon reports it.
	verifyAnswer = reply(200, `{"ok":false,"records":42,"head_seq":42,"head_hash":"`+h+`","anchors":[{"anchor":"50:`+h+`","seq":50,"status":"missing","problem":"the log has no record 50 (its head is seq 42): it was truncated or rolled back after the anchor was taken"}]}`)
	out, _, code = ctl("audit", "verify", "--anchor", "50:"+h, "--socket", f.sock)
	if code != exitRefused || !strings.Contains(out, "anchor 50:"+h+" MISSING: the log has no record 50") {
		t.Fatalf("missing via daemon: %d %s", code, out)
	}
	// A daemon that ignores the anchors (answers a plain report) fails the check.
	verifyAnswer = reply(200, `{"ok":true,"records":42,"head_seq":42,"head_hash":"`+h+`"}`)
	out, errs, code = ctl("audit", "verify", "--anchor", "50:"+h, "--socket", f.sock)
	if code != exitRefused || !strings.Contains(errs, "checked 0 of 1 anchors") || strings.Contains(out, "OK") {
		t.Fatalf("anchors ignored: %d %s %s", code, out, errs)
	}
	// A malformed anchor never reaches the daemon.
	before := f.last()
	if _, errs, code := ctl("audit", "verify", "--anchor", "42:"+h[:20], "--socket", f.sock); code != exitUsage || !strings.Contains(errs, `"42:`+h[:20]+`"`) || f.last() != before {
		t.Fatalf("malformed: %d %s", code, errs)
	}
}

// TestStatusNotReadyReadable: a daemon that is not ready gets one readable line per failing
// component instead of raw JSON; --json stays the daemon's answer byte for byte.
func TestStatusNotReadyReadable(t *testing.T) {
	const notReady = `{"ready":false,"readiness":{"backend":{"ok":false,"reason":"key material zeroized by the kill switch; resume to reopen the backend","checked":"2026-11-21T12:00:00Z"},` +
		`"store":{"ok":false,"reason":"the ledger cannot take writes"},"kill_switch_engaged":true,"wallets":1},"kill_switch":` + ksEngaged + `,"policy":{"hash":"0xabc"},"pid":42}`
	const noReason = `{"ready":false,"readiness":{"backend":{"ok":true},"store":{"ok":true}},"kill_switch":{"engaged":false}}`
	var answer string
	f := newFake(t, map[string]func(http.ResponseWriter, string){
		"GET /v1/admin/status": func(w http.ResponseWriter, body string) { reply(200, answer)(w, body) },
	})
	answer = notReady
	out, errs, code := ctl("status", "--socket", f.sock)
	if code != 0 {
		t.Fatalf("status: %d %s", code, errs)
	}
	lines := strings.Split(out, "\n")
	var ready []string
	for _, l := range lines {
		if strings.HasPrefix(l, "ready") {
			ready = append(ready, strings.Join(strings.Fields(l), " "))
		}
	}
	want := []string{
		"ready NO: backend: key material zeroized by the kill switch; resume to reopen the backend",
		"ready NO: store: the ledger cannot take writes",
	}
	if strings.Join(ready, "\n") != strings.Join(want, "\n") {
		t.Fatalf("ready lines:\n%s\nwant:\n%s\nfull output:\n%s", strings.Join(ready, "\n"), strings.Join(want, "\n"), out)
	}
	if strings.Contains(out, "{") || strings.Contains(out, `"ok"`) {
		t.Fatalf("raw JSON in the human output:\n%s", out)
	}
	if out, _, code := ctl("status", "--json", "--socket", f.sock); code != 0 || strings.TrimSpace(out) != notReady {
		t.Fatalf("status --json changed: %s", out)
	}
	answer = noReason
	if out, _, _ := ctl("status", "--socket", f.sock); !strings.Contains(out, "NO: no component reported a reason (see signerctl status --json)") {
		t.Fatalf("not ready without a failing component:\n%s", out)
	}
}

// TestTabIDsInHex: ledger records and approvals show tab ids in 0x hex (as claims, agents and
// Core do), whatever form the daemon's JSON carries; req ids stay decimal (the SDKs' form);
// --json stays the daemon's answer.
func TestTabIDsInHex(t *testing.T) {
	const tabDec, tabHex = "217453923113694646118108699026346404021", "0xa3981a2a19eceba28080c53ad2a6e8b5"
	records := `{"records":[{"record_id":"7","status":"signed","created":"2026-11-21T12:00:00Z","agent":"bot","wallet":"0xw","tab_id":"` + tabDec + `","req_id":"12","claims":"{}","charges":[]},` +
		`{"record_id":"8","status":"signed","created":"2026-11-21T12:00:01Z","agent":"bot","wallet":"0xw","tab_id":"0x00Ff","req_id":"13","claims":"{}","charges":[]}]}`
	list := `{"approvals":[{"id":"apr_1","state":"pending","agent":"bot","rule":"big","group":"finance","summary":{"amount":"600000","tab_id":"7","req_id":"15"},"expires_at":"2026-11-21T12:15:00Z"}]}`
	one := `{"id":"apr_1","state":"pending","agent":"bot","summary":{"amount":"600000","tab_id":"` + tabDec + `","req_id":"15"}}`
	f := newFake(t, map[string]func(http.ResponseWriter, string){
		"GET /v1/admin/ledger/records":  reply(200, records),
		"GET /v1/admin/approvals":       reply(200, list),
		"GET /v1/admin/approvals/apr_1": reply(200, one),
	})
	if hexID(tabDec) != tabHex {
		t.Fatalf("hexID(%s) = %s", tabDec, hexID(tabDec))
	}
	for in, want := range map[string]string{"0": "0x0", "7": "0x7", "0x00Ff": "0xff", "0x7": "0x7", "": "", "-": "-", "12x": "12x", "0xzz": "0xzz", "-5": "-5"} {
		if got := hexID(in); got != want {
			t.Errorf("hexID(%q) = %q, want %q", in, got, want)
		}
	}
	out, _, code := ctl("ledger", "records", "--socket", f.sock)
	if code != 0 || !strings.Contains(out, " "+tabHex+" ") || !strings.Contains(out, " 0xff ") || strings.Contains(out, tabDec) || !strings.Contains(out, " 12 ") {
		t.Fatalf("records:\n%s", out)
	}
	if out, _, _ := ctl("ledger", "records", "--json", "--socket", f.sock); strings.TrimSpace(out) != records {
		t.Fatalf("records --json changed: %s", out)
	}
	out, _, code = ctl("approvals", "list", "--socket", f.sock)
	if code != 0 || !strings.Contains(out, "tab_id=0x7 req_id=15") {
		t.Fatalf("approvals list:\n%s", out)
	}
	out, _, code = ctl("approvals", "show", "apr_1", "--socket", f.sock)
	if code != 0 || !strings.Contains(out, tabHex) || strings.Contains(out, tabDec) || !strings.Contains(out, "15") {
		t.Fatalf("approvals show:\n%s", out)
	}
}

// TestReloadPolicyWarnings: reload-policy prints the daemon's warnings (e.g. an approval
// whose group no operator belongs to) after the reloaded line; status shows the policy in
// force's warnings; --json stays the daemon's answer.
func TestReloadPolicyWarnings(t *testing.T) {
	const w1 = `approval \"treasury-hold\": no operator is in group \"treasury\", so the requests it holds can never be approved and will expire (operators' groups: finance)`
	withWarnings := `{"hash":"0xbb","previous":"0xaa","path":"/etc/signerd/policy.yaml","agents":["bot"],"changed":true,"warnings":["` + w1 + `"]}`
	var answer func(http.ResponseWriter, string)
	f := newFake(t, map[string]func(http.ResponseWriter, string){
		"POST /v1/admin/policy/reload": func(w http.ResponseWriter, b string) { answer(w, b) },
		"GET /v1/admin/status":         reply(200, `{"ready":true,"kill_switch":{"engaged":false},"policy":{"hash":"0xbb","path":"/etc/signerd/policy.yaml","warnings":["`+w1+`"]}}`),
	})
	answer = reply(200, withWarnings)
	out, errs, code := ctl("reload-policy", "--socket", f.sock)
	want := "policy reloaded from /etc/signerd/policy.yaml: 0xbb (was 0xaa)\n" +
		`warning: approval "treasury-hold": no operator is in group "treasury", so the requests it holds can never be approved and will expire (operators' groups: finance)` + "\n"
	if code != 0 || out != want {
		t.Fatalf("reload with warnings: %d\n%s%s\nwant:\n%s", code, out, errs, want)
	}
	if out, _, _ := ctl("reload-policy", "--json", "--socket", f.sock); strings.TrimSpace(out) != withWarnings {
		t.Fatalf("reload --json changed: %s", out)
	}
	answer = reply(200, `{"hash":"0xbb","previous":"0xbb","path":"/p.yaml","changed":false}`)
	if out, _, code := ctl("reload-policy", "--socket", f.sock); code != 0 || out != "policy reloaded from /p.yaml: unchanged (0xbb)\n" {
		t.Fatalf("reload without warnings: %d %q", code, out)
	}
	answer = reply(422, `{"error":{"code":"policy_invalid","reason":"policy rejected"}}`)
	if _, errs, code := ctl("reload-policy", "--socket", f.sock); code != exitRefused || !strings.Contains(errs, "policy_invalid") || !strings.Contains(errs, "previous policy stays in force") {
		t.Fatalf("rejected reload: %d %s", code, errs)
	}
	out, _, code = ctl("status", "--socket", f.sock)
	if code != 0 || !strings.Contains(out, `policy warning  approval "treasury-hold": no operator is in group "treasury"`) {
		t.Fatalf("status policy warnings:\n%s", out)
	}
}

// TestMain runs a real daemon instead of the tests when re-executed by startRealDaemon (a
// separate process: SoftHSM2 is initialised once per process, with one configuration, and the
// keys tests use another).
func TestMain(m *testing.M) {
	if dir := os.Getenv("SIGNERD_CTL_TEST_DAEMON"); dir != "" {
		os.Exit(daemonMain(dir))
	}
	os.Exit(m.Run())
}

// daemonMain serves a daemon from dir (made by startRealDaemon) until stdin closes. Its clock
// is the real time plus the offset in dir/offset (nanoseconds; absent means 0).
func daemonMain(dir string) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "daemon:", err); return 1 }
	env, err := softhsmtest.Prepare(filepath.Join(dir, "hsm"), "ctl")
	if err != nil {
		return fail(err)
	}
	cfg := &config.Config{
		StateDir: filepath.Join(dir, "state"),
		Sockets: config.Sockets{
			Agent: config.Socket{Path: filepath.Join(dir, "agent.sock"), Mode: 0o660},
			Admin: config.Socket{Path: filepath.Join(dir, "admin.sock"), Mode: 0o600},
		},
		HSM:       env.Options("ctl"),
		Policy:    filepath.Join(dir, "policy.yaml"),
		Protocol:  config.Protocol{Network: "eip155:84532", EIP712Name: "4mica", EIP712Version: "1", ChainID: 84532},
		Operators: []config.Operator{{Name: "alice", UID: uint32(os.Getuid())}},
	}
	cfg.Defaults()
	ctx := context.Background()
	b, err := hsm.Open(ctx, cfg.HSM)
	if err != nil {
		return fail(err)
	}
	if _, err := b.Generate(ctx, hsm.GenerateOptions{Label: "w"}); err != nil {
		return fail(err)
	}
	clock := func() time.Time {
		v, _ := os.ReadFile(filepath.Join(dir, "offset"))
		n, _ := strconv.ParseInt(string(v), 10, 64)
		return time.Now().Add(time.Duration(n))
	}
	d, err := server.Open(ctx, server.Options{Config: cfg, Backend: b, Clock: clock,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return fail(err)
	}
	d.Start()
	fmt.Println("ready", d.Wallets()[0])
	_, _ = io.Copy(io.Discard, os.Stdin)
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Shutdown(sctx); err != nil {
		return fail(err)
	}
	return 0
}

// realDaemon is a signerd process on a SoftHSM2 token in a temp dir, with a clock the test
// can move (an offset from the real time).
type realDaemon struct {
	dir    string
	admin  string // admin socket
	agent  *http.Client
	wallet string
}

func (rd *realDaemon) setOffset(t *testing.T, d time.Duration) {
	if err := os.WriteFile(filepath.Join(rd.dir, "offset"), []byte(strconv.FormatInt(int64(d), 10)), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (rd *realDaemon) offset() time.Duration {
	v, _ := os.ReadFile(filepath.Join(rd.dir, "offset"))
	n, _ := strconv.ParseInt(string(v), 10, 64)
	return time.Duration(n)
}

func startRealDaemon(t *testing.T) *realDaemon {
	t.Helper()
	dir, err := os.MkdirTemp("", "ctld") // short: Unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	pol, err := os.ReadFile("../../signerd/server/testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), pol, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "SIGNERD_CTL_TEST_DAEMON="+dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("daemon exit: %v\n%s", err, stderr.String())
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	wallet, ok := strings.CutPrefix(strings.TrimSpace(line), "ready ")
	if err != nil || !ok {
		t.Fatalf("daemon did not start: %q %v\n%s", line, err, stderr.String())
	}
	rd := &realDaemon{dir: dir, admin: filepath.Join(dir, "admin.sock"), wallet: strings.ToLower(wallet)}
	rd.agent = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", filepath.Join(dir, "agent.sock"))
	}}}
	return rd
}

// records counts the daemon's payment records (signerctl ledger records --json).
func (rd *realDaemon) records(t *testing.T) int {
	t.Helper()
	out, errs, code := ctl("ledger", "records", "--limit", "100", "--json", "--socket", rd.admin)
	var v struct {
		Records []json.RawMessage `json:"records"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil {
		t.Fatalf("ledger records: %d %s %s", code, out, errs)
	}
	return len(v.Records)
}

// sign asks for one guarantee and fails the test unless it is signed.
func (rd *realDaemon) sign(t *testing.T, tab, req uint64) {
	t.Helper()
	claims := map[string]any{"version": "v1", "user_address": rd.wallet,
		"recipient_address": "0x1234567890123456789012345678901234567890",
		"tab_id":            fmt.Sprintf("0x%x", tab), "req_id": fmt.Sprint(req), "amount": "5",
		"asset_address": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
		"timestamp":     time.Now().Add(rd.offset()).Unix()}
	b, _ := json.Marshal(map[string]any{"claims": claims})
	resp, err := rd.agent.Post("http://signerd/v1/guarantees", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("sign %d/%d: %d %s", tab, req, resp.StatusCode, body)
	}
}

type failingFile struct{ n int }

func (f *failingFile) Write(p []byte) (int, error) {
	if f.n += len(p); f.n > 200 {
		return 0, errors.New("no space left on device")
	}
	return len(p), nil
}

// TestLedgerPruneCLI runs signerctl ledger prune and audit verify --archive against a real
// daemon: a failed archive write prunes nothing; an existing archive is never overwritten; the
// real run archives then prunes; the archive verifies and joins the live chain; anchors in the
// pruned part are checked against the archive (and a wrong one fails); an altered archive is
// refused; a second run has nothing to prune.
func TestLedgerPruneCLI(t *testing.T) {
	rd := startRealDaemon(t)
	for req := uint64(1); req <= 3; req++ {
		rd.sign(t, 1, req)
	}
	start := time.Now()
	rd.setOffset(t, 48*time.Hour)
	rd.sign(t, 2, 1)
	dir := t.TempDir()
	archive := filepath.Join(dir, "a1.jsonl")
	before := start.Add(time.Minute).UTC().Format(time.RFC3339Nano)
	sock := []string{"--socket", rd.admin}
	verifyOut := func(args ...string) (string, int) {
		out, errs, code := ctl(append(append([]string{"audit", "verify"}, sock...), args...)...)
		return out + errs, code
	}

	// The archive cannot be written: nothing pruned, no file left.
	archiveWriter = func(f *os.File) io.Writer { return &failingFile{} }
	out, errs, code := ctl(append([]string{"ledger", "prune", "--before", before, "--archive", archive}, sock...)...)
	archiveWriter = func(f *os.File) io.Writer { return f }
	if code != exitRefused || !strings.Contains(errs, "nothing pruned") {
		t.Fatalf("failing write: %d %s %s", code, out, errs)
	}
	if _, err := os.Stat(archive); err == nil {
		t.Fatal("archive left after a failed write")
	}
	if _, err := os.Stat(archive + ".partial"); err == nil {
		t.Fatal("partial archive left after a failed write")
	}
	if out, code := verifyOut(); code != 0 || strings.Contains(out, "pruned") {
		t.Fatalf("after a failed prune: %d %s", code, out)
	}
	if n := rd.records(t); n != 4 {
		t.Fatalf("%d records after a failed prune", n)
	}
	// Too recent for the daemon's clock (48 h ahead): refused; nothing written.
	recent := time.Now().Add(47 * time.Hour).UTC().Format(time.RFC3339)
	if _, errs, code := ctl(append([]string{"ledger", "prune", "--before", recent, "--archive", archive}, sock...)...); code != exitRefused || !strings.Contains(errs, "invalid_request") {
		t.Fatalf("too recent: %d %s", code, errs)
	}

	out, errs, code = ctl(append([]string{"ledger", "prune", "--before", before, "--archive", archive}, sock...)...)
	if code != 0 || !strings.Contains(out, "archived and pruned") || !strings.Contains(out, "3 payment records") {
		t.Fatalf("prune: %d %s %s", code, out, errs)
	}
	if st, err := os.Stat(archive); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("archive: %v %v", st, err)
	}
	if n := rd.records(t); n != 1 {
		t.Fatalf("%d records after prune, want 1", n)
	}
	// Never overwrite an archive.
	if _, errs, code := ctl(append([]string{"ledger", "prune", "--before", before, "--archive", archive}, sock...)...); code != exitUsage || !strings.Contains(errs, "never overwritten") {
		t.Fatalf("existing archive: %d %s", code, errs)
	}

	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	sum, err := ledger.VerifyArchive(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	seq2 := sum.Hashes[1].String()
	wrong := sum.Hashes[1]
	wrong.Hash[5] ^= 1
	if out, code := verifyOut(); code != 0 || !strings.Contains(out, fmt.Sprintf("records 1..%d were pruned", sum.Through.Seq)) {
		t.Fatalf("verify after prune: %d %s", code, out)
	}
	if out, code := verifyOut("--anchor", seq2); code != 0 || !strings.Contains(out, "NOT checked") {
		t.Fatalf("pruned anchor without archive: %d %s", code, out)
	}
	if out, code := verifyOut("--anchor", seq2, "--archive", archive); code != 0 || !strings.Contains(out, "archives OK") || !strings.Contains(out, "anchors OK: all 1 match") {
		t.Fatalf("pruned anchor with archive: %d %s", code, out)
	}
	if out, code := verifyOut("--anchor", wrong.String(), "--archive", archive); code != exitRefused || !strings.Contains(out, "MISMATCH") {
		t.Fatalf("wrong pruned anchor with archive: %d %s", code, out)
	}
	// Offline too (daemon's file is locked, so check a copy).
	raw, _ := os.ReadFile(archive)
	bad := filepath.Join(dir, "bad.jsonl")
	os.WriteFile(bad, bytes.Replace(raw, []byte(`"req_id":"2"`), []byte(`"req_id":"7"`), 1), 0o600)
	if out, code := verifyOut("--archive", bad); code != exitRefused || !strings.Contains(out, "archive BROKEN") {
		t.Fatalf("altered archive: %d %s", code, out)
	}

	// Twice: nothing to prune, no file written.
	a2 := filepath.Join(dir, "a2.jsonl")
	if out, errs, code := ctl(append([]string{"ledger", "prune", "--before", before, "--archive", a2}, sock...)...); code != 0 || !strings.Contains(out, "nothing to prune") {
		t.Fatalf("second prune: %d %s %s", code, out, errs)
	}
	if _, err := os.Stat(a2); err == nil {
		t.Fatal("second prune wrote an archive")
	}
}

func TestParseBefore(t *testing.T) {
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]string{
		"90d": "2026-08-23T12:00:00Z", "36h": "2026-11-20T00:00:00Z",
		"2026-01-02T03:04:05Z": "2026-01-02T03:04:05Z", "2026-01-02T05:04:05+02:00": "2026-01-02T03:04:05Z",
	} {
		got, err := parseBefore(in, now)
		if err != nil || got.UTC().Format(time.RFC3339) != want {
			t.Errorf("%s: %v %v, want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0d", "-3h", "yesterday", "12", "2026-01-02", "200000d", "9999999999d"} {
		if _, err := parseBefore(bad, now); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// dropPruneAnswerProxy serves a Unix socket in front of the daemon's admin socket: every
// request is forwarded, but the answer to POST /v1/admin/ledger/prune is dropped (the
// connection closed after the daemon answered), as a CLI killed or a connection lost at that
// moment would see it.
func dropPruneAnswerProxy(t *testing.T, admin string) string {
	t.Helper()
	sock := filepath.Join(filepath.Dir(admin), "proxy.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	up := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", admin)
	}}}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequestWithContext(context.Background(), r.Method, "http://signerd"+r.URL.RequestURI(), r.Body)
		req.Header = r.Header.Clone()
		resp, err := up.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		if r.Method == "POST" && r.URL.Path == "/v1/admin/ledger/prune" {
			_, _ = io.Copy(io.Discard, resp.Body) // the daemon answered (and committed)
			c, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				c.Close()
			}
			return
		}
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

// TestLedgerPruneAnswerLost: the daemon prunes but its answer never reaches the CLI. The CLI
// used to print "the archive is complete but NOTHING was pruned" — an operator believing it
// could discard the only copy of what was deleted. Now it says the prune may have happened
// and to keep the archive, and audit verify --archive shows it did. Also: a directory fsync
// that fails (or a directory that cannot be opened, which was silently skipped) stops before
// anything is pruned.
func TestLedgerPruneAnswerLost(t *testing.T) {
	rd := startRealDaemon(t)
	for req := uint64(1); req <= 2; req++ {
		rd.sign(t, 1, req)
	}
	start := time.Now()
	rd.setOffset(t, 48*time.Hour)
	rd.sign(t, 2, 1)
	dir := t.TempDir()
	before := start.Add(time.Minute).UTC().Format(time.RFC3339Nano)

	archive := filepath.Join(dir, "nosync.jsonl")
	syncDir = func(string) error { return errors.New("injected EIO") }
	_, errs, code := ctl("ledger", "prune", "--before", before, "--archive", archive, "--socket", rd.admin)
	syncDir = syncDirReal
	if code != exitRefused || !strings.Contains(errs, "nothing pruned") {
		t.Fatalf("dir sync failure: %d %s", code, errs)
	}
	if n := rd.records(t); n != 3 {
		t.Fatalf("%d records after a failed dir sync", n)
	}

	archive = filepath.Join(dir, "lost.jsonl")
	proxy := dropPruneAnswerProxy(t, rd.admin)
	out, errs, code := ctl("ledger", "prune", "--before", before, "--archive", archive, "--socket", proxy)
	if code == 0 || strings.Contains(errs, "NOTHING was pruned") || !strings.Contains(errs, "MAY HAVE HAPPENED") || !strings.Contains(errs, "KEEP the archive") {
		t.Fatalf("answer lost: %d %s %s", code, out, errs)
	}
	if n := rd.records(t); n != 1 {
		t.Fatalf("%d records: the daemon should have pruned 2", n)
	}
	if _, err := os.Stat(archive); err != nil {
		t.Fatal(err)
	}
	if out, errs, code := ctl("audit", "verify", "--archive", archive, "--socket", rd.admin); code != 0 || !strings.Contains(out, "joins the live chain") {
		t.Fatalf("verify the kept archive: %d %s %s", code, out, errs)
	}
}

var syncDirReal = syncDir

// forgeArchive alters the first payment record of an archive (one hex digit of its signature)
// and reseals it as anyone knowing the format can: the plan (docs/ledger.md: SHA-256 over
// "signerd-prune-v2\0", before, from/through seq, count, from/through hash, then each id and
// the SHA-256 of its record JSON) and the SHA-256 recomputed.
func forgeArchive(t *testing.T, raw []byte) []byte {
	t.Helper()
	lines := strings.SplitAfter(string(raw), "\n")
	lines = lines[:len(lines)-1]
	var hdr struct {
		Before      string `json:"before"`
		FromSeq     uint64 `json:"from_seq"`
		FromHash    string `json:"from_hash"`
		ThroughSeq  uint64 `json:"through_seq"`
		ThroughHash string `json:"through_hash"`
	}
	if err := json.Unmarshal([]byte(lines[0]), &hdr); err != nil {
		t.Fatal(err)
	}
	const prefix = `{"type":"payment_record","record":`
	var recs [][]byte
	altered := false
	for i, l := range lines[:len(lines)-1] {
		if !strings.HasPrefix(l, prefix) {
			continue
		}
		if !altered {
			j := strings.Index(l, `"signature":"0x`) + len(`"signature":"0x`)
			c := byte('a')
			if l[j] == 'a' {
				c = 'b'
			}
			l = l[:j] + string(c) + l[j+1:]
			lines[i], altered = l, true
		}
		recs = append(recs, []byte(strings.TrimSuffix(strings.TrimPrefix(l, prefix), "}\n")))
	}
	if !altered {
		t.Fatal("no payment record to forge")
	}
	before, _ := time.Parse(time.RFC3339Nano, hdr.Before)
	h := sha256.New()
	h.Write([]byte("signerd-prune-v2\x00"))
	for _, v := range []uint64{uint64(before.UnixNano()), hdr.FromSeq, hdr.ThroughSeq, uint64(len(recs))} {
		h.Write(binary.BigEndian.AppendUint64(nil, v))
	}
	for _, s := range []string{hdr.FromHash, hdr.ThroughHash} {
		b, _ := hex.DecodeString(strings.TrimPrefix(s, "0x"))
		h.Write(b)
	}
	for _, r := range recs {
		var id struct {
			ID string `json:"record_id"`
		}
		n, err := uint64(0), json.Unmarshal(r, &id)
		if err == nil {
			n, err = strconv.ParseUint(id.ID, 10, 64)
		}
		if err != nil {
			t.Fatal(err)
		}
		h.Write(binary.BigEndian.AppendUint64(nil, n))
		s := sha256.Sum256(r)
		h.Write(s[:])
	}
	body := strings.Join(lines[:len(lines)-1], "")
	var tr map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &tr); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(body))
	tr["plan"] = "0x" + hex.EncodeToString(h.Sum(nil))
	tr["sha256"] = "0x" + hex.EncodeToString(sum[:])
	tb, _ := json.Marshal(map[string]any{"type": "end", "plan": tr["plan"], "sha256": tr["sha256"],
		"audit_records": tr["audit_records"], "payment_records": tr["payment_records"]})
	return []byte(body + string(tb) + "\n")
}

// TestArchiveForgedPaymentRecord: an archive whose payment record was altered and resealed
// (plan and SHA-256 recomputed) is internally consistent — VerifyArchive cannot tell — and its
// audit part still ends at the live checkpoint. audit verify --archive used to say "archives
// OK"; now it also requires the retention record of the prune to name the archive's plan and
// SHA-256, so the forgery is refused (and the genuine archive still passes).
func TestArchiveForgedPaymentRecord(t *testing.T) {
	rd := startRealDaemon(t)
	rd.sign(t, 1, 1)
	rd.sign(t, 1, 2)
	start := time.Now()
	rd.setOffset(t, 48*time.Hour)
	rd.sign(t, 2, 1)
	dir := t.TempDir()
	archive := filepath.Join(dir, "a.jsonl")
	before := start.Add(time.Minute).UTC().Format(time.RFC3339Nano)
	if out, errs, code := ctl("ledger", "prune", "--before", before, "--archive", archive, "--socket", rd.admin); code != 0 {
		t.Fatalf("prune: %d %s %s", code, out, errs)
	}
	raw, err := os.ReadFile(archive)
	if err != nil {
		t.Fatal(err)
	}
	forged := filepath.Join(dir, "forged.jsonl")
	if err := os.WriteFile(forged, forgeArchive(t, raw), 0o600); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(forged)
	fs, err := ledger.VerifyArchive(f)
	f.Close()
	if err != nil || fs.PaymentRecords != 2 {
		t.Fatalf("the forgery should be internally consistent: %+v %v", fs, err)
	}
	if out, errs, code := ctl("audit", "verify", "--archive", forged, "--socket", rd.admin); code != exitRefused || !strings.Contains(out, "no retention record names this archive") {
		t.Fatalf("forged archive: %d %s %s", code, out, errs)
	}
	if out, errs, code := ctl("audit", "verify", "--archive", archive, "--socket", rd.admin); code != 0 || !strings.Contains(out, "archives OK") {
		t.Fatalf("genuine archive: %d %s %s", code, out, errs)
	}
}
