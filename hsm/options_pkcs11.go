package hsm

// PKCS11Options configure the PKCS#11 backend (hsm/pkcs11). Owned by that backend.
type PKCS11Options struct {
	// Module is the path of the PKCS#11 shared library.
	Module string `yaml:"module" json:"module"`
	// TokenLabel selects the token by label (slot ids are not stable).
	TokenLabel string `yaml:"token_label" json:"token_label"`
	// PINFile is a file holding the user PIN; it must be mode 0400 or 0600.
	PINFile string `yaml:"pin_file" json:"pin_file"`
	// PINEnv names an environment variable holding the user PIN (used when PINFile is empty).
	PINEnv string `yaml:"pin_env" json:"pin_env"`
	// Sessions is the size of the logged-in session pool (default: number of CPUs).
	Sessions int `yaml:"sessions" json:"sessions"`
	// MaxWaiting bounds callers waiting for a session; past it Sign returns ErrOverloaded.
	MaxWaiting int `yaml:"max_waiting" json:"max_waiting"`
}
