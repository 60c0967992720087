//go:build ignore

// gen-ledger-v1 writes ledger-v1-bbolt.db, the bbolt ledger file that migrate_test.go migrates.
// It runs against the OLD tree — commit 72aca84, the last bbolt version of signerd/ledger — so
// that the file is what that version really wrote, not an imitation:
//
//	git worktree add /tmp/signerd-72aca84 72aca84
//	cp signerd/ledger/testdata/gen-ledger-v1.go /tmp/signerd-72aca84/
//	(cd /tmp/signerd-72aca84 && go run ./gen-ledger-v1.go -out /tmp/ledger-v1-bbolt.db)
//	cp /tmp/ledger-v1-bbolt.db signerd/ledger/testdata/
//
// It does not build against the current tree (the ledger there is on pebble); the ignore tag
// keeps it out of every build. What the file holds (clock: a fake one starting at T0, below):
//
//	day 1 (T0): policy_reload; kill switch engaged by alice, resume asked by alice, confirmed by
//	  bob (two-step); guarantees tab 1 req 1..3 reserved and signed, tab 1 req 4 reserved and
//	  released (backend_unavailable); a collateral transaction (scheme tx-eip1559, tab 7001
//	  req 0) reserved, its pending-broadcast mark written, signed, never broadcast (the mark
//	  stays); tab 1 req 5 reserved and left so (a crash before Commit: the orphan).
//	day 4 (T0+3d): archive then prune before T0+12h: tab 1 req 1..4 are pruned (the signed
//	  ones' replay entries marked pruned, the released one's deleted), the audit log gets a
//	  checkpoint; the collateral record (marked) and the orphan (reserved) are kept.
//	day 4, after the prune: tab 2 req 1..2 signed, tab 2 req 3 released; an approval submitted
//	  and approved; a key_op record; the kill switch engaged again by carol (left engaged).
//
// Every guarantee charges daily/agent-a (24 h window), life/agent-a (no window) and
// rate/agent-a (1 h window, a count). Signatures are real secp256k1 signatures of the digest
// (keccak256 of the claims) by a fixed test key.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"log"
	"math/big"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/ethereum/go-ethereum/crypto"

	"github.com/signerd/signerd/policyengine"
	"github.com/signerd/signerd/signerd/approvals"
	"github.com/signerd/signerd/signerd/audit"
	"github.com/signerd/signerd/signerd/killswitch"
	"github.com/signerd/signerd/signerd/ledger"
)

// T0 is the fake clock's start.
var T0 = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)

// wallet signs everything; key is its (test-only) private key.
var (
	key, _ = crypto.HexToECDSA("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
	wallet = crypto.PubkeyToAddress(key.PublicKey)
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// gen carries what every step needs.
type gen struct {
	l   *ledger.Ledger
	clk *clock
	ctx context.Context
}

func main() {
	out := flag.String("out", "ledger-v1-bbolt.db", "file to write (must not exist)")
	flag.Parse()
	if _, err := os.Stat(*out); err == nil {
		log.Fatalf("%s exists", *out)
	}
	clk := &clock{t: T0}
	l, err := ledger.Open(ledger.Options{Path: *out, Clock: clk.Now})
	if err != nil {
		log.Fatal(err)
	}
	g := &gen{l: l, clk: clk, ctx: context.Background()}
	g.day1()
	clk.advance(72 * time.Hour)
	g.prune(T0.Add(12 * time.Hour))
	g.day4()
	if rep, err := l.VerifyAudit(); err != nil || !rep.OK {
		log.Fatalf("verify: %+v %v", rep, err)
	}
	if err := l.Close(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("wrote", *out)
}

// day1 writes the records that the prune will archive, the marked collateral record and the orphan.
func (g *gen) day1() {
	g.audit(audit.Event{Kind: audit.KindPolicyReload, Operator: "alice", Reason: "policy v1 loaded",
		Attrs: map[string]string{"policy_hash": "0x" + strings.Repeat("ab", 32)}})
	ks, err := killswitch.New(killswitch.Options{Store: g.l, Clock: g.clk, RequireSecondOperator: true})
	check(err)
	check(ks.Engage(g.ctx, "alice", "incident drill"))
	g.clk.advance(time.Minute)
	_, err = ks.Resume(g.ctx, "alice")
	check(err)
	g.clk.advance(time.Minute)
	_, err = ks.Resume(g.ctx, "bob")
	check(err)
	for req := int64(1); req <= 4; req++ {
		id := g.reserve(guarantee(1, req))
		if req == 4 {
			check(g.l.Release(g.ctx, id, "backend_unavailable", "HSM session lost"))
		} else {
			g.commit(id, guarantee(1, req))
		}
		g.clk.advance(time.Minute)
	}
	g.collateral()
	g.reserve(guarantee(1, 5)) // the orphan: a crash before Commit
	g.clk.advance(time.Minute)
}

// collateral reserves a collateral transaction, writes its pending-broadcast mark as package
// pipeline does (UnbroadcastPrefix + lower-case wallet + "/" + 20-digit record id), signs it and
// never clears the mark (the broadcast did not happen).
func (g *gen) collateral() {
	claims := []byte(`{"v":1,"request":"dep-2026-03-02-1","index":0,"count":1,"kind":"deposit","tx":"0x02f86c0180843b9aca00850ba43b7400825208940000000000000000000000000000000000000001880de0b6b3a764000080c0"}`)
	r := reservation(big.NewInt(7001), big.NewInt(0), claims)
	r.Scheme, r.Rule = "tx-eip1559", "collateral-deposit"
	r.Charges = nil
	res, err := g.l.Reserve(g.ctx, r)
	check(err)
	if res.Outcome != ledger.Reserved {
		log.Fatalf("collateral: %v", res.Outcome)
	}
	mark := fmt.Sprintf("%s%s/%020d", ledger.UnbroadcastPrefix, strings.ToLower(wallet.Hex()), uint64(res.RecordID))
	ev := audit.Event{Kind: audit.KindBroadcast, Wallet: wallet.Hex(), TabID: "7001", ReqID: "0",
		RecordID: uint64(res.RecordID), Digest: r.Digest[:], Decision: "allow", Code: "broadcast_pending",
		Reason: "about to sign: the wallet's next transaction waits until this one is broadcast",
		Attrs:  map[string]string{"action": "deposit", "request_id": "dep-2026-03-02-1", "kind": "deposit", "nonce": "0"}}
	check(g.l.PutState(g.ctx, mark, []byte(`{"request_id":"dep-2026-03-02-1","tab":"7001","index":0}`), ev))
	g.commit(res.RecordID, r)
	g.clk.advance(time.Minute)
}

// prune archives and prunes what is older than before, as signerctl ledger prune does.
func (g *gen) prune(before time.Time) {
	var buf bytes.Buffer
	sum, err := g.l.ExportArchive(&buf, before)
	check(err)
	if _, err := ledger.VerifyArchive(bytes.NewReader(buf.Bytes())); err != nil {
		log.Fatal(err)
	}
	done, err := g.l.Prune(g.ctx, ledger.PruneRequest{Before: before, Plan: sum.Plan, ArchiveSHA256: sum.SHA256, Operator: "alice"})
	check(err)
	if done.PaymentRecords != 4 || done.AuditRecords == 0 {
		log.Fatalf("prune: %+v", done)
	}
	g.clk.advance(time.Minute)
}

// day4 writes the records that stay: signed, released, an approval, a key operation and an
// engaged kill switch.
func (g *gen) day4() {
	am, err := approvals.New(approvals.Options{Auditor: g.l, Clock: g.clk})
	check(err)
	for req := int64(1); req <= 3; req++ {
		r := guarantee(2, req)
		if req == 2 {
			a, err := am.Submit(g.ctx, approvals.Request{Key: sha256.Sum256(r.Claims), Agent: r.Agent, Principal: r.Principal,
				Wallet: wallet.Hex(), Rule: "large-payment", Summary: map[string]string{"amount": "100", "tab_id": "2"}})
			check(err)
			g.clk.advance(time.Minute)
			_, err = am.Approve(g.ctx, a.ID, "bob")
			check(err)
		}
		id := g.reserve(r)
		if req == 3 {
			check(g.l.Release(g.ctx, id, "signing_failed", "signature did not recover to the wallet"))
		} else {
			g.commit(id, r)
		}
		g.clk.advance(time.Minute)
	}
	g.audit(audit.Event{Kind: audit.KindKeyOp, Operator: "alice", Wallet: wallet.Hex(), Reason: "key listed",
		Attrs: map[string]string{"action": "list"}})
	ks, err := killswitch.New(killswitch.Options{Store: g.l, Clock: g.clk, RequireSecondOperator: true})
	check(err)
	check(ks.Engage(g.ctx, "carol", "suspicious spend"))
}

// guarantee is the reservation of a payment guarantee (tab, req) with the three charges.
func guarantee(tab, req int64) ledger.Reservation {
	claims := fmt.Sprintf(`{"user_address":"%s","recipient_address":"0x000000000000000000000000000000000000beef","tab_id":"%d","req_id":"%d","amount":"100","asset_address":"0x0000000000000000000000000000000000000000","timestamp":%d}`,
		strings.ToLower(wallet.Hex()), tab, req, T0.Unix()+tab*1000+req)
	r := reservation(big.NewInt(tab), big.NewInt(req), []byte(claims))
	r.Charges = []policyengine.Charge{
		{Budget: "daily", Key: "daily/agent-a", Window: 24 * time.Hour, Limit: big.NewInt(10000), Amount: big.NewInt(100)},
		{Budget: "life", Key: "life/agent-a", Limit: big.NewInt(1000000), Amount: big.NewInt(100)},
		{Budget: "rate", Key: "rate/agent-a", Window: time.Hour, Limit: big.NewInt(60), Amount: big.NewInt(1), Count: true},
	}
	return r
}

func reservation(tab, req *big.Int, claims []byte) ledger.Reservation {
	return ledger.Reservation{Wallet: wallet, TabID: tab, ReqID: req, Claims: claims,
		Principal: "uid:1000", Agent: "agent-a", PolicyHash: bytes.Repeat([]byte{0xab}, 32), Rule: "agents-daily",
		Digest: crypto.Keccak256Hash(claims), Scheme: "eip712", TaskID: fmt.Sprintf("task-%s-%s", tab, req)}
}

// reserve reserves r and insists on a new record.
func (g *gen) reserve(r ledger.Reservation) ledger.RecordID {
	res, err := g.l.Reserve(g.ctx, r)
	check(err)
	if res.Outcome != ledger.Reserved {
		log.Fatalf("reserve tab %s req %s: %v", r.TabID, r.ReqID, res.Outcome)
	}
	return res.RecordID
}

// commit signs r's digest with the wallet key and commits the signature.
func (g *gen) commit(id ledger.RecordID, r ledger.Reservation) {
	sig, err := crypto.Sign(r.Digest[:], key)
	check(err)
	sig[64] += 27
	_, err = g.l.Commit(g.ctx, id, sig)
	check(err)
}

func (g *gen) audit(ev audit.Event) {
	_, err := g.l.AppendAudit(g.ctx, ev)
	check(err)
	g.clk.advance(time.Minute)
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
