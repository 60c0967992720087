// Package config reads signerd's YAML configuration (sockets, state directory, key backend,
// policy, protocol parameters, approvals, kill switch, operators, limits, the optional 4Mica
// Core connection) and supplies the
// development defaults used by `signerd dev`. Unknown fields are errors; a config file that
// others can read is refused.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"gopkg.in/yaml.v3"

	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/signerd/hardening"
)

// Config is the daemon's whole configuration.
type Config struct {
	// StateDir holds the ledger/audit database and any daemon state.
	StateDir string `yaml:"state_dir"`
	// Sockets are the agent and admin listeners.
	Sockets Sockets `yaml:"sockets"`
	// HSM selects and configures the key backend.
	HSM hsm.Options `yaml:"hsm"`
	// Policy is the policy file or directory.
	Policy string `yaml:"policy"`
	// Protocol are the 4Mica parameters the daemon signs for.
	Protocol Protocol `yaml:"protocol"`
	// Approvals configure held requests.
	Approvals Approvals `yaml:"approvals"`
	// KillSwitch configures the emergency stop.
	KillSwitch KillSwitch `yaml:"kill_switch"`
	// Operators may use the admin socket.
	Operators []Operator `yaml:"operators"`
	// Limits protect the daemon from slow or greedy clients.
	Limits Limits `yaml:"limits"`
	// Performance tunes the signing path.
	Performance Performance `yaml:"performance"`
	// LogLevel is debug, info, warn or error (default info).
	LogLevel string `yaml:"log_level"`
	// Core connects the daemon to 4Mica Core and the Core4Mica contract for the collateral
	// and settlement endpoints (optional; without core.url they answer 503 core_unavailable).
	Core Core `yaml:"core"`
}

// Core is the optional connection to 4Mica Core (signerd/coreclient).
type Core struct {
	// URL is Core's HTTP base URL, e.g. https://base.api.4mica.xyz/ ("" = no Core client).
	URL string `yaml:"url"`
	// SIWEDomain must equal the domain of Core's SIWE template (required with url; see
	// coreclient.Options.SIWEDomain).
	SIWEDomain string `yaml:"siwe_domain"`
	// RPCURL is the Ethereum JSON-RPC endpoint for transactions and views (default: Core's
	// public params ethereum_http_rpc_url).
	RPCURL string `yaml:"rpc_url"`
	// Contract pins the Core4Mica address (required with url); Core's public params must name
	// the same one. Deposits, approvals and ERC-20 tab payments go to it.
	Contract string `yaml:"contract"`
	// MaxFeePerGasWei refuses a transaction whose fee cap would exceed it (decimal wei).
	MaxFeePerGasWei string `yaml:"max_fee_per_gas_wei"`
	// ReceiptTimeout bounds waiting for a receipt ("wait": true, and between the approve and
	// the call of a two-transaction request); default 2m.
	ReceiptTimeout time.Duration `yaml:"receipt_timeout"`
}

// Enabled reports whether a Core URL is configured.
func (c Core) Enabled() bool { return c.URL != "" }

// ContractAddress is the pinned contract (zero when none).
func (c Core) ContractAddress() common.Address {
	if c.Contract == "" {
		return common.Address{}
	}
	return common.HexToAddress(c.Contract)
}

// MaxFeePerGas is max_fee_per_gas_wei as an integer (nil when unset or invalid).
func (c Core) MaxFeePerGas() *big.Int {
	if c.MaxFeePerGasWei == "" {
		return nil
	}
	v, ok := new(big.Int).SetString(c.MaxFeePerGasWei, 10)
	if !ok || v.Sign() <= 0 {
		return nil
	}
	return v
}

func (c Core) validate(bad func(string, ...any)) {
	if c.URL == "" {
		if c.SIWEDomain != "" || c.RPCURL != "" || c.Contract != "" || c.MaxFeePerGasWei != "" || c.ReceiptTimeout != 0 {
			bad("core: url is required when other core fields are set")
		}
		return
	}
	checkURL := func(field, v string) {
		u, err := url.Parse(v)
		switch {
		case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
			bad("core.%s %q: want an absolute http(s) URL", field, v)
		case u.User != nil || u.RawQuery != "" || u.Fragment != "":
			bad("core.%s: must not carry user info, a query or a fragment (put credentials nowhere in the config)", field)
		}
	}
	checkURL("url", c.URL)
	if c.SIWEDomain == "" {
		bad("core.siwe_domain is required with core.url (the domain of Core's SIWE template, e.g. api.4mica.xyz)")
	} else if strings.ContainsAny(c.SIWEDomain, "/ \t\r\n") {
		bad("core.siwe_domain %q: a host name (with optional port), not a URL", c.SIWEDomain)
	}
	if c.RPCURL != "" {
		u, err := url.Parse(c.RPCURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
			bad("core.rpc_url: want an absolute http(s) or ws(s) URL")
		}
	}
	if c.Contract == "" {
		bad("core.contract is required with core.url (the Core4Mica address deposits, approvals and tab payments go to; Core's public params must name the same)")
	}
	if c.Contract != "" && (!common.IsHexAddress(c.Contract) || !strings.HasPrefix(c.Contract, "0x") || common.HexToAddress(c.Contract) == (common.Address{})) {
		bad("core.contract %q: want a non-zero 0x-prefixed 20-byte hex address", c.Contract)
	}
	if c.MaxFeePerGasWei != "" && c.MaxFeePerGas() == nil {
		bad("core.max_fee_per_gas_wei %q: want a positive decimal number of wei", c.MaxFeePerGasWei)
	}
	if c.ReceiptTimeout < 0 {
		bad("core.receipt_timeout must not be negative")
	}
}

// Performance tunes the signing path.
type Performance struct {
	// Reservation is obsolete and ignored (the daemon warns): a request's intent is always
	// written while the HSM signs and is durable before the signature leaves (see
	// docs/ledger.md). The old values are accepted so that existing configurations still load.
	Reservation string `yaml:"reservation"`
}

// Sockets names both listeners.
type Sockets struct {
	Agent Socket `yaml:"agent"`
	Admin Socket `yaml:"admin"`
}

// Socket is one Unix socket: its path, its mode and the group that owns it.
type Socket struct {
	Path string `yaml:"path"`
	// Mode is the octal permission of the socket file, e.g. "0660".
	Mode FileMode `yaml:"mode"`
	// Group is a group name or numeric gid given ownership of the socket ("" keeps the daemon's).
	Group string `yaml:"group"`
}

// FileMode is an octal permission written as a string ("0660") or an integer in YAML.
type FileMode os.FileMode

// UnmarshalYAML reads an octal permission.
func (m *FileMode) UnmarshalYAML(n *yaml.Node) error {
	v, err := strconv.ParseUint(n.Value, 8, 32)
	if err != nil || v > 0o777 {
		return fmt.Errorf("line %d: mode %q: want an octal permission like 0660", n.Line, n.Value)
	}
	*m = FileMode(v)
	return nil
}

// Protocol are the 4Mica parameters: the CAIP-2 network and the EIP-712 domain.
type Protocol struct {
	Network       string `yaml:"network"`
	EIP712Name    string `yaml:"eip712_name"`
	EIP712Version string `yaml:"eip712_version"`
	ChainID       uint64 `yaml:"chain_id"`
}

// Approvals configure requests the policy holds for a human.
type Approvals struct {
	// MaxWait is how long an agent's request is held (long poll) before 202 approval_pending.
	MaxWait time.Duration `yaml:"max_wait"`
	// MaxPendingPerAgent caps the pending approvals of one agent (0: the approvals package's
	// default, 100), so one agent cannot fill the daemon-wide cap and block the others. Over
	// either cap a request gets 503 overloaded with Retry-After.
	MaxPendingPerAgent int `yaml:"max_pending_per_agent"`
}

// KillSwitch configures the emergency stop.
type KillSwitch struct {
	// TripFile engages the switch when it exists ("" disables the file trigger).
	TripFile string `yaml:"trip_file"`
	// PollInterval is how often the trip file is checked (default 1s).
	PollInterval time.Duration `yaml:"poll_interval"`
	// TwoOperatorResume requires a second, different operator to confirm a resume.
	TwoOperatorResume bool `yaml:"two_operator_resume"`
	// ConfirmWithin bounds the time between the two resume calls (default 5m).
	ConfirmWithin time.Duration `yaml:"confirm_within"`
}

// Operator is a person or team allowed on the admin socket, identified by uid (peer credentials).
type Operator struct {
	Name string `yaml:"name"`
	UID  uint32 `yaml:"uid"`
	// Groups are the approval groups the operator belongs to (policy approval rules name them).
	Groups []string `yaml:"groups"`
}

// ApprovalGroups maps each approval group to the names of its operators; nil when no
// operator declares a group (then any operator may decide any approval).
func (c *Config) ApprovalGroups() map[string][]string {
	var m map[string][]string
	for _, o := range c.Operators {
		for _, g := range o.Groups {
			if m == nil {
				m = map[string][]string{}
			}
			m[g] = append(m[g], o.Name)
		}
	}
	return m
}

// Limits protect the daemon.
type Limits struct {
	MaxBodyBytes      int64         `yaml:"max_body_bytes"`
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	ReadTimeout       time.Duration `yaml:"read_timeout"`
	WriteTimeout      time.Duration `yaml:"write_timeout"`
	IdleTimeout       time.Duration `yaml:"idle_timeout"`
	// MaxInFlight bounds concurrent signing requests; past it callers get 503 overloaded.
	MaxInFlight int `yaml:"max_in_flight"`
	// MaxConnections bounds open connections per socket; past it new ones wait in the backlog.
	MaxConnections int `yaml:"max_connections"`
	// DrainTimeout bounds the SIGTERM drain.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
}

// Load reads and validates the config at path. The file must not be readable by others.
func Load(path string) (*Config, error) {
	if err := hardening.CheckPrivateFile(path); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(raw, filepath.Dir(path))
}

// Parse decodes YAML (unknown fields rejected), resolves relative paths against baseDir,
// fills defaults and validates.
func Parse(raw []byte, baseDir string) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(baseDir, *p)
		}
	}
	abs(&c.StateDir)
	abs(&c.Sockets.Agent.Path)
	abs(&c.Sockets.Admin.Path)
	abs(&c.Policy)
	abs(&c.KillSwitch.TripFile)
	abs(&c.HSM.PKCS11.PINFile)
	abs(&c.HSM.TPM.KeyDir)
	c.Defaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Defaults fills unset fields.
func (c *Config) Defaults() {
	if c.Sockets.Agent.Mode == 0 {
		c.Sockets.Agent.Mode = 0o660
	}
	if c.Sockets.Admin.Mode == 0 {
		c.Sockets.Admin.Mode = 0o600
	}
	if c.Protocol.EIP712Name == "" {
		c.Protocol.EIP712Name = "4mica"
	}
	if c.Protocol.EIP712Version == "" {
		c.Protocol.EIP712Version = "1"
	}
	if c.Approvals.MaxWait == 0 {
		c.Approvals.MaxWait = 20 * time.Second
	}
	if c.KillSwitch.PollInterval == 0 {
		c.KillSwitch.PollInterval = time.Second
	}
	if c.KillSwitch.ConfirmWithin == 0 {
		c.KillSwitch.ConfirmWithin = 5 * time.Minute
	}
	l := &c.Limits
	if l.MaxBodyBytes == 0 {
		l.MaxBodyBytes = 64 << 10
	}
	if l.ReadHeaderTimeout == 0 {
		l.ReadHeaderTimeout = 2 * time.Second
	}
	if l.ReadTimeout == 0 {
		l.ReadTimeout = 5 * time.Second
	}
	if l.WriteTimeout == 0 {
		// Long enough for an approval long poll.
		l.WriteTimeout = c.Approvals.MaxWait + 30*time.Second
	}
	if l.IdleTimeout == 0 {
		l.IdleTimeout = 2 * time.Minute
	}
	if l.MaxInFlight == 0 {
		l.MaxInFlight = 512
	}
	if l.MaxConnections == 0 {
		l.MaxConnections = 1024
	}
	if l.DrainTimeout == 0 {
		l.DrainTimeout = 15 * time.Second
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if c.Core.URL != "" && c.Core.ReceiptTimeout == 0 {
		c.Core.ReceiptTimeout = 2 * time.Minute
	}
}

// Validate checks the config for mistakes an operator could make.
func (c *Config) Validate() error {
	var errs []error
	bad := func(f string, a ...any) { errs = append(errs, fmt.Errorf("config: "+f, a...)) }
	if c.StateDir == "" {
		bad("state_dir is required")
	}
	if c.Sockets.Agent.Path == "" {
		bad("sockets.agent.path is required")
	}
	if c.Sockets.Admin.Path == "" {
		bad("sockets.admin.path is required")
	}
	if c.Sockets.Agent.Path != "" && c.Sockets.Agent.Path == c.Sockets.Admin.Path {
		bad("sockets.agent.path and sockets.admin.path must differ")
	}
	if c.Sockets.Admin.Mode&0o007 != 0 || c.Sockets.Admin.Mode&^0o660 != 0 {
		bad("sockets.admin.mode %04o: at most 0660 (owner and group only)", c.Sockets.Admin.Mode)
	}
	if c.Sockets.Agent.Mode&0o007 != 0 || c.Sockets.Agent.Mode&^0o660 != 0 {
		bad("sockets.agent.mode %04o: at most 0660 (owner and group only)", c.Sockets.Agent.Mode)
	}
	for _, s := range []Socket{c.Sockets.Agent, c.Sockets.Admin} {
		if s.Group != "" {
			if _, err := LookupGroup(s.Group); err != nil {
				bad("socket %s: %v", s.Path, err)
			}
		}
	}
	if c.HSM.Type == "" {
		bad("hsm.type is required")
	}
	if c.Policy == "" {
		bad("policy is required")
	}
	if c.Protocol.Network == "" {
		bad("protocol.network is required (CAIP-2, e.g. eip155:84532)")
	}
	if c.Protocol.ChainID == 0 {
		bad("protocol.chain_id is required")
	} else if want := fmt.Sprintf("eip155:%d", c.Protocol.ChainID); c.Protocol.Network != "" && c.Protocol.Network != want {
		bad("protocol.network %q does not match chain_id %d (want %q)", c.Protocol.Network, c.Protocol.ChainID, want)
	}
	if len(c.Operators) == 0 {
		bad("operators: at least one operator is required")
	}
	seen := map[uint32]bool{}
	for i, o := range c.Operators {
		if o.Name == "" {
			bad("operators[%d].name is required", i)
		}
		if seen[o.UID] {
			bad("operators[%d]: uid %d listed twice", i, o.UID)
		}
		seen[o.UID] = true
	}
	if c.Limits.MaxBodyBytes < 1024 || c.Limits.MaxBodyBytes > 16<<20 {
		bad("limits.max_body_bytes %d: want 1 KiB .. 16 MiB", c.Limits.MaxBodyBytes)
	}
	if c.Limits.MaxInFlight < 1 {
		bad("limits.max_in_flight must be positive")
	}
	if c.Limits.MaxConnections < 1 {
		bad("limits.max_connections must be positive")
	}
	switch c.Performance.Reservation {
	case "", "durable", "early", "deferred":
	default:
		bad("performance.reservation %q: want durable, early or deferred", c.Performance.Reservation)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	c.Core.validate(bad)
	return errors.Join(errs...)
}

// Operator returns the operator with uid, if any.
func (c *Config) Operator(uid uint32) (Operator, bool) {
	for _, o := range c.Operators {
		if o.UID == uid {
			return o, true
		}
	}
	return Operator{}, false
}

// LookupGroup resolves a group name or numeric gid.
func LookupGroup(g string) (int, error) {
	if n, err := strconv.Atoi(g); err == nil {
		return n, nil
	}
	gr, err := user.LookupGroup(g)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(gr.Gid)
}
