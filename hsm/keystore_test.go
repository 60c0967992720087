package hsm

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ethereum/go-ethereum/accounts/keystore"
	"github.com/ethereum/go-ethereum/crypto"
	"github.com/google/uuid"
)

func TestDecryptKeystoreV3(t *testing.T) {
	k, _ := crypto.GenerateKey()
	addr := crypto.PubkeyToAddress(k.PublicKey)
	doc, err := keystore.EncryptKey(&keystore.Key{Id: uuid.New(), Address: addr, PrivateKey: k}, "s3cret passphrase", keystore.LightScryptN, keystore.LightScryptP)
	if err != nil {
		t.Fatal(err)
	}
	key, gotAddr, err := DecryptKeystoreV3(doc, "s3cret passphrase")
	if err != nil {
		t.Fatal(err)
	}
	if gotAddr != addr || !bytes.Equal(key, crypto.FromECDSA(k)) {
		t.Fatalf("decrypted %s, want %s", gotAddr.Hex(), addr.Hex())
	}
	Zero(key)
	if !bytes.Equal(key, make([]byte, 32)) {
		t.Fatal("Zero left bytes")
	}

	var m map[string]any
	json.Unmarshal(doc, &m)
	mutate := func(f func(map[string]any)) []byte {
		var c map[string]any
		json.Unmarshal(doc, &c)
		f(c)
		out, _ := json.Marshal(c)
		return out
	}
	for name, c := range map[string]struct {
		doc  []byte
		pass string
	}{
		"wrong passphrase": {doc, "s3cret passphrasE"},
		"not json":         {[]byte("{"), "s3cret passphrase"},
		"version 1":        {mutate(func(c map[string]any) { c["version"] = 1 }), "s3cret passphrase"},
		"other address":    {mutate(func(c map[string]any) { c["address"] = strings.Repeat("ab", 20) }), "s3cret passphrase"},
		"bad ciphertext":   {mutate(func(c map[string]any) { c["crypto"].(map[string]any)["ciphertext"] = "00" }), "s3cret passphrase"},
	} {
		key, _, err := DecryptKeystoreV3(c.doc, c.pass)
		if !errors.Is(err, ErrBadKey) || key != nil {
			t.Errorf("%s: key=%v err=%v", name, key != nil, err)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: passphrase in error", name)
		}
	}
	// A file without an address field still decrypts.
	noAddr := mutate(func(c map[string]any) { delete(c, "address") })
	if _, a, err := DecryptKeystoreV3(noAddr, "s3cret passphrase"); err != nil || a != addr {
		t.Fatalf("no address field: %v %s", err, a.Hex())
	}
}

func TestPublicKey(t *testing.T) {
	k, _ := crypto.GenerateKey()
	pub, err := PublicKey(crypto.FromECDSA(k))
	if err != nil || !bytes.Equal(pub, crypto.FromECDSAPub(&k.PublicKey)) {
		t.Fatalf("PublicKey: %v", err)
	}
	if AddressOf(pub) != crypto.PubkeyToAddress(k.PublicKey) {
		t.Fatal("AddressOf")
	}
	n := secpN.FillBytes(make([]byte, 32))
	nPlus := new(big.Int).Add(secpN, big.NewInt(1)).FillBytes(make([]byte, 32))
	for name, bad := range map[string][]byte{"zero": make([]byte, 32), "n": n, "n+1": nPlus, "short": make([]byte, 31)} {
		if _, err := PublicKey(bad); !errors.Is(err, ErrBadKey) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestKeystoreVectors decrypts the published Web3 Secret Storage test vectors in testdata.
func TestKeystoreVectors(t *testing.T) {
	raw, err := os.ReadFile("testdata/keystore-v3-vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Password   string   `json:"password"`
		PrivateKey string   `json:"private_key"`
		Files      []string `json:"files"`
	}
	if err := json.Unmarshal(raw, &v); err != nil || len(v.Files) == 0 {
		t.Fatalf("vectors: %v", err)
	}
	want, _ := hex.DecodeString(v.PrivateKey)
	for _, f := range v.Files {
		doc, err := os.ReadFile(filepath.Join("testdata", f))
		if err != nil {
			t.Fatal(err)
		}
		key, addr, err := DecryptKeystoreV3(doc, v.Password)
		if err != nil || !bytes.Equal(key, want) {
			t.Fatalf("%s: %v", f, err)
		}
		if addr.Hex() != "0x008AeEda4D805471dF9b2A5B0f38A0C3bCBA786b" {
			t.Fatalf("%s: address %s", f, addr.Hex())
		}
	}
}
