//go:build tools

// Package deps pins the project's chosen dependencies while the packages that use them are written.
package deps

import (
	_ "github.com/ethereum/go-ethereum/crypto"
	_ "github.com/ethereum/go-ethereum/crypto/secp256k1"
	_ "github.com/ethereum/go-ethereum/accounts/keystore"
	_ "github.com/ethereum/go-ethereum/signer/core/apitypes"
	_ "github.com/ethereum/go-ethereum/ethclient"
	_ "github.com/fxamacker/cbor/v2"
	_ "github.com/google/go-tpm/tpm2"
	_ "github.com/google/go-tpm/tpm2/transport/simulator"
	_ "github.com/miekg/pkcs11"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "go.etcd.io/bbolt"
	_ "golang.org/x/sys/unix"
	_ "gopkg.in/yaml.v3"
)
