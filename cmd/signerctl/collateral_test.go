package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

const depositAnswer = `{"action":"deposit","wallet":"0x00000000000000000000000000000000000000a1","asset":"0x0000000000000000000000000000000000000000","amount":"10000000000000000","tx_hashes":["0xabc1"],"record_ids":["7"],"status":"mined","blocks":[12]}`

// TestCollateralCommands: each subcommand sends the documented body to the agent socket
// (found through SIGNERD_AGENT_SOCKET), prints the answer, and refuses bad usage before
// sending anything.
func TestCollateralCommands(t *testing.T) {
	f := newFake(t, map[string]func(http.ResponseWriter, string){
		"POST /v1/collateral": reply(200, depositAnswer),
		"GET /v1/collateral": reply(200, `{"wallet":"0x00000000000000000000000000000000000000a1","asset":"0x0000000000000000000000000000000000000000",
			"registered":true,"total":"1000","locked":"100","pending_withdrawal":"50","free":"850","pending_known":true}`),
	})
	t.Setenv("SIGNERD_AGENT_SOCKET", f.sock)

	out, errOut, code := ctl("collateral", "deposit", "--asset", "0x0000000000000000000000000000000000000000", "--amount", "10000000000000000", "--request-id", "dep-1", "--wait")
	if code != exitOK || !strings.Contains(out, "tx 0xabc1 record 7 block 12") || !strings.Contains(out, "mined") {
		t.Fatalf("deposit: %d %q %q", code, out, errOut)
	}
	var body map[string]any
	if err := json.Unmarshal([]byte(strings.SplitN(f.last(), " ", 3)[2]), &body); err != nil {
		t.Fatal(err)
	}
	if body["action"] != "deposit" || body["amount"] != "10000000000000000" || body["request_id"] != "dep-1" || body["wait"] != true ||
		body["asset"] != "0x0000000000000000000000000000000000000000" {
		t.Fatalf("deposit body %v", body)
	}

	if _, _, code := ctl("collateral", "pay-tab", "--tab-id", "0x2a", "--req-id", "3", "--amount", "5", "--request-id", "p-1"); code != exitOK {
		t.Fatalf("pay-tab: %d", code)
	}
	if !strings.Contains(f.last(), `"action":"pay_tab"`) || !strings.Contains(f.last(), `"tab_id":"0x2a"`) || !strings.Contains(f.last(), `"req_id":"3"`) {
		t.Fatalf("pay-tab body: %s", f.last())
	}
	if _, _, code := ctl("collateral", "finalize-withdrawal", "--asset", "0x0000000000000000000000000000000000000000", "--request-id", "f-1"); code != exitOK ||
		!strings.Contains(f.last(), `"action":"finalize_withdrawal"`) || strings.Contains(f.last(), "amount") {
		t.Fatalf("finalize: %d %s", code, f.last())
	}

	out, _, code = ctl("collateral", "show", "--asset", "0x0000000000000000000000000000000000000000")
	if code != exitOK || !strings.Contains(out, "free 850") || !strings.Contains(f.last(), "GET /v1/collateral?asset=0x0000000000000000000000000000000000000000") {
		t.Fatalf("show: %d %q %s", code, out, f.last())
	}

	n := len(f.reqs)
	for _, args := range [][]string{
		{"collateral"},
		{"collateral", "deposit", "--asset", "0x0000000000000000000000000000000000000000", "--amount", "1"},     // no request id
		{"collateral", "deposit", "--asset", "0x0000000000000000000000000000000000000000", "--request-id", "x"}, // no amount
		{"collateral", "cancel-withdrawal", "--asset", "0x00", "--amount", "1", "--request-id", "x"},            // amount on cancel
		{"collateral", "pay-tab", "--amount", "1", "--request-id", "x"},                                         // no tab
		{"collateral", "withdraw", "--amount", "1", "--request-id", "x"},                                        // no asset
		{"collateral", "bogus"},
	} {
		if _, _, code := ctl(args...); code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, exitUsage)
		}
	}
	if len(f.reqs) != n {
		t.Fatal("a usage error reached the daemon")
	}
}

func TestCollateralRefusalAndCoreStatus(t *testing.T) {
	f := newFake(t, map[string]func(http.ResponseWriter, string){
		"POST /v1/collateral": reply(502, `{"error":{"code":"broadcast_failed","reason":"transaction 0xfeed is signed and recorded but the Ethereum RPC did not take it","record_id":"9"}}`),
		"GET /v1/admin/core":  reply(200, `{"configured":true,"url":"http://core.test","domain_ok":true,"params":{"chain_id":84532,"contract":"0x1111111111111111111111111111111111111111","eip712_name":"4mica","eip712_version":"1"}}`),
	})
	_, errOut, code := ctl("collateral", "deposit", "--agent-socket", f.sock, "--asset", "0x0000000000000000000000000000000000000000", "--amount", "1", "--request-id", "d")
	if code != exitRefused || !strings.Contains(errOut, "broadcast_failed") || !strings.Contains(errOut, "0xfeed") {
		t.Fatalf("refusal: %d %q", code, errOut)
	}
	out, _, code := ctl("core", "status", "--socket", f.sock)
	if code != exitOK || !strings.Contains(out, "domain checked") || !strings.Contains(out, "chain_id 84532") {
		t.Fatalf("core status: %d %q", code, out)
	}
	if _, _, code := ctl("collateral", "show", "--agent-socket", "/nonexistent/agent.sock"); code != exitUnreachable {
		t.Fatalf("unreachable: exit %d", code)
	}
}

// TestCollateralDroppedAndPendingBroadcast: a 200 answer with status dropped prints the status,
// its note and a clear "send it again with a new request id", and exits non-zero (the request
// did not happen); a 409 pending_broadcast names the request_id to retry first.
func TestCollateralDroppedAndPendingBroadcast(t *testing.T) {
	dropped := `{"action":"deposit","wallet":"0x00000000000000000000000000000000000000a1","asset":"0x0000000000000000000000000000000000000000","amount":"5",` +
		`"tx_hashes":["0xdead"],"record_ids":["4"],"status":"dropped","replayed":true,"note":"transaction 0xdead can never be mined: its nonce was used by another transaction of the wallet"}`
	pending := `{"error":{"code":"pending_broadcast","reason":"transaction 0 of request_id dep-7 (record 12) is signed but its broadcast is not confirmed; send that request again (same request_id) first: a new transaction would take its nonce","record_id":"12"}}`
	f := newFake(t, map[string]func(http.ResponseWriter, string){
		"POST /v1/collateral": func(w http.ResponseWriter, body string) {
			if strings.Contains(body, `"request_id":"dep-8"`) {
				reply(409, pending)(w, body)
				return
			}
			reply(200, dropped)(w, body)
		},
	})
	t.Setenv("SIGNERD_AGENT_SOCKET", f.sock)
	out, errOut, code := ctl("collateral", "deposit", "--asset", "0x0000000000000000000000000000000000000000", "--amount", "5", "--request-id", "dep-6")
	if code != exitRefused || !strings.Contains(out, ": dropped") || !strings.Contains(out, "tx 0xdead record 4") ||
		!strings.Contains(out, "can never be mined") || !strings.Contains(errOut, "DROPPED") || !strings.Contains(errOut, "NEW --request-id") {
		t.Fatalf("dropped: exit %d\nstdout %q\nstderr %q", code, out, errOut)
	}
	if _, _, code := ctl("collateral", "deposit", "--json", "--asset", "0x0000000000000000000000000000000000000000", "--amount", "5", "--request-id", "dep-6"); code != exitRefused {
		t.Fatalf("dropped --json: exit %d", code)
	}
	_, errOut, code = ctl("collateral", "deposit", "--asset", "0x0000000000000000000000000000000000000000", "--amount", "5", "--request-id", "dep-8")
	if code != exitRefused || !strings.Contains(errOut, "HTTP 409") || !strings.Contains(errOut, "pending_broadcast") ||
		!strings.Contains(errOut, "request_id dep-7 (record 12)") || !strings.Contains(errOut, "Retry that request first") {
		t.Fatalf("pending_broadcast: exit %d\nstderr %q", code, errOut)
	}
	t.Logf("pending_broadcast output:\n%s", errOut)
}
