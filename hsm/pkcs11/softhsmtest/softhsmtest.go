// Package softhsmtest gives tests (of any package) real SoftHSM2 tokens in a temporary
// directory, ready to open as a "pkcs11" backend.
//
// SoftHSM2 reads SOFTHSM2_CONF and its token directory once, at the process's first
// C_Initialize, and a process initialises a module only once. So a test binary sets up its
// tokens exactly once, before anything opens a backend — from TestMain:
//
//	var env *softhsmtest.Env
//
//	func TestMain(m *testing.M) {
//		var err error
//		env, err = softhsmtest.Setup("wallet", "other")
//		if err != nil { fmt.Fprintln(os.Stderr, err); os.Exit(1) } // never skip: CI must fail
//		code := m.Run()
//		env.Cleanup()
//		os.Exit(code)
//	}
//
// and then opens env.Options("wallet") with hsm.Open. A missing softhsm2-util or module is an
// error, never a skip.
package softhsmtest

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/signerd/signerd/hsm"
	"github.com/signerd/signerd/hsm/pkcs11"
)

// SOPIN is the security officer PIN of every test token.
const SOPIN = "87654321"

// Token is one initialised test token.
type Token struct {
	Label   string
	PIN     string // user PIN (test tokens only)
	PINFile string // 0600 file holding PIN
}

// Env is a SoftHSM2 configuration with its tokens, in a temporary directory.
type Env struct {
	pkcs11.SoftHSMDir
	Module string
	Tokens map[string]Token
}

var (
	once    sync.Mutex
	current *Env
)

// Setup creates a temporary SoftHSM2 configuration, sets SOFTHSM2_CONF for this process,
// initialises one token per label (user PIN "1234"+label index, SO PIN SOPIN) and writes a
// 0600 PIN file for each. It may be called once per process; a second call returns an error.
func Setup(labels ...string) (*Env, error) {
	once.Lock()
	defer once.Unlock()
	if current != nil {
		return nil, fmt.Errorf("softhsmtest: Setup already ran in this process (SoftHSM2 is initialised once per process)")
	}
	tmp, err := os.MkdirTemp("", "signerd-softhsm-")
	if err != nil {
		return nil, err
	}
	e, err := Prepare(tmp, labels...)
	if err != nil {
		return nil, err
	}
	if err := os.Setenv("SOFTHSM2_CONF", e.Conf); err != nil {
		return nil, err
	}
	current = e
	return e, nil
}

// Prepare is Setup without touching this process: it writes dir/softhsm2.conf, initialises the
// tokens and PIN files, and leaves SOFTHSM2_CONF alone. Use it for tokens that another process
// (a daemon started by the test) will open: pass it Options(label) — their ModuleEnv carries
// SOFTHSM2_CONF — or set SOFTHSM2_CONF=e.Conf in its environment. It may be called any number
// of times, with a different dir each time.
func Prepare(dir string, labels ...string) (*Env, error) {
	module := pkcs11.SoftHSMModule()
	if _, err := os.Stat(module); err != nil {
		return nil, fmt.Errorf("softhsmtest: SoftHSM2 module missing (install softhsm2 or set SOFTHSM2_MODULE): %w", err)
	}
	d, err := pkcs11.WriteSoftHSMDir(dir)
	if err != nil {
		return nil, err
	}
	e := &Env{SoftHSMDir: d, Module: module, Tokens: map[string]Token{}}
	for i, l := range labels {
		pin := fmt.Sprintf("1234%02d", i)
		if err := d.InitToken(l, []byte(pin), []byte(SOPIN)); err != nil {
			return nil, fmt.Errorf("softhsmtest: %w", err)
		}
		pf := filepath.Join(d.Dir, l+".pin")
		if err := pkcs11.WritePINFile(pf, []byte(pin)); err != nil {
			return nil, err
		}
		e.Tokens[l] = Token{Label: l, PIN: pin, PINFile: pf}
	}
	return e, nil
}

// Options returns backend options for the token labelled label: PIN from its 0600 file, two
// sessions, and a short retry interval so recovery tests run quickly.
func (e *Env) Options(label string) hsm.Options {
	t := e.Tokens[label]
	return hsm.Options{Type: "pkcs11", PKCS11: hsm.PKCS11Options{
		Module:        e.Module,
		ModuleEnv:     map[string]string{"SOFTHSM2_CONF": e.Conf},
		TokenLabel:    label,
		PINFile:       t.PINFile,
		Sessions:      2,
		MaxWaiting:    64,
		RetryInterval: 100 * time.Millisecond,
	}}
}

// Cleanup removes the temporary directory. Call it after every backend is closed.
func (e *Env) Cleanup() { _ = os.RemoveAll(e.Dir) }
