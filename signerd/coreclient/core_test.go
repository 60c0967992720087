package coreclient_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"

	"github.com/signerd/signerd/signerd/coreclient"
	"github.com/signerd/signerd/signerd/fourmica"
)

const testChain = 84532

var (
	contractAddr = common.HexToAddress("0x1111111111111111111111111111111111111111")
	usdc         = common.HexToAddress("0x036CbD53842c5426634e7929541eC2318f3dCF7e")
)

const paramsJSON = `{"public_key":[1,2,3,255],"contract_address":"0x1111111111111111111111111111111111111111",
"ethereum_http_rpc_url":"https://rpc.example","eip712_name":"4mica","eip712_version":"1","chain_id":84532,
"max_accepted_guarantee_version":2,"accepted_guarantee_versions":[1,2],
"active_guarantee_domain_separator":"0xc8693a2f46368e330d5ff773e9e56b1ae0b4804c3e15295fd23f7e481c992495",
"trusted_validation_registries":["0x8004A818BFB912233c491871b3d84c89A494BD9e"],
"validation_hash_canonicalization_version":"4MICA_VALIDATION_REQUEST_V2"}`

func testDomain() coreclient.Domain {
	return coreclient.Domain{ChainID: testChain, EIP712Name: "4mica", EIP712Version: "1"}
}

func newClient(t testing.TB, f *fakeCore, mutate func(*coreclient.Options)) *coreclient.Client {
	t.Helper()
	o := coreclient.Options{BaseURL: f.Srv.URL + "/", Domain: testDomain(), Signer: wallet}
	if mutate != nil {
		mutate(&o)
	}
	c, err := coreclient.New(o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestNewValidatesOptions(t *testing.T) {
	ok := coreclient.Options{BaseURL: "https://core.example", Domain: testDomain()}
	for _, tc := range []struct {
		name   string
		mutate func(*coreclient.Options)
	}{
		{"no base url", func(o *coreclient.Options) { o.BaseURL = "" }},
		{"relative url", func(o *coreclient.Options) { o.BaseURL = "core.example/api" }},
		{"ftp", func(o *coreclient.Options) { o.BaseURL = "ftp://core.example" }},
		{"user info", func(o *coreclient.Options) { o.BaseURL = "https://u:secret@core.example" }},
		{"query", func(o *coreclient.Options) { o.BaseURL = "https://core.example/?k=v" }},
		{"no chain id", func(o *coreclient.Options) { o.Domain.ChainID = 0 }},
		{"no name", func(o *coreclient.Options) { o.Domain.EIP712Name = "" }},
		{"no version", func(o *coreclient.Options) { o.Domain.EIP712Version = "" }},
		{"negative margin", func(o *coreclient.Options) { o.RefreshMargin = -time.Second }},
		{"huge gas margin", func(o *coreclient.Options) { o.GasMarginPercent = 5000 }},
	} {
		o := ok
		tc.mutate(&o)
		_, err := coreclient.New(o)
		if !errors.Is(err, coreclient.ErrInvalidOptions) {
			t.Errorf("%s: err = %v, want ErrInvalidOptions", tc.name, err)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: error leaks the URL's password: %v", tc.name, err)
		}
	}
	if _, err := coreclient.New(ok); err != nil {
		t.Fatalf("valid options refused: %v", err)
	}
}

func TestPublicParamsAndDiscover(t *testing.T) {
	f := newFakeCore(t, testChain)
	f.Set("GET /core/public-params", paramsJSON)
	c := newClient(t, f, nil)
	ctx := context.Background()
	p, err := c.PublicParams(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(p.PublicKey) != "\x01\x02\x03\xff" || p.ContractAddress != contractAddr || p.ChainID != testChain ||
		p.EIP712Name != "4mica" || p.EIP712Version != "1" || p.EthereumHTTPRPCURL != "https://rpc.example" ||
		!p.Accepts(2) || p.Accepts(3) || len(p.TrustedValidationRegistries) != 1 {
		t.Fatalf("params decoded wrong: %+v", p)
	}
	got, err := c.Discover(ctx)
	if err != nil || got.ContractAddress != contractAddr {
		t.Fatalf("Discover: %v", err)
	}
	if a, err := c.Contract(ctx); err != nil || a != contractAddr {
		t.Fatalf("Contract = %v, %v", a, err)
	}
	if f.Count("POST /auth/nonce") != 0 {
		t.Fatal("public params needed a login; they are public (§5.1)")
	}
}

func TestPublicParamsDefaultsAndMalformed(t *testing.T) {
	ctx := context.Background()
	// An older Core without the defaulted fields: max version defaults to 1, accepted = [1].
	f := newFakeCore(t, testChain)
	f.Set("GET /core/public-params", `{"public_key":[],"contract_address":"0x1111111111111111111111111111111111111111","eip712_name":"4mica","eip712_version":"1","chain_id":84532}`)
	p, err := newClient(t, f, nil).PublicParams(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v := p.AcceptedVersions(); len(v) != 1 || v[0] != 1 {
		t.Fatalf("accepted versions default = %v, want [1]", v)
	}
	for _, tc := range []struct{ name, body string }{
		{"missing chain_id", `{"public_key":[],"contract_address":"0x1111111111111111111111111111111111111111","eip712_name":"4mica","eip712_version":"1"}`},
		{"missing eip712_name", `{"public_key":[],"contract_address":"0x1111111111111111111111111111111111111111","eip712_version":"1","chain_id":1}`},
		{"public_key byte 256", `{"public_key":[256],"contract_address":"0x1111111111111111111111111111111111111111","eip712_name":"4mica","eip712_version":"1","chain_id":1}`},
		{"public_key as base64", `{"public_key":"AQID","contract_address":"0x1111111111111111111111111111111111111111","eip712_name":"4mica","eip712_version":"1","chain_id":1}`},
		{"chain_id as float", `{"public_key":[],"contract_address":"0x1111111111111111111111111111111111111111","eip712_name":"4mica","eip712_version":"1","chain_id":1.5}`},
		{"bad contract", `{"public_key":[],"contract_address":"0x11","eip712_name":"4mica","eip712_version":"1","chain_id":1}`},
		{"truncated", `{"public_key":[1,2`},
		{"null", `null`},
	} {
		f.Set("GET /core/public-params", tc.body)
		_, err := newClient(t, f, nil).PublicParams(ctx)
		if !errors.Is(err, coreclient.ErrBadResponse) {
			t.Errorf("%s: err = %v, want ErrBadResponse", tc.name, err)
		}
	}
}

func TestCheckDomain(t *testing.T) {
	base := coreclient.PublicParams{ChainID: testChain, EIP712Name: "4mica", EIP712Version: "1", ContractAddress: contractAddr}
	for _, tc := range []struct {
		name     string
		mutate   func(*coreclient.PublicParams)
		contract common.Address
		field    string
	}{
		{"match", func(*coreclient.PublicParams) {}, common.Address{}, ""},
		{"match with contract", func(*coreclient.PublicParams) {}, contractAddr, ""},
		{"wrong chain", func(p *coreclient.PublicParams) { p.ChainID = 1 }, common.Address{}, "chain_id"},
		{"name case", func(p *coreclient.PublicParams) { p.EIP712Name = "4Mica" }, common.Address{}, "eip712_name"},
		{"version", func(p *coreclient.PublicParams) { p.EIP712Version = "2" }, common.Address{}, "eip712_version"},
		{"contract", func(p *coreclient.PublicParams) { p.ContractAddress = usdc }, contractAddr, "contract_address"},
	} {
		p := base
		tc.mutate(&p)
		err := coreclient.CheckDomain(&p, testChain, "4mica", "1", tc.contract)
		var dm *coreclient.DomainMismatchError
		switch {
		case tc.field == "" && err != nil:
			t.Errorf("%s: unexpected %v", tc.name, err)
		case tc.field != "" && (!errors.As(err, &dm) || dm.Field != tc.field || !errors.Is(err, coreclient.ErrDomainMismatch)):
			t.Errorf("%s: err = %v, want mismatch on %s", tc.name, err, tc.field)
		}
	}
}

func TestDiscoverRefusesOtherDomain(t *testing.T) {
	f := newFakeCore(t, testChain)
	f.Set("GET /core/public-params", strings.Replace(paramsJSON, `"chain_id":84532`, `"chain_id":8453`, 1))
	c := newClient(t, f, nil)
	_, err := c.Discover(context.Background())
	var dm *coreclient.DomainMismatchError
	if !errors.As(err, &dm) || dm.Field != "chain_id" || dm.Core != "8453" || dm.Want != "84532" {
		t.Fatalf("err = %v, want chain_id mismatch 8453 vs 84532", err)
	}
	// The contract address of a refused Core is not used.
	if _, err := c.Contract(context.Background()); !errors.Is(err, coreclient.ErrDomainMismatch) {
		t.Fatalf("Contract after refused discovery: %v", err)
	}
	// A configured contract must match Core's.
	f.Set("GET /core/public-params", paramsJSON)
	c2 := newClient(t, f, func(o *coreclient.Options) { o.Domain.Contract = usdc })
	if _, err := c2.Discover(context.Background()); !errors.As(err, &dm) || dm.Field != "contract_address" {
		t.Fatalf("err = %v, want contract_address mismatch", err)
	}
}

func TestTokens(t *testing.T) {
	f := newFakeCore(t, testChain)
	f.Set("GET /core/tokens", `{"chain_id":84532,"tokens":[{"symbol":"USDC","address":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","decimals":6}]}`)
	tk, err := newClient(t, f, nil).Tokens(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if tk.ChainID != testChain || len(tk.Tokens) != 1 || tk.Tokens[0].Address != usdc || tk.Tokens[0].Decimals != 6 || tk.Tokens[0].Symbol != "USDC" {
		t.Fatalf("tokens = %+v", tk)
	}
}

func assetPath(user, asset common.Address) string {
	return "GET /core/users/" + strings.ToLower(user.Hex()) + "/assets/" + strings.ToLower(asset.Hex())
}

// TestLoginAndReadsThroughSoftHSM logs in with a SIWE signature made on the SoftHSM2 token;
// the fake Core checks the message against §5.1's template and recovers the signature.
func TestLoginAndReadsThroughSoftHSM(t *testing.T) {
	f := newFakeCore(t, testChain)
	user := wallet.Address()
	// U256 forms (§5 "Numbers"): decimal string, JSON integer, 0x hex.
	f.Set(assetPath(user, usdc), `{"user_address":"`+strings.ToLower(user.Hex())+`","asset_address":"`+strings.ToLower(usdc.Hex())+`",
		"total":"1000000000000000000000","locked":5,"version":3,"updated_at":1700000000}`)
	f.Set(assetPath(user, common.Address{}), `null`)
	tabHex := "0xffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
	f.Set("GET /core/tabs/"+tabHex, `{"tab_id":"`+tabHex+`","user_address":"`+strings.ToLower(user.Hex())+`","recipient_address":"0x2222222222222222222222222222222222222222",
		"asset_address":"0x0000000000000000000000000000000000000000","accepted_guarantee_version":1,"start_timestamp":1700000000,"ttl_seconds":86400,
		"status":"OPEN","settlement_status":"PENDING","created_at":1700000000,"updated_at":1700000001}`)
	f.Set("GET /core/tabs/0x2a/guarantees", `[{"tab_id":"0x2a","req_id":"0x0","version":1,"from_address":"`+strings.ToLower(user.Hex())+`","to_address":"0x2222222222222222222222222222222222222222",
		"asset_address":"0x0000000000000000000000000000000000000000","amount":"0xde0b6b3a7640000","start_timestamp":1700000000,"certificate":"{\"claims\":\"00\",\"signature\":\"00\"}"},
		{"tab_id":"42","req_id":"1","version":2,"from_address":"`+strings.ToLower(user.Hex())+`","to_address":"0x2222222222222222222222222222222222222222",
		"asset_address":"0x0000000000000000000000000000000000000000","amount":18446744073709551615,"start_timestamp":1700000001,"certificate":null}]`)
	f.Set("GET /core/tabs/0x2a/collateral-events", `[{"id":"e1","user_address":"`+strings.ToLower(user.Hex())+`","asset_address":"0x0000000000000000000000000000000000000000","amount":"0x10","event_type":"RESERVE","tab_id":"0x2a","req_id":"0x0","tx_id":null,"created_at":1}]`)

	sc := &countingSigner{Signer: wallet}
	c := newClient(t, f, func(o *coreclient.Options) { o.Signer = sc })
	ctx := context.Background()

	bal, err := c.Asset(ctx, user, usdc)
	if err != nil {
		t.Fatal(err)
	}
	if bal.Total != fourmica.MustU256("1000000000000000000000") || bal.Locked != fourmica.U256FromUint64(5) || bal.Version != 3 || bal.UserAddress != user {
		t.Fatalf("asset = %+v", bal)
	}
	if f.Count("POST /auth/nonce") != 1 || f.Count("POST /auth/verify") != 1 || sc.n.Load() != 1 {
		t.Fatalf("login: nonce %d verify %d signatures %d, want 1 1 1", f.Count("POST /auth/nonce"), f.Count("POST /auth/verify"), sc.n.Load())
	}
	if !strings.HasPrefix(f.LastAuthHeader(), "Bearer access_") {
		t.Fatalf("authorization header %q", f.LastAuthHeader())
	}
	if none, err := c.Asset(ctx, user, common.Address{}); err != nil || none != nil {
		t.Fatalf("null asset = %v, %v; want nil, nil", none, err)
	}
	tab, err := c.Tab(ctx, fourmica.MustU256(tabHex))
	if err != nil || tab == nil || tab.TabID != fourmica.MustU256(tabHex) || tab.Status != "OPEN" || tab.TTLSeconds != 86400 {
		t.Fatalf("tab = %+v, %v", tab, err)
	}
	gs, err := c.Guarantees(ctx, fourmica.U256FromUint64(42))
	if err != nil || len(gs) != 2 {
		t.Fatalf("guarantees = %v, %v", gs, err)
	}
	if gs[0].Amount != fourmica.U256FromUint64(1e18) || gs[0].Certificate == nil || gs[1].Certificate != nil ||
		gs[1].TabID != fourmica.U256FromUint64(42) || gs[1].Amount != fourmica.U256FromUint64(^uint64(0)) {
		t.Fatalf("guarantees decoded wrong: %+v", gs)
	}
	ev, err := c.CollateralEvents(ctx, fourmica.U256FromUint64(42))
	if err != nil || len(ev) != 1 || ev[0].TabID == nil || *ev[0].TabID != fourmica.U256FromUint64(42) || ev[0].TxID != nil {
		t.Fatalf("events = %+v, %v", ev, err)
	}
	// One login served every read.
	if n := f.Count("POST /auth/verify"); n != 1 {
		t.Fatalf("%d logins, want 1", n)
	}
	if revoked, err := c.Logout(ctx); err != nil || !revoked {
		t.Fatalf("logout = %v, %v", revoked, err)
	}
}

func TestU256FormsInAnswers(t *testing.T) {
	f := newFakeCore(t, testChain)
	user := wallet.Address()
	c := newClient(t, f, nil)
	for _, tc := range []struct {
		name, total string
		want        string // "" = must be refused as ErrBadResponse
	}{
		{"hex", `"0xDE0B6B3A7640000"`, "1000000000000000000"},
		{"decimal string", `"1000000000000000000"`, "1000000000000000000"},
		{"json integer", `1000000000000000000`, "1000000000000000000"},
		{"max", `"0xffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"`, "115792089237316195423570985008687907853269984665640564039457584007913129639935"},
		{"octal", `"0o17"`, "15"},
		{"float", `1.5`, ""},
		{"exponent", `1e18`, ""},
		{"integer above u64", `18446744073709551616`, ""},
		{"negative", `"-1"`, ""},
		{"2^256", `"115792089237316195423570985008687907853269984665640564039457584007913129639936"`, ""},
		{"empty hex", `"0x"`, ""},
	} {
		f.Set(assetPath(user, usdc), `{"user_address":"`+strings.ToLower(user.Hex())+`","asset_address":"`+strings.ToLower(usdc.Hex())+`","total":`+tc.total+`,"locked":"0","version":0,"updated_at":0}`)
		bal, err := c.Asset(context.Background(), user, usdc)
		if tc.want == "" {
			if !errors.Is(err, coreclient.ErrBadResponse) {
				t.Errorf("%s: err = %v, want ErrBadResponse", tc.name, err)
			}
			continue
		}
		if err != nil || bal.Total.Dec() != tc.want {
			t.Errorf("%s: total = %v, %v; want %s", tc.name, bal, err, tc.want)
		}
	}
}

func TestRefreshBeforeExpiry(t *testing.T) {
	f := newFakeCore(t, testChain)
	f.AccessTTL = 100
	user := wallet.Address()
	f.Set(assetPath(user, usdc), `null`)
	var mu sync.Mutex
	// The client's clock starts at the fake Core's (real) time: a SIWE issuedAt more than 5 min
	// away from the client's clock is refused (finding 8).
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	c := newClient(t, f, func(o *coreclient.Options) { o.Now = clock }) // margin min(60 s, 50 s) = 50 s
	ctx := context.Background()
	if _, err := c.Asset(ctx, user, usdc); err != nil {
		t.Fatal(err)
	}
	advance(49 * time.Second)
	if _, err := c.Asset(ctx, user, usdc); err != nil {
		t.Fatal(err)
	}
	if f.Count("POST /auth/refresh") != 0 {
		t.Fatal("refreshed before the margin")
	}
	advance(2 * time.Second)
	if _, err := c.Asset(ctx, user, usdc); err != nil {
		t.Fatal(err)
	}
	if f.Count("POST /auth/refresh") != 1 || f.Count("POST /auth/verify") != 1 {
		t.Fatalf("refresh %d login %d, want 1 1", f.Count("POST /auth/refresh"), f.Count("POST /auth/verify"))
	}
	// The rotated refresh token is the one used next; a refused refresh (401) falls back to a
	// fresh SIWE login.
	f.RevokeRefresh()
	advance(60 * time.Second)
	if _, err := c.Asset(ctx, user, usdc); err != nil {
		t.Fatal(err)
	}
	if f.Count("POST /auth/refresh") != 2 || f.Count("POST /auth/verify") != 2 {
		t.Fatalf("refresh %d login %d, want 2 2", f.Count("POST /auth/refresh"), f.Count("POST /auth/verify"))
	}
}

func TestReloginOnceOn401(t *testing.T) {
	f := newFakeCore(t, testChain)
	user := wallet.Address()
	route := assetPath(user, usdc)
	f.Set(route, `null`)
	c := newClient(t, f, nil)
	ctx := context.Background()
	if _, err := c.Asset(ctx, user, usdc); err != nil {
		t.Fatal(err)
	}
	f.ExpireAccess() // Core now answers 401 to the cached token
	if _, err := c.Asset(ctx, user, usdc); err != nil {
		t.Fatalf("after server-side expiry: %v", err)
	}
	if f.Count("POST /auth/verify") != 2 || f.Count(route) != 3 {
		t.Fatalf("logins %d requests %d, want 2 3", f.Count("POST /auth/verify"), f.Count(route))
	}
	// A path that keeps answering 401: one re-login, one retry, then the 401 is returned.
	f.Force(route, 401, `{"error":"Unauthorized"}`)
	_, err := c.Asset(ctx, user, usdc)
	var he *coreclient.HTTPError
	if !errors.As(err, &he) || he.Status != 401 || he.Message != "Unauthorized" {
		t.Fatalf("err = %v, want HTTPError 401", err)
	}
	if f.Count("POST /auth/verify") != 3 || f.Count(route) != 5 {
		t.Fatalf("logins %d requests %d, want 3 5 (exactly one re-login)", f.Count("POST /auth/verify"), f.Count(route))
	}
	if strings.Contains(err.Error(), "access_") || strings.Contains(err.Error(), "refresh_") {
		t.Fatalf("error leaks a token: %v", err)
	}
}

func TestCoreErrors(t *testing.T) {
	user := wallet.Address()
	for _, tc := range []struct {
		name   string
		status int
		body   string
		class  error
		msg    string
	}{
		{"400", 400, `{"error":"user not registered"}`, coreclient.ErrRefused, "user not registered"},
		{"401 (after one re-login)", 401, `{"error":"Unauthorized"}`, coreclient.ErrRefused, "Unauthorized"},
		{"403", 403, `{"error":"user suspended"}`, coreclient.ErrRefused, "user suspended"},
		{"404", 404, `{"error":"0x2a"}`, coreclient.ErrRefused, "0x2a"},
		{"409", 409, `{"error":"request failed, please retry"}`, coreclient.ErrRefused, "request failed, please retry"},
		{"500", 500, `{"error":"internal error"}`, coreclient.ErrRefused, "internal error"},
		{"503 text", 503, "upstream\x00 down\n", coreclient.ErrRefused, "upstream  down"},
		{"axum 422", 422, "Failed to deserialize the JSON body into the target type", coreclient.ErrRefused, "Failed to deserialize the JSON body into the target type"},
		{"200 malformed", 200, `{"user_address":`, coreclient.ErrBadResponse, ""},
		{"200 wrong type", 200, `[1,2]`, coreclient.ErrBadResponse, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeCore(t, testChain)
			f.Force(assetPath(user, usdc), tc.status, tc.body)
			_, err := newClient(t, f, nil).Asset(context.Background(), user, usdc)
			if !errors.Is(err, tc.class) {
				t.Fatalf("err = %v, want %v", err, tc.class)
			}
			var he *coreclient.HTTPError
			if tc.msg != "" && (!errors.As(err, &he) || he.Status != tc.status || he.Message != tc.msg || he.Method != "GET") {
				t.Fatalf("err = %#v, want status %d message %q", err, tc.status, tc.msg)
			}
			if errors.Is(err, coreclient.ErrUnreachable) {
				t.Fatal("a Core answer classed as a network fault")
			}
		})
	}
}

func TestNetworkFaults(t *testing.T) {
	f := newFakeCore(t, testChain)
	url := f.Srv.URL
	f.Srv.Close()
	c, err := coreclient.New(coreclient.Options{BaseURL: url, Domain: testDomain(), Signer: wallet})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.PublicParams(context.Background())
	if !errors.Is(err, coreclient.ErrUnreachable) || errors.Is(err, coreclient.ErrRefused) {
		t.Fatalf("closed server: %v, want ErrUnreachable only", err)
	}
	// A hanging Core and a context deadline.
	hang := newFakeCore(t, testChain)
	block := make(chan struct{})
	hang.Srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-block })
	defer close(block)
	c2 := newClient(t, hang, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := c2.Tokens(ctx); !errors.Is(err, coreclient.ErrUnreachable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("deadline: %v", err)
	}
}

func TestLoginRefusals(t *testing.T) {
	user := wallet.Address()
	for _, tc := range []struct {
		name       string
		setup      func(f *fakeCore, o *coreclient.Options)
		class      error
		wantVerify int // /auth/verify requests expected (0 = refused before sending)
	}{
		{"signer fails", func(f *fakeCore, o *coreclient.Options) { o.Signer = failingSigner{addr: user} }, coreclient.ErrSigner, 0},
		{"signature from another key", func(f *fakeCore, o *coreclient.Options) { o.Signer = newLyingSigner(t, user) }, coreclient.ErrSignature, 0},
		{"template chain id", func(f *fakeCore, o *coreclient.Options) { f.SIWEChainID = 1 }, coreclient.ErrDomainMismatch, 0},
		{"siwe domain", func(f *fakeCore, o *coreclient.Options) { o.SIWEDomain = "api.4mica.xyz" }, coreclient.ErrDomainMismatch, 0},
		{"line break in statement", func(f *fakeCore, o *coreclient.Options) {
			f.TemplateEdit = func(m map[string]any) { m["statement"] = "Sign in.\nURI: https://evil.example" }
		}, coreclient.ErrBadResponse, 0},
		{"nonce refused", func(f *fakeCore, o *coreclient.Options) {
			f.Force("POST /auth/nonce", 400, `{"error":"invalid address"}`)
		}, coreclient.ErrRefused, 0},
		{"verify refused", func(f *fakeCore, o *coreclient.Options) {
			f.Force("POST /auth/verify", 401, `{"error":"siwe domain mismatch"}`)
		}, coreclient.ErrRefused, 1},
		{"verify answer without tokens", func(f *fakeCore, o *coreclient.Options) { f.Force("POST /auth/verify", 200, `{"access_token":"x"}`) }, coreclient.ErrBadResponse, 1},
		{"no signer", func(f *fakeCore, o *coreclient.Options) { o.Signer = nil }, coreclient.ErrNoSigner, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeCore(t, testChain)
			f.Set(assetPath(user, usdc), `null`)
			c := newClient(t, f, func(o *coreclient.Options) { tc.setup(f, o) })
			_, err := c.Asset(context.Background(), user, usdc)
			if !errors.Is(err, tc.class) {
				t.Fatalf("err = %v, want %v", err, tc.class)
			}
			if n := f.Count("POST /auth/verify"); n != tc.wantVerify {
				t.Fatalf("/auth/verify requests = %d, want %d", n, tc.wantVerify)
			}
			if f.Count(assetPath(user, usdc)) != 0 {
				t.Fatal("the protected request was sent without a login")
			}
		})
	}
}

func TestBuildSIWEMessage(t *testing.T) {
	addr := common.HexToAddress("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed")
	tmpl := coreclient.SIWETemplate{Domain: "localhost", URI: "http://localhost:3000", ChainID: 84532, Statement: "Sign in to 4mica.",
		Expiration: "2026-11-21T19:05:00+00:00", IssuedAt: "2026-11-21T19:00:00+00:00"}
	got, err := coreclient.BuildSIWEMessage(tmpl, addr, "3f1d0c3e-0000-4000-8000-000000000000")
	if err != nil {
		t.Fatal(err)
	}
	want := "localhost wants you to sign in with your Ethereum account:\n0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed\n\nSign in to 4mica.\n\n" +
		"URI: http://localhost:3000\nVersion: 1\nChain ID: 84532\nNonce: 3f1d0c3e-0000-4000-8000-000000000000\n" +
		"Issued At: 2026-11-21T19:00:00+00:00\nExpiration Time: 2026-11-21T19:05:00+00:00"
	if got != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	// EIP-191 personal_sign digest of "hello" (well-known value).
	if d := coreclient.PersonalSignDigest([]byte("hello")); common.Hash(d).Hex() != "0x50b2c43fd39106bafbba0da34fc430e1f91e3c96ea2acee2bc34119f92b37750" {
		t.Fatalf("personal_sign digest = %x", d)
	}
	for _, bad := range []func(*coreclient.SIWETemplate){
		func(t *coreclient.SIWETemplate) { t.URI = "http://x\r\nVersion: 2" },
		func(t *coreclient.SIWETemplate) { t.Domain = "" },
		func(t *coreclient.SIWETemplate) { t.IssuedAt = "" },
	} {
		tt := tmpl
		bad(&tt)
		if _, err := coreclient.BuildSIWEMessage(tt, addr, "n"); err == nil {
			t.Errorf("template %+v accepted", tt)
		}
	}
	if _, err := coreclient.BuildSIWEMessage(tmpl, addr, "n\nNonce: other"); err == nil {
		t.Error("nonce with a line break accepted")
	}
}

// TestConcurrentCallsShareOneLogin: parallel protected calls log in once, and with a debug
// logger nothing of the tokens reaches the log.
func TestConcurrentCallsShareOneLogin(t *testing.T) {
	f := newFakeCore(t, testChain)
	user := wallet.Address()
	f.Set(assetPath(user, usdc), `null`)
	var logBuf strings.Builder
	var logMu sync.Mutex
	c := newClient(t, f, func(o *coreclient.Options) {
		o.Logger = slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
			logMu.Lock()
			defer logMu.Unlock()
			return logBuf.Write(p)
		}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.Asset(context.Background(), user, usdc)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := f.Count("POST /auth/verify"); n != 1 {
		t.Fatalf("%d logins for 16 parallel calls, want 1", n)
	}
	f.ExpireAccess()
	if _, err := c.Asset(context.Background(), user, usdc); err != nil {
		t.Fatal(err)
	}
	logMu.Lock()
	defer logMu.Unlock()
	if !strings.Contains(logBuf.String(), "core login") {
		t.Fatalf("debug log lacks the login line: %q", logBuf.String())
	}
	if strings.Contains(logBuf.String(), "access_") || strings.Contains(logBuf.String(), "refresh_") || strings.Contains(logBuf.String(), "nonce_") {
		t.Fatalf("log leaks a token or nonce: %q", logBuf.String())
	}
}

type writerFunc func([]byte) (int, error)

func (w writerFunc) Write(p []byte) (int, error) { return w(p) }
