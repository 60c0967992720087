package coreclient_test

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

// fakeCore is a stand-in for 4mica-core's HTTP API, following §5 of the protocol doc: SIWE
// nonce/verify/refresh/logout (§5.1) with the message checked against the template and the
// personal_sign signature recovered, bearer auth on every non-public path, the read endpoints
// of §5.2 and errors as {"error": "..."}.
type fakeCore struct {
	t   testing.TB
	srv *httptest.Server

	mu          sync.Mutex
	chainID     uint64 // Core's chain (SIWE "Chain ID" must equal it)
	siweChainID uint64 // chain id put into the template (normally chainID)
	domain      string
	uri         string
	statement   string
	accessTTL   uint64
	nonces      map[string]*nonceRec      // nonce → record
	access      map[string]accessRec      // access token → record
	refresh     map[string]common.Address // refresh token → subject
	routes      map[string]string         // "GET /path" → raw JSON answer
	override    map[string]fakeAnswer     // "METHOD /path" → forced answer (error cases)
	counts      map[string]int            // "METHOD /path" → requests seen
	lastAuthHdr string                    // last Authorization header seen (for assertions)
	tmplEdit    func(map[string]any)      // edits the SIWE template before it is sent
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

func newFakeCore(t testing.TB, chainID uint64) *fakeCore {
	f := &fakeCore{t: t, chainID: chainID, siweChainID: chainID, domain: "core.test", uri: "http://core.test:3000",
		statement: "Sign in to 4mica.", accessTTL: 900,
		nonces: map[string]*nonceRec{}, access: map[string]accessRec{}, refresh: map[string]common.Address{},
		routes: map[string]string{}, override: map[string]fakeAnswer{}, counts: map[string]int{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeCore) set(route, body string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.routes[route] = body
}

func (f *fakeCore) force(route string, status int, body string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.override[route] = fakeAnswer{status, body}
}

func (f *fakeCore) count(route string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[route]
}

// expireAccess makes Core reject every access token issued so far (as after its TTL).
func (f *fakeCore) expireAccess() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, v := range f.access {
		v.expires = time.Now().Add(-time.Second)
		f.access[k] = v
	}
}

// revokeRefresh makes Core refuse every refresh token issued so far.
func (f *fakeCore) revokeRefresh() {
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

func (f *fakeCore) serve(w http.ResponseWriter, r *http.Request) {
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

func (f *fakeCore) nonce(w http.ResponseWriter, r *http.Request) {
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
	tmpl := map[string]any{"domain": f.domain, "uri": f.uri, "chainId": f.siweChainID, "statement": f.statement,
		"expiration": rec.expires, "issuedAt": rec.issuedAt}
	if f.tmplEdit != nil {
		f.tmplEdit(tmpl)
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
func (f *fakeCore) verify(w http.ResponseWriter, r *http.Request) {
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

func (f *fakeCore) issue(w http.ResponseWriter, sub common.Address) {
	f.mu.Lock()
	at, rt := randToken("access"), randToken("refresh")
	f.access[at] = accessRec{sub: sub, expires: time.Now().Add(time.Duration(f.accessTTL) * time.Second)}
	f.refresh[rt] = sub
	ttl := f.accessTTL
	f.mu.Unlock()
	writeJSON(w, 200, map[string]any{"access_token": at, "refresh_token": rt, "expires_in": ttl})
}

// doRefresh rotates the refresh token (§5.1).
func (f *fakeCore) doRefresh(w http.ResponseWriter, r *http.Request) {
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
