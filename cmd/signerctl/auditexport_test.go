package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAuditExportAfterPrune: after a prune, `audit export --from N` with N at or before the
// checkpoint writes the kept records unchanged (JSON lines from checkpoint + 1) and says on
// stderr that records 1..checkpoint were pruned and archived, naming the checkpoint; the admin
// endpoint sets X-Audit-Pruned-Through / X-Audit-Checkpoint-Hash. From after the checkpoint:
// no note, no headers.
func TestAuditExportAfterPrune(t *testing.T) {
	rd := startRealDaemon(t)
	for req := uint64(1); req <= 3; req++ {
		rd.sign(t, 1, req)
	}
	start := time.Now()
	rd.setOffset(t, 48*time.Hour)
	rd.sign(t, 2, 1)
	sock := []string{"--socket", rd.admin}
	// Before any prune: no note.
	if _, errs, code := ctl(append([]string{"audit", "export", "--from", "1"}, sock...)...); code != 0 || strings.Contains(errs, "pruned") {
		t.Fatalf("export before prune: %d %s", code, errs)
	}
	archive := filepath.Join(t.TempDir(), "a.jsonl")
	before := start.Add(time.Minute).UTC().Format(time.RFC3339Nano)
	if out, errs, code := ctl(append([]string{"ledger", "prune", "--before", before, "--archive", archive}, sock...)...); code != 0 {
		t.Fatalf("prune: %d %s %s", code, out, errs)
	}

	type line struct {
		Seq  uint64 `json:"seq"`
		Prev string `json:"prev"`
	}
	parse := func(out string) []line {
		var ls []line
		for _, s := range strings.Split(strings.TrimSpace(out), "\n") {
			var l line
			if err := json.Unmarshal([]byte(s), &l); err != nil || l.Seq == 0 {
				t.Fatalf("export line %q: %v", s, err)
			}
			ls = append(ls, l)
		}
		return ls
	}
	out, errs, code := ctl(append([]string{"audit", "export", "--from", "2"}, sock...)...)
	if code != 0 {
		t.Fatalf("export --from 2: %d %s", code, errs)
	}
	ls := parse(out)
	cpSeq := ls[0].Seq - 1
	if cpSeq < 2 {
		t.Fatalf("first exported seq %d: nothing pruned before it", ls[0].Seq)
	}
	want := fmt.Sprintf("audit records 1..%d were pruned by retention and archived (checkpoint seq %d hash %s); this export starts at seq %d, not 2",
		cpSeq, cpSeq, ls[0].Prev, cpSeq+1)
	if !strings.Contains(errs, want) || strings.Contains(out, "note") {
		t.Fatalf("export --from 2 after prune: stderr %q, want %q", errs, want)
	}
	// Default (from 0 = all) says it too; from after the checkpoint does not.
	if _, errs, _ := ctl(append([]string{"audit", "export"}, sock...)...); !strings.Contains(errs, fmt.Sprintf("records 1..%d were pruned", cpSeq)) {
		t.Fatalf("export after prune: stderr %q", errs)
	}
	out2, errs, code := ctl(append([]string{"audit", "export", "--from", fmt.Sprint(cpSeq + 1)}, sock...)...)
	if code != 0 || strings.Contains(errs, "pruned") || out2 != out {
		t.Fatalf("export from the first kept record: %d %q (same lines: %v)", code, errs, out2 == out)
	}

	// The endpoint's headers.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", rd.admin)
	}}}
	for _, tc := range []struct {
		from   uint64
		pruned bool
	}{{0, true}, {cpSeq, true}, {cpSeq + 1, false}} {
		resp, err := hc.Get(fmt.Sprintf("http://signerd/v1/admin/audit/export?from=%d", tc.from))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		through, hash := resp.Header.Get("X-Audit-Pruned-Through"), resp.Header.Get("X-Audit-Checkpoint-Hash")
		if tc.pruned && (through != fmt.Sprint(cpSeq) || hash != ls[0].Prev) || !tc.pruned && (through != "" || hash != "") || resp.StatusCode != 200 {
			t.Fatalf("from %d: %d through %q hash %q (checkpoint %d %s)", tc.from, resp.StatusCode, through, hash, cpSeq, ls[0].Prev)
		}
	}
}

// TestPrunedNote: the note is given only when the first exported record comes after the one
// asked for (the --db path uses the same check).
func TestPrunedNote(t *testing.T) {
	first := []byte(`{"seq":42,"time":"x","hash":"0x01","prev":"0xabc","kind":"decision"}`)
	for _, tc := range []struct {
		from  uint64
		first []byte
		want  string
	}{
		{0, first, "audit records 1..41 were pruned by retention and archived (checkpoint seq 41 hash 0xabc); this export starts at seq 42, not 1"},
		{41, first, "records 1..41 were pruned"},
		{42, first, ""},
		{43, first, ""}, // cannot happen (seqs have no gaps); no note
		{0, []byte(`{"seq":1,"prev":"0x00"}`), ""},
		{5, nil, ""}, // nothing exported (from after the head)
		{5, []byte("not json"), ""},
	} {
		got := prunedNote(tc.from, tc.first)
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("from %d: %q, want %q", tc.from, got, tc.want)
		}
	}
}
