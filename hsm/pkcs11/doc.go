// Package pkcs11 is the PKCS#11 key backend: secp256k1 wallet keys generated on (or imported
// into) a token as non-extractable objects, used through a pool of logged-in sessions.
package pkcs11
