package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
)

// rawCase is one hostile request written byte for byte on a fresh connection.
type rawCase struct {
	name   string
	raw    []byte        // the whole request (headers and body)
	parts  [][]byte      // or: written in parts with pause between them (slow clients)
	pause  time.Duration //
	half   bool          // close the write side after writing (body shorter than Content-Length)
	status int           // expected status
	code   string        // expected error code ("" = do not check)
}

func post(path, ctype string, body []byte) []byte {
	h := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: signerd\r\nContent-Length: %d\r\n", path, len(body))
	if ctype != "" {
		h += "Content-Type: " + ctype + "\r\n"
	}
	return append([]byte(h+"Connection: close\r\n\r\n"), body...)
}

func jpost(body string) []byte { return post("/v1/guarantees", "application/json", []byte(body)) }

func cpost(body []byte) []byte { return post("/v1/guarantees", "application/cbor", body) }

func mustCBOR(v any) []byte {
	b, err := cbor.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func (rc rawCase) do(sock string) (int, []byte, error) {
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return 0, nil, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	if rc.parts == nil {
		conn.Write(rc.raw) // the daemon may answer and close before reading it all (431, 413)
	} else {
		for i, p := range rc.parts {
			if i > 0 {
				time.Sleep(rc.pause)
			}
			if _, err := conn.Write(p); err != nil {
				break // the daemon may close a slow client
			}
		}
	}
	if rc.half {
		conn.(*net.UnixConn).CloseWrite()
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, nil, nil // closed without an answer
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	return resp.StatusCode, buf.Bytes(), nil
}

func TestHostileRequests(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.start()
	good := newClaims("5")
	goodJSON := func(mut func(m map[string]any)) string {
		c := map[string]any{}
		for k, v := range good {
			c[k] = v
		}
		body := map[string]any{"claims": c}
		mut(body)
		b, _ := json.Marshal(body)
		return string(b)
	}
	setClaim := func(k string, v any) func(m map[string]any) {
		return func(m map[string]any) { m["claims"].(map[string]any)[k] = v }
	}
	nested := strings.Repeat("[", 100000) + strings.Repeat("]", 100000)
	bigPad := `{"claims":` + strings.Repeat(" ", 70<<10) + `{}}`
	okCBOR := mustCBOR(map[string]any{"claims": map[string]any(good), "scheme": "eip712"})
	cases := []rawCase{
		// JSON bodies.
		{name: "empty body", raw: jpost(""), status: 400, code: "invalid_request"},
		{name: "truncated object", raw: jpost(`{"claims": {`), status: 400, code: "invalid_request"},
		{name: "array", raw: jpost(`[]`), status: 400, code: "invalid_request"},
		{name: "null", raw: jpost(`null`), status: 400, code: "invalid_request"},
		{name: "string", raw: jpost(`"hello"`), status: 400, code: "invalid_request"},
		{name: "number", raw: jpost(`123`), status: 400, code: "invalid_request"},
		{name: "empty object", raw: jpost(`{}`), status: 400, code: "invalid_request"},
		{name: "unknown top-level field", raw: jpost(goodJSON(func(m map[string]any) { m["extra"] = 1 })), status: 400, code: "invalid_request"},
		{name: "unknown claims field", raw: jpost(goodJSON(setClaim("extra", "x"))), status: 400, code: "invalid_request"},
		{name: "claims is a string", raw: jpost(`{"claims":"x"}`), status: 400, code: "invalid_request"},
		{name: "claims is an array", raw: jpost(`{"claims":[1,2]}`), status: 400, code: "invalid_request"},
		{name: "amount negative", raw: jpost(goodJSON(setClaim("amount", "-1"))), status: 400, code: "invalid_request"},
		{name: "amount over 2^256", raw: jpost(goodJSON(setClaim("amount", "0x1"+strings.Repeat("0", 64)))), status: 400, code: "invalid_request"},
		{name: "amount not a number", raw: jpost(goodJSON(setClaim("amount", "ten"))), status: 400, code: "invalid_request"},
		{name: "amount is an object", raw: jpost(goodJSON(setClaim("amount", map[string]any{"v": 1}))), status: 400, code: "invalid_request"},
		{name: "tab_id not hex", raw: jpost(goodJSON(setClaim("tab_id", "0xzz"))), status: 400, code: "invalid_request"},
		{name: "req_id is a bool", raw: jpost(goodJSON(setClaim("req_id", true))), status: 400, code: "invalid_request"},
		{name: "user_address too short", raw: jpost(goodJSON(setClaim("user_address", "0x1234"))), status: 400, code: "invalid_request"},
		{name: "recipient missing", raw: jpost(goodJSON(func(m map[string]any) { delete(m["claims"].(map[string]any), "recipient_address") })), status: 400, code: "invalid_request"},
		{name: "asset is a number", raw: jpost(goodJSON(setClaim("asset_address", 42))), status: 400, code: "invalid_request"},
		{name: "timestamp is a string", raw: jpost(goodJSON(setClaim("timestamp", "yesterday"))), status: 400, code: "invalid_request"},
		{name: "timestamp negative", raw: jpost(goodJSON(setClaim("timestamp", -5))), status: 400, code: "invalid_request"},
		{name: "timestamp fractional", raw: jpost(goodJSON(setClaim("timestamp", 1.5))), status: 400, code: "invalid_request"},
		{name: "version v3", raw: jpost(goodJSON(setClaim("version", "v3"))), status: 400, code: "invalid_request"},
		{name: "scheme unknown", raw: jpost(goodJSON(func(m map[string]any) { m["scheme"] = "rsa" })), status: 400, code: "invalid_request"},
		{name: "wallet not an address", raw: jpost(goodJSON(func(m map[string]any) { m["wallet"] = "alice" })), status: 400, code: "invalid_request"},
		{name: "task labels an array", raw: jpost(goodJSON(func(m map[string]any) { m["task"] = map[string]any{"id": "t", "labels": []int{1}} })), status: 400, code: "invalid_request"},
		{name: "task id a number", raw: jpost(goodJSON(func(m map[string]any) { m["task"] = map[string]any{"id": 7} })), status: 400, code: "invalid_request"},
		{name: "trailing garbage", raw: jpost(goodJSON(func(map[string]any) {}) + " x"), status: 400, code: "invalid_request"},
		{name: "two JSON values", raw: jpost(goodJSON(func(map[string]any) {}) + goodJSON(func(map[string]any) {})), status: 400, code: "invalid_request"},
		{name: "100k nested arrays", raw: jpost(nested), status: 413},
		{name: "invalid UTF-8", raw: jpost("{\"claims\":{\"version\":\"v1\xff\xfe\"}}"), status: 400, code: "invalid_request"},
		{name: "NUL bytes", raw: jpost("{\"claims\":\x00\x00}"), status: 400, code: "invalid_request"},
		{name: "body over the limit", raw: jpost(bigPad), status: 413},
		{name: "huge declared length", raw: []byte("POST /v1/guarantees HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n{"), half: true, status: 413},
		{name: "body shorter than Content-Length", raw: []byte("POST /v1/guarantees HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"claims\":"), half: true, status: 400},
		{name: "content type text/plain", raw: post("/v1/guarantees", "text/plain", []byte(goodJSON(func(map[string]any) {}))), status: 415},
		{name: "content type xml", raw: post("/v1/guarantees", "application/xml", []byte("<claims/>")), status: 415},
		// CBOR bodies.
		{name: "cbor garbage", raw: cpost([]byte{0xff, 0xff, 0x00}), status: 400, code: "invalid_request"},
		{name: "cbor truncated map", raw: cpost([]byte{0xa1}), status: 400, code: "invalid_request"},
		{name: "cbor integer", raw: cpost([]byte{0x01}), status: 400, code: "invalid_request"},
		{name: "cbor unknown field", raw: cpost(mustCBOR(map[string]any{"claims": map[string]any(good), "bogus": 1})), status: 400, code: "invalid_request"},
		{name: "cbor claims wrong type", raw: cpost(mustCBOR(map[string]any{"claims": []int{1, 2, 3}})), status: 400, code: "invalid_request"},
		{name: "cbor huge declared byte string", raw: cpost([]byte{0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}), status: 400, code: "invalid_request"},
		{name: "cbor deep nesting", raw: cpost(append(bytes.Repeat([]byte{0x81}, 20000), 0x00)), status: 400, code: "invalid_request"},
		{name: "cbor integer map keys", raw: cpost(mustCBOR(map[int]any{1: "x"})), status: 400, code: "invalid_request"},
		// HTTP level.
		{name: "GET on a POST route", raw: []byte("GET /v1/guarantees HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), status: 405, code: "method_not_allowed"},
		{name: "PUT on a POST route", raw: post("/v1/guarantees", "application/json", []byte("{}"))[:0], status: 0},
		{name: "unknown path", raw: post("/v1/nothing", "application/json", []byte("{}")), status: 404},
		{name: "admin route on the agent socket", raw: post("/v1/admin/kill-switch", "application/json", []byte(`{"engaged":true,"reason":"x"}`)), status: 404},
		{name: "not HTTP", raw: []byte("HELLO THERE\r\n\r\n"), status: 400},
		{name: "huge header", raw: []byte("GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 2<<20) + "\r\n\r\n"), status: 431},
		{name: "bad chunked body", raw: []byte("POST /v1/guarantees HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"), status: 400},
		{name: "x402 bad base64 header", raw: post("/v1/x402/payments", "application/json", []byte(`{"payment_required_header":"!!!not base64!!!","tab":{"tab_id":"0x1","next_req_id":"0x0"}}`)), status: 400, code: "invalid_request"},
		{name: "x402 requirements wrong type", raw: post("/v1/x402/payments", "application/json", []byte(`{"requirements":"x","tab":{"tab_id":"0x1","next_req_id":"0x0"}}`)), status: 400, code: "invalid_request"},
		{name: "unknown approval", raw: []byte("GET /v1/approvals/apr_nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), status: 404},
		// Slow clients.
		{name: "slow headers", parts: [][]byte{[]byte("POST /v1/guarantees HTTP/1.1\r\nHo"), []byte("st: x\r\n")}, pause: 1500 * time.Millisecond, status: 400},
		{name: "slow body", parts: [][]byte{[]byte("POST /v1/guarantees HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"cla"), []byte("ims\":")}, pause: 2500 * time.Millisecond, status: 400},
	}
	// Replace the placeholder PUT case with a real one.
	for i := range cases {
		if cases[i].name == "PUT on a POST route" {
			cases[i].raw = []byte("PUT /v1/guarantees HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
			cases[i].status, cases[i].code = 405, "method_not_allowed"
		}
	}
	if len(cases) < 40 {
		t.Fatalf("only %d hostile cases", len(cases))
	}
	c := e.agentClient()
	for i, rc := range cases {
		t.Run(rc.name, func(t *testing.T) {
			st, body, err := rc.do(e.agent)
			if err != nil {
				t.Fatal(err)
			}
			if st != rc.status {
				t.Fatalf("status %d, want %d: %.300s", st, rc.status, body)
			}
			if rc.code != "" {
				if ae := errOf(body); ae.Code != rc.code || ae.Reason == "" {
					t.Fatalf("error %s, want code %s", body, rc.code)
				}
			}
		})
		// The daemon keeps serving after every case.
		if i%8 == 7 || i == len(cases)-1 {
			if st, _, ae, err := sign(c, newClaims("3"), nil); st != 200 {
				t.Fatalf("after %q the daemon no longer signs: %d %+v %v\n%s", rc.name, st, ae, err, e.log())
			}
		}
	}
	// A well-formed CBOR request is signed, and the answer is CBOR.
	st, body, _ := rawCase{raw: cpost(okCBOR)}.do(e.agent)
	if st != 200 {
		t.Fatalf("good CBOR request: %d %x", st, body)
	}
	var g map[string]any
	if err := cbor.Unmarshal(body, &g); err != nil || g["signature"] == nil {
		t.Fatalf("CBOR answer: %v %x", err, body)
	}
	if st, _, _ := e.agentClient().call("GET", "/v1/health", nil); st != 200 {
		t.Fatal("daemon unhealthy after the hostile table")
	}
}
