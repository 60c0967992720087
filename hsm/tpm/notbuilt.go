//go:build no_tpm

package tpm

import "github.com/signerd/signerd/hsm"

func init() { hsm.RegisterNotBuilt("tpm") }
