package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/signerd/signerd/signerd/hardening"
)

const sample = `
state_dir: state
sockets:
  agent: {path: agent.sock, mode: "0660"}
  admin: {path: admin.sock, mode: "0600"}
hsm:
  type: pkcs11
  pkcs11: {module: /usr/lib/softhsm/libsofthsm2.so, token_label: wallet, pin_file: pin}
policy: policy.yaml
protocol: {network: "eip155:84532", chain_id: 84532}
approvals: {max_wait: 5s}
kill_switch: {trip_file: STOP, two_operator_resume: true, confirm_within: 2m}
operators:
  - {name: alice, uid: 1000, groups: [finance]}
  - {name: bob, uid: 1001}
`

func TestParse(t *testing.T) {
	c, err := Parse([]byte(sample), "/etc/signerd")
	if err != nil {
		t.Fatal(err)
	}
	if c.StateDir != "/etc/signerd/state" || c.HSM.PKCS11.PINFile != "/etc/signerd/pin" || c.KillSwitch.TripFile != "/etc/signerd/STOP" {
		t.Errorf("relative paths not resolved: %+v", c)
	}
	if c.Sockets.Agent.Mode != 0o660 || c.Sockets.Admin.Mode != 0o600 {
		t.Errorf("modes %o %o", c.Sockets.Agent.Mode, c.Sockets.Admin.Mode)
	}
	if c.Protocol.EIP712Name != "4mica" || c.Protocol.EIP712Version != "1" || c.Approvals.MaxWait != 5*time.Second {
		t.Errorf("defaults: %+v", c.Protocol)
	}
	if g := c.ApprovalGroups(); len(g["finance"]) != 1 || g["finance"][0] != "alice" {
		t.Errorf("groups %v", g)
	}
	if o, ok := c.Operator(1001); !ok || o.Name != "bob" {
		t.Errorf("operator lookup")
	}
}

func TestParseRejects(t *testing.T) {
	cases := map[string]string{
		"unknown field":      sample + "bogus: 1\n",
		"admin socket 0666":  strings.Replace(sample, `admin.sock, mode: "0600"`, `admin.sock, mode: "0666"`, 1),
		"agent socket 0777":  strings.Replace(sample, `agent.sock, mode: "0660"`, `agent.sock, mode: "0777"`, 1),
		"bad mode":           strings.Replace(sample, `mode: "0660"`, `mode: "rw"`, 1),
		"network ≠ chain id": strings.Replace(sample, `chain_id: 84532`, `chain_id: 1`, 1),
		"no operators":       strings.Split(sample, "operators:")[0],
		"same socket twice":  strings.Replace(sample, "admin.sock", "agent.sock", 1),
		"duplicate operator": sample + "  - {name: carol, uid: 1000}\n",
		"no policy":          strings.Replace(sample, "policy: policy.yaml\n", "", 1),
		"unknown log level":  sample + "log_level: loud\n",
		"unknown group":      strings.Replace(sample, `mode: "0660"}`, `mode: "0660", group: no-such-group-xyz}`, 1),
	}
	for name, src := range cases {
		if _, err := Parse([]byte(src), "/x"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestLoadRefusesExposedFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "signerd.yaml")
	if err := os.WriteFile(p, []byte(sample), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p); err != nil {
		t.Fatalf("0600 config refused: %v", err)
	}
	for _, mode := range []os.FileMode{0o644, 0o604, 0o620} {
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(p); !errors.Is(err, hardening.ErrExposed) {
			t.Errorf("mode %04o: err %v, want ErrExposed", mode, err)
		}
	}
}

// TestDevPolicyIsTheTestdataOne keeps the embedded copy identical to testdata/policy/dev.yaml.
func TestDevPolicyIsTheTestdataOne(t *testing.T) {
	want, err := os.ReadFile("../../testdata/policy/dev.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(DevPolicy, want) {
		t.Fatal("signerd/config/dev-policy.yaml differs from testdata/policy/dev.yaml: copy it again")
	}
}

func TestDev(t *testing.T) {
	c, err := Dev(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if c.Protocol.Network != "eip155:84532" || c.Protocol.ChainID != 84532 || c.Protocol.EIP712Name != "4mica" || c.Protocol.EIP712Version != "1" {
		t.Errorf("dev protocol %+v", c.Protocol)
	}
	if c.KillSwitch.TwoOperatorResume || len(c.Operators) != 1 || c.Operators[0].UID != uint32(os.Getuid()) {
		t.Errorf("dev operators / resume: %+v %+v", c.Operators, c.KillSwitch)
	}
	if filepath.Base(c.Sockets.Agent.Path) != "agent.sock" || filepath.Base(c.Sockets.Admin.Path) != "admin.sock" {
		t.Errorf("dev sockets %+v", c.Sockets)
	}
}
