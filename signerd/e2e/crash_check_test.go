package e2e

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"math/big"
	"strings"
	"testing"

	"github.com/signerd/signerd/signerd/fourmica"
)

// auditLine is the part of an exported audit record the crash checks read.
type auditLine struct {
	Seq       uint64            `json:"seq"`
	Hash      string            `json:"hash"`
	Prev      string            `json:"prev"`
	Kind      string            `json:"kind"`
	Decision  string            `json:"decision"`
	RecordID  uint64            `json:"record_id"`
	Signature string            `json:"signature"`
	Charges   []json.RawMessage `json:"charges"`
}

// auditFollower reads the audit log across kills, each time only the records appended since
// the last read (signerctl audit export --from), checking that they chain onto those read
// before (the whole chain is verified by signerctl audit verify at every read). It keeps what
// the records say about payment records.
type auditFollower struct {
	next     uint64            // seq of the next record to read
	lastHash string            // hash of the last record read
	open     map[string]bool   // record ids with an intent written (allow decision with charges), neither signed nor released
	sigs     map[string]string // record id → signature of its audit record of kind signature
}

func newAuditFollower() *auditFollower {
	return &auditFollower{next: 1, open: map[string]bool{}, sigs: map[string]string{}}
}

// read verifies the chain and applies the records appended since the last read: from the
// killed daemon's file (offline: audit verify/export --db, the daemon stopped) or from the
// running daemon (online).
func (f *auditFollower) read(t *testing.T, e *env, offline bool, kill int) {
	t.Helper()
	var db []string
	if offline {
		db = []string{"--db", e.db}
	}
	if out, errs, code := e.ctl(append([]string{"audit", "verify"}, db...)...); code != 0 || !strings.Contains(out, "OK") {
		t.Fatalf("kill %d: audit verify (offline %v): %d %s %s", kill, offline, code, out, errs)
	}
	args := append([]string{"audit", "export", "--from", fmt.Sprint(f.next)}, db...)
	exp, errs, code := e.ctl(args...)
	if code != 0 {
		t.Fatalf("kill %d: audit export (offline %v): %d %s", kill, offline, code, errs)
	}
	for _, line := range strings.Split(strings.TrimSpace(exp), "\n") {
		if line == "" {
			continue
		}
		var a auditLine
		if err := json.Unmarshal([]byte(line), &a); err != nil {
			t.Fatalf("kill %d: audit export line %q: %v", kill, line, err)
		}
		if a.Seq != f.next || (f.lastHash != "" && !strings.EqualFold(a.Prev, f.lastHash)) {
			t.Fatalf("kill %d: audit record %d (prev %s) does not follow record %d (hash %s) read before", kill, a.Seq, a.Prev, f.next-1, f.lastHash)
		}
		f.apply(a)
	}
}

// apply notes what one audit record says about its payment record.
func (f *auditFollower) apply(a auditLine) {
	f.next, f.lastHash = a.Seq+1, a.Hash
	id := fmt.Sprint(a.RecordID)
	switch {
	case a.Kind == "decision" && a.Decision == "allow" && a.RecordID != 0 && len(a.Charges) > 0:
		f.open[id] = true
	case a.Kind == "signature":
		delete(f.open, id)
		f.sigs[id] = a.Signature
	case a.Kind == "reservation_released":
		delete(f.open, id)
	}
}

// intentsAtKill reads the ledger file the SIGKILL left, offline, before the restart: the chain
// must verify, and it returns the ids of the records whose intent was written but that were
// neither signed nor released — intents whose signature may have left the daemon.
func (f *auditFollower) intentsAtKill(t *testing.T, e *env, kill int) map[string]bool {
	t.Helper()
	f.read(t, e, true, kill)
	return maps.Clone(f.open)
}

// crashView is the restarted daemon's ledger as the checks read it.
type crashView struct {
	recs     []record          // the current record of every key of the wallet
	byID     map[string]record // recs by record id
	sigAudit map[string]string // record id → signature of its audit record of kind signature
	usage    map[string]string // "budget key|window_s" → used (decimal)
}

// readCrashView reads the records and budget usage over the admin API, and the audit records
// appended since the kill (the start-up's).
func readCrashView(t *testing.T, e *env, audit *auditFollower, kill int) crashView {
	t.Helper()
	audit.read(t, e, false, kill)
	v := crashView{recs: e.records(t), byID: map[string]record{}, sigAudit: audit.sigs, usage: readUsage(t, e)}
	for _, r := range v.recs {
		v.byID[r.ID] = r
	}
	return v
}

// readUsage returns every budget counter's usage (GET /v1/admin/ledger/spend) by "key|window_s".
func readUsage(t *testing.T, e *env) map[string]string {
	t.Helper()
	st, raw, err := e.adminClient().call("GET", "/v1/admin/ledger/spend", nil)
	if err != nil || st != 200 {
		t.Fatalf("ledger spend: %d %v %s", st, err, raw)
	}
	var sp struct {
		Spend []struct {
			Key     string `json:"key"`
			WindowS int64  `json:"window_s"`
			Used    string `json:"used"`
		} `json:"spend"`
	}
	if err := json.Unmarshal(raw, &sp); err != nil {
		t.Fatalf("ledger spend: %v %s", err, raw)
	}
	out := map[string]string{}
	for _, s := range sp.Spend {
		out[fmt.Sprintf("%s|%d", s.Key, s.WindowS)] = s.Used
	}
	return out
}

// recordByID reads one record (GET /v1/admin/ledger/records?id=), superseded ones included.
func (e *env) recordByID(t *testing.T, id string) record {
	t.Helper()
	st, raw, err := e.adminClient().call("GET", "/v1/admin/ledger/records?id="+id, nil)
	var out struct {
		Records []record `json:"records"`
	}
	if err != nil || st != 200 || json.Unmarshal(raw, &out) != nil || len(out.Records) != 1 {
		t.Fatalf("ledger record %s: %d %v %s", id, st, err, raw)
	}
	return out.Records[0]
}

// signedByWallet reports whether sig (0x-hex) recovers to wallet1 over digest (0x-hex).
func signedByWallet(digest, sig string) error {
	d, err := fourmica.ParseHash(digest)
	if err != nil {
		return err
	}
	b, err := hex.DecodeString(strings.TrimPrefix(sig, "0x"))
	if err != nil {
		return err
	}
	w, err := fourmica.ParseAddress(wallet1)
	if err != nil {
		return err
	}
	return fourmica.VerifySignature(d, b, w)
}

// digestOf is the EIP-712 digest (0x-hex) of claims under the dev domain.
func digestOf(cl claims) (string, error) {
	raw, err := json.Marshal(cl)
	if err != nil {
		return "", err
	}
	c, err := fourmica.DecodeClaims(raw)
	if err != nil {
		return "", err
	}
	d, err := devDomain.Digest(c, fourmica.SchemeEIP712)
	return d.Hex(), err
}

// checkCrashInvariants runs every check after a restart; the first failure stops the test.
func checkCrashInvariants(t *testing.T, e *env, load *crashLoad, audit *auditFollower, atKill map[string]bool, kill int, tally *crashTally) {
	t.Helper()
	v := readCrashView(t, e, audit, kill)
	checkIntentsKept(t, e, v, atKill, kill)
	checkReceivedDurable(t, v, load, kill)
	checkOneClaimsPerKey(t, v, load.got, kill)
	checkBudgets(t, v, kill)
	retryPossiblySigned(t, e, v, load, kill, tally)
}

// checkIntentsKept: every record the kill left reserved (possibly signed) is still reserved, or
// signed, after the restart: start-up refunds no intent whose signature may have left.
func checkIntentsKept(t *testing.T, e *env, v crashView, atKill map[string]bool, kill int) {
	t.Helper()
	for id := range atKill {
		r, ok := v.byID[id]
		if !ok {
			r = e.recordByID(t, id)
		}
		if r.Status != "reserved" && r.Status != "signed" {
			t.Fatalf("kill %d: record %s was reserved (possibly signed) in the file the kill left; after the restart it is %s "+
				"(code %q): start-up refunded its charges and freed its key although its signature may have left", kill, id, r.Status, r.Code)
		}
	}
}

// checkReceivedDurable: every signature a client received has its intent on disk: a record
// under the same id for the same key and digest (the digest binds the claims), signed (with an
// audit record of its signature, by the wallet) or still reserved (possibly signed), never
// released. Each received signature is checked once to recover to the wallet over its digest.
func checkReceivedDurable(t *testing.T, v crashView, load *crashLoad, kill int) {
	t.Helper()
	for i, g := range load.got {
		r, ok := v.byID[g.recordID]
		if !ok || keyOf(r.TabID, r.ReqID) != g.key || !strings.EqualFold(r.Digest, g.digest) {
			t.Fatalf("kill %d: a client received signature %s (record %s, key %s, digest %s) but the ledger has %+v",
				kill, g.signature, g.recordID, g.key, g.digest, r)
		}
		switch r.Status {
		case "reserved":
		case "signed":
			if s, ok := v.sigAudit[r.ID]; !ok || !strings.EqualFold(s, r.Signature) {
				t.Fatalf("kill %d: record %s is signed but the audit log has no record of its signature", kill, r.ID)
			}
			if !strings.EqualFold(r.Signature, g.signature) {
				if err := signedByWallet(r.Digest, r.Signature); err != nil {
					t.Fatalf("kill %d: record %s holds a signature that does not recover to the wallet: %v", kill, r.ID, err)
				}
			}
		default:
			t.Fatalf("kill %d: a client received signature %s for record %s, which is now %s", kill, g.signature, r.ID, r.Status)
		}
		if i >= load.verified {
			if err := signedByWallet(g.digest, g.signature); err != nil {
				t.Fatalf("kill %d: a client received signature %s over %s that does not recover to the wallet: %v", kill, g.signature, g.digest, err)
			}
		}
	}
	load.verified = len(load.got)
}

// checkOneClaimsPerKey: no (wallet, tab_id, req_id) has two different claims signed. Clients
// never received signatures over two different claims for one key, and checkReceivedDurable
// tied each received signature to the key's one live record.
func checkOneClaimsPerKey(t *testing.T, v crashView, got []received, kill int) {
	t.Helper()
	byKey := map[string][32]byte{}
	for _, g := range got {
		if h, ok := byKey[g.key]; ok && h != g.claimsSum {
			t.Fatalf("kill %d: clients received signatures for %s over two different claims", kill, g.key)
		}
		byKey[g.key] = g.claimsSum
	}
	live := map[string]string{}
	for _, r := range v.recs {
		if r.Status != "signed" && r.Status != "reserved" {
			continue
		}
		k := keyOf(r.TabID, r.ReqID)
		if h, dup := live[k]; dup && h != r.ClaimsHsh {
			t.Fatalf("kill %d: key %s has two live records with different claims (%s, %s)", kill, k, h, r.ClaimsHsh)
		}
		live[k] = r.ClaimsHsh
	}
}

// checkBudgets: no capped window is above its limit, counting possibly-signed records too, and
// every counter's usage equals the charges of the live (signed or reserved) records: nothing
// charged twice, no charge of a possibly-signed intent refunded.
func checkBudgets(t *testing.T, v crashView, kill int) {
	t.Helper()
	charged := map[string]*big.Int{}
	for _, r := range v.recs {
		if r.Status != "signed" && r.Status != "reserved" {
			continue
		}
		for _, c := range r.Charges {
			k := fmt.Sprintf("%s|%d", c.Key, c.WindowS)
			if charged[k] == nil {
				charged[k] = new(big.Int)
			}
			charged[k].Add(charged[k], amountOf(c.Amount))
		}
	}
	for k, c := range charged {
		if strings.HasPrefix(k, "capped|") && c.Cmp(big.NewInt(crashBudgetLimit)) > 0 {
			t.Fatalf("kill %d: capped budget %s: signed or possibly signed %s > %d", kill, k, c, crashBudgetLimit)
		}
	}
	for k, u := range v.usage {
		used := amountOf(u)
		if strings.HasPrefix(k, "capped|") && used.Cmp(big.NewInt(crashBudgetLimit)) > 0 {
			t.Fatalf("kill %d: budget window %s used %s > %d", kill, k, used, crashBudgetLimit)
		}
		if c := charged[k]; c == nil || c.Cmp(used) != 0 {
			t.Fatalf("kill %d: budget %s: usage %s, but the live records' charges add up to %v", kill, k, used, c)
		}
	}
	for k, c := range charged {
		if _, ok := v.usage[k]; !ok {
			t.Fatalf("kill %d: budget %s: live records charge %s, the usage shows nothing", kill, k, c)
		}
	}
}
