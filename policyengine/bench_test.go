package policyengine

import (
	"fmt"
	"math/big"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
)

// benchPolicy builds a policy with `sellers` allowed seller addresses in the deciding rule,
// 20 rules (10 allow, 10 deny) and 10 budgets (6 amount budgets, 4 rate limits).
func benchPolicy(sellers int) string {
	var b strings.Builder
	b.WriteString("version: 1\nassets:\n  USDC: {address: \"0x036CbD53842c5426634e7929541eC2318f3dCF7e\", decimals: 6}\nagents:\n")
	for i := 0; i < 5; i++ {
		fmt.Fprintf(&b, "  a%d: {callers: [{uid: %d}], wallets: [\"%s\"]}\n", i, 1000+i, common.BigToAddress(big.NewInt(int64(0xf0+i))).Hex())
	}
	b.WriteString("rules:\n  - id: allow-main\n    effect: allow\n    agents: [a0]\n    networks: [eip155:84532]\n    assets: [USDC]\n    max_amount: \"1 USDC\"\n    sellers:\n")
	for i := 0; i < sellers; i++ {
		fmt.Fprintf(&b, "      - \"%s\"\n", common.BigToAddress(big.NewInt(int64(0x100000+i))).Hex())
	}
	b.WriteString("      - \"*.wild.example\"\n")
	for i := 1; i < 10; i++ {
		fmt.Fprintf(&b, "  - {id: allow-%d, effect: allow, agents: [a%d], sellers: [\"*.s%d.example\", api.x%d.example], networks: any, assets: any, labels: {team: t%d}}\n", i, i%5, i, i, i)
	}
	for i := 0; i < 10; i++ {
		fmt.Fprintf(&b, "  - {id: deny-%d, effect: deny, sellers: [\"%s\", bad%d.example]}\n", i, common.BigToAddress(big.NewInt(int64(0xbad00+i))).Hex(), i)
	}
	b.WriteString("budgets:\n")
	per := []string{"agent", "wallet", "seller", "task", "agent, seller", "agent, task"}
	wins := []string{"minute", "hour", "day", "30d", "hour", "lifetime"}
	for i := 0; i < 6; i++ {
		fmt.Fprintf(&b, "  - {id: budget-%d, per: [%s], window: %s, limit: \"1000000 USDC\"}\n", i, per[i], wins[i])
	}
	for i := 0; i < 4; i++ {
		fmt.Fprintf(&b, "  - {id: rate-%d, per: [%s], window: %s, max_requests: 1000000000}\n", i, per[i], wins[i])
	}
	b.WriteString("approvals:\n  - {id: big, at_or_above: \"100 USDC\", group: finance, timeout: 10m}\n")
	return b.String()
}

type zeroUsage struct{ z big.Int }

func (u *zeroUsage) Usage(string, time.Duration, time.Time) (*big.Int, error) { return &u.z, nil }

func benchIntent(sellers int) *Intent {
	return &Intent{Agent: "a0", Wallet: common.BigToAddress(big.NewInt(0xf0)), PayTo: common.BigToAddress(big.NewInt(int64(0x100000 + sellers/2))),
		Host: "api.seller.example", Network: "eip155:84532", ChainID: 84532, Asset: common.HexToAddress("0x036CbD53842c5426634e7929541eC2318f3dCF7e"),
		Amount: big.NewInt(50000), Version: 1, Timestamp: 1767600000, TaskID: "task-42"}
}

// BenchmarkEvaluate measures one Evaluate (allow, 10 charges) with a zero-usage reader (engine
// only) and with a warm MemLedger, at 10 and 1,000 allowed sellers. p50/p99 are per-call
// latencies measured around each call (includes ~30-60 ns of clock overhead).
func BenchmarkEvaluate(b *testing.B) {
	for _, sellers := range []int{10, 1000} {
		p, err := Compile(map[string][]byte{"bench.yaml": []byte(benchPolicy(sellers))}, CompileOptions{})
		if err != nil {
			b.Fatal(err)
		}
		in := benchIntent(sellers)
		now := time.Unix(1767600000, 0)
		led := NewMemLedger()
		for i := 0; i < 100; i++ {
			d := p.Evaluate(in, led, now.Add(time.Duration(i)*time.Second))
			if err := led.Apply(d.Charges, now.Add(time.Duration(i)*time.Second)); err != nil {
				b.Fatal(err)
			}
		}
		now = now.Add(100 * time.Second)
		in.Timestamp = uint64(now.Unix())
		for _, u := range []struct {
			name string
			r    UsageReader
		}{{"zero-usage", &zeroUsage{}}, {"memledger", led}} {
			b.Run(fmt.Sprintf("sellers=%d/%s", sellers, u.name), func(b *testing.B) {
				if d := p.Evaluate(in, u.r, now); d.Outcome != Allow || len(d.Charges) != 10 {
					b.Fatalf("setup: %v with %d charges", d, len(d.Charges))
				}
				lat := make([]time.Duration, 0, min(b.N, 1<<20))
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					t0 := time.Now()
					d := p.Evaluate(in, u.r, now)
					if len(lat) < cap(lat) {
						lat = append(lat, time.Since(t0))
					}
					if d.Outcome != Allow {
						b.Fatal(d)
					}
				}
				b.StopTimer()
				sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
				b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
				b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
			})
		}
	}
}

// BenchmarkEvaluateDeny is the seller-not-allowed path (no budgets read).
func BenchmarkEvaluateDeny(b *testing.B) {
	p, err := Compile(map[string][]byte{"bench.yaml": []byte(benchPolicy(1000))}, CompileOptions{})
	if err != nil {
		b.Fatal(err)
	}
	in := benchIntent(1000)
	in.PayTo = common.HexToAddress("0x9999")
	now := time.Unix(1767600000, 0)
	u := &zeroUsage{}
	lat := make([]time.Duration, 0, min(b.N, 1<<20))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		d := p.Evaluate(in, u, now)
		if len(lat) < cap(lat) {
			lat = append(lat, time.Since(t0))
		}
		if d.Code != CodeSellerNotAllowed {
			b.Fatal(d)
		}
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
}

// BenchmarkCompile compiles a policy with 10,000 allowed sellers.
func BenchmarkCompile(b *testing.B) {
	src := map[string][]byte{"bench.yaml": []byte(benchPolicy(10000))}
	b.SetBytes(int64(len(src["bench.yaml"])))
	b.ReportAllocs()
	cpu0 := processCPU()
	for i := 0; i < b.N; i++ {
		if _, err := Compile(src, CompileOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	// Process CPU time per op (all threads, GC included): on a shared, overloaded machine this is
	// the figure that does not depend on how long the benchmark waited for a core.
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/1000/float64(b.N), "cpu-ms/op")
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkMemLedgerApply is one check-and-debit of 10 charges.
func BenchmarkMemLedgerApply(b *testing.B) {
	p, _ := Compile(map[string][]byte{"bench.yaml": []byte(benchPolicy(10))}, CompileOptions{})
	in := benchIntent(10)
	now := time.Unix(1767600000, 0)
	d := p.Evaluate(in, &zeroUsage{}, now)
	led := NewMemLedger()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if err := led.Apply(d.Charges, now); err != nil {
			b.Fatal(err)
		}
	}
}
