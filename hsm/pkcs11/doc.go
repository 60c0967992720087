// Package pkcs11 is the PKCS#11 key backend: secp256k1 wallet keys generated on (or imported
// into) a token as non-extractable objects, used through a pool of logged-in sessions.
//
// Registered as "pkcs11" in the hsm registry (build with -tags no_pkcs11 to leave it out; cgo is
// required otherwise). Design points:
//
//   - One module per process: the library is loaded and C_Initialize'd once and shared by every
//     Backend naming the same module path; login state is per process and token, so a second
//     backend presenting a different PIN for an already logged-in token is refused (ErrBadPIN).
//   - The token is found by label; the PIN comes from a 0400/0600 file or an environment variable.
//   - Keys: CKA_SENSITIVE, !CKA_EXTRACTABLE, random 16-byte CKA_ID, referenced by RFC 7512 URIs
//     (pkcs11:token=…;id=…;object=…;type=private). Imports get a matching CKO_PUBLIC_KEY object.
//   - Retirement clears CKA_SIGN (the token itself then refuses) and is recorded in a CKO_DATA
//     metadata object per key (application "signerd"), which also holds the creation time
//     (SoftHSM2 cannot read back CKA_START_DATE/CKA_END_DATE).
//   - Signing: a slot of a bounded semaphore (Sessions; more than MaxWaiting waiters get
//     hsm.ErrOverloaded), a pooled session, the cached private-key handle, CKM_ECDSA over the
//     digest, then hsm.FromRS (low-s, v by recovery against the public key) outside the session.
//   - Failures: session/device/token errors and CKR_GENERAL_ERROR mark the backend unhealthy
//     (hsm.ErrUnavailable with the reason); a monitor probes the token every RetryInterval and
//     reconnects by itself, re-initialising the module when needed (SoftHSM2 only rescans its
//     token directory at C_Initialize).
//
// Package softhsmtest creates SoftHSM2 tokens for tests of any package.
package pkcs11
