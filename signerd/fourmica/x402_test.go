package fourmica

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

const sampleTimestamp = 1736000000

var samplePayer = Address{0x2b, 0x5a, 0xd5, 0xc4, 0x79, 0x5c, 0x02, 0x65, 0x14, 0xf8, 0x31, 0x7c, 0x7a, 0x21, 0x5e, 0x21, 0x8d, 0xcc, 0xd6, 0xcf}

func v2Header(t testing.TB) string {
	return base64.StdEncoding.EncodeToString(claimsTestdata(t, "x402/v2-payment-required.json"))
}

// The sample 402 answers plus the sample tab reply build exactly the sample claims, and the
// envelope carries the pre-signed sample request.
func TestX402SampleFlow(t *testing.T) {
	tab, err := ParseTabResponse(claimsTestdata(t, "x402/tab-response.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		parse   func() (*PaymentRequired, error)
		version string
		header  string
	}{
		{"v1", func() (*PaymentRequired, error) { return ParseRequirementsV1(claimsTestdata(t, "x402/v1-402.json")) }, "v1", HeaderXPayment},
		{"v2", func() (*PaymentRequired, error) { return ParseRequirementsV2(v2Header(t)) }, "v2", HeaderPaymentSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pr, err := tc.parse()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := pr.Select("eip155:1"); !errors.Is(err, ErrInvalid) {
				t.Fatalf("select on another network: %v", err)
			}
			r, err := pr.Select("eip155:84532")
			if err != nil {
				t.Fatal(err)
			}
			if r.Scheme != CreditScheme || r.ChainID != 84532 || r.TabEndpoint != "https://api.example.com/x402/tab" {
				t.Fatalf("selected %+v", r)
			}
			var tabReq map[string]any
			if err := json.Unmarshal(TabRequestBody(pr, r, samplePayer), &tabReq); err != nil {
				t.Fatal(err)
			}
			if tabReq["userAddress"] != samplePayer.Hex() || tabReq["x402Version"] != float64(pr.ClaimsVersion(r)) || tabReq["paymentRequirements"] == nil {
				t.Fatalf("tab request %v", tabReq)
			}
			c, err := BuildClaims(pr, r, tab, samplePayer, sampleTimestamp)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := json.Marshal(c)
			var want bytes.Buffer
			_ = json.Compact(&want, claimsTestdata(t, "claims-"+tc.version+".json"))
			if !bytes.Equal(got, want.Bytes()) {
				t.Fatalf("claims\n%s\nwant\n%s", got, want.Bytes())
			}
			req, err := DecodeRequest(claimsTestdata(t, "request-"+tc.version+".json"))
			if err != nil {
				t.Fatal(err)
			}
			name, value, err := BuildEnvelope(pr, r, req)
			if err != nil {
				t.Fatal(err)
			}
			if name != tc.header {
				t.Fatalf("header %s", name)
			}
			env, err := DecodeEnvelope(value)
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := base64.StdEncoding.DecodeString(value)
			var top map[string]json.RawMessage
			_ = json.Unmarshal(raw, &top)
			if tc.version == "v1" {
				if env.X402Version != 1 || env.Scheme != CreditScheme || env.Network != "eip155:84532" || top["accepted"] != nil {
					t.Fatalf("v1 envelope %s", raw)
				}
			} else {
				var acc, res map[string]any
				if env.X402Version != 2 || top["scheme"] != nil || json.Unmarshal(env.Accepted, &acc) != nil || json.Unmarshal(env.Resource, &res) != nil ||
					acc["scheme"] != CreditScheme || res["url"] != "https://api.example.com/report" {
					t.Fatalf("v2 envelope %s", raw)
				}
			}
			body, _ := json.Marshal(env.Payload)
			want.Reset()
			_ = json.Compact(&want, claimsTestdata(t, "request-"+tc.version+".json"))
			if !bytes.Equal(body, want.Bytes()) {
				t.Fatalf("payload %s", body)
			}
		})
	}
}

func TestX402BadInputs(t *testing.T) {
	v1 := string(claimsTestdata(t, "x402/v1-402.json"))
	v2 := string(claimsTestdata(t, "x402/v2-payment-required.json"))
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	cases := []struct {
		name, field string
		v2          bool
		in          string
	}{
		{"no 4mica-credit option", "accepts", false, strings.ReplaceAll(v1, `"4mica-credit"`, `"exact"`)},
		{"no tabEndpoint", "accepts[1].extra.tabEndpoint", false, strings.Replace(v1, `"tabEndpoint"`, `"tabEndPoint"`, 1)},
		{"no extra", "accepts[0].extra.tabEndpoint", true, `{"x402Version":2,"accepts":[{"scheme":"4mica-credit","network":"eip155:1","amount":"1","asset":"0x0000000000000000000000000000000000000000","payTo":"0x1234567890123456789012345678901234567890"}]}`},
		{"tabEndpoint not a URL", "accepts[1].extra.tabEndpoint", false, strings.Replace(v1, `https://api.example.com/x402/tab`, `/x402/tab`, 1)},
		{"wrong version", "x402Version", false, strings.Replace(v1, `"x402Version": 1`, `"x402Version": 2`, 1)},
		{"bad payTo", "accepts[1].payTo", false, strings.Replace(v1, `"payTo": "0x1234567890123456789012345678901234567890",
      "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
      "maxTimeoutSeconds": 300`, `"payTo": "0x12", "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "maxTimeoutSeconds": 300`, 1)},
		{"amount negative", "accepts[1].maxAmountRequired", false, strings.Replace(v1, `"maxAmountRequired": "1"`, `"maxAmountRequired": "-1"`, 1)},
		{"v2 amount above 2^256-1", "accepts[0].amount", true, strings.Replace(v2, `"amount": "1"`, `"amount": "0x1`+strings.Repeat("0", 64)+`"`, 1)},
		{"v2 score 0", "accepts[0].extra.minValidationScore", true, strings.Replace(v2, `"minValidationScore": 80`, `"minValidationScore": 0`, 1)},
		{"v2 score 101", "accepts[0].extra.minValidationScore", true, strings.Replace(v2, `"minValidationScore": 80`, `"minValidationScore": 101`, 1)},
		{"v2 zero job hash", "accepts[0].extra.jobHash", true, strings.Replace(v2, `0x1e8d7affdec8df51ae5319b51f761c1e6cd166e9fa61e013889f2e65136eb73a`, `0x`+strings.Repeat("0", 64), 1)},
		{"v2 short job hash", "accepts[0].extra.jobHash", true, strings.Replace(v2, `0x1e8d7affdec8df51ae5319b51f761c1e6cd166e9fa61e013889f2e65136eb73a`, `0x1e8d`, 1)},
		{"v2 partial policy", "accepts[0].extra.validatorAddress", true, strings.Replace(v2, `"validatorAddress"`, `"validator"`, 1)},
		{"v2 not base64", "PAYMENT-REQUIRED", true, "%%%"},
		{"accepts missing", "accepts", false, `{"x402Version":1}`},
		{"not an object", "payment required", false, `[]`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.v2 {
				in := tc.in
				if tc.in != "%%%" {
					in = b64(tc.in)
				}
				_, err = ParseRequirementsV2(in)
			} else {
				_, err = ParseRequirementsV1([]byte(tc.in))
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tc.field || !errors.Is(err, ErrInvalid) {
				t.Fatalf("got %v, want field %q", err, tc.field)
			}
		})
	}
}

func TestBuildClaimsRejects(t *testing.T) {
	pr, err := ParseRequirementsV2(v2Header(t))
	if err != nil {
		t.Fatal(err)
	}
	r, _ := pr.Select("")
	tab := TabInfo{TabID: U256FromUint64(7), ReqID: U256FromUint64(1), User: samplePayer}
	if _, err := BuildClaims(pr, r, TabInfo{User: Address{9}}, samplePayer, 1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("foreign tab accepted: %v", err)
	}
	zero := *r
	zero.Amount = U256{}
	if _, err := BuildClaims(pr, &zero, tab, samplePayer, 1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("zero amount accepted: %v", err)
	}
	other := *r
	pol := *r.Policy
	pol.ChainID = 1
	other.Policy = &pol
	if _, err := BuildClaims(pr, &other, tab, samplePayer, 1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("validationChainId ≠ network accepted: %v", err)
	}
	// Without a policy an x402 v2 option builds V1 claims (as @4mica/sdk 1.2.17).
	plain := *r
	plain.Policy = nil
	c, err := BuildClaims(pr, &plain, tab, samplePayer, 1)
	if err != nil || c.Version != V1 || pr.ClaimsVersion(&plain) != V1 {
		t.Fatalf("no-policy v2: %v %v", c.Version, err)
	}
}

func TestTabResponseForms(t *testing.T) {
	tab, err := ParseTabResponse([]byte(`{"tab_id":"42","user_address":"0x2B5AD5c4795c026514f8317c7a215E218DcCD6cF"}`))
	if err != nil || tab.TabID != U256FromUint64(42) || !tab.ReqID.IsZero() || tab.User != samplePayer {
		t.Fatalf("%+v %v", tab, err)
	}
	var fe *FieldError
	if _, err := ParseTabResponse([]byte(`{"userAddress":"0x2B5AD5c4795c026514f8317c7a215E218DcCD6cF"}`)); !errors.As(err, &fe) || fe.Field != "tabId" {
		t.Fatalf("missing tabId: %v", err)
	}
}
