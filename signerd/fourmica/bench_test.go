package fourmica

import (
	"testing"

	"github.com/ethereum/go-ethereum/signer/core/apitypes"
)

func benchClaims(b *testing.B) (*Domain, Claims, Claims) {
	b.Helper()
	d, err := NewDomain("4mica", "1", 84532)
	if err != nil {
		b.Fatal(err)
	}
	c1, err := DecodeClaims(claimsTestdata(b, "claims-v1.json"))
	if err != nil {
		b.Fatal(err)
	}
	c2, err := DecodeClaims(claimsTestdata(b, "claims-v2.json"))
	if err != nil {
		b.Fatal(err)
	}
	return d, c1, c2
}

var sinkHash Hash

func BenchmarkDigestV1(b *testing.B) {
	d, c, _ := benchClaims(b)
	b.ReportAllocs()
	for b.Loop() {
		h, err := d.Digest(c, SchemeEIP712)
		if err != nil {
			b.Fatal(err)
		}
		sinkHash = h
	}
}

func BenchmarkDigestV2(b *testing.B) {
	d, _, c := benchClaims(b)
	b.ReportAllocs()
	for b.Loop() {
		h, err := d.Digest(c, SchemeEIP712)
		if err != nil {
			b.Fatal(err)
		}
		sinkHash = h
	}
}

func BenchmarkDigestV1EIP191(b *testing.B) {
	d, c, _ := benchClaims(b)
	b.ReportAllocs()
	for b.Loop() {
		sinkHash, _ = d.Digest(c, SchemeEIP191)
	}
}

func BenchmarkDigestV2EIP191(b *testing.B) {
	d, _, c := benchClaims(b)
	b.ReportAllocs()
	for b.Loop() {
		sinkHash, _ = d.Digest(c, SchemeEIP191)
	}
}

// The same digests through go-ethereum's generic apitypes (typed data built once, outside the
// loop, so only hashing is measured).
func benchApitypes(b *testing.B, c Claims) {
	d, _, _ := benchClaims(b)
	td := apitypesData(d, c)
	want, _ := d.Digest(c, SchemeEIP712)
	b.ReportAllocs()
	for b.Loop() {
		h, _, err := apitypes.TypedDataAndHash(td)
		if err != nil {
			b.Fatal(err)
		}
		if Hash(h) != want {
			b.Fatal("apitypes digest differs")
		}
	}
}

func BenchmarkDigestV1Apitypes(b *testing.B) {
	_, c, _ := benchClaims(b)
	benchApitypes(b, c)
}

func BenchmarkDigestV2Apitypes(b *testing.B) {
	_, _, c := benchClaims(b)
	benchApitypes(b, c)
}

func BenchmarkDecodeRequest(b *testing.B) {
	body := claimsTestdata(b, "request-v1.json")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeRequest(body); err != nil {
			b.Fatal(err)
		}
	}
}
