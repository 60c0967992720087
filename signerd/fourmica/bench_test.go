package fourmica

import (
	"syscall"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/crypto"
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

var (
	sinkHash  Hash
	sinkBytes []byte
)

// processCPU returns the process's user+system CPU time. The machine is shared, so wall-clock
// ns/op swings with load; cpu-ns/op (process CPU time per op, reported next to it) does not.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU runs loop and reports its process CPU time per op as the "cpu-ns/op" metric.
func reportCPU(b *testing.B, loop func()) {
	b.ReportAllocs()
	start := processCPU()
	n := 0
	for b.Loop() {
		loop()
		n++
	}
	if n > 0 {
		b.ReportMetric(float64(processCPU()-start)/float64(n), "cpu-ns/op")
	}
}

func BenchmarkDigestV1(b *testing.B) {
	d, c, _ := benchClaims(b)
	reportCPU(b, func() { sinkHash, _ = d.Digest(c, SchemeEIP712) })
}

func BenchmarkDigestV2(b *testing.B) {
	d, _, c := benchClaims(b)
	reportCPU(b, func() { sinkHash, _ = d.Digest(c, SchemeEIP712) })
}

func BenchmarkDigestV1EIP191(b *testing.B) {
	d, c, _ := benchClaims(b)
	reportCPU(b, func() { sinkHash, _ = d.Digest(c, SchemeEIP191) })
}

func BenchmarkDigestV2EIP191(b *testing.B) {
	d, _, c := benchClaims(b)
	reportCPU(b, func() { sinkHash, _ = d.Digest(c, SchemeEIP191) })
}

// The same digests through go-ethereum's generic apitypes (typed data built once, outside the
// loop, so only hashing is measured).
func benchApitypes(b *testing.B, c Claims) {
	d, _, _ := benchClaims(b)
	td := apitypesData(d, c)
	want, _ := d.Digest(c, SchemeEIP712)
	if h, _, err := apitypes.TypedDataAndHash(td); err != nil || Hash(h) != want {
		b.Fatalf("apitypes digest differs: %v", err)
	}
	reportCPU(b, func() { sinkBytes, _, _ = apitypes.TypedDataAndHash(td) })
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

// BenchmarkKeccakFloorV1 hashes the same byte counts as an EIP-712 V1 digest (256 + 66 bytes,
// three keccak-f permutations) with a bare go-ethereum keccak state: the floor DigestV1 can reach.
func BenchmarkKeccakFloorV1(b *testing.B) {
	st := crypto.NewKeccakState()
	var buf [256]byte
	var out [32]byte
	reportCPU(b, func() {
		st.Reset()
		st.Write(buf[:])
		st.Read(out[:])
		st.Reset()
		st.Write(buf[:66])
		st.Read(out[:])
	})
}
