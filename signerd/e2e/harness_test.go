package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/signerd/signerd/signerd/fourmica"
)

// Binaries built once by TestMain, and a provisioned dev directory (SoftHSM2 token with one
// wallet key, PIN file) that each test copies so every daemon starts on its own token.
var (
	binDir       string
	signerdBin   string
	signerctlBin string
	clientBin    string // this test binary, runnable by other uids as a client
	templateDir  string
	wallet1      string // the template token's wallet address (0x, checksummed)
)

const (
	softhsmModule = "/usr/lib/softhsm/libsofthsm2.so"
	nobodyUID     = 65534
	usdc          = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
	sellerOK      = "0x1111111111111111111111111111111111111111"
	sellerX402    = "0x1234567890123456789012345678901234567890"
	sellerBad     = "0xbad0000000000000000000000000000000000bad"
)

// allowUSDCPolicy is the head shared by the single-rule test policies (bench, crash, budget
// race): agent tester (this process's uid, the test wallet) may pay sellerOK in USDC on
// eip155:84532, at most 1 USDC a request. Each policy appends its own budgets section.
const allowUSDCPolicy = `version: 1
assets:
  USDC: {address: "0x036CbD53842c5426634e7929541eC2318f3dCF7e", decimals: 6}
agents:
  tester:
    callers: [{uid: self}]
    wallets: ["{{WALLET}}"]
rules:
  - id: allow-usdc
    effect: allow
    agents: [tester]
    sellers: ["0x1111111111111111111111111111111111111111"]
    networks: [eip155:84532]
    assets: [USDC]
    max_amount: "1000000"
`

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if os.Getenv("SIGNERD_E2E_CLIENT") == "1" {
		return clientMain()
	}
	if _, err := os.Stat(softhsmModule); err != nil {
		if os.Getenv("CI") == "true" {
			fmt.Fprintln(os.Stderr, "e2e: SoftHSM2 is not installed (", softhsmModule, ") — required in CI")
			return 1
		}
		fmt.Fprintln(os.Stderr, "e2e: skipping: SoftHSM2 not installed")
		return 0
	}
	var err error
	binDir, err = os.MkdirTemp("", "signerd-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(binDir)
	// Other uids (nobody) run signerctl and curl out of here, and reach sockets below it.
	os.Chmod(binDir, 0o755)
	root, err := repoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	signerdBin = filepath.Join(binDir, "signerd")
	signerctlBin = filepath.Join(binDir, "signerctl")
	for bin, pkg := range map[string]string{signerdBin: "./cmd/signerd", signerctlBin: "./cmd/signerctl"} {
		cmd := exec.Command("go", "build", "-o", bin, pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: go build %s: %v\n%s", pkg, err, out)
			return 1
		}
	}
	// A copy of this test binary that other uids can run as a plain HTTP client (clientMain).
	if self, err := os.Executable(); err == nil {
		if b, err := os.ReadFile(self); err == nil {
			clientBin = filepath.Join(binDir, "e2e-client")
			os.WriteFile(clientBin, b, 0o755)
		}
	}
	templateDir = filepath.Join(binDir, "template")
	if wallet1, err = provisionTemplate(templateDir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: provisioning the dev token:", err)
		return 1
	}
	return m.Run()
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("go.mod not found above %s", dir)
		}
		dir = parent
	}
}

// provisionTemplate runs `signerd dev --dir DIR` once (it initialises a SoftHSM2 token and
// generates a wallet key), reads the wallet, and stops it.
func provisionTemplate(dir string) (string, error) {
	cmd := exec.Command(signerdBin, "dev", "--dir", dir)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		return "", err
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	c := newClient(filepath.Join(dir, "agent.sock"))
	deadline := time.Now().Add(30 * time.Second)
	for {
		var w struct {
			Wallets []struct {
				Address string `json:"address"`
			} `json:"wallets"`
		}
		st, body, err := c.call("GET", "/v1/wallets", nil)
		if err == nil && st == 200 && json.Unmarshal(body, &w) == nil && len(w.Wallets) > 0 {
			return w.Wallets[0].Address, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("dev daemon not ready: %v %d %s\n%s", err, st, body, log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ---- one daemon ----

// env is one daemon's directory: a copy of the template token, a policy, a config.
type env struct {
	t      testing.TB
	dir    string
	cfg    string
	agent  string // agent socket
	admin  string // admin socket
	policy string
	wallet string // the wallet {{WALLET}} stands for in policies
	db     string
	proc   *exec.Cmd
	exited chan error
	logf   *os.File
}

// envOptions tune the config.
type envOptions struct {
	policy       string // policy YAML ({{WALLET}} is replaced by the wallet address)
	twoOperators bool
	maxWait      time.Duration // approval long poll
	extra        string        // extra YAML lines under limits:
	stateParent  string        // where the ledger's state dir goes (default: inside the env dir)
	hsm          string        // the config's hsm: section (default: the env's copy of the SoftHSM2 token)
	wallet       string        // the wallet {{WALLET}} stands for (default: wallet1, the token's)
}

func copyDir(src, dst string) error {
	return filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if info.IsDir() {
			return os.MkdirAll(target, info.Mode().Perm())
		}
		if !info.Mode().IsRegular() {
			return nil // sockets
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, info.Mode().Perm())
	})
}

func newEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	dir, err := os.MkdirTemp(binDir, "env-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	tdir := filepath.Join(dir, "dev")
	if err := copyDir(templateDir, tdir); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(tdir, "state"))
	run := filepath.Join(dir, "run")
	os.MkdirAll(run, 0o755)
	os.Chmod(run, 0o755)
	e := &env{t: t, dir: dir, cfg: filepath.Join(dir, "signerd.yaml"), agent: filepath.Join(run, "agent.sock"),
		admin: filepath.Join(run, "admin.sock"), policy: filepath.Join(dir, "policy.yaml"),
		db: filepath.Join(dir, "state", "signerd.db"), wallet: wallet1}
	if o.wallet != "" {
		e.wallet = o.wallet
	}
	stateDir := filepath.Join(dir, "state")
	if o.stateParent != "" {
		sd, err := os.MkdirTemp(o.stateParent, "signerd-e2e-state-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(sd) })
		stateDir = sd
		e.db = filepath.Join(sd, "signerd.db")
	}
	pol := o.policy
	if pol == "" {
		pol = apiPolicy
	}
	e.writePolicy(pol)
	if o.hsm == "" {
		o.hsm = softhsmSection(tdir)
	}
	e.writeConfig(o, stateDir)
	t.Cleanup(func() { e.stop() })
	return e
}

// softhsmSection is the hsm: section for the SoftHSM2 token copied to devDir (the template's).
func softhsmSection(devDir string) string {
	return fmt.Sprintf(`hsm:
  type: pkcs11
  pkcs11:
    module: %s
    module_env: {SOFTHSM2_CONF: %s}
    token_label: signerd-dev
    pin_file: %s
    sessions: 2
    max_waiting: 1024`, softhsmModule, filepath.Join(devDir, "hsm", "softhsm2.conf"), filepath.Join(devDir, "hsm", "pin"))
}

// writeConfig writes the daemon's config: sockets under the env's run dir, the ledger in
// stateDir, o.hsm as the key backend, the env's policy, two operators (this uid as alice, nobody
// as bob) and o's approval wait, kill-switch and limits settings.
func (e *env) writeConfig(o envOptions, stateDir string) {
	e.t.Helper()
	maxWait := o.maxWait
	if maxWait == 0 {
		maxWait = 500 * time.Millisecond
	}
	// As root the sockets belong to nobody's group so that clients run as nobody can connect;
	// without root the daemon cannot hand them to another group.
	group := ""
	if os.Getuid() == 0 {
		group = fmt.Sprintf(`, group: "%d"`, nobodyUID)
	}
	cfg := fmt.Sprintf(`state_dir: %s
sockets:
  agent: {path: %s, mode: "0660"%s}
  admin: {path: %s, mode: "0660"%s}
%s
policy: %s
protocol: {network: "eip155:84532", chain_id: 84532}
approvals: {max_wait: %s}
kill_switch:
  trip_file: %s
  poll_interval: 100ms
  two_operator_resume: %v
  confirm_within: 1m
operators:
  - {name: alice, uid: %d, groups: [finance, security]}
  - {name: bob, uid: %d, groups: [security]}
limits:
  read_header_timeout: 1s
  read_timeout: 2s
  max_body_bytes: 65536
%s
log_level: info
`, stateDir, e.agent, group, e.admin, group, o.hsm, e.policy,
		maxWait, filepath.Join(e.dir, "STOP"), o.twoOperators, os.Getuid(), nobodyUID, o.extra)
	if err := os.WriteFile(e.cfg, []byte(cfg), 0o600); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) writePolicy(p string) {
	e.t.Helper()
	p = strings.ReplaceAll(p, "{{WALLET}}", e.wallet)
	tmp := e.policy + ".tmp"
	if err := os.WriteFile(tmp, []byte(p), 0o600); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Rename(tmp, e.policy); err != nil {
		e.t.Fatal(err)
	}
}

// start runs `signerd run --config` and waits until both sockets answer.
func (e *env) start() {
	e.t.Helper()
	if e.proc != nil {
		e.t.Fatal("daemon already running")
	}
	f, err := os.OpenFile(filepath.Join(e.dir, "signerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		e.t.Fatal(err)
	}
	e.logf = f
	args := []string{"run", "--config", e.cfg}
	if p := os.Getenv("SIGNERD_E2E_CPUPROFILE"); p != "" { // diagnostics: profile the daemon
		args = append(args, "--cpuprofile", fmt.Sprintf("%s.%d", p, time.Now().UnixNano()))
	}
	cmd := exec.Command(signerdBin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if n := os.Getenv("SIGNERD_E2E_GOMAXPROCS"); n != "" { // diagnostics: the daemon's GOMAXPROCS
		cmd.Env = append(os.Environ(), "GOMAXPROCS="+n)
	}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.proc = cmd
	e.exited = make(chan error, 1)
	go func() { e.exited <- cmd.Wait() }()
	c, a := e.agentClient(), e.adminClient()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st1, _, err1 := c.call("GET", "/v1/health", nil)
		st2, _, err2 := a.call("GET", "/v1/health", nil)
		if err1 == nil && err2 == nil && st1 == 200 && st2 == 200 {
			return
		}
		select {
		case err := <-e.exited:
			e.proc = nil
			e.t.Fatalf("signerd exited during start-up: %v\n%s", err, e.log())
		default:
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("signerd not ready: %v %v\n%s", err1, err2, e.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *env) log() string {
	b, _ := os.ReadFile(filepath.Join(e.dir, "signerd.log"))
	if len(b) > 8000 {
		b = b[len(b)-8000:]
	}
	return string(b)
}

// stop sends SIGTERM and waits for a clean exit (which it checks when check is set via stopClean).
func (e *env) stop() error {
	if e.proc == nil {
		return nil
	}
	e.proc.Process.Signal(syscall.SIGTERM)
	var err error
	select {
	case err = <-e.exited:
	case <-time.After(30 * time.Second):
		e.proc.Process.Kill()
		err = <-e.exited
		err = fmt.Errorf("signerd did not stop within 30s after SIGTERM (killed): %v", err)
	}
	e.proc = nil
	if e.logf != nil {
		e.logf.Close()
	}
	return err
}

func (e *env) stopClean() {
	e.t.Helper()
	if err := e.stop(); err != nil {
		e.t.Fatalf("signerd did not stop cleanly: %v\n%s", err, e.log())
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (e *env) kill() {
	if e.proc == nil {
		return
	}
	e.proc.Process.Signal(syscall.SIGKILL)
	<-e.exited
	e.proc = nil
	e.logf.Close()
}

func (e *env) agentClient() *client { return newClient(e.agent) }
func (e *env) adminClient() *client { return newClient(e.admin) }

// ctl runs signerctl against the admin socket as the test's own uid (operator alice) and returns
// stdout, stderr and the exit code.
func (e *env) ctl(args ...string) (string, string, int) {
	return e.ctlAs(0, args...)
}

// ctlAs runs signerctl as uid (0 = the test's own uid).
func (e *env) ctlAs(uid uint32, args ...string) (string, string, int) {
	e.t.Helper()
	cmd := exec.Command(signerctlBin, append(args, "--socket", e.admin)...)
	if uid != 0 && uid != uint32(os.Getuid()) {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("signerctl %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// ---- HTTP over a Unix socket ----

type client struct {
	h    *http.Client
	sock string
}

func newClient(sock string) *client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		MaxIdleConnsPerHost: 64,
	}
	return &client{h: &http.Client{Transport: tr, Timeout: 60 * time.Second}, sock: sock}
}

func (c *client) close() { c.h.CloseIdleConnections() }

// call sends in as JSON (raw bytes are sent as is) and returns the status and body.
func (c *client) call(method, path string, in any) (int, []byte, error) {
	var body io.Reader
	switch v := in.(type) {
	case nil:
	case []byte:
		body = bytes.NewReader(v)
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return 0, nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://signerd"+path, body)
	if err != nil {
		return 0, nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.h.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// apiErr is the daemon's error envelope.
type apiErr struct {
	Code       string `json:"code"`
	Reason     string `json:"reason"`
	Rule       string `json:"rule"`
	Field      string `json:"field"`
	RecordID   string `json:"record_id"`
	ApprovalID string `json:"approval_id"`
}

func errOf(body []byte) apiErr {
	var env struct {
		Error apiErr `json:"error"`
	}
	if json.Unmarshal(body, &env) != nil {
		cbor.Unmarshal(body, &env) // the daemon answers CBOR requests in CBOR
	}
	return env.Error
}

// ---- claims ----

type claims map[string]any

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return "0x" + hex.EncodeToString(b)
}

// newClaims returns V1 claims for wallet1 paying sellerOK amount (decimal) on a fresh tab.
func newClaims(amount string) claims {
	return claims{
		"version": "v1", "user_address": wallet1, "recipient_address": sellerOK,
		"tab_id": randHex(16), "req_id": "0x1", "amount": amount, "asset_address": usdc,
		"timestamp": time.Now().Unix(),
	}
}

func (c claims) with(kv ...any) claims {
	out := claims{}
	for k, v := range c {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i].(string)] = kv[i+1]
	}
	return out
}

// canonicalV2 turns V1 claims into V2 claims with the given validation fields and the
// canonical validation hashes (as Core requires).
func (c claims) canonicalV2(t *testing.T, registry, validator string, minScore uint8, tag string) claims {
	t.Helper()
	v1 := c.with("version", "v1")
	raw, _ := json.Marshal(v1)
	dc, err := fourmica.DecodeClaims(raw)
	if err != nil || dc.V1 == nil {
		t.Fatalf("v1 claims: %v", err)
	}
	reg, err1 := fourmica.ParseAddress(registry)
	val, err2 := fourmica.ParseAddress(validator)
	job, err3 := fourmica.ParseHash("0x1e8d7affdec8df51ae5319b51f761c1e6cd166e9fa61e013889f2e65136eb73a")
	agentID, err4 := fourmica.ParseU256("0x2a")
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
		t.Fatal(err1, err2, err3, err4)
	}
	v2 := &fourmica.ClaimsV2{ClaimsV1: *dc.V1, ValidationRegistry: reg, ValidationChainID: 84532, Validator: val,
		ValidatorAgentID: agentID, MinValidationScore: minScore, JobHash: job, RequiredValidationTag: tag}
	v2.Fill()
	raw, err = json.Marshal(fourmica.ClaimsOfV2(v2))
	if err != nil {
		t.Fatal(err)
	}
	out := claims{}
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// guarantee is a successful /v1/guarantees answer.
type guarantee struct {
	Signature string          `json:"signature"`
	Digest    string          `json:"digest"`
	Request   json.RawMessage `json:"request"`
	RecordID  string          `json:"record_id"`
}

func sign(c *client, cl claims, labels map[string]string) (int, guarantee, apiErr, error) {
	body := map[string]any{"claims": cl, "scheme": "eip712"}
	if labels != nil {
		body["task"] = map[string]any{"id": labels["task"], "labels": labels}
	}
	st, raw, err := c.call("POST", "/v1/guarantees", body)
	var g guarantee
	if err != nil {
		return 0, g, apiErr{}, err
	}
	if st == 200 {
		err = json.Unmarshal(raw, &g)
		return st, g, apiErr{}, err
	}
	return st, g, errOf(raw), nil
}

var devDomain = func() *fourmica.Domain {
	d, err := fourmica.NewDomain("4mica", "1", 84532)
	if err != nil {
		panic(err)
	}
	return d
}()

// verifyGuarantee checks the signature recovers to wallet1 over the recomputed digest.
func verifyGuarantee(t *testing.T, g guarantee) {
	t.Helper()
	req, err := fourmica.DecodeRequest(g.Request)
	if err != nil {
		t.Fatalf("request body does not decode: %v\n%s", err, g.Request)
	}
	digest, err := devDomain.VerifyRequest(req)
	if err != nil {
		t.Fatalf("signature does not verify: %v", err)
	}
	if got := digest.Hex(); !strings.EqualFold(got, g.Digest) {
		t.Fatalf("digest %s, daemon said %s", got, g.Digest)
	}
	if !strings.EqualFold(req.Claims.Payment().User.Hex(), wallet1) {
		t.Fatalf("claims user %s, want %s", req.Claims.Payment().User.Hex(), wallet1)
	}
}

// amountOf parses a decimal or 0x amount.
func amountOf(s string) *big.Int {
	v, ok := new(big.Int).SetString(strings.TrimPrefix(s, "0x"), map[bool]int{true: 16, false: 10}[strings.HasPrefix(s, "0x")])
	if !ok {
		panic("bad amount " + s)
	}
	return v
}

// parallel runs f(i) for i in [0,n) on n goroutines and waits.
func parallel(n int, f func(i int)) {
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); f(i) }()
	}
	wg.Wait()
}

// needRoot stops a test that must run a client as another uid: skipped for a developer without
// root, failed in CI (CI=true), where nothing may be skipped.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Getuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test runs clients as another uid (nobody) and must run as root in CI")
	}
	t.Skip("needs root to run a client as another uid (nobody)")
}

// clientMain is the test binary run as a one-shot HTTP client over a Unix socket (as another
// uid): SIGNERD_E2E_SOCK, SIGNERD_E2E_METHOD, SIGNERD_E2E_PATH, body on stdin. It prints the
// answer's body, a newline and the status code.
func clientMain() int {
	body, _ := io.ReadAll(os.Stdin)
	c := newClient(os.Getenv("SIGNERD_E2E_SOCK"))
	var in any
	if len(body) > 0 {
		in = body
	}
	st, raw, err := c.call(os.Getenv("SIGNERD_E2E_METHOD"), os.Getenv("SIGNERD_E2E_PATH"), in)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("%s\n%d", raw, st)
	return 0
}
