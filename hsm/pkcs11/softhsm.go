package pkcs11

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// DefaultSoftHSMModule is where Debian installs SoftHSM2's PKCS#11 module. The environment
// variable SOFTHSM2_MODULE overrides it (see SoftHSMModule).
const DefaultSoftHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

// SoftHSMModule returns the SoftHSM2 module path: $SOFTHSM2_MODULE or DefaultSoftHSMModule.
func SoftHSMModule() string {
	if m := os.Getenv("SOFTHSM2_MODULE"); m != "" {
		return m
	}
	return DefaultSoftHSMModule
}

// SoftHSMDir is a SoftHSM2 configuration for development and tests: dir/softhsm2.conf
// pointing at dir/tokens.
type SoftHSMDir struct {
	Dir      string
	Conf     string // dir/softhsm2.conf (export it as SOFTHSM2_CONF)
	TokenDir string // dir/tokens
}

// WriteSoftHSMDir creates dir (0700), dir/tokens and dir/softhsm2.conf, keeping an existing
// configuration file as it is.
func WriteSoftHSMDir(dir string) (SoftHSMDir, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return SoftHSMDir{}, err
	}
	d := SoftHSMDir{Dir: abs, Conf: filepath.Join(abs, "softhsm2.conf"), TokenDir: filepath.Join(abs, "tokens")}
	if err := os.MkdirAll(d.TokenDir, 0o700); err != nil {
		return d, err
	}
	if _, err := os.Stat(d.Conf); err == nil {
		return d, nil
	}
	conf := fmt.Sprintf("# SoftHSM2 configuration written by signerd (development only)\n"+
		"directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"+
		"slots.mechanisms = ALL\nlibrary.reset_on_fork = false\n", d.TokenDir)
	return d, os.WriteFile(d.Conf, []byte(conf), 0o600)
}

// InitToken initialises a new SoftHSM2 token labelled label with softhsm2-util. The PINs are
// passed on softhsm2-util's command line, which is acceptable for development tokens only.
// Tokens must exist before the first C_Initialize of a process that uses them: SoftHSM2 reads
// its token directory only then.
func (d SoftHSMDir) InitToken(label string, userPIN, soPIN []byte) error {
	util, err := exec.LookPath("softhsm2-util")
	if err != nil {
		return fmt.Errorf("softhsm2-util not found (install softhsm2): %w", err)
	}
	cmd := exec.Command(util, "--init-token", "--free", "--label", label, "--so-pin", string(soPIN), "--pin", string(userPIN))
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+d.Conf)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("softhsm2-util --init-token %q: %v: %s", label, err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}

// TokenPath returns the directory in which SoftHSM2 keeps the token labelled label.
func (d SoftHSMDir) TokenPath(label string) (string, error) {
	ents, err := os.ReadDir(d.TokenDir)
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		p := filepath.Join(d.TokenDir, e.Name())
		raw, err := os.ReadFile(filepath.Join(p, "token.object"))
		if err != nil {
			continue
		}
		// token.object stores the label as a 32-byte blank-padded field.
		padded := []byte(label)
		for len(padded) < 32 {
			padded = append(padded, ' ')
		}
		if bytes.Contains(raw, append([]byte{0, 0, 0, 0, 0, 0, 0, 32}, padded...)) {
			return p, nil
		}
	}
	return "", errors.New("no token directory labelled " + label)
}

// RandomPIN returns a random 16-character hexadecimal PIN.
func RandomPIN() []byte {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	out := []byte(hex.EncodeToString(b))
	for i := range b {
		b[i] = 0
	}
	return out
}

// WritePINFile writes pin to path with mode 0600, refusing to replace an existing file.
func WritePINFile(path string, pin []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(append([]byte(nil), pin...), '\n')); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
