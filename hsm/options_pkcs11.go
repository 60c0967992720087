package hsm

import "time"

// PKCS11Options configure the PKCS#11 backend (hsm/pkcs11). Owned by that backend.
type PKCS11Options struct {
	// Module is the path of the PKCS#11 shared library.
	Module string `yaml:"module" json:"module"`
	// ModuleEnv is set in the process environment before the module's first C_Initialize,
	// e.g. {SOFTHSM2_CONF: /etc/signerd/softhsm2.conf}. It must never carry a PIN.
	ModuleEnv map[string]string `yaml:"module_env,omitempty" json:"module_env,omitempty"`
	// TokenLabel selects the token by label (slot ids are not stable).
	TokenLabel string `yaml:"token_label" json:"token_label"`
	// PINFile is a file holding the user PIN; it must be mode 0400 or 0600.
	PINFile string `yaml:"pin_file" json:"pin_file"`
	// PINEnv names an environment variable holding the user PIN (used when PINFile is empty).
	PINEnv string `yaml:"pin_env" json:"pin_env"`
	// Sessions is the size of the logged-in session pool (default: number of CPUs).
	Sessions int `yaml:"sessions" json:"sessions"`
	// MaxWaiting bounds callers waiting for a session; past it Sign returns ErrOverloaded
	// (default: 16 × Sessions).
	MaxWaiting int `yaml:"max_waiting" json:"max_waiting"`
	// RetryInterval is how often an unhealthy backend tries to reconnect and how often a
	// healthy one probes its token (default 1s).
	RetryInterval time.Duration `yaml:"retry_interval,omitempty" json:"retry_interval,omitempty"`
}
