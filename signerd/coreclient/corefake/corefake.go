// Package corefake is a stand-in for 4mica-core's HTTP API for tests (of signerd/coreclient and
// of the daemon), following §5 of the protocol doc: SIWE nonce/verify/refresh/logout (§5.1) with
// the message checked against the template byte for byte and the personal_sign signature
// recovered, bearer auth on every non-public path, canned answers for the read endpoints of
// §5.2, forced error answers and errors as {"error": "..."}. It is an httptest server; nothing
// in it is for production.
package corefake

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/accounts"
	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/common/hexutil"
	"github.com/ethereum/go-ethereum/crypto"
)

// Core is the fake Core. Fields set before the first request (AccessTTL, SIWEChainID,
// TemplateEdit) change what it answers.
type Core struct {
	t   testing.TB
	Srv *httptest.Server // the server (URL, Close)

	mu           sync.Mutex
	chainID      uint64 // Core's chain (SIWE "Chain ID" must equal it)
	SIWEChainID  uint64 // chain id put into the template (normally chainID)
	domain       string
	uri          string
	statement    string
	AccessTTL    uint64                    // access token lifetime, seconds (default 900)
	nonces       map[string]*nonceRec      // nonce → record
	access       map[string]accessRec      // access token → record
	refresh      map[string]common.Address // refresh token → subject
	routes       map[string]string         // "GET /path" → raw JSON answer
	override     map[string]fakeAnswer     // "METHOD /path" → forced answer (error cases)
	counts       map[string]int            // "METHOD /path" → requests seen
	lastAuthHdr  string                    // last Authorization header seen (for assertions)
	TemplateEdit func(map[string]any)      // edits the SIWE template before it is sent
}

type nonceRec struct {
	addr     common.Address
	tmpl     map[string]any
	used     bool
	issuedAt string
	expires  string
}

type accessRec struct {
	sub     common.Address
	expires time.Time
}

type fakeAnswer struct {
	status int
	body   string
}

// New starts a fake Core for chainID (its SIWE templates carry it); it is closed when the
// test ends. Its SIWE domain is "core.test".
func New(t testing.TB, chainID uint64) *Core {
	f := &Core{t: t, chainID: chainID, SIWEChainID: chainID, domain: "core.test", uri: "http://core.test:3000",
		statement: "Sign in to 4mica.", AccessTTL: 900,
		nonces: map[string]*nonceRec{}, access: map[string]accessRec{}, refresh: map[string]common.Address{},
		routes: map[string]string{}, override: map[string]fakeAnswer{}, counts: map[string]int{}}
	f.Srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Srv.Close)
	return f
}

// Set makes route ("GET /core/tabs/0x2a") answer body (raw JSON) with 200.
func (f *Core) Set(route, body string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.routes[route] = body
}

// Force makes route answer status with body, after the bearer check (error cases).
func (f *Core) Force(route string, status int, body string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.override[route] = fakeAnswer{status, body}
}

// Count is the number of requests seen for route ("METHOD /path").
func (f *Core) Count(route string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[route]
}

// ExpireAccess makes Core reject every access token issued so far (as after its TTL).
func (f *Core) ExpireAccess() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, v := range f.access {
		v.expires = time.Now().Add(-time.Second)
		f.access[k] = v
	}
}

// RevokeRefresh makes Core refuse every refresh token issued so far.
func (f *Core) RevokeRefresh() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refresh = map[string]common.Address{}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func coreErr(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

func randToken(prefix string) string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return prefix + "_" + hex.EncodeToString(b)
}

// isPublic is Core's is_public_path (§5.1).
func isPublic(p string) bool {
	return strings.HasPrefix(p, "/auth/") || p == "/core/health" || p == "/core/public-params" || p == "/core/tokens" || p == "/metrics"
}

func (f *Core) serve(w http.ResponseWriter, r *http.Request) {
	route := r.Method + " " + r.URL.Path
	f.mu.Lock()
	f.counts[route]++
	ov, forced := f.override[route]
	f.mu.Unlock()
	if !isPublic(r.URL.Path) {
		h := r.Header.Get("Authorization")
		f.mu.Lock()
		f.lastAuthHdr = h
		f.mu.Unlock()
		tok, ok := strings.CutPrefix(h, "Bearer ")
		if !ok {
			tok, ok = strings.CutPrefix(h, "bearer ")
		}
		if !ok {
			coreErr(w, 401, "missing bearer token")
			return
		}
		f.mu.Lock()
		rec, known := f.access[tok]
		f.mu.Unlock()
		if !known || time.Now().After(rec.expires) {
			coreErr(w, 401, "invalid or expired token")
			return
		}
	}
	if forced {
		w.WriteHeader(ov.status)
		_, _ = io.WriteString(w, ov.body)
		return
	}
	switch route {
	case "POST /auth/nonce":
		f.nonce(w, r)
		return
	case "POST /auth/verify":
		f.verify(w, r)
		return
	case "POST /auth/refresh":
		f.doRefresh(w, r)
		return
	case "POST /auth/logout":
		var in struct {
			RefreshToken string `json:"refresh_token"`
		}
		_ = json.NewDecoder(r.Body).Decode(&in)
		f.mu.Lock()
		_, ok := f.refresh[in.RefreshToken]
		delete(f.refresh, in.RefreshToken)
		f.mu.Unlock()
		writeJSON(w, 200, map[string]bool{"revoked": ok})
		return
	}
	f.mu.Lock()
	body, ok := f.routes[route]
	f.mu.Unlock()
	if !ok {
		coreErr(w, 404, "not found")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, body)
}

func (f *Core) nonce(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Address string `json:"address"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil || !common.IsHexAddress(in.Address) {
		coreErr(w, 400, "invalid address")
		return
	}
	now := time.Now().UTC()
	rec := &nonceRec{addr: common.HexToAddress(in.Address), issuedAt: now.Format(time.RFC3339Nano), expires: now.Add(300 * time.Second).Format(time.RFC3339Nano)}
	f.mu.Lock()
	tmpl := map[string]any{"domain": f.domain, "uri": f.uri, "chainId": f.SIWEChainID, "statement": f.statement,
		"expiration": rec.expires, "issuedAt": rec.issuedAt}
	if f.TemplateEdit != nil {
		f.TemplateEdit(tmpl)
	}
	rec.tmpl = tmpl
	n := randToken("nonce")
	f.nonces[n] = rec
	f.mu.Unlock()
	writeJSON(w, 200, map[string]any{"nonce": n, "siwe": tmpl})
}

// verify is Core's verify_auth (§5.1): the message must be the template rendered for this
// address and nonce, chain id and domain Core's, the nonce unused, and the personal_sign
// signature must recover to the address.
func (f *Core) verify(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Address   string `json:"address"`
		Message   string `json:"message"`
		Signature string `json:"signature"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		w.WriteHeader(422) // axum's Json rejection: plain text, not Core's envelope
		_, _ = io.WriteString(w, "Failed to deserialize the JSON body")
		return
	}
	if !common.IsHexAddress(in.Address) {
		coreErr(w, 401, "invalid address")
		return
	}
	addr := common.HexToAddress(in.Address)
	var nonce string
	for _, line := range strings.Split(in.Message, "\n") {
		if v, ok := strings.CutPrefix(line, "Nonce: "); ok {
			nonce = v
		}
	}
	f.mu.Lock()
	rec, ok := f.nonces[nonce]
	f.mu.Unlock()
	if !ok || rec.addr != addr {
		coreErr(w, 401, "nonce not found or expired")
		return
	}
	if rec.used {
		coreErr(w, 401, "nonce not valid")
		return
	}
	// The exact template of §5.1, rendered independently of the client.
	want := fmt.Sprintf("%s wants you to sign in with your Ethereum account:\n%s\n\n%s\n\nURI: %s\nVersion: 1\nChain ID: %d\nNonce: %s\nIssued At: %s\nExpiration Time: %s",
		rec.tmpl["domain"], addr.Hex(), rec.tmpl["statement"], rec.tmpl["uri"], rec.tmpl["chainId"], nonce, rec.tmpl["issuedAt"], rec.tmpl["expiration"])
	if in.Message != want {
		f.t.Errorf("fake core: SIWE message differs from the template:\n got %q\nwant %q", in.Message, want)
		coreErr(w, 401, "siwe message mismatch")
		return
	}
	if fmt.Sprint(rec.tmpl["chainId"]) != fmt.Sprint(f.chainID) {
		coreErr(w, 401, "invalid chain id")
		return
	}
	sig, err := hexutil.Decode(in.Signature)
	if err != nil || len(sig) != 65 || (sig[64] != 27 && sig[64] != 28) {
		coreErr(w, 401, "invalid signature encoding")
		return
	}
	sig[64] -= 27
	pub, err := crypto.SigToPub(accounts.TextHash([]byte(in.Message)), sig)
	if err != nil || crypto.PubkeyToAddress(*pub) != addr {
		coreErr(w, 401, "invalid signature")
		return
	}
	f.mu.Lock()
	rec.used = true
	f.mu.Unlock()
	f.issue(w, addr)
}

func (f *Core) issue(w http.ResponseWriter, sub common.Address) {
	f.mu.Lock()
	at, rt := randToken("access"), randToken("refresh")
	f.access[at] = accessRec{sub: sub, expires: time.Now().Add(time.Duration(f.AccessTTL) * time.Second)}
	f.refresh[rt] = sub
	ttl := f.AccessTTL
	f.mu.Unlock()
	writeJSON(w, 200, map[string]any{"access_token": at, "refresh_token": rt, "expires_in": ttl})
}

// doRefresh rotates the refresh token (§5.1).
func (f *Core) doRefresh(w http.ResponseWriter, r *http.Request) {
	var in struct {
		RefreshToken string `json:"refresh_token"`
	}
	_ = json.NewDecoder(r.Body).Decode(&in)
	f.mu.Lock()
	sub, ok := f.refresh[in.RefreshToken]
	delete(f.refresh, in.RefreshToken)
	f.mu.Unlock()
	if !ok {
		coreErr(w, 401, "invalid refresh token")
		return
	}
	f.issue(w, sub)
}

// URL is the fake Core's base URL.
func (f *Core) URL() string { return f.Srv.URL }

// LastAuthHeader is the last Authorization header seen on a protected path.
func (f *Core) LastAuthHeader() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastAuthHdr
}

// Unset removes route's canned answer (it answers 404 again) and any forced answer.
func (f *Core) Unset(route string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.routes, route)
	delete(f.override, route)
}

// PublicParams answers GET /core/public-params with Core's CorePublicParameters for the
// given domain, contract and RPC URL (§5.2).
func (f *Core) PublicParams(chainID uint64, name, version string, contract common.Address, rpcURL string) {
	b, _ := json.Marshal(map[string]any{"public_key": []int{1, 2, 3}, "contract_address": contract.Hex(),
		"ethereum_http_rpc_url": rpcURL, "eip712_name": name, "eip712_version": version, "chain_id": chainID,
		"max_accepted_guarantee_version": 2, "accepted_guarantee_versions": []int{1, 2}})
	f.Set("GET /core/public-params", string(b))
}

// Asset answers GET /core/users/{user}/assets/{asset} with Core's AssetBalanceInfo (§5.2);
// total and locked are decimal strings.
func (f *Core) Asset(user, asset common.Address, total, locked string) {
	b, _ := json.Marshal(map[string]any{"user_address": strings.ToLower(user.Hex()), "asset_address": strings.ToLower(asset.Hex()),
		"total": total, "locked": locked, "version": 1, "updated_at": 1700000000})
	f.Set("GET /core/users/"+strings.ToLower(user.Hex())+"/assets/"+strings.ToLower(asset.Hex()), string(b))
}
