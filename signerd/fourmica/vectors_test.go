package fourmica

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ethereum/go-ethereum/crypto"
)

// repoRoot walks up from the test directory to the directory holding go.mod.
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test directory")
		}
		dir = parent
	}
}

// sharedDir returns SIGNERD_SHARED_DIR or <repo root>/../shared.
func sharedDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("SIGNERD_SHARED_DIR"); d != "" {
		return d
	}
	return filepath.Join(repoRoot(t), "..", "shared")
}

// claimsTestdata returns <repo root>/testdata/claims/<name>.
func claimsTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "testdata", "claims", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type vectorFile struct {
	TypeStrings map[string]string `json:"type_strings"`
	Vectors     []vector          `json:"vectors"`
}

type vector struct {
	ID            string `json:"id"`
	PrivateKey    string `json:"private_key"`
	SignerAddress string `json:"signer_address"`
	Input         struct {
		Params struct {
			Name    string `json:"eip712_name"`
			Version string `json:"eip712_version"`
			ChainID uint64 `json:"chain_id"`
		} `json:"params"`
		Version int             `json:"version"`
		Scheme  string          `json:"scheme"`
		Claims  json.RawMessage `json:"claims"`
	} `json:"input"`
	Expected struct {
		DigestCore    string `json:"digest_core"`
		DigestSDK     string `json:"digest_sdk"`
		SignatureCore string `json:"signature_core"`
		SignatureSDK  string `json:"signature_sdk"`
		EIP712        *struct {
			DomainSeparator string `json:"domain_separator"`
			TypeHash        string `json:"type_hash"`
			StructHash      string `json:"struct_hash"`
		} `json:"eip712"`
		EIP191 *struct {
			CoreData string `json:"core_data"`
		} `json:"eip191"`
		SubjectHash     string          `json:"validation_subject_hash"`
		RequestHash     string          `json:"validation_request_hash"`
		CoreRequestBody json.RawMessage `json:"core_request_body"`
	} `json:"expected"`
}

func loadVectors(t testing.TB) vectorFile {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(sharedDir(t), "testdata", "4mica-vectors.json"))
	if err != nil {
		t.Fatalf("vectors: %v", err)
	}
	var vf vectorFile
	if err := json.Unmarshal(raw, &vf); err != nil {
		t.Fatal(err)
	}
	if len(vf.Vectors) != 24 {
		t.Fatalf("want 24 vectors, got %d", len(vf.Vectors))
	}
	return vf
}

// vectorClaims decodes a vector's input claims (which have no "version" tag) as Core claims.
func vectorClaims(t testing.TB, v vector) Claims {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(v.Input.Claims, &m); err != nil {
		t.Fatal(err)
	}
	m["version"] = "v" + string(rune('0'+v.Input.Version))
	b, _ := json.Marshal(m)
	c, err := DecodeClaims(b)
	if err != nil {
		t.Fatalf("%s: decode: %v", v.ID, err)
	}
	return c
}

func TestTypeHashes(t *testing.T) {
	vf := loadVectors(t)
	for name, want := range map[string]string{
		"type_hash_v1": TypeHashV1.Hex(), "type_hash_v2": TypeHashV2.Hex(), "domain_type_hash": DomainTypeHash.Hex(),
		"SolGuaranteeRequestClaimsV1": TypeStringV1, "SolGuaranteeRequestClaimsV2": TypeStringV2, "EIP712Domain": DomainTypeString,
	} {
		if vf.TypeStrings[name] != want {
			t.Errorf("%s: vectors say %s, package has %s", name, vf.TypeStrings[name], want)
		}
	}
}

func TestVectors(t *testing.T) {
	vf := loadVectors(t)
	for _, v := range vf.Vectors {
		t.Run(v.ID, func(t *testing.T) {
			p := v.Input.Params
			d, err := NewDomain(p.Name, p.Version, p.ChainID)
			if err != nil {
				t.Fatal(err)
			}
			c := vectorClaims(t, v)
			scheme, err := ParseScheme(v.Input.Scheme)
			if err != nil {
				t.Fatal(err)
			}
			digest, err := d.Digest(c, scheme)
			if err != nil {
				t.Fatal(err)
			}
			if digest.Hex() != v.Expected.DigestCore {
				t.Fatalf("digest %s, want digest_core %s", digest.Hex(), v.Expected.DigestCore)
			}
			if e := v.Expected.EIP712; e != nil {
				if d.Separator().Hex() != e.DomainSeparator {
					t.Errorf("separator %s want %s", d.Separator().Hex(), e.DomainSeparator)
				}
				var sh Hash
				if c.Version == V1 {
					sh = StructHashV1(c.V1)
				} else {
					sh = StructHashV2(c.V2)
				}
				if sh.Hex() != e.StructHash {
					t.Errorf("struct hash %s want %s", sh.Hex(), e.StructHash)
				}
			}
			if e := v.Expected.EIP191; e != nil {
				data, err := EncodeEIP191Data(c)
				if err != nil {
					t.Fatal(err)
				}
				if got := "0x" + hex.EncodeToString(data); got != e.CoreData {
					t.Errorf("eip191 data\n got %s\nwant %s", got, e.CoreData)
				}
			}
			if c.Version == V2 {
				if ValidationSubjectHash(&c.V2.ClaimsV1).Hex() != v.Expected.SubjectHash {
					t.Errorf("subject hash mismatch")
				}
				if ValidationRequestHash(c.V2).Hex() != v.Expected.RequestHash {
					t.Errorf("request hash mismatch")
				}
			}

			// Signing with the vector key (RFC 6979) reproduces signature_core byte for byte.
			key, err := crypto.HexToECDSA(strings.TrimPrefix(v.PrivateKey, "0x"))
			if err != nil {
				t.Fatal(err)
			}
			raw, err := crypto.Sign(digest[:], key)
			if err != nil {
				t.Fatal(err)
			}
			sig, err := NormalizeSignature(raw)
			if err != nil {
				t.Fatal(err)
			}
			if sig.Hex() != v.Expected.SignatureCore {
				t.Fatalf("signature %s\nwant signature_core %s", sig.Hex(), v.Expected.SignatureCore)
			}
			user := c.Payment().User
			if !strings.EqualFold(user.Hex(), v.SignerAddress) {
				t.Fatalf("vector user %s is not signer %s", user.Hex(), v.SignerAddress)
			}
			if err := VerifySignature(digest, sig[:], user); err != nil {
				t.Fatalf("signature_core rejected: %v", err)
			}

			// SDK signature: valid under Core's digest only when the SDK and Core agree (eip712).
			sdkSig, err := ParseSignature(v.Expected.SignatureSDK)
			if err != nil {
				t.Fatal(err)
			}
			err = VerifySignature(digest, sdkSig[:], user)
			if scheme == SchemeEIP712 {
				if err != nil {
					t.Fatalf("SDK eip712 signature rejected: %v", err)
				}
			} else if err != ErrSignatureMismatch {
				t.Fatalf("SDK eip191 signature must be rejected under Core's digest, got %v", err)
			}

			// The Core-ready request body round-trips byte for byte.
			req := Request{Claims: c, Signature: sig, Scheme: scheme}
			body, err := json.Marshal(req)
			if err != nil {
				t.Fatal(err)
			}
			var want bytes.Buffer
			if err := json.Compact(&want, v.Expected.CoreRequestBody); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(body, want.Bytes()) {
				t.Fatalf("request body\n got %s\nwant %s", body, want.Bytes())
			}
			back, err := DecodeRequest(body)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := d.VerifyRequest(back); err != nil || got != digest {
				t.Fatalf("VerifyRequest: %v", err)
			}
		})
	}
}
