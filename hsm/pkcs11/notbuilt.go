//go:build no_pkcs11

package pkcs11

import "github.com/signerd/signerd/hsm"

func init() { hsm.RegisterNotBuilt("pkcs11") }
