package hsm

import (
	"crypto/rand"
	"errors"
	"math/big"
	"syscall"
	"testing"

	"github.com/ethereum/go-ethereum/crypto"
)

// rsOf signs digest with geth and returns the raw r‖s, optionally with s flipped to high-s
// (as a PKCS#11 token returns about half the time), plus geth's own 65-byte signature.
func rsOf(t testing.TB, digest [32]byte, high bool) (rs, pub65 []byte, want [65]byte) {
	t.Helper()
	k, err := crypto.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	sig, err := crypto.Sign(digest[:], k)
	if err != nil {
		t.Fatal(err)
	}
	copy(want[:], sig)
	want[64] += 27
	rs = append([]byte(nil), sig[:64]...)
	if high {
		s := new(big.Int).SetBytes(rs[32:])
		s.Sub(secpN, s).FillBytes(rs[32:])
	}
	return rs, crypto.FromECDSAPub(&k.PublicKey), want
}

func TestFromRS(t *testing.T) {
	var vs [2]int
	for i := 0; i < 64; i++ {
		var d [32]byte
		rand.Read(d[:])
		for _, high := range []bool{false, true} {
			rs, pub, want := rsOf(t, d, high)
			got, err := FromRS(d, rs, pub)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Fatalf("FromRS(high=%v) = %x, geth %x", high, got, want)
			}
			if err := VerifyEth(d, got, AddressOf(pub)); err != nil {
				t.Fatal(err)
			}
			vs[got[64]-27]++
		}
	}
	if vs[0] == 0 || vs[1] == 0 {
		t.Fatalf("only one recovery id seen: %v", vs)
	}
}

func TestFromRSRejects(t *testing.T) {
	var d [32]byte
	rand.Read(d[:])
	rs, pub, _ := rsOf(t, d, false)
	_, otherPub, _ := rsOf(t, d, false)
	zeroS := append(append([]byte(nil), rs[:32]...), make([]byte, 32)...)
	bigS := append(append([]byte(nil), rs[:32]...), secpN.FillBytes(make([]byte, 32))...)
	var d2 [32]byte
	d2[0] = 1
	cases := map[string]struct {
		digest [32]byte
		rs     []byte
		pub    []byte
	}{
		"short":        {d, rs[:63], pub},
		"long":         {d, append(append([]byte(nil), rs...), 0), pub},
		"s zero":       {d, zeroS, pub},
		"s = n":        {d, bigS, pub},
		"other key":    {d, rs, otherPub},
		"other digest": {d2, rs, pub},
		"garbage":      {d, make([]byte, 64), pub},
		"empty pubkey": {d, rs, nil},
	}
	for name, c := range cases {
		if sig, err := FromRS(c.digest, c.rs, c.pub); !errors.Is(err, ErrSignature) || sig != [65]byte{} {
			t.Errorf("%s: sig %x err %v", name, sig[:4], err)
		}
	}
}

func TestVerifyEth(t *testing.T) {
	var d [32]byte
	rand.Read(d[:])
	rs, pub, good := rsOf(t, d, false)
	_ = rs
	addr := AddressOf(pub)
	if err := VerifyEth(d, good, addr); err != nil {
		t.Fatal(err)
	}
	raw := good
	raw[64] -= 27
	high := good
	s := new(big.Int).SetBytes(high[32:64])
	s.Sub(secpN, s).FillBytes(high[32:64])
	high[64] ^= 1 // the matching v for -s
	flipped := good
	flipped[64] ^= 1 // 27 <-> 28
	var other [20]byte
	for name, c := range map[string]struct {
		sig  [65]byte
		addr [20]byte
	}{
		"v 0/1":      {raw, addr},
		"high s":     {high, addr},
		"wrong v":    {flipped, addr},
		"wrong addr": {good, other},
	} {
		if err := VerifyEth(d, c.sig, c.addr); !errors.Is(err, ErrSignature) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// BenchmarkFromRS measures the low-s + v-by-recovery step added to every token signature.
func BenchmarkFromRS(b *testing.B) { benchFromRS(b, FromRS) }

func benchFromRS(b *testing.B, f func([32]byte, []byte, []byte) ([65]byte, error)) {
	var d [32]byte
	rand.Read(d[:])
	type c struct{ rs, pub []byte }
	var cs []c
	for i := 0; i < 64; i++ {
		rs, pub, _ := rsOf(b, d, i%2 == 0)
		cs = append(cs, c{rs, pub})
	}
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		x := cs[i%len(cs)]
		if _, err := f(d, x.rs, x.pub); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := (ru1.Utime.Nano() + ru1.Stime.Nano()) - (ru0.Utime.Nano() + ru0.Stime.Nano())
	b.ReportMetric(float64(cpu)/1e3/float64(b.N), "cpu-µs/op")
}
