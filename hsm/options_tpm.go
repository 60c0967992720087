package hsm

// TPMOptions configure the TPM backend (hsm/tpm). Owned by that backend.
type TPMOptions struct {
	// Device is a TPM character device, e.g. /dev/tpmrm0.
	Device string `yaml:"device" json:"device"`
	// Address is a TPM simulator endpoint: "tcp:127.0.0.1:2321" or "unix:/path/swtpm.sock".
	Address string `yaml:"address" json:"address"`
	// KeyDir holds the sealed key blobs.
	KeyDir string `yaml:"key_dir" json:"key_dir"`
	// PCRs binds newly sealed keys to these sha256 PCRs (empty: no PCR policy).
	PCRs []int `yaml:"pcrs" json:"pcrs"`
	// UnsealPerSignature unseals on every signature instead of once at start.
	UnsealPerSignature bool `yaml:"unseal_per_signature" json:"unseal_per_signature"`
}
