package hsm

import "time"

// TPMOptions configure the TPM backend (hsm/tpm). Owned by that backend; see docs/tpm.md.
type TPMOptions struct {
	// Device is a TPM character device, e.g. /dev/tpmrm0 (use the resource-managed device).
	Device string `yaml:"device" json:"device"`
	// Address is a TPM simulator endpoint: "tcp:127.0.0.1:2321" or "unix:/path/swtpm.sock".
	// Exactly one of Device and Address is set.
	Address string `yaml:"address" json:"address"`
	// KeyDir holds the sealed key blobs (created 0700 if absent).
	KeyDir string `yaml:"key_dir" json:"key_dir"`
	// PCRs binds newly sealed keys to these sha256 PCRs (0..23, increasing; empty: no PCR policy).
	PCRs []int `yaml:"pcrs" json:"pcrs"`
	// UnsealPerSignature unseals on every signature instead of once at start.
	UnsealPerSignature bool `yaml:"unseal_per_signature" json:"unseal_per_signature"`
	// HealthInterval is how often the TPM is probed and, while it is gone, how often the backend
	// tries to reconnect (default 1s).
	HealthInterval time.Duration `yaml:"health_interval" json:"health_interval"`
	// CommandTimeout bounds one command round trip on a simulator socket (default 30s).
	CommandTimeout time.Duration `yaml:"command_timeout" json:"command_timeout"`
	// InsecureNoParameterEncryption turns off session parameter encryption, so the key crosses
	// the TPM bus in clear when sealed and unsealed. For measurements only.
	InsecureNoParameterEncryption bool `yaml:"insecure_no_parameter_encryption" json:"insecure_no_parameter_encryption"`
}
