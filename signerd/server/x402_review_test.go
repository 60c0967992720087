package server_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"

	"github.com/signerd/signerd/signerd/config"
	"github.com/signerd/signerd/signerd/fourmica"
	"github.com/signerd/signerd/signerd/ledger"
)

// hostPolicy allows the tester to pay one seller, named by host only (as the README example
// does for "*.weather.example" and "api.news.example").
const hostPolicy = `version: 1
settings:
  max_timestamp_skew: 120s
assets:
  USDC:
    address: "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
    decimals: 6
agents:
  tester:
    callers:
      - uid: self
    wallets: any
rules:
  - id: trusted-host-only
    effect: allow
    agents: [tester]
    sellers: [api.trusted.example]
    networks: [eip155:84532]
    assets: [USDC]
    max_amount: "1 USDC"
`

// TestReviewX402HostComesFromSeller: the agent asks to pay a 402 it received from some server
// without saying which URL it fetched ("resource" omitted). The daemon takes the host the
// policy checks from the 402 body itself — written by the (possibly hostile) seller — so a
// seller that claims to be api.trusted.example is paid at an address nobody allowed.
func TestReviewX402HostComesFromSeller(t *testing.T) {
	d := startDaemon(t, func(c *config.Config) {
		p := filepath.Join(filepath.Dir(c.Policy), "host-policy.yaml")
		if err := os.WriteFile(p, []byte(hostPolicy), 0o600); err != nil {
			t.Fatal(err)
		}
		c.Policy = p
	})
	const attacker = "0xa77ac6e5000000000000000000000000000a77ac"
	hostile := `{"x402Version":1,"accepts":[{"scheme":"4mica-credit","network":"eip155:84532","maxAmountRequired":"900000","payTo":"` + attacker +
		`","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","resource":"https://api.trusted.example/data","extra":{"tabEndpoint":"https://evil.example/tab"}}]}`
	r := d.agent.do(t, "POST", "/v1/x402/payments", []byte(`{"requirements":`+hostile+`,"tab":{"tab_id":"0x77","next_req_id":1}}`))
	if r.Status == 200 {
		signed := d.checkSigned(t, r)
		t.Fatalf("signed a payment of %s to %s, an address the policy never allowed, because the seller's own 402 body claimed host api.trusted.example",
			signed.Claims.Payment().Amount.Dec(), signed.Claims.Payment().Recipient.Hex())
	}
	if r.Status != 403 {
		t.Fatalf("want 403 seller_not_allowed, got %d %s", r.Status, r.Raw)
	}
}

// TestReviewX402ApprovalResubmission: an x402 payment at or above the approval threshold is held
// (202 with an approval id). The operator approves; the agent re-submits the same 402 and tab a
// second later, as the 202 tells it to. The daemon rebuilds the claims with a new timestamp, so
// the fingerprint differs and the re-submission files a fresh approval instead of proceeding:
// an x402 payment that needs approval can never be signed (unless approved within the long poll).
func TestReviewX402ApprovalResubmission(t *testing.T) {
	d := startDaemon(t, nil)
	req := `{"x402Version":1,"accepts":[{"scheme":"4mica-credit","network":"eip155:84532","maxAmountRequired":"600000","payTo":"0x1234567890123456789012345678901234567890","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","resource":"https://api.example.com/x","extra":{"tabEndpoint":"https://api.example.com/tab"}}]}`
	body := []byte(`{"requirements":` + req + `,"tab":{"tab_id":"0x99","next_req_id":1}}`)
	r := d.agent.do(t, "POST", "/v1/x402/payments", body)
	if r.Status != 202 || r.errCode() != "approval_pending" {
		t.Fatalf("want 202 approval_pending: %d %s", r.Status, r.Raw)
	}
	id := r.errField("approval_id")
	if a := d.admin.do(t, "POST", "/v1/admin/approvals/"+id+"/approve", nil); a.Status != 200 {
		t.Fatalf("approve: %d %s", a.Status, a.Raw)
	}
	time.Sleep(1100 * time.Millisecond) // the agent comes back a second later
	again := d.agent.do(t, "POST", "/v1/x402/payments", body)
	if again.Status != 200 {
		t.Fatalf("approved x402 payment re-submitted: %d %s (first approval %s)", again.Status, again.Raw, id)
	}
	if !strings.Contains(again.str("header"), "X-PAYMENT") {
		t.Fatalf("answer: %s", again.Raw)
	}
}

// TestReviewX402RetryAfterReleasedReservation: a first attempt at an x402 payment was reserved
// and then released without a signature (the kill switch engaged between reservation and
// signing, the HSM failed, or a restart released the orphan). The agent retries a few minutes
// later. The handler finds the released record for (wallet, tab, req), rebuilds the claims with
// the old record's timestamp (to make retries identical) and the policy refuses them as stale:
// that payment can never be made again, although nothing was ever signed for it.
func TestReviewX402RetryAfterReleasedReservation(t *testing.T) {
	d := startDaemon(t, nil)
	req := `{"x402Version":1,"accepts":[{"scheme":"4mica-credit","network":"eip155:84532","maxAmountRequired":"1234","payTo":"0x1234567890123456789012345678901234567890","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","resource":"https://api.example.com/x","extra":{"tabEndpoint":"https://api.example.com/tab"}}]}`
	pr, err := fourmica.ParseRequirementsV1([]byte(req))
	if err != nil {
		t.Fatal(err)
	}
	opt, err := pr.Select("eip155:84532")
	if err != nil {
		t.Fatal(err)
	}
	user, err := fourmica.ParseAddress(d.wallet)
	if err != nil {
		t.Fatal(err)
	}
	tab, rq := fourmica.U256FromUint64(0x88), fourmica.U256FromUint64(1)
	old := uint64(time.Now().Add(-5 * time.Minute).Unix()) // the first attempt, five minutes ago
	claims, err := fourmica.BuildClaims(pr, opt, fourmica.TabInfo{TabID: tab, ReqID: rq, User: user}, user, old)
	if err != nil {
		t.Fatal(err)
	}
	canon, err := claims.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	digest, err := testDomain.Digest(claims, fourmica.SchemeEIP712)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	res, err := d.Ledger().Reserve(ctx, ledger.Reservation{Wallet: common.Address(user), TabID: tab.Big(), ReqID: rq.Big(), Claims: canon,
		Principal: "uid:test", Agent: "tester", Rule: "allow-usdc", Digest: digest, Scheme: "eip712"})
	if err != nil || res.Outcome != ledger.Reserved {
		t.Fatalf("reserve: %v %v", res.Outcome, err)
	}
	if err := d.Ledger().Release(ctx, res.RecordID, ledger.CodeSigningFailed, "signing failed: hsm: backend unavailable"); err != nil {
		t.Fatal(err)
	}
	r := d.agent.do(t, "POST", "/v1/x402/payments", []byte(`{"requirements":`+req+`,"tab":{"tab_id":"0x88","next_req_id":1}}`))
	if r.Status != 200 {
		t.Fatalf("retry of a payment whose only attempt was released unsigned: %d %s", r.Status, r.Raw)
	}
}
