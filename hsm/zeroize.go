package hsm

// Zeroizer is implemented by backends that hold key material in process memory (the TPM
// backend's unsealed keys). The daemon calls Zeroize when the kill switch engages: every
// in-memory copy is overwritten with zeros at once and the backend refuses to sign until it is
// closed and opened again. Zeroize never fails and is safe to call more than once.
type Zeroizer interface {
	Zeroize()
}
