package config

import (
	_ "embed"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"github.com/signerd/signerd/hsm"
)

// DevPolicy is the development policy (a copy of testdata/policy/dev.yaml, kept identical by
// a test): the uid that started the daemon may pay any seller in any asset on Base Sepolia, up
// to 10^18 base units per request.
//
//go:embed dev-policy.yaml
var DevPolicy []byte

// Development defaults.
const (
	DevNetwork    = "eip155:84532"
	DevChainID    = 84532
	DevTokenLabel = "signerd-dev"
)

// Dev returns the configuration of `signerd dev --dir DIR`: state in DIR/state, a SoftHSM2
// token labelled DevTokenLabel configured by DIR/hsm/softhsm2.conf with its PIN in
// DIR/hsm/pin, the development policy in DIR/policy.yaml, sockets DIR/agent.sock and
// DIR/admin.sock, Base Sepolia with the EIP-712 domain "4mica" version "1", a trip file
// DIR/STOP, and the invoking user as the single operator (one operator may resume). It only
// computes paths; see cmd/signerd for the provisioning.
func Dev(dir string) (*Config, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	uid := uint32(os.Getuid())
	name := "uid-" + strconv.FormatUint(uint64(uid), 10)
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	c := &Config{
		StateDir: filepath.Join(abs, "state"),
		Sockets: Sockets{
			Agent: Socket{Path: filepath.Join(abs, "agent.sock"), Mode: 0o660},
			Admin: Socket{Path: filepath.Join(abs, "admin.sock"), Mode: 0o600},
		},
		HSM: hsm.Options{Type: "pkcs11", PKCS11: hsm.PKCS11Options{
			TokenLabel: DevTokenLabel,
			PINFile:    filepath.Join(abs, "hsm", "pin"),
			Sessions:   runtime.NumCPU(),
			MaxWaiting: 1024,
			ModuleEnv:  map[string]string{"SOFTHSM2_CONF": filepath.Join(abs, "hsm", "softhsm2.conf")},
		}},
		Policy:     filepath.Join(abs, "policy.yaml"),
		Protocol:   Protocol{Network: DevNetwork, EIP712Name: "4mica", EIP712Version: "1", ChainID: DevChainID},
		Approvals:  Approvals{MaxWait: 20 * time.Second},
		KillSwitch: KillSwitch{TripFile: filepath.Join(abs, "STOP"), TwoOperatorResume: false},
		Operators:  []Operator{{Name: name, UID: uid, Groups: []string{"operators", "finance", "security"}}},
	}
	c.Defaults()
	return c, c.Validate()
}
