package fourmica_test

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/signerd/signerd/signerd/fourmica"
)

// Decode Core wire-format claims, compute the digest Core verifies, verify a signed request.
func Example() {
	domain, err := fourmica.NewDomain("4mica", "1", 84532) // from GET /core/public-params
	if err != nil {
		panic(err)
	}
	raw, _ := os.ReadFile("../../testdata/claims/claims-v1.json")
	claims, err := fourmica.DecodeClaims(raw)
	if err != nil {
		panic(err)
	}
	digest, _ := domain.Digest(claims, fourmica.SchemeEIP712)
	fmt.Println("digest", digest)

	body, _ := os.ReadFile("../../testdata/claims/request-v1.json")
	req, err := fourmica.DecodeRequest(body)
	if err != nil {
		panic(err)
	}
	if _, err := domain.VerifyRequest(req); err == nil {
		fmt.Println("valid", req.Claims.Payment().User)
	}
	// Output:
	// digest 0x45d5cc33e27b21046565cb7716bd779dba93663e955e76f4b46bb01ec65a57be
	// valid 0x2b5ad5c4795c026514f8317c7a215e218dccd6cf
}

// The x402 4mica-credit flow: parse the 402, ask for a tab, build claims, sign (elsewhere),
// build the payment header.
func ExampleBuildClaims() {
	body, _ := os.ReadFile("../../testdata/claims/x402/v1-402.json")
	pr, err := fourmica.ParseRequirementsV1(body)
	if err != nil {
		panic(err)
	}
	option, _ := pr.Select("eip155:84532")
	payer, _ := fourmica.ParseAddress("0x2B5AD5c4795c026514f8317c7a215E218DcCD6cF")
	fmt.Printf("POST %s %s\n", option.TabEndpoint, fourmica.TabRequestBody(pr, option, payer)[:40])

	tabReply, _ := os.ReadFile("../../testdata/claims/x402/tab-response.json")
	tab, _ := fourmica.ParseTabResponse(tabReply)
	claims, err := fourmica.BuildClaims(pr, option, tab, payer, 1736000000)
	if err != nil {
		panic(err)
	}
	wire, _ := json.Marshal(claims)
	fmt.Println(string(wire[:60]))

	// ... digest, sign with the wallet key, NormalizeSignature ...
	signed, _ := os.ReadFile("../../testdata/claims/request-v1.json")
	req, _ := fourmica.DecodeRequest(signed)
	name, value, _ := fourmica.BuildEnvelope(pr, option, req)
	fmt.Println(name, len(value) > 0)
	// Output:
	// POST https://api.example.com/x402/tab {"x402Version":1,"userAddress":"0x2b5ad5
	// {"version":"v1","user_address":"0x2b5ad5c4795c026514f8317c7a
	// X-PAYMENT true
}
