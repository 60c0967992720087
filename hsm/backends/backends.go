// Package backends links every key backend this build includes into the hsm registry.
// Import it for its side effects; a backend left out with a build tag (no_pkcs11, no_tpm)
// then fails to open with hsm.ErrNotBuilt.
package backends

import (
	_ "github.com/signerd/signerd/hsm/pkcs11" // PKCS#11 tokens
	_ "github.com/signerd/signerd/hsm/tpm"    // TPM-sealed keys
)
