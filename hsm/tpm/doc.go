// Package tpm is the TPM 2.0 key backend. A TPM has no secp256k1, so wallet keys are sealed
// by the TPM (optionally to PCRs), stored as blobs on disk, and unsealed into locked memory
// outside the Go heap to sign.
package tpm
