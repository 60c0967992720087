package main

// Admin commands: they talk to a running daemon over its admin socket (--socket PATH, default
// $SIGNERD_ADMIN_SOCKET or /run/signerd/admin.sock). Every command prints a short human summary,
// or the daemon's JSON with --json. A refusal by the daemon exits 1 and prints its error code
// and reason; a usage error exits 2; a daemon that cannot be reached exits 3.

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/signerd/signerd/signerd/bucketstore"

	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/client"
	"github.com/signerd/signerd/signerd/ledger"
)

// Exit codes of the admin commands.
const (
	exitOK          = 0
	exitRefused     = 1 // the daemon answered with an error, or audit verify found corruption
	exitUsage       = 2
	exitUnreachable = 3
)

func init() {
	register("stop", "engage the kill switch of a running daemon (stop --reason R)", cmdStop)
	register("resume", "release the kill switch (a second operator may have to confirm)", cmdResume)
	register("status", "show a running daemon's status", cmdStatus)
	register("reload-policy", "reload the policy of a running daemon (atomic; a bad policy is refused)", cmdReloadPolicy)
	register("approvals", "list, show, approve or deny held requests", cmdApprovals)
	register("audit", "verify, export or anchor the audit log (audit verify|export|head)", cmdAudit)
	register("ledger", "query budget spend and payment records, archive and prune old history (ledger spend|records|prune)", cmdLedger)
}

// adminFlags are the flags every admin command takes.
type adminFlags struct {
	fs     *flag.FlagSet
	socket *string
	json   *bool
}

func newAdminFlags(name string, stderr io.Writer) *adminFlags {
	fs := flag.NewFlagSet("signerctl "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return &adminFlags{fs: fs,
		socket: fs.String("socket", "", "admin socket path (default $SIGNERD_ADMIN_SOCKET or "+defaultAdminSocket+")"),
		json:   fs.Bool("json", false, "print the daemon's answer as JSON"),
	}
}

// parse parses flags that may appear before or after positional arguments.
func (a *adminFlags) parse(args []string) ([]string, error) {
	var pos []string
	for {
		if err := a.fs.Parse(args); err != nil {
			return nil, err
		}
		rest := a.fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func (a *adminFlags) client() *client.Client { return client.New(adminSocket(*a.socket)) }

// fail prints err and returns the exit code for it.
func (a *adminFlags) fail(err error, stdout, stderr io.Writer) int {
	var ae *client.Error
	if errors.As(err, &ae) {
		if *a.json {
			b, _ := json.Marshal(map[string]any{"error": ae, "status": ae.Status})
			fmt.Fprintln(stdout, string(b))
		}
		fmt.Fprintf(stderr, "signerctl: refused by signerd (HTTP %d): %s\n", ae.Status, ae.Error())
		return exitRefused
	}
	fmt.Fprintf(stderr, "signerctl: %v\n", err)
	if errors.Is(err, client.ErrUnreachable) {
		return exitUnreachable
	}
	return exitRefused
}

func printJSON(w io.Writer, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		fmt.Fprintf(w, "%v\n", v)
		return
	}
	fmt.Fprintln(w, string(b))
}

// ---- kill switch ----

type pendingResume struct {
	By        string    `json:"by"`
	At        time.Time `json:"at"`
	ExpiresAt time.Time `json:"expires_at"`
}

type ksStatus struct {
	Engaged               bool           `json:"engaged"`
	Reason                string         `json:"reason"`
	By                    string         `json:"by"`
	Since                 time.Time      `json:"since"`
	PendingResume         *pendingResume `json:"pending_resume"`
	RequireSecondOperator bool           `json:"require_second_operator"`
	Inflight              int64          `json:"inflight"`
}

func (s ksStatus) line() string {
	if !s.Engaged {
		return "released (signing allowed)"
	}
	l := fmt.Sprintf("ENGAGED since %s by %s: %s", fmtTime(s.Since), s.By, s.Reason)
	if p := s.PendingResume; p != nil {
		l += fmt.Sprintf("; resume asked by %s, waiting for a second operator until %s", p.By, fmtTime(p.ExpiresAt))
	}
	return l
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func cmdStop(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	a := newAdminFlags("stop", stderr)
	reason := a.fs.String("reason", "", "why signing is stopped (required; recorded in the audit log)")
	if pos, err := a.parse(args); err != nil || len(pos) != 0 {
		fmt.Fprintln(stderr, "usage: signerctl stop --reason REASON [--socket PATH] [--json]")
		return exitUsage
	}
	if strings.TrimSpace(*reason) == "" {
		fmt.Fprintln(stderr, "signerctl stop: --reason is required")
		return exitUsage
	}
	var out struct {
		Status ksStatus `json:"status"`
	}
	var raw json.RawMessage
	if err := a.client().Do("POST", "/v1/admin/kill-switch", map[string]any{"engaged": true, "reason": *reason}, &raw); err != nil {
		return a.fail(err, stdout, stderr)
	}
	if *a.json {
		fmt.Fprintln(stdout, string(raw))
		return exitOK
	}
	_ = json.Unmarshal(raw, &out)
	fmt.Fprintf(stdout, "kill switch %s\nno signature leaves signerd until it is resumed (signerctl resume)\n", out.Status.line())
	return exitOK
}

func cmdResume(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	a := newAdminFlags("resume", stderr)
	if pos, err := a.parse(args); err != nil || len(pos) != 0 {
		fmt.Fprintln(stderr, "usage: signerctl resume [--socket PATH] [--json]")
		return exitUsage
	}
	var raw json.RawMessage
	if err := a.client().Do("POST", "/v1/admin/kill-switch", map[string]any{"engaged": false}, &raw); err != nil {
		return a.fail(err, stdout, stderr)
	}
	if *a.json {
		fmt.Fprintln(stdout, string(raw))
		return exitOK
	}
	var out struct {
		Status ksStatus `json:"status"`
		Resume struct {
			Resumed bool           `json:"resumed"`
			Pending *pendingResume `json:"pending"`
		} `json:"resume"`
	}
	_ = json.Unmarshal(raw, &out)
	switch {
	case out.Resume.Resumed:
		fmt.Fprintln(stdout, "kill switch released: signing resumed")
	case out.Resume.Pending != nil:
		p := out.Resume.Pending
		fmt.Fprintf(stdout, "resume requested by %s; a second, different operator must run `signerctl resume` before %s\n", p.By, fmtTime(p.ExpiresAt))
	default:
		fmt.Fprintf(stdout, "kill switch %s\n", out.Status.line())
	}
	return exitOK
}

// ---- status ----

func cmdStatus(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	a := newAdminFlags("status", stderr)
	if pos, err := a.parse(args); err != nil || len(pos) != 0 {
		fmt.Fprintln(stderr, "usage: signerctl status [--socket PATH] [--json]")
		return exitUsage
	}
	var raw json.RawMessage
	if err := a.client().Do("GET", "/v1/admin/status", nil, &raw); err != nil {
		return a.fail(err, stdout, stderr)
	}
	if *a.json {
		fmt.Fprintln(stdout, string(raw))
		return exitOK
	}
	var st struct {
		Ready      bool           `json:"ready"`
		Readiness  map[string]any `json:"readiness"`
		KillSwitch ksStatus       `json:"kill_switch"`
		Policy     struct {
			Hash     string    `json:"hash"`
			Path     string    `json:"path"`
			LoadedAt time.Time `json:"loaded_at"`
			Warnings []string  `json:"warnings"`
		} `json:"policy"`
		Network string `json:"network"`
		Domain  struct {
			Name    string `json:"name"`
			Version string `json:"version"`
			ChainID uint64 `json:"chain_id"`
		} `json:"domain"`
		Wallets []string `json:"wallets"`
		Ledger  struct {
			Path   string `json:"path"`
			Groups uint64 `json:"groups"`
			Ops    uint64 `json:"ops"`
		} `json:"ledger"`
		Approvals struct {
			Pending int `json:"pending"`
		} `json:"approvals"`
		Inflight int    `json:"inflight"`
		Uptime   string `json:"uptime"`
		PID      int    `json:"pid"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		fmt.Fprintf(stderr, "signerctl: decoding status: %v\n", err)
		return exitRefused
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	if st.Ready {
		fmt.Fprintln(tw, "ready\tyes")
	} else {
		for _, l := range notReadyLines(st.Readiness) {
			fmt.Fprintf(tw, "ready\tNO: %s\n", l)
		}
	}
	fmt.Fprintf(tw, "kill switch\t%s\n", st.KillSwitch.line())
	fmt.Fprintf(tw, "policy\t%s (%s, loaded %s)\n", st.Policy.Hash, st.Policy.Path, fmtTime(st.Policy.LoadedAt))
	for _, w := range st.Policy.Warnings {
		fmt.Fprintf(tw, "policy warning\t%s\n", w)
	}
	fmt.Fprintf(tw, "network\t%s, EIP-712 domain %q version %q chain %d\n", st.Network, st.Domain.Name, st.Domain.Version, st.Domain.ChainID)
	fmt.Fprintf(tw, "wallets\t%s\n", strings.Join(st.Wallets, ", "))
	fmt.Fprintf(tw, "ledger\t%s (%d ops in %d commits)\n", st.Ledger.Path, st.Ledger.Ops, st.Ledger.Groups)
	fmt.Fprintf(tw, "approvals\t%d pending\n", st.Approvals.Pending)
	fmt.Fprintf(tw, "in flight\t%d\n", st.Inflight)
	fmt.Fprintf(tw, "daemon\tpid %d, up %s\n", st.PID, st.Uptime)
	tw.Flush()
	return exitOK
}

// notReadyLines turns the readiness report into one "component: reason" line per failing
// component (an object with "ok": false), in name order; the daemon reports e.g.
// {"backend":{"ok":false,"reason":"..."},"store":{"ok":true},"wallets":1}.
func notReadyLines(rd map[string]any) []string {
	names := make([]string, 0, len(rd))
	for n := range rd {
		names = append(names, n)
	}
	sort.Strings(names)
	var lines []string
	for _, n := range names {
		c, ok := rd[n].(map[string]any)
		if !ok || c["ok"] != false {
			continue
		}
		reason, _ := c["reason"].(string)
		if strings.TrimSpace(reason) == "" {
			reason = "not ready (no reason given)"
		}
		lines = append(lines, n+": "+reason)
	}
	if len(lines) == 0 {
		lines = []string{"no component reported a reason (see signerctl status --json)"}
	}
	return lines
}

// ---- policy reload ----

func cmdReloadPolicy(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	a := newAdminFlags("reload-policy", stderr)
	if pos, err := a.parse(args); err != nil || len(pos) != 0 {
		fmt.Fprintln(stderr, "usage: signerctl reload-policy [--socket PATH] [--json]")
		return exitUsage
	}
	var raw json.RawMessage
	if err := a.client().Do("POST", "/v1/admin/policy/reload", map[string]any{}, &raw); err != nil {
		code := a.fail(err, stdout, stderr)
		if code == exitRefused {
			fmt.Fprintln(stderr, "the previous policy stays in force")
		}
		return code
	}
	if *a.json {
		fmt.Fprintln(stdout, string(raw))
		return exitOK
	}
	var info struct {
		Hash     string   `json:"hash"`
		Previous string   `json:"previous"`
		Path     string   `json:"path"`
		Warnings []string `json:"warnings"`
	}
	_ = json.Unmarshal(raw, &info)
	if info.Previous != "" && info.Previous == info.Hash {
		fmt.Fprintf(stdout, "policy reloaded from %s: unchanged (%s)\n", info.Path, info.Hash)
	} else {
		fmt.Fprintf(stdout, "policy reloaded from %s: %s (was %s)\n", info.Path, info.Hash, orDash(info.Previous))
	}
	for _, w := range info.Warnings {
		fmt.Fprintf(stdout, "warning: %s\n", w)
	}
	return exitOK
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// ---- approvals ----

type approval struct {
	ID        string            `json:"id"`
	State     string            `json:"state"`
	Agent     string            `json:"agent"`
	Principal string            `json:"principal"`
	Wallet    string            `json:"wallet"`
	Rule      string            `json:"rule"`
	Group     string            `json:"group"`
	Summary   map[string]string `json:"summary"`
	CreatedAt time.Time         `json:"created_at"`
	ExpiresAt time.Time         `json:"expires_at"`
	DecidedAt time.Time         `json:"decided_at"`
	DecidedBy string            `json:"decided_by"`
	Reason    string            `json:"reason"`
}

func (p approval) summary() string {
	s := p.Summary
	parts := []string{}
	for _, k := range []string{"amount", "asset", "recipient", "tab_id", "req_id", "resource"} {
		if v := s[k]; v != "" {
			parts = append(parts, k+"="+summaryValue(k, v))
		}
	}
	return strings.Join(parts, " ")
}

// summaryValue formats an approval summary field for people: tab ids in 0x hex as claims,
// agents and Core show them; everything else (req ids included, which Core's SDKs send in
// decimal) as the daemon gave it.
func summaryValue(k, v string) string {
	if k == "tab_id" {
		return hexID(v)
	}
	return v
}

// hexID renders a decimal or 0x-hex integer as minimal 0x hex (the form claims, agents and
// Core use for tab ids); anything else is returned unchanged.
func hexID(v string) string {
	n, ok := new(big.Int), false
	if h, isHex := strings.CutPrefix(v, "0x"); isHex {
		_, ok = n.SetString(h, 16)
	} else {
		_, ok = n.SetString(v, 10)
	}
	if !ok || n.Sign() < 0 {
		return v
	}
	return "0x" + n.Text(16)
}

func cmdApprovals(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	usage := func() int {
		fmt.Fprintln(stderr, "usage: signerctl approvals list [--state pending|approved|denied|expired]\n"+
			"       signerctl approvals show ID\n"+
			"       signerctl approvals approve ID\n"+
			"       signerctl approvals deny ID --reason REASON\n"+
			"  common flags: [--socket PATH] [--json]")
		return exitUsage
	}
	if len(args) == 0 {
		return usage()
	}
	sub := args[0]
	a := newAdminFlags("approvals "+sub, stderr)
	var state, reason *string
	switch sub {
	case "list":
		state = a.fs.String("state", "", "only approvals in this state")
	case "deny":
		reason = a.fs.String("reason", "", "why (recorded in the audit log; the agent sees it)")
	case "show", "approve":
	default:
		return usage()
	}
	pos, err := a.parse(args[1:])
	if err != nil {
		return usage()
	}
	c := a.client()
	if sub == "list" {
		if len(pos) != 0 {
			return usage()
		}
		path := "/v1/admin/approvals"
		if *state != "" {
			path += "?state=" + url.QueryEscape(*state)
		}
		var raw json.RawMessage
		if err := c.Do("GET", path, nil, &raw); err != nil {
			return a.fail(err, stdout, stderr)
		}
		if *a.json {
			fmt.Fprintln(stdout, string(raw))
			return exitOK
		}
		var out struct {
			Approvals []approval `json:"approvals"`
		}
		if err := json.Unmarshal(raw, &out); err != nil {
			fmt.Fprintf(stderr, "signerctl: decoding approvals: %v\n", err)
			return exitRefused
		}
		if len(out.Approvals) == 0 {
			fmt.Fprintln(stdout, "no approvals")
			return exitOK
		}
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSTATE\tAGENT\tRULE\tGROUP\tEXPIRES\tREQUEST")
		for _, p := range out.Approvals {
			exp := fmtTime(p.ExpiresAt)
			if p.State != "pending" {
				exp = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.ID, p.State, p.Agent, p.Rule, orDash(p.Group), exp, p.summary())
		}
		tw.Flush()
		return exitOK
	}
	if len(pos) != 1 || strings.ContainsAny(pos[0], "/?#") {
		return usage()
	}
	id := pos[0]
	var raw json.RawMessage
	switch sub {
	case "show":
		err = c.Do("GET", "/v1/admin/approvals/"+url.PathEscape(id), nil, &raw)
	case "approve":
		err = c.Do("POST", "/v1/admin/approvals/"+url.PathEscape(id)+"/approve", map[string]any{}, &raw)
	case "deny":
		if strings.TrimSpace(*reason) == "" {
			fmt.Fprintln(stderr, "signerctl approvals deny: --reason is required")
			return exitUsage
		}
		err = c.Do("POST", "/v1/admin/approvals/"+url.PathEscape(id)+"/deny", map[string]any{"reason": *reason}, &raw)
	}
	if err != nil {
		return a.fail(err, stdout, stderr)
	}
	if *a.json {
		fmt.Fprintln(stdout, string(raw))
		return exitOK
	}
	var p approval
	_ = json.Unmarshal(raw, &p)
	switch sub {
	case "show":
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "id\t%s\nstate\t%s\nagent\t%s (%s)\nwallet\t%s\nrule\t%s\ngroup\t%s\ncreated\t%s\nexpires\t%s\n",
			p.ID, p.State, p.Agent, p.Principal, p.Wallet, p.Rule, orDash(p.Group), fmtTime(p.CreatedAt), fmtTime(p.ExpiresAt))
		if p.DecidedBy != "" {
			fmt.Fprintf(tw, "decided\t%s by %s\n", fmtTime(p.DecidedAt), p.DecidedBy)
		}
		if p.Reason != "" {
			fmt.Fprintf(tw, "reason\t%s\n", p.Reason)
		}
		keys := make([]string, 0, len(p.Summary))
		for k := range p.Summary {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if p.Summary[k] != "" {
				fmt.Fprintf(tw, "  %s\t%s\n", k, summaryValue(k, p.Summary[k]))
			}
		}
		tw.Flush()
	case "approve":
		fmt.Fprintf(stdout, "approved %s (agent %s, %s); the agent's next attempt proceeds\n", p.ID, p.Agent, p.summary())
	case "deny":
		fmt.Fprintf(stdout, "denied %s (agent %s): %s\n", p.ID, p.Agent, p.Reason)
	}
	return exitOK
}

// ---- audit ----

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// anchorBatch is how many anchors one verify request carries (a JSON body well under the
// daemon's default 64 KiB body limit).
const anchorBatch = 512

func cmdAudit(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	usage := func() int {
		fmt.Fprintln(stderr, "usage: signerctl audit verify [--anchor SEQ:0xHASH]... [--anchors FILE] [--db LEDGER_DIR] [--socket PATH] [--json]\n"+
			"       signerctl audit export [--out FILE] [--from SEQ] [--db LEDGER_DIR] [--socket PATH]\n"+
			"       signerctl audit head [--db LEDGER_DIR] [--socket PATH] [--json]\n"+
			"  --db opens the ledger file read-only instead of asking the daemon (only while the daemon is stopped)\n"+
			"  head prints the line to keep outside the appliance (seq=N hash=0x... time=...);\n"+
			"  --anchors FILE ('-' for stdin) holds such lines (or SEQ:0xHASH), blank lines and # comments ignored")
		return exitUsage
	}
	if len(args) == 0 {
		return usage()
	}
	sub := args[0]
	a := newAdminFlags("audit "+sub, stderr)
	db := a.fs.String("db", "", "ledger file to open read-only (daemon stopped)")
	var out *string
	var from *uint64
	var anchorArgs stringList
	var anchorsFile *string
	var archives stringList
	switch sub {
	case "verify":
		a.fs.Var(&anchorArgs, "anchor", "check that record SEQ still has hash HASH (SEQ:0xHASH or a head line; repeatable)")
		anchorsFile = a.fs.String("anchors", "", "check every anchor in FILE ('-' for stdin)")
		a.fs.Var(&archives, "archive", "verify an archive written by ledger prune and that it joins the live chain (repeatable, oldest first)")
	case "export":
		out = a.fs.String("out", "", "write JSON lines to FILE (default stdout)")
		from = a.fs.Uint64("from", 0, "first sequence number to export")
	case "head":
	default:
		return usage()
	}
	if pos, err := a.parse(args[1:]); err != nil || len(pos) != 0 {
		return usage()
	}
	switch sub {
	case "verify":
		anchors, err := readAnchors(anchorArgs, *anchorsFile, stdin)
		if err != nil {
			fmt.Fprintf(stderr, "signerctl audit verify: %v\n", err)
			return exitUsage
		}
		return auditVerify(a, *db, anchors, archives, stdout, stderr)
	case "head":
		return auditHead(a, *db, stdout, stderr)
	}
	return auditExport(a, *db, *out, *from, stdout, stderr)
}

// readAnchors parses the --anchor values and the --anchors file, in that order.
func readAnchors(args []string, file string, stdin io.Reader) ([]audit.Anchor, error) {
	var anchors []audit.Anchor
	for _, s := range args {
		an, err := audit.ParseAnchor(s)
		if err != nil {
			return nil, fmt.Errorf("--anchor: %s", strings.TrimPrefix(err.Error(), "audit: "))
		}
		anchors = append(anchors, an)
	}
	if file == "" {
		return anchors, nil
	}
	r := stdin
	name := "stdin"
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("--anchors: %v", err)
		}
		defer f.Close()
		r, name = f, file
	}
	more, err := audit.ParseAnchors(r)
	if err != nil {
		return nil, fmt.Errorf("--anchors %s: %s", name, strings.TrimPrefix(err.Error(), "audit: "))
	}
	if len(more) == 0 {
		return nil, fmt.Errorf("--anchors %s: no anchors in the file", name)
	}
	return append(anchors, more...), nil
}

func openLedgerReadOnly(path string) (*bucketstore.DB, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, err
	}
	if ok, _ := ledger.IsBoltFile(path); ok {
		return nil, fmt.Errorf("%s is a ledger file of an earlier signerd version: start the daemon once to migrate it (the original is kept as a backup)", path)
	}
	db, err := bucketstore.Open(path, bucketstore.Options{ReadOnly: true})
	if err != nil {
		switch {
		case errors.Is(err, bucketstore.ErrLocked):
			return nil, fmt.Errorf("%s is locked by a running daemon: ask the daemon instead (drop --db)", path)
		case errors.Is(err, bucketstore.ErrNotFound):
			return nil, fmt.Errorf("%s is not a signerd ledger (no store files in it)", path)
		case errors.Is(err, bucketstore.ErrCorrupt):
			return nil, fmt.Errorf("%s is damaged: %v", path, err)
		}
		return nil, fmt.Errorf("opening %s read-only: %w", path, err)
	}
	return db, nil
}

// verifyViaDaemon asks the daemon to verify the chain and check the anchors (POSTed in
// batches; each batch's report must hold a result for every anchor it carried, so a daemon
// that ignored them never passes for one that checked them).
func verifyViaDaemon(a *adminFlags, anchors []audit.Anchor) (audit.Report, error) {
	var rep audit.Report
	if len(anchors) == 0 {
		err := a.client().Do("GET", "/v1/admin/audit/verify", nil, &rep)
		return rep, err
	}
	for i := 0; i < len(anchors); i += anchorBatch {
		batch := anchors[i:min(i+anchorBatch, len(anchors))]
		texts := make([]string, len(batch))
		for j, an := range batch {
			texts[j] = an.String()
		}
		var part audit.Report
		if err := a.client().Do("POST", "/v1/admin/audit/verify", map[string]any{"anchors": texts}, &part); err != nil {
			return rep, err
		}
		if len(part.Anchors) != len(batch) {
			return rep, fmt.Errorf("the daemon checked %d of %d anchors (a signerd without anchor support?): not verified", len(part.Anchors), len(batch))
		}
		for j, r := range part.Anchors {
			if r.Anchor != texts[j] {
				return rep, fmt.Errorf("the daemon answered for anchor %s where %s was asked: not verified", r.Anchor, texts[j])
			}
		}
		if i == 0 {
			rep = part
			continue
		}
		// Later batches re-verify the chain: keep the first report's chain fields unless a
		// later one found it broken (the log only grows in between).
		if part.FirstBad != nil && rep.FirstBad == nil {
			anchorsSoFar := rep.Anchors
			rep = part
			rep.Anchors = anchorsSoFar
		}
		rep.OK = rep.OK && part.OK
		rep.Anchors = append(rep.Anchors, part.Anchors...)
	}
	return rep, nil
}

func auditVerify(a *adminFlags, dbPath string, anchors []audit.Anchor, archives []string, stdout, stderr io.Writer) int {
	var arch *archiveChain
	if len(archives) > 0 {
		var err error
		if arch, err = verifyArchives(archives); err != nil {
			fmt.Fprintf(stdout, "archive BROKEN: %v\n", err)
			return exitRefused
		}
	}
	var rep audit.Report
	if dbPath != "" {
		var err error
		if rep, err = verifyDB(dbPath, anchors); err != nil {
			fmt.Fprintf(stderr, "signerctl: %v\n", err)
			return exitRefused
		}
	} else {
		var err error
		if rep, err = verifyViaDaemon(a, anchors); err != nil {
			code := a.fail(err, stdout, stderr)
			if code == exitUnreachable {
				fmt.Fprintln(stderr, "if the daemon is stopped, verify its ledger file directly: signerctl audit verify --db STATE_DIR/signerd.db")
			}
			return code
		}
	}
	if arch != nil {
		live, err := liveRetention(a, dbPath, rep.PrunedThrough)
		if err != nil {
			fmt.Fprintf(stderr, "signerctl: reading the live log's retention records: %v\n", err)
			return exitRefused
		}
		if err := arch.join(&rep, live); err != nil {
			fmt.Fprintf(stdout, "archive does NOT join the live chain: %v\n", err)
			return exitRefused
		}
	}
	var failed, pruned []audit.AnchorResult
	for _, r := range rep.Anchors {
		switch r.Status {
		case audit.AnchorOK:
		case audit.AnchorPruned:
			pruned = append(pruned, r)
		default:
			failed = append(failed, r)
		}
	}
	switch {
	case *a.json:
		printJSON(stdout, rep)
	case rep.FirstBad == nil && len(failed) == 0 && rep.OK:
		fmt.Fprintf(stdout, "audit log OK: %d records, chain unbroken, head seq %d hash %s\n", rep.Records, rep.HeadSeq, rep.HeadHash)
		switch rep.State {
		case "ok":
			fmt.Fprintln(stdout, "ledger state OK: payment records, signatures, replay keys, budget usage and operator state match the audit log")
		case "":
		default:
			fmt.Fprintf(stdout, "ledger state not compared: %s\n", rep.State)
		}
		if rep.PrunedThrough > 0 {
			fmt.Fprintf(stdout, "records 1..%d were pruned (archived); the chain is verified from the checkpoint seq %d hash %s\n",
				rep.PrunedThrough, rep.PrunedThrough, rep.CheckpointHash)
		}
		if arch != nil {
			fmt.Fprintf(stdout, "archives OK: %d archive(s), records %d..%d, chain unbroken, joins the live chain at the checkpoint\n",
				len(archives), arch.from.Seq+1, arch.through.Seq)
		}
		if len(anchors) > 0 && len(pruned) == 0 {
			fmt.Fprintf(stdout, "anchors OK: all %d match (%s)\n", len(anchors), anchorSeqs(rep.Anchors))
		} else if len(anchors) > 0 {
			fmt.Fprintf(stdout, "anchors OK: %d match; %d are in the pruned part and were NOT checked (%s): give their archive with --archive FILE\n",
				len(anchors)-len(pruned), len(pruned), anchorSeqs(pruned))
		}
	default:
		if rep.FirstBad != nil {
			fmt.Fprintf(stdout, "audit log BROKEN: first bad record %d: %s (records 1..%d are good, last good hash %s)\n",
				rep.FirstBad.Seq, rep.FirstBad.Problem, rep.HeadSeq, rep.HeadHash)
		} else if rep.State != "" && rep.State != "ok" && !rep.OK && len(failed) == 0 {
			fmt.Fprintf(stdout, "audit chain unbroken (%d records, head seq %d) but the ledger is NOT intact: %s\n",
				rep.Records, rep.HeadSeq, rep.State)
		} else if len(failed) > 0 {
			fmt.Fprintf(stdout, "audit log does NOT match its anchors: the chain is unbroken (%d records, head seq %d hash %s) but %d of %d anchors FAILED\n",
				rep.Records, rep.HeadSeq, rep.HeadHash, len(failed), len(rep.Anchors))
		} else {
			fmt.Fprintf(stdout, "audit log BROKEN: first bad unknown (records 1..%d are good, last good hash %s)\n", rep.HeadSeq, rep.HeadHash)
		}
		for _, r := range failed {
			fmt.Fprintf(stdout, "anchor %s %s: %s\n", r.Anchor, strings.ToUpper(string(r.Status)), r.Problem)
		}
	}
	if !rep.OK || len(failed) > 0 {
		return exitRefused
	}
	return exitOK
}

// anchorSeqs summarises the anchors' sequence numbers ("seq 5", "seq 5, 9", "seq 5 .. 900 (12 anchors)").
func anchorSeqs(rs []audit.AnchorResult) string {
	if len(rs) <= 3 {
		parts := make([]string, len(rs))
		for i, r := range rs {
			parts[i] = strconv.FormatUint(r.Seq, 10)
		}
		return "seq " + strings.Join(parts, ", ")
	}
	lo, hi := rs[0].Seq, rs[0].Seq
	for _, r := range rs {
		lo, hi = min(lo, r.Seq), max(hi, r.Seq)
	}
	return fmt.Sprintf("seq %d .. %d", lo, hi)
}

// auditHead prints the head to anchor: the line "seq=N hash=0x... time=..." or, with --json,
// the same on one JSON line.
func auditHead(a *adminFlags, dbPath string, stdout, stderr io.Writer) int {
	var h audit.HeadInfo
	if dbPath != "" {
		db, err := openLedgerReadOnly(dbPath)
		if err != nil {
			fmt.Fprintf(stderr, "signerctl: %v\n", err)
			return exitRefused
		}
		h, err = audit.ReadHead(db)
		db.Close()
		if err != nil {
			fmt.Fprintf(stderr, "signerctl: audit head of %s: %v\n", dbPath, err)
			return exitRefused
		}
	} else if err := a.client().Do("GET", "/v1/admin/audit/head", nil, &h); err != nil {
		code := a.fail(err, stdout, stderr)
		if code == exitUnreachable {
			fmt.Fprintln(stderr, "if the daemon is stopped, read its ledger file directly: signerctl audit head --db STATE_DIR/signerd.db")
		}
		return code
	}
	if *a.json {
		b, err := json.Marshal(h)
		if err != nil {
			fmt.Fprintf(stderr, "signerctl: %v\n", err)
			return exitRefused
		}
		fmt.Fprintln(stdout, string(b))
		return exitOK
	}
	fmt.Fprintln(stdout, h.Line())
	return exitOK
}

func auditExport(a *adminFlags, dbPath, outPath string, from uint64, stdout, stderr io.Writer) int {
	var w io.Writer = stdout
	var f *os.File
	if outPath != "" {
		var err error
		// The audit log names principals and wallets: keep the export private.
		f, err = os.OpenFile(outPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			fmt.Fprintf(stderr, "signerctl: %v\n", err)
			return exitRefused
		}
		w = f
	}
	fw := &firstLineWriter{}
	cw := &countingWriter{w: io.MultiWriter(w, fw)}
	err := func() error {
		if dbPath != "" {
			db, err := openLedgerReadOnly(dbPath)
			if err != nil {
				return err
			}
			defer db.Close()
			return audit.Export(db, cw, from)
		}
		// A large export may take a while; the socket is local, so no overall time limit.
		return a.client().Stream("GET", "/v1/admin/audit/export?from="+strconv.FormatUint(from, 10), cw)
	}()
	if f != nil {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return a.fail(err, stdout, stderr)
	}
	if note := prunedNote(from, fw.line); note != "" {
		fmt.Fprintln(stderr, note)
	}
	if outPath != "" {
		fmt.Fprintf(stderr, "exported %d audit records to %s\n", cw.lines, outPath)
	}
	return exitOK
}

// firstLineWriter keeps the first line written to it (at most 1 MiB), the rest is dropped.
type firstLineWriter struct {
	line []byte
	done bool
}

func (f *firstLineWriter) Write(p []byte) (int, error) {
	if !f.done {
		if i := bytes.IndexByte(p, '\n'); i >= 0 {
			f.line, f.done = append(f.line, p[:i]...), true
		} else if len(f.line)+len(p) <= 1<<20 {
			f.line = append(f.line, p...)
		} else {
			f.done = true
		}
	}
	return len(p), nil
}

// prunedNote says, for an export asked to start at from, whether records it asked for were
// pruned by retention: the records' seqs have no gaps, so a first record after max(from, 1)
// means the log starts at a prune checkpoint, and that record's prev hash is the checkpoint's
// hash. The JSON lines are not changed; the note goes to stderr.
func prunedNote(from uint64, first []byte) string {
	var r struct {
		Seq  uint64 `json:"seq"`
		Prev string `json:"prev"`
	}
	if len(first) == 0 || json.Unmarshal(first, &r) != nil {
		return ""
	}
	if from == 0 {
		from = 1
	}
	if r.Seq <= from {
		return ""
	}
	return fmt.Sprintf("signerctl: note: audit records 1..%d were pruned by retention and archived (checkpoint seq %d hash %s); "+
		"this export starts at seq %d, not %d. The pruned records are in the retention archive(s) (check with: signerctl audit verify --archive FILE)",
		r.Seq-1, r.Seq-1, r.Prev, r.Seq, from)
}

type countingWriter struct {
	w     io.Writer
	lines int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	for _, b := range p[:n] {
		if b == '\n' {
			c.lines++
		}
	}
	return n, err
}

// ---- ledger ----

func cmdLedger(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	usage := func() int {
		fmt.Fprintln(stderr, "usage: signerctl ledger spend [--key BUDGET_KEY --window minute|hour|day|30d|DURATION|0]\n"+
			"       signerctl ledger records [--wallet ADDRESS [--tab TAB_ID]] [--id RECORD_ID] [--limit N]\n"+
			"       signerctl ledger prune --before RFC3339|AGE --archive FILE   (archive, then prune; see docs/ledger.md)\n"+
			"  common flags: [--socket PATH] [--json]")
		return exitUsage
	}
	if len(args) == 0 {
		return usage()
	}
	sub := args[0]
	if sub == "prune" {
		return cmdLedgerPrune(args[1:], stdout, stderr)
	}
	a := newAdminFlags("ledger "+sub, stderr)
	q := url.Values{}
	var key, window, wallet, tab, id *string
	var limit *int
	switch sub {
	case "spend":
		key = a.fs.String("key", "", "budget key (omit to list every counter in use)")
		window = a.fs.String("window", "", "budget window: minute, hour, day, 30d, a duration like 15m, or 0 for lifetime")
	case "records":
		wallet = a.fs.String("wallet", "", "only records of this wallet")
		tab = a.fs.String("tab", "", "only records of this tab (with --wallet)")
		id = a.fs.String("id", "", "one record by id")
		limit = a.fs.Int("limit", 50, "most recent N records")
	default:
		return usage()
	}
	if pos, err := a.parse(args[1:]); err != nil || len(pos) != 0 {
		return usage()
	}
	var path string
	if sub == "spend" {
		path = "/v1/admin/ledger/spend"
		if *key != "" {
			q.Set("key", *key)
			q.Set("window", *window)
		} else if *window != "" {
			fmt.Fprintln(stderr, "signerctl ledger spend: --window needs --key")
			return exitUsage
		}
	} else {
		path = "/v1/admin/ledger/records"
		if *tab != "" && *wallet == "" {
			fmt.Fprintln(stderr, "signerctl ledger records: --tab needs --wallet")
			return exitUsage
		}
		for k, v := range map[string]string{"wallet": *wallet, "tab": *tab, "id": *id} {
			if v != "" {
				q.Set(k, v)
			}
		}
		if *wallet == "" && *id == "" {
			q.Set("limit", strconv.Itoa(*limit))
		}
	}
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var raw json.RawMessage
	if err := a.client().Do("GET", path, nil, &raw); err != nil {
		return a.fail(err, stdout, stderr)
	}
	if *a.json {
		fmt.Fprintln(stdout, string(raw))
		return exitOK
	}
	if sub == "spend" {
		return printSpend(raw, *key != "", stdout, stderr)
	}
	return printRecords(raw, stdout, stderr)
}

type spendRow struct {
	Key     string          `json:"key"`
	Window  int64           `json:"window"` // nanoseconds
	Used    json.RawMessage `json:"used"`
	Buckets int             `json:"buckets"`
}

func windowName(ns int64) string {
	d := time.Duration(ns)
	switch {
	case d == 0:
		return "lifetime"
	case d%(24*time.Hour) == 0:
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d"
	}
	return d.String()
}

func amountText(raw json.RawMessage) string {
	s := strings.Trim(string(raw), `"`)
	if s == "" || s == "null" {
		return "0"
	}
	return s
}

func printSpend(raw json.RawMessage, one bool, stdout, stderr io.Writer) int {
	var rows []spendRow
	if one {
		var r spendRow
		if err := json.Unmarshal(raw, &r); err != nil {
			fmt.Fprintf(stderr, "signerctl: decoding spend: %v\n", err)
			return exitRefused
		}
		rows = []spendRow{r}
	} else {
		var all struct {
			Spend []spendRow `json:"spend"`
		}
		if err := json.Unmarshal(raw, &all); err != nil {
			fmt.Fprintf(stderr, "signerctl: decoding spend: %v\n", err)
			return exitRefused
		}
		rows = all.Spend
	}
	if len(rows) == 0 {
		fmt.Fprintln(stdout, "no spend recorded in any open window")
		return exitOK
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "BUDGET KEY\tWINDOW\tUSED")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Key, windowName(r.Window), amountText(r.Used))
	}
	tw.Flush()
	return exitOK
}

func printRecords(raw json.RawMessage, stdout, stderr io.Writer) int {
	var out struct {
		Records []struct {
			ID      json.RawMessage `json:"record_id"`
			Status  string          `json:"status"`
			Created string          `json:"created"`
			Agent   string          `json:"agent"`
			Wallet  string          `json:"wallet"`
			TabID   string          `json:"tab_id"`
			ReqID   string          `json:"req_id"`
			Rule    string          `json:"rule"`
			Charges []struct {
				Amount string `json:"amount"`
				Count  bool   `json:"count"`
			} `json:"charges"`
			Claims string `json:"claims"`
			Code   string `json:"code"`
		} `json:"records"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		fmt.Fprintf(stderr, "signerctl: decoding records: %v\n", err)
		return exitRefused
	}
	if len(out.Records) == 0 {
		fmt.Fprintln(stdout, "no payment records")
		return exitOK
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tCREATED\tAGENT\tWALLET\tTAB\tREQ\tAMOUNT\tRULE")
	for _, r := range out.Records {
		status := r.Status
		if r.Code != "" {
			status += " (" + r.Code + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", strings.Trim(string(r.ID), `"`), status, r.Created,
			r.Agent, r.Wallet, hexID(r.TabID), r.ReqID, claimsAmount(r.Claims), orDash(r.Rule))
	}
	tw.Flush()
	return exitOK
}

// claimsAmount pulls the amount out of the stored canonical claims, if it is JSON.
func claimsAmount(claims string) string {
	var c map[string]any
	if json.Unmarshal([]byte(claims), &c) != nil {
		return "-"
	}
	v, ok := c["amount"].(string)
	if !ok {
		return "-"
	}
	n, ok := new(big.Int).SetString(strings.TrimPrefix(v, "0x"), map[bool]int{true: 16, false: 10}[strings.HasPrefix(v, "0x")])
	if !ok {
		return v
	}
	return n.String()
}

// ---- retention: ledger prune, audit verify --archive ----

// archiveChain is one or more archives verified in order (each starts where the previous
// ended).
type archiveChain struct {
	from, through audit.Checkpoint
	hashes        map[uint64][32]byte
	paths         []string
	sums          []ledger.ArchiveSummary
	retention     []audit.Record // retention records inside the archives
}

// verifyArchives verifies each archive completely (ledger.VerifyArchive) and that they chain.
func verifyArchives(paths []string) (*archiveChain, error) {
	ac := &archiveChain{hashes: map[uint64][32]byte{}}
	for i, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		sum, err := ledger.VerifyArchive(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		if i == 0 {
			ac.from = sum.From
		} else if sum.From != ac.through {
			return nil, fmt.Errorf("%s starts after seq %d, but the previous archive ends at seq %d: give the archives oldest first, none missing", p, sum.From.Seq, ac.through.Seq)
		}
		ac.through = sum.Through
		ac.paths, ac.sums = append(ac.paths, p), append(ac.sums, sum)
		ac.retention = append(ac.retention, sum.Retention...)
		for _, h := range sum.Hashes {
			ac.hashes[h.Seq] = h.Hash
		}
	}
	return ac, nil
}

// join checks that the archives end exactly at the live log's checkpoint, that each archive
// is the one its prune recorded (a retention record, in a later archive or in live — the live
// log's retention records after the checkpoint — names its plan and SHA-256: this ties the
// archived payment records to the ledger, which the checkpoint alone does not), and checks the
// report's pruned anchors against the archived records.
func (ac *archiveChain) join(rep *audit.Report, live []audit.Record) error {
	if rep.PrunedThrough == 0 {
		return errors.New("the live audit log was never pruned")
	}
	cp := "0x" + hex.EncodeToString(ac.through.Hash[:])
	if ac.through.Seq != rep.PrunedThrough || cp != rep.CheckpointHash {
		return fmt.Errorf("the archives end at seq %d hash %s, the live log's checkpoint is seq %d hash %s", ac.through.Seq, cp, rep.PrunedThrough, rep.CheckpointHash)
	}
	recorded := append(append([]audit.Record(nil), ac.retention...), live...)
	for i, sum := range ac.sums {
		found := false
		for _, r := range recorded {
			if r.Seq > sum.Through.Seq && sum.RecordedBy(r) {
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("%s: no retention record names this archive's plan 0x%x and SHA-256 0x%x: it is not the archive the prune recorded (payment records altered?)",
				ac.paths[i], sum.Plan, sum.SHA256)
		}
	}
	for i, r := range rep.Anchors {
		if r.Status != audit.AnchorPruned {
			continue
		}
		h, ok := ac.hashes[r.Seq]
		if !ok {
			continue // before the first archive given: still unchecked
		}
		a, err := audit.ParseAnchor(r.Anchor)
		if err != nil {
			return err
		}
		r.Problem = ""
		if h == a.Hash {
			r.Status = audit.AnchorOK
		} else {
			r.Status, r.Found = audit.AnchorMismatch, "0x"+hex.EncodeToString(h[:])
			r.Problem = fmt.Sprintf("archived record %d has hash %s, the anchor says 0x%s: the archive or the log was rewritten after the anchor was taken", r.Seq, r.Found, hex.EncodeToString(a.Hash[:]))
			rep.OK = false
		}
		rep.Anchors[i] = r
	}
	return nil
}

// liveRetention reads the retention records of the live log after seq (from the file with
// --db, else from the daemon's audit export), each rebuilt and checked against its hash.
func liveRetention(a *adminFlags, dbPath string, after uint64) ([]audit.Record, error) {
	rw := &retentionWriter{}
	if dbPath != "" {
		db, err := openLedgerReadOnly(dbPath)
		if err != nil {
			return nil, err
		}
		defer db.Close()
		if err := audit.Export(db, rw, after+1); err != nil {
			return nil, err
		}
	} else if err := a.client().Stream("GET", "/v1/admin/audit/export?from="+strconv.FormatUint(after+1, 10), rw); err != nil {
		return nil, err
	}
	if rw.err == nil && len(rw.buf) > 0 {
		rw.err = errors.New("audit export ends in the middle of a line")
	}
	return rw.recs, rw.err
}

// retentionWriter collects the retention records of an audit export as it streams.
type retentionWriter struct {
	buf  []byte
	recs []audit.Record
	err  error
}

func (w *retentionWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		line := w.buf[:i]
		if bytes.Contains(line, []byte(`"kind":"`+string(audit.KindRetention)+`"`)) {
			r, err := audit.ParseJSONRecord(line)
			if err != nil {
				w.err = err
				return 0, err
			}
			if r.Event.Kind == audit.KindRetention {
				w.recs = append(w.recs, r)
			}
		}
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

// parseBefore reads --before: an RFC 3339 time, or an age (90d, 2160h, 30m) counted back from now.
func parseBefore(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	var d time.Duration
	if n, ok := strings.CutSuffix(s, "d"); ok {
		v, err := strconv.Atoi(n)
		if err != nil || v <= 0 || v > 100*366 { // beyond: Duration overflows (and nothing is that old)
			return time.Time{}, fmt.Errorf("--before %q: want RFC 3339 or an age like 90d or 2160h (at most 100 years)", s)
		}
		d = time.Duration(v) * 24 * time.Hour
	} else {
		v, err := time.ParseDuration(s)
		if err != nil || v <= 0 {
			return time.Time{}, fmt.Errorf("--before %q: want RFC 3339 or an age like 90d or 2160h", s)
		}
		d = v
	}
	return now.Add(-d).UTC(), nil
}

// syncDir fsyncs a directory (so a link just made in it survives a crash); failing to open it
// is a failure too.
var syncDir = func(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// archiveWriter wraps the archive file while it is written (tests inject a failing writer).
var archiveWriter = func(f *os.File) io.Writer { return f }

// cmdLedgerPrune archives, then prunes (docs/ledger.md#retention):
//
//  1. GET /v1/admin/ledger/prune/export?before=T streams the archive into FILE.partial
//     (created exclusively, mode 0600, next to FILE); nothing is changed in the daemon;
//  2. the file is fsynced, closed, read back and verified completely (ledger.VerifyArchive:
//     trailer present, SHA-256, audit chain) — the daemon's stream may have been cut short;
//  3. it is linked to FILE (never overwriting) and the directory is fsynced;
//  4. only then POST /v1/admin/ledger/prune {before, plan, archive_sha256}: the daemon deletes
//     exactly the archived selection, or nothing if it changed (409 prune_plan_changed).
//
// A failure at any step before 4 leaves the ledger untouched (and removes the partial file).
func cmdLedgerPrune(args []string, stdout, stderr io.Writer) int {
	a := newAdminFlags("ledger prune", stderr)
	beforeS := a.fs.String("before", "", "prune history older than this: RFC 3339 time, or an age like 90d (at least 24h)")
	archive := a.fs.String("archive", "", "write the archive to FILE (must not exist) before anything is pruned")
	if pos, err := a.parse(args); err != nil || len(pos) != 0 || *beforeS == "" || *archive == "" {
		fmt.Fprintln(stderr, "usage: signerctl ledger prune --before RFC3339|AGE --archive FILE [--socket PATH] [--json]")
		return exitUsage
	}
	before, err := parseBefore(*beforeS, time.Now())
	if err != nil {
		fmt.Fprintf(stderr, "signerctl ledger prune: %v\n", err)
		return exitUsage
	}
	if _, err := os.Lstat(*archive); err == nil {
		fmt.Fprintf(stderr, "signerctl ledger prune: %s exists: an archive is never overwritten\n", *archive)
		return exitUsage
	}
	partial := *archive + ".partial"
	f, err := os.OpenFile(partial, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		fmt.Fprintf(stderr, "signerctl ledger prune: %v (nothing pruned)\n", err)
		return exitRefused
	}
	defer os.Remove(partial) // after success FILE is a second link to it
	q := url.Values{"before": {before.Format(time.RFC3339Nano)}}
	err = a.client().Stream("GET", "/v1/admin/ledger/prune/export?"+q.Encode(), archiveWriter(f))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		fmt.Fprintln(stderr, "signerctl ledger prune: the archive was not written: nothing pruned")
		return a.fail(err, stdout, stderr)
	}
	rf, err := os.Open(partial)
	if err != nil {
		fmt.Fprintf(stderr, "signerctl ledger prune: %v (nothing pruned)\n", err)
		return exitRefused
	}
	sum, err := ledger.VerifyArchive(rf)
	rf.Close()
	if err != nil {
		fmt.Fprintf(stderr, "signerctl ledger prune: the archive written does not verify: %v (nothing pruned)\n", err)
		return exitRefused
	}
	if !sum.Before.Equal(before) {
		fmt.Fprintf(stderr, "signerctl ledger prune: the archive is for before %s, not %s (nothing pruned)\n", sum.Before.Format(time.RFC3339Nano), before.Format(time.RFC3339Nano))
		return exitRefused
	}
	if sum.AuditRecords == 0 && sum.PaymentRecords == 0 {
		fmt.Fprintf(stdout, "nothing to prune before %s (no archive written)\n", before.Format(time.RFC3339))
		return exitOK
	}
	if err := os.Link(partial, *archive); err != nil { // link: fails if FILE appeared meanwhile
		fmt.Fprintf(stderr, "signerctl ledger prune: %v (nothing pruned)\n", err)
		return exitRefused
	}
	if err := syncDir(filepath.Dir(*archive)); err != nil {
		fmt.Fprintf(stderr, "signerctl ledger prune: syncing the archive's directory: %v (nothing pruned; %s is complete but may not survive a crash)\n", err, *archive)
		return exitRefused
	}
	var res map[string]any
	body := map[string]string{"before": before.Format(time.RFC3339Nano),
		"plan": "0x" + hex.EncodeToString(sum.Plan[:]), "archive_sha256": "0x" + hex.EncodeToString(sum.SHA256[:])}
	if err := a.client().Do("POST", "/v1/admin/ledger/prune", body, &res); err != nil {
		var ae *client.Error
		if errors.As(err, &ae) {
			fmt.Fprintf(stderr, "signerctl ledger prune: the archive %s is complete but NOTHING was pruned\n", *archive)
		} else {
			// The request may have reached the daemon and committed: only its answer is known
			// lost. Never tell the operator nothing was pruned when that is not known.
			fmt.Fprintf(stderr, "signerctl ledger prune: no answer from signerd: the prune MAY HAVE HAPPENED; KEEP the archive %s "+
				"and check with: signerctl audit verify --archive %s (it joins the live chain only if it did)\n", *archive, *archive)
		}
		return a.fail(err, stdout, stderr)
	}
	if *a.json {
		printJSON(stdout, res)
		return exitOK
	}
	fmt.Fprintf(stdout, "archived and pruned %d audit records and %d payment records older than %s\n",
		sum.AuditRecords, sum.PaymentRecords, before.Format(time.RFC3339))
	fmt.Fprintf(stdout, "archive %s sha256 0x%x\n", *archive, sum.SHA256)
	fmt.Fprintf(stdout, "checkpoint seq=%d hash=0x%x  (keep it with the archive; check with: signerctl audit verify --archive %s)\n",
		sum.Through.Seq, sum.Through.Hash, *archive)
	return exitOK
}

// verifyDB verifies a stopped daemon's ledger: the audit chain with the anchors, the head mark
// and the state bound to the chain. A corruption is reported in rep, not as an error.
func verifyDB(dbPath string, anchors []audit.Anchor) (audit.Report, error) {
	db, err := openLedgerReadOnly(dbPath)
	if err != nil {
		return audit.Report{}, err
	}
	defer db.Close()
	rep, err := audit.VerifyAnchored(db, anchors)
	if err == nil {
		err = db.View(func(tx *bucketstore.Tx) error {
			if err := ledger.CheckHeadMark(tx, dbPath); err != nil {
				rep.OK, rep.State = false, err.Error()
				return err
			}
			var err error
			rep, err = ledger.AddStateCheck(tx, rep, time.Now())
			return err
		})
	}
	if err != nil && !errors.Is(err, audit.ErrCorrupt) {
		return rep, fmt.Errorf("verifying %s: %w", dbPath, err)
	}
	return rep, nil
}
