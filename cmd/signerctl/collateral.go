package main

// Collateral commands talk to the AGENT socket (--agent-socket, default $SIGNERD_AGENT_SOCKET or
// /run/signerd/agent.sock): the policy decides by the caller's identity, so they act as the
// agent whose uid runs them. `core status` is an admin command (admin socket).

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"regexp"
	"strings"

	"github.com/signerd/signerd/signerd/client"
)

// defaultAgentSocket is where signerctl looks for the agent socket when neither --agent-socket
// nor SIGNERD_AGENT_SOCKET says otherwise.
const defaultAgentSocket = "/run/signerd/agent.sock"

func agentSocket(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if env := os.Getenv("SIGNERD_AGENT_SOCKET"); env != "" {
		return env
	}
	return defaultAgentSocket
}

func init() {
	register("collateral", "show, deposit, withdraw or pay tabs through the agent socket (collateral show|deposit|withdraw|cancel-withdrawal|finalize-withdrawal|pay-tab)", cmdCollateral)
	register("core", "show the daemon's 4Mica Core connection (core status)", cmdCore)
}

const collateralUsage = `usage:
  signerctl collateral show [--wallet W] [--asset A]
  signerctl collateral deposit|withdraw --asset A --amount N --request-id ID [--wallet W] [--wait]
  signerctl collateral cancel-withdrawal|finalize-withdrawal --asset A --request-id ID [--wallet W] [--wait]
  signerctl collateral pay-tab --tab-id T --req-id R --amount N --request-id ID [--asset A] [--wallet W] [--wait]
common flags: --agent-socket PATH (default $SIGNERD_AGENT_SOCKET or ` + defaultAgentSocket + `), --json
amounts and ids: decimal or 0x hex base units; asset 0x0000000000000000000000000000000000000000 is ETH.
A request_id is your idempotency key: sending the same request again with it never makes a
second transaction (a failed broadcast is retried with the same signed transaction).`

// collateralAnswer mirrors POST /v1/collateral's answer.
type collateralAnswer struct {
	Action    string   `json:"action"`
	Wallet    string   `json:"wallet"`
	Asset     string   `json:"asset"`
	Amount    string   `json:"amount,omitempty"`
	PayTo     string   `json:"pay_to,omitempty"`
	TxHashes  []string `json:"tx_hashes"`
	RecordIDs []string `json:"record_ids"`
	Status    string   `json:"status"`
	Replayed  bool     `json:"replayed,omitempty"`
	Blocks    []uint64 `json:"blocks,omitempty"`
	Note      string   `json:"note,omitempty"`
}

func cmdCollateral(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(stderr, collateralUsage)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	sub := args[0]
	action := map[string]string{"deposit": "deposit", "withdraw": "withdraw", "cancel-withdrawal": "cancel_withdrawal",
		"finalize-withdrawal": "finalize_withdrawal", "pay-tab": "pay_tab"}[sub]
	if sub != "show" && action == "" {
		fmt.Fprintf(stderr, "signerctl collateral: unknown subcommand %q\n%s\n", sub, collateralUsage)
		return exitUsage
	}
	fs := flag.NewFlagSet("signerctl collateral "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintln(stderr, collateralUsage) }
	sock := fs.String("agent-socket", "", "agent socket path")
	asJSON := fs.Bool("json", false, "print the daemon's answer as JSON")
	wallet := fs.String("wallet", "", "wallet address (default: the agent's first wallet)")
	asset := fs.String("asset", "", "asset address (0x000…000 = ETH)")
	amount := fs.String("amount", "", "amount in base units")
	requestID := fs.String("request-id", "", "idempotency key (≤ 128 printable characters)")
	tabID := fs.String("tab-id", "", "tab id (pay-tab)")
	reqID := fs.String("req-id", "", "req id (pay-tab)")
	wait := fs.Bool("wait", false, "wait until the transactions are mined")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "signerctl collateral %s: unexpected argument %q\n", sub, fs.Arg(0))
		return exitUsage
	}
	af := &adminFlags{json: asJSON, socket: new(string)}
	c := client.New(agentSocket(*sock))

	if sub == "show" {
		if *amount != "" || *requestID != "" || *tabID != "" || *reqID != "" || *wait {
			fmt.Fprintln(stderr, "signerctl collateral show: only --wallet and --asset apply")
			return exitUsage
		}
		q := url.Values{}
		if *wallet != "" {
			q.Set("wallet", *wallet)
		}
		if *asset != "" {
			q.Set("asset", *asset)
		}
		path := "/v1/collateral"
		if len(q) > 0 {
			path += "?" + q.Encode()
		}
		var out map[string]any
		if err := c.Do("GET", path, nil, &out); err != nil {
			return af.fail(err, stdout, stderr)
		}
		if *asJSON {
			printJSON(stdout, out)
			return exitOK
		}
		fmt.Fprintf(stdout, "wallet %v asset %v\n", out["wallet"], out["asset"])
		fmt.Fprintf(stdout, "  total %v  locked %v  pending withdrawal %v  free %v\n", out["total"], out["locked"], out["pending_withdrawal"], out["free"])
		if out["registered"] == false {
			fmt.Fprintln(stdout, "  not registered with Core (no deposit seen): Core refuses guarantees for this wallet")
		}
		if out["pending_known"] != true {
			fmt.Fprintln(stdout, "  pending withdrawal unknown: free is an upper bound")
		}
		return exitOK
	}

	if *requestID == "" {
		fmt.Fprintf(stderr, "signerctl collateral %s: --request-id is required (an idempotency key of your choice)\n", sub)
		return exitUsage
	}
	body := map[string]any{"action": action, "request_id": *requestID}
	if *wallet != "" {
		body["wallet"] = *wallet
	}
	if *asset != "" {
		body["asset"] = *asset
	}
	switch action {
	case "deposit", "withdraw", "pay_tab":
		if *amount == "" {
			fmt.Fprintf(stderr, "signerctl collateral %s: --amount is required\n", sub)
			return exitUsage
		}
		body["amount"] = *amount
	default:
		if *amount != "" {
			fmt.Fprintf(stderr, "signerctl collateral %s: --amount does not apply (the contract acts on the pending withdrawal)\n", sub)
			return exitUsage
		}
	}
	if action == "pay_tab" {
		if *tabID == "" || *reqID == "" {
			fmt.Fprintln(stderr, "signerctl collateral pay-tab: --tab-id and --req-id are required")
			return exitUsage
		}
		body["tab_id"], body["req_id"] = *tabID, *reqID
	} else {
		if *tabID != "" || *reqID != "" {
			fmt.Fprintf(stderr, "signerctl collateral %s: --tab-id and --req-id are for pay-tab only\n", sub)
			return exitUsage
		}
		if *asset == "" {
			fmt.Fprintf(stderr, "signerctl collateral %s: --asset is required (0x0000000000000000000000000000000000000000 = ETH)\n", sub)
			return exitUsage
		}
	}
	if *wait {
		body["wait"] = true
	}
	var out collateralAnswer
	if err := c.Do("POST", "/v1/collateral", body, &out); err != nil {
		code := af.fail(err, stdout, stderr)
		if hint := collateralHint(err, *requestID); hint != "" && !*asJSON {
			fmt.Fprintln(stderr, hint)
		}
		return code
	}
	if *asJSON {
		printJSON(stdout, out)
		if out.Status == "dropped" {
			return exitRefused
		}
		return exitOK
	}
	what := out.Action
	if out.Amount != "" {
		what += " " + out.Amount
	}
	what += " of " + out.Asset
	if out.PayTo != "" {
		what += " to " + out.PayTo
	}
	again := ""
	if out.Replayed {
		again = " (already signed under this request id: same transactions)"
	}
	fmt.Fprintf(stdout, "%s from %s: %s%s\n", what, out.Wallet, out.Status, again)
	for i, h := range out.TxHashes {
		rec := ""
		if i < len(out.RecordIDs) {
			rec = " record " + out.RecordIDs[i]
		}
		block := ""
		if i < len(out.Blocks) {
			block = fmt.Sprintf(" block %d", out.Blocks[i])
		}
		fmt.Fprintf(stdout, "  tx %s%s%s\n", h, rec, block)
	}
	if out.Note != "" {
		fmt.Fprintln(stdout, "  "+out.Note)
	}
	if out.Status == "dropped" {
		// Not done: the answer is 200, but nothing of this request will happen on chain.
		fmt.Fprintf(stderr, "signerctl: request %s was DROPPED: its transaction can never be mined (another transaction took its nonce); "+
			"nothing after it was sent. Send it again with a NEW --request-id.\n", *requestID)
		return exitRefused
	}
	return exitOK
}

// requestIDInReason finds the request_id a collateral refusal names ("… request_id X …").
var requestIDInReason = regexp.MustCompile(`request_id (\S+)\s`)

// collateralHint says what to do after a collateral refusal that asks for a retry: "" when
// the refusal needs no hint.
func collateralHint(err error, requestID string) string {
	var ae *client.Error
	if !errors.As(err, &ae) {
		return ""
	}
	rec := ""
	if ae.RecordID != "" {
		rec = " (record " + ae.RecordID + ")"
	}
	switch ae.Code {
	case "pending_broadcast":
		other := "the request named above"
		if m := requestIDInReason.FindStringSubmatch(ae.Reason + " "); m != nil {
			other = "request_id " + m[1]
		}
		return fmt.Sprintf("  this wallet has a signed transaction whose broadcast is not confirmed: %s%s.\n"+
			"  Retry that request first (same command, same --request-id, amount and asset); then send this one again.", other, rec)
	case "broadcast_failed", "receipt_timeout", "chain_error":
		return fmt.Sprintf("  retry with the same --request-id %s: the same signed transaction is sent again (never a second one)%s.", requestID, rec)
	case "policy_changed":
		return "  the policy was reloaded since this request was reserved: send it again with a NEW --request-id."
	}
	return ""
}

func cmdCore(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "status" {
		fmt.Fprintln(stderr, "usage: signerctl core status [--socket PATH] [--json]")
		return exitUsage
	}
	a := newAdminFlags("core status", stderr)
	pos, err := a.parse(args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if len(pos) > 0 {
		fmt.Fprintf(stderr, "signerctl core status: unexpected argument %q\n", pos[0])
		return exitUsage
	}
	var out map[string]any
	if err := a.client().Do("GET", "/v1/admin/core", nil, &out); err != nil {
		return a.fail(err, stdout, stderr)
	}
	if *a.json {
		printJSON(stdout, out)
		return exitOK
	}
	if out["configured"] != true {
		fmt.Fprintln(stdout, "core: not configured (no core.url): collateral endpoints answer 503 core_unavailable")
		return exitOK
	}
	state := "domain checked"
	if out["domain_ok"] != true {
		state = "NOT AVAILABLE"
	}
	fmt.Fprintf(stdout, "core: %v (%s)\n", out["url"], state)
	if p, ok := out["params"].(map[string]any); ok {
		fmt.Fprintf(stdout, "  chain_id %v  contract %v  eip712 %v version %v\n", p["chain_id"], p["contract"], p["eip712_name"], p["eip712_version"])
	}
	var extra []string
	for _, k := range []string{"siwe_domain", "rpc", "contract_pinned", "last_attempt"} {
		if v, ok := out[k]; ok {
			extra = append(extra, fmt.Sprintf("%s %v", k, v))
		}
	}
	if len(extra) > 0 {
		fmt.Fprintln(stdout, "  "+strings.Join(extra, "  "))
	}
	if e, ok := out["last_error"]; ok {
		fmt.Fprintf(stdout, "  last error: %v\n", e)
	}
	return exitOK
}
